//! The binary protocol through real TCP and Unix sockets against the real daemon.

mod common;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::Duration;

use common::Daemon;
use quotad::protocol::client::{Check, Client, ClientError};
use quotad::protocol::frame::{self, op, ErrorCode};
use quotad::protocol::result::WireResult;
use serde_json::json;

fn check(key: &str) -> Check<'_> {
    scoped(key, None)
}

fn scoped<'a>(key: &'a str, scope: Option<&'a str>) -> Check<'a> {
    Check {
        key,
        scope,
        cost: 1,
    }
}

#[test]
fn every_operation_over_tcp_and_unix() {
    let dir = tempfile::tempdir().unwrap();
    let sock = dir.path().join("quotad.sock");
    let d = Daemon::start(
        &dir.path().join("data"),
        &["--unix", sock.to_str().unwrap()],
    );
    let (id, key) = d
        .client()
        .create_key(json!({"consumer": "c", "tier": "free"}));
    common::runtime().block_on(async {
        for c in [
            Client::connect_tcp(d.binary).await.unwrap(),
            Client::connect_unix(&sock).await.unwrap(),
        ] {
            c.ping().await.unwrap();
            let r = c.check(check(&key)).await.unwrap();
            assert_eq!(r.code(), "allowed");
            assert_eq!(r.limit, 60);
            assert_eq!(quotad::keys::KeyId(r.key_id).to_string(), id);
            let rs = c
                .check_batch(&[check(&key), check("nope"), check(&key)])
                .await
                .unwrap();
            let codes: Vec<&str> = rs.iter().map(WireResult::code).collect();
            assert_eq!(codes, vec!["allowed", "unauthorized", "allowed"]);
            assert_eq!(rs[1].reason, 2, "malformed");
        }
    });
    let u = d
        .client()
        .admin(reqwest::Method::GET, &format!("/keys/{id}"), None);
    assert_eq!(u.body["usage"]["monthlyUsed"], 6);
}

#[test]
fn every_decision_carries_the_same_figures_as_http() {
    let dir = tempfile::tempdir().unwrap();
    let d = Daemon::start(dir.path(), &[]);
    let h = d.client();
    h.admin(reqwest::Method::PUT, "/tiers/t", Some(json!({"limits": [{"requests": 2, "periodSeconds": 1}], "monthlyQuota": 3, "scopes": ["a:read", "a:write"]})));
    let (key_id, key) = h.create_key(json!({"consumer": "c", "tier": "t", "scopes": ["a:read"]}));
    let (rid, revoked) = h.create_key(json!({"consumer": "c", "tier": "t"}));
    h.admin(reqwest::Method::POST, &format!("/keys/{rid}/revoke"), None);
    let (_, open) = h.create_key(json!({"consumer": "c", "tier": "t"}));
    common::runtime().block_on(async {
        let c = Client::connect_tcp(d.binary).await.unwrap();
        let r = c.check(scoped(&key, Some("a:write"))).await.unwrap();
        assert_eq!(r.code(), "forbidden");
        let r = c.check(scoped(&open, Some("b:read"))).await.unwrap();
        assert_eq!(r.code(), "plan_required");
        let r = c.check(check(&revoked)).await.unwrap();
        assert_eq!((r.code(), r.reason), ("unauthorized", 4));
        let r = c.check(check("")).await.unwrap();
        assert_eq!((r.code(), r.reason), ("unauthorized", 1));
        let r = c
            .check(Check {
                key: &key,
                scope: Some("a:read"),
                cost: 2,
            })
            .await
            .unwrap();
        assert_eq!((r.code(), r.limit, r.remaining), ("allowed", 2, 0));
        let r = c.check(scoped(&key, Some("a:read"))).await.unwrap();
        assert_eq!(r.code(), "rate_limited");
        assert_eq!(r.retry_after, 1, "half a second, rounded up");
        assert_eq!(r.remaining, 0);
    });
    // The same key over HTTP sees the same counter: quota 3, 2 used over the binary protocol.
    let mut spent = false;
    for _ in 0..40 {
        let r = h.check(Some(&key), &[("X-Quota-Scope", "a:read")]);
        if r.status == 429 && r.code() == "quota_exceeded" {
            spent = true;
            break;
        }
        if r.status == 200 {
            continue;
        }
        std::thread::sleep(Duration::from_millis(300)); // wait for a burst token
    }
    assert!(spent, "the monthly quota (3) is shared by both transports");
    common::runtime().block_on(async {
        let c = Client::connect_tcp(d.binary).await.unwrap();
        let r = c.check(scoped(&key, Some("a:read"))).await.unwrap();
        // Burst tokens may or may not be back; the quota is spent either way.
        assert!(
            r.code() == "quota_exceeded" || r.code() == "rate_limited",
            "{}",
            r.code()
        );
        assert!(r.retry_after >= 1);
    });
    let u = h.admin(reqwest::Method::GET, &format!("/keys/{key_id}"), None);
    assert_eq!(u.body["usage"]["monthlyUsed"], 3);

    // quota_exceeded on its own: a generous burst and a quota of 1.
    let (_, q) = h.create_key(json!({"consumer": "c", "tier": "enterprise", "monthlyQuota": 1}));
    common::runtime().block_on(async {
        let c = Client::connect_tcp(d.binary).await.unwrap();
        assert_eq!(c.check(check(&q)).await.unwrap().code(), "allowed");
        let r = c.check(check(&q)).await.unwrap();
        assert_eq!(r.code(), "quota_exceeded");
        assert_eq!((r.limit, r.remaining), (1, 0));
        let next = common::next_month_start();
        let t = time::OffsetDateTime::now_utc();
        assert!(
            (i64::from(r.retry_after) - (next - t.unix_timestamp())).abs() <= 2,
            "retry_after = seconds to next month"
        );
        assert_eq!(r.reset as i64, next);
    });
}

