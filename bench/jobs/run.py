#!/usr/bin/env python3
"""Merge-job benchmarks: the service's overhead over the CLI, and the queue's pickup and throughput.

    bench/jobs/run.py overhead   # 8 Llama-7B-shaped r16 adapters: svd and ties through the API vs `quiver merge`
    bench/jobs/run.py queue      # 1,000 small merges through 2 `quiver worker` processes, per backend

Standard library only (the adapters of `overhead` are written by bench/merge/make_adapters.py,
which needs numpy and safetensors: PY=/path/to/python with both). Everything runs on loopback
with the release binary (QUIVER, default target/release/quiver) in a fresh /tmp directory that is
removed at the end. See bench/jobs/README.md.
"""

import argparse
import hashlib
import json
import os
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
QUIVER = os.environ.get("QUIVER", os.path.join(ROOT, "target/release/quiver"))
PY = os.environ.get("PY", "/tmp/benchvenv/bin/python")
QBENCH = os.environ.get("QBENCH_DIR", "/tmp/qbench")
FIXTURE = os.path.join(ROOT, "tests/fixtures/peft/plain_r8")


def free_port():
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return port


class Service:
    """A data directory with a server and worker processes, all stopped on exit."""

    def __init__(self, workdir, database_url=None, store_url=None, env=None):
        self.dir = workdir
        self.procs = []
        self.storage = ["--data-dir", workdir]
        if database_url:
            self.storage += ["--database-url", database_url]
        if store_url:
            self.storage += ["--store-url", store_url]
        self.env = dict(os.environ, QUIVER_LOG="info", **(env or {}))
        out = subprocess.run([QUIVER, "token", "create", "--user", "bench", "--scope", "write"] + self.storage,
                             check=True, capture_output=True, text=True, env=self.env)
        self.token = out.stdout.strip().splitlines()[-1]
        self.port = free_port()
        self.base = f"http://127.0.0.1:{self.port}"
        self.server = self.start(["serve", "--bind", f"127.0.0.1:{self.port}", "--job-workers", "0"])
        deadline = time.time() + 60
        while True:
            try:
                urllib.request.urlopen(self.base + "/healthz", timeout=2)
                break
            except (urllib.error.URLError, ConnectionError):
                if time.time() > deadline:
                    raise SystemExit("the server did not start; see " + workdir)
                time.sleep(0.1)

    def start(self, args):
        log = open(os.path.join(self.dir, f"proc-{len(self.procs)}.log"), "w")
        p = subprocess.Popen([QUIVER] + args + self.storage, stdout=log, stderr=log, env=self.env)
        self.procs.append(p)
        return p

    def worker(self, slots=1):
        return self.start(["worker", "--job-workers", str(slots)])

    def stop(self, p):
        if p.poll() is None:
            p.send_signal(signal.SIGTERM)
            try:
                p.wait(30)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait()

    def close(self):
        for p in self.procs:
            self.stop(p)

    def call(self, method, path, body=None):
        data = json.dumps(body).encode() if body is not None else None
        req = urllib.request.Request(self.base + path, data=data, method=method)
        req.add_header("Authorization", "Bearer " + self.token)
        if data is not None:
            req.add_header("Content-Type", "application/json")
        try:
            with urllib.request.urlopen(req, timeout=600) as r:
                return r.status, json.loads(r.read() or b"null")
        except urllib.error.HTTPError as e:
            return e.code, json.loads(e.read() or b"null")

    def upload(self, repo, directory, base_model):
        owner, name = repo.split("/")
        status, body = self.call("POST", "/api/v1/adapters", {"owner": owner, "name": name, "base_model": base_model})
        assert status == 201, body
        cmd = ["curl", "-sf", "-H", "Expect:", "-H", "Authorization: Bearer " + self.token]
        for f in sorted(os.listdir(directory)):
            cmd += ["-F", f"file=@{os.path.join(directory, f)};filename={f}"]
        out = subprocess.run(cmd + [f"{self.base}/api/v1/adapters/{repo}/versions"], check=True,
                             capture_output=True, text=True)
        return json.loads(out.stdout)

    def jobs(self):
        items, cursor = [], None
        while True:
            path = "/api/v1/jobs?limit=500" + (f"&cursor={cursor}" if cursor else "")
            status, page = self.call("GET", path)
            assert status == 200, page
            items += page["items"]
            cursor = page["next_cursor"]
            if not cursor:
                return items


