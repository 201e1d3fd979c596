//! `tollgate-hub`: the fleet egress intent hub and its CLI.

use clap::Parser;

mod args;
mod sources;
mod validate;

fn main() -> std::process::ExitCode {
    let args = args::Args::parse();
    args.init_tracing();
    match args.run() {
        Ok(code) => code,
        Err(error) => {
            eprintln!("error: {error:#}");
            std::process::ExitCode::FAILURE
        }
    }
}
