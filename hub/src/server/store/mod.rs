//! The hub's store: revisioned fleet intent with its full history, and what the hub knows about each cluster.
//!
//! Every successful apply, delete or rollback is one [`Store::commit`]: one transaction creating one new revision,
//! numbered `latest + 1` from 1, that holds the *complete* document set of that revision. Keeping every set (not
//! diffs) makes history and rollback exact: rolling back to revision `n` commits `revision(n).documents` again as
//! a new revision. Clusters, their agent inventory with per-agent status, and each cluster's applied revision are
//! persisted alongside.
//!
//! The store is a small trait; the hub is generic over `S: Store`. [`SqliteStore`] is the embedded default (one
//! SQLite file in the data folder, one hub); [`PgStore`] is shared by several hub replicas (PostgreSQL).
//! Concurrency between writers is optimistic: a commit names the revision it was computed from and fails with
//! [`StoreError::Conflict`] when another commit landed first, so the caller re-reads and retries.

use std::collections::BTreeMap;
use std::fmt;
use std::future::Future;
use std::str::FromStr;

use prost::Message;
use serde::{Deserialize, Serialize};
use tollgate_common::document::DocumentSet;
use tollgate_common::planner::Mode;
use tollgate_common::verification::Reason;
use tollgate_proto::v1 as pb;

pub mod backup;
pub mod facts;
pub mod postgres;
pub mod sqlite;

pub use postgres::PgStore;
pub use sqlite::SqliteStore;

/// What created a revision.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Operation {
    /// `tollgate-hub apply`: documents added or replaced (or pruned with `--prune`).
    Apply,
    /// `tollgate-hub delete KIND NAME`.
    Delete,
    /// `tollgate-hub rollback --to REV`: the set of an earlier revision, committed again.
    Rollback,
}

impl Operation {
    /// The stored and displayed name: `apply`, `delete` or `rollback`.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Apply => "apply",
            Self::Delete => "delete",
            Self::Rollback => "rollback",
        }
    }

    /// The inverse of [`Operation::as_str`]; `None` for any other text.
    pub fn parse(text: &str) -> Option<Self> {
        match text {
            "apply" => Some(Self::Apply),
            "delete" => Some(Self::Delete),
            "rollback" => Some(Self::Rollback),
            _ => None,
        }
    }
}

impl fmt::Display for Operation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for Operation {
    type Err = String;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        Self::parse(text).ok_or_else(|| format!("unknown operation {text:?} (expected apply, delete or rollback)"))
    }
}

/// One entry of the history: a revision without its documents.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct RevisionInfo {
    /// Monotonic from 1; 0 is the empty set before the first commit.
    pub number: u64,
    /// When it was committed (the caller's clock), in milliseconds since the Unix epoch.
    pub created_unix_millis: i64,
    pub operation: Operation,
    /// A one-line human summary given by the caller (for example `apply: +EgressPolicy/llm-apis`).
    pub summary: String,
    /// How many documents the revision's set holds.
    pub document_count: u32,
    /// Who committed it: the admin's certificate name, `(plaintext)` in development mode, empty for revisions
    /// committed before authors were recorded.
    pub author: String,
}

impl RevisionInfo {
    /// Revision 0: the empty set before the first commit (operation `apply`, time 0, empty summary).
    pub fn initial() -> Self {
        Self {
            number: 0,
            created_unix_millis: 0,
            operation: Operation::Apply,
            summary: String::new(),
            document_count: 0,
            author: String::new(),
        }
    }
}

/// A revision with its complete document set.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Revision {
    pub info: RevisionInfo,
    pub documents: DocumentSet,
}

impl Revision {
    /// Revision 0: the empty set before the first commit.
    pub fn initial() -> Self {
        Self {
            info: RevisionInfo::initial(),
            documents: DocumentSet::default(),
        }
    }
}

/// What became of a join token presented by a spoke.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TokenUse {
    /// It matched and was valid; it is used up now.
    Accepted,
    /// No token of this cluster has this secret (never made, used already, or replaced by a newer one).
    Unknown,
    /// It matched but had expired.
    Expired,
}

/// One cluster of the hub's registry: what an admin set (`clusters add`, `clusters label`).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Registration {
    pub id: String,
    /// The labels `clusterSelector`s match, set by admins (never by the spoke).
    pub labels: BTreeMap<String, String>,
    /// Certificates of this cluster valid from this time or earlier (milliseconds since the Unix epoch) are
    /// refused: the id was removed then, and those certificates were issued before the removal. 0: none refused.
    pub refuse_certificates_before_unix_millis: i64,
    /// An admin asked the cluster to adopt this hub's latest revision (`clusters adopt`).
    pub adopt_requested: bool,
}

