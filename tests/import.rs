//! Keys issued elsewhere, imported by raw value or by SHA-256, through the real binary on both
//! stores: they authenticate over HTTP and the binary protocol, are listed, reset, rotated into
//! `qd_` keys, revoked and deleted like any other; refusals are 400 and 409; the index survives a
//! restart; `quotad keys import FILE` reports each line.

mod common;

use common::redis::RedisServer;
use common::{binary_check, remember_secret, Client, Daemon};
use reqwest::Method;
use serde_json::json;
use sha2::{Digest, Sha256};

fn sha256_hex(raw: &str) -> String {
    Sha256::digest(raw.as_bytes())
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// A legacy key of another product's form.
fn legacy(prefix: &str, n: u32) -> String {
    let k = format!("{prefix}{n:08}Zq7wXv3Lk9PdT2sR");
    remember_secret(&k);
    k
}

fn import(c: &Client, body: serde_json::Value) -> common::Reply {
    c.admin(Method::POST, "/keys/import", Some(body))
}

fn imported_keys_work_like_generated_ones(redis: bool) {
    let server = redis.then(RedisServer::start);
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let d = common::start_on(server.as_ref(), &data, &[]);
    let c = d.client();
    let (_, generated) = c.create_key(json!({"consumer": "acme", "tier": "pro"}));

    // By raw key: the answer has the record, never the key.
    let raw = legacy("tb_live_", 1);
    let r = import(
        &c,
        json!({"key": raw, "consumer": "acme", "tier": "free", "name": "legacy"}),
    );
    assert_eq!(r.status, 201, "{}", r.text);
    assert!(
        r.body.get("key").is_none() && !r.text.contains(&raw),
        "{}",
        r.text
    );
    assert_eq!(r.body["prefix"], &raw[..8]);
    let id = r.body["id"].as_str().unwrap().to_string();
    // By hash, for a provider that kept only SHA-256s.
    let hashed = legacy("ss_live_", 2);
    let r = import(
        &c,
        json!({"keyHash": format!("sha256:{}", sha256_hex(&hashed)), "prefix": "ss_live_..0002",
               "consumer": "beta", "tier": "pro", "scopes": ["reports:read"]}),
    );
    assert_eq!(r.status, 201, "{}", r.text);
    assert_eq!(r.body["prefix"], "ss_live_..0002");
    let hid = r.body["id"].as_str().unwrap().to_string();

    // They authenticate on every transport, with their identity; scopes hold.
    c.check(Some(&raw), &[])
        .assert_admitted(&id, "acme", "free");
    let r = c.check(None, &[("Authorization", &format!("Bearer {raw}"))]);
    r.assert_admitted(&id, "acme", "free");
    assert_eq!(r.header("x-ratelimit-remaining").as_deref(), Some("58"));
    let w = binary_check(d.binary, &raw);
    assert_eq!((w.decision, w.remaining), (0, 57), "{w:?}");
    assert_eq!(format!("key_{:016x}", w.key_id), id);
    let r = c.check(Some(&hashed), &[("X-Quota-Scope", "reports:read")]);
    r.assert_admitted(&hid, "beta", "pro");
    let r = c.check(Some(&hashed), &[("X-Quota-Scope", "billing:write")]);
    assert_eq!(r.status, 403, "{}", r.text);
    // Generated keys are untouched; an unknown key of the same form is 401.
    assert_eq!(c.check(Some(&generated), &[]).status, 200);
    let r = c.check(Some(&legacy("tb_live_", 3)), &[]);
    assert_eq!(r.status, 401, "{}", r.text);

    // Listed and shown like any key; reset like any key.
    let list = c.admin(Method::GET, "/keys?consumer=acme", None);
    assert!(
        list.text.contains(&id) && !list.text.contains(&raw),
        "{}",
        list.text
    );
    let r = c.admin(Method::POST, &format!("/keys/{id}/reset"), None);
    assert_eq!(r.body["usage"]["monthlyUsed"], 0, "{}", r.text);

    // Refusals: the same secret twice (by key or by hash), bad forms, unknown fields.
    for body in [
        json!({"key": raw, "consumer": "x", "tier": "free"}),
        json!({"keyHash": format!("sha256:{}", sha256_hex(&raw)), "prefix": "p", "consumer": "x", "tier": "free"}),
    ] {
        let r = import(&c, body);
        assert_eq!(
            (r.status, r.body["error"]["code"].as_str()),
            (409, Some("conflict")),
            "{}",
            r.text
        );
    }
    for (body, why) in [
        (
            json!({"key": "short_key_15chr", "consumer": "x", "tier": "free"}),
            "16 to 256",
        ),
        (
            json!({"key": "x".repeat(257), "consumer": "x", "tier": "free"}),
            "16 to 256",
        ),
        (
            json!({"key": "has a space in it!", "consumer": "x", "tier": "free"}),
            "visible ASCII",
        ),
        (
            json!({"key": raw, "keyHash": "sha256:00", "consumer": "x", "tier": "free"}),
            "one of them",
        ),
        (json!({"consumer": "x", "tier": "free"}), "one of them"),
        (
            json!({"keyHash": "md5:abc", "prefix": "p", "consumer": "x", "tier": "free"}),
            "sha256:",
        ),
        (
            json!({"keyHash": format!("sha256:{}", "ab".repeat(32)), "consumer": "x", "tier": "free"}),
            "prefix is required",
        ),
        (
            json!({"key": legacy("zz_", 4), "consumer": "x", "tier": "nope"}),
            "unknown tier",
        ),
        (
            json!({"key": legacy("zz_", 5), "consumer": "x", "tier": "free", "extra": 1}),
            "unknown field",
        ),
    ] {
        let r = import(&c, body);
        assert_eq!(r.status, 400, "{}", r.text);
        assert!(
            r.body["error"]["message"].as_str().unwrap().contains(why),
            "{why}: {}",
            r.text
        );
    }

    // Rotated, an imported key becomes a qd_ key; the old one works through the grace.
    let r = c.admin(
        Method::POST,
        &format!("/keys/{id}/rotate"),
        Some(json!({"graceSeconds": 3600})),
    );
    assert_eq!(r.status, 200, "{}", r.text);
    let rotated = r.body["key"].as_str().unwrap().to_string();
    remember_secret(&rotated);
    assert!(rotated.starts_with("qd_"), "{rotated}");
    c.check(Some(&rotated), &[])
        .assert_admitted(&id, "acme", "free");
    c.check(Some(&raw), &[])
        .assert_admitted(&id, "acme", "free");

    // The index outlives a restart (on Redis it lives in Redis).
    d.stop();
    let d = common::start_on(server.as_ref(), &data, &[]);
    let c = d.client();
    c.check(Some(&raw), &[])
        .assert_admitted(&id, "acme", "free");
    c.check(Some(&hashed), &[])
        .assert_admitted(&hid, "beta", "pro");

    // Revoked: 401. Deleted: 401, and the secret may be imported again.
    let r = c.admin(Method::POST, &format!("/keys/{hid}/revoke"), None);
    assert_eq!(r.status, 200, "{}", r.text);
    assert_eq!(c.check(Some(&hashed), &[]).status, 401);
    let r = c.admin(Method::DELETE, &format!("/keys/{hid}"), None);
    assert_eq!(r.status, 200, "{}", r.text);
    assert_eq!(c.check(Some(&hashed), &[]).status, 401);
    let r = import(
        &c,
        json!({"key": hashed, "consumer": "beta", "tier": "free"}),
    );
    assert_eq!(r.status, 201, "{}", r.text);
    assert_eq!(c.check(Some(&hashed), &[]).status, 200);
    d.stop();
    common::assert_no_secrets_logged();
}

#[test]
fn imported_keys_work_like_generated_ones_on_the_memory_mapped_store() {
    imported_keys_work_like_generated_ones(false);
}

#[test]
fn imported_keys_work_like_generated_ones_on_redis() {
    imported_keys_work_like_generated_ones(true);
}

#[test]
fn a_key_imported_through_one_node_works_on_another() {
    let server = RedisServer::start();
    let (da, db) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let a = Daemon::start(da.path(), &["--store", &server.url()]);
    let b = Daemon::start(db.path(), &["--store", &server.url()]);
    let raw = legacy("tb_live_", 9);
    let r = import(
        &a.client(),
        json!({"key": raw, "consumer": "acme", "tier": "free"}),
    );
    assert_eq!(r.status, 201, "{}", r.text);
    let id = r.body["id"].as_str().unwrap().to_string();
    // Node b looks imported keys up once its upkeep has seen one (within --redis-poll-ms).
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
    while b.client().check(Some(&raw), &[]).status != 200 {
        assert!(
            std::time::Instant::now() < deadline,
            "node b never found the imported key"
        );
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    b.client()
        .check(Some(&raw), &[])
        .assert_admitted(&id, "acme", "free");
    assert_eq!(binary_check(b.binary, &raw).decision, 0);
    a.stop();
    b.stop();
}

#[test]
fn keys_import_reads_json_lines_and_reports_each() {
    let dir = tempfile::tempdir().unwrap();
    let d = Daemon::start(&dir.path().join("data"), &[]);
    let (good, hashed) = (legacy("tb_live_", 21), legacy("ss_live_", 22));
    let file = dir.path().join("keys.jsonl");
    std::fs::write(
        &file,
        format!(
            "{}\n\n{}\n{}\nnot json\n",
            json!({"key": good, "consumer": "acme", "tier": "free"}),
            json!({"keyHash": format!("sha256:{}", sha256_hex(&hashed)), "prefix": "ss_live_", "consumer": "acme", "tier": "pro"}),
            json!({"key": good, "consumer": "acme", "tier": "free"}),
        ),
    )
    .unwrap();
    let out = common::cli(&d, &["keys", "import", file.to_str().unwrap()]);
    let text = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(1), "{text}");
    assert!(text.contains("line 1: imported key_"), "{text}");
    assert!(text.contains("line 3: imported key_"), "{text}");
    assert!(
        text.contains("line 4: failed:") && text.contains("409"),
        "{text}"
    );
    assert!(text.contains("line 5: failed: not JSON"), "{text}");
    assert!(text.contains("2 imported, 2 failed"), "{text}");
    let c = d.client();
    assert_eq!(c.check(Some(&good), &[]).status, 200);
    assert_eq!(c.check(Some(&hashed), &[]).status, 200);
    d.stop();
}

#[test]
fn refused_keys_cost_no_redis_call_until_a_key_is_imported() {
    let server = RedisServer::start();
    let dir = tempfile::tempdir().unwrap();
    let d = common::start_on(Some(&server), dir.path(), &[]);
    let c = d.client();
    let hgets = || -> u64 {
        let info = server.cli(&["INFO", "commandstats"]);
        info.lines()
            .find_map(|l| l.strip_prefix("cmdstat_hget:calls="))
            .and_then(|v| v.split(',').next())
            .and_then(|v| v.parse().ok())
            .unwrap_or(0)
    };
    let before = hgets();
    for i in 0..200 {
        let junk = format!("junk_{i:08}_not_a_key_at_all");
        assert_eq!(c.check(Some(&junk), &[]).status, 401);
    }
    // The catalog poll's own HGETs (one per 250 ms) are all that may have run.
    let during = hgets() - before;
    assert!(during < 50, "{during} HGETs for 200 refused keys");
    d.stop();
}
