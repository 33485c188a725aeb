//! The binary protocol server over TCP and Unix sockets (`docs/PROTOCOL.md`).
//!
//! Per connection: read whatever the socket has, decode every complete frame in the buffer, ask
//! the store to decide all of the read's checks as one batch (the local store decides them in
//! order at one clock reading; Redis has them all in flight at once), append every answer in
//! frame order to one output buffer, and write it with one call. A framing error is answered
//! with an ERROR frame and the connection is closed; other connections are unaffected. A
//! connection limit and an idle timeout bound what clients can hold.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite};
use tokio::sync::{watch, Semaphore};

use super::AppState;
use crate::engine::decision::{AuthFailure, Decision, Verdict};
use crate::metrics::{Stopwatch, Tally, Transport};
use crate::protocol::connection::Connection;
use crate::protocol::frame::{self, op, BatchIter, CheckReq, DecodeError, ErrorCode, Frame};
use crate::protocol::result::WireResult;
use crate::store::{CheckRequest, Store};

/// Binary listener settings.
#[derive(Debug, Clone)]
pub struct BinaryConfig {
    /// Most connections open at once (over TCP and Unix together).
    pub max_connections: usize,
    /// A connection with no complete request for this long is closed.
    pub idle_timeout: Duration,
    /// A frame must be complete this long after its first byte arrived, or the connection is
    /// closed (a client dripping a frame byte by byte cannot hold a slot). At most `idle_timeout`.
    pub frame_timeout: Duration,
}

impl Default for BinaryConfig {
    fn default() -> Self {
        BinaryConfig {
            max_connections: 10_000,
            idle_timeout: Duration::from_secs(60),
            frame_timeout: Duration::from_secs(10),
        }
    }
}

/// Serves the binary protocol on `listener` until `shutdown`; then stops accepting, lets open
/// connections finish the requests they have sent (up to `drain`), and returns.
pub async fn run<L: super::Accept, S: Store>(
    listener: L,
    state: Arc<AppState<S>>,
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
        &state.metrics,
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
        AuthFailure::Deprecated => 6,
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
        shadow: match d.shadow {
            Some(Verdict::RateLimited(_)) => 4,
            Some(Verdict::QuotaExceeded) => 5,
            _ => 0,
        },
        retry_after: d
            .retry_after
            .map_or(0, |r| r.min(u64::from(u32::MAX)) as u32),
        limit: p.map_or(0, |p| p.limit),
        remaining: p.map_or(0, |p| p.remaining),
        reset: p.map_or(0, |p| p.reset),
        key_id: d.key_id.map_or(0, |k| k.0),
    }
}

/// One check as read from its frame; `Err` is a request-level error (bad scope) that keeps the
/// connection.
fn parse_req<'a>(req: &CheckReq<'a>) -> Result<CheckRequest<'a>, &'static str> {
    let scope = match std::str::from_utf8(req.scope) {
        Ok("") => None,
        Ok(s) if crate::tiers::valid_scope(s) => Some(s),
        _ => return Err("invalid scope"),
    };
    if u64::from(req.cost) > frame::MAX_COST {
        return Err("cost above the maximum of 1000000");
    }
    // A key that is not UTF-8 cannot be one of ours: let the store call it malformed.
    let key = match req.key {
        [] => None,
        k => Some(std::str::from_utf8(k).unwrap_or("\u{fffd}")),
    };
    Ok(CheckRequest {
        key,
        scope,
        cost: u64::from(req.cost.max(1)),
    })
}

/// One frame's part of the answers to a read, in frame order.
enum Item {
    /// Bytes ready (a control answer or an error): `ready[range]`.
    Ready(std::ops::Range<usize>),
    /// The next `n` checks of the read's batch, answered as one RESULT (`batch` false) or one
    /// BATCH_RESULT.
    Checks { id: u64, batch: bool, n: usize },
}

/// What one read asks: its checks as one batch for the store, and the frame order to answer in.
struct Plan<'a> {
    reqs: Vec<CheckRequest<'a>>,
    items: Vec<Item>,
    /// Answers that need no decision.
    ready: Vec<u8>,
}

