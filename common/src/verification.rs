//! Whether an agent is verified, from its `AgentRuntime` status card (docs/design.md, "Verification"), with the reason why.

use std::fmt;

/// The verification fields of `AgentRuntime.status.card`.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct CardStatus {
    /// `transportSecurity`: `mtls` or `http`.
    pub transport_security: Option<String>,
    /// `attestedAgentSpiffeID`, set only by an mTLS fetch whose peer passed the operator's trust-domain check.
    pub attested_spiffe_id: Option<String>,
    /// `validSignature`.
    pub valid_signature: Option<bool>,
    /// `lastCardFetchTime` as Unix seconds; `None` when absent or unreadable.
    pub last_fetch_unix: Option<i64>,
}

/// `AgentRuntime.spec.identity.binding`.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct IdentityBinding {
    pub trust_domain: Option<String>,
    pub strict: bool,
}

/// The `Verified` condition of a deprecated `AgentCard` targeting the same workload.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct AgentCardStatus {
    /// `status.conditions[type=Verified].status == "True"`; `None` when the condition is absent.
    pub verified_condition: Option<bool>,
    /// The condition's reason, for the report.
    pub condition_reason: Option<String>,
    /// `status.validSignature`: informational only; the condition decides.
    pub valid_signature: Option<bool>,
}

/// Everything known about one agent's identity.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct VerificationInput {
    pub card: Option<CardStatus>,
    pub binding: Option<IdentityBinding>,
    pub agent_card: Option<AgentCardStatus>,
}

/// The spoke's settings, and the current time (passed in: this crate never reads a clock).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct VerificationSettings {
    /// `--trust-domain`: used when the agent's binding names none.
    pub trust_domain: Option<String>,
    /// `--max-card-age` in seconds.
    pub max_card_age_secs: Option<u64>,
    pub now_unix: i64,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Reason {
    MtlsVerified,
    SignatureVerified,
    AgentCardVerified,
    NotVerified,
    BindingFailed,
    CardStale,
    /// The `AgentRuntime` has a field the spoke cannot read: treated as unverified until it is fixed.
    Malformed,
}

impl Reason {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::MtlsVerified => "mTLSVerified",
            Self::SignatureVerified => "SignatureVerified",
            Self::AgentCardVerified => "AgentCardVerified",
            Self::NotVerified => "NotVerified",
            Self::BindingFailed => "BindingFailed",
            Self::CardStale => "CardStale",
            Self::Malformed => "Malformed",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        [
            Self::MtlsVerified,
            Self::SignatureVerified,
            Self::AgentCardVerified,
            Self::NotVerified,
            Self::BindingFailed,
            Self::CardStale,
            Self::Malformed,
        ]
        .into_iter()
        .find(|r| r.as_str() == s)
    }
}

impl fmt::Display for Reason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The decision for one agent.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Verification {
    pub verified: bool,
    pub reason: Reason,
    /// A human-readable explanation.
    pub message: String,
    /// A non-strict binding that failed: the agent stays verified, and this is reported.
    pub binding_warning: Option<String>,
}

impl Verification {
    pub fn verified(reason: Reason, message: impl Into<String>) -> Self {
        Self {
            verified: true,
            reason,
            message: message.into(),
            binding_warning: None,
        }
    }

    pub fn unverified(reason: Reason, message: impl Into<String>) -> Self {
        Self {
            verified: false,
            reason,
            message: message.into(),
            binding_warning: None,
        }
    }
}

