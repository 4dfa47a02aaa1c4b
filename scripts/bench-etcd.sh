#!/usr/bin/env bash
# bench-etcd.sh: a three-node Cairn cluster against a three-node etcd 3.4 cluster, on loopback.
#
# What it measures, in one run on this machine, with one load generator for both systems
# (`cairn bench --json`; against etcd it speaks etcd's own KV gRPC service, Put and Range):
#   - durable writes (`--read-ratio 0`): etcd fsyncs its WAL before acknowledging (it has no
#     other mode in 3.4); Cairn runs with its default `--sync always` (every write fsynced on a
#     majority of its shard's 3 replicas before the reply);
#   - linearizable reads (`--read-ratio 1`): etcd's default Range (read index through the
#     leader), Cairn's default get (the shard leader, lease checked);
#   - stale reads (`--read-ratio 1 --stale`): etcd's serializable Range, Cairn's stale get (both
#     answered from the receiving member's own replica);
# at 1, 16, 64 and 256 clients: throughput, p50 and p99 latency, Cairn / etcd, and Cairn's
# linearizable / stale read throughput per client count. Also Cairn's write batching during
# the write runs: WAL entries and Raft groups per fdatasync (the `cairn_wal_entries_per_fsync`
# and `cairn_wal_groups_per_fsync` histograms, deltas over each write run, summed over the
# three nodes).
#
# Both systems get the same request count, clients (`-c`), connections (min(clients,
# CONNECTIONS_MAX), spread round-robin over all three members: `--endpoints`), key space and
# value size in each cell. etcd and Cairn alternate (etcd first in even cells, Cairn first in
# odd ones) so that drift in the machine does not land on one side only. Write runs skip the
# preload (the measured writes are then the only writes in the WAL deltas); read runs preload
# KEYS keys first, so every read finds its key. Both clusters stay up during the whole run, the
# idle one beside the measured one.
#
# It builds nothing: build first with
#     cargo build --release -p cairn
# then run, from the repository root:
#     scripts/bench-etcd.sh
# Needs etcd and etcdctl 3.4 (Debian's etcd-server and etcd-client), curl and jq. Ports
# 18601-18603 (etcd clients), 18651-18653 (etcd peers) and 18701-18703/18801-18803/18901-18903
# (Cairn RESP/gRPC/HTTP) must be free (all below Linux's ephemeral range, 32768-60999, so no
# client socket can hold them). Data directories are under /tmp, which must be a real disk for
# the write numbers to mean anything (a warning is printed on tmpfs). Everything it starts is
# stopped, and its temporary directory removed, on exit (also on failure or Ctrl-C).
#
# Knobs (environment), one entry per client count where a list:
#   CLIENTS="1 16 64 256"                  client counts (`cairn bench -c`)
#   WRITE_REQUESTS="1000 10000 20000 30000" requests of each write run
#   READ_REQUESTS="10000 50000 50000 50000" requests of each read run (linearizable and stale)
#   CONNECTIONS_MAX=12                     connections per run: min(clients, CONNECTIONS_MAX)
#   KEYS=1000 VALUE_SIZE=256               key space and value size
#   TIMEOUT_MS=10000                       per-request timeout (`--timeout-ms`), both systems
#   ETCD=etcd ETCDCTL=etcdctl              the etcd binaries
#   KEEP_DIR=1                             keep the temporary directory (logs, data, JSON)

set -euo pipefail

cd "$(dirname "$0")/.."
ROOT=$(pwd)
# shellcheck source=scripts/lib/cairn-cluster.sh
source "$ROOT/scripts/lib/cairn-cluster.sh"
CAIRN="$ROOT/target/release/cairn"
ETCD=${ETCD:-etcd}
ETCDCTL=${ETCDCTL:-etcdctl}
read -r -a CLIENTS <<<"${CLIENTS:-1 16 64 256}"
read -r -a WRITE_REQUESTS <<<"${WRITE_REQUESTS:-1000 10000 20000 30000}"
read -r -a READ_REQUESTS <<<"${READ_REQUESTS:-10000 50000 50000 50000}"
CONNECTIONS_MAX=${CONNECTIONS_MAX:-12}
KEYS=${KEYS:-1000}
VALUE_SIZE=${VALUE_SIZE:-256}
TIMEOUT_MS=${TIMEOUT_MS:-10000}

