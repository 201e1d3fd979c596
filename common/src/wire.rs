//! Conversions between the `tollgate.v1` wire messages and the domain types, validated at the edge. The only
//! place where protobuf types meet domain types: the planner never sees either side's transport.

use std::collections::BTreeMap;
use std::net::IpAddr;

use serde::{Deserialize, Serialize};
use tollgate_proto::v1 as pb;

use crate::document::{DocumentSet, Source};
use crate::egress_rule::parse_egress_rules;
use crate::egress_rule::{PortRange, Protocol};
use crate::field_error::{DocumentError, FieldError};
use crate::intent::Intent;
use crate::planner::{Agent, AgentOutcome, ApiServerFacts, ClusterFacts, DnsFacts, LocalEgress};
use crate::verification::{Reason, Verification};

/// The documents of a set as wire documents (canonical YAML each), sorted by kind then name.
pub fn documents_to_wire(set: &DocumentSet) -> Vec<pb::Document> {
    set.documents()
        .map(|d| pb::Document {
            kind: d.kind().to_string(),
            name: d.name().to_string(),
            yaml: d.to_yaml(),
        })
        .collect()
}

/// Parses and validates wire documents with the same validation as everywhere else.
pub fn documents_from_wire(documents: &[pb::Document]) -> Result<DocumentSet, Vec<DocumentError>> {
    let sources: Vec<Source> = documents
        .iter()
        .map(|d| Source::new(format!("{}/{}", d.kind, d.name), d.yaml.clone()))
        .collect();
    DocumentSet::from_sources(&sources)
}

/// A received intent revision as the planner's intent.
pub fn intent_from_wire(message: &pb::IntentRevision) -> Result<Intent, Vec<DocumentError>> {
    let set = documents_from_wire(&message.documents)?;
    Ok(Intent {
        revision: Some(message.revision),
        policies: set.policies.into_values().collect(),
        guardrails: set.guardrails.into_values().collect(),
    })
}

pub fn facts_to_wire(facts: &ClusterFacts, kubernetes_version: &str) -> pb::ClusterFacts {
    let dns = facts.dns.as_ref();
    pb::ClusterFacts {
        api_server_addresses: facts.api.addresses.iter().map(ToString::to_string).collect(),
        api_server_ports: facts.api.ports.iter().map(|p| u32::from(*p)).collect(),
        api_service_address: facts.api.service.map(|(ip, _)| ip.to_string()).unwrap_or_default(),
        api_service_port: facts.api.service.map(|(_, p)| u32::from(p)).unwrap_or_default(),
        dns_namespace: dns.map(|d| d.namespace.clone()).unwrap_or_default(),
        dns_addresses: dns
            .map(|d| d.addresses.iter().map(ToString::to_string).collect())
            .unwrap_or_default(),
        dns_ports: dns
            .map(|d| {
                d.target_ports
                    .iter()
                    .filter_map(|p| {
                        Some(pb::PortSpec {
                            protocol: p.protocol.as_str().to_string(),
                            port: u32::from(p.port?),
                        })
                    })
                    .collect()
            })
            .unwrap_or_default(),
        dns_service_address: dns
            .and_then(|d| d.cluster_ip)
            .map(|ip| ip.to_string())
            .unwrap_or_default(),
        kubernetes_version: kubernetes_version.to_string(),
        ..pb::ClusterFacts::default()
    }
}

/// Reported facts as the hub stores them (JSON with the wire message's field names).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", default)]
struct StoredFacts {
    api_server_addresses: Vec<String>,
    api_server_ports: Vec<u32>,
    api_service_address: String,
    api_service_port: u32,
    dns_namespace: String,
    dns_addresses: Vec<String>,
    dns_ports: Vec<StoredPort>,
    dns_service_address: String,
    kubernetes_version: String,
    restricted_allow_dns: bool,
    policy_name_suffix: String,
    spoke_version: String,
    resolved_names: Vec<StoredName>,
}

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", default)]
struct StoredName {
    name: String,
    addresses: Vec<StoredAddress>,
    error: String,
    nxdomain: bool,
    unstable: bool,
    known: u32,
}

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", default)]
struct StoredAddress {
    address: String,
    first_seen_unix: i64,
    stale_since_unix: i64,
}

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
struct StoredPort {
    protocol: String,
    port: u32,
}