/// Decides whether an agent is verified (docs/design.md, "Verification").
///
/// Order: a stale card is unverified; mTLS (with an attested SPIFFE ID) wins over a signature; a strict binding
/// that fails makes the agent unverified, a non-strict one is only reported; the deprecated `AgentCard` is
/// consulted only when the `AgentRuntime` carries no card, and its `Verified` condition decides.
pub fn verify(input: &VerificationInput, settings: &VerificationSettings) -> Verification {
    let Some(card) = &input.card else {
        return match &input.agent_card {
            Some(AgentCardStatus {
                verified_condition: Some(true),
                condition_reason,
                ..
            }) => Verification::verified(
                Reason::AgentCardVerified,
                format!(
                    "AgentCard condition Verified=True ({})",
                    condition_reason.as_deref().unwrap_or("no reason")
                ),
            ),
            Some(AgentCardStatus {
                verified_condition: Some(false),
                condition_reason,
                ..
            }) => Verification::unverified(
                Reason::NotVerified,
                format!(
                    "AgentCard condition Verified=False ({})",
                    condition_reason.as_deref().unwrap_or("no reason")
                ),
            ),
            Some(_) => Verification::unverified(Reason::NotVerified, "AgentCard has no Verified condition"),
            None => Verification::unverified(Reason::NotVerified, "no status.card and no verified AgentCard"),
        };
    };

    if let Some(max_age) = settings.max_card_age_secs {
        let max_age = i64::try_from(max_age).unwrap_or(i64::MAX);
        match card.last_fetch_unix {
            None => {
                return Verification::unverified(
                    Reason::CardStale,
                    "status.card.lastCardFetchTime is missing and a maximum card age is set",
                );
            }
            Some(fetched) if settings.now_unix.saturating_sub(fetched) > max_age => {
                return Verification::unverified(
                    Reason::CardStale,
                    format!(
                        "card fetched {}s ago, older than the maximum age of {max_age}s",
                        settings.now_unix.saturating_sub(fetched)
                    ),
                );
            }
            Some(_) => {}
        }
    }

    let spiffe_id = card.attested_spiffe_id.as_deref().filter(|id| !id.is_empty());
    let mtls = card.transport_security.as_deref() == Some("mtls") && spiffe_id.is_some();
    let signature = card.valid_signature == Some(true);
    let (reason, message) = if mtls {
        (
            Reason::MtlsVerified,
            format!("mTLS with attested SPIFFE ID {}", spiffe_id.unwrap_or_default()),
        )
    } else if signature {
        (Reason::SignatureVerified, "card signature is valid".to_string())
    } else {
        return Verification::unverified(
            Reason::NotVerified,
            "card is neither fetched over mTLS with an attested SPIFFE ID nor validly signed",
        );
    };

    let strict = input.binding.as_ref().is_some_and(|b| b.strict);
    let trust_domain = input
        .binding
        .as_ref()
        .and_then(|b| b.trust_domain.as_deref())
        .or(settings.trust_domain.as_deref())
        .filter(|td| !td.is_empty());
    let binding_failure = trust_domain.and_then(|td| match spiffe_id {
        Some(id) if spiffe_id_in_trust_domain(id, td) => None,
        Some(id) => Some(format!("SPIFFE ID {id} is not bound to trust domain {td}")),
        None => Some(format!("no attested SPIFFE ID to bind to trust domain {td}")),
    });
    match binding_failure {
        Some(failure) if strict => Verification::unverified(Reason::BindingFailed, failure),
        Some(failure) => Verification {
            binding_warning: Some(failure),
            ..Verification::verified(reason, message)
        },
        None => Verification::verified(reason, message),
    }
}

/// `spiffe://<td>/<non-empty path>`.
pub fn spiffe_id_in_trust_domain(id: &str, trust_domain: &str) -> bool {
    id.strip_prefix("spiffe://")
        .and_then(|rest| rest.strip_prefix(trust_domain))
        .and_then(|rest| rest.strip_prefix('/'))
        .is_some_and(|path| !path.is_empty())
}

#[cfg(test)]
mod tests {
    use super::*;

    const NOW: i64 = 1_800_000_000;
    const ID: &str = "spiffe://example.org/ns/team-a/sa/agent";

    fn card(transport: Option<&str>, id: Option<&str>, signature: Option<bool>) -> Option<CardStatus> {
        Some(CardStatus {
            transport_security: transport.map(String::from),
            attested_spiffe_id: id.map(String::from),
            valid_signature: signature,
            last_fetch_unix: Some(NOW - 10),
        })
    }

    fn binding(td: Option<&str>, strict: bool) -> Option<IdentityBinding> {
        Some(IdentityBinding {
            trust_domain: td.map(String::from),
            strict,
        })
    }

    fn settings() -> VerificationSettings {
        VerificationSettings {
            trust_domain: None,
            max_card_age_secs: None,
            now_unix: NOW,
        }
    }

