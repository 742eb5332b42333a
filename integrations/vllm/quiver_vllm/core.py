"""Resolving ``owner/name[@ref]`` to a verified local directory (no vLLM import here).

Used by the vLLM resolver plugin (:mod:`quiver_vllm.plugin`) and by ``quiver-vllm sync``.
"""

from __future__ import annotations

import asyncio
import logging
import weakref
from dataclasses import dataclass
from typing import Dict, Optional

from .cache import AdapterCache, IntegrityError, UnsafePath
from .client import Client, HttpError, NotFound
from .config import Settings
from .names import AdapterRef, NameError_, parse

log = logging.getLogger("quiver_vllm")

# vLLM's lora_int_id must be >= 1; ids from the revision live in [2**30, 2**31) so they fit a
# signed 32-bit int and stay clear of the small ids vLLM's own counter hands out.
_ID_BASE = 1 << 30


def lora_int_id(revision: str) -> int:
    return _ID_BASE + int(revision[:15], 16) % _ID_BASE


class Refused(Exception):
    """The adapter exists but must not be loaded here (the message says why)."""


@dataclass
class Resolved:
    lora_name: str
    adapter: str
    ref: str
    number: int
    revision: str
    path: str
    lora_int_id: int
    base_model: Optional[str]


def max_rank(version: dict) -> int:
    lora = version.get("lora") or {}
    ranks = [int(lora.get("r") or 0), int(lora.get("max_rank") or 0)]
    ranks += [int(v) for v in (lora.get("rank_pattern") or {}).values()]
    return max(ranks)


