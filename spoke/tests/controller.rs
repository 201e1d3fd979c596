//! The real `tollgate-spoke` binary against a real kube-apiserver (v1.20 from the harness): every mode, endpoint
//! and DNS changes, drift repair, deletion, the start-up sweep and a restart without spurious writes.

mod support;

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::Endpoints;
use k8s_openapi::api::networking::v1::NetworkPolicy;
use kube::ResourceExt;
use kube::api::{Api, DeleteParams, Patch, PatchParams, PostParams};
use serde_json::json;
use support::*;
use tollgate_e2e::{wait_for_deletion, wait_until};
use tollgate_spoke::agent_runtime::AgentRuntime;

#[tokio::test]
async fn every_mode_end_to_end_and_a_verification_flip() -> anyhow::Result<()> {
    let cp = cluster().await?;
    let cluster = &cp.clusters()[0];
    let client = cluster.client();
    deployment(cluster, "scoped", json!({"app": "scoped-agent"})).await?;
    agent(&client, "unverified", None, None).await?;
    agent(&client, "allow-all", None, Some(mtls_card())).await?;
    let rules = json!({"rules": [{"to": [{"ipBlock": {"cidr": "203.0.113.0/24"}}], "ports": [{"protocol": "TCP", "port": 443}]}]});
    agent(&client, "scoped", Some(rules), Some(mtls_card())).await?;
    agent(&client, "empty", Some(json!({"rules": []})), Some(mtls_card())).await?;
    agent(
        &client,
        "invalid",
        Some(json!({"rules": [{"ports": [{"port": 443}]}]})),
        Some(mtls_card()),
    )
    .await?;
    let dir = tempfile::tempdir()?;
    let spoke = Spoke::start(cluster, dir.path(), &[]).await?;

    let restricted = wait_policy(&client, "unverified-signature-policy", "restricted", |p| {
        mode(p) == "restricted"
    })
    .await?;
    assert_eq!(
        egress(&restricted),
        json!([api_rule(&["192.0.2.10"]), api_service_rule()])
    );
    assert_eq!(
        restricted["spec"]["podSelector"],
        json!({"matchLabels": {"app": "unverified", "kagenti.io/type": "agent"}})
    );
    assert_eq!(restricted["metadata"]["ownerReferences"][0]["kind"], "AgentRuntime");

    let allow_all = wait_policy(&client, "allow-all-signature-policy", "allow-all", |p| {
        mode(p) == "allow-all"
    })
    .await?;
    assert_eq!(egress(&allow_all), json!([{}]));
    assert_eq!(
        allow_all["spec"]["ingress"][0]["from"].as_array().unwrap().len(),
        2,
        "one namespace + verified pods"
    );

    let scoped = wait_policy(&client, "scoped-signature-policy", "scoped", |p| mode(p) == "scoped").await?;
    assert_eq!(
        egress(&scoped),
        json!([
            api_rule(&["192.0.2.10"]),
            api_service_rule(),
            kube_dns_rule(),
            {"to": [{"ipBlock": {"cidr": "203.0.113.0/24"}}], "ports": [{"protocol": "TCP", "port": 443}]},
        ])
    );
    assert_eq!(
        scoped["spec"]["podSelector"],
        json!({"matchLabels": {"app": "scoped-agent"}}),
        "workload pod labels"
    );
    assert_eq!(scoped["metadata"]["annotations"]["tollgate.dev/rule-sources"], "local");

    let empty = wait_policy(&client, "empty-signature-policy", "scoped", |p| mode(p) == "scoped").await?;
    assert_eq!(
        egress(&empty),
        json!([api_rule(&["192.0.2.10"]), api_service_rule(), kube_dns_rule()])
    );

    let invalid = wait_policy(&client, "invalid-signature-policy", "baseline-only", |p| {
        mode(p) == "baseline-only"
    })
    .await?;
    assert_eq!(
        egress(&invalid),
        json!([api_rule(&["192.0.2.10"]), api_service_rule(), kube_dns_rule()])
    );
    wait_until("a Warning event about the invalid rules", WAIT, || async {
        event_reasons(&client, "invalid")
            .await
            .is_ok_and(|r| r.iter().any(|r| r == "InvalidEgressRules"))
    })
    .await?;

    // The egress an independent analyzer (np-guard's nca) computes from the written policies is the intent: the API
    // server (endpoint and Service) for the restricted agent; that plus DNS (ClusterIP, the endpoint address and the
    // kube-system pods, on 53) for
    // scoped and baseline-only agents, plus the declared destination for the scoped one; everything for allow-all.
    let judged = judged_egress(&client, &[]).await?;
    let api = [
        "192.0.2.10 : {protocols:TCP,dst_ports:6443}",
        "10.0.0.1 : {protocols:TCP,dst_ports:443}",
    ];
    let dns = [
        "10.0.0.10 : {protocols:TCP, UDP,dst_ports:53}",
        "10.244.0.5 : {protocols:TCP, UDP,dst_ports:53}",
        "kube-system/coredns[ReplicaSet] : {protocols:TCP, UDP,dst_ports:53}",
    ];
    let lines = |groups: &[&[&str]]| -> std::collections::BTreeSet<String> {
        groups.iter().flat_map(|g| g.iter().map(|l| l.to_string())).collect()
    };
    assert_eq!(judged["unverified"], lines(&[&api]), "{judged:#?}");
    assert_eq!(judged["empty"], lines(&[&api, &dns]), "{judged:#?}");
    assert_eq!(judged["invalid"], lines(&[&api, &dns]), "{judged:#?}");
    assert_eq!(
        judged["scoped"],
        lines(&[
            &api,
            &dns,
            &["203.0.113.0-203.0.113.255 : {protocols:TCP,dst_ports:443}"]
        ]),
        "{judged:#?}"
    );
    assert!(
        judged["allow-all"].contains("0.0.0.0-255.255.255.255 : All connections"),
        "{judged:#?}"
    );

    // The operator verifies the agent: its policy follows, and back.
    set_card(&client, "unverified", Some(mtls_card())).await?;
    wait_policy(
        &client,
        "unverified-signature-policy",
        "allow-all after verification",
        |p| mode(p) == "allow-all" && egress(p) == json!([{}]),
    )
    .await?;
    set_card(&client, "unverified", Some(json!({"transportSecurity": "http"}))).await?;
    wait_policy(&client, "unverified-signature-policy", "restricted again", |p| {
        mode(p) == "restricted"
    })
    .await?;
    // Each mode change is its own Event naming both modes: the recorder must not fold a later change into the
    // series of an earlier one (which would show the old mode as the latest word).
    let notes = || async {
        let api: Api<k8s_openapi::api::events::v1::Event> = Api::namespaced(client.clone(), NS);
        let events = api.list(&Default::default()).await?;
        anyhow::Ok(
            events
                .items
                .into_iter()
                .filter(|e| e.regarding.as_ref().and_then(|r| r.name.as_deref()) == Some("unverified"))
                .filter(|e| e.reason.as_deref() == Some("EgressModeChanged"))
                .map(|e| e.note.unwrap_or_default())
                .collect::<Vec<_>>(),
        )
    };
    let expected = [
        "created: egress mode restricted",
        "egress mode restricted -> allow-all",
        "egress mode allow-all -> restricted",
    ];
    let found = wait_until("one mode-change Event per change", WAIT, || async {
        notes()
            .await
            .is_ok_and(|n| expected.iter().all(|e| n.iter().any(|note| note.contains(e))))
    })
    .await;
    if let Err(error) = found {
        let seen = notes().await?;
        return Err(error.context(format!("events: {seen:?}\nspoke log:\n{}", spoke.log())));
    }

    let (status, metrics) = spoke.get("/metrics").await?;
    assert_eq!(status, 200);
    assert!(
        metrics.contains("tollgate_spoke_agents{mode=\"scoped\"} 2"),
        "{metrics}"
    );
    assert!(
        metrics.contains("tollgate_spoke_agents{mode=\"baseline-only\"} 1"),
        "{metrics}"
    );
    assert!(metrics.contains("tollgate_spoke_reconciles_total"), "{metrics}");
    Ok(())
}

