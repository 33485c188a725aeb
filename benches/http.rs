//! quotad's HTTP check endpoint against a bare hyper handler answering 200, in one run, same
//! machine, same load generator (`wrk`), same connections and duration. Both servers run in this
//! process on the same kind of tokio runtime and the same hyper HTTP/1 settings; only one is under
//! load at a time.
//!
//! Run: `cargo bench --bench http` (needs `wrk`: `apt-get install wrk`).
//! Knobs: `QUOTAD_HTTP_BENCH_SECS` (default 10), `QUOTAD_HTTP_BENCH_CONNS` (default 50),
//! `QUOTAD_HTTP_BENCH_ROUNDS` (default 3; each round runs both, bare hyper first in even rounds
//! and quotad first in odd ones; the median of the rounds' ratios is the figure).

use std::convert::Infallible;
use std::net::SocketAddr;
use std::process::Command;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::Full;
use hyper::Response;
use hyper_util::rt::{TokioIo, TokioTimer};

fn env_u64(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

async fn bare(listener: tokio::net::TcpListener) {
    loop {
        let Ok((s, _)) = listener.accept().await else {
            continue;
        };
        let _ = s.set_nodelay(true);
        tokio::spawn(async move {
            let svc = hyper::service::service_fn(|_req| async {
                Ok::<_, Infallible>(Response::new(Full::new(Bytes::from_static(b"ok"))))
            });
            let _ = hyper::server::conn::http1::Builder::new()
                .timer(TokioTimer::new())
                .header_read_timeout(Duration::from_secs(10))
                .serve_connection(TokioIo::new(s), svc)
                .await;
        });
    }
}

/// CPU seconds (user + system) this process has used so far.
fn cpu_secs() -> f64 {
    let mut ru: libc::rusage = unsafe { std::mem::zeroed() };
    // SAFETY: getrusage fills the struct we own.
    unsafe { libc::getrusage(libc::RUSAGE_SELF, &mut ru) };
    let tv = |t: libc::timeval| t.tv_sec as f64 + t.tv_usec as f64 / 1e6;
    tv(ru.ru_utime) + tv(ru.ru_stime)
}

/// Runs wrk; returns (requests/s, server CPU microseconds per request).
fn wrk(addr: SocketAddr, script: &std::path::Path, secs: u64, conns: u64) -> (f64, f64) {
    let cpu0 = cpu_secs();
    let out = Command::new("wrk")
        .args([
            "-t",
            "1",
            "-c",
            &conns.to_string(),
            "-d",
            &format!("{secs}s"),
            "--latency",
            "-s",
        ])
        .arg(script)
        .arg(format!("http://{addr}/v1/check"))
        .output()
        .expect("run wrk (apt-get install wrk)");
    let text = String::from_utf8_lossy(&out.stdout);
    let rps = text
        .lines()
        .find_map(|l| l.strip_prefix("Requests/sec:"))
        .and_then(|v| v.trim().parse::<f64>().ok())
        .unwrap_or_else(|| panic!("cannot read wrk output:\n{text}"));
    let non2xx = text.lines().find(|l| l.contains("Non-2xx"));
    assert!(non2xx.is_none(), "every check must be allowed: {non2xx:?}");
    let cpu = cpu_secs() - cpu0;
    (rps, cpu * 1e6 / (rps * secs as f64))
}

fn main() {
    if std::env::args().any(|a| a == "--list") {
        return;
    }
    let secs = env_u64("QUOTAD_HTTP_BENCH_SECS", 10);
    let conns = env_u64("QUOTAD_HTTP_BENCH_CONNS", 50);
    let rounds = env_u64("QUOTAD_HTTP_BENCH_ROUNDS", 3);
    let dir = tempfile::tempdir().unwrap();
    let (state, keys) = quotad::benchkit::bench_state(&dir.path().join("data"), 1000);
    let script = dir.path().join("keys.lua");
    let list = keys
        .iter()
        .map(|k| format!("\"{k}\""))
        .collect::<Vec<_>>()
        .join(",");
    std::fs::write(
        &script,
        format!(
            "local keys = {{{list}}}\nlocal i = 0\nrequest = function()\n  i = i + 1\n  \
             return wrk.format(\"GET\", \"/v1/check\", {{[\"X-API-Key\"] = keys[(i % #keys) + 1]}})\nend\n"
        ),
    )
    .unwrap();

    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let (q_addr, b_addr) = rt.block_on(async {
        let ql = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let bl = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addrs = (ql.local_addr().unwrap(), bl.local_addr().unwrap());
        tokio::spawn(quotad::server::http::run(
            ql,
            state.clone(),
            std::future::pending(),
            Duration::from_secs(1),
        ));
        tokio::spawn(bare(bl));
        addrs
    });

    let (mut best_bare, mut best_quotad) = (0f64, 0f64);
    let (mut cpu_bare, mut cpu_quotad) = (f64::MAX, f64::MAX);
    let mut ratios = Vec::new();
    for round in 0..rounds {
        // Alternate which contender goes first, so neither always meets the machine's load in
        // the same phase of a round.
        let ((b, bc), (q, qc)) = if round % 2 == 0 {
            let b = wrk(b_addr, &script, secs, conns);
            (b, wrk(q_addr, &script, secs, conns))
        } else {
            let q = wrk(q_addr, &script, secs, conns);
            (wrk(b_addr, &script, secs, conns), q)
        };
        println!(
            "round {round}: bare hyper {b:.0} req/s ({bc:.2} us CPU/req), quotad check {q:.0} req/s ({qc:.2} us CPU/req), ratio {:.3}",
            q / b
        );
        ratios.push(q / b);
        best_bare = best_bare.max(b);
        best_quotad = best_quotad.max(q);
        cpu_bare = cpu_bare.min(bc);
        cpu_quotad = cpu_quotad.min(qc);
    }
    ratios.sort_by(f64::total_cmp);
    println!(
        "best: bare hyper {best_bare:.0} req/s, quotad check {best_quotad:.0} req/s, ratio of bests {:.3}, median round ratio {:.3} (goal >= 0.9)",
        best_quotad / best_bare,
        ratios[ratios.len() / 2]
    );
    println!(
        "server CPU per request (min): bare {cpu_bare:.2} us, quotad {cpu_quotad:.2} us, ratio {:.3}; wrk -t1 -c{conns} -d{secs}s, 1000 keys",
        cpu_bare / cpu_quotad
    );
    drop(rt);
}
