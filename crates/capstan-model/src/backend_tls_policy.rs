//! Gateway API's `BackendTLSPolicy`: the Gateway speaks TLS to a Service (an App, here) — the name it asks for and
//! checks, and the CAs the backend's certificate must chain to.

use std::collections::BTreeMap;

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::gateway::{check_hostname, limit, RouteParentStatus};
use crate::resource::Object;
use crate::validate::FieldError;

/// The `apiVersion` BackendTLSPolicies are written with: Gateway API's standard channel since v1.4 (`v1alpha3` is
/// taken too, as written).
pub const BACKEND_TLS_POLICY_API_VERSION: &str = "gateway.networking.k8s.io/v1";

/// A BackendTLSPolicy, with its status per Gateway that uses it.
pub type BackendTlsPolicy = Object<BackendTlsPolicySpec, PolicyStatus>;

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct BackendTlsPolicySpec {
    /// One to 16 Services (an App is its Service; `kind: App` in `capstan.dev` names it so), each whole or one port
    /// by name (`sectionName`).
    pub target_refs: Vec<PolicyTargetReference>,
    pub validation: BackendTlsValidation,
    /// Implementation-specific options.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub options: BTreeMap<String, String>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct PolicyTargetReference {
    /// The core group (empty) for a Service.
    #[serde(default)]
    pub group: String,
    pub kind: String,
    pub name: String,
    /// A port of the Service by name; every port without one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub section_name: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct BackendTlsValidation {
    /// One to 8 CA bundles in the policy's namespace: ConfigMaps (or Secrets) with PEM certificates under `ca.crt`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub ca_certificate_refs: Vec<LocalObjectReference>,
    /// `System`: the machine's trusted CAs, instead of `caCertificateRefs`.
    #[serde(default, rename = "wellKnownCACertificates", skip_serializing_if = "Option::is_none")]
    pub well_known_ca_certificates: Option<String>,
    /// The name sent as SNI, and the name the certificate must carry unless `subjectAltNames` says otherwise.
    pub hostname: String,
    /// Names the certificate must carry one of (a DNS name, or a URI such as a SPIFFE ID), instead of `hostname`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub subject_alt_names: Vec<SubjectAltName>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct LocalObjectReference {
    #[serde(default)]
    pub group: String,
    pub kind: String,
    pub name: String,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct SubjectAltName {
    /// `Hostname` or `URI`.
    #[serde(rename = "type")]
    pub type_: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hostname: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub uri: Option<String>,
}

/// A policy's status: one entry per Gateway that sends to its targets.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct PolicyStatus {
    #[serde(default)]
    pub ancestors: Vec<PolicyAncestorStatus>,
}

/// Gateway API's PolicyAncestorStatus: a route parent's status shape, keyed by `ancestorRef`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct PolicyAncestorStatus {
    pub ancestor_ref: crate::gateway::ParentReference,
    pub controller_name: String,
    pub conditions: Vec<crate::gateway::Condition>,
}

impl From<RouteParentStatus> for PolicyAncestorStatus {
    fn from(p: RouteParentStatus) -> Self {
        PolicyAncestorStatus {
            ancestor_ref: p.parent_ref,
            controller_name: p.controller_name,
            conditions: p.conditions,
        }
    }
}

impl BackendTlsPolicySpec {
    /// Whether it applies to port `port` of the App (Service) `app` in its own namespace.
    pub fn targets(&self, app: &str, port: &str) -> bool {
        self.target_refs.iter().any(|t| {
            let kind_ok = (t.group.is_empty() && t.kind == "Service") || (t.group == "capstan.dev" && t.kind == "App");
            kind_ok && t.name == app && t.section_name.as_deref().is_none_or(|s| s == port)
        })
    }
}

