//! Scenarios 5 and 8: changes inside one cluster (a verification flip, new API-server endpoints) are followed
//! by that cluster's spoke and reported to the hub; the other clusters are untouched.

use std::time::{Duration, Instant};

use serde_json::json;
use tollgate_e2e::fleet::{API_PORT, Fleet, mtls_card};
use tollgate_e2e::wait_until;

use crate::support::*;

/// Scenario 5: the operator writes a verified card for `untrusted` in prod-east: within seconds its policy is
/// scoped by the hub policy, and the hub's status follows; taking the card away restricts it again.
#[tokio::test]
async fn verification_flip_in_one_cluster_is_enforced_within_seconds() -> anyhow::Result<()> {
    let fleet = Fleet::start().await?;
    fleet.apply(LLM_POLICY).await?;
    fleet.wait_converged().await?;
    let before = fleet.resource_versions().await?;

    let flipped = Instant::now();
    fleet.set_card(PROD_EAST, "untrusted", Some(mtls_card())).await?;
    let policy = fleet
        .wait_policy(PROD_EAST, "untrusted-signature-policy", "scoped once verified", |p| {
            mode(p) == "scoped"
        })
        .await?;
    let took = flipped.elapsed();
    assert!(took < Duration::from_secs(5), "the flip took {took:?}");
    assert_eq!(
        egress(&policy),
        baseline_and(&fleet, PROD_EAST, &[rule("104.18.0.0/16", 443)])
    );
    wait_until(
        "the hub reports untrusted verified and scoped",
        Duration::from_secs(30),
        || async {
            let Ok(agents) = fleet.agent_status("prod-east").await else {
                return false;
            };
            let row = agent_row(&agents, "untrusted");
            row["verified"] == true && row["verificationReason"] == "mTLSVerified" && row["mode"] == "scoped"
        },
    )
    .await?;
    let rows = fleet.status().await?;
    assert_eq!(
        (&rows[PROD_EAST]["scoped"], &rows[PROD_EAST]["restricted"]),
        (&json!(3), &json!(0))
    );

    fleet.set_card(PROD_EAST, "untrusted", None).await?;
    let policy = fleet
        .wait_policy(PROD_EAST, "untrusted-signature-policy", "restricted again", |p| {
            mode(p) == "restricted"
        })
        .await?;
    assert_eq!(egress(&policy), restricted(&fleet, PROD_EAST));
    wait_until(
        "the hub reports untrusted unverified",
        Duration::from_secs(30),
        || async {
            let Ok(agents) = fleet.agent_status("prod-east").await else {
                return false;
            };
            let row = agent_row(&agents, "untrusted");
            row["verified"] == false && row["verificationReason"] == "NotVerified" && row["mode"] == "restricted"
        },
    )
    .await?;

    let after = fleet.resource_versions().await?;
    assert_eq!(after[PROD_WEST], before[PROD_WEST], "prod-west was rewritten");
    assert_eq!(after[STAGING], before[STAGING], "staging was rewritten");
    Ok(())
}

/// Scenario 8: the API server of prod-west moves to two new addresses (test-owned Endpoints): its restricted
/// and scoped policies follow, and the other clusters are untouched.
#[tokio::test]
async fn api_endpoints_change_in_one_cluster_is_followed_there_only() -> anyhow::Result<()> {
    let fleet = Fleet::start().await?;
    fleet.apply(LLM_POLICY).await?;
    fleet.wait_converged().await?;
    let before = fleet.resource_versions().await?;

    let moved = ["192.0.2.50", "192.0.2.51"];
    fleet
        .cluster(PROD_WEST)
        .set_api_endpoints(&moved.map(|a| a.parse().unwrap()), API_PORT)
        .await?;
    let expected_api = api_rule(&moved);
    let untrusted = fleet
        .wait_policy(PROD_WEST, "untrusted-signature-policy", "the new API addresses", |p| {
            egress(p)[0] == expected_api
        })
        .await?;
    assert_eq!(egress(&untrusted), json!([expected_api, api_service_rule()]));
    let chat = fleet
        .wait_policy(PROD_WEST, "chat-signature-policy", "the new API addresses", |p| {
            egress(p)[0] == expected_api
        })
        .await?;
    assert_eq!(
        egress(&chat),
        json!([expected_api, api_service_rule(), dns_rule(), rule("104.18.0.0/16", 443)])
    );
    let search = fleet
        .wait_policy(PROD_WEST, "search-signature-policy", "the new API addresses", |p| {
            egress(p)[0] == expected_api
        })
        .await?;
    assert_eq!(
        egress(&search),
        json!([
            expected_api,
            api_service_rule(),
            dns_rule(),
            rule("198.51.100.0/24", 443)
        ])
    );

    let after = fleet.resource_versions().await?;
    assert_eq!(after[PROD_EAST], before[PROD_EAST], "prod-east was rewritten");
    assert_eq!(after[STAGING], before[STAGING], "staging was rewritten");
    Ok(())
}
