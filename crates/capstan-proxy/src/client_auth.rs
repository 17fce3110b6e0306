//! Client certificates on a TLS port (Gateway API's frontend validation): the CAs a client's certificate must chain
//! to, and whether a connection without a good one is refused or served anyway. The check is live: a changed CA
//! bundle applies to the next handshake, as a changed certificate does.

use std::sync::{Arc, RwLock};

use rustls::client::danger::HandshakeSignatureValid;
use rustls::crypto::CryptoProvider;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, UnixTime};
use rustls::server::danger::{ClientCertVerified, ClientCertVerifier};
use rustls::server::WebPkiClientVerifier;
use rustls::{DigitallySignedStruct, DistinguishedName, SignatureScheme};

/// What a port asks of clients' certificates.
pub struct ClientAuth {
    verifier: Arc<dyn ClientCertVerifier>,
    /// Serve connections without a good certificate too (`AllowInsecureFallback`).
    pub fallback: bool,
    /// The CAs (DER) and the mode: two settings with the same identity ask the same.
    identity: (Vec<Vec<u8>>, bool),
}

impl std::fmt::Debug for ClientAuth {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "client certificates from {} CAs (fallback: {})", self.identity.0.len(), self.fallback)
    }
}

impl PartialEq for ClientAuth {
    fn eq(&self, other: &Self) -> bool {
        self.identity == other.identity
    }
}

impl ClientAuth {
    /// Trusts the CA certificates in each PEM bundle (the `ca.crt` of each reference, named by `name`).
    pub fn new(bundles: &[(String, Vec<u8>)], fallback: bool) -> Result<ClientAuth, String> {
        let mut roots = rustls::RootCertStore::empty();
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
                roots.add(c).map_err(|_| format!("{name}: a certificate in ca.crt cannot be a trust anchor"))?;
            }
        }
        let verifier = WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider());
        let verifier = match fallback {
            true => verifier.allow_unauthenticated().build(),
            false => verifier.build(),
        }
        .map_err(|e| format!("the CA certificates cannot check clients: {e}"))?;
        ders.sort();
        Ok(ClientAuth { verifier, fallback, identity: (ders, fallback) })
    }
}

fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// The verifier a TLS socket is built with: it asks what its port's settings say at each handshake.
#[derive(Debug)]
pub(crate) struct LiveClientAuth {
    pub(crate) current: RwLock<Option<Arc<ClientAuth>>>,
    provider: Arc<CryptoProvider>,
    /// Bumped at each change of the settings: a session made before may not be resumed (see [`Sessions`]).
    generation: std::sync::atomic::AtomicU64,
}

impl Default for LiveClientAuth {
    fn default() -> Self {
        LiveClientAuth::new()
    }
}

impl LiveClientAuth {
    pub(crate) fn new() -> LiveClientAuth {
        LiveClientAuth { current: RwLock::new(None), provider: provider(), generation: Default::default() }
    }

    fn get(&self) -> Option<Arc<ClientAuth>> {
        self.current.read().unwrap_or_else(|p| p.into_inner()).clone()
    }

    pub(crate) fn set(&self, auth: Option<Arc<ClientAuth>>) {
        let mut current = self.current.write().unwrap_or_else(|p| p.into_inner());
        if *current != auth {
            self.generation.fetch_add(1, std::sync::atomic::Ordering::AcqRel);
        }
        *current = auth;
    }

    /// What backends are told of a connection's client certificate (`x-forwarded-client-cert`, in Envoy's form):
    /// its SHA-256, subject, URI and DNS names — only for a certificate the port's CAs accept, so that under
    /// `AllowInsecureFallback` an unchecked certificate is never passed off as checked.
    pub(crate) fn forwarded(&self, chain: &[CertificateDer<'_>]) -> Option<hyper::header::HeaderValue> {
        let auth = self.get()?;
        let (leaf, rest) = chain.split_first()?;
        auth.verifier.verify_client_cert(leaf, rest, UnixTime::now()).ok()?;
        let hash: String =
            ring::digest::digest(&ring::digest::SHA256, leaf).as_ref().iter().map(|b| format!("{b:02x}")).collect();
        let mut parts = vec![format!("Hash={hash}")];
        if let Ok((_, cert)) = x509_parser::parse_x509_certificate(leaf) {
            let subject = cert.subject().to_string().replace('\\', "\\\\").replace('"', "\\\"");
            parts.push(format!("Subject=\"{subject}\""));
            if let Ok(Some(san)) = cert.subject_alternative_name() {
                for n in &san.value.general_names {
                    match n {
                        x509_parser::extensions::GeneralName::URI(u) => parts.push(format!("URI={u}")),
                        x509_parser::extensions::GeneralName::DNSName(d) => parts.push(format!("DNS={d}")),
                        _ => {}
                    }
                }
            }
        }
        hyper::header::HeaderValue::from_str(&parts.join(";")).ok()
    }

    fn generation(&self) -> [u8; 8] {
        self.generation.load(std::sync::atomic::Ordering::Acquire).to_be_bytes()
    }
}

/// A socket's resumable TLS sessions, each under the client-certificate settings it was made with: resuming skips
/// the client's certificate, so a session made before the settings changed (without a certificate, or with one of a
/// CA since removed) is not resumed — the client does a full handshake and is checked again.
#[derive(Debug)]
pub(crate) struct Sessions {
    inner: Arc<dyn rustls::server::StoresServerSessions>,
    auth: Arc<LiveClientAuth>,
}

impl Sessions {
    pub(crate) fn new(auth: Arc<LiveClientAuth>) -> Sessions {
        Sessions { inner: rustls::server::ServerSessionMemoryCache::new(256), auth }
    }

