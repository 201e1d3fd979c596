//! A CRD with a status subresource, custom-resource CRUD, and the finalizer lifecycle.

use anyhow::Result;
use kube::api::{Api, ApiResource, DeleteParams, DynamicObject, GroupVersionKind, ListParams, Patch, PatchParams};
use serde_json::json;
use tollgate_e2e::{ControlPlane, wait_for_deletion};

use crate::support::QUICK;

const WIDGET_CRD: &str = r#"
apiVersion: apiextensions.k8s.io/v1
kind: CustomResourceDefinition
metadata:
  name: widgets.e2e.tollgate.dev
spec:
  group: e2e.tollgate.dev
  scope: Namespaced
  names: { kind: Widget, plural: widgets, singular: widget, listKind: WidgetList }
  versions:
    - name: v1alpha1
      served: true
      storage: true
      subresources: { status: {} }
      schema:
        openAPIV3Schema:
          type: object
          properties:
            spec:
              type: object
              properties:
                size: { type: integer }
            status:
              type: object
              properties:
                phase: { type: string }
                observedGeneration: { type: integer }
"#;

const FINALIZER: &str = "e2e.tollgate.dev/guard";

fn widget_resource() -> ApiResource {
    ApiResource::from_gvk_with_plural(
        &GroupVersionKind::gvk("e2e.tollgate.dev", "v1alpha1", "Widget"),
        "widgets",
    )
}

fn size(w: &DynamicObject) -> Option<i64> {
    w.data["spec"]["size"].as_i64()
}

fn phase(w: &DynamicObject) -> Option<&str> {
    w.data["status"]["phase"].as_str()
}

#[tokio::test]
async fn crd_status_subresource_crud_and_finalizer_lifecycle() -> Result<()> {
    let control_plane = ControlPlane::builder().start().await?;
    let cluster = &control_plane.clusters()[0];
    let crd = cluster.install_crd_yaml(WIDGET_CRD).await?;
    assert!(tollgate_e2e::is_established(&crd));
    cluster.create_namespace("widgets").await?;
    let widgets: Api<DynamicObject> = Api::namespaced_with(cluster.client(), "widgets", &widget_resource());

    // Create through apply_yaml (discovery resolves the new kind).
    let applied = cluster
        .apply_yaml(
            "apiVersion: e2e.tollgate.dev/v1alpha1\nkind: Widget\n\
             metadata: { name: w1, namespace: widgets }\nspec: { size: 1 }\n",
        )
        .await?;
    assert_eq!(applied.len(), 1);
    let w1 = widgets.get("w1").await?;
    assert_eq!(
        (size(&w1), phase(&w1), w1.metadata.generation),
        (Some(1), None, Some(1))
    );

    // Status is written through /status and does not bump the generation.
    let w1 = widgets
        .patch_status(
            "w1",
            &PatchParams::default(),
            &Patch::Merge(json!({ "status": { "phase": "Ready", "observedGeneration": 1 } })),
        )
        .await?;
    assert_eq!((phase(&w1), w1.metadata.generation), (Some("Ready"), Some(1)));

    // A spec write ignores status and bumps the generation; a /status write ignores spec.
    let manager = PatchParams::apply("e2e-test").force();
    let w1 = widgets
        .patch(
            "w1",
            &manager,
            &Patch::Apply(json!({
                "apiVersion": "e2e.tollgate.dev/v1alpha1", "kind": "Widget",
                "metadata": { "name": "w1" },
                "spec": { "size": 2 }, "status": { "phase": "Hacked" },
            })),
        )
        .await?;
    assert_eq!(
        (size(&w1), phase(&w1), w1.metadata.generation),
        (Some(2), Some("Ready"), Some(2))
    );
    let w1 = widgets
        .patch_status(
            "w1",
            &PatchParams::default(),
            &Patch::Merge(json!({ "spec": { "size": 99 }, "status": { "phase": "Resized" } })),
        )
        .await?;
    assert_eq!(
        (size(&w1), phase(&w1), w1.metadata.generation),
        (Some(2), Some("Resized"), Some(2))
    );

    // List and delete (no finalizer: gone at once).
    let names: Vec<_> = widgets
        .list(&ListParams::default())
        .await?
        .items
        .into_iter()
        .map(|w| w.metadata.name)
        .collect();
    assert_eq!(names, [Some("w1".to_string())]);
    widgets.delete("w1", &DeleteParams::default()).await?;
    assert!(widgets.get_opt("w1").await?.is_none());

    // Finalizer: delete only marks the object; it goes once the finalizer is removed.
    widgets
        .patch(
            "guarded",
            &manager,
            &Patch::Apply(json!({
                "apiVersion": "e2e.tollgate.dev/v1alpha1", "kind": "Widget",
                "metadata": { "name": "guarded", "finalizers": [FINALIZER] },
                "spec": { "size": 1 },
            })),
        )
        .await?;
    widgets.delete("guarded", &DeleteParams::default()).await?;
    let marked = widgets.get("guarded").await?;
    assert!(marked.metadata.deletion_timestamp.is_some());
    assert_eq!(marked.metadata.finalizers, Some(vec![FINALIZER.to_string()]));
    // Still there after another round trip: nothing but us removes the finalizer.
    let listed = widgets.list(&ListParams::default()).await?;
    assert_eq!(listed.items.len(), 1);
    widgets
        .patch(
            "guarded",
            &PatchParams::default(),
            &Patch::Merge(json!({ "metadata": { "finalizers": null } })),
        )
        .await?;
    wait_for_deletion(&widgets, "guarded", QUICK).await?;
    Ok(())
}