def ts(s):
    return datetime.fromisoformat(s.replace("Z", "+00:00")).timestamp() if s else None


def peak_rss_mib(pid):
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    return float("nan")


class EngineWatch:
    """The peak RSS (VmHWM) of the `quiver job-exec` process whose parent is `pid` (a job's engine
    runs in a child process of the worker), read until stopped.

    Cheap on purpose: the engine shares these 2 cores with this script, so /proc is scanned only
    until the engine process appears (twice a second), and after that only its own status file
    is read (every 250 ms). An earlier version scanned all of /proc every 200 ms for the whole
    run and took enough CPU to slow the job's engine by several percent, which the CLI side of
    the comparison (peak from wait4) never paid. VmHWM only grows, so a late read loses at most
    the growth of the engine's last 250 ms."""

    def __init__(self, pid):
        self.pid, self.peak, self.done = pid, 0.0, threading.Event()
        self.thread = threading.Thread(target=self.run, daemon=True)
        self.thread.start()

    def find(self):
        for entry in os.listdir("/proc"):
            if not entry.isdigit():
                continue
            try:
                with open(f"/proc/{entry}/stat") as f:
                    stat = f.read()
                # "pid (comm) state ppid ..."; comm may hold spaces, so split after its ")".
                ppid = int(stat[stat.rindex(")") + 2:].split()[1])
                if ppid != self.pid:
                    continue
                with open(f"/proc/{entry}/cmdline", "rb") as f:
                    if b"job-exec" in f.read().split(b"\0"):
                        return entry
            except (OSError, ValueError):
                continue
        return None

    def run(self):
        engine = None
        while not self.done.is_set():
            if engine is None:
                engine = self.find()
                if engine is None:
                    time.sleep(0.5)
                    continue
            try:
                with open(f"/proc/{engine}/status") as f:
                    for line in f:
                        if line.startswith("VmHWM:"):
                            self.peak = max(self.peak, int(line.split()[1]) / 1024)
            except OSError:
                engine = None  # it ended (a retried job starts another)
            time.sleep(0.25)

    def stop(self):
        self.done.set()
        self.thread.join()
        return self.peak


def pct(values, p):
    values = sorted(values)
    return values[min(len(values) - 1, int(round(p / 100 * (len(values) - 1))))]


def machine():
    load = open("/proc/loadavg").read().split()[:3]
    head = subprocess.run(["git", "-C", ROOT, "rev-parse", "--short", "HEAD"], capture_output=True, text=True).stdout.strip()
    return (f"date {datetime.utcnow():%Y-%m-%d %H:%M} UTC, nproc {os.cpu_count()}, load average {' '.join(load)} at start, "
            f"HEAD {head}, binary {QUIVER} (sha256 {hashlib.sha256(open(QUIVER, 'rb').read()).hexdigest()[:12]})")


# --- overhead -----------------------------------------------------------------------------------

