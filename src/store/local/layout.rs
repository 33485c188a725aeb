//! The on-disk layout of the memory-mapped data files: fixed-width, little-endian `#[repr(C)]`
//! records checked by `zerocopy`.
//!
//! Every segment file is one 4 KiB header page followed by `SLOTS_PER_SEGMENT` slots:
//!
//! ```text
//! segment file  (counters-NNNNN.qd: 128-byte slots; keys-NNNNN.qd: 512-byte slots)
//! +------------------+--------+--------+-----+
//! | header (4096 B)  | slot 0 | slot 1 | ... |
//! +------------------+--------+--------+-----+
//!
//! header: magic[8] version u32 slot_size u32 slots u32 segment u32 data_dir_id u64
//!         created_unix u64 crc32 u32 pad u32            (CRC-32C over the bytes before it)
//!
//! slot = two halves; each half begins with   seq u32 | crc32c u32 | body ...
//! ```
//!
//! A slot is double-buffered: an update writes the *older* half with `seq + 1` and a fresh CRC, so
//! the newer half is never touched while it is the current state. A process killed in the middle
//! of a write leaves at most the half being written torn, and the other half still holds the state
//! before the (unreported) update. The CRC of each half covers its `seq` and body.

use zerocopy::{FromBytes, Immutable, IntoBytes, KnownLayout};

/// Size of the header page.
pub const HEADER_LEN: usize = 4096;
/// Slots per segment file.
pub const SLOTS_PER_SEGMENT: u32 = 65_536;
/// Current format version of both file kinds.
pub const FORMAT_VERSION: u32 = 1;
/// Magic of counter segments.
pub const COUNTERS_MAGIC: [u8; 8] = *b"QDCOUNT1";
/// Magic of key-record segments.
pub const KEYS_MAGIC: [u8; 8] = *b"QDKEYS01";
/// Burst buckets per key.
pub const BUCKETS: usize = 4;

/// The header at offset 0 of every segment file.
#[derive(Debug, Clone, Copy, FromBytes, IntoBytes, KnownLayout, Immutable, PartialEq, Eq)]
#[repr(C)]
pub struct SegmentHeader {
    /// `COUNTERS_MAGIC` or `KEYS_MAGIC`.
    pub magic: [u8; 8],
    /// `FORMAT_VERSION`.
    pub version: u32,
    /// Bytes per slot.
    pub slot_size: u32,
    /// Slots in this file.
    pub slots: u32,
    /// Index of this segment.
    pub segment: u32,
    /// Identifies the data directory the file belongs to.
    pub data_dir_id: u64,
    /// When the file was created.
    pub created_unix: u64,
    /// CRC-32C of the bytes before this field.
    pub crc: u32,
    /// Zero.
    pub pad: u32,
}

impl SegmentHeader {
    /// The CRC the header should carry.
    pub fn compute_crc(&self) -> u32 {
        let bytes = self.as_bytes();
        crc32c::crc32c(&bytes[..bytes.len() - 8])
    }
}

/// One half of a key's counter slot: every bucket, the month's usage and last use.
#[derive(
    Debug, Clone, Copy, Default, FromBytes, IntoBytes, KnownLayout, Immutable, PartialEq, Eq,
)]
#[repr(C)]
pub struct CounterHalf {
    /// Write sequence; the half with the larger (wrapping) value is current. 0 = never written.
    pub seq: u32,
    /// CRC-32C of `seq` and the body.
    pub crc: u32,
    /// High 32 bits of the owner key id (the slot is implied): guards against a slot read for
    /// the wrong record.
    pub key_tag: u32,
    /// Tier index the buckets were last written under.
    pub tier: u16,
    /// That tier's limits version then (see `CatalogDoc::tier_versions`): when the tier's limits
    /// change, the buckets are converted on the next check so tokens used stay used.
    pub limits_version: u16,
    /// GCRA theoretical arrival time per burst limit, ns since the epoch (0 = full bucket).
    pub tat: [u64; BUCKETS],
    /// Requests counted in `month`.
    pub month_used: u64,
    /// Month of `month_used` (`year * 12 + month0`).
    pub month: u32,
    /// Last admitted request, Unix seconds (0 = never).
    pub last_used_s: u32,
}

