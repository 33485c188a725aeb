//! The Redis store's own behaviours on a real `redis-server`: the check script reloaded after
//! Redis forgets it, bad data in Redis refused with a message naming the Redis key, and the
//! counters' layout in a key's hash (the decimal layout of earlier versions read and converted,
//! resets and lease give-backs exact).

mod common;

use std::sync::Arc;
use std::time::Duration;

use common::blocking::Blocking;
use common::redis::RedisServer;
use common::runtime;
use quotad::keys::record::{Reset, Usage};
use quotad::keys::{KeyId, NewKey};
use quotad::store::redis::{Mode, RedisOptions, RedisStore};
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

fn new_key(store: &Blocking<RedisStore>) -> (KeyId, String) {
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

/// Resets key `id`'s burst windows and/or month; the usage before and after.
fn reset(store: &Blocking<RedisStore>, id: KeyId, burst: bool, monthly: bool) -> (Usage, Usage) {
    store.reset_counters(id, Reset { burst, monthly }).unwrap()
}

/// Rewrites key `id`'s counters in the decimal layout of quotad before the packed one: the `pro`
/// tier's two buckets owing `owed` tokens each at `now_s`, `used` counted this month.
fn write_decimal_counters(server: &RedisServer, id: KeyId, now_s: u64, owed: u64, used: u64) {
    let key = format!("quotad:{{{}}}", id.slot());
    let now_us = now_s * 1_000_000;
    let month = quotad::engine::month::month_of(now_s).to_string();
    let (t1, t2) = (
        (now_us + owed * 200_000).to_string(),
        (now_us + owed * 360_000).to_string(),
    );
    server.cli(&["HDEL", &key, "c", "L"]);
    let lu = now_s.to_string();
    let fields = [
        ("p1", "60"),
        ("i1", "200000"),
        ("t1", t1.as_str()),
        ("p2", "3600"),
        ("i2", "360000"),
        ("t2", t2.as_str()),
        ("m", month.as_str()),
        ("u", &used.to_string()),
        ("lu", lu.as_str()),
    ];
    for (f, v) in fields {
        server.cli(&["HSET", &key, f, v]);
    }
}

#[test]
fn counters_in_the_decimal_layout_are_read_counted_on_and_converted() {
    let server = RedisServer::start();
    let store = connect(&server);
    let (id, raw) = new_key(&store);
    assert!(store.check(Some(&raw), None, 1).verdict.is_allowed());
    let now_s = 1_780_000_000;
    write_decimal_counters(&server, id, now_s, 5, 500);
    let key = format!("quotad:{{{}}}", id.slot());

    // Read as they stand: nothing lost, nothing reset.
    let u = store.usage(id).unwrap();
    assert_eq!(u.monthly_used, 500);
    assert_eq!(u.limits[0].remaining, 300 - 5);
    assert_eq!(u.limits[1].remaining, 10_000 - 5);
    assert_eq!(u.last_used_at, Some(now_s));

    // The next check counts on from them and rewrites the hash in the packed layout.
    let d = store.check(Some(&raw), None, 1);
    assert!(d.verdict.is_allowed());
    assert_eq!(d.limits()[0].remaining, 300 - 5 - 1);
    assert_eq!(d.limits()[1].remaining, 10_000 - 5 - 1);
    for f in ["u", "m", "lu", "p1", "i1", "t1", "p2", "t2"] {
        assert_eq!(
            server.cli(&["HEXISTS", &key, f]).trim(),
            "0",
            "{f} left behind"
        );
    }
    assert_eq!(server.cli(&["HEXISTS", &key, "c"]).trim(), "1");
    assert_eq!(
        server.cli(&["HGET", &key, "L"]).trim(),
        "60:200000,3600:360000"
    );
    let u = store.usage(id).unwrap();
    assert_eq!(u.monthly_used, 501);
    assert_eq!(u.limits[0].remaining, 300 - 6);

    // A reset of a hash still in the decimal layout resets it too.
    write_decimal_counters(&server, id, now_s, 7, 900);
    let (before, after) = reset(&store, id, false, true);
    assert_eq!(before.monthly_used, 900);
    assert_eq!(after.monthly_used, 0);
    assert_eq!(after.limits[0].remaining, 300 - 7, "burst untouched");
    let (_, after) = reset(&store, id, true, false);
    assert_eq!(after.limits[0].remaining, 300);
    assert_eq!(after.limits[1].remaining, 10_000);
}

#[test]
fn packed_counters_reset_exactly() {
    let server = RedisServer::start();
    let store = connect(&server);
    let (id, raw) = new_key(&store);
    for _ in 0..7 {
        assert!(store.check(Some(&raw), None, 1).verdict.is_allowed());
    }
    let u = store.usage(id).unwrap();
    assert_eq!((u.monthly_used, u.limits[0].remaining), (7, 300 - 7));
    let (_, after) = reset(&store, id, true, false);
    assert_eq!((after.monthly_used, after.limits[0].remaining), (7, 300));
    let (_, after) = reset(&store, id, false, true);
    assert_eq!((after.monthly_used, after.limits[0].remaining), (0, 300));
    let d = store.check(Some(&raw), None, 1);
    assert_eq!(d.limits()[0].remaining, 300 - 1);
}

#[test]
fn a_lease_s_unspent_tokens_go_back_to_the_burst_windows_and_the_month() {
    let server = RedisServer::start();
    let clock = Arc::new(FakeClock::at_secs(1_780_000_000));
    let mut opts = RedisOptions::new(server.url());
    opts.mode = Mode::Lease {
        size: 20,
        ttl: Duration::from_millis(300),
    };
    let store = Blocking::make(|rt| {
        rt.block_on(RedisStore::connect(opts, clock.clone()))
            .expect("connect")
    });
    let (id, raw) = new_key(&store);
    for _ in 0..3 {
        assert!(store.check(Some(&raw), None, 1).verdict.is_allowed());
    }
    let u = store.usage(id).unwrap();
    assert_eq!(u.monthly_used, 20, "one lease of 20 taken from Redis");
    assert_eq!(u.limits[0].remaining, 300 - 20);
    // The lease ends unspent: 17 tokens go back to both windows and to the month.
    clock.advance_ns(301_000_000);
    store.upkeep().expect("upkeep");
    let u = store.usage(id).unwrap();
    assert_eq!(u.monthly_used, 3);
    // 3 spent at t0 (TATs t0 + 3 intervals), read 301 ms later: 300/min refills one per 200 ms,
    // 10,000/h one per 360 ms.
    assert_eq!(u.limits[0].remaining, 298);
    assert_eq!(u.limits[1].remaining, 9_997);
}
