use serde_json::{Value, json};

use super::*;

fn policy(egress: Value) -> NetworkPolicy {
    serde_json::from_value(json!({
        "metadata": {"name": "planner-signature-policy", "namespace": "team-a"},
        "spec": {
            "podSelector": {"matchLabels": {"app": "planner"}},
            "policyTypes": ["Ingress", "Egress"],
            "egress": egress,
        },
    }))
    .unwrap()
}

fn api_and_dns() -> Vec<Value> {
    vec![
        json!({"to": [{"ipBlock": {"cidr": "192.0.2.10/32"}}], "ports": [{"protocol": "TCP", "port": 6443}]}),
        json!({"to": [{"ipBlock": {"cidr": "10.0.0.10/32"}},
                      {"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "kube-system"}}}],
               "ports": [{"protocol": "UDP", "port": 53}, {"protocol": "TCP", "port": 53}]}),
    ]
}

fn deny() -> Value {
    json!({"name": "deny-other-egress", "action": "Deny",
           "to": [{"namespaces": {}}, {"networks": ["0.0.0.0/0", "::/0"]}]})
}

#[test]
fn a_scoped_agent_gets_exactly_its_egress_then_a_deny() {
    let mut egress = api_and_dns();
    egress.push(json!({
        "to": [
            {"ipBlock": {"cidr": "203.0.113.0/24", "except": ["203.0.113.128/25"]}},
            {"podSelector": {"matchLabels": {"app": "db"}}},
            {"namespaceSelector": {"matchLabels": {"team": "data"}}, "podSelector": {}},
        ],
        "ports": [{"protocol": "TCP", "port": 8000, "endPort": 8100}, {"protocol": "UDP"}],
    }));
    let anp = render(
        "team-a",
        "planner",
        Mode::Scoped,
        &policy(json!(egress)),
        40,
        &Capabilities::all(),
    )
    .unwrap();
    assert_eq!(
        serde_json::to_value(&anp).unwrap(),
        json!({
            "apiVersion": "policy.networking.k8s.io/v1alpha1",
            "kind": "AdminNetworkPolicy",
            "metadata": {
                "name": name("team-a", "planner"),
                "labels": {
                    "app.kubernetes.io/managed-by": "tollgate-spoke",
                    "tollgate.dev/agent": "planner",
                    "tollgate.dev/agent-namespace": "team-a",
                    "tollgate.dev/mode": "scoped",
                },
            },
            "spec": {
                "priority": 40,
                "subject": {"pods": {
                    "namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "team-a"}},
                    "podSelector": {"matchLabels": {"app": "planner"}},
                }},
                "egress": [
                    {"name": "allow-0", "action": "Allow", "to": [{"networks": ["192.0.2.10/32"]}],
                     "ports": [{"portNumber": {"protocol": "TCP", "port": 6443}}]},
                    {"name": "allow-1", "action": "Allow",
                     "to": [{"networks": ["10.0.0.10/32"]},
                            {"namespaces": {"matchLabels": {"kubernetes.io/metadata.name": "kube-system"}}}],
                     "ports": [{"portNumber": {"protocol": "UDP", "port": 53}}, {"portNumber": {"protocol": "TCP", "port": 53}}]},
                    {"name": "allow-2", "action": "Allow",
                     "to": [
                        {"networks": ["203.0.113.0/25"]},
                        {"pods": {"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "team-a"}},
                                  "podSelector": {"matchLabels": {"app": "db"}}}},
                        {"pods": {"namespaceSelector": {"matchLabels": {"team": "data"}}, "podSelector": {}}},
                     ],
                     "ports": [{"portRange": {"protocol": "TCP", "start": 8000, "end": 8100}},
                               {"portRange": {"protocol": "UDP", "start": 1, "end": 65535}}]},
                    deny(),
                ],
            },
        })
    );
}

#[test]
fn restricted_and_baseline_only_agents_and_an_agent_without_any_egress() {
    let restricted = render(
        "team-a",
        "untrusted",
        Mode::Restricted,
        &policy(json!([api_and_dns()[0]])),
        7,
        &Capabilities::all(),
    )
    .unwrap();
    let egress = serde_json::to_value(&restricted.spec.egress).unwrap();
    assert_eq!(
        egress,
        json!([{"name": "allow-0", "action": "Allow", "to": [{"networks": ["192.0.2.10/32"]}],
                "ports": [{"portNumber": {"protocol": "TCP", "port": 6443}}]}, deny()])
    );
    assert_eq!(restricted.spec.priority, 7);
    assert_eq!(
        restricted.metadata.labels.as_ref().unwrap()["tollgate.dev/mode"],
        "restricted"
    );
    // Nothing discovered: deny-all egress.
    let nothing = render(
        "team-a",
        "untrusted",
        Mode::Restricted,
        &policy(json!([])),
        40,
        &Capabilities::all(),
    )
    .unwrap();
    assert_eq!(serde_json::to_value(&nothing.spec.egress).unwrap(), json!([deny()]));
    let baseline = render(
        "team-a",
        "b",
        Mode::BaselineOnly,
        &policy(json!(api_and_dns())),
        40,
        &Capabilities::all(),
    )
    .unwrap();
    assert_eq!(baseline.spec.egress.len(), 3);
}

#[test]
fn a_served_api_without_a_needed_peer_type_is_a_fallback_with_the_reason() {
    let old = Capabilities {
        peers: ["namespaces", "pods"].map(String::from).into(),
    };
    let error = render("team-a", "a", Mode::Scoped, &policy(json!(api_and_dns())), 40, &old).unwrap_err();
    assert!(error.contains("no `networks` egress peer"), "{error}");
    let crd = json!({"spec": {"versions": [{"name": "v1alpha1", "served": true, "schema": {"openAPIV3Schema": {"properties": {"spec": {"properties": {"egress": {"items": {"properties": {"to": {"items": {"properties": {"namespaces": {}, "pods": {}}}}}}}}}}}}}]}});
    assert_eq!(Capabilities::of_crd(&crd), old);
}

#[test]
fn too_many_rules_are_a_fallback() {
    let rules: Vec<Value> = (0..MAX_RULES)
        .map(|i| json!({"to": [{"ipBlock": {"cidr": format!("10.{i}.0.0/16")}}]}))
        .collect();
    let error = render(
        "team-a",
        "a",
        Mode::Scoped,
        &policy(json!(rules)),
        40,
        &Capabilities::all(),
    )
    .unwrap_err();
    assert!(error.contains("101 AdminNetworkPolicy rules"), "{error}");
}

#[test]
fn names_fit_63_characters_and_are_stable_and_distinct() {
    let long = "a".repeat(63);
    let n = name(&long, &long);
    assert!(n.len() <= 63, "{n}");
    assert_eq!(n, name(&long, &long));
    assert_ne!(
        name("team-a", "x-y"),
        name("team-a-x", "y"),
        "the hash tells them apart"
    );
    assert!(name("team-a", "planner").starts_with("tollgate-team-a-planner-"));
}

#[test]
fn subtraction_is_exact() {
    let net: IpNet = "10.0.0.0/24".parse().unwrap();
    let holes: Vec<IpNet> = vec!["10.0.0.0/26".parse().unwrap(), "10.0.0.200/32".parse().unwrap()];
    let rest = subtract(net, &holes);
    let covered: u32 = rest.iter().map(|n| 1u32 << (32 - n.prefix_len())).sum();
    assert_eq!(covered, 256 - 64 - 1);
    for ip in 0..=255u8 {
        let addr: std::net::IpAddr = format!("10.0.0.{ip}").parse().unwrap();
        let inside = rest.iter().any(|n| n.contains(&addr));
        let holed = holes.iter().any(|h| h.contains(&addr));
        assert_eq!(inside, !holed, "{addr}");
    }
    assert!(subtract(net, &["10.0.0.0/16".parse().unwrap()]).is_empty());
}
