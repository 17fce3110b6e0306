//! The Secret a Certificate keeps its key and certificate in: read back into what it says of itself, and written as
//! cert-manager writes it (`tls.crt` with the chain, `tls.key`, `ca.crt`, and its annotations).

use std::collections::BTreeMap;

use base64::Engine;
use capstan_model::certificate::{Certificate, CERT_MANAGER_GROUP};
use capstan_model::gitops::SecretSpec;
use capstan_model::meta::API_VERSION;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::CertificateDer;
use serde_json::{json, Value};
use x509_parser::extensions::GeneralName;

use crate::issue::Signed;
use crate::keys::Key;
use crate::plan::{Current, Unusable};

pub const ANN_CERTIFICATE: &str = "cert-manager.io/certificate-name";
pub const ANN_ISSUER_NAME: &str = "cert-manager.io/issuer-name";
pub const ANN_ISSUER_KIND: &str = "cert-manager.io/issuer-kind";
pub const ANN_ISSUER_GROUP: &str = "cert-manager.io/issuer-group";

/// The spec of a stored Secret object.
pub fn spec_of(secret: &Value) -> Result<SecretSpec, String> {
    serde_json::from_value(secret["spec"].clone()).map_err(|e| format!("the Secret does not decode: {e}"))
}

/// What `secret` (a stored Secret object, or none) holds, as the plan reads it; the key too, to keep it.
pub fn read(secret: Option<&Value>) -> (Result<Current, Unusable>, Option<Key>) {
    let Some(secret) = secret else { return (Err(Unusable::Missing), None) };
    let spec = match spec_of(secret) {
        Ok(s) => s,
        Err(e) => return (Err(Unusable::Invalid(e)), None),
    };
    let (Some(crt), Some(key)) = (spec.value("tls.crt"), spec.value("tls.key")) else {
        return (Err(Unusable::MissingData), None);
    };
    if crt.is_empty() || key.is_empty() {
        return (Err(Unusable::MissingData), None);
    }
    let key = match Key::from_pem(&key) {
        Ok(k) => k,
        Err(e) => return (Err(Unusable::Invalid(e.to_string())), None),
    };
    let ann = |k: &str| secret["metadata"]["annotations"][k].as_str().map(str::to_string);
    let issuer = ann(ANN_ISSUER_NAME).map(|n| (n, ann(ANN_ISSUER_KIND).unwrap_or_else(|| "Issuer".into())));
    match facts(&crt, &key) {
        Ok(mut c) => {
            c.issuer = issuer;
            (Ok(c), Some(key))
        }
        Err(e) => (Err(Unusable::Invalid(e)), Some(key)),
    }
}

/// The leaf of `chain_pem` and whether `key` is its key.
pub fn facts(chain_pem: &[u8], key: &Key) -> Result<Current, String> {
    let der = CertificateDer::pem_slice_iter(chain_pem)
        .next()
        .and_then(Result::ok)
        .ok_or_else(|| "tls.crt holds no PEM certificate".to_string())?;
    let (_, cert) = x509_parser::parse_x509_certificate(&der)
        .map_err(|_| "tls.crt is not a valid X.509 certificate".to_string())?;
    let time = |t: x509_parser::time::ASN1Time| chrono::DateTime::from_timestamp(t.timestamp(), 0).unwrap_or_default();
    let mut c = Current {
        not_before: time(cert.validity().not_before),
        not_after: time(cert.validity().not_after),
        common_name: cert.subject().iter_common_name().next().and_then(|n| n.as_str().ok()).map(str::to_string),
        dns_names: vec![],
        ip_addresses: vec![],
        uris: vec![],
        email_addresses: vec![],
        is_ca: cert.is_ca(),
        key_algorithm: key.algorithm,
        key_matches: false,
        issuer: None,
    };
    if let Ok(Some(san)) = cert.subject_alternative_name() {
        for n in &san.value.general_names {
            match n {
                GeneralName::DNSName(d) => c.dns_names.push(d.to_string()),
                GeneralName::URI(u) => c.uris.push(u.to_string()),
                GeneralName::RFC822Name(e) => c.email_addresses.push(e.to_string()),
                GeneralName::IPAddress(b) => {
                    let ip = match b.len() {
                        4 => <[u8; 4]>::try_from(*b).ok().map(|a| std::net::IpAddr::from(a).to_string()),
                        16 => <[u8; 16]>::try_from(*b).ok().map(|a| std::net::IpAddr::from(a).to_string()),
                        _ => None,
                    };
                    c.ip_addresses.extend(ip);
                }
                _ => {}
            }
        }
    }
    let kp = key.key_pair().map_err(|e| e.to_string())?;
    c.key_matches = cert.public_key().raw == rcgen::PublicKeyData::subject_public_key_info(&kp).as_slice();
    Ok(c)
}

