//! The HTTP face (hyper 1.x, HTTP/1.1): the forward-auth check under `/v1/check`, the public
//! routes `/health`, `/metrics`, `/docs`, and the admin API under `/admin/v1`.
//!
//! [`run`] takes a bound listener and a shutdown future. Each connection holds a permit of the
//! connection limit (beyond it: `503` and close); a client that does not send a complete request
//! head within the header timeout, or idles that long between requests, is disconnected.

use std::convert::Infallible;
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use futures_util::future::Either;
use hyper::body::Incoming;
use hyper::header::{HeaderName, HeaderValue, CONTENT_TYPE};
use hyper::{Method, Request};
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::net::TcpListener;
use tokio::sync::Semaphore;

use super::reply::{error, json, new_request_id, request_id, Resp};
use super::{check, render, AppState};
use crate::metrics::{Metrics, Stopwatch, Transport};
use crate::store::Store;

/// A response body that, on a check's answer, records the check's HTTP latency when hyper drops
/// it: once the answer has been written to the connection.
struct TimedBody {
    inner: http_body_util::Full<bytes::Bytes>,
    timer: Option<(Stopwatch, Arc<Metrics>)>,
}

impl TimedBody {
    fn plain(r: Resp) -> hyper::Response<TimedBody> {
        r.map(|inner| TimedBody { inner, timer: None })
    }

    fn timed(r: Resp, start: Stopwatch, metrics: Arc<Metrics>) -> hyper::Response<TimedBody> {
        r.map(|inner| TimedBody {
            inner,
            timer: Some((start, metrics)),
        })
    }
}

impl hyper::body::Body for TimedBody {
    type Data = bytes::Bytes;
    type Error = Infallible;

    fn poll_frame(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Result<hyper::body::Frame<Self::Data>, Self::Error>>> {
        std::pin::Pin::new(&mut self.get_mut().inner).poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> hyper::body::SizeHint {
        self.inner.size_hint()
    }
}

impl Drop for TimedBody {
    fn drop(&mut self) {
        if let Some((start, metrics)) = self.timer.take() {
            metrics.record_http_check(start.elapsed_ns());
        }
    }
}

/// HTTP server settings.
#[derive(Debug, Clone)]
pub struct HttpConfig {
    /// Extra headers that may carry the API key (after `X-API-Key` and `Authorization: Bearer`).
    pub key_headers: Vec<HeaderName>,
    /// Most connections open at once.
    pub max_connections: usize,
    /// Time allowed for a request head, and for idling between requests.
    pub header_timeout: Duration,
}

impl Default for HttpConfig {
    fn default() -> Self {
        HttpConfig {
            key_headers: Vec::new(),
            max_connections: 10_000,
            header_timeout: Duration::from_secs(10),
        }
    }
}

/// Serves HTTP on `listener` until `shutdown` completes, then stops accepting, lets in-flight
/// requests finish (up to `drain`), and returns.
pub async fn run<S: Store>(
    listener: TcpListener,
    state: Arc<AppState<S>>,
    shutdown: impl Future<Output = ()>,
    drain: Duration,
) -> std::io::Result<()> {
    let permits = Arc::new(Semaphore::new(state.http.max_connections));
    let graceful = hyper_util::server::graceful::GracefulShutdown::new();
    tokio::pin!(shutdown);
    while let Some((stream, permit)) = super::accept_admitted(
        &listener,
        &permits,
        &mut shutdown,
        &state.metrics,
        Transport::Http,
        || {
            let rid = new_request_id();
            let body = render::envelope("unavailable", "Too many connections", &rid);
            format!(
                "HTTP/1.1 503 Service Unavailable\r\ncontent-type: application/json\r\nx-request-id: {rid}\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
                body.len()
            )
            .into_bytes()
        },
    )
    .await
    {
        let st = state.clone();
        let svc = hyper::service::service_fn(move |req: Request<Incoming>| {
            st.busy_poll.touch();
            let st = st.clone();
            // A check gets a future of its own rather than `handle`'s state machine (which the
            // admin routes make large, and which hyper would move on every request).
            if check::is_check(req.uri().path()) {
                return Either::Left(async move {
                    let start = Stopwatch::start();
                    let resp = check::check(&st, &req).await;
                    Ok::<_, Infallible>(TimedBody::timed(resp, start, st.metrics.clone()))
                });
            }
            Either::Right(Box::pin(async move {
                Ok::<_, Infallible>(TimedBody::plain(handle(&st, req).await))
            }))
        });
        let conn = hyper::server::conn::http1::Builder::new()
            .timer(TokioTimer::new())
            .header_read_timeout(state.http.header_timeout)
            .max_buf_size(64 * 1024)
            .serve_connection(TokioIo::new(stream), svc);
        let conn = graceful.watch(conn);
        let guard = state.metrics.connection(Transport::Http);
        tokio::spawn(async move {
            let _ = conn.await;
            drop(guard);
            drop(permit);
        });
    }
    drop(listener);
    if tokio::time::timeout(drain, graceful.shutdown())
        .await
        .is_err()
    {
        tracing::warn!(?drain, "http connections still open after the drain period");
    }
    Ok(())
}

async fn handle<S: Store>(state: &AppState<S>, req: Request<Incoming>) -> Resp {
    let rid = request_id(&req);
    let path = req.uri().path();
    if let Some(rest) = path.strip_prefix("/admin/v1/") {
        let rest = rest.to_string();
        state.metrics.record_admin();
        return super::admin::handle(state, req, &rest, &rid).await;
    }
    let method = req.method().clone();
    match path {
        "/health" | "/metrics" | "/docs" if method != Method::GET && method != Method::HEAD => {
            let mut r = error(405, "method_not_allowed", "Use GET", &rid);
            r.headers_mut()
                .insert("allow", HeaderValue::from_static("GET, HEAD"));
            r
        }
        "/health" => {
            let (status, body) = health(state).await;
            json(status, body.to_string(), &rid)
        }
        "/metrics" => {
            let keys = state.store.key_count().await.map_or(-1, |k| k as i64);
            let body = state.metrics.render(
                keys,
                &state.store.tier_names(),
                &state.store.tier_keys(),
                state.store.gauges(),
            );
            let mut r = json(200, body, &rid);
            r.headers_mut().insert(
                CONTENT_TYPE,
                HeaderValue::from_static("text/plain; version=0.0.4; charset=utf-8"),
            );
            r
        }
        "/docs" => json(200, super::openapi::document().to_string(), &rid),
        _ => error(404, "not_found", &format!("No route for {path}"), &rid),
    }
}

/// `/health`: 200 `ok` while the store answers; 503 `degraded` while Redis is unreachable.
async fn health<S: Store>(state: &AppState<S>) -> (u16, serde_json::Value) {
    let h = state.store.health().await;
    let mut doc = h.fields;
    doc.insert(
        "status".into(),
        (if h.ok { "ok" } else { "degraded" }).into(),
    );
    doc.insert("version".into(), env!("CARGO_PKG_VERSION").into());
    doc.insert("tiers".into(), state.store.tiers().len().into());
    (if h.ok { 200 } else { 503 }, serde_json::Value::Object(doc))
}
