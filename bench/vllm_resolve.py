#!/usr/bin/env python3
"""quiver-vllm's resolver: warm-cache resolve latency, and a cold resolve of a ~100 MiB adapter
against huggingface_hub's hf_hub_download of the same files from the same Quiver, in one run.

  .venv-hf-latest/bin/python bench/vllm_resolve.py [--quiver BIN] [--url URL --token T]

Without --url it starts its own `quiver serve` (target/release/quiver if present, else
target/debug/quiver; say which when reporting) on SQLite in a fresh /tmp directory, and seeds a
small adapter (with a `prod` alias) and one of ~100 MiB. Needs huggingface_hub in the running
Python (scripts/test.sh makes .venv-hf-latest with 2.4.0). Targets (issue 22): warm p50 <= 5 ms
including the revision check (one API call); cold resolve <= 1.1x hf_hub_download. Last, the
rollout latency: `quiver-vllm sync` (in-process, polling every --interval s) in front of a fake
vLLM replica (integrations/vllm/tests/fake_replica.py); --moves alias moves at varied points of
the poll cycle, each timed from the PUT to the replica's load call (target p50 <= 2 s).
"""

import argparse
import asyncio
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(ROOT, "integrations", "vllm"))
sys.path.insert(0, os.path.join(ROOT, "integrations", "vllm", "tests"))

from quiver_seed import BASE_MODEL, create_adapter, set_alias, upload  # noqa: E402
from quiver_vllm.config import Settings  # noqa: E402
from quiver_vllm.core import Core  # noqa: E402


