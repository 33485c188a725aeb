//! Envoy's gRPC APIs on one HTTP/2 port (tonic): the rate limit service
//! (`envoy.service.ratelimit.v3.RateLimitService`, [`rls`]), external authorization
//! (`envoy.service.auth.v3.Authorization`, [`authz`]) and gRPC health (`grpc.health.v1.Health`).
//! The same store, so the same counters, as HTTP and the binary protocol. docs/ENVOY.md is the
//! contract.

mod authz;
mod conns;
mod rls;

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use envoy_types::pb::envoy::config::core::v3::{
    header_value_option::HeaderAppendAction, HeaderValue, HeaderValueOption,
};
use envoy_types::pb::envoy::service::auth::v3::authorization_server::AuthorizationServer;
use envoy_types::pb::envoy::service::ratelimit::v3::rate_limit_service_server::RateLimitServiceServer;
use futures_util::FutureExt;
use tokio::net::TcpListener;
use tonic_health::ServingStatus;

use super::AppState;
use crate::engine::decision::{Decision, Verdict};
use crate::metrics::Transport;
use crate::store::Store;

/// gRPC settings.
#[derive(Debug, Clone)]
pub struct GrpcConfig {
    /// The descriptor entry whose value is the raw API key (rate limit service).
    pub key_entry: String,
    /// Most connections open at once.
    pub max_connections: usize,
}

impl Default for GrpcConfig {
    fn default() -> Self {
        GrpcConfig {
            key_entry: "api_key".into(),
            max_connections: 1024,
        }
    }
}

/// The services [`run`] serves, as `grpc.health.v1` names them.
const SERVICES: [&str; 2] = [
    "envoy.service.ratelimit.v3.RateLimitService",
    "envoy.service.auth.v3.Authorization",
];

/// How often health follows the store (degraded on Redis) once serving.
const HEALTH_EVERY: Duration = Duration::from_millis(200);

/// The largest request message accepted (1,024 descriptors of a 256-byte key and a scope fit
/// with room): a larger one is refused with OUT_OF_RANGE, saying the limit, and the connection
/// lives on.
pub const MAX_MESSAGE: usize = 1024 * 1024;

/// Calls one HTTP/2 connection may have open at once (Envoy multiplexes its calls over a few
/// connections).
const MAX_STREAMS: u32 = 1024;

/// A connection that stops answering HTTP/2 pings for this long after one is sent is closed.
const KEEPALIVE: Duration = Duration::from_secs(30);

/// Serves the gRPC APIs on `listener` until `shutdown` completes; then health says NOT_SERVING,
/// no new call is accepted, and calls in flight get up to `drain` to finish.
pub async fn run<S: Store>(
    listener: TcpListener,
    state: Arc<AppState<S>>,
    shutdown: impl Future<Output = ()> + Send + 'static,
    drain: Duration,
) -> anyhow::Result<()> {
    let shutdown = shutdown.shared();
    let (reporter, health) = tonic_health::server::health_reporter();
    let set = |status: ServingStatus| {
        let reporter = reporter.clone();
        async move {
            reporter.set_service_status("", status).await;
            for s in SERVICES {
                reporter.set_service_status(s, status).await;
            }
        }
    };
    set(ServingStatus::Serving).await;
    // Health follows the store: NOT_SERVING while it cannot decide (Redis unreachable).
    let follow = {
        let state = state.clone();
        let stop = shutdown.clone();
        async move {
            let mut serving = true;
            let mut tick = tokio::time::interval(HEALTH_EVERY);
            tokio::pin!(stop);
            loop {
                tokio::select! {
                    _ = tick.tick() => {}
                    _ = &mut stop => break,
                }
                let ok = state.store.health().await.ok;
                if ok != serving {
                    serving = ok;
                    set(if ok {
                        ServingStatus::Serving
                    } else {
                        ServingStatus::NotServing
                    })
                    .await;
                }
            }
            set(ServingStatus::NotServing).await;
        }
    };
    let incoming = conns::incoming(
        listener,
        state.grpc.max_connections,
        state.metrics.clone(),
        shutdown.clone(),
    );
    let server = tonic::transport::Server::builder()
        .max_concurrent_streams(MAX_STREAMS)
        .http2_keepalive_interval(Some(KEEPALIVE))
        .http2_keepalive_timeout(Some(KEEPALIVE / 3))
        .add_service(
            RateLimitServiceServer::from_arc(Arc::new(rls::Rls {
                state: state.clone(),
            }))
            .max_decoding_message_size(MAX_MESSAGE),
        )
        .add_service(
            AuthorizationServer::from_arc(Arc::new(authz::Authz {
                state: state.clone(),
            }))
            .max_decoding_message_size(MAX_MESSAGE),
        )
        .add_service(health)
        .serve_with_incoming_shutdown(incoming, shutdown.clone());
    let deadline = async {
        shutdown.await;
        tokio::time::sleep(drain).await;
    };
    let (served, ()) = tokio::join!(
        async {
            tokio::select! {
                r = server => r.map_err(anyhow::Error::from),
                () = deadline => {
                    tracing::warn!(?drain, "grpc calls still in flight after the drain period");
                    Ok(())
                }
            }
        },
        follow
    );
    served
}

/// `key: value` as Envoy's header option: set (replacing any value the request or upstream had).
fn header(key: &str, value: impl Into<String>) -> HeaderValueOption {
    HeaderValueOption {
        header: Some(HeaderValue {
            key: key.into(),
            value: value.into(),
            ..Default::default()
        }),
        append_action: HeaderAppendAction::OverwriteIfExistsOrAdd as i32,
        ..Default::default()
    }
}

/// A decision's rate-limit headers (render.rs writes them) as Envoy header options.
fn rate_limit_headers(d: &Decision) -> Vec<HeaderValueOption> {
    super::render::rate_limit_headers(d)
        .into_iter()
        .map(|(k, v)| header(k, v))
        .collect()
}

/// Counts a decided check.
fn record<S>(state: &AppState<S>, d: &Decision, elapsed_ns: u64) {
    state
        .metrics
        .record_decision(Transport::Grpc, d, elapsed_ns);
}

/// The gRPC answer for a store that cannot decide (Redis down, fail-closed).
fn unavailable() -> tonic::Status {
    tonic::Status::unavailable("rate-limit store unavailable")
}

/// A malformed request: INVALID_ARGUMENT, counted as a bad request.
fn invalid<S>(state: &AppState<S>, message: String) -> tonic::Status {
    state.metrics.record_bad_request(Transport::Grpc);
    tonic::Status::invalid_argument(message)
}

/// Whether `d` could not be decided by the store.
fn is_unavailable(d: &Decision) -> bool {
    d.verdict == Verdict::Unavailable
}
