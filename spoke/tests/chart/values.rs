//! Rendering: default values and other value sets reach the right flags and objects; bad values are refused;
//! every value is documented; the CRD in crds/ is the spoke's own.

use std::collections::BTreeSet;
use std::process::Command;

use anyhow::{Result, ensure};
use serde_json::{Value, json};
use tollgate_e2e::{monitoring, workspace_root};

use crate::helpers::*;

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
            key("ClusterRole", "", "tollgate-spoke-anp"),
            key("ClusterRoleBinding", "", "tollgate-spoke-agents"),
            key("ClusterRoleBinding", "", "tollgate-spoke-namespaces"),
            key("ClusterRoleBinding", "", "tollgate-spoke-crd"),
            key("ClusterRoleBinding", "", "tollgate-spoke-anp"),
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
    // NetworkPolicy enforcement may still sweep the AdminNetworkPolicies an earlier release wrote, never write one.
    assert_eq!(
        rules("ClusterRole", "", "tollgate-spoke-anp"),
        json!([{"apiGroups": ["policy.networking.k8s.io"], "resources": ["adminnetworkpolicies"],
                "verbs": ["list", "watch", "delete"]}])
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

    // Joined with a token: the token Secret mounted optionally, the identity Secret the only one it may touch.
    let joined = Rendered::new(RELEASE, RELEASE_NS, &[JOINED_HUB])?;
    let flags = joined.flags();
    assert_eq!(flags["join-token-file"], "/etc/tollgate/join/token");
    assert_eq!(flags["identity-secret"], "spoke-identity");
    for absent in ["standalone", "hub-ca", "tls-cert", "tls-key"] {
        assert!(!flags.contains_key(absent), "--{absent} in {flags:?}");
    }
    assert_eq!(
        joined.pod()["volumes"],
        json!([{"name": "join-token", "secret": {"secretName": "prod-eu-1-join", "optional": true}}])
    );
    assert_eq!(
        joined.container()["volumeMounts"],
        json!([{"name": "join-token", "mountPath": "/etc/tollgate/join", "readOnly": true}])
    );
    let role = joined.get("Role", RELEASE_NS, &format!("{RELEASE}-intent"));
    assert!(
        role["rules"].as_array().unwrap().contains(&json!({
            "apiGroups": [""],
            "resources": ["secrets"],
            "resourceNames": ["spoke-identity"],
            "verbs": ["get", "create", "patch"],
        })),
        "{role:#}"
    );
    assert_least_privilege(&joined);

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
    let rendered: BTreeSet<String> = [&ocp, &custom, &dev, &joined, &Rendered::new(RELEASE, RELEASE_NS, &[])?]
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
            "hub.address needs hub.joinTokenSecret or hub.tls.secretName",
        ),
        (
            "standalone: false\nhub: {address: https://hub:8443, joinTokenSecret: j, tls: {secretName: s}}",
            "hub.joinTokenSecret excludes hub.tls.secretName",
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

/// The CRD in crds/ is the spoke's own.
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
