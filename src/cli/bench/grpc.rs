//! The load generator's gRPC client: one HTTP/2 connection per load connection, calling the rate
//! limit service (`--target grpc`) or external authorization (`--target grpc-authz`) with one
//! key each, answers labelled like the other targets' (`allowed`, `rate_limited`, …).

use std::future::Future;
use std::net::SocketAddr;

use anyhow::Context;
use envoy_types::pb::envoy::extensions::common::ratelimit::v3::{
    rate_limit_descriptor::Entry, RateLimitDescriptor,
};
use envoy_types::pb::envoy::service::auth::v3::attribute_context::{HttpRequest, Request};
use envoy_types::pb::envoy::service::auth::v3::authorization_client::AuthorizationClient;
use envoy_types::pb::envoy::service::auth::v3::check_response::HttpResponse;
use envoy_types::pb::envoy::service::auth::v3::{AttributeContext, CheckRequest};
use envoy_types::pb::envoy::service::ratelimit::v3::rate_limit_response::Code;
use envoy_types::pb::envoy::service::ratelimit::v3::rate_limit_service_client::RateLimitServiceClient;
use envoy_types::pb::envoy::service::ratelimit::v3::RateLimitRequest;
use tonic::transport::Channel;

use super::decision_label;

/// One gRPC connection of the load.
#[derive(Clone)]
pub(super) struct Caller {
    channel: Channel,
    authz: bool,
}

/// The label of a failed call: `bad_request` for INVALID_ARGUMENT, `unavailable`, else `error`.
fn failed(s: &tonic::Status) -> &'static str {
    match s.code() {
        tonic::Code::InvalidArgument => "bad_request",
        tonic::Code::Unavailable => "unavailable",
        _ => "error",
    }
}

impl Caller {
    /// Connects to `addr` (h2c).
    pub(super) async fn connect(addr: SocketAddr, authz: bool) -> anyhow::Result<Caller> {
        let channel = Channel::from_shared(format!("http://{addr}"))
            .context("bad gRPC address")?
            .tcp_nodelay(true)
            .connect()
            .await
            .with_context(|| format!("cannot connect to the gRPC port {addr}"))?;
        Ok(Caller { channel, authz })
    }

    /// One call checking `key` (with `scope` if not empty): its label.
    pub(super) fn call(
        &self,
        key: &str,
        scope: &str,
    ) -> impl Future<Output = &'static str> + Send + 'static {
        let channel = self.channel.clone();
        let authz = self.authz;
        let (key, scope) = (key.to_string(), scope.to_string());
        async move {
            if authz {
                let mut headers = std::collections::HashMap::with_capacity(2);
                headers.insert("x-api-key".to_string(), key);
                if !scope.is_empty() {
                    headers.insert("x-quota-scope".to_string(), scope);
                }
                let req = CheckRequest {
                    attributes: Some(AttributeContext {
                        request: Some(Request {
                            http: Some(HttpRequest {
                                method: "GET".into(),
                                path: "/".into(),
                                headers,
                                ..Default::default()
                            }),
                            ..Default::default()
                        }),
                        ..Default::default()
                    }),
                };
                match AuthorizationClient::new(channel).check(req).await {
                    Ok(r) => match r.into_inner().http_response {
                        Some(HttpResponse::OkResponse(_)) => "allowed",
                        Some(HttpResponse::DeniedResponse(d)) => decision_label(&d.body),
                        _ => "error",
                    },
                    Err(s) => failed(&s),
                }
            } else {
                let mut entries = vec![Entry {
                    key: "api_key".into(),
                    value: key,
                }];
                if !scope.is_empty() {
                    entries.push(Entry {
                        key: "scope".into(),
                        value: scope,
                    });
                }
                let req = RateLimitRequest {
                    domain: "bench".into(),
                    descriptors: vec![RateLimitDescriptor {
                        entries,
                        ..Default::default()
                    }],
                    hits_addend: 1,
                };
                match RateLimitServiceClient::new(channel)
                    .should_rate_limit(req)
                    .await
                {
                    Ok(r) => {
                        let r = r.into_inner();
                        if r.overall_code == Code::Ok as i32 {
                            "allowed"
                        } else {
                            r.response_headers_to_add
                                .iter()
                                .find(|h| h.key == "x-quota-error")
                                .map_or("error", |h| decision_label(&h.value))
                        }
                    }
                    Err(s) => failed(&s),
                }
            }
        }
    }
}
