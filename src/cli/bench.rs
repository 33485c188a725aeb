//! `quotad bench`: the load generator capacity planners run against a live quotad.
//!
//! It drives the binary protocol (or the HTTP check) with N connections, each keeping up to
//! `--depth` requests in flight, over keys it creates through the admin API (or reads from a
//! file), picked uniformly or by a Zipf law. With `--rate` the load is open-loop: requests are
//! sent on a schedule at the offered rate (as long as a connection has a free pipeline slot), and
//! latency is the time from writing a request to reading its answer. `--sweep` steps the offered
//! rate up past saturation and writes the latency-versus-throughput curve as CSV and SVG; past
//! saturation the achieved rate stops following the offered one.

use std::collections::{BTreeMap, VecDeque};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use bytes::{Buf, BytesMut};
use clap::{Args, ValueEnum};
use hdrhistogram::Histogram;

use super::admin_client::{resolve_token, AdminClient};
use super::stamped::{realtime_ns, StampedStream};
use crate::protocol::frame::{self, op, DecodeError, WireResult};

/// Which transport to load.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Target {
    /// The binary protocol over TCP.
    Binary,
    /// The HTTP check endpoint.
    Http,
}

/// How keys are picked.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Distribution {
    /// Every key equally often.
    Uniform,
    /// Key of rank k with probability ∝ 1/k^s (`--zipf-exponent`).
    Zipf,
}

/// Flags of `quotad bench`.
#[derive(Debug, Clone, Args)]
pub struct BenchArgs {
    /// Transport to load.
    #[arg(long, value_enum, default_value_t = Target::Binary)]
    pub target: Target,
    /// Binary protocol address.
    #[arg(long, default_value = "127.0.0.1:8687")]
    pub addr: SocketAddr,
    /// HTTP base URL (the check endpoint, and the admin API unless --admin-url is given).
    #[arg(long, default_value = "http://127.0.0.1:8686")]
    pub http_url: String,
    /// Admin API base URL (to create the bench tier and keys).
    #[arg(long, env = "QUOTAD_ADMIN_URL")]
    pub admin_url: Option<String>,
    /// Admin token (else QUOTAD_ADMIN_TOKEN, else DATA_DIR/admin.token).
    #[arg(long)]
    pub token: Option<String>,
    /// Data directory holding admin.token.
    #[arg(long, default_value = "./quotad-data")]
    pub data_dir: PathBuf,
    /// Connections.
    #[arg(long, default_value_t = 8)]
    pub connections: usize,
    /// Requests in flight per connection (pipeline depth).
    #[arg(long, default_value_t = 16)]
    pub depth: usize,
    /// Keys to create and use.
    #[arg(long, default_value_t = 1000)]
    pub keys: usize,
    /// Use these raw keys (one per line) instead of creating keys.
    #[arg(long)]
    pub key_file: Option<PathBuf>,
    /// Write the keys this run created to FILE (mode 0600; raw keys, one per line), so that
    /// another `quotad bench` (e.g. against a second node on the same Redis) can use them with
    /// `--key-file`.
    #[arg(long, value_name = "FILE")]
    pub save_keys: Option<PathBuf>,
    /// Tier for created keys (default: a tier `quotad-bench` with limits no bench reaches).
    #[arg(long)]
    pub tier: Option<String>,
    /// Scope to require on every check.
    #[arg(long)]
    pub scope: Option<String>,
    /// Key distribution.
    #[arg(long, value_enum, default_value_t = Distribution::Uniform)]
    pub distribution: Distribution,
    /// Zipf exponent.
    #[arg(long, default_value_t = 1.0)]
    pub zipf_exponent: f64,
    /// Seconds to run (per sweep: in total).
    #[arg(long, default_value_t = 10.0)]
    pub duration: f64,
    /// Stop after this many requests.
    #[arg(long)]
    pub requests: Option<u64>,
    /// Offered rate in requests/s over all connections (0: as fast as the server answers).
    #[arg(long, default_value_t = 0.0)]
    pub rate: f64,
    /// With --rate: sends that fall more than this many µs behind schedule because the load
    /// generator itself was not running (its thread descheduled or stalled) are skipped and
    /// counted, not sent in a burst when it resumes (a burst would queue at the server and be
    /// measured as the server's latency). 0: send every one, however late.
    #[arg(long, default_value_t = 100)]
    pub max_lag_us: u64,
    /// Threads the load generator runs on (it shares the machine with the server it measures).
    #[arg(long, default_value_t = 1)]
    pub threads: usize,
    /// Print the report as JSON.
    #[arg(long)]
    pub json: bool,
    /// Step the offered rate up past saturation; write CSV and SVG.
    #[arg(long)]
    pub sweep: bool,
    /// Steps of the sweep (each at a fraction of the saturating rate, up to 110 %).
    #[arg(long, default_value_t = 10)]
    pub sweep_steps: usize,
    /// Where the sweep's CSV goes.
    #[arg(long, default_value = "quotad-sweep.csv")]
    pub csv: PathBuf,
    /// Where the sweep's SVG chart goes.
    #[arg(long, default_value = "quotad-sweep.svg")]
    pub svg: PathBuf,
}

