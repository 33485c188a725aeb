//! The binary protocol server over TCP and Unix sockets (`docs/PROTOCOL.md`).
//!
//! Per connection: read whatever the socket has, decode every complete frame in the buffer, decide
//! each against the shared store (on Redis, all of a read's checks concurrently), append every answer to one output buffer, and write it with one
//! call. A framing error is answered with an ERROR frame and the connection is closed; other
//! connections are unaffected. A connection limit and an idle timeout bound what clients can hold.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use bytes::{Buf, BytesMut};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::sync::{watch, Semaphore};

use super::AppState;
use crate::engine::decision::{AuthFailure, Decision, Verdict};
use crate::engine::Engine;
use crate::metrics::{Stopwatch, Tally, Transport};
use crate::protocol::frame::{
    self, op, BatchIter, CheckReq, DecodeError, ErrorCode, Frame, WireResult,
};

/// Binary listener settings.
#[derive(Debug, Clone)]
pub struct BinaryConfig {
    /// Most connections open at once (over TCP and Unix together).
    pub max_connections: usize,
    /// A connection with no complete request for this long is closed.
    pub idle_timeout: Duration,
}

impl Default for BinaryConfig {
    fn default() -> Self {
        BinaryConfig {
            max_connections: 10_000,
            idle_timeout: Duration::from_secs(60),
        }
    }
}

/// Serves the binary protocol on `listener` until `shutdown`; then stops accepting, lets open
/// connections finish the requests they have sent (up to `drain`), and returns.
pub async fn run<L: super::Accept>(
    listener: L,
    state: Arc<AppState>,
    permits: Arc<Semaphore>,
    shutdown: impl Future<Output = ()>,
    drain: Duration,
) -> std::io::Result<()> {
    let (stop_tx, stop_rx) = watch::channel(false);
    let mut tasks = tokio::task::JoinSet::new();
    tokio::pin!(shutdown);
    while let Some((conn, permit)) = super::accept_admitted(
        &listener,
        &permits,
        &mut shutdown,
        &state,
        Transport::Binary,
        || {
            let mut out = Vec::new();
            frame::put_error(&mut out, 0, ErrorCode::Busy, "too many connections");
            out
        },
    )
    .await
    {
        let st = state.clone();
        let stop = stop_rx.clone();
        tasks.spawn(async move {
            let _guard = st.metrics.connection(Transport::Binary);
            if let Err(e) = serve_conn(conn, &st, stop).await {
                tracing::debug!(error = %e, "binary connection ended with an error");
            }
            drop(permit);
        });
        // Reap finished connections so the set does not grow.
        while tasks.try_join_next().is_some() {}
    }
    let _ = stop_tx.send(true);
    let all = async { while tasks.join_next().await.is_some() {} };
    if tokio::time::timeout(drain, all).await.is_err() {
        tracing::warn!("binary connections still open after the drain period");
    }
    Ok(())
}

fn reason_code(r: AuthFailure) -> u8 {
    match r {
        AuthFailure::Missing => 1,
        AuthFailure::Malformed => 2,
        AuthFailure::Unknown => 3,
        AuthFailure::Revoked => 4,
        AuthFailure::Expired => 5,
    }
}

/// The wire form of a decision.
pub fn to_wire(d: &Decision) -> WireResult {
    let (decision, reason) = match d.verdict {
        Verdict::Allowed => (0, 0),
        Verdict::Unauthorized(r) => (1, reason_code(r)),
        Verdict::Forbidden => (2, 0),
        Verdict::PlanRequired => (3, 0),
        Verdict::RateLimited(_) => (4, 0),
        Verdict::QuotaExceeded => (5, 0),
        Verdict::Unavailable => (6, 0),
    };
    let primary_index = d
        .primary()
        .and_then(|p| d.limits().iter().position(|l| std::ptr::eq(l, p)))
        .unwrap_or(0);
    let p = d.primary();
    WireResult {
        decision,
        reason,
        limit_index: primary_index as u8,
        retry_after: d
            .retry_after
            .map_or(0, |r| r.min(u64::from(u32::MAX)) as u32),
        limit: p.map_or(0, |p| p.limit),
        remaining: p.map_or(0, |p| p.remaining),
        reset: p.map_or(0, |p| p.reset),
        key_id: d.key_id.map_or(0, |k| k.0),
    }
}

