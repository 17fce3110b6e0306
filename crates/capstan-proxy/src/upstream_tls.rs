//! TLS to backends (Gateway API's BackendTLSPolicy): the name sent as SNI, the CAs the backend's certificate must
//! chain to (bundles, or the machine's own), and the names it must carry — the SNI name, or one of the policy's
//! subject alternative names (a DNS name, or a URI such as a SPIFFE ID).

use std::sync::{Arc, OnceLock};

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::client::{verify_server_cert_signed_by_trust_anchor, verify_server_name};
use rustls::crypto::CryptoProvider;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::server::ParsedCertificate;
use rustls::{DigitallySignedStruct, RootCertStore, SignatureScheme};

/// Where the trusted CAs come from.
#[derive(Debug, Clone)]
pub enum Roots {
    /// PEM bundles, each with the name of the object it came from (for errors).
    Bundles(Vec<(String, Vec<u8>)>),
    /// The machine's trusted CAs (`wellKnownCACertificates: System`).
    System,
}

/// A name the backend's certificate must carry.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub enum SubjectName {
    Dns(String),
    Uri(String),
}

/// How a backend is spoken to over TLS.
pub struct UpstreamTls {
    pub(crate) connector: tokio_rustls::TlsConnector,
    pub(crate) server_name: ServerName<'static>,
    /// The check the connector makes, kept to be asked directly.
    #[cfg_attr(not(test), allow(dead_code))]
    verifier: Arc<NamesVerifier>,
    /// What it checks: two with the same identity check the same.
    identity: (Vec<Vec<u8>>, bool, String, Vec<SubjectName>),
}

impl std::fmt::Debug for UpstreamTls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "TLS to backends as {}", self.identity.2)
    }
}

impl PartialEq for UpstreamTls {
    fn eq(&self, other: &Self) -> bool {
        self.identity == other.identity
    }
}

fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// The machine's trusted CAs, read once; what cannot be read is left out (and logged).
fn system_roots() -> &'static Result<Arc<RootCertStore>, String> {
    static ROOTS: OnceLock<Result<Arc<RootCertStore>, String>> = OnceLock::new();
    ROOTS.get_or_init(|| {
        let found = rustls_native_certs::load_native_certs();
        for e in &found.errors {
            tracing::warn!("the machine's CA certificates: {e}");
        }
        let mut roots = RootCertStore::empty();
        let (added, _) = roots.add_parsable_certificates(found.certs);
        match added {
            0 => Err("the machine has no trusted CA certificates (install ca-certificates)".into()),
            _ => Ok(Arc::new(roots)),
        }
    })
}

impl UpstreamTls {
    /// TLS to a backend as `hostname` (SNI), trusting `roots`; the certificate must carry `names` (one of them),
    /// or `hostname` when there are none. HTTP/1.1 is asked for by ALPN.
    pub fn new(roots: &Roots, hostname: &str, names: &[SubjectName]) -> Result<UpstreamTls, String> {
        let (store, ders, system) = match roots {
            Roots::System => (system_roots().clone()?, Vec::new(), true),
            Roots::Bundles(bundles) => {
                let mut store = RootCertStore::empty();
                let mut ders = Vec::new();
                for (name, pem) in bundles {
                    let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_slice_iter(pem)
                        .collect::<Result<_, _>>()
                        .map_err(|_| format!("{name}: ca.crt is not PEM certificates"))?;
                    if certs.is_empty() {
                        return Err(format!("{name}: ca.crt holds no certificate"));
                    }
                    for c in certs {
                        ders.push(c.to_vec());
                        store
                            .add(c)
                            .map_err(|_| format!("{name}: a certificate in ca.crt cannot be a trust anchor"))?;
                    }
                }
                ders.sort();
                (Arc::new(store), ders, false)
            }
        };
        let server_name = ServerName::try_from(hostname.to_string())
            .map_err(|_| format!("`{hostname}` cannot be sent as a server name"))?;
        let provider = provider();
        let mut names = names.to_vec();
        names.sort();
        let verifier = Arc::new(NamesVerifier { roots: store, names: names.clone(), provider: provider.clone() });
        let mut config = rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .map_err(|e| e.to_string())?
            .dangerous()
            .with_custom_certificate_verifier(verifier.clone())
            .with_no_client_auth();
        config.alpn_protocols = vec![b"http/1.1".to_vec()];
        Ok(UpstreamTls {
            connector: tokio_rustls::TlsConnector::from(Arc::new(config)),
            server_name,
            verifier,
            identity: (ders, system, hostname.to_string(), names),
        })
    }
}

/// WebPKI's chain check, then the names: the SNI name, or one of the policy's subject alternative names.
#[derive(Debug)]
struct NamesVerifier {
    roots: Arc<RootCertStore>,
    names: Vec<SubjectName>,
    provider: Arc<CryptoProvider>,
}