impl CounterHalf {
    /// `body` (its `seq` and `crc` ignored) sealed as the successor of a half whose sequence is
    /// `prev_seq`: with `seq + 1` (never 0) and its CRC, the same half as [`seal`] makes.
    ///
    /// It is assembled as eight 64-bit words in registers, the CRC taken from those words, so
    /// that nothing is read back from memory. Setting the narrow fields in memory and then
    /// reading them back wider (the CRC's 8-byte loads, the 16-byte loads of copying the half into
    /// the mapped file) cannot be served from the pending stores: each such load waits for them to
    /// reach the cache. On a check's path that wait was the largest single cost of the decision
    /// (see docs/PERFORMANCE.md).
    #[inline(always)]
    pub fn successor(prev_seq: u32, body: &CounterHalf) -> CounterHalf {
        let seq = prev_seq.wrapping_add(1).max(1);
        // Bytes 8.. as little-endian words.
        let rest = [
            u64::from(body.key_tag)
                | u64::from(body.tier) << 32
                | u64::from(body.limits_version) << 48,
            body.tat[0],
            body.tat[1],
            body.tat[2],
            body.tat[3],
            body.month_used,
            u64::from(body.month) | u64::from(body.last_used_s) << 32,
        ];
        let crc = words_crc(seq, &rest);
        let w = [
            u64::from(seq) | u64::from(crc) << 32,
            rest[0],
            rest[1],
            rest[2],
            rest[3],
            rest[4],
            rest[5],
            rest[6],
        ]
        .map(u64::to_le);
        zerocopy::transmute!(w)
    }
}

/// [`half_crc`] of a half whose first four bytes are `seq` and whose bytes 8.. are the
/// little-endian words `body`.
#[inline(always)]
fn words_crc(seq: u32, body: &[u64; 7]) -> u32 {
    #[cfg(target_arch = "x86_64")]
    {
        if std::arch::is_x86_feature_detected!("sse4.2") {
            // SAFETY: the feature was just detected.
            return unsafe { crc_words_sse42(seq, body.iter().copied()) };
        }
    }
    words_crc_portable(seq, body)
}

/// [`words_crc`] without SSE 4.2.
fn words_crc_portable(seq: u32, body: &[u64; 7]) -> u32 {
    let mut b = [0u8; 56];
    for (chunk, w) in b.chunks_exact_mut(8).zip(body) {
        chunk.copy_from_slice(&w.to_le_bytes());
    }
    crc_parts(&seq.to_le_bytes(), &b)
}

/// One half of a key record.
#[derive(Debug, Clone, Copy, FromBytes, IntoBytes, KnownLayout, Immutable, PartialEq, Eq)]
#[repr(C)]
pub struct RecordHalf {
    /// Write sequence, as in [`CounterHalf`].
    pub seq: u32,
    /// CRC-32C of `seq` and the body.
    pub crc: u32,
    /// Key id (slot in the low 32 bits).
    pub id: u64,
    /// SHA-256 of the current raw key.
    pub hash_current: [u8; 32],
    /// SHA-256 of the previous raw key (during a rotation grace period).
    pub hash_previous: [u8; 32],
    /// The previous key is honoured until then, ns since the epoch (0 = not at all).
    pub previous_valid_until_ns: u64,
    /// Creation, Unix seconds.
    pub created_at_s: u64,
    /// Expiry, Unix seconds (0 = none).
    pub expires_at_s: u64,
    /// Monthly quota override (`NO_OVERRIDE` = the tier's).
    pub monthly_quota: u64,
    /// Tier index in the catalog.
    pub tier: u16,
    /// `FLAG_*` bits.
    pub flags: u16,
    /// Scope-set index in the catalog (0 = unrestricted).
    pub scope_set: u32,
    /// Display prefix, NUL-padded.
    pub display_prefix: [u8; 16],
    /// Consumer, NUL-padded.
    pub consumer: [u8; 64],
    /// Name, NUL-padded.
    pub name: [u8; 56],
}

/// `RecordHalf::monthly_quota` when the tier's quota applies.
pub const NO_OVERRIDE: u64 = u64::MAX;

/// A stored monthly quota override as the policy reads it (`None`: the tier's quota).
#[inline]
pub fn quota_override(stored: u64) -> Option<u64> {
    (stored != NO_OVERRIDE).then_some(stored)
}
/// The key is revoked.
pub const FLAG_REVOKED: u16 = 1;
/// The record is in use (distinguishes a written record from zeroes).
pub const FLAG_LIVE: u16 = 2;
/// The key was deleted: the slot is free for the next creation (the record keeps only its slot).
pub const FLAG_DELETED: u16 = 8;
/// The current secret was imported (`hash_current` is of a key issued elsewhere; the display
/// prefix is stored whole).
pub const FLAG_IMPORTED: u16 = 0x10;
/// The previous secret (honoured until `previous_valid_until_ns`) was imported.
pub const FLAG_PREV_IMPORTED: u16 = 0x20;

