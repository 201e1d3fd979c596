//! Self-tests of the harness against a real etcd + kube-apiserver v1.20: they prove the API
//! semantics Tollgate's controllers rely on, and that the harness cleans up after itself.
//! Each test starts its own control plane, so nextest runs them in parallel.

mod core_api;
mod custom_resources;
mod failures;
mod multi_cluster;
mod rbac;
mod support;
