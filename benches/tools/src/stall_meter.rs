//! The machine's own stalls: how often, and for how long, a thread that never sleeps is kept
//! off its CPU (by the hypervisor, interrupts or other tasks). It reads the clock in a tight loop
//! and counts every gap between two reads above 10 µs.
//!
//! ```sh
//! taskset -c 0 cargo run --release --manifest-path benches/tools/Cargo.toml --target-dir target --bin stall_meter -- 5      # seconds (default 5)
//! ```
//!
//! A latency tail can be no better than this floor: on a virtual machine whose vCPUs stop for
//! 200 µs several times a second, some requests wait 200 µs whatever the server does.
//! `benches/binary_vs_redis.sh` runs it on each core before its latency runs and prints one JSON
//! line per core.

use std::time::{Duration, Instant};

fn main() {
    let secs: f64 = std::env::args()
        .nth(1)
        .and_then(|a| a.parse().ok())
        .unwrap_or(5.0);
    // Upper bounds in µs of the gap classes; the last class is everything above.
    const BOUNDS: [u64; 5] = [50, 100, 200, 500, 1000];
    let mut counts = [0u64; BOUNDS.len() + 1];
    let mut stalled_over_100us = Duration::ZERO;
    let mut stalled_over_200us = Duration::ZERO;
    let mut longest = Duration::ZERO;
    let start = Instant::now();
    let end = start + Duration::from_secs_f64(secs);
    let mut last = start;
    loop {
        let now = Instant::now();
        let gap = now - last;
        last = now;
        if now >= end {
            break;
        }
        if gap > Duration::from_micros(10) {
            let us = gap.as_micros() as u64;
            let class = BOUNDS.iter().position(|&b| us <= b).unwrap_or(BOUNDS.len());
            counts[class] += 1;
            if us > 100 {
                stalled_over_100us += gap;
            }
            if us > 200 {
                stalled_over_200us += gap;
            }
            longest = longest.max(gap);
        }
    }
    let wall = start.elapsed().as_secs_f64();
    println!(
        "{}",
        serde_json::json!({
            "seconds": wall,
            "gaps": {
                "10-50us": counts[0], "50-100us": counts[1], "100-200us": counts[2],
                "200-500us": counts[3], "500us-1ms": counts[4], "over1ms": counts[5],
            },
            "stalledOver100usPercent": stalled_over_100us.as_secs_f64() / wall * 100.0,
            "stalledOver200usPercent": stalled_over_200us.as_secs_f64() / wall * 100.0,
            "longestMicros": longest.as_micros() as u64,
        })
    );
}
