use std::collections::BTreeSet;

use super::*;

fn parse(text: &str) -> Result<DocumentSet, Vec<DocumentError>> {
    DocumentSet::from_yaml("test.yaml", text)
}

/// An EgressPolicy whose `spec` is the given YAML (indented by the caller at two spaces).
fn policy(spec: &str) -> String {
    format!("apiVersion: tollgate.dev/v1alpha1\nkind: EgressPolicy\nmetadata: {{name: p}}\nspec:\n{spec}")
}

/// An EgressPolicy with one rule whose fields are the given YAML (flow mapping body).
fn rule(body: &str) -> String {
    policy(&format!("  egress:\n    - {{{body}}}\n"))
}

fn guardrail(spec: &str) -> String {
    format!("apiVersion: tollgate.dev/v1alpha1\nkind: EgressGuardrail\nmetadata: {{name: g}}\nspec:\n{spec}")
}

const OK_TO: &str = "to: [{ipBlock: {cidr: 203.0.113.0/24}}]";

#[test]
fn bad_inputs_are_refused_with_their_exact_path() {
    let big = format!("{}  # {}\n", rule(OK_TO), "x".repeat(MAX_DOCUMENT_BYTES));
    let cases: Vec<(&str, String, &str, &str)> = vec![
        // (name, document, expected path, expected part of the reason)
        (
            "port-only rule",
            rule("ports: [{port: 443}]"),
            "spec.egress[0].to",
            "OVN-Kubernetes",
        ),
        (
            "port-only rule with empty to",
            rule("to: [], ports: [{port: 443}]"),
            "spec.egress[0].to",
            "OVN-Kubernetes",
        ),
        ("empty rule", rule(""), "spec.egress[0].to", "allow all egress"),
        (
            "bad cidr",
            rule("to: [{ipBlock: {cidr: 300.1.2.0/24}}]"),
            "spec.egress[0].to[0].ipBlock.cidr",
            "invalid CIDR",
        ),
        (
            "cidr garbage",
            rule("to: [{ipBlock: {cidr: example.com}}]"),
            "spec.egress[0].to[0].ipBlock.cidr",
            "invalid CIDR",
        ),
        (
            "cidr prefix too long",
            rule("to: [{ipBlock: {cidr: 10.0.0.0/33}}]"),
            "spec.egress[0].to[0].ipBlock.cidr",
            "invalid CIDR",
        ),
        (
            "ipv6 prefix too long",
            rule("to: [{ipBlock: {cidr: \"2001:db8::/129\"}}]"),
            "spec.egress[0].to[0].ipBlock.cidr",
            "invalid CIDR",
        ),
        (
            "cidr without prefix",
            rule("to: [{ipBlock: {cidr: 192.0.2.7}}]"),
            "spec.egress[0].to[0].ipBlock.cidr",
            "192.0.2.7/32",
        ),
        (
            "ipv6 without prefix",
            rule("to: [{ipBlock: {cidr: \"2001:db8::1\"}}]"),
            "spec.egress[0].to[0].ipBlock.cidr",
            "2001:db8::1/128",
        ),
        (
            "host bits set",
            rule("to: [{ipBlock: {cidr: 10.1.2.3/8}}]"),
            "spec.egress[0].to[0].ipBlock.cidr",
            "use the network address 10.0.0.0/8",
        ),
        (
            "ipv6 host bits set",
            rule("to: [{ipBlock: {cidr: \"2001:db8::1/32\"}}]"),
            "spec.egress[0].to[0].ipBlock.cidr",
            "2001:db8::/32",
        ),
        (
            "except outside cidr",
            rule("to: [{ipBlock: {cidr: 10.0.0.0/8, except: [11.0.0.0/16]}}]"),
            "spec.egress[0].to[0].ipBlock.except[0]",
            "not strictly inside",
        ),
        (
            "except equal to cidr",
            rule("to: [{ipBlock: {cidr: 10.0.0.0/8, except: [10.0.0.0/8]}}]"),
            "spec.egress[0].to[0].ipBlock.except[0]",
            "not strictly inside",
        ),
        (
            "except wider than cidr",
            rule("to: [{ipBlock: {cidr: 10.0.0.0/16, except: [10.0.0.0/8]}}]"),
            "spec.egress[0].to[0].ipBlock.except[0]",
            "not strictly inside",
        ),
        (
            "except other family",
            rule("to: [{ipBlock: {cidr: 10.0.0.0/8, except: [\"2001:db8::/64\"]}}]"),
            "spec.egress[0].to[0].ipBlock.except[0]",
            "not strictly inside",
        ),
        (
            "except host bits",
            rule("to: [{ipBlock: {cidr: 10.0.0.0/8, except: [10.1.0.1/16]}}]"),
            "spec.egress[0].to[0].ipBlock.except[0]",
            "10.1.0.0/16",
        ),
        (
            "missing cidr",
            rule("to: [{ipBlock: {except: [10.1.0.0/16]}}]"),
            "spec.egress[0].to[0].ipBlock",
            "missing field `cidr`",
        ),
        (
            "empty peer",
            rule("to: [{}]"),
            "spec.egress[0].to[0]",
            "must set ipBlock, namespaceSelector, podSelector or fqdn",
        ),
        (
            "ipBlock with selector",
            rule("to: [{ipBlock: {cidr: 10.0.0.0/8}, podSelector: {}}]"),
            "spec.egress[0].to[0]",
            "cannot be combined",
        ),
        (
            "port zero",
            rule(&format!("{OK_TO}, ports: [{{port: 0}}]")),
            "spec.egress[0].ports[0].port",
            "outside the port range 1-65535",
        ),
        (
            "port too high",
            rule(&format!("{OK_TO}, ports: [{{port: 65536}}]")),
            "spec.egress[0].ports[0].port",
            "outside the port range 1-65535",
        ),
        (
            "negative port",
            rule(&format!("{OK_TO}, ports: [{{port: -1}}]")),
            "spec.egress[0].ports[0].port",
            "outside the port range 1-65535",
        ),
        (
            "endPort too high",
            rule(&format!("{OK_TO}, ports: [{{port: 1, endPort: 70000}}]")),
            "spec.egress[0].ports[0].endPort",
            "outside the port range",
        ),
        (
            "endPort below port",
            rule(&format!("{OK_TO}, ports: [{{port: 8100, endPort: 8000}}]")),
            "spec.egress[0].ports[0].endPort",
            "endPort 8000 is lower than port 8100",
        ),
        (
            "endPort without port",
            rule(&format!("{OK_TO}, ports: [{{endPort: 8000}}]")),
            "spec.egress[0].ports[0].endPort",
            "requires port",
        ),
        (
            "named port",
            rule(&format!("{OK_TO}, ports: [{{port: https}}]")),
            "spec.egress[0].ports[0].port",
            "named port \"https\"",
        ),
        (
            "unknown protocol",
            rule(&format!("{OK_TO}, ports: [{{protocol: ICMP, port: 1}}]")),
            "spec.egress[0].ports[0].protocol",
            "unknown protocol \"ICMP\"",
        ),
        (
            "lowercase protocol",
            rule(&format!("{OK_TO}, ports: [{{protocol: tcp, port: 1}}]")),
            "spec.egress[0].ports[0].protocol",
            "expected TCP, UDP or SCTP",
        ),
        (
            "unknown rule field",
            rule(&format!("{OK_TO}, from: []")),
            "spec.egress[0].from",
            "unknown field",
        ),
        (
            "unknown peer field",
            rule("to: [{ipBlock: {cidr: 10.0.0.0/8}, service: x}]"),
            "spec.egress[0].to[0].service",
            "unknown field",
        ),
        (
            "unknown ipBlock field",
            rule("to: [{ipBlock: {cidr: 10.0.0.0/8, exclude: []}}]"),
            "spec.egress[0].to[0].ipBlock.exclude",
            "unknown field",
        ),
        (
            "unknown port field",
            rule(&format!("{OK_TO}, ports: [{{port: 1, proto: TCP}}]")),
            "spec.egress[0].ports[0].proto",
            "unknown field",
        ),
        (
            "unknown spec field",
            policy("  egress: [{to: [{ipBlock: {cidr: 10.0.0.0/8}}]}]\n  agentSelectr: {}\n"),
            "spec.agentSelectr",
            "unknown field",
        ),
        (
            "unknown top-level field",
            format!("{}status: {{}}\n", rule(OK_TO)),
            "status",
            "unknown field",
        ),
        (
            "unknown metadata field",
            rule(OK_TO).replace("metadata: {name: p}", "metadata: {name: p, namespace: x}"),
            "metadata.namespace",
            "unknown field",
        ),
        (
            "guardrail field on a policy",
            policy("  egress: [{to: [{ipBlock: {cidr: 10.0.0.0/8}}]}]\n  verifiedDefault: BaselineOnly\n"),
            "spec.verifiedDefault",
            "belongs to EgressGuardrail",
        ),
        (
            "policy field on a guardrail",
            guardrail("  egress: []\n"),
            "spec.egress",
            "belongs to EgressPolicy",
        ),
        (
            "empty name",
            rule(OK_TO).replace("{name: p}", "{name: \"\"}"),
            "metadata.name",
            "must not be empty",
        ),
        (
            "missing name",
            rule(OK_TO).replace("{name: p}", "{labels: {a: b}}"),
            "metadata.name",
            "must not be empty",
        ),
        (
            "missing metadata",
            rule(OK_TO).replace("metadata: {name: p}\n", ""),
            "metadata.name",
            "required",
        ),
        (
            "uppercase name",
            rule(OK_TO).replace("{name: p}", "{name: Prod}"),
            "metadata.name",
            "invalid name",
        ),
        (
            "bad metadata label",
            rule(OK_TO).replace("{name: p}", "{name: p, labels: {\"a b\": c}}"),
            "metadata.labels.a b",
            "invalid label key",
        ),
        (
            "wrong apiVersion",
            rule(OK_TO).replace("tollgate.dev/v1alpha1", "v1"),
            "apiVersion",
            "unsupported apiVersion",
        ),
        (
            "missing apiVersion",
            rule(OK_TO).replace("apiVersion: tollgate.dev/v1alpha1\n", ""),
            "apiVersion",
            "required",
        ),
        (
            "unknown kind",
            rule(OK_TO).replace("EgressPolicy", "NetworkPolicy"),
            "kind",
            "unknown kind \"NetworkPolicy\"",
        ),
        (
            "missing egress",
            policy("  namespaces: [a]\n"),
            "spec.egress",
            "required",
        ),
        (
            "empty egress",
            policy("  egress: []\n"),
            "spec.egress",
            "at least one rule",
        ),
        (
            "empty namespaces",
            policy("  namespaces: []\n  egress: [{to: [{ipBlock: {cidr: 10.0.0.0/8}}]}]\n"),
            "spec.namespaces",
            "must not be empty",
        ),
        (
            "bad namespace name",
            policy("  namespaces: [ok, Bad_NS]\n  egress: [{to: [{ipBlock: {cidr: 10.0.0.0/8}}]}]\n"),
            "spec.namespaces[1]",
            "invalid namespace name",
        ),
        (
            "namespaces and selector",
            policy("  namespaces: [a]\n  namespaceSelector: {}\n  egress: [{to: [{ipBlock: {cidr: 10.0.0.0/8}}]}]\n"),
            "spec.namespaceSelector",
            "cannot be combined",
        ),
        (
            "bad selector operator",
            policy(
                "  agentSelector: {matchExpressions: [{key: a, operator: Equals, values: [b]}]}\n  egress: [{to: [{ipBlock: {cidr: 10.0.0.0/8}}]}]\n",
            ),
            "spec.agentSelector.matchExpressions[0].operator",
            "unknown operator \"Equals\"",
        ),
        (
            "In without values",
            policy(
                "  clusterSelector: {matchExpressions: [{key: env, operator: In}]}\n  egress: [{to: [{ipBlock: {cidr: 10.0.0.0/8}}]}]\n",
            ),
            "spec.clusterSelector.matchExpressions[0].values",
            "must not be empty",
        ),
        (
            "Exists with values",
            policy(
                "  clusterSelector: {matchExpressions: [{key: env, operator: Exists, values: [x]}]}\n  egress: [{to: [{ipBlock: {cidr: 10.0.0.0/8}}]}]\n",
            ),
            "spec.clusterSelector.matchExpressions[0].values",
            "must be empty",
        ),
        (
            "bad selector label value",
            policy(
                "  clusterSelector: {matchLabels: {env: \"no spaces\"}}\n  egress: [{to: [{ipBlock: {cidr: 10.0.0.0/8}}]}]\n",
            ),
            "spec.clusterSelector.matchLabels.env",
            "invalid label value",
        ),
        (
            "bad peer selector key",
            rule("to: [{podSelector: {matchLabels: {\"-x\": y}}}]"),
            "spec.egress[0].to[0].podSelector.matchLabels.-x",
            "invalid label key",
        ),
        (
            "unknown selector field",
            rule("to: [{namespaceSelector: {matchLabel: {a: b}}}]"),
            "spec.egress[0].to[0].namespaceSelector.matchLabel",
            "unknown field",
        ),
        (
            "bad verifiedDefault",
            guardrail("  verifiedDefault: DenyAll\n"),
            "spec.verifiedDefault",
            "expected AllowAll or BaselineOnly",
        ),
        (
            "bad allowed destination",
            guardrail("  allowedDestinations: [{cidr: 10.0.0.0/8}, {cidr: 10.0.0.1/8}]\n"),
            "spec.allowedDestinations[1].cidr",
            "10.0.0.0/8",
        ),
        (
            "wildcard allowed name",
            guardrail("  allowedDestinations: [{fqdn: '*.example.com'}]\n"),
            "spec.allowedDestinations[0].fqdn",
            "wildcard",
        ),
        (
            "allowed destination with cidr and fqdn",
            guardrail("  allowedDestinations: [{cidr: 10.0.0.0/8, fqdn: api.example.com}]\n"),
            "spec.allowedDestinations[0]",
            "cidr or fqdn, not both",
        ),
        (
            "empty allowed destination",
            guardrail("  allowedDestinations: [{}]\n"),
            "spec.allowedDestinations[0]",
            "sets cidr or fqdn",
        ),
        (
            "allowed destination field",
            guardrail("  allowedDestinations: [{cidr: 10.0.0.0/8, except: []}]\n"),
            "spec.allowedDestinations[0].except",
            "unknown field",
        ),
        (
            "wrong type for allowInClusterPeers",
            guardrail("  allowInClusterPeers: maybe\n"),
            "spec.allowInClusterPeers",
            "invalid type",
        ),
        (
            "wrong type for egress",
            policy("  egress: {to: []}\n"),
            "spec.egress",
            "invalid type",
        ),
        (
            "not a mapping",
            "- a\n- b\n".to_string(),
            "",
            "expected a Tollgate document",
        ),
        ("oversized document", big, "", "over the limit"),
    ];
    assert!(cases.len() >= 40, "the table must hold at least 40 bad inputs");
    let mut names = BTreeSet::new();
    for (name, text, path, reason) in &cases {
        assert!(names.insert(*name), "duplicate case name {name}");
        let errors = parse(text).expect_err(name);
        assert!(
            errors
                .iter()
                .any(|e| e.error.path == *path && e.error.reason.contains(reason)),
            "case {name:?}: expected an error at {path:?} containing {reason:?}, got: {errors:#?}"
        );
    }
}

