//! `envoy.service.ratelimit.v3.RateLimitService/ShouldRateLimit`: each descriptor carrying the
//! API key entry is one check; the others are OK with no limit.

use std::sync::Arc;

use envoy_types::pb::envoy::extensions::common::ratelimit::v3::RateLimitDescriptor;
use envoy_types::pb::envoy::service::ratelimit::v3::rate_limit_response::{
    rate_limit::Unit, Code, DescriptorStatus, RateLimit,
};
use envoy_types::pb::envoy::service::ratelimit::v3::rate_limit_service_server::RateLimitService;
use envoy_types::pb::envoy::service::ratelimit::v3::{RateLimitRequest, RateLimitResponse};
use envoy_types::pb::google::protobuf::Duration as PbDuration;
use tonic::{Request, Response, Status};

use super::{header, invalid, is_unavailable, rate_limit_headers, record, unavailable};
use crate::engine::decision::{Decision, LimitKind, LimitStatus};
use crate::engine::MAX_COST;
use crate::metrics::Stopwatch;
use crate::protocol::frame::{MAX_BATCH, MAX_KEY};
use crate::server::{render, AppState};
use crate::store::{CheckRequest, Store};

/// The rate limit service on a store.
pub(super) struct Rls<S> {
    pub(super) state: Arc<AppState<S>>,
}

/// The descriptor entry naming the scope a route needs.
const SCOPE_ENTRY: &str = "scope";

/// What one descriptor asks: a check of `key` (with `scope`, at `cost`), or nothing.
struct Asked<'a> {
    key: &'a str,
    scope: Option<&'a str>,
    cost: u64,
}

/// Reads descriptor `i`; `Err` is the INVALID_ARGUMENT message.
fn asked<'a>(
    i: usize,
    d: &'a RateLimitDescriptor,
    key_entry: &str,
    hits: u32,
) -> Result<Option<Asked<'a>>, String> {
    let entry = |name: &str| d.entries.iter().find(|e| e.key == name);
    let Some(key) = entry(key_entry) else {
        return Ok(None);
    };
    if key.value.len() > MAX_KEY {
        return Err(format!(
            "descriptors[{i}]: entry {key_entry} is longer than {MAX_KEY} bytes"
        ));
    }
    // A scope entry must hold a scope (an empty value is not one).
    let scope = match entry(SCOPE_ENTRY) {
        Some(s) if !crate::tiers::valid_scope(&s.value) => {
            return Err(format!(
                "descriptors[{i}]: entry scope is not a valid scope: {:?}",
                s.value
            ))
        }
        s => s.map(|s| s.value.as_str()),
    };
    // The descriptor's own hits_addend overrides the request's; 0 is 1.
    let cost = d.hits_addend.map_or(u64::from(hits), |h| h.value).max(1);
    if cost > MAX_COST {
        return Err(format!(
            "descriptors[{i}]: hits_addend {cost} is more than the maximum cost {MAX_COST}"
        ));
    }
    Ok(Some(Asked {
        key: &key.value,
        scope,
        cost,
    }))
}

/// A limit as Envoy states one: requests per unit, in the largest of Envoy's units that divides
/// the window (90 per 120 s: 45 per MINUTE; at least 1), the monthly quota per MONTH; its `name`
/// is the policy name of the `RateLimit-Policy` header (`minute`, `120s`, `month`), which is exact.
fn envoy_limit(l: &LimitStatus) -> RateLimit {
    let mut name = String::new();
    crate::server::render::push_policy_name(&mut name, l);
    let (requests, unit) = match l.kind {
        LimitKind::Monthly => (l.limit, Unit::Month),
        LimitKind::Window { period_secs } => {
            const UNITS: [(u64, Unit); 5] = [
                (604_800, Unit::Week),
                (86_400, Unit::Day),
                (3_600, Unit::Hour),
                (60, Unit::Minute),
                (1, Unit::Second),
            ];
            let (secs, unit) = UNITS
                .into_iter()
                .find(|(s, _)| period_secs % s == 0)
                .unwrap_or((1, Unit::Second));
            let units = (period_secs / secs).max(1);
            ((l.limit / units).max(1), unit)
        }
    };
    RateLimit {
        name,
        requests_per_unit: u32::try_from(requests).unwrap_or(u32::MAX),
        unit: unit as i32,
    }
}

/// The status of a checked descriptor: the primary limit's figures.
fn status(d: &Decision) -> DescriptorStatus {
    let code = if d.verdict.is_allowed() {
        Code::Ok
    } else {
        Code::OverLimit
    };
    let primary = d.primary();
    DescriptorStatus {
        code: code as i32,
        current_limit: primary.map(envoy_limit),
        limit_remaining: primary
            .filter(|_| d.verdict.is_allowed())
            .map_or(0, |p| u32::try_from(p.remaining).unwrap_or(u32::MAX)),
        duration_until_reset: primary.map(|p| PbDuration {
            seconds: i64::try_from(p.reset.saturating_sub(d.now_s)).unwrap_or(i64::MAX),
            nanos: 0,
        }),
        quota: None,
    }
}

