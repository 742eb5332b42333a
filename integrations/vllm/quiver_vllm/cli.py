"""``quiver-vllm``: ``sync`` (the rollout daemon) and ``resolve`` (fetch one adapter, print its path)."""

from __future__ import annotations

import argparse
import json
import logging
import os
import signal
import sys

from .config import Settings, parse_base_model_map
from .core import Core
from .sync import Replica, Syncer, parse_spec, read_specs_file, webhook_server


def _common(p: argparse.ArgumentParser) -> None:
    p.add_argument("--quiver", default=os.environ.get("QUIVER_URL"),
                   help="registry URL (QUIVER_URL)")
    p.add_argument("--token", default=os.environ.get("QUIVER_TOKEN"),
                   help="registry token (QUIVER_TOKEN)")
    p.add_argument("--cache-dir", default=None, help="QUIVER_CACHE_DIR")
    p.add_argument("--cache-max-bytes", type=int, default=None, help="QUIVER_CACHE_MAX_BYTES")
    p.add_argument("--max-lora-rank", type=int, default=None,
                   help="refuse adapters above this rank (the replica's --max-lora-rank)")
    p.add_argument("--base-model-map", default=None, help="QUIVER_BASE_MODEL_MAP")
    p.add_argument("--skip-base-model-check", action="store_true")
    p.add_argument("-v", "--verbose", action="store_true")


def _settings(a, rank_default=None) -> Settings:
    s = Settings.from_env()
    if a.quiver:
        s.url = a.quiver.rstrip("/")
    if a.token:
        s.token = a.token
    if a.cache_dir:
        s.cache_dir = a.cache_dir
    if a.cache_max_bytes is not None:
        s.cache_max_bytes = a.cache_max_bytes
    s.max_lora_rank = a.max_lora_rank if a.max_lora_rank is not None else (
        rank_default if not os.environ.get("QUIVER_MAX_LORA_RANK") else s.max_lora_rank)
    if a.base_model_map is not None:
        s.base_model_map = parse_base_model_map(a.base_model_map)
    if a.skip_base_model_check:
        s.skip_base_model_check = True
    s.validate()
    return s


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="quiver-vllm")
    sub = ap.add_subparsers(dest="cmd", required=True)

    sp = sub.add_parser("sync", help="keep a vLLM/SGLang replica serving what refs name now")
    _common(sp)
    sp.add_argument("--replica", required=True, help="the replica's base URL, e.g. http://127.0.0.1:8000")
    sp.add_argument("--replica-token", default=os.environ.get("REPLICA_API_KEY"),
                    help="the replica's --api-key, sent as Bearer (REPLICA_API_KEY)")
    sp.add_argument("--engine", choices=("vllm", "sglang"), default="vllm")
    sp.add_argument("--adapter", action="append", default=[],
                    help="owner/name@ref, or served-name=owner/name@ref (repeatable)")
    sp.add_argument("--adapters-file", help="one --adapter value per line (# comments)")
    sp.add_argument("--interval", type=float, default=1.0, help="seconds between polls")
    sp.add_argument("--base-model", default=None,
                    help="the replica's model as the registry names it (default: read from the "
                         "replica's /v1/models, then QUIVER_BASE_MODEL_MAP)")
    sp.add_argument("--listen", default=None,
                    help="HOST:PORT for Quiver webhooks (alias.moved → sync at once)")
    sp.add_argument("--webhook-secret", default=os.environ.get("QUIVER_WEBHOOK_SECRET"),
                    help="verify Quiver-Signature with this secret (QUIVER_WEBHOOK_SECRET)")
    sp.add_argument("--once", action="store_true", help="one tick, then exit")

    rp = sub.add_parser("resolve", help="download one adapter into the cache; print the result")
    _common(rp)
    rp.add_argument("name", help="owner/name[@ref]")
    rp.add_argument("--base-model", default=None, help="check against this base model")

    a = ap.parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if a.verbose else logging.INFO,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        if a.cmd == "resolve":
            s = _settings(a)
            core = Core(s)
            r = core.resolve_sync(a.name, a.base_model)
            print(json.dumps(r.__dict__))
            return 0
        s = _settings(a, rank_default=None)
        specs = [parse_spec(x, s.default_ref) for x in a.adapter]
        if a.adapters_file:
            specs += read_specs_file(a.adapters_file, s.default_ref)
        if not specs:
            ap.error("give at least one --adapter or --adapters-file")
        if not (a.interval > 0):
            ap.error("--interval must be positive")
        core = Core(s)
        syncer = Syncer(core, Replica(a.replica, a.engine, a.replica_token, timeout=max(60.0, s.timeout)),
                        specs, base_model=a.base_model,
                        check_base_model=not s.skip_base_model_check)
    except (ValueError, OSError) as e:
        print(f"quiver-vllm: {e}", file=sys.stderr)
        return 2
    if a.once:
        syncer.tick()
        return 0
    if a.listen:
        if not a.webhook_secret:
            logging.getLogger("quiver_vllm.sync").warning(
                "webhook listener without --webhook-secret: any POST triggers a sync")
        webhook_server(a.listen, a.webhook_secret, syncer)
    signal.signal(signal.SIGTERM, lambda *_: syncer.stop())
    try:
        syncer.run(a.interval)
    except KeyboardInterrupt:
        pass
    return 0


if __name__ == "__main__":
    sys.exit(main())
