//! Imported keys on Redis: their digests in one index hash, `<ns>:{meta}:imported` (an imported
//! key does not name its id), claimed when a key is imported and released when it is deleted;
//! each node remembers what it looked up.

use std::sync::atomic::Ordering;

use super::record::hex;
use super::RedisStore;
use crate::engine::PolicyError;
use crate::keys::format as keyfmt;
use crate::keys::KeyId;
use crate::store::StoreError;

impl RedisStore {
    /// Claims digest `hash` for key `id` in the index; 409 if another key holds it.
    pub(super) async fn claim_import(
        &self,
        hash: &[u8; 32],
        id: KeyId,
        shown: &str,
    ) -> Result<(), StoreError> {
        let mut c = self.admin();
        let set: i64 = self
            .admin_call(
                redis::cmd("HSETNX")
                    .arg(self.k_imported())
                    .arg(hex(hash))
                    .arg(id.0)
                    .query_async(&mut c),
            )
            .await?;
        if set == 0 {
            return Err(PolicyError::Conflict(format!(
                "a key with this secret (shown as {shown:?}) exists already"
            ))
            .into());
        }
        self.imports_exist.store(true, Ordering::Relaxed);
        Ok(())
    }

    /// Gives back digests claimed by a creation that failed.
    pub(super) async fn release_imports(&self, hashes: &[[u8; 32]]) {
        if hashes.is_empty() {
            return;
        }
        let mut cmd = redis::cmd("HDEL");
        cmd.arg(self.k_imported());
        for h in hashes {
            cmd.arg(hex(h));
        }
        let mut c = self.admin();
        if let Err(e) = self.admin_call(cmd.query_async::<i64>(&mut c)).await {
            tracing::warn!(error = %e, "could not release the digests of a failed import");
        }
    }

    /// Drops deleted key `id`'s digests (`hashes`: its current and previous) from the index.
    pub(super) async fn forget_imports(&self, id: KeyId, hashes: [[u8; 32]; 2]) {
        let mut c = self.admin();
        for h in hashes {
            let field = hex(&h);
            let held: Option<u64> = self
                .admin_call(
                    redis::cmd("HGET")
                        .arg(self.k_imported())
                        .arg(&field)
                        .query_async(&mut c),
                )
                .await
                .ok()
                .flatten();
            if held == Some(id.0) {
                let gone: Result<i64, _> = self
                    .admin_call(
                        redis::cmd("HDEL")
                            .arg(self.k_imported())
                            .arg(&field)
                            .query_async(&mut c),
                    )
                    .await;
                if let Err(e) = gone {
                    tracing::warn!(key_id = %id, error = %e, "could not drop a deleted key's digest from the import index");
                }
            }
        }
        self.import_ids.retain(|_, k| *k != id);
    }

    /// Notes whether the index holds any digest (at each upkeep): a key imported through
    /// another node is looked up here from the next upkeep on.
    pub(super) async fn poll_imports(&self) {
        let mut c = self.conn();
        let n: Result<u64, _> = self
            .call(
                redis::cmd("HLEN")
                    .arg(self.k_imported())
                    .query_async(&mut c),
            )
            .await;
        if let Ok(n) = n {
            self.imports_exist.store(n > 0, Ordering::Relaxed);
        }
    }

    /// The key an imported `raw` key is, if any: this node's memory, else the index (asked only
    /// once some key was imported).
    pub(super) async fn imported_id(&self, raw: &str) -> Option<KeyId> {
        if !keyfmt::importable(raw) || !self.imports_exist.load(Ordering::Relaxed) {
            return None;
        }
        let hash = keyfmt::hash(raw);
        if let Some(id) = self.import_ids.get(&hash) {
            return Some(*id);
        }
        let mut c = self.conn();
        let id: Option<u64> = self
            .call(
                redis::cmd("HGET")
                    .arg(self.k_imported())
                    .arg(hex(&hash))
                    .query_async(&mut c),
            )
            .await
            .ok()
            .flatten();
        let id = KeyId(id?);
        self.import_ids.insert(hash, id);
        Some(id)
    }
}
