//! The Helm chart `deploy/charts/tollgate-hub`, proven without Helm: rendered by the faithful renderer for the
//! default and non-default values, refused for bad values, every object accepted by a real API server
//! (server-side apply), and the real hub started with exactly the arguments the chart gives it.

use std::collections::BTreeMap;
use std::time::Duration;

use anyhow::{Context, Result};
use serde_json::Value;
use tollgate_e2e::hub::{run_certs, start_serving};
use tollgate_e2e::{ControlPlane, free_port, helm, monitoring, workspace_root};

const CHART: &str = "deploy/charts/tollgate-hub";
const NS: &str = "tollgate-system";
/// How long the hub started with the chart's arguments may take to answer `/readyz`.
const START: Duration = Duration::from_secs(20);

/// Every optional object: ServiceMonitor, PrometheusRule (linking runbooks), dashboard ConfigMap, OpenShift Route.
const EVERYTHING: &str = "admins: [alice]\ntlsSecretName: hub-tls
metrics:
  serviceMonitor: {enabled: true, labels: {release: prometheus}, interval: 15s}
  prometheusRule: {enabled: true, labels: {role: alert-rules}, runbookBaseUrl: 'https://docs.example.com/tollgate/runbooks'}
  dashboard: {enabled: true}
route: {enabled: true, host: hub.apps.example.com, annotations: {haproxy.router.openshift.io/timeout: 1h}}
";

fn objects(rendered: &str) -> Result<BTreeMap<String, Value>> {
    let mut out = BTreeMap::new();
    for document in serde_yaml_ng::Deserializer::from_str(rendered) {
        let value: Value = serde::Deserialize::deserialize(document)?;
        if value.is_null() {
            continue;
        }
        let key = format!(
            "{}/{}",
            value["kind"].as_str().unwrap_or(""),
            value["metadata"]["name"].as_str().unwrap_or("")
        );
        out.insert(key, value);
    }
    Ok(out)
}

fn args_of(statefulset: &Value) -> Vec<String> {
    statefulset["spec"]["template"]["spec"]["containers"][0]["args"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| a.as_str().unwrap().to_string())
        .collect()
}

/// The hub container mounts Secret `secret` as volume `volume`, read-only at `path`.
fn assert_secret_mounted(statefulset: &Value, volume: &str, secret: &str, path: &str) {
    let pod = &statefulset["spec"]["template"]["spec"];
    assert!(
        pod["volumes"]
            .as_array()
            .unwrap()
            .contains(&serde_json::json!({"name": volume, "secret": {"secretName": secret}})),
        "{pod:#}"
    );
    assert!(
        pod["containers"][0]["volumeMounts"]
            .as_array()
            .unwrap()
            .contains(&serde_json::json!({"name": volume, "mountPath": path, "readOnly": true})),
        "{pod:#}"
    );
}

