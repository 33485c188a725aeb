//! The shared store: keys, tiers and counters in Redis (one server, `redis://`, or a Redis
//! Cluster, `redis-cluster://`), so that several quotad nodes enforce one set of limits.
//!
//! - **Keys**: one hash per key ([`record`]) holding the record and its counters under one hash
//!   tag, so one check is one `EVALSHA` of [`scripts::CHECK`] on one master.
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

pub mod record;
pub mod scripts;

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use arc_swap::ArcSwap;
use dashmap::DashMap;
use redis::aio::ConnectionLike;
use redis::cluster_routing::{Route, RoutingInfo, SingleNodeRoutingInfo, SlotAddr};
use redis::{Cmd, RedisFuture, Script, Value};
use subtle::ConstantTimeEq;

use crate::engine::bucket::{reexpress, Limit};
use crate::engine::catalog::{Catalog, CatalogError, CompiledTier};
use crate::engine::clock::{Clock, NANOS_PER_SEC};
use crate::engine::decision::{AuthFailure, Decision, Verdict};
use crate::engine::month::MonthWindow;
use crate::engine::{self, spend, EngineError, MAX_COST};
use crate::keys::format as keyfmt;
use crate::keys::record::{CreatedKey, KeyInfo, KeyUpdate, NewKey, Usage};
use crate::keys::KeyId;
use crate::store::catalog_file::CatalogDoc;
use crate::tiers::{self, TierSpec, MAX_LIMITS};

use self::record::Rec;

/// A cached record older than this is re-read before a denial decided from it.
pub const RECORD_RECHECK: Duration = Duration::from_secs(1);

/// How checks use Redis.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// Every check is one script call: never more than the limits, across any number of nodes.
    Exact,
    /// A node takes up to `size` tokens at once and spends them locally for at most `ttl`.
    Lease {
        /// Most tokens one lease takes.
        size: u64,
        /// How long a node may spend a lease before giving back the rest.
        ttl: Duration,
    },
}

/// What a check does when Redis cannot be reached.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FailPolicy {
    /// Deny with `unavailable` (HTTP 503).
    Closed,
    /// Admit keys this node has authenticated before (counted in `quotad_store_fail_open_total`).
    Open,
}

/// How to reach Redis and behave on it.
#[derive(Debug, Clone)]
pub struct RedisOptions {
    /// `redis://HOST:PORT` or `redis-cluster://HOST:PORT,HOST:PORT,…`.
    pub url: String,
    /// Key-name prefix, so that several deployments can share one Redis.
    pub namespace: String,
    /// Exact or lease.
    pub mode: Mode,
    /// Fail closed or open.
    pub fail: FailPolicy,
    /// Timeout of one Redis call.
    pub timeout: Duration,
    /// How often the catalog revision is polled (and Redis's reachability probed).
    pub poll: Duration,
    /// Tiers to put in force at start-up (a tiers file), replacing the stored ones.
    pub tiers: Option<Vec<TierSpec>>,
    /// Replicas that must acknowledge an admin change (key or tier) before the call returns
    /// (Redis `WAIT`); 0 = none. Default: 1 on a cluster, 0 on one server.
    pub replica_acks: u32,
    /// How long an admin change waits for those acknowledgements. If they do not come, the
    /// change stands on the master, the call succeeds, and the shortfall is logged and counted
    /// in `quotad_store_unreplicated_changes_total`.
    pub replica_wait: Duration,
}

impl RedisOptions {
    /// Defaults for `url`: namespace `quotad`, exact, fail-closed, 500 ms timeout, 250 ms poll;
    /// on a cluster, admin changes wait up to 1 s for one replica.
    pub fn new(url: impl Into<String>) -> Self {
        let url: String = url.into();
        let replica_acks = u32::from(url.starts_with("redis-cluster://"));
        RedisOptions {
            url,
            namespace: "quotad".into(),
            mode: Mode::Exact,
            fail: FailPolicy::Closed,
            timeout: Duration::from_millis(500),
            poll: Duration::from_millis(250),
            tiers: None,
            replica_acks,
            replica_wait: Duration::from_secs(1),
        }
    }

    /// How long a call on the admin connection may take: its own timeout, plus the wait for
    /// replicas that it (a `WAIT`) or an admin call queued before it (on the same connection)
    /// may spend.
    fn admin_within(&self) -> Duration {
        if self.replica_acks > 0 {
            self.timeout + self.replica_wait
        } else {
            self.timeout
        }
    }
}

/// A connection to one Redis server (reconnecting) or to a cluster (following slot moves and
/// failovers). Both multiplex: clones share one socket per server, and concurrent calls pipeline.
#[derive(Clone)]
enum Conn {
    Single(redis::aio::ConnectionManager),
    Cluster(redis::cluster_async::ClusterConnection),
}

impl ConnectionLike for Conn {
    fn req_packed_command<'a>(&'a mut self, cmd: &'a Cmd) -> RedisFuture<'a, Value> {
        match self {
            Conn::Single(c) => c.req_packed_command(cmd),
            Conn::Cluster(c) => c.req_packed_command(cmd),
        }
    }

    fn req_packed_commands<'a>(
        &'a mut self,
        pipeline: &'a redis::Pipeline,
        offset: usize,
        count: usize,
    ) -> RedisFuture<'a, Vec<Value>> {
        match self {
            Conn::Single(c) => c.req_packed_commands(pipeline, offset, count),
            Conn::Cluster(c) => c.req_packed_commands(pipeline, offset, count),
        }
    }

    fn get_db(&self) -> i64 {
        0
    }
}

