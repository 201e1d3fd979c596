//! Kubernetes-style label selectors (`matchLabels` + `matchExpressions`) and label syntax checks.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::field_error::{FieldError, child, index};

/// A validated label selector. The empty selector matches everything.
#[derive(Clone, Debug, Default, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct LabelSelector {
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    pub match_labels: BTreeMap<String, String>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub match_expressions: Vec<Requirement>,
}

/// One `matchExpressions` entry.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
pub struct Requirement {
    pub key: String,
    pub operator: Operator,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub values: Vec<String>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
pub enum Operator {
    In,
    NotIn,
    Exists,
    DoesNotExist,
}

impl Operator {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::In => "In",
            Self::NotIn => "NotIn",
            Self::Exists => "Exists",
            Self::DoesNotExist => "DoesNotExist",
        }
    }
}

impl LabelSelector {
    /// A selector of exactly these labels.
    pub fn from_labels<K: Into<String>, V: Into<String>>(labels: impl IntoIterator<Item = (K, V)>) -> Self {
        Self {
            match_labels: labels.into_iter().map(|(k, v)| (k.into(), v.into())).collect(),
            match_expressions: Vec::new(),
        }
    }

    /// Whether `labels` satisfy every term of the selector (Kubernetes semantics).
    pub fn matches(&self, labels: &BTreeMap<String, String>) -> bool {
        self.match_labels.iter().all(|(k, v)| labels.get(k) == Some(v))
            && self.match_expressions.iter().all(|r| r.matches(labels))
    }

    pub fn is_empty(&self) -> bool {
        self.match_labels.is_empty() && self.match_expressions.is_empty()
    }
}

impl Requirement {
    pub fn matches(&self, labels: &BTreeMap<String, String>) -> bool {
        let value = labels.get(&self.key);
        match self.operator {
            Operator::In => value.is_some_and(|v| self.values.contains(v)),
            Operator::NotIn => value.is_none_or(|v| !self.values.contains(v)),
            Operator::Exists => value.is_some(),
            Operator::DoesNotExist => value.is_none(),
        }
    }
}

/// Selector as written in a document, before validation.
#[derive(Debug, Default, Deserialize)]
#[serde(
    rename_all = "camelCase",
    expecting = "a label selector (matchLabels, matchExpressions)"
)]
pub(crate) struct RawLabelSelector {
    match_labels: Option<BTreeMap<String, String>>,
    match_expressions: Option<Vec<RawRequirement>>,
}

#[derive(Debug, Deserialize)]
#[serde(expecting = "a selector requirement (key, operator, values)")]
pub(crate) struct RawRequirement {
    key: String,
    operator: String,
    values: Option<Vec<String>>,
}

impl RawLabelSelector {
    pub(crate) fn validate(self, path: &str, errors: &mut Vec<FieldError>) -> LabelSelector {
        let mut selector = LabelSelector::default();
        let labels_path = child(path, "matchLabels");
        for (key, value) in self.match_labels.unwrap_or_default() {
            let key_path = child(&labels_path, &key);
            check_label_key(&key, &key_path, errors);
            check_label_value(&value, &key_path, errors);
            selector.match_labels.insert(key, value);
        }
        let expressions_path = child(path, "matchExpressions");
        for (i, raw) in self.match_expressions.unwrap_or_default().into_iter().enumerate() {
            let req_path = index(&expressions_path, i);
            check_label_key(&raw.key, &child(&req_path, "key"), errors);
            let operator = match raw.operator.as_str() {
                "In" => Operator::In,
                "NotIn" => Operator::NotIn,
                "Exists" => Operator::Exists,
                "DoesNotExist" => Operator::DoesNotExist,
                other => {
                    errors.push(FieldError::new(
                        child(&req_path, "operator"),
                        format!("unknown operator {other:?}: expected In, NotIn, Exists or DoesNotExist"),
                    ));
                    continue;
                }
            };
            let values = raw.values.unwrap_or_default();
            let values_path = child(&req_path, "values");
            match operator {
                Operator::In | Operator::NotIn if values.is_empty() => errors.push(FieldError::new(
                    values_path.clone(),
                    format!("must not be empty for operator {}", operator.as_str()),
                )),
                Operator::Exists | Operator::DoesNotExist if !values.is_empty() => errors.push(FieldError::new(
                    values_path.clone(),
                    format!("must be empty for operator {}", operator.as_str()),
                )),
                _ => {}
            }
            for (j, value) in values.iter().enumerate() {
                check_label_value(value, &index(&values_path, j), errors);
            }
            selector.match_expressions.push(Requirement {
                key: raw.key,
                operator,
                values,
            });
        }
        selector.match_expressions.sort();
        selector
    }
}

