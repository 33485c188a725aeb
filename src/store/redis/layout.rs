//! How a key's (or a consumer group's) counters sit in its Redis hash, and how the node packs
//! the check script's arguments. Both are fixed binary layouts of little-endian signed 64-bit
//! integers, read in the scripts with Redis's `struct` library: a Lua `tonumber` of a decimal
//! string costs a `strtod` (≈ 2,000 instructions for a 16-digit microsecond count), and the check
//! script runs on a Redis master for every check (exact mode) or lease (lease mode).
//!
//! - `L`: the limits the buckets were written under, as text: `period_s:interval_µs` per limit,
//!   joined by `,` (the tier's limits at the script's resolution, in order).
//! - `c`: 8 × (3 + n) bytes: the month id, that month's usage, the last use (Unix seconds), then
//!   the TAT of each of the n buckets of `L` (µs since 1970; 0 = full).
//!
//! Hashes written before this layout hold `p1..p4`, `i1..i4`, `t1..t4` (period, interval and TAT
//! of each bucket), `m`, `u` and `lu` as decimal text: the scripts and [`Counters::read`] still
//! read them, and a key's first counted check rewrites them in this layout.

use std::collections::HashMap;

use redis::ScriptInvocation;

use crate::engine::bucket::Limit;
use crate::tiers::MAX_LIMITS;

/// The hash field of the limits signature.
pub(super) const LIMITS: &str = "L";
/// The hash field of the packed counters.
pub(super) const COUNTERS: &str = "c";

/// The limits signature of `limits` (already at microsecond resolution).
pub(super) fn signature(limits: &[Limit]) -> String {
    let parts: Vec<String> = limits
        .iter()
        .map(|l| format!("{}:{}", l.period_secs(), l.interval_ns() / 1_000))
        .collect();
    parts.join(",")
}

/// A number as the scripts read it: exact below 2^53 (Lua numbers are doubles), so larger ones
/// are clamped (no time, count or quota here comes near it).
fn word(v: u64) -> [u8; 8] {
    (v.min(1 << 53) as i64).to_le_bytes()
}

/// Adds the check script's arguments to `inv`: the record `version` the node holds (`None` for a
/// consumer group's hash), then the packed numbers (now µs, cost, want, month id, quota or -1,
/// then interval µs and capacity µs of each limit), then the limits signature.
pub(super) fn check_args(
    inv: &mut ScriptInvocation<'_>,
    version: Option<u64>,
    (now_us, cost, want): (u64, u64, u64),
    (limits, quota, month): (&[Limit], Option<u64>, u32),
) {
    let mut a = Vec::with_capacity(8 * (5 + 2 * limits.len()));
    for v in [now_us, cost, want, u64::from(month)] {
        a.extend_from_slice(&word(v));
    }
    match quota {
        Some(q) => a.extend_from_slice(&word(q)),
        None => a.extend_from_slice(&(-1i64).to_le_bytes()),
    }
    for l in limits {
        let iv = l.interval_ns() / 1_000;
        a.extend_from_slice(&word(iv));
        a.extend_from_slice(&word(iv.saturating_mul(l.requests())));
    }
    match version {
        Some(v) => inv.arg(v),
        None => inv.arg(""),
    };
    inv.arg(a).arg(signature(limits));
}

/// Adds the give-back script's arguments to `inv`: `tokens` and `month` packed, then the
/// signature of the limits the tokens were taken under.
pub(super) fn return_args(inv: &mut ScriptInvocation<'_>, tokens: u64, month: u32, sig: String) {
    let mut a = Vec::with_capacity(16);
    a.extend_from_slice(&word(tokens));
    a.extend_from_slice(&word(u64::from(month)));
    inv.arg(a).arg(sig);
}

/// One bucket as stored: the limit it was written under and its TAT (µs; 0 = full).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct Bucket {
    pub period_secs: u64,
    pub interval_us: u64,
    pub tat_us: u64,
}

/// A hash's counters, in either layout.
#[derive(Debug, Default, PartialEq, Eq)]
pub(super) struct Counters {
    /// The month the usage is of (`None`: never counted).
    pub month: Option<u32>,
    pub used: u64,
    /// Unix seconds of the last counted check (`None`: never).
    pub last_use: Option<u64>,
    pub buckets: Vec<Bucket>,
}

impl Counters {
    /// Reads the counters from a hash's fields (`HGETALL`); fields that do not parse count as
    /// absent (a full bucket, no usage), as the scripts read them.
    pub(super) fn read(m: &HashMap<String, Vec<u8>>) -> Counters {
        match m.get(COUNTERS) {
            Some(c) => Self::packed(c, m.get(LIMITS).map(Vec::as_slice).unwrap_or_default()),
            None => Self::legacy(m),
        }
    }

