//! Domain types → Kubernetes `networking.k8s.io/v1` objects.

use std::collections::{BTreeMap, BTreeSet};
use std::net::IpAddr;

use ipnet::IpNet;

use k8s_openapi::api::networking::v1::{
    IPBlock, NetworkPolicy, NetworkPolicyEgressRule, NetworkPolicyIngressRule, NetworkPolicyPeer, NetworkPolicyPort,
    NetworkPolicySpec,
};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{
    LabelSelector as K8sSelector, LabelSelectorRequirement, ObjectMeta, OwnerReference,
};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;

use super::{
    AGENT_RUNTIME_API_VERSION, AGENT_RUNTIME_KIND, ANNOTATION_REVISION, ANNOTATION_RULE_SOURCES, Agent, AgentOutcome,
    LABEL_AGENT, LABEL_MANAGED_BY, LABEL_MODE, LABEL_NAMESPACE_NAME, LABEL_SIGNATURE_VERIFIED, MANAGED_BY,
    PlannerConfig, ResolvedNames, RuleSource,
};
use crate::egress_rule::{EgressRule, Peer, PortRange};
use crate::label_selector::LabelSelector;

/// A rule as a NetworkPolicy egress rule. Each `fqdn` peer becomes one `/32` or `/128` `ipBlock` per resolved
/// address, sorted, where the name stood; a name without addresses contributes no peer. `None` when no peer is
/// left: such a rule is dropped, never written as a port-only rule (which would allow every destination).
pub(super) fn egress_rule(rule: &EgressRule, names: &ResolvedNames) -> Option<NetworkPolicyEgressRule> {
    let mut to = Vec::with_capacity(rule.to.len());
    for p in &rule.to {
        match &p.fqdn {
            None => to.push(peer(p)),
            Some(name) => {
                let mut addresses: Vec<IpAddr> = names.get(name).cloned().unwrap_or_default();
                addresses.sort_unstable();
                addresses.dedup();
                to.extend(addresses.into_iter().map(|ip| address_peer(IpNet::from(ip))));
            }
        }
    }
    (!to.is_empty()).then(|| NetworkPolicyEgressRule {
        to: Some(to),
        ports: (!rule.ports.is_empty()).then(|| rule.ports.iter().map(port).collect()),
    })
}

fn peer(peer: &Peer) -> NetworkPolicyPeer {
    NetworkPolicyPeer {
        ip_block: peer.ip_block.as_ref().map(|b| IPBlock {
            cidr: cidr_text(&b.cidr),
            except: (!b.except.is_empty()).then(|| b.except.iter().map(ToString::to_string).collect()),
        }),
        namespace_selector: peer.namespace_selector.as_ref().map(selector),
        pod_selector: peer.pod_selector.as_ref().map(selector),
    }
}

fn address_peer(host: IpNet) -> NetworkPolicyPeer {
    NetworkPolicyPeer {
        ip_block: Some(IPBlock {
            cidr: cidr_text(&host),
            except: None,
        }),
        ..Default::default()
    }
}

/// `a.b.c.d/len` written digit by digit (the planner's hottest formatting: one per peer per agent); IPv6 through
/// `Display`.
fn cidr_text(net: &ipnet::IpNet) -> String {
    fn push_decimal(out: &mut String, n: u8) {
        if n >= 100 {
            out.push(char::from(b'0' + n / 100));
        }
        if n >= 10 {
            out.push(char::from(b'0' + (n / 10) % 10));
        }
        out.push(char::from(b'0' + n % 10));
    }
    match net {
        ipnet::IpNet::V4(v4) => {
            let mut out = String::with_capacity(18);
            for (i, octet) in v4.addr().octets().into_iter().enumerate() {
                if i > 0 {
                    out.push('.');
                }
                push_decimal(&mut out, octet);
            }
            out.push('/');
            push_decimal(&mut out, v4.prefix_len());
            out
        }
        ipnet::IpNet::V6(_) => net.to_string(),
    }
}

