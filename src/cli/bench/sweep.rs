//! `--sweep`'s output: the latency-versus-throughput points as CSV and as an SVG chart.

use super::Report;

/// The sweep's CSV. `latency` says where the latency columns were measured (`socket`: the
/// answer in the socket's receive queue; `client`: as the load generator read it); `skipped`
/// counts the scheduled sends skipped because the load generator itself fell behind.
pub fn sweep_csv(points: &[Report]) -> String {
    let mut s = String::from(
        "offered_rps,achieved_rps,p50_us,p90_us,p99_us,p999_us,max_us,requests,skipped,latency\n",
    );
    for r in points {
        s.push_str(&format!(
            "{:.0},{:.0},{:.1},{:.1},{:.1},{:.1},{:.1},{},{},{}\n",
            r.offered,
            r.throughput(),
            r.us(0.5),
            r.us(0.9),
            r.us(0.99),
            r.us(0.999),
            r.latency.max() as f64 / 1000.0,
            r.requests,
            r.skipped,
            r.source()
        ));
    }
    s
}

/// A round tick step (1, 2 or 5 × 10^k) giving about `n` ticks up to `max`.
fn tick_step(max: f64, n: f64) -> f64 {
    let raw = (max / n).max(1e-9);
    let mag = 10f64.powf(raw.log10().floor());
    [1.0, 2.0, 5.0, 10.0]
        .into_iter()
        .map(|m| m * mag)
        .find(|&st| st >= raw)
        .unwrap_or(10.0 * mag)
}

/// Whether point `i` is past saturation: its achieved rate is below that of an earlier point
/// (the server answers less than it did at a lower offered rate). Such points are drawn apart,
/// not joined to the curve, which would otherwise fold back.
fn past_saturation(points: &[Report], i: usize) -> bool {
    let best_before = points[..i]
        .iter()
        .map(Report::throughput)
        .fold(0.0, f64::max);
    points[i].throughput() < best_before
}

