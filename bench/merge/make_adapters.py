#!/usr/bin/env python3
"""Writes N synthetic PEFT LoRA adapters with Llama-7B shapes (for the merge benchmark).

Each adapter directory holds adapter_config.json (peft_type LORA, r 16, lora_alpha 32, the seven
Llama projection names) and adapter_model.safetensors (float32), with keys

    base_model.model.model.layers.{i}.self_attn.{q,k,v,o}_proj.lora_{A,B}.weight
    base_model.model.model.layers.{i}.mlp.{gate,up,down}_proj.lora_{A,B}.weight

lora_A is [r, d_in], lora_B is [d_out, r]. Entries are numpy standard normal * 0.01, drawn from a
generator seeded by (seed, adapter, layer, module), so layer i of a --layers 1 copy is bit-identical
to layer i of the full set.

Spectrum: random factors alone give ΔW = B·A a flat spectrum (all 16 singular values within a
few %), which real adapters do not have. We scale rank unit j (row j of lora_A) by 0.8**j, so the
16 singular values of each ΔWᵢ decay roughly geometrically from 1 to 0.8**15 ≈ 0.035 (relative).
Pass --flat to skip that.

Usage: make_adapters.py OUT_DIR [--n 8] [--layers 32] [--rank 16] [--seed 0] [--flat]
Writes OUT_DIR/adapter_00 ... adapter_{n-1}; ~160 MB each for 32 layers.
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


def adapter_tensors(adapter, layers, rank, seed, flat):
    out = {}
    decay = np.ones(rank, np.float32) if flat else (DECAY ** np.arange(rank)).astype(np.float32)
    for layer in range(layers):
        for mi, (name, parent, d_out, d_in) in enumerate(MODULES):
            rng = np.random.default_rng([seed, adapter, layer, mi])
            a = (rng.standard_normal((rank, d_in), dtype=np.float32) * np.float32(0.01))
            a *= decay[:, None]
            b = rng.standard_normal((d_out, rank), dtype=np.float32) * np.float32(0.01)
            key = f"base_model.model.model.layers.{layer}.{parent}.{name}"
            out[f"{key}.lora_A.weight"] = np.ascontiguousarray(a)
            out[f"{key}.lora_B.weight"] = np.ascontiguousarray(b)
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
    p.add_argument("--n", type=int, default=8)
    p.add_argument("--layers", type=int, default=32)
    p.add_argument("--rank", type=int, default=16)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--flat", action="store_true", help="no decaying spectrum")
    args = p.parse_args()
    for i in range(args.n):
        d = os.path.join(args.out, f"adapter_{i:02d}")
        os.makedirs(d, exist_ok=True)
        tensors = adapter_tensors(i, args.layers, args.rank, args.seed, args.flat)
        save_file(tensors, os.path.join(d, "adapter_model.safetensors"))
        with open(os.path.join(d, "adapter_config.json"), "w") as f:
            json.dump(config(args.rank), f, indent=2)
        size = os.path.getsize(os.path.join(d, "adapter_model.safetensors"))
        print(f"wrote {d} ({len(tensors)} tensors, {size / 1e6:.1f} MB)", flush=True)


if __name__ == "__main__":
    main()
