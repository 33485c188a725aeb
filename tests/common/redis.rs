//! Real Redis for tests, from the Debian `redis-server` package (`.ci/test` installs it): one
//! server, or a Redis Cluster of three masters and three replicas made with
//! `redis-cli --cluster create`, all on 127.0.0.1 ports chosen free, each in a temporary
//! directory, and every process stopped on drop.

#![allow(dead_code)]

use std::net::TcpListener;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::{Mutex, MutexGuard};
use std::time::{Duration, Instant};

/// Held while this test process starts a child (`spawn` returns once the child has exec'd). A
/// forked child holds copies of the parent's descriptors until it execs, the data directory's
/// lock among them: a test that opens a data directory in-process takes this first, so it never
/// meets a lock held by a half-started redis-server or redis-cli.
static SPAWN: Mutex<()> = Mutex::new(());

/// Blocks children from being started until the guard is dropped.
pub fn no_spawns() -> MutexGuard<'static, ()> {
    SPAWN.lock().unwrap_or_else(|e| e.into_inner())
}

/// A port free now, whose cluster-bus port (+10000) is free too.
pub fn free_port() -> u16 {
    loop {
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        let p = l.local_addr().unwrap().port();
        if p < 55_000 && TcpListener::bind(("127.0.0.1", p + 10_000)).is_ok() {
            return p;
        }
    }
}

fn redis_cli(port: u16, flags: &[String], args: &[&str]) -> String {
    let mut cmd = Command::new("redis-cli");
    cmd.args(["-h", "127.0.0.1", "-p", &port.to_string()])
        .args(flags)
        .args(args);
    String::from_utf8_lossy(&run(cmd).stdout).into_owned()
}

/// Runs a redis-cli command to completion, holding [`no_spawns`] only while it starts.
fn run(cmd: Command) -> std::process::Output {
    run_with_input(cmd, None)
}

/// [`run`], with `input` written to the command's standard input (commands, one per line).
fn run_with_input(mut cmd: Command, input: Option<&str>) -> std::process::Output {
    use std::io::Write;
    let mut child = {
        let _g = no_spawns();
        if input.is_some() {
            cmd.stdin(Stdio::piped());
        }
        cmd.stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("redis-cli (Debian package redis-tools) must be installed: see .ci/test")
    };
    if let (Some(text), Some(mut stdin)) = (input, child.stdin.take()) {
        stdin
            .write_all(text.as_bytes())
            .expect("write to redis-cli");
    }
    child.wait_with_output().expect("wait for redis-cli")
}

/// One `redis-server` process.
pub struct RedisServer {
    child: Option<Child>,
    pub port: u16,
    /// Server options beyond the defaults (TLS, passwords, cluster mode), kept for a restart.
    extra: Vec<String>,
    /// What redis-cli needs to reach it (`--tls --cacert …`, `--user … --pass …`).
    cli_flags: Vec<String>,
    _dir: tempfile::TempDir,
}

impl RedisServer {
    /// A standalone server.
    pub fn start() -> RedisServer {
        Self::start_with(&[])
    }

    fn start_with(extra: &[&str]) -> RedisServer {
        let extra: Vec<String> = extra.iter().map(|s| s.to_string()).collect();
        Self::start_secure(&extra, &[], false)
    }

    /// A server started with `extra` options, reached by redis-cli with `cli_flags`; with `tls`,
    /// `port` is its TLS port and it has no plain one.
    pub fn start_secure(extra: &[String], cli_flags: &[String], tls: bool) -> RedisServer {
        let dir = tempfile::tempdir().unwrap();
        for _ in 0..5 {
            let port = free_port();
            let mut extra = extra.to_vec();
            if tls {
                extra.extend(["--port", "0", "--tls-port"].map(String::from));
                extra.push(port.to_string());
            }
            if let Some(s) = Self::spawn(port, dir.path(), &extra, cli_flags) {
                return RedisServer {
                    child: Some(s),
                    port,
                    extra,
                    cli_flags: cli_flags.to_vec(),
                    _dir: dir,
                };
            }
        }
        panic!("could not start redis-server");
    }

