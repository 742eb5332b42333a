#!/usr/bin/env python3
"""Merge jobs on the GPU through the service, checked against the CPU engine (run ON a GPU machine).

Usage: gpu_service_check.py QUIVER_BINARY ADAPTER_DIR [ADAPTER_DIR ...]

With a fresh SQLite + files data directory:
1. `quiver serve --job-workers 0` and a separate `quiver worker --device cuda`: a TIES job;
2. `quiver serve --job-workers 1 --device cuda` (the in-process worker): an SVD job.
For each job: the published version's lineage must name a `cuda` device (`QUIVER_CHECK_DEVICE=cpu` tries
the script itself on a CPU build), and its B·A must equal
what `quiver merge --device cpu` makes from the same directories (relative Frobenius difference
≤ 1e-5 for svd, ≤ 1e-2 for ties, as merge/tests/gpu.rs). Prints one JSON line per job; exit
status 1 on any failure. Needs numpy and safetensors (the GPU image has both).
"""

import json
import os
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
import uuid

import numpy as np
from safetensors.numpy import load_file

QUIVER = os.path.abspath(sys.argv[1])
INPUTS = [os.path.abspath(d) for d in sys.argv[2:]]
PORT = 18181
API = f"http://127.0.0.1:{PORT}/api/v1"
DATA = tempfile.mkdtemp(prefix="qgpu-service-")
ENV = dict(os.environ, QUIVER_DATA_DIR=DATA)
# cpu only to try the script itself on a machine with no GPU.
DEVICE = os.environ.get("QUIVER_CHECK_DEVICE", "cuda")


def call(method, path, token=None, body=None, content_type="application/json"):
    headers = {"content-type": content_type} if body is not None else {}
    if token:
        headers["authorization"] = f"Bearer {token}"
    if isinstance(body, (dict, list)):
        body = json.dumps(body).encode()
    req = urllib.request.Request(API + path, data=body, method=method, headers=headers)
    try:
        with urllib.request.urlopen(req, timeout=120) as r:
            raw = r.read()
    except urllib.error.HTTPError as e:
        raise SystemExit(f"{method} {path}: {e.code} {e.read().decode(errors='replace')}")
    return raw if not raw.startswith(b"{") else json.loads(raw)


def multipart(files):
    boundary = uuid.uuid4().hex
    out = b""
    for name in files:
        with open(name, "rb") as f:
            data = f.read()
        out += (
            f"--{boundary}\r\ncontent-disposition: form-data; name=\"file\"; "
            f"filename=\"{os.path.basename(name)}\"\r\ncontent-type: application/octet-stream\r\n\r\n"
        ).encode() + data + b"\r\n"
    return out + f"--{boundary}--\r\n".encode(), f"multipart/form-data; boundary={boundary}"


def start(*args):
    return subprocess.Popen([QUIVER, *args], env=ENV, stdout=subprocess.DEVNULL,
                            stderr=open(os.path.join(DATA, f"{args[0]}-{time.time()}.log"), "w"))


def wait_up():
    for _ in range(200):
        try:
            urllib.request.urlopen(f"http://127.0.0.1:{PORT}/healthz", timeout=2).read()
            return
        except (urllib.error.URLError, ConnectionError):
            time.sleep(0.1)
    raise SystemExit("server did not start")


def products(path):
    t = load_file(path)
    out = {}
    for ka in (k for k in t if k.endswith("lora_A.weight")):
        kb = ka.replace("lora_A", "lora_B")
        out[ka[: -len(".lora_A.weight")]] = t[kb].astype(np.float64) @ t[ka].astype(np.float64)
    return out


def job(token, name, spec, cli_args, tolerance, weights):
    body = dict(spec)
    body["inputs"] = [{"adapter": f"gpu/in{i}", "weight": w} for i, w in enumerate(weights)]
    body["output"] = {"adapter": f"gpu/{name}", "create": True}
    started = time.time()
    jid = call("POST", "/merges", token, body)["id"]
    while True:
        j = call("GET", f"/jobs/{jid}", token)
        if j["state"] in ("succeeded", "failed", "cancelled"):
            break
        if time.time() - started > 300:
            raise SystemExit(f"job {name} still {j['state']} after 300 s")
        time.sleep(0.2)
    if j["state"] != "succeeded":
        return {"job": name, "ok": False, "state": j["state"], "error": j.get("error")}
    version = call("GET", f"/adapters/gpu/{name}/versions/main", token)
    device = str((version.get("lineage") or {}).get("device"))
    got = os.path.join(DATA, f"{name}.safetensors")
    with open(got, "wb") as f:
        f.write(call("GET", f"/adapters/gpu/{name}/versions/main/files/adapter_model.safetensors"))
    cpu_out = os.path.join(DATA, f"{name}-cpu")
    subprocess.run([QUIVER, "merge", "--device", "cpu", *cli_args,
                    "--weights", ",".join(map(str, weights)), "--out", cpu_out, *INPUTS],
                   check=True, env=ENV, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    g, c = products(got), products(os.path.join(cpu_out, "adapter_model.safetensors"))
    worst = max(float(np.linalg.norm(g[k] - c[k]) / np.linalg.norm(c[k])) for k in c)
    on_gpu = device.startswith(DEVICE)
    return {"job": name, "ok": on_gpu and worst <= tolerance and set(g) == set(c),
            "seconds": round(time.time() - started, 2), "lineage_device": device,
            "modules": len(c), "max_rel_diff_vs_cpu": worst, "tolerance": tolerance}


def main():
    token = subprocess.run([QUIVER, "token", "create", "--user", "gpu", "--scope", "write"],
                           env=ENV, check=True, capture_output=True, text=True).stdout.split()[-1]
    weights = [round(1.0 / len(INPUTS), 6)] * len(INPUTS)
    results = []
    server = start("serve", "--bind", f"127.0.0.1:{PORT}", "--job-workers", "0")
    worker = start("worker", "--device", DEVICE)
    try:
        wait_up()
        for i, d in enumerate(INPUTS):
            call("POST", "/adapters", token, {"owner": "gpu", "name": f"in{i}",
                                              "base_model": "llama-7b-shaped"})
            body, ct = multipart([os.path.join(d, f) for f in sorted(os.listdir(d))])
            call("POST", f"/adapters/gpu/in{i}/versions", token, body, ct)
        results.append(job(token, "ties-worker", {"method": "ties", "density": 0.2, "rank": 16},
                           ["--method", "ties", "--density", "0.2", "--rank", "16"], 1e-2, weights))
    finally:
        worker.terminate()
        server.terminate()
        worker.wait()
        server.wait()
    server = start("serve", "--bind", f"127.0.0.1:{PORT}", "--job-workers", "1", "--device", DEVICE)
    try:
        wait_up()
        results.append(job(token, "svd-serve", {"method": "svd", "rank": 16},
                           ["--method", "svd", "--rank", "16"], 1e-5, weights))
    finally:
        server.terminate()
        server.wait()
    for r in results:
        print(json.dumps(r))
    sys.exit(0 if all(r["ok"] for r in results) else 1)


if __name__ == "__main__":
    main()
