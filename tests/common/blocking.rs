//! A store called synchronously: each call of the [`Store`] trait is `block_on` on a runtime of
//! the wrapper's own, so tests read like straight-line code.

use quotad::keys::record::{CreatedKey, KeyInfo, Reset, Usage};
use quotad::keys::{KeyId, KeyUpdate, NewKey};
use quotad::store::KeyQuery;
use quotad::tiers::TierSpec;
use quotad::{CheckRequest, Decision, Identity, Store, StoreError};

/// An admitted key's identity as [`Store::check`] lent it: id, consumer, tier.
pub type Who = (KeyId, String, String);

/// `store`, with a runtime to block on.
pub struct Blocking<S> {
    pub store: S,
    rt: tokio::runtime::Runtime,
}

impl<S: Store> Blocking<S> {
    pub fn new(store: S) -> Self {
        Blocking {
            store,
            rt: super::runtime(),
        }
    }

    /// A store made on the wrapper's runtime (a Redis store's connections run on the runtime
    /// that made them, and end with it).
    pub fn make(f: impl FnOnce(&tokio::runtime::Runtime) -> S) -> Self {
        let rt = super::runtime();
        Blocking { store: f(&rt), rt }
    }

    pub fn block_on<F: std::future::Future>(&self, f: F) -> F::Output {
        self.rt.block_on(f)
    }

    /// A check that asks for no identity.
    pub fn check(&self, key: Option<&str>, scope: Option<&str>, cost: u64) -> Decision {
        let req = CheckRequest { key, scope, cost };
        self.rt.block_on(self.store.check(req, None, |d| *d))
    }

    /// A check and the identity it lent (admitted checks only).
    pub fn identified(
        &self,
        key: Option<&str>,
        scope: Option<&str>,
        cost: u64,
    ) -> (Decision, Option<Who>) {
        let mut who = None;
        let mut lend = |i: Identity<'_>| {
            who = Some((i.id, i.consumer.to_string(), i.tier.to_string()));
        };
        let req = CheckRequest { key, scope, cost };
        let d = self
            .rt
            .block_on(self.store.check(req, Some(&mut lend), |d| *d));
        (d, who)
    }

    /// The checks as one batch, decisions in order.
    pub fn check_batch(&self, reqs: &[CheckRequest<'_>]) -> Vec<Decision> {
        let mut out = Vec::new();
        self.rt.block_on(self.store.check_batch(reqs, &mut |i, d| {
            assert_eq!(i, out.len(), "decisions come in order");
            out.push(*d);
        }));
        out
    }

    pub fn create_key(&self, n: NewKey) -> Result<CreatedKey, StoreError> {
        self.rt.block_on(self.store.create_key(n))
    }
    pub fn create_keys(&self, n: Vec<NewKey>) -> Result<Vec<CreatedKey>, StoreError> {
        self.rt.block_on(self.store.create_keys(n))
    }
    pub fn key(&self, id: KeyId) -> Result<KeyInfo, StoreError> {
        self.rt.block_on(self.store.key(id))
    }
    pub fn list_keys(
        &self,
        consumer: Option<&str>,
        tier: Option<&str>,
        after: Option<KeyId>,
        limit: usize,
    ) -> (Vec<KeyInfo>, Option<KeyId>) {
        self.rt
            .block_on(self.store.list_keys(KeyQuery {
                consumer,
                tier,
                after,
                limit,
            }))
            .expect("list keys")
    }
    pub fn update_key(&self, id: KeyId, u: KeyUpdate) -> Result<KeyInfo, StoreError> {
        self.rt.block_on(self.store.update_key(id, u))
    }
    pub fn delete_key(&self, id: KeyId) -> Result<(), StoreError> {
        self.block_on(self.store.delete_key(id))
    }
    pub fn revoke_key(&self, id: KeyId) -> Result<KeyInfo, StoreError> {
        self.rt.block_on(self.store.revoke_key(id))
    }
    pub fn rotate_key(&self, id: KeyId, grace: u64) -> Result<CreatedKey, StoreError> {
        self.rt.block_on(self.store.rotate_key(id, grace))
    }
    pub fn usage(&self, id: KeyId) -> Result<Usage, StoreError> {
        self.rt.block_on(self.store.usage(id))
    }
    pub fn reset_counters(&self, id: KeyId, what: Reset) -> Result<(Usage, Usage), StoreError> {
        self.rt.block_on(self.store.reset_counters(id, what))
    }
    pub fn key_count(&self) -> u64 {
        self.rt.block_on(self.store.key_count()).expect("key count")
    }
    pub fn tiers(&self) -> Vec<TierSpec> {
        self.store.tiers()
    }
    pub fn put_tier(&self, t: TierSpec) -> Result<TierSpec, StoreError> {
        self.rt.block_on(self.store.put_tier(t))
    }
    pub fn delete_tier(&self, name: &str) -> Result<(), StoreError> {
        self.rt.block_on(self.store.delete_tier(name.to_string()))
    }
    pub fn apply_tiers(&self, specs: Vec<TierSpec>) -> Result<(), StoreError> {
        self.rt.block_on(self.store.apply_tiers(specs))
    }
    /// The store's periodic upkeep (the local store's msync).
    pub fn upkeep(&self) -> Result<(), StoreError> {
        self.rt.block_on(self.store.upkeep(false))
    }
}
