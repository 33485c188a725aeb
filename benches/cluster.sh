#!/usr/bin/env bash
# One node on its own files against the shared Redis store, in one run on one machine:
#   1. one node, memory-mapped (the baseline);
#   2. one node on one redis-server (exact mode);
#   3. two nodes on a Redis Cluster (3 masters + 3 replicas on loopback), exact mode;
#   4. the same two nodes' setup in lease mode.
# Each row: `quotad bench` over the binary protocol, 1000 keys (uniform), CONNS connections at
# pipeline DEPTH for SECS seconds; for two nodes one bench per node at once on the same keys
# (throughputs summed, the worse p99 shown). Ratios are against row 1 of the same run.
# Rows 1 and 4 (the goal's pair) run ROUNDS times, interleaved, so that a busy neighbour weighs on
# both alike; their figures are the medians, and the goal is read on the median of the rounds'
# ratios. Rows 2 and 3 run once.
#
#   bash benches/cluster.sh          # CONNS=16 DEPTH=8 SECS=6 ROUNDS=5 LEASE=20 to change
#
# Needs redis-server, redis-tools (installed with apt-get when missing) and a release build.
set -euo pipefail
cd "$(dirname "$0")/.."
CONNS=${CONNS:-16}
DEPTH=${DEPTH:-8}
SECS=${SECS:-6}
ROUNDS=${ROUNDS:-5}
LEASE=${LEASE:-20}

if ! command -v redis-server >/dev/null || ! command -v redis-cli >/dev/null; then
    if [ "$(id -u)" -ne 0 ]; then SUDO=sudo; else SUDO=; fi
    $SUDO apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq redis-server redis-tools
