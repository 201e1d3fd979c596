//! Egress rules in the standard NetworkPolicy egress shape, and their validation.

use std::fmt;

use ipnet::IpNet;
use serde::{Deserialize, Deserializer, Serialize};

use crate::field_error::{FieldError, child, index};
use crate::fqdn::Fqdn;
use crate::label_selector::{LabelSelector, RawLabelSelector};
use crate::serde_paths::deserialize_strict;

/// A validated egress rule: at least one destination peer, and the ports it may be reached on (none = all ports).
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
pub struct EgressRule {
    pub to: Vec<Peer>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub ports: Vec<PortRange>,
}

/// A destination: an `ipBlock`, in-cluster pods chosen by `namespaceSelector` and/or `podSelector`, or a DNS name
/// (`fqdn`) that the spoke resolves to addresses in its own cluster.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Peer {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub ip_block: Option<IpBlock>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub namespace_selector: Option<LabelSelector>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub pod_selector: Option<LabelSelector>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub fqdn: Option<Fqdn>,
}

impl Peer {
    pub fn ip_block(cidr: IpNet) -> Self {
        Self {
            ip_block: Some(IpBlock {
                cidr,
                except: Vec::new(),
            }),
            namespace_selector: None,
            pod_selector: None,
            fqdn: None,
        }
    }

    pub fn namespace(selector: LabelSelector) -> Self {
        Self {
            ip_block: None,
            namespace_selector: Some(selector),
            pod_selector: None,
            fqdn: None,
        }
    }

    pub fn fqdn(name: Fqdn) -> Self {
        Self {
            ip_block: None,
            namespace_selector: None,
            pod_selector: None,
            fqdn: Some(name),
        }
    }

    /// In-cluster peers (selectors) rather than address blocks or names.
    pub fn is_in_cluster(&self) -> bool {
        self.ip_block.is_none() && self.fqdn.is_none()
    }
}

/// A CIDR destination, minus the narrower CIDRs in `except`.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
pub struct IpBlock {
    pub cidr: IpNet,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub except: Vec<IpNet>,
}

/// One port or port range (`port`..=`endPort`) of one protocol; no `port` means every port of that protocol.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct PortRange {
    pub protocol: Protocol,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub port: Option<u16>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub end_port: Option<u16>,
}

impl PortRange {
    pub fn single(protocol: Protocol, port: u16) -> Self {
        Self {
            protocol,
            port: Some(port),
            end_port: None,
        }
    }
}

impl fmt::Display for PortRange {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match (self.port, self.end_port) {
            (None, _) => write!(f, "{}/*", self.protocol),
            (Some(p), None) => write!(f, "{}/{p}", self.protocol),
            (Some(p), Some(e)) => write!(f, "{}/{p}-{e}", self.protocol),
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
pub enum Protocol {
    #[serde(rename = "TCP")]
    Tcp,
    #[serde(rename = "UDP")]
    Udp,
    #[serde(rename = "SCTP")]
    Sctp,
}

impl Protocol {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Tcp => "TCP",
            Self::Udp => "UDP",
            Self::Sctp => "SCTP",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "TCP" => Some(Self::Tcp),
            "UDP" => Some(Self::Udp),
            "SCTP" => Some(Self::Sctp),
            _ => None,
        }
    }
}