impl LabelSelector {
    /// Parses the command-line form kubectl's `-l` takes: comma-separated `key=value`, `key==value`, `key!=value`,
    /// `key`, `!key`, `key in (a,b)`, `key notin (a,b)`. Errors name the term and the reason.
    pub fn parse(text: &str) -> Result<Self, String> {
        let mut selector = Self::default();
        let mut errors = Vec::new();
        for term in split_terms(text)? {
            let term = term.trim();
            if term.is_empty() {
                return Err(format!(
                    "selector {text:?}: an empty term (two commas, or a comma at an end)"
                ));
            }
            let requirement = parse_term(term)?;
            check_label_key(&requirement.key, term, &mut errors);
            for value in &requirement.values {
                check_label_value(value, term, &mut errors);
            }
            selector.match_expressions.push(requirement);
        }
        if let Some(error) = errors.first() {
            return Err(format!("selector term {:?}: {}", error.path, error.reason));
        }
        selector.match_expressions.sort();
        Ok(selector)
    }
}

/// The terms of a selector: split at commas outside parentheses.
fn split_terms(text: &str) -> Result<Vec<&str>, String> {
    let mut terms = Vec::new();
    let (mut depth, mut start) = (0usize, 0usize);
    for (i, c) in text.char_indices() {
        match c {
            '(' => depth += 1,
            ')' => {
                depth = depth
                    .checked_sub(1)
                    .ok_or_else(|| format!("selector {text:?}: unbalanced ')'"))?
            }
            ',' if depth == 0 => {
                terms.push(&text[start..i]);
                start = i + 1;
            }
            _ => {}
        }
    }
    if depth != 0 {
        return Err(format!("selector {text:?}: unbalanced '('"));
    }
    terms.push(&text[start..]);
    Ok(terms)
}

fn parse_term(term: &str) -> Result<Requirement, String> {
    let requirement = |key: &str, operator, values: Vec<String>| Requirement {
        key: key.trim().to_string(),
        operator,
        values,
    };
    if let Some(key) = term.strip_prefix('!') {
        return Ok(requirement(key, Operator::DoesNotExist, Vec::new()));
    }
    if let Some((key, value)) = term.split_once("!=") {
        return Ok(requirement(key, Operator::NotIn, vec![value.trim().to_string()]));
    }
    if let Some((key, value)) = term.split_once("==").or_else(|| term.split_once('=')) {
        return Ok(requirement(key, Operator::In, vec![value.trim().to_string()]));
    }
    for (word, operator) in [(" notin ", Operator::NotIn), (" in ", Operator::In)] {
        if let Some((key, set)) = term.split_once(word) {
            let values = set
                .trim()
                .strip_prefix('(')
                .and_then(|s| s.strip_suffix(')'))
                .ok_or_else(|| {
                    format!(
                        "selector term {term:?}: the values of {} go in parentheses",
                        word.trim()
                    )
                })?;
            let values: Vec<String> = values.split(',').map(|v| v.trim().to_string()).collect();
            if values.iter().any(String::is_empty) {
                return Err(format!("selector term {term:?}: an empty value in the set"));
            }
            return Ok(requirement(key, operator, values));
        }
    }
    if term.contains(|c: char| c.is_whitespace() || "()<>".contains(c)) {
        return Err(format!(
            "selector term {term:?}: expected key=value, key!=value, key, !key, key in (…) or key notin (…)"
        ));
    }
    Ok(requirement(term, Operator::Exists, Vec::new()))
}

fn is_name_char(c: char) -> bool {
    c.is_ascii_alphanumeric() || c == '-' || c == '_' || c == '.'
}

/// A label name or value segment: at most 63 characters of `[A-Za-z0-9_.-]`, starting and ending alphanumeric.
fn is_label_segment(s: &str) -> bool {
    s.len() <= 63
        && s.chars().all(is_name_char)
        && s.chars().next().is_some_and(|c| c.is_ascii_alphanumeric())
        && s.chars().last().is_some_and(|c| c.is_ascii_alphanumeric())
}