/// A failed Redis call.
#[derive(Debug, thiserror::Error)]
pub enum RedisError {
    /// Redis answered with an error or the connection failed.
    #[error("redis: {0}")]
    Redis(#[from] redis::RedisError),
    /// No answer within the timeout.
    #[error("redis: no answer within {0:?}")]
    Timeout(Duration),
    /// A reply of the wrong shape.
    #[error("redis: unexpected reply: {0}")]
    Reply(String),
}

impl From<RedisError> for EngineError {
    fn from(e: RedisError) -> Self {
        EngineError::Unavailable(e.to_string())
    }
}

/// Tokens a node holds for one key (lease mode).
#[derive(Debug, Clone, Copy)]
struct Lease {
    /// Tokens not yet spent.
    left: u64,
    /// The month they were taken in (they are never spent in another).
    month: u32,
    /// Spend-by instant, ns.
    until_ns: u64,
    /// The tier whose limits they were taken under.
    tier: u16,
    version: u16,
    /// The decision at the grant, figures counting the whole lease as still available.
    template: Decision,
    /// Tokens spent from it so far (subtracted from the template's figures).
    spent: u64,
}

/// What a node keeps of one key.
#[derive(Debug, Clone)]
struct Cached {
    rec: Arc<Rec>,
    fetched_ns: u64,
    /// Fast digest of the raw key last verified against `rec.hash` (0 = none).
    fast: u64,
    /// Same, against `rec.hash_prev`.
    fast_prev: u64,
    lease: Option<Lease>,
}

/// Gauges and counters of the store, rendered by `/metrics` and `/health`.
#[derive(Debug, Default)]
pub struct StoreStats {
    reachable: AtomicBool,
    /// Last successful Redis call, ns since 1970.
    last_ok_ns: AtomicU64,
    errors: AtomicU64,
    fail_open: AtomicU64,
    stale_records: AtomicU64,
    leases_taken: AtomicU64,
    leases_returned_tokens: AtomicU64,
    local_spends: AtomicU64,
    unreplicated: AtomicU64,
}

impl StoreStats {
    /// Whether the last Redis call succeeded.
    pub fn reachable(&self) -> bool {
        self.reachable.load(Ordering::Relaxed)
    }
    /// When a Redis call last succeeded, ns since 1970 (0 = never).
    pub fn last_ok_ns(&self) -> u64 {
        self.last_ok_ns.load(Ordering::Relaxed)
    }
    /// Failed Redis calls.
    pub fn errors(&self) -> u64 {
        self.errors.load(Ordering::Relaxed)
    }
    /// Checks admitted by the fail-open policy.
    pub fn fail_open(&self) -> u64 {
        self.fail_open.load(Ordering::Relaxed)
    }
    /// Checks that found this node's copy of the record stale.
    pub fn stale_records(&self) -> u64 {
        self.stale_records.load(Ordering::Relaxed)
    }
    /// Leases taken (lease mode).
    pub fn leases_taken(&self) -> u64 {
        self.leases_taken.load(Ordering::Relaxed)
    }
    /// Unspent lease tokens given back.
    pub fn leases_returned_tokens(&self) -> u64 {
        self.leases_returned_tokens.load(Ordering::Relaxed)
    }
    /// Checks answered from a lease, without a Redis call.
    pub fn local_spends(&self) -> u64 {
        self.local_spends.load(Ordering::Relaxed)
    }
    /// Admin changes that returned before the wanted replicas acknowledged them.
    pub fn unreplicated(&self) -> u64 {
        self.unreplicated.load(Ordering::Relaxed)
    }
}

/// The Redis store. Every method takes `&self`; share it behind an `Arc`.
pub struct RedisStore {
    /// Checks and reads.
    conn: Conn,
    /// Admin writes and their `WAIT` (a `WAIT` holds its connection until the replicas answer,
    /// so it must not share one with checks). The same as `conn` when no replica is waited for.
    admin: Conn,
    opts: RedisOptions,
    clock: Arc<dyn Clock>,
    catalog: ArcSwap<(u64, Catalog)>,
    cache: DashMap<u64, Cached>,
    /// Keys this node holds a lease on (lease mode), so that expiry sweeps visit only them.
    leased: parking_lot::Mutex<std::collections::HashSet<u64>>,
    digest: keyfmt::FastDigest,
    stats: StoreStats,
    check: Script,
    give_back: Script,
    update: Script,
    put_catalog: Script,
}

impl std::fmt::Debug for RedisStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedisStore")
            .field("url", &self.opts.url)
            .field("mode", &self.opts.mode)
            .finish()
    }
}

enum Outcome {
    Missing,
    Stale,
    State {
        granted: u64,
        used: u64,
        tat: [u64; MAX_LIMITS],
    },
}

/// Awaits `f` for at most `within`.
async fn within_timeout<T>(
    within: Duration,
    f: impl std::future::Future<Output = redis::RedisResult<T>>,
) -> Result<T, RedisError> {
    match tokio::time::timeout(within, f).await {
        Ok(r) => r.map_err(RedisError::Redis),
        Err(_) => Err(RedisError::Timeout(within)),
    }
}

fn int(v: &Value) -> Option<i64> {
    match v {
        Value::Int(i) => Some(*i),
        Value::BulkString(b) => std::str::from_utf8(b).ok()?.parse().ok(),
        Value::SimpleString(s) => s.parse().ok(),
        _ => None,
    }
}

impl RedisStore {
    /// Connects, loads (or initializes) the catalog, and starts nothing: call
    /// [`crate::backend::Backend::upkeep`] periodically to poll the catalog and expire leases.
    pub async fn connect(opts: RedisOptions, clock: Arc<dyn Clock>) -> Result<Self, EngineError> {
        let conn = Self::open(&opts, opts.timeout).await?;
        let admin = if opts.replica_acks > 0 {
            Self::open(&opts, opts.admin_within()).await?
        } else {
            conn.clone()
        };
        let empty = Catalog::compile(CatalogDoc::new(0, Vec::new()))?;
        let store = RedisStore {
            conn,
            admin,
            clock,
            catalog: ArcSwap::from_pointee((0, empty)),
            cache: DashMap::new(),
            leased: parking_lot::Mutex::new(std::collections::HashSet::new()),
            digest: keyfmt::FastDigest::random()
                .map_err(|e| EngineError::Invalid(format!("OS random source failed: {e}")))?,
            stats: StoreStats::default(),
            check: Script::new(scripts::CHECK),
            give_back: Script::new(scripts::RETURN),
            update: Script::new(scripts::UPDATE_RECORD),
            put_catalog: Script::new(scripts::PUT_CATALOG),
            opts,
        };
        store.init_catalog().await?;
        Ok(store)
    }

