//! What docs/PROTOCOL.md settles for an independent implementer, each rule over a raw socket
//! against the real binary: flags and reserved bytes, a second HELLO, a batch of 0, the PING
//! payload limit, error precedence before HELLO, malformed versus unknown keys, bad scopes,
//! denied checks consuming nothing, batches decided one by one, and which limit an allowed answer
//! reports.

mod common;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::Duration;

use common::Daemon;
use quotad::protocol::frame::{self, op, ErrorCode};
use quotad::protocol::result::WireResult;
use reqwest::Method;
use serde_json::json;

struct Conn(TcpStream);

impl Conn {
    fn open(d: &Daemon) -> Conn {
        let s = TcpStream::connect(d.binary).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        Conn(s)
    }

    fn hello(d: &Daemon) -> Conn {
        let mut c = Conn::open(d);
        let mut f = Vec::new();
        frame::put_hello(&mut f, 1, frame::VERSION);
        c.send(&f);
        assert_eq!(c.recv().0, op::HELLO_OK);
        c
    }

    fn send(&mut self, bytes: &[u8]) {
        self.0.write_all(bytes).unwrap();
    }

    /// One frame: (op, id, payload).
    fn recv(&mut self) -> (u8, u64, Vec<u8>) {
        let mut h = [0u8; 16];
        self.0.read_exact(&mut h).unwrap();
        let len = u32::from_le_bytes(h[..4].try_into().unwrap()) as usize;
        let mut p = vec![0u8; len];
        self.0.read_exact(&mut p).unwrap();
        (h[4], u64::from_le_bytes(h[8..16].try_into().unwrap()), p)
    }

    /// Whether the server closed the connection (EOF on the next read).
    fn closed(&mut self) -> bool {
        let mut b = [0u8; 1];
        matches!(self.0.read(&mut b), Ok(0))
    }

    fn check(&mut self, id: u64, key: &str, scope: &str) -> WireResult {
        let mut f = Vec::new();
        frame::put_check_frame(&mut f, id, 1, key.as_bytes(), scope.as_bytes());
        self.send(&f);
        let (o, rid, p) = self.recv();
        assert_eq!((o, rid), (op::RESULT, id), "{p:?}");
        WireResult::get(&p).unwrap()
    }
}

fn error_code(p: &[u8]) -> u16 {
    u16::from_le_bytes([p[0], p[1]])
}

fn frame_of(op: u8, id: u64, payload: &[u8]) -> Vec<u8> {
    let mut f = Vec::new();
    frame::put_header(&mut f, op, id, payload.len());
    f.extend_from_slice(payload);
    f
}

#[test]
fn framing_rules_flags_second_hello_empty_batch_ping_limit() {
    let dir = tempfile::tempdir().unwrap();
    let d = Daemon::start(dir.path(), &[]);
    let (_, key) = d
        .client()
        .create_key(json!({"consumer": "c", "tier": "pro"}));
    let mut c = Conn::hello(&d);

    // Non-zero flags and reserved bytes are ignored.
    let mut f = Vec::new();
    frame::put_check_frame(&mut f, 5, 1, key.as_bytes(), b"");
    f[5] = 0xff;
    f[6] = 0xab;
    f[7] = 0xcd;
    c.send(&f);
    let (o, id, p) = c.recv();
    assert_eq!((o, id), (op::RESULT, 5));
    assert_eq!(WireResult::get(&p).unwrap().code(), "allowed");

    // A second HELLO: HELLO_OK again, the connection goes on.
    let mut f = Vec::new();
    frame::put_hello(&mut f, 6, frame::VERSION);
    c.send(&f);
    assert_eq!(c.recv().0, op::HELLO_OK);
    assert_eq!(c.check(7, &key, "").code(), "allowed");

    // A batch of 0 checks: a BATCH_RESULT of 0 results.
    c.send(&frame_of(op::CHECK_BATCH, 8, &[0, 0, 0, 0]));
    let (o, id, p) = c.recv();
    assert_eq!((o, id, p), (op::BATCH_RESULT, 8, vec![0, 0, 0, 0]));

    // PING: 64 bytes echoed; 65 bytes is BAD_FRAME and the connection closes.
    c.send(&frame_of(op::PING, 9, &[7u8; 64]));
    assert_eq!(c.recv(), (op::PONG, 9, vec![7u8; 64]));
    c.send(&frame_of(op::PING, 10, &[7u8; 65]));
    let (o, id, p) = c.recv();
    assert_eq!(
        (o, id, error_code(&p)),
        (op::ERROR, 10, ErrorCode::BadFrame as u16)
    );
    assert!(c.closed());
}

