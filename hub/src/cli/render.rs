//! Pure rendering of CLI output: tables as literal text, and the same rows for `-o json|yaml`.

use serde::Serialize;
use tollgate_common::wire::{mode_name, reason_name};
use tollgate_proto::v1 as pb;

pub use crate::cli::validate::render_table;

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

/// `a=b,c=d`, sorted by key; `-` for none.
pub fn label_pairs(labels: &std::collections::BTreeMap<String, String>) -> String {
    if labels.is_empty() {
        return "-".to_string();
    }
    labels
        .iter()
        .map(|(k, v)| format!("{k}={v}"))
        .collect::<Vec<_>>()
        .join(",")
}

/// One registered cluster, as `clusters list` shows it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct RegistryRow {
    pub cluster: String,
    /// The labels `clusterSelector`s match.
    pub labels: std::collections::BTreeMap<String, String>,
    /// What its spoke reports (never used for selection).
    pub reported_labels: std::collections::BTreeMap<String, String>,
    pub registered_unix_millis: i64,
    pub connected: bool,
    pub last_seen_unix_millis: i64,
    pub spoke_version: String,
    pub certificate_not_after_unix_millis: i64,
}

pub fn registry_rows(response: &pb::ListClustersResponse) -> Vec<RegistryRow> {
    response
        .clusters
        .iter()
        .map(|c| RegistryRow {
            cluster: c.cluster_id.clone(),
            labels: c.labels.iter().map(|(k, v)| (k.clone(), v.clone())).collect(),
            reported_labels: c.reported_labels.iter().map(|(k, v)| (k.clone(), v.clone())).collect(),
            registered_unix_millis: c.registered_unix_millis,
            connected: c.connected,
            last_seen_unix_millis: c.last_seen_unix_millis,
            spoke_version: c.spoke_version.clone(),
            certificate_not_after_unix_millis: c.certificate_not_after_unix_millis,
        })
        .collect()
}

/// Time until `then`, for humans: `in 23h`, `in 9d`, or `expired 2h ago`; `-` when unknown.
pub fn until(then_unix_millis: i64, now_unix_millis: i64) -> String {
    if then_unix_millis <= 0 {
        return "-".to_string();
    }
    if then_unix_millis <= now_unix_millis {
        return format!("expired {}", ago(then_unix_millis, now_unix_millis));
    }
    let secs = (then_unix_millis - now_unix_millis) / 1000;
    match secs {
        0..60 => format!("in {secs}s"),
        60..3600 => format!("in {}m", secs / 60),
        3600..86_400 => format!("in {}h", secs / 3600),
        _ => format!("in {}d", secs / 86_400),
    }
}

/// `clusters list`: one line per registered cluster, with the labels its spoke reports where they differ.
pub fn registry_table(rows: &[RegistryRow], now_unix_millis: i64) -> String {
    let mut table = vec![
        [
            "CLUSTER",
            "LABELS",
            "REPORTED LABELS",
            "REGISTERED",
            "CONNECTED",
            "LAST SEEN",
            "SPOKE",
            "CERTIFICATE",
        ]
        .map(String::from),
    ];
    for row in rows {
        table.push([
            row.cluster.clone(),
            label_pairs(&row.labels),
            if row.last_seen_unix_millis <= 0 {
                "-".to_string()
            } else if row.reported_labels == row.labels {
                "(same)".to_string()
            } else {
                label_pairs(&row.reported_labels)
            },
            ago(row.registered_unix_millis, now_unix_millis),
            if row.connected { "yes" } else { "no" }.to_string(),
            ago(row.last_seen_unix_millis, now_unix_millis),
            if row.spoke_version.is_empty() {
                "-".to_string()
            } else {
                row.spoke_version.clone()
            },
            until(row.certificate_not_after_unix_millis, now_unix_millis),
        ]);
    }
    render_table(&table)
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
    /// Agents whose egress other NetworkPolicies widen.
    pub widened: u32,
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
            type_: tollgate_common::wire::condition_name(c.r#type),
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
            widened: c.agents_widened,
            conditions: condition_rows(&c.conditions),
        })
        .collect()
}

pub fn clusters_table(status: &pb::FleetStatusResponse, now_unix_millis: i64) -> String {
    clusters_view(status, now_unix_millis, Style::TABLE)
}

/// How a table is printed: `-o table` or `-o wide`, with or without the header line (and the notes under it).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Style {
    pub wide: bool,
    pub headers: bool,
}

impl Style {
    pub const TABLE: Self = Self {
        wide: false,
        headers: true,
    };
}

/// Rows (the first is the header) aligned in columns; the header and the notes under the table only with headers.
fn table(rows: Vec<Vec<String>>, style: Style, notes: &str) -> String {
    let width = rows.first().map_or(0, Vec::len);
    let mut widths = vec![0usize; width];
    let shown: Vec<&Vec<String>> = rows.iter().skip(usize::from(!style.headers)).collect();
    for row in &shown {
        for (i, cell) in row.iter().enumerate() {
            widths[i] = widths[i].max(cell.chars().count());
        }
    }
    let mut out = String::new();
    for row in shown {
        let line: Vec<String> = row
            .iter()
            .enumerate()
            .map(|(i, cell)| {
                if i + 1 < width {
                    format!("{cell:<width$}   ", width = widths[i])
                } else {
                    cell.clone()
                }
            })
            .collect();
        out.push_str(line.concat().trim_end());
        out.push('\n');
    }
    if style.headers {
        out.push_str(notes);
    }
    out
}

