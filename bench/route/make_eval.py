#!/usr/bin/env python3
"""Build the adapter-routing evaluation set from BIG-bench's task files (PyPI `bigbench` 1.0.0).

    python3 bench/route/make_eval.py [--cache DIR] [--out FILE] [--tasks N]

Defaults: --cache bench/out/route/cache, --out bench/out/route/eval.json, --tasks 40.
Standard library only; it needs `pip` (the interpreter's own, `python -m pip`) and PyPI.

Source. The bigbench 1.0.0 sdist on PyPI (358 MB) ships every task's `task.json` under
bigbench/benchmark_tasks/. pip downloads and unpacks it but then refuses it, because its setup.py
declares a `bleurt @ file://...` dependency ("Distributions from PyPI cannot declare direct URL
dependencies"). So the script runs `pip download --no-clean` with TMPDIR inside the cache dir,
takes the unpacked tree that pip leaves there whatever its exit code, copies the top-level
`*/task.json` files and PKG-INFO into DIR/bigbench-<version>/, and removes the rest. Later runs
reuse that copy.

Selection (deterministic, seed 0). A top-level task (one with `examples` in its own task.json;
tasks split into subtask folders are not used) is eligible when, after dropping empty inputs
and exact duplicates, it has at least 60 distinct `examples[*].input` strings, at least 80 % of
its inputs are distinct, and their median length is at least 20 characters (this drops
one-token templates such as `simple_arithmetic_json` or `phrase_relatedness`). From the
eligible tasks, shuffled with the seed, N are picked greedily for diversity: each step takes
the first task whose BIG-bench keywords have been used least so far. Per task, 50 distinct
inputs are drawn at random (seeded with the seed and the task's name): the first 20 are the
adapter's routing "samples", the other 30 the held-out "queries". Inputs are cut to 2,000
characters.

Output: {"source": "bigbench 1.0.0 (PyPI sdist)", "seed": 0,
         "tasks": [{"name", "keywords", "samples": [20 str], "queries": [30 str]}]}
"""

import argparse
import glob
import json
import os
import random
import shutil
import statistics
import subprocess
import sys
from pathlib import Path

PACKAGE = "bigbench"
VERSION = "1.0.0"
SEED = 0
N_SAMPLES = 20
N_QUERIES = 30
MAX_CHARS = 2000
MIN_DISTINCT = 60
MIN_DISTINCT_FRACTION = 0.8
MIN_MEDIAN_CHARS = 20

REPO = Path(__file__).resolve().parents[2]


def fetch(cache: Path) -> Path:
    """Return DIR/bigbench-<version>/ holding benchmark_tasks/<task>/task.json and PKG-INFO."""
    dest = cache / f"{PACKAGE}-{VERSION}"
    if (dest / "COMPLETE").exists():
        return dest
    tmp = cache / "tmp"
    shutil.rmtree(tmp, ignore_errors=True)
    shutil.rmtree(dest, ignore_errors=True)
    tmp.mkdir(parents=True)
    cmd = [sys.executable, "-m", "pip", "download", f"{PACKAGE}=={VERSION}", "--no-deps",
           "--no-binary", ":all:", "--no-clean", "--disable-pip-version-check",
           "-d", str(cache / "dist")]
    print("running:", " ".join(cmd), file=sys.stderr)
    proc = subprocess.run(cmd, env={**os.environ, "TMPDIR": str(tmp)},
                          capture_output=True, text=True)
    # Expected to fail on the bleurt file:// dependency, after the sdist was unpacked.
    trees = glob.glob(str(tmp / "pip-*" / f"{PACKAGE}_*" / "PKG-INFO"))
    if len(trees) != 1:
        sys.stderr.write(proc.stdout + proc.stderr)
        sys.exit(f"pip left no unpacked {PACKAGE} sdist under {tmp}")
    src = Path(trees[0]).parent
    pkg_info = (src / "PKG-INFO").read_text(encoding="utf-8")
    if f"\nVersion: {VERSION}\n" not in pkg_info:
        sys.exit(f"unexpected PKG-INFO in {src}")
    (dest / "benchmark_tasks").mkdir(parents=True)
    shutil.copy(src / "PKG-INFO", dest / "PKG-INFO")
    n = 0
    for task_json in sorted((src / "bigbench" / "benchmark_tasks").glob("*/task.json")):
        (dest / "benchmark_tasks" / task_json.parent.name).mkdir()
        shutil.copy(task_json, dest / "benchmark_tasks" / task_json.parent.name / "task.json")
        n += 1
    shutil.rmtree(tmp)
    (dest / "COMPLETE").write_text(f"{n} task.json files\n")
    print(f"cached {n} task.json files in {dest}", file=sys.stderr)
    return dest


