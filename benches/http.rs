//! quotad's HTTP check endpoint against a bare hyper handler answering 200, in one run, same
//! machine, same load generator (`wrk`), same connections and duration. Both servers run in this
//! process on the same kind of tokio runtime and the same hyper HTTP/1 settings; only one is under
//! load at a time.
//!
//! A third contender shows what the answer itself costs: the same bare handler sending, as fixed
//! bytes, the headers and body of one of quotad's allowed answers (captured at start-up). Its
//! ratio to bare hyper is the ceiling the goal leaves room under: what HTTP costs for an answer of
//! that size, with no check and no rendering.
//!
//! Run: `cargo bench --bench http` (needs `wrk`: `apt-get install wrk`).
//! Knobs: `QUOTAD_HTTP_BENCH_SECS` (default 4), `QUOTAD_HTTP_BENCH_CONNS` (default 50),
//! `QUOTAD_HTTP_BENCH_ROUNDS` (default 15; each round runs the three contenders, the order rotated
//! from round to round; the median of the rounds' ratios is the figure). Many short rounds rather
//! than a few long ones: on a shared machine the background load moves over seconds, and the
//! median of fifteen interleaved rounds moves less between runs than that of five (≈ 3 min either
//! way; docs/PERFORMANCE.md has both).

mod common;

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

/// A fixed answer: headers (static values, so a clone copies no bytes) and body.
type Canned = (hyper::HeaderMap, Bytes);

/// Bare hyper: answers every request with `canned` (`None`: 200 "ok" and nothing else).
async fn bare(listener: tokio::net::TcpListener, canned: Option<&'static Canned>) {
    loop {
        let Ok((s, _)) = listener.accept().await else {
            continue;
        };
        let _ = s.set_nodelay(true);
        tokio::spawn(async move {
            let svc = hyper::service::service_fn(move |_req| async move {
                Ok::<_, Infallible>(match canned {
                    None => Response::new(Full::new(Bytes::from_static(b"ok"))),
                    Some((headers, body)) => {
                        let mut r = Response::new(Full::new(body.clone()));
                        *r.headers_mut() = headers.clone();
                        r
                    }
                })
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
    let secs = env_u64("QUOTAD_HTTP_BENCH_SECS", 4);
    let conns = env_u64("QUOTAD_HTTP_BENCH_CONNS", 50);
    let rounds = env_u64("QUOTAD_HTTP_BENCH_ROUNDS", 15);
    let dir = tempfile::tempdir().unwrap();
    let (state, keys) = common::bench_state(&dir.path().join("data"), 1000);
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
    // Contenders: 0 bare hyper, 1 bare hyper sending quotad's answer, 2 quotad.
    let listeners: Vec<tokio::net::TcpListener> = rt.block_on(async {
        let mut ls = Vec::new();
        for _ in 0..3 {
            ls.push(tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap());
        }
        ls
    });
    let addrs: [SocketAddr; 3] = [0, 1, 2].map(|i| listeners[i].local_addr().unwrap());
    let mut ls = listeners.into_iter();
    let (bare_l, canned_l, quotad_l) = (ls.next().unwrap(), ls.next().unwrap(), ls.next().unwrap());
    rt.spawn(quotad::server::http::run(
        quotad_l,
        state.clone(),
        std::future::pending(),
        Duration::from_secs(1),
    ));
    // One of quotad's allowed answers, as quotad sends it, kept as fixed bytes.
    let canned: &'static Canned = {
        let resp = reqwest::blocking::Client::new()
            .get(format!("http://{}/v1/check", addrs[2]))
            .header("x-api-key", &keys[0])
            .header("x-request-id", "qd-0123456789abcdef-00000000")
            .send()
            .unwrap();
        assert_eq!(resp.status(), 200);
        let mut headers = hyper::HeaderMap::new();
        for (name, value) in resp.headers() {
            // hyper writes these itself.
            if name == "date" || name == "content-length" {
                continue;
            }
            let v: &'static str = Box::leak(value.to_str().unwrap().to_owned().into_boxed_str());
            headers.append(name.clone(), hyper::header::HeaderValue::from_static(v));
        }
        let body = resp.bytes().unwrap().to_vec();
        Box::leak(Box::new((
            headers,
            Bytes::from_static(Box::leak(body.into_boxed_slice())),
        )))
    };
    rt.spawn(bare(bare_l, None));
    rt.spawn(bare(canned_l, Some(canned)));
    println!(
        "quotad's answer: {} header lines besides date and content-length, {}-byte body",
        canned.0.len(),
        canned.1.len()
    );

    let mut best = [0f64; 3];
    let mut cpu = [f64::MAX; 3];
    // Per round: quotad / bare (the goal), canned / bare (the ceiling), quotad / canned.
    let mut ratios: [Vec<f64>; 3] = Default::default();
    let mut cpu_ratios = Vec::new();
    for round in 0..rounds as usize {
        // Rotate the order, so that no contender always meets the machine's load in the same
        // phase of a round.
        let mut got = [(0f64, 0f64); 3];
        for k in 0..3 {
            let c = (round + k) % 3;
            got[c] = wrk(addrs[c], &script, secs, conns);
        }
        let [(b, bc), (c, cc), (q, qc)] = got;
        println!(
            "round {round}: bare hyper {b:.0} req/s ({bc:.2} us CPU/req), bare hyper sending quotad's answer {c:.0} req/s ({cc:.2} us), quotad check {q:.0} req/s ({qc:.2} us); quotad/bare {:.3}, ceiling {:.3}, quotad/ceiling {:.3}",
            q / b,
            c / b,
            q / c
        );
        ratios[0].push(q / b);
        ratios[1].push(c / b);
        ratios[2].push(q / c);
        cpu_ratios.push(bc / qc);
        for (i, (r, u)) in got.into_iter().enumerate() {
            best[i] = best[i].max(r);
            cpu[i] = cpu[i].min(u);
        }
    }
    let median = |v: &mut Vec<f64>| {
        v.sort_by(f64::total_cmp);
        v[v.len() / 2]
    };
    let [mut r0, mut r1, mut r2] = ratios;
    let goal = median(&mut r0);
    println!(
        "median round ratio: quotad / bare hyper {goal:.3} (goal >= {GOAL}); ceiling (bare hyper sending quotad's answer / bare hyper) {:.3}; quotad / ceiling {:.3}",
        median(&mut r1),
        median(&mut r2)
    );
    println!(
        "best rounds: bare hyper {:.0}, ceiling {:.0}, quotad {:.0} req/s; ratio of bests {:.3}",
        best[0],
        best[1],
        best[2],
        best[2] / best[0]
    );
    println!(
        "server CPU per request (min): bare {:.2} us, ceiling {:.2} us, quotad {:.2} us; median round CPU ratio bare/quotad {:.3}; wrk -t1 -c{conns} -d{secs}s, 1000 keys",
        cpu[0],
        cpu[1],
        cpu[2],
        median(&mut cpu_ratios)
    );
    drop(rt);
    // The verdict, last, and the exit status with it: a run that misses the goal fails.
    if goal >= GOAL {
        println!("goal met: median quotad / bare hyper {goal:.3} >= {GOAL}");
    } else {
        println!("GOAL MISSED: median quotad / bare hyper {goal:.3} < {GOAL}");
        std::process::exit(1);
    }
}

/// The goal: quotad's check at least this share of bare hyper's throughput (median round).
const GOAL: f64 = 0.9;
