#!/usr/bin/env python3
"""Generate PEFT ``add_weighted_adapter`` reference fixtures for Quiver's
``--compat peft`` merge mode.

This script is run BY HAND, never in CI. Its outputs are committed under
tests/fixtures/peft_merges/ so the Rust test suite needs no Python at all.

What it does
------------
1. Builds the same tiny random LlamaForCausalLM as scripts/make_peft_fixtures.py
   (imported from it: same config, same base seed), wraps it with PEFT for
   each input adapter, overwrites lora_A / lora_B with seeded random values
   (PEFT initialises B to zero) and saves each adapter with save_pretrained
   (safetensors, float32) into

       tests/fixtures/peft_merges/inputs/<name>/{adapter_config.json,adapter_model.safetensors}

   (PEFT's generated README.md is deleted). Two sets of inputs:

   * "eq":    x (r=8, alpha=16), y (r=8, alpha=8), z (r=8, alpha=32, rsLoRA),
              all on q_proj/v_proj -- equal ranks, so every combination type
              (including the non-SVD ones) is allowed.
   * "mixed": p (r=4, alpha=8, q/k/v_proj),
              q (r=8, alpha=16, q/v/o_proj, rank_pattern {v_proj: 2},
                 alpha_pattern {v_proj: 4}),
              u (r=6, alpha=6, rsLoRA, q/v_proj)
              -- different ranks and different module sets (union), so only
              cat and the *_svd types are allowed.

2. For each set, loads all of its adapters FROM THE SAVED DIRECTORIES into a
   single PeftModel (PeftModel.from_pretrained + load_adapter) and calls
   ``add_weighted_adapter`` once per case (see CASES below).

3. For every merged adapter writes tests/fixtures/peft_merges/<set>/<case>.safetensors
   holding, per LoRA module path P (e.g.
   ``base_model.model.model.layers.0.self_attn.q_proj``), one tensor
   ``<P>.delta`` = B_new @ A_new (float32, [d_out, d_in]). That is the merged
   delta at scale 1, which is what PEFT intends (it sets r = lora_alpha =
   new_rank). NOTE: PEFT copies use_rslora from adapters[0] into the merged
   config, so when the first adapter uses rsLoRA PEFT's live model actually
   applies sqrt(new_rank) * B_new @ A_new; cases.json flags this with
   ``first_adapter_rslora`` / ``peft_applied_scaling``. The files always hold
   the scale-1 product.

4. Writes tests/fixtures/peft_merges/cases.json describing every saved case,
   the dare_* cases that were run but not saved (they are random), and the
   calls that PEFT rejected (expected errors), plus library versions.

5. Verifies, independently in numpy from the saved input files:
   * cat:    B_new A_new == sum_i w_i s_i B_i A_i  (rel. Frobenius err < 1e-6),
   * svd:    B_new A_new == best rank-k truncation of that sum,
   * linear: prints the (large) relative distance from that sum (cross terms).

How to run
----------
From the repository root, with the venv described in make_peft_fixtures.py
(torch 2.15.0, peft 0.21.2, transformers 5.24.0, safetensors 0.8.0):

    PYTHONHASHSEED=0 /tmp/peftvenv/bin/python scripts/make_peft_merge_fixtures.py

(the script re-execs itself with PYTHONHASHSEED=0 if it is not set; pass an
output directory as the first argument to write somewhere else). CPU only.
"""

import json
import os
import shutil
import sys
import traceback
from pathlib import Path

# PEFT stores target_modules from a Python set; fix string hashing so the
# written adapter_config.json files are byte-reproducible.
if os.environ.get("PYTHONHASHSEED") != "0":
    os.environ["PYTHONHASHSEED"] = "0"
    os.execv(sys.executable, [sys.executable, *sys.argv])

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")

SCRIPTS_DIR = Path(__file__).resolve().parent
sys.path.insert(0, str(SCRIPTS_DIR))

