//! `envoy.service.auth.v3.Authorization/Check`: the HTTP check's rules over Envoy's external
//! authorization API. The key, scope and cost come from the request's headers as on
//! `/v1/check`; an allowed call passes the key's identity upstream and the rate-limit headers
//! back; a denied one carries the HTTP status, headers and JSON envelope the HTTP check answers.

use std::collections::HashMap;
use std::sync::Arc;

use envoy_types::pb::envoy::r#type::v3::HttpStatus;
use envoy_types::pb::envoy::service::auth::v3::authorization_server::Authorization;
use envoy_types::pb::envoy::service::auth::v3::check_response::HttpResponse;
use envoy_types::pb::envoy::service::auth::v3::{
    CheckRequest as AuthzRequest, CheckResponse, DeniedHttpResponse, OkHttpResponse,
};
use envoy_types::pb::google::rpc::Status as RpcStatus;
use tonic::{Code, Request, Response, Status};

use super::{header, invalid, is_unavailable, rate_limit_headers, record, unavailable};
use crate::engine::decision::{AuthFailure, Verdict};
use crate::keys::KeyId;
use crate::metrics::Stopwatch;
use crate::protocol::frame::MAX_KEY;
use crate::server::check::{bearer_token, read_cost, read_scope};
use crate::server::reply::{acceptable_request_id, new_request_id, WWW_AUTHENTICATE};
use crate::server::{render, AppState};
use crate::store::{CheckRequest, Identity, Store};

/// External authorization on a store.
pub(super) struct Authz<S> {
    pub(super) state: Arc<AppState<S>>,
}

/// The request's headers, by lower-case name: the `headers` map, or `header_map` when Envoy
/// sends raw headers (`encode_raw_headers`).
fn headers_of(req: &AuthzRequest) -> HashMap<String, String> {
    let Some(http) = req
        .attributes
        .as_ref()
        .and_then(|a| a.request.as_ref())
        .and_then(|r| r.http.as_ref())
    else {
        return HashMap::new();
    };
    let mut h: HashMap<String, String> = http
        .headers
        .iter()
        .map(|(k, v)| (k.to_ascii_lowercase(), v.clone()))
        .collect();
    if let Some(map) = &http.header_map {
        for hv in &map.headers {
            let value = if hv.raw_value.is_empty() {
                hv.value.clone()
            } else {
                String::from_utf8_lossy(&hv.raw_value).into_owned()
            };
            h.entry(hv.key.to_ascii_lowercase()).or_insert(value);
        }
    }
    h
}

/// The key, scope and cost the headers ask for; `Err` is the INVALID_ARGUMENT message.
fn asked<'a>(
    h: &'a HashMap<String, String>,
    key_headers: &[hyper::header::HeaderName],
) -> Result<(Option<&'a str>, Option<&'a str>, u64), String> {
    let get = |n: &str| h.get(n).map(|v| v.trim());
    let key = get("x-api-key")
        .or_else(|| get("authorization").and_then(bearer_token))
        .or_else(|| key_headers.iter().find_map(|n| get(n.as_str())));
    if key.is_some_and(|k| k.len() > MAX_KEY) {
        return Err(format!("the API key is longer than {MAX_KEY} bytes"));
    }
    let scope = read_scope("x-quota-scope", get("x-quota-scope"))?;
    let cost = read_cost("x-quota-cost", get("x-quota-cost"))?;
    Ok((key, scope, cost))
}

/// Envoy's request id when usable as ours (1-128 visible ASCII characters), else a new one.
fn request_id(req: &AuthzRequest) -> String {
    let id = req
        .attributes
        .as_ref()
        .and_then(|a| a.request.as_ref())
        .and_then(|r| r.http.as_ref())
        .map_or("", |h| h.id.as_str());
    if acceptable_request_id(id.as_bytes()) {
        id.to_string()
    } else {
        new_request_id()
    }
}

/// The gRPC status code for a denial, as Envoy's ext_authz filter reads it.
fn grpc_code(v: Verdict) -> Code {
    match v {
        Verdict::Unauthorized(_) => Code::Unauthenticated,
        Verdict::Forbidden | Verdict::PlanRequired => Code::PermissionDenied,
        _ => Code::ResourceExhausted,
    }
}

#[tonic::async_trait]
impl<S: Store> Authorization for Authz<S> {
    async fn check(
        &self,
        request: Request<AuthzRequest>,
    ) -> Result<Response<CheckResponse>, Status> {
        let state = &self.state;
        let req = request.into_inner();
        let h = headers_of(&req);
        let (key, scope, cost) =
            asked(&h, &state.http.key_headers).map_err(|m| invalid(state, m))?;
        let rid = request_id(&req);
        let mut who: Option<(KeyId, String)> = None;
        let mut lend = |i: Identity<'_>| who = Some((i.id, i.consumer.to_string()));
        let start = Stopwatch::start();
        let d = state
            .store
            .check(CheckRequest { key, scope, cost }, Some(&mut lend), |d| *d)
            .await;
        record(state, &d, start.elapsed_ns());
        if is_unavailable(&d) {
            return Err(unavailable());
        }
        let mut limits = rate_limit_headers(&d);
        limits.push(header("x-request-id", rid.as_str()));
        let answer = if d.verdict.is_allowed() {
            let mut upstream = Vec::with_capacity(2);
            if let Some(id) = d.key_id {
                upstream.push(header("x-quota-key-id", id.to_string()));
            }
            if let Some((_, consumer)) = who {
                upstream.push(header("x-quota-consumer", consumer));
            }
            CheckResponse {
                status: Some(RpcStatus {
                    code: Code::Ok as i32,
                    ..Default::default()
                }),
                http_response: Some(HttpResponse::OkResponse(OkHttpResponse {
                    headers: upstream,
                    response_headers_to_add: limits,
                    ..Default::default()
                })),
                ..Default::default()
            }
        } else {
            let code = grpc_code(d.verdict);
            let retired = match d.verdict {
                Verdict::Unauthorized(AuthFailure::Deprecated) => {
                    key.and_then(|k| state.store.retired_prefix(k))
                }
                _ => None,
            };
            let message = render::message(&d, scope, retired.as_ref());
            let mut headers = limits;
            headers.push(header("content-type", "application/json"));
            if matches!(d.verdict, Verdict::Unauthorized(_)) {
                headers.push(header("www-authenticate", WWW_AUTHENTICATE));
            }
            CheckResponse {
                status: Some(RpcStatus {
                    code: code as i32,
                    message: message.clone(),
                    ..Default::default()
                }),
                http_response: Some(HttpResponse::DeniedResponse(DeniedHttpResponse {
                    status: Some(HttpStatus {
                        code: i32::from(render::status(d.verdict)),
                    }),
                    headers,
                    body: render::envelope(render::code(&d), &message, &rid),
                })),
                ..Default::default()
            }
        };
        Ok(Response::new(answer))
    }
}