/// One run's results.
#[derive(Debug)]
pub struct Report {
    /// Offered rate (0 = closed loop).
    pub offered: f64,
    /// Answers received.
    pub requests: u64,
    /// Wall time.
    pub elapsed: Duration,
    /// Latency in nanoseconds: from writing a request to its answer being in the socket's
    /// receive queue (kernel timestamp) when every connection had timestamps, else `client_latency`.
    pub latency: Histogram<u64>,
    /// Latency in nanoseconds as the load generator read the answers (includes its own delays).
    pub client_latency: Histogram<u64>,
    /// Whether `latency` is measured at the socket.
    pub at_socket: bool,
    /// Answers by decision (binary) or status (HTTP).
    pub decisions: BTreeMap<String, u64>,
    /// Scheduled sends skipped because they fell more than `--max-lag-us` behind (open loop).
    pub skipped: u64,
}

impl Report {
    fn throughput(&self) -> f64 {
        self.requests as f64 / self.elapsed.as_secs_f64().max(1e-9)
    }

    fn us(&self, q: f64) -> f64 {
        micros_at(&self.latency, q)
    }

    /// Where `latency` is measured: "socket" or "client".
    fn source(&self) -> &'static str {
        if self.at_socket {
            "socket"
        } else {
            "client"
        }
    }

    fn to_json(&self) -> serde_json::Value {
        let q = |h: &Histogram<u64>| {
            let us = |q: f64| micros_at(h, q);
            serde_json::json!({
                "p50": us(0.5), "p90": us(0.9), "p99": us(0.99),
                "p999": us(0.999), "max": h.max() as f64 / 1000.0,
            })
        };
        serde_json::json!({
            "offeredRate": self.offered,
            "skipped": self.skipped,
            "requests": self.requests,
            "seconds": self.elapsed.as_secs_f64(),
            "throughput": self.throughput(),
            "latencyMicros": q(&self.latency),
            "latencySource": self.source(),
            "clientLatencyMicros": q(&self.client_latency),
            "decisions": self.decisions,
        })
    }
}

/// The longest latency a histogram holds (60 s); longer ones are recorded as this.
const MAX_LATENCY_NS: u64 = 60_000_000_000;

/// A latency histogram in nanoseconds, 1 ns to [`MAX_LATENCY_NS`], 3 significant digits.
fn latency_histogram() -> anyhow::Result<Histogram<u64>> {
    Ok(Histogram::new_with_bounds(1, MAX_LATENCY_NS, 3)?)
}

/// Quantile `q` of a nanosecond histogram, in microseconds.
fn micros_at(h: &Histogram<u64>, q: f64) -> f64 {
    h.value_at_quantile(q) as f64 / 1000.0
}

/// xorshift64*: cheap and good enough to pick keys.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }
    fn unit(&mut self) -> f64 {
        (self.next() >> 11) as f64 / (1u64 << 53) as f64
    }
}

/// Picks key indices.
#[derive(Clone)]
struct Picker {
    n: usize,
    cdf: Option<Arc<Vec<f64>>>,
}

impl Picker {
    fn new(n: usize, dist: Distribution, s: f64) -> Self {
        let cdf = (dist == Distribution::Zipf).then(|| {
            let mut acc = 0.0;
            let mut v: Vec<f64> = (1..=n)
                .map(|k| {
                    acc += 1.0 / (k as f64).powf(s);
                    acc
                })
                .collect();
            for x in &mut v {
                *x /= acc;
            }
            Arc::new(v)
        });
        Picker { n, cdf }
    }

