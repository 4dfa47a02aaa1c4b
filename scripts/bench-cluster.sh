#!/usr/bin/env bash
# bench-cluster.sh: a three-node Cairn cluster against a three-master Redis Cluster, on loopback.
#
# What it measures, in one run on this machine:
#   1. Throughput and p50 latency of `redis-benchmark --cluster -t set` and `-t get` (one run
#      each, so that each test gets a request count that lasts a few seconds) at 1, 16, 64 and
#      256 clients, against
#        - Redis Cluster: 3 masters, no replicas, AOF with `appendfsync always`;
#        - Cairn: 3 nodes (`cairn server`, two of them `--join`ing the first), default
#          `--sync always` (every write fsynced on a majority of its shard's 3 replicas).
#      Redis and Cairn alternate (R C, then C R, ... per test and client count) so that drift in
#      the machine does not land on one side only. Same request count for both in each cell.
#   2. Cairn failover: one redis-py client writes one key through a node that survives; the node
#      leading the most shards (one of them the key's) is killed with SIGKILL; reported: the
#      longest gap between two acknowledged writes. Three times (the killed node is restarted
#      on its data directory, and the cluster converges again, between runs), and the median.
#
# It builds nothing: build first with
#     cargo build --release -p cairn
# then run, from the repository root:
#     scripts/bench-cluster.sh
# Needs redis-server, redis-cli, redis-benchmark (Redis 7: --csv has latency columns), curl, jq,
# and a Python with redis-py (default target/ci-venv/bin/python, as .ci/run installs; set
# CAIRN_PYTHON to use another). Ports 18001-18003 (Redis; cluster bus 18051-18053) and
# 18301-18303/18401-18403/18501-18503 (Cairn RESP/gRPC/HTTP) must be free (all below
# Linux's ephemeral range, 32768-60999, so no client socket can hold them). Everything it starts
# is stopped, and its temporary directory removed, on exit (also on failure or Ctrl-C).
#
# Knobs (environment): CLIENTS="1 16 64 256", SET_REQUESTS="2500 20000 40000 60000" and
# GET_REQUESTS="30000 100000 100000 100000" (one per client count), FAILOVER_RUNS=3, KEEP_DIR=1
# (keep the temporary directory: logs, data, redis-benchmark's CSV).

set -euo pipefail

cd "$(dirname "$0")/.."
ROOT=$(pwd)
# shellcheck source=scripts/lib/cairn-cluster.sh
source "$ROOT/scripts/lib/cairn-cluster.sh"
CAIRN="$ROOT/target/release/cairn"
PYTHON=${CAIRN_PYTHON:-$ROOT/target/ci-venv/bin/python}
read -r -a CLIENTS <<<"${CLIENTS:-1 16 64 256}"
read -r -a SET_REQUESTS <<<"${SET_REQUESTS:-2500 20000 40000 60000}"
read -r -a GET_REQUESTS <<<"${GET_REQUESTS:-30000 100000 100000 100000}"
FAILOVER_RUNS=${FAILOVER_RUNS:-3}

REDIS_PORTS=(18001 18002 18003)
CAIRN_BASE=18300 # node i: RESP BASE+i, gRPC BASE+100+i, HTTP BASE+200+i (as `cairn playground`)
CONVERGE_TIMEOUT=120

[[ -x $CAIRN ]] || die "$CAIRN not found: run 'cargo build --release -p cairn' first"
[[ -x $PYTHON ]] || die "$PYTHON not found: set CAIRN_PYTHON to a Python with redis-py"
"$PYTHON" -c 'import redis' 2>/dev/null || die "$PYTHON has no redis-py (pip install redis)"
for tool in redis-server redis-cli redis-benchmark curl jq; do
    command -v "$tool" >/dev/null || die "$tool not found"