/// How far a cluster is behind the latest revision.
fn lag(status: &pb::FleetStatusResponse, cluster: &pb::ClusterStatus) -> u64 {
    status.latest_revision.saturating_sub(cluster.applied_revision)
}

/// The fleet's clusters as a table; `wide` adds the revision lag and the conditions' reasons.
pub fn clusters_view(status: &pb::FleetStatusResponse, now_unix_millis: i64, style: Style) -> String {
    if status.clusters.is_empty() {
        return if style.headers {
            NO_CLUSTER.to_string()
        } else {
            String::new()
        };
    }
    let mut header = vec![
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
        "WIDENED",
        "STATUS",
    ];
    if style.wide {
        header.extend(["LAG", "REASONS"]);
    }
    let mut rows = vec![header.into_iter().map(String::from).collect::<Vec<_>>()];
    let mut notes = String::new();
    for c in &status.clusters {
        for condition in condition_rows(&c.conditions) {
            notes.push_str(&format!(
                "{}: {}: {}\n",
                c.cluster_id, condition.type_, condition.message
            ));
        }
        let mut row = vec![
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
            c.agents_widened.to_string(),
            state_text(&c.conditions),
        ];
        if style.wide {
            let reasons: Vec<String> = condition_rows(&c.conditions).into_iter().map(|c| c.reason).collect();
            row.push(lag(status, c).to_string());
            row.push(if reasons.is_empty() {
                "-".to_string()
            } else {
                reasons.join(",")
            });
        }
        rows.push(row);
    }
    table(rows, style, &notes)
}

/// What `status` says when no cluster is registered yet: the next step, not a bare header.
pub const NO_CLUSTER: &str = "No cluster is registered on this hub yet. Register each with `tollgate-hub clusters add \
ID --labels KEY=VALUE`, then install the tollgate-spoke chart in it with hub.address set to this hub and a client \
certificate from `tollgate-hub certs spoke --cluster-id ID` (see deploy/charts/tollgate-spoke/README.md).\n";

/// `cluster/<id>`, one per line.
pub fn cluster_names(status: &pb::FleetStatusResponse) -> String {
    status
        .clusters
        .iter()
        .map(|c| format!("cluster/{}\n", c.cluster_id))
        .collect()
}

/// `agent/<namespace>/<name>`, one per line.
pub fn agent_names(status: &pb::FleetStatusResponse) -> String {
    status
        .agents
        .iter()
        .map(|a| format!("agent/{}/{}\n", a.namespace, a.name))
        .collect()
}

/// The order of `status --sort-by` (ascending, like kubectl; ties by cluster id).
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum SortBy {
    /// The cluster id.
    #[value(name = "cluster")]
    Cluster,
    /// When the hub last heard of the cluster (the longest silent first; connected clusters last).
    #[value(name = "lastSeen")]
    LastSeen,
    /// Revisions behind the latest.
    #[value(name = "lag")]
    Lag,
    /// Agents in the cluster.
    #[value(name = "agents")]
    Agents,
    /// Agents with errors.
    #[value(name = "errors")]
    Errors,
}

/// Keeps the clusters whose labels `selector` matches, and orders them.
pub fn select_clusters(
    status: &mut pb::FleetStatusResponse,
    selector: Option<&tollgate_common::LabelSelector>,
    sort_by: SortBy,
    now_unix_millis: i64,
) {
    if let Some(selector) = selector {
        status
            .clusters
            .retain(|c| selector.matches(&c.labels.clone().into_iter().collect()));
    }
    let latest = status.latest_revision;
    let key = |c: &pb::ClusterStatus| -> i64 {
        match sort_by {
            SortBy::Cluster => 0,
            SortBy::LastSeen if c.connected => now_unix_millis,
            SortBy::LastSeen => c.last_seen_unix_millis,
            SortBy::Lag => i64::try_from(latest.saturating_sub(c.applied_revision)).unwrap_or(i64::MAX),
            SortBy::Agents => i64::from(c.agents_total),
            SortBy::Errors => i64::from(c.errors),
        }
    };
    status
        .clusters
        .sort_by(|a, b| key(a).cmp(&key(b)).then_with(|| a.cluster_id.cmp(&b.cluster_id)));
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
    /// The DNS names its rules use.
    pub fqdn_names: Vec<String>,
    /// Other NetworkPolicies that select its pods and allow egress its own policy does not.
    pub widened_by: Vec<String>,
    /// Those names with their addresses in the cluster (`status --cluster ID --agent NS/NAME` only).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub resolved_names: Vec<NameRow>,
}