#[test]
fn default_values_render_a_restricted_v2_single_replica_hub() -> Result<()> {
    let rendered = helm::render(
        CHART,
        "tollgate-hub",
        NS,
        &["admins: [alice]\ntlsSecretName: hub-tls\n"],
    )?;
    let objects = objects(&rendered)?;
    assert_eq!(
        objects.keys().collect::<Vec<_>>(),
        [
            "Service/tollgate-hub",
            "Service/tollgate-hub-metrics",
            "StatefulSet/tollgate-hub"
        ],
        "no PodDisruptionBudget for one replica"
    );
    let sts = &objects["StatefulSet/tollgate-hub"];
    assert_eq!(sts["spec"]["replicas"], 1);
    let pod = &sts["spec"]["template"]["spec"];
    assert_eq!(
        pod["automountServiceAccountToken"], false,
        "the hub needs no Kubernetes API access"
    );
    assert_eq!(pod["securityContext"]["runAsNonRoot"], true);
    assert_eq!(pod["securityContext"]["seccompProfile"]["type"], "RuntimeDefault");
    let container = &pod["containers"][0];
    let security = &container["securityContext"];
    assert_eq!(security["allowPrivilegeEscalation"], false);
    assert_eq!(security["readOnlyRootFilesystem"], true);
    assert_eq!(security["capabilities"]["drop"], serde_json::json!(["ALL"]));
    assert!(
        security.get("runAsUser").is_none() && pod["securityContext"].get("runAsUser").is_none(),
        "no fixed UID"
    );
    // The volume is writable by the image's non-root user through its group.
    assert_eq!(pod["securityContext"]["fsGroup"], 65532);
    assert_eq!(pod["securityContext"]["fsGroupChangePolicy"], "OnRootMismatch");
    assert_eq!(container["livenessProbe"]["httpGet"]["path"], "/healthz");
    assert_eq!(container["readinessProbe"]["httpGet"]["path"], "/readyz");
    assert_eq!(
        args_of(sts),
        [
            "--log-level=info",
            "--log-format=json",
            "serve",
            "--listen=0.0.0.0:7443",
            "--data-dir=/var/lib/tollgate-hub",
            "--tls-cert=/etc/tollgate/tls/tls.crt",
            "--tls-key=/etc/tollgate/tls/tls.key",
            "--client-ca=/etc/tollgate/tls/ca.crt",
            "--metrics-addr=0.0.0.0:9465",
            "--heartbeat-seconds=10",
            "--admin=alice",
        ]
    );
    assert_eq!(
        sts["spec"]["volumeClaimTemplates"][0]["spec"]["resources"]["requests"]["storage"],
        "1Gi"
    );
    let ports = |service: &Value| -> Vec<(String, i64)> {
        service["spec"]["ports"]
            .as_array()
            .unwrap()
            .iter()
            .map(|p| (p["name"].as_str().unwrap().to_string(), p["port"].as_i64().unwrap()))
            .collect()
    };
    // The gRPC Service (often a LoadBalancer) never carries /metrics; a ClusterIP Service of its own does.
    assert_eq!(ports(&objects["Service/tollgate-hub"]), [("grpc".to_string(), 7443)]);
    let metrics = &objects["Service/tollgate-hub-metrics"];
    assert_eq!(ports(metrics), [("metrics".to_string(), 9465)]);
    assert_eq!(metrics["spec"]["type"], "ClusterIP");
    Ok(())
}

#[test]
fn non_default_values_reach_the_right_fields() -> Result<()> {
    let values = "admins: [alice]\ntlsSecretName: hub-tls
grpcPort: 8443
heartbeatSeconds: 5
logLevel: tollgate_hub=debug
logFormat: plain
service: {type: LoadBalancer, annotations: {example.com/lb: internal}}
podDisruptionBudget: {maxUnavailable: 2}
persistence: {size: 5Gi, storageClassName: fast}
metrics: {bindAddress: '::', port: 9999, service: {annotations: {prometheus.io/scrape: 'true'}}}
admins: [alice, bob]
signing: {caKeySecretName: hub-ca-key, spokeCertTtl: 12h}
";
    let objects = objects(&helm::render(CHART, "fleet", NS, &[values])?)?;
    let sts = &objects["StatefulSet/fleet-tollgate-hub"];
    let args = args_of(sts);
    for expected in [
        "--log-level=tollgate_hub=debug",
        "--log-format=plain",
        "--listen=0.0.0.0:8443",
        "--metrics-addr=[::]:9999",
        "--heartbeat-seconds=5",
        "--admin=alice",
        "--admin=bob",
        "--client-ca-key=/etc/tollgate/client-ca-key/tls.key",
        "--spoke-cert-ttl=12h",
    ] {
        assert!(args.iter().any(|a| a == expected), "{expected} missing from {args:?}");
    }
    assert_secret_mounted(sts, "client-ca-key", "hub-ca-key", "/etc/tollgate/client-ca-key");
    let claim = &sts["spec"]["volumeClaimTemplates"][0]["spec"];
    assert_eq!(
        (
            claim["storageClassName"].as_str(),
            claim["resources"]["requests"]["storage"].as_str()
        ),
        (Some("fast"), Some("5Gi"))
    );
    let service = &objects["Service/fleet-tollgate-hub"];
    assert_eq!(service["spec"]["type"], "LoadBalancer");
    assert_eq!(service["metadata"]["annotations"]["example.com/lb"], "internal");
    assert_eq!(service["spec"]["ports"][0]["port"], 8443);
    let metrics = &objects["Service/fleet-tollgate-hub-metrics"];
    assert_eq!(metrics["spec"]["ports"][0]["port"], 9999);
    assert_eq!(metrics["metadata"]["annotations"]["prometheus.io/scrape"], "true");
    Ok(())
}

