//! The Helm chart `deploy/charts/tollgate-spoke`, proven without Helm: rendered by `deploy/tools/helm-render.sh`
//! (Go text/template + Sprig with Helm's engine semantics), applied server-side to a real kube-apiserver v1.20, and
//! run as the real spoke binary with the chart's ServiceAccount identity (a TokenRequest token) under RBAC: the
//! RBAC is sufficient (every mode reconciles) and minimal (removing any single grant is refused visibly).

mod support;

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use anyhow::{Context, Result, ensure};
use k8s_openapi::api::authentication::v1::TokenRequest;
use k8s_openapi::api::authorization::v1::SubjectAccessReview;
use k8s_openapi::api::core::v1::{ConfigMap, Endpoints, ServiceAccount};
use k8s_openapi::api::networking::v1::NetworkPolicy;
use kube::api::{Api, DeleteParams, PostParams};
use kube::{Client, CustomResourceExt};
use serde::Deserialize;
use serde_json::{Value, json};
use support::*;
use tollgate_e2e::{Cluster, free_port, monitoring, wait_for_deletion, wait_until, workspace_root};

const CHART: &str = "deploy/charts/tollgate-spoke";
const RELEASE: &str = "tollgate-spoke";
const RELEASE_NS: &str = "tollgate-system";
/// The chart's fullname for release `tollgate-spoke`, and so its ServiceAccount's name.
const SERVICE_ACCOUNT: &str = "tollgate-spoke";
/// Debug logs of the spoke itself: failed Event publications are logged at debug level.
const DEBUG_LOGS: &str = "logLevel: info,tollgate_spoke=debug";

/// An OpenShift cluster connected to a hub.
const OPENSHIFT_HUB: &str = r#"
standalone: false
hub:
  address: https://hub.example.com:8443
  tls: {secretName: tollgate-spoke-hub-tls, serverName: hub.internal}
cluster:
  id: ocp-prod-eu-1
  labels: {region: eu-west, env: prod}
dnsService: openshift-dns/dns-default
metrics: {bindAddress: "::"}
"#;

/// Every other flag away from its default, and the Kubernetes knobs.
const CUSTOM: &str = r#"
fullnameOverride: egress
watchNamespaces: [team-a, team-b]
operatorNamespace: kagenti-operator
clusterDefaultsNamespace: kagenti-defaults
policyNameSuffix: -egress
trustDomain: example.org
maxCardAge: 90m
restrictedAllowDns: true
fqdn: {resolver: "10.0.0.53:5353", minTtl: 1m, maxTtl: 5m, grace: 2h}
enforcement: auto
anpPriority: 7
dnsService: kube-system/coredns
logLevel: info,tollgate_spoke=debug
logFormat: json
cluster: {id: lab-1, labels: {tier: gold}}
metrics: {port: 9100, service: {annotations: {prometheus.io/scrape: "true"}}}
intent: {configMapName: egress-intent}
image:
  repository: registry.example.com/tollgate-spoke
  digest: sha256:0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef
serviceAccount: {name: egress-controller, annotations: {team: platform}}
podLabels: {team: platform}
podAnnotations: {example.com/owner: platform}
priorityClassName: system-cluster-critical
resources: {limits: {memory: 512Mi}}
nodeSelector: {kubernetes.io/os: linux}
tolerations: [{key: dedicated, operator: Equal, value: platform, effect: NoSchedule}]
extraArgs: [--some-future-flag=1]
extraEnv: [{name: RUST_BACKTRACE, value: "1"}]
"#;

/// Connected to a hub, with every monitoring object: ServiceMonitor, PrometheusRule (linking runbooks), dashboard.
const MONITORING: &str = r#"
standalone: false
hub: {address: "https://hub.example.com:7443", tls: {secretName: tollgate-spoke-hub-tls}}
metrics:
  serviceMonitor: {enabled: true, labels: {release: prometheus}, interval: 15s}
  prometheusRule: {enabled: true, labels: {role: alert-rules}, runbookBaseUrl: "https://docs.example.com/tollgate/runbooks"}
  dashboard: {enabled: true, labels: {grafana_dashboard: "1", team: platform}}
"#;

/// A development hub on loopback, in plaintext.
const DEV_HUB: &str = r#"
standalone: false
hub: {address: "http://127.0.0.1:8443", insecureDevPlaintext: true}
"#;

/// A platform that brings its own identity and RBAC.
const EXISTING_IDENTITY: &str = r#"
rbac: {create: false}
serviceAccount: {create: false, name: platform-spoke}
metrics: {service: {enabled: false}}
"#;

// ------------------------------------------------------------------------------------------------------------------
// Rendering
// ------------------------------------------------------------------------------------------------------------------

/// `helm template NAME CHART -n NAMESPACE -f VALUES... [FLAGS]`, by the shared Helm-faithful renderer.
fn helm_template(name: &str, namespace: &str, values: &[&str], flags: &[&str]) -> Result<Output> {
    tollgate_e2e::helm::template(CHART, name, namespace, values, flags)
}