fn raw_conn(d: &Daemon) -> TcpStream {
    let s = TcpStream::connect(d.binary).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    s
}

fn hello(s: &mut TcpStream) {
    let mut f = Vec::new();
    frame::put_hello(&mut f, 1, frame::VERSION);
    s.write_all(&f).unwrap();
    let mut h = [0u8; 16 + frame::HELLO_OK_LEN];
    s.read_exact(&mut h).unwrap();
    assert_eq!(h[4], op::HELLO_OK);
    // The bounds, as PROTOCOL.md lays them out: max payload, batch, key, scope, cost.
    let u16_at = |at: usize| u16::from_le_bytes([h[16 + at], h[16 + at + 1]]);
    let u32_at = |at: usize| u32::from_le_bytes(h[16 + at..16 + at + 4].try_into().unwrap());
    assert_eq!(
        (u32_at(4), u16_at(8), u16_at(10), u16_at(12), u32_at(14)),
        (65_536, 1_024, 256, 64, 1_000_000)
    );
}

/// Reads frames until EOF; returns (op, id, payload) of each.
fn read_all(s: &mut TcpStream) -> Vec<(u8, u64, Vec<u8>)> {
    let mut buf = Vec::new();
    let _ = s.read_to_end(&mut buf);
    let mut out = Vec::new();
    let mut at = 0;
    while let Ok((op, id, p, len)) = frame::decode_any(&buf[at..]) {
        out.push((op, id, p.to_vec()));
        at += len;
    }
    out
}

#[test]
fn pipelined_requests_in_one_write_are_answered_in_one_pass_with_matching_ids() {
    let dir = tempfile::tempdir().unwrap();
    let d = Daemon::start(dir.path(), &[]);
    let h = d.client();
    let keys: Vec<String> = (0..4)
        .map(|_| h.create_key(json!({"consumer": "c", "tier": "pro"})).1)
        .collect();
    let mut s = raw_conn(&d);
    hello(&mut s);
    let mut f = Vec::new();
    for i in 0..200u64 {
        let key = if i % 5 == 4 {
            "garbage-key"
        } else {
            keys[(i % 4) as usize].as_str()
        };
        frame::put_check_frame(&mut f, 1000 + i, 1, key.as_bytes(), b"");
    }
    s.write_all(&f).unwrap();
    s.shutdown(std::net::Shutdown::Write).unwrap();
    let answers = read_all(&mut s);
    assert_eq!(answers.len(), 200);
    for (i, (op, id, p)) in answers.iter().enumerate() {
        assert_eq!(*op, op::RESULT);
        assert_eq!(*id, 1000 + i as u64, "answers keep request order and ids");
        let r = WireResult::get(p).unwrap();
        let expect = if i % 5 == 4 {
            "unauthorized"
        } else {
            "allowed"
        };
        assert_eq!(r.code(), expect);
    }
}

