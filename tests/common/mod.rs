//! Test harness: the real `quotad` binary on 127.0.0.1 with a temporary data directory.

#![allow(dead_code)]

pub mod blocking;
pub mod gateway;
pub mod redis;

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// Every log line any daemon in this test process printed (for the "no secrets in logs" checks).
pub static ALL_LOGS: Mutex<Vec<String>> = Mutex::new(Vec::new());

/// Every raw key and admin token a test used: none may appear in any log line.
pub static SECRETS: Mutex<Vec<String>> = Mutex::new(Vec::new());

/// Registers a secret that must never be logged.
pub fn remember_secret(s: &str) {
    SECRETS.lock().unwrap().push(s.to_string());
}

/// Keeps a CLI command's stderr with the logs (its stdout may show a raw key: that is its job).
pub fn record_output(out: &std::process::Output) {
    let err = String::from_utf8_lossy(&out.stderr);
    ALL_LOGS
        .lock()
        .unwrap()
        .extend(err.lines().map(str::to_string));
}

/// Panics if any log line so far contains a registered secret.
pub fn assert_no_secrets_logged() {
    let secrets = SECRETS.lock().map(|s| s.clone()).unwrap_or_default();
    let logs = ALL_LOGS.lock().map(|l| l.clone()).unwrap_or_default();
    for line in &logs {
        for s in &secrets {
            assert!(
                !line.contains(s.as_str()),
                "a secret appears in a log line: {line}"
            );
        }
    }
}

/// Unix time of 00:00 UTC on the 1st of next month.
pub fn next_month_start() -> i64 {
    let t = time::OffsetDateTime::now_utc();
    let (y, m) = if t.month() == time::Month::December {
        (t.year() + 1, time::Month::January)
    } else {
        (t.year(), t.month().next())
    };
    time::Date::from_calendar_date(y, m, 1)
        .unwrap()
        .midnight()
        .assume_utc()
        .unix_timestamp()
}

/// Seconds from now until the next month starts (UTC).
pub fn seconds_to_next_month() -> u64 {
    (next_month_start() - time::OffsetDateTime::now_utc().unix_timestamp()) as u64
}

pub struct Daemon {
    child: Option<Child>,
    pub http: SocketAddr,
    pub binary: SocketAddr,
    /// The gRPC listener (`None` when started with `--grpc off`).
    pub grpc: Option<SocketAddr>,
    pub data_dir: PathBuf,
    pub token: String,
    pub logs: Arc<Mutex<Vec<String>>>,
}

pub fn bin() -> &'static str {
    env!("CARGO_BIN_EXE_quotad")
}

impl Daemon {
    /// Starts `quotad serve` on 127.0.0.1:0 with `data_dir` and extra args.
    pub fn start(data_dir: &Path, extra: &[&str]) -> Daemon {
        Self::start_env(data_dir, extra, &[])
    }