/// One check's key, scope and cost, as read from its frame.
type Parsed<'a> = (Option<&'a str>, Option<&'a str>, u64);

/// The key, scope and cost of one check; `Err` is a request-level error (bad scope) that keeps
/// the connection.
fn parse_req<'a>(req: &CheckReq<'a>) -> Result<Parsed<'a>, &'static str> {
    let scope = match std::str::from_utf8(req.scope) {
        Ok("") => None,
        Ok(s) if crate::tiers::valid_scope(s) => Some(s),
        _ => return Err("invalid scope"),
    };
    // A key that is not UTF-8 cannot be one of ours: let the engine call it malformed.
    let key = match req.key {
        [] => None,
        k => Some(std::str::from_utf8(k).unwrap_or("\u{fffd}")),
    };
    Ok((key, scope, u64::from(req.cost.max(1))))
}

/// Decides one check on this node's engine at `now` (read once for all the checks of a read),
/// counting it in `tally` (the caller times the read's checks together), and appends its 40-byte
/// answer body to `out`. The answer is written from the decision where it was made: no decision or
/// answer value is returned and copied (see `Engine::check_at_with`).
fn decide(
    tally: &mut Tally,
    engine: &Engine,
    now: u64,
    (key, scope, cost): Parsed<'_>,
    out: &mut Vec<u8>,
) {
    engine.check_at_with(key, scope, cost, now, |d| {
        tally.count_decision(d.verdict);
        to_wire(d).put(out);
    });
}

/// Appends the answer to a HELLO or PING; returns false for other frames.
fn answer_control(f: &Frame<'_>, out: &mut Vec<u8>) -> bool {
    match *f {
        Frame::Hello { id, .. } => frame::put_hello_ok(out, id),
        Frame::Ping { id, payload } => frame::put_pong(out, id, payload),
        _ => return false,
    }
    true
}

/// Appends the answer to one decoded frame, decided on this node's engine at `now`; its checks
/// are counted in `tally`.
fn answer(
    state: &AppState,
    tally: &mut Tally,
    (engine, now): (&Engine, u64),
    f: &Frame<'_>,
    out: &mut Vec<u8>,
) {
    if answer_control(f, out) {
        return;
    }
    match *f {
        Frame::Hello { .. } | Frame::Ping { .. } => {}
        Frame::Check { id, req } => match parse_req(&req) {
            Ok(p) => {
                frame::put_header(out, op::RESULT, id, frame::RESULT_LEN);
                decide(tally, engine, now, p, out);
            }
            Err(m) => {
                state.metrics.record_bad_request(Transport::Binary);
                frame::put_error(out, id, ErrorCode::BadFrame, m);
            }
        },
        Frame::Batch { id, count, body } => {
            // A batch with a bad check is refused whole: none of its checks is decided.
            let parsed: Result<Vec<Parsed<'_>>, _> =
                BatchIter::new(body, count).map(|r| parse_req(&r)).collect();
            let parsed = match parsed {
                Ok(p) => p,
                Err(m) => {
                    state.metrics.record_bad_request(Transport::Binary);
                    frame::put_error(out, id, ErrorCode::BadFrame, m);
                    return;
                }
            };
            frame::put_batch_result_header(out, id, parsed.len());
            // Keep the next checks' entries loading while one is decided: on a large key table
            // each is a cache miss, and these overlap instead of following each other.
            for p in parsed.iter().take(AHEAD) {
                engine.prefetch_entry(p.0.unwrap_or("").as_bytes());
            }
            for (i, &p) in parsed.iter().enumerate() {
                if let Some(next) = parsed.get(i + AHEAD) {
                    engine.prefetch_entry(next.0.unwrap_or("").as_bytes());
                }
                decide(tally, engine, now, p, out);
            }
        }
    }
}

/// How many checks ahead of the one being decided have their key's entry loading.
const AHEAD: usize = 8;

