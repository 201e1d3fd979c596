//! The real hub for tests: certificates from `tollgate-hub certs`, `tollgate-hub serve` with mTLS on its embedded
//! store, the admin CLI against it, and the cluster registry filled as an admin would.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use anyhow::{Context, Result, bail};

use crate::fixtures::{ADMIN, admin_flags};
use crate::{ChildProcess, binary, free_port, http_get, wait_until};

/// How long the hub may take to answer `/readyz`.
const START_TIMEOUT: Duration = Duration::from_secs(30);

/// What a CLI call printed and how it ended.
#[derive(Clone, Debug)]
pub struct CliOutput {
    pub success: bool,
    pub stdout: String,
    pub stderr: String,
}

impl From<std::process::Output> for CliOutput {
    fn from(output: std::process::Output) -> Self {
        Self {
            success: output.status.success(),
            stdout: String::from_utf8_lossy(&output.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&output.stderr).into_owned(),
        }
    }
}

/// Runs `tollgate-hub ARGS` (any command; no connection flags added).
pub fn hub_command(args: &[&str]) -> Result<CliOutput> {
    let output = Command::new(binary("tollgate-hub")?)
        .args(args)
        .output()
        .with_context(|| format!("running tollgate-hub {args:?}"))?;
    Ok(output.into())
}

/// The arguments of `tollgate-hub serve` as the tests run it: mTLS with the certificates of [`issue_certificates`]
/// in `certs`, the embedded store in `data_dir`, 1 s heartbeats and the default admin on the admin list.
pub fn serve_args(port: u16, metrics_port: u16, data_dir: &Path, certs: &Path) -> Vec<String> {
    let path = |name: &str| certs.join(name).display().to_string();
    vec![
        "serve".into(),
        "--listen".into(),
        format!("127.0.0.1:{port}"),
        "--data-dir".into(),
        data_dir.display().to_string(),
        "--tls-cert".into(),
        path("hub.pem"),
        "--tls-key".into(),
        path("hub-key.pem"),
        "--client-ca".into(),
        path("ca.pem"),
        "--metrics-addr".into(),
        format!("127.0.0.1:{metrics_port}"),
        "--heartbeat-seconds".into(),
        "1".into(),
        "--admin".into(),
        ADMIN.into(),
    ]
}

/// A CA with the hub's (for `localhost` and 127.0.0.1), the default admin's and these clusters' certificates, made by
/// `tollgate-hub certs` in `dir`: `ca.pem`, `hub.pem`, `admin-admin.pem`, `spoke-<id>.pem` and their keys.
pub fn issue_certificates(dir: &Path, clusters: &[&str]) -> Result<()> {
    let dir_arg = dir.display().to_string();
    let mut steps: Vec<Vec<&str>> = vec![vec!["init"], vec!["hub"], vec!["admin"]];
    steps.extend(clusters.iter().map(|id| vec!["spoke", "--cluster-id", id]));
    for step in steps {
        let mut args = vec!["certs"];
        args.extend(step);
        args.extend(["--dir", &dir_arg]);
        let output = hub_command(&args)?;
        if !output.success {
            bail!("tollgate-hub {args:?}: {}", output.stderr);
        }
    }
    Ok(())
}

/// A running `tollgate-hub serve` (mTLS, 1 s heartbeats, the default admin on its admin list), killed on drop (its
/// [`ChildProcess`] is).
#[derive(Debug)]
pub struct HubServer {
    process: Option<ChildProcess>,
    dir: PathBuf,
    certs: PathBuf,
    /// More `serve` flags.
    extra: Vec<String>,
    port: u16,
    metrics_port: u16,
    starts: u32,
}

impl HubServer {
    /// Starts a hub whose data and log live in `dir`, with the certificates of [`issue_certificates`] in `certs`,
    /// and waits until it is ready.
    pub async fn start(dir: &Path, certs: &Path) -> Result<Self> {
        Self::start_with(dir, certs, &[]).await
    }

    /// [`Self::start`] with more `serve` flags.
    pub async fn start_with(dir: &Path, certs: &Path, extra: &[&str]) -> Result<Self> {
        let mut hub = Self {
            process: None,
            dir: dir.to_path_buf(),
            certs: certs.to_path_buf(),
            extra: extra.iter().map(ToString::to_string).collect(),
            port: free_port()?,
            metrics_port: free_port()?,
            starts: 0,
        };
        hub.restart().await?;
        Ok(hub)
    }

    /// Starts the hub again (killing it first if it runs) on the same ports and store.
    pub async fn restart(&mut self) -> Result<()> {
        self.kill();
        let mut args = serve_args(self.port, self.metrics_port, &self.data_dir(), &self.certs);
        args.extend(self.extra.iter().cloned());
        self.starts += 1;
        let log = self.dir.join(format!("hub.{}.log", self.starts));
        let process = ChildProcess::spawn("tollgate-hub", &binary("tollgate-hub")?, &args, &log)?;
        let metrics_port = self.metrics_port;
        wait_until(
            format!("hub /readyz (log: {})", log.display()),
            START_TIMEOUT,
            || async move { matches!(http_get(metrics_port, "/readyz").await, Ok((200, _))) },
        )
        .await?;
        self.process = Some(process);
        Ok(())
    }

    /// The hub's log (its latest start).
    pub fn log(&self) -> String {
        self.process
            .as_ref()
            .map(|p| std::fs::read_to_string(p.log_path()).unwrap_or_default())
            .unwrap_or_default()
    }

    /// The folder of its embedded store.
    pub fn data_dir(&self) -> PathBuf {
        self.dir.join("hub-data")
    }

    /// SIGKILLs the hub (a crash, or an outage).
    pub fn kill(&mut self) {
        if let Some(mut process) = self.process.take() {
            process.kill();
        }
    }

    /// `https://localhost:PORT`.
    pub fn url(&self) -> String {
        format!("https://localhost:{}", self.port)
    }

    /// The folder of its certificates.
    pub fn certs(&self) -> &Path {
        &self.certs
    }

    /// The admin CLI against this hub with the default admin's certificate.
    pub fn cli(&self, args: &[&str]) -> Result<CliOutput> {
        let output = Command::new(binary("tollgate-hub")?)
            .args(args)
            .args(admin_flags(&self.url(), &self.certs))
            .output()
            .with_context(|| format!("running tollgate-hub {args:?}"))?;
        Ok(output.into())
    }

    /// Waits until `clusters list` shows cluster `id` connected.
    pub async fn wait_connected(&self, id: &str) -> Result<()> {
        wait_until(
            format!("the hub shows cluster {id} connected"),
            START_TIMEOUT,
            || async {
                let listed: serde_json::Value = self
                    .cli_ok(&["clusters", "list", "-o", "json"])
                    .ok()
                    .and_then(|text| serde_json::from_str(&text).ok())
                    .unwrap_or_default();
                listed
                    .as_array()
                    .is_some_and(|rows| rows.iter().any(|r| r["cluster"] == id && r["connected"] == true))
            },
        )
        .await
    }

    /// [`Self::cli`] that must succeed: its standard output.
    pub fn cli_ok(&self, args: &[&str]) -> Result<String> {
        let output = self.cli(args)?;
        if !output.success {
            bail!("tollgate-hub {args:?} failed:\n{}{}", output.stdout, output.stderr);
        }
        Ok(output.stdout)
    }

    /// Registers cluster `id` with `labels` (`k=v,…`): `clusters add`.
    pub fn register(&self, id: &str, labels: &str) -> Result<()> {
        self.cli_ok(&["clusters", "add", id, "--labels", labels]).map(drop)
    }
}
