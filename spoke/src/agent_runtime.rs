//! The `AgentRuntime` custom resource (`agent.kagenti.dev/v1alpha1`): a superset of the upstream schema that adds
//! `spec.egress`. Every upstream field is listed so that the API server prunes nothing the operator writes, and
//! `spec`, `status` and `status.card` keep unknown fields for what the operator adds later.

use std::borrow::Cow;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use kube::{CustomResource, Resource};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

/// The AgentRuntime CRD's name.
pub const CRD_NAME: &str = "agentruntimes.agent.kagenti.dev";

/// Desired state of an agent or tool workload.
// Several `printcolumn(...)` entries repeat `type_ = "string"`, which clippy mistakes for a duplicated attribute.
#[allow(clippy::duplicated_attributes)]
#[derive(CustomResource, Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[kube(
    group = "agent.kagenti.dev",
    version = "v1alpha1",
    kind = "AgentRuntime",
    namespaced,
    status = "AgentRuntimeStatus",
    shortname = "art",
    shortname = "agentrt",
    doc = "An agent or tool workload managed by the agent operator; Tollgate adds spec.egress.",
    printcolumn(name = "Type", type_ = "string", json_path = ".spec.type"),
    printcolumn(name = "Target", type_ = "string", json_path = ".spec.targetRef.name"),
    printcolumn(
        name = "Ready",
        type_ = "string",
        json_path = ".status.conditions[?(@.type==\"Ready\")].status"
    ),
    printcolumn(
        name = "Egress",
        type_ = "string",
        json_path = ".metadata.annotations.tollgate\\.dev/egress-mode"
    ),
    printcolumn(
        name = "Rules",
        type_ = "string",
        json_path = ".metadata.annotations.tollgate\\.dev/egress-rules"
    ),
    printcolumn(name = "Age", type_ = "date", json_path = ".metadata.creationTimestamp")
)]
#[serde(rename_all = "camelCase")]
#[schemars(extend("x-kubernetes-preserve-unknown-fields" = true))]
pub struct AgentRuntimeSpec {
    /// `agent` or `tool`.
    #[serde(rename = "type")]
    #[schemars(extend("enum" = ["agent", "tool"]))]
    pub workload_type: String,
    /// The workload this runtime describes: a Deployment, StatefulSet or agent-sandbox Sandbox.
    pub target_ref: TargetRef,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub identity: Option<Identity>,
    /// Upstream field; kept as written.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(schema_with = "any_value")]
    pub auth_bridge_mode: Option<RawJson>,
    /// Upstream field; kept as written.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(schema_with = "any_value")]
    pub mtls_mode: Option<RawJson>,
    /// Upstream field; kept as written.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(schema_with = "any_value")]
    pub tls_bridge_mode: Option<RawJson>,
    /// Upstream field about proxy iptables (not NetworkPolicy); kept as written.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(schema_with = "any_value")]
    pub egress_enforcement: Option<RawJson>,
    /// Tollgate: the destinations this agent may reach once verified (standard NetworkPolicy egress rules).
    // Kept as raw JSON: the spoke validates it with the same code as the hub, so that an invalid rule fails closed
    // for this agent and is reported, instead of hiding the whole object from the controller.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(schema_with = "egress_schema")]
    pub egress: Option<RawJson>,
}

/// `spec.targetRef`.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct TargetRef {
    pub api_version: String,
    pub kind: String,
    pub name: String,
}

/// `spec.identity`.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
#[schemars(extend("x-kubernetes-preserve-unknown-fields" = true))]
pub struct Identity {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub spiffe: Option<SpiffeIdentity>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub allowed_audiences: Option<Vec<String>>,
    /// Bind the attested SPIFFE ID to a trust domain; with `strict`, a failed binding makes the agent unverified.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub binding: Option<IdentityBinding>,
}

/// `spec.identity.spiffe`.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct SpiffeIdentity {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub trust_domain: Option<String>,
}

