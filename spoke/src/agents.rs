//! `AgentRuntime` objects (with their workload, namespace and deprecated `AgentCard`) → planner agents.

use std::collections::BTreeMap;
use std::sync::Arc;

use k8s_openapi::jiff::Timestamp;
use kube::ResourceExt;
use kube::api::DynamicObject;
use tollgate_common::egress_rule::parse_local_egress;
use tollgate_common::field_error::FieldError;
use tollgate_common::planner::{Agent, LocalEgress};
use tollgate_common::verification::{
    AgentCardStatus, CardStatus, IdentityBinding, Reason, Verification, VerificationInput, VerificationSettings, verify,
};

use crate::agent_runtime::{AgentRuntime, MalformedRuntime};

/// The planner's view of one `AgentRuntime`.
pub fn agent(
    runtime: &AgentRuntime,
    pod_labels: Option<BTreeMap<String, String>>,
    namespace_labels: Arc<BTreeMap<String, String>>,
    agent_card: Option<AgentCardStatus>,
    settings: &VerificationSettings,
) -> Agent {
    let local_egress = match &runtime.spec.egress {
        None => LocalEgress::Absent,
        Some(raw) => match raw.parse().map(|value| parse_local_egress(&value, "spec.egress")) {
            Ok(Ok(rules)) => LocalEgress::Rules(rules),
            Ok(Err(errors)) => LocalEgress::Invalid(errors),
            Err(error) => LocalEgress::Invalid(vec![FieldError::new("spec.egress", error.to_string())]),
        },
    };
    Agent {
        namespace: runtime.namespace().unwrap_or_default(),
        name: runtime.name_any(),
        uid: runtime.uid().unwrap_or_default(),
        target_name: runtime.spec.target_ref.name.clone(),
        labels: runtime.labels().clone(),
        namespace_labels,
        pod_labels,
        local_egress,
        verification: verify(&verification_input(runtime, agent_card), settings),
    }
}

/// The planner's view of an `AgentRuntime` that does not parse: restricted (unverified, no local rules), so that
/// its policy still exists; `None` when even its target cannot be read (no policy can be named).
pub fn malformed_agent(
    runtime: &MalformedRuntime,
    pod_labels: Option<BTreeMap<String, String>>,
    namespace_labels: Arc<BTreeMap<String, String>>,
) -> Option<Agent> {
    Some(Agent {
        namespace: runtime.metadata.namespace.clone().unwrap_or_default(),
        name: runtime.metadata.name.clone().unwrap_or_default(),
        uid: runtime.metadata.uid.clone().unwrap_or_default(),
        target_name: runtime.target_name.clone()?,
        labels: runtime.metadata.labels.clone().unwrap_or_default(),
        namespace_labels,
        pod_labels,
        local_egress: LocalEgress::Absent,
        verification: Verification::unverified(Reason::Malformed, runtime.message()),
    })
}

/// What verification needs from an `AgentRuntime` and its `AgentCard`.
pub fn verification_input(runtime: &AgentRuntime, agent_card: Option<AgentCardStatus>) -> VerificationInput {
    let card = runtime
        .status
        .as_ref()
        .and_then(|s| s.card.as_ref())
        .map(|card| CardStatus {
            transport_security: card.transport_security.clone(),
            attested_spiffe_id: card.attested_agent_spiffe_id.clone(),
            valid_signature: card.valid_signature,
            last_fetch_unix: card
                .last_card_fetch_time
                .as_deref()
                .and_then(|t| t.parse::<Timestamp>().ok())
                .map(|t| t.as_second()),
        });
    let binding = runtime
        .spec
        .identity
        .as_ref()
        .and_then(|i| i.binding.as_ref())
        .map(|b| IdentityBinding {
            trust_domain: b.trust_domain.clone(),
            strict: b.strict,
        });
    VerificationInput {
        card,
        binding,
        agent_card,
    }
}

/// The workload name an `AgentCard` targets (`spec.targetRef.name`) and its verification status.
pub fn agent_card(card: &DynamicObject) -> Option<(String, AgentCardStatus)> {
    let target = card.data.pointer("/spec/targetRef/name")?.as_str()?.to_string();
    let verified = card
        .data
        .pointer("/status/conditions")
        .and_then(|c| c.as_array())
        .and_then(|conditions| {
            conditions
                .iter()
                .find(|c| c.get("type").and_then(|t| t.as_str()) == Some("Verified"))
        });
    Some((
        target,
        AgentCardStatus {
            verified_condition: verified
                .and_then(|c| c.get("status"))
                .and_then(|s| s.as_str())
                .map(|s| s == "True"),
            condition_reason: verified
                .and_then(|c| c.get("reason"))
                .and_then(|r| r.as_str())
                .map(String::from),
            valid_signature: card.data.pointer("/status/validSignature").and_then(|v| v.as_bool()),
        },
    ))
}

