//! [`Tally`]: checks counted in plain integers by one connection and added to
//! [`Metrics`](super::Metrics) at once.

use super::{bucket_of, reason_index, tier_slot, BUCKETS_NS};
use crate::engine::decision::{Decision, Verdict};

/// Checks counted locally (plain integers) and added to [`Metrics`](super::Metrics) in one go
/// with [`Metrics::add_tally`](super::Metrics::add_tally): the binary protocol counts a read's
/// checks here.
#[derive(Debug, Default, Clone)]
pub struct Tally {
    pub(super) checks: [u64; 7],
    pub(super) unauthorized: [u64; 6],
    pub(super) latency_buckets: [u64; BUCKETS_NS.len()],
    pub(super) count: u64,
    pub(super) latency_sum_ns: u64,
    /// Decisions counted but not yet timed.
    pub(super) untimed: u64,
    /// Per-tier counts of this tally, (tier slot, decision, n), in a short inline list...
    pub(super) tiers: [(u8, u8, u32); 8],
    pub(super) tiers_len: u8,
    /// ...and the pairs that did not fit (rare: many tiers in one read).
    pub(super) spill: Vec<(u8, u8)>,
    /// Shadow denials (tier, would-be verdict): rare, so a list.
    pub(super) shadow: Vec<(Option<u16>, Verdict)>,
}

impl Tally {
    /// Counts one decision (of a key on `tier`, if any) and its engine latency.
    #[inline]
    pub fn record(&mut self, v: Verdict, tier: Option<u16>, latency_ns: u64) {
        self.count_decision(v, tier);
        self.time_batch(latency_ns);
    }

    /// Counts decision `d` (and its shadow denial, if any); its time comes with the others of
    /// its batch, by [`Tally::time_batch`].
    #[inline]
    pub fn count(&mut self, d: &Decision) {
        self.count_decision(d.verdict, d.tier);
        if let Some(v) = d.shadow {
            self.shadow.push((d.tier, v));
        }
    }

    /// Counts one decision; its time comes with the others of its batch, by [`Tally::time_batch`].
    #[inline]
    pub fn count_decision(&mut self, v: Verdict, tier: Option<u16>) {
        let d = v.index();
        self.checks[d] += 1;
        if let Verdict::Unauthorized(r) = v {
            self.unauthorized[reason_index(r)] += 1;
        }
        self.untimed += 1;
        if let Some(t) = tier {
            let (slot, d) = (tier_slot(t) as u8, d as u8);
            let n = usize::from(self.tiers_len);
            if let Some(e) = self.tiers[..n].iter_mut().find(|e| e.0 == slot && e.1 == d) {
                e.2 += 1;
            } else if n < self.tiers.len() {
                self.tiers[n] = (slot, d, 1);
                self.tiers_len += 1;
            } else {
                self.spill.push((slot, d));
            }
        }
    }

    /// The decisions counted since the last call took `total_ns` together: each goes into the
    /// latency histogram at their mean. (Timing a read's checks together costs two clock reads
    /// per read instead of two per check.)
    #[inline]
    pub fn time_batch(&mut self, total_ns: u64) {
        if self.untimed == 0 {
            return;
        }
        let each = total_ns / self.untimed;
        if let Some(b) = bucket_of(each) {
            self.latency_buckets[b] += self.untimed;
        }
        self.count += self.untimed;
        self.latency_sum_ns = self.latency_sum_ns.wrapping_add(total_ns);
        self.untimed = 0;
    }
}
