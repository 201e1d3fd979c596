//! [`ControlPlane`]: one etcd and N isolated clusters, started by [`ControlPlaneBuilder`].

use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{Context, Result, bail};
use tempfile::TempDir;
use tokio::time::Instant;

use crate::apiserver::{ApiServerSpec, start_apiserver};
use crate::assets::Assets;
use crate::cluster::Cluster;
use crate::controller_manager::spawn_controller_manager;
use crate::etcd::Etcd;
use crate::pki::{Pki, random_token};
use crate::process::{ChildProcess, log_tail, process_is_alive};
use crate::users::{ADMIN_USER, User, render_token_auth_file};

/// Set to `1` to keep the work folder (logs, kubeconfigs, certificates) after the control plane is
/// dropped; its path is printed on stderr.
pub const KEEP_LOGS_ENV: &str = "TOLLGATE_KEEP_LOGS";

/// Default deadline for each process to become ready.
pub const DEFAULT_STARTUP_TIMEOUT: Duration = Duration::from_secs(60);

/// How many log lines [`ControlPlane::dump_logs`] prints per process.
const DUMP_LINES: usize = 100;

/// Options for [`ControlPlane`]; see [`ControlPlane::builder`].
#[derive(Debug, Clone)]
pub struct ControlPlaneBuilder {
    cluster_names: Vec<String>,
    controller_manager: bool,
    rbac: bool,
    endpoint_reconciler_none: bool,
    users: Vec<User>,
    apiserver_args: Vec<String>,
    etcd_servers_override: Option<String>,
    startup_timeout: Duration,
    work_dir_parent: Option<PathBuf>,
    assets: Option<Assets>,
}

impl Default for ControlPlaneBuilder {
    fn default() -> Self {
        Self {
            cluster_names: vec!["cluster-0".to_string()],
            controller_manager: false,
            rbac: false,
            endpoint_reconciler_none: false,
            users: Vec::new(),
            apiserver_args: Vec::new(),
            etcd_servers_override: None,
            startup_timeout: DEFAULT_STARTUP_TIMEOUT,
            work_dir_parent: None,
            assets: None,
        }
    }
}

impl ControlPlaneBuilder {
    /// `n` clusters named `cluster-0` … `cluster-{n-1}` (default: one).
    pub fn clusters(mut self, n: usize) -> Self {
        self.cluster_names = (0..n).map(|i| format!("cluster-{i}")).collect();
        self
    }

    /// Clusters with these names (lowercase letters, digits and `-`); each is also an etcd prefix.
    pub fn cluster_names<I, S>(mut self, names: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        self.cluster_names = names.into_iter().map(Into::into).collect();
        self
    }

    /// Run a kube-controller-manager (garbage collector + namespace controller) per cluster.
    pub fn controller_manager(mut self, on: bool) -> Self {
        self.controller_manager = on;
        self
    }

    /// `--authorization-mode=RBAC` instead of `AlwaysAllow`; the admin user stays allowed everything
    /// through `system:masters`.
    pub fn rbac(mut self, on: bool) -> Self {
        self.rbac = on;
        self
    }

    /// `--endpoint-reconciler-type=none`: the test owns the `default/kubernetes` Endpoints
    /// (see [`Cluster::set_api_endpoints`]).
    pub fn endpoint_reconciler_none(mut self, on: bool) -> Self {
        self.endpoint_reconciler_none = on;
        self
    }

    /// Adds a user to every cluster's token file; connect as it with [`Cluster::client_for_token`].
    pub fn user(mut self, name: &str, token: &str, groups: &[&str]) -> Self {
        self.users.push(User::new(name, token, groups));
        self
    }

    /// Appends a raw kube-apiserver argument (experiments, failure tests).
    pub fn apiserver_arg(mut self, arg: impl Into<String>) -> Self {
        self.apiserver_args.push(arg.into());
        self
    }

    /// Points the API servers at this etcd URL instead of the harness's etcd (failure tests).
    pub fn etcd_servers_override(mut self, url: impl Into<String>) -> Self {
        self.etcd_servers_override = Some(url.into());
        self
    }

