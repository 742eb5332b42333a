"""``quiver-vllm sync``: keep one vLLM or SGLang replica serving what a set of refs name now.

Each tick (every ``--interval`` seconds, or at once when a signed Quiver webhook arrives):

1. ask the replica what it serves (``GET /v1/models``: vLLM and SGLang list every loaded LoRA
   adapter with ``id`` = its name, ``root`` = its path, ``parent`` = the base model);
2. resolve every configured ``owner/name@ref`` with one API call each;
3. where the replica lacks the served name (it restarted), or serves it from another path (the
   ref moved), download the revision into the cache (once; verified) and push it:
   vLLM ``POST /v1/load_lora_adapter {lora_name, lora_path, load_inplace: true}`` (on a vLLM that
   refuses the replacement: ``/v1/unload_lora_adapter`` then load), SGLang
   ``POST /unload_lora_adapter {lora_name}`` then ``POST /load_lora_adapter {lora_name, lora_path}``.

Every action is logged. Errors (registry or replica down, a refused adapter) are logged and
retried next tick; the served adapter stays what it was.
"""

from __future__ import annotations

import hashlib
import hmac
import http.server
import json
import logging
import threading
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from typing import Dict, List, Optional

from .cache import IntegrityError
from .client import NotFound
from .core import Core, Refused
from .names import AdapterRef, parse

log = logging.getLogger("quiver_vllm.sync")

SIGNATURE_HEADER = "Quiver-Signature"
SIGNATURE_TOLERANCE_S = 300
MAX_WEBHOOK_BODY = 1 << 20


@dataclass
class Spec:
    served: str
    ref: AdapterRef


def parse_spec(raw: str, default_ref: str = "main") -> Spec:
    """``owner/name@ref`` (served under that string) or ``served-name=owner/name@ref``."""
    raw = raw.strip()
    served, eq, target = raw.partition("=")
    if not eq:
        served, target = raw, raw
    served, target = served.strip(), target.strip()
    if not served:
        raise ValueError(f"empty served name in {raw!r}")
    return Spec(served=served, ref=parse(target, default_ref))


def read_specs_file(path: str, default_ref: str = "main") -> List[Spec]:
    out = []
    with open(path) as f:
        for line in f:
            line = line.split("#", 1)[0].strip()
            if line:
                out.append(parse_spec(line, default_ref))
    return out


class ReplicaError(Exception):
    def __init__(self, status: int, body: str):
        self.status = status
        self.body = body
        super().__init__(f"HTTP {status}: {body[:300]}")