/// One DNS name of an agent's rules as its cluster resolves it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct NameRow {
    pub name: String,
    pub addresses: Vec<AddressRow>,
    /// Why the last lookup failed (the addresses are the last good ones).
    #[serde(skip_serializing_if = "String::is_empty")]
    pub error: String,
    pub nxdomain: bool,
    pub unstable: bool,
    /// Distinct addresses known (more than the policy's 64 when over the limit).
    pub known: u32,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct AddressRow {
    pub address: String,
    pub first_seen_unix: i64,
    /// When it was last in an answer, if it is no longer in the latest one (kept for the grace period).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub stale_since_unix: Option<i64>,
}

fn name_row(name: &pb::ResolvedName) -> NameRow {
    NameRow {
        name: name.name.clone(),
        addresses: name
            .addresses
            .iter()
            .map(|a| AddressRow {
                address: a.address.clone(),
                first_seen_unix: a.first_seen_unix,
                stale_since_unix: (a.stale_since_unix > 0).then_some(a.stale_since_unix),
            })
            .collect(),
        error: name.error.clone(),
        nxdomain: name.nxdomain,
        unstable: name.unstable,
        known: name.known,
    }
}

/// Keeps only agent `namespace/name` of a cluster's status; `false` when the cluster has no such agent.
pub fn select_agent(status: &mut pb::FleetStatusResponse, agent: &str) -> bool {
    status.agents.retain(|a| format!("{}/{}", a.namespace, a.name) == agent);
    !status.agents.is_empty()
}

pub fn agent_rows(status: &pb::FleetStatusResponse) -> Vec<AgentRow> {
    agent_rows_with(status, false)
}

/// The agent rows; with `names`, each with its names' addresses.
pub fn agent_rows_with(status: &pb::FleetStatusResponse, names: bool) -> Vec<AgentRow> {
    status
        .agents
        .iter()
        .map(|a| AgentRow {
            namespace: a.namespace.clone(),
            name: a.name.clone(),
            verified: a.verified,
            verification_reason: reason_name(a.verification_reason).to_string(),
            mode: mode_name(a.mode).to_string(),
            rule_count: a.rule_count,
            rule_sources: a.rule_sources.clone(),
            applied_revision: a.applied_revision,
            errors: a.errors.clone(),
            dropped_rules: a.dropped_rules.clone(),
            fqdn_names: a.fqdn_names.clone(),
            widened_by: a.widened_by.clone(),
            resolved_names: if names {
                status
                    .resolved_names
                    .iter()
                    .filter(|n| a.fqdn_names.contains(&n.name))
                    .map(name_row)
                    .collect()
            } else {
                Vec::new()
            },
        })
        .collect()
}

/// One agent with the addresses its names stand for in the cluster: one line per address (or per name without
/// any), with how long the address has been answered and whether it is only kept for the grace period.
pub fn agent_names_view(status: &pb::FleetStatusResponse, cluster: &str, now_unix: i64) -> String {
    let Some(agent) = status.agents.first() else {
        return String::new();
    };
    let mut out = format!(
        "Agent {}/{} in cluster {cluster}: {}, {} declared rule(s)",
        agent.namespace,
        agent.name,
        mode_name(agent.mode),
        agent.rule_count
    );
    if !agent.rule_sources.is_empty() {
        out.push_str(&format!(" from {}", agent.rule_sources.join(",")));
    }
    out.push('\n');
    if agent.fqdn_names.is_empty() {
        out.push_str("Its rules name no DNS names (fqdn).\n");
        return out;
    }
    out.push('\n');
    let age = |since: i64| ago(since * 1000, now_unix * 1000).trim_end_matches(" ago").to_string();
    let mut rows = vec![
        vec!["NAME", "ADDRESS", "AGE", "STATE"]
            .into_iter()
            .map(String::from)
            .collect::<Vec<_>>(),
    ];
    for name in &agent.fqdn_names {
        let Some(resolved) = status.resolved_names.iter().find(|n| &n.name == name) else {
            rows.push(vec![name.clone(), "-".into(), "-".into(), "not reported yet".into()]);
            continue;
        };
        let mut state = Vec::new();
        if !resolved.error.is_empty() {
            state.push(format!("lookup failed: {} (last good addresses kept)", resolved.error));
        }
        if resolved.nxdomain {
            state.push("NXDOMAIN".to_string());
        }
        if resolved.unstable {
            state.push("answers change on every lookup".to_string());
        }
        if resolved.known as usize > resolved.addresses.len() {
            state.push(format!(
                "{} addresses, only {} allowed",
                resolved.known,
                resolved.addresses.len()
            ));
        }
        if resolved.addresses.is_empty() {
            let state = if state.is_empty() {
                "no addresses".to_string()
            } else {
                state.join("; ")
            };
            rows.push(vec![name.clone(), "-".into(), "-".into(), state]);
        }
        for address in &resolved.addresses {
            let mut line = state.clone();
            if address.stale_since_unix > 0 {
                line.insert(
                    0,
                    format!("not answered for {} (grace period)", age(address.stale_since_unix)),
                );
            } else if line.is_empty() {
                line.push("answered".to_string());
            }
            rows.push(vec![
                name.clone(),
                address.address.clone(),
                age(address.first_seen_unix),
                line.join("; "),
            ]);
        }
    }
    out.push_str(&table(rows, Style::TABLE, ""));
    out
}