    /// One multiplexed connection to the server or cluster of `opts.url`, whose replies may take
    /// up to `reply_within`.
    async fn open(opts: &RedisOptions, reply_within: Duration) -> Result<Conn, EngineError> {
        let bad = |m: String| EngineError::Invalid(format!("--store {}: {m}", opts.url));
        let down = |m: String| EngineError::Unavailable(format!("{}: {m}", opts.url));
        Ok(
            if let Some(rest) = opts.url.strip_prefix("redis-cluster://") {
                let nodes: Vec<String> = rest
                    .split(',')
                    .filter(|s| !s.is_empty())
                    .map(|n| format!("redis://{n}"))
                    .collect();
                if nodes.is_empty() {
                    return Err(bad("no cluster node given".into()));
                }
                let client = redis::cluster::ClusterClientBuilder::new(nodes)
                    .connection_timeout(opts.timeout)
                    .response_timeout(reply_within)
                    .retries(2)
                    .min_retry_wait(10)
                    .max_retry_wait(200)
                    .build()
                    .map_err(|e| bad(e.to_string()))?;
                let c = tokio::time::timeout(opts.timeout * 4, client.get_async_connection())
                    .await
                    .map_err(|_| down("no cluster node answered".into()))?
                    .map_err(|e| down(e.to_string()))?;
                Conn::Cluster(c)
            } else if opts.url.starts_with("redis://") {
                let client =
                    redis::Client::open(opts.url.as_str()).map_err(|e| bad(e.to_string()))?;
                let cfg = redis::aio::ConnectionManagerConfig::new()
                    .set_connection_timeout(Some(opts.timeout))
                    .set_response_timeout(Some(reply_within))
                    .set_number_of_retries(1)
                    .set_max_delay(Duration::from_millis(200));
                let c = tokio::time::timeout(
                    opts.timeout * 4,
                    redis::aio::ConnectionManager::new_with_config(client, cfg),
                )
                .await
                .map_err(|_| down("no answer".into()))?
                .map_err(|e| down(e.to_string()))?;
                Conn::Single(c)
            } else {
                return Err(bad(
                    "use redis://HOST:PORT or redis-cluster://HOST:PORT,HOST:PORT".into(),
                ));
            },
        )
    }

    fn k_catalog(&self) -> String {
        format!("{}:{{meta}}:catalog", self.opts.namespace)
    }
    fn k_next(&self) -> String {
        format!("{}:{{meta}}:next", self.opts.namespace)
    }
    fn k_tier_use(&self) -> String {
        format!("{}:{{meta}}:tier_use", self.opts.namespace)
    }
    fn k_key(&self, slot: u32) -> String {
        format!("{}:{{{slot}}}", self.opts.namespace)
    }

    /// Runs one Redis call with the store's timeout, keeping the reachability state.
    async fn call<T, F>(&self, f: F) -> Result<T, RedisError>
    where
        F: std::future::Future<Output = redis::RedisResult<T>>,
    {
        self.call_within(self.opts.timeout, f).await
    }

    /// Runs one write on the admin connection, which may be queued behind another admin call's
    /// wait for replicas: its timeout includes that wait.
    async fn admin_call<T, F>(&self, f: F) -> Result<T, RedisError>
    where
        F: std::future::Future<Output = redis::RedisResult<T>>,
    {
        self.call_within(self.opts.admin_within(), f).await
    }

    async fn call_within<T, F>(&self, within: Duration, f: F) -> Result<T, RedisError>
    where
        F: std::future::Future<Output = redis::RedisResult<T>>,
    {
        let r = within_timeout(within, f).await;
        match &r {
            Ok(_) => {
                self.stats.reachable.store(true, Ordering::Relaxed);
                self.stats
                    .last_ok_ns
                    .store(self.clock.now_ns(), Ordering::Relaxed);
            }
            Err(e) => {
                self.stats.errors.fetch_add(1, Ordering::Relaxed);
                if self.stats.reachable.swap(false, Ordering::Relaxed) {
                    tracing::warn!(error = %e, store = %self.opts.url, "redis unreachable");
                }
            }
        }
        r
    }

    /// Waits until [`RedisOptions::replica_acks`] replicas of the masters holding `keys` have
    /// every admin write made so far (Redis `WAIT` on the admin connection, which made them). A
    /// shortfall leaves the writes in place on the master: it is logged and counted, not failed,
    /// since the change has been made and a retry would make it twice.
    async fn replicated(&self, keys: &[String]) {
        let want = self.opts.replica_acks;
        if want == 0 || keys.is_empty() {
            return;
        }
        let ms = self.opts.replica_wait.as_millis().max(1) as u64;
        let mut wait = redis::cmd("WAIT");
        wait.arg(want).arg(ms);
        let within = self.opts.admin_within();
        let mut keys: Vec<&String> = keys.iter().collect();
        keys.sort();
        keys.dedup();
        let acks: Vec<Result<i64, RedisError>> = match &self.admin {
            // On a cluster, a few keys: ask the masters holding them.
            Conn::Cluster(c) if keys.len() <= 8 => {
                let asks = keys.iter().map(|k| {
                    let mut c = c.clone();
                    let route = RoutingInfo::SingleNode(SingleNodeRoutingInfo::SpecificNode(
                        Route::with_key(k.as_bytes(), SlotAddr::Master),
                    ));
                    let wait = wait.clone();
                    async move {
                        within_timeout(within, async {
                            let v = c.route_command(wait, route).await?;
                            redis::from_redis_value::<i64>(v).map_err(Into::into)
                        })
                        .await
                    }
                });
                futures_util::future::join_all(asks).await
            }
            // One server; or, on a cluster, many keys (a bulk creation): ask every master, which
            // answers with the fewest acknowledgements any of them got.
            conn => {
                let mut c = conn.clone();
                vec![within_timeout(within, wait.query_async::<i64>(&mut c)).await]
            }
        };
        // One change, counted once however many masters fell short.
        let short: Vec<String> = acks
            .into_iter()
            .filter_map(|a| match a {
                Ok(n) if n >= i64::from(want) => None,
                Ok(n) => Some(n.to_string()),
                Err(e) => Some(e.to_string()),
            })
            .collect();
        if !short.is_empty() {
            self.stats.unreplicated.fetch_add(1, Ordering::Relaxed);
            tracing::warn!(
                wanted = want,
                acknowledged = %short.join(", "),
                waited_ms = ms,
                "an admin change is on its master but not yet on a replica: a failover now could undo it"
            );
        }
    }

