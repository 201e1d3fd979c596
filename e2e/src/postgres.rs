//! A real PostgreSQL server for tests: Debian's server binaries (`/usr/lib/postgresql/<major>/bin`, or the folder in
//! [`POSTGRES_BIN_ENV`]), a fresh cluster made by `initdb` in a temporary folder, listening on loopback only, killed
//! by PID when dropped. `scripts/test` installs the `postgresql` package; without it [`Postgres::start`] fails
//! saying so (tests never skip). As root, `initdb` and `postgres` run as the `postgres` user (they refuse root).

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use anyhow::{Context, Result, bail};
use tempfile::TempDir;
use tokio::time::Instant;

use crate::pki::Pki;
use crate::ports::free_port;
use crate::process::{ChildProcess, MAX_START_ATTEMPTS};

/// Overrides the folder holding `initdb` and `postgres`.
pub const POSTGRES_BIN_ENV: &str = "TOLLGATE_POSTGRES_BIN";
/// The superuser of the test cluster (trust authentication on loopback).
pub const POSTGRES_USER: &str = "tollgate";
const STARTUP: Duration = Duration::from_secs(60);

/// A running PostgreSQL server.
#[derive(Debug)]
pub struct Postgres {
    process: ChildProcess,
    port: u16,
    databases: AtomicU32,
    /// With TLS: the CA that signed the server's certificate (SANs 127.0.0.1 and localhost).
    ca: Option<PathBuf>,
    // Last: removed after the process is killed.
    dir: TempDir,
}

/// The folder with `initdb` and `postgres` (and the client tools, `pg_dump`, `pg_restore`).
pub fn binaries() -> Result<PathBuf> {
    if let Some(dir) = std::env::var_os(POSTGRES_BIN_ENV) {
        let dir = PathBuf::from(dir);
        if !dir.join("postgres").is_file() || !dir.join("initdb").is_file() {
            bail!("{POSTGRES_BIN_ENV}={} must hold initdb and postgres", dir.display());
        }
        return Ok(dir);
    }
    let mut found: Vec<(u32, PathBuf)> = std::fs::read_dir("/usr/lib/postgresql")
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|entry| {
            let major = entry.file_name().to_str()?.parse::<u32>().ok()?;
            let bin = entry.path().join("bin");
            (bin.join("postgres").is_file() && bin.join("initdb").is_file()).then_some((major, bin))
        })
        .collect();
    found.sort();
    found.pop().map(|(_, bin)| bin).with_context(|| {
        format!(
            "no PostgreSQL server in /usr/lib/postgresql/*/bin: install Debian's `postgresql` package \
             (./scripts/test does) or set {POSTGRES_BIN_ENV}"
        )
    })
}

/// `(uid, gid)` of the `postgres` account, when running as root.
fn run_as() -> Result<Option<(u32, u32)>> {
    let status = std::fs::read_to_string("/proc/self/status").context("reading /proc/self/status")?;
    let root = status
        .lines()
        .find_map(|l| l.strip_prefix("Uid:"))
        .and_then(|l| l.split_whitespace().nth(1))
        == Some("0");
    if !root {
        return Ok(None);
    }
    let passwd = std::fs::read_to_string("/etc/passwd").context("reading /etc/passwd")?;
    let entry = passwd
        .lines()
        .find(|l| l.starts_with("postgres:"))
        .context("running as root, but there is no `postgres` account to run PostgreSQL as (install Debian's postgresql package)")?;
    let fields: Vec<&str> = entry.split(':').collect();
    let id = |i: usize| fields.get(i).and_then(|f| f.parse::<u32>().ok());
    match (id(2), id(3)) {
        (Some(uid), Some(gid)) => Ok(Some((uid, gid))),
        _ => bail!("unreadable /etc/passwd entry for postgres: {entry:?}"),
    }
}

/// The program and arguments, wrapped in `setpriv` to drop root.
fn command(program: &Path, args: &[String], user: Option<(u32, u32)>) -> (PathBuf, Vec<String>) {
    match user {
        None => (program.to_path_buf(), args.to_vec()),
        Some((uid, gid)) => {
            let mut wrapped = vec![
                format!("--reuid={uid}"),
                format!("--regid={gid}"),
                "--clear-groups".to_string(),
                "--".to_string(),
                program.display().to_string(),
            ];
            wrapped.extend_from_slice(args);
            (PathBuf::from("setpriv"), wrapped)
        }
    }
}

impl Postgres {
    /// `initdb` in a new temporary folder, then `postgres` on a free loopback port; returns once it accepts
    /// connections.
    pub async fn start() -> Result<Self> {
        Self::launch(false).await
    }

    /// [`Self::start`] with TLS on (`ssl=on`, a server certificate from a CA of its own, see [`Self::ca_path`]).
    /// Plaintext connections are still accepted, so tests can tell which one a client made (`pg_stat_ssl`).
    pub async fn start_with_tls() -> Result<Self> {
        Self::launch(true).await
    }

