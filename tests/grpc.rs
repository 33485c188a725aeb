//! Envoy's gRPC APIs through the real binary and a tonic client built from the same protos: the
//! rate limit service, external authorization and health (docs/ENVOY.md is the contract).

mod common;

use std::collections::HashMap;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use common::{Client, Daemon};
use envoy_types::pb::envoy::extensions::common::ratelimit::v3::{
    rate_limit_descriptor::Entry, RateLimitDescriptor,
};
use envoy_types::pb::envoy::service::auth::v3::attribute_context::{
    HttpRequest, Request as AttrRequest,
};
use envoy_types::pb::envoy::service::auth::v3::authorization_client::AuthorizationClient;
use envoy_types::pb::envoy::service::auth::v3::check_response::HttpResponse;
use envoy_types::pb::envoy::service::auth::v3::{AttributeContext, CheckRequest, CheckResponse};
use envoy_types::pb::envoy::service::ratelimit::v3::rate_limit_response::{rate_limit::Unit, Code};
use envoy_types::pb::envoy::service::ratelimit::v3::rate_limit_service_client::RateLimitServiceClient;
use envoy_types::pb::envoy::service::ratelimit::v3::{RateLimitRequest, RateLimitResponse};
use envoy_types::pb::google::protobuf::UInt64Value;
use quotad::protocol::client::{Check, Client as BinClient};
use reqwest::Method;
use serde_json::json;
use tonic::transport::Channel;
use tonic_health::pb::health_check_response::ServingStatus;
use tonic_health::pb::health_client::HealthClient;
use tonic_health::pb::HealthCheckRequest;

fn channel(rt: &tokio::runtime::Runtime, addr: SocketAddr) -> Channel {
    rt.block_on(async {
        Channel::from_shared(format!("http://{addr}"))
            .unwrap()
            .connect()
            .await
            .expect("connect to quotad's gRPC port")
    })
}

/// A descriptor of `entries`.
fn descriptor(entries: &[(&str, &str)]) -> RateLimitDescriptor {
    RateLimitDescriptor {
        entries: entries
            .iter()
            .map(|(k, v)| Entry {
                key: k.to_string(),
                value: v.to_string(),
            })
            .collect(),
        ..Default::default()
    }
}

fn rls_request(descriptors: Vec<RateLimitDescriptor>, hits: u32) -> RateLimitRequest {
    RateLimitRequest {
        domain: "gateway".into(),
        descriptors,
        hits_addend: hits,
    }
}

fn rls(
    rt: &tokio::runtime::Runtime,
    ch: &Channel,
    req: RateLimitRequest,
) -> Result<RateLimitResponse, tonic::Status> {
    let mut c = RateLimitServiceClient::new(ch.clone());
    rt.block_on(c.should_rate_limit(req))
        .map(|r| r.into_inner())
}

/// One key's check over the rate limit service.
fn rls_key(
    rt: &tokio::runtime::Runtime,
    ch: &Channel,
    key: &str,
) -> Result<RateLimitResponse, tonic::Status> {
    rls(
        rt,
        ch,
        rls_request(vec![descriptor(&[("api_key", key)])], 0),
    )
}

fn rls_headers(r: &RateLimitResponse) -> HashMap<String, String> {
    r.response_headers_to_add
        .iter()
        .map(|h| (h.key.clone(), h.value.clone()))
        .collect()
}

/// An ext_authz request with these HTTP headers and Envoy request id `rid`.
fn authz_request(headers: &[(&str, &str)], rid: &str) -> CheckRequest {
    CheckRequest {
        attributes: Some(AttributeContext {
            request: Some(AttrRequest {
                http: Some(HttpRequest {
                    id: rid.into(),
                    method: "GET".into(),
                    path: "/v1/reports".into(),
                    headers: headers
                        .iter()
                        .map(|(k, v)| (k.to_string(), v.to_string()))
                        .collect(),
                    ..Default::default()
                }),
                ..Default::default()
            }),
            ..Default::default()
        }),
    }
}

fn authz(
    rt: &tokio::runtime::Runtime,
    ch: &Channel,
    req: CheckRequest,
) -> Result<CheckResponse, tonic::Status> {
    let mut c = AuthorizationClient::new(ch.clone());
    rt.block_on(c.check(req)).map(|r| r.into_inner())
}