    async fn init_catalog(&self) -> Result<(), EngineError> {
        for _ in 0..10 {
            let (rev, doc) = self.read_catalog().await?;
            let fresh = doc.is_none();
            let mut doc = match doc {
                Some(d) => d,
                None => CatalogDoc::new(engine::random_u64()?, tiers::builtin_tiers()),
            };
            let before = doc.clone();
            if let Some(t) = self.opts.tiers.clone() {
                let use_ = self.tier_use(&doc).await?;
                engine::replace_tiers(&mut doc, &use_, t)?;
            }
            let compiled = Catalog::compile(doc.clone())?;
            if fresh || doc != before {
                match self.cas_catalog(rev, &doc).await? {
                    Some(nrev) => {
                        self.replicated(&[self.k_catalog()]).await;
                        self.catalog.store(Arc::new((nrev, compiled)));
                        return Ok(());
                    }
                    None => continue,
                }
            }
            self.catalog.store(Arc::new((rev, compiled)));
            return Ok(());
        }
        Err(EngineError::Invalid(
            "the catalog kept changing under us; try again".into(),
        ))
    }

    async fn read_catalog(&self) -> Result<(u64, Option<CatalogDoc>), EngineError> {
        let mut c = self.conn.clone();
        let key = self.k_catalog();
        let (rev, doc): (Option<u64>, Option<String>) = self
            .call(
                redis::cmd("HMGET")
                    .arg(&key)
                    .arg("rev")
                    .arg("doc")
                    .query_async(&mut c),
            )
            .await?;
        let doc = match doc {
            None => None,
            Some(d) => Some(serde_json::from_str::<CatalogDoc>(&d).map_err(|e| {
                EngineError::Invalid(format!("redis key {key}: catalog is not valid: {e}"))
            })?),
        };
        Ok((rev.unwrap_or(0), doc))
    }

    async fn cas_catalog(&self, rev: u64, doc: &CatalogDoc) -> Result<Option<u64>, EngineError> {
        let json = serde_json::to_string(doc)
            .map_err(|e| EngineError::Invalid(format!("catalog: {e}")))?;
        let mut c = self.admin.clone();
        let r: i64 = self
            .admin_call(
                self.put_catalog
                    .key(self.k_catalog())
                    .arg(rev)
                    .arg(json)
                    .invoke_async(&mut c),
            )
            .await?;
        Ok(u64::try_from(r).ok())
    }

    async fn tier_use(&self, doc: &CatalogDoc) -> Result<Vec<u64>, EngineError> {
        let mut c = self.conn.clone();
        let m: HashMap<String, u64> = self
            .call(
                redis::cmd("HGETALL")
                    .arg(self.k_tier_use())
                    .query_async(&mut c),
            )
            .await?;
        Ok(doc
            .tiers
            .iter()
            .map(|t| {
                t.as_ref()
                    .and_then(|t| m.get(&t.name).copied())
                    .unwrap_or(0)
            })
            .collect())
    }

    /// Re-reads the catalog if its revision moved. Returns whether it changed.
    pub async fn poll_catalog(&self) -> Result<bool, EngineError> {
        let mut c = self.conn.clone();
        let rev: Option<u64> = self
            .call(
                redis::cmd("HGET")
                    .arg(self.k_catalog())
                    .arg("rev")
                    .query_async(&mut c),
            )
            .await?;
        if rev.unwrap_or(0) == self.catalog.load().0 {
            return Ok(false);
        }
        let (rev, doc) = self.read_catalog().await?;
        if let Some(doc) = doc {
            match Catalog::compile(doc) {
                Ok(cat) => {
                    tracing::info!(revision = rev, "tiers changed on another node: applied");
                    self.catalog.store(Arc::new((rev, cat)));
                    return Ok(true);
                }
                Err(e) => {
                    tracing::error!(error = %e, "catalog in redis does not compile; keeping the one in force")
                }
            }
        }
        Ok(false)
    }

    /// Gives back the unspent tokens of expired leases (all leases when `all`).
    pub async fn return_leases(&self, all: bool) {
        if !matches!(self.opts.mode, Mode::Lease { .. }) {
            return;
        }
        let now = self.clock.now_ns();
        let mut back = Vec::new();
        // Only the keys holding a lease are visited, not the whole cache.
        let held: Vec<u64> = self.leased.lock().iter().copied().collect();
        for id in held {
            let Some(mut e) = self.cache.get_mut(&id) else {
                self.leased.lock().remove(&id);
                continue;
            };
            match e.lease {
                Some(l) if all || now >= l.until_ns => {
                    e.lease = None;
                    drop(e);
                    self.leased.lock().remove(&id);
                    if l.left > 0 {
                        back.push((id, l));
                    }
                }
                Some(_) => {}
                None => {
                    drop(e);
                    self.leased.lock().remove(&id);
                }
            }
        }
        for (id, l) in back {
            self.give_back(KeyId(id), &l).await;
        }
    }

    async fn give_back(&self, id: KeyId, l: &Lease) {
        // The buckets the lease was taken from: (period s, interval µs) of each limit then.
        let buckets: Vec<(u64, u64)> = {
            let cat = self.catalog.load();
            match cat.1.tier(l.tier).and_then(|t| t.limits_at(l.version)) {
                Some(limits) => limits
                    .iter()
                    .map(|lim| {
                        let m = lim.to_micros();
                        (m.period_secs(), m.interval_ns() / 1_000)
                    })
                    .collect(),
                None => return,
            }
        };
        let mut inv = self.give_back.key(self.k_key(id.slot()));
        inv.arg(l.left).arg(l.month).arg(buckets.len());
        for (period, interval_us) in buckets {
            inv.arg(period).arg(interval_us);
        }
        let mut c = self.conn.clone();
        match self.call(inv.invoke_async::<i64>(&mut c)).await {
            Ok(_) => {
                self.stats
                    .leases_returned_tokens
                    .fetch_add(l.left, Ordering::Relaxed);
            }
            Err(e) => {
                tracing::warn!(key_id = %id, tokens = l.left, error = %e, "could not give back a lease; its tokens stay spent")
            }
        }
    }

    /// The store's statistics.
    pub fn stats(&self) -> &StoreStats {
        &self.stats
    }

    /// The options in force.
    pub fn options(&self) -> &RedisOptions {
        &self.opts
    }

    /// The clock.
    pub fn clock(&self) -> &Arc<dyn Clock> {
        &self.clock
    }

