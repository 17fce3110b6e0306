//! Signing: a Certificate's names, lifetime and usages made into an X.509 certificate, signed by itself or by a CA.

use std::net::IpAddr;

use capstan_model::certificate::CertificateSpec;
use chrono::{DateTime, Utc};
use rand_core::RngCore;
use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa, KeyUsagePurpose,
    SanType, SerialNumber,
};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::CertificateDer;

use crate::error::IssueError;
use crate::keys::Key;

/// Who signs.
pub enum Signer<'a> {
    SelfSigned,
    /// A CA: its certificate chain (PEM, the CA's own first) and its key.
    Ca {
        chain_pem: &'a str,
        key: &'a Key,
    },
}

/// A signed certificate, as the Secret holds it.
#[derive(Debug, Clone)]
pub struct Signed {
    /// The certificate, then the CA's chain.
    pub chain_pem: String,
    /// The root-most CA certificate (the certificate itself when self-signed).
    pub ca_pem: String,
    pub not_before: DateTime<Utc>,
    pub not_after: DateTime<Utc>,
}

fn to_offset(t: DateTime<Utc>) -> Result<time::OffsetDateTime, IssueError> {
    time::OffsetDateTime::from_unix_timestamp(t.timestamp()).map_err(|e| IssueError::Sign(e.to_string()))
}

