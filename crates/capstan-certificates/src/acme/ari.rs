//! ACME Renewal Information (ARI, RFC 9773): a certificate's identifier, the window its server suggests renewing in
//! (read without an account: a plain GET of the directory's `renewalInfo` endpoint), how often to ask again, and the
//! time chosen in the window.

use std::time::Duration;

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use chrono::{DateTime, Utc};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::CertificateDer;
use serde::Deserialize;
use x509_parser::extensions::ParsedExtension;

use super::http::AcmeHttp;

/// How long an answer is used when the server says nothing of when to ask again (RFC 9773 §4.3.2: six hours).
pub const DEFAULT_POLL: Duration = Duration::from_secs(6 * 3600);
/// The most often a certificate's window is asked for, whatever the server's `Retry-After`.
pub const MIN_POLL: Duration = Duration::from_secs(60);
/// The least often: once a day.
pub const MAX_POLL: Duration = Duration::from_secs(24 * 3600);

/// A certificate's ARI identifier (RFC 9773 §4.1): its Authority Key Identifier's keyIdentifier and its serial
/// number as encoded, each base64url without padding, joined by a dot. From the first certificate of `chain_pem`.
pub fn certificate_id(chain_pem: &[u8]) -> Result<String, String> {
    let der = CertificateDer::pem_slice_iter(chain_pem)
        .next()
        .and_then(Result::ok)
        .ok_or_else(|| "no PEM certificate".to_string())?;
    let (_, cert) =
        x509_parser::parse_x509_certificate(&der).map_err(|_| "not a valid X.509 certificate".to_string())?;
    let aki = cert
        .iter_extensions()
        .find_map(|e| match e.parsed_extension() {
            ParsedExtension::AuthorityKeyIdentifier(a) => a.key_identifier.as_ref().map(|k| k.0.to_vec()),
            _ => None,
        })
        .ok_or_else(|| "the certificate has no Authority Key Identifier".to_string())?;
    let serial = cert.tbs_certificate.raw_serial();
    Ok(format!("{}.{}", URL_SAFE_NO_PAD.encode(aki), URL_SAFE_NO_PAD.encode(serial)))
}

