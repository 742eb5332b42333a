#!/usr/bin/env python3
"""End-to-end routing speed: `POST /api/v1/route` of a real `quiver serve` (release build, SQLite,
1,000 adapters with profiles) beside sentence-transformers' own `encode` of the same prompts in
the same run, on the same machine (torch with 2 threads; the server idle while torch runs).

    PY=/tmp/routevenv/bin/python   # bench/route/setup-venv.sh makes it
    $PY bench/route/latency.py MODEL_DIR bench/out/route/eval.json [--adapters 1000]

Seeding: adapter i gets a tiny LoRA and --samples (5) samples of eval task i mod T as samples.jsonl; the
server's embed jobs compute the profiles. Measured: (a) one short prompt, 200 sequential requests
after 20 warm-ups, p50/p90 ms, against ST encode of that prompt (same counts); (b) the first 256
eval queries in one request, 5 repetitions after a warm-up, prompts/s, against ST
encode(batch_size=64). Prints the ratios the issue sets targets on.
"""
import argparse
import http.client
import json
import os
import random
import shutil
import statistics
import struct
import subprocess
import sys
import tempfile
import time

os.environ.setdefault("HF_HUB_OFFLINE", "1")
ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
SHORT_PROMPT = "Translate this sentence into French: the weather is nice today."


def tiny_adapter(seed):
    """adapter_config.json + adapter_model.safetensors (one rank-2 q_proj, 8x8, f32)."""
    rnd = random.Random(seed)
    tensors = {}
    for key, shape in [("base_model.model.layers.0.q_proj.lora_A.weight", (2, 8)),
                       ("base_model.model.layers.0.q_proj.lora_B.weight", (8, 2))]:
        tensors[key] = (shape, struct.pack(f"<{shape[0] * shape[1]}f",
                                           *[rnd.uniform(-1, 1) for _ in range(shape[0] * shape[1])]))
    header, offset, data = {}, 0, b""
    for key, (shape, raw) in tensors.items():
        header[key] = {"dtype": "F32", "shape": list(shape), "data_offsets": [offset, offset + len(raw)]}
        offset += len(raw)
        data += raw
    h = json.dumps(header).encode()
    h += b" " * ((8 - len(h) % 8) % 8)
    weights = struct.pack("<Q", len(h)) + h + data
    config = json.dumps({"peft_type": "LORA", "r": 2, "lora_alpha": 2, "target_modules": ["q_proj"],
                         "base_model_name_or_path": "bench/base"}).encode()
    return config, weights


class Client:
    def __init__(self, port, token):
        self.conn = http.client.HTTPConnection("127.0.0.1", port, timeout=600)
        self.token = token

    def call(self, method, path, body=None, headers=None):
        h = {"Authorization": f"Bearer {self.token}"}
        h.update(headers or {})
        if isinstance(body, (dict, list)):
            body = json.dumps(body).encode()
            h["Content-Type"] = "application/json"
        self.conn.request(method, path, body=body, headers=h)
        r = self.conn.getresponse()
        data = r.read()
        return r.status, (json.loads(data) if data else None)


def multipart(files):
    boundary = "quiverbench"
    out = b""
    for name, data in files:
        out += (f"--{boundary}\r\nContent-Disposition: form-data; name=\"file\"; filename=\"{name}\"\r\n"
                f"Content-Type: application/octet-stream\r\n\r\n").encode() + data + b"\r\n"
    return out + f"--{boundary}--\r\n".encode(), f"multipart/form-data; boundary={boundary}"


