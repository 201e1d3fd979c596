//! TLS 1.3 session tickets sealed with a secret that outlives the process: a spoke that reconnects after the hub
//! restarted (or to another replica holding the same secret) resumes its session instead of a full handshake, which
//! spares both sides the certificate signatures and their verification — what a fleet's reconnect storm costs.
//!
//! A ticket carries the client's certificate chain from the handshake that issued it, which rustls does not verify
//! again: the listener verifies a resumed session's chain against the client CA served now, and every stream checks
//! the caller's certificate, registration and removal as after a full handshake. Tickets are also bound to the
//! client CA: after a rotation, no ticket from before it opens.
//!
//! The secret is as sensitive as the hub's key and the client CA's key together: whoever holds it can open a ticket
//! a client offers (in the clear) and answer as the hub, or seal a ticket naming any client certificate.

use std::io::Write;
use std::path::Path;
use std::time::Duration;

use anyhow::{Context, bail};
use ring::aead::{AES_256_GCM, Aad, LessSafeKey, NONCE_LEN, Nonce, UnboundKey};
use ring::hkdf;

/// How long a ticket resumes a session: the longest TLS 1.3 allows.
pub const LIFETIME: Duration = Duration::from_secs(7 * 24 * 60 * 60);

/// A ticket issued this far in the future (another replica's clock) is still accepted.
const CLOCK_SKEW_SECS: u64 = 300;

/// The ticket format: version, issue time (seconds since the Unix epoch, big-endian), nonce, then the sealed state.
const VERSION: u8 = 1;
const HEADER: usize = 1 + 8 + NONCE_LEN;

/// The least secret accepted, in bytes.
const MIN_SECRET: usize = 32;

/// The key derivation's label: a key for tickets of this format, never reused for anything else.
const LABEL: &[u8] = b"tollgate-hub TLS session tickets v1";

/// The secret tickets are sealed with.
pub struct TicketSecret(Vec<u8>);

impl std::fmt::Debug for TicketSecret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("TicketSecret(..)")
    }
}

impl TicketSecret {
    /// A secret of this process only: tickets resume sessions until it ends.
    pub fn random() -> anyhow::Result<Self> {
        let mut secret = vec![0; MIN_SECRET];
        getrandom::fill(&mut secret).map_err(|e| anyhow::anyhow!("no randomness for the ticket secret: {e}"))?;
        Ok(Self(secret))
    }

    /// The secret in `path`, made there (readable by the hub's user alone) when the file does not exist.
    pub fn load_or_create(path: &Path) -> anyhow::Result<Self> {
        match std::fs::read(path) {
            // Not checked: a mounted Secret's mode says nothing (the pod has one user); who may read the Secret does.
            Ok(content) => Self::parse(path, &content),
            Err(error) if error.kind() == std::io::ErrorKind::NotFound => Self::create(path),
            Err(error) => Err(error).with_context(|| format!("reading {}", path.display())),
        }
    }

    /// Writes a new secret to a draft file of its own, then links it in place, so that `path` is never seen
    /// partly written; where the file system has no hard links, the file is created in place. Whichever process
    /// made the file first, its content is the secret (read back).
    fn create(path: &Path) -> anyhow::Result<Self> {
        use std::os::unix::fs::OpenOptionsExt;
        let mut random = [0u8; MIN_SECRET + 8];
        getrandom::fill(&mut random).map_err(|e| anyhow::anyhow!("no randomness for the ticket secret: {e}"))?;
        let (secret, suffix) = random.split_at(MIN_SECRET);
        let text: String = secret.iter().map(|b| format!("{b:02x}")).collect();
        let write = |file: &Path| {
            std::fs::OpenOptions::new()
                .write(true)
                .create_new(true)
                .mode(0o600)
                .open(file)
                .and_then(|mut file| {
                    file.write_all(format!("{text}\n").as_bytes())?;
                    file.sync_all()
                })
        };
        // Replicas sharing a volume may all be process 1: the draft's name is random.
        let mut name = path.file_name().unwrap_or_default().to_os_string();
        name.push(format!(
            ".{}.new",
            suffix.iter().map(|b| format!("{b:02x}")).collect::<String>()
        ));
        let draft = path.with_file_name(name);
        write(&draft).with_context(|| format!("writing the session ticket secret to {}", draft.display()))?;
        let linked = std::fs::hard_link(&draft, path);
        let _ = std::fs::remove_file(&draft);
        let made = match linked {
            Err(error) if error.kind() != std::io::ErrorKind::AlreadyExists => {
                tracing::debug!(%error, "No hard link for the ticket secret: writing it in place");
                write(path)
            }
            other => other,
        };
        match made {
            Ok(()) => tracing::info!(path = %path.display(), "Created the TLS session ticket secret"),
            // Another replica made it first: theirs is the one.
            Err(error) if error.kind() == std::io::ErrorKind::AlreadyExists => {}
            Err(error) => {
                return Err(error).with_context(|| format!("creating the session ticket secret {}", path.display()));
            }
        }
        let content = std::fs::read(path).with_context(|| format!("reading {}", path.display()))?;
        Self::parse(path, &content)
    }

