//! Key and tier administration on the local store: each change is written durably (record
//! slots msynced, `catalog.json` replaced atomically) under the admin mutex, then published to
//! the hot path under the key's shard lock.

use std::ops::ControlFlow;
use std::sync::atomic::Ordering;

use super::acks::{Ack, HeaderWord};
use super::check::convert_buckets;
use super::layout::{
    self, CounterHalf, RecordHalf, FLAG_DELETED, FLAG_GROUP, FLAG_LIVE, FLAG_REVOKED, NO_OVERRIDE,
};
use super::shards::{Grace, Shards};
use super::{hot_from_record, secs, AdminState, Local};
use crate::engine::catalog::Catalog;
use crate::engine::catalog_doc::{self, intern_scope_set, CatalogDoc};
use crate::engine::catalog_doc::{CatalogError, RetiredPrefix};
use crate::engine::clock::NANOS_PER_SEC;
use crate::engine::key_rules::{self, random_u64, NewSecret};
use crate::engine::limits;
use crate::engine::month::MonthWindow;
use crate::engine::{PolicyError, MAX_KEYS};
use crate::keys::format as keyfmt;
use crate::keys::record::{CreatedKey, KeyInfo, KeyUpdate, NewKey, Usage};
use crate::keys::KeyId;
use crate::store::local::catalog_file;
use crate::store::local::datadir::DataDirError;
use crate::store::{KeyQuery, StoreError};
use crate::tiers::TierSpec;

