"""The resolver's core against a live Quiver (tests/vllm/run.sh starts it on either backend)."""

from __future__ import annotations

import asyncio
import json
import os
import urllib.error
import urllib.request

import pytest

from quiver_seed import api, create_adapter, set_alias, unique, upload
from quiver_vllm.client import NotFound
from quiver_vllm.core import lora_int_id


def run(coro):
    return asyncio.run(coro)


@pytest.fixture
def chat(live):
    """alice/<chat-x>: v1 (r=4), v2 (r=8), prod → v1."""
    name = unique("chat")
    create_adapter(live.url, live.alice, "alice", name)
    v1 = upload(live.url, live.alice, "alice", name, r=4, seed=1)
    v2 = upload(live.url, live.alice, "alice", name, r=8, seed=2)
    set_alias(live.url, live.alice, "alice", name, "prod", 1)
    return {"name": name, "v1": v1, "v2": v2}


def read_config(path):
    with open(os.path.join(path, "adapter_config.json")) as f:
        return json.load(f)


def test_every_ref_form_resolves_to_its_revision(chat, make_core, base_model):
    core = make_core()
    n, v1, v2 = chat["name"], chat["v1"], chat["v2"]
    for ref, want in (("", v2), ("@main", v2), ("@v1", v1), ("@1", v1), ("@2", v2),
                      ("@prod", v1), (f"@{v1['revision']}", v1), (f"@{v2['revision']}", v2)):
        r = run(core.resolve(base_model, f"alice/{n}{ref}"))
        assert r is not None, ref
        assert r.revision == want["revision"], ref
        assert r.path.endswith(f"/{want['revision']}/adapter")
        assert r.lora_int_id == lora_int_id(want["revision"])
        assert read_config(r.path)["r"] == (4 if want is v1 else 8)
    # one directory per revision, whatever the ref
    assert sorted(os.listdir(core.cache.dir)) == sorted([v1["revision"], v2["revision"]])


def test_default_ref_setting(chat, make_core, base_model):
    core = make_core(default_ref="prod")
    r = run(core.resolve(base_model, f"alice/{chat['name']}"))
    assert r.revision == chat["v1"]["revision"]


def test_moving_the_alias_resolves_to_the_new_revision(chat, make_core, base_model, live):
    core = make_core()
    name = f"alice/{chat['name']}@prod"
    first = run(core.resolve(base_model, name))
    assert first.revision == chat["v1"]["revision"]
    set_alias(live.url, live.alice, "alice", chat["name"], "prod", 2)
    second = run(core.resolve(base_model, name))
    assert second.revision == chat["v2"]["revision"]
    assert second.path != first.path and second.lora_int_id != first.lora_int_id
    assert read_config(second.path)["r"] == 8


def test_unknown_names_and_refs_are_none(chat, make_core, base_model):
    core = make_core()
    for bad in ("not a name", "alice/../../etc", f"alice/{chat['name']}@nosuchalias",
                f"alice/{chat['name']}@v99", "alice/does-not-exist", "nobody/x@prod",
                f"alice/{chat['name']}@{'0' * 40}"):
        assert run(core.resolve(base_model, bad)) is None, bad
    assert os.listdir(core.cache.dir) == []