/// A second cursor over the frames of one read decided on this node's engine, kept up to `AHEAD`
/// frames in front of the frame being answered, starting each CHECK's key entry loading
/// (`Engine::prefetch_entry`) so that on a large key table their cache misses overlap instead of
/// following each other. Frames are decoded twice, once by each cursor (a few ns each), rather
/// than decoded once and held in a queue: copying a decoded frame into a queue and out again read
/// back, wide, fields just stored narrow, and each such load waited for the stores to reach the
/// cache (see docs/PERFORMANCE.md).
struct Scout {
    /// Where in the read buffer the next frame to look at starts.
    pos: usize,
    /// Frames looked at and not yet answered.
    lead: usize,
    /// No complete, valid frame follows `pos`.
    done: bool,
}

impl Scout {
    fn new() -> Self {
        Scout {
            pos: 0,
            lead: 0,
            done: false,
        }
    }

    /// Moves up to `AHEAD` frames in front of the frame about to be answered.
    #[inline]
    fn run(&mut self, engine: &Engine, buf: &[u8]) {
        while !self.done && self.lead < AHEAD {
            match buf.get(self.pos..).map(frame::decode) {
                Some(Ok((f, len))) => {
                    if let Frame::Check { req, .. } = f {
                        engine.prefetch_entry(req.key);
                    }
                    self.pos += len;
                    self.lead += 1;
                }
                _ => self.done = true,
            }
        }
    }

    /// One frame (looked at before) was answered.
    #[inline]
    fn answered(&mut self) {
        self.lead = self.lead.saturating_sub(1);
    }
}

/// One frame's answer on the shared store: ready bytes, or checks still to decide.
enum Job {
    Ready(Vec<u8>),
    Checks {
        id: u64,
        batch: bool,
        reqs: Vec<(Option<String>, Option<String>, u64)>,
    },
}

fn shared_job(state: &AppState, f: &Frame<'_>) -> Job {
    let mut out = Vec::new();
    if answer_control(f, &mut out) {
        return Job::Ready(out);
    }
    let own = |req: &CheckReq<'_>| {
        parse_req(req).map(|(k, s, c)| (k.map(str::to_string), s.map(str::to_string), c))
    };
    let (id, batch, reqs) = match *f {
        Frame::Check { id, req } => (id, false, own(&req).map(|r| vec![r])),
        Frame::Batch { id, count, body } => (
            id,
            true,
            BatchIter::new(body, count).map(|r| own(&r)).collect(),
        ),
        Frame::Hello { .. } | Frame::Ping { .. } => return Job::Ready(out),
    };
    match reqs {
        Ok(reqs) => Job::Checks { id, batch, reqs },
        Err(m) => {
            // A batch with a bad check is refused whole: none of its checks is decided.
            state.metrics.record_bad_request(Transport::Binary);
            frame::put_error(&mut out, id, ErrorCode::BadFrame, m);
            Job::Ready(out)
        }
    }
}

/// Decides every check of `jobs` concurrently (they pipeline on the Redis connections) and
/// appends the answers to `out` in frame order.
async fn run_jobs(state: &AppState, jobs: &mut Vec<Job>, out: &mut Vec<u8>) {
    let backend = &state.backend;
    let checks = jobs.iter().flat_map(|j| match j {
        Job::Ready(_) => &[][..],
        Job::Checks { reqs, .. } => &reqs[..],
    });
    let decided = futures_util::future::join_all(checks.map(|(k, s, c)| async move {
        let start = Stopwatch::start();
        let d = backend.check(k.as_deref(), s.as_deref(), *c).await;
        state
            .metrics
            .record_check(Transport::Binary, d.verdict, start.elapsed_ns());
        to_wire(&d)
    }))
    .await;
    let mut results = decided.into_iter();
    for job in jobs.drain(..) {
        match job {
            Job::Ready(b) => out.extend_from_slice(&b),
            Job::Checks { id, batch, reqs } => {
                if batch {
                    frame::put_batch_result_header(out, id, reqs.len());
                } else {
                    frame::put_header(out, op::RESULT, id, frame::RESULT_LEN);
                }
                for _ in 0..reqs.len() {
                    if let Some(r) = results.next() {
                        r.put(out);
                    }
                }
            }
        }
    }
}

