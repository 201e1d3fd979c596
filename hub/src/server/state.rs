//! The hub's state: the latest intent revision, shared with every spoke session through a watch channel, and
//! the write path (apply / delete / rollback) that turns a valid change into exactly one new revision.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use tokio::sync::watch;
use tollgate_common::document::{Document, DocumentSet, Source};
use tollgate_common::field_error::DocumentError;
use tollgate_common::intent;
use tollgate_common::label_selector::LabelSelector;
use tollgate_proto::v1 as pb;

use crate::server::store::{Operation, Readable, RevisionInfo, Store, StoreError};

/// How often an optimistic commit is retried when another writer committed first.
const COMMIT_ATTEMPTS: usize = 16;

/// The latest committed intent, with every document rendered for the wire once, shared by every session.
#[derive(Debug, Default)]
pub struct Snapshot {
    /// The store it comes from ([`Store::store_id`]).
    pub store_id: String,
    pub revision: u64,
    pub documents: DocumentSet,
    /// Each document's cluster selector and wire form, in `documents` order.
    pub wire: Vec<(Option<LabelSelector>, pb::Document)>,
    /// Each document's digest ([`intent::document_digest`]), in `documents` order.
    pub digests: Vec<[u8; 32]>,
}

impl Snapshot {
    pub fn new(store_id: &str, revision: u64, documents: DocumentSet) -> Self {
        let wire: Vec<_> = documents
            .documents()
            .map(|d| {
                let selector = d.cluster_selector().cloned();
                let document = pb::Document {
                    kind: d.kind().to_string(),
                    name: d.name().to_string(),
                    yaml: d.to_yaml(),
                };
                (selector, document)
            })
            .collect();
        let digests = wire
            .iter()
            .map(|(_, d)| intent::document_digest(&d.kind, &d.name, &d.yaml))
            .collect();
        Self {
            store_id: store_id.to_string(),
            revision,
            documents,
            wire,
            digests,
        }
    }

    /// The digest of a selection: what a spoke holding exactly these documents computes.
    pub fn digest(&self, selected: &[usize]) -> String {
        intent::digest(selected.iter().map(|i| &self.digests[*i]))
    }

    /// Indices (into `wire`) of the documents whose cluster selector matches these labels.
    pub fn select(&self, labels: &BTreeMap<String, String>) -> Vec<usize> {
        self.wire
            .iter()
            .enumerate()
            .filter(|(_, (selector, _))| selector.as_ref().is_none_or(|s| s.matches(labels)))
            .map(|(i, _)| i)
            .collect()
    }
}

/// Why a write was refused.
#[derive(Debug, thiserror::Error)]
pub enum HubError {
    #[error("{} validation error(s)", .0.len())]
    Invalid(Vec<DocumentError>),
    /// The change would give some cluster more intent than it can hold.
    #[error("{0}")]
    TooLarge(String),
    #[error("{0}")]
    NotFound(String),
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// What happened to one document.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Action {
    Created,
    Configured,
    Unchanged,
    Deleted,
}

impl Action {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Created => "created",
            Self::Configured => "configured",
            Self::Unchanged => "unchanged",
            Self::Deleted => "deleted",
        }
    }
}

/// One document's change, with a unified diff of its canonical YAML.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Change {
    pub kind: String,
    pub name: String,
    pub action: Action,
    pub diff: String,
}

/// The result of an apply: the new revision (`None` for a dry run or when nothing changed) and the changes.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ApplyOutcome {
    pub revision: Option<u64>,
    pub changes: Vec<Change>,
}

/// The hub's shared state over a store.
#[derive(Debug)]
pub struct Hub<S> {
    store: S,
    snapshot: watch::Sender<Arc<Snapshot>>,
    /// The largest intent one cluster may receive, in canonical bytes.
    max_cluster_intent_bytes: usize,
    /// How many of the newest stored revisions could not be read at the last read (the hub serves the newest
    /// readable one).
    unreadable: AtomicU64,
}

