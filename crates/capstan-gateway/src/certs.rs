//! What a served certificate says of itself — when it is valid and which names it covers — checked against the
//! listener that would serve it, so that status says what a client would refuse before one does.

use chrono::{DateTime, Utc};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::CertificateDer;
use x509_parser::extensions::GeneralName;

/// The facts of a chain's first (leaf) certificate that decide whether clients take it.
#[derive(Debug, Clone, PartialEq)]
pub struct Facts {
    pub not_before: DateTime<Utc>,
    pub not_after: DateTime<Utc>,
    /// Its DNS names (subjectAltName), lower-cased; the subject's common name is not one (clients ignore it).
    pub names: Vec<String>,
}

/// Reads the leaf certificate of `chain_pem`.
pub fn facts(chain_pem: &[u8]) -> Result<Facts, String> {
    let der = CertificateDer::pem_slice_iter(chain_pem)
        .next()
        .and_then(Result::ok)
        .ok_or_else(|| "tls.crt holds no PEM certificate".to_string())?;
    facts_der(&der)
}

/// Reads one DER certificate.
pub fn facts_der(der: &[u8]) -> Result<Facts, String> {
    let (_, cert) = x509_parser::parse_x509_certificate(der)
        .map_err(|_| "tls.crt's first certificate is not a valid X.509 certificate".to_string())?;
    let time = |t: x509_parser::time::ASN1Time| DateTime::from_timestamp(t.timestamp(), 0).unwrap_or_default();
    let validity = cert.validity();
    let names = match cert.subject_alternative_name() {
        Ok(Some(san)) => san
            .value
            .general_names
            .iter()
            .filter_map(|n| match n {
                GeneralName::DNSName(d) => Some(d.to_ascii_lowercase()),
                _ => None,
            })
            .collect(),
        _ => Vec::new(),
    };
    Ok(Facts { not_before: time(validity.not_before), not_after: time(validity.not_after), names })
}

/// Whether `name` (a certificate's DNS name, maybe `*.` wildcard) covers `host` (a listener's hostname, maybe a
/// wildcard itself): a wildcard name covers one label, and a wildcard listener only the same wildcard.
fn covers(name: &str, host: &str) -> bool {
    if name == host {
        return true;
    }
    match (name.strip_prefix("*."), host.starts_with("*.")) {
        (Some(suffix), false) => host.split_once('.').is_some_and(|(first, rest)| !first.is_empty() && rest == suffix),
        _ => false,
    }
}

/// What is wrong with a certificate for a listener with `hostname` at `now`, if anything.
pub fn check(f: &Facts, hostname: Option<&str>, now: DateTime<Utc>) -> Result<(), String> {
    let at = |t: DateTime<Utc>| t.to_rfc3339_opts(chrono::SecondsFormat::Secs, true);
    if now < f.not_before {
        return Err(format!("the certificate in tls.crt is not valid before {}", at(f.not_before)));
    }
    if now > f.not_after {
        return Err(format!("the certificate in tls.crt expired at {}", at(f.not_after)));
    }
    if let Some(host) = hostname {
        let host = host.to_ascii_lowercase();
        if !f.names.iter().any(|n| covers(n, &host)) {
            let names = if f.names.is_empty() { "no DNS name".to_string() } else { f.names.join(", ") };
            return Err(format!("the certificate in tls.crt names {names}, not the listener's hostname {host}"));
        }
    }
    Ok(())
}

/// When the answer of [`check`] changes next on its own: the certificate becomes valid, or expires.
pub fn next_change(f: &Facts, now: DateTime<Utc>) -> Option<DateTime<Utc>> {
    [f.not_before, f.not_after + chrono::Duration::seconds(1)].into_iter().filter(|t| *t > now).min()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A self-signed certificate for `names`, valid from day `from` to day `until` of December 2026.
    fn cert(names: &[&str], from: u8, until: u8) -> String {
        let key = rcgen::KeyPair::generate().expect("a key");
        let mut params =
            rcgen::CertificateParams::new(names.iter().map(|n| n.to_string()).collect::<Vec<_>>()).expect("names");
        params.not_before = rcgen::date_time_ymd(2026, 12, from);
        params.not_after = rcgen::date_time_ymd(2026, 12, until);
        params.self_signed(&key).expect("signed").pem()
    }

    fn day(d: u32) -> DateTime<Utc> {
        chrono::NaiveDate::from_ymd_opt(2026, 12, d).unwrap().and_hms_opt(0, 0, 0).unwrap().and_utc()
    }

    #[test]
    fn validity_and_names_are_read_and_checked() {
        let pem = cert(&["shop.example.com", "*.Example.org"], 1, 20);
        let f = facts(pem.as_bytes()).expect("facts");
        assert_eq!((f.not_before, f.not_after), (day(1), day(20)));
        assert_eq!(f.names, ["shop.example.com", "*.example.org"]);
        assert_eq!(check(&f, Some("shop.example.com"), day(7)), Ok(()));
        assert_eq!(check(&f, Some("api.example.org"), day(7)), Ok(()));
        assert_eq!(check(&f, Some("*.example.org"), day(7)), Ok(()));
        assert_eq!(check(&f, None, day(7)), Ok(()));
        let wrong = check(&f, Some("a.b.example.org"), day(7)).unwrap_err();
        assert!(wrong.contains("names shop.example.com, *.example.org, not the listener's hostname a.b.example.org"));
        assert!(check(&f, Some("*.example.com"), day(7)).unwrap_err().contains("not the listener's hostname"));
        assert!(check(&f, Some("example.org"), day(7)).is_err(), "a wildcard does not cover its parent");
        let early = check(&f, None, day(1) - chrono::Duration::seconds(1)).unwrap_err();
        assert_eq!(early, "the certificate in tls.crt is not valid before 2026-12-01T00:00:00Z");
        let late = check(&f, None, day(21)).unwrap_err();
        assert_eq!(late, "the certificate in tls.crt expired at 2026-12-20T00:00:00Z");
        assert_eq!(next_change(&f, day(1) - chrono::Duration::hours(1)), Some(day(1)));
        assert_eq!(next_change(&f, day(7)), Some(day(20) + chrono::Duration::seconds(1)));
        assert_eq!(next_change(&f, day(21)), None);
    }

    #[test]
    fn what_is_not_a_certificate_is_named() {
        assert_eq!(facts(b"no pem here"), Err("tls.crt holds no PEM certificate".into()));
        let garbage = "-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n";
        assert!(facts(garbage.as_bytes()).unwrap_err().contains("not a valid X.509 certificate"));
    }
}
