//! AdminNetworkPolicy enforcement (docs/design.md, "Least privilege as enforced"): the cluster-scoped
//! `policy.networking.k8s.io/v1alpha1` AdminNetworkPolicy (network-policy-api v0.1.5, the first release with
//! `networks` peers), evaluated by OVN-Kubernetes (OpenShift 4.16+) in a tier above NetworkPolicy, so no namespace
//! policy can widen it.
//!
//! The types are the project's own, written after the upstream API; the CRD the tests install is generated from
//! them, as the AgentRuntime CRD is. [`render`] turns an agent's NetworkPolicy (as the planner wrote it) into one
//! AdminNetworkPolicy with `Allow` rules for exactly the same egress, then a `Deny` of all other egress.

use std::collections::{BTreeMap, BTreeSet};

use ipnet::IpNet;
use k8s_openapi::api::networking::v1::{NetworkPolicy, NetworkPolicyPeer, NetworkPolicyPort};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{LabelSelector, ObjectMeta};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use kube::CustomResource;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use serde_json::json;
use sha2::{Digest, Sha256};
use tollgate_common::planner::{LABEL_AGENT, LABEL_MANAGED_BY, LABEL_MODE, LABEL_NAMESPACE_NAME, MANAGED_BY, Mode};

/// The namespace of the agent an AdminNetworkPolicy is for (the object is cluster-scoped).
pub const LABEL_AGENT_NAMESPACE: &str = "tollgate.dev/agent-namespace";
/// Rules per direction, peers per rule, CIDRs per `networks` peer (the API's limits).
pub const MAX_RULES: usize = 100;
pub const MAX_PEERS: usize = 100;
pub const MAX_NETWORKS: usize = 25;

/// AdminNetworkPolicy: cluster-wide rules evaluated before NetworkPolicies.
#[derive(CustomResource, Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[kube(
    group = "policy.networking.k8s.io",
    version = "v1alpha1",
    kind = "AdminNetworkPolicy",
    plural = "adminnetworkpolicies",
    shortname = "anp",
    // The group is a protected Kubernetes one: its CRDs carry the approval of the API they define.
    annotation("api-approved.kubernetes.io", "https://github.com/kubernetes-sigs/network-policy-api/pull/30"),
    doc = "Cluster-wide network rules evaluated before NetworkPolicies (network-policy-api v0.1.5)."
)]
#[serde(rename_all = "camelCase")]
pub struct AdminNetworkPolicySpec {
    /// 0 (first) to 1000.
    #[schemars(range(min = 0, max = 1000))]
    pub priority: i32,
    pub subject: Subject,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 100))]
    pub ingress: Vec<IngressRule>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 100))]
    pub egress: Vec<EgressRule>,
}

/// What the policy applies to: exactly one field.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct Subject {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(schema_with = "selector_schema")]
    pub namespaces: Option<LabelSelector>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pods: Option<NamespacedPod>,
}

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct NamespacedPod {
    #[schemars(schema_with = "selector_schema")]
    pub namespace_selector: LabelSelector,
    #[schemars(schema_with = "selector_schema")]
    pub pod_selector: LabelSelector,
}

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct IngressRule {
    #[schemars(length(max = 100))]
    pub name: String,
    pub action: Action,
    #[schemars(length(min = 1, max = 100))]
    pub from: Vec<IngressPeer>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ports: Option<Vec<Port>>,
}

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct IngressPeer {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(schema_with = "selector_schema")]
    pub namespaces: Option<LabelSelector>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pods: Option<NamespacedPod>,
}

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct EgressRule {
    #[schemars(length(max = 100))]
    pub name: String,
    pub action: Action,
    #[schemars(length(min = 1, max = 100))]
    pub to: Vec<EgressPeer>,
    /// None: every port of every protocol.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ports: Option<Vec<Port>>,
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub enum Action {
    #[default]
    Allow,
    Deny,
    Pass,
}

/// A destination: exactly one field.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct EgressPeer {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(schema_with = "selector_schema")]
    pub namespaces: Option<LabelSelector>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pods: Option<NamespacedPod>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(schema_with = "selector_schema")]
    pub nodes: Option<LabelSelector>,
    /// CIDRs, at most 25.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 25))]
    pub networks: Option<Vec<String>>,
}

/// One port selector: exactly one field.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct Port {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub port_number: Option<PortNumber>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub named_port: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub port_range: Option<PortRange>,
}

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct PortNumber {
    pub protocol: String,
    #[schemars(range(min = 1, max = 65535))]
    pub port: i32,
}

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct PortRange {
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub protocol: String,
    #[schemars(range(min = 1, max = 65535))]
    pub start: i32,
    #[schemars(range(min = 1, max = 65535))]
    pub end: i32,
}

/// A Kubernetes label selector.
fn selector_schema(_: &mut schemars::SchemaGenerator) -> schemars::Schema {
    schemars::Schema::try_from(crate::agent_runtime::label_selector_schema()).expect("an object schema")
}

