//! A real Kubernetes control plane for Tollgate's integration tests: one etcd and N isolated
//! clusters, each a kube-apiserver v1.20 on its own etcd prefix, optionally with a
//! kube-controller-manager (garbage collector + namespace controller). See `docs/testing.md`.
//!
//! Two real clusters in a few lines:
//!
//! ```no_run
//! use k8s_openapi::api::core::v1::ConfigMap;
//! use kube::api::{Api, Patch, PatchParams};
//! use tollgate_e2e::ControlPlane;
//!
//! # async fn demo() -> anyhow::Result<()> {
//! let control_plane = ControlPlane::builder().clusters(2).start().await?;
//! let [a, b] = control_plane.clusters() else { unreachable!("asked for two") };
//! let cm = serde_json::json!({
//!     "apiVersion": "v1", "kind": "ConfigMap", "metadata": { "name": "hello" },
//! });
//! Api::<ConfigMap>::default_namespaced(a.client())
//!     .patch("hello", &PatchParams::apply("demo"), &Patch::Apply(&cm))
//!     .await?;
//! assert!(Api::<ConfigMap>::default_namespaced(b.client()).get_opt("hello").await?.is_none());
//! # Ok(()) }
//! // Dropping `control_plane` kills every process and removes its work folder.
//! ```
//!
//! The binaries come from `KUBEBUILDER_ASSETS` or `scripts/control-plane-assets` ([`Assets`]); if
//! they cannot be had, [`ControlPlaneBuilder::start`] fails saying how to get them: tests never skip.
//! Limits of v1.20 to plan around: no `discovery.k8s.io/v1` EndpointSlices, no streaming lists
//! (`sendInitialEvents`), server-side apply rejects fields newer than 1.20, no pods (no kubelet).
//!
//! It is also the one test-support library of every crate's tests and benchmarks (each has it as a
//! dev-dependency):
//! - [`hub`]: certificates from `tollgate-hub certs`, the flags of `tollgate-hub serve` ([`hub::ServeArgs`]), the
//!   launcher ([`hub::HubServer`], [`hub::spawn_hub`], [`hub::start_serving`]);
//! - [`spoke`]: a cluster prepared like a vanilla one ([`spoke::VanillaCluster`]) and the spoke binary run against it
//!   ([`spoke::Spoke`]);
//! - [`cli`]: the admin CLI as a user runs it ([`cli::Cli`]), optionally isolated from the user's configuration;
//! - [`fixtures`]: CRDs, kube-dns objects, hand-written NetworkPolicies, the admin CLI's flags;
//! - [`rules`]: the egress rules the spoke writes, to compare with; [`fleet`]: a whole fleet; [`stats`]: percentiles.

mod apiserver;
mod assets;
mod binaries;
pub mod cli;
mod cluster;
mod control_plane;
mod controller_manager;
pub mod dns;
mod etcd;
pub mod fixtures;
pub mod fleet;
pub mod helm;
mod helpers;
mod http;
pub mod hub;
mod kubeconfig;
pub mod monitoring;
pub mod nca;
mod pki;
mod ports;
pub mod postgres;
mod process;
pub mod procfs;
pub mod rules;
pub mod spoke;
pub mod stats;
mod users;
mod wait;

pub use assets::{ASSETS_ENV, Assets, workspace_root};
pub use binaries::{BIN_DIR_ENV, binary};
pub use cluster::Cluster;
pub use control_plane::{ControlPlane, ControlPlaneBuilder, DEFAULT_STARTUP_TIMEOUT, KEEP_LOGS_ENV};
pub use dns::DnsServer;
pub use etcd::Etcd;
pub use helpers::{FIELD_MANAGER, SETUP_TIMEOUT, is_established};
pub use http::http_get;
pub use ports::free_port;
pub use postgres::{POSTGRES_BIN_ENV, POSTGRES_USER, Postgres};
pub use process::{
    ChildProcess, LOG_TAIL_LINES, RAISE_NOFILE, log_tail, pids_with_cmdline_containing, process_is_alive,
};
pub use users::{ADMIN_USER, User};
pub use wait::{POLL_INTERVAL, wait_for, wait_for_deletion, wait_for_object, wait_until};
