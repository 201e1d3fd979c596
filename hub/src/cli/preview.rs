//! The fleet preview (`plan`) as the CLI shows it: one block per cluster with the destinations each changing agent
//! gains and loses, or rows for `-o json|yaml`.

use std::collections::BTreeMap;

use tollgate_common::wire::mode_name;
use tollgate_proto::v1 as pb;

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
                    mode_before: mode_name(a.mode_before).to_string(),
                    mode_after: mode_name(a.mode_after).to_string(),
                    gained: a.gained.clone(),
                    lost: a.lost.clone(),
                })
                .collect(),
        })
        .collect()
}

/// The preview as text: one block per cluster, `+` gained and `-` lost destinations per agent. Unless
/// `show_baseline`, an agent that gains or loses its whole baseline (leaving or entering allow-all) shows it as one
/// `baseline: API server, DNS` line, so that the destinations that matter are not buried.
pub fn render(plans: &[pb::ClusterPlan], show_baseline: bool) -> String {
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
            let (before, after) = (mode_name(agent.mode_before), mode_name(agent.mode_after));
            let mode = if before == after {
                after.to_string()
            } else {
                format!("{before} -> {after}")
            };
            out.push_str(&format!("  {}/{}: {mode}\n", agent.namespace, agent.name));
            for (sign, lines) in [('+', &agent.gained), ('-', &agent.lost)] {
                let whole = !show_baseline
                    && !cluster.baseline.is_empty()
                    && cluster.baseline.iter().all(|line| lines.contains(line));
                if whole {
                    out.push_str(&format!("    {sign} baseline: API server, DNS\n"));
                }
                for line in lines.iter().filter(|line| !whole || !cluster.baseline.contains(line)) {
                    out.push_str(&format!("    {sign} {line}\n"));
                }
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
                    mode_before: pb::EgressMode::AllowAll.into(),
                    mode_after: pb::EgressMode::Scoped.into(),
                    gained: vec!["104.18.0.0/16 TCP/443".into()],
                    lost: vec!["* any port".into()],
                }],
                baseline: vec![],
            },
            pb::ClusterPlan {
                cluster_id: "dev".into(),
                agents: vec![],
                baseline: vec![],
            },
        ];
        assert_eq!(
            render(&plans, false),
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

    /// An agent leaving allow-all gains the whole baseline: one line says so, unless asked for every address; a
    /// change that touches only part of the baseline still lists each line.
    #[test]
    fn the_whole_baseline_is_one_line_unless_asked() {
        let baseline: Vec<String> = ["192.0.2.10/32 TCP/6443", "10.96.0.10/32 UDP/53", "10.96.0.10/32 TCP/53"]
            .map(String::from)
            .to_vec();
        let agent = |gained: &[&str], lost: &[&str]| pb::AgentPlan {
            namespace: "team-a".into(),
            name: "chat".into(),
            mode_before: pb::EgressMode::AllowAll.into(),
            mode_after: pb::EgressMode::Scoped.into(),
            gained: gained.iter().map(|s| s.to_string()).collect(),
            lost: lost.iter().map(|s| s.to_string()).collect(),
        };
        let mut gained: Vec<&str> = baseline.iter().map(String::as_str).collect();
        gained.push("104.18.0.0/16 TCP/443");
        let plans = vec![pb::ClusterPlan {
            cluster_id: "prod".into(),
            agents: vec![agent(&gained, &["* any port"])],
            baseline: baseline.clone(),
        }];
        assert_eq!(
            render(&plans, false),
            "\
cluster prod: 1 agent(s) change
  team-a/chat: allow-all -> scoped
    + baseline: API server, DNS
    + 104.18.0.0/16 TCP/443
    - * any port
1 agent(s) in 1 cluster(s) would change
"
        );
        let every = render(&plans, true);
        for line in &baseline {
            assert!(every.contains(&format!("    + {line}\n")), "{every}");
        }
        assert!(!every.contains("baseline:"), "{every}");
        let partial = vec![pb::ClusterPlan {
            agents: vec![agent(&["192.0.2.10/32 TCP/6443"], &[])],
            ..plans[0].clone()
        }];
        assert!(render(&partial, false).contains("    + 192.0.2.10/32 TCP/6443\n"));
    }
}
