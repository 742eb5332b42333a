#!/usr/bin/env python3
"""Untimed numpy checks of quiver compress (float64, factored: no dense ΔW is formed).

1. Extracted members (`quiver compress --extract`) of each joint collection: their actual error
   ‖ΔWᵢ − ΔW'ᵢ‖/‖ΔWᵢ‖ over the 7 modules, beside the member_errors in compress_report.json.
2. Reference bases for the full-core joint objective (upper bounds of the optimal error at rank c):
   * HOSVD: U = top-c eigenvectors of Σᵢ ΔᵢΔᵢᵀ, V = top-c of Σᵢ ΔᵢᵀΔᵢ, cores Uᵀ ΔᵢV;
   * oracle: the generator's own family bases, [U_0..U_3] (4·latent columns, only when that is ≤ c)
     for one cluster, U_f for member i of family f with clusters (c ≥ latent).
3. Individual: for adapter_000 at each k, numpy's optimal rank-k error (QR of the factors + SVD of
   the core) beside the compress_report.json relative_error and the written adapter's actual error.

Usage: check.py DATA OUTS JOINT... -- K...
"""

import json
import os
import sys

import numpy as np
from safetensors import safe_open
from safetensors.numpy import load_file

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import make_adapters as gen  # noqa: E402


def load(d):
    cfg = json.load(open(os.path.join(d, "adapter_config.json")))
    t = load_file(os.path.join(d, "adapter_model.safetensors"))
    out = {}
    for k, v in t.items():
        if not k.endswith("lora_A.weight"):
            continue
        mod = k[: -len(".lora_A.weight")]
        short = mod.split(".")[-1]
        r = v.shape[0]
        alpha = cfg.get("alpha_pattern", {}).get(short, cfg["lora_alpha"])
        rr = cfg.get("rank_pattern", {}).get(short, cfg["r"])
        assert rr == r, (d, mod, rr, r)
        s = alpha / r
        out[mod] = (t[mod + ".lora_B.weight"].astype(np.float64) * s, v.astype(np.float64))
    return out


def frob2(b, a):
    return float(np.sum((b.T @ b) * (a @ a.T)))


def diff2(b1, a1, b2, a2):
    b = np.concatenate([b1, -b2], axis=1)
    a = np.concatenate([a1, a2], axis=0)
    return max(frob2(b, a), 0.0)


def optimal_rank_k(b, a, k):
    qb, rb = np.linalg.qr(b)
    qa, ra = np.linalg.qr(a.T)
    s = np.linalg.svd(rb @ ra.T, compute_uv=False)
    return float(np.sum(s[k:] ** 2)), float(np.sum(s ** 2))


def top_eig_basis(factors, c):
    """Top-c eigenvectors of Σ Xᵢ Xᵢᵀ for Xᵢ = factors (d x rᵢ), via the Gram of [X₁ … Xₙ]."""
    g = np.concatenate(factors, axis=1)
    w, q = np.linalg.eigh(g.T @ g)
    idx = np.argsort(w)[::-1][:c]
    u = g @ (q[:, idx] / np.sqrt(np.maximum(w[idx], 1e-300)))
    u, _ = np.linalg.qr(u)
    return u


def kept(b, a, u, v):
    return float(np.sum(((u.T @ b) @ (a @ v)) ** 2))


