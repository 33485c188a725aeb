//! The decision engine: keys, tiers, burst buckets and monthly quotas over memory-mapped state.
//!
//! [`Engine::check`] is the one question every transport asks. It runs under one shard lock:
//! authenticate the key (a keyed SipHash compared with the digest cached at the first successful
//! SHA-256 verification), check revocation, expiry, scope and plan, evaluate every GCRA bucket and
//! the monthly quota as pure functions, and, only if all admit, write the new counter state into
//! the key's mapped slot. Denials write nothing.
//!
//! Admin operations (create, update, revoke, rotate, tiers) are serialized by one mutex, write the
//! record or catalog durably (`msync` / `fsync`) and then publish the change to the hot path.

pub mod bucket;
pub mod catalog;
pub mod clock;
pub mod decision;
pub mod month;
pub mod shards;
pub mod spend;

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use arc_swap::ArcSwap;
use parking_lot::Mutex;
use subtle::ConstantTimeEq;

use crate::keys::format as keyfmt;
use crate::keys::record::{
    CreatedKey, KeyInfo, KeyUpdate, LimitUsage, NewKey, Usage, MAX_CONSUMER_LEN, MAX_KEY_NAME_LEN,
    MAX_KEY_SCOPES,
};
use crate::keys::KeyId;
use crate::store::arena::{Arena, ArenaKind};
use crate::store::catalog_file::{self, CatalogDoc};
use crate::store::datadir::DirLock;
use crate::store::layout::{
    self, CounterHalf, CounterSlot, RecordHalf, RecordSlot, SlotState, COUNTERS_MAGIC, FLAG_LIVE,
    FLAG_REVOKED, KEYS_MAGIC, NO_OVERRIDE,
};
use crate::store::StoreError;
use crate::tiers::{self, TierSpec};

use self::bucket::evaluate;
use self::catalog::{intern_scope_set, Catalog, CatalogError};
use self::clock::{Clock, NANOS_PER_SEC};
use self::decision::{AuthFailure, Decision, Verdict};
use self::month::MonthWindow;
use self::shards::{Grace, HotEntry, ShardData, Shards};

const COUNTERS: ArenaKind = ArenaKind {
    stem: "counters",
    magic: COUNTERS_MAGIC,
    slot_size: 128,
};
const KEYS: ArenaKind = ArenaKind {
    stem: "keys",
    magic: KEYS_MAGIC,
    slot_size: 512,
};

/// Offsets in a record slot of the lines [`Engine::check_identified`] reads: each half's `seq`
/// (which half is newest) and its consumer (64 bytes from offset 136: two lines).
const RECORD_IDENTITY_LINES: [usize; 6] = {
    const H: usize = std::mem::size_of::<RecordHalf>();
    const C: usize = std::mem::offset_of!(RecordHalf, consumer);
    [0, C, C + 63, H, H + C, H + C + 63]
};
const _: () = assert!(2 * std::mem::size_of::<RecordHalf>() == 512);

/// What [`Engine::check_identified`] lends an admitted check's identity to: key id, consumer,
/// tier name.
type IdentityFn<'a> = &'a mut dyn FnMut(KeyId, &str, &str);

/// The most keys one data directory holds.
pub const MAX_KEYS: u64 = u32::MAX as u64;
/// The largest cost one check may ask for.
pub const MAX_COST: u64 = 1_000_000;

/// How to open an engine.
#[derive(Debug, Clone)]
pub struct EngineOptions {
    /// The data directory.
    pub data_dir: PathBuf,
    /// Tiers to put in force at start-up, replacing the stored ones (e.g. from `--tiers FILE`).
    /// `None` keeps the stored tiers (built-ins on a new data directory).
    pub tiers: Option<Vec<TierSpec>>,
    /// `msync` each key record change before returning (on by default; benches turn it off).
    pub sync_records: bool,
}

impl EngineOptions {
    /// Defaults for `data_dir`.
    pub fn new(data_dir: impl Into<PathBuf>) -> Self {
        EngineOptions {
            data_dir: data_dir.into(),
            tiers: None,
            sync_records: true,
        }
    }
}

/// An engine error. Denials are not errors; these are failed admin operations and storage faults.
#[derive(Debug, thiserror::Error)]
pub enum EngineError {
    /// No key with that id.
    #[error("unknown key id")]
    UnknownKey,
    /// No tier with that name.
    #[error("unknown tier {0:?}")]
    UnknownTier(String),
    /// The tier is used by keys.
    #[error("tier {tier:?} is used by {keys} key(s)")]
    TierInUse {
        /// The tier.
        tier: String,
        /// How many keys use it.
        keys: u64,
    },
    /// A bad argument.
    #[error("{0}")]
    Invalid(String),
    /// A bad tier or catalog change.
    #[error(transparent)]
    Catalog(#[from] CatalogError),
    /// A storage fault.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// The shared store (Redis) could not be reached.
    #[error("store unavailable: {0}")]
    Unavailable(String),
}

impl EngineError {
    /// A stable code for transports: `not_found`, `bad_request`, `conflict` or `storage`.
    pub fn code(&self) -> &'static str {
        match self {
            EngineError::UnknownKey => "not_found",
            EngineError::UnknownTier(_) => "not_found",
            EngineError::TierInUse { .. } => "conflict",
            EngineError::Invalid(_) | EngineError::Catalog(_) => "bad_request",
            EngineError::Store(_) => "storage",
            EngineError::Unavailable(_) => "unavailable",
        }
    }
}

struct AdminState {
    key_count: u32,
    /// Keys per tier index.
    tier_use: Vec<u64>,
}

/// The engine. Cheap to share behind an `Arc`; every method takes `&self`.
pub struct Engine {
    clock: Arc<dyn Clock>,
    catalog: ArcSwap<Catalog>,
    /// Bumped after every catalog change; shards refresh their cached catalog when it moves.
    catalog_gen: AtomicU64,
    shards: Shards,
    counters: Arena,
    records: Arena,
    admin: Mutex<AdminState>,
    key_count: AtomicU64,
    digest: keyfmt::FastDigest,
    data_dir: PathBuf,
    sync_records: bool,
    last_flush_ns: AtomicU64,
    /// Whether this CPU has `prefetchw` (see [`prefetch_write`]).
    prefetch_exclusive: bool,
    _lock: DirLock,
}

impl std::fmt::Debug for Engine {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Engine")
            .field("data_dir", &self.data_dir)
            .field("keys", &self.key_count())
            .finish()
    }
}

pub(crate) fn random_u64() -> Result<u64, EngineError> {
    let mut b = [0u8; 8];
    getrandom::getrandom(&mut b)
        .map_err(|e| EngineError::Invalid(format!("OS random source failed: {e}")))?;
    Ok(u64::from_le_bytes(b))
}

fn secs(ns: u64) -> u64 {
    ns / NANOS_PER_SEC
}

