//! `quotad keys …` and `quotad usage ID`: key administration through the admin API.

use clap::Subcommand;
use serde_json::{json, Value};

use super::ops::*;

/// `quotad keys …`
#[derive(Debug, Subcommand)]
pub enum KeysCmd {
    /// Create a key; its raw value is printed once.
    Create {
        /// Who the key belongs to.
        #[arg(long)]
        consumer: String,
        /// Tier name.
        #[arg(long)]
        tier: String,
        /// A scope the key grants (repeatable; none = unrestricted).
        #[arg(long = "scope")]
        scopes: Vec<String>,
        /// Expiry: RFC 3339 time, or a duration from now (30d, 12h).
        #[arg(long)]
        expires: Option<String>,
        /// Monthly quota overriding the tier's.
        #[arg(long)]
        monthly_quota: Option<u64>,
        /// A label.
        #[arg(long)]
        name: Option<String>,
        /// Raw-key prefix (default qd_).
        #[arg(long)]
        prefix: Option<String>,
    },
    /// List keys.
    List {
        /// Only this consumer's keys.
        #[arg(long)]
        consumer: Option<String>,
        /// Only keys on this tier.
        #[arg(long)]
        tier: Option<String>,
    },
    /// One key with its live usage.
    Show {
        /// Key id (key_…).
        id: String,
    },
    /// Revoke a key: its next check is 401.
    Revoke {
        /// Key id.
        id: String,
    },
    /// Delete a key: its next check is 401, it is listed nowhere, its usage is gone.
    Delete {
        /// Key id.
        id: String,
    },
    /// Give a key a new secret; usage is kept.
    Rotate {
        /// Key id.
        id: String,
        /// How long the old secret keeps working (e.g. 10m); default 0.
        #[arg(long)]
        grace: Option<String>,
    },
    /// Import existing keys from a JSON-lines file (one POST /admin/v1/keys/import body a
    /// line: `key` or `keyHash` + `prefix`, `consumer`, `tier`, …); reports each line. Exit 1
    /// if any line failed (the others are imported).
    Import {
        /// The file (`-` for standard input).
        file: std::path::PathBuf,
    },
    /// Set a key's counters back (both by default): burst windows to full, month's usage to 0.
    Reset {
        /// Key id.
        id: String,
        /// Only the burst windows.
        #[arg(long, conflicts_with = "monthly_only")]
        burst_only: bool,
        /// Only the month's usage.
        #[arg(long)]
        monthly_only: bool,
    },
    /// Change a key.
    Update {
        /// Key id.
        id: String,
        /// New tier.
        #[arg(long)]
        tier: Option<String>,
        /// New scopes (repeatable; replaces the list).
        #[arg(long = "scope")]
        scopes: Vec<String>,
        /// Make the key unrestricted (no scopes).
        #[arg(long, conflicts_with = "scopes")]
        clear_scopes: bool,
        /// New expiry (RFC 3339 or duration from now), or `never`.
        #[arg(long)]
        expires: Option<String>,
        /// New monthly quota override, or `tier` to use the tier's.
        #[arg(long)]
        monthly_quota: Option<String>,
        /// New name, or an empty string to clear it.
        #[arg(long)]
        name: Option<String>,
    },
}