#[test]
fn duplicate_names_are_refused_within_and_across_sources() {
    let one = rule(OK_TO);
    let errors = parse(&format!("{one}---\n{one}")).unwrap_err();
    assert_eq!(errors.len(), 1);
    assert_eq!(errors[0].document, 2);
    assert_eq!(errors[0].error.path, "metadata.name");
    assert!(
        errors[0]
            .error
            .reason
            .contains("duplicate name: EgressPolicy/p is already defined by test.yaml document 1")
    );

    let errors = DocumentSet::from_sources(&[Source::new("a.yaml", one.clone()), Source::new("b.yaml", one.clone())])
        .unwrap_err();
    assert_eq!(errors.len(), 1);
    assert_eq!(errors[0].source, "b.yaml");

    // The same name in two kinds is fine.
    let g = guardrail("  verifiedDefault: BaselineOnly\n").replace("name: g", "name: p");
    assert_eq!(parse(&format!("{one}---\n{g}")).unwrap().len(), 2);
}

#[test]
fn every_error_of_every_document_is_returned_with_its_line() {
    let text = format!(
        "# leading comment\n---\n{}---\n{}",
        rule("ports: [{port: 0}]"),
        guardrail("  verifiedDefault: Nope\n  allowedDestinations: [{cidr: x}]\n")
    );
    let errors = parse(&text).unwrap_err();
    let got: Vec<_> = errors
        .iter()
        .map(|e| (e.document, e.line, e.object.clone(), e.error.path.as_str()))
        .collect();
    assert_eq!(
        got,
        vec![
            (1, Some(2), Some("EgressPolicy/p".to_string()), "spec.egress[0].to"),
            (
                1,
                Some(2),
                Some("EgressPolicy/p".to_string()),
                "spec.egress[0].ports[0].port"
            ),
            (
                2,
                Some(9),
                Some("EgressGuardrail/g".to_string()),
                "spec.verifiedDefault"
            ),
            (
                2,
                Some(9),
                Some("EgressGuardrail/g".to_string()),
                "spec.allowedDestinations[0].cidr"
            ),
        ]
    );
    assert_eq!(
        errors[0].to_string(),
        format!(
            "test.yaml:2: document 1 (EgressPolicy/p): spec.egress[0].to: {}",
            crate::egress_rule::PORT_ONLY_REASON
        )
    );
}

