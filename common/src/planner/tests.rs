use std::collections::BTreeMap;

use serde_json::{Value, json};

use super::*;
use crate::document::{DocumentSet, EgressGuardrail};
use crate::egress_rule::{Protocol, parse_egress_rules};
use crate::verification::{Reason, Verification};

fn mk_config() -> PlannerConfig {
    PlannerConfig {
        operator_namespace: "kagenti-operator".into(),
        cluster_defaults_namespace: "kagenti-system".into(),
        name_suffix: "-signature-policy".into(),
        restricted_allow_dns: false,
    }
}

fn ip(s: &str) -> IpAddr {
    s.parse().unwrap()
}

fn mk_facts() -> ClusterFacts {
    ClusterFacts {
        api: ApiServerFacts {
            addresses: vec![ip("192.0.2.10"), ip("192.0.2.11")],
            ports: vec![6443],
            service: None,
        },
        dns: Some(DnsFacts {
            namespace: "kube-system".into(),
            addresses: vec![ip("10.244.0.5")],
            target_ports: vec![
                PortRange::single(Protocol::Udp, 53),
                PortRange::single(Protocol::Tcp, 53),
            ],
            cluster_ip: Some(ip("10.96.0.10")),
        }),
        names: ResolvedNames::new(),
    }
}

fn verified() -> Verification {
    Verification::verified(Reason::MtlsVerified, "test")
}

fn unverified() -> Verification {
    Verification::unverified(Reason::NotVerified, "test")
}

fn mk_agent(name: &str, verification: Verification, local: LocalEgress) -> Agent {
    Agent {
        namespace: "team-a".into(),
        name: name.into(),
        uid: format!("uid-{name}"),
        target_name: format!("{name}-deploy"),
        labels: BTreeMap::from([("tier".to_string(), "llm".to_string())]),
        namespace_labels: BTreeMap::from([("kubernetes.io/metadata.name".to_string(), "team-a".to_string())]).into(),
        pod_labels: Some(BTreeMap::from([("app".to_string(), name.to_string())])),
        local_egress: local,
        verification,
    }
}

fn rules(yaml: &str) -> Vec<EgressRule> {
    parse_egress_rules(serde_yaml_ng::Deserializer::from_str(yaml), "rules").unwrap()
}

fn intent(yaml: &str, revision: u64) -> Intent {
    let set = DocumentSet::from_yaml("intent.yaml", yaml).unwrap();
    Intent {
        revision: Some(revision),
        policies: set.policies.into_values().collect(),
        guardrails: set.guardrails.into_values().collect(),
    }
}

fn one(config: &PlannerConfig, facts: &ClusterFacts, agent: Agent, intent: &Intent) -> (Value, AgentOutcome) {
    let plan = plan(config, facts, &[agent], intent);
    let [planned] = &plan.agents[..] else {
        panic!("one agent planned: {plan:?}")
    };
    (
        serde_json::to_value(planned.policy.as_ref().expect("a policy")).unwrap(),
        planned.outcome.clone(),
    )
}

/// The policy of the first agent planned.
fn first_policy(plan: &Plan) -> &k8s_openapi::api::networking::v1::NetworkPolicy {
    plan.agents[0].policy.as_ref().expect("the first agent has a policy")
}

fn api_rule() -> Value {
    json!({"to": [{"ipBlock": {"cidr": "192.0.2.10/32"}}, {"ipBlock": {"cidr": "192.0.2.11/32"}}],
           "ports": [{"protocol": "TCP", "port": 6443}]})
}