impl Local {
    /// Creates many keys with one `msync` at the end (bulk import, load generation).
    pub(super) fn create_keys(&self, news: Vec<NewKey>) -> Result<Vec<CreatedKey>, StoreError> {
        for k in &news {
            key_rules::validate_new(k)?;
        }
        let mut admin = self.admin.lock();
        let catalog = self.catalog.load_full();
        let mut doc = catalog.doc().clone();
        let mut plan = Vec::with_capacity(news.len());
        for k in &news {
            let tier = catalog
                .tier_index(&k.tier)
                .ok_or_else(|| StoreError::invalid(format!("unknown tier {:?}", k.tier)))?;
            if let Some(t) = catalog.tier(tier) {
                key_rules::fits_tier(&t.spec, k.monthly_quota)?;
            }
            let set = intern_scope_set(&mut doc, &k.scopes)?;
            plan.push((tier, set));
        }
        {
            let index = self.imported.read();
            let mut seen = std::collections::HashSet::new();
            for i in news.iter().filter_map(|k| k.import.as_ref()) {
                if index.contains_key(&i.hash) || !seen.insert(i.hash) {
                    return Err(PolicyError::Conflict(format!(
                        "a key with this secret (shown as {:?}) exists already",
                        i.display_prefix
                    ))
                    .into());
                }
            }
        }
        if u64::from(admin.key_count) + news.len() as u64 > MAX_KEYS {
            return Err(DataDirError::Full {
                path: self.data_dir.clone(),
            }
            .into());
        }
        // The consumer groups the new keys spend, created first (an empty group is harmless).
        let mut groups = Vec::with_capacity(news.len());
        for (k, (tier, _)) in news.iter().zip(&plan) {
            groups.push(self.group_for(&mut admin, *tier, &k.consumer)?);
        }
        if doc != *catalog.doc() {
            let compiled = Catalog::compile(doc)?;
            self.store_catalog(&mut admin, compiled.doc())?;
            self.publish_catalog(compiled);
        }
        let now = self.clock.now_ns();
        // Deleted keys' slots first (most recently freed last), then new slots at the end.
        let reused = admin.free.len().min(news.len());
        let keep = admin.free.len() - reused;
        let mut slots: Vec<u32> = admin.free.split_off(keep);
        slots.reverse();
        let first = admin.key_count;
        let last = first + (news.len() - reused) as u32;
        slots.extend(first..last);
        if last > first {
            let grown = (|| {
                self.records.ensure(last - 1)?;
                self.counters.ensure(last - 1)?;
                self.acks.ensure(last - 1)
            })();
            if let Err(e) = grown {
                admin.free.extend(slots[..reused].iter().rev());
                return Err(e.into());
            }
        }
        // A few keys: msync each record; a bulk import: one msync of everything at the end.
        let sync_each = self.sync_records && news.len() <= 64;
        let mut out = Vec::with_capacity(news.len());
        let mut acked = Vec::with_capacity(news.len());
        for (i, (k, (tier, set))) in news.into_iter().zip(plan).enumerate() {
            let slot = slots[i];
            let tag = random_u64()? as u32;
            let id = KeyId::new(slot, tag);
            let prefix = k.prefix.as_deref().unwrap_or(keyfmt::DEFAULT_PREFIX);
            // An imported key keeps its digest and shows the prefix it was given; nothing is
            // returned raw.
            let (raw, hash, flags, shown) = match &k.import {
                Some(i) => (
                    String::new(),
                    i.hash,
                    FLAG_LIVE | layout::FLAG_IMPORTED,
                    i.display_prefix.as_str(),
                ),
                None => {
                    let secret = NewSecret::generate(prefix, id)?;
                    (
                        secret.raw,
                        secret.hash,
                        FLAG_LIVE | layout::prefix_flags(prefix),
                        prefix,
                    )
                }
            };
            let rec = RecordHalf {
                seq: 0,
                crc: 0,
                id: id.0,
                hash_current: hash,
                hash_previous: [0; 32],
                previous_valid_until_ns: 0,
                created_at_s: secs(now),
                expires_at_s: k.expires_at.unwrap_or(0),
                monthly_quota: k.monthly_quota.unwrap_or(NO_OVERRIDE),
                tier,
                flags,
                scope_set: set,
                // The prefix whole (the display prefix is computed from it and the id), or an
                // imported key's display prefix.
                display_prefix: layout::put_str(shown),
                consumer: layout::put_str(&k.consumer),
                name: layout::put_str(k.name.as_deref().unwrap_or("")),
            };
            let seq = {
                let g = self.shards.lock(slot);
                // SAFETY: shard lock held; `ensure` created the slot.
                let rs = unsafe { self.record_slot(slot) }.ok_or(StoreError::UnknownKey)?;
                // A new slot gets both halves; a deleted key's slot one, over the older half, so
                // that until the ack the other half still says "deleted" (see `load`).
                layout::write_next(rs, rec);
                if i >= reused {
                    layout::write_next(rs, rec);
                }
                let seq = rs[layout::newest(rs)].seq;
                // SAFETY: shard lock held; the entry exists once ensured, and checks see a new
                // slot only after `key_count` is published below (a reused slot's raw key is
                // not known to anyone before this returns).
                self.shards.ensure(slot);
                let entry = unsafe { self.shards.entry(slot) };
                *entry = hot_from_record(&rec);
                entry.group = groups[i].map_or(0, |g| g + 1);
                drop(g);
                seq
            };
            if sync_each {
                self.records.flush_slot(slot)?;
            }
            self.tier_use.lock()[usize::from(tier)] += 1;
            if k.import.is_some() {
                self.imported.write().insert(hash, id);
            }
            out.push((slot, raw));
            acked.push((slot, seq));
        }
        if self.sync_records && !sync_each {
            self.records.flush_all()?;
        }
        // Acknowledge: each record's sequence, then the count, each durable before the next.
        for &(slot, seq) in &acked {
            self.acks.set(slot, seq, false);
            if self.sync_records && slot < first {
                self.acks.flush(slot, slot)?;
            }
        }
        if self.sync_records && last > first {
            self.acks.flush(first, last - 1)?;
        }
        self.acks.set_header(HeaderWord::AckedKeys, last);
        if self.sync_records {
            self.acks.flush_header()?;
        }
        self.deleted.fetch_sub(reused as u64, Ordering::Relaxed);
        admin.key_count = last;
        self.key_count.store(u64::from(last), Ordering::Release);
        drop(admin);
        out.into_iter()
            .map(|(slot, raw)| {
                let info = self.info_by_slot(slot)?;
                Ok(CreatedKey { info, raw })
            })
            .collect()
    }

