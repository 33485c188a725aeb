//! The local store: one node's keys, tiers and counters in memory-mapped files.
//!
//! - `datadir`: the directory and its lock; `arena`: segment files of fixed slots, laid out
//!   by `layout`; `catalog_file`: `catalog.json`.
//! - `load`: opening, checking and repairing a data directory, and [`inspect`].
//! - `check`: the hot path (a check under one shard lock), with its private speed work.
//! - `registry`: key and tier administration.
//! - `shards`: the in-memory key table behind the shard locks.
//! - `service`: the [`crate::store::Store`] implementation.
//!
//! A check runs under one shard lock: authenticate the key (a keyed SipHash compared with the
//! digest cached at the first successful SHA-256 verification), run the policy's gate and limits
//! phase, and, only if all admit, write the new counter state into the key's mapped slot. Denials
//! write nothing. Admin operations are serialized by one mutex, write the record or catalog
//! durably (`msync` / `fsync`) and then publish the change to the hot path.

mod arena;
pub(crate) mod catalog_file;
mod check;
mod datadir;
mod layout;
mod load;
mod registry;
mod service;
mod shards;

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use arc_swap::ArcSwap;
use parking_lot::Mutex;

use self::arena::{Arena, ArenaKind};
use self::datadir::DirLock;
use self::layout::{CounterHalf, RecordHalf, COUNTERS_MAGIC, KEYS_MAGIC};
use self::shards::{HotEntry, Shards};
use crate::engine::catalog::Catalog;
use crate::engine::catalog_doc::{self, CatalogDoc};
use crate::engine::clock::{Clock, NANOS_PER_SEC};
use crate::engine::key_rules::random_u64;
use crate::keys::format as keyfmt;
use crate::store::StoreError;
use crate::tiers::{self, TierSpec};

pub use self::datadir::DataDirError;
pub use self::load::{inspect, InspectReport};

const COUNTERS: ArenaKind = ArenaKind {
    stem: "counters",
    magic: COUNTERS_MAGIC,
    slot_size: 128,
};
const KEYS: ArenaKind = ArenaKind {
    stem: "keys",
    magic: KEYS_MAGIC,
    slot_size: 512,
};

/// How to open a local store.
#[derive(Debug, Clone)]
pub struct LocalOptions {
    /// The data directory.
    pub data_dir: PathBuf,
    /// Tiers to put in force at start-up, replacing the stored ones (e.g. from `--tiers FILE`).
    /// `None` keeps the stored tiers (built-ins on a new data directory).
    pub tiers: Option<Vec<TierSpec>>,
    /// `msync` each key record change before returning (on by default; benches turn it off).
    pub sync_records: bool,
    /// How often the counters are msynced (the bound on what a power loss can cost).
    pub msync_interval: Duration,
}

impl LocalOptions {
    /// Defaults for `data_dir`: records synced, counters msynced every second.
    pub fn new(data_dir: impl Into<PathBuf>) -> Self {
        LocalOptions {
            data_dir: data_dir.into(),
            tiers: None,
            sync_records: true,
            msync_interval: Duration::from_secs(1),
        }
    }
}

/// What the admin mutex guards.
struct AdminState {
    key_count: u32,
    /// Keys per tier index.
    tier_use: Vec<u64>,
}

/// The memory-mapped store. Cheap to clone (one `Arc`); every method takes `&self`.
#[derive(Clone)]
pub struct LocalStore {
    inner: Arc<Local>,
}

impl std::fmt::Debug for LocalStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LocalStore")
            .field("data_dir", &self.inner.data_dir)
            .field("keys", &self.inner.key_count())
            .finish()
    }
}

/// The store's state, shared by its clones and the blocking tasks of admin calls.
struct Local {
    clock: Arc<dyn Clock>,
    catalog: ArcSwap<Catalog>,
    /// Bumped after every catalog change; shards refresh their cached catalog when it moves.
    catalog_gen: AtomicU64,
    shards: Shards,
    counters: Arena,
    records: Arena,
    admin: Mutex<AdminState>,
    key_count: AtomicU64,
    digest: keyfmt::FastDigest,
    data_dir: PathBuf,
    sync_records: bool,
    msync_interval: Duration,
    last_flush_ns: AtomicU64,
    /// Whether this CPU has `prefetchw` (see `check::prefetch_write`).
    prefetch_exclusive: bool,
    _lock: DirLock,
}

fn secs(ns: u64) -> u64 {
    ns / NANOS_PER_SEC
}