pub fn agents_table(status: &pb::FleetStatusResponse) -> String {
    agents_view(status, "", Style::TABLE)
}

/// One cluster's agents as a table; `wide` adds the counts of errors and dropped rules.
pub fn agents_view(status: &pb::FleetStatusResponse, cluster: &str, style: Style) -> String {
    if status.agents.is_empty() {
        return if style.headers {
            format!(
                "Cluster {cluster} reports no agents: no AgentRuntime in the namespaces its spoke watches (or the \
                 spoke has not reported yet).\n"
            )
        } else {
            String::new()
        };
    }
    let mut header = vec![
        "NAMESPACE",
        "NAME",
        "VERIFIED",
        "REASON",
        "MODE",
        "RULES",
        "SOURCES",
        "REVISION",
        "NAMES",
        "WIDENED",
        "LAST ERROR",
    ];
    if style.wide {
        header.extend(["ERRORS", "DROPPED"]);
    }
    let mut rows = vec![header.into_iter().map(String::from).collect::<Vec<_>>()];
    for a in &status.agents {
        let last_problem = a
            .errors
            .last()
            .or(a.dropped_rules.last())
            .cloned()
            .unwrap_or_else(|| "-".to_string());
        rows.push(vec![
            a.namespace.clone(),
            a.name.clone(),
            if a.verified { "yes" } else { "no" }.to_string(),
            reason_name(a.verification_reason).to_string(),
            mode_name(a.mode).to_string(),
            a.rule_count.to_string(),
            if a.rule_sources.is_empty() {
                "-".to_string()
            } else {
                a.rule_sources.join(",")
            },
            a.applied_revision.to_string(),
            if a.fqdn_names.is_empty() {
                "-".to_string()
            } else {
                a.fqdn_names.join(",")
            },
            if a.widened_by.is_empty() {
                "-".to_string()
            } else {
                format!("by {}", a.widened_by.join(","))
            },
            last_problem,
        ]);
        if style.wide {
            let row = rows.last_mut().expect("just pushed");
            row.push(a.errors.len().to_string());
            row.push(a.dropped_rules.len().to_string());
        }
    }
    table(rows, style, "")
}