fn option_headers(
    h: &[envoy_types::pb::envoy::config::core::v3::HeaderValueOption],
) -> HashMap<String, String> {
    h.iter()
        .filter_map(|o| o.header.as_ref())
        .map(|h| (h.key.clone(), h.value.clone()))
        .collect()
}

fn tier(c: &Client, name: &str, per_minute: u64, quota: Option<u64>, scopes: &[&str]) {
    let mut body = json!({"limits": [{"requests": per_minute, "periodSeconds": 60}]});
    if let Some(q) = quota {
        body["monthlyQuota"] = json!(q);
    }
    if !scopes.is_empty() {
        body["scopes"] = json!(scopes);
    }
    let r = c.admin(Method::PUT, &format!("/tiers/{name}"), Some(body));
    assert_eq!(r.status, 200, "{}", r.text);
}

fn start() -> (Daemon, tempfile::TempDir) {
    let dir = tempfile::tempdir().unwrap();
    let d = Daemon::start(&dir.path().join("d"), &[]);
    (d, dir)
}

#[test]
fn the_rate_limit_service_checks_keyed_descriptors_and_reports_the_tightest_window() {
    let (d, _dir) = start();
    let c = d.client();
    tier(&c, "small", 5, Some(1_000), &[]);
    let (id, key) = c.create_key(json!({"consumer": "acme", "tier": "small"}));
    let rt = common::runtime();
    let ch = channel(&rt, d.grpc.unwrap());

    // A keyed descriptor is a check; one without the key entry is OK with no limit.
    let r = rls(
        &rt,
        &ch,
        rls_request(
            vec![
                descriptor(&[("api_key", &key)]),
                descriptor(&[("remote_address", "10.0.0.1")]),
            ],
            0,
        ),
    )
    .unwrap();
    assert_eq!(r.overall_code, Code::Ok as i32);
    let s = &r.statuses[0];
    assert_eq!(s.code, Code::Ok as i32);
    let limit = s.current_limit.as_ref().unwrap();
    assert_eq!(
        (limit.requests_per_unit, limit.unit, limit.name.as_str()),
        (5, Unit::Minute as i32, "minute")
    );
    assert_eq!(s.limit_remaining, 4);
    let reset = s.duration_until_reset.as_ref().unwrap().seconds;
    assert!((1..=60).contains(&reset), "{reset}");
    assert_eq!(r.statuses[1].code, Code::Ok as i32);
    assert!(r.statuses[1].current_limit.is_none());
    let h = rls_headers(&r);
    assert_eq!(h["x-ratelimit-limit"], "5");
    assert_eq!(h["x-ratelimit-remaining"], "4");
    assert!(
        h["ratelimit-policy"].contains("\"minute\";q=5;w=60"),
        "{h:?}"
    );
    assert!(h["ratelimit"].starts_with("\"minute\";r=4;"), "{h:?}");
    assert!(!h.contains_key("retry-after"));

    // hits_addend is the cost (0 is 1); a descriptor's own hits_addend overrides the request's.
    let r = rls(
        &rt,
        &ch,
        rls_request(vec![descriptor(&[("api_key", &key)])], 2),
    )
    .unwrap();
    assert_eq!(r.statuses[0].limit_remaining, 2);
    let mut one = descriptor(&[("api_key", &key)]);
    one.hits_addend = Some(UInt64Value { value: 1 });
    let r = rls(&rt, &ch, rls_request(vec![one], 2)).unwrap();
    assert_eq!(r.statuses[0].limit_remaining, 1);
    // All or nothing: a cost of 2 with 1 left is over the limit and takes nothing.
    let r = rls(
        &rt,
        &ch,
        rls_request(vec![descriptor(&[("api_key", &key)])], 2),
    )
    .unwrap();
    assert_eq!(r.overall_code, Code::OverLimit as i32);
    assert_eq!(r.statuses[0].code, Code::OverLimit as i32);
    assert_eq!(r.statuses[0].limit_remaining, 0);
    let h = rls_headers(&r);
    assert!(h["retry-after"].parse::<u64>().unwrap() >= 1, "{h:?}");
    assert_eq!(h["x-quota-error"], "rate_limited");
    assert_eq!(
        rls_key(&rt, &ch, &key).unwrap().overall_code,
        Code::Ok as i32
    );
    assert_eq!(c.monthly_used(&id), 5);
    assert_eq!(
        rls_key(&rt, &ch, &key).unwrap().overall_code,
        Code::OverLimit as i32
    );
}

