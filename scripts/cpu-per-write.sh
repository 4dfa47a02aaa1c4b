#!/usr/bin/env bash
# Where a one-node server's CPU goes on durable writes: CPU per write, writes per Raft entry,
# entries per WAL fdatasync and the WAL flusher's CPU per fdatasync, from /proc and the
# node's /metrics around a redis-benchmark SET run (50 clients, 256-byte values).
#
#   scripts/cpu-per-write.sh [BIN] [SHARDS] [PORT_BASE] [REQUESTS] [ROUNDS]
#
# BIN defaults to target/release/cairn; a build without the shard metrics (before issue 7)
# reports only requests/s and CPU per write. Uses ports PORT_BASE..PORT_BASE+2 and a fresh
# data directory under /tmp, removed at the end.
set -euo pipefail
BIN=${1:-target/release/cairn}
SHARDS=${2:-4}
PB=${3:-9400}
N=${4:-100000}
ROUNDS=${5:-2}
D=$(mktemp -d /tmp/cairn-cpu-per-write.XXXXXX)
"$BIN" server --data-dir "$D/d" --shards "$SHARDS" --resp-addr "127.0.0.1:$PB" \
    --grpc-addr "127.0.0.1:$((PB + 1))" --http-addr "127.0.0.1:$((PB + 2))" >"$D/log" 2>&1 &
SP=$!
trap 'kill $SP 2>/dev/null; wait $SP 2>/dev/null; rm -rf "$D"' EXIT
for _ in $(seq 100); do redis-cli -p "$PB" ping >/dev/null 2>&1 && break; sleep 0.1; done
redis-benchmark -p "$PB" -t set -c 50 -d 256 -r 100000 -n 20000 -q >/dev/null 2>&1
metrics() { curl -s "localhost:$((PB + 2))/metrics"; }
entries() { metrics | awk '/^cairn_shard_entries_total\{shard="[0-9]/ {s += $2} END {print s + 0}'; }
fsyncs() { metrics | awk '/^cairn_wal_fsync_seconds_count/ {print $2} END {print ""}' | head -1; }
ticks() { awk '{print $14 + $15}' "$1"; }
FLUSHER=""
for t in /proc/$SP/task/*; do grep -q cairn-wal-flush "$t/comm" && FLUSHER=$t/stat && break; done
HZ=$(getconf CLK_TCK)
for round in $(seq "$ROUNDS"); do
    e1=$(entries); f1=$(fsyncs); c1=$(ticks /proc/$SP/stat); g1=$([ -n "$FLUSHER" ] && ticks "$FLUSHER" || echo 0)
    rps=$(redis-benchmark -p "$PB" -t set -c 50 -d 256 -r 100000 -n "$N" -q 2>/dev/null \
        | tr '\r' '\n' | awk '/requests per/ {print $2}')
    c2=$(ticks /proc/$SP/stat); g2=$([ -n "$FLUSHER" ] && ticks "$FLUSHER" || echo 0); e2=$(entries); f2=$(fsyncs)
    python3 - "$SHARDS" "$round" "$rps" "$N" "$HZ" "$c1" "$c2" "$g1" "$g2" "$e1" "$e2" "${f1:-0}" "${f2:-0}" <<'PY'
import sys
sh, rnd, rps, n, hz, c1, c2, g1, g2, e1, e2, f1, f2 = sys.argv[1:]
n, hz = int(n), int(hz)
cpu_us = (float(c2) - float(c1)) / hz * 1e6
out = f"shards={sh} round={rnd} SET/s={float(rps):.0f} cpu_us_per_write={cpu_us / n:.1f}"
e, f = float(e2) - float(e1), float(f2) - float(f1)
if e > 0 and f > 0:
    flusher_us = (float(g2) - float(g1)) / hz * 1e6
    out += (f" writes_per_entry={n / e:.2f} entries_per_fsync={e / f:.2f}"
            f" flusher_cpu_us_per_fsync={flusher_us / f:.0f}"
            f" other_cpu_us_per_entry={(cpu_us - flusher_us) / e:.0f}")
print(out)
PY
done