def overhead(args):
    full = os.path.join(QBENCH, "full")
    names = [f"adapter_{i:02d}" for i in range(8)]
    if not os.path.exists(os.path.join(full, names[-1], "adapter_model.safetensors")):
        print(f"writing 8 adapters to {full} with {PY}", file=sys.stderr)
        subprocess.run([PY, os.path.join(ROOT, "bench/merge/make_adapters.py"), full, "--n", "8", "--layers", "32", "--rank", "16"], check=True)
    work = tempfile.mkdtemp(prefix="quiver-bench-jobs-")
    svc = Service(work)
    rows = []
    try:
        print(machine())
        t0 = time.time()
        for n in names:
            svc.upload(f"bench/{n}", os.path.join(full, n), "bench/llama-7b-shapes")
        print(f"uploaded 8 adapters in {time.time() - t0:.1f} s")
        weights = ",".join(["0.125"] * 8)
        print("order:", "API first" if args.api_first else "CLI first")
        all_methods = [("svd", {"rank": 16}), ("ties", {"density": 0.2, "rank": 16})]
        for method, flags in [m for m in all_methods if m[0] in args.methods.split(",")]:
            def run_cli():
                out = os.path.join(work, f"cli-{method}")
                cmd = [QUIVER, "merge", "--method", method, "--weights", weights, "--out", out]
                for k, v in flags.items():
                    cmd += [f"--{k}", str(v)]
                cmd += [os.path.join(full, n) for n in names]
                t = time.monotonic()
                p = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
                _, status, usage = os.wait4(p.pid, 0)
                assert status == 0, f"quiver merge failed: {status}"
                return out, time.monotonic() - t, usage.ru_maxrss / 1024

            def run_api(n_run):
                # On a fresh worker process, so that its VmHWM is this job's.
                w = svc.worker()
                time.sleep(1.0)
                body = dict(method=method, weights=[0.125] * 8, **flags,
                            inputs=[{"adapter": f"bench/{n}"} for n in names],
                            output={"adapter": f"bench/merged-{method}", "create": True})
                # The end is the job's own `finished_at` (written by the worker in the publishing
                # transaction, same clock): polling often enough to time it from here would
                # take CPU from the engine on these 2 cores.
                engine_watch = EngineWatch(w.pid)
                t = time.time()
                status, job = svc.call("POST", "/api/v1/merges", body)
                assert status == 202, job
                while True:
                    status, job = svc.call("GET", f"/api/v1/jobs/{job['id']}")
                    if job["state"] in ("succeeded", "failed", "cancelled"):
                        break
                    time.sleep(1.0)
                api_s = ts(job["finished_at"]) - t
                assert job["state"] == "succeeded", job
                # The worker's own peak and its engine process's (sampled), whichever is larger.
                rss = max(peak_rss_mib(w.pid), engine_watch.stop())
                svc.stop(w)
                return job, api_s, rss

            if args.api_first:
                job, api_s, api_rss = run_api(0)
                out, cli_s, cli_rss = run_cli()
            else:
                out, cli_s, cli_rss = run_cli()
                job, api_s, api_rss = run_api(0)
            # Byte-identical to the CLI's output?
            req = urllib.request.Request(f"{svc.base}/api/v1/adapters/bench/merged-{method}/versions/main/files/adapter_model.safetensors")
            req.add_header("Authorization", "Bearer " + svc.token)
            with urllib.request.urlopen(req) as r:
                api_sha = hashlib.sha256(r.read()).hexdigest()
            cli_sha = hashlib.sha256(open(os.path.join(out, "adapter_model.safetensors"), "rb").read()).hexdigest()
            engine = job["report"]["seconds"]
            cli_engine = json.load(open(os.path.join(out, "merge_report.json")))["seconds"]
            rows.append((method, cli_s, api_s, api_s / cli_s, engine, cli_rss, api_rss, api_sha == cli_sha, cli_engine))
            print(f"{method}: cli {cli_s:.2f} s (engine {cli_engine:.2f} s), api {api_s:.2f} s (engine {engine:.2f} s), "
                  f"ratio {api_s / cli_s:.3f}, outside the engine: cli {cli_s - cli_engine:.2f} s, api {api_s - engine:.2f} s, "
                  f"rss cli {cli_rss:.0f} MiB worker {api_rss:.0f} MiB, identical {api_sha == cli_sha}", flush=True)
        print()
        print("| method | `quiver merge` wall s (engine) | API POST → published s (engine) | ratio | outside the engine: CLI / API s | CLI peak RSS MiB | worker or engine process peak RSS MiB | same bytes | target |")
        print("| --- | ---: | ---: | ---: | ---: | ---: | ---: | --- | --- |")
        for method, cli_s, api_s, ratio, engine, cli_rss, api_rss, same, cli_engine in rows:
            target = "≤ 1.3×" if method == "svd" else "≤ 1.05×"
            print(f"| {method} | {cli_s:.2f} ({cli_engine:.2f}) | {api_s:.2f} ({engine:.2f}) | {ratio:.3f} | "
                  f"{cli_s - cli_engine:.2f} / {api_s - engine:.2f} | {cli_rss:.0f} | {api_rss:.0f} | {same} | {target} |")
    finally:
        svc.close()
        if not args.keep:
            shutil.rmtree(work, ignore_errors=True)


