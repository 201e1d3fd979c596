//! Several guardrails on one cluster combine to the strictest: BaselineOnly wins, ceilings intersect.

use std::borrow::Cow;

use super::{DropReason, DroppedRule, RuleSource};
use crate::document::{AllowedDestination, EgressGuardrail, VerifiedDefault};
use crate::egress_rule::{EgressRule, Peer};

#[derive(Debug)]
pub(super) struct Guardrails<'a> {
    verified_default: VerifiedDefault,
    /// Guardrails with a ceiling, sorted by name.
    ceilings: Vec<&'a EgressGuardrail>,
}

impl<'a> Guardrails<'a> {
    pub(super) fn new(guardrails: &'a [EgressGuardrail]) -> Self {
        let verified_default = guardrails
            .iter()
            .map(|g| g.spec.verified_default)
            .max()
            .unwrap_or_default();
        let mut ceilings: Vec<_> = guardrails
            .iter()
            .filter(|g| g.spec.allowed_destinations.is_some())
            .collect();
        ceilings.sort_by(|a, b| a.metadata.name.cmp(&b.metadata.name));
        Self {
            verified_default,
            ceilings,
        }
    }

    pub(super) fn verified_default(&self) -> VerifiedDefault {
        self.verified_default
    }

    /// The part of a local rule inside every ceiling; peers outside are reported in `dropped`. `None` when no
    /// peer is left.
    pub(super) fn constrain<'r>(
        &self,
        rule: &'r EgressRule,
        index: usize,
        dropped: &mut Vec<DroppedRule>,
    ) -> Option<Cow<'r, EgressRule>> {
        if self.ceilings.is_empty() {
            return Some(Cow::Borrowed(rule));
        }
        let mut to = Vec::with_capacity(rule.to.len());
        for (j, peer) in rule.to.iter().enumerate() {
            match self.check(peer) {
                Ok(()) => to.push(peer.clone()),
                Err(reason) => dropped.push(DroppedRule {
                    source: RuleSource::Local,
                    rule: index,
                    peer: Some(j),
                    reason: DropReason::OutsideGuardrail(reason),
                }),
            }
        }
        (!to.is_empty()).then(|| {
            Cow::Owned(EgressRule {
                to,
                ports: rule.ports.clone(),
            })
        })
    }

    fn check(&self, peer: &Peer) -> Result<(), String> {
        for guardrail in &self.ceilings {
            let name = &guardrail.metadata.name;
            let allowed = guardrail.spec.allowed_destinations.as_deref().unwrap_or_default();
            match (&peer.ip_block, &peer.fqdn) {
                (Some(block), _) => {
                    let inside = allowed
                        .iter()
                        .any(|d| matches!(d, AllowedDestination::Cidr(net) if net.contains(&block.cidr)));
                    if !inside {
                        return Err(format!(
                            "{} is outside the allowed destinations of guardrail {name}",
                            block.cidr
                        ));
                    }
                }
                (None, Some(fqdn)) => {
                    if !allowed
                        .iter()
                        .any(|d| matches!(d, AllowedDestination::Fqdn(n) if n == fqdn))
                    {
                        return Err(format!(
                            "{fqdn} is not among the names allowed by guardrail {name} (a name passes a ceiling only \
                             when the ceiling lists it exactly)"
                        ));
                    }
                }
                (None, None) => {
                    if !guardrail.spec.allow_in_cluster_peers {
                        return Err(format!(
                            "in-cluster peers are not allowed by guardrail {name} (allowInClusterPeers is false)"
                        ));
                    }
                }
            }
        }
        Ok(())
    }
}
