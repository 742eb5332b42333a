#!/usr/bin/env python3
"""Independent check of a `quiver merge --method ties` result on a few modules, in numpy.

For each module: recompute the TIES dense ΔW from the input adapters with the papers' semantics as
docs/merging.md states them (per-module trim of each ΔWᵢ = sᵢ·Bᵢ·Aᵢ to its k = ⌊density·numel⌋
largest magnitudes, every entry ≥ the k-th largest kept; sign elected per entry from Σ wᵢτ̂ᵢ, a
zero sum going to +; mean of the agreeing entries weighted by |wᵢ|; × λ = 1), then

* its exact rank-K truncation error (numpy.linalg.svd, float64) = the optimal error;
* ratio = quiver's reported relative_error / optimal (target ≤ 1.02);
* the error of quiver's written factors against this ΔW (should reproduce the reported error);
* the relative difference between this ΔW and quiver's: quiver's B·A is P·ΔW_quiver with P the
  orthogonal projector onto span(B), so ‖B·A − P·ΔW_numpy‖/‖B·A‖ measures the difference of the
  two dense results inside that subspace (0 if they are equal);
* ‖B·A − T_K‖/‖T_K‖ with T_K this ΔW's optimal rank-K truncation.

Usage: check_ties.py INPUTS_DIR QUIVER_OUT_DIR MODULE... [--density 0.2] [--rank 16]
  INPUTS_DIR holds adapter_* (the same inputs, same order, weights 1/N each);
  MODULE is the path without base_model.model., e.g. model.layers.0.self_attn.q_proj.
Prints one JSON line per module.
"""

import argparse
import glob
import json
import os
import time

import numpy as np
from safetensors import safe_open


def scale_of(cfg, module):
    r = cfg["r"]
    alpha = cfg.get("lora_alpha", r)
    # rank_pattern / alpha_pattern: key matched as a suffix of the module path (PEFT semantics).
    for key, v in (cfg.get("rank_pattern") or {}).items():
        if module == key or module.endswith("." + key):
            r = v
    for key, v in (cfg.get("alpha_pattern") or {}).items():
        if module == key or module.endswith("." + key):
            alpha = v
    return alpha / (r ** 0.5 if cfg.get("use_rslora") else r)


def load_factors(d, module):
    with open(os.path.join(d, "adapter_config.json")) as f:
        cfg = json.load(f)
    key = "base_model.model." + module
    with safe_open(os.path.join(d, "adapter_model.safetensors"), "np") as f:
        a = f.get_tensor(key + ".lora_A.weight")
        b = f.get_tensor(key + ".lora_B.weight")
    return a, b, scale_of(cfg, module)


def ties_dense(dirs, module, weights, density, lam=1.0):
    votes = None
    trimmed = []
    for d, w in zip(dirs, weights):
        a, b, s = load_factors(d, module)
        # ΔWᵢ in float32, as every implementation forms it (sᵢ applied to B first).
        delta = (np.float32(s) * b.astype(np.float32)) @ a.astype(np.float32)
        n = delta.size
        k = int(np.floor(density * n))
        mag = np.abs(delta).ravel()
        thr = np.partition(mag, n - k)[n - k]  # k-th largest magnitude
        tau = np.where(np.abs(delta) >= thr, delta, np.float32(0)).astype(np.float32)
        del mag, delta
        trimmed.append(tau)
        wt = w * tau.astype(np.float64)
        votes = wt if votes is None else votes + wt
    elected = np.where(votes >= 0, 1.0, -1.0)
    del votes
    num = np.zeros(trimmed[0].shape, np.float64)
    den = np.zeros(trimmed[0].shape, np.float64)
    for tau, w in zip(trimmed, weights):
        wt = w * tau.astype(np.float64)
        agree = np.sign(wt) == elected
        num += np.where(agree, wt, 0.0)
        den += np.where(agree, abs(w), 0.0)
    out = np.divide(num, den, out=np.zeros_like(num), where=den > 0)
    return lam * out


def main():
    p = argparse.ArgumentParser()
    p.add_argument("inputs")
    p.add_argument("quiver_out")
    p.add_argument("modules", nargs="+")
    p.add_argument("--density", type=float, default=0.2)
    p.add_argument("--rank", type=int, default=16)
    args = p.parse_args()
    dirs = sorted(glob.glob(os.path.join(args.inputs, "adapter_*")))
    weights = [1.0 / len(dirs)] * len(dirs)
    with open(os.path.join(args.quiver_out, "merge_report.json")) as f:
        report = json.load(f)
    by_module = {m["module"]: m for m in report["modules"]}

    for module in args.modules:
        t0 = time.perf_counter()
        delta = ties_dense(dirs, module, weights, args.density)
        t_ties = time.perf_counter() - t0
        norm = np.linalg.norm(delta)
        t0 = time.perf_counter()
        u, s, vt = np.linalg.svd(delta, full_matrices=False)
        t_svd = time.perf_counter() - t0
        k = args.rank
        opt = float(np.sqrt(np.sum(s[k:] ** 2)) / norm)
        tk = (u[:, :k] * s[:k]) @ vt[:k]
        del u, vt

        qa, qb, qs = load_factors(args.quiver_out, module)
        qa = qa.astype(np.float64)
        qb = qb.astype(np.float64) * qs
        ba = qb @ qa
        err_factors = float(np.linalg.norm(delta - ba) / norm)
        q, _ = np.linalg.qr(qb)
        proj = q @ (q.T @ delta)
        diff_in_subspace = float(np.linalg.norm(ba - proj) / np.linalg.norm(ba))
        vs_opt_trunc = float(np.linalg.norm(ba - tk) / np.linalg.norm(tk))
        rep = by_module[module]
        print(
            json.dumps(
                {
                    "module": module,
                    "shape": list(delta.shape),
                    "nonzero_fraction": round(float(np.count_nonzero(delta)) / delta.size, 4),
                    "optimal_error": opt,
                    "quiver_reported_error": rep["relative_error"],
                    "quiver_route": rep["route"],
                    "ratio_reported_vs_optimal": rep["relative_error"] / opt,
                    "quiver_factors_error_vs_numpy_dW": err_factors,
                    "factors_error_minus_reported": err_factors - rep["relative_error"],
                    "dW_diff_in_quiver_subspace": diff_in_subspace,
                    "quiver_BA_vs_optimal_truncation": vs_opt_trunc,
                    "sigma_1_16_17": [float(s[0]), float(s[k - 1]), float(s[k])],
                    "numpy_ties_s": round(t_ties, 1),
                    "numpy_svd_s": round(t_svd, 1),
                }
            ),
            flush=True,
        )


if __name__ == "__main__":
    main()
