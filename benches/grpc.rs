//! quotad's rate limit service (`ShouldRateLimit` over gRPC) against the gRPC ceiling: a bare
//! tonic server of the same service answering a fixed OK, in one run, same machine, same load
//! generator (`quotad bench --target grpc`), same connections, depth and duration. Both servers
//! run in this process on the same kind of tokio runtime; only one is under load at a time.
//!
//! Run: `cargo bench --bench grpc`. Knobs: `QUOTAD_GRPC_BENCH_SECS` (default 4),
//! `QUOTAD_GRPC_BENCH_CONNS` (8), `QUOTAD_GRPC_BENCH_DEPTH` (16), `QUOTAD_GRPC_BENCH_ROUNDS` (9;
//! each round runs both, the order alternating; the median of the rounds' ratios is the figure),
//! `QUOTAD_GRPC_BENCH_TARGET` (`grpc`, or `grpc-authz` for external authorization, whose ceiling
//! is a bare authorization server answering OK).

mod common;

use std::net::SocketAddr;
use std::process::Command;
use std::sync::Arc;

use envoy_types::pb::envoy::service::auth::v3::authorization_server::{
    Authorization, AuthorizationServer,
};
use envoy_types::pb::envoy::service::auth::v3::{CheckRequest, CheckResponse};
use envoy_types::pb::envoy::service::ratelimit::v3::rate_limit_response::{Code, DescriptorStatus};
use envoy_types::pb::envoy::service::ratelimit::v3::rate_limit_service_server::{
    RateLimitService, RateLimitServiceServer,
};
use envoy_types::pb::envoy::service::ratelimit::v3::{RateLimitRequest, RateLimitResponse};
use envoy_types::pb::google::rpc::Status as RpcStatus;

/// The goal: quotad's rate limit check at least this share of the bare server's throughput.
const GOAL: f64 = 0.85;

fn env_u64(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// The ceiling: answers every call OK, one OK status per descriptor, without looking at it.
struct Bare;

#[tonic::async_trait]
impl RateLimitService for Bare {
    async fn should_rate_limit(
        &self,
        request: tonic::Request<RateLimitRequest>,
    ) -> Result<tonic::Response<RateLimitResponse>, tonic::Status> {
        let n = request.get_ref().descriptors.len();
        Ok(tonic::Response::new(RateLimitResponse {
            overall_code: Code::Ok as i32,
            statuses: vec![
                DescriptorStatus {
                    code: Code::Ok as i32,
                    ..Default::default()
                };
                n
            ],
            ..Default::default()
        }))
    }
}

#[tonic::async_trait]
impl Authorization for Bare {
    async fn check(
        &self,
        _request: tonic::Request<CheckRequest>,
    ) -> Result<tonic::Response<CheckResponse>, tonic::Status> {
        Ok(tonic::Response::new(CheckResponse {
            status: Some(RpcStatus::default()),
            http_response: Some(
                envoy_types::pb::envoy::service::auth::v3::check_response::HttpResponse::OkResponse(
                    Default::default(),
                ),
            ),
            ..Default::default()
        }))
    }
}

/// One `quotad bench` run against `addr`: checks per second.
fn load(
    target: &str,
    addr: SocketAddr,
    keys: &std::path::Path,
    secs: u64,
    conns: u64,
    depth: u64,
) -> f64 {
    let out = Command::new(env!("CARGO_BIN_EXE_quotad"))
        .args(["bench", "--target", target, "--json", "--grpc-addr"])
        .arg(addr.to_string())
        .arg("--key-file")
        .arg(keys)
        .args([
            "--connections",
            &conns.to_string(),
            "--depth",
            &depth.to_string(),
        ])
        .args(["--duration", &secs.to_string()])
        .output()
        .expect("run quotad bench");
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "quotad bench failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v: serde_json::Value = serde_json::from_str(&text).expect("bench JSON");
    let decisions = &v["decisions"];
    assert!(
        decisions
            .as_object()
            .is_some_and(|d| d.len() == 1 && d.contains_key("allowed")),
        "every check must be allowed: {decisions}"
    );
    v["throughput"].as_f64().expect("throughput")
}

fn main() {
    if std::env::args().any(|a| a == "--list") {
        return;
    }
    let secs = env_u64("QUOTAD_GRPC_BENCH_SECS", 4);
    let conns = env_u64("QUOTAD_GRPC_BENCH_CONNS", 8);
    let depth = env_u64("QUOTAD_GRPC_BENCH_DEPTH", 16);
    let rounds = env_u64("QUOTAD_GRPC_BENCH_ROUNDS", 9);
    let target = std::env::var("QUOTAD_GRPC_BENCH_TARGET").unwrap_or_else(|_| "grpc".into());
    let dir = tempfile::tempdir().unwrap();
    let (state, keys) = common::bench_state(&dir.path().join("data"), 1000);
    let key_file = dir.path().join("keys.txt");
    std::fs::write(&key_file, keys.join("\n")).unwrap();

    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let (bare_addr, quotad_addr) = rt.block_on(async {
        let bare_l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let quotad_l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addrs = (bare_l.local_addr().unwrap(), quotad_l.local_addr().unwrap());
        let bare = Arc::new(Bare);
        let incoming = tonic::transport::server::TcpIncoming::from(bare_l).with_nodelay(Some(true));
        tokio::spawn(
            tonic::transport::Server::builder()
                .add_service(RateLimitServiceServer::from_arc(bare.clone()))
                .add_service(AuthorizationServer::from_arc(bare))
                .serve_with_incoming(incoming),
        );
        tokio::spawn(quotad::server::grpc::run(
            quotad_l,
            state.clone(),
            std::future::pending(),
            std::time::Duration::from_secs(1),
        ));
        addrs
    });

    let mut ratios = Vec::new();
    let (mut best_bare, mut best_quotad) = (0f64, 0f64);
    for round in 0..rounds {
        let run = |addr| load(&target, addr, &key_file, secs, conns, depth);
        let (b, q) = if round % 2 == 0 {
            let b = run(bare_addr);
            (b, run(quotad_addr))
        } else {
            let q = run(quotad_addr);
            (run(bare_addr), q)
        };
        best_bare = best_bare.max(b);
        best_quotad = best_quotad.max(q);
        println!(
            "round {round}: bare {b:.0}/s, quotad {q:.0}/s, ratio {:.3}",
            q / b
        );
        ratios.push(q / b);
    }
    ratios.sort_by(f64::total_cmp);
    let median = ratios[ratios.len() / 2];
    println!(
        "target {target}, {conns} connections x depth {depth}, {secs} s per run, {rounds} rounds, 1000 keys; best: bare {best_bare:.0}/s, quotad {best_quotad:.0}/s"
    );
    // The verdict, last, and the exit status with it: a run that misses the goal fails.
    if median >= GOAL {
        println!("goal met: median quotad / bare tonic {median:.3} >= {GOAL}");
    } else {
        println!("GOAL MISSED: median quotad / bare tonic {median:.3} < {GOAL}");
        std::process::exit(1);
    }
}
