//! `POST /admin/v1/keys/import`: a key issued elsewhere, brought in as it is, by its raw value or
//! by its SHA-256, so that a provider moves to quotad without reissuing its customers' keys.
//! The raw key, if given, is hashed here and dropped; the answer never carries it.

use serde::Deserialize;

use super::{created, error, new_key, parse_json};
use crate::keys::format as keyfmt;
use crate::keys::record::Imported;
use crate::keys::NewKey;
use crate::server::reply::Resp;
use crate::store::Store;

#[derive(Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct ImportKey {
    #[serde(default)]
    key: Option<String>,
    #[serde(default)]
    key_hash: Option<String>,
    #[serde(default)]
    prefix: Option<String>,
    consumer: String,
    tier: String,
    #[serde(default)]
    scopes: Option<Vec<String>>,
    #[serde(default)]
    expires_at: Option<String>,
    #[serde(default)]
    monthly_quota: Option<u64>,
    #[serde(default)]
    name: Option<String>,
}

/// The digest and display prefix of the key `b` brings, or why it brings none.
fn secret_of(b: &ImportKey) -> Result<Imported, String> {
    match (&b.key, &b.key_hash) {
        (Some(raw), None) => {
            if !keyfmt::importable(raw) {
                return Err(format!(
                    "key must be {} to {} visible ASCII characters",
                    keyfmt::IMPORT_LEN.start(),
                    keyfmt::IMPORT_LEN.end()
                ));
            }
            Ok(Imported {
                hash: keyfmt::hash(raw),
                display_prefix: b
                    .prefix
                    .clone()
                    .unwrap_or_else(|| keyfmt::import_display_prefix(raw)),
            })
        }
        (None, Some(h)) => Ok(Imported {
            hash: keyfmt::parse_sha256(h)
                .ok_or("keyHash must be sha256: and 64 hex digits (the SHA-256 of the raw key)")?,
            display_prefix: b
                .prefix
                .clone()
                .ok_or("prefix is required with keyHash: what listings show of the key")?,
        }),
        _ => {
            Err("give the key as key (its raw value) or keyHash (its SHA-256), one of them".into())
        }
    }
}

/// `POST /admin/v1/keys/import`: 201 with the key's record.
pub(super) async fn import_key<S: Store>(store: &S, body: &[u8], rid: &str) -> Resp {
    let b: ImportKey = match parse_json(body) {
        Ok(b) => b,
        Err(m) => return error(400, "bad_request", &m, rid),
    };
    let import = match secret_of(&b) {
        Ok(i) => i,
        Err(m) => return error(400, "bad_request", &m, rid),
    };
    let fields = (b.consumer, b.tier, b.scopes, b.monthly_quota, b.name);
    match new_key(fields, b.expires_at.as_deref()) {
        Ok(new) => {
            let new = NewKey {
                import: Some(import),
                ..new
            };
            created(store, new, rid).await
        }
        Err(m) => error(400, "bad_request", &m, rid),
    }
}