/// Reported facts as stored JSON.
pub fn facts_to_json(message: &pb::ClusterFacts) -> String {
    let stored = StoredFacts {
        api_server_addresses: message.api_server_addresses.clone(),
        api_server_ports: message.api_server_ports.clone(),
        api_service_address: message.api_service_address.clone(),
        api_service_port: message.api_service_port,
        dns_namespace: message.dns_namespace.clone(),
        dns_addresses: message.dns_addresses.clone(),
        dns_ports: message
            .dns_ports
            .iter()
            .map(|p| StoredPort {
                protocol: p.protocol.clone(),
                port: p.port,
            })
            .collect(),
        dns_service_address: message.dns_service_address.clone(),
        kubernetes_version: message.kubernetes_version.clone(),
        restricted_allow_dns: message.restricted_allow_dns,
        policy_name_suffix: message.policy_name_suffix.clone(),
        spoke_version: message.spoke_version.clone(),
        resolved_names: message
            .resolved_names
            .iter()
            .map(|n| StoredName {
                name: n.name.clone(),
                addresses: n
                    .addresses
                    .iter()
                    .map(|a| StoredAddress {
                        address: a.address.clone(),
                        first_seen_unix: a.first_seen_unix,
                        stale_since_unix: a.stale_since_unix,
                    })
                    .collect(),
                error: n.error.clone(),
                nxdomain: n.nxdomain,
                unstable: n.unstable,
                known: n.known,
            })
            .collect(),
    };
    serde_json::to_string(&stored).expect("facts serialize")
}

/// Stored facts JSON back as the wire message (validate it with [`facts_from_wire`]).
pub fn facts_from_json(json: &str) -> Result<pb::ClusterFacts, String> {
    let stored: StoredFacts = serde_json::from_str(json).map_err(|e| format!("stored facts: {e}"))?;
    Ok(pb::ClusterFacts {
        api_server_addresses: stored.api_server_addresses,
        api_server_ports: stored.api_server_ports,
        api_service_address: stored.api_service_address,
        api_service_port: stored.api_service_port,
        dns_namespace: stored.dns_namespace,
        dns_addresses: stored.dns_addresses,
        dns_ports: stored
            .dns_ports
            .into_iter()
            .map(|p| pb::PortSpec {
                protocol: p.protocol,
                port: p.port,
            })
            .collect(),
        dns_service_address: stored.dns_service_address,
        kubernetes_version: stored.kubernetes_version,
        restricted_allow_dns: stored.restricted_allow_dns,
        policy_name_suffix: stored.policy_name_suffix,
        spoke_version: stored.spoke_version,
        resolved_names: stored
            .resolved_names
            .into_iter()
            .map(|n| pb::ResolvedName {
                name: n.name,
                addresses: n
                    .addresses
                    .into_iter()
                    .map(|a| pb::ResolvedAddress {
                        address: a.address,
                        first_seen_unix: a.first_seen_unix,
                        stale_since_unix: a.stale_since_unix,
                    })
                    .collect(),
                error: n.error,
                nxdomain: n.nxdomain,
                unstable: n.unstable,
                known: n.known,
            })
            .collect(),
    })
}

fn ip(text: &str, path: &str) -> Result<IpAddr, FieldError> {
    text.parse()
        .map_err(|_| FieldError::new(path, format!("{text:?} is not an IP address")))
}

fn port(n: u32, path: &str) -> Result<u16, FieldError> {
    u16::try_from(n)
        .ok()
        .filter(|p| *p > 0)
        .ok_or_else(|| FieldError::new(path, format!("{n} is outside the port range 1-65535")))
}

