//! RBAC mode: an extra token user is forbidden until a Role is bound; the admin is in system:masters.

use anyhow::Result;
use k8s_openapi::api::core::v1::{ConfigMap, Namespace};
use kube::api::{Api, ListParams};
use tollgate_e2e::{ControlPlane, wait_until};

use crate::support::{QUICK, api_code};

const ALICE_TOKEN: &str = "alice-e2e-token";

const GRANT_READ_CONFIGMAPS: &str = r#"
apiVersion: v1
kind: Namespace
metadata: { name: team }
---
apiVersion: rbac.authorization.k8s.io/v1
kind: Role
metadata: { name: configmap-reader, namespace: team }
rules:
  - apiGroups: [""]
    resources: [configmaps]
    verbs: [get, list, watch]
---
apiVersion: rbac.authorization.k8s.io/v1
kind: RoleBinding
metadata: { name: devs-read-configmaps, namespace: team }
roleRef: { apiGroup: rbac.authorization.k8s.io, kind: Role, name: configmap-reader }
subjects:
  - { apiGroup: rbac.authorization.k8s.io, kind: Group, name: tollgate-devs }
"#;

#[tokio::test]
async fn rbac_user_forbidden_until_role_bound_via_apply_yaml() -> Result<()> {
    let control_plane = ControlPlane::builder()
        .rbac(true)
        .user("alice", ALICE_TOKEN, &["tollgate-devs"])
        .start()
        .await?;
    let cluster = &control_plane.clusters()[0];
    Api::<Namespace>::all(cluster.client())
        .list(&ListParams::default())
        .await?;

    let alice = cluster.client_for_token(ALICE_TOKEN).await?;
    let alice_team: Api<ConfigMap> = Api::namespaced(alice.clone(), "team");
    let err = alice_team
        .list(&ListParams::default())
        .await
        .expect_err("alice has no role yet");
    assert_eq!(api_code(&err), Some(403), "{err}");

    let applied = cluster.apply_yaml(GRANT_READ_CONFIGMAPS).await?;
    let kinds: Vec<_> = applied
        .iter()
        .map(|o| o.types.as_ref().map(|t| t.kind.as_str()).unwrap_or_default())
        .collect();
    assert_eq!(kinds, ["Namespace", "Role", "RoleBinding"]);
    wait_until("alice can list configmaps in team", QUICK, || async {
        alice_team.list(&ListParams::default()).await.is_ok()
    })
    .await?;
    let err = Api::<ConfigMap>::namespaced(alice, "default")
        .list(&ListParams::default())
        .await
        .expect_err("the Role is namespaced to team");
    assert_eq!(api_code(&err), Some(403), "{err}");
    Ok(())
}
