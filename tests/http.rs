//! The HTTP contract, through the real `quotad serve` binary and a real HTTP client.

mod common;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use common::Daemon;
use reqwest::Method;
use serde_json::json;

fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

use common::seconds_to_next_month;

#[test]
fn an_allowed_check_returns_identity_and_every_rate_limit_header() {
    let dir = tempfile::tempdir().unwrap();
    let d = Daemon::start(dir.path(), &[]);
    let c = d.client();
    let (id, key) = c.create_key(json!({"consumer": "acme", "tier": "free"}));
    let r = c.check(Some(&key), &[]);
    r.assert_admitted(&id, "acme", "free");
    assert_eq!(r.header_u64("x-ratelimit-limit"), 60);
    assert_eq!(r.header_u64("x-ratelimit-remaining"), 59);
    let reset = r.header_u64("x-ratelimit-reset");
    assert!(
        reset >= now() && reset <= now() + 61,
        "reset {reset} is epoch seconds"
    );
    let month = seconds_to_next_month();
    assert_eq!(
        r.header("ratelimit-policy").unwrap(),
        format!(
            "\"minute\";q=60;w=60, \"hour\";q=1000;w=3600, \"month\";q=10000;w={}",
            r.header("ratelimit-policy")
                .unwrap()
                .rsplit("w=")
                .next()
                .unwrap()
        )
    );
    let rl = r.header("ratelimit").unwrap();
    assert!(rl.starts_with("\"minute\";r=59;t="), "{rl}");
    assert!(rl.contains("\"hour\";r=999;t="), "{rl}");
    let t: u64 = rl.rsplit("t=").next().unwrap().parse().unwrap();
    assert!(t.abs_diff(month) <= 2, "month reset {t} vs {month}");
    assert!(r.header("x-request-id").is_some());
    assert!(r.header("retry-after").is_none());
}

#[test]
fn keys_are_read_from_bearer_and_configured_headers() {
    let dir = tempfile::tempdir().unwrap();
    let d = Daemon::start(dir.path(), &["--key-header", "X-Agent-API-Key"]);
    let c = d.client();
    let (_, key) = c.create_key(json!({"consumer": "agent", "tier": "pro", "prefix": "ak_"}));
    assert!(key.starts_with("ak_"));
    let r = c.check(None, &[("Authorization", &format!("Bearer {key}"))]);
    assert_eq!(r.status, 200);
    let r = c.check(None, &[("X-Agent-API-Key", &key)]);
    assert_eq!(r.status, 200);
    let r = c.check(None, &[("Authorization", &format!("Basic {key}"))]);
    assert_eq!(r.status, 401);
    // Any method and any path below /v1/check.
    let r = c
        .http
        .post(format!("{}/v1/check/api/v1/policies?x=1", c.base))
        .header("X-API-Key", &key)
        .send()
        .unwrap();
    assert_eq!(r.status(), 200);
}

#[test]
fn unauthorized_keys_all_get_the_same_401_envelope() {
    let dir = tempfile::tempdir().unwrap();
    let d = Daemon::start(dir.path(), &[]);
    let c = d.client();
    let (id, key) = c.create_key(json!({"consumer": "acme", "tier": "default"}));
    let (_, expiring) = c.create_key(json!({"consumer": "acme", "tier": "default",
        "expiresAt": time::OffsetDateTime::from_unix_timestamp(now() as i64 + 2).unwrap()
            .format(&time::format_description::well_known::Rfc3339).unwrap()}));
    let mut forged = key.clone();
    forged.pop();
    forged.push(if key.ends_with('A') { 'B' } else { 'A' });
    let revoked = {
        let (rid, rk) = c.create_key(json!({"consumer": "acme", "tier": "default"}));
        assert_eq!(c.check(Some(&rk), &[]).status, 200);
        let r = c.admin(Method::POST, &format!("/keys/{rid}/revoke"), None);
        assert_eq!(r.status, 200);
        assert_eq!(r.body["revoked"], true);
        rk
    };
    assert_eq!(c.check(Some(&expiring), &[]).status, 200);
    std::thread::sleep(Duration::from_millis(2100));
    for presented in [
        None,
        Some("garbage"),
        Some(forged.as_str()),
        Some(revoked.as_str()),
        Some(expiring.as_str()),
    ] {
        let r = c.check(presented, &[("x-request-id", "req-123")]);
        assert_eq!(r.status, 401, "{presented:?}");
        assert_eq!(
            r.body,
            json!({"error": {"code": "unauthorized", "message": "Missing or invalid API key", "requestId": "req-123"}})
        );
        assert_eq!(r.header("x-request-id").as_deref(), Some("req-123"));
    }
    assert_eq!(c.check(Some(&key), &[]).status, 200, "{id} still works");
    // The reason reaches the metrics.
    let m = c.get("/metrics").text;
    for reason in ["missing", "malformed", "unknown", "revoked", "expired"] {
        assert!(
            m.contains(&format!(
                "quotad_unauthorized_total{{transport=\"http\",reason=\"{reason}\"}} 1"
            )),
            "{reason} not counted:\n{m}"
        );
    }
}

