//! cert-manager's `Issuer`, `ClusterIssuer` and `Certificate` (`cert-manager.io/v1`), with cert-manager's field names, defaults and
//! status: what a certificate should name and how long it lives, and who signs it.

use std::collections::BTreeMap;
use std::time::Duration;

use chrono::{DateTime, Utc};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::gateway::check_hostname;
use crate::meta::Condition;
use crate::quantity::parse_duration;
use crate::resource::Object;
use crate::validate::{check_dns_label, FieldError};

/// The `apiVersion` of cert-manager's kinds.
pub const CERT_MANAGER_API_VERSION: &str = "cert-manager.io/v1";
/// cert-manager's API group, as `issuerRef.group` names it.
pub const CERT_MANAGER_GROUP: &str = "cert-manager.io";

/// A certificate's lifetime when `duration` is not given (cert-manager's: 90 days).
pub const DEFAULT_DURATION: Duration = Duration::from_secs(90 * 24 * 3600);
/// The shortest lifetime cert-manager accepts.
pub const MIN_DURATION: Duration = Duration::from_secs(3600);
/// The shortest `renewBefore` cert-manager accepts.
pub const MIN_RENEW_BEFORE: Duration = Duration::from_secs(5 * 60);

/// An Issuer: signs the Certificates of its namespace that name it.
pub type Issuer = Object<IssuerSpec, IssuerStatus>;
/// A ClusterIssuer: an Issuer for every namespace's Certificates; the Secrets it names are in the cluster resource
/// namespace ([`CLUSTER_RESOURCE_NAMESPACE`]).
pub type ClusterIssuer = Object<IssuerSpec, IssuerStatus>;
/// Where a ClusterIssuer's Secrets (CA, ACME account key, EAB key) are read and written: cert-manager's default
/// `--cluster-resource-namespace`.
pub const CLUSTER_RESOURCE_NAMESPACE: &str = "cert-manager";
/// A Certificate: a key and a certificate kept in a Secret, renewed before it expires.
pub type Certificate = Object<CertificateSpec, CertificateStatus>;

/// Exactly one way of signing.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct IssuerSpec {
    /// Each certificate signs itself with its own key.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub self_signed: Option<SelfSignedIssuer>,
    /// Certificates signed by a CA whose certificate and key a Secret holds.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ca: Option<CaIssuer>,
    /// Certificates from an ACME server (Let's Encrypt and others), its challenges answered by Capstan's Gateways.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub acme: Option<crate::acme::AcmeIssuer>,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct SelfSignedIssuer {
    /// CRL distribution points written into each certificate.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub crl_distribution_points: Vec<String>,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct CaIssuer {
    /// A Secret of the Issuer's namespace with the CA's `tls.crt` and `tls.key`.
    pub secret_name: String,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub crl_distribution_points: Vec<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub ocsp_servers: Vec<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub issuing_certificate_urls: Vec<String>,
}

