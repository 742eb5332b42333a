#!/usr/bin/env python3
"""The reference side of the routing eval: sentence-transformers (all-MiniLM-L6-v2, CPU, torch)
and numpy run every pooling and recipe that quiver's `route_eval` runs, on the same splits.

    HF_HUB_OFFLINE=1 /tmp/routevenv/bin/python bench/route/st_eval.py MODEL_DIR SPLIT.json... > st.json

Poolings: `last` is ``model.encode(texts, normalize_embeddings=True)`` (LoraRetriever's
embedding); `layers` runs the same model's transformer with ``output_hidden_states`` and computes
normalise(0.7 * n(mean of hidden_states[4]) + n(mean of hidden_states[6])) over the attention
mask, n = L2 normalisation (quiver's `--embedder-pooling layers`). The `last` mean computed from
the hidden states is checked against ``encode`` before anything is scored.

Recipes (numpy, on unit vectors): centroid (LoraRetriever: cosine with the normalised mean of the
task's samples), centered (mu = mean of every sample; cosine of query - mu with mean - mu), max
(best sample), top3_mean, centroid_max ((centroid cosine + best sample cosine) / 2).
`+bm25` (centroid and centered): dense + 0.1 * (std(dense) / std(bm25)) * bm25 over the tasks,
BM25 (k1 1.2, b 0.75) of the query's terms against each task's samples as one document, terms as
quiver's `retrieve/src/lexical.rs` makes them (lower-cased alphanumeric runs, function words
dropped, -ing/-ed/-es/-s stripped).
Rank = 1 + the number of tasks scoring strictly higher; top-1 / top-3 overall and per task.
Output: the JSON shape route_eval prints, for bench/route/report.py.
"""

import json
import math
import os
import re
import sys

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # never reach for a model hub

import numpy as np
import torch
from sentence_transformers import SentenceTransformer

LAYER, WEIGHT = 4, 0.7
THREADS = 2


STOP = set(
    "a an the of or and to in on for with by as at from is are be was were that this which it its "
    "their his her who whom into than i you he she we they me my your not but if so do does did "
    "have has had will would can could".split()
)
LEXICAL_WEIGHT, K1, B = 0.1, 1.2, 0.75


def terms(text):
    out = []
    for w in re.findall(r"[^\W_]+", text):
        w = w.lower()
        if w in STOP:
            continue
        for suffix in ("ing", "ed", "es", "s"):
            if len(w.encode()) > len(suffix) + 2 and w.endswith(suffix):
                w = w[: -len(suffix)]
                break
        out.append(w)
    return out


def bm25(queries, docs):
    """queries: list of texts; docs: list of lists of texts (one document per task)."""
    docs = [[t for text in d for t in terms(text)] for d in docs]
    df = {}
    for d in docs:
        for t in set(d):
            df[t] = df.get(t, 0) + 1
    tfs = [{t: d.count(t) for t in set(d)} for d in docs]
    avg = max(sum(map(len, docs)) / len(docs), 1.0)
    out = np.zeros((len(queries), len(docs)))
    for qi, q in enumerate(queries):
        for t in dict.fromkeys(terms(q)):
            if t not in df:
                continue
            idf = math.log(1 + (len(docs) - df[t] + 0.5) / (df[t] + 0.5))
            for i, tf in enumerate(tfs):
                f = tf.get(t)
                if f:
                    out[qi, i] += idf * f * (K1 + 1) / (f + K1 * (1 - B + B * len(docs[i]) / avg))
    return out


def fuse(dense, lexical):
    sd, sl = dense.std(1, keepdims=True), lexical.std(1, keepdims=True)
    scale = np.where(sl > 1e-7, LEXICAL_WEIGHT * sd / np.maximum(sl, 1e-12), 0.0)
    return dense + scale * lexical


def unit(x):
    return x / np.maximum(np.linalg.norm(x, axis=-1, keepdims=True), 1e-12)


def pooled(model, texts, pooling):
    if pooling == "last":
        return model.encode(texts, normalize_embeddings=True, batch_size=64, convert_to_numpy=True)
    out = []
    for i in range(0, len(texts), 64):
        features = model.tokenize(texts[i : i + 64])
        with torch.no_grad():
            hidden = model[0].auto_model(**features, output_hidden_states=True).hidden_states
        mask = features["attention_mask"].unsqueeze(-1).float()
        mean = [((h * mask).sum(1) / mask.sum(1)).numpy() for h in hidden]
        out.append(unit(WEIGHT * unit(mean[LAYER]) + unit(mean[-1])))
        if i == 0:  # the hidden-state path reproduces encode() for the last block
            ref = model.encode(texts[:64], normalize_embeddings=True, convert_to_numpy=True)
            worst = float((unit(mean[-1]) * ref).sum(1).min())
            assert worst > 0.99999, f"last-block mean differs from encode(): cosine {worst}"
    return np.concatenate(out)


def recipe_scores(q, samples):
    centroid = unit(np.stack([s.mean(0) for s in samples]))
    sims = [q @ s.T for s in samples]
    best = np.stack([s.max(1) for s in sims], 1)
    mu = np.concatenate(samples).mean(0)
    return {
        "centroid": q @ centroid.T,
        "centered": unit(q - mu) @ unit(np.stack([s.mean(0) for s in samples]) - mu).T,
        "max": best,
        "top3_mean": np.stack([np.sort(s, 1)[:, -3:].mean(1) for s in sims], 1),
        "centroid_max": (q @ centroid.T + best) / 2,
    }


def main():
    torch.set_num_threads(THREADS)
    model = SentenceTransformer(sys.argv[1], device="cpu")
    splits = {}
    for path in sys.argv[2:]:
        ev = json.load(open(path, encoding="utf-8"))
        tasks = ev["tasks"]
        truth = np.array([i for i, t in enumerate(tasks) for _ in t["queries"]])
        queries = [q for t in tasks for q in t["queries"]]
        results = {}
        lexical = bm25(queries, [t["samples"] for t in tasks])
        for pooling in ("last", "layers"):
            samples = [pooled(model, t["samples"], pooling) for t in tasks]
            q = pooled(model, queries, pooling)
            scored = recipe_scores(q, samples)
            for recipe in ("centroid", "centered"):
                scored[recipe + "+bm25"] = fuse(scored[recipe], lexical)
            for recipe, scores in scored.items():
                own = scores[np.arange(len(truth)), truth]
                rank = 1 + (scores > own[:, None]).sum(1)
                results[f"{pooling}/{recipe}"] = {
                    "top1": float((rank == 1).mean()),
                    "top3": float((rank <= 3).mean()),
                    "per_task": [
                        [float((rank[truth == i] == 1).mean()), float((rank[truth == i] <= 3).mean())]
                        for i in range(len(tasks))
                    ],
                }
        splits[ev["split"]] = {"tasks": [t["name"] for t in tasks], "queries": len(queries),
                               "results": results}
    json.dump({"peer": "sentence-transformers + numpy", "splits": splits}, sys.stdout)
    print()


if __name__ == "__main__":
    main()