#[tokio::test]
async fn api_endpoint_and_dns_changes_re_plan_every_agent() -> anyhow::Result<()> {
    let cp = cluster().await?;
    let cluster = &cp.clusters()[0];
    let client = cluster.client();
    agent(&client, "locked", None, None).await?;
    agent(&client, "scoped", Some(json!({"rules": []})), Some(mtls_card())).await?;
    let dir = tempfile::tempdir()?;
    let _spoke = Spoke::start(cluster, dir.path(), &[]).await?;
    wait_policy(&client, "locked-signature-policy", "restricted", |p| {
        mode(p) == "restricted"
    })
    .await?;

    // Added and changed API-server addresses.
    cluster
        .set_api_endpoints(&[ip("192.0.2.20"), ip("192.0.2.21")], 6443)
        .await?;
    let expected = json!([api_rule(&["192.0.2.20", "192.0.2.21"]), api_service_rule()]);
    wait_policy(&client, "locked-signature-policy", "new API addresses", |p| {
        egress(p) == expected
    })
    .await?;
    wait_policy(&client, "scoped-signature-policy", "new API addresses", |p| {
        egress(p)[0] == api_rule(&["192.0.2.20", "192.0.2.21"])
    })
    .await?;

    // Removed: the restricted agent gets no egress at all.
    let endpoints: Api<Endpoints> = Api::namespaced(client.clone(), "default");
    endpoints.delete("kubernetes", &DeleteParams::default()).await?;
    wait_policy(&client, "locked-signature-policy", "deny-all", |p| {
        p["spec"]
            .get("egress")
            .is_none_or(|e| e.as_array().is_some_and(Vec::is_empty))
    })
    .await?;

    // OpenShift DNS: 53 on the Service, 5353 on the pods.
    cluster.set_api_endpoints(&[ip("192.0.2.10")], 6443).await?;
    cluster.create_namespace("openshift-dns").await?;
    cluster
        .create_dns_service("openshift-dns", "dns-default", "10.0.0.53", "10.128.0.7", 5353)
        .await?;
    // kube-dns is preferred while it exists; remove it as an OpenShift cluster would not have it.
    let services: Api<k8s_openapi::api::core::v1::Service> = Api::namespaced(client.clone(), "kube-system");
    services.delete("kube-dns", &DeleteParams::default()).await?;
    let openshift_dns = json!({
        "to": [
            {"ipBlock": {"cidr": "10.0.0.53/32"}},
            {"ipBlock": {"cidr": "10.128.0.7/32"}},
            {"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "openshift-dns"}}},
        ],
        "ports": [
            {"protocol": "TCP", "port": 53}, {"protocol": "TCP", "port": 5353},
            {"protocol": "UDP", "port": 53}, {"protocol": "UDP", "port": 5353},
        ],
    });
    wait_policy(
        &client,
        "scoped-signature-policy",
        "OpenShift DNS on 53 and 5353",
        |p| egress(p).get(2) == Some(&openshift_dns),
    )
    .await?;
    Ok(())
}

#[tokio::test]
async fn drift_repair_deletion_sweep_and_unmanaged_policies() -> anyhow::Result<()> {
    let cp = cluster().await?;
    let cluster = &cp.clusters()[0];
    let client = cluster.client();
    let api = policies(&client);
    // A policy with both Tollgate labels, for an agent that does not exist.
    let orphan = |agent: &str| -> serde_json::Result<NetworkPolicy> {
        serde_json::from_value(json!({
            "metadata": {"name": format!("{agent}-signature-policy"), "namespace": NS,
                         "labels": {"app.kubernetes.io/managed-by": "tollgate-spoke", "tollgate.dev/agent": agent}},
            "spec": {"podSelector": {}, "policyTypes": ["Egress"]},
        }))
    };
    // Before the spoke starts: an orphan it once wrote, and a policy it never managed.
    api.create(&PostParams::default(), &orphan("gone")?).await?;
    let unmanaged: NetworkPolicy = serde_json::from_value(json!({
        "metadata": {"name": "team-default-deny", "namespace": NS},
        "spec": {"podSelector": {}, "policyTypes": ["Egress"]},
    }))?;
    api.create(&PostParams::default(), &unmanaged).await?;
    agent(&client, "kept", None, Some(mtls_card())).await?;
    agent(&client, "removed", None, None).await?;

    let dir = tempfile::tempdir()?;
    // Passes look only at what changed; a full resync every 2 s checks that they missed nothing.
    let spoke = Spoke::start(cluster, dir.path(), &["--full-resync-interval", "2s"]).await?;
    wait_for_deletion(&api, "gone-signature-policy", WAIT).await?;
    wait_policy(&client, "kept-signature-policy", "allow-all", |p| {
        mode(p) == "allow-all"
    })
    .await?;
    wait_policy(&client, "removed-signature-policy", "restricted", |p| {
        mode(p) == "restricted"
    })
    .await?;

    // Drift: another manager rewrites the spec; the spoke restores it.
    let mut edited = api.get("kept-signature-policy").await?;
    edited.spec.as_mut().unwrap().egress = Some(vec![]);
    api.replace("kept-signature-policy", &PostParams::default(), &edited)
        .await?;
    wait_policy(&client, "kept-signature-policy", "restored after an edit", |p| {
        egress(p) == json!([{}])
    })
    .await?;

    // Drift: deleted; the spoke recreates it.
    api.delete("kept-signature-policy", &DeleteParams::default()).await?;
    wait_policy(&client, "kept-signature-policy", "recreated after deletion", |p| {
        mode(p) == "allow-all"
    })
    .await?;

    // An attack on an agent's own policy: widened to everything and relabelled as another agent's, so that its
    // label no longer names it. The spoke finds it by its name and restores it (not left to the full resync: the
    // resync check below requires that it wrote nothing).
    let mut attacked = api.get("removed-signature-policy").await?;
    attacked.spec.as_mut().unwrap().egress = Some(vec![Default::default()]);
    attacked
        .metadata
        .labels
        .get_or_insert_default()
        .insert("tollgate.dev/agent".into(), "kept".into());
    api.replace("removed-signature-policy", &PostParams::default(), &attacked)
        .await?;
    wait_policy(
        &client,
        "removed-signature-policy",
        "restored after a relabelled widening",
        |p| {
            mode(p) == "restricted"
                && egress(p) != json!([{}])
                && p["metadata"]["labels"]["tollgate.dev/agent"] == "removed"
        },
    )
    .await?;

    // The agent goes: its policy goes (label sweep; there is no garbage collector in this cluster).
    let runtimes: Api<AgentRuntime> = Api::namespaced(client.clone(), NS);
    runtimes.delete("removed", &DeleteParams::default()).await?;
    wait_for_deletion(&api, "removed-signature-policy", WAIT).await?;

    // An agent retargeted to another workload: its policy is named after the new one, the old one is swept.
    runtimes
        .patch(
            "kept",
            &PatchParams::default(),
            &Patch::Merge(json!({"spec": {"targetRef": {"name": "kept-v2"}}})),
        )
        .await?;
    wait_policy(
        &client,
        "kept-v2-signature-policy",
        "named after the new workload",
        |p| mode(p) == "allow-all",
    )
    .await?;
    wait_for_deletion(&api, "kept-signature-policy", WAIT).await?;

    // A stray policy with both labels, for an agent that does not exist, appears while the spoke runs: swept.
    api.create(&PostParams::default(), &orphan("stray")?).await?;
    wait_for_deletion(&api, "stray-signature-policy", WAIT).await?;

    let unmanaged = api.get("team-default-deny").await?;
    assert_eq!(
        unmanaged.labels(),
        &BTreeMap::new(),
        "the unmanaged policy is untouched"
    );
    // Every repair above was made by an incremental pass: the full resyncs since found nothing to write.
    let metric = async |name: &str| {
        let (_, metrics) = spoke.get("/metrics").await.unwrap_or_default();
        tollgate_e2e::procfs::metric(&metrics, name).unwrap_or(-1.0)
    };
    let before = metric("tollgate_spoke_full_resyncs_total").await;
    wait_until("two more full resyncs", WAIT, || async {
        metric("tollgate_spoke_full_resyncs_total").await >= before + 2.0
    })
    .await?;
    assert_eq!(metric("tollgate_spoke_full_resync_writes_total").await, 0.0);
    assert!(
        unmanaged
            .managed_fields()
            .iter()
            .all(|m| m.manager.as_deref() != Some("tollgate-spoke"))
    );
    Ok(())
}

#[tokio::test]
async fn restart_converges_without_writes_and_agent_card_fallback() -> anyhow::Result<()> {
    let cp = cluster().await?;
    let cluster = &cp.clusters()[0];
    let client = cluster.client();
    // The deprecated AgentCard kind, and a verified card for a runtime that carries no card itself.
    cluster.install_crd_yaml(tollgate_e2e::fixtures::AGENT_CARD_CRD).await?;
    let cards = cluster
        .apply_yaml(&format!(
            r#"
apiVersion: agent.kagenti.dev/v1alpha1
kind: AgentCard
metadata: {{name: legacy-card, namespace: {NS}}}
spec:
  targetRef: {{apiVersion: apps/v1, kind: Deployment, name: legacy}}
"#
        ))
        .await?;
    // Status goes through the status subresource, as the operator writes it.
    let resource = kube::api::ApiResource::from_gvk(&kube::api::GroupVersionKind::gvk(
        "agent.kagenti.dev",
        "v1alpha1",
        "AgentCard",
    ));
    let card_api: Api<kube::api::DynamicObject> = Api::namespaced_with(client.clone(), NS, &resource);
    assert_eq!(cards.len(), 1);
    card_api
        .patch_status(
            "legacy-card",
            &PatchParams::default(),
            &Patch::Merge(json!({"status": {"conditions": [{"type": "Verified", "status": "True", "reason": "SignatureVerified"}]}})),
        )
        .await?;
    agent(&client, "legacy", None, None).await?;
    for i in 0..5 {
        agent(
            &client,
            &format!("agent-{i}"),
            Some(json!({"rules": []})),
            Some(mtls_card()),
        )
        .await?;
    }
    let dir = tempfile::tempdir()?;
    let spoke = Spoke::start(cluster, dir.path(), &["--restricted-allow-dns"]).await?;
    wait_policy(
        &client,
        "legacy-signature-policy",
        "allow-all from the AgentCard",
        |p| mode(p) == "allow-all",
    )
    .await?;
    for i in 0..5 {
        wait_policy(&client, &format!("agent-{i}-signature-policy"), "scoped", |p| {
            mode(p) == "scoped"
        })
        .await?;
    }
    let before: BTreeMap<String, String> = policies(&client)
        .list(&Default::default())
        .await?
        .items
        .iter()
        .map(|p| (p.name_any(), p.resource_version().unwrap_or_default()))
        .collect();
    assert_eq!(before.len(), 6);
    drop(spoke);

    let spoke = Spoke::start(cluster, dir.path(), &["--restricted-allow-dns"]).await?;
    // Ready means the first full pass is done; give it a further moment to write if it were going to.
    tokio::time::sleep(std::time::Duration::from_millis(500)).await;
    let after: BTreeMap<String, String> = policies(&client)
        .list(&Default::default())
        .await?
        .items
        .iter()
        .map(|p| (p.name_any(), p.resource_version().unwrap_or_default()))
        .collect();
    assert_eq!(
        before,
        after,
        "a restarted spoke must not rewrite converged policies; log:\n{}",
        spoke.log()
    );
    let (_, metrics) = spoke.get("/metrics").await?;
    assert!(metrics.contains("tollgate_spoke_policy_writes_total 0"), "{metrics}");

    Ok(())
}

/// Debian's kubectl of the test API servers' release (`scripts/kubectl-client`; `KUBECTL` overrides).
fn kubectl() -> anyhow::Result<std::path::PathBuf> {
    let output = std::process::Command::new(tollgate_e2e::workspace_root().join("scripts/kubectl-client")).output()?;
    anyhow::ensure!(
        output.status.success(),
        "scripts/kubectl-client failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    let stdout = String::from_utf8(output.stdout)?;
    Ok(stdout.lines().last().unwrap_or_default().into())
}

/// Each agent's effective egress is on its AgentRuntime, where kubectl users look: `kubectl get agentruntimes`
/// shows EGRESS and RULES. The agent operator's own status writes (an update of the status subresource by another
/// client) keep the annotations, and the spoke does not write them again.
#[tokio::test]
async fn kubectl_shows_each_agents_egress_and_status_writes_keep_it() -> anyhow::Result<()> {
    let cp = cluster().await?;
    let cluster = &cp.clusters()[0];
    let client = cluster.client();
    agent(&client, "open", None, Some(mtls_card())).await?;
    let rules = json!({"rules": [{"to": [{"ipBlock": {"cidr": "203.0.113.0/24"}}], "ports": [{"port": 443}]}]});
    agent(&client, "narrow", Some(rules), Some(mtls_card())).await?;
    agent(&client, "locked", None, None).await?;
    let dir = tempfile::tempdir()?;
    let spoke = Spoke::start(cluster, dir.path(), &[]).await?;
    let runtimes: Api<AgentRuntime> = Api::namespaced(client.clone(), NS);
    let mode_of = |rt: &AgentRuntime| rt.annotations().get("tollgate.dev/egress-mode").cloned();
    wait_until("every AgentRuntime annotated", WAIT, || async {
        let Ok(list) = runtimes.list(&Default::default()).await else {
            return false;
        };
        list.items.len() == 3 && list.items.iter().all(|rt| mode_of(rt).is_some())
    })
    .await
    .map_err(|e| e.context(format!("spoke log:\n{}", spoke.log())))?;
    let narrow = runtimes.get("narrow").await?;
    let annotations = narrow.annotations();
    assert_eq!(annotations["tollgate.dev/egress-mode"], "scoped");
    assert_eq!(annotations["tollgate.dev/egress-rules"], "1");
    assert_eq!(annotations["tollgate.dev/egress-reason"], "mTLSVerified");
    assert_eq!(
        annotations["tollgate.dev/egress-revision"], "none",
        "standalone: no hub revision"
    );
    let managers: Vec<String> = narrow
        .managed_fields()
        .iter()
        .filter_map(|m| m.manager.clone())
        .collect();
    assert!(
        managers.iter().any(|m| m == "tollgate-spoke-annotations"),
        "{managers:?}"
    );

    let output = std::process::Command::new(kubectl()?)
        .arg("--kubeconfig")
        .arg(cluster.kubeconfig_path())
        .args(["get", "agentruntimes", "-n", NS])
        .output()?;
    anyhow::ensure!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));
    let table = String::from_utf8(output.stdout)?;
    let rows: BTreeMap<&str, Vec<&str>> = table
        .lines()
        .map(|l| {
            let fields: Vec<&str> = l.split_whitespace().collect();
            (fields[0], fields)
        })
        .collect();
    let header = &rows["NAME"];
    let column = |name: &str| {
        header
            .iter()
            .position(|h| *h == name)
            .unwrap_or_else(|| panic!("{table}"))
    };
    let (egress, rules) = (column("EGRESS"), column("RULES"));
    // The Ready column is empty for these agents, so every later column sits one field to the left.
    let shift = 1;
    for (agent, mode, count) in [
        ("open", "allow-all", "0"),
        ("narrow", "scoped", "1"),
        ("locked", "restricted", "0"),
    ] {
        let row = &rows[agent];
        assert_eq!((row[egress - shift], row[rules - shift]), (mode, count), "{table}");
    }

    // The operator updates the status of an agent (a PUT of the status subresource, another client): the
    // annotations stay, and the spoke has nothing to write.
    let mut current = runtimes.get_status("narrow").await?;
    let mut status = current.status.clone().unwrap_or_default();
    status.card.get_or_insert_with(Default::default).card_hash = Some("abc123".into());
    current.status = Some(status);
    let updated = runtimes
        .replace_status("narrow", &PostParams::default(), &current)
        .await?;
    assert_eq!(mode_of(&updated).as_deref(), Some("scoped"));
    tokio::time::sleep(std::time::Duration::from_secs(2)).await;
    let after = runtimes.get("narrow").await?;
    assert_eq!(
        after.resource_version(),
        updated.resource_version(),
        "the spoke wrote the AgentRuntime again after the operator's status update"
    );
    Ok(())
}

