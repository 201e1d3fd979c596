//! The spoke's own conditions — what is wrong with it as a whole, not with one agent: an intent refused
//! (`Diverged`), an intent that could not be cached (`IntentNotPersisted`), policies held unchanged until the hub
//! answers (`PoliciesHeld`), local rules that the cluster cannot store (`LocalRulesUnavailable`).
//!
//! Every part of the spoke sets and clears its own conditions in one shared [`Conditions`]; each change is sent to
//! the hub (its `status` shows it), published as an Event on the spoke's intent ConfigMap (Warning when raised,
//! Normal when cleared) — or, when that cannot be written (its namespace does not exist, which is one reason for
//! `IntentNotPersisted`), on the cluster-scoped AgentRuntime CRD, whose Events live in `default` — counted in the
//! `tollgate_spoke_condition` gauge, and logged once.

use std::collections::BTreeMap;
use std::sync::Arc;

use k8s_openapi::api::core::v1::ObjectReference;
use kube::runtime::events::{Event, EventType, Recorder};
use tokio::sync::watch;
use tollgate_proto::v1 as pb;

use crate::metrics::{ConditionLabel, Metrics};

/// The kinds of condition.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Kind {
    Diverged,
    IntentNotPersisted,
    PoliciesHeld,
    LocalRulesUnavailable,
}

impl Kind {
    pub const ALL: [Self; 4] = [
        Self::Diverged,
        Self::IntentNotPersisted,
        Self::PoliciesHeld,
        Self::LocalRulesUnavailable,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Self::Diverged => "Diverged",
            Self::IntentNotPersisted => "IntentNotPersisted",
            Self::PoliciesHeld => "PoliciesHeld",
            Self::LocalRulesUnavailable => "LocalRulesUnavailable",
        }
    }

    fn wire(self) -> pb::ConditionType {
        match self {
            Self::Diverged => pb::ConditionType::Diverged,
            Self::IntentNotPersisted => pb::ConditionType::IntentNotPersisted,
            Self::PoliciesHeld => pb::ConditionType::PoliciesHeld,
            Self::LocalRulesUnavailable => pb::ConditionType::LocalRulesUnavailable,
        }
    }
}

/// One condition: a reason for machines and one sentence for people that says what to do.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Condition {
    pub reason: String,
    pub message: String,
}

/// The conditions the spoke has now.
pub type ConditionSet = BTreeMap<Kind, Condition>;

/// The spoke's conditions, shared by every part that sets them. Cheap to clone.
#[derive(Clone, Debug)]
pub struct Conditions {
    tx: Arc<watch::Sender<ConditionSet>>,
}

impl Default for Conditions {
    fn default() -> Self {
        Self {
            tx: Arc::new(watch::channel(ConditionSet::new()).0),
        }
    }
}

impl Conditions {
    /// Raises (or updates) a condition; nothing happens when it is already there with the same text.
    pub fn set(&self, kind: Kind, reason: &str, message: impl Into<String>) {
        let condition = Condition {
            reason: reason.to_string(),
            message: message.into(),
        };
        self.tx.send_if_modified(|set| {
            if set.get(&kind) == Some(&condition) {
                return false;
            }
            set.insert(kind, condition);
            true
        });
    }

    /// Clears a condition.
    pub fn clear(&self, kind: Kind) {
        self.tx.send_if_modified(|set| set.remove(&kind).is_some());
    }

    pub fn get(&self, kind: Kind) -> Option<Condition> {
        self.tx.borrow().get(&kind).cloned()
    }

    pub fn subscribe(&self) -> watch::Receiver<ConditionSet> {
        self.tx.subscribe()
    }

    /// The current conditions as the hub receives them.
    pub fn to_wire(&self) -> Vec<pb::Condition> {
        to_wire(&self.tx.borrow())
    }
}

pub fn to_wire(set: &ConditionSet) -> Vec<pb::Condition> {
    set.iter()
        .map(|(kind, c)| pb::Condition {
            r#type: kind.wire() as i32,
            reason: c.reason.clone(),
            message: c.message.clone(),
        })
        .collect()
}

