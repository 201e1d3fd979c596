//! Least privilege as enforced: which other NetworkPolicies select an agent's pods and allow egress its own policy
//! does not (docs/design.md, "Least privilege as enforced"). NetworkPolicies are additive, so any such policy undoes
//! the agent's scoping. Pure: the spoke feeds in the agent's policy and the other policies of its namespace.
//!
//! The containment rules are conservative (a doubt counts as widening): a rule without `to` (or without `ports`)
//! allows everything on that axis; an `ipBlock` is covered only by a containing `ipBlock` of the agent's policy whose
//! `except`s it also avoids, on covering ports of the same protocol; a selector peer only by an equal selector
//! peer; a named port only by the same name or by every port of its protocol.

use std::collections::BTreeMap;

use ipnet::IpNet;
use k8s_openapi::api::networking::v1::{
    IPBlock, NetworkPolicy, NetworkPolicyEgressRule, NetworkPolicyPeer, NetworkPolicyPort,
};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelector as K8sSelector;
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;

/// Names of the policies in `others` that co-select the pods of `own` (same namespace, a `podSelector` matching
/// `own`'s pod labels, governing Egress) and allow some egress `own` does not, sorted. `own` itself is skipped.
pub fn widened_by<'a>(own: &NetworkPolicy, others: impl IntoIterator<Item = &'a NetworkPolicy>) -> Vec<String> {
    let pod_labels = own
        .spec
        .as_ref()
        .and_then(|s| s.pod_selector.as_ref())
        .and_then(|s| s.match_labels.clone())
        .unwrap_or_default();
    let own_rules = egress_rules(own).unwrap_or_default();
    let mut out: Vec<String> = others
        .into_iter()
        .filter(|other| other.metadata.namespace == own.metadata.namespace && other.metadata.name != own.metadata.name)
        .filter(|other| co_selects(other, &pod_labels))
        .filter(|other| widens(egress_rules(other).unwrap_or_default(), own_rules))
        .filter_map(|other| other.metadata.name.clone())
        .collect();
    out.sort();
    out.dedup();
    out
}

/// The egress rules of a policy that governs Egress (`policyTypes` lists it, or is absent and egress rules exist);
/// `None` when it does not govern Egress.
fn egress_rules(policy: &NetworkPolicy) -> Option<&[NetworkPolicyEgressRule]> {
    let spec = policy.spec.as_ref()?;
    let governs = match &spec.policy_types {
        Some(types) => types.iter().any(|t| t == "Egress"),
        None => spec.egress.is_some(),
    };
    governs.then(|| spec.egress.as_deref().unwrap_or_default())
}

/// Labels controllers add to pods that their templates do not carry: a selector on one of them may match the
/// agent's pods whatever the template says.
const CONTROLLER_LABELS: [&str; 5] = [
    "pod-template-hash",
    "controller-revision-hash",
    "statefulset.kubernetes.io/pod-name",
    "apps.kubernetes.io/pod-index",
    "batch.kubernetes.io/job-completion-index",
];

/// Whether a policy's `podSelector` may select pods with these (template) labels: a term on a controller-added
/// label the template does not set counts as matching (doubt counts as co-selection).
fn co_selects(policy: &NetworkPolicy, pod_labels: &BTreeMap<String, String>) -> bool {
    let Some(selector) = policy.spec.as_ref().and_then(|s| s.pod_selector.as_ref()) else {
        return egress_rules(policy).is_some();
    };
    if egress_rules(policy).is_none() {
        return false;
    }
    let unknown = |key: &str| !pod_labels.contains_key(key) && CONTROLLER_LABELS.contains(&key);
    let label_keys = selector.match_labels.iter().flatten().map(|(k, _)| k);
    let expression_keys = selector.match_expressions.iter().flatten().map(|r| &r.key);
    if !label_keys.chain(expression_keys).any(|k| unknown(k)) {
        return selector_matches(selector, pod_labels);
    }
    // Give each controller-added key the template lacks the value the selector asks for.
    let mut labels = pod_labels.clone();
    for (key, value) in selector.match_labels.iter().flatten() {
        if unknown(key) {
            labels.insert(key.clone(), value.clone());
        }
    }
    for requirement in selector.match_expressions.iter().flatten() {
        if unknown(&requirement.key) && matches!(requirement.operator.as_str(), "In" | "Exists") {
            let value = requirement.values.iter().flatten().next().cloned().unwrap_or_default();
            labels.insert(requirement.key.clone(), value);
        }
    }
    selector_matches(selector, &labels)
}

