//! Cluster facts from the API server's and the DNS Service's objects (pure functions).

use std::collections::BTreeSet;
use std::net::IpAddr;

use k8s_openapi::api::core::v1::{Endpoints, Service};
use k8s_openapi::api::discovery::v1::EndpointSlice;
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use tollgate_common::egress_rule::{PortRange, Protocol};
use tollgate_common::planner::{ApiServerFacts, DnsFacts};

/// Where a Service's endpoints come from: the core/v1 Endpoints object and, where the server offers them,
/// discovery.k8s.io/v1 EndpointSlices. Both are read and merged, so either alone is enough.
#[derive(Clone, Copy, Debug, Default)]
pub struct EndpointSources<'a> {
    pub endpoints: Option<&'a Endpoints>,
    pub slices: &'a [&'a EndpointSlice],
}

/// A port of an endpoint: (name, number, protocol).
type NamedPort = (Option<String>, i32, String);

impl EndpointSources<'_> {
    /// Ready addresses, parsed, deduplicated in first-seen order.
    fn addresses(&self) -> Vec<IpAddr> {
        let from_endpoints = self
            .endpoints
            .into_iter()
            .flat_map(|e| e.subsets.iter().flatten())
            .flat_map(|s| s.addresses.iter().flatten())
            .map(|a| a.ip.as_str());
        let from_slices = self
            .slices
            .iter()
            .flat_map(|s| s.endpoints.iter())
            .filter(|e| e.conditions.as_ref().and_then(|c| c.ready) != Some(false))
            .flat_map(|e| e.addresses.iter().map(String::as_str));
        let mut out: Vec<IpAddr> = Vec::new();
        for ip in from_endpoints.chain(from_slices).filter_map(|a| a.parse().ok()) {
            if !out.contains(&ip) {
                out.push(ip);
            }
        }
        out
    }

    fn ports(&self) -> Vec<NamedPort> {
        let from_endpoints = self
            .endpoints
            .into_iter()
            .flat_map(|e| e.subsets.iter().flatten())
            .flat_map(|s| s.ports.iter().flatten())
            .map(|p| {
                (
                    p.name.clone(),
                    p.port,
                    p.protocol.clone().unwrap_or_else(|| "TCP".into()),
                )
            });
        let from_slices = self
            .slices
            .iter()
            .flat_map(|s| s.ports.iter().flatten())
            .filter_map(|p| {
                Some((
                    p.name.clone().filter(|n| !n.is_empty()),
                    p.port?,
                    p.protocol.clone().unwrap_or_else(|| "TCP".into()),
                ))
            });
        from_endpoints.chain(from_slices).collect()
    }
}

fn cluster_ip(service: &Service) -> Option<IpAddr> {
    service
        .spec
        .as_ref()?
        .cluster_ip
        .as_deref()
        .filter(|ip| *ip != "None")
        .and_then(|ip| ip.parse().ok())
}

/// `default/kubernetes`: endpoint addresses and TCP ports, and the Service ClusterIP with its port.
pub fn api_server(sources: EndpointSources<'_>, service: Option<&Service>) -> ApiServerFacts {
    let addresses = sources.addresses();
    let ports: BTreeSet<u16> = sources
        .ports()
        .into_iter()
        .filter(|(_, _, protocol)| protocol == "TCP")
        .filter_map(|(_, port, _)| u16::try_from(port).ok())
        .collect();
    let service = service.and_then(|svc| {
        let ip = cluster_ip(svc)?;
        let ports = svc.spec.as_ref()?.ports.as_ref()?;
        let port = ports
            .iter()
            .find(|p| p.name.as_deref() == Some("https"))
            .or_else(|| ports.first())?;
        Some((ip, u16::try_from(port.port).ok()?))
    });
    ApiServerFacts {
        addresses,
        ports: ports.into_iter().collect(),
        service,
    }
}