/// What an Issuer says of itself: condition `Ready`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct IssuerStatus {
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub conditions: Vec<Condition>,
    /// An ACME issuer's account.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub acme: Option<crate::acme::AcmeIssuerStatus>,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct CertificateSpec {
    /// The Secret the key and certificate are written to (`tls.crt`, `tls.key`, `ca.crt`).
    pub secret_name: String,
    /// Labels and annotations the Secret carries.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub secret_template: Option<SecretTemplate>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub common_name: Option<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub dns_names: Vec<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub ip_addresses: Vec<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub uris: Vec<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub email_addresses: Vec<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub subject: Option<Subject>,
    /// The lifetime asked for, as a Go duration (`2160h`, the default: 90 days); at least `1h`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub duration: Option<String>,
    /// How long before expiry it is renewed; by default a third of its lifetime.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub renew_before: Option<String>,
    /// Or as a share of its lifetime left (1 to 99).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub renew_before_percentage: Option<u32>,
    /// A CA certificate, which may sign others.
    #[serde(default, rename = "isCA", skip_serializing_if = "std::ops::Not::not")]
    pub is_ca: bool,
    /// Key usages; by default `digital signature` and `key encipherment` (and `cert sign` for a CA).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub usages: Vec<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub private_key: Option<PrivateKeySpec>,
    pub issuer_ref: IssuerRef,
    /// How many CertificateRequests cert-manager keeps: taken for the cluster; Capstan keeps none.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub revision_history_limit: Option<u32>,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct SecretTemplate {
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub annotations: BTreeMap<String, String>,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub labels: BTreeMap<String, String>,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Subject {
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub organizations: Vec<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub organizational_units: Vec<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub countries: Vec<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub localities: Vec<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub provinces: Vec<String>,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct PrivateKeySpec {
    /// `RSA` (the default), `ECDSA` or `Ed25519`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub algorithm: Option<String>,
    /// RSA: 2048 (the default) to 8192 bits; ECDSA: 256 (the default) or 384.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub size: Option<u32>,
    /// `PKCS1` (the default: `RSA PRIVATE KEY`, `EC PRIVATE KEY`) or `PKCS8`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub encoding: Option<String>,
    /// `Always` (the default since cert-manager 1.18): a new key at every issuance; `Never`: the Secret's key kept.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rotation_policy: Option<String>,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct IssuerRef {
    pub name: String,
    /// `Issuer` (the default) or `ClusterIssuer`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub kind: Option<String>,
    /// `cert-manager.io` (the default).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub group: Option<String>,
}

/// What a Certificate says of itself, as cert-manager writes it (the generation seen is on each condition).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct CertificateStatus {
    /// `Ready` and `Issuing`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub conditions: Vec<Condition>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub not_before: Option<DateTime<Utc>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub not_after: Option<DateTime<Utc>>,
    /// When it will be renewed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub renewal_time: Option<DateTime<Utc>>,
    /// Issuances so far (1 for the first).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub revision: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_failure_time: Option<DateTime<Utc>>,
    /// Failed issuances since the last that succeeded.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub failed_issuance_attempts: Option<u32>,
}

/// A key algorithm and size, defaults applied.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KeyAlgorithm {
    Rsa(u32),
    Ecdsa(u32),
    Ed25519,
}

impl std::fmt::Display for KeyAlgorithm {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            KeyAlgorithm::Rsa(n) => write!(f, "RSA {n}"),
            KeyAlgorithm::Ecdsa(n) => write!(f, "ECDSA P-{n}"),
            KeyAlgorithm::Ed25519 => write!(f, "Ed25519"),
        }
    }
}

impl IssuerRef {
    pub fn kind(&self) -> &str {
        self.kind.as_deref().unwrap_or("Issuer")
    }

    /// The key of the Issuer or ClusterIssuer of cert-manager.io it names, for a Certificate of `namespace`;
    /// `None` for another issuer (an external one only a cluster's cert-manager knows).
    pub fn key(&self, namespace: &str) -> Option<crate::ObjectKey> {
        if self.group.as_deref().is_some_and(|g| g != CERT_MANAGER_GROUP) {
            return None;
        }
        match self.kind() {
            "Issuer" => Some(crate::ObjectKey::new("Issuer", namespace, &self.name)),
            "ClusterIssuer" => Some(crate::ObjectKey::new("ClusterIssuer", "", &self.name)),
            _ => None,
        }
    }
}

/// The namespace an issuer's Secrets (CA, ACME account key, EAB key) are in, from the issuer's key: an Issuer's
/// own, and the cluster resource namespace for a ClusterIssuer (stored under the empty namespace).
pub fn secrets_namespace(issuer: &crate::ObjectKey) -> &str {
    if issuer.kind == "ClusterIssuer" {
        CLUSTER_RESOURCE_NAMESPACE
    } else {
        &issuer.namespace
    }
}

impl Issuer {
    /// Whether it is a ClusterIssuer (the two kinds share their type).
    pub fn is_cluster_issuer(&self) -> bool {
        self.kind == "ClusterIssuer"
    }

