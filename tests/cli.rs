//! Every operator command against a real daemon: output, `--json`, exit codes, failures.

mod common;

use std::process::{Command, Output};

use common::{bin, Daemon};

fn run(d: &Daemon, args: &[&str]) -> Output {
    common::cli(d, args)
}

fn ok(out: &Output) -> String {
    assert_eq!(
        out.status.code(),
        Some(0),
        "stdout: {}\nstderr: {}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout.clone()).unwrap()
}

fn json(out: &Output) -> serde_json::Value {
    serde_json::from_str(&ok(out)).unwrap()
}

fn fails(out: &Output, code: i32, needle: &str) {
    assert_eq!(
        out.status.code(),
        Some(code),
        "stderr: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains(needle), "stderr lacks {needle:?}: {err}");
}

#[test]
fn keys_commands_create_list_show_update_rotate_revoke() {
    let dir = tempfile::tempdir().unwrap();
    let d = Daemon::start(dir.path(), &[]);
    // Human output: the raw key is printed once, plainly marked.
    let out = ok(&run(
        &d,
        &[
            "keys",
            "create",
            "--consumer",
            "acme",
            "--tier",
            "free",
            "--scope",
            "a:read",
            "--scope",
            "a:write",
            "--expires",
            "30d",
            "--name",
            "ci",
        ],
    ));
    assert!(out.contains("shown only now"), "{out}");
    let raw = out.lines().last().unwrap().trim().to_string();
    assert!(raw.starts_with("qd_"), "{raw}");
    common::remember_secret(&raw);
    let id = out
        .lines()
        .find_map(|l| l.strip_prefix("id"))
        .unwrap()
        .trim()
        .to_string();
    assert_eq!(
        d.client()
            .check(Some(&raw), &[("X-Quota-Scope", "a:write")])
            .status,
        200
    );

    let v = json(&run(
        &d,
        &[
            "keys",
            "create",
            "--consumer",
            "beta",
            "--tier",
            "pro",
            "--monthly-quota",
            "5",
            "--prefix",
            "ak_",
            "--json",
        ],
    ));
    let beta_id = v["id"].as_str().unwrap().to_string();
    let beta_raw = v["key"].as_str().unwrap().to_string();
    common::remember_secret(&beta_raw);
    assert!(beta_raw.starts_with("ak_"));
    assert_eq!(v["monthlyQuota"], 5);

    let list = ok(&run(&d, &["keys", "list"]));
    assert!(list.starts_with("ID"), "{list}");
    assert!(list.contains(&id) && list.contains(&beta_id));
    assert!(!list.contains(&raw), "no raw keys in lists");
    let v = json(&run(&d, &["keys", "list", "--consumer", "beta", "--json"]));
    assert_eq!(v["keys"].as_array().unwrap().len(), 1);
    let v = json(&run(&d, &["keys", "list", "--tier", "free", "--json"]));
    assert_eq!(v["keys"][0]["id"], id.as_str());

    let show = ok(&run(&d, &["keys", "show", &id]));
    assert!(
        show.contains("acme") && show.contains("this month") && show.contains("1 of 10000"),
        "{show}"
    );
    let v = json(&run(&d, &["usage", &id, "--json"]));
    assert_eq!(v["usage"]["monthlyUsed"], 1);
    let usage = ok(&run(&d, &["usage", &id]));
    assert!(usage.contains("REMAINING"), "{usage}");

    let v = json(&run(
        &d,
        &[
            "keys",
            "update",
            &id,
            "--tier",
            "pro",
            "--clear-scopes",
            "--expires",
            "never",
            "--monthly-quota",
            "9",
            "--name",
            "",
            "--json",
        ],
    ));
    assert_eq!(v["tier"], "pro");
    assert_eq!(v["scopes"], serde_json::json!([]));
    assert!(v["expiresAt"].is_null() && v["name"].is_null());
    assert_eq!(v["monthlyQuota"], 9);
    fails(&run(&d, &["keys", "update", &id]), 2, "nothing to update");

    let out = ok(&run(&d, &["keys", "rotate", &id, "--grace", "1h"]));
    let new_raw = out.lines().last().unwrap().trim().to_string();
    common::remember_secret(&new_raw);
    assert_ne!(new_raw, raw);
    assert_eq!(d.client().check(Some(&new_raw), &[]).status, 200);
    assert_eq!(d.client().check(Some(&raw), &[]).status, 200, "grace");

    let out = ok(&run(&d, &["keys", "revoke", &beta_id]));
    assert!(out.contains("revoked"));
    assert_eq!(d.client().check(Some(&beta_raw), &[]).status, 401);

    fails(
        &run(&d, &["keys", "show", "key_00000000000000ff"]),
        1,
        "unknown key id",
    );
    fails(
        &run(&d, &["keys", "revoke", "key_00000000000000ff"]),
        1,
        "404",
    );
    fails(
        &run(&d, &["keys", "create", "--consumer", "x", "--tier", "nope"]),
        1,
        "unknown tier",
    );
    fails(
        &run(
            &d,
            &[
                "keys",
                "create",
                "--consumer",
                "x",
                "--tier",
                "free",
                "--expires",
                "someday",
            ],
        ),
        2,
        "--expires",
    );
    fails(
        &run(&d, &["keys", "create", "--tier", "free"]),
        2,
        "--consumer",
    );
    fails(
        &run(&d, &["keys", "frobnicate"]),
        2,
        "unrecognized subcommand",
    );
}

#[test]
fn tiers_commands_list_show_set_delete_and_apply_with_dry_run() {
    let dir = tempfile::tempdir().unwrap();
    let d = Daemon::start(&dir.path().join("data"), &[]);
    let list = ok(&run(&d, &["tiers", "list"]));
    for t in ["default", "free", "pro", "enterprise"] {
        assert!(list.contains(t), "{list}");
    }
    let v = json(&run(
        &d,
        &[
            "tiers",
            "set",
            "gold",
            "--limit",
            "60/1m",
            "--limit",
            "1000/1h",
            "--monthly-quota",
            "5000",
            "--scope",
            "a:read",
            "--json",
        ],
    ));
    assert_eq!(
        v["limits"],
        serde_json::json!([{"requests": 60, "periodSeconds": 60}, {"requests": 1000, "periodSeconds": 3600}])
    );
    let show = ok(&run(&d, &["tiers", "show", "gold"]));
    assert!(
        show.contains("60/60s 1000/3600s") && show.contains("5000") && show.contains("a:read"),
        "{show}"
    );
    assert!(show.contains("enforced"), "{show}");
    let v = json(&run(
        &d,
        &[
            "tiers", "set", "trial", "--limit", "5/1m", "--shadow", "--json",
        ],
    ));
    assert_eq!(v["enforce"], false, "{v}");
    let show = ok(&run(&d, &["tiers", "show", "trial"]));
    assert!(show.contains("shadow"), "{show}");
    fails(
        &run(&d, &["tiers", "set", "bad", "--limit", "sixty/1m"]),
        2,
        "not a number",
    );
    fails(
        &run(&d, &["tiers", "set", "bad", "--limit", "60/1w"]),
        2,
        "not a period",
    );
    fails(&run(&d, &["tiers", "set", "bad"]), 2, "--limit");
    fails(&run(&d, &["tiers", "show", "nope"]), 1, "unknown tier");

    let c = d.client();
    c.create_key(serde_json::json!({"consumer": "c", "tier": "gold"}));
    fails(&run(&d, &["tiers", "delete", "gold"]), 1, "used by 1 key");
    ok(&run(&d, &["tiers", "delete", "enterprise"]));

    let file = dir.path().join("tiers.toml");
    std::fs::write(
        &file,
        "[tiers.gold]\nlimits = [{ requests = 120, period = \"1m\" }]\n\n[tiers.free]\nlimits = [{ requests = 60, period = \"1m\" }, { requests = 1000, period = \"1h\" }]\nmonthly_quota = 10000\n",
    )
    .unwrap();
    let dry = ok(&run(
        &d,
        &["tiers", "apply", file.to_str().unwrap(), "--dry-run"],
    ));
    assert!(
        dry.contains("~ gold") && dry.contains("- pro") && dry.contains("- default"),
        "{dry}"
    );
    assert!(!dry.contains("free"), "free is unchanged: {dry}");
    assert!(dry.contains("dry run: nothing applied"));
    assert!(
        ok(&run(&d, &["tiers", "list"])).contains("pro"),
        "the dry run changed nothing"
    );
    // A tier left out that keys still use: the dry run says the apply would fail, and why; the
    // apply itself refuses before changing anything.
    let (pro_key, _) = c.create_key(serde_json::json!({"consumer": "c", "tier": "pro"}));
    let dry = ok(&run(
        &d,
        &["tiers", "apply", file.to_str().unwrap(), "--dry-run"],
    ));
    assert!(
        dry.contains("- pro") && dry.contains("IN USE") && dry.contains("would fail"),
        "{dry}"
    );
    fails(
        &run(&d, &["tiers", "apply", file.to_str().unwrap()]),
        1,
        "keys still use tier(s) pro",
    );
    ok(&run(&d, &["keys", "update", &pro_key, "--tier", "gold"]));
    let v = json(&run(
        &d,
        &["tiers", "apply", file.to_str().unwrap(), "--json"],
    ));
    assert_eq!(v["applied"], true);
    let names: Vec<String> = json(&run(&d, &["tiers", "list", "--json"]))["tiers"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t["name"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(names, vec!["free", "gold"]);
    assert!(ok(&run(&d, &["tiers", "apply", file.to_str().unwrap()])).contains("no changes"));
    // A bad tier file is refused and nothing changes.
    std::fs::write(&file, "[tiers.gold]\nlimits = []\n").unwrap();
    fails(
        &run(&d, &["tiers", "apply", file.to_str().unwrap()]),
        1,
        "tiers.toml",
    );
    assert_eq!(
        json(&run(&d, &["tiers", "list", "--json"]))["tiers"]
            .as_array()
            .unwrap()
            .len(),
        2
    );
}

#[test]
fn wrong_token_and_daemon_down_fail_with_exit_1() {
    let dir = tempfile::tempdir().unwrap();
    let d = Daemon::start(dir.path(), &[]);
    let out = Command::new(bin())
        .args([
            "keys",
            "list",
            "--admin-url",
            &format!("http://{}", d.http),
            "--token",
            "wrong",
        ])
        .output()
        .unwrap();
    fails(&out, 1, "401");
    // The token file in the data directory is found on its own.
    let out = Command::new(bin())
        .args([
            "tiers",
            "list",
            "--admin-url",
            &format!("http://{}", d.http),
            "--data-dir",
        ])
        .arg(dir.path())
        .env_remove("QUOTAD_ADMIN_TOKEN")
        .output()
        .unwrap();
    assert!(ok(&out).contains("enterprise"));
    let http = d.http;
    let token = d.token.clone();
    d.stop();
    let out = Command::new(bin())
        .args([
            "tiers",
            "list",
            "--admin-url",
            &format!("http://{http}"),
            "--token",
            &token,
        ])
        .output()
        .unwrap();
    fails(&out, 1, "cannot connect");
}

#[test]
fn inspect_reports_a_healthy_directory_and_refuses_a_damaged_or_busy_one() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let d = Daemon::start(&data, &[]);
    let (_, key) = d
        .client()
        .create_key(serde_json::json!({"consumer": "c", "tier": "free"}));
    d.client().check(Some(&key), &[]);
    // While the daemon runs, the directory is locked: exit 3, "in use", not "damaged".
    let out = Command::new(bin())
        .arg("inspect")
        .arg(&data)
        .output()
        .unwrap();
    fails(&out, 3, "in use by a running quotad");
    assert!(String::from_utf8_lossy(&out.stdout).contains("IN USE"));
    assert_eq!(d.stop(), 0);

    let out = Command::new(bin())
        .arg("inspect")
        .arg(&data)
        .output()
        .unwrap();
    let text = ok(&out);
    assert!(
        text.contains("verdict         OK") && text.contains("keys            1"),
        "{text}"
    );
    let out = Command::new(bin())
        .args(["inspect", "--json"])
        .arg(&data)
        .output()
        .unwrap();
    let v = json(&out);
    assert_eq!(v["verdict"], "ok");
    assert_eq!(v["formatVersion"], 1);
    assert_eq!(v["tiers"], 4);
    assert!(v["newestWrite"].is_string());

    // Damage a record in both copies: DAMAGED, exit 1, the file named; nothing written.
    let p = data.join("keys-00000.qd");
    let mut bytes = std::fs::read(&p).unwrap();
    bytes[4096 + 40] ^= 0xff;
    bytes[4096 + 256 + 40] ^= 0xff;
    std::fs::write(&p, &bytes).unwrap();
    let out = Command::new(bin())
        .arg("inspect")
        .arg(&data)
        .output()
        .unwrap();
    fails(&out, 1, "keys-00000.qd");
    assert!(String::from_utf8_lossy(&out.stdout).contains("DAMAGED"));
    assert_eq!(std::fs::read(&p).unwrap(), bytes);
    let out = Command::new(bin())
        .arg("inspect")
        .arg(dir.path().join("nothing"))
        .output()
        .unwrap();
    fails(&out, 1, "not a quotad data directory");
}

#[test]
fn bad_argument_values_are_usage_errors_with_exit_2() {
    let dir = tempfile::tempdir().unwrap();
    let d = Daemon::start(dir.path(), &[]);
    let cases: [&[&str]; 4] = [
        &["tiers", "set", "gold", "--limit", "5/fortnight"],
        &["tiers", "set", "gold", "--limit", "many/1m"],
        &[
            "keys",
            "create",
            "--consumer",
            "c",
            "--tier",
            "pro",
            "--expires",
            "soon",
        ],
        &[
            "keys",
            "update",
            "key_0000000000000000",
            "--monthly-quota",
            "lots",
        ],
    ];
    for args in cases {
        fails(&run(&d, args), 2, args[args.len() - 1]);
    }
    // Nothing was changed by any of them.
    let v = json(&run(&d, &["tiers", "list", "--json"]));
    assert!(!v.to_string().contains("gold"), "{v}");
}

#[test]
fn keys_delete_removes_a_key_for_good_and_its_slot_is_reused_after_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let d = Daemon::start(&data, &[]);
    let c = d.client();
    let (id, raw) = c.create_key(serde_json::json!({"consumer": "gone", "tier": "free"}));
    let (keep, keep_raw) = c.create_key(serde_json::json!({"consumer": "kept", "tier": "free"}));
    assert_eq!(c.check(Some(&raw), &[]).status, 200);
    let v = json(&run(&d, &["keys", "delete", &id, "--json"]));
    assert_eq!(v, serde_json::json!({"id": id, "deleted": true}));
    assert_eq!(c.check(Some(&raw), &[]).status, 401);
    fails(&run(&d, &["keys", "show", &id]), 1, "unknown key");
    fails(&run(&d, &["keys", "delete", &id]), 1, "unknown key");
    let listed = ok(&run(&d, &["keys", "list"]));
    assert!(!listed.contains(&id) && listed.contains(&keep), "{listed}");
    assert_eq!(d.stop(), 0);

    // After a restart: still gone; the next key takes its slot; the kept key is untouched.
    let d = Daemon::start(&data, &[]);
    let c = d.client();
    assert_eq!(c.check(Some(&raw), &[]).status, 401);
    assert_eq!(c.check(Some(&keep_raw), &[]).status, 200);
    let (new, new_raw) = c.create_key(serde_json::json!({"consumer": "new", "tier": "free"}));
    assert_eq!(&new[new.len() - 8..], &id[id.len() - 8..], "the same slot");
    assert_ne!(new, id);
    assert_eq!(c.check(Some(&new_raw), &[]).status, 200);
    assert_eq!(c.check(Some(&raw), &[]).status, 401);
    let h = c.get("/health");
    assert_eq!(h.body["keys"], 2, "{}", h.text);
    assert_eq!(d.stop(), 0);
    let (code, out, err) = {
        let o = Command::new(bin())
            .arg("inspect")
            .arg(&data)
            .output()
            .unwrap();
        (
            o.status.code(),
            String::from_utf8_lossy(&o.stdout).into_owned(),
            String::from_utf8_lossy(&o.stderr).into_owned(),
        )
    };
    assert_eq!(code, Some(0), "{out}{err}");
}

#[test]
fn global_flags_go_before_or_after_the_subcommand_and_completions_print() {
    let dir = tempfile::tempdir().unwrap();
    let d = Daemon::start(dir.path(), &[]);
    let (id, _) = d
        .client()
        .create_key(serde_json::json!({"consumer": "c", "tier": "free"}));
    let url = format!("http://{}", d.http);
    for args in [
        vec![
            "--json",
            "--token",
            &d.token,
            "--admin-url",
            &url,
            "keys",
            "list",
        ],
        vec![
            "keys",
            "--json",
            "list",
            "--token",
            &d.token,
            "--admin-url",
            &url,
        ],
        vec![
            "keys",
            "list",
            "--json",
            "--token",
            &d.token,
            "--admin-url",
            &url,
        ],
    ] {
        let out = Command::new(bin())
            .args(&args)
            .env_remove("QUOTAD_ADMIN_TOKEN")
            .env_remove("QUOTAD_ADMIN_URL")
            .output()
            .unwrap();
        let v = json(&out);
        assert_eq!(v["keys"][0]["id"], id.as_str(), "{args:?}");
    }
    for (shell, needle) in [
        ("bash", "complete -F"),
        ("zsh", "#compdef quotad"),
        ("fish", "complete -c quotad"),
    ] {
        let out = Command::new(bin())
            .args(["completions", shell])
            .output()
            .unwrap();
        let text = ok(&out);
        assert!(
            text.contains(needle),
            "{shell}: {}",
            &text[..text.len().min(300)]
        );
        assert!(
            text.contains("inspect") && text.contains("repair"),
            "{shell}"
        );
    }
}
