//! AdminNetworkPolicy enforcement on a real kube-apiserver serving the AdminNetworkPolicy CRD generated from the
//! project's own types (network-policy-api v0.1.5): each mode's object compared whole, drift repaired, a tenant
//! policy that widens reported as overridden, and switching back to NetworkPolicy enforcement sweeps them.

mod support;

use kube::api::{Api, Patch, PatchParams, PostParams};
use kube::{CustomResourceExt, ResourceExt};
use serde_json::{Value, json};
use support::*;
use tollgate_e2e::rules::rule;
use tollgate_e2e::wait_until;
use tollgate_spoke::agent_runtime::AgentRuntime;
use tollgate_spoke::anp::{AdminNetworkPolicy, name};

fn admin_policies(client: &kube::Client) -> Api<AdminNetworkPolicy> {
    Api::all(client.clone())
}

async fn admin_policy(client: &kube::Client, agent: &str) -> Option<Value> {
    let policy = admin_policies(client).get_opt(&name(NS, agent)).await.ok()??;
    serde_json::to_value(&policy).ok()
}

fn deny() -> Value {
    json!({"name": "deny-other-egress", "action": "Deny", "to": [{"namespaces": {}}, {"networks": ["0.0.0.0/0", "::/0"]}]})
}

fn api_rules() -> Vec<Value> {
    vec![
        json!({"name": "allow-0", "action": "Allow", "to": [{"networks": ["192.0.2.10/32"]}],
               "ports": [{"portNumber": {"protocol": "TCP", "port": 6443}}]}),
        json!({"name": "allow-1", "action": "Allow", "to": [{"networks": ["10.0.0.1/32"]}],
               "ports": [{"portNumber": {"protocol": "TCP", "port": 443}}]}),
    ]
}

fn subject(agent: &str) -> Value {
    json!({"pods": {
        "namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": NS}},
        "podSelector": {"matchLabels": {"app": agent, "kagenti.io/type": "agent"}},
    }})
}