/// Reported facts as the planner's facts (the hub plans previews with them).
pub fn facts_from_wire(message: &pb::ClusterFacts) -> Result<ClusterFacts, FieldError> {
    let addresses = message
        .api_server_addresses
        .iter()
        .map(|a| ip(a, "apiServerAddresses"))
        .collect::<Result<_, _>>()?;
    let ports = message
        .api_server_ports
        .iter()
        .map(|p| port(*p, "apiServerPorts"))
        .collect::<Result<_, _>>()?;
    let service = if message.api_service_address.is_empty() {
        None
    } else {
        Some((
            ip(&message.api_service_address, "apiServiceAddress")?,
            port(message.api_service_port, "apiServicePort")?,
        ))
    };
    let dns = if message.dns_namespace.is_empty() {
        None
    } else {
        Some(DnsFacts {
            namespace: message.dns_namespace.clone(),
            addresses: message
                .dns_addresses
                .iter()
                .map(|a| ip(a, "dnsAddresses"))
                .collect::<Result<_, _>>()?,
            target_ports: message
                .dns_ports
                .iter()
                .map(|p| {
                    let protocol = Protocol::parse(&p.protocol).ok_or_else(|| {
                        FieldError::new("dnsPorts.protocol", format!("unknown protocol {:?}", p.protocol))
                    })?;
                    Ok(PortRange::single(protocol, port(p.port, "dnsPorts.port")?))
                })
                .collect::<Result<_, FieldError>>()?,
            cluster_ip: if message.dns_service_address.is_empty() {
                None
            } else {
                Some(ip(&message.dns_service_address, "dnsServiceAddress")?)
            },
        })
    };
    Ok(ClusterFacts {
        api: ApiServerFacts {
            addresses,
            ports,
            service,
        },
        dns,
        // The hub plans names symbolically: it never sees a cluster's addresses as facts.
        names: Default::default(),
    })
}

/// What the hub needs to plan one agent under other intent: everything of a planner [`Agent`] that shapes its
/// egress.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct PlanInputs {
    pub target_name: String,
    pub namespace_labels: BTreeMap<String, String>,
    pub verified: bool,
    pub verification_reason: String,
    /// The valid local rules (NetworkPolicy egress shape); `None` when `spec.egress` is absent.
    pub local_rules: Option<serde_json::Value>,
    /// Why `spec.egress` is invalid, when it is.
    pub local_errors: Vec<String>,
}

impl PlanInputs {
    pub fn of(agent: &Agent) -> Self {
        let (local_rules, local_errors) = match &agent.local_egress {
            LocalEgress::Absent => (None, Vec::new()),
            LocalEgress::Rules(rules) => (Some(serde_json::to_value(rules).expect("rules serialize")), Vec::new()),
            LocalEgress::Invalid(errors) => (
                Some(serde_json::Value::Array(Vec::new())),
                errors.iter().map(ToString::to_string).collect(),
            ),
        };
        Self {
            target_name: agent.target_name.clone(),
            namespace_labels: agent.namespace_labels.clone(),
            verified: agent.verification.verified,
            verification_reason: agent.verification.reason.as_str().to_string(),
            local_rules,
            local_errors,
        }
    }

    /// The planner agent these inputs describe; the rules are validated again (a hub never trusts them blindly).
    pub fn agent(&self, namespace: &str, name: &str, labels: &BTreeMap<String, String>) -> Result<Agent, String> {
        let reason = Reason::parse(&self.verification_reason)
            .ok_or_else(|| format!("unknown verification reason {:?}", self.verification_reason))?;
        let local_egress = match (&self.local_rules, self.local_errors.is_empty()) {
            (None, _) => LocalEgress::Absent,
            (Some(_), false) => {
                LocalEgress::Invalid(self.local_errors.iter().map(|e| FieldError::new("", e)).collect())
            }
            (Some(rules), true) => LocalEgress::Rules(
                parse_egress_rules(rules, "spec.egress.rules")
                    .map_err(|errors| errors.iter().map(ToString::to_string).collect::<Vec<_>>().join("; "))?,
            ),
        };
        Ok(Agent {
            namespace: namespace.to_string(),
            name: name.to_string(),
            uid: String::new(),
            target_name: self.target_name.clone(),
            labels: labels.clone(),
            namespace_labels: self.namespace_labels.clone(),
            pod_labels: None,
            local_egress,
            verification: Verification {
                verified: self.verified,
                reason,
                message: String::new(),
                binding_warning: None,
            },
        })
    }
}

