//! The binary wire format: bytes ⇄ frames. See `docs/PROTOCOL.md` for the byte-level spec.
//!
//! ```text
//! frame header, 16 bytes, little-endian
//!  0        4     5       6        8                 16
//! +--------+-----+-------+--------+-----------------+------------------+
//! | len u32| op  | flags | rsv u16| request id u64  | payload (len B)  |
//! +--------+-----+-------+--------+-----------------+------------------+
//! ```
//!
//! [`decode`] looks at a buffer and returns a frame borrowing from it (no copy of keys or
//! scopes), `Incomplete` when more bytes are needed (not an error), or an error that ends the
//! connection. It never allocates and never reads past what `len` announces, and refuses `len`
//! above [`MAX_PAYLOAD`] before waiting for the bytes.

/// Bytes in a frame header.
pub const HEADER_LEN: usize = 16;
/// The largest payload accepted.
pub const MAX_PAYLOAD: usize = 64 * 1024;
/// The longest key accepted.
pub const MAX_KEY: usize = 256;
/// The longest scope accepted.
pub const MAX_SCOPE: usize = 64;
/// The most checks in one batch.
pub const MAX_BATCH: usize = 1024;
/// The largest cost one check may ask for; a check asking more is refused (BAD_FRAME,
/// request-level).
pub const MAX_COST: u64 = crate::engine::MAX_COST;
/// Handshake magic.
pub const MAGIC: [u8; 4] = *b"QTD1";
/// Protocol version spoken.
pub const VERSION: u16 = 1;
/// Bytes of one CHECK result.
pub const RESULT_LEN: usize = 40;

/// Operation codes.
pub mod op {
    /// Client hello: magic + version.
    pub const HELLO: u8 = 0x01;
    /// Ping: payload echoed.
    pub const PING: u8 = 0x02;
    /// One check.
    pub const CHECK: u8 = 0x03;
    /// Many checks, one answer.
    pub const CHECK_BATCH: u8 = 0x04;
    /// Server hello.
    pub const HELLO_OK: u8 = 0x81;
    /// Pong.
    pub const PONG: u8 = 0x82;
    /// One check's result.
    pub const RESULT: u8 = 0x83;
    /// A batch's results.
    pub const BATCH_RESULT: u8 = 0x84;
    /// An error.
    pub const ERROR: u8 = 0xFF;
}

/// Error codes carried by an ERROR frame.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u16)]
pub enum ErrorCode {
    /// The frame's payload does not match its op's layout.
    BadFrame = 1,
    /// `len` above `MAX_PAYLOAD`.
    TooLarge = 2,
    /// Unknown op.
    UnknownOp = 3,
    /// Wrong magic or unsupported version.
    BadVersion = 4,
    /// Key longer than `MAX_KEY` or scope longer than `MAX_SCOPE`.
    KeyTooLong = 5,
    /// More than `MAX_BATCH` checks.
    BatchTooLarge = 6,
    /// A request before HELLO.
    HelloRequired = 7,
    /// The server is at its connection limit.
    Busy = 8,
    /// The server is shutting down.
    ShuttingDown = 9,
}

impl ErrorCode {
    /// From the wire value.
    pub fn from_u16(v: u16) -> Option<Self> {
        Some(match v {
            1 => Self::BadFrame,
            2 => Self::TooLarge,
            3 => Self::UnknownOp,
            4 => Self::BadVersion,
            5 => Self::KeyTooLong,
            6 => Self::BatchTooLarge,
            7 => Self::HelloRequired,
            8 => Self::Busy,
            9 => Self::ShuttingDown,
            _ => return None,
        })
    }
}

/// One check inside a CHECK or CHECK_BATCH payload, borrowing from the read buffer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CheckReq<'a> {
    /// Cost (0 is read as 1).
    pub cost: u32,
    /// The raw key bytes.
    pub key: &'a [u8],
    /// The scope bytes (empty = none).
    pub scope: &'a [u8],
}

/// A decoded frame.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Frame<'a> {
    /// HELLO with its version (magic already checked).
    Hello {
        /// Request id.
        id: u64,
        /// Client's version.
        version: u16,
    },
    /// PING with the payload to echo.
    Ping {
        /// Request id.
        id: u64,
        /// Echoed bytes.
        payload: &'a [u8],
    },
    /// One check.
    Check {
        /// Request id.
        id: u64,
        /// The check.
        req: CheckReq<'a>,
    },
    /// A batch of checks; iterate with [`BatchIter`].
    Batch {
        /// Request id.
        id: u64,
        /// Number of checks.
        count: usize,
        /// The encoded checks.
        body: &'a [u8],
    },
}

