//! TLS for end-to-end tests: a test CA and the certificates it signs, a verified client connection, an HTTPS client
//! for load runs, and the Secret manifests that carry a certificate (Capstan's and Kubernetes' own `v1`).

/// A certificate `ca` signs for `names`: (certificate PEM, key PEM).
pub fn certificate_for(names: &[&str], ca: &(rcgen::KeyPair, rcgen::CertificateParams)) -> (String, String) {
    certificate_with(names, ca, |_| {})
}

/// As [`certificate_for`], with `adjust` changing the certificate's parameters (its validity) before it is signed.
pub fn certificate_with(
    names: &[&str],
    ca: &(rcgen::KeyPair, rcgen::CertificateParams),
    adjust: impl FnOnce(&mut rcgen::CertificateParams),
) -> (String, String) {
    let key = rcgen::KeyPair::generate().expect("a key");
    let mut params =
        rcgen::CertificateParams::new(names.iter().map(|n| n.to_string()).collect::<Vec<_>>()).expect("names");
    params.distinguished_name = rcgen::DistinguishedName::new();
    params.distinguished_name.push(rcgen::DnType::CommonName, names[0]);
    adjust(&mut params);
    let issuer = rcgen::Issuer::new(ca.1.clone(), &ca.0);
    let cert = params.signed_by(&key, &issuer).expect("signed");
    (cert.pem(), key.serialize_pem())
}

/// A fresh CA: its key and parameters (to sign with) and its certificate PEM (to trust).
pub fn test_ca() -> ((rcgen::KeyPair, rcgen::CertificateParams), String) {
    let key = rcgen::KeyPair::generate().expect("a key");
    let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).expect("params");
    // Its own name: a leaf named as its issuer looks self-signed to OpenSSL (curl).
    params.distinguished_name = rcgen::DistinguishedName::new();
    params.distinguished_name.push(rcgen::DnType::CommonName, "Capstan test CA");
    params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    let pem = params.self_signed(&key).expect("self-signed").pem();
    ((key, params), pem)
}

/// A client's TLS connection.
pub type Tls = tokio_rustls::client::TlsStream<tokio::net::TcpStream>;

/// A TLS connection to 127.0.0.1:`port` with `sni` as the server name, verified against `ca_pem`, offering the
/// `alpn` protocols; None when the connection or the handshake fails.
pub async fn tls_connect(port: u16, sni: &str, ca_pem: &str, alpn: &[&[u8]]) -> Option<Tls> {
    use rustls::pki_types::pem::PemObject;
    let mut roots = rustls::RootCertStore::empty();
    for c in rustls::pki_types::CertificateDer::pem_slice_iter(ca_pem.as_bytes()) {
        roots.add(c.ok()?).ok()?;
    }
    let provider = std::sync::Arc::new(rustls::crypto::ring::default_provider());
    let mut config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .ok()?
        .with_root_certificates(roots)
        .with_no_client_auth();
    config.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
    let connector = tokio_rustls::TlsConnector::from(std::sync::Arc::new(config));
    let tcp = tokio::net::TcpStream::connect(("127.0.0.1", port)).await.ok()?;
    let name = rustls::pki_types::ServerName::try_from(sni.to_string()).ok()?;
    tokio::time::timeout(std::time::Duration::from_secs(5), connector.connect(name, tcp)).await.ok()?.ok()
}

/// Capstan's Secret holding `tls.crt` and `tls.key` as text.
pub fn tls_secret(name: &str, cert: &str, key: &str) -> String {
    let indent = |s: &str| s.lines().map(|l| format!("      {l}\n")).collect::<String>();
    format!(
        "apiVersion: capstan.dev/v1alpha1\nkind: Secret\nmetadata: {{name: {name}}}\nspec:\n  stringData:\n    tls.crt: |\n{}    tls.key: |\n{}",
        indent(cert),
        indent(key)
    )
}

/// The same as Kubernetes' own `v1` Secret of type `kubernetes.io/tls`, as a cluster takes it.
pub fn core_tls_secret(name: &str, cert: &str, key: &str) -> String {
    use base64::Engine;
    let b64 = |s: &str| base64::engine::general_purpose::STANDARD.encode(s);
    format!(
        "apiVersion: v1\nkind: Secret\nmetadata: {{name: {name}}}\ntype: kubernetes.io/tls\ndata:\n  tls.crt: {}\n  tls.key: {}\n",
        b64(cert),
        b64(key)
    )
}

