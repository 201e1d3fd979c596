//! The Helm chart `deploy/charts/tollgate-spoke`, proven without Helm: rendered by `deploy/tools/helm-render.sh`
//! (Go text/template + Sprig with Helm's engine semantics), applied server-side to a real kube-apiserver v1.20, and
//! run as the real spoke binary with the chart's ServiceAccount identity (a TokenRequest token) under RBAC: the
//! RBAC is sufficient (every mode reconciles) and minimal (removing any single grant is refused visibly).

#[path = "../support/mod.rs"]
mod support;

mod api_server;
mod helpers;
mod identity;
mod rbac;
mod values;
