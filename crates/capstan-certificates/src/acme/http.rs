//! The HTTP client the ACME protocol runs over: rustls checking the server against the system's roots, the Issuer's
//! `caBundle`, or nothing (`skipTLSVerify`); every request bounded in time; the last `Retry-After` a server sent with
//! a refusal kept for the backoff.

use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use bytes::Bytes;
use http::Request;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use instant_acme::{BodyWrapper, BytesResponse, HttpClient};
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{DigitallySignedStruct, SignatureScheme};

/// The longest an ACME server may take to answer one request.
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(30);

/// The largest answer read from an ACME server.
const MAX_BODY: usize = 1 << 20;

/// How the server's certificate is checked.
pub enum Trust {
    /// The system's CA certificates.
    System,
    /// These PEM CA certificates only (`caBundle`).
    Bundle(Vec<u8>),
    /// Not at all (`skipTLSVerify`).
    Nothing,
}

/// An ACME server's client, with the `Retry-After` of its last refusal (429 or 503).
#[derive(Clone)]
pub struct AcmeHttp {
    client: Client<hyper_rustls::HttpsConnector<HttpConnector>, BodyWrapper<Bytes>>,
    pub retry_after: Arc<Mutex<Option<SystemTime>>>,
}

impl AcmeHttp {
    pub fn new(trust: &Trust) -> Result<AcmeHttp, String> {
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let builder = rustls::ClientConfig::builder_with_provider(provider.clone())
            .with_safe_default_protocol_versions()
            .map_err(|e| e.to_string())?;
        let config = match trust {
            Trust::Nothing => builder
                .dangerous()
                .with_custom_certificate_verifier(Arc::new(AnyCertificate { provider, signatures: true }))
                .with_no_client_auth(),
            Trust::System | Trust::Bundle(_) => {
                let mut roots = rustls::RootCertStore::empty();
                match trust {
                    Trust::Bundle(pem) => {
                        use rustls::pki_types::pem::PemObject;
                        for c in CertificateDer::pem_slice_iter(pem) {
                            let c = c.map_err(|_| "caBundle is not PEM certificates".to_string())?;
                            roots.add(c).map_err(|e| format!("caBundle: {e}"))?;
                        }
                    }
                    _ => {
                        for c in rustls_native_certs::load_native_certs().certs {
                            let _ = roots.add(c);
                        }
                    }
                }
                if roots.is_empty() {
                    return Err("no CA certificate to check the ACME server against".into());
                }
                builder.with_root_certificates(roots).with_no_client_auth()
            }
        };
        let mut http = HttpConnector::new();
        http.set_connect_timeout(Some(Duration::from_secs(10)));
        http.enforce_http(false);
        let connector = hyper_rustls::HttpsConnectorBuilder::new()
            .with_tls_config(config)
            .https_only()
            .enable_http1()
            .wrap_connector(http);
        Ok(AcmeHttp { client: Client::builder(TokioExecutor::new()).build(connector), retry_after: Arc::default() })
    }
}

impl AcmeHttp {
    /// A plain GET (the directory, renewal information): the status, the headers and the body, bounded as every
    /// request is.
    pub async fn get(&self, url: &str) -> Result<(u16, http::HeaderMap, Bytes), String> {
        let req = Request::get(url)
            .header(http::header::USER_AGENT, concat!("capstan/", env!("CARGO_PKG_VERSION")))
            .body(BodyWrapper::default())
            .map_err(|e| format!("{url}: {e}"))?;
        let mut rsp = HttpClient::request(self, req).await.map_err(|e| e.to_string())?;
        let body = rsp.body.into_bytes().await.map_err(|e| format!("{url}: {e}"))?;
        Ok((rsp.parts.status.as_u16(), rsp.parts.headers, body))
    }
}

impl HttpClient for AcmeHttp {
    fn request(
        &self,
        req: Request<BodyWrapper<Bytes>>,
    ) -> Pin<Box<dyn Future<Output = Result<BytesResponse, instant_acme::Error>> + Send>> {
        let url = req.uri().to_string();
        let fut = self.client.request(req);
        let slot = self.retry_after.clone();
        Box::pin(async move {
            let rsp = match tokio::time::timeout(REQUEST_TIMEOUT, fut).await {
                Err(_) => return Err(other(format!("{url} did not answer within {}s", REQUEST_TIMEOUT.as_secs()))),
                Ok(Err(e)) => return Err(other(format!("{url}: {}", capstan_engine::errors::with_causes(&e)))),
                Ok(Ok(r)) => r,
            };
            let status = rsp.status().as_u16();
            if status == 429 || status == 503 {
                let at = rsp.headers().get(http::header::RETRY_AFTER).and_then(|v| v.to_str().ok()).and_then(retry_at);
                *slot.lock().unwrap_or_else(|p| p.into_inner()) = at;
            }
            // The body is read here, within the same time and at most `MAX_BODY` (a certificate chain is a few KiB):
            // a server that sends its headers and then trickles or floods cannot hold an issuance for ever.
            let (parts, body) = rsp.into_parts();
            let read = http_body_util::BodyExt::collect(http_body_util::Limited::new(body, MAX_BODY));
            let body = match tokio::time::timeout(REQUEST_TIMEOUT, read).await {
                Err(_) => {
                    return Err(other(format!("{url} did not send its answer within {}s", REQUEST_TIMEOUT.as_secs())))
                }
                Ok(Err(e)) => return Err(other(format!("{url}: reading the answer: {e}"))),
                Ok(Ok(b)) => b.to_bytes(),
            };
            Ok(BytesResponse { parts, body: Box::new(body) })
        })
    }
}

