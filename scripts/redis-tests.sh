#!/usr/bin/env bash
# redis-tests.sh: Redis 7.0's own test suite against a one-node Cairn, for the tests whose
# commands Cairn supports: unit/multi, unit/type/string, unit/keyspace, unit/expire and
# unit/pubsub.
#
# The suite comes from Debian's source tarball of redis 7.0.15 (downloaded once into
# target/redis-tests/, about 3 MB); it needs tclsh (Debian's `tcl`). Redis's runner talks
# to an external server with `--host/--port --singledb`; its external mode begins every
# block with `FUNCTION FLUSH`, which Cairn does not have, so that one line is taken out of the
# runner's copy. Tests tagged needs:debug, needs:repl or needs:config-maxmemory are left out
# by the runner itself. Of the rest, unit/multi runs the tests listed below by name; the
# other units run whole but for the tests skipped below by name, which use lists, sets,
# hashes, sorted sets, streams, OBJECT ENCODING, MOVE, other databases, CLIENT REPLY or
# keyspace notifications, which Cairn does not offer (yet). Each unit must pass every test it runs, and run at least the count given.
#
#     scripts/redis-tests.sh [path/to/cairn]     (default: target/release/cairn, else debug)
set -euo pipefail
cd "$(dirname "$0")/.."
BIN=${1:-}
if [ -z "$BIN" ]; then
  if [ -x target/release/cairn ]; then BIN=target/release/cairn; else BIN=target/debug/cairn; fi
fi
[ -x "$BIN" ] || { echo "no cairn binary at $BIN: cargo build -p cairn" >&2; exit 1; }
command -v tclsh >/dev/null || { echo "needs tclsh (apt install tcl)" >&2; exit 1; }

CACHE=target/redis-tests
SRC=$CACHE/redis-7.0.15
if [ ! -d "$SRC/tests" ]; then
  mkdir -p "$CACHE"
  curl -sSf -o "$CACHE/redis.tar.gz" \
    http://deb.debian.org/debian/pool/main/r/redis/redis_7.0.15.orig.tar.gz
  tar xzf "$CACHE/redis.tar.gz" -C "$CACHE"
  sed -i '/^    r function flush$/d' "$SRC/tests/support/server.tcl"
fi

# unit/pubsubshard is tagged external:skip for its second part only (replication between
# two servers): its first part runs against Cairn as it is.
SHARD_UNIT=$SRC/tests/unit/cairn-pubsubshard.tcl
if [ ! -f "$SHARD_UNIT" ]; then
  awk '/^start_server/ && seen++ {exit} {print}' "$SRC/tests/unit/pubsubshard.tcl" |
    sed 's/ external:skip//' >"$SHARD_UNIT"
fi

TMP=$(mktemp -d /tmp/redis-tests.XXXXXX)
PORT=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
"$BIN" server --data-dir "$TMP/data" --resp-addr "127.0.0.1:$PORT" \
  --grpc-addr 127.0.0.1:0 --http-addr 127.0.0.1:0 >"$TMP/cairn.log" 2>&1 &
PID=$!
# The exit status is the verdict's, not that of the server's exit (SIGTERM: 143).
trap 'rc=$?; kill $PID 2>/dev/null; wait $PID 2>/dev/null || true; rm -rf "$TMP"; exit $rc' EXIT INT TERM
for _ in $(seq 100); do
  redis-cli -p "$PORT" ping >/dev/null 2>&1 && break
  sleep 0.1
done

