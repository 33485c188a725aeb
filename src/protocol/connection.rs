//! One end of a binary-protocol connection: the bytes read and not yet decoded, the answers or
//! requests not yet written, and end of stream, in one place. The server uses it on a socket;
//! the client on each half of one (a reader task and a writer task).
//!
//! Reading appends whatever the stream has to the buffer; the caller decodes every complete
//! frame in [`Connection::buffered`] with [`super::frame::decode`] (an incomplete frame is not
//! an error: it stays for the next read) and [`consume`](Connection::consume)s what it decoded.
//! Writing appends to [`out`](Connection::out) and [`flush`](Connection::flush)es it with one
//! call.

use bytes::{Buf, BytesMut};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

/// Room kept free in the read buffer before each read.
const READ_ROOM: usize = 4096;
/// How much the read buffer grows by when it runs short.
const READ_GROW: usize = 16 * 1024;

/// A stream with its read buffer and its write buffer.
#[derive(Debug)]
pub struct Connection<S> {
    stream: S,
    buf: BytesMut,
    out: Vec<u8>,
}

impl<S> Connection<S> {
    /// Wraps `stream` with empty buffers.
    pub fn new(stream: S) -> Self {
        Connection {
            stream,
            buf: BytesMut::with_capacity(READ_GROW),
            out: Vec::with_capacity(READ_GROW),
        }
    }

    /// The bytes read and not yet consumed.
    pub fn buffered(&self) -> &[u8] {
        &self.buf
    }

    /// Drops the first `n` buffered bytes (the frames decoded from them).
    pub fn consume(&mut self, n: usize) {
        self.buf.advance(n.min(self.buf.len()));
    }

    /// What is waiting to be written.
    pub fn out(&mut self) -> &mut Vec<u8> {
        &mut self.out
    }

    /// The read bytes and the write buffer at once: a server decodes requests from the first
    /// and appends their answers to the second.
    pub fn split_buffers(&mut self) -> (&[u8], &mut Vec<u8>) {
        (&self.buf, &mut self.out)
    }
}

impl<S: AsyncRead + Unpin> Connection<S> {
    /// Reads what the stream has into the buffer. `Ok(false)`: the peer closed its end.
    pub async fn fill(&mut self) -> std::io::Result<bool> {
        if self.buf.capacity() - self.buf.len() < READ_ROOM {
            self.buf.reserve(READ_GROW);
        }
        Ok(self.stream.read_buf(&mut self.buf).await? != 0)
    }
}

impl<S: AsyncWrite + Unpin> Connection<S> {
    /// Writes everything in [`out`](Self::out) with one call and empties it.
    pub async fn flush(&mut self) -> std::io::Result<()> {
        if !self.out.is_empty() {
            self.stream.write_all(&self.out).await?;
            self.out.clear();
        }
        Ok(())
    }

    /// Flushes, then closes the write side of the stream.
    pub async fn close(&mut self) -> std::io::Result<()> {
        self.flush().await?;
        self.stream.shutdown().await
    }
}