/// Not a key: the counters of a consumer on a tier counting by consumer (`tier`, `consumer`),
/// which every key of that consumer on that tier spends. Never authenticates (revoked, no
/// secret), is listed nowhere and outlives its keys (deleting and re-creating a key does not
/// give the consumer its quota back).
pub const FLAG_GROUP: u16 = 0x40;

/// The digests of imported secrets record `r` holds: each is looked up by its hash, since an
/// imported key does not name its id.
pub fn imported_hashes(r: &RecordHalf) -> impl Iterator<Item = [u8; 32]> {
    let cur = (r.flags & FLAG_IMPORTED != 0).then_some(r.hash_current);
    let prev = (r.flags & FLAG_PREV_IMPORTED != 0 && r.previous_valid_until_ns != 0)
        .then_some(r.hash_previous);
    cur.into_iter().chain(prev)
}
/// Bits 8..13 of `flags` hold the length of the key's prefix, which `display_prefix` holds whole
/// (a prefix is at most 16 bytes); without this flag (records written before it), the display
/// prefix is the prefix and 8 body characters, cut at 16 bytes.
pub const FLAG_PREFIX_LEN: u16 = 4;

/// `flags` bits for a key whose prefix is `prefix` (at most 16 bytes).
pub fn prefix_flags(prefix: &str) -> u16 {
    FLAG_PREFIX_LEN | ((prefix.len().min(16) as u16) << 8)
}

/// The key prefix and the display prefix of record `r`.
pub fn prefixes(r: &RecordHalf) -> (String, String) {
    let stored = get_str(&r.display_prefix).unwrap_or("");
    if r.flags & FLAG_IMPORTED != 0 {
        // Rotated, an imported key becomes one of quotad's.
        (
            crate::keys::format::DEFAULT_PREFIX.to_string(),
            stored.to_string(),
        )
    } else if r.flags & FLAG_PREFIX_LEN != 0 {
        let len = usize::from(r.flags >> 8 & 0x1f).min(stored.len());
        let prefix = stored.get(..len).unwrap_or("").to_string();
        let display = crate::keys::format::display_prefix_of(&prefix, crate::keys::KeyId(r.id));
        (prefix, display)
    } else {
        // An older record: the prefix and 8 body characters, cut at 16 bytes. The body
        // characters encode the id, so where they begin can be found: the shortest prefix whose
        // remainder is the start of them.
        let id = crate::keys::KeyId(r.id);
        let body = crate::keys::format::display_prefix_of("", id);
        let len = (0..=stored.len())
            .find(|&l| {
                let rest = stored.get(l..).unwrap_or("");
                rest.len() <= 8 && (rest.len() == 8 || stored.len() == 16) && body.starts_with(rest)
            })
            .unwrap_or(stored.len());
        let prefix = stored.get(..len).unwrap_or("").to_string();
        let display = crate::keys::format::display_prefix_of(&prefix, id);
        (prefix, display)
    }
}

/// A counter slot: two halves.
pub type CounterSlot = [CounterHalf; 2];
/// A key-record slot: two halves.
pub type RecordSlot = [RecordHalf; 2];

const _: () = assert!(std::mem::size_of::<SegmentHeader>() == 48);
const _: () = assert!(std::mem::size_of::<CounterHalf>() == 64);
// `CounterHalf::successor` assembles the half from exactly these words.
const _: () = assert!(BUCKETS == 4);
const _: () = assert!(std::mem::size_of::<CounterSlot>() == 128);
const _: () = assert!(std::mem::size_of::<RecordHalf>() == 256);
const _: () = assert!(std::mem::size_of::<RecordSlot>() == 512);

/// A double-buffered half: the shared `seq | crc | body` shape.
pub trait Half: FromBytes + IntoBytes + KnownLayout + Immutable + Copy {
    /// The write sequence.
    fn seq(&self) -> u32;
    /// Sets the write sequence.
    fn set_seq(&mut self, seq: u32);
    /// The stored CRC.
    fn crc(&self) -> u32;
    /// Sets the stored CRC.
    fn set_crc(&mut self, crc: u32);

    /// CRC-32C over `seq` and the body (bytes 8..).
    #[inline]
    fn compute_crc(&self) -> u32 {
        half_crc(self.as_bytes())
    }

    /// Whether every byte is zero (never written).
    fn is_zero(&self) -> bool {
        self.as_bytes().iter().all(|&b| b == 0)
    }
}