    fn read_record(&self, id: KeyId) -> Result<RecordHalf, StoreError> {
        let slot = id.slot();
        if u64::from(slot) >= self.key_count() {
            return Err(StoreError::UnknownKey);
        }
        let _g = self.shards.lock(slot);
        // SAFETY: shard lock held.
        let rs = unsafe { self.record_slot(slot) }.ok_or(StoreError::UnknownKey)?;
        let r = rs[layout::newest(rs)];
        if r.id != id.0 || r.flags & (FLAG_DELETED | FLAG_GROUP) != 0 {
            return Err(StoreError::UnknownKey);
        }
        Ok(r)
    }

    fn info_by_slot(&self, slot: u32) -> Result<KeyInfo, StoreError> {
        let _g = self.shards.lock(slot);
        // SAFETY: shard lock held.
        let rs = unsafe { self.record_slot(slot) }.ok_or(StoreError::UnknownKey)?;
        let r = rs[layout::newest(rs)];
        drop(_g);
        if r.flags & (FLAG_DELETED | FLAG_GROUP) != 0 {
            return Err(StoreError::UnknownKey);
        }
        Ok(self.info_from(&r))
    }

    fn info_from(&self, r: &RecordHalf) -> KeyInfo {
        let cat = self.catalog.load();
        KeyInfo {
            id: KeyId(r.id),
            prefix: layout::prefixes(r).1,
            consumer: layout::get_str(&r.consumer).unwrap_or("").to_string(),
            tier: cat
                .tier(r.tier)
                .map(|t| t.spec.name.clone())
                .unwrap_or_default(),
            scopes: cat.scope_names(r.scope_set),
            expires_at: (r.expires_at_s != 0).then_some(r.expires_at_s),
            monthly_quota: layout::quota_override(r.monthly_quota),
            name: layout::get_str(&r.name)
                .filter(|s| !s.is_empty())
                .map(str::to_string),
            created_at: r.created_at_s,
            revoked: r.flags & FLAG_REVOKED != 0,
            previous_valid_until: (r.previous_valid_until_ns != 0)
                .then_some(r.previous_valid_until_ns.div_ceil(NANOS_PER_SEC)),
        }
    }

    /// The record of key `id`.
    pub(super) fn key(&self, id: KeyId) -> Result<KeyInfo, StoreError> {
        let r = self.read_record(id)?;
        Ok(self.info_from(&r))
    }

    /// Keys in id order starting after `after`, filtered by consumer and tier, at most `limit`.
    /// Returns the page and whether more may follow.
    pub(super) fn list_keys(&self, q: KeyQuery<'_>) -> (Vec<KeyInfo>, Option<KeyId>) {
        let start = q.after.map(|a| a.slot() + 1).unwrap_or(0);
        let n = self.key_count() as u32;
        let mut out = Vec::new();
        for slot in start..n {
            let Ok(info) = self.info_by_slot(slot) else {
                continue;
            };
            if let ControlFlow::Break(cursor) = q.offer(&mut out, info) {
                return (out, cursor);
            }
        }
        (out, None)
    }

