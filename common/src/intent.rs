//! The hub intent that applies to one cluster at one revision, its digest and its bound.

use std::collections::BTreeMap;

use sha2::{Digest, Sha256};

use crate::document::{Document, DocumentSet, EgressGuardrail, EgressPolicy};

/// The largest intent one cluster may receive: the canonical YAML of every document selecting it, as the spoke
/// caches it (the `documents.yaml` value of its cache ConfigMap, whose values may hold 1 MiB in all).
pub const MAX_CLUSTER_INTENT_BYTES: usize = 1024 * 1024;

/// The documents selecting one cluster, at the hub revision they come from (`None`: standalone, no hub).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Intent {
    pub revision: Option<u64>,
    pub policies: Vec<EgressPolicy>,
    pub guardrails: Vec<EgressGuardrail>,
}

impl Intent {
    /// The documents as a set (sorted by kind, then name).
    pub fn document_set(&self) -> DocumentSet {
        let mut set = DocumentSet::default();
        for policy in &self.policies {
            set.insert(Document::Policy(policy.clone()));
        }
        for guardrail in &self.guardrails {
            set.insert(Document::Guardrail(guardrail.clone()));
        }
        set
    }
}

impl DocumentSet {
    /// The documents that apply to a cluster with these labels.
    pub fn for_cluster(&self, labels: &BTreeMap<String, String>, revision: Option<u64>) -> Intent {
        Intent {
            revision,
            policies: self
                .policies
                .values()
                .filter(|p| p.spec.cluster_selector.as_ref().is_none_or(|s| s.matches(labels)))
                .cloned()
                .collect(),
            guardrails: self
                .guardrails
                .values()
                .filter(|g| g.spec.cluster_selector.as_ref().is_none_or(|s| s.matches(labels)))
                .cloned()
                .collect(),
        }
    }
}

/// The digest of one document: SHA-256 over its kind, name and canonical YAML.
pub fn document_digest(kind: &str, name: &str, yaml: &str) -> [u8; 32] {
    let mut hasher = Sha256::new();
    for part in [kind, name, yaml] {
        hasher.update((part.len() as u64).to_be_bytes());
        hasher.update(part.as_bytes());
    }
    hasher.finalize().into()
}

/// The digest of a cluster's intent: SHA-256 (hex) over the digests of its documents in set order (kind, then
/// name). The hub computes it from the documents it sends, the spoke from the documents it enforces; equal
/// document sets give equal digests.
pub fn digest<'a>(document_digests: impl IntoIterator<Item = &'a [u8; 32]>) -> String {
    let mut hasher = Sha256::new();
    for document in document_digests {
        hasher.update(document);
    }
    hex(&hasher.finalize())
}

/// Lowercase hexadecimal.
pub fn hex(bytes: &[u8]) -> String {
    use std::fmt::Write;
    bytes.iter().fold(String::with_capacity(bytes.len() * 2), |mut out, b| {
        let _ = write!(out, "{b:02x}");
        out
    })
}

impl DocumentSet {
    /// The digest of these documents ([`digest`]).
    pub fn digest(&self) -> String {
        let digests: Vec<[u8; 32]> = self
            .documents()
            .map(|d| document_digest(d.kind(), d.name(), &d.to_yaml()))
            .collect();
        digest(&digests)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const TWO: &str = "apiVersion: tollgate.dev/v1alpha1\nkind: EgressPolicy\nmetadata: {name: b}\nspec:\n  egress: [{to: [{ipBlock: {cidr: 10.0.0.0/8}}]}]\n---\napiVersion: tollgate.dev/v1alpha1\nkind: EgressGuardrail\nmetadata: {name: a}\nspec: {verifiedDefault: BaselineOnly}\n";

    #[test]
    fn the_digest_depends_on_the_documents_only() {
        let set = DocumentSet::from_yaml("t", TWO).unwrap();
        // Written in another order and style, parsed to the same set.
        let reordered = DocumentSet::from_yaml("u", &set.to_yaml()).unwrap();
        assert_eq!(set.digest(), reordered.digest());
        assert_eq!(set.digest().len(), 64);
        let intent = set.for_cluster(&Default::default(), Some(3));
        assert_eq!(
            intent.document_set().digest(),
            set.digest(),
            "through an Intent and back"
        );

        let other = DocumentSet::from_yaml("v", &TWO.replace("10.0.0.0/8", "10.0.0.0/9")).unwrap();
        assert_ne!(set.digest(), other.digest());
        assert_ne!(set.digest(), DocumentSet::default().digest());
        // The parts are length-prefixed: moving a byte between kind, name and text changes the digest.
        assert_ne!(document_digest("ab", "c", ""), document_digest("a", "bc", ""));
    }

    #[test]
    fn hex_is_lowercase_and_two_digits_per_byte() {
        assert_eq!(hex(&[0, 0xab, 0x0f]), "00ab0f");
    }
}
