//! Where state lives, behind one seam: the [`Store`] trait. A transport holds a store, asks it
//! to check and to administer keys and tiers, and never knows which one it has.
//!
//! - [`local`]: one node, memory-mapped files in a data directory (the default).
//! - [`redis`]: several nodes sharing Redis or a Redis Cluster.
//!
//! Both decide with the same policy (`crate::engine`): a store authenticates the key against its
//! record, fills an [`admission::KeyView`](crate::engine::admission::KeyView), runs the gate and
//! the limits phase, and saves the counters the policy returns.

pub mod local;
pub mod redis;

use std::collections::{HashMap, HashSet};
use std::future::Future;
use std::ops::ControlFlow;
use std::sync::Arc;
use std::time::Duration;

use crate::engine::catalog_doc::{CatalogError, RetiredPrefix};
use crate::engine::clock::Clock;
use crate::engine::decision::Decision;
use crate::engine::PolicyError;
use crate::keys::record::{CreatedKey, KeyInfo, KeyUpdate, NewKey, Reset, Usage};
use crate::keys::KeyId;
use crate::tiers::{CountBy, TierSpec};

pub use self::local::{DataDirError, LocalOptions, LocalStore};
pub use self::redis::{RedisOptions, RedisStore};

/// One check as a transport asks it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CheckRequest<'a> {
    /// The raw API key (`None`: none was presented).
    pub key: Option<&'a str>,
    /// The scope the route needs (`None`: any key may call it).
    pub scope: Option<&'a str>,
    /// Requests this call counts as, 1 to [`crate::engine::MAX_COST`] (larger values are
    /// clamped; transports refuse them first).
    pub cost: u64,
}

/// Who an admitted check was: lent by [`Store::check`] for the answer's identity fields.
#[derive(Debug, Clone, Copy)]
pub struct Identity<'a> {
    /// The key's id.
    pub id: KeyId,
    /// The key's consumer.
    pub consumer: &'a str,
    /// The name of the key's tier.
    pub tier: &'a str,
}

/// A filter and page of [`Store::list_keys`].
#[derive(Debug, Clone, Copy, Default)]
pub struct KeyQuery<'a> {
    /// Only keys of this consumer.
    pub consumer: Option<&'a str>,
    /// Only keys on this tier.
    pub tier: Option<&'a str>,
    /// Start after this key id (the previous page's cursor).
    pub after: Option<KeyId>,
    /// At most this many keys.
    pub limit: usize,
}

impl KeyQuery<'_> {
    /// Offers `k`, the next key in id order, to the page `out`: added if it passes the filter.
    /// `Break(cursor)` once the page is full and another key passes: the page is complete and
    /// the next one starts after `cursor`.
    pub(crate) fn offer(&self, out: &mut Vec<KeyInfo>, k: KeyInfo) -> ControlFlow<Option<KeyId>> {
        if self.consumer.is_some_and(|c| c != k.consumer) || self.tier.is_some_and(|t| t != k.tier)
        {
            return ControlFlow::Continue(());
        }
        if out.len() == self.limit {
            return ControlFlow::Break(out.last().map(|k| k.id));
        }
        out.push(k);
        ControlFlow::Continue(())
    }
}

/// A consumer's keys on one tier, and what they spend ([`Store::consumer_usage`]).
#[derive(Debug, Clone)]
pub struct ConsumerTier {
    /// The tier.
    pub tier: String,
    /// Whether its keys share their consumer's counters.
    pub count_by: CountBy,
    /// The consumer's keys on it, in id order.
    pub keys: Vec<KeyId>,
    /// On a tier counting by consumer, the usage the keys share (else each key has its own).
    pub usage: Option<Usage>,
}

/// One gauge or counter a store adds to `/metrics`.
#[derive(Debug, Clone)]
pub struct Gauge {
    /// Metric name.
    pub name: &'static str,
    /// `gauge` or `counter`.
    pub kind: &'static str,
    /// Help text.
    pub help: &'static str,
    /// The value, formatted.
    pub value: String,
}

