"""Fixtures: the live Quiver that tests/vllm/run.sh started (QUIVER_TEST_URL and two write
tokens), a counting/corrupting proxy in front of it, fresh caches, and — only where the real
vllm package is absent — a stub of the two vLLM modules the plugin imports."""

from __future__ import annotations

import abc
import os
import sys
import types
from dataclasses import dataclass, field

import pytest

sys.path.insert(0, os.path.dirname(__file__))

from proxy import Proxy  # noqa: E402
from quiver_seed import BASE_MODEL  # noqa: E402


def _install_vllm_stub():
    """vllm.lora.request.LoRARequest and vllm.lora.resolver as vLLM 0.34 defines them (shape
    only), so register() and QuiverResolver run without vLLM installed."""
    vllm = types.ModuleType("vllm")
    vllm.__path__ = []
    vllm.IS_QUIVER_TEST_STUB = True
    lora = types.ModuleType("vllm.lora")
    lora.__path__ = []
    request = types.ModuleType("vllm.lora.request")
    resolver = types.ModuleType("vllm.lora.resolver")

    @dataclass
    class LoRARequest:
        lora_name: str
        lora_int_id: int
        lora_path: str = ""
        base_model_name: str = None
        load_inplace: bool = False

        def __post_init__(self):
            if self.lora_int_id < 1:
                raise ValueError(f"id must be > 0, got {self.lora_int_id}")
            assert self.lora_path, "lora_path cannot be empty"

    class LoRAResolver(abc.ABC):
        @abc.abstractmethod
        async def resolve_lora(self, base_model_name, lora_name):
            ...

    @dataclass
    class _Registry:
        resolvers: dict = field(default_factory=dict)

        def get_supported_resolvers(self):
            return self.resolvers.keys()

        def register_resolver(self, name, r):
            self.resolvers[name] = r

        def get_resolver(self, name):
            return self.resolvers[name]

    request.LoRARequest = LoRARequest
    resolver.LoRAResolver = LoRAResolver
    resolver.LoRAResolverRegistry = _Registry()
    vllm.lora = lora
    lora.request, lora.resolver = request, resolver
    sys.modules.update({"vllm": vllm, "vllm.lora": lora, "vllm.lora.request": request,
                        "vllm.lora.resolver": resolver})


try:
    import vllm.lora.resolver  # noqa: F401
except Exception:  # noqa: BLE001 - absent, or present without its heavy dependencies
    for m in [m for m in sys.modules if m == "vllm" or m.startswith("vllm.")]:
        del sys.modules[m]
    _install_vllm_stub()


@dataclass
class Live:
    url: str
    alice: str
    bob: str


@pytest.fixture(scope="session")
def live():
    url = os.environ.get("QUIVER_TEST_URL")
    if not url:
        pytest.skip("QUIVER_TEST_URL not set (tests/vllm/run.sh starts a server)")
    return Live(url, os.environ["QUIVER_TEST_ALICE"], os.environ["QUIVER_TEST_BOB"])


@pytest.fixture
def proxy(live):
    p = Proxy(live.url)
    yield p
    p.close()


@pytest.fixture
def make_core(tmp_path, live):
    """make_core(url=..., token=..., **settings) → a fresh Core on a per-test cache dir."""
    from quiver_vllm.config import Settings
    from quiver_vllm.core import Core

    def make(url=None, token="alice", cache_dir=None, **kw):
        s = Settings(url=url or live.url,
                     token={"alice": live.alice, "bob": live.bob, None: None}.get(token, token),
                     cache_dir=str(cache_dir or tmp_path / "cache"), timeout=30.0)
        for k, v in kw.items():
            setattr(s, k, v)
        s.validate()
        return Core(s)

    return make


@pytest.fixture
def base_model():
    return BASE_MODEL
