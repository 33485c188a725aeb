//! Time as the engine sees it: one `u64` of nanoseconds since the Unix epoch, handed in by a
//! [`Clock`].
//!
//! The engine never reads the system clock itself. Production uses [`QuantaClock`]: the wall clock
//! is read once at start-up and every later reading adds `quanta`'s monotonic elapsed time to it,
//! so within a process time never goes backwards (an NTP step cannot refill a bucket), while the
//! values stay on the Unix time line and therefore mean the same thing after a restart (bucket
//! timestamps live in memory-mapped files). Tests use [`FakeClock`] and move time by hand.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

/// Nanoseconds in one second.
pub const NANOS_PER_SEC: u64 = 1_000_000_000;

/// A source of "now" in nanoseconds since the Unix epoch (UTC).
pub trait Clock: Send + Sync + 'static {
    /// The current time, in nanoseconds since 1970-01-01T00:00:00Z.
    fn now_ns(&self) -> u64;
}

/// The production clock: wall-clock anchor plus `quanta` monotonic elapsed time.
#[derive(Debug, Clone)]
pub struct QuantaClock {
    anchor_unix_ns: u64,
    /// The counter's raw reading at `anchor_unix_ns`.
    anchor_raw: u64,
    clock: quanta::Clock,
}

impl QuantaClock {
    /// Anchors a new clock on the current wall-clock time.
    pub fn new() -> Self {
        let clock = quanta::Clock::new();
        let anchor_raw = clock.raw();
        let anchor_unix_ns = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_nanos() as u64)
            .unwrap_or(0);
        QuantaClock {
            anchor_unix_ns,
            anchor_raw,
            clock,
        }
    }
}

impl Default for QuantaClock {
    fn default() -> Self {
        Self::new()
    }
}

impl Clock for QuantaClock {
    #[inline]
    fn now_ns(&self) -> u64 {
        // Raw counter delta scaled by a multiply and a shift: no `Duration` on the way (its
        // seconds/nanoseconds split divides by 10^9). 0 if the counter read is not later.
        let elapsed = self.clock.delta_as_nanos(self.anchor_raw, self.clock.raw());
        self.anchor_unix_ns.saturating_add(elapsed)
    }
}

/// A clock that only moves when told to; clones share the same time.
#[derive(Debug, Clone, Default)]
pub struct FakeClock {
    now: Arc<AtomicU64>,
}

impl FakeClock {
    /// A fake clock reading `unix_ns`.
    pub fn at_ns(unix_ns: u64) -> Self {
        FakeClock {
            now: Arc::new(AtomicU64::new(unix_ns)),
        }
    }

    /// A fake clock reading `unix_secs` seconds after the epoch.
    pub fn at_secs(unix_secs: u64) -> Self {
        Self::at_ns(unix_secs * NANOS_PER_SEC)
    }

    /// Moves time forward by `ns` nanoseconds.
    pub fn advance_ns(&self, ns: u64) {
        self.now.fetch_add(ns, Ordering::SeqCst);
    }

    /// Moves time forward by `secs` seconds.
    pub fn advance_secs(&self, secs: u64) {
        self.advance_ns(secs * NANOS_PER_SEC);
    }

    /// Sets the time to `unix_ns`.
    pub fn set_ns(&self, unix_ns: u64) {
        self.now.store(unix_ns, Ordering::SeqCst);
    }
}

impl Clock for FakeClock {
    fn now_ns(&self) -> u64 {
        self.now.load(Ordering::SeqCst)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quanta_clock_is_near_wall_clock_and_never_goes_back() {
        let c = QuantaClock::new();
        let wall = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap()
            .as_nanos() as u64;
        let a = c.now_ns();
        let b = c.now_ns();
        assert!(b >= a);
        assert!(a.abs_diff(wall) < 5 * NANOS_PER_SEC);
    }

    #[test]
    fn fake_clock_clones_share_time() {
        let c = FakeClock::at_secs(10);
        let d = c.clone();
        c.advance_secs(5);
        assert_eq!(d.now_ns(), 15 * NANOS_PER_SEC);
    }
}
