//! What the charts give Prometheus and Grafana, checked with the real tools: the PrometheusRule's rules with
//! `promtool check rules` and unit-tested with `promtool test rules` (Debian's promtool, `scripts/promtool`), and
//! every metric an alert or a dashboard names looked up in a running binary's `/metrics`.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;

use anyhow::{Context, Result, anyhow, ensure};
use serde_json::Value;

use crate::workspace_root;

/// Debian's promtool, unpacked into the user cache once per process (`PROMTOOL` overrides).
pub fn promtool() -> Result<PathBuf> {
    static PROMTOOL: OnceLock<Result<PathBuf, String>> = OnceLock::new();
    PROMTOOL
        .get_or_init(|| {
            let script = workspace_root().join("scripts/promtool");
            let output = Command::new(&script)
                .output()
                .map_err(|e| format!("running {}: {e}", script.display()))?;
            let stdout = String::from_utf8_lossy(&output.stdout);
            let path = PathBuf::from(stdout.lines().last().unwrap_or_default().trim());
            if output.status.success() && path.is_file() {
                Ok(path)
            } else {
                Err(format!(
                    "{} failed ({}): {}",
                    script.display(),
                    output.status,
                    String::from_utf8_lossy(&output.stderr)
                ))
            }
        })
        .clone()
        .map_err(anyhow::Error::msg)
}

fn run_promtool(dir: &Path, args: &[&str]) -> Result<String> {
    let output = Command::new(promtool()?)
        .current_dir(dir)
        .args(args)
        .output()
        .with_context(|| format!("promtool {args:?}"))?;
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    ensure!(output.status.success(), "promtool {args:?} failed:\n{text}");
    Ok(text)
}

/// Checks the `spec` of a rendered PrometheusRule with `promtool check rules`, then runs the promtool unit tests in
/// `tests` (a file whose `rule_files` is `[rules.yaml]`) against it. Returns promtool's report.
pub fn test_rules(prometheus_rule: &Value, tests: &Path) -> Result<String> {
    let dir = tempfile::tempdir()?;
    let rules = serde_yaml_ng::to_string(&prometheus_rule["spec"])?;
    std::fs::write(dir.path().join("rules.yaml"), rules)?;
    std::fs::copy(tests, dir.path().join("tests.yaml")).with_context(|| format!("copying {}", tests.display()))?;
    let checked = run_promtool(dir.path(), &["check", "rules", "rules.yaml"])?;
    let tested = run_promtool(dir.path(), &["test", "rules", "tests.yaml"])?;
    Ok(format!("{checked}{tested}"))
}

/// The metric names (`tollgate_…`) in a text: PromQL expressions, a dashboard's JSON.
pub fn metric_names(text: &str) -> BTreeSet<String> {
    let mut names = BTreeSet::new();
    let mut rest = text;
    while let Some(start) = rest.find("tollgate_") {
        let tail = &rest[start..];
        let end = tail
            .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
            .unwrap_or(tail.len());
        names.insert(tail[..end].to_string());
        rest = &tail[end..];
    }
    names
}

/// The names `metrics` (an OpenMetrics exposition) can answer a query for: each family's `# TYPE` name and its
/// samples' names (`_total`, `_info`, `_bucket`, …), so a family with no series yet still counts.
pub fn exposed_names(metrics: &str) -> BTreeSet<String> {
    let mut names = BTreeSet::new();
    for line in metrics.lines() {
        if let Some(rest) = line.strip_prefix("# TYPE ") {
            let mut parts = rest.split_whitespace();
            let (Some(name), Some(kind)) = (parts.next(), parts.next()) else {
                continue;
            };
            names.insert(name.to_string());
            let suffixes: &[&str] = match kind {
                "counter" => &["_total", "_created"],
                "info" => &["_info"],
                "histogram" => &["_bucket", "_sum", "_count", "_created"],
                _ => &[],
            };
            names.extend(suffixes.iter().map(|s| format!("{name}{s}")));
        } else if !line.starts_with('#') {
            let end = line.find(['{', ' ']).unwrap_or(line.len());
            names.insert(line[..end].to_string());
        }
    }
    names
}

/// Fails naming every metric `referenced` (by `what`) that `metrics` does not expose.
pub fn ensure_exposed(what: &str, referenced: &BTreeSet<String>, metrics: &str) -> Result<()> {
    let exposed = exposed_names(metrics);
    let missing: Vec<&String> = referenced.difference(&exposed).collect();
    if missing.is_empty() {
        return Ok(());
    }
    Err(anyhow!(
        "{what} names metrics the binary does not expose: {missing:?}\nexposed: {exposed:?}"
    ))
}

/// Stand-ins for the CRDs of the Prometheus Operator (`ServiceMonitor`, `PrometheusRule`) and for OpenShift's
/// `Route` (served by the OpenShift API server, not a CRD): the real group, version, kind and scope, with a schema
/// typing the fields the charts set and keeping the rest. The test control plane then accepts or refuses the
/// charts' optional objects as a cluster with those APIs would at the level of kind, scope and metadata.
pub const STAND_IN_CRDS: &str = r#"
apiVersion: apiextensions.k8s.io/v1
kind: CustomResourceDefinition
metadata:
  name: servicemonitors.monitoring.coreos.com