impl<S: Store> Hub<S> {
    /// Loads the newest readable revision; newer revisions that cannot be read are reported, never fatal.
    pub async fn new(store: S) -> Result<Self, StoreError> {
        let latest = store.latest_readable().await?;
        let number = latest.revision.info.number;
        let snapshot = Snapshot::new(store.store_id(), number, latest.revision.documents.clone());
        let (snapshot, _) = watch::channel(Arc::new(snapshot));
        let hub = Self {
            store,
            snapshot,
            max_cluster_intent_bytes: intent::MAX_CLUSTER_INTENT_BYTES,
            unreadable: AtomicU64::new(0),
        };
        hub.note_unreadable(&latest);
        Ok(hub)
    }

    /// Lowers the bound on one cluster's intent (default [`intent::MAX_CLUSTER_INTENT_BYTES`], the most a spoke can
    /// cache).
    pub fn with_max_cluster_intent_bytes(mut self, bytes: usize) -> Self {
        self.max_cluster_intent_bytes = bytes.min(intent::MAX_CLUSTER_INTENT_BYTES);
        self
    }

    /// How many of the newest stored revisions could not be read at the last read.
    pub fn unreadable_revisions(&self) -> u64 {
        self.unreadable.load(Ordering::Relaxed)
    }

    fn note_unreadable(&self, latest: &Readable) {
        let before = self.unreadable.swap(latest.skipped.len() as u64, Ordering::Relaxed);
        for (revision, reason) in &latest.skipped {
            if before == 0 {
                tracing::error!(
                    revision,
                    reason,
                    serving = latest.revision.info.number,
                    "A stored revision cannot be read; serving the newest readable revision (`tollgate-hub history` \
                     marks it; `tollgate-hub rollback --to REV` or an apply makes a new revision)"
                );
            }
        }
    }

    pub fn store(&self) -> &S {
        &self.store
    }

    /// The latest revision.
    pub fn snapshot(&self) -> Arc<Snapshot> {
        self.snapshot.borrow().clone()
    }

    /// Re-reads the latest revision from the store and publishes it when it is newer than the one published
    /// (another replica committed it).
    pub async fn refresh(&self) -> Result<u64, StoreError> {
        let latest = self.store.latest_readable().await?;
        self.note_unreadable(&latest);
        let number = latest.revision.info.number;
        self.publish(number, latest.revision.documents);
        Ok(number)
    }

    /// A receiver that sees every new revision (bursts coalesce to the latest).
    pub fn subscribe(&self) -> watch::Receiver<Arc<Snapshot>> {
        self.snapshot.subscribe()
    }

    /// Validates the sources as one all-or-nothing set and merges them into the latest revision (replacing
    /// documents of the same kind and name; with `prune`, deleting the documents it selects that are not in the
    /// sources).
    pub async fn apply(
        &self,
        sources: &[Source],
        dry_run: bool,
        prune: Option<&tollgate_common::LabelSelector>,
        author: &str,
        now: i64,
    ) -> Result<ApplyOutcome, HubError> {
        let applied = DocumentSet::from_sources(sources).map_err(HubError::Invalid)?;
        let summary = summarize("apply", &applied);
        let merge = |current: &DocumentSet| Ok(current.applied(&applied, prune));
        if dry_run {
            let latest = self.store.latest_readable().await?;
            let next = merge(&latest.revision.documents)?;
            self.check_bounds(&next).await?;
            return Ok(ApplyOutcome {
                revision: None,
                changes: changes(&latest.revision.documents, &next),
            });
        }
        let (info, changes) = self.commit(Operation::Apply, &summary, author, merge, now).await?;
        Ok(ApplyOutcome {
            revision: info.map(|i| i.number),
            changes,
        })
    }

