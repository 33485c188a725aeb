//! The Redis store's own behaviours on a real `redis-server`: the check script reloaded after
//! Redis forgets it, and bad data in Redis refused with a message naming the Redis key.

mod common;

use std::sync::Arc;

use common::blocking::Blocking;
use common::redis::RedisServer;
use common::runtime;
use quotad::keys::NewKey;
use quotad::store::redis::{RedisOptions, RedisStore};
use quotad::{AuthFailure, FakeClock, Verdict};

fn connect(server: &RedisServer) -> Blocking<RedisStore> {
    Blocking::make(|rt| {
        rt.block_on(RedisStore::connect(
            RedisOptions::new(server.url()),
            Arc::new(FakeClock::at_secs(1_780_000_000)),
        ))
        .expect("connect")
    })
}

fn new_key(store: &Blocking<RedisStore>) -> (quotad::keys::KeyId, String) {
    let k = store
        .create_key(NewKey {
            consumer: "acme".into(),
            tier: "pro".into(),
            ..Default::default()
        })
        .unwrap();
    (k.info.id, k.raw)
}

#[test]
fn checks_go_on_after_redis_forgets_the_script() {
    let server = RedisServer::start();
    let store = connect(&server);
    let (_, raw) = new_key(&store);
    let d = store.check(Some(&raw), None, 1);
    assert_eq!(d.verdict, Verdict::Allowed);
    // A restarted or failed-over master has no scripts: EVALSHA answers NOSCRIPT.
    assert_eq!(server.cli(&["SCRIPT", "FLUSH"]).trim(), "OK");
    let d2 = store.check(Some(&raw), None, 1);
    assert_eq!(d2.verdict, Verdict::Allowed);
    assert_eq!(
        d2.primary().unwrap().remaining + 1,
        d.primary().unwrap().remaining,
        "the second check was counted"
    );
}

#[test]
fn a_damaged_key_record_in_redis_is_refused_not_trusted() {
    let server = RedisServer::start();
    let store = connect(&server);
    let (id, raw) = new_key(&store);
    let redis_key = format!("quotad:{{{}}}", id.slot());
    // Something other than quotad wrote a bad hash of the secret.
    assert_eq!(
        server
            .cli(&["HSET", &redis_key, "h", "not-a-digest"])
            .trim(),
        "0"
    );
    let d = store.check(Some(&raw), None, 1);
    assert_eq!(d.verdict, Verdict::Unauthorized(AuthFailure::Unknown));
    assert!(store.key(id).is_err());
}

#[test]
fn a_corrupt_catalog_in_redis_stops_start_up_with_a_message_naming_the_key() {
    let server = RedisServer::start();
    assert_eq!(
        server
            .cli(&[
                "HSET",
                "quotad:{meta}:catalog",
                "rev",
                "3",
                "doc",
                "{not json"
            ])
            .trim(),
        "2"
    );
    let rt = runtime();
    let err = rt
        .block_on(RedisStore::connect(
            RedisOptions::new(server.url()),
            Arc::new(FakeClock::at_secs(1_780_000_000)),
        ))
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("quotad:{meta}:catalog") && err.contains("not valid"),
        "{err}"
    );
    // Nothing was overwritten.
    assert_eq!(
        server.cli(&["HGET", "quotad:{meta}:catalog", "doc"]).trim(),
        "{not json"
    );
}

#[test]
fn a_bad_store_url_is_refused_with_a_clear_message() {
    let rt = runtime();
    let err = rt
        .block_on(RedisStore::connect(
            RedisOptions::new("memcached://127.0.0.1:1"),
            Arc::new(FakeClock::at_secs(1_780_000_000)),
        ))
        .unwrap_err()
        .to_string();
    assert!(err.contains("redis://HOST:PORT"), "{err}");
}
