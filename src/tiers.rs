//! Plan tiers: named sets of burst limits, a monthly quota and optionally the scopes the plan
//! includes. This module is the *description* (what an operator writes in TOML or sends as JSON);
//! the engine compiles it into its catalog.
//!
//! ```toml
//! [tiers.free]
//! limits = [{ requests = 60, period = "1m" }, { requests = 1000, period = "1h" }]
//! monthly_quota = 10000
//!
//! [tiers.pro]
//! limits = [{ requests = 300, period = 60 }]   # a period is seconds or "30s", "1m", "1h", "1d"
//! scopes = ["reports:read"]                    # absent = every scope
//! ```

use std::collections::BTreeMap;
use std::path::Path;

use serde::{Deserialize, Serialize};

/// The most burst limits one tier may have (the counter slot has room for this many buckets).
pub const MAX_LIMITS: usize = 4;
/// The longest tier or scope name.
pub const MAX_NAME_LEN: usize = 64;
/// The largest monthly quota a tier or a key may have: 2^53 − 1, the largest count both stores
/// hold exactly (the Redis store's scripts compute in Lua numbers, doubles).
pub const MAX_QUOTA: u64 = (1 << 53) - 1;
/// The smallest period a limit may have.
pub const MIN_PERIOD_SECS: u64 = 1;
/// The largest period a limit may have (a leap year).
pub const MAX_PERIOD_SECS: u64 = 366 * 24 * 3600;
/// The largest `requests` a limit may have.
pub const MAX_REQUESTS: u64 = 1_000_000_000;

/// Why a limit is out of range.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum LimitError {
    /// `requests` outside `1..=MAX_REQUESTS`.
    #[error("requests must be between 1 and {MAX_REQUESTS}, got {0}")]
    Requests(u64),
    /// `period` outside the allowed range.
    #[error("period must be between {MIN_PERIOD_SECS} and {MAX_PERIOD_SECS} seconds, got {0}")]
    Period(u64),
}

impl LimitSpec {
    /// Checks that both numbers are in range.
    pub fn check(&self) -> Result<(), LimitError> {
        if !(1..=MAX_REQUESTS).contains(&self.requests) {
            return Err(LimitError::Requests(self.requests));
        }
        if !(MIN_PERIOD_SECS..=MAX_PERIOD_SECS).contains(&self.period_seconds) {
            return Err(LimitError::Period(self.period_seconds));
        }
        Ok(())
    }
}

/// One limit as written by an operator: `requests` per `period_seconds`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct LimitSpec {
    /// Requests admitted per period.
    pub requests: u64,
    /// The period in seconds.
    pub period_seconds: u64,
}

/// A tier as an operator describes it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct TierSpec {
    /// The tier's name, e.g. `free`.
    pub name: String,
    /// Burst limits, at most [`MAX_LIMITS`]; kept sorted by period.
    pub limits: Vec<LimitSpec>,
    /// Requests per calendar month (UTC); `None` = unlimited.
    #[serde(default)]
    pub monthly_quota: Option<u64>,
    /// Scopes the plan includes; `None` = every scope.
    #[serde(default)]
    pub scopes: Option<Vec<String>>,
    /// `false`: shadow mode. Checks are counted and their figures computed as usual, but what
    /// the limits or the quota would deny is answered as allowed, marked as a shadow denial, and
    /// consumes nothing. Authentication and scopes are enforced either way.
    #[serde(default = "yes", skip_serializing_if = "is_yes")]
    pub enforce: bool,
    /// Whose counters a check spends: the key's own (the default) or one set shared by every
    /// key of the key's consumer on this tier.
    #[serde(default, skip_serializing_if = "CountBy::is_key")]
    pub count_by: CountBy,
}

/// Whose counters the checks of a tier's keys spend.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum CountBy {
    /// Each key has its own burst windows and monthly quota.
    #[default]
    Key,
    /// Every key of one consumer on the tier spends one set of counters: a customer with a key
    /// per environment gets the plan once, not once per key.
    Consumer,
}