    /// Deletes one document; not found is an error.
    pub async fn delete(&self, kind: &str, name: &str, author: &str, now: i64) -> Result<u64, HubError> {
        let summary = format!("delete {kind}/{name}");
        let (info, _) = self
            .commit(
                Operation::Delete,
                &summary,
                author,
                |current| {
                    let mut next = current.clone();
                    if next.remove(kind, name) {
                        Ok(next)
                    } else {
                        Err(HubError::NotFound(format!("{kind}/{name} does not exist")))
                    }
                },
                now,
            )
            .await?;
        Ok(info.map(|i| i.number).expect("a deletion always changes the set"))
    }

    /// Makes the documents of revision `to` the latest, as a new revision (history is never rewritten).
    pub async fn rollback(&self, to: u64, author: &str, now: i64) -> Result<ApplyOutcome, HubError> {
        let target = match self.store.revision(to).await {
            Ok(revision) => revision,
            Err(StoreError::NoSuchRevision(n)) => {
                return Err(HubError::NotFound(format!("revision {n} does not exist")));
            }
            Err(e) => return Err(e.into()),
        };
        let summary = format!("rollback to revision {to}");
        let (info, changes) = self
            .commit(
                Operation::Rollback,
                &summary,
                author,
                |_| Ok(target.documents.clone()),
                now,
            )
            .await?;
        Ok(ApplyOutcome {
            revision: info.map(|i| i.number),
            changes,
        })
    }

    /// Optimistic commit: computes the next set from the latest, commits it if the latest is still the parent,
    /// retries otherwise. Nothing is committed when the set does not change.
    async fn commit(
        &self,
        operation: Operation,
        summary: &str,
        author: &str,
        next: impl Fn(&DocumentSet) -> Result<DocumentSet, HubError>,
        now: i64,
    ) -> Result<(Option<RevisionInfo>, Vec<Change>), HubError> {
        let mut last_error = None;
        for _ in 0..COMMIT_ATTEMPTS {
            let latest = self.store.latest_readable().await?;
            self.note_unreadable(&latest);
            let current = &latest.revision.documents;
            let next = next(current)?;
            let changes = changes(current, &next);
            // With newer unreadable revisions, even an equal set is committed: it becomes the newest revision again.
            if next == *current && latest.skipped.is_empty() {
                self.publish(latest.revision.info.number, latest.revision.documents);
                return Ok((None, changes));
            }
            if operation != Operation::Delete {
                self.check_bounds(&next).await?;
            }
            match self
                .store
                .commit(latest.newest, operation, summary, author, &next, now)
                .await
            {
                Ok(info) => {
                    tracing::info!(
                        revision = info.number,
                        operation = operation.as_str(),
                        summary,
                        author,
                        "Committed"
                    );
                    self.publish(info.number, next);
                    return Ok((Some(info), changes));
                }
                Err(conflict @ StoreError::Conflict { .. }) => last_error = Some(conflict),
                Err(e) => return Err(e.into()),
            }
        }
        Err(last_error.expect("the loop ran at least once").into())
    }

    /// Refuses a set that would give some cluster more intent than it can hold: every registered cluster is
    /// checked with its labels, and a cluster without labels stands for any cluster yet to join.
    async fn check_bounds(&self, next: &DocumentSet) -> Result<(), HubError> {
        let clusters = self.store.clusters().await?;
        let unlabelled = BTreeMap::new();
        let candidates = clusters
            .iter()
            .map(|c| (format!("cluster {:?}", c.id), &c.labels))
            .chain(std::iter::once(("a cluster without labels".to_string(), &unlabelled)));
        let over = self.over_bounds(next, candidates);
        if over.is_empty() {
            Ok(())
        } else {
            Err(HubError::TooLarge(format!(
                "{}; nothing was applied: narrow the documents' clusterSelector or split the rules across fewer \
                 clusters",
                over.join("; ")
            )))
        }
    }

