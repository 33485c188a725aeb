//! The store a daemon runs on: the memory-mapped [`Engine`] of one node (the default) or the
//! [`RedisStore`] shared by several nodes. Transports hold a [`Backend`] and never care which:
//! the same checks, decisions and admin operations either way.
//!
//! The engine's calls are synchronous (a check is ~100 ns; admin calls may `fsync`, so they run
//! on the blocking pool); the Redis store's are network round trips, awaited.

use std::sync::Arc;
use std::time::Duration;

use crate::engine::clock::Clock;
use crate::engine::decision::Decision;
use crate::engine::{Engine, EngineError};
use crate::keys::record::{CreatedKey, KeyInfo, KeyUpdate, NewKey, Usage};
use crate::keys::KeyId;
use crate::store::redis::RedisStore;
use crate::tiers::TierSpec;

/// Where keys, tiers and counters live.
#[derive(Debug, Clone)]
pub enum Backend {
    /// One node, memory-mapped files.
    Local(Arc<Engine>),
    /// Several nodes, Redis or Redis Cluster.
    Redis(Arc<RedisStore>),
}

/// Runs a blocking engine call (it may fsync) off the async workers.
async fn blocking<T: Send + 'static>(
    engine: &Arc<Engine>,
    f: impl FnOnce(&Engine) -> Result<T, EngineError> + Send + 'static,
) -> Result<T, EngineError> {
    let e = engine.clone();
    match tokio::task::spawn_blocking(move || f(&e)).await {
        Ok(r) => r,
        Err(join) => Err(EngineError::Invalid(format!("admin task failed: {join}"))),
    }
}

impl Backend {
    /// The engine, when this node runs on its own files (transports take a synchronous fast
    /// path then).
    pub fn local(&self) -> Option<&Arc<Engine>> {
        match self {
            Backend::Local(e) => Some(e),
            Backend::Redis(_) => None,
        }
    }

    /// How often [`Backend::upkeep`] runs: the msync interval on this node's files, the catalog
    /// poll interval on Redis.
    pub fn upkeep_interval(&self, msync_interval: Duration) -> Duration {
        match self {
            Backend::Local(_) => msync_interval,
            Backend::Redis(r) => r.options().poll,
        }
    }

    /// Periodic upkeep. On this node's files: msync the counters (bounds what a power loss can
    /// cost). On Redis: apply a catalog changed by another node, give back expired leases. With
    /// `last` (at shutdown, once no check runs any more): the final msync, or every lease given
    /// back.
    pub async fn upkeep(&self, last: bool) -> Result<(), EngineError> {
        match self {
            Backend::Local(e) => blocking(e, |e| e.flush()).await,
            Backend::Redis(r) => {
                if !last {
                    if let Err(e) = r.poll_catalog().await {
                        tracing::debug!(error = %e, "catalog poll failed");
                    }
                }
                r.return_leases(last).await;
                Ok(())
            }
        }
    }

    /// The store's clock.
    pub fn clock(&self) -> &Arc<dyn Clock> {
        match self {
            Backend::Local(e) => e.clock(),
            Backend::Redis(r) => r.clock(),
        }
    }

    /// One check; see [`Engine::check`].
    pub async fn check(&self, key: Option<&str>, scope: Option<&str>, cost: u64) -> Decision {
        match self {
            Backend::Local(e) => e.check(key, scope, cost),
            Backend::Redis(r) => r.check(key, scope, cost).await,
        }
    }

    /// One check, lending an admitted key's id, consumer and tier name to `identity` (for the
    /// check's response); see [`Engine::check_identified`]. The Redis store reads them from the
    /// record this node cached for the check; if that is gone, `identity` is not called.
    pub async fn check_identified(
        &self,
        key: Option<&str>,
        scope: Option<&str>,
        cost: u64,
        identity: &mut (dyn FnMut(KeyId, &str, &str) + Send),
    ) -> Decision {
        match self {
            Backend::Local(e) => e.check_identified(key, scope, cost, identity),
            Backend::Redis(r) => {
                let d = r.check(key, scope, cost).await;
                if let (true, Some(id)) = (d.verdict.is_allowed(), d.key_id) {
                    r.lend_identity(id, identity);
                }
                d
            }
        }
    }