fi
cargo build --release --quiet
QUOTAD=target/release/quotad
WORK=$(mktemp -d)
PIDS=()
cleanup() { kill "${PIDS[@]}" 2>/dev/null || true; wait 2>/dev/null || true; rm -rf "$WORK"; }
trap cleanup EXIT
free_port() { python3 -c '
import socket
while True:
    s = socket.socket(); s.bind(("127.0.0.1", 0)); p = s.getsockname()[1]
    if p < 55000:
        t = socket.socket()
        try:
            t.bind(("127.0.0.1", p + 10000)); print(p); break
        except OSError: pass'; }

redis() { # port, extra args...
    local port=$1; shift
    mkdir -p "$WORK/r$port"
    redis-server --bind 127.0.0.1 --port "$port" --save '' --appendonly no --daemonize no \
        --dir "$WORK/r$port" "$@" >"$WORK/r$port/log" 2>&1 &
    PIDS+=($!)
    for _ in $(seq 100); do redis-cli -p "$port" ping >/dev/null 2>&1 && return; sleep 0.05; done
    echo "redis-server on $port did not start" >&2; exit 1
}

node() { # name, extra serve args... ; sets H_<name> B_<name>
    local name=$1; shift
    local h b
    h=$(free_port); b=$(free_port)
    QUOTAD_ADMIN_TOKEN=bench-token "$QUOTAD" serve --data-dir "$WORK/$name" --http "127.0.0.1:$h" \
        --bind "127.0.0.1:$b" --grpc 127.0.0.1:0 "$@" >"$WORK/$name.log" 2>&1 &
    PIDS+=($!)
    for _ in $(seq 200); do curl -sf "http://127.0.0.1:$h/health" >/dev/null && break; sleep 0.05; done
    printf -v "H_$name" '%s' "$h"
    printf -v "B_$name" '%s' "$b"
}

bench() { # name, extra bench args... -> json on stdout
    local name=$1; shift
    local h="H_$name" b="B_$name"
    "$QUOTAD" bench --addr "127.0.0.1:${!b}" --http-url "http://127.0.0.1:${!h}" --token bench-token \
        --keys 1000 --connections "$CONNS" --depth "$DEPTH" --duration "$SECS" --json "$@" 2>/dev/null
}

# Two benches at once, one per node, on keys created through the first (once per label).
pair() { # nodeA nodeB label
    [ -f "$WORK/keys-$3" ] || bench "$1" --requests 1 --save-keys "$WORK/keys-$3" >/dev/null
    bench "$1" --key-file "$WORK/keys-$3" >"$WORK/$3-a.json" &
    local p=$!
    bench "$2" --key-file "$WORK/keys-$3" >"$WORK/$3-b.json"
    wait "$p"
}

# 1. one node, memory-mapped (its keys kept for the rounds)
node mem
bench mem --requests 1 --save-keys "$WORK/keys-mem" >/dev/null

# 2. one node on one redis-server
RP=$(free_port); redis "$RP"
node single --store "redis://127.0.0.1:$RP"
bench single >"$WORK/single.json"

# 3./4. a cluster of six
PORTS=()
for _ in 1 2 3 4 5 6; do
    p=$(free_port)
    redis "$p" --cluster-enabled yes --cluster-config-file nodes.conf --cluster-node-timeout 2000 \
        --repl-diskless-sync-delay 0
    PORTS+=("127.0.0.1:$p")
done
redis-cli --cluster create "${PORTS[@]}" --cluster-replicas 1 --cluster-yes >"$WORK/create.log"
for _ in $(seq 200); do
    redis-cli -p "${PORTS[0]##*:}" cluster info | grep -q cluster_state:ok && break; sleep 0.1
done
sleep 1
CLUSTER="redis-cluster://$(IFS=,; echo "${PORTS[*]}")"
node ea --store "$CLUSTER" --redis-namespace exact
node eb --store "$CLUSTER" --redis-namespace exact
pair ea eb exact
node la --store "$CLUSTER" --redis-namespace lease --store-mode lease --lease-size "$LEASE"
node lb --store "$CLUSTER" --redis-namespace lease --store-mode lease --lease-size "$LEASE"
for r in $(seq "$ROUNDS"); do
    bench mem --key-file "$WORK/keys-mem" >"$WORK/mem.json"
    pair la lb lease
    cp "$WORK/mem.json" "$WORK/mem-$r.json"
    cp "$WORK/lease-a.json" "$WORK/lease-$r-a.json"
    cp "$WORK/lease-b.json" "$WORK/lease-$r-b.json"
done

python3 - "$WORK" "$CONNS" "$DEPTH" "$SECS" "$LEASE" "$ROUNDS" <<'PY'
import json, sys, os, statistics
work, conns, depth, secs, lease, rounds = sys.argv[1:]
rounds = int(rounds)
def load(n):
    return json.load(open(os.path.join(work, n)))
def one(n):
    v = load(n)
    return v["throughput"], v["latencyMicros"]["p99"], v["decisions"]
def two(label):
    a, b = load(f"{label}-a.json"), load(f"{label}-b.json")
    dec = {k: a["decisions"].get(k, 0) + b["decisions"].get(k, 0) for k in set(a["decisions"]) | set(b["decisions"])}
    return a["throughput"] + b["throughput"], max(a["latencyMicros"]["p99"], b["latencyMicros"]["p99"]), dec
def median_row(runs):
    """The median throughput and p99 over rounds, and the decisions of all rounds summed."""
    dec = {}
    for _, _, d in runs:
        for k, v in d.items():
            dec[k] = dec.get(k, 0) + v
    return statistics.median(r[0] for r in runs), statistics.median(r[1] for r in runs), dec
mem = [one(f"mem-{r}.json") for r in range(1, rounds + 1)]
leased = [two(f"lease-{r}") for r in range(1, rounds + 1)]
ratios = [l[0] / m[0] for m, l in zip(mem, leased)]
rows = [
    ("1 node, memory-mapped", median_row(mem)),
    ("1 node, redis-server (exact)", one("single.json")),
    ("2 nodes, Redis Cluster, exact", two("exact")),
    (f"2 nodes, Redis Cluster, lease {lease}", median_row(leased)),
]
base = rows[0][1][0]
print(f"binary protocol, {conns} connections x depth {depth} per bench, {secs} s, 1000 keys; "
      f"rows 1 and 4: medians of {rounds} interleaved rounds")
print(f"{'store':40} {'checks/s':>12} {'ratio':>7} {'p99 us':>9}  decisions")
for name, (tp, p99, dec) in rows:
    print(f"{name:40} {tp:12.0f} {tp / base:7.3f} {p99:9.0f}  {dict(sorted(dec.items()))}")
ratio = statistics.median(ratios)
print("lease / one node, each round: " + ", ".join(f"{r:.3f}" for r in ratios))
verdict = "met" if ratio >= 0.5 else "NOT met"
print(f"goal: lease {lease} >= 0.5 x one node: median {ratio:.3f}: {verdict}")
sys.exit(0 if ratio >= 0.5 else 1)
PY