    pub fn start_env(data_dir: &Path, extra: &[&str], env: &[(&str, &str)]) -> Daemon {
        let mut cmd = Command::new(bin());
        cmd.args([
            "--log-format",
            "json",
            "serve",
            "--http",
            "127.0.0.1:0",
            "--bind",
            "127.0.0.1:0",
            "--data-dir",
        ])
        .arg(data_dir)
        .args(extra)
        .env_remove("QUOTAD_ADMIN_TOKEN")
        .env("RUST_LOG", "debug")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped());
        for (k, v) in env {
            cmd.env(k, v);
        }
        if !extra.contains(&"--grpc") {
            cmd.args(["--grpc", "127.0.0.1:0"]);
        }
        let mut child = cmd.spawn().expect("spawn quotad");
        let stderr = child.stderr.take().unwrap();
        let logs = Arc::new(Mutex::new(Vec::new()));
        let (tx, rx) = std::sync::mpsc::channel();
        let l2 = logs.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines() {
                let Ok(line) = line else { break };
                match serde_json::from_str::<serde_json::Value>(&line) {
                    Ok(v) if v["message"] == "http listening" => {
                        let _ =
                            tx.send(Some(("http", v["addr"].as_str().unwrap_or("").to_string())));
                    }
                    Ok(v) if v["message"] == "binary listening" => {
                        let _ = tx.send(Some((
                            "binary",
                            v["addr"].as_str().unwrap_or("").to_string(),
                        )));
                    }
                    Ok(v) if v["message"] == "grpc listening" => {
                        let _ =
                            tx.send(Some(("grpc", v["addr"].as_str().unwrap_or("").to_string())));
                    }
                    Ok(v) if v["message"] == "ready" => {
                        let _ = tx.send(Some(("ready", String::new())));
                    }
                    Ok(v) if v["level"] == "ERROR" => {
                        let _ = tx.send(None);
                    }
                    Ok(_) => {}
                    Err(_) => {
                        let _ = tx.send(None);
                    }
                }
                ALL_LOGS.lock().unwrap().push(line.clone());
                l2.lock().unwrap().push(line);
            }
            let _ = tx.send(None);
        });
        let (mut http, mut binary, mut grpc) = (String::new(), String::new(), String::new());
        loop {
            match rx.recv_timeout(Duration::from_secs(30)) {
                Ok(Some(("http", a))) => http = a,
                Ok(Some(("binary", a))) => binary = a,
                Ok(Some(("grpc", a))) => grpc = a,
                Ok(Some(_)) => break,
                _ => {
                    let _ = child.kill();
                    let text = logs.lock().map(|l| l.join("\n")).unwrap_or_default();
                    panic!("quotad did not start:\n{text}");
                }
            }
        }
        let token = env
            .iter()
            .find(|(k, _)| *k == "QUOTAD_ADMIN_TOKEN")
            .map(|(_, v)| v.to_string())
            .unwrap_or_else(|| {
                std::fs::read_to_string(data_dir.join("admin.token"))
                    .unwrap()
                    .trim()
                    .to_string()
            });
        remember_secret(&token);
        Daemon {
            child: Some(child),
            http: http.parse().unwrap(),
            binary: binary.parse().unwrap(),
            grpc: grpc.parse().ok(),
            data_dir: data_dir.to_path_buf(),
            token,
            logs,
        }
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://{}{}", self.http, path)
    }

    pub fn pid(&self) -> i32 {
        self.child.as_ref().unwrap().id() as i32
    }

    /// Sends a signal.
    pub fn signal(&self, sig: i32) {
        unsafe { libc::kill(self.pid(), sig) };
    }

    /// SIGTERM and wait; returns the exit code.
    pub fn stop(mut self) -> i32 {
        let mut child = self.child.take().unwrap();
        unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            if let Some(st) = child.try_wait().unwrap() {
                return st.code().unwrap_or(-1);
            }
            if Instant::now() > deadline {
                let _ = child.kill();
                panic!("quotad did not exit after SIGTERM");
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// SIGKILL and reap.
    pub fn kill(mut self) {
        let mut child = self.child.take().unwrap();
        let _ = child.kill();
        let _ = child.wait();
    }

    pub fn log_text(&self) -> String {
        self.logs.lock().unwrap().join("\n")
    }

    pub fn client(&self) -> Client {
        Client {
            base: format!("http://{}", self.http),
            token: self.token.clone(),
            http: reqwest::blocking::Client::builder()
                .timeout(Duration::from_secs(20))
                .build()
                .unwrap(),
        }
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
        // Every test that ran a daemon checks the whole log of its process for secrets.
        if !std::thread::panicking() {
            std::thread::sleep(Duration::from_millis(20)); // let the log reader drain
            assert_no_secrets_logged();
        }
    }
}

pub struct Client {
    pub base: String,
    pub token: String,
    pub http: reqwest::blocking::Client,
}

pub struct Reply {
    pub status: u16,
    pub headers: reqwest::header::HeaderMap,
    pub body: serde_json::Value,
    pub text: String,
}

impl Reply {
    fn from(r: reqwest::blocking::Response) -> Reply {
        let status = r.status().as_u16();
        let headers = r.headers().clone();
        let text = r.text().unwrap();
        let body = serde_json::from_str(&text).unwrap_or(serde_json::Value::Null);
        Reply {
            status,
            headers,
            body,
            text,
        }
    }

    pub fn header(&self, name: &str) -> Option<String> {
        self.headers
            .get(name)
            .map(|v| v.to_str().unwrap().to_string())
    }

    pub fn header_u64(&self, name: &str) -> u64 {
        self.header(name)
            .unwrap_or_else(|| panic!("missing header {name}"))
            .parse()
            .unwrap()
    }

    pub fn code(&self) -> &str {
        self.body["error"]["code"].as_str().unwrap_or("")
    }

    /// Asserts an allowed check's answer: 200, the body naming key `id`, `consumer` and `tier`,
    /// and the identity headers a gateway passes upstream.
    pub fn assert_admitted(&self, id: &str, consumer: &str, tier: &str) {
        assert_eq!(self.status, 200, "{}", self.text);
        assert_eq!(
            self.body,
            serde_json::json!({"allowed": true, "keyId": id, "consumer": consumer, "tier": tier})
        );
        assert_eq!(self.header("x-quota-key-id").as_deref(), Some(id));
        assert_eq!(self.header("x-quota-consumer").as_deref(), Some(consumer));
    }
}

impl Client {
    pub fn admin(
        &self,
        method: reqwest::Method,
        path: &str,
        body: Option<serde_json::Value>,
    ) -> Reply {
        let mut rb = self
            .http
            .request(method, format!("{}/admin/v1{}", self.base, path))
            .bearer_auth(&self.token);
        if let Some(b) = body {
            rb = rb.json(&b);
        }
        let r = Reply::from(rb.send().unwrap());
        if let Some(k) = r.body["key"].as_str() {
            remember_secret(k);
        }
        r
    }

    /// Creates or replaces tier `name` (`PUT /admin/v1/tiers/{name}`), which must succeed.
    pub fn put_tier(&self, name: &str, body: serde_json::Value) {
        let r = self.admin(reqwest::Method::PUT, &format!("/tiers/{name}"), Some(body));
        assert_eq!(r.status, 200, "{}", r.text);
    }

    /// Tier `roomy` (1,000,000 a day and a month: nothing limits a test) and `n` keys on it,
    /// consumers `c0`, `c1`, …: (ids, keys).
    pub fn roomy_keys(&self, n: usize) -> (Vec<String>, Vec<String>) {
        self.put_tier(
            "roomy",
            serde_json::json!({
                "limits": [{"requests": 1_000_000, "periodSeconds": 86_400}],
                "monthlyQuota": 1_000_000
            }),
        );
        (0..n)
            .map(|i| {
                self.create_key(serde_json::json!({"consumer": format!("c{i}"), "tier": "roomy"}))
            })
            .unzip()
    }

    /// Key `id`'s usage this month, as the admin API reports it.
    pub fn monthly_used(&self, id: &str) -> u64 {
        let r = self.admin(reqwest::Method::GET, &format!("/keys/{id}"), None);
        assert_eq!(r.status, 200, "{}", r.text);
        r.body["usage"]["monthlyUsed"].as_u64().unwrap()
    }

    pub fn create_key(&self, body: serde_json::Value) -> (String, String) {
        let r = self.admin(reqwest::Method::POST, "/keys", Some(body));
        assert_eq!(r.status, 201, "{}", r.text);
        remember_secret(r.body["key"].as_str().unwrap());
        (
            r.body["id"].as_str().unwrap().to_string(),
            r.body["key"].as_str().unwrap().to_string(),
        )
    }

    pub fn check(&self, key: Option<&str>, headers: &[(&str, &str)]) -> Reply {
        let mut rb = self.http.get(format!("{}/v1/check", self.base));
        if let Some(k) = key {
            rb = rb.header("X-API-Key", k);
        }
        for (h, v) in headers {
            rb = rb.header(*h, *v);
        }
        Reply::from(rb.send().unwrap())
    }

    pub fn get(&self, path: &str) -> Reply {
        Reply::from(
            self.http
                .get(format!("{}{}", self.base, path))
                .send()
                .unwrap(),
        )
    }
}

/// A current-thread tokio runtime, for a test that drives the async APIs (the binary client, the
/// Redis store) from a plain `#[test]`.
/// Lease mode with leases of 20 tokens held at most 300 ms: `quotad serve` arguments.
pub const LEASE_20: [&str; 6] = [
    "--store-mode",
    "lease",
    "--lease-size",
    "20",
    "--lease-ttl-ms",
    "300",
];

/// One binary-protocol check of each key, cost 1, no scope.
pub fn checks_of(keys: &[String]) -> Vec<quotad::protocol::client::Check<'_>> {
    keys.iter()
        .map(|k| quotad::protocol::client::Check {
            key: k,
            scope: None,
            cost: 1,
        })
        .collect()
}

