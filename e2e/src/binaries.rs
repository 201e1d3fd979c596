//! The project's own binaries (`tollgate-hub`, `tollgate-spoke`) for tests and benchmarks of another package.
//!
//! Cargo exposes `CARGO_BIN_EXE_*` only to the package that owns a binary, so a test of this package finds them
//! in its own profile folder (`target/debug` for tests, `target/release` for benchmarks), where
//! `cargo nextest run --workspace` (the README's test command) has just built them.

use std::path::PathBuf;

use anyhow::{Context, Result, bail};

/// Overrides the folder holding `tollgate-hub` and `tollgate-spoke`.
pub const BIN_DIR_ENV: &str = "TOLLGATE_BIN_DIR";

/// The path of the workspace binary `name` (`tollgate-hub` or `tollgate-spoke`): from [`BIN_DIR_ENV`], else the
/// profile folder of the running test or benchmark. When it is missing there it is built with cargo (same
/// profile), so a test run of this package alone still works; a stale binary is the caller's build to refresh.
pub fn binary(name: &str) -> Result<PathBuf> {
    if let Some(dir) = std::env::var_os(BIN_DIR_ENV) {
        let path = PathBuf::from(dir).join(name);
        if !path.is_file() {
            bail!("{BIN_DIR_ENV} is set, but {} does not exist", path.display());
        }
        return Ok(path);
    }
    let exe = std::env::current_exe().context("locating the running test binary")?;
    // target/<profile>/deps/<test binary>
    let profile_dir = exe
        .parent()
        .and_then(|deps| deps.parent())
        .with_context(|| format!("{} is not inside a cargo target folder", exe.display()))?;
    let path = profile_dir.join(name);
    if path.is_file() {
        return Ok(path);
    }
    let package = name;
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let mut command = std::process::Command::new(cargo);
    command.args(["build", "--locked", "-p", package, "--bin", name]);
    if profile_dir.file_name().is_some_and(|p| p == "release") {
        command.arg("--release");
    }
    let status = command
        .status()
        .with_context(|| format!("running cargo to build {name}"))?;
    if !status.success() || !path.is_file() {
        bail!(
            "{name} is not in {} and building it failed; run `cargo build --workspace` first",
            profile_dir.display()
        );
    }
    Ok(path)
}
