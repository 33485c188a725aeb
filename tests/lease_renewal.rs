//! Lease renewals on a real Redis Cluster (three masters, three replicas on loopback): the
//! renewals of keys one master holds share a script call, and a slot moved to another master
//! while the node holds leases neither loses nor doubles a token.

mod common;

use std::net::SocketAddr;
use std::time::Duration;

use common::redis::{RedisCluster, RedisServer};
use common::{metric_sum, Daemon};
use quotad::protocol::client::{Check, Client as BinClient};
use serde_json::json;

const KEYS: usize = 48;

/// `rounds` CHECK_BATCH frames, each checking every key once: all admitted, counted per key.
fn spend(addr: SocketAddr, keys: &[String], rounds: usize, admitted: &mut [u64]) {
    common::runtime().block_on(async {
        let c = BinClient::connect_tcp(addr).await.unwrap();
        let checks: Vec<Check<'_>> = keys
            .iter()
            .map(|k| Check {
                key: k,
                scope: None,
                cost: 1,
            })
            .collect();
        for _ in 0..rounds {
            for (i, r) in c.check_batch(&checks).await.unwrap().iter().enumerate() {
                assert_eq!(r.decision, 0, "key {i} refused: {r:?}");
                admitted[i] += 1;
            }
        }
    });
}

/// Each key's month usage as Redis has it, once the node's leases have expired and their
/// unspent tokens have gone back (TTL 300 ms).
fn used_after_leases_end(d: &Daemon, ids: &[String]) -> Vec<u64> {
    std::thread::sleep(Duration::from_millis(900));
    let c = d.client();
    ids.iter().map(|id| c.monthly_used(id)).collect()
}

fn renewals(d: &Daemon) -> (u64, u64) {
    let text = d.client().get("/metrics").text;
    (
        metric_sum(&text, "quotad_store_lease_renewals_total", &[]),
        metric_sum(&text, "quotad_store_lease_renewal_calls_total", &[]),
    )
}

/// Moves the slot of one of the keys' hashes from master `from` to master `to`, as
/// `redis-cli --cluster reshard` does: importing/migrating, `MIGRATE`, then the new owner.
fn move_a_key_slot(masters: &[&RedisServer], from: usize, to: usize) {
    let (src, dst) = (masters[from], masters[to]);
    let scan = src.cli(&["--scan", "--pattern", "quotad:{*}"]);
    let hash = scan
        .lines()
        .find(|k| !k.contains("{meta}") && !k.contains("{g"))
        .expect("a key's hash on the first master")
        .to_string();
    let slot = src.cli(&["CLUSTER", "KEYSLOT", &hash]).trim().to_string();
    let src_id = src.cli(&["CLUSTER", "MYID"]).trim().to_string();
    let dst_id = dst.cli(&["CLUSTER", "MYID"]).trim().to_string();
    assert!(dst
        .cli(&["CLUSTER", "SETSLOT", &slot, "IMPORTING", &src_id])
        .contains("OK"));
    assert!(src
        .cli(&["CLUSTER", "SETSLOT", &slot, "MIGRATING", &dst_id])
        .contains("OK"));
    for k in src.cli(&["CLUSTER", "GETKEYSINSLOT", &slot, "100"]).lines() {
        let port = dst.port.to_string();
        let r = src.cli(&["MIGRATE", "127.0.0.1", &port, k, "0", "5000"]);
        assert!(r.contains("OK"), "MIGRATE {k}: {r}");
    }
    for m in masters {
        assert!(m
            .cli(&["CLUSTER", "SETSLOT", &slot, "NODE", &dst_id])
            .contains("OK"));
    }
    assert!(dst.cli(&["EXISTS", &hash]).contains('1'), "{hash} moved");
}

/// A node in lease mode on `url`, with a roomy tier and [`KEYS`] keys on it: (ids, keys).
fn leasing_node(url: &str, dir: &std::path::Path) -> (Daemon, Vec<String>, Vec<String>) {
    let a = Daemon::start(
        &dir.join("a"),
        &[
            "--store",
            url,
            "--store-mode",
            "lease",
            "--lease-size",
            "20",
            "--lease-ttl-ms",
            "300",
        ],
    );
    let c = a.client();
    c.put_tier(
        "roomy",
        json!({
            "limits": [{"requests": 1_000_000, "periodSeconds": 86_400}],
            "monthlyQuota": 1_000_000
        }),
    );
    let (ids, keys) = (0..KEYS)
        .map(|i| c.create_key(json!({"consumer": format!("c{i}"), "tier": "roomy"})))
        .unzip();
    (a, ids, keys)
}

/// Every key drains its lease in step with the others, so that their renewals are asked for
/// together: they share calls, and every token they took is spent or given back.
fn renewals_share_calls(a: &Daemon, ids: &[String], keys: &[String]) -> Vec<u64> {
    let mut admitted = vec![0u64; KEYS];
    spend(a.binary, keys, 60, &mut admitted);
    let (renewed, calls) = renewals(a);
    assert!(
        renewed >= KEYS as u64,
        "each key's lease was renewed: {renewed} renewals"
    );
    assert!(
        calls > 0 && calls * 2 <= renewed,
        "renewals share calls: {renewed} renewals in {calls} calls"
    );
    assert_eq!(used_after_leases_end(a, ids), admitted);
    admitted
}

#[test]
fn on_one_redis_server_renewals_share_calls_and_count_exactly() {
    let redis = RedisServer::start();
    let dir = tempfile::tempdir().unwrap();
    let (a, ids, keys) = leasing_node(&redis.url(), dir.path());
    renewals_share_calls(&a, &ids, &keys);
}

#[test]
fn renewals_share_a_call_per_master_and_count_exactly_across_a_slot_move() {
    let cluster = RedisCluster::start();
    let dir = tempfile::tempdir().unwrap();
    let (a, ids, keys) = leasing_node(&cluster.url(), dir.path());
    let mut admitted = renewals_share_calls(&a, &ids, &keys);

    // A slot moves while the node's map still has it on its old master: the renewal call to
    // the old master cannot reach that key, which the node then renews on its own.
    let masters: Vec<&RedisServer> = cluster
        .nodes
        .iter()
        .filter(|n| n.cli(&["INFO", "replication"]).contains("role:master"))
        .collect();
    assert_eq!(masters.len(), 3);
    spend(a.binary, &keys, 20, &mut admitted);
    move_a_key_slot(&masters, 0, 1);
    let before = renewals(&a).0;
    spend(a.binary, &keys, 60, &mut admitted);
    assert!(renewals(&a).0 >= before + KEYS as u64, "renewals went on");
    assert_eq!(
        used_after_leases_end(&a, &ids),
        admitted,
        "no token lost or doubled across the move"
    );
}