/// What a spoke says in its hello that the store records.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Hello {
    pub id: String,
    /// The labels the spoke reports (shown, never selected by).
    pub reported: BTreeMap<String, String>,
    /// When its client certificate expires (0: plaintext).
    pub certificate_not_after_unix_millis: i64,
}

/// What the hub knows about one registered cluster (one spoke).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ClusterRecord {
    /// The cluster id, as in the spoke's certificate.
    pub id: String,
    /// The labels `clusterSelector`s match: the registry's, set by admins.
    pub labels: BTreeMap<String, String>,
    /// The labels the spoke said hello with last: shown, never used for selection.
    pub reported_labels: BTreeMap<String, String>,
    /// When an admin registered the cluster, in milliseconds since the Unix epoch.
    pub registered_unix_millis: i64,
    /// See [`Registration::refuse_certificates_before_unix_millis`].
    pub refuse_certificates_before_unix_millis: i64,
    /// The expiry of the client certificate of the spoke's last hello; 0: unknown.
    pub certificate_not_after_unix_millis: i64,
    /// The first hello, in milliseconds since the Unix epoch (0: never connected); never changes once set.
    pub first_seen_unix_millis: i64,
    /// The latest message of any kind from the spoke.
    pub last_seen_unix_millis: i64,
    /// The latest cluster facts (API/DNS endpoints, Kubernetes version) as the hub encoded them in JSON.
    pub facts_json: Option<String>,
    /// The revision the spoke last acknowledged as applied; 0 when none.
    pub applied_revision: u64,
    /// The hub replica holding the spoke's stream, renewed with `last_seen` while it lasts; `None` once it ended.
    pub connected_replica: Option<String>,
    /// The conditions the spoke reported last (Diverged, IntentNotPersisted, …).
    pub conditions: Vec<StoredCondition>,
    /// An admin asked that the cluster take this hub's intent (`clusters adopt`) and it has not acknowledged it
    /// yet.
    pub adopt_requested: bool,
}

/// A condition a spoke reported, as stored and shown by `status`.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct StoredCondition {
    /// `Diverged`, `IntentNotPersisted`, `PoliciesHeld` or `LocalRulesUnavailable`.
    #[serde(rename = "type")]
    pub type_: String,
    pub reason: String,
    pub message: String,
}

/// What the hub learned from one spoke since its last write, written with every other spoke's in one transaction
/// ([`Store::record_reports`]). `None` fields are left as they are.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct ClusterReport {
    pub id: String,
    /// The latest cluster facts, JSON (see [`ClusterRecord::facts_json`]).
    pub facts_json: Option<String>,
    /// The complete agent inventory (agents not listed are removed).
    pub inventory: Option<Vec<AgentRecord>>,
    /// The latest revision acknowledged as applied.
    pub applied_revision: Option<u64>,
    /// The spoke's conditions (all of them; an empty list clears them).
    pub conditions: Option<Vec<StoredCondition>>,
    /// When the hub last heard from the spoke; `last_seen` never moves backwards.
    pub last_seen_unix_millis: i64,
}

/// One entry of the history, and whether its documents can still be read.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HistoryEntry {
    pub info: RevisionInfo,
    /// Why the stored revision cannot be read (`None`: readable).
    pub unreadable: Option<String>,
}

/// The newest revision the hub can serve.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Readable {
    /// The newest committed revision number: the parent of the next commit.
    pub newest: u64,
    /// The newest revision that reads back (equal to `newest` unless newer ones are unreadable).
    pub revision: Revision,
    /// Newer revisions that could not be read, newest first, with the reason.
    pub skipped: Vec<(u64, String)>,
}

/// One agent of a cluster's inventory, with its status as the spoke reported it.
#[derive(Clone, Debug, PartialEq)]
pub struct AgentRecord {
    pub namespace: String,
    /// The `AgentRuntime` name.
    pub name: String,
    /// The `AgentRuntime` labels.
    pub labels: BTreeMap<String, String>,
    pub verified: bool,
    /// Why the agent is (not) verified.
    pub verification_reason: Reason,
    pub mode: Mode,
    /// How many egress rules its NetworkPolicy carries (baseline excluded).
    pub rule_count: u32,
    /// Where its rules came from (`local`, `EgressPolicy/NAME`, …).
    pub rule_sources: Vec<String>,
    /// The hub revision its NetworkPolicy was last written from; 0 when none.
    pub applied_revision: u64,
    /// Errors (invalid local rules, failed writes).
    pub errors: Vec<String>,
    /// Local rules (or peers) dropped by a guardrail ceiling, described.
    pub dropped: Vec<String>,
    /// What the planner needs to preview this agent under other intent (`plan`), as the spoke reported it
    /// (stored as its protobuf encoding; `None` when not reported).
    pub plan_inputs: Option<pb::PlanInputs>,
    /// The DNS names its rules use (their addresses are in the cluster's facts).
    pub fqdn_names: Vec<String>,
    /// Other NetworkPolicies that widen its egress.
    pub widened_by: Vec<String>,
}