#[test]
fn postgres_values_render_replicas_without_a_volume_and_the_url_from_the_secret() -> Result<()> {
    let rendered = helm::render(
        CHART,
        "tollgate-hub",
        NS,
        &[
            "admins: [alice]\ntlsSecretName: hub-tls\nreplicas: 3\nstore: {type: postgres, postgres: {existingSecret: hub-db}}\n",
        ],
    )?;
    let objects = objects(&rendered)?;
    // Replicas share a ticket secret only when given one.
    let shared = helm::render(
        CHART,
        "tollgate-hub",
        NS,
        &[
            "admins: [alice]\ntlsSecretName: hub-tls\nreplicas: 3\nstore: {type: postgres, postgres: {existingSecret: hub-db}}\n\
             sessionTickets: {secretName: hub-tickets}\n",
        ],
    )?;
    let shared = &self::objects(&shared)?["StatefulSet/tollgate-hub"];
    assert!(
        args_of(shared).contains(&"--session-ticket-key=/etc/tollgate/session-tickets/key".to_string()),
        "{:?}",
        args_of(shared)
    );
    assert_secret_mounted(
        shared,
        "session-tickets",
        "hub-tickets",
        "/etc/tollgate/session-tickets",
    );
    let sts = &objects["StatefulSet/tollgate-hub"];
    assert_eq!(sts["spec"]["replicas"], 3);
    // Several replicas: drains take at most one at a time (policy/v1beta1 on a 1.20 server, policy/v1 where served).
    let pdb = &objects["PodDisruptionBudget/tollgate-hub"];
    assert_eq!(pdb["apiVersion"], "policy/v1beta1");
    assert_eq!(pdb["spec"]["maxUnavailable"], 1);
    assert_eq!(
        pdb["spec"]["selector"]["matchLabels"],
        sts["spec"]["selector"]["matchLabels"]
    );
    let newer = helm::template(
        CHART,
        "tollgate-hub",
        NS,
        &[
            "admins: [alice]\ntlsSecretName: hub-tls\nreplicas: 3\nstore: {type: postgres, postgres: {existingSecret: hub-db}}\n",
        ],
        &["-a", "policy/v1/PodDisruptionBudget"],
    )?;
    assert!(newer.status.success(), "{}", String::from_utf8_lossy(&newer.stderr));
    let newer = self::objects(&String::from_utf8(newer.stdout)?)?;
    assert_eq!(newer["PodDisruptionBudget/tollgate-hub"]["apiVersion"], "policy/v1");
    assert_eq!(sts["spec"]["podManagementPolicy"], "Parallel");
    assert!(sts["spec"]["volumeClaimTemplates"].is_null(), "no volume: {sts:#}");
    let container = &sts["spec"]["template"]["spec"]["containers"][0];
    let mounts: Vec<&str> = container["volumeMounts"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["name"].as_str().unwrap())
        .collect();
    assert_eq!(mounts, ["tls", "tmp"]);
    assert_eq!(
        container["env"],
        serde_json::json!([
            {"name": "TOLLGATE_HUB_STORE", "valueFrom": {"secretKeyRef": {"name": "hub-db", "key": "url"}}},
            {"name": "TOLLGATE_HUB_REPLICA_ID", "valueFrom": {"fieldRef": {"fieldPath": "metadata.name"}}},
        ])
    );
    let args = args_of(sts);
    assert!(!args.iter().any(|a| a.starts_with("--data-dir")), "{args:?}");
    assert!(
        !args.iter().any(|a| a.contains("postgres://")),
        "the URL stays out of the arguments: {args:?}"
    );
    Ok(())
}

