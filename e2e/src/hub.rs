//! The real hub for tests and benchmarks: certificates from `tollgate-hub certs`, `tollgate-hub serve` with mTLS on
//! its embedded store (or a shared one) with the flags of [`ServeArgs`], the admin CLI against it ([`crate::cli`]),
//! and the cluster registry filled as an admin would.

use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{Result, bail};

use crate::cli::Cli;
pub use crate::cli::CliOutput;
use crate::fixtures::ADMIN;
use crate::{ChildProcess, RAISE_NOFILE, binary, free_port, http_get, wait_until};

/// How long the hub may take to answer `/readyz`.
pub const START_TIMEOUT: Duration = Duration::from_secs(30);

/// The admin of the benchmarks' hubs ([`ServeArgs::bench`], [`issue_certificates_as`]).
pub const BENCH_ADMIN: &str = "bench";

/// The flags of `tollgate-hub serve` as the tests and benchmarks run it: mTLS with the certificates of
/// [`issue_certificates`] in `certs`, the embedded store in `data_dir` (or a shared store), loopback listeners.
#[derive(Clone, Debug)]
pub struct ServeArgs {
    /// `--listen 127.0.0.1:PORT` (gRPC).
    pub port: u16,
    /// `--metrics-addr 127.0.0.1:PORT` (`/readyz`, `/metrics`); 0 lets the hub pick a port, which nothing can then
    /// probe.
    pub metrics_port: u16,
    /// `--data-dir`.
    pub data_dir: PathBuf,
    /// The folder of `hub.pem`, `hub-key.pem` and `ca.pem` (`--tls-cert`, `--tls-key`, `--client-ca`).
    pub certs: PathBuf,
    /// `--admin`.
    pub admin: String,
    /// `--heartbeat-seconds`; `None` keeps the hub's default.
    pub heartbeat_seconds: Option<u32>,
    /// More flags, after the others.
    pub extra: Vec<String>,
}

impl ServeArgs {
    /// The tests' hub: 1 s heartbeats and the default admin ([`ADMIN`]) on the admin list.
    pub fn new(port: u16, metrics_port: u16, data_dir: &Path, certs: &Path) -> Self {
        Self {
            port,
            metrics_port,
            data_dir: data_dir.to_path_buf(),
            certs: certs.to_path_buf(),
            admin: ADMIN.to_string(),
            heartbeat_seconds: Some(1),
            extra: Vec::new(),
        }
    }

    /// The benchmarks' hub: the hub's own heartbeat period and [`BENCH_ADMIN`] on the admin list.
    pub fn bench(port: u16, metrics_port: u16, data_dir: &Path, certs: &Path) -> Self {
        Self::new(port, metrics_port, data_dir, certs)
            .admin(BENCH_ADMIN)
            .heartbeat_seconds(None)
    }

    /// `--admin NAME` instead of [`ADMIN`].
    #[must_use]
    pub fn admin(mut self, name: &str) -> Self {
        self.admin = name.to_string();
        self
    }

    /// `--heartbeat-seconds`, or (`None`) the hub's default.
    #[must_use]
    pub fn heartbeat_seconds(mut self, seconds: Option<u32>) -> Self {
        self.heartbeat_seconds = seconds;
        self
    }

    /// `--store URL --replica-id hub-REPLICA`: replica `replica` of a shared store.
    #[must_use]
    pub fn store(self, url: &str, replica: usize) -> Self {
        self.args(["--store", url, "--replica-id", &format!("hub-{replica}")])
    }

    /// `--client-ca-key` with the CA's key beside `ca.pem`: the hub signs joins and renewals.
    #[must_use]
    pub fn signing(self) -> Self {
        let key = self.certs.join("ca-key.pem").display().to_string();
        self.args(["--client-ca-key", &key])
    }

    /// More flags.
    #[must_use]
    pub fn args<S: ToString>(mut self, extra: impl IntoIterator<Item = S>) -> Self {
        self.extra.extend(extra.into_iter().map(|s| s.to_string()));
        self
    }

    /// `https://localhost:PORT`.
    pub fn url(&self) -> String {
        format!("https://localhost:{}", self.port)
    }

