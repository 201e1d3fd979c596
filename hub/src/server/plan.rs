//! `plan`: a fleet-wide preview of a change. For every cluster and agent, the planner runs twice on the latest
//! reported inventory and facts — with the current intent and with the proposed one — and the difference of the
//! rendered NetworkPolicies is the answer: destinations gained and lost, and mode changes. The same planner the
//! spokes run, so the preview is exact for the inputs the spokes last reported.

use std::collections::{BTreeMap, BTreeSet};

use tollgate_common::document::DocumentSet;
use tollgate_common::intent::Intent;
use tollgate_common::planner::{self, PlannerConfig};
use tollgate_proto::v1 as pb;

use crate::server::store::facts::facts_from_json;
use crate::server::store::{ClusterRecord, Store, StoreError};

/// The preview of every cluster: only the agents whose policy changes.
pub async fn preview<S: Store>(
    store: &S,
    current: &DocumentSet,
    proposed: &DocumentSet,
) -> Result<Vec<pb::ClusterPlan>, StoreError> {
    let mut out = Vec::new();
    for cluster in store.clusters().await? {
        let (facts, config) = cluster_facts(&cluster);
        let (before, after) = (
            current.for_cluster(&cluster.labels, None),
            proposed.for_cluster(&cluster.labels, None),
        );
        // The same documents select this cluster before and after: nothing changes there, and its inventory is
        // not even read.
        if before == after {
            out.push(pb::ClusterPlan {
                cluster_id: cluster.id.clone(),
                baseline: planner::baseline_destinations(&facts, config.restricted_allow_dns)
                    .into_iter()
                    .collect(),
                agents: Vec::new(),
            });
            continue;
        }
        let records = store.agents(&cluster.id).await?;
        let mut agents = Vec::new();
        let mut unreadable = Vec::new();
        for record in records {
            let (namespace, name) = (record.namespace.clone(), record.name.clone());
            match planner::Agent::try_from(&pb::AgentStatus::from(record)) {
                Ok(agent) => agents.push(agent),
                Err(reason) => unreadable.push(format!("{namespace}/{name}: {reason}")),
            }
        }
        for problem in unreadable {
            tracing::warn!(cluster = %cluster.id, problem, "An agent could not be previewed");
        }
        out.push(pb::ClusterPlan {
            cluster_id: cluster.id.clone(),
            baseline: planner::baseline_destinations(&facts, config.restricted_allow_dns)
                .into_iter()
                .collect(),
            agents: changes(&config, &facts, &agents, &before, &after),
        });
    }
    Ok(out)
}

/// The agents of one cluster whose policy changes from `current` to `proposed`, in agent order. Each agent is
/// compared through its own policy (the planner returns them together): an agent whose workload another agent
/// already holds has no policy of its own, so no destinations.
///
/// Only the agents the change can touch are planned: every agent when a guardrail changed, else those an added,
/// removed or changed policy selects before or after, with the agents sharing their workload (one policy per
/// workload). The others plan the same under both intents.
pub fn changes(
    config: &PlannerConfig,
    facts: &planner::ClusterFacts,
    agents: &[planner::Agent],
    current: &Intent,
    proposed: &Intent,
) -> Vec<pb::AgentPlan> {
    let touched = touched(agents, current, proposed);
    if touched.len() == agents.len() {
        return compare(config, facts, agents, current, proposed);
    }
    let subset: Vec<planner::Agent> = touched.into_iter().map(|i| agents[i].clone()).collect();
    compare(config, facts, &subset, current, proposed)
}

/// The indexes of the agents whose plan the change from `current` to `proposed` may change.
fn touched(agents: &[planner::Agent], current: &Intent, proposed: &Intent) -> Vec<usize> {
    if current.guardrails != proposed.guardrails {
        return (0..agents.len()).collect();
    }
    let by_name = |intent: &'_ Intent| -> BTreeMap<String, usize> {
        intent
            .policies
            .iter()
            .enumerate()
            .map(|(i, p)| (p.metadata.name.clone(), i))
            .collect()
    };
    let (old, new) = (by_name(current), by_name(proposed));
    let mut changed: Vec<&tollgate_common::document::EgressPolicy> = Vec::new();
    for name in old.keys().chain(new.keys()).collect::<BTreeSet<_>>() {
        let before = old.get(name).map(|&i| &current.policies[i]);
        let after = new.get(name).map(|&i| &proposed.policies[i]);
        if before != after {
            changed.extend(before);
            changed.extend(after);
        }
    }
    let selected: BTreeSet<(&str, &str)> = agents
        .iter()
        .filter(|a| changed.iter().any(|p| planner::selects(p, a)))
        .map(|a| (a.namespace.as_str(), a.target_name.as_str()))
        .collect();
    agents
        .iter()
        .enumerate()
        .filter(|(_, a)| selected.contains(&(a.namespace.as_str(), a.target_name.as_str())))
        .map(|(i, _)| i)
        .collect()
}

