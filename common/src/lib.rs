//! Tollgate's pure core: the domain model, its validation, agent verification and the NetworkPolicy planner.
//!
//! Nothing here performs I/O, reads the clock or talks to Kubernetes or the network: the hub, the spoke and the
//! CLI feed facts in and take desired objects out, so every rule of docs/design.md is defined (and tested) once.
//!
//! ```text
//!  YAML ─► document (validated EgressPolicy / EgressGuardrail) ─► intent (the documents selecting one cluster)
//!  AgentRuntime, AgentCard ─► verification (verified or not, and why) ─┐
//!  cluster facts (API server, DNS, resolved names) + intent + agents ──┴─► planner ─► per agent: outcome + policy
//!  wire: the same types to and from the `tollgate.v1` messages, validated at the edge
//! ```

pub mod certificate;
pub mod document;
pub mod egress_rule;
pub mod field_error;
pub mod fqdn;
pub mod intent;
pub mod join;
pub mod label_selector;
pub mod planner;
mod serde_paths;
pub mod verification;
pub mod widening;
pub mod wire;

pub use document::{Document, DocumentSet, EgressGuardrail, EgressPolicy, VerifiedDefault};
pub use egress_rule::{EgressRule, IpBlock, Peer, PortRange, Protocol};
pub use field_error::{DocumentError, FieldError};
pub use fqdn::Fqdn;
pub use intent::Intent;
pub use label_selector::LabelSelector;
