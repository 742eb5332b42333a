#!/usr/bin/env python3
"""Contract tests of Quiver's Hugging Face Hub-compatible API with the REAL huggingface_hub client.

Two modes, run by tests/hub/run.sh against a running `quiver serve`:

  contract.py seed BASE ALICE_TOKEN BOB_TOKEN STATE.json   (stdlib only) uploads adapters through
      the native API and writes what the checks expect (sha256s, revisions) to STATE.json;
  contract.py check STATE.json                              (in a venv with huggingface_hub) runs
      every check with the installed client version, HF_ENDPOINT already set by the caller.

Prints one line per check and exits 1 if any failed.
"""

import hashlib
import json
import os
import struct
import sys
import tempfile
import traceback
import urllib.error
import urllib.request

BASE_MODEL = "quiver-test/tiny-llama"


# --- seed (stdlib only) ----------------------------------------------------------------------


def safetensors(r, seed, d=16):
    """A PEFT LoRA: rank-r f32 pairs on d×d q_proj and v_proj."""
    header, chunks, offset = {}, [], 0
    for m in ("q_proj", "v_proj"):
        for role, shape in (("lora_A", [r, d]), ("lora_B", [d, r])):
            n = shape[0] * shape[1]
            vals = [((seed * 7919 + i * 104729 + len(role)) % 1000) / 1000.0 - 0.5 for i in range(n)]
            buf = struct.pack(f"<{n}f", *vals)
            key = f"base_model.model.model.layers.0.self_attn.{m}.{role}.weight"
            header[key] = {"dtype": "F32", "shape": shape, "data_offsets": [offset, offset + len(buf)]}
            chunks.append(buf)
            offset += len(buf)
    h = json.dumps(header).encode()
    h += b" " * ((8 - len(h) % 8) % 8)
    return struct.pack("<Q", len(h)) + h + b"".join(chunks)


def config(r):
    return json.dumps(
        {
            "peft_type": "LORA",
            "r": r,
            "lora_alpha": 2 * r,
            "target_modules": ["q_proj", "v_proj"],
            "base_model_name_or_path": BASE_MODEL,
            "task_type": "CAUSAL_LM",
        }
    ).encode()


def api(base, method, path, token, body=None, files=None):
    headers = {"Authorization": f"Bearer {token}"}
    data = None
    if files is not None:
        boundary = "quiverboundary7d1f"
        parts = []
        for name, content in files.items():
            parts.append(
                f'--{boundary}\r\nContent-Disposition: form-data; name="file"; filename="{name}"\r\n'
                f"Content-Type: application/octet-stream\r\n\r\n".encode()
                + content
                + b"\r\n"
            )
        data = b"".join(parts) + f"--{boundary}--\r\n".encode()
        headers["Content-Type"] = f"multipart/form-data; boundary={boundary}"
    elif body is not None:
        data = json.dumps(body).encode()
        headers["Content-Type"] = "application/json"
    req = urllib.request.Request(base + path, data=data, method=method, headers=headers)
    with urllib.request.urlopen(req) as res:
        text = res.read()
        return json.loads(text) if text else None


def seed(base, alice, bob, state_path):
    state = {"base": base, "alice": alice, "bob": bob, "repos": {}}

    def adapter(token, owner, name, versions, private=False, tags=()):
        api(base, "POST", "/api/v1/adapters", token,
            {"owner": owner, "name": name, "base_model": BASE_MODEL, "private": private, "tags": list(tags)})
        out = []
        for r, s in versions:
            files = {
                "adapter_config.json": config(r),
                "adapter_model.safetensors": safetensors(r, s),
                "README.md": f"---\nlibrary_name: peft\nbase_model: {BASE_MODEL}\n---\n# {name}\n".encode(),
                "extra/notes.txt": f"notes of {name} v{len(out) + 1}\n".encode(),
            }
            v = api(base, "POST", f"/api/v1/adapters/{owner}/{name}/versions", token, files=files)
            out.append({
                "number": v["number"],
                "revision": v["revision"],
                "sha256": {k: hashlib.sha256(c).hexdigest() for k, c in files.items()},
                "size": {k: len(c) for k, c in files.items()},
            })
        state["repos"][f"{owner}/{name}"] = out

    adapter(alice, "alice", "chat-lora", [(4, 1), (8, 2)], tags=["chat"])
    adapter(alice, "alice", "secret-lora", [(4, 3)], private=True)
    adapter(bob, "bob", "code-lora", [(4, 4)], tags=["code"])
    api(base, "PUT", "/api/v1/adapters/alice/chat-lora/refs/prod", alice, {"version": 1})
    with open(state_path, "w") as f:
        json.dump(state, f)