/// Plans `agents` under both intents and lists those whose policy differs.
fn compare(
    config: &PlannerConfig,
    facts: &planner::ClusterFacts,
    agents: &[planner::Agent],
    current: &Intent,
    proposed: &Intent,
) -> Vec<pb::AgentPlan> {
    let before = planner::plan(config, facts, agents, current);
    let after = planner::plan(config, facts, agents, proposed);
    fn destinations(plan: &planner::Plan) -> BTreeMap<(&str, &str), (planner::Mode, BTreeSet<String>)> {
        plan.agents
            .iter()
            .map(|planned| {
                let (outcome, own) = (&planned.outcome, planned.policy.as_ref());
                // DNS names are shown as names (the hub never plans with a cluster's addresses): a gained name,
                // not the addresses it stands for today.
                let mut destinations = own.map(planner::destinations).unwrap_or_default();
                if own.is_some() {
                    destinations.extend(outcome.names.iter().flat_map(|n| n.lines()));
                }
                (
                    (outcome.namespace.as_str(), outcome.name.as_str()),
                    (outcome.mode, destinations),
                )
            })
            .collect()
    }
    let (old, new) = (destinations(&before), destinations(&after));
    let mut out = Vec::new();
    for ((namespace, name), (mode_after, gained_from)) in &new {
        let Some((mode_before, lost_from)) = old.get(&(*namespace, *name)) else {
            continue;
        };
        if mode_before == mode_after && lost_from == gained_from {
            continue;
        }
        out.push(pb::AgentPlan {
            namespace: namespace.to_string(),
            name: name.to_string(),
            mode_before: pb::EgressMode::from(*mode_before).into(),
            mode_after: pb::EgressMode::from(*mode_after).into(),
            gained: gained_from.difference(lost_from).cloned().collect(),
            lost: lost_from.difference(gained_from).cloned().collect(),
        });
    }
    out
}

/// A cluster's reported facts, and the planner settings its spoke reported with them (defaults for facts reported
/// by a spoke that did not send them).
fn cluster_facts(cluster: &ClusterRecord) -> (planner::ClusterFacts, PlannerConfig) {
    let Some(json) = cluster.facts_json.as_deref() else {
        return (planner::ClusterFacts::default(), PlannerConfig::default());
    };
    let message = match facts_from_json(json) {
        Ok(message) => message,
        Err(error) => {
            tracing::warn!(cluster = %cluster.id, %error, "Unreadable stored facts; previewing without them");
            return (planner::ClusterFacts::default(), PlannerConfig::default());
        }
    };
    let defaults = PlannerConfig::default();
    let config = PlannerConfig {
        restricted_allow_dns: message.restricted_allow_dns,
        name_suffix: if message.policy_name_suffix.is_empty() {
            defaults.name_suffix.clone()
        } else {
            message.policy_name_suffix.clone()
        },
        ..defaults
    };
    let facts = planner::ClusterFacts::try_from(&message).unwrap_or_else(|error| {
        tracing::warn!(cluster = %cluster.id, %error, "Unreadable stored facts; previewing without them");
        planner::ClusterFacts::default()
    });
    (facts, config)
}

#[cfg(test)]
mod tests {
    use super::*;
    use tollgate_common::planner::{Agent, LocalEgress};
    use tollgate_common::verification::{Reason, Verification};
    use tollgate_common::wire::mode_name;

