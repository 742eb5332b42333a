#!/usr/bin/env python3
"""sentence-transformers' encode speed on the figures embed_bench measures, for embed_speed.sh:
one short prompt (p50 of 200 after 20 warm-ups) and the first 256 queries of TEXTS.json in one
encode(batch_size=64) (prompts/s, best of 3 after a warm-up); torch with 2 threads.

    python st_encode_speed.py MODEL_DIR TEXTS.json     → one JSON line
"""
import json
import statistics
import sys
import time

import torch
from sentence_transformers import SentenceTransformer

PROMPT = "Translate this sentence into French: the weather is nice today."


def main():
    model_dir, texts_path = sys.argv[1], sys.argv[2]
    torch.set_num_threads(2)
    model = SentenceTransformer(model_dir, device="cpu")
    tasks = json.load(open(texts_path))["tasks"]
    queries = [q for t in tasks for q in t["queries"]][:256]
    for _ in range(20):
        model.encode([PROMPT], normalize_embeddings=True)
    single = []
    for _ in range(200):
        t = time.perf_counter()
        model.encode([PROMPT], normalize_embeddings=True)
        single.append((time.perf_counter() - t) * 1e3)
    model.encode(queries, batch_size=64, normalize_embeddings=True)
    best = 0.0
    for _ in range(3):
        t = time.perf_counter()
        model.encode(queries, batch_size=64, normalize_embeddings=True)
        best = max(best, len(queries) / (time.perf_counter() - t))
    tokens = model.tokenizer(queries, truncation=True, max_length=model.max_seq_length)["input_ids"]
    print(json.dumps({
        "single_p50_ms": statistics.median(single),
        "batch256_prompts_per_s": best,
        "mean_chars": statistics.mean(map(len, queries)),
        "mean_tokens": statistics.mean(map(len, tokens)),
    }))


if __name__ == "__main__":
    main()
