//! Retired key prefixes through the real binary on both stores: before the sunset, allowed
//! answers carry `Sunset` and `Deprecation`; after it, 401 `key_format_deprecated` naming the
//! prefix and the date (binary reason 6); restoring the prefix ends it; another node follows.

mod common;

use std::time::{Duration, Instant};

use common::redis::RedisServer;
use common::{binary_check, Client, Daemon};
use reqwest::Method;
use serde_json::json;

fn retire(c: &Client, prefix: &str, sunset: &str) -> common::Reply {
    c.admin(
        Method::PUT,
        &format!("/prefixes/{prefix}"),
        Some(json!({ "sunsetAt": sunset })),
    )
}

fn retired_prefixes_sunset_then_refuse(redis: bool) {
    let server = redis.then(RedisServer::start);
    let dir = tempfile::tempdir().unwrap();
    let d = common::start_on(server.as_ref(), dir.path(), &[]);
    let c = d.client();
    let (legacy_id, legacy) =
        c.create_key(json!({"consumer": "acme", "tier": "free", "prefix": "tb_"}));
    let (_, current) = c.create_key(json!({"consumer": "acme", "tier": "free"}));

    let r = retire(&c, "tb_", "2099-01-01T00:00:00Z");
    assert_eq!(r.status, 200, "{}", r.text);
    assert_eq!(r.body["prefix"], "tb_");
    assert_eq!(r.body["sunsetAt"], "2099-01-01T00:00:00Z");
    let deprecated_at = r.body["deprecatedAt"].as_str().unwrap().to_string();
    let list = c.admin(Method::GET, "/prefixes", None);
    assert_eq!(list.body["prefixes"][0]["prefix"], "tb_", "{}", list.text);

    // Before the sunset: allowed, announced.
    let r = c.check(Some(&legacy), &[]);
    r.assert_admitted(&legacy_id, "acme", "free");
    assert_eq!(
        r.header("sunset").as_deref(),
        Some("Thu, 01 Jan 2099 00:00:00 GMT")
    );
    let dep = r.header("deprecation").unwrap();
    let dep_s: i64 = dep.strip_prefix('@').unwrap().parse().unwrap();
    let parsed = time::OffsetDateTime::parse(
        &deprecated_at,
        &time::format_description::well_known::Rfc3339,
    )
    .unwrap();
    assert_eq!(dep_s, parsed.unix_timestamp());
    let other = c.check(Some(&current), &[]);
    assert_eq!(other.status, 200);
    assert_eq!(other.header("sunset"), None);
    assert_eq!(binary_check(d.binary, &legacy).decision, 0);

    // After it: refused, naming the prefix and the date; nothing counted.
    let r = retire(&c, "tb_", "2020-01-01T00:00:00Z");
    assert_eq!(r.status, 200, "{}", r.text);
    assert_eq!(r.body["deprecatedAt"], deprecated_at.as_str(), "kept");
    let r = c.check(Some(&legacy), &[]);
    assert_eq!(r.status, 401, "{}", r.text);
    assert_eq!(r.body["error"]["code"], "key_format_deprecated");
    let msg = r.body["error"]["message"].as_str().unwrap();
    assert!(
        msg.contains("\"tb_\"") && msg.contains("2020-01-01T00:00:00Z"),
        "{msg}"
    );
    assert!(r.header("www-authenticate").is_some());
    let w = binary_check(d.binary, &legacy);
    assert_eq!((w.decision, w.reason), (1, 6), "{w:?}");
    assert_eq!(c.check(Some(&current), &[]).status, 200);
    let m = c.get("/metrics").text;
    assert_eq!(
        common::metric_sum(&m, "quotad_unauthorized_total", &[("reason", "deprecated")]),
        2,
        "{m}"
    );
    let k = c.admin(Method::GET, &format!("/keys/{legacy_id}"), None);
    assert_eq!(
        k.body["usage"]["monthlyUsed"], 2,
        "only the checks before the sunset"
    );

    // Restored: the keys work as before. Unknown prefixes and bad bodies are refused.
    let r = c.admin(Method::DELETE, "/prefixes/tb_", None);
    assert_eq!(r.status, 200, "{}", r.text);
    assert_eq!(c.check(Some(&legacy), &[]).status, 200);
    assert_eq!(c.admin(Method::DELETE, "/prefixes/tb_", None).status, 404);
    for (path, body) in [
        ("/prefixes/tb_", json!({"sunsetAt": "soon"})),
        ("/prefixes/tb_", json!({"sunset": "2099-01-01T00:00:00Z"})),
        (
            "/prefixes/has%20space",
            json!({"sunsetAt": "2099-01-01T00:00:00Z"}),
        ),
    ] {
        let r = c.admin(Method::PUT, path, Some(body));
        assert_eq!(r.status, 400, "{path}: {}", r.text);
    }
    d.stop();
}