/// The peer types the served AdminNetworkPolicy API offers in egress rules.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Capabilities {
    pub peers: BTreeSet<String>,
}

impl Capabilities {
    /// Every peer type of network-policy-api v0.1.5.
    pub fn all() -> Self {
        Self {
            peers: ["namespaces", "pods", "nodes", "networks"].map(String::from).into(),
        }
    }

    /// The egress peer types listed by a served CRD's schema (`spec.egress[].to[]`).
    pub fn of_crd(crd: &serde_json::Value) -> Self {
        let versions = crd["spec"]["versions"].as_array().cloned().unwrap_or_default();
        let served = versions.iter().find(|v| v["name"] == "v1alpha1" && v["served"] == true);
        let peers = served
            .and_then(|v| {
                v["schema"]["openAPIV3Schema"]["properties"]["spec"]["properties"]["egress"]["items"]["properties"]
                        ["to"]["items"]["properties"]
                        .as_object()
                        .map(|p| p.keys().cloned().collect())
            })
            .unwrap_or_default();
        Self { peers }
    }
}

/// The name of an agent's AdminNetworkPolicy: `tollgate-NAMESPACE-AGENT`, cut to fit 63 characters with a stable
/// hash of both (cluster-scoped names must not collide across namespaces).
pub fn name(namespace: &str, agent: &str) -> String {
    let digest = Sha256::digest(format!("{namespace}/{agent}").as_bytes());
    let hash = tollgate_common::intent::hex(&digest[..4]);
    let mut base = format!("tollgate-{namespace}-{agent}");
    base.truncate(63 - hash.len() - 1);
    let base = base.trim_end_matches(['-', '.']);
    format!("{base}-{hash}")
}

/// The AdminNetworkPolicy for an agent whose egress is `policy`'s, or why it cannot be written (the agent is then
/// enforced by its NetworkPolicy alone).
pub fn render(
    namespace: &str,
    agent: &str,
    mode: Mode,
    policy: &NetworkPolicy,
    priority: i32,
    capabilities: &Capabilities,
) -> Result<AdminNetworkPolicy, String> {
    let spec = policy.spec.as_ref().ok_or("the NetworkPolicy has no spec")?;
    let mut needed = BTreeSet::new();
    let mut egress = Vec::new();
    for (i, rule) in spec.egress.iter().flatten().enumerate() {
        // Addresses first, in as few `networks` peers as the API allows, then the selector peers.
        let mut networks: Vec<String> = Vec::new();
        let mut selectors = Vec::new();
        for peer in rule.to.iter().flatten() {
            for converted in peers(namespace, peer, &mut needed)? {
                match converted.networks {
                    Some(nets) => {
                        networks.extend(nets.into_iter().filter(|n| !networks.contains(n)).collect::<Vec<_>>())
                    }
                    None => selectors.push(converted),
                }
            }
        }
        let mut to: Vec<EgressPeer> = networks
            .chunks(MAX_NETWORKS)
            .map(|chunk| EgressPeer {
                networks: Some(chunk.to_vec()),
                ..EgressPeer::default()
            })
            .collect();
        to.extend(selectors);
        if to.is_empty() {
            // Every address of it is excepted: nothing to allow.
            continue;
        }
        if to.len() > MAX_PEERS {
            return Err(format!(
                "egress rule {i} needs {} AdminNetworkPolicy peers; the API allows {MAX_PEERS}",
                to.len()
            ));
        }
        egress.push(EgressRule {
            name: format!("allow-{i}"),
            action: Action::Allow,
            to,
            ports: rule.ports.as_ref().map(|ports| ports.iter().map(port).collect()),
        });
    }
    // Everything else: every namespace's pods, and every address of both families (nodes and the outside).
    needed.insert("networks");
    needed.insert("namespaces");
    egress.push(EgressRule {
        name: "deny-other-egress".into(),
        action: Action::Deny,
        to: vec![
            EgressPeer {
                namespaces: Some(LabelSelector::default()),
                ..EgressPeer::default()
            },
            EgressPeer {
                networks: Some(vec!["0.0.0.0/0".into(), "::/0".into()]),
                ..EgressPeer::default()
            },
        ],
        ports: None,
    });
    if egress.len() > MAX_RULES {
        return Err(format!(
            "the agent's egress needs {} AdminNetworkPolicy rules; the API allows {MAX_RULES}",
            egress.len()
        ));
    }
    let missing: Vec<&str> = needed
        .into_iter()
        .filter(|p| !capabilities.peers.contains(*p))
        .collect();
    if !missing.is_empty() {
        return Err(format!(
            "the served AdminNetworkPolicy API has no `{}` egress peer (network-policy-api v0.1.5 or later, OpenShift \
             4.16 or later, has them)",
            missing.join("`, `")
        ));
    }
    let labels = BTreeMap::from([
        (LABEL_MANAGED_BY.to_string(), MANAGED_BY.to_string()),
        (LABEL_AGENT.to_string(), agent.to_string()),
        (LABEL_AGENT_NAMESPACE.to_string(), namespace.to_string()),
        (LABEL_MODE.to_string(), mode.as_str().to_string()),
    ]);
    Ok(AdminNetworkPolicy {
        metadata: ObjectMeta {
            name: Some(name(namespace, agent)),
            labels: Some(labels),
            ..ObjectMeta::default()
        },
        spec: AdminNetworkPolicySpec {
            priority,
            subject: Subject {
                namespaces: None,
                pods: Some(NamespacedPod {
                    namespace_selector: namespace_selector(namespace),
                    pod_selector: spec.pod_selector.clone().unwrap_or_default(),
                }),
            },
            ingress: Vec::new(),
            egress,
        },
    })
}