/// The server decodes a few frames ahead of the one it answers, to start their keys' entries
/// loading; a fatal frame among them must still come after the answers of the checks before it,
/// and ends the connection.
#[test]
fn checks_before_a_fatal_frame_in_the_same_read_are_answered_first() {
    let dir = tempfile::tempdir().unwrap();
    let d = Daemon::start(dir.path(), &[]);
    let (id, key) = d
        .client()
        .create_key(json!({"consumer": "c", "tier": "pro"}));
    let mut s = raw_conn(&d);
    hello(&mut s);
    let mut f = Vec::new();
    for i in 0..20u64 {
        frame::put_check_frame(&mut f, 500 + i, 1, key.as_bytes(), b"");
    }
    // A frame with an unknown op: fatal.
    frame::put_header(&mut f, 0x7f, 999, 0);
    s.write_all(&f).unwrap();
    let answers = read_all(&mut s);
    assert_eq!(answers.len(), 21, "20 results, then the error frame");
    for (i, (op, id, p)) in answers[..20].iter().enumerate() {
        assert_eq!((*op, *id), (op::RESULT, 500 + i as u64));
        assert_eq!(WireResult::get(p).unwrap().code(), "allowed");
    }
    assert_eq!(answers[20].0, op::ERROR);
    let u = d
        .client()
        .admin(reqwest::Method::GET, &format!("/keys/{id}"), None);
    assert_eq!(u.body["usage"]["monthlyUsed"], 20, "{}", u.text);
}

