//! The binary protocol's ceiling on this machine: a server that speaks quotad's protocol with
//! quotad's connection loop (read what the socket has, decode every frame, answer all, one
//! write) but decides nothing: every CHECK gets the same fixed "allowed" answer. What it sustains
//! is what the sockets, the kernel and the runtime allow; quotad's rate against it is what
//! quotad's own work (the engine, metrics, timers) costs. `benches/binary_vs_redis.sh` runs it
//! beside quotad.
//!
//! ```sh
//! cargo run --release --manifest-path benches/tools/Cargo.toml --target-dir target --bin binary_ceiling -- 127.0.0.1:9000   # then: quotad bench --addr 127.0.0.1:9000 --key-file F
//! ```
//!
//! One tokio worker thread, as `quotad serve --threads 1`.

use bytes::{Buf, BytesMut};
use quotad::protocol::frame::{self, op, BatchIter, DecodeError, ErrorCode, Frame};
use quotad::protocol::result::WireResult;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

/// The answer every check gets: allowed, with figures of the size quotad sends.
const ALLOWED: WireResult = WireResult {
    decision: 0,
    reason: 0,
    limit_index: 0,
    shadow: 0,
    retry_after: 0,
    limit: 1_000_000_000,
    remaining: 999_999_999,
    reset: 1_800_000_000,
    key_id: 1,
};

fn main() -> std::io::Result<()> {
    let addr = std::env::args()
        .nth(1)
        .unwrap_or_else(|| "127.0.0.1:0".to_string());
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()?;
    rt.block_on(async move {
        let listener = TcpListener::bind(&addr).await?;
        println!("binary ceiling listening on {}", listener.local_addr()?);
        loop {
            let (conn, _) = listener.accept().await?;
            conn.set_nodelay(true)?;
            tokio::spawn(async move {
                let _ = serve(conn).await;
            });
        }
    })
}

async fn serve(mut conn: TcpStream) -> std::io::Result<()> {
    let mut buf = BytesMut::with_capacity(16 * 1024);
    let mut out: Vec<u8> = Vec::with_capacity(16 * 1024);
    loop {
        if buf.capacity() - buf.len() < 4096 {
            buf.reserve(16 * 1024);
        }
        if conn.read_buf(&mut buf).await? == 0 {
            return Ok(());
        }
        let mut used = 0;
        loop {
            match frame::decode(&buf[used..]) {
                Ok((f, len)) => {
                    used += len;
                    answer(&f, &mut out);
                }
                Err(DecodeError::Incomplete) => break,
                Err(DecodeError::Fatal { code, id }) => {
                    frame::put_error(&mut out, id, code, "malformed frame");
                    conn.write_all(&out).await?;
                    return Ok(());
                }
            }
        }
        buf.advance(used);
        if !out.is_empty() {
            conn.write_all(&out).await?;
            out.clear();
        }
    }
}

fn answer(f: &Frame<'_>, out: &mut Vec<u8>) {
    match *f {
        Frame::Hello { id, version } => {
            if version != frame::VERSION {
                frame::put_error(out, id, ErrorCode::BadVersion, "unsupported version");
                return;
            }
            frame::put_hello_ok(out, id);
        }
        Frame::Ping { id, payload } => frame::put_pong(out, id, payload),
        Frame::Check { id, .. } => {
            frame::put_header(out, op::RESULT, id, frame::RESULT_LEN);
            ALLOWED.put(out);
        }
        Frame::Batch { id, count, body } => {
            frame::put_batch_result_header(out, id, count);
            for _ in BatchIter::new(body, count) {
                ALLOWED.put(out);
            }
        }
    }
}
