//! Deserialization that reports every unknown field and the first type error, each with its field path.

use serde::{Deserialize, Deserializer};

use crate::field_error::{FieldError, child, index};

/// Deserializes `T`, pushing onto `errors` every field the schema does not know (with its path below `prefix`)
/// and the type error that stopped deserialization, if any (returned too, for its location). Unknown fields are
/// errors: a typo must never be ignored silently in a security policy. The value is returned when only unknown
/// fields were found, so that its own validation can report the rest.
pub(crate) fn deserialize_strict<'de, D, T>(de: D, prefix: &str, errors: &mut Vec<FieldError>) -> Result<T, D::Error>
where
    D: Deserializer<'de>,
    D::Error: std::fmt::Display,
    T: Deserialize<'de>,
{
    let mut unknown = Vec::new();
    let result: Result<T, _> = {
        let mut record = |path: serde_ignored::Path<'_>| {
            unknown.push(FieldError::new(
                ignored_path(prefix, &path),
                "unknown field: it is not part of the schema (check its spelling and indentation)",
            ));
        };
        serde_path_to_error::deserialize(serde_ignored::Deserializer::new(de, &mut record))
    };
    errors.append(&mut unknown);
    result.map_err(|err| {
        let path = tracked_path(prefix, err.path());
        errors.push(FieldError::new(path, clean_reason(&err.inner().to_string())));
        err.into_inner()
    })
}

fn tracked_path(prefix: &str, path: &serde_path_to_error::Path) -> String {
    let mut out = prefix.to_string();
    for segment in path.iter() {
        match segment {
            serde_path_to_error::Segment::Seq { index: i } => out = index(&out, *i),
            serde_path_to_error::Segment::Map { key } => out = child(&out, key),
            serde_path_to_error::Segment::Enum { variant } => out = child(&out, variant),
            serde_path_to_error::Segment::Unknown => {}
        }
    }
    out
}

fn ignored_path(prefix: &str, path: &serde_ignored::Path<'_>) -> String {
    match path {
        serde_ignored::Path::Root => prefix.to_string(),
        serde_ignored::Path::Seq { parent, index: i } => index(&ignored_path(prefix, parent), *i),
        serde_ignored::Path::Map { parent, key } => child(&ignored_path(prefix, parent), key),
        serde_ignored::Path::Some { parent }
        | serde_ignored::Path::NewtypeStruct { parent }
        | serde_ignored::Path::NewtypeVariant { parent } => ignored_path(prefix, parent),
    }
}

/// Parser messages repeat the path we already report and sometimes the location; keep the reason only.
fn clean_reason(message: &str) -> String {
    let message = message.trim();
    // serde_yaml_ng prefixes "path.to.field: " when it knows the path.
    let message = match message.split_once(": ") {
        Some((head, tail)) if !head.contains(' ') && !tail.is_empty() => tail,
        _ => message,
    };
    message.to_string()
}
