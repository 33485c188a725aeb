//! The data directory never lies, through the real binary and real files: each break of
//! issue #17 (a missing file, a revived key, lowered usage, a defeated lock, modes), and a
//! randomized damage test in which start-up either refuses naming the file or starts with no key
//! more privileged and no usage lower, with `quotad inspect` agreeing every time.

mod common;

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Command;

use common::{bin, flip, patch, Daemon};
use reqwest::Method;
use serde_json::{json, Value};

const HEADER: u64 = 4096;

/// Starts `quotad serve` on `dir` expecting it to refuse: returns its stderr.
fn refused_start(dir: &Path) -> String {
    let (status, err) = common::serve_until_exit(dir, &[]);
    assert_ne!(status.code(), Some(0), "{err}");
    err
}

/// Runs `quotad ARGS…`: (exit code, stdout, stderr).
fn quotad(args: &[&str], dir: &Path) -> (i32, String, String) {
    let out = Command::new(bin()).args(args).arg(dir).output().unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// Offset of the newest half of slot `slot` in a file of `slot_size`-byte double-buffered slots.
fn newest_half(path: &Path, slot: u64, slot_size: u64) -> u64 {
    let bytes = std::fs::read(path).unwrap();
    let at = HEADER + slot * slot_size;
    let seq = |o: u64| u32::from_le_bytes(bytes[o as usize..o as usize + 4].try_into().unwrap());
    let half = slot_size / 2;
    if seq(at + half).wrapping_sub(seq(at)) as i32 > 0 {
        at + half
    } else {
        at
    }
}

fn usage_of(d: &Daemon, id: &str) -> u64 {
    d.client().monthly_used(id)
}

fn use_key(d: &Daemon, raw: &str, n: usize) {
    for _ in 0..n {
        assert_eq!(d.client().check(Some(raw), &[]).status, 200);
    }
}

/// Starts quotad on `data`, creates a key on tier `pro`, checks it `uses` times and stops: the
/// key's id and raw key.
fn key_used(data: &Path, uses: usize) -> (String, String) {
    let d = Daemon::start(data, &[]);
    let (id, raw) = d
        .client()
        .create_key(json!({"consumer": "c", "tier": "pro"}));
    use_key(&d, &raw, uses);
    assert_eq!(d.stop(), 0);
    (id, raw)
}

#[test]
fn a_missing_counters_file_refuses_start_until_the_loss_is_accepted() {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("data");
    let (id, raw) = key_used(&data, 5);
    std::fs::remove_file(data.join("counters-00000.qd")).unwrap();

    let err = refused_start(&data);
    assert!(
        err.contains("counters-00000.qd") && err.contains("missing"),
        "{err}"
    );
    assert!(
        !data.join("counters-00000.qd").exists(),
        "a refused start created the file"
    );
    let (code, out, err) = quotad(&["inspect"], &data);
    assert_eq!(code, 1, "{out}{err}");
    assert!(err.contains("counters-00000.qd"), "{err}");
    let (code, out, _) = quotad(&["repair"], &data);
    assert_eq!(code, 1);
    assert!(out.contains("reads as unused"), "{out}");
    assert!(
        !data.join("counters-00000.qd").exists(),
        "repair changed files unasked"
    );

    let (code, out, err) = quotad(&["repair", "--accept-loss"], &data);
    assert_eq!(code, 0, "{out}{err}");
    let d = Daemon::start(&data, &[]);
    assert_eq!(usage_of(&d, &id), 0, "the accepted loss");
    use_key(&d, &raw, 1);
    assert_eq!(usage_of(&d, &id), 1);
    assert_eq!(d.stop(), 0);
}

#[test]
fn a_revoked_or_rotated_key_never_comes_back() {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("data");
    let d = Daemon::start(&data, &[]);
    let c = d.client();
    let (revoked, revoked_raw) = c.create_key(json!({"consumer": "c", "tier": "pro"}));
    let (rotated, old_raw) = c.create_key(json!({"consumer": "c", "tier": "pro"}));
    assert_eq!(
        c.admin(Method::POST, &format!("/keys/{revoked}/revoke"), None)
            .status,
        200
    );
    let r = c.admin(
        Method::POST,
        &format!("/keys/{rotated}/rotate"),
        Some(json!({"graceSeconds": 0})),
    );
    assert_eq!(r.status, 200, "{}", r.text);
    assert_eq!(c.check(Some(&revoked_raw), &[]).status, 401);
    assert_eq!(c.check(Some(&old_raw), &[]).status, 401);
    assert_eq!(d.stop(), 0);

    let keys = data.join("keys-00000.qd");
    let pristine = std::fs::read(&keys).unwrap();
    for slot in 0..2u64 {
        std::fs::write(&keys, &pristine).unwrap();
        flip(&keys, newest_half(&keys, slot, 512) + 100);
        let err = refused_start(&data);
        assert!(
            err.contains("keys-00000.qd") && err.contains(&format!("slot {slot}:")),
            "{err}"
        );
        let (code, _, err) = quotad(&["inspect"], &data);
        assert_eq!(code, 1, "{err}");
        assert!(err.contains(&format!("slot {slot}:")), "{err}");
        let (code, out, _) = quotad(&["repair", "--json"], &data);
        assert_eq!(code, 1);
        let v: Value = serde_json::from_str(&out).unwrap();
        let f = &v["findings"][0];
        assert_eq!(f["slot"], slot);
        assert_eq!(f["automatic"], false);
        let loss = f["loss"].as_str().unwrap();
        assert!(
            loss.contains("falls back") && loss.contains("live"),
            "{loss}"
        );
    }
    // The operator accepts: the key falls back, as the report said; the other key is untouched.
    let (code, _, _) = quotad(&["repair", "--accept-loss"], &data);
    assert_eq!(code, 0);
    let d = Daemon::start(&data, &[]);
    assert_eq!(d.client().check(Some(&revoked_raw), &[]).status, 401);
    assert_eq!(d.stop(), 0);
}

#[test]
fn lowered_usage_is_refused_naming_file_and_slot() {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("data");
    let d = Daemon::start(&data, &[]);
    let (id, raw) = d
        .client()
        .create_key(json!({"consumer": "c", "tier": "pro"}));
    let (_, raw2) = d
        .client()
        .create_key(json!({"consumer": "c", "tier": "pro"}));
    use_key(&d, &raw, 50);
    use_key(&d, &raw2, 3);
    assert_eq!(d.stop(), 0);
    let counters = data.join("counters-00000.qd");
    let pristine = std::fs::read(&counters).unwrap();
    type Damage = Box<dyn Fn(&Path)>;
    let damages: Vec<(&str, Damage)> = vec![
        ("a zeroed slot", Box::new(|p| patch(p, HEADER, &[0; 128]))),
        ("a zeroed page", Box::new(|p| patch(p, HEADER, &[0; 4096]))),
        (
            "a damaged newest copy",
            Box::new(|p| flip(p, newest_half(p, 0, 128) + 48)),
        ),
    ];
    for (what, damage) in damages {
        std::fs::write(&counters, &pristine).unwrap();
        damage(&counters);
        let err = refused_start(&data);
        assert!(
            err.contains("counters-00000.qd") && err.contains("slot 0:"),
            "{what}: {err}"
        );
        let (code, _, err) = quotad(&["inspect"], &data);
        assert_eq!(code, 1, "{what}: {err}");
    }
    std::fs::write(&counters, &pristine).unwrap();
    let d = Daemon::start(&data, &[]);
    assert_eq!(usage_of(&d, &id), 50);
    assert_eq!(d.stop(), 0);
}

#[test]
fn a_torn_counter_write_of_a_killed_process_is_repaired_with_a_warning() {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("data");
    let d = Daemon::start(&data, &[]);
    let (id, raw) = d
        .client()
        .create_key(json!({"consumer": "c", "tier": "pro"}));
    use_key(&d, &raw, 10);
    d.kill();
    let counters = data.join("counters-00000.qd");
    flip(&counters, newest_half(&counters, 0, 128) + 48);
    let (code, out, err) = quotad(&["inspect"], &data);
    assert_eq!(code, 0, "{out}{err}");
    assert!(out.contains("repaired at start"), "{out}");
    let d = Daemon::start(&data, &[]);
    assert!(
        d.log_text().contains("torn counter write"),
        "{}",
        d.log_text()
    );
    assert_eq!(usage_of(&d, &id), 9, "only the write in progress is lost");
    assert_eq!(d.stop(), 0);
}

#[test]
fn a_second_daemon_is_refused_whatever_was_deleted() {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("data");
    let d = Daemon::start(&data, &[]);
    d.client()
        .create_key(json!({"consumer": "c", "tier": "pro"}));
    // Delete every file that is not data: a lock file, if any, the token.
    for e in std::fs::read_dir(&data).unwrap() {
        let p = e.unwrap().path();
        let name = p.file_name().unwrap().to_string_lossy().into_owned();
        if !name.ends_with(".qd") && name != "catalog.json" && name != "admin.token" {
            std::fs::remove_file(&p).unwrap();
        }
    }
    std::fs::write(data.join("lock"), b"").unwrap();
    std::fs::remove_file(data.join("lock")).unwrap();
    let err = refused_start(&data);
    assert!(err.contains("in use by another quotad"), "{err}");
    let (code, out, err) = quotad(&["inspect"], &data);
    assert_eq!(code, 3, "{out}{err}");
    assert!(out.contains("IN USE"), "{out}");
    assert_eq!(d.stop(), 0);
}

fn mode(p: &Path) -> u32 {
    std::fs::metadata(p).unwrap().permissions().mode() & 0o777
}

#[test]
fn the_directory_is_private_unless_group_read_is_asked_for() {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("data");
    std::fs::create_dir(&data).unwrap();
    std::fs::set_permissions(&data, std::fs::Permissions::from_mode(0o755)).unwrap();
    let d = Daemon::start(&data, &[]);
    d.client()
        .create_key(json!({"consumer": "c", "tier": "pro"}));
    assert_eq!(d.stop(), 0);
    assert_eq!(mode(&data), 0o700);
    let files: Vec<PathBuf> = std::fs::read_dir(&data)
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    assert!(files.len() >= 5, "{files:?}");
    for f in &files {
        assert_eq!(mode(f), 0o600, "{}", f.display());
    }
    let d = Daemon::start(&data, &["--data-group-readable"]);
    assert_eq!(d.stop(), 0);
    assert_eq!(mode(&data), 0o750);
    for f in &files {
        let want = if f.ends_with("admin.token") {
            0o600
        } else {
            0o640
        };
        assert_eq!(mode(f), want, "{}", f.display());
    }
}

// ----- randomized damage -------------------------------------------------------------------------

/// What each key may do before the damage.
struct KeyState {
    id: String,
    raw: String,
    /// Secrets that must stay refused (rotated out).
    dead: Vec<String>,
    revoked: bool,
    used: u64,
    expires_at: Value,
    scopes: Value,
}

fn populate(data: &Path) -> Vec<KeyState> {
    let d = Daemon::start(data, &[]);
    let c = d.client();
    let mut keys = Vec::new();
    for (i, uses) in [5u64, 3, 4, 2, 0, 7].into_iter().enumerate() {
        let mut body = json!({"consumer": format!("c{i}"), "tier": "pro"});
        if i == 3 {
            body["expiresAt"] = json!("2099-01-01T00:00:00Z");
            body["scopes"] = json!(["a:read"]);
        }
        let (id, raw) = c.create_key(body);
        let scope = if i == 3 {
            vec![("X-Quota-Scope", "a:read")]
        } else {
            vec![]
        };
        for _ in 0..uses {
            assert_eq!(c.check(Some(&raw), &scope).status, 200);
        }
        keys.push(KeyState {
            id,
            raw,
            dead: Vec::new(),
            revoked: false,
            used: uses,
            expires_at: Value::Null,
            scopes: json!([]),
        });
    }
    assert_eq!(
        c.admin(Method::POST, &format!("/keys/{}/revoke", keys[1].id), None)
            .status,
        200
    );
    keys[1].revoked = true;
    let r = c.admin(
        Method::POST,
        &format!("/keys/{}/rotate", keys[2].id),
        Some(json!({"graceSeconds": 0})),
    );
    assert_eq!(r.status, 200, "{}", r.text);
    let new = r.body["key"].as_str().unwrap().to_string();
    let old = std::mem::replace(&mut keys[2].raw, new);
    keys[2].dead.push(old);
    let r = c.admin(
        Method::PUT,
        "/tiers/gold",
        Some(json!({"limits": [{"requests": 10, "periodSeconds": 60}]})),
    );
    assert_eq!(r.status, 200, "{}", r.text);
    for k in &mut keys {
        let r = c.admin(Method::GET, &format!("/keys/{}", k.id), None);
        k.expires_at = r.body["expiresAt"].clone();
        k.scopes = r.body["scopes"].clone();
        assert_eq!(r.body["usage"]["monthlyUsed"], k.used);
    }
    assert_eq!(d.stop(), 0);
    keys
}

/// A small deterministic generator (xorshift), so a failing seed can be replayed.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n.max(1)
    }
}

