//! `tollgate-hub`: the fleet egress intent hub and its CLI.

use clap::Parser;
use tollgate_hub::cli::args::Args;

fn main() -> std::process::ExitCode {
    tollgate_hub::cli::answer_completion_if_asked();
    let args = Args::parse();
    args.init_tracing();
    match args.run() {
        Ok(code) => code,
        Err(error) => {
            eprintln!("error: {error:#}");
            std::process::ExitCode::FAILURE
        }
    }
}
