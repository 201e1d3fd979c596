//! Validation errors: every error names the field it is about and why it is refused.

use std::fmt;

/// One refused field: `path` is the field's location (`spec.egress[2].to[0].ipBlock.cidr`), `reason` says why.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct FieldError {
    pub path: String,
    pub reason: String,
}

impl FieldError {
    pub fn new(path: impl Into<String>, reason: impl Into<String>) -> Self {
        Self {
            path: path.into(),
            reason: reason.into(),
        }
    }
}

impl fmt::Display for FieldError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.path.is_empty() {
            f.write_str(&self.reason)
        } else {
            write!(f, "{}: {}", self.path, self.reason)
        }
    }
}

impl std::error::Error for FieldError {}

/// A refused field of one document in a multi-document source.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DocumentError {
    /// Name of the source (a file path, or `-` for standard input).
    pub source: String,
    /// 1-based index of the document within its source.
    pub document: usize,
    /// `Kind/name` when the document got far enough to have one.
    pub object: Option<String>,
    /// 1-based line of the document's start (or of the error, when the parser reports one) within the source.
    pub line: Option<usize>,
    pub error: FieldError,
}

impl fmt::Display for DocumentError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.source)?;
        if let Some(line) = self.line {
            write!(f, ":{line}")?;
        }
        write!(f, ": document {}", self.document)?;
        if let Some(object) = &self.object {
            write!(f, " ({object})")?;
        }
        write!(f, ": {}", self.error)
    }
}

impl std::error::Error for DocumentError {}

/// Appends `.name` to a field path (no dot at the root).
pub(crate) fn child(path: &str, name: &str) -> String {
    if path.is_empty() {
        name.to_string()
    } else {
        format!("{path}.{name}")
    }
}

/// Appends `[index]` to a field path.
pub(crate) fn index(path: &str, index: usize) -> String {
    format!("{path}[{index}]")
}