def main():
    argv = sys.argv[1:]
    sep = argv.index("--")
    data, outs, joints, ks = argv[0], argv[1], argv[2:sep], [int(k) for k in argv[sep + 1:]]
    names = sorted(os.listdir(os.path.join(data, "adapters")))
    n = len(names)
    print(f"# check.py: {n} adapters")

    # 1. extracted members
    orig = {m: load(os.path.join(data, "adapters", m)) for m in ("adapter_000", "adapter_001")}
    print("\n## extracted members: actual error vs compress_report member_errors")
    for j in joints:
        rep = json.load(open(os.path.join(outs, f"joint_{j}", "compress_report.json")))
        by = {e["name"]: e for e in rep["member_errors"]}
        for m, o in orig.items():
            x = load(os.path.join(outs, f"extract_{j}_{m}"))
            lost = tot = 0.0
            for mod, (b, a) in o.items():
                b2, a2 = x[mod]
                lost += diff2(b, a, b2, a2)
                tot += frob2(b, a)
            actual = np.sqrt(lost / tot)
            print(f"{j:10s} {m}: actual {actual:.6f}  reported {by[m]['relative_error']:.6f}  "
                  f"energy actual {tot:.6e} reported {by[m]['energy_total']:.6e}")

    # 2. reference bases
    cfg_joint = {}
    for j in joints:
        p = json.load(open(os.path.join(outs, f"joint_{j}", "compress_report.json")))
        cfg_joint[j] = p
    fams, latent = 4, 32
    bases = gen.family_bases(fams, latent, 0)
    mods = [f"base_model.model.model.layers.0.{parent}.{name}" for name, parent, _, _ in gen.MODULES]
    print("\n## full-core joint objective: quiver vs reference bases (overall relative error)")
    want = sorted({(p["rank"], p["clusters"]) for p in cfg_joint.values() if not p["diag"]})
    res = {key: {"hosvd": [0.0, 0.0], "oracle": [0.0, 0.0]} for key in want}
    for mi, mod in enumerate(mods):
        bs, as_ = [], []
        for nm in names:
            with safe_open(os.path.join(data, "adapters", nm, "adapter_model.safetensors"), "np") as t:
                bs.append(t.get_tensor(mod + ".lora_B.weight").astype(np.float64) * 2.0)  # α/r = 32/16
                as_.append(t.get_tensor(mod + ".lora_A.weight").astype(np.float64))
        energies = [frob2(b, a) for b, a in zip(bs, as_)]
        # factors whose Gram sums are Σ ΔΔᵀ and Σ ΔᵀΔ
        left = [b @ np.linalg.cholesky(a @ a.T) for b, a in zip(bs, as_)]
        right = [a.T @ np.linalg.cholesky(b.T @ b) for b, a in zip(bs, as_)]
        for (c, k) in want:
            if k == 1:
                u, v = top_eig_basis(left, c), top_eig_basis(right, c)
                h = sum(kept(b, a, u, v) for b, a in zip(bs, as_))
            else:  # per family HOSVD (the generator's families as clusters)
                h = 0.0
                for f in range(fams):
                    ids = [i for i in range(n) if i % fams == f]
                    u = top_eig_basis([left[i] for i in ids], c)
                    v = top_eig_basis([right[i] for i in ids], c)
                    h += sum(kept(bs[i], as_[i], u, v) for i in ids)
            res[(c, k)]["hosvd"][0] += sum(energies)
            res[(c, k)]["hosvd"][1] += sum(energies) - h
            if k == 1 and fams * latent <= c:
                u, _ = np.linalg.qr(np.concatenate([bases[mi][f][0] for f in range(fams)], axis=1).astype(np.float64))
                v, _ = np.linalg.qr(np.concatenate([bases[mi][f][1] for f in range(fams)], axis=1).astype(np.float64))
                o = sum(kept(b, a, u, v) for b, a in zip(bs, as_))
            elif k > 1 and latent <= c:
                o = sum(kept(bs[i], as_[i], bases[mi][i % fams][0].astype(np.float64),
                             bases[mi][i % fams][1].astype(np.float64)) for i in range(n))
            else:
                o = None
            if o is not None:
                res[(c, k)]["oracle"][0] += sum(energies)
                res[(c, k)]["oracle"][1] += sum(energies) - o
        print(f"  module {mod.split('.')[-1]} done", flush=True)
    for j, p in cfg_joint.items():
        if p["diag"]:
            continue
        r = res[(p["rank"], p["clusters"])]
        hs = np.sqrt(r["hosvd"][1] / r["hosvd"][0])
        os_ = np.sqrt(r["oracle"][1] / r["oracle"][0]) if r["oracle"][0] else float("nan")
        print(f"{j:10s} c={p['rank']} clusters={p['clusters']}: quiver {p['relative_error']:.6f}  "
              f"HOSVD{' (per true family)' if p['clusters'] > 1 else ''} {hs:.6f}  oracle {os_:.6f}")

    # 3. individual
    print("\n## individual rank k, adapter_000: numpy optimum vs report vs written adapter")
    o = orig["adapter_000"]
    for k in ks:
        rep = json.load(open(os.path.join(outs, f"ind_k{k}", "adapter_000", "compress_report.json")))
        x = load(os.path.join(outs, f"ind_k{k}", "adapter_000"))
        lost = tot = lost_w = 0.0
        for mod, (b, a) in o.items():
            l, t = optimal_rank_k(b, a, k)
            lost += l
            tot += t
            lost_w += diff2(b, a, *x[mod])
        print(f"k={k}: numpy optimum {np.sqrt(lost / tot):.6f}  reported {rep['relative_error']:.6f}  "
              f"written adapter {np.sqrt(lost_w / tot):.6f}")


if __name__ == "__main__":
    main()