def load_tasks(root: Path):
    tasks = []
    for path in sorted((root / "benchmark_tasks").glob("*/task.json")):
        doc = json.loads(path.read_text(encoding="utf-8"))
        inputs = [e.get("input") for e in doc.get("examples", [])]
        inputs = [s for s in inputs if isinstance(s, str) and s.strip()]
        distinct = list(dict.fromkeys(s[:MAX_CHARS] for s in inputs))
        tasks.append({
            "name": path.parent.name,
            "keywords": list(doc.get("keywords", [])),
            "n_inputs": len(inputs),
            "inputs": distinct,
        })
    return tasks


def eligible(task) -> bool:
    inputs = task["inputs"]
    return (len(inputs) >= MIN_DISTINCT
            and len(inputs) >= MIN_DISTINCT_FRACTION * task["n_inputs"]
            and statistics.median(len(s) for s in inputs) >= MIN_MEDIAN_CHARS)


def pick_diverse(tasks, n, seed):
    pool = list(tasks)
    random.Random(seed).shuffle(pool)
    used = {}
    chosen = []
    while pool and len(chosen) < n:
        def cost(t):
            kws = t["keywords"] or ["(none)"]
            return sum(used.get(k, 0) for k in kws) / len(kws)
        best = min(pool, key=cost)  # min() keeps the first of equal costs: the shuffled order
        pool.remove(best)
        chosen.append(best)
        for k in best["keywords"] or ["(none)"]:
            used[k] = used.get(k, 0) + 1
    return chosen


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--cache", type=Path, default=REPO / "bench/out/route/cache")
    ap.add_argument("--out", type=Path, default=REPO / "bench/out/route/eval.json")
    ap.add_argument("--tasks", type=int, default=40)
    args = ap.parse_args()

    root = fetch(args.cache.resolve())
    tasks = load_tasks(root)
    ok = [t for t in tasks if eligible(t)]
    print(f"{len(tasks)} top-level tasks with examples in {root.name}, {len(ok)} eligible",
          file=sys.stderr)
    if len(ok) < args.tasks:
        sys.exit(f"only {len(ok)} eligible tasks, {args.tasks} wanted")
    chosen = sorted(pick_diverse(ok, args.tasks, SEED), key=lambda t: t["name"])

    out_tasks = []
    for t in chosen:
        rng = random.Random(f"{SEED}:{t['name']}")
        draw = rng.sample(t["inputs"], N_SAMPLES + N_QUERIES)
        out_tasks.append({
            "name": t["name"],
            "keywords": t["keywords"],
            "samples": draw[:N_SAMPLES],
            "queries": draw[N_SAMPLES:],
        })
        print(f"  {t['name']:45s} {len(t['inputs']):6d} distinct inputs  "
              f"{', '.join(t['keywords'][:3])}", file=sys.stderr)

    doc = {"source": f"{PACKAGE} {VERSION} (PyPI sdist)", "seed": SEED, "tasks": out_tasks}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(doc, ensure_ascii=False, indent=1) + "\n", encoding="utf-8")
    print(f"wrote {args.out}: {len(out_tasks)} tasks x ({N_SAMPLES} samples + {N_QUERIES} queries)",
          file=sys.stderr)


if __name__ == "__main__":
    main()
