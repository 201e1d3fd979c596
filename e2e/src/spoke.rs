//! The real spoke for tests and benchmarks: a cluster prepared like a vanilla one ([`VanillaCluster`]: the API
//! server's endpoints, kube-dns, an AgentRuntime CRD, namespaces) and the `tollgate-spoke` binary of this build run
//! against it ([`Spoke`]).
//!
//! ```no_run
//! use tollgate_e2e::fixtures::agent_runtime_crd;
//! use tollgate_e2e::spoke::{Spoke, VanillaCluster};
//!
//! # async fn demo() -> anyhow::Result<()> {
//! let control_plane = VanillaCluster::from_yaml(&agent_runtime_crd()?)?.start().await?;
//! let logs = tempfile::tempdir()?;
//! let spoke = Spoke::start(&control_plane.clusters()[0], logs.path(), &[]).await?;
//! assert_eq!(spoke.get("/readyz").await?.0, 200);
//! # Ok(()) }
//! ```

use std::net::IpAddr;
use std::path::Path;
use std::time::Duration;

use anyhow::{Context, Result, bail};
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;

use crate::fleet::{API_PORT, DNS_POD_IP, DNS_SERVICE_IP, TEAM_NS};
use crate::{ChildProcess, Cluster, ControlPlane, LOG_TAIL_LINES, binary, free_port, http_get, log_tail, wait_until};

/// How long [`Spoke::start`] and [`Spoke::wait_ready`] wait for `/readyz`.
pub const WAIT: Duration = Duration::from_secs(30);

/// The `--log-level` the tests run the spoke with.
pub const LOG_LEVEL: &str = "info,tollgate_spoke=debug";

/// The address of the `default/kubernetes` Endpoints of a [`VanillaCluster`] (on [`API_PORT`]).
pub const API_ADDRESS: &str = "192.0.2.10";

/// How kube-dns is made in a [`VanillaCluster`].
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum KubeDns {
    /// `kube-system/kube-dns` with named target ports ([`Cluster::create_dns_service`]).
    #[default]
    Service,
    /// `kube-system/kube-dns` as [`crate::fixtures::KUBE_DNS_YAML`] writes it (numeric target ports).
    Yaml,
    /// No kube-dns.
    None,
}

/// One cluster prepared like a vanilla one: its `default/kubernetes` Endpoints owned by the test
/// (`endpoint_reconciler_none`) at [`API_ADDRESS`] (or another address) on [`API_PORT`], kube-dns at [`DNS_SERVICE_IP`] /
/// [`DNS_POD_IP`], an AgentRuntime CRD and the namespaces (by default [`TEAM_NS`]).
#[derive(Clone, Debug)]
pub struct VanillaCluster {
    crd: CustomResourceDefinition,
    api_address: IpAddr,
    namespaces: Vec<String>,
    kube_dns: KubeDns,
    rbac: bool,
}

impl VanillaCluster {
    /// With `crd` as the AgentRuntime CRD (the spoke's own is `AgentRuntime::crd()`).
    pub fn new(crd: CustomResourceDefinition) -> Self {
        Self {
            crd,
            api_address: ip(API_ADDRESS),
            namespaces: vec![TEAM_NS.to_string()],
            kube_dns: KubeDns::default(),
            rbac: false,
        }
    }

    /// With the CRD of one YAML (or JSON) document, such as [`crate::fixtures::agent_runtime_crd`] or
    /// [`crate::fixtures::upstream_agent_runtime_crd`].
    pub fn from_yaml(yaml: &str) -> Result<Self> {
        Ok(Self::new(
            serde_yaml_ng::from_str(yaml).context("parsing a CustomResourceDefinition")?,
        ))
    }

    /// The address of the `default/kubernetes` Endpoints instead of [`API_ADDRESS`].
    #[must_use]
    pub fn api_address(mut self, address: IpAddr) -> Self {
        self.api_address = address;
        self
    }

    /// These namespaces instead of [`TEAM_NS`].
    #[must_use]
    pub fn namespaces(mut self, names: impl IntoIterator<Item = String>) -> Self {
        self.namespaces = names.into_iter().collect();
        self
    }

    /// How kube-dns is made.
    #[must_use]
    pub fn kube_dns(mut self, kube_dns: KubeDns) -> Self {
        self.kube_dns = kube_dns;
        self
    }

    /// The API server in RBAC mode (`--authorization-mode=RBAC`; the harness's admin stays allowed everything).
    #[must_use]
    pub fn rbac(mut self, rbac: bool) -> Self {
        self.rbac = rbac;
        self
    }

    /// A control plane of one cluster, prepared.
    pub async fn start(&self) -> Result<ControlPlane> {
        let control_plane = ControlPlane::builder()
            .clusters(1)
            .endpoint_reconciler_none(true)
            .rbac(self.rbac)
            .start()
            .await?;
        self.prepare(&control_plane.clusters()[0]).await?;
        Ok(control_plane)
    }

    /// Prepares `cluster` (started with `endpoint_reconciler_none`).
    pub async fn prepare(&self, cluster: &Cluster) -> Result<()> {
        cluster.install_crd(&self.crd).await?;
        cluster.set_api_endpoints(&[self.api_address], API_PORT).await?;
        for namespace in &self.namespaces {
            cluster.create_namespace(namespace).await?;
        }
        match self.kube_dns {
            KubeDns::Service => {
                cluster
                    .create_dns_service("kube-system", "kube-dns", DNS_SERVICE_IP, DNS_POD_IP, 53)
                    .await?;
            }
            KubeDns::Yaml => {
                cluster.apply_yaml(crate::fixtures::KUBE_DNS_YAML).await?;
            }
            KubeDns::None => {}
        }
        Ok(())
    }
}