import numpy as np  # noqa: E402
import peft  # noqa: E402
import safetensors  # noqa: E402
import torch  # noqa: E402
import transformers  # noqa: E402
from peft import LoraConfig, PeftModel, get_peft_model  # noqa: E402
from peft.tuners.lora import LoraLayer  # noqa: E402
from safetensors.numpy import load_file as np_load_file  # noqa: E402
from safetensors.torch import save_file  # noqa: E402

# Same base model (config + seed) as the single-adapter fixtures.
from make_peft_fixtures import BASE_MODEL_NAME, LORA_FACTOR_MARKERS, tiny_llama  # noqa: E402

REPO_ROOT = SCRIPTS_DIR.parent
DEFAULT_OUT = REPO_ROOT / "tests" / "fixtures" / "peft_merges"

# name -> (seed for the random factors, LoraConfig kwargs)
INPUT_ADAPTERS = {
    # set "eq": equal ranks
    "x": (2001, dict(r=8, lora_alpha=16, target_modules=["q_proj", "v_proj"])),
    "y": (2002, dict(r=8, lora_alpha=8, target_modules=["q_proj", "v_proj"])),
    "z": (2003, dict(r=8, lora_alpha=32, use_rslora=True, target_modules=["q_proj", "v_proj"])),
    # set "mixed": different ranks / module sets
    "p": (3001, dict(r=4, lora_alpha=8, target_modules=["q_proj", "k_proj", "v_proj"])),
    "q": (
        3002,
        dict(
            r=8,
            lora_alpha=16,
            target_modules=["q_proj", "v_proj", "o_proj"],
            rank_pattern={"v_proj": 2},
            alpha_pattern={"v_proj": 4},
        ),
    ),
    "u": (3003, dict(r=6, lora_alpha=6, use_rslora=True, target_modules=["q_proj", "v_proj"])),
}

SETS = {
    "eq": dict(adapters=["x", "y", "z"], weights=[0.7, -0.4, 1.3]),
    "mixed": dict(adapters=["p", "q", "u"], weights=[1.0, 0.5, -0.8]),
}

DENSITY = 0.5
SVD_RANK = 6


def case(name, ctype, *, density=None, svd_rank=None, method="total", save=True, order=None):
    return dict(
        case=name,
        combination_type=ctype,
        density=density,
        svd_rank=svd_rank,
        majority_sign_method=method,
        save=save,
        order=order,  # optional permutation of the set's adapters/weights
    )


CASES = {
    "eq": [
        case("linear", "linear"),
        case("cat", "cat"),
        case("svd", "svd", svd_rank=SVD_RANK),
        case("svd_default", "svd", svd_rank=None),
        case("ties", "ties", density=DENSITY),
        case("ties_frequency", "ties", density=DENSITY, method="frequency"),
        case("ties_svd", "ties_svd", density=DENSITY, svd_rank=SVD_RANK),
        case("magnitude_prune", "magnitude_prune", density=DENSITY),
        case("magnitude_prune_svd", "magnitude_prune_svd", density=DENSITY, svd_rank=SVD_RANK),
        # rsLoRA adapter first: the merged config inherits use_rslora=True
        # (PEFT bug); B_new A_new is still the exact sum, PEFT's live scaling
        # is sqrt(new_rank) instead of 1.
        case("cat_rslora_first", "cat", order=[2, 0, 1]),
        # random: run only to record that they run, never saved
        case("dare_linear", "dare_linear", density=DENSITY, save=False),
        case("dare_ties", "dare_ties", density=DENSITY, save=False),
        case("dare_linear_svd", "dare_linear_svd", density=DENSITY, svd_rank=SVD_RANK, save=False),
        case("dare_ties_svd", "dare_ties_svd", density=DENSITY, svd_rank=SVD_RANK, save=False),
    ],
    "mixed": [
        case("cat", "cat"),
        case("svd", "svd", svd_rank=SVD_RANK),
        case("svd_default", "svd", svd_rank=None),
        case("ties_svd", "ties_svd", density=DENSITY, svd_rank=SVD_RANK),
        case("magnitude_prune_svd", "magnitude_prune_svd", density=DENSITY, svd_rank=SVD_RANK),
    ],
}

