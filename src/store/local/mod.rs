//! The local store: one node's keys, tiers and counters in memory-mapped files.
//!
//! - `datadir`: the directory and its lock; `arena`: segment files of fixed slots, laid out
//!   by `layout`; `catalog_file`: `catalog.json`.
//! - `acks`: what was acknowledged (per key, the record sequence; the key count; the catalog
//!   generation; whether the last process closed cleanly).
//! - `load`, `load_counters`: opening and checking a data directory; `recovery`: what the checks found, the
//!   repairs, [`inspect`] and [`repair`].
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

mod acks;
mod arena;
pub(crate) mod catalog_file;
mod check;
mod datadir;
mod groups;
mod layout;
mod load;
mod load_counters;
mod recovery;
mod registry;
mod repair;
mod reset;
mod service;
mod shards;

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use arc_swap::ArcSwap;
use parking_lot::Mutex;

use self::acks::{Acks, HeaderWord};
use self::arena::{Arena, ArenaKind};
use self::datadir::DirLock;
use self::layout::{CounterHalf, RecordHalf, COUNTERS_MAGIC, KEYS_MAGIC};
use self::shards::{HotEntry, Shards};
use crate::engine::catalog::Catalog;
use crate::engine::catalog_doc::{self, CatalogDoc};
use crate::engine::clock::{Clock, NANOS_PER_SEC};
use crate::engine::key_rules::random_u64;
use crate::keys::format as keyfmt;
use crate::keys::KeyId;
use crate::store::StoreError;
use crate::tiers::{self, TierSpec};

pub use self::datadir::{DataDirError, Modes};
pub use self::recovery::Finding;
pub use self::repair::{inspect, repair, InspectReport};

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
    /// Permissions of the directory and its files (owner only by default).
    pub modes: Modes,
    /// Every tier in shadow mode, whatever its `enforce` says (`quotad serve --shadow`).
    pub shadow: bool,
}

impl LocalOptions {
    /// Defaults for `data_dir`: records synced, counters msynced every second.
    pub fn new(data_dir: impl Into<PathBuf>) -> Self {
        LocalOptions {
            data_dir: data_dir.into(),
            tiers: None,
            sync_records: true,
            msync_interval: Duration::from_secs(1),
            modes: Modes::PRIVATE,
            shadow: false,
        }
    }
}

/// What the admin mutex guards.
struct AdminState {
    key_count: u32,
    /// Generation of the catalog in force (as written in `catalog.json` and acknowledged).
    generation: u32,
    /// Slots of deleted keys, reused by the next creations.
    free: Vec<u32>,
    /// Consumer groups' record slots (tiers counting by consumer).
    groups: groups::Groups,
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
    acks: Acks,
    admin: Mutex<AdminState>,
    /// Keys per tier index. Changed under the admin lock; read without it by `/metrics`, which
    /// a long admin change (a bulk import) must not hold up.
    tier_use: Mutex<Vec<u64>>,
    /// Slots in use (live, revoked, expired or deleted): a check's bound.
    key_count: AtomicU64,
    /// Deleted keys among them.
    deleted: AtomicU64,
    /// Consumer groups' records among them.
    groups: AtomicU64,
    /// The counters generation last stamped (bumped by every flush; see `acks::stamp_segment`).
    counters_generation: std::sync::atomic::AtomicU32,
    digest: keyfmt::FastDigest,
    data_dir: PathBuf,
    sync_records: bool,
    msync_interval: Duration,
    /// Every tier in shadow mode ([`LocalOptions::shadow`]).
    shadow: bool,
    /// Imported secrets by digest: an imported key does not name its id. Written under the
    /// admin lock.
    imported: parking_lot::RwLock<ImportIndex>,
    last_flush_ns: AtomicU64,
    /// Whether this CPU has `prefetchw` (see `check::prefetch_write`).
    prefetch_exclusive: bool,
    lock: DirLock,
}