impl CountBy {
    fn is_key(&self) -> bool {
        *self == CountBy::Key
    }

    /// `"key"` or `"consumer"`, as written in JSON and TOML.
    pub fn as_str(self) -> &'static str {
        match self {
            CountBy::Key => "key",
            CountBy::Consumer => "consumer",
        }
    }
}

fn yes() -> bool {
    true
}

fn is_yes(b: &bool) -> bool {
    *b
}

/// Why a tier description was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TierError {
    /// A bad tier name.
    #[error("invalid tier name {0:?}: use 1-64 characters of A-Z a-z 0-9 _ - .")]
    Name(String),
    /// A bad scope name.
    #[error("invalid scope {0:?}: use 1-64 characters of A-Z a-z 0-9 _ - . : /")]
    Scope(String),
    /// A monthly quota above [`MAX_QUOTA`].
    #[error("tier {tier:?}: monthly quota {quota} is above the maximum, {MAX_QUOTA}")]
    Quota {
        /// The tier.
        tier: String,
        /// The quota asked for.
        quota: u64,
    },
    /// Too many or no limits.
    #[error("tier {tier:?} has {count} limits; a tier needs between 1 and {MAX_LIMITS}")]
    LimitCount {
        /// The tier.
        tier: String,
        /// How many it had.
        count: usize,
    },
    /// A limit out of range.
    #[error("tier {tier:?}: {source}")]
    Limit {
        /// The tier.
        tier: String,
        /// The fault.
        source: LimitError,
    },
    /// Two limits with one period.
    #[error("tier {tier:?} has two limits with a period of {period} seconds")]
    DuplicatePeriod {
        /// The tier.
        tier: String,
        /// The period.
        period: u64,
    },
    /// A TOML file that could not be read or parsed.
    #[error("tier file {path}: {detail}")]
    File {
        /// The file.
        path: String,
        /// What is wrong.
        detail: String,
    },
}

fn valid_name(s: &str, extra: &[u8]) -> bool {
    !s.is_empty()
        && s.len() <= MAX_NAME_LEN
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"_-.".contains(&b) || extra.contains(&b))
}

/// Whether `s` is an acceptable tier name.
pub fn valid_tier_name(s: &str) -> bool {
    valid_name(s, b"")
}

/// Whether `s` is an acceptable scope name (e.g. `sessions:write`).
pub fn valid_scope(s: &str) -> bool {
    valid_name(s, b":/")
}

impl TierSpec {
    /// Checks the description and returns its limits, sorted by period.
    pub fn validate(&self) -> Result<Vec<LimitSpec>, TierError> {
        if !valid_tier_name(&self.name) {
            return Err(TierError::Name(self.name.clone()));
        }
        if self.limits.is_empty() || self.limits.len() > MAX_LIMITS {
            return Err(TierError::LimitCount {
                tier: self.name.clone(),
                count: self.limits.len(),
            });
        }
        let mut limits = Vec::with_capacity(self.limits.len());
        for l in &self.limits {
            l.check().map_err(|source| TierError::Limit {
                tier: self.name.clone(),
                source,
            })?;
            limits.push(*l);
        }
        limits.sort_by_key(|l| l.period_seconds);
        for w in limits.windows(2) {
            if w[0].period_seconds == w[1].period_seconds {
                return Err(TierError::DuplicatePeriod {
                    tier: self.name.clone(),
                    period: w[0].period_seconds,
                });
            }
        }
        if let Some(scopes) = &self.scopes {
            if let Some(bad) = scopes.iter().find(|s| !valid_scope(s)) {
                return Err(TierError::Scope(bad.clone()));
            }
        }
        if let Some(quota) = self.monthly_quota.filter(|q| *q > MAX_QUOTA) {
            return Err(TierError::Quota {
                tier: self.name.clone(),
                quota,
            });
        }
        Ok(limits)
    }