/// Kubernetes label-selector semantics (an empty selector matches everything; an unknown operator matches
/// nothing).
pub fn selector_matches(selector: &K8sSelector, labels: &BTreeMap<String, String>) -> bool {
    let labels_ok = selector
        .match_labels
        .iter()
        .flatten()
        .all(|(k, v)| labels.get(k) == Some(v));
    let expressions_ok = selector.match_expressions.iter().flatten().all(|r| {
        let values = r.values.as_deref().unwrap_or_default();
        match r.operator.as_str() {
            "In" => labels.get(&r.key).is_some_and(|v| values.contains(v)),
            "NotIn" => labels.get(&r.key).is_none_or(|v| !values.contains(v)),
            "Exists" => labels.contains_key(&r.key),
            "DoesNotExist" => !labels.contains_key(&r.key),
            _ => false,
        }
    });
    labels_ok && expressions_ok
}

/// Whether some (peer, port) that `other` allows is allowed by no rule of `own`. A policy that governs Egress with
/// no rules allows nothing, so never widens.
fn widens(other: &[NetworkPolicyEgressRule], own: &[NetworkPolicyEgressRule]) -> bool {
    other.iter().any(|rule| {
        let peers: Vec<Option<&NetworkPolicyPeer>> = match rule.to.as_deref() {
            None | Some([]) => vec![None],
            Some(peers) => peers.iter().map(Some).collect(),
        };
        let ports: Vec<Option<&NetworkPolicyPort>> = match rule.ports.as_deref() {
            None | Some([]) => vec![None],
            Some(ports) => ports.iter().map(Some).collect(),
        };
        peers.iter().any(|peer| {
            ports
                .iter()
                .any(|port| !own.iter().any(|o| rule_covers(o, *peer, *port)))
        })
    })
}

/// Whether one rule of the agent's policy allows `peer` (`None`: every destination) on `port` (`None`: every port of
/// every protocol).
fn rule_covers(
    own: &NetworkPolicyEgressRule,
    peer: Option<&NetworkPolicyPeer>,
    port: Option<&NetworkPolicyPort>,
) -> bool {
    let peer_ok = match own.to.as_deref() {
        None | Some([]) => true,
        Some(own_peers) => peer.is_some_and(|p| own_peers.iter().any(|o| peer_covers(o, p))),
    };
    let port_ok = match own.ports.as_deref() {
        None | Some([]) => true,
        Some(own_ports) => port.is_some_and(|p| own_ports.iter().any(|o| port_covers(o, p))),
    };
    peer_ok && port_ok
}

fn peer_covers(own: &NetworkPolicyPeer, peer: &NetworkPolicyPeer) -> bool {
    match (&own.ip_block, &peer.ip_block) {
        (Some(own_block), Some(block)) => block_covers(own_block, block),
        (None, None) => own.namespace_selector == peer.namespace_selector && own.pod_selector == peer.pod_selector,
        _ => false,
    }
}

/// `own` contains `block`, and every address `own` excepts is excepted by `block` too (or lies outside it).
fn block_covers(own: &IPBlock, block: &IPBlock) -> bool {
    let (Ok(own_net), Ok(net)) = (own.cidr.parse::<IpNet>(), block.cidr.parse::<IpNet>()) else {
        return false;
    };
    if !own_net.contains(&net) {
        return false;
    }
    let excepted: Vec<IpNet> = block.except.iter().flatten().filter_map(|e| e.parse().ok()).collect();
    own.except.iter().flatten().all(|e| match e.parse::<IpNet>() {
        Ok(hole) => !overlaps(&hole, &net) || excepted.iter().any(|x| x.contains(&hole)),
        Err(_) => false,
    })
}

fn overlaps(a: &IpNet, b: &IpNet) -> bool {
    a.contains(b) || b.contains(a)
}

/// The protocol of a port entry (TCP when unset).
fn protocol(port: &NetworkPolicyPort) -> &str {
    port.protocol.as_deref().unwrap_or("TCP")
}

fn port_covers(own: &NetworkPolicyPort, port: &NetworkPolicyPort) -> bool {
    if protocol(own) != protocol(port) {
        return false;
    }
    match (&own.port, &port.port) {
        (None, _) => true,
        (Some(_), None) => false,
        (Some(IntOrString::String(a)), Some(IntOrString::String(b))) => a == b,
        (Some(IntOrString::Int(start)), Some(IntOrString::Int(p))) => {
            let end = own.end_port.unwrap_or(*start);
            let p_end = port.end_port.unwrap_or(*p);
            start <= p && p_end <= end
        }
        _ => false,
    }
}

#[cfg(test)]
mod tests;