    /// Hex or base64 of at least [`MIN_SECRET`] bytes (surrounding white space aside).
    fn parse(path: &Path, content: &[u8]) -> anyhow::Result<Self> {
        use base64::Engine;
        let text = content.trim_ascii();
        let decoded = if text.len().is_multiple_of(2) && text.iter().all(u8::is_ascii_hexdigit) {
            text.chunks(2)
                .map(|pair| u8::from_str_radix(std::str::from_utf8(pair).unwrap_or_default(), 16).ok())
                .collect::<Option<Vec<u8>>>()
        } else {
            base64::engine::general_purpose::STANDARD.decode(text).ok()
        };
        let found = match decoded {
            Some(secret) if secret.len() >= MIN_SECRET => return Ok(Self(secret)),
            Some(secret) => format!("{} bytes", secret.len()),
            None => "neither hex nor base64".to_string(),
        };
        bail!(
            "--session-ticket-key {}: {found}; at least {MIN_SECRET} random bytes are needed, in hex or base64 (for \
             example `head -c 32 /dev/urandom | base64`)",
            path.display()
        )
    }

    /// The key of tickets accepted while `client_ca` (the CA file's bytes) is the client CA.
    pub fn key(&self, client_ca: &[u8]) -> TicketKey {
        let salt = hkdf::Salt::new(hkdf::HKDF_SHA256, LABEL);
        let ca = ring::digest::digest(&ring::digest::SHA256, client_ca);
        let info = [ca.as_ref()];
        let key = salt
            .extract(&self.0)
            .expand(&info, &AES_256_GCM)
            .map(UnboundKey::from)
            .expect("an AES-256 key is within HKDF-SHA256's output limit");
        TicketKey(LessSafeKey::new(key))
    }
}

/// Where the ticket secret comes from, and the last one read.
#[derive(Debug)]
pub struct TicketSource {
    /// Read again whenever the hub's TLS files are: a rotated secret seals new tickets, and sessions sealed with
    /// the old one end with a full handshake. `None`: a secret of this process.
    file: Option<std::path::PathBuf>,
    current: std::sync::Mutex<std::sync::Arc<TicketSecret>>,
}

impl TicketSource {
    /// The secret in `path` (made when absent); an unusable file stops the hub from starting.
    pub fn file(path: &Path) -> anyhow::Result<Self> {
        Ok(Self {
            file: Some(path.to_path_buf()),
            current: std::sync::Mutex::new(std::sync::Arc::new(TicketSecret::load_or_create(path)?)),
        })
    }

    /// A secret of this process only.
    pub fn process() -> anyhow::Result<Self> {
        Ok(Self {
            file: None,
            current: std::sync::Mutex::new(std::sync::Arc::new(TicketSecret::random()?)),
        })
    }

    pub fn path(&self) -> Option<&Path> {
        self.file.as_deref()
    }

    /// The key of tickets accepted while `client_ca` (the CA file's bytes) is the client CA, with the secret read
    /// again from its file. A file that cannot be used now keeps the last secret (logged), so that it never holds
    /// back a new certificate or client CA read at the same time.
    pub fn key(&self, client_ca: &[u8]) -> TicketKey {
        let mut current = self.current.lock().expect("ticket secret lock");
        if let Some(path) = &self.file {
            match TicketSecret::load_or_create(path) {
                Ok(secret) => *current = std::sync::Arc::new(secret),
                Err(error) => tracing::error!(
                    error = format!("{error:#}"),
                    "The TLS session ticket secret cannot be read again; tickets are sealed with the previous one"
                ),
            }
        }
        current.key(client_ca)
    }
}

/// Seals and opens tickets for one client CA.
pub struct TicketKey(LessSafeKey);

impl std::fmt::Debug for TicketKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("TicketKey(..)")
    }
}

impl TicketKey {
    /// `state` sealed into a ticket issued at `now` (seconds since the Unix epoch).
    pub fn seal(&self, state: &[u8], now: u64) -> Option<Vec<u8>> {
        let mut nonce = [0u8; NONCE_LEN];
        getrandom::fill(&mut nonce).ok()?;
        let mut ticket = Vec::with_capacity(HEADER + state.len() + AES_256_GCM.tag_len());
        ticket.push(VERSION);
        ticket.extend_from_slice(&now.to_be_bytes());
        ticket.extend_from_slice(&nonce);
        let mut sealed = state.to_vec();
        self.0
            .seal_in_place_append_tag(
                Nonce::assume_unique_for_key(nonce),
                Aad::from(&ticket[..1 + 8]),
                &mut sealed,
            )
            .ok()?;
        ticket.extend_from_slice(&sealed);
        Some(ticket)
    }