fn namespace_selector(namespace: &str) -> LabelSelector {
    LabelSelector {
        match_labels: Some(BTreeMap::from([(
            LABEL_NAMESPACE_NAME.to_string(),
            namespace.to_string(),
        )])),
        match_expressions: None,
    }
}

/// One NetworkPolicy peer as AdminNetworkPolicy peers: an `ipBlock` as `networks` (its `except`s subtracted, so the
/// result is exactly the same addresses, in peers of at most 25 CIDRs), selectors as `namespaces` / `pods` (a
/// `podSelector` alone means the policy's own namespace).
fn peers(
    namespace: &str,
    peer: &NetworkPolicyPeer,
    needed: &mut BTreeSet<&'static str>,
) -> Result<Vec<EgressPeer>, String> {
    if let Some(block) = &peer.ip_block {
        // Nothing unreadable is skipped: a dropped `except` would allow more than the NetworkPolicy.
        let cidr: IpNet = block
            .cidr
            .parse()
            .map_err(|_| format!("ipBlock {:?} is not a CIDR", block.cidr))?;
        let holes = block
            .except
            .iter()
            .flatten()
            .map(|e| e.parse::<IpNet>().map_err(|_| format!("except {e:?} is not a CIDR")))
            .collect::<Result<Vec<_>, _>>()?;
        let nets = subtract(cidr, &holes);
        if !nets.is_empty() {
            needed.insert("networks");
        }
        return Ok(nets
            .chunks(MAX_NETWORKS)
            .map(|chunk| EgressPeer {
                networks: Some(chunk.iter().map(ToString::to_string).collect()),
                ..EgressPeer::default()
            })
            .collect());
    }
    match (&peer.namespace_selector, &peer.pod_selector) {
        (Some(namespaces), None) => {
            needed.insert("namespaces");
            Ok(vec![EgressPeer {
                namespaces: Some(namespaces.clone()),
                ..EgressPeer::default()
            }])
        }
        (namespaces, Some(pods)) => {
            needed.insert("pods");
            Ok(vec![EgressPeer {
                pods: Some(NamespacedPod {
                    namespace_selector: namespaces.clone().unwrap_or_else(|| namespace_selector(namespace)),
                    pod_selector: pods.clone(),
                }),
                ..EgressPeer::default()
            }])
        }
        // A peer with no field selects everything in a NetworkPolicy: not expressible here, so not rendered.
        (None, None) => Err("a NetworkPolicy peer without ipBlock or selectors".into()),
    }
}

/// `net` minus every hole, as the fewest CIDRs found by halving: exact, sorted.
pub fn subtract(net: IpNet, holes: &[IpNet]) -> Vec<IpNet> {
    if holes.iter().any(|h| h.contains(&net)) {
        return Vec::new();
    }
    if !holes.iter().any(|h| net.contains(h)) {
        return vec![net];
    }
    match net.subnets(net.prefix_len() + 1) {
        Ok(halves) => halves.flat_map(|half| subtract(half, holes)).collect(),
        Err(_) => Vec::new(),
    }
}

fn port(port: &NetworkPolicyPort) -> Port {
    let protocol = port.protocol.clone().unwrap_or_else(|| "TCP".into());
    match (&port.port, port.end_port) {
        // The API wants start < end: a range of one port is that port.
        (Some(IntOrString::Int(start)), Some(end)) if end > *start => Port {
            port_range: Some(PortRange {
                protocol,
                start: *start,
                end,
            }),
            ..Port::default()
        },
        (Some(IntOrString::Int(number)), _) => Port {
            port_number: Some(PortNumber {
                protocol,
                port: *number,
            }),
            ..Port::default()
        },
        (Some(IntOrString::String(name)), _) => Port {
            named_port: Some(name.clone()),
            ..Port::default()
        },
        // Every port of the protocol.
        (None, _) => Port {
            port_range: Some(PortRange {
                protocol,
                start: 1,
                end: 65535,
            }),
            ..Port::default()
        },
    }
}

/// The canonical form two AdminNetworkPolicies are compared in (labels and spec).
pub fn canonical(policy: &AdminNetworkPolicy) -> serde_json::Value {
    json!({"labels": policy.metadata.labels, "spec": policy.spec})
}

#[cfg(test)]
mod tests;