fn selector(s: &LabelSelector) -> K8sSelector {
    K8sSelector {
        match_labels: (!s.match_labels.is_empty()).then(|| s.match_labels.clone()),
        match_expressions: (!s.match_expressions.is_empty()).then(|| {
            s.match_expressions
                .iter()
                .map(|r| LabelSelectorRequirement {
                    key: r.key.clone(),
                    operator: r.operator.as_str().to_string(),
                    values: (!r.values.is_empty()).then(|| r.values.clone()),
                })
                .collect()
        }),
    }
}

fn labels_selector(labels: BTreeMap<String, String>) -> K8sSelector {
    K8sSelector {
        match_labels: Some(labels),
        match_expressions: None,
    }
}

fn port(p: &PortRange) -> NetworkPolicyPort {
    NetworkPolicyPort {
        protocol: Some(p.protocol.as_str().to_string()),
        port: p.port.map(|n| IntOrString::Int(i32::from(n))),
        end_port: p.end_port.map(i32::from),
    }
}

fn namespace_peer(namespace: &str) -> NetworkPolicyPeer {
    NetworkPolicyPeer {
        namespace_selector: Some(labels_selector(BTreeMap::from([(
            LABEL_NAMESPACE_NAME.to_string(),
            namespace.to_string(),
        )]))),
        ..Default::default()
    }
}

/// The ingress rule: the operator and cluster-defaults namespaces, and for verified agents the verified pods of
/// the same namespace.
pub(super) fn ingress(config: &PlannerConfig, verified: bool) -> Vec<NetworkPolicyIngressRule> {
    let mut from = vec![namespace_peer(&config.operator_namespace)];
    if config.cluster_defaults_namespace != config.operator_namespace {
        from.push(namespace_peer(&config.cluster_defaults_namespace));
    }
    if verified {
        from.push(NetworkPolicyPeer {
            pod_selector: Some(labels_selector(BTreeMap::from([(
                LABEL_SIGNATURE_VERIFIED.to_string(),
                "true".to_string(),
            )]))),
            ..Default::default()
        });
    }
    vec![NetworkPolicyIngressRule {
        from: Some(from),
        ports: None,
    }]
}

pub(super) fn network_policy(
    agent: &Agent,
    outcome: &AgentOutcome,
    revision: Option<&str>,
    ingress: Vec<NetworkPolicyIngressRule>,
    egress: Vec<NetworkPolicyEgressRule>,
) -> NetworkPolicy {
    let pod_labels = match &agent.pod_labels {
        Some(labels) if !labels.is_empty() => labels.clone(),
        _ => BTreeMap::from([
            ("kagenti.io/type".to_string(), "agent".to_string()),
            ("app".to_string(), agent.target_name.clone()),
        ]),
    };
    let labels = BTreeMap::from([
        (LABEL_MANAGED_BY.to_string(), MANAGED_BY.to_string()),
        (LABEL_AGENT.to_string(), agent.name.clone()),
        (LABEL_MODE.to_string(), outcome.mode.as_str().to_string()),
    ]);
    let mut annotations = BTreeMap::new();
    if let Some(revision) = revision {
        annotations.insert(ANNOTATION_REVISION.to_string(), revision.to_string());
    }
    if !outcome.rule_sources.is_empty() {
        annotations.insert(ANNOTATION_RULE_SOURCES.to_string(), rule_sources(&outcome.rule_sources));
    }
    NetworkPolicy {
        metadata: ObjectMeta {
            name: outcome.policy_name.clone(),
            namespace: Some(agent.namespace.clone()),
            labels: Some(labels),
            annotations: (!annotations.is_empty()).then_some(annotations),
            owner_references: (!agent.uid.is_empty()).then(|| {
                vec![OwnerReference {
                    api_version: AGENT_RUNTIME_API_VERSION.to_string(),
                    kind: AGENT_RUNTIME_KIND.to_string(),
                    name: agent.name.clone(),
                    uid: agent.uid.clone(),
                    controller: Some(true),
                    block_owner_deletion: None,
                }]
            }),
            ..Default::default()
        },
        spec: Some(NetworkPolicySpec {
            pod_selector: Some(labels_selector(pod_labels)),
            policy_types: Some(vec!["Ingress".to_string(), "Egress".to_string()]),
            ingress: Some(ingress),
            egress: Some(egress),
        }),
    }
}