fn dns_rule() -> Value {
    json!({"to": [{"ipBlock": {"cidr": "10.96.0.10/32"}}, {"ipBlock": {"cidr": "10.244.0.5/32"}},
                  {"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "kube-system"}}}],
           "ports": [{"protocol": "TCP", "port": 53}, {"protocol": "UDP", "port": 53}]})
}

fn expected(name: &str, mode: &str, verified: bool, egress: Value, annotations: Option<Value>) -> Value {
    let mut from = vec![
        json!({"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "kagenti-operator"}}}),
        json!({"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "kagenti-system"}}}),
    ];
    if verified {
        from.push(json!({"podSelector": {"matchLabels": {"agent.kagenti.dev/signature-verified": "true"}}}));
    }
    let mut metadata = json!({
        "name": format!("{name}-deploy-signature-policy"),
        "namespace": "team-a",
        "labels": {
            "app.kubernetes.io/managed-by": "tollgate-spoke",
            "tollgate.dev/agent": name,
            "tollgate.dev/mode": mode,
        },
        "ownerReferences": [{
            "apiVersion": "agent.kagenti.dev/v1alpha1",
            "kind": "AgentRuntime",
            "name": name,
            "uid": format!("uid-{name}"),
            "controller": true,
        }],
    });
    if let Some(annotations) = annotations {
        metadata["annotations"] = annotations;
    }
    json!({
        "apiVersion": "networking.k8s.io/v1",
        "kind": "NetworkPolicy",
        "metadata": metadata,
        "spec": {
            "podSelector": {"matchLabels": {"app": name}},
            "policyTypes": ["Ingress", "Egress"],
            "ingress": [{"from": from}],
            "egress": egress,
        }
    })
}

#[test]
fn unverified_agent_is_restricted_to_the_api_endpoints_in_order() {
    let (policy, outcome) = one(
        &mk_config(),
        &mk_facts(),
        mk_agent("a", unverified(), LocalEgress::Absent),
        &Intent::default(),
    );
    assert_eq!(policy, expected("a", "restricted", false, json!([api_rule()]), None));
    assert_eq!(outcome.mode, Mode::Restricted);
    assert!(outcome.dropped.is_empty());
}

#[test]
fn restricted_includes_the_api_service_and_optionally_dns() {
    let mut facts = mk_facts();
    facts.api.service = Some((ip("10.96.0.1"), 443));
    let config = PlannerConfig {
        restricted_allow_dns: true,
        ..mk_config()
    };
    let (policy, _) = one(
        &config,
        &facts,
        mk_agent("a", unverified(), LocalEgress::Absent),
        &Intent::default(),
    );
    let service_rule =
        json!({"to": [{"ipBlock": {"cidr": "10.96.0.1/32"}}], "ports": [{"protocol": "TCP", "port": 443}]});
    assert_eq!(
        policy,
        expected(
            "a",
            "restricted",
            false,
            json!([api_rule(), service_rule, dns_rule()]),
            None
        )
    );
}

#[test]
fn no_api_address_means_no_egress_for_restricted_agents() {
    let mut facts = mk_facts();
    facts.api.addresses.clear();
    let plan = plan(
        &mk_config(),
        &facts,
        &[mk_agent("a", unverified(), LocalEgress::Absent)],
        &Intent::default(),
    );
    let policy = serde_json::to_value(first_policy(&plan)).unwrap();
    assert_eq!(policy, expected("a", "restricted", false, json!([]), None));
    assert_eq!(plan.problems[0], ClusterProblem::ApiServerUndiscovered);
    assert!(
        plan.problems[0].to_string().starts_with("API server not discovered"),
        "{:?}",
        plan.problems
    );
    assert_eq!(plan.agents[0].outcome.problems, vec![Problem::NoApiAccess]);
}

#[test]
fn ipv6_api_endpoints_get_128_and_are_sorted_and_deduplicated() {
    let mut facts = mk_facts();
    facts.api.addresses = vec![ip("2001:db8::2"), ip("192.0.2.11"), ip("2001:db8::1"), ip("192.0.2.11")];
    facts.api.ports = vec![6443, 443, 6443];
    let (policy, _) = one(
        &mk_config(),
        &facts,
        mk_agent("a", unverified(), LocalEgress::Absent),
        &Intent::default(),
    );
    assert_eq!(
        policy["spec"]["egress"],
        json!([{"to": [{"ipBlock": {"cidr": "192.0.2.11/32"}}, {"ipBlock": {"cidr": "2001:db8::1/128"}},
                       {"ipBlock": {"cidr": "2001:db8::2/128"}}],
                "ports": [{"protocol": "TCP", "port": 443}, {"protocol": "TCP", "port": 6443}]}])
    );
}

#[test]
fn verified_without_rules_is_allow_all_with_three_ingress_peers() {
    let (policy, outcome) = one(
        &mk_config(),
        &mk_facts(),
        mk_agent("a", verified(), LocalEgress::Absent),
        &Intent::default(),
    );
    assert_eq!(policy, expected("a", "allow-all", true, json!([{}]), None));
    assert_eq!(policy["spec"]["ingress"][0]["from"].as_array().unwrap().len(), 3);
    assert_eq!(outcome.mode, Mode::AllowAll);
    assert_eq!(outcome.rule_count, 0);
}

#[test]
fn same_operator_and_defaults_namespace_gives_one_namespace_peer() {
    let config = PlannerConfig {
        operator_namespace: "kagenti-system".into(),
        ..mk_config()
    };
    let (policy, _) = one(
        &config,
        &mk_facts(),
        mk_agent("a", verified(), LocalEgress::Absent),
        &Intent::default(),
    );
    assert_eq!(
        policy["spec"]["ingress"],
        json!([{"from": [
            {"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "kagenti-system"}}},
            {"podSelector": {"matchLabels": {"agent.kagenti.dev/signature-verified": "true"}}},
        ]}])
    );
}

#[test]
fn verified_with_local_rules_is_scoped_with_the_baseline() {
    let local = rules(
        "- to: [{ipBlock: {cidr: 203.0.113.0/24, except: [203.0.113.128/25]}}, {ipBlock: {cidr: \"2001:db8::/32\"}}]\n  \
           ports: [{protocol: TCP, port: 443}, {protocol: TCP, port: 8000, endPort: 8100}]",
    );
    let (policy, outcome) = one(
        &mk_config(),
        &mk_facts(),
        mk_agent("a", verified(), LocalEgress::Rules(local)),
        &Intent::default(),
    );
    let declared = json!({
        "to": [{"ipBlock": {"cidr": "203.0.113.0/24", "except": ["203.0.113.128/25"]}},
               {"ipBlock": {"cidr": "2001:db8::/32"}}],
        "ports": [{"protocol": "TCP", "port": 443}, {"protocol": "TCP", "port": 8000, "endPort": 8100}],
    });
    assert_eq!(
        policy,
        expected(
            "a",
            "scoped",
            true,
            json!([api_rule(), dns_rule(), declared]),
            Some(json!({"tollgate.dev/rule-sources": "local"}))
        )
    );
    assert_eq!(outcome.rule_sources, vec![RuleSource::Local]);
    assert_eq!(outcome.rule_count, 1);
}

#[test]
fn empty_local_rules_give_the_baseline_only_as_scoped() {
    let (policy, outcome) = one(
        &mk_config(),
        &mk_facts(),
        mk_agent("a", verified(), LocalEgress::Rules(vec![])),
        &Intent::default(),
    );
    assert_eq!(
        policy,
        expected("a", "scoped", true, json!([api_rule(), dns_rule()]), None)
    );
    assert_eq!(outcome.mode, Mode::Scoped);
}

#[test]
fn invalid_local_rules_fail_closed_to_baseline_only() {
    let errors = vec![FieldError::new("spec.egress.rules[0].to", "port-only rule")];
    let (policy, outcome) = one(
        &mk_config(),
        &mk_facts(),
        mk_agent("a", verified(), LocalEgress::Invalid(errors.clone())),
        &Intent::default(),
    );
    assert_eq!(
        policy,
        expected("a", "baseline-only", true, json!([api_rule(), dns_rule()]), None)
    );
    assert_eq!(outcome.problems, vec![Problem::InvalidRule(errors[0].clone())]);
    assert_eq!(
        outcome.problems[0].to_string(),
        "invalid local egress rule: spec.egress.rules[0].to: port-only rule"
    );
}

#[test]
fn unverified_agents_do_not_get_declared_rules_and_say_so() {
    let local = rules("- to: [{ipBlock: {cidr: 203.0.113.0/24}}]");
    let intent = intent(
        "apiVersion: tollgate.dev/v1alpha1\nkind: EgressPolicy\nmetadata: {name: llm}\nspec:\n  egress: [{to: [{ipBlock: {cidr: 198.51.100.0/24}}]}]\n",
        3,
    );
    let (policy, outcome) = one(
        &mk_config(),
        &mk_facts(),
        mk_agent("a", unverified(), LocalEgress::Rules(local)),
        &intent,
    );
    assert_eq!(
        policy,
        expected(
            "a",
            "restricted",
            false,
            json!([api_rule()]),
            Some(json!({"tollgate.dev/revision": "3"}))
        )
    );
    let dropped: Vec<String> = outcome.dropped.iter().map(ToString::to_string).collect();
    assert_eq!(
        dropped,
        [
            "local rule 0: agent is not verified (NotVerified)",
            "policy/llm rule 0: agent is not verified (NotVerified)"
        ]
    );
}

#[test]
fn hub_policies_select_by_namespace_and_agent_labels() {
    let intent = intent(
        "apiVersion: tollgate.dev/v1alpha1
kind: EgressPolicy
metadata: {name: llm-apis}
spec:
  namespaces: [team-a]
  agentSelector: {matchLabels: {tier: llm}}
  egress: [{to: [{ipBlock: {cidr: 104.18.0.0/16}}], ports: [{port: 443}]}]
---
apiVersion: tollgate.dev/v1alpha1
kind: EgressPolicy
metadata: {name: other-team}
spec:
  namespaces: [team-b]
  egress: [{to: [{ipBlock: {cidr: 198.51.100.0/24}}]}]
---
apiVersion: tollgate.dev/v1alpha1
kind: EgressPolicy
metadata: {name: by-ns-label}
spec:
  namespaceSelector: {matchLabels: {kubernetes.io/metadata.name: team-a}}
  agentSelector: {matchExpressions: [{key: tier, operator: In, values: [llm, tool]}]}
  egress: [{to: [{ipBlock: {cidr: 104.18.0.0/16}}], ports: [{port: 443}]}, {to: [{podSelector: {matchLabels: {app: db}}}]}]
",
        9,
    );
    let (policy, outcome) = one(
        &mk_config(),
        &mk_facts(),
        mk_agent("a", verified(), LocalEgress::Absent),
        &intent,
    );
    assert_eq!(
        policy,
        expected(
            "a",
            "scoped",
            true,
            json!([
                api_rule(),
                dns_rule(),
                {"to": [{"ipBlock": {"cidr": "104.18.0.0/16"}}], "ports": [{"protocol": "TCP", "port": 443}]},
                {"to": [{"podSelector": {"matchLabels": {"app": "db"}}}]},
            ]),
            Some(
                json!({"tollgate.dev/revision": "9", "tollgate.dev/rule-sources": "policy/by-ns-label,policy/llm-apis"})
            )
        )
    );
    assert_eq!(outcome.rule_count, 2, "the duplicated rule is rendered once");
}

#[test]
fn guardrail_default_and_ceiling() {
    let intent = intent(
        "apiVersion: tollgate.dev/v1alpha1
kind: EgressGuardrail
metadata: {name: prod}
spec:
  verifiedDefault: BaselineOnly
  allowedDestinations: [{cidr: 10.0.0.0/8}, {cidr: 104.18.0.0/16}]
---
apiVersion: tollgate.dev/v1alpha1
kind: EgressGuardrail
metadata: {name: loose}
spec:
  allowedDestinations: [{cidr: 0.0.0.0/0}]
  allowInClusterPeers: true
",
        1,
    );
    let (policy, outcome) = one(
        &mk_config(),
        &mk_facts(),
        mk_agent("a", verified(), LocalEgress::Absent),
        &intent,
    );
    assert_eq!(outcome.mode, Mode::BaselineOnly, "BaselineOnly wins over AllowAll");
    assert_eq!(policy["spec"]["egress"], json!([api_rule(), dns_rule()]));

    let local = rules(
        "- to: [{ipBlock: {cidr: 104.18.4.0/24}}, {ipBlock: {cidr: 8.8.8.0/24}}]\n  ports: [{port: 443}]\n\
         - to: [{ipBlock: {cidr: 1.1.1.1/32}}]\n\
         - to: [{namespaceSelector: {matchLabels: {team: db}}}]",
    );
    let (policy, outcome) = one(
        &mk_config(),
        &mk_facts(),
        mk_agent("a", verified(), LocalEgress::Rules(local)),
        &intent,
    );
    assert_eq!(outcome.mode, Mode::Scoped);
    assert_eq!(
        policy["spec"]["egress"],
        json!([api_rule(), dns_rule(),
               {"to": [{"ipBlock": {"cidr": "104.18.4.0/24"}}], "ports": [{"protocol": "TCP", "port": 443}]}])
    );
    let dropped: Vec<String> = outcome.dropped.iter().map(ToString::to_string).collect();
    assert_eq!(
        dropped,
        [
            "local rule 0 peer 1: 8.8.8.0/24 is outside the allowed destinations of guardrail prod",
            "local rule 1 peer 0: 1.1.1.1/32 is outside the allowed destinations of guardrail prod",
            "local rule 2 peer 0: in-cluster peers are not allowed by guardrail prod (allowInClusterPeers is false)",
        ]
    );
}

#[test]
fn hub_rules_are_not_subject_to_the_ceiling() {
    let intent = intent(
        "apiVersion: tollgate.dev/v1alpha1
kind: EgressGuardrail
metadata: {name: prod}
spec:
  allowedDestinations: [{cidr: 10.0.0.0/8}]
---
apiVersion: tollgate.dev/v1alpha1
kind: EgressPolicy
metadata: {name: central}
spec:
  egress: [{to: [{ipBlock: {cidr: 8.8.8.0/24}}]}]
",
        2,
    );
    let (policy, outcome) = one(
        &mk_config(),
        &mk_facts(),
        mk_agent("a", verified(), LocalEgress::Absent),
        &intent,
    );
    assert_eq!(outcome.mode, Mode::Scoped);
    assert_eq!(
        policy["spec"]["egress"][2],
        json!({"to": [{"ipBlock": {"cidr": "8.8.8.0/24"}}]})
    );
}

#[test]
fn openshift_dns_allows_53_and_5353_and_missing_dns_falls_back_to_both_namespaces() {
    let mut facts = mk_facts();
    facts.dns = Some(DnsFacts {
        namespace: "openshift-dns".into(),
        addresses: vec![ip("10.128.0.7"), ip("10.129.0.9")],
        target_ports: vec![
            PortRange::single(Protocol::Udp, 5353),
            PortRange::single(Protocol::Tcp, 5353),
        ],
        cluster_ip: Some(ip("172.30.0.10")),
    });
    let (policy, _) = one(
        &mk_config(),
        &facts,
        mk_agent("a", verified(), LocalEgress::Rules(vec![])),
        &Intent::default(),
    );
    assert_eq!(
        policy["spec"]["egress"][1],
        json!({"to": [{"ipBlock": {"cidr": "10.128.0.7/32"}}, {"ipBlock": {"cidr": "10.129.0.9/32"}},
                      {"ipBlock": {"cidr": "172.30.0.10/32"}},
                      {"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "openshift-dns"}}}],
               "ports": [{"protocol": "TCP", "port": 53}, {"protocol": "TCP", "port": 5353},
                         {"protocol": "UDP", "port": 53}, {"protocol": "UDP", "port": 5353}]})
    );

    facts.dns = None;
    let plan = plan(
        &mk_config(),
        &facts,
        &[mk_agent("a", verified(), LocalEgress::Rules(vec![]))],
        &Intent::default(),
    );
    let policy = serde_json::to_value(first_policy(&plan)).unwrap();
    assert_eq!(
        policy["spec"]["egress"][1],
        json!({"to": [{"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "kube-system"}}},
                      {"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "openshift-dns"}}}],
               "ports": [{"protocol": "TCP", "port": 53}, {"protocol": "TCP", "port": 5353},
                         {"protocol": "UDP", "port": 53}, {"protocol": "UDP", "port": 5353}]})
    );
    assert!(
        plan.problems.contains(&ClusterProblem::DnsUndiscovered)
            && plan
                .problems
                .iter()
                .any(|w| w.to_string().starts_with("DNS not discovered")),
        "{:?}",
        plan.problems
    );
}

#[test]
fn pod_selector_falls_back_to_the_upstream_labels() {
    let mut agent = mk_agent("a", verified(), LocalEgress::Absent);
    agent.pod_labels = None;
    agent.uid = String::new();
    let (policy, _) = one(&mk_config(), &mk_facts(), agent, &Intent::default());
    assert_eq!(
        policy["spec"]["podSelector"],
        json!({"matchLabels": {"app": "a-deploy", "kagenti.io/type": "agent"}})
    );
    assert!(policy["metadata"].get("ownerReferences").is_none());
}

#[test]
fn binding_warning_is_reported_without_changing_the_mode() {
    let mut verification = verified();
    verification.binding_warning = Some("SPIFFE ID x is not bound to trust domain y".into());
    let (_, outcome) = one(
        &mk_config(),
        &mk_facts(),
        mk_agent("a", verification, LocalEgress::Absent),
        &Intent::default(),
    );
    assert_eq!(outcome.mode, Mode::AllowAll);
    assert_eq!(
        outcome.problems,
        vec![Problem::BindingNotSatisfied(
            "SPIFFE ID x is not bound to trust domain y".into()
        )]
    );
    assert!(!outcome.problems[0].is_error());
    assert_eq!(
        outcome.problems[0].to_string(),
        "identity binding: SPIFFE ID x is not bound to trust domain y"
    );
}

#[test]
fn two_agents_on_one_workload_do_not_fight_over_the_policy() {
    let a = mk_agent("a", verified(), LocalEgress::Absent);
    let mut b = mk_agent("b", unverified(), LocalEgress::Absent);
    b.target_name = a.target_name.clone();
    let plan = plan(&mk_config(), &mk_facts(), &[b, a], &Intent::default());
    assert_eq!(plan.policies().count(), 1);
    assert_eq!(
        first_policy(&plan).metadata.labels.as_ref().unwrap()["tollgate.dev/agent"],
        "a"
    );
    let b = &plan.agents[1];
    assert_eq!(
        (
            b.outcome.name.as_str(),
            b.outcome.policy_name.as_ref(),
            b.policy.as_ref()
        ),
        ("b", None, None)
    );
    assert_eq!(
        b.outcome.problems,
        vec![Problem::PolicyTaken {
            policy: first_policy(&plan).metadata.name.clone().unwrap(),
            owner: "a".into()
        }]
    );
    assert!(b.outcome.problems[0].is_error());
    assert!(
        b.outcome.problems[0]
            .to_string()
            .contains("already written for agent a")
    );
}

#[test]
fn each_agent_carries_its_own_policy_whatever_the_names_sort_like() {
    // Agent names sort one way, workload (policy) names the other: each agent's value holds its own policy.
    let mut agents = Vec::new();
    for (agent, workload) in [("a", "z"), ("b", "y"), ("c", "x")] {
        let mut a = mk_agent(
            agent,
            verified(),
            if agent == "b" {
                LocalEgress::Rules(vec![])
            } else {
                LocalEgress::Absent
            },
        );
        a.target_name = workload.into();
        agents.push(a);
    }
    let plan = plan(&mk_config(), &mk_facts(), &agents, &Intent::default());
    let got: Vec<(&str, &str, &str, Mode)> = plan
        .agents
        .iter()
        .map(|a| {
            let policy = a.policy.as_ref().unwrap();
            let labels = policy.metadata.labels.as_ref().unwrap();
            (
                a.outcome.name.as_str(),
                labels["tollgate.dev/agent"].as_str(),
                policy.metadata.name.as_deref().unwrap(),
                a.outcome.mode,
            )
        })
        .collect();
    let suffix = &mk_config().name_suffix;
    assert_eq!(
        got,
        vec![
            ("a", "a", &*format!("z{suffix}"), Mode::AllowAll),
            ("b", "b", &*format!("y{suffix}"), Mode::Scoped),
            ("c", "c", &*format!("x{suffix}"), Mode::AllowAll),
        ]
    );
}

#[test]
fn destinations_describe_each_peer_and_port() {
    let local = rules(
        "- to: [{ipBlock: {cidr: 203.0.113.0/24, except: [203.0.113.128/25]}}, {namespaceSelector: {matchLabels: {team: db}}, podSelector: {matchLabels: {app: pg}}}]\n  ports: [{port: 5432}, {protocol: UDP, port: 8000, endPort: 8100}]",
    );
    let plan = plan(
        &mk_config(),
        &mk_facts(),
        &[mk_agent("a", verified(), LocalEgress::Rules(local))],
        &Intent::default(),
    );
    let all = destinations(first_policy(&plan));
    for line in [
        "203.0.113.0/24 except 203.0.113.128/25 TCP/5432",
        "203.0.113.0/24 except 203.0.113.128/25 UDP/8000-8100",
        "namespace{team=db} pods{app=pg} TCP/5432",
        "192.0.2.10/32 TCP/6443",
        "namespace{kubernetes.io/metadata.name=kube-system} UDP/53",
    ] {
        assert!(all.contains(line), "missing {line:?} in {all:#?}");
    }
    let allow_all = plan_allow_all();
    assert_eq!(destinations(&allow_all).into_iter().collect::<Vec<_>>(), ["* any port"]);
}

fn plan_allow_all() -> NetworkPolicy {
    plan(
        &mk_config(),
        &mk_facts(),
        &[mk_agent("a", verified(), LocalEgress::Absent)],
        &Intent::default(),
    )
    .agents
    .remove(0)
    .policy
    .unwrap()
}

#[test]
fn guardrail_without_a_ceiling_drops_nothing() {
    // Guardrail documents without a ceiling never drop local rules.
    let guardrail: EgressGuardrail = intent(
        "apiVersion: tollgate.dev/v1alpha1\nkind: EgressGuardrail\nmetadata: {name: g}\nspec: {verifiedDefault: AllowAll}\n",
        1,
    )
    .guardrails
    .remove(0);
    let intent = Intent {
        revision: None,
        policies: vec![],
        guardrails: vec![guardrail],
    };
    let local = rules("- to: [{ipBlock: {cidr: 8.8.8.8/32}}]");
    let (_, outcome) = one(
        &mk_config(),
        &mk_facts(),
        mk_agent("a", verified(), LocalEgress::Rules(local)),
        &intent,
    );
    assert!(outcome.dropped.is_empty());
    assert_eq!(outcome.rule_count, 1);
}

#[test]
fn equal_rules_are_kept_once_and_rules_with_equal_digests_are_told_apart() {
    // Pairs with equal digests but different rules: selector peers (digested alike) and IPv6 nets whose halves
    // swap.
    let local = rules(
        "- to: [{namespaceSelector: {matchLabels: {team: db}}}]\n\
         - to: [{namespaceSelector: {matchLabels: {team: cache}}}]\n\
         - to: [{namespaceSelector: {matchLabels: {team: db}}}]\n\
         - to: [{ipBlock: {cidr: \"2001:db8::/128\"}}]\n\
         - to: [{ipBlock: {cidr: \"::2001:db8:0:0/128\"}}]\n\
         - to: [{ipBlock: {cidr: 104.18.0.0/16}}]\n  ports: [{protocol: TCP, port: 443}]\n\
         - to: [{ipBlock: {cidr: 104.18.0.0/16}}]\n  ports: [{protocol: TCP, port: 443}]\n\
         - to: [{ipBlock: {cidr: \"2001:db8::/128\"}}]",
    );
    assert_eq!(digest(&local[0]), digest(&local[1]));
    assert_eq!(digest(&local[3]), digest(&local[4]));
    let intent = intent(
        "apiVersion: tollgate.dev/v1alpha1
kind: EgressPolicy
metadata: {name: hub}
spec:
  egress:
  - {to: [{ipBlock: {cidr: 104.18.0.0/16}}], ports: [{port: 443}]}
  - {to: [{namespaceSelector: {matchLabels: {team: web}}}]}
  - {to: [{namespaceSelector: {matchLabels: {team: web}}}]}
",
        3,
    );
    let (policy, outcome) = one(
        &mk_config(),
        &mk_facts(),
        mk_agent("a", verified(), LocalEgress::Rules(local)),
        &intent,
    );
    let team = |t: &str| json!({"to": [{"namespaceSelector": {"matchLabels": {"team": t}}}]});
    assert_eq!(
        policy,
        expected(
            "a",
            "scoped",
            true,
            json!([
                api_rule(),
                dns_rule(),
                team("db"),
                team("cache"),
                {"to": [{"ipBlock": {"cidr": "2001:db8::/128"}}]},
                {"to": [{"ipBlock": {"cidr": "::2001:db8:0:0/128"}}]},
                {"to": [{"ipBlock": {"cidr": "104.18.0.0/16"}}], "ports": [{"protocol": "TCP", "port": 443}]},
                team("web"),
            ]),
            Some(json!({"tollgate.dev/revision": "3", "tollgate.dev/rule-sources": "local,policy/hub"}))
        )
    );
    assert_eq!(outcome.rule_count, 6);
}

fn fqdn(name: &str) -> Fqdn {
    Fqdn::parse(name).unwrap()
}

#[test]
fn a_name_becomes_its_sorted_addresses_where_it_stood() {
    let mut facts = mk_facts();
    facts.names.insert(
        fqdn("api.openai.com"),
        vec![
            ip("2001:db8::7"),
            ip("203.0.113.9"),
            ip("198.51.100.4"),
            ip("203.0.113.9"),
        ],
    );
    let local = rules(
        "- to: [{ipBlock: {cidr: 10.0.0.0/8}}, {fqdn: api.openai.com}, {namespaceSelector: {}}]\n  ports: [{port: 443}]",
    );
    let (policy, outcome) = one(
        &mk_config(),
        &facts,
        mk_agent("a", verified(), LocalEgress::Rules(local)),
        &Intent::default(),
    );
    assert_eq!(
        policy["spec"]["egress"][2],
        json!({"to": [
            {"ipBlock": {"cidr": "10.0.0.0/8"}},
            {"ipBlock": {"cidr": "198.51.100.4/32"}},
            {"ipBlock": {"cidr": "203.0.113.9/32"}},
            {"ipBlock": {"cidr": "2001:db8::7/128"}},
            {"namespaceSelector": {}},
        ], "ports": [{"protocol": "TCP", "port": 443}]})
    );
    assert_eq!(outcome.mode, Mode::Scoped);
    assert!(outcome.dropped.is_empty(), "{:?}", outcome.dropped);
    assert_eq!(
        outcome.names,
        vec![NameDestination {
            name: fqdn("api.openai.com"),
            ports: vec![PortRange::single(Protocol::Tcp, 443)],
        }]
    );
    assert_eq!(
        outcome.names[0].lines().collect::<Vec<_>>(),
        ["fqdn:api.openai.com TCP/443"]
    );
}

#[test]
fn an_unresolved_name_drops_its_peer_or_its_rule_never_narrows_to_port_only() {
    let mut facts = mk_facts();
    facts.names.insert(fqdn("gone.example.com"), vec![]);
    let local = rules(
        "- to: [{fqdn: new.example.com}, {ipBlock: {cidr: 10.0.0.0/8}}]\n  ports: [{port: 443}]\n\
         - to: [{fqdn: new.example.com}, {fqdn: gone.example.com}]\n  ports: [{port: 8443}]",
    );
    let (policy, outcome) = one(
        &mk_config(),
        &facts,
        mk_agent("a", verified(), LocalEgress::Rules(local)),
        &Intent::default(),
    );
    let egress = policy["spec"]["egress"].as_array().unwrap();
    assert_eq!(
        egress.len(),
        3,
        "baseline (2) and the rule with an address left: {egress:?}"
    );
    assert_eq!(
        egress[2],
        json!({"to": [{"ipBlock": {"cidr": "10.0.0.0/8"}}], "ports": [{"protocol": "TCP", "port": 443}]})
    );
    assert_eq!(outcome.rule_count, 1);
    let dropped: Vec<String> = outcome.dropped.iter().map(ToString::to_string).collect();
    assert_eq!(dropped.len(), 2, "{dropped:?}");
    assert_eq!(dropped[0], "local rule 0 peer 0: new.example.com has no addresses yet");
    assert!(
        dropped[1].starts_with("local rule 1: new.example.com, gone.example.com have no addresses yet"),
        "{}",
        dropped[1]
    );
    let names: Vec<&str> = outcome.names.iter().map(|n| n.name.as_str()).collect();
    assert_eq!(names, ["gone.example.com", "new.example.com", "new.example.com"]);
}

#[test]
fn a_name_passes_a_ceiling_only_when_listed_and_hub_rules_resolve_too() {
    let mut facts = mk_facts();
    facts.names.insert(fqdn("api.openai.com"), vec![ip("203.0.113.9")]);
    facts.names.insert(fqdn("other.example.com"), vec![ip("10.1.2.3")]);
    let intent = intent(
        "apiVersion: tollgate.dev/v1alpha1\nkind: EgressGuardrail\nmetadata: {name: g}\nspec:\n  \
         allowedDestinations: [{cidr: 10.0.0.0/8}, {fqdn: api.openai.com}]\n---\n\
         apiVersion: tollgate.dev/v1alpha1\nkind: EgressPolicy\nmetadata: {name: hub}\nspec:\n  \
         egress: [{to: [{fqdn: other.example.com}]}]\n",
        3,
    );
    let local = rules("- to: [{fqdn: api.openai.com}, {fqdn: other.example.com}]");
    let (policy, outcome) = one(
        &mk_config(),
        &facts,
        mk_agent("a", verified(), LocalEgress::Rules(local)),
        &intent,
    );
    let egress = &policy["spec"]["egress"];
    assert_eq!(egress[2], json!({"to": [{"ipBlock": {"cidr": "203.0.113.9/32"}}]}));
    assert_eq!(
        egress[3],
        json!({"to": [{"ipBlock": {"cidr": "10.1.2.3/32"}}]}),
        "hub rules are not held to the ceiling"
    );
    assert_eq!(outcome.dropped.len(), 1);
    assert_eq!(outcome.dropped[0].peer, Some(1));
    assert!(
        matches!(&outcome.dropped[0].reason, DropReason::OutsideGuardrail(_))
            && outcome.dropped[0]
                .reason
                .to_string()
                .contains("other.example.com is not among the names allowed by guardrail g"),
        "{}",
        outcome.dropped[0].reason
    );
}
