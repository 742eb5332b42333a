"""The vLLM side: a ``LoRAResolver`` subclass (imports vLLM, so only loaded by ``register()``)."""

from __future__ import annotations

import logging
from typing import Optional

from vllm.lora.request import LoRARequest
from vllm.lora.resolver import LoRAResolver

from .core import Core

log = logging.getLogger("quiver_vllm")


class QuiverResolver(LoRAResolver):
    """Resolves ``owner/name[@ref]`` through a Quiver registry (see quiver_vllm.core.Core)."""

    def __init__(self, core: Core):
        self.core = core

    async def resolve_lora(self, base_model_name: str, lora_name: str) -> Optional[LoRARequest]:
        r = await self.core.resolve(base_model_name, lora_name)
        if r is None:
            return None
        return LoRARequest(lora_name=lora_name, lora_int_id=r.lora_int_id, lora_path=r.path)
