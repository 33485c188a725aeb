//! quotad on a Redis that wants TLS and a password: one server on a TLS-only port with an ACL
//! user (`rediss://USER:PASSWORD@…`), and a three-master cluster with TLS on its client and bus
//! ports and `requirepass` (`rediss-cluster://:PASSWORD@…`), both with a certificate authority the
//! test makes. The password never appears in a log line; a wrong password or an unknown
//! certificate authority stops start-up at once with a message saying which.

mod common;

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use common::redis::{RedisCluster, RedisServer};
use common::{assert_no_secrets_logged, remember_secret, serve_until_exit, Daemon};
use serde_json::json;

const PASSWORD: &str = "s3cret-Redis-pw";

/// A certificate authority and a server certificate for 127.0.0.1 signed by it, as PEM files.
struct Pki {
    _dir: tempfile::TempDir,
    ca: PathBuf,
    cert: PathBuf,
    key: PathBuf,
}

fn pki() -> Pki {
    use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, KeyPair};
    let dir = tempfile::tempdir().unwrap();
    let mut ca_params = CertificateParams::new(Vec::<String>::new()).unwrap();
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca_params
        .distinguished_name
        .push(DnType::CommonName, "quotad test CA");
    let ca_key = KeyPair::generate().unwrap();
    let ca = ca_params.self_signed(&ca_key).unwrap();
    let params = CertificateParams::new(vec!["127.0.0.1".into(), "localhost".into()]).unwrap();
    let key = KeyPair::generate().unwrap();
    let cert = params.signed_by(&key, &ca, &ca_key).unwrap();
    let write = |name: &str, text: String| {
        let p = dir.path().join(name);
        std::fs::write(&p, text).unwrap();
        p
    };
    Pki {
        ca: write("ca.pem", ca.pem()),
        cert: write("redis.pem", cert.pem()),
        key: write("redis.key", key.serialize_pem()),
        _dir: dir,
    }
}

fn strings(a: &[&str]) -> Vec<String> {
    a.iter().map(|s| s.to_string()).collect()
}

fn path(p: &Path) -> String {
    p.to_str().unwrap().to_string()
}

/// redis-server options for TLS with `pki`'s certificate (no client certificates asked for).
fn tls_options(pki: &Pki) -> Vec<String> {
    let mut o = strings(&["--tls-cert-file"]);
    o.push(path(&pki.cert));
    o.push("--tls-key-file".into());
    o.push(path(&pki.key));
    o.push("--tls-ca-cert-file".into());
    o.push(path(&pki.ca));
    o.extend(strings(&["--tls-auth-clients", "no"]));
    o
}

fn tls_cli(pki: &Pki) -> Vec<String> {
    vec!["--tls".into(), "--cacert".into(), path(&pki.ca)]
}

/// A quotad on `store`, trusting `pki`'s authority.
fn node(store: &str, pki: &Pki, extra: &[&str]) -> (Daemon, tempfile::TempDir) {
    let dir = tempfile::tempdir().unwrap();
    let ca = path(&pki.ca);
    let mut args = vec![
        "--store",
        store,
        "--redis-ca",
        &ca,
        "--redis-poll-ms",
        "100",
    ];
    args.extend_from_slice(extra);
    (Daemon::start(&dir.path().join("d"), &args), dir)
}

/// Creates a tier and `n` keys through `d`; checks each key twice over HTTP and asserts the
/// second check was counted after the first (the counter lives in Redis).
fn keys_are_counted(d: &Daemon, n: usize) {
    let c = d.client();
    let r = c.admin(
        reqwest::Method::PUT,
        "/tiers/tls",
        Some(json!({"limits": [{"requests": 50, "periodSeconds": 60}], "monthlyQuota": 1000})),
    );
    assert_eq!(r.status, 200, "{}", r.text);
    for i in 0..n {
        let (_, raw) = c.create_key(json!({"consumer": format!("c{i}"), "tier": "tls"}));
        let first = c.check(Some(&raw), &[]);
        assert_eq!(first.status, 200, "{}", first.text);
        let second = c.check(Some(&raw), &[]);
        assert_eq!(second.status, 200, "{}", second.text);
        assert_eq!(
            second.header_u64("x-ratelimit-remaining") + 1,
            first.header_u64("x-ratelimit-remaining"),
            "the second check was counted"
        );
    }
}

