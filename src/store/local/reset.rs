//! An operator's reset of a key's counters: its burst windows back to full and/or its month's
//! usage back to 0, written like a check's counter update (the next half of the mapped slot) and
//! msynced before the call returns, as a deletion's zeroed counters are.

use super::layout::CounterHalf;
use super::Local;
use crate::keys::record::{Reset, Usage};
use crate::keys::KeyId;
use crate::store::StoreError;
use crate::tiers::MAX_LIMITS;

impl Local {
    /// Resets key `id`'s counters as `what` says; the usage before and after.
    pub(super) fn reset_counters(
        &self,
        id: KeyId,
        what: Reset,
    ) -> Result<(Usage, Usage), StoreError> {
        // The admin lock orders this with deletions and re-creations of the slot. On a tier
        // counting by consumer the key's counters are its group's.
        let mut slot = id.slot();
        let before = {
            let _admin = self.admin.lock();
            let before = self.usage(id)?;
            slot = self.counters_of(slot);
            let mut g = self.shards.lock(slot);
            // SAFETY: shard lock held; `usage` found the key, so its slots exist.
            let entry = unsafe { self.shards.entry(slot) };
            if slot == id.slot() && entry.id != id.0 {
                return Err(StoreError::UnknownKey);
            }
            let cur = entry.counters;
            // Never written: already full and unused.
            if cur.seq != 0 {
                let mut body = cur;
                if what.burst {
                    body.tat = [0; MAX_LIMITS];
                }
                if what.monthly {
                    body.month_used = 0;
                }
                let next = CounterHalf::successor(cur.seq, &body);
                let into = 1 - usize::from(entry.newest & 1);
                // SAFETY: shard lock held.
                let cs = unsafe { self.counter_slot(slot) }.ok_or(StoreError::UnknownKey)?;
                cs[into] = next;
                entry.counters = next;
                entry.newest = into as u8;
                g.written = true;
            }
            before
        };
        // Durable as an admin change is: the slot's page is msynced before the answer (its
        // counters generation is stamped by the next periodic flush, as after any check).
        self.counters.flush_slot(slot)?;
        Ok((before, self.usage(id)?))
    }
}
