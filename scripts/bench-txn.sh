#!/usr/bin/env bash
# bench-txn.sh: what cross-shard transactions cost, against single-shard writes and a Redis.
#
# On one Cairn node (4 shards, --sync always, the default) and one redis-server (appendonly
# yes, appendfsync always: as durable as Cairn), with redis-benchmark and the same workload
# for both, alternating which server runs first in each cell:
#   - SET of one random key (the baseline);
#   - MSET of 2, 4 and 8 random keys in one slot (a hash tag: one shard, one Raft entry);
#   - MSET of 2, 4 and 8 random keys without a tag (spread over the shards: a cross-shard
#     transaction each; on Redis the same command);
#   - MULTI / SET / SET / EXEC over two random keys of different shards, and of one slot
#     (scripts/bench-multi.py: raw pipelined RESP from several processes).
# Prints one line per cell: requests/s for Cairn and Redis and the ratio.
#
# With NODES=3 it benchmarks a three-node Cairn cluster (`cairn playground`-like, on ports
# 19701-19703) against the same single Redis, with redis-benchmark spread over all three
# nodes (one process per node, the sum of their rates), and against a Redis Cluster of as
# many masters (ports 19391-1939N, appendfsync always, no replicas: each write is fsynced
# on one node, where Cairn's are on a majority), driven by `redis-benchmark --cluster`.
# Redis Cluster refuses commands whose keys span slots (CROSSSLOT), so only the SET and
# one-slot rows have a Redis Cluster figure: the one-slot rows go to the master owning the
# slot (as Cairn's go to one shard), SET over random keys to all masters (--cluster).
#
# It builds nothing: `cargo build --release -p cairn` first. From the repository root:
#     scripts/bench-txn.sh
# Knobs: REQUESTS (default 20000), CLIENTS (50), NODES (1), ROUNDS (2).
set -euo pipefail
BIN=${BIN:-target/release/cairn}
REQUESTS=${REQUESTS:-20000}
CLIENTS=${CLIENTS:-50}
NODES=${NODES:-1}
ROUNDS=${ROUNDS:-2}
REDIS_PORT=19379
TMP=$(mktemp -d /tmp/bench-txn.XXXXXX)
PIDS=()
cleanup() {
  for pid in "${PIDS[@]:-}"; do kill "$pid" 2>/dev/null || true; done
  wait 2>/dev/null || true
  rm -rf "$TMP"
}
trap cleanup EXIT INT TERM

[ -x "$BIN" ] || { echo "build first: cargo build --release -p cairn" >&2; exit 1; }
command -v redis-benchmark >/dev/null || { echo "needs redis-benchmark" >&2; exit 1; }

start_cairn() {
  local i=$1 join=${2:-}
  local args=(server --data-dir "$TMP/cairn$i" --resp-addr "127.0.0.1:1970$i"
    --grpc-addr "127.0.0.1:1980$i" --http-addr "127.0.0.1:1990$i")
  [ -n "$join" ] && args+=(--join "$join")
  "$BIN" "${args[@]}" >"$TMP/cairn$i.log" 2>&1 &
  PIDS+=($!)
  for _ in $(seq 100); do
    redis-cli -p "1970$i" ping >/dev/null 2>&1 && return
    sleep 0.1
  done
  echo "cairn node $i did not start" >&2; cat "$TMP/cairn$i.log" >&2; exit 1
}