/// The fsGroup is set where it is needed and allowed: the embedded store's volume, on clusters other than OpenShift
/// (whose restricted-v2 SCC assigns a group from the namespace's range and refuses others).
#[test]
fn the_fs_group_is_set_for_the_volume_except_on_openshift() -> Result<()> {
    let pod_security = |values: &str, flags: &[&str]| -> Result<Value> {
        let output = helm::template(CHART, "tollgate-hub", NS, &[values], flags)?;
        anyhow::ensure!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));
        let objects = objects(&String::from_utf8(output.stdout)?)?;
        Ok(objects["StatefulSet/tollgate-hub"]["spec"]["template"]["spec"]["securityContext"].clone())
    };
    let default = pod_security("admins: [alice]\ntlsSecretName: t\n", &[])?;
    assert_eq!(
        (default["fsGroup"].as_i64(), default["runAsNonRoot"].as_bool()),
        (Some(65532), Some(true))
    );
    assert_eq!(
        pod_security("admins: [alice]\ntlsSecretName: t\npersistence: {fsGroup: 1001}\n", &[])?["fsGroup"],
        1001
    );
    for (values, flags) in [
        (
            "admins: [alice]\ntlsSecretName: t\n",
            &["-a", "security.openshift.io/v1"][..],
        ),
        (
            "admins: [alice]\ntlsSecretName: t\npersistence: {fsGroup: null}\n",
            &[][..],
        ),
        (
            "admins: [alice]\ntlsSecretName: t\nreplicas: 2\nstore: {type: postgres, postgres: {existingSecret: db}}\n",
            &[][..],
        ),
    ] {
        let security = pod_security(values, flags)?;
        assert!(
            security.get("fsGroup").is_none() && security.get("fsGroupChangePolicy").is_none(),
            "{values:?} {flags:?}: {security}"
        );
        assert_eq!(
            security["runAsNonRoot"], true,
            "the rest of the pod security context stays"
        );
    }
    Ok(())
}

/// The optional objects: the ServiceMonitor scrapes the metrics Service (never the gRPC one), the alerts pass
/// `promtool check rules` and their unit tests, link runbooks that exist, the dashboard is the chart's JSON, and
/// the Route passes TLS through to the gRPC port.
#[test]
fn monitoring_objects_and_the_route_point_at_the_right_things() -> Result<()> {
    let objects = objects(&helm::render(CHART, "tollgate-hub", NS, &[EVERYTHING])?)?;
    let monitor = &objects["ServiceMonitor/tollgate-hub"];
    let selects = |service: &Value| {
        monitor["spec"]["selector"]["matchLabels"]
            .as_object()
            .unwrap()
            .iter()
            .all(|(key, value)| &service["metadata"]["labels"][key] == value)
    };
    let metrics = &objects["Service/tollgate-hub-metrics"];
    assert!(selects(metrics), "{monitor:#}");
    assert!(
        !selects(&objects["Service/tollgate-hub"]),
        "the gRPC Service is not scraped"
    );
    let endpoint = &monitor["spec"]["endpoints"][0];
    assert_eq!(endpoint["port"], metrics["spec"]["ports"][0]["name"]);
    assert_eq!(
        (endpoint["path"].as_str(), endpoint["interval"].as_str()),
        (Some("/metrics"), Some("15s"))
    );
    assert_eq!(monitor["metadata"]["labels"]["release"], "prometheus");
    assert_eq!(
        monitor["spec"]["namespaceSelector"]["matchNames"],
        serde_json::json!([NS])
    );

    let rule = &objects["PrometheusRule/tollgate-hub"];
    assert_eq!(rule["metadata"]["labels"]["role"], "alert-rules");
    let report = monitoring::test_rules(rule, &workspace_root().join("hub/tests/fixtures/alerts.test.yaml"))?;
    assert!(report.contains("SUCCESS: 4 rules found"), "{report}");
    monitoring::ensure_runbooks(rule, "https://docs.example.com/tollgate/runbooks")?;

    let dashboard = &objects["ConfigMap/tollgate-hub-dashboard"];
    assert_eq!(dashboard["metadata"]["labels"]["grafana_dashboard"], "1");
    let file = std::fs::read_to_string(workspace_root().join(CHART).join("dashboards/tollgate-hub.json"))?;
    assert_eq!(dashboard["data"]["tollgate-hub.json"].as_str(), Some(file.trim_end()));
    let json: Value = serde_json::from_str(&file)?;
    assert_eq!(json["uid"], "tollgate-hub");

    let route = &objects["Route/tollgate-hub"];
    let grpc = &objects["Service/tollgate-hub"];
    assert_eq!(route["spec"]["to"]["name"], grpc["metadata"]["name"]);
    assert_eq!(route["spec"]["port"]["targetPort"], grpc["spec"]["ports"][0]["name"]);
    assert_eq!(
        route["spec"]["tls"]["termination"], "passthrough",
        "the hub terminates mutual TLS"
    );
    assert_eq!(route["spec"]["host"], "hub.apps.example.com");
    assert_eq!(
        route["metadata"]["annotations"]["haproxy.router.openshift.io/timeout"],
        "1h"
    );

    let message = helm::render_error(
        CHART,
        "tollgate-hub",
        NS,
        &["admins: [alice]\ntlsSecretName: t\nmetrics: {service: {enabled: false}, serviceMonitor: {enabled: true}}\n"],
    )?;
    assert!(
        message.contains("metrics.serviceMonitor.enabled needs metrics.service.enabled"),
        "{message}"
    );
    Ok(())
}

