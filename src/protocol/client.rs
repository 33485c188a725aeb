//! An async client for the binary protocol with pipelining: any number of requests in flight on
//! one connection, matched to their answers by request id, and a small round-robin [`Pool`].
//!
//! A writer task gathers every request queued since its last write into one buffer and writes it
//! with one call; a reader task decodes every answer in what it reads and completes the waiting
//! callers.

use std::collections::HashMap;
use std::path::Path;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;

use parking_lot::Mutex;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::sync::{mpsc, oneshot};

use super::connection::Connection;
use super::frame::{self, op, DecodeError, ErrorCode};
use super::result::WireResult;

/// A client error.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// Socket I/O failed.
    #[error("i/o: {0}")]
    Io(#[from] std::io::Error),
    /// The server answered with an ERROR frame.
    #[error("server error {code:?}: {message}")]
    Server {
        /// The code.
        code: Option<ErrorCode>,
        /// Its message.
        message: String,
    },
    /// The connection closed before the answer came.
    #[error("connection closed")]
    Closed,
    /// The answer did not have the expected shape.
    #[error("unexpected answer (op {0:#x})")]
    Unexpected(u8),
    /// A request outside the protocol's bounds.
    #[error("{0}")]
    Invalid(&'static str),
}

/// One check to send.
#[derive(Debug, Clone, Copy)]
pub struct Check<'a> {
    /// Raw API key.
    pub key: &'a str,
    /// Required scope, if any.
    pub scope: Option<&'a str>,
    /// Cost (>= 1).
    pub cost: u32,
}

type Answer = (u8, Vec<u8>);
type Pending = Arc<Mutex<HashMap<u64, oneshot::Sender<Answer>>>>;

/// One pipelined connection.
#[derive(Debug, Clone)]
pub struct Client {
    tx: mpsc::UnboundedSender<(u64, Vec<u8>, oneshot::Sender<Answer>)>,
    next_id: Arc<AtomicU64>,
}

impl Client {
    /// Connects over TCP and says HELLO.
    pub async fn connect_tcp(addr: impl tokio::net::ToSocketAddrs) -> Result<Self, ClientError> {
        let s = tokio::net::TcpStream::connect(addr).await?;
        s.set_nodelay(true)?;
        Self::handshake(s).await
    }

    /// Connects over a Unix socket and says HELLO.
    pub async fn connect_unix(path: impl AsRef<Path>) -> Result<Self, ClientError> {
        let s = tokio::net::UnixStream::connect(path).await?;
        Self::handshake(s).await
    }

    async fn handshake<S: AsyncRead + AsyncWrite + Send + 'static>(
        s: S,
    ) -> Result<Self, ClientError> {
        let (r, w) = tokio::io::split(s);
        let pending: Pending = Arc::new(Mutex::new(HashMap::new()));
        let (tx, rx) = mpsc::unbounded_channel();
        tokio::spawn(writer(w, rx, pending.clone()));
        tokio::spawn(reader(r, pending));
        let c = Client {
            tx,
            next_id: Arc::new(AtomicU64::new(1)),
        };
        let mut f = Vec::new();
        let id = c.id();
        frame::put_hello(&mut f, id, frame::VERSION);
        let (op, _) = c.send(id, f).await?;
        if op != op::HELLO_OK {
            return Err(ClientError::Unexpected(op));
        }
        Ok(c)
    }

    fn id(&self) -> u64 {
        self.next_id.fetch_add(1, Ordering::Relaxed)
    }

    async fn send(&self, id: u64, bytes: Vec<u8>) -> Result<Answer, ClientError> {
        let (tx, rx) = oneshot::channel();
        self.tx
            .send((id, bytes, tx))
            .map_err(|_| ClientError::Closed)?;
        let (op, payload) = rx.await.map_err(|_| ClientError::Closed)?;
        if op == op::ERROR {
            return Err(server_error(&payload));
        }
        Ok((op, payload))
    }

    /// One check.
    pub async fn check(&self, c: Check<'_>) -> Result<WireResult, ClientError> {
        let scope = c.scope.unwrap_or("");
        if c.key.len() > frame::MAX_KEY || scope.len() > frame::MAX_SCOPE {
            return Err(ClientError::Invalid("key or scope too long"));
        }
        let id = self.id();
        let mut f = Vec::with_capacity(frame::HEADER_LEN + 8 + c.key.len() + scope.len());
        frame::put_check_frame(&mut f, id, c.cost, c.key.as_bytes(), scope.as_bytes());
        let (op, payload) = self.send(id, f).await?;
        if op != op::RESULT {
            return Err(ClientError::Unexpected(op));
        }
        WireResult::get(&payload).ok_or(ClientError::Unexpected(op))
    }

    /// Many checks in one frame; answers in the same order.
    pub async fn check_batch(&self, checks: &[Check<'_>]) -> Result<Vec<WireResult>, ClientError> {
        if checks.len() > frame::MAX_BATCH {
            return Err(ClientError::Invalid("batch larger than MAX_BATCH"));
        }
        let mut p = Vec::with_capacity(4 + checks.len() * 64);
        p.extend_from_slice(&(checks.len() as u16).to_le_bytes());
        p.extend_from_slice(&[0, 0]);
        for c in checks {
            let scope = c.scope.unwrap_or("");
            if c.key.len() > frame::MAX_KEY || scope.len() > frame::MAX_SCOPE {
                return Err(ClientError::Invalid("key or scope too long"));
            }
            frame::put_check(&mut p, c.cost, c.key.as_bytes(), scope.as_bytes());
        }
        if p.len() > frame::MAX_PAYLOAD {
            return Err(ClientError::Invalid("batch larger than MAX_PAYLOAD"));
        }
        let id = self.id();
        let mut f = Vec::with_capacity(frame::HEADER_LEN + p.len());
        frame::put_header(&mut f, op::CHECK_BATCH, id, p.len());
        f.extend_from_slice(&p);
        let (op, payload) = self.send(id, f).await?;
        if op != op::BATCH_RESULT || payload.len() != 4 + checks.len() * frame::RESULT_LEN {
            return Err(ClientError::Unexpected(op));
        }
        Ok(payload[4..]
            .chunks_exact(frame::RESULT_LEN)
            .filter_map(WireResult::get)
            .collect())
    }

    /// PING; returns the round-trip time.
    pub async fn ping(&self) -> Result<std::time::Duration, ClientError> {
        let id = self.id();
        let mut f = Vec::new();
        frame::put_header(&mut f, op::PING, id, 8);
        f.extend_from_slice(&id.to_le_bytes());
        let start = std::time::Instant::now();
        let (op, payload) = self.send(id, f).await?;
        if op != op::PONG || payload != id.to_le_bytes() {
            return Err(ClientError::Unexpected(op));
        }
        Ok(start.elapsed())
    }
}

