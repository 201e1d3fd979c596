//! Pure rendering of CLI output: tables as literal text, and the same rows for `-o json|yaml`.

use serde::Serialize;
use tollgate_proto::v1 as pb;

pub use crate::validate::render_table;

/// A duration since `then`, for humans: `42s ago`, `5m ago`, `3h ago`, `2d ago`, or `never`.
pub fn ago(then_unix_millis: i64, now_unix_millis: i64) -> String {
    if then_unix_millis <= 0 {
        return "never".to_string();
    }
    let secs = (now_unix_millis - then_unix_millis).max(0) / 1000;
    match secs {
        0..60 => format!("{secs}s ago"),
        60..3600 => format!("{}m ago", secs / 60),
        3600..86_400 => format!("{}h ago", secs / 3600),
        _ => format!("{}d ago", secs / 86_400),
    }
}

fn labels_text(labels: &std::collections::HashMap<String, String>) -> String {
    let mut pairs: Vec<String> = labels.iter().map(|(k, v)| format!("{k}={v}")).collect();
    pairs.sort();
    if pairs.is_empty() {
        "-".to_string()
    } else {
        pairs.join(",")
    }
}

/// One row per cluster.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct ClusterRow {
    pub cluster: String,
    pub labels: std::collections::BTreeMap<String, String>,
    pub connected: bool,
    pub last_seen_unix_millis: i64,
    pub applied_revision: u64,
    pub latest_revision: u64,
    pub agents: u32,
    pub scoped: u32,
    pub allow_all: u32,
    pub baseline_only: u32,
    pub restricted: u32,
    pub errors: u32,
    /// What the spoke reported last (empty: nothing wrong).
    pub conditions: Vec<ConditionRow>,
}

/// A condition a spoke reported.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct ConditionRow {
    #[serde(rename = "type")]
    pub type_: String,
    pub reason: String,
    pub message: String,
}

fn condition_rows(conditions: &[pb::Condition]) -> Vec<ConditionRow> {
    conditions
        .iter()
        .map(|c| ConditionRow {
            type_: crate::grpc::condition_name(c.r#type),
            reason: c.reason.clone(),
            message: c.message.clone(),
        })
        .collect()
}

/// `Ready`, or the types of the cluster's conditions (`Diverged`, …).
fn state_text(conditions: &[pb::Condition]) -> String {
    if conditions.is_empty() {
        return "Ready".to_string();
    }
    condition_rows(conditions)
        .into_iter()
        .map(|c| c.type_)
        .collect::<Vec<_>>()
        .join(",")
}

pub fn cluster_rows(status: &pb::FleetStatusResponse) -> Vec<ClusterRow> {
    status
        .clusters
        .iter()
        .map(|c| ClusterRow {
            cluster: c.cluster_id.clone(),
            labels: c.labels.clone().into_iter().collect(),
            connected: c.connected,
            last_seen_unix_millis: c.last_seen_unix_millis,
            applied_revision: c.applied_revision,
            latest_revision: status.latest_revision,
            agents: c.agents_total,
            scoped: c.agents_scoped,
            allow_all: c.agents_allow_all,
            baseline_only: c.agents_baseline_only,
            restricted: c.agents_restricted,
            errors: c.errors,
            conditions: condition_rows(&c.conditions),
        })
        .collect()
}

pub fn clusters_table(status: &pb::FleetStatusResponse, now_unix_millis: i64) -> String {
    let mut rows = vec![
        [
            "CLUSTER",
            "LABELS",
            "CONNECTED",
            "LAST SEEN",
            "REVISION",
            "AGENTS",
            "SCOPED",
            "ALLOW-ALL",
            "BASELINE-ONLY",
            "RESTRICTED",
            "ERRORS",
            "STATUS",
        ]
        .map(String::from),
    ];
    let mut notes = String::new();
    for c in &status.clusters {
        for condition in condition_rows(&c.conditions) {
            notes.push_str(&format!(
                "{}: {}: {}\n",
                c.cluster_id, condition.type_, condition.message
            ));
        }
        rows.push([
            c.cluster_id.clone(),
            labels_text(&c.labels),
            if c.connected { "yes" } else { "no" }.to_string(),
            if c.connected {
                "now".to_string()
            } else {
                ago(c.last_seen_unix_millis, now_unix_millis)
            },
            format!("{}/{}", c.applied_revision, status.latest_revision),
            c.agents_total.to_string(),
            c.agents_scoped.to_string(),
            c.agents_allow_all.to_string(),
            c.agents_baseline_only.to_string(),
            c.agents_restricted.to_string(),
            c.errors.to_string(),
            state_text(&c.conditions),
        ]);
    }
    render_table(&rows) + &notes
}

/// One row per agent of a cluster.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct AgentRow {
    pub namespace: String,
    pub name: String,
    pub verified: bool,
    pub verification_reason: String,
    pub mode: String,
    pub rule_count: u32,
    pub rule_sources: Vec<String>,
    pub applied_revision: u64,
    pub errors: Vec<String>,
    pub dropped_rules: Vec<String>,
}

