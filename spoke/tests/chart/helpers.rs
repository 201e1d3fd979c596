//! What the chart tests share: the values, rendering, installing the chart and running the spoke as it.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::path::Path;
use std::process::Output;

use anyhow::{Context, Result, ensure};
use k8s_openapi::api::authentication::v1::TokenRequest;
use k8s_openapi::api::authorization::v1::SubjectAccessReview;
use k8s_openapi::api::core::v1::{Endpoints, ServiceAccount};
use k8s_openapi::api::networking::v1::NetworkPolicy;
use kube::Client;
use kube::api::{Api, DeleteParams, PostParams};
use serde::Deserialize;
use serde_json::{Value, json};
use tollgate_e2e::hub::{HubServer, issue_certificates};
use tollgate_e2e::{Cluster, free_port};

use crate::support::*;

pub(crate) const CHART: &str = "deploy/charts/tollgate-spoke";
pub(crate) const RELEASE: &str = "tollgate-spoke";
pub(crate) const RELEASE_NS: &str = "tollgate-system";
/// The chart's fullname for release `tollgate-spoke`, and so its ServiceAccount's name.
pub(crate) const SERVICE_ACCOUNT: &str = "tollgate-spoke";
/// Debug logs of the spoke itself: failed Event publications are logged at debug level.
pub(crate) const DEBUG_LOGS: &str = "logLevel: info,tollgate_spoke=debug";

/// An OpenShift cluster connected to a hub.
pub(crate) const OPENSHIFT_HUB: &str = r#"
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
pub(crate) const CUSTOM: &str = r#"
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
pub(crate) const MONITORING: &str = r#"
standalone: false
hub: {address: "https://hub.example.com:7443", tls: {secretName: tollgate-spoke-hub-tls}}
metrics:
  serviceMonitor: {enabled: true, labels: {release: prometheus}, interval: 15s}
  prometheusRule: {enabled: true, labels: {role: alert-rules}, runbookBaseUrl: "https://docs.example.com/tollgate/runbooks"}
  dashboard: {enabled: true, labels: {grafana_dashboard: "1", team: platform}}
"#;

/// A development hub on loopback, in plaintext.
pub(crate) const DEV_HUB: &str = r#"
standalone: false
hub: {address: "http://127.0.0.1:8443", insecureDevPlaintext: true}
"#;

/// Connected to a hub by a join token: nothing but the token's Secret installed by hand.
pub(crate) const JOINED_HUB: &str = r#"
standalone: false
hub: {address: "https://hub.example.com:8443", joinTokenSecret: prod-eu-1-join, identitySecret: spoke-identity}
cluster: {id: prod-eu-1}
"#;

/// A platform that brings its own identity and RBAC.
pub(crate) const EXISTING_IDENTITY: &str = r#"
rbac: {create: false}
serviceAccount: {create: false, name: platform-spoke}
metrics: {service: {enabled: false}}
"#;

/// `helm template NAME CHART -n NAMESPACE -f VALUES... [FLAGS]`, by the shared Helm-faithful renderer.
pub(crate) fn helm_template(name: &str, namespace: &str, values: &[&str], flags: &[&str]) -> Result<Output> {
    tollgate_e2e::helm::template(CHART, name, namespace, values, flags)
}