impl<'a> Plan<'a> {
    /// Adds the answer-to-be of one decoded frame.
    fn push<S>(&mut self, state: &AppState<S>, f: &Frame<'a>) {
        let at = self.ready.len();
        let (id, batch, n) = match *f {
            Frame::Hello { id, .. } => {
                frame::put_hello_ok(&mut self.ready, id);
                return self.items.push(Item::Ready(at..self.ready.len()));
            }
            Frame::Ping { id, payload } => {
                frame::put_pong(&mut self.ready, id, payload);
                return self.items.push(Item::Ready(at..self.ready.len()));
            }
            Frame::Check { id, req } => match parse_req(&req) {
                Ok(r) => {
                    self.reqs.push(r);
                    (id, false, Ok(1))
                }
                Err(m) => (id, false, Err(m)),
            },
            // A batch with a bad check is refused whole: none of its checks is decided.
            Frame::Batch { id, count, body } => {
                let first = self.reqs.len();
                let mut n = Ok(0);
                for r in BatchIter::new(body, count) {
                    match parse_req(&r) {
                        Ok(r) => self.reqs.push(r),
                        Err(m) => {
                            self.reqs.truncate(first);
                            n = Err(m);
                            break;
                        }
                    }
                }
                (id, true, n.map(|_: usize| self.reqs.len() - first))
            }
        };
        match n {
            Ok(n) => self.items.push(Item::Checks { id, batch, n }),
            Err(m) => {
                state.metrics.record_bad_request(Transport::Binary);
                frame::put_error(&mut self.ready, id, ErrorCode::BadFrame, m);
                self.items.push(Item::Ready(at..self.ready.len()));
            }
        }
    }
}

/// Writes a read's answers in frame order while the store hands over its decisions in check
/// order: before each check's result, every answer of the frames before it (and its frame's
/// header) goes out.
struct Emitter<'p> {
    items: &'p [Item],
    ready: &'p [u8],
    next: usize,
    /// Checks of the current item still to come.
    left: usize,
}

impl<'p> Emitter<'p> {
    fn new(items: &'p [Item], ready: &'p [u8]) -> Self {
        Emitter {
            items,
            ready,
            next: 0,
            left: 0,
        }
    }

    /// Writes what comes before the next check's result.
    fn before_check(&mut self, out: &mut Vec<u8>) {
        while self.left == 0 && self.next < self.items.len() {
            self.emit_next(out);
        }
        self.left = self.left.saturating_sub(1);
    }

    /// Writes what is left once every check was answered.
    fn finish(&mut self, out: &mut Vec<u8>) {
        while self.next < self.items.len() {
            self.emit_next(out);
        }
    }

    fn emit_next(&mut self, out: &mut Vec<u8>) {
        match self.items[self.next] {
            Item::Ready(ref r) => out.extend_from_slice(&self.ready[r.clone()]),
            Item::Checks { id, batch, n } => {
                if batch {
                    frame::put_batch_result_header(out, id, n);
                } else {
                    frame::put_header(out, op::RESULT, id, frame::RESULT_LEN);
                }
                self.left = n;
            }
        }
        self.next += 1;
    }
}

/// The message of a fatal framing error.
fn fatal_message(code: ErrorCode) -> &'static str {
    match code {
        ErrorCode::TooLarge => "frame larger than 65536 bytes",
        ErrorCode::UnknownOp => "unknown op",
        ErrorCode::BadVersion => "bad magic: not a quotad client",
        ErrorCode::KeyTooLong => "key longer than 256 bytes or scope longer than 64",
        ErrorCode::BatchTooLarge => "batch larger than 1024 checks",
        _ => "malformed frame",
    }
}

