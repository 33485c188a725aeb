//! [`Store`] for [`RedisStore`]: every call is one or a few Redis round trips, awaited; a batch's
//! checks are all in flight at once and pipeline on the connections.

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use super::options::{FailPolicy, Mode};
use super::RedisStore;
use crate::engine::catalog_doc::RetiredPrefix;
use crate::engine::clock::Clock;
use crate::engine::decision::{AuthFailure, Decision, Verdict};
use crate::keys::record::{CreatedKey, KeyInfo, KeyUpdate, NewKey, Reset, Usage};
use crate::keys::KeyId;
use crate::store::{CheckRequest, Gauge, Health, Identity, KeyQuery, Store, StoreError};
use crate::tiers::TierSpec;

impl RedisStore {
    /// A check on the full path; a key refused as malformed or unknown may be an imported one,
    /// which does not name its id: found by its digest, it is checked again under that id.
    pub(super) async fn check_found(&self, r: CheckRequest<'_>) -> Decision {
        let d = self.check_one(r.key, None, r.scope, r.cost).await;
        if !matches!(
            d.verdict,
            Verdict::Unauthorized(AuthFailure::Malformed | AuthFailure::Unknown)
        ) {
            return d;
        }
        match self.imported_id(r.key.unwrap_or("")).await {
            Some(id) => self.check_one(r.key, Some(id), r.scope, r.cost).await,
            None => d,
        }
    }
}

impl Store for RedisStore {
    fn clock(&self) -> &Arc<dyn Clock> {
        &self.clock
    }