/// `spec.identity.binding`.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct IdentityBinding {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub trust_domain: Option<String>,
    #[serde(default)]
    pub strict: bool,
}

/// Observed state, written by the agent operator.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
#[schemars(extend("x-kubernetes-preserve-unknown-fields" = true))]
pub struct AgentRuntimeStatus {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub configured_pods: Option<i32>,
    #[serde(default, skip_serializing_if = "Option::is_none", deserialize_with = "raw_list")]
    #[schemars(schema_with = "any_list")]
    pub linked_skills: Option<RawJson>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub conditions: Option<Vec<Condition>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub card: Option<CardStatus>,
}

/// A status condition.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct Condition {
    #[serde(rename = "type")]
    pub type_: String,
    pub status: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_transition_time: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
}

/// `status.card`: the A2A agent card inline, plus how it was fetched and verified.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
#[schemars(extend("x-kubernetes-preserve-unknown-fields" = true))]
pub struct CardStatus {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub description: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub version: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub url: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none", deserialize_with = "raw_list")]
    #[schemars(schema_with = "any_list")]
    pub skills: Option<RawJson>,
    /// RFC 3339.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_card_fetch_time: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub card_hash: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub protocol: Option<String>,
    /// `mtls` or `http`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub transport_security: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub valid_signature: Option<bool>,
    #[serde(default, rename = "signatureKeyID", skip_serializing_if = "Option::is_none")]
    pub signature_key_id: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(schema_with = "any_value")]
    pub signature_verification_details: Option<RawJson>,
    #[serde(default, rename = "attestedAgentSpiffeID", skip_serializing_if = "Option::is_none")]
    pub attested_agent_spiffe_id: Option<String>,
}

/// A JSON value the spoke keeps as its compact text. The stores hold every AgentRuntime of the cluster, and a parsed
/// `Value` costs a map node of several hundred bytes per JSON object (~9 KiB for three egress rules, 0.4 KiB as
/// text); the few readers parse it when they need it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RawJson(Box<str>);

impl RawJson {
    /// The value.
    pub fn parse(&self) -> serde_json::Result<Value> {
        serde_json::from_str(&self.0)
    }

    /// The compact JSON text.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl From<Value> for RawJson {
    fn from(value: Value) -> Self {
        Self(value.to_string().into_boxed_str())
    }
}

impl Serialize for RawJson {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        use serde::ser::Error as _;
        self.parse().map_err(S::Error::custom)?.serialize(serializer)
    }
}

impl<'de> Deserialize<'de> for RawJson {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        Value::deserialize(deserializer).map(Self::from)
    }
}

/// A list of any values (an object whose field holds something else does not parse, as with `Vec<Value>`).
fn raw_list<'de, D: serde::Deserializer<'de>>(deserializer: D) -> Result<Option<RawJson>, D::Error> {
    let list = Option::<Vec<Value>>::deserialize(deserializer)?;
    Ok(list.map(|items| RawJson::from(Value::Array(items))))
}

fn any_value(_: &mut schemars::SchemaGenerator) -> schemars::Schema {
    schemars::json_schema!({"x-kubernetes-preserve-unknown-fields": true})
}

fn any_list(_: &mut schemars::SchemaGenerator) -> schemars::Schema {
    schemars::json_schema!({
        "type": "array",
        "items": {"type": "object", "x-kubernetes-preserve-unknown-fields": true},
    })
}

/// The schema of a Kubernetes label selector (`matchLabels`, `matchExpressions`).
pub(crate) fn label_selector_schema() -> Value {
    json!({
        "type": "object",
        "properties": {
            "matchLabels": {"type": "object", "additionalProperties": {"type": "string"}},
            "matchExpressions": {
                "type": "array",
                "items": {
                    "type": "object",
                    "required": ["key", "operator"],
                    "properties": {
                        "key": {"type": "string"},
                        "operator": {"type": "string"},
                        "values": {"type": "array", "items": {"type": "string"}},
                    },
                },
            },
        },
    })
}

