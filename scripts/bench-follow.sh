#!/usr/bin/env bash
# bench-follow.sh: what change feeds followed by nodes that hold no replica cost a cluster's
# writes. NODES nodes (5 by default) on loopback, default flags (R = 3, 4 shards, data on the
# voters, --sync always): `redis-benchmark --cluster -t set` (50 clients, 256-byte values,
# REQUESTS requests) ROUNDS times; reported per round: requests/s, and the CPU time of every
# node together (user + system, from /proc) per write; then each node's `cairn_followed_feeds`
# gauge (absent from builds before on-demand following). Run it against two builds, in
# alternation, to compare them:
#
#   scripts/bench-follow.sh BIN [NODES] [REQUESTS] [ROUNDS] [PORT_BASE]
#
# BIN defaults to target/release/cairn. Node i uses RESP PORT_BASE+i, gRPC +100+i and HTTP
# +200+i (PORT_BASE 19000 by default); everything it starts is stopped, and its temporary
# directory removed, on exit. Needs redis-benchmark, curl and jq.
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$(pwd)
# shellcheck source=scripts/lib/cairn-cluster.sh
source "$ROOT/scripts/lib/cairn-cluster.sh"
CAIRN=$(realpath "${1:-$ROOT/target/release/cairn}")
NODES=${2:-5}
REQUESTS=${3:-100000}
ROUNDS=${4:-3}
CAIRN_BASE=${5:-19000}
TMP=$(mktemp -d /tmp/cairn-bench-follow.XXXXXX)
declare -a CAIRN_PIDS=()
cleanup() { finish $? "${CAIRN_PIDS[@]}"; }
on_exit cleanup

for i in $(seq "$NODES"); do start_cairn_node "$i"; done
# Settled: every shard has a leader and three voters, no learners, and every node holds a
# replica (as node 1 sees the map).
settled() {
    cairn_status 1 | jq -e --argjson n "$NODES" '
        (.shards | length > 0 and all(.leader != null and (.replicas | length) == 3
                                      and (.learners | length) == 0))
        and ([.shards[].replicas[]] | unique | length) == ([$n, 3 * (.shards | length)] | min)'
}
wait_for "the cluster to settle" 300 settled
sleep 5
ticks() {
    local total=0 pid
    for pid in "${CAIRN_PIDS[@]}"; do
        total=$((total + $(awk '{print $14 + $15}' "/proc/$pid/stat")))
    done
    echo "$total"
}
HZ=$(getconf CLK_TCK)
bench() {
    redis-benchmark --cluster -p "$(cairn_resp 1)" -t set -c 50 -d 256 -r 100000 -n "$1" -q \
        2>/dev/null | tr '\r' '\n' | awk '/requests per/ {print $2}'
}
bench 20000 >/dev/null
echo "build: $CAIRN; $NODES nodes"
for round in $(seq "$ROUNDS"); do
    c1=$(ticks)
    rps=$(bench "$REQUESTS")
    c2=$(ticks)
    awk -v r="$round" -v rps="$rps" -v n="$REQUESTS" -v hz="$HZ" -v c="$((c2 - c1))" \
        'BEGIN { printf "round %d: %.0f SET/s, %.1f µs CPU per write (all nodes)\n", r, rps, c / hz * 1e6 / n }'
done
for i in $(seq "$NODES"); do
    followed=$(curl -sf "http://127.0.0.1:$(cairn_http "$i")/metrics" \
        | awk '/^cairn_followed_feeds / {print $2}')
    echo "node $i: followed feeds ${followed:-n/a}"
done
