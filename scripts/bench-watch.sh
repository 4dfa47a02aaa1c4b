#!/usr/bin/env bash
# bench-watch.sh: what watches cost on one node.
#
# For each count of watchers in WATCHERS (default "1 1000 10000"): a fresh Cairn node (release
# build, 4 shards, --sync always), `cairn bench --watchers N` opening N watches on one prefix
# (over ceil(N/800) HTTP/2 connections), holding them idle while this script reads the
# server's resident memory, then putting PUTS distinct 256-byte keys under the prefix with 16
# writers. Prints per row: the server's memory per idle watcher (resident set with N watches
# minus without, over N), the puts' rate, the events delivered per second to all watchers
# together, and the delay from a put's acknowledgement to its event reaching a watcher (p50,
# p99, sampled over 16 watchers).
#
# It builds nothing: `cargo build --release -p cairn` first. From the repository root:
#     scripts/bench-watch.sh
# Knobs: WATCHERS ("1 1000 10000"), PUTS (2000), BIN (target/release/cairn).
set -euo pipefail
BIN=${BIN:-target/release/cairn}
WATCHERS=${WATCHERS:-"1 1000 10000"}
PUTS=${PUTS:-2000}
TMP=$(mktemp -d /tmp/bench-watch.XXXXXX)
PID=
cleanup() {
  [ -n "$PID" ] && kill "$PID" 2>/dev/null || true
  wait 2>/dev/null || true
  rm -rf "$TMP"
}
trap cleanup EXIT
ulimit -n 65536 2>/dev/null || true
rss_kib() { awk '/^VmRSS:/ {print $2}' "/proc/$1/status"; }

printf '%-9s %12s %9s %12s %10s %10s\n' watchers "KiB/watcher" "puts/s" "events/s" "p50 us" "p99 us"
for n in $WATCHERS; do
  rm -rf "$TMP/data"
  "$BIN" server --data-dir "$TMP/data" --grpc-addr 127.0.0.1:19070 --http-addr 127.0.0.1:19080 \
    --resp-addr 127.0.0.1:19379 --max-connections 100000 >"$TMP/server.log" 2>&1 &
  PID=$!
  for _ in $(seq 100); do curl -sf http://127.0.0.1:19080/ready >/dev/null && break; sleep 0.1; done
  sleep 1
  base=$(rss_kib "$PID")
  "$BIN" bench --endpoint http://127.0.0.1:19070 --watchers "$n" --hold-ms 4000 \
    --requests "$PUTS" --concurrency 16 --key-prefix "watch:" --json >"$TMP/out.json" 2>"$TMP/bench.err" &
  bench=$!
  # Sample while the watches are held idle.
  for _ in $(seq 600); do grep -q "idle for" "$TMP/bench.err" 2>/dev/null && break; sleep 0.1; done
  sleep 2
  held=$(rss_kib "$PID")
  wait "$bench"
  per=$(awk -v a="$held" -v b="$base" -v n="$n" 'BEGIN { printf "%.2f", (a - b) / n }')
  python3 - "$TMP/out.json" "$n" "$per" <<'PY'
import json, sys
r = json.load(open(sys.argv[1]))
print(f"{sys.argv[2]:<9} {sys.argv[3]:>12} {r['puts_per_sec']:>9.0f} {r['events_per_sec']:>12.0f} "
      f"{r['delay_p50_us']:>10} {r['delay_p99_us']:>10}")
PY
  kill "$PID"; wait "$PID" 2>/dev/null || true; PID=
done