#[test]
fn the_rate_limit_service_denies_unknown_keys_and_missing_scopes() {
    let (d, _dir) = start();
    let c = d.client();
    tier(&c, "basic", 100, None, &["insights:read", "brands:read"]);
    let (_, scoped) =
        c.create_key(json!({"consumer": "c", "tier": "basic", "scopes": ["brands:read"]}));
    let (_, open) = c.create_key(json!({"consumer": "c", "tier": "basic"}));
    let rt = common::runtime();
    let ch = channel(&rt, d.grpc.unwrap());
    let cases = [
        (
            "qd_unknownunknownunknownunknownunknownunknow",
            None,
            "unauthorized",
        ),
        ("not a key", None, "unauthorized"),
        (scoped.as_str(), Some("insights:read"), "forbidden"),
        (open.as_str(), Some("governance:write"), "plan_required"),
    ];
    for (key, scope, code) in cases {
        let mut entries = vec![("api_key", key)];
        if let Some(s) = scope {
            entries.push(("scope", s));
        }
        let r = rls(&rt, &ch, rls_request(vec![descriptor(&entries)], 0)).unwrap();
        assert_eq!(r.overall_code, Code::OverLimit as i32, "{code}");
        assert_eq!(r.statuses[0].code, Code::OverLimit as i32, "{code}");
        assert_eq!(r.statuses[0].limit_remaining, 0, "{code}");
        assert_eq!(rls_headers(&r)["x-quota-error"], code);
    }
    let r = rls(
        &rt,
        &ch,
        rls_request(
            vec![descriptor(&[
                ("api_key", &scoped),
                ("scope", "brands:read"),
            ])],
            0,
        ),
    )
    .unwrap();
    assert_eq!(r.overall_code, Code::Ok as i32);
}

#[test]
fn malformed_requests_are_invalid_argument_and_count_nothing() {
    let (d, _dir) = start();
    let c = d.client();
    tier(&c, "small", 50, None, &[]);
    let (id, key) = c.create_key(json!({"consumer": "acme", "tier": "small"}));
    let rt = common::runtime();
    let ch = channel(&rt, d.grpc.unwrap());
    let long = "k".repeat(257);
    let mut no_domain = rls_request(vec![descriptor(&[("api_key", &key)])], 0);
    no_domain.domain.clear();
    let cases = vec![
        (no_domain, "domain"),
        (rls_request(vec![], 0), "descriptors"),
        (
            rls_request(vec![descriptor(&[("api_key", &key)])], 1_000_001),
            "maximum cost",
        ),
        (
            rls_request(
                vec![
                    descriptor(&[("api_key", &key)]),
                    descriptor(&[("api_key", &long)]),
                ],
                0,
            ),
            "longer than 256",
        ),
        (
            rls_request(
                vec![descriptor(&[("api_key", &key), ("scope", "bad scope!")])],
                0,
            ),
            "scope",
        ),
    ];
    for (req, says) in cases {
        let e = rls(&rt, &ch, req).unwrap_err();
        assert_eq!(e.code(), tonic::Code::InvalidArgument, "{e:?}");
        assert!(e.message().contains(says), "{e:?}");
    }
    for (headers, says) in [
        (
            vec![("x-api-key", key.as_str()), ("x-quota-cost", "0")],
            "x-quota-cost",
        ),
        (vec![("x-api-key", long.as_str())], "longer than 256"),
        (
            vec![("x-api-key", key.as_str()), ("x-quota-scope", "a b")],
            "scope",
        ),
    ] {
        let e = authz(&rt, &ch, authz_request(&headers, "r1")).unwrap_err();
        assert_eq!(e.code(), tonic::Code::InvalidArgument, "{e:?}");
        assert!(e.message().contains(says), "{e:?}");
    }
    assert_eq!(c.monthly_used(&id), 0, "nothing was counted");
    let m = c.get("/metrics").text;
    assert!(
        m.contains("quotad_bad_requests_total{transport=\"grpc\"} 8"),
        "{m}"
    );
}

