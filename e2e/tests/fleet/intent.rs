//! Scenarios 1–4 and 6: status, a fleet policy, a guardrail, plan versus apply, rollback.

use std::collections::BTreeMap;

use serde_json::{Value, json};
use tollgate_e2e::fleet::Fleet;

use crate::support::*;

/// Scenario 1: certificates from `tollgate-hub certs`, hub started, spokes connected; `status` shows the three
/// clusters with their labels, agents and modes.
#[tokio::test]
async fn status_shows_every_cluster_with_labels_agents_and_modes() -> anyhow::Result<()> {
    let fleet = Fleet::start().await?;
    let rows = fleet.status().await?;
    let rows = rows.as_array().expect("an array of clusters");
    assert_eq!(rows.len(), 3, "{rows:#?}");
    for (row, spec) in rows.iter().zip(fleet.specs()) {
        let labels: BTreeMap<String, String> = serde_json::from_value(row["labels"].clone())?;
        assert_eq!(row["cluster"], spec.name.as_str());
        assert_eq!(labels, spec.labels);
        assert_eq!(row["connected"], true);
        assert_eq!(
            (
                &row["agents"],
                &row["scoped"],
                &row["allowAll"],
                &row["baselineOnly"],
                &row["restricted"],
                &row["errors"]
            ),
            (&json!(3), &json!(1), &json!(1), &json!(0), &json!(1), &json!(0)),
            "{row:#}"
        );
    }

    let table = fleet.cli_ok(&["status"]).await?;
    let lines: Vec<&str> = table.lines().collect();
    assert_eq!(lines.len(), 4, "{table}");
    assert!(
        lines[0].starts_with("CLUSTER") && lines[0].contains("CONNECTED"),
        "{table}"
    );
    for (line, spec) in lines[1..].iter().zip(fleet.specs()) {
        let fields: Vec<&str> = line.split_whitespace().collect();
        let labels = spec
            .labels
            .iter()
            .map(|(k, v)| format!("{k}={v}"))
            .collect::<Vec<_>>()
            .join(",");
        assert_eq!(
            fields,
            [
                spec.name.as_str(),
                &labels,
                "yes",
                "now",
                "0/0",
                "3",
                "1",
                "1",
                "0",
                "1",
                "0",
                "0",
                "Ready"
            ],
            "{table}"
        );
    }

    // Per agent, in each cluster: what the hub reports is what the spoke wrote.
    for (index, spec) in fleet.specs().iter().enumerate() {
        let agents = fleet.agent_status(&spec.name).await?;
        let policies = fleet.policies(index).await?;
        for (agent, verified, expected_mode, sources) in [
            ("chat", true, "allow-all", json!([])),
            ("search", true, "scoped", json!(["local"])),
            ("untrusted", false, "restricted", json!([])),
        ] {
            let row = agent_row(&agents, agent);
            assert_eq!(row["verified"], verified, "{}: {row:#}", spec.name);
            assert_eq!(row["mode"], expected_mode, "{}: {row:#}", spec.name);
            assert_eq!(row["ruleSources"], sources, "{}: {row:#}", spec.name);
            assert_eq!(mode(&policies[&policy_name(agent)]), expected_mode);
        }
        assert_eq!(
            egress(&policies["search-signature-policy"]),
            baseline_and(&fleet, index, &[rule("198.51.100.0/24", 443)])
        );
        assert_eq!(egress(&policies["chat-signature-policy"]), allow_all());
        assert_eq!(
            egress(&policies["untrusted-signature-policy"]),
            restricted(&fleet, index)
        );
    }
    Ok(())
}