pub fn validate_backend_tls_policy(spec: &BackendTlsPolicySpec, errors: &mut Vec<FieldError>) {
    if spec.target_refs.is_empty() {
        errors.push(
            FieldError::new("spec.targetRefs", "is empty: the policy would apply to nothing")
                .hint("`targetRefs: [{group: \"\", kind: Service, name: my-app}]`"),
        );
    }
    limit(spec.target_refs.len(), 16, "spec.targetRefs", errors);
    for (i, t) in spec.target_refs.iter().enumerate() {
        let ok = (t.group.is_empty() && t.kind == "Service") || (t.group == "capstan.dev" && t.kind == "App");
        if !ok {
            errors.push(
                FieldError::new(format!("spec.targetRefs[{i}].kind"), format!("`{}` is not a Service", t.kind))
                    .hint("`group: \"\"` and `kind: Service` (an App is its Service)"),
            );
        }
    }
    let v = &spec.validation;
    match (v.ca_certificate_refs.is_empty(), v.well_known_ca_certificates.as_deref()) {
        (true, None) | (false, Some(_)) => errors.push(
            FieldError::new("spec.validation", "needs exactly one of caCertificateRefs and wellKnownCACertificates")
                .hint("`caCertificateRefs: [{group: \"\", kind: ConfigMap, name: backend-ca}]`, or `wellKnownCACertificates: System`"),
        ),
        (true, Some(w)) if w != "System" => errors.push(
            FieldError::new("spec.validation.wellKnownCACertificates", format!("`{w}` is not a set of CAs"))
                .hint("`System`, the machine's trusted CAs"),
        ),
        _ => {}
    }
    limit(v.ca_certificate_refs.len(), 8, "spec.validation.caCertificateRefs", errors);
    for (i, r) in v.ca_certificate_refs.iter().enumerate() {
        if !r.group.is_empty() || !matches!(r.kind.as_str(), "ConfigMap" | "Secret") {
            errors.push(
                FieldError::new(
                    format!("spec.validation.caCertificateRefs[{i}]"),
                    "must name a core ConfigMap or Secret",
                )
                .hint("`group: \"\"` and `kind: ConfigMap`, the CAs under `ca.crt`"),
            );
        }
    }
    if let Err(e) = check_hostname(&v.hostname) {
        errors.push(FieldError::new("spec.validation.hostname", e));
    } else if v.hostname.starts_with("*.") {
        errors.push(FieldError::new("spec.validation.hostname", "is sent as SNI: it cannot be a wildcard"));
    }
    limit(v.subject_alt_names.len(), 5, "spec.validation.subjectAltNames", errors);
    for (i, s) in v.subject_alt_names.iter().enumerate() {
        let at = format!("spec.validation.subjectAltNames[{i}]");
        match (s.type_.as_str(), &s.hostname, &s.uri) {
            ("Hostname", Some(h), None) => {
                if let Err(e) = check_hostname(h) {
                    errors.push(FieldError::new(format!("{at}.hostname"), e));
                }
            }
            ("URI", None, Some(u)) if u.contains(':') => {}
            ("Hostname", ..) => errors.push(FieldError::new(at, "a Hostname name needs `hostname` (and no `uri`)")),
            ("URI", ..) => errors.push(FieldError::new(at, "a URI name needs `uri`, such as spiffe://example.org/web")),
            (other, ..) => errors.push(
                FieldError::new(format!("{at}.type"), format!("`{other}` is not a name type"))
                    .hint("`Hostname` or `URI`"),
            ),
        }
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn a_policy_is_checked_by_field() {
        let policy = |validation: &str| {
            format!(
                "apiVersion: gateway.networking.k8s.io/v1\nkind: BackendTLSPolicy\nmetadata: {{name: p}}\nspec:\n  targetRefs: [{{group: '', kind: Service, name: auth, sectionName: https}}]\n  validation: {validation}\n"
            )
        };
        let ok = crate::parse_manifests(
            "p.yaml",
            &policy("{caCertificateRefs: [{group: '', kind: ConfigMap, name: ca}], hostname: auth.example.com}"),
        )
        .expect("a policy");
        let crate::Resource::BackendTLSPolicy(p) = &ok[0].resource else { panic!("a policy") };
        assert!(p.spec.targets("auth", "https") && !p.spec.targets("auth", "http") && !p.spec.targets("web", "https"));
        let old = policy("{wellKnownCACertificates: System, hostname: auth.example.com}")
            .replace("gateway.networking.k8s.io/v1\n", "gateway.networking.k8s.io/v1alpha3\n");
        let old = crate::parse_manifests("p.yaml", &old).expect("v1alpha3 as written");
        assert_eq!(old[0].resource.api_version(), "gateway.networking.k8s.io/v1alpha3");
        for (validation, field) in [
            ("{hostname: auth.example.com}", "spec.validation"),
            ("{wellKnownCACertificates: Mozilla, hostname: a.example.com}", "wellKnownCACertificates"),
            ("{wellKnownCACertificates: System, hostname: '*.example.com'}", "spec.validation.hostname"),
            ("{wellKnownCACertificates: System, hostname: Auth}", "spec.validation.hostname"),
            ("{caCertificateRefs: [{group: '', kind: Pod, name: x}], hostname: a.example.com}", "caCertificateRefs[0]"),
            ("{wellKnownCACertificates: System, hostname: a.example.com, subjectAltNames: [{type: URI}]}", "subjectAltNames[0]"),
            ("{wellKnownCACertificates: System, hostname: a.example.com, subjectAltNames: [{type: IP, hostname: x}]}", "subjectAltNames[0].type"),
        ] {
            let e = crate::parse_manifests("p.yaml", &policy(validation)).map(|_| ()).unwrap_err().to_string();
            assert!(e.contains(field), "{validation}: {e}");
        }
    }
}
