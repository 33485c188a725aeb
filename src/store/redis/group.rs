//! Consumer-wide counting on Redis. On a tier counting by consumer, every key of one consumer
//! spends the counters of one hash, `<ns>:{g<tier index>:<consumer>}`, with the same check
//! script as a key's own hash. That hash holds no record: in a Redis Cluster it lives on another
//! slot than the key's, so the script cannot check the node's copy of the record as it does on
//! a key's hash. The record's version is read beside the script instead (both in flight at
//! once); if it moved, the check gives back what it took and is decided again on the new record,
//! as a stale record is on a key's own hash.
//!
//! Group hashes outlive their keys, as the local store's group records do: deleting and
//! re-creating a key does not give a consumer its month back.

use redis::Value;

use futures_util::future::join_all;

use super::check::{outcome, Outcome};
use super::conn::RedisError;
use super::layout;
use super::record::Rec;
use super::RedisStore;
use crate::engine::admission;
use crate::engine::bucket::Limit;
use crate::engine::catalog::Catalog;
use crate::engine::decision::Decision;
use crate::keys::KeyId;
use crate::store::CheckRequest;

impl RedisStore {
    /// The hash whose counters key `rec` spends: its group's on a tier counting by consumer,
    /// else its own.
    pub(super) fn counters_hash(&self, rec: &Rec, cat: &Catalog) -> String {
        self.group_hash(rec, cat)
            .unwrap_or_else(|| self.k_key(rec.id.slot()))
    }

    /// The hash of key `rec`'s consumer group, on a tier counting by consumer.
    fn group_hash(&self, rec: &Rec, cat: &Catalog) -> Option<String> {
        let ix = cat.tier_index(&rec.tier)?;
        cat.tier(ix)
            .is_some_and(|t| t.counts_by_consumer())
            .then(|| self.k_group(ix, &rec.consumer))
    }

    /// The check script on `group`'s hash for key `id`, whose record this node holds as `rec`,
    /// with the record's version read beside it.
    pub(super) async fn run_group_check(
        &self,
        id: KeyId,
        rec: &Rec,
        group: &str,
        (limits, quota, month): (&[Limit], Option<u64>, u32),
        cost: u64,
        now_us: u64,
    ) -> Result<Outcome, RedisError> {
        let mut inv = self.check.key(group);
        layout::check_args(&mut inv, None, (now_us, cost, cost), (limits, quota, month));
        let (mut c1, mut c2) = (self.conn(), self.conn());
        let mut version = redis::cmd("HGET");
        version.arg(self.k_key(id.slot())).arg("v");
        let (v, version) = tokio::join!(
            self.call(inv.invoke_async::<Vec<Value>>(&mut c1)),
            self.call(version.query_async::<Option<u64>>(&mut c2)),
        );
        let out = outcome(&v?, limits.len())?;
        let changed = match version? {
            None => Some(Outcome::Missing),
            Some(v) if v != rec.version => Some(Outcome::Stale),
            Some(_) => None,
        };
        let Some(changed) = changed else {
            return Ok(out);
        };
        // Decided on an old copy of the record: what it took goes back.
        if let Outcome::State { granted, .. } = out {
            if granted > 0 {
                let mut back = self.give_back.key(group);
                layout::return_args(&mut back, granted, month, layout::signature(limits));
                let mut c = self.conn();
                self.call(back.invoke_async::<i64>(&mut c)).await?;
            }
        }
        Ok(changed)
    }

    /// Decides the checks `misses` of batch `reqs` that go to Redis: all at once, except that
    /// checks spending one consumer group's counters follow each other in batch order, so that
    /// a batch is decided as the local store decides it. Records not cached yet are read first,
    /// so that each check's counters are known before any is sent.
    pub(super) async fn check_in_order(
        &self,
        reqs: &[CheckRequest<'_>],
        misses: &[usize],
    ) -> Vec<(usize, Decision)> {
        let ids: Vec<Option<KeyId>> = misses
            .iter()
            .map(|&i| admission::presented(reqs[i].key).ok().map(|(_, id)| id))
            .collect();
        let mut unknown: Vec<KeyId> = ids
            .iter()
            .flatten()
            .filter(|id| !self.cache.contains_key(&id.0))
            .copied()
            .collect();
        unknown.sort_unstable_by_key(|id| id.0);
        unknown.dedup();
        // A record that cannot be read now is the check's to answer for.
        join_all(unknown.into_iter().map(|id| self.fetch(id))).await;
        let cat = self.catalog.load();
        let mut chains: Vec<(Option<String>, Vec<usize>)> = Vec::new();
        for (&i, id) in misses.iter().zip(&ids) {
            let group = id
                .and_then(|id| self.cache.get(&id.0))
                .and_then(|e| self.group_hash(&e.rec, &cat.1));
            match chains.iter_mut().find(|(g, _)| g.is_some() && *g == group) {
                Some((_, run)) => run.push(i),
                None => chains.push((group, vec![i])),
            }
        }
        let runs = chains.iter().map(|(_, run)| async move {
            let mut out = Vec::with_capacity(run.len());
            for &i in run {
                out.push((i, self.check_found(reqs[i]).await));
            }
            out
        });
        join_all(runs).await.into_iter().flatten().collect()
    }
}
