//! A cluster's reported facts as the hub stores them: JSON with the wire message's field names, readable with the
//! database's own tools and independent of the protobuf encoding.

use serde::{Deserialize, Serialize};
use tollgate_proto::v1 as pb;

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

/// Stored facts JSON back as the wire message (validate it with `ClusterFacts::try_from`).
pub fn facts_from_json(json: &str) -> Result<pb::ClusterFacts, serde_json::Error> {
    let stored: StoredFacts = serde_json::from_str(json)?;
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
                end_port: 0,
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stored_facts_round_trip() {
        let wire = pb::ClusterFacts {
            api_server_addresses: vec!["192.0.2.10".into()],
            api_server_ports: vec![6443],
            dns_ports: vec![pb::PortSpec {
                protocol: "UDP".into(),
                port: 5353,
                end_port: 0,
            }],
            restricted_allow_dns: true,
            policy_name_suffix: "-egress".into(),
            spoke_version: "0.1.0".into(),
            resolved_names: vec![pb::ResolvedName {
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
            }],
            ..Default::default()
        };
        assert_eq!(facts_from_json(&facts_to_json(&wire)).unwrap(), wire);
        assert!(facts_from_json("[1]").is_err());
        assert_eq!(
            facts_from_json("{}").unwrap(),
            pb::ClusterFacts::default(),
            "absent fields are empty"
        );
    }
}