ETCD_CLIENT_PORTS=(18601 18602 18603)
ETCD_PEER_PORTS=(18651 18652 18653)
CAIRN_BASE=18700 # node i: RESP BASE+i, gRPC BASE+100+i, HTTP BASE+200+i (as `cairn playground`)
CONVERGE_TIMEOUT=120

[[ -x $CAIRN ]] || die "$CAIRN not found: run 'cargo build --release -p cairn' first"
for tool in "$ETCD" "$ETCDCTL" curl jq; do
    command -v "$tool" >/dev/null || die "$tool not found"
done
((${#CLIENTS[@]} > 0)) || die "CLIENTS is empty"
((${#CLIENTS[@]} == ${#WRITE_REQUESTS[@]} && ${#CLIENTS[@]} == ${#READ_REQUESTS[@]})) ||
    die "WRITE_REQUESTS and READ_REQUESTS need one entry per entry of CLIENTS"
for n in "${CLIENTS[@]}" "${WRITE_REQUESTS[@]}" "${READ_REQUESTS[@]}" "$CONNECTIONS_MAX" \
    "$KEYS" "$VALUE_SIZE" "$TIMEOUT_MS"; do
    [[ $n =~ ^[1-9][0-9]*$ ]] || die "not a positive integer: '$n' (check the knobs)"
done

# in_use PORT: something listens on 127.0.0.1:PORT.
in_use() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }
for port in "${ETCD_CLIENT_PORTS[@]}" "${ETCD_PEER_PORTS[@]}" \
    $((CAIRN_BASE + 1)) $((CAIRN_BASE + 2)) $((CAIRN_BASE + 3)) \
    $((CAIRN_BASE + 101)) $((CAIRN_BASE + 102)) $((CAIRN_BASE + 103)) \
    $((CAIRN_BASE + 201)) $((CAIRN_BASE + 202)) $((CAIRN_BASE + 203)); do
    ! in_use "$port" || die "port $port is in use"
done

# --- cleanup: everything started is recorded here and stopped on exit -------------------------

TMP=$(mktemp -d /tmp/bench-etcd.XXXXXX)
ETCD_PIDS=()
CAIRN_PIDS=()
BENCH_PID="" # the `cairn bench` running, if any

cleanup() {
    finish $? "${ETCD_PIDS[@]}" "${CAIRN_PIDS[@]}" ${BENCH_PID:+"$BENCH_PID"}
}
on_exit cleanup

[[ $(stat -f -c %T "$TMP") != tmpfs ]] ||
    log "WARNING: $TMP is on tmpfs: fsync costs nothing there, write numbers are not durable ones"

# --- etcd: 3 members, a static bootstrap ---------------------------------------------------------

etcd_url() { echo "http://127.0.0.1:${ETCD_CLIENT_PORTS[$1 - 1]}"; }
etcd_peer_url() { echo "http://127.0.0.1:${ETCD_PEER_PORTS[$1 - 1]}"; }
ETCD_ENDPOINTS="$(etcd_url 1),$(etcd_url 2),$(etcd_url 3)"

start_etcd_cluster() {
    local i initial=""
    for i in 1 2 3; do initial+="${initial:+,}e$i=$(etcd_peer_url "$i")"; done
    for i in 1 2 3; do
        "$ETCD" --name "e$i" --data-dir "$TMP/etcd-$i" --logger zap \
            --listen-client-urls "$(etcd_url "$i")" --advertise-client-urls "$(etcd_url "$i")" \
            --listen-peer-urls "$(etcd_peer_url "$i")" \
            --initial-advertise-peer-urls "$(etcd_peer_url "$i")" \
            --initial-cluster "$initial" --initial-cluster-state new \
            --initial-cluster-token bench >"$TMP/etcd-$i.log" 2>&1 &
        ETCD_PIDS+=($!)
    done
    # `endpoint health` succeeds only if every endpoint answers a read through a leader.
    wait_for "etcd to be healthy on all three members" "$CONVERGE_TIMEOUT" \
        "$ETCDCTL" --endpoints "$ETCD_ENDPOINTS" --command-timeout 2s endpoint health
}

# The etcd member (e1..e3) that leads, from the members' own status.
etcd_leader() {
    "$ETCDCTL" --endpoints "$ETCD_ENDPOINTS" endpoint status -w json |
        jq -r '(.[] | select(.Status.header.member_id == .Status.leader) | .Endpoint) // "?"'
}

# --- Cairn: 3 nodes, node 1 creates the cluster, 2 and 3 join it: scripts/lib/cairn-cluster.sh

CAIRN_ENDPOINTS=$(cairn_endpoints)

# cairn_wal_totals: "entries_sum fsyncs groups_sum" of the WAL batching histograms, summed over
# the three nodes (each fdatasync records one observation in each histogram).
cairn_wal_totals() {
    local i
    for i in 1 2 3; do
        curl -sf --max-time 5 "http://127.0.0.1:$(cairn_http "$i")/metrics" ||
            die "GET /metrics on Cairn node $i failed"
    done | awk '
        $1 ~ /^cairn_wal_entries_per_fsync_sum(\{.*\})?$/ { entries += $2 }
        $1 ~ /^cairn_wal_entries_per_fsync_count(\{.*\})?$/ { fsyncs += $2 }
        $1 ~ /^cairn_wal_groups_per_fsync_sum(\{.*\})?$/ { groups += $2 }
        END { printf "%.0f %.0f %.0f\n", entries, fsyncs, groups }'
}

# --- the runs -----------------------------------------------------------------------------------

# bench SYSTEM WORKLOAD CLIENTS REQUESTS: one `cairn bench` run, its JSON report kept in
# $TMP/SYSTEM-WORKLOAD-cCLIENTS.json. WORKLOAD: write, read (linearizable) or stale.
bench() {
    local system=$1 workload=$2 clients=$3 requests=$4 out="$TMP/$1-$2-c$3.json" endpoints status
    local connections=$((clients < CONNECTIONS_MAX ? clients : CONNECTIONS_MAX)) flags=()
    case $system in
        etcd) endpoints=$ETCD_ENDPOINTS ;;
        cairn) endpoints=$CAIRN_ENDPOINTS ;;
    esac
    case $workload in
        write) flags=(--read-ratio 0 --no-preload) ;;
        read) flags=(--read-ratio 1) ;;
        stale) flags=(--read-ratio 1 --stale) ;;
    esac
    log "$workload against $system: $clients clients, $connections connections, $requests requests"
    # In the background, waited for: a signal then stops the script at once (bash runs a trap
    # only after a foreground command ends), and cleanup stops the run.
    "$CAIRN" bench --json --target "$system" --endpoints "$endpoints" \
        --timeout-ms "$TIMEOUT_MS" -n "$requests" -c "$clients" --connections "$connections" \
        --keys "$KEYS" --value-size "$VALUE_SIZE" "${flags[@]}" >"$out" 2>"$out.err" &
    BENCH_PID=$!
    status=0
    wait "$BENCH_PID" || status=$?
    BENCH_PID="" # reaped: its pid may be reused
    if ((status != 0)); then
        echo "bench-etcd: cairn bench against $system failed:" >&2
        cat "$out" "$out.err" >&2
        exit 1
    fi
    jq -e . "$out" >/dev/null || die "cairn bench against $system printed no JSON: $(cat "$out")"
}