    /// Applies `f` to key `id`'s record under the admin lock, writes it durably and publishes it.
    fn modify(
        &self,
        id: KeyId,
        f: impl FnOnce(&mut RecordHalf, &mut CatalogDoc, &Catalog) -> Result<(), StoreError>,
    ) -> Result<RecordHalf, StoreError> {
        let mut admin = self.admin.lock();
        let old = self.read_record(id)?;
        let catalog = self.catalog.load_full();
        let mut doc = catalog.doc().clone();
        let mut rec = old;
        f(&mut rec, &mut doc, &catalog)?;
        if doc != *catalog.doc() {
            let compiled = Catalog::compile(doc)?;
            self.store_catalog(&mut admin, compiled.doc())?;
            self.publish_catalog(compiled);
        }
        let slot = id.slot();
        // A key moved to another tier moves to that tier's counters for its consumer, if the
        // tier counts by consumer.
        let group = if rec.tier != old.tier {
            let consumer = layout::get_str(&rec.consumer).unwrap_or("").to_string();
            Some(self.group_for(&mut admin, rec.tier, &consumer)?)
        } else {
            None
        };
        let seq;
        let mut left_group = false;
        {
            let mut g = self.shards.lock(slot);
            // SAFETY: shard lock held.
            let rs = unsafe { self.record_slot(slot) }.ok_or(StoreError::UnknownKey)?;
            layout::write_next(rs, rec);
            seq = rs[layout::newest(rs)].seq;
            let (_, idx) = Shards::locate(slot);
            let keep_fast = rec.hash_current == old.hash_current;
            // SAFETY: shard lock held.
            let entry = unsafe { self.shards.entry(slot) };
            let fast = entry.fast;
            let (counters, newest, kept) = (entry.counters, entry.newest, entry.group);
            *entry = hot_from_record(&rec);
            entry.counters = counters;
            entry.newest = newest;
            entry.group = match group {
                Some(g) => g.map_or(0, |g| g + 1),
                None => kept,
            };
            if kept != 0 && entry.group == 0 {
                // Out of a consumer group onto its own counters: it starts them afresh (what
                // it spent stays spent in the group; its own are from before it joined).
                entry.counters = CounterHalf::default();
                entry.newest = 0;
                // SAFETY: shard lock held.
                if let Some(cs) = unsafe { self.counter_slot(slot) } {
                    *cs = Default::default();
                }
                left_group = true;
            }
            if keep_fast {
                entry.fast = fast;
            }
            if rec.previous_valid_until_ns != 0 {
                g.grace.insert(
                    idx as u32,
                    Grace {
                        fast: if keep_fast { 0 } else { fast },
                        until_ns: rec.previous_valid_until_ns,
                    },
                );
            } else {
                g.grace.remove(&(idx as u32));
            }
        }
        if self.sync_records {
            self.records.flush_slot(slot)?;
            if left_group {
                self.counters.flush_slot(slot)?;
            }
        }
        let used = matches!(self.acks.get(slot), Ack::Valid { used: true, .. });
        self.acks.set(slot, seq, used);
        if self.sync_records {
            self.acks.flush(slot, slot)?;
        }
        if rec.tier != old.tier {
            let mut use_ = self.tier_use.lock();
            use_[usize::from(old.tier)] -= 1;
            use_[usize::from(rec.tier)] += 1;
        }
        Ok(rec)
    }

    /// Changes tier, scopes, expiry, quota override or name; in force from the next check.
    pub(super) fn update_key(&self, id: KeyId, upd: KeyUpdate) -> Result<KeyInfo, StoreError> {
        key_rules::validate_update(&upd)?;
        let rec = self.modify(id, |r, doc, cat| {
            if let Some(t) = &upd.tier {
                let ix = cat
                    .tier_index(t)
                    .ok_or_else(|| StoreError::invalid(format!("unknown tier {t:?}")))?;
                let mut use_ = self.tier_use.lock();
                if use_.len() <= usize::from(ix) {
                    use_.resize(usize::from(ix) + 1, 0);
                }
                r.tier = ix;
            }
            if let Some(s) = &upd.scopes {
                r.scope_set = intern_scope_set(doc, s)?;
            }
            if let Some(e) = upd.expires_at {
                r.expires_at_s = e.unwrap_or(0);
            }
            if let Some(q) = upd.monthly_quota {
                r.monthly_quota = q.unwrap_or(NO_OVERRIDE);
            }
            if let Some(n) = &upd.name {
                r.name = layout::put_str(n.as_deref().unwrap_or(""));
            }
            if let Some(t) = cat.tier(r.tier) {
                key_rules::fits_tier(&t.spec, layout::quota_override(r.monthly_quota))?;
            }
            Ok(())
        })?;
        Ok(self.info_from(&rec))
    }

    /// Revokes key `id`: its next check is 401.
    pub(super) fn revoke_key(&self, id: KeyId) -> Result<KeyInfo, StoreError> {
        let rec = self.modify(id, |r, _, _| {
            r.flags |= FLAG_REVOKED;
            r.previous_valid_until_ns = 0;
            Ok(())
        })?;
        Ok(self.info_from(&rec))
    }

