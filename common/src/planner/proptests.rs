//! Laws of the planner, checked on generated clusters, agents and intent.

use std::collections::{BTreeMap, BTreeSet};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use ipnet::{IpNet, Ipv4Net, Ipv6Net};
use proptest::prelude::*;

use super::*;
use crate::document::{AllowedDestination, EgressGuardrail, EgressGuardrailSpec, EgressPolicySpec, Metadata};
use crate::egress_rule::{IpBlock, Peer, Protocol};
use crate::label_selector::LabelSelector;
use crate::verification::{Reason, Verification};

fn net() -> impl Strategy<Value = IpNet> {
    prop_oneof![
        (any::<[u8; 4]>(), 8u8..=32)
            .prop_map(|(o, len)| { IpNet::V4(Ipv4Net::new(Ipv4Addr::from(o), len).unwrap().trunc()) }),
        (any::<u16>(), 16u8..=128).prop_map(|(seg, len)| {
            IpNet::V6(
                Ipv6Net::new(Ipv6Addr::new(0x2001, 0xdb8, seg, 0, 0, 0, 0, 1), len)
                    .unwrap()
                    .trunc(),
            )
        }),
        // A few nets inside 10.0.0.0/8 so that ceilings keep some peers.
        (any::<[u8; 3]>(), 8u8..=32).prop_map(|(o, len)| {
            IpNet::V4(Ipv4Net::new(Ipv4Addr::new(10, o[0], o[1], o[2]), len).unwrap().trunc())
        }),
    ]
}

/// The names rules may use; the generated facts resolve some of them, to zero or more addresses.
const NAMES: [&str; 3] = ["a.example.com", "b.example.com", "c.example.com"];

fn name() -> impl Strategy<Value = Fqdn> {
    prop::sample::select(&NAMES[..]).prop_map(|n| Fqdn::parse(n).unwrap())
}

fn peer() -> impl Strategy<Value = Peer> {
    prop_oneof![
        3 => net().prop_map(|cidr| Peer { ip_block: Some(IpBlock { cidr, except: vec![] }), namespace_selector: None, pod_selector: None, fqdn: None }),
        1 => prop_oneof![Just("db"), Just("cache")].prop_map(|team| Peer::namespace(LabelSelector::from_labels([("team", team)]))),
        2 => name().prop_map(Peer::fqdn),
    ]
}

fn address() -> impl Strategy<Value = IpAddr> {
    prop_oneof![
        any::<[u8; 4]>().prop_map(IpAddr::from),
        any::<u16>().prop_map(|s| IpAddr::from(Ipv6Addr::new(0x2001, 0xdb8, 0, 0, 0, 0, 0, s))),
    ]
}

/// Each name unresolved, resolved to nothing (NXDOMAIN past its grace), or to a few addresses (maybe repeated).
fn names() -> impl Strategy<Value = ResolvedNames> {
    prop::collection::btree_map(name(), prop::collection::vec(address(), 0..4), 0..=NAMES.len())
}

fn port() -> impl Strategy<Value = PortRange> {
    (prop_oneof![Just(Protocol::Tcp), Just(Protocol::Udp)], 1u16..=65535).prop_map(|(p, n)| PortRange::single(p, n))
}

fn rule() -> impl Strategy<Value = EgressRule> {
    (prop::collection::vec(peer(), 1..3), prop::collection::vec(port(), 0..3))
        .prop_map(|(to, ports)| EgressRule { to, ports })
}

fn local() -> impl Strategy<Value = LocalEgress> {
    prop_oneof![
        Just(LocalEgress::Absent),
        prop::collection::vec(rule(), 0..4).prop_map(LocalEgress::Rules),
        Just(LocalEgress::Invalid(vec![FieldError::new(
            "spec.egress.rules[0].to",
            "bad"
        )])),
    ]
}

