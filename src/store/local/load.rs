//! Opening a data directory: every file read and checked before anything is written. What the
//! checks find is a list of [`Finding`]s; start-up repairs the ones that lose nothing and refuses
//! on any other (see `recovery`).
//!
//! What start-up trusts (DESIGN.md, "What is durable when"):
//! - a key record: its newest intact half, if that is at least as new as its ack word; a newer
//!   half than the ack is a write that never returned (kept: it is complete);
//! - slots at or past the acknowledged key count: creations that never returned (discarded);
//! - a counter slot: its newest intact half; a newest half that fails its checksum is a torn
//!   write only if the last process did not close cleanly, else damage;
//! - a used key (ack `used` bit) with an empty counter slot: damage.

use std::path::Path;

use super::acks::{self, Ack, Acks, Generation, HeaderWord, ACKS};
use super::arena::Arena;
use super::catalog_file::{self, StoredCatalog};
use super::datadir::DataDirError;
use super::layout::{self, Half, RecordHalf, RecordSlot, SlotState, FLAG_DELETED, FLAG_LIVE};
use super::load_counters;
use super::recovery::{describe_key, describe_state, tombstone, Finding, Fix};
use super::shards::{Grace, Shards};
use super::{hot_from_record, COUNTERS, KEYS};
use crate::engine::catalog::Catalog;
use crate::keys::KeyId;
use crate::store::StoreError;

/// An imported secret's digest and its key.
pub(super) type Imported = ([u8; 32], KeyId);

/// A data directory as start-up reads it: every file opened and checked, nothing written yet.
pub(super) struct Loaded {
    pub(super) records: Arena,
    pub(super) counters: Arena,
    pub(super) acks: Acks,
    pub(super) shards: Shards,
    /// The catalog as stored.
    pub(super) catalog: Catalog,
    /// Its generation.
    pub(super) generation: u32,
    /// Keys per tier index.
    pub(super) tier_use: Vec<u64>,
    /// What the checks found, in file order.
    pub(super) findings: Vec<Finding>,
    pub(super) key_count: u32,
    /// The latest month a counter was written in, if later than the clock's (the clock is behind).
    pub(super) month_ahead: Option<(u32, u32)>,
    /// Slots of deleted keys.
    pub(super) free: Vec<u32>,
    /// The digests of imported secrets, with their keys.
    pub(super) imported: Vec<Imported>,
    /// Slots of consumer groups' records.
    pub(super) group_slots: Vec<u32>,
    /// The counters generation to carry on from (see `acks::stamp_segment`).
    pub(super) counters_generation: u32,
    /// Whether the last process closed the directory cleanly (its ack words are then up to date).
    pub(super) clean_stop: bool,
}

/// What the acks file says was acknowledged.
#[derive(Debug, Clone, Copy)]
struct Acknowledged {
    /// Keys acknowledged, `None` if unknown (no acks file yet, or its count is damaged).
    keys: Option<u32>,
    /// Whether the last process closed cleanly (`true` if unknown: the strict reading).
    clean: bool,
}

