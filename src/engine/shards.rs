//! The lock-sharded key table. Key slot `s` lives in shard `s % SHARDS` at index `s / SHARDS`;
//! the shard's mutex also guards that slot's counter and record memory in the mapped files.
//!
//! Checks on different keys take different locks (up to hash collisions of the slot modulo
//! `SHARDS`); each critical section is a few hundred nanoseconds of arithmetic and never spans
//! I/O or an `.await`.

use std::collections::HashMap;

use parking_lot::Mutex;

use super::month::MonthWindow;

/// Number of shards (a power of two).
pub const SHARDS: usize = 256;

/// The in-memory part of a key that a check reads: 48 bytes, one cache line with its neighbours.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HotEntry {
    /// Keyed SipHash-1-3/128 of the raw key once verified against the stored SHA-256 (0 = not yet).
    /// The hashing key is random per process, so this never outlives the process.
    pub fast: u128,
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
}

/// A previous secret honoured during a rotation grace period.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Grace {
    /// Fast digest of the previous raw key once seen (0 = not yet).
    pub fast: u128,
    /// Honoured until then, ns since the epoch.
    pub until_ns: u64,
}

/// One shard's state.
#[derive(Debug)]
pub struct ShardData {
    /// Keys of this shard by `slot / SHARDS`.
    pub entries: Vec<HotEntry>,
    /// Keys in a rotation grace period, by index in `entries`.
    pub grace: HashMap<u32, Grace>,
    /// The current month, cached so a check does no calendar math.
    pub month: MonthWindow,
}

#[repr(align(128))]
#[derive(Debug)]
struct Padded(Mutex<ShardData>);

/// All shards.
#[derive(Debug)]
pub struct Shards {
    shards: Box<[Padded]>,
}

impl Shards {
    /// Empty shards.
    pub fn new(now_ns: u64) -> Self {
        let shards = (0..SHARDS)
            .map(|_| {
                Padded(Mutex::new(ShardData {
                    entries: Vec::new(),
                    grace: HashMap::new(),
                    month: MonthWindow::containing(now_ns),
                }))
            })
            .collect();
        Shards { shards }
    }

    /// The shard holding `slot`, and the slot's index inside it.
    #[inline]
    pub fn locate(slot: u32) -> (usize, usize) {
        (slot as usize % SHARDS, slot as usize / SHARDS)
    }

    /// Locks the shard holding `slot`.
    #[inline]
    pub fn lock(&self, slot: u32) -> parking_lot::MutexGuard<'_, ShardData> {
        self.shards[slot as usize % SHARDS].0.lock()
    }
}
