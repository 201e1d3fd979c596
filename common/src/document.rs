//! Hub documents (`tollgate.dev/v1alpha1` `EgressPolicy` and `EgressGuardrail`), multi-document YAML parsing,
//! and the one validation function used by the hub on apply, the CLI and `--dry-run`.

use std::collections::BTreeMap;
use std::fmt;

use ipnet::IpNet;
use serde::{Deserialize, Serialize};

use crate::egress_rule::{EgressRule, RawRule, parse_cidr, validate_rules};
use crate::field_error::{DocumentError, FieldError, child, index};
use crate::fqdn::Fqdn;
use crate::label_selector::{LabelSelector, RawLabelSelector, is_dns1123_label, is_dns1123_subdomain};
use crate::serde_paths::deserialize_strict;

pub const API_VERSION: &str = "tollgate.dev/v1alpha1";
pub const KIND_POLICY: &str = "EgressPolicy";
pub const KIND_GUARDRAIL: &str = "EgressGuardrail";

/// The largest document accepted, in bytes of its YAML text as written and of its canonical form.
pub const MAX_DOCUMENT_BYTES: usize = 256 * 1024;

/// `metadata` of a document.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct Metadata {
    pub name: String,
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    pub labels: BTreeMap<String, String>,
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    pub annotations: BTreeMap<String, String>,
}

/// Grants egress rules to the agents it selects, in the clusters it selects.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct EgressPolicy {
    pub metadata: Metadata,
    pub spec: EgressPolicySpec,
}

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct EgressPolicySpec {
    /// Clusters by their labels; `None` selects every cluster.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cluster_selector: Option<LabelSelector>,
    /// Namespaces by name; `None` (and no `namespace_selector`) selects every namespace.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub namespaces: Option<Vec<String>>,
    /// Namespaces by their labels.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub namespace_selector: Option<LabelSelector>,
    /// Agents by their `AgentRuntime` labels; `None` selects every agent.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub agent_selector: Option<LabelSelector>,
    pub egress: Vec<EgressRule>,
}

/// Fleet ceilings and defaults for the clusters it selects.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct EgressGuardrail {
    pub metadata: Metadata,
    pub spec: EgressGuardrailSpec,
}

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct EgressGuardrailSpec {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cluster_selector: Option<LabelSelector>,
    pub verified_default: VerifiedDefault,
    /// Ceiling for local `ipBlock` peers; `None` sets no ceiling.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub allowed_destinations: Option<Vec<AllowedDestination>>,
    /// Whether local in-cluster peers (selectors) survive the ceiling.
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub allow_in_cluster_peers: bool,
}

/// One entry of a guardrail ceiling: local `ipBlock` peers must lie inside a `cidr`; a local `fqdn` peer passes
/// only a ceiling that lists that exact name.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum AllowedDestination {
    Cidr(IpNet),
    Fqdn(Fqdn),
}

/// `{cidr: …}` or `{fqdn: …}`, as written (a plain map, not a YAML tag).
impl Serialize for AllowedDestination {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        use serde::ser::SerializeMap;
        let mut map = serializer.serialize_map(Some(1))?;
        match self {
            Self::Cidr(net) => map.serialize_entry("cidr", net)?,
            Self::Fqdn(name) => map.serialize_entry("fqdn", name)?,
        }
        map.end()
    }
}

/// What a verified agent without declared rules gets.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
pub enum VerifiedDefault {
    /// `egress: [{}]`, as the upstream operator does.
    #[default]
    AllowAll,
    /// Only the API-server and DNS baseline.
    BaselineOnly,
}

/// One hub document.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Document {
    Policy(EgressPolicy),
    Guardrail(EgressGuardrail),
}