fn other(message: String) -> instant_acme::Error {
    instant_acme::Error::Other(message.into())
}

/// A TLS-ALPN-01 validation's handshake with `target` for `host`, offering only `acme-tls/1`: the leaf certificate
/// it got (any: the challenge's is self-signed), once the protocol was agreed.
pub async fn alpn_probe(target: std::net::SocketAddr, host: &str) -> Result<Vec<u8>, String> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut config = rustls::ClientConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .map_err(|e| e.to_string())?
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(AnyCertificate { provider, signatures: false }))
        .with_no_client_auth();
    config.alpn_protocols = vec![b"acme-tls/1".to_vec()];
    let name = ServerName::try_from(host.to_string()).map_err(|e| e.to_string())?;
    let connect = async {
        let tcp = tokio::net::TcpStream::connect(target).await.map_err(|e| e.to_string())?;
        tokio_rustls::TlsConnector::from(Arc::new(config)).connect(name, tcp).await.map_err(|e| e.to_string())
    };
    let tls = tokio::time::timeout(Duration::from_secs(5), connect).await.map_err(|_| "no handshake within 5s")??;
    let session = tls.get_ref().1;
    if session.alpn_protocol() != Some(b"acme-tls/1") {
        return Err("the handshake did not agree on acme-tls/1".into());
    }
    session.peer_certificates().and_then(|c| c.first()).map(|c| c.to_vec()).ok_or_else(|| "no certificate".into())
}

/// A `Retry-After` value: seconds, or an HTTP date.
pub fn retry_at(value: &str) -> Option<SystemTime> {
    let value = value.trim();
    match value.parse::<u64>() {
        Ok(secs) => Some(SystemTime::now() + Duration::from_secs(secs.min(7 * 24 * 3600))),
        Err(_) => httpdate::parse_http_date(value).ok(),
    }
}

/// Any certificate is taken. For `skipTLSVerify` the handshake's signatures are still checked against it
/// (`signatures`). The self check of a TLS-ALPN-01 answer checks nothing: only the certificate's bytes matter
/// (compared with the one published), webpki cannot read it to check a signature (the acmeIdentifier extension is
/// critical and unknown to it), and nothing is sent over that connection.
#[derive(Debug)]
struct AnyCertificate {
    provider: Arc<rustls::crypto::CryptoProvider>,
    signatures: bool,
}

impl ServerCertVerifier for AnyCertificate {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        if !self.signatures {
            return Ok(HandshakeSignatureValid::assertion());
        }
        rustls::crypto::verify_tls12_signature(message, cert, dss, &self.provider.signature_verification_algorithms)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        if !self.signatures {
            return Ok(HandshakeSignatureValid::assertion());
        }
        rustls::crypto::verify_tls13_signature(message, cert, dss, &self.provider.signature_verification_algorithms)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.provider.signature_verification_algorithms.supported_schemes()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A server that answers every request with `len` bytes.
    async fn flooding_server(len: usize) -> std::net::SocketAddr {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let cert = rcgen::generate_simple_self_signed(vec!["localhost".to_string()]).expect("a certificate");
        let key = rustls::pki_types::PrivateKeyDer::try_from(cert.signing_key.serialize_der()).expect("a key");
        let config = rustls::ServerConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
            .with_safe_default_protocol_versions()
            .expect("TLS")
            .with_no_client_auth()
            .with_single_cert(vec![cert.cert.der().clone()], key)
            .expect("a server config");
        let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(config));
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("addr");
        tokio::spawn(async move {
            let (tcp, _) = listener.accept().await.expect("accept");
            let mut tls = acceptor.accept(tcp).await.expect("handshake");
            let mut head = [0u8; 1024];
            let _ = tls.read(&mut head).await;
            let _ = tls.write_all(format!("HTTP/1.1 200 OK\r\ncontent-length: {len}\r\n\r\n").as_bytes()).await;
            let _ = tls.write_all(&vec![b'a'; len]).await;
        });
        addr
    }

    #[tokio::test]
    async fn an_answer_larger_than_a_mebibyte_is_refused_not_read_whole() {
        let addr = flooding_server(4 << 20).await;
        let http = AcmeHttp::new(&Trust::Nothing).expect("a client");
        let req =
            Request::get(format!("https://{addr}/directory")).body(BodyWrapper::from(Vec::new())).expect("a request");
        let err = match http.request(req).await {
            Ok(_) => panic!("4 MiB taken"),
            Err(e) => e.to_string(),
        };
        assert!(err.contains("reading the answer") && err.contains("/directory"), "{err}");
    }

    #[test]
    fn retry_after_reads_seconds_and_dates() {
        let now = std::time::SystemTime::now();
        let at = super::retry_at("120").unwrap();
        let wait = at.duration_since(now).unwrap().as_secs();
        assert!((119..=121).contains(&wait), "{wait}");
        let date = super::retry_at("Wed, 21 Oct 2037 07:28:00 GMT").unwrap();
        assert_eq!(date.duration_since(std::time::UNIX_EPOCH).unwrap().as_secs(), 2139722880);
        assert_eq!(super::retry_at("soon"), None);
    }
}
