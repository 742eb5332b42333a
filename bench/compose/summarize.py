#!/usr/bin/env python3
"""Prints the tables of bench/compose/run.sh from its results directory.

Usage: summarize.py RES_DIR OUTS_DIR N
"""

import glob
import json
import os
import re
import sys
from collections import Counter


def gnu_time(path):
    """(wall seconds, peak RSS KiB, exit status) from a `/usr/bin/time -v` stderr file."""
    txt = open(path).read()
    m = re.search(r"Elapsed \(wall clock\) time \(h:mm:ss or m:ss\): (\S+)", txt)
    parts = [float(x) for x in m.group(1).split(":")]
    wall = sum(p * 60 ** i for i, p in enumerate(reversed(parts)))
    rss = int(re.search(r"Maximum resident set size \(kbytes\): (\d+)", txt).group(1))
    status = int(re.search(r"Exit status: (\d+)", txt).group(1))
    return wall, rss, status


def load(res, name):
    """Compact form of the cpuwatch summary in RES/NAME.load ('' when absent)."""
    p = os.path.join(res, f"{name}.load")
    if not os.path.exists(p):
        return "n/a"
    txt = open(p).read().strip()
    m = re.search(r"used (\d+)% of a core on average \(max (\d+)%\), >=20% in (\d+) of (\d+) s; top: (.*)", txt)
    if not m:
        return txt
    avg, mx, busy, tot, top = m.groups()
    return f"{avg}% avg, max {mx}%, ≥20% in {busy}/{tot} s" + (f" ({top})" if int(busy) else "")


def mib(kib):
    return f"{kib / 1024:.0f}"


def mb(b):
    return f"{b / 1e6:.2f}"