async fn serve_conn<S: AsyncRead + AsyncWrite + Unpin>(
    mut conn: S,
    state: &AppState,
    mut stop: watch::Receiver<bool>,
) -> std::io::Result<()> {
    let mut buf = BytesMut::with_capacity(16 * 1024);
    let mut out: Vec<u8> = Vec::with_capacity(16 * 1024);
    let mut hello = false;
    let idle = state.binary.idle_timeout;
    let local = state.backend.local().cloned();
    let mut jobs: Vec<Job> = Vec::new();
    let mut tally = Tally::default();
    // One idle timer and one stop waiter for the connection's life, not one of each per read:
    // registering a timer and a waiter on every request costs more than deciding it. The timer is
    // pushed back only once it fires, to the last read plus the idle timeout.
    let stopping = stop.wait_for(|s| *s);
    tokio::pin!(stopping);
    let idle_timer = tokio::time::sleep(idle);
    tokio::pin!(idle_timer);
    let mut last_read = tokio::time::Instant::now();
    loop {
        if buf.capacity() - buf.len() < 4096 {
            buf.reserve(16 * 1024);
        }
        let n = tokio::select! {
            biased;
            r = conn.read_buf(&mut buf) => r?,
            _ = &mut stopping => return Ok(()),
            _ = &mut idle_timer => {
                if last_read.elapsed() >= idle {
                    return Ok(()); // idle
                }
                idle_timer.as_mut().reset(last_read + idle);
                continue;
            }
        };
        if n == 0 {
            return Ok(());
        }
        last_read = tokio::time::Instant::now();
        state.busy_poll.touch();
        let timer = Stopwatch::start();
        // The frames of one read arrived together: one clock reading decides them all.
        let here = local.as_ref().map(|e| (&**e, e.clock().now_ns()));
        let mut scout = Scout::new();
        let mut used = 0;
        let mut fatal = None;
        loop {
            if let Some((e, _)) = here {
                scout.run(e, &buf);
            }
            match frame::decode(&buf[used..]) {
                Ok((f, len)) => {
                    used += len;
                    scout.answered();
                    match f {
                        Frame::Hello { id, version } => {
                            if version != frame::VERSION {
                                fatal = Some((
                                    id,
                                    ErrorCode::BadVersion,
                                    "unsupported protocol version; this server speaks 1",
                                ));
                                break;
                            }
                            hello = true;
                            match here {
                                Some(e) => answer(state, &mut tally, e, &f, &mut out),
                                None => jobs.push(shared_job(state, &f)),
                            }
                        }
                        _ if !hello => {
                            fatal = Some((f.id(), ErrorCode::HelloRequired, "send HELLO first"));
                            break;
                        }
                        _ => match here {
                            Some(e) => answer(state, &mut tally, e, &f, &mut out),
                            None => jobs.push(shared_job(state, &f)),
                        },
                    }
                }
                Err(DecodeError::Incomplete) => break,
                Err(DecodeError::Fatal { code, id }) => {
                    let msg = match code {
                        ErrorCode::TooLarge => "frame larger than 65536 bytes",
                        ErrorCode::UnknownOp => "unknown op",
                        ErrorCode::BadVersion => "bad magic: not a quotad client",
                        ErrorCode::KeyTooLong => {
                            "key longer than 256 bytes or scope longer than 64"
                        }
                        ErrorCode::BatchTooLarge => "batch larger than 1024 checks",
                        _ => "malformed frame",
                    };
                    fatal = Some((id, code, msg));
                    break;
                }
            }
        }
        buf.advance(used);
        // Counted before the answers go out, so a client that has its answers sees them counted.
        tally.time_batch(timer.elapsed_ns());
        state.metrics.add_tally(Transport::Binary, &mut tally);
        if !jobs.is_empty() {
            run_jobs(state, &mut jobs, &mut out).await;
        }
        if let Some((id, code, msg)) = fatal {
            state.metrics.record_bad_request(Transport::Binary);
            frame::put_error(&mut out, id, code, msg);
            conn.write_all(&out).await?;
            let _ = conn.shutdown().await;
            return Ok(());
        }
        if !out.is_empty() {
            conn.write_all(&out).await?;
            out.clear();
        }
    }
}
