//! What the operator commands share: where the admin API is ([`AdminArgs`]), the client context,
//! the table and key printers. The
//! commands themselves: `keys_cmd` (`quotad keys …`, `quotad usage ID`) and `tiers_cmd`
//! (`quotad tiers …`), all through the admin API.
//!
//! Exit codes: 0 success, 1 a failed operation (message on stderr says what and why), 2 a usage
//! error (clap's own, or a bad value such as `--limit 5/x` or `--expires soon`).

use std::path::PathBuf;

use anyhow::{anyhow, bail, Context};
use clap::Args;
use serde_json::{json, Value};

use super::admin_client::{resolve_token, AdminClient};

/// Where the admin API is and how to print. `--admin-url`, `--token` and `--json` are global
/// flags ([`super::GlobalArgs`], accepted before or after the subcommand) copied in here.
#[derive(Debug, Clone, Args)]
pub struct AdminArgs {
    /// Admin API base URL (from the global `--admin-url`).
    #[arg(skip)]
    pub admin_url: String,
    /// Admin token (from the global `--token`).
    #[arg(skip)]
    pub token: Option<String>,
    /// Data directory holding admin.token.
    #[arg(
        long,
        env = "QUOTAD_DATA_DIR",
        default_value = "./quotad-data",
        global = true
    )]
    pub data_dir: PathBuf,
    /// Print JSON (from the global `--json`).
    #[arg(skip)]
    pub json: bool,
    /// A CA file to trust for https:// (from the global `--admin-ca`).
    #[arg(skip)]
    pub admin_ca: Option<PathBuf>,
}

pub(super) fn duration_secs(s: &str) -> anyhow::Result<u64> {
    crate::tiers::parse_period(s)
        .ok_or_else(|| anyhow!("{s:?} is not a duration (e.g. 30s, 10m, 12h, 30d)"))
}

/// An RFC 3339 time, or now + a duration.
/// A bad argument value found after clap parsed the line: exit 2, like clap's own usage errors.
#[derive(Debug)]
pub struct UsageError(pub String);

impl std::fmt::Display for UsageError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for UsageError {}

/// A usage error (exit 2) saying `msg`.
pub(super) fn usage_error(msg: impl Into<String>) -> anyhow::Error {
    anyhow::Error::new(UsageError(msg.into()))
}

pub(super) fn expiry(s: &str) -> anyhow::Result<String> {
    if crate::server::admin::parse_rfc3339("expiry", s).is_ok() {
        return Ok(s.to_string());
    }
    let secs = duration_secs(s).map_err(|_| {
        usage_error(format!(
            "--expires {s:?}: give an RFC 3339 time or a duration such as 30d"
        ))
    })?;
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)?
        .as_secs();
    now.checked_add(secs)
        .and_then(crate::server::admin::rfc3339)
        .ok_or_else(|| usage_error(format!("--expires {s:?} is too far")))
}

pub(super) fn parse_limit(s: &str) -> anyhow::Result<Value> {
    let (r, p) = s
        .split_once('/')
        .ok_or_else(|| usage_error(format!("--limit {s:?}: use REQUESTS/PERIOD, e.g. 60/1m")))?;
    let requests: u64 = r
        .trim()
        .parse()
        .map_err(|_| usage_error(format!("--limit {s:?}: {r:?} is not a number")))?;
    let period = duration_secs(p)
        .map_err(|_| usage_error(format!("--limit {s:?}: {p:?} is not a period")))?;
    Ok(json!({"requests": requests, "periodSeconds": period}))
}

pub(super) struct Ctx {
    client: AdminClient,
    json: bool,
}

impl Ctx {
    pub(super) async fn call(
        &self,
        method: &str,
        path: &str,
        body: Option<Value>,
    ) -> anyhow::Result<Value> {
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

    pub(super) fn print(&self, v: &Value, human: impl FnOnce(&Value)) {
        if self.json {
            println!("{}", serde_json::to_string_pretty(v).unwrap_or_default());
        } else {
            human(v);
        }
    }
}

pub(super) fn s(v: &Value) -> String {
    match v {
        Value::Null => "-".into(),
        Value::String(s) => s.clone(),
        Value::Array(a) if a.is_empty() => "(all)".into(),
        Value::Array(a) => a.iter().map(s).collect::<Vec<_>>().join(","),
        other => other.to_string(),
    }
}

pub(super) fn table(headers: &[&str], rows: &[Vec<String>]) {
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

pub(super) fn print_key(k: &Value) {
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

pub(super) fn print_usage(u: &Value) {
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

/// The body of a counter reset: both kinds unless one is asked for alone.
pub(super) fn reset_body(burst_only: bool, monthly_only: bool) -> Value {
    json!({"burst": !monthly_only, "monthly": !burst_only})
}

pub(super) fn tier_row(t: &Value) -> Vec<String> {
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
    let mode = if t["enforce"] == false {
        "shadow"
    } else {
        "enforced"
    };
    let count_by = t["countBy"].as_str().unwrap_or("key");
    vec![
        s(&t["name"]),
        limits,
        quota,
        scopes,
        mode.into(),
        count_by.into(),
    ]
}

pub(super) fn print_raw_key(k: &Value) {
    print_key(k);
    println!();
    println!("API key (shown only now; quotad keeps only its hash):");
    println!("{}", s(&k["key"]));
}

pub(super) fn ctx(a: &AdminArgs) -> anyhow::Result<Ctx> {
    let token = resolve_token(a.token.as_deref(), &a.data_dir)?;
    Ok(Ctx {
        client: AdminClient::new(&a.admin_url, token, a.admin_ca.as_deref())?,
        json: a.json,
    })
}

pub(super) fn block_on<T>(
    f: impl std::future::Future<Output = anyhow::Result<T>>,
) -> anyhow::Result<T> {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?
        .block_on(f)
}

pub(super) fn urlencode(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}