def main():
    res, outs, n = sys.argv[1], sys.argv[2], int(sys.argv[3])
    print(open(os.path.join(res, "machine.txt")).read().rstrip())

    # --- merges ---------------------------------------------------------------------------------
    print("\n### Merges of 4 rank-16 adapters (adapter_000..003, one per family), one layer, 7 modules\n")
    print("| method | parameters | wall s | report seconds | peak RSS MiB | other processes' CPU during the run | details (per module: q,k,v,o,gate,up,down) |")
    print("|---|---|---:|---:|---:|---|---|")
    for name, label, params in [("lego", "lora_lego", "defaults (k = 16, iters ≤ 20)"),
                                ("zip200", "ziplora", "defaults (200 steps, λ 0.01, lr 0.01)"),
                                ("zip100", "ziplora", "--steps 100")]:
        wall, rss, st = gnu_time(os.path.join(res, f"merge_{name}.stderr"))
        rep = json.load(open(os.path.join(outs, name, "merge_report.json")))
        mods = rep["modules"]
        order = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
        mods.sort(key=lambda m: order.index(m["module"].split(".")[-1]))
        d = [m.get("details") or {} for m in mods]
        if label == "lora_lego":
            det = ("units " + ",".join(str(x.get("units")) for x in d) + "; clusters "
                   + ",".join(str(x.get("clusters")) for x in d) + "; iterations "
                   + ",".join(str(x.get("iterations")) for x in d) + f"; output rank {rep['output']['rank']}")
        else:
            avg = lambda key: sum(x[key] for x in d) / len(d)
            det = (f"mean over modules: loss {avg('loss_initial'):.4f} → {avg('loss_final'):.4f}; "
                   f"column overlap {avg('column_overlap_before'):.4f} → {avg('column_overlap_after'):.4f}; "
                   f"penalty {avg('penalty_initial'):.4f} → {avg('penalty_final'):.4f}; "
                   f"loss_final per module " + ",".join(f"{x['loss_final']:.4f}" for x in d)
                   + f"; output rank {rep['output']['rank']}")
        print(f"| {label} | {params} | {wall:.2f} | {rep['seconds']:.2f} | {mib(rss)} | {load(res, 'merge_' + name)} | {det} |"
              + ("" if st == 0 else f" EXIT {st}"))

    # --- compression ------------------------------------------------------------------------------
    print(f"\n### Compression of {n} rank-16 adapters, one layer, 7 modules\n")
    print("bytes ratio = bytes_after / bytes_before (float32 factors); relative error = "
          "sqrt(Σ lost energy / Σ energy) over all members and modules.\n")
    print("| method | c or k | bytes_after | bytes ratio | relative error | member error mean / max | iterations | seconds (wall) | peak RSS MiB | other processes' CPU |")
    print("|---|---|---:|---:|---:|---:|---:|---:|---:|---|")
    joints = []
    for line in open(os.path.join(res, "individual_for_joint.txt")):
        j, bj, k = line.split()
        joints.append((j, int(bj), int(k)))
    rows_ind = {}
    for j, _, _ in joints:
        rep = json.load(open(os.path.join(outs, f"joint_{j}", "compress_report.json")))
        wall, rss, st = gnu_time(os.path.join(res, f"joint_{j}.stderr"))
        errs = [e["relative_error"] for e in rep["member_errors"]]
        label = "joint" + (" --diag" if rep["diag"] else "") + (f" --clusters {rep['clusters']}" if rep["clusters"] > 1 else "")
        print(f"| {label} | c={rep['rank']} | {rep['bytes_after']:,} | {rep['bytes_ratio']:.4f} | "
              f"{rep['relative_error']:.4f} | {sum(errs) / len(errs):.4f} / {max(errs):.4f} | {rep['iterations']} | "
              f"{wall:.1f} | {mib(rss)} | {load(res, 'joint_' + j)} |" + ("" if st == 0 else f" EXIT {st}"))
        before = rep["bytes_before"]
    for k in sorted({k for _, _, k in joints if k >= 1}):
        reps = sorted(glob.glob(os.path.join(outs, f"ind_k{k}", "*", "compress_report.json")))
        if not reps:
            continue
        tot = lost = 0.0
        after = 0
        errs = []
        walls, rsss, rep_s = [], [], 0.0
        for p in reps:
            r = json.load(open(p))
            name = os.path.basename(os.path.dirname(p))
            tot += r["energy_total"]
            lost += r["energy_total"] * r["relative_error"] ** 2
            after += r["bytes_after"]
            errs.append(r["relative_error"])
            rep_s += r["seconds"]
            w, rss, st = gnu_time(os.path.join(res, f"ind_k{k}_{name}.stderr"))
            walls.append(w)
            rsss.append(rss)
        rows_ind[k] = after
        print(f"| individual SVD ({len(reps)} runs, sequential) | k={k} | {after:,} | {after / before:.4f} | "
              f"{(lost / tot) ** 0.5:.4f} | {sum(errs) / len(errs):.4f} / {max(errs):.4f} | – | "
              f"{sum(walls):.1f} (report Σ {rep_s:.1f}) | {mib(max(rsss))} (max of runs) | {load(res, f'ind_k{k}')} |")
    print(f"\nbytes_before (all {n} adapters) = {before:,}")
    print("\nEqual-bytes pairing (k = floor(bytes_after_joint / (N · Σ_modules (d_out+d_in) · 4))):\n")
    for j, bj, k in joints:
        print(f"- joint {j}: bytes_after {bj:,} → k = {k}" + (f" (individual bytes {rows_ind[k]:,})" if k in rows_ind else " (no individual run: k < 1 or ≥ 16)"))

    # --- clusters ---------------------------------------------------------------------------------
    for j, _, _ in joints:
        man = json.load(open(os.path.join(outs, f"joint_{j}", "collection.json")))
        if man["clusters"] <= 1:
            continue
        names = [m["name"] for m in man["members"]]
        print(f"\nClusters of joint {j} per module (cluster sizes; purity w.r.t. the generator's family = i mod 4):\n")
        for mod, info in man["modules"].items():
            asg = info["assignment"]
            fam = [int(nm.split("_")[-1]) % 4 for nm in names]
            sizes = sorted(Counter(asg).values(), reverse=True)
            pure = sum(max(Counter(f for f, a in zip(fam, asg) if a == c).values()) for c in set(asg))
            print(f"- {mod.split('.')[-1]}: {info['clusters']} clusters, sizes {sizes}, purity {pure}/{len(asg)}")

    # --- extras ---------------------------------------------------------------------------------
    extras = [("extra_zip50", "ziplora --steps 50"), ("extra_zip200b", "ziplora (200 steps), second run"),
              ("extra_zip400", "ziplora --steps 400")]
    if any(os.path.exists(os.path.join(res, f"{e}.stderr")) for e, _ in extras):
        print("\n### Extras: ZipLoRA step scaling (same 4 adapters)\n")
        print("| run | wall s | peak RSS MiB | per-module report seconds (q,k,v,o,gate,up,down) | mean loss_final | mean overlap after | other processes' CPU |")
        print("|---|---:|---:|---|---:|---:|---|")
        order = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
        for e, label in [("merge_zip100", "ziplora --steps 100 (above)"), ("merge_zip200", "ziplora (200 steps, above)")] + extras:
            if not os.path.exists(os.path.join(res, f"{e}.stderr")):
                continue
            wall, rss, st = gnu_time(os.path.join(res, f"{e}.stderr"))
            d = os.path.join(outs, e.replace("merge_", ""), "merge_report.json")
            rep_ = json.load(open(d))
            mods = sorted(rep_["modules"], key=lambda m: order.index(m["module"].split(".")[-1]))
            lf = sum(m["details"]["loss_final"] for m in mods) / len(mods)
            ov = sum(m["details"]["column_overlap_after"] for m in mods) / len(mods)
            print(f"| {label} | {wall:.2f} | {mib(rss)} | " + ", ".join(f"{m['seconds']:.1f}" for m in mods)
                  + f" | {lf:.4f} | {ov:.4f} | {load(res, e)} |" + ("" if st == 0 else f" EXIT {st}"))
    jx = [("joint_c64", "joint c=64 (iters ≤ 50, above)"), ("extra_joint_c64_i150", "joint c=64 --iters 150"),
          ("joint_c128diag", "joint c=128 --diag (iters ≤ 50, above)"), ("extra_joint_c128diag_i100", "joint c=128 --diag --iters 100")]
    if any(os.path.exists(os.path.join(res, f"{e}.stderr")) for e, _ in jx[1::2]):
        print("\n### Extras: joint compression with more iterations\n")
        print("| run | iterations | relative error | objective per module, first → last (q,k,v,o,gate,up,down) | wall s | peak RSS MiB | other processes' CPU |")
        print("|---|---:|---:|---|---:|---:|---|")
        order = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
        for e, label in jx:
            if not os.path.exists(os.path.join(res, f"{e}.stderr")):
                continue
            wall, rss, st = gnu_time(os.path.join(res, f"{e}.stderr"))
            r = json.load(open(os.path.join(outs, e, "compress_report.json")))
            mods = sorted(r["modules"], key=lambda m: order.index(m["module"].split(".")[-1]))
            obj = ", ".join(f"{m['objective'][0]['first']:.0f}→{m['objective'][0]['last']:.0f}" for m in mods)
            print(f"| {label} | {r['iterations']} | {r['relative_error']:.4f} | {obj} | {wall:.1f} | {mib(rss)} | {load(res, e)} |"
                  + ("" if st == 0 else f" EXIT {st}"))

    chk = os.path.join(res, "check.txt")
    if os.path.exists(chk):
        print("\n### numpy checks (untimed)\n\n```")
        print(open(chk).read().rstrip())
        print("```")


if __name__ == "__main__":
    main()
