"""Quiver for vLLM: a LoRA resolver plugin and ``quiver-vllm sync``.

``register()`` is the ``vllm.general_plugins`` entry point (``VLLM_PLUGINS=quiver``). It is called
in every vLLM process, possibly more than once, so it is cheap and idempotent; vLLM is imported
only inside it, so the rest of the package works without vLLM.
"""

from __future__ import annotations

import logging

__version__ = "0.1.0"
RESOLVER_NAME = "quiver"

log = logging.getLogger("quiver_vllm")


def register() -> None:
    from vllm.lora.resolver import LoRAResolverRegistry

    if RESOLVER_NAME in LoRAResolverRegistry.get_supported_resolvers():
        return
    from .config import Settings
    from .core import Core
    from .plugin import QuiverResolver

    _log_like_vllm()
    try:
        settings = Settings.from_env()
        core = Core(settings)
    except (ValueError, OSError) as e:
        log.error("quiver: resolver not registered: %s", e)
        return
    LoRAResolverRegistry.register_resolver(RESOLVER_NAME, QuiverResolver(core))
    log.info("quiver: LoRA resolver registered (registry %s, default ref %s, cache %s, "
             "max rank %s)", settings.url, settings.default_ref, settings.cache_dir,
             settings.max_lora_rank)


class _ToVllm(logging.Handler):
    """Hands each record to the `vllm.quiver_vllm` logger, i.e. to whatever handlers vLLM sets
    on `vllm` (it configures logging after loading plugins, and only for `vllm.*`)."""

    def emit(self, record: logging.LogRecord) -> None:
        logging.getLogger("vllm.quiver_vllm").handle(record)


def _log_like_vllm() -> None:
    ours = logging.getLogger("quiver_vllm")
    if any(isinstance(h, _ToVllm) for h in ours.handlers):
        return
    ours.addHandler(_ToVllm())
    if ours.level == logging.NOTSET:
        ours.setLevel(logging.INFO)
    ours.propagate = False
