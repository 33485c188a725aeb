//! `quotad bench`: the load generator capacity planners run against a live quotad.
//!
//! It drives the binary protocol (or the HTTP check) with N connections, each keeping up to
//! `--depth` requests in flight, over keys it creates through the admin API (or reads from a
//! file), picked uniformly or by a Zipf law. With `--rate` the load is open-loop: requests are
//! sent on a schedule at the offered rate (as long as a connection has a free pipeline slot), and
//! latency is the time from writing a request to reading its answer. `--sweep` steps the offered
//! rate up past saturation and writes the latency-versus-throughput curve as CSV and SVG; past
//! saturation the achieved rate stops following the offered one.

mod grpc;
mod keys;
mod load;
mod sweep;

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{bail, Context};
use clap::{Args, ValueEnum};
use hdrhistogram::Histogram;

use self::keys::prepare_keys;
use self::load::{run_load, Load, Picker};
pub use self::sweep::{sweep_csv, sweep_svg};

/// Which transport to load.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Target {
    /// The binary protocol over TCP.
    Binary,
    /// The HTTP check endpoint.
    Http,
    /// Envoy's rate limit service over gRPC (`ShouldRateLimit`, one descriptor per call).
    Grpc,
    /// Envoy's external authorization over gRPC (`Authorization/Check`).
    GrpcAuthz,
}

/// How keys are picked.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Distribution {
    /// Every key equally often.
    Uniform,
    /// Key of rank k with probability ∝ 1/k^s (`--zipf-exponent`).
    Zipf,
}

/// Flags of `quotad bench`.
#[derive(Debug, Clone, Args)]
pub struct BenchArgs {
    /// Transport to load.
    #[arg(long, value_enum, default_value_t = Target::Binary)]
    pub target: Target,
    /// Binary protocol address.
    #[arg(long, default_value = "127.0.0.1:8687")]
    pub addr: SocketAddr,
    /// gRPC address (targets grpc and grpc-authz).
    #[arg(long, default_value = "127.0.0.1:8688")]
    pub grpc_addr: SocketAddr,
    /// HTTP base URL (the check endpoint, and the admin API unless --admin-url is given).
    #[arg(long, default_value = "http://127.0.0.1:8686")]
    pub http_url: String,
    /// Admin API base URL (from the global `--admin-url`; else --http-url).
    #[arg(skip)]
    pub admin_url: Option<String>,
    /// Admin token (from the global `--token`).
    #[arg(skip)]
    pub token: Option<String>,
    /// A CA file to trust for an https:// admin URL (from the global `--admin-ca`).
    #[arg(skip)]
    pub admin_ca: Option<PathBuf>,
    /// Data directory holding admin.token.
    #[arg(long, default_value = "./quotad-data")]
    pub data_dir: PathBuf,
    /// Connections.
    #[arg(long, default_value_t = 8)]
    pub connections: usize,
    /// Requests in flight per connection (pipeline depth).
    #[arg(long, default_value_t = 16)]
    pub depth: usize,
    /// Keys to create and use.
    #[arg(long, default_value_t = 1000)]
    pub keys: usize,
    /// Use these raw keys (one per line) instead of creating keys.
    #[arg(long)]
    pub key_file: Option<PathBuf>,
    /// Write the keys this run created to FILE (mode 0600; raw keys, one per line), so that
    /// another `quotad bench` (e.g. against a second node on the same Redis) can use them with
    /// `--key-file`.
    #[arg(long, value_name = "FILE")]
    pub save_keys: Option<PathBuf>,
    /// Tier for created keys (default: a tier `quotad-bench` with limits no bench reaches).
    #[arg(long)]
    pub tier: Option<String>,
    /// Keep the keys this run created (and the `quotad-bench` tier) instead of removing them at
    /// the end. Keys written with --save-keys are always kept.
    #[arg(long)]
    pub keep_keys: bool,
    /// Scope to require on every check.
    #[arg(long)]
    pub scope: Option<String>,
    /// Key distribution.
    #[arg(long, value_enum, default_value_t = Distribution::Uniform)]
    pub distribution: Distribution,
    /// Zipf exponent.
    #[arg(long, default_value_t = 1.0)]
    pub zipf_exponent: f64,
    /// Seconds to run (per sweep: in total).
    #[arg(long, default_value_t = 10.0)]
    pub duration: f64,
    /// Stop after this many requests.
    #[arg(long)]
    pub requests: Option<u64>,
    /// Offered rate in requests/s over all connections (0: as fast as the server answers).
    #[arg(long, default_value_t = 0.0)]
    pub rate: f64,
    /// With --rate: sends that fall more than this many µs behind schedule because the load
    /// generator itself was not running (its thread descheduled or stalled) are skipped and
    /// counted, not sent in a burst when it resumes (a burst would queue at the server and be
    /// measured as the server's latency). 0: send every one, however late.
    #[arg(long, default_value_t = 100)]
    pub max_lag_us: u64,
    /// Threads the load generator runs on (it shares the machine with the server it measures).
    #[arg(long, default_value_t = 1)]
    pub threads: usize,
    /// Print the report as JSON (from the global `--json`).
    #[arg(skip)]
    pub json: bool,
    /// Step the offered rate up past saturation; write CSV and SVG.
    #[arg(long)]
    pub sweep: bool,
    /// Steps of the sweep (each at a fraction of the saturating rate, up to 110 %).
    #[arg(long, default_value_t = 10)]
    pub sweep_steps: usize,
    /// Where the sweep's CSV goes.
    #[arg(long, default_value = "quotad-sweep.csv")]
    pub csv: PathBuf,
    /// Where the sweep's SVG chart goes.
    #[arg(long, default_value = "quotad-sweep.svg")]
    pub svg: PathBuf,
}

