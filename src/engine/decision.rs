//! The answer to one check, and the per-limit figures every transport renders as headers or
//! wire fields. A denial is a normal `Decision`, never an error.

use crate::keys::KeyId;
use crate::tiers::MAX_LIMITS;

/// Why a key was not accepted (all render as 401; the reason is for logs and metrics).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum AuthFailure {
    /// No key was presented.
    Missing,
    /// The key is not of quotad's form.
    Malformed,
    /// No live record has this key.
    Unknown,
    /// The key was revoked.
    Revoked,
    /// The key expired.
    Expired,
    /// The key's prefix was retired and its sunset has passed (`key_format_deprecated`).
    Deprecated,
}

impl AuthFailure {
    /// Stable lowercase name.
    pub fn as_str(self) -> &'static str {
        match self {
            AuthFailure::Missing => "missing",
            AuthFailure::Malformed => "malformed",
            AuthFailure::Unknown => "unknown",
            AuthFailure::Revoked => "revoked",
            AuthFailure::Expired => "expired",
            AuthFailure::Deprecated => "deprecated",
        }
    }
}

/// Every verdict's code, in [`Verdict::index`] order: the names every transport, the metrics
/// and the load generator use.
pub const CODES: [&str; 7] = [
    "allowed",
    "unauthorized",
    "forbidden",
    "plan_required",
    "rate_limited",
    "quota_exceeded",
    "unavailable",
];

/// The outcome of a check.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Verdict {
    /// Admitted; the cost was taken from every limit and the quota.
    Allowed,
    /// 401: no usable key.
    Unauthorized(AuthFailure),
    /// 403: the key lacks the required scope.
    Forbidden,
    /// 403: the key's tier does not include the required scope.
    PlanRequired,
    /// 429: the burst limit at this index of [`Decision::limits`] is spent.
    RateLimited(usize),
    /// 429: the monthly quota is spent.
    QuotaExceeded,
    /// 503: the shared store (Redis) could not be reached and the policy is fail-closed.
    Unavailable,
}

impl Verdict {
    /// The stable code used on every transport.
    pub fn code(self) -> &'static str {
        CODES[self.index()]
    }

    /// This verdict's position in [`CODES`].
    pub fn index(self) -> usize {
        match self {
            Verdict::Allowed => 0,
            Verdict::Unauthorized(_) => 1,
            Verdict::Forbidden => 2,
            Verdict::PlanRequired => 3,
            Verdict::RateLimited(_) => 4,
            Verdict::QuotaExceeded => 5,
            Verdict::Unavailable => 6,
        }
    }

    /// Whether the request may proceed.
    pub fn is_allowed(self) -> bool {
        self == Verdict::Allowed
    }
}

/// When the prefix of an allowed key stops working (RFC 8594 `Sunset`) and since when it is
/// deprecated (RFC 9745 `Deprecation`), Unix seconds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Sunset {
    /// Refused from then on.
    pub at: u64,
    /// Retired since then.
    pub deprecated_at: u64,
}

/// Which kind of limit a [`LimitStatus`] describes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LimitKind {
    /// A burst window of `period_secs`.
    Window {
        /// Its period in seconds.
        period_secs: u64,
    },
    /// The calendar-monthly quota.
    Monthly,
}

/// The state of one limit after the check.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LimitStatus {
    /// Window or monthly quota.
    pub kind: LimitKind,
    /// Requests allowed per period.
    pub limit: u64,
    /// Requests left (after this one, if it was admitted).
    pub remaining: u64,
    /// When the limit is fully restored (window) or resets (month), Unix seconds.
    pub reset: u64,
}

impl LimitStatus {
    // All-zero, so a new decision's table is a memset rather than a copy.
    const EMPTY: LimitStatus = LimitStatus {
        kind: LimitKind::Window { period_secs: 0 },
        limit: 0,
        remaining: 0,
        reset: 0,
    };