/// The rendered manifests; fails with the renderer's message.
pub(crate) fn render(name: &str, namespace: &str, values: &[&str], flags: &[&str]) -> Result<String> {
    let output = helm_template(name, namespace, values, flags)?;
    ensure!(
        output.status.success(),
        "rendering {CHART} failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    Ok(String::from_utf8(output.stdout)?)
}

/// The renderer's error message for values that must be refused.
pub(crate) fn render_error(values: &str) -> Result<String> {
    let output = helm_template(RELEASE, RELEASE_NS, &[values], &[])?;
    ensure!(!output.status.success(), "values {values:?} were rendered, not refused");
    Ok(String::from_utf8(output.stderr)?)
}

/// Every object of a rendered chart.
#[derive(Debug)]
pub(crate) struct Rendered {
    pub(crate) text: String,
    pub(crate) objects: Vec<Value>,
}

impl Rendered {
    pub(crate) fn new(name: &str, namespace: &str, values: &[&str]) -> Result<Self> {
        Self::parse(render(name, namespace, values, &[])?)
    }

    pub(crate) fn parse(text: String) -> Result<Self> {
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
    pub(crate) fn keys(&self) -> BTreeSet<(String, String, String)> {
        self.objects
            .iter()
            .map(|o| {
                let s = |v: &Value| v.as_str().unwrap_or_default().to_string();
                (s(&o["kind"]), s(&o["metadata"]["namespace"]), s(&o["metadata"]["name"]))
            })
            .collect()
    }

    pub(crate) fn get(&self, kind: &str, namespace: &str, name: &str) -> &Value {
        self.objects
            .iter()
            .find(|o| {
                o["kind"] == kind
                    && o["metadata"]["name"] == name
                    && o["metadata"]["namespace"].as_str().unwrap_or_default() == namespace
            })
            .unwrap_or_else(|| panic!("no {kind} {namespace}/{name} among {:#?}", self.keys()))
    }

    pub(crate) fn of_kind(&self, kind: &str) -> Vec<&Value> {
        self.objects.iter().filter(|o| o["kind"] == kind).collect()
    }

    pub(crate) fn deployment(&self) -> &Value {
        let deployments = self.of_kind("Deployment");
        assert_eq!(deployments.len(), 1, "one Deployment");
        deployments[0]
    }

    pub(crate) fn pod(&self) -> &Value {
        &self.deployment()["spec"]["template"]["spec"]
    }

    pub(crate) fn container(&self) -> &Value {
        let containers = self.pod()["containers"].as_array().expect("containers");
        assert_eq!(containers.len(), 1, "one container");
        &containers[0]
    }

    pub(crate) fn args(&self) -> Vec<String> {
        strings(&self.container()["args"])
    }

    /// The spoke's flags as `name -> value` (`"true"` for switches); the first argument must be `run`.
    pub(crate) fn flags(&self) -> BTreeMap<String, String> {
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

pub(crate) fn strings(value: &Value) -> Vec<String> {
    value
        .as_array()
        .map(|a| a.iter().map(|v| v.as_str().unwrap_or_default().to_string()).collect())
        .unwrap_or_default()
}

pub(crate) fn flag_map(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
    pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect()
}

pub(crate) fn key(kind: &str, namespace: &str, name: &str) -> (String, String, String) {
    (kind.to_string(), namespace.to_string(), name.to_string())
}

/// Every key of a JSON tree, with its path, depth first.
pub(crate) fn walk<'a>(value: &'a Value, path: &str, out: &mut Vec<(String, &'a Value)>) {
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
pub(crate) fn assert_restricted_v2(chart: &Rendered) {
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
pub(crate) fn assert_least_privilege(chart: &Rendered) {
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
                !resources.iter().any(|r| r.contains('/')),
                "{name}: no subresources: {rule}"
            );
            if resources.iter().any(|r| r == "secrets") {
                // A joined spoke's own identity Secret, by name, in its namespace: nothing else of Secrets.
                assert_eq!(resources, ["secrets"], "{name}: {rule}");
                assert_eq!(
                    strings(&rule["resourceNames"]).len(),
                    1,
                    "{name}: one Secret by name: {rule}"
                );
                assert_eq!(
                    role["kind"], "Role",
                    "{name}: Secrets only in the spoke's namespace: {rule}"
                );
            }
            if verbs.iter().any(|v| writes.contains(&v.as_str())) {
                assert!(
                    resources.iter().all(|r| [
                        "networkpolicies",
                        "adminnetworkpolicies",
                        "events",
                        "configmaps",
                        "agentruntimes",
                        "secrets"
                    ]
                    .contains(&r.as_str())),
                    "{name}: writes beyond (Admin)NetworkPolicies, Events, the intent ConfigMap, AgentRuntime \
                     annotations and a joined spoke's identity Secret: {rule}"
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
                    resources == ["configmaps"]
                        || resources == ["customresourcedefinitions"]
                        || resources == ["secrets"],
                    "{name}: the spoke never GETs but its intent, its identity Secret and the AgentRuntime CRD: {rule}"
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

/// Renders the chart with `values` and the CRD and applies it, as `helm install --create-namespace` would.
pub(crate) async fn install(cluster: &Cluster, values: &[&str]) -> Result<Rendered> {
    cluster.create_namespace(RELEASE_NS).await?;
    let text = render(RELEASE, RELEASE_NS, values, &["--include-crds"])?;
    cluster.apply_yaml(&text).await.context("applying the rendered chart")?;
    Rendered::parse(text)
}

/// A token of the chart's ServiceAccount from the TokenRequest API, as the kubelet would mount it.
pub(crate) async fn service_account_token(cluster: &Cluster) -> Result<String> {
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

pub(crate) fn service_account_user() -> String {
    format!("system:serviceaccount:{RELEASE_NS}:{SERVICE_ACCOUNT}")
}

/// Where the Deployment mounts the hub TLS Secret.
pub(crate) const HUB_TLS_MOUNT: &str = "/etc/tollgate/hub-tls";
/// Where the Deployment mounts the join token Secret.
pub(crate) const JOIN_MOUNT: &str = "/etc/tollgate/join";

/// The real spoke with the chart's Deployment arguments (health on a free loopback port instead of 0.0.0.0:9464,
/// the hub TLS and join token Secrets' files from `dir/hub-tls` and `dir/join` instead of their mounts) and a
/// kubeconfig holding the ServiceAccount token: what the pod runs, minus the pod.
pub(crate) fn spawn_as_chart(cluster: &Cluster, chart: &Rendered, token: &str, dir: &Path) -> Result<Spoke> {
    let kubeconfig = dir.join("spoke.kubeconfig");
    std::fs::write(
        &kubeconfig,
        cluster.kubeconfig_for_token(&service_account_user(), token),
    )?;
    let port = free_port()?;
    let hub_tls = dir.join("hub-tls").display().to_string();
    let join = dir.join("join").display().to_string();
    let mut args: Vec<String> = chart
        .args()
        .iter()
        .map(|a| a.replace(HUB_TLS_MOUNT, &hub_tls).replace(JOIN_MOUNT, &join))
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
pub(crate) async fn allowed(
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
pub(crate) async fn orphan(client: &Client, name: &str) -> Result<()> {
    let orphan: NetworkPolicy = serde_json::from_value(json!({
        "metadata": {"name": name, "namespace": NS,
                     "labels": {"app.kubernetes.io/managed-by": "tollgate-spoke", "tollgate.dev/agent": "gone"}},
        "spec": {"podSelector": {}, "policyTypes": ["Egress"]},
    }))?;
    policies(client).create(&PostParams::default(), &orphan).await?;
    Ok(())
}

/// A managed AdminNetworkPolicy of an agent that does not exist: the spoke sweeps it.
pub(crate) async fn orphan_admin_policy(client: &Client, name: &str) -> Result<()> {
    let orphan: tollgate_spoke::anp::AdminNetworkPolicy = serde_json::from_value(json!({
        "apiVersion": "policy.networking.k8s.io/v1alpha1",
        "kind": "AdminNetworkPolicy",
        "metadata": {"name": format!("orphan-anp-{name}"),
                     "labels": {"app.kubernetes.io/managed-by": "tollgate-spoke", "tollgate.dev/agent": "gone",
                                "tollgate.dev/agent-namespace": NS}},
        "spec": {"priority": 40, "subject": {"namespaces": {}}},
    }))?;
    Api::<tollgate_spoke::anp::AdminNetworkPolicy>::all(client.clone())
        .create(&PostParams::default(), &orphan)
        .await?;
    Ok(())
}

/// The highest `series.count` of an agent's Events with this reason (1 for an Event never repeated, 0 for none).
pub(crate) async fn event_count(client: &Client, agent: &str, reason: &str) -> Result<i32> {
    Ok(events_about(client, agent)
        .await?
        .iter()
        .filter(|e| e.reason.as_deref() == Some(reason))
        .map(|e| e.series.as_ref().map_or(1, |s| s.count))
        .max()
        .unwrap_or(0))
}

/// Takes the API server's endpoints away and back, twice. Every agent gets the same APIServerUndiscovered Warning
/// twice about an unchanged AgentRuntime: the second time kube's event recorder patches the Event (its series).
pub(crate) async fn lose_the_api_server_twice(cluster: &Cluster, restricted_policy: &str) -> Result<()> {
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

/// The real hub ([`HubServer`]) with the cluster registered, and the spoke's certificate files in `dir/hub-tls`
/// under the keys of the chart's TLS Secret (`ca.crt`, `tls.crt`, `tls.key`).
pub(crate) async fn start_hub(dir: &Path, cluster_id: &str) -> Result<HubServer> {
    let certs = dir.join("certs");
    issue_certificates(&certs, &[cluster_id])?;
    let tls = dir.join("hub-tls");
    std::fs::create_dir_all(&tls)?;
    std::fs::copy(certs.join("ca.pem"), tls.join("ca.crt"))?;
    std::fs::copy(certs.join(format!("spoke-{cluster_id}.pem")), tls.join("tls.crt"))?;
    std::fs::copy(certs.join(format!("spoke-{cluster_id}-key.pem")), tls.join("tls.key"))?;
    let hub = HubServer::start(dir, &certs).await?;
    hub.register(cluster_id, "")?;
    Ok(hub)
}

/// One verb on one resource, granted by one rule of one (Cluster)Role of the chart.
#[derive(Clone, Debug)]
pub(crate) struct Grant {
    pub(crate) role_kind: String,
    pub(crate) role_namespace: String,
    pub(crate) role_name: String,
    pub(crate) group: String,
    pub(crate) resource: String,
    pub(crate) verb: String,
    pub(crate) resource_name: Option<String>,
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
    pub(crate) fn all(chart: &Rendered) -> Vec<Self> {
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
    pub(crate) fn remove_from(&self, chart: &Rendered) -> Value {
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
    pub(crate) async fn allowed(&self, client: &Client) -> Result<bool> {
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
    pub(crate) fn refusal(&self) -> String {
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
pub(crate) async fn refused(grant: &Grant, spoke: &Spoke) -> bool {
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
pub(crate) fn unescaped_log(spoke: &Spoke) -> String {
    spoke.log().replace("\\\"", "\"")
}

pub(crate) async fn set_role(cluster: &Cluster, role: &Value) -> Result<()> {
    cluster.apply_yaml(&serde_json::to_string(role)?).await?;
    Ok(())
}
