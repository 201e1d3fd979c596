//! One etcd member on loopback, shared by every API server of a [`crate::ControlPlane`].

use std::path::Path;
use std::time::Duration;

use anyhow::{Context, Result};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::time::Instant;

use crate::ports::free_port;
use crate::process::{ChildProcess, MAX_START_ATTEMPTS};

/// A running etcd; killed on drop.
#[derive(Debug)]
pub struct Etcd {
    process: ChildProcess,
    url: String,
}

impl Etcd {
    /// Starts etcd with its data under `work_dir` and waits until `/health` says true.
    /// Retries on other ports if a port was taken meanwhile.
    pub(crate) async fn start(binary: &Path, work_dir: &Path, log_dir: &Path, deadline: Instant) -> Result<Self> {
        let mut attempt = 1;
        loop {
            let client_port = free_port()?;
            let peer_port = free_port()?;
            let url = format!("http://127.0.0.1:{client_port}");
            let peer_url = format!("http://127.0.0.1:{peer_port}");
            let data_dir = work_dir.join(format!("etcd-data-{attempt}"));
            let args = vec![
                "--name=e2e".to_string(),
                format!("--data-dir={}", data_dir.display()),
                format!("--listen-client-urls={url}"),
                format!("--advertise-client-urls={url}"),
                format!("--listen-peer-urls={peer_url}"),
                format!("--initial-advertise-peer-urls={peer_url}"),
                format!("--initial-cluster=e2e={peer_url}"),
                "--initial-cluster-state=new".to_string(),
                "--logger=zap".to_string(),
                "--log-outputs=stderr".to_string(),
            ];
            let log_path = log_dir.join(log_file_name("etcd", attempt));
            let mut process = ChildProcess::spawn("etcd", binary, &args, &log_path)?;
            match process.await_ready(deadline, || probe_health(client_port)).await {
                Ok(()) => {
                    tracing::info!(%url, pid = process.pid(), "etcd ready");
                    return Ok(Self { process, url });
                }
                Err(failure) if failure.port_clash && attempt < MAX_START_ATTEMPTS => {
                    tracing::warn!(attempt, "etcd port taken, retrying on other ports");
                    attempt += 1;
                }
                Err(failure) => return Err(failure.error),
            }
        }
    }

    /// The client URL, `http://127.0.0.1:PORT`.
    pub fn url(&self) -> &str {
        &self.url
    }

    /// The etcd process (pid, log file).
    pub fn process(&self) -> &ChildProcess {
        &self.process
    }

    pub(crate) fn process_mut(&mut self) -> &mut ChildProcess {
        &mut self.process
    }
}

/// `<stem>.log` for the first attempt, `<stem>.attempt-N.log` after.
pub(crate) fn log_file_name(stem: &str, attempt: u32) -> String {
    if attempt == 1 {
        format!("{stem}.log")
    } else {
        format!("{stem}.attempt-{attempt}.log")
    }
}

/// `GET /health` over plain HTTP/1.0 (etcd's client port), expecting `"health":"true"`.
async fn probe_health(port: u16) -> Result<(), String> {
    async fn get(port: u16) -> Result<String> {
        let mut stream = TcpStream::connect(("127.0.0.1", port)).await.context("connecting")?;
        stream
            .write_all(b"GET /health HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n")
            .await
            .context("sending GET /health")?;
        let mut response = Vec::new();
        stream
            .read_to_end(&mut response)
            .await
            .context("reading the response")?;
        Ok(String::from_utf8_lossy(&response).into_owned())
    }
    let response = tokio::time::timeout(Duration::from_secs(2), get(port))
        .await
        .map_err(|_| "GET /health timed out".to_string())?
        .map_err(|e| format!("{e:#}"))?;
    if response.contains("\"health\":\"true\"") {
        Ok(())
    } else {
        Err(format!("GET /health answered {:?}", response.lines().last()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn log_file_names_count_attempts() {
        assert_eq!(log_file_name("etcd", 1), "etcd.log");
        assert_eq!(log_file_name("etcd", 2), "etcd.attempt-2.log");
    }
}