    /// Deletes key `id`: the record keeps only its slot (deleted, revoked, no secret), the
    /// counters are zeroed, and the slot goes to the free list for the next creation.
    pub(super) fn delete_key(&self, id: KeyId) -> Result<(), StoreError> {
        let mut admin = self.admin.lock();
        let old = self.read_record(id)?;
        let slot = id.slot();
        let mut rec = old;
        rec.id = u64::from(slot);
        rec.hash_current = [0; 32];
        rec.hash_previous = [0; 32];
        rec.previous_valid_until_ns = 0;
        rec.flags = FLAG_LIVE | FLAG_REVOKED | FLAG_DELETED;
        rec.consumer = [0; 64];
        rec.name = [0; 56];
        rec.display_prefix = [0; 16];
        let seq = {
            let mut g = self.shards.lock(slot);
            // SAFETY: shard lock held; the key exists, so its slots do.
            let rs = unsafe { self.record_slot(slot) }.ok_or(StoreError::UnknownKey)?;
            layout::write_next(rs, rec);
            let seq = rs[layout::newest(rs)].seq;
            // SAFETY: shard lock held.
            if let Some(cs) = unsafe { self.counter_slot(slot) } {
                *cs = Default::default();
            }
            // SAFETY: shard lock held.
            unsafe { *self.shards.entry(slot) = hot_from_record(&rec) };
            let (_, idx) = Shards::locate(slot);
            g.grace.remove(&(idx as u32));
            seq
        };
        if self.sync_records {
            self.records.flush_slot(slot)?;
            self.counters.flush_slot(slot)?;
        }
        self.acks.set(slot, seq, false);
        if self.sync_records {
            self.acks.flush(slot, slot)?;
        }
        self.tier_use.lock()[usize::from(old.tier)] -= 1;
        self.imported.write().retain(|_, k| *k != id);
        admin.free.push(slot);
        self.deleted.fetch_add(1, Ordering::Relaxed);
        Ok(())
    }

    /// Gives key `id` a new secret; the old one works for `grace_secs` more seconds. Usage is kept.
    pub(super) fn rotate_key(&self, id: KeyId, grace_secs: u64) -> Result<CreatedKey, StoreError> {
        let mut raw = String::new();
        let now = self.clock.now_ns();
        let rec = self.modify(id, |r, _, _| {
            if r.flags & FLAG_REVOKED != 0 {
                return Err(StoreError::invalid("a revoked key cannot be rotated"));
            }
            let (prefix, _) = layout::prefixes(r);
            let new = NewSecret::for_rotation(&prefix, KeyId(r.id), grace_secs, now)?;
            r.hash_previous = r.hash_current;
            r.hash_current = new.hash;
            r.previous_valid_until_ns = new.previous_valid_until_ns;
            // Stored from now on as the whole prefix, as new records are; an imported secret
            // is now the previous one (still looked up by digest while honoured).
            let was_imported = r.flags & layout::FLAG_IMPORTED != 0;
            r.flags = r.flags
                & 0xff
                & !(layout::FLAG_PREFIX_LEN | layout::FLAG_IMPORTED | layout::FLAG_PREV_IMPORTED)
                | layout::prefix_flags(&prefix)
                | if was_imported {
                    layout::FLAG_PREV_IMPORTED
                } else {
                    0
                };
            r.display_prefix = layout::put_str(&prefix);
            raw = new.raw;
            Ok(())
        })?;
        Ok(CreatedKey {
            info: self.info_from(&rec),
            raw,
        })
    }