#[tonic::async_trait]
impl<S: Store> RateLimitService for Rls<S> {
    async fn should_rate_limit(
        &self,
        request: Request<RateLimitRequest>,
    ) -> Result<Response<RateLimitResponse>, Status> {
        let state = &self.state;
        let req = request.into_inner();
        if req.domain.is_empty() {
            return Err(invalid(state, "domain is empty".into()));
        }
        if req.descriptors.is_empty() {
            return Err(invalid(state, "no descriptors".into()));
        }
        if req.descriptors.len() > MAX_BATCH {
            return Err(invalid(state, format!("more than {MAX_BATCH} descriptors")));
        }
        // Every descriptor is read before any is counted: a bad one counts nothing.
        let key_entry = state.grpc.key_entry.as_str();
        let mut asks = Vec::with_capacity(req.descriptors.len());
        for (i, d) in req.descriptors.iter().enumerate() {
            asks.push(asked(i, d, key_entry, req.hits_addend).map_err(|m| invalid(state, m))?);
        }
        let checks: Vec<CheckRequest<'_>> = asks
            .iter()
            .flatten()
            .map(|a| CheckRequest {
                key: Some(a.key),
                scope: a.scope,
                cost: a.cost,
            })
            .collect();
        let start = Stopwatch::start();
        let mut decided: Vec<Decision> = Vec::with_capacity(checks.len());
        state
            .store
            .check_batch(&checks, &mut |_, d| decided.push(*d))
            .await;
        let elapsed = start.elapsed_ns();
        for d in &decided {
            record(state, d, elapsed);
        }
        if decided.iter().any(is_unavailable) {
            return Err(unavailable());
        }
        let mut each = decided.iter();
        let statuses: Vec<DescriptorStatus> = asks
            .iter()
            .map(|a| match a.as_ref().and_then(|_| each.next()) {
                Some(d) => status(d),
                None => DescriptorStatus {
                    code: Code::Ok as i32,
                    ..Default::default()
                },
            })
            .collect();
        // The headers are those of the first denied descriptor, else of the one with the fewest
        // requests left: the answer the client most needs to see.
        let shown = decided
            .iter()
            .find(|d| !d.verdict.is_allowed())
            .or_else(|| {
                decided
                    .iter()
                    .min_by_key(|d| d.primary().map_or(u64::MAX, |p| p.remaining))
            });
        let mut headers = Vec::new();
        if let Some(d) = shown {
            headers = rate_limit_headers(d);
            if !d.verdict.is_allowed() {
                headers.push(header("x-quota-error", render::code(d)));
            }
        }
        let over = decided.iter().any(|d| !d.verdict.is_allowed());
        Ok(Response::new(RateLimitResponse {
            overall_code: if over { Code::OverLimit } else { Code::Ok } as i32,
            statuses,
            response_headers_to_add: headers.into_iter().filter_map(|h| h.header).collect(),
            ..Default::default()
        }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn window(limit: u64, period_secs: u64) -> LimitStatus {
        LimitStatus {
            kind: LimitKind::Window { period_secs },
            limit,
            remaining: 0,
            reset: 0,
        }
    }

    #[test]
    fn windows_are_stated_in_the_largest_unit_that_divides_them() {
        let l = envoy_limit(&window(60, 60));
        assert_eq!(
            (l.requests_per_unit, l.unit, l.name.as_str()),
            (60, Unit::Minute as i32, "minute")
        );
        let l = envoy_limit(&window(90, 120));
        assert_eq!(
            (l.requests_per_unit, l.unit, l.name.as_str()),
            (45, Unit::Minute as i32, "120s")
        );
        let l = envoy_limit(&window(5, 90));
        assert_eq!((l.requests_per_unit, l.unit), (1, Unit::Second as i32));
        let l = envoy_limit(&window(1_000, 7_200));
        assert_eq!((l.requests_per_unit, l.unit), (500, Unit::Hour as i32));
        let l = envoy_limit(&window(7_000, 604_800));
        assert_eq!((l.requests_per_unit, l.unit), (7_000, Unit::Week as i32));
        let month = LimitStatus {
            kind: LimitKind::Monthly,
            limit: 10_000,
            remaining: 0,
            reset: 0,
        };
        let l = envoy_limit(&month);
        assert_eq!(
            (l.requests_per_unit, l.unit, l.name.as_str()),
            (10_000, Unit::Month as i32, "month")
        );
    }
}
