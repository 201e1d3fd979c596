//! `tollgate-spoke`: the per-cluster Tollgate controller.

use std::process::ExitCode;

use clap::{Parser, Subcommand};

/// Tollgate spoke: reconciles least-privilege egress NetworkPolicies for the AI agents of one cluster.
#[derive(Debug, Parser)]
#[command(name = "tollgate-spoke", version, about)]
struct Args {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Print the AgentRuntime CRD (agent.kagenti.dev/v1alpha1, with spec.egress) generated from the Rust types.
    Crd,
}

fn main() -> ExitCode {
    let Args { command } = Args::parse();
    match command {
        Command::Crd => {
            print!("{}", tollgate_spoke::agent_runtime::crd_yaml());
            ExitCode::SUCCESS
        }
    }
}
