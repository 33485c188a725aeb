//! Key administration on Redis: records written with a version check (so concurrent changes
//! from several nodes never overwrite each other), then waited for on a replica.

use std::collections::HashMap;
use std::ops::ControlFlow;
use std::sync::Arc;

use super::layout::{self, Counters};
use super::record::Rec;
use super::RedisStore;
use crate::engine::bucket::reexpress;
use crate::engine::clock::NANOS_PER_SEC;
use crate::engine::key_rules::{self, random_u64, NewSecret};
use crate::engine::limits;
use crate::engine::month::MonthWindow;
use crate::engine::MAX_KEYS;
use crate::keys::format as keyfmt;
use crate::keys::record::{CreatedKey, KeyInfo, KeyUpdate, NewKey, Usage};
use crate::keys::KeyId;
use crate::store::{KeyQuery, StoreError};

impl RedisStore {
    // ----- admin: keys -----------------------------------------------------------------------

    /// Slots ever handed out (deleted keys' included): the bound of a listing.
    async fn slot_count(&self) -> Result<u64, StoreError> {
        let mut c = self.conn();
        let n: Option<u64> = self
            .call(redis::cmd("GET").arg(self.k_next()).query_async(&mut c))
            .await?;
        Ok(n.unwrap_or(0))
    }

    /// Keys (created and not deleted).
    pub(super) async fn count_keys(&self) -> Result<u64, StoreError> {
        let mut c = self.conn();
        let (n, deleted): (Option<u64>, Option<u64>) = self
            .call(
                redis::cmd("MGET")
                    .arg(self.k_next())
                    .arg(self.k_deleted())
                    .query_async(&mut c),
            )
            .await?;
        Ok(n.unwrap_or(0).saturating_sub(deleted.unwrap_or(0)))
    }

    /// Creates keys; each record is in Redis before this returns.
    pub(super) async fn create_keys_in(
        &self,
        news: Vec<NewKey>,
    ) -> Result<Vec<CreatedKey>, StoreError> {
        // Digests this call claimed in the import index: released if it fails.
        let mut claimed: Vec<[u8; 32]> = Vec::new();
        let made = self.create_claiming(news, &mut claimed).await;
        if made.is_err() {
            self.release_imports(&claimed).await;
        }
        made
    }