    /// Refuses labels under which cluster `id` would receive more of the latest intent than it can hold.
    pub fn check_labels(&self, id: &str, labels: &BTreeMap<String, String>) -> Result<(), HubError> {
        let snapshot = self.snapshot();
        let over = self.over_bounds(
            &snapshot.documents,
            std::iter::once((format!("cluster {id:?}"), labels)),
        );
        if over.is_empty() {
            Ok(())
        } else {
            Err(HubError::TooLarge(format!(
                "{}; the labels were not changed: narrow the documents' clusterSelector first",
                over.join("; ")
            )))
        }
    }

    /// What each candidate (a description and its labels) would receive of `documents` beyond the bound.
    fn over_bounds<'l>(
        &self,
        documents: &DocumentSet,
        candidates: impl Iterator<Item = (String, &'l BTreeMap<String, String>)>,
    ) -> Vec<String> {
        let documents: Vec<(Option<LabelSelector>, usize, String)> = documents
            .documents()
            .map(|d| {
                (
                    d.cluster_selector().cloned(),
                    d.to_yaml().len() + "---\n".len(),
                    d.to_string(),
                )
            })
            .collect();
        let mut over = Vec::new();
        for (who, labels) in candidates {
            let selected: Vec<&(Option<LabelSelector>, usize, String)> = documents
                .iter()
                .filter(|(selector, _, _)| selector.as_ref().is_none_or(|s| s.matches(labels)))
                .collect();
            let total: usize = selected.iter().map(|(_, size, _)| size).sum();
            if total > self.max_cluster_intent_bytes {
                let largest = selected
                    .iter()
                    .max_by_key(|(_, size, _)| *size)
                    .map(|(_, size, name)| format!("; its largest document is {name} ({size} bytes)"))
                    .unwrap_or_default();
                over.push(format!(
                    "{who} would receive {total} bytes of intent in canonical form, over the limit of {} bytes \
                     (what its spoke can cache){largest}",
                    self.max_cluster_intent_bytes
                ));
            }
        }
        over
    }

    /// Publishes a revision to every session, unless a newer one is already published.
    fn publish(&self, revision: u64, documents: DocumentSet) {
        if revision <= self.snapshot.borrow().revision {
            return;
        }
        // Rendered outside the channel's lock, once for every session.
        let next = Arc::new(Snapshot::new(self.store.store_id(), revision, documents));
        self.snapshot.send_if_modified(|current| {
            if next.revision > current.revision {
                *current = next;
                true
            } else {
                false
            }
        });
    }
}

fn summarize(verb: &str, set: &DocumentSet) -> String {
    let names: Vec<String> = set.documents().map(|d| d.to_string()).collect();
    let mut text = format!("{verb} {}", names.join(", "));
    if text.len() > 200 {
        text.truncate(197);
        text.push_str("...");
    }
    text
}

/// Per-document changes from `old` to `new`, sorted by kind then name.
pub fn changes(old: &DocumentSet, new: &DocumentSet) -> Vec<Change> {
    let index = |set: &DocumentSet| -> BTreeMap<(String, String), String> {
        set.documents()
            .map(|d: Document| ((d.kind().to_string(), d.name().to_string()), d.to_yaml()))
            .collect()
    };
    let (old, new) = (index(old), index(new));
    let mut keys: Vec<&(String, String)> = old.keys().chain(new.keys()).collect();
    keys.sort();
    keys.dedup();
    keys.into_iter()
        .map(|key| {
            let before = old.get(key).map(String::as_str).unwrap_or("");
            let after = new.get(key).map(String::as_str).unwrap_or("");
            let action = match (old.contains_key(key), new.contains_key(key)) {
                (false, _) => Action::Created,
                (true, false) => Action::Deleted,
                (true, true) if before == after => Action::Unchanged,
                (true, true) => Action::Configured,
            };
            let diff = if action == Action::Unchanged {
                String::new()
            } else {
                let label = format!("{}/{}", key.0, key.1);
                similar::TextDiff::from_lines(before, after)
                    .unified_diff()
                    .context_radius(3)
                    .header(&label, &label)
                    .to_string()
            };
            Change {
                kind: key.0.clone(),
                name: key.1.clone(),
                action,
                diff,
            }
        })
        .collect()
}