/// One run's results.
#[derive(Debug)]
pub struct Report {
    /// Offered rate (0 = closed loop).
    pub offered: f64,
    /// Answers received.
    pub requests: u64,
    /// Wall time.
    pub elapsed: Duration,
    /// Latency in nanoseconds: from writing a request to its answer being in the socket's
    /// receive queue (kernel timestamp) when every connection had timestamps, else `client_latency`.
    pub latency: Histogram<u64>,
    /// Latency in nanoseconds as the load generator read the answers (includes its own delays).
    pub client_latency: Histogram<u64>,
    /// Whether `latency` is measured at the socket.
    pub at_socket: bool,
    /// Answers by decision (binary) or status (HTTP).
    pub decisions: BTreeMap<String, u64>,
    /// Scheduled sends skipped because they fell more than `--max-lag-us` behind (open loop).
    pub skipped: u64,
}

impl Report {
    fn throughput(&self) -> f64 {
        self.requests as f64 / self.elapsed.as_secs_f64().max(1e-9)
    }

    fn us(&self, q: f64) -> f64 {
        micros_at(&self.latency, q)
    }

    /// Where `latency` is measured: "socket" or "client".
    fn source(&self) -> &'static str {
        if self.at_socket {
            "socket"
        } else {
            "client"
        }
    }

    fn to_json(&self) -> serde_json::Value {
        let q = |h: &Histogram<u64>| {
            let us = |q: f64| micros_at(h, q);
            serde_json::json!({
                "p50": us(0.5), "p90": us(0.9), "p99": us(0.99),
                "p999": us(0.999), "max": h.max() as f64 / 1000.0,
            })
        };
        serde_json::json!({
            "offeredRate": self.offered,
            "skipped": self.skipped,
            "requests": self.requests,
            "seconds": self.elapsed.as_secs_f64(),
            "throughput": self.throughput(),
            "latencyMicros": q(&self.latency),
            "latencySource": self.source(),
            "clientLatencyMicros": q(&self.client_latency),
            "decisions": self.decisions,
        })
    }
}

/// The longest latency a histogram holds (60 s); longer ones are recorded as this.
pub(super) const MAX_LATENCY_NS: u64 = 60_000_000_000;

/// A latency histogram in nanoseconds, 1 ns to [`MAX_LATENCY_NS`], 3 significant digits.
pub(super) fn latency_histogram() -> anyhow::Result<Histogram<u64>> {
    Ok(Histogram::new_with_bounds(1, MAX_LATENCY_NS, 3)?)
}

/// Quantile `q` of a nanosecond histogram, in microseconds.
fn micros_at(h: &Histogram<u64>, q: f64) -> f64 {
    h.value_at_quantile(q) as f64 / 1000.0
}

fn print_report(r: &Report, a: &BenchArgs) {
    println!(
        "target {}, {} connections x depth {}, {} keys ({:?})",
        a.target
            .to_possible_value()
            .map_or(String::new(), |v| v.get_name().to_string()),
        a.connections,
        a.depth,
        a.keys,
        a.distribution
    );
    println!(
        "{} requests in {:.2} s: {:.0} req/s",
        r.requests,
        r.elapsed.as_secs_f64(),
        r.throughput()
    );
    if r.offered > 0.0 {
        println!(
            "offered {:.0} req/s; {} scheduled sends skipped ({:.3} %) for falling more than {} us behind while this load generator was not running",
            r.offered,
            r.skipped,
            100.0 * r.skipped as f64 / (r.offered * r.elapsed.as_secs_f64()).max(1.0),
            a.max_lag_us
        );
    }
    let line = |what: &str, h: &Histogram<u64>| {
        let us = |q: f64| micros_at(h, q);
        println!(
            "latency us, {what}: p50 {:.1}  p90 {:.1}  p99 {:.1}  p99.9 {:.1}  max {:.1}",
            us(0.5),
            us(0.9),
            us(0.99),
            us(0.999),
            h.max() as f64 / 1000.0
        );
    };
    if r.at_socket {
        line("answer in the socket (kernel receive time)", &r.latency);
    }
    line("as this load generator read it", &r.client_latency);
    let d: Vec<String> = r
        .decisions
        .iter()
        .map(|(k, v)| format!("{k} {v}"))
        .collect();
    println!("decisions: {}", d.join(", "));
}