    async fn check<R: Send>(
        &self,
        req: CheckRequest<'_>,
        identity: Option<&mut (dyn FnMut(Identity<'_>) + Send)>,
        finish: impl FnOnce(&Decision) -> R + Send,
    ) -> R {
        let d = match self.try_lease(req.key, req.scope, req.cost) {
            Some(d) => d,
            None => self.check_found(req).await,
        };
        if let (true, Some(id), Some(f)) = (d.verdict.is_allowed(), d.key_id, identity) {
            self.lend_identity(id, f);
        }
        finish(&d)
    }

    async fn check_batch(
        &self,
        reqs: &[CheckRequest<'_>],
        each: &mut (dyn FnMut(usize, &Decision) + Send),
    ) {
        // What the node's leases answer needs no future; the rest go to Redis at once.
        let mut decided: Vec<Option<Decision>> = reqs
            .iter()
            .map(|r| self.try_lease(r.key, r.scope, r.cost))
            .collect();
        let misses: Vec<usize> = (0..reqs.len()).filter(|&i| decided[i].is_none()).collect();
        if !misses.is_empty() {
            for (i, d) in self.check_in_order(reqs, &misses).await {
                decided[i] = Some(d);
            }
        }
        for (i, d) in decided.iter().enumerate() {
            if let Some(d) = d {
                each(i, d);
            }
        }
    }

    async fn background(&self) {
        self.renewals().await;
    }

    fn stop_background(&self) {
        self.stop_renewals();
    }

    async fn create_keys(&self, news: Vec<NewKey>) -> Result<Vec<CreatedKey>, StoreError> {
        self.create_keys_in(news).await
    }

    async fn key(&self, id: KeyId) -> Result<KeyInfo, StoreError> {
        self.key_info(id).await
    }

    async fn list_keys(
        &self,
        query: KeyQuery<'_>,
    ) -> Result<(Vec<KeyInfo>, Option<KeyId>), StoreError> {
        self.list(query).await
    }

    async fn update_key(&self, id: KeyId, upd: KeyUpdate) -> Result<KeyInfo, StoreError> {
        self.update(id, upd).await
    }

    async fn revoke_key(&self, id: KeyId) -> Result<KeyInfo, StoreError> {
        self.revoke(id).await
    }

    async fn delete_key(&self, id: KeyId) -> Result<(), StoreError> {
        self.delete(id).await
    }

    async fn rotate_key(&self, id: KeyId, grace_secs: u64) -> Result<CreatedKey, StoreError> {
        self.rotate(id, grace_secs).await
    }

    async fn usage(&self, id: KeyId) -> Result<Usage, StoreError> {
        self.usage_of(id).await
    }

    async fn reset_counters(&self, id: KeyId, what: Reset) -> Result<(Usage, Usage), StoreError> {
        self.reset_of(id, what).await
    }

    async fn key_count(&self) -> Result<u64, StoreError> {
        self.count_keys().await
    }

    fn tiers(&self) -> Vec<TierSpec> {
        self.catalog.load().1.specs()
    }

    fn retired_prefixes(&self) -> Vec<RetiredPrefix> {
        self.catalog.load().1.doc().retired_prefixes.clone()
    }

    fn retired_prefix(&self, raw: &str) -> Option<RetiredPrefix> {
        self.catalog.load().1.retired_prefix(raw).cloned()
    }

    async fn retire_prefix(
        &self,
        prefix: String,
        sunset_at: u64,
    ) -> Result<RetiredPrefix, StoreError> {
        self.retire_prefix_named(&prefix, sunset_at).await
    }

    async fn restore_prefix(&self, prefix: String) -> Result<(), StoreError> {
        self.restore_prefix_named(&prefix).await
    }

    fn tier_keys(&self) -> Vec<(u16, u64)> {
        self.tier_keys_seen.lock().clone()
    }

    fn tier_names(&self) -> Vec<(u16, String)> {
        self.catalog
            .load()
            .1
            .tiers()
            .map(|(ix, t)| (ix, t.spec.name.clone()))
            .collect()
    }

    async fn put_tier(&self, spec: TierSpec) -> Result<TierSpec, StoreError> {
        self.put_tier_spec(spec).await
    }

    async fn delete_tier(&self, name: String) -> Result<(), StoreError> {
        self.delete_tier_named(&name).await
    }

    async fn apply_tiers(&self, specs: Vec<TierSpec>) -> Result<(), StoreError> {
        self.replace_all_tiers(specs).await
    }

    fn upkeep_interval(&self) -> Duration {
        self.opts.poll
    }

    async fn upkeep(&self, last: bool) -> Result<(), StoreError> {
        if !last {
            self.reopen_if_stuck().await;
            if let Err(e) = self.poll_catalog().await {
                tracing::debug!(error = %e, "catalog poll failed");
            }
            // `/health` answers from this, never waiting for Redis.
            if let Ok(n) = self.count_keys().await {
                self.stats.keys.store(n, Ordering::Relaxed);
                self.stats.keys_known.store(true, Ordering::Relaxed);
            }
            self.poll_imports().await;
            // And `/metrics` from this.
            let cat = self.catalog.load_full();
            if let Ok(per_index) = self.tier_use(cat.1.doc()).await {
                *self.tier_keys_seen.lock() = cat
                    .1
                    .tiers()
                    .map(|(ix, _)| (ix, per_index.get(usize::from(ix)).copied().unwrap_or(0)))
                    .collect();
            }
            // While Redis is down: one line per interval with the count, not one per call.
            if let Some(since) = self.stats.down_since_ns() {
                let failed = self.stats.unlogged_errors.swap(0, Ordering::Relaxed);
                if failed > 0 {
                    tracing::warn!(
                        store = %self.opts.shown_url(),
                        failed_calls = failed,
                        down_ms = self.clock.now_ns().saturating_sub(since) / 1_000_000,
                        "redis still unreachable"
                    );
                }
            }
        }
        self.return_leases(last).await;
        Ok(())
    }

    /// From the node's last known state: no Redis call, so it answers at once while Redis hangs.
    async fn health(&self) -> Health {
        let st = &self.stats;
        let keys = st.keys();
        let now = self.clock.now_ns();
        let last_ok = st.last_ok_ns();
        let ok = st.reachable();
        let o = &self.opts;
        let cluster = super::options::scheme(&o.url).is_some_and(|s| s.cluster);
        let mut fields = serde_json::Map::new();
        fields.insert("keys".into(), serde_json::json!(keys));
        fields.insert(
            "persistence".into(),
            serde_json::json!({
                "store": if cluster { "redis-cluster" } else { "redis" },
                "reachable": ok,
                "lastOkAgeSeconds": (last_ok != 0).then(|| (now.saturating_sub(last_ok) as f64 / 1e6).round() / 1e3),
                "unreachableForSeconds": st.down_since_ns().map(|t| (now.saturating_sub(t) as f64 / 1e6).round() / 1e3),
                "mode": match o.mode { Mode::Exact => "exact", Mode::Lease { .. } => "lease" },
                "failPolicy": match o.fail { FailPolicy::Closed => "fail-closed", FailPolicy::Open => "fail-open" },
                "catalogRevision": self.catalog.load().0,
            }),
        );
        Health { ok, fields }
    }

    fn gauges(&self) -> Vec<Gauge> {
        let st = &self.stats;
        let g = |name, kind, help, v: u64| Gauge {
            name,
            kind,
            help,
            value: v.to_string(),
        };
        vec![
            g(
                "quotad_store_reachable",
                "gauge",
                "1 when the last Redis call succeeded.",
                u64::from(st.reachable()),
            ),
            g(
                "quotad_store_errors_total",
                "counter",
                "Redis calls that failed or timed out.",
                st.errors(),
            ),
            g(
                "quotad_store_fail_open_total",
                "counter",
                "Checks admitted without Redis by the fail-open policy.",
                st.fail_open(),
            ),
            g(
                "quotad_store_stale_records_total",
                "counter",
                "Checks that found this node's copy of a key record stale (changed on another node).",
                st.stale_records(),
            ),
            g(
                "quotad_store_leases_total",
                "counter",
                "Leases taken from Redis (lease mode).",
                st.leases_taken(),
            ),
            g(
                "quotad_store_lease_renewals_total",
                "counter",
                "Leases topped up off the check path before they ran out (also in quotad_store_leases_total).",
                st.lease_renewals(),
            ),
            g(
                "quotad_store_lease_renewal_calls_total",
                "counter",
                "Script calls made to renew leases: renewals of keys on one master share a call.",
                st.renewal_calls(),
            ),
            g(
                "quotad_store_client_replacements_total",
                "counter",
                "Redis cluster clients replaced because every call failed although the cluster answered a new client.",
                st.client_replacements(),
            ),
            g(
                "quotad_store_lease_tokens_returned_total",
                "counter",
                "Unspent lease tokens given back to Redis.",
                st.leases_returned_tokens(),
            ),
            g(
                "quotad_store_local_checks_total",
                "counter",
                "Checks answered from a lease without a Redis call.",
                st.local_spends(),
            ),
            g(
                "quotad_store_unreplicated_changes_total",
                "counter",
                "Key or tier changes that returned before the wanted replicas acknowledged them.",
                st.unreplicated(),
            ),
        ]
    }
}
