//! The CLI against a real fleet where scripts depend on it: `status --watch` to a pipe prints each change as one
//! JSON line with no control characters, `status --fail-on-disconnected` exits 3 once a cluster is gone, and
//! `version` shows the spoke's own version.

use std::process::Stdio;

use anyhow::{Context, Result, ensure};
use serde_json::Value;
use tokio::io::{AsyncBufReadExt, BufReader};
use tollgate_e2e::fleet::{Fleet, WAIT, three_clusters};

use crate::support::*;

#[tokio::test]
async fn status_watch_to_a_pipe_and_fail_on_disconnected() -> Result<()> {
    let mut fleet = Fleet::start_with(three_clusters().into_iter().take(1).collect()).await?;
    let healthy = fleet
        .admin_cli(0)
        .isolated()
        .async_command(&["status", "--fail-on-disconnected"])?
        .output()
        .await?;
    ensure!(
        healthy.status.code() == Some(0),
        "{}",
        String::from_utf8_lossy(&healthy.stderr)
    );

    // Every version, and no skew: the spoke reported its own (with its facts, which reach the hub's store shortly
    // after the spoke is ready: the hub writes reports once per tick).
    let v = env!("CARGO_PKG_VERSION");
    let expected = format!("client: {v}\nhub:    {v}\nCLUSTER     SPOKE\nprod-east   {v}\n");
    let mut version = fleet
        .admin_cli(0)
        .isolated()
        .async_command(&["version"])?
        .output()
        .await?;
    let deadline = std::time::Instant::now() + WAIT;
    while String::from_utf8_lossy(&version.stdout) != expected && std::time::Instant::now() < deadline {
        tokio::time::sleep(std::time::Duration::from_millis(200)).await;
        version = fleet
            .admin_cli(0)
            .isolated()
            .async_command(&["version"])?
            .output()
            .await?;
    }
    assert_eq!(String::from_utf8_lossy(&version.stdout), expected);
    assert_eq!(String::from_utf8_lossy(&version.stderr), "", "no skew warning");

    let mut watch = fleet
        .admin_cli(0)
        .isolated()
        .async_command(&["status", "--watch", "-o", "json"])?
        .stdout(Stdio::piped())
        .spawn()?;
    let mut lines = BufReader::new(watch.stdout.take().context("stdout")?).lines();
    let mut next = async || -> Result<Value> {
        let line = tokio::time::timeout(WAIT, lines.next_line())
            .await
            .context("no line from status --watch")??
            .context("status --watch ended")?;
        ensure!(!line.chars().any(char::is_control), "a control character in {line:?}");
        Ok(serde_json::from_str(&line)?)
    };
    let first = next().await?;
    assert_eq!(
        (first["cluster"].as_str(), first["connected"].as_bool()),
        (Some("prod-east"), Some(true))
    );
    fleet.kill_spoke(PROD_EAST);
    // Heartbeats are not changes: the next line is the disconnection.
    let gone = next().await?;
    assert_eq!(
        (gone["cluster"].as_str(), gone["connected"].as_bool()),
        (Some("prod-east"), Some(false)),
        "{gone}"
    );
    watch.kill().await?;

    let unhealthy = fleet
        .admin_cli(0)
        .isolated()
        .async_command(&["status", "--fail-on-disconnected", "--no-headers"])?
        .output()
        .await?;
    assert_eq!(unhealthy.status.code(), Some(3));
    let stderr = String::from_utf8_lossy(&unhealthy.stderr);
    assert!(stderr.starts_with("cluster prod-east: disconnected"), "{stderr}");
    let stdout = String::from_utf8_lossy(&unhealthy.stdout);
    assert!(stdout.starts_with("prod-east "), "no header: {stdout}");
    Ok(())
}
