//! A real process checks keys in a loop, reporting each attempt and each admission on a pipe, and
//! is SIGKILLed mid-run. After reopening the data directory the stored usage of every key must be
//! at least what the child reported admitted and at most what it attempted.

mod common;

use common::blocking::Blocking;
use std::io::{BufRead, BufReader, Write};
use std::process::{Command, Stdio};
use std::sync::Arc;

use quotad::keys::NewKey;
use quotad::tiers::{LimitSpec, TierSpec};
use quotad::{LocalOptions, LocalStore, QuantaClock};

const KEYS: usize = 6;
const QUOTA: u64 = 5_000;

/// The child's body; does nothing unless started by `sigkill_mid_run_loses_no_counted_request`.
#[test]
#[ignore = "run as a child process by sigkill_mid_run_loses_no_counted_request"]
fn crash_child_loop() {
    let Ok(dir) = std::env::var("QUOTAD_CRASH_DIR") else {
        return;
    };
    let raws: Vec<String> = std::fs::read_to_string(format!("{dir}.keys"))
        .unwrap()
        .lines()
        .map(str::to_string)
        .collect();
    let engine = Blocking::new(
        LocalStore::open(LocalOptions::new(&dir), Arc::new(QuantaClock::new())).unwrap(),
    );
    let mut out = std::io::stdout().lock();
    // libtest has printed "test crash_child_loop ... " without a newline: end that line first.
    writeln!(out).unwrap();
    for i in 0.. {
        let k = i % raws.len();
        // Reported before the check: "attempted" includes a check cut short by the kill.
        writeln!(out, "try {k}").unwrap();
        out.flush().unwrap();
        if engine.check(Some(&raws[k]), None, 1).verdict.is_allowed() {
            writeln!(out, "ok {k}").unwrap();
            out.flush().unwrap();
        }
    }
}

#[test]
fn sigkill_mid_run_loses_no_counted_request() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("data");
    let (ids, raws) = {
        let e = Blocking::new(
            LocalStore::open(LocalOptions::new(&dir), Arc::new(QuantaClock::new())).unwrap(),
        );
        e.put_tier(TierSpec {
            name: "crash".into(),
            limits: vec![LimitSpec {
                requests: 1_000_000_000,
                period_seconds: 1,
            }],
            monthly_quota: Some(QUOTA),
            scopes: None,
            enforce: true,
            count_by: Default::default(),
        })
        .unwrap();
        let keys: Vec<_> = (0..KEYS)
            .map(|_| {
                e.create_key(NewKey {
                    consumer: "crash".into(),
                    tier: "crash".into(),
                    ..Default::default()
                })
                .unwrap()
            })
            .collect();
        (
            keys.iter().map(|k| k.info.id).collect::<Vec<_>>(),
            keys.iter().map(|k| k.raw.clone()).collect::<Vec<_>>(),
        )
    };
    std::fs::write(format!("{}.keys", dir.display()), raws.join("\n")).unwrap();

    for round in 0..3 {
        let mut child = Command::new(std::env::current_exe().unwrap())
            .args([
                "crash_child_loop",
                "--exact",
                "--ignored",
                "--nocapture",
                "--test-threads=1",
            ])
            .env("QUOTAD_CRASH_DIR", &dir)
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let stdout = child.stdout.take().unwrap();
        let mut lines = BufReader::new(stdout).lines();
        let mut attempted = [0u64; KEYS];
        let mut admitted = [0u64; KEYS];
        // Kill at a different point each round, while the child is still admitting.
        let kill_after = 300 + round * 350;
        let mut seen_ok = 0;
        let mut seen_try = 0;
        for line in lines.by_ref() {
            let line = line.unwrap();
            if let Some(k) = line.strip_prefix("try ") {
                attempted[k.parse::<usize>().unwrap()] += 1;
                seen_try += 1;
            } else if let Some(k) = line.strip_prefix("ok ") {
                admitted[k.parse::<usize>().unwrap()] += 1;
                seen_ok += 1;
            }
            // Kill while it is admitting; the try bound only guards against a child that stopped
            // admitting (it never should before the quota, which is far away).
            if seen_ok == kill_after || seen_try == 4 * kill_after {
                child.kill().unwrap(); // SIGKILL
                break;
            }
        }
        assert_eq!(
            seen_ok, kill_after,
            "the child must still be admitting when killed"
        );
        // Whatever the child wrote before it died is still in the pipe.
        for line in lines {
            let Ok(line) = line else { break };
            if let Some(k) = line.strip_prefix("try ") {
                attempted[k.parse::<usize>().unwrap()] += 1;
            } else if let Some(k) = line.strip_prefix("ok ") {
                admitted[k.parse::<usize>().unwrap()] += 1;
            }
        }
        child.wait().unwrap();

        let e = Blocking::new(
            LocalStore::open(LocalOptions::new(&dir), Arc::new(QuantaClock::new())).unwrap(),
        );
        for k in 0..KEYS {
            let used = e.usage(ids[k]).unwrap().monthly_used;
            // Counts accumulate across rounds: compare with the previous rounds' stored total.
            let before = if round == 0 { 0 } else { prior(k) };
            assert!(
                used >= before + admitted[k],
                "round {round} key {k}: stored {used} < reported admitted {} (+{before})",
                admitted[k]
            );
            assert!(
                used <= (before + attempted[k]).min(QUOTA),
                "round {round} key {k}: stored {used} > attempted {} (+{before})",
                attempted[k]
            );
            set_prior(k, used);
        }
        drop(e);
    }
}

thread_local! {
    static PRIOR: std::cell::RefCell<[u64; KEYS]> = const { std::cell::RefCell::new([0; KEYS]) };
}
fn prior(k: usize) -> u64 {
    PRIOR.with(|p| p.borrow()[k])
}
fn set_prior(k: usize, v: u64) {
    PRIOR.with(|p| p.borrow_mut()[k] = v)
}
