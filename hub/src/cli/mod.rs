//! The `tollgate-hub` command line, apart from `serve`.
//!
//! [`args`] parses the command line and runs the chosen command; [`commands`] are the admin commands, which reach
//! the hub through [`connection`] (flags, variables or a [`config`] context); [`sources`] reads `-f` files and
//! [`validate`] checks them offline with the hub's own validation; [`render`] (and [`preview`], for `plan`) turns
//! answers into tables or JSON/YAML; [`completion`] answers the shell; [`store`] backs up and restores the embedded store.

pub mod args;
pub mod commands;
pub mod completion;
pub mod config;
pub mod connection;
pub mod preview;
pub mod render;
pub mod sources;
pub mod store;
pub mod validate;

/// Answers a completion request when the shell asked for one (then exits); returns otherwise.
pub fn answer_completion_if_asked() {
    clap_complete::CompleteEnv::with_factory(<crate::cli::args::Args as clap::CommandFactory>::command)
        .var(completion::COMPLETE_VAR)
        .complete();
}