fn agents() -> impl Strategy<Value = Vec<Agent>> {
    prop::collection::vec(
        (
            any::<bool>(),
            local(),
            prop_oneof![Just("llm"), Just("tool")],
            prop_oneof![Just("team-a"), Just("team-b")],
        ),
        0..8,
    )
    .prop_map(|specs| {
        specs
            .into_iter()
            .enumerate()
            .map(|(i, (verified, local_egress, tier, namespace))| Agent {
                namespace: namespace.into(),
                name: format!("agent-{i}"),
                uid: format!("uid-{i}"),
                target_name: format!("workload-{i}"),
                labels: BTreeMap::from([("tier".to_string(), tier.to_string())]),
                namespace_labels: BTreeMap::from([(LABEL_NAMESPACE_NAME.to_string(), namespace.to_string())]).into(),
                pod_labels: None,
                local_egress,
                verification: if verified {
                    Verification::verified(Reason::SignatureVerified, "generated")
                } else {
                    Verification::unverified(Reason::NotVerified, "generated")
                },
            })
            .collect()
    })
}

fn policies() -> impl Strategy<Value = Vec<EgressPolicy>> {
    prop::collection::vec(
        (
            prop::collection::vec(rule(), 1..3),
            prop::option::of(prop_oneof![Just("llm"), Just("tool")]),
        ),
        0..4,
    )
    .prop_map(|specs| {
        specs
            .into_iter()
            .enumerate()
            .map(|(i, (egress, tier))| EgressPolicy {
                metadata: Metadata {
                    name: format!("policy-{i}"),
                    ..Default::default()
                },
                spec: EgressPolicySpec {
                    agent_selector: tier.map(|t| LabelSelector::from_labels([("tier", t)])),
                    egress,
                    ..Default::default()
                },
            })
            .collect()
    })
}

fn guardrails() -> impl Strategy<Value = Vec<EgressGuardrail>> {
    prop::collection::vec(
        (
            any::<bool>(),
            prop::option::of((prop::collection::vec(net(), 0..3), prop::collection::vec(name(), 0..2))),
            any::<bool>(),
        ),
        0..3,
    )
    .prop_map(|specs| {
        specs
            .into_iter()
            .enumerate()
            .map(|(i, (baseline_only, ceiling, in_cluster))| EgressGuardrail {
                metadata: Metadata {
                    name: format!("guardrail-{i}"),
                    ..Default::default()
                },
                spec: EgressGuardrailSpec {
                    cluster_selector: None,
                    verified_default: if baseline_only {
                        VerifiedDefault::BaselineOnly
                    } else {
                        VerifiedDefault::AllowAll
                    },
                    allowed_destinations: ceiling.map(|(nets, names)| {
                        let mut allowed: Vec<AllowedDestination> =
                            nets.into_iter().map(AllowedDestination::Cidr).collect();
                        allowed.push(AllowedDestination::Cidr("10.0.0.0/8".parse().unwrap()));
                        allowed.extend(names.into_iter().map(AllowedDestination::Fqdn));
                        allowed
                    }),
                    allow_in_cluster_peers: in_cluster,
                },
            })
            .collect()
    })
}

fn facts() -> impl Strategy<Value = ClusterFacts> {
    (
        prop::collection::vec(any::<[u8; 4]>().prop_map(IpAddr::from), 0..4),
        prop::collection::vec(prop_oneof![Just(6443u16), Just(443u16)], 1..3),
        any::<bool>(),
        names(),
    )
        .prop_map(|(addresses, ports, dns, names)| ClusterFacts {
            api: ApiServerFacts {
                addresses,
                ports,
                service: None,
            },
            dns: dns.then(|| DnsFacts {
                namespace: "kube-system".into(),
                addresses: vec![IpAddr::from([10, 96, 0, 10])],
                target_ports: vec![PortRange::single(Protocol::Udp, 53)],
                cluster_ip: None,
            }),
            names,
        })
}

fn config() -> PlannerConfig {
    PlannerConfig {
        restricted_allow_dns: false,
        ..PlannerConfig::default()
    }
}

fn egress_of(policy: &NetworkPolicy) -> &[NetworkPolicyEgressRule] {
    policy.spec.as_ref().unwrap().egress.as_deref().unwrap()
}

