//! An operator's reset of counters, through the real binary on both stores: a key's burst
//! windows and/or month set back, a consumer's keys reset at once, the CLI, the log line, the
//! refusals, and a reset that survives a crash.

mod common;

use std::net::SocketAddr;

use common::redis::RedisServer;
use common::{Client, Daemon};
use reqwest::Method;
use serde_json::json;

fn binary_allowed(addr: SocketAddr, key: &str) -> bool {
    common::binary_check(addr, key).decision == 0
}

/// A tier of 3 a minute and 5 a month, and a key on it of consumer `consumer`.
fn tight_key(c: &Client, consumer: &str) -> (String, String) {
    let put = c.admin(
        Method::PUT,
        "/tiers/tight",
        Some(json!({"limits": [{"requests": 3, "periodSeconds": 60}], "monthlyQuota": 5})),
    );
    assert_eq!(put.status, 200, "{}", put.text);
    c.create_key(json!({"consumer": consumer, "tier": "tight"}))
}

fn spend(c: &Client, key: &str, n: usize) {
    for _ in 0..n {
        assert_eq!(c.check(Some(key), &[]).status, 200);
    }
}

fn resets_set_back_the_burst_the_month_or_both(redis: bool) {
    let server = redis.then(RedisServer::start);
    let dir = tempfile::tempdir().unwrap();
    let d = common::start_on(server.as_ref(), dir.path(), &[]);
    let c = d.client();
    let (id, key) = tight_key(&c, "acme");

    spend(&c, &key, 3);
    assert_eq!(c.check(Some(&key), &[]).code(), "rate_limited");
    assert!(!binary_allowed(d.binary, &key));

    // Burst only: the window is full again, the month keeps its 3.
    let r = c.admin(
        Method::POST,
        &format!("/keys/{id}/reset"),
        Some(json!({"monthly": false})),
    );
    assert_eq!(r.status, 200, "{}", r.text);
    assert_eq!(r.body["id"], id.as_str());
    assert_eq!(r.body["usage"]["limits"][0]["remaining"], 3);
    assert_eq!(r.body["usage"]["monthlyUsed"], 3);
    assert!(binary_allowed(d.binary, &key));
    spend(&c, &key, 1);
    // 5 of 5 used this month now.
    assert_eq!(c.check(Some(&key), &[]).code(), "quota_exceeded");

    // Monthly only: the month is back to 0; the burst window keeps what was spent.
    let r = c.admin(
        Method::POST,
        &format!("/keys/{id}/reset"),
        Some(json!({"burst": false})),
    );
    assert_eq!(r.status, 200, "{}", r.text);
    assert_eq!(r.body["usage"]["monthlyUsed"], 0);
    assert_eq!(r.body["usage"]["limits"][0]["remaining"], 1);
    spend(&c, &key, 1);
    assert_eq!(c.check(Some(&key), &[]).code(), "rate_limited");

    // No body: both.
    let r = c.admin(Method::POST, &format!("/keys/{id}/reset"), None);
    assert_eq!(r.status, 200, "{}", r.text);
    assert_eq!(r.body["usage"]["monthlyUsed"], 0);
    assert_eq!(r.body["usage"]["limits"][0]["remaining"], 3);
    let ok = c.check(Some(&key), &[]);
    assert_eq!(ok.status, 200);
    assert_eq!(ok.header("x-ratelimit-remaining").as_deref(), Some("2"));

    // Refusals: nothing to reset, bad JSON, unknown fields, unknown key, wrong method.
    for (body, want) in [
        (
            json!({"burst": false, "monthly": false}),
            "nothing to reset",
        ),
        (json!({"burst": "yes"}), "invalid type"),
        (json!({"everything": true}), "unknown field"),
    ] {
        let r = c.admin(Method::POST, &format!("/keys/{id}/reset"), Some(body));
        assert_eq!(r.status, 400, "{}", r.text);
        assert!(
            r.body["error"]["message"].as_str().unwrap().contains(want),
            "{}",
            r.text
        );
    }
    let r = c.admin(Method::POST, "/keys/key_00000000000000ff/reset", None);
    assert_eq!(r.status, 404, "{}", r.text);
    let r = c.admin(Method::GET, &format!("/keys/{id}/reset"), None);
    assert_eq!(r.status, 405, "{}", r.text);

    // Each reset is logged with who, what and the usage before; the raw key is not.
    let logs = d.log_text();
    let lines: Vec<&str> = logs
        .lines()
        .filter(|l| l.contains("counters reset"))
        .collect();
    assert_eq!(lines.len(), 3, "{logs}");
    assert!(lines[0].contains("\"who\":\"admin\""), "{}", lines[0]);
    assert!(lines[0].contains(&id), "{}", lines[0]);
    assert!(
        lines[0].contains("\"burst\":true") && lines[0].contains("\"monthly\":false"),
        "{}",
        lines[0]
    );
    assert!(
        lines[0].contains("monthly 3 used; 0/60s left"),
        "{}",
        lines[0]
    );
    assert!(!logs.contains(&key));
    d.stop();
}