/// The value of `count` once it stays the same for a second.
async fn settled<F, Fut>(count: &F) -> f64
where
    F: Fn() -> Fut,
    Fut: std::future::Future<Output = f64>,
{
    let mut last = count().await;
    loop {
        tokio::time::sleep(std::time::Duration::from_secs(1)).await;
        let now = count().await;
        if now == last {
            return now;
        }
        last = now;
    }
}

/// The agent operator refreshes each card periodically: an update that only moves `lastCardFetchTime` is stored
/// without a reconcile pass (nothing the pass reads changed), while any other change still makes one. With a maximum
/// card age, too, while the card stays fresh; the moment it turns stale wakes the spoke by itself.
#[tokio::test]
async fn card_refreshes_cost_no_pass_and_staleness_wakes_the_spoke_itself() -> anyhow::Result<()> {
    let cp = cluster().await?;
    let cluster = &cp.clusters()[0];
    let client = cluster.client();
    let card = |fetched: &str, transport: &str| {
        let mut card = mtls_card();
        card["lastCardFetchTime"] = json!(fetched);
        card["transportSecurity"] = json!(transport);
        card
    };
    agent(&client, "chat", None, Some(card("2026-12-06T10:00:00Z", "mtls"))).await?;
    let dir = tempfile::tempdir()?;
    let spoke = Spoke::start(cluster, dir.path(), &[]).await?;
    wait_policy(&client, "chat-signature-policy", "allow-all", |p| {
        mode(p) == "allow-all"
    })
    .await?;
    let passes = || async {
        let (_, metrics) = spoke.get("/metrics").await.unwrap_or_default();
        tollgate_e2e::procfs::metric(&metrics, "tollgate_spoke_reconciles_total").unwrap_or(-1.0)
    };
    // Settled: the passes of the start-up (and of the spoke's own annotations on the AgentRuntime) are over.
    let before = settled(&passes).await;
    for minute in 1..=5 {
        set_card(
            &client,
            "chat",
            Some(card(&format!("2026-12-06T10:0{minute}:00Z"), "mtls")),
        )
        .await?;
    }
    tokio::time::sleep(std::time::Duration::from_secs(1)).await;
    assert_eq!(
        passes().await,
        before,
        "five card refreshes made passes:\n{}",
        spoke.log()
    );
    // The refreshed object is what the next pass reads.
    set_card(&client, "chat", Some(card("2026-12-06T10:06:00Z", "http"))).await?;
    wait_policy(
        &client,
        "chat-signature-policy",
        "restricted: the card is no longer attested",
        |p| mode(p) == "restricted",
    )
    .await?;
    // The pass counts itself once it has written the policy.
    wait_until("the pass for the changed card is counted", WAIT, || async {
        passes().await > before
    })
    .await?;
    drop(spoke);

    // With --max-card-age: a refresh while the card is fresh costs no pass either; the card turning stale by time
    // alone (no event marks it) is caught by the staleness timer; a refresh of a stale card makes it fresh again.
    let now = || k8s_openapi::jiff::Timestamp::now().to_string();
    set_card(&client, "chat", Some(card(&now(), "mtls"))).await?;
    let aged = Spoke::start(cluster, dir.path(), &["--max-card-age", "15s"]).await?;
    wait_policy(&client, "chat-signature-policy", "allow-all again", |p| {
        mode(p) == "allow-all"
    })
    .await?;
    let count = || async {
        let (_, metrics) = aged.get("/metrics").await.unwrap_or_default();
        tollgate_e2e::procfs::metric(&metrics, "tollgate_spoke_reconciles_total").unwrap_or(-1.0)
    };
    let before = settled(&count).await;
    set_card(&client, "chat", Some(card(&now(), "mtls"))).await?;
    tokio::time::sleep(std::time::Duration::from_millis(700)).await;
    assert_eq!(
        count().await,
        before,
        "a refresh of a fresh card made a pass:\n{}",
        aged.log()
    );
    wait_policy(
        &client,
        "chat-signature-policy",
        "restricted once the card is older than 15 s",
        |p| mode(p) == "restricted",
    )
    .await?;
    set_card(&client, "chat", Some(card(&now(), "mtls"))).await?;
    wait_policy(&client, "chat-signature-policy", "allow-all: refreshed", |p| {
        mode(p) == "allow-all"
    })
    .await?;
    Ok(())
}