/// Imported secrets' digests and their keys.
type ImportIndex = std::collections::HashMap<[u8; 32], KeyId, foldhash::fast::RandomState>;

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
        group: 0,
    }
}

impl LocalStore {
    /// Opens (or creates) the data directory and loads every key.
    ///
    /// Refuses to start, naming the file (and slot) and the fault, on any damaged, truncated,
    /// missing or foreign file whose recovery would lose something acknowledged; nothing is
    /// written in that case. Torn writes of a killed process are repaired, with a WARN line.
    pub fn open(opts: LocalOptions, clock: Arc<dyn Clock>) -> Result<Self, StoreError> {
        let dir = opts.data_dir.clone();
        let lock = DirLock::acquire(&dir, opts.modes)?;
        let (stored, fresh) = match catalog_file::load(&dir)? {
            Some(stored) => (stored, false),
            None => {
                for stray in [
                    Arena::segment_path(&dir, &KEYS, 0),
                    Arena::segment_path(&dir, &COUNTERS, 0),
                    Acks::first_path(&dir),
                ] {
                    if stray.exists() {
                        return Err(DataDirError::corrupt(
                            dir.join(catalog_file::CATALOG_FILE),
                            format!("missing, but {} exists", stray.display()),
                        )
                        .into());
                    }
                }
                let doc = CatalogDoc::new(random_u64()?, tiers::builtin_tiers());
                // The catalog first: a directory with a catalog and no acks file is new.
                catalog_file::store(&dir, &doc, 0, lock.file_mode())?;
                let stored = catalog_file::StoredCatalog {
                    doc,
                    version: catalog_file::CATALOG_VERSION,
                    generation: 0,
                };
                (stored, true)
            }
        };
        let legacy = stored.version == 1;
        let now = clock.now_ns();
        let loaded = load::load(&dir, stored, now, Some(lock.file_mode()))?;
        if let Some(e) = recovery::refusal(&dir, &loaded.findings) {
            return Err(e);
        }
        if let Some((stored, clock_month)) = loaded.month_ahead {
            tracing::warn!(
                stored_month = %month_name(stored),
                clock_month = %month_name(clock_month),
                "counters were written in a later month than the clock's: the clock is behind; \
                 usage is kept under the later month until the clock reaches it"
            );
        }
        // Everything checked: only now touch the files.
        repair::settle(&loaded)?;
        let load::Loaded {
            records,
            counters,
            acks,
            shards,
            catalog: stored,
            mut tier_use,
            key_count,
            generation,
            free,
            imported,
            group_slots,
            counters_generation,
            ..
        } = loaded;
        let mut generation = generation;
        let (catalog, changed) = match opts.tiers {
            None => (stored, legacy && !fresh),
            Some(new_tiers) => {
                let mut doc = stored.doc().clone();
                catalog_doc::replace_tiers(&mut doc, &tier_use, new_tiers)?;
                let changed = legacy || doc != *stored.doc();
                (Catalog::compile(doc)?, changed)
            }
        };
        tier_use.resize(catalog.doc().tiers.len(), 0);
        if changed {
            generation += 1;
            catalog_file::store(&dir, catalog.doc(), generation, lock.file_mode())?;
            acks.set_header(HeaderWord::CatalogGeneration, generation);
            acks.flush_header()?;
        }
        let local = Local {
            clock,
            catalog: ArcSwap::from_pointee(catalog),
            catalog_gen: AtomicU64::new(1),
            shards,
            counters,
            records,
            acks,
            admin: Mutex::new(AdminState {
                key_count,
                generation,
                free: free.clone(),
                groups: Default::default(),
            }),
            tier_use: Mutex::new(tier_use),
            deleted: AtomicU64::new(free.len() as u64),
            groups: AtomicU64::new(0),
            counters_generation: std::sync::atomic::AtomicU32::new(counters_generation),
            key_count: AtomicU64::new(u64::from(key_count)),
            digest: keyfmt::FastDigest::random()
                .map_err(|e| StoreError::invalid(format!("OS random source failed: {e}")))?,
            data_dir: dir,
            sync_records: opts.sync_records,
            msync_interval: opts.msync_interval,
            shadow: opts.shadow,
            imported: parking_lot::RwLock::new(imported.into_iter().collect()),
            last_flush_ns: AtomicU64::new(now),
            prefetch_exclusive: check::has_prefetch_write(),
            lock,
        };
        local.attach_groups(&group_slots)?;
        Ok(LocalStore {
            inner: Arc::new(local),
        })
    }