#[test]
fn missing_scopes_are_403_forbidden_and_plan_scopes_are_403_plan_required() {
    let dir = tempfile::tempdir().unwrap();
    let d = Daemon::start(dir.path(), &[]);
    let c = d.client();
    let r = c.admin(Method::PUT, "/tiers/basic", Some(json!({"limits": [{"requests": 100, "periodSeconds": 60}], "scopes": ["insights:read", "brands:read"]})));
    assert_eq!(r.status, 200, "{}", r.text);
    let (_, scoped) =
        c.create_key(json!({"consumer": "c", "tier": "basic", "scopes": ["brands:read"]}));
    let (_, open) = c.create_key(json!({"consumer": "c", "tier": "basic"}));
    let r = c.check(Some(&scoped), &[("X-Quota-Scope", "insights:read")]);
    assert_eq!(r.status, 403);
    assert_eq!(r.code(), "forbidden");
    assert_eq!(
        r.body["error"]["message"],
        "API key lacks required scope: insights:read"
    );
    assert_eq!(
        c.check(Some(&scoped), &[("X-Quota-Scope", "brands:read")])
            .status,
        200
    );
    let r = c.check(Some(&open), &[("X-Quota-Scope", "governance:write")]);
    assert_eq!(r.status, 403);
    assert_eq!(r.code(), "plan_required");
    assert_eq!(
        r.body["error"]["message"],
        "Feature requires a higher plan tier"
    );
}

#[test]
fn a_spent_burst_limit_is_429_with_retry_after_and_headers() {
    let dir = tempfile::tempdir().unwrap();
    let d = Daemon::start(dir.path(), &[]);
    let c = d.client();
    let r = c.admin(
        Method::PUT,
        "/tiers/slow",
        Some(json!({"limits": [{"requests": 3, "periodSeconds": 60}]})),
    );
    assert_eq!(r.status, 200);
    let (_, key) = c.create_key(json!({"consumer": "c", "tier": "slow"}));
    for i in 0..3 {
        let r = c.check(Some(&key), &[]);
        assert_eq!(r.status, 200);
        assert_eq!(r.header_u64("x-ratelimit-remaining"), 2 - i);
    }
    let r = c.check(Some(&key), &[]);
    assert_eq!(r.status, 429);
    assert_eq!(r.code(), "rate_limited");
    assert_eq!(
        r.body["error"]["message"],
        "Rate limit exceeded: 3 per minute"
    );
    let ra = r.header_u64("retry-after");
    assert!((1..=20).contains(&ra), "one token every 20 s: {ra}");
    assert_eq!(r.header_u64("x-ratelimit-limit"), 3);
    assert_eq!(r.header_u64("x-ratelimit-remaining"), 0);
    assert!(r
        .header("ratelimit")
        .unwrap()
        .starts_with("\"minute\";r=0;t="));
    // Cost: 400 outside 1..=1000000, and a cost above what remains is refused whole.
    for bad in ["0", "-1", "abc", "1000001", "1.5"] {
        let r = c.check(Some(&key), &[("X-Quota-Cost", bad)]);
        assert_eq!(r.status, 400, "cost {bad}");
        assert_eq!(r.code(), "bad_request");
    }
}