    /// The same tier with limits sorted by period and scopes sorted and deduplicated.
    pub fn normalized(mut self) -> Self {
        self.limits.sort_by_key(|l| l.period_seconds);
        if let Some(s) = &mut self.scopes {
            s.sort();
            s.dedup();
        }
        self
    }
}

impl TierSpec {
    /// A tier of `(requests, period_seconds)` limits and an optional monthly quota, every scope
    /// included.
    pub fn with_limits(name: &str, limits: &[(u64, u64)], monthly_quota: Option<u64>) -> Self {
        TierSpec {
            name: name.to_string(),
            limits: limits
                .iter()
                .map(|&(requests, period_seconds)| LimitSpec {
                    requests,
                    period_seconds,
                })
                .collect(),
            monthly_quota,
            scopes: None,
            enforce: true,
            count_by: CountBy::Key,
        }
    }
}

fn spec(name: &str, limits: &[(u64, u64)], monthly_quota: Option<u64>) -> TierSpec {
    TierSpec::with_limits(name, limits, monthly_quota)
}

/// The tiers quotad serves out of the box (see `docs/DESIGN.md` for the monthly figures).
///
/// | tier | burst | monthly |
/// |---|---|---|
/// | `default` | 100/min | 100,000 |
/// | `free` | 60/min, 1,000/hour | 10,000 |
/// | `pro` | 300/min, 10,000/hour | 1,000,000 |
/// | `enterprise` | 1,000/min, 50,000/hour | 10,000,000 |
pub fn builtin_tiers() -> Vec<TierSpec> {
    vec![
        spec("default", &[(100, 60)], Some(100_000)),
        spec("free", &[(60, 60), (1_000, 3_600)], Some(10_000)),
        spec("pro", &[(300, 60), (10_000, 3_600)], Some(1_000_000)),
        spec(
            "enterprise",
            &[(1_000, 60), (50_000, 3_600)],
            Some(10_000_000),
        ),
    ]
}

/// A period as written in TOML: seconds, or a string such as `"90s"`, `"1m"`, `"1h"`, `"1d"`.
#[derive(Debug, Deserialize)]
#[serde(untagged)]
enum PeriodToml {
    Seconds(u64),
    Text(String),
}

