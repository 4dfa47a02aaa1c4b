#!/usr/bin/env bash
# bench-elastic.sh: a loaded three-node Cairn cluster grows to four nodes, then shrinks back to
# three with `cairn cluster remove-node`, on loopback.
#
# What it measures, in one run on this machine:
#   1. Preload: DATA_MB of 4 KiB values through node 1 (redis-benchmark, 32 clients, pipeline 8).
#   2. Foreground latency: one redis-py client SETs and GETs random keys of 256 bytes through
#      node 1 for PHASE seconds with the cluster idle, again while each change runs, and for
#      PHASE seconds between them with the four nodes settled (what the fourth node costs
#      the two cores, apart from what the moves cost): p50, p99 and the slowest request,
#      SETs and GETs apart, every error it saw, and each node's WAL fsync times.
#   3. Join: node 4 starts with --join; reported: the time until it holds its share (the
#      balancer has given it its share of replicas and leaderships, and every replica it was
#      given holds what its shard's leader had applied when the join began), the MB it then
#      holds (its shards directory) and the rate of that copy. With CAIRN_REPLICAS_EVERYWHERE=1
#      the cluster keeps every shard on every node (--replicas-everywhere): node 4 copies it all.
#   4. Leave: `cairn cluster remove-node` of node 2 (the CLI returns once the map dropped it);
#      reported: its duration.
#
# It builds nothing: build first with
#     cargo build --release -p cairn
# then run, from the repository root:
#     scripts/bench-elastic.sh
# Needs redis-benchmark, curl, jq and a Python with redis-py (default target/ci-venv/bin/python;
# CAIRN_PYTHON to use another). Ports 18901-18904/19001-19004/19101-19104 (RESP/gRPC/HTTP) must
# be free. Everything it starts is stopped, and its temporary directory removed, on exit.
#
# Knobs (environment): DATA_MB=256, PHASE=10 (seconds of idle measurement), SNAPSHOT=1 (SAVE on
# every node before the join: the log behind is purged, so the new node gets snapshots instead
# of the log), KEEP_DIR=1, CAIRN_BIN (the binary to run; default target/release/cairn, e.g. an
# older commit's build to compare against).

set -euo pipefail

cd "$(dirname "$0")/.."
ROOT=$(pwd)
# shellcheck source=scripts/lib/cairn-cluster.sh
source "$ROOT/scripts/lib/cairn-cluster.sh"
# shellcheck source=scripts/lib/probe.sh
source "$ROOT/scripts/lib/probe.sh"
CAIRN=${CAIRN_BIN:-$ROOT/target/release/cairn}
PYTHON=${CAIRN_PYTHON:-$ROOT/target/ci-venv/bin/python}
DATA_MB=${DATA_MB:-256}
PHASE=${PHASE:-10}
CAIRN_BASE=18900
CONVERGE_TIMEOUT=120

[[ -x $CAIRN ]] || die "$CAIRN not found: run 'cargo build --release -p cairn' first"
"$PYTHON" -c 'import redis' 2>/dev/null || die "$PYTHON has no redis-py (pip install redis)"
for tool in redis-benchmark curl jq; do
    command -v "$tool" >/dev/null || die "$tool not found"
done

TMP=$(mktemp -d /tmp/bench-elastic.XXXXXX)
declare -A CAIRN_PIDS=()
cleanup() {
    local status=$?
    [[ -n $PROBE_PID ]] && kill "$PROBE_PID" 2>/dev/null
    finish "$status" "${CAIRN_PIDS[@]}"
}
on_exit cleanup

PROBE_KEYS=100000
probe_write

