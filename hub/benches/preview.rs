//! What `plan` costs the hub at fleet scale: an embedded store with `--clusters` registered clusters (half labelled
//! `env=prod`) and `--agents` agents each (inventories with their plan inputs, as spokes report them), and the
//! preview (`server::plan::preview`, what the Admin service's Plan runs) of:
//!
//! - one changed `EgressPolicy` (a new CIDR for the agents labelled `tier=llm`, a tenth of them, in prod clusters):
//!   only the clusters it selects are read and only the agents it selects are planned;
//! - one changed `EgressGuardrail` (every verified agent without rules goes baseline-only in every cluster): every
//!   cluster is read and every agent planned, twice — the cost of planning everything, side by side.
//!
//! `cargo bench -p tollgate-hub --bench preview [-- --clusters 1000 --agents 100 --runs 5]`

use std::collections::BTreeMap;
use std::time::Instant;

use anyhow::{Context, ensure};
use tollgate_common::document::DocumentSet;
use tollgate_common::planner::{Agent, LocalEgress};
use tollgate_common::verification::{Reason, Verification};
use tollgate_common::wire;
use tollgate_hub::server::plan::preview;
use tollgate_hub::server::store::facts::facts_to_json;
use tollgate_hub::server::store::{AgentRecord, ClusterReport, SqliteStore, Store};
use tollgate_proto::v1 as pb;

const POLICY: &str = "apiVersion: tollgate.dev/v1alpha1
kind: EgressPolicy
metadata: {name: llm-apis}
spec:
  clusterSelector: {matchLabels: {env: prod}}
  agentSelector: {matchLabels: {tier: llm}}
  egress: [{to: [{ipBlock: {cidr: CIDR}}], ports: [{port: 443}]}]
";

const GUARDRAIL: &str = "apiVersion: tollgate.dev/v1alpha1
kind: EgressGuardrail
metadata: {name: defaults}
spec:
  verifiedDefault: DEFAULT
";

fn documents(cidr: &str, default: &str) -> anyhow::Result<DocumentSet> {
    let yaml = format!(
        "{}---\n{}",
        POLICY.replace("CIDR", cidr),
        GUARDRAIL.replace("DEFAULT", default)
    );
    DocumentSet::from_yaml("bench", &yaml).map_err(|e| anyhow::anyhow!("{e:?}"))
}

/// Agent `i` of a cluster: a tenth are `tier=llm`, a third declare one local rule, one in twenty is not verified.
fn agent(i: usize) -> AgentRecord {
    let local_egress = if i.is_multiple_of(3) {
        LocalEgress::Rules(
            tollgate_common::egress_rule::parse_egress_rules(
                serde_json::json!([{"to": [{"ipBlock": {"cidr": format!("10.{}.0.0/16", i % 250)}}]}]),
                "rules",
            )
            .expect("a valid rule"),
        )
    } else {
        LocalEgress::Absent
    };
    let planned = Agent {
        namespace: format!("team-{}", i % 10),
        name: format!("agent-{i}"),
        uid: String::new(),
        target_name: format!("agent-{i}"),
        labels: BTreeMap::from([(
            "tier".to_string(),
            if i.is_multiple_of(10) { "llm" } else { "tool" }.to_string(),
        )]),
        namespace_labels: BTreeMap::from([("kubernetes.io/metadata.name".to_string(), format!("team-{}", i % 10))])
            .into(),
        pod_labels: None,
        local_egress,
        verification: if i % 20 == 7 {
            Verification::unverified(Reason::NotVerified, "bench")
        } else {
            Verification::verified(Reason::SignatureVerified, "bench")
        },
    };
    let outcome = tollgate_common::planner::plan(
        &Default::default(),
        &Default::default(),
        std::slice::from_ref(&planned),
        &Default::default(),
    )
    .agents
    .remove(0)
    .outcome;
    AgentRecord::try_from(wire::agent_status_to_wire(&outcome, &planned, 1)).expect("a complete status")
}

fn median(mut values: Vec<f64>) -> f64 {
    values.sort_by(f64::total_cmp);
    values[values.len() / 2]
}

fn main() -> anyhow::Result<()> {
    let (mut clusters, mut agents, mut runs) = (1000usize, 100usize, 5usize);
    let mut args = std::env::args().skip(1);
    while let Some(arg) = args.next() {
        match arg.as_str() {
            "--clusters" => clusters = args.next().context("--clusters N")?.parse()?,
            "--agents" => agents = args.next().context("--agents N")?.parse()?,
            "--runs" => runs = args.next().context("--runs N")?.parse()?,
            "--bench" => {}
            other => anyhow::bail!("unknown argument {other}"),
        }
    }
    let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build()?;
    runtime.block_on(async {
        let dir = tempfile::tempdir()?;
        let store = SqliteStore::open(dir.path())?;
        let facts = facts_to_json(&pb::ClusterFacts {
            api_server_addresses: vec!["192.0.2.10".into()],
            api_server_ports: vec![6443],
            dns_namespace: "kube-system".into(),
            dns_addresses: vec!["10.96.0.10".into()],
            dns_ports: vec![pb::PortSpec {
                protocol: "UDP".into(),
                port: 53,
                end_port: 0,
            }],
            ..Default::default()
        });
        let inventory: Vec<AgentRecord> = (0..agents).map(agent).collect();
        let started = Instant::now();
        let mut reports = Vec::new();
        for c in 0..clusters {
            let id = format!("cluster-{c}");
            let env = if c.is_multiple_of(2) { "prod" } else { "dev" };
            store
                .register_cluster(&id, &BTreeMap::from([("env".to_string(), env.to_string())]), 1)
                .await?;
            reports.push(ClusterReport {
                id,
                facts_json: Some(facts.clone()),
                inventory: Some(inventory.clone()),
                applied_revision: Some(1),
                conditions: None,
                last_seen_unix_millis: 2,
            });
        }
        for chunk in reports.chunks(100) {
            store.record_reports(chunk).await?;
        }
        println!(
            "store: {clusters} clusters x {agents} agents recorded in {:.1} s",
            started.elapsed().as_secs_f64()
        );
        let current = documents("104.18.0.0/16", "AllowAll")?;
        let one_policy = documents("104.19.0.0/16", "AllowAll")?;
        let guardrail = documents("104.18.0.0/16", "BaselineOnly")?;
        for (name, proposed, expected_clusters, expected_agents) in [
            ("one EgressPolicy changed", &one_policy, clusters / 2, agents / 10),
            (
                "one EgressGuardrail changed (every agent planned)",
                &guardrail,
                clusters,
                0,
            ),
        ] {
            let mut times = Vec::new();
            let mut changed = (0, 0);
            for _ in 0..runs {
                let started = Instant::now();
                let plans = preview(&store, &current, proposed).await?;
                times.push(started.elapsed().as_secs_f64());
                changed = (
                    plans.iter().filter(|c| !c.agents.is_empty()).count(),
                    plans.iter().map(|c| c.agents.len()).max().unwrap_or(0),
                );
            }
            ensure!(changed.0 == expected_clusters, "{name}: {} clusters change", changed.0);
            if expected_agents > 0 {
                ensure!(
                    changed.1 == expected_agents,
                    "{name}: {} agents change per cluster",
                    changed.1
                );
            }
            println!(
                "preview, {name}: median {:.3} s over {runs} runs (min {:.3}, max {:.3}); {} clusters change, up to \
                 {} agents each",
                median(times.clone()),
                times.iter().copied().fold(f64::INFINITY, f64::min),
                times.iter().copied().fold(0.0, f64::max),
                changed.0,
                changed.1
            );
        }
        Ok(())
    })
}
