//! Operator commands: `quotad keys …`, `quotad tiers …`, `quotad usage ID`, all through the admin
//! API, and `quotad inspect DATA_DIR` (offline, daemon stopped).
//!
//! Exit codes: 0 success, 1 a failed operation (message on stderr says what and why), 2 a usage
//! error (clap's own).

use std::path::PathBuf;

use anyhow::{anyhow, bail, Context};
use clap::{Args, Subcommand};
use serde_json::{json, Value};

use super::admin_client::{resolve_token, AdminClient};

/// Where the admin API is and how to print.
#[derive(Debug, Clone, Args)]
pub struct AdminArgs {
    /// Admin API base URL.
    #[arg(
        long,
        env = "QUOTAD_ADMIN_URL",
        default_value = "http://127.0.0.1:8686",
        global = true
    )]
    pub admin_url: String,
    /// Admin token (else QUOTAD_ADMIN_TOKEN, else DATA_DIR/admin.token).
    #[arg(long, global = true)]
    pub token: Option<String>,
    /// Data directory holding admin.token.
    #[arg(
        long,
        env = "QUOTAD_DATA_DIR",
        default_value = "./quotad-data",
        global = true
    )]
    pub data_dir: PathBuf,
    /// Print JSON instead of tables.
    #[arg(long, global = true)]
    pub json: bool,
}

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
    /// Give a key a new secret; usage is kept.
    Rotate {
        /// Key id.
        id: String,
        /// How long the old secret keeps working (e.g. 10m); default 0.
        #[arg(long)]
        grace: Option<String>,
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

fn duration_secs(s: &str) -> anyhow::Result<u64> {
    crate::tiers::parse_period(s)
        .ok_or_else(|| anyhow!("{s:?} is not a duration (e.g. 30s, 10m, 12h, 30d)"))
}

/// An RFC 3339 time, or now + a duration.
fn expiry(s: &str) -> anyhow::Result<String> {
    if crate::server::admin::parse_rfc3339(s).is_ok() {
        return Ok(s.to_string());
    }
    let secs = duration_secs(s)
        .map_err(|_| anyhow!("--expires {s:?}: give an RFC 3339 time or a duration such as 30d"))?;
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)?
        .as_secs();
    crate::server::admin::rfc3339(now + secs).ok_or_else(|| anyhow!("--expires {s:?} is too far"))
}

fn parse_limit(s: &str) -> anyhow::Result<Value> {
    let (r, p) = s
        .split_once('/')
        .ok_or_else(|| anyhow!("--limit {s:?}: use REQUESTS/PERIOD, e.g. 60/1m"))?;
    let requests: u64 = r
        .trim()
        .parse()
        .map_err(|_| anyhow!("--limit {s:?}: {r:?} is not a number"))?;
    let period = duration_secs(p).map_err(|_| anyhow!("--limit {s:?}: {p:?} is not a period"))?;
    Ok(json!({"requests": requests, "periodSeconds": period}))
}

struct Ctx {
    client: AdminClient,
    json: bool,
}

impl Ctx {
    async fn call(&self, method: &str, path: &str, body: Option<Value>) -> anyhow::Result<Value> {
        let (status, v) = self
            .client
            .request(method, path, body)
            .await
            .with_context(|| format!("{method} /admin/v1{path}"))?;
        if !(200..300).contains(&status) {
            let msg = v["error"]["message"].as_str().unwrap_or("no message");
            let code = v["error"]["code"].as_str().unwrap_or("error");
            bail!("{method} /admin/v1{path}: HTTP {status} {code}: {msg}");
        }
        Ok(v)
    }

    fn print(&self, v: &Value, human: impl FnOnce(&Value)) {
        if self.json {
            println!("{}", serde_json::to_string_pretty(v).unwrap_or_default());
        } else {
            human(v);
        }
    }
}