/// Scenario 2: a policy selecting `env=prod` clusters and `tier=llm` agents scopes exactly those agents with
/// exactly its destinations plus the baseline; staging is untouched; every cluster reaches the new revision.
#[tokio::test]
async fn policy_scopes_matching_agents_in_matching_clusters_only() -> anyhow::Result<()> {
    let fleet = Fleet::start().await?;
    let before = fleet.resource_versions().await?;
    for chat in apply_llm_policy_and_wait(&fleet).await? {
        assert_eq!(annotation(&chat, "tollgate.dev/rule-sources"), "policy/llm-apis");
        assert_eq!(annotation(&chat, "tollgate.dev/revision"), "1");
    }
    let rows = fleet.wait_converged().await?;
    for row in rows.as_array().unwrap() {
        assert_eq!(
            (&row["appliedRevision"], &row["latestRevision"]),
            (&json!(1), &json!(1)),
            "{row:#}"
        );
        let prod = row["labels"]["env"] == "prod";
        assert_eq!(row["scoped"], if prod { 2 } else { 1 }, "{row:#}");
        assert_eq!(row["allowAll"], if prod { 0 } else { 1 }, "{row:#}");
        assert_eq!(row["restricted"], 1, "{row:#}");
    }
    for index in [PROD_EAST, PROD_WEST] {
        let policies = fleet.policies(index).await?;
        // Not selected (tier=tools): its local rule only. Unverified: hub rules never apply.
        assert_eq!(
            egress(&policies["search-signature-policy"]),
            baseline_and(&fleet, index, &[rule("198.51.100.0/24", 443)])
        );
        assert_eq!(
            egress(&policies["untrusted-signature-policy"]),
            restricted(&fleet, index)
        );
        let agents = fleet.agent_status(&fleet.specs()[index].name).await?;
        assert_eq!(agent_row(&agents, "chat")["ruleSources"], json!(["policy/llm-apis"]));
        assert_eq!(agent_row(&agents, "chat")["appliedRevision"], 1);
    }
    let after = fleet.resource_versions().await?;
    assert_eq!(after[STAGING], before[STAGING], "staging was rewritten");
    assert_ne!(after[PROD_EAST], before[PROD_EAST]);

    // An independent analyzer (np-guard's nca) computes the same egress from the written policies: hub rules for
    // the selected agent in prod, local rules for the other, the API server only for the unverified one, and
    // everything for staging's agent without rules.
    let search_rule = ("198.51.100.0", "198.51.100.255", 443);
    for index in [PROD_EAST, PROD_WEST, STAGING] {
        let judged = judged(&fleet, index).await?;
        assert_eq!(
            judged["untrusted"],
            judged_egress(&fleet, index, false, &[]),
            "{judged:#?}"
        );
        assert_eq!(
            judged["search"],
            judged_egress(&fleet, index, true, &[search_rule]),
            "{judged:#?}"
        );
        if index == STAGING {
            assert!(
                judged["chat"].contains("0.0.0.0-255.255.255.255 : All connections"),
                "{judged:#?}"
            );
        } else {
            let llm = ("104.18.0.0", "104.18.255.255", 443);
            assert_eq!(
                judged["chat"],
                judged_egress(&fleet, index, true, &[llm]),
                "{judged:#?}"
            );
        }
    }
    Ok(())
}

const STAGING_GUARDRAIL: &str = "\
apiVersion: tollgate.dev/v1alpha1
kind: EgressGuardrail
metadata: {name: staging-ceiling}
spec:
  clusterSelector: {matchLabels: {env: staging}}
  verifiedDefault: BaselineOnly
  allowedDestinations: [{cidr: 10.0.0.0/8}]
";

