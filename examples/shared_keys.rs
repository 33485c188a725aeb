//! Times the engine check as the HTTP server makes it (`Engine::check_identified`), from one or
//! more threads on the same 1,000 keys: with two, each key's shard lock, entry and counter lines
//! move between the cores, as they do when a key's requests arrive on connections served by
//! different workers. No sockets, so the figure moves far less than the HTTP benchmark's.
//!
//! Run: `cargo run --release --example shared_keys -- THREADS` (default 2).
fn main() {
    let threads: usize = std::env::args()
        .nth(1)
        .map(|a| a.parse().expect("THREADS is a number"))
        .unwrap_or(2);
    let dir = tempfile::tempdir().unwrap();
    let (state, keys) = quotad::benchkit::bench_state(&dir.path().join("d"), 1000);
    let engine = state.backend.local().expect("bench state is local").clone();
    let n = 2_000_000usize;
    let start = std::time::Instant::now();
    std::thread::scope(|s| {
        for t in 0..threads {
            let (engine, keys) = (&engine, &keys);
            s.spawn(move || {
                // Every thread walks the same sequence, half the table apart: each key is
                // checked by one thread, then soon after by the next.
                for i in 0..n {
                    let k = &keys[(i * 7 + t * keys.len() / threads) % keys.len()];
                    let mut names = 0;
                    let d = engine.check_identified(Some(k), None, 1, &mut |_, c, t| {
                        names = c.len() + t.len();
                    });
                    std::hint::black_box((d.verdict, names));
                }
            });
        }
    });
    println!(
        "{threads} thread(s): {:.0} ns per check per thread",
        start.elapsed().as_nanos() as f64 / n as f64
    );
}
