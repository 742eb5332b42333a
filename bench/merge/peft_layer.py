#!/usr/bin/env python3
"""Times PEFT's LoraModel.add_weighted_adapter on ONE Llama-7B-shaped layer (7 matrices), on CPU or GPU.

Builds a plain nn.Module tree `model.layers.0.{self_attn.{q,k,v,o}_proj, mlp.{gate,up,down}_proj}`
(bf16 base weights, created on `meta` then `to_empty(cpu)`: never read), loads the N adapters of
ADAPTERS_DIR (1-layer copies written by make_adapters.py --layers 1; layer 0 is bit-identical to
the full set's layer 0) with PeftModel.from_pretrained + load_adapter, then times one call of
add_weighted_adapter per combination type (weights 1/N each, density 0.2, svd_rank 16,
majority_sign_method "total"). One timed run each, no warm-up (each call costs minutes on 2
threads); the time includes PEFT's own overhead (creating the new adapter's 7 LoRA layers).

Prints one JSON object per type on stdout:
  {"type": ..., "seconds": ..., "matrices": 7, "seconds_per_matrix": ..., "threads": ...}

Usage: peft_layer.py ADAPTERS_DIR [--types svd,ties_svd] [--threads 2] [--rank 16] [--density 0.2]
"""

import argparse
import glob
import json
import os
import sys
import time

import torch
from torch import nn

HIDDEN = 4096
INTER = 11008


class Attn(nn.Module):
    def __init__(self):
        super().__init__()
        for n in ("q_proj", "k_proj", "v_proj", "o_proj"):
            setattr(self, n, nn.Linear(HIDDEN, HIDDEN, bias=False))


class Mlp(nn.Module):
    def __init__(self):
        super().__init__()
        self.gate_proj = nn.Linear(HIDDEN, INTER, bias=False)
        self.up_proj = nn.Linear(HIDDEN, INTER, bias=False)
        self.down_proj = nn.Linear(INTER, HIDDEN, bias=False)


class Layer(nn.Module):
    def __init__(self):
        super().__init__()
        self.self_attn = Attn()
        self.mlp = Mlp()


class Inner(nn.Module):
    def __init__(self, layers):
        super().__init__()
        self.layers = nn.ModuleList([Layer() for _ in range(layers)])


class Model(nn.Module):
    """`model.layers.{i}....` so PEFT's keys are base_model.model.model.layers.{i}...."""

    def __init__(self, layers):
        super().__init__()
        self.model = Inner(layers)

    def forward(self, x):  # never called
        return x


def main():
    p = argparse.ArgumentParser()
    p.add_argument("adapters")
    p.add_argument("--types", default="svd,ties_svd")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--rank", type=int, default=16)
    p.add_argument("--density", type=float, default=0.2)
    p.add_argument("--device", default="cpu", help="cpu or cuda (then timed with synchronize)")
    p.add_argument("--repeat", type=int, default=1, help="timed calls per type (the first is warm-up when > 1)")
    args = p.parse_args()
    cuda = args.device.startswith("cuda")

    def sync():
        if cuda:
            torch.cuda.synchronize()
    torch.set_num_threads(args.threads)

    from peft import PeftModel
    import peft

    dirs = sorted(glob.glob(os.path.join(args.adapters, "adapter_*")))
    n = len(dirs)
    assert n > 0, f"no adapter_* under {args.adapters}"
    with torch.device("meta"):
        base = Model(1)
    base = base.to_empty(device=args.device).to(torch.bfloat16)

    t = time.perf_counter()
    model = PeftModel.from_pretrained(base, dirs[0], adapter_name="a0", is_trainable=False)
    for i, d in enumerate(dirs[1:], start=1):
        model.load_adapter(d, adapter_name=f"a{i}", is_trainable=False)
    load_s = time.perf_counter() - t
    names = [f"a{i}" for i in range(n)]

    # Sanity: the loaded tensors are the files' tensors (fp32).
    from safetensors.torch import load_file

    ref = load_file(os.path.join(dirs[-1], "adapter_model.safetensors"))
    q = model.base_model.model.model.layers[0].mlp.down_proj
    key = "base_model.model.model.layers.0.mlp.down_proj.lora_B.weight"
    assert torch.equal(q.lora_B[names[-1]].weight.float().cpu(), ref[key]), "adapter not loaded"
    assert q.lora_B[names[-1]].weight.dtype == torch.float32, q.lora_B[names[-1]].weight.dtype
    print(
        json.dumps(
            {
                "peft": peft.__version__,
                "torch": torch.__version__,
                "threads": torch.get_num_threads(),
                "device": torch.cuda.get_device_name() if cuda else "cpu",
                "adapters": n,
                "load_seconds": round(load_s, 2),
            }
        ),
        flush=True,
    )

    weights = [1.0 / n] * n
    modules = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
    for ctype in args.types.split(","):
        out = f"merged_{ctype}"
        kw = dict(
            adapters=names,
            weights=weights,
            adapter_name=out,
            combination_type=ctype,
            svd_rank=args.rank,
        )
        if "ties" in ctype or "dare" in ctype or "magnitude" in ctype:
            kw["density"] = args.density
            kw["majority_sign_method"] = "total"
        times = []
        for i in range(args.repeat):
            if i > 0:
                model.delete_adapter(out)
            sync()
            t = time.perf_counter()
            model.add_weighted_adapter(**kw)
            sync()
            times.append(time.perf_counter() - t)
        secs = sorted(times[1:] or times)[len(times[1:] or times) // 2]
        # Check the result: finite, non-zero, rank 16 on every module.
        layer = model.base_model.model.model.layers[0]
        ok = True
        for m in modules:
            mod = getattr(layer.self_attn, m, None) or getattr(layer.mlp, m)
            a = mod.lora_A[out].weight
            b = mod.lora_B[out].weight
            ok &= bool(torch.isfinite(a).all() and torch.isfinite(b).all() and b.abs().sum() > 0)
            ok &= a.shape[0] == args.rank
        print(
            json.dumps(
                {
                    "type": ctype,
                    "seconds": round(secs, 3),
                    "all_seconds": [round(x, 3) for x in times],
                    "matrices": 7,
                    "seconds_per_matrix": round(secs / 7, 4),
                    "threads": torch.get_num_threads(),
                    "result_finite_nonzero_rank_ok": ok,
                }
            ),
            flush=True,
        )
        model.delete_adapter(out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
