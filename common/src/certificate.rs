//! Facts about PEM certificates that operators watch (expiry), parsed without I/O.

/// The end of the validity (`notAfter`) of the first certificate in `pem`, in Unix seconds; `None` when `pem` holds
/// no parsable certificate.
pub fn not_after_unix_seconds(pem: &[u8]) -> Option<i64> {
    validity_unix_seconds(pem).map(|(_, not_after)| not_after)
}

/// The validity (`notBefore`, `notAfter`) of the first certificate in `pem`, in Unix seconds.
pub fn validity_unix_seconds(pem: &[u8]) -> Option<(i64, i64)> {
    let (_, block) = x509_parser::pem::parse_x509_pem(pem).ok()?;
    let certificate = block.parse_x509().ok()?;
    let validity = certificate.validity();
    Some((validity.not_before.timestamp(), validity.not_after.timestamp()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn certificate_until(year: i32, month: u8, day: u8) -> String {
        let key = rcgen::KeyPair::generate().unwrap();
        let mut params = rcgen::CertificateParams::new(vec!["hub".to_string()]).unwrap();
        params.not_after = rcgen::date_time_ymd(year, month, day);
        params.self_signed(&key).unwrap().pem()
    }

    #[test]
    fn reads_the_end_of_validity_of_the_first_certificate() {
        let leaf = certificate_until(2031, 4, 5);
        // 2031-04-05T00:00:00Z
        assert_eq!(not_after_unix_seconds(leaf.as_bytes()), Some(1_933_113_600));
        let chain = format!("{leaf}{}", certificate_until(2040, 1, 1));
        assert_eq!(not_after_unix_seconds(chain.as_bytes()), Some(1_933_113_600));
        let (not_before, not_after) = validity_unix_seconds(leaf.as_bytes()).unwrap();
        assert_eq!(not_after, 1_933_113_600);
        // rcgen's default start of validity: 1975-01-01.
        assert_eq!(not_before, 157_766_400);
    }

    #[test]
    fn refuses_what_is_not_a_certificate() {
        assert_eq!(not_after_unix_seconds(b""), None);
        assert_eq!(
            not_after_unix_seconds(b"-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n"),
            None
        );
        assert_eq!(not_after_unix_seconds(b"not pem"), None);
    }
}