    /// Deadline for each process to become ready (default 60 s).
    pub fn startup_timeout(mut self, timeout: Duration) -> Self {
        self.startup_timeout = timeout;
        self
    }

    /// Creates the work folder inside `parent` (default: `/dev/shm` when writable, so etcd's fsyncs
    /// are cheap, else the system temp folder). Every child's command line names the work folder.
    pub fn work_dir_in(mut self, parent: impl Into<PathBuf>) -> Self {
        self.work_dir_parent = Some(parent.into());
        self
    }

    /// Uses these binaries instead of [`Assets::locate`].
    pub fn assets(mut self, assets: Assets) -> Self {
        self.assets = Some(assets);
        self
    }

    /// Starts etcd, then every cluster's API server in parallel (and controller managers), and
    /// returns once every API server's `/readyz` is ok. On failure every started process is killed
    /// and the work folder is kept so the log named in the error can be read. Dropping the future
    /// half-way kills what was started and removes the work folder.
    pub async fn start(self) -> Result<ControlPlane> {
        for name in &self.cluster_names {
            validate_cluster_name(name)?;
        }
        if self.cluster_names.is_empty() {
            bail!("a control plane needs at least one cluster");
        }
        let mut seen = std::collections::HashSet::new();
        if let Some(dup) = self.cluster_names.iter().find(|n| !seen.insert(*n)) {
            bail!("cluster name {dup:?} is used twice");
        }
        for user in &self.users {
            user.validate()?;
            if user.name() == ADMIN_USER {
                bail!("user name {ADMIN_USER:?} is reserved for the harness");
            }
        }
        let assets = match self.assets.clone() {
            Some(assets) => assets,
            None => tokio::task::spawn_blocking(Assets::locate)
                .await
                .context("locating the control-plane binaries")??,
        };
        let binaries = Binaries {
            etcd: assets.etcd()?,
            apiserver: assets.kube_apiserver()?,
            controller_manager: if self.controller_manager {
                Some(assets.kube_controller_manager()?)
            } else {
                None
            },
        };
        let parent = self.work_dir_parent.clone().unwrap_or_else(default_parent);
        let work_dir = tempfile::Builder::new()
            .prefix("tollgate-e2e-")
            .tempdir_in(&parent)
            .with_context(|| format!("creating a work folder in {}", parent.display()))?;
        match self.start_in(&binaries, work_dir.path()).await {
            Ok((etcd, clusters)) => Ok(ControlPlane {
                clusters,
                etcd,
                work_dir: Some(work_dir),
            }),
            Err(error) => {
                // Every process was killed when `start_in`'s future ended; keep the logs.
                let kept = keep_work_dir(work_dir);
                Err(error.context(format!(
                    "starting the control plane failed; its logs are kept in {}",
                    kept.display()
                )))
            }
        }
    }

    async fn start_in(&self, binaries: &Binaries, work_dir: &Path) -> Result<(Etcd, Vec<Cluster>)> {
        let log_dir = work_dir.join("logs");
        let pki_dir = work_dir.join("pki");
        for dir in [&log_dir, &pki_dir] {
            std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
        }
        let pki = Pki::generate(&pki_dir)?;
        let etcd = Etcd::start(
            &binaries.etcd,
            work_dir,
            &log_dir,
            Instant::now() + self.startup_timeout,
        )
        .await?;
        let etcd_servers = self
            .etcd_servers_override
            .clone()
            .unwrap_or_else(|| etcd.url().to_string());
        let starts = self.cluster_names.iter().map(|name| {
            let cluster_dir = work_dir.join(name);
            self.start_cluster(
                name,
                cluster_dir,
                &log_dir,
                &pki,
                &binaries.apiserver,
                binaries.controller_manager.as_deref(),
                &etcd_servers,
            )
        });
        let clusters = futures::future::try_join_all(starts).await?;
        Ok((etcd, clusters))
    }