/// Runs `quotad bench`.
pub fn run(a: BenchArgs) -> anyhow::Result<()> {
    if a.connections == 0 || a.depth == 0 {
        bail!("--connections and --depth must be at least 1");
    }
    if matches!(a.target, Target::Grpc | Target::GrpcAuthz) && (a.rate > 0.0 || a.sweep) {
        bail!("--rate and --sweep are for the binary and http targets; gRPC runs closed-loop");
    }
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(a.threads.max(1))
        .enable_all()
        .build()?;
    rt.block_on(async {
        let prepared = prepare_keys(&a).await?;
        let result = measure(&a, prepared.keys.clone()).await;
        if !a.keep_keys && a.save_keys.is_none() {
            prepared.remove().await?;
        }
        result
    })
}

/// The run itself, over `keys`: one load, or a sweep.
async fn measure(a: &BenchArgs, keys: Vec<String>) -> anyhow::Result<()> {
    {
        let load = Arc::new(Load {
            target: a.target,
            addr: a.addr,
            grpc_addr: a.grpc_addr,
            http_authority: super::admin_client::authority(&a.http_url)?,
            connections: a.connections,
            depth: a.depth,
            scope: a.scope.clone(),
            picker: Picker::new(keys.len(), a.distribution, a.zipf_exponent),
            keys: Arc::new(keys),
            max_lag: a.max_lag_us as f64 / 1e6,
        });
        if !a.sweep {
            let r = run_load(&load, a.rate, a.duration, a.requests, true).await?;
            if a.json {
                let mut v = r.to_json();
                v["config"] = config_json(a, load.keys.len());
                println!("{}", serde_json::to_string_pretty(&v)?);
            } else {
                print_report(&r, a);
            }
            return Ok(());
        }
        let steps = a.sweep_steps.max(2);
        let step_secs = (a.duration / (steps + 2) as f64).max(0.5);
        eprintln!("probing the saturating rate for {step_secs:.1} s");
        let probe = run_load(&load, 0.0, step_secs, None, false).await?;
        let sat = probe.throughput();
        eprintln!("saturation ~ {sat:.0} req/s; stepping up to 110 %");
        let mut points = Vec::new();
        for i in 1..=steps + 1 {
            let offered = sat * i as f64 / steps as f64;
            eprintln!(
                "step {i}/{}: offering {offered:.0} req/s for {step_secs:.1} s",
                steps + 1
            );
            let r = run_load(&load, offered, step_secs, None, true).await?;
            eprintln!(
                "offered {:>10.0}  achieved {:>10.0}  p50 {:>8.1} us  p99 {:>8.1} us",
                offered,
                r.throughput(),
                r.us(0.5),
                r.us(0.99)
            );
            points.push(r);
        }
        std::fs::write(&a.csv, sweep_csv(&points))
            .with_context(|| format!("cannot write {}", a.csv.display()))?;
        let title = format!(
            "quotad {:?}: latency vs throughput ({} conns x depth {}, {} keys)",
            a.target,
            a.connections,
            a.depth,
            load.keys.len()
        );
        let title = format!(
            "{title}; latency: {}; {} sends skipped",
            if points.iter().all(|r| r.at_socket) {
                "answer in the socket"
            } else {
                "as the load generator read it"
            },
            points.iter().map(|r| r.skipped).sum::<u64>()
        );
        std::fs::write(&a.svg, sweep_svg(&points, &title))
            .with_context(|| format!("cannot write {}", a.svg.display()))?;
        if a.json {
            let v: Vec<serde_json::Value> = points.iter().map(Report::to_json).collect();
            println!(
                "{}",
                serde_json::to_string_pretty(&serde_json::json!({
                    "saturation": sat,
                    "points": v,
                    "config": config_json(a, load.keys.len()),
                }))?
            );
        } else {
            println!(
                "saturation ~ {sat:.0} req/s; wrote {} and {}",
                a.csv.display(),
                a.svg.display()
            );
        }
        Ok(())
    }
}

/// The label of a denied answer: quotad's decision code (or `bad_request`) named in `text`, an
/// `x-quota-error` value or a JSON error body; `error` when it names none. The same names on
/// every target.
fn decision_label(text: &str) -> &'static str {
    crate::engine::decision::CODES
        .into_iter()
        .chain(["bad_request"])
        .find(|c| text == *c || text.contains(&format!("\"code\":\"{c}\"")))
        .unwrap_or("error")
}

/// The run's configuration, repeated in its JSON report.
fn config_json(a: &BenchArgs, keys: usize) -> serde_json::Value {
    serde_json::json!({
        "target": a.target.to_possible_value().map(|v| v.get_name().to_string()),
        "addr": a.addr.to_string(),
        "grpcAddr": a.grpc_addr.to_string(),
        "httpUrl": a.http_url,
        "connections": a.connections,
        "depth": a.depth,
        "keys": keys,
        "distribution": format!("{:?}", a.distribution).to_lowercase(),
        "zipfExponent": a.zipf_exponent,
        "scope": a.scope,
        "rate": a.rate,
        "duration": a.duration,
        "requests": a.requests,
        "threads": a.threads,
        "maxLagUs": a.max_lag_us,
        "sweep": a.sweep,
        "sweepSteps": a.sweep_steps,
    })
}
