#!/usr/bin/env python3
"""Compare Cairn with redis-server under redis-benchmark, in one run on one machine.

Starts a release `cairn server` (durable by default; at its default worker-thread count and
with `--worker-threads 1`) and redis-server twice (AOF with
`appendfsync always`, then `everysec`), runs redis-benchmark against each with the same
workload (50 clients, 256-byte values, pipeline 1 and 16; SET, GET, INCR over 100,000 random
keys, MSET of ten keys in one slot), prints a
table of requests/s with Cairn's ratio to each Redis mode, and rewrites the section between
the markers in docs/benchmarks.md.

Each of --runs N runs (default 3) measures every configuration once, interleaved (cairn,
cairn --worker-threads 1, redis always, redis everysec, for each pipeline depth); the table
reports the median req/s per cell and a second table the min-max spread.

With --configs and/or --tests naming a subset (e.g. `--configs cairn --tests set,get,incr`,
for a before/after comparison of one change) it prints the medians and spreads of that subset
and leaves docs/benchmarks.md alone.

With --before BIN another cairn binary (an older build) is measured as config `before` in
the same interleaved runs: a before/after comparison in one run.

Usage: scripts/bench-redis.py [--requests N] [--runs N] [--configs LIST] [--tests LIST]
                              [--no-write] [--before BIN]
"""

import argparse
import csv
import io
import os
import platform
import re
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DOC = os.path.join(ROOT, "docs", "benchmarks.md")
BEGIN = "<!-- bench-redis:begin -->"
END = "<!-- bench-redis:end -->"
TESTS = ["SET", "GET", "INCR", "MSET"]
CLIENTS = 50
VALUE_BYTES = 256
PIPELINES = [1, 16]
KEYSPACE = 100_000


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_port(port, proc, timeout=30):
    deadline = time.time() + timeout
    while time.time() < deadline:
        if proc.poll() is not None:
            sys.exit(f"server exited early with {proc.returncode}")
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
            return
        except OSError:
            time.sleep(0.05)
    sys.exit(f"port {port} never opened")


def bench(port, pipeline, requests):
    """Run redis-benchmark and return {TEST: requests_per_second}.

    SET, GET and INCR pick random keys (-r). MSET runs without -r: its ten keys are then the
    one literal key, so they share a slot, as a multi-key write must in a Redis Cluster (and in
    Cairn, which answers CROSSSLOT otherwise); random keys would span slots.
    """
    rows = {}
    single = [t.lower() for t in TESTS if t != "MSET"]
    runs = []
    if single:
        runs.append(["-r", str(KEYSPACE), "-t", ",".join(single)])
    if "MSET" in TESTS:
        runs.append(["-t", "mset"])
    for args in runs:
        out = subprocess.run(
            ["redis-benchmark", "-p", str(port), "-c", str(CLIENTS), "-d", str(VALUE_BYTES),
             "-P", str(pipeline), "-n", str(requests), *args, "--csv"],
            check=True, capture_output=True, text=True).stdout
        for row in csv.reader(io.StringIO(out)):
            if len(row) >= 2 and row[0] != "test":
                name = row[0].split()[0].upper()
                rows[name] = float(row[1])
    return rows


