//! The limits phase of a check as one pure function: given a key's counter state (one GCRA TAT
//! per burst limit, the month's usage), `now` and a cost, decide and compute the figures every
//! transport renders. Both stores call it: the memory-mapped store on its mapped slot, the Redis
//! store on the state its script returns, so one key gets the same answer from either.

use super::bucket::{evaluate, reexpress, Limit};
use super::catalog::CompiledTier;
use super::clock::NANOS_PER_SEC;
use super::decision::{Decision, LimitKind, LimitStatus, Verdict};
use super::month::{self, MonthWindow};
use crate::keys::record::LimitUsage;
use crate::tiers::MAX_LIMITS;

fn ceil_secs(ns: u64) -> u64 {
    ns.div_ceil(NANOS_PER_SEC)
}

/// What a key is held to: its tier's burst limits and its monthly quota in the current month.
#[derive(Debug, Clone, Copy)]
pub struct Terms<'a> {
    /// Burst limits, shortest period first.
    pub limits: &'a [Limit],
    /// Requests per calendar month; `None` = unlimited.
    pub quota: Option<u64>,
    /// The month `now` falls in.
    pub month: &'a MonthWindow,
    /// `false` on a tier in shadow mode: what the limits or the quota would deny is allowed,
    /// marked [`Decision::shadow`], and consumes nothing.
    pub enforce: bool,
}

/// Decides the limits phase and fills `d` (which arrives as an `Allowed` decision with no limit
/// figures). `tat[i]` is the bucket of `terms.limits[i]`; `used` the month's usage so far (0 for a
/// new month). Returns the TATs to store when the request is admitted, `None` when denied
/// (nothing may be written then). Not enforcing, a denial becomes an allowed decision with the
/// would-be verdict in [`Decision::shadow`], the figures of the denial and no `retry_after`, and
/// still returns `None`: a check the limits refuse never consumes.
#[inline]
pub fn decide(
    tat: &[u64],
    used: u64,
    now: u64,
    cost: u64,
    terms: &Terms<'_>,
    d: &mut Decision,
) -> Option<[u64; MAX_LIMITS]> {
    let Terms {
        limits,
        quota,
        month,
        enforce,
    } = *terms;
    let mut evals = [None; MAX_LIMITS];
    let mut denied_by: Option<(usize, u64)> = None;
    for (i, limit) in limits.iter().enumerate().take(MAX_LIMITS) {
        let e = evaluate(tat.get(i).copied().unwrap_or(0), now, cost, limit);
        if !e.allowed && denied_by.is_none_or(|(_, w)| e.retry_after_ns > w) {
            denied_by = Some((i, e.retry_after_ns));
        }
        evals[i] = Some(e);
    }
    let quota_denied = quota.is_some_and(|q| used.saturating_add(cost) > q);
    let admit = denied_by.is_none() && !quota_denied;

    // Figures as they stand after the decision: consumed when admitted, untouched otherwise.
    let mut tightest = (u64::MAX, 0usize);
    let mut next = [0u64; MAX_LIMITS];
    for (i, limit) in limits.iter().enumerate() {
        let Some(e) = evals.get(i).copied().flatten() else {
            break;
        };
        let cur = tat.get(i).copied().unwrap_or(0);
        let (remaining, full_at) = if admit {
            next[i] = e.new_tat;
            (e.remaining, e.full_at_ns)
        } else if e.allowed {
            (e.remaining + cost, cur.clamp(now, e.full_at_ns))
        } else {
            (e.remaining, e.full_at_ns)
        };
        if remaining < tightest.0 {
            tightest = (remaining, i);
        }
        d.push_limit(LimitStatus {
            kind: LimitKind::Window {
                period_secs: limit.period_secs(),
            },
            limit: limit.requests(),
            remaining,
            reset: ceil_secs(full_at),
        });
    }
    if let Some(q) = quota {
        let remaining = if admit {
            q - used - cost
        } else {
            q.saturating_sub(used)
        };
        if remaining < tightest.0 {
            tightest = (remaining, d.limits().len());
        }
        d.push_limit(LimitStatus {
            kind: LimitKind::Monthly,
            limit: q,
            remaining,
            reset: month.end_ns / NANOS_PER_SEC,
        });
    }
    if let Some((i, wait)) = denied_by {
        d.verdict = Verdict::RateLimited(i);
        d.retry_after = Some(ceil_secs(wait).max(1));
        d.set_primary(i);
        shadow(d, enforce);
        return None;
    }
    if quota_denied {
        d.verdict = Verdict::QuotaExceeded;
        d.retry_after = Some(month::secs_until_next_month(now));
        d.set_primary(d.limits().len() - 1);
        shadow(d, enforce);
        return None;
    }
    d.set_primary(tightest.1);
    Some(next)
}

