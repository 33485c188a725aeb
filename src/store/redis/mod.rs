//! The shared store: keys, tiers and counters in Redis (one server, `redis://`, or a Redis
//! Cluster, `redis-cluster://`), so that several quotad nodes enforce one set of limits.
//!
//! - **Keys**: one hash per key (`record.rs`) holding the record and its counters under one hash
//!   tag, so one check is one `EVALSHA` of the check script (`scripts.rs`) on one master.
//! - **Changes between nodes: versioned records.** A node caches the records it has seen and
//!   sends the cached version with every check; the script refuses a stale version (consuming
//!   nothing) and the node re-reads the record and asks again. So a revoke, scope, tier or quota
//!   change made on any node holds on every node from its next check of that key (exact mode).
//!   Denials decided from the cache (revoked, expired, missing scope, wrong secret) re-read a
//!   record cached for more than [`RECORD_RECHECK`], so a change that *widens* access is seen
//!   within that time. Tiers live in one catalog hash with a revision; every node polls the
//!   revision (`--redis-poll-ms`, default 250 ms) and applies a new catalog on its next check.
//! - **Exact mode**: every check goes to Redis. **Lease mode**: a node takes up to `lease`
//!   tokens of a key at once, spends them locally for at most `lease_ttl`, and gives back what it
//!   did not spend. See `docs/SCALING.md` for the bounds.
//! - **Changes reach a replica before the call returns.** Admin writes (keys, the catalog, the
//!   key counter) go over a connection of their own and end with `WAIT` for
//!   [`RedisOptions::replica_acks`] replicas, so a failover right after a key is created or
//!   revoked does not undo it; checks never queue behind that wait. Counts written by checks are
//!   not waited for (see `docs/SCALING.md`: a failover loses the replication lag's counts).
//! - **Redis unreachable**: every call has a timeout; `fail-closed` answers `unavailable` (503),
//!   `fail-open` admits keys this node has already authenticated, counting them in a metric.
//!   The client reconnects by itself; `/health` shows the state.
//!
//! Time: the node's clock, in microseconds (see [`crate::engine::bucket::Limit::to_micros`]);
//! nodes are assumed NTP-synchronized (a skew of d shifts refills by d).

mod admin;
mod cache;
mod catalog;
mod check;
mod conn;
mod group;
mod import;
mod layout;
mod lease;
mod options;
mod record;
mod renew;
mod reset;
mod scripts;
mod service;
mod slots;
mod stats;

use std::sync::Arc;
use std::time::Duration;

use arc_swap::ArcSwap;
use dashmap::DashMap;
use redis::Script;

use self::cache::Cached;
use self::conn::Conn;
use crate::engine::catalog::Catalog;
use crate::engine::catalog_doc::CatalogDoc;
use crate::engine::clock::Clock;
use crate::keys::format as keyfmt;
use crate::keys::KeyId;
use crate::store::StoreError;

pub use self::conn::RedisError;
pub use self::options::{FailPolicy, Mode, RedisOptions};
pub use self::stats::StoreStats;

/// A cached record older than this is re-read before a denial decided from it.
pub const RECORD_RECHECK: Duration = Duration::from_secs(1);

/// Lease renewals waiting for the renewal task; past this, a lease runs out and its next check
/// takes a new one on its own path.
const RENEWALS_QUEUED: usize = 4096;