#[test]
fn a_spent_monthly_quota_is_429_until_the_first_of_next_month() {
    let dir = tempfile::tempdir().unwrap();
    let d = Daemon::start(dir.path(), &[]);
    let c = d.client();
    let (id, key) = c.create_key(json!({"consumer": "c", "tier": "pro", "monthlyQuota": 5}));
    assert_eq!(c.check(Some(&key), &[("X-Quota-Cost", "3")]).status, 200);
    let r = c.check(Some(&key), &[("X-Quota-Cost", "3")]);
    assert_eq!(r.status, 429);
    assert_eq!(r.code(), "quota_exceeded");
    assert_eq!(r.body["error"]["message"], "Monthly quota exceeded");
    let ra = r.header_u64("retry-after");
    assert!(
        ra.abs_diff(seconds_to_next_month()) <= 2,
        "retry-after {ra}"
    );
    assert_eq!(r.header_u64("x-ratelimit-limit"), 5);
    assert_eq!(r.header_u64("x-ratelimit-remaining"), 2);
    assert_eq!(c.check(Some(&key), &[("X-Quota-Cost", "2")]).status, 200);
    let u = c.admin(Method::GET, &format!("/keys/{id}"), None);
    assert_eq!(u.body["usage"]["monthlyUsed"], 5);
    assert_eq!(u.body["usage"]["monthlyQuota"], 5);
    assert!(u.body["usage"]["lastUsedAt"].is_string());
    assert_eq!(u.body["usage"]["limits"][0]["requests"], 300);
    assert_eq!(u.body["usage"]["limits"][0]["periodSeconds"], 60);
    assert!(
        u.body.get("key").is_none(),
        "no raw key outside create/rotate"
    );
}

#[test]
fn rotation_takes_effect_at_once_with_grace_for_the_old_key() {
    let dir = tempfile::tempdir().unwrap();
    let d = Daemon::start(dir.path(), &[]);
    let c = d.client();
    let (id, old) = c.create_key(json!({"consumer": "c", "tier": "default"}));
    for _ in 0..10 {
        assert_eq!(c.check(Some(&old), &[]).status, 200);
    }
    let r = c.admin(
        Method::POST,
        &format!("/keys/{id}/rotate"),
        Some(json!({"graceSeconds": 2})),
    );
    assert_eq!(r.status, 200, "{}", r.text);
    let new = r.body["key"].as_str().unwrap().to_string();
    assert_eq!(r.body["id"], id.as_str());
    let r = c.check(Some(&new), &[]);
    assert_eq!(r.status, 200);
    assert_eq!(
        r.header_u64("x-ratelimit-remaining"),
        89,
        "usage carried over"
    );
    assert_eq!(c.check(Some(&old), &[]).status, 200, "old key inside grace");
    std::thread::sleep(Duration::from_millis(2100));
    assert_eq!(c.check(Some(&old), &[]).status, 401, "old key after grace");
    assert_eq!(c.check(Some(&new), &[]).status, 200);
    // Default grace is 0: the previous key stops at once.
    let r = c.admin(Method::POST, &format!("/keys/{id}/rotate"), None);
    let newer = r.body["key"].as_str().unwrap().to_string();
    assert_eq!(c.check(Some(&new), &[]).status, 401);
    assert_eq!(c.check(Some(&newer), &[]).status, 200);
}

