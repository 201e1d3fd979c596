//! The hub intent that applies to one cluster at one revision.

use crate::document::{EgressGuardrail, EgressPolicy};

/// The documents selecting one cluster, at the hub revision they come from (`None`: standalone, no hub).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Intent {
    pub revision: Option<u64>,
    pub policies: Vec<EgressPolicy>,
    pub guardrails: Vec<EgressGuardrail>,
}
