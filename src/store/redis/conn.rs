//! Connections to Redis (one server or a cluster), the calls made over them with a timeout and
//! the reachability state they keep, and the wait for replicas after an admin change.

use std::sync::atomic::Ordering;
use std::time::Duration;

use redis::aio::ConnectionLike;
use redis::cluster_routing::{Route, RoutingInfo, SingleNodeRoutingInfo, SlotAddr};
use redis::{Cmd, RedisFuture, Value};

use super::options::{scheme, RedisOptions, Scheme};
use super::RedisStore;
use crate::store::StoreError;

/// A connection to one Redis server (reconnecting) or to a cluster (following slot moves and
/// failovers). Both multiplex: clones share one socket per server, and concurrent calls pipeline.
#[derive(Clone)]
pub(super) enum Conn {
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

/// Where `--store` points: one server or a cluster's seed nodes, each as a URL the redis crate
/// reads (`redis://` or `rediss://`, credentials included).
struct Target {
    cluster: bool,
    tls: bool,
    nodes: Vec<String>,
}

impl Target {
    fn parse(url: &str) -> Result<Target, &'static str> {
        const USAGE: &str = "use redis://HOST:PORT or redis-cluster://HOST:PORT,HOST:PORT,… \
                             (rediss:// and rediss-cluster:// for TLS; USER:PASSWORD@ before \
                             the first host for Redis AUTH)";
        let Scheme { cluster, tls } = scheme(url).ok_or(USAGE)?;
        let rest = url.split_once("://").map_or("", |(_, rest)| rest);
        let node_scheme = if tls { "rediss" } else { "redis" };
        if !cluster {
            return Ok(Target {
                cluster,
                tls,
                nodes: vec![format!("{node_scheme}://{rest}")],
            });
        }
        // Every seed node carries the credentials, since any of them may be the one that
        // answers first; nodes found later get them from the client.
        let (auth, hosts) = match rest.rsplit_once('@') {
            Some((auth, hosts)) => (format!("{auth}@"), hosts),
            None => (String::new(), rest),
        };
        let nodes: Vec<String> = hosts
            .split(',')
            .filter(|s| !s.is_empty())
            .map(|n| format!("{node_scheme}://{auth}{n}"))
            .collect();
        if nodes.is_empty() {
            return Err("no cluster node given");
        }
        Ok(Target {
            cluster,
            tls,
            nodes,
        })
    }
}

/// The most retries of a cluster call (redirects, reconnects): enough for the redirects of a
/// slot moving (MOVED to the new owner, ASK while its keys migrate, MOVED again after a map
/// refresh read from a node that had not heard yet).
const REDIRECTS: u32 = 5;

/// How long every call must have failed before the cluster client is replaced: twice the
/// store's timeout, at least a second.
fn stuck_after(opts: &RedisOptions) -> Duration {
    (opts.timeout * 2).max(Duration::from_secs(1))
}

