//! Tollgate hub: holds fleet egress intent, streams it to the spokes, and serves the admin CLI. One binary, two
//! roles that share only the protocol and the certificate helpers:
//!
//! ```text
//!   admin ──CLI (cli::)──► Admin service ─┐                       ┌─► SpokeSync stream ──► spoke (one per cluster)
//!                                         ▼                       │        ▲ facts, inventory, acks
//!   server::state::Hub ◄── commit ── server::store (SQLite │ PostgreSQL)   │
//!        │ latest revision (watch)                                 │        │
//!        └──────────────► server::sessions ── per-cluster intent ──┘   server::reports ──► store (batched)
//! ```
//!
//! - [`server`]: `tollgate-hub serve`: the store, the intent state, the gRPC services (spoke stream, admin,
//!   membership), the connected sessions, metrics and the fleet preview (`plan`).
//! - [`cli`]: every other subcommand: argument parsing, the admin calls, offline validation, rendering.
//! - [`certs`]: certificates for a quick start and reading the identity a certificate carries (both roles).
//!
//! `cli` may use `server` (the store's backup, the serve flags); `server` never uses `cli`. No module imports
//! another in a cycle (`scripts/check-module-cycles`).

pub mod certs;
pub mod cli;
pub mod server;
