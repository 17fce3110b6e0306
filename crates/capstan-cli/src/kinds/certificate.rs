//! cert-manager's Issuers and Certificates in `get` and `describe`: who signs and whether it can; what a
//! certificate names, where it is kept, until when it is valid and when it is renewed.

use chrono::{DateTime, Utc};
use serde_json::Value;

use super::{first_line, ready_of};
use crate::commands::conditions_section;
use crate::output::age;

fn s(v: &Value) -> String {
    v.as_str().unwrap_or("").to_string()
}

/// `selfSigned`, `ca (Secret root-ca)` or `acme (acme-v02.api.letsencrypt.org)`.
fn signer(spec: &Value) -> String {
    if spec["selfSigned"].is_object() {
        "selfSigned".into()
    } else if let Some(secret) = spec["ca"]["secretName"].as_str() {
        format!("ca (Secret {secret})")
    } else if let Some(server) = spec["acme"]["server"].as_str() {
        let host = server.split_once("://").map_or(server, |(_, rest)| rest).split('/').next().unwrap_or_default();
        format!("acme ({host})")
    } else {
        String::new()
    }
}

pub fn issuer_columns() -> Vec<&'static str> {
    vec!["NAME", "TYPE", "READY", "MESSAGE", "AGE"]
}

pub fn issuer_cells(o: &Value) -> Vec<String> {
    let (ready, message) = ready_of(o);
    vec![signer(&o["spec"]), ready, first_line(&message, 60)]
}

pub fn describe_issuer(o: &Value, now: DateTime<Utc>, out: &mut String) {
    super::put_field(out, "Signs", signer(&o["spec"]));
    out.push_str(&conditions_section(&o["status"], now));
}

pub fn columns() -> Vec<&'static str> {
    vec!["NAME", "READY", "SECRET", "ISSUER", "EXPIRES", "RENEWAL", "AGE"]
}

/// `in 59d`, or `2h ago` for a time past; empty for none.
fn when(v: &Value, now: DateTime<Utc>) -> String {
    let Some(t) = v.as_str().and_then(|t| DateTime::parse_from_rfc3339(t).ok()) else { return String::new() };
    let t = t.with_timezone(&Utc);
    if t >= now {
        format!("in {}", age(Some(now), t))
    } else {
        format!("{} ago", age(Some(t), now))
    }
}

fn issuer_ref(spec: &Value) -> String {
    format!("{}/{}", spec["issuerRef"]["kind"].as_str().unwrap_or("Issuer"), s(&spec["issuerRef"]["name"]))
}

pub fn cells(o: &Value) -> Vec<String> {
    let now = Utc::now();
    let (ready, _) = ready_of(o);
    vec![
        ready,
        s(&o["spec"]["secretName"]),
        issuer_ref(&o["spec"]),
        when(&o["status"]["notAfter"], now),
        when(&o["status"]["renewalTime"], now),
    ]
}

/// The names a certificate carries, by kind.
fn names(spec: &Value) -> Vec<String> {
    let list = |k: &str, prefix: &str| -> Vec<String> {
        spec[k].as_array().into_iter().flatten().filter_map(Value::as_str).map(|v| format!("{prefix}{v}")).collect()
    };
    let mut out = list("dnsNames", "DNS:");
    out.extend(list("ipAddresses", "IP:"));
    out.extend(list("uris", "URI:"));
    out.extend(list("emailAddresses", "email:"));
    out
}

pub fn describe(o: &Value, now: DateTime<Utc>, out: &mut String) {
    let spec = &o["spec"];
    let st = &o["status"];
    let mut field = |k: &str, v: String| super::put_field(out, k, v);
    field("Secret", s(&spec["secretName"]));
    field("Issuer", issuer_ref(spec));
    field("Common name", s(&spec["commonName"]));
    field("Names", names(spec).join(", "));
    field("CA", if spec["isCA"] == true { "yes".into() } else { String::new() });
    let pk = &spec["privateKey"];
    field(
        "Private key",
        format!(
            "{} {}, {}, rotation {}",
            pk["algorithm"].as_str().unwrap_or("RSA"),
            pk["size"].as_u64().map(|n| n.to_string()).unwrap_or_else(|| match pk["algorithm"].as_str() {
                Some("ECDSA") => "256".into(),
                Some("Ed25519") => String::new(),
                _ => "2048".into(),
            }),
            pk["encoding"].as_str().unwrap_or("PKCS1"),
            pk["rotationPolicy"].as_str().unwrap_or("Always"),
        ),
    );
    field("Duration", spec["duration"].as_str().unwrap_or("2160h (default)").to_string());
    field("Not before", s(&st["notBefore"]));
    let not_after = s(&st["notAfter"]);
    field(
        "Not after",
        if not_after.is_empty() { not_after } else { format!("{not_after} ({})", when(&st["notAfter"], now)) },
    );
    let renewal = s(&st["renewalTime"]);
    field(
        "Renewal",
        if renewal.is_empty() { renewal } else { format!("{renewal} ({})", when(&st["renewalTime"], now)) },
    );
    field("Revision", st["revision"].as_u64().map(|r| r.to_string()).unwrap_or_default());
    if let Some(n) = st["failedIssuanceAttempts"].as_u64() {
        field("Failed attempts", format!("{n}, the last at {}", s(&st["lastFailureTime"])));
    }
    // What `describe` read from the Secret: the certificates served, leaf first.
    if let Some(chain) = o["chain"].as_array().filter(|c| !c.is_empty()) {
        out.push_str("Chain:\n");
        for line in chain.iter().filter_map(Value::as_str) {
            out.push_str(&format!("  {line}\n"));
        }
    }
    out.push_str(&conditions_section(st, now));
}

