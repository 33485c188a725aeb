//! Burst limits as GCRA (the generic cell rate algorithm): a token bucket kept as one timestamp.
//!
//! A limit of `requests` per `period` admits one request every emission interval
//! `T = ceil(period / requests)` on average and at most `requests` at once. The whole bucket is one
//! `u64`, the *theoretical arrival time* (TAT): the instant at which the bucket is full again.
//! `0` (or any instant in the past) means "full". A request of cost `n` moves the TAT to
//! `max(TAT, now) + n·T` and is admitted when the new TAT is at most `now + requests·T`.
//!
//! `T` is rounded *up*, so the sustained rate never exceeds `requests / period`: the invariant
//! "admitted ≤ requests + elapsed · requests / period" holds exactly (property-tested below).
//!
//! The TAT is also clamped to at most one full bucket ahead of `now` when read. That makes a limit
//! changed at run time (or a wall clock that stepped back across a restart) behave: the bucket keeps
//! its "full again at" instant, but never owes more than the new limit's capacity.

use super::clock::NANOS_PER_SEC;
use crate::tiers::LimitSpec;
pub use crate::tiers::{LimitError, MAX_PERIOD_SECS, MAX_REQUESTS, MIN_PERIOD_SECS};

/// One burst limit: `requests` per `period_secs`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Limit {
    requests: u64,
    period_secs: u64,
    interval_ns: u64,
    capacity_ns: u64,
}

impl Limit {
    /// A limit of `requests` per `period_secs` seconds.
    pub fn new(requests: u64, period_secs: u64) -> Result<Self, LimitError> {
        LimitSpec {
            requests,
            period_seconds: period_secs,
        }
        .check()?;
        let period_ns = period_secs * NANOS_PER_SEC;
        let interval_ns = period_ns.div_ceil(requests);
        Ok(Limit {
            requests,
            period_secs,
            interval_ns,
            capacity_ns: interval_ns * requests,
        })
    }

    /// Requests admitted per period.
    pub fn requests(&self) -> u64 {
        self.requests
    }

    /// The period, in seconds.
    pub fn period_secs(&self) -> u64 {
        self.period_secs
    }

    /// Nanoseconds between two tokens.
    pub fn interval_ns(&self) -> u64 {
        self.interval_ns
    }

    /// The same limit with its interval rounded up to a whole microsecond: the resolution of
    /// the Redis store, whose scripts compute in Lua numbers (doubles, exact below 2^53, which
    /// microseconds since 1970 are and nanoseconds are not). Limits whose interval is already a
    /// whole microsecond (every built-in tier) are unchanged.
    pub fn to_micros(&self) -> Limit {
        let interval_ns = self.interval_ns.div_ceil(1_000) * 1_000;
        Limit {
            interval_ns,
            capacity_ns: interval_ns * self.requests,
            ..*self
        }
    }

    /// Human form, e.g. `60 per minute`, `1000 per 3600 seconds`.
    pub fn describe(&self) -> String {
        let unit = match self.period_secs {
            1 => "second".to_string(),
            60 => "minute".to_string(),
            3600 => "hour".to_string(),
            86_400 => "day".to_string(),
            s => format!("{s} seconds"),
        };
        format!("{} per {}", self.requests, unit)
    }
}

/// The result of asking one bucket for `cost` tokens at `now`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BucketEval {
    /// Whether the tokens are there.
    pub allowed: bool,
    /// The TAT to store if the request as a whole is admitted (equal to the input when denied).
    pub new_tat: u64,
    /// Tokens left after this request (after consuming, when allowed).
    pub remaining: u64,
    /// When the bucket is full again, in ns since the epoch.
    pub full_at_ns: u64,
    /// When denied, nanoseconds until `cost` tokens will be there; 0 when allowed.
    pub retry_after_ns: u64,
}

/// A bucket's TAT written under emission interval `old_interval_ns`, re-expressed under
/// `new_interval_ns` (the limit changed, the period did not): the tokens it owed stay owed, rounded
/// up to whole tokens; an unchanged interval keeps the TAT exactly; a full bucket stays full (0).
#[inline]
pub fn reexpress(tat: u64, now: u64, old_interval_ns: u64, new_interval_ns: u64) -> u64 {
    if tat <= now {
        0
    } else if old_interval_ns == new_interval_ns {
        tat
    } else {
        let owed = (tat - now).div_ceil(old_interval_ns.max(1));
        now.saturating_add(owed.saturating_mul(new_interval_ns))
    }
}

