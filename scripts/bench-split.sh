#!/usr/bin/env bash
# bench-split.sh: how long `cairn cluster split` takes on a shard of KEYS keys, and what it
# does to foreground latency, on loopback.
#
# What it measures, in one run on this machine:
#   1. Preload: KEYS keys of VALUE bytes into a cluster of NODES nodes (1 or 3) created with one
#      shard (--shards 1, so the one shard holds them all), through node 1 (redis-benchmark,
#      32 clients, pipeline 16). Splits by size are off (--split-shard-bytes 0).
#   2. Foreground latency: one redis-py client SETs and GETs random keys (1000 of them, written
#      before the count of keys, which must not change across the split) of 256 bytes through
#      node 1 for PHASE seconds with the cluster idle, and again from just before the split
#      until PHASE seconds after it: p50, p99 and the slowest request, and every error.
#   3. The split: `cairn cluster split 0` (it returns once the shard's leader applied the
#      split: every key of the moving half copied, with its version and deadline, into the new
#      shard's replica, synced); reported: its duration, and the time until every node's
#      replicas applied it (each node builds its own copy of the new shard).
#
# It builds nothing: build first with
#     cargo build --release -p cairn
# then run, from the repository root:
#     scripts/bench-split.sh
# Needs redis-benchmark, redis-cli, curl, jq and a Python with redis-py (default
# target/ci-venv/bin/python; CAIRN_PYTHON to use another). Ports 18701-18703/18801-18803/
# 18901-18903 (RESP/gRPC/HTTP) must be free. Everything it starts is stopped, and its
# temporary directory removed, on exit.
#
# Knobs (environment): KEYS=1000000, VALUE=100 (bytes), NODES=1, PHASE=5, KEEP_DIR=1.

set -euo pipefail

cd "$(dirname "$0")/.."
ROOT=$(pwd)
# shellcheck source=scripts/lib/cairn-cluster.sh
source "$ROOT/scripts/lib/cairn-cluster.sh"
# shellcheck source=scripts/lib/probe.sh
source "$ROOT/scripts/lib/probe.sh"
CAIRN="$ROOT/target/release/cairn"
PYTHON=${CAIRN_PYTHON:-$ROOT/target/ci-venv/bin/python}
KEYS=${KEYS:-1000000}
VALUE=${VALUE:-100}
NODES=${NODES:-1}
PHASE=${PHASE:-5}
CAIRN_BASE=18700
CONVERGE_TIMEOUT=120
export CAIRN_SHARDS=1 CAIRN_SPLIT_SHARD_BYTES=0

[[ -x $CAIRN ]] || die "$CAIRN not found: run 'cargo build --release -p cairn' first"
[[ $NODES == 1 || $NODES == 3 ]] || die "NODES must be 1 or 3"
"$PYTHON" -c 'import redis' 2>/dev/null || die "$PYTHON has no redis-py (pip install redis)"
for tool in redis-benchmark redis-cli curl jq; do
    command -v "$tool" >/dev/null || die "$tool not found"
done

TMP=$(mktemp -d /tmp/bench-split.XXXXXX)
declare -A CAIRN_PIDS=()
cleanup() {
    local status=$?
    [[ -n $PROBE_PID ]] && kill "$PROBE_PID" 2>/dev/null
    finish "$status" "${CAIRN_PIDS[@]}"
}
on_exit cleanup

PROBE_KEYS=1000
probe_write
# Every node's replicas hold both halves: its own /v1/cluster lists two shards.
split_everywhere() {
    local i
    for ((i = 1; i <= NODES; i++)); do
        cairn_status "$i" | jq -e '.shards | length == 2' >/dev/null || return 1
    done
}

# Settled: node 1 sees NODES nodes, and the shard and the metadata group each with a leader
# and NODES voters.
settled() {
    cairn_status 1 | jq -e --argjson n "$NODES" '(.nodes | length) == $n
        and all(.shards[], .metadata; .leader != null and ((.replicas - .learners) | length) == $n)' \
        >/dev/null
}

log "starting $NODES node(s) with one shard"
for ((i = 1; i <= NODES; i++)); do start_cairn_node "$i"; done
wait_for "the cluster to settle" "$CONVERGE_TIMEOUT" settled

log "preloading $KEYS keys of $VALUE bytes"
begin=$(date +%s.%N)
redis-benchmark -p "$(cairn_resp 1)" -t set -n "$((KEYS * 12 / 10))" -r "$((KEYS * 3))" \
    -d "$VALUE" -c 32 -P 16 -q >"$TMP/preload.txt" 2>&1 || die "preload failed: $(cat "$TMP/preload.txt")"
preload_s=$(echo "$(date +%s.%N) - $begin" | bc)
# The probe's keys exist before counting: the key count must not change across the split.
"$PYTHON" -c "import redis, sys; r = redis.Redis(port=int(sys.argv[1]))
for i in range(1000): r.set(f'probe:{i}', b'v' * 256)" "$(cairn_resp 1)"
live_keys=$(redis-cli -p "$(cairn_resp 1)" dbsize)
log "preloaded $live_keys keys in ${preload_s}s"
# The preload's writes are applied everywhere before the clock starts.
sleep 2

log "idle latency for ${PHASE}s"
probe_start idle
sleep "$PHASE"
probe_stop idle

log "splitting shard 0"
probe_start split
sleep 1
begin=$(date +%s.%N)
"$CAIRN" cluster split 0 --json --endpoint "http://127.0.0.1:$(cairn_grpc 1)" >"$TMP/split.json" ||
    die "split failed"
split_s=$(echo "$(date +%s.%N) - $begin" | bc)
wait_for "every node to apply the split" 300 split_everywhere
everywhere_s=$(echo "$(date +%s.%N) - $begin" | bc)
sleep "$PHASE"
probe_stop split
phase_s=$(echo "$split_s + 1 + $PHASE" | bc)
after=$(redis-cli -p "$(cairn_resp 1)" dbsize)
[[ $after == "$live_keys" ]] || die "$live_keys keys before the split, $after after"
moved=$(cairn_status 1 | jq '[.shards[] | select(.id == 1)] | length')
((moved == 1)) || die "no shard 1 after the split"

echo
echo "Data: $live_keys keys of $VALUE bytes in one shard, $NODES node(s) (preloaded in $(printf %.1f "$preload_s") s)."
echo "Split: $(jq -c . "$TMP/split.json"); the CLI returned after $(printf %.2f "$split_s") s; every node had applied it after $(printf %.2f "$everywhere_s") s."
echo "Keys after the split: $after (same as before)."
echo
echo "| phase | seconds | p50 ms | p99 ms | max ms | requests | distinct errors |"
echo "|---|---|---|---|---|---|---|"
probe_row idle "$PHASE"
probe_row split "$(printf %.1f "$phase_s")"
probe_errors idle split