    /// Its key in the store: an Issuer's in its namespace, a ClusterIssuer's under the empty namespace.
    pub fn key(&self) -> crate::ObjectKey {
        let ns = if self.is_cluster_issuer() { "" } else { self.metadata.namespace() };
        crate::ObjectKey::new(&self.kind, ns, &self.metadata.name)
    }

    /// The namespace its Secrets are in (see [`secrets_namespace`]).
    pub fn secrets_namespace(&self) -> &str {
        if self.is_cluster_issuer() {
            CLUSTER_RESOURCE_NAMESPACE
        } else {
            self.metadata.namespace()
        }
    }
}

impl CertificateSpec {
    /// The lifetime asked for (validated: a bad value is the default here).
    pub fn duration(&self) -> Duration {
        self.duration.as_deref().and_then(|d| parse_duration(d).ok()).unwrap_or(DEFAULT_DURATION)
    }

    /// How long before `not_after` a certificate that lived `lifetime` is renewed (cert-manager's rule: the
    /// percentage if given, else `renewBefore`, else a third; never the whole lifetime).
    pub fn renew_before(&self, lifetime: Duration) -> Duration {
        let asked = match (self.renew_before_percentage, self.renew_before.as_deref()) {
            (Some(p), _) => lifetime.mul_f64(f64::from(p.min(99)) / 100.0),
            (None, Some(r)) => parse_duration(r).unwrap_or(lifetime / 3),
            (None, None) => lifetime / 3,
        };
        if asked >= lifetime {
            lifetime / 3
        } else {
            asked
        }
    }

    pub fn key_algorithm(&self) -> KeyAlgorithm {
        let pk = self.private_key.as_ref();
        let size = pk.and_then(|p| p.size);
        match pk.and_then(|p| p.algorithm.as_deref()).unwrap_or("RSA") {
            "ECDSA" => KeyAlgorithm::Ecdsa(size.unwrap_or(256)),
            "Ed25519" => KeyAlgorithm::Ed25519,
            _ => KeyAlgorithm::Rsa(size.unwrap_or(2048)),
        }
    }

    /// Whether the key is written as PKCS#8 (`PRIVATE KEY`) rather than PKCS#1 / SEC 1.
    pub fn pkcs8(&self) -> bool {
        self.private_key.as_ref().and_then(|p| p.encoding.as_deref()) == Some("PKCS8")
    }

    /// Whether every issuance makes a new key.
    pub fn rotates_key(&self) -> bool {
        self.private_key.as_ref().and_then(|p| p.rotation_policy.as_deref()) != Some("Never")
    }
}

pub fn validate_issuer(spec: &IssuerSpec, errors: &mut Vec<FieldError>) {
    let set = [spec.self_signed.is_some(), spec.ca.is_some(), spec.acme.is_some()].iter().filter(|s| **s).count();
    if set != 1 {
        errors.push(
            FieldError::new("spec", "needs exactly one of selfSigned, ca and acme")
                .hint("`selfSigned: {}`, or `ca: {secretName: my-ca}`"),
        );
    }
    if let Some(ca) = &spec.ca {
        if let Err(e) = check_dns_label(&ca.secret_name, 253) {
            errors.push(FieldError::new("spec.ca.secretName", e).hint("the name of a Secret with tls.crt and tls.key"));
        }
    }
    if let Some(acme) = &spec.acme {
        crate::acme::validate_acme(acme, errors);
    }
}