    fn pick(&self, rng: &mut Rng) -> usize {
        match &self.cdf {
            None => (rng.next() % self.n as u64) as usize,
            Some(cdf) => {
                let u = rng.unit();
                cdf.partition_point(|&c| c < u).min(self.n - 1)
            }
        }
    }
}

struct Load {
    target: Target,
    addr: SocketAddr,
    http_authority: String,
    connections: usize,
    depth: usize,
    scope: Option<String>,
    keys: Arc<Vec<String>>,
    picker: Picker,
    /// `--max-lag-us` in seconds (0 = no limit).
    max_lag: f64,
}

async fn prepare_keys(a: &BenchArgs) -> anyhow::Result<Vec<String>> {
    if let Some(f) = &a.key_file {
        let text =
            std::fs::read_to_string(f).with_context(|| format!("cannot read {}", f.display()))?;
        let keys: Vec<String> = text
            .lines()
            .map(str::trim)
            .filter(|l| !l.is_empty())
            .map(str::to_string)
            .collect();
        if keys.is_empty() {
            bail!("{} holds no keys", f.display());
        }
        return Ok(keys);
    }
    let token = resolve_token(a.token.as_deref(), &a.data_dir)?;
    let admin = AdminClient::new(a.admin_url.as_deref().unwrap_or(&a.http_url), token)?;
    let tier = match &a.tier {
        Some(t) => t.clone(),
        None => {
            let body =
                serde_json::json!({"limits": [{"requests": 1_000_000_000u64, "periodSeconds": 1}]});
            let (st, b) = admin
                .request("PUT", "/tiers/quotad-bench", Some(body))
                .await?;
            if st != 200 {
                bail!("cannot create the bench tier: HTTP {st} {b}");
            }
            "quotad-bench".to_string()
        }
    };
    let mut keys = Vec::with_capacity(a.keys);
    for i in 0..a.keys.max(1) {
        let mut body = serde_json::json!({"consumer": format!("bench-{}", i % 100), "tier": tier, "name": "quotad bench"});
        if let Some(s) = &a.scope {
            body["scopes"] = serde_json::json!([s]);
        }
        let (st, b) = admin.request("POST", "/keys", Some(body)).await?;
        if st != 201 {
            bail!("cannot create a bench key: HTTP {st} {b}");
        }
        keys.push(
            b["key"]
                .as_str()
                .context("no key in the admin answer")?
                .to_string(),
        );
        if i % 200 == 199 {
            eprint!("\rcreated {} keys", i + 1);
        }
    }
    if a.keys >= 200 {
        eprintln!();
    }
    if let Some(path) = &a.save_keys {
        use std::io::Write as _;
        use std::os::unix::fs::OpenOptionsExt as _;
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(0o600)
            .open(path)
            .with_context(|| format!("cannot write {}", path.display()))?;
        for k in &keys {
            writeln!(f, "{k}").with_context(|| format!("cannot write {}", path.display()))?;
        }
    }
    Ok(keys)
}

struct Shared {
    done: AtomicBool,
    answered: AtomicU64,
    budget: Option<AtomicU64>,
}

fn encode_request(
    target: Target,
    out: &mut Vec<u8>,
    id: u64,
    key: &str,
    scope: &str,
    authority: &str,
) {
    match target {
        Target::Binary => {
            frame::put_check_frame(out, id, 1, key.as_bytes(), scope.as_bytes());
        }
        Target::Http => {
            out.extend_from_slice(b"GET /v1/check HTTP/1.1\r\nHost: ");
            out.extend_from_slice(authority.as_bytes());
            out.extend_from_slice(b"\r\nX-API-Key: ");
            out.extend_from_slice(key.as_bytes());
            if !scope.is_empty() {
                out.extend_from_slice(b"\r\nX-Quota-Scope: ");
                out.extend_from_slice(scope.as_bytes());
            }
            out.extend_from_slice(b"\r\n\r\n");
        }
    }
}