/// Evaluates one GCRA bucket. Pure: nothing is stored; the caller stores `new_tat` only if every
/// limit and the quota admit the request (all or nothing).
#[inline]
pub fn evaluate(tat: u64, now: u64, cost: u64, limit: &Limit) -> BucketEval {
    let horizon = now.saturating_add(limit.capacity_ns);
    let base = tat.clamp(now, horizon);
    let need = u128::from(cost) * u128::from(limit.interval_ns);
    let new_tat = u128::from(base) + need;
    if new_tat <= u128::from(horizon) {
        let new_tat = new_tat as u64;
        BucketEval {
            allowed: true,
            new_tat,
            remaining: (horizon - new_tat) / limit.interval_ns,
            full_at_ns: new_tat,
            retry_after_ns: 0,
        }
    } else {
        let wait = new_tat - u128::from(horizon);
        BucketEval {
            allowed: false,
            new_tat: tat,
            remaining: (horizon - base) / limit.interval_ns,
            full_at_ns: base,
            retry_after_ns: u64::try_from(wait).unwrap_or(u64::MAX),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const S: u64 = NANOS_PER_SEC;

    #[test]
    fn a_full_bucket_admits_exactly_its_capacity_then_refills_one_per_interval() {
        let l = Limit::new(60, 60).unwrap();
        let now = 1_000 * S;
        let mut tat = 0;
        for i in 0..60 {
            let e = evaluate(tat, now, 1, &l);
            assert!(e.allowed, "request {i}");
            assert_eq!(e.remaining, 59 - i);
            tat = e.new_tat;
        }
        let e = evaluate(tat, now, 1, &l);
        assert!(!e.allowed);
        assert_eq!(e.remaining, 0);
        assert_eq!(e.retry_after_ns, S);
        assert_eq!(e.new_tat, tat, "a denial leaves the bucket as it was");
        let e = evaluate(tat, now + S, 1, &l);
        assert!(e.allowed);
        assert_eq!(e.remaining, 0);
        assert_eq!(e.full_at_ns, now + 61 * S);
    }

    #[test]
    fn cost_above_remaining_is_denied_with_time_until_it_fits() {
        let l = Limit::new(10, 10).unwrap();
        let e = evaluate(0, 0, 7, &l);
        assert!(e.allowed);
        let e2 = evaluate(e.new_tat, 0, 5, &l);
        assert!(!e2.allowed);
        assert_eq!(e2.remaining, 3);
        assert_eq!(e2.retry_after_ns, 2 * S);
    }

    #[test]
    fn a_debt_larger_than_a_smaller_new_limit_is_clamped() {
        let big = Limit::new(100, 60).unwrap();
        let mut tat = 0;
        for _ in 0..100 {
            tat = evaluate(tat, 0, 1, &big).new_tat;
        }
        let small = Limit::new(10, 60).unwrap();
        // The bucket owes one full (new) period at most.
        let e = evaluate(tat, 0, 1, &small);
        assert!(!e.allowed);
        assert_eq!(e.retry_after_ns, 6 * S);
    }

    #[test]
    fn a_reexpressed_bucket_keeps_what_it_owes() {
        let now = 1_000 * S;
        assert_eq!(
            reexpress(now - 1, now, S, 2 * S),
            0,
            "a full bucket stays full"
        );
        assert_eq!(
            reexpress(now + S / 2, now, S, S),
            now + S / 2,
            "same limit: exact"
        );
        // Half a token owed at 1 s per token is one whole token at 3 s per token.
        assert_eq!(reexpress(now + S / 2, now, S, 3 * S), now + 3 * S);
    }

    #[test]
    fn interval_rounds_up_so_rate_never_exceeds_nominal() {
        let l = Limit::new(7, 1).unwrap();
        assert_eq!(l.interval_ns(), 142_857_143);
        assert!(l.interval_ns() * 7 >= S);
    }

    #[test]
    fn limits_outside_bounds_are_refused() {
        assert_eq!(Limit::new(0, 60), Err(LimitError::Requests(0)));
        assert_eq!(Limit::new(1, 0), Err(LimitError::Period(0)));
        assert!(Limit::new(1, MAX_PERIOD_SECS + 1).is_err());
    }

    proptest! {
        #![proptest_config(ProptestConfig { cases: 512, ..ProptestConfig::default() })]

        /// Never more admitted than capacity + rate × elapsed, whatever the arrival pattern.
        #[test]
        fn never_admits_more_than_capacity_plus_rate_times_elapsed(
            requests in 1u64..500,
            period in 1u64..7200,
            start in 0u64..(1u64 << 62),
            steps in proptest::collection::vec((0u64..5_000_000_000, 1u64..20), 1..400),
        ) {
            let l = Limit::new(requests, period).unwrap();
            let mut tat = 0u64;
            let mut now = start;
            let mut admitted: u128 = 0;
            for (dt, cost) in steps {
                now += dt;
                let e = evaluate(tat, now, cost, &l);
                prop_assert!(e.remaining <= requests);
                if e.allowed {
                    tat = e.new_tat;
                    admitted += u128::from(cost);
                } else {
                    prop_assert_eq!(e.new_tat, tat);
                    prop_assert!(e.retry_after_ns > 0);
                }
                let elapsed = u128::from(now - start);
                let bound = u128::from(requests)
                    + elapsed * u128::from(requests) / (u128::from(period) * u128::from(S));
                prop_assert!(admitted <= bound, "admitted {} > bound {}", admitted, bound);
            }
        }

        /// A request denied now is admitted after waiting exactly `retry_after` (if it fits at all).
        #[test]
        fn retry_after_is_exact(requests in 1u64..100, period in 1u64..600, used in 0u64..100, cost in 1u64..100) {
            let l = Limit::new(requests, period).unwrap();
            let now = 1_000_000 * S;
            let mut tat = 0;
            for _ in 0..used.min(requests) {
                tat = evaluate(tat, now, 1, &l).new_tat;
            }
            let e = evaluate(tat, now, cost, &l);
            if !e.allowed && cost <= requests {
                prop_assert!(evaluate(tat, now + e.retry_after_ns, cost, &l).allowed);
                prop_assert!(!evaluate(tat, now + e.retry_after_ns - 1, cost, &l).allowed);
            }
        }
    }
}