#[tokio::test]
async fn admin_network_policies_enforce_override_and_are_swept() -> anyhow::Result<()> {
    let cp = cluster().await?;
    let cluster = &cp.clusters()[0];
    cluster.install_crd(&AdminNetworkPolicy::crd()).await?;
    let client = cluster.client();
    let rules = json!({"rules": [{"to": [{"ipBlock": {"cidr": "203.0.113.0/24", "except": ["203.0.113.128/25"]}}], "ports": [{"protocol": "TCP", "port": 443}]}]});
    agent(&client, "scoped", Some(rules), Some(mtls_card())).await?;
    agent(&client, "open", None, Some(mtls_card())).await?;
    agent(&client, "untrusted", None, None).await?;
    // Someone's AdminNetworkPolicy that copies the managed-by label, without Tollgate's agent labels: never swept.
    let copied: AdminNetworkPolicy = serde_json::from_value(json!({
        "apiVersion": "policy.networking.k8s.io/v1alpha1",
        "kind": "AdminNetworkPolicy",
        "metadata": {"name": "platform-deny-metadata", "labels": {"app.kubernetes.io/managed-by": "tollgate-spoke"}},
        "spec": {"priority": 5, "subject": {"namespaces": {}},
                 "egress": [{"name": "deny-metadata", "action": "Deny", "to": [{"networks": ["169.254.169.254/32"]}]}]},
    }))?;
    admin_policies(&client).create(&PostParams::default(), &copied).await?;
    let dir = tempfile::tempdir()?;
    let spoke = Spoke::start(
        cluster,
        dir.path(),
        &["--enforcement", "adminnetworkpolicy", "--anp-priority", "30"],
    )
    .await?;

    // Each mode's object, whole: the API server, DNS and the declared destination (its except subtracted) are
    // allowed, everything else denied; the restricted agent gets the API server only; allow-all gets none.
    wait_until("the AdminNetworkPolicies", WAIT, || async {
        admin_policy(&client, "scoped").await.is_some() && admin_policy(&client, "untrusted").await.is_some()
    })
    .await?;
    let scoped = admin_policy(&client, "scoped").await.unwrap();
    let mut egress = api_rules();
    egress.push(json!({"name": "allow-2", "action": "Allow",
        "to": [{"networks": ["10.0.0.10/32", "10.244.0.5/32"]},
               {"namespaces": {"matchLabels": {"kubernetes.io/metadata.name": "kube-system"}}}],
        "ports": [{"portNumber": {"protocol": "TCP", "port": 53}}, {"portNumber": {"protocol": "UDP", "port": 53}}]}));
    egress.push(
        json!({"name": "allow-3", "action": "Allow", "to": [{"networks": ["203.0.113.0/25"]}],
        "ports": [{"portNumber": {"protocol": "TCP", "port": 443}}]}),
    );
    egress.push(deny());
    assert_eq!(
        scoped["spec"],
        json!({"priority": 30, "subject": subject("scoped"), "egress": egress}),
        "{scoped:#}"
    );
    assert_eq!(scoped["metadata"]["labels"]["tollgate.dev/mode"], "scoped");
    assert_eq!(scoped["metadata"]["labels"]["tollgate.dev/agent-namespace"], NS);
    let untrusted = admin_policy(&client, "untrusted").await.unwrap();
    let mut egress = api_rules();
    egress.push(deny());
    assert_eq!(
        untrusted["spec"],
        json!({"priority": 30, "subject": subject("untrusted"), "egress": egress})
    );
    assert!(
        admin_policy(&client, "open").await.is_none(),
        "an allow-all agent has no AdminNetworkPolicy"
    );
    // The NetworkPolicies are still written.
    wait_policy(&client, "scoped-signature-policy", "scoped", |p| mode(p) == "scoped").await?;

    // Drift is repaired.
    let patch = json!({"spec": {"priority": 999}});
    admin_policies(&client)
        .patch(&name(NS, "scoped"), &PatchParams::default(), &Patch::Merge(&patch))
        .await?;
    wait_until("the priority repaired", WAIT, || async {
        admin_policy(&client, "scoped")
            .await
            .is_some_and(|p| p["spec"]["priority"] == 30)
    })
    .await?;

    // A tenant's allow-all-egress is reported as overridden, not as widening.
    let allow_all = tollgate_e2e::fixtures::allow_all_egress(NS)?;
    policies(&client).create(&PostParams::default(), &allow_all).await?;
    wait_until("the overridden report", WAIT, || async {
        event_reasons(&client, "scoped")
            .await
            .is_ok_and(|r| r.iter().any(|r| r == "EgressWidenedOverridden"))
    })
    .await?;
    // The annotation is written after the Event, in the same pass.
    let runtimes: Api<AgentRuntime> = Api::namespaced(client.clone(), NS);
    wait_until("the overridden annotation", WAIT, || async {
        runtimes.get("scoped").await.is_ok_and(|r| {
            r.annotations()
                .get("tollgate.dev/egress-widened-by")
                .map(String::as_str)
                == Some("allow-all-egress (overridden)")
        })
    })
    .await?;
    assert!(
        !event_reasons(&client, "scoped")
            .await?
            .iter()
            .any(|r| r == "EgressWidened")
    );
    let (_, metrics) = spoke.get("/metrics").await?;
    assert_eq!(
        tollgate_e2e::procfs::metric(&metrics, "tollgate_spoke_agents_widened"),
        Some(0.0),
        "{metrics}"
    );

    // Back to NetworkPolicy enforcement: the AdminNetworkPolicies are swept, the NetworkPolicies stay.
    drop(spoke);
    let _spoke = Spoke::start(cluster, dir.path(), &["--enforcement", "networkpolicy"]).await?;
    wait_until("the AdminNetworkPolicies swept", WAIT, || async {
        admin_policies(&client).list(&Default::default()).await.is_ok_and(|l| {
            l.items
                .iter()
                .map(|p| p.name_any())
                .eq(["platform-deny-metadata".to_string()])
        })
    })
    .await?;
    wait_policy(&client, "scoped-signature-policy", "still scoped", |p| {
        mode(p) == "scoped"
    })
    .await?;
    wait_until("the widening reported again", WAIT, || async {
        runtimes.get("scoped").await.is_ok_and(|r| {
            r.annotations()
                .get("tollgate.dev/egress-widened-by")
                .map(String::as_str)
                == Some("allow-all-egress")
        })
    })
    .await?;
    Ok(())
}

