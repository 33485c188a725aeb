//! The OpenAPI document (`/docs`) against outside tools and the live server: it validates with
//! `openapi-spec-validator`, and a bounded `schemathesis` run (fixed seed) finds no server error,
//! no answer outside the documented statuses, headers and schemas, and no undocumented method.
//! Both come from PyPI into a virtualenv kept in the target directory. Where Python's venv is not
//! available the test prints why and passes, except in CI (`CI` set), where it fails.

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;

use common::Daemon;
use reqwest::Method;
use serde_json::json;

/// A virtualenv with the two tools, made once per target directory.
fn tools() -> Option<PathBuf> {
    let venv = Path::new(env!("CARGO_TARGET_TMPDIR")).join("openapi-venv");
    let st = venv.join("bin/st");
    if st.exists() && venv.join("bin/openapi-spec-validator").exists() {
        return Some(venv);
    }
    let made = Command::new("python3")
        .args(["-m", "venv"])
        .arg(&venv)
        .status()
        .is_ok_and(|s| s.success())
        && Command::new(venv.join("bin/pip"))
            .args([
                "install",
                "-q",
                "schemathesis>=4,<5",
                "openapi-spec-validator",
            ])
            .status()
            .is_ok_and(|s| s.success());
    if made {
        return Some(venv);
    }
    assert!(
        std::env::var_os("CI").is_none(),
        "python3 -m venv and pip install schemathesis openapi-spec-validator failed in CI"
    );
    eprintln!("SKIPPED: cannot make a Python virtualenv with schemathesis here");
    None
}

#[test]
fn the_document_validates_and_the_server_keeps_to_it_under_schemathesis() {
    let dir = tempfile::tempdir().unwrap();
    let d = Daemon::start(&dir.path().join("data"), &[]);
    let c = d.client();
    // Things schemathesis found before: integral numbers written as floats are integers, and
    // a 401 names its challenge.
    let (id, _) = c.create_key(json!({"consumer": "acme", "tier": "pro"}));
    let r = c.admin(
        Method::POST,
        &format!("/keys/{id}/rotate"),
        Some(json!({"graceSeconds": 2441.0})),
    );
    assert_eq!(r.status, 200, "{}", r.text);
    let r = c.admin(
        Method::PATCH,
        &format!("/keys/{id}"),
        Some(json!({"monthlyQuota": 5e3})),
    );
    assert_eq!(r.body["monthlyQuota"], 5000, "{}", r.text);
    let r = c.check(None, &[]);
    assert_eq!(r.status, 401);
    assert_eq!(
        r.header("www-authenticate").as_deref(),
        Some("Bearer realm=\"quotad\"")
    );
    let r = c
        .http
        .get(format!("{}/admin/v1/keys", c.base))
        .send()
        .unwrap();
    assert_eq!(r.status(), 401);
    assert!(r.headers().contains_key("www-authenticate"));
    let r = c
        .http
        .request(
            Method::from_bytes(b"QUERY").unwrap(),
            format!("{}/v1/check", c.base),
        )
        .send()
        .unwrap();
    assert_eq!(r.status(), 405);
    assert!(r.headers()["allow"].to_str().unwrap().contains("TRACE"));

    let Some(venv) = tools() else { return };
    let doc = dir.path().join("openapi.json");
    std::fs::write(&doc, c.get("/docs").text).unwrap();
    let out = Command::new(venv.join("bin/openapi-spec-validator"))
        .arg(&doc)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );

    let out = Command::new(venv.join("bin/st"))
        .current_dir(dir.path())
        .args(["run", &d.url("/docs"), "-H"])
        .arg(format!("Authorization: Bearer {}", d.token))
        .args([
            "--max-examples",
            "20",
            "--seed",
            "1",
            "--checks",
            "not_a_server_error,status_code_conformance,content_type_conformance,\
             response_headers_conformance,response_schema_conformance,unsupported_method,\
             ignored_auth,missing_required_header,use_after_free,ensure_resource_availability",
        ])
        .env("NO_COLOR", "1")
        .output()
        .unwrap();
    let text =
        String::from_utf8_lossy(&out.stdout).to_string() + &String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "schemathesis:\n{text}");
    assert!(text.contains("passed"), "{text}");
}