#[test]
fn bad_values_are_refused_with_a_reason() -> Result<()> {
    for (values, reason) in [
        ("admins: [alice]\n", "tlsSecretName is required"),
        (
            "tlsSecretName: t\n",
            "admins is required: the names of the admin certificates this hub accepts",
        ),
        (
            "admins: [alice]\ntlsSecretName: t\nreplicas: 2\n",
            "replicas is 2: the embedded store serves exactly one replica; several replicas need store.type postgres",
        ),
        (
            "admins: [alice]\ntlsSecretName: t\nreplicas: 0\nstore: {type: postgres, postgres: {existingSecret: db}}\n",
            "replicas is 0: at least one hub replica is needed",
        ),
        (
            "admins: [alice]\ntlsSecretName: t\nstore: {type: postgres}\n",
            "store.postgres.existingSecret is required with store.type postgres",
        ),
        (
            "admins: [alice]\ntlsSecretName: t\nstore: {type: mysql}\n",
            "store.type \"mysql\" must be embedded or postgres",
        ),
        (
            "admins: [alice]\ntlsSecretName: t\nlogFormat: xml\n",
            "logFormat \"xml\" must be plain or json",
        ),
        (
            "admins: [alice]\ntlsSecretName: t\nheartbeatSeconds: 0\n",
            "heartbeatSeconds must be at least 1",
        ),
        // values.schema.json: wrong types, unknown keys (a typo is not silently ignored), out-of-range numbers.
        (
            "admins: [alice]\ntlsSecretName: t\nreplicas: two\n",
            "values don't meet the specifications of the schema(s) in the following chart(s):\ntollgate-hub:\n\
             - replicas: Invalid type. Expected: integer, given: string",
        ),
        (
            "admins: [alice]\ntlsSecretName: t\nreplica: 3\n",
            "- (root): Additional property replica is not allowed",
        ),
        (
            "admins: [alice]\ntlsSecretName: t\nmetrics: {port: 70000}\n",
            "- metrics.port: Must be less than or equal to 65535",
        ),
        (
            "admins: [alice]\ntlsSecretName: t\npersistence: {fsGroup: root}\n",
            "- persistence.fsGroup: Invalid type. Expected: [integer,null], given: string",
        ),
        (
            "admins: [alice]\ntlsSecretName: t\nroute: {enabled: yes-please}\n",
            "- route.enabled: Invalid type. Expected: boolean, given: string",
        ),
    ] {
        let message = helm::render_error(CHART, "tollgate-hub", NS, &[values])?;
        assert!(message.contains(reason), "values {values:?}: {message}");
    }
    Ok(())
}