# Calls PEFT must reject (recorded in cases.json as expected errors).
EXPECTED_ERRORS = {
    "mixed": [
        case("linear", "linear", save=False),
        case("ties", "ties", density=DENSITY, save=False),
        case("magnitude_prune", "magnitude_prune", density=DENSITY, save=False),
    ],
    "eq": [
        # density is required by the pruning types
        case("ties_no_density", "ties", density=None, save=False),
    ],
}


# ---------------------------------------------------------------- inputs ---


def randomise_lora(model, seed: int) -> None:
    torch.manual_seed(seed)
    with torch.no_grad():
        for name, param in model.named_parameters():
            if any(f"{m}." in name or name.endswith(m) for m in LORA_FACTOR_MARKERS):
                param.copy_(torch.randn_like(param) * 0.1)


def build_input(name: str, seed: int, kwargs: dict, inputs_root: Path) -> Path:
    model = tiny_llama()
    cfg = LoraConfig(
        task_type="CAUSAL_LM",
        base_model_name_or_path=BASE_MODEL_NAME,
        lora_dropout=0.0,
        **kwargs,
    )
    pmodel = get_peft_model(model, cfg, adapter_name="default")
    randomise_lora(pmodel, seed)
    out_dir = inputs_root / name
    if out_dir.exists():
        shutil.rmtree(out_dir)
    pmodel.save_pretrained(str(out_dir), safe_serialization=True)
    readme = out_dir / "README.md"
    if readme.exists():
        readme.unlink()
    names = sorted(p.name for p in out_dir.iterdir())
    assert names == ["adapter_config.json", "adapter_model.safetensors"], (name, names)
    return out_dir


# ------------------------------------------------------------ extraction ---


def lora_modules(pmodel, adapter: str) -> dict:
    """module path -> LoraLayer, for every layer that carries `adapter`."""
    out = {}
    for mname, module in pmodel.named_modules():
        if isinstance(module, LoraLayer) and adapter in module.lora_A:
            out[mname] = module
    return dict(sorted(out.items()))


def dense_deltas(pmodel, adapter: str):
    tensors, per_module = {}, {}
    for mname, module in lora_modules(pmodel, adapter).items():
        A = module.lora_A[adapter].weight.detach().to(torch.float32)
        B = module.lora_B[adapter].weight.detach().to(torch.float32)
        assert not getattr(module, "fan_in_fan_out", False)
        delta = (B @ A).contiguous()
        tensors[f"{mname}.delta"] = delta
        nonzero_rows = int((A.abs().sum(dim=1) != 0).sum())
        per_module[mname] = {
            "r": int(A.shape[0]),
            "shape": list(delta.shape),
            "nonzero_A_rows": nonzero_rows,
            "delta_matrix_rank": int(torch.linalg.matrix_rank(delta.double()).item()),
            "peft_scaling": float(module.scaling[adapter]),
        }
    return tensors, per_module


# ---------------------------------------------------- independent checks ---


def pattern_value(pattern: dict, module_path: str, default):
    """PEFT-style rank/alpha_pattern lookup (key matches a module-path suffix)."""
    for key, val in pattern.items():
        if module_path == key or module_path.endswith("." + key):
            return val
    return default


def load_input_np(in_dir: Path):
    """-> (module path -> (A, B, scale)) computed from the files only."""
    cfg = json.loads((in_dir / "adapter_config.json").read_text())
    tensors = np_load_file(str(in_dir / "adapter_model.safetensors"))
    out = {}
    for key in tensors:
        if key.endswith(".lora_A.weight"):
            base = key[: -len(".lora_A.weight")]
            A = tensors[key].astype(np.float64)
            B = tensors[base + ".lora_B.weight"].astype(np.float64)
            # saved keys drop the adapter name: base_model.model.<path>
            r = pattern_value(cfg.get("rank_pattern") or {}, base, cfg["r"])
            alpha = pattern_value(cfg.get("alpha_pattern") or {}, base, cfg["lora_alpha"])
            assert A.shape[0] == r, (in_dir, key, A.shape, r)
            scale = alpha / np.sqrt(r) if cfg.get("use_rslora") else alpha / r
            out[base] = (A, B, scale)
    return out