pub fn validate_certificate(spec: &CertificateSpec, errors: &mut Vec<FieldError>) {
    if let Err(e) = check_dns_label(&spec.secret_name, 253) {
        errors.push(FieldError::new("spec.secretName", e).hint("for example `shop-tls`"));
    }
    let names = spec.dns_names.len() + spec.ip_addresses.len() + spec.uris.len() + spec.email_addresses.len();
    if names == 0 && spec.common_name.as_deref().is_none_or(str::is_empty) {
        errors.push(
            FieldError::new("spec", "names nothing: give dnsNames, ipAddresses, uris, emailAddresses or commonName")
                .hint("`dnsNames: [shop.example.com]`"),
        );
    }
    if let Some(cn) = &spec.common_name {
        if cn.len() > 64 {
            errors.push(FieldError::new("spec.commonName", "is longer than 64 characters, X.509's limit"));
        }
    }
    for (i, d) in spec.dns_names.iter().enumerate() {
        if let Err(e) = check_hostname(d) {
            errors.push(
                FieldError::new(format!("spec.dnsNames[{i}]"), e)
                    .hint("for example `shop.example.com` or `*.example.com`"),
            );
        }
    }
    for (i, ip) in spec.ip_addresses.iter().enumerate() {
        if ip.parse::<std::net::IpAddr>().is_err() {
            errors.push(FieldError::new(format!("spec.ipAddresses[{i}]"), format!("`{ip}` is not an IP address")));
        }
    }
    for (i, u) in spec.uris.iter().enumerate() {
        if !u.split_once(':').is_some_and(|(scheme, rest)| !scheme.is_empty() && !rest.is_empty()) {
            errors.push(
                FieldError::new(format!("spec.uris[{i}]"), format!("`{u}` is not a URI"))
                    .hint("for example `spiffe://example.org/web`"),
            );
        }
    }
    for (i, e) in spec.email_addresses.iter().enumerate() {
        if !e.split_once('@').is_some_and(|(a, b)| !a.is_empty() && !b.is_empty()) {
            errors.push(FieldError::new(format!("spec.emailAddresses[{i}]"), format!("`{e}` is not an email address")));
        }
    }
    let lifetime = match spec.duration.as_deref().map(|d| go_duration("spec.duration", d, errors)) {
        None => Some(DEFAULT_DURATION),
        Some(Some(d)) if d < MIN_DURATION => {
            errors.push(
                FieldError::new("spec.duration", format!("{d:?} is shorter than an hour, cert-manager's least"))
                    .hint("for example `2160h` (90 days) or `24h`"),
            );
            None
        }
        Some(d) => d,
    };
    if spec.renew_before.is_some() && spec.renew_before_percentage.is_some() {
        errors.push(FieldError::new("spec.renewBefore", "and renewBeforePercentage cannot both be set"));
    }
    if let Some(r) = &spec.renew_before {
        match go_duration("spec.renewBefore", r, errors).ok_or(()) {
            Err(()) => {}
            Ok(r) if r < MIN_RENEW_BEFORE => errors.push(
                FieldError::new("spec.renewBefore", "is shorter than 5 minutes, cert-manager's least")
                    .hint("for example `720h` (30 days)"),
            ),
            Ok(r) if lifetime.is_some_and(|l| r >= l) => errors.push(
                FieldError::new("spec.renewBefore", "is not shorter than the certificate's duration")
                    .hint("it would be renewed as soon as it is issued"),
            ),
            Ok(_) => {}
        }
    }
    if let Some(p) = spec.renew_before_percentage {
        if !(1..=99).contains(&p) {
            errors.push(FieldError::new("spec.renewBeforePercentage", format!("{p} is not between 1 and 99")));
        }
    }
    for (i, u) in spec.usages.iter().enumerate() {
        if !USAGES.contains(&u.as_str()) {
            errors.push(
                FieldError::new(format!("spec.usages[{i}]"), format!("`{u}` is not a key usage"))
                    .hint("for example `digital signature`, `key encipherment`, `server auth`, `client auth`"),
            );
        }
    }
    if let Some(pk) = &spec.private_key {
        match (pk.algorithm.as_deref().unwrap_or("RSA"), pk.size) {
            ("RSA", Some(n)) if !(2048..=8192).contains(&n) || n % 8 != 0 => errors.push(
                FieldError::new("spec.privateKey.size", format!("{n} bits is not an RSA size taken"))
                    .hint("a multiple of 8 from 2048 to 8192: 2048, 3072 or 4096"),
            ),
            // P-521 is taken (a cluster's cert-manager makes it); the embedded runtime says in status it cannot.
            ("ECDSA", Some(n)) if n != 256 && n != 384 && n != 521 => errors.push(
                FieldError::new("spec.privateKey.size", format!("{n} is not an ECDSA curve size")).hint("256 or 384"),
            ),
            ("RSA" | "ECDSA" | "Ed25519", _) => {}
            (other, _) => errors.push(
                FieldError::new("spec.privateKey.algorithm", format!("`{other}` is not a key algorithm"))
                    .hint("`RSA`, `ECDSA` or `Ed25519`"),
            ),
        }
        if let Some(e) = pk.encoding.as_deref().filter(|e| !matches!(*e, "PKCS1" | "PKCS8")) {
            errors.push(
                FieldError::new("spec.privateKey.encoding", format!("`{e}` is not a key encoding"))
                    .hint("`PKCS1` or `PKCS8`"),
            );
        }
        if let Some(p) = pk.rotation_policy.as_deref().filter(|p| !matches!(*p, "Always" | "Never")) {
            errors.push(
                FieldError::new("spec.privateKey.rotationPolicy", format!("`{p}` is not a rotation policy"))
                    .hint("`Always` or `Never`"),
            );
        }
    }
    // A ClusterIssuer or an external issuer (another group) is taken: a cluster's cert-manager issues it, and on the
    // embedded runtime the Certificate's condition says it cannot.
    if spec.issuer_ref.name.is_empty() {
        errors.push(FieldError::new("spec.issuerRef.name", "is empty").hint("the name of an Issuer in this namespace"));
    }
}

