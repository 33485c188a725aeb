//! What start-up's checks found, and what recovering from it costs.
//!
//! A [`Finding`] that loses nothing acknowledged (a torn write that never returned, an older copy
//! that fails its checksum, an upgrade) is repaired at start-up with a WARN line. Any other
//! finding stops start-up, naming the file and slot, until the operator runs `quotad repair DIR`,
//! which lists what each recovery loses and applies them only with `--accept-loss` (see
//! `repair`).

use std::fmt;
use std::path::{Path, PathBuf};

use super::arena::Arena;
use super::datadir::DataDirError;
use super::layout::{self, CounterHalf, CounterSlot, RecordHalf, RecordSlot};
use crate::keys::KeyId;
use crate::store::StoreError;

/// A repair of one slot, applied once every file has been read.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Fix {
    /// Rewrite both halves of a record slot so that this state is current.
    Record(u32, RecordHalf),
    /// Zero a record slot (a creation that never returned).
    ClearRecord(u32),
    /// Rewrite both halves of a counter slot so that this state is current.
    Counter(u32, CounterHalf),
    /// Zero a counter slot.
    ClearCounter(u32),
}

/// Something start-up's checks found in the data directory.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Finding {
    /// The file.
    pub file: PathBuf,
    /// The slot in it, if the finding is about one.
    pub slot: Option<u32>,
    /// The key concerned, if known.
    pub key: Option<KeyId>,
    /// What is wrong.
    pub problem: String,
    /// What recovering loses; `None` when nothing acknowledged is lost (repaired at start-up).
    pub loss: Option<String>,
    fixes: Vec<Fix>,
    info: bool,
}

impl Finding {
    pub(super) fn lossy(
        file: PathBuf,
        slot: Option<u32>,
        key: Option<u64>,
        problem: impl Into<String>,
        loss: impl Into<String>,
        fixes: Vec<Fix>,
    ) -> Self {
        Finding {
            file,
            slot,
            key: key.map(KeyId),
            problem: problem.into(),
            loss: Some(loss.into()),
            fixes,
            info: false,
        }
    }

    pub(super) fn automatic(
        file: PathBuf,
        slot: Option<u32>,
        problem: impl Into<String>,
        fixes: Vec<Fix>,
    ) -> Self {
        Finding {
            file,
            slot,
            key: None,
            problem: problem.into(),
            loss: None,
            fixes,
            info: false,
        }
    }

    pub(super) fn upgrade(file: PathBuf) -> Self {
        Finding {
            info: true,
            ..Finding::automatic(
                file,
                None,
                "a data directory of format 1: the acks file is created (upgrade to format 2)",
                Vec::new(),
            )
        }
    }

    /// Whether start-up repairs it by itself (it loses nothing acknowledged).
    pub fn is_automatic(&self) -> bool {
        self.loss.is_none()
    }

    /// Whether it is only news (an upgrade), logged at INFO rather than WARN.
    pub(super) fn is_info(&self) -> bool {
        self.info
    }

    pub(super) fn fixes(&self) -> &[Fix] {
        &self.fixes
    }
}

impl fmt::Display for Finding {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.file.display())?;
        if let Some(s) = self.slot {
            write!(f, ": slot {s}")?;
        }
        write!(f, ": {}", self.problem)
    }
}

/// A key's identity for a report: id, display prefix and consumer.
pub(super) fn describe_key(r: &RecordHalf) -> String {
    format!(
        "key {} ({}…, consumer {:?})",
        KeyId(r.id),
        layout::prefixes(r).1,
        layout::get_str(&r.consumer).unwrap_or("?")
    )
}

/// A revoked placeholder for a key whose record is lost: keeps the slot taken, never
/// authenticates (its hashes are zero, which no SHA-256 is), and is listed as revoked.
pub(super) fn tombstone(slot: u32, catalog: &crate::engine::catalog::Catalog) -> RecordHalf {
    use zerocopy::FromZeros;
    let mut r = RecordHalf::new_zeroed();
    r.seq = 2;
    r.id = u64::from(slot);
    r.flags = layout::FLAG_LIVE | layout::FLAG_REVOKED;
    r.tier = catalog.tiers().next().map_or(0, |(ix, _)| ix);
    r.monthly_quota = layout::NO_OVERRIDE;
    r.consumer = layout::put_str("(lost)");
    r.name = layout::put_str("record lost; replaced by quotad repair");
    r
}

/// A record's security state, for a repair's report.
pub(super) fn describe_state(r: &RecordHalf) -> String {
    let mut parts = vec![if r.flags & layout::FLAG_REVOKED != 0 {
        "revoked".to_string()
    } else {
        "live".to_string()
    }];
    if r.previous_valid_until_ns != 0 {
        parts.push("a previous secret still accepted".into());
    }
    if r.expires_at_s != 0 {
        parts.push(format!("expires at {}", r.expires_at_s));
    }
    parts.join(", ")
}

impl Fix {
    pub(super) fn apply(&self, records: &Arena, counters: &Arena) {
        // SAFETY: start-up (or repair), single process holding the lock, single-threaded; each
        // pointer addresses one slot of its arena.
        unsafe {
            match *self {
                Fix::Record(slot, r) => {
                    if let Some(p) = records.slot_ptr(slot) {
                        rewrite(&mut *(p as *mut RecordSlot), r);
                    }
                }
                Fix::ClearRecord(slot) => {
                    if let Some(p) = records.slot_ptr(slot) {
                        std::ptr::write_bytes(p, 0, std::mem::size_of::<RecordSlot>());
                    }
                }
                Fix::Counter(slot, c) => {
                    if let Some(p) = counters.slot_ptr(slot) {
                        rewrite(&mut *(p as *mut CounterSlot), c);
                    }
                }
                Fix::ClearCounter(slot) => {
                    if let Some(p) = counters.slot_ptr(slot) {
                        std::ptr::write_bytes(p, 0, std::mem::size_of::<CounterSlot>());
                    }
                }
            }
        }
    }
}

/// Rewrites a slot so both halves agree with `state` and the newest half (half 1) is intact.
fn rewrite<H: layout::Half>(slot: &mut [H; 2], state: H) {
    let seq = state.seq().max(2);
    let mut newer = state;
    layout::seal(&mut newer, seq.wrapping_sub(1));
    let mut older = state;
    layout::seal(&mut older, seq.wrapping_sub(2));
    slot[0] = older;
    slot[1] = newer;
}

/// Start-up's refusal: the first finding that loses something, naming its file and slot.
pub(super) fn refusal(dir: &Path, findings: &[Finding]) -> Option<StoreError> {
    let lossy: Vec<&Finding> = findings.iter().filter(|f| !f.is_automatic()).collect();
    let first = lossy.first()?;
    let more = match lossy.len() - 1 {
        0 => String::new(),
        n => format!(" (and {n} more)"),
    };
    let mut detail = String::new();
    if let Some(s) = first.slot {
        detail.push_str(&format!("slot {s}: "));
    }
    detail.push_str(&format!(
        "{}{more}; run `quotad repair {}` to see what each recovery loses",
        first.problem,
        dir.display()
    ));
    Some(DataDirError::corrupt(&first.file, detail).into())
}
