//! Scenario 7: failures. A hub crash and restart, a spoke restart during the outage, an apiserver restart, a
//! spoke claiming another cluster, a malformed apply.

use std::time::Duration;

use tollgate_e2e::fleet::{Fleet, SpokeStart, apply_agent, mtls_card};
use tollgate_e2e::wait_until;

use crate::support::*;

/// The hub is SIGKILLed: every policy stays as it is. A spoke restarted during the outage enforces its
/// persisted intent without rewriting anything. The hub restarts on its store: every spoke resumes from its
/// revision with no write at all, and the next apply reaches every cluster.
#[tokio::test]
async fn hub_crash_spoke_restart_without_hub_and_resume_rewrite_nothing() -> anyhow::Result<()> {
    let mut fleet = Fleet::start().await?;
    fleet.apply(LLM_POLICY).await?;
    fleet.wait_converged().await?;
    let before = fleet.resource_versions().await?;

    fleet.kill_hub();
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert_eq!(
        fleet.resource_versions().await?,
        before,
        "the hub outage changed policies"
    );

    fleet.kill_spoke(PROD_WEST);
    fleet.start_spoke(PROD_WEST).await?;
    let log = fleet.spoke_log(PROD_WEST);
    assert!(
        log.contains("Enforcing the persisted intent until the hub answers"),
        "{log}"
    );
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert_eq!(
        fleet.resource_versions().await?,
        before,
        "a spoke restarted without its hub rewrote policies:\n{}",
        fleet.spoke_log_tail(PROD_WEST)
    );
    let chat = &fleet.policies(PROD_WEST).await?["chat-signature-policy"];
    assert_eq!(mode(chat), "scoped", "the persisted intent keeps the hub's rule");

    fleet.start_hub().await?;
    let rows = fleet.wait_converged().await?;
    assert_eq!(rows[0]["latestRevision"], 1, "a committed revision was lost: {rows:#}");
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert_eq!(
        fleet.resource_versions().await?,
        before,
        "resuming after the hub restart rewrote policies"
    );

    fleet
        .apply(&LLM_POLICY.replace("104.18.0.0/16", "104.16.0.0/13"))
        .await?;
    for index in [PROD_EAST, PROD_WEST] {
        fleet
            .wait_policy(index, "chat-signature-policy", "the new revision", |p| {
                egress(p)[3] == rule("104.16.0.0/13", 443)
            })
            .await?;
    }
    fleet.wait_converged().await?;
    Ok(())
}

/// prod-east's kube-apiserver is SIGKILLed while a new revision is applied: the other clusters converge at
/// once; when it comes back on the same port and data, its spoke reconverges on its own.
#[tokio::test]
async fn apiserver_restart_is_followed_by_reconvergence() -> anyhow::Result<()> {
    let mut fleet = Fleet::start().await?;
    fleet.apply(LLM_POLICY).await?;
    fleet.wait_converged().await?;

    fleet.kill_apiserver(PROD_EAST)?;
    let wider = LLM_POLICY.replace("104.18.0.0/16", "104.16.0.0/13");
    fleet.apply(&wider).await?;
    fleet
        .wait_policy(PROD_WEST, "chat-signature-policy", "revision 2", |p| {
            egress(p)[3] == rule("104.16.0.0/13", 443)
        })
        .await?;
    tokio::time::sleep(Duration::from_secs(2)).await;

    fleet.start_apiserver(PROD_EAST).await?;
    let chat = fleet
        .wait_policy(
            PROD_EAST,
            "chat-signature-policy",
            "revision 2 after the restart",
            |p| egress(p)[3] == rule("104.16.0.0/13", 443),
        )
        .await?;
    assert_eq!(
        egress(&chat),
        baseline_and(&fleet, PROD_EAST, &[rule("104.16.0.0/13", 443)])
    );
    wait_until(
        "prod-east acknowledges revision 2 without errors",
        Duration::from_secs(60),
        || async {
            let Ok(rows) = fleet.status().await else { return false };
            rows[PROD_EAST]["appliedRevision"] == 2 && rows[PROD_EAST]["errors"] == 0
        },
    )
    .await?;
    Ok(())
}