class Replica:
    """The inference server's adapter endpoints (vLLM or SGLang)."""

    def __init__(self, url: str, engine: str, token: Optional[str] = None, timeout: float = 60.0):
        if engine not in ("vllm", "sglang"):
            raise ValueError(f"--engine must be vllm or sglang, not {engine!r}")
        self.url = url.rstrip("/")
        self.engine = engine
        self.token = token
        self.timeout = timeout

    def _call(self, method: str, path: str, body: Optional[dict] = None):
        data = json.dumps(body).encode() if body is not None else None
        req = urllib.request.Request(self.url + path, data=data, method=method)
        if data is not None:
            req.add_header("Content-Type", "application/json")
        if self.token:
            req.add_header("Authorization", f"Bearer {self.token}")
        try:
            with urllib.request.urlopen(req, timeout=self.timeout) as res:
                text = res.read(1 << 22).decode("utf-8", "replace")
        except urllib.error.HTTPError as e:
            raise ReplicaError(e.code, e.read(4096).decode("utf-8", "replace")) from None
        try:
            return json.loads(text) if text else None
        except ValueError:
            return text  # vLLM answers a load with a plain-text "Success: ..."

    def loaded(self) -> Dict[str, str]:
        """Served LoRA name → path, from ``GET /v1/models`` (entries with a ``parent``)."""
        data = self._call("GET", "/v1/models") or {}
        return {m["id"]: m.get("root") or "" for m in data.get("data", [])
                if isinstance(m, dict) and m.get("parent")}

    def base_model(self) -> Optional[str]:
        """The model the replica serves (``root`` of the entry without a parent)."""
        data = self._call("GET", "/v1/models") or {}
        for m in data.get("data", []):
            if isinstance(m, dict) and not m.get("parent"):
                return m.get("root") or m.get("id")
        return None

    def load(self, name: str, path: str, replace: bool) -> str:
        """Load ``path`` under ``name``; return how (``loaded``, ``in place``, ``unload+load``)."""
        if self.engine == "vllm":
            if not replace:
                self._call("POST", "/v1/load_lora_adapter", {"lora_name": name, "lora_path": path})
                return "loaded"
            try:
                self._call("POST", "/v1/load_lora_adapter",
                           {"lora_name": name, "lora_path": path, "load_inplace": True})
                return "loaded in place"
            except ReplicaError as e:
                if e.status != 400 or "already" not in e.body:
                    raise
                log.info("replica refused load_inplace for %s (%s); unloading then loading", name,
                         e.body[:200])
            self.unload(name)
            self._call("POST", "/v1/load_lora_adapter", {"lora_name": name, "lora_path": path})
            return "unloaded and loaded"
        # SGLang: a name is loaded once; replacing means unload first.
        how = "loaded"
        if replace:
            self.unload(name)
            how = "unloaded and loaded"
        out = self._call("POST", "/load_lora_adapter", {"lora_name": name, "lora_path": path})
        if isinstance(out, dict) and out.get("success") is False:
            raise ReplicaError(200, out.get("error_message") or "load failed")
        return how

    def unload(self, name: str) -> None:
        path = "/v1/unload_lora_adapter" if self.engine == "vllm" else "/unload_lora_adapter"
        try:
            out = self._call("POST", path, {"lora_name": name})
        except ReplicaError as e:
            if e.status == 404:  # already gone
                return
            raise
        if isinstance(out, dict) and out.get("success") is False:
            raise ReplicaError(200, out.get("error_message") or "unload failed")


@dataclass
class Served:
    revision: Optional[str] = None
    number: Optional[int] = None
    path: Optional[str] = None
    refused: Optional[str] = None  # the revision last refused (logged once, not retried)


class Syncer:
    def __init__(self, core: Core, replica: Replica, specs: List[Spec],
                 base_model: Optional[str] = None, check_base_model: bool = True):
        names = [s.served for s in specs]
        if len(set(names)) != len(names):
            raise ValueError("two adapters are served under one name")
        self.core = core
        self.replica = replica
        self.specs = specs
        self.base_model = base_model
        self.check_base_model = check_base_model
        self.state: Dict[str, Served] = {s.served: Served() for s in specs}
        self.wake = threading.Event()
        self.stopping = threading.Event()
        self.ticks = 0
        self.pushes = 0

    def _served_model(self) -> Optional[str]:
        if not self.check_base_model:
            return None
        if self.base_model is None:
            self.base_model = self.replica.base_model()
            log.info("replica serves base model %r", self.base_model)
        return self.base_model

    def tick(self) -> None:
        self.ticks += 1
        try:
            on_replica = self.replica.loaded()
            served_model = self._served_model()
        except (OSError, ReplicaError, ValueError) as e:
            log.warning("replica %s unreachable: %s; retrying next tick", self.replica.url, e)
            return
        for spec in self.specs:
            if self.stopping.is_set():
                return
            self._sync_one(spec, on_replica, served_model)

    def _sync_one(self, spec: Spec, on_replica: Dict[str, str], served_model: Optional[str]):
        st = self.state[spec.served]
        try:
            version = self.core.lookup_version(spec.ref)
        except NotFound:
            log.warning("%s: not found in the registry (or not visible with this token)", spec.ref)
            return
        except Exception as e:  # noqa: BLE001 - logged, retried next tick
            log.warning("%s: registry error: %s: %s", spec.ref, type(e).__name__, e)
            return
        rev = version["revision"]
        current = on_replica.get(spec.served)
        if current is not None and rev == st.revision and current == st.path:
            return  # up to date
        if rev == st.refused and (current is not None or st.path is None):
            return  # refused already (logged then); the replica keeps what it serves
        try:
            self.core.check(spec.ref, version, served_model)
            path = self.core.fetch(spec.ref, version)
        except Refused as e:
            st.refused = rev
            log.warning("%s: not loading v%s (%s): %s; the replica keeps %s", spec.served,
                        version.get("number"), rev, e,
                        f"revision {st.revision}" if current is not None else "nothing")
            return
        except IntegrityError as e:
            log.error("%s: download of %s failed verification: %s", spec.served, rev, e)
            return
        except Exception as e:  # noqa: BLE001
            log.warning("%s: download of %s failed: %s: %s", spec.served, rev, type(e).__name__, e)
            return
        if current == path:
            log.info("%s: replica already serves v%s (%s)", spec.served, version.get("number"), rev)
        else:
            why = ("replica lacks it" if current is None
                   else f"ref moved from {st.revision or 'unknown'}"
                   if st.revision and st.revision != rev else "replica serves another path")
            t0 = time.monotonic()
            try:
                how = self.replica.load(spec.served, path, replace=current is not None)
            except (OSError, ReplicaError) as e:
                log.error("%s: replica refused v%s (%s): %s", spec.served, version.get("number"),
                          rev, e)
                return
            self.pushes += 1
            log.info("%s: %s v%s (revision %s) on the replica in %.0f ms (%s)", spec.served, how,
                     version.get("number"), rev, (time.monotonic() - t0) * 1000, why)
        st.revision, st.number, st.path = rev, version.get("number"), path

    def run(self, interval: float) -> None:
        log.info("syncing %d adapter(s) to %s (%s) every %.1fs", len(self.specs), self.replica.url,
                 self.replica.engine, interval)
        while not self.stopping.is_set():
            self.wake.clear()
            self.tick()
            self.wake.wait(interval)

    def stop(self) -> None:
        self.stopping.set()
        self.wake.set()