impl Frame<'_> {
    /// The request id.
    pub fn id(&self) -> u64 {
        match *self {
            Frame::Hello { id, .. }
            | Frame::Ping { id, .. }
            | Frame::Check { id, .. }
            | Frame::Batch { id, .. } => id,
        }
    }
}

/// Why a buffer does not hold a usable frame.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DecodeError {
    /// Not enough bytes yet (not an error: read more).
    Incomplete,
    /// The connection must be answered with an error frame and closed.
    Fatal {
        /// What to say.
        code: ErrorCode,
        /// The request id, if the header was readable.
        id: u64,
    },
}

pub(crate) fn u16_at(b: &[u8], at: usize) -> u16 {
    u16::from_le_bytes([b[at], b[at + 1]])
}

pub(crate) fn u32_at(b: &[u8], at: usize) -> u32 {
    u32::from_le_bytes([b[at], b[at + 1], b[at + 2], b[at + 3]])
}

pub(crate) fn u64_at(b: &[u8], at: usize) -> u64 {
    let mut a = [0u8; 8];
    a.copy_from_slice(&b[at..at + 8]);
    u64::from_le_bytes(a)
}

/// Reads a frame header: `(payload len, op, request id)`, or `Incomplete`/`TooLarge`.
pub fn peek_header(buf: &[u8]) -> Result<(usize, u8, u64), DecodeError> {
    if buf.len() < HEADER_LEN {
        return Err(DecodeError::Incomplete);
    }
    let len = u32_at(buf, 0) as usize;
    let op = buf[4];
    let id = u64_at(buf, 8);
    if len > MAX_PAYLOAD {
        return Err(DecodeError::Fatal {
            code: ErrorCode::TooLarge,
            id,
        });
    }
    Ok((len, op, id))
}

/// Parses one check at the start of `b`: returns it and the bytes it used.
fn check_at(b: &[u8], id: u64) -> Result<(CheckReq<'_>, usize), DecodeError> {
    let bad = DecodeError::Fatal {
        code: ErrorCode::BadFrame,
        id,
    };
    if b.len() < 8 {
        return Err(bad);
    }
    let cost = u32_at(b, 0);
    let klen = usize::from(u16_at(b, 4));
    let slen = usize::from(u16_at(b, 6));
    if klen > MAX_KEY || slen > MAX_SCOPE {
        return Err(DecodeError::Fatal {
            code: ErrorCode::KeyTooLong,
            id,
        });
    }
    let end = 8 + klen + slen;
    if b.len() < end {
        return Err(bad);
    }
    Ok((
        CheckReq {
            cost,
            key: &b[8..8 + klen],
            scope: &b[8 + klen..end],
        },
        end,
    ))
}

/// Decodes one client frame at the start of `buf`; returns it and its total length.
pub fn decode(buf: &[u8]) -> Result<(Frame<'_>, usize), DecodeError> {
    let (len, op, id) = peek_header(buf)?;
    let total = HEADER_LEN + len;
    if buf.len() < total {
        return Err(DecodeError::Incomplete);
    }
    let p = &buf[HEADER_LEN..total];
    let bad = DecodeError::Fatal {
        code: ErrorCode::BadFrame,
        id,
    };
    let frame = match op {
        op::HELLO => {
            if p.len() != 8 {
                return Err(bad);
            }
            if p[..4] != MAGIC {
                return Err(DecodeError::Fatal {
                    code: ErrorCode::BadVersion,
                    id,
                });
            }
            Frame::Hello {
                id,
                version: u16_at(p, 4),
            }
        }
        op::PING => {
            if p.len() > 64 {
                return Err(bad);
            }
            Frame::Ping { id, payload: p }
        }
        op::CHECK => {
            let (req, used) = check_at(p, id)?;
            if used != p.len() {
                return Err(bad);
            }
            Frame::Check { id, req }
        }
        op::CHECK_BATCH => {
            if p.len() < 4 {
                return Err(bad);
            }
            let count = usize::from(u16_at(p, 0));
            if count > MAX_BATCH {
                return Err(DecodeError::Fatal {
                    code: ErrorCode::BatchTooLarge,
                    id,
                });
            }
            // Validate the whole batch now so that answering it cannot fail half-way.
            let body = &p[4..];
            let mut at = 0;
            for _ in 0..count {
                let (_, used) = check_at(&body[at..], id)?;
                at += used;
            }
            if at != body.len() {
                return Err(bad);
            }
            Frame::Batch { id, count, body }
        }
        _ => {
            return Err(DecodeError::Fatal {
                code: ErrorCode::UnknownOp,
                id,
            })
        }
    };
    Ok((frame, total))
}

