//! The daemon's transports around one shared [`Store`]: the HTTP server ([`http`], with the
//! admin API in `admin`), the binary protocol ([`binary`]), Envoy's gRPC APIs ([`grpc`]), and the store's periodic upkeep
//! ([`upkeep_loop`]). A transport parses, asks the store, renders; it never knows which store it
//! has and never computes a limit.
//!
//! Servers take a bound listener and a shutdown future, so tests bind `127.0.0.1:0`.

pub(crate) mod admin;
pub mod binary;
pub mod busy_poll;
mod check;
pub mod grpc;
pub mod http;
mod openapi;
mod render;
mod reply;
pub mod token;

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

use crate::metrics::{Metrics, Transport};
use crate::store::Store;

/// What every request handler shares.
#[derive(Debug)]
pub struct AppState<S> {
    /// The store: this node's files, or Redis shared with other nodes.
    pub store: S,
    /// Process metrics.
    pub metrics: Arc<Metrics>,
    /// The admin token.
    pub admin_token: token::AdminToken,
    /// HTTP settings.
    pub http: http::HttpConfig,
    /// Binary protocol settings.
    pub binary: binary::BinaryConfig,
    /// Busy polling after requests (off unless `--busy-poll-us`).
    pub busy_poll: busy_poll::BusyPoll,
    /// gRPC settings.
    pub grpc: grpc::GrpcConfig,
}

/// A listener a server can accept from (TCP or Unix).
pub trait Accept: Send + 'static {
    /// The connection type.
    type Conn: AsyncRead + AsyncWrite + Unpin + Send + 'static;
    /// Accepts one connection.
    fn accept(&self) -> impl Future<Output = std::io::Result<Self::Conn>> + Send;
}

impl Accept for tokio::net::TcpListener {
    type Conn = tokio::net::TcpStream;
    async fn accept(&self) -> std::io::Result<Self::Conn> {
        let (s, _) = tokio::net::TcpListener::accept(self).await?;
        let _ = s.set_nodelay(true);
        Ok(s)
    }
}

impl Accept for tokio::net::UnixListener {
    type Conn = tokio::net::UnixStream;
    async fn accept(&self) -> std::io::Result<Self::Conn> {
        let (s, _) = tokio::net::UnixListener::accept(self).await?;
        Ok(s)
    }
}

/// The next connection that gets one of `permits`, or `None` once `shutdown` completes. A
/// connection beyond the limit is sent `refusal()` and closed (counted in the metrics); accept
/// errors (out of descriptors and the like) back off instead of spinning.
pub(crate) async fn accept_admitted<L: Accept>(
    listener: &L,
    permits: &Arc<Semaphore>,
    shutdown: &mut Pin<&mut impl Future<Output = ()>>,
    metrics: &Metrics,
    transport: Transport,
    refusal: impl Fn() -> Vec<u8>,
) -> Option<(L::Conn, OwnedSemaphorePermit)> {
    loop {
        let mut conn = tokio::select! {
            r = listener.accept() => match r {
                Ok(c) => c,
                Err(e) => {
                    tracing::warn!(error = %e, ?transport, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
            _ = shutdown.as_mut() => return None,
        };
        match permits.clone().try_acquire_owned() {
            Ok(permit) => return Some((conn, permit)),
            Err(_) => {
                metrics.record_rejected_connection(transport);
                let bytes = refusal();
                tokio::spawn(async move {
                    let _ = conn.write_all(&bytes).await;
                    let _ = conn.shutdown().await;
                });
            }
        }
    }
}

/// Runs [`Store::upkeep`] every [`Store::upkeep_interval`], and the store's
/// [`Store::background`] work beside it, until `shutdown` completes and that work is settled. The
/// final upkeep is the caller's, once the servers have stopped.
pub async fn upkeep_loop<S: Store>(store: &S, shutdown: impl std::future::Future<Output = ()>) {
    let ticks = async {
        let mut tick = tokio::time::interval(store.upkeep_interval());
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        tokio::pin!(shutdown);
        loop {
            tokio::select! {
                _ = tick.tick() => {}
                _ = &mut shutdown => break,
            }
            if let Err(err) = store.upkeep(false).await {
                tracing::error!(error = %err, "periodic upkeep (msync) failed");
            }
        }
        store.stop_background();
    };
    tokio::join!(ticks, store.background());
}