#[test]
fn before_hello_a_malformed_frame_is_answered_with_its_fault() {
    let dir = tempfile::tempdir().unwrap();
    let d = Daemon::start(dir.path(), &[]);
    let cases: Vec<(Vec<u8>, ErrorCode)> = vec![
        (frame_of(0x55, 1, &[]), ErrorCode::UnknownOp),
        (frame_of(op::CHECK, 2, &[1, 0]), ErrorCode::BadFrame),
        (
            {
                let mut f = Vec::new();
                frame::put_header(&mut f, op::CHECK, 3, 1 << 20);
                f
            },
            ErrorCode::TooLarge,
        ),
        (
            frame_of(op::HELLO, 4, b"XXXX\x01\x00\x00\x00"),
            ErrorCode::BadVersion,
        ),
        (
            {
                let mut f = Vec::new();
                frame::put_check_frame(&mut f, 5, 1, b"qd_x", b"");
                f
            },
            ErrorCode::HelloRequired,
        ),
    ];
    for (bytes, want) in cases {
        let mut c = Conn::open(&d);
        c.send(&bytes);
        let (o, _, p) = c.recv();
        assert_eq!((o, error_code(&p)), (op::ERROR, want as u16), "{want:?}");
        assert!(c.closed(), "{want:?}");
    }
}

#[test]
fn malformed_unknown_and_bad_scopes_are_told_apart() {
    let dir = tempfile::tempdir().unwrap();
    let d = Daemon::start(dir.path(), &[]);
    let (_, key) = d
        .client()
        .create_key(json!({"consumer": "c", "tier": "pro"}));
    let mut c = Conn::hello(&d);
    let body = &key[3..];
    assert_eq!(body.len(), 43);
    let reason = |c: &mut Conn, k: &str| {
        let r = c.check(1, k, "");
        assert_eq!(r.code(), "unauthorized", "{k}");
        r.reason
    };
    // Malformed (2): not PREFIX + 43 URL-safe base64 characters.
    for bad in [
        "qd_short".to_string(),
        format!("qd_{}", &body[..39]), // 42 characters in all: too short
        format!("qd_{}", "A".repeat(57)), // 60: longer than a 16-character prefix allows
        format!("q!_{body}"),
        format!("qd_{}=", &body[..42]),
        format!("{}{body}", "p".repeat(17)),
    ] {
        assert_eq!(reason(&mut c, &bad), 2, "{bad}");
    }
    // Unknown (3): well formed, but no key matches (another id; the right id, a wrong secret;
    // the same key under another prefix, which is part of the key).
    let mut other_secret = key.clone().into_bytes();
    let at = other_secret.len() - 5;
    other_secret[at] = if other_secret[at] == b'A' { b'B' } else { b'A' };
    for unknown in [
        format!("qd_{}", "A".repeat(43)),
        String::from_utf8(other_secret).unwrap(),
        format!("xx_{body}"),
        format!("{}{body}", "p".repeat(16)),
    ] {
        assert_eq!(reason(&mut c, &unknown), 3, "{unknown}");
    }
    assert_eq!(reason(&mut c, ""), 1, "missing");
    assert_eq!(c.check(2, &key, "reports:read").code(), "allowed");
    assert_eq!(c.check(3, &key, "a.b-c_d/e:f").code(), "allowed");

    // A bad scope byte: request-level BAD_FRAME, the connection stays.
    let mut f = Vec::new();
    frame::put_check_frame(&mut f, 4, 1, key.as_bytes(), b"has space");
    c.send(&f);
    let (o, id, p) = c.recv();
    assert_eq!(
        (o, id, error_code(&p)),
        (op::ERROR, 4, ErrorCode::BadFrame as u16)
    );
    assert_eq!(c.check(5, &key, "").code(), "allowed");
    // A scope over 64 bytes: KEY_TOO_LONG, closed.
    let mut f = Vec::new();
    frame::put_check_frame(&mut f, 6, 1, key.as_bytes(), &[b'a'; 65]);
    c.send(&f);
    let (o, _, p) = c.recv();
    assert_eq!(
        (o, error_code(&p)),
        (op::ERROR, ErrorCode::KeyTooLong as u16)
    );
    assert!(c.closed());
}