#[test]
fn a_tier_changed_by_put_applies_to_the_next_check() {
    let dir = tempfile::tempdir().unwrap();
    let d = Daemon::start(dir.path(), &[]);
    let c = d.client();
    c.admin(
        Method::PUT,
        "/tiers/t",
        Some(json!({"limits": [{"requests": 2, "periodSeconds": 3600}]})),
    );
    let (_, key) = c.create_key(json!({"consumer": "c", "tier": "t"}));
    assert_eq!(c.check(Some(&key), &[]).status, 200);
    assert_eq!(c.check(Some(&key), &[]).status, 200);
    assert_eq!(c.check(Some(&key), &[]).status, 429);
    let r = c.admin(
        Method::PUT,
        "/tiers/t",
        Some(json!({"limits": [{"requests": 10, "periodSeconds": 3600}], "monthlyQuota": 1000})),
    );
    assert_eq!(r.status, 200);
    let r = c.check(Some(&key), &[]);
    assert_eq!(r.status, 200, "no restart needed");
    assert_eq!(r.header_u64("x-ratelimit-limit"), 10);
    let tiers = c.admin(Method::GET, "/tiers", None);
    let t = tiers.body["tiers"]
        .as_array()
        .unwrap()
        .iter()
        .find(|t| t["name"] == "t")
        .unwrap()
        .clone();
    assert_eq!(
        t,
        json!({"name": "t", "limits": [{"requests": 10, "periodSeconds": 3600}], "monthlyQuota": 1000, "scopes": null})
    );
    let r = c.admin(Method::DELETE, "/tiers/t", None);
    assert_eq!(r.status, 409);
    assert_eq!(r.code(), "conflict");
    assert_eq!(c.admin(Method::DELETE, "/tiers/pro", None).status, 200);
    assert_eq!(c.admin(Method::DELETE, "/tiers/pro", None).status, 404);
}

#[test]
fn admin_api_refuses_bad_tokens_bad_json_and_unknown_things() {
    let dir = tempfile::tempdir().unwrap();
    let d = Daemon::start(dir.path(), &[]);
    let c = d.client();
    let r = c
        .http
        .get(format!("{}/admin/v1/keys", c.base))
        .send()
        .unwrap();
    assert_eq!(r.status(), 401);
    let r = c
        .http
        .get(format!("{}/admin/v1/keys", c.base))
        .bearer_auth("wrong")
        .send()
        .unwrap();
    assert_eq!(r.status(), 401);
    let body: serde_json::Value = r.json().unwrap();
    assert_eq!(body["error"]["code"], "unauthorized");

    let post = |body: &str| {
        let r = c
            .http
            .post(format!("{}/admin/v1/keys", c.base))
            .bearer_auth(&c.token)
            .body(body.to_string())
            .send()
            .unwrap();
        (r.status().as_u16(), r.json::<serde_json::Value>().unwrap())
    };
    for (body, needle) in [
        ("{not json", "invalid JSON"),
        (
            "{\"consumer\":\"c\",\"tier\":\"free\",\"color\":\"red\"}",
            "unknown field",
        ),
        (
            "{\"consumer\":\"c\",\"tier\":\"free\",\"monthlyQuota\":\"lots\"}",
            "invalid type",
        ),
        (
            "{\"consumer\":\"c\",\"tier\":\"free\",\"monthlyQuota\":18446744073709551615}",
            "above the maximum",
        ),
        ("{\"consumer\":\"c\"}", "missing field"),
        ("{\"consumer\":\"c\",\"tier\":\"gold\"}", "unknown tier"),
        (
            "{\"consumer\":\"c\",\"tier\":\"free\",\"expiresAt\":\"tomorrow\"}",
            "RFC 3339",
        ),
        (
            "{\"consumer\":\"c\",\"tier\":\"free\",\"scopes\":[\"bad scope\"]}",
            "invalid scope",
        ),
        ("", "JSON object"),
    ] {
        let (status, b) = post(body);
        assert_eq!(status, 400, "{body}");
        assert_eq!(b["error"]["code"], "bad_request");
        let msg = b["error"]["message"].as_str().unwrap();
        assert!(msg.contains(needle), "{body}: {msg}");
    }
    let big = format!(
        "{{\"consumer\":\"{}\",\"tier\":\"free\"}}",
        "x".repeat(70 * 1024)
    );
    let (status, b) = post(&big);
    assert_eq!(status, 400);
    assert!(b["error"]["message"].as_str().unwrap().contains("64 KiB"));
    // Nothing was created by any of that.
    let list = c.admin(Method::GET, "/keys", None);
    assert_eq!(list.body["keys"].as_array().unwrap().len(), 0);

    assert_eq!(
        c.admin(Method::GET, "/keys/key_00000000000000ff", None)
            .status,
        404
    );
    assert_eq!(c.admin(Method::GET, "/keys/nonsense", None).status, 404);
    assert_eq!(
        c.admin(Method::POST, "/keys/key_00000000000000ff/revoke", None)
            .status,
        404
    );
    assert_eq!(c.admin(Method::GET, "/tiers/gold", None).status, 404);
    assert_eq!(c.admin(Method::GET, "/nope", None).status, 404);
    let r = c.admin(Method::PUT, "/tiers/bad", Some(json!({"limits": []})));
    assert_eq!(r.status, 400);
    let r = c.admin(
        Method::PUT,
        "/tiers/bad",
        Some(json!({"limits": [{"requests": 1, "periodSeconds": 60}], "extra": 1})),
    );
    assert_eq!(r.status, 400);
}

