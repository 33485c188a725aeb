//! The engine's full check against `governor`'s keyed GCRA limiter, in one run, over 1,000,000
//! keys picked in the same pseudo-random order, on 1 and 2 threads; and a restart (open) of a data
//! directory holding those 1,000,000 keys.
//!
//! Full check = parse the key, authenticate it, revocation/expiry, key scope and plan scope, two
//! tier windows (GCRA), the monthly quota, and the double-buffered write of the new state into the
//! memory-mapped counter file. governor's check = one GCRA cell in a `DashMap` keyed by the same
//! raw key strings.
//!
//! Two ways to hand each contender its keys, the same for both, each measured:
//! - **as a request stream** (`…_check`, the goal's figure): the keys of the pattern laid out in
//!   the order they are checked, each copy allocated in sequence, so the key's bytes arrive the
//!   way a server's do, in the buffer it has just read, and each contender pays only for its own
//!   lookup;
//! - **looked up at random** (`…_check_random_strings`): the key picked from the `Vec` of the
//!   million keys, so both contenders first wait for that `String` and then its bytes, two cache
//!   misses that no server incurs.
//!
//! Also: the checks as batches of 16 (`Store::check_batch`), as the binary server hands the
//! store the checks of one read (`quotad_batch_of_16`): the store keeps the next checks' entries
//! loading while it decides one.
//!
//! Run: `cargo bench --bench engine` (set `QUOTAD_BENCH_KEYS` to use fewer keys;
//! `QUOTAD_BENCH_CHECKS_ONLY=1` skips the interleaved rounds and the restart).

use std::num::NonZeroU32;
use std::sync::Arc;
use std::time::{Duration, Instant};

mod common;

use common::now;
use criterion::{BenchmarkId, Criterion, Throughput};
use quotad::keys::NewKey;
use quotad::tiers::{LimitSpec, TierSpec};
use quotad::{CheckRequest, LocalOptions, LocalStore, QuantaClock, Store};