/// Applies one random damage to one file of `data`; returns what it did.
fn damage(data: &Path, rng: &mut Rng) -> String {
    let files = [
        "catalog.json",
        "keys-00000.qd",
        "counters-00000.qd",
        "acks-00000.qd",
    ];
    let name = files[rng.below(files.len() as u64) as usize];
    let p = data.join(name);
    let len = std::fs::metadata(&p).unwrap().len();
    // Where the data is: the header page and the used slots (6 keys), most of the time.
    let used_end = match name {
        "keys-00000.qd" => HEADER + 6 * 512,
        "counters-00000.qd" => HEADER + 6 * 128,
        "acks-00000.qd" => HEADER + 6 * 8,
        _ => len,
    };
    let offset = |rng: &mut Rng| {
        if rng.below(4) == 0 {
            rng.below(len)
        } else {
            rng.below(used_end)
        }
    };
    match rng.below(10) {
        0 => {
            let to = rng.below(len);
            std::fs::OpenOptions::new()
                .write(true)
                .open(&p)
                .unwrap()
                .set_len(to)
                .unwrap();
            format!("{name}: truncated to {to}")
        }
        1 | 2 => {
            let page = offset(rng) / 4096 * 4096;
            let n = 4096.min(len - page) as usize;
            patch(&p, page, &vec![0; n]);
            format!("{name}: page at {page} zeroed")
        }
        _ => {
            let at = offset(rng);
            let b = std::fs::read(&p).unwrap()[at as usize];
            let x = 1 + rng.below(255) as u8;
            patch(&p, at, &[b ^ x]);
            format!("{name}: byte {at} ^= {x:#x}")
        }
    }
}

