//! Shadow mode through the real binary, on both stores and every transport: a tier with
//! `"enforce": false` (or every tier, with `serve --shadow`) answers what its limits or quota would
//! deny as allowed, marked and counted, and consumes nothing; keys and scopes stay enforced.

mod common;

use common::redis::RedisServer;
use common::rls_check;
use common::{binary_check, Client, Daemon};
use envoy_types::pb::envoy::service::ratelimit::v3::rate_limit_response::Code;
use reqwest::Method;
use serde_json::json;

/// A daemon on the memory-mapped store, or on a fresh `redis-server` (kept alive by the caller).
fn start(redis: bool, extra: &[&str]) -> (Daemon, Option<RedisServer>, tempfile::TempDir) {
    let dir = tempfile::tempdir().unwrap();
    let server = redis.then(RedisServer::start);
    (
        common::start_on(server.as_ref(), dir.path(), extra),
        server,
        dir,
    )
}

fn metric(c: &Client, name: &str, labels: &[(&str, &str)]) -> u64 {
    common::metric_sum(&c.get("/metrics").text, name, labels)
}

fn monthly_used(c: &Client, id: &str) -> u64 {
    let u = c.admin(Method::GET, &format!("/keys/{id}"), None);
    assert_eq!(u.status, 200, "{}", u.text);
    u.body["usage"]["monthlyUsed"].as_u64().unwrap()
}

fn a_shadow_tier_allows_what_it_would_deny(redis: bool) {
    let (d, _server, _dir) = start(redis, &[]);
    let c = d.client();
    let put = c.admin(
        Method::PUT,
        "/tiers/trial",
        Some(
            json!({"limits": [{"requests": 2, "periodSeconds": 60}], "monthlyQuota": 1000,
                    "scopes": ["reports:read"], "enforce": false}),
        ),
    );
    assert_eq!(put.status, 200, "{}", put.text);
    assert_eq!(put.body["enforce"], false);
    let (id, key) = c.create_key(json!({"consumer": "acme", "tier": "trial"}));

    for left in ["1", "0"] {
        let r = c.check(Some(&key), &[]);
        r.assert_admitted(&id, "acme", "trial");
        assert_eq!(r.header("x-ratelimit-remaining").as_deref(), Some(left));
        assert_eq!(r.header("x-quota-shadow"), None);
    }
    // Over the limit: allowed, marked, with the figures of the denial and no Retry-After.
    let r = c.check(Some(&key), &[]);
    r.assert_admitted(&id, "acme", "trial");
    assert_eq!(r.header("x-quota-shadow").as_deref(), Some("rate_limited"));
    assert_eq!(r.header("x-ratelimit-limit").as_deref(), Some("2"));
    assert_eq!(r.header("x-ratelimit-remaining").as_deref(), Some("0"));
    assert!(r
        .header("ratelimit")
        .unwrap()
        .starts_with("\"minute\";r=0;"));
    assert_eq!(r.header("retry-after"), None);

    let w = binary_check(d.binary, &key);
    assert_eq!((w.decision, w.shadow, w.remaining), (0, 4, 0), "{w:?}");
    assert_eq!(w.retry_after, 0);

    let g = rls_check(d.grpc.unwrap(), &key);
    assert_eq!(g.overall_code, Code::Ok as i32);
    assert!(
        g.response_headers_to_add
            .iter()
            .any(|h| h.key == "x-quota-shadow" && h.value == "rate_limited"),
        "{g:?}"
    );

    // Nothing was consumed by the three shadow denials.
    assert_eq!(monthly_used(&c, &id), 2);
    assert_eq!(
        metric(
            &c,
            "quotad_shadow_denials_total",
            &[("tier", "trial"), ("reason", "rate_limited")]
        ),
        3
    );
    assert_eq!(
        metric(
            &c,
            "quotad_tier_checks_total",
            &[("tier", "trial"), ("decision", "allowed")]
        ),
        5
    );

    // The tier is a label of the check counters, and its keys are counted (on Redis, as of the
    // node's last poll).
    assert_eq!(
        metric(
            &c,
            "quotad_checks_total",
            &[
                ("transport", "binary"),
                ("tier", "trial"),
                ("decision", "allowed")
            ]
        ),
        1
    );
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
    while metric(&c, "quotad_tier_keys", &[("tier", "trial")]) != 1 {
        assert!(std::time::Instant::now() < deadline, "quotad_tier_keys");
        std::thread::sleep(std::time::Duration::from_millis(50));
    }

    // Keys and scopes are enforced in shadow mode.
    assert_eq!(c.check(Some("qd_not_a_key"), &[]).status, 401);
    let r = c.check(Some(&key), &[("X-Quota-Scope", "billing:write")]);
    assert_eq!((r.status, r.code()), (403, "plan_required"), "{}", r.text);

    // Enforcing again: the same key is now refused.
    let put = c.admin(
        Method::PUT,
        "/tiers/trial",
        Some(
            json!({"limits": [{"requests": 2, "periodSeconds": 60}], "monthlyQuota": 1000,
                    "scopes": ["reports:read"]}),
        ),
    );
    assert_eq!(put.status, 200, "{}", put.text);
    assert_eq!(
        put.body.get("enforce"),
        None,
        "enforcing is the default, not shown"
    );
    let r = c.check(Some(&key), &[]);
    assert_eq!((r.status, r.code()), (429, "rate_limited"), "{}", r.text);
    assert_eq!(r.header("x-quota-shadow"), None);
    assert_eq!(binary_check(d.binary, &key).decision, 4);
    d.stop();
}

