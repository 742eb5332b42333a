"""Settings, read from the environment (every one documented in integrations/vllm/README.md)."""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import Dict, Optional

DEFAULT_CACHE_MAX_BYTES = 20 * 1024**3
# vLLM's default --max-lora-rank.
DEFAULT_MAX_LORA_RANK = 16


def _truthy(v: Optional[str]) -> bool:
    return (v or "").strip().lower() in ("1", "true", "yes", "on")


def parse_base_model_map(raw: str) -> Dict[str, str]:
    """``served=hub/id,other=x/y`` → {served: hub/id}. Raises ValueError on a malformed entry."""
    out: Dict[str, str] = {}
    for item in (raw or "").split(","):
        item = item.strip()
        if not item:
            continue
        k, eq, v = item.partition("=")
        if not eq or not k.strip() or not v.strip():
            raise ValueError(f"QUIVER_BASE_MODEL_MAP entry {item!r} is not served-name=base-model")
        out[k.strip()] = v.strip()
    return out


@dataclass
class Settings:
    url: str = "http://127.0.0.1:8080"
    token: Optional[str] = None
    default_ref: str = "main"
    cache_dir: str = field(default_factory=lambda: os.path.expanduser("~/.cache/quiver-vllm"))
    cache_max_bytes: int = DEFAULT_CACHE_MAX_BYTES
    # None: no rank check (the sync daemon without --max-lora-rank).
    max_lora_rank: Optional[int] = DEFAULT_MAX_LORA_RANK
    base_model_map: Dict[str, str] = field(default_factory=dict)
    skip_base_model_check: bool = False
    timeout: float = 30.0

    @classmethod
    def from_env(cls, env=None) -> "Settings":
        env = os.environ if env is None else env
        s = cls()
        s.url = (env.get("QUIVER_URL") or s.url).rstrip("/")
        s.token = env.get("QUIVER_TOKEN") or None
        s.default_ref = env.get("QUIVER_DEFAULT_REF") or "main"
        if env.get("QUIVER_CACHE_DIR"):
            s.cache_dir = os.path.expanduser(env["QUIVER_CACHE_DIR"])
        if env.get("QUIVER_CACHE_MAX_BYTES"):
            s.cache_max_bytes = int(env["QUIVER_CACHE_MAX_BYTES"])
        if env.get("QUIVER_MAX_LORA_RANK"):
            s.max_lora_rank = int(env["QUIVER_MAX_LORA_RANK"])
        s.base_model_map = parse_base_model_map(env.get("QUIVER_BASE_MODEL_MAP", ""))
        s.skip_base_model_check = _truthy(env.get("QUIVER_SKIP_BASE_MODEL_CHECK"))
        if env.get("QUIVER_TIMEOUT"):
            s.timeout = float(env["QUIVER_TIMEOUT"])
        s.validate()
        return s

    def validate(self) -> None:
        if not self.url.startswith(("http://", "https://")):
            raise ValueError(f"QUIVER_URL {self.url!r} must start with http:// or https://")
        if self.cache_max_bytes < 0:
            raise ValueError("QUIVER_CACHE_MAX_BYTES must be >= 0 (0: no limit)")
        if self.max_lora_rank is not None and self.max_lora_rank <= 0:
            raise ValueError("QUIVER_MAX_LORA_RANK must be positive")
        if not (0 < self.timeout <= 3600):
            raise ValueError("QUIVER_TIMEOUT must be in (0, 3600] seconds")
