//! The HTTP face (hyper 1.x, HTTP/1.1): the forward-auth check under `/v1/check`, the public
//! routes `/health`, `/metrics`, `/docs`, and the admin API under `/admin/v1`.
//!
//! [`run`] takes a bound listener and a shutdown future. Each connection holds a permit of the
//! connection limit (beyond it: `503` and close); a client that does not send a complete request
//! head within the header timeout, or idles that long between requests, is disconnected.

use std::convert::Infallible;
use std::future::Future;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use futures_util::future::Either;
use http_body_util::{BodyExt, Full, Limited};
use hyper::body::Incoming;
use hyper::header::{HeaderName, HeaderValue, CONTENT_TYPE};
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::net::TcpListener;
use tokio::sync::Semaphore;

use super::render;
use super::AppState;
use crate::backend::Backend;
use crate::engine::decision::{Decision, Verdict};
use crate::engine::Engine;
use crate::keys::KeyId;
use crate::metrics::{Stopwatch, Transport};
use crate::store::redis::{FailPolicy, Mode};

/// The largest request body accepted (admin API).
pub const MAX_BODY: usize = 64 * 1024;
/// The longest value accepted in a header quotad reads.
pub const MAX_HEADER_VALUE: usize = 1024;
/// The longest caller-supplied request id echoed back.
pub const MAX_REQUEST_ID: usize = 128;

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

/// A response under construction.
pub type Resp = Response<Full<Bytes>>;

