//! Planner throughput: 10,000 agents with 10 rules each (target ≤ 100 ms on one core, ≤ 10 µs per agent).
//!
//! Run with `cargo bench -p tollgate-common --bench planner`.

use std::collections::BTreeMap;
use std::hint::black_box;
use std::net::{IpAddr, Ipv4Addr};

use criterion::{BatchSize, Criterion, criterion_group, criterion_main};
use ipnet::{IpNet, Ipv4Net};
use tollgate_common::Intent;
use tollgate_common::document::{EgressPolicy, EgressPolicySpec, Metadata};
use tollgate_common::egress_rule::{EgressRule, Peer, PortRange, Protocol};
use tollgate_common::label_selector::LabelSelector;
use tollgate_common::planner::{Agent, ApiServerFacts, ClusterFacts, DnsFacts, LocalEgress, PlannerConfig, plan};
use tollgate_common::verification::{Reason, Verification};

const AGENTS: usize = 10_000;
const RULES: usize = 10;

fn rule(seed: usize, j: usize) -> EgressRule {
    let octets = [(seed % 200) as u8 + 1, (j * 7 % 250) as u8, (seed / 200 % 250) as u8, 0];
    EgressRule {
        to: vec![Peer::ip_block(IpNet::V4(
            Ipv4Net::new(Ipv4Addr::from(octets), 24).unwrap(),
        ))],
        ports: vec![
            PortRange::single(Protocol::Tcp, 443),
            PortRange::single(Protocol::Tcp, 8000 + j as u16),
        ],
    }
}

fn agents() -> Vec<Agent> {
    (0..AGENTS)
        .map(|i| Agent {
            namespace: format!("team-{}", i % 50),
            name: format!("agent-{i}"),
            uid: format!("00000000-0000-0000-0000-{i:012}"),
            target_name: format!("agent-{i}"),
            labels: BTreeMap::from([("tier".to_string(), if i % 2 == 0 { "llm" } else { "tool" }.to_string())]),
            namespace_labels: Default::default(),
            pod_labels: Some(BTreeMap::from([("app".to_string(), format!("agent-{i}"))])),
            local_egress: LocalEgress::Rules((0..RULES).map(|j| rule(i, j)).collect()),
            verification: Verification::verified(Reason::MtlsVerified, "bench"),
        })
        .collect()
}

fn facts() -> ClusterFacts {
    ClusterFacts {
        api: ApiServerFacts {
            addresses: vec![
                IpAddr::from([192, 0, 2, 10]),
                IpAddr::from([192, 0, 2, 11]),
                IpAddr::from([192, 0, 2, 12]),
            ],
            ports: vec![6443],
            service: Some((IpAddr::from([10, 96, 0, 1]), 443)),
        },
        dns: Some(DnsFacts {
            namespace: "openshift-dns".into(),
            addresses: vec![IpAddr::from([10, 128, 0, 7]), IpAddr::from([10, 129, 0, 9])],
            target_ports: vec![
                PortRange::single(Protocol::Udp, 5353),
                PortRange::single(Protocol::Tcp, 5353),
            ],
            cluster_ip: Some(IpAddr::from([172, 30, 0, 10])),
        }),
        names: Default::default(),
    }
}

fn hub_intent() -> Intent {
    Intent {
        revision: Some(42),
        policies: (0..5)
            .map(|p| EgressPolicy {
                metadata: Metadata {
                    name: format!("policy-{p}"),
                    ..Default::default()
                },
                spec: EgressPolicySpec {
                    agent_selector: Some(LabelSelector::from_labels([("tier", "llm")])),
                    egress: (0..2).map(|j| rule(p, j)).collect(),
                    ..Default::default()
                },
            })
            .collect(),
        guardrails: vec![],
    }
}

fn bench(c: &mut Criterion) {
    let config = PlannerConfig::default();
    let facts = facts();
    let agents = agents();
    let mut group = c.benchmark_group("planner");
    group.sample_size(20);
    // The output is freed after each timed call (not accumulated), so memory is reused as in the spoke.
    group.bench_function("10k_agents_x_10_local_rules_freeing_outside_timing", |b| {
        b.iter_batched(
            || (),
            |()| plan(&config, &facts, black_box(&agents), &Intent::default()),
            BatchSize::PerIteration,
        )
    });
    group.bench_function("10k_agents_x_10_local_rules", |b| {
        b.iter(|| black_box(plan(&config, &facts, black_box(&agents), &Intent::default())))
    });
    let intent = hub_intent();
    group.bench_function("10k_agents_x_10_local_rules_plus_hub_policies", |b| {
        b.iter(|| black_box(plan(&config, &facts, black_box(&agents), &intent)))
    });
    group.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
