//! Several hub replicas on one PostgreSQL database: two `tollgate-hub serve --store postgres://…`
//! processes, three spokes spread over them (prod-east and staging start on replica 0, prod-west on replica 1).

use std::time::Duration;

use serde_json::Value;
use tollgate_e2e::fleet::{Fleet, three_clusters};
use tollgate_e2e::wait_until;

use crate::support::*;

/// `status -o json` without the fields that legitimately differ between two calls.
fn comparable(rows: &Value) -> Value {
    let mut rows = rows.clone();
    for row in rows.as_array_mut().into_iter().flatten() {
        row.as_object_mut().map(|r| r.remove("lastSeenUnixMillis"));
    }
    rows
}

/// An apply on replica 0 reaches the spoke connected to replica 1 too, and both replicas report the same fleet:
/// every cluster connected at the new revision, whichever replica holds its stream.
#[tokio::test]
async fn an_apply_on_one_replica_reaches_spokes_on_the_other_and_status_agrees() -> anyhow::Result<()> {
    let fleet = Fleet::start_replicated(three_clusters(), 2).await?;
    // The store records the stream (so status shows it) just before the replica logs it.
    wait_until(
        "prod-west's stream is on replica 1",
        Duration::from_secs(10),
        || async { fleet.hub_log(1).contains("Spoke connected cluster=prod-west") },
    )
    .await?;
    apply_llm_policy_and_wait(&fleet).await?;
    let on_first = fleet.wait_converged().await?;
    let second: Value = serde_json::from_str(&fleet.cli_ok_on(1, &["status", "-o", "json"]).await?)?;
    assert_eq!(comparable(&second), comparable(&on_first));
    let agents = |replica| {
        let fleet = &fleet;
        async move {
            let text = fleet
                .cli_ok_on(replica, &["status", "--cluster", "prod-west", "-o", "json"])
                .await?;
            anyhow::Ok(serde_json::from_str::<Value>(&text)?)
        }
    };
    assert_eq!(agents(0).await?, agents(1).await?);
    assert_eq!(
        agent_row(&agents(0).await?, "chat")["ruleSources"],
        serde_json::json!(["policy/llm-apis"])
    );
    assert_eq!(
        fleet.cli_ok_on(1, &["history"]).await?.lines().count(),
        2,
        "replica 1 reads the revision committed on replica 0"
    );
    Ok(())
}

/// Two applies at once, one on each replica: both succeed as distinct revisions, neither document is lost, and
/// every cluster converges to the set holding both.
#[tokio::test]
async fn concurrent_applies_on_two_replicas_serialise_without_losing_either() -> anyhow::Result<()> {
    let fleet = Fleet::start_replicated(three_clusters(), 2).await?;
    let second_policy = LLM_POLICY
        .replace("llm-apis", "tools-apis")
        .replace("tier: llm", "tier: tools")
        .replace("104.18.0.0/16", "140.82.112.0/20");
    let first = fleet.intent_file("first.yaml", LLM_POLICY)?.display().to_string();
    let second = fleet.intent_file("second.yaml", &second_policy)?.display().to_string();
    let (first_args, second_args) = (["apply", "-f", first.as_str()], ["apply", "-f", second.as_str()]);
    let (a, b) = tokio::join!(fleet.cli_ok_on(0, &first_args), fleet.cli_ok_on(1, &second_args));
    let (a, b) = (a?, b?);
    let mut revisions: Vec<&str> = [&a, &b]
        .iter()
        .filter_map(|out| out.lines().find(|l| l.starts_with("revision ")))
        .collect();
    revisions.sort_unstable();
    assert_eq!(revisions, ["revision 1", "revision 2"], "{a}{b}");
    for replica in 0..2 {
        let documents = fleet.cli_ok_on(replica, &["get", "policies", "-o", "json"]).await?;
        let names: Vec<String> = serde_json::from_str::<Value>(&documents)?
            .as_array()
            .unwrap()
            .iter()
            .map(|d| d["metadata"]["name"].as_str().unwrap_or_default().to_string())
            .collect();
        assert_eq!(names, ["llm-apis", "tools-apis"], "replica {replica}");
    }
    fleet.wait_converged().await?;
    for index in [PROD_EAST, PROD_WEST] {
        let search = fleet
            .wait_policy(index, "search-signature-policy", "both policies", |p| {
                egress(p).as_array().is_some_and(|r| r.len() == 5)
            })
            .await?;
        assert_eq!(
            egress(&search),
            baseline_and(
                &fleet,
                index,
                &[rule("198.51.100.0/24", 443), rule("140.82.112.0/20", 443)]
            )
        );
    }
    Ok(())
}

/// Replica 1 is SIGKILLed mid-stream: its spoke moves to replica 0 and resumes from its revision without
/// rewriting anything; the fleet keeps converging on the surviving replica.
#[tokio::test]
async fn a_killed_replica_hands_its_spokes_to_the_other() -> anyhow::Result<()> {
    let mut fleet = Fleet::start_replicated(three_clusters(), 2).await?;
    fleet.apply(LLM_POLICY).await?;
    fleet.wait_converged().await?;
    let before = fleet.resource_versions().await?;

    fleet.kill_hub_replica(1);
    wait_until(
        "prod-west's spoke reconnects to replica 0",
        Duration::from_secs(30),
        || async { fleet.hub_log(0).contains("Spoke connected cluster=prod-west") },
    )
    .await?;
    fleet.wait_converged().await?;
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert_eq!(
        fleet.resource_versions().await?,
        before,
        "the move to another replica rewrote policies:\n{}",
        fleet.spoke_log_tail(PROD_WEST)
    );

    fleet
        .apply(&LLM_POLICY.replace("104.18.0.0/16", "104.16.0.0/13"))
        .await?;
    fleet
        .wait_policy(PROD_WEST, "chat-signature-policy", "the next revision", |p| {
            egress(p)[3] == rule("104.16.0.0/13", 443)
        })
        .await?;
    let rows = fleet.wait_converged().await?;
    assert!(
        rows.as_array().unwrap().iter().all(|r| r["appliedRevision"] == 2),
        "{rows:#}"
    );
    Ok(())
}