/// Runs `quotad keys …`.
pub fn keys(cmd: KeysCmd, a: &AdminArgs) -> anyhow::Result<()> {
    let c = ctx(a)?;
    block_on(async move {
        match cmd {
            KeysCmd::Create {
                consumer,
                tier,
                scopes,
                expires,
                monthly_quota,
                name,
                prefix,
            } => {
                let mut body = json!({"consumer": consumer, "tier": tier, "scopes": scopes});
                if let Some(e) = expires {
                    body["expiresAt"] = json!(expiry(&e)?);
                }
                if let Some(q) = monthly_quota {
                    body["monthlyQuota"] = json!(q);
                }
                if let Some(n) = name {
                    body["name"] = json!(n);
                }
                if let Some(p) = prefix {
                    body["prefix"] = json!(p);
                }
                let v = c.call("POST", "/keys", Some(body)).await?;
                c.print(&v, print_raw_key);
            }
            KeysCmd::List { consumer, tier } => {
                let mut all = Vec::new();
                let mut cursor: Option<String> = None;
                loop {
                    let mut q = vec!["limit=1000".to_string()];
                    if let Some(x) = &consumer {
                        q.push(format!("consumer={}", urlencode(x)));
                    }
                    if let Some(x) = &tier {
                        q.push(format!("tier={}", urlencode(x)));
                    }
                    if let Some(x) = &cursor {
                        q.push(format!("cursor={x}"));
                    }
                    let v = c
                        .call("GET", &format!("/keys?{}", q.join("&")), None)
                        .await?;
                    all.extend(v["keys"].as_array().cloned().unwrap_or_default());
                    match v["nextCursor"].as_str() {
                        Some(n) => cursor = Some(n.to_string()),
                        None => break,
                    }
                }
                let v = json!({"keys": all});
                c.print(&v, |v| {
                    let rows: Vec<Vec<String>> = v["keys"]
                        .as_array()
                        .map(|a| {
                            a.iter()
                                .map(|k| {
                                    vec![
                                        s(&k["id"]),
                                        s(&k["prefix"]),
                                        s(&k["consumer"]),
                                        s(&k["tier"]),
                                        s(&k["scopes"]),
                                        if k["revoked"] == true {
                                            "revoked".into()
                                        } else {
                                            "live".into()
                                        },
                                        s(&k["name"]),
                                    ]
                                })
                                .collect()
                        })
                        .unwrap_or_default();
                    table(
                        &[
                            "ID", "PREFIX", "CONSUMER", "TIER", "SCOPES", "STATE", "NAME",
                        ],
                        &rows,
                    );
                });
            }
            KeysCmd::Show { id } => {
                let v = c.call("GET", &format!("/keys/{id}"), None).await?;
                c.print(&v, print_key);
            }
            KeysCmd::Revoke { id } => {
                let v = c.call("POST", &format!("/keys/{id}/revoke"), None).await?;
                c.print(&v, |v| println!("revoked {}", s(&v["id"])));
            }
            KeysCmd::Delete { id } => {
                let v = c.call("DELETE", &format!("/keys/{id}"), None).await?;
                c.print(&v, |v| println!("deleted {}", s(&v["id"])));
            }
            KeysCmd::Rotate { id, grace } => {
                let grace = grace
                    .as_deref()
                    .map(duration_secs)
                    .transpose()?
                    .unwrap_or(0);
                let v = c
                    .call(
                        "POST",
                        &format!("/keys/{id}/rotate"),
                        Some(json!({"graceSeconds": grace})),
                    )
                    .await?;
                c.print(&v, print_raw_key);
            }
            KeysCmd::Import { file } => {
                let text = if file.as_os_str() == "-" {
                    std::io::read_to_string(std::io::stdin())
                } else {
                    std::fs::read_to_string(&file)
                }
                .map_err(|e| anyhow::anyhow!("cannot read {}: {e}", file.display()))?;
                let mut report = Vec::new();
                for (n, line) in text.lines().enumerate() {
                    if line.trim().is_empty() {
                        continue;
                    }
                    let outcome = match serde_json::from_str::<Value>(line) {
                        Err(e) => Err(format!("not JSON: {e}")),
                        Ok(body) => c
                            .call("POST", "/keys/import", Some(body))
                            .await
                            .map_err(|e| format!("{e:#}")),
                    };
                    report.push(match outcome {
                        Ok(k) => json!({"line": n + 1, "id": k["id"], "prefix": k["prefix"]}),
                        Err(e) => json!({"line": n + 1, "error": e}),
                    });
                }
                let failed = report.iter().filter(|r| r.get("error").is_some()).count();
                let v =
                    json!({"imported": report.len() - failed, "failed": failed, "lines": report});
                c.print(&v, |v| {
                    for r in v["lines"].as_array().into_iter().flatten() {
                        match r.get("error") {
                            Some(e) => println!("line {}: failed: {}", r["line"], s(e)),
                            None => println!(
                                "line {}: imported {} ({})",
                                r["line"],
                                s(&r["id"]),
                                s(&r["prefix"])
                            ),
                        }
                    }
                    println!("{} imported, {} failed", v["imported"], v["failed"]);
                });
                if failed > 0 {
                    anyhow::bail!("{failed} line(s) of {} failed", file.display());
                }
            }
            KeysCmd::Reset {
                id,
                burst_only,
                monthly_only,
            } => {
                let body = reset_body(burst_only, monthly_only);
                let v = c
                    .call("POST", &format!("/keys/{id}/reset"), Some(body))
                    .await?;
                c.print(&v, print_key);
            }
            KeysCmd::Update {
                id,
                tier,
                scopes,
                clear_scopes,
                expires,
                monthly_quota,
                name,
            } => {
                let mut body = json!({});
                if let Some(t) = tier {
                    body["tier"] = json!(t);
                }
                if clear_scopes {
                    body["scopes"] = json!([]);
                } else if !scopes.is_empty() {
                    body["scopes"] = json!(scopes);
                }
                if let Some(e) = expires {
                    body["expiresAt"] = if e == "never" {
                        Value::Null
                    } else {
                        json!(expiry(&e)?)
                    };
                }
                if let Some(q) = monthly_quota {
                    body["monthlyQuota"] = if q == "tier" {
                        Value::Null
                    } else {
                        json!(q.parse::<u64>().map_err(|_| usage_error(format!(
                            "--monthly-quota {q:?}: a number, or `tier`"
                        )))?)
                    };
                }
                if let Some(n) = name {
                    body["name"] = if n.is_empty() { Value::Null } else { json!(n) };
                }
                if body.as_object().is_some_and(|o| o.is_empty()) {
                    return Err(usage_error("nothing to update: give --tier, --scope, --clear-scopes, --expires, --monthly-quota or --name"));
                }
                let v = c.call("PATCH", &format!("/keys/{id}"), Some(body)).await?;
                c.print(&v, print_key);
            }
        }
        Ok(())
    })
}

/// Runs `quotad usage ID`.
pub fn usage(id: String, a: &AdminArgs) -> anyhow::Result<()> {
    let c = ctx(a)?;
    block_on(async move {
        let v = c.call("GET", &format!("/keys/{id}"), None).await?;
        let u = json!({"id": v["id"], "usage": v["usage"]});
        c.print(&u, |u| {
            println!("{:<14} {}", "id", s(&u["id"]));
            print_usage(&u["usage"]);
        });
        Ok(())
    })
}