/// Scenario 3: a BaselineOnly guardrail on staging: its verified agent without rules loses allow-all; a local rule
/// outside `allowedDestinations` is dropped and reported in `status --cluster`; prod is untouched.
#[tokio::test]
async fn guardrail_on_one_cluster_removes_allow_all_and_drops_rules_outside_the_ceiling() -> anyhow::Result<()> {
    let fleet = Fleet::start().await?;
    let before = fleet.resource_versions().await?;
    fleet.apply(STAGING_GUARDRAIL).await?;

    let chat = fleet
        .wait_policy(STAGING, "chat-signature-policy", "baseline-only", |p| {
            mode(p) == "baseline-only"
        })
        .await?;
    assert_eq!(egress(&chat), baseline_and(&fleet, STAGING, &[]));
    // `spec.egress` is declared, so the agent stays scoped, with its one rule dropped: the baseline only.
    let search = fleet
        .wait_policy(STAGING, "search-signature-policy", "its local rule dropped", |p| {
            egress(p).as_array().is_some_and(|r| r.len() == 3)
        })
        .await?;
    assert_eq!(mode(&search), "scoped");
    assert_eq!(egress(&search), baseline_and(&fleet, STAGING, &[]));
    fleet.wait_converged().await?;

    let agents = fleet.agent_status("staging").await?;
    assert_eq!(
        agent_row(&agents, "search")["droppedRules"],
        json!([
            "local rule 0 peer 0: 198.51.100.0/24 is outside the allowed destinations of guardrail staging-ceiling"
        ])
    );
    assert_eq!(agent_row(&agents, "chat")["mode"], "baseline-only");
    let table = fleet.cli_ok(&["status", "--cluster", "staging"]).await?;
    let search_line = table.lines().find(|l| l.contains("search")).unwrap_or_default();
    assert!(
        search_line.contains("198.51.100.0/24 is outside the allowed destinations"),
        "{table}"
    );
    let rows = fleet.status().await?;
    assert_eq!(rows[STAGING]["baselineOnly"], 1, "{rows:#}");
    assert_eq!(rows[STAGING]["allowAll"], 0, "{rows:#}");

    let after = fleet.resource_versions().await?;
    assert_eq!(after[PROD_EAST], before[PROD_EAST], "prod-east was rewritten");
    assert_eq!(after[PROD_WEST], before[PROD_WEST], "prod-west was rewritten");

    // nca agrees: under the guardrail, staging's verified agents reach the API server and DNS only (baseline-only,
    // and the local rule outside the ceiling gone), the unverified one the API server only.
    let judged = judged(&fleet, STAGING).await?;
    assert_eq!(judged["chat"], judged_egress(&fleet, STAGING, true, &[]), "{judged:#?}");
    assert_eq!(
        judged["search"],
        judged_egress(&fleet, STAGING, true, &[]),
        "{judged:#?}"
    );
    assert_eq!(
        judged["untrusted"],
        judged_egress(&fleet, STAGING, false, &[]),
        "{judged:#?}"
    );
    Ok(())
}

