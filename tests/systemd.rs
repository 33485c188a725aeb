//! The shipped unit file passes `systemd-analyze verify` (with ExecStart pointed at the binary
//! built for the tests, since verify checks that the command exists).

use std::path::Path;
use std::process::Command;

fn systemd_analyze() -> String {
    if Path::new("/usr/bin/systemd-analyze").exists() {
        return "/usr/bin/systemd-analyze".into();
    }
    let st = Command::new("sh")
        .args([
            "-c",
            "apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq systemd",
        ])
        .status()
        .expect("run apt-get");
    assert!(
        st.success(),
        "systemd-analyze is missing and could not be installed"
    );
    "/usr/bin/systemd-analyze".into()
}

#[test]
fn the_unit_file_verifies_and_declares_what_operations_rely_on() {
    let unit = std::fs::read_to_string(
        Path::new(env!("CARGO_MANIFEST_DIR")).join("systemd/quotad.service"),
    )
    .unwrap();
    for needle in [
        "Type=notify",
        "StateDirectory=quotad",
        "ExecReload=/bin/kill -HUP $MAINPID",
        "NoNewPrivileges=yes",
        "ProtectSystem=strict",
        "ProtectHome=yes",
        "PrivateTmp=yes",
        "PrivateDevices=yes",
        "RestrictAddressFamilies=AF_INET AF_INET6 AF_UNIX",
        "MemoryDenyWriteExecute=yes",
        "SystemCallFilter=@system-service",
        "LimitNOFILE=",
        "WatchdogSec=",
        "User=quotad",
    ] {
        assert!(unit.contains(needle), "unit lacks {needle}");
    }
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("quotad.service");
    std::fs::write(
        &path,
        unit.replace("/usr/local/bin/quotad", env!("CARGO_BIN_EXE_quotad")),
    )
    .unwrap();
    let out = Command::new(systemd_analyze())
        .arg("verify")
        .arg(&path)
        .output()
        .unwrap();
    assert!(
        out.status.success() && out.stderr.is_empty(),
        "systemd-analyze verify: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}
