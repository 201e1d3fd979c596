//! `tollgate-hub certs`: a CA and hub / spoke / admin certificates for a quick start, and reading the identity a
//! client certificate carries.
//!
//! Identities are URI SANs: `tollgate://cluster/<cluster-id>` for a spoke, `tollgate://admin/<name>` for the
//! CLI. The hub trusts only certificates signed by its CA, and reads the role from the SAN.

use std::net::IpAddr;
use std::path::{Path, PathBuf};

use anyhow::{Context, bail};
use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
    KeyUsagePurpose, SanType,
};

pub const CLUSTER_PREFIX: &str = "tollgate://cluster/";
const ADMIN_PREFIX: &str = "tollgate://admin/";
/// Leaf certificates issued by `certs hub|spoke|admin`.
const VALID_DAYS: i64 = 365;
/// The CA of `certs init`: long enough that its expiry is a planned event, not a fleet-wide outage a year in.
pub const CA_VALID_DAYS: i64 = 3650;

/// Who a client certificate says it is.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum PeerIdentity {
    /// A spoke of this cluster id.
    Cluster(String),
    /// An administrator (the CLI).
    Admin(String),
}

/// A client certificate as the hub reads it: whom it names, and when it is valid.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PeerCertificate {
    pub identity: PeerIdentity,
    /// Milliseconds since the Unix epoch.
    pub not_before_unix_millis: i64,
    pub not_after_unix_millis: i64,
}

/// The identity in a DER certificate's URI SANs; `None` when it carries no Tollgate identity.
pub fn peer_identity(der: &[u8]) -> Option<PeerIdentity> {
    peer_certificate(der).map(|c| c.identity)
}

/// The identity and validity of a DER certificate; `None` when it carries no Tollgate identity.
pub fn peer_certificate(der: &[u8]) -> Option<PeerCertificate> {
    let (_, cert) = x509_parser::parse_x509_certificate(der).ok()?;
    let sans = cert.subject_alternative_name().ok()??;
    let identity = sans.value.general_names.iter().find_map(|name| match name {
        x509_parser::extensions::GeneralName::URI(uri) => {
            if let Some(id) = uri.strip_prefix(CLUSTER_PREFIX) {
                Some(PeerIdentity::Cluster(id.to_string()))
            } else {
                uri.strip_prefix(ADMIN_PREFIX)
                    .map(|name| PeerIdentity::Admin(name.to_string()))
            }
        }
        _ => None,
    })?;
    let validity = cert.validity();
    Some(PeerCertificate {
        identity,
        not_before_unix_millis: validity.not_before.timestamp().saturating_mul(1000),
        not_after_unix_millis: validity.not_after.timestamp().saturating_mul(1000),
    })
}

/// The modification times of `paths` (`None` for a file that cannot be read): what the hub compares, once a second,
/// to reload the certificate files that changed.
pub fn modification_times<'a>(paths: impl IntoIterator<Item = &'a Path>) -> Vec<Option<std::time::SystemTime>> {
    paths
        .into_iter()
        .map(|path| std::fs::metadata(path).and_then(|m| m.modified()).ok())
        .collect()
}

/// Files of a CA folder.
#[derive(Debug)]
pub struct CaFiles {
    pub cert: PathBuf,
    pub key: PathBuf,
}

impl CaFiles {
    pub fn in_dir(dir: &Path) -> Self {
        Self {
            cert: dir.join("ca.pem"),
            key: dir.join("ca-key.pem"),
        }
    }
}

fn ca_validity(params: &mut CertificateParams) {
    let now = time::OffsetDateTime::now_utc();
    params.not_before = now - time::Duration::minutes(5);
    params.not_after = now + time::Duration::days(CA_VALID_DAYS);
}

fn write_private(path: &Path, contents: &str) -> anyhow::Result<()> {
    use std::io::Write;
    #[cfg(unix)]
    use std::os::unix::fs::OpenOptionsExt;
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create(true).truncate(true);
    #[cfg(unix)]
    options.mode(0o600);
    let mut file = options
        .open(path)
        .with_context(|| format!("writing {}", path.display()))?;
    file.write_all(contents.as_bytes())
        .with_context(|| format!("writing {}", path.display()))
}