pub fn agent_rows(status: &pb::FleetStatusResponse) -> Vec<AgentRow> {
    status
        .agents
        .iter()
        .map(|a| AgentRow {
            namespace: a.namespace.clone(),
            name: a.name.clone(),
            verified: a.verified,
            verification_reason: a.verification_reason.clone(),
            mode: a.mode.clone(),
            rule_count: a.rule_count,
            rule_sources: a.rule_sources.clone(),
            applied_revision: a.applied_revision,
            errors: a.errors.clone(),
            dropped_rules: a.dropped_rules.clone(),
        })
        .collect()
}

pub fn agents_table(status: &pb::FleetStatusResponse) -> String {
    let mut rows = vec![
        [
            "NAMESPACE",
            "NAME",
            "VERIFIED",
            "REASON",
            "MODE",
            "RULES",
            "SOURCES",
            "REVISION",
            "LAST ERROR",
        ]
        .map(String::from),
    ];
    for a in &status.agents {
        let last_problem = a
            .errors
            .last()
            .or(a.dropped_rules.last())
            .cloned()
            .unwrap_or_else(|| "-".to_string());
        rows.push([
            a.namespace.clone(),
            a.name.clone(),
            if a.verified { "yes" } else { "no" }.to_string(),
            a.verification_reason.clone(),
            a.mode.clone(),
            a.rule_count.to_string(),
            if a.rule_sources.is_empty() {
                "-".to_string()
            } else {
                a.rule_sources.join(",")
            },
            a.applied_revision.to_string(),
            last_problem,
        ]);
    }
    render_table(&rows)
}

pub fn history_table(history: &pb::HistoryResponse, now_unix_millis: i64) -> String {
    let mut rows = vec![["REVISION", "CREATED", "OPERATION", "DOCUMENTS", "SUMMARY"].map(String::from)];
    let mut notes = String::new();
    for r in &history.revisions {
        let revision = if r.unreadable.is_empty() {
            r.revision.to_string()
        } else {
            notes.push_str(&format!("revision {} cannot be read: {}\n", r.revision, r.unreadable));
            format!("{} (unreadable)", r.revision)
        };
        rows.push([
            revision,
            ago(r.created_unix_millis, now_unix_millis),
            r.operation.clone(),
            r.document_count.to_string(),
            r.summary.clone(),
        ]);
    }
    let newest = history.revisions.last().map_or(0, |r| r.revision);
    if history.serving_revision != newest {
        notes.push_str(&format!(
            "the hub serves revision {}, the newest it can read; `rollback --to {}` (or an apply) makes a new revision\n",
            history.serving_revision, history.serving_revision
        ));
    }
    render_table(&rows) + &notes
}

