//! `plan`: a fleet-wide preview of a change. For every cluster and agent, the planner runs twice on the latest
//! reported inventory and facts — with the current intent and with the proposed one — and the difference of the
//! rendered NetworkPolicies is the answer: destinations gained and lost, and mode changes. The same planner the
//! spokes run, so the preview is exact for the inputs the spokes last reported.

use std::collections::BTreeMap;

use tollgate_common::document::DocumentSet;
use tollgate_common::planner::{self, PlannerConfig};
use tollgate_common::wire::{PlanInputs, facts_from_json, facts_from_wire};
use tollgate_proto::v1 as pb;

use crate::store::{ClusterRecord, Store, StoreError};

/// The preview of one cluster: only the agents whose policy changes.
pub async fn preview<S: Store>(
    store: &S,
    current: &DocumentSet,
    proposed: &DocumentSet,
) -> Result<Vec<pb::ClusterPlan>, StoreError> {
    let mut out = Vec::new();
    for cluster in store.clusters().await? {
        let records = store.agents(&cluster.id).await?;
        let facts = cluster_facts(&cluster);
        let mut agents = Vec::new();
        let mut unreadable = Vec::new();
        for record in &records {
            let inputs: Result<PlanInputs, String> =
                serde_json::from_str(&record.plan_inputs_json).map_err(|e| e.to_string());
            match inputs.and_then(|i| i.agent(&record.namespace, &record.name, &record.labels)) {
                Ok(agent) => agents.push(agent),
                Err(reason) => unreadable.push(format!("{}/{}: {reason}", record.namespace, record.name)),
            }
        }
        // Ingress settings do not change egress; the defaults are as good as the cluster's own for a diff.
        let config = PlannerConfig::default();
        let before = planner::plan(&config, &facts, &agents, &current.for_cluster(&cluster.labels, None));
        let after = planner::plan(&config, &facts, &agents, &proposed.for_cluster(&cluster.labels, None));
        let mut changes = Vec::new();
        for ((old_outcome, new_outcome), (old_policy, new_policy)) in before
            .outcomes
            .iter()
            .zip(&after.outcomes)
            .zip(before.policies.iter().zip(&after.policies))
        {
            let old = planner::destinations(old_policy);
            let new = planner::destinations(new_policy);
            if old == new && old_outcome.mode == new_outcome.mode {
                continue;
            }
            changes.push(pb::AgentPlan {
                namespace: new_outcome.namespace.clone(),
                name: new_outcome.name.clone(),
                mode_before: old_outcome.mode.as_str().to_string(),
                mode_after: new_outcome.mode.as_str().to_string(),
                gained: new.difference(&old).cloned().collect(),
                lost: old.difference(&new).cloned().collect(),
            });
        }
        for problem in unreadable {
            tracing::warn!(cluster = %cluster.id, problem, "An agent could not be previewed");
        }
        out.push(pb::ClusterPlan {
            cluster_id: cluster.id.clone(),
            agents: changes,
        });
    }
    Ok(out)
}

fn cluster_facts(cluster: &ClusterRecord) -> planner::ClusterFacts {
    let facts = cluster
        .facts_json
        .as_deref()
        .map(|json| facts_from_json(json).and_then(|message| facts_from_wire(&message).map_err(|e| e.to_string())));
    match facts {
        None => planner::ClusterFacts::default(),
        Some(Ok(facts)) => facts,
        Some(Err(reason)) => {
            tracing::warn!(cluster = %cluster.id, reason, "Unreadable stored facts; previewing without them");
            planner::ClusterFacts::default()
        }
    }
}

/// The preview of one cluster, for `-o json|yaml`.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "camelCase")]
pub struct ClusterPlanRow {
    pub cluster: String,
    pub agents: Vec<AgentPlanRow>,
}

/// One agent whose policy would change.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "camelCase")]
pub struct AgentPlanRow {
    pub namespace: String,
    pub name: String,
    pub mode_before: String,
    pub mode_after: String,
    pub gained: Vec<String>,
    pub lost: Vec<String>,
}

pub fn rows(plans: &[pb::ClusterPlan]) -> Vec<ClusterPlanRow> {
    plans
        .iter()
        .map(|c| ClusterPlanRow {
            cluster: c.cluster_id.clone(),
            agents: c
                .agents
                .iter()
                .map(|a| AgentPlanRow {
                    namespace: a.namespace.clone(),
                    name: a.name.clone(),
                    mode_before: a.mode_before.clone(),
                    mode_after: a.mode_after.clone(),
                    gained: a.gained.clone(),
                    lost: a.lost.clone(),
                })
                .collect(),
        })
        .collect()
}

/// The preview as text: one block per cluster, `+` gained and `-` lost destinations per agent.
pub fn render(plans: &[pb::ClusterPlan]) -> String {
    let mut out = String::new();
    let mut total = 0;
    for cluster in plans {
        if cluster.agents.is_empty() {
            out.push_str(&format!("cluster {}: no change\n", cluster.cluster_id));
            continue;
        }
        total += cluster.agents.len();
        out.push_str(&format!(
            "cluster {}: {} agent(s) change\n",
            cluster.cluster_id,
            cluster.agents.len()
        ));
        for agent in &cluster.agents {
            let mode = if agent.mode_before == agent.mode_after {
                agent.mode_after.clone()
            } else {
                format!("{} -> {}", agent.mode_before, agent.mode_after)
            };
            out.push_str(&format!("  {}/{}: {mode}\n", agent.namespace, agent.name));
            for line in &agent.gained {
                out.push_str(&format!("    + {line}\n"));
            }
            for line in &agent.lost {
                out.push_str(&format!("    - {line}\n"));
            }
        }
    }
    let clusters: BTreeMap<&str, usize> = plans
        .iter()
        .filter(|c| !c.agents.is_empty())
        .map(|c| (c.cluster_id.as_str(), c.agents.len()))
        .collect();
    out.push_str(&format!(
        "{total} agent(s) in {} cluster(s) would change\n",
        clusters.len()
    ));
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_gains_losses_and_mode_changes() {
        let plans = vec![
            pb::ClusterPlan {
                cluster_id: "prod-eu".into(),
                agents: vec![pb::AgentPlan {
                    namespace: "team-a".into(),
                    name: "weather".into(),
                    mode_before: "allow-all".into(),
                    mode_after: "scoped".into(),
                    gained: vec!["104.18.0.0/16 TCP/443".into()],
                    lost: vec!["* any port".into()],
                }],
            },
            pb::ClusterPlan {
                cluster_id: "dev".into(),
                agents: vec![],
            },
        ];
        assert_eq!(
            render(&plans),
            "\
cluster prod-eu: 1 agent(s) change
  team-a/weather: allow-all -> scoped
    + 104.18.0.0/16 TCP/443
    - * any port
cluster dev: no change
1 agent(s) in 1 cluster(s) would change
"
        );
    }
}