fn server_error(payload: &[u8]) -> ClientError {
    if payload.len() < 4 {
        return ClientError::Server {
            code: None,
            message: String::new(),
        };
    }
    let code = ErrorCode::from_u16(u16::from_le_bytes([payload[0], payload[1]]));
    let n = usize::from(u16::from_le_bytes([payload[2], payload[3]]));
    let message = String::from_utf8_lossy(&payload[4..(4 + n).min(payload.len())]).into_owned();
    ClientError::Server { code, message }
}

async fn writer<W: AsyncWrite + Unpin>(
    w: W,
    mut rx: mpsc::UnboundedReceiver<(u64, Vec<u8>, oneshot::Sender<Answer>)>,
    pending: Pending,
) {
    let mut conn = Connection::new(w);
    while let Some((id, bytes, tx)) = rx.recv().await {
        pending.lock().insert(id, tx);
        conn.out().extend_from_slice(&bytes);
        // Everything queued meanwhile goes out in the same write.
        while conn.out().len() < 256 * 1024 {
            match rx.try_recv() {
                Ok((id, bytes, tx)) => {
                    pending.lock().insert(id, tx);
                    conn.out().extend_from_slice(&bytes);
                }
                Err(_) => break,
            }
        }
        if conn.flush().await.is_err() {
            break;
        }
    }
    pending.lock().clear();
}

async fn reader<R: AsyncRead + Unpin>(r: R, pending: Pending) {
    let mut conn = Connection::new(r);
    while let Ok(true) = conn.fill().await {
        let buf = conn.buffered();
        let mut used = 0;
        loop {
            match frame::decode_any(&buf[used..]) {
                Ok((op, id, payload, len)) => {
                    let tx = pending.lock().remove(&id);
                    if let Some(tx) = tx {
                        let _ = tx.send((op, payload.to_vec()));
                    } else if op == op::ERROR {
                        // A connection-level error (id 0, e.g. busy): fail everyone waiting.
                        for (_, tx) in pending.lock().drain() {
                            let _ = tx.send((op, payload.to_vec()));
                        }
                    }
                    used += len;
                }
                Err(DecodeError::Incomplete) => break,
                Err(DecodeError::Fatal { .. }) => {
                    pending.lock().clear();
                    return;
                }
            }
        }
        conn.consume(used);
    }
    pending.lock().clear();
}

/// A few connections used round-robin.
#[derive(Debug, Clone)]
pub struct Pool {
    clients: Arc<Vec<Client>>,
    next: Arc<AtomicUsize>,
}

impl Pool {
    /// `n` TCP connections to `addr`.
    pub async fn connect_tcp(addr: std::net::SocketAddr, n: usize) -> Result<Self, ClientError> {
        let mut clients = Vec::with_capacity(n.max(1));
        for _ in 0..n.max(1) {
            clients.push(Client::connect_tcp(addr).await?);
        }
        Ok(Pool {
            clients: Arc::new(clients),
            next: Arc::new(AtomicUsize::new(0)),
        })
    }

    /// The next connection.
    pub fn get(&self) -> &Client {
        let i = self.next.fetch_add(1, Ordering::Relaxed) % self.clients.len();
        &self.clients[i]
    }

    /// One check on the next connection.
    pub async fn check(&self, c: Check<'_>) -> Result<WireResult, ClientError> {
        self.get().check(c).await
    }
}
