//! Real nginx with `auth_request` in front of a small upstream and quotad, configured by the file
//! shipped to users (`docs/nginx/quotad.conf`).

mod common;

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::Daemon;
use serde_json::json;

fn nginx_binary() -> String {
    for p in ["/usr/sbin/nginx", "/usr/bin/nginx"] {
        if Path::new(p).exists() {
            return p.to_string();
        }
    }
    // The test setup installs it; do it here too when run on its own (needs root).
    let st = Command::new("sh")
        .args([
            "-c",
            "apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq nginx",
        ])
        .status()
        .expect("run apt-get");
    assert!(st.success(), "nginx is missing and could not be installed");
    "/usr/sbin/nginx".into()
}

/// An upstream that answers 200 and echoes the identity headers it received.
fn upstream(stop: Arc<AtomicBool>) -> (u16, std::thread::JoinHandle<()>) {
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

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

struct Nginx(Child);

impl Drop for Nginx {
    fn drop(&mut self) {
        unsafe { libc::kill(self.0.id() as i32, libc::SIGQUIT) };
        let deadline = Instant::now() + Duration::from_secs(5);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.0.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

struct Reply {
    status: u16,
    headers: Vec<(String, String)>,
    body: serde_json::Value,
}

impl Reply {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }
}

fn get(port: u16, path: &str, key: Option<&str>) -> Reply {
    let mut s = TcpStream::connect(("127.0.0.1", port)).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let key_line = key
        .map(|k| format!("X-API-Key: {k}\r\n"))
        .unwrap_or_default();
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

#[test]
fn nginx_auth_request_passes_identity_upstream_and_returns_quotad_errors() {
    let nginx = nginx_binary();
    let dir = tempfile::tempdir().unwrap();
    let d = Daemon::start(&dir.path().join("data"), &[]);
    let c = d.client();
    let r = c.admin(
        reqwest::Method::PUT,
        "/tiers/tight",
        Some(json!({"limits": [{"requests": 2, "periodSeconds": 60}]})),
    );
    assert_eq!(r.status, 200);
    let (id, key) =
        c.create_key(json!({"consumer": "acme-corp", "tier": "tight", "scopes": ["api:read"]}));

    let stop = Arc::new(AtomicBool::new(false));
    let (up_port, up) = upstream(stop.clone());
    let port = free_port();
    let shipped = std::fs::read_to_string(
        Path::new(env!("CARGO_MANIFEST_DIR")).join("docs/nginx/quotad.conf"),
    )
    .unwrap();
    let site = shipped
        .replace("server 127.0.0.1:8686;", &format!("server {};", d.http))
        .replace(
            "server 127.0.0.1:8080;",
            &format!("server 127.0.0.1:{up_port};"),
        )
        .replace(
            "listen 127.0.0.1:8000;",
            &format!("listen 127.0.0.1:{port};"),
        );
    let prefix = dir.path().join("nginx");
    std::fs::create_dir_all(prefix.join("logs")).unwrap();
    let t = prefix.display();
    let conf = format!(
        "worker_processes 1;\npid {t}/nginx.pid;\nerror_log stderr warn;\nevents {{ worker_connections 64; }}\n\
         http {{\n access_log off;\n client_body_temp_path {t}/body;\n proxy_temp_path {t}/proxy;\n\
         fastcgi_temp_path {t}/fastcgi;\n uwsgi_temp_path {t}/uwsgi;\n scgi_temp_path {t}/scgi;\n{site}\n}}\n"
    );
    std::fs::write(prefix.join("nginx.conf"), conf).unwrap();
    let child = Command::new(&nginx)
        .args(["-p"])
        .arg(&prefix)
        .args(["-e", "stderr", "-c"])
        .arg(prefix.join("nginx.conf"))
        .args(["-g", "daemon off;"])
        .stdout(Stdio::null())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("start nginx");
    let _nginx = Nginx(child);
    let deadline = Instant::now() + Duration::from_secs(10);
    while TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(Instant::now() < deadline, "nginx did not start");
        std::thread::sleep(Duration::from_millis(50));
    }

    // 200: the upstream is reached and sees who is calling.
    let r = get(port, "/hello", Some(&key));
    assert_eq!(r.status, 200, "{:?}", r.body);
    assert_eq!(r.body["upstream"], true);
    assert_eq!(r.body["keyId"], id.as_str());
    assert_eq!(r.body["consumer"], "acme-corp");
    assert_eq!(r.header("x-ratelimit-limit"), Some("2"));
    assert_eq!(r.header("x-ratelimit-remaining"), Some("1"));
    assert!(r.header("ratelimit-policy").unwrap().contains("q=2;w=60"));

    // 401 with quotad's envelope; the request id is nginx's, echoed by quotad.
    let r = get(port, "/hello", None);
    assert_eq!(r.status, 401);
    assert_eq!(r.body["error"]["code"], "unauthorized");
    assert_eq!(r.body["error"]["message"], "Missing or invalid API key");
    assert_eq!(
        r.body["error"]["requestId"].as_str(),
        r.header("x-request-id")
    );

    // 403: the route needs a scope the key lacks.
    let r = get(port, "/write/thing", Some(&key));
    assert_eq!(r.status, 403);
    assert_eq!(r.body["error"]["code"], "forbidden");
    assert_eq!(
        r.body["error"]["message"],
        "API key lacks required scope: api:write"
    );

    // 429 once the burst is spent, with Retry-After and the rate-limit headers.
    assert_eq!(get(port, "/hello", Some(&key)).status, 200);
    let r = get(port, "/hello", Some(&key));
    assert_eq!(r.status, 429, "{:?} {:?}", r.headers, r.body);
    assert_eq!(r.body["error"]["code"], "rate_limited");
    assert_eq!(
        r.body["error"]["message"],
        "Rate limit exceeded: 2 per minute"
    );
    let ra: u64 = r.header("retry-after").unwrap().parse().unwrap();
    assert!((1..=30).contains(&ra));
    assert_eq!(r.header("x-ratelimit-remaining"), Some("0"));
    assert!(r.body["error"]["requestId"].is_string());

    stop.store(true, Ordering::Relaxed);
    up.join().unwrap();
}