impl fmt::Display for Protocol {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The message for a port-only rule. OVN-Kubernetes drops such rules without a word, so say it loudly here.
pub const PORT_ONLY_REASON: &str = "port-only rule: it has ports but no `to` peers, and OVN-Kubernetes (OpenShift) \
     silently drops port-only egress rules, so it would not be enforced there; add the destinations under `to` \
     (ipBlock, namespaceSelector, podSelector or fqdn)";

/// `spec.egress` of an `AgentRuntime`: `{rules: [...]}`.
#[derive(Debug, Default, Deserialize)]
#[serde(expecting = "an egress declaration (rules)")]
pub(crate) struct RawLocalEgress {
    rules: Option<Vec<RawRule>>,
}

/// A rule as written, before validation.
#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase", expecting = "an egress rule (to, ports)")]
pub(crate) struct RawRule {
    to: Option<Vec<RawPeer>>,
    ports: Option<Vec<RawPort>>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(
    rename_all = "camelCase",
    expecting = "a destination peer (ipBlock, namespaceSelector, podSelector, fqdn)"
)]
struct RawPeer {
    ip_block: Option<RawIpBlock>,
    namespace_selector: Option<RawLabelSelector>,
    pod_selector: Option<RawLabelSelector>,
    fqdn: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(expecting = "an ipBlock (cidr, except)")]
struct RawIpBlock {
    cidr: String,
    except: Option<Vec<String>>,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase", expecting = "a port (protocol, port, endPort)")]
struct RawPort {
    protocol: Option<String>,
    port: Option<RawPortNumber>,
    end_port: Option<i64>,
}

#[derive(Debug, Deserialize)]
#[serde(untagged, expecting = "a port number")]
enum RawPortNumber {
    Number(i64),
    Name(String),
}

/// Parses and validates `spec.egress` of an `AgentRuntime` (`{rules: [...]}`). The one definition of a valid
/// local declaration, used by the spoke.
pub fn parse_local_egress<'de, D>(de: D, path: &str) -> Result<Vec<EgressRule>, Vec<FieldError>>
where
    D: Deserializer<'de>,
    D::Error: fmt::Display,
{
    let mut errors = Vec::new();
    let Ok(raw) = deserialize_strict::<_, RawLocalEgress>(de, path, &mut errors) else {
        return Err(errors);
    };
    let rules = validate_rules(raw.rules.unwrap_or_default(), &child(path, "rules"), &mut errors);
    if errors.is_empty() { Ok(rules) } else { Err(errors) }
}

/// Parses and validates a list of egress rules (the shape of `spec.egress` in an `EgressPolicy`).
pub fn parse_egress_rules<'de, D>(de: D, path: &str) -> Result<Vec<EgressRule>, Vec<FieldError>>
where
    D: Deserializer<'de>,
    D::Error: fmt::Display,
{
    let mut errors = Vec::new();
    let Ok(raw) = deserialize_strict::<_, Vec<RawRule>>(de, path, &mut errors) else {
        return Err(errors);
    };
    let rules = validate_rules(raw, path, &mut errors);
    if errors.is_empty() { Ok(rules) } else { Err(errors) }
}

pub(crate) fn validate_rules(raw: Vec<RawRule>, path: &str, errors: &mut Vec<FieldError>) -> Vec<EgressRule> {
    raw.into_iter()
        .enumerate()
        .filter_map(|(i, rule)| validate_rule(rule, &index(path, i), errors))
        .collect()
}

fn validate_rule(raw: RawRule, path: &str, errors: &mut Vec<FieldError>) -> Option<EgressRule> {
    let before = errors.len();
    let raw_to = raw.to.unwrap_or_default();
    let raw_ports = raw.ports.unwrap_or_default();
    if raw_to.is_empty() {
        let reason = if raw_ports.is_empty() {
            "a rule needs at least one destination under `to`: an empty rule would allow all egress"
        } else {
            PORT_ONLY_REASON
        };
        errors.push(FieldError::new(child(path, "to"), reason));
    }
    let to_path = child(path, "to");
    let to: Vec<Peer> = raw_to
        .into_iter()
        .enumerate()
        .filter_map(|(i, peer)| validate_peer(peer, &index(&to_path, i), errors))
        .collect();
    let ports_path = child(path, "ports");
    let ports: Vec<PortRange> = raw_ports
        .into_iter()
        .enumerate()
        .filter_map(|(i, port)| validate_port(port, &index(&ports_path, i), errors))
        .collect();
    (errors.len() == before).then_some(EgressRule { to, ports })
}

fn validate_peer(raw: RawPeer, path: &str, errors: &mut Vec<FieldError>) -> Option<Peer> {
    let before = errors.len();
    let has_selector = raw.namespace_selector.is_some() || raw.pod_selector.is_some();
    match (&raw.ip_block, has_selector, &raw.fqdn) {
        (None, false, None) => errors.push(FieldError::new(
            path,
            "a peer must set ipBlock, namespaceSelector, podSelector or fqdn",
        )),
        (Some(_), true, _) => errors.push(FieldError::new(
            path,
            "ipBlock cannot be combined with namespaceSelector or podSelector in one peer; use two peers",
        )),
        (Some(_), false, Some(_)) | (None, true, Some(_)) => errors.push(FieldError::new(
            child(path, "fqdn"),
            "fqdn cannot be combined with ipBlock, namespaceSelector or podSelector in one peer; use two peers",
        )),
        _ => {}
    }
    let fqdn = raw.fqdn.and_then(|text| {
        Fqdn::parse(&text)
            .map_err(|reason| errors.push(FieldError::new(child(path, "fqdn"), reason)))
            .ok()
    });
    let ip_block = raw
        .ip_block
        .and_then(|b| validate_ip_block(b, &child(path, "ipBlock"), errors));
    let namespace_selector = raw
        .namespace_selector
        .map(|s| s.validate(&child(path, "namespaceSelector"), errors));
    let pod_selector = raw
        .pod_selector
        .map(|s| s.validate(&child(path, "podSelector"), errors));
    (errors.len() == before).then_some(Peer {
        ip_block,
        namespace_selector,
        pod_selector,
        fqdn,
    })
}

/// Parses a CIDR in network form (`203.0.113.0/24`, `2001:db8::/32`); host bits set is an error that suggests
/// the network address.
pub fn parse_cidr(text: &str, path: &str, errors: &mut Vec<FieldError>) -> Option<IpNet> {
    match text.parse::<IpNet>() {
        Ok(net) if net.trunc() == net => Some(net),
        Ok(net) => {
            errors.push(FieldError::new(
                path,
                format!("{text} has host bits set: use the network address {}", net.trunc()),
            ));
            None
        }
        Err(_) if text.parse::<std::net::IpAddr>().is_ok() => {
            let suffix = if text.contains(':') { 128 } else { 32 };
            errors.push(FieldError::new(
                path,
                format!("{text} has no prefix length: write {text}/{suffix} for a single address"),
            ));
            None
        }
        Err(_) => {
            errors.push(FieldError::new(
                path,
                format!("invalid CIDR {text:?}: expected an address and prefix length such as 203.0.113.0/24 or 2001:db8::/32"),
            ));
            None
        }
    }
}

fn validate_ip_block(raw: RawIpBlock, path: &str, errors: &mut Vec<FieldError>) -> Option<IpBlock> {
    let before = errors.len();
    let cidr = parse_cidr(&raw.cidr, &child(path, "cidr"), errors);
    let except_path = child(path, "except");
    let mut except = Vec::new();
    for (i, text) in raw.except.unwrap_or_default().iter().enumerate() {
        let entry_path = index(&except_path, i);
        let Some(net) = parse_cidr(text, &entry_path, errors) else {
            continue;
        };
        if let Some(cidr) = cidr
            && (!cidr.contains(&net) || net.prefix_len() <= cidr.prefix_len())
        {
            errors.push(FieldError::new(
                entry_path,
                format!("{net} is not strictly inside cidr {cidr}: except entries must be narrower parts of the cidr"),
            ));
            continue;
        }
        except.push(net);
    }
    except.sort();
    except.dedup();
    (errors.len() == before).then(|| IpBlock {
        cidr: cidr.expect("no error means the cidr parsed"),
        except,
    })
}

fn validate_port(raw: RawPort, path: &str, errors: &mut Vec<FieldError>) -> Option<PortRange> {
    let before = errors.len();
    let protocol = match raw.protocol.as_deref() {
        None => Some(Protocol::Tcp),
        Some(text) => Protocol::parse(text).or_else(|| {
            errors.push(FieldError::new(
                child(path, "protocol"),
                format!("unknown protocol {text:?}: expected TCP, UDP or SCTP"),
            ));
            None
        }),
    };
    let has_port = raw.port.is_some();
    let port = match raw.port {
        None => None,
        Some(RawPortNumber::Name(name)) => {
            errors.push(FieldError::new(
                child(path, "port"),
                format!("named port {name:?} is not supported: use the port number"),
            ));
            None
        }
        Some(RawPortNumber::Number(n)) => check_port_number(n, &child(path, "port"), errors),
    };
    let end_port = raw
        .end_port
        .and_then(|n| check_port_number(n, &child(path, "endPort"), errors));
    if let Some(end) = raw.end_port {
        match (has_port, port) {
            (false, _) => errors.push(FieldError::new(
                child(path, "endPort"),
                "endPort requires port (the start of the range)",
            )),
            (true, Some(start)) if end < i64::from(start) => errors.push(FieldError::new(
                child(path, "endPort"),
                format!("endPort {end} is lower than port {start}"),
            )),
            _ => {}
        }
    }
    (errors.len() == before).then(|| PortRange {
        protocol: protocol.expect("no error means the protocol parsed"),
        port,
        end_port,
    })
}

fn check_port_number(n: i64, path: &str, errors: &mut Vec<FieldError>) -> Option<u16> {
    match u16::try_from(n) {
        Ok(p) if p >= 1 => Some(p),
        _ => {
            errors.push(FieldError::new(path, format!("{n} is outside the port range 1-65535")));
            None
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(yaml: &str) -> Result<Vec<EgressRule>, Vec<FieldError>> {
        parse_egress_rules(serde_yaml_ng::Deserializer::from_str(yaml), "spec.egress")
    }

    #[test]
    fn parses_the_design_example() {
        let rules = parse(
            r#"
- to:
    - ipBlock: {cidr: 203.0.113.0/24, except: [203.0.113.128/25]}
    - ipBlock: {cidr: "2001:db8::/32"}
  ports:
    - {protocol: TCP, port: 443}
    - {protocol: TCP, port: 8000, endPort: 8100}
- to:
    - namespaceSelector: {matchLabels: {team: a}}
      podSelector: {matchLabels: {app: db}}
"#,
        )
        .unwrap();
        assert_eq!(rules.len(), 2);
        assert_eq!(
            rules[0].to[0].ip_block,
            Some(IpBlock {
                cidr: "203.0.113.0/24".parse().unwrap(),
                except: vec!["203.0.113.128/25".parse().unwrap()],
            })
        );
        assert_eq!(
            rules[0].to[1].ip_block.as_ref().unwrap().cidr.to_string(),
            "2001:db8::/32"
        );
        assert_eq!(
            rules[0].ports,
            vec![
                PortRange::single(Protocol::Tcp, 443),
                PortRange {
                    protocol: Protocol::Tcp,
                    port: Some(8000),
                    end_port: Some(8100)
                }
            ]
        );
        assert!(rules[1].ports.is_empty());
        assert!(rules[1].to[0].is_in_cluster());
    }

    #[test]
    fn protocol_defaults_to_tcp() {
        let rules = parse("- to: [{ipBlock: {cidr: 10.0.0.0/8}}]\n  ports: [{port: 53}]").unwrap();
        assert_eq!(rules[0].ports, vec![PortRange::single(Protocol::Tcp, 53)]);
    }

    #[test]
    fn port_only_names_ovn_kubernetes() {
        let errors = parse("- ports: [{port: 443}]").unwrap_err();
        assert_eq!(errors.len(), 1);
        assert_eq!(errors[0].path, "spec.egress[0].to");
        assert!(errors[0].reason.contains("OVN-Kubernetes"), "{}", errors[0].reason);
        assert!(errors[0].reason.contains("add the destinations under `to`"));
    }

    #[test]
    fn every_error_is_reported() {
        let errors = parse(
            "- to: [{ipBlock: {cidr: 10.0.0.1/8}}]\n  ports: [{port: 0}, {protocol: ICMP, port: 1}]\n- ports: [{port: 1}]",
        )
        .unwrap_err();
        let paths: Vec<_> = errors.iter().map(|e| e.path.as_str()).collect();
        assert_eq!(
            paths,
            [
                "spec.egress[0].to[0].ipBlock.cidr",
                "spec.egress[0].ports[0].port",
                "spec.egress[0].ports[1].protocol",
                "spec.egress[1].to"
            ]
        );
        assert!(errors[0].reason.contains("use the network address 10.0.0.0/8"));
    }

    #[test]
    fn fqdn_peers_are_validated_with_their_paths() {
        let rules =
            parse("- to: [{fqdn: api.openai.com.}, {ipBlock: {cidr: 10.0.0.0/8}}]\n  ports: [{port: 443}]").unwrap();
        assert_eq!(rules[0].to[0], Peer::fqdn(Fqdn::parse("api.openai.com").unwrap()));
        assert!(!rules[0].to[0].is_in_cluster());
        let errors = parse(
            "- to: [{fqdn: '*.openai.com'}, {fqdn: api.example.com, ipBlock: {cidr: 10.0.0.0/8}}]\n\
             - to: [{fqdn: db.example.com, namespaceSelector: {}}, {fqdn: Bad.Example.com}]",
        )
        .unwrap_err();
        let found: Vec<(&str, &str)> = errors.iter().map(|e| (e.path.as_str(), e.reason.as_str())).collect();
        assert_eq!(found.len(), 4, "{found:?}");
        assert_eq!(found[0].0, "spec.egress[0].to[0].fqdn");
        assert!(found[0].1.contains("wildcard"), "{}", found[0].1);
        assert_eq!(found[1].0, "spec.egress[0].to[1].fqdn");
        assert!(found[1].1.contains("cannot be combined"), "{}", found[1].1);
        assert_eq!(found[2].0, "spec.egress[1].to[0].fqdn");
        assert_eq!(found[3].0, "spec.egress[1].to[1].fqdn");
        assert!(found[3].1.contains("lowercase"), "{}", found[3].1);
        let long = format!("- to: [{{fqdn: {}.example.com}}]", "a.".repeat(130));
        let errors = parse(&long).unwrap_err();
        assert_eq!(errors[0].path, "spec.egress[0].to[0].fqdn");
        assert!(errors[0].reason.contains("at most 253"), "{}", errors[0].reason);
    }

    #[test]
    fn local_egress_accepts_empty_rules() {
        let de = serde_json::json!({"rules": []});
        assert_eq!(parse_local_egress(&de, "spec.egress").unwrap(), vec![]);
        let de = serde_json::json!({});
        assert_eq!(parse_local_egress(&de, "spec.egress").unwrap(), vec![]);
        let de = serde_json::json!({"rules": [{"ports": [{"port": 443}]}], "extra": 1});
        let errors = parse_local_egress(&de, "spec.egress").unwrap_err();
        let paths: Vec<_> = errors.iter().map(|e| e.path.as_str()).collect();
        assert_eq!(paths, ["spec.egress.extra", "spec.egress.rules[0].to"]);
    }
}