    /// A verified agent without local rules, labelled `tier`, whose policy is named after `workload`.
    fn agent(name: &str, workload: &str, tier: &str) -> Agent {
        Agent {
            namespace: "team-a".into(),
            name: name.into(),
            uid: String::new(),
            target_name: workload.into(),
            labels: BTreeMap::from([("tier".to_string(), tier.to_string())]),
            namespace_labels: Default::default(),
            pod_labels: None,
            local_egress: LocalEgress::Absent,
            verification: Verification::verified(Reason::MtlsVerified, "test"),
        }
    }

    fn intent(yaml: &str) -> Intent {
        DocumentSet::from_yaml("test", yaml)
            .unwrap()
            .for_cluster(&BTreeMap::new(), None)
    }

    const LLM: &str = "apiVersion: tollgate.dev/v1alpha1\nkind: EgressPolicy\nmetadata: {name: llm}\nspec:\n  \
                       agentSelector: {matchLabels: {tier: llm}}\n  egress: [{to: [{ipBlock: {cidr: 104.18.0.0/16}}], \
                       ports: [{port: 443}]}]\n";

    fn changed(plans: &[pb::AgentPlan]) -> Vec<(&str, &str, &str)> {
        plans
            .iter()
            .map(|a| (a.name.as_str(), mode_name(a.mode_before), mode_name(a.mode_after)))
            .collect()
    }

    /// Planning only the agents a change can touch gives the same preview as planning every agent, whatever changes:
    /// policies added, removed, edited, re-selected (by labels or namespace), guardrails, agents sharing a
    /// workload with a touched one.
    #[test]
    fn planning_only_touched_agents_answers_as_planning_every_agent() {
        let policy = |name: &str, selector: &str, cidr: &str| {
            format!(
                "---\napiVersion: tollgate.dev/v1alpha1\nkind: EgressPolicy\nmetadata: {{name: {name}}}\nspec:\n  \
                 {selector}\n  egress: [{{to: [{{ipBlock: {{cidr: {cidr}}}}}], ports: [{{port: 443}}]}}]\n"
            )
        };
        let guardrail = "---\napiVersion: tollgate.dev/v1alpha1\nkind: EgressGuardrail\nmetadata: {name: g}\nspec:\n  \
                         verifiedDefault: BaselineOnly\n";
        let llm = policy("llm", "agentSelector: {matchLabels: {tier: llm}}", "104.18.0.0/16");
        let llm2 = policy("llm", "agentSelector: {matchLabels: {tier: llm}}", "104.19.0.0/16");
        let tools = policy("tools", "agentSelector: {matchLabels: {tier: tool}}", "203.0.113.0/24");
        let retiered = policy("tools", "agentSelector: {matchLabels: {tier: llm}}", "203.0.113.0/24");
        let team_b = policy("team", "namespaces: [team-b]", "198.51.100.0/24");
        let intents: Vec<Intent> = [
            String::new(),
            llm.clone(),
            llm2.clone(),
            format!("{llm}{tools}"),
            format!("{llm2}{retiered}"),
            format!("{tools}{team_b}"),
            format!("{llm}{guardrail}"),
            format!("{team_b}{guardrail}"),
        ]
        .iter()
        .map(|yaml| {
            if yaml.is_empty() {
                Intent::default()
            } else {
                intent(yaml)
            }
        })
        .collect();
        let mut agents = vec![
            agent("a", "shared", "tool"),
            agent("b", "shared", "llm"),
            agent("c", "own-c", "llm"),
            agent("d", "own-d", "tool"),
            agent("e", "own-e", "none"),
        ];
        let mut other = agent("f", "shared", "none");
        other.namespace = "team-b".into();
        agents.push(other);
        let mut unverified = agent("g", "own-g", "llm");
        unverified.verification = Verification::unverified(Reason::NotVerified, "test");
        agents.push(unverified);
        let facts = planner::ClusterFacts::default();
        let config = PlannerConfig::default();
        let mut compared = 0;
        for current in &intents {
            for proposed in &intents {
                let fast = changes(&config, &facts, &agents, current, proposed);
                let every = compare(&config, &facts, &agents, current, proposed);
                assert_eq!(fast, every, "{current:?} -> {proposed:?}");
                compared += usize::from(!every.is_empty());
            }
        }
        assert!(compared > 20, "most pairs change something ({compared})");
        // An edit of one policy plans only the agents it selects (and their workload's).
        assert_eq!(
            touched(&agents, &intents[1], &intents[2]),
            [0, 1, 2, 6],
            "a and b share a workload"
        );
    }

