//! `acks-NNNNN.qd`: what was acknowledged, so that start-up can tell a torn write that never
//! returned to its caller from damage to a state that did.
//!
//! One 8-byte word per key slot, after the usual 4 KiB segment header:
//!
//! ```text
//! bits  0..32  seq    the sequence of the key's record half last acknowledged
//! bit  32      used   the key's counters have been written and msynced at least once
//! bits 33..64  check  CRC-32C of (slot, bits 0..33), top 31 bits
//! ```
//!
//! An all-zero word means "no acknowledged record". Three more words sit at offset 64 of the
//! header page of `acks-00000.qd`, each `value u32 | check u32` with the check a CRC-32C of
//! (index, value): the number of acknowledged keys, the generation of the last acknowledged
//! `catalog.json`, and whether the last process closed the directory cleanly.
//!
//! Every word is written with one aligned 8-byte store, which neither a killed process nor a
//! disk sector can tear. The write order of an admin change is: record half, `msync` of the
//! record, ack word, `msync` of the ack; only then does the change return. So a record half newer
//! than its ack is an unacknowledged write, and a record whose newest intact half is older than
//! its ack has lost an acknowledged change.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

use super::arena::{Arena, ArenaKind};
use super::datadir::DataDirError;

/// The ack arena.
pub const ACKS: ArenaKind = ArenaKind {
    stem: "acks",
    magic: *b"QDACKS01",
    slot_size: 8,
};

/// Offset of the header words in the header page of segment 0.
const HEADER_WORDS: usize = 64;

/// A header word.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(usize)]
pub enum HeaderWord {
    /// Keys whose creation was acknowledged (slots `0..n`).
    AckedKeys = 0,
    /// Generation of the last acknowledged `catalog.json`.
    CatalogGeneration = 1,
    /// 1 when the last process closed the directory cleanly, 0 while it is open.
    Clean = 2,
    /// The counters generation last made durable (see [`segment_generation`]).
    CountersGeneration = 3,
}

/// Index of the generation word in a counters segment's header page (its check's input).
const SEGMENT_GENERATION: usize = 100;

/// What a counters segment's generation word holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Generation {
    /// Never stamped (a segment created since the last msync, or by an older quotad).
    Unstamped,
    /// Stamped with this generation.
    At(u32),
    /// The word fails its check.
    Damaged,
}

/// Each msync of the counters bumps a generation and stamps it (after the msync) into every
/// counters segment's header page, then into the acks header. A counters file whose stamp is
/// older than the acks' is an older copy of itself: start-up refuses it.
fn segment_word(arena: &Arena, n: usize) -> Option<&AtomicU64> {
    let p = arena.header_page_of(n)?;
    // SAFETY: offset 64 of the segment's 4096-byte header page (after the 48-byte header);
    // 8-aligned; every access is atomic.
    Some(unsafe { &*(p.add(HEADER_WORDS) as *const AtomicU64) })
}

/// The generation stamped in counters segment `n`.
pub fn segment_generation(arena: &Arena, n: usize) -> Generation {
    match segment_word(arena, n).map(|w| w.load(Ordering::Acquire)) {
        None | Some(0) => Generation::Unstamped,
        Some(w) => header_decode(SEGMENT_GENERATION, w).map_or(Generation::Damaged, Generation::At),
    }
}

/// Stamps `generation` into counters segment `n` (not yet durable: `flush_header_of`).
pub fn stamp_segment(arena: &Arena, n: usize, generation: u32) {
    if let Some(w) = segment_word(arena, n) {
        w.store(
            header_encode(SEGMENT_GENERATION, generation),
            Ordering::Release,
        );
    }
}

/// One slot's acknowledged state.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Ack {
    /// No acknowledged record.
    None,
    /// The record half with sequence `seq` was acknowledged; `used`: its counters were msynced.
    Valid {
        /// Acknowledged record sequence.
        seq: u32,
        /// The key has been used.
        used: bool,
    },
    /// The word fails its check.
    Damaged,
}

fn slot_check(slot: u32, low: u64) -> u64 {
    let mut b = [0u8; 12];
    b[..4].copy_from_slice(&slot.to_le_bytes());
    b[4..].copy_from_slice(&low.to_le_bytes());
    u64::from(crc32c::crc32c(&b) >> 1)
}

/// The word of `slot` acknowledging `seq` (and `used`).
pub fn encode(slot: u32, seq: u32, used: bool) -> u64 {
    let low = u64::from(seq) | u64::from(used) << 32;
    low | slot_check(slot, low) << 33
}

/// Reads the word of `slot`.
pub fn decode(slot: u32, word: u64) -> Ack {
    if word == 0 {
        return Ack::None;
    }
    let low = word & ((1 << 33) - 1);
    if word >> 33 != slot_check(slot, low) {
        return Ack::Damaged;
    }
    Ack::Valid {
        seq: low as u32,
        used: low >> 32 != 0,
    }
}

fn header_encode(index: usize, value: u32) -> u64 {
    let mut b = [0u8; 8];
    b[..4].copy_from_slice(&(index as u32).to_le_bytes());
    b[4..].copy_from_slice(&value.to_le_bytes());
    u64::from(value) | u64::from(crc32c::crc32c(&b)) << 32
}