/// A framing error that ends the connection: the frame id, the code and the message.
type Fatal = (u64, ErrorCode, &'static str);

/// Decodes every complete frame of `buf` into `plan`; returns the bytes used and the fatal
/// error that stopped decoding, if any.
fn plan_read<'a, S>(
    state: &AppState<S>,
    buf: &'a [u8],
    hello: &mut bool,
    plan: &mut Plan<'a>,
) -> (usize, Option<Fatal>) {
    let mut used = 0;
    loop {
        match frame::decode(&buf[used..]) {
            Ok((f, len)) => {
                used += len;
                match f {
                    Frame::Hello { id, version } if version != frame::VERSION => {
                        let m = "unsupported protocol version; this server speaks 1";
                        return (used, Some((id, ErrorCode::BadVersion, m)));
                    }
                    Frame::Hello { .. } => *hello = true,
                    _ if !*hello => {
                        return (
                            used,
                            Some((f.id(), ErrorCode::HelloRequired, "send HELLO first")),
                        )
                    }
                    _ => {}
                }
                plan.push(state, &f);
            }
            Err(DecodeError::Incomplete) => return (used, None),
            Err(DecodeError::Fatal { code, id }) => {
                return (used, Some((id, code, fatal_message(code))))
            }
        }
    }
}

async fn serve_conn<St: Store, S: AsyncRead + AsyncWrite + Unpin>(
    stream: S,
    state: &AppState<St>,
    mut stop: watch::Receiver<bool>,
) -> std::io::Result<()> {
    let mut conn = Connection::new(stream);
    let mut hello = false;
    let idle = state.binary.idle_timeout;
    let frame_limit = state.binary.frame_timeout.min(idle);
    // When the first byte of a frame still incomplete arrived (`None`: no partial frame).
    let mut partial_since: Option<tokio::time::Instant> = None;
    let mut tally = Tally::default();
    let (mut items, mut ready) = (Vec::new(), Vec::new());
    // One idle timer and one stop waiter for the connection's life, not one of each per read:
    // registering a timer and a waiter on every request costs more than deciding it. The timer is
    // pushed back only once it fires, to the last read plus the idle timeout.
    let stopping = stop.wait_for(|s| *s);
    tokio::pin!(stopping);
    let idle_timer = tokio::time::sleep(idle);
    tokio::pin!(idle_timer);
    let mut last_read = tokio::time::Instant::now();
    loop {
        let open = tokio::select! {
            biased;
            r = conn.fill() => r?,
            _ = &mut stopping => return Ok(()),
            _ = &mut idle_timer => {
                if last_read.elapsed() >= idle {
                    return Ok(()); // idle
                }
                if partial_since.is_some_and(|t| t.elapsed() >= frame_limit) {
                    return Ok(()); // a frame begun and not finished in time
                }
                let next = last_read + idle;
                idle_timer
                    .as_mut()
                    .reset(partial_since.map_or(next, |t| next.min(t + frame_limit)));
                continue;
            }
        };
        if !open {
            return Ok(());
        }
        last_read = tokio::time::Instant::now();
        state.busy_poll.touch();
        let timer = Stopwatch::start();
        let (buf, out) = conn.split_buffers();
        // The item and answer buffers are kept from read to read; only the requests, which
        // borrow this read's bytes, are new.
        let mut plan = Plan {
            reqs: Vec::with_capacity(16),
            items: std::mem::take(&mut items),
            ready: std::mem::take(&mut ready),
        };
        let (used, fatal) = plan_read(state, buf, &mut hello, &mut plan);
        let mut emit = Emitter::new(&plan.items, &plan.ready);
        if !plan.reqs.is_empty() {
            state
                .store
                .check_batch(&plan.reqs, &mut |_, d| {
                    tally.count(d);
                    emit.before_check(out);
                    to_wire(d).put(out);
                })
                .await;
        }
        emit.finish(out);
        (items, ready) = (plan.items, plan.ready);
        items.clear();
        ready.clear();
        // Counted before the answers go out, so a client that has its answers sees them counted.
        tally.time_batch(timer.elapsed_ns());
        state.metrics.add_tally(Transport::Binary, &mut tally);
        conn.consume(used);
        // A partial frame left in the buffer starts the frame deadline (once per frame: reads
        // of whole frames never touch the timer).
        if conn.buffered().is_empty() {
            partial_since = None;
        } else if partial_since.is_none() || used > 0 {
            let now = tokio::time::Instant::now();
            partial_since = Some(now);
            idle_timer
                .as_mut()
                .reset((last_read + idle).min(now + frame_limit));
        }
        if let Some((id, code, msg)) = fatal {
            state.metrics.record_bad_request(Transport::Binary);
            frame::put_error(conn.out(), id, code, msg);
            return conn.close().await;
        }
        conn.flush().await?;
    }
}