#[test]
fn external_authorization_answers_like_the_http_check() {
    let dir = tempfile::tempdir().unwrap();
    let d = Daemon::start(&dir.path().join("d"), &["--key-header", "X-Agent-Key"]);
    let c = d.client();
    tier(&c, "small", 3, None, &["reports:read"]);
    let (id, key) =
        c.create_key(json!({"consumer": "acme", "tier": "small", "scopes": ["reports:read"]}));
    let rt = common::runtime();
    let ch = channel(&rt, d.grpc.unwrap());

    let r = authz(&rt, &ch, authz_request(&[("x-api-key", &key)], "envoy-1")).unwrap();
    assert_eq!(r.status.unwrap().code, 0);
    let Some(HttpResponse::OkResponse(ok)) = r.http_response else {
        panic!("not an ok response")
    };
    let up = option_headers(&ok.headers);
    assert_eq!(up["x-quota-key-id"], id);
    assert_eq!(up["x-quota-consumer"], "acme");
    let back = option_headers(&ok.response_headers_to_add);
    assert_eq!(back["x-ratelimit-limit"], "3");
    assert_eq!(back["x-ratelimit-remaining"], "2");
    assert_eq!(back["x-request-id"], "envoy-1");
    assert!(back.contains_key("ratelimit-policy") && back.contains_key("ratelimit"));

    // Bearer, and the configured key header, carry the key too.
    let bearer = format!("Bearer {key}");
    let r = authz(&rt, &ch, authz_request(&[("authorization", &bearer)], "")).unwrap();
    assert_eq!(r.status.unwrap().code, 0);
    let r = authz(
        &rt,
        &ch,
        authz_request(
            &[("x-agent-key", &key), ("x-quota-scope", "reports:read")],
            "",
        ),
    )
    .unwrap();
    assert_eq!(r.status.unwrap().code, 0);

    // Denials: the gRPC code, the HTTP status, the headers and the JSON envelope.
    let denied = |r: CheckResponse| {
        let code = r.status.unwrap().code;
        let Some(HttpResponse::DeniedResponse(d)) = r.http_response else {
            panic!("not a denied response")
        };
        let body: serde_json::Value = serde_json::from_str(&d.body).unwrap();
        (
            code,
            d.status.unwrap().code,
            option_headers(&d.headers),
            body,
        )
    };
    let (code, status, h, body) = denied(
        authz(
            &rt,
            &ch,
            authz_request(&[("x-api-key", "qd_nope")], "envoy-2"),
        )
        .unwrap(),
    );
    assert_eq!((code, status), (tonic::Code::Unauthenticated as i32, 401));
    assert_eq!(h["www-authenticate"], "Bearer realm=\"quotad\"");
    assert_eq!(h["content-type"], "application/json");
    assert_eq!(body["error"]["code"], "unauthorized");
    assert_eq!(body["error"]["requestId"], "envoy-2");
    let (code, status, _, body) = denied(
        authz(
            &rt,
            &ch,
            authz_request(&[("x-api-key", &key), ("x-quota-scope", "admin:write")], ""),
        )
        .unwrap(),
    );
    assert_eq!((code, status), (tonic::Code::PermissionDenied as i32, 403));
    assert_eq!(body["error"]["code"], "forbidden");
    assert!(body["error"]["requestId"]
        .as_str()
        .unwrap()
        .starts_with("qd-"));
    // The limit (3) is spent: 429 with Retry-After.
    let (code, status, h, body) =
        denied(authz(&rt, &ch, authz_request(&[("x-api-key", &key)], "")).unwrap());
    assert_eq!((code, status), (tonic::Code::ResourceExhausted as i32, 429));
    assert!(h["retry-after"].parse::<u64>().unwrap() >= 1);
    assert_eq!(h["x-ratelimit-remaining"], "0");
    assert_eq!(body["error"]["code"], "rate_limited");
    assert_eq!(
        body["error"]["message"],
        "Rate limit exceeded: 3 per minute"
    );
}