    /// The data directory.
    pub fn data_dir(&self) -> &Path {
        &self.inner.data_dir
    }

    /// Keys on each tier in force, by tier index.
    fn keys_per_tier(&self) -> Vec<(u16, u64)> {
        let cat = self.inner.catalog.load();
        let use_ = self.inner.tier_use.lock();
        cat.tiers()
            .map(|(ix, _)| {
                let n = use_.get(usize::from(ix)).copied().unwrap_or(0);
                (ix, n)
            })
            .collect()
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

    /// Number of slots in use (keys live, revoked, expired or deleted).
    fn key_count(&self) -> u64 {
        self.key_count.load(Ordering::Relaxed)
    }

    /// Number of keys (live, revoked and expired; not deleted, not consumer groups).
    fn live_keys(&self) -> u64 {
        self.key_count()
            .saturating_sub(self.deleted.load(Ordering::Relaxed))
            .saturating_sub(self.groups.load(Ordering::Relaxed))
    }

    /// `msync`s every counter page; bounds what a power loss (not a crash) can cost. Keys used
    /// for the first time since the last flush are then marked used in their ack words, so that
    /// a zeroed counter slot of a used key is recognised as damage.
    fn flush(&self) -> Result<(), StoreError> {
        let (first_uses, written) = self.shards.take_changes();
        self.counters.flush_all()?;
        // The counters as of now are durable: if checks changed them, stamp a new generation
        // into every counters file, then acknowledge it (an older copy of a counters file is
        // then recognised at start-up). An idle store writes nothing.
        if written {
            let generation = self.counters_generation.fetch_add(1, Ordering::Relaxed) + 1;
            for n in 0..self.counters.segment_count() {
                acks::stamp_segment(&self.counters, n, generation);
                self.counters.flush_header_of(n)?;
            }
            self.acks
                .set_header(HeaderWord::CountersGeneration, generation);
            self.acks.flush_header()?;
        }
        // Record changes are msynced as they are made, unless the store was opened without that.
        if !self.sync_records {
            self.records.flush_all()?;
        }
        if !first_uses.is_empty() {
            let _admin = self.admin.lock();
            for &slot in &first_uses {
                if let acks::Ack::Valid { seq, used: false } = self.acks.get(slot) {
                    self.acks.set(slot, seq, true);
                }
            }
            let (lo, hi) = first_uses
                .iter()
                .fold((u32::MAX, 0), |(lo, hi), &s| (lo.min(s), hi.max(s)));
            self.acks.flush(lo, hi)?;
        }
        self.last_flush_ns
            .store(self.clock.now_ns(), Ordering::Relaxed);
        Ok(())
    }
}

impl Drop for Local {
    fn drop(&mut self) {
        match self.flush() {
            Ok(()) => {
                // Everything is on disk: the next start-up may treat any checksum failure as
                // damage rather than a torn write.
                self.acks.set_header(HeaderWord::Clean, 1);
                if let Err(e) = self.acks.flush_header() {
                    tracing::error!(error = %e, "cannot mark the data directory closed cleanly");
                }
            }
            Err(e) => tracing::error!(error = %e, "final msync failed"),
        }
    }
}

/// `YYYY-MM` of a month id.
fn month_name(id: u32) -> String {
    format!("{}-{:02}", id / 12, id % 12 + 1)
}
