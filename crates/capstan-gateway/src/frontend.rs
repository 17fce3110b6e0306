//! Client certificates a Gateway asks for on a port (`spec.tls.frontend`): the CA bundles its references name, read
//! from ConfigMaps or Secrets (`ca.crt`), with ReferenceGrants for another namespace's.

use std::sync::Arc;

use capstan_model::config_map::ConfigMap;
use capstan_model::gateway::{FrontendValidation, FrontendValidationMode, Gateway};
use capstan_model::Secret;
use capstan_proxy::client_auth::ClientAuth;

use crate::compile::Grants;

/// Why a port's client certificates cannot be checked: the listener's `ResolvedRefs` reason, and the message.
pub(crate) type Refused = (&'static str, String);

/// The CAs of `v`, as the port's handshakes will check them.
pub(crate) fn client_auth(
    g: &Gateway,
    v: &FrontendValidation,
    config_maps: &[ConfigMap],
    secrets: &[Secret],
    grants: Grants,
) -> Result<Arc<ClientAuth>, Refused> {
    let gw_ns = g.metadata.namespace();
    let mut bundles = Vec::new();
    for (i, r) in v.ca_certificate_refs.iter().enumerate() {
        let kind = r.kind.as_deref().unwrap_or("ConfigMap");
        let ns = r.namespace.as_deref().unwrap_or(gw_ns);
        let name = format!("{kind} {ns}/{}", r.name);
        if r.group.as_deref().is_some_and(|g| !g.is_empty()) || !matches!(kind, "ConfigMap" | "Secret") {
            return Err((
                "InvalidCACertificateKind",
                format!("caCertificateRefs[{i}] names a {kind}; CA bundles are ConfigMaps or Secrets (key ca.crt)"),
            ));
        }
        if !grants.allow("Gateway", gw_ns, ("", kind), ns, &r.name) {
            return Err((
                "RefNotPermitted",
                format!("{name} is in another namespace, and no ReferenceGrant in {ns} lets Gateways of namespace {gw_ns} use it"),
            ));
        }
        let value = match kind {
            "ConfigMap" => config_maps
                .iter()
                .find(|c| c.metadata.namespace() == ns && c.metadata.name == r.name)
                .map(|c| c.spec.value("ca.crt")),
            _ => secrets
                .iter()
                .find(|s| s.metadata.namespace() == ns && s.metadata.name == r.name)
                .map(|s| s.spec.value("ca.crt")),
        };
        match value {
            None => return Err(("InvalidCACertificateRef", format!("{name} does not exist"))),
            Some(None) => {
                return Err(("InvalidCACertificateRef", format!("{name} has no ca.crt (the CA certificates, PEM)")))
            }
            Some(Some(pem)) => bundles.push((name, pem)),
        }
    }
    let fallback = v.mode == FrontendValidationMode::AllowInsecureFallback;
    ClientAuth::new(&bundles, fallback).map(Arc::new).map_err(|e| ("InvalidCACertificateRef", e))
}
