//! Lease mode: a node takes several tokens of a key at once, spends them locally until they run
//! out or expire, and gives back what it did not spend (`docs/SCALING.md` has the bounds).

use std::sync::atomic::Ordering;

use super::layout;
use super::options::Mode;
use super::RedisStore;
use crate::engine::bucket::Limit;
use crate::engine::catalog::CompiledTier;
use crate::engine::clock::NANOS_PER_SEC;
use crate::engine::decision::Decision;
use crate::keys::KeyId;

/// Tokens a node holds for one key (lease mode).
#[derive(Debug, Clone, Copy)]
pub(super) struct Lease {
    /// Tokens not yet spent.
    pub(super) left: u64,
    /// The month they were taken in (they are never spent in another).
    pub(super) month: u32,
    /// Spend-by instant, ns.
    pub(super) until_ns: u64,
    /// The tier whose limits they were taken under.
    pub(super) tier: u16,
    pub(super) version: u16,
    /// The decision at the grant, figures counting the whole lease as still available.
    pub(super) template: Decision,
    /// Tokens spent from it so far (subtracted from the template's figures).
    pub(super) spent: u64,
    /// A renewal has been asked for and not yet answered.
    pub(super) renewing: bool,
}

impl RedisStore {
    /// Gives back the unspent tokens of expired leases (all leases when `all`).
    pub(super) async fn return_leases(&self, all: bool) {
        if !matches!(self.opts.mode, Mode::Lease { .. }) {
            return;
        }
        let now = self.clock.now_ns();
        let mut back = Vec::new();
        // Only the keys holding a lease are visited, not the whole cache.
        let held: Vec<u64> = self.leased.lock().iter().copied().collect();
        for id in held {
            let Some(mut e) = self.cache.get_mut(&id) else {
                self.leased.lock().remove(&id);
                continue;
            };
            match e.lease {
                Some(l) if all || now >= l.until_ns => {
                    e.lease = None;
                    drop(e);
                    self.leased.lock().remove(&id);
                    if l.left > 0 {
                        back.push((id, l));
                    }
                }
                Some(_) => {}
                None => {
                    drop(e);
                    self.leased.lock().remove(&id);
                }
            }
        }
        // All at once: one by one, a Redis that does not answer would hold the upkeep for a
        // timeout per lease.
        futures_util::future::join_all(back.iter().map(|(id, l)| self.give_back(KeyId(*id), l)))
            .await;
    }

    pub(super) async fn give_back(&self, id: KeyId, l: &Lease) {
        // The limits the lease was taken under, at the script's resolution.
        let sig = {
            let cat = self.catalog.load();
            match cat.1.tier(l.tier).and_then(|t| t.limits_at(l.version)) {
                Some(limits) => {
                    let m: Vec<Limit> = limits.iter().map(Limit::to_micros).collect();
                    layout::signature(&m)
                }
                None => return,
            }
        };
        let mut inv = self.give_back.key(self.k_key(id.slot()));
        layout::return_args(&mut inv, l.left, l.month, sig);
        let mut c = self.conn();
        match self.call(inv.invoke_async::<i64>(&mut c)).await {
            Ok(_) => {
                self.stats
                    .leases_returned_tokens
                    .fetch_add(l.left, Ordering::Relaxed);
            }
            Err(e) => {
                tracing::warn!(key_id = %id, tokens = l.left, error = %e, "could not give back a lease; its tokens stay spent")
            }
        }
    }

    /// Spends `cost` from this node's lease on the key, if it holds enough of a current one.
    pub(super) fn spend_lease(
        &self,
        id: KeyId,
        version: u64,
        (tier_ix, tier): (u16, &CompiledTier),
        cost: u64,
        now: u64,
        month: u32,
    ) -> Option<Decision> {
        let Mode::Lease { size, .. } = self.opts.mode else {
            return None;
        };
        let mut e = self.cache.get_mut(&id.0)?;
        if e.rec.version != version {
            return None;
        }
        let (d, renew) =
            e.lease
                .as_mut()?
                .spend((tier_ix, tier.version), cost, now, month, size)?;
        drop(e);
        if renew {
            self.ask_renewal(id);
        }
        self.stats.local_spends.fetch_add(1, Ordering::Relaxed);
        Some(d)
    }

    /// Asks the renewal task to top up key `id`'s lease; if its queue is full, the lease runs
    /// out as it would have without renewal (and may be asked for again by a later check).
    pub(super) fn ask_renewal(&self, id: KeyId) {
        if self.renew_tx.try_send(id.0).is_err() {
            if let Some(mut e) = self.cache.get_mut(&id.0) {
                if let Some(l) = e.lease.as_mut() {
                    l.renewing = false;
                }
            }
        }
    }
}

impl Lease {
    /// Spends `cost` from this lease if it holds enough, is unexpired and was taken in `month`
    /// under tier `tier` at `version`: the decision, and whether a renewal should now be asked
    /// for (marked as asked).
    pub(super) fn spend(
        &mut self,
        (tier, version): (u16, u16),
        cost: u64,
        now: u64,
        month: u32,
        size: u64,
    ) -> Option<(Decision, bool)> {
        if self.left < cost
            || now >= self.until_ns
            || self.month != month
            || self.tier != tier
            || self.version != version
        {
            return None;
        }
        self.left -= cost;
        self.spent += cost;
        // Running low: ask the renewal task to top it up before it runs out, so that the next
        // checks need no round trip. Never more than `size` held: the top-up is what is missing.
        let renew = !self.renewing && self.left <= (size / 10).max(1);
        self.renewing |= renew;
        let mut d = self.template;
        d.sub_remaining(self.spent);
        d.now_s = now / NANOS_PER_SEC;
        Some((d, renew))
    }
}
