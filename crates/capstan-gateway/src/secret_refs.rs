//! The Secrets the front door reads: those its Gateways and BackendTLSPolicies name. Only these are read for a
//! pass, and only a change to one of them starts a pass — a thousand Certificates written into a thousand Secrets
//! no listener names cost the front door nothing.

use std::collections::BTreeSet;

use capstan_model::backend_tls_policy::BackendTlsPolicy;
use capstan_model::gateway::{Gateway, SecretObjectReference};

/// (namespace, name) of a Secret.
pub type SecretKey = (String, String);

/// Every Secret a Gateway's listeners, client-certificate validation or backend client certificate, or a
/// BackendTLSPolicy's CA references name.
pub fn secret_refs(gateways: &[Gateway], policies: &[BackendTlsPolicy]) -> BTreeSet<SecretKey> {
    let mut refs = BTreeSet::new();
    for g in gateways {
        let ns = g.metadata.namespace();
        // `default` is the kind a reference has when it names none.
        let mut add = |r: &SecretObjectReference, default: &str| {
            let core = r.group.as_deref().is_none_or(str::is_empty);
            if core && r.kind.as_deref().unwrap_or(default) == "Secret" {
                refs.insert((r.namespace.clone().unwrap_or_else(|| ns.to_string()), r.name.clone()));
            }
        };
        for tls in g.spec.listeners.iter().filter_map(|l| l.tls.as_ref()) {
            tls.certificate_refs.iter().for_each(|r| add(r, "Secret"));
            tls.frontend_validation.iter().flat_map(|v| &v.ca_certificate_refs).for_each(|r| add(r, "ConfigMap"));
        }
        if let Some(tls) = &g.spec.tls {
            let frontend = tls.frontend.iter().flat_map(|f| {
                std::iter::once(&f.default)
                    .chain(f.per_port.iter().map(|p| &p.tls))
                    .filter_map(|t| t.validation.as_ref())
            });
            frontend.flat_map(|v| &v.ca_certificate_refs).for_each(|r| add(r, "ConfigMap"));
            if let Some(r) = tls.backend.as_ref().and_then(|b| b.client_certificate_ref.as_ref()) {
                add(r, "Secret");
            }
        }
    }
    for p in policies {
        let ns = p.metadata.namespace();
        for r in p.spec.validation.ca_certificate_refs.iter().filter(|r| r.group.is_empty() && r.kind == "Secret") {
            refs.insert((ns.to_string(), r.name.clone()));
        }
    }
    refs
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn the_secrets_of_listeners_client_validation_and_policies_are_named() {
        let g: Gateway = serde_json::from_value(json!({
            "apiVersion": "gateway.networking.k8s.io/v1", "kind": "Gateway",
            "metadata": {"name": "web", "namespace": "shop"},
            "spec": {
                "gatewayClassName": "capstan",
                "tls": {
                    "frontend": {
                        "default": {"validation": {"caCertificateRefs": [
                            {"kind": "Secret", "name": "client-ca"}, {"name": "a-config-map"}]}},
                        "perPort": [{"port": 8443, "tls": {"validation": {"caCertificateRefs": [
                            {"kind": "Secret", "name": "port-ca", "namespace": "other"}]}}}]
                    },
                    "backend": {"clientCertificateRef": {"name": "to-backends"}}
                },
                "listeners": [
                    {"name": "https", "port": 443, "protocol": "HTTPS", "tls": {"certificateRefs": [
                        {"name": "shop-tls"}, {"name": "elsewhere", "namespace": "certs"},
                        {"kind": "Other", "group": "example.com", "name": "x"}]}},
                    {"name": "http", "port": 80, "protocol": "HTTP"}
                ]
            }
        }))
        .expect("a Gateway");
        let p: BackendTlsPolicy = serde_json::from_value(json!({
            "apiVersion": "gateway.networking.k8s.io/v1", "kind": "BackendTLSPolicy",
            "metadata": {"name": "p", "namespace": "api"},
            "spec": {
                "targetRefs": [{"group": "", "kind": "Service", "name": "api"}],
                "validation": {"hostname": "api.internal", "caCertificateRefs": [
                    {"group": "", "kind": "Secret", "name": "api-ca"},
                    {"group": "", "kind": "ConfigMap", "name": "cm"}]}
            }
        }))
        .expect("a policy");
        let refs = secret_refs(&[g], &[p]);
        let names: Vec<String> = refs.iter().map(|(ns, n)| format!("{ns}/{n}")).collect();
        assert_eq!(
            names,
            ["api/api-ca", "certs/elsewhere", "other/port-ca", "shop/client-ca", "shop/shop-tls", "shop/to-backends"]
        );
    }
}
