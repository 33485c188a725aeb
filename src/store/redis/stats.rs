//! What the Redis store counts: reachability, errors, fail-open admissions, stale records,
//! leases, replica shortfalls. Rendered by `/metrics` and `/health`.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

/// Gauges and counters of the store, rendered by `/metrics` and `/health`.
#[derive(Debug, Default)]
pub struct StoreStats {
    pub(super) reachable: AtomicBool,
    /// Last successful Redis call, ns since 1970.
    pub(super) last_ok_ns: AtomicU64,
    pub(super) errors: AtomicU64,
    pub(super) fail_open: AtomicU64,
    pub(super) stale_records: AtomicU64,
    pub(super) leases_taken: AtomicU64,
    pub(super) lease_renewals: AtomicU64,
    pub(super) renewal_calls: AtomicU64,
    pub(super) client_replacements: AtomicU64,
    pub(super) leases_returned_tokens: AtomicU64,
    pub(super) local_spends: AtomicU64,
    pub(super) unreplicated: AtomicU64,
    /// When Redis stopped answering, ns since 1970 (0 while it answers).
    pub(super) down_since_ns: AtomicU64,
    /// Failed calls not yet reported in a log line (one line per upkeep interval).
    pub(super) unlogged_errors: AtomicU64,
    /// The key count as last read from Redis (by the upkeep), and whether it was ever read.
    pub(super) keys: AtomicU64,
    pub(super) keys_known: AtomicBool,
}

impl StoreStats {
    /// Whether the last Redis call succeeded.
    pub fn reachable(&self) -> bool {
        self.reachable.load(Ordering::Relaxed)
    }
    /// When a Redis call last succeeded, ns since 1970 (0 = never).
    pub fn last_ok_ns(&self) -> u64 {
        self.last_ok_ns.load(Ordering::Relaxed)
    }
    /// Failed Redis calls.
    pub fn errors(&self) -> u64 {
        self.errors.load(Ordering::Relaxed)
    }
    /// Checks admitted by the fail-open policy.
    pub fn fail_open(&self) -> u64 {
        self.fail_open.load(Ordering::Relaxed)
    }
    /// Checks that found this node's copy of the record stale.
    pub fn stale_records(&self) -> u64 {
        self.stale_records.load(Ordering::Relaxed)
    }
    /// Leases taken (lease mode).
    pub fn leases_taken(&self) -> u64 {
        self.leases_taken.load(Ordering::Relaxed)
    }
    /// Leases topped up before they ran out (lease mode; also counted in `leases_taken`).
    pub fn lease_renewals(&self) -> u64 {
        self.lease_renewals.load(Ordering::Relaxed)
    }
    /// Script calls made to renew leases (several renewals of one master share a call).
    pub fn renewal_calls(&self) -> u64 {
        self.renewal_calls.load(Ordering::Relaxed)
    }
    /// Cluster clients replaced because every call failed while the cluster answered.
    pub fn client_replacements(&self) -> u64 {
        self.client_replacements.load(Ordering::Relaxed)
    }
    /// Unspent lease tokens given back.
    pub fn leases_returned_tokens(&self) -> u64 {
        self.leases_returned_tokens.load(Ordering::Relaxed)
    }
    /// Checks answered from a lease, without a Redis call.
    pub fn local_spends(&self) -> u64 {
        self.local_spends.load(Ordering::Relaxed)
    }
    /// Since when Redis has not answered, ns since 1970 (`None` while it answers).
    pub fn down_since_ns(&self) -> Option<u64> {
        Some(self.down_since_ns.load(Ordering::Relaxed)).filter(|&t| t != 0)
    }
    /// The key count as last read (`None` before the first read).
    pub fn keys(&self) -> Option<u64> {
        self.keys_known
            .load(Ordering::Relaxed)
            .then(|| self.keys.load(Ordering::Relaxed))
    }
    /// Admin changes that returned before the wanted replicas acknowledged them.
    pub fn unreplicated(&self) -> u64 {
        self.unreplicated.load(Ordering::Relaxed)
    }
}