    #[allow(clippy::too_many_arguments)]
    async fn start_cluster(
        &self,
        name: &str,
        cluster_dir: PathBuf,
        log_dir: &Path,
        pki: &Pki,
        apiserver_bin: &Path,
        controller_manager_bin: Option<&Path>,
        etcd_servers: &str,
    ) -> Result<Cluster> {
        std::fs::create_dir_all(&cluster_dir).with_context(|| format!("creating {}", cluster_dir.display()))?;
        let admin_token = random_token()?;
        let mut users = vec![User::new(ADMIN_USER, &admin_token, &["system:masters"])];
        users.extend(self.users.iter().cloned());
        let token_auth_file = cluster_dir.join("tokens.csv");
        std::fs::write(&token_auth_file, render_token_auth_file(&users)?)
            .with_context(|| format!("writing {}", token_auth_file.display()))?;
        let apiserver = start_apiserver(&ApiServerSpec {
            cluster: name,
            binary: apiserver_bin,
            cluster_dir: &cluster_dir,
            log_dir,
            etcd_servers,
            pki,
            token_auth_file: &token_auth_file,
            admin_token: &admin_token,
            rbac: self.rbac,
            endpoint_reconciler_none: self.endpoint_reconciler_none,
            extra_args: &self.apiserver_args,
            startup_timeout: self.startup_timeout,
        })
        .await?;
        let kubeconfig_path = cluster_dir.join("kubeconfig");
        std::fs::write(&kubeconfig_path, &apiserver.kubeconfig_yaml)
            .with_context(|| format!("writing {}", kubeconfig_path.display()))?;
        let controller_manager = match controller_manager_bin {
            Some(binary) => Some(spawn_controller_manager(name, binary, &kubeconfig_path, log_dir)?),
            None => None,
        };
        Ok(Cluster::new(
            name,
            &admin_token,
            kubeconfig_path,
            &pki.ca_cert_path,
            apiserver,
            controller_manager,
        ))
    }
}

/// Checked paths of the binaries a start needs.
#[derive(Debug)]
struct Binaries {
    etcd: PathBuf,
    apiserver: PathBuf,
    controller_manager: Option<PathBuf>,
}

/// One etcd and N isolated clusters (one kube-apiserver each on its own etcd prefix).
///
/// Dropping it kills every process (SIGKILL, then reaped) and removes the work folder, unless
/// `TOLLGATE_KEEP_LOGS=1`. If the thread is panicking (a failed assertion), the tail of every log is
/// printed on stderr first.
#[derive(Debug)]
pub struct ControlPlane {
    clusters: Vec<Cluster>,
    etcd: Etcd,
    work_dir: Option<TempDir>,
}

impl ControlPlane {
    /// Options, starting from one cluster, no controller manager, `AlwaysAllow`.
    pub fn builder() -> ControlPlaneBuilder {
        ControlPlaneBuilder::default()
    }

    /// The clusters, in the order they were named.
    pub fn clusters(&self) -> &[Cluster] {
        &self.clusters
    }

    /// The cluster with this name.
    pub fn cluster(&self, name: &str) -> Result<&Cluster> {
        self.clusters
            .iter()
            .find(|c| c.name() == name)
            .with_context(|| format!("no cluster named {name:?}"))
    }

    /// The cluster with this name, to restart its API server.
    pub fn cluster_mut(&mut self, name: &str) -> Result<&mut Cluster> {
        self.clusters
            .iter_mut()
            .find(|c| c.name() == name)
            .with_context(|| format!("no cluster named {name:?}"))
    }

    /// The shared etcd.
    pub fn etcd(&self) -> &Etcd {
        &self.etcd
    }

    /// The work folder (logs in `logs/`, a folder per cluster with its kubeconfig, `pki/`).
    pub fn work_dir(&self) -> &Path {
        self.work_dir
            .as_ref()
            .map(TempDir::path)
            .expect("the work folder is only taken on drop")
    }

    /// Ids of every process of this control plane (etcd, API servers, controller managers).
    pub fn pids(&self) -> Vec<u32> {
        self.processes().map(ChildProcess::pid).collect()
    }

    /// `(process name, log file)` for every process.
    pub fn log_files(&self) -> Vec<(String, PathBuf)> {
        self.processes()
            .map(|p| (p.name().to_string(), p.log_path().to_path_buf()))
            .collect()
    }