fn header_decode(index: usize, word: u64) -> Option<u32> {
    let value = word as u32;
    (word != 0 && header_encode(index, value) == word).then_some(value)
}

/// The ack arena of a data directory.
#[derive(Debug)]
pub struct Acks {
    arena: Arena,
}

impl Acks {
    /// Opens the ack segments of `dir` (none if the files do not exist).
    pub fn open(
        dir: &Path,
        data_dir_id: u64,
        file_mode: Option<u32>,
    ) -> Result<Self, DataDirError> {
        Ok(Acks {
            arena: Arena::open(dir, ACKS, data_dir_id, file_mode)?,
        })
    }

    /// The file of segment 0.
    pub fn first_path(dir: &Path) -> PathBuf {
        Arena::segment_path(dir, &ACKS, 0)
    }

    /// The file holding `slot`'s word.
    pub fn path_of(&self, slot: u32) -> PathBuf {
        self.arena.path_of(slot)
    }

    /// Whether segment 0 exists.
    pub fn exists(&self) -> bool {
        self.arena.segment_count() > 0
    }

    /// Segments mapped.
    pub fn segment_count(&self) -> usize {
        self.arena.segment_count()
    }

    /// Slots available.
    pub fn capacity(&self) -> u64 {
        self.arena.capacity()
    }

    /// Makes sure `slot`'s word exists (creating segment 0 makes the header words).
    pub fn ensure(&self, slot: u32) -> Result<(), DataDirError> {
        let fresh = !self.exists();
        self.arena.ensure(slot)?;
        if fresh {
            self.set_header(HeaderWord::AckedKeys, 0);
            self.set_header(HeaderWord::CatalogGeneration, 0);
            self.set_header(HeaderWord::Clean, 0);
            self.arena.flush_header()?;
        }
        Ok(())
    }

    fn word(&self, slot: u32) -> Option<&AtomicU64> {
        let p = self.arena.slot_ptr(slot)?;
        // SAFETY: an 8-byte slot, 8-aligned (header 4096 + 8 * index), valid for the arena's
        // lifetime; every access to it is atomic.
        Some(unsafe { &*(p as *const AtomicU64) })
    }

    /// `slot`'s acknowledged state.
    pub fn get(&self, slot: u32) -> Ack {
        self.word(slot)
            .map_or(Ack::None, |w| decode(slot, w.load(Ordering::Acquire)))
    }

    /// Records that `slot`'s record half `seq` is acknowledged (not yet durable: see `flush`).
    pub fn set(&self, slot: u32, seq: u32, used: bool) {
        if let Some(w) = self.word(slot) {
            w.store(encode(slot, seq, used), Ordering::Release);
        }
    }

    /// Clears `slot`'s word (a creation that was never acknowledged).
    pub fn clear(&self, slot: u32) {
        if let Some(w) = self.word(slot) {
            w.store(0, Ordering::Release);
        }
    }

    fn header(&self, which: HeaderWord) -> Option<&AtomicU64> {
        let p = self.arena.header_page()?;
        // SAFETY: offset 64 + 8 * index of the 4096-byte header page; 8-aligned.
        Some(unsafe { &*(p.add(HEADER_WORDS + 8 * which as usize) as *const AtomicU64) })
    }

    /// A header word: `None` if segment 0 is missing or the word fails its check.
    pub fn header_value(&self, which: HeaderWord) -> Option<u32> {
        let w = self.header(which)?.load(Ordering::Acquire);
        header_decode(which as usize, w)
    }

    /// Sets a header word (not yet durable: see `flush_header`).
    pub fn set_header(&self, which: HeaderWord, value: u32) {
        if let Some(w) = self.header(which) {
            w.store(header_encode(which as usize, value), Ordering::Release);
        }
    }

    /// `msync`s the words of `first..=last`.
    pub fn flush(&self, first: u32, last: u32) -> Result<(), DataDirError> {
        self.arena.flush_slots(first, last)
    }

    /// `msync`s the header words.
    pub fn flush_header(&self) -> Result<(), DataDirError> {
        self.arena.flush_header()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn words_round_trip_and_any_flip_is_caught() {
        for (slot, seq, used) in [(0, 1, false), (7, u32::MAX, true), (65_535, 2, true)] {
            let w = encode(slot, seq, used);
            assert_eq!(decode(slot, w), Ack::Valid { seq, used });
            assert_eq!(
                decode(slot + 1, w),
                Ack::Damaged,
                "a word moved to another slot"
            );
            for bit in 0..64 {
                assert_eq!(decode(slot, w ^ 1 << bit), Ack::Damaged, "bit {bit}");
            }
        }
        assert_eq!(decode(3, 0), Ack::None);
        for i in 0..3 {
            let w = header_encode(i, 5);
            assert_eq!(header_decode(i, w), Some(5));
            assert_eq!(header_decode(i, 0), None);
            for bit in 0..64 {
                assert_eq!(header_decode(i, w ^ 1 << bit), None);
            }
        }
    }
}
