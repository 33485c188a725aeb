//! The answer to one check as carried on the wire: the 40-byte RESULT body (docs/PROTOCOL.md
//! has the byte diagram), written by the server and read by the client.

use super::frame::{u32_at, u64_at, RESULT_LEN};

/// A decision as carried on the wire (the 40-byte RESULT body).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct WireResult {
    /// 0 allowed, 1 unauthorized, 2 forbidden, 3 plan_required, 4 rate_limited, 5 quota_exceeded.
    pub decision: u8,
    /// For unauthorized: 1 missing, 2 malformed, 3 unknown, 4 revoked, 5 expired; else 0.
    pub reason: u8,
    /// Index of the limit reported (for rate_limited: the one that denied).
    pub limit_index: u8,
    /// On an allowed answer from a tier in shadow mode, the decision its limits or quota would
    /// have given (4 rate_limited, 5 quota_exceeded); else 0.
    pub shadow: u8,
    /// Seconds to wait when denied for a limit or the quota (0 otherwise).
    pub retry_after: u32,
    /// The most restrictive limit's requests per period.
    pub limit: u64,
    /// Its remaining requests.
    pub remaining: u64,
    /// When it resets, Unix seconds.
    pub reset: u64,
    /// The key id (0 if unknown).
    pub key_id: u64,
}

impl WireResult {
    /// Appends the 40-byte body.
    ///
    /// Written as five 64-bit words straight from the fields: assembling the bytes in a buffer
    /// first and copying it would read back, wide, bytes just stored narrow, a load that waits
    /// for those stores to reach the cache.
    #[inline]
    pub fn put(&self, out: &mut Vec<u8>) {
        let head = u64::from(self.decision)
            | u64::from(self.reason) << 8
            | u64::from(self.limit_index) << 16
            | u64::from(self.shadow) << 24
            | u64::from(self.retry_after) << 32;
        out.reserve(RESULT_LEN);
        for w in [head, self.limit, self.remaining, self.reset, self.key_id] {
            out.extend_from_slice(&w.to_le_bytes());
        }
    }

    /// Reads a 40-byte body.
    pub fn get(b: &[u8]) -> Option<Self> {
        if b.len() < RESULT_LEN {
            return None;
        }
        Some(WireResult {
            decision: b[0],
            reason: b[1],
            limit_index: b[2],
            shadow: b[3],
            retry_after: u32_at(b, 4),
            limit: u64_at(b, 8),
            remaining: u64_at(b, 16),
            reset: u64_at(b, 24),
            key_id: u64_at(b, 32),
        })
    }

    /// The decision code as on HTTP.
    pub fn code(&self) -> &'static str {
        match self.decision {
            0 => "allowed",
            1 => "unauthorized",
            2 => "forbidden",
            3 => "plan_required",
            4 => "rate_limited",
            5 => "quota_exceeded",
            _ => "unknown",
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn results_round_trip() {
        let r = WireResult {
            decision: 4,
            reason: 0,
            limit_index: 1,
            shadow: 0,
            retry_after: 9,
            limit: 60,
            remaining: 0,
            reset: 1_800_000_000,
            key_id: 42,
        };
        let mut b = Vec::new();
        r.put(&mut b);
        assert_eq!(b.len(), RESULT_LEN);
        // The layout of PROTOCOL.md: decision, reason, limit index, a zero byte, retry_after
        // (u32 LE), then limit, remaining, reset and key id (u64 LE each).
        assert_eq!(b[..8], [4, 0, 1, 0, 9, 0, 0, 0]);
        assert_eq!(b[8..16], 60u64.to_le_bytes());
        assert_eq!(b[32..], 42u64.to_le_bytes());
        assert_eq!(WireResult::get(&b), Some(r));
    }
}
