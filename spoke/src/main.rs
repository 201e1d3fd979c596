//! `tollgate-spoke`: the per-cluster Tollgate controller.

use std::process::ExitCode;

use clap::Parser;
use tollgate_spoke::args::{Args, Command};

fn main() -> ExitCode {
    let Args { command } = Args::parse();
    let run = match command {
        Command::Crd => {
            print!("{}", tollgate_spoke::agent_runtime::crd_yaml());
            return ExitCode::SUCCESS;
        }
        Command::Run(run) => run,
    };
    tollgate_process::init_tracing(&run.log_level, run.log_format);
    // One thread: a pass is CPU work of tens of milliseconds between waits on the API server, and one malloc arena
    // keeps less memory resident than one per worker thread.
    let runtime = match tokio::runtime::Builder::new_current_thread().enable_all().build() {
        Ok(runtime) => runtime,
        Err(error) => {
            eprintln!("error: starting the async runtime: {error}");
            return ExitCode::FAILURE;
        }
    };
    let config = match tollgate_spoke::run::Config::from_args(*run) {
        Ok(config) => config,
        Err(error) => {
            eprintln!("error: {error:#}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(tollgate_spoke::run::run(config)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            tracing::error!("{error:#}");
            eprintln!("error: {error:#}");
            ExitCode::FAILURE
        }
    }
}
