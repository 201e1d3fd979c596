//! Least privilege as enforced: another NetworkPolicy in the namespace that selects an agent's pods and allows more
//! egress is reported (Warning Event, annotation, metric) on the real spoke against a real kube-apiserver; a
//! narrower one is not; deleting the widening policy clears every report.

mod support;

use k8s_openapi::api::networking::v1::NetworkPolicy;
use kube::api::{Api, DeleteParams, PostParams};
use serde_json::json;
use support::*;
use tollgate_e2e::fixtures::{allow_all_egress, network_policy};
use tollgate_e2e::wait_until;
use tollgate_spoke::agent_runtime::AgentRuntime;

const WIDENED_BY: &str = "tollgate.dev/egress-widened-by";

async fn widened_by(client: &kube::Client, agent: &str) -> Option<String> {
    let api: Api<AgentRuntime> = Api::namespaced(client.clone(), NS);
    let runtime = api.get(agent).await.ok()?;
    runtime.metadata.annotations?.get(WIDENED_BY).cloned()
}

async fn widened_metric(spoke: &Spoke) -> Option<f64> {
    let (_, text) = spoke.get("/metrics").await.ok()?;
    tollgate_e2e::procfs::metric(&text, "tollgate_spoke_agents_widened")
}

#[tokio::test]
async fn a_policy_that_widens_an_agent_is_reported_until_it_is_gone() -> anyhow::Result<()> {
    let cp = cluster().await?;
    let cluster = &cp.clusters()[0];
    let client = cluster.client();
    let rules = json!({"rules": [{"to": [{"ipBlock": {"cidr": "203.0.113.0/24"}}], "ports": [{"protocol": "TCP", "port": 443}]}]});
    agent(&client, "scoped", Some(rules), Some(mtls_card())).await?;
    agent(&client, "open", None, Some(mtls_card())).await?;
    agent(&client, "untrusted", None, None).await?;
    let dir = tempfile::tempdir()?;
    let spoke = Spoke::start(cluster, dir.path(), &[]).await?;
    wait_policy(&client, "scoped-signature-policy", "scoped", |p| mode(p) == "scoped").await?;
    assert_eq!(widened_metric(&spoke).await, Some(0.0));

    // A policy narrower than the scoped agent's own, selecting only its pods: nothing to report.
    let policies: Api<NetworkPolicy> = policies(&client);
    let narrower = network_policy(
        NS,
        "scoped-https-subset",
        json!({"matchLabels": {"app": "scoped"}}),
        json!([{"to": [{"ipBlock": {"cidr": "203.0.113.0/25"}}], "ports": [{"protocol": "TCP", "port": 443}]}]),
    )?;
    policies.create(&PostParams::default(), &narrower).await?;
    // A team's allow-all-egress for every pod of the namespace widens the scoped and the restricted agent.
    // It carries a copy of an agent's label (not the spoke's manager label): that must not hide it.
    let mut allow_all = allow_all_egress(NS)?;
    allow_all.metadata.labels = Some([("tollgate.dev/agent".to_string(), "scoped".to_string())].into());
    policies.create(&PostParams::default(), &allow_all).await?;
    wait_until("both agents reported as widened", WAIT, || async {
        widened_by(&client, "scoped").await.as_deref() == Some("allow-all-egress")
            && widened_by(&client, "untrusted").await.as_deref() == Some("allow-all-egress")
    })
    .await?;
    assert_eq!(
        widened_by(&client, "open").await,
        None,
        "an allow-all agent has nothing to widen"
    );
    assert_eq!(widened_metric(&spoke).await, Some(2.0));
    wait_until("the EgressWidened Events", WAIT, || async {
        let scoped = event_reasons(&client, "scoped").await.unwrap_or_default();
        let untrusted = event_reasons(&client, "untrusted").await.unwrap_or_default();
        scoped.iter().any(|r| r == "EgressWidened") && untrusted.iter().any(|r| r == "EgressWidened")
    })
    .await?;
    assert!(
        !event_reasons(&client, "open")
            .await?
            .iter()
            .any(|r| r == "EgressWidened"),
        "allow-all agents are never reported"
    );
    assert_eq!(
        event_reasons(&client, "scoped")
            .await?
            .iter()
            .filter(|r| *r == "EgressWidened")
            .count(),
        1,
        "one Event per change, not per pass"
    );

    // An independent analyzer (np-guard's nca) agrees: the narrower policy allows no agent anything more, the
    // allow-all-egress opens the two reported agents to everything, and changes nothing for the allow-all one.
    let narrower = policies.get("scoped-https-subset").await?;
    let allow_all = policies.get("allow-all-egress").await?;
    let own_only = judged_egress(&client, &[]).await?;
    assert_eq!(own_only, judged_egress(&client, std::slice::from_ref(&narrower)).await?);
    let with_all = judged_egress(&client, &[narrower, allow_all]).await?;
    for agent in ["scoped", "untrusted"] {
        assert_ne!(own_only[agent], with_all[agent], "{agent}");
        assert!(
            with_all[agent].contains("0.0.0.0-255.255.255.255 : All connections"),
            "{agent}: {:?}",
            with_all[agent]
        );
    }
    assert_eq!(own_only["open"], with_all["open"]);

    // Deleting the widening policy clears the annotation and the metric.
    policies.delete("allow-all-egress", &DeleteParams::default()).await?;
    wait_until("the reports cleared", WAIT, || async {
        widened_by(&client, "scoped").await.is_none() && widened_by(&client, "untrusted").await.is_none()
    })
    .await?;
    assert_eq!(widened_metric(&spoke).await, Some(0.0));
    Ok(())
}
