//! cert-manager's ACME issuer (`spec.acme` of an Issuer), with cert-manager's field names, and the HTTP-01 answers
//! Capstan's Gateways serve while an order is validated.

use std::collections::BTreeMap;

use base64::Engine;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::gateway::ParentReference;
use crate::validate::{check_dns_label, FieldError};

/// An ACME server and the account Capstan holds on it.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct AcmeIssuer {
    /// The server's directory URL (`https://acme-v02.api.letsencrypt.org/directory`).
    pub server: String,
    /// The account's contact address.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub email: Option<String>,
    /// The Secret the account's private key is kept in (`tls.key` by default); made when it does not exist.
    pub private_key_secret_ref: SecretKeySelector,
    /// Binds the account to one the CA already knows (ZeroSSL, Google, private CAs).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub external_account_binding: Option<ExternalAccountBinding>,
    /// PEM CA certificates, base64-encoded, that the server's certificate is checked against instead of the
    /// system's.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ca_bundle: Option<String>,
    /// Do not check the server's certificate (a test server only).
    #[serde(default, rename = "skipTLSVerify", skip_serializing_if = "std::ops::Not::not")]
    pub skip_tls_verify: bool,
    /// The chain whose top certificate has this common name, when the server offers several: taken for a cluster;
    /// Capstan serves the server's default chain.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub preferred_chain: Option<String>,
    /// Fail rather than make an account key when the Secret is missing.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub disable_account_key_generation: bool,
    /// Ask the server for the Certificate's `duration`: taken for a cluster's cert-manager; Capstan's ACME client
    /// asks for none (the server's lifetime, which most public CAs impose anyway).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub enable_duration_feature: bool,
    /// The certificate profile to ask for (ACME profiles), when the server offers it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub profile: Option<String>,
    /// How challenges are answered, the first that matches a name.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub solvers: Vec<AcmeSolver>,
}

/// A key in a Secret of the Issuer's namespace.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct SecretKeySelector {
    pub name: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub key: Option<String>,
}

impl SecretKeySelector {
    /// The key, `default` when not given.
    pub fn key_or<'a>(&'a self, default: &'a str) -> &'a str {
        self.key.as_deref().unwrap_or(default)
    }
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ExternalAccountBinding {
    /// The key identifier the CA gave.
    #[serde(rename = "keyID")]
    pub key_id: String,
    /// The Secret holding the HMAC key, base64url-encoded as CAs hand it out.
    pub key_secret_ref: SecretKeySelector,
    /// Deprecated in cert-manager (HS256 is always used): taken and ignored.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub key_algorithm: Option<String>,
}

/// One way of answering challenges, for the names its selector picks (every name without one).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct AcmeSolver {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub selector: Option<SolverSelector>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub http01: Option<Http01Solver>,
    /// DNS-01 through a DNS provider: taken for a cluster's cert-manager; not solved on the embedded runtime.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(with = "Option<BTreeMap<String, serde_json::Value>>")]
    pub dns01: Option<serde_json::Value>,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct SolverSelector {
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub match_labels: BTreeMap<String, String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub dns_names: Vec<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub dns_zones: Vec<String>,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Http01Solver {
    /// Answered on Gateway listeners: the `parentRefs` name them.
    #[serde(default, rename = "gatewayHTTPRoute", skip_serializing_if = "Option::is_none")]
    pub gateway_http_route: Option<GatewayHttpRouteSolver>,
    /// Through an Ingress controller: taken for a cluster's cert-manager; not solved on the embedded runtime.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(with = "Option<BTreeMap<String, serde_json::Value>>")]
    pub ingress: Option<serde_json::Value>,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct GatewayHttpRouteSolver {
    /// The Gateways (or their listeners) whose HTTP listeners answer `/.well-known/acme-challenge/`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub parent_refs: Vec<ParentReference>,
    /// Labels of the HTTPRoute cert-manager makes: taken for a cluster.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub labels: BTreeMap<String, String>,
    /// The solver Service's type on a cluster.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub service_type: Option<String>,
    /// The solver pod's template on a cluster.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(with = "Option<BTreeMap<String, serde_json::Value>>")]
    pub pod_template: Option<serde_json::Value>,
}

/// What an ACME Issuer says of its account, as cert-manager writes it.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct AcmeIssuerStatus {
    /// The account's URL on the server.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub uri: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_registered_email: Option<String>,
    /// The SHA-256 of the account key the account was registered with, hex.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_private_key_hash: Option<String>,
}

impl AcmeSolver {
    /// How well this solver's selector picks `name` of a Certificate labelled `labels`: None when it does not; a
    /// greater rank for a more specific selector (cert-manager's order: a dnsNames match, then the longest
    /// dnsZones match, then the most labels).
    pub fn rank(&self, name: &str, labels: &BTreeMap<String, String>) -> Option<(u8, usize, usize)> {
        let Some(s) = &self.selector else { return Some((0, 0, 0)) };
        if !s.match_labels.iter().all(|(k, v)| labels.get(k) == Some(v)) {
            return None;
        }
        // A dnsNames entry picks that exact name (a wildcard picks the wildcard); a zone picks its names and their
        // wildcards.
        let by_name = s.dns_names.iter().any(|n| n.eq_ignore_ascii_case(name));
        let bare = name.trim_start_matches("*.");
        let zone = s
            .dns_zones
            .iter()
            .filter(|z| {
                bare.eq_ignore_ascii_case(z)
                    || bare.to_ascii_lowercase().ends_with(&format!(".{}", z.to_ascii_lowercase()))
            })
            .map(String::len)
            .max();
        if !s.dns_names.is_empty() && !by_name && (s.dns_zones.is_empty() || zone.is_none()) {
            return None;
        }
        if s.dns_names.is_empty() && !s.dns_zones.is_empty() && zone.is_none() {
            return None;
        }
        Some((u8::from(by_name), zone.unwrap_or(0), s.match_labels.len()))
    }
}

/// The solver of `name` among `solvers`: the most specific selector that picks it, the first of equals.
pub fn solver_for<'a>(
    solvers: &'a [AcmeSolver],
    name: &str,
    labels: &BTreeMap<String, String>,
) -> Option<&'a AcmeSolver> {
    let mut best: Option<(&AcmeSolver, (u8, usize, usize))> = None;
    for s in solvers {
        if let Some(r) = s.rank(name, labels) {
            if best.is_none_or(|(_, b)| r > b) {
                best = Some((s, r));
            }
        }
    }
    best.map(|(s, _)| s)
}