/// Parses one answer at the start of `buf`: (decision label, bytes used), or None if incomplete.
fn parse_answer(target: Target, buf: &[u8]) -> anyhow::Result<Option<(&'static str, usize)>> {
    match target {
        Target::Binary => match frame::decode_any(buf) {
            Ok((op, _, payload, len)) => {
                let label = match op {
                    op::RESULT => WireResult::get(payload).map_or("error", |r| r.code()),
                    _ => "error",
                };
                Ok(Some((label, len)))
            }
            Err(DecodeError::Incomplete) => Ok(None),
            Err(DecodeError::Fatal { .. }) => {
                bail!("the server sent a frame this client cannot read")
            }
        },
        Target::Http => {
            let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") else {
                return Ok(None);
            };
            let head = std::str::from_utf8(&buf[..end]).context("non-UTF-8 response head")?;
            let status = head.get(9..12).unwrap_or("");
            let len: usize = head
                .lines()
                .find_map(|l| {
                    let (k, v) = l.split_once(':')?;
                    k.eq_ignore_ascii_case("content-length")
                        .then(|| v.trim().parse().ok())?
                })
                .unwrap_or(0);
            let total = end + 4 + len;
            if buf.len() < total {
                return Ok(None);
            }
            let label = match status {
                "200" => "200",
                "400" => "400",
                "401" => "401",
                "403" => "403",
                "429" => "429",
                _ => "other",
            };
            Ok(Some((label, total)))
        }
    }
}

