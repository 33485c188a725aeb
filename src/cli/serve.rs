//! `quotad serve`: open the data directory, start the transports, and run until SIGTERM/SIGINT.
//! SIGHUP re-reads the `--tiers` file.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use clap::Args;
use hyper::header::HeaderName;
use tokio::signal::unix::{signal, SignalKind};
use tokio::sync::watch;

use crate::metrics::Metrics;
use crate::server::binary::{self, BinaryConfig};
use crate::server::http::HttpConfig;
use crate::server::token::{AdminToken, TokenSource};
use crate::server::{http, upkeep_loop, AppState};
use crate::store::redis::{FailPolicy, Mode, RedisOptions, RedisStore};
use crate::store::{LocalOptions, LocalStore, Store, StoreError};
use crate::QuantaClock;

/// Flags of `quotad serve` (each also settable by environment variable).
#[derive(Debug, Clone, Args)]
pub struct ServeArgs {
    /// Data directory (created if missing; mode 0700, files 0600).
    #[arg(long, env = "QUOTAD_DATA_DIR", default_value = "./quotad-data")]
    pub data_dir: PathBuf,
    /// Let the directory's group read the data files (0750/0640), e.g. for a backup job.
    #[arg(long, env = "QUOTAD_DATA_GROUP_READABLE")]
    pub data_group_readable: bool,
    /// HTTP listen address (check endpoint, admin API, health, metrics).
    #[arg(long, env = "QUOTAD_HTTP", default_value = "127.0.0.1:8686")]
    pub http: SocketAddr,
    /// Binary protocol TCP listen address.
    #[arg(long, env = "QUOTAD_BIND", default_value = "127.0.0.1:8687")]
    pub bind: SocketAddr,
    /// Envoy's gRPC APIs (rate limit service v3, external authorization v3, gRPC health) listen
    /// address, or `off`.
    #[arg(long, env = "QUOTAD_GRPC", default_value = "127.0.0.1:8688", value_parser = parse_grpc_addr)]
    pub grpc: GrpcListen,
    /// Most gRPC connections open at once; one more is closed at once.
    #[arg(long, env = "QUOTAD_MAX_GRPC_CONNECTIONS", default_value_t = 1024)]
    pub max_grpc_connections: usize,
    /// The rate limit service's descriptor entry that carries the raw API key.
    #[arg(long, env = "QUOTAD_GRPC_KEY_ENTRY", default_value = "api_key")]
    pub grpc_key_entry: String,
    /// Binary protocol Unix socket path (optional).
    #[arg(long, env = "QUOTAD_UNIX")]
    pub unix: Option<PathBuf>,
    /// Most binary protocol connections open at once (TCP and Unix together).
    #[arg(long, default_value_t = 10_000)]
    pub max_binary_connections: usize,
    /// Seconds a binary connection may stay idle before it is closed.
    #[arg(long, default_value_t = 60)]
    pub idle_timeout_secs: u64,
    /// Seconds a binary frame may take to arrive once its first byte has (at most the idle
    /// timeout): a client sending a frame slowly is closed.
    #[arg(long, default_value_t = 10)]
    pub frame_timeout_secs: u64,
    /// Tiers TOML file replacing the built-in tiers; re-read on SIGHUP.
    #[arg(long, env = "QUOTAD_TIERS")]
    pub tiers: Option<PathBuf>,
    /// Every tier in shadow mode: what its limits or quota would deny is allowed, marked with
    /// `X-Quota-Shadow` and counted in `quotad_shadow_denials_total`; keys and scopes are still
    /// enforced. For trying new limits on live traffic (a tier's own `enforce = false` does the
    /// same for one tier).
    #[arg(long, env = "QUOTAD_SHADOW")]
    pub shadow: bool,
    /// Another header that may carry the API key (repeatable), e.g. X-Agent-API-Key.
    #[arg(long = "key-header", value_name = "NAME")]
    pub key_headers: Vec<String>,
    /// Most HTTP connections open at once.
    #[arg(long, env = "QUOTAD_MAX_CONNECTIONS", default_value_t = 10_000)]
    pub max_connections: usize,
    /// Seconds a client may take to send a request head, or idle between requests.
    #[arg(long, default_value_t = 10)]
    pub header_timeout_secs: u64,
    /// Milliseconds between msyncs of the counters (bounds what a power loss can cost).
    #[arg(long, env = "QUOTAD_MSYNC_INTERVAL_MS", default_value_t = 1000)]
    pub msync_interval_ms: u64,
    /// Seconds to let in-flight requests finish at shutdown.
    #[arg(long, default_value_t = 10)]
    pub drain_secs: u64,
    /// Where keys, tiers and counters live: `mmap` (this node's data directory, the default),
    /// `redis://HOST:PORT` or `redis-cluster://HOST:PORT,HOST:PORT,…` (shared by several nodes);
    /// `rediss://`, `rediss-cluster://` for TLS; `USER:PASSWORD@` before the first host for
    /// Redis AUTH (better given in the environment than on the command line).
    #[arg(
        long,
        env = "QUOTAD_STORE",
        default_value = "mmap",
        hide_env_values = true
    )]
    pub store: String,
    /// On Redis: `exact` (every check goes to Redis) or `lease` (a node takes a few tokens of a
    /// key at once and spends them locally; see docs/SCALING.md).
    #[arg(long, env = "QUOTAD_STORE_MODE", default_value = "exact", value_parser = ["exact", "lease"])]
    pub store_mode: String,
    /// Lease mode: most tokens one lease takes.
    #[arg(long, env = "QUOTAD_LEASE_SIZE", default_value_t = 20)]
    pub lease_size: u64,
    /// Lease mode: milliseconds a node may spend a lease before giving back the rest.
    #[arg(long, env = "QUOTAD_LEASE_TTL_MS", default_value_t = 1000)]
    pub lease_ttl_ms: u64,
    /// On Redis: what a check does when Redis cannot be reached.
    #[arg(long, env = "QUOTAD_FAIL_POLICY", default_value = "fail-closed", value_parser = ["fail-closed", "fail-open"])]
    pub fail_policy: String,
    /// On Redis: milliseconds one Redis call may take before it counts as failed.
    #[arg(long, env = "QUOTAD_REDIS_TIMEOUT_MS", default_value_t = 500)]
    pub redis_timeout_ms: u64,
    /// On Redis: milliseconds between polls of the tier catalog (bounds how long a tier change
    /// made on another node takes to apply here).
    #[arg(long, env = "QUOTAD_REDIS_POLL_MS", default_value_t = 250)]
    pub redis_poll_ms: u64,
    /// Worker threads serving the transports (default: one per CPU).
    #[arg(long, env = "QUOTAD_THREADS")]
    pub threads: Option<usize>,
    /// Keep polling the sockets for this many microseconds after a request instead of sleeping
    /// (0 = off). Lowers the latency tail under steady load at the cost of whole cores: use it
    /// on cores dedicated to quotad (see docs/OPERATIONS.md).
    #[arg(long, env = "QUOTAD_BUSY_POLL_US", default_value_t = 0)]
    pub busy_poll_us: u64,
    /// On Redis: replicas that must acknowledge a key or tier change before the admin call
    /// returns (Redis `WAIT`), so that a failover cannot undo it. Default: 1 on a cluster, 0 on
    /// one server.
    #[arg(long, env = "QUOTAD_REDIS_REPLICA_ACKS")]
    pub redis_replica_acks: Option<u32>,
    /// On Redis: milliseconds a change waits for those acknowledgements; past it the change
    /// stands on the master only, logged and counted in
    /// `quotad_store_unreplicated_changes_total`.
    #[arg(long, env = "QUOTAD_REDIS_REPLICA_WAIT_MS", default_value_t = 1000)]
    pub redis_replica_wait_ms: u64,
    /// On TLS Redis: a PEM file of the CA certificates the server's certificate must chain to,
    /// instead of the system's roots.
    #[arg(long, env = "QUOTAD_REDIS_CA")]
    pub redis_ca: Option<std::path::PathBuf>,
    /// On Redis: prefix of every Redis key quotad writes.
    #[arg(long, env = "QUOTAD_REDIS_NAMESPACE", default_value = "quotad")]
    pub redis_namespace: String,
}