    /// The state in `ticket` if this key sealed it, unaltered, within [`LIFETIME`] before `now`.
    pub fn open(&self, ticket: &[u8], now: u64) -> Option<Vec<u8>> {
        if ticket.len() < HEADER + AES_256_GCM.tag_len() || ticket[0] != VERSION {
            return None;
        }
        let issued = u64::from_be_bytes(ticket[1..9].try_into().ok()?);
        if issued > now.saturating_add(CLOCK_SKEW_SECS) || now.saturating_sub(issued) > LIFETIME.as_secs() {
            return None;
        }
        let nonce = Nonce::try_assume_unique_for_key(&ticket[9..HEADER]).ok()?;
        let mut sealed = ticket[HEADER..].to_vec();
        let state = self.0.open_in_place(nonce, Aad::from(&ticket[..9]), &mut sealed).ok()?;
        Some(state.to_vec())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const NOW: u64 = 1_800_000_000;

    fn secret(byte: u8) -> TicketSecret {
        TicketSecret(vec![byte; 32])
    }

    #[test]
    fn a_ticket_opens_with_the_same_secret_and_client_ca_only() {
        let key = secret(1).key(b"ca one");
        let ticket = key.seal(b"session state", NOW).unwrap();
        assert!(
            !ticket.windows(13).any(|w| w == b"session state"),
            "the state is sealed"
        );
        assert_eq!(key.open(&ticket, NOW + 10).as_deref(), Some(&b"session state"[..]));
        // The same secret read again (a restarted hub, another replica) opens it.
        assert!(secret(1).key(b"ca one").open(&ticket, NOW).is_some());
        assert!(secret(2).key(b"ca one").open(&ticket, NOW).is_none(), "another secret");
        assert!(
            secret(1).key(b"ca two").open(&ticket, NOW).is_none(),
            "a rotated client CA"
        );
    }

    #[test]
    fn an_altered_old_or_future_ticket_does_not_open() {
        let key = secret(1).key(b"ca");
        let ticket = key.seal(b"state", NOW).unwrap();
        for at in [0, 1, 9, HEADER, ticket.len() - 1] {
            let mut altered = ticket.clone();
            altered[at] ^= 1;
            assert!(key.open(&altered, NOW).is_none(), "byte {at} altered");
        }
        assert!(key.open(&ticket[..ticket.len() - 1], NOW).is_none(), "truncated");
        assert!(key.open(&[], NOW).is_none());
        assert!(
            key.open(&ticket, NOW + LIFETIME.as_secs()).is_some(),
            "at the end of its lifetime"
        );
        assert!(
            key.open(&ticket, NOW + LIFETIME.as_secs() + 1).is_none(),
            "past its lifetime"
        );
        assert!(
            key.open(&ticket, NOW - CLOCK_SKEW_SECS).is_some(),
            "from a clock a little ahead"
        );
        assert!(
            key.open(&ticket, NOW - CLOCK_SKEW_SECS - 1).is_none(),
            "from the future"
        );
    }

    /// A secret file replaced by one that cannot be used keeps the last secret (so it never holds back a new
    /// certificate read at the same time); a usable new one rotates it.
    #[test]
    fn a_secret_file_that_cannot_be_used_any_more_keeps_the_last_secret() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("session-ticket.key");
        let source = TicketSource::file(&path).unwrap();
        let ticket = source.key(b"ca").seal(b"state", NOW).unwrap();
        std::fs::write(&path, "short\n").unwrap();
        assert!(source.key(b"ca").open(&ticket, NOW).is_some(), "the last secret");
        std::fs::write(&path, "cd".repeat(32)).unwrap();
        let rotated = source.key(b"ca");
        assert!(rotated.open(&ticket, NOW).is_none(), "a rotated secret");
        assert_eq!(
            rotated.open(&rotated.seal(b"state", NOW).unwrap(), NOW).as_deref(),
            Some(&b"state"[..])
        );
    }

    #[test]
    fn the_secret_file_is_made_once_readable_by_the_hub_alone_and_a_short_one_is_refused() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("session-ticket.key");
        let made = TicketSecret::load_or_create(&path).unwrap();
        let mode = std::fs::metadata(&path).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
        let again = TicketSecret::load_or_create(&path).unwrap();
        assert_eq!(made.0, again.0, "read back, not made again");
        let other = dir.path().join("other.key");
        assert_ne!(TicketSecret::load_or_create(&other).unwrap().0, made.0);

        assert_eq!(
            std::fs::read_dir(dir.path()).unwrap().count(),
            2,
            "no draft left behind"
        );

        let written = |name: &str, content: &str| {
            let path = dir.path().join(name);
            std::fs::write(&path, content).unwrap();
            TicketSecret::load_or_create(&path)
        };
        let hex = written("hex.key", &format!("{}\n", "ab".repeat(32))).unwrap();
        assert_eq!(hex.0, vec![0xab; 32]);
        let base64 = written("base64.key", "q6urq6urq6urq6urq6urq6urq6urq6urq6urq6urq6s=\n").unwrap();
        assert_eq!(base64.0, vec![0xab; 32]);
        for (content, reason) in [
            ("too short\n".to_string(), "neither hex nor base64"),
            ("a 32-character passphrase here!!".to_string(), "neither hex nor base64"),
            ("ab".repeat(31), "31 bytes"),
        ] {
            let error = written("bad.key", &content).unwrap_err().to_string();
            assert!(
                error.contains("--session-ticket-key") && error.contains(reason) && error.contains("at least 32"),
                "{content}: {error}"
            );
        }
    }
}