/// Whether something done at most once per `every_ns` is due at `now` (`last`: when it was
/// last done, 0 for never); if so, notes it as done now.
pub(super) fn once_per(last: &std::sync::atomic::AtomicU64, now: u64, every_ns: u64) -> bool {
    let then = last.load(Ordering::Relaxed);
    if then != 0 && now.saturating_sub(then) < every_ns {
        return false;
    }
    last.store(now.max(1), Ordering::Relaxed);
    true
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

impl From<RedisError> for StoreError {
    fn from(e: RedisError) -> Self {
        StoreError::Unavailable(e.to_string())
    }
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

pub(super) fn int(v: &Value) -> Option<i64> {
    match v {
        Value::Int(i) => Some(*i),
        Value::BulkString(b) => std::str::from_utf8(b).ok()?.parse().ok(),
        Value::SimpleString(s) => s.parse().ok(),
        _ => None,
    }
}

impl RedisStore {
    /// One multiplexed connection to the server or cluster of `opts.url`, whose replies may take
    /// up to `reply_within`.
    pub(super) async fn open(
        opts: &RedisOptions,
        reply_within: Duration,
    ) -> Result<Conn, StoreError> {
        let shown = opts.shown_url();
        let bad = |m: String| StoreError::invalid(format!("--store {shown}: {m}"));
        // Wrong credentials or an untrusted certificate will not mend by retrying: they are
        // refused at once, saying which; anything else may be Redis still starting.
        let down = |e: redis::RedisError| {
            let text = e.to_string();
            if e.kind() == redis::ErrorKind::AuthenticationFailed
                || text.contains("WRONGPASS")
                || text.contains("NOAUTH")
                || text.contains("AuthenticationFailed")
            {
                bad(format!(
                    "Redis refused the credentials (authentication failed): {text}"
                ))
            } else if text.contains("certificate") {
                bad(format!(
                    "Redis's TLS certificate is not trusted (is --redis-ca its CA?): {text}"
                ))
            } else {
                StoreError::Unavailable(format!("{shown}: {text}"))
            }
        };
        let no_answer = |m: &str| StoreError::Unavailable(format!("{shown}: {m}"));
        let target = Target::parse(&opts.url).map_err(|m| bad(m.into()))?;
        let certs = match (&opts.ca_pem, target.tls) {
            (Some(pem), true) => Some(redis::TlsCertificates {
                client_tls: None,
                root_cert: Some(pem.clone()),
            }),
            (Some(_), false) => {
                return Err(bad(
                    "--redis-ca is for TLS: use rediss:// or rediss-cluster://".into(),
                ))
            }
            (None, _) => None,
        };
        Ok(if target.cluster {
            // A call in a reshard may meet MOVED, then ASK, then a refreshed map: redirects are
            // followed at once, and the store's timeout bounds the whole call.
            let mut b = redis::cluster::ClusterClientBuilder::new(target.nodes)
                .connection_timeout(opts.timeout)
                .response_timeout(reply_within)
                .retries(REDIRECTS)
                .min_retry_wait(10)
                .max_retry_wait(200);
            if let Some(c) = certs {
                b = b.certs(c);
            }
            let client = b.build().map_err(|e| bad(e.to_string()))?;
            let c = tokio::time::timeout(opts.timeout * 4, client.get_async_connection())
                .await
                .map_err(|_| no_answer("no cluster node answered"))?
                .map_err(down)?;
            Conn::Cluster(c)
        } else {
            let node = target.nodes[0].as_str();
            let client = match certs {
                Some(c) => redis::Client::build_with_tls(node, c),
                None => redis::Client::open(node),
            }
            .map_err(|e| bad(e.to_string()))?;
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
            .map_err(|_| no_answer("no answer"))?
            .map_err(down)?;
            Conn::Single(c)
        })
    }

    pub(super) fn k_catalog(&self) -> String {
        format!("{}:{{meta}}:catalog", self.opts.namespace)
    }
    pub(super) fn k_next(&self) -> String {
        format!("{}:{{meta}}:next", self.opts.namespace)
    }
    pub(super) fn k_deleted(&self) -> String {
        format!("{}:{{meta}}:deleted", self.opts.namespace)
    }
    pub(super) fn k_tier_use(&self) -> String {
        format!("{}:{{meta}}:tier_use", self.opts.namespace)
    }
    pub(super) fn k_imported(&self) -> String {
        format!("{}:{{meta}}:imported", self.opts.namespace)
    }
    pub(super) fn k_key(&self, slot: u32) -> String {
        format!("{}:{{{slot}}}", self.opts.namespace)
    }
    /// The counters every key of `consumer` on tier `tier` (by index: a deleted tier's index is
    /// never reused) spends, on a tier counting by consumer.
    pub(super) fn k_group(&self, tier: u16, consumer: &str) -> String {
        format!("{}:{{g{tier}:{consumer}}}", self.opts.namespace)
    }

    /// The connection for checks and reads, and the one for admin writes: a second one when
    /// admin writes wait for replicas.
    pub(super) async fn open_both(opts: &RedisOptions) -> Result<(Conn, Conn), StoreError> {
        let conn = Self::open(opts, opts.timeout).await?;
        let admin = if opts.replica_acks > 0 {
            Self::open(opts, opts.admin_within()).await?
        } else {
            conn.clone()
        };
        Ok((conn, admin))
    }

    /// Whether the store is on a Redis Cluster.
    pub(super) fn on_cluster(&self) -> bool {
        matches!(**self.conn.load(), Conn::Cluster(_))
    }

    /// The connection for checks and reads.
    pub(super) fn conn(&self) -> Conn {
        Conn::clone(&self.conn.load())
    }

    /// The connection for admin writes and their `WAIT`.
    pub(super) fn admin(&self) -> Conn {
        Conn::clone(&self.admin.load())
    }

    /// Replaces the cluster client once every call has failed for [`stuck_after`]: the redis
    /// crate's cluster client can stop answering for good while it re-reads the slot map after
    /// a redirect (a slot moved), though every master answers (`docs/SCALING.md`, "Reshards").
    /// A new client is opened beside the old one and takes its place only if it connects; when
    /// Redis itself is down that fails, and the old client goes on reconnecting by itself.
    /// Tried at most once per [`stuck_after`]; called from the upkeep.
    pub(super) async fn reopen_if_stuck(&self) {
        let Some(since) = self.stats.down_since_ns() else {
            return;
        };
        let (now, after) = (
            self.clock.now_ns(),
            stuck_after(&self.opts).as_nanos() as u64,
        );
        if !self.on_cluster()
            || now.saturating_sub(since) < after
            || !once_per(&self.reopened_ns, now, after)
        {
            return;
        }
        match Self::open_both(&self.opts).await {
            Ok((conn, admin)) => {
                self.conn.store(std::sync::Arc::new(conn));
                self.admin.store(std::sync::Arc::new(admin));
                self.stats
                    .client_replacements
                    .fetch_add(1, Ordering::Relaxed);
                tracing::warn!(
                    store = %self.opts.shown_url(),
                    down_ms = now.saturating_sub(since) / 1_000_000,
                    "redis calls failing although the cluster answers a new client: replaced the cluster client"
                );
            }
            Err(e) => tracing::debug!(error = %e, "a new redis cluster client could not connect"),
        }
    }

    /// Runs one Redis call with the store's timeout, keeping the reachability state.
    pub(super) async fn call<T, F>(&self, f: F) -> Result<T, RedisError>
    where
        F: std::future::Future<Output = redis::RedisResult<T>>,
    {
        self.call_within(self.opts.timeout, f).await
    }

    /// Runs one write on the admin connection, which may be queued behind another admin call's
    /// wait for replicas: its timeout includes that wait.
    pub(super) async fn admin_call<T, F>(&self, f: F) -> Result<T, RedisError>
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
        let st = &self.stats;
        match &r {
            Ok(_) => {
                let now = self.clock.now_ns();
                st.last_ok_ns.store(now, Ordering::Relaxed);
                if !st.reachable.swap(true, Ordering::Relaxed) {
                    let since = st.down_since_ns.swap(0, Ordering::Relaxed);
                    let failed = st.unlogged_errors.swap(0, Ordering::Relaxed);
                    if since != 0 {
                        tracing::info!(
                            store = %self.opts.shown_url(),
                            down_ms = now.saturating_sub(since) / 1_000_000,
                            failed_calls = failed,
                            "redis reachable again"
                        );
                    }
                }
            }
            Err(e) => {
                st.errors.fetch_add(1, Ordering::Relaxed);
                st.unlogged_errors.fetch_add(1, Ordering::Relaxed);
                if st.reachable.swap(false, Ordering::Relaxed) {
                    st.down_since_ns
                        .store(self.clock.now_ns().max(1), Ordering::Relaxed);
                    st.unlogged_errors.store(0, Ordering::Relaxed);
                    tracing::warn!(error = %e, store = %self.opts.shown_url(), "redis unreachable");
                }
            }
        }
        r
    }

    /// Waits until [`RedisOptions::replica_acks`] replicas of the masters holding `keys` have
    /// every admin write made so far (Redis `WAIT` on the admin connection, which made them). A
    /// shortfall leaves the writes in place on the master: it is logged and counted, not failed,
    /// since the change has been made and a retry would make it twice.
    pub(super) async fn replicated(&self, keys: &[String]) {
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
        let acks: Vec<Result<i64, RedisError>> = match &self.admin() {
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
}