/// The rendered manifests; fails with the renderer's message.
fn render(name: &str, namespace: &str, values: &[&str], flags: &[&str]) -> Result<String> {
    let output = helm_template(name, namespace, values, flags)?;
    ensure!(
        output.status.success(),
        "rendering {CHART} failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    Ok(String::from_utf8(output.stdout)?)
}

/// The renderer's error message for values that must be refused.
fn render_error(values: &str) -> Result<String> {
    let output = helm_template(RELEASE, RELEASE_NS, &[values], &[])?;
    ensure!(!output.status.success(), "values {values:?} were rendered, not refused");
    Ok(String::from_utf8(output.stderr)?)
}

/// Every object of a rendered chart.
#[derive(Debug)]
struct Rendered {
    text: String,
    objects: Vec<Value>,
}

impl Rendered {
    fn new(name: &str, namespace: &str, values: &[&str]) -> Result<Self> {
        Self::parse(render(name, namespace, values, &[])?)
    }

    fn parse(text: String) -> Result<Self> {
        let mut objects = Vec::new();
        for document in serde_yaml_ng::Deserializer::from_str(&text) {
            let value = Value::deserialize(document).context("a rendered document is not YAML")?;
            if !value.is_null() {
                objects.push(value);
            }
        }
        Ok(Self { text, objects })
    }

    /// `(kind, namespace, name)` of every object.
    fn keys(&self) -> BTreeSet<(String, String, String)> {
        self.objects
            .iter()
            .map(|o| {
                let s = |v: &Value| v.as_str().unwrap_or_default().to_string();
                (s(&o["kind"]), s(&o["metadata"]["namespace"]), s(&o["metadata"]["name"]))
            })
            .collect()
    }

    fn get(&self, kind: &str, namespace: &str, name: &str) -> &Value {
        self.objects
            .iter()
            .find(|o| {
                o["kind"] == kind
                    && o["metadata"]["name"] == name
                    && o["metadata"]["namespace"].as_str().unwrap_or_default() == namespace
            })
            .unwrap_or_else(|| panic!("no {kind} {namespace}/{name} among {:#?}", self.keys()))
    }

    fn of_kind(&self, kind: &str) -> Vec<&Value> {
        self.objects.iter().filter(|o| o["kind"] == kind).collect()
    }

    fn deployment(&self) -> &Value {
        let deployments = self.of_kind("Deployment");
        assert_eq!(deployments.len(), 1, "one Deployment");
        deployments[0]
    }

    fn pod(&self) -> &Value {
        &self.deployment()["spec"]["template"]["spec"]
    }

    fn container(&self) -> &Value {
        let containers = self.pod()["containers"].as_array().expect("containers");
        assert_eq!(containers.len(), 1, "one container");
        &containers[0]
    }

    fn args(&self) -> Vec<String> {
        strings(&self.container()["args"])
    }

    /// The spoke's flags as `name -> value` (`"true"` for switches); the first argument must be `run`.
    fn flags(&self) -> BTreeMap<String, String> {
        let args = self.args();
        assert_eq!(args.first().map(String::as_str), Some("run"), "{args:?}");
        let mut flags = BTreeMap::new();
        for arg in &args[1..] {
            let flag = arg
                .strip_prefix("--")
                .unwrap_or_else(|| panic!("{arg:?} is not a --flag"));
            let (name, value) = flag.split_once('=').unwrap_or((flag, "true"));
            assert!(
                flags.insert(name.to_string(), value.to_string()).is_none(),
                "--{name} is passed twice: {args:?}"
            );
        }
        flags
    }
}

fn strings(value: &Value) -> Vec<String> {
    value
        .as_array()
        .map(|a| a.iter().map(|v| v.as_str().unwrap_or_default().to_string()).collect())
        .unwrap_or_default()
}

fn flag_map(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
    pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect()
}

fn key(kind: &str, namespace: &str, name: &str) -> (String, String, String) {
    (kind.to_string(), namespace.to_string(), name.to_string())
}

/// Every key of a JSON tree, with its path, depth first.
fn walk<'a>(value: &'a Value, path: &str, out: &mut Vec<(String, &'a Value)>) {
    match value {
        Value::Object(map) => {
            for (k, v) in map {
                let p = if path.is_empty() {
                    k.clone()
                } else {
                    format!("{path}.{k}")
                };
                out.push((p.clone(), v));
                walk(v, &p, out);
            }
        }
        Value::Array(items) => {
            for (i, v) in items.iter().enumerate() {
                walk(v, &format!("{path}[{i}]"), out);
            }
        }
        _ => {}
    }
}

/// What OpenShift's restricted-v2 SCC (and the `restricted` Pod Security Standard) demand of the pod.
fn assert_restricted_v2(chart: &Rendered) {
    let pod = chart.pod();
    let mut keys = Vec::new();
    walk(pod, "", &mut keys);
    for (path, value) in &keys {
        let leaf = path.rsplit('.').next().unwrap_or_default();
        assert!(
            ![
                "runAsUser",
                "runAsGroup",
                "fsGroup",
                "hostNetwork",
                "hostPID",
                "hostIPC",
                "hostPath",
                "hostPort"
            ]
            .contains(&leaf),
            "restricted-v2 assigns the UID and forbids host access: {path} = {value}"
        );
        assert!(
            !(leaf == "privileged" && value == &&json!(true)),
            "privileged container: {path}"
        );
        assert!(leaf != "add", "capabilities added: {path} = {value}");
    }
    assert_eq!(pod["securityContext"]["runAsNonRoot"], true);
    assert_eq!(pod["securityContext"]["seccompProfile"]["type"], "RuntimeDefault");
    let security = &chart.container()["securityContext"];
    assert_eq!(security["allowPrivilegeEscalation"], false);
    assert_eq!(security["readOnlyRootFilesystem"], true);
    assert_eq!(security["runAsNonRoot"], true);
    assert_eq!(security["capabilities"]["drop"], json!(["ALL"]));
}

/// No wildcard anywhere, and writes only to NetworkPolicies, Events and the intent ConfigMap.
fn assert_least_privilege(chart: &Rendered) {
    let writes = [
        "create",
        "update",
        "patch",
        "delete",
        "deletecollection",
        "escalate",
        "bind",
        "impersonate",
    ];
    for role in chart.of_kind("ClusterRole").into_iter().chain(chart.of_kind("Role")) {
        let name = role["metadata"]["name"].as_str().unwrap_or_default();
        for rule in role["rules"].as_array().expect("rules") {
            for field in ["apiGroups", "resources", "verbs", "resourceNames", "nonResourceURLs"] {
                assert!(
                    !strings(&rule[field]).iter().any(|s| s.contains('*')),
                    "{name}: wildcard in {rule}"
                );
            }
            assert!(rule.get("nonResourceURLs").is_none(), "{name}: {rule}");
            let verbs = strings(&rule["verbs"]);
            let resources = strings(&rule["resources"]);
            assert!(
                !resources.iter().any(|r| r == "secrets" || r.contains('/')),
                "{name}: no secrets, no subresources: {rule}"
            );
            if verbs.iter().any(|v| writes.contains(&v.as_str())) {
                assert!(
                    resources.iter().all(|r| [
                        "networkpolicies",
                        "adminnetworkpolicies",
                        "events",
                        "configmaps",
                        "agentruntimes"
                    ]
                    .contains(&r.as_str())),
                    "{name}: writes beyond (Admin)NetworkPolicies, Events, the intent ConfigMap and AgentRuntime \
                     annotations: {rule}"
                );
                if resources.contains(&"configmaps".to_string()) {
                    assert_eq!(
                        strings(&rule["resourceNames"]).len(),
                        1,
                        "{name}: ConfigMap writes are restricted to the intent ConfigMap: {rule}"
                    );
                }
            }
            if verbs.contains(&"get".to_string()) {
                assert!(
                    resources == ["configmaps"] || resources == ["customresourcedefinitions"],
                    "{name}: the spoke never GETs but its intent and the AgentRuntime CRD: {rule}"
                );
                assert_eq!(
                    strings(&rule["resourceNames"]).len(),
                    1,
                    "{name}: a GET is restricted to one name: {rule}"
                );
            }
        }
    }
}

// ------------------------------------------------------------------------------------------------------------------
// (a) Rendering: default values and non-default value sets
// ------------------------------------------------------------------------------------------------------------------

#[test]
fn default_values_render_a_least_privilege_restricted_v2_spoke() -> Result<()> {
    let chart = Rendered::new(RELEASE, RELEASE_NS, &[])?;
    assert_eq!(
        chart.keys(),
        BTreeSet::from([
            key("ServiceAccount", RELEASE_NS, "tollgate-spoke"),
            key("ClusterRole", "", "tollgate-spoke-agents"),
            key("ClusterRole", "", "tollgate-spoke-namespaces"),
            key("ClusterRole", "", "tollgate-spoke-crd"),
            key("ClusterRoleBinding", "", "tollgate-spoke-agents"),
            key("ClusterRoleBinding", "", "tollgate-spoke-namespaces"),
            key("ClusterRoleBinding", "", "tollgate-spoke-crd"),
            key("Role", RELEASE_NS, "tollgate-spoke-intent"),
            key("Role", "default", "tollgate-spoke-apiserver"),
            key("Role", "kube-system", "tollgate-spoke-dns"),
            key("RoleBinding", RELEASE_NS, "tollgate-spoke-intent"),
            key("RoleBinding", "default", "tollgate-spoke-apiserver"),
            key("RoleBinding", "kube-system", "tollgate-spoke-dns"),
            key("Service", RELEASE_NS, "tollgate-spoke-metrics"),
            key("Deployment", RELEASE_NS, "tollgate-spoke"),
        ])
    );
    assert!(
        chart
            .text
            .starts_with("---\n# Source: tollgate-spoke/templates/serviceaccount.yaml\n"),
        "helm template's layout and install order:\n{}",
        chart.text
    );
    assert!(
        !chart.text.contains("CustomResourceDefinition"),
        "crds/ only with --include-crds"
    );
    assert_eq!(
        chart.args(),
        [
            "run",
            "--cluster-id=local",
            "--cluster-labels=",
            "--standalone",
            "--spoke-namespace=tollgate-system",
            "--intent-configmap=tollgate-spoke-intent",
            "--namespaces=",
            "--operator-namespace=kagenti-system",
            "--cluster-defaults-namespace=kagenti-system",
            "--policy-name-suffix=-signature-policy",
            "--enforcement=networkpolicy",
            "--anp-priority=40",
            "--fqdn-min-ttl=30s",
            "--fqdn-max-ttl=10m",
            "--fqdn-grace=1h",
            "--dns-service=kube-system/kube-dns",
            "--metrics-addr=0.0.0.0:9464",
            "--log-level=info",
            "--log-format=plain",
        ]
    );

    // RBAC, exactly.
    let rules = |kind: &str, ns: &str, name: &str| chart.get(kind, ns, name)["rules"].clone();
    assert_eq!(
        rules("ClusterRole", "", "tollgate-spoke-agents"),
        json!([
            {"apiGroups": ["agent.kagenti.dev"], "resources": ["agentruntimes", "agentcards"], "verbs": ["list", "watch"]},
            {"apiGroups": ["agent.kagenti.dev"], "resources": ["agentruntimes"], "verbs": ["patch"]},
            {"apiGroups": ["apps"], "resources": ["deployments", "statefulsets"], "verbs": ["list", "watch"]},
            {"apiGroups": ["networking.k8s.io"], "resources": ["networkpolicies"],
             "verbs": ["list", "watch", "create", "patch", "delete"]},
            {"apiGroups": ["events.k8s.io"], "resources": ["events"], "verbs": ["create", "patch"]},
        ])
    );
    assert_eq!(
        rules("ClusterRole", "", "tollgate-spoke-namespaces"),
        json!([{"apiGroups": [""], "resources": ["namespaces"], "verbs": ["list", "watch"]}])
    );
    assert_eq!(
        rules("ClusterRole", "", "tollgate-spoke-crd"),
        json!([{"apiGroups": ["apiextensions.k8s.io"], "resources": ["customresourcedefinitions"],
                "resourceNames": ["agentruntimes.agent.kagenti.dev"], "verbs": ["get"]}])
    );
    assert_eq!(
        rules("Role", RELEASE_NS, "tollgate-spoke-intent"),
        json!([{"apiGroups": [""], "resources": ["configmaps"], "resourceNames": ["tollgate-spoke-intent"],
                "verbs": ["get", "create", "patch"]}])
    );
    assert_eq!(
        rules("Role", "default", "tollgate-spoke-apiserver"),
        json!([
            {"apiGroups": [""], "resources": ["endpoints", "services"], "resourceNames": ["kubernetes"],
             "verbs": ["list", "watch"]},
            {"apiGroups": ["discovery.k8s.io"], "resources": ["endpointslices"], "verbs": ["list", "watch"]},
        ])
    );
    assert_eq!(
        rules("Role", "kube-system", "tollgate-spoke-dns"),
        json!([
            {"apiGroups": [""], "resources": ["endpoints", "services"], "resourceNames": ["kube-dns"],
             "verbs": ["list", "watch"]},
            {"apiGroups": ["discovery.k8s.io"], "resources": ["endpointslices"], "verbs": ["list", "watch"]},
        ])
    );
    assert_least_privilege(&chart);
    for binding in chart
        .of_kind("ClusterRoleBinding")
        .into_iter()
        .chain(chart.of_kind("RoleBinding"))
    {
        assert_eq!(
            binding["subjects"],
            json!([{"kind": "ServiceAccount", "name": SERVICE_ACCOUNT, "namespace": RELEASE_NS}])
        );
        let role = &binding["roleRef"];
        let role_ns = if role["kind"] == "Role" {
            binding["metadata"]["namespace"].as_str().unwrap()
        } else {
            ""
        };
        chart.get(role["kind"].as_str().unwrap(), role_ns, role["name"].as_str().unwrap());
    }

    // The Deployment.
    let deployment = chart.deployment();
    assert_eq!(deployment["spec"]["replicas"], 1, "no leader election: one spoke");
    assert_eq!(deployment["spec"]["strategy"]["type"], "Recreate");
    let pod = chart.pod();
    assert_eq!(pod["serviceAccountName"], SERVICE_ACCOUNT);
    assert_eq!(pod["automountServiceAccountToken"], true);
    assert!(pod.get("volumes").is_none(), "no hub TLS Secret unless set");
    let container = chart.container();
    assert_eq!(container["image"], "tollgate-spoke:0.1.0");
    assert_eq!(
        container["ports"],
        json!([{"name": "metrics", "containerPort": 9464, "protocol": "TCP"}])
    );
    assert_eq!(
        container["livenessProbe"]["httpGet"],
        json!({"path": "/healthz", "port": "metrics"})
    );
    assert_eq!(
        container["readinessProbe"]["httpGet"],
        json!({"path": "/readyz", "port": "metrics"})
    );
    assert_eq!(
        container["resources"],
        json!({"requests": {"cpu": "50m", "memory": "64Mi"}, "limits": {"memory": "256Mi"}})
    );
    assert!(container.get("env").is_none());
    assert_restricted_v2(&chart);
    let selector = &deployment["spec"]["selector"]["matchLabels"];
    assert_eq!(
        selector,
        &json!({"app.kubernetes.io/name": "tollgate-spoke", "app.kubernetes.io/instance": RELEASE})
    );
    let service = chart.get("Service", RELEASE_NS, "tollgate-spoke-metrics");
    assert_eq!(&service["spec"]["selector"], selector);
    assert_eq!(
        service["spec"]["ports"],
        json!([{"name": "metrics", "port": 9464, "targetPort": "metrics", "protocol": "TCP"}])
    );

    // Rendering is deterministic.
    assert_eq!(chart.text, render(RELEASE, RELEASE_NS, &[], &[])?);
    Ok(())
}

#[test]
fn value_sets_reach_the_right_flags_and_objects() -> Result<()> {
    // OpenShift, connected to a hub.
    let ocp = Rendered::new("ocp", "platform", &[OPENSHIFT_HUB])?;
    assert_eq!(
        ocp.flags(),
        flag_map(&[
            ("cluster-id", "ocp-prod-eu-1"),
            ("cluster-labels", "env=prod,region=eu-west"),
            ("hub", "https://hub.example.com:8443"),
            ("hub-ca", "/etc/tollgate/hub-tls/ca.crt"),
            ("tls-cert", "/etc/tollgate/hub-tls/tls.crt"),
            ("tls-key", "/etc/tollgate/hub-tls/tls.key"),
            ("hub-tls-server-name", "hub.internal"),
            ("spoke-namespace", "platform"),
            ("intent-configmap", "tollgate-spoke-intent"),
            ("namespaces", ""),
            ("operator-namespace", "kagenti-system"),
            ("cluster-defaults-namespace", "kagenti-system"),
            ("policy-name-suffix", "-signature-policy"),
            ("enforcement", "networkpolicy"),
            ("anp-priority", "40"),
            ("fqdn-min-ttl", "30s"),
            ("fqdn-max-ttl", "10m"),
            ("fqdn-grace", "1h"),
            ("dns-service", "openshift-dns/dns-default"),
            ("metrics-addr", "[::]:9464"),
            ("log-level", "info"),
            ("log-format", "plain"),
        ])
    );
    let dns_role = ocp.get("Role", "openshift-dns", "ocp-tollgate-spoke-dns");
    assert_eq!(dns_role["rules"][0]["resourceNames"], json!(["dns-default"]));
    ocp.get("RoleBinding", "openshift-dns", "ocp-tollgate-spoke-dns");
    ocp.get("ClusterRoleBinding", "", "ocp-tollgate-spoke-agents");
    assert_eq!(
        ocp.container()["volumeMounts"],
        json!([{"name": "hub-tls", "mountPath": "/etc/tollgate/hub-tls", "readOnly": true}])
    );
    assert_eq!(
        ocp.pod()["volumes"],
        json!([{"name": "hub-tls", "secret": {"secretName": "tollgate-spoke-hub-tls"}}])
    );
    assert_restricted_v2(&ocp);
    assert_least_privilege(&ocp);

    // Every other flag, and the Kubernetes knobs.
    let custom = Rendered::new("lab", "platform", &[CUSTOM])?;
    assert_eq!(
        custom.flags(),
        flag_map(&[
            ("cluster-id", "lab-1"),
            ("cluster-labels", "tier=gold"),
            ("standalone", "true"),
            ("spoke-namespace", "platform"),
            ("intent-configmap", "egress-intent"),
            ("namespaces", "team-a,team-b"),
            ("operator-namespace", "kagenti-operator"),
            ("cluster-defaults-namespace", "kagenti-defaults"),
            ("policy-name-suffix", "-egress"),
            ("trust-domain", "example.org"),
            ("max-card-age", "90m"),
            ("restricted-allow-dns", "true"),
            ("fqdn-resolver", "10.0.0.53:5353"),
            ("enforcement", "auto"),
            ("anp-priority", "7"),
            ("fqdn-min-ttl", "1m"),
            ("fqdn-max-ttl", "5m"),
            ("fqdn-grace", "2h"),
            ("dns-service", "kube-system/coredns"),
            ("metrics-addr", "0.0.0.0:9100"),
            ("log-level", "info,tollgate_spoke=debug"),
            ("log-format", "json"),
            ("some-future-flag", "1"),
        ])
    );
    assert_eq!(
        custom.keys(),
        BTreeSet::from([
            key("ServiceAccount", "platform", "egress-controller"),
            key("ClusterRole", "", "egress-agents"),
            key("ClusterRole", "", "egress-namespaces"),
            key("ClusterRole", "", "egress-crd"),
            // enforcement: auto needs the AdminNetworkPolicies, cluster-scoped.
            key("ClusterRole", "", "egress-anp"),
            // No cluster-wide agent permissions: a RoleBinding to the agents ClusterRole per watched namespace.
            key("ClusterRoleBinding", "", "egress-namespaces"),
            key("ClusterRoleBinding", "", "egress-crd"),
            key("ClusterRoleBinding", "", "egress-anp"),
            key("RoleBinding", "team-a", "egress-agents"),
            key("RoleBinding", "team-b", "egress-agents"),
            key("Role", "platform", "egress-intent"),
            key("Role", "default", "egress-apiserver"),
            key("Role", "kube-system", "egress-dns"),
            key("RoleBinding", "platform", "egress-intent"),
            key("RoleBinding", "default", "egress-apiserver"),
            key("RoleBinding", "kube-system", "egress-dns"),
            key("Service", "platform", "egress-metrics"),
            key("Deployment", "platform", "egress"),
        ])
    );
    let agents = custom.get("RoleBinding", "team-b", "egress-agents");
    assert_eq!(
        agents["roleRef"],
        json!({"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": "egress-agents"})
    );
    assert_eq!(
        agents["subjects"],
        json!([{"kind": "ServiceAccount", "name": "egress-controller", "namespace": "platform"}])
    );
    assert_eq!(
        custom.get("Role", "kube-system", "egress-dns")["rules"][0]["resourceNames"],
        json!(["coredns"])
    );
    assert_eq!(
        custom.get("Role", "platform", "egress-intent")["rules"][0]["resourceNames"],
        json!(["egress-intent"])
    );
    // The spoke's own Events (conditions) go on its intent ConfigMap: granted in its namespace, since the agents
    // ClusterRole applies only in the watched ones.
    assert_eq!(
        custom.get("Role", "platform", "egress-intent")["rules"][1],
        json!({"apiGroups": ["events.k8s.io"], "resources": ["events"], "verbs": ["create", "patch"]})
    );
    assert_eq!(
        custom.get("ServiceAccount", "platform", "egress-controller")["metadata"]["annotations"],
        json!({"team": "platform"})
    );
    let container = custom.container();
    assert_eq!(
        container["image"],
        "registry.example.com/tollgate-spoke@sha256:0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef"
    );
    assert_eq!(container["ports"][0]["containerPort"], 9100);
    assert_eq!(container["env"], json!([{"name": "RUST_BACKTRACE", "value": "1"}]));
    assert_eq!(
        container["resources"],
        json!({"requests": {"cpu": "50m", "memory": "64Mi"}, "limits": {"memory": "512Mi"}}),
        "values merge into the defaults"
    );
    let pod = custom.pod();
    assert_eq!(pod["serviceAccountName"], "egress-controller");
    assert_eq!(pod["priorityClassName"], "system-cluster-critical");
    assert_eq!(pod["nodeSelector"], json!({"kubernetes.io/os": "linux"}));
    assert_eq!(pod["tolerations"][0]["key"], "dedicated");
    let template = &custom.deployment()["spec"]["template"]["metadata"];
    assert_eq!(template["labels"]["team"], "platform");
    assert_eq!(template["annotations"], json!({"example.com/owner": "platform"}));
    let service = custom.get("Service", "platform", "egress-metrics");
    assert_eq!(service["spec"]["ports"][0]["port"], 9100);
    assert_eq!(
        service["metadata"]["annotations"],
        json!({"prometheus.io/scrape": "true"})
    );
    assert_restricted_v2(&custom);
    assert_least_privilege(&custom);

    // A development hub: plaintext, no TLS files, no Secret mounted.
    let dev = Rendered::new(RELEASE, RELEASE_NS, &[DEV_HUB])?;
    let flags = dev.flags();
    assert_eq!(flags["hub"], "http://127.0.0.1:8443");
    assert_eq!(flags["insecure-dev-plaintext"], "true");
    for absent in ["standalone", "hub-ca", "tls-cert", "tls-key"] {
        assert!(!flags.contains_key(absent), "--{absent} in {flags:?}");
    }
    assert!(dev.pod().get("volumes").is_none());

    // Own identity and RBAC: only the Deployment.
    let existing = Rendered::new("existing", "platform", &[EXISTING_IDENTITY])?;
    assert_eq!(
        existing.keys(),
        BTreeSet::from([key("Deployment", "platform", "existing-tollgate-spoke")])
    );
    assert_eq!(existing.pod()["serviceAccountName"], "platform-spoke");

    // Later value files win, maps merge, and `null` removes a default (Helm's coalescing).
    let layered = Rendered::new(
        RELEASE,
        RELEASE_NS,
        &[
            "cluster: {id: a, labels: {env: prod}}\nresources: {limits: null}",
            "cluster: {id: b}",
        ],
    )?;
    assert_eq!(layered.flags()["cluster-id"], "b");
    assert_eq!(layered.flags()["cluster-labels"], "env=prod");
    assert_eq!(
        layered.container()["resources"],
        json!({"requests": {"cpu": "50m", "memory": "64Mi"}})
    );

    // Every flag of `tollgate-spoke run` is a value of the chart (--kubeconfig deliberately not: in a cluster the
    // spoke uses its ServiceAccount).
    let help = Command::new(env!("CARGO_BIN_EXE_tollgate-spoke"))
        .args(["run", "--help"])
        .output()?;
    ensure!(help.status.success(), "tollgate-spoke run --help failed");
    let help = String::from_utf8(help.stdout)?;
    let spoke_flags: BTreeSet<String> = help
        .split_whitespace()
        .filter_map(|w| w.strip_prefix("--"))
        .map(|w| {
            w.trim_end_matches(|c: char| !c.is_ascii_alphanumeric())
                .split(['=', ' ', '<'])
                .next()
                .unwrap_or_default()
                .to_string()
        })
        .filter(|f| !f.is_empty() && !["help", "version", "kubeconfig"].contains(&f.as_str()))
        .collect();
    assert!(spoke_flags.len() >= 15, "{spoke_flags:?} parsed from:\n{help}");
    let rendered: BTreeSet<String> = [&ocp, &custom, &dev, &Rendered::new(RELEASE, RELEASE_NS, &[])?]
        .iter()
        .flat_map(|c| c.flags().into_keys())
        .collect();
    let missing: Vec<_> = spoke_flags.difference(&rendered).collect();
    assert!(missing.is_empty(), "spoke flags with no chart value: {missing:?}");
    Ok(())
}

#[test]
fn invalid_values_are_refused_with_a_reason() -> Result<()> {
    for (values, reason) in [
        (
            "standalone: false",
            "set hub.address (https://host:port) or standalone: true",
        ),
        (
            "hub: {address: https://hub:8443, tls: {secretName: s}}",
            "standalone and hub.address exclude each other",
        ),
        (
            "standalone: false\nhub: {address: https://hub:8443}",
            "hub.address needs hub.tls.secretName",
        ),
        (
            "standalone: false\nhub: {address: http://127.0.0.1:1, insecureDevPlaintext: true, tls: {secretName: s}}",
            "hub.insecureDevPlaintext excludes hub.tls.secretName",
        ),
        ("dnsService: kube-dns", "dnsService \"kube-dns\" must be namespace/name"),
        ("dnsService: \"\"", "dnsService is required"),
        ("maxCardAge: 2w", "maxCardAge \"2w\" must be a number with s, m, h or d"),
        ("logFormat: xml", "logFormat \"xml\" must be plain or json"),
        ("cluster: {labels: {env: \"a,b\"}}", "keys and values cannot hold ','"),
        (
            "serviceAccount: {create: false}",
            "serviceAccount.name must name an existing ServiceAccount",
        ),
    ] {
        let error = render_error(values)?;
        assert!(
            error.starts_with("Error: execution error at (tollgate-spoke/templates/") && error.contains(reason),
            "values {values:?}: expected {reason:?} in {error:?}"
        );
    }
    Ok(())
}

/// values.schema.json: a wrong type, an unknown key or an out-of-range number fails with the schema's message, as
/// `helm install` would, before any template runs.
#[test]
fn values_of_the_wrong_type_are_refused_by_the_schema() -> Result<()> {
    for (values, reason) in [
        (
            "standalone: yes-please",
            "- standalone: Invalid type. Expected: boolean, given: string",
        ),
        (
            "watchNamespace: [team-a]",
            "- (root): Additional property watchNamespace is not allowed",
        ),
        (
            "metrics: {port: 0}",
            "- metrics.port: Must be greater than or equal to 1",
        ),
        (
            "cluster: {labels: {env: [prod]}}",
            "- cluster.labels.env: Invalid type. Expected: string, given: array",
        ),
        (
            "metrics: {prometheusRule: {certificateExpiryDays: soon}}",
            "- metrics.prometheusRule.certificateExpiryDays: Invalid type. Expected: integer, given: string",
        ),
    ] {
        let error = render_error(values)?;
        assert!(
            error.starts_with(
                "Error: values don't meet the specifications of the schema(s) in the following chart(s):\n\
                 tollgate-spoke:\n"
            ) && error.contains(reason),
            "values {values:?}: expected {reason:?} in {error:?}"
        );
    }
    Ok(())
}

/// The monitoring objects: the ServiceMonitor scrapes the metrics Service, the alerts pass `promtool check rules`
/// and their unit tests and link runbooks that exist, the dashboard is the chart's JSON; a standalone spoke gets no
/// hub alerts.
#[test]
fn monitoring_objects_scrape_the_metrics_service_and_alert_as_tested() -> Result<()> {
    let chart = Rendered::parse(render(RELEASE, RELEASE_NS, &[MONITORING], &[])?)?;
    let monitor = chart.get("ServiceMonitor", RELEASE_NS, "tollgate-spoke");
    let service = chart.get("Service", RELEASE_NS, "tollgate-spoke-metrics");
    for (key, value) in monitor["spec"]["selector"]["matchLabels"].as_object().unwrap() {
        assert_eq!(&service["metadata"]["labels"][key], value, "selector {key}");
    }
    assert_eq!(
        monitor["spec"]["endpoints"][0]["port"],
        service["spec"]["ports"][0]["name"]
    );
    assert_eq!(monitor["spec"]["endpoints"][0]["interval"], "15s");
    assert_eq!(monitor["metadata"]["labels"]["release"], "prometheus");

    let rule = chart.get("PrometheusRule", RELEASE_NS, "tollgate-spoke");
    let report = monitoring::test_rules(rule, &workspace_root().join("spoke/tests/fixtures/alerts.test.yaml"))?;
    assert!(report.contains("SUCCESS: 4 rules found"), "{report}");
    monitoring::ensure_runbooks(rule, "https://docs.example.com/tollgate/runbooks")?;

    let dashboard = chart.get("ConfigMap", RELEASE_NS, "tollgate-spoke-dashboard");
    assert_eq!(dashboard["metadata"]["labels"]["team"], "platform");
    let file = std::fs::read_to_string(workspace_root().join(CHART).join("dashboards/tollgate-spoke.json"))?;
    assert_eq!(dashboard["data"]["tollgate-spoke.json"].as_str(), Some(file.trim_end()));
    assert_eq!(serde_json::from_str::<Value>(&file)?["uid"], "tollgate-spoke");

    let standalone = Rendered::parse(render(
        RELEASE,
        RELEASE_NS,
        &["metrics: {prometheusRule: {enabled: true}}"],
        &[],
    )?)?;
    let alerts: Vec<&str> =
        standalone.get("PrometheusRule", RELEASE_NS, "tollgate-spoke")["spec"]["groups"][0]["rules"]
            .as_array()
            .unwrap()
            .iter()
            .filter_map(|r| r["alert"].as_str())
            .collect();
    assert_eq!(alerts, ["TollgateSpokeReconcileFailures", "TollgateSpokeCondition"]);
    let error = render_error("metrics: {service: {enabled: false}, serviceMonitor: {enabled: true}}")?;
    assert!(
        error.contains("metrics.serviceMonitor.enabled needs metrics.service.enabled"),
        "{error}"
    );
    Ok(())
}

#[test]
fn every_value_is_documented_in_values_yaml_and_the_readme() -> Result<()> {
    let chart = workspace_root().join(CHART);
    let values = std::fs::read_to_string(chart.join("values.yaml"))?;
    let readme = std::fs::read_to_string(chart.join("README.md"))?;
    let mut previous = "";
    for (number, line) in values.lines().enumerate() {
        let trimmed = line.trim_start();
        let is_key = trimmed
            .split_once(':')
            .is_some_and(|(k, _)| !k.is_empty() && k.chars().all(|c| c.is_ascii_alphanumeric()));
        if is_key && !trimmed.starts_with('#') {
            assert!(
                previous.trim_start().starts_with('#'),
                "values.yaml:{}: `{}` has no comment line above it",
                number + 1,
                line.trim()
            );
        }
        if !line.trim().is_empty() {
            previous = line;
        }
    }
    // The README's table names every value (blocks of plain Kubernetes fields as a whole).
    let tree: Value = serde_yaml_ng::from_str(&values)?;
    let mut keys = Vec::new();
    walk(&tree, "", &mut keys);
    let blocks = ["podSecurityContext", "securityContext", "resources", "probes"];
    for (path, value) in keys {
        let top = path.split('.').next().unwrap_or_default();
        let leaf = !value.is_object() || value.as_object().is_some_and(|m| m.is_empty());
        let wanted = if blocks.contains(&top) { path == top } else { leaf };
        if wanted {
            assert!(
                readme.contains(&format!("`{path}`")),
                "README.md does not document `{path}`"
            );
        }
    }
    for command in ["helm lint", "helm template", "helm install", "--skip-crds"] {
        assert!(readme.contains(command), "README.md lacks {command:?}");
    }
    Ok(())
}

// ------------------------------------------------------------------------------------------------------------------
// (e) The CRD in crds/ is the spoke's own
// ------------------------------------------------------------------------------------------------------------------

#[test]
fn the_charts_crd_is_byte_equal_to_the_spoke_crd_output() -> Result<()> {
    let output = Command::new(env!("CARGO_BIN_EXE_tollgate-spoke")).arg("crd").output()?;
    ensure!(output.status.success(), "tollgate-spoke crd failed");
    let file = "agentruntimes.agent.kagenti.dev.yaml";
    let chart_crd = std::fs::read(workspace_root().join(CHART).join("crds").join(file))?;
    assert!(
        chart_crd == output.stdout,
        "{CHART}/crds/{file} differs from `tollgate-spoke crd`; regenerate it with: \
         cargo run -q -p tollgate-spoke -- crd > {CHART}/crds/{file}"
    );
    assert_eq!(
        chart_crd,
        std::fs::read(workspace_root().join("deploy/crds").join(file))?
    );
    // `helm template --include-crds` prints it verbatim, first.
    let with_crds = render(RELEASE, RELEASE_NS, &[], &["--include-crds"])?;
    let expected = format!(
        "---\n# Source: tollgate-spoke/crds/{file}\n{}\n",
        String::from_utf8(chart_crd)?
    );
    assert!(with_crds.starts_with(&expected));
    Ok(())
}

// ------------------------------------------------------------------------------------------------------------------
// (b) The API server accepts every rendered object
// ------------------------------------------------------------------------------------------------------------------

#[tokio::test]
async fn every_rendered_object_is_accepted_by_a_real_api_server() -> Result<()> {
    let cp = rbac_cluster().await?;
    let cluster = &cp.clusters()[0];
    for namespace in [RELEASE_NS, "platform", "openshift-dns", "team-b"] {
        cluster.create_namespace(namespace).await?;
    }
    // The Prometheus Operator's kinds, so that the monitoring objects are applied too.
    cluster.apply_yaml(monitoring::STAND_IN_CRDS).await?;
    for (name, namespace, values) in [
        (RELEASE, RELEASE_NS, vec![]),
        ("ocp", "platform", vec![OPENSHIFT_HUB]),
        ("lab", "platform", vec![CUSTOM]),
        ("existing", "platform", vec![EXISTING_IDENTITY]),
        ("watched", "team-b", vec![MONITORING]),
    ] {
        let text = render(name, namespace, &values, &["--include-crds"])?;
        let chart = Rendered::parse(text.clone())?;
        // Server-side apply: the API server validates every field against its schema (unknown fields included).
        let applied = cluster
            .apply_yaml(&text)
            .await
            .with_context(|| format!("applying release {name} ({values:?})"))?;
        assert_eq!(applied.len(), chart.objects.len(), "release {name}");
        for (object, applied) in chart.objects.iter().zip(&applied) {
            let applied = serde_json::to_value(applied)?;
            assert_eq!(applied["metadata"]["name"], object["metadata"]["name"]);
            for field in ["rules", "roleRef", "subjects"] {
                assert_eq!(
                    applied[field], object[field],
                    "{field} of {}",
                    object["metadata"]["name"]
                );
            }
            if object["kind"] == "Deployment" {
                let container = &applied["spec"]["template"]["spec"]["containers"][0];
                assert_eq!(container["args"], chart.container()["args"]);
                assert_eq!(container["securityContext"], chart.container()["securityContext"]);
                assert_eq!(
                    applied["spec"]["template"]["spec"]["securityContext"],
                    chart.pod()["securityContext"]
                );
            }
        }
    }
    Ok(())
}

// ------------------------------------------------------------------------------------------------------------------
// (c) The chart's identity is sufficient
// ------------------------------------------------------------------------------------------------------------------

/// Renders the chart with `values` and the CRD and applies it, as `helm install --create-namespace` would.
async fn install(cluster: &Cluster, values: &[&str]) -> Result<Rendered> {
    cluster.create_namespace(RELEASE_NS).await?;
    let text = render(RELEASE, RELEASE_NS, values, &["--include-crds"])?;
    cluster.apply_yaml(&text).await.context("applying the rendered chart")?;
    Rendered::parse(text)
}

/// A token of the chart's ServiceAccount from the TokenRequest API, as the kubelet would mount it.
async fn service_account_token(cluster: &Cluster) -> Result<String> {
    let api: Api<ServiceAccount> = Api::namespaced(cluster.client(), RELEASE_NS);
    let request: TokenRequest = serde_json::from_value(json!({"spec": {"audiences": [], "expirationSeconds": 3600}}))?;
    let answer = api
        .create_token_request(SERVICE_ACCOUNT, &PostParams::default(), &request)
        .await
        .context("TokenRequest for the chart's ServiceAccount")?;
    answer
        .status
        .map(|s| s.token)
        .filter(|t| !t.is_empty())
        .context("the TokenRequest answered no token")
}

fn service_account_user() -> String {
    format!("system:serviceaccount:{RELEASE_NS}:{SERVICE_ACCOUNT}")
}

/// Where the Deployment mounts the hub TLS Secret.
const HUB_TLS_MOUNT: &str = "/etc/tollgate/hub-tls";

/// The real spoke with the chart's Deployment arguments (health on a free loopback port instead of 0.0.0.0:9464,
/// the hub TLS Secret's files from `dir/hub-tls` instead of its mount) and a kubeconfig holding the ServiceAccount
/// token: what the pod runs, minus the pod.
fn spawn_as_chart(cluster: &Cluster, chart: &Rendered, token: &str, dir: &Path) -> Result<Spoke> {
    let kubeconfig = dir.join("spoke.kubeconfig");
    std::fs::write(
        &kubeconfig,
        cluster.kubeconfig_for_token(&service_account_user(), token),
    )?;
    let port = free_port()?;
    let hub_tls = dir.join("hub-tls").display().to_string();
    let mut args: Vec<String> = chart
        .args()
        .iter()
        .map(|a| a.replace(HUB_TLS_MOUNT, &hub_tls))
        .collect();
    let metrics = args
        .iter_mut()
        .filter(|a| a.starts_with("--metrics-addr="))
        .map(|a| *a = format!("--metrics-addr=127.0.0.1:{port}"))
        .count();
    assert_eq!(metrics, 1, "{args:?}");
    args.push(format!("--kubeconfig={}", kubeconfig.display()));
    Spoke::spawn(&args, port, dir)
}

/// Whether the chart's ServiceAccount may do this (SubjectAccessReview as the admin).
async fn allowed(
    client: &Client,
    verb: &str,
    group: &str,
    resource: &str,
    namespace: Option<&str>,
    name: Option<&str>,
) -> Result<bool> {
    let review: SubjectAccessReview = serde_json::from_value(json!({
        "spec": {
            "user": service_account_user(),
            "groups": ["system:serviceaccounts", format!("system:serviceaccounts:{RELEASE_NS}"), "system:authenticated"],
            "resourceAttributes": {"verb": verb, "group": group, "resource": resource, "namespace": namespace, "name": name},
        },
    }))?;
    let answer = Api::<SubjectAccessReview>::all(client.clone())
        .create(&PostParams::default(), &review)
        .await?;
    Ok(answer.status.is_some_and(|s| s.allowed))
}

/// A NetworkPolicy the spoke once wrote for an agent that is gone (it must delete it).
async fn orphan(client: &Client, name: &str) -> Result<()> {
    let orphan: NetworkPolicy = serde_json::from_value(json!({
        "metadata": {"name": name, "namespace": NS,
                     "labels": {"app.kubernetes.io/managed-by": "tollgate-spoke", "tollgate.dev/agent": "gone"}},
        "spec": {"podSelector": {}, "policyTypes": ["Egress"]},
    }))?;
    policies(client).create(&PostParams::default(), &orphan).await?;
    Ok(())
}

/// A managed AdminNetworkPolicy of an agent that does not exist: the spoke sweeps it.
async fn orphan_admin_policy(client: &Client, name: &str) -> Result<()> {
    let orphan: tollgate_spoke::anp::AdminNetworkPolicy = serde_json::from_value(json!({
        "apiVersion": "policy.networking.k8s.io/v1alpha1",
        "kind": "AdminNetworkPolicy",
        "metadata": {"name": format!("orphan-anp-{name}"),
                     "labels": {"app.kubernetes.io/managed-by": "tollgate-spoke", "tollgate.dev/agent": "gone"}},
        "spec": {"priority": 40, "subject": {"namespaces": {}}},
    }))?;
    Api::<tollgate_spoke::anp::AdminNetworkPolicy>::all(client.clone())
        .create(&PostParams::default(), &orphan)
        .await?;
    Ok(())
}

/// The highest `series.count` of an agent's Events with this reason (1 for an Event never repeated, 0 for none).
async fn event_count(client: &Client, agent: &str, reason: &str) -> Result<i32> {
    let api: Api<k8s_openapi::api::events::v1::Event> = Api::namespaced(client.clone(), NS);
    Ok(api
        .list(&Default::default())
        .await?
        .items
        .iter()
        .filter(|e| e.regarding.as_ref().and_then(|r| r.name.as_deref()) == Some(agent))
        .filter(|e| e.reason.as_deref() == Some(reason))
        .map(|e| e.series.as_ref().map_or(1, |s| s.count))
        .max()
        .unwrap_or(0))
}

/// Takes the API server's endpoints away and back, twice. Every agent gets the same APIServerUndiscovered Warning
/// twice about an unchanged AgentRuntime: the second time kube's event recorder patches the Event (its series).
async fn lose_the_api_server_twice(cluster: &Cluster, restricted_policy: &str) -> Result<()> {
    let client = cluster.client();
    let endpoints: Api<Endpoints> = Api::namespaced(client.clone(), "default");
    for _ in 0..2 {
        endpoints.delete("kubernetes", &DeleteParams::default()).await?;
        wait_policy(&client, restricted_policy, "deny-all without the API server", |p| {
            egress(p).as_array().is_none_or(Vec::is_empty)
        })
        .await?;
        cluster.set_api_endpoints(&[ip("192.0.2.10")], 6443).await?;
        wait_policy(&client, restricted_policy, "the API server back", |p| {
            egress(p) == json!([api_rule(&["192.0.2.10"]), api_service_rule()])
        })
        .await?;
    }
    Ok(())
}

#[tokio::test]
async fn the_charts_service_account_reconciles_every_mode() -> Result<()> {
    let cp = rbac_cluster().await?;
    let cluster = &cp.clusters()[0];
    let client = cluster.client();
    let chart = install(cluster, &[DEBUG_LOGS]).await?;
    let token = service_account_token(cluster).await?;
    let as_spoke = cluster.client_for_token(&token).await?;
    let secrets: Api<k8s_openapi::api::core::v1::Secret> = Api::namespaced(as_spoke, RELEASE_NS);
    let refused = secrets.list(&Default::default()).await.unwrap_err();
    assert!(refused.to_string().contains("forbidden"), "{refused}");

    deployment(cluster, "scoped", json!({"app": "scoped-agent"})).await?;
    agent(&client, "unverified", None, None).await?;
    agent(&client, "allow-all", None, Some(mtls_card())).await?;
    let rules = json!({"rules": [{"to": [{"ipBlock": {"cidr": "203.0.113.0/24"}}], "ports": [{"protocol": "TCP", "port": 443}]}]});
    agent(&client, "scoped", Some(rules), Some(mtls_card())).await?;
    agent(
        &client,
        "invalid",
        Some(json!({"rules": [{"ports": [{"port": 443}]}]})),
        Some(mtls_card()),
    )
    .await?;
    orphan(&client, "gone-signature-policy").await?;

    let dir = tempfile::tempdir()?;
    let spoke = spawn_as_chart(cluster, &chart, &token, dir.path())?;
    spoke.wait_ready().await?;

    let restricted = wait_policy(&client, "unverified-signature-policy", "restricted", |p| {
        mode(p) == "restricted"
    })
    .await?;
    assert_eq!(
        egress(&restricted),
        json!([api_rule(&["192.0.2.10"]), api_service_rule()])
    );
    assert_eq!(restricted["metadata"]["ownerReferences"][0]["kind"], "AgentRuntime");
    let allow_all = wait_policy(&client, "allow-all-signature-policy", "allow-all", |p| {
        mode(p) == "allow-all"
    })
    .await?;
    assert_eq!(egress(&allow_all), json!([{}]));
    let scoped = wait_policy(&client, "scoped-signature-policy", "scoped", |p| mode(p) == "scoped").await?;
    assert_eq!(
        egress(&scoped),
        json!([
            api_rule(&["192.0.2.10"]),
            api_service_rule(),
            kube_dns_rule(),
            {"to": [{"ipBlock": {"cidr": "203.0.113.0/24"}}], "ports": [{"protocol": "TCP", "port": 443}]},
        ]),
        "API server and kube-dns discovered through the name-restricted Roles"
    );
    assert_eq!(
        scoped["spec"]["podSelector"],
        json!({"matchLabels": {"app": "scoped-agent"}}),
        "workload pod labels"
    );
    wait_policy(&client, "invalid-signature-policy", "baseline-only", |p| {
        mode(p) == "baseline-only"
    })
    .await?;
    wait_for_deletion(&policies(&client), "gone-signature-policy", WAIT).await?;
    wait_until("a Warning event about the invalid rules", WAIT, || async {
        event_count(&client, "invalid", "InvalidEgressRules")
            .await
            .is_ok_and(|n| n >= 1)
    })
    .await?;

    // The operator verifies an agent: its policy follows.
    set_card(&client, "unverified", Some(mtls_card())).await?;
    wait_policy(&client, "unverified-signature-policy", "allow-all", |p| {
        mode(p) == "allow-all"
    })
    .await?;
    wait_until("an EgressModeChanged event", WAIT, || async {
        event_count(&client, "unverified", "EgressModeChanged")
            .await
            .is_ok_and(|n| n >= 1)
    })
    .await?;
    // A repeated Event is patched (series), not created again.
    agent(&client, "locked", None, None).await?;
    wait_policy(&client, "locked-signature-policy", "restricted", |p| {
        mode(p) == "restricted"
    })
    .await?;
    lose_the_api_server_twice(cluster, "locked-signature-policy").await?;
    wait_until(
        "the repeated APIServerUndiscovered event (patched series)",
        WAIT,
        || async {
            event_count(&client, "locked", "APIServerUndiscovered")
                .await
                .is_ok_and(|n| n >= 2)
        },
    )
    .await
    .map_err(|e| e.context(format!("spoke log:\n{}", spoke.log())))?;

    let (_, metrics) = spoke.get("/metrics").await?;
    assert!(
        metrics.contains("tollgate_spoke_reconcile_failures_total{reason=\"forbidden\"} 0\n"),
        "no write was forbidden: {metrics}"
    );
    let log = spoke.log();
    assert!(!log.contains("forbidden"), "a permission is missing:\n{log}");
    Ok(())
}

#[tokio::test]
async fn watch_namespaces_confine_the_agent_permissions_to_them() -> Result<()> {
    let cp = rbac_cluster().await?;
    let cluster = &cp.clusters()[0];
    let client = cluster.client();
    cluster.create_namespace("team-b").await?;
    let chart = install(cluster, &[DEBUG_LOGS, "watchNamespaces: [team-a]"]).await?;
    assert!(chart.keys().contains(&key("RoleBinding", NS, "tollgate-spoke-agents")));
    let token = service_account_token(cluster).await?;
    for (namespace, expected) in [(Some(NS), true), (Some("team-b"), false), (None, false)] {
        for (group, resource, verb) in [
            ("networking.k8s.io", "networkpolicies", "patch"),
            ("agent.kagenti.dev", "agentruntimes", "list"),
        ] {
            assert_eq!(
                allowed(&client, verb, group, resource, namespace, None).await?,
                expected,
                "{verb} {resource} in {namespace:?}"
            );
        }
    }
    agent(&client, "watched", None, Some(mtls_card())).await?;
    cluster
        .apply_yaml(
            r#"
apiVersion: agent.kagenti.dev/v1alpha1
kind: AgentRuntime
metadata: {name: unwatched, namespace: team-b}
spec:
  type: agent
  targetRef: {apiVersion: apps/v1, kind: Deployment, name: unwatched}
"#,
        )
        .await?;
    let dir = tempfile::tempdir()?;
    let spoke = spawn_as_chart(cluster, &chart, &token, dir.path())?;
    spoke.wait_ready().await?;
    wait_policy(&client, "watched-signature-policy", "allow-all", |p| {
        mode(p) == "allow-all"
    })
    .await?;
    let team_b: Api<NetworkPolicy> = Api::namespaced(client.clone(), "team-b");
    assert!(team_b.list(&Default::default()).await?.items.is_empty());
    let log = spoke.log();
    assert!(!log.contains("forbidden"), "a permission is missing:\n{log}");
    Ok(())
}

// ------------------------------------------------------------------------------------------------------------------
// (d) The chart's identity is minimal
// ------------------------------------------------------------------------------------------------------------------

/// The real hub (`tollgate-hub serve`, mTLS) with certificates from `tollgate-hub certs`, killed on drop.
struct Hub {
    _process: tollgate_e2e::ChildProcess,
    port: u16,
    certs: PathBuf,
}

impl Hub {
    /// Issues a CA and the hub, admin and spoke (for `cluster_id`) certificates, starts the hub, and puts the
    /// spoke's files in `dir/hub-tls` under the keys of the chart's TLS Secret (`ca.crt`, `tls.crt`, `tls.key`).
    async fn start(dir: &Path, cluster_id: &str) -> Result<Self> {
        let certs = dir.join("certs");
        let certs_arg = certs.display().to_string();
        for args in [
            vec!["certs", "init"],
            vec!["certs", "hub"],
            vec!["certs", "admin"],
            vec!["certs", "spoke", "--cluster-id", cluster_id],
        ] {
            let output = Command::new(hub_binary())
                .args(&args)
                .args(["--dir", &certs_arg])
                .output()?;
            ensure!(
                output.status.success(),
                "tollgate-hub {args:?}: {}",
                String::from_utf8_lossy(&output.stderr)
            );
        }
        let tls = dir.join("hub-tls");
        std::fs::create_dir_all(&tls)?;
        std::fs::copy(certs.join("ca.pem"), tls.join("ca.crt"))?;
        std::fs::copy(certs.join(format!("spoke-{cluster_id}.pem")), tls.join("tls.crt"))?;
        std::fs::copy(certs.join(format!("spoke-{cluster_id}-key.pem")), tls.join("tls.key"))?;
        let port = free_port()?;
        let path = |name: &str| certs.join(name).display().to_string();
        let args: Vec<String> = vec![
            "serve".into(),
            "--listen".into(),
            format!("127.0.0.1:{port}"),
            "--data-dir".into(),
            dir.join("hub-data").display().to_string(),
            "--tls-cert".into(),
            path("hub.pem"),
            "--tls-key".into(),
            path("hub-key.pem"),
            "--client-ca".into(),
            path("ca.pem"),
        ];
        let process = tollgate_e2e::ChildProcess::spawn("tollgate-hub", &hub_binary(), &args, &dir.join("hub.log"))?;
        let hub = Self {
            _process: process,
            port,
            certs,
        };
        wait_until("the hub to answer", WAIT, || async { hub.admin(&["status"]).is_ok() }).await?;
        Ok(hub)
    }

    fn address(&self) -> String {
        format!("https://localhost:{}", self.port)
    }

    /// The admin CLI against this hub.
    fn admin(&self, args: &[&str]) -> Result<String> {
        let output = Command::new(hub_binary())
            .args(args)
            .args(tollgate_e2e::fixtures::admin_flags(&self.address(), &self.certs))
            .output()?;
        ensure!(
            output.status.success(),
            "tollgate-hub {args:?}: {}",
            String::from_utf8_lossy(&output.stderr)
        );
        Ok(String::from_utf8(output.stdout)?)
    }
}

/// One verb on one resource, granted by one rule of one (Cluster)Role of the chart.
#[derive(Clone, Debug)]
struct Grant {
    role_kind: String,
    role_namespace: String,
    role_name: String,
    group: String,
    resource: String,
    verb: String,
    resource_name: Option<String>,
}

impl fmt::Display for Grant {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let group = if self.group.is_empty() { "core" } else { &self.group };
        write!(f, "{} {}.{group}", self.verb, self.resource)?;
        if let Some(name) = &self.resource_name {
            write!(f, "/{name}")?;
        }
        if self.role_namespace.is_empty() {
            write!(f, " ({} {})", self.role_kind, self.role_name)
        } else {
            write!(f, " ({} {}/{})", self.role_kind, self.role_namespace, self.role_name)
        }
    }
}

