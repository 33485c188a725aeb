//! `quotad serve --busy-poll-us`: checks are answered as usual while the workers poll, and an
//! idle daemon stops polling (it costs no CPU once the window has passed).

mod common;

use std::time::{Duration, Instant};

use common::Daemon;
use quotad::protocol::client::{Check, Client};

/// User + system CPU time of a process so far.
fn cpu_time(pid: i32) -> Duration {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap();
    // Fields after the command name (which is in parentheses and may hold spaces).
    let rest = &stat[stat.rfind(')').unwrap() + 2..];
    let f: Vec<&str> = rest.split_whitespace().collect();
    let ticks: u64 = f[11].parse::<u64>().unwrap() + f[12].parse::<u64>().unwrap();
    // SAFETY: sysconf has no preconditions.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) } as u64;
    Duration::from_millis(ticks * 1000 / hz)
}

/// The share of one core the process used over the next `wall`.
fn cpu_share(pid: i32, wall: Duration) -> f64 {
    let (c0, t0) = (cpu_time(pid), Instant::now());
    std::thread::sleep(wall);
    (cpu_time(pid) - c0).as_secs_f64() / t0.elapsed().as_secs_f64()
}

/// `n` checks of `key` over a new binary connection, each admitted.
fn checks(rt: &tokio::runtime::Runtime, d: &Daemon, key: &str, n: usize) {
    rt.block_on(async {
        let client = Client::connect_tcp(d.binary).await.unwrap();
        for _ in 0..n {
            let c = Check {
                key,
                scope: None,
                cost: 1,
            };
            assert_eq!(client.check(c).await.unwrap().code(), "allowed");
        }
    });
}

#[test]
fn busy_polling_answers_checks_and_sleeps_when_idle() {
    let dir = tempfile::tempdir().unwrap();
    // A 300 ms window, long enough to see the polling from outside.
    let d = Daemon::start(dir.path(), &["--threads", "1", "--busy-poll-us", "300000"]);
    assert!(d.log_text().contains("busy polling on"), "{}", d.log_text());
    let (_, key) = d
        .client()
        .create_key(serde_json::json!({"consumer": "c", "tier": "enterprise"}));
    let rt = common::runtime();
    for round in 0..2 {
        checks(&rt, &d, &key, 200);
        // Just after the requests the worker polls: it burns CPU for the window.
        let busy = cpu_share(d.pid(), Duration::from_millis(200));
        assert!(
            busy >= 0.3,
            "round {round}: polling after requests: {busy:.2} of a core"
        );
        // Once the window is over it sleeps in epoll like any idle daemon, until the next request.
        std::thread::sleep(Duration::from_millis(400));
        let idle = cpu_share(d.pid(), Duration::from_millis(1000));
        assert!(idle <= 0.1, "round {round}: idle: {idle:.2} of a core");
    }
    assert_eq!(d.stop(), 0, "clean shutdown with the pollers running");
}
