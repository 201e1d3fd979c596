//! One isolated cluster: a kube-apiserver on its own etcd prefix, plus an optional controller manager.

use std::fmt;
use std::path::{Path, PathBuf};

use std::time::Duration;

use anyhow::Result;
use tokio::time::Instant;

use crate::apiserver::{RunningApiServer, probe_readyz};
use crate::kubeconfig::{client_from_kubeconfig, config_from_kubeconfig, render_kubeconfig};
use crate::process::ChildProcess;

/// A running cluster of a [`crate::ControlPlane`]. Its processes die when the control plane is dropped.
pub struct Cluster {
    name: String,
    url: String,
    port: u16,
    admin_token: String,
    kubeconfig_path: PathBuf,
    ca_cert_path: PathBuf,
    client: kube::Client,
    // Fields drop in order: the controller manager goes before its API server.
    controller_manager: Option<ChildProcess>,
    apiserver: ChildProcess,
    apiserver_command: (PathBuf, Vec<String>),
    apiserver_starts: u32,
}

impl fmt::Debug for Cluster {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Cluster")
            .field("name", &self.name)
            .field("url", &self.url)
            .field("kubeconfig_path", &self.kubeconfig_path)
            .field("apiserver", &self.apiserver)
            .field("controller_manager", &self.controller_manager)
            .finish_non_exhaustive()
    }
}

impl Cluster {
    pub(crate) fn new(
        name: &str,
        admin_token: &str,
        kubeconfig_path: PathBuf,
        ca_cert_path: &Path,
        apiserver: RunningApiServer,
        controller_manager: Option<ChildProcess>,
    ) -> Self {
        Self {
            name: name.to_string(),
            url: apiserver.url,
            port: apiserver.port,
            admin_token: admin_token.to_string(),
            kubeconfig_path,
            ca_cert_path: ca_cert_path.to_path_buf(),
            client: apiserver.client.0,
            controller_manager,
            apiserver: apiserver.process,
            apiserver_command: apiserver.command,
            apiserver_starts: 1,
        }
    }

    /// The cluster name; also its etcd prefix (`/<name>`).
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The API server URL, `https://127.0.0.1:PORT`.
    pub fn url(&self) -> &str {
        &self.url
    }

    /// The API server's secure port.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// The admin bearer token (user `admin`, group `system:masters`).
    pub fn admin_token(&self) -> &str {
        &self.admin_token
    }

    /// A kubeconfig file for the admin token, trusting the control plane's CA.
    pub fn kubeconfig_path(&self) -> &Path {
        &self.kubeconfig_path
    }

    /// The PEM CA certificate that signed the API server's serving certificate.
    pub fn ca_cert_path(&self) -> &Path {
        &self.ca_cert_path
    }

    /// A ready admin client (cheap to clone).
    pub fn client(&self) -> kube::Client {
        self.client.clone()
    }

    /// Kubeconfig YAML for this cluster with another bearer token (e.g. a user added with
    /// [`crate::ControlPlaneBuilder::user`]).
    pub fn kubeconfig_for_token(&self, user: &str, token: &str) -> String {
        render_kubeconfig(&self.name, &self.url, &self.ca_cert_path, user, token)
    }

    /// A kube config for this cluster authenticating with `token`.
    pub async fn config_for_token(&self, token: &str) -> Result<kube::Config> {
        config_from_kubeconfig(&self.kubeconfig_for_token("user", token)).await
    }

    /// A client for this cluster authenticating with `token`.
    pub async fn client_for_token(&self, token: &str) -> Result<kube::Client> {
        client_from_kubeconfig(&self.kubeconfig_for_token("user", token)).await
    }

    /// The kube-apiserver process (pid, log file).
    pub fn apiserver_process(&self) -> &ChildProcess {
        &self.apiserver
    }

    /// Kills the kube-apiserver (SIGKILL) and reaps it: the cluster is down until [`Self::start_apiserver`].
    /// Its data stays in etcd.
    pub fn kill_apiserver(&mut self) {
        self.apiserver.kill();
    }

    /// Starts the kube-apiserver again (killing it first if it still runs) with its first command line: same
    /// port, certificates, tokens and etcd prefix, so every kubeconfig and client keeps working. Returns
    /// once `/readyz` answers `ok`; its log goes to a new file next to the first.
    pub async fn start_apiserver(&mut self, timeout: Duration) -> Result<()> {
        self.apiserver.kill();
        self.apiserver_starts += 1;
        let log_path = self.apiserver.log_path().with_file_name(format!(
            "{}.kube-apiserver.start{}.log",
            self.name, self.apiserver_starts
        ));
        let (binary, args) = &self.apiserver_command;
        let name = self.apiserver.name().to_string();
        self.apiserver = ChildProcess::spawn(&name, binary, args, &log_path)?;
        let client = self.client.clone();
        self.apiserver
            .await_ready(Instant::now() + timeout, || probe_readyz(client.clone()))
            .await
            .map_err(|failure| failure.error)
    }

    /// The kube-controller-manager process, if one was requested.
    pub fn controller_manager_process(&self) -> Option<&ChildProcess> {
        self.controller_manager.as_ref()
    }

    /// This cluster's processes, controller manager first.
    pub(crate) fn processes(&self) -> impl Iterator<Item = &ChildProcess> {
        self.controller_manager.iter().chain(std::iter::once(&self.apiserver))
    }
}
