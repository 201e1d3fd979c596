//! A real DNS server for the tests of `fqdn` peers: Debian's dnsmasq on a loopback port, answering the names of
//! the `test.` domain from a hosts file that the test rewrites while it runs (SIGHUP reloads it), NXDOMAIN for
//! every other name under `test.`. Every query is logged, so a test can count the queries of one name.
//!
//! `scripts/test` installs dnsmasq (`dnsmasq-base`); without it [`DnsServer::start`] fails saying so.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{Context, Result, bail};
use tempfile::TempDir;

use crate::process::ChildProcess;
use crate::{free_port, wait_until};

/// Overrides where dnsmasq is (default: `/usr/sbin/dnsmasq`, else `dnsmasq` on `PATH`).
pub const DNSMASQ_ENV: &str = "TOLLGATE_DNSMASQ";

/// A dnsmasq process on 127.0.0.1, killed on drop.
pub struct DnsServer {
    process: ChildProcess,
    hosts: PathBuf,
    addr: SocketAddr,
    _dir: TempDir,
}

impl std::fmt::Debug for DnsServer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DnsServer").field("addr", &self.addr).finish()
    }
}

fn dnsmasq() -> Result<PathBuf> {
    if let Ok(path) = std::env::var(DNSMASQ_ENV) {
        return Ok(PathBuf::from(path));
    }
    let candidates = [PathBuf::from("/usr/sbin/dnsmasq"), PathBuf::from("/usr/bin/dnsmasq")];
    candidates.into_iter().find(|p| p.exists()).ok_or_else(|| {
        anyhow::anyhow!(
            "dnsmasq is not installed: the fqdn tests need a real DNS server (apt-get install dnsmasq-base, which \
             scripts/test does; or set {DNSMASQ_ENV})"
        )
    })
}

impl DnsServer {
    /// Starts dnsmasq answering `records` (`(name, address)`, several addresses per name allowed) with TTL
    /// `ttl_secs`.
    pub async fn start(records: &[(&str, &str)], ttl_secs: u32) -> Result<Self> {
        let program = dnsmasq()?;
        let dir = tempfile::Builder::new().prefix("tollgate-dns-").tempdir()?;
        let hosts = dir.path().join("hosts");
        write_records(&hosts, records)?;
        let port = free_port()?;
        let log = dir.path().join("dnsmasq.log");
        let args: Vec<String> = vec![
            "--keep-in-foreground".into(),
            "--conf-file=/dev/null".into(),
            format!("--port={port}"),
            "--listen-address=127.0.0.1".into(),
            "--bind-interfaces".into(),
            "--no-resolv".into(),
            "--no-hosts".into(),
            format!("--addn-hosts={}", hosts.display()),
            "--local=/test/".into(),
            format!("--local-ttl={ttl_secs}"),
            "--cache-size=0".into(),
            "--user=root".into(),
            "--pid-file=".into(),
            "--log-queries".into(),
            "--log-facility=-".into(),
        ];
        let mut process = ChildProcess::spawn("dnsmasq", &program, &args, &log)?;
        let started = wait_until("dnsmasq to listen", Duration::from_secs(10), || {
            let log = log.clone();
            async move { std::fs::read_to_string(&log).is_ok_and(|text| text.contains("started, version")) }
        })
        .await;
        if let Err(error) = started {
            process.check_running()?;
            return Err(error);
        }
        Ok(Self {
            process,
            hosts,
            addr: SocketAddr::from(([127, 0, 0, 1], port)),
            _dir: dir,
        })
    }

    /// `ADDRESS:PORT`, for `--fqdn-resolver`.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Replaces every record and makes dnsmasq reload them (it answers the new ones once this returns).
    pub async fn set_records(&self, records: &[(&str, &str)]) -> Result<()> {
        write_records(&self.hosts, records)?;
        let before = self.reloads();
        self.signal("-HUP")?;
        wait_until("dnsmasq to reload its hosts file", Duration::from_secs(10), || async {
            self.reloads() > before
        })
        .await
    }

    /// Stops answering (SIGSTOP) until [`Self::resume`]: queries time out.
    pub fn pause(&self) -> Result<()> {
        self.signal("-STOP")
    }

    pub fn resume(&self) -> Result<()> {
        self.signal("-CONT")
    }

    /// How many queries of `kind` (`A`, `AAAA`) for `name` the server received.
    pub fn queries(&self, kind: &str, name: &str) -> usize {
        let needle = format!("query[{kind}] {name} from");
        self.log().lines().filter(|line| line.contains(&needle)).count()
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(self.process.log_path()).unwrap_or_default()
    }

    fn reloads(&self) -> usize {
        let needle = format!("read {}", self.hosts.display());
        self.log().lines().filter(|line| line.contains(&needle)).count()
    }

    fn signal(&self, signal: &str) -> Result<()> {
        let status = std::process::Command::new("kill")
            .arg(signal)
            .arg(self.process.pid().to_string())
            .status()
            .context("running kill")?;
        if !status.success() {
            bail!("kill {signal} {} failed", self.process.pid());
        }
        Ok(())
    }
}

fn write_records(path: &Path, records: &[(&str, &str)]) -> Result<()> {
    let text: String = records.iter().map(|(name, ip)| format!("{ip} {name}\n")).collect();
    std::fs::write(path, text).with_context(|| format!("writing {}", path.display()))
}
