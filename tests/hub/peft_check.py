#!/usr/bin/env python3
"""PEFT against Quiver's Hub API: `PeftModel.from_pretrained` of an adapter pushed with
`PeftModel.push_to_hub`, on a tiny base model made here; the loaded LoRA tensors must equal the
pushed ones. Needs torch and peft (too heavy for the test command: torch from PyPI brings CUDA
wheels), so it runs on its own:

    python -m venv /tmp/peftvenv && /tmp/peftvenv/bin/pip install torch peft==0.21.0
    tests/hub/peft_check.sh target/debug/quiver /tmp/peftvenv/bin/python

Environment (set by peft_check.sh): HF_ENDPOINT, HF_TOKEN (a Quiver write token of alice),
HF_HUB_DISABLE_XET=1.
"""

import os
import sys
import tempfile

import torch
from torch import nn


class Tiny(nn.Module):
    """`model.layers.0.self_attn.{q,v}_proj` of 32×32, like the test fixtures."""

    def __init__(self):
        super().__init__()
        self.model = nn.Module()
        self.model.layers = nn.ModuleList([nn.Module()])
        attn = nn.Module()
        attn.q_proj = nn.Linear(32, 32, bias=False)
        attn.v_proj = nn.Linear(32, 32, bias=False)
        self.model.layers[0].self_attn = attn

    def forward(self, x):
        a = self.model.layers[0].self_attn
        return a.v_proj(a.q_proj(x))


def main():
    import peft
    from peft import LoraConfig, PeftModel, get_peft_model

    torch.manual_seed(0)
    repo = f"alice/peft-pushed-{os.getpid()}"
    model = get_peft_model(Tiny(), LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"]))
    for name, p in model.named_parameters():
        if "lora_" in name:
            p.data = torch.randn_like(p) * 0.1
    pushed = {k: v.clone() for k, v in model.state_dict().items() if "lora_" in k}
    model.push_to_hub(repo, private=True)
    loaded = PeftModel.from_pretrained(Tiny(), repo)
    got = {k: v for k, v in loaded.state_dict().items() if "lora_" in k}
    assert set(got) == set(pushed), (sorted(got), sorted(pushed))
    for k, v in pushed.items():
        assert torch.equal(got[k], v), k
    # A tag (alias) as the revision.
    from huggingface_hub import HfApi

    api = HfApi()
    sha = api.model_info(repo).sha
    api.create_tag(repo, tag="prod", revision=sha)
    again = PeftModel.from_pretrained(Tiny(), repo, revision="prod")
    assert all(torch.equal(again.state_dict()[k], v) for k, v in pushed.items())
    print(f"ok   PeftModel.push_to_hub + from_pretrained (peft {peft.__version__}, torch {torch.__version__}): {len(pushed)} LoRA tensors equal")
    return 0


if __name__ == "__main__":
    sys.exit(main())
