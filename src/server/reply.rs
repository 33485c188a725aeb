//! What every HTTP answer is made of: the JSON and error responses, the request id each one
//! carries, and bounded request bodies. Shared by the check, the admin API and the public routes.

use std::sync::atomic::{AtomicU64, Ordering};

use bytes::Bytes;
use http_body_util::{BodyExt, Full, Limited};
use hyper::body::Incoming;
use hyper::header::{HeaderName, HeaderValue, CONTENT_TYPE};
use hyper::{Request, Response, StatusCode};

use super::render;

/// The largest request body accepted (admin API).
pub const MAX_BODY: usize = 64 * 1024;
/// The longest caller-supplied request id echoed back.
pub const MAX_REQUEST_ID: usize = 128;

/// A response under construction.
pub type Resp = Response<Full<Bytes>>;

static REQUEST_SEQ: AtomicU64 = AtomicU64::new(0);

/// `x-request-id`: the caller's, echoed, or a new one.
pub(super) static X_REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");

/// The caller's `x-request-id` if acceptable (1-128 visible ASCII characters), else a new one.
pub(super) fn request_id<B>(req: &Request<B>) -> String {
    match callers_request_id(req) {
        Some(s) => s.to_string(),
        None => new_request_id(),
    }
}

/// [`request_id`], appended to `buf`.
pub(super) fn push_request_id<B>(buf: &mut String, req: &Request<B>) {
    match callers_request_id(req) {
        Some(s) => buf.push_str(s),
        None => push_new_request_id(buf),
    }
}

/// The caller's `x-request-id`, if acceptable.
fn callers_request_id<B>(req: &Request<B>) -> Option<&str> {
    let v = req.headers().get(&X_REQUEST_ID)?;
    if acceptable_request_id(v.as_bytes()) {
        v.to_str().ok()
    } else {
        None
    }
}

/// Whether a caller's request id is used as ours: 1-128 visible ASCII characters.
pub(super) fn acceptable_request_id(b: &[u8]) -> bool {
    !b.is_empty() && b.len() <= MAX_REQUEST_ID && b.iter().all(|c| c.is_ascii_graphic())
}

/// A new request id.
pub(super) fn new_request_id() -> String {
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

pub(super) fn push_hex(s: &mut String, v: u64, digits: u32) {
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
    let mut r = json(status, render::envelope(code, message, rid), rid);
    if status == 401 {
        r.headers_mut().insert(
            hyper::header::WWW_AUTHENTICATE,
            hyper::header::HeaderValue::from_static(WWW_AUTHENTICATE),
        );
    }
    r
}

/// The challenge of every 401 (RFC 9110 §11.6.1): a bearer credential, in the realm "quotad".
pub const WWW_AUTHENTICATE: &str = "Bearer realm=\"quotad\"";

/// Appends `v` as a JSON string literal.
pub(super) fn push_json_str(out: &mut String, v: &str) {
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
