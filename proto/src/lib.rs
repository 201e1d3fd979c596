//! The `tollgate.v1` protocol between the hub, its spokes and the admin CLI.
//!
//! Generated from `proto/tollgate/v1/tollgate.proto`; conversions to the domain types live in
//! `tollgate-common`, so that protobuf types never reach the planner.

#![allow(missing_debug_implementations, clippy::all, clippy::pedantic)]

/// Generated messages and services of the `tollgate.v1` package.
pub mod v1 {
    tonic::include_proto!("tollgate.v1");
}

/// The largest message a hub sends a spoke: one cluster's intent (at most 1 MiB of canonical YAML, the bound the
/// hub enforces at apply) with room to spare for framing. Hub and spoke set it explicitly on both ends.
pub const MAX_INTENT_MESSAGE_BYTES: usize = 4 * 1024 * 1024;

/// The largest message a hub accepts: a spoke's agent inventory (a few hundred bytes per agent, so tens of
/// thousands of agents fit) or an admin's apply.
pub const MAX_HUB_INBOUND_MESSAGE_BYTES: usize = 64 * 1024 * 1024;

/// Checks a hub address against the transport mode of a client (spoke or CLI): with TLS it must be `https://`;
/// plaintext (development only) must be `http://` to a loopback host. Plaintext by mistake — an `http://` address
/// next to TLS files, or to a remote host — is refused before anything is sent.
pub fn check_hub_address(url: &str, plaintext: bool) -> Result<(), String> {
    let uri: tonic::codegen::http::Uri = url
        .parse()
        .map_err(|e| format!("{url:?} is not an address ({e}): expected https://HOST:PORT"))?;
    let Some(host) = uri.host() else {
        return Err(format!("{url:?} has no host: expected https://HOST:PORT"));
    };
    match (uri.scheme_str(), plaintext) {
        (Some("https"), false) => Ok(()),
        (Some("http"), true) if is_loopback(host) => Ok(()),
        (Some("http"), true) => Err(format!(
            "{url:?}: plaintext (--insecure-dev-plaintext) is only allowed to a loopback host (localhost, 127.0.0.1, \
             ::1), not {host:?}; use https:// with TLS files"
        )),
        (Some("http"), false) => Err(format!(
            "{url:?} is plaintext but TLS is configured: use https://, or --insecure-dev-plaintext (without TLS files) \
             for a development hub on loopback"
        )),
        (Some("https"), true) => Err(format!("{url:?}: --insecure-dev-plaintext needs an http:// address")),
        _ => Err(format!("{url:?}: expected https://HOST:PORT")),
    }
}

fn is_loopback(host: &str) -> bool {
    host.eq_ignore_ascii_case("localhost")
        || host
            .trim_start_matches('[')
            .trim_end_matches(']')
            .parse::<std::net::IpAddr>()
            .is_ok_and(|ip| ip.is_loopback())
}

#[cfg(test)]
mod tests {
    use super::check_hub_address;

    #[test]
    fn plaintext_only_by_flag_and_only_to_loopback() {
        let ok = [
            ("https://hub.example.com:7443", false),
            ("https://127.0.0.1:7443", false),
            ("http://127.0.0.1:7443", true),
            ("http://localhost:7443", true),
            ("http://[::1]:7443", true),
        ];
        for (url, plaintext) in ok {
            assert_eq!(check_hub_address(url, plaintext), Ok(()), "{url} plaintext={plaintext}");
        }
        let refused = [
            ("http://hub.example.invalid:7443", false, "TLS is configured"),
            ("http://127.0.0.1:7443", false, "TLS is configured"),
            (
                "http://hub.example.invalid:7443",
                true,
                "only allowed to a loopback host",
            ),
            ("http://10.0.0.1:7443", true, "only allowed to a loopback host"),
            ("https://127.0.0.1:7443", true, "needs an http:// address"),
            ("ftp://a:1", false, "expected https://"),
            ("a:7443", false, "expected https://"),
            ("not an address", false, "is not an address"),
        ];
        for (url, plaintext, reason) in refused {
            let error = check_hub_address(url, plaintext).unwrap_err();
            assert!(error.contains(reason), "{url} plaintext={plaintext}: {error}");
        }
    }
}