#[cfg(test)]
mod tests {
    use serde_json::json;
    use tollgate_common::verification::Reason;

    use super::*;

    fn runtime(value: serde_json::Value) -> AgentRuntime {
        serde_json::from_value(value).unwrap()
    }

    fn settings() -> VerificationSettings {
        VerificationSettings {
            trust_domain: None,
            max_card_age_secs: Some(3600),
            now_unix: "2026-11-28T12:30:00Z".parse::<Timestamp>().unwrap().as_second(),
        }
    }

    #[test]
    fn verified_runtime_with_invalid_local_rules() {
        let rt = runtime(json!({
            "apiVersion": "agent.kagenti.dev/v1alpha1", "kind": "AgentRuntime",
            "metadata": {"name": "weather", "namespace": "team-a", "uid": "u1", "labels": {"tier": "llm"}},
            "spec": {
                "type": "agent",
                "targetRef": {"apiVersion": "apps/v1", "kind": "Deployment", "name": "weather-deploy"},
                "egress": {"rules": [{"ports": [{"port": 443}]}]},
            },
            "status": {"card": {
                "transportSecurity": "mtls",
                "attestedAgentSpiffeID": "spiffe://example.org/ns/team-a/sa/weather",
                "lastCardFetchTime": "2026-11-28T12:00:00Z",
            }},
        }));
        let agent = agent(&rt, None, Default::default(), None, &settings());
        assert_eq!(agent.namespace, "team-a");
        assert_eq!(agent.uid, "u1");
        assert_eq!(agent.target_name, "weather-deploy");
        assert_eq!(agent.labels["tier"], "llm");
        assert!(agent.verification.verified);
        assert_eq!(agent.verification.reason, Reason::MtlsVerified);
        match &agent.local_egress {
            LocalEgress::Invalid(errors) => {
                assert_eq!(errors.len(), 1);
                assert_eq!(errors[0].path, "spec.egress.rules[0].to");
            }
            other => panic!("expected invalid rules, got {other:?}"),
        }
    }

    #[test]
    fn stale_card_and_agent_card_fallback() {
        let rt = runtime(json!({
            "apiVersion": "agent.kagenti.dev/v1alpha1", "kind": "AgentRuntime",
            "metadata": {"name": "old", "namespace": "team-a"},
            "spec": {"type": "agent", "targetRef": {"apiVersion": "apps/v1", "kind": "Deployment", "name": "old"}},
            "status": {"card": {"validSignature": true, "lastCardFetchTime": "2026-11-28T10:00:00Z"}},
        }));
        let agent_one = agent(&rt, None, Default::default(), None, &settings());
        assert_eq!(agent_one.verification.reason, Reason::CardStale);
        assert_eq!(agent_one.local_egress, LocalEgress::Absent);

        let bare = runtime(json!({
            "apiVersion": "agent.kagenti.dev/v1alpha1", "kind": "AgentRuntime",
            "metadata": {"name": "bare", "namespace": "team-a"},
            "spec": {"type": "agent", "targetRef": {"apiVersion": "apps/v1", "kind": "Deployment", "name": "bare"}},
        }));
        let card: DynamicObject = serde_json::from_value(json!({
            "apiVersion": "agent.kagenti.dev/v1alpha1", "kind": "AgentCard",
            "metadata": {"name": "bare-card", "namespace": "team-a"},
            "spec": {"targetRef": {"apiVersion": "apps/v1", "kind": "Deployment", "name": "bare"}},
            "status": {"validSignature": true, "conditions": [{"type": "Verified", "status": "False", "reason": "SignatureInvalid"}]},
        }))
        .unwrap();
        let (target, status) = agent_card(&card).unwrap();
        assert_eq!(target, "bare");
        assert_eq!(status.verified_condition, Some(false));
        let fallback = agent(&bare, None, Default::default(), Some(status), &settings());
        assert!(
            !fallback.verification.verified,
            "Verified=False wins over validSignature"
        );
    }
}
