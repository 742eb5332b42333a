#!/usr/bin/env python3
"""Search-only speed of the route index at 100,000 profiles, beside numpy's exact scan in the same run.

    PY=/tmp/routevenv/bin/python; $PY bench/route/search.py [--n 100000] [--dim 384] [--queries 200]

Builds `cargo build --release -p quiver-retrieve --example search_bench` first (or set BENCH_BIN).
Data: unit vectors around 2,000 cluster centres (cosine to the centre ~0.6, like sentence
embeddings of related tasks), seeded; queries drawn the same way. Both sides use 2 threads.
Prints quiver's p50 (int8 scan + exact re-rank), its recall@10 against its own exact f32 scan,
numpy's exact-scan p50, the ratio, and the index's vector memory.
"""
import argparse
import json
import os
import subprocess
import sys
import tempfile
import time

os.environ.setdefault("OMP_NUM_THREADS", "2")
os.environ.setdefault("OPENBLAS_NUM_THREADS", "2")
import numpy as np  # noqa: E402

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def clustered(rng, n, dim, centres):
    idx = rng.integers(0, len(centres), n)
    x = centres[idx] + 0.75 * rng.standard_normal((n, dim)).astype(np.float32) / np.sqrt(dim)
    return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--n", type=int, default=100_000)
    ap.add_argument("--dim", type=int, default=384)
    ap.add_argument("--queries", type=int, default=200)
    ap.add_argument("--k", type=int, default=10)
    args = ap.parse_args()
    rng = np.random.default_rng(0)
    centres = rng.standard_normal((2000, args.dim)).astype(np.float32)
    centres /= np.linalg.norm(centres, axis=1, keepdims=True)
    profiles = clustered(rng, args.n, args.dim, centres)
    queries = clustered(rng, args.queries, args.dim, centres)

    # numpy: exact scan (one matrix-vector product per query) and top-k by argpartition.
    times = []
    for q in queries[:5]:
        np.argpartition(-(profiles @ q), args.k)[: args.k]
    for q in queries:
        t = time.perf_counter()
        s = profiles @ q
        top = np.argpartition(-s, args.k)[: args.k]
        top[np.argsort(-s[top])]
        times.append((time.perf_counter() - t) * 1e3)
    numpy_p50 = float(np.percentile(times, 50))

    binary = os.environ.get("BENCH_BIN", os.path.join(ROOT, "target/release/examples/search_bench"))
    if "BENCH_BIN" not in os.environ:
        subprocess.run(["cargo", "build", "--release", "--quiet", "-p", "quiver-retrieve",
                        "--example", "search_bench"], cwd=ROOT, check=True)
    with tempfile.TemporaryDirectory() as tmp:
        p, q = os.path.join(tmp, "profiles.f32"), os.path.join(tmp, "queries.f32")
        profiles.astype("<f4").tofile(p)
        queries.astype("<f4").tofile(q)
        env = dict(os.environ, RAYON_NUM_THREADS="2")
        out = subprocess.run([binary, p, q, str(args.dim), str(args.k)], env=env,
                             capture_output=True, text=True, check=True).stdout
    r = json.loads(out.strip().splitlines()[-1])
    r["numpy_exact_p50_ms"] = numpy_p50
    r["ratio_p50_quiver_over_numpy"] = r["search_p50_ms"] / numpy_p50
    r["index_vector_mib"] = r["index_vector_bytes"] / 2**20
    r["profiles_f32_mib"] = profiles.nbytes / 2**20
    print(json.dumps(r, indent=1))
    print(f"\nquiver p50 {r['search_p50_ms']:.2f} ms (recall@{args.k} {r['recall_at_k']:.4f}), "
          f"its exact scan {r['exact_p50_ms']:.2f} ms, numpy exact {numpy_p50:.2f} ms "
          f"→ ratio {r['ratio_p50_quiver_over_numpy']:.2f}; index vectors {r['index_vector_mib']:.0f} MiB",
          file=sys.stderr)


if __name__ == "__main__":
    main()
