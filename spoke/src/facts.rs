//! Cluster facts from the API server's and the DNS Service's objects (pure functions).

use std::collections::BTreeSet;
use std::net::IpAddr;

use k8s_openapi::api::core::v1::{Endpoints, Service};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use tollgate_common::egress_rule::{PortRange, Protocol};
use tollgate_common::planner::{ApiServerFacts, DnsFacts};

/// Ready addresses of an Endpoints object, parsed, in their order.
fn ready_addresses(endpoints: &Endpoints) -> Vec<IpAddr> {
    endpoints
        .subsets
        .iter()
        .flatten()
        .flat_map(|s| s.addresses.iter().flatten())
        .filter_map(|a| a.ip.parse().ok())
        .collect()
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
pub fn api_server(endpoints: Option<&Endpoints>, service: Option<&Service>) -> ApiServerFacts {
    let addresses = endpoints.map(ready_addresses).unwrap_or_default();
    let ports: BTreeSet<u16> = endpoints
        .into_iter()
        .flat_map(|e| e.subsets.iter().flatten())
        .flat_map(|s| s.ports.iter().flatten())
        .filter(|p| p.protocol.as_deref().is_none_or(|proto| proto == "TCP"))
        .filter_map(|p| u16::try_from(p.port).ok())
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
pub fn dns(namespace: &str, endpoints: Option<&Endpoints>, service: Option<&Service>) -> Option<DnsFacts> {
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
    for port in endpoints
        .into_iter()
        .flat_map(|e| e.subsets.iter().flatten())
        .flat_map(|s| s.ports.iter().flatten())
    {
        if !dns_names.contains(&port.name.as_deref()) {
            continue;
        }
        let protocol = Protocol::parse(port.protocol.as_deref().unwrap_or("TCP")).unwrap_or(Protocol::Tcp);
        if let Ok(number) = u16::try_from(port.port) {
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
        addresses: endpoints.map(ready_addresses).unwrap_or_default(),
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
        let facts = api_server(Some(&eps), Some(&svc));
        assert_eq!(
            facts.addresses,
            vec!["192.0.2.11".parse::<IpAddr>().unwrap(), "192.0.2.10".parse().unwrap()]
        );
        assert_eq!(facts.ports, vec![6443]);
        assert_eq!(facts.service, Some(("10.0.0.1".parse().unwrap(), 443)));
        assert_eq!(api_server(None, None), ApiServerFacts::default());
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
        let facts = dns("openshift-dns", Some(&eps), Some(&svc)).unwrap();
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
        assert_eq!(dns("openshift-dns", Some(&eps), None), None);
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
        let facts = dns("kube-system", None, Some(&svc)).unwrap();
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