macro_rules! impl_half {
    ($t:ty) => {
        impl Half for $t {
            #[inline]
            fn seq(&self) -> u32 {
                self.seq
            }
            #[inline]
            fn set_seq(&mut self, seq: u32) {
                self.seq = seq;
            }
            #[inline]
            fn crc(&self) -> u32 {
                self.crc
            }
            #[inline]
            fn set_crc(&mut self, crc: u32) {
                self.crc = crc;
            }
        }
    };
}
impl_half!(CounterHalf);
impl_half!(RecordHalf);

/// CRC-32C of `b[..4] ++ b[8..]` (a half without its CRC field), checked for every half read at
/// start-up. On x86-64 with SSE4.2 it is one `crc32` instruction per 8 bytes rather than a call
/// into the general-purpose routine; elsewhere (or for odd sizes) the `crc32c` crate computes the
/// same. (A check's new counter half takes its CRC from its words: [`CounterHalf::successor`].)
#[inline]
pub fn half_crc(b: &[u8]) -> u32 {
    #[cfg(target_arch = "x86_64")]
    {
        if b.len() % 8 == 0 && std::arch::is_x86_feature_detected!("sse4.2") {
            let word = |c: &[u8]| {
                let mut q = [0u8; 8];
                q.copy_from_slice(c);
                u64::from_le_bytes(q)
            };
            let mut seq = [0u8; 4];
            seq.copy_from_slice(&b[..4]);
            let words = b[8..].chunks_exact(8).map(word);
            // SAFETY: the feature was just detected.
            return unsafe { crc_words_sse42(u32::from_le_bytes(seq), words) };
        }
    }
    crc_parts(&b[..4], &b[8..])
}

/// CRC-32C of `seq ++ rest`, with the `crc32c` crate.
fn crc_parts(seq: &[u8], rest: &[u8]) -> u32 {
    crc32c::crc32c_append(crc32c::crc32c(seq), rest)
}

/// CRC-32C of the little-endian bytes of `seq` followed by those of `words`, with SSE4.2: what
/// [`half_crc`] and [`words_crc`] compute, from bytes or from words.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "sse4.2")]
#[inline]
unsafe fn crc_words_sse42(seq: u32, words: impl Iterator<Item = u64>) -> u32 {
    use std::arch::x86_64::{_mm_crc32_u32, _mm_crc32_u64};
    let mut crc = u64::from(_mm_crc32_u32(!0, seq));
    for w in words {
        crc = _mm_crc32_u64(crc, w);
    }
    !(crc as u32)
}

/// Which half of a slot is current, by sequence (wrapping). Both zero: half 0 (the empty state).
#[inline]
pub fn newest<H: Half>(slot: &[H; 2]) -> usize {
    if (slot[1].seq().wrapping_sub(slot[0].seq()) as i32) > 0 {
        1
    } else {
        0
    }
}

/// Stamps `body` as the successor of a half whose sequence is `prev_seq`: `seq + 1` (never 0) and
/// its CRC.
#[inline]
pub fn seal<H: Half>(body: &mut H, prev_seq: u32) {
    body.set_seq(prev_seq.wrapping_add(1).max(1));
    body.set_crc(0);
    let crc = body.compute_crc();
    body.set_crc(crc);
}

/// Writes `body` as the new current state of `slot`: into the older half, with `seq + 1` and CRC.
#[inline]
pub fn write_next<H: Half>(slot: &mut [H; 2], mut body: H) {
    let cur = newest(slot);
    seal(&mut body, slot[cur].seq());
    slot[1 - cur] = body;
}

/// What a slot holds after a crash-consistent read.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SlotState<H> {
    /// Never written.
    Empty,
    /// A valid state (the newest valid half).
    Valid(H),
    /// One half never written, the other torn: the very first write was interrupted.
    Interrupted,
    /// Neither half is valid: the slot is damaged.
    Damaged,
}

/// Reads a slot as start-up sees it: the newest half whose CRC holds; a torn write (one half bad,
/// the other valid or empty) yields the other half, as the torn update was never acknowledged.
pub fn read_checked<H: Half>(slot: &[H; 2]) -> SlotState<H> {
    let ok = |h: &H| !h.is_zero() && h.compute_crc() == h.crc();
    let (a, b) = (&slot[0], &slot[1]);
    match (a.is_zero(), b.is_zero()) {
        (true, true) => return SlotState::Empty,
        (true, false) => {
            return if ok(b) {
                SlotState::Valid(*b)
            } else {
                SlotState::Interrupted
            }
        }
        (false, true) => {
            return if ok(a) {
                SlotState::Valid(*a)
            } else {
                SlotState::Interrupted
            }
        }
        _ => {}
    }
    match (ok(a), ok(b)) {
        (true, true) => SlotState::Valid(slot[newest(slot)]),
        (true, false) => SlotState::Valid(*a),
        (false, true) => SlotState::Valid(*b),
        (false, false) => SlotState::Damaged,
    }
}