start_cairn 1
for i in $(seq 2 "$NODES"); do start_cairn "$i" 127.0.0.1:19801; done
if [ "$NODES" -gt 1 ]; then
  # Every shard led and replicated everywhere before measuring.
  for _ in $(seq 300); do
    ready=$(curl -s http://127.0.0.1:19901/v1/cluster | python3 -c '
import json, sys
c = json.load(sys.stdin)
print(all(s.get("leader") and len(s.get("replicas", [])) == len(c["nodes"]) and not s.get("learners") for s in c["shards"]) and len(c["nodes"]) == '"$NODES"')')
    [ "$ready" = True ] && break
    sleep 0.2
  done
fi
redis-server --port $REDIS_PORT --save '' --appendonly yes --appendfsync always \
  --dir "$TMP" --daemonize no >"$TMP/redis.log" 2>&1 &
PIDS+=($!)
for _ in $(seq 50); do redis-cli -p $REDIS_PORT ping >/dev/null 2>&1 && break; sleep 0.1; done

if [ "$NODES" -gt 1 ]; then
  # A Redis Cluster of NODES masters, as durable per node as the single Redis.
  CLUSTER_ADDRS=()
  for i in $(seq "$NODES"); do
    mkdir -p "$TMP/rc$i"
    redis-server --port "1939$i" --cluster-enabled yes --cluster-config-file "$TMP/rc$i/nodes.conf" \
      --save '' --appendonly yes --appendfsync always --dir "$TMP/rc$i" --daemonize no \
      >"$TMP/rc$i.log" 2>&1 &
    PIDS+=($!)
    CLUSTER_ADDRS+=("127.0.0.1:1939$i")
  done
  for i in $(seq "$NODES"); do
    for _ in $(seq 50); do redis-cli -p "1939$i" ping >/dev/null 2>&1 && break; sleep 0.1; done
  done
  redis-cli --cluster create "${CLUSTER_ADDRS[@]}" --cluster-replicas 0 --cluster-yes >"$TMP/rc-create.log" 2>&1
  for _ in $(seq 100); do
    redis-cli -p 19391 cluster info 2>/dev/null | grep -q 'cluster_state:ok' && break
    sleep 0.1
  done
fi

slot_owner() {  # slot_owner TAG: the port of the Redis Cluster master that owns TAG's slot
  for i in $(seq "$NODES"); do
    [ "$(redis-cli -p "1939$i" set "${1}probe" x 2>&1)" = OK ] && echo "1939$i"
  done
}

# Requests per second of `redis-benchmark ... -- CMD` against the Cairn nodes (their sum,
# one process each), Redis, or the Redis Cluster.
rate() {
  local target=$1; shift
  if [ "$target" = cluster ]; then
    if [[ "$*" == *"{t}"* ]]; then
      # One slot: the master that owns it, as Cairn's rows use one shard.
      redis-benchmark -p "$(slot_owner '{t}')" -n "$REQUESTS" -c "$CLIENTS" -r 1000000 --csv "$@" \
        2>/dev/null | tail -1 | cut -d, -f2 | tr -d '"'
    else
      # Random keys over all slots: redis-benchmark's cluster mode puts each client's keys
      # on its node through the {tag} it substitutes.
      local args=()
      for a in "$@"; do
        if [[ "$a" == *__rand_int__* ]]; then args+=("{tag}$a"); else args+=("$a"); fi
      done
      redis-benchmark --cluster -p 19391 -n "$REQUESTS" -c "$CLIENTS" -r 1000000 --csv "${args[@]}" \
        2>/dev/null | tail -1 | cut -d, -f2 | tr -d '"'
    fi
  elif [ "$target" = redis ]; then
    redis-benchmark -p $REDIS_PORT -n "$REQUESTS" -c "$CLIENTS" -r 1000000 --csv "$@" 2>/dev/null |
      tail -1 | cut -d, -f2 | tr -d '"'
  else
    local out=()
    for i in $(seq "$NODES"); do
      redis-benchmark -p "1970$i" -n $((REQUESTS / NODES)) -c $((CLIENTS / NODES)) \
        -r 1000000 --csv "$@" >"$TMP/rb$i" 2>/dev/null &
      out+=($!)
    done
    wait "${out[@]}"
    for i in $(seq "$NODES"); do tail -1 "$TMP/rb$i" | cut -d, -f2 | tr -d '"'; done |
      awk '{ s += $1 } END { printf "%.0f\n", s }'
  fi
}

keys() {  # keys N TAG: N "key value" pairs, in one slot when TAG is set
  local n=$1 tag=$2 out=()
  for k in $(seq "$n"); do out+=("${tag}k$k:__rand_int__" v); done
  echo "${out[@]}"
}

median_ratio() {  # median_ratio "A1 A2 ..." "B1 B2 ...": median(A) / median(B)
  python3 -c "import statistics as s; print(round(s.median([$(echo "$1" | tr ' ' ,)]) / s.median([$(echo "$2" | tr ' ' ,)]), 2))"
}

cell() {  # cell NAME ARGS...: alternate the servers, ROUNDS times each
  local name=$1; shift
  local c=() r=() k=()
  # Keys of one slot (a hash tag) or a single key: a Redis Cluster serves them too.
  local one_slot=false
  [[ "$name" != *across* ]] && [ "$NODES" -gt 1 ] && one_slot=true
  for round in $(seq "$ROUNDS"); do
    if [ $((round % 2)) = 1 ]; then
      c+=("$(rate cairn "$@")"); r+=("$(rate redis "$@")")
      $one_slot && k+=("$(rate cluster "$@")")
    else
      $one_slot && k+=("$(rate cluster "$@")")
      r+=("$(rate redis "$@")"); c+=("$(rate cairn "$@")")
    fi
  done
  local line
  line=$(printf '%-34s cairn %-22s redis %-22s cairn/redis %s' "$name" "${c[*]}" "${r[*]}" \
    "$(median_ratio "${c[*]}" "${r[*]}")")
  if $one_slot; then
    line+=$(printf '   redis-cluster %-22s cairn/cluster %s' "${k[*]}" "$(median_ratio "${c[*]}" "${k[*]}")")
  elif [ "$NODES" -gt 1 ]; then
    line+='   redis-cluster CROSSSLOT'
  fi
  echo "$line"
}

echo "# $NODES Cairn node(s), 4 shards, --sync always; redis appendfsync always${CLUSTER_ADDRS:+; a Redis Cluster of $NODES masters}; $CLIENTS clients, $REQUESTS requests"
# shellcheck disable=SC2046
cell "SET 1 key" SET k:__rand_int__ v
for n in 2 4 8; do
  # shellcheck disable=SC2046
  cell "MSET $n keys, one slot" MSET $(keys "$n" '{t}')
  # shellcheck disable=SC2046
  cell "MSET $n keys, across shards" MSET $(keys "$n" '')
done
multi() {
  local target=$1 tag=$2 ports=()
  if [ "$target" = redis ]; then ports=("$REDIS_PORT")
  elif [ "$target" = cluster ]; then
    ports=("$(slot_owner "$tag")")
  else
    for i in $(seq "$NODES"); do ports+=("1970$i"); done
  fi
  python3 scripts/bench-multi.py --ports "${ports[@]}" --tag "$tag" \
    --transactions "$((REQUESTS / 4))" --connections "$CLIENTS"
}
for tag in '{t}' ''; do
  c=(); r=(); k=()
  for round in $(seq "$ROUNDS"); do
    c+=("$(multi cairn "$tag")"); r+=("$(multi redis "$tag")")
    [ "$NODES" -gt 1 ] && [ -n "$tag" ] && k+=("$(multi cluster "$tag")")
  done
  line=$(printf '%-34s cairn %-22s redis %-22s cairn/redis %s' \
    "MULTI 2 SETs EXEC, ${tag:+one slot}${tag:-across shards}" "${c[*]}" "${r[*]}" \
    "$(median_ratio "${c[*]}" "${r[*]}")")
  if [ "$NODES" -gt 1 ] && [ -n "$tag" ]; then
    line+=$(printf '   redis-cluster %-22s cairn/cluster %s' "${k[*]}" "$(median_ratio "${c[*]}" "${k[*]}")")
  elif [ "$NODES" -gt 1 ]; then
    line+='   redis-cluster CROSSSLOT'
  fi
  echo "$line"
done
