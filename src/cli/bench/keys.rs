//! The keys a bench run uses: read from a file, or created through the admin API (with a
//! `quotad-bench` tier) and removed again at the end.

use anyhow::{bail, Context};

use super::BenchArgs;
use crate::cli::admin_client::{resolve_token, AdminClient};

/// The keys a run uses, and what it made that it should remove at the end.
pub(super) struct Prepared {
    /// Raw keys.
    pub(super) keys: Vec<String>,
    /// Ids of the keys this run created.
    pub(super) created: Vec<String>,
    /// Whether this run created the `quotad-bench` tier.
    pub(super) made_tier: bool,
    /// The admin API, when keys were created through it.
    pub(super) admin: Option<AdminClient>,
}

impl Prepared {
    /// Removes what this run made: its keys, then its tier (kept if others' keys use it).
    pub(super) async fn remove(&self) -> anyhow::Result<()> {
        let Some(admin) = &self.admin else {
            return Ok(());
        };
        for id in &self.created {
            let (st, b) = admin
                .request("DELETE", &format!("/keys/{id}"), None)
                .await?;
            if st != 200 && st != 404 {
                bail!("cannot remove bench key {id}: HTTP {st} {b}");
            }
        }
        let mut tier = "";
        if self.made_tier {
            let (st, _) = admin.request("DELETE", "/tiers/quotad-bench", None).await?;
            if st == 200 {
                tier = " and the quotad-bench tier";
            }
        }
        eprintln!(
            "removed the {} bench keys{tier} (--keep-keys keeps them)",
            self.created.len()
        );
        Ok(())
    }
}

pub(super) async fn prepare_keys(a: &BenchArgs) -> anyhow::Result<Prepared> {
    if let Some(f) = &a.key_file {
        let text =
            std::fs::read_to_string(f).with_context(|| format!("cannot read {}", f.display()))?;
        let keys: Vec<String> = text
            .lines()
            .map(str::trim)
            .filter(|l| !l.is_empty())
            .map(str::to_string)
            .collect();
        if keys.is_empty() {
            bail!("{} holds no keys", f.display());
        }
        return Ok(Prepared {
            keys,
            created: Vec::new(),
            made_tier: false,
            admin: None,
        });
    }
    let token = resolve_token(a.token.as_deref(), &a.data_dir)?;
    let admin = AdminClient::new(
        a.admin_url.as_deref().unwrap_or(&a.http_url),
        token,
        a.admin_ca.as_deref(),
    )?;
    let mut made_tier = false;
    let tier = match &a.tier {
        Some(t) => t.clone(),
        None => {
            made_tier = admin.request("GET", "/tiers/quotad-bench", None).await?.0 == 404;
            let body =
                serde_json::json!({"limits": [{"requests": 1_000_000_000u64, "periodSeconds": 1}]});
            let (st, b) = admin
                .request("PUT", "/tiers/quotad-bench", Some(body))
                .await?;
            if st != 200 {
                bail!("cannot create the bench tier: HTTP {st} {b}");
            }
            "quotad-bench".to_string()
        }
    };
    let mut keys = Vec::with_capacity(a.keys);
    let mut created = Vec::with_capacity(a.keys);
    for i in 0..a.keys.max(1) {
        let mut body = serde_json::json!({"consumer": format!("bench-{}", i % 100), "tier": tier, "name": "quotad bench"});
        if let Some(s) = &a.scope {
            body["scopes"] = serde_json::json!([s]);
        }
        let (st, b) = admin.request("POST", "/keys", Some(body)).await?;
        if st != 201 {
            bail!("cannot create a bench key: HTTP {st} {b}");
        }
        keys.push(
            b["key"]
                .as_str()
                .context("no key in the admin answer")?
                .to_string(),
        );
        created.push(b["id"].as_str().unwrap_or_default().to_string());
        if i % 200 == 199 {
            eprint!("\rcreated {} keys", i + 1);
        }
    }
    if a.keys >= 200 {
        eprintln!();
    }
    if let Some(path) = &a.save_keys {
        use std::io::Write as _;
        use std::os::unix::fs::OpenOptionsExt as _;
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(0o600)
            .open(path)
            .with_context(|| format!("cannot write {}", path.display()))?;
        for k in &keys {
            writeln!(f, "{k}").with_context(|| format!("cannot write {}", path.display()))?;
        }
    }
    Ok(Prepared {
        keys,
        created,
        made_tier,
        admin: Some(admin),
    })
}