# --- queue --------------------------------------------------------------------------------------

def queue_run(label, database_url, store_url, args):
    work = tempfile.mkdtemp(prefix="quiver-bench-queue-")
    svc = Service(work, database_url, store_url)
    try:
        for n in ("a", "b"):
            svc.upload(f"bench/{n}", FIXTURE, "quiver-test/tiny-llama")
        workers = [svc.worker(args.slots) for _ in range(2)]
        time.sleep(1.0)

        def body(i):
            return {"method": "linear", "inputs": [{"adapter": "bench/a", "weight": 1 + i / 1000}, {"adapter": "bench/b"}],
                    "output": {"adapter": f"bench/out{i % 50}", "create": True}}

        def wait(job_id):
            while True:
                _, job = svc.call("GET", f"/api/v1/jobs/{job_id}")
                if job["state"] in ("succeeded", "failed", "cancelled"):
                    return job
                time.sleep(0.005)

        # Pickup by an idle worker: one job at a time.
        idle = []
        for i in range(args.idle):
            status, job = svc.call("POST", "/api/v1/merges", body(100000 + i))
            assert status == 202, job
            job = wait(job["id"])
            assert job["state"] == "succeeded", job
            idle.append((ts(job["started_at"]) - ts(job["created_at"])) * 1000)
            time.sleep(0.1 + 0.2 * ((i * 7919) % 100) / 100)  # idle workers, at a spread of phases of their poll
        # Throughput: N jobs submitted at once by 8 clients.
        t = time.monotonic()
        with ThreadPoolExecutor(8) as pool:
            submitted = list(pool.map(lambda i: svc.call("POST", "/api/v1/merges", body(i)), range(args.jobs)))
        submit_s = time.monotonic() - t
        ids = {job["id"] for status, job in submitted if status == 202}
        assert len(ids) == args.jobs, [s for s, _ in submitted if s != 202][:5]
        # Wait on /metrics (one GROUP BY), not on the job listing, which would load the server
        # with megabytes of JSON while the workers run; list the jobs once at the end.
        while True:
            with urllib.request.urlopen(svc.base + "/metrics", timeout=30) as r:
                text = r.read().decode()
            active = sum(float(line.rsplit(" ", 1)[1]) for line in text.splitlines()
                         if line.startswith("quiver_jobs{") and ('state="queued"' in line or 'state="running"' in line))
            if active == 0:
                break
            time.sleep(0.25)
        jobs = [j for j in svc.jobs() if j["id"] in ids]
        bad = [j for j in jobs if j["state"] != "succeeded" or j["attempts"] != 1]
        if bad:
            print(f"{label}: {len(bad)} job(s) failed or retried, e.g. {bad[0]['id']} state {bad[0]['state']} "
                  f"attempts {bad[0]['attempts']} error {bad[0]['error']}", file=sys.stderr)
        created = [ts(j["created_at"]) for j in jobs]
        started = [(ts(j["started_at"]) - ts(j["created_at"])) * 1000 for j in jobs]
        finished = [(ts(j["finished_at"]) - ts(j["created_at"])) * 1000 for j in jobs]
        span = max(ts(j["finished_at"]) for j in jobs) - min(created)
        row = dict(backend=label, jobs=len(jobs), jobs_per_s=len(jobs) / span, submit_s=submit_s,
                   idle_p50=pct(idle, 50), idle_p99=pct(idle, 99),
                   start_p50=pct(started, 50), start_p99=pct(started, 99),
                   finish_p50=pct(finished, 50), finish_p99=pct(finished, 99),
                   retried=sum(1 for j in jobs if j["attempts"] != 1),
                   failed=sum(1 for j in jobs if j["state"] != "succeeded"))
        for w in workers:
            svc.stop(w)
        # Where a job's time goes, from the workers' "job succeeded" log lines.
        phases = {k: [] for k in ("stage_s", "engine_s", "store_s", "publish_s")}
        for f in os.listdir(work):
            if f.startswith("proc-"):
                for line in open(os.path.join(work, f)):
                    if "job succeeded" in line:
                        for k in phases:
                            m = line.split(f" {k}=")
                            if len(m) > 1:
                                phases[k].append(float(m[1].split()[0]) * 1000)
        for k, v in phases.items():
            if v:
                row[k.replace("_s", "_ms_mean")] = statistics.mean(v)
        if phases["publish_s"]:
            row["publish_ms_p99"] = pct(phases["publish_s"], 99)
            # Share of the run's wall time during which some worker was publishing (upper bound
            # of what serialised publishes could cost).
            row["publish_share"] = sum(phases["publish_s"]) / 1000 / span / (2 * args.slots)
        print(f"{label}: {json.dumps({k: round(v, 1) if isinstance(v, float) else v for k, v in row.items()})}", flush=True)
        return row
    finally:
        svc.close()
        if args.keep:
            print("kept", work, file=sys.stderr)
        else:
            shutil.rmtree(work, ignore_errors=True)


