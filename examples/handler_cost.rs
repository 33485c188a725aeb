//! Times the HTTP check handler alone (no sockets): the cost of parsing the headers, the
//! engine check, and rendering the answer, next to the engine check by itself.
//! Run: `cargo run --release --example handler_cost`.
use quotad::keys::NewKey;
use quotad::metrics::Metrics;
use quotad::server::token::{AdminToken, TokenSource};
use quotad::server::AppState;
use quotad::tiers::{LimitSpec, TierSpec};
use quotad::{Engine, EngineOptions, QuantaClock};
use std::sync::Arc;
use std::time::{Duration, Instant};
fn main() {
    let dir = tempfile::tempdir().unwrap();
    let mut opts = EngineOptions::new(dir.path().join("d"));
    opts.sync_records = false;
    let engine = Arc::new(Engine::open(opts, Arc::new(QuantaClock::new())).unwrap());
    engine
        .put_tier(TierSpec {
            name: "b".into(),
            limits: vec![LimitSpec {
                requests: 1_000_000_000,
                period_seconds: 60,
            }],
            monthly_quota: Some(1_000_000_000_000),
            scopes: None,
        })
        .unwrap();
    let keys: Vec<String> = engine
        .create_keys(
            (0..1000)
                .map(|i| NewKey {
                    consumer: format!("c{i}"),
                    tier: "b".into(),
                    ..Default::default()
                })
                .collect(),
        )
        .unwrap()
        .into_iter()
        .map(|k| k.raw)
        .collect();
    let state = AppState {
        engine: engine.clone(),
        metrics: Arc::new(Metrics::new()),
        admin_token: AdminToken::from_value("x".into(), TokenSource::Env),
        http: Default::default(),
        binary: Default::default(),
        msync_interval: Duration::from_secs(1),
    };
    let reqs: Vec<hyper::Request<()>> = keys
        .iter()
        .map(|k| {
            hyper::Request::builder()
                .uri("/v1/check")
                .header("host", "x")
                .header("x-api-key", k)
                .body(())
                .unwrap()
        })
        .collect();
    for mode in ["full", "engine-only"] {
        let n = 1_000_000;
        let start = Instant::now();
        for i in 0..n {
            let r = &reqs[i % reqs.len()];
            if mode == "full" {
                let resp = quotad::server::http::check(&state, r, "rid-1234");
                std::hint::black_box(resp);
            } else {
                let k = r.headers().get("x-api-key").unwrap().to_str().unwrap();
                std::hint::black_box(engine.check(Some(k), None, 1));
            }
        }
        println!(
            "{mode}: {:.0} ns per call",
            start.elapsed().as_nanos() as f64 / n as f64
        );
    }
}
