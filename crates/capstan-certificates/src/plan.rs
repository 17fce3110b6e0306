//! The pure decision: given a Certificate, what its Secret holds now, and the time, issue (and why, in
//! cert-manager's reasons) or wait until the renewal time.

use std::time::Duration;

use capstan_model::certificate::{CertificateSpec, CertificateStatus, KeyAlgorithm};
use chrono::{DateTime, Utc};

/// What the Secret's certificate and key say of themselves.
#[derive(Debug, Clone, PartialEq)]
pub struct Current {
    pub not_before: DateTime<Utc>,
    pub not_after: DateTime<Utc>,
    pub common_name: Option<String>,
    pub dns_names: Vec<String>,
    pub ip_addresses: Vec<String>,
    pub uris: Vec<String>,
    pub email_addresses: Vec<String>,
    pub is_ca: bool,
    pub key_algorithm: KeyAlgorithm,
    /// Whether tls.key is the key of tls.crt.
    pub key_matches: bool,
    /// The issuer the Secret says signed it (`cert-manager.io/issuer-name`, `-kind`).
    pub issuer: Option<(String, String)>,
}

/// Why the Secret cannot be used as it is (its absence included).
#[derive(Debug, Clone, PartialEq)]
pub enum Unusable {
    /// No Secret of that name.
    Missing,
    /// `tls.crt` or `tls.key` absent.
    MissingData,
    /// They do not parse.
    Invalid(String),
}

