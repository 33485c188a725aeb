#!/usr/bin/env bash
# What the check script costs a Redis master, in instructions (callgrind: the same count on a busy
# machine as on an idle one). redis-server runs under valgrind with instrumentation off; a client
# sends pipelined EVALSHA (16 a batch, 1,000 keys) of, in turn, a script that returns a constant
# (the floor: command parsing, script lookup and call, reply), quotad's CHECK script
# (src/store/redis/scripts.rs) taking 20-token leases on the `pro` tier's two windows, as lease
# mode does, and CHECK_MANY (the renewals' script) doing the same for MANY keys a call; only the
# measured calls are counted. Prints instructions per call, and per key for CHECK_MANY.
#
#   bash benches/redis_script.sh        # CALLS=4992 MANY=8 to change; ≈ 1.5 min
#
# Needs redis-server and valgrind (installed with apt-get when missing).
set -euo pipefail
cd "$(dirname "$0")/.."
CALLS=${CALLS:-4992}
MANY=${MANY:-8}
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
python3 - "$WORK" <<'PY'
import ast, re, sys
# The scripts as the Rust constants spell them: concat! of check_fn!() and string literals.
src = open("src/store/redis/scripts.rs").read()
body = re.search(r'macro_rules! check_fn \{\s*\(\) => \{\s*r#"(.*?)"#', src, re.S).group(1)
def script(name):
    parts = re.search(r'pub const %s: &str = concat!\((.*?)\n\);' % name, src, re.S).group(1)
    out = ""
    for m in re.finditer(r'check_fn!\(\)|r#"(.*?)"#|("(?:[^"\\]|\\.)*")', parts, re.S):
        out += body if m.group(0) == "check_fn!()" else (m.group(1) if m.group(1) is not None else ast.literal_eval(m.group(2)))
    return out
open(sys.argv[1] + "/check.lua", "w").write(script("CHECK"))
open(sys.argv[1] + "/many.lua", "w").write(script("CHECK_MANY"))
PY
echo "return {2, 20, 0, 0, 0}" >"$WORK/floor.lua"
PORT=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')

# One measurement: instructions per key checked by script $1, $2 keys a call (0: the one-key
# form of CHECK; args packed, as layout.rs does).
measure() {
    local out="$WORK/cg.$1"
    valgrind --tool=callgrind --instr-atstart=no --callgrind-out-file="$out" \
        redis-server --port "$PORT" --bind 127.0.0.1 --save '' --appendonly no --dir "$WORK" \
        --daemonize no >"$WORK/redis.log" 2>&1 &
    local pid=$!
    for _ in $(seq 300); do redis-cli -p "$PORT" ping >/dev/null 2>&1 && break; sleep 0.1; done
    local sha
    sha=$(redis-cli -p "$PORT" SCRIPT LOAD "$(cat "$WORK/$1.lua")")
    python3 - "$PORT" "$sha" "$CALLS" "$pid" "$2" >"$WORK/keys.$1" <<'PY'
import random, socket, struct, subprocess, sys
port, sha, calls, pid = int(sys.argv[1]), sys.argv[2].encode(), int(sys.argv[3]), sys.argv[4]
many = int(sys.argv[5])
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
sig = b"60:200000,3600:360000"
def check(ks):
    if many == 0:
        return cmd([b"EVALSHA", sha, b"1", ks[0], b"1", packed, sig])
    return cmd([b"EVALSHA", sha, b"1", ks[0]] + [a for k in ks for a in (k, b"1", packed, sig)])
def run(keys, n):
    """n keys checked in pipelined calls, 16 at a time; how many were"""
    per = max(many, 1)
    rnd = random.Random(7)
    rounds = n // (16 * per)
    for _ in range(rounds):
        s.sendall(b"".join(check([rnd.choice(keys) for _ in range(per)]) for _ in range(16)))
        for _ in range(16): reply()
    return rounds * 16 * per
keys = [b"k:%012d" % i for i in range(1000)]
# The keys' records (version 1), then one lease each so that every measured call finds counters.
s.sendall(b"".join(cmd([b"HSET", k, b"v", b"1", b"id", b"1"]) for k in keys))
for _ in keys: reply()
for k in keys:
    s.sendall(check([k]))
    reply()
subprocess.run(["callgrind_control", "-i", "on", pid], check=True, capture_output=True)
print(run(keys, calls))
subprocess.run(["callgrind_control", "-i", "off", pid], check=True, capture_output=True)
PY
    kill "$pid"; wait "$pid" 2>/dev/null || true
    python3 - "$out" "$(cat "$WORK/keys.$1")" <<'PY'
import glob, sys
total = 0
for p in glob.glob(sys.argv[1] + "*"):
    for line in open(p, errors="replace"):
        if line.startswith("totals:"):
            total += int(line.split()[1])
print(total // int(sys.argv[2]))
PY
}

floor=$(measure floor 0)
check=$(measure check 0)
many=$(measure many "$MANY")
python3 - "$floor" "$check" "$many" "$CALLS" "$MANY" <<'PY'
import sys
floor, check, many, calls, n = map(int, sys.argv[1:])
print(f"instructions on the master ({calls} keys checked, pipelined 16, 1,000 keys, 20-token leases):")
rows = [
    ("floor (constant reply), per call", floor, ""),
    ("quotad CHECK, per call (one key)", check, f"{check / floor:.2f}x the floor, {check - floor:,} above it"),
    (f"quotad CHECK_MANY, {n} keys a call, per key", many, f"{many / check:.2f}x CHECK"),
]
for name, v, note in rows:
    print(f"  {name:44} {v:>8,}   {note}")
PY