impl Document {
    pub fn kind(&self) -> &'static str {
        match self {
            Self::Policy(_) => KIND_POLICY,
            Self::Guardrail(_) => KIND_GUARDRAIL,
        }
    }

    pub fn name(&self) -> &str {
        match self {
            Self::Policy(p) => &p.metadata.name,
            Self::Guardrail(g) => &g.metadata.name,
        }
    }

    /// The document's own labels (`metadata.labels`), which `get -l` and `apply --prune -l` select by.
    pub fn labels(&self) -> &BTreeMap<String, String> {
        match self {
            Self::Policy(p) => &p.metadata.labels,
            Self::Guardrail(g) => &g.metadata.labels,
        }
    }

    pub fn cluster_selector(&self) -> Option<&LabelSelector> {
        match self {
            Self::Policy(p) => p.spec.cluster_selector.as_ref(),
            Self::Guardrail(g) => g.spec.cluster_selector.as_ref(),
        }
    }

    /// The canonical YAML of this one document (stable field order, no `---`).
    pub fn to_yaml(&self) -> String {
        #[derive(Serialize)]
        #[serde(rename_all = "camelCase")]
        struct Out<'a, S: Serialize> {
            api_version: &'static str,
            kind: &'static str,
            metadata: &'a Metadata,
            spec: &'a S,
        }
        let result = match self {
            Self::Policy(p) => serde_yaml_ng::to_string(&Out {
                api_version: API_VERSION,
                kind: KIND_POLICY,
                metadata: &p.metadata,
                spec: &p.spec,
            }),
            Self::Guardrail(g) => serde_yaml_ng::to_string(&Out {
                api_version: API_VERSION,
                kind: KIND_GUARDRAIL,
                metadata: &g.metadata,
                spec: &g.spec,
            }),
        };
        result.expect("documents hold only strings, numbers, maps and lists")
    }
}

impl fmt::Display for Document {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.kind(), self.name())
    }
}

/// A named multi-document YAML text (a file, or standard input).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Source {
    pub name: String,
    pub text: String,
}

impl Source {
    pub fn new(name: impl Into<String>, text: impl Into<String>) -> Self {
        Self {
            name: name.into(),
            text: text.into(),
        }
    }
}

/// A complete, valid set of documents: names are unique per kind; iteration is sorted by kind then name.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct DocumentSet {
    pub policies: BTreeMap<String, EgressPolicy>,
    pub guardrails: BTreeMap<String, EgressGuardrail>,
}

impl DocumentSet {
    /// Parses and validates sources as one all-or-nothing set: the one definition of "valid" shared by hub
    /// apply, the CLI and `--dry-run`. Every error is returned, each with its source, document and field path.
    pub fn from_sources(sources: &[Source]) -> Result<Self, Vec<DocumentError>> {
        let mut errors = Vec::new();
        let mut set = Self::default();
        let mut seen: BTreeMap<(&'static str, String), String> = BTreeMap::new();
        for source in sources {
            for parsed in parse_source(source, &mut errors) {
                let key = (parsed.document.kind(), parsed.document.name().to_string());
                let here = format!("{} document {}", source.name, parsed.index);
                if let Some(first) = seen.get(&key) {
                    errors.push(DocumentError {
                        source: source.name.clone(),
                        document: parsed.index,
                        object: Some(parsed.document.to_string()),
                        line: Some(parsed.line),
                        error: FieldError::new(
                            "metadata.name",
                            format!("duplicate name: {} is already defined by {first}", parsed.document),
                        ),
                    });
                    continue;
                }
                seen.insert(key, here);
                set.insert(parsed.document);
            }
        }
        if errors.is_empty() { Ok(set) } else { Err(errors) }
    }

    /// Parses one text (for example a stored revision).
    pub fn from_yaml(name: &str, text: &str) -> Result<Self, Vec<DocumentError>> {
        Self::from_sources(&[Source::new(name, text)])
    }

    /// Adds or replaces a document.
    pub fn insert(&mut self, document: Document) {
        match document {
            Document::Policy(p) => {
                self.policies.insert(p.metadata.name.clone(), p);
            }
            Document::Guardrail(g) => {
                self.guardrails.insert(g.metadata.name.clone(), g);
            }
        }
    }

    /// The set after an apply of `applied`: its documents added or replaced; with `prune`, first every current
    /// document the selector matches (the empty selector: all) deleted, so that those not in `applied` are gone.
    pub fn applied(&self, applied: &DocumentSet, prune: Option<&LabelSelector>) -> DocumentSet {
        let mut next = DocumentSet::default();
        for document in self.documents() {
            if prune.is_none_or(|selector| !selector.matches(document.labels())) {
                next.insert(document);
            }
        }
        for document in applied.documents() {
            next.insert(document);
        }
        next
    }

    /// Removes a document by kind and name; returns whether it existed.
    pub fn remove(&mut self, kind: &str, name: &str) -> bool {
        match kind {
            KIND_POLICY => self.policies.remove(name).is_some(),
            KIND_GUARDRAIL => self.guardrails.remove(name).is_some(),
            _ => false,
        }
    }

    pub fn len(&self) -> usize {
        self.policies.len() + self.guardrails.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Every document, guardrails first, each kind sorted by name.
    pub fn documents(&self) -> impl Iterator<Item = Document> + '_ {
        self.guardrails
            .values()
            .cloned()
            .map(Document::Guardrail)
            .chain(self.policies.values().cloned().map(Document::Policy))
    }

    /// The canonical multi-document YAML of the set: equal sets give equal text.
    pub fn to_yaml(&self) -> String {
        self.documents()
            .map(|d| format!("---\n{}", d.to_yaml()))
            .collect::<Vec<_>>()
            .join("")
    }
}

/// One document of a source, with where it came from.
#[derive(Debug)]
struct ParsedDocument {
    index: usize,
    line: usize,
    document: Document,
}

/// A document's text within its source.
#[derive(Debug, PartialEq, Eq)]
struct Chunk<'a> {
    /// 1-based line of its first line in the source.
    line: usize,
    text: &'a str,
}