def run_cairn(binary, pipeline, requests, work, extra_args):
    data = tempfile.mkdtemp(dir=work)
    resp, http, grpc = free_port(), free_port(), free_port()
    proc = subprocess.Popen(
        [binary, "server", "--data-dir", data, "--resp-addr", f"127.0.0.1:{resp}",
         "--http-addr", f"127.0.0.1:{http}", "--grpc-addr", f"127.0.0.1:{grpc}", *extra_args],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        wait_port(resp, proc)
        return bench(resp, pipeline, requests)
    finally:
        proc.terminate()
        proc.wait()
        shutil.rmtree(data, ignore_errors=True)


def run_redis(fsync, pipeline, requests, work):
    data = tempfile.mkdtemp(dir=work)
    port = free_port()
    proc = subprocess.Popen(
        ["redis-server", "--port", str(port), "--bind", "127.0.0.1", "--dir", data,
         "--save", "", "--appendonly", "yes", "--appendfsync", fsync],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        wait_port(port, proc)
        return bench(port, pipeline, requests)
    finally:
        proc.terminate()
        proc.wait()
        shutil.rmtree(data, ignore_errors=True)


def main():
    global TESTS
    ap = argparse.ArgumentParser()
    ap.add_argument("--requests", type=int, default=200_000)
    ap.add_argument("--runs", type=int, default=3, help="interleaved runs; the median is kept")
    ap.add_argument("--configs", default="cairn,cairn1,always,everysec",
                    help="subset of cairn,cairn1,always,everysec")
    ap.add_argument("--tests", default=",".join(TESTS).lower(), help="subset of set,get,incr,mset")
    ap.add_argument("--no-write", action="store_true", help="print only; leave docs alone")
    ap.add_argument("--before", metavar="BIN",
                    help="another cairn binary (e.g. an older build) measured as config 'before' "
                         "in the same interleaved runs, for a before/after comparison")
    args = ap.parse_args()
    configs = args.configs.split(",")
    if args.before:
        configs = ["before"] + [c for c in configs if c != "before"]
    TESTS = [t.upper() for t in args.tests.split(",")]
    subset = configs != ["cairn", "cairn1", "always", "everysec"] or TESTS != [
        "SET", "GET", "INCR", "MSET"]

    subprocess.run(["cargo", "build", "--release", "-p", "cairn"], cwd=ROOT, check=True)
    target = os.environ.get("CARGO_TARGET_DIR", os.path.join(ROOT, "target"))
    binary = os.path.join(target, "release", "cairn")
    redis_version = subprocess.run(["redis-server", "--version"], capture_output=True,
                                   text=True).stdout.split()[2]
    work = tempfile.mkdtemp(prefix="cairn-bench-")
    samples = {}  # (config, pipeline) -> [ {TEST: req/s}, ... ] one per run
    try:
        for run in range(args.runs):
            for p in PIPELINES:
                for key, fn in (
                        ("before", lambda: run_cairn(args.before, p, args.requests, work, [])),
                        ("cairn", lambda: run_cairn(binary, p, args.requests, work, [])),
                        ("cairn1", lambda: run_cairn(binary, p, args.requests, work,
                                                     ["--worker-threads", "1"])),
                        ("always", lambda: run_redis("always", p, args.requests, work)),
                        ("everysec", lambda: run_redis("everysec", p, args.requests, work))):
                    if key not in configs:
                        continue
                    samples.setdefault((key, p), []).append(fn())
            print(f"run {run + 1}/{args.runs} done", file=sys.stderr)
    finally:
        shutil.rmtree(work, ignore_errors=True)

    def cell(key, p, t):
        return [r.get(t, 0.0) for r in samples[(key, p)]]

    results = {k: {t: statistics.median(cell(k[0], k[1], t)) for t in TESTS} for k in samples}
    if subset:
        for (key, p) in samples:
            for t in TESTS:
                v = cell(key, p, t)
                print(f"{key:8} {t:5} P{p:<3} median {statistics.median(v):>10,.0f}  "
                      f"({min(v) / 1000:.0f}k–{max(v) / 1000:.0f}k)")
        return

    lines = [
        f"Run: `scripts/bench-redis.py --requests {args.requests} --runs {args.runs}` on "
        f"{time.strftime('%Y-%m-%d')}; {os.cpu_count()} cores, {platform.machine()}, "
        f"Linux {platform.release()}; redis-server {redis_version}; redis-benchmark "
        f"-c {CLIENTS} -d {VALUE_BYTES} -r {KEYSPACE}; Cairn durable default (every write "
        "fsynced before the reply), once with its default worker threads (one per core) and once "
        "with `--worker-threads 1`. Redis with AOF, `appendfsync always` and `everysec`. "
        f"Median of {args.runs} interleaved runs; spread below.",
        "",
        "| test | pipeline | Cairn req/s | Cairn 1 worker req/s | Redis always req/s "
        "| Redis everysec req/s | Cairn / always | Cairn / everysec "
        "| Cairn 1w / always | Cairn 1w / everysec |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for p in PIPELINES:
        for t in TESTS:
            c = results[("cairn", p)].get(t, 0.0)
            c1 = results[("cairn1", p)].get(t, 0.0)
            a = results[("always", p)].get(t, 0.0)
            e = results[("everysec", p)].get(t, 0.0)
            ratios = " | ".join(f"{x / y:.2f}x" if y else "n/a"
                                for x in (c, c1) for y in (a, e))
            lines.append(f"| {t} | {p} | {c:,.0f} | {c1:,.0f} | {a:,.0f} | {e:,.0f} | {ratios} |")
    lines += [
        "",
        f"Spread (min–max req/s over {args.runs} runs):",
        "",
        "| test | pipeline | Cairn | Cairn 1 worker | Redis always | Redis everysec |",
        "|---|---:|---:|---:|---:|---:|",
    ]

    def k(x):
        return f"{x / 1000:.0f}k"

    for p in PIPELINES:
        for t in TESTS:
            spreads = " | ".join(f"{k(min(cell(c, p, t)))}–{k(max(cell(c, p, t)))}"
                                 for c in ("cairn", "cairn1", "always", "everysec"))
            lines.append(f"| {t} | {p} | {spreads} |")
    table = "\n".join(lines)
    print(table)
    if args.no_write:
        return
    os.makedirs(os.path.dirname(DOC), exist_ok=True)
    doc = open(DOC).read() if os.path.exists(DOC) else "# Benchmarks\n"
    block = f"{BEGIN}\n{table}\n{END}"
    if BEGIN in doc:
        doc = re.sub(re.escape(BEGIN) + ".*?" + re.escape(END), lambda _: block, doc,
                     flags=re.S)
    else:
        doc += f"\n## Server vs redis-server (redis-benchmark)\n\n{block}\n"
    with open(DOC, "w") as f:
        f.write(doc)
    print(f"wrote {DOC}")


if __name__ == "__main__":
    main()
