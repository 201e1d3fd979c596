//! A real API server accepts every rendered object.

use anyhow::{Context, Result};
use tollgate_e2e::monitoring;

use crate::helpers::*;
use crate::support::*;

#[tokio::test]
async fn every_rendered_object_is_accepted_by_a_real_api_server() -> Result<()> {
    let cp = rbac_cluster().await?;
    let cluster = &cp.clusters()[0];
    for namespace in [RELEASE_NS, "platform", "openshift-dns", "team-b"] {
        cluster.create_namespace(namespace).await?;
    }
    // The Prometheus Operator's kinds, so that the monitoring objects are applied too.
    cluster.apply_yaml(monitoring::STAND_IN_CRDS).await?;
    for (name, namespace, values) in [
        (RELEASE, RELEASE_NS, vec![]),
        ("ocp", "platform", vec![OPENSHIFT_HUB]),
        ("lab", "platform", vec![CUSTOM]),
        ("existing", "platform", vec![EXISTING_IDENTITY]),
        ("watched", "team-b", vec![MONITORING]),
    ] {
        let text = render(name, namespace, &values, &["--include-crds"])?;
        let chart = Rendered::parse(text.clone())?;
        // Server-side apply: the API server validates every field against its schema (unknown fields included).
        let applied = cluster
            .apply_yaml(&text)
            .await
            .with_context(|| format!("applying release {name} ({values:?})"))?;
        assert_eq!(applied.len(), chart.objects.len(), "release {name}");
        for (object, applied) in chart.objects.iter().zip(&applied) {
            let applied = serde_json::to_value(applied)?;
            assert_eq!(applied["metadata"]["name"], object["metadata"]["name"]);
            for field in ["rules", "roleRef", "subjects"] {
                assert_eq!(
                    applied[field], object[field],
                    "{field} of {}",
                    object["metadata"]["name"]
                );
            }
            if object["kind"] == "Deployment" {
                let container = &applied["spec"]["template"]["spec"]["containers"][0];
                assert_eq!(container["args"], chart.container()["args"]);
                assert_eq!(container["securityContext"], chart.container()["securityContext"]);
                assert_eq!(
                    applied["spec"]["template"]["spec"]["securityContext"],
                    chart.pod()["securityContext"]
                );
            }
        }
    }
    Ok(())
}