/// Splits a multi-document YAML source at `---` lines, dropping documents that hold only comments or blanks.
fn split_documents(text: &str) -> Vec<Chunk<'_>> {
    let mut chunks = Vec::new();
    let mut start = 0;
    let mut start_line = 1;
    let mut offset = 0;
    for (i, line) in text.split_inclusive('\n').enumerate() {
        let bare = line.trim_end_matches(['\n', '\r']);
        let is_marker = bare == "..."
            || (bare.starts_with("---") && bare[3..].chars().next().is_none_or(|c| c == ' ' || c == '\t'));
        if is_marker {
            chunks.push(Chunk {
                line: start_line,
                text: &text[start..offset],
            });
            // Content after `--- ` on the same line belongs to the next document.
            start = if bare == "..." { offset + line.len() } else { offset + 3 };
            start_line = if bare == "..." { i + 2 } else { i + 1 };
        }
        offset += line.len();
    }
    chunks.push(Chunk {
        line: start_line,
        text: &text[start..],
    });
    chunks.retain(|c| {
        c.text
            .lines()
            .any(|l| !l.trim().is_empty() && !l.trim_start().starts_with('#'))
    });
    chunks
}

fn parse_source(source: &Source, errors: &mut Vec<DocumentError>) -> Vec<ParsedDocument> {
    let mut out = Vec::new();
    for (i, chunk) in split_documents(&source.text).into_iter().enumerate() {
        let index = i + 1;
        let mut field_errors = Vec::new();
        let mut line = chunk.line;
        let mut object = None;
        if chunk.text.len() > MAX_DOCUMENT_BYTES {
            field_errors.push(FieldError::new(
                "",
                format!(
                    "document is {} bytes, over the limit of {MAX_DOCUMENT_BYTES} bytes; split it into smaller documents",
                    chunk.text.len()
                ),
            ));
        } else {
            let de = serde_yaml_ng::Deserializer::from_str(chunk.text);
            match deserialize_strict::<_, RawDocument>(de, "", &mut field_errors) {
                Ok(raw) => {
                    object = raw.object_name();
                    if let Some(document) = raw.validate(&mut field_errors)
                        && field_errors.is_empty()
                        && canonical_size_fits(&document, &mut field_errors)
                    {
                        out.push(ParsedDocument {
                            index,
                            line: chunk.line,
                            document,
                        });
                    }
                }
                Err(err) => {
                    if let Some(location) = err.location() {
                        line = chunk.line + location.line() - 1;
                    }
                }
            }
        }
        errors.extend(field_errors.into_iter().map(|error| DocumentError {
            source: source.name.clone(),
            document: index,
            object: object.clone(),
            line: Some(line),
            error,
        }));
    }
    out
}

/// Whether the document's canonical form (what the hub stores and sends) fits the document limit: a short text can
/// expand (a list of `{port: N}` written inline becomes several lines per entry), and a stored document must
/// always read back.
fn canonical_size_fits(document: &Document, errors: &mut Vec<FieldError>) -> bool {
    let size = document.to_yaml().len();
    if size <= MAX_DOCUMENT_BYTES {
        return true;
    }
    errors.push(FieldError::new(
        "",
        format!(
            "document is {size} bytes in canonical form (as stored), over the limit of {MAX_DOCUMENT_BYTES} bytes; \
             split it into smaller documents"
        ),
    ));
    false
}

/// A document as written; the spec holds the fields of both kinds so that every unknown field of either kind
/// is reported with its path.
#[derive(Debug, Deserialize)]
#[serde(
    rename_all = "camelCase",
    expecting = "a Tollgate document (apiVersion, kind, metadata, spec)"
)]
struct RawDocument {
    api_version: Option<String>,
    kind: Option<String>,
    metadata: Option<RawMetadata>,
    spec: Option<RawSpec>,
}

