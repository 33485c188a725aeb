//! `quotad tiers …`: tier administration through the admin API.

use std::path::PathBuf;

use anyhow::{bail, Context};
use clap::Subcommand;
use serde_json::{json, Value};

use super::ops::*;

/// `quotad tiers …`
#[derive(Debug, Subcommand)]
pub enum TiersCmd {
    /// Tiers in force.
    List,
    /// One tier.
    Show {
        /// Tier name.
        name: String,
    },
    /// Create or change a tier (in force from the next check).
    Set {
        /// Tier name.
        name: String,
        /// A limit as REQUESTS/PERIOD, e.g. 60/1m, 1000/1h (repeatable, at least one).
        #[arg(long = "limit", required = true)]
        limits: Vec<String>,
        /// Requests per calendar month (absent: unlimited).
        #[arg(long)]
        monthly_quota: Option<u64>,
        /// A scope the plan includes (repeatable; none: every scope).
        #[arg(long = "scope")]
        scopes: Vec<String>,
        /// Shadow mode (`enforce: false`): what the limits or quota would deny is allowed,
        /// marked and counted. Without it the tier is enforced.
        #[arg(long)]
        shadow: bool,
        /// `consumer`: every key of one consumer spends one set of counters (the default,
        /// `key`: each key its own). Changes only on a tier no key uses.
        #[arg(long, value_parser = ["key", "consumer"])]
        count_by: Option<String>,
    },
    /// Delete a tier no key uses.
    Delete {
        /// Tier name.
        name: String,
    },
    /// Make the running tiers those of a TOML file: shows the difference, then applies it.
    Apply {
        /// The tiers file.
        file: PathBuf,
        /// Show the difference only.
        #[arg(long)]
        dry_run: bool,
    },
}

/// Runs `quotad tiers …`.
pub fn tiers(cmd: TiersCmd, a: &AdminArgs) -> anyhow::Result<()> {
    let c = ctx(a)?;
    block_on(async move {
        let headers = ["NAME", "LIMITS", "MONTHLY", "SCOPES", "MODE", "COUNT BY"];
        match cmd {
            TiersCmd::List => {
                let v = c.call("GET", "/tiers", None).await?;
                c.print(&v, |v| {
                    let rows: Vec<Vec<String>> = v["tiers"]
                        .as_array()
                        .map(|a| a.iter().map(tier_row).collect())
                        .unwrap_or_default();
                    table(&headers, &rows);
                });
            }
            TiersCmd::Show { name } => {
                let v = c
                    .call("GET", &format!("/tiers/{}", urlencode(&name)), None)
                    .await?;
                c.print(&v, |v| table(&headers, &[tier_row(v)]));
            }
            TiersCmd::Set {
                name,
                limits,
                monthly_quota,
                scopes,
                shadow,
                count_by,
            } => {
                let limits = limits
                    .iter()
                    .map(|l| parse_limit(l))
                    .collect::<anyhow::Result<Vec<_>>>()?;
                let mut body = json!({"limits": limits});
                if let Some(q) = monthly_quota {
                    body["monthlyQuota"] = json!(q);
                }
                if !scopes.is_empty() {
                    body["scopes"] = json!(scopes);
                }
                if shadow {
                    body["enforce"] = json!(false);
                }
                if let Some(b) = count_by {
                    body["countBy"] = json!(b);
                }
                let v = c
                    .call("PUT", &format!("/tiers/{}", urlencode(&name)), Some(body))
                    .await?;
                c.print(&v, |v| table(&headers, &[tier_row(v)]));
            }
            TiersCmd::Delete { name } => {
                let v = c
                    .call("DELETE", &format!("/tiers/{}", urlencode(&name)), None)
                    .await?;
                c.print(&v, |_| println!("deleted tier {name}"));
            }
            TiersCmd::Apply { file, dry_run } => {
                let wanted = crate::tiers::load_tiers_file(&file)?;
                let running = c.call("GET", "/tiers", None).await?;
                let running: Vec<crate::tiers::TierSpec> =
                    serde_json::from_value(running["tiers"].clone())
                        .context("cannot read the running tiers")?;
                let mut changes = Vec::new();
                for w in &wanted {
                    match running.iter().find(|r| r.name == w.name) {
                        None => changes.push(json!({"tier": w.name, "change": "add", "to": w})),
                        Some(r) if r != w => changes
                            .push(json!({"tier": w.name, "change": "change", "from": r, "to": w})),
                        Some(_) => {}
                    }
                }
                // A tier left out is deleted, which the daemon refuses (409) while keys use it: the
                // dry run says so, and the apply is not attempted.
                let mut blocked = Vec::new();
                for r in &running {
                    if !wanted.iter().any(|w| w.name == r.name) {
                        let page = c
                            .call(
                                "GET",
                                &format!("/keys?tier={}&limit=1", urlencode(&r.name)),
                                None,
                            )
                            .await?;
                        let in_use = page["keys"].as_array().is_some_and(|k| !k.is_empty());
                        if in_use {
                            blocked.push(r.name.clone());
                        }
                        changes.push(
                            json!({"tier": r.name, "change": "delete", "from": r, "inUse": in_use}),
                        );
                    }
                }
                let refusal = (!blocked.is_empty()).then(|| {
                    format!(
                        "the apply would fail: keys still use tier(s) {} (move them to another \
                         tier first, or keep the tier in {})",
                        blocked.join(", "),
                        file.display()
                    )
                });
                if let (Some(why), false) = (&refusal, dry_run) {
                    bail!("{why}; nothing applied");
                }
                let applied = if dry_run || changes.is_empty() {
                    false
                } else {
                    c.call("PUT", "/tiers", Some(json!({"tiers": wanted})))
                        .await?;
                    true
                };
                let v = json!({"changes": changes, "applied": applied, "dryRun": dry_run,
                    "wouldFail": refusal});
                c.print(&v, |v| {
                    let ch = v["changes"].as_array().cloned().unwrap_or_default();
                    if ch.is_empty() {
                        println!("no changes: the running tiers match {}", file.display());
                    }
                    for x in &ch {
                        let line = |t: &Value| tier_row(t)[1..].join("  ");
                        match x["change"].as_str() {
                            Some("add") => println!("+ {}  {}", s(&x["tier"]), line(&x["to"])),
                            Some("delete") => println!(
                                "- {}  {}{}",
                                s(&x["tier"]),
                                line(&x["from"]),
                                if x["inUse"] == true {
                                    "  (IN USE by keys)"
                                } else {
                                    ""
                                }
                            ),
                            _ => println!(
                                "~ {}  {}  ->  {}",
                                s(&x["tier"]),
                                line(&x["from"]),
                                line(&x["to"])
                            ),
                        }
                    }
                    if let Some(why) = v["wouldFail"].as_str() {
                        println!("dry run: {why}");
                    } else if dry_run {
                        println!("dry run: nothing applied");
                    } else if applied {
                        println!("applied {} change(s)", ch.len());
                    }
                });
            }
        }
        Ok(())
    })
}
