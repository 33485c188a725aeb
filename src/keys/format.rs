//! The raw key: `PREFIX` + 43 characters of URL-safe base64 (no padding) encoding 32 bytes:
//!
//! ```text
//!  0               8                                        32
//! +---------------+-----------------------------------------+
//! | key id (u64LE)|  secret: 24 bytes from the OS RNG       |
//! +---------------+-----------------------------------------+
//! ```
//!
//! The id lets the engine find the record without a table lookup; the 192-bit secret is what
//! authenticates. The prefix (default `qd_`, up to 16 characters of `A-Z a-z 0-9 _ -`) is part of
//! the key and covered by its hash. quotad stores only `SHA-256(raw key)` and a display prefix;
//! the raw key is returned once, at creation or rotation.

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine as _;
use sha2::{Digest, Sha256};

/// The default raw-key prefix.
pub const DEFAULT_PREFIX: &str = "qd_";
/// The longest prefix allowed.
pub const MAX_PREFIX_LEN: usize = 16;
/// Length of the encoded body after the prefix.
pub const BODY_LEN: usize = 43;
/// The longest raw key that can be well formed.
pub const MAX_RAW_LEN: usize = MAX_PREFIX_LEN + BODY_LEN;
/// Secret bytes per key (192 bits).
pub const SECRET_LEN: usize = 24;

/// A key's stable identifier: slot index in the low 32 bits, a random tag in the high 32 bits.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct KeyId(pub u64);

impl KeyId {
    /// Builds an id from a slot and a tag.
    pub fn new(slot: u32, tag: u32) -> Self {
        KeyId(u64::from(tag) << 32 | u64::from(slot))
    }

    /// The slot in the data files.
    pub fn slot(self) -> u32 {
        self.0 as u32
    }

    /// Parses the public form `key_<16 hex digits>`.
    pub fn parse(s: &str) -> Option<Self> {
        let hex = s.strip_prefix("key_")?;
        if hex.len() != 16 {
            return None;
        }
        u64::from_str_radix(hex, 16).ok().map(KeyId)
    }
}

impl std::fmt::Display for KeyId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "key_{:016x}", self.0)
    }
}

/// Why a presented key is not well formed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum RawKeyError {
    /// Not of the form prefix + 43 base64url characters.
    #[error("malformed API key")]
    Malformed,
}

const INVALID: u8 = 0x80;

/// URL-safe base64 alphabet -> 6-bit value; `INVALID` for any other byte.
static DECODE: [u8; 256] = {
    let mut t = [INVALID; 256];
    let alphabet = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";
    let mut i = 0;
    while i < 64 {
        t[alphabet[i] as usize] = i as u8;
        i += 1;
    }
    t
};

/// Whether `p` is an acceptable key prefix.
pub fn valid_prefix(p: &str) -> bool {
    p.len() <= MAX_PREFIX_LEN
        && p.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
}

/// Extracts the key id from a presented raw key without allocating.
pub fn parse(raw: &str) -> Result<KeyId, RawKeyError> {
    let b = raw.as_bytes();
    if b.len() < BODY_LEN || b.len() > MAX_RAW_LEN {
        return Err(RawKeyError::Malformed);
    }
    let (prefix, body) = raw.split_at(b.len() - BODY_LEN);
    if !valid_prefix(prefix) {
        return Err(RawKeyError::Malformed);
    }
    // The whole body must be URL-safe base64; the first 11 characters (66 bits) carry the id.
    // A table lookup per character: this runs on every check.
    let mut bad = 0u8;
    for &c in body.as_bytes() {
        bad |= DECODE[usize::from(c)];
    }
    if bad & INVALID != 0 {
        return Err(RawKeyError::Malformed);
    }
    decode_id(body.as_bytes()).ok_or(RawKeyError::Malformed)
}

/// The id a raw key names, decoded from the first 11 characters of its body; `None` when the
/// key's length is out of bounds or those characters are not URL-safe base64. Nothing else is
/// validated: a store whose cached digest of a verified key equals the presented key's needs
/// nothing more (only well-formed keys are ever verified), and runs [`parse`] only to say why a
/// key it refuses is refused.
#[inline]
pub fn id_hint(raw: &[u8]) -> Option<KeyId> {
    if raw.len() < BODY_LEN || raw.len() > MAX_RAW_LEN {
        return None;
    }
    decode_id(&raw[raw.len() - BODY_LEN..])
}

