use proptest::prelude::*;
use serde_json::{Value, json};

use super::*;

fn policy(name: &str, pod_selector: Value, types: Option<Value>, egress: Value) -> NetworkPolicy {
    let mut spec = json!({"podSelector": pod_selector, "egress": egress});
    if let Some(types) = types {
        spec["policyTypes"] = types;
    }
    serde_json::from_value(json!({
        "apiVersion": "networking.k8s.io/v1",
        "kind": "NetworkPolicy",
        "metadata": {"name": name, "namespace": "team-a"},
        "spec": spec,
    }))
    .unwrap()
}

/// The agent's own policy: pods `app: planner`, egress to 203.0.113.0/24 (minus .128/25) on TCP 443-445 and to the
/// `db` namespace on TCP 5432.
fn own() -> NetworkPolicy {
    policy(
        "planner-signature-policy",
        json!({"matchLabels": {"app": "planner"}}),
        Some(json!(["Ingress", "Egress"])),
        json!([
            {"to": [{"ipBlock": {"cidr": "203.0.113.0/24", "except": ["203.0.113.128/25"]}}],
             "ports": [{"protocol": "TCP", "port": 443, "endPort": 445}]},
            {"to": [{"namespaceSelector": {"matchLabels": {"team": "db"}}}], "ports": [{"port": 5432}]},
        ]),
    )
}

fn widened(other: NetworkPolicy) -> Vec<String> {
    widened_by(&own(), [&other])
}

#[test]
fn an_allow_all_egress_policy_widens_and_narrower_ones_do_not() {
    let all = |name| policy(name, json!({}), Some(json!(["Egress"])), json!([{}]));
    assert_eq!(widened(all("allow-all-egress")), ["allow-all-egress"]);
    let narrower = policy(
        "narrower",
        json!({"matchLabels": {"app": "planner"}}),
        None,
        json!([
            {"to": [{"ipBlock": {"cidr": "203.0.113.0/26"}}], "ports": [{"protocol": "TCP", "port": 444}]},
            {"to": [{"namespaceSelector": {"matchLabels": {"team": "db"}}}], "ports": [{"protocol": "TCP", "port": 5432}]},
        ]),
    );
    assert!(widened(narrower).is_empty());
    let deny_all = policy("deny-all", json!({}), Some(json!(["Egress"])), json!([]));
    assert!(
        widened(deny_all).is_empty(),
        "a policy with no egress rules allows nothing"
    );
}

#[test]
fn only_policies_that_select_the_pods_and_govern_egress_count() {
    let other_pods = policy("other", json!({"matchLabels": {"app": "web"}}), None, json!([{}]));
    assert!(widened(other_pods).is_empty());
    let ingress_only = policy("ingress", json!({}), Some(json!(["Ingress"])), json!([{}]));
    assert!(widened(ingress_only).is_empty());
    let expression = policy(
        "expr",
        json!({"matchExpressions": [{"key": "app", "operator": "In", "values": ["planner", "x"]}]}),
        None,
        json!([{}]),
    );
    assert_eq!(widened(expression), ["expr"]);
    let not_in = policy(
        "not-in",
        json!({"matchExpressions": [{"key": "app", "operator": "NotIn", "values": ["planner"]}]}),
        None,
        json!([{}]),
    );
    assert!(widened(not_in).is_empty());
    let by_hash = policy(
        "by-hash",
        json!({"matchLabels": {"app": "planner", "pod-template-hash": "5d8f7"}}),
        None,
        json!([{}]),
    );
    assert_eq!(
        widened(by_hash),
        ["by-hash"],
        "a label the controller adds to the pods may match"
    );
    let by_other_label = policy("by-team", json!({"matchLabels": {"team": "x"}}), None, json!([{}]));
    assert!(
        widened(by_other_label).is_empty(),
        "a label no pod of the agent carries"
    );
    let mut elsewhere = policy("elsewhere", json!({}), None, json!([{}]));
    elsewhere.metadata.namespace = Some("team-b".into());
    assert!(widened(elsewhere).is_empty(), "another namespace");
    assert!(widened_by(&own(), [&own()]).is_empty(), "its own policy");
}