/// After a start on a damaged directory: no key more privileged, no usage lower.
fn assert_no_key_gained(d: &Daemon, keys: &[KeyState], what: &str) {
    let c = d.client();
    for k in keys {
        let r = c.admin(Method::GET, &format!("/keys/{}", k.id), None);
        if r.status == 404 {
            continue; // gone is not more privileged; its checks are 401 below
        }
        assert_eq!(r.status, 200, "{what}: {}", r.text);
        let used = r.body["usage"]["monthlyUsed"].as_u64().unwrap();
        assert!(
            used >= k.used,
            "{what}: key {} usage {} < {}",
            k.id,
            used,
            k.used
        );
        assert_eq!(r.body["expiresAt"], k.expires_at, "{what}: key {}", k.id);
        assert_eq!(r.body["scopes"], k.scopes, "{what}: key {}", k.id);
        if k.revoked {
            assert_eq!(r.body["revoked"], true, "{what}: key {} revived", k.id);
        }
    }
    for k in keys {
        let scope = if k.scopes == json!(["a:read"]) {
            vec![("X-Quota-Scope", "a:read")]
        } else {
            vec![]
        };
        if k.revoked {
            assert_eq!(c.check(Some(&k.raw), &scope).status, 401, "{what}: revived");
        }
        for dead in &k.dead {
            assert_eq!(
                c.check(Some(dead), &scope).status,
                401,
                "{what}: old secret"
            );
        }
    }
}

