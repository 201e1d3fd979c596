//! Token kubeconfigs and the kube clients built from them.

use std::path::Path;

use anyhow::{Context, Result};
use kube::config::{KubeConfigOptions, Kubeconfig};

/// A kubeconfig with one cluster (trusting the CA file), one token user and one current context.
pub(crate) fn render_kubeconfig(cluster: &str, server: &str, ca_path: &Path, user: &str, token: &str) -> String {
    let doc = serde_json::json!({
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": [{
            "name": cluster,
            "cluster": {
                "server": server,
                "certificate-authority": ca_path.display().to_string(),
            },
        }],
        "users": [{ "name": user, "user": { "token": token } }],
        "contexts": [{ "name": cluster, "context": { "cluster": cluster, "user": user } }],
        "current-context": cluster,
    });
    serde_yaml_ng::to_string(&doc).expect("a JSON value always serializes to YAML")
}

/// A kube client for a kubeconfig's current context.
pub(crate) async fn client_from_kubeconfig(yaml: &str) -> Result<kube::Client> {
    let config = config_from_kubeconfig(yaml).await?;
    kube::Client::try_from(config).context("building a kube client")
}

/// A kube config for a kubeconfig's current context.
pub(crate) async fn config_from_kubeconfig(yaml: &str) -> Result<kube::Config> {
    let kubeconfig = Kubeconfig::from_yaml(yaml).context("parsing a generated kubeconfig")?;
    kube::Config::from_custom_kubeconfig(kubeconfig, &KubeConfigOptions::default())
        .await
        .context("loading a generated kubeconfig")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kubeconfig_round_trips_through_kube() {
        let yaml = render_kubeconfig("c0", "https://127.0.0.1:6443", Path::new("/x/ca.crt"), "admin", "tok");
        let kc = Kubeconfig::from_yaml(&yaml).unwrap();
        assert_eq!(kc.current_context.as_deref(), Some("c0"));
        let cluster = kc.clusters[0].cluster.as_ref().unwrap();
        assert_eq!(cluster.server.as_deref(), Some("https://127.0.0.1:6443"));
        assert_eq!(cluster.certificate_authority.as_deref(), Some("/x/ca.crt"));
        assert_eq!(kc.auth_infos[0].name, "admin");
    }
}