    async fn create_claiming(
        &self,
        news: Vec<NewKey>,
        claimed: &mut Vec<[u8; 32]>,
    ) -> Result<Vec<CreatedKey>, StoreError> {
        {
            let missing = {
                let cat = self.catalog.load();
                news.iter().any(|k| cat.1.tier_index(&k.tier).is_none())
            };
            if missing {
                // A tier created on another node since our last poll: read the catalog now.
                self.poll_catalog().await?;
            }
            let cat = self.catalog.load();
            for k in &news {
                key_rules::validate_new(k)?;
                let Some(tier) = cat.1.tier_index(&k.tier).and_then(|ix| cat.1.tier(ix)) else {
                    return Err(StoreError::invalid(format!("unknown tier {:?}", k.tier)));
                };
                key_rules::fits_tier(&tier.spec, k.monthly_quota)?;
            }
        }
        if news.is_empty() {
            return Ok(Vec::new());
        }
        let mut c = self.admin();
        let last: u64 = self
            .admin_call(
                redis::cmd("INCRBY")
                    .arg(self.k_next())
                    .arg(news.len())
                    .query_async(&mut c),
            )
            .await?;
        if last > MAX_KEYS {
            return Err(StoreError::invalid("no room for more keys"));
        }
        let first = last - news.len() as u64;
        let now = self.clock.now_ns();
        let mut out = Vec::with_capacity(news.len());
        let mut per_tier: HashMap<String, i64> = HashMap::new();
        // One HSET per key, all in flight at once: in a cluster they go to different masters
        // (a pipeline would be one node's), and on one server they pipeline on the connection.
        let mut cmds = Vec::with_capacity(news.len());
        for (i, k) in news.iter().enumerate() {
            let slot = (first + i as u64) as u32;
            let id = KeyId::new(slot, random_u64()? as u32);
            let prefix = k.prefix.as_deref().unwrap_or(keyfmt::DEFAULT_PREFIX);
            // An imported key keeps its digest and the prefix it was given; nothing is raw.
            let (raw, hash, display_prefix) = match &k.import {
                Some(i) => {
                    self.claim_import(&i.hash, id, &i.display_prefix).await?;
                    claimed.push(i.hash);
                    (String::new(), i.hash, i.display_prefix.clone())
                }
                None => {
                    let raw = keyfmt::generate(prefix, id).map_err(|e| {
                        StoreError::invalid(format!("OS random source failed: {e}"))
                    })?;
                    let shown = keyfmt::display_prefix(&raw);
                    (raw.clone(), keyfmt::hash(&raw), shown)
                }
            };
            let rec = Rec {
                version: 1,
                id,
                hash,
                hash_prev: [0; 32],
                prev_until_ns: 0,
                tier: k.tier.clone(),
                scopes: k.scopes.clone(),
                expires_at_s: k.expires_at.unwrap_or(0),
                quota: k.monthly_quota,
                revoked: false,
                consumer: k.consumer.clone(),
                name: k.name.clone().unwrap_or_default(),
                display_prefix,
                created_at_s: now / NANOS_PER_SEC,
                imported: k.import.is_some(),
            };
            let mut cmd = redis::cmd("HSET");
            cmd.arg(self.k_key(slot)).arg("v").arg(1);
            for (f, v) in rec.fields() {
                cmd.arg(f).arg(v);
            }
            cmds.push(cmd);
            *per_tier.entry(k.tier.clone()).or_default() += 1;
            out.push(CreatedKey {
                info: rec.info(),
                raw,
            });
        }
        for chunk in cmds.chunks(512) {
            let writes = chunk.iter().map(|cmd| {
                let mut c = self.admin();
                async move { self.admin_call(cmd.query_async::<i64>(&mut c)).await }
            });
            for r in futures_util::future::join_all(writes).await {
                r?;
            }
        }
        for (t, n) in per_tier {
            self.bump_tier_use(&t, n).await?;
        }
        let mut written = vec![self.k_next()];
        written.extend(out.iter().map(|k| self.k_key(k.info.id.slot())));
        self.replicated(&written).await;
        Ok(out)
    }

    async fn bump_tier_use(&self, tier: &str, by: i64) -> Result<(), StoreError> {
        let mut c = self.admin();
        self.admin_call(
            redis::cmd("HINCRBY")
                .arg(self.k_tier_use())
                .arg(tier)
                .arg(by)
                .query_async::<i64>(&mut c),
        )
        .await?;
        Ok(())
    }

    async fn read(&self, id: KeyId) -> Result<Arc<Rec>, StoreError> {
        self.fetch(id).await?.ok_or(StoreError::UnknownKey)
    }

    /// The record of key `id`.
    pub(super) async fn key_info(&self, id: KeyId) -> Result<KeyInfo, StoreError> {
        Ok(self.read(id).await?.info())
    }

    /// Keys in id order after `after`, filtered, at most `limit`; and the cursor of the next page.
    pub(super) async fn list(
        &self,
        q: KeyQuery<'_>,
    ) -> Result<(Vec<KeyInfo>, Option<KeyId>), StoreError> {
        let n = self.slot_count().await?;
        let mut slot = q.after.map(|a| u64::from(a.slot()) + 1).unwrap_or(0);
        let mut out: Vec<KeyInfo> = Vec::new();
        while slot < n {
            let end = (slot + 256).min(n);
            let reads = (slot..end).map(|s| {
                let mut c = self.conn();
                let key = self.k_key(s as u32);
                async move {
                    self.call(
                        redis::cmd("HGETALL")
                            .arg(key)
                            .query_async::<HashMap<String, Vec<u8>>>(&mut c),
                    )
                    .await
                    .map(|m| layout::text_fields(&m))
                }
            });
            let maps = futures_util::future::join_all(reads)
                .await
                .into_iter()
                .collect::<Result<Vec<_>, _>>()?;
            for m in maps {
                let Ok(r) = Rec::parse(&m) else { continue };
                if let ControlFlow::Break(cursor) = q.offer(&mut out, r.info()) {
                    return Ok((out, cursor));
                }
            }
            slot = end;
        }
        Ok((out, None))
    }

