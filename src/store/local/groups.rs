//! Consumer-wide counting on the local store. On a tier counting by consumer, the keys of one
//! consumer spend the counters of a *group record*: a record slot flagged `FLAG_GROUP` that
//! names the tier and the consumer, holds no secret (it never authenticates), is listed nowhere,
//! and whose counter slot is written, msynced and checked at start-up like any key's. A key's hot
//! entry names its group's slot, so a check finds the counters without a lookup.
//!
//! A check of a member authenticates and admits under the key's own shard lock, releases it,
//! and then decides and writes under the group's (two locks are never held together). Group
//! records are created under the admin lock before the first key that needs them, and are kept
//! when their keys go: a consumer's usage this month is not given back by deleting and
//! re-creating its keys.

use std::collections::HashMap;
use std::sync::atomic::Ordering;

use super::acks::HeaderWord;
use super::layout::{self, RecordHalf, FLAG_DELETED, FLAG_GROUP, FLAG_LIVE, FLAG_REVOKED};
use super::shards::ShardData;
use super::{hot_from_record, secs, AdminState, Local};
use crate::engine::decision::{AuthFailure, Decision, Sunset, Verdict};
use crate::engine::key_rules::random_u64;
use crate::engine::limits;
use crate::engine::MAX_KEYS;
use crate::keys::KeyId;
use crate::store::local::datadir::DataDirError;
use crate::store::{Identity, StoreError};

/// Groups by (tier index, consumer): the slot of each group record.
pub(super) type Groups = HashMap<(u16, Box<str>), u32>;

/// A member key's check handed to its group once admitted.
pub(super) struct Member {
    /// The key.
    pub id: KeyId,
    /// Its tier.
    pub tier: u16,
    /// Its prefix's sunset, if being retired.
    pub sunset: Option<Sunset>,
    /// Its consumer as stored, read under its own lock when the identity is asked for.
    pub consumer: Option<[u8; 64]>,
}

