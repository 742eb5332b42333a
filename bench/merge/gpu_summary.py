#!/usr/bin/env python3
"""Summary table of one bench/merge/gpu.sh run: usage gpu_summary.py RESULTS_DIR [DATA_DIR].

quiver s/matrix = engine seconds (merge_report.json) ÷ 224; PEFT s/matrix = one-layer time ÷ 7
(a layer has the model's 4 : 2 : 1 mix of shapes); ratio = PEFT s/matrix ÷ quiver s/matrix.
Whole-set PEFT estimate = one-layer time × 32.
"""

import glob
import json
import os
import sys

res = sys.argv[1]
data = sys.argv[2] if len(sys.argv) > 2 else os.path.dirname(res)


def load(name):
    with open(os.path.join(res, name)) as f:
        return json.load(f)


def jsonl(name):
    path = os.path.join(res, name)
    if not os.path.exists(path):
        return []
    with open(path) as f:
        return [json.loads(line) for line in f if line.strip().startswith("{")]


peft = {r["type"]: r for r in jsonl("peft_gpu.jsonl") if "type" in r}
meta = next((r for r in jsonl("peft_gpu.jsonl") if "peft" in r), {})
print(open(os.path.join(res, "machine.txt")).read())
print(f"PEFT {meta.get('peft')} torch {meta.get('torch')} on {meta.get('device')}\n")
print("| run | device | engine s | wall s (read 1.3 GB + write) | s/matrix | routes | max rel. error | PEFT (same GPU) s/matrix | ratio |")
print("| --- | --- | ---: | ---: | ---: | --- | ---: | ---: | ---: |")
peer_of = {"svd": "svd", "ties": "ties_svd", "dare_ties": "dare_ties_svd"}
for rep_path in sorted(glob.glob(os.path.join(res, "*.report.json"))):
    name = os.path.basename(rep_path)[: -len(".report.json")]
    rep = load(os.path.basename(rep_path))
    wall = load(f"{name}.wall.json")["wall_seconds"]
    mods = rep["modules"]
    routes = sorted({m["route"] for m in mods})
    per = rep["seconds"] / len(mods)
    base = name.split("_gpu")[0].split("_cpu")[0]
    p = peft.get(peer_of.get(base, ""), None)
    peer = f"{p['seconds_per_matrix']:.3f} ({p['type']})" if p else "-"
    ratio = f"{p['seconds_per_matrix'] / per:,.0f}x" if p else "-"
    err = max(m["relative_error"] for m in mods)
    print(
        f"| {name} | {rep.get('device', '?')} | {rep['seconds']:.3f} | {wall:.2f} | {per:.5f} | {','.join(routes)} | {err:.4f} | {peer} | {ratio} |"
    )

for t, p in peft.items():
    print(f"\nPEFT {t}: one layer {p['seconds']} s (runs {p.get('all_seconds')}), whole-set estimate {p['seconds'] * 32:.0f} s")

prof = os.path.join(res, "ties_gpu_profile.stderr")
if os.path.exists(prof):
    lines = [l.rstrip() for l in open(prof) if l.startswith("GPU profile") or l.startswith("  ")]
    print("\nProfiled ties run (events around each pass; syncs make it slower than the unprofiled run):\n")
    print("```")
    print("\n".join(lines))
    print("```")

checks = jsonl("check_ties_gpu.jsonl")
if checks:
    print("\nGPU ties result vs numpy (float64 TIES + SVD):\n")
    print("| module | optimal err | reported | ratio | factors err vs numpy dW | dW diff in quiver subspace |")
    print("| --- | ---: | ---: | ---: | ---: | ---: |")
    for c in checks:
        print(
            f"| {c['module']} | {c['optimal_error']:.5f} | {c['quiver_reported_error']:.5f} | {c['ratio_reported_vs_optimal']:.4f} | {c['quiver_factors_error_vs_numpy_dW']:.5f} | {c['dW_diff_in_quiver_subspace']:.2e} |"
        )

# CPU and GPU outputs of the same merge: relative difference of B·A on a few modules.
print()
for base in ["svd", "ties"]:
    try:
        import numpy as np
        from safetensors.numpy import load_file

        g = load_file(os.path.join(data, f"out_{base}_gpu", "adapter_model.safetensors"))
        c = load_file(os.path.join(data, f"out_{base}_cpu", "adapter_model.safetensors"))
    except Exception as e:  # noqa: BLE001 - report and go on
        print(f"{base}: CPU/GPU outputs not compared ({e})")
        continue
    worst = 0.0
    keys = sorted(k for k in g if k.endswith("lora_A.weight"))[:14]
    for ka in keys:
        kb = ka.replace("lora_A", "lora_B")
        pg = g[kb].astype(np.float64) @ g[ka].astype(np.float64)
        pc = c[kb].astype(np.float64) @ c[ka].astype(np.float64)
        worst = max(worst, float(np.linalg.norm(pg - pc) / np.linalg.norm(pc)))
    print(f"{base}: GPU vs CPU output, max ‖ΔB·A‖/‖B·A‖ over {len(keys)} modules: {worst:.2e}")
