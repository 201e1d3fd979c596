//! The chart's identity is minimal: removing any single grant is refused visibly.

use anyhow::Result;
use k8s_openapi::api::core::v1::ConfigMap;
use kube::CustomResourceExt;
use kube::api::{Api, DeleteParams};
use tollgate_e2e::wait_until;

use crate::helpers::*;
use crate::support::*;

#[tokio::test]
async fn every_rbac_grant_is_needed() -> Result<()> {
    let cp = rbac_cluster().await?;
    let cluster = &cp.clusters()[0];
    let client = cluster.client();
    // The deprecated AgentCard kind is installed, so the spoke watches it too.
    cluster.install_crd_yaml(tollgate_e2e::fixtures::AGENT_CARD_CRD).await?;
    // AdminNetworkPolicy enforcement (a superset of NetworkPolicy enforcement's grants) on a server that serves the
    // API, so that its grants are proven too.
    cluster
        .install_crd(&tollgate_spoke::anp::AdminNetworkPolicy::crd())
        .await?;
    // Connected to a real hub holding one revision of intent, so the spoke also reads and writes its intent
    // ConfigMap (the EgressPolicy selects no agent here).
    let dir = tempfile::tempdir()?;
    let hub = start_hub(dir.path(), cluster.name()).await?;
    let intent = dir.path().join("intent.yaml");
    std::fs::write(
        &intent,
        "apiVersion: tollgate.dev/v1alpha1\nkind: EgressPolicy\nmetadata: {name: nobody}\nspec:\n  \
         agentSelector: {matchLabels: {tier: nobody}}\n  egress: [{to: [{ipBlock: {cidr: 198.51.100.0/24}}]}]\n",
    )?;
    hub.cli_ok(&["apply", "-f", &intent.display().to_string()])?;
    let hub_values = format!(
        "standalone: false\nenforcement: adminnetworkpolicy\nhub: {{address: \"{}\", tls: {{secretName: tollgate-spoke-hub-tls}}}}\ncluster: {{id: {}}}",
        hub.url(),
        cluster.name()
    );
    let chart = install(cluster, &[DEBUG_LOGS, &hub_values]).await?;
    assert!(chart.flags().contains_key("tls-cert"), "{:?}", chart.flags());
    let token = service_account_token(cluster).await?;
    let config_maps: Api<ConfigMap> = Api::namespaced(client.clone(), RELEASE_NS);

    let grants = Grant::all(&chart);
    let names: Vec<String> = grants.iter().map(ToString::to_string).collect();
    assert_eq!(
        names,
        [
            "list agentruntimes.agent.kagenti.dev (ClusterRole tollgate-spoke-agents)",
            "watch agentruntimes.agent.kagenti.dev (ClusterRole tollgate-spoke-agents)",
            "list agentcards.agent.kagenti.dev (ClusterRole tollgate-spoke-agents)",
            "watch agentcards.agent.kagenti.dev (ClusterRole tollgate-spoke-agents)",
            "patch agentruntimes.agent.kagenti.dev (ClusterRole tollgate-spoke-agents)",
            "list deployments.apps (ClusterRole tollgate-spoke-agents)",
            "watch deployments.apps (ClusterRole tollgate-spoke-agents)",
            "list statefulsets.apps (ClusterRole tollgate-spoke-agents)",
            "watch statefulsets.apps (ClusterRole tollgate-spoke-agents)",
            "list networkpolicies.networking.k8s.io (ClusterRole tollgate-spoke-agents)",
            "watch networkpolicies.networking.k8s.io (ClusterRole tollgate-spoke-agents)",
            "create networkpolicies.networking.k8s.io (ClusterRole tollgate-spoke-agents)",
            "patch networkpolicies.networking.k8s.io (ClusterRole tollgate-spoke-agents)",
            "delete networkpolicies.networking.k8s.io (ClusterRole tollgate-spoke-agents)",
            "create events.events.k8s.io (ClusterRole tollgate-spoke-agents)",
            "patch events.events.k8s.io (ClusterRole tollgate-spoke-agents)",
            "list namespaces.core (ClusterRole tollgate-spoke-namespaces)",
            "watch namespaces.core (ClusterRole tollgate-spoke-namespaces)",
            "get customresourcedefinitions.apiextensions.k8s.io/agentruntimes.agent.kagenti.dev (ClusterRole tollgate-spoke-crd)",
            "list adminnetworkpolicies.policy.networking.k8s.io (ClusterRole tollgate-spoke-anp)",
            "watch adminnetworkpolicies.policy.networking.k8s.io (ClusterRole tollgate-spoke-anp)",
            "create adminnetworkpolicies.policy.networking.k8s.io (ClusterRole tollgate-spoke-anp)",
            "patch adminnetworkpolicies.policy.networking.k8s.io (ClusterRole tollgate-spoke-anp)",
            "delete adminnetworkpolicies.policy.networking.k8s.io (ClusterRole tollgate-spoke-anp)",
            "get customresourcedefinitions.apiextensions.k8s.io/adminnetworkpolicies.policy.networking.k8s.io (ClusterRole tollgate-spoke-anp)",
            "get configmaps.core/tollgate-spoke-intent (Role tollgate-system/tollgate-spoke-intent)",
            "create configmaps.core/tollgate-spoke-intent (Role tollgate-system/tollgate-spoke-intent)",
            "patch configmaps.core/tollgate-spoke-intent (Role tollgate-system/tollgate-spoke-intent)",
            "list endpoints.core/kubernetes (Role default/tollgate-spoke-apiserver)",
            "watch endpoints.core/kubernetes (Role default/tollgate-spoke-apiserver)",
            "list services.core/kubernetes (Role default/tollgate-spoke-apiserver)",
            "watch services.core/kubernetes (Role default/tollgate-spoke-apiserver)",
            "list endpointslices.discovery.k8s.io (Role default/tollgate-spoke-apiserver)",
            "watch endpointslices.discovery.k8s.io (Role default/tollgate-spoke-apiserver)",
            "list endpoints.core/kube-dns (Role kube-system/tollgate-spoke-dns)",
            "watch endpoints.core/kube-dns (Role kube-system/tollgate-spoke-dns)",
            "list services.core/kube-dns (Role kube-system/tollgate-spoke-dns)",
            "watch services.core/kube-dns (Role kube-system/tollgate-spoke-dns)",
            "list endpointslices.discovery.k8s.io (Role kube-system/tollgate-spoke-dns)",
            "watch endpointslices.discovery.k8s.io (Role kube-system/tollgate-spoke-dns)",
        ]
    );

    // Control: with every grant nothing is refused, and the intent ConfigMap is created by server-side apply (which
    // the name-restricted create allows: the apply carries the name).
    agent(&client, "probe", None, None).await?;
    assert!(config_maps.get_opt("tollgate-spoke-intent").await?.is_none());
    {
        let spoke = spawn_as_chart(cluster, &chart, &token, dir.path())?;
        spoke.wait_ready().await?;
        wait_until("the intent ConfigMap at revision 1", WAIT, || async {
            config_maps.get_opt("tollgate-spoke-intent").await.is_ok_and(|c| {
                c.and_then(|c| c.metadata.annotations)
                    .is_some_and(|a| a.get("tollgate.dev/revision").map(String::as_str) == Some("1"))
            })
        })
        .await
        .map_err(|e| e.context(format!("spoke log:\n{}", spoke.log())))?;
        wait_policy(&client, "probe-signature-policy", "restricted", |p| {
            mode(p) == "restricted"
        })
        .await?;
        lose_the_api_server_twice(cluster, "probe-signature-policy").await?;
        wait_until("the probe's repeated APIServerUndiscovered event", WAIT, || async {
            event_count(&client, "probe", "APIServerUndiscovered")
                .await
                .is_ok_and(|n| n >= 2)
        })
        .await?;
        let log = spoke.log();
        assert!(log.contains("Intent received"), "{log}");
        for refusal in grants.iter().map(Grant::refusal).chain(["forbidden".to_string()]) {
            assert!(!log.contains(&refusal), "{refusal:?} with every grant:\n{log}");
        }
    }

    // The spoke watches EndpointSlices only where the server offers discovery.k8s.io/v1 (1.21 and later; the
    // Debian-built v1.20 servers do not): there their grants are tested like every other, here they cannot be.
    let slices_served = kube::discovery::group(&client, "discovery.k8s.io")
        .await
        .is_ok_and(|g| {
            g.versioned_resources("v1")
                .iter()
                .any(|(ar, _)| ar.kind == "EndpointSlice")
        });
    let (grants, untested): (Vec<Grant>, Vec<Grant>) = grants
        .into_iter()
        .partition(|g| slices_served || g.resource != "endpointslices");
    assert!(slices_served || untested.len() == 4, "{untested:?}");

    let mut outcomes = Vec::new();
    for (i, grant) in grants.iter().enumerate() {
        // What makes every grant necessary in this run: the start (watches, reading the intent), the hub's intent
        // (persisting it; the ConfigMap is deleted to need create), a new agent (policy create + patch, an Event),
        // an orphaned policy (delete) and, for the Event patch, a repeated Event.
        let (probe, orphaned) = (format!("probe-{i}"), format!("orphan-{i}"));
        agent(&client, &probe, None, None).await?;
        orphan(&client, &orphaned).await?;
        orphan_admin_policy(&client, &orphaned).await?;
        if grant.resource == "configmaps" && grant.verb == "create" {
            config_maps
                .delete("tollgate-spoke-intent", &DeleteParams::default())
                .await?;
        }
        set_role(cluster, &grant.remove_from(&chart)).await?;
        wait_until(format!("RBAC to refuse {grant}"), WAIT, || async {
            grant.allowed(&client).await.is_ok_and(|a| !a)
        })
        .await?;

        let spoke = spawn_as_chart(cluster, &chart, &token, dir.path())?;
        let context = |e: anyhow::Error| e.context(format!("without {grant}; spoke log:\n{}", spoke.log()));
        if grant.resource == "events" && grant.verb == "patch" {
            spoke.wait_ready().await.map_err(context)?;
            lose_the_api_server_twice(cluster, &format!("{probe}-signature-policy"))
                .await
                .map_err(context)?;
        }
        wait_until(format!("the spoke to be refused ({})", grant.refusal()), WAIT, || {
            refused(grant, &spoke)
        })
        .await
        .map_err(context)?;
        let log = unescaped_log(&spoke);
        for line in log.lines().filter(|l| l.contains("forbidden")) {
            assert!(
                line.contains(&grant.refusal()),
                "without {grant} only that is refused, yet:\n{line}"
            );
        }
        let outcome = if grant.resource == "configmaps" {
            spoke.wait_ready().await.map_err(context)?;
            if grant.verb == "create" {
                assert!(config_maps.get_opt("tollgate-spoke-intent").await?.is_none());
            }
            "the intent is enforced but not read or persisted (logged)"
        } else if grant.verb == "list" {
            tokio::time::sleep(std::time::Duration::from_secs(1)).await;
            assert!(
                !spoke.is_ready().await,
                "without {grant} the spoke must stay unready:\n{log}"
            );
            "never ready (logged)"
        } else if grant.resource == "events" {
            // A refused Event does not stop enforcement (it may be refused before the first pass ends).
            spoke.wait_ready().await.map_err(context)?;
            wait_policy(&client, &format!("{probe}-signature-policy"), "written", |_| true).await?;
            "policies enforced, the Event lost (logged at debug)"
        } else if grant.resource == "agentruntimes" && grant.verb == "patch" {
            spoke.wait_ready().await.map_err(context)?;
            wait_policy(&client, &format!("{probe}-signature-policy"), "written", |_| true).await?;
            "policies enforced, the AgentRuntime annotations not written (logged)"
        } else if grant.resource == "customresourcedefinitions" {
            // The CRD is read at start, before the first pass may be done: an unreadable one does not stop it.
            spoke.wait_ready().await.map_err(context)?;
            wait_policy(&client, &format!("{probe}-signature-policy"), "written", |_| true).await?;
            if grant.refusal().contains("AdminNetworkPolicy") {
                "NetworkPolicies enforced, no AdminNetworkPolicy (its peer types unknown; logged)"
            } else {
                "policies enforced, local rules not checked (logged)"
            }
        } else if grant.resource == "adminnetworkpolicies" && grant.verb != "watch" {
            let admin: Api<tollgate_spoke::anp::AdminNetworkPolicy> = Api::all(client.clone());
            let (name, present) = if grant.verb == "delete" {
                (format!("orphan-anp-{orphaned}"), true)
            } else {
                (tollgate_spoke::anp::name(NS, &probe), false)
            };
            assert_eq!(admin.get_opt(&name).await?.is_some(), present, "{name} without {grant}");
            "the AdminNetworkPolicy write is refused (logged)"
        } else if grant.verb == "watch" {
            "the watch is refused and retried with backoff: changes go unseen (logged)"
        } else {
            let (name, present) = if grant.verb == "delete" {
                (orphaned.clone(), true)
            } else {
                (format!("{probe}-signature-policy"), false)
            };
            assert_eq!(
                policies(&client).get_opt(&name).await?.is_some(),
                present,
                "{name} without {grant}"
            );
            "the write is refused (counted as forbidden)"
        };
        outcomes.push(format!("{grant}: {outcome}"));
        drop(spoke);
        set_role(
            cluster,
            chart.get(&grant.role_kind, &grant.role_namespace, &grant.role_name),
        )
        .await?;
        wait_until(format!("RBAC to allow {grant} again"), WAIT, || async {
            grant.allowed(&client).await.is_ok_and(|a| a)
        })
        .await?;
    }
    eprintln!("Every grant is needed:\n  {}", outcomes.join("\n  "));
    if !untested.is_empty() {
        let untested: Vec<String> = untested.iter().map(ToString::to_string).collect();
        eprintln!(
            "Not testable on this server (no discovery.k8s.io/v1):\n  {}",
            untested.join("\n  ")
        );
    }
    Ok(())
}
