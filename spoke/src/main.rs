//! `tollgate-spoke`: the per-cluster Tollgate controller.

use std::process::ExitCode;

use clap::Parser;
use tollgate_spoke::args::{Args, Command, LogFormat};

fn main() -> ExitCode {
    let Args { command } = Args::parse();
    let run = match command {
        Command::Crd => {
            print!("{}", tollgate_spoke::agent_runtime::crd_yaml());
            return ExitCode::SUCCESS;
        }
        Command::Run(run) => run,
    };
    init_tracing(&run.log_level, run.log_format);
    // One thread: a pass is CPU work of tens of milliseconds between waits on the API server, and one malloc arena
    // keeps less memory resident than one per worker thread.
    let runtime = match tokio::runtime::Builder::new_current_thread().enable_all().build() {
        Ok(runtime) => runtime,
        Err(error) => {
            eprintln!("error: starting the async runtime: {error}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(tollgate_spoke::run::run(*run)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            tracing::error!("{error:#}");
            eprintln!("error: {error:#}");
            ExitCode::FAILURE
        }
    }
}

fn init_tracing(level: &str, format: LogFormat) {
    let filter =
        tracing_subscriber::EnvFilter::try_new(level).unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()));
    match format {
        LogFormat::Plain => builder.init(),
        LogFormat::Json => builder.json().init(),
    }
}