#[test]
fn malformed_input_gets_an_error_frame_or_a_clean_close_and_others_keep_being_served() {
    let dir = tempfile::tempdir().unwrap();
    let d = Daemon::start(dir.path(), &[]);
    let (key_id, key) = d
        .client()
        .create_key(json!({"consumer": "c", "tier": "enterprise"}));
    let rt = common::runtime();
    let healthy = rt.block_on(Client::connect_tcp(d.binary)).unwrap();

    let expect_error = |bytes: &[u8], after_hello: bool, code: ErrorCode| {
        let mut s = raw_conn(&d);
        if after_hello {
            hello(&mut s);
        }
        s.write_all(bytes).unwrap();
        let frames = read_all(&mut s); // the server closes after the error
        let (op, _, p) = frames
            .last()
            .unwrap_or_else(|| panic!("no answer to {bytes:?}"));
        assert_eq!(*op, op::ERROR);
        assert_eq!(u16::from_le_bytes([p[0], p[1]]), code as u16, "{bytes:?}");
        // Another connection is still served.
        let r = rt.block_on(healthy.check(check(&key))).unwrap();
        assert_eq!(r.code(), "allowed");
    };

    let mut big = Vec::new();
    frame::put_header(&mut big, op::CHECK, 1, frame::MAX_PAYLOAD + 1);
    expect_error(&big, true, ErrorCode::TooLarge);
    let mut unknown = Vec::new();
    frame::put_header(&mut unknown, 0x42, 2, 0);
    expect_error(&unknown, true, ErrorCode::UnknownOp);
    let mut bad_version = Vec::new();
    frame::put_hello(&mut bad_version, 3, 99);
    expect_error(&bad_version, false, ErrorCode::BadVersion);
    let mut bad_magic = Vec::new();
    frame::put_header(&mut bad_magic, op::HELLO, 3, 8);
    bad_magic.extend_from_slice(b"GET / HT");
    expect_error(&bad_magic, false, ErrorCode::BadVersion);
    let long_key = "k".repeat(frame::MAX_KEY + 1);
    let mut lk = Vec::new();
    frame::put_check_frame(&mut lk, 4, 1, long_key.as_bytes(), b"");
    expect_error(&lk, true, ErrorCode::KeyTooLong);
    let mut no_hello = Vec::new();
    frame::put_header(&mut no_hello, op::PING, 5, 0);
    expect_error(&no_hello, false, ErrorCode::HelloRequired);
    // An HTTP request sent to the binary port: a header claiming a huge payload.
    expect_error(
        b"GET / HTTP/1.1\r\nHost: x\r\n\r\n",
        false,
        ErrorCode::TooLarge,
    );
    let mut overrun = Vec::new();
    frame::put_header(&mut overrun, op::CHECK, 6, 10);
    overrun.extend_from_slice(&[1, 0, 0, 0, 200, 0, 0, 0, b'a', b'b']);
    expect_error(&overrun, true, ErrorCode::BadFrame);
    let mut batch = Vec::new();
    frame::put_header(&mut batch, op::CHECK_BATCH, 7, 4);
    batch.extend_from_slice(&((frame::MAX_BATCH + 1) as u16).to_le_bytes());
    batch.extend_from_slice(&[0, 0]);
    expect_error(&batch, true, ErrorCode::BatchTooLarge);

    // A short frame or a frame truncated mid-way, then EOF: a clean close, no answer.
    for partial in [&big[..7], &lk[..30]] {
        let mut s = raw_conn(&d);
        hello(&mut s);
        s.write_all(partial).unwrap();
        s.shutdown(std::net::Shutdown::Write).unwrap();
        assert!(read_all(&mut s).is_empty());
    }
    // A bad scope is a request-level error: the connection stays usable.
    let r = rt.block_on(healthy.check(scoped(&key, Some("bad scope"))));
    assert!(
        matches!(
            r,
            Err(ClientError::Server {
                code: Some(ErrorCode::BadFrame),
                ..
            })
        ),
        "{r:?}"
    );
    assert_eq!(
        rt.block_on(healthy.check(check(&key))).unwrap().code(),
        "allowed"
    );
    // A batch with one bad check is refused whole: its good checks are not counted either.
    let used = |d: &Daemon| d.client().monthly_used(&key_id);
    let before = used(&d);
    assert!(before > 0);
    let r = rt.block_on(healthy.check_batch(&[
        check(&key),
        scoped(&key, Some("bad scope")),
        check(&key),
    ]));
    assert!(r.is_err(), "{r:?}");
    assert_eq!(used(&d), before, "nothing of the refused batch was counted");
}

#[test]
fn the_binary_connection_limit_and_idle_timeout_hold() {
    let dir = tempfile::tempdir().unwrap();
    let d = Daemon::start(
        dir.path(),
        &["--max-binary-connections", "1", "--idle-timeout-secs", "1"],
    );
    let mut a = raw_conn(&d);
    hello(&mut a);
    let mut b = raw_conn(&d);
    let frames = read_all(&mut b);
    assert_eq!(
        frames.first().map(|f| f.0),
        Some(op::ERROR),
        "second connection refused"
    );
    assert_eq!(
        u16::from_le_bytes([frames[0].2[0], frames[0].2[1]]),
        ErrorCode::Busy as u16
    );
    // The first one is closed after a second of silence; then there is room again.
    assert!(read_all(&mut a).is_empty());
    std::thread::sleep(Duration::from_millis(100));
    let mut c = raw_conn(&d);
    hello(&mut c);
}

#[test]
fn a_real_key_id_with_a_wrong_secret_is_answered_with_key_id_zero() {
    let dir = tempfile::tempdir().unwrap();
    let d = Daemon::start(&dir.path().join("data"), &[]);
    let (id, key) = d
        .client()
        .create_key(json!({"consumer": "c", "tier": "free"}));
    // The same id part, another secret (a character well inside the secret changed).
    let mut forged = key.clone().into_bytes();
    let at = forged.len() - 10;
    forged[at] = if forged[at] == b'A' { b'B' } else { b'A' };
    let forged = String::from_utf8(forged).unwrap();
    let rt = common::runtime();
    let c = rt.block_on(Client::connect_tcp(d.binary)).unwrap();
    let r = rt.block_on(c.check(check(&forged))).unwrap();
    assert_eq!(r.code(), "unauthorized");
    assert_eq!(r.reason, 3, "unknown");
    assert_eq!(
        r.key_id, 0,
        "PROTOCOL.md: 0 when the key was not identified"
    );
    // The real key is identified, and so is it once revoked.
    let r = rt.block_on(c.check(check(&key))).unwrap();
    assert_eq!(quotad::keys::KeyId(r.key_id).to_string(), id);
    d.client()
        .admin(reqwest::Method::POST, &format!("/keys/{id}/revoke"), None);
    let r = rt.block_on(c.check(check(&key))).unwrap();
    assert_eq!((r.code(), r.reason), ("unauthorized", 4));
    assert_eq!(quotad::keys::KeyId(r.key_id).to_string(), id);
}

