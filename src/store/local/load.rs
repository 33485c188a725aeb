//! Opening a data directory: every file read and checked before anything is written, torn
//! writes of a killed process repaired only once all have passed, and [`inspect`], the same
//! checks with the daemon stopped.

use std::path::Path;

use super::arena::Arena;
use super::catalog_file;
use super::datadir::{DataDirError, DirLock};
use super::layout::{self, CounterHalf, CounterSlot, RecordHalf, RecordSlot, SlotState, FLAG_LIVE};
use super::shards::{Grace, Shards};
use super::{hot_from_record, COUNTERS, KEYS};
use crate::engine::catalog::Catalog;
use crate::engine::catalog_doc::CatalogDoc;
use crate::store::StoreError;

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

fn load_records(
    records: &Arena,
    catalog: &Catalog,
    shards: &Shards,
    tier_use: &mut [u64],
    repairs: &mut Vec<Repair>,
) -> Result<u32, StoreError> {
    let cap = records.capacity();
    let mut count: u32 = 0;
    let mut ended = false;
    for slot in 0..cap as u32 {
        let Some(ptr) = records.slot_ptr(slot) else {
            break;
        };
        // SAFETY: start-up, single-threaded; the pointer addresses one 512-byte slot.
        let rs = unsafe { &*(ptr as *const RecordSlot) };
        let fault = |detail: String| DataDirError::corrupt(records.path_of(slot), detail);
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
                    return Err(
                        fault(format!("key record in slot {slot} carries id {:#x}", r.id)).into(),
                    );
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
) -> Result<(), StoreError> {
    for slot in 0..counters.capacity() as u32 {
        let Some(ptr) = counters.slot_ptr(slot) else {
            break;
        };
        // SAFETY: start-up, single-threaded; one 128-byte slot.
        let cs = unsafe { &*(ptr as *const CounterSlot) };
        let fault = |detail: String| DataDirError::corrupt(counters.path_of(slot), detail);
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

/// A data directory as start-up reads it: every file opened and checked, nothing written yet.
pub(super) struct Loaded {
    pub(super) records: Arena,
    pub(super) counters: Arena,
    pub(super) shards: Shards,
    /// The catalog as stored.
    pub(super) catalog: Catalog,
    /// Keys per tier index.
    pub(super) tier_use: Vec<u64>,
    /// Torn writes to repair once everything has passed.
    pub(super) repairs: Vec<Repair>,
    pub(super) key_count: u32,
}

/// Opens and checks every file of `dir` (whose catalog is `doc`) the way start-up and
/// [`inspect`] both need, writing nothing.
pub(super) fn load(dir: &Path, doc: CatalogDoc, now: u64) -> Result<Loaded, StoreError> {
    let records = Arena::open(dir, KEYS, doc.data_dir_id)?;
    let counters = Arena::open(dir, COUNTERS, doc.data_dir_id)?;
    let shards = Shards::new(now);
    let mut tier_use = vec![0u64; doc.tiers.len()];
    let catalog = Catalog::compile(doc)
        .map_err(|e| DataDirError::corrupt(dir.join(catalog_file::CATALOG_FILE), e.to_string()))?;
    let mut repairs = Vec::new();
    let key_count = load_records(&records, &catalog, &shards, &mut tier_use, &mut repairs)?;
    check_counters(&counters, &shards, key_count, &mut repairs)?;
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
pub fn inspect(dir: &Path) -> Result<InspectReport, StoreError> {
    let _lock = DirLock::acquire(dir)?;
    let doc = catalog_file::load(dir)?
        .ok_or_else(|| DataDirError::corrupt(dir.join(catalog_file::CATALOG_FILE), "missing"))?;
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
pub(super) enum Repair {
    Record(u32, RecordHalf),
    ClearRecord(u32),
    Counter(u32, CounterHalf),
    ClearCounter(u32),
}

impl Repair {
    pub(super) fn apply(self, records: &Arena, counters: &Arena) {
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
