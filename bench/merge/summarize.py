#!/usr/bin/env python3
"""Summary of one bench/merge/run.sh run: per-module report statistics and the final table.

Usage: summarize.py RESULTS_DIR DATA_DIR
"""

import json
import os
import re
import statistics
import sys

MATRICES = 224  # 32 layers x 7
TARGETS = {  # quiver run -> (wall-time target s, PEFT type, speed-ratio target)
    "svd": (20.0, "svd", 100.0),
    "ties": (300.0, "ties_svd", 20.0),
}
OPTIMALITY_TARGET = 1.02


def gnu_time(path):
    text = open(path).read()
    m = re.search(r"Elapsed \(wall clock\) time \(h:mm:ss or m:ss\): (\S+)", text)
    parts = [float(x) for x in m.group(1).split(":")]
    wall = 0.0
    for x in parts:
        wall = wall * 60 + x
    rss_kb = int(re.search(r"Maximum resident set size \(kbytes\): (\d+)", text).group(1))
    status = int(re.search(r"Exit status: (\d+)", text).group(1))
    merged = re.search(r"^merged .*$", text, re.M)
    return wall, rss_kb / 1024, status, merged.group(0) if merged else None


def contention(res):
    """Mean/max CPU % of one core used by other processes during each phase (bench/cpuwatch.py)."""
    try:
        lines = open(os.path.join(res, "cpuwatch.txt")).read().splitlines()
        marks = [l.split() for l in open(os.path.join(res, "phases.txt"))]
    except OSError:
        return {}
    starts, out = {}, {}
    for name, n in marks:
        phase, edge = name.rsplit(":", 1)
        if edge == "start":
            starts[phase] = int(n)
        else:
            sel = lines[starts.get(phase, 0) : int(n)]
            vals = [float(l.split()[0]) for l in sel]
            names = {}
            for l in sel:
                for item in l.split()[1].split(","):
                    if ":" in item:
                        k, v = item.rsplit(":", 1)
                        names[k] = names.get(k, 0) + float(v)
            top = sorted(names.items(), key=lambda kv: -kv[1])[:3]
            out[phase] = {
                "mean": sum(vals) / len(vals) if vals else float("nan"),
                "max": max(vals) if vals else float("nan"),
                "top": ", ".join(f"{k} {v / max(len(vals), 1):.0f}%" for k, v in top) or "-",
            }
    return out


def report_stats(out_dir):
    rep = json.load(open(os.path.join(out_dir, "merge_report.json")))
    mods = rep["modules"]
    errs = [m["relative_error"] for m in mods]
    secs = [m["seconds"] for m in mods]
    routes = {}
    for m in mods:
        routes[m["route"]] = routes.get(m["route"], 0) + 1
    slow = max(mods, key=lambda m: m["seconds"])
    return {
        "modules": len(mods),
        "routes": routes,
        "ranks": sorted({m["rank"] for m in mods}),
        "relative_error_min": min(errs),
        "relative_error_median": statistics.median(errs),
        "relative_error_max": max(errs),
        "module_seconds_sum": sum(secs),
        "module_seconds_median": statistics.median(secs),
        "slowest_module": f'{slow["module"]} {slow["seconds"]:.2f} s',
    }


def cpu(b):
    return f"{b['mean']:.0f} / {b['max']:.0f}" if b else "not measured"


def main():
    res, data = sys.argv[1], sys.argv[2]
    peft = {}
    for line in open(os.path.join(res, "peft.jsonl")):
        d = json.loads(line)
        if "type" in d:
            peft[d["type"]] = d
    p_wall, p_rss, p_status, _ = gnu_time(os.path.join(res, "peft.stderr"))
    busy = contention(res)
    checks = [json.loads(l) for l in open(os.path.join(res, "check_ties.jsonl")) if l.strip()]

    print(open(os.path.join(res, "machine.txt")).read().rstrip())
    print()
    rows = []
    for name, (t_target, ptype, r_target) in TARGETS.items():
        wall, rss, status, merged = gnu_time(os.path.join(res, f"quiver_{name}.stderr"))
        stats = report_stats(os.path.join(data, f"out_{name}"))
        print(f"quiver {name}: exit {status}; {merged}")
        print(f"  report: {json.dumps(stats)}")
        per = wall / MATRICES
        p = peft.get(ptype)
        ratio = p["seconds_per_matrix"] / per if p else float("nan")
        rows.append(
            (
                f"quiver {name} (224 matrices)",
                f"{wall:.1f}",
                f"{per:.4f}",
                f"{rss:.0f}",
                f"{ratio:.0f}x vs PEFT {ptype}",
                f"<= {t_target:.0f} s; >= {r_target:.0f}x",
                f"{'yes' if wall <= t_target else 'NO'}; {'yes' if ratio >= r_target else 'NO'}",
                cpu(busy.get(f"quiver_{name}")),
            )
        )
    for ptype in ("svd", "ties_svd"):
        p = peft.get(ptype)
        if p:
            rows.append(
                (
                    f"PEFT {ptype} (1 layer, 7 matrices, 2 threads)",
                    f"{p['seconds']:.1f}",
                    f"{p['seconds_per_matrix']:.3f}",
                    f"{p_rss:.0f} (both types, one process)",
                    "-",
                    "-",
                    "-",
                    cpu(busy.get("peft")),
                )
            )
    if checks:
        worst = max(c["ratio_reported_vs_optimal"] for c in checks)
        rows.append(
            (
                f"ties truncation error / optimal ({len(checks)} matrices, max)",
                "-",
                "-",
                "-",
                f"{worst:.4f}",
                f"<= {OPTIMALITY_TARGET}",
                "yes" if worst <= OPTIMALITY_TARGET else "NO",
                cpu(busy.get("check")),
            )
        )
    for phase, b in busy.items():
        print(f"other processes during {phase}: mean {b['mean']:.0f}% of a core, max {b['max']:.0f}%; top: {b['top']}")
    print()
    print("TIES check (numpy, paper semantics, float64 SVD):")
    print("| module | shape | optimal err | quiver reported | ratio | factors err vs numpy dW | dW diff in quiver subspace | quiver BA vs optimal T16 |")
    print("| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: |")
    for c in checks:
        print(
            f"| {c['module']} | {c['shape'][0]}x{c['shape'][1]} | {c['optimal_error']:.6f} | "
            f"{c['quiver_reported_error']:.6f} | {c['ratio_reported_vs_optimal']:.5f} | "
            f"{c['quiver_factors_error_vs_numpy_dW']:.6f} | {c['dW_diff_in_quiver_subspace']:.2e} | "
            f"{c['quiver_BA_vs_optimal_truncation']:.4f} |"
        )
    print()
    print("| run | wall s | s/matrix | peak RSS MiB | ratio vs PEFT (per matrix) | target | met? | other processes' CPU, % of a core (mean / max) |")
    print("| --- | ---: | ---: | ---: | --- | --- | --- | --- |")
    for r in rows:
        print("| " + " | ".join(r) + " |")


if __name__ == "__main__":
    main()
