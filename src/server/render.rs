//! Rendering a [`Decision`] for HTTP: status, the error envelope, and the rate-limit headers
//! (`X-RateLimit-*`, `Retry-After`, and the IETF `RateLimit` / `RateLimit-Policy` fields in the
//! structured-field syntax of draft-ietf-httpapi-ratelimit-headers-09).
//!
//! ```text
//! RateLimit-Policy: "minute";q=60;w=60, "hour";q=1000;w=3600, "month";q=10000;w=2592000
//! RateLimit: "minute";r=59;t=1, "hour";r=999;t=4, "month";r=9999;t=1812345
//! ```

use crate::engine::catalog_doc::RetiredPrefix;
use crate::engine::decision::{AuthFailure, Decision, LimitKind, LimitStatus, Verdict};

/// Writes the policy name of a limit: `minute`, `hour`, `day`, `<n>s`, or `month`.
pub(super) fn push_policy_name(s: &mut String, l: &LimitStatus) {
    match l.kind {
        LimitKind::Monthly => s.push_str("month"),
        LimitKind::Window { period_secs } => match period_secs {
            1 => s.push_str("second"),
            60 => s.push_str("minute"),
            3600 => s.push_str("hour"),
            86_400 => s.push_str("day"),
            p => {
                s.push_str(itoa::Buffer::new().format(p));
                s.push('s');
            }
        },
    }
}

/// One structured-field item per limit, `"name";a=x;b=y`, comma-separated. Written by hand with
/// `itoa`: this runs on every HTTP check.
fn items(s: &mut String, d: &Decision, a: &str, b: &str, f: impl Fn(&LimitStatus) -> (u64, u64)) {
    let mut num = itoa::Buffer::new();
    for (i, l) in d.limits().iter().enumerate() {
        if i > 0 {
            s.push_str(", ");
        }
        s.push('"');
        push_policy_name(s, l);
        s.push_str("\";");
        let (x, y) = f(l);
        s.push_str(a);
        s.push('=');
        s.push_str(num.format(x));
        s.push(';');
        s.push_str(b);
        s.push('=');
        s.push_str(num.format(y));
    }
}

/// Appends `RateLimit-Policy` to `s`: every limit with its quota `q` and window `w` (seconds).
pub fn push_ratelimit_policy(s: &mut String, d: &Decision) {
    // The month's length is the same for every item: work it out once.
    let month = d
        .limits()
        .iter()
        .find(|l| l.kind == LimitKind::Monthly)
        .map(|l| l.window_secs(d.now_s))
        .unwrap_or(0);
    items(s, d, "q", "w", |l| {
        let w = match l.kind {
            LimitKind::Window { period_secs } => period_secs,
            LimitKind::Monthly => month,
        };
        (l.limit, w)
    })
}

/// Appends `RateLimit` to `s`: every limit with remaining `r` and seconds to reset `t`.
pub fn push_ratelimit(s: &mut String, d: &Decision) {
    items(s, d, "r", "t", |l| {
        (l.remaining, l.reset.saturating_sub(d.now_s))
    })
}

/// A decision's rate-limit headers, named in lower case: `x-ratelimit-limit`,
/// `x-ratelimit-remaining` and `x-ratelimit-reset` (the primary limit: the one that denied, else
/// the one with the fewest requests left), `ratelimit-policy`, `ratelimit`, `retry-after`
/// when the answer has one, and `x-quota-shadow` (the would-be verdict) on a shadow denial. The HTTP check writes the same values into its answer's buffer
/// (check.rs) with these functions.
pub fn rate_limit_headers(d: &Decision) -> Vec<(&'static str, String)> {
    let mut out = Vec::with_capacity(6);
    if let Some(p) = d.primary() {
        let mut num = itoa::Buffer::new();
        out.push(("x-ratelimit-limit", num.format(p.limit).to_string()));
        out.push(("x-ratelimit-remaining", num.format(p.remaining).to_string()));
        out.push(("x-ratelimit-reset", num.format(p.reset).to_string()));
        let mut policy = String::new();
        push_ratelimit_policy(&mut policy, d);
        out.push(("ratelimit-policy", policy));
        let mut rl = String::new();
        push_ratelimit(&mut rl, d);
        out.push(("ratelimit", rl));
    }
    if let Some(ra) = d.retry_after {
        out.push(("retry-after", ra.max(1).to_string()));
    }
    if let Some(v) = d.shadow {
        out.push(("x-quota-shadow", v.code().to_string()));
    }
    if let (true, Some(s)) = (d.verdict.is_allowed(), d.sunset) {
        out.push(("sunset", http_date(s.at)));
        out.push(("deprecation", format!("@{}", s.deprecated_at)));
    }
    out
}