/// The Secret for `cert`, holding `signed` and `key`; `existing` (the stored Secret) keeps its other keys, labels,
/// annotations and type, as cert-manager leaves them: a Certificate pointed at a Secret that holds other values
/// adds its three keys and loses none.
pub fn build(cert: &Certificate, signed: &Signed, key_pem: &str, existing: Option<&Value>) -> Value {
    let b64 = |s: &str| base64::engine::general_purpose::STANDARD.encode(s.as_bytes());
    let mut data: BTreeMap<String, String> = existing
        .and_then(|e| spec_of(e).ok())
        .map(|s| {
            let mut d = s.data.clone();
            for (k, v) in &s.string_data {
                d.insert(k.clone(), b64(v));
            }
            d
        })
        .unwrap_or_default();
    data.insert("tls.crt".into(), b64(&signed.chain_pem));
    data.insert("tls.key".into(), b64(key_pem));
    // An ACME server's root is not known from what it returns: no ca.crt, as cert-manager writes it.
    if signed.ca_pem.is_empty() {
        data.remove("ca.crt");
    } else {
        data.insert("ca.crt".into(), b64(&signed.ca_pem));
    }
    // A Secret's type does not change (Kubernetes refuses it): one made by hand as Opaque stays so.
    let type_ =
        existing.and_then(|e| e["spec"]["type"].as_str()).unwrap_or(capstan_model::gitops::TLS_SECRET_TYPE).to_string();
    let mut annotations: BTreeMap<String, String> =
        existing.and_then(|e| serde_json::from_value(e["metadata"]["annotations"].clone()).ok()).unwrap_or_default();
    let mut labels: BTreeMap<String, String> =
        existing.and_then(|e| serde_json::from_value(e["metadata"]["labels"].clone()).ok()).unwrap_or_default();
    if let Some(t) = &cert.spec.secret_template {
        annotations.extend(t.annotations.clone());
        labels.extend(t.labels.clone());
    }
    let s = &cert.spec;
    annotations.insert(ANN_CERTIFICATE.into(), cert.metadata.name.clone());
    annotations.insert(ANN_ISSUER_NAME.into(), s.issuer_ref.name.clone());
    annotations.insert(ANN_ISSUER_KIND.into(), s.issuer_ref.kind().to_string());
    annotations
        .insert(ANN_ISSUER_GROUP.into(), s.issuer_ref.group.clone().unwrap_or_else(|| CERT_MANAGER_GROUP.into()));
    annotations.insert("cert-manager.io/common-name".into(), s.common_name.clone().unwrap_or_default());
    annotations.insert("cert-manager.io/alt-names".into(), s.dns_names.join(","));
    annotations.insert("cert-manager.io/ip-sans".into(), s.ip_addresses.join(","));
    annotations.insert("cert-manager.io/uri-sans".into(), s.uris.join(","));
    labels.insert("controller.cert-manager.io/fao".into(), "true".into());
    json!({
        "apiVersion": API_VERSION,
        "kind": "Secret",
        "metadata": {
            "name": s.secret_name,
            "namespace": cert.metadata.namespace(),
            "labels": labels,
            "annotations": annotations,
        },
        "spec": {"type": type_, "data": data},
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use capstan_model::certificate::{CertificateSpec, IssuerRef};
    use chrono::Utc;

    #[test]
    fn a_secret_that_held_other_values_keeps_them_and_its_type() {
        let cert = Certificate {
            api_version: "cert-manager.io/v1".into(),
            kind: "Certificate".into(),
            metadata: capstan_model::ObjectMeta { name: "web".into(), ..Default::default() },
            spec: CertificateSpec {
                secret_name: "shared".into(),
                dns_names: vec!["web.example.com".into()],
                issuer_ref: IssuerRef { name: "self".into(), ..Default::default() },
                ..Default::default()
            },
            status: None,
        };
        let key = Key::generate(capstan_model::certificate::KeyAlgorithm::Ecdsa(256)).expect("a key");
        let signed =
            crate::issue::sign(&cert.spec, &key, crate::issue::Signer::SelfSigned, Utc::now()).expect("signed");
        let existing = json!({"kind": "Secret", "metadata": {"name": "shared", "labels": {"team": "a"}},
                              "spec": {"type": "Opaque", "stringData": {"password": "s3cret"}, "data": {"user": "YWRh"}}});
        let written = build(&cert, &signed, &key.to_pem(false).expect("pem"), Some(&existing));
        let spec = spec_of(&written).expect("a Secret");
        assert_eq!(spec.value("password").as_deref(), Some(&b"s3cret"[..]), "values kept");
        assert_eq!(spec.value("user").as_deref(), Some(&b"ada"[..]));
        assert_eq!(written["spec"]["type"], "Opaque");
        assert_eq!(written["metadata"]["labels"]["team"], "a");
        let (current, _) = read(Some(&written));
        let current = current.expect("readable");
        assert!(current.key_matches && current.dns_names == ["web.example.com"]);
        assert_eq!(current.issuer, Some(("self".into(), "Issuer".into())));
        let fresh = build(&cert, &signed, &key.to_pem(true).expect("pem"), None);
        assert_eq!(fresh["spec"]["type"], "kubernetes.io/tls");
    }
}