/// Why a store operation failed. The database's own error is kept as the [`std::error::Error::source`].
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// Optimistic concurrency: the commit was computed from `expected`, but `actual` is the latest now.
    #[error("revision {expected} is no longer the latest (now {actual}): another change was committed first")]
    Conflict { expected: u64, actual: u64 },
    /// The revision was never committed.
    #[error("revision {0} does not exist")]
    NoSuchRevision(u64),
    /// A stored revision no longer parses or validates.
    #[error("stored revision {revision} is unreadable: {reason}")]
    Corrupt { revision: u64, reason: String },
    /// A report about a cluster that is not registered (removed while its reports waited).
    #[error("cluster {0:?} is not registered")]
    NotRegistered(String),
    /// A stored value other than a revision no longer reads back.
    #[error("stored {what} is unreadable")]
    Unreadable {
        what: String,
        #[source]
        source: BoxError,
    },
    /// The store cannot be used as it is: locked by another process, a newer schema, a refused setting, a value out
    /// of range.
    #[error("{0}")]
    Invalid(String),
    /// The database or the file system failed.
    #[error("{context}")]
    Backend {
        context: String,
        #[source]
        source: BoxError,
    },
}

/// The underlying error of a [`StoreError`].
pub type BoxError = Box<dyn std::error::Error + Send + Sync>;

impl StoreError {
    /// A failure of the database or the file system while doing `context`.
    pub(crate) fn backend(context: impl fmt::Display, source: impl Into<BoxError>) -> Self {
        Self::Backend {
            context: context.to_string(),
            source: source.into(),
        }
    }

    /// The same error, said to have happened in `place` (a file, a database).
    pub(crate) fn within(self, place: impl fmt::Display) -> Self {
        match self {
            Self::Backend { context, source } => Self::Backend {
                context: format!("{place}: {context}"),
                source,
            },
            Self::Invalid(message) => Self::Invalid(format!("{place}: {message}")),
            other => other,
        }
    }
}

