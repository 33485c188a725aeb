//! `/admin/v1/prefixes`: key prefixes being retired (seed 004's legacy `tb_…`, `ss_live_…`). Until
//! its sunset a key with a retired prefix works and its allowed answers carry `Sunset` (RFC 8594)
//! and `Deprecation` (RFC 9745); from then on it is refused with 401 `key_format_deprecated`.

use serde::{Deserialize, Serialize};

use super::{error, json_of, parse_json, parse_rfc3339, rfc3339, store_error};
use crate::engine::catalog_doc::RetiredPrefix;
use crate::server::reply::Resp;
use crate::store::Store;

/// A retired prefix as the admin API shows it.
#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct PrefixJson {
    prefix: String,
    sunset_at: String,
    deprecated_at: String,
}

impl PrefixJson {
    fn of(p: &RetiredPrefix) -> Self {
        PrefixJson {
            prefix: p.prefix.clone(),
            sunset_at: rfc3339(p.sunset_at).unwrap_or_default(),
            deprecated_at: rfc3339(p.deprecated_at).unwrap_or_default(),
        }
    }
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct PutPrefix {
    sunset_at: String,
}

/// `GET /admin/v1/prefixes`.
pub(super) fn list<S: Store>(store: &S, rid: &str) -> Resp {
    let all: Vec<PrefixJson> = store
        .retired_prefixes()
        .iter()
        .map(PrefixJson::of)
        .collect();
    json_of(200, &serde_json::json!({ "prefixes": all }), rid)
}

/// `PUT /admin/v1/prefixes/{prefix}`: the retired prefix.
pub(super) async fn retire<S: Store>(store: &S, prefix: String, body: &[u8], rid: &str) -> Resp {
    let p: PutPrefix = match parse_json(body) {
        Ok(p) => p,
        Err(m) => return error(400, "bad_request", &m, rid),
    };
    let sunset_at = match parse_rfc3339("sunsetAt", &p.sunset_at) {
        Ok(s) => s,
        Err(m) => return error(400, "bad_request", &m, rid),
    };
    match store.retire_prefix(prefix.clone(), sunset_at).await {
        Ok(r) => {
            tracing::info!(prefix = %prefix, sunset_at = %p.sunset_at, "key prefix retired");
            json_of(200, &PrefixJson::of(&r), rid)
        }
        Err(e) => store_error(&e, rid),
    }
}

/// `DELETE /admin/v1/prefixes/{prefix}`.
pub(super) async fn restore<S: Store>(store: &S, prefix: String, rid: &str) -> Resp {
    match store.restore_prefix(prefix.clone()).await {
        Ok(()) => {
            tracing::info!(prefix = %prefix, "key prefix no longer retired");
            json_of(
                200,
                &serde_json::json!({"prefix": prefix, "deleted": true}),
                rid,
            )
        }
        Err(e) => store_error(&e, rid),
    }
}