fn mode_of(policy: &NetworkPolicy) -> Mode {
    Mode::parse(&policy.metadata.labels.as_ref().unwrap()[LABEL_MODE]).unwrap()
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 256, ..ProptestConfig::default() })]

    #[test]
    fn no_rendered_rule_is_port_only(facts in facts(), agents in agents(), policies in policies(), guardrails in guardrails()) {
        let intent = Intent { revision: Some(1), policies, guardrails };
        let plan = plan(&config(), &facts, &agents, &intent);
        for policy in plan.policies() {
            for rule in egress_of(policy) {
                let has_peers = rule.to.as_ref().is_some_and(|to| !to.is_empty());
                let allow_all = rule.to.is_none() && rule.ports.is_none();
                prop_assert!(has_peers || (allow_all && mode_of(policy) == Mode::AllowAll), "port-only rule {rule:?}");
                for peer in rule.to.iter().flatten() {
                    prop_assert!(peer.ip_block.is_some() || peer.namespace_selector.is_some() || peer.pod_selector.is_some());
                }
            }
        }
    }

    #[test]
    fn baseline_is_present_whenever_a_rule_is(facts in facts(), agents in agents(), policies in policies(), guardrails in guardrails()) {
        let intent = Intent { revision: Some(1), policies, guardrails };
        let plan = plan(&config(), &facts, &agents, &intent);
        let baseline = Baseline::new(&facts, false);
        for policy in plan.policies() {
            let egress = egress_of(policy);
            match mode_of(policy) {
                Mode::Scoped | Mode::BaselineOnly => {
                    let full = baseline.full();
                    prop_assert!(egress.len() >= full.len());
                    prop_assert_eq!(&egress[..full.len()], &full[..]);
                }
                Mode::Restricted => prop_assert_eq!(egress, &baseline.restricted()[..]),
                Mode::AllowAll => prop_assert_eq!(egress, &[NetworkPolicyEgressRule::default()][..]),
            }
        }
    }

    #[test]
    fn output_is_independent_of_input_order_and_repeatable(
        facts in facts(),
        (agents, shuffled_agents) in agents().prop_flat_map(|a| (Just(a.clone()), Just(a).prop_shuffle())),
        (policies, shuffled_policies) in policies().prop_flat_map(|p| (Just(p.clone()), Just(p).prop_shuffle())),
        (guardrails, shuffled_guardrails) in guardrails().prop_flat_map(|g| (Just(g.clone()), Just(g).prop_shuffle())),
    ) {
        let mut shuffled_facts = facts.clone();
        shuffled_facts.api.addresses.reverse();
        shuffled_facts.api.ports.reverse();
        for addresses in shuffled_facts.names.values_mut() {
            addresses.reverse();
        }
        let intent = Intent { revision: Some(4), policies, guardrails };
        let a = plan(&config(), &facts, &agents, &intent);
        let b = plan(
            &config(),
            &shuffled_facts,
            &shuffled_agents,
            &Intent { revision: Some(4), policies: shuffled_policies, guardrails: shuffled_guardrails },
        );
        prop_assert_eq!(&a, &b);
        // Byte-identical objects.
        prop_assert_eq!(serde_json::to_string(&a.policies().collect::<Vec<_>>()).unwrap(), serde_json::to_string(&b.policies().collect::<Vec<_>>()).unwrap());
        // Planning twice gives the same output.
        prop_assert_eq!(&a, &plan(&config(), &facts, &agents, &intent));
    }

    #[test]
    fn local_rules_outside_the_ceiling_never_reach_the_output(facts in facts(), agents in agents(), guardrails in guardrails()) {
        let intent = Intent { revision: None, policies: vec![], guardrails: guardrails.clone() };
        let plan = plan(&config(), &facts, &agents, &intent);
        let baseline = Baseline::new(&facts, false).full();
        let ceilings: Vec<&EgressGuardrail> = guardrails.iter().filter(|g| g.spec.allowed_destinations.is_some()).collect();
        for policy in plan.policies() {
            for rule in egress_of(policy) {
                if baseline.contains(rule) {
                    continue;
                }
                for peer in rule.to.iter().flatten() {
                    for guardrail in &ceilings {
                        match &peer.ip_block {
                            Some(block) => {
                                let cidr: IpNet = block.cidr.parse().unwrap();
                                let allowed = guardrail.spec.allowed_destinations.as_ref().unwrap();
                                // Inside an allowed CIDR, or an address of a name the ceiling lists.
                                let inside = allowed.iter().any(|d| match d {
                                    AllowedDestination::Cidr(net) => net.contains(&cidr),
                                    AllowedDestination::Fqdn(name) => facts
                                        .names
                                        .get(name)
                                        .is_some_and(|a| a.iter().any(|ip| IpNet::from(*ip) == cidr)),
                                });
                                prop_assert!(inside, "{cidr} escaped {}", guardrail.metadata.name);
                            }
                            None => prop_assert!(guardrail.spec.allow_in_cluster_peers),
                        }
                    }
                }
            }
        }
    }

    /// A name without addresses drops only its own peer; a rule left without peers is dropped (and reported), never
    /// rendered port-only; every other peer of the rule is kept, and each address of a name appears once.
    #[test]
    fn names_render_to_their_addresses_and_never_to_an_empty_rule(
        facts in facts(),
        rules in prop::collection::vec(rule(), 1..4),
    ) {
        let agent = Agent {
            namespace: "team-a".into(),
            name: "agent".into(),
            uid: String::new(),
            target_name: "agent".into(),
            labels: BTreeMap::new(),
            namespace_labels: Default::default(),
            pod_labels: None,
            local_egress: LocalEgress::Rules(rules.clone()),
            verification: Verification::verified(Reason::SignatureVerified, "generated"),
        };
        let plan = plan(&config(), &facts, &[agent], &Intent::default());
        let egress = egress_of(plan.agents[0].policy.as_ref().unwrap());
        let declared = &egress[Baseline::new(&facts, false).full().len()..];
        let outcome = &plan.agents[0].outcome;
        // The rules that render, in order, with the peers each must render to.
        let mut expected = Vec::new();
        let mut seen = Vec::new();
        for (i, rule) in rules.iter().enumerate() {
            if seen.contains(&rule) {
                continue;
            }
            seen.push(rule);
            let mut peers = 0;
            for peer in &rule.to {
                peers += match &peer.fqdn {
                    None => 1,
                    Some(name) => {
                        let mut a = facts.names.get(name).cloned().unwrap_or_default();
                        a.sort();
                        a.dedup();
                        a.len()
                    }
                };
            }
            if peers == 0 {
                prop_assert!(
                    outcome.dropped.iter().any(|d| d.rule == i && d.peer.is_none()),
                    "rule {i} without addresses is not reported: {:?}", outcome.dropped
                );
            } else {
                expected.push(peers);
            }
        }
        let rendered: Vec<usize> = declared.iter().map(|r| r.to.as_ref().map_or(0, Vec::len)).collect();
        prop_assert_eq!(rendered, expected);
        prop_assert_eq!(outcome.rule_count, declared.len());
        // Every name of the rules is reported, resolved or not.
        let mut names: Vec<&Fqdn> = rules.iter().flat_map(|r| r.to.iter().filter_map(|p| p.fqdn.as_ref())).collect();
        names.sort();
        names.dedup();
        let mut reported: Vec<&Fqdn> = outcome.names.iter().map(|n| &n.name).collect();
        reported.dedup();
        prop_assert_eq!(reported, names);
    }
}