/// Opens and checks every file of `dir` (whose catalog is `stored`) the way start-up, `inspect`
/// and `repair` need, writing nothing. `file_mode` is `None` for a read-only look (`inspect`):
/// nothing is allocated or created then.
pub(super) fn load(
    dir: &Path,
    stored: StoredCatalog,
    now: u64,
    file_mode: Option<u32>,
) -> Result<Loaded, StoreError> {
    let id = stored.doc.data_dir_id;
    let records = Arena::open(dir, KEYS, id, file_mode)?;
    let counters = Arena::open(dir, COUNTERS, id, file_mode)?;
    let acks = Acks::open(dir, id, file_mode)?;
    let catalog = Catalog::compile(stored.doc)
        .map_err(|e| DataDirError::corrupt(dir.join(catalog_file::CATALOG_FILE), e.to_string()))?;
    let mut findings = Vec::new();
    let meta = CatalogMeta {
        version: stored.version,
        generation: stored.generation,
    };
    let acked = acknowledged(dir, &meta, &acks, &records, &mut findings);
    let counters_generation = counters_generation(dir, &acks, &counters, &mut findings);
    if let Some(n) = acked.keys.filter(|&n| n > 0) {
        let last = n - 1;
        // Records and acks cannot be made up: a missing segment refuses start-up.
        for (kind, capacity, segments) in [
            (&KEYS, records.capacity(), records.segment_count()),
            (&ACKS, acks.capacity(), acks.segment_count()),
        ] {
            if capacity <= u64::from(last) {
                return Err(DataDirError::corrupt(
                    Arena::segment_path(dir, kind, segments),
                    format!(
                        "missing, but {} acknowledges {n} keys",
                        Acks::first_path(dir).display()
                    ),
                )
                .into());
            }
        }
        if counters.capacity() <= u64::from(last) {
            let first = counters.capacity();
            findings.push(Finding::lossy(
                Arena::segment_path(dir, &COUNTERS, counters.segment_count()),
                None,
                None,
                "missing while keys exist",
                format!(
                    "the usage of the keys in slots {first}..={last} reads as unused \
                     (0 this month, full buckets): the file is created empty"
                ),
                Vec::new(),
            ));
        }
    }
    let shards = Shards::new(now);
    let mut tier_use = vec![0u64; catalog.doc().tiers.len()];
    let mut free = Vec::new();
    let mut imported = Vec::new();
    let mut group_slots = Vec::new();
    let key_count = load_records(
        &records,
        &acks,
        acked.keys,
        &catalog,
        &shards,
        (&mut tier_use, &mut free, &mut imported, &mut group_slots),
        &mut findings,
    )?;
    let month_ahead = load_counters::check_counters(
        &counters,
        &acks,
        &shards,
        (key_count, acked.keys.is_some(), acked.clean),
        now,
        &mut findings,
    )?;
    Ok(Loaded {
        records,
        counters,
        acks,
        shards,
        catalog,
        generation: stored.generation,
        tier_use,
        findings,
        key_count,
        month_ahead,
        free,
        imported,
        group_slots,
        counters_generation,
        clean_stop: acked.clean,
    })
}

/// Compares each counters file's generation stamp with the one acknowledged: an older stamp is
/// an older copy of the file (lower usage). Returns the generation to carry on from.
fn counters_generation(
    dir: &Path,
    acks: &Acks,
    counters: &Arena,
    findings: &mut Vec<Finding>,
) -> u32 {
    let acked = acks
        .header_value(HeaderWord::CountersGeneration)
        .unwrap_or(0);
    let mut newest = acked;
    for n in 0..counters.segment_count() {
        let file = Arena::segment_path(dir, &COUNTERS, n);
        match acks::segment_generation(counters, n) {
            Generation::At(g) if g < acked => findings.push(Finding::lossy(
                file,
                None,
                None,
                format!(
                    "generation {g} is older than the acknowledged counters (generation \
                     {acked}): replaced by an older copy?"
                ),
                "the usage counted since that copy was made is lost (restore the newer file \
                 from a backup instead if you have it)",
                Vec::new(),
            )),
            // The acks file is stamped right after the counters, so it is at most one behind;
            // further behind, it is an older copy of itself (keys created since would be
            // discarded as never acknowledged).
            Generation::At(g) if acks.exists() && g > acked.saturating_add(1) => {
                newest = newest.max(g);
                findings.push(Finding::lossy(
                    Acks::first_path(dir),
                    None,
                    None,
                    format!(
                        "counters generation {acked} is older than {} (generation {g}): \
                         replaced by an older copy?",
                        file.display()
                    ),
                    "the keys created and the changes acknowledged since that copy was made are \
                     lost (restore the newer acks file from a backup instead if you have it)",
                    Vec::new(),
                ));
            }
            Generation::At(g) => newest = newest.max(g),
            Generation::Damaged => findings.push(Finding::lossy(
                file,
                None,
                None,
                "the generation stamp fails its check",
                "start-up cannot tell whether this counters file is the newest: it is trusted",
                Vec::new(),
            )),
            Generation::Unstamped => {}
        }
    }
    newest
}

/// The catalog's format version and generation.
struct CatalogMeta {
    version: u32,
    generation: u32,
}

