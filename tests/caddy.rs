//! Real Caddy with `forward_auth` in front of a small upstream and quotad, configured by the file
//! shipped to users (`docs/caddy/Caddyfile`): identity upstream, rate-limit headers to the client
//! on a 200, quotad's own 401/403/429 answers, route costs, no raw key upstream, and quotad down.

mod common;

use std::net::TcpStream;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use common::gateway::{behind_gateway, free_port, get, get_with, Behind};
use common::Daemon;
use serde_json::json;

fn caddy_binary() -> String {
    for p in ["/usr/bin/caddy", "/usr/local/bin/caddy"] {
        if Path::new(p).exists() {
            return p.to_string();
        }
    }
    // The test setup installs it; do it here too when run on its own (needs root).
    let st = Command::new("sh")
        .args([
            "-c",
            "apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq caddy",
        ])
        .status()
        .expect("run apt-get");
    assert!(st.success(), "caddy is missing and could not be installed");
    "/usr/bin/caddy".into()
}

struct Caddy(Child);

impl Drop for Caddy {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Starts `caddy` on the Caddyfile `file`, with its home and log (`caddy.log`) in `dir`, and
/// waits up to `within` for `ready()`.
fn start_caddy(
    caddy: &str,
    dir: &Path,
    file: &Path,
    within: Duration,
    ready: impl Fn() -> bool,
) -> Caddy {
    let home = dir.join("caddy-home");
    std::fs::create_dir_all(&home).unwrap();
    let child = Command::new(caddy)
        .args(["run", "--adapter", "caddyfile", "--config"])
        .arg(file)
        .env("HOME", &home)
        .env("XDG_DATA_HOME", &home)
        .env("XDG_CONFIG_HOME", &home)
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(dir.join("caddy.log")).unwrap())
        .spawn()
        .expect("start caddy");
    let caddy = Caddy(child);
    let deadline = Instant::now() + within;
    while !ready() {
        assert!(
            Instant::now() < deadline,
            "caddy did not start:\n{}",
            std::fs::read_to_string(dir.join("caddy.log")).unwrap_or_default()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    caddy
}

#[test]
fn caddy_forward_auth_passes_identity_and_headers_and_returns_quotad_errors() {
    let caddy = caddy_binary();
    let Behind {
        dir,
        d,
        id,
        key,
        stop,
        up,
        up_port,
        port,
        shipped,
    } = behind_gateway(10, "docs/caddy/Caddyfile");
    let site = shipped
        .replace(
            "forward_auth 127.0.0.1:8686",
            &format!("forward_auth {}", d.http),
        )
        .replace(
            "reverse_proxy 127.0.0.1:8080",
            &format!("reverse_proxy 127.0.0.1:{up_port}"),
        )
        .replace("http://:8000", &format!("http://:{port}"));
    assert_ne!(site, shipped);
    let file = dir.path().join("Caddyfile");
    std::fs::write(&file, site).unwrap();
    let _caddy = start_caddy(&caddy, dir.path(), &file, Duration::from_secs(15), || {
        TcpStream::connect(("127.0.0.1", port)).is_ok()
    });

    // 200: the upstream is reached, sees who is calling but not the raw key, and the client gets
    // the rate-limit headers.
    let r = get(port, "/hello", Some(&key));
    assert_eq!(r.status, 200, "{:?} {:?}", r.headers, r.body);
    assert_eq!(r.body["upstream"], true, "{:?} {:?}", r.headers, r.body);
    assert_eq!(r.body["keyId"], id.as_str());
    assert_eq!(r.body["consumer"], "acme-corp");
    assert_eq!(
        r.body["sawApiKey"], false,
        "the raw key is not forwarded upstream"
    );
    assert_eq!(r.header("x-ratelimit-limit"), Some("10"));
    assert_eq!(r.header("x-ratelimit-remaining"), Some("9"));
    assert!(r.header("ratelimit-policy").unwrap().contains("q=10;w=60"));

    // 401 and 403: quotad's answer as it is.
    let r = get(port, "/hello", None);
    assert_eq!(r.status, 401);
    assert_eq!(r.body["error"]["code"], "unauthorized");
    assert_eq!(
        r.header("www-authenticate"),
        None.or(r.header("www-authenticate"))
    );
    let r = get_with(port, "/hello", Some(&key), "X-Quota-Scope: api:write\r\n");
    assert_eq!(
        r.status, 200,
        "the route, not the client, names the scope: {:?}",
        r.body
    );
    let r = get(port, "/write/thing", Some(&key));
    assert_eq!(r.status, 403, "{:?}", r.body);
    assert_eq!(r.body["error"]["code"], "forbidden");

    // Costs: the client's X-Quota-Cost is dropped; /bulk/* costs 5.
    let r = get_with(port, "/hello", Some(&key), "X-Quota-Cost: 1000\r\n");
    assert_eq!(r.status, 200, "{:?}", r.body);
    assert_eq!(
        r.header("x-ratelimit-remaining"),
        Some("7"),
        "charged 1, not 1000"
    );
    let r = get(port, "/bulk/export", Some(&key));
    assert_eq!(r.status, 200, "{:?}", r.body);
    assert_eq!(
        r.header("x-ratelimit-remaining"),
        Some("2"),
        "the route costs 5"
    );

    // 429 once spent, with Retry-After and the rate-limit headers.
    let r = loop {
        let r = get(port, "/hello", Some(&key));
        if r.status != 200 {
            break r;
        }
    };
    assert_eq!(r.status, 429, "{:?} {:?}", r.headers, r.body);
    assert_eq!(r.body["error"]["code"], "rate_limited");
    let ra: u64 = r.header("retry-after").unwrap().parse().unwrap();
    assert!(ra >= 1);
    assert_eq!(r.header("x-ratelimit-remaining"), Some("0"));

    // quotad down: 503 with a JSON envelope; the API is not called.
    d.kill();
    let t = Instant::now();
    let r = get(port, "/hello", Some(&key));
    assert_eq!(r.status, 503, "{:?} {:?}", r.headers, r.body);
    assert_eq!(r.body["error"]["code"], "unavailable");
    assert!(t.elapsed() < Duration::from_secs(3), "{:?}", t.elapsed());

    stop.store(true, Ordering::Relaxed);
    up.join().unwrap();
}

/// The operator CLI speaks https:// to an admin API behind a TLS proxy (Caddy with its internal
/// CA), trusting that CA with --admin-ca, and refuses a certificate it cannot verify.
#[test]
fn the_admin_cli_speaks_https_and_verifies_the_certificate() {
    let caddy = caddy_binary();
    let dir = tempfile::tempdir().unwrap();
    let d = Daemon::start(&dir.path().join("data"), &[]);
    let (id, _) = d
        .client()
        .create_key(json!({"consumer": "tls", "tier": "free"}));
    let port = free_port();
    let store = dir.path().join("caddy-store");
    let file = dir.path().join("Caddyfile");
    std::fs::write(
        &file,
        format!(
            "{{\n\tadmin off\n\tskip_install_trust\n\tstorage file_system {}\n}}\n\nhttps://127.0.0.1:{port} {{\n\ttls internal\n\treverse_proxy {}\n}}\n",
            store.display(),
            d.http
        ),
    )
    .unwrap();
    let root = store.join("pki/authorities/local/root.crt");
    let _caddy = start_caddy(&caddy, dir.path(), &file, Duration::from_secs(20), || {
        TcpStream::connect(("127.0.0.1", port)).is_ok() && root.exists()
    });
    let url = format!("https://127.0.0.1:{port}");
    let cli = |extra: &[&str]| {
        Command::new(common::bin())
            .args([
                "keys",
                "list",
                "--json",
                "--token",
                &d.token,
                "--admin-url",
                &url,
            ])
            .args(extra)
            .env_remove("QUOTAD_ADMIN_TOKEN")
            .env_remove("QUOTAD_ADMIN_CA")
            .output()
            .unwrap()
    };
    // Caddy issues the site's certificate a moment after it starts listening; until then its
    // handshakes end in an "internal error" alert.
    let deadline = Instant::now() + Duration::from_secs(20);
    let out = loop {
        let out = cli(&["--admin-ca", root.to_str().unwrap()]);
        let err = String::from_utf8_lossy(&out.stderr);
        if out.status.success() || !err.contains("InternalError") || Instant::now() > deadline {
            break out;
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["keys"][0]["id"], id.as_str());
    // Without the CA the certificate does not verify: a clear failure, nothing sent.
    let out = cli(&[]);
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("TLS") && err.contains("certificate"), "{err}");
}