/// Persistence of the hub: revisioned intent with history, and fleet status.
///
/// Every method is one transaction; a method that returns `Ok` has made its change durable. Methods take the
/// caller's clock (`now_unix_millis`) so that tests are deterministic and one hub uses one clock.
pub trait Store: Send + Sync + 'static {
    /// The latest revision ([`Revision::initial`], number 0 with an empty set, when nothing was ever committed).
    fn latest(&self) -> impl Future<Output = Result<Revision, StoreError>> + Send;

    /// Revision `number`, exactly as committed; 0 is [`Revision::initial`]. [`StoreError::NoSuchRevision`] when it
    /// was never committed.
    fn revision(&self, number: u64) -> impl Future<Output = Result<Revision, StoreError>> + Send;

    /// The newest committed revision number (0 when nothing was ever committed), whether or not it reads back.
    fn latest_number(&self) -> impl Future<Output = Result<u64, StoreError>> + Send;

    /// The newest revision that reads back, skipping newer ones that do not (reported in [`Readable::skipped`]):
    /// a hub never stops serving because of a stored revision it cannot read.
    fn latest_readable(&self) -> impl Future<Output = Result<Readable, StoreError>> + Send {
        async move {
            let newest = self.latest_number().await?;
            let mut skipped = Vec::new();
            let mut number = newest;
            loop {
                match self.revision(number).await {
                    Ok(revision) => {
                        return Ok(Readable {
                            newest,
                            revision,
                            skipped,
                        });
                    }
                    // Revision 0 always reads, so this ends.
                    Err(StoreError::Corrupt { revision, reason }) if number > 0 => {
                        skipped.push((revision, reason));
                        number -= 1;
                    }
                    Err(error) => return Err(error),
                }
            }
        }
    }

    /// Every committed revision, oldest first (revision 0 is not listed), each checked for readability.
    fn history(&self) -> impl Future<Output = Result<Vec<HistoryEntry>, StoreError>> + Send;

    /// This store's identity: a random 128-bit id (hex), created with the store and shared by every replica of
    /// one database. Every intent carries it, so a spoke can tell a hub on another (or a new, empty) store.
    fn store_id(&self) -> &str;

    /// Whether the store answers (the hub's readiness).
    fn ping(&self) -> impl Future<Output = Result<(), StoreError>> + Send;

    /// Commits `documents` as revision `parent + 1` in one transaction, if `parent` is still the latest
    /// (optimistic concurrency: [`StoreError::Conflict`] otherwise, and nothing is written). Durable when it
    /// returns `Ok`.
    fn commit(
        &self,
        parent: u64,
        operation: Operation,
        summary: &str,
        author: &str,
        documents: &DocumentSet,
        now_unix_millis: i64,
    ) -> impl Future<Output = Result<RevisionInfo, StoreError>> + Send;

    /// Registers clusters `ids` with the labels `clusterSelector`s match, in one transaction, all or nothing:
    /// returns the ids registered already (and then registers none). A cluster removed earlier keeps refusing the
    /// certificates issued before its removal.
    fn register_clusters(
        &self,
        ids: &[String],
        labels: &BTreeMap<String, String>,
        now_unix_millis: i64,
    ) -> impl Future<Output = Result<Vec<String>, StoreError>> + Send;

    /// Registers one cluster ([`Store::register_clusters`]); `false` (and nothing changes) when it is registered
    /// already.
    fn register_cluster(
        &self,
        id: &str,
        labels: &BTreeMap<String, String>,
        now_unix_millis: i64,
    ) -> impl Future<Output = Result<bool, StoreError>> + Send {
        async move {
            let existing = self
                .register_clusters(&[id.to_string()], labels, now_unix_millis)
                .await?;
            Ok(existing.is_empty())
        }
    }

    /// Sets and removes labels of a registered cluster in one transaction; the labels it has now, or `None` when
    /// it is not registered (nothing changes).
    fn label_cluster(
        &self,
        id: &str,
        set: &BTreeMap<String, String>,
        remove: &[String],
    ) -> impl Future<Output = Result<Option<BTreeMap<String, String>>, StoreError>> + Send;

    /// Removes cluster `id` from the registry with everything recorded about it (inventory, facts); from now on
    /// its certificates issued until `now_unix_millis` are refused, even if the id is registered again. `false`
    /// when it was not registered.
    fn remove_cluster(&self, id: &str, now_unix_millis: i64) -> impl Future<Output = Result<bool, StoreError>> + Send;

    /// Stores the join token of registered cluster `id` (the SHA-256 of its secret, hex) until `expires_unix_millis`,
    /// replacing an earlier one; `false` when the cluster is not registered.
    fn put_join_token(
        &self,
        id: &str,
        secret_sha256: &str,
        expires_unix_millis: i64,
    ) -> impl Future<Output = Result<bool, StoreError>> + Send;

    /// Uses cluster `id`'s join token, once: [`TokenUse::Accepted`] (and the token is gone) when the secret's digest
    /// matches and it has not expired. A wrong secret leaves the token as it is; an expired one is removed.
    fn take_join_token(
        &self,
        id: &str,
        secret_sha256: &str,
        now_unix_millis: i64,
    ) -> impl Future<Output = Result<TokenUse, StoreError>> + Send;

    /// Every registered cluster's registration, sorted by id (what a replica compares its streams with).
    fn registrations(&self) -> impl Future<Output = Result<Vec<Registration>, StoreError>> + Send;

    /// A spoke of cluster `id` said hello with `reported` labels and a client certificate valid until
    /// `certificate_not_after_unix_millis` (0: plaintext): records them and `last_seen` (and `first_seen` the first
    /// time) and returns its registration, or `None` (nothing written) when `id` is not registered.
    fn hello(
        &self,
        id: &str,
        reported: &BTreeMap<String, String>,
        certificate_not_after_unix_millis: i64,
        now_unix_millis: i64,
    ) -> impl Future<Output = Result<Option<Registration>, StoreError>> + Send {
        let hello = Hello {
            id: id.to_string(),
            reported: reported.clone(),
            certificate_not_after_unix_millis,
        };
        async move {
            let mut registrations = self.hellos(std::slice::from_ref(&hello), now_unix_millis).await?;
            Ok(registrations.pop().flatten())
        }
    }

    /// [`Store::hello`] for many spokes in one transaction (a reconnect storm commits once, not once per spoke): one
    /// registration (or `None`) per hello, in order.
    fn hellos(
        &self,
        hellos: &[Hello],
        now_unix_millis: i64,
    ) -> impl Future<Output = Result<Vec<Option<Registration>>, StoreError>> + Send;

    /// Writes the reports of many clusters in one transaction: for each, the fields it holds, and `last_seen`.
    /// Returns the ids that are not registered (nothing is written for them). A report whose inventory names one
    /// agent twice refuses the whole batch and changes nothing.
    fn record_reports(&self, reports: &[ClusterReport])
    -> impl Future<Output = Result<Vec<String>, StoreError>> + Send;

    /// Replaces a cluster's facts (JSON, stored as given) and sets `last_seen`.
    fn record_facts(
        &self,
        id: &str,
        facts_json: &str,
        now_unix_millis: i64,
    ) -> impl Future<Output = Result<(), StoreError>> + Send {
        self.record_one(ClusterReport {
            id: id.to_string(),
            facts_json: Some(facts_json.to_string()),
            last_seen_unix_millis: now_unix_millis,
            ..ClusterReport::default()
        })
    }

    /// Replaces the cluster's whole agent inventory in one transaction (agents not listed are removed) and sets
    /// `last_seen`. An inventory naming one agent twice is refused and changes nothing.
    fn record_inventory(
        &self,
        id: &str,
        agents: &[AgentRecord],
        now_unix_millis: i64,
    ) -> impl Future<Output = Result<(), StoreError>> + Send {
        self.record_one(ClusterReport {
            id: id.to_string(),
            inventory: Some(agents.to_vec()),
            last_seen_unix_millis: now_unix_millis,
            ..ClusterReport::default()
        })
    }

    /// Records the revision the cluster acknowledged as applied and sets `last_seen`.
    fn record_applied(
        &self,
        id: &str,
        revision: u64,
        now_unix_millis: i64,
    ) -> impl Future<Output = Result<(), StoreError>> + Send {
        self.record_one(ClusterReport {
            id: id.to_string(),
            applied_revision: Some(revision),
            last_seen_unix_millis: now_unix_millis,
            ..ClusterReport::default()
        })
    }

    /// Sets `last_seen` only (heartbeats).
    fn touch(&self, id: &str, now_unix_millis: i64) -> impl Future<Output = Result<(), StoreError>> + Send {
        self.record_one(ClusterReport {
            id: id.to_string(),
            last_seen_unix_millis: now_unix_millis,
            ..ClusterReport::default()
        })
    }

    /// One cluster's report; an unregistered cluster is an error.
    fn record_one(&self, report: ClusterReport) -> impl Future<Output = Result<(), StoreError>> + Send {
        async move {
            let unknown = self.record_reports(std::slice::from_ref(&report)).await?;
            match unknown.first() {
                Some(id) => Err(unknown_cluster(id)),
                None => Ok(()),
            }
        }
    }

    /// Asks that cluster `id` take this hub's intent even from another store or at a lower revision than its own
    /// (`clusters adopt`); `false` when the cluster is not registered.
    fn request_adopt(&self, id: &str) -> impl Future<Output = Result<bool, StoreError>> + Send;

    /// Clears the adoption request of cluster `id` (the spoke acknowledged this store's intent).
    fn clear_adopt(&self, id: &str) -> impl Future<Output = Result<(), StoreError>> + Send;

    /// Whether an adoption of cluster `id` is pending.
    fn adopt_requested(&self, id: &str) -> impl Future<Output = Result<bool, StoreError>> + Send;

    /// Records that `replica` holds the streams of these clusters now: sets their `connected_replica` and
    /// `last_seen` (one statement, renewed by each replica once per heartbeat period). Unknown ids are ignored.
    fn record_connections(
        &self,
        replica: &str,
        clusters: &[String],
        now_unix_millis: i64,
    ) -> impl Future<Output = Result<(), StoreError>> + Send;

    /// Records the end of `replica`'s stream of cluster `id`: clears `connected_replica` if it still names
    /// `replica` (another replica may hold a newer stream) and sets `last_seen`.
    fn record_disconnect(
        &self,
        id: &str,
        replica: &str,
        now_unix_millis: i64,
    ) -> impl Future<Output = Result<(), StoreError>> + Send;

    /// Every registered cluster, sorted by id.
    fn clusters(&self) -> impl Future<Output = Result<Vec<ClusterRecord>, StoreError>> + Send;

    /// The inventory of one cluster, sorted by namespace then name (empty for an unknown cluster).
    fn agents(&self, cluster_id: &str) -> impl Future<Output = Result<Vec<AgentRecord>, StoreError>> + Send;
}

