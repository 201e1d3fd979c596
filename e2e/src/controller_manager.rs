//! An optional kube-controller-manager per cluster, running only the garbage collector and the
//! namespace controller (owner-reference cascades, namespace deletion). It serves no port, so there
//! is no readiness probe: tests poll for its effects with a deadline.

use std::path::Path;

use anyhow::Result;

use crate::process::ChildProcess;

/// The command line (v1.20 flags).
pub(crate) fn controller_manager_args(kubeconfig: &Path) -> Vec<String> {
    let kubeconfig = kubeconfig.display();
    vec![
        format!("--kubeconfig={kubeconfig}"),
        format!("--authentication-kubeconfig={kubeconfig}"),
        format!("--authorization-kubeconfig={kubeconfig}"),
        "--controllers=garbagecollector,namespace".to_string(),
        "--leader-elect=false".to_string(),
        "--secure-port=0".to_string(),
        "--port=0".to_string(),
    ]
}

/// Spawns the controller manager for `cluster`, logging to `<cluster>.kube-controller-manager.log`.
pub(crate) fn spawn_controller_manager(
    cluster: &str,
    binary: &Path,
    kubeconfig: &Path,
    log_dir: &Path,
) -> Result<ChildProcess> {
    ChildProcess::spawn(
        &format!("{cluster} kube-controller-manager"),
        binary,
        &controller_manager_args(kubeconfig),
        &log_dir.join(format!("{cluster}.kube-controller-manager.log")),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn args() {
        assert_eq!(
            controller_manager_args(Path::new("/w/kc")),
            [
                "--kubeconfig=/w/kc",
                "--authentication-kubeconfig=/w/kc",
                "--authorization-kubeconfig=/w/kc",
                "--controllers=garbagecollector,namespace",
                "--leader-elect=false",
                "--secure-port=0",
                "--port=0",
            ]
        );
    }
}
