"""Drives bench/authz.sh: seeds two servers alike, then alternates rounds of sequential
keep-alive requests per path between them and prints p50/p90 per side and the p50 ratio."""

import argparse
import http.client
import json
import os
import statistics
import time
import urllib.parse
import uuid


class Server:
    def __init__(self, url, token):
        u = urllib.parse.urlparse(url)
        self.host, self.port, self.token = u.hostname, u.port, token
        self.conn = http.client.HTTPConnection(self.host, self.port, timeout=60)

    def call(self, method, path, body=None, headers=None, auth=True):
        h = dict(headers or {})
        if auth:
            h["Authorization"] = f"Bearer {self.token}"
        for attempt in range(2):
            try:
                self.conn.request(method, path, body=body, headers=h)
                res = self.conn.getresponse()
                data = res.read()
                return res.status, data
            except (http.client.HTTPException, ConnectionError):
                self.conn.close()
                self.conn = http.client.HTTPConnection(self.host, self.port, timeout=60)
                if attempt:
                    raise
        raise RuntimeError("unreachable")

    def json(self, method, path, obj):
        return self.call(method, path, json.dumps(obj), {"Content-Type": "application/json"})


def multipart(files):
    boundary = uuid.uuid4().hex
    parts = []
    for name, data in files:
        parts.append(
            f'--{boundary}\r\nContent-Disposition: form-data; name="file"; filename="{name}"\r\n'
            f"Content-Type: application/octet-stream\r\n\r\n".encode() + data + b"\r\n"
        )
    parts.append(f"--{boundary}--\r\n".encode())
    return b"".join(parts), f"multipart/form-data; boundary={boundary}"


def seed(s, files):
    for i in range(3):
        s.json("POST", "/api/v1/orgs", {"name": f"bench-org-{i}"})  # 404 on a build without them
    for name in ["a", "b", "c"]:
        st, body = s.json(
            "POST",
            "/api/v1/adapters",
            {"owner": "bench", "name": name, "base_model": "quiver-test/tiny-llama", "private": name == "c"},
        )
        assert st == 201, (st, body)
    body, ctype = multipart(files)
    for _ in range(2):
        st, out = s.call("POST", "/api/v1/adapters/bench/a/versions", body, {"Content-Type": ctype})
        assert st == 201, (st, out)


def paths(files):
    body, ctype = multipart(files)
    flip = {"n": 0}

    def alias(s):
        flip["n"] += 1
        return s.json("PUT", "/api/v1/adapters/bench/a/refs/prod", {"version": 1 + flip["n"] % 2})

    def cookie(s):
        return {"Cookie": f"quiver_session={s.token}"}

    return [
        ("list-anon", lambda s: s.call("GET", "/api/v1/adapters?limit=20", auth=False), None),
        ("list-signed-in", lambda s: s.call("GET", "/api/v1/adapters?limit=20"), None),
        ("page-anon", lambda s: s.call("GET", "/bench/a", auth=False), None),
        ("page-signed-in", lambda s: s.call("GET", "/bench/a", headers=cookie(s), auth=False), None),
        ("resolve-small", lambda s: s.call("GET", "/bench/a/resolve/main/adapter_config.json"), None),
        ("alias-move", alias, None),
        ("upload-small", lambda s: s.call("POST", "/api/v1/adapters/bench/b/versions", body, {"Content-Type": ctype}), 4),
    ]


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--before", nargs=2, required=True)
    ap.add_argument("--after", nargs=2, required=True)
    ap.add_argument("--fixture-dir", required=True)
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--requests", type=int, default=200)
    ap.add_argument("--only", default="", help="comma-separated path labels to run (default: all)")
    a = ap.parse_args()
    only = set(filter(None, a.only.split(",")))
    files = [
        (n, open(os.path.join(a.fixture_dir, n), "rb").read())
        for n in ["adapter_config.json", "adapter_model.safetensors"]
    ]
    sides = {"before": Server(*a.before), "after": Server(*a.after)}
    for s in sides.values():
        seed(s, files)
    times = {}
    chosen = [p for p in paths(files) if not only or p[0] in only]
    for label, call, divisor in chosen:
        n = max(10, a.requests // (divisor or 1))
        for s in sides.values():  # warm-up, not recorded
            for _ in range(min(20, n)):
                st, out = call(s)
                assert st < 300, (label, st, out[:200])
        for r in range(a.rounds):
            order = ["before", "after"] if r % 2 == 0 else ["after", "before"]
            for side in order:
                s = sides[side]
                got = times.setdefault((label, side), [])
                for _ in range(n):
                    t = time.perf_counter()
                    st, out = call(s)
                    got.append(time.perf_counter() - t)
                    assert st < 300, (label, side, st, out[:200])
    print(f"{'path':<18} {'before p50':>11} {'after p50':>10} {'before p90':>11} {'after p90':>10} {'p50 after/before':>17}")
    for label, _, _ in chosen:
        b, f = times[(label, "before")], times[(label, "after")]
        q = lambda xs, p: statistics.quantiles(xs, n=100)[p - 1] * 1000
        print(f"{label:<18} {q(b, 50):>9.3f}ms {q(f, 50):>8.3f}ms {q(b, 90):>9.3f}ms {q(f, 90):>8.3f}ms {q(f, 50) / q(b, 50):>17.3f}")


if __name__ == "__main__":
    main()