#[test]
fn a_cost_above_the_maximum_is_refused_like_http_and_counts_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let d = Daemon::start(&dir.path().join("data"), &[]);
    let (id, key) = d
        .client()
        .create_key(json!({"consumer": "c", "tier": "free"}));
    let rt = common::runtime();
    let c = rt.block_on(Client::connect_tcp(d.binary)).unwrap();
    let costly = |cost| Check {
        key: &key,
        scope: None,
        cost,
    };
    for cost in [1_000_001, u32::MAX] {
        let r = rt.block_on(c.check(costly(cost)));
        assert!(
            matches!(
                &r,
                Err(ClientError::Server {
                    code: Some(ErrorCode::BadFrame),
                    message,
                }) if message.contains("1000000")
            ),
            "cost {cost}: {r:?}"
        );
        // HTTP refuses the same cost.
        let cost = cost.to_string();
        let h = d
            .client()
            .check(Some(&key), &[("x-quota-cost", cost.as_str())]);
        assert_eq!(h.status, 400);
    }
    // A batch holding one is refused whole; the connection stays usable.
    assert!(rt
        .block_on(c.check_batch(&[check(&key), costly(u32::MAX)]))
        .is_err());
    let u = d
        .client()
        .admin(reqwest::Method::GET, &format!("/keys/{id}"), None);
    assert_eq!(u.body["usage"]["monthlyUsed"], 0, "nothing was counted");
    // The maximum itself is a cost like any other (the free tier's minute admits 60).
    let r = rt.block_on(c.check(costly(1_000_000))).unwrap();
    assert_eq!(r.code(), "rate_limited");
    assert_eq!(rt.block_on(c.check(costly(1))).unwrap().code(), "allowed");
}

/// A client that sends a frame one byte at a time cannot hold a connection slot: the frame must be
/// complete `--frame-timeout-secs` after its first byte, whatever the idle timeout.
#[test]
fn a_frame_dripped_byte_by_byte_is_cut_off_at_the_frame_deadline() {
    let dir = tempfile::tempdir().unwrap();
    let d = Daemon::start(
        dir.path(),
        &[
            "--max-binary-connections",
            "3",
            "--idle-timeout-secs",
            "30",
            "--frame-timeout-secs",
            "1",
        ],
    );
    let mut f = Vec::new();
    frame::put_hello(&mut f, 1, frame::VERSION);
    let started = std::time::Instant::now();
    let drips: Vec<_> = (0..3)
        .map(|_| {
            let mut s = raw_conn(&d);
            let f = f.clone();
            std::thread::spawn(move || {
                // One byte every 200 ms: each byte would restart an idle timer.
                for b in &f[..f.len() - 1] {
                    if s.write_all(&[*b]).is_err() {
                        break;
                    }
                    std::thread::sleep(Duration::from_millis(200));
                }
                let mut rest = Vec::new();
                let _ = s.read_to_end(&mut rest);
                rest
            })
        })
        .collect();
    for h in drips {
        let rest = h.join().unwrap();
        assert!(rest.is_empty(), "a dripping client got an answer: {rest:?}");
    }
    // Closed at ~1 s, long before the 30 s idle timeout or the end of the drip (4+ s).
    assert!(
        started.elapsed() < Duration::from_secs(4),
        "{:?}",
        started.elapsed()
    );
    let mut c = raw_conn(&d);
    hello(&mut c);
}