/// The DNS Service: its endpoint addresses, ClusterIP, and the ports its pods listen on behind port 53 (5353 on
/// OpenShift). `None` without a Service.
pub fn dns(namespace: &str, sources: EndpointSources<'_>, service: Option<&Service>) -> Option<DnsFacts> {
    let service = service?;
    let service_ports = service
        .spec
        .as_ref()
        .and_then(|s| s.ports.as_deref())
        .unwrap_or_default();
    let dns_ports: Vec<_> = service_ports.iter().filter(|p| p.port == 53).collect();
    // Endpoint ports carry the Service port's name; an unnamed single-port Service has unnamed endpoint ports.
    let dns_names: BTreeSet<Option<&str>> = dns_ports.iter().map(|p| p.name.as_deref()).collect();
    let mut target_ports: BTreeSet<PortRange> = BTreeSet::new();
    for (name, port, protocol) in sources.ports() {
        if !dns_names.contains(&name.as_deref()) {
            continue;
        }
        let protocol = Protocol::parse(&protocol).unwrap_or(Protocol::Tcp);
        if let Ok(number) = u16::try_from(port) {
            target_ports.insert(PortRange::single(protocol, number));
        }
    }
    // Numeric target ports of the Service count too, before endpoints exist.
    for port in &dns_ports {
        if let Some(IntOrString::Int(target)) = port.target_port
            && let Ok(number) = u16::try_from(target)
        {
            let protocol = Protocol::parse(port.protocol.as_deref().unwrap_or("TCP")).unwrap_or(Protocol::Tcp);
            target_ports.insert(PortRange::single(protocol, number));
        }
    }
    Some(DnsFacts {
        namespace: namespace.to_string(),
        addresses: sources.addresses(),
        target_ports: target_ports.into_iter().collect(),
        cluster_ip: cluster_ip(service),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn endpoints(value: serde_json::Value) -> Endpoints {
        serde_json::from_value(value).unwrap()
    }

    fn service(value: serde_json::Value) -> Service {
        serde_json::from_value(value).unwrap()
    }

    #[test]
    fn api_server_from_endpoints_and_service() {
        let eps = endpoints(serde_json::json!({
            "metadata": {"name": "kubernetes", "namespace": "default"},
            "subsets": [{
                "addresses": [{"ip": "192.0.2.11"}, {"ip": "192.0.2.10"}],
                "notReadyAddresses": [{"ip": "192.0.2.99"}],
                "ports": [{"name": "https", "port": 6443, "protocol": "TCP"}],
            }],
        }));
        let svc = service(serde_json::json!({
            "metadata": {"name": "kubernetes", "namespace": "default"},
            "spec": {"clusterIP": "10.0.0.1", "ports": [{"name": "https", "port": 443, "targetPort": 6443}]},
        }));
        let facts = api_server(
            EndpointSources {
                endpoints: Some(&eps),
                slices: &[],
            },
            Some(&svc),
        );
        assert_eq!(
            facts.addresses,
            vec!["192.0.2.11".parse::<IpAddr>().unwrap(), "192.0.2.10".parse().unwrap()]
        );
        assert_eq!(facts.ports, vec![6443]);
        assert_eq!(facts.service, Some(("10.0.0.1".parse().unwrap(), 443)));
        assert_eq!(api_server(EndpointSources::default(), None), ApiServerFacts::default());
    }

    #[test]
    fn openshift_dns_maps_53_to_5353() {
        let svc = service(serde_json::json!({
            "metadata": {"name": "dns-default", "namespace": "openshift-dns"},
            "spec": {"clusterIP": "172.30.0.10", "ports": [
                {"name": "dns", "port": 53, "protocol": "UDP", "targetPort": "dns"},
                {"name": "dns-tcp", "port": 53, "protocol": "TCP", "targetPort": "dns-tcp"},
                {"name": "metrics", "port": 9154, "protocol": "TCP", "targetPort": "metrics"},
            ]},
        }));
        let eps = endpoints(serde_json::json!({
            "metadata": {"name": "dns-default", "namespace": "openshift-dns"},
            "subsets": [{
                "addresses": [{"ip": "10.128.0.7"}],
                "ports": [
                    {"name": "dns", "port": 5353, "protocol": "UDP"},
                    {"name": "dns-tcp", "port": 5353, "protocol": "TCP"},
                    {"name": "metrics", "port": 9154, "protocol": "TCP"},
                ],
            }],
        }));
        let facts = dns(
            "openshift-dns",
            EndpointSources {
                endpoints: Some(&eps),
                slices: &[],
            },
            Some(&svc),
        )
        .unwrap();
        assert_eq!(facts.namespace, "openshift-dns");
        assert_eq!(facts.addresses, vec!["10.128.0.7".parse::<IpAddr>().unwrap()]);
        assert_eq!(facts.cluster_ip, Some("172.30.0.10".parse().unwrap()));
        assert_eq!(
            facts.target_ports,
            vec![
                PortRange::single(Protocol::Tcp, 5353),
                PortRange::single(Protocol::Udp, 5353)
            ]
        );
        assert_eq!(
            dns(
                "openshift-dns",
                EndpointSources {
                    endpoints: Some(&eps),
                    slices: &[]
                },
                None
            ),
            None
        );
    }

    #[test]
    fn endpoint_slices_merge_with_endpoints_and_skip_unready_addresses() {
        let slice: EndpointSlice = serde_json::from_value(serde_json::json!({
            "metadata": {"name": "kubernetes-abc", "namespace": "default", "labels": {"kubernetes.io/service-name": "kubernetes"}},
            "addressType": "IPv6",
            "endpoints": [
                {"addresses": ["2001:db8::10"], "conditions": {"ready": true}},
                {"addresses": ["2001:db8::99"], "conditions": {"ready": false}},
                {"addresses": ["192.0.2.10"]},
            ],
            "ports": [{"name": "https", "port": 6443, "protocol": "TCP"}],
        }))
        .unwrap();
        let eps = endpoints(serde_json::json!({
            "metadata": {"name": "kubernetes", "namespace": "default"},
            "subsets": [{"addresses": [{"ip": "192.0.2.10"}], "ports": [{"name": "https", "port": 6443}]}],
        }));
        let slices = [&slice];
        let facts = api_server(
            EndpointSources {
                endpoints: Some(&eps),
                slices: &slices,
            },
            None,
        );
        assert_eq!(facts.addresses, vec![ip_of("192.0.2.10"), ip_of("2001:db8::10")]);
        assert_eq!(facts.ports, vec![6443]);
        let only_slices = api_server(
            EndpointSources {
                endpoints: None,
                slices: &slices,
            },
            None,
        );
        assert_eq!(only_slices.addresses, vec![ip_of("2001:db8::10"), ip_of("192.0.2.10")]);
    }

    fn ip_of(text: &str) -> IpAddr {
        text.parse().unwrap()
    }

    #[test]
    fn vanilla_dns_before_endpoints_uses_numeric_target_ports() {
        let svc = service(serde_json::json!({
            "metadata": {"name": "kube-dns", "namespace": "kube-system"},
            "spec": {"clusterIP": "10.96.0.10", "ports": [
                {"name": "dns", "port": 53, "protocol": "UDP", "targetPort": 53},
                {"name": "dns-tcp", "port": 53, "protocol": "TCP", "targetPort": 53},
            ]},
        }));
        let facts = dns("kube-system", EndpointSources::default(), Some(&svc)).unwrap();
        assert!(facts.addresses.is_empty());
        assert_eq!(
            facts.target_ports,
            vec![
                PortRange::single(Protocol::Tcp, 53),
                PortRange::single(Protocol::Udp, 53)
            ]
        );
    }
}