fn s(v: &Value) -> String {
    match v {
        Value::Null => "-".into(),
        Value::String(s) => s.clone(),
        Value::Array(a) if a.is_empty() => "(all)".into(),
        Value::Array(a) => a.iter().map(s).collect::<Vec<_>>().join(","),
        other => other.to_string(),
    }
}

fn table(headers: &[&str], rows: &[Vec<String>]) {
    let mut w: Vec<usize> = headers.iter().map(|h| h.len()).collect();
    for r in rows {
        for (i, c) in r.iter().enumerate() {
            w[i] = w[i].max(c.len());
        }
    }
    let line = |cells: Vec<String>| {
        let out: Vec<String> = cells
            .iter()
            .enumerate()
            .map(|(i, c)| format!("{c:<width$}", width = w[i]))
            .collect();
        println!("{}", out.join("  ").trim_end());
    };
    line(headers.iter().map(|h| h.to_string()).collect());
    for r in rows {
        line(r.clone());
    }
}

fn print_key(k: &Value) {
    let fields = [
        ("id", &k["id"]),
        ("prefix", &k["prefix"]),
        ("consumer", &k["consumer"]),
        ("tier", &k["tier"]),
        ("scopes", &k["scopes"]),
        ("expires", &k["expiresAt"]),
        ("monthly quota", &k["monthlyQuota"]),
        ("name", &k["name"]),
        ("created", &k["createdAt"]),
        ("revoked", &k["revoked"]),
    ];
    for (n, v) in fields {
        println!("{n:<14} {}", s(v));
    }
    if let Some(t) = k.get("previousKeyValidUntil") {
        println!("{:<14} {}", "old key until", s(t));
    }
    if k["usage"].is_object() {
        print_usage(&k["usage"]);
    }
}

fn print_usage(u: &Value) {
    println!(
        "{:<14} {} of {}",
        "this month",
        s(&u["monthlyUsed"]),
        if u["monthlyQuota"].is_null() {
            "unlimited".into()
        } else {
            s(&u["monthlyQuota"])
        }
    );
    println!("{:<14} {}", "last used", s(&u["lastUsedAt"]));
    let rows: Vec<Vec<String>> = u["limits"]
        .as_array()
        .map(|a| {
            a.iter()
                .map(|l| {
                    vec![
                        format!("{}/{}s", s(&l["requests"]), s(&l["periodSeconds"])),
                        s(&l["remaining"]),
                        s(&l["reset"]),
                    ]
                })
                .collect()
        })
        .unwrap_or_default();
    table(&["LIMIT", "REMAINING", "RESET"], &rows);
}

fn tier_row(t: &Value) -> Vec<String> {
    let limits = t["limits"]
        .as_array()
        .map(|a| {
            a.iter()
                .map(|l| format!("{}/{}s", s(&l["requests"]), s(&l["periodSeconds"])))
                .collect::<Vec<_>>()
                .join(" ")
        })
        .unwrap_or_default();
    let scopes = if t["scopes"].is_null() {
        "(all)".into()
    } else {
        s(&t["scopes"])
    };
    let quota = if t["monthlyQuota"].is_null() {
        "unlimited".into()
    } else {
        s(&t["monthlyQuota"])
    };
    vec![s(&t["name"]), limits, quota, scopes]
}

fn print_raw_key(k: &Value) {
    print_key(k);
    println!();
    println!("API key (shown only now; quotad keeps only its hash):");
    println!("{}", s(&k["key"]));
}

fn ctx(a: &AdminArgs) -> anyhow::Result<Ctx> {
    let token = resolve_token(a.token.as_deref(), &a.data_dir)?;
    Ok(Ctx {
        client: AdminClient::new(&a.admin_url, token)?,
        json: a.json,
    })
}

