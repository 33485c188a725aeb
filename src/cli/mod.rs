//! The command line: `quotad serve` runs the daemon.

pub mod admin_client;
pub mod bench;
pub mod consumers_cmd;
pub mod datadir_cmd;
pub mod keys_cmd;
pub mod ops;
pub mod prefixes_cmd;
pub mod serve;
pub mod stamped;
pub mod tiers_cmd;

use clap::{Parser, Subcommand, ValueEnum};

/// quotad: rate-limit and quota decisions for API gateways.
#[derive(Debug, Parser)]
#[command(name = "quotad", version, about, propagate_version = true)]
pub struct Cli {
    /// Log format.
    #[arg(long, value_enum, default_value_t = LogFormat::Human, env = "QUOTAD_LOG_FORMAT", global = true)]
    pub log_format: LogFormat,
    /// Flags every operator command takes, before or after the subcommand.
    #[command(flatten)]
    pub global: GlobalArgs,
    /// What to do.
    #[command(subcommand)]
    pub command: Command,
}

/// Flags accepted anywhere on the line (`quotad --json keys list` = `quotad keys list --json`).
#[derive(Debug, Clone, clap::Args)]
pub struct GlobalArgs {
    /// Print JSON instead of tables.
    #[arg(long, global = true)]
    pub json: bool,
    /// Admin token (else QUOTAD_ADMIN_TOKEN, else DATA_DIR/admin.token).
    #[arg(long, global = true)]
    pub token: Option<String>,
    /// Admin API base URL, http:// or https:// (default http://127.0.0.1:8686; `quotad
    /// bench`: its --http-url).
    #[arg(long, env = "QUOTAD_ADMIN_URL", global = true)]
    pub admin_url: Option<String>,
    /// A CA certificate file (PEM) to trust for an https:// admin URL, besides the usual roots.
    #[arg(long, env = "QUOTAD_ADMIN_CA", global = true, value_name = "FILE")]
    pub admin_ca: Option<std::path::PathBuf>,
}

/// Log output format.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum LogFormat {
    /// Human-readable lines.
    Human,
    /// One JSON object per line, for collectors.
    Json,
}

/// Subcommands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the daemon (HTTP check endpoint, admin API, binary protocol).
    Serve(serve::ServeArgs),
    /// Load a running quotad and report throughput and latency (capacity planning).
    Bench(bench::BenchArgs),
    /// Manage API keys (through the admin API).
    Keys {
        /// Where the admin API is.
        #[command(flatten)]
        admin: ops::AdminArgs,
        /// What to do.
        #[command(subcommand)]
        cmd: keys_cmd::KeysCmd,
    },
    /// Manage plan tiers (through the admin API).
    Tiers {
        /// Where the admin API is.
        #[command(flatten)]
        admin: ops::AdminArgs,
        /// What to do.
        #[command(subcommand)]
        cmd: tiers_cmd::TiersCmd,
    },
    /// What spans every key of one consumer (through the admin API).
    Consumers {
        /// Where the admin API is.
        #[command(flatten)]
        admin: ops::AdminArgs,
        /// What to do.
        #[command(subcommand)]
        cmd: consumers_cmd::ConsumersCmd,
    },
    /// Retire key prefixes (through the admin API).
    Prefixes {
        /// Where the admin API is.
        #[command(flatten)]
        admin: ops::AdminArgs,
        /// What to do.
        #[command(subcommand)]
        cmd: prefixes_cmd::PrefixesCmd,
    },
    /// One key's live usage, or (`--consumer`) what a consumer spends on each tier it has
    /// keys on.
    Usage {
        /// Where the admin API is.
        #[command(flatten)]
        admin: ops::AdminArgs,
        /// Key id (key_…).
        #[arg(required_unless_present = "consumer", conflicts_with = "consumer")]
        id: Option<String>,
        /// A consumer instead of a key.
        #[arg(long)]
        consumer: Option<String>,
    },
    /// Check a data directory offline (daemon stopped): versions, checksums, counts, and
    /// whether start-up would refuse. Exit 0: starts; 1: refuses; 3: in use by a running quotad.
    Inspect {
        /// The data directory.
        data_dir: std::path::PathBuf,
    },
    /// Show what recovering a damaged data directory would lose; apply it with --accept-loss.
    Repair {
        /// The data directory.
        data_dir: std::path::PathBuf,
        /// Apply every recovery listed, losing what it says.
        #[arg(long)]
        accept_loss: bool,
    },
    /// Print a shell completion script (bash, zsh, fish, elvish or powershell).
    Completions {
        /// The shell.
        shell: clap_complete::Shell,
    },
}

