//! The chart's identity is sufficient: its ServiceAccount reconciles every mode, and watchNamespaces confine it.

use anyhow::Result;
use k8s_openapi::api::networking::v1::NetworkPolicy;
use kube::api::Api;
use serde_json::json;
use tollgate_e2e::{wait_for_deletion, wait_until};

use crate::helpers::*;
use crate::support::*;

#[tokio::test]
async fn the_charts_service_account_reconciles_every_mode() -> Result<()> {
    let cp = rbac_cluster().await?;
    let cluster = &cp.clusters()[0];
    let client = cluster.client();
    let chart = install(cluster, &[DEBUG_LOGS]).await?;
    let token = service_account_token(cluster).await?;
    let as_spoke = cluster.client_for_token(&token).await?;
    let secrets: Api<k8s_openapi::api::core::v1::Secret> = Api::namespaced(as_spoke, RELEASE_NS);
    let refused = secrets.list(&Default::default()).await.unwrap_err();
    assert!(refused.to_string().contains("forbidden"), "{refused}");

    deployment(cluster, "scoped", json!({"app": "scoped-agent"})).await?;
    agent(&client, "unverified", None, None).await?;
    agent(&client, "allow-all", None, Some(mtls_card())).await?;
    let rules = json!({"rules": [{"to": [{"ipBlock": {"cidr": "203.0.113.0/24"}}], "ports": [{"protocol": "TCP", "port": 443}]}]});
    agent(&client, "scoped", Some(rules), Some(mtls_card())).await?;
    agent(
        &client,
        "invalid",
        Some(json!({"rules": [{"ports": [{"port": 443}]}]})),
        Some(mtls_card()),
    )
    .await?;
    orphan(&client, "gone-signature-policy").await?;

    let dir = tempfile::tempdir()?;
    let spoke = spawn_as_chart(cluster, &chart, &token, dir.path())?;
    spoke.wait_ready().await?;

    let restricted = wait_policy(&client, "unverified-signature-policy", "restricted", |p| {
        mode(p) == "restricted"
    })
    .await?;
    assert_eq!(
        egress(&restricted),
        json!([api_rule(&["192.0.2.10"]), api_service_rule()])
    );
    assert_eq!(restricted["metadata"]["ownerReferences"][0]["kind"], "AgentRuntime");
    let allow_all = wait_policy(&client, "allow-all-signature-policy", "allow-all", |p| {
        mode(p) == "allow-all"
    })
    .await?;
    assert_eq!(egress(&allow_all), json!([{}]));
    let scoped = wait_policy(&client, "scoped-signature-policy", "scoped", |p| mode(p) == "scoped").await?;
    assert_eq!(
        egress(&scoped),
        json!([
            api_rule(&["192.0.2.10"]),
            api_service_rule(),
            kube_dns_rule(),
            {"to": [{"ipBlock": {"cidr": "203.0.113.0/24"}}], "ports": [{"protocol": "TCP", "port": 443}]},
        ]),
        "API server and kube-dns discovered through the name-restricted Roles"
    );
    assert_eq!(
        scoped["spec"]["podSelector"],
        json!({"matchLabels": {"app": "scoped-agent"}}),
        "workload pod labels"
    );
    wait_policy(&client, "invalid-signature-policy", "baseline-only", |p| {
        mode(p) == "baseline-only"
    })
    .await?;
    wait_for_deletion(&policies(&client), "gone-signature-policy", WAIT).await?;
    wait_until("a Warning event about the invalid rules", WAIT, || async {
        event_count(&client, "invalid", "InvalidEgressRules")
            .await
            .is_ok_and(|n| n >= 1)
    })
    .await?;

    // The operator verifies an agent: its policy follows.
    set_card(&client, "unverified", Some(mtls_card())).await?;
    wait_policy(&client, "unverified-signature-policy", "allow-all", |p| {
        mode(p) == "allow-all"
    })
    .await?;
    wait_until("an EgressModeChanged event", WAIT, || async {
        event_count(&client, "unverified", "EgressModeChanged")
            .await
            .is_ok_and(|n| n >= 1)
    })
    .await?;
    // A repeated Event is patched (series), not created again.
    agent(&client, "locked", None, None).await?;
    wait_policy(&client, "locked-signature-policy", "restricted", |p| {
        mode(p) == "restricted"
    })
    .await?;
    lose_the_api_server_twice(cluster, "locked-signature-policy").await?;
    wait_until(
        "the repeated APIServerUndiscovered event (patched series)",
        WAIT,
        || async {
            event_count(&client, "locked", "APIServerUndiscovered")
                .await
                .is_ok_and(|n| n >= 2)
        },
    )
    .await
    .map_err(|e| e.context(format!("spoke log:\n{}", spoke.log())))?;

    let (_, metrics) = spoke.get("/metrics").await?;
    assert!(
        metrics.contains("tollgate_spoke_reconcile_failures_total{reason=\"forbidden\"} 0\n"),
        "no write was forbidden: {metrics}"
    );
    let log = spoke.log();
    assert!(!log.contains("forbidden"), "a permission is missing:\n{log}");
    Ok(())
}