/// Decodes any frame (client side: the server's answers), without interpreting the payload.
pub fn decode_any(buf: &[u8]) -> Result<(u8, u64, &[u8], usize), DecodeError> {
    let (len, op, id) = peek_header(buf)?;
    let total = HEADER_LEN + len;
    if buf.len() < total {
        return Err(DecodeError::Incomplete);
    }
    Ok((op, id, &buf[HEADER_LEN..total], total))
}

/// Iterates over the checks of a validated batch body.
#[derive(Debug, Clone)]
pub struct BatchIter<'a> {
    body: &'a [u8],
    left: usize,
}

impl<'a> BatchIter<'a> {
    /// Over `count` checks in `body` (as returned by [`decode`]).
    pub fn new(body: &'a [u8], count: usize) -> Self {
        BatchIter { body, left: count }
    }
}

impl<'a> Iterator for BatchIter<'a> {
    type Item = CheckReq<'a>;
    fn next(&mut self) -> Option<CheckReq<'a>> {
        if self.left == 0 {
            return None;
        }
        let (req, used) = check_at(self.body, 0).ok()?;
        self.body = &self.body[used..];
        self.left -= 1;
        Some(req)
    }
}

/// Appends a frame header.
pub fn put_header(out: &mut Vec<u8>, op: u8, id: u64, payload_len: usize) {
    out.extend_from_slice(&(payload_len as u32).to_le_bytes());
    out.push(op);
    out.push(0);
    out.extend_from_slice(&[0, 0]);
    out.extend_from_slice(&id.to_le_bytes());
}

/// Appends the header of a BATCH_RESULT frame for `count` results (the results follow).
pub fn put_batch_result_header(out: &mut Vec<u8>, id: u64, count: usize) {
    put_header(out, op::BATCH_RESULT, id, 4 + count * RESULT_LEN);
    out.extend_from_slice(&(count as u16).to_le_bytes());
    out.extend_from_slice(&[0, 0]);
}

/// Appends an ERROR frame.
pub fn put_error(out: &mut Vec<u8>, id: u64, code: ErrorCode, msg: &str) {
    let msg = &msg.as_bytes()[..msg.len().min(1024)];
    put_header(out, op::ERROR, id, 4 + msg.len());
    out.extend_from_slice(&(code as u16).to_le_bytes());
    out.extend_from_slice(&(msg.len() as u16).to_le_bytes());
    out.extend_from_slice(msg);
}

/// Appends one check to a CHECK or CHECK_BATCH payload (caller checks the bounds).
pub fn put_check(out: &mut Vec<u8>, cost: u32, key: &[u8], scope: &[u8]) {
    out.extend_from_slice(&cost.to_le_bytes());
    out.extend_from_slice(&(key.len() as u16).to_le_bytes());
    out.extend_from_slice(&(scope.len() as u16).to_le_bytes());
    out.extend_from_slice(key);
    out.extend_from_slice(scope);
}

/// Appends a whole CHECK frame (header and one check).
pub fn put_check_frame(out: &mut Vec<u8>, id: u64, cost: u32, key: &[u8], scope: &[u8]) {
    put_header(out, op::CHECK, id, 8 + key.len() + scope.len());
    put_check(out, cost, key, scope);
}

/// Appends a HELLO frame.
pub fn put_hello(out: &mut Vec<u8>, id: u64, version: u16) {
    put_header(out, op::HELLO, id, 8);
    out.extend_from_slice(&MAGIC);
    out.extend_from_slice(&version.to_le_bytes());
    out.extend_from_slice(&[0, 0]);
}

/// Bytes of a HELLO_OK payload.
pub const HELLO_OK_LEN: usize = 18;