def test_private_adapter_needs_its_owners_token(live, make_core, base_model):
    name = unique("secret")
    create_adapter(live.url, live.alice, "alice", name, private=True)
    upload(live.url, live.alice, "alice", name, r=4, seed=3)
    lora = f"alice/{name}"
    assert run(make_core(token=None).resolve(base_model, lora)) is None
    assert run(make_core(token="bob", cache_dir="/tmp/qv-bob-" + name).resolve(base_model, lora)) is None
    assert run(make_core(token="alice").resolve(base_model, lora)) is not None

    # A private adapter and a missing one look the same to someone who may not see it.
    def status_body(path, token):
        req = urllib.request.Request(live.url + path,
                                     headers={"Authorization": f"Bearer {token}"} if token else {})
        try:
            urllib.request.urlopen(req, timeout=10)
        except urllib.error.HTTPError as e:
            return e.code, json.loads(e.read())
        raise AssertionError("expected 404")

    private = status_body(f"/api/v1/adapters/alice/{name}/versions/main", live.bob)
    missing = status_body(f"/api/v1/adapters/alice/{name}-nope/versions/main", live.bob)
    assert private[0] == missing[0] == 404
    assert private[1].get("error", {}).get("code") == missing[1].get("error", {}).get("code")
    with pytest.raises(NotFound):
        make_core(token="bob").lookup_version(__import__("quiver_vllm.names").names.parse(lora))


def test_base_model_mismatch_and_mapping(live, make_core):
    name = unique("other-base")
    create_adapter(live.url, live.alice, "alice", name, base_model="meta-llama/Llama-3.1-8B")
    upload(live.url, live.alice, "alice", name, r=4, seed=5, base_model="meta-llama/Llama-3.1-8B")
    lora = f"alice/{name}"
    assert run(make_core().resolve("/models/llama-3.1-8b", lora)) is None
    mapped = make_core(base_model_map={"/models/llama-3.1-8b": "meta-llama/Llama-3.1-8B"})
    assert run(mapped.resolve("/models/llama-3.1-8b", lora)) is not None
    assert run(make_core().resolve("meta-llama/Llama-3.1-8B", lora)) is not None
    skip = make_core(skip_base_model_check=True, cache_dir="/tmp/qv-skip-" + name)
    assert run(skip.resolve("something-else", lora)) is not None


def test_rank_above_the_limit_is_refused(live, make_core, base_model):
    name = unique("big-rank")
    create_adapter(live.url, live.alice, "alice", name)
    upload(live.url, live.alice, "alice", name, r=32, seed=6)
    lora = f"alice/{name}"
    core = make_core(max_lora_rank=16)
    assert run(core.resolve(base_model, lora)) is None
    assert os.listdir(core.cache.dir) == []  # refused before any download
    assert run(make_core(max_lora_rank=32).resolve(base_model, lora)) is not None


def test_rank_pattern_counts(live, make_core, base_model):
    """r=4 with rank_pattern q_proj=32 is a rank-32 adapter for vLLM."""
    name = unique("pattern")
    create_adapter(live.url, live.alice, "alice", name)
    from quiver_seed import config, safetensors
    import struct  # noqa: F401
    # q_proj at rank 32, v_proj at rank 4
    files = {"adapter_config.json": config(4, rank_pattern={"q_proj": 32}),
             "adapter_model.safetensors": _mixed_rank_safetensors()}
    api(live.url, "POST", f"/api/v1/adapters/alice/{name}/versions", live.alice, files=files)
    assert run(make_core(max_lora_rank=16).resolve(base_model, f"alice/{name}")) is None
    assert run(make_core(max_lora_rank=32).resolve(base_model, f"alice/{name}")) is not None


def _mixed_rank_safetensors(d=16):
    import struct
    header, chunks, off = {}, [], 0
    for m, r in (("q_proj", 32), ("v_proj", 4)):
        for role, shape in (("lora_A", [r, d]), ("lora_B", [d, r])):
            buf = struct.pack(f"<{shape[0] * shape[1]}f", *([0.01] * (shape[0] * shape[1])))
            header[f"base_model.model.model.layers.0.self_attn.{m}.{role}.weight"] = {
                "dtype": "F32", "shape": shape, "data_offsets": [off, off + len(buf)]}
            chunks.append(buf)
            off += len(buf)
    h = json.dumps(header).encode()
    h += b" " * ((8 - len(h) % 8) % 8)
    return struct.pack("<Q", len(h)) + h + b"".join(chunks)


