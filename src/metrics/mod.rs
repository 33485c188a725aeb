//! Process metrics in the Prometheus text format: checks by decision and transport, and by tier;
//! the engine's latency histogram and the HTTP check's (request read to answer written);
//! connections; the store's gauges (keys, tiers, msync age); the standard `process_*` figures and
//! a build-info metric.
//!
//! Plain atomics in fixed arrays indexed by enum: incrementing a counter on the check path is one
//! relaxed `fetch_add`, with no label lookup.

use std::fmt::Write as _;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};

mod process;

use crate::engine::decision::{AuthFailure, Decision, Verdict};
use crate::store::Gauge;

/// Times a check for the latency histogram with raw reads of one calibrated clock (the TSC
/// where it is usable), shared by all threads: unlike `quanta::Instant::now`, no thread-local
/// lookup on each read.
#[derive(Debug, Clone, Copy)]
pub struct Stopwatch(u64);

fn stopwatch_clock() -> &'static quanta::Clock {
    static CLOCK: std::sync::OnceLock<quanta::Clock> = std::sync::OnceLock::new();
    CLOCK.get_or_init(quanta::Clock::new)
}

impl Stopwatch {
    /// Starts timing.
    #[inline]
    pub fn start() -> Self {
        Stopwatch(stopwatch_clock().raw())
    }

    /// Nanoseconds since [`Stopwatch::start`].
    #[inline]
    pub fn elapsed_ns(self) -> u64 {
        let c = stopwatch_clock();
        c.delta_as_nanos(self.0, c.raw())
    }
}

/// Which transport asked.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Transport {
    /// The HTTP check endpoint.
    Http = 0,
    /// The binary protocol.
    Binary = 1,
    /// Envoy's gRPC APIs (rate limit service and external authorization).
    Grpc = 2,
}

const TRANSPORTS: [&str; 3] = ["http", "binary", "grpc"];
const DECISIONS: [&str; 7] = crate::engine::decision::CODES;
const REASONS: [&str; 6] = [
    "missing",
    "malformed",
    "unknown",
    "revoked",
    "expired",
    "deprecated",
];
/// Histogram bucket upper bounds, nanoseconds.
const BUCKETS_NS: [u64; 12] = [
    250, 500, 1_000, 2_500, 5_000, 10_000, 25_000, 50_000, 100_000, 250_000, 1_000_000, 10_000_000,
];

/// HTTP check histogram bucket upper bounds, nanoseconds (10 µs to 100 ms).
const HTTP_BUCKETS_NS: [u64; 12] = [
    10_000,
    25_000,
    50_000,
    100_000,
    250_000,
    500_000,
    1_000_000,
    2_500_000,
    5_000_000,
    10_000_000,
    25_000_000,
    100_000_000,
];
/// Tier indices counted apart; higher ones share the last slot, rendered as `tier="other"`.
const TIER_SLOTS: usize = 32;

/// The histogram bucket of a latency (`None`: above the last bound, counted in `+Inf` only).
fn bucket_of(latency_ns: u64) -> Option<usize> {
    BUCKETS_NS.iter().position(|&ub| latency_ns <= ub)
}

/// The counter slot and escaped label of each tier in force: the last slot, shared by the
/// tiers past it, is labelled `other` and listed once.
fn tier_labels(tiers: &[(u16, String)]) -> Vec<(usize, String)> {
    let mut out = Vec::with_capacity(tiers.len().min(TIER_SLOTS));
    for (ix, name) in tiers {
        let slot = tier_slot(*ix);
        if slot == TIER_SLOTS - 1 {
            out.push((slot, "other".to_string()));
            break;
        }
        out.push((slot, label_value(name)));
    }
    out
}

/// `name` escaped as a Prometheus label value.
fn label_value(name: &str) -> String {
    name.replace('\\', "\\\\").replace('"', "\\\"")
}

fn tier_slot(tier: u16) -> usize {
    usize::from(tier).min(TIER_SLOTS - 1)
}

fn reason_index(r: AuthFailure) -> usize {
    match r {
        AuthFailure::Missing => 0,
        AuthFailure::Malformed => 1,
        AuthFailure::Unknown => 2,
        AuthFailure::Revoked => 3,
        AuthFailure::Expired => 4,
        AuthFailure::Deprecated => 5,
    }
}