fn ceil_secs(ns: u64) -> u64 {
    ns.div_ceil(NANOS_PER_SEC)
}

fn hot_from_record(r: &RecordHalf) -> HotEntry {
    HotEntry {
        fast: 0,
        id: r.id,
        expires_at_ns: if r.expires_at_s == 0 {
            u64::MAX
        } else {
            r.expires_at_s.saturating_mul(NANOS_PER_SEC)
        },
        quota_override: r.monthly_quota,
        tier: r.tier,
        flags: r.flags,
        scope_set: r.scope_set,
        counters: CounterHalf::default(),
        newest: 0,
    }
}

/// Rewrites a slot so both halves agree with `state` and the newest half is intact (repairs a torn
/// write left by a killed process before the hot path, which trusts sequence numbers, reads it).
fn repair<H: layout::Half>(slot: &mut [H; 2], state: H) {
    let seq = state.seq();
    let mut older = state;
    older.set_seq(seq.wrapping_sub(1));
    older.set_crc(0);
    let c = older.compute_crc();
    older.set_crc(c);
    slot[0] = older;
    slot[1] = state;
}

impl Engine {
    /// Opens (or creates) the data directory and loads every key.
    ///
    /// Refuses to start, naming the file and the fault, on any damaged, truncated or foreign file;
    /// nothing is overwritten in that case.
    pub fn open(opts: EngineOptions, clock: Arc<dyn Clock>) -> Result<Self, EngineError> {
        let dir = opts.data_dir.clone();
        let lock = DirLock::acquire(&dir)?;
        let (doc, fresh) = match catalog_file::load(&dir)? {
            Some(doc) => (doc, false),
            None => {
                let stray = Arena::segment_path(&dir, &KEYS, 0);
                if stray.exists() {
                    return Err(StoreError::corrupt(
                        dir.join(catalog_file::CATALOG_FILE),
                        format!("missing, but {} exists", stray.display()),
                    )
                    .into());
                }
                (CatalogDoc::new(random_u64()?, tiers::builtin_tiers()), true)
            }
        };
        let now = clock.now_ns();
        let Loaded {
            records,
            counters,
            shards,
            catalog: stored,
            mut tier_use,
            repairs,
            key_count,
        } = load(&dir, doc, now)?;
        if key_count > 0 {
            records.ensure(key_count - 1)?;
            counters.ensure(key_count - 1)?;
        }
        // Everything checked: only now touch the files (torn writes of a killed process).
        if !repairs.is_empty() {
            for r in repairs {
                r.apply(&records, &counters);
            }
            records.flush_all()?;
            counters.flush_all()?;
        }

        let (catalog, changed) = match opts.tiers {
            None => (stored, fresh),
            Some(new_tiers) => {
                let mut doc = stored.doc().clone();
                replace_tiers(&mut doc, &tier_use, new_tiers)?;
                let changed = fresh || doc != *stored.doc();
                (Catalog::compile(doc)?, changed)
            }
        };
        tier_use.resize(catalog.doc().tiers.len(), 0);
        if changed {
            catalog_file::store(&dir, catalog.doc())?;
        }
        Ok(Engine {
            clock,
            catalog: ArcSwap::from_pointee(catalog),
            catalog_gen: AtomicU64::new(1),
            shards,
            counters,
            records,
            admin: Mutex::new(AdminState {
                key_count,
                tier_use,
            }),
            key_count: AtomicU64::new(u64::from(key_count)),
            digest: keyfmt::FastDigest::random()
                .map_err(|e| EngineError::Invalid(format!("OS random source failed: {e}")))?,
            data_dir: dir,
            sync_records: opts.sync_records,
            last_flush_ns: AtomicU64::new(now),
            prefetch_exclusive: has_prefetch_write(),
            _lock: lock,
        })
    }

    fn load_records(
        records: &Arena,
        catalog: &Catalog,
        shards: &Shards,
        tier_use: &mut [u64],
        repairs: &mut Vec<Repair>,
    ) -> Result<u32, EngineError> {
        let cap = records.capacity();
        let mut count: u32 = 0;
        let mut ended = false;
        for slot in 0..cap as u32 {
            let Some(ptr) = records.slot_ptr(slot) else {
                break;
            };
            // SAFETY: start-up, single-threaded; the pointer addresses one 512-byte slot.
            let rs = unsafe { &*(ptr as *const RecordSlot) };
            let fault = |detail: String| StoreError::corrupt(records.path_of(slot), detail);
            match layout::read_checked(rs) {
                SlotState::Empty => ended = true,
                SlotState::Interrupted => {
                    // A key creation killed mid-write: it never returned, so the key never
                    // existed. Only possible for the last slot.
                    ended = true;
                    tracing::warn!(slot, file = %records.path_of(slot).display(), "discarding an interrupted key creation");
                    repairs.push(Repair::ClearRecord(slot));
                }
                SlotState::Damaged => {
                    return Err(fault(format!(
                        "key record in slot {slot}: both copies fail their checksum"
                    ))
                    .into())
                }
                SlotState::Valid(r) => {
                    if ended {
                        return Err(fault(format!(
                            "key record in slot {slot} follows an empty slot (records are written in order)"
                        ))
                        .into());
                    }
                    if r.id as u32 != slot || r.flags & FLAG_LIVE == 0 {
                        return Err(fault(format!(
                            "key record in slot {slot} carries id {:#x}",
                            r.id
                        ))
                        .into());
                    }
                    if catalog.tier(r.tier).is_none() {
                        return Err(fault(format!(
                            "key record in slot {slot} names tier #{} which catalog.json lacks",
                            r.tier
                        ))
                        .into());
                    }
                    if r.scope_set as usize >= catalog.scope_set_count() {
                        return Err(fault(format!(
                            "key record in slot {slot} names scope set #{} which catalog.json lacks",
                            r.scope_set
                        ))
                        .into());
                    }
                    if rs[layout::newest(rs)] != r {
                        repairs.push(Repair::Record(slot, r));
                    }
                    let (_, idx) = Shards::locate(slot);
                    shards.ensure(slot);
                    let mut g = shards.lock(slot);
                    // SAFETY: shard lock held; ensured above.
                    unsafe { *shards.entry(slot) = hot_from_record(&r) };
                    if r.previous_valid_until_ns != 0 {
                        g.grace.insert(
                            idx as u32,
                            Grace {
                                fast: 0,
                                until_ns: r.previous_valid_until_ns,
                            },
                        );
                    }
                    tier_use[usize::from(r.tier)] += 1;
                    count = slot + 1;
                }
            }
        }
        Ok(count)
    }