/// The id in the first 11 characters (66 bits) of a key's body.
#[inline]
fn decode_id(body: &[u8]) -> Option<KeyId> {
    let mut acc: u128 = 0;
    let mut bad = 0u8;
    for &c in body.get(..11)? {
        let v = DECODE[usize::from(c)];
        bad |= v;
        acc = acc << 6 | u128::from(v & 0x3f);
    }
    if bad & INVALID != 0 {
        return None;
    }
    // 66 bits decoded, big-endian bit order: the first 64 are the 8 id bytes.
    let bytes = ((acc >> 2) as u64).to_be_bytes();
    Some(KeyId(u64::from_le_bytes(bytes)))
}

/// The slot a raw key names, read from the first six characters of its body without validating
/// anything else: a hint for starting the key's memory loads early. [`parse`] decides whether the
/// key is well formed; a hint from a malformed key names some slot or none.
#[inline]
pub fn slot_hint(raw: &[u8]) -> Option<u32> {
    let body = raw.get(raw.len().checked_sub(BODY_LEN)?..)?;
    let mut acc: u64 = 0;
    for &c in &body[..6] {
        acc = acc << 6 | u64::from(DECODE[usize::from(c)] & 0x3f);
    }
    // 36 bits: the id's first four bytes (the slot, little-endian) and four bits of the fifth.
    Some(u32::from_le_bytes(((acc >> 4) as u32).to_be_bytes()))
}

/// Makes a new raw key for `id` with `prefix`, secret bytes from the OS RNG.
pub fn generate(prefix: &str, id: KeyId) -> Result<String, getrandom::Error> {
    let mut bytes = [0u8; 8 + SECRET_LEN];
    bytes[..8].copy_from_slice(&id.0.to_le_bytes());
    getrandom::getrandom(&mut bytes[8..])?;
    let mut s = String::with_capacity(prefix.len() + BODY_LEN);
    s.push_str(prefix);
    URL_SAFE_NO_PAD.encode_string(bytes, &mut s);
    Ok(s)
}

/// A keyed SipHash-1-3 (64-bit) of raw keys, keyed at random per process: the digest a store
/// caches for a key once its secret has been verified against the stored SHA-256, so later checks
/// compare 8 bytes instead of hashing with SHA-256. It never outlives the process and is never
/// written anywhere; without the key an attacker matches a cached digest with probability 2^-64
/// per attempt.
#[derive(Clone, Copy)]
pub struct FastDigest {
    k0: u64,
    k1: u64,
}

impl std::fmt::Debug for FastDigest {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FastDigest").finish_non_exhaustive()
    }
}

impl FastDigest {
    /// A digest with a fresh key from the OS RNG.
    pub fn random() -> Result<Self, getrandom::Error> {
        let mut b = [0u8; 16];
        getrandom::getrandom(&mut b)?;
        let (k0, k1) = b.split_at(8);
        let word = |h: &[u8]| {
            let mut w = [0u8; 8];
            w.copy_from_slice(h);
            u64::from_le_bytes(w)
        };
        Ok(FastDigest {
            k0: word(k0),
            k1: word(k1),
        })
    }

    /// The digest of `raw` (0 is possible but vanishingly rare; stores use 0 for "none yet").
    #[inline]
    pub fn of(&self, raw: &str) -> u64 {
        use std::hash::Hasher as _;
        let mut h = siphasher::sip::SipHasher13::new_with_keys(self.k0, self.k1);
        h.write(raw.as_bytes());
        h.finish()
    }
}

/// Shortest and longest key that can be imported.
pub const IMPORT_LEN: std::ops::RangeInclusive<usize> = 16..=256;

/// Whether `raw` could be an imported key: 16 to 256 visible ASCII characters. Also what a check
/// accepts before it looks for one.
pub fn importable(raw: &str) -> bool {
    IMPORT_LEN.contains(&raw.len()) && raw.bytes().all(|b| b.is_ascii_graphic())
}

/// What listings show of an imported raw key: its first quarter, at most 12 characters.
pub fn import_display_prefix(raw: &str) -> String {
    raw.get(..(raw.len() / 4).min(12)).unwrap_or("").to_string()
}

