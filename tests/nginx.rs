//! Real nginx with `auth_request` in front of a small upstream and quotad, configured by the file
//! shipped to users (`docs/nginx/quotad.conf`).

mod common;

use std::net::TcpStream;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use common::gateway::{behind_gateway, get, get_with, Behind};
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

/// Waits until every thread of `pid` is stopped (SIGSTOP reaches a running thread a moment late).
fn wait_stopped(pid: i32) {
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let all = std::fs::read_dir(format!("/proc/{pid}/task"))
            .unwrap()
            .filter_map(|t| std::fs::read_to_string(t.ok()?.path().join("stat")).ok())
            .all(|stat| {
                stat.rsplit_once(") ")
                    .is_some_and(|(_, rest)| rest.starts_with('T'))
            });
        if all {
            return;
        }
        assert!(Instant::now() < deadline, "quotad did not stop");
        std::thread::sleep(Duration::from_millis(5));
    }
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

#[test]
fn nginx_auth_request_passes_identity_upstream_and_returns_quotad_errors() {
    // (also: route costs, no raw key upstream, and quotad slow or down; see the end)
    let nginx = nginx_binary();
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
    } = behind_gateway(2, "docs/nginx/quotad.conf");
    let c = d.client();
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
    assert_eq!(
        r.body["sawApiKey"], false,
        "the raw key is not forwarded upstream"
    );
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

    // The cost is the route's: a client's own X-Quota-Cost is not passed on.
    let r = c.admin(
        reqwest::Method::PUT,
        "/tiers/roomy",
        Some(json!({"limits": [{"requests": 100, "periodSeconds": 60}]})),
    );
    assert_eq!(r.status, 200);
    let (_, roomy) = c.create_key(json!({"consumer": "acme-corp", "tier": "roomy"}));
    let r = get_with(port, "/hello", Some(&roomy), "X-Quota-Cost: 1000\r\n");
    assert_eq!(r.status, 200, "{:?}", r.body);
    assert_eq!(
        r.header("x-ratelimit-remaining"),
        Some("99"),
        "charged 1, not 1000"
    );
    let r = get_with(port, "/hello", Some(&roomy), "X-Quota-Cost: 0\r\n");
    assert_eq!(r.status, 200, "{:?}", r.body);
    let r = get(port, "/bulk/export", Some(&roomy));
    assert_eq!(r.status, 200, "{:?}", r.body);
    assert_eq!(
        r.header("x-ratelimit-remaining"),
        Some("93"),
        "the route costs 5"
    );

    // quotad hangs: 503 with the JSON envelope within the check's timeouts, the API not called.
    d.signal(libc::SIGSTOP);
    wait_stopped(d.pid());
    let t = Instant::now();
    let r = get(port, "/hello", Some(&roomy));
    d.signal(libc::SIGCONT);
    assert_eq!(r.status, 503, "{:?}", r.body);
    assert_eq!(r.body["error"]["code"], "unavailable");
    assert!(t.elapsed() < Duration::from_secs(3), "{:?}", t.elapsed());
    assert_eq!(get(port, "/hello", Some(&roomy)).status, 200);
    // quotad down: the same answer, at once.
    d.kill();
    let t = Instant::now();
    let r = get(port, "/hello", Some(&roomy));
    assert_eq!(r.status, 503, "{:?}", r.body);
    assert_eq!(r.body["error"]["code"], "unavailable");
    assert!(t.elapsed() < Duration::from_secs(2), "{:?}", t.elapsed());

    stop.store(true, Ordering::Relaxed);
    up.join().unwrap();
}
