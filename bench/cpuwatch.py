#!/usr/bin/env python3
"""Samples, once a second, how much CPU the processes that are NOT part of this bench use.

A process is the bench's if it or one of its ancestors is one of the ROOT_PIDs (the bench script)
or was started with QUIVER_BENCH_RUN=<id> in its environment (the bench exports it; a double-forked
daemon keeps it) — /proc/PID/environ shows the environment a process was started with, and nginx,
for one, overwrites it with its process title, hence the ancestry. Kernel threads are skipped. Everything else on the machine (another build, another test run) is "other". Each line written to
stdout is: "<cpu% of one core used by others> <name:cpu%,...>" (top three), e.g. "183 rustc:170,cargo:13".

    cpuwatch.py RUN_ID [ROOT_PID...] > FILE   (runs until killed; descendants of ROOT_PIDs are the bench's)
    CPUWATCH_IGNORE=postgres,...       process names never counted (e.g. the database the bench uses)
    cpuwatch.py --summary FILE [FROM [TO]]   lines FROM..TO (1-based, inclusive) → one summary line
"""

import os
import sys
import time

HZ = os.sysconf("SC_CLK_TCK")
ROOTS: set = set()


def ours(pid: str, run_id: bytes, cache: dict, parents: dict) -> bool:
    if pid in ROOTS:
        return True
    if pid not in cache:
        try:
            with open(f"/proc/{pid}/environ", "rb") as f:
                marked = b"QUIVER_BENCH_RUN=" + run_id in f.read().split(b"\0")
        except OSError:
            marked = False
        ppid = parents.get(pid)
        cache[pid] = marked or (ppid not in (None, "0", "1", pid) and ours(ppid, run_id, cache, parents))
    return cache[pid]


def ticks() -> dict:
    out = {}
    for pid in os.listdir("/proc"):
        if not pid.isdigit():
            continue
        try:
            with open(f"/proc/{pid}/stat") as f:
                raw = f.read()
        except OSError:
            continue
        name = raw[raw.index("(") + 1 : raw.rindex(")")]
        fields = raw[raw.rindex(")") + 2 :].split()
        if int(fields[6]) & 0x00200000:  # PF_KTHREAD: kernel work is mostly ours (loopback, writeback)
            continue
        out[pid] = (name, int(fields[11]) + int(fields[12]), fields[1])  # utime + stime, ppid
    return out


def watch(run_id: str) -> None:
    rid = run_id.encode()
    ignore = {n for n in os.environ.get("CPUWATCH_IGNORE", "").split(",") if n}
    cache: dict = {}
    before = ticks()
    t0 = time.monotonic()
    while True:
        time.sleep(1)
        now = ticks()
        t1 = time.monotonic()
        per_name: dict = {}
        parents = {pid: v[2] for pid, v in now.items()}
        for pid, (name, t, _) in now.items():
            if name in ignore or ours(pid, rid, cache, parents):
                continue
            d = t - before.get(pid, (name, t, None))[1]
            if d > 0:
                per_name[name] = per_name.get(name, 0) + d
        total = sum(per_name.values()) / HZ / (t1 - t0) * 100
        top = sorted(per_name.items(), key=lambda kv: -kv[1])[:3]
        desc = ",".join(f"{n}:{v / HZ / (t1 - t0) * 100:.0f}" for n, v in top) or "-"
        print(f"{total:.0f} {desc}", flush=True)
        for pid in list(cache):
            if pid not in now:
                del cache[pid]
        before, t0 = now, t1


def summary(path: str, start: int = 1, end: int = 0) -> None:
    lines = open(path).read().splitlines()
    lines = lines[start - 1 : end or None]
    if not lines:
        print("no samples")
        return
    vals = [float(line.split()[0]) for line in lines]
    names: dict = {}
    for line in lines:
        for item in line.split()[1].split(","):
            if ":" in item:
                n, v = item.rsplit(":", 1)
                names[n] = names.get(n, 0) + float(v)
    top = sorted(names.items(), key=lambda kv: -kv[1])[:3]
    busy = sum(v >= 20 for v in vals)
    print(
        f"other processes used {sum(vals) / len(vals):.0f}% of a core on average (max {max(vals):.0f}%), "
        f">=20% in {busy} of {len(vals)} s; top: {', '.join(f'{n} {v / len(vals):.0f}%' for n, v in top) or '-'}"
    )


if __name__ == "__main__":
    if sys.argv[1] == "--summary":
        summary(sys.argv[2], *(int(x) for x in sys.argv[3:5]))
    else:
        ROOTS.update(sys.argv[2:])
        ROOTS.add(str(os.getpid()))
        watch(sys.argv[1])