/// The error for a report about a cluster that is not registered.
pub(crate) fn unknown_cluster(id: &str) -> StoreError {
    StoreError::NotRegistered(id.to_string())
}

/// `labels` with `set` applied and the keys in `remove` removed: what `clusters label` stores.
pub(crate) fn relabelled(
    mut labels: BTreeMap<String, String>,
    set: &BTreeMap<String, String>,
    remove: &[String],
) -> BTreeMap<String, String> {
    for key in remove {
        labels.remove(key);
    }
    labels.extend(set.iter().map(|(k, v)| (k.clone(), v.clone())));
    labels
}

/// Parses and validates a stored revision's YAML against its record, as both backends store it.
pub(crate) fn decode_revision(info: RevisionInfo, yaml: &str) -> Result<Revision, StoreError> {
    let number = info.number;
    let documents =
        DocumentSet::from_yaml(&format!("revision {number}"), yaml).map_err(|errors| StoreError::Corrupt {
            revision: number,
            reason: errors.iter().map(ToString::to_string).collect::<Vec<_>>().join("; "),
        })?;
    if documents.len() != info.document_count as usize {
        return Err(StoreError::Corrupt {
            revision: number,
            reason: format!(
                "holds {} documents, its record says {}",
                documents.len(),
                info.document_count
            ),
        });
    }
    Ok(Revision { info, documents })
}