/// The per-check counters, one copy per stripe so that threads on different cores do not
/// contend for one cache line on every check; [`Metrics::render`] sums the stripes.
#[derive(Debug, Default)]
#[repr(align(128))]
struct CheckStripe {
    /// Checks that named no tier (e.g. an unknown key), by transport and decision.
    untiered: [[AtomicU64; 7]; TRANSPORTS.len()],
    unauthorized: [[AtomicU64; 6]; TRANSPORTS.len()],
    latency_buckets: [AtomicU64; BUCKETS_NS.len()],
    latency_count: AtomicU64,
    latency_sum_ns: AtomicU64,
    /// Checks of keys on a tier, by transport, tier index slot and decision.
    tiers: [[[AtomicU64; 7]; TIER_SLOTS]; TRANSPORTS.len()],
    http_buckets: [AtomicU64; HTTP_BUCKETS_NS.len()],
    http_count: AtomicU64,
    http_sum_ns: AtomicU64,
}

mod tally;

pub use tally::Tally;

const STRIPES: usize = 16;

thread_local! {
    static STRIPE: usize = {
        static NEXT: AtomicU64 = AtomicU64::new(0);
        NEXT.fetch_add(1, Ordering::Relaxed) as usize % STRIPES
    };
}

/// All counters of one process.
#[derive(Debug, Default)]
pub struct Metrics {
    stripes: [CheckStripe; STRIPES],
    connections: [AtomicI64; TRANSPORTS.len()],
    bad_requests: [AtomicU64; TRANSPORTS.len()],
    admin_requests: AtomicU64,
    rejected_connections: [AtomicU64; TRANSPORTS.len()],
    /// Shadow denials by tier slot and reason (0 rate_limited, 1 quota_exceeded): rare, so
    /// not striped.
    shadow: [[AtomicU64; 2]; TIER_SLOTS],
}

impl Metrics {
    /// New, all zero.
    pub fn new() -> Self {
        Self::default()
    }

    /// Counts a check that a tier in shadow mode allowed but would have denied with `would`.
    pub fn record_shadow(&self, tier: Option<u16>, would: Verdict) {
        let reason = match would {
            Verdict::RateLimited(_) => 0,
            Verdict::QuotaExceeded => 1,
            _ => return,
        };
        self.shadow[tier_slot(tier.unwrap_or(0))][reason].fetch_add(1, Ordering::Relaxed);
    }

    /// Counts decision `d` (and its shadow denial, if any) and its engine latency.
    #[inline]
    pub fn record_decision(&self, t: Transport, d: &Decision, latency_ns: u64) {
        self.record_check(t, d.verdict, d.tier, latency_ns);
        if let Some(v) = d.shadow {
            self.record_shadow(d.tier, v);
        }
    }

    /// Counts one decision (of a key on `tier`, if any) and its engine latency.
    #[inline]
    pub fn record_check(&self, t: Transport, v: Verdict, tier: Option<u16>, latency_ns: u64) {
        let s = &self.stripes[STRIPE.with(|i| *i)];
        match tier {
            Some(tier) => &s.tiers[t as usize][tier_slot(tier)][v.index()],
            None => &s.untiered[t as usize][v.index()],
        }
        .fetch_add(1, Ordering::Relaxed);
        if let Verdict::Unauthorized(r) = v {
            s.unauthorized[t as usize][reason_index(r)].fetch_add(1, Ordering::Relaxed);
        }
        if let Some(b) = bucket_of(latency_ns) {
            s.latency_buckets[b].fetch_add(1, Ordering::Relaxed);
        }
        s.latency_count.fetch_add(1, Ordering::Relaxed);
        s.latency_sum_ns.fetch_add(latency_ns, Ordering::Relaxed);
    }