pub fn validate_acme(acme: &AcmeIssuer, errors: &mut Vec<FieldError>) {
    match acme.server.split_once("://") {
        Some(("https", rest)) if !rest.is_empty() => {}
        _ => errors.push(
            FieldError::new("spec.acme.server", format!("`{}` is not an https:// URL", acme.server))
                .hint("Let's Encrypt: `https://acme-v02.api.letsencrypt.org/directory`"),
        ),
    }
    if let Some(e) = &acme.email {
        if !e.split_once('@').is_some_and(|(a, b)| !a.is_empty() && !b.is_empty()) {
            errors.push(FieldError::new("spec.acme.email", format!("`{e}` is not an email address")));
        }
    }
    if let Err(e) = check_dns_label(&acme.private_key_secret_ref.name, 253) {
        errors.push(
            FieldError::new("spec.acme.privateKeySecretRef.name", e)
                .hint("the Secret the account key is kept in, made when missing: `letsencrypt-account`"),
        );
    }
    if let Some(eab) = &acme.external_account_binding {
        if eab.key_id.is_empty() {
            errors.push(
                FieldError::new("spec.acme.externalAccountBinding.keyID", "is empty").hint("the key ID your CA gave"),
            );
        }
        if let Err(e) = check_dns_label(&eab.key_secret_ref.name, 253) {
            errors.push(FieldError::new("spec.acme.externalAccountBinding.keySecretRef.name", e));
        }
    }
    if let Some(bundle) = &acme.ca_bundle {
        if acme.skip_tls_verify {
            errors.push(
                FieldError::new("spec.acme.caBundle", "and skipTLSVerify cannot both be given")
                    .hint("keep caBundle: the server's certificate is then checked against it"),
            );
        }
        let pem = base64::engine::general_purpose::STANDARD.decode(bundle.trim());
        if !pem.is_ok_and(|p| String::from_utf8_lossy(&p).contains("-----BEGIN CERTIFICATE-----")) {
            errors.push(
                FieldError::new("spec.acme.caBundle", "is not base64-encoded PEM certificates")
                    .hint("`base64 -w0 ca.pem`"),
            );
        }
    }
    for (i, s) in acme.solvers.iter().enumerate() {
        let at = format!("spec.acme.solvers[{i}]");
        if s.http01.is_none() && s.dns01.is_none() {
            errors.push(
                FieldError::new(at.clone(), "needs http01 or dns01")
                    .hint("`http01: {gatewayHTTPRoute: {parentRefs: [{name: web, sectionName: http}]}}`"),
            );
        }
        if let Some(h) = &s.http01 {
            match (&h.gateway_http_route, &h.ingress) {
                (Some(g), None) if g.parent_refs.is_empty() => errors.push(
                    FieldError::new(format!("{at}.http01.gatewayHTTPRoute.parentRefs"), "is empty")
                        .hint("the Gateways whose HTTP listeners answer the challenges: `[{name: web}]`"),
                ),
                (Some(_), Some(_)) | (None, None) => errors
                    .push(FieldError::new(format!("{at}.http01"), "needs exactly one of gatewayHTTPRoute and ingress")),
                _ => {}
            }
        }
    }
}

