//! The hot path: one check under one shard lock, and a batch of checks with their key entries
//! loading ahead of the one being decided. The policy (`engine::admission`, `engine::limits`)
//! decides; this file finds the key, authenticates it, fills the policy's view of it and writes
//! the counters it returns into the key's mapped slot.
//!
//! The speed work stays here, private, each piece measured (docs/PERFORMANCE.md, DESIGN.md):
//! prefetching a key's entry (and, where the CPU has `prefetchw`, taking its lines for writing)
//! while the key is hashed, and keeping the next checks' entries of a batch loading.

use std::collections::HashMap;
use std::sync::atomic::Ordering;

use subtle::ConstantTimeEq;

use super::layout::{self, CounterHalf, CounterSlot, RecordHalf, RecordSlot, FLAG_REVOKED};
use super::shards::{Grace, HotEntry, ShardData, Shards};
use super::{secs, Local};
use crate::engine::admission::{self, Grants, KeyView};
use crate::engine::catalog::{Catalog, CompiledTier};
use crate::engine::decision::{AuthFailure, Decision, Verdict};
use crate::engine::limits::{self, Terms};
use crate::engine::month::MonthWindow;
use crate::engine::MAX_COST;
use crate::keys::format as keyfmt;
use crate::keys::KeyId;
use crate::store::{CheckRequest, Identity};

/// Whether `d` refused a key it could not find (malformed or unknown): it may be an imported one.
#[inline]
fn refused_unknown(d: &Decision) -> bool {
    matches!(
        d.verdict,
        Verdict::Unauthorized(AuthFailure::Malformed | AuthFailure::Unknown)
    )
}

/// Offsets in a record slot of the lines a check lending the key's identity reads: each half's
/// `seq` (which half is newest) and its consumer (64 bytes from offset 136: two lines).
const RECORD_IDENTITY_LINES: [usize; 6] = {
    const H: usize = std::mem::size_of::<RecordHalf>();
    const C: usize = std::mem::offset_of!(RecordHalf, consumer);
    [0, C, C + 63, H, H + C, H + C + 63]
};
const _: () = assert!(2 * std::mem::size_of::<RecordHalf>() == 512);
const _: () = assert!(layout::BUCKETS == crate::tiers::MAX_LIMITS);

/// How many checks of a batch ahead of the one being decided have their key's entry loading.
const AHEAD: usize = 8;

