//! Consumer-wide counting, through the real binary on both stores: the keys of one consumer on a
//! tier counting by consumer spend one set of counters over HTTP, the binary protocol and gRPC, across
//! rotation, restart and two nodes; the consumer's usage view and CLI; the 400 and 409 refusals;
//! keys moving in and out of a group; and a group outliving its keys.

mod common;

use common::redis::RedisServer;
use common::{binary_check, Client, Daemon};
use envoy_types::pb::envoy::service::ratelimit::v3::rate_limit_response::Code;
use reqwest::Method;
use serde_json::json;

/// Tier `team`: 5 a minute, 8 a month, counted by consumer.
fn team_tier(c: &Client) {
    let r = c.admin(
        Method::PUT,
        "/tiers/team",
        Some(
            json!({"limits": [{"requests": 5, "periodSeconds": 60}], "monthlyQuota": 8,
                    "countBy": "consumer"}),
        ),
    );
    assert_eq!(r.status, 200, "{}", r.text);
    assert_eq!(r.body["countBy"], "consumer", "{}", r.text);
}

fn spend(c: &Client, key: &str, n: usize) {
    for _ in 0..n {
        let r = c.check(Some(key), &[]);
        assert_eq!(r.status, 200, "{}", r.text);
    }
}

fn consumer_usage(c: &Client, consumer: &str) -> serde_json::Value {
    let r = c.admin(Method::GET, &format!("/consumers/{consumer}/usage"), None);
    assert_eq!(r.status, 200, "{}", r.text);
    r.body
}

