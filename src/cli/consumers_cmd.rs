//! `quotad consumers …`: what spans every key of one consumer, through the admin API.

use clap::Subcommand;

use super::ops::*;

/// `quotad consumers …`
#[derive(Debug, Subcommand)]
pub enum ConsumersCmd {
    /// Set the counters of every key of a consumer back (both by default): burst windows to
    /// full, month's usage to 0.
    Reset {
        /// The consumer.
        name: String,
        /// Only the burst windows.
        #[arg(long, conflicts_with = "monthly_only")]
        burst_only: bool,
        /// Only the month's usage.
        #[arg(long)]
        monthly_only: bool,
    },
}

/// Runs `quotad consumers …`.
pub fn consumers(cmd: ConsumersCmd, a: &AdminArgs) -> anyhow::Result<()> {
    let c = ctx(a)?;
    block_on(async move {
        match cmd {
            ConsumersCmd::Reset {
                name,
                burst_only,
                monthly_only,
            } => {
                let body = reset_body(burst_only, monthly_only);
                let v = c
                    .call(
                        "POST",
                        &format!("/consumers/{}/reset", urlencode(&name)),
                        Some(body),
                    )
                    .await?;
                c.print(&v, |v| {
                    for k in v["keys"].as_array().into_iter().flatten() {
                        print_key(k);
                        println!();
                    }
                });
            }
        }
        Ok(())
    })
}

/// Runs `quotad usage --consumer NAME`.
pub fn usage(name: String, a: &AdminArgs) -> anyhow::Result<()> {
    let c = ctx(a)?;
    block_on(async move {
        let v = c
            .call(
                "GET",
                &format!("/consumers/{}/usage", urlencode(&name)),
                None,
            )
            .await?;
        c.print(&v, |v| {
            println!("{:<14} {}", "consumer", s(&v["consumer"]));
            for t in v["tiers"].as_array().into_iter().flatten() {
                println!();
                println!(
                    "{:<14} {} (counted by {})",
                    "tier",
                    s(&t["tier"]),
                    s(&t["countBy"])
                );
                let keys: Vec<String> = t["keys"].as_array().into_iter().flatten().map(s).collect();
                println!("{:<14} {}", "keys", keys.join(" "));
                if t["usage"].is_object() {
                    print_usage(&t["usage"]);
                } else {
                    println!("{:<14} per key (quotad usage ID)", "usage");
                }
            }
        });
        Ok(())
    })
}
