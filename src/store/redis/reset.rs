//! An operator's reset of a key's counters on Redis: one script on the key's hash sets its burst
//! buckets to full and/or its month's usage to 0, then the change waits for replicas like any
//! admin change.

use super::RedisStore;
use crate::keys::record::{Reset, Usage};
use crate::keys::KeyId;
use crate::store::StoreError;

impl RedisStore {
    /// Resets key `id`'s counters as `what` says; the usage before and after. Leases other nodes
    /// hold on the key are spent as they would have been (within a lease TTL, at most the lease
    /// size each); this node's is dropped, so that its next check reads the reset figures.
    pub(super) async fn reset_of(
        &self,
        id: KeyId,
        what: Reset,
    ) -> Result<(Usage, Usage), StoreError> {
        let before = self.usage_of(id).await?;
        let rec = self.fetch(id).await?.ok_or(StoreError::UnknownKey)?;
        let key = self.counters_hash(&rec, &self.catalog.load().1);
        let own = (key == self.k_key(id.slot())).then_some(id);
        self.reset_hash(&key, own, what).await?;
        if let Some(mut e) = self.cache.get_mut(&id.0) {
            e.lease = None;
        }
        self.replicated(&[key]).await;
        Ok((before, self.usage_of(id).await?))
    }

    /// Runs the reset script on `key`: key `own`'s hash, or a consumer group's (`None`).
    pub(super) async fn reset_hash(
        &self,
        key: &str,
        own: Option<KeyId>,
        what: Reset,
    ) -> Result<(), StoreError> {
        let mut inv = self.reset.key(key);
        match own {
            Some(id) => inv.arg(id.0),
            None => inv.arg(""),
        };
        inv.arg(u8::from(what.burst)).arg(u8::from(what.monthly));
        let mut c = self.admin();
        let done: i64 = self.admin_call(inv.invoke_async(&mut c)).await?;
        if done == 0 {
            return Err(StoreError::UnknownKey);
        }
        Ok(())
    }
}