/// Publishes every change of the conditions until the task is dropped: a log line, an Event regarding
/// `regarding` (Warning when raised or changed, Normal when cleared), and the gauge.
pub async fn publish(
    mut changes: watch::Receiver<ConditionSet>,
    recorder: Recorder,
    regarding: ObjectReference,
    metrics: Arc<Metrics>,
) {
    let fallback = crd_reference();
    let mut last = ConditionSet::new();
    loop {
        let now = changes.borrow_and_update().clone();
        for kind in Kind::ALL {
            metrics
                .conditions
                .get_or_create(&ConditionLabel {
                    condition: kind.as_str(),
                })
                .set(i64::from(now.contains_key(&kind)));
            let event = match (last.get(&kind), now.get(&kind)) {
                (before, Some(condition)) if before != Some(condition) => {
                    tracing::warn!(condition = kind.as_str(), reason = %condition.reason, "{}", condition.message);
                    Some(Event {
                        type_: EventType::Warning,
                        reason: kind.as_str().to_string(),
                        note: Some(crate::reconcile::truncate_note(condition.message.clone())),
                        action: "Enforce".to_string(),
                        secondary: None,
                    })
                }
                (Some(_), None) => {
                    tracing::info!(condition = kind.as_str(), "Condition cleared");
                    Some(Event {
                        type_: EventType::Normal,
                        reason: format!("{}Cleared", kind.as_str()),
                        note: Some(format!("{} no longer holds", kind.as_str())),
                        action: "Enforce".to_string(),
                        secondary: None,
                    })
                }
                _ => None,
            };
            if let Some(event) = event
                && let Err(error) = recorder.publish(&event, &regarding).await
            {
                tracing::debug!(%error, "Publishing an event on the intent ConfigMap failed; publishing it on the CRD");
                if let Err(error) = recorder.publish(&event, &fallback).await {
                    tracing::debug!(%error, "Publishing an event failed");
                }
            }
        }
        last = now;
        if changes.changed().await.is_err() {
            return;
        }
    }
}

/// The AgentRuntime CRD, as the object of cluster-level Events when the spoke's namespace cannot hold them. The
/// Events of a cluster-scoped object live in `default`; the reference names that namespace too, because API servers
/// before 1.22 refuse an events.k8s.io/v1 Event whose object's namespace differs from its own.
pub fn crd_reference() -> ObjectReference {
    ObjectReference {
        api_version: Some("apiextensions.k8s.io/v1".to_string()),
        kind: Some("CustomResourceDefinition".to_string()),
        name: Some(crate::agent_runtime::CRD_NAME.to_string()),
        namespace: Some("default".to_string()),
        ..ObjectReference::default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn conditions_change_only_when_their_text_does() {
        let conditions = Conditions::default();
        let mut changes = conditions.subscribe();
        changes.borrow_and_update();
        conditions.set(Kind::Diverged, "OtherStore", "refused");
        assert!(changes.has_changed().unwrap());
        changes.borrow_and_update();
        conditions.set(Kind::Diverged, "OtherStore", "refused");
        assert!(!changes.has_changed().unwrap(), "the same condition again is no change");
        conditions.set(Kind::PoliciesHeld, "CacheUnreadable", "held");
        let wire = conditions.to_wire();
        assert_eq!(wire.len(), 2);
        assert_eq!(wire[0].r#type, pb::ConditionType::Diverged as i32);
        assert_eq!(wire[1].reason, "CacheUnreadable");
        changes.borrow_and_update();
        conditions.clear(Kind::IntentNotPersisted);
        assert!(
            !changes.has_changed().unwrap(),
            "clearing an absent condition is no change"
        );
        conditions.clear(Kind::Diverged);
        assert!(changes.has_changed().unwrap());
        assert_eq!(conditions.get(Kind::Diverged), None);
    }
}