    /// Adds the checks counted in `tally` (one connection's read, say) and empties it: one
    /// relaxed add per counter that moved instead of several per check.
    pub fn add_tally(&self, t: Transport, tally: &mut Tally) {
        debug_assert_eq!(tally.untimed, 0, "time the batch before adding it");
        if tally.count == 0 {
            return;
        }
        let s = &self.stripes[STRIPE.with(|i| *i)];
        let add = |a: &AtomicU64, n: u64| {
            if n > 0 {
                a.fetch_add(n, Ordering::Relaxed);
            }
        };
        // What the tier list does not hold named no tier.
        let mut untiered = tally.checks;
        for (a, &n) in s.unauthorized[t as usize].iter().zip(&tally.unauthorized) {
            add(a, n);
        }
        for (a, &n) in s.latency_buckets.iter().zip(&tally.latency_buckets) {
            add(a, n);
        }
        add(&s.latency_count, tally.count);
        add(&s.latency_sum_ns, tally.latency_sum_ns);
        let tiers = &s.tiers[t as usize];
        for &(slot, d, n) in &tally.tiers[..usize::from(tally.tiers_len)] {
            add(&tiers[usize::from(slot)][usize::from(d)], u64::from(n));
            untiered[usize::from(d)] -= u64::from(n);
        }
        for &(slot, d) in &tally.spill {
            add(&tiers[usize::from(slot)][usize::from(d)], 1);
            untiered[usize::from(d)] -= 1;
        }
        for (a, &n) in s.untiered[t as usize].iter().zip(&untiered) {
            add(a, n);
        }
        for &(tier, v) in &tally.shadow {
            self.record_shadow(tier, v);
        }
        *tally = Tally::default();
    }

    /// Counts one HTTP check from its request read to its answer written.
    pub fn record_http_check(&self, elapsed_ns: u64) {
        let s = &self.stripes[STRIPE.with(|i| *i)];
        if let Some(b) = HTTP_BUCKETS_NS.iter().position(|&ub| elapsed_ns <= ub) {
            s.http_buckets[b].fetch_add(1, Ordering::Relaxed);
        }
        s.http_count.fetch_add(1, Ordering::Relaxed);
        s.http_sum_ns.fetch_add(elapsed_ns, Ordering::Relaxed);
    }

    fn sum(&self, f: impl Fn(&CheckStripe) -> &AtomicU64) -> u64 {
        self.stripes
            .iter()
            .map(|s| f(s).load(Ordering::Relaxed))
            .sum()
    }

    /// Counts a refused request (400 or error frame).
    pub fn record_bad_request(&self, t: Transport) {
        self.bad_requests[t as usize].fetch_add(1, Ordering::Relaxed);
    }

    /// Counts an admin API request.
    pub fn record_admin(&self) {
        self.admin_requests.fetch_add(1, Ordering::Relaxed);
    }

    /// Counts a connection refused by the connection limit.
    pub fn record_rejected_connection(&self, t: Transport) {
        self.rejected_connections[t as usize].fetch_add(1, Ordering::Relaxed);
    }

    /// A connection opened; the guard counts it closed when dropped.
    pub fn connection(self: &std::sync::Arc<Self>, t: Transport) -> ConnectionGuard {
        self.connections[t as usize].fetch_add(1, Ordering::Relaxed);
        ConnectionGuard {
            metrics: self.clone(),
            t,
        }
    }