    /// The command line after the binary: `serve --listen … --admin NAME …`.
    pub fn to_args(&self) -> Vec<String> {
        let path = |name: &str| self.certs.join(name).display().to_string();
        let mut args = vec![
            "serve".into(),
            "--listen".into(),
            format!("127.0.0.1:{}", self.port),
            "--data-dir".into(),
            self.data_dir.display().to_string(),
            "--tls-cert".into(),
            path("hub.pem"),
            "--tls-key".into(),
            path("hub-key.pem"),
            "--client-ca".into(),
            path("ca.pem"),
            "--metrics-addr".into(),
            format!("127.0.0.1:{}", self.metrics_port),
        ];
        if let Some(seconds) = self.heartbeat_seconds {
            args.extend(["--heartbeat-seconds".into(), seconds.to_string()]);
        }
        args.extend(["--admin".into(), self.admin.clone()]);
        args.extend(self.extra.iter().cloned());
        args
    }
}

/// Runs `tollgate-hub certs STEP… --dir DIR` for each step in order (`["init"]`, `["hub"]`, `["admin"]`,
/// `["admin", "--name", NAME]`, `["spoke", "--cluster-id", ID]`); fails naming the first step that fails.
pub fn run_certs(dir: &Path, steps: &[&[&str]]) -> Result<()> {
    let dir_arg = dir.display().to_string();
    for step in steps {
        let mut args = vec!["certs"];
        args.extend(step.iter().copied());
        args.extend(["--dir", &dir_arg]);
        let output = Cli::new().run(&args)?;
        if !output.success {
            bail!("tollgate-hub {args:?}: {}", output.stderr);
        }
    }
    Ok(())
}

/// A CA with the hub's (for `localhost` and 127.0.0.1), the default admin's and these clusters' certificates, made by
/// `tollgate-hub certs` in `dir`: `ca.pem`, `hub.pem`, `admin-admin.pem`, `spoke-<id>.pem` and their keys.
pub fn issue_certificates(dir: &Path, clusters: &[&str]) -> Result<()> {
    issue_certificates_as(dir, ADMIN, clusters)
}

/// [`issue_certificates`] with the admin certificate issued to `admin` (`admin-<admin>.pem`).
pub fn issue_certificates_as(dir: &Path, admin: &str, clusters: &[&str]) -> Result<()> {
    let mut steps: Vec<Vec<&str>> = vec![vec!["init"], vec!["hub"], vec!["admin", "--name", admin]];
    steps.extend(clusters.iter().map(|id| vec!["spoke", "--cluster-id", id]));
    run_certs(dir, &steps.iter().map(Vec::as_slice).collect::<Vec<_>>())
}

/// Starts `tollgate-hub ARGS` of this build (with `env` added) as a [`ChildProcess`] logging to `log`, without
/// waiting; with `raise_nofile`, its open-file limit raised to the hard one first ([`RAISE_NOFILE`]; the process
/// id is the hub's all the same).
pub fn spawn_hub(args: &[String], env: &[(String, String)], raise_nofile: bool, log: &Path) -> Result<ChildProcess> {
    let hub = binary("tollgate-hub")?;
    if !raise_nofile {
        return ChildProcess::spawn_with_env("tollgate-hub", &hub, args, env, log);
    }
    let mut script = vec!["-c".to_string(), RAISE_NOFILE.into(), hub.display().to_string()];
    script.extend(args.iter().cloned());
    ChildProcess::spawn_with_env("tollgate-hub", Path::new("sh"), &script, env, log)
}

/// [`spawn_hub`], then waits until its metrics listener on `metrics_port` answers `/readyz` with 200.
pub async fn start_serving(
    args: &[String],
    env: &[(String, String)],
    metrics_port: u16,
    log: &Path,
    timeout: Duration,
) -> Result<ChildProcess> {
    let process = spawn_hub(args, env, false, log)?;
    wait_ready(metrics_port, log, timeout).await?;
    Ok(process)
}

/// Waits until the hub whose metrics listen on `metrics_port` answers `/readyz` with 200; the error names `log`.
pub async fn wait_ready(metrics_port: u16, log: &Path, timeout: Duration) -> Result<()> {
    wait_until(
        format!("hub /readyz (log: {})", log.display()),
        timeout,
        || async move { matches!(http_get(metrics_port, "/readyz").await, Ok((200, _))) },
    )
    .await
}