/// The certificates of a Secret's `tls.crt`, leaf first, one line each: subject, issuer, validity, names.
pub fn chain_of(secret: &Value) -> Vec<String> {
    use base64::Engine;
    let spec = &secret["spec"];
    let pem = match (spec["data"]["tls.crt"].as_str(), spec["stringData"]["tls.crt"].as_str()) {
        (Some(capstan_api::redact::MASK), _) | (_, Some(capstan_api::redact::MASK)) => {
            return vec!["the Secret's values are hidden from you (a role that may read Secrets shows them)".into()]
        }
        (Some(b64), _) => match base64::engine::general_purpose::STANDARD.decode(b64) {
            Ok(pem) => pem,
            Err(_) => return vec!["tls.crt is not base64".into()],
        },
        (None, Some(text)) => text.as_bytes().to_vec(),
        (None, None) => return vec!["the Secret holds no tls.crt yet".into()],
    };
    let mut out = Vec::new();
    for (i, block) in x509_parser::pem::Pem::iter_from_buffer(&pem).enumerate() {
        let line = match block {
            Err(_) => "a block that is not PEM".to_string(),
            Ok(p) => match p.parse_x509() {
                Err(_) => "a certificate that does not parse".to_string(),
                Ok(c) => {
                    let v = c.validity();
                    let sans: Vec<String> = c
                        .subject_alternative_name()
                        .ok()
                        .flatten()
                        .map(|e| e.value.general_names.iter().map(|n| n.to_string()).collect())
                        .unwrap_or_default();
                    let mut line = format!(
                        "{}. {} (issuer: {}), {} to {}",
                        i + 1,
                        c.subject(),
                        c.issuer(),
                        v.not_before.to_datetime().date(),
                        v.not_after.to_datetime().date()
                    );
                    if !sans.is_empty() {
                        line.push_str(&format!(", {}", sans.join(", ")));
                    }
                    line
                }
            },
        };
        out.push(line);
    }
    out
}

#[cfg(test)]
mod tests {
    use capstan_model::Kind;
    use chrono::Utc;
    use serde_json::json;

    use crate::kinds::describe;

    #[test]
    fn a_certificate_shows_its_names_expiry_renewal_and_issuer() {
        let now = Utc::now();
        let later = |h: i64| (now + chrono::Duration::hours(h)).to_rfc3339();
        let o = json!({
            "kind": "Certificate",
            "metadata": {"name": "shop", "namespace": "default", "creationTimestamp": later(-1)},
            "spec": {"secretName": "shop-tls", "dnsNames": ["shop.example.com"], "ipAddresses": ["127.0.0.1"],
                     "issuerRef": {"name": "ca"}, "privateKey": {"algorithm": "ECDSA"}},
            "status": {"notBefore": later(-1), "notAfter": later(24 * 90), "renewalTime": later(24 * 60), "revision": 2,
                       "conditions": [{"type": "Ready", "status": "True", "reason": "Ready", "message": "up to date",
                                       "lastTransitionTime": later(-1)}]},
        });
        let cells = super::cells(&o);
        assert_eq!(&cells[..3], &["True", "shop-tls", "Issuer/ca"]);
        assert!(cells[3].starts_with("in 89d") || cells[3].starts_with("in 90d"), "{cells:?}");
        assert!(cells[4].starts_with("in 59d") || cells[4].starts_with("in 60d"), "{cells:?}");
        let key = rcgen::KeyPair::generate().expect("a key");
        let leaf = rcgen::CertificateParams::new(vec!["shop.example.com".to_string()])
            .expect("params")
            .self_signed(&key)
            .expect("signed");
        use base64::Engine;
        let secret =
            json!({"spec": {"data": {"tls.crt": base64::engine::general_purpose::STANDARD.encode(leaf.pem())}}});
        let chain = super::chain_of(&secret);
        assert_eq!(chain.len(), 1, "{chain:?}");
        assert!(chain[0].starts_with("1. CN=rcgen self signed cert (issuer: CN=rcgen self signed cert)"), "{chain:?}");
        assert!(chain[0].ends_with("DNSName(shop.example.com)"), "{chain:?}");
        let hidden = super::chain_of(&json!({"spec": {"data": {"tls.crt": "<redacted>"}}}));
        assert!(hidden[0].contains("hidden from you"), "{hidden:?}");
        let written = super::chain_of(&json!({"spec": {"stringData": {"tls.crt": leaf.pem()}}}));
        assert_eq!(written, chain, "stringData read as data");
        let mut o = o;
        o["chain"] = chain.into();
        let text = describe(Kind::Certificate, &o, &json!({"items": []}), now);
        assert!(text.contains("Chain:\n  1. CN=rcgen self signed cert"), "{text}");
        for needle in [
            "shop-tls",
            "DNS:shop.example.com, IP:127.0.0.1",
            "ECDSA 256, PKCS1, rotation Always",
            "Revision:",
            "Ready",
        ] {
            assert!(text.contains(needle), "{needle} in {text}");
        }
        let issuer = json!({"kind": "Issuer", "metadata": {"name": "ca"}, "spec": {"ca": {"secretName": "root"}},
                            "status": {"conditions": [{"type": "Ready", "status": "False", "reason": "ErrGetKeyPair",
                                       "message": "secret \"root\" not found", "lastTransitionTime": later(0)}]}});
        assert_eq!(super::issuer_cells(&issuer), vec!["ca (Secret root)", "False", "secret \"root\" not found"]);
    }
}
