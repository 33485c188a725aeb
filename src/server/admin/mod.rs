//! The admin API under `/admin/v1` (bearer admin token): keys and tiers. JSON in camelCase;
//! unknown or mistyped fields are refused with 400. Every change is durable before the response.

use hyper::body::Incoming;
use hyper::{Method, Request};
use serde::{Deserialize, Deserializer, Serialize};

mod counters;
mod import;
mod json;
mod prefixes;

pub use json::{parse_rfc3339, rfc3339, KeyJson, UsageJson};

use super::reply::{error, json, read_body, Resp};
use super::AppState;
use crate::keys::{KeyId, KeyUpdate, NewKey};
use crate::store::{KeyQuery, Store, StoreError};
use crate::tiers::{LimitSpec, TierSpec};

/// `Some(None)` for an explicit null, `Some(Some(v))` for a value, `None` (via default) if absent.
fn nullable<'de, D: Deserializer<'de>, T: Deserialize<'de>>(
    d: D,
) -> Result<Option<Option<T>>, D::Error> {
    Option::<T>::deserialize(d).map(Some)
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct CreateKey {
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
    #[serde(default)]
    prefix: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct PatchKey {
    #[serde(default)]
    tier: Option<String>,
    #[serde(default)]
    scopes: Option<Vec<String>>,
    #[serde(default, deserialize_with = "nullable")]
    expires_at: Option<Option<String>>,
    #[serde(default, deserialize_with = "nullable")]
    monthly_quota: Option<Option<u64>>,
    #[serde(default, deserialize_with = "nullable")]
    name: Option<Option<String>>,
}

#[derive(Debug, Deserialize, Default)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct Rotate {
    #[serde(default)]
    grace_seconds: Option<u64>,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct PutTiers {
    tiers: Vec<TierSpec>,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct PutTier {
    limits: Vec<LimitSpec>,
    #[serde(default)]
    monthly_quota: Option<u64>,
    #[serde(default)]
    scopes: Option<Vec<String>>,
    #[serde(default = "enforced")]
    enforce: bool,
    #[serde(default)]
    count_by: crate::tiers::CountBy,
}

fn enforced() -> bool {
    true
}

/// JSON has one number type: `2441.0` is the integer 2441 (as JSON Schema's `integer` says).
/// Integral values written with a fraction or exponent become integers before the fields that
/// take integers read them; other numbers are left as they are (and refused where an integer is
/// required).
fn integral_floats_as_integers(v: &mut serde_json::Value) {
    match v {
        serde_json::Value::Number(n) if n.is_f64() => {
            if let Some(f) = n.as_f64() {
                if f.fract() == 0.0 && (0.0..=u64::MAX as f64).contains(&f) && f < 2f64.powi(64) {
                    *v = serde_json::Value::from(f as u64);
                }
            }
        }
        serde_json::Value::Array(a) => a.iter_mut().for_each(integral_floats_as_integers),
        serde_json::Value::Object(o) => o.values_mut().for_each(integral_floats_as_integers),
        _ => {}
    }
}

fn parse_json<T: for<'de> Deserialize<'de>>(bytes: &[u8]) -> Result<T, String> {
    if bytes.iter().all(u8::is_ascii_whitespace) {
        return Err("request body must be a JSON object".into());
    }
    let mut v: serde_json::Value =
        serde_json::from_slice(bytes).map_err(|e| format!("invalid JSON body: {e}"))?;
    integral_floats_as_integers(&mut v);
    serde_json::from_value(v).map_err(|e| format!("invalid JSON body: {e}"))
}

/// `value` as a JSON response (500 if it cannot be serialized, which would be a bug).
fn json_of<T: Serialize>(status: u16, value: &T, rid: &str) -> Resp {
    match serde_json::to_string(value) {
        Ok(body) => json(status, body, rid),
        Err(e) => {
            tracing::error!(error = %e, request_id = rid, "cannot serialize an admin answer");
            error(500, "internal", "cannot serialize the answer", rid)
        }
    }
}

fn store_error(e: &StoreError, rid: &str) -> Resp {
    let (status, code) = match e.code() {
        "not_found" => (404, "not_found"),
        "conflict" => (409, "conflict"),
        "unavailable" => (503, "unavailable"),
        "bad_request" => (400, "bad_request"),
        "insufficient_storage" => (507, "insufficient_storage"),
        _ => (500, "internal"),
    };
    if status >= 500 {
        tracing::error!(error = %e, request_id = rid, "admin operation failed");
    }
    error(status, code, &e.to_string(), rid)
}

fn query_params(q: Option<&str>) -> Vec<(String, String)> {
    q.unwrap_or("")
        .split('&')
        .filter(|p| !p.is_empty())
        .map(|p| {
            let (k, v) = p.split_once('=').unwrap_or((p, ""));
            (percent_decode(k), percent_decode(v))
        })
        .collect()
}

fn percent_decode(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        match b[i] {
            b'+' => out.push(b' '),
            b'%' if i + 2 < b.len() => {
                match std::str::from_utf8(&b[i + 1..i + 3])
                    .ok()
                    .and_then(|h| u8::from_str_radix(h, 16).ok())
                    .ok_or(())
                {
                    Ok(v) => {
                        out.push(v);
                        i += 2;
                    }
                    Err(_) => out.push(b'%'),
                }
            }
            c => out.push(c),
        }
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// Handles `/admin/v1/{rest}`.
pub async fn handle<S: Store>(
    state: &AppState<S>,
    req: Request<Incoming>,
    rest: &str,
    rid: &str,
) -> Resp {
    let authorized = req
        .headers()
        .get("authorization")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.split_once(' '))
        .filter(|(scheme, _)| scheme.eq_ignore_ascii_case("bearer"))
        .is_some_and(|(_, t)| state.admin_token.matches(t.trim()));
    if !authorized {
        return error(401, "unauthorized", "Missing or invalid admin token", rid);
    }
    let method = req.method().clone();
    let query = req.uri().query().map(str::to_string);
    let segs: Vec<&str> = rest.trim_end_matches('/').split('/').collect();
    let body = match read_body(req.into_body()).await {
        Ok(b) => b,
        Err(m) => return error(400, "bad_request", &m, rid),
    };
    let store = &state.store;
    let not_allowed = |allow: &str| {
        let mut r = error(405, "method_not_allowed", &format!("Allowed: {allow}"), rid);
        if let Ok(v) = hyper::header::HeaderValue::from_str(allow) {
            r.headers_mut().insert("allow", v);
        }
        r
    };
    match segs.as_slice() {
        ["keys"] => match method {
            Method::POST => create_key(store, &body, rid).await,
            Method::GET => list_keys(store, query.as_deref(), rid).await,
            _ => not_allowed("GET, POST"),
        },
        ["keys", "import"] => {
            if method != Method::POST {
                return not_allowed("POST");
            }
            import::import_key(store, &body, rid).await
        }
        ["keys", id] => {
            let Some(id) = KeyId::parse(id) else {
                return error(404, "not_found", "unknown key id", rid);
            };
            match method {
                Method::GET => show_key(store, id, rid).await,
                Method::PATCH => patch_key(store, id, &body, rid).await,
                Method::DELETE => match store.delete_key(id).await {
                    Ok(()) => {
                        tracing::info!(key_id = %id, "key deleted");
                        json_of(
                            200,
                            &serde_json::json!({"id": id.to_string(), "deleted": true}),
                            rid,
                        )
                    }
                    Err(e) => store_error(&e, rid),
                },
                _ => not_allowed("GET, PATCH, DELETE"),
            }
        }
        ["keys", id, "reset"] => {
            let Some(id) = KeyId::parse(id) else {
                return error(404, "not_found", "unknown key id", rid);
            };
            if method != Method::POST {
                return not_allowed("POST");
            }
            counters::reset_key(store, id, &body, rid).await
        }
        ["prefixes"] => match method {
            Method::GET => prefixes::list(store, rid),
            _ => not_allowed("GET"),
        },
        ["prefixes", prefix] => match method {
            Method::PUT => prefixes::retire(store, percent_decode(prefix), &body, rid).await,
            Method::DELETE => prefixes::restore(store, percent_decode(prefix), rid).await,
            _ => not_allowed("PUT, DELETE"),
        },
        ["consumers", consumer, "usage"] => {
            if method != Method::GET {
                return not_allowed("GET");
            }
            let consumer = percent_decode(consumer);
            counters::consumer_usage(store, &consumer, rid).await
        }
        ["consumers", consumer, "reset"] => {
            if method != Method::POST {
                return not_allowed("POST");
            }
            let consumer = percent_decode(consumer);
            counters::reset_consumer(store, &consumer, &body, rid).await
        }
        ["keys", id, action @ ("revoke" | "rotate")] => {
            let Some(id) = KeyId::parse(id) else {
                return error(404, "not_found", "unknown key id", rid);
            };
            if method != Method::POST {
                return not_allowed("POST");
            }
            if *action == "revoke" {
                match store.revoke_key(id).await {
                    Ok(k) => {
                        tracing::info!(key_id = %id, "key revoked");
                        json_of(200, &KeyJson::from_info(&k), rid)
                    }
                    Err(e) => store_error(&e, rid),
                }
            } else {
                let r: Rotate = if body.iter().all(u8::is_ascii_whitespace) {
                    Rotate::default()
                } else {
                    match parse_json(&body) {
                        Ok(r) => r,
                        Err(m) => return error(400, "bad_request", &m, rid),
                    }
                };
                let grace = r.grace_seconds.unwrap_or(0);
                match store.rotate_key(id, grace).await {
                    Ok(k) => {
                        tracing::info!(key_id = %id, grace_seconds = grace, "key rotated");
                        let mut j = KeyJson::from_info(&k.info);
                        j.key = Some(k.raw);
                        json_of(200, &j, rid)
                    }
                    Err(e) => store_error(&e, rid),
                }
            }
        }
        ["tiers"] => match method {
            Method::GET => {
                let tiers = store.tiers();
                json(200, serde_json::json!({ "tiers": tiers }).to_string(), rid)
            }
            Method::PUT => {
                let p: PutTiers = match parse_json(&body) {
                    Ok(p) => p,
                    Err(m) => return error(400, "bad_request", &m, rid),
                };
                let names: Vec<String> = p.tiers.iter().map(|t| t.name.clone()).collect();
                match store.apply_tiers(p.tiers).await {
                    Ok(()) => {
                        tracing::info!(tiers = ?names, "tier set replaced");
                        json(
                            200,
                            serde_json::json!({ "tiers": store.tiers() }).to_string(),
                            rid,
                        )
                    }
                    Err(e) => store_error(&e, rid),
                }
            }
            _ => not_allowed("GET, PUT"),
        },
        ["tiers", name] => {
            let name = name.to_string();
            match method {
                Method::GET => match store.tiers().into_iter().find(|t| t.name == name) {
                    Some(t) => json_of(200, &t, rid),
                    None => error(404, "not_found", &format!("unknown tier {name:?}"), rid),
                },
                Method::PUT => {
                    let p: PutTier = match parse_json(&body) {
                        Ok(p) => p,
                        Err(m) => return error(400, "bad_request", &m, rid),
                    };
                    let spec = TierSpec {
                        name: name.clone(),
                        limits: p.limits,
                        monthly_quota: p.monthly_quota,
                        scopes: p.scopes,
                        enforce: p.enforce,
                        count_by: p.count_by,
                    };
                    match store.put_tier(spec).await {
                        Ok(t) => {
                            tracing::info!(tier = %name, "tier set");
                            json_of(200, &t, rid)
                        }
                        Err(e) => store_error(&e, rid),
                    }
                }
                Method::DELETE => match store.delete_tier(name.clone()).await {
                    Ok(()) => {
                        tracing::info!(tier = %name, "tier deleted");
                        json(200, serde_json::json!({"deleted": name}).to_string(), rid)
                    }
                    Err(e) => store_error(&e, rid),
                },
                _ => not_allowed("GET, PUT, DELETE"),
            }
        }
        _ => error(
            404,
            "not_found",
            &format!("No admin route /admin/v1/{rest}"),
            rid,
        ),
    }
}

async fn create_key<S: Store>(store: &S, body: &[u8], rid: &str) -> Resp {
    let c: CreateKey = match parse_json(body) {
        Ok(c) => c,
        Err(m) => return error(400, "bad_request", &m, rid),
    };
    let fields = (c.consumer, c.tier, c.scopes, c.monthly_quota, c.name);
    match new_key(fields, c.expires_at.as_deref()) {
        Ok(new) => {
            let new = NewKey {
                prefix: c.prefix,
                ..new
            };
            created(store, new, rid).await
        }
        Err(m) => error(400, "bad_request", &m, rid),
    }
}

/// The record fields a created or imported key is given, as the API takes them.
type KeyFields = (
    String,
    String,
    Option<Vec<String>>,
    Option<u64>,
    Option<String>,
);

/// A new key of `fields` (consumer, tier, scopes, monthly quota, name) expiring at `expires_at`
/// (RFC 3339), or the message of the refusal.
fn new_key(
    (consumer, tier, scopes, monthly_quota, name): KeyFields,
    expires_at: Option<&str>,
) -> Result<NewKey, String> {
    Ok(NewKey {
        consumer,
        tier,
        scopes: scopes.unwrap_or_default(),
        expires_at: expires_at
            .map(|s| parse_rfc3339("expiresAt", s))
            .transpose()?,
        monthly_quota,
        name,
        prefix: None,
        import: None,
    })
}

/// Creates key `new` and answers 201 with its record, and the raw key if one was made (an
/// imported key's is never given back).
async fn created<S: Store>(store: &S, new: NewKey, rid: &str) -> Resp {
    let imported = new.import.is_some();
    match store.create_key(new).await {
        Ok(k) => {
            tracing::info!(key_id = %k.info.id, consumer = %k.info.consumer, tier = %k.info.tier, prefix = %k.info.prefix, imported, "key created");
            let mut j = KeyJson::from_info(&k.info);
            j.key = (!imported).then_some(k.raw);
            json_of(201, &j, rid)
        }
        Err(e) => store_error(&e, rid),
    }
}

async fn list_keys<S: Store>(store: &S, query: Option<&str>, rid: &str) -> Resp {
    let mut consumer = None;
    let mut tier = None;
    let mut limit = 100usize;
    let mut cursor = None;
    for (k, v) in query_params(query) {
        match k.as_str() {
            "consumer" => consumer = Some(v),
            "tier" => tier = Some(v),
            "limit" => match v.parse::<usize>() {
                Ok(n) if (1..=1000).contains(&n) => limit = n,
                _ => {
                    return error(
                        400,
                        "bad_request",
                        "limit must be an integer from 1 to 1000",
                        rid,
                    )
                }
            },
            "cursor" => match KeyId::parse(&v) {
                Some(c) => cursor = Some(c),
                None => {
                    return error(
                        400,
                        "bad_request",
                        "cursor must be a key id from nextCursor",
                        rid,
                    )
                }
            },
            other => {
                return error(
                    400,
                    "bad_request",
                    &format!("unknown query parameter {other:?}"),
                    rid,
                )
            }
        }
    }
    let (keys, next) = match store
        .list_keys(KeyQuery {
            consumer: consumer.as_deref(),
            tier: tier.as_deref(),
            after: cursor,
            limit,
        })
        .await
    {
        Ok(p) => p,
        Err(e) => return store_error(&e, rid),
    };
    let keys: Vec<KeyJson> = keys.iter().map(KeyJson::from_info).collect();
    json(
        200,
        serde_json::json!({"keys": keys, "nextCursor": next.map(|c| c.to_string())}).to_string(),
        rid,
    )
}

async fn show_key<S: Store>(store: &S, id: KeyId, rid: &str) -> Resp {
    let info = match store.key(id).await {
        Ok(i) => i,
        Err(e) => return store_error(&e, rid),
    };
    let usage = match store.usage(id).await {
        Ok(u) => u,
        Err(e) => return store_error(&e, rid),
    };
    let mut j = KeyJson::from_info(&info);
    j.usage = Some(UsageJson::from_usage(&usage));
    json_of(200, &j, rid)
}

async fn patch_key<S: Store>(store: &S, id: KeyId, body: &[u8], rid: &str) -> Resp {
    let p: PatchKey = match parse_json(body) {
        Ok(p) => p,
        Err(m) => return error(400, "bad_request", &m, rid),
    };
    let expires_at = match p.expires_at {
        None => None,
        Some(None) => Some(None),
        Some(Some(s)) => match parse_rfc3339("expiresAt", &s) {
            Ok(t) => Some(Some(t)),
            Err(m) => return error(400, "bad_request", &m, rid),
        },
    };
    let upd = KeyUpdate {
        tier: p.tier,
        scopes: p.scopes,
        expires_at,
        monthly_quota: p.monthly_quota,
        name: p.name,
    };
    match store.update_key(id, upd).await {
        Ok(k) => {
            tracing::info!(key_id = %id, "key updated");
            json_of(200, &KeyJson::from_info(&k), rid)
        }
        Err(e) => store_error(&e, rid),
    }
}