/// Unix seconds as an HTTP date (IMF-fixdate, RFC 9110), as `Sunset` carries it.
pub fn http_date(secs: u64) -> String {
    let fmt = time::macros::format_description!(
        "[weekday repr:short], [day] [month repr:short] [year] [hour]:[minute]:[second] GMT"
    );
    time::OffsetDateTime::from_unix_timestamp(secs.min(253_402_300_799) as i64)
        .ok()
        .and_then(|t| t.format(&fmt).ok())
        .unwrap_or_default()
}

/// The error code of a refusal: the verdict's, except `key_format_deprecated` for a key whose
/// retired prefix is past its sunset.
pub fn code(d: &Decision) -> &'static str {
    match d.verdict {
        Verdict::Unauthorized(AuthFailure::Deprecated) => "key_format_deprecated",
        v => v.code(),
    }
}

/// HTTP status for a verdict.
pub fn status(v: Verdict) -> u16 {
    match v {
        Verdict::Allowed => 200,
        Verdict::Unauthorized(_) => 401,
        Verdict::Forbidden | Verdict::PlanRequired => 403,
        Verdict::RateLimited(_) | Verdict::QuotaExceeded => 429,
        Verdict::Unavailable => 503,
    }
}

/// The error message for a denial; `scope` is the scope the request needed, `retired` the retired
/// prefix of a key refused for it.
pub fn message(d: &Decision, scope: Option<&str>, retired: Option<&RetiredPrefix>) -> String {
    match d.verdict {
        Verdict::Allowed => String::new(),
        Verdict::Unauthorized(AuthFailure::Deprecated) => match retired {
            Some(p) => format!(
                "API keys starting with {:?} were retired on {}: use a new key",
                p.prefix,
                crate::server::admin::rfc3339(p.sunset_at).unwrap_or_default()
            ),
            None => "API key format retired: use a new key".into(),
        },
        Verdict::Unauthorized(_) => "Missing or invalid API key".into(),
        Verdict::Forbidden => format!("API key lacks required scope: {}", scope.unwrap_or("")),
        Verdict::PlanRequired => "Feature requires a higher plan tier".into(),
        Verdict::RateLimited(i) => {
            let l = d.limits().get(i);
            match l.map(|l| l.kind) {
                Some(LimitKind::Window { period_secs }) => format!(
                    "Rate limit exceeded: {}",
                    crate::engine::bucket::Limit::new(l.map_or(0, |l| l.limit), period_secs)
                        .map(|l| l.describe())
                        .unwrap_or_default()
                ),
                _ => "Rate limit exceeded".into(),
            }
        }
        Verdict::QuotaExceeded => "Monthly quota exceeded".into(),
        Verdict::Unavailable => "Rate-limit store unavailable".into(),
    }
}

/// The error envelope `{"error":{"code","message","requestId"}}`.
pub fn envelope(code: &str, message: &str, request_id: &str) -> String {
    serde_json::json!({"error": {"code": code, "message": message, "requestId": request_id}})
        .to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn policy_names_read_naturally() {
        let l = |p| LimitStatus {
            kind: LimitKind::Window { period_secs: p },
            limit: 1,
            remaining: 0,
            reset: 0,
        };
        let name = |p| {
            let mut s = String::new();
            push_policy_name(&mut s, &l(p));
            s
        };
        assert_eq!(name(60), "minute");
        assert_eq!(name(90), "90s");
    }
}
