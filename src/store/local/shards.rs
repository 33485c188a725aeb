//! The lock-sharded key table. Key slot `s` lives in shard `s % SHARDS` at index `s / SHARDS`;
//! the shard's mutex also guards that slot's counter and record memory in the mapped files.
//!
//! The hot entries themselves live in a segmented table whose segments never move, so a check
//! can compute an entry's address (and prefetch it, with the counter slot) before taking the lock;
//! reading or writing the entry still happens only under the lock.
//!
//! Checks on different keys take different locks (up to hash collisions of the slot modulo
//! `SHARDS`); each critical section is a few hundred nanoseconds of arithmetic and never spans
//! I/O or an `.await`.

use std::collections::HashMap;
use std::sync::{Arc, OnceLock};

use parking_lot::Mutex;

use super::layout::CounterHalf;
use crate::engine::catalog::Catalog;
use crate::engine::month::MonthWindow;

/// Number of shards (a power of two).
pub const SHARDS: usize = 256;

/// Entries per table segment.
const SEGMENT: usize = 1 << 16;
/// Table segments (2^16 × 2^16 = every possible slot).
const SEGMENTS: usize = 1 << 16;

/// The in-memory part of a key that a check reads: two cache lines, plain integers (all-zero is
/// valid). Besides the record fields a check needs, it holds a copy of the key's *current* counter
/// half: a check reads its counters here, in anonymous huge-page memory next to the rest of the
/// entry, and only *writes* the memory-mapped file (a store does not stall the check on the file
/// page's cache and TLB misses the way a load does). The file stays the durable truth: it is
/// written on every admitted check, before the lock is released, and the copy is rebuilt from it at
/// start-up.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[repr(C, align(64))]
pub struct HotEntry {
    /// Keyed SipHash-1-3 (64-bit) of the raw key once verified against the stored SHA-256 (0 = not
    /// yet). The hashing key is random per process, so this never outlives the process; a forged
    /// key matches it with probability 2^-64 per attempt, as the attacker cannot compute it.
    pub fast: u64,
    /// The key id (tag + slot).
    pub id: u64,
    /// Expiry in ns since the epoch (`u64::MAX` = never).
    pub expires_at_ns: u64,
    /// Monthly quota override (`NO_OVERRIDE` = tier's).
    pub quota_override: u64,
    /// Tier index.
    pub tier: u16,
    /// Record flags (`FLAG_REVOKED`…).
    pub flags: u16,
    /// Scope-set index.
    pub scope_set: u32,
    /// The key's current counter half, as in the file (`seq` 0: never written).
    pub counters: CounterHalf,
    /// Which half of the file's counter slot holds `counters` (the other is written next).
    pub newest: u8,
    /// On a tier counting by consumer: 1 + the slot of the consumer's group record, whose
    /// counters the key's checks spend (0: the key's own counters).
    pub group: u32,
}

const _: () = assert!(std::mem::size_of::<HotEntry>() == 128);

/// A previous secret honoured during a rotation grace period.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Grace {
    /// Fast digest of the previous raw key once seen (0 = not yet).
    pub fast: u64,
    /// Honoured until then, ns since the epoch.
    pub until_ns: u64,
}

/// One shard's state.
#[derive(Debug)]
pub struct ShardData {
    /// Keys in a rotation grace period, by `slot / SHARDS`.
    pub grace: HashMap<u32, Grace>,
    /// The current month, cached so a check does no calendar math.
    pub month: MonthWindow,
    /// The catalog as of generation `catalog_gen`, cached under the lock: a check reads it without
    /// an atomic read-modify-write (an `ArcSwap` load costs two, each a full fence on x86 that
    /// waits for the previous check's store into the mapped file).
    pub catalog: Option<Arc<Catalog>>,
    /// The engine's catalog generation `catalog` was taken at (0 = none yet).
    pub catalog_gen: u64,
    /// The latest time a check of this shard was decided at (ns since the epoch).
    pub latest_ns: u64,
    /// Slots whose counters were written for the first time since the last `msync`: their ack
    /// words get the `used` bit once the counters are durable (see `acks`).
    pub first_use: Vec<u32>,
    /// Whether a check wrote counters of this shard since the last `msync`.
    pub written: bool,
}