/// The change previewed and then applied in scenario 4: the policy widened to `tier in (llm, tools)` with a
/// second rule, and the staging guardrail. (No `endPort`: the v1.20 test API server predates it.)
const WIDER_POLICY: &str = "\
apiVersion: tollgate.dev/v1alpha1
kind: EgressPolicy
metadata: {name: llm-apis}
spec:
  clusterSelector: {matchLabels: {env: prod}}
  agentSelector:
    matchExpressions: [{key: tier, operator: In, values: [llm, tools]}]
  egress:
    - to: [{ipBlock: {cidr: 104.18.0.0/16}}]
      ports: [{port: 443}]
    - to: [{ipBlock: {cidr: 140.82.112.0/20}}, {ipBlock: {cidr: \"2001:db8::/32\"}}]
      ports: [{protocol: TCP, port: 8443}]
";

/// Scenario 4: `plan -f` of a change predicts exactly what applying it does to the NetworkPolicies of every
/// cluster: the same agents change, with the same destinations gained and lost and the same modes.
#[tokio::test]
async fn plan_predicts_exactly_what_apply_does() -> anyhow::Result<()> {
    let fleet = Fleet::start().await?;
    fleet.apply(LLM_POLICY).await?;
    fleet.wait_converged().await?;
    let before = observe(&fleet).await?;

    let change = format!("{WIDER_POLICY}---\n{STAGING_GUARDRAIL}");
    let file = fleet.intent_file("change.yaml", &change)?;
    let file = file.display().to_string();
    let plan: Value = serde_json::from_str(&fleet.cli_ok(&["plan", "-f", &file, "-o", "json"]).await?)?;
    let text = fleet.cli_ok(&["plan", "-f", &file]).await?;
    assert!(text.ends_with("6 agent(s) in 3 cluster(s) would change\n"), "{text}");
    assert_eq!(fleet.status().await?[0]["latestRevision"], 1, "plan must not commit");

    fleet.cli_ok(&["apply", "-f", &file]).await?;
    fleet.wait_converged().await?;
    let after = observe(&fleet).await?;

    let mut predicted_changes = 0;
    for (index, spec) in fleet.specs().iter().enumerate() {
        let cluster_plan = plan
            .as_array()
            .and_then(|c| c.iter().find(|c| c["cluster"] == spec.name.as_str()))
            .unwrap_or_else(|| panic!("no plan for {}: {plan:#}", spec.name));
        let predicted: BTreeMap<&str, &Value> = cluster_plan["agents"]
            .as_array()
            .unwrap()
            .iter()
            .map(|a| (a["name"].as_str().unwrap(), a))
            .collect();
        for (agent, (mode_before, old)) in &before[index] {
            let (mode_after, new) = &after[index][agent];
            match predicted.get(agent.as_str()) {
                None => assert_eq!(
                    (mode_before, old),
                    (mode_after, new),
                    "{}/{agent} changed although the plan said it would not",
                    spec.name
                ),
                Some(p) => {
                    predicted_changes += 1;
                    let gained: Vec<String> = new.difference(old).cloned().collect();
                    let lost: Vec<String> = old.difference(new).cloned().collect();
                    assert_eq!(p["modeBefore"], mode_before.as_str(), "{}/{agent}", spec.name);
                    assert_eq!(p["modeAfter"], mode_after.as_str(), "{}/{agent}", spec.name);
                    assert_eq!(p["gained"], json!(gained), "{}/{agent}", spec.name);
                    assert_eq!(p["lost"], json!(lost), "{}/{agent}", spec.name);
                }
            }
        }
    }
    // prod: search gains both rules, chat gains the second; staging: chat loses allow-all, search its rule.
    assert_eq!(predicted_changes, 6, "{plan:#}");
    assert_eq!(
        after[PROD_EAST]["search"].0, "scoped",
        "the widened selector scopes search"
    );
    assert_eq!(after[STAGING]["chat"].0, "baseline-only");
    Ok(())
}

/// Scenario 6: `rollback --to` an earlier revision restores the earlier NetworkPolicies in every cluster.
#[tokio::test]
async fn rollback_restores_the_earlier_policies_everywhere() -> anyhow::Result<()> {
    let fleet = Fleet::start().await?;
    fleet.apply(LLM_POLICY).await?;
    fleet.wait_converged().await?;
    let at_one = essences(&fleet).await?;

    fleet.apply(&format!("{WIDER_POLICY}---\n{STAGING_GUARDRAIL}")).await?;
    fleet.cli_ok(&["delete", "policy", "llm-apis"]).await?;
    fleet.wait_converged().await?;
    let at_three = essences(&fleet).await?;
    assert_ne!(at_three, at_one, "revisions 2 and 3 changed nothing");

    let out = fleet.cli_ok(&["rollback", "--to", "1"]).await?;
    assert!(out.contains("revision 4"), "{out}");
    fleet.wait_converged().await?;
    for (index, spec) in fleet.specs().iter().enumerate() {
        let now = essences(&fleet).await?;
        assert_eq!(now[index], at_one[index], "{} differs from revision 1", spec.name);
    }
    let history = fleet.cli_ok(&["history"]).await?;
    assert_eq!(history.lines().count(), 5, "a header and four revisions:\n{history}");
    Ok(())
}