impl ServeArgs {
    fn redis_options(
        &self,
        tiers: Option<Vec<crate::tiers::TierSpec>>,
    ) -> anyhow::Result<Option<RedisOptions>> {
        if self.store == "mmap" {
            return Ok(None);
        }
        let mut o = RedisOptions::new(&self.store);
        if let Some(ca) = &self.redis_ca {
            let pem = std::fs::read(ca)
                .with_context(|| format!("--redis-ca {}: cannot read", ca.display()))?;
            o.ca_pem = Some(pem);
        }
        o.namespace = self.redis_namespace.clone();
        o.mode = if self.store_mode == "lease" {
            Mode::Lease {
                size: self.lease_size.max(1),
                ttl: Duration::from_millis(self.lease_ttl_ms.max(1)),
            }
        } else {
            Mode::Exact
        };
        o.fail = if self.fail_policy == "fail-open" {
            FailPolicy::Open
        } else {
            FailPolicy::Closed
        };
        o.timeout = Duration::from_millis(self.redis_timeout_ms.max(1));
        o.poll = Duration::from_millis(self.redis_poll_ms.max(1));
        if let Some(n) = self.redis_replica_acks {
            o.replica_acks = n;
        }
        o.replica_wait = Duration::from_millis(self.redis_replica_wait_ms.max(1));
        o.tiers = tiers;
        o.shadow = self.shadow;
        Ok(Some(o))
    }
}

