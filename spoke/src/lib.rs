//! Tollgate spoke: the per-cluster controller that reconciles one NetworkPolicy per agent.

pub mod agent_runtime;