# The join's progress, from one fetch of node 4's /v1/cluster and one jq each check, every
# half second: the checks run while the probe measures, so they are kept cheap (polling
# node 1 and node 4 with five jq runs every 0.2 s took about a fifth of a core, which the
# idle phase did not pay).
#
# Balanced with node 4: every group has 3 voters and a leader, every shard no learner (unless
# every shard is everywhere: the fourth node's replicas stay learners); node 4 votes in and
# leads a shard; shard replicas and shard leaderships differ by at most one between nodes.
# Caught up: balanced, and every shard node 4 holds a replica of has applied (as its own
# status shows) the commit index node 1 saw when the join began.
EVERYWHERE=false
[[ ${CAIRN_REPLICAS_EVERYWHERE:-0} =~ ^(1|true|yes|on)$ ]] && EVERYWHERE=true
JOIN_JQ='
    def balanced:
        .node_id as $id
        | ([.shards[], .metadata] | all(.leader != null and ((.replicas - .learners) | length) == 3))
        and ($everywhere or (.shards | all((.learners | length) == 0)))
        and any(.shards[]; .leader == $id)
        and ([.shards[].leader] | group_by(.) | map(length) | (max - min) <= 1)
        and ([.nodes[].id] as $all | [.shards[].replicas[]] as $r
            | [$all[] as $n | [$r[] | select(. == $n)] | length] | (max - min) <= 1)
        and (.nodes | length) == 4;
    def caught_up:
        .node_id as $id
        | [.shards[] | select(.replicas | index($id))]
        | (length > 0) and all(.[]; .applied_index >= ($want[.id|tostring] // 0));
'
join_check() {
    local status
    status=$(cairn_status 4) || return 1
    jq -e --argjson want "$WANT" --argjson everywhere "$EVERYWHERE" "$JOIN_JQ $1" \
        <<<"$status" >/dev/null
}
caught_up() { join_check 'balanced and caught_up'; }
balanced() { join_check 'balanced'; }

# fsyncs_mark NAME: saves nodes 1-3's WAL fsync histograms; fsyncs_row FROM TO prints, per
# node, how many fsyncs its WAL made between two marks and their p50 and p99 (the upper
# bound of the histogram bucket each falls in).
fsyncs_mark() {
    local i
    for i in 1 2 3; do
        curl -sf --max-time 2 "http://127.0.0.1:$(cairn_http "$i")/metrics" |
            grep '^cairn_wal_fsync_seconds_bucket' >"$TMP/fsyncs-$1-$i.txt" || true
    done
}
fsyncs_row() {
    local i
    for i in 1 2 3; do
        "$PYTHON" - "$TMP/fsyncs-$1-$i.txt" "$TMP/fsyncs-$2-$i.txt" "$i" <<'PY'
import re, sys
def read(path):
    out = {}
    for line in open(path):
        m = re.search(r'le="([^"]+)"\}\s+(\S+)', line)
        if m:
            out[float(m.group(1))] = float(m.group(2))
    return out
a, b = read(sys.argv[1]), read(sys.argv[2])
les = sorted(b)
delta = [(le, b[le] - a.get(le, 0)) for le in les]
total = delta[-1][1] if delta else 0
def q(p):
    for le, n in delta:
        if total and n >= p * total:
            return "%g ms" % (le * 1000)
    return "-"
print(f"node {sys.argv[3]}: {int(total)} fsyncs, p50 <= {q(0.5)}, p99 <= {q(0.99)}")
PY
    done
}

log "starting three nodes"
start_cairn_cluster

log "preloading $DATA_MB MB"
keys=$((DATA_MB * 256))
begin=$(date +%s.%N)
redis-benchmark -p "$(cairn_resp 1)" -t set -n "$keys" -r "$((keys * 100))" -d 4096 \
    -c 32 -P 8 -q >"$TMP/preload.txt" 2>&1 || die "preload failed: $(cat "$TMP/preload.txt")"
preload_s=$(echo "$(date +%s.%N) - $begin" | bc)
live_keys=$(redis-cli -p "$(cairn_resp 1)" dbsize)
data_mb=$((live_keys * 4096 / 1024 / 1024))
log "preloaded $live_keys keys ($data_mb MB of values) in ${preload_s}s"

if [[ ${SNAPSHOT:-0} == 1 ]]; then
    # Checkpoint every replica and purge the logs behind: the joining node gets snapshots.
    for i in 1 2 3; do redis-cli -p "$(cairn_resp "$i")" save >/dev/null; done
fi

log "idle latency for ${PHASE}s"
fsyncs_mark idle-begin
probe_start idle
sleep "$PHASE"
probe_stop idle
fsyncs_mark idle-end

log "node 4 joins"
WANT=$(cairn_status 1 | jq -c '[.shards[] | {key: (.id|tostring), value: .commit_index}] | from_entries')
fsyncs_mark join-begin
probe_start join
begin=$(date +%s.%N)
start_cairn_node 4
sleep 1
"$CAIRN" cluster status --endpoint "http://127.0.0.1:$(cairn_grpc 1)" |
    sed -n '/^MOVES/,$p' >"$TMP/moves.txt" || true
WAIT_EVERY=0.5 wait_for "node 4 to catch up" 600 caught_up
catchup_s=$(echo "$(date +%s.%N) - $begin" | bc)
WAIT_EVERY=0.5 wait_for "the balancer to give node 4 its share" 300 balanced
join_s=$(echo "$(date +%s.%N) - $begin" | bc)
probe_stop join
fsyncs_mark join-end
log "node 4 caught up in ${catchup_s}s, balanced in ${join_s}s"

held_mb=$(( $(du -sb "$TMP/cairn-4/shards" | cut -f1) / 1024 / 1024 ))
held_shards=$(cairn_status 4 | jq --arg id "$(cairn_status 4 | jq -r .node_id)" \
    '[.shards[] | select(.replicas | index($id))] | length')

log "four nodes settled: latency for ${PHASE}s"
fsyncs_mark settled-begin
probe_start settled
sleep "$PHASE"
probe_stop settled
fsyncs_mark settled-end

log "node 2 leaves"
id2=$(cairn_status 2 | jq -r .node_id)
probe_start leave
begin=$(date +%s.%N)
"$CAIRN" cluster remove-node "$id2" --endpoint "http://127.0.0.1:$(cairn_grpc 1)" \
    >"$TMP/remove.txt" 2>&1 || die "remove-node failed: $(cat "$TMP/remove.txt")"
leave_s=$(echo "$(date +%s.%N) - $begin" | bc)
probe_stop leave
log "node 2 removed in ${leave_s}s"
wait "${CAIRN_PIDS[2]}" 2>/dev/null || true
unset 'CAIRN_PIDS[2]'

rate=$(echo "scale=1; $held_mb / $catchup_s" | bc)
echo
echo "Data: $live_keys keys, $data_mb MB of values (preloaded in ${preload_s}s)."
echo "Join: node 4 held its share ($held_shards shards, $held_mb MB on disk) after $(printf %.1f "$catchup_s") s ($rate MB/s), had its share of votes and leaderships after $(printf %.1f "$join_s") s."
echo "Leave: remove-node of node 2 took $(printf %.1f "$leave_s") s."
echo
echo "cairn cluster status, 1 s into the join:"
cat "$TMP/moves.txt"
echo
echo "| phase | seconds | p50 ms | p99 ms | max ms | requests | distinct errors |"
echo "|---|---|---|---|---|---|---|"
probe_row idle "$PHASE"
probe_row join "$(printf %.1f "$join_s")"
probe_row settled "$PHASE"
probe_row leave "$(printf %.1f "$leave_s")"
probe_errors idle join settled leave
probe_slowest idle join settled leave
probe_by_command idle join settled leave
echo "The join's slow pairs:"
probe_slow join
echo "WAL fsyncs while idle:"
fsyncs_row idle-begin idle-end
echo "WAL fsyncs during the join:"
fsyncs_row join-begin join-end
echo "WAL fsyncs with four nodes settled:"
fsyncs_row settled-begin settled-end
echo
echo "Snapshot transfers (every move's copy, from the senders' logs):"
echo "| shard | to node | MB sent | of MB | seconds | MB/s |"
echo "|---|---|---|---|---|---|"
grep -h "snapshot transfer ended" "$TMP"/cairn-*.log | sed 's/\x1b\[[0-9;]*m//g' |
    awk '{ f = ""; for (i = 1; i <= NF; i++) { split($i, kv, "="); v[kv[1]] = kv[2] }
           printf "| %s | %s | %.1f | %.1f | %.2f | %s |\n", v["group"] == 0 ? "meta" : v["group"] - 1, v["target"],
               v["sent_bytes"] / 1e6, v["total_bytes"] / 1e6, v["elapsed_ms"] / 1000, v["mb_per_sec"] }' || true