#[test]
fn keys_are_listed_with_filters_and_a_cursor_and_patched() {
    let dir = tempfile::tempdir().unwrap();
    let d = Daemon::start(dir.path(), &[]);
    let c = d.client();
    let mut ids = Vec::new();
    for i in 0..5 {
        let (id, _) = c.create_key(json!({"consumer": if i % 2 == 0 { "even" } else { "odd" }, "tier": "free", "name": format!("k{i}")}));
        ids.push(id);
    }
    let r = c.admin(Method::GET, "/keys?consumer=even&limit=2", None);
    let page: Vec<&str> = r.body["keys"]
        .as_array()
        .unwrap()
        .iter()
        .map(|k| k["id"].as_str().unwrap())
        .collect();
    assert_eq!(page, vec![ids[0].as_str(), ids[2].as_str()]);
    let cursor = r.body["nextCursor"].as_str().unwrap().to_string();
    let r = c.admin(
        Method::GET,
        &format!("/keys?consumer=even&limit=2&cursor={cursor}"),
        None,
    );
    let page: Vec<&str> = r.body["keys"]
        .as_array()
        .unwrap()
        .iter()
        .map(|k| k["id"].as_str().unwrap())
        .collect();
    assert_eq!(page, vec![ids[4].as_str()]);
    assert!(r.body["nextCursor"].is_null());
    assert!(!r.text.contains("\"key\""), "no raw keys in lists");
    assert_eq!(c.admin(Method::GET, "/keys?limit=0", None).status, 400);

    let r = c.admin(
        Method::PATCH,
        &format!("/keys/{}", ids[1]),
        Some(json!({"tier": "pro", "scopes": ["a:read"], "name": null, "monthlyQuota": 7})),
    );
    assert_eq!(r.status, 200, "{}", r.text);
    assert_eq!(r.body["tier"], "pro");
    assert_eq!(r.body["scopes"], json!(["a:read"]));
    assert_eq!(r.body["name"], serde_json::Value::Null);
    assert_eq!(r.body["monthlyQuota"], 7);
    let r = c.admin(
        Method::PATCH,
        &format!("/keys/{}", ids[1]),
        Some(json!({"tier": "nope"})),
    );
    assert_eq!(r.status, 400);
}

#[test]
fn bad_check_headers_are_400_and_request_ids_are_echoed_or_made() {
    let dir = tempfile::tempdir().unwrap();
    let d = Daemon::start(dir.path(), &[]);
    let c = d.client();
    let (_, key) = c.create_key(json!({"consumer": "c", "tier": "free"}));
    let r = c.check(Some(&key), &[("X-Quota-Scope", "has space")]);
    assert_eq!(r.status, 400);
    let long = "k".repeat(2000);
    let r = c.check(Some(&long), &[]);
    assert_eq!(r.status, 400);
    assert!(r.body["error"]["message"]
        .as_str()
        .unwrap()
        .contains("longer than"));
    // A non-ASCII header value, sent raw.
    let mut s = TcpStream::connect(d.http).unwrap();
    s.write_all(b"GET /v1/check HTTP/1.1\r\nhost: x\r\nx-api-key: qd_\xc3\xa9t\xc3\xa9\r\nconnection: close\r\n\r\n").unwrap();
    let mut out = String::new();
    s.read_to_string(&mut out).unwrap();
    assert!(out.starts_with("HTTP/1.1 400"), "{out}");
    assert!(out.contains("visible ASCII"), "{out}");

    let r = c.check(Some(&key), &[("x-request-id", "abc-1")]);
    assert_eq!(r.header("x-request-id").as_deref(), Some("abc-1"));
    let too_long = "r".repeat(129);
    let r = c.check(Some(&key), &[("x-request-id", &too_long)]);
    let made = r.header("x-request-id").unwrap();
    assert_ne!(made, too_long);
    let a = c.check(None, &[]);
    let b = c.check(None, &[]);
    assert_ne!(a.header("x-request-id"), b.header("x-request-id"));
    assert_eq!(
        a.body["error"]["requestId"].as_str().unwrap(),
        a.header("x-request-id").unwrap()
    );
    let r = c.get("/nowhere");
    assert_eq!(r.status, 404);
    assert!(r.header("x-request-id").is_some());
    assert_eq!(
        r.body["error"]["requestId"].as_str().unwrap(),
        r.header("x-request-id").unwrap()
    );
}

