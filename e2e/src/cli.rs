//! The `tollgate-hub` command line as a user runs it, for the tests and benchmarks of every package: the binary of
//! this build ([`crate::binary`]), optionally isolated from the CLI configuration of whoever runs the tests, and
//! optionally pointed at one hub with the default admin's certificate ([`crate::fixtures::admin_flags`]).
//!
//! ```no_run
//! use tollgate_e2e::cli::Cli;
//!
//! # fn demo(certs: &std::path::Path) -> anyhow::Result<()> {
//! let printed = Cli::admin("https://localhost:7443", certs).isolated().run_ok(&["status", "-o", "json"])?;
//! # Ok(()) }
//! ```

use std::ffi::OsStr;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use anyhow::{Context, Result, bail};

use crate::binaries::binary;
use crate::fixtures::admin_flags;

/// What `TOLLGATE_CONFIG` points at in an isolated run: a file that does not exist, so no context applies.
pub const NO_CONFIG: &str = "/nonexistent/tollgate-test-config.yaml";

/// The variables that would point the CLI at a hub or a context, removed in an isolated run.
pub const CONNECTION_ENV: [&str; 5] = [
    "TOLLGATE_HUB",
    "TOLLGATE_CA",
    "TOLLGATE_CERT",
    "TOLLGATE_KEY",
    "TOLLGATE_CONTEXT",
];

/// What a CLI call printed and how it ended.
#[derive(Clone, Debug)]
pub struct CliOutput {
    pub success: bool,
    pub stdout: String,
    pub stderr: String,
}

impl From<Output> for CliOutput {
    fn from(output: Output) -> Self {
        Self {
            success: output.status.success(),
            stdout: String::from_utf8_lossy(&output.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&output.stderr).into_owned(),
        }
    }
}

/// `tollgate-hub` of this build as a command to add arguments to, in the caller's environment.
///
/// # Panics
/// When the binary is neither in the profile folder nor can be built (see [`crate::binary`]), as a missing
/// `CARGO_BIN_EXE_tollgate-hub` would fail the build.
pub fn hub() -> Command {
    hub_command().expect("the tollgate-hub binary of this build")
}

fn hub_command() -> Result<Command> {
    Ok(Command::new(binary("tollgate-hub")?))
}

/// [`hub`] with no CLI configuration of the user's: `TOLLGATE_CONFIG` is [`NO_CONFIG`] and the
/// [`CONNECTION_ENV`] variables are removed (a test that wants a configuration sets `TOLLGATE_CONFIG` again).
pub fn isolated_hub() -> Command {
    let mut command = hub();
    isolate(&mut command);
    command
}

/// Hides the user's CLI configuration from `command` (see [`isolated_hub`]).
pub fn isolate(command: &mut Command) -> &mut Command {
    command.env("TOLLGATE_CONFIG", NO_CONFIG);
    for variable in CONNECTION_ENV {
        command.env_remove(variable);
    }
    command
}

/// How the CLI is run: with or without a hub to talk to, isolated or not.
#[derive(Clone, Debug, Default)]
pub struct Cli {
    /// The hub's URL and the folder of the admin certificate (`ca.pem`, `admin-admin.pem`, its key).
    hub: Option<(String, PathBuf)>,
    isolated: bool,
}

impl Cli {
    /// `tollgate-hub ARGS` with no connection flags, in the caller's environment.
    pub fn new() -> Self {
        Self::default()
    }

    /// `tollgate-hub ARGS --hub URL --ca … --cert … --key …` with the default admin's certificate of `certs`.
    pub fn admin(url: &str, certs: &Path) -> Self {
        Self {
            hub: Some((url.to_string(), certs.to_path_buf())),
            isolated: false,
        }
    }

    /// Runs with no CLI configuration of the user's ([`isolate`]).
    #[must_use]
    pub fn isolated(mut self) -> Self {
        self.isolated = true;
        self
    }

    /// The command of `args` (the connection flags after them), to run, spawn or adjust.
    pub fn command<S: AsRef<OsStr>>(&self, args: &[S]) -> Result<Command> {
        let mut command = hub_command()?;
        command.args(args);
        if let Some((url, certs)) = &self.hub {
            command.args(admin_flags(url, certs));
        }
        if self.isolated {
            isolate(&mut command);
        }
        Ok(command)
    }

    /// [`Self::command`] for an async runtime, killed when dropped.
    pub fn async_command<S: AsRef<OsStr>>(&self, args: &[S]) -> Result<tokio::process::Command> {
        let mut command = tokio::process::Command::from(self.command(args)?);
        command.kill_on_drop(true);
        Ok(command)
    }

    /// Runs `args` to the end: the process's own output.
    pub fn output<S: AsRef<OsStr> + std::fmt::Debug>(&self, args: &[S]) -> Result<Output> {
        self.command(args)?
            .output()
            .with_context(|| format!("running tollgate-hub {args:?}"))
    }

    /// Runs `args` to the end.
    pub fn run<S: AsRef<OsStr> + std::fmt::Debug>(&self, args: &[S]) -> Result<CliOutput> {
        Ok(self.output(args)?.into())
    }

    /// [`Self::run`] that must succeed: its standard output.
    pub fn run_ok<S: AsRef<OsStr> + std::fmt::Debug>(&self, args: &[S]) -> Result<String> {
        succeeded(args, self.run(args)?)
    }

    /// [`Self::run`] without blocking the async runtime.
    pub async fn run_async<S: AsRef<OsStr> + std::fmt::Debug>(&self, args: &[S]) -> Result<CliOutput> {
        let output = self
            .async_command(args)?
            .output()
            .await
            .with_context(|| format!("running tollgate-hub {args:?}"))?;
        Ok(output.into())
    }

    /// [`Self::run_async`] that must succeed: its standard output.
    pub async fn run_ok_async<S: AsRef<OsStr> + std::fmt::Debug>(&self, args: &[S]) -> Result<String> {
        succeeded(args, self.run_async(args).await?)
    }
}

/// The standard output of a call that must have succeeded.
fn succeeded<S: std::fmt::Debug>(args: &[S], output: CliOutput) -> Result<String> {
    if !output.success {
        bail!("tollgate-hub {args:?} failed:\n{}{}", output.stdout, output.stderr);
    }
    Ok(output.stdout)
}