#[test]
fn malformed_yaml_reports_its_line() {
    let text = format!(
        "{}---\napiVersion: tollgate.dev/v1alpha1\nkind: [unclosed\n",
        rule(OK_TO)
    );
    let errors = parse(&text).unwrap_err();
    assert_eq!(errors.len(), 1, "{errors:#?}");
    assert_eq!(errors[0].document, 2);
    assert!(errors[0].line.unwrap() >= 8, "{errors:#?}");
}

#[test]
fn valid_documents_round_trip_through_canonical_yaml() {
    let text = "
apiVersion: tollgate.dev/v1alpha1
kind: EgressPolicy
metadata: {name: llm-apis, labels: {team: a}}
spec:
  clusterSelector: {matchLabels: {env: prod}}
  namespaces: [team-b, team-a]
  agentSelector:
    matchLabels: {tier: llm}
    matchExpressions: [{key: stage, operator: NotIn, values: [dev]}]
  egress:
    - to:
        - ipBlock: {cidr: 203.0.113.0/24, except: [203.0.113.128/25]}
        - ipBlock: {cidr: \"2001:db8::/32\"}
        - fqdn: api.openai.com.
      ports:
        - {protocol: TCP, port: 443}
        - {protocol: UDP, port: 8000, endPort: 8100}
--- # a guardrail
apiVersion: tollgate.dev/v1alpha1
kind: EgressGuardrail
metadata: {name: prod}
spec:
  clusterSelector: {matchLabels: {env: prod}}
  verifiedDefault: BaselineOnly
  allowedDestinations: [{cidr: 104.18.0.0/16}, {fqdn: api.openai.com}, {cidr: 10.0.0.0/8}]
  allowInClusterPeers: true
";
    let set = parse(text).unwrap();
    assert_eq!(set.len(), 2);
    let policy = &set.policies["llm-apis"];
    assert_eq!(
        policy.spec.namespaces.as_deref(),
        Some(&["team-a".to_string(), "team-b".to_string()][..])
    );
    let guardrail = &set.guardrails["prod"];
    assert_eq!(guardrail.spec.verified_default, VerifiedDefault::BaselineOnly);
    assert!(guardrail.spec.allow_in_cluster_peers);
    let canonical = set.to_yaml();
    let again = parse(&canonical).unwrap();
    assert_eq!(again, set);
    assert_eq!(again.to_yaml(), canonical);
    assert!(
        canonical.starts_with("---\napiVersion: tollgate.dev/v1alpha1\nkind: EgressGuardrail\n"),
        "{canonical}"
    );
}

#[test]
fn for_cluster_selects_by_cluster_labels() {
    let text = format!(
        "{}---\n{}---\n{}",
        policy("  clusterSelector: {matchLabels: {env: prod}}\n  egress: [{to: [{ipBlock: {cidr: 10.0.0.0/8}}]}]\n"),
        policy("  egress: [{to: [{ipBlock: {cidr: 10.0.0.0/8}}]}]\n").replace("name: p", "name: everywhere"),
        guardrail("  clusterSelector: {matchExpressions: [{key: env, operator: NotIn, values: [prod]}]}\n"),
    );
    let set = parse(&text).unwrap();
    let prod: BTreeMap<String, String> = [("env".to_string(), "prod".to_string())].into();
    let dev: BTreeMap<String, String> = [("env".to_string(), "dev".to_string())].into();
    let intent = set.for_cluster(&prod, Some(7));
    assert_eq!(intent.revision, Some(7));
    let names: Vec<_> = intent.policies.iter().map(|p| p.metadata.name.as_str()).collect();
    assert_eq!(names, ["everywhere", "p"]);
    assert!(intent.guardrails.is_empty());
    let intent = set.for_cluster(&dev, None);
    let names: Vec<_> = intent.policies.iter().map(|p| p.metadata.name.as_str()).collect();
    assert_eq!(names, ["everywhere"]);
    assert_eq!(intent.guardrails.len(), 1);
}

#[test]
fn split_documents_handles_markers_and_comments() {
    let chunks = split_documents("a: 1\n---\n# only a comment\n--- \nb: 2\n...\n---\n\n");
    assert_eq!(
        chunks,
        vec![
            Chunk {
                line: 1,
                text: "a: 1\n"
            },
            Chunk {
                line: 4,
                text: " \nb: 2\n"
            }
        ]
    );
    assert!(split_documents("").is_empty());
}

/// A document under the limit as written whose canonical form (as the hub stores it) is over it: refused at
/// validation, so that no stored revision can ever be too large to read back.
#[test]
fn a_document_whose_canonical_form_exceeds_the_limit_is_refused() {
    let ports: Vec<String> = (1..=18_000).map(|p| format!("{{port: {p}}}")).collect();
    let text = rule(&format!("{OK_TO}, ports: [{}]", ports.join(",")));
    assert!(text.len() < MAX_DOCUMENT_BYTES, "the written text fits: {}", text.len());
    let errors = parse(&text).unwrap_err();
    assert_eq!(errors.len(), 1, "{errors:?}");
    let message = errors[0].to_string();
    assert!(
        message.contains("in canonical form") && message.contains("split it"),
        "{message}"
    );

    // Just under the limit in canonical form is accepted, and reads back from its own canonical text.
    let ports: Vec<String> = (1..=6_000).map(|p| format!("{{port: {p}}}")).collect();
    let set = parse(&rule(&format!("{OK_TO}, ports: [{}]", ports.join(",")))).unwrap();
    let canonical = set.to_yaml();
    assert!(canonical.len() > MAX_DOCUMENT_BYTES / 2 && canonical.len() < MAX_DOCUMENT_BYTES);
    assert_eq!(parse(&canonical).unwrap(), set);
}