/// The sources joined by commas, as their `Display` writes them, in one allocation.
fn rule_sources(sources: &[RuleSource]) -> String {
    const LOCAL: &str = "local";
    const POLICY: &str = "policy/";
    let len = sources
        .iter()
        .map(|source| match source {
            RuleSource::Local => LOCAL.len(),
            RuleSource::Policy(name) => POLICY.len() + name.len(),
        })
        .sum::<usize>()
        + sources.len().saturating_sub(1);
    let mut text = String::with_capacity(len);
    for (i, source) in sources.iter().enumerate() {
        if i > 0 {
            text.push(',');
        }
        match source {
            RuleSource::Local => text.push_str(LOCAL),
            RuleSource::Policy(name) => {
                text.push_str(POLICY);
                text.push_str(name);
            }
        }
    }
    text
}

#[cfg(test)]
#[test]
fn rule_sources_match_display() {
    let sources = [
        RuleSource::Local,
        RuleSource::Policy("llm-apis".into()),
        RuleSource::Policy("b".into()),
    ];
    for n in 0..=sources.len() {
        let joined: Vec<String> = sources[..n].iter().map(ToString::to_string).collect();
        assert_eq!(rule_sources(&sources[..n]), joined.join(","));
    }
}

#[cfg(test)]
#[test]
fn cidr_text_matches_display() {
    for text in [
        "0.0.0.0/0",
        "10.0.0.0/8",
        "192.168.100.0/24",
        "203.0.113.7/32",
        "255.255.255.255/32",
        "2001:db8::/32",
    ] {
        let net: ipnet::IpNet = text.parse().unwrap();
        assert_eq!(cidr_text(&net), net.to_string());
    }
}

/// Every (destination, port) pair a policy allows, as stable one-line strings.
pub(super) fn destinations(policy: &NetworkPolicy) -> BTreeSet<String> {
    let mut out = BTreeSet::new();
    let rules = policy
        .spec
        .as_ref()
        .and_then(|s| s.egress.as_deref())
        .unwrap_or_default();
    for rule in rules {
        let peers: Vec<String> = match &rule.to {
            None => vec!["*".to_string()],
            Some(to) if to.is_empty() => vec!["*".to_string()],
            Some(to) => to.iter().map(describe_peer).collect(),
        };
        let ports: Vec<String> = match &rule.ports {
            None => vec!["any port".to_string()],
            Some(ports) if ports.is_empty() => vec!["any port".to_string()],
            Some(ports) => ports.iter().map(describe_port).collect(),
        };
        for p in &peers {
            for port in &ports {
                out.insert(format!("{p} {port}"));
            }
        }
    }
    out
}

fn describe_selector(kind: &str, s: &K8sSelector) -> String {
    let mut terms: Vec<String> = s
        .match_labels
        .iter()
        .flatten()
        .map(|(k, v)| format!("{k}={v}"))
        .collect();
    terms.extend(s.match_expressions.iter().flatten().map(|r| {
        format!(
            "{} {} ({})",
            r.key,
            r.operator,
            r.values.as_deref().unwrap_or_default().join(",")
        )
    }));
    format!("{kind}{{{}}}", terms.join(","))
}

fn describe_peer(peer: &NetworkPolicyPeer) -> String {
    if let Some(block) = &peer.ip_block {
        return match block.except.as_deref() {
            Some(except) if !except.is_empty() => format!("{} except {}", block.cidr, except.join(",")),
            _ => block.cidr.clone(),
        };
    }
    let mut parts = Vec::new();
    if let Some(ns) = &peer.namespace_selector {
        parts.push(describe_selector("namespace", ns));
    }
    if let Some(pods) = &peer.pod_selector {
        parts.push(describe_selector("pods", pods));
    }
    parts.join(" ")
}

fn describe_port(port: &NetworkPolicyPort) -> String {
    let protocol = port.protocol.as_deref().unwrap_or("TCP");
    match (&port.port, port.end_port) {
        (None, _) => format!("{protocol}/*"),
        (Some(IntOrString::Int(p)), None) => format!("{protocol}/{p}"),
        (Some(IntOrString::Int(p)), Some(end)) => format!("{protocol}/{p}-{end}"),
        (Some(IntOrString::String(name)), _) => format!("{protocol}/{name}"),
    }
}