    #[test]
    fn every_branch() {
        struct Case {
            name: &'static str,
            input: VerificationInput,
            settings: VerificationSettings,
            verified: bool,
            reason: Reason,
            warning: bool,
        }
        let with = |input: VerificationInput| input;
        let td = |td: &str| VerificationSettings {
            trust_domain: Some(td.into()),
            ..settings()
        };
        let max_age = |secs| VerificationSettings {
            max_card_age_secs: Some(secs),
            ..settings()
        };
        let agent_card = |condition: Option<bool>, signature: Option<bool>| {
            Some(AgentCardStatus {
                verified_condition: condition,
                condition_reason: condition.map(|c| if c { "SignatureVerified" } else { "NotVerified" }.into()),
                valid_signature: signature,
            })
        };
        let cases = vec![
            Case {
                name: "mtls with spiffe id",
                input: with(VerificationInput {
                    card: card(Some("mtls"), Some(ID), None),
                    ..Default::default()
                }),
                settings: settings(),
                verified: true,
                reason: Reason::MtlsVerified,
                warning: false,
            },
            Case {
                name: "mtls wins over a valid signature",
                input: with(VerificationInput {
                    card: card(Some("mtls"), Some(ID), Some(true)),
                    ..Default::default()
                }),
                settings: settings(),
                verified: true,
                reason: Reason::MtlsVerified,
                warning: false,
            },
            Case {
                name: "mtls without spiffe id falls back to the signature",
                input: with(VerificationInput {
                    card: card(Some("mtls"), None, Some(true)),
                    ..Default::default()
                }),
                settings: settings(),
                verified: true,
                reason: Reason::SignatureVerified,
                warning: false,
            },
            Case {
                name: "mtls with an empty spiffe id and no signature",
                input: with(VerificationInput {
                    card: card(Some("mtls"), Some(""), None),
                    ..Default::default()
                }),
                settings: settings(),
                verified: false,
                reason: Reason::NotVerified,
                warning: false,
            },
            Case {
                name: "http with a spiffe id is not mtls",
                input: with(VerificationInput {
                    card: card(Some("http"), Some(ID), None),
                    ..Default::default()
                }),
                settings: settings(),
                verified: false,
                reason: Reason::NotVerified,
                warning: false,
            },
            Case {
                name: "valid signature over http",
                input: with(VerificationInput {
                    card: card(Some("http"), None, Some(true)),
                    ..Default::default()
                }),
                settings: settings(),
                verified: true,
                reason: Reason::SignatureVerified,
                warning: false,
            },
            Case {
                name: "invalid signature",
                input: with(VerificationInput {
                    card: card(Some("http"), None, Some(false)),
                    ..Default::default()
                }),
                settings: settings(),
                verified: false,
                reason: Reason::NotVerified,
                warning: false,
            },
            Case {
                name: "no card and no agent card",
                input: VerificationInput::default(),
                settings: settings(),
                verified: false,
                reason: Reason::NotVerified,
                warning: false,
            },
            Case {
                name: "agent card verified",
                input: VerificationInput {
                    agent_card: agent_card(Some(true), None),
                    ..Default::default()
                },
                settings: settings(),
                verified: true,
                reason: Reason::AgentCardVerified,
                warning: false,
            },
            Case {
                name: "agent card Verified=False wins over validSignature: true",
                input: VerificationInput {
                    agent_card: agent_card(Some(false), Some(true)),
                    ..Default::default()
                },
                settings: settings(),
                verified: false,
                reason: Reason::NotVerified,
                warning: false,
            },
            Case {
                name: "agent card without the condition",
                input: VerificationInput {
                    agent_card: agent_card(None, Some(true)),
                    ..Default::default()
                },
                settings: settings(),
                verified: false,
                reason: Reason::NotVerified,
                warning: false,
            },
            Case {
                name: "an AgentRuntime card takes precedence over a verified agent card",
                input: VerificationInput {
                    card: card(Some("http"), None, None),
                    agent_card: agent_card(Some(true), None),
                    ..Default::default()
                },
                settings: settings(),
                verified: false,
                reason: Reason::NotVerified,
                warning: false,
            },
            Case {
                name: "strict binding satisfied",
                input: VerificationInput {
                    card: card(Some("mtls"), Some(ID), None),
                    binding: binding(Some("example.org"), true),
                    ..Default::default()
                },
                settings: settings(),
                verified: true,
                reason: Reason::MtlsVerified,
                warning: false,
            },
            Case {
                name: "strict binding to another trust domain",
                input: VerificationInput {
                    card: card(Some("mtls"), Some(ID), None),
                    binding: binding(Some("other.org"), true),
                    ..Default::default()
                },
                settings: settings(),
                verified: false,
                reason: Reason::BindingFailed,
                warning: false,
            },
            Case {
                name: "non-strict binding failure is only reported",
                input: VerificationInput {
                    card: card(Some("mtls"), Some(ID), None),
                    binding: binding(Some("other.org"), false),
                    ..Default::default()
                },
                settings: settings(),
                verified: true,
                reason: Reason::MtlsVerified,
                warning: true,
            },
            Case {
                name: "spiffe://td/ without a path is not bound",
                input: VerificationInput {
                    card: card(Some("mtls"), Some("spiffe://example.org/"), None),
                    binding: binding(Some("example.org"), true),
                    ..Default::default()
                },
                settings: settings(),
                verified: false,
                reason: Reason::BindingFailed,
                warning: false,
            },
            Case {
                name: "a trust domain prefix is not the trust domain",
                input: VerificationInput {
                    card: card(Some("mtls"), Some("spiffe://example.org.evil/x"), None),
                    binding: binding(Some("example.org"), true),
                    ..Default::default()
                },
                settings: settings(),
                verified: false,
                reason: Reason::BindingFailed,
                warning: false,
            },
            Case {
                name: "strict binding with a signature but no spiffe id",
                input: VerificationInput {
                    card: card(Some("http"), None, Some(true)),
                    binding: binding(Some("example.org"), true),
                    ..Default::default()
                },
                settings: settings(),
                verified: false,
                reason: Reason::BindingFailed,
                warning: false,
            },
            Case {
                name: "binding without its own trust domain uses the spoke's",
                input: VerificationInput {
                    card: card(Some("mtls"), Some(ID), None),
                    binding: binding(None, true),
                    ..Default::default()
                },
                settings: td("other.org"),
                verified: false,
                reason: Reason::BindingFailed,
                warning: false,
            },
            Case {
                name: "the spoke trust domain alone is not strict",
                input: VerificationInput {
                    card: card(Some("mtls"), Some(ID), None),
                    ..Default::default()
                },
                settings: td("other.org"),
                verified: true,
                reason: Reason::MtlsVerified,
                warning: true,
            },
            Case {
                name: "the binding's trust domain overrides the spoke's",
                input: VerificationInput {
                    card: card(Some("mtls"), Some(ID), None),
                    binding: binding(Some("example.org"), true),
                    ..Default::default()
                },
                settings: td("other.org"),
                verified: true,
                reason: Reason::MtlsVerified,
                warning: false,
            },
            Case {
                name: "fresh card within the maximum age",
                input: VerificationInput {
                    card: card(Some("mtls"), Some(ID), None),
                    ..Default::default()
                },
                settings: max_age(60),
                verified: true,
                reason: Reason::MtlsVerified,
                warning: false,
            },
            Case {
                name: "stale card",
                input: VerificationInput {
                    card: card(Some("mtls"), Some(ID), None),
                    ..Default::default()
                },
                settings: max_age(5),
                verified: false,
                reason: Reason::CardStale,
                warning: false,
            },
            Case {
                name: "card without a fetch time under a maximum age",
                input: VerificationInput {
                    card: Some(CardStatus {
                        last_fetch_unix: None,
                        ..card(Some("mtls"), Some(ID), None).unwrap()
                    }),
                    ..Default::default()
                },
                settings: max_age(60),
                verified: false,
                reason: Reason::CardStale,
                warning: false,
            },
        ];
        for case in cases {
            let got = verify(&case.input, &case.settings);
            assert_eq!(got.verified, case.verified, "{}: {got:?}", case.name);
            assert_eq!(got.reason, case.reason, "{}: {got:?}", case.name);
            assert_eq!(got.binding_warning.is_some(), case.warning, "{}: {got:?}", case.name);
            assert!(!got.message.is_empty(), "{}", case.name);
        }
    }

    #[test]
    fn reasons_round_trip() {
        for reason in [
            Reason::MtlsVerified,
            Reason::SignatureVerified,
            Reason::AgentCardVerified,
            Reason::NotVerified,
            Reason::BindingFailed,
            Reason::CardStale,
        ] {
            assert_eq!(Reason::parse(reason.as_str()), Some(reason));
        }
        assert_eq!(Reason::parse("mtlsverified"), None);
    }
}