#[test]
fn health_metrics_and_docs_are_public() {
    let dir = tempfile::tempdir().unwrap();
    let d = Daemon::start(dir.path(), &[]);
    let c = d.client();
    let (_, key) = c.create_key(json!({"consumer": "c", "tier": "free"}));
    c.check(Some(&key), &[]);
    let h = c.get("/health");
    assert_eq!(h.status, 200);
    assert_eq!(h.body["status"], "ok");
    assert_eq!(h.body["keys"], 1);
    assert!(
        h.body["persistence"]["lastMsyncAgeSeconds"]
            .as_f64()
            .unwrap()
            < 5.0
    );
    let m = c.get("/metrics");
    assert!(m.header("content-type").unwrap().starts_with("text/plain"));
    for needle in [
        "quotad_checks_total{transport=\"http\",tier=\"free\",decision=\"allowed\"} 1",
        "quotad_checks_total{transport=\"http\",tier=\"pro\",decision=\"allowed\"} 0",
        "quotad_tier_keys{tier=\"free\"} 1",
        "quotad_tier_keys{tier=\"pro\"} 0",
        "quotad_check_duration_seconds_count 1",
        "quotad_keys 1",
        "quotad_tiers 4",
        "quotad_open_connections{transport=\"http\"} 1",
        "quotad_last_msync_age_seconds",
    ] {
        assert!(m.text.contains(needle), "missing {needle}:\n{}", m.text);
    }
    // By tier (binary checks too), the HTTP latency of each check, the build, the process.
    let (_, pro) = c.create_key(json!({"consumer": "c", "tier": "pro", "scopes": ["a:read"]}));
    for _ in 0..3 {
        c.check(Some(&pro), &[]);
    }
    c.check(Some(&pro), &[("X-Quota-Scope", "nope:nope")]);
    let rt = common::runtime();
    let bin = rt
        .block_on(quotad::protocol::client::Client::connect_tcp(d.binary))
        .unwrap();
    let r = rt
        .block_on(bin.check(quotad::protocol::client::Check {
            key: &pro,
            scope: None,
            cost: 1,
        }))
        .unwrap();
    assert_eq!(r.code(), "allowed");
    let m = c.get("/metrics");
    for needle in [
        "quotad_tier_checks_total{tier=\"free\",decision=\"allowed\"} 1",
        "quotad_tier_checks_total{tier=\"pro\",decision=\"allowed\"} 4",
        "quotad_tier_checks_total{tier=\"pro\",decision=\"forbidden\"} 1",
        "quotad_tier_checks_total{tier=\"enterprise\",decision=\"allowed\"} 0",
        "quotad_http_check_duration_seconds_count 5",
        "quotad_http_check_duration_seconds_bucket{le=\"+Inf\"} 5",
        "# TYPE quotad_http_check_duration_seconds histogram",
        &format!(
            "quotad_build_info{{version=\"{}\"}} 1",
            env!("CARGO_PKG_VERSION")
        ),
        "# TYPE process_cpu_seconds_total counter",
    ] {
        assert!(m.text.contains(needle), "missing {needle}:\n{}", m.text);
    }
    let value = |name: &str| -> f64 {
        m.text
            .lines()
            .find_map(|l| l.strip_prefix(&format!("{name} ")))
            .unwrap_or_else(|| panic!("no {name}"))
            .parse()
            .unwrap()
    };
    assert!(value("process_resident_memory_bytes") > 1e6);
    assert!(value("process_open_fds") >= 5.0);
    assert!(value("process_max_fds") >= value("process_open_fds"));
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs_f64();
    let started = value("process_start_time_seconds");
    assert!(
        started <= now + 1.0 && started > now - 600.0,
        "{started} vs {now}"
    );
    assert!(value("quotad_http_check_duration_seconds_sum") > 0.0);
    // The exposition is valid for Prometheus' own checker (installed by .ci/test; required in CI).
    let promtool = std::process::Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn();
    assert!(
        promtool.is_ok() || std::env::var_os("CI").is_none(),
        "promtool is missing in CI"
    );
    if let Ok(mut p) = promtool {
        use std::io::Write;
        p.stdin
            .take()
            .unwrap()
            .write_all(m.text.as_bytes())
            .unwrap();
        let out = p.wait_with_output().unwrap();
        let text = String::from_utf8_lossy(&out.stdout).to_string()
            + &String::from_utf8_lossy(&out.stderr);
        assert!(out.status.success(), "promtool: {text}");
    }

    let doc = c.get("/docs");
    assert_eq!(doc.body["openapi"], "3.1.0");
    assert_eq!(
        c.http
            .post(format!("{}/health", c.base))
            .send()
            .unwrap()
            .status(),
        405
    );
}

