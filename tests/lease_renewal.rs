//! Lease renewals on a real Redis Cluster (three masters, three replicas on loopback): the
//! renewals of keys one master holds share a script call, and a slot moved to another master
//! while the node holds leases neither loses nor doubles a token.

mod common;

use std::time::Duration;

use common::redis::{RedisCluster, RedisServer};
use common::{metric_sum, Daemon, LEASE_20};
use quotad::protocol::client::Client as BinClient;

const KEYS: usize = 48;

/// `rounds` CHECK_BATCH frames to node `d`, each checking every key once, admitted checks
/// counted per key: all admitted, or with `unavailable_ok`, some answered `unavailable` (the
/// fail-closed answer, counted nowhere), how many returned. Any other refusal shows the node's
/// log.
fn spend(
    d: &Daemon,
    keys: &[String],
    rounds: usize,
    admitted: &mut [u64],
    unavailable_ok: bool,
) -> u64 {
    common::runtime().block_on(async {
        let c = BinClient::connect_tcp(d.binary).await.unwrap();
        let checks = common::checks_of(keys);
        let mut unavailable = 0;
        for _ in 0..rounds {
            for (i, r) in c.check_batch(&checks).await.unwrap().iter().enumerate() {
                match r.decision {
                    0 => admitted[i] += 1,
                    6 if unavailable_ok => unavailable += 1,
                    _ => panic!("key {i} refused: {r:?}; node log:\n{}", d.log_text()),
                }
            }
        }
        unavailable
    })
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

/// A node in lease mode on `url`, with a roomy tier and [`KEYS`] keys on it: (ids, keys).
fn leasing_node(url: &str, dir: &std::path::Path) -> (Daemon, Vec<String>, Vec<String>) {
    let mut args = vec!["--store", url];
    args.extend(LEASE_20);
    let a = Daemon::start(&dir.join("a"), &args);
    let (ids, keys) = a.client().roomy_keys(KEYS);
    (a, ids, keys)
}

/// Every key drains its lease in step with the others, so that their renewals are asked for
/// together: they share calls, and every token they took is spent or given back.
fn renewals_share_calls(a: &Daemon, ids: &[String], keys: &[String]) -> Vec<u64> {
    let mut admitted = vec![0u64; KEYS];
    spend(a, keys, 60, &mut admitted, false);
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
    // Node timeout 15 s: a stall of the machine must not fail a master over mid-test.
    let timeout = ["--cluster-node-timeout", "15000"].map(String::from);
    let cluster = RedisCluster::start_secure(&timeout, &[], false, 1);
    let dir = tempfile::tempdir().unwrap();
    let (a, ids, keys) = leasing_node(&cluster.url(), dir.path());
    let mut admitted = renewals_share_calls(&a, &ids, &keys);

    // A slot moves while the node's map still has it on its old master: the renewal call to
    // the old master cannot reach that key, which the node then renews on its own.
    let masters: Vec<usize> = (0..cluster.nodes.len())
        .filter(|&i| {
            cluster.nodes[i]
                .cli(&["INFO", "replication"])
                .contains("role:master")
        })
        .collect();
    assert_eq!(masters.len(), 3);
    spend(&a, &keys, 20, &mut admitted, false);
    cluster.move_slot_of(&cluster.a_key_hash_on(masters[0]), masters[1]);
    // The redis crate's cluster client may stall while it re-reads the slot map after the
    // first redirect, until the node replaces it (docs/SCALING.md, "Reshards"): checks
    // meanwhile fail closed, counted nowhere; then every check is answered again, and the
    // leases are renewed again.
    let failed = spend(&a, &keys, 60, &mut admitted, true);
    let before = renewals(&a).0;
    spend(&a, &keys, 60, &mut admitted, false);
    assert!(renewals(&a).0 >= before + KEYS as u64, "renewals went on");
    assert!(
        a.log_text()
            .contains("a master no longer holds keys of a renewal call"),
        "a renewal call met the moved key on its old master"
    );
    let used = used_after_leases_end(&a, &ids);
    if failed == 0 {
        assert_eq!(used, admitted, "no token lost or doubled across the move");
    } else {
        // Tokens a node held when its calls began to fail stay spent (a lease it could not
        // give back, a renewal whose answer it did not get): at most two leases a key, and
        // never a check admitted uncounted.
        let text = a.client().get("/metrics").text;
        let replaced: Vec<String> = a
            .log_text()
            .lines()
            .filter(|l| l.contains("replaced the cluster client"))
            .map(String::from)
            .collect();
        eprintln!(
            "{failed} checks failed closed; client replacements: {} {replaced:?}",
            metric_sum(&text, "quotad_store_client_replacements_total", &[])
        );
        for (u, a) in used.iter().zip(&admitted) {
            assert!(
                a <= u && *u <= a + 2 * 20,
                "used {used:?}\nadmitted {admitted:?}"
            );
        }
    }
}