/// Appends the server's HELLO_OK answer: this version and the bounds it enforces (payload, batch,
/// key and scope lengths, and the largest cost a check may ask for).
pub fn put_hello_ok(out: &mut Vec<u8>, id: u64) {
    put_header(out, op::HELLO_OK, id, HELLO_OK_LEN);
    out.extend_from_slice(&VERSION.to_le_bytes());
    out.extend_from_slice(&[0, 0]);
    out.extend_from_slice(&(MAX_PAYLOAD as u32).to_le_bytes());
    out.extend_from_slice(&(MAX_BATCH as u16).to_le_bytes());
    out.extend_from_slice(&(MAX_KEY as u16).to_le_bytes());
    out.extend_from_slice(&(MAX_SCOPE as u16).to_le_bytes());
    out.extend_from_slice(&(MAX_COST as u32).to_le_bytes());
}

/// Appends a PONG echoing `payload`.
pub fn put_pong(out: &mut Vec<u8>, id: u64, payload: &[u8]) {
    put_header(out, op::PONG, id, payload.len());
    out.extend_from_slice(payload);
}

#[cfg(test)]
mod tests {
    use super::*;

    fn check_frame(id: u64, key: &[u8], scope: &[u8]) -> Vec<u8> {
        let mut out = Vec::new();
        put_check_frame(&mut out, id, 1, key, scope);
        out
    }

    #[test]
    fn a_check_round_trips_and_borrows_from_the_buffer() {
        let f = check_frame(7, b"qd_key", b"a:read");
        let (frame, used) = decode(&f).unwrap();
        assert_eq!(used, f.len());
        match frame {
            Frame::Check { id, req } => {
                assert_eq!(id, 7);
                assert_eq!(req.key, b"qd_key");
                assert_eq!(req.scope, b"a:read");
                assert_eq!(req.key.as_ptr(), f[HEADER_LEN + 8..].as_ptr());
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn every_prefix_of_a_frame_is_incomplete_not_an_error() {
        let f = check_frame(1, b"k", b"");
        for n in 0..f.len() {
            assert_eq!(
                decode(&f[..n]).unwrap_err(),
                DecodeError::Incomplete,
                "prefix {n}"
            );
        }
    }

    #[test]
    fn oversized_lengths_are_refused_before_the_bytes_arrive() {
        let mut h = Vec::new();
        put_header(&mut h, op::CHECK, 9, MAX_PAYLOAD + 1);
        assert_eq!(
            decode(&h).unwrap_err(),
            DecodeError::Fatal {
                code: ErrorCode::TooLarge,
                id: 9
            }
        );
    }

    #[test]
    fn bad_frames_name_their_fault() {
        let mut h = Vec::new();
        put_header(&mut h, 0x42, 3, 0);
        assert!(matches!(
            decode(&h),
            Err(DecodeError::Fatal {
                code: ErrorCode::UnknownOp,
                id: 3
            })
        ));
        let long = vec![b'k'; MAX_KEY + 1];
        assert!(matches!(
            decode(&check_frame(4, &long, b"")),
            Err(DecodeError::Fatal {
                code: ErrorCode::KeyTooLong,
                ..
            })
        ));
        let mut bad_hello = Vec::new();
        put_header(&mut bad_hello, op::HELLO, 5, 8);
        bad_hello.extend_from_slice(b"HTTP\x01\x00\x00\x00");
        assert!(matches!(
            decode(&bad_hello),
            Err(DecodeError::Fatal {
                code: ErrorCode::BadVersion,
                ..
            })
        ));
        // A check whose lengths overrun its payload.
        let mut f = check_frame(6, b"key", b"");
        f[HEADER_LEN + 4] = 200;
        assert!(matches!(
            decode(&f),
            Err(DecodeError::Fatal {
                code: ErrorCode::BadFrame,
                ..
            })
        ));
    }

    #[test]
    fn batches_validate_whole_and_iterate_in_order() {
        let mut p = vec![3, 0, 0, 0];
        for k in [b"a".as_slice(), b"bb", b"ccc"] {
            put_check(&mut p, 2, k, b"s");
        }
        let mut f = Vec::new();
        put_header(&mut f, op::CHECK_BATCH, 11, p.len());
        f.extend_from_slice(&p);
        let (frame, _) = decode(&f).unwrap();
        let Frame::Batch { count, body, .. } = frame else {
            panic!()
        };
        let keys: Vec<&[u8]> = BatchIter::new(body, count).map(|c| c.key).collect();
        assert_eq!(keys, vec![b"a".as_slice(), b"bb", b"ccc"]);
        let mut trunc = f.clone();
        trunc[HEADER_LEN] = 4; // claims 4 checks, holds 3
        assert!(matches!(
            decode(&trunc),
            Err(DecodeError::Fatal {
                code: ErrorCode::BadFrame,
                ..
            })
        ));
    }
}