    async fn fetch(&self, id: KeyId) -> Result<Option<Arc<Rec>>, RedisError> {
        let mut c = self.conn.clone();
        let key = self.k_key(id.slot());
        let m: HashMap<String, String> = self
            .call(redis::cmd("HGETALL").arg(&key).query_async(&mut c))
            .await?;
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
    fn remember(&self, rec: Rec) -> Arc<Rec> {
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
    async fn fetch_or_answer(
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
    fn authenticate(&self, id: KeyId, rec: &Rec, raw: &str, fast: u64, now: u64) -> bool {
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

    fn on_error(
        &self,
        e: &RedisError,
        id: KeyId,
        tier: Option<u16>,
        now_s: u64,
        known: bool,
    ) -> Decision {
        tracing::debug!(error = %e, key_id = %id, "check could not reach redis");
        if self.opts.fail == FailPolicy::Open && known {
            self.stats.fail_open.fetch_add(1, Ordering::Relaxed);
            return Decision::bare(Verdict::Allowed, Some(id), tier, now_s);
        }
        let mut d = Decision::bare(Verdict::Unavailable, Some(id), tier, now_s);
        d.retry_after = Some(1);
        d
    }

    /// Decides whether `raw_key` may make a call needing `scope` at `cost`: the same order and
    /// figures as [`crate::Engine::check`], counted in Redis.
    pub async fn check(&self, raw_key: Option<&str>, scope: Option<&str>, cost: u64) -> Decision {
        let now_ns = self.clock.now_ns();
        // Microsecond resolution throughout, so Rust and the script see the same instants.
        let now_us = now_ns / 1_000;
        let now = now_us * 1_000;
        let now_s = now / NANOS_PER_SEC;
        let unauthorized =
            |why, id, tier| Decision::bare(Verdict::Unauthorized(why), id, tier, now_s);
        let (raw, id) = match engine::presented(raw_key) {
            Ok(p) => p,
            Err(why) => return unauthorized(why, None, None),
        };
        let cost = cost.clamp(1, MAX_COST);
        let fast = self.digest.of(raw);
        let mut refreshed = false;
        for _ in 0..4 {
            let cached = self.cache.get(&id.0).map(|e| (e.rec.clone(), e.fetched_ns));
            let (rec, fetched) = match cached {
                Some(c) => c,
                None => match self.fetch_or_answer(id, None, now_s, false).await {
                    Ok(r) => {
                        refreshed = true;
                        (r, now_ns)
                    }
                    Err(d) => return d,
                },
            };
            // A denial decided from a copy older than RECORD_RECHECK re-reads it first.
            let stale =
                !refreshed && now_ns.saturating_sub(fetched) >= RECORD_RECHECK.as_nanos() as u64;
            let mut cat_arc = self.catalog.load_full();
            if cat_arc.1.tier_index(&rec.tier).is_none() {
                // A tier created on another node since our last poll: read the catalog now.
                if let Err(e) = self.poll_catalog().await {
                    return self.on_error(
                        &RedisError::Reply(e.to_string()),
                        id,
                        None,
                        now_s,
                        false,
                    );
                }
                cat_arc = self.catalog.load_full();
            }
            let cat = &cat_arc.1;
            let tier_ix = cat.tier_index(&rec.tier);
            let denial = if !self.authenticate(id, &rec, raw, fast, now) {
                Some(Verdict::Unauthorized(AuthFailure::Unknown))
            } else if rec.revoked {
                Some(Verdict::Unauthorized(AuthFailure::Revoked))
            } else if rec.expires_at_s != 0 && now_s >= rec.expires_at_s {
                Some(Verdict::Unauthorized(AuthFailure::Expired))
            } else if tier_ix.is_none() {
                Some(Verdict::Unauthorized(AuthFailure::Unknown))
            } else if let Some(s) = scope {
                let tier = tier_ix.and_then(|t| cat.tier(t));
                if !rec.scopes.is_empty() && !rec.scopes.iter().any(|g| g == s) {
                    Some(Verdict::Forbidden)
                } else if tier
                    .and_then(|t| t.spec.scopes.as_ref())
                    .is_some_and(|plan| !plan.iter().any(|p| p == s))
                {
                    Some(Verdict::PlanRequired)
                } else {
                    None
                }
            } else {
                None
            };
            if let Some(v) = denial {
                if stale && !matches!(v, Verdict::Unauthorized(AuthFailure::Revoked)) {
                    if let Err(d) = self.fetch_or_answer(id, tier_ix, now_s, false).await {
                        return d;
                    }
                    refreshed = true;
                    continue;
                }
                let tier = match v {
                    Verdict::Unauthorized(AuthFailure::Unknown) => None,
                    _ => tier_ix,
                };
                return Decision::bare(v, Some(id), tier, now_s);
            }
            let (Some(tier_ix), Some(tier)) = (tier_ix, tier_ix.and_then(|t| cat.tier(t))) else {
                return unauthorized(AuthFailure::Unknown, Some(id), None);
            };
            let quota = rec.quota.or(tier.spec.monthly_quota);
            let month = MonthWindow::containing(now);
            if let Mode::Lease { .. } = self.opts.mode {
                if let Some(d) =
                    self.spend_lease(id, rec.version, (tier_ix, tier), cost, now, month.id)
                {
                    return d;
                }
            }
            // The tier's limits at the script's resolution: sent to it and used to decide.
            let limits: Vec<Limit> = tier.limits.iter().map(Limit::to_micros).collect();
            match self
                .run_check(id, &rec, &limits, cost, now_us, quota, month.id)
                .await
            {
                Err(e) => return self.on_error(&e, id, Some(tier_ix), now_s, true),
                Ok(Outcome::Missing) => {
                    self.cache.remove(&id.0);
                    return unauthorized(AuthFailure::Unknown, None, None);
                }
                Ok(Outcome::Stale) => {
                    self.stats.stale_records.fetch_add(1, Ordering::Relaxed);
                    if let Err(d) = self.fetch_or_answer(id, Some(tier_ix), now_s, true).await {
                        return d;
                    }
                    refreshed = true;
                    continue;
                }
                Ok(Outcome::State { granted, used, tat }) => {
                    let mut tat_ns = [0u64; MAX_LIMITS];
                    for (d, s) in tat_ns.iter_mut().zip(tat) {
                        *d = s.saturating_mul(1_000);
                    }
                    let mut d = Decision::bare(Verdict::Allowed, Some(id), Some(tier_ix), now_s);
                    let terms = spend::Terms {
                        limits: &limits,
                        quota,
                        month: &month,
                    };
                    if granted <= cost {
                        let admitted = spend::decide(&tat_ns, used, now, cost, &terms, &mut d);
                        if admitted.is_some() != (granted > 0) {
                            // The script and `spend::decide` implement one rule; a difference is
                            // a bug, reported rather than hidden.
                            tracing::error!(key_id = %id, granted, "redis script and engine disagree");
                        }
                        return d;
                    }
                    // A lease: the figures count the tokens this node holds as available (to this
                    // node), i.e. as if only this request's cost had left Redis; each local spend
                    // then subtracts its cost from them.
                    spend::decide(&tat_ns, used, now, cost, &terms, &mut d);
                    let left = granted - cost;
                    self.stats.leases_taken.fetch_add(1, Ordering::Relaxed);
                    if let Mode::Lease { ttl, .. } = self.opts.mode {
                        if let Some(mut e) = self.cache.get_mut(&id.0) {
                            let old = e.lease.take();
                            e.lease = Some(Lease {
                                left,
                                month: month.id,
                                until_ns: now.saturating_add(ttl.as_nanos() as u64),
                                tier: tier_ix,
                                version: tier.version,
                                template: d,
                                spent: 0,
                            });
                            drop(e);
                            self.leased.lock().insert(id.0);
                            if let Some(old) = old.filter(|o| o.left > 0) {
                                self.give_back(id, &old).await;
                            }
                        }
                    }
                    return d;
                }
            }
        }
        // The record kept changing between read and check: say so rather than guess.
        self.on_error(
            &RedisError::Reply("key record changed during the check".into()),
            id,
            None,
            now_s,
            false,
        )
    }

    /// Spends `cost` from this node's lease on the key, if it holds enough of a current one.
    fn spend_lease(
        &self,
        id: KeyId,
        version: u64,
        (tier_ix, tier): (u16, &CompiledTier),
        cost: u64,
        now: u64,
        month: u32,
    ) -> Option<Decision> {
        let mut e = self.cache.get_mut(&id.0)?;
        if e.rec.version != version {
            return None;
        }
        let l = e.lease.as_mut()?;
        if l.left < cost
            || now >= l.until_ns
            || l.month != month
            || l.tier != tier_ix
            || l.version != tier.version
        {
            return None;
        }
        l.left -= cost;
        l.spent += cost;
        let mut d = l.template;
        d.sub_remaining(l.spent);
        d.now_s = now / NANOS_PER_SEC;
        self.stats.local_spends.fetch_add(1, Ordering::Relaxed);
        Some(d)
    }

    #[allow(clippy::too_many_arguments)]
    async fn run_check(
        &self,
        id: KeyId,
        rec: &Rec,
        limits: &[Limit],
        cost: u64,
        now_us: u64,
        quota: Option<u64>,
        month: u32,
    ) -> Result<Outcome, RedisError> {
        let want = match self.opts.mode {
            Mode::Exact => cost,
            Mode::Lease { size, .. } => size.max(cost),
        };
        let mut inv = self.check.key(self.k_key(id.slot()));
        inv.arg(rec.version)
            .arg(now_us)
            .arg(cost)
            .arg(want)
            .arg(month)
            .arg(quota.map_or(-1i64, |q| q.min(i64::MAX as u64) as i64))
            .arg(limits.len());
        for l in limits {
            inv.arg(l.period_secs())
                .arg(l.interval_ns() / 1_000)
                .arg(l.requests());
        }
        let mut c = self.conn.clone();
        let v: Vec<Value> = self.call(inv.invoke_async(&mut c)).await?;
        let bad = || RedisError::Reply(format!("check script returned {v:?}"));
        match v.first().and_then(int) {
            Some(0) => Ok(Outcome::Missing),
            Some(1) => Ok(Outcome::Stale),
            Some(2) => {
                let granted = v.get(1).and_then(int).ok_or_else(bad)?;
                let used = v.get(2).and_then(int).ok_or_else(bad)?;
                let mut tat = [0u64; MAX_LIMITS];
                for (i, t) in tat.iter_mut().enumerate().take(limits.len()) {
                    *t = v.get(3 + i).and_then(int).ok_or_else(bad)?.max(0) as u64;
                }
                Ok(Outcome::State {
                    granted: granted.max(0) as u64,
                    used: used.max(0) as u64,
                    tat,
                })
            }
            _ => Err(bad()),
        }
    }

    /// Lends the id, consumer and tier of key `id` to `f` if this node has it cached (it has,
    /// right after checking it, unless the key was deleted meanwhile); otherwise `f` is not
    /// called.
    pub fn lend_identity(&self, id: KeyId, f: &mut dyn FnMut(KeyId, &str, &str)) {
        if let Some(e) = self.cache.get(&id.0) {
            f(id, &e.rec.consumer, &e.rec.tier);
        }
    }

    // ----- admin: keys -----------------------------------------------------------------------

    /// Number of keys ever created (live, revoked and expired).
    pub async fn key_count(&self) -> Result<u64, EngineError> {
        let mut c = self.conn.clone();
        let n: Option<u64> = self
            .call(redis::cmd("GET").arg(self.k_next()).query_async(&mut c))
            .await?;
        Ok(n.unwrap_or(0))
    }

    /// Creates keys; each record is in Redis before this returns.
    pub async fn create_keys(&self, news: Vec<NewKey>) -> Result<Vec<CreatedKey>, EngineError> {
        {
            let cat = self.catalog.load();
            for k in &news {
                engine::validate_new(k)?;
                if cat.1.tier_index(&k.tier).is_none() {
                    return Err(EngineError::Invalid(format!("unknown tier {:?}", k.tier)));
                }
            }
        }
        if news.is_empty() {
            return Ok(Vec::new());
        }
        let mut c = self.admin.clone();
        let last: u64 = self
            .admin_call(
                redis::cmd("INCRBY")
                    .arg(self.k_next())
                    .arg(news.len())
                    .query_async(&mut c),
            )
            .await?;
        if last > engine::MAX_KEYS {
            return Err(EngineError::Invalid("no room for more keys".into()));
        }
        let first = last - news.len() as u64;
        let now = self.clock.now_ns();
        let mut out = Vec::with_capacity(news.len());
        let mut per_tier: HashMap<String, i64> = HashMap::new();
        // One HSET per key, all in flight at once: in a cluster they go to different masters
        // (a pipeline would be one node's), and on one server they pipeline on the connection.
        let mut cmds = Vec::with_capacity(news.len());
        for (i, k) in news.iter().enumerate() {
            let slot = (first + i as u64) as u32;
            let id = KeyId::new(slot, engine::random_u64()? as u32);
            let prefix = k.prefix.as_deref().unwrap_or(keyfmt::DEFAULT_PREFIX);
            let raw = keyfmt::generate(prefix, id)
                .map_err(|e| EngineError::Invalid(format!("OS random source failed: {e}")))?;
            let rec = Rec {
                version: 1,
                id,
                hash: keyfmt::hash(&raw),
                hash_prev: [0; 32],
                prev_until_ns: 0,
                tier: k.tier.clone(),
                scopes: k.scopes.clone(),
                expires_at_s: k.expires_at.unwrap_or(0),
                quota: k.monthly_quota,
                revoked: false,
                consumer: k.consumer.clone(),
                name: k.name.clone().unwrap_or_default(),
                display_prefix: keyfmt::display_prefix(&raw),
                created_at_s: now / NANOS_PER_SEC,
            };
            let mut cmd = redis::cmd("HSET");
            cmd.arg(self.k_key(slot)).arg("v").arg(1);
            for (f, v) in rec.fields() {
                cmd.arg(f).arg(v);
            }
            cmds.push(cmd);
            *per_tier.entry(k.tier.clone()).or_default() += 1;
            out.push(CreatedKey {
                info: rec.info(),
                raw,
            });
        }
        for chunk in cmds.chunks(512) {
            let writes = chunk.iter().map(|cmd| {
                let mut c = self.admin.clone();
                async move { self.admin_call(cmd.query_async::<i64>(&mut c)).await }
            });
            for r in futures_util::future::join_all(writes).await {
                r?;
            }
        }
        for (t, n) in per_tier {
            self.bump_tier_use(&t, n).await?;
        }
        let mut written = vec![self.k_next()];
        written.extend(out.iter().map(|k| self.k_key(k.info.id.slot())));
        self.replicated(&written).await;
        Ok(out)
    }

    async fn bump_tier_use(&self, tier: &str, by: i64) -> Result<(), EngineError> {
        let mut c = self.admin.clone();
        self.admin_call(
            redis::cmd("HINCRBY")
                .arg(self.k_tier_use())
                .arg(tier)
                .arg(by)
                .query_async::<i64>(&mut c),
        )
        .await?;
        Ok(())
    }

    async fn read(&self, id: KeyId) -> Result<Arc<Rec>, EngineError> {
        self.fetch(id).await?.ok_or(EngineError::UnknownKey)
    }

    /// The record of key `id`.
    pub async fn key(&self, id: KeyId) -> Result<KeyInfo, EngineError> {
        Ok(self.read(id).await?.info())
    }

    /// Keys in id order after `after`, filtered, at most `limit`; and the cursor of the next page.
    pub async fn list_keys(
        &self,
        consumer: Option<&str>,
        tier: Option<&str>,
        after: Option<KeyId>,
        limit: usize,
    ) -> Result<(Vec<KeyInfo>, Option<KeyId>), EngineError> {
        let n = self.key_count().await?;
        let mut slot = after.map(|a| u64::from(a.slot()) + 1).unwrap_or(0);
        let mut out: Vec<KeyInfo> = Vec::new();
        while slot < n {
            let end = (slot + 256).min(n);
            let reads = (slot..end).map(|s| {
                let mut c = self.conn.clone();
                let key = self.k_key(s as u32);
                async move {
                    self.call(
                        redis::cmd("HGETALL")
                            .arg(key)
                            .query_async::<HashMap<String, String>>(&mut c),
                    )
                    .await
                }
            });
            let maps = futures_util::future::join_all(reads)
                .await
                .into_iter()
                .collect::<Result<Vec<_>, _>>()?;
            for m in maps {
                let Ok(r) = Rec::parse(&m) else { continue };
                if consumer.is_some_and(|c| c != r.consumer) || tier.is_some_and(|t| t != r.tier) {
                    continue;
                }
                if out.len() == limit {
                    let cursor = out.last().map(|k| k.id);
                    return Ok((out, cursor));
                }
                out.push(r.info());
            }
            slot = end;
        }
        Ok((out, None))
    }

    /// Applies `f` to the record and writes it if nobody changed it meanwhile (retrying if so).
    async fn modify(
        &self,
        id: KeyId,
        f: impl Fn(&mut Rec) -> Result<(), EngineError>,
    ) -> Result<Rec, EngineError> {
        for _ in 0..8 {
            let old = self.read(id).await?;
            let mut rec = (*old).clone();
            f(&mut rec)?;
            let mut inv = self.update.key(self.k_key(id.slot()));
            inv.arg(old.version);
            for (k, v) in rec.fields() {
                inv.arg(k).arg(v);
            }
            let mut c = self.admin.clone();
            let r: i64 = self.admin_call(inv.invoke_async(&mut c)).await?;
            match r {
                -1 => return Err(EngineError::UnknownKey),
                -2 => continue,
                v => {
                    rec.version = v as u64;
                    let mut written = vec![self.k_key(id.slot())];
                    if rec.tier != old.tier {
                        self.bump_tier_use(&old.tier, -1).await?;
                        self.bump_tier_use(&rec.tier, 1).await?;
                        written.push(self.k_tier_use());
                    }
                    self.replicated(&written).await;
                    // This node's copy is the record just written; other nodes see the new
                    // version on their next check.
                    self.remember(rec.clone());
                    return Ok(rec);
                }
            }
        }
        Err(EngineError::Invalid(
            "the key kept changing under us; try again".into(),
        ))
    }

    /// Changes tier, scopes, expiry, quota override or name.
    pub async fn update_key(&self, id: KeyId, upd: KeyUpdate) -> Result<KeyInfo, EngineError> {
        if let Some(s) = &upd.scopes {
            engine::validate_scopes(s)?;
        }
        if let Some(n) = &upd.name {
            engine::validate_name(n.as_deref())?;
        }
        if let Some(t) = &upd.tier {
            if self.catalog.load().1.tier_index(t).is_none() {
                return Err(EngineError::Invalid(format!("unknown tier {t:?}")));
            }
        }
        let rec = self
            .modify(id, |r| {
                if let Some(t) = &upd.tier {
                    r.tier = t.clone();
                }
                if let Some(s) = &upd.scopes {
                    r.scopes = s.clone();
                }
                if let Some(e) = upd.expires_at {
                    r.expires_at_s = e.unwrap_or(0);
                }
                if let Some(q) = upd.monthly_quota {
                    r.quota = q;
                }
                if let Some(n) = &upd.name {
                    r.name = n.clone().unwrap_or_default();
                }
                Ok(())
            })
            .await?;
        Ok(rec.info())
    }

    /// Revokes key `id`.
    pub async fn revoke_key(&self, id: KeyId) -> Result<KeyInfo, EngineError> {
        let rec = self
            .modify(id, |r| {
                r.revoked = true;
                r.prev_until_ns = 0;
                Ok(())
            })
            .await?;
        Ok(rec.info())
    }

    /// Gives key `id` a new secret; the old one works `grace_secs` more. Usage is kept.
    pub async fn rotate_key(&self, id: KeyId, grace_secs: u64) -> Result<CreatedKey, EngineError> {
        let now = self.clock.now_ns();
        let raw = std::sync::Mutex::new(String::new());
        let rec = self
            .modify(id, |r| {
                if r.revoked {
                    return Err(EngineError::Invalid(
                        "a revoked key cannot be rotated".into(),
                    ));
                }
                let new =
                    engine::NewSecret::for_rotation(&r.display_prefix, r.id, grace_secs, now)?;
                r.hash_prev = r.hash;
                r.hash = new.hash;
                r.prev_until_ns = new.previous_valid_until_ns;
                r.display_prefix = new.display_prefix;
                if let Ok(mut g) = raw.lock() {
                    *g = new.raw;
                }
                Ok(())
            })
            .await?;
        let raw = raw.into_inner().unwrap_or_default();
        Ok(CreatedKey {
            info: rec.info(),
            raw,
        })
    }

    /// Live usage of key `id` (nothing consumed).
    pub async fn usage(&self, id: KeyId) -> Result<Usage, EngineError> {
        let mut c = self.conn.clone();
        let m: HashMap<String, String> = self
            .call(
                redis::cmd("HGETALL")
                    .arg(self.k_key(id.slot()))
                    .query_async(&mut c),
            )
            .await?;
        let rec = Rec::parse(&m).map_err(|_| EngineError::UnknownKey)?;
        if rec.id != id {
            return Err(EngineError::UnknownKey);
        }
        let cat = self.catalog.load();
        let tier = cat
            .1
            .tier_index(&rec.tier)
            .and_then(|i| cat.1.tier(i))
            .ok_or_else(|| EngineError::UnknownTier(rec.tier.clone()))?;
        let now = self.clock.now_ns() / 1_000 * 1_000;
        let num = |f: String| m.get(&f).and_then(|v| v.parse::<u64>().ok());
        let limits = tier
            .limits
            .iter()
            .map(|l| {
                let l = l.to_micros();
                let tat = (1..=MAX_LIMITS)
                    .find(|i| num(format!("p{i}")) == Some(l.period_secs()))
                    .and_then(|i| {
                        let old_iv = num(format!("i{i}"))?.saturating_mul(1_000);
                        let t = num(format!("t{i}"))?.saturating_mul(1_000);
                        Some(reexpress(t, now, old_iv, l.interval_ns()))
                    })
                    .unwrap_or(0);
                engine::limit_usage(tat, now, &l)
            })
            .collect();
        let month = MonthWindow::containing(now);
        let used = if num("m".into()) == Some(u64::from(month.id)) {
            num("u".into()).unwrap_or(0)
        } else {
            0
        };
        Ok(Usage {
            limits,
            monthly_used: used,
            monthly_quota: rec.quota.or(tier.spec.monthly_quota),
            last_used_at: num("lu".into()).filter(|v| *v != 0),
        })
    }

    // ----- admin: tiers ----------------------------------------------------------------------

    /// Every tier in force on this node.
    pub fn tiers(&self) -> Vec<TierSpec> {
        self.catalog.load().1.specs()
    }

    /// The compiled catalog in force on this node.
    pub fn catalog(&self) -> Arc<(u64, Catalog)> {
        self.catalog.load_full()
    }

    async fn change_catalog(
        &self,
        f: impl Fn(&mut CatalogDoc, &[u64]) -> Result<(), EngineError>,
    ) -> Result<(), EngineError> {
        for _ in 0..10 {
            let (rev, doc) = self.read_catalog().await?;
            let mut doc = doc.ok_or_else(|| EngineError::Invalid("no catalog in redis".into()))?;
            let use_ = self.tier_use(&doc).await?;
            f(&mut doc, &use_)?;
            let compiled = Catalog::compile(doc.clone())?;
            if let Some(nrev) = self.cas_catalog(rev, &doc).await? {
                self.replicated(&[self.k_catalog()]).await;
                self.catalog.store(Arc::new((nrev, compiled)));
                return Ok(());
            }
        }
        Err(EngineError::Invalid(
            "the tiers kept changing under us; try again".into(),
        ))
    }

    /// Creates or replaces a tier; every node applies it within the poll interval.
    pub async fn put_tier(&self, spec: TierSpec) -> Result<TierSpec, EngineError> {
        let spec = spec.normalized();
        spec.validate().map_err(CatalogError::from)?;
        self.change_catalog(|doc, _| engine::put_tier_in(doc, &spec))
            .await?;
        Ok(spec)
    }

    /// Deletes a tier no key uses.
    pub async fn delete_tier(&self, name: &str) -> Result<(), EngineError> {
        self.change_catalog(|doc, use_| engine::delete_tier_in(doc, use_, name))
            .await
    }

    /// Replaces the whole set of tiers.
    pub async fn apply_tiers(&self, specs: Vec<TierSpec>) -> Result<(), EngineError> {
        self.change_catalog(|doc, use_| engine::replace_tiers(doc, use_, specs.clone()))
            .await
    }
}