/// An ACME challenge being answered on the listeners the parentRefs select. HTTP-01: requests for
/// `http://{host}/.well-known/acme-challenge/{token}` on their HTTP listeners get the key authorization, and nothing
/// else. TLS-ALPN-01 (`tls_alpn`): handshakes for `host` offering only the `acme-tls/1` protocol on their HTTPS
/// listeners get the challenge's certificate, and the connection ends there.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct ChallengeAnswer {
    /// The namespace of the Certificate, which is the namespace the parentRefs are read from.
    pub namespace: String,
    pub parent_refs: Vec<ParentReference>,
    pub host: String,
    pub token: String,
    pub key_authorization: String,
    /// TLS-ALPN-01's certificate and key (PEM), made for the key authorization (RFC 8737); None for HTTP-01.
    pub tls_alpn: Option<(String, String)>,
}

/// The Issuer annotation that has Capstan answer TLS-ALPN-01 on the HTTPS listeners of its HTTP-01 solvers'
/// parentRefs instead (cert-manager has no TLS-ALPN-01 solver: on a cluster the annotation rides along, ignored,
/// and cert-manager answers HTTP-01 as the solvers say).
pub const CHALLENGE_ANNOTATION: &str = "capstan.dev/acme-challenge";
/// Its value for TLS-ALPN-01.
pub const TLS_ALPN_01: &str = "tls-alpn-01";

impl ChallengeAnswer {
    pub fn path(&self) -> String {
        format!("/.well-known/acme-challenge/{}", self.token)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn solver(names: &[&str], zones: &[&str], labels: &[(&str, &str)]) -> AcmeSolver {
        AcmeSolver {
            selector: Some(SolverSelector {
                match_labels: labels.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect(),
                dns_names: names.iter().map(|s| s.to_string()).collect(),
                dns_zones: zones.iter().map(|s| s.to_string()).collect(),
            }),
            http01: Some(Http01Solver::default()),
            dns01: None,
        }
    }

    #[test]
    fn the_most_specific_solver_is_chosen() {
        let any = AcmeSolver { http01: Some(Http01Solver::default()), ..Default::default() };
        let zone = solver(&[], &["example.com"], &[]);
        let sub = solver(&[], &["shop.example.com"], &[]);
        let name = solver(&["api.example.com"], &[], &[]);
        let labelled = solver(&[], &[], &[("team", "a")]);
        let all = [any.clone(), zone.clone(), sub.clone(), name.clone(), labelled.clone()];
        let none = BTreeMap::new();
        assert_eq!(solver_for(&all, "api.example.com", &none), Some(&name));
        assert_eq!(solver_for(&all, "www.shop.example.com", &none), Some(&sub));
        assert_eq!(solver_for(&all, "www.example.com", &none), Some(&zone));
        assert_eq!(solver_for(&all, "other.org", &none), Some(&any));
        let team: BTreeMap<String, String> = [("team".to_string(), "a".to_string())].into();
        assert_eq!(solver_for(&all, "other.org", &team), Some(&labelled));
        assert_eq!(solver_for(std::slice::from_ref(&zone), "example.org", &none), None, "outside its zone");
        assert_eq!(solver_for(std::slice::from_ref(&zone), "notexample.com", &none), None, "a zone is a whole label");
        assert_eq!(solver_for(std::slice::from_ref(&zone), "*.example.com", &none), Some(&zone), "and its wildcards");
        let wild = solver(&["*.example.org"], &[], &[]);
        assert_eq!(solver_for(std::slice::from_ref(&wild), "example.org", &none), None, "a wildcard is its own name");
        assert_eq!(solver_for(std::slice::from_ref(&wild), "*.example.org", &none), Some(&wild));
    }

    #[test]
    fn bad_acme_fields_are_named() {
        let acme = AcmeIssuer {
            server: "http://acme.example/dir".into(),
            email: Some("nobody".into()),
            private_key_secret_ref: SecretKeySelector { name: "Bad_Name".into(), key: None },
            ca_bundle: Some("not base64!".into()),
            skip_tls_verify: true,
            solvers: vec![
                AcmeSolver::default(),
                AcmeSolver {
                    http01: Some(Http01Solver {
                        gateway_http_route: Some(GatewayHttpRouteSolver::default()),
                        ..Default::default()
                    }),
                    ..Default::default()
                },
            ],
            ..Default::default()
        };
        let mut errors = Vec::new();
        validate_acme(&acme, &mut errors);
        let fields: Vec<&str> = errors.iter().map(|e| e.path.as_str()).collect();
        assert_eq!(
            fields,
            [
                "spec.acme.server",
                "spec.acme.email",
                "spec.acme.privateKeySecretRef.name",
                "spec.acme.caBundle",
                "spec.acme.caBundle",
                "spec.acme.solvers[0]",
                "spec.acme.solvers[1].http01.gatewayHTTPRoute.parentRefs"
            ]
        );
    }
}
