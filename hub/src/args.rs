//! Command-line interface of `tollgate-hub`.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand, ValueEnum};

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

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum LogFormat {
    Plain,
    Json,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Validate intent documents offline, exactly as `apply` would: every error with file, document and field.
    Validate(crate::validate::ValidateArgs),
}

impl Args {
    pub fn init_tracing(&self) {
        let filter = tracing_subscriber::EnvFilter::try_new(&self.log_level)
            .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
        let builder = tracing_subscriber::fmt()
            .with_env_filter(filter)
            .with_writer(std::io::stderr);
        match self.log_format {
            LogFormat::Plain => builder.init(),
            LogFormat::Json => builder.json().init(),
        }
    }

    pub fn run(self) -> anyhow::Result<ExitCode> {
        let Self {
            log_level: _,
            log_format: _,
            command,
        } = self;
        match command {
            Command::Validate(args) => args.run(&mut std::io::stdout().lock()),
        }
    }
}

/// `-f FILE|DIR` arguments, shared by every command that reads documents.
#[derive(Debug, clap::Args)]
pub struct FileArgs {
    /// A YAML file, a folder of `.yaml`/`.yml` files, or `-` for standard input. Repeatable.
    #[arg(short = 'f', long = "filename", required = true)]
    pub files: Vec<PathBuf>,
}