    /// The per-check families: checks by decision, unauthorized by reason, the latency histogram.
    fn render_checks(&self, s: &mut String, tiers: &[(u16, String)]) {
        family(
            s,
            "quotad_checks_total",
            "counter",
            "Checks answered, by transport, tier (empty: the check named no tier, e.g. an \
             unknown key) and decision.",
        );
        let labels = tier_labels(tiers);
        for (ti, tn) in TRANSPORTS.iter().enumerate() {
            for (slot, label) in &labels {
                for (di, dn) in DECISIONS.iter().enumerate() {
                    let v = self.sum(|s| &s.tiers[ti][*slot][di]);
                    let _ = writeln!(
                        s,
                        "quotad_checks_total{{transport=\"{tn}\",tier=\"{label}\",decision=\"{dn}\"}} {v}"
                    );
                }
            }
            // Tiers deleted since (indices are never reused), so that the sum over tiers
            // never goes back.
            for (di, dn) in DECISIONS.iter().enumerate() {
                let v: u64 = (0..TIER_SLOTS)
                    .filter(|slot| !labels.iter().any(|(l, _)| l == slot))
                    .map(|slot| self.sum(|s| &s.tiers[ti][slot][di]))
                    .sum();
                if v > 0 {
                    let _ = writeln!(
                        s,
                        "quotad_checks_total{{transport=\"{tn}\",tier=\"(deleted)\",decision=\"{dn}\"}} {v}"
                    );
                }
            }
            for (di, dn) in DECISIONS.iter().enumerate() {
                let v = self.sum(|s| &s.untiered[ti][di]);
                let _ = writeln!(
                    s,
                    "quotad_checks_total{{transport=\"{tn}\",tier=\"\",decision=\"{dn}\"}} {v}"
                );
            }
        }
        family(
            s,
            "quotad_unauthorized_total",
            "counter",
            "Unauthorized checks, by transport and reason.",
        );
        for (ti, tn) in TRANSPORTS.iter().enumerate() {
            for (ri, rn) in REASONS.iter().enumerate() {
                let v = self.sum(|s| &s.unauthorized[ti][ri]);
                let _ = writeln!(
                    s,
                    "quotad_unauthorized_total{{transport=\"{tn}\",reason=\"{rn}\"}} {v}"
                );
            }
        }
        family(
            s,
            "quotad_check_duration_seconds",
            "histogram",
            "Time the engine took to decide a check (binary protocol: the checks of one read are timed together, each counted at their mean).",
        );
        self.histogram(
            s,
            "quotad_check_duration_seconds",
            &BUCKETS_NS,
            |st, i| &st.latency_buckets[i],
            (|st| &st.latency_count, |st| &st.latency_sum_ns),
        );
        family(
            s,
            "quotad_http_check_duration_seconds",
            "histogram",
            "HTTP checks, from the request read to the answer written to the connection.",
        );
        self.histogram(
            s,
            "quotad_http_check_duration_seconds",
            &HTTP_BUCKETS_NS,
            |st, i| &st.http_buckets[i],
            (|st| &st.http_count, |st| &st.http_sum_ns),
        );
    }

    /// A histogram's samples from per-stripe buckets, count and sum (ns).
    fn histogram(
        &self,
        s: &mut String,
        name: &str,
        bounds: &[u64],
        bucket: impl Fn(&CheckStripe, usize) -> &AtomicU64,
        (count, sum): (
            impl Fn(&CheckStripe) -> &AtomicU64,
            impl Fn(&CheckStripe) -> &AtomicU64,
        ),
    ) {
        let mut cum = 0;
        for (i, ub) in bounds.iter().enumerate() {
            cum += self.sum(|st| bucket(st, i));
            let _ = writeln!(s, "{name}_bucket{{le=\"{}\"}} {cum}", *ub as f64 / 1e9);
        }
        let n = self.sum(count);
        let _ = writeln!(s, "{name}_bucket{{le=\"+Inf\"}} {n}");
        let total = self.sum(sum) as f64 / 1e9;
        let _ = writeln!(s, "{name}_sum {total}");
        let _ = writeln!(s, "{name}_count {n}");
    }

    /// Checks by tier (named from `tiers`: index and name of each tier in force) and decision,
    /// and shadow denials by tier and reason.
    fn render_tiers(&self, s: &mut String, tiers: &[(u16, String)]) {
        family(
            s,
            "quotad_tier_checks_total",
            "counter",
            "Checks of keys on each tier in force, by decision (both transports).",
        );
        for (slot, label) in tier_labels(tiers) {
            for (di, dn) in DECISIONS.iter().enumerate() {
                let v: u64 = (0..TRANSPORTS.len())
                    .map(|ti| self.sum(|st| &st.tiers[ti][slot][di]))
                    .sum();
                let _ = writeln!(
                    s,
                    "quotad_tier_checks_total{{tier=\"{label}\",decision=\"{dn}\"}} {v}"
                );
            }
        }
        family(
            s,
            "quotad_shadow_denials_total",
            "counter",
            "Checks a tier in shadow mode allowed that its limits (rate_limited) or quota \
             (quota_exceeded) would have denied.",
        );
        for (slot, label) in tier_labels(tiers) {
            for (ri, reason) in ["rate_limited", "quota_exceeded"].iter().enumerate() {
                let v = self.shadow[slot][ri].load(Ordering::Relaxed);
                let _ = writeln!(
                    s,
                    "quotad_shadow_denials_total{{tier=\"{label}\",reason=\"{reason}\"}} {v}"
                );
            }
        }
    }

