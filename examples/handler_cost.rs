//! Times the HTTP check handler alone (no sockets): the cost of parsing the headers, the
//! engine check, and rendering the answer, next to the engine check by itself.
//! Run: `cargo run --release --example handler_cost`.
fn main() {
    let dir = tempfile::tempdir().unwrap();
    let (state, keys) = quotad::benchkit::bench_state(&dir.path().join("d"), 1000);
    let engine = state.backend.local().expect("bench state is local").clone();
    let reqs: Vec<hyper::Request<()>> = keys
        .iter()
        .map(|k| {
            hyper::Request::builder()
                .uri("/v1/check")
                .header("host", "x")
                .header("x-api-key", k)
                .body(())
                .unwrap()
        })
        .collect();
    for mode in ["full", "engine-only"] {
        let n = 1_000_000;
        let start = std::time::Instant::now();
        for i in 0..n {
            let r = &reqs[i % reqs.len()];
            if mode == "full" {
                std::hint::black_box(quotad::server::http::check(&state, &engine, r));
            } else {
                let k = r.headers().get("x-api-key").unwrap().to_str().unwrap();
                std::hint::black_box(engine.check(Some(k), None, 1));
            }
        }
        println!(
            "{mode}: {:.0} ns per call",
            start.elapsed().as_nanos() as f64 / n as f64
        );
    }
}
