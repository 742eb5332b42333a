#!/usr/bin/env python3
"""Generate tiny, real PEFT LoRA adapter fixtures for Quiver's Rust tests.

This script is run BY HAND, never in CI. Its outputs are committed under
tests/fixtures/peft/ so the Rust test suite needs no Python at all.

What it does
------------
With fixed torch seeds it builds a tiny, randomly initialised
LlamaForCausalLM from a LlamaConfig (no hub download: the base model name
"quiver-test/tiny-llama" is fake), wraps it with PEFT's get_peft_model for
several LoRA configurations, overwrites the LoRA A/B matrices with non-zero
random values (PEFT initialises B to zero, which would make the adapters
trivial), and saves each adapter with PEFT's own save_pretrained
(safetensors) into tests/fixtures/peft/<name>/.

It also writes tests/fixtures/peft/MANIFEST.json: library versions, each
adapter's r / alpha / use_rslora / target_modules, the sha256 and size of
every file, every tensor's dtype and shape, and, per LoRA module, the r,
alpha and scale that PEFT itself resolved on the live model
(``module.scaling[adapter_name]``), so Rust tests can compare their own
resolution of rank_pattern / alpha_pattern / rsLoRA against PEFT's.

How to run
----------
    python3 -m venv /tmp/peftvenv
    /tmp/peftvenv/bin/pip install torch==2.15.0 peft==0.21.2 \
        transformers==5.24.0 safetensors==0.8.0
    /tmp/peftvenv/bin/python scripts/make_peft_fixtures.py

(from the repository root; pass an output directory as the first argument to
write somewhere else). A CPU-only torch is enough. The fixtures were generated
with exactly the versions above; other versions may produce different bytes
(and MANIFEST.json records whichever versions were used).
"""

import hashlib
import json
import os
import shutil
import sys
from pathlib import Path

# PEFT stores target_modules from a Python set, so the order it writes them in
# adapter_config.json depends on string-hash randomisation. Re-exec with a fixed
# PYTHONHASHSEED so that re-running the script reproduces identical bytes.
if os.environ.get("PYTHONHASHSEED") != "0":
    os.environ["PYTHONHASHSEED"] = "0"
    os.execv(sys.executable, [sys.executable, *sys.argv])

# Never touch the network: the base model is built from a config, and PEFT's
# save_pretrained may otherwise try to look up the (fake) base model on a hub.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")

import peft  # noqa: E402
import safetensors  # noqa: E402
import torch  # noqa: E402
import transformers  # noqa: E402
from peft import LoraConfig, get_peft_model  # noqa: E402
from peft.tuners.lora import LoraLayer  # noqa: E402
from safetensors import safe_open  # noqa: E402
from transformers import LlamaConfig, LlamaForCausalLM  # noqa: E402

BASE_MODEL_NAME = "quiver-test/tiny-llama"
ADAPTER_NAME = "default"
BASE_SEED = 0
LORA_SEED = 1234

REPO_ROOT = Path(__file__).resolve().parent.parent
DEFAULT_OUT = REPO_ROOT / "tests" / "fixtures" / "peft"

# name -> (LoraConfig kwargs, dtype to cast the peft model to before saving)
ADAPTERS = {
    "plain_r8": (
        dict(r=8, lora_alpha=16, target_modules=["q_proj", "v_proj"]),
        None,
    ),
    "rank_pattern": (
        dict(
            r=4,
            lora_alpha=8,
            target_modules=["q_proj", "k_proj", "v_proj", "o_proj"],
            rank_pattern={"q_proj": 8},
            alpha_pattern={"o_proj": 2},
        ),
        None,
    ),
    "rslora_r16": (
        dict(
            r=16,
            lora_alpha=32,
            use_rslora=True,
            target_modules=["q_proj", "v_proj", "gate_proj", "up_proj", "down_proj"],
        ),
        None,
    ),
    "embedding": (
        dict(r=4, target_modules=["embed_tokens", "q_proj"]),
        None,
    ),
    "dora": (
        dict(r=4, use_dora=True, target_modules=["q_proj", "v_proj"]),
        None,
    ),
    "bf16_r8": (
        dict(r=8, lora_alpha=16, target_modules=["q_proj", "v_proj"]),
        torch.bfloat16,
    ),
}

# LoRA factor parameters that get random non-zero values. DoRA's
# lora_magnitude_vector is deliberately left as PEFT computed it (the column
# norms of the base weight), which is what a freshly initialised DoRA has.
LORA_FACTOR_MARKERS = ("lora_A", "lora_B", "lora_embedding_A", "lora_embedding_B")