# -- webhooks ---------------------------------------------------------------------------------


def sign(secret: str, timestamp: int, body: bytes) -> str:
    mac = hmac.new(secret.encode(), f"{timestamp}.".encode() + body, hashlib.sha256).hexdigest()
    return f"t={timestamp},v1={mac}"


def verify_signature(secret: str, header: Optional[str], body: bytes,
                     now: Optional[float] = None) -> bool:
    """``Quiver-Signature: t=<unix>,v1=<hex>`` over ``f"{t}.{body}"``; stale (>5 min) is refused."""
    if not header:
        return False
    fields: Dict[str, List[str]] = {}
    for part in header.split(","):
        k, _, v = part.strip().partition("=")
        fields.setdefault(k, []).append(v)
    try:
        t = int(fields["t"][0])
    except (KeyError, ValueError):
        return False
    if abs((now or time.time()) - t) > SIGNATURE_TOLERANCE_S:
        return False
    want = hmac.new(secret.encode(), f"{t}.".encode() + body, hashlib.sha256).hexdigest()
    return any(hmac.compare_digest(want, v) for v in fields.get("v1", []))


def webhook_server(bind: str, secret: Optional[str], syncer: Syncer) -> http.server.HTTPServer:
    host, _, port = bind.rpartition(":")

    class Handler(http.server.BaseHTTPRequestHandler):
        def log_message(self, fmt, *args):  # route through logging
            log.debug("webhook: " + fmt, *args)

        def do_POST(self):  # noqa: N802
            try:
                n = int(self.headers.get("Content-Length") or 0)
            except ValueError:
                n = -1
            if n < 0 or n > MAX_WEBHOOK_BODY:
                self.send_error(413)
                return
            body = self.rfile.read(n)
            if secret and not verify_signature(secret, self.headers.get(SIGNATURE_HEADER), body):
                log.warning("webhook: bad or stale signature from %s; ignored",
                            self.client_address[0])
                self.send_error(401)
                return
            try:
                doc = json.loads(body or b"{}")
            except ValueError:
                doc = {}
            doc = doc if isinstance(doc, dict) else {}
            event = self.headers.get("Quiver-Event") or doc.get("type") or "event"
            log.info("webhook: %s of %s received (delivery %s); syncing now", event,
                     doc.get("adapter") or "?", self.headers.get("Quiver-Delivery") or "-")
            syncer.wake.set()
            self.send_response(204)
            self.end_headers()

    srv = http.server.ThreadingHTTPServer((host or "127.0.0.1", int(port)), Handler)
    threading.Thread(target=srv.serve_forever, name="quiver-webhooks", daemon=True).start()
    return srv
