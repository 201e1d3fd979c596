//! The NetworkPolicy egress rules the spoke writes, as JSON, for comparing with what it wrote on a harness cluster
//! (the API server's endpoints on [`API_PORT`], the `kubernetes` Service at [`API_SERVICE_IP`], kube-dns at
//! [`DNS_SERVICE_IP`] and [`DNS_POD_IP`]), and readers of a written policy's JSON.
//!
//! ```
//! use tollgate_e2e::rules::{api_rule, api_service_rule, baseline_and, dns_rule, rule};
//!
//! let scoped = baseline_and("192.0.2.10", &[rule("203.0.113.0/24", 443)]);
//! assert_eq!(scoped[0], api_rule(&["192.0.2.10"]));
//! assert_eq!(scoped[1], api_service_rule());
//! assert_eq!(scoped[2], dns_rule());
//! ```

use serde_json::{Value, json};

use crate::fleet::{API_PORT, API_SERVICE_IP, DNS_POD_IP, DNS_SERVICE_IP};

/// The name of the NetworkPolicy the spoke writes for `agent`.
pub fn policy_name(agent: &str) -> String {
    format!("{agent}-signature-policy")
}

/// The `tollgate.dev/mode` label of a written policy (`allow-all`, `scoped`, `restricted`; "" when missing).
pub fn mode(policy: &Value) -> &str {
    policy["metadata"]["labels"]["tollgate.dev/mode"].as_str().unwrap_or("")
}

/// `spec.egress` of a written policy.
pub fn egress(policy: &Value) -> Value {
    policy["spec"]["egress"].clone()
}

/// The annotation `key` of a written policy ("" when missing).
pub fn annotation<'a>(policy: &'a Value, key: &str) -> &'a str {
    policy["metadata"]["annotations"][key].as_str().unwrap_or("")
}

/// One ipBlock peer per API-server address, on [`API_PORT`].
pub fn api_rule(addresses: &[&str]) -> Value {
    json!({
        "to": addresses.iter().map(|a| json!({"ipBlock": {"cidr": format!("{a}/32")}})).collect::<Vec<_>>(),
        "ports": [{"protocol": "TCP", "port": API_PORT}],
    })
}

/// The rule to the `kubernetes` Service ClusterIP ([`API_SERVICE_IP`]) on 443.
pub fn api_service_rule() -> Value {
    json!({"to": [{"ipBlock": {"cidr": format!("{API_SERVICE_IP}/32")}}], "ports": [{"protocol": "TCP", "port": 443}]})
}

/// The rule to kube-dns: its ClusterIP, its endpoint address and the kube-system pods, on 53 over TCP and UDP.
pub fn dns_rule() -> Value {
    json!({
        "to": [
            {"ipBlock": {"cidr": format!("{DNS_SERVICE_IP}/32")}},
            {"ipBlock": {"cidr": format!("{DNS_POD_IP}/32")}},
            {"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "kube-system"}}},
        ],
        "ports": [{"protocol": "TCP", "port": 53}, {"protocol": "UDP", "port": 53}],
    })
}

/// A TCP rule to one CIDR.
pub fn rule(cidr: &str, port: u16) -> Value {
    json!({"to": [{"ipBlock": {"cidr": cidr}}], "ports": [{"protocol": "TCP", "port": port}]})
}

/// The egress of a restricted agent in a cluster whose API server is at `api_address`.
pub fn restricted(api_address: &str) -> Value {
    json!([api_rule(&[api_address]), api_service_rule()])
}

/// The baseline (API server at `api_address`, API Service, DNS) followed by `rules`.
pub fn baseline_and(api_address: &str, rules: &[Value]) -> Value {
    let mut all = vec![api_rule(&[api_address]), api_service_rule(), dns_rule()];
    all.extend_from_slice(rules);
    Value::Array(all)
}

/// The egress of an allow-all agent.
pub fn allow_all() -> Value {
    json!([{}])
}