#[tokio::test]
async fn the_api_server_accepts_the_chart_and_the_hub_runs_with_its_arguments() -> Result<()> {
    let rendered = helm::render(
        CHART,
        "tollgate-hub",
        NS,
        &["admins: [alice]\ntlsSecretName: hub-tls\n"],
    )?;
    let cp = ControlPlane::builder().clusters(1).start().await?;
    let cluster = &cp.clusters()[0];
    cluster.create_namespace(NS).await?;
    let applied = cluster.apply_yaml(&rendered).await?;
    assert_eq!(applied.len(), 3);
    // With the Prometheus Operator's and OpenShift's kinds served, the optional objects are accepted too.
    cluster.apply_yaml(monitoring::STAND_IN_CRDS).await?;
    let everything = helm::render(CHART, "tollgate-hub", NS, &[EVERYTHING])?;
    let kinds: Vec<String> = cluster
        .apply_yaml(&everything)
        .await?
        .iter()
        .map(|o| o.types.as_ref().map(|t| t.kind.clone()).unwrap_or_default())
        .collect();
    for kind in ["ServiceMonitor", "PrometheusRule", "ConfigMap", "Route"] {
        assert!(kinds.iter().any(|k| k == kind), "{kind} applied: {kinds:?}");
    }

    // The hub binary accepts exactly the chart's arguments (paths and addresses moved to a temp folder and
    // loopback, as servers in tests listen on loopback only).
    let dir = tempfile::tempdir()?;
    let certs = dir.path().join("certs");
    run_certs(&certs, &[&["init"], &["hub"]])?;
    let (grpc, metrics) = (free_port()?, free_port()?);
    let sts = &objects(&rendered)?["StatefulSet/tollgate-hub"];
    let data = dir.path().join("data");
    let local = |arg: &str| {
        arg.replace("0.0.0.0:7443", &format!("127.0.0.1:{grpc}"))
            .replace("0.0.0.0:9465", &format!("127.0.0.1:{metrics}"))
            .replace("/var/lib/tollgate-hub", data.to_str().unwrap())
            .replace("/etc/tollgate/tls/tls.crt", certs.join("hub.pem").to_str().unwrap())
            .replace("/etc/tollgate/tls/tls.key", certs.join("hub-key.pem").to_str().unwrap())
            .replace("/etc/tollgate/tls/ca.crt", certs.join("ca.pem").to_str().unwrap())
    };
    let args: Vec<String> = args_of(sts).into_iter().map(|arg| local(&arg)).collect();
    let process = start_serving(&args, &[], metrics, &dir.path().join("hub.log"), START).await?;
    let log = std::fs::read_to_string(process.log_path()).context("reading the hub log")?;
    assert!(
        log.contains("\"Hub serving\""),
        "the chart's --log-format=json gives JSON logs: {log}"
    );
    drop(process);

    // The PostgreSQL mode with TLS to the database (a new release: a StatefulSet's volumes and pod management
    // cannot change in place, so the store type of an installed release is fixed): the API server accepts it, and
    // the hub runs on a real database over verified TLS with exactly the chart's arguments and environment (the
    // Secret's URL and the pod name, resolved as the kubelet would).
    cluster.create_namespace("tollgate-ha").await?;
    let rendered = helm::render(
        CHART,
        "tollgate-hub",
        "tollgate-ha",
        &[
            "admins: [alice]\ntlsSecretName: hub-tls\nreplicas: 2\nstore: {type: postgres, postgres: {existingSecret: hub-db, caSecretName: db-ca}}\n",
        ],
    )?;
    assert_eq!(
        cluster.apply_yaml(&rendered).await?.len(),
        4,
        "StatefulSet, two Services, PodDisruptionBudget"
    );
    let postgres = tollgate_e2e::Postgres::start_with_tls().await?;
    let store_ca = postgres.ca_path().unwrap().display().to_string();
    let url = postgres.create_database().await?;
    let sts = &objects(&rendered)?["StatefulSet/tollgate-hub"];
    let env: Vec<(String, String)> = sts["spec"]["template"]["spec"]["containers"][0]["env"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| {
            let name = e["name"].as_str().unwrap().to_string();
            let value = match name.as_str() {
                "TOLLGATE_HUB_STORE" => url.clone(),
                "TOLLGATE_HUB_REPLICA_ID" => "tollgate-hub-1".to_string(),
                other => panic!("unexpected variable {other}"),
            };
            (name, value)
        })
        .collect();
    let args: Vec<String> = args_of(sts)
        .into_iter()
        .map(|arg| local(&arg).replace("/etc/tollgate/store-ca/ca.crt", &store_ca))
        .collect();
    let process = start_serving(&args, &env, metrics, &dir.path().join("hub-postgres.log"), START).await?;
    let log = std::fs::read_to_string(process.log_path()).context("reading the hub log")?;
    assert!(
        log.contains("\"replica\":\"tollgate-hub-1\"") && log.contains("postgres://"),
        "{log}"
    );
    Ok(())
}
