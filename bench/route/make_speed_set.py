#!/usr/bin/env python3
"""A text set for the embedder *speed* benchmarks, from English prose every Python ships: the
language reference in `pydoc_data.topics`. Standard library only, nothing downloaded.

    python3 bench/route/make_speed_set.py [--out bench/out/route/speed.json]

Why it exists: the routing eval set (make_eval.py) is built from the bigbench 1.0.0 sdist, and on
2026-12-05 PyPI listed only bigbench 0.0.1, so that set could not be rebuilt on a fresh machine.
Speed depends on how many tokens the texts have, not on what they say, so the speed benchmarks
(latency.py, embed_bench) can run on this set instead; routing quality still needs eval.json.

Texts: the reference's paragraphs (code listings and tables dropped, whitespace collapsed), joined
in order within a topic until each text reaches a length drawn uniformly from 60–500 characters
(seed 0), cut at 2,000 characters (about 460 characters on average), or with --cut at the drawn
length (about 280, like the routing eval set's queries). Output has eval.json's shape so the same scripts read it:
{"source", "seed", "tasks": [{"name", "samples": [20 str], "queries": [30 str]}]} — 10 "tasks"
of 50 consecutive texts (they are not routing tasks).
"""
import argparse
import json
import os
import random
import statistics

import pydoc_data.topics


def texts(seed, cut):
    rnd = random.Random(seed)
    out = []
    for name in sorted(pydoc_data.topics.topics):
        paragraphs = []
        for block in pydoc_data.topics.topics[name].split("\n\n"):
            stripped = block.strip()
            if len(stripped) < 40 or stripped.startswith((">>>", "|", "+", "=", "-")):
                continue
            if block.startswith("   "):  # an indented code listing
                continue
            paragraphs.append(" ".join(stripped.split()))
        current, target = "", rnd.randint(60, 500)
        for paragraph in paragraphs:
            current = f"{current} {paragraph}".strip()
            if len(current) >= target:
                if cut:  # at the last space before the drawn length
                    current = current[:target].rsplit(" ", 1)[0]
                out.append(current[:2000])
                current, target = "", rnd.randint(60, 500)
    return out


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", default="bench/out/route/speed.json")
    ap.add_argument("--tasks", type=int, default=10)
    ap.add_argument("--cut", action="store_true",
                    help="cut each text at its drawn length (shorter texts: about 280 characters)")
    args = ap.parse_args()
    all_texts = texts(0, args.cut)
    need = args.tasks * 50
    if len(all_texts) < need:
        raise SystemExit(f"only {len(all_texts)} texts, {need} needed")
    tasks = []
    for i in range(args.tasks):
        chunk = all_texts[i * 50:(i + 1) * 50]
        tasks.append({"name": f"pydoc-{i:02d}", "samples": chunk[:20], "queries": chunk[20:]})
    os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
    with open(args.out, "w") as f:
        json.dump({"source": "pydoc_data.topics (Python's language reference)", "seed": 0,
                   "tasks": tasks}, f)
    queries = [q for t in tasks for q in t["queries"]][:256]
    print(f"{args.out}: {len(tasks)} tasks; first 256 queries: mean "
          f"{statistics.mean(map(len, queries)):.0f} chars, median "
          f"{statistics.median(map(len, queries)):.0f}")


if __name__ == "__main__":
    main()