#[derive(Debug, Deserialize)]
#[serde(expecting = "metadata (name, labels, annotations)")]
struct RawMetadata {
    name: Option<String>,
    labels: Option<BTreeMap<String, String>>,
    annotations: Option<BTreeMap<String, String>>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase", expecting = "a document spec")]
struct RawSpec {
    cluster_selector: Option<RawLabelSelector>,
    // EgressPolicy
    namespaces: Option<Vec<String>>,
    namespace_selector: Option<RawLabelSelector>,
    agent_selector: Option<RawLabelSelector>,
    egress: Option<Vec<RawRule>>,
    // EgressGuardrail
    verified_default: Option<String>,
    allowed_destinations: Option<Vec<RawAllowedDestination>>,
    allow_in_cluster_peers: Option<bool>,
}

#[derive(Debug, Deserialize)]
#[serde(expecting = "an allowed destination (cidr or fqdn)")]
struct RawAllowedDestination {
    cidr: Option<String>,
    fqdn: Option<String>,
}

impl RawDocument {
    fn object_name(&self) -> Option<String> {
        let name = self.metadata.as_ref()?.name.as_deref()?;
        Some(format!("{}/{name}", self.kind.as_deref().unwrap_or("?")))
    }

    fn validate(self, errors: &mut Vec<FieldError>) -> Option<Document> {
        match self.api_version.as_deref() {
            Some(API_VERSION) => {}
            Some(other) => errors.push(FieldError::new(
                "apiVersion",
                format!("unsupported apiVersion {other:?}: expected {API_VERSION}"),
            )),
            None => errors.push(FieldError::new("apiVersion", format!("required: {API_VERSION}"))),
        }
        let metadata = validate_metadata(self.metadata, errors);
        let spec = self.spec.unwrap_or_default();
        match self.kind.as_deref() {
            Some(KIND_POLICY) => {
                let spec = validate_policy_spec(spec, errors);
                Some(Document::Policy(EgressPolicy { metadata, spec }))
            }
            Some(KIND_GUARDRAIL) => {
                let spec = validate_guardrail_spec(spec, errors);
                Some(Document::Guardrail(EgressGuardrail { metadata, spec }))
            }
            Some(other) => {
                errors.push(FieldError::new(
                    "kind",
                    format!("unknown kind {other:?}: expected {KIND_POLICY} or {KIND_GUARDRAIL}"),
                ));
                None
            }
            None => {
                errors.push(FieldError::new(
                    "kind",
                    format!("required: {KIND_POLICY} or {KIND_GUARDRAIL}"),
                ));
                None
            }
        }
    }
}

fn validate_metadata(raw: Option<RawMetadata>, errors: &mut Vec<FieldError>) -> Metadata {
    let Some(raw) = raw else {
        errors.push(FieldError::new("metadata.name", "required"));
        return Metadata::default();
    };
    let name = raw.name.unwrap_or_default();
    if name.is_empty() {
        errors.push(FieldError::new("metadata.name", "required: a name must not be empty"));
    } else if !is_dns1123_subdomain(&name) {
        errors.push(FieldError::new(
            "metadata.name",
            format!(
                "invalid name {name:?}: lowercase letters, digits, '-' and '.', at most 253 characters, starting and \
                 ending with a letter or digit"
            ),
        ));
    }
    let labels = raw.labels.unwrap_or_default();
    for (key, value) in &labels {
        let path = child("metadata.labels", key);
        crate::label_selector::check_label_key(key, &path, errors);
        crate::label_selector::check_label_value(value, &path, errors);
    }
    Metadata {
        name,
        labels,
        annotations: raw.annotations.unwrap_or_default(),
    }
}

fn refuse_foreign(present: bool, field: &str, owner: &str, errors: &mut Vec<FieldError>) {
    if present {
        errors.push(FieldError::new(
            child("spec", field),
            format!("unknown field for this kind: {field} belongs to {owner}"),
        ));
    }
}

fn validate_policy_spec(raw: RawSpec, errors: &mut Vec<FieldError>) -> EgressPolicySpec {
    refuse_foreign(
        raw.verified_default.is_some(),
        "verifiedDefault",
        KIND_GUARDRAIL,
        errors,
    );
    refuse_foreign(
        raw.allowed_destinations.is_some(),
        "allowedDestinations",
        KIND_GUARDRAIL,
        errors,
    );
    refuse_foreign(
        raw.allow_in_cluster_peers.is_some(),
        "allowInClusterPeers",
        KIND_GUARDRAIL,
        errors,
    );
    let cluster_selector = raw.cluster_selector.map(|s| s.validate("spec.clusterSelector", errors));
    if let Some(namespaces) = &raw.namespaces {
        if namespaces.is_empty() {
            errors.push(FieldError::new(
                "spec.namespaces",
                "must not be empty: omit the field to select every namespace",
            ));
        }
        for (i, ns) in namespaces.iter().enumerate() {
            if !is_dns1123_label(ns) {
                errors.push(FieldError::new(
                    index("spec.namespaces", i),
                    format!("invalid namespace name {ns:?}: lowercase letters, digits and '-', at most 63 characters"),
                ));
            }
        }
        if raw.namespace_selector.is_some() {
            errors.push(FieldError::new(
                "spec.namespaceSelector",
                "cannot be combined with spec.namespaces: choose namespaces by name or by labels",
            ));
        }
    }
    let namespace_selector = raw
        .namespace_selector
        .map(|s| s.validate("spec.namespaceSelector", errors));
    let agent_selector = raw.agent_selector.map(|s| s.validate("spec.agentSelector", errors));
    let egress = match raw.egress {
        None => {
            errors.push(FieldError::new("spec.egress", "required: the rules this policy grants"));
            Vec::new()
        }
        Some(rules) if rules.is_empty() => {
            errors.push(FieldError::new("spec.egress", "must hold at least one rule"));
            Vec::new()
        }
        Some(rules) => validate_rules(rules, "spec.egress", errors),
    };
    let mut namespaces = raw.namespaces;
    if let Some(list) = &mut namespaces {
        list.sort();
        list.dedup();
    }
    EgressPolicySpec {
        cluster_selector,
        namespaces,
        namespace_selector,
        agent_selector,
        egress,
    }
}

fn validate_guardrail_spec(raw: RawSpec, errors: &mut Vec<FieldError>) -> EgressGuardrailSpec {
    refuse_foreign(raw.namespaces.is_some(), "namespaces", KIND_POLICY, errors);
    refuse_foreign(
        raw.namespace_selector.is_some(),
        "namespaceSelector",
        KIND_POLICY,
        errors,
    );
    refuse_foreign(raw.agent_selector.is_some(), "agentSelector", KIND_POLICY, errors);
    refuse_foreign(raw.egress.is_some(), "egress", KIND_POLICY, errors);
    let cluster_selector = raw.cluster_selector.map(|s| s.validate("spec.clusterSelector", errors));
    let verified_default = match raw.verified_default.as_deref() {
        None | Some("AllowAll") => VerifiedDefault::AllowAll,
        Some("BaselineOnly") => VerifiedDefault::BaselineOnly,
        Some(other) => {
            errors.push(FieldError::new(
                "spec.verifiedDefault",
                format!("unknown value {other:?}: expected AllowAll or BaselineOnly"),
            ));
            VerifiedDefault::AllowAll
        }
    };
    let allowed_destinations = raw.allowed_destinations.map(|list| {
        let mut out: Vec<AllowedDestination> = list
            .iter()
            .enumerate()
            .filter_map(|(i, d)| {
                let path = index("spec.allowedDestinations", i);
                match (&d.cidr, &d.fqdn) {
                    (Some(cidr), None) => parse_cidr(cidr, &child(&path, "cidr"), errors).map(AllowedDestination::Cidr),
                    (None, Some(name)) => Fqdn::parse(name)
                        .map_err(|reason| errors.push(FieldError::new(child(&path, "fqdn"), reason)))
                        .ok()
                        .map(AllowedDestination::Fqdn),
                    (None, None) => {
                        errors.push(FieldError::new(path, "an allowed destination sets cidr or fqdn"));
                        None
                    }
                    (Some(_), Some(_)) => {
                        errors.push(FieldError::new(
                            path,
                            "an allowed destination sets cidr or fqdn, not both",
                        ));
                        None
                    }
                }
            })
            .collect();
        out.sort();
        out.dedup();
        out
    });
    EgressGuardrailSpec {
        cluster_selector,
        verified_default,
        allowed_destinations,
        allow_in_cluster_peers: raw.allow_in_cluster_peers.unwrap_or(false),
    }
}

#[cfg(test)]
mod tests;
