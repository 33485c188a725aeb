//! Real signals on the real binary: SIGHUP re-reads the tiers file (a bad one is refused and the
//! old tiers stay), SIGTERM drains in-flight requests and leaves the usage on disk.

mod common;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};

use common::Daemon;
use reqwest::Method;
use serde_json::json;

fn wait_for(what: &str, mut f: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while !f() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn sighup_reloads_the_tiers_file_and_refuses_a_bad_one() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("tiers.toml");
    std::fs::write(
        &file,
        "[tiers.basic]\nlimits = [{ requests = 10, period = \"1m\" }]\n",
    )
    .unwrap();
    let d = Daemon::start(
        &dir.path().join("data"),
        &["--tiers", file.to_str().unwrap()],
    );
    let c = d.client();
    let names = |c: &common::Client| -> Vec<String> {
        c.admin(Method::GET, "/tiers", None).body["tiers"]
            .as_array()
            .unwrap()
            .iter()
            .map(|t| t["name"].as_str().unwrap().to_string())
            .collect()
    };
    assert_eq!(names(&c), vec!["basic"], "the file replaces the built-ins");
    let (_, key) = c.create_key(json!({"consumer": "c", "tier": "basic"}));
    assert_eq!(c.check(Some(&key), &[]).header_u64("x-ratelimit-limit"), 10);

    std::fs::write(
        &file,
        "[tiers.basic]\nlimits = [{ requests = 20, period = \"1m\" }]\n[tiers.plus]\nlimits = [{ requests = 50, period = 60 }]\n",
    )
    .unwrap();
    d.signal(libc::SIGHUP);
    wait_for("the reload", || {
        d.log_text().contains("SIGHUP: tiers reloaded")
    });
    assert_eq!(names(&c), vec!["basic", "plus"]);
    let r = c.check(Some(&key), &[]);
    assert_eq!(r.header_u64("x-ratelimit-limit"), 20);
    assert_eq!(
        r.header_u64("x-ratelimit-remaining"),
        18,
        "the token used before the reload stays used"
    );

    // A bad file: refused with a log line naming the fault; the old tiers stay in force.
    std::fs::write(
        &file,
        "[tiers.basic]\nlimits = [{ requests = 0, period = \"1m\" }]\n",
    )
    .unwrap();
    d.signal(libc::SIGHUP);
    wait_for("the refusal", || d.log_text().contains("tier file refused"));
    let line = d
        .log_text()
        .lines()
        .find(|l| l.contains("tier file refused"))
        .unwrap()
        .to_string();
    assert!(
        line.contains("tiers.toml") && line.contains("requests must be between 1"),
        "{line}"
    );
    assert_eq!(names(&c), vec!["basic", "plus"]);
    // Dropping a tier keys use is refused too.
    std::fs::write(
        &file,
        "[tiers.plus]\nlimits = [{ requests = 50, period = 60 }]\n",
    )
    .unwrap();
    d.signal(libc::SIGHUP);
    wait_for("the second refusal", || {
        d.log_text().matches("tier file refused").count() == 2
    });
    assert!(d.log_text().contains("is used by 1 key"));
    assert_eq!(c.check(Some(&key), &[]).status, 200);
    assert_eq!(d.stop(), 0);
}

#[test]
fn sigterm_answers_in_flight_requests_flushes_and_exits_zero() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let d = Daemon::start(&data, &[]);
    let c = d.client();
    let (id, key) = c.create_key(json!({"consumer": "c", "tier": "enterprise"}));
    // 300 pipelined binary checks and 20 HTTP requests written, then SIGTERM at once.
    let mut bin = TcpStream::connect(d.binary).unwrap();
    let mut f = Vec::new();
    quotad::protocol::frame::put_hello(&mut f, 0, quotad::protocol::frame::VERSION);
    for i in 0..300u64 {
        quotad::protocol::frame::put_check_frame(&mut f, i + 1, 1, key.as_bytes(), b"");
    }
    let mut https: Vec<TcpStream> = (0..20)
        .map(|_| TcpStream::connect(d.http).unwrap())
        .collect();
    bin.write_all(&f).unwrap();
    for s in &mut https {
        write!(
            s,
            "GET /v1/check HTTP/1.1\r\nHost: x\r\nX-API-Key: {key}\r\nConnection: close\r\n\r\n"
        )
        .unwrap();
    }
    std::thread::sleep(Duration::from_millis(100));
    let log = d.logs.clone();
    assert_eq!(d.stop(), 0, "exit 0 after SIGTERM");
    // Every request that was sent got its answer.
    let mut answered = 0;
    let mut buf = Vec::new();
    bin.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let _ = bin.read_to_end(&mut buf);
    let mut at = 0;
    while let Ok((op, _, _, len)) = quotad::protocol::frame::decode_any(&buf[at..]) {
        if op == quotad::protocol::frame::op::RESULT {
            answered += 1;
        }
        at += len;
    }
    assert_eq!(
        answered, 300,
        "in-flight binary checks answered before exit"
    );
    let mut http_ok = 0;
    for s in &mut https {
        let mut out = String::new();
        s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        let _ = s.read_to_string(&mut out);
        if out.starts_with("HTTP/1.1 200") {
            http_ok += 1;
        }
    }
    assert_eq!(http_ok, 20, "in-flight HTTP checks answered before exit");
    let text = log.lock().unwrap().join("\n");
    assert!(
        text.contains("SIGTERM") && text.contains("counters flushed to disk"),
        "{text}"
    );
    // The usage is on disk: a fresh start (or inspect) sees every admitted check.
    let d = Daemon::start(&data, &[]);
    let u = d.client().admin(Method::GET, &format!("/keys/{id}"), None);
    assert_eq!(u.body["usage"]["monthlyUsed"], 320);
}