/// The Redis store. Every method takes `&self`; share it behind an `Arc`.
pub struct RedisStore {
    /// Checks and reads (replaced when a cluster client stops answering: `conn.rs`).
    conn: ArcSwap<Conn>,
    /// Admin writes and their `WAIT` (a `WAIT` holds its connection until the replicas answer,
    /// so it must not share one with checks). The same as `conn` when no replica is waited for.
    admin: ArcSwap<Conn>,
    /// When the connections were last replaced (or tried to be), ns; 0: never.
    reopened_ns: std::sync::atomic::AtomicU64,
    opts: RedisOptions,
    clock: Arc<dyn Clock>,
    catalog: ArcSwap<(u64, Catalog)>,
    /// Looked up several times a check: foldhash (seeded per process), not SipHash.
    cache: DashMap<u64, Cached, foldhash::fast::RandomState>,
    /// Imported keys this node looked up, by digest.
    import_ids: DashMap<[u8; 32], KeyId, foldhash::fast::RandomState>,
    /// Whether any key was imported (as of the last upkeep, or an import through this node):
    /// until then a refused key costs no Redis call.
    imports_exist: std::sync::atomic::AtomicBool,
    /// Keys on each tier by index, as read at the last upkeep (for `/metrics`).
    tier_keys_seen: parking_lot::Mutex<Vec<(u16, u64)>>,
    /// Keys this node holds a lease on (lease mode), so that expiry sweeps visit only them.
    leased: parking_lot::Mutex<std::collections::HashSet<u64>>,
    /// Lease mode: keys whose lease runs low, for [`RedisStore::renewals`] to top up.
    renew_tx: tokio::sync::mpsc::Sender<u64>,
    renew_rx: parking_lot::Mutex<Option<tokio::sync::mpsc::Receiver<u64>>>,
    renew_stop: tokio::sync::Notify,
    /// On a cluster, which master owns each slot (read when first needed, again after a
    /// refused renewal call), so that renewals go one call per master.
    slots: arc_swap::ArcSwapOption<slots::SlotMap>,
    /// When the slot map was last asked for, ns (asked at most once a second).
    slots_asked_ns: std::sync::atomic::AtomicU64,
    /// Whether renewals may go several to a call: cleared if Redis refuses [`scripts::CHECK_MANY`]
    /// as a script (a Redis before 7.0).
    renew_many: std::sync::atomic::AtomicBool,
    digest: keyfmt::FastDigest,
    stats: StoreStats,
    check: Script,
    check_many: Script,
    give_back: Script,
    update: Script,
    delete: Script,
    reset: Script,
    put_catalog: Script,
}

impl std::fmt::Debug for RedisStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedisStore")
            .field("url", &self.opts.shown_url())
            .field("mode", &self.opts.mode)
            .finish()
    }
}

impl RedisStore {
    /// Connects, loads (or initializes) the catalog, and starts nothing: call
    /// [`crate::store::Store::upkeep`] periodically to poll the catalog and expire leases.
    pub async fn connect(opts: RedisOptions, clock: Arc<dyn Clock>) -> Result<Self, StoreError> {
        let (conn, admin) = Self::open_both(&opts).await?;
        let empty = Catalog::compile(CatalogDoc::new(0, Vec::new()))?;
        let (renew_tx, renew_rx) = tokio::sync::mpsc::channel(RENEWALS_QUEUED);
        let store = RedisStore {
            conn: ArcSwap::from_pointee(conn),
            admin: ArcSwap::from_pointee(admin),
            reopened_ns: std::sync::atomic::AtomicU64::new(0),
            clock,
            catalog: ArcSwap::from_pointee((0, empty)),
            cache: DashMap::with_hasher(Default::default()),
            tier_keys_seen: parking_lot::Mutex::new(Vec::new()),
            import_ids: DashMap::with_hasher(Default::default()),
            imports_exist: std::sync::atomic::AtomicBool::new(false),
            leased: parking_lot::Mutex::new(std::collections::HashSet::new()),
            renew_tx,
            renew_rx: parking_lot::Mutex::new(Some(renew_rx)),
            renew_stop: tokio::sync::Notify::new(),
            slots: arc_swap::ArcSwapOption::empty(),
            slots_asked_ns: std::sync::atomic::AtomicU64::new(0),
            renew_many: std::sync::atomic::AtomicBool::new(true),
            digest: keyfmt::FastDigest::random()
                .map_err(|e| StoreError::invalid(format!("OS random source failed: {e}")))?,
            stats: StoreStats::default(),
            check: Script::new(scripts::CHECK),
            check_many: Script::new(scripts::CHECK_MANY),
            give_back: Script::new(scripts::RETURN),
            update: Script::new(scripts::UPDATE_RECORD),
            delete: Script::new(scripts::DELETE_RECORD),
            reset: Script::new(scripts::RESET),
            put_catalog: Script::new(scripts::PUT_CATALOG),
            opts,
        };
        store.init_catalog().await?;
        store.poll_imports().await;
        Ok(store)
    }

    /// The store's statistics.
    pub fn stats(&self) -> &StoreStats {
        &self.stats
    }

    /// The options in force.
    pub fn options(&self) -> &RedisOptions {
        &self.opts
    }

    /// The compiled catalog in force on this node, with its revision.
    pub fn catalog(&self) -> Arc<(u64, Catalog)> {
        self.catalog.load_full()
    }
}