fn crate_builtin_tiers() -> serde_json::Value {
    let mut t = serde_json::to_value(quotad::tiers::builtin_tiers()).unwrap();
    t.as_array_mut()
        .unwrap()
        .push(json!({"name": "doomed", "limits": [{"requests": 1, "periodSeconds": 60}]}));
    t
}

/// Every route in the OpenAPI document answers on a real server (neither 404 nor 405).
#[test]
fn every_documented_route_answers() {
    let dir = tempfile::tempdir().unwrap();
    let d = Daemon::start(dir.path(), &[]);
    let c = d.client();
    let (id, _) = c.create_key(json!({"consumer": "c", "tier": "free"}));
    let (doomed_id, _) = c.create_key(json!({"consumer": "c", "tier": "free"}));
    let r = c.admin(
        Method::PUT,
        "/tiers/doomed",
        Some(json!({"limits": [{"requests": 1, "periodSeconds": 60}]})),
    );
    assert_eq!(r.status, 200);
    let r = c.admin(
        Method::PUT,
        "/prefixes/old_",
        Some(json!({"sunsetAt": "2099-01-01T00:00:00Z"})),
    );
    assert_eq!(r.status, 200, "{}", r.text);
    let doc = c.get("/docs").body;
    for (path, ops) in doc["paths"].as_object().unwrap() {
        for method in ops.as_object().unwrap().keys() {
            let (key, tier) = if method == "delete" {
                (&doomed_id, "doomed")
            } else {
                (&id, "enterprise")
            };
            let url = path
                .replace("{id}", key)
                .replace("{name}", tier)
                .replace("{consumer}", "c")
                .replace("{prefix}", "old_");
            let m = Method::from_bytes(method.to_uppercase().as_bytes()).unwrap();
            let body = match (method.as_str(), path.as_str()) {
                ("put", "/admin/v1/tiers") => Some(json!({"tiers": crate_builtin_tiers()})),
                ("put", _) => Some(json!({"limits": [{"requests": 1, "periodSeconds": 60}]})),
                ("post", "/admin/v1/keys") => Some(json!({"consumer": "c", "tier": "free"})),
                ("patch", _) => Some(json!({"name": "n"})),
                _ => None,
            };
            let mut rb = c
                .http
                .request(m, format!("{}{}", c.base, url))
                .bearer_auth(&c.token);
            if let Some(b) = body {
                rb = rb.json(&b);
            }
            let status = rb.send().unwrap().status().as_u16();
            assert!(
                status != 404 && status != 405,
                "{method} {path} -> {status}"
            );
        }
    }
}