def exact_sum(inputs_np: dict, adapters, weights) -> dict:
    out = {}
    for name, w in zip(adapters, weights):
        for path, (A, B, s) in inputs_np[name].items():
            term = w * s * (B @ A)
            out[path] = out.get(path, 0.0) + term
    return out


def rel_err(got: dict, ref: dict) -> float:
    assert set(got) == set(ref), (sorted(got), sorted(ref))
    num = sum(float(np.sum((got[k] - ref[k]) ** 2)) for k in ref)
    den = sum(float(np.sum(ref[k] ** 2)) for k in ref)
    return float(np.sqrt(num / den))


def truncate(m: np.ndarray, k: int) -> np.ndarray:
    U, S, Vh = np.linalg.svd(m, full_matrices=False)
    return (U[:, :k] * S[:k]) @ Vh[:k, :]


# numpy re-implementation of peft/utils/merge_utils.py (float64), used to
# check that the algorithm as documented in algorithms.md §1.2-1.3 reproduces
# what PEFT did.
def np_magprune(t: np.ndarray, density: float) -> np.ndarray:
    k = int(density * t.size)
    flat = np.abs(t).reshape(-1)
    keep = np.zeros(t.size, dtype=bool)
    if k > 0:
        keep[np.argsort(-flat, kind="stable")[:k]] = True
    return t * keep.reshape(t.shape)


def np_comb(kind: str, ts, ws, density, method) -> np.ndarray:
    ws = np.asarray(ws, dtype=np.float64).reshape((-1,) + (1,) * ts[0].ndim)
    if kind in ("magnitude_prune", "ties"):
        ts = [np_magprune(t, density) for t in ts]
    T = np.stack(ts)
    if kind in ("linear", "svd", "magnitude_prune"):
        return (T * ws).sum(axis=0)
    assert kind == "ties", kind
    sign = np.sign(T)
    mag = T.sum(axis=0) if method == "total" else sign.sum(axis=0)
    maj = np.where(mag >= 0, 1.0, -1.0)
    mask = sign == maj
    return (T * ws * mask).sum(axis=0) / np.maximum(mask.sum(axis=0), 1)


def np_reference(inputs_np: dict, adapters, weights, ctype, new_rank, density, method) -> dict:
    """B_new @ A_new as PEFT's add_weighted_adapter would produce it."""
    paths = sorted({p for a in adapters for p in inputs_np[a]})
    out = {}
    for path in paths:
        present = [(inputs_np[a][path], w) for a, w in zip(adapters, weights) if path in inputs_np[a]]
        if ctype.endswith("svd"):
            kind = ctype[: -len("_svd")] if ctype != "svd" else "svd"
            deltas = [s * (B @ A) for (A, B, s), _ in present]
            combined = np_comb(kind, deltas, [w for _, w in present], density, method)
            out[path] = truncate(combined, new_rank)
        elif ctype == "cat":
            out[path] = sum(w * s * (B @ A) for (A, B, s), w in present)
        else:
            c = [w * s for (_, _, s), w in present]
            wa = [np.sign(ci if ci != 0 else 1.0) * np.sqrt(abs(ci)) for ci in c]
            wb = [np.sqrt(abs(ci)) for ci in c]
            A_new = np_comb(ctype, [A for (A, _, _), _ in present], wa, density, method)
            B_new = np_comb(ctype, [B for (_, B, _), _ in present], wb, density, method)
            out[path] = B_new @ A_new
    return out


# ------------------------------------------------------------------ main ---