class Core:
    def __init__(self, settings: Settings, cache: Optional[AdapterCache] = None,
                 client: Optional[Client] = None):
        self.settings = settings
        self.client = client or Client(settings.url, settings.token, settings.timeout)
        self.cache = cache or AdapterCache(settings.cache_dir, settings.cache_max_bytes)
        self._async_locks: "weakref.WeakValueDictionary[str, asyncio.Lock]" = \
            weakref.WeakValueDictionary()

    # -- checks -----------------------------------------------------------------------------

    def expected_base_model(self, served_model: str) -> str:
        return self.settings.base_model_map.get(served_model, served_model)

    def base_model_of(self, ref: AdapterRef, version: dict) -> Optional[str]:
        bm = version.get("base_model")
        if bm:
            return bm
        # Servers before the version resource carried `base_model`: the adapter's (one more call).
        try:
            return self.client.adapter(ref.owner, ref.name).get("base_model") or None
        except HttpError:
            return (version.get("lora") or {}).get("base_model")

    def check(self, ref: AdapterRef, version: dict, served_model: Optional[str]) -> None:
        """Raise Refused when vLLM must not load this version."""
        if version.get("state", "ready") != "ready":
            raise Refused(f"version {version.get('number')} is {version.get('state')}, not ready")
        if not any(f.get("path") == "adapter_config.json" for f in version.get("files") or []):
            raise Refused("the version has no adapter_config.json")
        lora = version.get("lora") or {}
        peft_type = lora.get("peft_type", "LORA")
        if peft_type != "LORA":
            raise Refused(f"peft_type is {peft_type}, vLLM loads LORA only")
        if lora.get("use_dora"):
            raise Refused("it is a DoRA adapter, which vLLM does not support")
        compat = (version.get("compatibility") or {}).get("vllm") or {}
        if compat.get("ok") is False and "rank" not in compat.get("reason", ""):
            raise Refused(f"vLLM cannot load it: {compat.get('reason')}")
        limit = self.settings.max_lora_rank
        if limit is not None:
            rank = max_rank(version)
            need = (version.get("compatibility") or {}).get("vllm_max_lora_rank")
            if rank > limit:
                raise Refused(
                    f"rank {rank} is above QUIVER_MAX_LORA_RANK={limit} (vLLM's --max-lora-rank;"
                    f" it needs --max-lora-rank {need or 'above 512'})")
        if served_model is not None and not self.settings.skip_base_model_check:
            want = self.expected_base_model(served_model)
            have = self.base_model_of(ref, version)
            if have != want:
                how = "" if want == served_model else f" (QUIVER_BASE_MODEL_MAP maps {served_model!r})"
                raise Refused(
                    f"its base model is {have!r}, this server runs {want!r}{how}; set "
                    "QUIVER_BASE_MODEL_MAP or QUIVER_SKIP_BASE_MODEL_CHECK=1 if they are the same")

    # -- resolving --------------------------------------------------------------------------

    def lookup_version(self, ref: AdapterRef) -> dict:
        """One API call: the version the ref names now (raises NotFound, HttpError, OSError)."""
        return self.client.version(ref.owner, ref.name, ref.ref)

    def fetch(self, ref: AdapterRef, version: dict) -> str:
        """The verified local directory of ``version`` (downloads once)."""
        revision = version["revision"]

        def download(path, sink):
            return self.client.download(ref.owner, ref.name, revision, path, sink)

        return self.cache.ensure(revision, version.get("files") or [], download,
                                 {"adapter": ref.adapter, "number": version.get("number")})

    def resolve_sync(self, lora_name: str, served_model: Optional[str]) -> Resolved:
        """Blocking resolve; raises NameError_, NotFound, Refused, IntegrityError, HttpError."""
        ref = parse(lora_name, self.settings.default_ref)
        version = self.lookup_version(ref)
        self.check(ref, version, served_model)
        path = self.fetch(ref, version)
        return self._resolved(lora_name, ref, version, path)

    def _resolved(self, lora_name, ref, version, path) -> Resolved:
        return Resolved(lora_name=lora_name, adapter=ref.adapter, ref=ref.ref,
                        number=int(version.get("number") or 0), revision=version["revision"],
                        path=path, lora_int_id=lora_int_id(version["revision"]),
                        base_model=version.get("base_model"))

    def _async_lock(self, revision: str) -> asyncio.Lock:
        lk = self._async_locks.get(revision)
        if lk is None:
            lk = asyncio.Lock()
            self._async_locks[revision] = lk
        return lk

    async def resolve(self, base_model_name: str, lora_name: str) -> Optional[Resolved]:
        """What the vLLM resolver does: never raises; None (with a log line) when it can't."""
        try:
            ref = parse(lora_name, self.settings.default_ref)
        except NameError_ as e:
            log.info("quiver: %r is not a Quiver adapter name (%s); leaving it to other resolvers",
                     lora_name, e)
            return None
        try:
            version = await asyncio.to_thread(self.lookup_version, ref)
            revision = version["revision"]
            hit = self.cache.lookup(revision, version.get("files") or [])
            if "base_model" in version:
                self.check(ref, version, base_model_name)  # no I/O
            else:  # an older server: the check may ask for the adapter
                await asyncio.to_thread(self.check, ref, version, base_model_name)
            if hit is None:
                # One download per revision in this process without parking executor threads;
                # AdapterCache.ensure also serializes threads and other processes.
                lock = self._async_lock(revision)
                async with lock:
                    hit = await asyncio.to_thread(self.fetch, ref, version)
        except NotFound:
            log.info("quiver: %s not found (or not visible with this token)", ref)
            return None
        except Refused as e:
            log.warning("quiver: refusing %s: %s", lora_name, e)
            return None
        except IntegrityError as e:
            log.error("quiver: refusing %s: download failed verification: %s", lora_name, e)
            return None
        except UnsafePath as e:
            log.error("quiver: refusing %s: %s", lora_name, e)
            return None
        except Exception as e:  # noqa: BLE001 - vLLM does not catch a resolver's exceptions
            log.error("quiver: could not resolve %s: %s: %s", lora_name, type(e).__name__, e)
            return None
        r = self._resolved(lora_name, ref, version, hit)
        log.info("quiver: resolved %s to %s v%d (revision %s) at %s", lora_name, ref.adapter,
                 r.number, r.revision, r.path)
        return r
