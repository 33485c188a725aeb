//! The tally and the per-check counters add up the same.
use super::*;

/// The per-check counters' lines of the rendered text.
fn check_lines(m: &Metrics) -> Vec<String> {
    let mut out = String::new();
    m.render_checks(&mut out, &[(2, "t2".into())]);
    out.lines()
        .filter(|l| !l.starts_with('#'))
        .map(str::to_string)
        .collect()
}

#[test]
fn a_tally_adds_up_to_the_same_counters_as_one_record_per_check() {
    let checks = [
        (Verdict::Allowed, 120),
        (Verdict::Allowed, 900),
        (Verdict::Unauthorized(AuthFailure::Revoked), 300),
        (Verdict::QuotaExceeded, 20_000),
        (Verdict::Allowed, 50_000_000), // beyond the last bucket: +Inf only
    ];
    let one_by_one = Metrics::new();
    for &(v, ns) in &checks {
        one_by_one.record_check(Transport::Binary, v, Some(2), ns);
    }
    let tallied = Metrics::new();
    let mut t = Tally::default();
    for &(v, ns) in &checks[..2] {
        t.record(v, Some(2), ns);
    }
    tallied.add_tally(Transport::Binary, &mut t);
    for &(v, ns) in &checks[2..] {
        t.record(v, Some(2), ns);
    }
    tallied.add_tally(Transport::Binary, &mut t);
    assert_eq!(t.count, 0, "add_tally empties the tally");
    // A batch timed together: three checks that took 900 ns in all count at 300 ns each.
    let batched = Metrics::new();
    for v in [Verdict::Allowed, Verdict::Allowed, Verdict::Forbidden] {
        t.count_decision(v, None);
    }
    t.time_batch(900);
    batched.add_tally(Transport::Binary, &mut t);
    let one_by_one3 = Metrics::new();
    for v in [Verdict::Allowed, Verdict::Allowed, Verdict::Forbidden] {
        one_by_one3.record_check(Transport::Binary, v, None, 300);
    }
    assert_eq!(check_lines(&batched), check_lines(&one_by_one3));
    let lines = check_lines(&tallied);
    assert_eq!(lines, check_lines(&one_by_one));
    let tier_lines = |m: &Metrics| {
        let mut out = String::new();
        m.render_tiers(&mut out, &[(2, "pro".into())]);
        out
    };
    assert_eq!(tier_lines(&tallied), tier_lines(&one_by_one));
    assert!(tier_lines(&tallied)
        .contains("quotad_tier_checks_total{tier=\"pro\",decision=\"allowed\"} 3"));
    // More tier/decision pairs in one read than the inline list holds: none is lost.
    let many = Metrics::new();
    let mut t = Tally::default();
    for tier in 0..20u16 {
        t.count_decision(Verdict::Allowed, Some(tier));
    }
    t.time_batch(2_000);
    many.add_tally(Transport::Binary, &mut t);
    let names: Vec<(u16, String)> = (0..20).map(|i| (i, format!("t{i}"))).collect();
    let mut out = String::new();
    many.render_tiers(&mut out, &names);
    for i in 0..20 {
        assert!(
            out.contains(&format!("{{tier=\"t{i}\",decision=\"allowed\"}} 1")),
            "{out}"
        );
    }
    assert!(
        lines
            .iter()
            .any(|l| l
                == "quotad_checks_total{transport=\"binary\",tier=\"t2\",decision=\"allowed\"} 3"),
        "{lines:?}"
    );
}
