//! [`Store`] for [`LocalStore`]: checks run on the caller's thread (a check is a fraction of a
//! microsecond and never blocks); admin calls, which may `msync` and `fsync`, run on tokio's
//! blocking pool.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use super::{Local, LocalStore};
use crate::engine::catalog_doc::RetiredPrefix;
use crate::engine::clock::Clock;
use crate::engine::decision::Decision;
use crate::keys::record::{CreatedKey, KeyInfo, KeyUpdate, NewKey, Reset, Usage};
use crate::keys::KeyId;
use crate::store::{CheckRequest, Gauge, Health, Identity, KeyQuery, Store, StoreError};
use crate::tiers::TierSpec;

impl LocalStore {
    /// Runs an admin call (it may fsync) off the async workers.
    fn blocking<T: Send + 'static>(
        &self,
        f: impl FnOnce(&Local) -> Result<T, StoreError> + Send + 'static,
    ) -> impl Future<Output = Result<T, StoreError>> + Send {
        let inner = self.inner.clone();
        async move {
            match tokio::task::spawn_blocking(move || f(&inner)).await {
                Ok(r) => r,
                Err(join) => Err(StoreError::invalid(format!("admin task failed: {join}"))),
            }
        }
    }

    /// Seconds since the counters were last msynced.
    fn msync_age_secs(&self) -> f64 {
        let i = &self.inner;
        i.clock
            .now_ns()
            .saturating_sub(i.last_flush_ns.load(std::sync::atomic::Ordering::Relaxed))
            as f64
            / 1e9
    }
}

impl Store for LocalStore {
    fn clock(&self) -> &Arc<dyn Clock> {
        &self.inner.clock
    }

    async fn check<R: Send>(
        &self,
        req: CheckRequest<'_>,
        identity: Option<&mut (dyn FnMut(Identity<'_>) + Send)>,
        finish: impl FnOnce(&Decision) -> R + Send,
    ) -> R {
        self.inner.check_one(req, identity, finish)
    }

    async fn check_batch(
        &self,
        reqs: &[CheckRequest<'_>],
        each: &mut (dyn FnMut(usize, &Decision) + Send),
    ) {
        self.inner.check_batch(reqs, each)
    }

    async fn create_keys(&self, news: Vec<NewKey>) -> Result<Vec<CreatedKey>, StoreError> {
        self.blocking(move |l| l.create_keys(news)).await
    }

    async fn key(&self, id: KeyId) -> Result<KeyInfo, StoreError> {
        self.inner.key(id)
    }

    async fn list_keys(
        &self,
        query: KeyQuery<'_>,
    ) -> Result<(Vec<KeyInfo>, Option<KeyId>), StoreError> {
        Ok(self.inner.list_keys(query))
    }

    async fn update_key(&self, id: KeyId, upd: KeyUpdate) -> Result<KeyInfo, StoreError> {
        self.blocking(move |l| l.update_key(id, upd)).await
    }

    async fn revoke_key(&self, id: KeyId) -> Result<KeyInfo, StoreError> {
        self.blocking(move |l| l.revoke_key(id)).await
    }

    async fn delete_key(&self, id: KeyId) -> Result<(), StoreError> {
        self.blocking(move |l| l.delete_key(id)).await
    }

    async fn rotate_key(&self, id: KeyId, grace_secs: u64) -> Result<CreatedKey, StoreError> {
        self.blocking(move |l| l.rotate_key(id, grace_secs)).await
    }

    async fn usage(&self, id: KeyId) -> Result<Usage, StoreError> {
        self.inner.usage(id)
    }

    async fn reset_counters(&self, id: KeyId, what: Reset) -> Result<(Usage, Usage), StoreError> {
        self.inner.reset_counters(id, what)
    }

    async fn key_count(&self) -> Result<u64, StoreError> {
        Ok(self.inner.live_keys())
    }

    fn tiers(&self) -> Vec<TierSpec> {
        self.inner.catalog.load().specs()
    }

    fn retired_prefixes(&self) -> Vec<RetiredPrefix> {
        self.inner.catalog.load().doc().retired_prefixes.clone()
    }

    fn retired_prefix(&self, raw: &str) -> Option<RetiredPrefix> {
        self.inner.catalog.load().retired_prefix(raw).cloned()
    }

    async fn retire_prefix(
        &self,
        prefix: String,
        sunset_at: u64,
    ) -> Result<RetiredPrefix, StoreError> {
        self.blocking(move |l| l.retire_prefix(&prefix, sunset_at))
            .await
    }

    async fn restore_prefix(&self, prefix: String) -> Result<(), StoreError> {
        self.blocking(move |l| l.restore_prefix(&prefix)).await
    }

    fn tier_keys(&self) -> Vec<(u16, u64)> {
        self.keys_per_tier()
    }

    fn tier_names(&self) -> Vec<(u16, String)> {
        self.inner
            .catalog
            .load()
            .tiers()
            .map(|(ix, t)| (ix, t.spec.name.clone()))
            .collect()
    }

    async fn put_tier(&self, spec: TierSpec) -> Result<TierSpec, StoreError> {
        self.blocking(move |l| l.put_tier(spec)).await
    }

    async fn delete_tier(&self, name: String) -> Result<(), StoreError> {
        self.blocking(move |l| l.delete_tier(&name)).await
    }

    async fn apply_tiers(&self, specs: Vec<TierSpec>) -> Result<(), StoreError> {
        self.blocking(move |l| l.apply_tiers(specs)).await
    }

    fn upkeep_interval(&self) -> Duration {
        self.inner.msync_interval
    }

    async fn upkeep(&self, _last: bool) -> Result<(), StoreError> {
        self.blocking(|l| l.flush()).await
    }

    async fn health(&self) -> Health {
        let age = self.msync_age_secs();
        let mut fields = serde_json::Map::new();
        fields.insert(
            "dataDir".into(),
            self.inner.data_dir.display().to_string().into(),
        );
        fields.insert("keys".into(), self.inner.live_keys().into());
        fields.insert(
            "persistence".into(),
            serde_json::json!({
                "store": "mmap",
                "lastMsyncAgeSeconds": (age * 1000.0).round() / 1000.0,
                "msyncIntervalSeconds": self.inner.msync_interval.as_secs_f64(),
            }),
        );
        Health { ok: true, fields }
    }

    fn gauges(&self) -> Vec<Gauge> {
        vec![Gauge {
            name: "quotad_last_msync_age_seconds",
            kind: "gauge",
            help: "Seconds since the counters were last msynced to disk.",
            value: format!("{:.3}", self.msync_age_secs()),
        }]
    }
}