/// One event of a cluster between two passes.
#[derive(Clone, Debug)]
enum Step {
    /// An agent is created or changes (its verification, rules, labels, or the workload it targets).
    Upsert {
        index: usize,
        verified: bool,
        local: LocalEgress,
        tier: &'static str,
        namespace: &'static str,
        workload: usize,
    },
    /// An agent is deleted.
    Remove(usize),
    /// The cluster-wide inputs change (endpoints, resolved names, hub intent).
    Cluster(ClusterFacts, Vec<EgressPolicy>, Vec<EgressGuardrail>),
}

fn step() -> impl Strategy<Value = Step> {
    prop_oneof![
        6 => (0usize..6, any::<bool>(), local(), prop_oneof![Just("llm"), Just("tool")],
              prop_oneof![Just("team-a"), Just("team-b")], 0usize..3)
            .prop_map(|(index, verified, local, tier, namespace, workload)| Step::Upsert {
                index, verified, local, tier, namespace, workload,
            }),
        2 => (0usize..6).prop_map(Step::Remove),
        1 => (facts(), policies(), guardrails()).prop_map(|(f, p, g)| Step::Cluster(f, p, g)),
    ]
}

/// An agent of a step; agents of one namespace on the same workload share its policy name.
fn stepped_agent(
    index: usize,
    verified: bool,
    local: LocalEgress,
    tier: &str,
    namespace: &str,
    workload: usize,
) -> Agent {
    Agent {
        namespace: namespace.into(),
        name: format!("agent-{index}"),
        uid: format!("uid-{index}"),
        target_name: format!("workload-{workload}"),
        labels: BTreeMap::from([("tier".to_string(), tier.to_string())]),
        namespace_labels: BTreeMap::from([(LABEL_NAMESPACE_NAME.to_string(), namespace.to_string())]).into(),
        pod_labels: None,
        local_egress: local,
        verification: if verified {
            Verification::verified(Reason::SignatureVerified, "generated")
        } else {
            Verification::unverified(Reason::NotVerified, "generated")
        },
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 256, ..ProptestConfig::default() })]

    /// After every step of a random history, the incremental plan equals a full plan of every agent (whole
    /// policies and outcomes), and the changes it reports are exactly the agents whose plan differs from the last
    /// step's.
    #[test]
    fn incremental_planning_equals_a_full_plan_after_every_step(
        facts in facts(),
        policies in policies(),
        guardrails in guardrails(),
        steps in prop::collection::vec(step(), 1..24),
    ) {
        let config = config();
        let (mut facts, mut intent) = (facts, Intent { revision: Some(1), policies, guardrails });
        // Agents by index; an index may move between namespaces (a delete and a create).
        let mut agents: BTreeMap<usize, Agent> = BTreeMap::new();
        let mut incremental = IncrementalPlan::default();
        let mut before = plan(&config, &facts, &[], &intent);
        incremental.replan_all(&Planner::new(&config, &facts, &intent), Vec::new());
        for (n, step) in steps.into_iter().enumerate() {
            let cluster_wide = matches!(step, Step::Cluster(..));
            // Every other step gives only what changed (as the spoke does), the others every agent.
            let (mut upserts, mut removals) = (Vec::new(), Vec::new());
            match step {
                Step::Upsert { index, verified, local, tier, namespace, workload } => {
                    let agent = stepped_agent(index, verified, local, tier, namespace, workload);
                    if let Some(old) = agents.insert(index, agent.clone())
                        && old.namespace != agent.namespace
                    {
                        removals.push((old.namespace, old.name));
                    }
                    upserts.push(agent);
                }
                Step::Remove(index) => {
                    if let Some(old) = agents.remove(&index) {
                        removals.push((old.namespace, old.name));
                    }
                }
                Step::Cluster(f, p, g) => {
                    facts = f;
                    intent = Intent { revision: intent.revision.map(|r| r + 1), policies: p, guardrails: g };
                }
            }
            let all: Vec<Agent> = agents.values().cloned().collect();
            let planner = Planner::new(&config, &facts, &intent);
            let changes = if cluster_wide {
                incremental.replan_all(&planner, all.clone())
            } else if n % 2 == 0 {
                incremental.stage(upserts, removals);
                incremental.plan_staged(&planner)
            } else {
                incremental.update(&planner, all.clone())
            };
            let full = plan(&config, &facts, &all, &intent);
            prop_assert_eq!(&incremental.plan(), &full);
            // The changes name exactly the agents whose plan differs from the last step's.
            let old: BTreeMap<AgentKey, &PlannedAgent> =
                before.agents.iter().map(|a| ((a.outcome.namespace.clone(), a.outcome.name.clone()), a)).collect();
            let new: BTreeMap<AgentKey, &PlannedAgent> =
                full.agents.iter().map(|a| ((a.outcome.namespace.clone(), a.outcome.name.clone()), a)).collect();
            let changed: BTreeSet<AgentKey> =
                new.iter().filter(|(k, a)| old.get(*k) != Some(*a)).map(|(k, _)| k.clone()).collect();
            let removed: BTreeSet<AgentKey> = old.keys().filter(|k| !new.contains_key(*k)).cloned().collect();
            prop_assert_eq!(&changes.changed, &changed);
            prop_assert_eq!(&changes.removed, &removed);
            before = full;
        }
    }
}