/// The shape of `spec.egress`: `{rules: [NetworkPolicyEgressRule]}`. Only the shape is checked by the API
/// server; the spoke's validation (shared with the hub) gives the reasons, and refuses port-only rules.
fn egress_schema(_: &mut schemars::SchemaGenerator) -> schemars::Schema {
    let selector = label_selector_schema();
    schemars::json_schema!({
        "description": "Destinations this agent may reach once verified, in addition to DNS and the API server.",
        "type": "object",
        "properties": {
            "rules": {
                "type": "array",
                "items": {
                    "type": "object",
                    "properties": {
                        "to": {
                            "type": "array",
                            "items": {
                                "type": "object",
                                "properties": {
                                    "ipBlock": {
                                        "type": "object",
                                        "required": ["cidr"],
                                        "properties": {
                                            "cidr": {"type": "string"},
                                            "except": {"type": "array", "items": {"type": "string"}},
                                        },
                                    },
                                    "namespaceSelector": selector,
                                    "podSelector": selector,
                                    "fqdn": {
                                        "description": "A DNS name (lowercase, no wildcard) the spoke resolves in this cluster; its addresses become /32 or /128 ipBlocks.",
                                        "type": "string",
                                        "maxLength": 254,
                                    },
                                },
                            },
                        },
                        "ports": {
                            "type": "array",
                            "items": {
                                "type": "object",
                                "properties": {
                                    "protocol": {"type": "string"},
                                    "port": {"x-kubernetes-int-or-string": true},
                                    "endPort": {"type": "integer", "format": "int32"},
                                },
                            },
                        },
                    },
                },
            },
        },
    })
}

/// An `AgentRuntime` as the spoke's watch keeps it: parsed, or — when some field has a type the spoke cannot read
/// (an upstream CRD whose `status` keeps unknown fields accepts `lastCardFetchTime: 12`) — its metadata and what
/// is wrong, so that one malformed object never fails the whole list and stalls every agent.
#[derive(Clone, Debug)]
pub enum ObservedRuntime {
    Valid(Box<AgentRuntime>),
    Malformed(Box<MalformedRuntime>),
}

impl ObservedRuntime {
    /// The card's `lastCardFetchTime`, in seconds since the Unix epoch (`None`: none, or not a timestamp).
    pub fn card_fetched_unix(&self) -> Option<i64> {
        let Self::Valid(runtime) = self else { return None };
        runtime
            .status
            .as_ref()?
            .card
            .as_ref()?
            .last_card_fetch_time
            .as_deref()?
            .parse::<k8s_openapi::jiff::Timestamp>()
            .ok()
            .map(|t| t.as_second())
    }

    /// Whether the update from `self` to `newer` can be stored without a reconcile pass: it moves nothing but
    /// `status.card.lastCardFetchTime` (the agent operator refreshes each card periodically), and, with a maximum
    /// card age, the card is fresh at `now_unix` before and after, so no verification decision changes now (when
    /// it would turn stale is the pass's staleness timer's business).
    pub fn refresh_changes_nothing(&self, newer: &Self, max_card_age_secs: Option<u64>, now_unix: i64) -> bool {
        let fresh = |runtime: &Self| match max_card_age_secs {
            None => true,
            Some(max) => runtime
                .card_fetched_unix()
                .is_some_and(|fetched| now_unix.saturating_sub(fetched) <= i64::try_from(max).unwrap_or(i64::MAX)),
        };
        // An earlier fetch time than stored would bring the moment the card turns stale forward: not quiet.
        let forward = max_card_age_secs.is_none() || newer.card_fetched_unix() >= self.card_fetched_unix();
        self.differs_only_in_card_fetch_time(newer) && fresh(self) && fresh(newer) && forward
    }

