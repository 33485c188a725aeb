//! A key record as it is kept in Redis: one hash per key, `<ns>:{<slot>}`, holding the record
//! fields below and the key's counters (`L`, `c`: packed, see `layout.rs`). One hash, one hash
//! slot: every script of a check touches exactly this key.
//!
//! | field | meaning |
//! |-------|---------|
//! | `v`   | record version, bumped by every change (checks compare it: versioned records) |
//! | `id`  | the key id (slot and tag) |
//! | `h`, `hp` | SHA-256 (hex) of the current and previous secret |
//! | `pu`  | previous secret valid until (ns since 1970; 0 = no grace) |
//! | `t`   | tier name |
//! | `sc`  | scopes, space-separated (empty = unrestricted) |
//! | `ex`  | expiry (s; 0 = none) |
//! | `q`   | monthly quota override (empty = the tier's) |
//! | `rv`  | `1` when revoked |
//! | `co`, `n`, `dp`, `ca` | consumer, name, display prefix, created at (s) |
//! | `im`  | `1` when the current secret was imported (absent: generated) |
//!
//! Imported secrets are also indexed by digest in `<ns>:{meta}:imported` (field: the SHA-256 in
//! hex; value: the key id), since an imported key does not name its id.

use std::collections::HashMap;

use crate::engine::clock::NANOS_PER_SEC;
use crate::keys::record::KeyInfo;
use crate::keys::KeyId;

/// A key record read from Redis.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rec {
    /// Record version.
    pub version: u64,
    /// Key id.
    pub id: KeyId,
    /// SHA-256 of the current secret.
    pub hash: [u8; 32],
    /// SHA-256 of the previous secret (zero when none).
    pub hash_prev: [u8; 32],
    /// The previous secret works until then (ns; 0 = not at all).
    pub prev_until_ns: u64,
    /// Tier name.
    pub tier: String,
    /// Granted scopes (empty = unrestricted).
    pub scopes: Vec<String>,
    /// Expiry, Unix seconds (0 = none).
    pub expires_at_s: u64,
    /// Quota override.
    pub quota: Option<u64>,
    /// Revoked.
    pub revoked: bool,
    /// Owner.
    pub consumer: String,
    /// Label.
    pub name: String,
    /// Display prefix.
    pub display_prefix: String,
    /// Creation, Unix seconds.
    pub created_at_s: u64,
    /// The current secret was imported.
    pub imported: bool,
}

/// A digest in hex, as records and the import index keep it.
pub(super) fn hex(b: &[u8; 32]) -> String {
    let mut s = String::with_capacity(64);
    for x in b {
        s.push_str(&format!("{x:02x}"));
    }
    s
}

fn unhex(s: &str) -> Option<[u8; 32]> {
    if s.is_empty() {
        return Some([0; 32]);
    }
    if s.len() != 64 {
        return None;
    }
    let mut out = [0u8; 32];
    for (i, o) in out.iter_mut().enumerate() {
        *o = u8::from_str_radix(s.get(2 * i..2 * i + 2)?, 16).ok()?;
    }
    Some(out)
}

impl Rec {
    /// The record's fields as HSET arguments (without `v`).
    pub fn fields(&self) -> Vec<(&'static str, String)> {
        vec![
            ("id", self.id.0.to_string()),
            ("h", hex(&self.hash)),
            (
                "hp",
                if self.hash_prev == [0; 32] {
                    String::new()
                } else {
                    hex(&self.hash_prev)
                },
            ),
            ("pu", self.prev_until_ns.to_string()),
            ("t", self.tier.clone()),
            ("sc", self.scopes.join(" ")),
            ("ex", self.expires_at_s.to_string()),
            ("q", self.quota.map(|q| q.to_string()).unwrap_or_default()),
            ("rv", if self.revoked { "1" } else { "0" }.to_string()),
            ("co", self.consumer.clone()),
            ("n", self.name.clone()),
            ("dp", self.display_prefix.clone()),
            ("ca", self.created_at_s.to_string()),
            ("im", if self.imported { "1" } else { "0" }.to_string()),
        ]
    }

    /// Parses a record from `HGETALL`; `Err` names the bad field (a record written by something
    /// else than quotad, or damaged).
    pub fn parse(m: &HashMap<String, String>) -> Result<Rec, String> {
        let get = |f: &str| {
            m.get(f)
                .map(String::as_str)
                .ok_or(format!("field {f} missing"))
        };
        let num = |f: &str| -> Result<u64, String> {
            get(f)?
                .parse::<u64>()
                .map_err(|_| format!("field {f} is not a number"))
        };
        Ok(Rec {
            version: num("v")?,
            id: KeyId(num("id")?),
            hash: unhex(get("h")?).ok_or("field h is not a SHA-256")?,
            hash_prev: unhex(get("hp").unwrap_or("")).ok_or("field hp is not a SHA-256")?,
            prev_until_ns: num("pu")?,
            tier: get("t")?.to_string(),
            scopes: get("sc")?.split_whitespace().map(str::to_string).collect(),
            expires_at_s: num("ex")?,
            quota: match get("q").unwrap_or("") {
                "" => None,
                q => Some(
                    q.parse()
                        .map_err(|_| "field q is not a number".to_string())?,
                ),
            },
            revoked: get("rv")? == "1",
            consumer: get("co")?.to_string(),
            name: get("n").unwrap_or("").to_string(),
            display_prefix: get("dp")?.to_string(),
            created_at_s: num("ca")?,
            imported: m.get("im").is_some_and(|v| v == "1"),
        })
    }

    /// The admin API's view.
    pub fn info(&self) -> KeyInfo {
        KeyInfo {
            id: self.id,
            prefix: self.display_prefix.clone(),
            consumer: self.consumer.clone(),
            tier: self.tier.clone(),
            scopes: self.scopes.clone(),
            expires_at: (self.expires_at_s != 0).then_some(self.expires_at_s),
            monthly_quota: self.quota,
            name: (!self.name.is_empty()).then(|| self.name.clone()),
            created_at: self.created_at_s,
            revoked: self.revoked,
            previous_valid_until: (self.prev_until_ns != 0)
                .then_some(self.prev_until_ns.div_ceil(NANOS_PER_SEC)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_record_survives_its_hash_form() {
        let r = Rec {
            version: 3,
            id: KeyId::new(7, 0xdead_beef),
            hash: [0xab; 32],
            hash_prev: [0; 32],
            prev_until_ns: 0,
            tier: "pro".into(),
            scopes: vec!["a:read".into(), "b".into()],
            expires_at_s: 0,
            quota: Some(5),
            revoked: false,
            consumer: "acme corp".into(),
            name: String::new(),
            display_prefix: "qd_AAAAAAAA".into(),
            created_at_s: 1_700_000_000,
            imported: true,
        };
        let mut m: HashMap<String, String> = r
            .fields()
            .into_iter()
            .map(|(k, v)| (k.to_string(), v))
            .collect();
        m.insert("v".into(), "3".into());
        assert_eq!(Rec::parse(&m), Ok(r));
        m.insert("h".into(), "zz".into());
        assert_eq!(Rec::parse(&m), Err("field h is not a SHA-256".to_string()));
    }
}