/// Connects to Redis, retried for up to 30 s, so that a node started with its Redis comes up
/// once Redis does.
async fn open_redis(opts: RedisOptions) -> anyhow::Result<RedisStore> {
    let started = std::time::Instant::now();
    tracing::info!(store = %opts.shown_url(), mode = ?opts.mode, fail = ?opts.fail, "connecting to redis");
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    loop {
        match RedisStore::connect(opts.clone(), Arc::new(QuantaClock::new())).await {
            Ok(r) => {
                tracing::info!(
                    tiers = r.tiers().len(),
                    elapsed_ms = started.elapsed().as_millis() as u64,
                    "redis store ready"
                );
                return Ok(r);
            }
            Err(e @ StoreError::Unavailable(_)) if std::time::Instant::now() < deadline => {
                tracing::warn!(error = %e, "redis not ready; retrying");
                tokio::time::sleep(Duration::from_millis(500)).await;
            }
            Err(e) => return Err(anyhow::anyhow!(e)).context("cannot use the redis store"),
        }
    }
}

/// Opens the data directory.
fn open_local(
    args: &ServeArgs,
    tiers: Option<Vec<crate::tiers::TierSpec>>,
) -> anyhow::Result<LocalStore> {
    let started = std::time::Instant::now();
    tracing::info!(data_dir = %args.data_dir.display(), "opening data directory");
    let mut opts = LocalOptions::new(&args.data_dir);
    opts.tiers = tiers;
    opts.shadow = args.shadow;
    opts.msync_interval = Duration::from_millis(args.msync_interval_ms.max(1));
    if args.data_group_readable {
        opts.modes = crate::store::local::Modes::GROUP_READ;
    }
    let store = LocalStore::open(opts, Arc::new(QuantaClock::new()))
        .with_context(|| format!("cannot open data directory {}", args.data_dir.display()))?;
    tracing::info!(
        tiers = store.tiers().len(),
        elapsed_ms = started.elapsed().as_millis() as u64,
        "data directory loaded"
    );
    Ok(store)
}

/// `--grpc`: an address, or `off` (`None`).
#[derive(Debug, Clone, Copy)]
pub struct GrpcListen(pub Option<SocketAddr>);

fn parse_grpc_addr(s: &str) -> Result<GrpcListen, String> {
    if s.eq_ignore_ascii_case("off") {
        return Ok(GrpcListen(None));
    }
    s.parse()
        .map(|a| GrpcListen(Some(a)))
        .map_err(|e| format!("{e}: give HOST:PORT or off"))
}

/// What the daemon needs besides its store.
struct Settings {
    args: ServeArgs,
    token: AdminToken,
    key_headers: Vec<HeaderName>,
    threads: usize,
}

