//! Test fixtures: a real cluster prepared like a vanilla one (API endpoints, kube-dns, the spoke's own AgentRuntime
//! CRD) and the real `tollgate-spoke` binary running against it ([`tollgate_e2e::spoke`]), with the expected rules
//! of [`tollgate_e2e::rules`].

#![allow(dead_code)]

use anyhow::Result;
use k8s_openapi::api::events::v1::Event;
use k8s_openapi::api::networking::v1::NetworkPolicy;
use kube::api::Api;
use kube::{Client, CustomResourceExt};
use serde_json::{Value, json};
#[allow(unused_imports)] // Not every test binary uses each.
pub use tollgate_e2e::rules::{api_rule, api_service_rule, dns_rule as kube_dns_rule, egress, mode};
use tollgate_e2e::spoke::{KubeDns, VanillaCluster};
#[allow(unused_imports)] // Not every test binary uses each.
pub use tollgate_e2e::spoke::{Spoke, WAIT, ip};
use tollgate_e2e::{Cluster, ControlPlane};
use tollgate_spoke::agent_runtime::AgentRuntime;

pub const NS: &str = tollgate_e2e::fleet::TEAM_NS;

/// One cluster whose `default/kubernetes` Endpoints the test owns, with kube-dns, the CRD and namespace `team-a`.
pub async fn cluster() -> Result<ControlPlane> {
    VanillaCluster::new(AgentRuntime::crd()).start().await
}

/// Applies an AgentRuntime labelled `tier: llm` (spec and optional status) for a Deployment of the same name.
pub async fn agent(client: &Client, name: &str, egress: Option<Value>, card: Option<Value>) -> Result<()> {
    tollgate_e2e::fleet::apply_agent(client, name, &[("tier", "llm")], egress, card).await
}

#[allow(unused_imports)] // Not every test binary writes cards.
pub use tollgate_e2e::fleet::{mtls_card, set_card};

/// A Deployment whose pod template carries `labels`.
pub async fn deployment(cluster: &Cluster, name: &str, labels: Value) -> Result<()> {
    let yaml = serde_json::to_string(&json!({
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {"name": name, "namespace": NS},
        "spec": {
            "replicas": 0,
            "selector": {"matchLabels": labels},
            "template": {
                "metadata": {"labels": labels},
                "spec": {"containers": [{"name": "agent", "image": "registry.invalid/agent:1"}]},
            },
        },
    }))?;
    cluster.apply_yaml(&yaml).await?;
    Ok(())
}

pub fn policies(client: &Client) -> Api<NetworkPolicy> {
    Api::namespaced(client.clone(), NS)
}

/// Waits until the policy exists and its JSON satisfies `check`; returns it.
pub async fn wait_policy(client: &Client, name: &str, what: &str, check: impl Fn(&Value) -> bool) -> Result<Value> {
    tollgate_e2e::fleet::wait_for_policy(&policies(client), name, what, check).await
}

/// The events.k8s.io/v1 Events of [`NS`] about the AgentRuntime `agent`.
pub async fn events_about(client: &Client, agent: &str) -> Result<Vec<Event>> {
    let api: Api<Event> = Api::namespaced(client.clone(), NS);
    let events = api.list(&Default::default()).await?;
    Ok(events
        .items
        .into_iter()
        .filter(|e| e.regarding.as_ref().and_then(|r| r.name.as_deref()) == Some(agent))
        .collect())
}

/// Reasons of the events.k8s.io/v1 Events about an AgentRuntime.
pub async fn event_reasons(client: &Client, agent: &str) -> Result<Vec<String>> {
    Ok(events_about(client, agent)
        .await?
        .into_iter()
        .filter_map(|e| e.reason)
        .collect())
}

/// [`cluster`] in RBAC mode (`--authorization-mode=RBAC`; the harness's admin stays allowed everything), with
/// kube-dns as [`tollgate_e2e::fixtures::KUBE_DNS_YAML`], for tests that run the spoke with a ServiceAccount's
/// identity.
pub async fn rbac_cluster() -> Result<ControlPlane> {
    VanillaCluster::new(AgentRuntime::crd())
        .rbac(true)
        .kube_dns(KubeDns::Yaml)
        .start()
        .await
}

/// The egress np-guard's `nca` computes for each agent of [`NS`] from the policies the spoke wrote (plus `others`),
/// by agent name, the DNS endpoint being the cluster's kube-dns pod ([`tollgate_e2e::nca::judge_agents`]).
pub async fn judged_egress(
    client: &Client,
    others: &[NetworkPolicy],
) -> Result<std::collections::BTreeMap<String, std::collections::BTreeSet<String>>> {
    tollgate_e2e::nca::judge_agents(client, NS, "10.244.0.5", others).await
}