/// Decodes a stored revision for the history: its readability, never an error (a row whose record itself is
/// damaged is listed with what could be read).
pub(crate) fn history_entry(info: Result<RevisionInfo, StoreError>, number: u64, yaml: &str) -> HistoryEntry {
    match info {
        Ok(info) => {
            let unreadable = decode_revision(info.clone(), yaml).err().map(|e| reason_of(&e));
            HistoryEntry { info, unreadable }
        }
        Err(error) => HistoryEntry {
            info: RevisionInfo {
                number,
                ..RevisionInfo::initial()
            },
            unreadable: Some(reason_of(&error)),
        },
    }
}

fn reason_of(error: &StoreError) -> String {
    match error {
        StoreError::Corrupt { reason, .. } => reason.clone(),
        other => other.to_string(),
    }
}

/// A new random store id: 128 bits from the operating system, in hex.
pub(crate) fn new_store_id() -> Result<String, StoreError> {
    let mut bytes = [0u8; 16];
    getrandom::fill(&mut bytes).map_err(|e| StoreError::backend("no randomness for the store id", e.to_string()))?;
    Ok(tollgate_common::intent::hex(&bytes))
}

/// Refuses every inventory of a batch that names one agent twice (before anything is written).
pub(crate) fn check_reports(reports: &[ClusterReport]) -> Result<(), StoreError> {
    for report in reports {
        if let Some(agents) = &report.inventory {
            check_inventory(&report.id, agents)?;
        }
    }
    Ok(())
}

/// An agent record as both backends store it (JSON for the lists and maps).
pub(crate) struct EncodedAgent {
    pub namespace: String,
    pub name: String,
    pub labels: String,
    pub verified: bool,
    pub reason: String,
    pub mode: String,
    pub rule_count: u32,
    pub sources: String,
    pub applied: i64,
    pub errors: String,
    pub dropped: String,
    pub plan_inputs: Option<Vec<u8>>,
    pub names: String,
    pub widened_by: String,
}

impl EncodedAgent {
    pub(crate) fn of(agent: &AgentRecord) -> Result<Self, StoreError> {
        Ok(Self {
            namespace: agent.namespace.clone(),
            name: agent.name.clone(),
            labels: to_json(&agent.labels)?,
            verified: agent.verified,
            reason: agent.verification_reason.as_str().to_string(),
            mode: agent.mode.as_str().to_string(),
            rule_count: agent.rule_count,
            sources: to_json(&agent.rule_sources)?,
            applied: to_sql_u64(agent.applied_revision, "applied revision")?,
            errors: to_json(&agent.errors)?,
            dropped: to_json(&agent.dropped)?,
            plan_inputs: agent.plan_inputs.as_ref().map(Message::encode_to_vec),
            names: to_json(&agent.fqdn_names)?,
            widened_by: to_json(&agent.widened_by)?,
        })
    }
}

/// A report as both backends write it.
pub(crate) struct EncodedReport {
    pub id: String,
    pub facts_json: Option<String>,
    pub inventory: Option<Vec<EncodedAgent>>,
    pub applied: Option<i64>,
    pub conditions: Option<String>,
    pub last_seen: i64,
}

impl EncodedReport {
    pub(crate) fn all(reports: &[ClusterReport]) -> Result<Vec<Self>, StoreError> {
        check_reports(reports)?;
        reports
            .iter()
            .map(|report| {
                Ok(Self {
                    id: report.id.clone(),
                    facts_json: report.facts_json.clone(),
                    inventory: report
                        .inventory
                        .as_ref()
                        .map(|agents| agents.iter().map(EncodedAgent::of).collect::<Result<Vec<_>, _>>())
                        .transpose()?,
                    applied: report
                        .applied_revision
                        .map(|r| to_sql_u64(r, "applied revision"))
                        .transpose()?,
                    conditions: report.conditions.as_ref().map(to_json).transpose()?,
                    last_seen: report.last_seen_unix_millis,
                })
            })
            .collect()
    }
}