pub fn history_table(history: &pb::HistoryResponse, now_unix_millis: i64) -> String {
    let mut rows = vec![["REVISION", "CREATED", "AUTHOR", "OPERATION", "DOCUMENTS", "SUMMARY"].map(String::from)];
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
            if r.author.is_empty() {
                "-".to_string()
            } else {
                r.author.clone()
            },
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

/// `major.minor` of a version, the unit of skew.
fn minor(version: &str) -> Option<(&str, &str)> {
    let mut parts = version.split('.');
    Some((parts.next()?, parts.next()?))
}

/// `version`: the client's, the hub's and each cluster's spoke version as text, and a warning for each skew (a
/// different major.minor than the hub's, or a spoke that reports none).
pub fn versions(client: &str, status: &pb::FleetStatusResponse) -> (String, Vec<String>) {
    let hub = status.hub_version.as_str();
    let mut text = format!("client: {client}\nhub:    {hub}\n");
    let mut warnings = Vec::new();
    if minor(client) != minor(hub) {
        warnings.push(format!(
            "the client is {client} and the hub {hub}: use a client of the hub's minor version"
        ));
    }
    if !status.clusters.is_empty() {
        let mut rows = vec![["CLUSTER".to_string(), "SPOKE".to_string()]];
        for c in &status.clusters {
            let spoke = if c.spoke_version.is_empty() {
                "-"
            } else {
                c.spoke_version.as_str()
            };
            rows.push([c.cluster_id.clone(), spoke.to_string()]);
            if c.spoke_version.is_empty() {
                warnings.push(format!("cluster {} has not reported its spoke's version", c.cluster_id));
            } else if minor(&c.spoke_version) != minor(hub) {
                warnings.push(format!(
                    "cluster {} runs spoke {spoke} and the hub is {hub}: upgrade the hub first, then every spoke \
                     to the hub's minor version (docs/runbooks.md, Upgrade)",
                    c.cluster_id
                ));
            }
        }
        text.push_str(&render_table(&rows));
    }
    (text, warnings)
}

/// `egresspolicy/<name>` lines, as `kubectl get -o name` prints them.
pub fn document_names(set: &tollgate_common::DocumentSet) -> String {
    set.documents()
        .map(|d| format!("{}/{}\n", d.kind().to_ascii_lowercase(), d.name()))
        .collect()
}

/// The documents of a kind as a table, then the revision; `wide` adds their labels. No document: the next step.
pub fn documents_view(set: &tollgate_common::DocumentSet, kind: &str, revision: u64, style: Style) -> String {
    if set.is_empty() {
        return if style.headers {
            format!("No {kind} on the hub at revision {revision}. Write one and `tollgate-hub apply -f FILE`.\n")
        } else {
            String::new()
        };
    }
    let mut header = vec!["KIND", "NAME", "CLUSTERS", "DETAILS"];
    if style.wide {
        header.push("LABELS");
    }
    let mut rows = vec![header.into_iter().map(String::from).collect::<Vec<_>>()];
    for document in set.documents() {
        let mut row = crate::cli::validate::summary_row(&document).to_vec();
        if style.wide {
            row.push(labels_text(&document.labels().clone().into_iter().collect()));
        }
        rows.push(row);
    }
    table(rows, style, &format!("revision {revision}\n"))
}

/// `describe`: the document, the clusters it selects now (with their state), and its YAML.
pub fn describe(document: &tollgate_common::Document, revision: u64, status: &pb::FleetStatusResponse) -> String {
    let [kind, name, clusters, details] = crate::cli::validate::summary_row(document);
    let mut out = format!(
        "Name:       {name}\nKind:       {kind}\nRevision:   {revision}\nLabels:     {}\nSelects:    {clusters}\n\
         Details:    {details}\nClusters:\n",
        labels_text(&document.labels().clone().into_iter().collect())
    );
    let selected: Vec<&pb::ClusterStatus> = status
        .clusters
        .iter()
        .filter(|c| {
            document
                .cluster_selector()
                .is_none_or(|s| s.matches(&c.labels.clone().into_iter().collect()))
        })
        .collect();
    if selected.is_empty() {
        out.push_str("  (none of the clusters the hub knows)\n");
    }
    for c in selected {
        out.push_str(&format!(
            "  {}: {}, revision {}/{}, {}\n",
            c.cluster_id,
            if c.connected { "connected" } else { "disconnected" },
            c.applied_revision,
            status.latest_revision,
            state_text(&c.conditions)
        ));
    }
    out.push_str("Document:\n");
    for line in document.to_yaml().lines() {
        out.push_str(&format!("  {line}\n"));
    }
    out
}

/// Why each cluster that is not healthy is not: disconnected, behind the latest revision, or with a condition.
pub fn unhealthy(status: &pb::FleetStatusResponse) -> Vec<(String, String)> {
    let mut out = Vec::new();
    for c in &status.clusters {
        let mut why = Vec::new();
        if !c.connected {
            why.push("disconnected".to_string());
        }
        if c.applied_revision < status.latest_revision {
            why.push(format!(
                "at revision {} of {}",
                c.applied_revision, status.latest_revision
            ));
        }
        why.extend(
            condition_rows(&c.conditions)
                .into_iter()
                .map(|c| format!("{} ({})", c.type_, c.reason)),
        );
        if !why.is_empty() {
            out.push((c.cluster_id.clone(), why.join(", ")));
        }
    }
    out
}

/// How `status --watch` prints to a pipe.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum WatchFormat {
    Table(Style),
    Json,
    Yaml,
    Name,
}

/// The rows of `current` that are new or changed since `previous` (all of them the first time), keyed by `key`.
fn changed<'a, R: PartialEq>(previous: &[R], current: &'a [R], key: impl Fn(&R) -> String) -> Vec<&'a R> {
    let before: std::collections::HashMap<String, &R> = previous.iter().map(|r| (key(r), r)).collect();
    current.iter().filter(|r| before.get(&key(r)) != Some(r)).collect()
}

/// Changed rows in `format`: JSON as one compact object per line, YAML as one document each, names, or table lines
/// (the header only the first time).
fn watch_lines<R: Serialize>(
    rows: &[&R],
    first: bool,
    format: WatchFormat,
    name: impl Fn(&R) -> String,
    table: impl Fn(Style) -> String,
) -> anyhow::Result<String> {
    let mut out = String::new();
    match format {
        WatchFormat::Json => {
            for row in rows {
                out.push_str(&serde_json::to_string(row)?);
                out.push('\n');
            }
        }
        WatchFormat::Yaml => {
            for row in rows {
                out.push_str("---\n");
                out.push_str(&serde_yaml_ng::to_string(row)?);
            }
        }
        WatchFormat::Name => rows.iter().for_each(|row| out.push_str(&format!("{}\n", name(row)))),
        WatchFormat::Table(style) if !rows.is_empty() || first => {
            out.push_str(&table(Style {
                headers: style.headers && first,
                ..style
            }));
        }
        WatchFormat::Table(_) => {}
    }
    Ok(out)
}

/// `status --watch` of the clusters, to a pipe: what changed since `previous`. A connected cluster's last-seen time
/// moves with every heartbeat and is not a change.
pub fn watch_clusters(
    previous: Option<&pb::FleetStatusResponse>,
    current: &pb::FleetStatusResponse,
    now_unix_millis: i64,
    format: WatchFormat,
) -> anyhow::Result<String> {
    let rows = |status: &pb::FleetStatusResponse| -> Vec<ClusterRow> {
        cluster_rows(status)
            .into_iter()
            .map(|mut row| {
                if row.connected {
                    row.last_seen_unix_millis = 0;
                }
                row
            })
            .collect()
    };
    let before = previous.map(rows).unwrap_or_default();
    let now = rows(current);
    let changed = changed(&before, &now, |r| r.cluster.clone());
    let ids: std::collections::HashSet<&str> = changed.iter().map(|r| r.cluster.as_str()).collect();
    let subset = pb::FleetStatusResponse {
        clusters: current
            .clusters
            .iter()
            .filter(|c| ids.contains(c.cluster_id.as_str()))
            .cloned()
            .collect(),
        ..current.clone()
    };
    let changed: Vec<ClusterRow> = cluster_rows(&subset);
    let changed: Vec<&ClusterRow> = changed.iter().collect();
    watch_lines(
        &changed,
        previous.is_none(),
        format,
        |r| format!("cluster/{}", r.cluster),
        |style| clusters_view(&subset, now_unix_millis, style),
    )
}

