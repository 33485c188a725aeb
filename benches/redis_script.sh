#!/usr/bin/env bash
# What the check script costs a Redis master, in instructions (callgrind: the same count on a busy
# machine as on an idle one). redis-server runs under valgrind with instrumentation off; a client
# sends pipelined EVALSHA (16 a batch, 1,000 keys) of, in turn, a script that returns a constant
# (the floor: command parsing, script lookup and call, reply) and quotad's CHECK script
# (src/store/redis/scripts.rs) taking 20-token leases on the `pro` tier's two windows, as lease
# mode does; only the measured calls are counted. Prints instructions per call of each and their
# ratio.
#
#   bash benches/redis_script.sh        # CALLS=4992 to change; ≈ 1 min
#
# Needs redis-server and valgrind (installed with apt-get when missing).
set -euo pipefail
cd "$(dirname "$0")/.."
CALLS=${CALLS:-4992}
need=()
command -v redis-server >/dev/null || need+=(redis-server)
command -v redis-cli >/dev/null || need+=(redis-tools)
command -v valgrind >/dev/null || need+=(valgrind)
if [ ${#need[@]} -gt 0 ]; then
    if [ "$(id -u)" -ne 0 ]; then SUDO=sudo; else SUDO=; fi
    $SUDO apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq "${need[@]}"
fi
WORK=$(mktemp -d)
trap 'kill $(jobs -p) 2>/dev/null || true; wait 2>/dev/null || true; rm -rf "$WORK"' EXIT
python3 - "$WORK/check.lua" <<'PY'
import re, sys
src = open("src/store/redis/scripts.rs").read()
open(sys.argv[1], "w").write(re.search(r'pub const CHECK: &str = r#"(.*?)"#;', src, re.S).group(1))
PY
echo "return {2, 20, 0, 0, 0}" >"$WORK/floor.lua"
PORT=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')

# One measurement: instructions per EVALSHA of script $1 (args: packed, as layout.rs does).
measure() {
    local out="$WORK/cg.$1"
    valgrind --tool=callgrind --instr-atstart=no --callgrind-out-file="$out" \
        redis-server --port "$PORT" --bind 127.0.0.1 --save '' --appendonly no --dir "$WORK" \
        --daemonize no >"$WORK/redis.log" 2>&1 &
    local pid=$!
    for _ in $(seq 300); do redis-cli -p "$PORT" ping >/dev/null 2>&1 && break; sleep 0.1; done
    local sha
    sha=$(redis-cli -p "$PORT" SCRIPT LOAD "$(cat "$WORK/$1.lua")")
    python3 - "$PORT" "$sha" "$CALLS" "$pid" <<'PY'
import random, socket, struct, subprocess, sys
port, sha, calls, pid = int(sys.argv[1]), sys.argv[2].encode(), int(sys.argv[3]), sys.argv[4]
def cmd(args):
    return b"*%d\r\n" % len(args) + b"".join(b"$%d\r\n%s\r\n" % (len(a), a) for a in args)
s = socket.create_connection(("127.0.0.1", port))
f = s.makefile("rb")
def reply():
    line = f.readline()
    if line[:1] == b"*":
        for _ in range(int(line[1:])): reply()
    elif line[:1] == b"$":
        n = int(line[1:])
        if n >= 0: f.read(n + 2)
    elif line[:1] == b"-":
        sys.exit("redis: " + line.decode())
# now (µs), cost, want, month, quota (-1: none); then interval and capacity (µs) of 300/min and
# 10,000/h; then the limits signature
packed = struct.pack("<5q", 1_700_000_000_000_000, 1, 20, 677, -1) + struct.pack("<4q", 200_000, 60_000_000, 360_000, 3_600_000_000)
def check(key):
    return cmd([b"EVALSHA", sha, b"1", key, b"1", packed, b"60:200000,3600:360000"])
def run(keys, n):
    """n pipelined calls on `keys`, 16 at a time"""
    rnd = random.Random(7)
    for _ in range(n // 16):
        s.sendall(b"".join(check(rnd.choice(keys)) for _ in range(16)))
        for _ in range(16): reply()
keys = [b"k:%012d" % i for i in range(1000)]
# The keys' records (version 1), then one lease each so that every measured call finds counters.
s.sendall(b"".join(cmd([b"HSET", k, b"v", b"1", b"id", b"1"]) for k in keys))
for _ in keys: reply()
for k in keys:
    s.sendall(check(k))
    reply()
subprocess.run(["callgrind_control", "-i", "on", pid], check=True, capture_output=True)
run(keys, calls)
subprocess.run(["callgrind_control", "-i", "off", pid], check=True, capture_output=True)
PY
    kill "$pid"; wait "$pid" 2>/dev/null || true
    python3 - "$out" "$CALLS" <<'PY'
import glob, sys
total = 0
for p in glob.glob(sys.argv[1] + "*"):
    for line in open(p, errors="replace"):
        if line.startswith("totals:"):
            total += int(line.split()[1])
print(total // int(sys.argv[2]))
PY
}

floor=$(measure floor)
check=$(measure check)
python3 - "$floor" "$check" "$CALLS" <<'PY'
import sys
floor, check, calls = int(sys.argv[1]), int(sys.argv[2]), sys.argv[3]
print(f"instructions per EVALSHA on the master ({calls} calls, pipelined 16, 1,000 keys, 20-token leases):")
print(f"  floor (constant reply)   {floor:>8,}")
print(f"  quotad CHECK             {check:>8,}   {check / floor:.2f}x the floor, {check - floor:,} above it")
PY