    /// Live usage of key `id` (nothing is consumed).
    pub(super) fn usage(&self, id: KeyId) -> Result<Usage, StoreError> {
        let rec = self.read_record(id)?;
        let cat = self.catalog.load();
        let tier = cat
            .tier(rec.tier)
            .ok_or_else(|| crate::engine::PolicyError::UnknownTier(format!("#{}", rec.tier)))?;
        let now = self.clock.now_ns();
        let slot = self.counters_of(id.slot());
        let mut c: CounterHalf = {
            let _g = self.shards.lock(slot);
            // SAFETY: shard lock held.
            unsafe { self.counter_slot(slot) }
                .map(|cs| cs[layout::newest(cs)])
                .unwrap_or_default()
        };
        if c.seq != 0 && (c.tier != rec.tier || c.limits_version != tier.version) {
            convert_buckets(&mut c, &cat, rec.tier, tier, now);
        }
        let limits = tier
            .limits
            .iter()
            .enumerate()
            .map(|(i, l)| limits::limit_usage(c.tat[i], now, l))
            .collect();
        let month = MonthWindow::containing(now);
        Ok(Usage {
            limits,
            monthly_used: limits::used_this_month(c.month, c.month_used, &month),
            monthly_quota: limits::quota_of(layout::quota_override(rec.monthly_quota), tier),
            last_used_at: (c.last_used_s != 0).then_some(u64::from(c.last_used_s)),
        })
    }

    // ----- admin: tiers ----------------------------------------------------------------------

    /// Creates or replaces a tier; durable, and in force from the next check. Counters are kept.
    pub(super) fn put_tier(&self, spec: TierSpec) -> Result<TierSpec, StoreError> {
        let spec = spec.normalized();
        spec.validate().map_err(CatalogError::from)?;
        self.change_catalog(|doc, use_| Ok(catalog_doc::put_tier_in(doc, use_, &spec)?))?;
        Ok(spec)
    }

    /// Deletes a tier no key uses.
    pub(super) fn delete_tier(&self, name: &str) -> Result<(), StoreError> {
        self.change_catalog(|doc, use_| Ok(catalog_doc::delete_tier_in(doc, use_, name)?))
    }

    /// Replaces the whole set of tiers (a tiers file): tiers not in `specs` are deleted, which is
    /// refused while keys use them.
    pub(super) fn apply_tiers(&self, specs: Vec<TierSpec>) -> Result<(), StoreError> {
        self.change_catalog(|doc, use_| Ok(catalog_doc::replace_tiers(doc, use_, specs)?))
    }

    /// Retires key `prefix` until `sunset_at`; durable and in force from the next check.
    pub(super) fn retire_prefix(
        &self,
        prefix: &str,
        sunset_at: u64,
    ) -> Result<RetiredPrefix, StoreError> {
        let now = secs(self.clock.now_ns());
        let mut out = None;
        self.change_catalog(|doc, _| {
            out = Some(catalog_doc::retire_prefix_in(doc, prefix, sunset_at, now)?);
            Ok(())
        })?;
        out.ok_or_else(|| StoreError::invalid("prefix not retired"))
    }

    /// Takes `prefix` off the retired list.
    pub(super) fn restore_prefix(&self, prefix: &str) -> Result<(), StoreError> {
        self.change_catalog(|doc, _| Ok(catalog_doc::restore_prefix_in(doc, prefix)?))
    }

    /// Writes `doc` as the next generation of `catalog.json` and acknowledges it.
    fn store_catalog(&self, admin: &mut AdminState, doc: &CatalogDoc) -> Result<(), StoreError> {
        let generation = admin.generation + 1;
        catalog_file::store(&self.data_dir, doc, generation, self.lock.file_mode())?;
        self.acks
            .set_header(HeaderWord::CatalogGeneration, generation);
        self.acks.flush_header()?;
        admin.generation = generation;
        Ok(())
    }

    fn change_catalog(
        &self,
        f: impl FnOnce(&mut CatalogDoc, &[u64]) -> Result<(), StoreError>,
    ) -> Result<(), StoreError> {
        let mut admin = self.admin.lock();
        let catalog = self.catalog.load_full();
        let mut doc = catalog.doc().clone();
        let use_ = self.tier_use.lock().clone();
        f(&mut doc, &use_)?;
        let compiled = Catalog::compile(doc)?;
        self.store_catalog(&mut admin, compiled.doc())?;
        self.tier_use.lock().resize(compiled.doc().tiers.len(), 0);
        self.publish_catalog(compiled);
        Ok(())
    }
}