/// A DNS-1123 subdomain: lowercase alphanumerics, `-` and `.`, at most 253 characters, alphanumeric at both ends.
pub(crate) fn is_dns1123_subdomain(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 253
        && s.split('.').all(|part| {
            !part.is_empty()
                && part
                    .chars()
                    .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-')
                && !part.starts_with('-')
                && !part.ends_with('-')
        })
}

/// A DNS-1123 label (namespace names): like a subdomain part, at most 63 characters.
pub(crate) fn is_dns1123_label(s: &str) -> bool {
    s.len() <= 63 && !s.contains('.') && is_dns1123_subdomain(s)
}

/// Checks a set of labels (a cluster's, say) with Kubernetes' rules: one error per bad key or value, named
/// `PATH.KEY`.
pub fn validate_labels(labels: &std::collections::BTreeMap<String, String>, path: &str) -> Vec<FieldError> {
    let mut errors = Vec::new();
    for (key, value) in labels {
        check_label_key(key, &format!("{path}.{key}"), &mut errors);
        check_label_value(value, &format!("{path}.{key}"), &mut errors);
    }
    errors
}

/// Labels written `key=value,key2=value2` on a command line (spaces around either side ignored), checked with
/// Kubernetes' rules; errors are named after `flag`.
pub fn parse_labels(text: &str, flag: &str) -> Result<std::collections::BTreeMap<String, String>, FieldError> {
    let mut labels = std::collections::BTreeMap::new();
    for pair in text.split(',').map(str::trim).filter(|p| !p.is_empty()) {
        let Some((key, value)) = pair.split_once('=') else {
            return Err(FieldError::new(flag, format!("{pair:?} is not key=value")));
        };
        labels.insert(key.trim().to_string(), value.trim().to_string());
    }
    match validate_labels(&labels, flag).into_iter().next() {
        Some(error) => Err(error),
        None => Ok(labels),
    }
}

pub(crate) fn check_label_key(key: &str, path: &str, errors: &mut Vec<FieldError>) {
    let (prefix, name) = match key.split_once('/') {
        Some((prefix, name)) => (Some(prefix), name),
        None => (None, key),
    };
    if prefix.is_some_and(|p| !is_dns1123_subdomain(p)) || !is_label_segment(name) {
        errors.push(FieldError::new(
            path,
            format!(
                "invalid label key {key:?}: expected an optional DNS subdomain prefix and '/', then a name of at \
                 most 63 characters of [A-Za-z0-9_.-] starting and ending alphanumeric"
            ),
        ));
    }
}

