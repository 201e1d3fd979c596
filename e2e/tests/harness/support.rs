//! Small builders and assertions shared by the tests.

use std::time::Duration;

use k8s_openapi::api::core::v1::ConfigMap;

/// Deadline for effects that are immediate on a healthy API server.
pub const QUICK: Duration = Duration::from_secs(10);

/// Deadline for effects of a controller (e.g. the garbage collector's first discovery + sync).
pub const CONTROLLER: Duration = Duration::from_secs(60);

/// An apply-ready ConfigMap.
pub fn mk_config_map(name: &str, data: &[(&str, &str)]) -> serde_json::Value {
    let data: serde_json::Map<String, serde_json::Value> = data
        .iter()
        .map(|(k, v)| (k.to_string(), serde_json::Value::from(*v)))
        .collect();
    serde_json::json!({
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": { "name": name },
        "data": data,
    })
}

/// A ConfigMap's data as sorted pairs.
pub fn data_of(cm: &ConfigMap) -> Vec<(String, String)> {
    cm.data.clone().unwrap_or_default().into_iter().collect()
}

/// `[("k", "v")]` as owned pairs, for comparisons with [`data_of`].
pub fn pairs(data: &[(&str, &str)]) -> Vec<(String, String)> {
    data.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect()
}

/// The HTTP status code of a kube API error, if it is one.
pub fn api_code(err: &kube::Error) -> Option<u16> {
    match err {
        kube::Error::Api(status) => Some(status.code),
        _ => None,
    }
}