/// The statements of [`Store::record_reports`], the same text on both backends (`?N` placeholders are rewritten
/// to `$N` for PostgreSQL).
pub(crate) mod report_sql {
    /// Sets `last_seen` (never backwards); 0 rows: the cluster is not registered.
    pub const TOUCH: &str = "UPDATE clusters SET last_seen_unix_millis = CASE WHEN last_seen_unix_millis > ?2 \
                             THEN last_seen_unix_millis ELSE ?2 END WHERE id = ?1";
    pub const FACTS: &str = "UPDATE clusters SET facts_json = ?2 WHERE id = ?1";
    pub const APPLIED: &str = "UPDATE clusters SET applied_revision = ?2 WHERE id = ?1";
    pub const CONDITIONS: &str = "UPDATE clusters SET conditions_json = ?2 WHERE id = ?1";
    pub const CLEAR_AGENTS: &str = "DELETE FROM agents WHERE cluster_id = ?1";
    pub const INSERT_AGENT: &str = "INSERT INTO agents (cluster_id, namespace, name, labels_json, verified, \
         verification_reason, mode, rule_count, rule_sources_json, applied_revision, errors_json, dropped_json, \
         plan_inputs, names_json, widened_by_json) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13, \
         ?14, ?15)";
}

/// Refuses an inventory that names one agent twice (before anything is written).
pub(crate) fn check_inventory(id: &str, agents: &[AgentRecord]) -> Result<(), StoreError> {
    let mut seen = std::collections::BTreeSet::new();
    for agent in agents {
        if !seen.insert((agent.namespace.as_str(), agent.name.as_str())) {
            return Err(StoreError::Invalid(format!(
                "inventory of cluster {id:?} lists agent {}/{} twice",
                agent.namespace, agent.name
            )));
        }
    }
    Ok(())
}

/// The columns of a revision record, in the order both backends read them.
pub(crate) const REVISION_COLUMNS: &str = "number, created_unix_millis, operation, summary, document_count, author";

/// The columns of a cluster record, in the order both backends read them.
pub(crate) const CLUSTER_COLUMNS: &str = "id, labels_json, first_seen_unix_millis, last_seen_unix_millis, facts_json, \
     applied_revision, connected_replica, conditions_json, adopt_requested, reported_labels_json, \
     registered_unix_millis, refuse_certificates_before_unix_millis, certificate_not_after_unix_millis";

/// A cluster row as both backends read it ([`CLUSTER_COLUMNS`]).
pub(crate) struct ClusterRow {
    pub id: String,
    pub labels_json: String,
    pub first_seen_unix_millis: i64,
    pub last_seen_unix_millis: i64,
    pub facts_json: Option<String>,
    pub applied_revision: i64,
    pub connected_replica: Option<String>,
    pub conditions_json: String,
    pub adopt_requested: bool,
    pub reported_labels_json: String,
    pub registered_unix_millis: i64,
    pub refuse_certificates_before_unix_millis: i64,
    pub certificate_not_after_unix_millis: i64,
}

impl ClusterRow {
    pub fn decode(self) -> Result<ClusterRecord, StoreError> {
        let id = self.id;
        Ok(ClusterRecord {
            labels: from_json(&self.labels_json, &format!("labels of cluster {id:?}"))?,
            reported_labels: from_json(
                &self.reported_labels_json,
                &format!("reported labels of cluster {id:?}"),
            )?,
            conditions: from_json(&self.conditions_json, &format!("conditions of cluster {id:?}"))?,
            applied_revision: u64::try_from(self.applied_revision)
                .map_err(|_| StoreError::Invalid(format!("negative applied revision of cluster {id:?}")))?,
            adopt_requested: self.adopt_requested,
            registered_unix_millis: self.registered_unix_millis,
            refuse_certificates_before_unix_millis: self.refuse_certificates_before_unix_millis,
            certificate_not_after_unix_millis: self.certificate_not_after_unix_millis,
            first_seen_unix_millis: self.first_seen_unix_millis,
            last_seen_unix_millis: self.last_seen_unix_millis,
            facts_json: self.facts_json,
            connected_replica: self.connected_replica,
            id,
        })
    }
}

/// What a commit writes, computed the same way by both backends.
pub(crate) struct NewRevision {
    /// The canonical YAML of the whole set.
    pub yaml: String,
    pub document_count: u32,
    /// `parent + 1`.
    pub number: u64,
    /// `number` as the databases' signed 64-bit integer.
    pub key: i64,
}