    fn check_counters(
        counters: &Arena,
        shards: &Shards,
        key_count: u32,
        repairs: &mut Vec<Repair>,
    ) -> Result<(), EngineError> {
        for slot in 0..counters.capacity() as u32 {
            let Some(ptr) = counters.slot_ptr(slot) else {
                break;
            };
            // SAFETY: start-up, single-threaded; one 128-byte slot.
            let cs = unsafe { &*(ptr as *const CounterSlot) };
            let fault = |detail: String| StoreError::corrupt(counters.path_of(slot), detail);
            let state = layout::read_checked(cs);
            if slot >= key_count {
                if !matches!(state, SlotState::Empty) {
                    return Err(fault(format!(
                        "counter slot {slot} holds data but no key record exists"
                    ))
                    .into());
                }
                continue;
            }
            match state {
                SlotState::Empty => {}
                SlotState::Interrupted => repairs.push(Repair::ClearCounter(slot)),
                SlotState::Damaged => {
                    return Err(fault(format!(
                        "counter slot {slot}: both copies fail their checksum"
                    ))
                    .into())
                }
                SlotState::Valid(c) => {
                    let _g = shards.lock(slot);
                    // SAFETY: shard lock held; every slot below key_count was ensured.
                    let entry = unsafe { shards.entry(slot) };
                    let id = entry.id;
                    if c.key_tag != (id >> 32) as u32 {
                        return Err(fault(format!(
                            "counter slot {slot} belongs to key tag {:#x}, record says {:#x}",
                            c.key_tag,
                            id >> 32
                        ))
                        .into());
                    }
                    let newest = layout::newest(cs);
                    entry.counters = c;
                    entry.newest = newest as u8;
                    if cs[newest] != c {
                        // `repair` leaves the valid state in half 1.
                        entry.newest = 1;
                        repairs.push(Repair::Counter(slot, c));
                    }
                }
            }
        }
        Ok(())
    }

    /// Puts `catalog` in force: the next check of every shard sees it.
    fn publish_catalog(&self, catalog: Catalog) {
        self.catalog.store(Arc::new(catalog));
        self.catalog_gen.fetch_add(1, Ordering::Release);
    }

    /// The data directory.
    pub fn data_dir(&self) -> &Path {
        &self.data_dir
    }

    /// The engine's clock.
    pub fn clock(&self) -> &Arc<dyn Clock> {
        &self.clock
    }

    /// Number of keys (live, revoked and expired).
    pub fn key_count(&self) -> u64 {
        self.key_count.load(Ordering::Relaxed)
    }

    /// # Safety
    /// The caller holds the lock of the shard owning `slot`, and `slot` has a record.
    // The shard lock, not `&mut self`, is what makes this access exclusive.
    #[allow(clippy::mut_from_ref)]
    #[inline]
    unsafe fn counter_slot(&self, slot: u32) -> Option<&mut CounterSlot> {
        self.counters
            .slot_ptr(slot)
            .map(|p| &mut *(p as *mut CounterSlot))
    }

    /// # Safety
    /// The caller holds the lock of the shard owning `slot`.
    #[allow(clippy::mut_from_ref)]
    #[inline]
    unsafe fn record_slot(&self, slot: u32) -> Option<&mut RecordSlot> {
        self.records
            .slot_ptr(slot)
            .map(|p| &mut *(p as *mut RecordSlot))
    }

    /// Decides whether `raw_key` may make a call needing `scope` (if any) at `cost` (>= 1).
    ///
    /// Order: unauthorized, forbidden, plan_required, burst limits, monthly quota. A denied
    /// request consumes nothing; an admitted one takes `cost` from every limit and the quota.
    pub fn check(&self, raw_key: Option<&str>, scope: Option<&str>, cost: u64) -> Decision {
        self.prefetch_entry(raw_key.unwrap_or("").as_bytes());
        self.check_at(raw_key, scope, cost, self.clock.now_ns())
    }

    /// Starts loading the in-memory entry of the key `raw_key` names, without waiting for it.
    ///
    /// On a large key table that entry is a cache miss, the one a check waits for. Every check
    /// starts it first thing (reading the clock, validating and hashing the key then run
    /// meanwhile); a transport holding several checks at once (the frames of one read) calls this
    /// for the next few before deciding the current one, so their misses overlap instead of
    /// following each other. A malformed or unknown key is ignored here and refused by the check.
    #[inline]
    pub fn prefetch_entry(&self, raw_key: &[u8]) {
        if let Some(slot) = keyfmt::slot_hint(raw_key) {
            self.prefetch_entry_of(slot);
        }
    }

    /// Starts taking, for writing, what a check of `raw_key` waits for first: the key's entry and
    /// its shard's lock. A transport that has the key before the rest of the request (the HTTP
    /// server, once it has found the key's header) calls this first, so that the lines, when
    /// another core wrote them last, travel while it reads the rest of the request. Measured in the
    /// HTTP server: ≈ 0.1 µs per request less (see docs/PERFORMANCE.md). Where the CPU has no
    /// write prefetch, the entry is prefetched for reading and the lock is left alone.
    #[inline]
    pub fn prefetch_for_check(&self, raw_key: &[u8]) {
        if let Some(slot) = keyfmt::slot_hint(raw_key) {
            self.prefetch_entry_of(slot);
            if self.prefetch_exclusive {
                prefetch_write(self.shards.lock_ptr(slot));
            }
        }
    }

    /// [`prefetch_entry`](Self::prefetch_entry) of the key in `slot`.
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

    /// [`check`](Self::check) at `now` (ns since the epoch), which the caller read from this
    /// engine's [`clock`](Self::clock): a transport deciding several checks that arrived together
    /// reads the clock once for all of them. The caller also starts loading the key's entry
    /// ([`prefetch_entry`](Self::prefetch_entry)), best a few checks ahead, as `check` does for
    /// itself just before.
    ///
    /// Time never goes back for a key: each shard keeps the latest `now` it decided at and decides
    /// an older one at that time instead. (A `now` read by another thread just before a month
    /// began could otherwise arrive after a check of the new month and file the key's usage
    /// under the old one.)
    #[inline(always)]
    pub fn check_at(
        &self,
        raw_key: Option<&str>,
        scope: Option<&str>,
        cost: u64,
        now: u64,
    ) -> Decision {
        self.check_with(raw_key, scope, cost, now, None, |d| *d)
    }

    /// [`check_at`](Self::check_at), with `finish` given the decision in place and its result
    /// returned: for a caller that turns the decision into something smaller (the binary
    /// protocol's fixed-size answer), without the decision being copied out first.
    #[inline(always)]
    pub fn check_at_with<R>(
        &self,
        raw_key: Option<&str>,
        scope: Option<&str>,
        cost: u64,
        now: u64,
        finish: impl FnOnce(&Decision) -> R,
    ) -> R {
        self.check_with(raw_key, scope, cost, now, None, finish)
    }

