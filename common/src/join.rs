//! Join tokens: what `tollgate-hub clusters add` prints and `tollgate-spoke run --join-token-file` reads.
//!
//! A token names the cluster, carries a one-time secret, and pins the hub's CA by the SHA-256 of its DER encoding
//! (as `kubeadm join --discovery-token-ca-cert-hash` does): the spoke checks the CA the hub presents against the pin
//! before it sends anything, so a token can be handed over on an untrusted path without letting another server pose
//! as the hub. The hub keeps only the SHA-256 of the secret.

use std::fmt;

use sha2::{Digest, Sha256};

/// The token format's tag.
const TAG: &str = "tgjoin1";
/// The secret is 32 random bytes, hex-encoded.
const SECRET_HEX_LEN: usize = 64;

/// A parsed join token.
#[derive(Clone, PartialEq, Eq)]
pub struct JoinToken {
    pub cluster_id: String,
    /// 64 lowercase hex digits.
    pub secret: String,
    /// The SHA-256 of the hub CA's DER encoding, 64 lowercase hex digits.
    pub ca_sha256: String,
}

// The secret never reaches a log line.
impl fmt::Debug for JoinToken {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("JoinToken")
            .field("cluster_id", &self.cluster_id)
            .field("secret", &"(hidden)")
            .field("ca_sha256", &self.ca_sha256)
            .finish()
    }
}

/// `tgjoin1:CLUSTER:SECRET:sha256:CAHASH`.
impl fmt::Display for JoinToken {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{TAG}:{}:{}:sha256:{}", self.cluster_id, self.secret, self.ca_sha256)
    }
}

impl JoinToken {
    /// A token for `cluster_id` from 32 random bytes and the hub CA's DER encoding.
    pub fn new(cluster_id: &str, random: [u8; 32], ca_der: &[u8]) -> Self {
        Self {
            cluster_id: cluster_id.to_string(),
            secret: hex(&random),
            ca_sha256: sha256_hex(ca_der),
        }
    }

    /// Parses a token as printed (surrounding whitespace, as in a file, is ignored); the error says what is wrong
    /// without repeating the secret.
    pub fn parse(text: &str) -> Result<Self, String> {
        let parts: Vec<&str> = text.trim().split(':').collect();
        let [tag, cluster_id, secret, algorithm, ca_sha256] = parts[..] else {
            return Err(format!(
                "not a join token: expected {TAG}:CLUSTER:SECRET:sha256:HASH, as `tollgate-hub clusters add` prints"
            ));
        };
        if tag != TAG {
            return Err(format!("not a join token: it starts with {tag:?}, not {TAG:?}"));
        }
        if cluster_id.is_empty() {
            return Err("join token: the cluster id is empty".to_string());
        }
        if !is_hex(secret, SECRET_HEX_LEN) {
            return Err(format!("join token: the secret must be {SECRET_HEX_LEN} hex digits"));
        }
        if algorithm != "sha256" || !is_hex(ca_sha256, 64) {
            return Err("join token: the CA pin must be sha256: and 64 hex digits".to_string());
        }
        Ok(Self {
            cluster_id: cluster_id.to_string(),
            secret: secret.to_string(),
            ca_sha256: ca_sha256.to_string(),
        })
    }

    /// What the hub stores of the secret.
    pub fn secret_digest(&self) -> String {
        secret_digest(&self.secret)
    }
}

/// What the hub stores of a token's secret: its SHA-256, hex.
pub fn secret_digest(secret: &str) -> String {
    sha256_hex(secret.as_bytes())
}

/// SHA-256 of `bytes`, lowercase hex.
pub fn sha256_hex(bytes: &[u8]) -> String {
    hex(&Sha256::digest(bytes))
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn is_hex(text: &str, len: usize) -> bool {
    text.len() == len && text.chars().all(|c| c.is_ascii_digit() || ('a'..='f').contains(&c))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_token_round_trips_and_hides_its_secret() {
        let token = JoinToken::new("prod-eu.1", [7; 32], b"ca der");
        let text = token.to_string();
        assert!(text.starts_with("tgjoin1:prod-eu.1:0707"), "{text}");
        assert!(text.ends_with(&format!(":sha256:{}", sha256_hex(b"ca der"))), "{text}");
        assert_eq!(JoinToken::parse(&format!("  {text}\n")).unwrap(), token);
        assert!(!format!("{token:?}").contains("0707"), "{token:?}");
        assert_eq!(token.secret_digest(), sha256_hex(token.secret.as_bytes()));
    }

    #[test]
    fn malformed_tokens_say_what_is_wrong_without_the_secret() {
        let good = JoinToken::new("c1", [1; 32], b"ca").to_string();
        let cases = [
            ("hello", "not a join token: expected"),
            (
                &good.replacen("tgjoin1", "tgjoin2", 1),
                "not a join token: it starts with \"tgjoin2\"",
            ),
            (&good.replacen(":c1:", "::", 1), "the cluster id is empty"),
            (&good.replacen(":0101", ":zz01", 1), "the secret must be 64 hex digits"),
            (&good.replacen(":sha256:", ":md5:", 1), "the CA pin must be sha256:"),
        ];
        for (text, expected) in cases {
            let error = JoinToken::parse(text).unwrap_err();
            assert!(error.contains(expected), "{text}: {error}");
            assert!(!error.contains("0101010101"), "{error}");
        }
    }
}