    /// Whether `newer` says nothing new but a later `status.card.lastCardFetchTime`. Anything else (spec, labels,
    /// annotations, owners, deletion, the rest of the status, a malformed object) counts as a change.
    pub fn differs_only_in_card_fetch_time(&self, newer: &Self) -> bool {
        let (Self::Valid(old), Self::Valid(new)) = (self, newer) else {
            return false;
        };
        let meta = |runtime: &AgentRuntime| {
            let mut meta = runtime.metadata.clone();
            meta.resource_version = None;
            meta.managed_fields = None;
            meta
        };
        let status = |runtime: &AgentRuntime| {
            let mut status = runtime.status.clone();
            if let Some(card) = status.as_mut().and_then(|s| s.card.as_mut()) {
                card.last_card_fetch_time = None;
            }
            status
        };
        old.spec == new.spec && meta(old) == meta(new) && status(old) == status(new)
    }
}

/// What is known of an `AgentRuntime` that does not parse.
#[derive(Clone, Debug, PartialEq)]
pub struct MalformedRuntime {
    pub metadata: ObjectMeta,
    /// `spec.targetRef.name`, when it can be read: the agent's policy can then still be written (Restricted).
    pub target_name: Option<String>,
    /// `spec.targetRef.kind`, when it can be read.
    pub target_kind: Option<String>,
    /// The path of the field that does not parse (`status.card.lastCardFetchTime`).
    pub field: String,
    pub error: String,
}

impl MalformedRuntime {
    /// One sentence naming the field.
    pub fn message(&self) -> String {
        format!(
            "AgentRuntime field {} cannot be read ({}): the agent is treated as unverified (restricted) until it is fixed",
            self.field, self.error
        )
    }
}

impl<'de> Deserialize<'de> for ObservedRuntime {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        use serde::de::Error as _;
        let value = Value::deserialize(deserializer)?;
        match serde_path_to_error::deserialize::<_, AgentRuntime>(&value) {
            Ok(runtime) => Ok(Self::Valid(Box::new(runtime))),
            Err(error) => {
                // Without readable metadata there is no object to speak of: that error is the list's.
                let metadata = ObjectMeta::deserialize(value.get("metadata").unwrap_or(&Value::Null))
                    .map_err(|e| D::Error::custom(format!("metadata: {e}")))?;
                let field = error.path().to_string();
                Ok(Self::Malformed(Box::new(MalformedRuntime {
                    metadata,
                    target_name: value
                        .pointer("/spec/targetRef/name")
                        .and_then(Value::as_str)
                        .map(String::from),
                    target_kind: value
                        .pointer("/spec/targetRef/kind")
                        .and_then(Value::as_str)
                        .map(String::from),
                    field: if field == "." {
                        "(the object)".to_string()
                    } else {
                        field
                    },
                    error: error.into_inner().to_string(),
                })))
            }
        }
    }
}

impl Resource for ObservedRuntime {
    type DynamicType = ();
    type Scope = <AgentRuntime as Resource>::Scope;

    fn kind(dt: &()) -> Cow<'_, str> {
        AgentRuntime::kind(dt)
    }

    fn group(dt: &()) -> Cow<'_, str> {
        AgentRuntime::group(dt)
    }

    fn version(dt: &()) -> Cow<'_, str> {
        AgentRuntime::version(dt)
    }

    fn api_version(dt: &()) -> Cow<'_, str> {
        AgentRuntime::api_version(dt)
    }

    fn plural(dt: &()) -> Cow<'_, str> {
        AgentRuntime::plural(dt)
    }

    fn meta(&self) -> &ObjectMeta {
        match self {
            Self::Valid(runtime) => &runtime.metadata,
            Self::Malformed(malformed) => &malformed.metadata,
        }
    }

    fn meta_mut(&mut self) -> &mut ObjectMeta {
        match self {
            Self::Valid(runtime) => &mut runtime.metadata,
            Self::Malformed(malformed) => &mut malformed.metadata,
        }
    }
}

