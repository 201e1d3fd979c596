//! DNS names as egress destinations (`fqdn: api.example.com`): the name type and its validation. The spoke
//! resolves names in its own cluster; the planner receives the resolved addresses as input.

use std::fmt;

use serde::Serialize;

/// Longest name in presentation form, without the trailing dot (RFC 1035 §2.3.4).
pub const MAX_NAME_LEN: usize = 253;
/// Longest label.
pub const MAX_LABEL_LEN: usize = 63;

/// A fully qualified DNS name: lowercase RFC 1123 labels, at least two of them, stored without the trailing dot.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
#[serde(transparent)]
pub struct Fqdn(String);

impl Fqdn {
    /// Validates a name as written in a rule; the error is one sentence that says why and what to write instead.
    pub fn parse(text: &str) -> Result<Self, String> {
        let name = text.strip_suffix('.').unwrap_or(text);
        if name.is_empty() {
            return Err("an empty name: write a DNS name such as api.example.com".into());
        }
        if name.contains('*') {
            return Err(format!(
                "{text:?} is a wildcard: wildcards are refused because a NetworkPolicy can only name addresses, and \
                 the addresses of every name under a domain cannot be known; list each name"
            ));
        }
        if name.parse::<std::net::IpAddr>().is_ok() {
            return Err(format!(
                "{text:?} is an address, not a name: use an ipBlock with {name}/32 (or /128)"
            ));
        }
        if name.len() > MAX_NAME_LEN {
            return Err(format!(
                "the name is {} characters long: a DNS name has at most {MAX_NAME_LEN}",
                name.len()
            ));
        }
        if name.bytes().any(|b| b.is_ascii_uppercase()) {
            return Err(format!(
                "{text:?} has uppercase letters: write it in lowercase ({:?})",
                name.to_ascii_lowercase()
            ));
        }
        let labels: Vec<&str> = name.split('.').collect();
        if labels.len() < 2 {
            return Err(format!(
                "{text:?} is a single label: pods resolve it through their search domains, the spoke cannot; write \
                 the fully qualified name of the host (for pods in the cluster use namespaceSelector or podSelector: \
                 policies see pod addresses, not Service addresses)"
            ));
        }
        for label in &labels {
            if label.is_empty() {
                return Err(format!(
                    "{text:?} has an empty label (two dots in a row, or a leading dot)"
                ));
            }
            if label.len() > MAX_LABEL_LEN {
                return Err(format!(
                    "label {label:?} is {} characters long: a label has at most {MAX_LABEL_LEN}",
                    label.len()
                ));
            }
            if let Some(bad) = label
                .chars()
                .find(|c| !(c.is_ascii_lowercase() || c.is_ascii_digit() || *c == '-'))
            {
                return Err(format!(
                    "label {label:?} has the character {bad:?}: a name has only lowercase letters, digits, '-' and \
                     dots (internationalized names in their xn-- form)"
                ));
            }
            if label.starts_with('-') || label.ends_with('-') {
                return Err(format!("label {label:?} starts or ends with '-'"));
            }
        }
        Ok(Self(name.to_string()))
    }

    /// The name without the trailing dot.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for Fqdn {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accepts_lowercase_names_and_drops_the_trailing_dot() {
        assert_eq!(Fqdn::parse("api.openai.com").unwrap().as_str(), "api.openai.com");
        assert_eq!(Fqdn::parse("api.openai.com.").unwrap().as_str(), "api.openai.com");
        assert_eq!(
            Fqdn::parse("xn--bcher-kva.example").unwrap().as_str(),
            "xn--bcher-kva.example"
        );
        assert_eq!(
            Fqdn::parse("db.team-a.svc.cluster.local").unwrap().to_string(),
            "db.team-a.svc.cluster.local"
        );
        let longest = format!(
            "{}.{}.{}.{}",
            "a".repeat(63),
            "b".repeat(63),
            "c".repeat(63),
            "d".repeat(61)
        );
        assert_eq!(longest.len(), MAX_NAME_LEN);
        assert!(Fqdn::parse(&longest).is_ok());
    }

    #[test]
    fn refuses_with_the_reason() {
        let cases = [
            ("*.example.com", "wildcard"),
            ("api.*.com", "wildcard"),
            ("", "empty name"),
            (".", "empty name"),
            ("API.example.com", "lowercase (\"api.example.com\")"),
            ("localhost", "single label"),
            ("a..example.com", "empty label"),
            (".example.com", "empty label"),
            ("a_b.example.com", "'_'"),
            ("-a.example.com", "starts or ends with '-'"),
            ("203.0.113.7", "use an ipBlock with 203.0.113.7/32"),
            ("2001:db8::1", "an address"),
            ("bücher.example", "xn--"),
        ];
        for (text, expected) in cases {
            let error = Fqdn::parse(text).unwrap_err();
            assert!(error.contains(expected), "{text:?}: {error}");
        }
        let long_label = format!("{}.example.com", "a".repeat(64));
        assert!(Fqdn::parse(&long_label).unwrap_err().contains("at most 63"));
        let long_name = format!(
            "{}.{}.{}.{}",
            "a".repeat(63),
            "b".repeat(63),
            "c".repeat(63),
            "d".repeat(62)
        );
        assert!(Fqdn::parse(&long_name).unwrap_err().contains("at most 253"));
    }
}