/// One agent's outcome as reported to the hub, with the inputs the hub's `plan` needs.
pub fn agent_status_to_wire(outcome: &AgentOutcome, agent: &Agent, applied_revision: u64) -> pb::AgentStatus {
    let labels = &agent.labels;
    pb::AgentStatus {
        namespace: outcome.namespace.clone(),
        name: outcome.name.clone(),
        labels: labels.clone().into_iter().collect(),
        verified: outcome.verified,
        verification_reason: outcome.verification_reason.as_str().to_string(),
        mode: outcome.mode.as_str().to_string(),
        rule_count: u32::try_from(outcome.rule_count).unwrap_or(u32::MAX),
        rule_sources: outcome.rule_sources.iter().map(ToString::to_string).collect(),
        applied_revision,
        errors: outcome.errors().map(ToString::to_string).collect(),
        dropped_rules: outcome.dropped.iter().map(ToString::to_string).collect(),
        plan_inputs: serde_json::to_string(&PlanInputs::of(agent)).expect("plan inputs serialize"),
        fqdn_names: {
            let mut names: Vec<String> = outcome.names.iter().map(|n| n.name.to_string()).collect();
            names.dedup();
            names
        },
        widened_by: Vec::new(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn documents_round_trip_and_are_validated() {
        let set = DocumentSet::from_yaml(
            "t",
            "apiVersion: tollgate.dev/v1alpha1\nkind: EgressPolicy\nmetadata: {name: p}\nspec:\n  egress: [{to: [{ipBlock: {cidr: 10.0.0.0/8}}]}]\n",
        )
        .unwrap();
        let wire = documents_to_wire(&set);
        assert_eq!(wire.len(), 1);
        assert_eq!((wire[0].kind.as_str(), wire[0].name.as_str()), ("EgressPolicy", "p"));
        assert_eq!(documents_from_wire(&wire).unwrap(), set);
        let intent = intent_from_wire(&pb::IntentRevision {
            revision: 7,
            documents: wire.clone(),
            unchanged: false,
            ..Default::default()
        })
        .unwrap();
        assert_eq!(intent.revision, Some(7));
        assert_eq!(intent.policies.len(), 1);

        let mut bad = wire;
        bad[0].yaml = bad[0].yaml.replace("10.0.0.0/8", "10.0.0.1/8");
        let errors = documents_from_wire(&bad).unwrap_err();
        assert_eq!(errors[0].error.path, "spec.egress[0].to[0].ipBlock.cidr");
    }

    #[test]
    fn facts_round_trip() {
        let facts = ClusterFacts {
            api: ApiServerFacts {
                addresses: vec!["192.0.2.10".parse().unwrap(), "2001:db8::1".parse().unwrap()],
                ports: vec![6443],
                service: Some(("10.0.0.1".parse().unwrap(), 443)),
            },
            dns: Some(DnsFacts {
                namespace: "openshift-dns".into(),
                addresses: vec!["10.128.0.7".parse().unwrap()],
                target_ports: vec![PortRange::single(Protocol::Udp, 5353)],
                cluster_ip: Some("172.30.0.10".parse().unwrap()),
            }),
            names: Default::default(),
        };
        let mut wire = facts_to_wire(&facts, "v1.20.2");
        assert_eq!(wire.kubernetes_version, "v1.20.2");
        assert_eq!(facts_from_wire(&wire).unwrap(), facts);
        wire.resolved_names = vec![pb::ResolvedName {
            name: "api.openai.com".into(),
            addresses: vec![pb::ResolvedAddress {
                address: "203.0.113.9".into(),
                first_seen_unix: 1_700_000_000,
                stale_since_unix: 1_700_000_600,
            }],
            error: "SERVFAIL".into(),
            nxdomain: false,
            unstable: true,
            known: 70,
        }];
        assert_eq!(
            facts_from_json(&facts_to_json(&wire)).unwrap(),
            wire,
            "stored JSON round-trips"
        );
        assert!(facts_from_json("[1]").unwrap_err().starts_with("stored facts:"));
        let mut bad = wire;
        bad.api_server_ports = vec![70000];
        assert_eq!(facts_from_wire(&bad).unwrap_err().path, "apiServerPorts");
    }
}