    /// The PEM CA certificate that signed the server's certificate, when started with TLS.
    pub fn ca_path(&self) -> Option<&Path> {
        self.ca.as_deref()
    }

    async fn launch(tls: bool) -> Result<Self> {
        let bin = binaries()?;
        let user = run_as()?;
        let dir = tempfile::Builder::new().prefix("tollgate-postgres-").tempdir()?;
        if let Some((uid, gid)) = user {
            std::os::unix::fs::chown(dir.path(), Some(uid), Some(gid))
                .with_context(|| format!("handing {} to the postgres account", dir.path().display()))?;
        }
        let data = dir.path().join("data");
        let (program, args) = command(
            &bin.join("initdb"),
            &[
                "-D".into(),
                data.display().to_string(),
                "-U".into(),
                POSTGRES_USER.into(),
                "-A".into(),
                "trust".into(),
                "-E".into(),
                "UTF8".into(),
                "--locale=C".into(),
                "--no-sync".into(),
            ],
            user,
        );
        let output = tokio::process::Command::new(&program)
            .args(&args)
            .output()
            .await
            .with_context(|| format!("running {}", program.display()))?;
        if !output.status.success() {
            bail!(
                "initdb failed: {}{}",
                String::from_utf8_lossy(&output.stdout),
                String::from_utf8_lossy(&output.stderr)
            );
        }
        let mut tls_args = Vec::new();
        let mut ca = None;
        if tls {
            let pki_dir = dir.path().join("pki");
            std::fs::create_dir_all(&pki_dir)?;
            let pki = Pki::generate(&pki_dir)?;
            let serving = pki.serving_cert(&pki_dir, "postgres-server")?;
            // PostgreSQL refuses a key readable by others or owned by another user.
            std::fs::set_permissions(&serving.key_path, std::os::unix::fs::PermissionsExt::from_mode(0o600))?;
            if let Some((uid, gid)) = user {
                for path in [&pki_dir, &serving.cert_path, &serving.key_path] {
                    std::os::unix::fs::chown(path, Some(uid), Some(gid))
                        .with_context(|| format!("handing {} to the postgres account", path.display()))?;
                }
            }
            tls_args = vec![
                "-c".to_string(),
                "ssl=on".to_string(),
                "-c".to_string(),
                format!("ssl_cert_file={}", serving.cert_path.display()),
                "-c".to_string(),
                format!("ssl_key_file={}", serving.key_path.display()),
            ];
            ca = Some(pki.ca_cert_path.clone());
        }
        let mut attempt = 1;
        loop {
            let port = free_port()?;
            let (program, args) = command(
                &bin.join("postgres"),
                &[
                    "-D".into(),
                    data.display().to_string(),
                    "-h".into(),
                    "127.0.0.1".into(),
                    "-p".into(),
                    port.to_string(),
                    "-k".into(),
                    dir.path().display().to_string(),
                    "-c".into(),
                    "max_connections=300".into(),
                ]
                .into_iter()
                .chain(tls_args.iter().cloned())
                .collect::<Vec<_>>(),
                user,
            );
            let log = dir.path().join(format!("postgres-{attempt}.log"));
            let mut process = ChildProcess::spawn("postgres", &program, &args, &log)?;
            let url = format!("postgres://{POSTGRES_USER}@127.0.0.1:{port}/postgres");
            let probe = || {
                let url = url.clone();
                async move {
                    tokio_postgres::connect(&url, tokio_postgres::NoTls)
                        .await
                        .map(drop)
                        .map_err(|e| e.to_string())
                }
            };
            match process.await_ready(Instant::now() + STARTUP, probe).await {
                Ok(()) => {
                    tracing::info!(port, pid = process.pid(), "PostgreSQL ready");
                    return Ok(Self {
                        process,
                        port,
                        databases: AtomicU32::new(0),
                        ca,
                        dir,
                    });
                }
                Err(failure) if failure.port_clash && attempt < MAX_START_ATTEMPTS => attempt += 1,
                Err(failure) => return Err(failure.error),
            }
        }
    }

    /// The URL of `database`.
    pub fn url(&self, database: &str) -> String {
        format!("postgres://{POSTGRES_USER}@127.0.0.1:{}/{database}", self.port)
    }

    /// Creates a new empty database and returns its URL.
    pub async fn create_database(&self) -> Result<String> {
        let name = format!("tollgate_{}", self.databases.fetch_add(1, Ordering::Relaxed));
        let (client, connection) = tokio_postgres::connect(&self.url("postgres"), tokio_postgres::NoTls)
            .await
            .context("connecting to the test PostgreSQL")?;
        let connection = tokio::spawn(connection);
        client
            .batch_execute(&format!("CREATE DATABASE {name}"))
            .await
            .with_context(|| format!("CREATE DATABASE {name}"))?;
        drop(client);
        let _ = connection.await;
        Ok(self.url(&name))
    }

    /// The server process (pid, log file).
    pub fn process(&self) -> &ChildProcess {
        &self.process
    }

    /// The folder of the cluster and its logs.
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }
}