/// Sets up `tracing` (level from `RUST_LOG`, default `info`).
pub fn init_tracing(format: LogFormat) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()));
    match format {
        LogFormat::Human => builder.init(),
        LogFormat::Json => builder.json().flatten_event(true).init(),
    }
}

/// Parses the command line and runs it; returns the process exit code.
pub fn main() -> i32 {
    let cli = Cli::parse();
    init_tracing(cli.log_format);
    let daemon = matches!(cli.command, Command::Serve(_));
    if !daemon {
        // A command piped into `head` should end quietly, not panic on EPIPE.
        // SAFETY: restoring the default disposition of SIGPIPE before any thread starts.
        unsafe { libc::signal(libc::SIGPIPE, libc::SIG_DFL) };
    }
    let g = cli.global;
    let admin = |mut a: ops::AdminArgs| {
        a.json = g.json;
        a.token = g.token.clone();
        a.admin_ca = g.admin_ca.clone();
        a.admin_url = g
            .admin_url
            .clone()
            .unwrap_or_else(|| "http://127.0.0.1:8686".into());
        a
    };
    let result = match cli.command {
        Command::Serve(args) => serve::run(args),
        Command::Bench(mut args) => {
            args.json = g.json;
            args.token = g.token.clone();
            args.admin_ca = g.admin_ca.clone();
            args.admin_url = g.admin_url.clone();
            bench::run(args)
        }
        Command::Keys { admin: a, cmd } => keys_cmd::keys(cmd, &admin(a)),
        Command::Tiers { admin: a, cmd } => tiers_cmd::tiers(cmd, &admin(a)),
        Command::Consumers { admin: a, cmd } => consumers_cmd::consumers(cmd, &admin(a)),
        Command::Prefixes { admin: a, cmd } => prefixes_cmd::prefixes(cmd, &admin(a)),
        Command::Usage {
            admin: a,
            id,
            consumer,
        } => match (id, consumer) {
            (_, Some(c)) => consumers_cmd::usage(c, &admin(a)),
            (Some(id), None) => keys_cmd::usage(id, &admin(a)),
            (None, None) => Err(ops::usage_error("give a key id or --consumer NAME")),
        },
        Command::Inspect { data_dir } => datadir_cmd::inspect(data_dir, g.json),
        Command::Repair {
            data_dir,
            accept_loss,
        } => datadir_cmd::repair(data_dir, accept_loss, g.json),
        Command::Completions { shell } => {
            let mut cmd = <Cli as clap::CommandFactory>::command();
            clap_complete::generate(shell, &mut cmd, "quotad", &mut std::io::stdout());
            Ok(())
        }
    };
    match result {
        Ok(()) => 0,
        Err(e) if e.downcast_ref::<datadir_cmd::Exit>().is_some() => {
            e.downcast_ref::<datadir_cmd::Exit>().map_or(1, |x| x.0)
        }
        Err(e) if e.downcast_ref::<ops::UsageError>().is_some() => {
            eprintln!("quotad: error: {e:#}");
            2
        }
        Err(e) => {
            if daemon {
                tracing::error!("{e:#}");
            }
            eprintln!("quotad: error: {e:#}");
            1
        }
    }
}