pub fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
}

/// Runs `quotad serve` on `data_dir` (with `env` set, the admin token unset unless given there)
/// expecting it to exit on its own rather than start: its exit status and stderr. Panics if it
/// is still running after 30 s.
pub fn serve_until_exit(
    data_dir: &Path,
    env: &[(&str, &str)],
) -> (std::process::ExitStatus, String) {
    let mut cmd = Command::new(bin());
    cmd.args(["serve", "--http", "127.0.0.1:0", "--bind", "127.0.0.1:0"])
        .args(["--grpc", "127.0.0.1:0"])
        .arg("--data-dir")
        .arg(data_dir)
        .env_remove("QUOTAD_ADMIN_TOKEN")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped());
    for (k, v) in env {
        cmd.env(k, v);
    }
    let mut child = cmd.spawn().unwrap();
    let deadline = Instant::now() + Duration::from_secs(30);
    let status = loop {
        if let Some(st) = child.try_wait().unwrap() {
            break st;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            let mut err = String::new();
            let _ = std::io::Read::read_to_string(&mut child.stderr.take().unwrap(), &mut err);
            panic!("quotad started where it must not:\n{err}");
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    let mut err = String::new();
    std::io::Read::read_to_string(&mut child.stderr.take().unwrap(), &mut err).unwrap();
    (status, err)
}

/// Writes `bytes` at `offset` of `path` (damaging a data file on purpose).
pub fn patch(path: &Path, offset: u64, bytes: &[u8]) {
    use std::io::{Seek, SeekFrom, Write};
    let mut f = std::fs::OpenOptions::new().write(true).open(path).unwrap();
    f.seek(SeekFrom::Start(offset)).unwrap();
    f.write_all(bytes).unwrap();
}

/// Flips bits of the byte at `offset` of `path`.
pub fn flip(path: &Path, offset: u64) {
    let b = std::fs::read(path).unwrap()[offset as usize];
    patch(path, offset, &[b ^ 0x5a]);
}

/// The sum of the samples of metric `name` in Prometheus text `text` whose labels include every
/// `label="value"` of `labels` (whatever their other labels).
pub fn metric_sum(text: &str, name: &str, labels: &[(&str, &str)]) -> u64 {
    text.lines()
        .filter(|l| !l.starts_with('#'))
        .filter_map(|l| {
            let rest = l.strip_prefix(name)?;
            let (set, value) = match rest.strip_prefix('{') {
                Some(r) => r.split_once("} ")?,
                None => ("", rest.strip_prefix(' ')?),
            };
            labels
                .iter()
                .all(|(k, v)| set.split(',').any(|p| p == format!("{k}=\"{v}\"")))
                .then(|| value.trim().parse::<u64>().ok())?
        })
        .sum()
}

/// One check of `key` (scope none, cost 1) over the binary protocol at `addr`.
pub fn binary_check(addr: SocketAddr, key: &str) -> quotad::protocol::result::WireResult {
    runtime().block_on(async {
        let c = quotad::protocol::client::Client::connect_tcp(addr)
            .await
            .unwrap();
        c.check(quotad::protocol::client::Check {
            key,
            scope: None,
            cost: 1,
        })
        .await
        .unwrap()
    })
}

/// One request to Envoy's rate limit service at `addr` for `key` (descriptor `api_key`).
pub fn rls_check(
    addr: SocketAddr,
    key: &str,
) -> envoy_types::pb::envoy::service::ratelimit::v3::RateLimitResponse {
    use envoy_types::pb::envoy::extensions::common::ratelimit::v3::{
        rate_limit_descriptor::Entry, RateLimitDescriptor,
    };
    use envoy_types::pb::envoy::service::ratelimit::v3::rate_limit_service_client::RateLimitServiceClient;
    use envoy_types::pb::envoy::service::ratelimit::v3::RateLimitRequest;
    runtime().block_on(async {
        let mut c = RateLimitServiceClient::connect(format!("http://{addr}"))
            .await
            .unwrap();
        c.should_rate_limit(RateLimitRequest {
            domain: "gateway".into(),
            descriptors: vec![RateLimitDescriptor {
                entries: vec![Entry {
                    key: "api_key".into(),
                    value: key.into(),
                }],
                ..Default::default()
            }],
            hits_addend: 0,
        })
        .await
        .unwrap()
        .into_inner()
    })
}

/// `quotad serve` on `data`, on its own files or on `redis` when given, with `extra` arguments.
pub fn start_on(redis: Option<&redis::RedisServer>, data: &Path, extra: &[&str]) -> Daemon {
    let url = redis.map(|r| r.url());
    let mut args: Vec<&str> = extra.to_vec();
    if let Some(u) = &url {
        args.extend(["--store", u.as_str()]);
    }
    Daemon::start(data, &args)
}

/// The CLI run against daemon `d`'s admin API with `args` (its output recorded for the secrets
/// check).
pub fn cli(d: &Daemon, args: &[&str]) -> std::process::Output {
    let out = Command::new(bin())
        .args(args)
        .args([
            "--admin-url",
            &format!("http://{}", d.http),
            "--token",
            &d.token,
        ])
        .env_remove("QUOTAD_ADMIN_TOKEN")
        .env_remove("QUOTAD_ADMIN_URL")
        .output()
        .unwrap();
    record_output(&out);
    out
}
