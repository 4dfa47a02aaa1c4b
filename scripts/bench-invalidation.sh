#!/usr/bin/env bash
# bench-invalidation.sh: how long after a write is acknowledged a client-side cache hears
# that it changed.
#
# A RESP3 connection with CLIENT TRACKING on reads a key (so it is tracked), another
# connection SETs it, and the first waits for the `invalidate` push; the delay is the time
# from the SET's reply to the push's arrival (both read by one Python process on loopback).
# ROUNDS rounds, each on a fresh key. Three rows: Cairn with reader and writer on one node;
# a three-node Cairn cluster with the reader on node 1 and the writer on node 2; and a
# redis-server (appendfsync always) as the yardstick. p50, p99 and max in milliseconds.
#
# It builds nothing: `cargo build --release -p cairn` first. From the repository root:
#     scripts/bench-invalidation.sh
# Knobs: ROUNDS (2000), BIN (target/release/cairn).
set -euo pipefail
BIN=${BIN:-target/release/cairn}
ROUNDS=${ROUNDS:-2000}
TMP=$(mktemp -d /tmp/bench-inval.XXXXXX)
PIDS=()
cleanup() {
  for pid in "${PIDS[@]:-}"; do kill "$pid" 2>/dev/null || true; done
  wait 2>/dev/null || true
  rm -rf "$TMP"
}
trap cleanup EXIT INT TERM
[ -x "$BIN" ] || { echo "build first: cargo build --release -p cairn" >&2; exit 1; }

start_cairn() {
  local i=$1 join=${2:-}
  local args=(server --data-dir "$TMP/cairn$i" --resp-addr "127.0.0.1:1970$i"
    --grpc-addr "127.0.0.1:1980$i" --http-addr "127.0.0.1:1990$i")
  [ -n "$join" ] && args+=(--join "$join")
  "$BIN" "${args[@]}" >"$TMP/cairn$i.log" 2>&1 &
  PIDS+=($!)
  for _ in $(seq 100); do
    curl -sf "http://127.0.0.1:1990$i/ready" >/dev/null 2>&1 && return
    sleep 0.1
  done
  echo "cairn node $i did not start" >&2; cat "$TMP/cairn$i.log" >&2; exit 1
}

measure() {
  python3 - "$1" "$2" "$ROUNDS" <<'PY'
import socket, sys, time

def conn(port):
    s = socket.create_connection(("127.0.0.1", port))
    s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    return s, s.makefile("rb")

def send(s, *args):
    out = b"*%d\r\n" % len(args)
    for a in args:
        a = a.encode() if isinstance(a, str) else a
        out += b"$%d\r\n%s\r\n" % (len(a), a)
    s.sendall(out)

def frame(f):
    line = f.readline()
    kind, rest = line[:1], line[1:-2]
    if kind in b"+-:_#,":
        return line
    if kind in b"$=":
        n = int(rest)
        return line if n < 0 else f.read(n + 2)
    n = int(rest)
    items = [frame(f) for _ in range(n * (2 if kind == b"%" else 1))]
    return (kind, items)

reader_port, writer_port, rounds = int(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3])
r, rf = conn(reader_port)
w, wf = conn(writer_port)
send(r, "HELLO", "3"); frame(rf)
send(r, "CLIENT", "TRACKING", "on"); frame(rf)
delays = []
for i in range(rounds):
    key = f"inval:{i}"
    send(r, "GET", key); frame(rf)
    send(w, "SET", key, "v"); frame(wf)
    acked = time.perf_counter()
    push = frame(rf)
    assert push[0] == b">", push
    delays.append((time.perf_counter() - acked) * 1000)
delays.sort()
q = lambda p: delays[min(len(delays) - 1, int(p * len(delays)))]
print(f"{q(0.5):8.3f} {q(0.99):8.3f} {delays[-1]:8.3f}")
PY
}

printf '%-34s %8s %8s %8s\n' setup "p50 ms" "p99 ms" "max ms"
start_cairn 1
printf '%-34s %s\n' "cairn, one node" "$(measure 19701 19701)"
for i in 2 3; do start_cairn "$i" 127.0.0.1:19801; done
for _ in $(seq 300); do
  ready=$(curl -s http://127.0.0.1:19901/v1/cluster | python3 -c '
import json, sys
c = json.load(sys.stdin)
print(all(s.get("leader") and len(s.get("replicas", [])) == 3 and not s.get("learners") for s in c["shards"]) and len(c["nodes"]) == 3)')
  [ "$ready" = True ] && break
  sleep 0.2
done
printf '%-34s %s\n' "cairn, 3 nodes, writer on another" "$(measure 19701 19702)"
redis-server --port 19379 --save '' --appendonly yes --appendfsync always --dir "$TMP" \
  --daemonize no >"$TMP/redis.log" 2>&1 &
PIDS+=($!)
for _ in $(seq 50); do redis-cli -p 19379 ping >/dev/null 2>&1 && break; sleep 0.1; done
printf '%-34s %s\n' "redis-server (appendfsync always)" "$(measure 19379 19379)"