/// An IP address from text.
///
/// # Panics
/// When `text` is not one.
pub fn ip(text: &str) -> IpAddr {
    text.parse().expect("a valid IP address")
}

/// `run --cluster-id ID --kubeconfig FILE --metrics-addr 127.0.0.1:PORT [--log-level LEVEL]`: the spoke against
/// one cluster, its health and metrics on `metrics_port`.
pub fn run_args(cluster_id: &str, kubeconfig: &Path, metrics_port: u16, log_level: Option<&str>) -> Vec<String> {
    let mut args = vec![
        "run".to_string(),
        "--cluster-id".into(),
        cluster_id.into(),
        "--kubeconfig".into(),
        kubeconfig.display().to_string(),
        "--metrics-addr".into(),
        format!("127.0.0.1:{metrics_port}"),
    ];
    if let Some(level) = log_level {
        args.extend(["--log-level".into(), level.into()]);
    }
    args
}

/// `tollgate-spoke` of this build as a command to add arguments to (for a run to its end).
pub fn command() -> Result<std::process::Command> {
    Ok(std::process::Command::new(binary("tollgate-spoke")?))
}

/// The real spoke binary, killed on drop.
#[derive(Debug)]
pub struct Spoke {
    pub process: ChildProcess,
    pub metrics_port: u16,
}

impl Spoke {
    /// Starts `tollgate-spoke run --standalone` against the cluster ([`run_args`] with [`LOG_LEVEL`], then `extra`)
    /// and waits until `/readyz` answers 200 (the first full pass is done).
    pub async fn start(cluster: &Cluster, log_dir: &Path, extra: &[&str]) -> Result<Self> {
        let mut args = vec!["--standalone"];
        args.extend_from_slice(extra);
        Self::start_with(cluster, log_dir, &args).await
    }

    /// Starts `tollgate-spoke run` with these flags (no `--standalone` added) and waits for `/readyz`.
    pub async fn start_with(cluster: &Cluster, log_dir: &Path, extra: &[&str]) -> Result<Self> {
        let spoke = Self::spawn_against(cluster, log_dir, Some(LOG_LEVEL), extra)?;
        spoke.wait_ready().await?;
        Ok(spoke)
    }

    /// Starts `tollgate-spoke` [`run_args`] (the cluster's name as its id, on a free port) and `extra` against
    /// `cluster`, without waiting.
    pub fn spawn_against(cluster: &Cluster, log_dir: &Path, log_level: Option<&str>, extra: &[&str]) -> Result<Self> {
        let metrics_port = free_port()?;
        let mut args = run_args(cluster.name(), cluster.kubeconfig_path(), metrics_port, log_level);
        args.extend(extra.iter().map(ToString::to_string));
        Self::spawn(&args, metrics_port, log_dir)
    }

    /// Starts the real spoke with exactly `args` (which must include `--metrics-addr=127.0.0.1:<metrics_port>`),
    /// logging to `log_dir/spoke-<metrics_port>.log`, without waiting for it to become ready.
    pub fn spawn(args: &[String], metrics_port: u16, log_dir: &Path) -> Result<Self> {
        Self::spawn_logging_to(args, metrics_port, &log_dir.join(format!("spoke-{metrics_port}.log")))
    }

    /// [`Self::spawn`] logging to `log`.
    pub fn spawn_logging_to(args: &[String], metrics_port: u16, log: &Path) -> Result<Self> {
        let process = ChildProcess::spawn("tollgate-spoke", &binary("tollgate-spoke")?, args, log)?;
        Ok(Self { process, metrics_port })
    }

    /// Waits until `/readyz` answers 200 (within [`WAIT`]); the error names the log and carries its tail.
    pub async fn wait_ready(&self) -> Result<()> {
        self.wait_ready_within(WAIT).await
    }

    /// [`Self::wait_ready`] within `timeout`.
    pub async fn wait_ready_within(&self, timeout: Duration) -> Result<()> {
        self.wait_readyz(timeout, false).await
    }

    /// Waits until `/readyz` answers at all, ready or not (a spoke that is expected not to become ready).
    pub async fn wait_answering(&self) -> Result<()> {
        self.wait_readyz(WAIT, true).await
    }

    async fn wait_readyz(&self, timeout: Duration, any_answer: bool) -> Result<()> {
        let log = self.process.log_path();
        wait_until(format!("spoke /readyz (log: {})", log.display()), timeout, || async {
            match self.get("/readyz").await {
                Ok((200, _)) => true,
                Ok(_) => any_answer,
                Err(_) => false,
            }
        })
        .await
        .map_err(|e| e.context(format!("spoke log:\n{}", log_tail(log, LOG_TAIL_LINES))))
    }

    /// Whether `/readyz` answers 200 now.
    pub async fn is_ready(&self) -> bool {
        matches!(self.get("/readyz").await, Ok((200, _)))
    }

    /// A plain HTTP GET on the metrics listener: (status, body).
    pub async fn get(&self, path: &str) -> Result<(u16, String)> {
        http_get(self.metrics_port, path).await
    }

    /// `/metrics`, which must answer 200.
    pub async fn metrics(&self) -> Result<String> {
        match self.get("/metrics").await? {
            (200, body) => Ok(body),
            (status, body) => bail!("/metrics answered {status}: {body}"),
        }
    }

    /// The spoke's log, for assertions and failure messages.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.process.log_path()).unwrap_or_default()
    }

    /// The file of its log.
    pub fn log_path(&self) -> &Path {
        self.process.log_path()
    }

    /// Its process id.
    pub fn pid(&self) -> u32 {
        self.process.pid()
    }

    /// SIGKILLs the spoke.
    pub fn kill(&mut self) {
        self.process.kill();
    }
}
