//! Set-up shared by the benchmarks and examples (not part of the API): an engine in `dir` with a
//! tier no benchmark reaches and `n` keys on it, and the server state around it.

use std::sync::Arc;
use std::time::Duration;

use crate::engine::{Engine, EngineOptions};
use crate::keys::NewKey;
use crate::metrics::Metrics;
use crate::server::token::{AdminToken, TokenSource};
use crate::server::AppState;
use crate::tiers::TierSpec;
use crate::QuantaClock;

/// An engine (records not synced per change) with tier `bench` (10^9/min, 10^12/month) and `n`
/// keys on it; returns the state for the HTTP handlers and the raw keys.
pub fn bench_state(dir: &std::path::Path, n: usize) -> (Arc<AppState>, Vec<String>) {
    let mut opts = EngineOptions::new(dir);
    opts.sync_records = false;
    let engine = Arc::new(Engine::open(opts, Arc::new(QuantaClock::new())).expect("open engine"));
    engine
        .put_tier(TierSpec::with_limits(
            "bench",
            &[(1_000_000_000, 60)],
            Some(1_000_000_000_000),
        ))
        .expect("bench tier");
    let keys = engine
        .create_keys(
            (0..n)
                .map(|i| NewKey {
                    consumer: format!("c{i}"),
                    tier: "bench".into(),
                    ..Default::default()
                })
                .collect(),
        )
        .expect("bench keys")
        .into_iter()
        .map(|k| k.raw)
        .collect();
    let state = Arc::new(AppState {
        backend: crate::backend::Backend::Local(engine),
        metrics: Arc::new(Metrics::new()),
        admin_token: AdminToken::from_value("bench".into(), TokenSource::Env),
        http: Default::default(),
        binary: Default::default(),
        msync_interval: Duration::from_secs(1),
        busy_poll: crate::server::busy_poll::BusyPoll::new(0),
    });
    (state, keys)
}