fn serve_shadow_puts_every_tier_in_shadow_mode(redis: bool) {
    let (d, _server, _dir) = start(redis, &["--shadow"]);
    let c = d.client();
    let put = c.admin(
        Method::PUT,
        "/tiers/tiny",
        Some(json!({"limits": [{"requests": 100, "periodSeconds": 60}], "monthlyQuota": 1})),
    );
    assert_eq!(put.status, 200, "{}", put.text);
    let (id, key) = c.create_key(json!({"consumer": "acme", "tier": "tiny"}));
    c.check(Some(&key), &[])
        .assert_admitted(&id, "acme", "tiny");
    let r = c.check(Some(&key), &[]);
    r.assert_admitted(&id, "acme", "tiny");
    assert_eq!(
        r.header("x-quota-shadow").as_deref(),
        Some("quota_exceeded")
    );
    assert_eq!(r.header("x-ratelimit-remaining").as_deref(), Some("0"));
    let w = binary_check(d.binary, &key);
    assert_eq!((w.decision, w.shadow), (0, 5), "{w:?}");
    assert_eq!(monthly_used(&c, &id), 1);
    assert_eq!(
        metric(
            &c,
            "quotad_shadow_denials_total",
            &[("tier", "tiny"), ("reason", "quota_exceeded")]
        ),
        2
    );
    d.stop();
}

#[test]
fn a_shadow_tier_allows_what_it_would_deny_on_the_memory_mapped_store() {
    a_shadow_tier_allows_what_it_would_deny(false);
}

#[test]
fn a_shadow_tier_allows_what_it_would_deny_on_redis() {
    a_shadow_tier_allows_what_it_would_deny(true);
}

#[test]
fn serve_shadow_puts_every_tier_in_shadow_mode_on_the_memory_mapped_store() {
    serve_shadow_puts_every_tier_in_shadow_mode(false);
}

#[test]
fn serve_shadow_puts_every_tier_in_shadow_mode_on_redis() {
    serve_shadow_puts_every_tier_in_shadow_mode(true);
}

#[test]
fn tiers_files_take_enforce_false() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("tiers.toml");
    std::fs::write(
        &file,
        "[tiers.trial]\nlimits = [{ requests = 1, period = \"1m\" }]\nenforce = false\n",
    )
    .unwrap();
    let d = Daemon::start(
        &dir.path().join("data"),
        &["--tiers", file.to_str().unwrap()],
    );
    let c = d.client();
    let t = c.admin(Method::GET, "/tiers/trial", None);
    assert_eq!(t.body["enforce"], false, "{}", t.text);
    let (_, key) = c.create_key(json!({"consumer": "acme", "tier": "trial"}));
    assert_eq!(c.check(Some(&key), &[]).status, 200);
    let r = c.check(Some(&key), &[]);
    assert_eq!(r.status, 200);
    assert_eq!(r.header("x-quota-shadow").as_deref(), Some("rate_limited"));
    d.stop();
}

#[test]
fn a_shadow_tier_allows_what_it_would_deny_on_redis_in_lease_mode() {
    let (d, _server, _dir) = start(true, &["--store-mode", "lease"]);
    let c = d.client();
    let put = c.admin(
        Method::PUT,
        "/tiers/trial",
        Some(json!({"limits": [{"requests": 3, "periodSeconds": 60}], "enforce": false})),
    );
    assert_eq!(put.status, 200, "{}", put.text);
    let (id, key) = c.create_key(json!({"consumer": "acme", "tier": "trial"}));
    for _ in 0..3 {
        let r = c.check(Some(&key), &[]);
        r.assert_admitted(&id, "acme", "trial");
        assert_eq!(r.header("x-quota-shadow"), None);
    }
    for _ in 0..2 {
        let r = c.check(Some(&key), &[]);
        r.assert_admitted(&id, "acme", "trial");
        assert_eq!(r.header("x-quota-shadow").as_deref(), Some("rate_limited"));
    }
    assert_eq!(binary_check(d.binary, &key).shadow, 4);
    d.stop();
}