#[test]
fn one_key_is_one_counter_over_grpc_http_and_the_binary_protocol() {
    let (d, _dir) = start();
    let c = d.client();
    tier(&c, "six", 6, None, &[]);
    let (_, key) = c.create_key(json!({"consumer": "acme", "tier": "six"}));
    let rt = common::runtime();
    let ch = channel(&rt, d.grpc.unwrap());
    let bin = rt.block_on(BinClient::connect_tcp(d.binary)).unwrap();
    let binary = || {
        let check = Check {
            key: &key,
            scope: None,
            cost: 1,
        };
        rt.block_on(bin.check(check)).unwrap().decision == 0
    };
    let grpc = || rls_key(&rt, &ch, &key).unwrap().overall_code == Code::Ok as i32;
    let http = || c.check(Some(&key), &[]).status == 200;
    let admitted = [grpc(), http(), binary(), grpc(), http(), binary()];
    assert!(admitted.iter().all(|a| *a), "{admitted:?}");
    assert!(
        !grpc() && !http() && !binary(),
        "six spent across the three"
    );
    let m = c.get("/metrics").text;
    assert!(
        common::metric_sum(
            &m,
            "quotad_checks_total",
            &[("transport", "grpc"), ("decision", "allowed")]
        ) == 2,
        "{m}"
    );
}

#[test]
fn two_hundred_concurrent_calls_on_a_limit_of_fifty_admit_fifty() {
    let (d, _dir) = start();
    let c = d.client();
    tier(&c, "fifty", 50, None, &[]);
    let (_, key) = c.create_key(json!({"consumer": "acme", "tier": "fifty"}));
    let rt = common::runtime();
    let channels: Vec<Channel> = (0..4).map(|_| channel(&rt, d.grpc.unwrap())).collect();
    let admitted = rt.block_on(async {
        let calls = (0..200).map(|i| {
            let mut rls = RateLimitServiceClient::new(channels[i % 4].clone());
            let mut ext = AuthorizationClient::new(channels[i % 4].clone());
            let key = key.clone();
            tokio::spawn(async move {
                if i % 2 == 0 {
                    let r = rls
                        .should_rate_limit(rls_request(vec![descriptor(&[("api_key", &key)])], 0))
                        .await
                        .unwrap();
                    r.into_inner().overall_code == Code::Ok as i32
                } else {
                    let r = ext
                        .check(authz_request(&[("x-api-key", &key)], ""))
                        .await
                        .unwrap();
                    r.into_inner().status.unwrap().code == 0
                }
            })
        });
        let done = futures_util::future::join_all(calls).await;
        done.into_iter().filter(|r| *r.as_ref().unwrap()).count()
    });
    assert_eq!(admitted, 50);
}

#[test]
fn health_serves_and_a_drain_answers_calls_in_flight() {
    let (d, _dir) = start();
    let rt = common::runtime();
    let ch = channel(&rt, d.grpc.unwrap());
    let mut h = HealthClient::new(ch.clone());
    for service in [
        "",
        "envoy.service.ratelimit.v3.RateLimitService",
        "envoy.service.auth.v3.Authorization",
    ] {
        let r = rt
            .block_on(h.check(HealthCheckRequest {
                service: service.into(),
            }))
            .unwrap();
        assert_eq!(
            r.into_inner().status,
            ServingStatus::Serving as i32,
            "{service}"
        );
    }
    let e = rt
        .block_on(h.check(HealthCheckRequest {
            service: "nope".into(),
        }))
        .unwrap_err();
    assert_eq!(e.code(), tonic::Code::NotFound);
    // SIGTERM: the port stops taking connections, and the daemon exits 0.
    let grpc = d.grpc.unwrap();
    assert_eq!(d.stop(), 0);
    assert!(std::net::TcpStream::connect(grpc).is_err());
}

