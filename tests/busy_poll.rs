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

#[test]
fn busy_polling_answers_checks_and_sleeps_when_idle() {
    let dir = tempfile::tempdir().unwrap();
    // A 300 ms window, long enough to see the polling from outside.
    let d = Daemon::start(dir.path(), &["--threads", "1", "--busy-poll-us", "300000"]);
    assert!(d.log_text().contains("busy polling on"), "{}", d.log_text());
    let (_, key) = d
        .client()
        .create_key(serde_json::json!({"consumer": "c", "tier": "enterprise"}));
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let client = Client::connect_tcp(d.binary).await.unwrap();
        for _ in 0..200 {
            let r = client
                .check(Check {
                    key: &key,
                    scope: None,
                    cost: 1,
                })
                .await
                .unwrap();
            assert_eq!(r.code(), "allowed");
        }
    });
    // Just after the requests the worker polls: it burns CPU for the window.
    let (c0, t0) = (cpu_time(d.pid()), Instant::now());
    std::thread::sleep(Duration::from_millis(200));
    let busy = cpu_time(d.pid()) - c0;
    let busy_wall = t0.elapsed();
    // Long after (window over), it sleeps in epoll like any idle daemon.
    std::thread::sleep(Duration::from_millis(400));
    let (c1, t1) = (cpu_time(d.pid()), Instant::now());
    std::thread::sleep(Duration::from_millis(1000));
    let idle = cpu_time(d.pid()) - c1;
    let idle_wall = t1.elapsed();
    assert!(
        busy.as_secs_f64() >= 0.3 * busy_wall.as_secs_f64(),
        "polling after requests: {busy:?} of CPU in {busy_wall:?}"
    );
    assert!(
        idle.as_secs_f64() <= 0.1 * idle_wall.as_secs_f64(),
        "idle: {idle:?} of CPU in {idle_wall:?}"
    );
    // A new request wakes it and is answered.
    rt.block_on(async {
        let client = Client::connect_tcp(d.binary).await.unwrap();
        let r = client
            .check(Check {
                key: &key,
                scope: None,
                cost: 1,
            })
            .await
            .unwrap();
        assert_eq!(r.code(), "allowed");
    });
    assert_eq!(d.stop(), 0, "clean shutdown with the pollers running");
}