    /// Number of keys.
    pub async fn key_count(&self) -> Result<u64, EngineError> {
        match self {
            Backend::Local(e) => Ok(e.key_count()),
            Backend::Redis(r) => r.key_count().await,
        }
    }

    /// Every tier in force.
    pub fn tiers(&self) -> Vec<TierSpec> {
        match self {
            Backend::Local(e) => e.tiers(),
            Backend::Redis(r) => r.tiers(),
        }
    }

    /// Creates one key.
    pub async fn create_key(&self, new: NewKey) -> Result<CreatedKey, EngineError> {
        let mut v = self.create_keys(vec![new]).await?;
        v.pop()
            .ok_or_else(|| EngineError::Invalid("no key created".into()))
    }

    /// Creates many keys.
    pub async fn create_keys(&self, news: Vec<NewKey>) -> Result<Vec<CreatedKey>, EngineError> {
        match self {
            Backend::Local(e) => blocking(e, move |e| e.create_keys(news)).await,
            Backend::Redis(r) => r.create_keys(news).await,
        }
    }

    /// The record of one key.
    pub async fn key(&self, id: KeyId) -> Result<KeyInfo, EngineError> {
        match self {
            Backend::Local(e) => e.key(id),
            Backend::Redis(r) => r.key(id).await,
        }
    }

    /// A page of keys.
    pub async fn list_keys(
        &self,
        consumer: Option<&str>,
        tier: Option<&str>,
        after: Option<KeyId>,
        limit: usize,
    ) -> Result<(Vec<KeyInfo>, Option<KeyId>), EngineError> {
        match self {
            Backend::Local(e) => Ok(e.list_keys(consumer, tier, after, limit)),
            Backend::Redis(r) => r.list_keys(consumer, tier, after, limit).await,
        }
    }

    /// Changes a key.
    pub async fn update_key(&self, id: KeyId, upd: KeyUpdate) -> Result<KeyInfo, EngineError> {
        match self {
            Backend::Local(e) => blocking(e, move |e| e.update_key(id, upd)).await,
            Backend::Redis(r) => r.update_key(id, upd).await,
        }
    }

    /// Revokes a key.
    pub async fn revoke_key(&self, id: KeyId) -> Result<KeyInfo, EngineError> {
        match self {
            Backend::Local(e) => blocking(e, move |e| e.revoke_key(id)).await,
            Backend::Redis(r) => r.revoke_key(id).await,
        }
    }

    /// Rotates a key's secret.
    pub async fn rotate_key(&self, id: KeyId, grace_secs: u64) -> Result<CreatedKey, EngineError> {
        match self {
            Backend::Local(e) => blocking(e, move |e| e.rotate_key(id, grace_secs)).await,
            Backend::Redis(r) => r.rotate_key(id, grace_secs).await,
        }
    }

    /// Live usage of a key.
    pub async fn usage(&self, id: KeyId) -> Result<Usage, EngineError> {
        match self {
            Backend::Local(e) => e.usage(id),
            Backend::Redis(r) => r.usage(id).await,
        }
    }

    /// Creates or replaces a tier.
    pub async fn put_tier(&self, spec: TierSpec) -> Result<TierSpec, EngineError> {
        match self {
            Backend::Local(e) => blocking(e, move |e| e.put_tier(spec)).await,
            Backend::Redis(r) => r.put_tier(spec).await,
        }
    }

    /// Deletes an unused tier.
    pub async fn delete_tier(&self, name: String) -> Result<(), EngineError> {
        match self {
            Backend::Local(e) => blocking(e, move |e| e.delete_tier(&name)).await,
            Backend::Redis(r) => r.delete_tier(&name).await,
        }
    }

    /// Replaces the set of tiers.
    pub async fn apply_tiers(&self, specs: Vec<TierSpec>) -> Result<(), EngineError> {
        match self {
            Backend::Local(e) => blocking(e, move |e| e.apply_tiers(specs)).await,
            Backend::Redis(r) => r.apply_tiers(specs).await,
        }
    }
}
