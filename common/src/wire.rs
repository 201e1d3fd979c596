//! Conversions between the `tollgate.v1` wire messages and the domain types, validated at the edge. The only
//! place where protobuf types meet domain types: the planner never sees either side's transport.

use std::net::IpAddr;
use std::sync::Arc;

use tollgate_proto::v1 as pb;

use crate::document::{DocumentSet, Source};
use crate::egress_rule::{EgressRule, PortRange, Protocol, parse_egress_rules};
use crate::field_error::{DocumentError, FieldError};
use crate::intent::Intent;
use crate::label_selector::LabelSelector;
use crate::planner::{Agent, AgentOutcome, ApiServerFacts, ClusterFacts, DnsFacts, LocalEgress, Mode};
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
                        p.port?;
                        Some(port_to_wire(p))
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
impl TryFrom<&pb::ClusterFacts> for ClusterFacts {
    type Error = FieldError;

    fn try_from(message: &pb::ClusterFacts) -> Result<Self, FieldError> {
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
}

impl From<Mode> for pb::EgressMode {
    fn from(mode: Mode) -> Self {
        match mode {
            Mode::Scoped => Self::Scoped,
            Mode::AllowAll => Self::AllowAll,
            Mode::BaselineOnly => Self::BaselineOnly,
            Mode::Restricted => Self::Restricted,
        }
    }
}

impl TryFrom<pb::EgressMode> for Mode {
    type Error = FieldError;

    fn try_from(mode: pb::EgressMode) -> Result<Self, FieldError> {
        Ok(match mode {
            pb::EgressMode::Scoped => Self::Scoped,
            pb::EgressMode::AllowAll => Self::AllowAll,
            pb::EgressMode::BaselineOnly => Self::BaselineOnly,
            pb::EgressMode::Restricted => Self::Restricted,
            pb::EgressMode::Unspecified => return Err(FieldError::new("mode", "required: the agent's egress mode")),
        })
    }
}

impl From<Reason> for pb::VerificationReason {
    fn from(reason: Reason) -> Self {
        match reason {
            Reason::MtlsVerified => Self::MtlsVerified,
            Reason::SignatureVerified => Self::SignatureVerified,
            Reason::AgentCardVerified => Self::AgentCardVerified,
            Reason::NotVerified => Self::NotVerified,
            Reason::BindingFailed => Self::BindingFailed,
            Reason::CardStale => Self::CardStale,
            Reason::Malformed => Self::Malformed,
        }
    }
}

impl TryFrom<pb::VerificationReason> for Reason {
    type Error = FieldError;

    fn try_from(reason: pb::VerificationReason) -> Result<Self, FieldError> {
        Ok(match reason {
            pb::VerificationReason::MtlsVerified => Self::MtlsVerified,
            pb::VerificationReason::SignatureVerified => Self::SignatureVerified,
            pb::VerificationReason::AgentCardVerified => Self::AgentCardVerified,
            pb::VerificationReason::NotVerified => Self::NotVerified,
            pb::VerificationReason::BindingFailed => Self::BindingFailed,
            pb::VerificationReason::CardStale => Self::CardStale,
            pb::VerificationReason::Malformed => Self::Malformed,
            pb::VerificationReason::Unspecified => {
                return Err(FieldError::new(
                    "verificationReason",
                    "required: why the agent is (not) verified",
                ));
            }
        })
    }
}

/// A mode as received: an unknown number (a newer peer) is [`pb::EgressMode::Unspecified`].
pub fn mode_from_wire(value: i32) -> Result<Mode, FieldError> {
    pb::EgressMode::try_from(value)
        .unwrap_or(pb::EgressMode::Unspecified)
        .try_into()
}

/// A verification reason as received: an unknown number (a newer peer) is [`pb::VerificationReason::Unspecified`].
pub fn reason_from_wire(value: i32) -> Result<Reason, FieldError> {
    pb::VerificationReason::try_from(value)
        .unwrap_or(pb::VerificationReason::Unspecified)
        .try_into()
}

/// A spoke condition's type by name (`Diverged`, …; `UnknownN` for a number this build does not know): how the hub
/// stores it and the CLI shows it.
pub fn condition_name(value: i32) -> String {
    match pb::ConditionType::try_from(value) {
        Ok(pb::ConditionType::Diverged) => "Diverged".to_string(),
        Ok(pb::ConditionType::IntentNotPersisted) => "IntentNotPersisted".to_string(),
        Ok(pb::ConditionType::PoliciesHeld) => "PoliciesHeld".to_string(),
        Ok(pb::ConditionType::LocalRulesUnavailable) => "LocalRulesUnavailable".to_string(),
        Ok(pb::ConditionType::Unspecified) | Err(_) => format!("Unknown{value}"),
    }
}

/// [`condition_name`] inverted (unspecified for a name it does not give).
pub fn condition_type(name: &str) -> i32 {
    [
        pb::ConditionType::Diverged,
        pb::ConditionType::IntentNotPersisted,
        pb::ConditionType::PoliciesHeld,
        pb::ConditionType::LocalRulesUnavailable,
    ]
    .into_iter()
    .map(|t| t as i32)
    .find(|t| condition_name(*t) == name)
    .unwrap_or(pb::ConditionType::Unspecified as i32)
}

/// A received mode as its name (`scoped`, `allow-all`, …), `unknown` when it is not one.
pub fn mode_name(value: i32) -> &'static str {
    mode_from_wire(value).map_or("unknown", Mode::as_str)
}

