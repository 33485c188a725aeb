//! The load itself: the keys, how they are picked, and the connections that keep requests in
//! flight (closed loop, or open loop on a schedule) and time each answer.

use std::collections::{BTreeMap, VecDeque};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use bytes::{Buf, BytesMut};
use hdrhistogram::Histogram;

use super::{decision_label, latency_histogram, Distribution, Report, Target, MAX_LATENCY_NS};
use crate::cli::stamped::{realtime_ns, StampedStream};
use crate::protocol::frame::{self, op, DecodeError};
use crate::protocol::result::WireResult;

/// xorshift64*: cheap and good enough to pick keys.
struct Rng(u64);

impl Rng {
    /// A sequence of its own for connection `i`.
    fn for_connection(i: usize) -> Rng {
        Rng(0x9E37_79B9_7F4A_7C15 ^ (i as u64 + 1).wrapping_mul(0xA24B_AED4_963E_E407))
    }

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
pub(super) struct Picker {
    n: usize,
    cdf: Option<Arc<Vec<f64>>>,
}

impl Picker {
    pub(super) fn new(n: usize, dist: Distribution, s: f64) -> Self {
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

pub(super) struct Load {
    pub(super) target: Target,
    pub(super) addr: SocketAddr,
    pub(super) grpc_addr: SocketAddr,
    pub(super) http_authority: String,
    pub(super) connections: usize,
    pub(super) depth: usize,
    pub(super) scope: Option<String>,
    pub(super) keys: Arc<Vec<String>>,
    pub(super) picker: Picker,
    /// `--max-lag-us` in seconds (0 = no limit).
    pub(super) max_lag: f64,
}

struct Shared {
    done: AtomicBool,
    answered: AtomicU64,
    budget: Option<AtomicU64>,
}

impl Shared {
    /// Takes one request from the `--requests` budget: false, and the run is done, once it is
    /// spent.
    fn take_one(&self) -> bool {
        let Some(b) = &self.budget else {
            return true;
        };
        let taken = b
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |v| v.checked_sub(1))
            .is_ok();
        if !taken {
            self.done.store(true, Ordering::Relaxed);
        }
        taken
    }
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
        Target::Grpc | Target::GrpcAuthz => {}
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
        Target::Grpc | Target::GrpcAuthz => bail!("gRPC answers are read by their client"),
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
            // The same names as the binary protocol's decisions: quotad's error code.
            let label = if status == "200" {
                "allowed"
            } else {
                decision_label(std::str::from_utf8(&buf[end + 4..total]).unwrap_or(""))
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
    if matches!(load.target, Target::Grpc | Target::GrpcAuthz) {
        return grpc_connection(load, shared, conn_index, deadline).await;
    }
    let mut hist = latency_histogram()?;
    let mut count = 0u64;
    let stream = tokio::net::TcpStream::connect(match load.target {
        Target::Http => load.http_authority.clone(),
        _ => load.addr.to_string(),
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
    let mut rng = Rng::for_connection(conn_index);
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
                if !shared.take_one() {
                    break;
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

/// A connection of a gRPC target (closed loop): `depth` calls in flight on one HTTP/2
/// connection, latency as the client reads each answer.
async fn grpc_connection(
    load: Arc<Load>,
    shared: Arc<Shared>,
    conn_index: usize,
    deadline: Instant,
) -> anyhow::Result<Tally> {
    use futures_util::stream::{FuturesUnordered, StreamExt};
    let caller =
        super::grpc::Caller::connect(load.grpc_addr, load.target == Target::GrpcAuthz).await?;
    let mut hist = latency_histogram()?;
    let mut rng = Rng::for_connection(conn_index);
    let scope = load.scope.clone().unwrap_or_default();
    let origin = Instant::now();
    let mut in_flight = FuturesUnordered::new();
    let mut decisions: BTreeMap<String, u64> = BTreeMap::new();
    let mut count = 0u64;
    loop {
        let stopping = Instant::now() >= deadline || shared.done.load(Ordering::Relaxed);
        while !stopping && in_flight.len() < load.depth {
            if !shared.take_one() {
                break;
            }
            let key = &load.keys[load.picker.pick(&mut rng)];
            let sent = origin.elapsed().as_nanos() as u64;
            let call = caller.call(key, &scope);
            in_flight.push(async move { (call.await, sent) });
        }
        let Some((label, sent)) = in_flight.next().await else {
            break;
        };
        let ns = (origin.elapsed().as_nanos() as u64).saturating_sub(sent);
        hist.record(ns.clamp(1, MAX_LATENCY_NS))?;
        *decisions.entry(label.to_string()).or_default() += 1;
        count += 1;
        shared.answered.fetch_add(1, Ordering::Relaxed);
    }
    Ok(Tally {
        socket: None,
        client: hist,
        decisions,
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

pub(super) async fn run_load(
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
