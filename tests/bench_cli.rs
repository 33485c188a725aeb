//! `quotad bench` against a real daemon: the report, `--json`, and `--sweep`'s CSV and SVG.

mod common;

use std::process::Command;

use common::{bin, Daemon};

/// `quotad bench` pointed at `d`, with its admin token.
fn bench_command(d: &Daemon) -> Command {
    let mut c = Command::new(bin());
    c.args([
        "bench",
        "--addr",
        &d.binary.to_string(),
        "--http-url",
        &format!("http://{}", d.http),
    ])
    .args(["--token", &d.token]);
    c
}

fn bench(d: &Daemon, extra: &[&str]) -> std::process::Output {
    let out = bench_command(d).args(extra).output().unwrap();
    assert!(
        out.status.success(),
        "bench failed: {}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

#[test]
fn bench_reports_throughput_latency_and_decisions_as_json() {
    let dir = tempfile::tempdir().unwrap();
    let d = Daemon::start(dir.path(), &[]);
    for target in ["binary", "http"] {
        let out = bench(
            &d,
            &[
                "--target",
                target,
                "--keys",
                "20",
                "--connections",
                "2",
                "--depth",
                "4",
                "--requests",
                "3000",
                "--duration",
                "30",
                "--json",
                "--distribution",
                "zipf",
            ],
        );
        let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
        assert_eq!(v["requests"], 3000, "{target}: stops after --requests");
        assert!(v["throughput"].as_f64().unwrap() > 0.0);
        // A closed-loop run (no --rate) times answers as the load generator reads them: kernel
        // receive timestamps would cost the server CPU at saturation.
        assert_eq!(v["latencySource"], "client", "{target}: {v}");
        for l in [&v["latencyMicros"], &v["clientLatencyMicros"]] {
            assert!(l["p50"].as_f64().unwrap() > 0.0, "{target}: {v}");
            assert!(l["p50"].as_f64().unwrap() <= l["p99"].as_f64().unwrap());
            assert!(l["p99"].as_f64().unwrap() <= l["max"].as_f64().unwrap());
        }
        assert_eq!(
            v["decisions"]["allowed"], 3000,
            "{target}: every check admitted, named alike on both transports: {v}"
        );
        // The JSON repeats the run's configuration.
        assert_eq!(v["config"]["target"], target);
        assert_eq!(v["config"]["connections"], 2);
        assert_eq!(v["config"]["depth"], 4);
        assert_eq!(v["config"]["keys"], 20);
        assert_eq!(v["config"]["distribution"], "zipf");
    }
    // Each run removed the keys and the tier it made.
    let c = d.client();
    let keys = c.admin(reqwest::Method::GET, "/keys", None);
    assert_eq!(keys.body["keys"], serde_json::json!([]), "{}", keys.text);
    let tier = c.admin(reqwest::Method::GET, "/tiers/quotad-bench", None);
    assert_eq!(tier.status, 404, "{}", tier.text);
    // The counters moved: 6000 checks over 40 keys.
    let m = d.client().get("/metrics").text;
    assert!(
        common::metric_sum(
            &m,
            "quotad_checks_total",
            &[("transport", "binary"), ("decision", "allowed")]
        ) == 3000,
        "{m}"
    );
    assert!(
        common::metric_sum(
            &m,
            "quotad_checks_total",
            &[("transport", "http"), ("decision", "allowed")]
        ) == 3000,
        "{m}"
    );
    // Unless told to keep them.
    bench(
        &d,
        &["--keys", "5", "--requests", "100", "--keep-keys", "--json"],
    );
    let keys = c.admin(reqwest::Method::GET, "/keys", None);
    assert_eq!(keys.body["keys"].as_array().unwrap().len(), 5);
    assert_eq!(
        c.admin(reqwest::Method::GET, "/tiers/quotad-bench", None)
            .status,
        200
    );
}

#[test]
fn an_offered_rate_is_sent_at_that_rate_on_any_number_of_threads() {
    let dir = tempfile::tempdir().unwrap();
    let d = Daemon::start(dir.path(), &[]);
    for threads in ["1", "2"] {
        let out = bench(
            &d,
            &[
                "--keys",
                "10",
                "--connections",
                "4",
                "--depth",
                "1",
                "--rate",
                "2000",
                "--duration",
                "2",
                "--threads",
                threads,
                // Late sends go out up to 20 ms late rather than being skipped (the default
                // skips past 100 µs): on a shared machine a busy neighbour keeps this process
                // off its CPU for a few ms at a time, and the rate is what is checked here.
                "--max-lag-us",
                "20000",
                "--json",
            ],
        );
        let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
        let n = v["requests"].as_u64().unwrap();
        let skipped = v["skipped"].as_u64().unwrap();
        // 2,000/s for 2 s: the pacer releases 4,000 (less any skipped while this process was
        // off its CPU for over 20 ms); a few may still be in flight at the end.
        assert!(
            (3_600..=4_000).contains(&(n + skipped)),
            "{threads} threads: {n} requests at 2000/s for 2 s: {v}"
        );
        assert!(skipped < 400, "{v}");
        assert_eq!(v["decisions"]["allowed"].as_u64(), Some(n), "{v}");
        // Paced, latency is the point: Linux gives TCP sockets kernel receive timestamps, so it
        // is measured at the socket, with the load generator's own reading time beside it.
        assert_eq!(v["latencySource"], "socket", "{v}");
        let (s, c) = (&v["latencyMicros"], &v["clientLatencyMicros"]);
        assert!(s["p50"].as_f64().unwrap() > 0.0, "{v}");
        assert!(
            s["p50"].as_f64().unwrap() <= c["p50"].as_f64().unwrap(),
            "the answer is in the socket before it is read: {v}"
        );
    }
}

/// Runs a paced bench (2,000/s for 3 s) and stops the load generator with SIGSTOP for 500 ms
/// once it has run a second; returns its JSON report.
fn paused_run(d: &Daemon, max_lag_us: &str) -> serde_json::Value {
    use std::io::BufRead;
    let mut child = bench_command(d)
        .args(["--keys", "10", "--connections", "4"])
        .args(["--depth", "1", "--rate", "2000", "--duration", "3"])
        .args(["--max-lag-us", max_lag_us, "--json"])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let pid = child.id() as libc::pid_t;
    // The progress line a second into the run.
    let mut err = std::io::BufReader::new(child.stderr.take().unwrap());
    let mut line = String::new();
    while !line.contains("answers") {
        line.clear();
        assert!(err.read_line(&mut line).unwrap() > 0, "bench ended early");
    }
    // SAFETY: signals to our own child, which has not been waited for.
    unsafe { libc::kill(pid, libc::SIGSTOP) };
    std::thread::sleep(std::time::Duration::from_millis(500));
    // SAFETY: as above.
    unsafe { libc::kill(pid, libc::SIGCONT) };
    std::thread::spawn(move || std::io::copy(&mut err, &mut std::io::sink()));
    let out = child.wait_with_output().unwrap();
    assert!(out.status.success());
    serde_json::from_slice(&out.stdout).unwrap()
}

#[test]
fn sends_that_fell_due_while_the_load_generator_was_stopped_are_skipped_not_burst() {
    let dir = tempfile::tempdir().unwrap();
    let d = Daemon::start(dir.path(), &[]);
    // --max-lag-us 20000: the ≈ 1,000 sends due during the 500 ms pause are skipped and counted.
    // (The threshold is well above the few ms a busy neighbour on a shared machine can keep this
    // process waiting for its CPU, so that only the pause's sends are skipped; the default,
    // 100 µs, skips those too.)
    let v = paused_run(&d, "20000");
    let (n, skipped) = (
        v["requests"].as_u64().unwrap(),
        v["skipped"].as_u64().unwrap(),
    );
    assert!((850..=1_600).contains(&skipped), "{v}");
    assert!((5_400..=6_000).contains(&(n + skipped)), "{v}");
    // --max-lag-us 0: every one is sent, late, in a burst after the pause.
    let v = paused_run(&d, "0");
    let n = v["requests"].as_u64().unwrap();
    assert_eq!(v["skipped"], 0, "{v}");
    assert!((5_400..=6_000).contains(&n), "{v}");
}

#[test]
fn sweep_writes_a_well_formed_csv_and_svg() {
    let dir = tempfile::tempdir().unwrap();
    let d = Daemon::start(&dir.path().join("data"), &[]);
    let csv = dir.path().join("sweep.csv");
    let svg = dir.path().join("sweep.svg");
    bench(
        &d,
        &[
            "--sweep",
            "--sweep-steps",
            "3",
            "--duration",
            "3",
            "--keys",
            "10",
            "--connections",
            "2",
            "--depth",
            "2",
            "--csv",
            csv.to_str().unwrap(),
            "--svg",
            svg.to_str().unwrap(),
        ],
    );
    let text = std::fs::read_to_string(&csv).unwrap();
    let mut lines = text.lines();
    assert_eq!(
        lines.next().unwrap(),
        "offered_rps,achieved_rps,p50_us,p90_us,p99_us,p999_us,max_us,requests,skipped,latency"
    );
    let lines: Vec<&str> = lines.collect();
    for l in &lines {
        let source = l.rsplit(',').next().unwrap();
        assert!(source == "socket" || source == "client", "{l}");
    }
    let rows: Vec<Vec<f64>> = lines
        .iter()
        .map(|l| {
            l.split(',')
                .take(9)
                .map(|f| f.parse::<f64>().unwrap())
                .collect()
        })
        .collect();
    assert_eq!(rows.len(), 4, "steps + 1 points");
    for r in &rows {
        assert_eq!(r.len(), 9);
        assert!(r[1] > 0.0, "achieved rate");
        assert!(r[2] <= r[4] && r[4] <= r[6], "p50 <= p99 <= max: {r:?}");
    }
    assert!(
        rows.windows(2).all(|w| w[0][0] < w[1][0]),
        "offered rate steps up"
    );
    let svg_text = std::fs::read_to_string(&svg).unwrap();
    let doc = roxmltree::Document::parse(&svg_text).expect("the SVG is well-formed XML");
    let root = doc.root_element();
    assert_eq!(root.tag_name().name(), "svg");
    let polylines = root
        .children()
        .filter(|n| n.has_tag_name("polyline"))
        .count();
    assert_eq!(polylines, 3, "p50, p99 and p99.9 curves");
    // A point past saturation (less achieved than an earlier point) is off the curve: the curve's
    // x values never go back.
    for p in root.children().filter(|n| n.has_tag_name("polyline")) {
        let xs: Vec<f64> = p
            .attribute("points")
            .unwrap()
            .split(' ')
            .map(|pt| pt.split(',').next().unwrap().parse().unwrap())
            .collect();
        assert!(xs.len() >= 2 && xs.len() <= 4, "{xs:?}");
        assert!(xs.windows(2).all(|w| w[0] <= w[1]), "folds back: {xs:?}");
    }
    // The title says which latency the chart shows and how many sends were skipped.
    let title = root
        .children()
        .find(|n| n.has_tag_name("text"))
        .and_then(|n| n.text())
        .unwrap();
    assert!(
        title.contains("latency: ") && title.contains("sends skipped"),
        "{title}"
    );
    // x ticks at round values: 1, 2 or 5 times a power of ten apart.
    let ticks: Vec<f64> = root
        .children()
        .filter(|n| n.has_tag_name("text") && n.attribute("text-anchor") == Some("middle"))
        .filter_map(|n| n.text())
        .filter_map(|t| match t.strip_suffix('k') {
            Some(k) => k.parse::<f64>().ok().map(|v| v * 1000.0),
            None => t.parse::<f64>().ok(),
        })
        .collect();
    assert!(ticks.len() >= 3, "{ticks:?}");
    let step = ticks[1] - ticks[0];
    let mantissa = step / 10f64.powf(step.log10().floor());
    assert!(
        [1.0, 2.0, 5.0].iter().any(|m| (mantissa - m).abs() < 1e-6),
        "tick step {step}: {ticks:?}"
    );
}
