//! Tollgate spoke: the per-cluster controller that reconciles one NetworkPolicy per agent.
//!
//! ```text
//!  kube-apiserver ──watches──► world (reflector stores) ──┐
//!  hub ──SpokeSync── hub_client (intent, cached) ─────────┼─► reconcile: facts + agents + names ─► planner
//!  DNS ◄── fqdn (resolves the names of rules) ────────────┘        │ (tollgate-common, pure)
//!                                                                 ▼
//!  kube-apiserver ◄── server-side apply of what differs (diff) ── NetworkPolicies, AdminNetworkPolicies,
//!                                                                 Events, AgentRuntime annotations
//!  hub ◄── facts, inventory, acks (hub_client) ◄── the pass's report
//! ```
//!
//! Watches feed reflector stores ([`world`]); any change triggers a level-triggered pass ([`reconcile`]) that
//! turns the stores into planner inputs ([`facts`], [`agents`]), plans with `tollgate-common`, and writes only
//! what differs ([`diff`]) by server-side apply; failed writes are retried at their kind's pace ([`retry`]).
//! [`run`] wires it together from the command line ([`args`]); [`membership`] joins the fleet with a token and
//! keeps the spoke's certificate renewed; [`conditions`] and [`metrics`] say how it goes.

pub mod agent_runtime;
pub mod agents;
pub mod anp;
pub mod args;
pub mod conditions;
pub mod diff;
pub mod facts;
pub mod fqdn;
pub mod hub_client;
pub mod hub_tls;
pub mod local_rules;
pub mod managed;
pub mod membership;
pub mod metrics;
pub mod reconcile;
pub mod retry;
pub mod run;
pub mod world;
