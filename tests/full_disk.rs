//! A full disk is an error where space is asked for, never SIGBUS: on a size-limited tmpfs the
//! test mounts itself, existing keys keep being checked, creation answers 507 and leaves nothing
//! behind, start-up on a full disk exits with a message, and once space is freed everything works
//! with no count lost. Skipped, with the reason printed, where mounting is not permitted.

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;

use common::Daemon;
use reqwest::Method;
use serde_json::json;

/// A tmpfs mounted for the test, unmounted on drop.
struct Mount(PathBuf);

impl Mount {
    fn tmpfs(at: &Path, size: &str) -> Result<Mount, String> {
        std::fs::create_dir_all(at).map_err(|e| e.to_string())?;
        let out = Command::new("mount")
            .args([
                "-t",
                "tmpfs",
                "-o",
                &format!("size={size},mode=0755"),
                "tmpfs",
            ])
            .arg(at)
            .output()
            .map_err(|e| format!("cannot run mount: {e}"))?;
        if !out.status.success() {
            return Err(String::from_utf8_lossy(&out.stderr).trim().to_string());
        }
        Ok(Mount(at.to_path_buf()))
    }
}

impl Drop for Mount {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg("-l").arg(&self.0).status();
    }
}

/// Writes `path` until the filesystem is full.
fn fill(path: &Path) {
    use std::io::Write;
    let mut f = std::fs::File::create(path).unwrap();
    let block = vec![0xa5u8; 64 * 1024];
    loop {
        match f.write(&block) {
            Ok(0) => break,
            Ok(_) => {}
            Err(e) if e.raw_os_error() == Some(libc::ENOSPC) => break,
            Err(e) => panic!("filling: {e}"),
        }
    }
    // Whatever is left below one block.
    while f.write(&[0u8; 512]).is_ok_and(|n| n > 0) {}
    let _ = f.sync_all();
}

fn strays(dir: &Path) -> Vec<String> {
    std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n.ends_with(".tmp"))
        .collect()
}

#[test]
fn a_full_disk_is_a_clean_error_and_loses_no_count() {
    let tmp = tempfile::tempdir().unwrap();
    let mnt = tmp.path().join("mnt");
    let _mount = match Mount::tmpfs(&mnt, "48m") {
        Ok(m) => m,
        Err(why) => {
            eprintln!("SKIPPED: cannot mount a tmpfs here ({why}); the full-disk test needs root");
            return;
        }
    };
    let data = mnt.join("data");
    let filler = mnt.join("filler");
    let d = Daemon::start(&data, &[]);
    let c = d.client();

    // Full before the first key: its segments cannot be allocated.
    fill(&filler);
    let r = c.admin(
        Method::POST,
        "/keys",
        Some(json!({"consumer": "c", "tier": "pro"})),
    );
    assert_eq!(r.status, 507, "{}", r.text);
    assert_eq!(r.code(), "insufficient_storage", "{}", r.text);
    assert!(r.body["error"]["requestId"].is_string());
    assert!(strays(&data).is_empty(), "left behind: {:?}", strays(&data));
    assert!(d.log_text().contains("no space left"), "{}", d.log_text());

    // Space freed: the key is created and used.
    std::fs::remove_file(&filler).unwrap();
    let (id, raw) = c.create_key(json!({"consumer": "c", "tier": "pro"}));
    let mut counted = 0u64;
    for _ in 0..10 {
        assert_eq!(c.check(Some(&raw), &[]).status, 200);
        counted += 1;
    }

    // Full again: checks go on, changes that need space answer 507, the process lives.
    fill(&filler);
    for _ in 0..20 {
        assert_eq!(c.check(Some(&raw), &[]).status, 200);
        counted += 1;
    }
    let r = c.admin(
        Method::POST,
        "/keys",
        Some(json!({"consumer": "c", "tier": "pro", "scopes": ["new:scope"]})),
    );
    assert_eq!(
        r.status, 507,
        "a new scope rewrites catalog.json: {}",
        r.text
    );
    let r = c.admin(
        Method::PUT,
        "/tiers/gold",
        Some(json!({"limits": [{"requests": 10, "periodSeconds": 60}]})),
    );
    assert_eq!(r.status, 507, "{}", r.text);
    assert!(strays(&data).is_empty(), "left behind: {:?}", strays(&data));
    let r = c.admin(Method::GET, &format!("/keys/{id}"), None);
    assert_eq!(r.body["usage"]["monthlyUsed"], counted);

    // A restart on the full disk: the segments are allocated, so it starts.
    assert_eq!(d.stop(), 0);
    let d = Daemon::start(&data, &[]);
    let c = d.client();
    assert_eq!(c.check(Some(&raw), &[]).status, 200);
    counted += 1;

    // A new data directory on the full disk: start-up exits with a message, no signal.
    let fresh = mnt.join("fresh");
    let (status, err) = common::serve_until_exit(
        &fresh,
        &[(
            "QUOTAD_ADMIN_TOKEN",
            "full-disk-test-token-0123456789abcdef",
        )],
    );
    assert_eq!(status.code(), Some(1), "exit by signal? {status:?}: {err}");
    assert!(err.to_lowercase().contains("no space left"), "{err}");
    if fresh.exists() {
        assert!(
            strays(&fresh).is_empty(),
            "left behind: {:?}",
            strays(&fresh)
        );
    }

    // Space freed: creation works again, and no count was lost.
    std::fs::remove_file(&filler).unwrap();
    let (id2, raw2) =
        c.create_key(json!({"consumer": "c", "tier": "pro", "scopes": ["new:scope"]}));
    assert_eq!(
        c.check(Some(&raw2), &[("X-Quota-Scope", "new:scope")])
            .status,
        200
    );
    let r = c.admin(Method::GET, &format!("/keys/{id}"), None);
    assert_eq!(r.body["usage"]["monthlyUsed"], counted);
    let r = c.admin(Method::GET, &format!("/keys/{id2}"), None);
    assert_eq!(r.body["usage"]["monthlyUsed"], 1);
    assert_eq!(d.stop(), 0);
}