impl Local {
    /// Decides an admitted check of a member key against its group's counters in `group_slot`.
    pub(super) fn decide_in_group(
        &self,
        group_slot: u32,
        m: Member,
        (now, cost): (u64, u64),
        identity: Option<&mut (dyn FnMut(Identity<'_>) + Send)>,
        d: &mut Decision,
    ) {
        let mut guard = self.shards.lock(group_slot);
        let gen = self.catalog_gen.load(Ordering::Acquire);
        if guard.catalog_gen != gen || guard.catalog.is_none() {
            guard.catalog = Some(self.catalog.load_full());
            guard.catalog_gen = gen;
        }
        let ShardData {
            month,
            catalog,
            latest_ns,
            first_use,
            written,
            ..
        } = &mut *guard;
        let now = now.max(*latest_ns);
        *latest_ns = now;
        // SAFETY: the group's shard lock is held; group slots are below the key count.
        let entry = unsafe { *self.shards.entry(group_slot) };
        let tier = catalog.as_deref().and_then(|c| Some((c, c.tier(m.tier)?)));
        let Some((catalog, tier)) = tier.filter(|_| entry.flags & FLAG_GROUP != 0) else {
            return d.reset(
                Verdict::Unauthorized(AuthFailure::Unknown),
                Some(m.id),
                None,
                secs(now),
            );
        };
        d.reset(Verdict::Allowed, Some(m.id), Some(m.tier), secs(now));
        d.sunset = m.sunset;
        let lend = || {
            if let (Some(f), Some(c)) = (identity, m.consumer.as_ref()) {
                f(Identity {
                    id: m.id,
                    consumer: layout::get_str(c).unwrap_or(""),
                    tier: &tier.spec.name,
                });
            }
        };
        let quota = limits::quota_of(None, tier);
        let state = (month, first_use, written);
        if !self.spend(
            group_slot,
            &entry,
            (m.tier, tier, catalog),
            quota,
            (now, cost),
            state,
            d,
            lend,
        ) {
            d.reset(
                Verdict::Unauthorized(AuthFailure::Unknown),
                Some(m.id),
                None,
                secs(now),
            );
        }
    }

    /// The slot whose counters key `slot`'s checks spend: its group's, or its own.
    pub(super) fn counters_of(&self, slot: u32) -> u32 {
        let _g = self.shards.lock(slot);
        // SAFETY: shard lock held; callers pass the slot of a key they found.
        let group = unsafe { self.shards.entry(slot) }.group;
        group.checked_sub(1).unwrap_or(slot)
    }

    /// Points key `slot`'s checks at `group` (`None`: its own counters).
    pub(super) fn set_group(&self, slot: u32, group: Option<u32>) {
        let _g = self.shards.lock(slot);
        // SAFETY: shard lock held; the key's entry exists.
        unsafe { self.shards.entry(slot) }.group = group.map_or(0, |g| g + 1);
    }

    /// The group a key of `consumer` on tier `tier` spends, if the tier counts by consumer: its
    /// slot, its record created (durably, acknowledged) if it has none yet.
    pub(super) fn group_for(
        &self,
        admin: &mut AdminState,
        tier: u16,
        consumer: &str,
    ) -> Result<Option<u32>, StoreError> {
        let shared = self
            .catalog
            .load()
            .tier(tier)
            .is_some_and(|t| t.counts_by_consumer());
        if !shared {
            return Ok(None);
        }
        if let Some(&slot) = admin.groups.get(&(tier, consumer.into())) {
            return Ok(Some(slot));
        }
        self.create_group(admin, tier, consumer).map(Some)
    }

    /// Writes a new group record for (`tier`, `consumer`), as a key creation writes a record:
    /// in a deleted key's slot (one half) or a new slot (both), msynced, then acknowledged.
    fn create_group(
        &self,
        admin: &mut AdminState,
        tier: u16,
        consumer: &str,
    ) -> Result<u32, StoreError> {
        let reused = admin.free.pop();
        let slot = match reused {
            Some(s) => s,
            None => {
                if u64::from(admin.key_count) + 1 > MAX_KEYS {
                    return Err(DataDirError::Full {
                        path: self.data_dir.clone(),
                    }
                    .into());
                }
                let s = admin.key_count;
                let grown = (|| {
                    self.records.ensure(s)?;
                    self.counters.ensure(s)?;
                    self.acks.ensure(s)
                })();
                grown?;
                s
            }
        };
        let restore = |admin: &mut AdminState| admin.free.extend(reused);
        let tag = match random_u64() {
            Ok(t) => t as u32,
            Err(e) => {
                restore(admin);
                return Err(e.into());
            }
        };
        let rec = group_record(
            KeyId::new(slot, tag),
            tier,
            consumer,
            secs(self.clock.now_ns()),
        );
        let seq = {
            let _g = self.shards.lock(slot);
            // SAFETY: shard lock held; the slot exists (reused, or ensured above).
            let Some(rs) = (unsafe { self.record_slot(slot) }) else {
                drop(_g);
                restore(admin);
                return Err(StoreError::UnknownKey);
            };
            layout::write_next(rs, rec);
            if reused.is_none() {
                layout::write_next(rs, rec);
            }
            let seq = rs[layout::newest(rs)].seq;
            self.shards.ensure(slot);
            // SAFETY: shard lock held; ensured.
            unsafe { *self.shards.entry(slot) = hot_from_record(&rec) };
            seq
        };
        if self.sync_records {
            self.records.flush_slot(slot)?;
        }
        self.acks.set(slot, seq, false);
        if self.sync_records {
            self.acks.flush(slot, slot)?;
        }
        if reused.is_some() {
            self.deleted.fetch_sub(1, Ordering::Relaxed);
        } else {
            admin.key_count = slot + 1;
            self.acks.set_header(HeaderWord::AckedKeys, slot + 1);
            if self.sync_records {
                self.acks.flush_header()?;
            }
            self.key_count.store(u64::from(slot + 1), Ordering::Release);
        }
        self.groups.fetch_add(1, Ordering::Relaxed);
        admin.groups.insert((tier, consumer.into()), slot);
        Ok(slot)
    }

    /// At start-up: indexes the group records in `slots`, then points every key on a tier
    /// counting by consumer at its group, creating the groups that are missing (a group record
    /// lost to damage and replaced by a repair's placeholder).
    pub(super) fn attach_groups(&self, slots: &[u32]) -> Result<(), StoreError> {
        let mut admin = self.admin.lock();
        for &slot in slots {
            let _g = self.shards.lock(slot);
            // SAFETY: shard lock held; the loader found a record in this slot.
            if let Some(rs) = unsafe { self.record_slot(slot) } {
                let r = rs[layout::newest(rs)];
                let consumer = layout::get_str(&r.consumer).unwrap_or("");
                admin.groups.insert((r.tier, consumer.into()), slot);
            }
        }
        self.groups.store(slots.len() as u64, Ordering::Relaxed);
        let catalog = self.catalog.load_full();
        if !catalog.tiers().any(|(_, t)| t.counts_by_consumer()) {
            return Ok(());
        }
        for slot in 0..admin.key_count {
            let member = {
                let _g = self.shards.lock(slot);
                // SAFETY: shard lock held; slots below the key count have entries.
                let e = unsafe { *self.shards.entry(slot) };
                let key = e.flags & (FLAG_GROUP | FLAG_DELETED) == 0 && e.flags & FLAG_LIVE != 0;
                let shared = catalog.tier(e.tier).is_some_and(|t| t.counts_by_consumer());
                // SAFETY: as above.
                (key && shared)
                    .then(|| unsafe { self.record_slot(slot) })
                    .flatten()
                    .map(|rs| (e.tier, rs[layout::newest(rs)].consumer))
            };
            if let Some((tier, consumer)) = member {
                let consumer = layout::get_str(&consumer).unwrap_or("").to_string();
                let group = self.group_for(&mut admin, tier, &consumer)?;
                self.set_group(slot, group);
            }
        }
        Ok(())
    }
}

/// The record of a group: revoked, no secret (all-zero hashes match no SHA-256), no name.
fn group_record(id: KeyId, tier: u16, consumer: &str, now_s: u64) -> RecordHalf {
    use zerocopy::FromZeros;
    let mut r = RecordHalf::new_zeroed();
    r.id = id.0;
    r.created_at_s = now_s;
    r.monthly_quota = layout::NO_OVERRIDE;
    r.tier = tier;
    r.flags = FLAG_LIVE | FLAG_REVOKED | FLAG_GROUP;
    r.consumer = layout::put_str(consumer);
    r
}