#[test]
fn resets_set_back_the_burst_the_month_or_both_on_the_memory_mapped_store() {
    resets_set_back_the_burst_the_month_or_both(false);
}

#[test]
fn resets_set_back_the_burst_the_month_or_both_on_redis() {
    resets_set_back_the_burst_the_month_or_both(true);
}

fn a_consumer_reset_covers_each_of_its_keys(redis: bool) {
    let server = redis.then(RedisServer::start);
    let dir = tempfile::tempdir().unwrap();
    let d = common::start_on(server.as_ref(), dir.path(), &[]);
    let c = d.client();
    let (a, ka) = tight_key(&c, "acme corp");
    let (b, kb) = c.create_key(json!({"consumer": "acme corp", "tier": "tight"}));
    let (_, kc) = c.create_key(json!({"consumer": "other", "tier": "tight"}));
    for k in [&ka, &kb, &kc] {
        spend(&c, k, 3);
    }
    let r = c.admin(Method::POST, "/consumers/acme%20corp/reset", None);
    assert_eq!(r.status, 200, "{}", r.text);
    assert_eq!(r.body["consumer"], "acme corp");
    let mut ids: Vec<&str> = r.body["keys"]
        .as_array()
        .unwrap()
        .iter()
        .map(|k| k["id"].as_str().unwrap())
        .collect();
    ids.sort();
    let mut want = vec![a.as_str(), b.as_str()];
    want.sort();
    assert_eq!(ids, want);
    for k in r.body["keys"].as_array().unwrap() {
        assert_eq!(k["usage"]["monthlyUsed"], 0, "{k}");
    }
    assert_eq!(c.check(Some(&ka), &[]).status, 200);
    assert_eq!(c.check(Some(&kb), &[]).status, 200);
    assert_eq!(
        c.check(Some(&kc), &[]).code(),
        "rate_limited",
        "another consumer"
    );
    let r = c.admin(Method::POST, "/consumers/nobody/reset", None);
    assert_eq!(r.status, 404, "{}", r.text);
    d.stop();
}

#[test]
fn a_consumer_reset_covers_each_of_its_keys_on_the_memory_mapped_store() {
    a_consumer_reset_covers_each_of_its_keys(false);
}

#[test]
fn a_consumer_reset_covers_each_of_its_keys_on_redis() {
    a_consumer_reset_covers_each_of_its_keys(true);
}

#[test]
fn the_cli_resets_keys_and_consumers() {
    let dir = tempfile::tempdir().unwrap();
    let d = Daemon::start(&dir.path().join("data"), &[]);
    let c = d.client();
    let (id, key) = tight_key(&c, "acme");
    spend(&c, &key, 3);
    let cli = |args: &[&str]| {
        let out = common::cli(&d, args);
        assert!(out.status.success(), "{out:?}");
        String::from_utf8(out.stdout).unwrap()
    };
    let v: serde_json::Value =
        serde_json::from_str(&cli(&["--json", "keys", "reset", &id, "--burst-only"])).unwrap();
    assert_eq!(v["usage"]["monthlyUsed"], 3);
    assert_eq!(v["usage"]["limits"][0]["remaining"], 3);
    let v: serde_json::Value =
        serde_json::from_str(&cli(&["--json", "keys", "reset", &id, "--monthly-only"])).unwrap();
    assert_eq!(v["usage"]["monthlyUsed"], 0);
    spend(&c, &key, 2);
    let text = cli(&["consumers", "reset", "acme"]);
    assert!(text.contains(&id) && text.contains("0 of 5"), "{text}");
    d.stop();
}

#[test]
fn a_reset_survives_a_crash() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let d = Daemon::start(&data, &[]);
    let c = d.client();
    let (id, key) = tight_key(&c, "acme");
    spend(&c, &key, 3);
    let r = c.admin(Method::POST, &format!("/keys/{id}/reset"), None);
    assert_eq!(r.status, 200, "{}", r.text);
    spend(&c, &key, 1);
    // SIGKILL right after: no shutdown flush.
    d.kill();
    let d = Daemon::start(&data, &[]);
    let c = d.client();
    let k = c.admin(Method::GET, &format!("/keys/{id}"), None);
    assert_eq!(k.body["usage"]["monthlyUsed"], 1, "{}", k.text);
    assert_eq!(k.body["usage"]["limits"][0]["remaining"], 2, "{}", k.text);
    d.stop();
}