    /// Prints the last lines of every process's log on stderr (test runners show it for failures).
    pub fn dump_logs(&self) {
        for process in self.processes() {
            eprintln!(
                "===== {} (pid {}): {} (last {DUMP_LINES} lines) =====\n{}",
                process.name(),
                process.pid(),
                process.log_path().display(),
                log_tail(process.log_path(), DUMP_LINES)
            );
        }
    }

    /// An error naming the first process that is no longer running, with its log's tail.
    pub fn check_alive(&self) -> Result<()> {
        match self.processes().find(|p| !process_is_alive(p.pid())) {
            None => Ok(()),
            Some(p) => bail!(
                "{} (pid {}) is no longer running; log {}:\n{}",
                p.name(),
                p.pid(),
                p.log_path().display(),
                log_tail(p.log_path(), crate::process::LOG_TAIL_LINES)
            ),
        }
    }

    fn processes(&self) -> impl Iterator<Item = &ChildProcess> {
        std::iter::once(self.etcd.process()).chain(self.clusters.iter().flat_map(Cluster::processes))
    }
}

impl Drop for ControlPlane {
    fn drop(&mut self) {
        if std::thread::panicking() {
            self.dump_logs();
        }
        // Clusters first (controller managers, then API servers), then etcd.
        self.clusters.clear();
        self.etcd.process_mut().kill();
        if keep_logs_requested()
            && let Some(work_dir) = self.work_dir.take()
        {
            let kept = keep_work_dir(work_dir);
            eprintln!(
                "tollgate-e2e: {KEEP_LOGS_ENV}=1, work folder kept in {}",
                kept.display()
            );
        }
    }
}

fn keep_logs_requested() -> bool {
    std::env::var(KEEP_LOGS_ENV).is_ok_and(|v| v == "1")
}

/// Keeps the work folder on disk, minus etcd's data (tens of MB of preallocated WAL).
fn keep_work_dir(work_dir: TempDir) -> PathBuf {
    if let Ok(entries) = std::fs::read_dir(work_dir.path()) {
        for entry in entries.flatten() {
            if entry.file_name().to_string_lossy().starts_with("etcd-data-") {
                let _ = std::fs::remove_dir_all(entry.path());
            }
        }
    }
    work_dir.keep()
}

/// `/dev/shm` when it is a writable folder (etcd on tmpfs), else the system temp folder.
fn default_parent() -> PathBuf {
    let shm = Path::new("/dev/shm");
    let writable = shm.is_dir()
        && tempfile::Builder::new()
            .prefix(".tollgate-e2e-probe-")
            .tempfile_in(shm)
            .is_ok();
    if writable {
        shm.to_path_buf()
    } else {
        std::env::temp_dir()
    }
}

fn validate_cluster_name(name: &str) -> Result<()> {
    let ok = !name.is_empty()
        && name.len() <= 40
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        && !name.starts_with('-')
        && !name.ends_with('-');
    if !ok {
        bail!("cluster name {name:?} must be 1-40 lowercase letters, digits or '-', not starting or ending with '-'");
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cluster_names() {
        for good in ["a", "cluster-0", "hub", "spoke-a1"] {
            validate_cluster_name(good).unwrap();
        }
        for bad in ["", "A", "-a", "a-", "a/b", "a_b", &"x".repeat(41)] {
            assert!(validate_cluster_name(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn builder_names_clusters() {
        let b = ControlPlane::builder().clusters(3);
        assert_eq!(b.cluster_names, ["cluster-0", "cluster-1", "cluster-2"]);
        let b = b.cluster_names(["hub", "spoke"]);
        assert_eq!(b.cluster_names, ["hub", "spoke"]);
    }

    #[tokio::test]
    async fn missing_binaries_are_an_error_naming_the_fix() {
        let empty = tempfile::tempdir().unwrap();
        let err = ControlPlane::builder()
            .assets(Assets::from_dir(empty.path()))
            .work_dir_in(empty.path())
            .start()
            .await
            .unwrap_err();
        let message = format!("{err:#}");
        assert!(message.contains("`etcd` not found"), "{message}");
        assert!(message.contains("scripts/control-plane-assets"), "{message}");
        assert_eq!(
            std::fs::read_dir(empty.path()).unwrap().count(),
            0,
            "no work folder was made"
        );
    }
}
