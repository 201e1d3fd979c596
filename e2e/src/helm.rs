//! Rendering Tollgate's Helm charts without Helm: `deploy/tools/helm-render.sh`, a renderer faithful to
//! `helm template` (Go text/template with Sprig), built once per process and cached outside the clone.

use std::path::PathBuf;
use std::process::{Command, Output};
use std::sync::OnceLock;

use anyhow::{Context, Result, ensure};

use crate::workspace_root;

/// The renderer's binary, from `deploy/tools/helm-render.sh --build`.
pub fn renderer() -> Result<PathBuf> {
    static RENDERER: OnceLock<Result<PathBuf, String>> = OnceLock::new();
    RENDERER
        .get_or_init(|| {
            let script = workspace_root().join("deploy/tools/helm-render.sh");
            let output = Command::new(&script)
                .arg("--build")
                .output()
                .map_err(|e| format!("running {}: {e}", script.display()))?;
            if !output.status.success() {
                return Err(format!(
                    "{} --build failed ({}). It needs Debian's golang-go, golang-github-masterminds-sprig-dev, \
                     golang-k8s-sigs-yaml-dev and golang-github-xeipuuv-gojsonschema-dev (apt-get install them, or \
                     run ./scripts/test, which does):\n{}",
                    script.display(),
                    output.status,
                    String::from_utf8_lossy(&output.stderr)
                ));
            }
            let stdout = String::from_utf8_lossy(&output.stdout);
            let path = PathBuf::from(stdout.lines().last().unwrap_or_default().trim());
            if path.is_file() {
                Ok(path)
            } else {
                Err(format!(
                    "{} --build printed no binary path: {stdout:?}",
                    script.display()
                ))
            }
        })
        .clone()
        .map_err(anyhow::Error::msg)
}

/// `helm template NAME CHART -n NAMESPACE -f VALUES... [FLAGS]`, with `chart` relative to the workspace root and
/// each values document written to a file.
pub fn template(chart: &str, name: &str, namespace: &str, values: &[&str], flags: &[&str]) -> Result<Output> {
    let dir = tempfile::tempdir()?;
    let mut command = Command::new(renderer()?);
    command
        .current_dir(workspace_root())
        .args([name, chart, "--namespace", namespace]);
    for (i, values) in values.iter().enumerate() {
        let file = dir.path().join(format!("values-{i}.yaml"));
        std::fs::write(&file, values)?;
        command.arg("--values").arg(&file);
    }
    command.args(flags);
    command.output().with_context(|| format!("rendering {chart}"))
}

/// The rendered manifests; fails with the renderer's message.
pub fn render(chart: &str, name: &str, namespace: &str, values: &[&str]) -> Result<String> {
    let output = template(chart, name, namespace, values, &[])?;
    ensure!(
        output.status.success(),
        "rendering {chart} failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    Ok(String::from_utf8(output.stdout)?)
}

/// The renderer's message for values that must be refused.
pub fn render_error(chart: &str, name: &str, namespace: &str, values: &[&str]) -> Result<String> {
    let output = template(chart, name, namespace, values, &[])?;
    ensure!(!output.status.success(), "values {values:?} were rendered, not refused");
    Ok(String::from_utf8(output.stderr)?)
}