/// `EgressPolicy/name created` lines, with diffs when asked, and the revision line.
pub fn apply_result(response: &pb::ApplyResponse, dry_run: bool, show_diff: bool) -> String {
    let mut out = String::new();
    for change in &response.changes {
        out.push_str(&format!("{}/{} {}", change.kind, change.name, change.action));
        if dry_run {
            out.push_str(" (dry run)");
        }
        out.push('\n');
        if show_diff && !change.diff.is_empty() {
            out.push_str(&change.diff);
        }
    }
    if dry_run {
        out.push_str("dry run: nothing was committed\n");
    } else if response.revision == 0 {
        out.push_str("no change: no new revision\n");
    } else {
        out.push_str(&format!("revision {}\n", response.revision));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fleet() -> pb::FleetStatusResponse {
        pb::FleetStatusResponse {
            latest_revision: 7,
            store_id: "b2".into(),
            clusters: vec![
                pb::ClusterStatus {
                    cluster_id: "prod-eu".into(),
                    labels: [("env".to_string(), "prod".to_string())].into(),
                    connected: true,
                    last_seen_unix_millis: 1_000,
                    applied_revision: 7,
                    agents_total: 3,
                    agents_scoped: 2,
                    agents_allow_all: 0,
                    agents_baseline_only: 0,
                    agents_restricted: 1,
                    errors: 0,
                    conditions: vec![],
                },
                pb::ClusterStatus {
                    cluster_id: "dev".into(),
                    labels: Default::default(),
                    connected: false,
                    last_seen_unix_millis: 1_000,
                    applied_revision: 5,
                    agents_total: 1,
                    agents_scoped: 0,
                    agents_allow_all: 1,
                    agents_baseline_only: 0,
                    agents_restricted: 0,
                    errors: 1,
                    conditions: vec![pb::Condition {
                        r#type: pb::ConditionType::Diverged as i32,
                        reason: "OtherStore".into(),
                        message: "refused revision 1 of store b2; run `tollgate-hub clusters adopt dev`".into(),
                    }],
                },
            ],
            agents: vec![pb::AgentStatus {
                namespace: "team-a".into(),
                name: "weather".into(),
                labels: Default::default(),
                verified: true,
                verification_reason: "mTLSVerified".into(),
                mode: "scoped".into(),
                rule_count: 2,
                rule_sources: vec!["local".into(), "policy/llm-apis".into()],
                applied_revision: 7,
                errors: vec![],
                dropped_rules: vec![
                    "local rule 1 peer 0: 8.8.8.0/24 is outside the allowed destinations of guardrail prod".into(),
                ],
                plan_inputs: String::new(),
            }],
        }
    }

    #[test]
    fn cluster_table() {
        assert_eq!(
            clusters_table(&fleet(), 301_000),
            "\
CLUSTER   LABELS     CONNECTED   LAST SEEN   REVISION   AGENTS   SCOPED   ALLOW-ALL   BASELINE-ONLY   RESTRICTED   ERRORS   STATUS
prod-eu   env=prod   yes         now         7/7        3        2        0           0               1            0        Ready
dev       -          no          5m ago      5/7        1        0        1           0               0            1        Diverged
dev: Diverged: refused revision 1 of store b2; run `tollgate-hub clusters adopt dev`
"
        );
    }

    #[test]
    fn history_marks_unreadable_revisions_and_what_is_served() {
        let info = |revision, unreadable: &str| pb::RevisionInfo {
            revision,
            created_unix_millis: 1_000,
            operation: "apply".into(),
            summary: format!("apply EgressPolicy/p{revision}"),
            document_count: 1,
            unreadable: unreadable.into(),
        };
        let history = pb::HistoryResponse {
            revisions: vec![info(1, ""), info(2, "revision 2 document 1: unknown field `kind2`")],
            serving_revision: 1,
        };
        assert_eq!(
            history_table(&history, 61_000),
            "\
REVISION         CREATED   OPERATION   DOCUMENTS   SUMMARY
1                1m ago    apply       1           apply EgressPolicy/p1
2 (unreadable)   1m ago    apply       1           apply EgressPolicy/p2
revision 2 cannot be read: revision 2 document 1: unknown field `kind2`
the hub serves revision 1, the newest it can read; `rollback --to 1` (or an apply) makes a new revision
"
        );
        let readable = pb::HistoryResponse {
            revisions: vec![info(1, "")],
            serving_revision: 1,
        };
        assert!(!history_table(&readable, 61_000).contains("serves"));
    }

    #[test]
    fn agent_table() {
        assert_eq!(
            agents_table(&fleet()),
            "\
NAMESPACE   NAME      VERIFIED   REASON         MODE     RULES   SOURCES                 REVISION   LAST ERROR
team-a      weather   yes        mTLSVerified   scoped   2       local,policy/llm-apis   7          local rule 1 peer 0: 8.8.8.0/24 is outside the allowed destinations of guardrail prod
"
        );
    }

    #[test]
    fn apply_lines() {
        let response = pb::ApplyResponse {
            revision: 4,
            changes: vec![
                pb::DocumentChange {
                    kind: "EgressPolicy".into(),
                    name: "a".into(),
                    action: "created".into(),
                    diff: "+x\n".into(),
                },
                pb::DocumentChange {
                    kind: "EgressPolicy".into(),
                    name: "b".into(),
                    action: "unchanged".into(),
                    diff: String::new(),
                },
            ],
        };
        assert_eq!(
            apply_result(&response, false, false),
            "EgressPolicy/a created\nEgressPolicy/b unchanged\nrevision 4\n"
        );
        assert_eq!(
            apply_result(
                &pb::ApplyResponse {
                    revision: 0,
                    ..response
                },
                true,
                true
            ),
            "EgressPolicy/a created (dry run)\n+x\nEgressPolicy/b unchanged (dry run)\ndry run: nothing was committed\n"
        );
    }

    #[test]
    fn ages() {
        assert_eq!(ago(0, 10_000), "never");
        assert_eq!(ago(1_000, 43_000), "42s ago");
        assert_eq!(ago(1, 7_200_001), "2h ago");
        assert_eq!(ago(1, 3 * 86_400_000 + 1), "3d ago");
    }
}
