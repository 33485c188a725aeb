//! Lease renewal: a lease that runs low is topped up in the background, so that the checks of a
//! steadily used key are answered from the lease without waiting for Redis (`docs/SCALING.md`,
//! "Renewal").

use std::sync::atomic::Ordering;
use std::sync::Arc;

use futures_util::stream::{FuturesUnordered, StreamExt};
use redis::Value;

use super::check::{outcome, Outcome};
use super::conn::{int, once_per, RedisError};
use super::layout;
use super::lease::Lease;
use super::options::Mode;
use super::record::Rec;
use super::slots::SlotMap;
use super::RedisStore;
use crate::engine::bucket::Limit;
use crate::engine::clock::NANOS_PER_SEC;
use crate::engine::decision::{Decision, Verdict};
use crate::engine::limits::{self, Terms};
use crate::engine::month::MonthWindow;
use crate::keys::KeyId;
use crate::tiers::MAX_LIMITS;

/// The most renewals taken from the queue for one round.
const RENEW_BATCH: usize = 256;

/// Rounds of renewals in flight at once. While they are answered, the renewals asked for
/// meanwhile queue up, so that a busy node sends them in few calls.
const ROUNDS_IN_FLIGHT: usize = 2;

/// The most keys in one script call (one call holds its master for all of them).
const KEYS_PER_CALL: usize = 32;

/// Slot maps are read at most this often (ns).
const SLOTS_EVERY_NS: u64 = 1_000_000_000;

/// What a multi-key renewal call said of one key.
enum Answer {
    /// The check's answer (`None`: it failed).
    Got(Option<Outcome>),
    /// The master does not hold the key: nothing was done for it.
    Elsewhere,
}

/// One renewal, prepared: what the script is sent and what its answer is read with.
struct Renewal {
    id: KeyId,
    rec: Arc<Rec>,
    asked: Lease,
    limits: Vec<Limit>,
    quota: Option<u64>,
    month: MonthWindow,
    enforce: bool,
    want: u64,
    now_us: u64,
    hash: String,
}

