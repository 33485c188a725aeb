#!/usr/bin/env bash
# quotad's binary protocol against Redis, in one run, same machine, same connections and pipeline
# depth: `quotad bench` (full checks: key, scope, 2 windows, monthly quota) versus
# `redis-benchmark` doing INCR on random keys and an EVALSHA token-bucket script.
#
#   bash benches/binary_vs_redis.sh            # CONNS=50 REQUESTS=2000000 SECS=10 to change
#
# Needs redis-server, redis-tools (installed with apt-get when missing) and a release build.
set -euo pipefail
cd "$(dirname "$0")/.."
CONNS=${CONNS:-50}
REQUESTS=${REQUESTS:-2000000}
SECS=${SECS:-10}

if ! command -v redis-benchmark >/dev/null || ! command -v redis-server >/dev/null; then
    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq redis-server redis-tools
fi
cargo build --release --quiet
QUOTAD=target/release/quotad
WORK=$(mktemp -d)
free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
RPORT=$(free_port); HPORT=$(free_port); BPORT=$(free_port)
cleanup() { kill "$RPID" "$QPID" 2>/dev/null || true; wait 2>/dev/null || true; rm -rf "$WORK"; }
trap cleanup EXIT

redis-server --bind 127.0.0.1 --port "$RPORT" --save '' --appendonly no --daemonize no \
    --dir "$WORK" >"$WORK/redis.log" 2>&1 &
RPID=$!
QUOTAD_ADMIN_TOKEN=bench-token "$QUOTAD" serve --data-dir "$WORK/data" --http "127.0.0.1:$HPORT" \
    --bind "127.0.0.1:$BPORT" >"$WORK/quotad.log" 2>&1 &
QPID=$!
for _ in $(seq 100); do
    redis-cli -p "$RPORT" ping >/dev/null 2>&1 && curl -sf "http://127.0.0.1:$HPORT/health" >/dev/null && break
    sleep 0.1
done

# A token bucket per key, refilled by elapsed time: the usual Redis rate limiter.
SCRIPT='local b = redis.call("HMGET", KEYS[1], "t", "ts")
local now = redis.call("TIME")
local t = tonumber(now[1]) + tonumber(now[2]) / 1000000
local rate, cap = tonumber(ARGV[1]), tonumber(ARGV[2])
local tokens = tonumber(b[1]) or cap
local ts = tonumber(b[2]) or t
tokens = math.min(cap, tokens + (t - ts) * rate)
local ok = 0
if tokens >= 1 then tokens = tokens - 1; ok = 1 end
redis.call("HSET", KEYS[1], "t", tokens, "ts", t)
return ok'
SHA=$(redis-cli -p "$RPORT" SCRIPT LOAD "$SCRIPT")

rb() { # depth, command...
    local depth=$1; shift
    redis-benchmark -p "$RPORT" -c "$CONNS" -n "$REQUESTS" -P "$depth" -r 100000 --csv "$@" 2>/dev/null \
        | tail -1 | cut -d, -f2 | tr -d '"'
}
qb() { # depth -> json
    "$QUOTAD" bench --addr "127.0.0.1:$BPORT" --http-url "http://127.0.0.1:$HPORT" --token bench-token \
        --keys 1000 --connections "$CONNS" --depth "$1" --duration "$SECS" --json "${@:2}" 2>/dev/null
}
field() { python3 -c "import json,sys; v=json.load(sys.stdin); print($1)"; }

declare -A R
for d in 1 16; do
    R[incr_$d]=$(rb "$d" INCR "k:__rand_int__")
    R[lua_$d]=$(rb "$d" EVALSHA "$SHA" 1 "b:__rand_int__" 1000 100)
    R[quotad_$d]=$(qb "$d" | field 'v["throughput"]')
done
# Unpipelined latency at half the saturating rate.
HALF=$(python3 -c "print(${R[quotad_1]} / 2)")
P99=$(qb 1 --rate "$HALF" | field 'v["latencyMicros"]["p99"]')

printf '%-44s %14s %14s\n' "($CONNS connections)" "depth 1" "depth 16"
printf '%-44s %14.0f %14.0f\n' "redis INCR (random keys), req/s" "${R[incr_1]}" "${R[incr_16]}"
printf '%-44s %14.0f %14.0f\n' "redis EVALSHA token bucket, req/s" "${R[lua_1]}" "${R[lua_16]}"
printf '%-44s %14.0f %14.0f\n' "quotad full check (binary), req/s" "${R[quotad_1]}" "${R[quotad_16]}"
python3 - "${R[incr_1]}" "${R[incr_16]}" "${R[lua_16]}" "${R[quotad_1]}" "${R[quotad_16]}" "$P99" "$HALF" <<'PY'
import sys
i1, i16, l16, q1, q16, p99, half = map(float, sys.argv[1:])
print(f"quotad / INCR at depth 16:       {q16 / i16:5.2f}x   (goal >= 2)")
print(f"quotad / token bucket, depth 16: {q16 / l16:5.2f}x   (goal >= 10)")
print(f"quotad / INCR unpipelined:       {q1 / i1:5.2f}x   (goal >= 1.5)")
print(f"unpipelined p99 at {half:.0f} req/s (half of saturation): {p99:.0f} us   (goal < 200)")
PY
