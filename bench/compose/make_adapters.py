#!/usr/bin/env python3
"""Writes N synthetic PEFT LoRA adapters (one Llama-7B layer) that share structure, for the
LoRA-LEGO / ZipLoRA / compression benchmark.

Structure (per module, independently):
  * F families (default 4). Family f has fixed random orthonormal bases U_f (d_out x L) and
    V_f (d_in x L), L = latent dim (default 32), from QR of a standard normal matrix.
  * Adapter i belongs to family f = i mod F. Its rank-r factors (r = 16) are
        B_i = c_B * U_f M_i            + eps * 0.01 * E_B
        A_i = c_A * (V_f N_i D)^T      + eps * 0.01 * E_A
    with M_i, N_i (L x r) and E_B (d_out x r), E_A (r x d_in) i.i.d. standard normal,
    D = diag(0.8**j), j = 0..r-1 (a decaying spectrum per rank unit, as in bench/merge), and
    c_B, c_A chosen so that the clean part of each factor has an entry RMS of exactly 0.01.
    eps (default 0.05) is the noise RMS relative to the clean entry RMS, per factor.
  So ΔW_i = (α/r)·B_i A_i lies, up to the noise, in span(U_f) ⊗ span(V_f): 25 adapters of one
  family span the whole L x L core of their family, the 4 families together a 4L = 128-dim
  column and row space.

adapter_config.json: peft_type LORA, r 16, lora_alpha 32, the seven Llama projection names.
Keys: base_model.model.model.layers.0.{self_attn.{q,k,v,o}_proj, mlp.{gate,up,down}_proj}.lora_{A,B}.weight
(lora_A [r, d_in], lora_B [d_out, r], float32). Random draws are seeded by (seed, ...) so the
same arguments give bit-identical files.

Usage: make_adapters.py OUT_DIR [--n 100] [--families 4] [--latent 32] [--rank 16] [--eps 0.05] [--seed 0]
Writes OUT_DIR/adapter_000 ... (≈5 MB each).
"""

import argparse
import json
import os

import numpy as np
from safetensors.numpy import save_file

HIDDEN = 4096
INTER = 11008
# name, parent, d_out, d_in
MODULES = [
    ("q_proj", "self_attn", HIDDEN, HIDDEN),
    ("k_proj", "self_attn", HIDDEN, HIDDEN),
    ("v_proj", "self_attn", HIDDEN, HIDDEN),
    ("o_proj", "self_attn", HIDDEN, HIDDEN),
    ("gate_proj", "mlp", INTER, HIDDEN),
    ("up_proj", "mlp", INTER, HIDDEN),
    ("down_proj", "mlp", HIDDEN, INTER),
]
TARGETS = [m[0] for m in MODULES]
DECAY = 0.8
RMS = 0.01


def orthonormal(rng, d, k):
    q, _ = np.linalg.qr(rng.standard_normal((d, k)))
    return q.astype(np.float32)


def family_bases(families, latent, seed):
    """bases[mi][f] = (U_f, V_f) for module mi."""
    out = []
    for mi, (_, _, d_out, d_in) in enumerate(MODULES):
        per = []
        for f in range(families):
            rng = np.random.default_rng([seed, 1, mi, f])
            per.append((orthonormal(rng, d_out, latent), orthonormal(rng, d_in, latent)))
        out.append(per)
    return out


def scaled(x):
    return x * np.float32(RMS / np.sqrt(np.mean(np.square(x, dtype=np.float64))))


def adapter_tensors(i, bases, families, latent, rank, eps, seed):
    f = i % families
    decay = (DECAY ** np.arange(rank)).astype(np.float32)
    out = {}
    for mi, (name, parent, d_out, d_in) in enumerate(MODULES):
        u, v = bases[mi][f]
        rng = np.random.default_rng([seed, 2, i, mi])
        m = rng.standard_normal((latent, rank), dtype=np.float32)
        n = rng.standard_normal((latent, rank), dtype=np.float32) * decay[None, :]
        b = scaled(u @ m) + np.float32(eps * RMS) * rng.standard_normal((d_out, rank), dtype=np.float32)
        a = scaled((v @ n).T) + np.float32(eps * RMS) * rng.standard_normal((rank, d_in), dtype=np.float32)
        key = f"base_model.model.model.layers.0.{parent}.{name}"
        out[f"{key}.lora_A.weight"] = np.ascontiguousarray(a, dtype=np.float32)
        out[f"{key}.lora_B.weight"] = np.ascontiguousarray(b, dtype=np.float32)
    return out


def config(rank):
    return {
        "peft_type": "LORA",
        "task_type": None,
        "base_model_name_or_path": "bench/llama-7b-shapes",
        "r": rank,
        "lora_alpha": 2 * rank,
        "lora_dropout": 0.0,
        "target_modules": TARGETS,
        "bias": "none",
        "fan_in_fan_out": False,
        "use_rslora": False,
        "use_dora": False,
        "init_lora_weights": True,
        "inference_mode": True,
        "rank_pattern": {},
        "alpha_pattern": {},
        "modules_to_save": None,
    }


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("out")
    p.add_argument("--n", type=int, default=100)
    p.add_argument("--families", type=int, default=4)
    p.add_argument("--latent", type=int, default=32)
    p.add_argument("--rank", type=int, default=16)
    p.add_argument("--eps", type=float, default=0.05)
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args()
    bases = family_bases(args.families, args.latent, args.seed)
    for i in range(args.n):
        d = os.path.join(args.out, f"adapter_{i:03d}")
        os.makedirs(d, exist_ok=True)
        tensors = adapter_tensors(i, bases, args.families, args.latent, args.rank, args.eps, args.seed)
        save_file(tensors, os.path.join(d, "adapter_model.safetensors"))
        with open(os.path.join(d, "adapter_config.json"), "w") as f:
            json.dump(config(args.rank), f, indent=2)
    print(f"wrote {args.n} adapters to {args.out} (families {args.families}, latent {args.latent}, "
          f"rank {args.rank}, eps {args.eps}, seed {args.seed})", flush=True)


if __name__ == "__main__":
    main()
