//! Whether the desired NetworkPolicy differs from the one in the cluster, in the fields the spoke owns.

use k8s_openapi::api::networking::v1::NetworkPolicy;
use serde_json::Value;

/// Labels and annotation keys of this prefix are the spoke's; others on the object are left alone.
const OWN_ANNOTATION_PREFIX: &str = "tollgate.dev/";

/// `true` when applying `desired` would change `existing` (or create it). Server defaults and empty lists that
/// the API server drops do not count, so a converged cluster sees no writes.
pub fn needs_apply(desired: &NetworkPolicy, existing: Option<&NetworkPolicy>) -> bool {
    let Some(existing) = existing else { return true };
    let labels_ok = desired
        .metadata
        .labels
        .iter()
        .flatten()
        .all(|(k, v)| existing.metadata.labels.as_ref().and_then(|l| l.get(k)) == Some(v));
    let desired_annotations: Vec<(&String, &String)> = own_annotations(desired).collect();
    let existing_annotations: Vec<(&String, &String)> = own_annotations(existing).collect();
    let owners_ok = desired.metadata.owner_references.iter().flatten().all(|o| {
        existing
            .metadata
            .owner_references
            .iter()
            .flatten()
            .any(|e| e.uid == o.uid && e.controller == o.controller)
    });
    let spec_ok = normalized(&desired.spec) == normalized(&existing.spec);
    !(labels_ok && desired_annotations == existing_annotations && owners_ok && spec_ok)
}

fn own_annotations(policy: &NetworkPolicy) -> impl Iterator<Item = (&String, &String)> {
    policy
        .metadata
        .annotations
        .iter()
        .flatten()
        .filter(|(k, _)| k.starts_with(OWN_ANNOTATION_PREFIX))
}

fn normalized<T: serde::Serialize>(value: &T) -> Value {
    let mut value = serde_json::to_value(value).expect("Kubernetes objects serialize to JSON");
    strip_empty(&mut value);
    value
}

/// Drops object members that are null or empty lists (the API server omits them), keeping empty objects: `{}`
/// is meaningful in a NetworkPolicy (`egress: [{}]` allows everything, `podSelector: {}` selects every pod).
fn strip_empty(value: &mut Value) {
    match value {
        Value::Object(map) => {
            map.retain(|_, v| !(v.is_null() || v.as_array().is_some_and(Vec::is_empty)));
            map.values_mut().for_each(strip_empty);
        }
        Value::Array(items) => items.iter_mut().for_each(strip_empty),
        _ => {}
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn policy(value: Value) -> NetworkPolicy {
        serde_json::from_value(value).unwrap()
    }

    fn desired() -> NetworkPolicy {
        policy(json!({
            "metadata": {"name": "a-signature-policy", "namespace": "ns",
                         "labels": {"app.kubernetes.io/managed-by": "tollgate-spoke", "tollgate.dev/mode": "restricted"},
                         "annotations": {"tollgate.dev/revision": "3"},
                         "ownerReferences": [{"apiVersion": "agent.kagenti.dev/v1alpha1", "kind": "AgentRuntime", "name": "a", "uid": "u1", "controller": true}]},
            "spec": {"podSelector": {"matchLabels": {"app": "a"}}, "policyTypes": ["Ingress", "Egress"],
                     "ingress": [{"from": [{"namespaceSelector": {"matchLabels": {"x": "y"}}}]}], "egress": []},
        }))
    }

    #[test]
    fn converged_object_with_server_additions_needs_no_write() {
        let mut existing = serde_json::to_value(desired()).unwrap();
        existing["metadata"]["resourceVersion"] = json!("42");
        existing["metadata"]["labels"]["team"] = json!("a");
        existing["metadata"]["annotations"]["kubectl.kubernetes.io/last-applied-configuration"] = json!("{}");
        existing["spec"].as_object_mut().unwrap().remove("egress");
        assert!(!needs_apply(&desired(), Some(&policy(existing))));
        assert!(needs_apply(&desired(), None));
    }

    #[test]
    fn drift_in_owned_fields_is_detected() {
        let base = serde_json::to_value(desired()).unwrap();
        let mut changed_spec = base.clone();
        changed_spec["spec"]["egress"] = json!([{}]);
        let mut changed_label = base.clone();
        changed_label["metadata"]["labels"]["tollgate.dev/mode"] = json!("allow-all");
        let mut stale_annotation = base.clone();
        stale_annotation["metadata"]["annotations"]["tollgate.dev/rule-sources"] = json!("local");
        let mut other_owner = base.clone();
        other_owner["metadata"]["ownerReferences"][0]["uid"] = json!("u2");
        for (name, existing) in [
            ("spec", changed_spec),
            ("label", changed_label),
            ("annotation", stale_annotation),
            ("owner", other_owner),
        ] {
            assert!(
                needs_apply(&desired(), Some(&policy(existing))),
                "{name} drift not seen"
            );
        }
    }

    #[test]
    fn allow_all_is_not_mistaken_for_deny_all() {
        let mut allow_all = serde_json::to_value(desired()).unwrap();
        allow_all["spec"]["egress"] = json!([{}]);
        let deny_all = desired();
        assert!(needs_apply(&policy(allow_all), Some(&deny_all)));
    }
}
