//! Busy polling (`quotad serve --busy-poll-us N`): after a request, the worker threads keep
//! polling the sockets for up to N µs instead of going to sleep in `epoll_wait`.
//!
//! An unpipelined check costs the server a few microseconds of work, but a worker that went to
//! sleep between two requests costs much more to wake: a context switch, and on a virtual
//! machine an idle vCPU that the host must schedule again. Under steady load those wake-ups are
//! most of the latency tail. With busy polling on, a worker with nothing to do yields to the
//! runtime, which polls the reactor without blocking (tokio polls the I/O driver before running
//! a task that yielded), so the next request is picked up as soon as it arrives. After N µs
//! without a request the workers sleep as usual, so an idle daemon costs no CPU.
//!
//! The price is CPU: under load, every worker runs at 100 % of its core. Use it on cores
//! dedicated to quotad (`--threads`, pinned with `taskset` or systemd's `CPUAffinity=`), not on
//! cores shared with the gateway. Off by default.

use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};

use tokio::sync::{watch, Notify};

/// Shared by the transports (which report activity) and the polling tasks.
#[derive(Debug)]
pub struct BusyPoll {
    /// Poll for this long after the last request (nanoseconds); 0 = off.
    window_ns: u64,
    origin: std::time::Instant,
    /// Time of the last request (nanoseconds since `origin`; 0 before the first), refreshed at
    /// most every `window_ns / 8` so that workers on different cores rarely write the same cache
    /// line.
    last: AtomicU64,
    /// Polling tasks asleep (waiting for the next request).
    asleep: AtomicUsize,
    wake: Notify,
}

impl BusyPoll {
    /// Busy polling for `window_us` µs after each request; 0 turns it off.
    pub fn new(window_us: u64) -> Self {
        BusyPoll {
            window_ns: window_us.saturating_mul(1000),
            origin: std::time::Instant::now(),
            last: AtomicU64::new(0),
            asleep: AtomicUsize::new(0),
            wake: Notify::new(),
        }
    }

    /// Whether busy polling is on.
    pub fn enabled(&self) -> bool {
        self.window_ns > 0
    }

    /// Nanoseconds since `origin`, on the monotonic clock (comparable across threads).
    fn now(&self) -> u64 {
        self.origin.elapsed().as_nanos().min(u128::from(u64::MAX)) as u64
    }

    fn idle(&self) -> bool {
        let last = self.last.load(Ordering::SeqCst);
        last == 0 || self.now().saturating_sub(last) > self.window_ns
    }

    /// A transport received a request: keep (or start) polling.
    #[inline]
    pub fn touch(&self) {
        if self.window_ns == 0 {
            return;
        }
        let now = self.now().max(1); // 0 means "no request yet"
        let last = self.last.load(Ordering::Relaxed);
        if last == 0 || now.saturating_sub(last) > self.window_ns / 8 {
            self.last.store(now, Ordering::SeqCst);
        }
        if self.asleep.load(Ordering::SeqCst) > 0 {
            self.wake.notify_waiters();
        }
    }

    /// One polling task: run one per worker thread. Returns when `stop` turns true.
    pub async fn run(&self, mut stop: watch::Receiver<bool>) {
        if self.window_ns == 0 {
            return;
        }
        loop {
            if stop.has_changed().unwrap_or(true) && *stop.borrow_and_update() {
                return;
            }
            if !self.idle() {
                tokio::task::yield_now().await;
                continue;
            }
            // Idle: sleep until the next request. Register for the wake-up before saying we
            // sleep, and look again after, so that a request in between is not missed.
            let notified = self.wake.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            self.asleep.fetch_add(1, Ordering::SeqCst);
            if self.idle() {
                tokio::select! {
                    _ = &mut notified => {}
                    _ = stop.changed() => {}
                }
            }
            self.asleep.fetch_sub(1, Ordering::SeqCst);
            if *stop.borrow_and_update() {
                return;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;
    use std::time::Duration;

    #[test]
    fn off_by_default_and_touch_is_free() {
        let b = BusyPoll::new(0);
        assert!(!b.enabled());
        b.touch();
        assert_eq!(b.last.load(Ordering::Relaxed), 0);
    }

    #[test]
    fn the_first_request_starts_polling_however_soon_it_comes() {
        let b = BusyPoll::new(1_000_000); // 1 s window; the request comes well within 1/8 of it
        assert!(b.idle(), "no request yet");
        b.touch();
        assert!(!b.idle(), "polling after the first request");
    }

    #[tokio::test(flavor = "current_thread")]
    async fn polls_after_a_request_then_sleeps_and_wakes_and_stops() {
        let b = Arc::new(BusyPoll::new(20_000)); // 20 ms
        let (tx, rx) = watch::channel(false);
        let task = tokio::spawn({
            let b = b.clone();
            async move { b.run(rx).await }
        });
        // Nothing received yet: the poller goes to sleep.
        tokio::time::sleep(Duration::from_millis(5)).await;
        assert_eq!(b.asleep.load(Ordering::SeqCst), 1, "asleep while idle");
        // A request wakes it; it polls (awake) until the window has passed.
        b.touch();
        tokio::time::sleep(Duration::from_millis(2)).await;
        assert_eq!(
            b.asleep.load(Ordering::SeqCst),
            0,
            "polling after a request"
        );
        tokio::time::sleep(Duration::from_millis(60)).await;
        assert_eq!(
            b.asleep.load(Ordering::SeqCst),
            1,
            "asleep again after the window"
        );
        tx.send(true).unwrap();
        tokio::time::timeout(Duration::from_secs(5), task)
            .await
            .expect("the poller stops")
            .unwrap();
    }
}