/// Creates a CA in `dir` (refuses to overwrite one).
pub fn init_ca(dir: &Path) -> anyhow::Result<CaFiles> {
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    let files = CaFiles::in_dir(dir);
    if files.cert.exists() || files.key.exists() {
        bail!(
            "{} already holds a CA: remove it first to create a new one",
            dir.display()
        );
    }
    let key = KeyPair::generate().context("generating the CA key")?;
    let mut params = CertificateParams::default();
    params.distinguished_name = DistinguishedName::new();
    params.distinguished_name.push(DnType::CommonName, "Tollgate CA");
    params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    params.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    ca_validity(&mut params);
    let cert = params.self_signed(&key).context("signing the CA certificate")?;
    std::fs::write(&files.cert, cert.pem()).with_context(|| format!("writing {}", files.cert.display()))?;
    write_private(&files.key, &key.serialize_pem())?;
    Ok(files)
}

/// What a leaf certificate is for.
#[derive(Clone, Debug)]
pub enum Leaf {
    /// The hub's server certificate, for these DNS names and addresses.
    Hub {
        dns_names: Vec<String>,
        addresses: Vec<IpAddr>,
    },
    Spoke {
        cluster_id: String,
    },
    Admin {
        name: String,
    },
}

impl Leaf {
    fn file_stem(&self) -> String {
        match self {
            Self::Hub { .. } => "hub".to_string(),
            Self::Spoke { cluster_id } => format!("spoke-{cluster_id}"),
            Self::Admin { name } => format!("admin-{name}"),
        }
    }
}

/// Issues a leaf certificate signed by the CA in `ca_dir`, written to `out_dir/<stem>.pem` and
/// `<stem>-key.pem`, valid from five minutes ago (clock skew) for a year. Returns both paths.
pub fn issue(ca_dir: &Path, out_dir: &Path, leaf: &Leaf) -> anyhow::Result<(PathBuf, PathBuf)> {
    let now = time::OffsetDateTime::now_utc();
    issue_valid(
        ca_dir,
        out_dir,
        leaf,
        now - time::Duration::minutes(5),
        now + time::Duration::days(VALID_DAYS),
    )
}

/// [`issue`] with the validity given.
pub fn issue_valid(
    ca_dir: &Path,
    out_dir: &Path,
    leaf: &Leaf,
    not_before: time::OffsetDateTime,
    not_after: time::OffsetDateTime,
) -> anyhow::Result<(PathBuf, PathBuf)> {
    let ca = CaFiles::in_dir(ca_dir);
    let ca_cert = std::fs::read_to_string(&ca.cert).with_context(|| {
        format!(
            "reading {} (create a CA with `tollgate-hub certs init`)",
            ca.cert.display()
        )
    })?;
    let ca_key = std::fs::read_to_string(&ca.key).with_context(|| format!("reading {}", ca.key.display()))?;
    let ca_key = KeyPair::from_pem(&ca_key).with_context(|| format!("parsing {}", ca.key.display()))?;
    let issuer =
        Issuer::from_ca_cert_pem(&ca_cert, ca_key).with_context(|| format!("parsing {}", ca.cert.display()))?;

    let mut params = CertificateParams::default();
    params.distinguished_name = DistinguishedName::new();
    params.key_usages = vec![KeyUsagePurpose::DigitalSignature, KeyUsagePurpose::KeyEncipherment];
    params.not_before = not_before;
    params.not_after = not_after;
    match leaf {
        Leaf::Hub { dns_names, addresses } => {
            params.distinguished_name.push(DnType::CommonName, "tollgate-hub");
            params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
            for name in dns_names {
                params.subject_alt_names.push(SanType::DnsName(
                    name.clone()
                        .try_into()
                        .with_context(|| format!("invalid DNS name {name:?}"))?,
                ));
            }
            params
                .subject_alt_names
                .extend(addresses.iter().copied().map(SanType::IpAddress));
        }
        Leaf::Spoke { cluster_id } => {
            check_id(cluster_id, "cluster id")?;
            params
                .distinguished_name
                .push(DnType::CommonName, format!("tollgate-spoke {cluster_id}"));
            params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
            params
                .subject_alt_names
                .push(SanType::URI(format!("{CLUSTER_PREFIX}{cluster_id}").try_into()?));
        }
        Leaf::Admin { name } => {
            check_id(name, "admin name")?;
            params
                .distinguished_name
                .push(DnType::CommonName, format!("tollgate-admin {name}"));
            params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
            params
                .subject_alt_names
                .push(SanType::URI(format!("{ADMIN_PREFIX}{name}").try_into()?));
        }
    }
    let key = KeyPair::generate().context("generating a key")?;
    let cert = params.signed_by(&key, &issuer).context("signing the certificate")?;
    std::fs::create_dir_all(out_dir).with_context(|| format!("creating {}", out_dir.display()))?;
    let stem = leaf.file_stem();
    let cert_path = out_dir.join(format!("{stem}.pem"));
    let key_path = out_dir.join(format!("{stem}-key.pem"));
    std::fs::write(&cert_path, cert.pem()).with_context(|| format!("writing {}", cert_path.display()))?;
    write_private(&key_path, &key.serialize_pem())?;
    Ok((cert_path, key_path))
}

