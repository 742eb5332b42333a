"""Name and ref grammar, settings parsing, signature checks (no server)."""

import time

import pytest

from quiver_vllm.config import Settings, parse_base_model_map
from quiver_vllm.core import lora_int_id, max_rank
from quiver_vllm.names import NameError_, parse, try_parse
from quiver_vllm.sync import parse_spec, sign, verify_signature

REV = "0123456789abcdef0123456789abcdef01234567"


@pytest.mark.parametrize("raw,owner,name,ref", [
    ("alice/chat-lora", "alice", "chat-lora", "main"),
    ("alice/chat-lora@prod", "alice", "chat-lora", "prod"),
    ("alice/chat-lora@v3", "alice", "chat-lora", "v3"),
    ("alice/chat-lora@3", "alice", "chat-lora", "3"),
    ("alice/chat-lora@main", "alice", "chat-lora", "main"),
    (f"alice/chat-lora@{REV}", "alice", "chat-lora", REV),
    ("Alice/Chat.LoRA_2@Canary", "alice", "chat.lora_2", "canary"),
    ("a/b", "a", "b", "main"),
])
def test_valid_names(raw, owner, name, ref):
    r = parse(raw)
    assert (r.owner, r.name, r.ref) == (owner, name, ref)


@pytest.mark.parametrize("raw", [
    "", "alice", "alice/", "/chat", "alice/chat/extra", "alice/chat@", "alice/chat@a@b",
    "alice/-chat", "alice/.chat", "al ice/chat", "alice/chat@pro d", "alice/chat@-x",
    "../etc/passwd", "alice/" + "x" * 97, "alice/chat@" + "y" * 97, "meta-llama/Llama 3",
    "/abs/path", "alice\\chat", "alice/ch%61t",
])
def test_invalid_names(raw):
    with pytest.raises(NameError_):
        parse(raw)
    assert try_parse(raw) is None


def test_default_ref():
    assert parse("alice/chat", default_ref="prod").ref == "prod"
    assert parse("alice/chat@v2", default_ref="prod").ref == "v2"


def test_revision_refs():
    assert parse(f"a/b@{REV}").is_revision
    assert parse(f"a/b@{REV.upper()}").ref == REV  # refs compare in lower case, as on the server
    assert parse("a/b@v1.2").ref == "v1.2"  # an alias, not a number


def test_lora_int_id_stable_positive_int32():
    a, b = lora_int_id(REV), lora_int_id("f" * 40)
    assert a == lora_int_id(REV)
    assert a != b
    for x in (a, b, lora_int_id("0" * 40)):
        assert 1 <= x < 2**31 and x >= 2**30


def test_max_rank():
    assert max_rank({"lora": {"r": 8}}) == 8
    assert max_rank({"lora": {"r": 8, "rank_pattern": {"q_proj": 64}}}) == 64
    assert max_rank({"lora": {"r": 8, "max_rank": 32}}) == 32


def test_settings_from_env():
    s = Settings.from_env({"QUIVER_URL": "http://h:1/", "QUIVER_TOKEN": "t",
                           "QUIVER_BASE_MODEL_MAP": "llama=meta/llama-3, x = y/z",
                           "QUIVER_MAX_LORA_RANK": "64", "QUIVER_SKIP_BASE_MODEL_CHECK": "1",
                           "QUIVER_DEFAULT_REF": "prod", "QUIVER_CACHE_MAX_BYTES": "1000"})
    assert s.url == "http://h:1" and s.token == "t" and s.max_lora_rank == 64
    assert s.base_model_map == {"llama": "meta/llama-3", "x": "y/z"}
    assert s.skip_base_model_check and s.default_ref == "prod" and s.cache_max_bytes == 1000
    assert Settings.from_env({}).max_lora_rank == 16  # vLLM's default --max-lora-rank
    with pytest.raises(ValueError):
        parse_base_model_map("nokey")
    with pytest.raises(ValueError):
        Settings.from_env({"QUIVER_URL": "ftp://x"})


def test_specs():
    s = parse_spec("alice/chat@prod")
    assert s.served == "alice/chat@prod" and s.ref.ref == "prod"
    s = parse_spec("chat=alice/chat@v2")
    assert s.served == "chat" and s.ref.adapter == "alice/chat" and s.ref.ref == "v2"
    with pytest.raises(ValueError):
        parse_spec("chat=alice")


def test_signatures():
    body = b'{"event":"alias.moved"}'
    now = int(time.time())
    h = sign("s3cret", now, body)
    assert verify_signature("s3cret", h, body)
    assert not verify_signature("other", h, body)
    assert not verify_signature("s3cret", h, body + b" ")
    assert not verify_signature("s3cret", sign("s3cret", now - 3600, body), body)  # stale
    assert not verify_signature("s3cret", None, body)
    assert not verify_signature("s3cret", "garbage", body)