/// Reads the header words of the acks file, with findings for whatever is missing or damaged.
fn acknowledged(
    dir: &Path,
    cat: &CatalogMeta,
    acks: &Acks,
    records: &Arena,
    findings: &mut Vec<Finding>,
) -> Acknowledged {
    let acks_file = Acks::first_path(dir);
    let catalog_file = dir.join(catalog_file::CATALOG_FILE);
    if !acks.exists() {
        if cat.version == 1 {
            findings.push(Finding::upgrade(acks_file));
        } else if records.segment_count() > 0 {
            findings.push(Finding::lossy(
                acks_file,
                None,
                None,
                "missing while keys exist",
                "start-up cannot tell a damaged key record from a torn write: every key's newest \
                 intact record is trusted as acknowledged, and the file is rebuilt from them",
                Vec::new(),
            ));
        } else {
            return Acknowledged {
                keys: Some(0),
                clean: true,
            };
        }
        return Acknowledged {
            keys: None,
            clean: false,
        };
    }
    let keys = acks.header_value(HeaderWord::AckedKeys);
    if keys.is_none() {
        findings.push(Finding::lossy(
            acks_file.clone(),
            None,
            None,
            "the count of acknowledged keys fails its check",
            "every intact key record is kept as acknowledged, and records past the last \
             intact one are discarded",
            Vec::new(),
        ));
    }
    match acks.header_value(HeaderWord::CatalogGeneration) {
        Some(g) if g > cat.generation => findings.push(Finding::lossy(
            catalog_file,
            None,
            None,
            format!(
                "generation {} is older than the last acknowledged catalog (generation {g}): \
                 replaced by an older copy?",
                cat.generation
            ),
            format!(
                "tier and scope changes after generation {} are lost (restore the newer \
                 catalog.json from a backup instead if you have it)",
                cat.generation
            ),
            Vec::new(),
        )),
        Some(_) => {}
        None => findings.push(Finding::lossy(
            acks_file.clone(),
            None,
            None,
            "the acknowledged catalog generation fails its check",
            "catalog.json is trusted as the latest acknowledged catalog",
            Vec::new(),
        )),
    }
    let clean = match acks.header_value(HeaderWord::Clean) {
        Some(0) => false,
        Some(1) => true,
        _ => {
            findings.push(Finding::lossy(
                acks_file,
                None,
                None,
                "the clean-shutdown mark fails its check",
                "counter copies that fail their checksum are treated as damage, not torn writes",
                Vec::new(),
            ));
            true
        }
    };
    Acknowledged { keys, clean }
}

