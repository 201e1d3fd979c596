//! Whether the desired NetworkPolicy differs from the one in the cluster, in the fields the spoke owns, and the
//! compact form the spoke keeps observed policies in.

use std::borrow::Cow;

use k8s_openapi::api::networking::v1::NetworkPolicy;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ObjectMeta, OwnerReference};
use kube::Resource;
use serde_json::Value;

/// Labels and annotation keys of this prefix are the spoke's; others on the object are left alone.
const OWN_ANNOTATION_PREFIX: &str = "tollgate.dev/";

/// A managed NetworkPolicy as the spoke's store keeps it: the metadata [`needs_apply`] reads (name, namespace,
/// labels, the spoke's own annotations, owner uids) and the spec as one canonical JSON text. A whole
/// `NetworkPolicy` costs several KiB more per agent, mostly in label-selector maps, and its spec would otherwise
/// be converted to JSON again on every pass.
#[derive(Clone, Debug, PartialEq)]
pub struct ObservedPolicy {
    metadata: ObjectMeta,
    spec: String,
}

impl From<NetworkPolicy> for ObservedPolicy {
    fn from(policy: NetworkPolicy) -> Self {
        let spec = canonical_spec(&policy);
        let meta = policy.metadata;
        let metadata = ObjectMeta {
            name: meta.name,
            namespace: meta.namespace,
            labels: meta.labels,
            annotations: meta
                .annotations
                .map(|all| {
                    all.into_iter()
                        .filter(|(k, _)| k.starts_with(OWN_ANNOTATION_PREFIX))
                        .collect::<std::collections::BTreeMap<_, _>>()
                })
                .filter(|own| !own.is_empty()),
            owner_references: meta.owner_references.map(|owners| {
                owners
                    .into_iter()
                    .map(|o| OwnerReference {
                        uid: o.uid,
                        controller: o.controller,
                        ..Default::default()
                    })
                    .collect()
            }),
            resource_version: meta.resource_version,
            uid: meta.uid,
            ..Default::default()
        };
        Self { metadata, spec }
    }
}

impl Resource for ObservedPolicy {
    type DynamicType = ();
    type Scope = <NetworkPolicy as Resource>::Scope;

    fn kind(dt: &()) -> Cow<'_, str> {
        NetworkPolicy::kind(dt)
    }

    fn group(dt: &()) -> Cow<'_, str> {
        NetworkPolicy::group(dt)
    }

    fn version(dt: &()) -> Cow<'_, str> {
        NetworkPolicy::version(dt)
    }

    fn api_version(dt: &()) -> Cow<'_, str> {
        NetworkPolicy::api_version(dt)
    }

    fn plural(dt: &()) -> Cow<'_, str> {
        NetworkPolicy::plural(dt)
    }

    fn meta(&self) -> &ObjectMeta {
        &self.metadata
    }

    fn meta_mut(&mut self) -> &mut ObjectMeta {
        &mut self.metadata
    }
}

/// `true` when applying `desired` would change `existing` (or create it). Server defaults and empty lists that
/// the API server drops do not count, so a converged cluster sees no writes.
pub fn needs_apply(desired: &NetworkPolicy, existing: Option<&ObservedPolicy>) -> bool {
    let Some(existing) = existing else { return true };
    let labels_ok = desired
        .metadata
        .labels
        .iter()
        .flatten()
        .all(|(k, v)| existing.metadata.labels.as_ref().and_then(|l| l.get(k)) == Some(v));
    let annotations_ok = own_annotations(&desired.metadata).eq(own_annotations(&existing.metadata));
    let owners_ok = desired.metadata.owner_references.iter().flatten().all(|o| {
        existing
            .metadata
            .owner_references
            .iter()
            .flatten()
            .any(|e| e.uid == o.uid && e.controller == o.controller)
    });
    !(labels_ok && annotations_ok && owners_ok && canonical_spec(desired) == existing.spec)
}

fn own_annotations(metadata: &ObjectMeta) -> impl Iterator<Item = (&String, &String)> {
    metadata
        .annotations
        .iter()
        .flatten()
        .filter(|(k, _)| k.starts_with(OWN_ANNOTATION_PREFIX))
}

/// The spec as JSON without the members the API server omits, its object keys in order: equal texts mean equal
/// specs.
fn canonical_spec(policy: &NetworkPolicy) -> String {
    let mut value = serde_json::to_value(&policy.spec).expect("Kubernetes objects serialize to JSON");
    strip_empty(&mut value);
    value.to_string()
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
        assert!(!needs_apply(&desired(), Some(&policy(existing).into())));
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
                needs_apply(&desired(), Some(&policy(existing).into())),
                "{name} drift not seen"
            );
        }
    }

    #[test]
    fn the_stored_form_keeps_only_what_the_diff_reads() {
        let mut existing = serde_json::to_value(desired()).unwrap();
        existing["metadata"]["resourceVersion"] = json!("42");
        existing["metadata"]["annotations"]["kubectl.kubernetes.io/last-applied-configuration"] = json!("{}");
        existing["metadata"]["managedFields"] = json!([{"manager": "tollgate-spoke", "operation": "Apply"}]);
        let observed = ObservedPolicy::from(policy(existing));
        let meta = observed.meta();
        assert_eq!(meta.name.as_deref(), Some("a-signature-policy"));
        assert_eq!(meta.namespace.as_deref(), Some("ns"));
        assert_eq!(meta.resource_version.as_deref(), Some("42"));
        assert_eq!(
            meta.labels
                .as_ref()
                .and_then(|l| l.get("tollgate.dev/mode"))
                .map(String::as_str),
            Some("restricted")
        );
        let annotations: Vec<&str> = meta.annotations.iter().flatten().map(|(k, _)| k.as_str()).collect();
        assert_eq!(annotations, ["tollgate.dev/revision"]);
        assert!(meta.managed_fields.is_none());
        let owner = &meta.owner_references.as_deref().unwrap()[0];
        assert_eq!(
            (owner.uid.as_str(), owner.controller, owner.name.as_str()),
            ("u1", Some(true), "")
        );
        assert_eq!(
            observed.spec,
            // The empty egress list is left out, as the API server leaves it out.
            r#"{"ingress":[{"from":[{"namespaceSelector":{"matchLabels":{"x":"y"}}}]}],"podSelector":{"matchLabels":{"app":"a"}},"policyTypes":["Ingress","Egress"]}"#
        );
        assert_eq!(ObservedPolicy::kind(&()), "NetworkPolicy");
        assert_eq!(ObservedPolicy::api_version(&()), "networking.k8s.io/v1");
    }

    #[test]
    fn allow_all_is_not_mistaken_for_deny_all() {
        let mut allow_all = serde_json::to_value(desired()).unwrap();
        allow_all["spec"]["egress"] = json!([{}]);
        let deny_all = desired();
        assert!(needs_apply(&policy(allow_all), Some(&deny_all.into())));
    }
}