/// staging's spoke restarted with staging's certificate but claiming to be prod-east: the hub refuses it, it
/// receives no prod intent (its policies stay as they were), it reports itself unready, and prod-east's status is
/// not overwritten.
#[tokio::test]
async fn a_spoke_claiming_another_cluster_is_refused_and_nothing_leaks() -> anyhow::Result<()> {
    let mut fleet = Fleet::start().await?;
    // An agent only staging has, to recognise staging's inventory anywhere it might leak to.
    apply_agent(
        &fleet.client(STAGING),
        "staging-only",
        &[("tier", "llm")],
        None,
        Some(mtls_card()),
    )
    .await?;
    fleet
        .wait_status("staging reports its fourth agent", |rows| rows[STAGING]["agents"] == 4)
        .await?;
    fleet.apply(LLM_POLICY).await?;
    fleet.wait_converged().await?;
    let before = fleet.resource_versions().await?;

    fleet
        .start_spoke_with(
            STAGING,
            SpokeStart {
                claimed_id: Some("prod-east".into()),
                certificate_of: Some("staging".into()),
                answering: true,
                ..SpokeStart::default()
            },
        )
        .await?;
    wait_until("the impostor is refused", Duration::from_secs(30), || async {
        fleet.spoke_log(STAGING).contains("The hub refused this spoke")
    })
    .await?;
    let log = fleet.spoke_log(STAGING);
    assert!(log.contains("PermissionDenied"), "{log}");
    // Refused for good by every hub address: the spoke is not ready (it keeps enforcing what it had).
    let (code, body) = fleet.spoke_readyz(STAGING).await?;
    assert_eq!(code, 503, "{body}");
    assert!(body.contains("refused by every hub replica"), "{body}");
    tokio::time::sleep(Duration::from_secs(1)).await;

    let after = fleet.resource_versions().await?;
    assert_eq!(after[STAGING], before[STAGING], "staging received prod intent");
    let chat = &fleet.policies(STAGING).await?["chat-signature-policy"];
    assert_eq!(mode(chat), "allow-all");
    let rows = fleet.status().await?;
    assert_eq!(rows[PROD_EAST]["connected"], true, "{rows:#}");
    assert_eq!(rows[PROD_EAST]["agents"], 3, "{rows:#}");
    assert_eq!(rows[STAGING]["connected"], false, "{rows:#}");
    let east = fleet.agent_status("prod-east").await?;
    assert!(
        agent_row(&east, "staging-only").is_null(),
        "staging's inventory leaked into prod-east: {east:#}"
    );
    Ok(())
}

/// A malformed apply (one valid document, one port-only rule) is refused with the field and the reason, and
/// changes nothing: no revision, the same documents, no write in any cluster.
#[tokio::test]
async fn a_malformed_apply_changes_nothing_anywhere() -> anyhow::Result<()> {
    let fleet = Fleet::start().await?;
    fleet.apply(LLM_POLICY).await?;
    fleet.wait_converged().await?;
    let before = fleet.resource_versions().await?;
    let documents = fleet.cli_ok(&["get", "policies", "-o", "yaml"]).await?;
    let revisions = fleet.cli_ok(&["history"]).await?.lines().count();

    let malformed = format!(
        "{}---
apiVersion: tollgate.dev/v1alpha1
kind: EgressPolicy
metadata: {{name: port-only}}
spec:
  egress: [{{ports: [{{port: 443}}]}}]
",
        LLM_POLICY.replace("104.18.0.0/16", "104.16.0.0/13")
    );
    let file = fleet.intent_file("malformed.yaml", &malformed)?;
    let output = fleet.cli(&["apply", "-f", &file.display().to_string()]).await?;
    assert!(!output.success, "a malformed apply succeeded: {}", output.stdout);
    assert!(
        output.stderr.contains("spec.egress[0]") && output.stderr.contains("OVN-Kubernetes"),
        "{}",
        output.stderr
    );
    assert!(output.stderr.contains("nothing was applied"), "{}", output.stderr);

    let unparsable = fleet.intent_file("unparsable.yaml", "kind: EgressPolicy\nmetadata: {name: [\n")?;
    let output = fleet.cli(&["apply", "-f", &unparsable.display().to_string()]).await?;
    assert!(!output.success, "an unparsable apply succeeded");

    tokio::time::sleep(Duration::from_secs(1)).await;
    assert_eq!(fleet.cli_ok(&["get", "policies", "-o", "yaml"]).await?, documents);
    assert_eq!(fleet.cli_ok(&["history"]).await?.lines().count(), revisions);
    let rows = fleet.status().await?;
    assert!(
        rows.as_array()
            .unwrap()
            .iter()
            .all(|r| r["latestRevision"] == 1 && r["appliedRevision"] == 1),
        "{rows:#}"
    );
    assert_eq!(
        fleet.resource_versions().await?,
        before,
        "a refused apply changed policies"
    );
    Ok(())
}