spec:
  group: monitoring.coreos.com
  scope: Namespaced
  names: {kind: ServiceMonitor, listKind: ServiceMonitorList, plural: servicemonitors, singular: servicemonitor}
  versions:
    - name: v1
      served: true
      storage: true
      schema:
        openAPIV3Schema:
          type: object
          properties:
            spec:
              type: object
              required: [selector, endpoints]
              x-kubernetes-preserve-unknown-fields: true
              properties:
                selector: {type: object, x-kubernetes-preserve-unknown-fields: true}
                namespaceSelector:
                  type: object
                  properties:
                    matchNames: {type: array, items: {type: string}}
                endpoints:
                  type: array
                  items:
                    type: object
                    x-kubernetes-preserve-unknown-fields: true
                    properties:
                      port: {type: string}
                      path: {type: string}
                      interval: {type: string, pattern: '^(0|(([0-9]+)y)?(([0-9]+)w)?(([0-9]+)d)?(([0-9]+)h)?(([0-9]+)m)?(([0-9]+)s)?(([0-9]+)ms)?)$'}
                      scrapeTimeout: {type: string, pattern: '^(0|(([0-9]+)y)?(([0-9]+)w)?(([0-9]+)d)?(([0-9]+)h)?(([0-9]+)m)?(([0-9]+)s)?(([0-9]+)ms)?)$'}
---
apiVersion: apiextensions.k8s.io/v1
kind: CustomResourceDefinition
metadata:
  name: prometheusrules.monitoring.coreos.com
spec:
  group: monitoring.coreos.com
  scope: Namespaced
  names: {kind: PrometheusRule, listKind: PrometheusRuleList, plural: prometheusrules, singular: prometheusrule}
  versions:
    - name: v1
      served: true
      storage: true
      schema:
        openAPIV3Schema:
          type: object
          properties:
            spec:
              type: object
              properties:
                groups:
                  type: array
                  items:
                    type: object
                    required: [name]
                    x-kubernetes-preserve-unknown-fields: true
                    properties:
                      name: {type: string, minLength: 1}
                      rules:
                        type: array
                        items:
                          type: object
                          required: [expr]
                          properties:
                            alert: {type: string}
                            record: {type: string}
                            expr: {x-kubernetes-int-or-string: true}
                            for: {type: string}
                            labels: {type: object, additionalProperties: {type: string}}
                            annotations: {type: object, additionalProperties: {type: string}}
---
apiVersion: apiextensions.k8s.io/v1
kind: CustomResourceDefinition
metadata:
  name: routes.route.openshift.io
spec:
  group: route.openshift.io
  scope: Namespaced
  names: {kind: Route, listKind: RouteList, plural: routes, singular: route}
  versions:
    - name: v1
      served: true
      storage: true
      schema:
        openAPIV3Schema:
          type: object
          properties:
            spec:
              type: object
              required: [to]
              properties:
                host: {type: string}
                to:
                  type: object
                  required: [kind, name]
                  properties:
                    kind: {type: string, enum: [Service, ""]}
                    name: {type: string, minLength: 1}
                    weight: {type: integer}
                port:
                  type: object
                  properties:
                    targetPort: {x-kubernetes-int-or-string: true}
                tls:
                  type: object
                  required: [termination]
                  properties:
                    termination: {type: string, enum: [edge, reencrypt, passthrough]}
                    insecureEdgeTerminationPolicy: {type: string, enum: [Allow, None, Redirect, ""]}
                wildcardPolicy: {type: string, enum: [None, Subdomain, ""]}
"#;

/// The anchors of a Markdown file's headings, as code hosts make them: lower case, spaces to `-`, punctuation
/// other than `-` and `_` dropped.
pub fn heading_anchors(markdown: &str) -> BTreeSet<String> {
    markdown
        .lines()
        .filter_map(|line| {
            line.trim_start_matches('#')
                .strip_prefix(' ')
                .filter(|_| line.starts_with('#'))
        })
        .map(|title| {
            title
                .trim()
                .to_lowercase()
                .chars()
                .filter_map(|c| match c {
                    ' ' => Some('-'),
                    c if c.is_alphanumeric() || c == '-' || c == '_' => Some(c),
                    _ => None,
                })
                .collect()
        })
        .collect()
}

/// Every alert of a rendered PrometheusRule links `<base>#<anchor>`, and `docs/runbooks.md` has that heading.
pub fn ensure_runbooks(prometheus_rule: &Value, base: &str) -> Result<()> {
    let runbooks = std::fs::read_to_string(workspace_root().join("docs/runbooks.md")).context("docs/runbooks.md")?;
    let anchors = heading_anchors(&runbooks);
    let groups = prometheus_rule["spec"]["groups"].as_array().context("spec.groups")?;
    for rule in groups.iter().flat_map(|g| g["rules"].as_array().into_iter().flatten()) {
        let alert = rule["alert"].as_str().unwrap_or("(a recording rule)");
        let url = rule["annotations"]["runbook_url"]
            .as_str()
            .with_context(|| format!("{alert} has no runbook_url"))?;
        let anchor = url
            .strip_prefix(base)
            .and_then(|rest| rest.strip_prefix('#'))
            .with_context(|| format!("{alert}: {url} is not {base}#<anchor>"))?;
        ensure!(
            anchors.contains(anchor),
            "{alert}: docs/runbooks.md has no heading for #{anchor} (it has {anchors:?})"
        );
    }
    Ok(())
}