/// Runs the daemon until a termination signal.
pub fn run(args: ServeArgs) -> anyhow::Result<()> {
    let key_headers = args
        .key_headers
        .iter()
        .map(|h| {
            HeaderName::from_bytes(h.trim().as_bytes())
                .with_context(|| format!("--key-header {h:?} is not a valid header name"))
        })
        .collect::<anyhow::Result<Vec<_>>>()?;
    let tiers = match &args.tiers {
        Some(p) => Some(crate::tiers::load_tiers_file(p)?),
        None => None,
    };
    // The admin token lives in the data directory (on Redis, it is all the directory holds).
    std::os::unix::fs::DirBuilderExt::mode(std::fs::DirBuilder::new().recursive(true), 0o700)
        .create(&args.data_dir)
        .with_context(|| format!("cannot create {}", args.data_dir.display()))?;
    let token =
        AdminToken::load_or_create(std::env::var("QUOTAD_ADMIN_TOKEN").ok(), &args.data_dir)
            .context("cannot load or create the admin token")?;
    match token.source() {
        TokenSource::Env => tracing::info!("admin token: from QUOTAD_ADMIN_TOKEN"),
        TokenSource::File(p) => {
            tracing::info!(file = %p.display(), "admin token: read it from this file")
        }
    }

    if args.shadow {
        tracing::warn!(
            "--shadow: every tier is in shadow mode; limits and quotas are counted, not enforced"
        );
    }
    let threads = args
        .threads
        .unwrap_or_else(|| std::thread::available_parallelism().map_or(1, |n| n.get()))
        .max(1);
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(threads)
        .enable_all()
        .thread_name("quotad")
        .build()
        .context("cannot start the async runtime")?;
    rt.block_on(async move {
        let redis = args.redis_options(tiers.clone())?;
        let settings = Settings {
            args,
            token,
            key_headers,
            threads,
        };
        match redis {
            Some(opts) => serve(open_redis(opts).await?, settings).await,
            None => serve(open_local(&settings.args, tiers)?, settings).await,
        }
    })
}

/// Serves every transport on `store` until SIGTERM or SIGINT; SIGHUP reloads the tiers file.
async fn serve<S: Store>(store: S, settings: Settings) -> anyhow::Result<()> {
    let Settings {
        args,
        token,
        key_headers,
        threads,
    } = settings;
    let http_listener = tokio::net::TcpListener::bind(args.http)
        .await
        .with_context(|| format!("cannot listen on {}", args.http))?;
    tracing::info!(addr = %http_listener.local_addr()?, "http listening");
    let state = Arc::new(AppState {
        store,
        metrics: Arc::new(Metrics::new()),
        admin_token: token,
        http: HttpConfig {
            key_headers,
            max_connections: args.max_connections.max(1),
            header_timeout: Duration::from_secs(args.header_timeout_secs.max(1)),
        },
        binary: BinaryConfig {
            max_connections: args.max_binary_connections.max(1),
            idle_timeout: Duration::from_secs(args.idle_timeout_secs.max(1)),
            frame_timeout: Duration::from_secs(
                args.frame_timeout_secs
                    .clamp(1, args.idle_timeout_secs.max(1)),
            ),
        },
        busy_poll: crate::server::busy_poll::BusyPoll::new(args.busy_poll_us),
        grpc: crate::server::grpc::GrpcConfig {
            key_entry: args.grpc_key_entry.clone(),
            max_connections: args.max_grpc_connections.max(1),
        },
    });
    let bin_listener = tokio::net::TcpListener::bind(args.bind)
        .await
        .with_context(|| format!("cannot listen on {}", args.bind))?;
    tracing::info!(addr = %bin_listener.local_addr()?, "binary listening");
    let unix_listener = match &args.unix {
        Some(p) => {
            // A socket file left by a previous run would make bind fail.
            if std::fs::symlink_metadata(p)
                .is_ok_and(|m| std::os::unix::fs::FileTypeExt::is_socket(&m.file_type()))
            {
                let _ = std::fs::remove_file(p);
            }
            let l = tokio::net::UnixListener::bind(p)
                .with_context(|| format!("cannot listen on unix socket {}", p.display()))?;
            tracing::info!(path = %p.display(), "binary listening on unix socket");
            Some(l)
        }
        None => None,
    };
    let grpc_listener = match args.grpc.0 {
        Some(addr) => {
            let l = tokio::net::TcpListener::bind(addr)
                .await
                .with_context(|| format!("cannot listen on {addr} (--grpc)"))?;
            tracing::info!(addr = %l.local_addr()?, "grpc listening");
            Some(l)
        }
        None => None,
    };
    let permits = Arc::new(tokio::sync::Semaphore::new(state.binary.max_connections));

    let (stop_tx, stop_rx) = watch::channel(false);
    let stopped = |mut rx: watch::Receiver<bool>| async move {
        let _ = rx.wait_for(|s| *s).await;
    };
    let drain = Duration::from_secs(args.drain_secs);
    let http_task = tokio::spawn(http::run(
        http_listener,
        state.clone(),
        stopped(stop_rx.clone()),
        drain,
    ));
    let bin_task = tokio::spawn(binary::run(
        bin_listener,
        state.clone(),
        permits.clone(),
        stopped(stop_rx.clone()),
        drain,
    ));
    let unix_task = unix_listener.map(|l| {
        tokio::spawn(binary::run(
            l,
            state.clone(),
            permits.clone(),
            stopped(stop_rx.clone()),
            drain,
        ))
    });
    let grpc_task = grpc_listener.map(|l| {
        tokio::spawn(crate::server::grpc::run(
            l,
            state.clone(),
            stopped(stop_rx.clone()),
            drain,
        ))
    });
    if state.busy_poll.enabled() {
        tracing::info!(threads, window_us = args.busy_poll_us, "busy polling on");
        for _ in 0..threads {
            let st = state.clone();
            let stop = stop_rx.clone();
            tokio::spawn(async move { st.busy_poll.run(stop).await });
        }
    }
    let upkeep = {
        let st = state.clone();
        let stop = stopped(stop_rx.clone());
        tokio::spawn(async move { upkeep_loop(&st.store, stop).await })
    };

    let mut term = signal(SignalKind::terminate())?;
    let mut int = signal(SignalKind::interrupt())?;
    let mut hup = signal(SignalKind::hangup())?;
    tracing::info!("ready");
    notify(&[sd_notify::NotifyState::Ready]);
    let watchdog = watchdog_task();
    loop {
        tokio::select! {
            _ = term.recv() => { tracing::info!("SIGTERM: shutting down"); break; }
            _ = int.recv() => { tracing::info!("SIGINT: shutting down"); break; }
            _ = hup.recv() => reload_tiers(&state.store, args.tiers.as_deref()).await,
        }
    }
    notify(&[sd_notify::NotifyState::Stopping]);
    if let Some(w) = watchdog {
        w.abort();
    }
    let _ = stop_tx.send(true);
    log_stopped("http", http_task.await);
    let _ = bin_task.await;
    if let Some(t) = grpc_task {
        log_stopped("grpc", t.await);
    }
    if let Some(t) = unix_task {
        let _ = t.await;
    }
    if let Some(p) = &args.unix {
        let _ = std::fs::remove_file(p);
    }
    let _ = upkeep.await;
    // Every check has been answered: the final msync, or every lease given back.
    state.store.upkeep(true).await?;
    if args.store != "mmap" {
        tracing::info!("leases given back to redis; bye");
    } else {
        tracing::info!("counters flushed to disk; bye");
    }
    anyhow::Ok(())
}

