//! A small reverse proxy that forwards a request to its upstream only when quotad allows it,
//! asking quotad's HTTP check endpoint the way nginx `auth_request` or Traefik ForwardAuth do.
//!
//! ```sh
//! quotad serve &                                        # HTTP on 127.0.0.1:8686
//! cargo run --example http_gateway -- --quotad 127.0.0.1:8686 --upstream 127.0.0.1:9000 \
//!     --listen 127.0.0.1:8080
//! curl -i http://127.0.0.1:8080/reports -H "X-API-Key: $KEY"
//! ```
//!
//! Per request: `GET /v1/check` on quotad with the caller's `X-API-Key` / `Authorization` and the
//! route's scope in `X-Quota-Scope`. On 200 the request goes upstream unchanged, plus quotad's
//! `X-Quota-Key-Id` and `X-Quota-Consumer` (so the API knows who calls), and the upstream's answer
//! comes back with quotad's rate-limit headers added. On any other status the caller gets
//! quotad's answer: its status, rate-limit headers, `Retry-After` and JSON error body.
//!
//! It prints `listening on ADDR` once it accepts connections.

use std::convert::Infallible;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::header::HeaderMap;
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::TokioIo;

/// Headers copied from quotad's answer to the caller's.
const RATE_LIMIT_HEADERS: &[&str] = &[
    "x-ratelimit-limit",
    "x-ratelimit-remaining",
    "x-ratelimit-reset",
    "ratelimit",
    "ratelimit-policy",
    "retry-after",
];

/// Headers copied from quotad's allowed answer to the upstream request.
const IDENTITY_HEADERS: &[&str] = &["x-quota-key-id", "x-quota-consumer"];

/// The scope each route needs (method, path prefix, scope); other routes need none.
const ROUTES: &[(&str, &str, &str)] = &[
    ("GET", "/reports", "reports:read"),
    ("POST", "/reports", "reports:write"),
];

type Body = Full<Bytes>;
type Error = Box<dyn std::error::Error + Send + Sync>;

/// Sends `req` to `addr` on a connection of its own and reads the whole answer.
async fn send(addr: &str, req: Request<Body>) -> Result<Response<Bytes>, Error> {
    let stream = tokio::net::TcpStream::connect(addr).await?;
    let (mut tx, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream)).await?;
    tokio::spawn(conn);
    let resp = tx.send_request(req).await?;
    let (parts, body) = resp.into_parts();
    Ok(Response::from_parts(
        parts,
        body.collect().await?.to_bytes(),
    ))
}

fn copy(from: &HeaderMap, to: &mut HeaderMap, names: &[&'static str]) {
    for name in names {
        if let Some(v) = from.get(*name) {
            to.insert(*name, v.clone());
        }
    }
}

async fn proxy(
    quotad: &str,
    upstream: &str,
    req: Request<Incoming>,
) -> Result<Response<Body>, Error> {
    let mut ask = Request::get("/v1/check").header("host", quotad);
    for name in ["x-api-key", "authorization", "x-request-id"] {
        if let Some(v) = req.headers().get(name) {
            ask = ask.header(name, v);
        }
    }
    let scope = ROUTES
        .iter()
        .find(|(m, p, _)| req.method().as_str() == *m && req.uri().path().starts_with(p));
    if let Some((_, _, s)) = scope {
        ask = ask.header("x-quota-scope", *s);
    }
    let verdict = send(quotad, ask.body(Full::default())?).await?;
    if verdict.status() != StatusCode::OK {
        // quotad's answer is the caller's answer.
        let (parts, body) = verdict.into_parts();
        let mut resp = Response::new(Full::new(body));
        *resp.status_mut() = parts.status;
        copy(&parts.headers, resp.headers_mut(), RATE_LIMIT_HEADERS);
        copy(
            &parts.headers,
            resp.headers_mut(),
            &["content-type", "x-request-id"],
        );
        return Ok(resp);
    }
    let (mut parts, body) = req.into_parts();
    copy(verdict.headers(), &mut parts.headers, IDENTITY_HEADERS);
    parts.headers.insert("host", upstream.parse()?);
    let forwarded = Request::from_parts(parts, Full::new(body.collect().await?.to_bytes()));
    let answer = send(upstream, forwarded).await?;
    let (mut parts, body) = answer.into_parts();
    copy(verdict.headers(), &mut parts.headers, RATE_LIMIT_HEADERS);
    Ok(Response::from_parts(parts, Full::new(body)))
}

fn arg(name: &str, default: &str) -> String {
    let args: Vec<String> = std::env::args().collect();
    args.iter()
        .position(|a| a == name)
        .and_then(|i| args.get(i + 1).cloned())
        .unwrap_or_else(|| default.to_string())
}

#[tokio::main]
async fn main() -> Result<(), Error> {
    let quotad: &'static str = Box::leak(arg("--quotad", "127.0.0.1:8686").into_boxed_str());
    let upstream: &'static str = Box::leak(arg("--upstream", "127.0.0.1:9000").into_boxed_str());
    let listener = tokio::net::TcpListener::bind(arg("--listen", "127.0.0.1:8080")).await?;
    println!("listening on {}", listener.local_addr()?);
    loop {
        let (stream, _) = listener.accept().await?;
        tokio::spawn(async move {
            let svc = hyper::service::service_fn(move |req| async move {
                Ok::<_, Infallible>(match proxy(quotad, upstream, req).await {
                    Ok(r) => r,
                    Err(e) => {
                        // quotad or the upstream unreachable: fail closed.
                        let mut r = Response::new(Full::new(Bytes::from(format!("{e}\n"))));
                        *r.status_mut() = StatusCode::BAD_GATEWAY;
                        r
                    }
                })
            });
            let _ = hyper::server::conn::http1::Builder::new()
                .serve_connection(TokioIo::new(stream), svc)
                .await;
        });
    }
}
