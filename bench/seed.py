#!/usr/bin/env python3
"""Seeds a quiver server or an MLflow server with N adapters / registered models for bench/list.sh.

Both get the same catalogue (same names, descriptions, tags, base models), generated from a fixed
seed; exactly 1 in 100 names contains the search term (default "quokka"), nothing else does.

    seed.py quiver --url http://127.0.0.1:8080 --token TOKEN [--n 10000] [--threads 8]
           [--version-every 10] [--fixture-dir tests/fixtures/peft/plain_r8]
    seed.py mlflow --url http://127.0.0.1:5000 [--n 10000] [--threads 8]   (needs the mlflow package)
    seed.py mlflow --url sqlite:////abs/mlflow.db [--n 10000]   (in-process, before the server starts)

The quiver side uses only the standard library: POST /api/v1/adapters for each adapter and, for
1 in --version-every of them, POST .../versions with the two PEFT fixture files. The MLflow side uses
MlflowClient().create_registered_model, either against the server's REST API (an http:// URL) or,
much faster, in-process on the server's SQLite database before the server starts (a sqlite:// URL;
then one thread, as SQLite has one writer).
"""

from __future__ import annotations

import argparse
import http.client
import json
import random
import sys
import threading
import time
import uuid
from concurrent.futures import ThreadPoolExecutor, as_completed
from pathlib import Path
from urllib.parse import urlsplit

OWNERS = [
    "acme-ml", "nlp-lab", "vision-team", "speech-group", "research", "platform", "applied-ai",
    "search-team", "ads-ranking", "safety", "legal-ai", "med-nlp", "finance-ml", "support-bots",
    "code-assist", "translation", "edu-tech", "retail-ai", "gaming-ai", "robotics",
]
DOMAINS = [
    "legal", "medical", "finance", "code", "chat", "support", "math", "science", "news", "poetry",
    "retail", "travel", "sports", "gaming", "biology", "chemistry", "history", "music", "cooking",
    "hr", "insurance", "energy", "telecom", "security", "education",
]
TASKS = [
    "summarize", "classify", "extract", "translate", "qa", "rewrite", "sql", "tool-use", "rerank",
    "sentiment", "ner", "dialog", "critique", "plan", "tagging", "title", "keywords", "simplify",
]
LANGS = ["en", "de", "fr", "es", "ja", "zh", "pt", "it", "ko", "multi"]
BASE_MODELS = [
    "meta-llama/Llama-3.1-8B-Instruct", "mistralai/Mistral-7B-v0.3", "Qwen/Qwen2.5-7B-Instruct",
    "google/gemma-2-9b", "microsoft/Phi-3-mini-4k-instruct",
]
TAGS = [
    "lora", "peft", "instruct", "chat", "long-context", "int8", "fp16", "bf16", "production",
    "experimental", "deprecated", "multilingual", "english", "distilled", "rlhf", "dpo", "sft",
    "small-rank", "high-rank", "rslora", "dora", "eval-passed", "eval-pending", "customer-a",
    "customer-b", "internal", "public-data", "synthetic-data", "v2", "baseline",
]
WORDS = (
    "adapter fine-tuned on curated data for fast accurate robust efficient domain specific tasks "
    "with low rank updates trained using mixed precision evaluated against held out benchmarks "
    "improves quality over the base model reduces latency supports long inputs handles noisy text"
).split()


def catalogue(n: int, term: str, seed: int = 1234) -> list[dict]:
    rng = random.Random(seed)
    items = []
    for i in range(n):
        domain, task, lang = rng.choice(DOMAINS), rng.choice(TASKS), rng.choice(LANGS)
        rank = rng.choice([4, 8, 16, 32, 64])
        if i % 100 == 7:  # exactly 1 % of the names carry the search term
            name = f"{domain}-{term}-{task}-{lang}-r{rank}-{i:05d}"
        else:
            name = f"{domain}-{task}-{lang}-r{rank}-{i:05d}"
        words = " ".join(rng.choice(WORDS) for _ in range(rng.randint(8, 24)))
        description = f"LoRA (r={rank}) for {task} on {domain} text in {lang}: {words}."
        items.append(
            {
                "owner": OWNERS[i % len(OWNERS)],
                "name": name,
                "base_model": rng.choice(BASE_MODELS),
                "description": description,
                "tags": rng.sample(TAGS, rng.randint(1, 4)),
                "private": False,
            }
        )
    assert all(term not in (x["description"] + x["owner"] + x["base_model"]) for x in items)
    return items


class Http:
    """One keep-alive connection per thread."""

    def __init__(self, url: str):
        u = urlsplit(url)
        self.host, self.port = u.hostname, u.port or 80
        self.local = threading.local()

    def request(self, method: str, path: str, body: bytes, headers: dict) -> tuple[int, bytes]:
        for attempt in range(5):
            conn = getattr(self.local, "conn", None)
            if conn is None:
                conn = self.local.conn = http.client.HTTPConnection(self.host, self.port, timeout=120)
            try:
                conn.request(method, path, body=body, headers=headers)
                resp = conn.getresponse()
                return resp.status, resp.read()
            except (ConnectionError, http.client.HTTPException, OSError):
                conn.close()
                self.local.conn = None
                if attempt == 4:
                    raise
                time.sleep(0.2 * (attempt + 1))
        raise AssertionError("unreachable")