    /// Agent names and workload names sort in opposite orders: pairing outcomes with policies by position would
    /// report `alpha` (unchanged) with `zulu`'s change.
    #[test]
    fn each_agent_is_compared_through_its_own_policy() {
        let agents = [
            agent("alpha", "zulu-deploy", "tools"),
            agent("zulu", "alpha-deploy", "llm"),
        ];
        let config = PlannerConfig::default();
        let facts = planner::ClusterFacts::default();
        let plans = changes(&config, &facts, &agents, &intent(""), &intent(LLM));
        assert_eq!(changed(&plans), [("zulu", "allow-all", "scoped")]);
        assert!(
            plans[0].gained.iter().any(|d| d.contains("104.18.0.0/16")),
            "{:?}",
            plans[0].gained
        );
        assert!(changes(&config, &facts, &agents, &intent(LLM), &intent(LLM)).is_empty());
    }

    /// A gained DNS name is shown as the name, never as addresses (the hub has none); changing only the name's
    /// ports shows the old line lost and the new one gained.
    #[test]
    fn names_are_previewed_symbolically() {
        let agents = [agent("planner", "planner", "llm")];
        let config = PlannerConfig::default();
        let facts = planner::ClusterFacts::default();
        let named = |port: u16| {
            format!(
                "apiVersion: tollgate.dev/v1alpha1\nkind: EgressPolicy\nmetadata: {{name: llm}}\nspec:\n  \
                 agentSelector: {{matchLabels: {{tier: llm}}}}\n  egress: [{{to: [{{fqdn: api.openai.com}}, \
                 {{ipBlock: {{cidr: 104.18.0.0/16}}}}], ports: [{{port: {port}}}]}}]\n"
            )
        };
        let plans = changes(&config, &facts, &agents, &intent(""), &intent(&named(443)));
        assert_eq!(changed(&plans), [("planner", "allow-all", "scoped")]);
        let declared: Vec<&String> = plans[0].gained.iter().filter(|d| !d.starts_with("namespace")).collect();
        assert_eq!(
            declared,
            ["104.18.0.0/16 TCP/443", "fqdn:api.openai.com TCP/443"],
            "and the baseline"
        );
        let plans = changes(&config, &facts, &agents, &intent(&named(443)), &intent(&named(8443)));
        assert_eq!(
            plans[0].gained,
            ["104.18.0.0/16 TCP/8443", "fqdn:api.openai.com TCP/8443"]
        );
        assert_eq!(plans[0].lost, ["104.18.0.0/16 TCP/443", "fqdn:api.openai.com TCP/443"]);
    }

    /// Two agents on one workload share one policy (the first by name holds it): the other is still previewed,
    /// and the holder is not reported for the other's change.
    #[test]
    fn an_agent_without_a_policy_of_its_own_is_still_previewed() {
        let agents = [agent("one", "shared", "tools"), agent("two", "shared", "llm")];
        let plans = changes(
            &PlannerConfig::default(),
            &planner::ClusterFacts::default(),
            &agents,
            &intent(""),
            &intent(LLM),
        );
        assert_eq!(changed(&plans), [("two", "allow-all", "scoped")]);
        assert!(plans[0].gained.is_empty() && plans[0].lost.is_empty(), "{plans:?}");
    }

    /// The preview plans a cluster with the settings its spoke reported (here `--restricted-allow-dns` and a policy
    /// name suffix), and with defaults for facts that carry none.
    #[test]
    fn the_cluster_is_planned_with_its_spokes_settings() {
        let message = pb::ClusterFacts {
            api_server_addresses: vec!["192.0.2.10".into()],
            api_server_ports: vec![6443],
            restricted_allow_dns: true,
            policy_name_suffix: "-egress".into(),
            ..Default::default()
        };
        let record = ClusterRecord {
            id: "c1".into(),
            facts_json: Some(crate::server::store::facts::facts_to_json(&message)),
            ..ClusterRecord::default()
        };
        let (facts, config) = cluster_facts(&record);
        assert!(config.restricted_allow_dns);
        assert_eq!(config.name_suffix, "-egress");
        assert_eq!(facts.api.ports, [6443]);
        let (_, config) = cluster_facts(&ClusterRecord::default());
        assert_eq!(config, PlannerConfig::default());
    }
}
