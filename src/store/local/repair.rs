//! Applying what start-up's checks found ([`settle`]), and the offline commands over the same
//! checks: [`inspect`] (changes nothing) and [`repair`] (applies every recovery when told).

use std::path::Path;

use super::acks::{self, Ack, HeaderWord};
use super::arena::Arena;
use super::catalog_file;
use super::datadir::{DataDirError, DirLock, Modes};
use super::layout::{self, CounterSlot, RecordSlot};
use super::load::{load, Loaded};
use super::recovery::Finding;
use crate::store::StoreError;

/// Applies every finding's fixes, then makes the acks file agree with the files: each key's ack
/// word acknowledges its record as it now stands (`used` when its counters are written), words
/// past the last key are cleared, and the header holds the key count and catalog generation.
/// The files are msynced record and counters first, acks last. After a clean stop with nothing
/// found, the ack words already agree (the checks compared each one), and are not visited.
pub(super) fn settle(loaded: &Loaded) -> Result<(), StoreError> {
    let Loaded {
        records,
        counters,
        acks,
        findings,
        key_count,
        generation,
        counters_generation,
        clean_stop,
        ..
    } = loaded;
    for f in findings {
        if f.is_automatic() {
            if f.is_info() {
                tracing::info!("{f}");
            } else {
                tracing::warn!("repaired at start-up: {f}");
            }
        } else {
            tracing::warn!(
                loss = f.loss.as_deref().unwrap_or(""),
                "repaired with loss accepted: {f}"
            );
        }
        for fix in f.fixes() {
            fix.apply(records, counters);
        }
    }
    // Segments for every key (none yet for a directory without keys); the acks file always,
    // for its header.
    if let Some(last) = key_count.checked_sub(1) {
        records.ensure(last)?;
        counters.ensure(last)?;
    }
    acks.ensure(key_count.saturating_sub(1))?;
    records.flush_all()?;
    counters.flush_all()?;
    if !(findings.is_empty() && *clean_stop) {
        acknowledge_all(loaded)?;
    }
    // Every counters file stamped with the generation carried on, then the acks header.
    for n in 0..counters.segment_count() {
        acks::stamp_segment(counters, n, *counters_generation);
        counters.flush_header_of(n)?;
    }
    acks.set_header(HeaderWord::CountersGeneration, *counters_generation);
    acks.set_header(HeaderWord::AckedKeys, *key_count);
    acks.set_header(HeaderWord::CatalogGeneration, *generation);
    acks.set_header(HeaderWord::Clean, 0);
    acks.flush_header()?;
    Ok(())
}

/// Sets each key's ack word to its record as it now stands (`used` when its counters are
/// written) and clears the words past the last key; then msyncs them.
fn acknowledge_all(loaded: &Loaded) -> Result<(), StoreError> {
    let Loaded {
        records,
        counters,
        acks,
        key_count,
        ..
    } = loaded;
    for slot in 0..acks.capacity() as u32 {
        if slot >= *key_count {
            if acks.get(slot) != Ack::None {
                acks.clear(slot);
            }
            continue;
        }
        // SAFETY: single-threaded; slots below key_count exist in both arenas.
        let (seq, used) = unsafe {
            let rs = &*(records.slot_ptr(slot).ok_or(StoreError::UnknownKey)? as *const RecordSlot);
            let cs = counters.slot_ptr(slot).map(|p| &*(p as *const CounterSlot));
            (
                rs[layout::newest(rs)].seq,
                cs.is_some_and(|cs| cs[layout::newest(cs)].seq != 0),
            )
        };
        if acks.get(slot) != (Ack::Valid { seq, used }) {
            acks.set(slot, seq, used);
        }
    }
    acks.flush(0, acks.capacity().saturating_sub(1) as u32)?;
    Ok(())
}

/// What [`inspect`] found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InspectReport {
    /// Format version of the segment files.
    pub format_version: u32,
    /// Keys.
    pub keys: u32,
    /// Live tiers.
    pub tiers: usize,
    /// Segment files (keys, counters and acks).
    pub segments: usize,
    /// Everything the checks found; start-up refuses if any of them loses something.
    pub findings: Vec<Finding>,
    /// Newest modification time of a counter file (Unix seconds): the last msync or writeback.
    pub newest_write: Option<u64>,
}

impl InspectReport {
    /// Whether start-up would start (every finding is repaired automatically).
    pub fn starts(&self) -> bool {
        self.findings.iter().all(Finding::is_automatic)
    }
}

fn open_for(
    dir: &Path,
    lock: DirLock,
    now: u64,
    writable: bool,
) -> Result<(Loaded, DirLock), StoreError> {
    let stored = catalog_file::load(dir)?
        .ok_or_else(|| DataDirError::corrupt(dir.join(catalog_file::CATALOG_FILE), "missing"))?;
    let mode = writable.then(|| lock.file_mode());
    Ok((load(dir, stored, now, mode)?, lock))
}

fn report(dir: &Path, loaded: &Loaded) -> InspectReport {
    let newest_write = (0..loaded.counters.segment_count())
        .filter_map(|n| std::fs::metadata(Arena::segment_path(dir, &super::COUNTERS, n)).ok())
        .filter_map(|m| m.modified().ok())
        .filter_map(|t| t.duration_since(std::time::UNIX_EPOCH).ok())
        .map(|d| d.as_secs())
        .max();
    InspectReport {
        format_version: layout::FORMAT_VERSION,
        keys: loaded.key_count,
        tiers: loaded.catalog.tiers().count(),
        segments: loaded.records.segment_count()
            + loaded.counters.segment_count()
            + loaded.acks.segment_count(),
        findings: loaded.findings.clone(),
        newest_write,
    }
}

/// Checks a data directory the way start-up does, with the daemon stopped, changing nothing.
/// An error means start-up refuses for a fault no repair can mend (a damaged header, a wrong
/// size, a foreign or missing file); a report whose [`InspectReport::starts`] is false means
/// start-up refuses until `repair`.
pub fn inspect(dir: &Path, now: u64) -> Result<InspectReport, StoreError> {
    let lock = DirLock::acquire_existing(dir)?;
    let (loaded, _lock) = open_for(dir, lock, now, false)?;
    Ok(report(dir, &loaded))
}

/// `quotad repair`: the findings of [`inspect`]; with `accept_loss`, every recovery applied (and
/// logged), after which start-up succeeds.
pub fn repair(
    dir: &Path,
    now: u64,
    accept_loss: bool,
    modes: Modes,
) -> Result<InspectReport, StoreError> {
    let lock = if accept_loss {
        DirLock::acquire(dir, modes)?
    } else {
        DirLock::acquire_existing(dir)?
    };
    let (loaded, _lock) = open_for(dir, lock, now, accept_loss)?;
    let out = report(dir, &loaded);
    if accept_loss && !out.findings.is_empty() {
        settle(&loaded)?;
        let Loaded {
            catalog,
            generation,
            ..
        } = &loaded;
        // A directory of format 1 becomes format 2 once its acks exist.
        catalog_file::store(dir, catalog.doc(), *generation, _lock.file_mode())?;
        loaded.acks.set_header(HeaderWord::Clean, 1);
        loaded.acks.flush_header()?;
    }
    Ok(out)
}