/// Serves HTTP on `listener` until `shutdown` completes, then stops accepting, lets in-flight
/// requests finish (up to `drain`), and returns.
pub async fn run(
    listener: TcpListener,
    state: Arc<AppState>,
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
        &state,
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
            // The check on this node's engine is synchronous: answer it with a ready future
            // rather than through `handle`'s state machine (which the admin routes make large,
            // and which hyper would move on every request).
            if let Some(engine) = st.backend.local() {
                if is_check(req.uri().path()) {
                    return Either::Left(std::future::ready(Ok::<_, Infallible>(check(
                        &st, engine, &req,
                    ))));
                }
            }
            let st = st.clone();
            Either::Right(Box::pin(async move {
                Ok::<_, Infallible>(handle(&st, req).await)
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

static REQUEST_SEQ: AtomicU64 = AtomicU64::new(0);

// Header names built once (a `&str` name is parsed and hashed on every insert).
static X_REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");
static X_RATELIMIT_LIMIT: HeaderName = HeaderName::from_static("x-ratelimit-limit");
static X_RATELIMIT_REMAINING: HeaderName = HeaderName::from_static("x-ratelimit-remaining");
static X_RATELIMIT_RESET: HeaderName = HeaderName::from_static("x-ratelimit-reset");
static RATELIMIT_POLICY: HeaderName = HeaderName::from_static("ratelimit-policy");
static RATELIMIT: HeaderName = HeaderName::from_static("ratelimit");
static RETRY_AFTER: HeaderName = HeaderName::from_static("retry-after");
static X_QUOTA_KEY_ID: HeaderName = HeaderName::from_static("x-quota-key-id");
static X_QUOTA_CONSUMER: HeaderName = HeaderName::from_static("x-quota-consumer");
static X_QUOTA_ERROR: HeaderName = HeaderName::from_static("x-quota-error");
static X_API_KEY: HeaderName = HeaderName::from_static("x-api-key");
static X_QUOTA_SCOPE: HeaderName = HeaderName::from_static("x-quota-scope");
static X_QUOTA_COST: HeaderName = HeaderName::from_static("x-quota-cost");

/// The headers of an allowed check's answer after `content-type`, in the order
/// [`ALLOWED_HEADERS`] holds them.
static ALLOWED_HEADER_NAMES: [&HeaderName; 8] = [
    &X_REQUEST_ID,
    &X_QUOTA_KEY_ID,
    &X_QUOTA_CONSUMER,
    &X_RATELIMIT_LIMIT,
    &X_RATELIMIT_REMAINING,
    &X_RATELIMIT_RESET,
    &RATELIMIT_POLICY,
    &RATELIMIT,
];

/// `content-type` and [`ALLOWED_HEADER_NAMES`] with placeholder values, in that order
/// (`HeaderMap` iterates in insertion order while nothing is removed): cloned and filled in
/// place for each allowed answer.
static ALLOWED_HEADERS: std::sync::LazyLock<hyper::HeaderMap> = std::sync::LazyLock::new(|| {
    let mut h = hyper::HeaderMap::with_capacity(16);
    h.insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
    for name in ALLOWED_HEADER_NAMES {
        h.insert(name.clone(), HeaderValue::from_static(""));
    }
    h
});

/// The caller's `x-request-id` if acceptable (1-128 visible ASCII characters), else a new one.
fn request_id<B>(req: &Request<B>) -> String {
    match callers_request_id(req) {
        Some(s) => s.to_string(),
        None => new_request_id(),
    }
}

/// [`request_id`], appended to `buf`.
fn push_request_id<B>(buf: &mut String, req: &Request<B>) {
    match callers_request_id(req) {
        Some(s) => buf.push_str(s),
        None => push_new_request_id(buf),
    }
}

/// The caller's `x-request-id`, if acceptable.
fn callers_request_id<B>(req: &Request<B>) -> Option<&str> {
    let v = req.headers().get(&X_REQUEST_ID)?;
    let b = v.as_bytes();
    if !b.is_empty() && b.len() <= MAX_REQUEST_ID && b.iter().all(|c| c.is_ascii_graphic()) {
        v.to_str().ok()
    } else {
        None
    }
}

/// A new request id.
fn new_request_id() -> String {
    let mut s = String::with_capacity(32);
    push_new_request_id(&mut s);
    s
}

/// Appends a new request id: a random prefix per thread and a per-thread sequence, unique
/// without a shared counter.
fn push_new_request_id(s: &mut String) {
    thread_local! {
        static SEQ: std::cell::Cell<(u64, u64)> = std::cell::Cell::new({
            let mut b = [0u8; 8];
            let _ = getrandom::getrandom(&mut b);
            (u64::from_le_bytes(b) ^ REQUEST_SEQ.fetch_add(1, Ordering::Relaxed), 0)
        });
    }
    let (prefix, n) = SEQ.with(|c| {
        let (p, n) = c.get();
        c.set((p, n + 1));
        (p, n)
    });
    s.push_str("qd-");
    push_hex(s, prefix, 16);
    s.push('-');
    push_hex(s, n, 8);
}

fn push_hex(s: &mut String, v: u64, digits: u32) {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    let digits = digits.min(16) as usize;
    let mut b = [0u8; 16];
    for (i, c) in b[..digits].iter_mut().enumerate() {
        *c = HEX[((v >> ((digits - 1 - i) * 4)) & 0xf) as usize];
    }
    // One append instead of one per digit; hex digits are always UTF-8.
    s.push_str(std::str::from_utf8(&b[..digits]).unwrap_or_default());
}

/// A JSON response.
pub fn json(status: u16, body: String, rid: &str) -> Resp {
    let mut r = Response::new(Full::new(Bytes::from(body)));
    *r.status_mut() = StatusCode::from_u16(status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    // Room for every header a check sets, so the map never grows mid-response.
    *r.headers_mut() = hyper::HeaderMap::with_capacity(16);
    let h = r.headers_mut();
    h.insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
    if let Ok(v) = HeaderValue::from_str(rid) {
        h.insert(X_REQUEST_ID.clone(), v);
    }
    r
}

/// An error response with the envelope.
pub fn error(status: u16, code: &str, message: &str, rid: &str) -> Resp {
    json(status, render::envelope(code, message, rid), rid)
}

async fn handle(state: &AppState, req: Request<Incoming>) -> Resp {
    let rid = request_id(&req);
    let path = req.uri().path();
    if is_check(path) {
        // (A node on its own engine answers checks before they get here: see `run`.)
        return check_shared(state, &req, &rid).await;
    }
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
            let keys = state.backend.key_count().await.map_or(-1, |k| k as i64);
            let mut r = json(200, state.metrics.render(&state.backend, keys), &rid);
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
async fn health(state: &AppState) -> (u16, serde_json::Value) {
    match &state.backend {
        Backend::Local(e) => {
            let age = e.clock().now_ns().saturating_sub(e.last_flush_ns()) as f64 / 1e9;
            (
                200,
                serde_json::json!({
                    "status": "ok",
                    "version": env!("CARGO_PKG_VERSION"),
                    "dataDir": e.data_dir().display().to_string(),
                    "keys": e.key_count(),
                    "tiers": e.tiers().len(),
                    "persistence": {
                        "store": "mmap",
                        "lastMsyncAgeSeconds": (age * 1000.0).round() / 1000.0,
                        "msyncIntervalSeconds": state.msync_interval.as_secs_f64(),
                    },
                }),
            )
        }
        Backend::Redis(r) => {
            let keys = r.key_count().await.ok();
            let st = r.stats();
            let now = r.clock().now_ns();
            let last_ok = st.last_ok_ns();
            let ok = st.reachable();
            let o = r.options();
            (
                if ok { 200 } else { 503 },
                serde_json::json!({
                    "status": if ok { "ok" } else { "degraded" },
                    "version": env!("CARGO_PKG_VERSION"),
                    "keys": keys,
                    "tiers": r.tiers().len(),
                    "persistence": {
                        "store": if o.url.starts_with("redis-cluster://") { "redis-cluster" } else { "redis" },
                        "reachable": ok,
                        "lastOkAgeSeconds": (last_ok != 0).then(|| (now.saturating_sub(last_ok) as f64 / 1e6).round() / 1e3),
                        "mode": match o.mode { Mode::Exact => "exact", Mode::Lease { .. } => "lease" },
                        "failPolicy": match o.fail { FailPolicy::Closed => "fail-closed", FailPolicy::Open => "fail-open" },
                        "catalogRevision": r.catalog().0,
                    },
                }),
            )
        }
    }
}

/// Reads header `name` as visible ASCII of bounded length; `Err` is a 400 message.
fn header_str<'a, B>(req: &'a Request<B>, name: &HeaderName) -> Result<Option<&'a str>, String> {
    let Some(v) = req.headers().get(name) else {
        return Ok(None);
    };
    if v.len() > MAX_HEADER_VALUE {
        return Err(format!(
            "header {name} is longer than {MAX_HEADER_VALUE} bytes"
        ));
    }
    v.to_str()
        .map(|s| Some(s.trim()))
        .map_err(|_| format!("header {name} must be visible ASCII"))
}

/// The API key from `X-API-Key`, `Authorization: Bearer`, or a configured header.
fn presented_key<'a, B>(state: &AppState, req: &'a Request<B>) -> Result<Option<&'a str>, String> {
    if let Some(k) = header_str(req, &X_API_KEY)? {
        return Ok(Some(k));
    }
    if let Some(a) = header_str(req, &hyper::header::AUTHORIZATION)? {
        if let Some((scheme, token)) = a.split_once(' ') {
            if scheme.eq_ignore_ascii_case("bearer") {
                return Ok(Some(token.trim()));
            }
        }
    }
    for h in &state.http.key_headers {
        if let Some(k) = header_str(req, h)? {
            return Ok(Some(k));
        }
    }
    Ok(None)
}

/// The 400 answer to a bad check request.
fn bad_check(state: &AppState, message: &str, rid: &str) -> Resp {
    state.metrics.record_bad_request(Transport::Http);
    error(400, "bad_request", message, rid)
}

/// What a check request asks (key, scope, cost), or the message of its 400.
fn parse_check<'a, B>(
    state: &AppState,
    req: &'a Request<B>,
) -> Result<(Option<&'a str>, Option<&'a str>, u64), String> {
    let key = presented_key(state, req)?;
    let (scope, cost) = scope_and_cost(req)?;
    Ok((key, scope, cost))
}

/// The scope and cost a check request asks for, or the message of its 400.
fn scope_and_cost<B>(req: &Request<B>) -> Result<(Option<&str>, u64), String> {
    let scope = match header_str(req, &X_QUOTA_SCOPE) {
        Ok(Some(s)) if !crate::tiers::valid_scope(s) => {
            return Err(format!("header X-Quota-Scope: invalid scope {s:?}"))
        }
        Ok(s) => s.filter(|s| !s.is_empty()),
        Err(m) => return Err(m),
    };
    let cost = match header_str(req, &X_QUOTA_COST) {
        Ok(None) => 1,
        Ok(Some(c)) => match c.parse::<u64>() {
            Ok(n) if (1..=crate::engine::MAX_COST).contains(&n) => n,
            _ => {
                return Err(format!(
                    "header X-Quota-Cost must be an integer from 1 to {}",
                    crate::engine::MAX_COST
                ))
            }
        },
        Err(m) => return Err(m),
    };
    Ok((scope, cost))
}

/// Answers one `/v1/check` request on this node's engine (public so `examples/handler_cost.rs`
/// can time it alone).
pub fn check<B>(state: &AppState, engine: &Engine, req: &Request<B>) -> Resp {
    // The key first: its entry and shard lock, often last written by the other worker's core,
    // travel while the rest of the request is read.
    let key = presented_key(state, req);
    if let Ok(Some(k)) = key {
        engine.prefetch_for_check(k.as_bytes());
    }
    // The answer's buffer starts with the request id.
    let mut buf = String::with_capacity(ANSWER_CAPACITY);
    push_request_id(&mut buf, req);
    let rid = buf.len();
    let asked = key.and_then(|key| scope_and_cost(req).map(|(scope, cost)| (key, scope, cost)));
    let (key, scope, cost) = match asked {
        Ok(p) => p,
        Err(m) => return bad_check(state, &m, &buf[..rid]),
    };
    let mut admitted = None;
    let start = Stopwatch::start();
    let d = engine.check_identified(key, scope, cost, &mut |id, consumer, tier| {
        admitted = Some(push_admitted(&mut buf, Some(id), consumer, tier));
    });
    answered(state, &d, buf, rid, admitted, start, scope)
}

/// Answers one `/v1/check` request through the backend (the shared Redis store).
async fn check_shared<B>(state: &AppState, req: &Request<B>, rid: &str) -> Resp {
    let (key, scope, cost) = match parse_check(state, req) {
        Ok(p) => p,
        Err(m) => return bad_check(state, &m, rid),
    };
    let mut buf = String::with_capacity(ANSWER_CAPACITY);
    buf.push_str(rid);
    let rid = buf.len();
    let mut admitted = None;
    let start = Stopwatch::start();
    let d = state
        .backend
        .check_identified(key, scope, cost, &mut |id, consumer, tier| {
            admitted = Some(push_admitted(&mut buf, Some(id), consumer, tier));
        })
        .await;
    answered(state, &d, buf, rid, admitted, start, scope)
}

/// Whether `path` is the check endpoint (`/v1/check` or below it).
fn is_check(path: &str) -> bool {
    path == "/v1/check" || path.starts_with("/v1/check/")
}

/// Room for a whole answer's dynamic text (header values and body): a typical allowed answer
/// takes ≈ 400 bytes, the longest without JSON escapes (a 128-character request id, 64-byte
/// names, four limits and the month) ≈ 730. Names that need escaping grow the buffer once.
const ANSWER_CAPACITY: usize = 768;

/// Where [`push_admitted`] wrote an admitted answer's identity in the answer's buffer.
struct Admitted {
    /// `X-Quota-Key-Id`.
    key_id: std::ops::Range<usize>,
    /// `X-Quota-Consumer`.
    consumer: std::ops::Range<usize>,
    /// The JSON body.
    body: std::ops::Range<usize>,
}

/// Writes an admitted answer's identity into `buf`: the key id and consumer header values and
/// the whole JSON body, `{"allowed":true,"keyId":"…","consumer":"…","tier":"…"}`. On a node's own
/// engine this runs under the check's shard lock, while the names are at hand.
fn push_admitted(buf: &mut String, id: Option<KeyId>, consumer: &str, tier: &str) -> Admitted {
    let push_id = |buf: &mut String| {
        if let Some(id) = id {
            buf.push_str("key_");
            push_hex(buf, id.0, 16);
        }
    };
    let at = buf.len();
    push_id(buf);
    let key_id = at..buf.len();
    let at = buf.len();
    buf.push_str(consumer);
    let consumer_r = at..buf.len();
    let at = buf.len();
    buf.push_str("{\"allowed\":true,\"keyId\":\"");
    push_id(buf);
    buf.push_str("\",\"consumer\":");
    push_json_str(buf, consumer);
    buf.push_str(",\"tier\":");
    push_json_str(buf, tier);
    buf.push('}');
    Admitted {
        key_id,
        consumer: consumer_r,
        body: at..buf.len(),
    }
}

/// Counts a decided check (taken since `start`) and renders it into `buf`, which holds the
/// request id (`buf[..rid]`) and the identity an admitted check wrote (`admitted`).
fn answered(
    state: &AppState,
    d: &Decision,
    buf: String,
    rid: usize,
    admitted: Option<Admitted>,
    start: Stopwatch,
    scope: Option<&str>,
) -> Resp {
    let elapsed = start.elapsed_ns();
    state
        .metrics
        .record_check(Transport::Http, d.verdict, elapsed);
    render_check(d, buf, rid, admitted, scope)
}

/// Renders a decision. Every dynamic header value and the body are written into one buffer and
/// handed to hyper as slices of it: one allocation instead of one per header. The buffer holds
/// the request id already (`buf[..rid]`).
fn render_check(
    d: &Decision,
    mut buf: String,
    rid: usize,
    admitted: Option<Admitted>,
    scope: Option<&str>,
) -> Resp {
    let status = render::status(d.verdict);
    let mut num = itoa::Buffer::new();
    let mark = |buf: &mut String, f: &mut dyn FnMut(&mut String)| {
        let a = buf.len();
        f(buf);
        a..buf.len()
    };
    let rid_r = 0..rid;
    let primary = d.primary().map(|p| {
        (
            mark(&mut buf, &mut |b| b.push_str(num.format(p.limit))),
            mark(&mut buf, &mut |b| b.push_str(num.format(p.remaining))),
            mark(&mut buf, &mut |b| b.push_str(num.format(p.reset))),
            mark(&mut buf, &mut |b| render::push_ratelimit_policy(b, d)),
            mark(&mut buf, &mut |b| render::push_ratelimit(b, d)),
        )
    });
    let retry = d
        .retry_after
        .map(|ra| mark(&mut buf, &mut |b| b.push_str(num.format(ra.max(1)))));
    // An allowed decision whose identity could not be read (on the Redis store, a key deleted
    // between the check and the lookup) still answers 200, with empty names.
    let admitted = match admitted {
        None if d.verdict == Verdict::Allowed => Some(push_admitted(&mut buf, d.key_id, "", "")),
        a => a,
    };
    let (ident, body_r) = match admitted {
        Some(a) => (Some((a.key_id, a.consumer)), a.body),
        None => {
            let rid = &buf[rid_r.clone()];
            if let Verdict::Unauthorized(why) = d.verdict {
                tracing::debug!(reason = why.as_str(), key_id = ?d.key_id.map(|k| k.to_string()), request_id = rid, "unauthorized check");
            }
            let env = render::envelope(d.verdict.code(), &render::message(d, scope), rid);
            (None, mark(&mut buf, &mut |b| b.push_str(&env)))
        }
    };
    let bytes = Bytes::from(buf);
    let value = |r: std::ops::Range<usize>| HeaderValue::from_maybe_shared(bytes.slice(r)).ok();
    // Digits, `key_` + hex, the RateLimit fields' quoted names and `;=,` punctuation, and the
    // request id (the caller's was checked to be visible ASCII, ours is hex): all visible ASCII
    // by construction, so they skip the per-byte validation.
    let trusted = |r: std::ops::Range<usize>| {
        debug_assert!(bytes[r.clone()]
            .iter()
            .all(|b| b.is_ascii_graphic() || *b == b' '));
        // SAFETY: see above; `HeaderValue` only requires no control characters.
        Some(unsafe { HeaderValue::from_maybe_shared_unchecked(bytes.slice(r)) })
    };
    let mut resp = Response::new(Full::new(bytes.slice(body_r.clone())));
    *resp.status_mut() = StatusCode::from_u16(status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    // The common answer (allowed, with limits) fills a copy of a ready header map in place: no
    // header name is hashed (ten inserts' hashing was a fifth of this handler's time).
    if let (Some((id_r, consumer_r)), Some((l, rem, reset, pol, rl)), None) =
        (ident.clone(), primary.clone(), retry.clone())
    {
        let values = [
            trusted(rid_r.clone()),
            trusted(id_r),
            value(consumer_r),
            trusted(l),
            trusted(rem),
            trusted(reset),
            trusted(pol),
            trusted(rl),
        ];
        if values.iter().all(Option::is_some) {
            let mut h = ALLOWED_HEADERS.clone();
            // Slot 0 is content-type, which stays.
            let slots = h.iter_mut().skip(1).zip(values.into_iter().flatten());
            for (i, ((name, slot), v)) in slots.enumerate() {
                debug_assert_eq!(name, ALLOWED_HEADER_NAMES[i]);
                *slot = v;
            }
            *resp.headers_mut() = h;
            return resp;
        }
    }
    let mut h = hyper::HeaderMap::with_capacity(16);
    h.insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
    let mut put = |name: &HeaderName, v: Option<HeaderValue>| {
        if let Some(v) = v {
            h.insert(name.clone(), v);
        }
    };
    put(&X_REQUEST_ID, trusted(rid_r));
    if let Some((id_r, consumer_r)) = ident {
        put(&X_QUOTA_KEY_ID, trusted(id_r));
        put(&X_QUOTA_CONSUMER, value(consumer_r));
    } else {
        // nginx auth_request discards the subrequest's body; this header lets the shipped nginx
        // configuration return the same envelope to the client.
        put(&X_QUOTA_ERROR, value(body_r));
    }
    if let Some((l, rem, reset, pol, rl)) = primary {
        put(&X_RATELIMIT_LIMIT, trusted(l));
        put(&X_RATELIMIT_REMAINING, trusted(rem));
        put(&X_RATELIMIT_RESET, trusted(reset));
        put(&RATELIMIT_POLICY, trusted(pol));
        put(&RATELIMIT, trusted(rl));
    }
    if let Some(r) = retry {
        put(&RETRY_AFTER, trusted(r));
    }
    *resp.headers_mut() = h;
    resp
}

/// Appends `v` as a JSON string literal.
fn push_json_str(out: &mut String, v: &str) {
    if v.bytes()
        .all(|b| b >= 0x20 && b != b'"' && b != b'\\' && b < 0x7f)
    {
        out.push('"');
        out.push_str(v);
        out.push('"');
    } else {
        out.push_str(&serde_json::Value::from(v).to_string());
    }
}

/// Reads a request body of at most [`MAX_BODY`] bytes; `Err` is a 400 message.
pub async fn read_body(body: Incoming) -> Result<Bytes, String> {
    match Limited::new(body, MAX_BODY).collect().await {
        Ok(c) => Ok(c.to_bytes()),
        Err(e) => {
            if e.downcast_ref::<http_body_util::LengthLimitError>()
                .is_some()
            {
                Err(format!("request body exceeds {} KiB", MAX_BODY / 1024))
            } else {
                Err(format!("could not read request body: {e}"))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hex_is_zero_padded_lowercase() {
        let mut s = String::new();
        push_hex(&mut s, 0xff, 16);
        s.push(' ');
        push_hex(&mut s, 0x1234_abcd, 8);
        assert_eq!(s, "00000000000000ff 1234abcd");
    }

    #[test]
    fn made_request_ids_are_distinct_and_shaped() {
        let (a, b) = (new_request_id(), new_request_id());
        assert_ne!(a, b);
        for id in [&a, &b] {
            let hex = id.strip_prefix("qd-").unwrap();
            assert_eq!(hex.len(), 25, "{id}");
            assert_eq!(&hex[16..17], "-");
            assert!(hex[..16]
                .chars()
                .chain(hex[17..].chars())
                .all(|c| c.is_ascii_hexdigit() && !c.is_ascii_uppercase()));
        }
    }
}