pub(crate) fn check_label_value(value: &str, path: &str, errors: &mut Vec<FieldError>) {
    if !value.is_empty() && !is_label_segment(value) {
        errors.push(FieldError::new(
            path,
            format!(
                "invalid label value {value:?}: at most 63 characters of [A-Za-z0-9_.-], starting and ending \
                 alphanumeric"
            ),
        ));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn command_line_labels_are_parsed_and_checked() {
        let labels = parse_labels("env=prod, region = eu,", "--labels").unwrap();
        assert_eq!(labels.len(), 2);
        assert_eq!(labels["region"], "eu");
        assert!(parse_labels("", "--labels").unwrap().is_empty());
        let error = parse_labels("env", "--labels").unwrap_err();
        assert_eq!(error.to_string(), "--labels: \"env\" is not key=value");
        let error = parse_labels("=x", "--cluster-labels").unwrap_err();
        assert_eq!(error.path, "--cluster-labels.");
        assert!(error.reason.contains("invalid label key"), "{error}");
        assert!(
            parse_labels("env=a b", "--labels")
                .unwrap_err()
                .reason
                .contains("invalid label value")
        );
    }

    #[test]
    fn label_sets_are_checked_per_key_and_value() {
        let labels: std::collections::BTreeMap<String, String> = [
            ("env", "prod"),
            ("example.com/tier", "gold"),
            ("-bad", "x"),
            ("ok", "no spaces"),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
        let errors: Vec<String> = validate_labels(&labels, "labels")
            .iter()
            .map(ToString::to_string)
            .collect();
        assert_eq!(errors.len(), 2, "{errors:?}");
        assert!(
            errors[0].contains("labels.-bad") && errors[0].contains("invalid label key"),
            "{errors:?}"
        );
        assert!(
            errors[1].contains("labels.ok") && errors[1].contains("invalid label value"),
            "{errors:?}"
        );
    }

    #[test]
    fn command_line_selectors_parse_like_kubectl() {
        let selector =
            LabelSelector::parse("env=prod,tier==llm,region!=west,team,!legacy,zone in (a, b),os notin (x)").unwrap();
        assert_eq!(
            selector.match_expressions,
            [
                req("env", Operator::In, &["prod"]),
                req("legacy", Operator::DoesNotExist, &[]),
                req("os", Operator::NotIn, &["x"]),
                req("region", Operator::NotIn, &["west"]),
                req("team", Operator::Exists, &[]),
                req("tier", Operator::In, &["llm"]),
                req("zone", Operator::In, &["a", "b"]),
            ]
        );
        let matching = labels(&[("env", "prod"), ("tier", "llm"), ("team", "x"), ("zone", "b")]);
        assert!(selector.matches(&matching));
        let mut west = matching.clone();
        west.insert("region".into(), "west".into());
        assert!(!selector.matches(&west));
        assert!(
            LabelSelector::parse("").is_err(),
            "an empty selector is a mistake, not everything"
        );
        for (text, reason) in [
            ("env=prod,", "an empty term"),
            ("zone in (a", "unbalanced '('"),
            ("zone in a,b", "go in parentheses"),
            ("zone in (a,,b)", "an empty value"),
            ("env=pr od", "invalid label value"),
            ("-bad=x", "invalid label key"),
            ("env prod", "expected key=value"),
        ] {
            let error = LabelSelector::parse(text).unwrap_err();
            assert!(error.contains(reason), "{text:?}: {error}");
        }
    }

    fn labels(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect()
    }

    fn req(key: &str, operator: Operator, values: &[&str]) -> Requirement {
        Requirement {
            key: key.into(),
            operator,
            values: values.iter().map(|v| v.to_string()).collect(),
        }
    }

    #[test]
    fn empty_selector_matches_everything() {
        assert!(LabelSelector::default().matches(&labels(&[])));
        assert!(LabelSelector::default().matches(&labels(&[("a", "b")])));
    }

    #[test]
    fn match_labels_need_every_pair() {
        let sel = LabelSelector::from_labels([("env", "prod"), ("tier", "llm")]);
        assert!(sel.matches(&labels(&[("env", "prod"), ("tier", "llm"), ("x", "y")])));
        assert!(!sel.matches(&labels(&[("env", "prod")])));
        assert!(!sel.matches(&labels(&[("env", "dev"), ("tier", "llm")])));
    }

    #[test]
    fn expression_operators() {
        let cases = [
            (
                req("env", Operator::In, &["prod", "stage"]),
                &[("env", "prod")][..],
                true,
            ),
            (req("env", Operator::In, &["prod"]), &[("env", "dev")][..], false),
            (req("env", Operator::In, &["prod"]), &[][..], false),
            (req("env", Operator::NotIn, &["prod"]), &[("env", "dev")][..], true),
            (req("env", Operator::NotIn, &["prod"]), &[][..], true),
            (req("env", Operator::NotIn, &["prod"]), &[("env", "prod")][..], false),
            (req("env", Operator::Exists, &[]), &[("env", "")][..], true),
            (req("env", Operator::Exists, &[]), &[][..], false),
            (req("env", Operator::DoesNotExist, &[]), &[][..], true),
            (req("env", Operator::DoesNotExist, &[]), &[("env", "x")][..], false),
        ];
        for (requirement, set, expected) in cases {
            let sel = LabelSelector {
                match_labels: BTreeMap::new(),
                match_expressions: vec![requirement.clone()],
            };
            assert_eq!(sel.matches(&labels(set)), expected, "{requirement:?} on {set:?}");
        }
    }

    #[test]
    fn label_syntax() {
        let mut errors = Vec::new();
        check_label_key("app.kubernetes.io/name", "k", &mut errors);
        check_label_key("tier", "k", &mut errors);
        check_label_value("", "v", &mut errors);
        check_label_value("a-b_c.d", "v", &mut errors);
        assert!(errors.is_empty(), "{errors:?}");
        check_label_key("-bad", "k1", &mut errors);
        check_label_key("UPPER.example/x", "k2", &mut errors);
        check_label_value("bad value", "v1", &mut errors);
        let paths: Vec<_> = errors.iter().map(|e| e.path.as_str()).collect();
        assert_eq!(paths, ["k1", "k2", "v1"]);
    }
}