    /// The Prometheus text exposition, including the store's figures (`keys`: the key count, or
    /// -1 when the store could not say; `tiers`: index and name of each tier in force; `store`:
    /// its own gauges).
    pub fn render(
        &self,
        keys: i64,
        tiers: &[(u16, String)],
        tier_keys: &[(u16, u64)],
        store: Vec<Gauge>,
    ) -> String {
        let mut s = String::with_capacity(4096);
        self.render_checks(&mut s, tiers);
        self.render_tiers(&mut s, tiers);
        family(
            &mut s,
            "quotad_tier_keys",
            "gauge",
            "Keys on each tier in force (live, revoked and expired, as quotad_keys).",
        );
        for (ix, name) in tiers {
            let n = tier_keys
                .iter()
                .find(|(i, _)| i == ix)
                .map_or(0, |(_, n)| *n);
            let _ = writeln!(s, "quotad_tier_keys{{tier=\"{}\"}} {n}", label_value(name));
        }
        let load = |a: &AtomicI64| a.load(Ordering::Relaxed);
        let load_u = |a: &AtomicU64| a.load(Ordering::Relaxed) as i64;
        per_transport(
            &mut s,
            "quotad_open_connections",
            "gauge",
            "Connections open now, by transport.",
            |t| Some(load(&self.connections[t])),
        );
        per_transport(
            &mut s,
            "quotad_rejected_connections_total",
            "counter",
            "Connections refused by the connection limit.",
            |t| Some(load_u(&self.rejected_connections[t])),
        );
        per_transport(
            &mut s,
            "quotad_bad_requests_total",
            "counter",
            "Requests refused as malformed.",
            |t| Some(load_u(&self.bad_requests[t])),
        );
        let mut gauges = vec![
            (
                "quotad_admin_requests_total",
                "counter",
                "Admin API requests.",
                load_u(&self.admin_requests).to_string(),
            ),
            (
                "quotad_keys",
                "gauge",
                "Keys in the store (live, revoked and expired).",
                keys.to_string(),
            ),
            (
                "quotad_tiers",
                "gauge",
                "Tiers in force.",
                tiers.len().to_string(),
            ),
        ];
        gauges.extend(store.into_iter().map(|g| (g.name, g.kind, g.help, g.value)));
        for (name, kind, help, value) in gauges {
            family(&mut s, name, kind, help);
            let _ = writeln!(s, "{name} {value}");
        }
        family(
            &mut s,
            "quotad_build_info",
            "gauge",
            "Always 1; the labels say which quotad this is.",
        );
        let _ = writeln!(
            s,
            "quotad_build_info{{version=\"{}\"}} 1",
            env!("CARGO_PKG_VERSION")
        );
        for (name, kind, help, v) in process::figures() {
            family(&mut s, name, kind, help);
            let _ = writeln!(s, "{name} {v}");
        }
        s
    }
}

/// Writes a metric family's `# HELP` and `# TYPE` lines.
fn family(s: &mut String, name: &str, kind: &str, help: &str) {
    let _ = writeln!(s, "# HELP {name} {help}");
    let _ = writeln!(s, "# TYPE {name} {kind}");
}

/// Writes a family with one sample per transport that has one.
fn per_transport(
    s: &mut String,
    name: &str,
    kind: &str,
    help: &str,
    value: impl Fn(usize) -> Option<i64>,
) {
    family(s, name, kind, help);
    for (ti, tn) in TRANSPORTS.iter().enumerate() {
        if let Some(v) = value(ti) {
            let _ = writeln!(s, "{name}{{transport=\"{tn}\"}} {v}");
        }
    }
}

/// Counts a connection as closed when dropped.
#[derive(Debug)]
pub struct ConnectionGuard {
    metrics: std::sync::Arc<Metrics>,
    t: Transport,
}

impl Drop for ConnectionGuard {
    fn drop(&mut self) {
        self.metrics.connections[self.t as usize].fetch_sub(1, Ordering::Relaxed);
    }
}

#[cfg(test)]
mod tests;