log "temporary directory $TMP"
log "starting etcd on ${ETCD_CLIENT_PORTS[*]} ($("$ETCD" --version | awk 'NR == 1 { print $3 }'))"
start_etcd_cluster
log "starting Cairn on gRPC $(cairn_grpc 1)-$(cairn_grpc 3)"
start_cairn_cluster
log "both clusters up; etcd leader: $(etcd_leader); Cairn shard leaders per node:" \
    "$(cairn_status 1 | jq -r '[.shards[].leader] | group_by(.) | map(length) | join("/")')"

# Cells in table order; etcd first in even cells, Cairn first in odd ones.
cells=()
for workload in write read stale; do
    for idx in "${!CLIENTS[@]}"; do
        if [[ $workload == write ]]; then n=${WRITE_REQUESTS[idx]}; else n=${READ_REQUESTS[idx]}; fi
        cells+=("$workload ${CLIENTS[idx]} $n")
    done
done
declare -A WAL=() # client count -> "entries fsyncs groups" over Cairn's write run
for cell in "${!cells[@]}"; do
    read -r workload c n <<<"${cells[cell]}"
    order=(etcd cairn)
    ((cell % 2 == 0)) || order=(cairn etcd)
    for system in "${order[@]}"; do
        if [[ $system == cairn && $workload == write ]]; then
            read -r e0 f0 g0 <<<"$(cairn_wal_totals)"
            bench "$system" "$workload" "$c" "$n"
            read -r e1 f1 g1 <<<"$(cairn_wal_totals)"
            WAL[$c]="$((e1 - e0)) $((f1 - f0)) $((g1 - g0))"
        else
            bench "$system" "$workload" "$c" "$n"
        fi
    done
