//! Child processes that die with their handle, and their log files.
//!
//! Every child is spawned with stdin closed and stdout + stderr appended to one log file. Dropping a
//! [`ChildProcess`] sends SIGKILL and reaps the child, so a test that panics, returns early or drops a
//! start-up future half-way leaves no process behind. Children stay in the test's process group, so a
//! Ctrl-C or a test runner killing the group reaches them too.

use std::fmt;
use std::fs::{File, OpenOptions};
use std::future::Future;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::Duration;

use anyhow::{Context, Result};
use tokio::time::Instant;

use crate::assets::last_lines;

/// A shell script that raises the soft open-file limit to the hard one, then runs `$0 "$@"` in place of the shell:
/// `sh -c RAISE_NOFILE PROGRAM ARGS…` runs `PROGRAM ARGS…` (same process id) able to hold many connections.
pub const RAISE_NOFILE: &str = r#"ulimit -n "$(ulimit -Hn)" && exec "$0" "$@""#;

/// How many log lines an error or a dump shows.
pub const LOG_TAIL_LINES: usize = 40;

/// How often a process start is tried when its port was taken in the meantime.
pub(crate) const MAX_START_ATTEMPTS: u32 = 3;

/// A running child process, killed (SIGKILL) and reaped on drop.
pub struct ChildProcess {
    name: String,
    log_path: PathBuf,
    child: Child,
}

impl fmt::Debug for ChildProcess {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ChildProcess")
            .field("name", &self.name)
            .field("pid", &self.child.id())
            .field("log_path", &self.log_path)
            .finish()
    }
}

impl ChildProcess {
    /// Starts `program args…`, writing the command line and then its stdout + stderr to `log_path`.
    pub fn spawn(name: &str, program: &Path, args: &[String], log_path: &Path) -> Result<Self> {
        Self::spawn_with_env(name, program, args, &[], log_path)
    }

    /// [`Self::spawn`] with extra environment variables.
    pub fn spawn_with_env(
        name: &str,
        program: &Path,
        args: &[String],
        env: &[(String, String)],
        log_path: &Path,
    ) -> Result<Self> {
        let mut log = File::create(log_path).with_context(|| format!("creating log file {}", log_path.display()))?;
        writeln!(log, "$ {} {}", program.display(), args.join(" "))
            .with_context(|| format!("writing {}", log_path.display()))?;
        let log = OpenOptions::new()
            .append(true)
            .open(log_path)
            .with_context(|| format!("opening {}", log_path.display()))?;
        let stderr = log.try_clone().context("duplicating a log file handle")?;
        let child = Command::new(program)
            .args(args)
            .envs(env.iter().map(|(k, v)| (k, v)))
            .stdin(Stdio::null())
            .stdout(log)
            .stderr(stderr)
            .spawn()
            .with_context(|| format!("spawning {name} ({})", program.display()))?;
        tracing::debug!(name, pid = child.id(), log = %log_path.display(), "Spawned");
        Ok(Self {
            name: name.to_string(),
            log_path: log_path.to_path_buf(),
            child,
        })
    }

    /// A short name such as `cluster-0 kube-apiserver`.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The process id.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// The file holding the command line, stdout and stderr.
    pub fn log_path(&self) -> &Path {
        &self.log_path
    }

    /// The exit status if the process has exited (it is then reaped), `None` while it runs.
    pub fn exit_status(&mut self) -> Option<ExitStatus> {
        self.child.try_wait().ok().flatten()
    }

    /// An error naming the process, its log file and the log's tail if it has exited.
    pub fn check_running(&mut self) -> Result<()> {
        match self.exit_status() {
            None => Ok(()),
            Some(status) => Err(anyhow::anyhow!(
                "{} (pid {}) exited ({status}); log {}:\n{}",
                self.name,
                self.pid(),
                self.log_path.display(),
                log_tail(&self.log_path, LOG_TAIL_LINES)
            )),
        }
    }

    /// Sends SIGKILL and reaps the process; idempotent.
    pub fn kill(&mut self) {
        if self.exit_status().is_none() {
            // Fails only if the process has already exited, which `wait` handles below.
            let _ = self.child.kill();
        }
        let _ = self.child.wait();
    }