def pct(xs, p):
    xs = sorted(xs)
    return xs[min(len(xs) - 1, round((len(xs) - 1) * p))]


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("model_dir")
    ap.add_argument("eval_json")
    ap.add_argument("--adapters", type=int, default=1000)
    ap.add_argument("--port", type=int, default=18931)
    ap.add_argument("--samples", type=int, default=5, help="samples per adapter")
    args = ap.parse_args()
    quiver = os.environ.get("QUIVER", os.path.join(ROOT, "target/release/quiver"))
    tasks = json.load(open(args.eval_json))["tasks"]
    queries = [q for t in tasks for q in t["queries"]][:256]
    data = tempfile.mkdtemp(prefix="qroute-")
    env = dict(os.environ, QUIVER_DATA_DIR=data, RUST_LOG="warn")
    token = subprocess.run([quiver, "token", "create", "--user", "bench"], env=env,
                           capture_output=True, text=True, check=True).stdout.strip().splitlines()[-1]
    server = subprocess.Popen([quiver, "serve", "--bind", f"127.0.0.1:{args.port}",
                               "--embedder-dir", args.model_dir], env=env,
                              stdout=subprocess.DEVNULL, stderr=open(os.path.join(data, "serve.log"), "w"))
    try:
        for _ in range(200):
            try:
                c = Client(args.port, token)
                if c.call("GET", "/healthz")[0] == 200:
                    break
            except OSError:
                time.sleep(0.1)
        c = Client(args.port, token)
        t0 = time.time()
        rnd = random.Random(0)
        for i in range(args.adapters):
            task = tasks[i % len(tasks)]
            st, body = c.call("POST", "/api/v1/adapters", {"owner": "bench", "name": f"a{i}",
                                                           "base_model": "bench/base"})
            assert st == 201, body
            config, weights = tiny_adapter(i)
            samples = "".join(json.dumps({"input": s}) + "\n" for s in rnd.sample(task["samples"], args.samples))
            payload, ctype = multipart([("adapter_config.json", config),
                                        ("adapter_model.safetensors", weights),
                                        ("samples.jsonl", samples.encode())])
            st, body = c.call("POST", f"/api/v1/adapters/bench/a{i}/versions", payload,
                              {"Content-Type": ctype})
            assert st == 201, body
        seeded = time.time() - t0
        while True:
            st, page = c.call("GET", "/api/v1/jobs?state=queued&limit=1")
            st2, running = c.call("GET", "/api/v1/jobs?state=running&limit=1")
            if not page["items"] and not running["items"]:
                break
            time.sleep(0.5)
        st, one = c.call("POST", "/api/v1/route", {"inputs": [SHORT_PROMPT], "top_k": 3})
        assert st == 200, one
        profiled = time.time() - t0 - seeded
        print(f"seeded {args.adapters} adapters in {seeded:.1f} s; profiles computed in {profiled:.1f} s",
              file=sys.stderr)

        def route_once(inputs):
            t = time.perf_counter()
            st, body = c.call("POST", "/api/v1/route", {"inputs": inputs, "top_k": 3})
            assert st == 200 and len(body["results"]) == len(inputs), body
            return time.perf_counter() - t

        for _ in range(20):
            route_once([SHORT_PROMPT])
        single = [route_once([SHORT_PROMPT]) * 1e3 for _ in range(200)]
        route_once(queries)
        batch = [len(queries) / route_once(queries) for _ in range(5)]
    finally:
        server.terminate()
        server.wait(timeout=30)

    import torch
    from sentence_transformers import SentenceTransformer
    torch.set_num_threads(2)
    model = SentenceTransformer(args.model_dir, device="cpu")
    for _ in range(20):
        model.encode([SHORT_PROMPT], normalize_embeddings=True)
    st_single = []
    for _ in range(200):
        t = time.perf_counter()
        model.encode([SHORT_PROMPT], normalize_embeddings=True)
        st_single.append((time.perf_counter() - t) * 1e3)
    model.encode(queries, batch_size=64, normalize_embeddings=True)
    st_batch = []
    for _ in range(5):
        t = time.perf_counter()
        model.encode(queries, batch_size=64, normalize_embeddings=True)
        st_batch.append(len(queries) / (time.perf_counter() - t))

    result = {
        "adapters": args.adapters,
        "route_single_p50_ms": pct(single, 0.5), "route_single_p90_ms": pct(single, 0.9),
        "st_encode_single_p50_ms": pct(st_single, 0.5), "st_encode_single_p90_ms": pct(st_single, 0.9),
        "ratio_single_p50": pct(single, 0.5) / pct(st_single, 0.5),
        "route_batch256_prompts_per_s_median": statistics.median(batch), "route_batch256_best": max(batch),
        "st_batch64_prompts_per_s_median": statistics.median(st_batch), "st_batch64_best": max(st_batch),
        "ratio_batch_median": statistics.median(batch) / statistics.median(st_batch),
        "mean_query_chars": sum(map(len, queries)) / len(queries),
    }
    print(json.dumps(result, indent=1))
    shutil.rmtree(data, ignore_errors=True)


if __name__ == "__main__":
    main()
