#!/usr/bin/env python3
"""quiver-vllm against the REAL vllm package (run by tests/vllm/vllm_check.sh, outside the test
command: vLLM and torch are gigabytes).

Checks, each printed ok/FAIL:
  1. vLLM's own plugin loader (vllm.plugins.load_general_plugins, VLLM_PLUGINS=quiver) finds the
     `quiver` entry point in group vllm.general_plugins and registers our resolver in
     LoRAResolverRegistry;
  2. the registered resolver returns vLLM's own LoRARequest for `owner/name@prod`;
  3. vLLM's own validation of a LoRA directory before loading — PEFTHelper.from_local_dir +
     validate_legal(LoRAConfig(max_lora_rank=...)), and LoRAModel.from_local_checkpoint on CPU —
     accepts the directory the resolver returned;
  4. the same validation refuses the rank-32 adapter at --max-lora-rank 16, and the resolver,
     told the same limit (QUIVER_MAX_LORA_RANK=16), refuses it first (None).
Env: QUIVER_URL, QUIVER_TOKEN, QUIVER_CACHE_DIR, CHECK_SMALL, CHECK_BIG (owner/name of the
rank-8 and rank-32 adapters), CHECK_BASE_MODEL.
"""

import asyncio
import os
import sys
import traceback

results = []


def check(name):
    def wrap(fn):
        try:
            fn()
            results.append(f"ok   {name}")
        except Exception:  # noqa: BLE001
            results.append(f"FAIL {name}\n{traceback.format_exc()}")
        return fn

    return wrap


def main():
    import importlib.metadata as md

    import vllm
    from vllm.lora.request import LoRARequest
    from vllm.lora.resolver import LoRAResolverRegistry
    from vllm.plugins import load_general_plugins

    small, big, base = os.environ["CHECK_SMALL"], os.environ["CHECK_BIG"], os.environ["CHECK_BASE_MODEL"]
    print(f"vllm {vllm.__version__} (from {os.path.dirname(vllm.__file__)}), "
          f"quiver-vllm {md.version('quiver-vllm')}")
    state = {}

    @check("vLLM's plugin loader registers the quiver resolver (VLLM_PLUGINS=quiver)")
    def _():
        assert os.environ.get("VLLM_PLUGINS") == "quiver"
        eps = [e for e in md.entry_points(group="vllm.general_plugins") if e.name == "quiver"]
        assert eps and eps[0].value == "quiver_vllm:register", eps
        assert "quiver" not in LoRAResolverRegistry.get_supported_resolvers()
        load_general_plugins()
        assert "quiver" in LoRAResolverRegistry.get_supported_resolvers()
        state["resolver"] = LoRAResolverRegistry.get_resolver("quiver")
        print(f"     registered: {type(state['resolver']).__module__}."
              f"{type(state['resolver']).__name__}")

    @check("the resolver returns vLLM's LoRARequest for owner/name@prod and owner/name@v1")
    def _():
        r = state["resolver"]
        for name in (f"{small}@prod", f"{big}@v1"):
            req = asyncio.run(r.resolve_lora(base, name))
            assert isinstance(req, LoRARequest), req
            assert req.lora_name == name and req.lora_int_id >= 1 and os.path.isdir(req.lora_path)
            state[name] = req
            print(f"     {name} -> {req.lora_path} (id {req.lora_int_id})")

    @check("PEFTHelper.from_local_dir + validate_legal(max_lora_rank=16) accept the rank-8 dir")
    def _():
        from vllm.config.lora import LoRAConfig
        from vllm.lora.peft_helper import PEFTHelper

        path = state[f"{small}@prod"].lora_path
        h = PEFTHelper.from_local_dir(path, max_position_embeddings=None)
        h.validate_legal(LoRAConfig(max_lora_rank=16))
        assert h.r == 8, h.r
        state["helper"] = h

    @check("LoRAModel.from_local_checkpoint (CPU) loads the rank-8 dir's tensors")
    def _():
        from vllm.lora.lora_model import LoRAModel

        path = state[f"{small}@prod"].lora_path
        m = LoRAModel.from_local_checkpoint(path, {"q_proj", "v_proj"}, state["helper"],
                                            lora_model_id=1, device="cpu")
        names = sorted(m.loras)
        assert any("q_proj" in n for n in names) and any("v_proj" in n for n in names), names
        assert all(lw.lora_a.shape[0] == 8 for lw in m.loras.values())
        print(f"     modules: {names}")

    @check("vLLM refuses the rank-32 dir at max_lora_rank=16 and accepts it at 32")
    def _():
        from vllm.config.lora import LoRAConfig
        from vllm.lora.peft_helper import PEFTHelper

        h = PEFTHelper.from_local_dir(state[f"{big}@v1"].lora_path, max_position_embeddings=None)
        try:
            h.validate_legal(LoRAConfig(max_lora_rank=16))
        except ValueError as e:
            assert "max_lora_rank" in str(e), e
            print(f"     vLLM: {e}")
        else:
            raise AssertionError("vLLM accepted rank 32 at max_lora_rank 16")
        h.validate_legal(LoRAConfig(max_lora_rank=32))

    @check("with QUIVER_MAX_LORA_RANK=16 the resolver refuses the rank-32 adapter (None)")
    def _():
        from quiver_vllm.config import Settings
        from quiver_vllm.core import Core
        from quiver_vllm.plugin import QuiverResolver

        s = Settings.from_env()
        s.max_lora_rank = 16
        r = QuiverResolver(Core(s))
        assert asyncio.run(r.resolve_lora(base, f"{big}@v1")) is None
        assert isinstance(asyncio.run(r.resolve_lora(base, f"{small}@prod")), LoRARequest)

    print("\n".join(results))
    return 1 if any(r.startswith("FAIL") for r in results) else 0


if __name__ == "__main__":
    sys.exit(main())
