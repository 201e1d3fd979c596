//! One kube-apiserver (v1.20) per cluster, on its own etcd prefix of the shared etcd.

use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{Context, Result};
use tokio::time::Instant;

use crate::etcd::log_file_name;
use crate::kubeconfig::{client_from_kubeconfig, render_kubeconfig};
use crate::pki::Pki;
use crate::ports::free_port;
use crate::process::{ChildProcess, MAX_START_ATTEMPTS};
use crate::users::ADMIN_USER;

/// Everything that decides an API server's command line.
#[derive(Debug, Clone)]
pub(crate) struct ApiServerFlags {
    pub(crate) cluster: String,
    pub(crate) etcd_servers: String,
    pub(crate) port: u16,
    pub(crate) cert_dir: PathBuf,
    pub(crate) tls_cert: PathBuf,
    pub(crate) tls_key: PathBuf,
    pub(crate) token_auth_file: PathBuf,
    pub(crate) sa_pub: PathBuf,
    pub(crate) sa_key: PathBuf,
    pub(crate) rbac: bool,
    pub(crate) endpoint_reconciler_none: bool,
    pub(crate) extra_args: Vec<String>,
}

impl ApiServerFlags {
    /// The command-line arguments; `extra_args` come last.
    pub(crate) fn to_args(&self) -> Vec<String> {
        let path = |p: &Path| p.display().to_string();
        let mut args = vec![
            format!("--etcd-servers={}", self.etcd_servers),
            format!("--etcd-prefix=/{}", self.cluster),
            "--bind-address=127.0.0.1".to_string(),
            format!("--secure-port={}", self.port),
            "--advertise-address=127.0.0.1".to_string(),
            format!("--cert-dir={}", path(&self.cert_dir)),
            format!("--tls-cert-file={}", path(&self.tls_cert)),
            format!("--tls-private-key-file={}", path(&self.tls_key)),
            format!("--token-auth-file={}", path(&self.token_auth_file)),
            format!(
                "--authorization-mode={}",
                if self.rbac { "RBAC" } else { "AlwaysAllow" }
            ),
            "--service-cluster-ip-range=10.0.0.0/24".to_string(),
            "--service-account-issuer=https://kubernetes.default.svc".to_string(),
            format!("--service-account-key-file={}", path(&self.sa_pub)),
            format!("--service-account-signing-key-file={}", path(&self.sa_key)),
            "--disable-admission-plugins=ServiceAccount".to_string(),
        ];
        if self.endpoint_reconciler_none {
            args.push("--endpoint-reconciler-type=none".to_string());
        }
        args.extend(self.extra_args.iter().cloned());
        args
    }
}

/// What the caller decides for one API server.
#[derive(Debug)]
pub(crate) struct ApiServerSpec<'a> {
    pub(crate) cluster: &'a str,
    pub(crate) binary: &'a Path,
    pub(crate) cluster_dir: &'a Path,
    pub(crate) log_dir: &'a Path,
    pub(crate) etcd_servers: &'a str,
    pub(crate) pki: &'a Pki,
    pub(crate) token_auth_file: &'a Path,
    pub(crate) admin_token: &'a str,
    pub(crate) rbac: bool,
    pub(crate) endpoint_reconciler_none: bool,
    pub(crate) extra_args: &'a [String],
    pub(crate) startup_timeout: Duration,
}

/// A ready API server.
#[derive(Debug)]
pub(crate) struct RunningApiServer {
    pub(crate) process: ChildProcess,
    /// The binary and its arguments, to start it again on the same port and etcd prefix.
    pub(crate) command: (PathBuf, Vec<String>),
    pub(crate) port: u16,
    pub(crate) url: String,
    pub(crate) kubeconfig_yaml: String,
    pub(crate) client: ClientHandle,
}

/// `kube::Client` has no `Debug`; this wrapper gives it one.
#[derive(Clone)]
pub(crate) struct ClientHandle(pub(crate) kube::Client);

impl std::fmt::Debug for ClientHandle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("kube::Client")
    }
}

