//! The real spoke against the real hub binary (mTLS) and a real kube-apiserver: intent pushed from the hub
//! scopes agents; a hub outage keeps every policy; a spoke restarted while the hub is down restores the
//! persisted intent; a reconnect after the hub comes back rewrites nothing.

mod support;

use std::collections::BTreeMap;
use std::time::Duration;

use kube::ResourceExt;
use serde_json::json;
use support::*;
use tollgate_e2e::hub::{HubServer, issue_certificates};
use tollgate_e2e::wait_until;

async fn resource_versions(client: &kube::Client) -> anyhow::Result<BTreeMap<String, String>> {
    Ok(policies(client)
        .list(&Default::default())
        .await?
        .items
        .iter()
        .map(|p| (p.name_any(), p.resource_version().unwrap_or_default()))
        .collect())
}

#[tokio::test]
async fn hub_intent_outage_restart_and_resume() -> anyhow::Result<()> {
    let cp = cluster().await?;
    let cluster = &cp.clusters()[0];
    let client = cluster.client();
    cluster.create_namespace("tollgate-system").await?;
    let dir = tempfile::tempdir()?;
    let certs = dir.path().join("certs");
    issue_certificates(&certs, &[cluster.name()])?;
    let mut hub = HubServer::start(dir.path(), &certs).await?;
    hub.register(cluster.name(), "env=prod")?;

    agent(&client, "llm", None, Some(mtls_card())).await?;
    agent(&client, "locked", None, None).await?;
    let spoke_cert = certs.join(format!("spoke-{}.pem", cluster.name()));
    let spoke_key = certs.join(format!("spoke-{}-key.pem", cluster.name()));
    let hub_url = hub.url();
    let spoke_args = [
        "--hub",
        hub_url.as_str(),
        "--hub-ca",
        &certs.join("ca.pem").display().to_string(),
        "--tls-cert",
        &spoke_cert.display().to_string(),
        "--tls-key",
        &spoke_key.display().to_string(),
        "--cluster-labels",
        "env=prod",
    ]
    .map(String::from);
    let spoke_args: Vec<&str> = spoke_args.iter().map(String::as_str).collect();
    // The spoke waits for the hub's first answer only in the background: /readyz comes first.
    let spoke = Spoke::start_with(cluster, dir.path(), &spoke_args).await?;
    wait_policy(&client, "llm-signature-policy", "allow-all before any intent", |p| {
        mode(p) == "allow-all"
    })
    .await?;

    let intent = dir.path().join("intent.yaml");
    std::fs::write(
        &intent,
        "apiVersion: tollgate.dev/v1alpha1
kind: EgressPolicy
metadata: {name: llm-apis}
spec:
  clusterSelector: {matchLabels: {env: prod}}
  agentSelector: {matchLabels: {tier: llm}}
  egress: [{to: [{ipBlock: {cidr: 104.18.0.0/16}}], ports: [{port: 443}]}]
",
    )?;
    assert_eq!(
        hub.cli_ok(&["apply", "-f", intent.to_str().unwrap()])?,
        "EgressPolicy/llm-apis created\nrevision 1\n"
    );
    let scoped = wait_policy(&client, "llm-signature-policy", "scoped by the hub", |p| {
        mode(p) == "scoped"
    })
    .await?;
    assert_eq!(
        egress(&scoped)[3],
        json!({"to": [{"ipBlock": {"cidr": "104.18.0.0/16"}}], "ports": [{"protocol": "TCP", "port": 443}]})
    );
    assert_eq!(scoped["metadata"]["annotations"]["tollgate.dev/revision"], "1");
    assert_eq!(
        scoped["metadata"]["annotations"]["tollgate.dev/rule-sources"],
        "policy/llm-apis"
    );

    // The hub sees the cluster at revision 1 with its agents.
    wait_until("status shows the cluster at revision 1", WAIT, || async {
        let status = hub.cli_ok(&["status", "-o", "json"]).unwrap_or_default();
        let rows: serde_json::Value = serde_json::from_str(&status).unwrap_or_default();
        rows[0]["appliedRevision"] == 1
            && rows[0]["connected"] == true
            && rows[0]["scoped"] == 1
            && rows[0]["restricted"] == 1
    })
    .await?;
    let agents = hub.cli_ok(&["status", "--cluster", cluster.name()])?;
    assert!(
        agents
            .lines()
            .any(|l| l.contains("llm") && l.contains("scoped") && l.contains("policy/llm-apis")),
        "{agents}"
    );

    let (_, metrics) = spoke.get("/metrics").await?;
    let age = metrics
        .lines()
        .find_map(|l| l.strip_prefix("tollgate_spoke_hub_update_age_seconds "))
        .and_then(|v| v.trim().parse::<i64>().ok())
        .expect("the hub update age is exported");
    assert!((0..60).contains(&age), "{metrics}");

    // Hub outage: every policy stays as it is.
    let before = resource_versions(&client).await?;
    hub.kill();
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(
        resource_versions(&client).await?,
        before,
        "a hub outage changed policies"
    );

    // Spoke restart while the hub is down: the persisted intent keeps the agent scoped, with no rewrite.
    drop(spoke);
    let spoke = Spoke::start_with(cluster, dir.path(), &spoke_args).await?;
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(
        resource_versions(&client).await?,
        before,
        "restart without hub rewrote policies:\n{}",
        spoke.log()
    );

    // The hub comes back: the spoke resumes from revision 1 and writes nothing.
    hub.restart().await?;
    wait_until("the spoke reconnects", WAIT, || async {
        let status = hub.cli_ok(&["status", "-o", "json"]).unwrap_or_default();
        let rows: serde_json::Value = serde_json::from_str(&status).unwrap_or_default();
        rows[0]["connected"] == true && rows[0]["appliedRevision"] == 1
    })
    .await?;
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(
        resource_versions(&client).await?,
        before,
        "resuming rewrote policies:\n{}",
        spoke.log()
    );

    // The hub restarts under a running spoke: its session ticket, sealed with the secret the hub keeps in its data
    // folder, resumes the TLS session (no certificate signed or verified again on either side).
    hub.kill();
    hub.restart().await?;
    wait_until("the spoke reconnects with a resumed session", WAIT, || async {
        let metrics = hub.metrics().await.unwrap_or_default();
        tollgate_e2e::procfs::metric(&metrics, "tollgate_hub_tls_handshakes_total{kind=\"resumed\"}")
            .is_some_and(|resumed| resumed >= 1.0)
    })
    .await?;
    wait_until("the spoke is connected again", WAIT, || async {
        let status = hub.cli_ok(&["status", "-o", "json"]).unwrap_or_default();
        let rows: serde_json::Value = serde_json::from_str(&status).unwrap_or_default();
        rows[0]["connected"] == true && rows[0]["appliedRevision"] == 1
    })
    .await?;
    Ok(())
}