    fn spawn(port: u16, dir: &Path, extra: &[String], cli_flags: &[String]) -> Option<Child> {
        let g = no_spawns();
        let mut child = Command::new("redis-server")
            .args(["--port", &port.to_string(), "--bind", "127.0.0.1"])
            .args(["--save", "", "--appendonly", "no", "--protected-mode", "no"])
            .arg("--dir")
            .arg(dir)
            // Later options win, so `extra` may turn the plain port off.
            .args(extra)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("redis-server (Debian package redis-server) must be installed: see .ci/test");
        drop(g);
        let deadline = Instant::now() + Duration::from_secs(5);
        while Instant::now() < deadline {
            if redis_cli(port, cli_flags, &["PING"]).trim() == "PONG" {
                return Some(child);
            }
            if let Ok(Some(_)) = child.try_wait() {
                return None;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = child.kill();
        let _ = child.wait();
        None
    }

    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    /// Stops the server at once (SIGKILL): Redis gone mid-run.
    pub fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Starts it again on the same port (empty: no persistence).
    pub fn restart(&mut self) {
        self.kill();
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            if let Some(c) = Self::spawn(self.port, self._dir.path(), &self.extra, &self.cli_flags)
            {
                self.child = Some(c);
                return;
            }
            assert!(Instant::now() < deadline, "redis-server did not restart");
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(|c| c.id())
    }

    /// Stops the process (SIGSTOP) until [`RedisServer::resume`]: a replica falling behind.
    /// Returns once every thread of it is stopped (a running thread stops a moment after the
    /// signal).
    pub fn pause(&self) {
        self.signal(libc::SIGSTOP);
        let pid = self.pid().expect("server running");
        let deadline = Instant::now() + Duration::from_secs(5);
        loop {
            let stopped = std::fs::read_dir(format!("/proc/{pid}/task"))
                .map(|tasks| {
                    tasks
                        .filter_map(|t| std::fs::read_to_string(t.ok()?.path().join("stat")).ok())
                        .all(|stat| {
                            stat.rsplit_once(") ")
                                .is_some_and(|(_, rest)| rest.starts_with('T'))
                        })
                })
                .unwrap_or(true);
            if stopped {
                return;
            }
            assert!(Instant::now() < deadline, "redis-server did not stop");
            std::thread::sleep(Duration::from_millis(5));
        }
    }

    /// Lets a paused process run again (SIGCONT).
    pub fn resume(&self) {
        self.signal(libc::SIGCONT);
    }

    fn signal(&self, sig: i32) {
        let pid = self.pid().expect("server running") as i32;
        // SAFETY: kill(2) on our own child's pid, which we have not yet waited for.
        assert_eq!(unsafe { libc::kill(pid, sig) }, 0);
    }

    /// A read on this node even when it is a replica (`READONLY` first, in one session).
    pub fn cli_readonly(&self, args: &[&str]) -> String {
        let mut cmd = Command::new("redis-cli");
        cmd.args(["-h", "127.0.0.1", "-p", &self.port.to_string()])
            .args(&self.cli_flags);
        let input = format!("READONLY\n{}\n", args.join(" "));
        String::from_utf8_lossy(&run_with_input(cmd, Some(&input)).stdout).into_owned()
    }

    pub fn cli(&self, args: &[&str]) -> String {
        redis_cli(self.port, &self.cli_flags, args)
    }
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        self.kill();
    }
}

/// Three masters and three replicas (or none).
pub struct RedisCluster {
    pub nodes: Vec<RedisServer>,
}

impl RedisCluster {
    pub fn start() -> RedisCluster {
        Self::start_secure(&[], &[], false, 1)
    }