    /// Applies `f` to the record and writes it if nobody changed it meanwhile (retrying if so).
    async fn modify(
        &self,
        id: KeyId,
        f: impl Fn(&mut Rec) -> Result<(), StoreError>,
    ) -> Result<Rec, StoreError> {
        for _ in 0..8 {
            let old = self.read(id).await?;
            let mut rec = (*old).clone();
            f(&mut rec)?;
            let mut inv = self.update.key(self.k_key(id.slot()));
            inv.arg(old.version);
            for (k, v) in rec.fields() {
                inv.arg(k).arg(v);
            }
            let mut c = self.admin();
            let r: i64 = self.admin_call(inv.invoke_async(&mut c)).await?;
            match r {
                -1 => return Err(StoreError::UnknownKey),
                -2 => continue,
                v => {
                    rec.version = v as u64;
                    let mut written = vec![self.k_key(id.slot())];
                    if rec.tier != old.tier {
                        self.bump_tier_use(&old.tier, -1).await?;
                        self.bump_tier_use(&rec.tier, 1).await?;
                        written.push(self.k_tier_use());
                    }
                    self.replicated(&written).await;
                    // This node's copy is the record just written; other nodes see the new
                    // version on their next check.
                    self.remember(rec.clone());
                    return Ok(rec);
                }
            }
        }
        Err(StoreError::invalid(
            "the key kept changing under us; try again",
        ))
    }

    /// Changes tier, scopes, expiry, quota override or name.
    pub(super) async fn update(&self, id: KeyId, upd: KeyUpdate) -> Result<KeyInfo, StoreError> {
        key_rules::validate_update(&upd)?;
        if let Some(t) = &upd.tier {
            if self.catalog.load().1.tier_index(t).is_none() {
                return Err(StoreError::invalid(format!("unknown tier {t:?}")));
            }
        }
        let own = self.k_key(id.slot());
        let before = self.counters_hash(&*self.read(id).await?, &self.catalog.load().1);
        let rec = self
            .modify(id, |r| {
                if let Some(t) = &upd.tier {
                    r.tier = t.clone();
                }
                if let Some(s) = &upd.scopes {
                    r.scopes = s.clone();
                }
                if let Some(e) = upd.expires_at {
                    r.expires_at_s = e.unwrap_or(0);
                }
                if let Some(q) = upd.monthly_quota {
                    r.quota = q;
                }
                if let Some(n) = &upd.name {
                    r.name = n.clone().unwrap_or_default();
                }
                let cat = self.catalog.load();
                if let Some(t) = cat.1.tier_index(&r.tier).and_then(|ix| cat.1.tier(ix)) {
                    key_rules::fits_tier(&t.spec, r.quota)?;
                }
                Ok(())
            })
            .await?;
        if before != own && self.counters_hash(&rec, &self.catalog.load().1) == own {
            // Out of a consumer group onto its own counters: it starts them afresh (its own
            // are from before it joined).
            self.reset_hash(
                &own,
                Some(id),
                crate::keys::record::Reset {
                    burst: true,
                    monthly: true,
                },
            )
            .await?;
            // A lease this node held on them from before is of the old counters.
            if let Some(mut e) = self.cache.get_mut(&id.0) {
                e.lease = None;
            }
        }
        Ok(rec.info())
    }

    /// Deletes key `id`: its hash (record and counters) goes. Other nodes find it missing at
    /// their next check of it (401), or, holding a lease on it, when that lease ends.
    pub(super) async fn delete(&self, id: KeyId) -> Result<(), StoreError> {
        for _ in 0..8 {
            let old = self.read(id).await?;
            let mut inv = self.delete.key(self.k_key(id.slot()));
            inv.arg(old.version);
            let mut c = self.admin();
            let r: i64 = self.admin_call(inv.invoke_async(&mut c)).await?;
            match r {
                -1 => return Err(StoreError::UnknownKey),
                -2 => continue,
                _ => {
                    self.cache.remove(&id.0);
                    let mut c = self.admin();
                    self.admin_call(
                        redis::cmd("INCR")
                            .arg(self.k_deleted())
                            .query_async::<i64>(&mut c),
                    )
                    .await?;
                    self.bump_tier_use(&old.tier, -1).await?;
                    self.forget_imports(id, [old.hash, old.hash_prev]).await;
                    self.replicated(&[self.k_key(id.slot()), self.k_tier_use(), self.k_imported()])
                        .await;
                    return Ok(());
                }
            }
        }
        Err(StoreError::invalid(
            "the key kept changing under us; try again",
        ))
    }

