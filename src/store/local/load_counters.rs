//! Start-up's checks of the counter files, after the key records (see `load`): each used key's
//! counters must be there, and a newest copy that fails its checksum is a torn write only after
//! an unclean stop.

use super::acks::{Ack, Acks};
use super::arena::Arena;
use super::datadir::DataDirError;
use super::layout::{self, CounterSlot, Half, SlotState, FLAG_DELETED};
use super::recovery::{Finding, Fix};
use super::shards::Shards;
use crate::engine::limits;
use crate::engine::month::MonthWindow;
use crate::store::StoreError;

/// Checks every counter slot against its key (`key_count` keys; whether the acknowledged count
/// is known; whether the last process closed cleanly), installing each key's counters in the
/// key table. Returns the latest month written if it is later than the clock's.
pub(super) fn check_counters(
    counters: &Arena,
    acks: &Acks,
    shards: &Shards,
    (key_count, count_known, clean): (u32, bool, bool),
    now: u64,
    findings: &mut Vec<Finding>,
) -> Result<Option<(u32, u32)>, StoreError> {
    let lost_records: std::collections::HashSet<u32> = findings
        .iter()
        .flat_map(|f| f.fixes())
        .filter_map(|f| match f {
            Fix::ClearCounter(s) => Some(*s),
            _ => None,
        })
        .collect();
    let mut latest_month = 0u32;
    for slot in 0..counters.capacity() as u32 {
        let Some(ptr) = counters.slot_ptr(slot) else {
            break;
        };
        // SAFETY: start-up, single-threaded; one 128-byte slot.
        let cs = unsafe { &*(ptr as *const CounterSlot) };
        // Paths and descriptions only when a finding needs them (not per slot: see load.rs).
        let file = || counters.path_of(slot);
        let state = layout::read_checked(cs);
        if slot >= key_count {
            if !matches!(state, SlotState::Empty) {
                if !count_known {
                    return Err(DataDirError::corrupt(
                        file(),
                        format!("counter slot {slot} holds data but no key record exists"),
                    )
                    .into());
                }
                findings.push(Finding::automatic(
                    file(),
                    Some(slot),
                    "counters of a key creation that never returned (cleared)",
                    vec![Fix::ClearCounter(slot)],
                ));
            }
            continue;
        }
        if lost_records.contains(&slot) {
            continue;
        }
        let _g = shards.lock(slot);
        // SAFETY: shard lock held; every slot below key_count was installed.
        let entry = unsafe { shards.entry(slot) };
        if entry.flags & FLAG_DELETED != 0 {
            if !matches!(state, SlotState::Empty) {
                findings.push(Finding::automatic(
                    file(),
                    Some(slot),
                    "counters of a deleted key (cleared)",
                    vec![Fix::ClearCounter(slot)],
                ));
            }
            continue;
        }
        let key = || describe_entry(entry.id, slot);
        let used = matches!(acks.get(slot), Ack::Valid { used: true, .. });
        let unused = |what: &str| -> Finding {
            Finding::lossy(
                file(),
                Some(slot),
                Some(entry.id),
                what.to_string(),
                format!(
                    "{} reads as unused this month (usage 0, full buckets)",
                    key()
                ),
                vec![Fix::ClearCounter(slot)],
            )
        };
        match state {
            SlotState::Empty => {
                if used {
                    findings.push(unused("counter slot is zeroed, but the key has been used"));
                }
            }
            SlotState::Interrupted => {
                if used || clean {
                    findings.push(unused("counter slot: one copy zeroed, the other damaged"));
                } else {
                    findings.push(Finding::automatic(
                        file(),
                        Some(slot),
                        "a torn first counter write of a killed process (cleared)",
                        vec![Fix::ClearCounter(slot)],
                    ));
                }
            }
            SlotState::Damaged => {
                findings.push(unused("counter slot: both copies fail their checksum"));
            }
            SlotState::Valid(c) => {
                if c.key_tag != (entry.id >> 32) as u32 {
                    findings.push(unused(&format!(
                        "counter slot belongs to key tag {:#x}, the record says {:#x}",
                        c.key_tag,
                        entry.id >> 32
                    )));
                    continue;
                }
                let newest = layout::newest(cs);
                let other = cs[1 - newest];
                let other_ok = other.is_zero()
                    || (other.compute_crc() == other.crc && other.seq == c.seq.wrapping_sub(1));
                let older_damaged = !other_ok && other.seq == c.seq.wrapping_sub(1);
                let fixed = !(cs[newest] == c && other_ok);
                if !fixed {
                    // Intact.
                } else if older_damaged {
                    findings.push(Finding::automatic(
                        file(),
                        Some(slot),
                        "the counter slot's older copy fails its checksum (rewritten)",
                        vec![Fix::Counter(slot, c)],
                    ));
                } else if clean {
                    findings.push(Finding::lossy(
                        file(),
                        Some(slot),
                        Some(entry.id),
                        "the newest counter copy fails its checksum after a clean shutdown",
                        format!(
                            "{} falls back to the copy before its last check: its usage is \
                             lower by that check's cost",
                            key()
                        ),
                        vec![Fix::Counter(slot, c)],
                    ));
                } else {
                    findings.push(Finding::automatic(
                        file(),
                        Some(slot),
                        "a torn counter write of a killed process (the check it counted never \
                         answered; the older copy is kept)",
                        vec![Fix::Counter(slot, c)],
                    ));
                }
                latest_month = latest_month.max(c.month);
                entry.counters = c;
                limits::rebase_behind_clock(&mut entry.counters.tat, c.last_used_s, now);
                if fixed {
                    // A repair leaves the state in half 1, at sequence 2 or later (see
                    // `recovery::rewrite`).
                    entry.newest = 1;
                    entry.counters.seq = c.seq.max(2);
                } else {
                    entry.newest = newest as u8;
                }
            }
        }
    }
    let clock = MonthWindow::containing(now).id;
    Ok((latest_month > clock).then_some((latest_month, clock)))
}

fn describe_entry(id: u64, slot: u32) -> String {
    format!("key {} (slot {slot})", crate::keys::KeyId(id))
}