/// The hot entry of a key record just read or written (its counters are the caller's to set).
fn hot_from_record(r: &RecordHalf) -> HotEntry {
    HotEntry {
        fast: 0,
        id: r.id,
        expires_at_ns: crate::engine::admission::expiry_ns(r.expires_at_s),
        quota_override: r.monthly_quota,
        tier: r.tier,
        flags: r.flags,
        scope_set: r.scope_set,
        counters: CounterHalf::default(),
        newest: 0,
    }
}

impl LocalStore {
    /// Opens (or creates) the data directory and loads every key.
    ///
    /// Refuses to start, naming the file and the fault, on any damaged, truncated or foreign file;
    /// nothing is overwritten in that case.
    pub fn open(opts: LocalOptions, clock: Arc<dyn Clock>) -> Result<Self, StoreError> {
        let dir = opts.data_dir.clone();
        let lock = DirLock::acquire(&dir)?;
        let (doc, fresh) = match catalog_file::load(&dir)? {
            Some(doc) => (doc, false),
            None => {
                let stray = Arena::segment_path(&dir, &KEYS, 0);
                if stray.exists() {
                    return Err(DataDirError::corrupt(
                        dir.join(catalog_file::CATALOG_FILE),
                        format!("missing, but {} exists", stray.display()),
                    )
                    .into());
                }
                (CatalogDoc::new(random_u64()?, tiers::builtin_tiers()), true)
            }
        };
        let now = clock.now_ns();
        let load::Loaded {
            records,
            counters,
            shards,
            catalog: stored,
            mut tier_use,
            repairs,
            key_count,
        } = load::load(&dir, doc, now)?;
        if key_count > 0 {
            records.ensure(key_count - 1)?;
            counters.ensure(key_count - 1)?;
        }
        // Everything checked: only now touch the files (torn writes of a killed process).
        if !repairs.is_empty() {
            for r in repairs {
                r.apply(&records, &counters);
            }
            records.flush_all()?;
            counters.flush_all()?;
        }

        let (catalog, changed) = match opts.tiers {
            None => (stored, fresh),
            Some(new_tiers) => {
                let mut doc = stored.doc().clone();
                catalog_doc::replace_tiers(&mut doc, &tier_use, new_tiers)?;
                let changed = fresh || doc != *stored.doc();
                (Catalog::compile(doc)?, changed)
            }
        };
        tier_use.resize(catalog.doc().tiers.len(), 0);
        if changed {
            catalog_file::store(&dir, catalog.doc())?;
        }
        let local = Local {
            clock,
            catalog: ArcSwap::from_pointee(catalog),
            catalog_gen: AtomicU64::new(1),
            shards,
            counters,
            records,
            admin: Mutex::new(AdminState {
                key_count,
                tier_use,
            }),
            key_count: AtomicU64::new(u64::from(key_count)),
            digest: keyfmt::FastDigest::random()
                .map_err(|e| StoreError::invalid(format!("OS random source failed: {e}")))?,
            data_dir: dir,
            sync_records: opts.sync_records,
            msync_interval: opts.msync_interval,
            last_flush_ns: AtomicU64::new(now),
            prefetch_exclusive: check::has_prefetch_write(),
            _lock: lock,
        };
        Ok(LocalStore {
            inner: Arc::new(local),
        })
    }

    /// The data directory.
    pub fn data_dir(&self) -> &Path {
        &self.inner.data_dir
    }

    /// `msync`s every counter page; bounds what a power loss (not a crash) can cost.
    pub fn flush(&self) -> Result<(), StoreError> {
        self.inner.flush()
    }
}

impl Local {
    /// Puts `catalog` in force: the next check of every shard sees it.
    fn publish_catalog(&self, catalog: Catalog) {
        self.catalog.store(Arc::new(catalog));
        self.catalog_gen.fetch_add(1, Ordering::Release);
    }

    /// Number of keys (live, revoked and expired).
    fn key_count(&self) -> u64 {
        self.key_count.load(Ordering::Relaxed)
    }

    /// `msync`s every counter page; bounds what a power loss (not a crash) can cost.
    fn flush(&self) -> Result<(), StoreError> {
        self.counters.flush_all()?;
        // Record changes are msynced as they are made, unless the store was opened without that.
        if !self.sync_records {
            self.records.flush_all()?;
        }
        self.last_flush_ns
            .store(self.clock.now_ns(), Ordering::Relaxed);
        Ok(())
    }
}

impl Drop for Local {
    fn drop(&mut self) {
        if let Err(e) = self.flush() {
            tracing::error!(error = %e, "final msync failed");
        }
    }
}