#[test]
fn retired_prefixes_sunset_then_refuse_on_the_memory_mapped_store() {
    retired_prefixes_sunset_then_refuse(false);
}

#[test]
fn retired_prefixes_sunset_then_refuse_on_redis() {
    retired_prefixes_sunset_then_refuse(true);
}

#[test]
fn a_prefix_retired_on_one_node_is_refused_on_another_and_survives_a_restart() {
    let server = RedisServer::start();
    let (da, db) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let a = Daemon::start(da.path(), &["--store", &server.url()]);
    let b = Daemon::start(db.path(), &["--store", &server.url()]);
    let (_, key) = a
        .client()
        .create_key(json!({"consumer": "acme", "tier": "free", "prefix": "ss_live_"}));
    assert_eq!(b.client().check(Some(&key), &[]).status, 200);
    let r = retire(&a.client(), "ss_live_", "2020-06-01T00:00:00Z");
    assert_eq!(r.status, 200, "{}", r.text);
    let deadline = Instant::now() + Duration::from_secs(5);
    while b.client().check(Some(&key), &[]).status != 401 {
        assert!(
            Instant::now() < deadline,
            "node b never applied the retirement"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    a.stop();
    b.stop();

    // On a node's own files the retirement is in catalog.json.
    let dir = tempfile::tempdir().unwrap();
    let d = Daemon::start(dir.path(), &[]);
    let (_, key) = d
        .client()
        .create_key(json!({"consumer": "acme", "tier": "free", "prefix": "ss_live_"}));
    assert_eq!(
        retire(&d.client(), "ss_live_", "2020-06-01T00:00:00Z").status,
        200
    );
    d.stop();
    let d = Daemon::start(dir.path(), &[]);
    let r = d.client().check(Some(&key), &[]);
    assert_eq!(
        r.body["error"]["code"], "key_format_deprecated",
        "{}",
        r.text
    );
    d.stop();
}

#[test]
fn the_cli_retires_lists_and_restores_prefixes() {
    let dir = tempfile::tempdir().unwrap();
    let d = Daemon::start(&dir.path().join("data"), &[]);
    let cli = |args: &[&str]| {
        let out = common::cli(&d, args);
        (
            out.status.code(),
            String::from_utf8_lossy(&out.stdout).to_string(),
        )
    };
    let (code, text) = cli(&["prefixes", "retire", "tb_", "--sunset", "90d"]);
    assert_eq!(code, Some(0), "{text}");
    assert!(text.contains("tb_"), "{text}");
    let (_, json_text) = cli(&["--json", "prefixes", "list"]);
    let v: serde_json::Value = serde_json::from_str(&json_text).unwrap();
    let sunset = time::OffsetDateTime::parse(
        v["prefixes"][0]["sunsetAt"].as_str().unwrap(),
        &time::format_description::well_known::Rfc3339,
    )
    .unwrap();
    let in_days = (sunset - time::OffsetDateTime::now_utc()).whole_days();
    assert!((89..=90).contains(&in_days), "{json_text}");
    assert_eq!(cli(&["prefixes", "restore", "tb_"]).0, Some(0));
    let (code, _) = cli(&["prefixes", "restore", "tb_"]);
    assert_eq!(code, Some(1), "an unknown prefix");
    d.stop();
}