/// Cluster ids and admin names: lowercase letters, digits, '-', '.', at most 63 characters.
pub fn check_id(id: &str, what: &str) -> anyhow::Result<()> {
    let ok = !id.is_empty()
        && id.len() <= 63
        && id
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-' || c == '.')
        && id.chars().next().is_some_and(|c| c.is_ascii_alphanumeric())
        && id.chars().last().is_some_and(|c| c.is_ascii_alphanumeric());
    if !ok {
        bail!("invalid {what} {id:?}: lowercase letters, digits, '-' and '.', at most 63 characters");
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn der_of(path: &Path) -> Vec<u8> {
        let pem = std::fs::read_to_string(path).unwrap();
        let (_, pem) = x509_parser::pem::parse_x509_pem(pem.as_bytes()).unwrap();
        pem.contents
    }

    #[test]
    fn issues_certificates_with_their_identity() {
        let dir = tempfile::tempdir().unwrap();
        init_ca(dir.path()).unwrap();
        assert!(
            init_ca(dir.path())
                .unwrap_err()
                .to_string()
                .contains("already holds a CA")
        );
        let (spoke, spoke_key) = issue(
            dir.path(),
            dir.path(),
            &Leaf::Spoke {
                cluster_id: "prod-eu-1".into(),
            },
        )
        .unwrap();
        assert_eq!(
            peer_identity(&der_of(&spoke)),
            Some(PeerIdentity::Cluster("prod-eu-1".into()))
        );
        let spoke_certificate = peer_certificate(&der_of(&spoke)).unwrap();
        let now = time::OffsetDateTime::now_utc().unix_timestamp() * 1000;
        assert!(spoke_certificate.not_before_unix_millis <= now);
        let days = (spoke_certificate.not_after_unix_millis - now) / 86_400_000;
        assert!((364..=365).contains(&days), "{days} days");
        let ca = peer_or_ca_validity_days(&der_of(&dir.path().join("ca.pem")), now);
        assert!((3649..=3650).contains(&ca), "the CA lives ten years, not {ca} days");
        let (admin, _) = issue(dir.path(), dir.path(), &Leaf::Admin { name: "alice".into() }).unwrap();
        assert_eq!(
            peer_identity(&der_of(&admin)),
            Some(PeerIdentity::Admin("alice".into()))
        );
        let (hub, _) = issue(
            dir.path(),
            dir.path(),
            &Leaf::Hub {
                dns_names: vec!["localhost".into()],
                addresses: vec!["127.0.0.1".parse().unwrap()],
            },
        )
        .unwrap();
        assert_eq!(peer_identity(&der_of(&hub)), None);
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = std::fs::metadata(&spoke_key).unwrap().permissions().mode();
            assert_eq!(mode & 0o777, 0o600);
        }
        let err = issue(
            dir.path(),
            dir.path(),
            &Leaf::Spoke {
                cluster_id: "Bad_ID".into(),
            },
        )
        .unwrap_err();
        assert!(err.to_string().contains("invalid cluster id"), "{err}");
    }

    fn peer_or_ca_validity_days(der: &[u8], now_unix_millis: i64) -> i64 {
        let (_, cert) = x509_parser::parse_x509_certificate(der).unwrap();
        (cert.validity().not_after.timestamp() * 1000 - now_unix_millis) / 86_400_000
    }

    #[test]
    fn a_missing_ca_says_how_to_make_one() {
        let dir = tempfile::tempdir().unwrap();
        let err = issue(dir.path(), dir.path(), &Leaf::Admin { name: "a".into() }).unwrap_err();
        assert!(format!("{err:#}").contains("tollgate-hub certs init"), "{err:#}");
    }
}