/// The longest lifetime taken: a hundred years (X.509's times end in 9999).
const MAX_DURATION: Duration = Duration::from_secs(100 * 365 * 24 * 3600);

/// A Go duration, as cert-manager parses it: a unit on every number (`2160h`, `1h30m`), and no `d`.
fn go_duration(path: &str, value: &str, errors: &mut Vec<FieldError>) -> Option<Duration> {
    if value.trim().parse::<f64>().is_ok() || value.contains('d') {
        errors.push(
            FieldError::new(path, format!("`{value}` is not a Go duration, which cert-manager reads"))
                .hint("hours and minutes, with their units: `2160h` for 90 days, `1h30m`"),
        );
        return None;
    }
    match parse_duration(value) {
        Ok(d) if d > MAX_DURATION => {
            errors
                .push(FieldError::new(path, "is longer than a hundred years").hint("for example `87600h` (ten years)"));
            None
        }
        Ok(d) => Some(d),
        Err(e) => {
            errors.push(FieldError::new(path, e));
            None
        }
    }
}

/// The key usages cert-manager takes, by its names.
pub const USAGES: [&str; 19] = [
    "signing",
    "digital signature",
    "content commitment",
    "key encipherment",
    "key agreement",
    "data encipherment",
    "cert sign",
    "crl sign",
    "encipher only",
    "decipher only",
    "any",
    "server auth",
    "client auth",
    "code signing",
    "email protection",
    "s/mime",
    "ipsec end system",
    "ipsec tunnel",
    "timestamping",
];

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_cluster_issuer_has_no_namespace_and_reads_its_secrets_in_cert_manager() {
        let text = "apiVersion: cert-manager.io/v1\nkind: ClusterIssuer\nmetadata: {name: le, namespace: team-a}\nspec: {ca: {secretName: root}}\n";
        let r = crate::parse_manifests("c.yaml", text).expect("a ClusterIssuer").remove(0).resource;
        assert_eq!(r.meta().namespace, None, "a written namespace is dropped, as a cluster drops it");
        assert_eq!(r.key(), crate::ObjectKey::new("ClusterIssuer", "", "le"));
        assert!(r.to_value()["metadata"].get("namespace").is_none());
        assert_eq!(crate::resource::namespace_of(&r.to_value()), "");
        let crate::Resource::ClusterIssuer(issuer) = &r else { panic!("{r:?}") };
        assert_eq!((issuer.key(), issuer.secrets_namespace()), (r.key(), CLUSTER_RESOURCE_NAMESPACE));
        assert_eq!(secrets_namespace(&r.key()), "cert-manager");

        // A namespaced Issuer keeps its namespace, and its Secrets are there.
        let text = "apiVersion: cert-manager.io/v1\nkind: Issuer\nmetadata: {name: ca, namespace: shop}\nspec: {ca: {secretName: root}}\n";
        let r = crate::parse_manifests("i.yaml", text).expect("an Issuer").remove(0).resource;
        let crate::Resource::Issuer(issuer) = &r else { panic!("{r:?}") };
        assert_eq!((issuer.key(), issuer.secrets_namespace()), (crate::ObjectKey::new("Issuer", "shop", "ca"), "shop"));

        // What a Certificate's issuerRef names.
        let r = |kind: Option<&str>, group: Option<&str>| IssuerRef {
            name: "x".into(),
            kind: kind.map(str::to_string),
            group: group.map(str::to_string),
        };
        assert_eq!(r(None, None).key("a"), Some(crate::ObjectKey::new("Issuer", "a", "x")));
        assert_eq!(
            r(Some("ClusterIssuer"), Some(CERT_MANAGER_GROUP)).key("a"),
            Some(crate::ObjectKey::new("ClusterIssuer", "", "x"))
        );
        assert_eq!(r(Some("ClusterIssuer"), Some("example.com")).key("a"), None, "an external issuer");
        assert_eq!(r(Some("VaultIssuer"), None).key("a"), None);
    }

    fn spec(yaml: &str) -> CertificateSpec {
        let text = format!(
            "apiVersion: cert-manager.io/v1\nkind: Certificate\nmetadata: {{name: c}}\nspec:\n  secretName: c-tls\n  issuerRef: {{name: ca}}\n{yaml}"
        );
        match &crate::parse_manifests("c.yaml", &text).expect("a certificate")[0].resource {
            crate::Resource::Certificate(c) => c.spec.clone(),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn defaults_are_cert_managers() {
        let s = spec("  dnsNames: [shop.example.com]\n");
        assert_eq!(s.duration(), DEFAULT_DURATION);
        assert_eq!(s.renew_before(DEFAULT_DURATION), DEFAULT_DURATION / 3);
        assert_eq!(s.key_algorithm(), KeyAlgorithm::Rsa(2048));
        assert!(!s.pkcs8() && s.rotates_key());
        assert_eq!(s.issuer_ref.kind(), "Issuer");
        let s = spec("  dnsNames: [a.example.com]\n  duration: 24h\n  renewBeforePercentage: 25\n  privateKey: {algorithm: ECDSA, encoding: PKCS8, rotationPolicy: Never}\n");
        assert_eq!(s.duration(), Duration::from_secs(86400));
        assert_eq!(s.renew_before(s.duration()), Duration::from_secs(6 * 3600));
        assert_eq!(s.key_algorithm(), KeyAlgorithm::Ecdsa(256));
        assert!(s.pkcs8() && !s.rotates_key());
        // What only a cluster's cert-manager issues is taken as written.
        let s = spec("  dnsNames: [a.example.com]\n  privateKey: {algorithm: ECDSA, size: 521}\n");
        assert_eq!(s.key_algorithm(), KeyAlgorithm::Ecdsa(521));
        let cluster = "apiVersion: cert-manager.io/v1\nkind: Certificate\nmetadata: {name: c}\nspec:\n  secretName: x\n  dnsNames: [a.b]\n  issuerRef: {name: le, kind: ClusterIssuer}\n---\napiVersion: cert-manager.io/v1\nkind: Certificate\nmetadata: {name: d}\nspec:\n  secretName: y\n  dnsNames: [a.b]\n  issuerRef: {name: pca, kind: AWSPCAClusterIssuer, group: awspca.cert-manager.io}\n";
        assert_eq!(crate::parse_manifests("c.yaml", cluster).expect("taken").len(), 2);
    }

    #[test]
    fn bad_certificates_name_their_field() {
        let base = "apiVersion: cert-manager.io/v1\nkind: Certificate\nmetadata: {name: c}\nspec:\n";
        for (body, field) in [
            ("  secretName: x\n  issuerRef: {name: ca}\n", "names nothing"),
            ("  secretName: x\n  issuerRef: {name: ca}\n  dnsNames: ['bad host']\n", "spec.dnsNames[0]"),
            ("  secretName: x\n  issuerRef: {name: ca}\n  ipAddresses: [10.0.0.300]\n", "spec.ipAddresses[0]"),
            ("  secretName: x\n  issuerRef: {name: ca}\n  dnsNames: [a.b]\n  duration: 30m\n", "spec.duration"),
            ("  secretName: x\n  issuerRef: {name: ca}\n  dnsNames: [a.b]\n  duration: 2h\n  renewBefore: 3h\n", "spec.renewBefore"),
            ("  secretName: x\n  issuerRef: {name: ca}\n  dnsNames: [a.b]\n  renewBefore: 1m\n", "spec.renewBefore"),
            ("  secretName: x\n  issuerRef: {name: ca}\n  dnsNames: [a.b]\n  usages: [flying]\n", "spec.usages[0]"),
            ("  secretName: x\n  issuerRef: {name: ca}\n  dnsNames: [a.b]\n  privateKey: {algorithm: DSA}\n", "spec.privateKey.algorithm"),
            ("  secretName: x\n  issuerRef: {name: ca}\n  dnsNames: [a.b]\n  privateKey: {algorithm: ECDSA, size: 512}\n", "spec.privateKey.size"),
            ("  secretName: x\n  issuerRef: {name: ca}\n  dnsNames: [a.b]\n  privateKey: {size: 2049}\n", "spec.privateKey.size"),
            ("  secretName: x\n  issuerRef: {name: ca}\n  dnsNames: [a.b]\n  duration: 90d\n", "spec.duration"),
            ("  secretName: x\n  issuerRef: {name: ca}\n  dnsNames: [a.b]\n  duration: '3600'\n", "spec.duration"),
            ("  secretName: x\n  issuerRef: {name: ca}\n  dnsNames: [a.b]\n  duration: 100000000000h\n", "spec.duration"),
            ("  secretName: x\n  issuerRef: {name: ca}\n  dnsNames: [a.b]\n  privateKey: {size: 1024}\n", "spec.privateKey.size"),
            ("  secretName: Bad_Name\n  issuerRef: {name: ca}\n  dnsNames: [a.b]\n", "spec.secretName"),
            ("  secretName: x\n  issuerRef: {name: ca}\n  dnsNames: [a.b]\n  keystores: {}\n", "keystores"),
        ] {
            let e = crate::parse_manifests("c.yaml", &format!("{base}{body}")).map(|_| ()).unwrap_err().to_string();
            assert!(e.contains(field), "{body}: {e}");
        }
    }

    #[test]
    fn an_issuer_signs_one_way() {
        let base = "apiVersion: cert-manager.io/v1\nkind: Issuer\nmetadata: {name: i}\nspec:\n";
        assert!(crate::parse_manifests("i.yaml", &format!("{base}  selfSigned: {{}}\n")).is_ok());
        assert!(crate::parse_manifests("i.yaml", &format!("{base}  ca: {{secretName: root}}\n")).is_ok());
        let acme = "  acme:\n    server: https://acme.example/dir\n    privateKeySecretRef: {name: account}\n";
        assert!(crate::parse_manifests("i.yaml", &format!("{base}{acme}")).is_ok());
        for (body, field) in [
            ("  selfSigned: {}\n  ca: {secretName: root}\n", "exactly one"),
            ("  {}\n", "exactly one"),
            ("  vault: {}\n", "vault"),
            ("  acme: {server: 'https://acme.example/dir'}\n", "privateKeySecretRef"),
            ("  acme: {server: 'http://acme.example/dir', privateKeySecretRef: {name: a}}\n", "spec.acme.server"),
            (&format!("{acme}    solvers: [{{http01: {{gatewayHTTPRoute: {{}}}}}}]\n"), "parentRefs"),
            (&format!("{acme}    solvers: [{{tlsalpn01: {{}}}}]\n"), "tlsalpn01"),
        ] {
            let e = crate::parse_manifests("i.yaml", &format!("{base}{body}")).map(|_| ()).unwrap_err().to_string();
            assert!(e.contains(field), "{body}: {e}");
        }
    }
}
