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
        let key = self.k_key(id.slot());
        let mut inv = self.reset.key(&key);
        inv.arg(id.0)
            .arg(u8::from(what.burst))
            .arg(u8::from(what.monthly));
        let mut c = self.admin.clone();
        let done: i64 = self.admin_call(inv.invoke_async(&mut c)).await?;
        if done == 0 {
            return Err(StoreError::UnknownKey);
        }
        if let Some(mut e) = self.cache.get_mut(&id.0) {
            e.lease = None;
        }
        self.replicated(&[key]).await;
        Ok((before, self.usage_of(id).await?))
    }
}
