"""Seeding a live Quiver through its native API (stdlib only), for the tests and the benchmark."""

from __future__ import annotations

import hashlib
import json
import struct
import urllib.error
import urllib.request
import uuid

BASE_MODEL = "quiver-test/tiny-llama"


def safetensors(r: int, seed: int, d: int = 16, extra_bytes: int = 0) -> bytes:
    """A PEFT LoRA with rank-r f32 pairs on q_proj and v_proj (d×d); ``extra_bytes`` pads the
    size with one more well-formed pair on o_proj of matching rank."""
    header, chunks, offset = {}, [], 0
    mods = [("q_proj", d), ("v_proj", d)]
    if extra_bytes:
        # one extra module whose d_in grows to reach about extra_bytes
        width = max(d, extra_bytes // (4 * 2 * r))
        mods.append(("o_proj", width))
    for m, width in mods:
        for role, shape in (("lora_A", [r, width]), ("lora_B", [width, r])):
            n = shape[0] * shape[1]
            if n <= 4096:
                vals = [((seed * 7919 + i * 104729 + len(role)) % 1000) / 1000.0 - 0.5
                        for i in range(n)]
                buf = struct.pack(f"<{n}f", *vals)
            else:
                unit = hashlib.sha256(f"{seed}{m}{role}".encode()).digest()
                buf = (unit * (4 * n // len(unit) + 1))[: 4 * n]
            key = f"base_model.model.model.layers.0.self_attn.{m}.{role}.weight"
            header[key] = {"dtype": "F32", "shape": shape,
                           "data_offsets": [offset, offset + len(buf)]}
            chunks.append(buf)
            offset += len(buf)
    h = json.dumps(header).encode()
    h += b" " * ((8 - len(h) % 8) % 8)
    return struct.pack("<Q", len(h)) + h + b"".join(chunks)


def config(r: int, base_model: str = BASE_MODEL, targets=("q_proj", "v_proj"), **extra) -> bytes:
    c = {"peft_type": "LORA", "r": r, "lora_alpha": 2 * r, "target_modules": list(targets),
         "base_model_name_or_path": base_model, "task_type": "CAUSAL_LM"}
    c.update(extra)
    return json.dumps(c).encode()


def api(base: str, method: str, path: str, token=None, body=None, files=None):
    headers = {}
    if token:
        headers["Authorization"] = f"Bearer {token}"
    data = None
    if files is not None:
        boundary = "quiverboundary" + uuid.uuid4().hex[:12]
        parts = []
        for name, content in files.items():
            parts.append(
                f'--{boundary}\r\nContent-Disposition: form-data; name="file"; filename="{name}"\r\n'
                f"Content-Type: application/octet-stream\r\n\r\n".encode() + content + b"\r\n")
        data = b"".join(parts) + f"--{boundary}--\r\n".encode()
        headers["Content-Type"] = f"multipart/form-data; boundary={boundary}"
    elif body is not None:
        data = json.dumps(body).encode()
        headers["Content-Type"] = "application/json"
    req = urllib.request.Request(base + path, data=data, method=method, headers=headers)
    with urllib.request.urlopen(req, timeout=120) as res:
        text = res.read()
        return json.loads(text) if text else None


def create_adapter(base, token, owner, name, private=False, base_model=BASE_MODEL):
    api(base, "POST", "/api/v1/adapters", token,
        {"owner": owner, "name": name, "base_model": base_model, "private": private})


def upload(base, token, owner, name, r=4, seed=1, base_model=BASE_MODEL, extra_bytes=0,
           extra_files=None, **cfg):
    files = {
        "adapter_config.json": config(r, base_model, **cfg),
        "adapter_model.safetensors": safetensors(r, seed, extra_bytes=extra_bytes),
        "README.md": f"---\nlibrary_name: peft\nbase_model: {base_model}\n---\n# {name}\n".encode(),
    }
    files.update(extra_files or {})
    return api(base, "POST", f"/api/v1/adapters/{owner}/{name}/versions", token, files=files)


def set_alias(base, token, owner, name, alias, version):
    api(base, "PUT", f"/api/v1/adapters/{owner}/{name}/refs/{alias}", token, {"version": version})


def unique(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:8]}"