    /// Three masters with `replicas` replicas each, started with `extra` options and reached
    /// with `cli_flags` (see [`RedisServer::start_secure`]).
    pub fn start_secure(
        extra: &[String],
        cli_flags: &[String],
        tls: bool,
        replicas: usize,
    ) -> RedisCluster {
        let mut options: Vec<String> = [
            "--cluster-enabled",
            "yes",
            "--cluster-config-file",
            "nodes.conf",
            "--cluster-node-timeout",
            "1000",
            "--cluster-replica-validity-factor",
            "0",
            "--repl-diskless-sync-delay",
            "0",
        ]
        .map(String::from)
        .to_vec();
        options.extend_from_slice(extra);
        let nodes: Vec<RedisServer> = (0..3 * (1 + replicas))
            .map(|_| RedisServer::start_secure(&options, cli_flags, tls))
            .collect();
        let addrs: Vec<String> = nodes
            .iter()
            .map(|n| format!("127.0.0.1:{}", n.port))
            .collect();
        let replicas = replicas.to_string();
        let mut args = vec!["--cluster", "create"];
        args.extend(addrs.iter().map(String::as_str));
        args.extend(["--cluster-replicas", &replicas, "--cluster-yes"]);
        let mut cmd = Command::new("redis-cli");
        cmd.args(cli_flags).args(&args);
        let out = run(cmd);
        assert!(
            out.status.success(),
            "redis-cli --cluster create failed: {}",
            String::from_utf8_lossy(&out.stdout)
        );
        let c = RedisCluster { nodes };
        c.wait_ok(Duration::from_secs(20));
        c
    }