def test_dora_and_unservable_versions_are_refused(make_core):
    """The checks on the version resource alone (DoRA cannot be uploaded without its tensors)."""
    from quiver_vllm.core import Refused
    from quiver_vllm.names import parse

    core = make_core(skip_base_model_check=True)
    ref = parse("a/b")
    cfg = [{"path": "adapter_config.json", "size": 1, "sha256": "0" * 64}]
    ok = {"state": "ready", "lora": {"peft_type": "LORA", "r": 8}, "base_model": "m",
          "files": cfg}
    core.check(ref, ok, "m")
    for bad in ({"lora": {"peft_type": "LORA", "r": 8, "use_dora": True}},
                {"lora": {"peft_type": "LORA", "r": 8}, "files": []},
                {"lora": {"peft_type": "LOHA", "r": 8}},
                {"lora": {"peft_type": "LORA", "r": 8},
                 "compatibility": {"vllm": {"ok": False, "reason": "modules_to_save (lm_head)"}}},
                {"state": "pending", "lora": {"r": 8}}):
        with pytest.raises(Refused):
            core.check(ref, dict({"files": cfg}, **bad, base_model="m"), "m")


def test_corrupted_download_is_refused_and_not_cached(chat, proxy, make_core, base_model):
    core = make_core(url=proxy.url)
    proxy.corrupt.add("adapter_model.safetensors")
    lora = f"alice/{chat['name']}@v1"
    assert run(core.resolve(base_model, lora)) is None
    assert os.listdir(core.cache.dir) == []
    assert os.listdir(core.cache.tmp) == []
    assert core.cache.downloads == 0
    proxy.corrupt.clear()
    r = run(core.resolve(base_model, lora))
    assert r is not None and r.revision == chat["v1"]["revision"]


def test_eight_concurrent_resolves_download_once(chat, proxy, make_core, base_model):
    core = make_core(url=proxy.url)
    lora = f"alice/{chat['name']}@prod"

    async def many():
        return await asyncio.gather(*[core.resolve(base_model, lora) for _ in range(8)])

    results = run(many())
    assert all(r is not None for r in results)
    assert len({r.path for r in results}) == 1
    n_files = len(chat["v1"]["files"])
    assert proxy.file_gets == n_files, (proxy.file_gets, n_files)
    assert core.cache.downloads == 1


def test_concurrent_processes_download_once(chat, proxy, tmp_path, live, base_model):
    """Two processes sharing one cache directory: the fcntl lock makes one download."""
    import subprocess
    import sys

    cache = tmp_path / "shared"
    lora = f"alice/{chat['name']}@v2"
    env = dict(os.environ, QUIVER_URL=proxy.url, QUIVER_TOKEN=live.alice,
               QUIVER_CACHE_DIR=str(cache))
    procs = [subprocess.Popen([sys.executable, "-m", "quiver_vllm.cli", "resolve", lora,
                               "--base-model", base_model], env=env, stdout=subprocess.PIPE)
             for _ in range(3)]
    outs = [json.loads(p.communicate(timeout=60)[0]) for p in procs]
    assert all(p.returncode == 0 for p in procs)
    assert len({o["path"] for o in outs}) == 1
    assert proxy.file_gets == len(chat["v2"]["files"])


def test_lru_eviction_by_size(live, make_core, base_model):
    name = unique("evict")
    create_adapter(live.url, live.alice, "alice", name)
    versions = [upload(live.url, live.alice, "alice", name, r=4, seed=10 + i, extra_bytes=20000)
                for i in range(3)]
    size = sum(f["size"] for f in versions[0]["files"])
    core = make_core(cache_max_bytes=int(size * 2.5))
    core.cache.touch_every = 0  # record every hit's recency (mtime) in this test
    lora = f"alice/{name}@v%d"
    assert run(core.resolve(base_model, lora % 1)) is not None
    assert run(core.resolve(base_model, lora % 2)) is not None
    import time
    time.sleep(0.05)
    assert run(core.resolve(base_model, lora % 1)) is not None  # v1 is now the most recent
    time.sleep(0.05)
    assert run(core.resolve(base_model, lora % 3)) is not None  # over the limit: v2 goes
    cached = set(os.listdir(core.cache.dir))
    assert cached == {versions[0]["revision"], versions[2]["revision"]}, cached
    assert core.cache.total_bytes() <= core.cache.max_bytes
    # an evicted revision downloads again when asked for
    assert run(core.resolve(base_model, lora % 2)) is not None
    assert versions[1]["revision"] in os.listdir(core.cache.dir)