MULTI_TESTS=(
  "Nested MULTI are not allowed"
  "WATCH inside MULTI is not allowed"
  "EXEC fails if there are errors while queueing commands #1"
  "If EXEC aborts, the client MULTI state is cleared"
  "EXEC works on WATCHed key not modified"
  "EXEC fail on WATCHed key modified (1 key of 1 watched)"
  "EXEC fail on WATCHed key modified (1 key of 5 watched)"
  "After successful EXEC key is no longer watched"
  "After failed EXEC key is no longer watched"
  "It is possible to UNWATCH"
  "UNWATCH when there is nothing watched works as expected"
  "FLUSHALL is able to touch the watched keys"
  "FLUSHALL does not touch non affected keys"
  "FLUSHDB is able to touch the watched keys"
  "FLUSHDB does not touch non affected keys"
  "WATCH will consider touched keys target of EXPIRE"
  "WATCH will consider touched expired keys"
  "DISCARD should clear the WATCH dirty flag on the client"
  "DISCARD should UNWATCH all the keys"
)
STRING_SKIP=(
  "MGET against non-string key"
  "SETBIT against key with wrong type"
  "SETRANGE against key with wrong type"
  "Extended SET GET with incorrect type should result in wrong type error"
  "/against integer-encoded key"
)
KEYSPACE_SKIP=(
  "/^COPY basic usage for (list|intset|hashtable|listpack|skiplist|stream)"
  "/^MOVE "
  "SET/GET keys in different DBs"
)
EXPIRE_SKIP=(
  "EXPIRE - write on expire should work"
)
PUBSUB_SKIP=(
  "PubSub messages with CLIENT REPLY OFF"
  "/^Keyspace notifications"
  # These two publish from a second connection right after sending UNSUBSCRIBE without
  # waiting for its answer (the test's helper reads no reply when no channel is named), so
  # they race: Redis, on one thread, happens to read the first connection first; Cairn
  # serves connections in parallel.
  "PUBLISH/SUBSCRIBE after UNSUBSCRIBE without arguments"
  "PUBLISH/PSUBSCRIBE after PUNSUBSCRIBE without arguments"
)
PUBSUBSHARD_SKIP=(
  "PubSubShard with CLIENT REPLY OFF"
  # The same race as PUBSUB_SKIP's two: SPUBLISH from a second connection right after
  # sending SUNSUBSCRIBE without waiting for its answer.
  "SPUBLISH/SSUBSCRIBE after UNSUBSCRIBE without arguments"
)

failures=0
# run UNIT MIN ARGS...: one unit with the runner's ARGS; it must pass every test it runs and
# run at least MIN.
run() {
  local unit=$1 min=$2; shift 2
  # In a session of its own: the runner's cleanup signals its whole process group.
  (cd "$SRC" && setsid -w ./runtest --host 127.0.0.1 --port "$PORT" --singledb --single "$unit" \
    --tags -needs:debug --tags -needs:repl --tags -needs:config-maxmemory "$@" 2>&1) |
    tee "$TMP/out" || true
  # The runner's exit status is not reliable across versions: count the verdicts.
  local plain passed failed
  plain=$(sed 's/\x1b\[[0-9;]*m//g' "$TMP/out")
  passed=$(grep -c '^\[ok\]' <<<"$plain" || true)
  failed=$(grep -cE '^\[(err|exception)\]' <<<"$plain" || true)
  echo "redis $unit: $passed passed, $failed failed (at least $min to pass)"
  if [ "$failed" != 0 ] || [ "$passed" -lt "$min" ]; then failures=$((failures + 1)); fi
}
args() {  # args FLAG NAME...: FLAG before each NAME
  local flag=$1; shift
  for name in "$@"; do printf '%s\0%s\0' "$flag" "$name"; done
}
mapfile -d '' multi < <(args --only "${MULTI_TESTS[@]}")
mapfile -d '' string < <(args --skiptest "${STRING_SKIP[@]}")
mapfile -d '' keyspace < <(args --skiptest "${KEYSPACE_SKIP[@]}")
mapfile -d '' expire < <(args --skiptest "${EXPIRE_SKIP[@]}")
mapfile -d '' pubsub < <(args --skiptest "${PUBSUB_SKIP[@]}")
mapfile -d '' pubsubshard < <(args --skiptest "${PUBSUBSHARD_SKIP[@]}")
run unit/multi "${#MULTI_TESTS[@]}" "${multi[@]}"
run unit/type/string 67 "${string[@]}"
run unit/keyspace 33 "${keyspace[@]}"
run unit/expire 57 "${expire[@]}"
run unit/pubsub 12 "${pubsub[@]}"
run unit/cairn-pubsubshard 7 "${pubsubshard[@]}"
echo "redis units failed: $failures"
[ "$failures" = 0 ]