impl NewRevision {
    pub(crate) fn of(parent: u64, documents: &DocumentSet) -> Result<Self, StoreError> {
        let document_count = u32::try_from(documents.len())
            .map_err(|_| StoreError::Invalid(format!("{} documents are too many for one revision", documents.len())))?;
        let number = parent
            .checked_add(1)
            .ok_or_else(|| StoreError::Invalid("revision numbers are exhausted".to_string()))?;
        Ok(Self {
            yaml: documents.to_yaml(),
            document_count,
            number,
            key: to_sql_u64(number, "revision")?,
        })
    }
}

pub(crate) fn to_sql_u64(value: u64, what: &str) -> Result<i64, StoreError> {
    i64::try_from(value).map_err(|_| StoreError::Invalid(format!("{what} {value} is too large to store")))
}

/// The columns of an agent record, in the order both backends read them.
pub(crate) const AGENT_COLUMNS: &str = "namespace, name, labels_json, verified, verification_reason, mode, rule_count, \
     rule_sources_json, applied_revision, errors_json, dropped_json, plan_inputs, names_json, widened_by_json";

impl EncodedAgent {
    /// The record back, each field checked; `cluster_id` names it in errors.
    pub(crate) fn decode(self, cluster_id: &str) -> Result<AgentRecord, StoreError> {
        let (namespace, name) = (self.namespace, self.name);
        let what = |field: &str| format!("{field} of agent {namespace}/{name} in cluster {cluster_id:?}");
        let unreadable = |field: &str, reason: String| StoreError::Unreadable {
            what: what(field),
            source: reason.into(),
        };
        Ok(AgentRecord {
            labels: from_json(&self.labels, &what("labels"))?,
            verified: self.verified,
            verification_reason: Reason::parse(&self.reason)
                .ok_or_else(|| unreadable("verification reason", format!("unknown reason {:?}", self.reason)))?,
            mode: Mode::parse(&self.mode).ok_or_else(|| unreadable("mode", format!("unknown mode {:?}", self.mode)))?,
            rule_count: self.rule_count,
            rule_sources: from_json(&self.sources, &what("rule sources"))?,
            applied_revision: u64::try_from(self.applied)
                .map_err(|_| unreadable("applied revision", format!("negative: {}", self.applied)))?,
            errors: from_json(&self.errors, &what("errors"))?,
            dropped: from_json(&self.dropped, &what("dropped rules"))?,
            plan_inputs: self
                .plan_inputs
                .map(|bytes| pb::PlanInputs::decode(bytes.as_slice()))
                .transpose()
                .map_err(|e| unreadable("plan inputs", e.to_string()))?,
            fqdn_names: from_json(&self.names, &what("names"))?,
            widened_by: from_json(&self.widened_by, &what("widened by"))?,
            namespace,
            name,
        })
    }
}

impl From<AgentRecord> for pb::AgentStatus {
    fn from(a: AgentRecord) -> Self {
        Self {
            namespace: a.namespace,
            name: a.name,
            labels: a.labels.into_iter().collect(),
            verified: a.verified,
            verification_reason: pb::VerificationReason::from(a.verification_reason).into(),
            mode: pb::EgressMode::from(a.mode).into(),
            rule_count: a.rule_count,
            rule_sources: a.rule_sources,
            applied_revision: a.applied_revision,
            errors: a.errors,
            dropped_rules: a.dropped,
            plan_inputs: a.plan_inputs,
            fqdn_names: a.fqdn_names,
            widened_by: a.widened_by,
        }
    }
}

/// A reported agent as the store keeps it; refused, naming the field, when it lacks what the hub reads.
impl TryFrom<pb::AgentStatus> for AgentRecord {
    type Error = tollgate_common::field_error::FieldError;

    fn try_from(status: pb::AgentStatus) -> Result<Self, Self::Error> {
        Ok(Self {
            verification_reason: tollgate_common::wire::reason_from_wire(status.verification_reason)?,
            mode: tollgate_common::wire::mode_from_wire(status.mode)?,
            namespace: status.namespace,
            name: status.name,
            labels: status.labels.into_iter().collect(),
            verified: status.verified,
            rule_count: status.rule_count,
            rule_sources: status.rule_sources,
            applied_revision: status.applied_revision,
            errors: status.errors,
            dropped: status.dropped_rules,
            plan_inputs: status.plan_inputs,
            fqdn_names: status.fqdn_names,
            widened_by: status.widened_by,
        })
    }
}

pub(crate) fn to_json<T: Serialize + ?Sized>(value: &T) -> Result<String, StoreError> {
    serde_json::to_string(value).map_err(|e| StoreError::backend("cannot encode", e))
}

pub(crate) fn from_json<T: serde::de::DeserializeOwned>(text: &str, what: &str) -> Result<T, StoreError> {
    serde_json::from_str(text).map_err(|e| StoreError::Unreadable {
        what: what.to_string(),
        source: e.into(),
    })
}
