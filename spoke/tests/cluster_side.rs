//! The cluster side of failing closed, with the real `tollgate-spoke` binary against a real kube-apiserver: one
//! malformed AgentRuntime under the upstream CRD (whose `status` keeps unknown fields) never stalls the others, a
//! CRD that prunes `spec.egress` is reported, and the sweep deletes only what the spoke wrote.

mod support;

use anyhow::Result;
use k8s_openapi::api::networking::v1::NetworkPolicy;
use kube::Client;
use kube::api::{Api, PostParams};
use serde_json::{Value, json};
use support::*;
use tollgate_e2e::fixtures::upstream_agent_runtime_crd;
use tollgate_e2e::spoke::VanillaCluster;
use tollgate_e2e::wait_until;
use tollgate_spoke::agent_runtime::AgentRuntime;

/// The notes of the Warning Events with `reason` about `agent`.
async fn event_notes(client: &Client, agent: &str, reason: &str) -> Result<Vec<String>> {
    Ok(events_about(client, agent)
        .await?
        .into_iter()
        .filter(|e| e.reason.as_deref() == Some(reason))
        .filter_map(|e| e.note)
        .collect())
}

/// Waits for a MalformedAgentRuntime Warning about `agent` whose note names `field`.
async fn wait_malformed_event(client: &Client, agent: &str, field: &str, spoke: &Spoke) -> Result<()> {
    wait_until(
        format!("a MalformedAgentRuntime event naming {field}"),
        WAIT,
        || async {
            event_notes(client, agent, "MalformedAgentRuntime")
                .await
                .is_ok_and(|notes| notes.iter().any(|n| n.contains(field)))
        },
    )
    .await
    .map_err(|e| e.context(format!("spoke log:\n{}", spoke.log())))
}

fn card_with(extra: Value) -> Value {
    let mut card = mtls_card();
    for (k, v) in extra.as_object().expect("an object") {
        card[k] = v.clone();
    }
    card
}

/// Under the upstream CRD, an AgentRuntime whose `status.card.lastCardFetchTime` is an integer and one whose
/// `validSignature` is a string: the spoke still becomes ready, writes every other agent's policy, restricts those
/// two (a Warning names the field), keeps watching (a later agent is reconciled), and lets a fixed one through. One
/// whose `spec.egress` is a string gets the API server and DNS only, like any invalid local rules.
#[tokio::test]
async fn malformed_agent_runtimes_are_restricted_and_never_stall_the_others() -> Result<()> {
    let cp = VanillaCluster::from_yaml(&upstream_agent_runtime_crd(true))?
        .start()
        .await?;
    let cluster = &cp.clusters()[0];
    let client = cluster.client();
    agent(&client, "good", None, Some(mtls_card())).await?;
    agent(
        &client,
        "bad-time",
        None,
        Some(card_with(json!({"lastCardFetchTime": 12}))),
    )
    .await?;
    agent(
        &client,
        "bad-signature",
        None,
        Some(card_with(json!({"validSignature": "yes"}))),
    )
    .await?;
    agent(&client, "bad-egress", Some(json!("everything")), Some(mtls_card())).await?;

    let dir = tempfile::tempdir()?;
    let spoke = Spoke::start(cluster, dir.path(), &[]).await?;
    wait_policy(&client, "good-signature-policy", "allow-all", |p| {
        mode(p) == "allow-all"
    })
    .await?;
    for name in ["bad-time", "bad-signature"] {
        let policy = wait_policy(&client, &format!("{name}-signature-policy"), "restricted", |p| {
            mode(p) == "restricted"
        })
        .await?;
        assert_eq!(
            egress(&policy),
            json!([api_rule(&["192.0.2.10"]), api_service_rule()]),
            "{name}"
        );
    }
    wait_malformed_event(&client, "bad-time", "status.card.lastCardFetchTime", &spoke).await?;
    wait_malformed_event(&client, "bad-signature", "status.card.validSignature", &spoke).await?;
    // `spec.egress` is read as the spoke reads any local rules: invalid rules fail closed for that agent alone
    // (API server and DNS only, as for every invalid local rule), with a Warning naming the field.
    wait_policy(&client, "bad-egress-signature-policy", "baseline-only", |p| {
        mode(p) == "baseline-only"
    })
    .await?;
    wait_until("an InvalidEgressRules event naming spec.egress", WAIT, || async {
        event_notes(&client, "bad-egress", "InvalidEgressRules")
            .await
            .is_ok_and(|notes| notes.iter().any(|n| n.contains("spec.egress")))
    })
    .await?;

    // The watch is alive: a new agent is reconciled, and a fixed one is verified again.
    agent(&client, "later", None, Some(mtls_card())).await?;
    wait_policy(&client, "later-signature-policy", "allow-all", |p| {
        mode(p) == "allow-all"
    })
    .await?;
    set_card(&client, "bad-time", Some(mtls_card())).await?;
    wait_policy(&client, "bad-time-signature-policy", "allow-all once fixed", |p| {
        mode(p) == "allow-all"
    })
    .await?;
    Ok(())
}