    /// The period in seconds (for the monthly quota: the length of the current month).
    pub fn window_secs(&self, now_s: u64) -> u64 {
        match self.kind {
            LimitKind::Window { period_secs } => period_secs,
            LimitKind::Monthly => {
                let start = super::month::month_start(super::month::month_of(now_s));
                self.reset.saturating_sub(start)
            }
        }
    }
}

/// A check's full answer.
#[derive(Debug, Clone, Copy)]
pub struct Decision {
    /// What was decided.
    pub verdict: Verdict,
    /// The key, once identified (also on 403/429).
    pub key_id: Option<KeyId>,
    /// The key's tier index (for names, ask the engine).
    pub tier: Option<u16>,
    /// Seconds to wait before retrying, when denied for a limit or the quota (>= 1).
    pub retry_after: Option<u64>,
    /// The time of the check, Unix seconds.
    pub now_s: u64,
    /// On a tier in shadow mode, the verdict its limits or quota would have given
    /// (`RateLimited` or `QuotaExceeded`); the check was allowed and nothing was consumed.
    pub shadow: Option<Verdict>,
    /// The key's prefix is being retired: allowed until this sunset.
    pub sunset: Option<Sunset>,
    limits: [LimitStatus; MAX_LIMITS + 1],
    len: u8,
    primary: u8,
}

impl Decision {
    /// A decision with no limit figures (401 and 403).
    pub fn bare(verdict: Verdict, key_id: Option<KeyId>, tier: Option<u16>, now_s: u64) -> Self {
        Decision {
            verdict,
            key_id,
            tier,
            retry_after: None,
            now_s,
            shadow: None,
            sunset: None,
            limits: [LimitStatus::EMPTY; MAX_LIMITS + 1],
            len: 0,
            primary: 0,
        }
    }

    /// Makes this the bare decision `verdict` (as [`bare`](Self::bare)) in place: the limit
    /// table's storage is left as it is, past the (now zero) length, unobservable.
    #[inline]
    pub(crate) fn reset(
        &mut self,
        verdict: Verdict,
        key_id: Option<KeyId>,
        tier: Option<u16>,
        now_s: u64,
    ) {
        self.verdict = verdict;
        self.key_id = key_id;
        self.tier = tier;
        self.retry_after = None;
        self.now_s = now_s;
        self.shadow = None;
        self.sunset = None;
        self.len = 0;
        self.primary = 0;
    }

    pub(crate) fn push_limit(&mut self, s: LimitStatus) {
        if usize::from(self.len) < self.limits.len() {
            self.limits[usize::from(self.len)] = s;
            self.len += 1;
        }
    }

    pub(crate) fn set_primary(&mut self, i: usize) {
        self.primary = i as u8;
    }

    /// Subtracts `n` from every limit's remaining figure.
    pub(crate) fn sub_remaining(&mut self, n: u64) {
        let len = usize::from(self.len);
        for l in &mut self.limits[..len] {
            l.remaining = l.remaining.saturating_sub(n);
        }
    }

    /// Adds `n` to every limit's remaining figure (never past the limit).
    pub(crate) fn add_remaining(&mut self, n: u64) {
        let len = usize::from(self.len);
        for l in &mut self.limits[..len] {
            l.remaining = l.remaining.saturating_add(n).min(l.limit);
        }
    }

    /// Every limit: the tier's windows (shortest first), then the monthly quota if there is one.
    pub fn limits(&self) -> &[LimitStatus] {
        &self.limits[..usize::from(self.len)]
    }

    /// The most restrictive limit: the one that denied, else the one with least remaining.
    pub fn primary(&self) -> Option<&LimitStatus> {
        self.limits().get(usize::from(self.primary))
    }
}

/// Decisions are equal when everything they report is: the limit table's storage past its length
/// is not part of a decision.
impl PartialEq for Decision {
    fn eq(&self, other: &Self) -> bool {
        self.verdict == other.verdict
            && self.key_id == other.key_id
            && self.tier == other.tier
            && self.retry_after == other.retry_after
            && self.now_s == other.now_s
            && self.shadow == other.shadow
            && self.sunset == other.sunset
            && self.limits() == other.limits()
            && self.primary() == other.primary()
    }
}

impl Eq for Decision {}
