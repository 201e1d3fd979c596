//! Whether local rules can exist in this cluster. Where the agent operator owns the `AgentRuntime` CRD (the
//! chart's `--skip-crds` path) and its schema neither lists `spec.egress` nor keeps unknown fields in `spec`, the
//! API server prunes every `spec.egress` on write: a verified agent whose rules were pruned would silently get
//! allow-all. The spoke reads the served CRD (RBAC: `get` on that one name) at start and every
//! [`RECHECK`], and raises `LocalRulesUnavailable` while rules cannot be stored.

use std::time::Duration;

use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::{CustomResourceDefinition, JSONSchemaProps};
use kube::{Api, Client};
use tollgate_common::planner::AGENT_RUNTIME_API_VERSION;

use crate::agent_runtime::CRD_NAME;
use crate::conditions::{Conditions, Kind};

/// How often the CRD is read again (an operator upgrade may replace it).
pub const RECHECK: Duration = Duration::from_secs(300);

/// Why `spec.egress` cannot be stored by the served CRD, or `None` when it can.
pub fn egress_pruned(crd: &CustomResourceDefinition) -> Option<String> {
    let version = AGENT_RUNTIME_API_VERSION.rsplit('/').next().unwrap_or_default();
    let Some(served) = crd.spec.versions.iter().find(|v| v.name == version) else {
        return Some(format!("the CRD serves no version {version}"));
    };
    let Some(root) = served.schema.as_ref().and_then(|s| s.open_api_v3_schema.as_ref()) else {
        // No schema at all (not structural): nothing is pruned.
        return None;
    };
    let preserves = |schema: &JSONSchemaProps| schema.x_kubernetes_preserve_unknown_fields == Some(true);
    match root.properties.as_ref().and_then(|p| p.get("spec")) {
        None if preserves(root) => None,
        None => Some("its schema has no spec and does not keep unknown fields".to_string()),
        Some(spec) if preserves(spec) => None,
        Some(spec) if spec.properties.as_ref().is_some_and(|p| p.contains_key("egress")) => None,
        Some(_) => Some(
            "its schema neither lists spec.egress nor keeps unknown fields in spec, so the API server prunes \
             spec.egress"
                .to_string(),
        ),
    }
}

/// Reads the CRD now and every [`RECHECK`], keeping the `LocalRulesUnavailable` condition true to it.
pub async fn watch(client: Client, conditions: Conditions) {
    let api: Api<CustomResourceDefinition> = Api::all(client);
    let mut warned = false;
    loop {
        match api.get_opt(CRD_NAME).await {
            Ok(Some(crd)) => {
                warned = false;
                match egress_pruned(&crd) {
                    None => conditions.clear(Kind::LocalRulesUnavailable),
                    Some(why) => conditions.set(
                        Kind::LocalRulesUnavailable,
                        "EgressPruned",
                        format!(
                            "Local rules (AgentRuntime spec.egress) cannot exist in this cluster: the served CRD \
                             {CRD_NAME} {why}, so a verified agent's local rules are lost on write and it gets \
                             allow-all. Install Tollgate's AgentRuntime CRD (it adds spec.egress), or scope agents \
                             from the hub: hub EgressPolicy rules, or an EgressGuardrail with verifiedDefault: \
                             BaselineOnly."
                        ),
                    ),
                }
            }
            Ok(None) => conditions.clear(Kind::LocalRulesUnavailable),
            Err(error) => {
                if !warned {
                    tracing::warn!(%error, "Could not read the AgentRuntime CRD {CRD_NAME}; local rules are not checked");
                }
                warned = true;
            }
        }
        tokio::time::sleep(RECHECK).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn crd(schema: serde_json::Value) -> CustomResourceDefinition {
        serde_json::from_value(serde_json::json!({
            "metadata": {"name": CRD_NAME},
            "spec": {
                "group": "agent.kagenti.dev",
                "names": {"kind": "AgentRuntime", "plural": "agentruntimes"},
                "scope": "Namespaced",
                "versions": [{"name": "v1alpha1", "served": true, "storage": true,
                              "schema": {"openAPIV3Schema": schema}}],
            },
        }))
        .unwrap()
    }

    #[test]
    fn the_schema_decides_whether_spec_egress_survives() {
        let ours: CustomResourceDefinition = serde_yaml_ng::from_str(&crate::agent_runtime::crd_yaml()).unwrap();
        assert_eq!(egress_pruned(&ours), None, "Tollgate's own CRD lists spec.egress");
        let cases = [
            (
                serde_json::json!({"type": "object", "properties": {"spec": {"type": "object",
                "x-kubernetes-preserve-unknown-fields": true}}}),
                true,
            ),
            (
                serde_json::json!({"type": "object", "properties": {"spec": {"type": "object",
                "properties": {"egress": {"type": "object"}}}}}),
                true,
            ),
            (
                serde_json::json!({"type": "object", "x-kubernetes-preserve-unknown-fields": true}),
                true,
            ),
            (
                serde_json::json!({"type": "object", "properties": {"spec": {"type": "object",
                "properties": {"targetRef": {"type": "object"}}}}}),
                false,
            ),
            (
                serde_json::json!({"type": "object", "x-kubernetes-preserve-unknown-fields": true,
                "properties": {"spec": {"type": "object", "properties": {"type": {"type": "string"}}}}}),
                false,
            ),
        ];
        for (schema, stores) in cases {
            assert_eq!(egress_pruned(&crd(schema.clone())).is_none(), stores, "{schema}");
        }
        let mut other_version = crd(serde_json::json!({"type": "object"}));
        other_version.spec.versions[0].name = "v1beta1".into();
        assert!(egress_pruned(&other_version).unwrap().contains("no version v1alpha1"));
    }
}