def main() -> None:
    out_root = Path(sys.argv[1]).resolve() if len(sys.argv) > 1 else DEFAULT_OUT
    if out_root.exists():
        shutil.rmtree(out_root)
    inputs_root = out_root / "inputs"
    inputs_root.mkdir(parents=True)
    torch.use_deterministic_algorithms(True)
    versions = {
        "torch": torch.__version__,
        "peft": peft.__version__,
        "transformers": transformers.__version__,
        "safetensors": safetensors.__version__,
    }

    input_dirs = {}
    for name, (seed, kwargs) in INPUT_ADAPTERS.items():
        input_dirs[name] = build_input(name, seed, kwargs, inputs_root)
        print(f"wrote {input_dirs[name]}")
    inputs_np = {name: load_input_np(d) for name, d in input_dirs.items()}
    input_cfgs = {
        name: json.loads((d / "adapter_config.json").read_text()) for name, d in input_dirs.items()
    }

    cases_out, unsaved, errors, checks = [], [], [], []
    for set_name, spec in SETS.items():
        (out_root / set_name).mkdir(parents=True)
        adapters_all, weights_all = spec["adapters"], spec["weights"]

        pmodel = PeftModel.from_pretrained(
            tiny_llama(), str(input_dirs[adapters_all[0]]), adapter_name=adapters_all[0]
        )
        for name in adapters_all[1:]:
            pmodel.load_adapter(str(input_dirs[name]), adapter_name=name)
        pmodel.eval()

        # PEFT's own per-module scale of each input must match our resolution.
        for name in adapters_all:
            for mname, module in lora_modules(pmodel, name).items():
                # saved keys are "<module path>.lora_A.weight" (no adapter name)
                want = inputs_np[name][mname][2]
                got = float(module.scaling[name])
                assert abs(got - want) < 1e-12, (name, mname, got, want)

        todo = [(c, False) for c in CASES[set_name]]
        todo += [(c, True) for c in EXPECTED_ERRORS.get(set_name, [])]
        for c, expect_error in todo:
            order = c["order"] or list(range(len(adapters_all)))
            adapters = [adapters_all[i] for i in order]
            weights = [weights_all[i] for i in order]
            merged_name = f"merged_{c['case']}"
            kwargs = dict(
                adapters=adapters,
                weights=weights,
                adapter_name=merged_name,
                combination_type=c["combination_type"],
                svd_rank=c["svd_rank"],
                density=c["density"],
                majority_sign_method=c["majority_sign_method"],
            )
            record = {
                "set": set_name,
                "case": c["case"],
                "combination_type": c["combination_type"],
                "adapters": adapters,
                "weights": weights,
                "density": c["density"],
                "svd_rank": c["svd_rank"],
                "majority_sign_method": c["majority_sign_method"],
            }
            try:
                pmodel.add_weighted_adapter(**kwargs)
            except Exception as e:  # noqa: BLE001
                msg = f"{type(e).__name__}: {e}"
                print(f"[{set_name}/{c['case']}] add_weighted_adapter raised {msg}")
                if not expect_error:
                    traceback.print_exc()
                    raise
                errors.append({**record, "error": msg})
                continue
            assert not expect_error, f"{set_name}/{c['case']} was expected to fail"
            print(f"[{set_name}/{c['case']}] ran")

            merged_cfg = pmodel.peft_config[merged_name]
            first_rslora = bool(input_cfgs[adapters[0]].get("use_rslora", False))
            assert bool(merged_cfg.use_rslora) == first_rslora
            new_rank = int(merged_cfg.r)
            tensors, per_module = dense_deltas(pmodel, merged_name)
            record.update(
                {
                    "new_rank": new_rank,
                    "first_adapter_rslora": first_rslora,
                    # scale PEFT's live merged adapter really applies to B_new A_new
                    # (1.0 intended; sqrt(new_rank) when the rsLoRA bug bites)
                    "peft_applied_scaling": float(np.sqrt(new_rank)) if first_rslora else 1.0,
                    "modules": per_module,
                }
            )
            for mname, info in per_module.items():
                assert abs(info["peft_scaling"] - record["peft_applied_scaling"]) < 1e-9, (
                    mname,
                    info,
                )

            if not c["save"]:
                unsaved.append(record)
                # free it so the model does not grow without bound
                pmodel.delete_adapter(merged_name)
                continue

            rel_file = f"{set_name}/{c['case']}.safetensors"
            save_file(tensors, str(out_root / rel_file), metadata={"format": "pt"})
            record["file"] = rel_file
            cases_out.append(record)

            # independent numpy checks against the input files
            got = {k[: -len(".delta")]: v.double().numpy() for k, v in tensors.items()}
            ref = exact_sum(inputs_np, adapters, weights)
            ctype = c["combination_type"]
            if ctype == "cat":
                err = rel_err(got, ref)
                ok = err < 1e-6
                line = f"CHECK {set_name}/{c['case']}: cat vs sum w_i s_i B_i A_i rel.Frobenius err = {err:.3e} -> {'OK' if ok else 'FAIL'}"
                print(line)
                checks.append(line)
                assert ok, line
            elif ctype == "linear":
                err = rel_err(got, ref)
                line = f"CHECK {set_name}/{c['case']}: linear vs sum w_i s_i B_i A_i rel.Frobenius distance = {err:.4f} (large expected: cross terms)"
                print(line)
                checks.append(line)
            elif ctype == "svd":
                trunc = {k: truncate(v, new_rank) for k, v in ref.items()}
                err = rel_err(got, trunc)
                err_full = rel_err(got, ref)
                ok = err < 1e-5
                line = (
                    f"CHECK {set_name}/{c['case']}: svd(k={new_rank}) vs rank-{new_rank} truncation of exact sum "
                    f"rel.err = {err:.3e} -> {'OK' if ok else 'FAIL'} (vs untruncated sum: {err_full:.4f})"
                )
                print(line)
                checks.append(line)
                assert ok, line

            ref_peft = np_reference(
                inputs_np, adapters, weights, ctype, new_rank, c["density"], c["majority_sign_method"]
            )
            err = rel_err(got, ref_peft)
            ok = err < 1e-5
            line = (
                f"CHECK {set_name}/{c['case']}: vs numpy re-implementation of PEFT {ctype} "
                f"rel.err = {err:.3e} -> {'OK' if ok else 'MISMATCH'}"
            )
            print(line)
            checks.append(line)
            record["numpy_reimpl_rel_err"] = float(f"{err:.3e}")

        del pmodel

    cases_json = {
        "generator": "scripts/make_peft_merge_fixtures.py",
        "versions": versions,
        "base_model_name_or_path": BASE_MODEL_NAME,
        "tensor_naming": "<module path>.delta = B_new @ A_new (float32, [d_out, d_in], scale 1)",
        "inputs": {
            name: {
                "dir": f"inputs/{name}",
                "seed": seed,
                "r": input_cfgs[name]["r"],
                "lora_alpha": input_cfgs[name]["lora_alpha"],
                "use_rslora": input_cfgs[name].get("use_rslora", False),
                "target_modules": sorted(input_cfgs[name]["target_modules"]),
                "rank_pattern": input_cfgs[name].get("rank_pattern") or {},
                "alpha_pattern": input_cfgs[name].get("alpha_pattern") or {},
            }
            for name, (seed, _) in INPUT_ADAPTERS.items()
        },
        "sets": SETS,
        "cases": cases_out,
        "ran_not_saved": unsaved,
        "expected_errors": errors,
        "checks": checks,
    }
    (out_root / "cases.json").write_text(json.dumps(cases_json, indent=2, sort_keys=True) + "\n")
    print(f"wrote {out_root / 'cases.json'}")
    total = sum(p.stat().st_size for p in out_root.rglob("*") if p.is_file())
    print(f"total size of {out_root}: {total} bytes")
    assert total < 1_500_000, total


if __name__ == "__main__":
    main()