#[tokio::test]
async fn auto_follows_the_api_and_adminnetworkpolicy_refuses_to_start_without_it() -> anyhow::Result<()> {
    let cp = cluster().await?;
    let cluster = &cp.clusters()[0];
    let client = cluster.client();
    agent(&client, "scoped", Some(json!({"rules": []})), Some(mtls_card())).await?;
    let dir = tempfile::tempdir()?;
    let mut auto = Spoke::start(
        cluster,
        dir.path(),
        &["--enforcement", "auto", "--enforcement-recheck", "1s"],
    )
    .await?;
    wait_policy(&client, "scoped-signature-policy", "scoped", |p| mode(p) == "scoped").await?;
    // The API appears: `auto` restarts to enforce it.
    cluster.install_crd(&AdminNetworkPolicy::crd()).await?;
    let deadline = std::time::Instant::now() + WAIT;
    while auto.process.exit_status().is_none() {
        assert!(
            std::time::Instant::now() < deadline,
            "auto did not restart:\n{}",
            auto.log()
        );
        tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    }
    assert!(
        auto.log()
            .contains("the AdminNetworkPolicy API is now served: restarting"),
        "{}",
        auto.log()
    );
    drop(auto);
    let restarted = Spoke::start(cluster, dir.path(), &["--enforcement", "auto"]).await?;
    wait_until("the AdminNetworkPolicy after the restart", WAIT, || async {
        admin_policy(&client, "scoped").await.is_some()
    })
    .await?;
    drop(restarted);
    let crds: Api<k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition> =
        Api::all(client.clone());
    crds.delete("adminnetworkpolicies.policy.networking.k8s.io", &Default::default())
        .await?;
    wait_until("the API gone", WAIT, || async {
        kube::discovery::group(&client, "policy.networking.k8s.io")
            .await
            .is_err()
    })
    .await?;

    let output = tokio::process::Command::from(tollgate_e2e::spoke::command()?)
        .args([
            "run",
            "--standalone",
            "--kubeconfig",
            &cluster.kubeconfig_path().display().to_string(),
            "--metrics-addr",
            "127.0.0.1:0",
            "--enforcement",
            "adminnetworkpolicy",
        ])
        .output()
        .await?;
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(!output.status.success());
    assert!(
        stderr.contains("does not serve policy.networking.k8s.io/v1alpha1 AdminNetworkPolicy"),
        "{stderr}"
    );
    Ok(())
}

/// An AdminNetworkPolicy the API server refuses to update (here: a stricter served schema) would keep allowing the
/// agent's old destinations: it is deleted, the NetworkPolicy alone enforces, and a Warning says why.
#[tokio::test]
async fn an_adminnetworkpolicy_that_cannot_be_updated_is_deleted() -> anyhow::Result<()> {
    let cp = cluster().await?;
    let cluster = &cp.clusters()[0];
    cluster.install_crd(&AdminNetworkPolicy::crd()).await?;
    let client = cluster.client();
    agent(
        &client,
        "scoped",
        Some(json!({"rules": [rule("203.0.113.0/24", 443)]})),
        Some(mtls_card()),
    )
    .await?;
    let dir = tempfile::tempdir()?;
    let _spoke = Spoke::start(cluster, dir.path(), &["--enforcement", "adminnetworkpolicy"]).await?;
    wait_until("the AdminNetworkPolicy", WAIT, || async {
        admin_policy(&client, "scoped").await.is_some()
    })
    .await?;

    // The served schema now takes at most the 5 rules the agent has (API, API Service, DNS, its rule, the Deny).
    let mut crd = serde_json::to_value(AdminNetworkPolicy::crd())?;
    crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"]["properties"]["spec"]["properties"]["egress"]["maxItems"] =
        json!(5);
    cluster.apply_yaml(&serde_json::to_string(&crd)?).await?;
    // A second rule makes 6: the update is refused.
    agent(
        &client,
        "scoped",
        Some(json!({"rules": [rule("203.0.113.0/24", 443), rule("198.51.100.0/24", 443)]})),
        Some(mtls_card()),
    )
    .await?;
    wait_policy(&client, "scoped-signature-policy", "the second rule", |p| {
        p.to_string().contains("198.51.100.0/24")
    })
    .await?;
    wait_until("the stale AdminNetworkPolicy deleted", WAIT, || async {
        admin_policy(&client, "scoped").await.is_none()
    })
    .await?;
    wait_until("the fallback Warning", WAIT, || async {
        event_reasons(&client, "scoped")
            .await
            .is_ok_and(|r| r.iter().any(|r| r == "AdminNetworkPolicyFallback"))
    })
    .await?;
    Ok(())
}
