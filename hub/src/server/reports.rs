//! What spokes report (facts, inventory, acknowledgements, conditions), coalesced per cluster and written for
//! every cluster in one store transaction per tick: a spoke that reports as fast as it can costs the store one
//! write per tick, and never holds its write path from applies or from the other spokes.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use crate::server::state::Hub;
use crate::server::store::{AgentRecord, ClusterReport, Store, StoreError, StoredCondition};

/// How often pending reports are written.
pub const FLUSH_PERIOD: Duration = Duration::from_millis(250);

/// Reports waiting to be written, the latest of each kind per cluster.
#[derive(Debug, Default)]
pub struct ReportBuffer {
    pending: Mutex<HashMap<String, ClusterReport>>,
}

impl ReportBuffer {
    fn merge(&self, id: &str, now: i64, update: impl FnOnce(&mut ClusterReport)) {
        let mut pending = self.pending.lock().expect("report buffer lock");
        let report = pending.entry(id.to_string()).or_insert_with(|| ClusterReport {
            id: id.to_string(),
            ..ClusterReport::default()
        });
        report.last_seen_unix_millis = report.last_seen_unix_millis.max(now);
        update(report);
    }

    pub fn facts(&self, id: &str, facts_json: String, now: i64) {
        self.merge(id, now, |r| r.facts_json = Some(facts_json));
    }

    pub fn inventory(&self, id: &str, agents: Vec<AgentRecord>, now: i64) {
        self.merge(id, now, |r| r.inventory = Some(agents));
    }

    pub fn applied(&self, id: &str, revision: u64, now: i64) {
        self.merge(id, now, |r| r.applied_revision = Some(revision));
    }

    pub fn conditions(&self, id: &str, conditions: Vec<StoredCondition>, now: i64) {
        self.merge(id, now, |r| r.conditions = Some(conditions));
    }

    /// How many clusters have reports waiting.
    pub fn pending(&self) -> usize {
        self.pending.lock().expect("report buffer lock").len()
    }

    /// Writes everything pending in one transaction. On failure the reports go back to the buffer (reports that
    /// arrived meanwhile are newer and win), to be written at the next flush.
    pub async fn flush<S: Store>(&self, store: &S) -> Result<(), StoreError> {
        let batch: Vec<ClusterReport> = {
            let mut pending = self.pending.lock().expect("report buffer lock");
            if pending.is_empty() {
                return Ok(());
            }
            pending.drain().map(|(_, report)| report).collect()
        };
        match store.record_reports(&batch).await {
            Ok(unknown) => {
                for id in unknown {
                    tracing::debug!(cluster = %id, "Dropped the report of a cluster that is not registered");
                }
                Ok(())
            }
            Err(error) => {
                let mut pending = self.pending.lock().expect("report buffer lock");
                for old in batch {
                    let newer = pending.remove(&old.id);
                    pending.insert(old.id.clone(), overlay(old, newer));
                }
                Err(error)
            }
        }
    }

    /// Flushes every [`FLUSH_PERIOD`] until the task is dropped.
    pub async fn run<S: Store>(self: Arc<Self>, hub: Arc<Hub<S>>) {
        let mut ticker = tokio::time::interval(FLUSH_PERIOD);
        ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut failing = false;
        loop {
            ticker.tick().await;
            match self.flush(hub.store()).await {
                Ok(()) => failing = false,
                Err(error) => {
                    if !failing {
                        tracing::warn!(error = %tollgate_process::error_chain(&error), "Could not record spoke reports; retrying");
                    }
                    failing = true;
                }
            }
        }
    }
}

/// `old` with every field `newer` sets replaced by `newer`'s.
fn overlay(old: ClusterReport, newer: Option<ClusterReport>) -> ClusterReport {
    let Some(newer) = newer else { return old };
    ClusterReport {
        id: old.id,
        facts_json: newer.facts_json.or(old.facts_json),
        inventory: newer.inventory.or(old.inventory),
        applied_revision: newer.applied_revision.or(old.applied_revision),
        conditions: newer.conditions.or(old.conditions),
        last_seen_unix_millis: newer.last_seen_unix_millis.max(old.last_seen_unix_millis),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reports_coalesce_per_cluster_and_a_failed_write_keeps_the_newer_ones() {
        let buffer = ReportBuffer::default();
        buffer.applied("a", 1, 10);
        buffer.applied("a", 2, 20);
        buffer.facts("a", "{}".into(), 15);
        buffer.applied("b", 7, 5);
        assert_eq!(buffer.pending(), 2);
        let a = buffer.pending.lock().unwrap()["a"].clone();
        assert_eq!(a.applied_revision, Some(2), "the latest acknowledgement wins");
        assert_eq!(a.facts_json.as_deref(), Some("{}"));
        assert_eq!(a.last_seen_unix_millis, 20);

        let old = ClusterReport {
            id: "a".into(),
            applied_revision: Some(3),
            facts_json: Some("old".into()),
            last_seen_unix_millis: 30,
            ..ClusterReport::default()
        };
        let newer = ClusterReport {
            id: "a".into(),
            applied_revision: Some(4),
            last_seen_unix_millis: 25,
            ..ClusterReport::default()
        };
        let merged = overlay(old, Some(newer));
        assert_eq!(merged.applied_revision, Some(4));
        assert_eq!(
            merged.facts_json.as_deref(),
            Some("old"),
            "kept: nothing newer replaced it"
        );
        assert_eq!(merged.last_seen_unix_millis, 30);
    }
}
