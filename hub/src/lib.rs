//! Tollgate hub: holds fleet egress intent, streams it to the spokes, and serves the admin CLI.

pub mod args;
pub mod certs;
pub mod cli;
pub mod completion;
pub mod config;
pub mod grpc;
pub mod membership;
pub mod metrics;
pub mod plan;
pub mod render;
pub mod serve;
pub mod sources;
pub mod state;
pub mod store;
pub mod store_commands;
pub mod validate;