/// Logs how the `name` server's task ended.
fn log_stopped<E: std::fmt::Display>(
    name: &str,
    ended: Result<Result<(), E>, tokio::task::JoinError>,
) {
    match ended {
        Ok(Ok(())) => tracing::info!("{name} stopped"),
        Ok(Err(e)) => tracing::error!(error = %e, "{name} server failed"),
        Err(e) => tracing::error!(error = %e, "{name} task failed"),
    }
}

/// Tells systemd (Type=notify) about our state; a no-op outside systemd.
fn notify(state: &[sd_notify::NotifyState<'_>]) {
    if let Err(e) = sd_notify::notify(false, state) {
        tracing::warn!(error = %e, "sd_notify failed");
    }
}

/// Pings the systemd watchdog at half its interval when `WatchdogSec=` is set.
fn watchdog_task() -> Option<tokio::task::JoinHandle<()>> {
    let mut usec = 0u64;
    if !sd_notify::watchdog_enabled(false, &mut usec) || usec == 0 {
        return None;
    }
    let every = Duration::from_micros(usec / 2);
    tracing::info!(
        interval_ms = every.as_millis() as u64,
        "systemd watchdog enabled"
    );
    Some(tokio::spawn(async move {
        let mut tick = tokio::time::interval(every);
        loop {
            tick.tick().await;
            notify(&[sd_notify::NotifyState::Watchdog]);
        }
    }))
}

async fn reload_tiers<S: Store>(store: &S, path: Option<&std::path::Path>) {
    let Some(path) = path else {
        tracing::warn!("SIGHUP: no --tiers file to reload");
        return;
    };
    notify(&[sd_notify::NotifyState::Reloading]);
    let result = match crate::tiers::load_tiers_file(path) {
        Ok(specs) => {
            let n = specs.len();
            store
                .apply_tiers(specs)
                .await
                .map(|()| n)
                .map_err(anyhow::Error::from)
        }
        Err(e) => Err(anyhow::Error::from(e)),
    };
    notify(&[sd_notify::NotifyState::Ready]);
    match result {
        Ok(n) => tracing::info!(tiers = n, "SIGHUP: tiers reloaded"),
        Err(err) => {
            tracing::error!(error = %format!("{err:#}"), "SIGHUP: tier file refused; the previous tiers stay in force")
        }
    }
}
