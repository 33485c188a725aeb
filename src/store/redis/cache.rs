//! What a node keeps of the keys it has checked: the record (versioned, so a stale copy is
//! refused by the check script), the digests of secrets it verified, and its lease.

use std::collections::HashMap;
use std::sync::Arc;

use subtle::ConstantTimeEq;

use super::conn::RedisError;
use super::layout;
use super::lease::Lease;
use super::record::Rec;
use super::RedisStore;
use crate::engine::decision::{AuthFailure, Decision, Verdict};
use crate::keys::format as keyfmt;
use crate::keys::KeyId;
use crate::store::Identity;

/// What a node keeps of one key.
#[derive(Debug, Clone)]
pub(super) struct Cached {
    pub(super) rec: Arc<Rec>,
    pub(super) fetched_ns: u64,
    /// Fast digest of the raw key last verified against `rec.hash` (0 = none).
    pub(super) fast: u64,
    /// Same, against `rec.hash_prev`.
    pub(super) fast_prev: u64,
    pub(super) lease: Option<Lease>,
}

impl RedisStore {
    pub(super) async fn fetch(&self, id: KeyId) -> Result<Option<Arc<Rec>>, RedisError> {
        let mut c = self.conn();
        let key = self.k_key(id.slot());
        let m: HashMap<String, Vec<u8>> = self
            .call(redis::cmd("HGETALL").arg(&key).query_async(&mut c))
            .await?;
        let m = layout::text_fields(&m);
        if m.is_empty() {
            self.cache.remove(&id.0);
            return Ok(None);
        }
        let rec = match Rec::parse(&m) {
            Ok(r) => r,
            Err(e) => {
                tracing::error!(redis_key = %key, fault = %e, "damaged key record in redis; treating the key as unknown");
                return Ok(None);
            }
        };
        if rec.id != id {
            return Ok(None);
        }
        Ok(Some(self.remember(rec)))
    }

    /// Puts a record just read or written into this node's cache (keeping the verified-secret
    /// digests while the secret is unchanged).
    pub(super) fn remember(&self, rec: Rec) -> Arc<Rec> {
        let rec = Arc::new(rec);
        let now = self.clock.now_ns();
        let mut e = self.cache.entry(rec.id.0).or_insert_with(|| Cached {
            rec: rec.clone(),
            fetched_ns: now,
            fast: 0,
            fast_prev: 0,
            lease: None,
        });
        if e.rec.version != rec.version || e.rec.hash != rec.hash {
            let same_secret = e.rec.hash == rec.hash;
            e.fast = if same_secret { e.fast } else { 0 };
            e.fast_prev = 0;
            e.rec = rec.clone();
        }
        e.fetched_ns = now;
        rec
    }

    /// Reads key `id`'s record for a check; `Err` is the check's answer when there is none to read
    /// (401 unknown) or Redis cannot say (the failure policy; `known`: the node has verified
    /// this key before).
    pub(super) async fn fetch_or_answer(
        &self,
        id: KeyId,
        tier: Option<u16>,
        now_s: u64,
        known: bool,
    ) -> Result<Arc<Rec>, Decision> {
        match self.fetch(id).await {
            Ok(Some(r)) => Ok(r),
            Ok(None) => Err(Decision::bare(
                Verdict::Unauthorized(AuthFailure::Unknown),
                None,
                None,
                now_s,
            )),
            Err(e) => Err(self.on_error(&e, id, tier, now_s, known)),
        }
    }

    /// Verifies `raw` against the record; caches the fast digest of a verified secret.
    pub(super) fn authenticate(
        &self,
        id: KeyId,
        rec: &Rec,
        raw: &str,
        fast: u64,
        now: u64,
    ) -> bool {
        if let Some(e) = self.cache.get(&id.0) {
            if e.rec.version == rec.version {
                if e.fast == fast && fast != 0 {
                    return true;
                }
                if e.fast_prev == fast && fast != 0 {
                    return now < rec.prev_until_ns;
                }
            }
        }
        let h = keyfmt::hash(raw);
        if bool::from(h.ct_eq(&rec.hash)) {
            if let Some(mut e) = self.cache.get_mut(&id.0) {
                if e.rec.version == rec.version {
                    e.fast = fast;
                }
            }
            return true;
        }
        if rec.prev_until_ns != 0 && bool::from(h.ct_eq(&rec.hash_prev)) {
            if let Some(mut e) = self.cache.get_mut(&id.0) {
                if e.rec.version == rec.version {
                    e.fast_prev = fast;
                }
            }
            return now < rec.prev_until_ns;
        }
        false
    }

    /// Lends the id, consumer and tier of key `id` to `f` if this node has it cached (it has,
    /// right after checking it, unless the key was deleted meanwhile); otherwise `f` is not
    /// called.
    pub(super) fn lend_identity(&self, id: KeyId, f: &mut (dyn FnMut(Identity<'_>) + Send)) {
        if let Some(e) = self.cache.get(&id.0) {
            f(Identity {
                id,
                consumer: &e.rec.consumer,
                tier: &e.rec.tier,
            });
        }
    }
}
