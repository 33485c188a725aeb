//! `quotad prefixes …`: retiring key prefixes (keys that start with one work until its sunset,
//! then are refused), through the admin API.

use clap::Subcommand;
use serde_json::json;

use super::ops::*;

/// `quotad prefixes …`
#[derive(Debug, Subcommand)]
pub enum PrefixesCmd {
    /// Prefixes being retired, with their sunsets.
    List,
    /// Retire a prefix (or move its sunset): its keys work until then, with `Sunset` and
    /// `Deprecation` headers, and are refused with 401 key_format_deprecated from then on.
    Retire {
        /// The start of the raw keys, e.g. tb_.
        prefix: String,
        /// When such keys stop working: RFC 3339, or a duration from now (90d, 12h).
        #[arg(long)]
        sunset: String,
    },
    /// Take a prefix off the retired list: its keys work as before.
    Restore {
        /// The prefix.
        prefix: String,
    },
}

/// Runs `quotad prefixes …`.
pub fn prefixes(cmd: PrefixesCmd, a: &AdminArgs) -> anyhow::Result<()> {
    let c = ctx(a)?;
    block_on(async move {
        let row =
            |p: &serde_json::Value| vec![s(&p["prefix"]), s(&p["sunsetAt"]), s(&p["deprecatedAt"])];
        let headers = ["PREFIX", "SUNSET", "DEPRECATED SINCE"];
        match cmd {
            PrefixesCmd::List => {
                let v = c.call("GET", "/prefixes", None).await?;
                c.print(&v, |v| {
                    let rows: Vec<Vec<String>> = v["prefixes"]
                        .as_array()
                        .into_iter()
                        .flatten()
                        .map(row)
                        .collect();
                    table(&headers, &rows);
                });
            }
            PrefixesCmd::Retire { prefix, sunset } => {
                let body = json!({"sunsetAt": expiry(&sunset)?});
                let v = c
                    .call(
                        "PUT",
                        &format!("/prefixes/{}", urlencode(&prefix)),
                        Some(body),
                    )
                    .await?;
                c.print(&v, |v| table(&headers, &[row(v)]));
            }
            PrefixesCmd::Restore { prefix } => {
                let v = c
                    .call("DELETE", &format!("/prefixes/{}", urlencode(&prefix)), None)
                    .await?;
                c.print(&v, |_| println!("prefix {prefix} no longer retired"));
            }
        }
        Ok(())
    })
}