/// Starts the API server and waits until `/readyz` answers `ok` with the admin token. Retries on
/// other ports if its port was taken meanwhile.
pub(crate) async fn start_apiserver(spec: &ApiServerSpec<'_>) -> Result<RunningApiServer> {
    let serving = spec.pki.serving_cert(spec.cluster_dir, "apiserver-serving")?;
    let cert_dir = spec.cluster_dir.join("cert-dir");
    std::fs::create_dir_all(&cert_dir).with_context(|| format!("creating {}", cert_dir.display()))?;
    let mut attempt = 1;
    loop {
        let port = free_port()?;
        let url = format!("https://127.0.0.1:{port}");
        let flags = ApiServerFlags {
            cluster: spec.cluster.to_string(),
            etcd_servers: spec.etcd_servers.to_string(),
            port,
            cert_dir: cert_dir.clone(),
            tls_cert: serving.cert_path.clone(),
            tls_key: serving.key_path.clone(),
            token_auth_file: spec.token_auth_file.to_path_buf(),
            sa_pub: spec.pki.sa_pub_path.clone(),
            sa_key: spec.pki.sa_key_path.clone(),
            rbac: spec.rbac,
            endpoint_reconciler_none: spec.endpoint_reconciler_none,
            extra_args: spec.extra_args.to_vec(),
        };
        let kubeconfig_yaml =
            render_kubeconfig(spec.cluster, &url, &spec.pki.ca_cert_path, ADMIN_USER, spec.admin_token);
        let client = client_from_kubeconfig(&kubeconfig_yaml).await?;
        let name = format!("{} kube-apiserver", spec.cluster);
        let log_path = spec
            .log_dir
            .join(log_file_name(&format!("{}.kube-apiserver", spec.cluster), attempt));
        let args = flags.to_args();
        let mut process = ChildProcess::spawn(&name, spec.binary, &args, &log_path)?;
        let deadline = Instant::now() + spec.startup_timeout;
        match process.await_ready(deadline, || probe_readyz(client.clone())).await {
            Ok(()) => {
                tracing::info!(cluster = spec.cluster, %url, pid = process.pid(), "kube-apiserver ready");
                return Ok(RunningApiServer {
                    process,
                    command: (spec.binary.to_path_buf(), args),
                    port,
                    url,
                    kubeconfig_yaml,
                    client: ClientHandle(client),
                });
            }
            Err(failure) if failure.port_clash && attempt < MAX_START_ATTEMPTS => {
                tracing::warn!(cluster = spec.cluster, attempt, "port taken, retrying");
                attempt += 1;
            }
            Err(failure) => return Err(failure.error),
        }
    }
}

/// `GET /readyz` must answer `ok`, and the `default` namespace must exist: `/readyz` only waits for the bootstrap
/// controller to start, and a loaded machine can answer it before that controller has created the namespace.
pub(crate) async fn probe_readyz(client: kube::Client) -> Result<(), String> {
    let answer = get_text(&client, "/readyz").await?;
    if answer.trim() != "ok" {
        return Err(format!("GET /readyz answered {answer:?}"));
    }
    get_text(&client, "/api/v1/namespaces/default").await.map(drop)
}

async fn get_text(client: &kube::Client, path: &str) -> Result<String, String> {
    let request = http::Request::get(path).body(Vec::new()).map_err(|e| e.to_string())?;
    tokio::time::timeout(Duration::from_secs(3), client.request_text(request))
        .await
        .map_err(|_| format!("GET {path} timed out"))?
        .map_err(|e| format!("GET {path}: {e}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn flags() -> ApiServerFlags {
        ApiServerFlags {
            cluster: "c0".to_string(),
            etcd_servers: "http://127.0.0.1:2379".to_string(),
            port: 6443,
            cert_dir: "/w/c0/cert-dir".into(),
            tls_cert: "/w/c0/s.crt".into(),
            tls_key: "/w/c0/s.key".into(),
            token_auth_file: "/w/c0/tokens.csv".into(),
            sa_pub: "/w/sa.pub".into(),
            sa_key: "/w/sa.key".into(),
            rbac: false,
            endpoint_reconciler_none: false,
            extra_args: Vec::new(),
        }
    }

    #[test]
    fn default_args() {
        assert_eq!(
            flags().to_args(),
            [
                "--etcd-servers=http://127.0.0.1:2379",
                "--etcd-prefix=/c0",
                "--bind-address=127.0.0.1",
                "--secure-port=6443",
                "--advertise-address=127.0.0.1",
                "--cert-dir=/w/c0/cert-dir",
                "--tls-cert-file=/w/c0/s.crt",
                "--tls-private-key-file=/w/c0/s.key",
                "--token-auth-file=/w/c0/tokens.csv",
                "--authorization-mode=AlwaysAllow",
                "--service-cluster-ip-range=10.0.0.0/24",
                "--service-account-issuer=https://kubernetes.default.svc",
                "--service-account-key-file=/w/sa.pub",
                "--service-account-signing-key-file=/w/sa.key",
                "--disable-admission-plugins=ServiceAccount",
            ]
        );
    }

    #[test]
    fn rbac_reconciler_and_extra_args() {
        let args = ApiServerFlags {
            rbac: true,
            endpoint_reconciler_none: true,
            extra_args: vec!["--v=4".to_string()],
            ..flags()
        }
        .to_args();
        assert!(args.contains(&"--authorization-mode=RBAC".to_string()));
        assert_eq!(args[args.len() - 2..], ["--endpoint-reconciler-type=none", "--v=4"]);
    }
}