#[test]
fn on_redis_health_follows_the_store_and_a_drain_answers_the_call_in_flight() {
    let redis = common::redis::RedisServer::start();
    let dir = tempfile::tempdir().unwrap();
    let d = Daemon::start(
        &dir.path().join("d"),
        &[
            "--store",
            &redis.url(),
            "--redis-poll-ms",
            "100",
            "--redis-timeout-ms",
            "1500",
        ],
    );
    let c = d.client();
    tier(&c, "small", 50, None, &[]);
    let (_, key) = c.create_key(json!({"consumer": "acme", "tier": "small"}));
    let rt = common::runtime();
    let ch = channel(&rt, d.grpc.unwrap());
    assert_eq!(
        rls_key(&rt, &ch, &key).unwrap().overall_code,
        Code::Ok as i32
    );
    let serving = |ch: &Channel| {
        let mut h = HealthClient::new(ch.clone());
        rt.block_on(h.check(HealthCheckRequest::default()))
            .unwrap()
            .into_inner()
            .status
    };
    assert_eq!(serving(&ch), ServingStatus::Serving as i32);

    // Redis stops answering: health turns NOT_SERVING once the node sees it gone.
    redis.pause();
    let deadline = Instant::now() + Duration::from_secs(10);
    while serving(&ch) != ServingStatus::NotServing as i32 {
        assert!(
            Instant::now() < deadline,
            "health still SERVING with Redis paused"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    // A call waits for Redis (up to its 1.5 s timeout); SIGTERM meanwhile still gets the call
    // its answer (UNAVAILABLE: fail-closed) before the daemon exits.
    let call = {
        let addr = d.grpc.unwrap();
        let key = key.clone();
        std::thread::spawn(move || {
            let rt = common::runtime();
            let ch = channel(&rt, addr);
            rls_key(&rt, &ch, &key)
        })
    };
    std::thread::sleep(Duration::from_millis(300));
    d.signal(libc::SIGTERM);
    let answer = call.join().unwrap();
    let e = answer.unwrap_err();
    assert_eq!(e.code(), tonic::Code::Unavailable, "{e:?}");
    assert_eq!(e.message(), "rate-limit store unavailable");
    redis.resume();
    assert_eq!(d.stop(), 0);
}

#[test]
fn the_load_generator_drives_both_grpc_apis() {
    let (d, _dir) = start();
    let c = d.client();
    for target in ["grpc", "grpc-authz"] {
        let out = std::process::Command::new(common::bin())
            .args(["--token", &d.token, "bench", "--target", target, "--json"])
            .args(["--grpc-addr", &d.grpc.unwrap().to_string()])
            .args(["--http-url", &format!("http://{}", d.http)])
            .args([
                "--keys",
                "20",
                "--requests",
                "300",
                "--connections",
                "2",
                "--depth",
                "4",
            ])
            .output()
            .unwrap();
        common::record_output(&out);
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
        assert_eq!(v["config"]["target"], target);
        assert_eq!(v["decisions"]["allowed"], 300, "{v}");
    }
    let m = c.get("/metrics").text;
    assert!(
        common::metric_sum(
            &m,
            "quotad_checks_total",
            &[("transport", "grpc"), ("decision", "allowed")]
        ) == 600,
        "{m}"
    );
    // The load generator runs gRPC closed-loop only, and says so.
    let out = std::process::Command::new(common::bin())
        .args([
            "--token", &d.token, "bench", "--target", "grpc", "--rate", "100",
        ])
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("closed-loop"));
}

#[test]
fn the_envoy_configurations_name_what_quotad_serves() {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR"));
    let rl = std::fs::read_to_string(root.join("docs/envoy/ratelimit.yaml")).unwrap();
    let ea = std::fs::read_to_string(root.join("docs/envoy/ext_authz.yaml")).unwrap();
    // quotad's defaults: the gRPC port and the descriptor entries it reads.
    for y in [&rl, &ea] {
        assert!(y.contains("port_value: 8688"));
        assert!(y.contains("http2_protocol_options: {}"));
        assert!(y.contains("transport_api_version: V3"));
    }
    assert!(rl.contains("envoy.filters.http.ratelimit"));
    assert!(rl.contains("descriptor_key: api_key"));
    assert!(rl.contains("descriptor_key: scope"));
    assert!(rl.contains("service_name: envoy.service.ratelimit.v3.RateLimitService"));
    assert!(ea.contains("envoy.filters.http.ext_authz"));
    assert!(ea.contains("service_name: envoy.service.auth.v3.Authorization"));
    for h in [
        "x-api-key",
        "authorization",
        "x-quota-scope",
        "x-quota-cost",
    ] {
        assert!(ea.contains(&format!("exact: {h}")), "{h}");
    }
    assert!(ea.contains("allowed_upstream_headers") && ea.contains("allowed_client_headers"));
}

#[test]
fn an_oversized_call_is_refused_and_the_port_serves_on() {
    let (d, _dir) = start();
    let c = d.client();
    tier(&c, "small", 50, None, &[]);
    let (_, key) = c.create_key(json!({"consumer": "acme", "tier": "small"}));
    let rt = common::runtime();
    let ch = channel(&rt, d.grpc.unwrap());
    // 2 MiB of descriptors: over the 1 MiB message limit.
    let big = "v".repeat(2048);
    let many: Vec<RateLimitDescriptor> = (0..1024).map(|_| descriptor(&[("x", &big)])).collect();
    let e = rls(&rt, &ch, rls_request(many, 0)).unwrap_err();
    assert_eq!(e.code(), tonic::Code::OutOfRange, "{e:?}");
    assert!(e.message().contains("1048576"), "{e:?}");
    assert_eq!(
        rls_key(&rt, &ch, &key).unwrap().overall_code,
        Code::Ok as i32
    );
    // Off: no gRPC port at all.
    let dir = tempfile::tempdir().unwrap();
    let off = Daemon::start(&dir.path().join("d"), &["--grpc", "off"]);
    assert!(off.grpc.is_none());
}

#[test]
fn a_health_watch_sees_not_serving_when_the_drain_begins() {
    let dir = tempfile::tempdir().unwrap();
    let d = Daemon::start(&dir.path().join("d"), &["--drain-secs", "2"]);
    let rt = common::runtime();
    let ch = channel(&rt, d.grpc.unwrap());
    let mut h = HealthClient::new(ch);
    let mut watch = rt
        .block_on(h.watch(HealthCheckRequest {
            service: "envoy.service.ratelimit.v3.RateLimitService".into(),
        }))
        .unwrap()
        .into_inner();
    let first = rt.block_on(watch.message()).unwrap().unwrap();
    assert_eq!(first.status, ServingStatus::Serving as i32);
    d.signal(libc::SIGTERM);
    let next = rt
        .block_on(async { tokio::time::timeout(Duration::from_secs(5), watch.message()).await })
        .expect("a status change within 5 s")
        .expect("the watch stream")
        .expect("a message");
    assert_eq!(next.status, ServingStatus::NotServing as i32);
    // The open watch does not hold the shutdown past the drain period.
    let started = Instant::now();
    assert_eq!(d.stop(), 0);
    assert!(
        started.elapsed() < Duration::from_secs(6),
        "{:?}",
        started.elapsed()
    );
}

#[test]
fn connections_beyond_the_limit_are_closed_and_counted() {
    let dir = tempfile::tempdir().unwrap();
    let d = Daemon::start(&dir.path().join("d"), &["--max-grpc-connections", "2"]);
    let c = d.client();
    tier(&c, "small", 50, None, &[]);
    let (_, key) = c.create_key(json!({"consumer": "acme", "tier": "small"}));
    let rt = common::runtime();
    let addr = d.grpc.unwrap();
    let a = channel(&rt, addr);
    let b = channel(&rt, addr);
    for ch in [&a, &b] {
        assert_eq!(
            rls_key(&rt, ch, &key).unwrap().overall_code,
            Code::Ok as i32
        );
    }
    let m = c.get("/metrics").text;
    assert!(
        m.contains("quotad_open_connections{transport=\"grpc\"} 2"),
        "{m}"
    );
    // A third: accepted by the kernel, then closed by quotad without an answer.
    let third = rt.block_on(async {
        let ch = Channel::from_shared(format!("http://{addr}"))
            .unwrap()
            .connect_lazy();
        let mut c = RateLimitServiceClient::new(ch);
        c.should_rate_limit(rls_request(vec![descriptor(&[("api_key", &key)])], 0))
            .await
    });
    assert!(third.is_err(), "{third:?}");
    let m = c.get("/metrics").text;
    assert!(
        m.contains("quotad_rejected_connections_total{transport=\"grpc\"} 1"),
        "{m}"
    );
    // One closes: a new connection is admitted.
    drop(a);
    let deadline = Instant::now() + Duration::from_secs(5);
    while !c
        .get("/metrics")
        .text
        .contains("quotad_open_connections{transport=\"grpc\"} 1")
    {
        assert!(
            Instant::now() < deadline,
            "the closed connection is still counted"
        );
        // The runtime runs the channel's connection task, which closes it.
        rt.block_on(async { tokio::time::sleep(Duration::from_millis(20)).await });
    }
    let fresh = channel(&rt, addr);
    assert_eq!(
        rls_key(&rt, &fresh, &key).unwrap().overall_code,
        Code::Ok as i32
    );
}