# --- checks (huggingface_hub) ----------------------------------------------------------------

results = []


def check(name):
    def wrap(fn):
        try:
            fn()
            results.append(f"ok   {name}")
        except Exception:  # noqa: BLE001 - every failure is reported with its trace
            results.append(f"FAIL {name}\n{traceback.format_exc()}")
        return fn

    return wrap


def sha256_of(path):
    with open(path, "rb") as f:
        return hashlib.sha256(f.read()).hexdigest()


def run_checks(state_path):
    import huggingface_hub as hh
    from huggingface_hub import HfApi, hf_hub_download, snapshot_download
    from huggingface_hub.utils import EntryNotFoundError, RepositoryNotFoundError, RevisionNotFoundError

    with open(state_path) as f:
        st = json.load(f)
    base = st["base"]
    assert hh.constants.ENDPOINT == base, (hh.constants.ENDPOINT, base)
    chat = st["repos"]["alice/chat-lora"]
    v1, v2 = chat
    W = "adapter_model.safetensors"
    cache = tempfile.mkdtemp(prefix="hfcache-")
    api = HfApi(endpoint=base)
    version = hh.__version__

    @check("hf_hub_download at main, v1, alias, 40-hex: sha256 equal")
    def _():
        for rev, want in (("main", v2), ("v1", v1), ("prod", v1), (v1["revision"], v1), (None, v2)):
            p = hf_hub_download("alice/chat-lora", W, revision=rev, cache_dir=cache)
            assert sha256_of(p) == want["sha256"][W], rev
            assert f"/snapshots/{want['revision']}/" in p, p

    @check("nested path (subfolder) downloads")
    def _():
        p = hf_hub_download("alice/chat-lora", "notes.txt", subfolder="extra", revision="v2", cache_dir=cache)
        assert sha256_of(p) == v2["sha256"]["extra/notes.txt"]

    @check("get_hf_file_metadata: commit, etag, size")
    def _():
        from huggingface_hub import get_hf_file_metadata, hf_hub_url

        m = get_hf_file_metadata(hf_hub_url("alice/chat-lora", W, revision="v1"))
        assert m.commit_hash == v1["revision"], m
        assert m.etag == v1["sha256"][W], m
        assert m.size == v1["size"][W], m
        c = get_hf_file_metadata(hf_hub_url("alice/chat-lora", "adapter_config.json", revision="v1"))
        assert c.size == v1["size"]["adapter_config.json"] and len(c.etag) == 40, c

    @check("resume with Range: 206 with the rest of the file")
    def _():
        url = f"{base}/alice/chat-lora/resolve/v1/{W}"
        req = urllib.request.Request(url, headers={"Range": "bytes=100-"})
        with urllib.request.urlopen(req) as res:
            rest = res.read()
            assert res.status == 206, res.status
            assert res.headers["Content-Range"] == f"bytes 100-{v1['size'][W] - 1}/{v1['size'][W]}"
        with urllib.request.urlopen(url) as res:
            whole = res.read()
        assert whole[100:] == rest and hashlib.sha256(whole).hexdigest() == v1["sha256"][W]
        # The client's own resume: a partial file in the cache's incomplete blob is completed.
        d = tempfile.mkdtemp(prefix="hfresume-")
        blob_dir = os.path.join(d, "models--alice--chat-lora", "blobs")
        os.makedirs(blob_dir)
        with open(os.path.join(blob_dir, v1["sha256"][W] + ".incomplete"), "wb") as f:
            f.write(whole[:100])
        p = hf_hub_download("alice/chat-lora", W, revision="v1", cache_dir=d)
        assert sha256_of(p) == v1["sha256"][W]

    @check("snapshot_download at a version and at an alias")
    def _():
        for rev, want in (("v2", v2), ("prod", v1)):
            d = snapshot_download("alice/chat-lora", revision=rev, cache_dir=cache)
            for name, sha in want["sha256"].items():
                assert sha256_of(os.path.join(d, name)) == sha, (rev, name)
            assert d.rstrip("/").endswith(want["revision"]), d

    @check("model_info with and without files_metadata")
    def _():
        info = api.model_info("alice/chat-lora")
        assert info.sha == v2["revision"] and info.id == "alice/chat-lora", info
        assert info.library_name == "peft" and "peft" in info.tags and "lora" in info.tags, info.tags
        assert f"base_model:adapter:{BASE_MODEL}" in info.tags, info.tags
        assert sorted(s.rfilename for s in info.siblings) == sorted(v2["sha256"]), info.siblings
        full = api.model_info("alice/chat-lora", revision="v1", files_metadata=True)
        assert full.sha == v1["revision"]
        by = {s.rfilename: s for s in full.siblings}
        assert by[W].size == v1["size"][W] and by[W].lfs.sha256 == v1["sha256"][W], by[W]
        assert by["adapter_config.json"].lfs is None and by["adapter_config.json"].size == v1["size"]["adapter_config.json"]

    @check("list_repo_tree recursive: oids, lfs, folders, no xetHash")
    def _():
        entries = list(api.list_repo_tree("alice/chat-lora", revision="v2", recursive=True))
        paths = {e.path: e for e in entries}
        assert "extra" in paths and type(paths["extra"]).__name__ == "RepoFolder", paths
        f = paths[W]
        assert f.lfs is not None and f.lfs.sha256 == v2["sha256"][W] and f.size == v2["size"][W], f
        cfg = paths["adapter_config.json"]
        assert cfg.lfs is None and len(cfg.blob_id) == 40, cfg
        top = {e.path for e in api.list_repo_tree("alice/chat-lora", revision="v2")}
        assert "extra/notes.txt" not in top and "extra" in top, top

    @check("list_models: author, filters, search, sort, limit")
    def _():
        ids = lambda **kw: [m.id for m in api.list_models(**kw)]  # noqa: E731
        assert set(ids(author="alice")) == {"alice/chat-lora"}, ids(author="alice")
        assert set(ids(filter="peft")) == {"alice/chat-lora", "bob/code-lora"}
        assert set(ids(filter=f"base_model:adapter:{BASE_MODEL}")) == {"alice/chat-lora", "bob/code-lora"}
        assert ids(filter="code") == ["bob/code-lora"]
        assert ids(search="chat") == ["alice/chat-lora"]
        assert len(ids(sort="downloads", limit=1)) == 1
        assert set(ids(sort="createdAt")) == {"alice/chat-lora", "bob/code-lora"}
        m = next(iter(api.list_models(search="chat", full=True)))
        assert m.sha == v2["revision"], m

    @check("file_exists true and false")
    def _():
        assert api.file_exists("alice/chat-lora", W)
        assert not api.file_exists("alice/chat-lora", "adapter_model.bin")

    @check("typed 404s: RepositoryNotFound, RevisionNotFound, EntryNotFound")
    def _():
        for repo, rev, fname, exc in (
            ("alice/nope", None, W, RepositoryNotFoundError),
            ("alice/chat-lora", "v9", W, RevisionNotFoundError),
            ("alice/chat-lora", "v1", "nope.json", EntryNotFoundError),
        ):
            try:
                hf_hub_download(repo, fname, revision=rev, cache_dir=tempfile.mkdtemp())
            except exc:
                pass
            else:
                raise AssertionError(f"{repo}@{rev}/{fname}: no {exc.__name__}")

    @check("private adapters: hidden from anonymous and other users, visible to the owner")
    def _():
        secret = st["repos"]["alice/secret-lora"][0]
        for token in (None, st["bob"], "hf_someHubTokenKeptInHF_TOKEN"):
            try:
                HfApi(endpoint=base, token=token).model_info("alice/secret-lora")
            except RepositoryNotFoundError:
                pass
            else:
                raise AssertionError(f"token {token!r} saw the private adapter")
        assert "alice/secret-lora" not in [m.id for m in HfApi(endpoint=base, token=st["bob"]).list_models()]
        owner = HfApi(endpoint=base, token=st["alice"])
        assert owner.model_info("alice/secret-lora").private
        p = hf_hub_download("alice/secret-lora", W, token=st["alice"], cache_dir=tempfile.mkdtemp())
        assert sha256_of(p) == secret["sha256"][W]

    @check("a token Quiver did not issue reads public adapters as anonymous")
    def _():
        other = HfApi(endpoint=base, token="hf_someHubTokenKeptInHF_TOKEN")
        assert other.model_info("alice/chat-lora").sha == v2["revision"]
        p = hf_hub_download("alice/chat-lora", W, token="hf_someHubTokenKeptInHF_TOKEN", cache_dir=tempfile.mkdtemp())
        assert sha256_of(p) == v2["sha256"][W]

    @check("refs, commits, whoami")
    def _():
        refs = api.list_repo_refs("alice/chat-lora")
        assert [(b.name, b.target_commit) for b in refs.branches] == [("main", v2["revision"])], refs
        tags = {t.name: t.target_commit for t in refs.tags}
        assert tags["prod"] == v1["revision"] and tags["v2"] == v2["revision"], tags
        commits = api.list_repo_commits("alice/chat-lora", revision="v2")
        assert [c.commit_id for c in commits] == [v2["revision"], v1["revision"]], commits
        who = HfApi(endpoint=base, token=st["alice"]).whoami()
        assert who["name"] == "alice", who

    # --- writes (HF_HUB_DISABLE_XET=1) ---
    alice = HfApi(endpoint=base, token=st["alice"])
    repo = f"alice/pushed-{version.replace('.', '-')}"

    def native(path):
        req = urllib.request.Request(base + "/api/v1" + path, headers={"Authorization": f"Bearer {st['alice']}"})
        with urllib.request.urlopen(req) as res:
            return json.loads(res.read())

    def folder(r, seed):
        d = tempfile.mkdtemp(prefix="hfpush-")
        files = {"adapter_config.json": config(r), W: safetensors(r, seed), "README.md": b"# pushed\n"}
        for name, content in files.items():
            with open(os.path.join(d, name), "wb") as f:
                f.write(content)
        return d, {k: hashlib.sha256(c).hexdigest() for k, c in files.items()}

    pushed = {}

    @check("create_repo (and exist_ok), upload_folder: a new version with the same bytes")
    def _():
        url = alice.create_repo(repo)
        assert str(url).endswith(repo), url
        alice.create_repo(repo, exist_ok=True)
        # A new repo has no version yet, but its main exists (as on the Hub): a file there is
        # "not found", which is what transformers' push_to_hub expects when it reads README.md.
        try:
            hf_hub_download(repo, "README.md", token=st["alice"], cache_dir=tempfile.mkdtemp())
        except EntryNotFoundError:
            pass
        else:
            raise AssertionError("README.md of an empty repo")
        # Bytes of this client version's own, so its LFS upload really happens.
        d, shas = folder(4, 11 + sum(map(ord, version)))
        info = alice.upload_folder(repo_id=repo, folder_path=d, commit_message="first")
        v = native(f"/adapters/{repo}/versions/main")
        assert v["number"] == 1, v
        got = {f["path"]: f["sha256"] for f in v["files"]}
        assert got == shas, (got, shas)
        oid = getattr(info, "oid", None) or info.split("/")[-1]
        assert oid == v["revision"], (info, v["revision"])
        assert native(f"/adapters/{repo}")["base_model"] == BASE_MODEL
        pushed["v1"] = v

    @check("create_commit: add + delete onto the newest version, unchanged files kept")
    def _():
        from huggingface_hub import CommitOperationAdd, CommitOperationDelete

        new_weights = safetensors(4, 12 + sum(map(ord, version)))
        alice.create_commit(
            repo,
            operations=[
                CommitOperationAdd(path_in_repo=W, path_or_fileobj=new_weights),
                CommitOperationAdd(path_in_repo="docs/extra.md", path_or_fileobj=b"more\n"),
                CommitOperationDelete(path_in_repo="README.md"),
            ],
            commit_message="second",
        )
        v = native(f"/adapters/{repo}/versions/main")
        got = {f["path"]: f["sha256"] for f in v["files"]}
        assert v["number"] == 2 and "README.md" not in got, got
        assert got[W] == hashlib.sha256(new_weights).hexdigest()
        before = {f["path"]: f["sha256"] for f in pushed["v1"]["files"]}
        assert got["adapter_config.json"] == before["adapter_config.json"], "unchanged file not carried over"
        p = hf_hub_download(repo, W, cache_dir=tempfile.mkdtemp(), token=st["alice"])
        assert sha256_of(p) == got[W]

    @check("create_tag: an alias readable as a revision")
    def _():
        alice.create_tag(repo, tag="first", revision=pushed["v1"]["revision"])
        assert api.model_info(repo, revision="first").sha == pushed["v1"]["revision"]

    @check("commits that are not a LoRA adapter, or hold a pickle, are refused and publish nothing")
    def _():
        from huggingface_hub import CommitOperationAdd, CommitOperationDelete
        from huggingface_hub.utils import HfHubHTTPError

        for ops, needle in (
            ([CommitOperationDelete(path_in_repo="adapter_config.json")], "adapter_config.json"),
            ([CommitOperationAdd(path_in_repo="adapter_model.bin", path_or_fileobj=b"\x80\x02pickle")], "pickle"),
            ([CommitOperationAdd(path_in_repo="adapter_config.json", path_or_fileobj=b'{"peft_type": "LOHA"}')], "LOHA"),
        ):
            try:
                alice.create_commit(repo, operations=ops, commit_message="bad")
            except HfHubHTTPError as e:
                assert needle in str(e), str(e)
            else:
                raise AssertionError(f"commit accepted: {ops}")
        assert native(f"/adapters/{repo}/versions/main")["number"] == 2

    @check("paths a downloader would misuse (.GIT/config, .gitmodules, .lfsconfig) are refused: 422 naming them")
    def _():
        from huggingface_hub import CommitOperationAdd
        from huggingface_hub.utils import HfHubHTTPError

        # The client itself refuses `.git/` (in that case only); these it sends.
        for path in (".GIT/config", "sub/.Git/hooks/post-checkout", ".gitmodules", ".lfsconfig", "con.txt"):
            try:
                alice.create_commit(
                    repo,
                    operations=[CommitOperationAdd(path_in_repo=path, path_or_fileobj=b"[core]\n\tfsmonitor = touch pwned\n")],
                    commit_message="plant",
                )
            except HfHubHTTPError as e:
                code = e.response.json()["error"]["code"]
                assert (e.response.status_code, code) == (422, "invalid_file_path"), (path, str(e))
            else:
                raise AssertionError(f"commit of {path} accepted")
        assert native(f"/adapters/{repo}/versions/main")["number"] == 2

    @check("an LFS file's size is the stored object's: inflated, -1 and 10^15 claims are refused")
    def _():
        v = native(f"/adapters/{repo}/versions/main")
        weights = next(f for f in v["files"] if f["path"] == W)
        for claimed in (weights["size"] + 1000, -1, 10**15):
            lines = [
                {"key": "header", "value": {"summary": "inflate"}},
                {"key": "lfsFile", "value": {"path": W, "algo": "sha256", "oid": weights["sha256"], "size": claimed}},
            ]
            req = urllib.request.Request(
                f"{base}/api/models/{repo}/commit/main",
                data="\n".join(json.dumps(x) for x in lines).encode(),
                method="POST",
                headers={"Authorization": f"Bearer {st['alice']}", "Content-Type": "application/x-ndjson"},
            )
            try:
                urllib.request.urlopen(req)
            except urllib.error.HTTPError as e:
                body = json.loads(e.read())
                assert 400 <= e.code < 500 and body["error"]["code"], (e.code, body)
            else:
                raise AssertionError(f"size {claimed} accepted")
        assert native(f"/adapters/{repo}/versions/main")["number"] == 2

    @check("writes need a Quiver write token; xet token routes answer 501 naming HF_HUB_DISABLE_XET")
    def _():
        from huggingface_hub.utils import HfHubHTTPError

        for token in ("hf_someHubTokenKeptInHF_TOKEN", st["bob"]):
            try:
                HfApi(endpoint=base, token=token).create_tag(repo, tag="nope")
            except HfHubHTTPError as e:
                assert e.response.status_code in (401, 403), e.response.status_code
            else:
                raise AssertionError("a write without alice's token succeeded")
        try:
            urllib.request.urlopen(f"{base}/api/models/{repo}/xet-write-token/main")
        except urllib.error.HTTPError as e:
            assert e.code == 501 and "HF_HUB_DISABLE_XET=1" in e.read().decode()
        else:
            raise AssertionError("xet-write-token answered 2xx")

    @check("knowing a private file's sha256 is not enough to commit it into one's own adapter")
    def _():
        secret = st["repos"]["alice/secret-lora"][0]
        lines = [
            {"key": "header", "value": {"summary": "steal"}},
            {"key": "lfsFile", "value": {"path": W, "algo": "sha256", "oid": secret["sha256"][W], "size": secret["size"][W]}},
        ]
        req = urllib.request.Request(
            f"{base}/api/models/bob/code-lora/commit/main",
            data="\n".join(json.dumps(x) for x in lines).encode(),
            method="POST",
            headers={"Authorization": f"Bearer {st['bob']}", "Content-Type": "application/x-ndjson"},
        )
        try:
            urllib.request.urlopen(req)
        except urllib.error.HTTPError as e:
            assert e.code == 422 and "not uploaded for this adapter" in e.read().decode(), e.code
        else:
            raise AssertionError("bob committed alice's private weights by their sha256")

    @check("delete_repo")
    def _():
        alice.delete_repo(repo)
        try:
            api.model_info(repo)
        except RepositoryNotFoundError:
            pass
        else:
            raise AssertionError("deleted repo still there")

    print(f"huggingface_hub {version}")
    print("\n".join(results))
    return 1 if any(r.startswith("FAIL") for r in results) else 0


if __name__ == "__main__":
    if sys.argv[1] == "seed":
        seed(*sys.argv[2:6])
    else:
        sys.exit(run_checks(sys.argv[2]))