def queue(args):
    print(machine())
    print(f"2 worker processes x {args.slots} job worker(s)")
    rows = [queue_run("SQLite + files", None, None, args)]
    pg = os.environ.get("QUIVER_BENCH_POSTGRES", "postgres://postgres@127.0.0.1:5432/postgres")
    name = f"quiver_bench_{os.getpid()}"
    base = pg.rsplit("/", 1)[0]
    if subprocess.run(["psql", pg, "-qc", f"CREATE DATABASE {name}"], capture_output=True).returncode == 0:
        try:
            store = os.environ.get("QUIVER_BENCH_S3_URL")  # e.g. s3://bucket/prefix with AWS_* set
            label = "Postgres + " + ("S3 (" + store + ")" if store else "files")
            rows.append(queue_run(label, f"{base}/{name}", store, args))
        finally:
            subprocess.run(["psql", pg, "-qc", f"DROP DATABASE IF EXISTS {name} WITH (FORCE)"], capture_output=True)
    else:
        print("Postgres not reachable at", pg, "- skipped", file=sys.stderr)
    print()
    print("| backend | jobs | jobs/s | idle pickup p50 / p99 ms | submit → start p50 / p99 ms | submit → finish p50 / p99 ms | per job: stage / engine / store / publish ms (mean) | publish p99 ms |")
    print("| --- | ---: | ---: | ---: | ---: | ---: | --- | ---: |")
    for r in rows:
        print(f"| {r['backend']} | {r['jobs']} | {r['jobs_per_s']:.1f} | {r['idle_p50']:.0f} / {r['idle_p99']:.0f} | "
              f"{r['start_p50']:.0f} / {r['start_p99']:.0f} | {r['finish_p50']:.0f} / {r['finish_p99']:.0f} | "
              f"{r.get('stage_ms_mean', 0):.1f} / {r.get('engine_ms_mean', 0):.1f} / {r.get('store_ms_mean', 0):.1f} / {r.get('publish_ms_mean', 0):.1f} | "
              f"{r.get('publish_ms_p99', 0):.1f} |")


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = ap.add_subparsers(dest="what", required=True)
    o = sub.add_parser("overhead")
    o.add_argument("--keep", action="store_true", help="keep the data directory")
    o.add_argument("--methods", default="svd,ties", help="comma-separated: svd, ties")
    o.add_argument("--api-first", action="store_true", help="run the API job before the CLI")
    q = sub.add_parser("queue")
    q.add_argument("--jobs", type=int, default=1000)
    q.add_argument("--idle", type=int, default=50, help="jobs submitted one at a time to idle workers")
    q.add_argument("--keep", action="store_true", help="keep the data directories (logs)")
    q.add_argument("--slots", type=int, default=1, help="job workers in each of the 2 worker processes")
    args = ap.parse_args()
    if not os.access(QUIVER, os.X_OK):
        raise SystemExit(f"no quiver binary at {QUIVER}: cargo build --release -p quiver-api")
    {"overhead": overhead, "queue": queue}[args.what](args)


if __name__ == "__main__":
    main()
