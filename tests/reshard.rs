//! A reshard under traffic: while a slot holding keys moves between masters of a real Redis
//! Cluster, back and forth, checks keep coming to a node in exact mode and to one in lease
//! mode. Every admitted check is counted exactly once; a check is refused only as `unavailable`
//! (fail closed), which the redis crate's cluster client may cause while it re-reads the slot
//! map (docs/SCALING.md, "Reshards"); once the slot has settled, every check is admitted.

mod common;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use common::redis::RedisCluster;
use common::{metric_sum, Daemon, LEASE_20};
use quotad::protocol::client::Client as BinClient;

const KEYS: usize = 16;

/// The slot moves this many times (each waits until every node agrees on the new owner).
const MOVES: usize = 6;

/// A node on `url`, a cluster without replicas: admin changes wait for no replica.
fn node(url: &str, dir: &std::path::Path, extra: &[&str]) -> Daemon {
    let mut args = vec!["--store", url, "--redis-replica-acks", "0"];
    args.extend_from_slice(extra);
    Daemon::start(dir, &args)
}

/// What one node's traffic saw: checks admitted per key, and the refusals (key index, decision,
/// whether the slot had settled).
type Seen = (Vec<u64>, Vec<(usize, u8, bool)>);

/// CHECK_BATCH frames of every key to `d` until `stop`.
fn traffic(d: &Daemon, keys: &[String], settled: &AtomicBool, stop: &AtomicBool) -> Seen {
    common::runtime().block_on(async {
        let c = BinClient::connect_tcp(d.binary).await.unwrap();
        let checks = common::checks_of(keys);
        let (mut admitted, mut refused) = (vec![0u64; keys.len()], Vec::new());
        while !stop.load(Ordering::Relaxed) {
            for (i, r) in c.check_batch(&checks).await.unwrap().iter().enumerate() {
                match r.decision {
                    0 => admitted[i] += 1,
                    d => refused.push((i, d, settled.load(Ordering::Relaxed))),
                }
            }
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
        (admitted, refused)
    })
}

#[test]
fn checks_are_answered_and_counted_exactly_while_a_slot_moves() {
    // Masters only, node timeout 15 s: nothing here may fail a master over.
    let timeout = ["--cluster-node-timeout", "15000"].map(String::from);
    let cluster = RedisCluster::start_secure(&timeout, &[], false, 0);
    let dir = tempfile::tempdir().unwrap();
    let exact = Arc::new(node(&cluster.url(), &dir.path().join("exact"), &[]));
    let leasing = Arc::new(node(&cluster.url(), &dir.path().join("lease"), &LEASE_20));
    let c = exact.client();
    let (ids, keys) = c.roomy_keys(KEYS);
    let hash = cluster.a_key_hash_on(0);

    let (settled, stop) = (
        Arc::new(AtomicBool::new(false)),
        Arc::new(AtomicBool::new(false)),
    );
    let runs: Vec<_> = [exact.clone(), leasing.clone()]
        .into_iter()
        .map(|d| {
            let (keys, settled, stop) = (keys.clone(), settled.clone(), stop.clone());
            std::thread::spawn(move || traffic(&d, &keys, &settled, &stop))
        })
        .collect();
    std::thread::sleep(Duration::from_millis(300));
    for i in 0..MOVES {
        cluster.move_slot_of(&hash, [1, 0][i % 2]);
        std::thread::sleep(Duration::from_millis(300));
    }
    // Once both nodes reach Redis again (a stalled client replaced), every check is admitted.
    std::thread::sleep(Duration::from_millis(700));
    for d in [&exact, &leasing] {
        let deadline = std::time::Instant::now() + Duration::from_secs(20);
        while metric_sum(
            &d.client().get("/metrics").text,
            "quotad_store_reachable",
            &[],
        ) != 1
        {
            assert!(
                std::time::Instant::now() < deadline,
                "node reaches redis again"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }
    std::thread::sleep(Duration::from_millis(300));
    settled.store(true, Ordering::Relaxed);
    std::thread::sleep(Duration::from_millis(500));
    stop.store(true, Ordering::Relaxed);
    let (mut admitted, mut failed) = (vec![0u64; KEYS], vec![0u64; KEYS]);
    for (run, d) in runs.into_iter().zip([&exact, &leasing]) {
        let (got, refused) = run.join().unwrap();
        assert!(
            refused.iter().all(|&(_, d, settled)| d == 6 && !settled),
            "checks refused other than as unavailable during the moves \
             (key, decision, settled): {refused:?}; node log:\n{}",
            d.log_text()
        );
        assert!(got.iter().all(|&n| n > 0), "traffic flowed: {got:?}");
        for (a, g) in admitted.iter_mut().zip(got) {
            *a += g;
        }
        for (i, _, _) in refused {
            failed[i] += 1;
        }
    }
    // The lease node's unspent tokens go back when its leases end (TTL 300 ms).
    std::thread::sleep(Duration::from_millis(900));
    let used: Vec<u64> = ids.iter().map(|id| c.monthly_used(id)).collect();
    if failed.iter().all(|&f| f == 0) {
        assert_eq!(used, admitted, "every admitted check counted once");
    } else {
        // While calls fail, a check whose answer was lost may have been counted, and the
        // lease node's tokens stay spent (at most two leases a key): never an admitted check
        // uncounted.
        for i in 0..KEYS {
            assert!(
                admitted[i] <= used[i] && used[i] <= admitted[i] + failed[i] + 2 * 20,
                "key {i}: used {} admitted {} failed {}",
                used[i],
                admitted[i],
                failed[i]
            );
        }
    }
}