fn keys_of_a_consumer_share_its_counters(redis: bool, extra: &[&str]) {
    let server = redis.then(RedisServer::start);
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let d = common::start_on(server.as_ref(), &data, extra);
    let c = d.client();
    team_tier(&c);
    let (a, key_a) = c.create_key(json!({"consumer": "acme", "tier": "team"}));
    let (b, key_b) = c.create_key(json!({"consumer": "acme", "tier": "team"}));
    let (_, key_other) = c.create_key(json!({"consumer": "globex", "tier": "team"}));

    // 3 on A over HTTP, then B's figures are the shared ones; its 2nd spends the last token.
    spend(&c, &key_a, 3);
    let r = c.check(Some(&key_b), &[]);
    r.assert_admitted(&b, "acme", "team");
    assert_eq!(r.header("x-ratelimit-remaining").as_deref(), Some("1"));
    let w = binary_check(d.binary, &key_b);
    assert_eq!((w.decision, w.remaining), (0, 0), "{w:?}");
    // Spent for both keys, on every transport; another consumer is untouched.
    assert_eq!(c.check(Some(&key_a), &[]).code(), "rate_limited");
    assert_ne!(binary_check(d.binary, &key_b).decision, 0);
    let g = common::rls_check(d.grpc.unwrap(), &key_b);
    assert_eq!(g.overall_code, Code::OverLimit as i32, "{g:?}");
    assert_eq!(c.check(Some(&key_other), &[]).status, 200);

    // Each key's usage and the consumer's are the shared figures.
    let k = c.admin(Method::GET, &format!("/keys/{a}"), None);
    assert_eq!(k.body["usage"]["monthlyUsed"], 5, "{}", k.text);
    let u = consumer_usage(&c, "acme");
    assert_eq!(u["tiers"][0]["tier"], "team");
    assert_eq!(u["tiers"][0]["countBy"], "consumer");
    assert_eq!(u["tiers"][0]["keys"], json!([a, b]));
    assert_eq!(u["tiers"][0]["usage"]["monthlyUsed"], 5);
    assert_eq!(u["tiers"][0]["usage"]["monthlyQuota"], 8);
    assert_eq!(u["tiers"][0]["usage"]["limits"][0]["remaining"], 0);
    let r = c.admin(Method::GET, "/consumers/nobody/usage", None);
    assert_eq!(r.status, 404, "{}", r.text);

    // A rotated key keeps spending its consumer's counters.
    let r = c.admin(Method::POST, &format!("/keys/{a}/rotate"), None);
    assert_eq!(r.status, 200, "{}", r.text);
    let rotated = r.body["key"].as_str().unwrap().to_string();
    common::remember_secret(&rotated);
    assert_eq!(c.check(Some(&rotated), &[]).code(), "rate_limited");

    // A burst reset of one key resets the consumer's counters: 3 more reach the quota of 8,
    // which then holds for both keys.
    let r = c.admin(
        Method::POST,
        &format!("/keys/{b}/reset"),
        Some(json!({"monthly": false})),
    );
    assert_eq!(r.status, 200, "{}", r.text);
    spend(&c, &rotated, 2);
    spend(&c, &key_b, 1);
    assert_eq!(c.check(Some(&rotated), &[]).code(), "quota_exceeded");
    assert_eq!(binary_check(d.binary, &key_b).decision, 5, "quota_exceeded");
    let r = c.admin(Method::POST, "/consumers/acme/reset", None);
    assert_eq!(r.status, 200, "{}", r.text);
    let keys = r.body["keys"].as_array().unwrap();
    assert_eq!(keys.len(), 2, "{}", r.text);
    assert!(
        keys.iter().all(|k| k["usage"]["monthlyUsed"] == 0),
        "{}",
        r.text
    );
    spend(&c, &key_b, 1);

    // A key-level quota is refused on a consumer tier, at creation and by update.
    let r = c.admin(
        Method::POST,
        "/keys",
        Some(json!({"consumer": "acme", "tier": "team", "monthlyQuota": 100})),
    );
    assert_eq!(r.status, 400, "{}", r.text);
    assert!(r.text.contains("counts by consumer"), "{}", r.text);
    let r = c.admin(
        Method::PATCH,
        &format!("/keys/{b}"),
        Some(json!({"monthlyQuota": 100})),
    );
    assert_eq!(r.status, 400, "{}", r.text);
    // countBy cannot change while keys use the tier.
    let r = c.admin(
        Method::PUT,
        "/tiers/team",
        Some(json!({"limits": [{"requests": 5, "periodSeconds": 60}], "monthlyQuota": 8})),
    );
    assert_eq!(r.status, 409, "{}", r.text);
    assert!(r.text.contains("countBy"), "{}", r.text);

    // Moving in carries no tokens: a key with its own usage joins the group's counters.
    let (p, key_p) = c.create_key(json!({"consumer": "acme", "tier": "free"}));
    spend(&c, &key_p, 4);
    let r = c.admin(
        Method::PATCH,
        &format!("/keys/{p}"),
        Some(json!({"tier": "team"})),
    );
    assert_eq!(r.status, 200, "{}", r.text);
    let r = c.check(Some(&key_p), &[]);
    assert_eq!(r.header("x-ratelimit-remaining").as_deref(), Some("3"));
    assert_eq!(
        consumer_usage(&c, "acme")["tiers"][0]["usage"]["monthlyUsed"],
        2
    );
    // Moving out: the key starts its own counters afresh; the group keeps what it spent.
    let r = c.admin(
        Method::PATCH,
        &format!("/keys/{p}"),
        Some(json!({"tier": "free"})),
    );
    assert_eq!(r.status, 200, "{}", r.text);
    let r = c.check(Some(&key_p), &[]);
    assert_eq!(r.header("x-ratelimit-remaining").as_deref(), Some("59"));
    // (In lease mode a key's usage in Redis includes the lease this node took.)
    if !extra.contains(&"lease") {
        let own = c.admin(Method::GET, &format!("/keys/{p}"), None);
        assert_eq!(own.body["usage"]["monthlyUsed"], 1, "{}", own.text);
    }

    // The group outlives its keys: deleting them and making a new one does not give the
    // month back.
    for id in [&a, &b] {
        let r = c.admin(Method::DELETE, &format!("/keys/{id}"), None);
        assert_eq!(r.status, 200, "{}", r.text);
    }
    let (_, key_n) = c.create_key(json!({"consumer": "acme", "tier": "team"}));
    let r = c.check(Some(&key_n), &[]);
    assert_eq!(r.status, 200, "{}", r.text);
    assert_eq!(r.header("x-ratelimit-remaining").as_deref(), Some("2"));
    let u = consumer_usage(&c, "acme");
    let team = u["tiers"]
        .as_array()
        .unwrap()
        .iter()
        .find(|t| t["tier"] == "team")
        .unwrap();
    assert_eq!(team["usage"]["monthlyUsed"], 3, "{u}");
    let free = u["tiers"]
        .as_array()
        .unwrap()
        .iter()
        .find(|t| t["tier"] == "free")
        .unwrap();
    assert_eq!(
        (free["countBy"].as_str(), free.get("usage")),
        (Some("key"), None),
        "{u}"
    );
    // Keys, not groups, are counted and listed.
    let list = c.admin(Method::GET, "/keys?consumer=acme", None);
    assert_eq!(
        list.body["keys"].as_array().unwrap().len(),
        2,
        "{}",
        list.text
    );

    // After a crash the consumer's counters are where they were.
    if !redis {
        d.kill();
        let d = Daemon::start(&data, extra);
        let c = d.client();
        for left in ["1", "0"] {
            let r = c.check(Some(&key_n), &[]);
            assert_eq!(r.header("x-ratelimit-remaining").as_deref(), Some(left));
        }
        assert_eq!(c.check(Some(&key_n), &[]).code(), "rate_limited");
        let u = consumer_usage(&c, "acme");
        let team = u["tiers"]
            .as_array()
            .unwrap()
            .iter()
            .find(|t| t["tier"] == "team");
        assert_eq!(team.unwrap()["usage"]["monthlyUsed"], 5, "{u}");
        let h = c.get("/health");
        assert_eq!(h.body["keys"], 3, "{}", h.text);
    }
    common::assert_no_secrets_logged();
}

