//! A small API gateway that asks quotad, over the binary protocol, before it serves each request.
//!
//! ```sh
//! quotad serve &                                        # binary protocol on 127.0.0.1:8687
//! cargo run --example binary_gateway -- --quotad 127.0.0.1:8687 --listen 127.0.0.1:8080
//! curl -i http://127.0.0.1:8080/reports -H "X-API-Key: $KEY"
//! ```
//!
//! For every request the gateway takes the API key from `X-API-Key` (or `Authorization: Bearer`),
//! picks the scope the route needs from its own route table, and sends one CHECK on a pipelined
//! connection ([`quotad::protocol::client::Client`]: any number of checks in flight at once,
//! answered by request id). An allowed request is served (here by a stub handler); any other
//! answer becomes the matching status (401, 403, 429, 503) with `Retry-After`. Every answer
//! carries `X-RateLimit-Limit`, `-Remaining` and `-Reset` from quotad's figures.
//!
//! It prints `listening on ADDR` once it accepts connections (`--listen 127.0.0.1:0` picks a free
//! port).

use std::convert::Infallible;
use std::sync::Arc;

use bytes::Bytes;
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use quotad::protocol::client::{Check, Client};
use quotad::protocol::result::WireResult;

/// The scope each route needs (method, path prefix, scope); other routes need none.
const ROUTES: &[(&str, &str, &str)] = &[
    ("GET", "/reports", "reports:read"),
    ("POST", "/reports", "reports:write"),
];

fn scope_of<B>(req: &Request<B>) -> Option<&'static str> {
    ROUTES
        .iter()
        .find(|(m, p, _)| req.method().as_str() == *m && req.uri().path().starts_with(p))
        .map(|(_, _, s)| *s)
}

fn api_key<B>(req: &Request<B>) -> &str {
    let h = req.headers();
    if let Some(k) = h.get("x-api-key").and_then(|v| v.to_str().ok()) {
        return k.trim();
    }
    h.get("authorization")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.split_once(' '))
        .filter(|(scheme, _)| scheme.eq_ignore_ascii_case("bearer"))
        .map_or("", |(_, k)| k.trim())
}

/// The HTTP status of a decision (docs/PROTOCOL.md lists the codes).
fn status_of(r: &WireResult) -> StatusCode {
    match r.code() {
        "allowed" => StatusCode::OK,
        "unauthorized" => StatusCode::UNAUTHORIZED,
        "forbidden" | "plan_required" => StatusCode::FORBIDDEN,
        "rate_limited" | "quota_exceeded" => StatusCode::TOO_MANY_REQUESTS,
        _ => StatusCode::SERVICE_UNAVAILABLE,
    }
}

async fn handle(quotad: Arc<Client>, req: Request<Incoming>) -> Response<Full<Bytes>> {
    let check = Check {
        key: api_key(&req),
        scope: scope_of(&req),
        cost: 1,
    };
    let r = match quotad.check(check).await {
        Ok(r) => r,
        // quotad unreachable: this gateway fails closed.
        Err(e) => {
            let mut resp = Response::new(Full::new(Bytes::from(format!("quotad: {e}\n"))));
            *resp.status_mut() = StatusCode::SERVICE_UNAVAILABLE;
            return resp;
        }
    };
    let status = status_of(&r);
    let body = if status == StatusCode::OK {
        // The real API would run here.
        format!("hello from {} {}\n", req.method(), req.uri().path())
    } else {
        format!("{}\n", r.code())
    };
    let mut resp = Response::new(Full::new(Bytes::from(body)));
    *resp.status_mut() = status;
    let h = resp.headers_mut();
    if r.limit != 0 {
        h.insert("x-ratelimit-limit", r.limit.into());
        h.insert("x-ratelimit-remaining", r.remaining.into());
        h.insert("x-ratelimit-reset", r.reset.into());
    }
    if r.retry_after != 0 {
        h.insert("retry-after", r.retry_after.into());
    }
    resp
}

fn arg(name: &str, default: &str) -> String {
    let args: Vec<String> = std::env::args().collect();
    args.iter()
        .position(|a| a == name)
        .and_then(|i| args.get(i + 1).cloned())
        .unwrap_or_else(|| default.to_string())
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let quotad = Arc::new(Client::connect_tcp(arg("--quotad", "127.0.0.1:8687")).await?);
    let listener = tokio::net::TcpListener::bind(arg("--listen", "127.0.0.1:8080")).await?;
    println!("listening on {}", listener.local_addr()?);
    loop {
        let (stream, _) = listener.accept().await?;
        let quotad = quotad.clone();
        tokio::spawn(async move {
            let svc = hyper::service::service_fn(move |req| {
                let quotad = quotad.clone();
                async move { Ok::<_, Infallible>(handle(quotad, req).await) }
            });
            let _ = hyper::server::conn::http1::Builder::new()
                .serve_connection(TokioIo::new(stream), svc)
                .await;
        });
    }
}