done
((${#CLIENTS[@]} == ${#SET_REQUESTS[@]} && ${#CLIENTS[@]} == ${#GET_REQUESTS[@]})) ||
    die "SET_REQUESTS and GET_REQUESTS need one entry per entry of CLIENTS"

# --- cleanup: everything started is recorded here and stopped on exit -------------------------

TMP=$(mktemp -d /tmp/bench-cluster.XXXXXX)
REDIS_PIDS=()
declare -A CAIRN_PIDS=() # node index -> pid

cleanup() {
    finish $? "${REDIS_PIDS[@]}" "${CAIRN_PIDS[@]}"
}
on_exit cleanup

# --- Redis Cluster: 3 masters, no replicas, every write fsynced before the reply ---------------

start_redis_cluster() {
    local port
    for port in "${REDIS_PORTS[@]}"; do
        mkdir -p "$TMP/redis-$port"
        redis-server --port "$port" --bind 127.0.0.1 --cluster-enabled yes \
            --cluster-port $((port + 50)) --cluster-config-file "nodes-$port.conf" \
            --appendonly yes --appendfsync always --save '' --dir "$TMP/redis-$port" \
            --logfile "$TMP/redis-$port.log" &
        REDIS_PIDS+=($!)
    done
    for port in "${REDIS_PORTS[@]}"; do
        wait_for "redis-server on $port" 30 redis-cli -p "$port" ping
    done
    redis-cli --cluster create "${REDIS_PORTS[@]/#/127.0.0.1:}" --cluster-replicas 0 \
        --cluster-yes >"$TMP/redis-cluster-create.log" 2>&1 ||
        die "redis-cli --cluster create failed: $(cat "$TMP/redis-cluster-create.log")"
    for port in "${REDIS_PORTS[@]}"; do
        wait_for "cluster_state:ok on $port" 30 \
            sh -c "redis-cli -p $port cluster info | grep -q '^cluster_state:ok'"
    done
}

# --- Cairn: 3 nodes, node 1 creates the cluster, 2 and 3 join it: scripts/lib/cairn-cluster.sh

# --- throughput: redis-benchmark --cluster ------------------------------------------------------

# bench NAME PORT TEST CLIENTS REQUESTS: one redis-benchmark run, its CSV kept in
# $TMP/NAME-TEST-cCLIENTS.csv.
bench() {
    local name=$1 port=$2 test=$3 clients=$4 requests=$5 out="$TMP/$1-$3-c$4.csv"
    log "redis-benchmark --cluster -t $test against $name, $clients clients, $requests requests"
    if ! redis-benchmark --cluster -h 127.0.0.1 -p "$port" -t "$test" -n "$requests" \
        -c "$clients" --csv >"$out" 2>"$out.err"; then
        echo "bench-cluster: redis-benchmark against $name failed:" >&2
        cat "$out" "$out.err" >&2
        echo "--- redis-cli -p $port cluster nodes:" >&2
        redis-cli -p "$port" cluster nodes >&2 || true
        exit 1
    fi
}

# csv_field FILE TEST COLUMN: a column of one test's row ("rps", "p50_latency_ms", ...).
csv_field() {
    awk -F, -v test="\"$2\"" -v col="\"$3\"" '
        $1 == "\"test\"" { for (i = 1; i <= NF; i++) if ($i == col) c = i }
        $1 == test && c { gsub(/"/, "", $c); print $c }' "$1"
}

# Idle CPU of the Cairn cluster (it runs, idle, while Redis is measured): ticks over 5 s.
cairn_idle_cpu() {
    local before=0 after=0 pid hz
    hz=$(getconf CLK_TCK)
    for pid in "${CAIRN_PIDS[@]}"; do
        before=$((before + $(awk '{print $14 + $15}' "/proc/$pid/stat")))
    done
    sleep 5
    for pid in "${CAIRN_PIDS[@]}"; do
        after=$((after + $(awk '{print $14 + $15}' "/proc/$pid/stat")))
    done
    awk -v t=$((after - before)) -v hz="$hz" 'BEGIN { printf "%.0f", 100 * t / hz / 5 }'
}

# --- failover: one writer through a survivor, the busiest leader killed -------------------------

# The writer: SETs one key through PORT as fast as one connection goes; after WARMUP seconds it
# kills PID (SIGKILL), and stops 5 s after the first acknowledged write that follows the kill
# (at most 60 s). Prints: longest gap between two acknowledged writes (ms), kill to first
# acknowledged write (ms), writes acknowledged, errors, and the distinct error messages.
cat >"$TMP/failover_writer.py" <<'EOF'
import os, signal, sys, time
from collections import Counter
import redis

port, key, pid, warmup = int(sys.argv[1]), sys.argv[2], int(sys.argv[3]), float(sys.argv[4])
client = redis.Redis(port=port, socket_timeout=2, socket_connect_timeout=2)
acks, errors, killed_at, first_after = [], Counter(), None, None
start = time.monotonic()
n = 0
while True:
    now = time.monotonic()
    if killed_at is None and now - start >= warmup:
        os.kill(pid, signal.SIGKILL)
        killed_at = time.monotonic()
    if first_after is not None and now - first_after >= 5 or killed_at and now - killed_at > 60:
        break
    n += 1
    try:
        client.set(key, n)
        t = time.monotonic()
        acks.append(t)
        if killed_at is not None and first_after is None:
            first_after = t
    except redis.RedisError as e:
        errors[f"{type(e).__name__}: {str(e)[:120]}"] += 1
        time.sleep(0.005)
gap = max(b - a for a, b in zip(acks, acks[1:]))
to_first = (first_after - killed_at) * 1000 if first_after else float("nan")
print(f"{gap * 1000:.0f} {to_first:.0f} {len(acks)} {sum(errors.values())} "
      + "; ".join(f"{m} (x{c})" for m, c in errors.most_common()))
EOF

# failover_run OUT: one kill; writes "max_gap_ms kill_to_first_ms acks errors messages..." to
# OUT. Runs in this shell (not a subshell), so that the restarted node's pid is recorded.
failover_run() {
    local out=$1 status victim_id victim=0 survivor i ranges key k slot
    status=$(cairn_status 1)
    victim_id=$(jq -r '[.shards[].leader] | group_by(.) | max_by(length)[0]' <<<"$status")
    for i in 1 2 3; do
        [[ $(cairn_status "$i" | jq -r .node_id) == "$victim_id" ]] && victim=$i
    done
    ((victim > 0)) || die "no running node is $victim_id"
    survivor=$((victim % 3 + 1))
    # A key in a slot of a shard the victim leads (CLUSTER KEYSLOT asked of the survivor).
    ranges=$(jq -r --arg id "$victim_id" \
        '.shards[] | select(.leader == $id) | .slots[] | "\(.start) \(.end)"' <<<"$status")
    key=""
    for k in $(seq 0 1000); do
        slot=$(redis-cli -p "$(cairn_resp "$survivor")" cluster keyslot "failover:$k")
        if awk -v s="$slot" '$1 <= s && s <= $2 { found = 1 } END { exit !found }' <<<"$ranges"
        then
            key="failover:$k" && break
        fi
    done
    [[ -n $key ]] || die "no key found in the slots node $victim leads"
    log "failover: killing node $victim ($(jq -r --arg id "$victim_id" \
        '[.shards[] | select(.leader == $id)] | length' <<<"$status") of $(jq '.shards | length' <<<"$status") shard leaders)," \
        "writing $key (slot $slot) through node $survivor"
    "$PYTHON" "$TMP/failover_writer.py" "$(cairn_resp "$survivor")" "$key" \
        "${CAIRN_PIDS[$victim]}" 2 >"$out"
    wait "${CAIRN_PIDS[$victim]}" 2>/dev/null || true
    log "failover: restarting node $victim on its data directory"
    start_cairn_node "$victim"
    wait_for "the Cairn cluster to converge" "$CONVERGE_TIMEOUT" cairn_converged
}

# --- the run ------------------------------------------------------------------------------------

log "temporary directory $TMP"
log "starting Redis Cluster on ${REDIS_PORTS[*]}"
start_redis_cluster
log "starting Cairn on RESP $(cairn_resp 1)-$(cairn_resp 3)"
start_cairn_cluster
log "both clusters up; Cairn leaders per node: $(cairn_status 1 |
    jq -r '[.shards[].leader] | group_by(.) | map(length) | join("/")')"
{
    echo "--- redis-cli -p ${REDIS_PORTS[0]} cluster nodes"
    redis-cli -p "${REDIS_PORTS[0]}" cluster nodes
    echo "--- redis-cli -p $(cairn_resp 1) cluster nodes"
    redis-cli -p "$(cairn_resp 1)" cluster nodes
} >&2
idle=$(cairn_idle_cpu)
idle_shards=$(cairn_status 1 | jq '.shards | length')
log "Cairn cluster idle CPU: ${idle}% of one core (3 nodes together, over 5 s)"

# Cells in table order; Redis first in even cells, Cairn first in odd ones.
cells=()
for test in set get; do
    for idx in "${!CLIENTS[@]}"; do
        if [[ $test == set ]]; then n=${SET_REQUESTS[idx]}; else n=${GET_REQUESTS[idx]}; fi
        cells+=("$test ${CLIENTS[idx]} $n")
    done
done
for cell in "${!cells[@]}"; do
    read -r test c n <<<"${cells[cell]}"
    if ((cell % 2 == 0)); then
        bench redis "${REDIS_PORTS[0]}" "$test" "$c" "$n"
        bench cairn "$(cairn_resp 1)" "$test" "$c" "$n"
    else
        bench cairn "$(cairn_resp 1)" "$test" "$c" "$n"
        bench redis "${REDIS_PORTS[0]}" "$test" "$c" "$n"
    fi
done

echo
echo "redis-benchmark --cluster -t set|get --csv, one run per cell;" \
    "$(nproc) cores, $(uname -r), $(redis-server --version | awk '{print $3}')," \
    "$(date -u +%Y-%m-%dT%H:%MZ)"
echo
echo "| workload | clients | requests | Redis Cluster req/s | Cairn req/s | Cairn / Redis | Redis p50 ms | Cairn p50 ms |"
echo "|---|---:|---:|---:|---:|---:|---:|---:|"
for cell in "${cells[@]}"; do
    read -r test c n <<<"$cell"
    T=${test^^}
    r=$(csv_field "$TMP/redis-$test-c$c.csv" "$T" rps)
    k=$(csv_field "$TMP/cairn-$test-c$c.csv" "$T" rps)
    rp=$(csv_field "$TMP/redis-$test-c$c.csv" "$T" p50_latency_ms)
    kp=$(csv_field "$TMP/cairn-$test-c$c.csv" "$T" p50_latency_ms)
    awk -v t="$T" -v c="$c" -v n="$n" -v r="$r" -v k="$k" -v rp="$rp" -v kp="$kp" \
        'BEGIN { printf "| %s | %d | %d | %.0f | %.0f | %.2fx | %s | %s |\n",
                 t, c, n, r, k, (r > 0 ? k / r : 0), rp, kp }'
done
echo
echo "Cairn cluster idle CPU (3 nodes, $idle_shards shards each, no load): ${idle}% of one core"

echo
echo "Failover: SIGKILL of the node leading the most shards, one writer through a survivor"
echo
echo "| run | longest gap between acknowledged writes | kill to first acknowledged write | writes | errors | error messages |"
echo "|---:|---:|---:|---:|---:|---|"
gaps=()
for run in $(seq "$FAILOVER_RUNS"); do
    failover_run "$TMP/failover-$run.txt"
    read -r gap first acks errs msgs <"$TMP/failover-$run.txt"
    gaps+=("$gap")
    echo "| $run | $gap ms | $first ms | $acks | $errs | ${msgs:-none} |"
done
median=$(printf '%s\n' "${gaps[@]}" | sort -n | awk '{ v[NR] = $1 }
    END { print (NR % 2 ? v[(NR + 1) / 2] : (v[NR / 2] + v[NR / 2 + 1]) / 2) }')
echo
echo "Median longest gap over $FAILOVER_RUNS runs: $median ms"
