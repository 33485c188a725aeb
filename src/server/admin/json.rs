//! The admin API's JSON views of keys and usage, and its RFC 3339 times.

use serde::{Deserialize, Serialize};
use time::format_description::well_known::Rfc3339;
use time::OffsetDateTime;

use crate::keys::record::{KeyInfo, Usage};

/// Formats Unix seconds as RFC 3339 (UTC).
pub fn rfc3339(secs: u64) -> Option<String> {
    OffsetDateTime::from_unix_timestamp(secs as i64)
        .ok()?
        .format(&Rfc3339)
        .ok()
}

/// Parses RFC 3339 into Unix seconds (must be after the epoch); `field` names it in errors.
pub fn parse_rfc3339(field: &str, s: &str) -> Result<u64, String> {
    let t = OffsetDateTime::parse(s, &Rfc3339)
        .map_err(|e| format!("{field}: {s:?} is not an RFC 3339 time ({e})"))?;
    u64::try_from(t.unix_timestamp()).map_err(|_| format!("{field} must be after 1970"))
}

/// A key as the admin API shows it (never the raw key, except `key` on create/rotate).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct KeyJson {
    /// Stable id, `key_…`.
    pub id: String,
    /// The raw key: only in the create and rotate responses.
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub key: Option<String>,
    /// Display prefix.
    pub prefix: String,
    /// Owner.
    pub consumer: String,
    /// Tier name.
    pub tier: String,
    /// Scopes (empty = unrestricted).
    pub scopes: Vec<String>,
    /// Expiry (RFC 3339) or null.
    pub expires_at: Option<String>,
    /// Quota override or null.
    pub monthly_quota: Option<u64>,
    /// Name or null.
    pub name: Option<String>,
    /// Creation (RFC 3339).
    pub created_at: String,
    /// Revoked?
    pub revoked: bool,
    /// The previous secret is honoured until then (RFC 3339), after a rotation with grace.
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub previous_key_valid_until: Option<String>,
    /// Live usage (only on `GET /admin/v1/keys/{id}`).
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub usage: Option<UsageJson>,
}

/// Live usage of a key.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct UsageJson {
    /// Each burst limit.
    pub limits: Vec<LimitUsageJson>,
    /// Requests this calendar month.
    pub monthly_used: u64,
    /// Quota in force, or null for unlimited.
    pub monthly_quota: Option<u64>,
    /// Last admitted request (RFC 3339) or null.
    pub last_used_at: Option<String>,
}

/// One limit's live figures.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct LimitUsageJson {
    /// Requests per period.
    pub requests: u64,
    /// Period in seconds.
    pub period_seconds: u64,
    /// Tokens left.
    pub remaining: u64,
    /// When full again (Unix seconds).
    pub reset: u64,
}

impl KeyJson {
    /// From a record.
    pub fn from_info(k: &KeyInfo) -> Self {
        KeyJson {
            id: k.id.to_string(),
            key: None,
            prefix: k.prefix.clone(),
            consumer: k.consumer.clone(),
            tier: k.tier.clone(),
            scopes: k.scopes.clone(),
            expires_at: k.expires_at.and_then(rfc3339),
            monthly_quota: k.monthly_quota,
            name: k.name.clone(),
            created_at: rfc3339(k.created_at).unwrap_or_default(),
            revoked: k.revoked,
            previous_key_valid_until: k.previous_valid_until.and_then(rfc3339),
            usage: None,
        }
    }
}

impl UsageJson {
    /// From store usage.
    pub fn from_usage(u: &Usage) -> Self {
        UsageJson {
            limits: u
                .limits
                .iter()
                .map(|l| LimitUsageJson {
                    requests: l.requests,
                    period_seconds: l.period_seconds,
                    remaining: l.remaining,
                    reset: l.reset,
                })
                .collect(),
            monthly_used: u.monthly_used,
            monthly_quota: u.monthly_quota,
            last_used_at: u.last_used_at.and_then(rfc3339),
        }
    }
}