#[repr(align(128))]
#[derive(Debug)]
struct Padded(Mutex<ShardData>);

/// All shards and the entry table they guard.
pub struct Shards {
    shards: Box<[Padded]>,
    table: Box<[OnceLock<TableSegment>]>,
    grow: Mutex<()>,
}

/// `SEGMENT` zeroed entries in anonymous memory, backed by transparent huge pages where the kernel
/// allows: a check's entry lookup then rarely misses the TLB.
struct TableSegment {
    _map: memmap2::MmapMut,
    base: *mut HotEntry,
}

impl TableSegment {
    fn new() -> Self {
        let len = SEGMENT * std::mem::size_of::<HotEntry>();
        let mut map = match memmap2::MmapMut::map_anon(len) {
            Ok(m) => m,
            Err(e) => panic!("cannot allocate {len} bytes for the key table: {e}"),
        };
        #[cfg(target_os = "linux")]
        let _ = map.advise(memmap2::Advice::HugePage);
        let base = map.as_mut_ptr() as *mut HotEntry;
        TableSegment { _map: map, base }
    }
}

// SAFETY: entry `s` of `table` is only read or written while holding `shards[s % SHARDS]`;
// segments are created once (under `grow`) and never freed before the `Shards` itself.
unsafe impl Sync for Shards {}
// SAFETY: as above; the raw pointers address memory owned by the segments.
unsafe impl Send for Shards {}

impl std::fmt::Debug for Shards {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Shards")
            .field("shards", &self.shards.len())
            .finish()
    }
}

impl Shards {
    /// Empty shards.
    pub fn new(now_ns: u64) -> Self {
        let shards = (0..SHARDS)
            .map(|_| {
                Padded(Mutex::new(ShardData {
                    grace: HashMap::new(),
                    month: MonthWindow::containing(now_ns),
                    catalog: None,
                    catalog_gen: 0,
                    latest_ns: 0,
                    first_use: Vec::new(),
                    written: false,
                }))
            })
            .collect();
        Shards {
            shards,
            table: (0..SEGMENTS).map(|_| OnceLock::new()).collect(),
            grow: Mutex::new(()),
        }
    }

    /// Makes room for the entry of `slot`.
    pub fn ensure(&self, slot: u32) {
        let seg = slot as usize / SEGMENT;
        if self.table[seg].get().is_none() {
            let _g = self.grow.lock();
            self.table[seg].get_or_init(TableSegment::new);
        }
    }

    /// The address of `slot`'s entry, if its segment exists. Computing it needs no lock;
    /// dereferencing it does.
    #[inline]
    pub(super) fn entry_ptr(&self, slot: u32) -> Option<*mut HotEntry> {
        let seg = self.table[slot as usize / SEGMENT].get()?;
        // SAFETY: in bounds of the segment; the mapping is page-aligned, so entries are aligned.
        Some(unsafe { seg.base.add(slot as usize % SEGMENT) })
    }

    /// `slot`'s entry.
    ///
    /// # Safety
    /// The caller holds the lock of `slot`'s shard and `ensure(slot)` has run.
    #[allow(clippy::mut_from_ref)]
    #[inline]
    pub unsafe fn entry(&self, slot: u32) -> &mut HotEntry {
        match self.entry_ptr(slot) {
            Some(p) => &mut *p,
            None => unreachable!("entry of slot {slot} used before ensure()"),
        }
    }

    /// The shard holding `slot`, and the slot's index inside it.
    #[inline]
    pub fn locate(slot: u32) -> (usize, usize) {
        (slot as usize % SHARDS, slot as usize / SHARDS)
    }

    /// Takes every shard's list of first uses, and whether any shard's counters were written,
    /// since the last call.
    pub fn take_changes(&self) -> (Vec<u32>, bool) {
        let mut out = Vec::new();
        let mut written = false;
        for s in self.shards.iter() {
            let mut g = s.0.lock();
            written |= std::mem::take(&mut g.written);
            if !g.first_use.is_empty() {
                out.append(&mut g.first_use);
            }
        }
        (out, written)
    }

    /// Locks the shard holding `slot`.
    #[inline]
    pub fn lock(&self, slot: u32) -> parking_lot::MutexGuard<'_, ShardData> {
        self.shards[slot as usize % SHARDS].0.lock()
    }
}