def multipart(files: dict[str, bytes]) -> tuple[bytes, str]:
    boundary = "bench-" + uuid.uuid4().hex
    out = bytearray()
    for path, data in files.items():
        out += (
            f"--{boundary}\r\nContent-Disposition: form-data; name=\"file\"; filename=\"{path}\"\r\n"
            "Content-Type: application/octet-stream\r\n\r\n"
        ).encode()
        out += data + b"\r\n"
    out += f"--{boundary}--\r\n".encode()
    return bytes(out), f"multipart/form-data; boundary={boundary}"


def seed_quiver(args) -> int:
    items = catalogue(args.n, args.term)
    http_ = Http(args.url)
    auth = {"Authorization": f"Bearer {args.token}"}
    fixture = Path(args.fixture_dir)
    files = {
        "adapter_config.json": (fixture / "adapter_config.json").read_bytes(),
        "adapter_model.safetensors": (fixture / "adapter_model.safetensors").read_bytes(),
    }
    errors: list[str] = []

    def one(i: int, item: dict) -> int:
        status, body = http_.request(
            "POST", "/api/v1/adapters", json.dumps(item).encode(),
            {**auth, "Content-Type": "application/json"},
        )
        if status not in (201, 409):  # 409: already there from an interrupted earlier run
            errors.append(f"create {item['owner']}/{item['name']}: {status} {body[:300]!r}")
            return 0
        if args.version_every and i % args.version_every == 0:
            body_bytes, ctype = multipart(files)
            status, body = http_.request(
                "POST", f"/api/v1/adapters/{item['owner']}/{item['name']}/versions", body_bytes,
                {**auth, "Content-Type": ctype},
            )
            if status != 201:
                errors.append(f"version {item['owner']}/{item['name']}: {status} {body[:300]!r}")
                return 1
            return 2
        return 1

    return run_pool("quiver", items, one, args.threads, errors)


def seed_mlflow(args) -> int:
    from mlflow import MlflowClient  # noqa: PLC0415 (only this subcommand needs it)
    from mlflow.exceptions import MlflowException  # noqa: PLC0415

    items = catalogue(args.n, args.term)
    client = MlflowClient(tracking_uri=args.url, registry_uri=args.url)
    if args.url.startswith("sqlite:"):
        args.threads = 1
    errors: list[str] = []

    def one(i: int, item: dict) -> int:
        tags = {t: "true" for t in item["tags"]}
        tags["base_model"] = item["base_model"]
        tags["owner"] = item["owner"]
        for attempt in range(5):
            try:
                client.create_registered_model(item["name"], tags=tags, description=item["description"])
                return 1
            except MlflowException as e:
                if "RESOURCE_ALREADY_EXISTS" in str(e.error_code):
                    return 1
                if attempt == 4:
                    errors.append(f"{item['name']}: {e}")
                    return 0
                time.sleep(0.2 * (attempt + 1))
        return 0

    return run_pool("mlflow", items, one, args.threads, errors)


def run_pool(label: str, items: list[dict], fn, threads: int, errors: list[str]) -> int:
    t0 = time.monotonic()
    done = versions = 0
    with ThreadPoolExecutor(threads) as pool:
        futures = [pool.submit(fn, i, item) for i, item in enumerate(items)]
        for k, fut in enumerate(as_completed(futures), 1):
            r = fut.result()
            done += r >= 1
            versions += r == 2
            if k % 1000 == 0:
                print(f"  {label}: {k}/{len(items)} seeded ({time.monotonic() - t0:.0f} s)", flush=True)
    dt = time.monotonic() - t0
    print(
        f"  {label}: seeded {done} of {len(items)} items ({versions} with a version) in {dt:.1f} s "
        f"= {len(items) / dt:.0f} items/s with {threads} threads",
        flush=True,
    )
    for e in errors[:10]:
        print(f"  {label} error: {e}", file=sys.stderr)
    if errors:
        print(f"  {label}: {len(errors)} errors", file=sys.stderr)
    return 1 if errors else 0


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="target", required=True)
    for name in ("quiver", "mlflow"):
        s = sub.add_parser(name)
        s.add_argument("--url", required=True)
        s.add_argument("--n", type=int, default=10000)
        s.add_argument("--threads", type=int, default=8)
        s.add_argument("--term", default="quokka")
        if name == "quiver":
            s.add_argument("--token", required=True)
            s.add_argument("--version-every", type=int, default=10)
            s.add_argument(
                "--fixture-dir",
                default=str(Path(__file__).resolve().parent.parent / "tests/fixtures/peft/plain_r8"),
            )
    args = p.parse_args()
    return seed_quiver(args) if args.target == "quiver" else seed_mlflow(args)


if __name__ == "__main__":
    sys.exit(main())
