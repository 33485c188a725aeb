//! `quotad inspect DATA_DIR` and `quotad repair DATA_DIR`: the data directory's checks, offline.
//!
//! Exit codes: 0 the directory starts as it is (`repair`: nothing to do, or done); 1 start-up
//! refuses (the findings say why; `repair` without `--accept-loss` changed nothing); 3 the
//! directory is in use by a running quotad (nothing was read).

use std::path::{Path, PathBuf};

use anyhow::bail;
use serde_json::{json, Value};

use crate::engine::clock::{Clock, QuantaClock};
use crate::store::local::{self, DataDirError, Finding, InspectReport, Modes};
use crate::store::StoreError;

/// An exit code chosen by the command, its message already printed.
#[derive(Debug)]
pub struct Exit(pub i32);

impl std::fmt::Display for Exit {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "exit {}", self.0)
    }
}

impl std::error::Error for Exit {}

fn finding_json(f: &Finding) -> Value {
    json!({
        "file": f.file.display().to_string(),
        "slot": f.slot,
        "key": f.key.map(|k| k.to_string()),
        "problem": f.problem,
        "automatic": f.is_automatic(),
        "loss": f.loss,
    })
}

fn report_json(dir: &Path, r: &InspectReport, verdict: &str) -> Value {
    json!({
        "verdict": verdict,
        "dataDir": dir.display().to_string(),
        "formatVersion": r.format_version,
        "keys": r.keys,
        "tiers": r.tiers,
        "segments": r.segments,
        "findings": r.findings.iter().map(finding_json).collect::<Vec<_>>(),
        "newestWrite": r.newest_write.and_then(crate::server::admin::rfc3339),
    })
}

fn print_findings(findings: &[Finding]) {
    for f in findings {
        if f.is_automatic() {
            println!("  repaired at start: {f}");
        } else {
            println!("  REFUSES START:     {f}");
            if let Some(l) = &f.loss {
                println!("      recovery loses: {l}");
            }
        }
    }
}

/// A store error as the commands report it: the exit code and JSON verdict.
fn failed(dir: &Path, e: &StoreError, json_out: bool) -> anyhow::Error {
    let (verdict, code, msg) = match e {
        StoreError::DataDir(DataDirError::Locked { .. }) => (
            "in_use",
            3,
            format!(
                "{}: in use by a running quotad; stop it first (its own checks ran at its start)",
                dir.display()
            ),
        ),
        other => (
            "damaged",
            1,
            format!("{other}\n  no repair can mend this: restore the file from a backup"),
        ),
    };
    if json_out {
        let v = json!({"verdict": verdict, "dataDir": dir.display().to_string(), "error": e.to_string()});
        println!("{}", serde_json::to_string_pretty(&v).unwrap_or_default());
    } else {
        println!("data directory  {}", dir.display());
        println!(
            "verdict         {}",
            verdict.to_uppercase().replace('_', " ")
        );
    }
    eprintln!("quotad: error: {msg}");
    anyhow::Error::new(Exit(code))
}

fn require_catalog(dir: &Path) -> anyhow::Result<()> {
    if !dir.join(local::catalog_file::CATALOG_FILE).exists() {
        bail!(
            "{}: not a quotad data directory (no catalog.json)",
            dir.display()
        );
    }
    Ok(())
}

/// `quotad inspect DATA_DIR`: checks every file as start-up would; changes nothing.
pub fn inspect(dir: PathBuf, json_out: bool) -> anyhow::Result<()> {
    require_catalog(&dir)?;
    let now = QuantaClock::new().now_ns();
    let r = match local::inspect(&dir, now) {
        Ok(r) => r,
        Err(e) => return Err(failed(&dir, &e, json_out)),
    };
    let verdict = if r.starts() { "ok" } else { "damaged" };
    if json_out {
        println!(
            "{}",
            serde_json::to_string_pretty(&report_json(&dir, &r, verdict))?
        );
    } else {
        println!("data directory  {}", dir.display());
        println!("format version  {}", r.format_version);
        println!("keys            {}", r.keys);
        println!("tiers           {}", r.tiers);
        println!("segment files   {}", r.segments);
        let newest = r.newest_write.and_then(crate::server::admin::rfc3339);
        println!("newest msync    {}", newest.as_deref().unwrap_or("-"));
        println!("findings        {}", r.findings.len());
        print_findings(&r.findings);
        println!("verdict         {}", verdict.to_uppercase());
    }
    if let Some(first) = r.findings.iter().find(|f| !f.is_automatic()) {
        eprintln!(
            "quotad: error: {first}\n  start-up refuses this directory; `quotad repair {}` \
             shows what each recovery loses",
            dir.display()
        );
        return Err(anyhow::Error::new(Exit(1)));
    }
    Ok(())
}

/// `quotad repair DATA_DIR [--accept-loss]`.
pub fn repair(dir: PathBuf, accept_loss: bool, json_out: bool) -> anyhow::Result<()> {
    require_catalog(&dir)?;
    let now = QuantaClock::new().now_ns();
    let r = match local::repair(&dir, now, accept_loss, Modes::PRIVATE) {
        Ok(r) => r,
        Err(e) => return Err(failed(&dir, &e, json_out)),
    };
    let lossy = !r.starts();
    let verdict = match (r.findings.is_empty(), accept_loss, lossy) {
        (true, _, _) => "nothing_to_repair",
        (false, true, _) => "repaired",
        (false, false, true) => "loss_not_accepted",
        (false, false, false) => "repaired_at_next_start",
    };
    if json_out {
        println!(
            "{}",
            serde_json::to_string_pretty(&report_json(&dir, &r, verdict))?
        );
    } else {
        println!("data directory  {}", dir.display());
        println!("findings        {}", r.findings.len());
        print_findings(&r.findings);
        println!(
            "verdict         {}",
            verdict.to_uppercase().replace('_', " ")
        );
    }
    if lossy && !accept_loss {
        eprintln!(
            "quotad: error: nothing changed; run `quotad repair {} --accept-loss` to apply \
             every recovery above and lose what each says",
            dir.display()
        );
        return Err(anyhow::Error::new(Exit(1)));
    }
    Ok(())
}