/// The DER of the first certificate in `pem`.
pub fn der_of(pem: &str) -> Vec<u8> {
    use rustls::pki_types::pem::PemObject;
    rustls::pki_types::CertificateDer::from_pem_slice(pem.as_bytes()).expect("a certificate").to_vec()
}

/// GET `path` over HTTPS (HTTP/1.1) with `sni` as the name, trusting `ca_pem`: the status, the body and the leaf
/// certificate the server presented; None when any step fails.
pub async fn https_get(port: u16, sni: &str, path: &str, ca_pem: &str) -> Option<(u16, String, Vec<u8>)> {
    use http_body_util::{BodyExt, Empty};
    let tls = tls_connect(port, sni, ca_pem, &[b"http/1.1"]).await?;
    let leaf = tls.get_ref().1.peer_certificates()?.first()?.to_vec();
    assert_eq!(tls.get_ref().1.alpn_protocol(), Some(&b"http/1.1"[..]), "HTTP/1.1 by ALPN");
    let (mut sender, conn) = hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(tls)).await.ok()?;
    tokio::spawn(conn);
    let req = hyper::Request::get(path).header("host", sni).body(Empty::<bytes::Bytes>::new()).ok()?;
    let res = tokio::time::timeout(std::time::Duration::from_secs(10), sender.send_request(req)).await.ok()?.ok()?;
    let code = res.status().as_u16();
    let body = res.into_body().collect().await.ok()?.to_bytes();
    Some((code, String::from_utf8_lossy(&body).to_string(), leaf))
}

/// Requests for `host` on new connections to 127.0.0.1:`port` every 100 ms, verified against `ca_pem`, until a
/// certificate other than `first` answers or `limit` passes: that certificate, and each request that did not get a
/// 200 (its status, or None when no answer came).
pub async fn until_renewed(
    port: u16,
    host: &str,
    ca_pem: &str,
    first: &[u8],
    limit: std::time::Duration,
) -> (Option<Vec<u8>>, Vec<String>) {
    let mut failures = Vec::new();
    let deadline = tokio::time::Instant::now() + limit;
    while tokio::time::Instant::now() < deadline {
        match https_get(port, host, "/", ca_pem).await {
            Some((200, _, leaf)) if leaf != first => return (Some(leaf), failures),
            Some((200, ..)) => {}
            other => failures.push(format!("{:?}", other.map(|o| o.0))),
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    (None, failures)
}

/// The HTTPS client of a load run.
pub type HttpsClient = hyper_util::client::legacy::Client<
    hyper_rustls::HttpsConnector<hyper_util::client::legacy::connect::HttpConnector>,
    http_body_util::Full<bytes::Bytes>,
>;

/// An HTTPS client (HTTP/1.1) trusting only `ca_pem`, for open-loop load: with `server_name`, every connection asks
/// for that name (SNI) and checks the certificate against it, whatever host the URL names (127.0.0.1); without
/// `keep_alive`, no connection is kept (each request makes its own handshake).
pub fn https_client(ca_pem: &str, server_name: Option<&str>, keep_alive: bool) -> HttpsClient {
    use rustls::pki_types::pem::PemObject;
    let mut roots = rustls::RootCertStore::empty();
    for c in rustls::pki_types::CertificateDer::pem_slice_iter(ca_pem.as_bytes()) {
        roots.add(c.expect("a CA certificate")).expect("a root");
    }
    let provider = std::sync::Arc::new(rustls::crypto::ring::default_provider());
    let config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .expect("TLS 1.2 and 1.3")
        .with_root_certificates(roots)
        .with_no_client_auth();
    let builder = hyper_rustls::HttpsConnectorBuilder::new().with_tls_config(config).https_only();
    let builder = match server_name {
        Some(name) => {
            let name = rustls::pki_types::ServerName::try_from(name.to_string()).expect("a server name");
            builder.with_server_name_resolver(hyper_rustls::FixedServerNameResolver::new(name))
        }
        None => builder,
    };
    let connector = builder.enable_http1().build();
    let mut client = hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new());
    if !keep_alive {
        client.pool_max_idle_per_host(0);
    }
    client.build(connector)
}