/// Copies `s` into a NUL-padded fixed field (the caller has checked the length).
pub fn put_str<const N: usize>(s: &str) -> [u8; N] {
    let mut out = [0u8; N];
    let n = s.len().min(N);
    out[..n].copy_from_slice(&s.as_bytes()[..n]);
    out
}

/// Reads a NUL-padded fixed field; `None` if it is not UTF-8.
pub fn get_str(b: &[u8]) -> Option<&str> {
    let end = b.iter().position(|&c| c == 0).unwrap_or(b.len());
    std::str::from_utf8(&b[..end]).ok()
}

#[cfg(test)]
mod tests {
    use super::*;
    use zerocopy::FromZeros;

    proptest::proptest! {
        /// The half assembled from words is the half `seal` makes of the same fields, byte for
        /// byte, and its CRC is the one start-up checks.
        #[test]
        fn successor_is_the_sealed_half(
            prev_seq: u32,
            key_tag: u32,
            tier: u16,
            limits_version: u16,
            tat: [u64; BUCKETS],
            month_used: u64,
            month: u32,
            last_used_s: u32,
        ) {
            let body = CounterHalf {
                seq: 7,
                crc: 9,
                key_tag,
                tier,
                limits_version,
                tat,
                month_used,
                month,
                last_used_s,
            };
            let mut sealed = body;
            seal(&mut sealed, prev_seq);
            let built = CounterHalf::successor(prev_seq, &body);
            proptest::prop_assert_eq!(built.as_bytes(), sealed.as_bytes());
            proptest::prop_assert_eq!(built.crc, built.compute_crc());
            proptest::prop_assert_ne!(built.seq, 0);
            let b = built.as_bytes();
            let body: [u64; 7] = std::array::from_fn(|i| {
                u64::from_le_bytes(b[8 + 8 * i..16 + 8 * i].try_into().expect("eight bytes"))
            });
            proptest::prop_assert_eq!(words_crc_portable(built.seq, &body), built.crc);
        }
    }

    fn half(x: u64) -> CounterHalf {
        CounterHalf {
            key_tag: 7,
            month_used: x,
            ..Default::default()
        }
    }

    #[test]
    fn writes_alternate_halves_and_newest_follows() {
        let mut slot = CounterSlot::default();
        assert_eq!(read_checked(&slot), SlotState::Empty);
        write_next(&mut slot, half(1));
        assert_eq!(slot[newest(&slot)].month_used, 1);
        write_next(&mut slot, half(2));
        assert_eq!(slot[newest(&slot)].month_used, 2);
        assert_eq!(slot[1 - newest(&slot)].month_used, 1);
        assert!(matches!(read_checked(&slot), SlotState::Valid(h) if h.month_used == 2));
    }

    #[test]
    fn a_torn_newest_half_falls_back_to_the_previous_state() {
        let mut slot = CounterSlot::default();
        write_next(&mut slot, half(1));
        write_next(&mut slot, half(2));
        let n = newest(&slot);
        slot[n].tat[2] ^= 0xff;
        assert!(matches!(read_checked(&slot), SlotState::Valid(h) if h.month_used == 1));
        slot[1 - n].tat[0] ^= 1;
        assert_eq!(read_checked(&slot), SlotState::Damaged);
    }

    #[test]
    fn inline_crc_equals_the_crc32c_crate() {
        let mut h = half(12345);
        h.seq = 77;
        h.tat = [1, u64::MAX, 3, 0xdead_beef];
        let b = h.as_bytes();
        let reference = crc32c::crc32c_append(crc32c::crc32c(&b[..4]), &b[8..]);
        assert_eq!(half_crc(b), reference);
        let r = RecordHalf::new_zeroed();
        let rb = r.as_bytes();
        assert_eq!(
            half_crc(rb),
            crc32c::crc32c_append(crc32c::crc32c(&rb[..4]), &rb[8..])
        );
    }

    #[test]
    fn sequence_wraps_without_losing_order() {
        let mut slot = CounterSlot::default();
        slot[0].seq = u32::MAX;
        slot[1].seq = u32::MAX - 1;
        write_next(&mut slot, half(9));
        assert_eq!(
            slot[1].seq, 1,
            "sequence 0 is skipped: it means never written"
        );
        assert_eq!(newest(&slot), 1);
    }
}
