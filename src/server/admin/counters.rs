//! A consumer's counters: `GET /admin/v1/consumers/{consumer}/usage`, and an operator's reset
//! after an incident, `POST /admin/v1/keys/{id}/reset` and
//! `POST /admin/v1/consumers/{consumer}/reset`. Each reset is logged at INFO with who asked,
//! what was reset and the usage before.

use serde::Deserialize;

use super::{error, json_of, parse_json, store_error, KeyJson, UsageJson};
use crate::keys::record::{Reset, Usage};
use crate::keys::KeyId;
use crate::server::reply::Resp;
use crate::store::Store;

/// Who asks for admin changes: the admin token is not named, so every change is the admin's.
const WHO: &str = "admin";

/// The body of a reset: what to set back (both by default).
#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct ResetBody {
    #[serde(default = "yes")]
    burst: bool,
    #[serde(default = "yes")]
    monthly: bool,
}

fn yes() -> bool {
    true
}

/// What `body` asks to reset (an empty body: everything), or the message of its refusal.
fn what(body: &[u8]) -> Result<Reset, String> {
    let b: ResetBody = if body.iter().all(u8::is_ascii_whitespace) {
        ResetBody {
            burst: true,
            monthly: true,
        }
    } else {
        parse_json(body)?
    };
    if !b.burst && !b.monthly {
        return Err("nothing to reset: burst and monthly are both false".into());
    }
    Ok(Reset {
        burst: b.burst,
        monthly: b.monthly,
    })
}

/// The usage a log line shows: the month's and each window's remaining requests.
fn shown(u: &Usage) -> String {
    let windows: Vec<String> = u
        .limits
        .iter()
        .map(|l| format!("{}/{}s left", l.remaining, l.period_seconds))
        .collect();
    format!("monthly {} used; {}", u.monthly_used, windows.join(", "))
}

fn log(id: KeyId, consumer: &str, what: Reset, before: &Usage) {
    tracing::info!(
        who = WHO,
        key_id = %id,
        consumer,
        burst = what.burst,
        monthly = what.monthly,
        before = %shown(before),
        "counters reset"
    );
}

/// `POST /admin/v1/keys/{id}/reset`: the key with its usage after the reset.
pub(super) async fn reset_key<S: Store>(store: &S, id: KeyId, body: &[u8], rid: &str) -> Resp {
    let what = match what(body) {
        Ok(w) => w,
        Err(m) => return error(400, "bad_request", &m, rid),
    };
    let info = match store.key(id).await {
        Ok(i) => i,
        Err(e) => return store_error(&e, rid),
    };
    match store.reset_counters(id, what).await {
        Ok((before, after)) => {
            log(id, &info.consumer, what, &before);
            let mut j = KeyJson::from_info(&info);
            j.usage = Some(UsageJson::from_usage(&after));
            json_of(200, &j, rid)
        }
        Err(e) => store_error(&e, rid),
    }
}

/// `POST /admin/v1/consumers/{consumer}/reset`: every key of the consumer with its usage after.
pub(super) async fn reset_consumer<S: Store>(
    store: &S,
    consumer: &str,
    body: &[u8],
    rid: &str,
) -> Resp {
    let what = match what(body) {
        Ok(w) => w,
        Err(m) => return error(400, "bad_request", &m, rid),
    };
    match store.reset_consumer(consumer, what).await {
        Ok(done) if done.is_empty() => error(
            404,
            "not_found",
            &format!("consumer {consumer:?} has no keys"),
            rid,
        ),
        Ok(done) => {
            let keys: Vec<KeyJson> = done
                .iter()
                .map(|(info, before, after)| {
                    log(info.id, consumer, what, before);
                    let mut j = KeyJson::from_info(info);
                    j.usage = Some(UsageJson::from_usage(after));
                    j
                })
                .collect();
            json_of(
                200,
                &serde_json::json!({"consumer": consumer, "keys": keys}),
                rid,
            )
        }
        Err(e) => store_error(&e, rid),
    }
}

/// `GET /admin/v1/consumers/{consumer}/usage`: per tier the consumer has keys on, its keys and,
/// on a tier counting by consumer, the usage they share.
pub(super) async fn consumer_usage<S: Store>(store: &S, consumer: &str, rid: &str) -> Resp {
    match store.consumer_usage(consumer).await {
        Ok(tiers) if tiers.is_empty() => error(
            404,
            "not_found",
            &format!("consumer {consumer:?} has no keys"),
            rid,
        ),
        Ok(tiers) => {
            let tiers: Vec<serde_json::Value> = tiers
                .iter()
                .map(|t| {
                    let mut j = serde_json::json!({
                        "tier": t.tier,
                        "countBy": t.count_by.as_str(),
                        "keys": t.keys.iter().map(|k| k.to_string()).collect::<Vec<_>>(),
                    });
                    if let Some(u) = &t.usage {
                        j["usage"] = serde_json::json!(UsageJson::from_usage(u));
                    }
                    j
                })
                .collect();
            json_of(
                200,
                &serde_json::json!({"consumer": consumer, "tiers": tiers}),
                rid,
            )
        }
        Err(e) => store_error(&e, rid),
    }
}