#[tokio::test]
async fn watch_namespaces_confine_the_agent_permissions_to_them() -> Result<()> {
    let cp = rbac_cluster().await?;
    let cluster = &cp.clusters()[0];
    let client = cluster.client();
    cluster.create_namespace("team-b").await?;
    let chart = install(cluster, &[DEBUG_LOGS, "watchNamespaces: [team-a]"]).await?;
    assert!(chart.keys().contains(&key("RoleBinding", NS, "tollgate-spoke-agents")));
    let token = service_account_token(cluster).await?;
    for (namespace, expected) in [(Some(NS), true), (Some("team-b"), false), (None, false)] {
        for (group, resource, verb) in [
            ("networking.k8s.io", "networkpolicies", "patch"),
            ("agent.kagenti.dev", "agentruntimes", "list"),
        ] {
            assert_eq!(
                allowed(&client, verb, group, resource, namespace, None).await?,
                expected,
                "{verb} {resource} in {namespace:?}"
            );
        }
    }
    agent(&client, "watched", None, Some(mtls_card())).await?;
    cluster
        .apply_yaml(
            r#"
apiVersion: agent.kagenti.dev/v1alpha1
kind: AgentRuntime
metadata: {name: unwatched, namespace: team-b}
spec:
  type: agent
  targetRef: {apiVersion: apps/v1, kind: Deployment, name: unwatched}
"#,
        )
        .await?;
    let dir = tempfile::tempdir()?;
    let spoke = spawn_as_chart(cluster, &chart, &token, dir.path())?;
    spoke.wait_ready().await?;
    wait_policy(&client, "watched-signature-policy", "allow-all", |p| {
        mode(p) == "allow-all"
    })
    .await?;
    let team_b: Api<NetworkPolicy> = Api::namespaced(client.clone(), "team-b");
    assert!(team_b.list(&Default::default()).await?.items.is_empty());
    let log = spoke.log();
    assert!(!log.contains("forbidden"), "a permission is missing:\n{log}");
    Ok(())
}

/// Installed with a join token Secret and nothing else by hand: the chart's ServiceAccount joins, keeps its identity
/// in its one Secret, and may read no other Secret (the token comes from the mounted file).
#[tokio::test]
async fn a_spoke_installed_with_a_join_token_joins_with_the_charts_identity() -> Result<()> {
    let cp = rbac_cluster().await?;
    let cluster = &cp.clusters()[0];
    let dir = tempfile::tempdir()?;
    let certs = dir.path().join("certs");
    tollgate_e2e::hub::issue_certificates(&certs, &[])?;
    let hub = tollgate_e2e::hub::HubServer::start_signing(dir.path(), &certs, &[]).await?;
    let printed = hub.cli_ok(&["clusters", "add", cluster.name(), "--labels", "env=prod"])?;
    let token = printed.lines().last().unwrap_or_default().to_string();
    let values = format!(
        "standalone: false\nhub: {{address: \"{}\", joinTokenSecret: join}}\ncluster: {{id: {}}}",
        hub.url(),
        cluster.name()
    );
    let chart = install(cluster, &[DEBUG_LOGS, &values]).await?;
    assert!(!chart.flags().contains_key("tls-cert"), "{:?}", chart.flags());
    // The token Secret as an admin creates it; the pod would mount it.
    let secrets: Api<k8s_openapi::api::core::v1::Secret> = Api::namespaced(cluster.client(), RELEASE_NS);
    secrets
        .create(
            &Default::default(),
            &serde_json::from_value(json!({"metadata": {"name": "join"}, "stringData": {"token": token}}))?,
        )
        .await?;
    std::fs::create_dir_all(dir.path().join("join"))?;
    std::fs::write(dir.path().join("join/token"), &token)?;

    let service_account = service_account_token(cluster).await?;
    let as_spoke = cluster.client_for_token(&service_account).await?;
    let own: Api<k8s_openapi::api::core::v1::Secret> = Api::namespaced(as_spoke, RELEASE_NS);
    let refused = own.get("join").await.unwrap_err();
    assert!(refused.to_string().contains("forbidden"), "{refused}");

    let spoke = spawn_as_chart(cluster, &chart, &service_account, dir.path())?;
    spoke.wait_ready().await?;
    hub.wait_connected(cluster.name())
        .await
        .map_err(|e| e.context(spoke.log()))?;
    let kept = own.get("tollgate-spoke-identity").await?;
    let data = kept.data.unwrap_or_default();
    assert!(
        ["ca.crt", "tls.crt", "tls.key"].iter().all(|k| data.contains_key(*k)),
        "{:?}",
        data.keys()
    );
    Ok(())
}