fn key_count() -> usize {
    std::env::var("QUOTAD_BENCH_KEYS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(1_000_000)
}

/// xorshift64*: the same index sequence for both contenders.
fn pattern(n: usize, len: usize) -> Vec<u32> {
    let mut x: u64 = 0x9E37_79B9_7F4A_7C15;
    (0..len)
        .map(|_| {
            x ^= x >> 12;
            x ^= x << 25;
            x ^= x >> 27;
            (x.wrapping_mul(0x2545_F491_4F6C_DD1D) % n as u64) as u32
        })
        .collect()
}

fn bench_tier() -> TierSpec {
    TierSpec {
        name: "bench".into(),
        // Large enough that every check is admitted and writes its new state.
        limits: vec![
            LimitSpec {
                requests: 1_000_000_000,
                period_seconds: 60,
            },
            LimitSpec {
                requests: 1_000_000_000,
                period_seconds: 3600,
            },
        ],
        monthly_quota: Some(1_000_000_000_000),
        scopes: Some(vec!["api:read".into(), "api:write".into()]),
        enforce: true,
        count_by: Default::default(),
    }
}

fn build(dir: &std::path::Path, n: usize) -> (LocalStore, Vec<String>) {
    common::store_with_keys(dir, bench_tier(), n, |i| NewKey {
        consumer: format!("c{}", i % 1000),
        tier: "bench".into(),
        scopes: vec!["api:read".into()],
        ..Default::default()
    })
}

fn run_threads(threads: usize, iters: u64, f: impl Fn(usize, u64) + Sync) -> Duration {
    let per = iters.div_ceil(threads as u64);
    let start = Instant::now();
    std::thread::scope(|s| {
        for t in 0..threads {
            let f = &f;
            s.spawn(move || f(t, per));
        }
    });
    start.elapsed()
}

type Keyed = governor::RateLimiter<
    String,
    governor::state::keyed::DefaultKeyedStateStore<String>,
    governor::clock::DefaultClock,
>;

struct Setup {
    dir: tempfile::TempDir,
    store: LocalStore,
    raws: Vec<String>,
    order: Vec<u32>,
    /// The keys of `order`, in that order, each a copy allocated in sequence.
    stream: Vec<String>,
    gov: Keyed,
}

fn setup(n: usize) -> Setup {
    let dir = tempfile::tempdir().unwrap();
    let (store, raws) = build(dir.path(), n);
    let order = pattern(n, 1 << 22);
    let stream = order.iter().map(|&i| raws[i as usize].clone()).collect();
    let quota = governor::Quota::per_minute(NonZeroU32::new(1_000_000_000).unwrap());
    let gov: Keyed = governor::RateLimiter::keyed(quota);
    for r in &raws {
        let _ = gov.check_key(r);
    }
    Setup {
        dir,
        store,
        raws,
        order,
        stream,
        gov,
    }
}

/// Where the loops get the `i`-th key of the pattern.
#[derive(Clone, Copy, PartialEq)]
enum Keys {
    /// From the keys laid out in pattern order (a server's request stream).
    Stream,
    /// From the million keys, by index (a random lookup before each check).
    Random,
}

impl Setup {
    #[inline(always)]
    fn key(&self, keys: Keys, i: usize) -> &String {
        match keys {
            Keys::Stream => &self.stream[i & (self.stream.len() - 1)],
            Keys::Random => &self.raws[self.order[i & (self.order.len() - 1)] as usize],
        }
    }
}

fn quotad_loop(s: &Setup, keys: Keys, t: usize, per: u64) {
    for i in (t * 7919..).take(per as usize) {
        let raw = s.key(keys, i);
        let req = CheckRequest {
            key: Some(raw),
            scope: Some("api:read"),
            cost: 1,
        };
        now(s.store.check(req, None, |d| {
            debug_assert!(d.verdict.is_allowed());
            std::hint::black_box(d);
        }));
    }
}

/// The binary server's way with the checks of one read: a batch of 16 for the store.
fn quotad_batch_loop(s: &Setup, keys: Keys, t: usize, per: u64) {
    let mut reqs = Vec::with_capacity(16);
    let mut i = t * 7919;
    let end = i + per as usize;
    while i < end {
        reqs.clear();
        for j in i..(i + 16).min(end) {
            reqs.push(CheckRequest {
                key: Some(s.key(keys, j).as_str()),
                scope: Some("api:read"),
                cost: 1,
            });
        }
        now(s.store.check_batch(&reqs, &mut |_, d| {
            debug_assert!(d.verdict.is_allowed());
            std::hint::black_box(d);
        }));
        i += reqs.len();
    }
}

fn governor_loop(s: &Setup, keys: Keys, t: usize, per: u64) {
    for i in (t * 7919..).take(per as usize) {
        let raw = s.key(keys, i);
        std::hint::black_box(s.gov.check_key(raw).is_ok());
    }
}

fn checks(c: &mut Criterion, s: &Setup, n: usize) {
    let mut g = c.benchmark_group(format!("check_{n}_keys"));
    g.throughput(Throughput::Elements(1));
    g.measurement_time(Duration::from_secs(8));
    for threads in [1usize, 2] {
        for (keys, suffix) in [(Keys::Stream, ""), (Keys::Random, "_random_strings")] {
            g.bench_function(
                BenchmarkId::new(format!("quotad_full_check{suffix}"), threads),
                |b| {
                    b.iter_custom(|iters| {
                        run_threads(threads, iters, |t, per| quotad_loop(s, keys, t, per))
                    })
                },
            );
            g.bench_function(
                BenchmarkId::new(format!("governor_keyed_check{suffix}"), threads),
                |b| {
                    b.iter_custom(|iters| {
                        run_threads(threads, iters, |t, per| governor_loop(s, keys, t, per))
                    })
                },
            );
        }
        g.bench_function(BenchmarkId::new("quotad_batch_of_16", threads), |b| {
            b.iter_custom(|iters| {
                run_threads(threads, iters, |t, per| {
                    quotad_batch_loop(s, Keys::Stream, t, per)
                })
            })
        });
    }
    g.finish();
}

/// The ratio measured the way a noisy machine allows: short rounds that alternate the two
/// contenders, so both see the same background load; the median of the per-round ratios.
fn interleaved(s: &Setup) {
    let rounds = 9;
    let per_round = 1_000_000u64;
    for (keys, how) in [
        (Keys::Stream, "keys as a request stream"),
        (Keys::Random, "keys looked up at random"),
    ] {
        for threads in [1usize, 2] {
            let q = || run_threads(threads, per_round, |t, per| quotad_loop(s, keys, t, per));
            let g = || run_threads(threads, per_round, |t, per| governor_loop(s, keys, t, per));
            let mut ratios = Vec::with_capacity(rounds);
            for r in 0..rounds {
                let (q, g) = if r % 2 == 0 {
                    let q = q();
                    (q, g())
                } else {
                    let g = g();
                    (q(), g)
                };
                ratios.push(q.as_secs_f64() / g.as_secs_f64());
            }
            ratios.sort_by(f64::total_cmp);
            println!(
                "interleaved ratio quotad/governor, {how}, {threads} thread(s), {rounds} rounds of {per_round} checks: median {:.3} (min {:.3}, max {:.3})",
                ratios[rounds / 2],
                ratios[0],
                ratios[rounds - 1]
            );
        }
    }
}

fn restart(c: &mut Criterion, dir: &std::path::Path, n: usize) {
    let mut g = c.benchmark_group(format!("restart_{n}_keys"));
    g.sample_size(10);
    g.measurement_time(Duration::from_secs(20));
    g.bench_function("open_data_dir", |b| {
        b.iter_custom(|iters| {
            let mut total = Duration::ZERO;
            for _ in 0..iters {
                let start = Instant::now();
                let e =
                    LocalStore::open(LocalOptions::new(dir), Arc::new(QuantaClock::new())).unwrap();
                total += start.elapsed();
                assert_eq!(now(e.key_count()).unwrap(), n as u64);
                drop(e);
            }
            total
        })
    });
    g.finish();
}

fn main() {
    let mut c = Criterion::default().configure_from_args();
    if std::env::args().any(|a| a == "--list") {
        return;
    }
    let n = key_count();
    let s = setup(n);
    checks(&mut c, &s, n);
    if std::env::var_os("QUOTAD_BENCH_CHECKS_ONLY").is_some() {
        return;
    }
    interleaved(&s);
    let Setup { dir, store, .. } = s;
    drop(store);
    restart(&mut c, dir.path(), n);
    c.final_summary();
}
