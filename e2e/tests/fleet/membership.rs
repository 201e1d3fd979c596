//! Fleet membership with real binaries: the hub's registry decides which clusters connect and which documents they
//! get; a spoke's reported labels select nothing; removing a cluster cuts it off and revokes its certificate, while
//! its policies stay as they are.

use std::time::Duration;

use tollgate_e2e::fleet::{Fleet, SpokeStart};
use tollgate_e2e::wait_until;

use crate::support::*;

/// A spoke claiming `env=prod` gets nothing of prod's; an admin's relabelling moves the cluster at once, and back.
#[tokio::test]
async fn documents_follow_the_registry_labels_not_what_a_spoke_claims() -> anyhow::Result<()> {
    let mut fleet = Fleet::start().await?;
    fleet.apply(LLM_POLICY).await?;
    fleet.wait_converged().await?;
    // staging's spoke says it is env=prod.
    fleet
        .start_spoke_with(
            STAGING,
            SpokeStart {
                reported_labels: Some("env=prod".into()),
                ..SpokeStart::default()
            },
        )
        .await?;
    let listed: serde_json::Value = serde_json::from_str(&fleet.cli_ok(&["clusters", "list", "-o", "json"]).await?)?;
    let staging = &listed[STAGING];
    assert_eq!(staging["cluster"], "staging");
    assert_eq!(staging["labels"]["env"], "staging", "{listed:#}");
    wait_until("staging reports env=prod", Duration::from_secs(30), || async {
        let listed: serde_json::Value = fleet
            .cli_ok(&["clusters", "list", "-o", "json"])
            .await
            .ok()
            .and_then(|text| serde_json::from_str(&text).ok())
            .unwrap_or_default();
        listed[STAGING]["reportedLabels"]["env"] == "prod" && listed[STAGING]["connected"] == true
    })
    .await?;
    tokio::time::sleep(Duration::from_secs(1)).await;
    let chat = &fleet.policies(STAGING).await?[&policy_name("chat")];
    assert_eq!(mode(chat), "allow-all", "the claim selected the prod policy");
    let table = fleet.cli_ok(&["clusters", "list"]).await?;
    assert!(
        table
            .lines()
            .any(|l| l.starts_with("staging") && l.contains("env=staging") && l.contains("env=prod")),
        "{table}"
    );

    // An admin moves staging to prod: its spoke is sent prod's documents without reconnecting.
    assert_eq!(
        fleet.cli_ok(&["clusters", "label", "staging", "env=prod"]).await?,
        "cluster staging labelled: env=prod\n"
    );
    fleet
        .wait_policy(STAGING, &policy_name("chat"), "scoped by the prod policy", |p| {
            mode(p) == "scoped" && annotation(p, "tollgate.dev/rule-sources") == "policy/llm-apis"
        })
        .await?;
    fleet.cli_ok(&["clusters", "label", "staging", "env=staging"]).await?;
    fleet
        .wait_policy(STAGING, &policy_name("chat"), "allow-all again", |p| {
            mode(p) == "allow-all"
        })
        .await?;
    assert_eq!(
        fleet.spoke_log(STAGING).matches("Connected to the hub").count(),
        1,
        "relabelling needs no reconnect"
    );
    Ok(())
}

/// `clusters remove` closes the cluster's stream within a heartbeat and refuses its certificate from then on (also
/// once re-registered); the spoke keeps every policy, is not ready, and keeps trying.
#[tokio::test]
async fn a_removed_cluster_is_cut_off_keeps_its_policies_and_its_certificate_stays_revoked() -> anyhow::Result<()> {
    let fleet = Fleet::start().await?;
    fleet.apply(LLM_POLICY).await?;
    fleet.wait_converged().await?;
    let before = fleet.resource_versions().await?;

    let removed = fleet.cli_ok(&["clusters", "remove", "prod-west"]).await?;
    assert!(removed.starts_with("cluster prod-west removed"), "{removed}");
    wait_until("prod-west's spoke is refused", Duration::from_secs(10), || async {
        fleet.spoke_log(PROD_WEST).contains("The hub refused this spoke")
    })
    .await?;
    let (code, body) = fleet.spoke_readyz(PROD_WEST).await?;
    assert_eq!(code, 503, "{body}");
    assert!(body.contains("refused by every hub replica"), "{body}");
    assert!(
        body.contains("removed from the hub's registry") || body.contains("not registered on this hub"),
        "{body}"
    );
    let rows = fleet.status().await?;
    let ids: Vec<&str> = rows
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|r| r["cluster"].as_str())
        .collect();
    assert_eq!(ids, ["prod-east", "staging"], "its rows left status");

    // A change after the removal does not reach it, and its policies stay as they were.
    fleet
        .apply(&LLM_POLICY.replace("104.18.0.0/16", "104.16.0.0/13"))
        .await?;
    fleet
        .wait_policy(PROD_EAST, &policy_name("chat"), "the wider range", |p| {
            egress(p).to_string().contains("104.16.0.0/13")
        })
        .await?;
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert_eq!(fleet.resource_versions().await?[PROD_WEST], before[PROD_WEST]);

    // Registered again, its old certificate stays revoked: the spoke, still retrying, is refused with the reason.
    fleet
        .cli_ok(&["clusters", "add", "prod-west", "--labels", "env=prod,region=west"])
        .await?;
    wait_until("the old certificate is refused", Duration::from_secs(45), || async {
        fleet
            .spoke_log(PROD_WEST)
            .contains("issued before the cluster was removed")
    })
    .await?;
    assert_eq!(fleet.spoke_readyz(PROD_WEST).await?.0, 503);
    assert_eq!(fleet.resource_versions().await?[PROD_WEST], before[PROD_WEST]);
    Ok(())
}