/// The value of the gauge `tollgate_spoke_condition{condition="…"}`.
async fn condition_gauge(spoke: &Spoke, condition: &str) -> Option<String> {
    let (_, metrics) = spoke.get("/metrics").await.ok()?;
    let series = format!("tollgate_spoke_condition{{condition=\"{condition}\"}} ");
    metrics
        .lines()
        .find_map(|l| l.strip_prefix(&series).map(str::to_string))
}

/// Where the served AgentRuntime CRD prunes `spec.egress` (it neither lists it nor keeps unknown fields), local
/// rules cannot exist: the spoke says so with `LocalRulesUnavailable` (metric, and a Warning Event on the CRD in
/// `default`, since this cluster has no spoke namespace). Under Tollgate's own CRD it does not.
#[tokio::test]
async fn a_crd_that_prunes_local_rules_is_reported() -> Result<()> {
    let cp = VanillaCluster::from_yaml(&upstream_agent_runtime_crd(false))?
        .start()
        .await?;
    let cluster = &cp.clusters()[0];
    let client = cluster.client();
    // Created the way most clients write (a POST, not a server-side apply, which 1.20 refuses outright for an
    // undeclared field): the API server silently drops spec.egress.
    let runtime: AgentRuntime = serde_json::from_value(json!({
        "apiVersion": "agent.kagenti.dev/v1alpha1",
        "kind": "AgentRuntime",
        "metadata": {"name": "pruned", "namespace": NS, "labels": {"tier": "llm"}},
        "spec": {
            "type": "agent",
            "targetRef": {"apiVersion": "apps/v1", "kind": "Deployment", "name": "pruned"},
            "egress": {"rules": [{"to": [{"ipBlock": {"cidr": "203.0.113.0/24"}}]}]},
        },
    }))?;
    Api::<AgentRuntime>::namespaced(client.clone(), NS)
        .create(&PostParams::default(), &runtime)
        .await?;
    let stored = Api::<AgentRuntime>::namespaced(client.clone(), NS)
        .get("pruned")
        .await?;
    assert_eq!(stored.spec.egress, None, "the API server pruned the rules");

    let dir = tempfile::tempdir()?;
    let spoke = Spoke::start(cluster, dir.path(), &[]).await?;
    wait_until("the LocalRulesUnavailable gauge", WAIT, || async {
        condition_gauge(&spoke, "LocalRulesUnavailable").await.as_deref() == Some("1")
    })
    .await
    .map_err(|e| e.context(format!("spoke log:\n{}", spoke.log())))?;
    let events: Api<k8s_openapi::api::events::v1::Event> = Api::namespaced(client.clone(), "default");
    wait_until("a LocalRulesUnavailable Warning Event", WAIT, || async {
        events.list(&Default::default()).await.is_ok_and(|list| {
            list.items.iter().any(|e| {
                e.reason.as_deref() == Some("LocalRulesUnavailable")
                    && e.note.as_deref().is_some_and(|n| n.contains("BaselineOnly"))
            })
        })
    })
    .await?;
    drop(spoke);
    drop(cp);

    // Control: Tollgate's CRD keeps spec.egress, so nothing is reported.
    let cp = support::cluster().await?;
    let spoke = Spoke::start(&cp.clusters()[0], dir.path(), &[]).await?;
    assert_eq!(
        condition_gauge(&spoke, "LocalRulesUnavailable").await.as_deref(),
        Some("0")
    );
    Ok(())
}

async fn create_policy(client: &Client, name: &str, labels: Value) -> Result<()> {
    let policy: NetworkPolicy = serde_json::from_value(json!({
        "metadata": {"name": name, "namespace": NS, "labels": labels},
        "spec": {"podSelector": {}, "policyTypes": ["Egress"]},
    }))?;
    policies(client).create(&PostParams::default(), &policy).await?;
    Ok(())
}

/// The sweep deletes only a policy carrying both the managed-by label and `tollgate.dev/agent` whose agent is
/// gone; a user's policy that copies only the managed-by label (a template taken from a managed one) survives.
#[tokio::test]
async fn the_sweep_deletes_only_what_the_spoke_wrote() -> Result<()> {
    let cp = cluster().await?;
    let cluster = &cp.clusters()[0];
    let client = cluster.client();
    create_policy(
        &client,
        "copied-label",
        json!({"app.kubernetes.io/managed-by": "tollgate-spoke"}),
    )
    .await?;
    create_policy(
        &client,
        "gone-signature-policy",
        json!({"app.kubernetes.io/managed-by": "tollgate-spoke", "tollgate.dev/agent": "gone"}),
    )
    .await?;
    agent(&client, "kept", None, Some(mtls_card())).await?;
    let dir = tempfile::tempdir()?;
    let _spoke = Spoke::start(cluster, dir.path(), &[]).await?;
    tollgate_e2e::wait_for_deletion(&policies(&client), "gone-signature-policy", WAIT).await?;
    wait_policy(&client, "kept-signature-policy", "allow-all", |p| {
        mode(p) == "allow-all"
    })
    .await?;
    tokio::time::sleep(std::time::Duration::from_secs(1)).await;
    assert!(
        policies(&client).get_opt("copied-label").await?.is_some(),
        "a user's policy with only the managed-by label was deleted"
    );
    Ok(())
}
