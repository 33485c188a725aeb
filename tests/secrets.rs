//! Nothing secret in the logs: a daemon at the most verbose log level goes through every path that
//! touches a key or the token (creation, checks of every outcome, rotation, revocation, bad tokens),
//! and no log line holds a raw key or the admin token. (Every other test that runs a daemon makes
//! the same check on its own logs when the daemon is dropped.)

mod common;

use common::Daemon;
use reqwest::Method;
use serde_json::json;

#[test]
fn no_raw_key_or_admin_token_appears_in_any_log_line() {
    let dir = tempfile::tempdir().unwrap();
    let d = Daemon::start_env(
        dir.path(),
        &[],
        &[
            ("QUOTAD_ADMIN_TOKEN", "qdadm_secret_token_value_123"),
            ("RUST_LOG", "trace"),
        ],
    );
    let c = d.client();
    let (id, key) = c.create_key(json!({"consumer": "c", "tier": "free", "scopes": ["a:read"]}));
    c.check(Some(&key), &[]);
    c.check(Some(&key), &[("X-Quota-Scope", "b:write")]);
    let mut forged = key.clone();
    forged.pop();
    forged.push('Z');
    c.check(Some(&forged), &[]);
    let r = c.admin(
        Method::POST,
        &format!("/keys/{id}/rotate"),
        Some(json!({"graceSeconds": 60})),
    );
    let rotated = r.body["key"].as_str().unwrap().to_string();
    c.check(Some(&rotated), &[]);
    c.check(Some(&key), &[]);
    c.admin(Method::POST, &format!("/keys/{id}/revoke"), None);
    c.check(Some(&rotated), &[]);
    let _ = c
        .http
        .get(format!("{}/admin/v1/keys", c.base))
        .bearer_auth(&key)
        .send();
    let _ = c
        .http
        .get(format!("{}/admin/v1/keys", c.base))
        .bearer_auth("qdadm_secret_token_value_12")
        .send();
    let logs = d.log_text();
    assert!(logs.lines().count() > 10, "trace logging produced lines");
    assert!(
        logs.contains(&id),
        "key ids are logged (that is what identifies a key)"
    );
    for secret in [
        key.as_str(),
        rotated.as_str(),
        forged.as_str(),
        "qdadm_secret_token_value_123",
    ] {
        assert!(!logs.contains(secret), "a secret appears in the log");
        // Nor its secret part alone.
        assert!(!logs.contains(&secret[secret.len() - 24..]));
    }
    common::assert_no_secrets_logged();
}