/// Parses `sha256:<64 hex digits>`.
pub fn parse_sha256(s: &str) -> Option<[u8; 32]> {
    let hex = s.strip_prefix("sha256:")?;
    if hex.len() != 64 {
        return None;
    }
    let mut out = [0u8; 32];
    for (i, o) in out.iter_mut().enumerate() {
        *o = u8::from_str_radix(hex.get(2 * i..2 * i + 2)?, 16).ok()?;
    }
    Some(out)
}

/// `SHA-256(raw key)`: what is stored.
pub fn hash(raw: &str) -> [u8; 32] {
    Sha256::digest(raw.as_bytes()).into()
}

/// The prefix a key was made with, from its display prefix (which adds 8 body characters); the
/// default prefix if the display prefix is too short to hold one.
pub fn prefix_of_display(display: &str) -> &str {
    display
        .len()
        .checked_sub(8)
        .and_then(|n| display.get(..n))
        .unwrap_or(DEFAULT_PREFIX)
}

/// The display prefix of key `id` with `prefix`: the prefix and the first 8 body characters,
/// which encode the first 6 bytes of the id (no secret bits). Equal to
/// `display_prefix(raw)` of any raw key of that id and prefix.
pub fn display_prefix_of(prefix: &str, id: KeyId) -> String {
    let mut s = String::with_capacity(prefix.len() + 8);
    s.push_str(prefix);
    URL_SAFE_NO_PAD.encode_string(&id.0.to_le_bytes()[..6], &mut s);
    s
}

/// The display prefix: the key's prefix and the first 8 body characters (id bits, no secret).
pub fn display_prefix(raw: &str) -> String {
    let cut = raw.len().saturating_sub(BODY_LEN) + 8;
    raw.get(..cut).unwrap_or("").to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn generated_keys_parse_back_to_their_id() {
        let id = KeyId::new(1234, 0xdead_beef);
        let k = generate("qd_", id).unwrap();
        assert_eq!(display_prefix_of("qd_", id), display_prefix(&k));
        let long = generate("acme_live_0123_x", id).unwrap();
        assert_eq!(
            display_prefix_of("acme_live_0123_x", id),
            display_prefix(&long)
        );
        assert!(k.starts_with("qd_"));
        assert_eq!(k.len(), 3 + BODY_LEN);
        assert_eq!(parse(&k), Ok(id));
        assert_eq!(id.slot(), 1234);
        assert_ne!(generate("qd_", id).unwrap(), k, "secrets differ");
    }

    #[test]
    fn the_slot_hint_of_a_well_formed_key_is_its_slot() {
        for (slot, tag) in [
            (0, 0),
            (1, 1),
            (1234, 0xdead_beef),
            (u32::MAX, 7),
            (0x0102_0304, 9),
        ] {
            for prefix in ["qd_", "", "a-very-long-pfx_"] {
                let k = generate(prefix, KeyId::new(slot, tag)).unwrap();
                assert_eq!(slot_hint(k.as_bytes()), Some(slot), "{k}");
            }
        }
        assert_eq!(slot_hint(b"short"), None);
        assert_eq!(slot_hint(b""), None);
    }

    #[test]
    fn key_ids_round_trip_through_text() {
        let id = KeyId::new(7, 9);
        assert_eq!(KeyId::parse(&id.to_string()), Some(id));
        assert_eq!(KeyId::parse("key_xyz"), None);
    }

    #[test]
    fn malformed_keys_are_refused() {
        let good = generate("ak_", KeyId(5)).unwrap();
        assert!(parse(&good).is_ok());
        for bad in [
            "",
            "qd_short",
            &good[..good.len() - 1].replace("ak_", ""),
            &good.replace('_', "!"),
            &format!("{}{}", "p".repeat(17), &good[3..]),
            &format!("qd_{}", "+".repeat(BODY_LEN)),
        ] {
            assert_eq!(parse(bad), Err(RawKeyError::Malformed), "{bad:?}");
        }
    }

    #[test]
    fn display_prefix_shows_no_secret_bytes() {
        let k = generate("qd_", KeyId(1)).unwrap();
        let d = display_prefix(&k);
        assert_eq!(d.len(), 3 + 8);
        assert!(k.starts_with(&d));
    }
}
