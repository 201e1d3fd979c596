//! The hub's state: the latest intent revision, shared with every spoke session through a watch channel, and
//! the write path (apply / delete / rollback) that turns a valid change into exactly one new revision.

use std::collections::BTreeMap;
use std::sync::Arc;

use tokio::sync::watch;
use tollgate_common::document::{Document, DocumentSet, Source};
use tollgate_common::field_error::DocumentError;
use tollgate_common::label_selector::LabelSelector;
use tollgate_proto::v1 as pb;

use crate::store::{Operation, RevisionInfo, Store, StoreError};

/// How often an optimistic commit is retried when another writer committed first.
const COMMIT_ATTEMPTS: usize = 16;

/// The latest committed intent, with every document rendered for the wire once, shared by every session.
#[derive(Debug, Default)]
pub struct Snapshot {
    pub revision: u64,
    pub documents: DocumentSet,
    /// Each document's cluster selector and wire form, in `documents` order.
    pub wire: Vec<(Option<LabelSelector>, pb::Document)>,
}

impl Snapshot {
    pub fn new(revision: u64, documents: DocumentSet) -> Self {
        let wire = documents
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
        Self {
            revision,
            documents,
            wire,
        }
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
}

impl<S: Store> Hub<S> {
    /// Loads the latest revision.
    pub async fn new(store: S) -> Result<Self, StoreError> {
        let latest = store.latest().await?;
        let (snapshot, _) = watch::channel(Arc::new(Snapshot::new(latest.info.number, latest.documents)));
        Ok(Self { store, snapshot })
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
        let latest = self.store.latest().await?;
        let number = latest.info.number;
        self.publish(number, latest.documents);
        Ok(number)
    }

    /// A receiver that sees every new revision (bursts coalesce to the latest).
    pub fn subscribe(&self) -> watch::Receiver<Arc<Snapshot>> {
        self.snapshot.subscribe()
    }

    /// Validates the sources as one all-or-nothing set and merges them into the latest revision (replacing
    /// documents of the same kind and name; with `prune`, deleting every document not in the sources).
    pub async fn apply(
        &self,
        sources: &[Source],
        dry_run: bool,
        prune: bool,
        now: i64,
    ) -> Result<ApplyOutcome, HubError> {
        let applied = DocumentSet::from_sources(sources).map_err(HubError::Invalid)?;
        let summary = summarize("apply", &applied);
        let merge = |current: &DocumentSet| {
            let mut next = if prune { DocumentSet::default() } else { current.clone() };
            for document in applied.documents() {
                next.insert(document);
            }
            Ok(next)
        };
        if dry_run {
            let latest = self.store.latest().await?;
            let next = merge(&latest.documents)?;
            return Ok(ApplyOutcome {
                revision: None,
                changes: changes(&latest.documents, &next),
            });
        }
        let (info, changes) = self.commit(Operation::Apply, &summary, merge, now).await?;
        Ok(ApplyOutcome {
            revision: info.map(|i| i.number),
            changes,
        })
    }

    /// Deletes one document; not found is an error.
    pub async fn delete(&self, kind: &str, name: &str, now: i64) -> Result<u64, HubError> {
        let summary = format!("delete {kind}/{name}");
        let (info, _) = self
            .commit(
                Operation::Delete,
                &summary,
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
    pub async fn rollback(&self, to: u64, now: i64) -> Result<ApplyOutcome, HubError> {
        let target = match self.store.revision(to).await {
            Ok(revision) => revision,
            Err(StoreError::NoSuchRevision(n)) => {
                return Err(HubError::NotFound(format!("revision {n} does not exist")));
            }
            Err(e) => return Err(e.into()),
        };
        let summary = format!("rollback to revision {to}");
        let (info, changes) = self
            .commit(Operation::Rollback, &summary, |_| Ok(target.documents.clone()), now)
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
        next: impl Fn(&DocumentSet) -> Result<DocumentSet, HubError>,
        now: i64,
    ) -> Result<(Option<RevisionInfo>, Vec<Change>), HubError> {
        let mut last_error = None;
        for _ in 0..COMMIT_ATTEMPTS {
            let latest = self.store.latest().await?;
            let next = next(&latest.documents)?;
            let changes = changes(&latest.documents, &next);
            if next == latest.documents {
                self.publish(latest.info.number, latest.documents);
                return Ok((None, changes));
            }
            match self
                .store
                .commit(latest.info.number, operation, summary, &next, now)
                .await
            {
                Ok(info) => {
                    tracing::info!(
                        revision = info.number,
                        operation = operation.as_str(),
                        summary,
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

    /// Publishes a revision to every session, unless a newer one is already published.
    fn publish(&self, revision: u64, documents: DocumentSet) {
        if revision <= self.snapshot.borrow().revision {
            return;
        }
        // Rendered outside the channel's lock, once for every session.
        let next = Arc::new(Snapshot::new(revision, documents));
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
