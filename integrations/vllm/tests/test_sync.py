"""``quiver-vllm sync`` against fake vLLM and SGLang replicas (tests/fake_replica.py) and a live
Quiver: alias moves reach the replica's load endpoint, a restarted replica is re-synced."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import time
import urllib.error
import urllib.request

import pytest

from fake_replica import FakeReplica
from quiver_seed import create_adapter, set_alias, unique, upload
from quiver_vllm.sync import Replica, Syncer, parse_spec, sign


@pytest.fixture
def chat(live):
    name = unique("roll")
    create_adapter(live.url, live.alice, "alice", name)
    v1 = upload(live.url, live.alice, "alice", name, r=4, seed=21)
    v2 = upload(live.url, live.alice, "alice", name, r=8, seed=22)
    v3 = upload(live.url, live.alice, "alice", name, r=4, seed=23)
    set_alias(live.url, live.alice, "alice", name, "prod", 1)
    return {"name": name, "v": [v1, v2, v3]}


def loads(rep):
    return [(p, b) for _, p, b in rep.calls if "unload" not in p]


def paths(rep):
    return [(p, b) for _, p, b in rep.calls]


@pytest.mark.parametrize("engine", ["vllm", "sglang"])
def test_alias_moves_and_restarts_reach_the_replica(engine, chat, make_core, live):
    rep = FakeReplica(engine)
    try:
        core = make_core()
        served = f"alice/{chat['name']}@prod"
        syncer = Syncer(core, Replica(rep.url, engine), [parse_spec(served)])
        rev = [v["revision"] for v in chat["v"]]

        syncer.tick()  # first sync: the replica lacks it
        assert rep.adapters == {served: core.cache.adapter_dir(rev[0])}
        load_path = "/v1/load_lora_adapter" if engine == "vllm" else "/load_lora_adapter"
        assert rep.calls[-1][1] == load_path
        assert rep.calls[-1][2]["lora_name"] == served

        n = len(rep.calls)
        syncer.tick()  # nothing moved: no call to the replica's load endpoints
        assert len(rep.calls) == n

        set_alias(live.url, live.alice, "alice", chat["name"], "prod", 2)
        syncer.tick()
        assert rep.adapters[served] == core.cache.adapter_dir(rev[1])
        new_calls = [(p, b) for _, p, b in rep.calls[n:]]
        if engine == "vllm":
            assert new_calls == [("/v1/load_lora_adapter", {
                "lora_name": served, "lora_path": core.cache.adapter_dir(rev[1]),
                "load_inplace": True})]
        else:
            assert new_calls == [("/unload_lora_adapter", {"lora_name": served}),
                                 ("/load_lora_adapter", {"lora_name": served,
                                                         "lora_path": core.cache.adapter_dir(rev[1])})]

        rep.restart()  # the replica restarted: it serves nothing
        syncer.tick()
        assert rep.adapters == {served: core.cache.adapter_dir(rev[1])}
        assert rep.calls[-1][2] == {"lora_name": served, "lora_path": core.cache.adapter_dir(rev[1])}
        assert core.cache.downloads == 2  # the restart re-used the cache
    finally:
        rep.close()


def test_old_vllm_without_load_inplace_gets_unload_then_load(chat, make_core, live):
    rep = FakeReplica("vllm", support_inplace=False)
    try:
        core = make_core()
        served = "chat"  # served-name=owner/name@ref
        syncer = Syncer(core, Replica(rep.url, "vllm"),
                        [parse_spec(f"chat=alice/{chat['name']}@prod")])
        syncer.tick()
        set_alias(live.url, live.alice, "alice", chat["name"], "prod", 3)
        n = len(rep.calls)
        syncer.tick()
        assert [p for _, p, _ in rep.calls[n:]] == [
            "/v1/load_lora_adapter", "/v1/unload_lora_adapter", "/v1/load_lora_adapter"]
        assert rep.adapters[served] == core.cache.adapter_dir(chat["v"][2]["revision"])
    finally:
        rep.close()


def test_refused_version_leaves_the_served_one(chat, make_core, live, caplog):
    """prod moves to a version above the rank limit: logged once, the replica keeps v1; when
    prod moves on to an acceptable version, that one is loaded."""
    rep = FakeReplica("vllm")
    try:
        core = make_core(max_lora_rank=4)
        served = f"alice/{chat['name']}@prod"
        syncer = Syncer(core, Replica(rep.url, "vllm"), [parse_spec(served)])
        syncer.tick()
        set_alias(live.url, live.alice, "alice", chat["name"], "prod", 2)  # r=8
        with caplog.at_level("WARNING", logger="quiver_vllm.sync"):
            syncer.tick()
            syncer.tick()
        refusals = [r for r in caplog.records if "not loading v2" in r.getMessage()]
        assert len(refusals) == 1 and "rank 8" in refusals[0].getMessage(), [r.getMessage() for r in caplog.records]
        assert rep.adapters[served] == core.cache.adapter_dir(chat["v"][0]["revision"])
        set_alias(live.url, live.alice, "alice", chat["name"], "prod", 3)  # r=4
        syncer.tick()
        assert rep.adapters[served] == core.cache.adapter_dir(chat["v"][2]["revision"])
    finally:
        rep.close()


def test_replica_down_then_up(chat, make_core):
    core = make_core()
    served = f"alice/{chat['name']}@v1"
    syncer = Syncer(core, Replica("http://127.0.0.1:9", "vllm", timeout=2), [parse_spec(served)])
    syncer.tick()  # logged, no exception
    rep = FakeReplica("vllm")
    try:
        syncer.replica = Replica(rep.url, "vllm")
        syncer.tick()
        assert served in rep.adapters
    finally:
        rep.close()


def _daemon(args, live, tmp_path):
    env = dict(os.environ, QUIVER_TOKEN=live.alice, QUIVER_CACHE_DIR=str(tmp_path / "dcache"))
    return subprocess.Popen([sys.executable, "-m", "quiver_vllm.cli", "sync", "--quiver", live.url,
                             *args], env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            text=True)


def test_daemon_polls_and_rolls_out_within_seconds(chat, live, tmp_path):
    """The console script as operators run it (polling every 0.2 s)."""
    rep = FakeReplica("vllm")
    served = f"alice/{chat['name']}@prod"
    p = _daemon(["--replica", rep.url, "--adapter", served, "--interval", "0.2"], live, tmp_path)
    try:
        assert rep.wait_for(lambda: served in rep.adapters, 20), "first sync"
        rev2 = chat["v"][1]["revision"]
        t0 = time.monotonic()
        set_alias(live.url, live.alice, "alice", chat["name"], "prod", 2)
        assert rep.wait_for(lambda: rev2 in rep.adapters.get(served, ""), 10), "alias move"
        print(f"alias move -> replica loaded (polling 0.2s): {(time.monotonic() - t0) * 1000:.0f} ms")
        rep.restart()
        assert rep.wait_for(lambda: rev2 in rep.adapters.get(served, ""), 10), "re-sync"
    finally:
        p.terminate()
        out = p.communicate(timeout=10)[0]
        rep.close()
    assert "loaded in place" in out and "replica lacks it" in out, out


def test_daemon_syncs_at_once_on_a_signed_webhook(chat, live, tmp_path):
    rep = FakeReplica("sglang")
    served = f"alice/{chat['name']}@prod"
    import socket
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    p = _daemon(["--replica", rep.url, "--engine", "sglang", "--adapter", served,
                 "--interval", "600", "--listen", f"127.0.0.1:{port}",
                 "--webhook-secret", "whsec"], live, tmp_path)
    try:
        assert rep.wait_for(lambda: served in rep.adapters, 20), "first sync"
        rev3 = chat["v"][2]["revision"]
        set_alias(live.url, live.alice, "alice", chat["name"], "prod", 3)

        def post(sig):
            body = json.dumps({"id": 1, "type": "alias.moved", "created_at": 0,
                               "adapter": f"alice/{chat['name']}", "owner": "alice",
                               "data": {"alias": "prod", "version": 3}}).encode()
            req = urllib.request.Request(f"http://127.0.0.1:{port}/", data=body, method="POST",
                                         headers={"Quiver-Signature": sig(body)})
            for _ in range(50):
                try:
                    return urllib.request.urlopen(req, timeout=5).status
                except urllib.error.HTTPError as e:
                    return e.code
                except OSError:
                    time.sleep(0.1)  # listener not up yet
            raise AssertionError("webhook listener never came up")

        assert post(lambda b: "t=1,v1=" + "0" * 64) == 401  # bad signature: ignored
        time.sleep(0.5)
        assert rev3 not in rep.adapters[served]
        t0 = time.monotonic()
        assert post(lambda b: sign("whsec", int(time.time()), b)) == 204
        assert rep.wait_for(lambda: rev3 in rep.adapters.get(served, ""), 5), "webhook sync"
        print(f"webhook -> replica loaded: {(time.monotonic() - t0) * 1000:.0f} ms")
    finally:
        p.terminate()
        out = p.communicate(timeout=10)[0]
        rep.close()
    assert re.search(r"unloaded and loaded v3", out), out


def test_daemon_follows_quivers_own_webhooks(chat, live, tmp_path):
    """A real subscription (POST /api/v1/webhooks): Quiver signs and delivers alias.moved to the
    daemon's listener (the server runs with --webhook-allow-private for this loopback target),
    which syncs at once although it polls only every 10 minutes."""
    rep = FakeReplica("vllm")
    served = f"alice/{chat['name']}@prod"
    import socket
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    secret = "quiver-vllm-test-secret-0123"
    p = _daemon(["--replica", rep.url, "--adapter", served, "--interval", "600",
                 "--listen", f"127.0.0.1:{port}", "--webhook-secret", secret], live, tmp_path)
    try:
        assert rep.wait_for(lambda: served in rep.adapters, 20), "first sync"
        try:
            from quiver_seed import api
            api(live.url, "POST", "/api/v1/webhooks", live.alice,
                {"url": f"http://127.0.0.1:{port}/", "adapter": f"alice/{chat['name']}",
                 "events": ["alias.moved"], "secret": secret})
        except urllib.error.HTTPError as e:
            pytest.skip(f"this server has no webhooks for loopback targets: {e.code} {e.read()[:200]}")
        rev2 = chat["v"][1]["revision"]
        t0 = time.monotonic()
        set_alias(live.url, live.alice, "alice", chat["name"], "prod", 2)
        assert rep.wait_for(lambda: rev2 in rep.adapters.get(served, ""), 10), "webhook sync"
        print(f"alias move -> Quiver webhook -> replica loaded: "
              f"{(time.monotonic() - t0) * 1000:.0f} ms")
    finally:
        p.terminate()
        out = p.communicate(timeout=10)[0]
        rep.close()
    assert "webhook: alias.moved of alice/" in out, out
