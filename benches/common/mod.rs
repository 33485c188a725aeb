//! Set-up shared by the benchmarks: a local store with a tier no benchmark reaches and `n` keys
//! on it, the server state around it, and a way to run the store's calls without an executor.

#![allow(dead_code)]

use std::future::Future;
use std::sync::Arc;

use quotad::keys::NewKey;
use quotad::metrics::Metrics;
use quotad::server::token::{AdminToken, TokenSource};
use quotad::server::AppState;
use quotad::tiers::TierSpec;
use quotad::{LocalOptions, LocalStore, QuantaClock, Store};

/// Runs a future that never waits (a local store's check) to completion, without an executor.
#[inline(always)]
pub fn now<F: Future>(f: F) -> F::Output {
    let mut f = std::pin::pin!(f);
    let mut cx = std::task::Context::from_waker(std::task::Waker::noop());
    loop {
        if let std::task::Poll::Ready(v) = f.as_mut().poll(&mut cx) {
            return v;
        }
    }
}

/// A runtime for the store's admin calls (they run on tokio's blocking pool).
pub fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime")
}

/// A local store in `dir` (records not synced per change) with `tier` and `n` keys on it, made
/// by `new_key(i)`; returns the store and the raw keys.
pub fn store_with_keys(
    dir: &std::path::Path,
    tier: TierSpec,
    n: usize,
    new_key: impl Fn(usize) -> NewKey,
) -> (LocalStore, Vec<String>) {
    let mut opts = LocalOptions::new(dir);
    opts.sync_records = false;
    let store = LocalStore::open(opts, Arc::new(QuantaClock::new())).expect("open store");
    let rt = runtime();
    rt.block_on(store.put_tier(tier)).expect("bench tier");
    let mut raws = Vec::with_capacity(n);
    while raws.len() < n {
        let batch = (n - raws.len()).min(100_000);
        let news = (raws.len()..raws.len() + batch).map(&new_key).collect();
        let made = rt.block_on(store.create_keys(news)).expect("bench keys");
        raws.extend(made.into_iter().map(|k| k.raw));
    }
    store.flush().expect("flush");
    (store, raws)
}

/// A store with tier `bench` (10^9/min, 10^12/month) and `n` keys, and the state the servers
/// run on; returns the state and the raw keys.
pub fn bench_state(dir: &std::path::Path, n: usize) -> (Arc<AppState<LocalStore>>, Vec<String>) {
    let tier = TierSpec::with_limits("bench", &[(1_000_000_000, 60)], Some(1_000_000_000_000));
    let (store, keys) = store_with_keys(dir, tier, n, |i| NewKey {
        consumer: format!("c{i}"),
        tier: "bench".into(),
        ..Default::default()
    });
    let state = Arc::new(AppState {
        store,
        metrics: Arc::new(Metrics::new()),
        admin_token: AdminToken::from_value("bench".into(), TokenSource::Env),
        http: Default::default(),
        binary: Default::default(),
        busy_poll: quotad::server::busy_poll::BusyPoll::new(0),
        grpc: Default::default(),
    });
    (state, keys)
}