impl RedisStore {
    /// Tops up the leases that run low, until [`Self::stop_renewals`]; then waits for the
    /// renewals in flight, so that no token taken from Redis is left unheld.
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
                // All the renewals asked for meanwhile make one round: one script call per
                // master, or one per key where the masters are not known.
                n = asked.recv_many(&mut ids, RENEW_BATCH), if inflight.len() < ROUNDS_IN_FLIGHT => {
                    if n == 0 {
                        break;
                    }
                    inflight.push(self.renew_round(std::mem::take(&mut ids)));
                }
            }
        }
        while inflight.next().await.is_some() {}
    }

    /// Ends [`Self::renewals`] once its renewals in flight are answered.
    pub(super) fn stop_renewals(&self) {
        self.renew_stop.notify_one();
    }

    /// Renews the leases of `ids`, the keys of each master together.
    async fn renew_round(&self, ids: Vec<u64>) {
        let all: Vec<Renewal> = ids
            .into_iter()
            .filter_map(|id| self.prepare(KeyId(id)))
            .collect();
        let mut groups: Vec<Vec<Renewal>> = Vec::new();
        let many = self.renew_many.load(Ordering::Relaxed);
        match (self.on_cluster(), many) {
            (false, true) => groups.push(all),
            (true, true) => {
                let map = self.slot_map().await;
                let mut by: Vec<(u16, Vec<Renewal>)> = Vec::new();
                for r in all {
                    match map.as_ref().and_then(|m| m.owner(&r.hash)) {
                        Some(o) => match by.iter_mut().find(|(x, _)| *x == o) {
                            Some((_, g)) => g.push(r),
                            None => by.push((o, vec![r])),
                        },
                        None => groups.push(vec![r]),
                    }
                }
                groups.extend(by.into_iter().map(|(_, g)| g));
            }
            (_, false) => groups.extend(all.into_iter().map(|r| vec![r])),
        }
        let calls = groups.into_iter().flat_map(|mut g| {
            let mut parts = Vec::new();
            while g.len() > KEYS_PER_CALL {
                parts.push(g.split_off(g.len() - KEYS_PER_CALL));
            }
            parts.push(g);
            parts
        });
        futures_util::future::join_all(calls.map(|g| self.renew_group(g))).await;
    }

    /// Renews `group`, keys on one master: one script call for all, or one each when there is
    /// one, or when Redis refused the call without running it; keys the master turned out not to
    /// hold (a slot moved) go on their own after the call.
    async fn renew_group(&self, group: Vec<Renewal>) {
        let single = if group.len() < 2 {
            group
        } else {
            match self.check_many(&group).await {
                Ok(answers) => {
                    let mut elsewhere = Vec::new();
                    for (r, a) in group.into_iter().zip(answers) {
                        match a {
                            Answer::Got(a) => self.renewed_with(r, a).await,
                            Answer::Elsewhere => elsewhere.push(r),
                        }
                    }
                    if !elsewhere.is_empty() {
                        tracing::debug!(keys = elsewhere.len(), "a master no longer holds keys of a renewal call (a slot moved): renewing them one by one");
                        self.slots.store(None);
                    }
                    elsewhere
                }
                Err(RedisError::Redis(e)) if matches!(e.kind(), redis::ErrorKind::Server(_)) => {
                    // Refused before it ran: nothing was taken, so each key goes on its own.
                    if e.is_cluster_error() {
                        self.slots.store(None);
                    } else if self.renew_many.swap(false, Ordering::Relaxed) {
                        tracing::info!(error = %e, "redis refused the multi-key renewal script; renewing leases one key a call");
                    }
                    group
                }
                Err(_) => {
                    // No answer: the script may have run, so nothing is asked again; the leases
                    // run out as they would have.
                    for r in group {
                        self.renewed_with(r, None).await;
                    }
                    return;
                }
            }
        };
        futures_util::future::join_all(single.into_iter().map(|r| async move {
            let counted = (&r.limits[..], r.quota, r.month.id);
            self.stats.renewal_calls.fetch_add(1, Ordering::Relaxed);
            let a = self
                .run_check(r.id, &r.rec, None, counted, (1, r.want), r.now_us)
                .await
                .ok();
            self.renewed_with(r, a).await;
        }))
        .await;
    }

    /// One call of [`super::scripts::CHECK_MANY`] on `group` (at least one key): each key's
    /// answer.
    async fn check_many(&self, group: &[Renewal]) -> Result<Vec<Answer>, RedisError> {
        let mut inv = self.check_many.prepare_invoke();
        if let Some(first) = group.first() {
            inv.key(&first.hash);
        }
        for r in group {
            inv.arg(&r.hash);
            layout::check_args(
                &mut inv,
                Some(r.rec.version),
                (r.now_us, 1, r.want),
                (&r.limits, r.quota, r.month.id),
            );
        }
        self.stats.renewal_calls.fetch_add(1, Ordering::Relaxed);
        let mut c = self.conn();
        let v: Value = self.call(inv.invoke_async(&mut c)).await?;
        let bad = || RedisError::Reply(format!("renewal script returned {v:?}"));
        let Value::Array(answers) = &v else {
            return Err(bad());
        };
        if answers.len() != group.len() {
            return Err(bad());
        }
        Ok(answers
            .iter()
            .zip(group)
            .map(|(a, r)| match a {
                Value::Array(a) if a.first().and_then(int) == Some(4) => Answer::Elsewhere,
                Value::Array(a) => Answer::Got(outcome(a, r.limits.len()).ok()),
                _ => Answer::Got(None),
            })
            .collect())
    }

    /// The cluster's slot map, read if missing (at most once a second).
    async fn slot_map(&self) -> Option<Arc<SlotMap>> {
        if let Some(m) = self.slots.load_full() {
            return Some(m);
        }
        if !once_per(&self.slots_asked_ns, self.clock.now_ns(), SLOTS_EVERY_NS) {
            return None;
        }
        let mut c = self.conn();
        let v: Value = self
            .call(redis::cmd("CLUSTER").arg("SLOTS").query_async(&mut c))
            .await
            .ok()?;
        let m = Arc::new(SlotMap::parse(&v)?);
        self.slots.store(Some(m.clone()));
        Some(m)
    }

    /// What a renewal of key `id`'s lease asks of Redis: up to what the lease is missing of its
    /// size. `None` when there is nothing to renew (the lease ended, or is of another tier
    /// version or month, and cannot be spent any more).
    fn prepare(&self, id: KeyId) -> Option<Renewal> {
        let Mode::Lease { size, .. } = self.opts.mode else {
            return None;
        };
        let (rec, asked) = self
            .cache
            .get(&id.0)
            .and_then(|e| Some((e.rec.clone(), e.lease?)))?;
        let now_us = self.clock.now_ns() / 1_000;
        let month = MonthWindow::containing(now_us * 1_000);
        let cat = self.catalog.load_full();
        let tier = cat
            .1
            .tier(asked.tier)
            .filter(|t| t.version == asked.version && month.id == asked.month);
        let Some(tier) = tier else {
            self.renewed(id, &asked, |l| l.renewing = false);
            return None;
        };
        Some(Renewal {
            id,
            quota: limits::quota_of(rec.quota, tier),
            limits: tier.limits.iter().map(Limit::to_micros).collect(),
            enforce: tier.enforces(self.opts.shadow),
            want: size.saturating_sub(asked.left).max(1),
            hash: self.k_key(id.slot()),
            rec,
            asked,
            month,
            now_us,
        })
    }

    /// Adds what Redis granted to renewal `r` (`None`: no answer) to the key's lease, which then
    /// lasts a full TTL from now: the script checked the record version, so a revoke or change
    /// made before now holds on this node within a TTL, as without renewal.
    async fn renewed_with(&self, r: Renewal, answer: Option<Outcome>) {
        let Mode::Lease { ttl, .. } = self.opts.mode else {
            return;
        };
        let (id, asked) = (r.id, r.asked);
        let (granted, used, tat) = match answer {
            Some(Outcome::State { granted, used, tat }) if granted > 0 => (granted, used, tat),
            Some(Outcome::State { .. }) | None => {
                // Near a limit, or Redis did not answer: the lease runs out as it would have.
                self.renewed(id, &asked, |l| l.renewing = false);
                return;
            }
            Some(Outcome::Missing | Outcome::Stale) => {
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
        let now = r.now_us * 1_000;
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
            limits: &r.limits,
            quota: r.quota,
            month: &r.month,
            enforce: r.enforce,
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