/// What the server suggests for one certificate.
#[derive(Debug, Clone, PartialEq)]
pub struct RenewalInfo {
    pub start: DateTime<Utc>,
    pub end: DateTime<Utc>,
    /// A page saying why the window is what it is (a revocation, an incident).
    pub explanation: Option<String>,
    /// When to ask again: the server's `Retry-After`, kept between [`MIN_POLL`] and [`MAX_POLL`].
    pub next_poll: Duration,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct Answer {
    suggested_window: Window,
    #[serde(default, rename = "explanationURL")]
    explanation_url: Option<String>,
}

#[derive(Deserialize)]
struct Window {
    start: DateTime<Utc>,
    end: DateTime<Utc>,
}

/// The `renewalInfo` endpoint of the directory at `directory_url`, if the server offers ARI.
pub async fn endpoint(http: &AcmeHttp, directory_url: &str) -> Result<Option<String>, String> {
    let (status, _, body) = http.get(directory_url).await?;
    if status != 200 {
        return Err(format!("{directory_url} answered {status}"));
    }
    let directory: serde_json::Value =
        serde_json::from_slice(&body).map_err(|e| format!("{directory_url} is not an ACME directory: {e}"))?;
    Ok(directory["renewalInfo"].as_str().map(|s| s.trim_end_matches('/').to_string()))
}

/// The suggested window for the certificate `id`, from the server's `renewalInfo` endpoint.
pub async fn fetch(http: &AcmeHttp, endpoint: &str, id: &str) -> Result<RenewalInfo, String> {
    let url = format!("{endpoint}/{id}");
    let (status, headers, body) = http.get(&url).await?;
    if status != 200 {
        return Err(format!("{url} answered {status}: {}", String::from_utf8_lossy(&body[..body.len().min(200)])));
    }
    let answer: Answer =
        serde_json::from_slice(&body).map_err(|e| format!("{url}: not a renewal information answer: {e}"))?;
    if answer.suggested_window.end <= answer.suggested_window.start {
        return Err(format!("{url}: the suggested window ends before it starts"));
    }
    let retry = headers.get(::http::header::RETRY_AFTER).and_then(|v| v.to_str().ok()).and_then(super::http::retry_at);
    Ok(RenewalInfo {
        start: answer.suggested_window.start,
        end: answer.suggested_window.end,
        explanation: answer.explanation_url,
        next_poll: poll_interval(retry.and_then(|t| t.duration_since(std::time::SystemTime::now()).ok())),
    })
}

/// When to ask again after an answer that said `retry_after` (none: the default), within the limits.
pub fn poll_interval(retry_after: Option<Duration>) -> Duration {
    retry_after.unwrap_or(DEFAULT_POLL).clamp(MIN_POLL, MAX_POLL)
}

/// The time to renew at in the window (RFC 9773 §4.2): a uniformly random point of it, `fraction` (0 to 1) of the way
/// through; now when that is already past.
pub fn choose(info: &RenewalInfo, fraction: f64, now: DateTime<Utc>) -> DateTime<Utc> {
    let span = (info.end - info.start).num_milliseconds().max(0) as f64;
    let at = info.start + chrono::Duration::milliseconds((span * fraction.clamp(0.0, 1.0)) as i64);
    at.max(now)
}

/// A uniformly random fraction from 0 to 1, for [`choose`].
pub fn random_fraction() -> f64 {
    let mut bytes = [0u8; 8];
    // A failed draw takes the middle of the window.
    if ring::rand::SecureRandom::fill(&ring::rand::SystemRandom::new(), &mut bytes).is_err() {
        return 0.5;
    }
    (u64::from_le_bytes(bytes) >> 11) as f64 / (1u64 << 53) as f64
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_identifier_is_the_authority_key_id_and_the_serial_as_encoded() {
        // RFC 9773 §4.1's example: keyIdentifier 69:88:5B:6B:87:46:40:41:E1:B3:7B:84:7B:A0:AE:2C:DE:01:C8:D4 and
        // serial 00:87:65:43:21 give aYhba4dGQEHhs3uEe6CuLN4ByNQ.AIdlQyE.
        let ca_key = rcgen::KeyPair::generate().expect("key");
        let mut ca = rcgen::CertificateParams::new(Vec::<String>::new()).expect("params");
        ca.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        ca.key_identifier_method = rcgen::KeyIdMethod::PreSpecified(vec![
            0x69, 0x88, 0x5B, 0x6B, 0x87, 0x46, 0x40, 0x41, 0xE1, 0xB3, 0x7B, 0x84, 0x7B, 0xA0, 0xAE, 0x2C, 0xDE, 0x01,
            0xC8, 0xD4,
        ]);
        let issuer = rcgen::Issuer::new(ca, ca_key);
        let mut leaf = rcgen::CertificateParams::new(vec!["a.example".to_string()]).expect("params");
        leaf.serial_number = Some(rcgen::SerialNumber::from_slice(&[0x00, 0x87, 0x65, 0x43, 0x21]));
        leaf.use_authority_key_identifier_extension = true;
        let key = rcgen::KeyPair::generate().expect("key");
        let cert = leaf.signed_by(&key, &issuer).expect("signed");
        assert_eq!(certificate_id(cert.pem().as_bytes()).expect("an id"), "aYhba4dGQEHhs3uEe6CuLN4ByNQ.AIdlQyE");

        // Without the extension there is no identifier, and the reason is given.
        let plain = rcgen::CertificateParams::new(vec!["b.example".to_string()]).expect("params");
        let own = plain.self_signed(&rcgen::KeyPair::generate().expect("key")).expect("signed");
        assert!(certificate_id(own.pem().as_bytes()).expect_err("none").contains("Authority Key Identifier"));
        assert!(certificate_id(b"junk").is_err());
    }

    #[test]
    fn the_time_is_chosen_in_the_window_and_the_polls_are_bounded() {
        let now = DateTime::parse_from_rfc3339("2026-12-07T12:00:00Z").expect("time").with_timezone(&Utc);
        let info = RenewalInfo {
            start: now + chrono::Duration::hours(10),
            end: now + chrono::Duration::hours(12),
            explanation: None,
            next_poll: DEFAULT_POLL,
        };
        assert_eq!(choose(&info, 0.0, now), info.start);
        assert_eq!(choose(&info, 1.0, now), info.end);
        assert_eq!(choose(&info, 0.5, now), now + chrono::Duration::hours(11));
        assert_eq!(choose(&info, 7.0, now), info.end, "a fraction past 1 stays in the window");
        // A window already past (a revocation coming): at once.
        let past =
            RenewalInfo { start: now - chrono::Duration::hours(2), end: now - chrono::Duration::hours(1), ..info };
        assert_eq!(choose(&past, 0.3, now), now);
        for _ in 0..100 {
            let f = random_fraction();
            assert!((0.0..1.0).contains(&f), "{f}");
        }
        assert_eq!(poll_interval(None), DEFAULT_POLL);
        assert_eq!(poll_interval(Some(Duration::from_secs(1))), MIN_POLL, "a server cannot make us ask every second");
        assert_eq!(poll_interval(Some(Duration::from_secs(7 * 24 * 3600))), MAX_POLL, "nor once a week");
        assert_eq!(poll_interval(Some(Duration::from_secs(3600))), Duration::from_secs(3600));
    }
}