#[test]
fn denials_consume_nothing_batches_go_one_by_one_and_the_tightest_limit_is_reported() {
    let dir = tempfile::tempdir().unwrap();
    let d = Daemon::start(dir.path(), &[]);
    let admin = d.client();
    let r = admin.admin(
        Method::PUT,
        "/tiers/small",
        Some(json!({"limits": [{"requests": 3, "periodSeconds": 3600}, {"requests": 100, "periodSeconds": 86400}], "monthlyQuota": 1000})),
    );
    assert_eq!(r.status, 200, "{}", r.text);
    let (id, key) = admin.create_key(json!({"consumer": "c", "tier": "small"}));
    let mut c = Conn::hello(&d);

    // A batch of 5 on a key with 3 left: allowed ×3, then rate_limited ×2; the denials cost nothing.
    let mut p = vec![5, 0, 0, 0];
    for _ in 0..5 {
        frame::put_check(&mut p, 1, key.as_bytes(), b"");
    }
    c.send(&frame_of(op::CHECK_BATCH, 9, &p));
    let (o, _, body) = c.recv();
    assert_eq!(o, op::BATCH_RESULT);
    let results: Vec<WireResult> = (0..5)
        .map(|i| WireResult::get(&body[4 + 40 * i..]).unwrap())
        .collect();
    let codes: Vec<&str> = results.iter().map(|r| r.code()).collect();
    assert_eq!(
        codes,
        [
            "allowed",
            "allowed",
            "allowed",
            "rate_limited",
            "rate_limited"
        ]
    );
    // Each allowed answer reports the limit with the fewest left: the 3/hour window (index 0).
    for (i, r) in results[..3].iter().enumerate() {
        assert_eq!((r.limit_index, r.limit, r.remaining), (0, 3, 2 - i as u64));
    }
    assert_eq!(results[3].limit_index, 0);
    assert!(results[3].retry_after >= 1);
    let usage = admin.admin(Method::GET, &format!("/keys/{id}"), None);
    assert_eq!(
        usage.body["usage"]["monthlyUsed"], 3,
        "denied checks consumed nothing"
    );

    // With the quota nearly spent, the quota is the tightest: the monthly quota (last index).
    let r = admin.admin(
        Method::PATCH,
        &format!("/keys/{id}"),
        Some(json!({"monthlyQuota": 4})),
    );
    assert_eq!(r.status, 200, "{}", r.text);
    let r = admin.admin(
        Method::PUT,
        "/tiers/small",
        Some(json!({"limits": [{"requests": 50, "periodSeconds": 3600}, {"requests": 100, "periodSeconds": 86400}], "monthlyQuota": 1000})),
    );
    assert_eq!(r.status, 200, "{}", r.text);
    let r = c.check(10, &key, "");
    assert_eq!(r.code(), "allowed");
    assert_eq!((r.limit_index, r.limit, r.remaining), (2, 4, 0));
    let r = c.check(11, &key, "");
    assert_eq!((r.code(), r.limit_index), ("quota_exceeded", 2));
}