    /// Polls `probe` every 100 ms until it returns `Ok(())`; fails if the process exits first or
    /// `deadline` passes. Errors name the log file and include its tail, and
    /// [`StartFailure::port_clash`] says whether a retry on other ports may help.
    pub(crate) async fn await_ready<F, Fut>(&mut self, deadline: Instant, mut probe: F) -> Result<(), StartFailure>
    where
        F: FnMut() -> Fut,
        Fut: Future<Output = Result<(), String>>,
    {
        let started = Instant::now();
        let mut last = "no probe finished".to_string();
        loop {
            match tokio::time::timeout_at(deadline, probe()).await {
                Ok(Ok(())) => return Ok(()),
                Ok(Err(e)) => last = e,
                Err(_) => {} // Cut off by the deadline: keep the last finished probe's answer.
            }
            if let Some(status) = self.exit_status() {
                let tail = log_tail(&self.log_path, LOG_TAIL_LINES);
                return Err(StartFailure {
                    port_clash: is_port_clash(&tail),
                    error: anyhow::anyhow!(
                        "{} (pid {}) exited ({status}) before it was ready; log {}:\n{tail}",
                        self.name,
                        self.pid(),
                        self.log_path.display()
                    ),
                });
            }
            if Instant::now() >= deadline {
                return Err(StartFailure {
                    port_clash: false,
                    error: anyhow::anyhow!(
                        "{} (pid {}) was not ready after {:?} (last probe: {last}); log {}:\n{}",
                        self.name,
                        self.pid(),
                        started.elapsed(),
                        self.log_path.display(),
                        log_tail(&self.log_path, LOG_TAIL_LINES)
                    ),
                });
            }
            tokio::time::sleep_until((Instant::now() + Duration::from_millis(100)).min(deadline)).await;
        }
    }
}

impl Drop for ChildProcess {
    fn drop(&mut self) {
        self.kill();
        tracing::debug!(name = %self.name, pid = self.child.id(), "Killed");
    }
}

/// Why a process did not become ready.
#[derive(Debug)]
pub(crate) struct StartFailure {
    /// The process exited saying its port was taken: starting again on other ports may work.
    pub(crate) port_clash: bool,
    pub(crate) error: anyhow::Error,
}

/// Whether a log says a listener could not bind because the port was taken.
pub(crate) fn is_port_clash(log: &str) -> bool {
    log.contains("address already in use")
}

/// The last `lines` lines of a log file, or a note saying why it could not be read.
pub fn log_tail(path: &Path, lines: usize) -> String {
    match std::fs::read(path) {
        Ok(bytes) => last_lines(&String::from_utf8_lossy(&bytes), lines),
        Err(e) => format!("(could not read {}: {e})", path.display()),
    }
}

/// Whether a process with this id exists and is not a zombie (Linux `/proc`).
pub fn process_is_alive(pid: u32) -> bool {
    let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
        return false;
    };
    // Format: `pid (comm) state …`; comm may contain spaces and parentheses, so split at the last ')'.
    let state = stat
        .rsplit_once(')')
        .and_then(|(_, rest)| rest.trim_start().chars().next());
    !matches!(state, Some('Z' | 'X') | None)
}

/// Ids of live processes whose command line contains `needle` (Linux `/proc`), e.g. a work folder.
pub fn pids_with_cmdline_containing(needle: &str) -> Vec<u32> {
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    let own = std::process::id();
    let mut pids: Vec<u32> = entries
        .filter_map(|e| e.ok()?.file_name().to_str()?.parse::<u32>().ok())
        .filter(|&pid| pid != own)
        .filter(|&pid| {
            std::fs::read(format!("/proc/{pid}/cmdline"))
                .map(|raw| String::from_utf8_lossy(&raw).replace('\0', " ").contains(needle))
                .unwrap_or(false)
        })
        .filter(|&pid| process_is_alive(pid))
        .collect();
    pids.sort_unstable();
    pids
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn drop_kills_and_reaps_the_child() {
        let dir = tempfile::tempdir().unwrap();
        let log = dir.path().join("sleep.log");
        // A unique duration doubles as a marker to find the process by its command line.
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .subsec_nanos();
        let marker = format!("300.{nanos:09}");
        let child = ChildProcess::spawn("sleep", Path::new("/bin/sleep"), std::slice::from_ref(&marker), &log).unwrap();
        let pid = child.pid();
        assert!(process_is_alive(pid));
        // Between fork and exec the child still shows the parent's command line: wait for the exec.
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
        while pids_with_cmdline_containing(&marker).is_empty() && std::time::Instant::now() < deadline {
            std::thread::sleep(std::time::Duration::from_millis(10));
        }
        assert_eq!(pids_with_cmdline_containing(&marker), vec![pid]);
        drop(child);
        assert!(!process_is_alive(pid));
        assert!(pids_with_cmdline_containing(&marker).is_empty());
        assert_eq!(log_tail(&log, 5), format!("$ /bin/sleep {marker}"));
    }

    #[test]
    fn port_clash_is_recognised() {
        assert!(is_port_clash("listen tcp 127.0.0.1:4001: bind: address already in use"));
        assert!(!is_port_clash("unknown flag: --nope"));
    }
}