#[test]
fn random_damage_is_refused_or_harmless_and_inspect_agrees() {
    let tmp = tempfile::tempdir().unwrap();
    let pristine = tmp.path().join("pristine");
    let keys = populate(&pristine);
    let seeds: u64 = std::env::var("QUOTAD_DAMAGE_SEEDS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(60);
    let (mut refused, mut started) = (0, 0);
    for seed in 1..=seeds {
        let data = tmp.path().join(format!("seed-{seed}"));
        std::fs::create_dir(&data).unwrap();
        for e in std::fs::read_dir(&pristine).unwrap() {
            let p = e.unwrap().path();
            std::fs::copy(&p, data.join(p.file_name().unwrap())).unwrap();
        }
        let mut rng = Rng(seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1);
        let what = format!("seed {seed}: {}", damage(&data, &mut rng));
        let (inspect_code, out, err) = quotad(&["inspect"], &data);
        assert!(inspect_code == 0 || inspect_code == 1, "{what}: {out}{err}");
        if inspect_code == 1 {
            let err = refused_start(&data);
            let file = what.split(':').nth(1).unwrap().trim();
            assert!(
                err.contains(&*data.to_string_lossy()) && err.contains(file),
                "{what}: the refusal must name the file: {err}"
            );
            refused += 1;
        } else {
            let d = Daemon::start(&data, &[]);
            assert_no_key_gained(&d, &keys, &what);
            assert_eq!(d.stop(), 0, "{what}");
            started += 1;
        }
        std::fs::remove_dir_all(&data).unwrap();
    }
    eprintln!("{seeds} damages: {refused} refused, {started} started");
    assert!(
        refused > 0 && started > 0,
        "the damages must cover both outcomes"
    );
}

#[test]
fn a_counters_file_replaced_by_an_older_copy_is_refused() {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("data");
    let (id, raw) = key_used(&data, 5);
    let counters = data.join("counters-00000.qd");
    let old = std::fs::read(&counters).unwrap();
    let d = Daemon::start(&data, &[]);
    use_key(&d, &raw, 5);
    assert_eq!(d.stop(), 0);
    std::fs::write(&counters, &old).unwrap();

    let err = refused_start(&data);
    assert!(
        err.contains("counters-00000.qd") && err.contains("older copy"),
        "{err}"
    );
    let (code, _, err) = quotad(&["inspect"], &data);
    assert_eq!(code, 1, "{err}");
    let (code, out, _) = quotad(&["repair", "--accept-loss"], &data);
    assert_eq!(code, 0, "{out}");
    let d = Daemon::start(&data, &[]);
    assert_eq!(usage_of(&d, &id), 5, "the accepted loss: the copy's usage");
    assert_eq!(d.stop(), 0);
}

#[test]
fn an_acks_file_replaced_by_an_older_copy_is_refused() {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("data");
    let (_, raw) = key_used(&data, 2);
    let acks = data.join("acks-00000.qd");
    let old = std::fs::read(&acks).unwrap();
    // Two more runs: each stop stamps a newer counters generation; a key is created meanwhile.
    for _ in 0..2 {
        let d = Daemon::start(&data, &[]);
        d.client()
            .create_key(json!({"consumer": "later", "tier": "pro"}));
        use_key(&d, &raw, 1);
        assert_eq!(d.stop(), 0);
    }
    std::fs::write(&acks, &old).unwrap();
    let err = refused_start(&data);
    assert!(
        err.contains("acks-00000.qd") && err.contains("older copy"),
        "{err}"
    );
    let (code, _, err) = quotad(&["inspect"], &data);
    assert_eq!(code, 1, "{err}");
}
