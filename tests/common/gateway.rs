//! What the gateway tests (nginx, Caddy) share: an upstream API that echoes what it was sent, and
//! a raw HTTP/1.1 client that sees every header as the gateway wrote it.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use serde_json::json;

use super::Daemon;

/// What a gateway test puts behind the gateway: quotad with a tier `tight` of `per_minute`
/// requests and a key on it (consumer `acme-corp`, scope `api:read`), a running [`upstream`], a
/// free port for the gateway, and the configuration shipped to users at `doc` (a path in the
/// repository), to be pointed at them.
pub struct Behind {
    pub dir: tempfile::TempDir,
    pub d: Daemon,
    /// The key's id and raw key.
    pub id: String,
    pub key: String,
    /// Stops the upstream; `up` is its thread and `up_port` its port.
    pub stop: Arc<AtomicBool>,
    pub up: std::thread::JoinHandle<()>,
    pub up_port: u16,
    /// The port for the gateway.
    pub port: u16,
    /// The shipped configuration's text.
    pub shipped: String,
}

/// Sets up [`Behind`].
pub fn behind_gateway(per_minute: u64, doc: &str) -> Behind {
    let dir = tempfile::tempdir().unwrap();
    let d = Daemon::start(&dir.path().join("data"), &[]);
    let c = d.client();
    let r = c.admin(
        reqwest::Method::PUT,
        "/tiers/tight",
        Some(json!({"limits": [{"requests": per_minute, "periodSeconds": 60}]})),
    );
    assert_eq!(r.status, 200);
    let (id, key) =
        c.create_key(json!({"consumer": "acme-corp", "tier": "tight", "scopes": ["api:read"]}));
    let stop = Arc::new(AtomicBool::new(false));
    let (up_port, up) = upstream(stop.clone());
    let shipped =
        std::fs::read_to_string(std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join(doc))
            .unwrap();
    Behind {
        dir,
        d,
        id,
        key,
        stop,
        up,
        up_port,
        port: free_port(),
        shipped,
    }
}

/// An upstream that answers 200 and echoes the identity headers it received.
pub fn upstream(stop: Arc<AtomicBool>) -> (u16, std::thread::JoinHandle<()>) {
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    l.set_nonblocking(true).unwrap();
    let port = l.local_addr().unwrap().port();
    let h = std::thread::spawn(move || {
        while !stop.load(Ordering::Relaxed) {
            let Ok((s, _)) = l.accept() else {
                std::thread::sleep(Duration::from_millis(5));
                continue;
            };
            s.set_nonblocking(false).unwrap();
            let mut r = BufReader::new(s.try_clone().unwrap());
            let mut key_id = String::new();
            let mut consumer = String::new();
            let mut saw_api_key = false;
            loop {
                let mut line = String::new();
                if r.read_line(&mut line).unwrap_or(0) == 0 || line == "\r\n" {
                    break;
                }
                let lower = line.to_ascii_lowercase();
                if let Some(v) = lower.strip_prefix("x-quota-key-id:") {
                    key_id = v.trim().to_string();
                }
                if lower.starts_with("x-quota-consumer:") {
                    consumer = line["x-quota-consumer:".len()..].trim().to_string();
                }
                saw_api_key |= lower.starts_with("x-api-key:");
            }
            let body = json!({"upstream": true, "keyId": key_id, "consumer": consumer, "sawApiKey": saw_api_key}).to_string();
            let mut s = s;
            let _ = write!(
                s,
                "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
                body.len()
            );
        }
    });
    (port, h)
}

pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

pub struct Reply {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: serde_json::Value,
}

impl Reply {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }
}

pub fn get(port: u16, path: &str, key: Option<&str>) -> Reply {
    get_with(port, path, key, "")
}

/// GET with `extra` header lines (each ending in CRLF).
pub fn get_with(port: u16, path: &str, key: Option<&str>, extra: &str) -> Reply {
    let mut s = TcpStream::connect(("127.0.0.1", port)).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let key_line = key
        .map(|k| format!("X-API-Key: {k}\r\n{extra}"))
        .unwrap_or_else(|| extra.to_string());
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: localhost\r\n{key_line}Connection: close\r\n\r\n"
    )
    .unwrap();
    let mut raw = String::new();
    s.read_to_string(&mut raw).unwrap();
    let (head, body) = raw.split_once("\r\n\r\n").unwrap();
    let mut lines = head.lines();
    let status = lines
        .next()
        .unwrap()
        .split(' ')
        .nth(1)
        .unwrap()
        .parse()
        .unwrap();
    let headers = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.trim().to_string(), v.trim().to_string()))
        .collect();
    Reply {
        status,
        headers,
        body: serde_json::from_str(body).unwrap_or(serde_json::Value::Null),
    }
}