/// The URIs among a certificate's subject alternative names.
fn uri_names(der: &[u8]) -> Vec<String> {
    let Ok((_, cert)) = x509_parser::parse_x509_certificate(der) else { return Vec::new() };
    match cert.subject_alternative_name() {
        Ok(Some(san)) => san
            .value
            .general_names
            .iter()
            .filter_map(|n| match n {
                x509_parser::extensions::GeneralName::URI(u) => Some(u.to_string()),
                _ => None,
            })
            .collect(),
        _ => Vec::new(),
    }
}

impl ServerCertVerifier for NamesVerifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        let cert = ParsedCertificate::try_from(end_entity)?;
        let algs = self.provider.signature_verification_algorithms.all;
        verify_server_cert_signed_by_trust_anchor(&cert, &self.roots, intermediates, now, algs)?;
        if self.names.is_empty() {
            verify_server_name(&cert, server_name)?;
            return Ok(ServerCertVerified::assertion());
        }
        let uris = uri_names(end_entity);
        let matches = self.names.iter().any(|n| match n {
            SubjectName::Dns(d) => {
                ServerName::try_from(d.as_str()).is_ok_and(|name| verify_server_name(&cert, &name).is_ok())
            }
            SubjectName::Uri(u) => uris.iter().any(|x| x == u),
        });
        match matches {
            true => Ok(ServerCertVerified::assertion()),
            false => Err(rustls::Error::InvalidCertificate(rustls::CertificateError::NotValidForName)),
        }
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(message, cert, dss, &self.provider.signature_verification_algorithms)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(message, cert, dss, &self.provider.signature_verification_algorithms)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.provider.signature_verification_algorithms.supported_schemes()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A CA, and a leaf it signs with these subject alternative names.
    fn ca_and_leaf(sans: Vec<rcgen::SanType>) -> (String, CertificateDer<'static>) {
        let ca_key = rcgen::KeyPair::generate().expect("key");
        let mut ca = rcgen::CertificateParams::new(Vec::<String>::new()).expect("params");
        ca.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        ca.distinguished_name.push(rcgen::DnType::CommonName, "test CA");
        let ca_cert = ca.self_signed(&ca_key).expect("ca");
        let key = rcgen::KeyPair::generate().expect("key");
        let mut leaf = rcgen::CertificateParams::new(Vec::<String>::new()).expect("params");
        leaf.subject_alt_names = sans;
        let issuer = rcgen::Issuer::new(ca, &ca_key);
        let cert = leaf.signed_by(&key, &issuer).expect("leaf");
        (ca_cert.pem(), cert.der().clone())
    }

    /// What the TLS settings' own verifier says of `leaf` presented for `sni`.
    fn verify(tls: &UpstreamTls, leaf: &CertificateDer<'_>, sni: &str) -> Result<(), rustls::Error> {
        let name = ServerName::try_from(sni.to_string()).expect("name");
        tls.verifier.verify_server_cert(leaf, &[], &name, &[], UnixTime::now()).map(|_| ())
    }

    #[test]
    fn the_sni_name_or_the_policys_subject_names_decide() {
        let uri = "spiffe://example.org/auth";
        let (ca, leaf) = ca_and_leaf(vec![
            rcgen::SanType::DnsName("auth.example.test".try_into().expect("dns")),
            rcgen::SanType::URI(uri.try_into().expect("uri")),
        ]);
        let roots = Roots::Bundles(vec![("ConfigMap default/ca".into(), ca.clone().into_bytes())]);
        let by_name = UpstreamTls::new(&roots, "auth.example.test", &[]).expect("tls");
        assert_eq!(by_name.server_name, ServerName::try_from("auth.example.test").expect("name"), "the SNI sent");
        assert!(verify(&by_name, &leaf, "auth.example.test").is_ok());
        assert!(verify(&by_name, &leaf, "other.example.test").is_err(), "not its name");
        let by_uri = UpstreamTls::new(&roots, "other.example.test", &[SubjectName::Uri(uri.into())]).expect("tls");
        assert!(verify(&by_uri, &leaf, "other.example.test").is_ok(), "the URI decides, not the SNI name");
        let wrong_uri =
            UpstreamTls::new(&roots, "auth.example.test", &[SubjectName::Uri("spiffe://example.org/x".into())])
                .expect("tls");
        assert!(verify(&wrong_uri, &leaf, "auth.example.test").is_err(), "the SNI name no longer decides");
        // Settings that trust another CA refuse the leaf whatever its names.
        let (other_ca, _) = ca_and_leaf(vec![]);
        let other = UpstreamTls::new(
            &Roots::Bundles(vec![("ConfigMap default/other".into(), other_ca.into_bytes())]),
            "auth.example.test",
            &[],
        )
        .expect("tls");
        assert!(verify(&other, &leaf, "auth.example.test").is_err());
        assert_ne!(by_name, by_uri);
        assert_eq!(by_name, UpstreamTls::new(&roots, "auth.example.test", &[]).expect("tls"));
        let e = UpstreamTls::new(&Roots::Bundles(vec![("ConfigMap default/ca".into(), b"x".to_vec())]), "a.b", &[]);
        assert_eq!(e.unwrap_err(), "ConfigMap default/ca: ca.crt holds no certificate");
    }
}