/// A received verification reason as its name (`SignatureVerified`, …), `unknown` when it is not one.
pub fn reason_name(value: i32) -> &'static str {
    reason_from_wire(value).map_or("unknown", Reason::as_str)
}

/// What the hub needs to plan one agent under other intent, beyond its status: everything of a planner [`Agent`]
/// that shapes its egress.
pub fn plan_inputs(agent: &Agent) -> pb::PlanInputs {
    pb::PlanInputs {
        target_name: agent.target_name.clone(),
        namespace_labels: agent
            .namespace_labels
            .iter()
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect(),
        local_egress: match &agent.local_egress {
            LocalEgress::Absent => None,
            LocalEgress::Rules(rules) => Some(pb::plan_inputs::LocalEgress::Rules(pb::LocalRules {
                rules: rules.iter().map(rule_to_wire).collect(),
            })),
            LocalEgress::Invalid(errors) => Some(pb::plan_inputs::LocalEgress::Invalid(pb::LocalErrors {
                errors: errors.iter().map(ToString::to_string).collect(),
            })),
        },
    }
}

/// One rule in the wire shape.
pub fn rule_to_wire(rule: &EgressRule) -> pb::EgressRule {
    let selector = |s: &LabelSelector| pb::LabelSelector {
        match_labels: s.match_labels.clone().into_iter().collect(),
        match_expressions: s
            .match_expressions
            .iter()
            .map(|r| pb::LabelSelectorRequirement {
                key: r.key.clone(),
                operator: r.operator.as_str().to_string(),
                values: r.values.clone(),
            })
            .collect(),
    };
    pb::EgressRule {
        to: rule
            .to
            .iter()
            .map(|peer| pb::Peer {
                ip_block: peer.ip_block.as_ref().map(|b| pb::IpBlock {
                    cidr: b.cidr.to_string(),
                    except: b.except.iter().map(ToString::to_string).collect(),
                }),
                namespace_selector: peer.namespace_selector.as_ref().map(selector),
                pod_selector: peer.pod_selector.as_ref().map(selector),
                fqdn: peer.fqdn.as_ref().map(ToString::to_string).unwrap_or_default(),
            })
            .collect(),
        ports: rule.ports.iter().map(port_to_wire).collect(),
    }
}

fn port_to_wire(port: &PortRange) -> pb::PortSpec {
    pb::PortSpec {
        protocol: port.protocol.as_str().to_string(),
        port: port.port.map_or(0, u32::from),
        end_port: port.end_port.map_or(0, u32::from),
    }
}