impl Grant {
    /// Every grant of the chart's ClusterRoles and Roles.
    fn all(chart: &Rendered) -> Vec<Self> {
        let mut grants = Vec::new();
        for role in chart.of_kind("ClusterRole").into_iter().chain(chart.of_kind("Role")) {
            for rule in role["rules"].as_array().expect("rules") {
                let groups = strings(&rule["apiGroups"]);
                assert_eq!(groups.len(), 1, "one API group per rule: {rule}");
                let names = strings(&rule["resourceNames"]);
                assert!(names.len() <= 1, "{rule}");
                for resource in strings(&rule["resources"]) {
                    for verb in strings(&rule["verbs"]) {
                        grants.push(Self {
                            role_kind: role["kind"].as_str().unwrap().to_string(),
                            role_namespace: role["metadata"]["namespace"].as_str().unwrap_or_default().to_string(),
                            role_name: role["metadata"]["name"].as_str().unwrap().to_string(),
                            group: groups[0].clone(),
                            resource: resource.clone(),
                            verb,
                            resource_name: names.first().cloned(),
                        });
                    }
                }
            }
        }
        grants
    }

    /// The chart's role object without this grant (its rule split so that every other grant stays).
    fn remove_from(&self, chart: &Rendered) -> Value {
        let mut role = chart
            .get(&self.role_kind, &self.role_namespace, &self.role_name)
            .clone();
        let mut rules = Vec::new();
        for rule in role["rules"].as_array().expect("rules") {
            let resources = strings(&rule["resources"]);
            let verbs = strings(&rule["verbs"]);
            let matches = strings(&rule["apiGroups"]) == [self.group.clone()]
                && resources.contains(&self.resource)
                && verbs.contains(&self.verb)
                && strings(&rule["resourceNames"]).first() == self.resource_name.as_ref();
            if !matches {
                rules.push(rule.clone());
                continue;
            }
            let other_resources: Vec<&String> = resources.iter().filter(|r| **r != self.resource).collect();
            if !other_resources.is_empty() {
                let mut rest = rule.clone();
                rest["resources"] = json!(other_resources);
                rules.push(rest);
            }
            let other_verbs: Vec<&String> = verbs.iter().filter(|v| **v != self.verb).collect();
            if !other_verbs.is_empty() {
                let mut rest = rule.clone();
                rest["resources"] = json!([self.resource]);
                rest["verbs"] = json!(other_verbs);
                rules.push(rest);
            }
        }
        role["rules"] = json!(rules);
        role
    }