/// The sweep's chart: latency (log scale) against achieved throughput, p50 / p99 / p99.9.
pub fn sweep_svg(points: &[Report], title: &str) -> String {
    let (w, h, ml, mr, mt, mb) = (800.0, 480.0, 80.0, 30.0, 50.0, 60.0);
    let pw = w - ml - mr;
    let ph = h - mt - mb;
    let xmax = points.iter().map(Report::throughput).fold(1.0, f64::max) * 1.05;
    let lat: Vec<f64> = points
        .iter()
        .flat_map(|r| [r.us(0.5), r.us(0.99), r.us(0.999)])
        .collect();
    let ymin = lat.iter().cloned().fold(f64::MAX, f64::min).max(1.0);
    let ymax = lat.iter().cloned().fold(1.0, f64::max).max(ymin * 10.0);
    let (l0, l1) = (ymin.log10().floor(), ymax.log10().ceil());
    let x = |v: f64| ml + v / xmax * pw;
    let y = |v: f64| mt + ph - (v.max(1.0).log10() - l0) / (l1 - l0).max(1.0) * ph;
    let esc = |s: &str| {
        s.replace('&', "&amp;")
            .replace('<', "&lt;")
            .replace('>', "&gt;")
    };
    let mut s = format!(
        "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"{w}\" height=\"{h}\" viewBox=\"0 0 {w} {h}\" font-family=\"sans-serif\" font-size=\"12\">\n\
         <rect width=\"100%\" height=\"100%\" fill=\"white\"/>\n\
         <text x=\"{}\" y=\"25\" text-anchor=\"middle\" font-size=\"16\">{}</text>\n",
        w / 2.0,
        esc(title)
    );
    s.push_str(&format!(
        "<line x1=\"{ml}\" y1=\"{}\" x2=\"{}\" y2=\"{}\" stroke=\"black\"/>\n<line x1=\"{ml}\" y1=\"{mt}\" x2=\"{ml}\" y2=\"{}\" stroke=\"black\"/>\n",
        mt + ph,
        ml + pw,
        mt + ph,
        mt + ph
    ));
    let step = tick_step(xmax, 5.0);
    let ticks = (xmax / step).floor() as usize;
    for i in 0..=ticks {
        let v = step * i as f64;
        s.push_str(&format!(
            "<line x1=\"{0:.1}\" y1=\"{1}\" x2=\"{0:.1}\" y2=\"{2}\" stroke=\"#ddd\"/>\n<text x=\"{0:.1}\" y=\"{3}\" text-anchor=\"middle\">{4}</text>\n",
            x(v),
            mt,
            mt + ph,
            mt + ph + 18.0,
            if step >= 1000.0 { format!("{}k", v / 1000.0) } else { format!("{v}") }
        ));
    }
    let mut e = l0;
    while e <= l1 {
        let v = 10f64.powf(e);
        s.push_str(&format!(
            "<line x1=\"{ml}\" y1=\"{0:.1}\" x2=\"{1}\" y2=\"{0:.1}\" stroke=\"#ddd\"/>\n<text x=\"{2}\" y=\"{0:.1}\" text-anchor=\"end\" dominant-baseline=\"middle\">{3}</text>\n",
            y(v),
            ml + pw,
            ml - 6.0,
            if v >= 1000.0 { format!("{} ms", v / 1000.0) } else { format!("{v} us") }
        ));
        e += 1.0;
    }
    s.push_str(&format!(
        "<text x=\"{}\" y=\"{}\" text-anchor=\"middle\">achieved throughput (requests/s)</text>\n\
         <text x=\"18\" y=\"{}\" text-anchor=\"middle\" transform=\"rotate(-90 18 {})\">latency (log scale)</text>\n",
        ml + pw / 2.0,
        h - 15.0,
        mt + ph / 2.0,
        mt + ph / 2.0
    ));
    for (i, (q, name, color)) in [
        (0.5, "p50", "#1f77b4"),
        (0.99, "p99", "#ff7f0e"),
        (0.999, "p99.9", "#d62728"),
    ]
    .into_iter()
    .enumerate()
    {
        let at = |r: &Report| (x(r.throughput()), y(r.us(q)));
        let curve: Vec<String> = (0..points.len())
            .filter(|&i| !past_saturation(points, i))
            .map(|i| {
                let (px, py) = at(&points[i]);
                format!("{px:.1},{py:.1}")
            })
            .collect();
        s.push_str(&format!(
            "<polyline fill=\"none\" stroke=\"{color}\" stroke-width=\"2\" points=\"{}\"/>\n",
            curve.join(" ")
        ));
        for (i, r) in points.iter().enumerate() {
            let (px, py) = at(r);
            // Past saturation: a hollow marker, not on the curve.
            let fill = if past_saturation(points, i) {
                "white"
            } else {
                color
            };
            s.push_str(&format!(
                "<circle cx=\"{px:.1}\" cy=\"{py:.1}\" r=\"3\" fill=\"{fill}\" stroke=\"{color}\"/>\n"
            ));
        }
        let ly = mt + 15.0 + 16.0 * i as f64;
        s.push_str(&format!(
            "<line x1=\"{0}\" y1=\"{1}\" x2=\"{2}\" y2=\"{1}\" stroke=\"{color}\" stroke-width=\"2\"/>\n<text x=\"{3}\" y=\"{1}\" dominant-baseline=\"middle\">{name}</text>\n",
            ml + 10.0,
            ly,
            ml + 30.0,
            ml + 36.0
        ));
    }
    if (0..points.len()).any(|i| past_saturation(points, i)) {
        let ly = mt + 15.0 + 16.0 * 3.0;
        s.push_str(&format!(
            "<circle cx=\"{}\" cy=\"{ly}\" r=\"3\" fill=\"white\" stroke=\"black\"/>\n<text x=\"{}\" y=\"{ly}\" dominant-baseline=\"middle\">past saturation (less answered than at a lower offered rate)</text>\n",
            ml + 20.0,
            ml + 36.0
        ));
    }
    s.push_str("</svg>\n");
    s
}
