# shellcheck shell=bash
# A three-node Cairn cluster on loopback for the benchmark scripts (sourced by
# scripts/bench-cluster.sh and scripts/bench-etcd.sh, before anything is started, so their
# cleanup can use stop_all).
#
# The sourcing script defines: CAIRN (the binary), CAIRN_BASE (node i: RESP CAIRN_BASE+i, gRPC
# +100+i, HTTP +200+i, as `cairn playground` lays them out), TMP (data directories and logs),
# CONVERGE_TIMEOUT (seconds) and the array CAIRN_PIDS (node index -> pid, filled here).

# die MESSAGE: print it, named after the running script, and exit 1.
die() {
    echo "${0##*/}: $*" >&2
    exit 1
}
# log MESSAGE: a timestamped line on stderr.
log() { echo "[$(date +%H:%M:%S)] $*" >&2; }

# stop_all PID...: SIGTERM to every process, then up to 10 s each to exit before SIGKILL.
stop_all() {
    local pid
    for pid in "$@"; do kill -TERM "$pid" 2>/dev/null || true; done
    for pid in "$@"; do
        for _ in $(seq 100); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
        kill -KILL "$pid" 2>/dev/null || true
        wait "$pid" 2>/dev/null || true
    done
}

# finish STATUS PID...: the end of a run, from its cleanup: stops every PID, removes $TMP
# (kept and named when KEEP_DIR=1) and exits with STATUS.
finish() {
    local status=$1
    shift
    trap - EXIT INT TERM
    stop_all "$@"
    if [[ ${KEEP_DIR:-} == 1 ]]; then
        echo "${0##*/}: kept $TMP" >&2
    else
        rm -rf "$TMP"
    fi
    exit "$status"
}

# on_exit FUNCTION: runs FUNCTION when the script exits, also on Ctrl-C and SIGTERM.
on_exit() {
    # shellcheck disable=SC2064 # the function name is meant to be fixed here
    trap "$1" EXIT
    trap 'exit 130' INT
    trap 'exit 143' TERM
}

# wait_for WHAT SECONDS COMMAND...: runs COMMAND every WAIT_EVERY seconds (0.2 by default)
# until it succeeds.
wait_for() {
    local what=$1 seconds=$2
    shift 2
    local deadline=$((SECONDS + seconds))
    until "$@" >/dev/null 2>&1; do
        ((SECONDS < deadline)) || die "timed out after ${seconds}s waiting for $what"
        sleep "${WAIT_EVERY:-0.2}"
    done
}

cairn_resp() { echo $((CAIRN_BASE + $1)); }
cairn_grpc() { echo $((CAIRN_BASE + 100 + $1)); }
cairn_http() { echo $((CAIRN_BASE + 200 + $1)); }
cairn_status() { curl -sf --max-time 2 "http://127.0.0.1:$(cairn_http "$1")/v1/cluster"; }
# Every node's gRPC endpoint, comma-separated (for `cairn bench --endpoints`).
cairn_endpoints() {
    echo "http://127.0.0.1:$(cairn_grpc 1),http://127.0.0.1:$(cairn_grpc 2),http://127.0.0.1:$(cairn_grpc 3)"
}
listening() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }

# start_cairn_node I: starts node I (node 1 creates the cluster, the others join it; a restart
# on the same data directory rejoins, --join is then ignored) and waits until it answers on
# HTTP and gRPC and listens on RESP.
start_cairn_node() {
    local i=$1 join=()
    ((i == 1)) || join=(--join "127.0.0.1:$(cairn_grpc 1)")
    "$CAIRN" server --data-dir "$TMP/cairn-$i" \
        --resp-addr "127.0.0.1:$(cairn_resp "$i")" \
        --grpc-addr "127.0.0.1:$(cairn_grpc "$i")" \
        --http-addr "127.0.0.1:$(cairn_http "$i")" \
        "${join[@]}" >>"$TMP/cairn-$i.log" 2>&1 &
    # shellcheck disable=SC2034,SC2004 # the caller's array (associative in bench-cluster.sh)
    CAIRN_PIDS[$i]=$!
    wait_for "cairn node $i (HTTP)" 60 cairn_status "$i"
    wait_for "cairn node $i (gRPC)" 60 \
        "$CAIRN" cluster status --endpoint "http://127.0.0.1:$(cairn_grpc "$i")" --json
    wait_for "cairn node $i (RESP)" 60 listening "$(cairn_resp "$i")"
}

# Converged: every node sees every shard with a leader, 3 replicas and no learners, all nodes
# agree on the leaders, and every node leads at least one shard.
cairn_converged() {
    local i views=() ids=()
    for i in 1 2 3; do
        views[i]=$(cairn_status "$i") || return 1
        ids[i]=$(jq -r .node_id <<<"${views[i]}")
    done
    for i in 1 2 3; do
        jq -e '.shards | length > 0 and all(.leader != null and (.replicas | length) == 3
                                            and (.learners | length) == 0)' \
            <<<"${views[i]}" >/dev/null || return 1
        [[ $(jq -c '[.shards[].leader]' <<<"${views[i]}") == \
            "$(jq -c '[.shards[].leader]' <<<"${views[1]}")" ]] || return 1
        jq -e --arg id "${ids[i]}" 'any(.shards[]; .leader == $id)' \
            <<<"${views[1]}" >/dev/null || return 1
    done
}

start_cairn_cluster() {
    local i
    for i in 1 2 3; do start_cairn_node "$i"; done
    wait_for "the Cairn cluster to converge" "$CONVERGE_TIMEOUT" cairn_converged
}
