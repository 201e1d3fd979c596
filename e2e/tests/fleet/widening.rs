//! Widening at fleet level: a team's allow-all-egress NetworkPolicy in one cluster shows in `status` as a count of
//! widened agents for that cluster only, and in `status --cluster` per agent; removing it clears both.

use k8s_openapi::api::networking::v1::NetworkPolicy;
use kube::api::{Api, DeleteParams, PostParams};
use serde_json::json;
use tollgate_e2e::fleet::{Fleet, TEAM_NS};

#[tokio::test]
async fn status_counts_the_widened_agents_of_each_cluster() -> anyhow::Result<()> {
    let fleet = Fleet::start().await?;
    fleet.wait_converged().await?;
    let policies: Api<NetworkPolicy> = Api::namespaced(fleet.client(1), TEAM_NS);
    let allow_all = tollgate_e2e::fixtures::allow_all_egress(TEAM_NS)?;
    policies.create(&PostParams::default(), &allow_all).await?;

    // `search` (scoped) and `untrusted` (restricted) are widened; `chat` is allow-all already.
    let rows = fleet
        .wait_status("prod-west reports two widened agents", |rows| {
            rows.as_array()
                .is_some_and(|rows| rows.iter().any(|r| r["cluster"] == "prod-west" && r["widened"] == 2))
        })
        .await?;
    for row in rows.as_array().unwrap() {
        if row["cluster"] != "prod-west" {
            assert_eq!(row["widened"], 0, "{row:#}");
        }
    }
    let table = fleet.cli_ok(&["status"]).await?;
    assert!(table.lines().next().unwrap_or_default().contains("WIDENED"), "{table}");
    let agents = fleet.agent_status("prod-west").await?;
    let widened: Vec<(&str, &serde_json::Value)> = agents
        .as_array()
        .unwrap()
        .iter()
        .map(|a| (a["name"].as_str().unwrap_or_default(), &a["widenedBy"]))
        .collect();
    assert_eq!(
        widened,
        [
            ("chat", &json!([])),
            ("search", &json!(["allow-all-egress"])),
            ("untrusted", &json!(["allow-all-egress"]))
        ]
    );
    let shown = fleet.cli_ok(&["status", "--cluster", "prod-west"]).await?;
    let search = shown.lines().find(|l| l.contains("search")).unwrap_or_default();
    assert!(search.contains("by allow-all-egress"), "{shown}");

    policies.delete("allow-all-egress", &DeleteParams::default()).await?;
    fleet
        .wait_status("no widened agent left", |rows| {
            rows.as_array()
                .is_some_and(|rows| rows.iter().all(|r| r["widened"] == 0))
        })
        .await?;
    Ok(())
}
