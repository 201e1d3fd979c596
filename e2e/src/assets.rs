//! Locating the `etcd`, `kube-apiserver` and `kube-controller-manager` binaries.
//!
//! Order: the `KUBEBUILDER_ASSETS` environment variable if it is set, else the last line printed by
//! `<workspace>/scripts/control-plane-assets` (run once per process; it builds and caches the binaries
//! from Debian's `kubernetes` source package on a cold machine). A missing binary is an error that says
//! how to get it: tests never skip.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;

use anyhow::{Context, Result, bail};

/// Environment variable naming a folder that holds the binaries (the envtest convention).
pub const ASSETS_ENV: &str = "KUBEBUILDER_ASSETS";

/// How to get the binaries, appended to every "not found" error.
const HOW_TO_FIX: &str = "run `scripts/control-plane-assets` from the workspace root (it builds etcd + \
     kube-apiserver v1.20.2 from Debian's source package and caches them; about 5 minutes cold) and \
     read its errors, or set KUBEBUILDER_ASSETS to a folder holding `etcd`, `kube-apiserver` and \
     `kube-controller-manager`";

/// The folder holding the control-plane binaries.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Assets {
    dir: PathBuf,
}

impl Assets {
    /// Finds the binaries: `KUBEBUILDER_ASSETS` if set, else `scripts/control-plane-assets` (its answer
    /// is cached for the rest of the process). Blocking: it may run the script.
    pub fn locate() -> Result<Self> {
        if let Some(dir) = std::env::var_os(ASSETS_ENV).filter(|v| !v.is_empty()) {
            return Ok(Self::from_dir(dir));
        }
        static FROM_SCRIPT: OnceLock<Result<PathBuf, String>> = OnceLock::new();
        match FROM_SCRIPT.get_or_init(|| run_assets_script().map_err(|e| format!("{e:#}"))) {
            Ok(dir) => Ok(Self::from_dir(dir)),
            Err(message) => bail!("{message}"),
        }
    }

    /// Uses `dir` as it is (nothing is checked until a binary is asked for).
    pub fn from_dir(dir: impl Into<PathBuf>) -> Self {
        Self { dir: dir.into() }
    }

    /// The folder.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Path of the `etcd` binary; an error if it is missing or not executable.
    pub fn etcd(&self) -> Result<PathBuf> {
        self.binary("etcd")
    }

    /// Path of the `kube-apiserver` binary; an error if it is missing or not executable.
    pub fn kube_apiserver(&self) -> Result<PathBuf> {
        self.binary("kube-apiserver")
    }

    /// Path of the `kube-controller-manager` binary; an error if it is missing or not executable.
    pub fn kube_controller_manager(&self) -> Result<PathBuf> {
        self.binary("kube-controller-manager")
    }

    fn binary(&self, name: &str) -> Result<PathBuf> {
        use std::os::unix::fs::PermissionsExt;
        let path = self.dir.join(name);
        let meta = std::fs::metadata(&path)
            .with_context(|| format!("`{name}` not found at {}; {HOW_TO_FIX}", path.display()))?;
        if !meta.is_file() || meta.permissions().mode() & 0o111 == 0 {
            bail!("{} is not an executable file; {HOW_TO_FIX}", path.display());
        }
        Ok(path)
    }
}

/// The workspace root: the parent of this crate's manifest folder.
pub fn workspace_root() -> PathBuf {
    let manifest_dir = Path::new(env!("CARGO_MANIFEST_DIR"));
    manifest_dir.parent().unwrap_or(manifest_dir).to_path_buf()
}

fn run_assets_script() -> Result<PathBuf> {
    let script = workspace_root().join("scripts").join("control-plane-assets");
    let output = Command::new(&script).output().with_context(|| {
        format!(
            "{ASSETS_ENV} is not set and {} could not be run; {HOW_TO_FIX}",
            script.display()
        )
    })?;
    let stdout = String::from_utf8_lossy(&output.stdout);
    if !output.status.success() {
        let stderr = String::from_utf8_lossy(&output.stderr);
        bail!(
            "{ASSETS_ENV} is not set and {} failed ({}); its last output:\n{}\n{HOW_TO_FIX}",
            script.display(),
            output.status,
            last_lines(&stderr, 20),
        );
    }
    let Some(dir) = stdout.lines().map(str::trim).rfind(|l| !l.is_empty()) else {
        bail!(
            "{} succeeded but printed no folder on stdout; {HOW_TO_FIX}",
            script.display()
        );
    };
    Ok(PathBuf::from(dir))
}

/// The last `n` lines of `text`.
pub(crate) fn last_lines(text: &str, n: usize) -> String {
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(n)..].join("\n")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn last_lines_keeps_the_tail() {
        assert_eq!(last_lines("a\nb\nc\n", 2), "b\nc");
        assert_eq!(last_lines("a", 5), "a");
        assert_eq!(last_lines("", 5), "");
    }

    #[test]
    fn missing_binary_error_names_path_and_fix() {
        let dir = tempfile::tempdir().unwrap();
        let err = Assets::from_dir(dir.path()).kube_apiserver().unwrap_err();
        let message = format!("{err:#}");
        assert!(message.contains(&dir.path().join("kube-apiserver").display().to_string()));
        assert!(message.contains("scripts/control-plane-assets"), "{message}");
        assert!(message.contains("KUBEBUILDER_ASSETS"), "{message}");
    }
}