    /// Revokes key `id`.
    pub(super) async fn revoke(&self, id: KeyId) -> Result<KeyInfo, StoreError> {
        let rec = self
            .modify(id, |r| {
                r.revoked = true;
                r.prev_until_ns = 0;
                Ok(())
            })
            .await?;
        Ok(rec.info())
    }

    /// Gives key `id` a new secret; the old one works `grace_secs` more. Usage is kept.
    pub(super) async fn rotate(
        &self,
        id: KeyId,
        grace_secs: u64,
    ) -> Result<CreatedKey, StoreError> {
        let now = self.clock.now_ns();
        let raw = std::sync::Mutex::new(String::new());
        let rec = self
            .modify(id, |r| {
                if r.revoked {
                    return Err(StoreError::invalid("a revoked key cannot be rotated"));
                }
                // Rotated, an imported key becomes one of quotad's.
                let prefix = if r.imported {
                    keyfmt::DEFAULT_PREFIX
                } else {
                    keyfmt::prefix_of_display(&r.display_prefix)
                };
                r.imported = false;
                let new = NewSecret::for_rotation(prefix, r.id, grace_secs, now)?;
                r.hash_prev = r.hash;
                r.hash = new.hash;
                r.prev_until_ns = new.previous_valid_until_ns;
                r.display_prefix = new.display_prefix;
                if let Ok(mut g) = raw.lock() {
                    *g = new.raw;
                }
                Ok(())
            })
            .await?;
        let raw = raw.into_inner().unwrap_or_default();
        Ok(CreatedKey {
            info: rec.info(),
            raw,
        })
    }

    /// Live usage of key `id` (nothing consumed).
    pub(super) async fn usage_of(&self, id: KeyId) -> Result<Usage, StoreError> {
        let mut c = self.conn();
        let m: HashMap<String, Vec<u8>> = self
            .call(
                redis::cmd("HGETALL")
                    .arg(self.k_key(id.slot()))
                    .query_async(&mut c),
            )
            .await?;
        let rec = Rec::parse(&layout::text_fields(&m)).map_err(|_| StoreError::UnknownKey)?;
        if rec.id != id {
            return Err(StoreError::UnknownKey);
        }
        let cat = self.catalog.load();
        // On a tier counting by consumer, the figures are the consumer's group's.
        let group = self.counters_hash(&rec, &cat.1);
        let counters = if group == self.k_key(id.slot()) {
            Counters::read(&m)
        } else {
            let m: HashMap<String, Vec<u8>> = self
                .call(redis::cmd("HGETALL").arg(group).query_async(&mut c))
                .await?;
            Counters::read(&m)
        };
        let tier = cat
            .1
            .tier_index(&rec.tier)
            .and_then(|i| cat.1.tier(i))
            .ok_or_else(|| crate::engine::PolicyError::UnknownTier(rec.tier.clone()))?;
        let now = self.clock.now_ns() / 1_000 * 1_000;
        let limits = tier
            .limits
            .iter()
            .map(|l| {
                let l = l.to_micros();
                let tat = counters
                    .buckets
                    .iter()
                    .find(|b| b.period_secs == l.period_secs())
                    .map(|b| {
                        let (t, iv) = (
                            b.tat_us.saturating_mul(1_000),
                            b.interval_us.saturating_mul(1_000),
                        );
                        reexpress(t, now, iv, l.interval_ns())
                    })
                    .unwrap_or(0);
                limits::limit_usage(tat, now, &l)
            })
            .collect();
        let month = MonthWindow::containing(now);
        let used = match counters.month {
            Some(m) => limits::used_this_month(m, counters.used, &month),
            None => 0,
        };
        Ok(Usage {
            limits,
            monthly_used: used,
            monthly_quota: limits::quota_of(rec.quota, tier),
            last_used_at: counters.last_use,
        })
    }
}