    /// [`check`](Self::check), and for an admitted check the key's identity: `identity` is
    /// called with the key's id, its consumer and its tier's name, read under the same shard lock
    /// as the decision (the HTTP answer carries them), before the check returns. Denied checks do not
    /// call it. The names are lent rather than copied out: the caller writes them where its
    /// answer needs them, and no identity value is moved from frame to frame.
    ///
    /// Looking the names up after the check would take the lock again and load the catalog, two
    /// more atomic read-modify-writes that each wait for the check's store into the mapped file
    /// to drain.
    pub fn check_identified(
        &self,
        raw_key: Option<&str>,
        scope: Option<&str>,
        cost: u64,
        identity: &mut dyn FnMut(KeyId, &str, &str),
    ) -> Decision {
        if let Some(slot) = keyfmt::slot_hint(raw_key.unwrap_or("").as_bytes()) {
            self.prefetch_entry_of(slot);
            // The record's lines the identity is read from; they load while the key is hashed.
            if let Some(p) = self.records.slot_ptr(slot) {
                for off in RECORD_IDENTITY_LINES {
                    prefetch(p.wrapping_add(off) as *const u8);
                }
            }
            // And the counter slot, for writing. In a server whose workers share keys, its line
            // was often written last by another core; without this the check's store into it
            // waits for that line, and the caller's first loads of what the check wrote wait
            // behind the store (measured in the HTTP server: ≈ 0.13 µs per request, gone with
            // the prefetch). A check alone in a loop does not wait for its store, so this shows
            // only in place: `examples/shared_keys` measures it 3–15 ns slower.
            if self.prefetch_exclusive {
                if let Some(c) = self.counters.slot_ptr(slot) {
                    prefetch_write(c);
                    prefetch_write(c.wrapping_add(64));
                }
            }
        }
        self.check_with(
            raw_key,
            scope,
            cost,
            self.clock.now_ns(),
            Some(identity),
            |d| *d,
        )
    }

    /// The check, with `finish` given the decision where it was made: a caller that needs only
    /// part of it (the binary protocol's answer) reads that part in place. Returning the
    /// decision by value copies it (264 bytes, a `memcpy`), and the copy's wide loads of fields
    /// just stored narrow wait for those stores to reach the cache (see docs/PERFORMANCE.md).
    #[inline(always)]
    fn check_with<R>(
        &self,
        raw_key: Option<&str>,
        scope: Option<&str>,
        cost: u64,
        now: u64,
        identity: Option<IdentityFn<'_>>,
        finish: impl FnOnce(&Decision) -> R,
    ) -> R {
        let mut d = Decision::bare(Verdict::Allowed, None, None, secs(now));
        self.decide_into(raw_key, scope, cost, now, identity, &mut d);
        finish(&d)
    }

    /// The check itself, into `d` (a bare decision on entry).
    #[inline(always)]
    fn decide_into(
        &self,
        raw_key: Option<&str>,
        scope: Option<&str>,
        cost: u64,
        now: u64,
        identity: Option<IdentityFn<'_>>,
        d: &mut Decision,
    ) {
        let first_now_s = secs(now);
        let unauthorized = |d: &mut Decision, why, id, tier| {
            d.reset(Verdict::Unauthorized(why), id, tier, first_now_s);
        };
        let Some(raw) = raw_key.filter(|k| !k.is_empty()) else {
            return unauthorized(d, AuthFailure::Missing, None, None);
        };
        // Only the characters of the id are validated here: a key whose digest then equals the
        // cached digest of a verified key is that key, and only well-formed keys are verified.
        // A key refused before that point is validated whole, to say why.
        let Some(id) = keyfmt::id_hint(raw.as_bytes()) else {
            return unauthorized(d, AuthFailure::Malformed, None, None);
        };
        let refuse = |d: &mut Decision, id: Option<KeyId>| match keyfmt::parse(raw) {
            Ok(_) => unauthorized(d, AuthFailure::Unknown, id, None),
            Err(_) => unauthorized(d, AuthFailure::Malformed, None, None),
        };
        let cost = cost.clamp(1, MAX_COST);
        let slot = id.slot();
        if u64::from(slot) >= self.key_count.load(Ordering::Acquire) {
            return refuse(d, None);
        }
        if self.shards.entry_ptr(slot).is_none() {
            return refuse(d, None);
        }
        // The entry's two lines are on their way (the caller's `prefetch_entry`, from the same
        // characters of the key that `id_hint` decoded the slot from): hash the key meanwhile.
        // The counter slot in the file is only written, below: no load waits for it.
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
            ..
        } = &mut *guard;
        let now = now.max(*latest_ns);
        *latest_ns = now;
        let now_s = secs(now);
        let Some(catalog) = catalog.as_deref() else {
            return refuse(d, None);
        };
        // SAFETY: we hold the shard lock; slots below key_count have entries.
        let entry = unsafe { *self.shards.entry(slot) };
        if entry.id != id.0 {
            return refuse(d, None);
        }
        if entry.fast != fast || entry.fast == 0 {
            match self.authenticate_slow(grace, idx, slot, raw, fast, now) {
                Ok(()) => {}
                Err(_) => return refuse(d, Some(id)),
            }
        }
        let tier_ix = entry.tier;
        if entry.flags & FLAG_REVOKED != 0 {
            return unauthorized(d, AuthFailure::Revoked, Some(id), Some(tier_ix));
        }
        if now >= entry.expires_at_ns {
            return unauthorized(d, AuthFailure::Expired, Some(id), Some(tier_ix));
        }
        let Some(tier) = catalog.tier(tier_ix) else {
            // Unreachable while tiers in use cannot be deleted; deny rather than admit.
            return unauthorized(d, AuthFailure::Unknown, Some(id), None);
        };
        if let Some(scope) = scope {
            let sid = catalog.scope_id(scope);
            let granted = catalog.scope_set(entry.scope_set);
            if !granted.is_empty() && !sid.is_some_and(|s| granted.contains(&s)) {
                return d.reset(Verdict::Forbidden, Some(id), Some(tier_ix), now_s);
            }
            if let Some(plan) = &tier.scopes {
                if !sid.is_some_and(|s| plan.contains(&s)) {
                    return d.reset(Verdict::PlanRequired, Some(id), Some(tier_ix), now_s);
                }
            }
        }