#[derive(Debug, Clone, PartialEq)]
pub enum Decision {
    /// Issue now: cert-manager's reason for the `Issuing` condition, and a message.
    Issue { reason: &'static str, message: String },
    /// The last issuance failed: try again at this time.
    Backoff { until: DateTime<Utc> },
    /// Up to date: renew at this time.
    Keep { renewal_time: DateTime<Utc> },
}

/// The first wait after a failed issuance; it doubles with each failure in a row up to [`BACKOFF_MAX`]. Shorter
/// than cert-manager's hour: a local signer fails for configuration (a CA Secret missing), which is soon fixed, and
/// a fix to the Issuer or its Secret is tried at once whatever the wait.
pub const BACKOFF_BASE: Duration = Duration::from_secs(10);
pub const BACKOFF_MAX: Duration = Duration::from_secs(3600);

/// The wait after `failures` failed issuances in a row.
pub fn backoff(failures: u32) -> Duration {
    BACKOFF_BASE.saturating_mul(1u32 << failures.saturating_sub(1).min(16)).min(BACKOFF_MAX)
}

/// The shortest wait after an ACME server rejected an order (a failed validation, a refusal): Let's Encrypt allows
/// five failed validations of a name an hour, so the first retries are minutes apart, not seconds.
pub const REJECTED_BACKOFF_BASE: Duration = Duration::from_secs(5 * 60);

/// The wait after `failures` failed issuances in a row, the last rejected by an ACME server.
pub fn rejected_backoff(failures: u32) -> Duration {
    REJECTED_BACKOFF_BASE
        .saturating_mul(1u32 << failures.saturating_sub(1).min(16))
        .min(BACKOFF_MAX)
        .max(backoff(failures))
}

/// When a certificate valid from `not_before` to `not_after` is renewed.
pub fn renewal_time(spec: &CertificateSpec, not_before: DateTime<Utc>, not_after: DateTime<Utc>) -> DateTime<Utc> {
    let lifetime = (not_after - not_before).to_std().unwrap_or_default();
    let before = chrono::Duration::from_std(spec.renew_before(lifetime)).unwrap_or_default();
    not_after - before
}

/// The same addresses however written (`2001:DB8::1` is `2001:db8::1`).
fn same_ips(a: &[String], b: &[String]) -> bool {
    let parse = |v: &[String]| -> Vec<String> {
        v.iter().map(|s| s.parse::<std::net::IpAddr>().map_or_else(|_| s.clone(), |ip| ip.to_string())).collect()
    };
    same(parse(a), &parse(b))
}

fn same(mut a: Vec<String>, b: &[String]) -> bool {
    let mut b = b.to_vec();
    a.sort();
    b.sort();
    a.dedup();
    b.dedup();
    a == b
}

/// The decision for `spec` in namespace-local issuer `issuer_name`, with `current` what the Secret holds,
/// `status` the last one written (`retry`: whether a failure's backoff still applies — not after a change of
/// spec, issuer or CA), `manual` a renewal asked for (`capstan certificate renew`).
pub fn decide(
    spec: &CertificateSpec,
    current: &Result<Current, Unusable>,
    status: &CertificateStatus,
    retry: bool,
    manual: bool,
    now: DateTime<Utc>,
) -> Decision {
    let issue = |reason: &'static str, message: String| Decision::Issue { reason, message };
    let wanted = match current {
        Err(Unusable::Missing) => {
            issue("DoesNotExist", format!("Issuing certificate as Secret {} does not exist", spec.secret_name))
        }
        Err(Unusable::MissingData) => {
            issue("MissingData", "Issuing certificate as Secret does not contain a certificate and key".into())
        }
        Err(Unusable::Invalid(e)) => issue(
            "InvalidCertificate",
            format!("Issuing certificate as Secret holds an unusable certificate or key: {e}"),
        ),
        Ok(c) => {
            // Without a commonName asked for, any is taken: ACME servers write the first name there.
            let cn_ok = match spec.common_name.as_deref().filter(|s| !s.is_empty()) {
                None => true,
                Some(cn) => c.common_name.as_deref() == Some(cn),
            };
            if !c.key_matches {
                issue(
                    "SecretMismatch",
                    "Issuing certificate as Secret's private key does not match its certificate".into(),
                )
            } else if c.issuer.as_ref().is_none_or(
                // cert-manager's rule: a Secret it did not issue (no annotations: made by hand) is issued again.
                |(n, k)| n != &spec.issuer_ref.name || k != spec.issuer_ref.kind(),
            ) {
                issue("IncorrectIssuer", "Issuing certificate as Secret was previously issued by another issuer".into())
            } else if !cn_ok
                || !same(c.dns_names.clone(), &spec.dns_names)
                || !same_ips(&c.ip_addresses, &spec.ip_addresses)
                || !same(c.uris.clone(), &spec.uris)
                || !same(c.email_addresses.clone(), &spec.email_addresses)
                || c.is_ca != spec.is_ca
            {
                issue("RequestChanged", "Issuing certificate as the names it should carry changed".into())
            } else if c.key_algorithm != spec.key_algorithm() {
                issue(
                    "RequestChanged",
                    format!(
                        "Issuing certificate as its key is {} and should be {}",
                        c.key_algorithm,
                        spec.key_algorithm()
                    ),
                )
            } else if now >= c.not_after {
                issue("Expired", format!("Issuing certificate as it expired at {}", c.not_after.to_rfc3339()))
            } else if manual {
                issue("ManuallyTriggered", "Certificate re-issuance manually triggered".into())
            } else {
                let at = renewal_time(spec, c.not_before, c.not_after);
                if now >= at {
                    issue("Renewing", format!("Renewing certificate as renewal was scheduled at {}", at.to_rfc3339()))
                } else {
                    return Decision::Keep { renewal_time: at };
                }
            }
        }
    };
    match backoff_until(status, retry, now) {
        Some(until) if !manual => Decision::Backoff { until },
        _ => wanted,
    }
}

/// Until when a failure's backoff holds (`retry`: it still applies), if it does now.
fn backoff_until(status: &CertificateStatus, retry: bool, now: DateTime<Utc>) -> Option<DateTime<Utc>> {
    let failures = status.failed_issuance_attempts.unwrap_or(0);
    let last = status.last_failure_time.filter(|_| retry && failures > 0)?;
    let until = last + chrono::Duration::from_std(backoff(failures)).unwrap_or_default();
    (now < until).then_some(until)
}

/// A renewal time suggested by the issuer's ACME server (RFC 9773's renewal information): a time chosen in its
/// window, and the `Issuing` message that says so.
#[derive(Debug, Clone, PartialEq)]
pub struct Suggested {
    pub at: DateTime<Utc>,
    pub message: String,
}

/// `decision` with the ACME server's suggestion taken in: a certificate kept is renewed at the earlier of its own
/// renewal time and the suggested one, and now once that has come (after a failure's backoff, as any issuance).
pub fn with_suggestion(
    decision: Decision,
    suggested: Option<&Suggested>,
    status: &CertificateStatus,
    retry: bool,
    now: DateTime<Utc>,
) -> Decision {
    match (decision, suggested) {
        (Decision::Keep { renewal_time }, Some(s)) if s.at < renewal_time => {
            if s.at > now {
                return Decision::Keep { renewal_time: s.at };
            }
            match backoff_until(status, retry, now) {
                Some(until) => Decision::Backoff { until },
                None => Decision::Issue { reason: "Renewing", message: s.message.clone() },
            }
        }
        (d, _) => d,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use capstan_model::certificate::IssuerRef;

    fn spec() -> CertificateSpec {
        CertificateSpec {
            secret_name: "shop-tls".into(),
            dns_names: vec!["shop.example.com".into()],
            duration: Some("90h".into()),
            issuer_ref: IssuerRef { name: "ca".into(), ..Default::default() },
            ..Default::default()
        }
    }

    fn t(h: i64) -> DateTime<Utc> {
        DateTime::from_timestamp(1_800_000_000 + h * 3600, 0).expect("a time")
    }

    fn current() -> Current {
        Current {
            not_before: t(0),
            not_after: t(90),
            common_name: None,
            dns_names: vec!["shop.example.com".into()],
            ip_addresses: vec![],
            uris: vec![],
            email_addresses: vec![],
            is_ca: false,
            key_algorithm: KeyAlgorithm::Rsa(2048),
            key_matches: true,
            issuer: Some(("ca".into(), "Issuer".into())),
        }
    }

    fn reason(d: Decision) -> &'static str {
        match d {
            Decision::Issue { reason, .. } => reason,
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn renews_a_third_before_expiry_and_keeps_until_then() {
        let s = spec();
        let st = CertificateStatus::default();
        assert_eq!(decide(&s, &Ok(current()), &st, false, false, t(10)), Decision::Keep { renewal_time: t(60) });
        assert_eq!(reason(decide(&s, &Ok(current()), &st, false, false, t(60))), "Renewing");
        assert_eq!(reason(decide(&s, &Ok(current()), &st, false, false, t(91))), "Expired");
        assert_eq!(reason(decide(&s, &Ok(current()), &st, false, true, t(10))), "ManuallyTriggered");
        let mut s2 = s.clone();
        s2.renew_before = Some("10h".into());
        assert_eq!(decide(&s2, &Ok(current()), &st, false, false, t(10)), Decision::Keep { renewal_time: t(80) });
    }

    #[test]
    fn a_secret_that_does_not_match_the_spec_is_reissued_with_cert_managers_reason() {
        let s = spec();
        let st = CertificateStatus::default();
        let with = |f: &dyn Fn(&mut Current)| {
            let mut c = current();
            f(&mut c);
            reason(decide(&s, &Ok(c), &st, false, false, t(1)))
        };
        assert_eq!(reason(decide(&s, &Err(Unusable::Missing), &st, false, false, t(1))), "DoesNotExist");
        assert_eq!(reason(decide(&s, &Err(Unusable::MissingData), &st, false, false, t(1))), "MissingData");
        assert_eq!(
            reason(decide(&s, &Err(Unusable::Invalid("x".into())), &st, false, false, t(1))),
            "InvalidCertificate"
        );
        assert_eq!(with(&|c| c.key_matches = false), "SecretMismatch");
        assert_eq!(with(&|c| c.issuer = Some(("other".into(), "Issuer".into()))), "IncorrectIssuer");
        assert_eq!(with(&|c| c.dns_names.push("www.example.com".into())), "RequestChanged");
        // A commonName asked for and another held is a change; one held but not asked for is not (ACME servers
        // write the first name there).
        let mut named = s.clone();
        named.common_name = Some("shop.example.com".into());
        let mut c = current();
        c.common_name = Some("shop".into());
        assert_eq!(reason(decide(&named, &Ok(c.clone()), &st, false, false, t(1))), "RequestChanged");
        assert!(matches!(decide(&s, &Ok(c), &st, false, false, t(1)), Decision::Keep { .. }));
        assert_eq!(with(&|c| c.key_algorithm = KeyAlgorithm::Ecdsa(256)), "RequestChanged");
        assert_eq!(with(&|c| c.is_ca = true), "RequestChanged");
        // Addresses compare as addresses: the certificate reads back `2001:db8::1` for a spec's `2001:DB8:0::1`.
        let mut ipv6 = s.clone();
        ipv6.ip_addresses = vec!["2001:DB8:0::1".into()];
        let mut c = current();
        c.ip_addresses = vec!["2001:db8::1".into()];
        assert!(matches!(decide(&ipv6, &Ok(c), &st, false, false, t(1)), Decision::Keep { .. }));
        // A Secret made by hand (no issuer annotations) is issued again, as cert-manager does.
        assert_eq!(with(&|c| c.issuer = None), "IncorrectIssuer");
        // Order and repeats of names do not matter.
        let mut c = current();
        c.dns_names = vec!["shop.example.com".into(), "shop.example.com".into()];
        assert!(matches!(decide(&s, &Ok(c), &st, false, false, t(1)), Decision::Keep { .. }));
    }

    #[test]
    fn a_suggestion_of_the_acme_server_brings_the_renewal_forward_never_back() {
        let (s, st) = (spec(), CertificateStatus::default());
        let kept = decide(&s, &Ok(current()), &st, false, false, t(10));
        assert_eq!(kept, Decision::Keep { renewal_time: t(60) });
        let at = |h: i64| Suggested { at: t(h), message: "the server suggests it".into() };
        assert_eq!(with_suggestion(kept.clone(), None, &st, false, t(10)), kept);
        assert_eq!(with_suggestion(kept.clone(), Some(&at(70)), &st, false, t(10)), kept, "later: its own time");
        assert_eq!(
            with_suggestion(kept.clone(), Some(&at(20)), &st, false, t(10)),
            Decision::Keep { renewal_time: t(20) }
        );
        assert_eq!(
            with_suggestion(kept.clone(), Some(&at(20)), &st, false, t(20)),
            Decision::Issue { reason: "Renewing", message: "the server suggests it".into() }
        );
        // After a failed renewal, the backoff holds as for any issuance.
        let failed = CertificateStatus { failed_issuance_attempts: Some(2), last_failure_time: Some(t(20)), ..st };
        assert_eq!(
            with_suggestion(kept.clone(), Some(&at(20)), &failed, true, t(20)),
            Decision::Backoff { until: t(20) + chrono::Duration::seconds(20) }
        );
        // Anything but a kept certificate is left as decided.
        let issue = Decision::Issue { reason: "Expired", message: "x".into() };
        assert_eq!(with_suggestion(issue.clone(), Some(&at(1)), &failed, true, t(20)), issue);
    }

    #[test]
    fn failures_back_off_exponentially_unless_something_changed_or_a_renewal_is_asked() {
        let s = spec();
        let failed = |n: u32| CertificateStatus {
            failed_issuance_attempts: Some(n),
            last_failure_time: Some(t(0)),
            ..Default::default()
        };
        let ten_s = t(0) + chrono::Duration::seconds(10);
        assert_eq!(
            decide(&s, &Err(Unusable::Missing), &failed(1), true, false, t(0)),
            Decision::Backoff { until: ten_s }
        );
        assert_eq!(reason(decide(&s, &Err(Unusable::Missing), &failed(1), true, false, ten_s)), "DoesNotExist");
        assert_eq!(
            decide(&s, &Err(Unusable::Missing), &failed(3), true, false, t(0)),
            Decision::Backoff { until: t(0) + chrono::Duration::seconds(40) }
        );
        assert_eq!(backoff(30), BACKOFF_MAX);
        assert_eq!(rejected_backoff(1), Duration::from_secs(300));
        assert_eq!(rejected_backoff(3), Duration::from_secs(1200));
        assert_eq!(rejected_backoff(30), BACKOFF_MAX);
        assert_eq!(reason(decide(&s, &Err(Unusable::Missing), &failed(3), false, false, t(0))), "DoesNotExist");
        assert_eq!(reason(decide(&s, &Err(Unusable::Missing), &failed(3), true, true, t(0))), "DoesNotExist");
    }
}