#[test]
fn the_connection_limit_holds_and_idle_clients_are_dropped() {
    let dir = tempfile::tempdir().unwrap();
    let d = Daemon::start(
        dir.path(),
        &["--max-connections", "2", "--header-timeout-secs", "1"],
    );
    let a = TcpStream::connect(d.http).unwrap();
    let b = TcpStream::connect(d.http).unwrap();
    std::thread::sleep(Duration::from_millis(200));
    let mut third = TcpStream::connect(d.http).unwrap();
    third
        .set_read_timeout(Some(Duration::from_secs(5)))
        .unwrap();
    let mut out = String::new();
    let _ = third.read_to_string(&mut out);
    assert!(out.starts_with("HTTP/1.1 503"), "{out:?}");
    assert!(
        out.contains("x-request-id: qd-") && out.contains("\"code\":\"unavailable\""),
        "{out}"
    );
    // The idle ones are closed after the header timeout; then there is room again.
    for mut s in [a, b] {
        s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        let mut buf = [0u8; 64];
        let n = s.read(&mut buf).unwrap_or(0);
        let _ = n; // either EOF or a 408 before closing
        let n2 = s.read(&mut buf).unwrap_or(0);
        assert_eq!(n2, 0, "idle connection must be closed");
    }
    std::thread::sleep(Duration::from_millis(100));
    let r = d.client().get("/health");
    assert_eq!(r.status, 200);
}

#[test]
fn usage_survives_graceful_restart_and_sigkill() {
    let dir = tempfile::tempdir().unwrap();
    let d = Daemon::start(dir.path(), &[]);
    let c = d.client();
    let (id, key) = c.create_key(json!({"consumer": "c", "tier": "pro"}));
    for _ in 0..7 {
        assert_eq!(c.check(Some(&key), &[]).status, 200);
    }
    assert_eq!(d.stop(), 0);

    let d = Daemon::start(dir.path(), &[]);
    let c = d.client();
    let u = c.admin(Method::GET, &format!("/keys/{id}"), None);
    assert_eq!(u.body["usage"]["monthlyUsed"], 7);
    for _ in 0..5 {
        assert_eq!(c.check(Some(&key), &[]).status, 200);
    }
    d.kill();

    let d = Daemon::start(dir.path(), &[]);
    let c = d.client();
    let u = c.admin(Method::GET, &format!("/keys/{id}"), None);
    assert_eq!(
        u.body["usage"]["monthlyUsed"], 12,
        "SIGKILL loses no counted request"
    );
    assert_eq!(c.check(Some(&key), &[]).status, 200);
    let u = c.admin(Method::GET, &format!("/keys/{id}"), None);
    assert_eq!(u.body["usage"]["monthlyUsed"], 13);
}

#[test]
fn the_admin_token_file_is_private_and_reused_and_the_env_var_wins() {
    use std::os::unix::fs::PermissionsExt;
    let dir = tempfile::tempdir().unwrap();
    let d = Daemon::start(dir.path(), &[]);
    let token = d.token.clone();
    let mode = std::fs::metadata(dir.path().join("admin.token"))
        .unwrap()
        .permissions()
        .mode();
    assert_eq!(mode & 0o777, 0o600);
    assert!(!d.log_text().contains(&token), "the token is never logged");
    assert!(
        d.log_text().contains("admin.token"),
        "the log says where it is"
    );
    d.stop();
    let d = Daemon::start(dir.path(), &[]);
    assert_eq!(d.token, token, "reused after restart");
    d.stop();
    let d = Daemon::start_env(dir.path(), &[], &[("QUOTAD_ADMIN_TOKEN", "env-token-123")]);
    let c = d.client();
    assert_eq!(c.admin(Method::GET, "/tiers", None).status, 200);
    let r = c
        .http
        .get(format!("{}/admin/v1/tiers", c.base))
        .bearer_auth(&token)
        .send()
        .unwrap();
    assert_eq!(
        r.status(),
        401,
        "the file token is not accepted when the env var is set"
    );
}