        if !shard_month.contains(now) {
            *shard_month = MonthWindow::containing(now);
        }
        let month = *shard_month;
        let mut cur = entry.counters;
        if cur.seq != 0 && (cur.tier != tier_ix || cur.limits_version != tier.version) {
            convert_buckets(&mut cur, catalog, tier_ix, tier, now);
        }
        let quota = if entry.quota_override != NO_OVERRIDE {
            Some(entry.quota_override)
        } else {
            tier.spec.monthly_quota
        };
        let used = if cur.month == month.id {
            cur.month_used
        } else {
            0
        };
        d.reset(Verdict::Allowed, Some(id), Some(tier_ix), now_s);
        let terms = spend::Terms {
            limits: &tier.limits,
            quota,
            month: &month,
        };
        let Some(tat) = spend::decide(&cur.tat, used, now, cost, &terms, d) else {
            return;
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
                month: month.id,
                last_used_s: now_s.min(u64::from(u32::MAX)) as u32,
            },
        );
        let into = 1 - usize::from(entry.newest & 1);
        // SAFETY: we hold this slot's shard lock; the key has a record, so its counter slot exists.
        let Some(cs) = (unsafe { self.counter_slot(slot) }) else {
            return unauthorized(d, AuthFailure::Unknown, Some(id), None);
        };
        // The identity is handed out before the durable write below: that store may wait for
        // its line (another core's, or not yet in the cache), later stores queue behind it, and
        // a load of what they wrote (the caller reading back the names it just copied) would
        // wait as long.
        if let Some(f) = identity {
            // SAFETY: shard lock held.
            if let Some(rs) = unsafe { self.record_slot(slot) } {
                let r = &rs[layout::newest(rs)];
                f(
                    id,
                    layout::get_str(&r.consumer).unwrap_or(""),
                    &tier.spec.name,
                );
            }
        }
        // The durable write: a 64-byte store into the older half of the mapped slot.
        cs[into] = next;
        // SAFETY: shard lock held.
        let hot = unsafe { self.shards.entry(slot) };
        hot.counters = next;
        hot.newest = into as u8;
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

    /// `msync`s every counter page; bounds what a power loss (not a crash) can cost.
    pub fn flush(&self) -> Result<(), EngineError> {
        self.counters.flush_all()?;
        // Record changes are msynced as they are made, unless the engine was opened without that.
        if !self.sync_records {
            self.records.flush_all()?;
        }
        self.last_flush_ns
            .store(self.clock.now_ns(), Ordering::Relaxed);
        Ok(())
    }

    /// When [`Engine::flush`] last completed, ns since the epoch.
    pub fn last_flush_ns(&self) -> u64 {
        self.last_flush_ns.load(Ordering::Relaxed)
    }

    // ----- admin: keys -----------------------------------------------------------------------

    /// Creates one key; the record is durable before this returns. The raw key is in the result
    /// and nowhere else.
    pub fn create_key(&self, new: NewKey) -> Result<CreatedKey, EngineError> {
        let mut v = self.create_keys(vec![new])?;
        v.pop()
            .ok_or_else(|| EngineError::Invalid("no key created".into()))
    }

    /// Creates many keys with one `msync` at the end (bulk import, load generation).
    pub fn create_keys(&self, news: Vec<NewKey>) -> Result<Vec<CreatedKey>, EngineError> {
        for k in &news {
            validate_new(k)?;
        }
        let mut admin = self.admin.lock();
        let catalog = self.catalog.load_full();
        let mut doc = catalog.doc().clone();
        let mut plan = Vec::with_capacity(news.len());
        for k in &news {
            let tier = catalog
                .tier_index(&k.tier)
                .ok_or_else(|| EngineError::Invalid(format!("unknown tier {:?}", k.tier)))?;
            let set = intern_scope_set(&mut doc, &k.scopes)?;
            plan.push((tier, set));
        }
        if u64::from(admin.key_count) + news.len() as u64 > MAX_KEYS {
            return Err(StoreError::Full {
                path: self.data_dir.clone(),
            }
            .into());
        }
        if doc != *catalog.doc() {
            let compiled = Catalog::compile(doc)?;
            catalog_file::store(&self.data_dir, compiled.doc())?;
            self.publish_catalog(compiled);
        }
        let now = self.clock.now_ns();
        let first = admin.key_count;
        let last = first + news.len() as u32;
        if last > first {
            self.records.ensure(last - 1)?;
            self.counters.ensure(last - 1)?;
        }
        // A few keys: msync each record; a bulk import: one msync of everything at the end.
        let sync_each = self.sync_records && news.len() <= 64;
        let mut out = Vec::with_capacity(news.len());
        for (i, (k, (tier, set))) in news.into_iter().zip(plan).enumerate() {
            let slot = first + i as u32;
            let tag = random_u64()? as u32;
            let id = KeyId::new(slot, tag);
            let prefix = k.prefix.as_deref().unwrap_or(keyfmt::DEFAULT_PREFIX);
            let raw = keyfmt::generate(prefix, id)
                .map_err(|e| EngineError::Invalid(format!("OS random source failed: {e}")))?;
            let rec = RecordHalf {
                seq: 0,
                crc: 0,
                id: id.0,
                hash_current: keyfmt::hash(&raw),
                hash_previous: [0; 32],
                previous_valid_until_ns: 0,
                created_at_s: secs(now),
                expires_at_s: k.expires_at.unwrap_or(0),
                monthly_quota: k.monthly_quota.unwrap_or(NO_OVERRIDE),
                tier,
                flags: FLAG_LIVE,
                scope_set: set,
                display_prefix: layout::put_str(&keyfmt::display_prefix(&raw)),
                consumer: layout::put_str(&k.consumer),
                name: layout::put_str(k.name.as_deref().unwrap_or("")),
            };
            {
                let g = self.shards.lock(slot);
                // SAFETY: shard lock held; `ensure` created the slot.
                let rs = unsafe { self.record_slot(slot) }.ok_or(EngineError::UnknownKey)?;
                // Both halves, so that a damaged copy of a key never updated since can be told
                // apart from an interrupted creation.
                layout::write_next(rs, rec);
                layout::write_next(rs, rec);
                // SAFETY: shard lock held; the entry exists once ensured, and checks see the slot
                // only after `key_count` is published below.
                self.shards.ensure(slot);
                unsafe { *self.shards.entry(slot) = hot_from_record(&rec) };
                drop(g);
            }
            if sync_each {
                self.records.flush_slot(slot)?;
            }
            admin.tier_use[usize::from(tier)] += 1;
            out.push((slot, raw));
        }
        if self.sync_records && !sync_each {
            self.records.flush_all()?;
        }
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

    fn read_record(&self, id: KeyId) -> Result<RecordHalf, EngineError> {
        let slot = id.slot();
        if u64::from(slot) >= self.key_count() {
            return Err(EngineError::UnknownKey);
        }
        let _g = self.shards.lock(slot);
        // SAFETY: shard lock held.
        let rs = unsafe { self.record_slot(slot) }.ok_or(EngineError::UnknownKey)?;
        let r = rs[layout::newest(rs)];
        if r.id != id.0 {
            return Err(EngineError::UnknownKey);
        }
        Ok(r)
    }

    fn info_by_slot(&self, slot: u32) -> Result<KeyInfo, EngineError> {
        let _g = self.shards.lock(slot);
        // SAFETY: shard lock held.
        let rs = unsafe { self.record_slot(slot) }.ok_or(EngineError::UnknownKey)?;
        let r = rs[layout::newest(rs)];
        drop(_g);
        Ok(self.info_from(&r))
    }

    fn info_from(&self, r: &RecordHalf) -> KeyInfo {
        let cat = self.catalog.load();
        KeyInfo {
            id: KeyId(r.id),
            prefix: layout::get_str(&r.display_prefix).unwrap_or("").to_string(),
            consumer: layout::get_str(&r.consumer).unwrap_or("").to_string(),
            tier: cat
                .tier(r.tier)
                .map(|t| t.spec.name.clone())
                .unwrap_or_default(),
            scopes: cat.scope_names(r.scope_set),
            expires_at: (r.expires_at_s != 0).then_some(r.expires_at_s),
            monthly_quota: (r.monthly_quota != NO_OVERRIDE).then_some(r.monthly_quota),
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
    pub fn key(&self, id: KeyId) -> Result<KeyInfo, EngineError> {
        let r = self.read_record(id)?;
        Ok(self.info_from(&r))
    }

    /// Keys in id order starting after `after`, filtered by consumer and tier, at most `limit`.
    /// Returns the page and whether more may follow.
    pub fn list_keys(
        &self,
        consumer: Option<&str>,
        tier: Option<&str>,
        after: Option<KeyId>,
        limit: usize,
    ) -> (Vec<KeyInfo>, Option<KeyId>) {
        let start = after.map(|a| a.slot() + 1).unwrap_or(0);
        let n = self.key_count() as u32;
        let mut out = Vec::new();
        for slot in start..n {
            let Ok(info) = self.info_by_slot(slot) else {
                continue;
            };
            if consumer.is_some_and(|c| c != info.consumer) || tier.is_some_and(|t| t != info.tier)
            {
                continue;
            }
            if out.len() == limit {
                let cursor = out.last().map(|k: &KeyInfo| k.id);
                return (out, cursor);
            }
            out.push(info);
        }
        (out, None)
    }

    /// Applies `f` to key `id`'s record under the admin lock, writes it durably and publishes it.
    fn modify(
        &self,
        id: KeyId,
        f: impl FnOnce(
            &mut RecordHalf,
            &mut CatalogDoc,
            &Catalog,
            &mut AdminState,
        ) -> Result<(), EngineError>,
    ) -> Result<RecordHalf, EngineError> {
        let mut admin = self.admin.lock();
        let old = self.read_record(id)?;
        let catalog = self.catalog.load_full();
        let mut doc = catalog.doc().clone();
        let mut rec = old;
        f(&mut rec, &mut doc, &catalog, &mut admin)?;
        if doc != *catalog.doc() {
            let compiled = Catalog::compile(doc)?;
            catalog_file::store(&self.data_dir, compiled.doc())?;
            self.publish_catalog(compiled);
        }
        let slot = id.slot();
        {
            let mut g = self.shards.lock(slot);
            // SAFETY: shard lock held.
            let rs = unsafe { self.record_slot(slot) }.ok_or(EngineError::UnknownKey)?;
            layout::write_next(rs, rec);
            let (_, idx) = Shards::locate(slot);
            let keep_fast = rec.hash_current == old.hash_current;
            // SAFETY: shard lock held.
            let entry = unsafe { self.shards.entry(slot) };
            let fast = entry.fast;
            let (counters, newest) = (entry.counters, entry.newest);
            *entry = hot_from_record(&rec);
            entry.counters = counters;
            entry.newest = newest;
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
        }
        if rec.tier != old.tier {
            admin.tier_use[usize::from(old.tier)] -= 1;
            admin.tier_use[usize::from(rec.tier)] += 1;
        }
        Ok(rec)
    }

    /// Changes tier, scopes, expiry, quota override or name; in force from the next check.
    pub fn update_key(&self, id: KeyId, upd: KeyUpdate) -> Result<KeyInfo, EngineError> {
        if let Some(s) = &upd.scopes {
            validate_scopes(s)?;
        }
        if let Some(n) = &upd.name {
            validate_name(n.as_deref())?;
        }
        let rec = self.modify(id, |r, doc, cat, admin| {
            if let Some(t) = &upd.tier {
                let ix = cat
                    .tier_index(t)
                    .ok_or_else(|| EngineError::Invalid(format!("unknown tier {t:?}")))?;
                if admin.tier_use.len() <= usize::from(ix) {
                    admin.tier_use.resize(usize::from(ix) + 1, 0);
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
            Ok(())
        })?;
        Ok(self.info_from(&rec))
    }

    /// Revokes key `id`: its next check is 401.
    pub fn revoke_key(&self, id: KeyId) -> Result<KeyInfo, EngineError> {
        let rec = self.modify(id, |r, _, _, _| {
            r.flags |= FLAG_REVOKED;
            r.previous_valid_until_ns = 0;
            Ok(())
        })?;
        Ok(self.info_from(&rec))
    }

    /// Gives key `id` a new secret; the old one works for `grace_secs` more seconds. Usage is kept.
    pub fn rotate_key(&self, id: KeyId, grace_secs: u64) -> Result<CreatedKey, EngineError> {
        let mut raw = String::new();
        let now = self.clock.now_ns();
        let rec = self.modify(id, |r, _, _, _| {
            if r.flags & FLAG_REVOKED != 0 {
                return Err(EngineError::Invalid(
                    "a revoked key cannot be rotated".into(),
                ));
            }
            let new = NewSecret::for_rotation(
                layout::get_str(&r.display_prefix).unwrap_or(""),
                KeyId(r.id),
                grace_secs,
                now,
            )?;
            r.hash_previous = r.hash_current;
            r.hash_current = new.hash;
            r.previous_valid_until_ns = new.previous_valid_until_ns;
            r.display_prefix = layout::put_str(&new.display_prefix);
            raw = new.raw;
            Ok(())
        })?;
        Ok(CreatedKey {
            info: self.info_from(&rec),
            raw,
        })
    }

    /// Live usage of key `id` (nothing is consumed).
    pub fn usage(&self, id: KeyId) -> Result<Usage, EngineError> {
        let rec = self.read_record(id)?;
        let cat = self.catalog.load();
        let tier = cat
            .tier(rec.tier)
            .ok_or_else(|| EngineError::UnknownTier(format!("#{}", rec.tier)))?;
        let now = self.clock.now_ns();
        let slot = id.slot();
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
            .map(|(i, l)| limit_usage(c.tat[i], now, l))
            .collect();
        let month = MonthWindow::containing(now);
        Ok(Usage {
            limits,
            monthly_used: if c.month == month.id { c.month_used } else { 0 },
            monthly_quota: if rec.monthly_quota != NO_OVERRIDE {
                Some(rec.monthly_quota)
            } else {
                tier.spec.monthly_quota
            },
            last_used_at: (c.last_used_s != 0).then_some(u64::from(c.last_used_s)),
        })
    }

    // ----- admin: tiers ----------------------------------------------------------------------

    /// Every tier in force.
    pub fn tiers(&self) -> Vec<TierSpec> {
        self.catalog.load().specs()
    }

    /// Creates or replaces a tier; durable, and in force from the next check. Counters are kept.
    pub fn put_tier(&self, spec: TierSpec) -> Result<TierSpec, EngineError> {
        let spec = spec.normalized();
        spec.validate().map_err(CatalogError::from)?;
        self.change_catalog(|doc, _| put_tier_in(doc, &spec))?;
        Ok(spec)
    }

    /// Deletes a tier no key uses.
    pub fn delete_tier(&self, name: &str) -> Result<(), EngineError> {
        self.change_catalog(|doc, use_| delete_tier_in(doc, use_, name))
    }

    /// Replaces the whole set of tiers (a tiers file): tiers not in `specs` are deleted, which is
    /// refused while keys use them.
    pub fn apply_tiers(&self, specs: Vec<TierSpec>) -> Result<(), EngineError> {
        self.change_catalog(|doc, use_| replace_tiers(doc, use_, specs))
    }

    fn change_catalog(
        &self,
        f: impl FnOnce(&mut CatalogDoc, &[u64]) -> Result<(), EngineError>,
    ) -> Result<(), EngineError> {
        let mut admin = self.admin.lock();
        let catalog = self.catalog.load_full();
        let mut doc = catalog.doc().clone();
        f(&mut doc, &admin.tier_use)?;
        let compiled = Catalog::compile(doc)?;
        catalog_file::store(&self.data_dir, compiled.doc())?;
        admin.tier_use.resize(compiled.doc().tiers.len(), 0);
        self.publish_catalog(compiled);
        Ok(())
    }
}

impl Drop for Engine {
    fn drop(&mut self) {
        if let Err(e) = self.flush() {
            tracing::error!(error = %e, "final msync failed");
        }
    }
}

pub(crate) fn validate_new(k: &NewKey) -> Result<(), EngineError> {
    if k.consumer.is_empty() || k.consumer.len() > MAX_CONSUMER_LEN || k.consumer.contains('\0') {
        return Err(EngineError::Invalid(format!(
            "consumer must be 1-{MAX_CONSUMER_LEN} bytes without NUL"
        )));
    }
    validate_name(k.name.as_deref())?;
    validate_scopes(&k.scopes)?;
    if let Some(p) = &k.prefix {
        if !keyfmt::valid_prefix(p) {
            return Err(EngineError::Invalid(format!(
                "prefix must be at most {} characters of A-Z a-z 0-9 _ -",
                keyfmt::MAX_PREFIX_LEN
            )));
        }
    }
    Ok(())
}

pub(crate) fn validate_scopes(scopes: &[String]) -> Result<(), EngineError> {
    if scopes.len() > MAX_KEY_SCOPES {
        return Err(EngineError::Invalid(format!(
            "at most {MAX_KEY_SCOPES} scopes per key"
        )));
    }
    if let Some(bad) = scopes.iter().find(|s| !tiers::valid_scope(s)) {
        return Err(EngineError::Invalid(format!(
            "invalid scope {bad:?}: use 1-64 characters of A-Z a-z 0-9 _ - . : /"
        )));
    }
    Ok(())
}

pub(crate) fn validate_name(name: Option<&str>) -> Result<(), EngineError> {
    match name {
        Some(n) if n.len() > MAX_KEY_NAME_LEN || n.contains('\0') => Err(EngineError::Invalid(
            format!("name must be at most {MAX_KEY_NAME_LEN} bytes without NUL"),
        )),
        _ => Ok(()),
    }
}

/// A rotated key's new secret and what its record keeps of it.
pub(crate) struct NewSecret {
    pub raw: String,
    pub hash: [u8; 32],
    pub display_prefix: String,
    /// Until when the previous secret still works (0 = not at all).
    pub previous_valid_until_ns: u64,
}

impl NewSecret {
    /// A new secret for key `id` with the prefix its current one has (read from its display
    /// prefix), the old one honoured `grace_secs` from `now`.
    pub fn for_rotation(
        display_prefix: &str,
        id: KeyId,
        grace_secs: u64,
        now: u64,
    ) -> Result<Self, EngineError> {
        let raw = keyfmt::generate(keyfmt::prefix_of_display(display_prefix), id)
            .map_err(|e| EngineError::Invalid(format!("OS random source failed: {e}")))?;
        Ok(NewSecret {
            hash: keyfmt::hash(&raw),
            display_prefix: keyfmt::display_prefix(&raw),
            previous_valid_until_ns: if grace_secs == 0 {
                0
            } else {
                now.saturating_add(grace_secs.saturating_mul(NANOS_PER_SEC))
            },
            raw,
        })
    }
}

/// The presented key and the id it names, or why it names none (missing, malformed).
#[inline]
pub(crate) fn presented(raw_key: Option<&str>) -> Result<(&str, KeyId), AuthFailure> {
    match raw_key {
        None | Some("") => Err(AuthFailure::Missing),
        Some(raw) => keyfmt::parse(raw)
            .map(|id| (raw, id))
            .map_err(|_| AuthFailure::Malformed),
    }
}

/// The live figures of one bucket (TAT `tat`) of limit `l` at `now`, nothing consumed.
pub(crate) fn limit_usage(tat: u64, now: u64, l: &bucket::Limit) -> LimitUsage {
    let e = evaluate(tat, now, 1, l);
    LimitUsage {
        requests: l.requests(),
        period_seconds: l.period_secs(),
        remaining: if e.allowed { e.remaining + 1 } else { 0 },
        reset: ceil_secs(tat.clamp(now, now + l.interval_ns() * l.requests())),
    }
}

/// Creates or replaces the tier `spec` in `doc` (an existing tier keeps its index).
pub(crate) fn put_tier_in(doc: &mut CatalogDoc, spec: &TierSpec) -> Result<(), EngineError> {
    let ix = doc
        .tiers
        .iter()
        .position(|t| t.as_ref().is_some_and(|t| t.name == spec.name))
        .unwrap_or(doc.tiers.len());
    if ix >= usize::from(u16::MAX) {
        return Err(CatalogError::Full("tiers").into());
    }
    doc.set_tier(ix, spec.clone());
    Ok(())
}

/// Deletes tier `name` from `doc`, refused while `use_` (keys per tier index) says keys use it.
pub(crate) fn delete_tier_in(
    doc: &mut CatalogDoc,
    use_: &[u64],
    name: &str,
) -> Result<(), EngineError> {
    let ix = doc
        .tiers
        .iter()
        .position(|t| t.as_ref().is_some_and(|t| t.name == name))
        .ok_or_else(|| EngineError::UnknownTier(name.to_string()))?;
    let keys = use_.get(ix).copied().unwrap_or(0);
    if keys > 0 {
        return Err(EngineError::TierInUse {
            tier: name.to_string(),
            keys,
        });
    }
    doc.tiers[ix] = None;
    Ok(())
}

/// Replaces the tiers of `doc` by `specs`, keeping the index of every tier that stays.
pub(crate) fn replace_tiers(
    doc: &mut CatalogDoc,
    use_: &[u64],
    specs: Vec<TierSpec>,
) -> Result<(), EngineError> {
    let mut specs: Vec<TierSpec> = specs.into_iter().map(TierSpec::normalized).collect();
    for s in &specs {
        s.validate().map_err(CatalogError::from)?;
    }
    for ix in 0..doc.tiers.len() {
        let Some(old_name) = doc.tiers[ix].as_ref().map(|t| t.name.clone()) else {
            continue;
        };
        match specs.iter().position(|s| s.name == old_name) {
            Some(p) => {
                let spec = specs.remove(p);
                doc.set_tier(ix, spec);
            }
            None => {
                let keys = use_.get(ix).copied().unwrap_or(0);
                if keys > 0 {
                    return Err(EngineError::TierInUse {
                        tier: old_name,
                        keys,
                    });
                }
                doc.tiers[ix] = None;
            }
        }
    }
    for s in specs {
        if doc.tiers.iter().flatten().any(|t| t.name == s.name) {
            return Err(CatalogError::DuplicateTier(s.name).into());
        }
        if doc.tiers.len() >= usize::from(u16::MAX) {
            return Err(CatalogError::Full("tiers").into());
        }
        let ix = doc.tiers.len();
        doc.set_tier(ix, s);
    }
    Ok(())
}

/// Re-expresses buckets written under other limits (the tier's limits changed, or the key moved to
/// another tier) in the current ones: the tokens a bucket owed stay owed, counted in the new
/// limit's interval, for each limit whose period is unchanged (a limit unchanged altogether keeps
/// its bucket exactly); limits with a new period start full.
/// If the old limits are no longer remembered the buckets keep their "full again at" instants.
#[cold]
fn convert_buckets(
    c: &mut CounterHalf,
    catalog: &Catalog,
    tier_ix: u16,
    tier: &catalog::CompiledTier,
    now: u64,
) {
    let Some(old) = catalog.limits_at(c.tier, c.limits_version) else {
        return;
    };
    let mut tat = [0u64; layout::BUCKETS];
    for (j, new) in tier.limits.iter().enumerate() {
        let Some(i) = old
            .iter()
            .position(|o| o.period_secs() == new.period_secs())
        else {
            continue;
        };
        tat[j] = bucket::reexpress(c.tat[i], now, old[i].interval_ns(), new.interval_ns());
    }
    c.tat = tat;
    c.tier = tier_ix;
    c.limits_version = tier.version;
}

/// Whether the CPU has `prefetchw` (CPUID 8000_0001h ECX bit 8, "3DNowPrefetch"/PRFCHW: AMD
/// since K8, Intel since Broadwell). Where it lacks it the instruction is a no-op, so the
/// engine then prefetches for reading instead.
fn has_prefetch_write() -> bool {
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

/// A data directory as start-up reads it: every file opened and checked, nothing written yet.
struct Loaded {
    records: Arena,
    counters: Arena,
    shards: Shards,
    /// The catalog as stored.
    catalog: Catalog,
    /// Keys per tier index.
    tier_use: Vec<u64>,
    /// Torn writes to repair once everything has passed.
    repairs: Vec<Repair>,
    key_count: u32,
}

/// Opens and checks every file of `dir` (whose catalog is `doc`) the way start-up and
/// [`inspect`] both need, writing nothing.
fn load(dir: &Path, doc: CatalogDoc, now: u64) -> Result<Loaded, EngineError> {
    let records = Arena::open(dir, KEYS, doc.data_dir_id)?;
    let counters = Arena::open(dir, COUNTERS, doc.data_dir_id)?;
    let shards = Shards::new(now);
    let mut tier_use = vec![0u64; doc.tiers.len()];
    let catalog = Catalog::compile(doc)
        .map_err(|e| StoreError::corrupt(dir.join(catalog_file::CATALOG_FILE), e.to_string()))?;
    let mut repairs = Vec::new();
    let key_count = Engine::load_records(&records, &catalog, &shards, &mut tier_use, &mut repairs)?;
    Engine::check_counters(&counters, &shards, key_count, &mut repairs)?;
    Ok(Loaded {
        records,
        counters,
        shards,
        catalog,
        tier_use,
        repairs,
        key_count,
    })
}

/// What [`inspect`] found in a healthy data directory.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InspectReport {
    /// Format version of the segment files.
    pub format_version: u32,
    /// Keys.
    pub keys: u32,
    /// Live tiers.
    pub tiers: usize,
    /// Segment files (keys and counters).
    pub segments: usize,
    /// Torn writes (from a killed process) that the next start-up will repair.
    pub torn_writes: usize,
    /// Newest modification time of a counter file (Unix seconds): the last msync or writeback.
    pub newest_write: Option<u64>,
}

/// Checks a data directory the way start-up does, with the daemon stopped, changing nothing.
pub fn inspect(dir: &Path) -> Result<InspectReport, EngineError> {
    let _lock = DirLock::acquire(dir)?;
    let doc = catalog_file::load(dir)?
        .ok_or_else(|| StoreError::corrupt(dir.join(catalog_file::CATALOG_FILE), "missing"))?;
    let Loaded {
        records,
        counters,
        catalog,
        repairs,
        key_count: keys,
        ..
    } = load(dir, doc, 0)?;
    let newest_write = (0..counters.segment_count())
        .filter_map(|n| std::fs::metadata(Arena::segment_path(dir, &COUNTERS, n)).ok())
        .filter_map(|m| m.modified().ok())
        .filter_map(|t| t.duration_since(std::time::UNIX_EPOCH).ok())
        .map(|d| d.as_secs())
        .max();
    Ok(InspectReport {
        format_version: layout::FORMAT_VERSION,
        keys,
        tiers: catalog.tiers().count(),
        segments: records.segment_count() + counters.segment_count(),
        torn_writes: repairs.len(),
        newest_write,
    })
}

/// A fix for a torn write found at start-up, applied once every file has passed its checks.
enum Repair {
    Record(u32, RecordHalf),
    ClearRecord(u32),
    Counter(u32, CounterHalf),
    ClearCounter(u32),
}

impl Repair {
    fn apply(self, records: &Arena, counters: &Arena) {
        // SAFETY: start-up, single-threaded; each pointer addresses one slot of its arena.
        unsafe {
            match self {
                Repair::Record(slot, r) => {
                    if let Some(p) = records.slot_ptr(slot) {
                        repair(&mut *(p as *mut RecordSlot), r);
                    }
                }
                Repair::ClearRecord(slot) => {
                    if let Some(p) = records.slot_ptr(slot) {
                        std::ptr::write_bytes(p, 0, std::mem::size_of::<RecordSlot>());
                    }
                }
                Repair::Counter(slot, c) => {
                    if let Some(p) = counters.slot_ptr(slot) {
                        repair(&mut *(p as *mut CounterSlot), c);
                    }
                }
                Repair::ClearCounter(slot) => {
                    if let Some(p) = counters.slot_ptr(slot) {
                        std::ptr::write_bytes(p, 0, std::mem::size_of::<CounterSlot>());
                    }
                }
            }
        }
    }
}
