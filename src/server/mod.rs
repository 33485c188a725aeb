//! The daemon's transports around one shared [`Engine`]: the HTTP server ([`http`], with the
//! admin API in [`admin`]), and the tasks every transport needs (the periodic `msync`).
//!
//! Servers take a bound listener and a shutdown future, so tests bind `127.0.0.1:0`.

pub mod admin;
pub mod binary;
pub mod http;
pub mod openapi;
pub mod render;
pub mod token;

use std::sync::Arc;
use std::time::Duration;

use crate::engine::Engine;
use crate::metrics::Metrics;

/// What every request handler shares.
#[derive(Debug)]
pub struct AppState {
    /// The engine.
    pub engine: Arc<Engine>,
    /// Process metrics.
    pub metrics: Arc<Metrics>,
    /// The admin token.
    pub admin_token: token::AdminToken,
    /// HTTP settings.
    pub http: http::HttpConfig,
    /// Binary protocol settings.
    pub binary: binary::BinaryConfig,
    /// How often counters are msynced.
    pub msync_interval: Duration,
}

/// Msyncs the engine's files every `interval` until `shutdown` completes, then once more.
pub async fn msync_loop(
    engine: Arc<Engine>,
    interval: Duration,
    shutdown: impl std::future::Future<Output = ()>,
) {
    let mut tick = tokio::time::interval(interval);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    tokio::pin!(shutdown);
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            _ = &mut shutdown => break,
        }
        let e = engine.clone();
        match tokio::task::spawn_blocking(move || e.flush()).await {
            Ok(Ok(())) => {}
            Ok(Err(err)) => tracing::error!(error = %err, "periodic msync failed"),
            Err(err) => tracing::error!(error = %err, "periodic msync task failed"),
        }
    }
}