/// `status --cluster ID --watch` of the agents, to a pipe: what changed since `previous`.
pub fn watch_agents(
    previous: Option<&pb::FleetStatusResponse>,
    current: &pb::FleetStatusResponse,
    format: WatchFormat,
) -> anyhow::Result<String> {
    let before = previous.map(agent_rows).unwrap_or_default();
    let now = agent_rows(current);
    let changed = changed(&before, &now, |r| format!("{}/{}", r.namespace, r.name));
    let keys: std::collections::HashSet<(&str, &str)> = changed
        .iter()
        .map(|r| (r.namespace.as_str(), r.name.as_str()))
        .collect();
    let subset = pb::FleetStatusResponse {
        agents: current
            .agents
            .iter()
            .filter(|a| keys.contains(&(a.namespace.as_str(), a.name.as_str())))
            .cloned()
            .collect(),
        ..current.clone()
    };
    watch_lines(
        &changed,
        previous.is_none(),
        format,
        |r| format!("agent/{}/{}", r.namespace, r.name),
        |style| agents_view(&subset, "", style),
    )
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
            hub_version: "0.1.0".into(),
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
                    spoke_version: "0.1.0".into(),
                    agents_widened: 1,
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
                    spoke_version: "0.0.9".into(),
                    agents_widened: 0,
                },
            ],
            agents: vec![pb::AgentStatus {
                namespace: "team-a".into(),
                name: "weather".into(),
                labels: Default::default(),
                verified: true,
                verification_reason: pb::VerificationReason::MtlsVerified.into(),
                mode: pb::EgressMode::Scoped.into(),
                rule_count: 2,
                rule_sources: vec!["local".into(), "policy/llm-apis".into()],
                applied_revision: 7,
                errors: vec![],
                dropped_rules: vec![
                    "local rule 1 peer 0: 8.8.8.0/24 is outside the allowed destinations of guardrail prod".into(),
                ],
                plan_inputs: None,
                fqdn_names: vec!["api.openai.com".into()],
                widened_by: vec!["allow-all-egress".into()],
            }],
            resolved_names: vec![pb::ResolvedName {
                name: "api.openai.com".into(),
                addresses: vec![
                    pb::ResolvedAddress {
                        address: "198.51.100.4".into(),
                        first_seen_unix: 100,
                        stale_since_unix: 3_400,
                    },
                    pb::ResolvedAddress {
                        address: "203.0.113.9".into(),
                        first_seen_unix: 3_400,
                        stale_since_unix: 0,
                    },
                ],
                error: String::new(),
                nxdomain: false,
                unstable: false,
                known: 2,
            }],
        }
    }

    #[test]
    fn cluster_table() {
        assert_eq!(
            clusters_table(&fleet(), 301_000),
            "\
CLUSTER   LABELS     CONNECTED   LAST SEEN   REVISION   AGENTS   SCOPED   ALLOW-ALL   BASELINE-ONLY   RESTRICTED   ERRORS   WIDENED   STATUS
prod-eu   env=prod   yes         now         7/7        3        2        0           0               1            0        1         Ready
dev       -          no          5m ago      5/7        1        0        1           0               0            1        0         Diverged
dev: Diverged: refused revision 1 of store b2; run `tollgate-hub clusters adopt dev`
"
        );
    }

    #[test]
    fn versions_and_their_skew() {
        let (text, warnings) = versions("0.1.0", &fleet());
        assert_eq!(
            text,
            "client: 0.1.0\nhub:    0.1.0\nCLUSTER   SPOKE\nprod-eu   0.1.0\ndev       0.0.9\n"
        );
        assert_eq!(
            warnings,
            [
                "cluster dev runs spoke 0.0.9 and the hub is 0.1.0: upgrade the hub first, then every spoke to the \
              hub's minor version (docs/runbooks.md, Upgrade)"
            ]
        );
        let mut unreported = fleet();
        unreported.clusters.truncate(1);
        unreported.clusters[0].spoke_version.clear();
        let (text, warnings) = versions("0.2.3", &unreported);
        assert!(text.ends_with("prod-eu   -\n"), "{text}");
        assert_eq!(warnings.len(), 2, "{warnings:?}");
        assert!(
            warnings[0].starts_with("the client is 0.2.3 and the hub 0.1.0"),
            "{warnings:?}"
        );
        assert_eq!(
            versions(
                "0.1.7",
                &pb::FleetStatusResponse {
                    hub_version: "0.1.0".into(),
                    ..Default::default()
                }
            )
            .1
            .len(),
            0
        );
    }

    #[test]
    fn wide_name_and_headerless_cluster_views() {
        let wide = Style {
            wide: true,
            headers: true,
        };
        assert_eq!(
            clusters_view(&fleet(), 301_000, wide),
            "\
CLUSTER   LABELS     CONNECTED   LAST SEEN   REVISION   AGENTS   SCOPED   ALLOW-ALL   BASELINE-ONLY   RESTRICTED   ERRORS   WIDENED   STATUS     LAG   REASONS
prod-eu   env=prod   yes         now         7/7        3        2        0           0               1            0        1         Ready      0     -
dev       -          no          5m ago      5/7        1        0        1           0               0            1        0         Diverged   2     OtherStore
dev: Diverged: refused revision 1 of store b2; run `tollgate-hub clusters adopt dev`
"
        );
        let bare = Style {
            wide: false,
            headers: false,
        };
        assert_eq!(
            clusters_view(&fleet(), 301_000, bare),
            "\
prod-eu   env=prod   yes   now      7/7   3   2   0   0   1   0   1   Ready
dev       -          no    5m ago   5/7   1   0   1   0   0   1   0   Diverged
"
        );
        assert_eq!(cluster_names(&fleet()), "cluster/prod-eu\ncluster/dev\n");
        assert_eq!(agent_names(&fleet()), "agent/team-a/weather\n");
        let empty = pb::FleetStatusResponse::default();
        assert_eq!(clusters_view(&empty, 0, Style::TABLE), NO_CLUSTER);
        assert_eq!(clusters_view(&empty, 0, bare), "", "scripts get nothing");
        assert!(agents_view(&empty, "dev", Style::TABLE).starts_with("Cluster dev reports no agents"));
    }

    #[test]
    fn clusters_are_selected_by_label_and_sorted() {
        let ids = |status: &pb::FleetStatusResponse| -> Vec<String> {
            status.clusters.iter().map(|c| c.cluster_id.clone()).collect()
        };
        for (sort, expected) in [
            (SortBy::Cluster, ["dev", "prod-eu"]),
            (SortBy::LastSeen, ["dev", "prod-eu"]),
            (SortBy::Lag, ["prod-eu", "dev"]),
            (SortBy::Agents, ["dev", "prod-eu"]),
            (SortBy::Errors, ["prod-eu", "dev"]),
        ] {
            let mut status = fleet();
            select_clusters(&mut status, None, sort, 301_000);
            assert_eq!(ids(&status), expected, "{sort:?}");
        }
        let mut status = fleet();
        let prod = tollgate_common::LabelSelector::parse("env=prod").unwrap();
        select_clusters(&mut status, Some(&prod), SortBy::Cluster, 0);
        assert_eq!(ids(&status), ["prod-eu"]);
        let mut status = fleet();
        let not_prod = tollgate_common::LabelSelector::parse("env!=prod").unwrap();
        select_clusters(&mut status, Some(&not_prod), SortBy::Cluster, 0);
        assert_eq!(ids(&status), ["dev"]);
    }

    #[test]
    fn unhealthy_clusters_say_why() {
        assert_eq!(
            unhealthy(&fleet()),
            [(
                "dev".to_string(),
                "disconnected, at revision 5 of 7, Diverged (OtherStore)".to_string()
            )]
        );
        let mut healthy = fleet();
        healthy.clusters.truncate(1);
        assert!(unhealthy(&healthy).is_empty());
    }

    /// `status --watch` to a pipe: every row first (the header once), then only the rows that changed — a
    /// heartbeat of a connected cluster is not a change — and never a control character.
    #[test]
    fn watching_to_a_pipe_prints_changes_only_without_control_characters() {
        let first = fleet();
        let mut heartbeat = fleet();
        heartbeat.clusters[0].last_seen_unix_millis = 9_000;
        let mut reconnected = heartbeat.clone();
        reconnected.clusters[1].connected = true;
        reconnected.clusters[1].applied_revision = 7;
        reconnected.clusters[1].conditions.clear();
        let table = WatchFormat::Table(Style::TABLE);
        let frames = [
            watch_clusters(None, &first, 301_000, table).unwrap(),
            watch_clusters(Some(&first), &heartbeat, 302_000, table).unwrap(),
            watch_clusters(Some(&heartbeat), &reconnected, 303_000, table).unwrap(),
        ];
        assert!(frames[0].starts_with("CLUSTER   LABELS"), "{}", frames[0]);
        assert_eq!(
            frames[0]
                .lines()
                .filter(|l| l.starts_with("prod-eu") || l.starts_with("dev "))
                .count(),
            2
        );
        assert_eq!(frames[1], "", "a heartbeat is not a change");
        assert_eq!(
            frames[2],
            "dev   -   yes   now   7/7   1   0   1   0   0   1   0   Ready\n"
        );
        let json = WatchFormat::Json;
        let lines = [
            watch_clusters(None, &first, 301_000, json).unwrap(),
            watch_clusters(Some(&heartbeat), &reconnected, 303_000, json).unwrap(),
        ];
        assert_eq!(lines[0].lines().count(), 2, "one object per line: {}", lines[0]);
        assert_eq!(lines[1].lines().count(), 1);
        let row: serde_json::Value = serde_json::from_str(lines[1].trim()).unwrap();
        assert_eq!(
            (row["cluster"].as_str(), row["connected"].as_bool()),
            (Some("dev"), Some(true))
        );
        assert_eq!(
            watch_clusters(Some(&heartbeat), &reconnected, 0, WatchFormat::Name).unwrap(),
            "cluster/dev\n"
        );
        let yaml = watch_clusters(Some(&heartbeat), &reconnected, 0, WatchFormat::Yaml).unwrap();
        assert!(yaml.starts_with("---\ncluster: dev\n"), "{yaml}");
        for text in frames.iter().chain(&lines).chain([&yaml]) {
            assert!(!text.chars().any(|c| c.is_control() && c != '\n'), "{text:?}");
        }
        let mut changed_agent = fleet();
        changed_agent.agents[0].mode = pb::EgressMode::Restricted.into();
        assert_eq!(
            watch_agents(Some(&fleet()), &changed_agent, WatchFormat::Name).unwrap(),
            "agent/team-a/weather\n"
        );
        assert_eq!(watch_agents(Some(&fleet()), &fleet(), WatchFormat::Json).unwrap(), "");
    }

    #[test]
    fn the_registry_table_shows_reported_labels_where_they_differ_and_certificate_expiry() {
        let cluster = |id: &str, reported: &[(&str, &str)], last_seen, not_after| pb::RegisteredCluster {
            cluster_id: id.into(),
            labels: [("env".to_string(), "prod".to_string())].into(),
            reported_labels: reported.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect(),
            registered_unix_millis: 1_000,
            connected: last_seen > 0,
            last_seen_unix_millis: last_seen,
            spoke_version: if last_seen > 0 { "0.1.0".into() } else { String::new() },
            certificate_not_after_unix_millis: not_after,
        };
        let response = pb::ListClustersResponse {
            clusters: vec![
                cluster("east", &[("env", "prod")], 3_601_000, 3_601_000 + 23 * 3_600_000),
                cluster("new", &[], 0, 0),
                cluster("west", &[("env", "dev")], 3_601_000, 1_000),
            ],
        };
        assert_eq!(
            registry_table(&registry_rows(&response), 3_601_000),
            "\
CLUSTER   LABELS     REPORTED LABELS   REGISTERED   CONNECTED   LAST SEEN   SPOKE   CERTIFICATE
east      env=prod   (same)            1h ago       yes         0s ago      0.1.0   in 23h
new       env=prod   -                 1h ago       no          never       -       -
west      env=prod   env=dev           1h ago       yes         0s ago      0.1.0   expired 1h ago
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
            author: if revision == 1 { String::new() } else { "alice".into() },
        };
        let history = pb::HistoryResponse {
            revisions: vec![info(1, ""), info(2, "revision 2 document 1: unknown field `kind2`")],
            serving_revision: 1,
        };
        assert_eq!(
            history_table(&history, 61_000),
            "\
REVISION         CREATED   AUTHOR   OPERATION   DOCUMENTS   SUMMARY
1                1m ago    -        apply       1           apply EgressPolicy/p1
2 (unreadable)   1m ago    alice    apply       1           apply EgressPolicy/p2
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
NAMESPACE   NAME      VERIFIED   REASON         MODE     RULES   SOURCES                 REVISION   NAMES            WIDENED               LAST ERROR
team-a      weather   yes        mTLSVerified   scoped   2       local,policy/llm-apis   7          api.openai.com   by allow-all-egress   local rule 1 peer 0: 8.8.8.0/24 is outside the allowed destinations of guardrail prod
"
        );
    }

    #[test]
    fn one_agent_shows_its_names_addresses_and_their_age() {
        let mut status = fleet();
        assert!(!select_agent(&mut status.clone(), "team-a/other"));
        assert!(select_agent(&mut status, "team-a/weather"));
        assert_eq!(
            agent_names_view(&status, "prod-eu", 3_700),
            "\
Agent team-a/weather in cluster prod-eu: scoped, 2 declared rule(s) from local,policy/llm-apis

NAME             ADDRESS        AGE   STATE
api.openai.com   198.51.100.4   1h    not answered for 5m (grace period)
api.openai.com   203.0.113.9    5m    answered
"
        );
        let rows = agent_rows_with(&status, true);
        assert_eq!(rows[0].resolved_names[0].addresses[0].stale_since_unix, Some(3_400));
        assert_eq!(rows[0].resolved_names[0].addresses[1].stale_since_unix, None);
        let yaml = serde_yaml_ng::to_string(&rows).unwrap();
        assert!(yaml.contains("firstSeenUnix: 3400"), "{yaml}");
        assert!(
            !serde_yaml_ng::to_string(&agent_rows(&status))
                .unwrap()
                .contains("resolvedNames"),
            "addresses only for one agent"
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
