//! Tollgate spoke: the per-cluster controller that reconciles one NetworkPolicy per agent.
//!
//! Watches feed reflector stores ([`world`]); any change triggers a level-triggered pass ([`reconcile`]) that
//! turns the stores into planner inputs ([`facts`], [`agents`]), plans with `tollgate-common`, and writes only
//! what differs ([`diff`]) by server-side apply.

pub mod agent_runtime;
pub mod agents;
pub mod anp;
pub mod args;
pub mod conditions;
pub mod diff;
pub mod facts;
pub mod fqdn;
pub mod hub_client;
pub mod local_rules;
pub mod membership;
pub mod metrics;
pub mod reconcile;
pub mod run;
pub mod world;
