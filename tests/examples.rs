//! The examples in `examples/`, run as a user would run them, against a live daemon: the binary
//! protocol gateway and the HTTP forward-auth gateway, each in front of real sockets.

mod common;

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpListener;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};

use common::Daemon;
use serde_json::json;

/// The built example `name`, built now if `cargo test` did not build it (e.g. `--test examples`).
fn example(name: &str) -> PathBuf {
    let deps = std::env::current_exe().unwrap();
    let path = deps
        .parent()
        .and_then(|d| d.parent())
        .unwrap()
        .join("examples")
        .join(name);
    if !path.exists() {
        let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
        let ok = Command::new(cargo)
            .args(["build", "--example", name])
            .current_dir(env!("CARGO_MANIFEST_DIR"))
            .status()
            .unwrap()
            .success();
        assert!(ok, "cargo build --example {name}");
    }
    path
}

/// A running example, stopped on drop.
struct Running {
    child: Child,
    addr: String,
}

impl Running {
    fn start(name: &str, args: &[&str]) -> Running {
        let mut child = {
            let _g = common::redis::no_spawns();
            Command::new(example(name))
                .args(args)
                .stdout(Stdio::piped())
                .stderr(Stdio::inherit())
                .spawn()
                .expect("start the example")
        };
        let mut line = String::new();
        BufReader::new(child.stdout.take().unwrap())
            .read_line(&mut line)
            .unwrap();
        let addr = line
            .trim()
            .strip_prefix("listening on ")
            .unwrap_or_else(|| panic!("unexpected first line {line:?}"))
            .to_string();
        Running { child, addr }
    }

    fn get(&self, path: &str, key: &str) -> reqwest::blocking::Response {
        reqwest::blocking::Client::new()
            .get(format!("http://{}{path}", self.addr))
            .header("x-api-key", key)
            .send()
            .unwrap()
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn header(r: &reqwest::blocking::Response, name: &str) -> String {
    r.headers()
        .get(name)
        .map(|v| v.to_str().unwrap().to_string())
        .unwrap_or_default()
}

#[test]
fn the_binary_gateway_example_admits_limits_and_refuses_through_a_live_daemon() {
    let dir = tempfile::tempdir().unwrap();
    let d = Daemon::start(&dir.path().join("data"), &[]);
    let (id, key) = d
        .client()
        .create_key(json!({"consumer": "acme", "tier": "free", "scopes": ["reports:read"]}));
    let quotad = d.binary.to_string();
    let gw = Running::start(
        "binary_gateway",
        &["--quotad", &quotad, "--listen", "127.0.0.1:0"],
    );

    let r = gw.get("/reports", &key);
    assert_eq!(r.status(), 200);
    assert_eq!(header(&r, "x-ratelimit-limit"), "60");
    assert_eq!(header(&r, "x-ratelimit-remaining"), "59");
    assert_eq!(r.text().unwrap(), "hello from GET /reports\n");
    // The route table asks for reports:write, which the key lacks.
    let r = reqwest::blocking::Client::new()
        .post(format!("http://{}/reports", gw.addr))
        .header("x-api-key", &key)
        .send()
        .unwrap();
    assert_eq!(r.status(), 403);
    assert_eq!(gw.get("/reports", "qd_not-a-key").status(), 401);
    // The free tier's 60 per minute, counted by the daemon whichever transport asks.
    for i in 1..59 {
        assert_eq!(gw.get("/status", &key).status(), 200, "request {i}");
    }
    let http = d.client().check(Some(&key), &[]);
    assert_eq!(http.status, 200, "the 60th, over HTTP");
    assert_eq!(http.header_u64("x-ratelimit-remaining"), 0);
    let r = gw.get("/status", &key);
    assert_eq!(r.status(), 429);
    assert_eq!(header(&r, "x-ratelimit-remaining"), "0");
    assert!(header(&r, "retry-after").parse::<u64>().unwrap() >= 1);
    let u = d
        .client()
        .admin(reqwest::Method::GET, &format!("/keys/{id}"), None);
    assert_eq!(
        u.body["usage"]["monthlyUsed"], 60,
        "denials consume nothing"
    );
}

/// An upstream that answers every request with 200 and, as its body, the request's head.
fn echo_upstream() -> (String, std::thread::JoinHandle<()>) {
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = l.local_addr().unwrap().to_string();
    let h = std::thread::spawn(move || {
        for s in l.incoming() {
            let Ok(mut s) = s else { break };
            let mut buf = Vec::new();
            let mut chunk = [0u8; 4096];
            while !buf.windows(4).any(|w| w == b"\r\n\r\n") {
                match s.read(&mut chunk) {
                    Ok(0) | Err(_) => break,
                    Ok(n) => buf.extend_from_slice(&chunk[..n]),
                }
            }
            let head = String::from_utf8_lossy(&buf).to_lowercase();
            if head.contains("x-stop: yes") {
                break;
            }
            let _ = write!(
                s,
                "HTTP/1.1 200 OK\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{head}",
                head.len()
            );
        }
    });
    (addr, h)
}

#[test]
fn the_http_gateway_example_forwards_only_what_quotad_allows_with_its_headers() {
    let dir = tempfile::tempdir().unwrap();
    let d = Daemon::start(&dir.path().join("data"), &[]);
    let (id, key) = d
        .client()
        .create_key(json!({"consumer": "acme", "tier": "free", "scopes": ["reports:read"]}));
    let (upstream, up) = echo_upstream();
    let quotad = d.http.to_string();
    let gw = Running::start(
        "http_gateway",
        &[
            "--quotad",
            &quotad,
            "--upstream",
            &upstream,
            "--listen",
            "127.0.0.1:0",
        ],
    );

    let r = gw.get("/reports", &key);
    assert_eq!(r.status(), 200);
    assert_eq!(header(&r, "x-ratelimit-remaining"), "59");
    assert!(header(&r, "ratelimit-policy").contains("\"minute\";q=60;w=60"));
    let seen = r.text().unwrap();
    assert!(seen.starts_with("get /reports"), "{seen}");
    assert!(seen.contains(&format!("x-quota-key-id: {id}")), "{seen}");
    assert!(seen.contains("x-quota-consumer: acme"), "{seen}");

    let r = gw.get("/reports", "qd_not-a-key");
    assert_eq!(r.status(), 401);
    let body: serde_json::Value = r.json().unwrap();
    assert_eq!(body["error"]["code"], "unauthorized");
    let r = reqwest::blocking::Client::new()
        .post(format!("http://{}/reports", gw.addr))
        .header("x-api-key", &key)
        .send()
        .unwrap();
    assert_eq!(r.status(), 403, "reports:write is not granted");

    let u = d
        .client()
        .admin(reqwest::Method::GET, &format!("/keys/{id}"), None);
    assert_eq!(
        u.body["usage"]["monthlyUsed"], 1,
        "only the admitted request counted"
    );
    // Stop the upstream.
    let _ = reqwest::blocking::Client::new()
        .get(format!("http://{upstream}/"))
        .header("x-stop", "yes")
        .send();
    up.join().unwrap();
}