fn block_on<T>(f: impl std::future::Future<Output = anyhow::Result<T>>) -> anyhow::Result<T> {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?
        .block_on(f)
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
                        json!(q
                            .parse::<u64>()
                            .map_err(|_| anyhow!("--monthly-quota {q:?}: a number, or `tier`"))?)
                    };
                }
                if let Some(n) = name {
                    body["name"] = if n.is_empty() { Value::Null } else { json!(n) };
                }
                if body.as_object().is_some_and(|o| o.is_empty()) {
                    bail!("nothing to update: give --tier, --scope, --clear-scopes, --expires, --monthly-quota or --name");
                }
                let v = c.call("PATCH", &format!("/keys/{id}"), Some(body)).await?;
                c.print(&v, print_key);
            }
        }
        Ok(())
    })
}

fn urlencode(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
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

/// Runs `quotad tiers …`.
pub fn tiers(cmd: TiersCmd, a: &AdminArgs) -> anyhow::Result<()> {
    let c = ctx(a)?;
    block_on(async move {
        let headers = ["NAME", "LIMITS", "MONTHLY", "SCOPES"];
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
                for r in &running {
                    if !wanted.iter().any(|w| w.name == r.name) {
                        changes.push(json!({"tier": r.name, "change": "delete", "from": r}));
                    }
                }
                let applied = if dry_run || changes.is_empty() {
                    false
                } else {
                    c.call("PUT", "/tiers", Some(json!({"tiers": wanted})))
                        .await?;
                    true
                };
                let v = json!({"changes": changes, "applied": applied, "dryRun": dry_run});
                c.print(&v, |v| {
                    let ch = v["changes"].as_array().cloned().unwrap_or_default();
                    if ch.is_empty() {
                        println!("no changes: the running tiers match {}", file.display());
                    }
                    for x in &ch {
                        let line = |t: &Value| tier_row(t)[1..].join("  ");
                        match x["change"].as_str() {
                            Some("add") => println!("+ {}  {}", s(&x["tier"]), line(&x["to"])),
                            Some("delete") => println!("- {}  {}", s(&x["tier"]), line(&x["from"])),
                            _ => println!(
                                "~ {}  {}  ->  {}",
                                s(&x["tier"]),
                                line(&x["from"]),
                                line(&x["to"])
                            ),
                        }
                    }
                    if dry_run {
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

/// Runs `quotad inspect DATA_DIR`: checks every file with the daemon stopped; changes nothing.
pub fn inspect(dir: PathBuf, json_out: bool) -> anyhow::Result<()> {
    if !dir
        .join(crate::store::local::catalog_file::CATALOG_FILE)
        .exists()
    {
        bail!(
            "{}: not a quotad data directory (no catalog.json)",
            dir.display()
        );
    }
    let report = crate::store::local::inspect(&dir);
    let (ok, v) = match report {
        Ok(r) => (
            true,
            json!({
                "verdict": "ok",
                "dataDir": dir.display().to_string(),
                "formatVersion": r.format_version,
                "keys": r.keys,
                "tiers": r.tiers,
                "segments": r.segments,
                "tornWritesToRepair": r.torn_writes,
                "newestWrite": r.newest_write.and_then(crate::server::admin::rfc3339),
            }),
        ),
        Err(e) => (
            false,
            json!({"verdict": "damaged", "dataDir": dir.display().to_string(), "error": e.to_string()}),
        ),
    };
    if json_out {
        println!("{}", serde_json::to_string_pretty(&v)?);
    } else if ok {
        println!("data directory  {}", s(&v["dataDir"]));
        println!("format version  {}", s(&v["formatVersion"]));
        println!("checksums       all valid");
        println!("keys            {}", s(&v["keys"]));
        println!("tiers           {}", s(&v["tiers"]));
        println!("segment files   {}", s(&v["segments"]));
        println!(
            "torn writes     {} (repaired at the next start)",
            s(&v["tornWritesToRepair"])
        );
        println!("newest msync    {}", s(&v["newestWrite"]));
        println!("verdict         OK");
    }
    if !ok {
        if !json_out {
            println!("verdict         DAMAGED");
        }
        bail!("{}", s(&v["error"]));
    }
    Ok(())
}
