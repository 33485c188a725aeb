//! `/v1/check`: the forward-auth check. Reads the key (`X-API-Key`, `Authorization: Bearer`, or
//! a configured header), the scope (`X-Quota-Scope`) and the cost (`X-Quota-Cost`), asks the
//! store, and renders the decision as a status, the rate-limit headers and a JSON body.

use bytes::Bytes;
use http_body_util::Full;
use hyper::header::{HeaderName, HeaderValue, CONTENT_TYPE};
use hyper::{Request, Response, StatusCode};

use super::render;
use super::reply::{error, push_hex, push_json_str, push_request_id, Resp, X_REQUEST_ID};
use super::AppState;
use crate::engine::catalog_doc::RetiredPrefix;
use crate::engine::decision::{AuthFailure, Decision, Verdict};
use crate::engine::MAX_COST;
use crate::keys::KeyId;
use crate::metrics::{Stopwatch, Transport};
use crate::store::{CheckRequest, Identity, Store};

/// The longest value accepted in a header quotad reads.
pub const MAX_HEADER_VALUE: usize = 1024;

// Header names built once (a `&str` name is parsed and hashed on every insert).
static X_RATELIMIT_LIMIT: HeaderName = HeaderName::from_static("x-ratelimit-limit");
static X_RATELIMIT_REMAINING: HeaderName = HeaderName::from_static("x-ratelimit-remaining");
static X_RATELIMIT_RESET: HeaderName = HeaderName::from_static("x-ratelimit-reset");
static X_QUOTA_SHADOW: HeaderName = HeaderName::from_static("x-quota-shadow");
static SUNSET: HeaderName = HeaderName::from_static("sunset");
static DEPRECATION: HeaderName = HeaderName::from_static("deprecation");
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
fn presented_key<'a, S, B>(
    state: &AppState<S>,
    req: &'a Request<B>,
) -> Result<Option<&'a str>, String> {
    if let Some(k) = header_str(req, &X_API_KEY)? {
        return Ok(Some(k));
    }
    if let Some(token) = header_str(req, &hyper::header::AUTHORIZATION)?.and_then(bearer_token) {
        return Ok(Some(token));
    }
    for h in &state.http.key_headers {
        if let Some(k) = header_str(req, h)? {
            return Ok(Some(k));
        }
    }
    Ok(None)
}

/// The 400 answer to a bad check request.
fn bad_check<S>(state: &AppState<S>, message: &str, rid: &str) -> Resp {
    state.metrics.record_bad_request(Transport::Http);
    error(400, "bad_request", message, rid)
}

/// The scope and cost a check request asks for, or the message of its 400.
fn scope_and_cost<B>(req: &Request<B>) -> Result<(Option<&str>, u64), String> {
    let scope = read_scope("X-Quota-Scope", header_str(req, &X_QUOTA_SCOPE)?)?;
    let cost = read_cost("X-Quota-Cost", header_str(req, &X_QUOTA_COST)?)?;
    Ok((scope, cost))
}

/// The token of an `Authorization` value in the Bearer scheme.
pub(super) fn bearer_token(v: &str) -> Option<&str> {
    let (scheme, token) = v.split_once(' ')?;
    scheme.eq_ignore_ascii_case("bearer").then(|| token.trim())
}

/// The scope a check needs, from the value of header `name` (`None`: absent); `Err` is the
/// message of its refusal (an empty value is not a scope). Shared by `/v1/check` and gRPC's
/// external authorization.
pub(super) fn read_scope<'a>(name: &str, v: Option<&'a str>) -> Result<Option<&'a str>, String> {
    match v {
        Some(s) if !crate::tiers::valid_scope(s) => {
            Err(format!("header {name}: invalid scope {s:?}"))
        }
        v => Ok(v),
    }
}

/// The cost a check counts for, from the value of header `name` (1 when absent); `Err` is the
/// message of its refusal.
pub(super) fn read_cost(name: &str, v: Option<&str>) -> Result<u64, String> {
    match v.map(str::parse::<u64>) {
        None => Ok(1),
        Some(Ok(n)) if (1..=MAX_COST).contains(&n) => Ok(n),
        Some(_) => Err(format!(
            "header {name} must be an integer from 1 to {MAX_COST}"
        )),
    }
}

