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
# nodes (one process per node, the sum of their rates).
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

# Requests per second of `redis-benchmark ... -- CMD` against the Cairn nodes (their sum,
# one process each) or Redis.
rate() {
  local target=$1; shift
  if [ "$target" = redis ]; then
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

cell() {  # cell NAME ARGS...: alternate the servers, ROUNDS times each
  local name=$1; shift
  local c=() r=()
  for round in $(seq "$ROUNDS"); do
    if [ $((round % 2)) = 1 ]; then
      c+=("$(rate cairn "$@")"); r+=("$(rate redis "$@")")
    else
      r+=("$(rate redis "$@")"); c+=("$(rate cairn "$@")")
    fi
  done
  printf '%-34s cairn %-22s redis %-22s cairn/redis %s\n' "$name" "${c[*]}" "${r[*]}" \
    "$(python3 -c "import statistics as s; print(round(s.median([$(IFS=,; echo "${c[*]}")]) / s.median([$(IFS=,; echo "${r[*]}")]), 2))")"
}

echo "# $NODES Cairn node(s), 4 shards, --sync always; redis appendfsync always; $CLIENTS clients, $REQUESTS requests"
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
  if [ "$target" = redis ]; then ports=($REDIS_PORT); else
    for i in $(seq "$NODES"); do ports+=("1970$i"); done
  fi
  python3 scripts/bench-multi.py --ports "${ports[@]}" --tag "$tag" \
    --transactions "$((REQUESTS / 4))" --connections "$CLIENTS"
}
for tag in '{t}' ''; do
  c=(); r=()
  for round in $(seq "$ROUNDS"); do c+=("$(multi cairn "$tag")"); r+=("$(multi redis "$tag")"); done
  printf '%-34s cairn %-22s redis %-22s cairn/redis %s\n' \
    "MULTI 2 SETs EXEC, ${tag:+one slot}${tag:-across shards}" "${c[*]}" "${r[*]}" \
    "$(python3 -c "import statistics as s; print(round(s.median([$(IFS=,; echo "${c[*]}")]) / s.median([$(IFS=,; echo "${r[*]}")]), 2))")"
done