/// Received rules, validated exactly as declared rules are (through their NetworkPolicy shape).
pub fn rules_from_wire(rules: &[pb::EgressRule], path: &str) -> Result<Vec<EgressRule>, Vec<FieldError>> {
    use serde_json::{Map, Value, json};
    let selector = |s: &pb::LabelSelector| {
        let mut out = Map::new();
        if !s.match_labels.is_empty() {
            out.insert("matchLabels".into(), json!(s.match_labels));
        }
        if !s.match_expressions.is_empty() {
            let expressions: Vec<Value> = s
                .match_expressions
                .iter()
                .map(|r| json!({"key": r.key, "operator": r.operator, "values": r.values}))
                .collect();
            out.insert("matchExpressions".into(), Value::Array(expressions));
        }
        Value::Object(out)
    };
    let rules: Vec<Value> = rules
        .iter()
        .map(|rule| {
            let to: Vec<Value> = rule
                .to
                .iter()
                .map(|peer| {
                    let mut out = Map::new();
                    if let Some(block) = &peer.ip_block {
                        let mut b = Map::new();
                        b.insert("cidr".into(), json!(block.cidr));
                        if !block.except.is_empty() {
                            b.insert("except".into(), json!(block.except));
                        }
                        out.insert("ipBlock".into(), Value::Object(b));
                    }
                    if let Some(s) = &peer.namespace_selector {
                        out.insert("namespaceSelector".into(), selector(s));
                    }
                    if let Some(s) = &peer.pod_selector {
                        out.insert("podSelector".into(), selector(s));
                    }
                    if !peer.fqdn.is_empty() {
                        out.insert("fqdn".into(), json!(peer.fqdn));
                    }
                    Value::Object(out)
                })
                .collect();
            let ports: Vec<Value> = rule
                .ports
                .iter()
                .map(|p| {
                    let mut out = Map::new();
                    out.insert("protocol".into(), json!(p.protocol));
                    if p.port != 0 {
                        out.insert("port".into(), json!(p.port));
                    }
                    if p.end_port != 0 {
                        out.insert("endPort".into(), json!(p.end_port));
                    }
                    Value::Object(out)
                })
                .collect();
            let mut out = Map::new();
            out.insert("to".into(), Value::Array(to));
            if !ports.is_empty() {
                out.insert("ports".into(), Value::Array(ports));
            }
            Value::Object(out)
        })
        .collect();
    parse_egress_rules(Value::Array(rules), path)
}

/// A reported agent as the planner's agent (the hub plans previews with it); its rules are validated again: a hub
/// never trusts them blindly.
impl TryFrom<&pb::AgentStatus> for Agent {
    type Error = FieldError;

    fn try_from(status: &pb::AgentStatus) -> Result<Self, FieldError> {
        let inputs = status
            .plan_inputs
            .as_ref()
            .ok_or_else(|| FieldError::new("planInputs", "required: what the agent is planned with"))?;
        let local_egress = match &inputs.local_egress {
            None => LocalEgress::Absent,
            Some(pb::plan_inputs::LocalEgress::Invalid(invalid)) => {
                LocalEgress::Invalid(invalid.errors.iter().map(|e| FieldError::new("", e)).collect())
            }
            Some(pb::plan_inputs::LocalEgress::Rules(local)) => {
                LocalEgress::Rules(rules_from_wire(&local.rules, "planInputs.rules").map_err(|errors| {
                    let first = errors.into_iter().next();
                    first.unwrap_or_else(|| FieldError::new("planInputs.rules", "invalid"))
                })?)
            }
        };
        Ok(Agent {
            namespace: status.namespace.clone(),
            name: status.name.clone(),
            uid: String::new(),
            target_name: inputs.target_name.clone(),
            labels: status.labels.clone().into_iter().collect(),
            namespace_labels: Arc::new(inputs.namespace_labels.clone().into_iter().collect()),
            pod_labels: None,
            local_egress,
            verification: Verification {
                verified: status.verified,
                reason: reason_from_wire(status.verification_reason)?,
                message: String::new(),
                binding_warning: None,
            },
        })
    }
}