done

# field SYSTEM WORKLOAD CLIENTS JQ: one value of a run's JSON report.
field() { jq -r "$4" "$TMP/$1-$2-c$3.json"; }

echo
echo "cairn bench --json, one run per cell, $KEYS keys, $VALUE_SIZE-byte values," \
    "connections = min(clients, $CONNECTIONS_MAX) over 3 endpoints;" \
    "$(nproc) cores, $(uname -r), etcd $("$ETCD" --version | awk 'NR == 1 { print $3 }')," \
    "$(date -u +%Y-%m-%dT%H:%MZ)"
echo
echo "| workload | clients | requests | etcd ops/s | etcd p50 ms | etcd p99 ms | Cairn ops/s | Cairn p50 ms | Cairn p99 ms | Cairn / etcd | target | errors etcd/Cairn |"
echo "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|---:|"
for cell in "${cells[@]}"; do
    read -r workload c n <<<"$cell"
    case $workload in
        write) name="write (durable)" op=put target=3 ;;
        read) name="read (linearizable)" op=get target=2 ;;
        stale) name="read (stale; etcd serializable)" op=get target="" ;;
    esac
    stats=()
    for system in etcd cairn; do
        stats+=("$(field "$system" "$workload" "$c" \
            "\"\(.ops_per_sec) \(.$op.p50_us) \(.$op.p99_us) \(.errors)\"")")
    done
    awk -v name="$name" -v c="$c" -v n="$n" -v e="${stats[0]}" -v k="${stats[1]}" \
        -v target="$target" 'BEGIN {
            split(e, E, " "); split(k, K, " ")
            ratio = E[1] > 0 ? K[1] / E[1] : 0
            met = target == "" ? "-" : sprintf(">= %dx: %s", target, ratio >= target ? "yes" : "NO")
            printf "| %s | %d | %d | %.0f | %.2f | %.2f | %.0f | %.2f | %.2f | %.2fx | %s | %d/%d |\n",
                   name, c, n, E[1], E[2] / 1000, E[3] / 1000, K[1], K[2] / 1000, K[3] / 1000,
                   ratio, met, E[4], K[4] }'
done

echo
echo "Cairn linearizable / stale reads (target >= 0.9x):"
echo
echo "| clients | linearizable ops/s | stale ops/s | linearizable / stale | target |"
echo "|---:|---:|---:|---:|---|"
for c in "${CLIENTS[@]}"; do
    lin=$(field cairn read "$c" .ops_per_sec)
    stale=$(field cairn stale "$c" .ops_per_sec)
    awk -v c="$c" -v l="$lin" -v s="$stale" 'BEGIN {
        r = s > 0 ? l / s : 0
        printf "| %d | %.0f | %.0f | %.2fx | >= 0.9x: %s |\n", c, l, s, r, (r >= 0.9 ? "yes" : "NO") }'
done

echo
echo "Cairn WAL batching during its write runs (3 nodes together; each write is appended and"
echo "fdatasynced on all 3 replicas of its shard):"
echo
echo "| clients | writes | fdatasyncs | WAL entries / fdatasync | Raft groups / fdatasync |"
echo "|---:|---:|---:|---:|---:|"
total_e=0 total_f=0 total_g=0
for c in "${CLIENTS[@]}"; do
    read -r e f g <<<"${WAL[$c]}"
    total_e=$((total_e + e)) total_f=$((total_f + f)) total_g=$((total_g + g))
    awk -v c="$c" -v w="$(field cairn write "$c" .put.count)" -v e="$e" -v f="$f" -v g="$g" \
        'BEGIN { printf "| %d | %d | %d | %.2f | %.2f |\n", c, w, f,
                 (f > 0 ? e / f : 0), (f > 0 ? g / f : 0) }'
done
awk -v e="$total_e" -v f="$total_f" -v g="$total_g" \
    'BEGIN { printf "| all | | %d | %.2f | %.2f |\n", f, (f > 0 ? e / f : 0), (f > 0 ? g / f : 0) }'