def tiny_llama() -> LlamaForCausalLM:
    torch.manual_seed(BASE_SEED)
    config = LlamaConfig(
        vocab_size=64,
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
    )
    config._name_or_path = BASE_MODEL_NAME
    model = LlamaForCausalLM(config)
    model.eval()
    return model


def randomise_lora(model) -> None:
    torch.manual_seed(LORA_SEED)
    with torch.no_grad():
        for name, param in model.named_parameters():
            if any(f"{m}." in name or name.endswith(m) for m in LORA_FACTOR_MARKERS):
                param.copy_(torch.randn_like(param) * 0.1)


def sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 16), b""):
            h.update(chunk)
    return h.hexdigest()


def module_scales(model) -> dict:
    out = {}
    for name, module in model.named_modules():
        if isinstance(module, LoraLayer) and ADAPTER_NAME in module.scaling:
            out[name] = {
                "r": int(module.r[ADAPTER_NAME]),
                "alpha": float(module.lora_alpha[ADAPTER_NAME]),
                "scale": float(module.scaling[ADAPTER_NAME]),
                "layer_type": type(module).__name__,
            }
    return dict(sorted(out.items()))


def tensor_table(path: Path) -> dict:
    out = {}
    with safe_open(str(path), framework="pt") as f:
        for key in sorted(f.keys()):
            sl = f.get_slice(key)
            out[key] = {"dtype": sl.get_dtype(), "shape": list(sl.get_shape())}
    return out


def build_one(name: str, kwargs: dict, cast_dtype, out_root: Path, versions: dict) -> dict:
    model = tiny_llama()
    cfg = LoraConfig(
        task_type="CAUSAL_LM",
        base_model_name_or_path=BASE_MODEL_NAME,
        lora_dropout=0.0,
        **kwargs,
    )
    pmodel = get_peft_model(model, cfg, adapter_name=ADAPTER_NAME)
    randomise_lora(pmodel)
    if cast_dtype is not None:
        pmodel = pmodel.to(cast_dtype)
    scales = module_scales(pmodel)

    out_dir = out_root / name
    if out_dir.exists():
        shutil.rmtree(out_dir)
    pmodel.save_pretrained(str(out_dir), safe_serialization=True)

    files = {}
    for p in sorted(out_dir.iterdir()):
        files[p.name] = {"size": p.stat().st_size, "sha256": sha256(p)}

    saved_cfg = json.loads((out_dir / "adapter_config.json").read_text())
    assert saved_cfg["base_model_name_or_path"] == BASE_MODEL_NAME, saved_cfg
    for required in ("adapter_config.json", "adapter_model.safetensors"):
        assert required in files, (name, files)

    tensors = tensor_table(out_dir / "adapter_model.safetensors")
    for key, meta in tensors.items():
        if ".lora_" in key:
            expect = "BF16" if cast_dtype is torch.bfloat16 else "F32"
            assert meta["dtype"] == expect, (name, key, meta)

    return {
        "versions": versions,
        "base_model_name_or_path": BASE_MODEL_NAME,
        "r": kwargs["r"],
        "lora_alpha": saved_cfg["lora_alpha"],
        "use_rslora": saved_cfg.get("use_rslora", False),
        "use_dora": saved_cfg.get("use_dora", False),
        "target_modules": sorted(saved_cfg["target_modules"])
        if isinstance(saved_cfg["target_modules"], list)
        else saved_cfg["target_modules"],
        "rank_pattern": saved_cfg.get("rank_pattern", {}),
        "alpha_pattern": saved_cfg.get("alpha_pattern", {}),
        "cast_dtype": str(cast_dtype).replace("torch.", "") if cast_dtype else None,
        "files": files,
        "tensors": tensors,
        "modules": scales,
    }


def main() -> None:
    out_root = Path(sys.argv[1]).resolve() if len(sys.argv) > 1 else DEFAULT_OUT
    out_root.mkdir(parents=True, exist_ok=True)
    torch.use_deterministic_algorithms(True)
    versions = {
        "torch": torch.__version__,
        "peft": peft.__version__,
        "transformers": transformers.__version__,
        "safetensors": safetensors.__version__,
    }
    manifest = {
        "generator": "scripts/make_peft_fixtures.py",
        "adapter_name": ADAPTER_NAME,
        "base_seed": BASE_SEED,
        "lora_seed": LORA_SEED,
        "versions": versions,
        "adapters": {},
    }
    for name, (kwargs, cast_dtype) in ADAPTERS.items():
        manifest["adapters"][name] = build_one(name, kwargs, cast_dtype, out_root, versions)
        print(f"wrote {out_root / name}")
    (out_root / "MANIFEST.json").write_text(json.dumps(manifest, indent=2, sort_keys=True) + "\n")
    print(f"wrote {out_root / 'MANIFEST.json'}")


if __name__ == "__main__":
    main()