/// Answers one `/v1/check` request.
pub(super) async fn check<S: Store, B>(state: &AppState<S>, req: &Request<B>) -> Resp {
    // The answer's buffer starts with the request id.
    let mut buf = String::with_capacity(ANSWER_CAPACITY);
    push_request_id(&mut buf, req);
    let rid = buf.len();
    if !CHECK_METHODS.contains(req.method()) {
        let mut r = super::reply::error(
            405,
            "method_not_allowed",
            "The check answers GET, HEAD, POST, PUT, PATCH, DELETE, OPTIONS and TRACE",
            &buf[..rid],
        );
        r.headers_mut()
            .insert(hyper::header::ALLOW, HeaderValue::from_static(CHECK_ALLOW));
        return r;
    }
    let asked = presented_key(state, req)
        .and_then(|key| scope_and_cost(req).map(|(scope, cost)| (key, scope, cost)));
    let (key, scope, cost) = match asked {
        Ok(p) => p,
        Err(m) => return bad_check(state, &m, &buf[..rid]),
    };
    let mut admitted = None;
    let mut lend = |who: Identity<'_>| {
        admitted = Some(push_admitted(
            &mut buf,
            Some(who.id),
            who.consumer,
            who.tier,
        ));
    };
    let start = Stopwatch::start();
    let d = state
        .store
        .check(CheckRequest { key, scope, cost }, Some(&mut lend), |d| *d)
        .await;
    // A key refused for its retired prefix: the message names the prefix and its sunset.
    let retired = match d.verdict {
        Verdict::Unauthorized(AuthFailure::Deprecated) => {
            key.and_then(|k| state.store.retired_prefix(k))
        }
        _ => None,
    };
    answered(
        state,
        &d,
        buf,
        rid,
        admitted,
        start,
        (scope, retired.as_ref()),
    )
}

/// Whether `path` is the check endpoint (`/v1/check` or below it).
pub(super) fn is_check(path: &str) -> bool {
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

/// The methods the check answers: every standard method a gateway may forward (not CONNECT, and
/// no extension method), so that an OpenAPI document can list them.
static CHECK_METHODS: [hyper::Method; 8] = [
    hyper::Method::GET,
    hyper::Method::HEAD,
    hyper::Method::POST,
    hyper::Method::PUT,
    hyper::Method::PATCH,
    hyper::Method::DELETE,
    hyper::Method::OPTIONS,
    hyper::Method::TRACE,
];
const CHECK_ALLOW: &str = "GET, HEAD, POST, PUT, PATCH, DELETE, OPTIONS, TRACE";

/// Counts a decided check (taken since `start`) and renders it into `buf`, which holds the
/// request id (`buf[..rid]`) and the identity an admitted check wrote (`admitted`).
fn answered<S>(
    state: &AppState<S>,
    d: &Decision,
    buf: String,
    rid: usize,
    admitted: Option<Admitted>,
    start: Stopwatch,
    asked: (Option<&str>, Option<&RetiredPrefix>),
) -> Resp {
    let elapsed = start.elapsed_ns();
    state.metrics.record_decision(Transport::Http, d, elapsed);
    render_check(d, buf, rid, admitted, asked)
}

/// Renders a decision. Every dynamic header value and the body are written into one buffer and
/// handed to hyper as slices of it: one allocation instead of one per header. The buffer holds
/// the request id already (`buf[..rid]`).
fn render_check(
    d: &Decision,
    mut buf: String,
    rid: usize,
    admitted: Option<Admitted>,
    (scope, retired): (Option<&str>, Option<&RetiredPrefix>),
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
            let env = render::envelope(render::code(d), &render::message(d, scope, retired), rid);
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
    if let (Some((id_r, consumer_r)), Some((l, rem, reset, pol, rl)), None, None, None) = (
        ident.clone(),
        primary.clone(),
        retry.clone(),
        d.shadow,
        d.sunset,
    ) {
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
    if let Some(v) = d.shadow {
        put(&X_QUOTA_SHADOW, Some(HeaderValue::from_static(v.code())));
    }
    if let (true, Some(s)) = (d.verdict.is_allowed(), d.sunset) {
        put(
            &SUNSET,
            HeaderValue::from_str(&render::http_date(s.at)).ok(),
        );
        put(
            &DEPRECATION,
            HeaderValue::from_str(&format!("@{}", s.deprecated_at)).ok(),
        );
    }
    if status == 401 {
        h.insert(
            hyper::header::WWW_AUTHENTICATE,
            HeaderValue::from_static(super::reply::WWW_AUTHENTICATE),
        );
    }
    *resp.headers_mut() = h;
    resp
}
