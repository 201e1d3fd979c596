//! The baseline every Scoped and BaselineOnly policy carries: API server and DNS (docs/design.md, "Effective egress").

use ipnet::IpNet;
use k8s_openapi::api::networking::v1::NetworkPolicyEgressRule;

use super::{ClusterFacts, LABEL_NAMESPACE_NAME, ResolvedNames, render};
use crate::egress_rule::{EgressRule, Peer, PortRange, Protocol};
use crate::label_selector::LabelSelector;

/// Namespaces of the DNS servers of vanilla Kubernetes and of OpenShift, used when no DNS Service is found.
pub const FALLBACK_DNS_NAMESPACES: [&str; 2] = ["kube-system", "openshift-dns"];
/// The DNS port, and the port OpenShift's CoreDNS pods listen on behind it.
pub const DNS_PORT: u16 = 53;
pub const OPENSHIFT_DNS_TARGET_PORT: u16 = 5353;

/// The rendered API-server and DNS rules of one cluster.
#[derive(Clone, Debug, PartialEq)]
pub struct Baseline {
    /// The API-server rules, then the DNS rule.
    rules: Vec<NetworkPolicyEgressRule>,
    /// How many of `rules` are API-server rules.
    api_len: usize,
    dns_discovered: bool,
    restricted_allow_dns: bool,
}

impl Baseline {
    pub fn new(facts: &ClusterFacts, restricted_allow_dns: bool) -> Self {
        // The baseline names addresses and namespaces only: every rule keeps its peers.
        let no_names = ResolvedNames::new();
        let mut rules: Vec<_> = api_rules(facts)
            .iter()
            .filter_map(|rule| render::egress_rule(rule, &no_names))
            .collect();
        let api_len = rules.len();
        rules.extend(render::egress_rule(&dns_rule(facts), &no_names));
        Self {
            rules,
            api_len,
            dns_discovered: facts.dns.is_some(),
            restricted_allow_dns,
        }
    }

    /// At least one API-server endpoint address is known.
    pub fn api_discovered(&self) -> bool {
        self.api_len > 0
    }

    /// API server + DNS.
    pub fn full(&self) -> Vec<NetworkPolicyEgressRule> {
        self.full_rules().to_vec()
    }

    /// API server + DNS, borrowed.
    pub fn full_rules(&self) -> &[NetworkPolicyEgressRule] {
        &self.rules
    }

    /// API server, plus DNS when restricted agents may resolve names. Empty (deny all) when nothing is known.
    pub fn restricted(&self) -> Vec<NetworkPolicyEgressRule> {
        self.restricted_rules().to_vec()
    }

    /// [`Self::restricted`], borrowed.
    pub fn restricted_rules(&self) -> &[NetworkPolicyEgressRule] {
        if self.restricted_allow_dns {
            &self.rules
        } else {
            &self.rules[..self.api_len]
        }
    }

    /// What is missing from the cluster's facts.
    pub fn problems(&self) -> Vec<super::ClusterProblem> {
        let mut problems = Vec::new();
        if !self.api_discovered() {
            problems.push(super::ClusterProblem::ApiServerUndiscovered);
        }
        if !self.dns_discovered {
            problems.push(super::ClusterProblem::DnsUndiscovered);
        }
        problems
    }
}

fn host(ip: std::net::IpAddr) -> Peer {
    Peer::ip_block(IpNet::from(ip))
}

/// One rule to every endpoint address on the endpoint ports, and one to the Service ClusterIP on its port.
fn api_rules(facts: &ClusterFacts) -> Vec<EgressRule> {
    let api = &facts.api;
    let mut addresses = api.addresses.clone();
    addresses.sort();
    addresses.dedup();
    if addresses.is_empty() {
        return Vec::new();
    }
    let mut ports = api.ports.clone();
    ports.sort_unstable();
    ports.dedup();
    let mut rules = vec![EgressRule {
        to: addresses.into_iter().map(host).collect(),
        ports: ports.into_iter().map(|p| PortRange::single(Protocol::Tcp, p)).collect(),
    }];
    if let Some((ip, port)) = api.service {
        rules.push(EgressRule {
            to: vec![host(ip)],
            ports: vec![PortRange::single(Protocol::Tcp, port)],
        });
    }
    rules
}

/// DNS endpoints, ClusterIP and namespace on UDP+TCP 53 and the target ports; or the fallback namespaces.
fn dns_rule(facts: &ClusterFacts) -> EgressRule {
    let namespace_peer = |ns: &str| Peer::namespace(LabelSelector::from_labels([(LABEL_NAMESPACE_NAME, ns)]));
    let mut ports = vec![
        PortRange::single(Protocol::Udp, DNS_PORT),
        PortRange::single(Protocol::Tcp, DNS_PORT),
    ];
    let to = match &facts.dns {
        Some(dns) => {
            let mut addresses = dns.addresses.clone();
            addresses.extend(dns.cluster_ip);
            addresses.sort();
            addresses.dedup();
            ports.extend(dns.target_ports.iter().copied());
            let mut to: Vec<Peer> = addresses.into_iter().map(host).collect();
            to.push(namespace_peer(&dns.namespace));
            to
        }
        None => {
            for protocol in [Protocol::Udp, Protocol::Tcp] {
                ports.push(PortRange::single(protocol, OPENSHIFT_DNS_TARGET_PORT));
            }
            FALLBACK_DNS_NAMESPACES.iter().map(|ns| namespace_peer(ns)).collect()
        }
    };
    ports.sort();
    ports.dedup();
    EgressRule { to, ports }
}