    fn key(&self, key: &[u8]) -> Vec<u8> {
        let mut k = self.auth.generation().to_vec();
        k.extend_from_slice(key);
        k
    }
}

impl rustls::server::StoresServerSessions for Sessions {
    fn put(&self, key: Vec<u8>, value: Vec<u8>) -> bool {
        self.inner.put(self.key(&key), value)
    }

    fn get(&self, key: &[u8]) -> Option<Vec<u8>> {
        self.inner.get(&self.key(key))
    }

    fn take(&self, key: &[u8]) -> Option<Vec<u8>> {
        self.inner.take(&self.key(key))
    }

    fn can_cache(&self) -> bool {
        true
    }
}

impl ClientCertVerifier for LiveClientAuth {
    fn offer_client_auth(&self) -> bool {
        self.get().is_some()
    }

    fn client_auth_mandatory(&self) -> bool {
        self.get().is_some_and(|a| !a.fallback)
    }

    /// No CA names are sent: clients offer the certificate they were given (curl, browsers ask their user).
    fn root_hint_subjects(&self) -> &[DistinguishedName] {
        &[]
    }

    fn verify_client_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        now: UnixTime,
    ) -> Result<ClientCertVerified, rustls::Error> {
        let Some(auth) = self.get() else { return Ok(ClientCertVerified::assertion()) };
        match auth.verifier.verify_client_cert(end_entity, intermediates, now) {
            Err(_) if auth.fallback => Ok(ClientCertVerified::assertion()),
            other => other,
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

    fn ca() -> String {
        let key = rcgen::KeyPair::generate().expect("key");
        let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).expect("params");
        params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        params.self_signed(&key).expect("signed").pem()
    }

    #[test]
    fn bundles_are_read_and_compared_by_what_they_trust() {
        let (a, b) = (ca(), ca());
        let one = ClientAuth::new(&[("ConfigMap/a".into(), a.clone().into_bytes())], false).expect("a CA");
        let same = ClientAuth::new(&[("ConfigMap/x".into(), a.clone().into_bytes())], false).expect("a CA");
        let fallback = ClientAuth::new(&[("ConfigMap/a".into(), a.clone().into_bytes())], true).expect("a CA");
        let other = ClientAuth::new(&[("ConfigMap/b".into(), b.into_bytes())], false).expect("a CA");
        assert_eq!(one, same);
        assert_ne!(one, fallback);
        assert_ne!(one, other);
        let live = LiveClientAuth::new();
        assert!(!live.offer_client_auth());
        live.set(Some(Arc::new(one)));
        assert!(live.offer_client_auth() && live.client_auth_mandatory());
        let live = Arc::new(live);
        let sessions = Sessions::new(live.clone());
        use rustls::server::StoresServerSessions;
        assert!(sessions.put(b"id".to_vec(), b"session".to_vec()));
        assert_eq!(sessions.get(b"id").as_deref(), Some(&b"session"[..]));
        live.set(Some(Arc::new(fallback)));
        assert!(live.offer_client_auth() && !live.client_auth_mandatory());
        assert_eq!(sessions.get(b"id"), None, "a session made under other settings is not resumed");
        let again = ClientAuth::new(&[("ConfigMap/a".into(), a.clone().into_bytes())], true).expect("a CA");
        live.set(Some(Arc::new(again)));
        assert!(sessions.put(b"id2".to_vec(), b"s2".to_vec()));
        let same = ClientAuth::new(&[("ConfigMap/a".into(), a.clone().into_bytes())], true).expect("a CA");
        live.set(Some(Arc::new(same)));
        assert_eq!(sessions.take(b"id2").as_deref(), Some(&b"s2"[..]), "the same settings again keep sessions");
        let e = ClientAuth::new(&[("ConfigMap/ca".into(), b"nothing".to_vec())], false).unwrap_err();
        assert_eq!(e, "ConfigMap/ca: ca.crt holds no certificate");
        let garbage = b"-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n".to_vec();
        let e = ClientAuth::new(&[("Secret/ca".into(), garbage)], false).unwrap_err();
        assert!(e.starts_with("Secret/ca: "), "{e}");
    }
}