/// A running `tollgate-hub serve` (by default mTLS, 1 s heartbeats, the default admin on its admin list: see
/// [`ServeArgs`]), killed on drop (its [`ChildProcess`] is).
#[derive(Debug)]
pub struct HubServer {
    process: Option<ChildProcess>,
    /// Where its logs go.
    dir: PathBuf,
    serve: ServeArgs,
    starts: u32,
}

impl HubServer {
    /// Starts a hub whose data (`hub-data`) and logs live in `dir`, with the certificates of [`issue_certificates`]
    /// in `certs`, on free ports, and waits until it is ready.
    pub async fn start(dir: &Path, certs: &Path) -> Result<Self> {
        Self::start_with(dir, certs, &[]).await
    }

    /// [`Self::start`] with more `serve` flags.
    pub async fn start_with(dir: &Path, certs: &Path, extra: &[&str]) -> Result<Self> {
        let serve = ServeArgs::new(free_port()?, free_port()?, &dir.join("hub-data"), certs).args(extra);
        Self::serve(dir, serve).await
    }

    /// [`Self::start_with`] for a hub that signs joins and renewals ([`ServeArgs::signing`]: `--client-ca-key` with
    /// the CA's key in `certs`).
    pub async fn start_signing(dir: &Path, certs: &Path, extra: &[&str]) -> Result<Self> {
        let serve = ServeArgs::new(free_port()?, free_port()?, &dir.join("hub-data"), certs)
            .signing()
            .args(extra);
        Self::serve(dir, serve).await
    }

    /// Starts a hub with exactly these flags, its logs in `dir`, and waits until it is ready (`/readyz`, so
    /// `serve.metrics_port` must not be 0).
    pub async fn serve(dir: &Path, serve: ServeArgs) -> Result<Self> {
        if serve.metrics_port == 0 {
            bail!("a HubServer is probed on its metrics port: give it one");
        }
        let mut hub = Self {
            process: None,
            dir: dir.to_path_buf(),
            serve,
            starts: 0,
        };
        hub.restart().await?;
        Ok(hub)
    }

    /// [`Self::serve`] for a test that is not async: runs the start on a runtime of its own. Must not be called
    /// from within an async runtime.
    pub fn serve_blocking(dir: &Path, serve: ServeArgs) -> Result<Self> {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?
            .block_on(Self::serve(dir, serve))
    }

    /// Starts the hub again (killing it first if it runs) on the same ports and store.
    pub async fn restart(&mut self) -> Result<()> {
        self.kill();
        self.starts += 1;
        let log = self.dir.join(format!("hub.{}.log", self.starts));
        let process = start_serving(&self.serve.to_args(), &[], self.serve.metrics_port, &log, START_TIMEOUT).await?;
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
        self.serve.data_dir.clone()
    }

    /// SIGKILLs the hub (a crash, or an outage).
    pub fn kill(&mut self) {
        if let Some(mut process) = self.process.take() {
            process.kill();
        }
    }

    /// `https://localhost:PORT`.
    pub fn url(&self) -> String {
        self.serve.url()
    }

    /// Its `/metrics`, which must answer 200.
    pub async fn metrics(&self) -> Result<String> {
        match http_get(self.serve.metrics_port, "/metrics").await? {
            (200, body) => Ok(body),
            (status, body) => bail!("/metrics answered {status}: {body}"),
        }
    }

    /// Its gRPC port.
    pub fn port(&self) -> u16 {
        self.serve.port
    }

    /// The folder of its certificates.
    pub fn certs(&self) -> &Path {
        &self.serve.certs
    }

    /// The admin CLI against this hub with the default admin's certificate.
    pub fn admin_cli(&self) -> Cli {
        Cli::admin(&self.url(), self.certs())
    }

    /// Runs `tollgate-hub ARGS` against this hub with the default admin's certificate ([`Self::admin_cli`]).
    pub fn cli(&self, args: &[&str]) -> Result<CliOutput> {
        self.admin_cli().run(args)
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
        self.admin_cli().run_ok(args)
    }

    /// Registers cluster `id` with `labels` (`k=v,…`): `clusters add`.
    pub fn register(&self, id: &str, labels: &str) -> Result<()> {
        self.cli_ok(&["clusters", "add", id, "--labels", labels]).map(drop)
    }
}