/// One agent's outcome as reported to the hub, with the inputs the hub's `plan` needs.
pub fn agent_status_to_wire(outcome: &AgentOutcome, agent: &Agent, applied_revision: u64) -> pb::AgentStatus {
    pb::AgentStatus {
        namespace: outcome.namespace.clone(),
        name: outcome.name.clone(),
        labels: agent.labels.clone().into_iter().collect(),
        verified: outcome.verified,
        verification_reason: pb::VerificationReason::from(outcome.verification_reason).into(),
        mode: pb::EgressMode::from(outcome.mode).into(),
        rule_count: u32::try_from(outcome.rule_count).unwrap_or(u32::MAX),
        rule_sources: outcome.rule_sources.iter().map(ToString::to_string).collect(),
        applied_revision,
        errors: outcome.errors().map(ToString::to_string).collect(),
        dropped_rules: outcome.dropped.iter().map(ToString::to_string).collect(),
        plan_inputs: Some(plan_inputs(agent)),
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
    use std::collections::BTreeMap;

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
    fn condition_types_are_stored_by_name() {
        assert_eq!(condition_name(pb::ConditionType::Diverged as i32), "Diverged");
        assert_eq!(condition_name(pb::ConditionType::PoliciesHeld as i32), "PoliciesHeld");
        assert_eq!(condition_name(99), "Unknown99");
        for t in [
            pb::ConditionType::IntentNotPersisted,
            pb::ConditionType::LocalRulesUnavailable,
        ] {
            assert_eq!(condition_type(&condition_name(t as i32)), t as i32);
        }
        assert_eq!(condition_type("Unknown99"), 0);
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
        let wire = facts_to_wire(&facts, "v1.20.2");
        assert_eq!(wire.kubernetes_version, "v1.20.2");
        assert_eq!(ClusterFacts::try_from(&wire).unwrap(), facts);
        let mut bad = wire;
        bad.api_server_ports = vec![70000];
        assert_eq!(ClusterFacts::try_from(&bad).unwrap_err().path, "apiServerPorts");
    }

    fn agent(local_egress: LocalEgress) -> Agent {
        Agent {
            namespace: "team-a".into(),
            name: "researcher".into(),
            uid: String::new(),
            target_name: "researcher-deploy".into(),
            labels: BTreeMap::from([("tier".into(), "gold".into())]),
            namespace_labels: BTreeMap::from([("kubernetes.io/metadata.name".into(), "team-a".into())]).into(),
            pod_labels: None,
            local_egress,
            verification: Verification::verified(Reason::SignatureVerified, ""),
        }
    }

    fn status(agent: &Agent) -> pb::AgentStatus {
        let outcome = crate::planner::plan(
            &Default::default(),
            &Default::default(),
            std::slice::from_ref(agent),
            &Intent::default(),
        )
        .agents
        .remove(0)
        .outcome;
        agent_status_to_wire(&outcome, agent, 3)
    }

    #[test]
    fn an_agent_round_trips_through_its_status() {
        let rules = parse_egress_rules(
            serde_yaml_ng::from_str::<serde_json::Value>(
                "- to: [{ipBlock: {cidr: 10.0.0.0/8, except: [10.1.0.0/16]}}, {fqdn: api.example.com}]\n  \
                 ports: [{protocol: TCP, port: 8000, endPort: 8100}, {protocol: UDP}]\n\
                 - to: [{namespaceSelector: {matchLabels: {team: db}}, podSelector: {matchExpressions: \
                 [{key: app, operator: In, values: [pg]}, {key: canary, operator: DoesNotExist}]}}]\n",
            )
            .unwrap(),
            "rules",
        )
        .unwrap();
        for local in [
            LocalEgress::Absent,
            LocalEgress::Rules(Vec::new()),
            LocalEgress::Rules(rules),
            LocalEgress::Invalid(vec![FieldError::new("", "spec.egress.rules[0].to: port-only rule")]),
        ] {
            let agent = agent(local);
            let status = status(&agent);
            assert!(mode_from_wire(status.mode).is_ok(), "{status:?}");
            assert_eq!(Agent::try_from(&status).unwrap(), agent);
        }
    }

    #[test]
    fn a_status_without_its_typed_fields_is_refused_by_field() {
        let mut reported = status(&agent(LocalEgress::Absent));
        reported.verification_reason = 0;
        assert_eq!(Agent::try_from(&reported).unwrap_err().path, "verificationReason");
        reported.verification_reason = 99;
        assert_eq!(
            Agent::try_from(&reported).unwrap_err().path,
            "verificationReason",
            "a newer peer's reason"
        );
        reported.plan_inputs = None;
        assert_eq!(Agent::try_from(&reported).unwrap_err().path, "planInputs");
        assert_eq!(mode_from_wire(0).unwrap_err().path, "mode");
        for mode in Mode::ALL {
            assert_eq!(mode_from_wire(pb::EgressMode::from(mode) as i32).unwrap(), mode);
        }

        let mut bad = status(&agent(LocalEgress::Rules(Vec::new())));
        if let Some(pb::plan_inputs::LocalEgress::Rules(local)) =
            bad.plan_inputs.as_mut().and_then(|i| i.local_egress.as_mut())
        {
            local.rules.push(pb::EgressRule {
                to: vec![pb::Peer {
                    ip_block: Some(pb::IpBlock {
                        cidr: "10.0.0.1/8".into(),
                        except: Vec::new(),
                    }),
                    ..Default::default()
                }],
                ports: Vec::new(),
            });
        }
        let error = Agent::try_from(&bad).unwrap_err();
        assert_eq!(error.path, "planInputs.rules[0].to[0].ipBlock.cidr", "{error}");
    }
}
