//! Failure paths: start-up errors name the log and leave no process; an aborted start leaves none.

use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{Context, Result};
use tollgate_e2e::{ControlPlane, pids_with_cmdline_containing, process_is_alive, wait_for};

use crate::support::CONTROLLER;

/// The single work folder the harness created in `parent`.
fn work_dir_in(parent: &Path) -> Result<PathBuf> {
    let mut dirs: Vec<PathBuf> = std::fs::read_dir(parent)?
        .map(|e| e.map(|e| e.path()))
        .collect::<Result<_, _>>()?;
    anyhow::ensure!(
        dirs.len() == 1,
        "expected one work folder in {parent:?}, found {dirs:?}"
    );
    Ok(dirs.remove(0))
}

#[tokio::test]
async fn failed_apiserver_starts_name_their_log_retry_port_clashes_and_leave_no_process() -> Result<()> {
    // Exits at once: an unknown flag.
    let parent = tempfile::tempdir()?;
    let marker = parent.path().display().to_string();
    let err = ControlPlane::builder()
        .apiserver_arg("--no-such-flag-for-e2e")
        .work_dir_in(parent.path())
        .start()
        .await
        .expect_err("an unknown flag must fail the start");
    let message = format!("{err:#}");
    eprintln!("{message}");
    let log = work_dir_in(parent.path())?.join("logs/cluster-0.kube-apiserver.log");
    assert!(message.contains(&log.display().to_string()), "{message}");
    assert!(message.contains("exited"), "{message}");
    assert!(message.contains("unknown flag: --no-such-flag-for-e2e"), "{message}");
    assert!(std::fs::read_to_string(&log)?.contains("unknown flag"));
    assert_eq!(pids_with_cmdline_containing(&marker), Vec::<u32>::new());

    // A taken port is retried on fresh ports; here the taken one is forced every time, so all three
    // attempts clash and each leaves its own log.
    let taken = std::net::TcpListener::bind("127.0.0.1:0")?;
    let parent = tempfile::tempdir()?;
    let marker = parent.path().display().to_string();
    let err = ControlPlane::builder()
        .apiserver_arg(format!("--secure-port={}", taken.local_addr()?.port()))
        .work_dir_in(parent.path())
        .start()
        .await
        .expect_err("a port that stays taken must fail the start");
    let message = format!("{err:#}");
    eprintln!("{message}");
    assert!(message.contains("address already in use"), "{message}");
    let logs = work_dir_in(parent.path())?.join("logs");
    for file in [
        "cluster-0.kube-apiserver.log",
        "cluster-0.kube-apiserver.attempt-2.log",
        "cluster-0.kube-apiserver.attempt-3.log",
    ] {
        assert!(logs.join(file).is_file(), "{file} in {logs:?}");
    }
    assert!(message.contains("attempt-3.log"), "{message}");
    assert_eq!(pids_with_cmdline_containing(&marker), Vec::<u32>::new());

    // Never ready: no etcd listens where it is told to look.
    let parent = tempfile::tempdir()?;
    let marker = parent.path().display().to_string();
    let err = ControlPlane::builder()
        .etcd_servers_override("http://127.0.0.1:1")
        .startup_timeout(Duration::from_secs(8))
        .work_dir_in(parent.path())
        .start()
        .await
        .expect_err("an API server without etcd must not become ready");
    let message = format!("{err:#}");
    eprintln!("{message}");
    let log = work_dir_in(parent.path())?.join("logs/cluster-0.kube-apiserver.log");
    assert!(message.contains(&log.display().to_string()), "{message}");
    assert!(
        message.contains("was not ready after") || message.contains("exited"),
        "{message}"
    );
    assert_eq!(pids_with_cmdline_containing(&marker), Vec::<u32>::new());
    Ok(())
}

#[tokio::test]
async fn aborting_a_start_midway_kills_every_child_and_removes_the_work_folder() -> Result<()> {
    let parent = tempfile::tempdir()?;
    let marker = parent.path().display().to_string();
    let start = tokio::spawn(ControlPlane::builder().clusters(2).work_dir_in(parent.path()).start());
    // Abort once an API server is running (etcd is up by then), before it is ready.
    let cert_dir_flag = format!("--cert-dir={marker}");
    let spawned = wait_for("a kube-apiserver of ours to run", CONTROLLER, || async {
        let apiservers = pids_with_cmdline_containing(&cert_dir_flag);
        Ok((!apiservers.is_empty()).then(|| pids_with_cmdline_containing(&marker)))
    })
    .await?;
    assert!(spawned.len() >= 2, "etcd and an API server: {spawned:?}");
    start.abort();
    let outcome = start.await;
    assert!(
        outcome.as_ref().is_err_and(|e| e.is_cancelled()),
        "the start should have been cancelled, not finished: {:?}",
        outcome.map(|r| r.map(|_| ()))
    );
    let alive: Vec<_> = spawned.iter().copied().filter(|&pid| process_is_alive(pid)).collect();
    assert_eq!(alive, Vec::<u32>::new());
    assert_eq!(pids_with_cmdline_containing(&marker), Vec::<u32>::new());
    let left = std::fs::read_dir(parent.path())
        .context("reading the parent folder")?
        .count();
    assert_eq!(left, 0, "the work folder is removed");
    Ok(())
}