async fn connection(
    load: Arc<Load>,
    shared: Arc<Shared>,
    conn_index: usize,
    credits: Option<Arc<Vec<Credit>>>,
    deadline: Instant,
) -> anyhow::Result<Tally> {
    let mut hist = latency_histogram()?;
    let mut count = 0u64;
    let stream = tokio::net::TcpStream::connect(match load.target {
        Target::Binary => load.addr.to_string(),
        Target::Http => load.http_authority.clone(),
    })
    .await
    .context("cannot connect")?;
    // Kernel receive timestamps only when the load is paced to measure latency: at saturation
    // they would cost both sides CPU (see `StampedStream::new`).
    let stream = StampedStream::new(stream, credits.is_some())?;
    let stamped = stream.stamped();
    // With timestamps, `hist` is latency at the socket and this one latency as read; without,
    // `hist` is latency as read and this one is not needed.
    let mut client_hist = stamped.then(latency_histogram).transpose()?;
    let mut rbuf = BytesMut::with_capacity(64 * 1024);
    if load.target == Target::Binary {
        let mut h = Vec::new();
        frame::put_hello(&mut h, 0, frame::VERSION);
        stream.write_all(&h).await?;
        loop {
            if stream.read(&mut rbuf).await?.0 == 0 {
                bail!("connection closed during HELLO");
            }
            if let Ok((op, _, _, len)) = frame::decode_any(&rbuf) {
                if op != op::HELLO_OK {
                    bail!("server refused HELLO");
                }
                rbuf.advance(len);
                break;
            }
        }
    }
    let mut rng =
        Rng(0x9E37_79B9_7F4A_7C15 ^ (conn_index as u64 + 1).wrapping_mul(0xA24B_AED4_963E_E407));
    let scope = load.scope.clone().unwrap_or_default();
    // Open loop: the pacer adds to this connection's credit; each unit is one request to send.
    let paced = credits.as_ref().map(|c| &c[conn_index]);
    let mut credit = 0u64;
    // Per request in flight: when it was written (ns). With the kernel's receive timestamps the
    // clock is theirs (CLOCK_REALTIME), else the monotonic clock: one clock read per write and
    // one per read, whatever the pipeline depth.
    let origin = Instant::now();
    let clock = move || {
        if stamped {
            realtime_ns()
        } else {
            origin.elapsed().as_nanos() as u64
        }
    };
    let mut in_flight: VecDeque<u64> = VecDeque::with_capacity(load.depth);
    let mut decisions: Vec<(&'static str, u64)> = Vec::new();
    let mut wbuf = Vec::with_capacity(64 * 1024);
    let mut id = 1u64;
    loop {
        let now = Instant::now();
        let stopping = now >= deadline || shared.done.load(Ordering::Relaxed);
        if let Some(c) = paced {
            credit += c.due.swap(0, Ordering::Relaxed);
        }
        let mut fresh = 0;
        if !stopping {
            while in_flight.len() + fresh < load.depth {
                if paced.is_some() {
                    if credit == 0 {
                        break;
                    }
                    credit -= 1;
                }
                if let Some(b) = &shared.budget {
                    if b.fetch_update(Ordering::Relaxed, Ordering::Relaxed, |v| v.checked_sub(1))
                        .is_err()
                    {
                        shared.done.store(true, Ordering::Relaxed);
                        break;
                    }
                }
                let key = &load.keys[load.picker.pick(&mut rng)];
                encode_request(
                    load.target,
                    &mut wbuf,
                    id,
                    key,
                    &scope,
                    &load.http_authority,
                );
                id += 1;
                fresh += 1;
            }
        }
        if !wbuf.is_empty() {
            // Latency runs from the write.
            let written = clock();
            in_flight.extend(std::iter::repeat_n(written, fresh));
            stream.write_all(&wbuf).await?;
            wbuf.clear();
        }
        if in_flight.is_empty() {
            if stopping {
                break;
            }
            if let Some(c) = paced {
                let until = tokio::time::Instant::from_std(deadline);
                tokio::select! {
                    _ = c.ready.notified() => {}
                    _ = tokio::time::sleep_until(until) => {}
                }
            }
            continue;
        }
        let read = match paced {
            Some(c) if !stopping && in_flight.len() < load.depth => {
                tokio::select! {
                    r = stream.read(&mut rbuf) => Some(r?),
                    _ = c.ready.notified() => None,
                }
            }
            _ => Some(stream.read(&mut rbuf).await?),
        };
        let received = match read {
            Some((0, _)) => bail!("the server closed the connection"),
            Some((_, t)) => t,
            None => None,
        };
        let now = clock();
        let mut used = 0;
        let mut batch = 0u64;
        while let Some((label, len)) = parse_answer(load.target, &rbuf[used..])? {
            used += len;
            batch += 1;
            let Some(written) = in_flight.pop_front() else {
                bail!("an answer for no request");
            };
            let read_ns = now.saturating_sub(written);
            if let Some(c) = client_hist.as_mut() {
                c.record(read_ns.clamp(1, MAX_LATENCY_NS))?;
            }
            // At the socket: when the kernel queued the last segment of this read. Answers that
            // arrived in earlier segments of the same read are given that later time (an
            // overestimate, never an underestimate).
            let ns = match received {
                Some(t) if stamped => t.saturating_sub(written).min(read_ns),
                _ => read_ns,
            };
            hist.record(ns.clamp(1, MAX_LATENCY_NS))?;
            match decisions.iter_mut().find(|(l, _)| *l == label) {
                Some((_, n)) => *n += 1,
                None => decisions.push((label, 1)),
            }
            count += 1;
        }
        rbuf.advance(used);
        shared.answered.fetch_add(batch, Ordering::Relaxed);
    }
    let (socket, client) = match client_hist {
        Some(c) => (Some(hist), c),
        None => (None, hist),
    };
    Ok(Tally {
        socket,
        client,
        decisions: decisions
            .into_iter()
            .map(|(l, n)| (l.to_string(), n))
            .collect(),
        count,
    })
}

/// Requests one connection may send under `--rate`, handed out by the pacer.
#[derive(Default)]
struct Credit {
    due: AtomicU64,
    ready: tokio::sync::Notify,
}

/// One connection's results.
struct Tally {
    /// Latency at the socket (kernel receive time), when the socket gave timestamps.
    socket: Option<Histogram<u64>>,
    /// Latency as the load generator read the answers.
    client: Histogram<u64>,
    decisions: BTreeMap<String, u64>,
    count: u64,
}

async fn run_load(
    load: &Arc<Load>,
    rate: f64,
    seconds: f64,
    budget: Option<u64>,
    progress: bool,
) -> anyhow::Result<Report> {
    let shared = Arc::new(Shared {
        done: AtomicBool::new(false),
        answered: AtomicU64::new(0),
        budget: budget.map(AtomicU64::new),
    });
    let start = Instant::now();
    let deadline = start + Duration::from_secs_f64(seconds.max(0.1));
    // Open loop (`--rate`): one credit counter per connection, filled by the pacer below.
    let credits: Option<Arc<Vec<Credit>>> = (rate > 0.0).then(|| {
        Arc::new(
            (0..load.connections.max(1))
                .map(|_| Credit::default())
                .collect(),
        )
    });
    let mut tasks = Vec::new();
    for i in 0..load.connections.max(1) {
        tasks.push(tokio::spawn(connection(
            load.clone(),
            shared.clone(),
            i,
            credits.clone(),
            deadline,
        )));
    }
    // The pacer: a task that hands out the requests as they fall due, round-robin over the
    // connections, polling the clock between two turns of the runtime (it yields after each
    // look, so the connections run in between and the runtime polls the sockets). tokio's timer
    // ticks in milliseconds, and a sleeping thread wakes tens of microseconds late; either would
    // send the load in bursts and measure the bursts' queueing as server latency. The price: with
    // --rate the load generator keeps one of its threads busy.
    let pacer = credits.map(|credits| {
        let shared = shared.clone();
        let max_lag = load.max_lag;
        tokio::spawn(async move {
            let mut released = 0u64;
            let mut skipped = 0u64;
            let mut next = 0usize;
            while Instant::now() < deadline && !shared.done.load(Ordering::Relaxed) {
                let t = start.elapsed().as_secs_f64();
                let due = (t * rate) as u64;
                // Back from a pause of the load generator's own: what fell due more than
                // `max_lag` ago is not sent (see `--max-lag-us`).
                if max_lag > 0.0 {
                    let stale = ((t - max_lag).max(0.0) * rate) as u64;
                    if stale > released {
                        skipped += stale - released;
                        released = stale;
                    }
                }
                for _ in released..due {
                    let c = &credits[next % credits.len()];
                    c.due.fetch_add(1, Ordering::Relaxed);
                    c.ready.notify_one();
                    next += 1;
                }
                released = released.max(due);
                tokio::task::yield_now().await;
            }
            skipped
        })
    });
    let ticker = progress.then(|| {
        let shared = shared.clone();
        tokio::spawn(async move {
            let tty = std::io::IsTerminal::is_terminal(&std::io::stderr());
            let mut last = 0u64;
            loop {
                tokio::time::sleep(Duration::from_secs(1)).await;
                let n = shared.answered.load(Ordering::Relaxed);
                let line = format!(
                    "{:>5.1}s  {:>10} answers  {:>10.0} req/s",
                    start.elapsed().as_secs_f64(),
                    n,
                    (n - last) as f64
                );
                last = n;
                if tty {
                    eprint!("\r{line}");
                } else {
                    eprintln!("{line}");
                }
            }
        })
    });
    let mut socket = Some(latency_histogram()?);
    let mut client = latency_histogram()?;
    let mut decisions = BTreeMap::new();
    let mut requests = 0;
    for t in tasks {
        let tally = t.await.context("load task panicked")??;
        client.add(&tally.client)?;
        socket = match (socket, tally.socket) {
            (Some(mut all), Some(h)) => {
                all.add(h)?;
                Some(all)
            }
            _ => None,
        };
        for (k, v) in tally.decisions {
            *decisions.entry(k).or_default() += v;
        }
        requests += tally.count;
    }
    let elapsed = start.elapsed();
    let skipped = match pacer {
        Some(p) => p.await.unwrap_or(0),
        None => 0,
    };
    if let Some(t) = ticker {
        t.abort();
        if std::io::IsTerminal::is_terminal(&std::io::stderr()) {
            eprintln!();
        }
    }
    Ok(Report {
        offered: rate,
        requests,
        elapsed,
        at_socket: socket.is_some(),
        latency: socket.unwrap_or_else(|| client.clone()),
        client_latency: client,
        decisions,
        skipped,
    })
}

fn print_report(r: &Report, a: &BenchArgs) {
    println!(
        "target {:?}, {} connections x depth {}, {} keys ({:?})",
        a.target, a.connections, a.depth, a.keys, a.distribution
    );
    println!(
        "{} requests in {:.2} s: {:.0} req/s",
        r.requests,
        r.elapsed.as_secs_f64(),
        r.throughput()
    );
    if r.offered > 0.0 {
        println!(
            "offered {:.0} req/s; {} scheduled sends skipped ({:.3} %) for falling more than {} us behind while this load generator was not running",
            r.offered,
            r.skipped,
            100.0 * r.skipped as f64 / (r.offered * r.elapsed.as_secs_f64()).max(1.0),
            a.max_lag_us
        );
    }
    let line = |what: &str, h: &Histogram<u64>| {
        let us = |q: f64| micros_at(h, q);
        println!(
            "latency us, {what}: p50 {:.1}  p90 {:.1}  p99 {:.1}  p99.9 {:.1}  max {:.1}",
            us(0.5),
            us(0.9),
            us(0.99),
            us(0.999),
            h.max() as f64 / 1000.0
        );
    };
    if r.at_socket {
        line("answer in the socket (kernel receive time)", &r.latency);
    }
    line("as this load generator read it", &r.client_latency);
    let d: Vec<String> = r
        .decisions
        .iter()
        .map(|(k, v)| format!("{k} {v}"))
        .collect();
    println!("decisions: {}", d.join(", "));
}

/// The sweep's CSV.
pub fn sweep_csv(points: &[Report]) -> String {
    let mut s =
        String::from("offered_rps,achieved_rps,p50_us,p90_us,p99_us,p999_us,max_us,requests\n");
    for r in points {
        s.push_str(&format!(
            "{:.0},{:.0},{:.1},{:.1},{:.1},{:.1},{:.1},{}\n",
            r.offered,
            r.throughput(),
            r.us(0.5),
            r.us(0.9),
            r.us(0.99),
            r.us(0.999),
            r.latency.max() as f64 / 1000.0,
            r.requests
        ));
    }
    s
}

/// The sweep's chart: latency (log scale) against achieved throughput, p50 / p99 / p99.9.
pub fn sweep_svg(points: &[Report], title: &str) -> String {
    let (w, h, ml, mr, mt, mb) = (800.0, 480.0, 80.0, 30.0, 50.0, 60.0);
    let pw = w - ml - mr;
    let ph = h - mt - mb;
    let xmax = points.iter().map(Report::throughput).fold(1.0, f64::max) * 1.05;
    let lat: Vec<f64> = points
        .iter()
        .flat_map(|r| [r.us(0.5), r.us(0.99), r.us(0.999)])
        .collect();
    let ymin = lat.iter().cloned().fold(f64::MAX, f64::min).max(1.0);
    let ymax = lat.iter().cloned().fold(1.0, f64::max).max(ymin * 10.0);
    let (l0, l1) = (ymin.log10().floor(), ymax.log10().ceil());
    let x = |v: f64| ml + v / xmax * pw;
    let y = |v: f64| mt + ph - (v.max(1.0).log10() - l0) / (l1 - l0).max(1.0) * ph;
    let esc = |s: &str| {
        s.replace('&', "&amp;")
            .replace('<', "&lt;")
            .replace('>', "&gt;")
    };
    let mut s = format!(
        "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"{w}\" height=\"{h}\" viewBox=\"0 0 {w} {h}\" font-family=\"sans-serif\" font-size=\"12\">\n\
         <rect width=\"100%\" height=\"100%\" fill=\"white\"/>\n\
         <text x=\"{}\" y=\"25\" text-anchor=\"middle\" font-size=\"16\">{}</text>\n",
        w / 2.0,
        esc(title)
    );
    s.push_str(&format!(
        "<line x1=\"{ml}\" y1=\"{}\" x2=\"{}\" y2=\"{}\" stroke=\"black\"/>\n<line x1=\"{ml}\" y1=\"{mt}\" x2=\"{ml}\" y2=\"{}\" stroke=\"black\"/>\n",
        mt + ph,
        ml + pw,
        mt + ph,
        mt + ph
    ));
    for i in 0..=5 {
        let v = xmax * i as f64 / 5.0;
        s.push_str(&format!(
            "<line x1=\"{0:.1}\" y1=\"{1}\" x2=\"{0:.1}\" y2=\"{2}\" stroke=\"#ddd\"/>\n<text x=\"{0:.1}\" y=\"{3}\" text-anchor=\"middle\">{4:.0}k</text>\n",
            x(v),
            mt,
            mt + ph,
            mt + ph + 18.0,
            v / 1000.0
        ));
    }
    let mut e = l0;
    while e <= l1 {
        let v = 10f64.powf(e);
        s.push_str(&format!(
            "<line x1=\"{ml}\" y1=\"{0:.1}\" x2=\"{1}\" y2=\"{0:.1}\" stroke=\"#ddd\"/>\n<text x=\"{2}\" y=\"{0:.1}\" text-anchor=\"end\" dominant-baseline=\"middle\">{3}</text>\n",
            y(v),
            ml + pw,
            ml - 6.0,
            if v >= 1000.0 { format!("{} ms", v / 1000.0) } else { format!("{v} us") }
        ));
        e += 1.0;
    }
    s.push_str(&format!(
        "<text x=\"{}\" y=\"{}\" text-anchor=\"middle\">achieved throughput (requests/s)</text>\n\
         <text x=\"18\" y=\"{}\" text-anchor=\"middle\" transform=\"rotate(-90 18 {})\">latency (log scale)</text>\n",
        ml + pw / 2.0,
        h - 15.0,
        mt + ph / 2.0,
        mt + ph / 2.0
    ));
    for (i, (q, name, color)) in [
        (0.5, "p50", "#1f77b4"),
        (0.99, "p99", "#ff7f0e"),
        (0.999, "p99.9", "#d62728"),
    ]
    .into_iter()
    .enumerate()
    {
        let pts: Vec<String> = points
            .iter()
            .map(|r| format!("{:.1},{:.1}", x(r.throughput()), y(r.us(q))))
            .collect();
        s.push_str(&format!(
            "<polyline fill=\"none\" stroke=\"{color}\" stroke-width=\"2\" points=\"{}\"/>\n",
            pts.join(" ")
        ));
        for p in &pts {
            let (px, py) = p.split_once(',').unwrap_or(("0", "0"));
            s.push_str(&format!(
                "<circle cx=\"{px}\" cy=\"{py}\" r=\"3\" fill=\"{color}\"/>\n"
            ));
        }
        let ly = mt + 15.0 + 16.0 * i as f64;
        s.push_str(&format!(
            "<line x1=\"{0}\" y1=\"{1}\" x2=\"{2}\" y2=\"{1}\" stroke=\"{color}\" stroke-width=\"2\"/>\n<text x=\"{3}\" y=\"{1}\" dominant-baseline=\"middle\">{name}</text>\n",
            ml + 10.0,
            ly,
            ml + 30.0,
            ml + 36.0
        ));
    }
    s.push_str("</svg>\n");
    s
}

/// Runs `quotad bench`.
pub fn run(a: BenchArgs) -> anyhow::Result<()> {
    if a.connections == 0 || a.depth == 0 {
        bail!("--connections and --depth must be at least 1");
    }
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(a.threads.max(1))
        .enable_all()
        .build()?;
    rt.block_on(async {
        let keys = prepare_keys(&a).await?;
        let load = Arc::new(Load {
            target: a.target,
            addr: a.addr,
            http_authority: super::admin_client::authority(&a.http_url)?,
            connections: a.connections,
            depth: a.depth,
            scope: a.scope.clone(),
            picker: Picker::new(keys.len(), a.distribution, a.zipf_exponent),
            keys: Arc::new(keys),
            max_lag: a.max_lag_us as f64 / 1e6,
        });
        if !a.sweep {
            let r = run_load(&load, a.rate, a.duration, a.requests, true).await?;
            if a.json {
                println!("{}", serde_json::to_string_pretty(&r.to_json())?);
            } else {
                print_report(&r, &a);
            }
            return Ok(());
        }
        let steps = a.sweep_steps.max(2);
        let step_secs = (a.duration / (steps + 2) as f64).max(0.5);
        eprintln!("probing the saturating rate for {step_secs:.1} s");
        let probe = run_load(&load, 0.0, step_secs, None, false).await?;
        let sat = probe.throughput();
        eprintln!("saturation ~ {sat:.0} req/s; stepping up to 110 %");
        let mut points = Vec::new();
        for i in 1..=steps + 1 {
            let offered = sat * i as f64 / steps as f64;
            let r = run_load(&load, offered, step_secs, None, false).await?;
            eprintln!(
                "offered {:>10.0}  achieved {:>10.0}  p50 {:>8.1} us  p99 {:>8.1} us",
                offered,
                r.throughput(),
                r.us(0.5),
                r.us(0.99)
            );
            points.push(r);
        }
        std::fs::write(&a.csv, sweep_csv(&points))
            .with_context(|| format!("cannot write {}", a.csv.display()))?;
        let title = format!(
            "quotad {:?}: latency vs throughput ({} conns x depth {}, {} keys)",
            a.target,
            a.connections,
            a.depth,
            load.keys.len()
        );
        std::fs::write(&a.svg, sweep_svg(&points, &title))
            .with_context(|| format!("cannot write {}", a.svg.display()))?;
        if a.json {
            let v: Vec<serde_json::Value> = points.iter().map(Report::to_json).collect();
            println!(
                "{}",
                serde_json::to_string_pretty(&serde_json::json!({"saturation": sat, "points": v}))?
            );
        } else {
            println!(
                "saturation ~ {sat:.0} req/s; wrote {} and {}",
                a.csv.display(),
                a.svg.display()
            );
        }
        Ok(())
    })
}
