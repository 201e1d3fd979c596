//! Expected policy shapes and intent documents of the fleet scenarios.

use std::collections::{BTreeMap, BTreeSet};

use k8s_openapi::api::networking::v1::NetworkPolicy;
use serde_json::{Value, json};
use tollgate_e2e::fleet::{API_PORT, API_SERVICE_IP, DNS_POD_IP, DNS_SERVICE_IP, Fleet};

pub const PROD_EAST: usize = 0;
pub const PROD_WEST: usize = 1;
pub const STAGING: usize = 2;

/// Agents in prod clusters labelled `tier=llm` may reach 104.18.0.0/16 on 443.
pub const LLM_POLICY: &str = "\
apiVersion: tollgate.dev/v1alpha1
kind: EgressPolicy
metadata: {name: llm-apis}
spec:
  clusterSelector: {matchLabels: {env: prod}}
  agentSelector: {matchLabels: {tier: llm}}
  egress:
    - to: [{ipBlock: {cidr: 104.18.0.0/16}}]
      ports: [{port: 443}]
";

pub use tollgate_e2e::rules::{
    allow_all, annotation, api_rule, api_service_rule, dns_rule, egress, mode, policy_name, rule,
};

fn api_address(fleet: &Fleet, index: usize) -> String {
    fleet.specs()[index].api_address.to_string()
}

/// The egress of a restricted agent in cluster `index`.
pub fn restricted(fleet: &Fleet, index: usize) -> Value {
    tollgate_e2e::rules::restricted(&api_address(fleet, index))
}

/// The baseline (API server, API Service, DNS) of cluster `index`, followed by `rules`.
pub fn baseline_and(fleet: &Fleet, index: usize, rules: &[Value]) -> Value {
    tollgate_e2e::rules::baseline_and(&api_address(fleet, index), rules)
}

/// Per cluster: agent name → (mode, destinations as the planner prints them).
pub type Observed = Vec<BTreeMap<String, (String, BTreeSet<String>)>>;

/// The agents' modes and destinations in every cluster, from the NetworkPolicies the spokes wrote.
pub async fn observe(fleet: &Fleet) -> anyhow::Result<Observed> {
    let mut out = Vec::new();
    for index in 0..fleet.specs().len() {
        let mut agents = BTreeMap::new();
        for policy in fleet.policies(index).await?.into_values() {
            let agent = policy["metadata"]["labels"]["tollgate.dev/agent"]
                .as_str()
                .unwrap_or_default()
                .to_string();
            let typed: NetworkPolicy = serde_json::from_value(policy.clone())?;
            agents.insert(
                agent,
                (
                    mode(&policy).to_string(),
                    tollgate_common::planner::destinations(&typed),
                ),
            );
        }
        out.push(agents);
    }
    Ok(out)
}

/// What an agent's policy looks like for a rollback comparison: spec, mode and rule sources.
pub fn essence(policy: &Value) -> Value {
    json!({
        "spec": policy["spec"],
        "mode": mode(policy),
        "sources": annotation(policy, "tollgate.dev/rule-sources"),
    })
}

/// [`essence`] of every policy in every cluster.
pub async fn essences(fleet: &Fleet) -> anyhow::Result<Vec<BTreeMap<String, Value>>> {
    let mut out = Vec::new();
    for index in 0..fleet.specs().len() {
        out.push(
            fleet
                .policies(index)
                .await?
                .into_iter()
                .map(|(name, policy)| (name, essence(&policy)))
                .collect(),
        );
    }
    Ok(out)
}

/// The row of `status --cluster` for `agent`.
pub fn agent_row<'a>(rows: &'a Value, agent: &str) -> &'a Value {
    rows.as_array()
        .and_then(|rows| rows.iter().find(|r| r["name"] == agent))
        .unwrap_or(&Value::Null)
}

/// Applies [`LLM_POLICY`] as the first revision and waits until `chat` is scoped by it in both prod clusters, with
/// exactly its rule after the baseline; returns the two policies.
pub async fn apply_llm_policy_and_wait(fleet: &Fleet) -> anyhow::Result<Vec<Value>> {
    assert_eq!(
        fleet.apply(LLM_POLICY).await?,
        "EgressPolicy/llm-apis created\nrevision 1\n"
    );
    let mut out = Vec::new();
    for index in [PROD_EAST, PROD_WEST] {
        let chat = fleet
            .wait_policy(index, "chat-signature-policy", "scoped by the hub", |p| {
                mode(p) == "scoped"
            })
            .await?;
        assert_eq!(egress(&chat), baseline_and(fleet, index, &[rule("104.18.0.0/16", 443)]));
        out.push(chat);
    }
    Ok(out)
}

/// The condition `type_` of a `status -o json` row (`null` when the cluster does not have it).
pub fn condition<'a>(row: &'a Value, type_: &str) -> &'a Value {
    row["conditions"]
        .as_array()
        .and_then(|c| c.iter().find(|c| c["type"] == type_))
        .unwrap_or(&Value::Null)
}

/// The egress np-guard's `nca` computes for each agent of cluster `index` from the policies its spoke wrote, by
/// agent name ([`tollgate_e2e::nca::judge_agents`]; `--sanity` must pass too).
pub async fn judged(fleet: &Fleet, index: usize) -> anyhow::Result<BTreeMap<String, BTreeSet<String>>> {
    tollgate_e2e::nca::judge_agents(&fleet.client(index), tollgate_e2e::fleet::TEAM_NS, DNS_POD_IP, &[]).await
}

/// What nca says an agent of cluster `index` may reach: the API server (endpoint and Service), DNS when
/// `dns` (ClusterIP, endpoint address, the kube-system pods, on 53), and each `(first, last, port)` TCP range.
pub fn judged_egress(fleet: &Fleet, index: usize, dns: bool, ranges: &[(&str, &str, u16)]) -> BTreeSet<String> {
    let mut lines = vec![
        format!("{} : {{protocols:TCP,dst_ports:{API_PORT}}}", api_address(fleet, index)),
        format!("{API_SERVICE_IP} : {{protocols:TCP,dst_ports:443}}"),
    ];
    if dns {
        lines.extend([
            format!("{DNS_SERVICE_IP} : {{protocols:TCP, UDP,dst_ports:53}}"),
            format!("{DNS_POD_IP} : {{protocols:TCP, UDP,dst_ports:53}}"),
            "kube-system/coredns[ReplicaSet] : {protocols:TCP, UDP,dst_ports:53}".to_string(),
        ]);
    }
    lines.extend(
        ranges
            .iter()
            .map(|(first, last, port)| format!("{first}-{last} : {{protocols:TCP,dst_ports:{port}}}")),
    );
    lines.into_iter().collect()
}
