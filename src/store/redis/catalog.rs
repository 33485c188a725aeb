//! The catalog in Redis: one hash with a revision and the JSON document, changed by
//! compare-and-set, polled by every node, and the tier administration built on it.

use std::collections::HashMap;
use std::sync::Arc;

use super::RedisStore;
use crate::engine::catalog::Catalog;
use crate::engine::catalog_doc::CatalogError;
use crate::engine::catalog_doc::{self, CatalogDoc, RetiredPrefix};
use crate::engine::key_rules::random_u64;
use crate::store::StoreError;
use crate::tiers::{self, TierSpec};

impl RedisStore {
    pub(super) async fn init_catalog(&self) -> Result<(), StoreError> {
        for _ in 0..10 {
            let (rev, doc) = self.read_catalog().await?;
            let fresh = doc.is_none();
            let mut doc = match doc {
                Some(d) => d,
                None => CatalogDoc::new(random_u64()?, tiers::builtin_tiers()),
            };
            let before = doc.clone();
            if let Some(t) = self.opts.tiers.clone() {
                let use_ = self.tier_use(&doc).await?;
                catalog_doc::replace_tiers(&mut doc, &use_, t)?;
            }
            let compiled = Catalog::compile(doc.clone())?;
            if fresh || doc != before {
                match self.cas_catalog(rev, &doc).await? {
                    Some(nrev) => {
                        self.replicated(&[self.k_catalog()]).await;
                        self.catalog.store(Arc::new((nrev, compiled)));
                        return Ok(());
                    }
                    None => continue,
                }
            }
            self.catalog.store(Arc::new((rev, compiled)));
            return Ok(());
        }
        Err(StoreError::invalid(
            "the catalog kept changing under us; try again",
        ))
    }

    async fn read_catalog(&self) -> Result<(u64, Option<CatalogDoc>), StoreError> {
        let mut c = self.conn();
        let key = self.k_catalog();
        let (rev, doc): (Option<u64>, Option<String>) = self
            .call(
                redis::cmd("HMGET")
                    .arg(&key)
                    .arg("rev")
                    .arg("doc")
                    .query_async(&mut c),
            )
            .await?;
        let doc = match doc {
            None => None,
            Some(d) => Some(serde_json::from_str::<CatalogDoc>(&d).map_err(|e| {
                StoreError::invalid(format!("redis key {key}: catalog is not valid: {e}"))
            })?),
        };
        Ok((rev.unwrap_or(0), doc))
    }

    async fn cas_catalog(&self, rev: u64, doc: &CatalogDoc) -> Result<Option<u64>, StoreError> {
        let json =
            serde_json::to_string(doc).map_err(|e| StoreError::invalid(format!("catalog: {e}")))?;
        let mut c = self.admin();
        let r: i64 = self
            .admin_call(
                self.put_catalog
                    .key(self.k_catalog())
                    .arg(rev)
                    .arg(json)
                    .invoke_async(&mut c),
            )
            .await?;
        Ok(u64::try_from(r).ok())
    }

    pub(super) async fn tier_use(&self, doc: &CatalogDoc) -> Result<Vec<u64>, StoreError> {
        let mut c = self.conn();
        let m: HashMap<String, u64> = self
            .call(
                redis::cmd("HGETALL")
                    .arg(self.k_tier_use())
                    .query_async(&mut c),
            )
            .await?;
        Ok(doc
            .tiers
            .iter()
            .map(|t| {
                t.as_ref()
                    .and_then(|t| m.get(&t.name).copied())
                    .unwrap_or(0)
            })
            .collect())
    }

    /// Re-reads the catalog if its revision moved. Returns whether it changed.
    pub(super) async fn poll_catalog(&self) -> Result<bool, StoreError> {
        let mut c = self.conn();
        let rev: Option<u64> = self
            .call(
                redis::cmd("HGET")
                    .arg(self.k_catalog())
                    .arg("rev")
                    .query_async(&mut c),
            )
            .await?;
        if rev.unwrap_or(0) == self.catalog.load().0 {
            return Ok(false);
        }
        let (rev, doc) = self.read_catalog().await?;
        if let Some(doc) = doc {
            match Catalog::compile(doc) {
                Ok(cat) => {
                    tracing::info!(revision = rev, "tiers changed on another node: applied");
                    self.catalog.store(Arc::new((rev, cat)));
                    return Ok(true);
                }
                Err(e) => {
                    tracing::error!(error = %e, "catalog in redis does not compile; keeping the one in force")
                }
            }
        }
        Ok(false)
    }

    // ----- admin: tiers ----------------------------------------------------------------------

    async fn change_catalog(
        &self,
        f: impl Fn(&mut CatalogDoc, &[u64]) -> Result<(), StoreError>,
    ) -> Result<(), StoreError> {
        for _ in 0..10 {
            let (rev, doc) = self.read_catalog().await?;
            let mut doc = doc.ok_or_else(|| StoreError::invalid("no catalog in redis"))?;
            let use_ = self.tier_use(&doc).await?;
            f(&mut doc, &use_)?;
            let compiled = Catalog::compile(doc.clone())?;
            if let Some(nrev) = self.cas_catalog(rev, &doc).await? {
                self.replicated(&[self.k_catalog()]).await;
                self.catalog.store(Arc::new((nrev, compiled)));
                return Ok(());
            }
        }
        Err(StoreError::invalid(
            "the tiers kept changing under us; try again",
        ))
    }

    /// Creates or replaces a tier; every node applies it within the poll interval.
    pub(super) async fn put_tier_spec(&self, spec: TierSpec) -> Result<TierSpec, StoreError> {
        let spec = spec.normalized();
        spec.validate().map_err(CatalogError::from)?;
        self.change_catalog(|doc, use_| Ok(catalog_doc::put_tier_in(doc, use_, &spec)?))
            .await?;
        Ok(spec)
    }

    /// Deletes a tier no key uses.
    pub(super) async fn delete_tier_named(&self, name: &str) -> Result<(), StoreError> {
        self.change_catalog(|doc, use_| Ok(catalog_doc::delete_tier_in(doc, use_, name)?))
            .await
    }

    /// Retires key `prefix` until `sunset_at`; every node applies it within the poll interval.
    pub(super) async fn retire_prefix_named(
        &self,
        prefix: &str,
        sunset_at: u64,
    ) -> Result<RetiredPrefix, StoreError> {
        let now = self.clock.now_ns() / crate::engine::clock::NANOS_PER_SEC;
        let out = std::sync::Mutex::new(None);
        self.change_catalog(|doc, _| {
            let r = catalog_doc::retire_prefix_in(doc, prefix, sunset_at, now)?;
            if let Ok(mut o) = out.lock() {
                *o = Some(r);
            }
            Ok(())
        })
        .await?;
        out.into_inner()
            .ok()
            .flatten()
            .ok_or_else(|| StoreError::invalid("prefix not retired"))
    }

    /// Takes `prefix` off the retired list.
    pub(super) async fn restore_prefix_named(&self, prefix: &str) -> Result<(), StoreError> {
        self.change_catalog(|doc, _| Ok(catalog_doc::restore_prefix_in(doc, prefix)?))
            .await
    }

    /// Replaces the whole set of tiers.
    pub(super) async fn replace_all_tiers(&self, specs: Vec<TierSpec>) -> Result<(), StoreError> {
        self.change_catalog(|doc, use_| Ok(catalog_doc::replace_tiers(doc, use_, specs.clone())?))
            .await
    }
}
