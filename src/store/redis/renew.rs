//! Lease renewal: a lease that runs low is topped up in the background, so that the checks of a
//! steadily used key are answered from the lease without waiting for Redis (`docs/SCALING.md`,
//! "Renewal").

use std::sync::atomic::Ordering;

use futures_util::stream::{FuturesUnordered, StreamExt};

use super::check::Outcome;
use super::lease::Lease;
use super::options::Mode;
use super::RedisStore;
use crate::engine::bucket::Limit;
use crate::engine::clock::NANOS_PER_SEC;
use crate::engine::decision::{Decision, Verdict};
use crate::engine::limits::{self, Terms};
use crate::engine::month::MonthWindow;
use crate::keys::KeyId;
use crate::tiers::MAX_LIMITS;

/// The most renewals started at once.
const RENEW_BATCH: usize = 256;

impl RedisStore {
    /// Tops up the leases that run low, several at once, until [`Self::stop_renewals`]; then
    /// waits for the renewals in flight, so that no token taken from Redis is left unheld.
    pub(super) async fn renewals(&self) {
        let Some(mut asked) = self.renew_rx.lock().take() else {
            return;
        };
        let mut inflight = FuturesUnordered::new();
        let mut ids = Vec::with_capacity(RENEW_BATCH);
        loop {
            tokio::select! {
                biased;
                _ = self.renew_stop.notified() => break,
                Some(()) = inflight.next(), if !inflight.is_empty() => {}
                // All the renewals asked for meanwhile start together: their script calls leave
                // in one write per Redis connection.
                n = asked.recv_many(&mut ids, RENEW_BATCH) => {
                    if n == 0 {
                        break;
                    }
                    inflight.extend(ids.drain(..).map(|id| self.renew(KeyId(id))));
                }
            }
        }
        while inflight.next().await.is_some() {}
    }

    /// Ends [`Self::renewals`] once its renewals in flight are answered.
    pub(super) fn stop_renewals(&self) {
        self.renew_stop.notify_one();
    }

    /// Takes up to what the key's lease is missing of `size` from Redis and adds it to the lease,
    /// which then lasts a full TTL from now: the script checked the record version, so a revoke
    /// or change made before now holds on this node within a TTL, as without renewal.
    async fn renew(&self, id: KeyId) {
        let Mode::Lease { size, ttl } = self.opts.mode else {
            return;
        };
        let Some((rec, asked)) = self
            .cache
            .get(&id.0)
            .and_then(|e| Some((e.rec.clone(), e.lease?)))
        else {
            return;
        };
        let now_us = self.clock.now_ns() / 1_000;
        let now = now_us * 1_000;
        let month = MonthWindow::containing(now);
        let cat = self.catalog.load_full();
        let tier = cat
            .1
            .tier(asked.tier)
            .filter(|t| t.version == asked.version && month.id == asked.month);
        let Some(tier) = tier else {
            // The lease is of another tier version or month: it cannot be spent any more.
            self.renewed(id, &asked, |l| l.renewing = false);
            return;
        };
        let quota = limits::quota_of(rec.quota, tier);
        let limits: Vec<Limit> = tier.limits.iter().map(Limit::to_micros).collect();
        let want = size.saturating_sub(asked.left).max(1);
        let outcome = self
            .run_check(
                id,
                &rec,
                None,
                (&limits, quota, month.id),
                (1, want),
                now_us,
            )
            .await;
        let (granted, used, tat) = match outcome {
            Ok(Outcome::State { granted, used, tat }) if granted > 0 => (granted, used, tat),
            Ok(Outcome::State { .. }) | Err(_) => {
                // Near a limit, or Redis did not answer: the lease runs out as it would have.
                self.renewed(id, &asked, |l| l.renewing = false);
                return;
            }
            Ok(Outcome::Missing | Outcome::Stale) => {
                // Deleted or changed: the lease ends now, rather than at its TTL.
                let ended = self.cache.get_mut(&id.0).and_then(|mut e| {
                    let same = e.lease.is_some_and(|l| l.until_ns == asked.until_ns);
                    if same {
                        e.lease.take()
                    } else {
                        None
                    }
                });
                if let Some(l) = ended.filter(|l| l.left > 0) {
                    self.give_back(id, &l).await;
                }
                return;
            }
        };
        self.stats.leases_taken.fetch_add(1, Ordering::Relaxed);
        self.stats.lease_renewals.fetch_add(1, Ordering::Relaxed);
        let mut tat_ns = [0u64; MAX_LIMITS];
        for (d, s) in tat_ns.iter_mut().zip(tat) {
            *d = s.saturating_mul(1_000);
        }
        let mut d = Decision::bare(
            Verdict::Allowed,
            Some(id),
            Some(asked.tier),
            now / NANOS_PER_SEC,
        );
        let terms = Terms {
            limits: &limits,
            quota,
            month: &month,
            enforce: tier.enforces(self.opts.shadow),
        };
        limits::decide(&tat_ns, used, now, 1, &terms, &mut d);
        let until_ns = now.saturating_add(ttl.as_nanos() as u64);
        let merged = self.renewed(id, &asked, |l| {
            // Redis's figures before this renewal, plus what the node still holds, are the
            // node's view: the template counts every held token as available.
            d.add_remaining(l.left + 1);
            l.template = d;
            l.spent = 0;
            l.left += granted;
            l.until_ns = until_ns;
            l.renewing = false;
        });
        if !merged {
            // The lease ended or was replaced meanwhile: the tokens go back at once.
            let mut back = asked;
            back.left = granted;
            self.give_back(id, &back).await;
        }
    }

    /// Applies `f` to the key's lease if it is still the one the renewal was asked for (a lease
    /// is known by its deadline: a new grant or a renewal sets a new one); whether it was.
    fn renewed(&self, id: KeyId, asked: &Lease, f: impl FnOnce(&mut Lease)) -> bool {
        let Some(mut e) = self.cache.get_mut(&id.0) else {
            return false;
        };
        match e.lease.as_mut() {
            Some(l) if l.renewing && l.until_ns == asked.until_ns => {
                f(l);
                true
            }
            _ => false,
        }
    }
}