    /// Whether the ServiceAccount holds this grant now (a SubjectAccessReview where the spoke uses it).
    async fn allowed(&self, client: &Client) -> Result<bool> {
        let namespace = match (self.role_kind.as_str(), self.resource.as_str()) {
            (_, "namespaces" | "adminnetworkpolicies") => None,
            ("ClusterRole", _) => Some(NS),
            _ => Some(self.role_namespace.as_str()),
        };
        allowed(
            client,
            &self.verb,
            &self.group,
            &self.resource,
            namespace,
            self.resource_name.as_deref(),
        )
        .await
    }

    /// The refusal as the spoke logs it: the API server's message, else the spoke's own warning (with every grant
    /// none of them appears).
    fn refusal(&self) -> String {
        match (self.resource.as_str(), self.verb.as_str()) {
            ("configmaps", "get") => "The cached intent cannot be read".to_string(),
            ("configmaps", _) => "could not be cached in ConfigMap".to_string(),
            ("customresourcedefinitions", "get")
                if self
                    .resource_name
                    .as_deref()
                    .is_some_and(|n| n.starts_with("adminnetworkpolicies")) =>
            {
                "The AdminNetworkPolicy CRD cannot be read".to_string()
            }
            ("customresourcedefinitions", "get") => "Could not read the AgentRuntime CRD".to_string(),
            ("adminnetworkpolicies", "create") => "AdminNetworkPolicy write failed".to_string(),
            ("agentruntimes", "patch") => "Could not annotate AgentRuntime".to_string(),
            // A create by server-side apply is refused with an empty reason ("... is forbidden: ").
            ("networkpolicies", "create") => "NetworkPolicy write failed".to_string(),
            (resource, verb) => format!("cannot {verb} resource \"{resource}\""),
        }
    }
}