def start_server(binary, data):
    import socket

    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    os.makedirs(data, exist_ok=True)
    log = open(os.path.join(data, "serve.log"), "w")
    p = subprocess.Popen([binary, "serve", "--bind", f"127.0.0.1:{port}", "--job-workers", "0",
                          "--data-dir", data], stdout=log, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    for _ in range(200):
        try:
            urllib.request.urlopen(url + "/healthz", timeout=1)
            break
        except OSError:
            time.sleep(0.05)
    tok = subprocess.run([binary, "token", "create", "--user", "alice", "--scope", "write",
                          "--data-dir", data], capture_output=True, text=True, check=True)
    return p, url, tok.stdout.strip().splitlines()[-1]


def pct(xs, q):
    xs = sorted(xs)
    return xs[min(len(xs) - 1, int(round(q / 100 * (len(xs) - 1))))]


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--quiver", default=None)
    ap.add_argument("--url")
    ap.add_argument("--token")
    ap.add_argument("--warm", type=int, default=500)
    ap.add_argument("--cold", type=int, default=3)
    ap.add_argument("--mib", type=int, default=100)
    ap.add_argument("--moves", type=int, default=10, help="alias moves for the rollout figure")
    ap.add_argument("--interval", type=float, default=1.0, help="sync's polling interval")
    a = ap.parse_args()
    tmp = tempfile.mkdtemp(prefix="quiver-bench-vllm-")
    proc = None
    try:
        if a.url:
            url, token = a.url.rstrip("/"), a.token
        else:
            binary = a.quiver or next(
                (p for p in (os.path.join(ROOT, "target/release/quiver"),
                             os.path.join(ROOT, "target/debug/quiver")) if os.path.exists(p)), None)
            print(f"server: {binary}")
            proc, url, token = start_server(binary, os.path.join(tmp, "data"))
        owner = "alice"
        small, big = f"bench-small-{os.getpid()}", f"bench-big-{os.getpid()}"
        create_adapter(url, token, owner, small)
        upload(url, token, owner, small, r=8, seed=1)
        set_alias(url, token, owner, small, "prod", 1)
        create_adapter(url, token, owner, big)
        t0 = time.monotonic()
        v = upload(url, token, owner, big, r=8, seed=2, extra_bytes=a.mib << 20)
        size = sum(f["size"] for f in v["files"])
        print(f"seeded {owner}/{big}: {len(v['files'])} files, {size / 2**20:.1f} MiB "
              f"(upload {time.monotonic() - t0:.1f}s)")

        # -- warm: the same name again and again (API call + cache hit), one event loop ------
        s = Settings(url=url, token=token, cache_dir=os.path.join(tmp, "warm"), max_lora_rank=512)
        core = Core(s)

        async def warm():
            name = f"{owner}/{small}@prod"
            assert await core.resolve(BASE_MODEL, name) is not None  # fills the cache
            out = []
            for _ in range(a.warm):
                t = time.perf_counter()
                r = await core.resolve(BASE_MODEL, name)
                out.append((time.perf_counter() - t) * 1000)
                assert r is not None
            return out

        import logging
        logging.disable(logging.INFO)
        ws = asyncio.run(warm())
        print(f"warm resolve ({a.warm}x, incl. the revision check): p50 {pct(ws, 50):.2f} ms, "
              f"p95 {pct(ws, 95):.2f} ms, p99 {pct(ws, 99):.2f} ms (target p50 <= 5 ms)")

        # -- cold: fresh cache each time; alternate with hf_hub_download ---------------------
        os.environ["HF_ENDPOINT"] = url
        os.environ["HF_HUB_DISABLE_XET"] = "1"
        os.environ["HF_HUB_DISABLE_TELEMETRY"] = "1"
        os.environ["HF_HUB_DISABLE_PROGRESS_BARS"] = "1"
        import huggingface_hub
        from huggingface_hub import hf_hub_download

        files = [f["path"] for f in v["files"]]
        ours, theirs = [], []
        for i in range(a.cold):
            for who in (("quiver", "hf") if i % 2 == 0 else ("hf", "quiver")):
                d = os.path.join(tmp, f"cold-{who}-{i}")
                t = time.perf_counter()
                if who == "quiver":
                    c = Core(Settings(url=url, token=token, cache_dir=d, max_lora_rank=512))
                    r = asyncio.run(c.resolve(BASE_MODEL, f"{owner}/{big}@v1"))
                    assert r is not None and c.cache.downloads == 1
                    ours.append(time.perf_counter() - t)
                else:
                    for f in files:
                        hf_hub_download(f"{owner}/{big}", f, revision="v1", cache_dir=d,
                                        token=token)
                    theirs.append(time.perf_counter() - t)
                shutil.rmtree(d, ignore_errors=True)
        mo, mt = statistics.median(ours), statistics.median(theirs)
        print(f"cold resolve of {size / 2**20:.0f} MiB (API call, download, sha256 of every file, "
              f"rename), median of {a.cold}: {mo:.3f}s ({size / 2**20 / mo:.0f} MiB/s); runs "
              + ", ".join(f"{x:.3f}" for x in ours))
        print(f"hf_hub_download (huggingface_hub {huggingface_hub.__version__}) of the same "
              f"{len(files)} files, median of {a.cold}: {mt:.3f}s; runs "
              + ", ".join(f"{x:.3f}" for x in theirs))
        print(f"ratio quiver-vllm / hf_hub_download: {mo / mt:.2f}x (target <= 1.1x)")

        # -- rollout: alias move -> the replica's load endpoint called (quiver-vllm sync) -----
        if a.moves:
            import threading

            from fake_replica import FakeReplica
            from quiver_vllm.sync import Replica, Syncer, parse_spec

            upload(url, token, owner, small, r=8, seed=3)  # v2
            rep = FakeReplica("vllm")
            served = f"{owner}/{small}@prod"
            sy = Syncer(Core(Settings(url=url, token=token, cache_dir=os.path.join(tmp, "sync"),
                                      max_lora_rank=512)),
                        Replica(rep.url, "vllm"), [parse_spec(served)])
            th = threading.Thread(target=sy.run, args=(a.interval,), daemon=True)
            th.start()
            assert rep.wait_for(lambda: served in rep.adapters, 30)
            lat = []
            for i in range(a.moves):
                target = 2 if i % 2 == 0 else 1
                n = len(rep.calls)
                time.sleep(a.interval * ((i * 0.37) % 1))  # moves land anywhere in the poll cycle
                t = time.monotonic()
                set_alias(url, token, owner, small, "prod", target)
                assert rep.wait_for(lambda: len(rep.calls) > n, 30)
                lat.append(rep.calls[n][0] - t)
            sy.stop()
            rep.close()
            print(f"alias move -> replica load call (sync polling every {a.interval}s, "
                  f"{a.moves} moves): p50 {statistics.median(lat) * 1000:.0f} ms, max "
                  f"{max(lat) * 1000:.0f} ms (target p50 <= 2 s)")
    finally:
        if proc is not None:
            proc.terminate()
            proc.wait(timeout=30)
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