#[test]
fn each_axis_is_checked_conservatively() {
    let rule = |rule: Value| policy("p", json!({}), None, json!([rule]));
    let cases = [
        // Outside the CIDR, or into its except.
        (
            json!({"to": [{"ipBlock": {"cidr": "203.0.112.0/23"}}], "ports": [{"port": 443}]}),
            true,
        ),
        (
            json!({"to": [{"ipBlock": {"cidr": "203.0.113.128/26"}}], "ports": [{"port": 443}]}),
            true,
        ),
        (
            json!({"to": [{"ipBlock": {"cidr": "203.0.113.0/24", "except": ["203.0.113.128/25"]}}], "ports": [{"port": 443}]}),
            false,
        ),
        (
            json!({"to": [{"ipBlock": {"cidr": "203.0.113.0/24", "except": ["203.0.113.192/26"]}}], "ports": [{"port": 443}]}),
            true,
        ),
        // Ports: other protocol, outside the range, a range reaching past it, every port, a named port.
        (
            json!({"to": [{"ipBlock": {"cidr": "203.0.113.0/25"}}], "ports": [{"protocol": "UDP", "port": 443}]}),
            true,
        ),
        (
            json!({"to": [{"ipBlock": {"cidr": "203.0.113.0/25"}}], "ports": [{"port": 446}]}),
            true,
        ),
        (
            json!({"to": [{"ipBlock": {"cidr": "203.0.113.0/25"}}], "ports": [{"port": 444, "endPort": 446}]}),
            true,
        ),
        (
            json!({"to": [{"ipBlock": {"cidr": "203.0.113.0/25"}}], "ports": [{"port": 444, "endPort": 445}]}),
            false,
        ),
        (json!({"to": [{"ipBlock": {"cidr": "203.0.113.0/25"}}]}), true),
        (
            json!({"to": [{"ipBlock": {"cidr": "203.0.113.0/25"}}], "ports": [{"port": "https"}]}),
            true,
        ),
        // Selectors: only an equal one.
        (
            json!({"to": [{"namespaceSelector": {"matchLabels": {"team": "db"}}}], "ports": [{"port": 5432}]}),
            false,
        ),
        (
            json!({"to": [{"namespaceSelector": {}}], "ports": [{"port": 5432}]}),
            true,
        ),
        (
            json!({"to": [{"namespaceSelector": {"matchLabels": {"team": "db"}}, "podSelector": {}}], "ports": [{"port": 5432}]}),
            true,
        ),
        // No `to`: every destination.
        (json!({"ports": [{"port": 443}]}), true),
    ];
    for (case, widens) in cases {
        assert_eq!(!widened(rule(case.clone())).is_empty(), widens, "{case}");
    }
}

fn k8s_rule() -> impl Strategy<Value = NetworkPolicyEgressRule> {
    let peer = prop_oneof![
        (0u8..=255, 16u8..=32).prop_map(|(octet, len)| {
            let net: IpNet = format!("10.{octet}.0.0/{len}").parse::<IpNet>().unwrap().trunc();
            json!({"ipBlock": {"cidr": net.to_string()}})
        }),
        prop_oneof![Just("db"), Just("cache")]
            .prop_map(|team| json!({"namespaceSelector": {"matchLabels": {"team": team}}})),
    ];
    let port = (prop_oneof![Just("TCP"), Just("UDP")], 1u16..2000, 0u16..50)
        .prop_map(|(protocol, port, span)| json!({"protocol": protocol, "port": port, "endPort": port + span}));
    (prop::collection::vec(peer, 1..3), prop::collection::vec(port, 0..3))
        .prop_map(|(to, ports)| serde_json::from_value(json!({"to": to, "ports": ports})).unwrap())
}

fn with_rules(name: &str, rules: &[NetworkPolicyEgressRule]) -> NetworkPolicy {
    policy(
        name,
        json!({"matchLabels": {"app": "planner"}}),
        Some(json!(["Egress"])),
        serde_json::to_value(rules).unwrap(),
    )
}

/// A rule narrowed on every axis: a sub-block of each ipBlock, the same selectors, a sub-range of each port range.
fn narrowed(rule: &NetworkPolicyEgressRule) -> NetworkPolicyEgressRule {
    let mut rule = rule.clone();
    for peer in rule.to.iter_mut().flatten() {
        if let Some(block) = &mut peer.ip_block {
            let net: IpNet = block.cidr.parse().unwrap();
            let narrower = net
                .subnets(net.prefix_len().saturating_add(1).min(net.max_prefix_len()))
                .unwrap()
                .next()
                .unwrap();
            block.cidr = narrower.to_string();
        }
    }
    // The first port of each range.
    for port in rule.ports.iter_mut().flatten() {
        port.end_port = None;
    }
    rule
}

proptest! {
    #[test]
    fn equal_or_narrower_never_widens(rules in prop::collection::vec(k8s_rule(), 1..4), keep in prop::collection::vec(any::<bool>(), 4)) {
        let own = with_rules("own", &rules);
        let equal = with_rules("equal", &rules);
        prop_assert!(widened_by(&own, [&equal]).is_empty());
        let subset: Vec<NetworkPolicyEgressRule> = rules.iter().zip(keep).filter(|(_, k)| *k).map(|(r, _)| narrowed(r)).collect();
        let narrower = with_rules("narrower", &subset);
        prop_assert!(widened_by(&own, [&narrower]).is_empty(), "{subset:?}");
    }

    #[test]
    fn an_allow_all_policy_always_widens(rules in prop::collection::vec(k8s_rule(), 0..4)) {
        let own = with_rules("own", &rules);
        let all = policy("allow-all", json!({}), Some(json!(["Egress"])), json!([{}]));
        prop_assert_eq!(widened_by(&own, [&all]), vec!["allow-all".to_string()]);
    }

    #[test]
    fn order_does_not_matter(
        own_rules in prop::collection::vec(k8s_rule(), 1..4),
        others in prop::collection::vec(prop::collection::vec(k8s_rule(), 0..3), 0..5),
    ) {
        let own = with_rules("own", &own_rules);
        let others: Vec<NetworkPolicy> = others.iter().enumerate().map(|(i, r)| with_rules(&format!("p{i}"), r)).collect();
        let forward = widened_by(&own, others.iter());
        let backward = widened_by(&own, others.iter().rev());
        prop_assert_eq!(&forward, &backward);
        let mut reversed = own_rules.clone();
        reversed.reverse();
        prop_assert_eq!(&forward, &widened_by(&with_rules("own", &reversed), others.iter()));
        // Each reported policy widens on its own, and each unreported one does not.
        for other in &others {
            let alone = widened_by(&own, [other]);
            prop_assert_eq!(alone.is_empty(), !forward.contains(other.metadata.name.as_ref().unwrap()));
        }
    }
}