/// Runs `quotad serve` on `store` expecting it to refuse: its stderr, and how long it took.
fn refused(store: &str, ca: Option<&Path>) -> (String, Duration) {
    let dir = tempfile::tempdir().unwrap();
    let ca = ca.map(path).unwrap_or_default();
    let mut env = vec![("QUOTAD_STORE", store)];
    if !ca.is_empty() {
        env.push(("QUOTAD_REDIS_CA", ca.as_str()));
    }
    let started = Instant::now();
    let (status, err) = serve_until_exit(&dir.path().join("d"), &env);
    assert_eq!(status.code(), Some(1), "{err}");
    assert!(!err.contains(PASSWORD), "the password was printed: {err}");
    (err, started.elapsed())
}

#[test]
fn one_tls_server_with_an_acl_user() {
    remember_secret(PASSWORD);
    let pki = pki();
    let mut options = tls_options(&pki);
    options.extend(strings(&[
        "--user", "default", "off", "--user", "quotad", "on",
    ]));
    options.push(format!(">{PASSWORD}"));
    options.extend(strings(&["~*", "&*", "+@all"]));
    let mut cli = tls_cli(&pki);
    cli.extend(strings(&[
        "--user",
        "quotad",
        "--pass",
        PASSWORD,
        "--no-auth-warning",
    ]));
    let server = RedisServer::start_secure(&options, &cli, true);

    let store = format!("rediss://quotad:{PASSWORD}@127.0.0.1:{}", server.port);
    let (d, _dir) = node(&store, &pki, &[]);
    keys_are_counted(&d, 3);
    assert!(
        server.cli(&["DBSIZE"]).trim().parse::<u64>().unwrap() > 0,
        "the keys are in Redis"
    );
    let logs = d.log_text();
    assert!(
        logs.contains("rediss://quotad:***@127.0.0.1"),
        "the store is named without its password: {logs}"
    );
    d.stop();

    // A wrong password: refused at once, saying so, the password not printed.
    let (err, took) = refused(
        &format!("rediss://quotad:wrong@127.0.0.1:{}", server.port),
        Some(&pki.ca),
    );
    assert!(err.contains("authentication"), "{err}");
    assert!(
        took < Duration::from_secs(10),
        "not retried for long: {took:?}"
    );
    // The system's roots do not know the test's authority: refused at once, saying why.
    let (err, took) = refused(&store, None);
    assert!(err.contains("certificate"), "{err}");
    assert!(
        took < Duration::from_secs(10),
        "not retried for long: {took:?}"
    );
    // A CA file for a plain URL is a mistake, not ignored.
    let (err, _) = refused(&format!("redis://127.0.0.1:{}", server.port), Some(&pki.ca));
    assert!(err.contains("--redis-ca is for TLS"), "{err}");
    // An unreadable CA file names it.
    let (err, _) = refused(&store, Some(Path::new("/nonexistent/ca.pem")));
    assert!(err.contains("/nonexistent/ca.pem"), "{err}");
    assert_no_secrets_logged();
}

#[test]
fn a_tls_cluster_with_a_password() {
    remember_secret(PASSWORD);
    let pki = pki();
    let mut options = tls_options(&pki);
    options.extend(strings(&[
        "--tls-cluster",
        "yes",
        "--tls-replication",
        "yes",
    ]));
    options.extend(strings(&[
        "--requirepass",
        PASSWORD,
        "--masterauth",
        PASSWORD,
    ]));
    let mut cli = tls_cli(&pki);
    cli.extend(strings(&["-a", PASSWORD, "--no-auth-warning"]));
    let cluster = RedisCluster::start_secure(&options, &cli, true, 0);

    // Two of the three masters given: the third is found through them, and reached with the
    // same password and authority.
    let store = format!(
        "rediss-cluster://:{PASSWORD}@127.0.0.1:{},127.0.0.1:{}",
        cluster.nodes[0].port, cluster.nodes[1].port
    );
    let (d, _dir) = node(&store, &pki, &["--redis-replica-acks", "0"]);
    keys_are_counted(&d, 12);
    let health = d.client().get("/health");
    assert_eq!(
        health.body["persistence"]["store"], "redis-cluster",
        "{}",
        health.text
    );
    for (i, n) in cluster.nodes.iter().enumerate() {
        let keys: u64 = n.cli(&["DBSIZE"]).trim().parse().unwrap();
        assert!(keys > 0, "master {i} holds some of the keys");
    }
    d.stop();
    let (err, took) = refused(
        &format!(
            "rediss-cluster://:wrong@127.0.0.1:{}",
            cluster.nodes[0].port
        ),
        Some(&pki.ca),
    );
    assert!(err.contains("authentication"), "{err}");
    assert!(
        took < Duration::from_secs(10),
        "not retried for long: {took:?}"
    );
    assert_no_secrets_logged();
}
