//! Watch, server-side apply, conflicts and optimistic concurrency on core objects.

use anyhow::{Context, Result, bail};
use futures::{StreamExt, TryStreamExt};
use k8s_openapi::api::core::v1::ConfigMap;
use kube::api::{Api, Patch, PatchParams, PostParams};
use kube::runtime::watcher::{self, Event};
use tollgate_e2e::ControlPlane;

use crate::support::{QUICK, api_code, data_of, mk_config_map, pairs};

#[tokio::test]
async fn watcher_apply_conflict_and_stale_resource_version_semantics() -> Result<()> {
    let control_plane = ControlPlane::builder().start().await?;
    let cluster = &control_plane.clusters()[0];
    cluster.create_namespace("semantics").await?;
    let config_maps: Api<ConfigMap> = Api::namespaced(cluster.client(), "semantics");

    // kube-runtime's watcher (list + watch; no streaming list on v1.20) sees a later creation.
    let mut events = watcher::watcher(config_maps.clone(), watcher::Config::default()).boxed();
    let mut initial = Vec::new();
    loop {
        match tokio::time::timeout(QUICK, events.try_next()).await {
            Ok(Ok(Some(Event::InitDone))) => break,
            Ok(Ok(Some(Event::InitApply(cm)))) => initial.push(cm.metadata.name),
            Ok(Ok(Some(_))) => {}
            Ok(Ok(None)) => bail!("the watch stream ended during its initial list"),
            Ok(Err(e)) => return Err(e).context("watcher error during the initial list"),
            Err(_) => bail!("no InitDone within {QUICK:?}"),
        }
    }
    assert_eq!(initial, Vec::<Option<String>>::new(), "a new namespace starts empty");
    let manager_a = PatchParams::apply("manager-a");
    config_maps
        .patch("late", &manager_a, &Patch::Apply(mk_config_map("late", &[("k", "v")])))
        .await?;
    let seen = loop {
        match tokio::time::timeout(QUICK, events.try_next()).await {
            Ok(Ok(Some(Event::Apply(cm)))) if cm.metadata.name.as_deref() == Some("late") => {
                break cm;
            }
            Ok(Ok(Some(_))) => {}
            Ok(Ok(None)) => bail!("the watch stream ended"),
            Ok(Err(e)) => return Err(e).context("watcher error"),
            Err(_) => bail!("the watcher did not see ConfigMap \"late\" within {QUICK:?}"),
        }
    };
    assert_eq!(data_of(&seen), pairs(&[("k", "v")]));

    // Server-side apply creates, updates, and a re-apply of the same content writes nothing.
    let created = config_maps
        .patch(
            "applied",
            &manager_a,
            &Patch::Apply(mk_config_map("applied", &[("a", "1")])),
        )
        .await?;
    assert_eq!(data_of(&created), pairs(&[("a", "1")]));
    let updated = config_maps
        .patch(
            "applied",
            &manager_a,
            &Patch::Apply(mk_config_map("applied", &[("a", "2")])),
        )
        .await?;
    assert_eq!(data_of(&updated), pairs(&[("a", "2")]));
    assert_ne!(updated.metadata.resource_version, created.metadata.resource_version);
    let reapplied = config_maps
        .patch(
            "applied",
            &manager_a,
            &Patch::Apply(mk_config_map("applied", &[("a", "2")])),
        )
        .await?;
    assert_eq!(
        reapplied.metadata.resource_version, updated.metadata.resource_version,
        "re-applying identical content must not write"
    );
    let managers: Vec<_> = reapplied
        .metadata
        .managed_fields
        .iter()
        .flatten()
        .map(|m| (m.manager.clone(), m.operation.clone()))
        .collect();
    assert_eq!(managers, [(Some("manager-a".to_string()), Some("Apply".to_string()))]);

    // A second manager changing an owned field conflicts (409) without force, wins with force.
    let manager_b = PatchParams::apply("manager-b");
    let conflict = config_maps
        .patch(
            "applied",
            &manager_b,
            &Patch::Apply(mk_config_map("applied", &[("a", "3")])),
        )
        .await
        .expect_err("manager-b must conflict with manager-a on data.a");
    assert_eq!(api_code(&conflict), Some(409), "{conflict}");
    assert!(conflict.to_string().contains("manager-a"), "{conflict}");
    let forced = config_maps
        .patch(
            "applied",
            &manager_b.clone().force(),
            &Patch::Apply(mk_config_map("applied", &[("a", "3")])),
        )
        .await?;
    assert_eq!(data_of(&forced), pairs(&[("a", "3")]));

    // Replacing with a stale resourceVersion is a 409; with the current one it succeeds.
    let mut stale = config_maps.get("applied").await?;
    let mut current = config_maps
        .patch(
            "applied",
            &manager_b.clone().force(),
            &Patch::Apply(mk_config_map("applied", &[("a", "4")])),
        )
        .await?;
    stale.data = Some([("a".to_string(), "stale".to_string())].into());
    let err = config_maps
        .replace("applied", &PostParams::default(), &stale)
        .await
        .expect_err("a stale resourceVersion must be refused");
    assert_eq!(api_code(&err), Some(409), "{err}");
    current.data = Some([("a".to_string(), "5".to_string())].into());
    let replaced = config_maps.replace("applied", &PostParams::default(), &current).await?;
    assert_eq!(data_of(&replaced), pairs(&[("a", "5")]));
    Ok(())
}
