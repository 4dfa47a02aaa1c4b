# shellcheck shell=bash
# A foreground-latency probe for the benchmark scripts (sourced by scripts/bench-elastic.sh
# and scripts/bench-split.sh, after scripts/lib/cairn-cluster.sh): one redis-py client SETs
# and GETs random keys of 256 bytes through node 1, one request at a time, between
# probe_start NAME and probe_stop NAME; probe_row NAME SECONDS prints its Markdown row (a
# "request" is half a SET+GET pair's time), probe_slowest NAME when the slowest pair began (UTC,
# to match the nodes' logs), its key and its SET and GET times, probe_by_command NAME the
# p50 and p99 of SETs and GETs apart, probe_slow NAME every pair over 5 ms.
#
# The sourcing script defines PYTHON (with redis-py), TMP, and PROBE_KEYS (how many distinct
# keys the probe writes) before calling probe_write; its cleanup kills "$PROBE_PID" if set.

PROBE_PID=

# probe_write: writes the probe program into $TMP.
probe_write() {
    cat >"$TMP/probe.py" <<'EOF'
import json, os, random, sys, time
import redis
port, stop_file, keys = int(sys.argv[1]), sys.argv[2], int(sys.argv[3])
r = redis.Redis(port=port, socket_timeout=60)
lat, sets, gets, errors, value, slowest, slow = [], [], [], [], b"v" * 256, None, []
while not os.path.exists(stop_file):
    key = f"probe:{random.randrange(keys)}"
    began, t = time.time(), time.perf_counter()
    try:
        r.set(key, value)
        t_get = time.perf_counter()
        r.get(key)
    except Exception as e:
        errors.append(f"{type(e).__name__}: {e}")
        time.sleep(0.01)
        continue
    done = time.perf_counter()
    lat.append((done - t) * 1000 / 2)
    sets.append((t_get - t) * 1000)
    gets.append((done - t_get) * 1000)
    if done - t > 0.005:
        slow.append({"at": time.strftime("%H:%M:%S", time.gmtime(began)) + f".{int(began % 1 * 1000):03d}Z",
                     "set_ms": round((t_get - t) * 1000, 1), "get_ms": round((done - t_get) * 1000, 1)})
    if slowest is None or done - t > slowest["pair_ms"] / 1000:
        slowest = {"at": time.strftime("%H:%M:%S", time.gmtime(began)) + f".{int(began % 1 * 1000):03d}Z",
                   "key": key, "pair_ms": (done - t) * 1000,
                   "set_ms": (t_get - t) * 1000, "get_ms": (done - t_get) * 1000}
lat.sort(); sets.sort(); gets.sort()
pick = lambda q, l=lat: l[min(len(l) - 1, int(q * len(l)))] if l else float("nan")
print(json.dumps({"p50": pick(0.5), "p99": pick(0.99), "max": lat[-1] if lat else None,
                  "set_p50": pick(0.5, sets), "set_p99": pick(0.99, sets),
                  "get_p50": pick(0.5, gets), "get_p99": pick(0.99, gets),
                  "requests": 2 * len(lat), "errors": sorted(set(errors)), "slowest": slowest,
                  "slow": slow}))
EOF
}

probe_start() {
    rm -f "$TMP/stop-$1"
    "$PYTHON" "$TMP/probe.py" "$(cairn_resp 1)" "$TMP/stop-$1" "$PROBE_KEYS" >"$TMP/probe-$1.json" &
    PROBE_PID=$!
}
probe_stop() {
    touch "$TMP/stop-$1"
    wait "$PROBE_PID"
    PROBE_PID=
}
probe_row() {
    jq -r --arg name "$1" --arg secs "$2" \
        '"| \($name) | \($secs) | \(.p50*100|round/100) | \(.p99*100|round/100) | \(.max*100|round/100) | \(.requests) | \(.errors|length) |"' \
        "$TMP/probe-$1.json"
}
# probe_errors NAME...: every error each probe saw, one per line, prefixed with its name.
probe_errors() {
    local phase
    for phase in "$@"; do
        jq -r --arg p "$phase" '.errors[] | "\($p): \(.)"' "$TMP/probe-$phase.json"
    done
}
# probe_by_command NAME...: each probe's p50 and p99 of its SETs and of its GETs apart.
probe_by_command() {
    local phase
    for phase in "$@"; do
        jq -r --arg p "$phase" \
            '"\($p): SET p50 \(.set_p50*100|round/100) p99 \(.set_p99*100|round/100) ms, GET p50 \(.get_p50*100|round/100) p99 \(.get_p99*100|round/100) ms"' \
            "$TMP/probe-$phase.json"
    done
}
# probe_slow NAME: every SET+GET pair of the probe that took over 5 ms (when it began, its
# SET and GET times), and how long they took together.
probe_slow() {
    jq -r '"\(.slow | length) pairs over 5 ms, \(([.slow[] | .set_ms + .get_ms] | add // 0) | round) ms in all:",
        (.slow[] | "  \(.at) SET \(.set_ms) ms, GET \(.get_ms) ms")' "$TMP/probe-$1.json"
}
# probe_slowest NAME...: the slowest SET+GET pair of each probe.
probe_slowest() {
    local phase
    for phase in "$@"; do
        jq -r --arg p "$phase" '.slowest // empty
            | "\($p): slowest pair began \(.at), \(.key): SET \(.set_ms|round) ms, GET \(.get_ms|round) ms"' \
            "$TMP/probe-$phase.json"
    done
}