/// Parses `"30s"`, `"1m"`, `"2h"`, `"1d"` or plain seconds into seconds.
pub fn parse_period(s: &str) -> Option<u64> {
    let s = s.trim();
    let (num, mult) = match s.char_indices().last()? {
        (i, 's') => (&s[..i], 1),
        (i, 'm') => (&s[..i], 60),
        (i, 'h') => (&s[..i], 3_600),
        (i, 'd') => (&s[..i], 86_400),
        _ => (s, 1),
    };
    num.trim().parse::<u64>().ok()?.checked_mul(mult)
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct LimitToml {
    requests: u64,
    period: PeriodToml,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct TierToml {
    limits: Vec<LimitToml>,
    #[serde(default)]
    monthly_quota: Option<u64>,
    #[serde(default)]
    scopes: Option<Vec<String>>,
    #[serde(default = "yes")]
    enforce: bool,
    #[serde(default)]
    count_by: CountBy,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct TiersToml {
    tiers: BTreeMap<String, TierToml>,
}

/// Parses a tiers TOML document; `origin` names it in errors.
pub fn parse_tiers_toml(text: &str, origin: &str) -> Result<Vec<TierSpec>, TierError> {
    let file_err = |detail: String| TierError::File {
        path: origin.to_string(),
        detail,
    };
    let doc: TiersToml = toml::from_str(text).map_err(|e| file_err(e.to_string()))?;
    let mut out = Vec::with_capacity(doc.tiers.len());
    for (name, t) in doc.tiers {
        let mut limits = Vec::with_capacity(t.limits.len());
        for l in t.limits {
            let period_seconds = match l.period {
                PeriodToml::Seconds(s) => s,
                PeriodToml::Text(s) => parse_period(&s)
                    .ok_or_else(|| file_err(format!("tier {name:?}: bad period {s:?}")))?,
            };
            limits.push(LimitSpec {
                requests: l.requests,
                period_seconds,
            });
        }
        let spec = TierSpec {
            name,
            limits,
            monthly_quota: t.monthly_quota,
            scopes: t.scopes,
            enforce: t.enforce,
            count_by: t.count_by,
        }
        .normalized();
        spec.validate().map_err(|e| file_err(e.to_string()))?;
        out.push(spec);
    }
    if out.is_empty() {
        return Err(file_err("no tiers defined".into()));
    }
    Ok(out)
}

/// Reads and parses a tiers TOML file.
pub fn load_tiers_file(path: &Path) -> Result<Vec<TierSpec>, TierError> {
    let text = std::fs::read_to_string(path).map_err(|e| TierError::File {
        path: path.display().to_string(),
        detail: e.to_string(),
    })?;
    parse_tiers_toml(&text, &path.display().to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn builtins_match_the_published_plan_numbers() {
        let t = builtin_tiers();
        let find = |n: &str| t.iter().find(|s| s.name == n).unwrap().clone();
        assert_eq!(
            find("default").limits,
            vec![LimitSpec {
                requests: 100,
                period_seconds: 60
            }]
        );
        assert_eq!(
            find("free").limits[1],
            LimitSpec {
                requests: 1_000,
                period_seconds: 3_600
            }
        );
        assert_eq!(find("pro").limits[0].requests, 300);
        assert_eq!(find("enterprise").limits[1].requests, 50_000);
        for s in t {
            s.validate().unwrap();
        }
    }

    #[test]
    fn toml_periods_accept_units_and_seconds() {
        let t = parse_tiers_toml(
            r#"
            [tiers.gold]
            limits = [{ requests = 10, period = "1h" }, { requests = 5, period = 30 }]
            monthly_quota = 99
            scopes = ["a:read", "a:read"]
            "#,
            "test",
        )
        .unwrap();
        assert_eq!(t[0].limits[0].period_seconds, 30);
        assert_eq!(t[0].limits[1].period_seconds, 3_600);
        assert_eq!(t[0].scopes.as_deref(), Some(&["a:read".to_string()][..]));
        assert_eq!(t[0].count_by, CountBy::Key);
        let t = parse_tiers_toml(
            "[tiers.team]\nlimits = [{ requests = 10, period = 60 }]\ncount_by = \"consumer\"\n",
            "test",
        )
        .unwrap();
        assert_eq!(t[0].count_by, CountBy::Consumer);
        let json = serde_json::to_value(&t[0]).unwrap();
        assert_eq!(json["countBy"], "consumer");
        let e = parse_tiers_toml(
            "[tiers.team]\nlimits = [{ requests = 10, period = 60 }]\ncount_by = \"org\"\n",
            "test",
        )
        .unwrap_err();
        assert!(e.to_string().contains("unknown variant"), "{e}");
    }

    #[test]
    fn bad_tier_files_name_the_fault() {
        let e = parse_tiers_toml("[tiers.x]\nlimits = []\n", "f.toml").unwrap_err();
        assert!(
            e.to_string().contains("f.toml") && e.to_string().contains("limits"),
            "{e}"
        );
        let e =
            parse_tiers_toml("[tiers.x]\nlimits=[{requests=1, period=\"1w\"}]", "f").unwrap_err();
        assert!(e.to_string().contains("bad period"), "{e}");
        let e = parse_tiers_toml("[tiers.x]\nlimit=[]", "f").unwrap_err();
        assert!(e.to_string().contains("unknown field"), "{e}");
        let e = parse_tiers_toml(
            "[tiers.x]\nlimits=[{requests=1, period=60},{requests=2, period=\"1m\"}]",
            "f",
        )
        .unwrap_err();
        assert!(e.to_string().contains("two limits"), "{e}");
    }
}