/// Whether the spoke shows that `grant` is missing.
async fn refused(grant: &Grant, spoke: &Spoke) -> bool {
    let metrics = spoke.get("/metrics").await.map(|(_, m)| m).unwrap_or_default();
    unescaped_log(spoke).contains(&grant.refusal())
        // Failed deletes are counted, not logged.
        || (grant.resource == "networkpolicies"
            && grant.verb == "delete"
            && metrics
                .lines()
                .filter_map(|l| l.strip_prefix("tollgate_spoke_reconcile_failures_total{reason=\"forbidden\"} "))
                .any(|count| count.trim().parse::<f64>().is_ok_and(|n| n > 0.0)))
}

/// The spoke's log with Debug-escaped quotes (kube's watcher logs errors with `{:?}`) unescaped.
fn unescaped_log(spoke: &Spoke) -> String {
    spoke.log().replace("\\\"", "\"")
}

async fn set_role(cluster: &Cluster, role: &Value) -> Result<()> {
    cluster.apply_yaml(&serde_json::to_string(role)?).await?;
    Ok(())
}

#[tokio::test]
async fn every_rbac_grant_is_needed() -> Result<()> {
    let cp = rbac_cluster().await?;
    let cluster = &cp.clusters()[0];
    let client = cluster.client();
    // The deprecated AgentCard kind is installed, so the spoke watches it too.
    cluster.install_crd_yaml(tollgate_e2e::fixtures::AGENT_CARD_CRD).await?;
    // AdminNetworkPolicy enforcement (a superset of NetworkPolicy enforcement's grants) on a server that serves the
    // API, so that its grants are proven too.
    cluster
        .install_crd(&tollgate_spoke::anp::AdminNetworkPolicy::crd())
        .await?;
    // Connected to a real hub holding one revision of intent, so the spoke also reads and writes its intent
    // ConfigMap (the EgressPolicy selects no agent here).
    let dir = tempfile::tempdir()?;
    let hub = Hub::start(dir.path(), cluster.name()).await?;
    let intent = dir.path().join("intent.yaml");
    std::fs::write(
        &intent,
        "apiVersion: tollgate.dev/v1alpha1\nkind: EgressPolicy\nmetadata: {name: nobody}\nspec:\n  \
         agentSelector: {matchLabels: {tier: nobody}}\n  egress: [{to: [{ipBlock: {cidr: 198.51.100.0/24}}]}]\n",
    )?;
    hub.admin(&["apply", "-f", &intent.display().to_string()])?;
    let hub_values = format!(
        "standalone: false\nenforcement: adminnetworkpolicy\nhub: {{address: \"{}\", tls: {{secretName: tollgate-spoke-hub-tls}}}}\ncluster: {{id: {}}}",
        hub.address(),
        cluster.name()
    );
    let chart = install(cluster, &[DEBUG_LOGS, &hub_values]).await?;
    assert!(chart.flags().contains_key("tls-cert"), "{:?}", chart.flags());
    let token = service_account_token(cluster).await?;
    let config_maps: Api<ConfigMap> = Api::namespaced(client.clone(), RELEASE_NS);

    let grants = Grant::all(&chart);
    let names: Vec<String> = grants.iter().map(ToString::to_string).collect();
    assert_eq!(
        names,
        [
            "list agentruntimes.agent.kagenti.dev (ClusterRole tollgate-spoke-agents)",
            "watch agentruntimes.agent.kagenti.dev (ClusterRole tollgate-spoke-agents)",
            "list agentcards.agent.kagenti.dev (ClusterRole tollgate-spoke-agents)",
            "watch agentcards.agent.kagenti.dev (ClusterRole tollgate-spoke-agents)",
            "patch agentruntimes.agent.kagenti.dev (ClusterRole tollgate-spoke-agents)",
            "list deployments.apps (ClusterRole tollgate-spoke-agents)",
            "watch deployments.apps (ClusterRole tollgate-spoke-agents)",
            "list statefulsets.apps (ClusterRole tollgate-spoke-agents)",
            "watch statefulsets.apps (ClusterRole tollgate-spoke-agents)",
            "list networkpolicies.networking.k8s.io (ClusterRole tollgate-spoke-agents)",
            "watch networkpolicies.networking.k8s.io (ClusterRole tollgate-spoke-agents)",
            "create networkpolicies.networking.k8s.io (ClusterRole tollgate-spoke-agents)",
            "patch networkpolicies.networking.k8s.io (ClusterRole tollgate-spoke-agents)",
            "delete networkpolicies.networking.k8s.io (ClusterRole tollgate-spoke-agents)",
            "create events.events.k8s.io (ClusterRole tollgate-spoke-agents)",
            "patch events.events.k8s.io (ClusterRole tollgate-spoke-agents)",
            "list namespaces.core (ClusterRole tollgate-spoke-namespaces)",
            "watch namespaces.core (ClusterRole tollgate-spoke-namespaces)",
            "get customresourcedefinitions.apiextensions.k8s.io/agentruntimes.agent.kagenti.dev (ClusterRole tollgate-spoke-crd)",
            "list adminnetworkpolicies.policy.networking.k8s.io (ClusterRole tollgate-spoke-anp)",
            "watch adminnetworkpolicies.policy.networking.k8s.io (ClusterRole tollgate-spoke-anp)",
            "create adminnetworkpolicies.policy.networking.k8s.io (ClusterRole tollgate-spoke-anp)",
            "patch adminnetworkpolicies.policy.networking.k8s.io (ClusterRole tollgate-spoke-anp)",
            "delete adminnetworkpolicies.policy.networking.k8s.io (ClusterRole tollgate-spoke-anp)",
            "get customresourcedefinitions.apiextensions.k8s.io/adminnetworkpolicies.policy.networking.k8s.io (ClusterRole tollgate-spoke-anp)",
            "get configmaps.core/tollgate-spoke-intent (Role tollgate-system/tollgate-spoke-intent)",
            "create configmaps.core/tollgate-spoke-intent (Role tollgate-system/tollgate-spoke-intent)",
            "patch configmaps.core/tollgate-spoke-intent (Role tollgate-system/tollgate-spoke-intent)",
            "list endpoints.core/kubernetes (Role default/tollgate-spoke-apiserver)",
            "watch endpoints.core/kubernetes (Role default/tollgate-spoke-apiserver)",
            "list services.core/kubernetes (Role default/tollgate-spoke-apiserver)",
            "watch services.core/kubernetes (Role default/tollgate-spoke-apiserver)",
            "list endpointslices.discovery.k8s.io (Role default/tollgate-spoke-apiserver)",
            "watch endpointslices.discovery.k8s.io (Role default/tollgate-spoke-apiserver)",
            "list endpoints.core/kube-dns (Role kube-system/tollgate-spoke-dns)",
            "watch endpoints.core/kube-dns (Role kube-system/tollgate-spoke-dns)",
            "list services.core/kube-dns (Role kube-system/tollgate-spoke-dns)",
            "watch services.core/kube-dns (Role kube-system/tollgate-spoke-dns)",
            "list endpointslices.discovery.k8s.io (Role kube-system/tollgate-spoke-dns)",
            "watch endpointslices.discovery.k8s.io (Role kube-system/tollgate-spoke-dns)",
        ]
    );

    // Control: with every grant nothing is refused, and the intent ConfigMap is created by server-side apply (which
    // the name-restricted create allows: the apply carries the name).
    agent(&client, "probe", None, None).await?;
    assert!(config_maps.get_opt("tollgate-spoke-intent").await?.is_none());
    {
        let spoke = spawn_as_chart(cluster, &chart, &token, dir.path())?;
        spoke.wait_ready().await?;
        wait_until("the intent ConfigMap at revision 1", WAIT, || async {
            config_maps.get_opt("tollgate-spoke-intent").await.is_ok_and(|c| {
                c.and_then(|c| c.metadata.annotations)
                    .is_some_and(|a| a.get("tollgate.dev/revision").map(String::as_str) == Some("1"))
            })
        })
        .await
        .map_err(|e| e.context(format!("spoke log:\n{}", spoke.log())))?;
        wait_policy(&client, "probe-signature-policy", "restricted", |p| {
            mode(p) == "restricted"
        })
        .await?;
        lose_the_api_server_twice(cluster, "probe-signature-policy").await?;
        wait_until("the probe's repeated APIServerUndiscovered event", WAIT, || async {
            event_count(&client, "probe", "APIServerUndiscovered")
                .await
                .is_ok_and(|n| n >= 2)
        })
        .await?;
        let log = spoke.log();
        assert!(log.contains("Intent received"), "{log}");
        for refusal in grants.iter().map(Grant::refusal).chain(["forbidden".to_string()]) {
            assert!(!log.contains(&refusal), "{refusal:?} with every grant:\n{log}");
        }
    }

    // The spoke watches EndpointSlices only where the server offers discovery.k8s.io/v1 (1.21 and later; the
    // Debian-built v1.20 servers do not): there their grants are tested like every other, here they cannot be.
    let slices_served = kube::discovery::group(&client, "discovery.k8s.io")
        .await
        .is_ok_and(|g| {
            g.versioned_resources("v1")
                .iter()
                .any(|(ar, _)| ar.kind == "EndpointSlice")
        });
    let (grants, untested): (Vec<Grant>, Vec<Grant>) = grants
        .into_iter()
        .partition(|g| slices_served || g.resource != "endpointslices");
    assert!(slices_served || untested.len() == 4, "{untested:?}");

    let mut outcomes = Vec::new();
    for (i, grant) in grants.iter().enumerate() {
        // What makes every grant necessary in this run: the start (watches, reading the intent), the hub's intent
        // (persisting it; the ConfigMap is deleted to need create), a new agent (policy create + patch, an Event),
        // an orphaned policy (delete) and, for the Event patch, a repeated Event.
        let (probe, orphaned) = (format!("probe-{i}"), format!("orphan-{i}"));
        agent(&client, &probe, None, None).await?;
        orphan(&client, &orphaned).await?;
        orphan_admin_policy(&client, &orphaned).await?;
        if grant.resource == "configmaps" && grant.verb == "create" {
            config_maps
                .delete("tollgate-spoke-intent", &DeleteParams::default())
                .await?;
        }
        set_role(cluster, &grant.remove_from(&chart)).await?;
        wait_until(format!("RBAC to refuse {grant}"), WAIT, || async {
            grant.allowed(&client).await.is_ok_and(|a| !a)
        })
        .await?;

        let spoke = spawn_as_chart(cluster, &chart, &token, dir.path())?;
        let context = |e: anyhow::Error| e.context(format!("without {grant}; spoke log:\n{}", spoke.log()));
        if grant.resource == "events" && grant.verb == "patch" {
            spoke.wait_ready().await.map_err(context)?;
            lose_the_api_server_twice(cluster, &format!("{probe}-signature-policy"))
                .await
                .map_err(context)?;
        }
        wait_until(format!("the spoke to be refused ({})", grant.refusal()), WAIT, || {
            refused(grant, &spoke)
        })
        .await
        .map_err(context)?;
        let log = unescaped_log(&spoke);
        for line in log.lines().filter(|l| l.contains("forbidden")) {
            assert!(
                line.contains(&grant.refusal()),
                "without {grant} only that is refused, yet:\n{line}"
            );
        }
        let outcome = if grant.resource == "configmaps" {
            spoke.wait_ready().await.map_err(context)?;
            if grant.verb == "create" {
                assert!(config_maps.get_opt("tollgate-spoke-intent").await?.is_none());
            }
            "the intent is enforced but not read or persisted (logged)"
        } else if grant.verb == "list" {
            tokio::time::sleep(std::time::Duration::from_secs(1)).await;
            assert!(
                !spoke.is_ready().await,
                "without {grant} the spoke must stay unready:\n{log}"
            );
            "never ready (logged)"
        } else if grant.resource == "events" {
            // A refused Event does not stop enforcement (it may be refused before the first pass ends).
            spoke.wait_ready().await.map_err(context)?;
            wait_policy(&client, &format!("{probe}-signature-policy"), "written", |_| true).await?;
            "policies enforced, the Event lost (logged at debug)"
        } else if grant.resource == "agentruntimes" && grant.verb == "patch" {
            spoke.wait_ready().await.map_err(context)?;
            wait_policy(&client, &format!("{probe}-signature-policy"), "written", |_| true).await?;
            "policies enforced, the AgentRuntime annotations not written (logged)"
        } else if grant.resource == "customresourcedefinitions" {
            // The CRD is read at start, before the first pass may be done: an unreadable one does not stop it.
            spoke.wait_ready().await.map_err(context)?;
            wait_policy(&client, &format!("{probe}-signature-policy"), "written", |_| true).await?;
            if grant.refusal().contains("AdminNetworkPolicy") {
                "NetworkPolicies enforced, no AdminNetworkPolicy (its peer types unknown; logged)"
            } else {
                "policies enforced, local rules not checked (logged)"
            }
        } else if grant.resource == "adminnetworkpolicies" {
            let admin: Api<tollgate_spoke::anp::AdminNetworkPolicy> = Api::all(client.clone());
            let (name, present) = if grant.verb == "delete" {
                (format!("orphan-anp-{orphaned}"), true)
            } else {
                (tollgate_spoke::anp::name(NS, &probe), false)
            };
            assert_eq!(admin.get_opt(&name).await?.is_some(), present, "{name} without {grant}");
            "the AdminNetworkPolicy write is refused (logged)"
        } else if grant.verb == "watch" {
            "the watch is refused and retried with backoff: changes go unseen (logged)"
        } else {
            let (name, present) = if grant.verb == "delete" {
                (orphaned.clone(), true)
            } else {
                (format!("{probe}-signature-policy"), false)
            };
            assert_eq!(
                policies(&client).get_opt(&name).await?.is_some(),
                present,
                "{name} without {grant}"
            );
            "the write is refused (counted as forbidden)"
        };
        outcomes.push(format!("{grant}: {outcome}"));
        drop(spoke);
        set_role(
            cluster,
            chart.get(&grant.role_kind, &grant.role_namespace, &grant.role_name),
        )
        .await?;
        wait_until(format!("RBAC to allow {grant} again"), WAIT, || async {
            grant.allowed(&client).await.is_ok_and(|a| a)
        })
        .await?;
    }
    eprintln!("Every grant is needed:\n  {}", outcomes.join("\n  "));
    if !untested.is_empty() {
        let untested: Vec<String> = untested.iter().map(ToString::to_string).collect();
        eprintln!(
            "Not testable on this server (no discovery.k8s.io/v1):\n  {}",
            untested.join("\n  ")
        );
    }
    Ok(())
}