/// The certificate `spec` asks for, with `key`, valid from `now` for its duration (no later than the CA).
pub fn sign(spec: &CertificateSpec, key: &Key, signer: Signer<'_>, now: DateTime<Utc>) -> Result<Signed, IssueError> {
    let mut params = CertificateParams::default();
    let mut dn = DistinguishedName::new();
    if let Some(cn) = spec.common_name.as_deref().filter(|c| !c.is_empty()) {
        dn.push(DnType::CommonName, cn);
    }
    if let Some(s) = &spec.subject {
        for o in &s.organizations {
            dn.push(DnType::OrganizationName, o.as_str());
        }
        for o in &s.organizational_units {
            dn.push(DnType::OrganizationalUnitName, o.as_str());
        }
        for c in &s.countries {
            dn.push(DnType::CountryName, c.as_str());
        }
        for l in &s.localities {
            dn.push(DnType::LocalityName, l.as_str());
        }
        for p in &s.provinces {
            dn.push(DnType::StateOrProvinceName, p.as_str());
        }
    }
    params.distinguished_name = dn;
    let bad = |what: &str, v: &str| IssueError::Sign(format!("{what} `{v}` cannot be written into a certificate"));
    for d in &spec.dns_names {
        params.subject_alt_names.push(SanType::DnsName(d.as_str().try_into().map_err(|_| bad("dnsName", d))?));
    }
    for ip in &spec.ip_addresses {
        params.subject_alt_names.push(SanType::IpAddress(ip.parse::<IpAddr>().map_err(|_| bad("ipAddress", ip))?));
    }
    for u in &spec.uris {
        params.subject_alt_names.push(SanType::URI(u.as_str().try_into().map_err(|_| bad("uri", u))?));
    }
    for e in &spec.email_addresses {
        params.subject_alt_names.push(SanType::Rfc822Name(e.as_str().try_into().map_err(|_| bad("emailAddress", e))?));
    }
    let mut serial = [0u8; 16];
    rand_core::OsRng.fill_bytes(&mut serial);
    serial[0] &= 0x7f;
    params.serial_number = Some(SerialNumber::from_slice(&serial));
    let duration = chrono::Duration::from_std(spec.duration()).map_err(|e| IssueError::Sign(e.to_string()))?;
    let mut not_after = now.checked_add_signed(duration).ok_or_else(|| {
        IssueError::Sign(format!("a lifetime of {duration} from {now} is past any date a certificate can hold"))
    })?;
    if spec.is_ca {
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    }
    let usages: Vec<&str> = if spec.usages.is_empty() {
        vec!["digital signature", "key encipherment"]
    } else {
        spec.usages.iter().map(String::as_str).collect()
    };
    for u in usages {
        match u {
            "signing" | "digital signature" => params.key_usages.push(KeyUsagePurpose::DigitalSignature),
            "content commitment" => params.key_usages.push(KeyUsagePurpose::ContentCommitment),
            "key encipherment" => params.key_usages.push(KeyUsagePurpose::KeyEncipherment),
            "key agreement" => params.key_usages.push(KeyUsagePurpose::KeyAgreement),
            "data encipherment" => params.key_usages.push(KeyUsagePurpose::DataEncipherment),
            "cert sign" => params.key_usages.push(KeyUsagePurpose::KeyCertSign),
            "crl sign" => params.key_usages.push(KeyUsagePurpose::CrlSign),
            "encipher only" => params.key_usages.push(KeyUsagePurpose::EncipherOnly),
            "decipher only" => params.key_usages.push(KeyUsagePurpose::DecipherOnly),
            "any" => params.extended_key_usages.push(ExtendedKeyUsagePurpose::Any),
            "server auth" => params.extended_key_usages.push(ExtendedKeyUsagePurpose::ServerAuth),
            "client auth" => params.extended_key_usages.push(ExtendedKeyUsagePurpose::ClientAuth),
            "code signing" => params.extended_key_usages.push(ExtendedKeyUsagePurpose::CodeSigning),
            "email protection" | "s/mime" => params.extended_key_usages.push(ExtendedKeyUsagePurpose::EmailProtection),
            "timestamping" => params.extended_key_usages.push(ExtendedKeyUsagePurpose::TimeStamping),
            // IPsec's usages have no place in rcgen's set; the certificate goes without them.
            _ => {}
        }
    }
    if spec.is_ca && !params.key_usages.contains(&KeyUsagePurpose::KeyCertSign) {
        params.key_usages.push(KeyUsagePurpose::KeyCertSign);
    }
    let key_pair = key.key_pair()?;
    match signer {
        Signer::SelfSigned => {
            params.not_before = to_offset(now)?;
            params.not_after = to_offset(not_after)?;
            let cert = params.self_signed(&key_pair).map_err(IssueError::rcgen)?;
            let pem = cert.pem();
            Ok(Signed { chain_pem: pem.clone(), ca_pem: pem, not_before: now, not_after })
        }
        Signer::Ca { chain_pem, key: ca_key } => {
            let chain: Vec<CertificateDer<'static>> = CertificateDer::pem_slice_iter(chain_pem.as_bytes())
                .collect::<Result<_, _>>()
                .map_err(|_| IssueError::Issuer("the CA's tls.crt does not parse as PEM certificates".into()))?;
            let ca = chain.first().ok_or_else(|| IssueError::Issuer("the CA's tls.crt holds no certificate".into()))?;
            let (_, parsed) = x509_parser::parse_x509_certificate(ca)
                .map_err(|_| IssueError::Issuer("the CA's certificate is not valid X.509".into()))?;
            let ca_not_after = DateTime::from_timestamp(parsed.validity().not_after.timestamp(), 0).unwrap_or(now);
            // cert-manager's rule: never valid beyond the CA that signed it.
            not_after = not_after.min(ca_not_after);
            if not_after <= now {
                return Err(IssueError::Issuer(format!("the CA's certificate expired at {ca_not_after}")));
            }
            params.not_before = to_offset(now)?;
            params.not_after = to_offset(not_after)?;
            let issuer = rcgen::Issuer::from_ca_cert_der(ca, ca_key.key_pair()?)
                .map_err(|e| IssueError::Issuer(format!("the CA's certificate cannot sign: {e}")))?;
            let cert = params.signed_by(&key_pair, &issuer).map_err(IssueError::rcgen)?;
            // As cert-manager: the certificate and the CA's chain, but not a self-signed root, which clients must
            // already hold (it is `ca.crt`).
            let mut out = cert.pem();
            let last = chain.len().saturating_sub(1);
            for (i, c) in chain.iter().enumerate() {
                if i == last && self_signed(c) {
                    break;
                }
                out.push_str(&pem_of(c));
            }
            let root = chain.last().map(|c| pem_of(c)).unwrap_or_default();
            Ok(Signed { chain_pem: out, ca_pem: root, not_before: now, not_after })
        }
    }
}

/// Whether a certificate names itself as its issuer (a root).
fn self_signed(der: &[u8]) -> bool {
    x509_parser::parse_x509_certificate(der).is_ok_and(|(_, c)| c.subject() == c.issuer())
}

fn pem_of(der: &[u8]) -> String {
    pkcs8::der::pem::encode_string("CERTIFICATE", pkcs8::LineEnding::LF, der).unwrap_or_default()
}