#[test]
fn keys_of_a_consumer_share_its_counters_on_the_memory_mapped_store() {
    keys_of_a_consumer_share_its_counters(false, &[]);
}

#[test]
fn keys_of_a_consumer_share_its_counters_on_redis() {
    keys_of_a_consumer_share_its_counters(true, &[]);
}

#[test]
fn keys_of_a_consumer_share_its_counters_on_redis_in_lease_mode() {
    keys_of_a_consumer_share_its_counters(true, &["--store-mode", "lease"]);
}

#[test]
fn two_nodes_share_a_consumers_counters() {
    let server = RedisServer::start();
    let (da, db) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let a = Daemon::start(da.path(), &["--store", &server.url()]);
    let b = Daemon::start(
        db.path(),
        &["--store", &server.url(), "--store-mode", "lease"],
    );
    let (ca, cb) = (a.client(), b.client());
    team_tier(&ca);
    let (_, key_1) = ca.create_key(json!({"consumer": "acme", "tier": "team"}));
    let (_, key_2) = cb.create_key(json!({"consumer": "acme", "tier": "team"}));
    spend(&ca, &key_1, 2);
    spend(&cb, &key_2, 2);
    let w = binary_check(a.binary, &key_2);
    assert_eq!((w.decision, w.remaining), (0, 0), "{w:?}");
    assert_eq!(cb.check(Some(&key_1), &[]).code(), "rate_limited");
    assert_eq!(ca.check(Some(&key_2), &[]).code(), "rate_limited");
    assert_eq!(
        consumer_usage(&cb, "acme")["tiers"][0]["usage"]["monthlyUsed"],
        5
    );
}

#[test]
fn the_cli_sets_consumer_tiers_and_shows_a_consumers_usage() {
    let dir = tempfile::tempdir().unwrap();
    let d = Daemon::start(&dir.path().join("data"), &[]);
    let cli = |args: &[&str]| {
        let out = common::cli(&d, args);
        let text = String::from_utf8_lossy(&out.stdout).to_string();
        let err = String::from_utf8_lossy(&out.stderr).to_string();
        (out.status.code(), text, err)
    };
    let (code, text, err) = cli(&[
        "tiers",
        "set",
        "team",
        "--limit",
        "5/1m",
        "--count-by",
        "consumer",
    ]);
    assert_eq!(code, Some(0), "{err}");
    assert!(
        text.contains("COUNT BY") && text.contains("consumer"),
        "{text}"
    );
    let c = d.client();
    let (id, key) = c.create_key(json!({"consumer": "acme", "tier": "team"}));
    c.create_key(json!({"consumer": "acme", "tier": "free"}));
    spend(&c, &key, 2);
    let (code, text, err) = cli(&["usage", "--consumer", "acme"]);
    assert_eq!(code, Some(0), "{err}");
    assert!(text.contains("counted by consumer"), "{text}");
    assert!(
        text.contains(&id) && text.contains("2 of unlimited"),
        "{text}"
    );
    assert!(text.contains("per key"), "{text}");
    let (code, text, _) = cli(&["--json", "usage", "--consumer", "acme"]);
    assert_eq!(code, Some(0));
    let v: serde_json::Value = serde_json::from_str(&text).unwrap();
    assert_eq!(v["tiers"][0]["usage"]["monthlyUsed"], 2);
    // The tier's countBy is refused while a key uses it, with the server's message.
    let (code, _, err) = cli(&["tiers", "set", "team", "--limit", "5/1m"]);
    assert_ne!(code, Some(0));
    assert!(err.contains("countBy"), "{err}");
    let (code, _, err) = cli(&["usage", "--consumer", "nobody"]);
    assert_ne!(code, Some(0));
    assert!(err.contains("no keys"), "{err}");
}