    fn packed(c: &[u8], sig: &[u8]) -> Counters {
        let words: Vec<u64> = c
            .chunks_exact(8)
            .map(|w| {
                let mut b = [0u8; 8];
                b.copy_from_slice(w);
                i64::from_le_bytes(b).max(0) as u64
            })
            .collect();
        let limits = std::str::from_utf8(sig).unwrap_or_default();
        let buckets = limits
            .split(',')
            .filter(|s| !s.is_empty())
            .zip(words.iter().skip(3))
            .take(MAX_LIMITS)
            .filter_map(|(l, &tat_us)| {
                let (p, i) = l.split_once(':')?;
                Some(Bucket {
                    period_secs: p.parse().ok()?,
                    interval_us: i.parse().ok()?,
                    tat_us,
                })
            })
            .collect();
        Counters {
            month: words.first().and_then(|&m| u32::try_from(m).ok()),
            used: words.get(1).copied().unwrap_or(0),
            last_use: words.get(2).copied().filter(|&s| s != 0),
            buckets,
        }
    }

    fn legacy(m: &HashMap<String, Vec<u8>>) -> Counters {
        let num = |f: &str| -> Option<u64> { std::str::from_utf8(m.get(f)?).ok()?.parse().ok() };
        let buckets = (1..=MAX_LIMITS)
            .map_while(|i| {
                Some(Bucket {
                    period_secs: num(&format!("p{i}"))?,
                    interval_us: num(&format!("i{i}"))?,
                    tat_us: num(&format!("t{i}")).unwrap_or(0),
                })
            })
            .collect();
        Counters {
            month: num("m").and_then(|m| u32::try_from(m).ok()),
            used: num("u").unwrap_or(0),
            last_use: num("lu").filter(|&s| s != 0),
            buckets,
        }
    }
}

/// The text fields of a hash read with `HGETALL` (the record's), leaving out the packed counters.
pub(super) fn text_fields(m: &HashMap<String, Vec<u8>>) -> HashMap<String, String> {
    m.iter()
        .filter(|(f, _)| *f != COUNTERS)
        .filter_map(|(f, v)| Some((f.clone(), String::from_utf8(v.clone()).ok()?)))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn packed(words: &[i64], sig: &str) -> HashMap<String, Vec<u8>> {
        let c: Vec<u8> = words.iter().flat_map(|w| w.to_le_bytes()).collect();
        HashMap::from([
            (COUNTERS.to_string(), c),
            (LIMITS.to_string(), sig.as_bytes().to_vec()),
            ("v".to_string(), b"3".to_vec()),
        ])
    }

    #[test]
    fn reads_the_packed_layout() {
        let m = packed(
            &[677, 42, 1_700_000_000, 1_700_000_000_000_600, 0],
            "60:600000,3600:360000",
        );
        let c = Counters::read(&m);
        assert_eq!(c.month, Some(677));
        assert_eq!(c.used, 42);
        assert_eq!(c.last_use, Some(1_700_000_000));
        assert_eq!(
            c.buckets,
            vec![
                Bucket {
                    period_secs: 60,
                    interval_us: 600_000,
                    tat_us: 1_700_000_000_000_600
                },
                Bucket {
                    period_secs: 3600,
                    interval_us: 360_000,
                    tat_us: 0
                },
            ]
        );
        assert_eq!(text_fields(&m).get("v").map(String::as_str), Some("3"));
    }

    #[test]
    fn reads_the_legacy_layout() {
        let m: HashMap<String, Vec<u8>> = [
            ("p1", "60"),
            ("i1", "600000"),
            ("t1", "1700000000000600"),
            ("p2", "3600"),
            ("i2", "360000"),
            ("t2", "0"),
            ("m", "677"),
            ("u", "42"),
            ("lu", "1700000000"),
        ]
        .into_iter()
        .map(|(f, v)| (f.to_string(), v.as_bytes().to_vec()))
        .collect();
        let legacy = Counters::read(&m);
        let now = Counters::read(&packed(
            &[677, 42, 1_700_000_000, 1_700_000_000_000_600, 0],
            "60:600000,3600:360000",
        ));
        assert_eq!(legacy, now);
    }

    #[test]
    fn damaged_counters_read_as_absent_not_as_a_panic() {
        let c = Counters::read(&packed(&[], "60:x,garbage"));
        assert_eq!(c, Counters::default());
        let mut m = packed(&[5, 9, 0, 77], "60:1");
        if let Some(c) = m.get_mut(COUNTERS) {
            c.push(1);
        }
        assert_eq!(Counters::read(&m).used, 9);
    }

    #[test]
    fn the_signature_names_each_limit() {
        let l = [
            Limit::new(100, 60).unwrap().to_micros(),
            Limit::new(7, 1).unwrap().to_micros(),
        ];
        assert_eq!(signature(&l), "60:600000,1:142858");
    }
}
