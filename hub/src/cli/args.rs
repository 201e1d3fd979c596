//! Command-line interface of `tollgate-hub`.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};

/// Tollgate hub: holds fleet egress intent for AI agents and streams it to one spoke per cluster.
#[derive(Debug, Parser)]
#[command(name = "tollgate-hub", version, about)]
pub struct Args {
    /// Log level filter (for example `info` or `tollgate_hub=debug`).
    #[arg(long, global = true, env = "TOLLGATE_LOG", default_value = "info")]
    log_level: String,

    /// Log format.
    #[arg(long, global = true, env = "TOLLGATE_LOG_FORMAT", value_enum, default_value_t = LogFormat::Plain)]
    log_format: LogFormat,

    #[command(subcommand)]
    command: Command,
}

pub use tollgate_process::LogFormat;

#[derive(Debug, Subcommand)]
enum Command {
    /// Run the hub on its embedded store.
    Serve(crate::server::serve::ServeArgs),
    /// Create a CA and hub / spoke / admin certificates for a quick start.
    #[command(subcommand)]
    Certs(CertsCommand),
    /// Validate intent documents offline, exactly as `apply` would: every error with file, document and field.
    Validate(crate::cli::validate::ValidateArgs),
    /// Apply intent documents (all or nothing) as one new revision.
    Apply(crate::cli::commands::ApplyArgs),
    /// Show the hub's documents.
    Get(crate::cli::commands::GetArgs),
    /// Delete one document.
    Delete(crate::cli::commands::DeleteArgs),
    /// Show one document, the clusters it selects now, and its YAML.
    Describe(crate::cli::commands::DescribeArgs),
    /// List every revision.
    History(crate::cli::commands::HistoryArgs),
    /// Make the documents of an earlier revision the latest again.
    Rollback(crate::cli::commands::RollbackArgs),
    /// Fleet status: one row per cluster, or per agent with --cluster.
    Status(crate::cli::commands::StatusArgs),
    /// Preview a change fleet-wide: per cluster and agent, the destinations gained and lost and mode changes.
    Plan(crate::cli::commands::PlanArgs),
    /// The clusters the hub serves.
    #[command(subcommand)]
    Clusters(crate::cli::commands::ClustersCommand),
    /// Back up and restore the embedded store.
    #[command(subcommand)]
    Store(crate::cli::store::StoreCommand),
    /// The CLI's contexts: hubs and the admin certificates to reach them.
    #[command(subcommand)]
    Config(crate::cli::config::ConfigCommand),
    /// The versions of this client, the hub and each cluster's spoke, with a warning for each skew.
    Version(crate::cli::commands::VersionArgs),
    /// Print a shell completion script: `source <(tollgate-hub completion bash)`.
    Completion(crate::cli::completion::CompletionArgs),
}

#[derive(Debug, Subcommand)]
enum CertsCommand {
    /// Create a CA (ca.pem, ca-key.pem) in --dir.
    Init {
        #[arg(long, default_value = ".tollgate/certs")]
        dir: PathBuf,
    },
    /// Issue the hub's server certificate (hub.pem, hub-key.pem).
    Hub {
        #[arg(long, default_value = ".tollgate/certs")]
        dir: PathBuf,
        /// DNS names of the hub (repeatable).
        #[arg(long = "dns-name", default_values_t = vec!["localhost".to_string()])]
        dns_names: Vec<String>,
        /// IP addresses of the hub (repeatable).
        #[arg(long = "ip", default_values_t = vec![std::net::IpAddr::from([127, 0, 0, 1])])]
        addresses: Vec<std::net::IpAddr>,
    },
    /// Issue a spoke's client certificate for one cluster (spoke-<id>.pem).
    Spoke {
        #[arg(long, default_value = ".tollgate/certs")]
        dir: PathBuf,
        #[arg(long)]
        cluster_id: String,
    },
    /// Issue an admin client certificate for the CLI (admin-<name>.pem).
    Admin {
        #[arg(long, default_value = ".tollgate/certs")]
        dir: PathBuf,
        #[arg(long, default_value = "admin")]
        name: String,
    },
}

impl CertsCommand {
    fn run(self, out: &mut impl std::io::Write) -> anyhow::Result<ExitCode> {
        use crate::certs::{Leaf, init_ca, issue};
        match self {
            Self::Init { dir } => {
                let files = init_ca(&dir)?;
                writeln!(out, "CA: {} and {}", files.cert.display(), files.key.display())?;
            }
            Self::Hub {
                dir,
                dns_names,
                addresses,
            } => {
                let (cert, key) = issue(&dir, &dir, &Leaf::Hub { dns_names, addresses })?;
                writeln!(out, "hub: {} and {}", cert.display(), key.display())?;
            }
            Self::Spoke { dir, cluster_id } => {
                let (cert, key) = issue(&dir, &dir, &Leaf::Spoke { cluster_id })?;
                writeln!(out, "spoke: {} and {}", cert.display(), key.display())?;
            }
            Self::Admin { dir, name } => {
                let (cert, key) = issue(&dir, &dir, &Leaf::Admin { name })?;
                writeln!(out, "admin: {} and {}", cert.display(), key.display())?;
            }
        }
        Ok(ExitCode::SUCCESS)
    }
}

impl Args {
    pub fn init_tracing(&self) {
        tollgate_process::init_tracing(&self.log_level, self.log_format);
    }

    pub fn run(self) -> anyhow::Result<ExitCode> {
        let Self {
            log_level: _,
            log_format: _,
            command,
        } = self;
        let out = &mut std::io::stdout().lock();
        let runtime = || tokio::runtime::Runtime::new().map_err(|e| anyhow::anyhow!("starting the async runtime: {e}"));
        match command {
            Command::Validate(args) => args.run(out),
            Command::Certs(certs) => certs.run(out),
            Command::Serve(args) => runtime()?.block_on(args.run()).map(|()| ExitCode::SUCCESS),
            Command::Apply(args) => runtime()?.block_on(args.run(out)),
            Command::Get(args) => runtime()?.block_on(args.run(out)),
            Command::Delete(args) => runtime()?.block_on(args.run(out)),
            Command::Describe(args) => runtime()?.block_on(args.run(out)),
            Command::History(args) => runtime()?.block_on(args.run(out)),
            Command::Rollback(args) => runtime()?.block_on(args.run(out)),
            Command::Status(args) => runtime()?.block_on(args.run(out)),
            Command::Plan(args) => runtime()?.block_on(args.run(out)),
            Command::Clusters(command) => runtime()?.block_on(command.run(out)),
            Command::Store(command) => command.run(out),
            Command::Config(command) => command.run(out),
            Command::Completion(args) => args.run(out),
            Command::Version(args) => runtime()?.block_on(args.run(out)),
        }
    }
}