fn load_records(
    records: &Arena,
    acks: &Acks,
    acked: Option<u32>,
    catalog: &Catalog,
    shards: &Shards,
    (tier_use, free, imported, groups): (
        &mut [u64],
        &mut Vec<u32>,
        &mut Vec<Imported>,
        &mut Vec<u32>,
    ),
    findings: &mut Vec<Finding>,
) -> Result<u32, StoreError> {
    let mut count: u32 = 0;
    let mut ended = false;
    for slot in 0..records.capacity() as u32 {
        let Some(ptr) = records.slot_ptr(slot) else {
            break;
        };
        // SAFETY: start-up, single-threaded; the pointer addresses one 512-byte slot.
        let rs = unsafe { &*(ptr as *const RecordSlot) };
        // The file's path only when a finding names it: built per slot, it was a quarter of
        // start-up with a million keys.
        let file = || records.path_of(slot);
        let fault = |detail: String| DataDirError::corrupt(records.path_of(slot), detail);
        let state = layout::read_checked(rs);
        let acknowledged = match acked {
            Some(n) => slot < n,
            // Unknown count: the records up to the first empty slot, as written in order.
            None => !ended && matches!(state, SlotState::Valid(_)),
        };
        if !acknowledged {
            ended = true;
            if !matches!(state, SlotState::Empty) || acks.get(slot) != Ack::None {
                if acked.is_none() && state == SlotState::Damaged {
                    return Err(fault(format!(
                        "key record in slot {slot}: both copies fail their checksum"
                    ))
                    .into());
                }
                if acked.is_none() && matches!(state, SlotState::Valid(_)) {
                    return Err(fault(format!(
                        "key record in slot {slot} follows an empty slot (records are written \
                         in order)"
                    ))
                    .into());
                }
                findings.push(Finding::automatic(
                    file(),
                    Some(slot),
                    "a key creation that never returned (discarded)",
                    vec![Fix::ClearRecord(slot)],
                ));
            }
            continue;
        }
        let ack_seq = match acks.get(slot) {
            Ack::Valid { seq, .. } => Some(seq),
            _ if acked.is_none() => None,
            bad => {
                findings.push(Finding::lossy(
                    acks.path_of(slot),
                    Some(slot),
                    None,
                    if bad == Ack::None {
                        "the key's ack word is zero"
                    } else {
                        "the key's ack word fails its check"
                    },
                    "the key's newest intact record is trusted as acknowledged (a damaged \
                     record could bring back an older state)",
                    Vec::new(),
                ));
                None
            }
        };
        let r = match state {
            SlotState::Valid(r) => r,
            lost => {
                let what = match lost {
                    SlotState::Empty => "key record is zeroed",
                    SlotState::Interrupted => "key record: one copy zeroed, the other damaged",
                    _ => "key record: both copies fail their checksum",
                };
                let tomb = tombstone(slot, catalog);
                findings.push(Finding::lossy(
                    file(),
                    Some(slot),
                    None,
                    what,
                    format!(
                        "the key in slot {slot} is lost: it is kept as a revoked placeholder \
                         (every check of it answers 401) and its usage is dropped"
                    ),
                    vec![Fix::Record(slot, tomb), Fix::ClearCounter(slot)],
                ));
                install(shards, slot, &tomb, tier_use);
                count = slot + 1;
                continue;
            }
        };
        if r.id as u32 != slot || r.flags & FLAG_LIVE == 0 {
            return Err(fault(format!("key record in slot {slot} carries id {:#x}", r.id)).into());
        }
        let other = rs[1 - layout::newest(rs)];
        let other_ok = !other.is_zero() && other.compute_crc() == other.crc;
        // A creation in a deleted key's slot writes one half; before its ack the other half is
        // still the acknowledged deletion: the creation never returned, the slot stays free.
        let r = match ack_seq {
            Some(a)
                if r.seq != a
                    && other_ok
                    && other.seq == a
                    && other.flags & FLAG_DELETED != 0
                    && r.flags & FLAG_DELETED == 0 =>
            {
                findings.push(Finding::automatic(
                    file(),
                    Some(slot),
                    "a key creation in a deleted key's slot that never returned (the slot stays free)",
                    vec![Fix::Record(slot, other)],
                ));
                other
            }
            _ => r,
        };
        if r.flags & FLAG_DELETED != 0 {
            free.push(slot);
            install(shards, slot, &r, &mut []);
            count = slot + 1;
            continue;
        }
        // A consumer group's counters are kept even if its tier was deleted since.
        let group = r.flags & layout::FLAG_GROUP != 0;
        if !group && catalog.tier(r.tier).is_none() {
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
        let intact = rs[layout::newest(rs)] == r && other_ok && other.seq == r.seq.wrapping_sub(1);
        match ack_seq {
            Some(a) if (r.seq.wrapping_sub(a) as i32) < 0 => findings.push(Finding::lossy(
                file(),
                Some(slot),
                Some(r.id),
                format!(
                    "the acknowledged copy (sequence {a}) fails its checksum; the copy left is \
                     sequence {}",
                    r.seq
                ),
                format!(
                    "{} falls back to its state before its last acknowledged change, which is \
                     lost (it could have been a revocation, a rotation, an expiry or a scope \
                     change); the copy left: {}",
                    describe_key(&r),
                    describe_state(&r)
                ),
                vec![Fix::Record(slot, r)],
            )),
            Some(a) if a != r.seq || !intact => findings.push(Finding::automatic(
                file(),
                Some(slot),
                if a != r.seq {
                    "a key change that never returned (kept: it was complete)"
                } else {
                    "the key record's older copy fails its checksum (rewritten)"
                },
                vec![Fix::Record(slot, r)],
            )),
            None if !intact => findings.push(Finding::automatic(
                file(),
                Some(slot),
                "a torn key record write (the older copy is kept)",
                vec![Fix::Record(slot, r)],
            )),
            _ => {}
        }
        if group {
            groups.push(slot);
            install(shards, slot, &r, &mut []);
            count = slot + 1;
            continue;
        }
        install(shards, slot, &r, tier_use);
        imported.extend(layout::imported_hashes(&r).map(|h| (h, KeyId(r.id))));
        count = slot + 1;
    }
    Ok(count)
}

/// Puts record `r` of `slot` in the key table.
fn install(shards: &Shards, slot: u32, r: &RecordHalf, tier_use: &mut [u64]) {
    let (_, idx) = Shards::locate(slot);
    shards.ensure(slot);
    let mut g = shards.lock(slot);
    // SAFETY: shard lock held; ensured above.
    unsafe { *shards.entry(slot) = hot_from_record(r) };
    if r.previous_valid_until_ns != 0 {
        g.grace.insert(
            idx as u32,
            Grace {
                fast: 0,
                until_ns: r.previous_valid_until_ns,
            },
        );
    }
    if let Some(n) = tier_use.get_mut(usize::from(r.tier)) {
        *n += 1;
    }
}