/// On a tier that does not enforce, turns the denial in `d` into an allowed answer that names it.
fn shadow(d: &mut Decision, enforce: bool) {
    if !enforce {
        d.shadow = Some(d.verdict);
        d.verdict = Verdict::Allowed;
        d.retry_after = None;
    }
}

/// The monthly quota a key is held to: its own override, else its tier's (`None`: unlimited).
#[inline]
pub fn quota_of(quota_override: Option<u64>, tier: &CompiledTier) -> Option<u64> {
    quota_override.or(tier.spec.monthly_quota)
}

/// The month's usage so far, from a counter last written in month `stored_month`.
///
/// A stored month *later* than the clock's keeps its usage: the clock is behind (a VM before its
/// time sync), and a stored month never goes back (see [`month_to_store`]). A month that moved
/// forward starts at 0.
#[inline]
pub fn used_this_month(stored_month: u32, used: u64, month: &MonthWindow) -> u64 {
    if stored_month >= month.id {
        used
    } else {
        0
    }
}

/// Moves a key's bursts back by how far the clock is behind its last admitted request
/// (`last_used_s`, Unix seconds), so that a clock that went back (a restart before the time
/// sync) finds the buckets as they were right after that request, not empty until the clock
/// catches up. A clock at or after the last request changes nothing.
pub fn rebase_behind_clock(tat: &mut [u64], last_used_s: u32, now: u64) {
    let last = u64::from(last_used_s).saturating_mul(NANOS_PER_SEC);
    if last <= now {
        return;
    }
    let skew = last - now;
    for t in tat.iter_mut().filter(|t| **t != 0) {
        *t = t.saturating_sub(skew).max(1);
    }
}

/// The month to store with new usage: the clock's month, or the stored one if that is later.
#[inline]
pub fn month_to_store(stored_month: u32, month: &MonthWindow) -> u32 {
    stored_month.max(month.id)
}

/// The live figures of one bucket (TAT `tat`) of limit `l` at `now`, nothing consumed.
pub fn limit_usage(tat: u64, now: u64, l: &Limit) -> LimitUsage {
    let e = evaluate(tat, now, 1, l);
    LimitUsage {
        requests: l.requests(),
        period_seconds: l.period_secs(),
        remaining: if e.allowed { e.remaining + 1 } else { 0 },
        reset: ceil_secs(tat.clamp(now, now + l.interval_ns() * l.requests())),
    }
}

/// Re-expresses buckets written under limits `old` (the tier's limits changed, or the key moved
/// to another tier) in the limits `new`: the tokens a bucket owed stay owed, counted in the new
/// limit's interval, for each limit whose period is unchanged (a limit unchanged altogether keeps
/// its bucket exactly); limits with a new period start full.
pub fn reexpress_buckets(tat: &[u64], old: &[Limit], new: &[Limit], now: u64) -> [u64; MAX_LIMITS] {
    let mut out = [0u64; MAX_LIMITS];
    for (j, n) in new.iter().enumerate().take(MAX_LIMITS) {
        let Some(i) = old.iter().position(|o| o.period_secs() == n.period_secs()) else {
            continue;
        };
        let t = tat.get(i).copied().unwrap_or(0);
        out[j] = reexpress(t, now, old[i].interval_ns(), n.interval_ns());
    }
    out
}