/// What an admitted check lends its identity to.
type IdentityFn<'a> = &'a mut (dyn FnMut(Identity<'_>) + Send);

impl Local {
    /// # Safety
    /// The caller holds the lock of the shard owning `slot`, and `slot` has a record.
    // The shard lock, not `&mut self`, is what makes this access exclusive.
    #[allow(clippy::mut_from_ref)]
    #[inline]
    pub(super) unsafe fn counter_slot(&self, slot: u32) -> Option<&mut CounterSlot> {
        self.counters
            .slot_ptr(slot)
            .map(|p| &mut *(p as *mut CounterSlot))
    }

    /// # Safety
    /// The caller holds the lock of the shard owning `slot`.
    #[allow(clippy::mut_from_ref)]
    #[inline]
    pub(super) unsafe fn record_slot(&self, slot: u32) -> Option<&mut RecordSlot> {
        self.records
            .slot_ptr(slot)
            .map(|p| &mut *(p as *mut RecordSlot))
    }

    /// One check, lending an admitted key's identity to `identity` if given (read under the
    /// same shard lock as the decision).
    #[inline]
    pub(super) fn check_one<R>(
        &self,
        req: CheckRequest<'_>,
        identity: Option<IdentityFn<'_>>,
        finish: impl FnOnce(&Decision) -> R,
    ) -> R {
        let Some(slot) = keyfmt::slot_hint(req.key.unwrap_or("").as_bytes()) else {
            return self.check_at_now(req, identity, finish);
        };
        self.prefetch_entry_of(slot);
        // The identity's caller is the HTTP answer, whose first loads after the check wait for
        // the check's store into the counter slot: the record's lines (the identity) and the
        // counter slot (for writing) are started now, while the key is hashed. A check without
        // identity (at a million keys, each of these is a TLB miss) skips them.
        if identity.is_some() {
            if let Some(p) = self.records.slot_ptr(slot) {
                for off in RECORD_IDENTITY_LINES {
                    prefetch(p.wrapping_add(off) as *const u8);
                }
            }
            if self.prefetch_exclusive {
                if let Some(c) = self.counters.slot_ptr(slot) {
                    prefetch_write(c);
                    prefetch_write(c.wrapping_add(64));
                }
            }
        }
        self.check_at_now(req, identity, finish)
    }

    /// [`check_one`](Self::check_one) once its prefetches are started. The decision is handed to
    /// `finish` where it was made: returning it by value copies it (264 bytes), and the copy's
    /// wide loads of fields just stored narrow each wait for those stores to reach the cache.
    #[inline(always)]
    fn check_at_now<R>(
        &self,
        req: CheckRequest<'_>,
        identity: Option<IdentityFn<'_>>,
        finish: impl FnOnce(&Decision) -> R,
    ) -> R {
        let now = self.clock.now_ns();
        let mut d = Decision::bare(Verdict::Allowed, None, None, secs(now));
        let mut identity = identity;
        // Lent for the first try, kept for a retry.
        // Lent for the first try and kept for a retry: the closure's return type shortens the
        // trait object's lifetime to the loan's, which `as_deref_mut` cannot.
        #[allow(clippy::option_as_ref_deref)]
        let lent = identity.as_mut().map(|f| -> IdentityFn<'_> { &mut **f });
        self.decide_into(req, None, now, lent, &mut d);
        if refused_unknown(&d) {
            self.retry_imported(req, now, identity, &mut d);
        }
        finish(&d)
    }

    /// Checks that arrived together, decided at one clock reading, each given to `each` where it
    /// was made (no decision is copied out). The next checks' entries load meanwhile: on a large
    /// key table each is a cache miss, and these overlap instead of following each other.
    pub(super) fn check_batch(
        &self,
        reqs: &[CheckRequest<'_>],
        each: &mut (dyn FnMut(usize, &Decision) + Send),
    ) {
        let now = self.clock.now_ns();
        for r in reqs.iter().take(AHEAD) {
            self.prefetch_entry(r.key);
        }
        for (i, &r) in reqs.iter().enumerate() {
            if let Some(next) = reqs.get(i + AHEAD) {
                self.prefetch_entry(next.key);
            }
            let mut d = Decision::bare(Verdict::Allowed, None, None, secs(now));
            self.decide_into(r, None, now, None, &mut d);
            if refused_unknown(&d) {
                self.retry_imported(r, now, None, &mut d);
            }
            each(i, &d);
        }
    }

    /// Starts loading the in-memory entry of the key `raw_key` names, without waiting for it.
    #[inline]
    fn prefetch_entry(&self, raw_key: Option<&str>) {
        if let Some(slot) = keyfmt::slot_hint(raw_key.unwrap_or("").as_bytes()) {
            self.prefetch_entry_of(slot);
        }
    }

    #[inline]
    fn prefetch_entry_of(&self, slot: u32) {
        if let Some(p) = self.shards.entry_ptr(slot) {
            let p = p as *const u8;
            // The check writes the entry: ask for the lines in exclusive state where the CPU can,
            // so that a line last written by another core arrives once, not shared and then
            // again for the write.
            if self.prefetch_exclusive {
                prefetch_write(p);
                prefetch_write(p.wrapping_add(64));
            } else {
                prefetch(p);
                prefetch(p.wrapping_add(64));
            }
        }
    }

    /// A key refused as malformed or unknown may be an imported one, which does not name its
    /// id: found by its digest, it is decided again under that id. A generated key comes here
    /// only when it was refused, and nothing is hashed while no key was imported.
    #[cold]
    fn retry_imported(
        &self,
        req: CheckRequest<'_>,
        now: u64,
        identity: Option<IdentityFn<'_>>,
        d: &mut Decision,
    ) {
        let Some(raw) = req.key.filter(|k| keyfmt::importable(k)) else {
            return;
        };
        let id = {
            let index = self.imported.read();
            if index.is_empty() {
                return;
            }
            match index.get(&keyfmt::hash(raw)) {
                Some(id) => *id,
                None => return,
            }
        };
        d.reset(Verdict::Allowed, None, None, secs(now));
        self.decide_into(req, Some(id), now, identity, d);
    }

    /// The check itself, into `d` (a bare decision on entry); `known`: the id of an imported
    /// key, found by its digest (else the key names its id).
    ///
    /// Time never goes back for a key: each shard keeps the latest `now` it decided at and
    /// decides an older one at that time instead (a `now` read by another thread just before a
    /// month began could otherwise file the key's usage under the old month).
    #[inline(always)]
    fn decide_into(
        &self,
        req: CheckRequest<'_>,
        known: Option<KeyId>,
        now: u64,
        identity: Option<IdentityFn<'_>>,
        d: &mut Decision,
    ) {
        let CheckRequest { key, scope, cost } = req;
        let first_now_s = secs(now);
        let unauthorized = |d: &mut Decision, why, id, tier| {
            d.reset(Verdict::Unauthorized(why), id, tier, first_now_s);
        };
        let Some(raw) = key.filter(|k| !k.is_empty()) else {
            return unauthorized(d, AuthFailure::Missing, None, None);
        };
        // Only the characters of the id are validated here: a key whose digest then equals the
        // cached digest of a verified key is that key, and only well-formed keys are verified.
        // A key refused before that point is validated whole by the policy, to say why.
        let Some(id) = known.or_else(|| keyfmt::id_hint(raw.as_bytes())) else {
            return unauthorized(d, AuthFailure::Malformed, None, None);
        };
        // A key refused before it is authenticated names no key: its id part may be a real
        // key's, but nothing shows the caller holds that key.
        let refuse = |d: &mut Decision| match admission::presented(Some(raw)) {
            Ok(_) => unauthorized(d, AuthFailure::Unknown, None, None),
            Err(_) if known.is_some() => unauthorized(d, AuthFailure::Unknown, None, None),
            Err(why) => unauthorized(d, why, None, None),
        };
        let cost = cost.clamp(1, MAX_COST);
        let slot = id.slot();
        if u64::from(slot) >= self.key_count.load(Ordering::Acquire) {
            return refuse(d);
        }
        if self.shards.entry_ptr(slot).is_none() {
            return refuse(d);
        }
        // The entry's lines are on their way (prefetched from the same characters of the key
        // that `id_hint` decoded the slot from): hash the key meanwhile.
        let fast = self.digest.of(raw);
        let (_, idx) = Shards::locate(slot);
        let mut guard = self.shards.lock(slot);
        let gen = self.catalog_gen.load(Ordering::Acquire);
        if guard.catalog_gen != gen || guard.catalog.is_none() {
            guard.catalog = Some(self.catalog.load_full());
            guard.catalog_gen = gen;
        }
        let ShardData {
            grace,
            month: shard_month,
            catalog,
            latest_ns,
            first_use,
            written,
            ..
        } = &mut *guard;
        let now = now.max(*latest_ns);
        *latest_ns = now;
        let now_s = secs(now);
        let Some(catalog) = catalog.as_deref() else {
            return refuse(d);
        };
        // SAFETY: we hold the shard lock; slots below key_count have entries.
        let entry = unsafe { *self.shards.entry(slot) };
        if entry.id != id.0 {
            return refuse(d);
        }
        if (entry.fast != fast || entry.fast == 0)
            && self
                .authenticate_slow(grace, idx, slot, raw, fast, now)
                .is_err()
        {
            return refuse(d);
        }
        let tier_ix = entry.tier;
        let view = KeyView {
            presented: raw,
            revoked: entry.flags & FLAG_REVOKED != 0,
            expires_at_ns: entry.expires_at_ns,
            grants: Grants::Ids(catalog.scope_set(entry.scope_set)),
        };
        let admitted = match admission::admit(&view, catalog.tier(tier_ix), catalog, scope, now) {
            Ok(a) => a,
            Err(v) => {
                let at = if matches!(v, Verdict::Unauthorized(_)) {
                    first_now_s
                } else {
                    now_s
                };
                return d.reset(v, Some(id), admission::reported_tier(v, tier_ix), at);
            }
        };
        let tier = admitted.tier;
        if entry.group != 0 {
            // Consumer-wide counting: the group's counters, under the group's shard lock.
            let consumer = identity.is_some().then(|| {
                // SAFETY: shard lock held.
                unsafe { self.record_slot(slot) }
                    .map_or([0; 64], |rs| rs[layout::newest(rs)].consumer)
            });
            let sunset = admitted.sunset;
            drop(guard);
            let member = super::groups::Member {
                id,
                tier: tier_ix,
                sunset,
                consumer,
            };
            return self.decide_in_group(entry.group - 1, member, (now, cost), identity, d);
        }
        d.reset(Verdict::Allowed, Some(id), Some(tier_ix), now_s);
        d.sunset = admitted.sunset;
        let quota = limits::quota_of(layout::quota_override(entry.quota_override), tier);
        let spent = self.spend(
            slot,
            &entry,
            (tier_ix, tier, catalog),
            quota,
            (now, cost),
            (shard_month, first_use, written),
            d,
            || self.lend_identity(slot, id, &tier.spec.name, identity),
        );
        if !spent {
            unauthorized(d, AuthFailure::Unknown, Some(id), None);
        }
    }

    /// The limits phase and its durable write, for the counters in `slot` (a key's own, or its
    /// consumer's group's) under that slot's shard lock: `d` is allowed and names the key on
    /// entry; `shard` is the slot's shard's month, first-use list and written flag; `lend`
    /// lends the key's identity, called when the check is admitted (or allowed in shadow mode).
    /// False when `slot` has no counter slot (nothing decided).
    #[allow(clippy::too_many_arguments)]
    #[inline(always)]
    pub(super) fn spend(
        &self,
        slot: u32,
        entry: &HotEntry,
        (tier_ix, tier, catalog): (u16, &CompiledTier, &Catalog),
        quota: Option<u64>,
        (now, cost): (u64, u64),
        (shard_month, first_use, written): (&mut MonthWindow, &mut Vec<u32>, &mut bool),
        d: &mut Decision,
        lend: impl FnOnce(),
    ) -> bool {
        if !shard_month.contains(now) {
            *shard_month = MonthWindow::containing(now);
        }
        let month = *shard_month;
        let mut cur = entry.counters;
        if cur.seq != 0 && (cur.tier != tier_ix || cur.limits_version != tier.version) {
            convert_buckets(&mut cur, catalog, tier_ix, tier, now);
        }
        let used = limits::used_this_month(cur.month, cur.month_used, &month);
        let terms = Terms {
            limits: &tier.limits,
            quota,
            month: &month,
            enforce: tier.enforces(self.shadow),
        };
        let decided = limits::decide(&cur.tat, used, now, cost, &terms, d);
        let Some(tat) = decided else {
            if d.shadow.is_some() {
                // Allowed in shadow mode: nothing consumed, but the answer names the key.
                lend();
            }
            return true;
        };
        let next = CounterHalf::successor(
            entry.counters.seq,
            &CounterHalf {
                seq: 0,
                crc: 0,
                key_tag: (entry.id >> 32) as u32,
                tier: tier_ix,
                limits_version: tier.version,
                tat,
                month_used: used + cost,
                month: limits::month_to_store(cur.month, &month),
                last_used_s: secs(now).min(u64::from(u32::MAX)) as u32,
            },
        );
        let into = 1 - usize::from(entry.newest & 1);
        // SAFETY: the caller holds this slot's shard lock; it has a record, so its counter
        // slot exists.
        let Some(cs) = (unsafe { self.counter_slot(slot) }) else {
            return false;
        };
        // The identity is handed out before the durable write below: that store may wait for
        // its line, later stores queue behind it, and a load of what they wrote (the caller
        // reading back the names it just copied) would wait as long.
        lend();
        // The durable write: a 64-byte store into the older half of the mapped slot.
        cs[into] = next;
        *written = true;
        if entry.counters.seq == 0 {
            first_use.push(slot);
        }
        // SAFETY: shard lock held.
        let hot = unsafe { self.shards.entry(slot) };
        hot.counters = next;
        hot.newest = into as u8;
        true
    }

    /// Lends key `id`'s identity (its record is in `slot`, whose shard lock the caller holds).
    #[inline]
    fn lend_identity(
        &self,
        slot: u32,
        id: KeyId,
        tier: &str,
        identity: Option<&mut (dyn FnMut(Identity<'_>) + Send)>,
    ) {
        let Some(f) = identity else {
            return;
        };
        // SAFETY: the caller holds the shard lock.
        if let Some(rs) = unsafe { self.record_slot(slot) } {
            let r = &rs[layout::newest(rs)];
            f(Identity {
                id,
                consumer: layout::get_str(&r.consumer).unwrap_or(""),
                tier,
            });
        }
    }

    /// Verifies `raw` against the stored SHA-256 (current secret, or the previous one during a
    /// rotation grace period) and caches its fast digest. Runs once per key per process, and for
    /// every wrong secret.
    #[cold]
    fn authenticate_slow(
        &self,
        grace: &mut HashMap<u32, Grace>,
        idx: usize,
        slot: u32,
        raw: &str,
        fast: u64,
        now: u64,
    ) -> Result<(), AuthFailure> {
        if let Some(g) = grace.get(&(idx as u32)).copied() {
            if g.fast == fast && g.fast != 0 {
                return if now < g.until_ns {
                    Ok(())
                } else {
                    Err(AuthFailure::Unknown)
                };
            }
        }
        // SAFETY: we hold the shard lock of `slot`.
        let Some(rs) = (unsafe { self.record_slot(slot) }) else {
            return Err(AuthFailure::Unknown);
        };
        let rec = rs[layout::newest(rs)];
        let h = keyfmt::hash(raw);
        if bool::from(h.ct_eq(&rec.hash_current)) {
            // SAFETY: shard lock held (the caller's `shard`).
            unsafe { self.shards.entry(slot) }.fast = fast;
            return Ok(());
        }
        if rec.previous_valid_until_ns != 0 && bool::from(h.ct_eq(&rec.hash_previous)) {
            if let Some(g) = grace.get_mut(&(idx as u32)) {
                g.fast = fast;
            }
            return if now < rec.previous_valid_until_ns {
                Ok(())
            } else {
                Err(AuthFailure::Unknown)
            };
        }
        Err(AuthFailure::Unknown)
    }
}

/// Re-expresses a counter written under other limits in the tier's current ones (the policy's
/// `reexpress_buckets`). If the old limits are no longer remembered the buckets keep their
/// "full again at" instants.
#[cold]
pub(super) fn convert_buckets(
    c: &mut CounterHalf,
    catalog: &Catalog,
    tier_ix: u16,
    tier: &CompiledTier,
    now: u64,
) {
    let Some(old) = catalog.limits_at(c.tier, c.limits_version) else {
        return;
    };
    c.tat = limits::reexpress_buckets(&c.tat, old, &tier.limits, now);
    c.tier = tier_ix;
    c.limits_version = tier.version;
}

/// Whether the CPU has `prefetchw` (CPUID 8000_0001h ECX bit 8, "3DNowPrefetch"/PRFCHW: AMD
/// since K8, Intel since Broadwell). Where it lacks it the instruction is a no-op, so the
/// store then prefetches for reading instead.
pub(super) fn has_prefetch_write() -> bool {
    #[cfg(target_arch = "x86_64")]
    #[allow(unused_unsafe)]
    // SAFETY: CPUID is available on every x86-64 CPU; leaf 8000_0001h is read only when the
    // highest extended leaf reaches it.
    unsafe {
        use std::arch::x86_64::__cpuid;
        __cpuid(0x8000_0000).eax >= 0x8000_0001 && __cpuid(0x8000_0001).ecx & (1 << 8) != 0
    }
    #[cfg(not(target_arch = "x86_64"))]
    false
}

/// Starts loading the line at `p` for writing (exclusive state); a no-op on CPUs without
/// `prefetchw` (see [`has_prefetch_write`]).
#[inline(always)]
fn prefetch_write(p: *const u8) {
    #[cfg(target_arch = "x86_64")]
    // SAFETY: prefetching never faults, whatever the address; it touches no register or flag.
    unsafe {
        std::arch::asm!("prefetchw [{0}]", in(reg) p, options(nostack, preserves_flags, readonly));
    }
    #[cfg(not(target_arch = "x86_64"))]
    let _ = p;
}

#[inline(always)]
fn prefetch(p: *const u8) {
    #[cfg(target_arch = "x86_64")]
    // SAFETY: prefetching never faults, whatever the address.
    unsafe {
        std::arch::x86_64::_mm_prefetch(p as *const i8, std::arch::x86_64::_MM_HINT_T0);
    }
    #[cfg(not(target_arch = "x86_64"))]
    let _ = p;
}
