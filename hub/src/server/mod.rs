//! The hub server (`tollgate-hub serve`).
//!
//! [`store`] persists revisions and what spokes report; [`state`] holds the latest revision in memory and commits
//! admin changes; [`grpc`] serves the spoke stream, the admin service and membership over one TLS listener
//! ([`membership`] signs spoke certificates); [`sessions`] tracks the streams of this replica and lets admin calls
//! act on one; [`hellos`] and [`reports`] write what many spokes say in few transactions; [`plan`] previews a change
//! on the stored inventories; [`metrics`] exports it all; [`serve`] wires them together.

pub mod grpc;
pub mod hellos;
pub mod membership;
pub mod metrics;
pub mod plan;
pub mod reports;
pub mod serve;
pub mod sessions;
pub mod state;
pub mod store;