/// What a store says of itself on `/health`.
#[derive(Debug, Clone)]
pub struct Health {
    /// Whether it can decide checks (false: Redis unreachable; the answer is 503).
    pub ok: bool,
    /// Store-specific fields of the health document (`keys`, `persistence`, ...).
    pub fields: serde_json::Map<String, serde_json::Value>,
}

/// A failed store operation. Denials are not errors: they are [`Decision`]s.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// No key with that id.
    #[error("unknown key id")]
    UnknownKey,
    /// A change the policy refuses (bad argument, unknown tier, tier in use, bad catalog).
    #[error(transparent)]
    Policy(#[from] PolicyError),
    /// A fault in the data directory (the local store); it names the file.
    #[error(transparent)]
    DataDir(#[from] DataDirError),
    /// The shared store (Redis) could not be reached.
    #[error("store unavailable: {0}")]
    Unavailable(String),
}

impl StoreError {
    /// A bad argument.
    pub fn invalid(message: impl Into<String>) -> Self {
        StoreError::Policy(PolicyError::Invalid(message.into()))
    }

    /// A stable code for transports: `not_found`, `bad_request`, `conflict`,
    /// `insufficient_storage` (the data directory's disk is full), `storage` or `unavailable`.
    pub fn code(&self) -> &'static str {
        match self {
            StoreError::UnknownKey
            | StoreError::Policy(PolicyError::UnknownTier(_) | PolicyError::UnknownPrefix(_)) => {
                "not_found"
            }
            StoreError::Policy(PolicyError::TierInUse { .. } | PolicyError::Conflict(_)) => {
                "conflict"
            }
            StoreError::Policy(PolicyError::Invalid(_) | PolicyError::Catalog(_)) => "bad_request",
            StoreError::DataDir(DataDirError::NoSpace { .. }) => "insufficient_storage",
            StoreError::DataDir(_) => "storage",
            StoreError::Unavailable(_) => "unavailable",
        }
    }
}

impl From<CatalogError> for StoreError {
    fn from(e: CatalogError) -> Self {
        StoreError::Policy(PolicyError::Catalog(e))
    }
}