/// The CRD as YAML, as `tollgate-spoke crd` prints it and `deploy/crds/` holds it.
pub fn crd_yaml() -> String {
    use kube::CustomResourceExt;
    serde_yaml_ng::to_string(&AgentRuntime::crd()).expect("a CRD serializes to YAML")
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A card refresh (a later fetch time, a new resourceVersion) is no change; anything else is.
    #[test]
    fn only_a_later_card_fetch_time_counts_as_no_change() {
        let runtime = |rv: &str, fetched: &str, transport: &str, label: &str| {
            serde_json::from_value::<ObservedRuntime>(json!({
                "apiVersion": "agent.kagenti.dev/v1alpha1",
                "kind": "AgentRuntime",
                "metadata": {"name": "a", "namespace": "ns", "resourceVersion": rv, "labels": {"tier": label}},
                "spec": {"type": "agent", "targetRef": {"apiVersion": "apps/v1", "kind": "Deployment", "name": "a"}},
                "status": {"card": {"transportSecurity": transport, "lastCardFetchTime": fetched}},
            }))
            .unwrap()
        };
        let old = runtime("1", "2026-11-28T12:00:00Z", "mtls", "llm");
        assert!(old.differs_only_in_card_fetch_time(&runtime("2", "2026-11-28T12:05:00Z", "mtls", "llm")));
        assert!(!old.differs_only_in_card_fetch_time(&runtime("2", "2026-11-28T12:05:00Z", "http", "llm")));
        assert!(!old.differs_only_in_card_fetch_time(&runtime("2", "2026-11-28T12:00:00Z", "mtls", "tools")));
        let malformed = serde_json::from_value::<ObservedRuntime>(json!({
            "apiVersion": "agent.kagenti.dev/v1alpha1",
            "kind": "AgentRuntime",
            "metadata": {"name": "a", "namespace": "ns", "resourceVersion": "3"},
            "spec": {"type": "agent", "targetRef": {"apiVersion": "apps/v1", "kind": "Deployment", "name": "a"}},
            "status": {"card": {"lastCardFetchTime": 12}},
        }))
        .unwrap();
        assert!(matches!(malformed, ObservedRuntime::Malformed(_)));
        assert!(!old.differs_only_in_card_fetch_time(&malformed));
        assert!(!malformed.differs_only_in_card_fetch_time(&malformed.clone()));

        // With a maximum card age: quiet only while the card is fresh before and after.
        let at = |t: &str| t.parse::<k8s_openapi::jiff::Timestamp>().unwrap().as_second();
        let now = at("2026-11-28T12:10:00Z");
        let newer = runtime("2", "2026-11-28T12:05:00Z", "mtls", "llm");
        assert_eq!(old.card_fetched_unix(), Some(at("2026-11-28T12:00:00Z")));
        assert!(old.refresh_changes_nothing(&newer, None, now));
        assert!(
            old.refresh_changes_nothing(&newer, Some(3600), now),
            "fresh before and after"
        );
        assert!(
            !old.refresh_changes_nothing(&newer, Some(300), now),
            "stale before, fresh after: a decision changes"
        );
        assert!(
            !newer.refresh_changes_nothing(&old, Some(420), now),
            "fresh before, stale after (an older time written back)"
        );
        assert!(
            !newer.refresh_changes_nothing(&old, Some(3600), now),
            "an older time written back, still fresh: the moment it turns stale moves forward"
        );
    }

    #[test]
    fn reads_an_operator_written_object_with_unknown_fields() {
        let object: AgentRuntime = serde_json::from_value(json!({
            "apiVersion": "agent.kagenti.dev/v1alpha1",
            "kind": "AgentRuntime",
            "metadata": {"name": "weather", "namespace": "team-a"},
            "spec": {
                "type": "agent",
                "targetRef": {"apiVersion": "apps/v1", "kind": "Deployment", "name": "weather"},
                "identity": {"spiffe": {"trustDomain": "example.org"}, "binding": {"trustDomain": "example.org", "strict": true}},
                "mtlsMode": "strict",
                "futureField": {"x": 1},
                "egress": {"rules": [{"to": [{"ipBlock": {"cidr": "203.0.113.0/24"}}]}]},
            },
            "status": {
                "card": {
                    "transportSecurity": "mtls",
                    "attestedAgentSpiffeID": "spiffe://example.org/ns/team-a/sa/weather",
                    "signatureKeyID": "k1",
                    "validSignature": true,
                    "lastCardFetchTime": "2026-11-28T12:00:00Z",
                    "skills": [{"id": "forecast"}],
                },
                "conditions": [{"type": "Ready", "status": "True"}],
            },
        }))
        .unwrap();
        let binding = object.spec.identity.as_ref().unwrap().binding.as_ref().unwrap();
        assert!(binding.strict);
        let card = object.status.as_ref().unwrap().card.as_ref().unwrap();
        assert_eq!(
            card.attested_agent_spiffe_id.as_deref(),
            Some("spiffe://example.org/ns/team-a/sa/weather")
        );
        assert_eq!(card.signature_key_id.as_deref(), Some("k1"));
        assert!(object.spec.egress.is_some());
    }

    #[test]
    fn values_the_spoke_only_passes_on_are_kept_as_compact_text_and_read_back_whole() {
        let egress = json!({"rules": [{"to": [{"ipBlock": {"cidr": "203.0.113.0/24", "except": ["203.0.113.0/25"]}}],
                                        "ports": [{"protocol": "TCP", "port": 443}]}]});
        let skills = json!([{"id": "forecast", "tags": ["weather"]}, {"id": "alerts"}]);
        let object: AgentRuntime = serde_json::from_value(json!({
            "metadata": {"name": "weather", "namespace": "team-a"},
            "spec": {"type": "agent", "targetRef": {"apiVersion": "apps/v1", "kind": "Deployment", "name": "weather"},
                     "mtlsMode": "strict", "egress": egress},
            "status": {"card": {"skills": skills, "signatureVerificationDetails": {"alg": "ES256"}}},
        }))
        .unwrap();
        let stored = object.spec.egress.as_ref().unwrap();
        assert_eq!(
            stored.as_str(),
            egress.to_string(),
            "one line of JSON text, no parsed tree"
        );
        assert_eq!(stored.parse().unwrap(), egress);
        let card = object.status.as_ref().unwrap().card.as_ref().unwrap();
        assert_eq!(card.skills.as_ref().unwrap().parse().unwrap(), skills);
        let written = serde_json::to_value(&object).unwrap();
        assert_eq!(
            written["spec"]["egress"], egress,
            "written back as the value, not as a string"
        );
        assert_eq!(written["spec"]["mtlsMode"], "strict");
        assert_eq!(written["status"]["card"]["skills"], skills);
        assert_eq!(
            written["status"]["card"]["signatureVerificationDetails"],
            json!({"alg": "ES256"})
        );

        // A list field holding something else does not parse, as before the values were kept as text.
        let observed: ObservedRuntime = serde_json::from_value(json!({
            "metadata": {"name": "weather", "namespace": "team-a"},
            "spec": {"type": "agent", "targetRef": {"apiVersion": "apps/v1", "kind": "Deployment", "name": "weather"}},
            "status": {"card": {"skills": "forecast"}},
        }))
        .unwrap();
        let ObservedRuntime::Malformed(malformed) = observed else {
            panic!("a string for status.card.skills was accepted");
        };
        assert_eq!(malformed.field, "status.card.skills");
    }

    #[test]
    fn a_malformed_object_keeps_its_metadata_the_field_and_its_target() {
        let observed: ObservedRuntime = serde_json::from_value(json!({
            "apiVersion": "agent.kagenti.dev/v1alpha1",
            "kind": "AgentRuntime",
            "metadata": {"name": "weather", "namespace": "team-a", "uid": "u1"},
            "spec": {"type": "agent", "targetRef": {"apiVersion": "apps/v1", "kind": "Deployment", "name": "weather-dep"}},
            "status": {"card": {"transportSecurity": "mtls", "lastCardFetchTime": 1764331200}},
        }))
        .unwrap();
        let ObservedRuntime::Malformed(malformed) = &observed else {
            panic!("parsed: {observed:?}");
        };
        assert_eq!(malformed.field, "status.card.lastCardFetchTime");
        assert_eq!(malformed.target_name.as_deref(), Some("weather-dep"));
        assert_eq!(observed.meta().name.as_deref(), Some("weather"));
        assert!(
            malformed.message().contains("status.card.lastCardFetchTime"),
            "{}",
            malformed.message()
        );

        let no_target: ObservedRuntime = serde_json::from_value(json!({
            "metadata": {"name": "x", "namespace": "team-a"},
            "spec": {"type": "agent", "targetRef": "weather"},
        }))
        .unwrap();
        let ObservedRuntime::Malformed(malformed) = no_target else {
            panic!("parsed")
        };
        assert_eq!(
            (malformed.field.as_str(), malformed.target_name),
            ("spec.targetRef", None)
        );

        let valid: ObservedRuntime = serde_json::from_value(json!({
            "metadata": {"name": "ok", "namespace": "team-a"},
            "spec": {"type": "agent", "targetRef": {"apiVersion": "apps/v1", "kind": "Deployment", "name": "ok"},
                     "egress": "not rules"},
        }))
        .unwrap();
        assert!(
            matches!(valid, ObservedRuntime::Valid(_)),
            "spec.egress is checked by the shared validation"
        );
    }

    #[test]
    fn crd_keeps_upstream_names_columns_and_unknown_fields() {
        let crd: serde_json::Value = serde_json::to_value(<AgentRuntime as kube::CustomResourceExt>::crd()).unwrap();
        assert_eq!(crd["metadata"]["name"], "agentruntimes.agent.kagenti.dev");
        assert_eq!(crd["spec"]["names"]["shortNames"], json!(["art", "agentrt"]));
        let version = &crd["spec"]["versions"][0];
        let columns: Vec<&str> = version["additionalPrinterColumns"]
            .as_array()
            .unwrap()
            .iter()
            .map(|c| c["name"].as_str().unwrap())
            .collect();
        // The upstream columns, plus Tollgate's view of the agent's egress (annotations the spoke writes).
        assert_eq!(columns, ["Type", "Target", "Ready", "Egress", "Rules", "Age"]);
        assert_eq!(version["subresources"]["status"], json!({}));
        let props = &version["schema"]["openAPIV3Schema"]["properties"];
        assert_eq!(props["spec"]["x-kubernetes-preserve-unknown-fields"], true);
        assert_eq!(props["status"]["x-kubernetes-preserve-unknown-fields"], true);
        assert_eq!(
            props["status"]["properties"]["card"]["x-kubernetes-preserve-unknown-fields"],
            true
        );
        assert_eq!(props["spec"]["required"], json!(["targetRef", "type"]));
        for field in [
            "type",
            "targetRef",
            "identity",
            "authBridgeMode",
            "mtlsMode",
            "tlsBridgeMode",
            "egressEnforcement",
            "egress",
        ] {
            assert!(props["spec"]["properties"].get(field).is_some(), "spec.{field} missing");
        }
        for field in [
            "name",
            "description",
            "version",
            "url",
            "skills",
            "lastCardFetchTime",
            "cardHash",
            "protocol",
            "transportSecurity",
            "validSignature",
            "signatureKeyID",
            "signatureVerificationDetails",
            "attestedAgentSpiffeID",
        ] {
            assert!(
                props["status"]["properties"]["card"]["properties"].get(field).is_some(),
                "status.card.{field} missing"
            );
        }
        assert_eq!(
            props["spec"]["properties"]["egress"]["properties"]["rules"]["items"]["properties"]["ports"]["items"]["properties"]
                ["port"],
            json!({"nullable": true, "x-kubernetes-int-or-string": true})
        );
    }
}