    /// Waits until every live node says `cluster_state:ok` and knows three masters, every
    /// master has a replica, and every replica has finished its initial sync (before that a
    /// failover would lose everything).
    pub fn wait_ok(&self, within: Duration) {
        let deadline = Instant::now() + within;
        let masters_only = self.nodes.len() == 3;
        loop {
            let ok = self.nodes.iter().filter(|n| n.child.is_some()).all(|n| {
                let info = n.cli(&["CLUSTER", "INFO"]);
                let repl = n.cli(&["INFO", "replication"]);
                info.contains("cluster_state:ok")
                    && info.contains("cluster_size:3")
                    && ((repl.contains("role:master")
                        && (masters_only || !repl.contains("connected_slaves:0")))
                        || (repl.contains("master_link_status:up")
                            && repl.contains("master_sync_in_progress:0")))
            });
            if ok {
                return;
            }
            assert!(Instant::now() < deadline, "cluster did not become ok");
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// Index of the replica of master `m`.
    pub fn replica_of(&self, m: usize) -> usize {
        let port = format!("master_port:{}", self.nodes[m].port);
        self.nodes
            .iter()
            .position(|n| {
                n.child.is_some() && {
                    let repl = n.cli(&["INFO", "replication"]);
                    repl.contains("role:slave") && repl.lines().any(|l| l.trim() == port)
                }
            })
            .unwrap_or_else(|| panic!("master {m} has no replica"))
    }

    /// Waits until the replica of master `m` has everything `m` has written so far.
    pub fn wait_replicated(&self, m: usize, within: Duration) {
        let field = |text: &str, name: &str| -> u64 {
            text.lines()
                .find_map(|l| l.trim().strip_prefix(name))
                .and_then(|v| v.parse().ok())
                .unwrap_or_else(|| panic!("no {name} in {text}"))
        };
        let r = self.replica_of(m);
        let target = field(
            &self.nodes[m].cli(&["INFO", "replication"]),
            "master_repl_offset:",
        );
        let deadline = Instant::now() + within;
        loop {
            let at = field(
                &self.nodes[r].cli(&["INFO", "replication"]),
                "slave_repl_offset:",
            );
            if at >= target {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "replica {r} still at offset {at} of {target} after {within:?}"
            );
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    /// `redis-cluster://` URL naming every node.
    pub fn url(&self) -> String {
        let addrs: Vec<String> = self
            .nodes
            .iter()
            .map(|n| format!("127.0.0.1:{}", n.port))
            .collect();
        format!("redis-cluster://{}", addrs.join(","))
    }

    /// The hash of one of the keys on node `m` (a key's record and counters).
    pub fn a_key_hash_on(&self, m: usize) -> String {
        self.nodes[m]
            .cli(&["--scan", "--pattern", "quotad:{*}"])
            .lines()
            .find(|k| !k.contains("{meta}") && !k.contains("{g"))
            .expect("a key's hash on the master")
            .to_string()
    }

    /// Moves the slot of `key` from its master to master `to` as the `CLUSTER SETSLOT` manual
    /// orders a reshard: importing/migrating, `MIGRATE` of the slot's keys, then the new owner
    /// on the destination first and the source next (so that the two never redirect to each
    /// other), then every other master; returns once every node sends the slot's commands to
    /// the new owner.
    pub fn move_slot_of(&self, key: &str, to: usize) {
        let (src, dst) = (&self.nodes[self.master_of(key)], &self.nodes[to]);
        assert_ne!(src.port, dst.port, "{key} is on master {to} already");
        let slot = src.cli(&["CLUSTER", "KEYSLOT", key]).trim().to_string();
        let src_id = src.cli(&["CLUSTER", "MYID"]).trim().to_string();
        let dst_id = dst.cli(&["CLUSTER", "MYID"]).trim().to_string();
        let ok = |n: &RedisServer, args: &[&str]| {
            let r = n.cli(args);
            assert!(r.contains("OK"), "{args:?} on {}: {r}", n.port);
        };
        ok(dst, &["CLUSTER", "SETSLOT", &slot, "IMPORTING", &src_id]);
        ok(src, &["CLUSTER", "SETSLOT", &slot, "MIGRATING", &dst_id]);
        let port = dst.port.to_string();
        for k in src
            .cli(&["CLUSTER", "GETKEYSINSLOT", &slot, "1000"])
            .lines()
        {
            ok(src, &["MIGRATE", "127.0.0.1", &port, k, "0", "5000"]);
        }
        let masters = self.nodes.iter().filter(|n| {
            n.child.is_some() && n.cli(&["INFO", "replication"]).contains("role:master")
        });
        let others: Vec<&RedisServer> = masters
            .filter(|m| m.port != dst.port && m.port != src.port)
            .collect();
        for m in [dst, src].into_iter().chain(others) {
            ok(m, &["CLUSTER", "SETSLOT", &slot, "NODE", &dst_id]);
        }
        let redirect = format!("MOVED {slot} 127.0.0.1:{}", dst.port);
        let deadline = Instant::now() + Duration::from_secs(20);
        for n in self
            .nodes
            .iter()
            .filter(|n| n.child.is_some() && n.port != dst.port)
        {
            while !n.cli(&["EXISTS", key]).contains(&redirect) {
                assert!(
                    Instant::now() < deadline,
                    "node {} still sends slot {slot} elsewhere",
                    n.port
                );
                std::thread::sleep(Duration::from_millis(20));
            }
        }
    }

    /// Index of the master serving `key`.
    pub fn master_of(&self, key: &str) -> usize {
        let slot: u16 = self.nodes[0]
            .cli(&["CLUSTER", "KEYSLOT", key])
            .trim()
            .parse()
            .unwrap();
        let nodes = self.nodes[0].cli(&["CLUSTER", "NODES"]);
        for line in nodes.lines() {
            let f: Vec<&str> = line.split_whitespace().collect();
            if f.len() < 9 || !f[2].contains("master") || f[2].contains("fail") {
                continue;
            }
            for range in &f[8..] {
                let (a, b) = range.split_once('-').unwrap_or((range, range));
                let (Ok(a), Ok(b)) = (a.parse::<u16>(), b.parse::<u16>()) else {
                    continue;
                };
                if (a..=b).contains(&slot) {
                    let port: u16 = f[1]
                        .split('@')
                        .next()
                        .and_then(|h| h.rsplit(':').next())
                        .and_then(|p| p.parse().ok())
                        .unwrap();
                    return self.nodes.iter().position(|n| n.port == port).unwrap();
                }
            }
        }
        panic!("no master serves slot {slot}");
    }
}
