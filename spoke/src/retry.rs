//! Why a write to the API server failed, and when to try again: each kind of failure has its own pace.

use std::collections::{HashMap, HashSet};
use std::time::Duration;

/// Why a write failed; each kind has its own retry pace.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum ErrorKind {
    /// 409: someone else wrote the object in between, or an unmanaged object holds the name.
    Conflict,
    /// 400/422: the server refused the object; retrying soon will not help.
    Invalid,
    /// 401/403: missing permission.
    Forbidden,
    /// Anything else: network, timeouts, 429, 5xx.
    Transient,
}

impl ErrorKind {
    pub const ALL: [Self; 4] = [Self::Conflict, Self::Invalid, Self::Forbidden, Self::Transient];

    pub fn of(error: &kube::Error) -> Self {
        match error {
            kube::Error::Api(status) => match status.code {
                409 => Self::Conflict,
                400 | 422 => Self::Invalid,
                401 | 403 => Self::Forbidden,
                _ => Self::Transient,
            },
            _ => Self::Transient,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Self::Conflict => "conflict",
            Self::Invalid => "invalid",
            Self::Forbidden => "forbidden",
            Self::Transient => "transient",
        }
    }

    /// First retry delay and cap.
    fn pace(self) -> (Duration, Duration) {
        match self {
            Self::Conflict => (Duration::from_millis(200), Duration::from_secs(5)),
            Self::Transient => (Duration::from_secs(1), Duration::from_secs(60)),
            Self::Forbidden => (Duration::from_secs(15), Duration::from_secs(300)),
            Self::Invalid => (Duration::from_secs(60), Duration::from_secs(600)),
        }
    }
}

/// Exponential backoff per error kind; a clean pass resets it.
#[derive(Debug, Default)]
pub struct Backoff {
    attempts: HashMap<ErrorKind, u32>,
}

impl Backoff {
    /// When to retry after a pass that failed with these kinds (`None`: nothing to retry).
    pub fn next(&mut self, failed: &HashSet<ErrorKind>) -> Option<Duration> {
        self.attempts.retain(|kind, _| failed.contains(kind));
        failed
            .iter()
            .map(|kind| {
                let attempt = self.attempts.entry(*kind).or_insert(0);
                let (first, cap) = kind.pace();
                let delay = first.saturating_mul(1u32 << (*attempt).min(16)).min(cap);
                *attempt += 1;
                delay
            })
            .min()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_grows_per_kind_and_resets() {
        let mut backoff = Backoff::default();
        let transient = HashSet::from([ErrorKind::Transient]);
        assert_eq!(backoff.next(&transient), Some(Duration::from_secs(1)));
        assert_eq!(backoff.next(&transient), Some(Duration::from_secs(2)));
        assert_eq!(backoff.next(&transient), Some(Duration::from_secs(4)));
        let both = HashSet::from([ErrorKind::Transient, ErrorKind::Conflict]);
        assert_eq!(
            backoff.next(&both),
            Some(Duration::from_millis(200)),
            "the fastest kind decides"
        );
        assert_eq!(backoff.next(&HashSet::new()), None);
        assert_eq!(
            backoff.next(&transient),
            Some(Duration::from_secs(1)),
            "a clean pass resets"
        );
        for _ in 0..20 {
            backoff.next(&transient);
        }
        assert_eq!(backoff.next(&transient), Some(Duration::from_secs(60)), "capped");
        let invalid = HashSet::from([ErrorKind::Invalid]);
        assert_eq!(backoff.next(&invalid), Some(Duration::from_secs(60)));
    }
}