/// Keys, tiers and counters: what every transport asks. Implemented by [`LocalStore`] and
/// [`RedisStore`]; one behaviour suite (`tests/engine.rs`) runs against both.
pub trait Store: Send + Sync + 'static {
    /// The store's clock.
    fn clock(&self) -> &Arc<dyn Clock>;

    /// Decides one check and returns what `finish` makes of the decision, which it is given
    /// where it was made (`|d| *d` for a copy). A denied check consumes nothing. With
    /// `identity`, an admitted check lends the key's identity to it first (denials do not call
    /// it); without, the store does not read it.
    fn check<R: Send>(
        &self,
        req: CheckRequest<'_>,
        identity: Option<&mut (dyn FnMut(Identity<'_>) + Send)>,
        finish: impl FnOnce(&Decision) -> R + Send,
    ) -> impl Future<Output = R> + Send;

    /// Decides checks that arrived together, in order, calling `each(i, decision)` for the
    /// `i`-th. Each is decided as [`Store::check`] would; a batch is not atomic.
    fn check_batch(
        &self,
        reqs: &[CheckRequest<'_>],
        each: &mut (dyn FnMut(usize, &Decision) + Send),
    ) -> impl Future<Output = ()> + Send;

    /// Creates keys; each is durable before this returns. The raw keys are in the result and
    /// nowhere else.
    fn create_keys(
        &self,
        news: Vec<NewKey>,
    ) -> impl Future<Output = Result<Vec<CreatedKey>, StoreError>> + Send;

    /// Creates one key.
    fn create_key(
        &self,
        new: NewKey,
    ) -> impl Future<Output = Result<CreatedKey, StoreError>> + Send {
        async move {
            self.create_keys(vec![new])
                .await?
                .pop()
                .ok_or_else(|| StoreError::invalid("no key created"))
        }
    }

    /// The record of one key.
    fn key(&self, id: KeyId) -> impl Future<Output = Result<KeyInfo, StoreError>> + Send;

    /// A page of keys in id order, and the cursor of the next page (`None`: the last page).
    fn list_keys(
        &self,
        query: KeyQuery<'_>,
    ) -> impl Future<Output = Result<(Vec<KeyInfo>, Option<KeyId>), StoreError>> + Send;

    /// Changes tier, scopes, expiry, quota override or name; in force from the next check.
    fn update_key(
        &self,
        id: KeyId,
        upd: KeyUpdate,
    ) -> impl Future<Output = Result<KeyInfo, StoreError>> + Send;

    /// Revokes a key: its next check is 401.
    fn revoke_key(&self, id: KeyId) -> impl Future<Output = Result<KeyInfo, StoreError>> + Send;

    /// Deletes a key: its next check is 401 (`unknown`), it is listed nowhere, its usage is
    /// gone, and its storage is reused by a later creation.
    fn delete_key(&self, id: KeyId) -> impl Future<Output = Result<(), StoreError>> + Send;

    /// Gives a key a new secret; the old one works `grace_secs` more seconds. Usage is kept.
    fn rotate_key(
        &self,
        id: KeyId,
        grace_secs: u64,
    ) -> impl Future<Output = Result<CreatedKey, StoreError>> + Send;

    /// A key's live usage (nothing is consumed).
    fn usage(&self, id: KeyId) -> impl Future<Output = Result<Usage, StoreError>> + Send;

    /// Sets key `id`'s counters back as `what` says: its burst windows to full, its month's
    /// usage to 0. Durable before it returns (as an admin change). The usage before and after.
    fn reset_counters(
        &self,
        id: KeyId,
        what: Reset,
    ) -> impl Future<Output = Result<(Usage, Usage), StoreError>> + Send;

    /// Resets the counters of every key of `consumer` (as [`Store::reset_counters`]): each key
    /// with its usage before and after, in [`Store::list_keys`] order. Keys sharing their
    /// consumer's counters (a tier counting by consumer) reset them once and all report that.
    fn reset_consumer(
        &self,
        consumer: &str,
        what: Reset,
    ) -> impl Future<Output = Result<Vec<(KeyInfo, Usage, Usage)>, StoreError>> + Send {
        async move {
            let shared = self.shared_tiers();
            let mut groups: HashMap<String, (Usage, Usage)> = HashMap::new();
            let mut out = Vec::new();
            for k in self.consumer_keys(consumer).await? {
                if let Some((before, now)) = groups.get(&k.tier) {
                    let pair = (before.clone(), now.clone());
                    out.push((k, pair.0, pair.1));
                    continue;
                }
                match self.reset_counters(k.id, what).await {
                    Ok((before, now)) => {
                        if shared.contains(&k.tier) {
                            groups.insert(k.tier.clone(), (before.clone(), now.clone()));
                        }
                        out.push((k, before, now));
                    }
                    // Deleted meanwhile: nothing left to reset.
                    Err(StoreError::UnknownKey) => {}
                    Err(e) => return Err(e),
                }
            }
            Ok(out)
        }
    }

    /// Every key of `consumer`, in [`Store::list_keys`] order.
    fn consumer_keys(
        &self,
        consumer: &str,
    ) -> impl Future<Output = Result<Vec<KeyInfo>, StoreError>> + Send {
        async move {
            let mut out = Vec::new();
            let mut after = None;
            loop {
                let (page, next) = self
                    .list_keys(KeyQuery {
                        consumer: Some(consumer),
                        tier: None,
                        after,
                        limit: 500,
                    })
                    .await?;
                out.extend(page);
                match next {
                    Some(n) => after = Some(n),
                    None => return Ok(out),
                }
            }
        }
    }

    /// The names of the tiers counting by consumer.
    fn shared_tiers(&self) -> HashSet<String> {
        self.tiers()
            .into_iter()
            .filter(|t| t.count_by == CountBy::Consumer)
            .map(|t| t.name)
            .collect()
    }

    /// What `consumer` spends, per tier it has keys on: on a tier counting by consumer, the
    /// usage its keys share; on a tier counting by key, only the keys (each has its own usage).
    /// Empty when the consumer has no keys.
    fn consumer_usage(
        &self,
        consumer: &str,
    ) -> impl Future<Output = Result<Vec<ConsumerTier>, StoreError>> + Send {
        async move {
            let shared = self.shared_tiers();
            let mut out: Vec<ConsumerTier> = Vec::new();
            for k in self.consumer_keys(consumer).await? {
                match out.iter_mut().find(|t| t.tier == k.tier) {
                    Some(t) => t.keys.push(k.id),
                    None => out.push(ConsumerTier {
                        count_by: if shared.contains(&k.tier) {
                            CountBy::Consumer
                        } else {
                            CountBy::Key
                        },
                        tier: k.tier,
                        keys: vec![k.id],
                        usage: None,
                    }),
                }
            }
            for t in &mut out {
                if t.count_by == CountBy::Consumer {
                    // Any key of the group reads the group's counters.
                    for id in t.keys.clone() {
                        match self.usage(id).await {
                            Ok(u) => {
                                t.usage = Some(u);
                                break;
                            }
                            Err(StoreError::UnknownKey) => continue,
                            Err(e) => return Err(e),
                        }
                    }
                }
            }
            Ok(out)
        }
    }

    /// Number of keys (live, revoked and expired).
    fn key_count(&self) -> impl Future<Output = Result<u64, StoreError>> + Send;

    /// Every tier in force.
    fn tiers(&self) -> Vec<TierSpec>;

    /// The index and name of every tier in force (a decision names its tier by index).
    fn tier_names(&self) -> Vec<(u16, String)>;

    /// Key prefixes being retired, each with its sunset.
    fn retired_prefixes(&self) -> Vec<RetiredPrefix>;

    /// The retired prefix `raw` starts with, if any (the longest).
    fn retired_prefix(&self, raw: &str) -> Option<RetiredPrefix>;

    /// Retires key `prefix`: its keys work until `sunset_at` (Unix seconds), announced, then are
    /// refused. Again for a retired prefix: moves its sunset.
    fn retire_prefix(
        &self,
        prefix: String,
        sunset_at: u64,
    ) -> impl Future<Output = Result<RetiredPrefix, StoreError>> + Send;

    /// Takes `prefix` off the retired list.
    fn restore_prefix(&self, prefix: String)
        -> impl Future<Output = Result<(), StoreError>> + Send;

    /// Keys on each tier by tier index (live, revoked and expired, as [`Store::key_count`]), as
    /// this node last knew them: no I/O (the Redis store reads them at each upkeep).
    fn tier_keys(&self) -> Vec<(u16, u64)>;

    /// Creates or replaces a tier; counters are kept.
    fn put_tier(&self, spec: TierSpec)
        -> impl Future<Output = Result<TierSpec, StoreError>> + Send;

    /// Deletes a tier no key uses.
    fn delete_tier(&self, name: String) -> impl Future<Output = Result<(), StoreError>> + Send;

    /// Replaces the whole set of tiers (a tiers file); deleting one that keys use is refused.
    fn apply_tiers(
        &self,
        specs: Vec<TierSpec>,
    ) -> impl Future<Output = Result<(), StoreError>> + Send;

    /// How often [`Store::upkeep`] should run.
    fn upkeep_interval(&self) -> Duration;

    /// Periodic upkeep (the local store msyncs its counters; the Redis store polls the catalog
    /// and gives back expired leases). With `last`, at shutdown once no check runs any more.
    fn upkeep(&self, last: bool) -> impl Future<Output = Result<(), StoreError>> + Send;

    /// Work the store does beside the checks for as long as the node serves (the Redis store in
    /// lease mode tops up leases that run low), until [`Store::stop_background`]; it returns
    /// once that work is settled. None by default.
    fn background(&self) -> impl Future<Output = ()> + Send {
        async {}
    }

    /// Ends [`Store::background`].
    fn stop_background(&self) {}

    /// The store's part of `/health`.
    fn health(&self) -> impl Future<Output = Health> + Send;

    /// The store's gauges and counters for `/metrics`.
    fn gauges(&self) -> Vec<Gauge>;
}