def test_restart_with_a_warm_cache_downloads_nothing(chat, proxy, make_core, base_model, tmp_path):
    lora = f"alice/{chat['name']}@prod"
    first = run(make_core(url=proxy.url, cache_dir=tmp_path / "warm").resolve(base_model, lora))
    got = proxy.file_gets
    assert got == len(chat["v1"]["files"])
    again = make_core(url=proxy.url, cache_dir=tmp_path / "warm")  # a new process, same cache
    r = run(again.resolve(base_model, lora))
    assert r.path == first.path and proxy.file_gets == got and again.cache.downloads == 0
    # a damaged entry (a file gone) is not a hit: it is downloaded again
    os.remove(os.path.join(r.path, "README.md"))
    third = make_core(url=proxy.url, cache_dir=tmp_path / "warm")
    assert run(third.resolve(base_model, lora)) is not None
    assert third.cache.downloads == 1 and os.path.exists(os.path.join(r.path, "README.md"))


def test_registry_down_is_none(make_core, base_model):
    core = make_core(url="http://127.0.0.1:9", timeout=2.0)
    assert run(core.resolve(base_model, "alice/anything@prod")) is None


def test_vllm_plugin_registers_and_returns_a_lora_request(chat, live, tmp_path, monkeypatch,
                                                          base_model):
    monkeypatch.setenv("QUIVER_URL", live.url)
    monkeypatch.setenv("QUIVER_TOKEN", live.alice)
    monkeypatch.setenv("QUIVER_CACHE_DIR", str(tmp_path / "plugin-cache"))
    from vllm.lora.request import LoRARequest
    from vllm.lora.resolver import LoRAResolverRegistry

    import quiver_vllm

    LoRAResolverRegistry.resolvers.pop("quiver", None)
    quiver_vllm.register()
    quiver_vllm.register()  # idempotent: vLLM loads plugins in several processes, maybe twice
    resolver = LoRAResolverRegistry.get_resolver("quiver")
    lora = f"alice/{chat['name']}@prod"
    req = run(resolver.resolve_lora(base_model, lora))
    assert isinstance(req, LoRARequest)
    assert req.lora_name == lora and req.lora_int_id == lora_int_id(chat["v1"]["revision"])
    assert os.path.isfile(os.path.join(req.lora_path, "adapter_model.safetensors"))
    assert run(resolver.resolve_lora(base_model, "some/hf-name@x y")) is None
    LoRAResolverRegistry.resolvers.pop("quiver", None)
    # register() routed the package's logger to vLLM's; undo it for the other tests
    import logging
    ours = logging.getLogger("quiver_vllm")
    for h in [h for h in ours.handlers if type(h).__name__ == "_ToVllm"]:
        ours.removeHandler(h)
    ours.propagate = True


def test_older_server_without_base_model_in_the_version(chat, make_core, base_model):
    """A server whose version resource lacks `base_model`: the adapter's is asked for (one more
    call), so the base-model check still holds."""
    core = make_core()
    real = core.client.version

    def old_shape(*a):
        v = real(*a)
        v.pop("base_model", None)
        v.pop("adapter", None)
        return v

    core.client.version = old_shape
    lora = f"alice/{chat['name']}@v1"
    assert run(core.resolve(base_model, lora)) is not None
    assert run(core.resolve("another/model", lora)) is None
