//! TLS for the API: a local certificate authority and a server certificate made on start (rcgen), or a certificate
//! and key the user gives; the server configuration, and the client's trust in one CA file.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use chrono::Datelike;
use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
    KeyUsagePurpose,
};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};
use sha2::{Digest, Sha256};

/// The directory under the data directory holding the local CA and the server certificate.
pub const TLS_DIR: &str = "tls";
/// The local CA's certificate: what clients trust.
pub const CA_FILE: &str = "tls/ca.crt";

/// How the API serves.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ApiTls {
    /// Plain HTTP: only on a loopback address.
    Off,
    /// A local CA (made once under `<data>/tls`) signs a server certificate for the listen address, localhost,
    /// 127.0.0.1, ::1 and these names (DNS names or IP addresses).
    Auto { sans: Vec<String> },
    /// The user's certificate chain and key (PEM).
    Files { cert: PathBuf, key: PathBuf },
}

/// Why TLS could not be set up.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("{path}: {reason}\n  hint: {hint}")]
    File { path: PathBuf, reason: String, hint: String },
    #[error("making the API's certificate: {0}")]
    Generate(String),
    #[error("TLS configuration: {0}")]
    Config(String),
}

fn file_err(path: &Path, reason: impl ToString, hint: &str) -> TlsError {
    TlsError::File { path: path.to_path_buf(), reason: reason.to_string(), hint: hint.into() }
}

fn gen_err(e: impl ToString) -> TlsError {
    TlsError::Generate(e.to_string())
}

/// What the API serves with: the rustls configuration and, with a local CA, its certificate file.
pub struct Served {
    pub config: Arc<rustls::ServerConfig>,
    pub ca_file: Option<PathBuf>,
}

fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// The CA's name, derived from its key, so that the issuer can be rebuilt from the key alone.
fn ca_name(key: &KeyPair) -> DistinguishedName {
    let mut dn = DistinguishedName::new();
    let id = hex::encode(&Sha256::digest(key.public_key_raw())[..4]);
    dn.push(DnType::CommonName, format!("Capstan local CA {id}"));
    dn
}

fn ca_params(key: &KeyPair) -> Result<CertificateParams, TlsError> {
    let mut p = CertificateParams::new(Vec::<String>::new()).map_err(gen_err)?;
    p.distinguished_name = ca_name(key);
    p.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
    p.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign, KeyUsagePurpose::DigitalSignature];
    set_validity(&mut p, 3650);
    Ok(p)
}

/// Valid from yesterday (clocks differ) to `days` from now.
fn set_validity(p: &mut CertificateParams, days: i64) {
    let ymd = |t: chrono::DateTime<chrono::Utc>| rcgen::date_time_ymd(t.year(), t.month() as u8, t.day() as u8);
    let now = chrono::Utc::now();
    p.not_before = ymd(now - chrono::Duration::days(1));
    p.not_after = ymd(now + chrono::Duration::days(days));
}

fn write_private(path: &Path, text: &str) -> Result<(), TlsError> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let err = |e: std::io::Error| file_err(path, e, "Capstan must be able to write in its data directory");
    let tmp = path.with_extension("tmp");
    let mut f =
        std::fs::OpenOptions::new().write(true).create(true).truncate(true).mode(0o600).open(&tmp).map_err(err)?;
    f.write_all(text.as_bytes()).map_err(err)?;
    f.sync_all().map_err(err)?;
    std::fs::rename(&tmp, path).map_err(err)
}

/// The names a server certificate for `listen` carries: localhost and the loopback addresses, the listen address
/// when it is one to dial, and the extra names.
pub fn server_names(listen: SocketAddr, extra: &[String]) -> Vec<String> {
    let mut names = vec!["localhost".to_string(), "127.0.0.1".into(), "::1".into()];
    if !listen.ip().is_unspecified() {
        names.push(listen.ip().to_string());
    }
    for n in extra {
        if !names.contains(n) {
            names.push(n.clone());
        }
    }
    names
}

/// The local CA of a data directory: made once, then read.
fn local_ca(data_dir: &Path) -> Result<(KeyPair, PathBuf), TlsError> {
    let dir = data_dir.join(TLS_DIR);
    std::fs::create_dir_all(&dir).map_err(|e| file_err(&dir, e, "check the data directory's permissions"))?;
    let (cert_path, key_path) = (data_dir.join(CA_FILE), dir.join("ca.key"));
    if key_path.exists() {
        let pem = std::fs::read_to_string(&key_path).map_err(|e| file_err(&key_path, e, "check its permissions"))?;
        let key = KeyPair::from_pem(&pem).map_err(|e| {
            file_err(
                &key_path,
                e,
                "a damaged CA key: move the tls directory aside to make a new CA (clients must trust it again)",
            )
        })?;
        if !cert_path.exists() {
            let cert = ca_params(&key)?.self_signed(&key).map_err(gen_err)?;
            std::fs::write(&cert_path, cert.pem()).map_err(|e| file_err(&cert_path, e, "check its permissions"))?;
        }
        return Ok((key, cert_path));
    }
    let key = KeyPair::generate().map_err(gen_err)?;
    let cert = ca_params(&key)?.self_signed(&key).map_err(gen_err)?;
    write_private(&key_path, &key.serialize_pem())?;
    std::fs::write(&cert_path, cert.pem()).map_err(|e| file_err(&cert_path, e, "check its permissions"))?;
    Ok((key, cert_path))
}

/// A server certificate for `names`, signed by the data directory's CA, written under `<data>/tls` (made at every
/// start: the names follow the flags).
fn local_server(data_dir: &Path, names: Vec<String>) -> Result<(String, String, PathBuf), TlsError> {
    let (ca_key, ca_file) = local_ca(data_dir)?;
    let issuer = Issuer::new(ca_params(&ca_key)?, &ca_key);
    let key = KeyPair::generate().map_err(gen_err)?;
    let mut p = CertificateParams::new(names).map_err(gen_err)?;
    p.distinguished_name = DistinguishedName::new();
    p.distinguished_name.push(DnType::CommonName, "capstan");
    p.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
    p.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    set_validity(&mut p, 397);
    let cert = p.signed_by(&key, &issuer).map_err(gen_err)?;
    let mut chain = cert.pem();
    chain.push_str(&std::fs::read_to_string(&ca_file).map_err(|e| file_err(&ca_file, e, "check its permissions"))?);
    let dir = data_dir.join(TLS_DIR);
    write_private(&dir.join("server.key"), &key.serialize_pem())?;
    std::fs::write(dir.join("server.crt"), &chain).map_err(|e| file_err(&dir, e, "check its permissions"))?;
    Ok((chain, key.serialize_pem(), ca_file))
}

fn server_config(
    chain_pem: &str,
    key_pem: &str,
    cert_path: &Path,
    key_path: &Path,
) -> Result<Arc<rustls::ServerConfig>, TlsError> {
    let chain: Vec<CertificateDer<'static>> = CertificateDer::pem_slice_iter(chain_pem.as_bytes())
        .collect::<Result<_, _>>()
        .map_err(|e| file_err(cert_path, e, "give the certificate chain in PEM"))?;
    if chain.is_empty() {
        return Err(file_err(cert_path, "no certificate in it", "give the certificate chain in PEM"));
    }
    let key = PrivateKeyDer::from_pem_slice(key_pem.as_bytes())
        .map_err(|e| file_err(key_path, e, "give the private key in PEM (PKCS#8, PKCS#1 or SEC1)"))?;
    let mut cfg = rustls::ServerConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .map_err(|e| TlsError::Config(e.to_string()))?
        .with_no_client_auth()
        .with_single_cert(chain, key)
        .map_err(|e| file_err(cert_path, e, "the certificate and the key must belong together"))?;
    cfg.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(Arc::new(cfg))
}

/// The API's TLS: `None` when it serves plain HTTP.
pub fn serve(data_dir: &Path, listen: SocketAddr, tls: &ApiTls) -> Result<Option<Served>, TlsError> {
    match tls {
        ApiTls::Off => Ok(None),
        ApiTls::Auto { sans } => {
            let (chain, key, ca_file) = local_server(data_dir, server_names(listen, sans))?;
            let dir = data_dir.join(TLS_DIR);
            let config = server_config(&chain, &key, &dir.join("server.crt"), &dir.join("server.key"))?;
            Ok(Some(Served { config, ca_file: Some(ca_file) }))
        }
        ApiTls::Files { cert, key } => {
            let read =
                |p: &Path| std::fs::read_to_string(p).map_err(|e| file_err(p, e, "check the path and permissions"));
            let config = server_config(&read(cert)?, &read(key)?, cert, key)?;
            Ok(Some(Served { config, ca_file: None }))
        }
    }
}

/// A client configuration trusting the certificates of `ca_file` (PEM), or the system's roots without one.
pub fn client_config(ca_file: Option<&Path>) -> Result<rustls::ClientConfig, TlsError> {
    let mut roots = rustls::RootCertStore::empty();
    match ca_file {
        Some(path) => {
            let pem = std::fs::read(path).map_err(|e| file_err(path, e, "the context's certificate-authority file"))?;
            for cert in CertificateDer::pem_slice_iter(&pem) {
                let cert = cert.map_err(|e| file_err(path, e, "a CA bundle is PEM certificates"))?;
                roots.add(cert).map_err(|e| file_err(path, e, "a CA bundle is PEM certificates"))?;
            }
            if roots.is_empty() {
                return Err(file_err(path, "no certificate in it", "a CA bundle is PEM certificates"));
            }
        }
        None => {
            for path in ["/etc/ssl/certs/ca-certificates.crt", "/etc/pki/tls/certs/ca-bundle.crt"] {
                if let Ok(pem) = std::fs::read(path) {
                    for cert in CertificateDer::pem_slice_iter(&pem).flatten() {
                        let _ = roots.add(cert);
                    }
                    break;
                }
            }
        }
    }
    let cfg = rustls::ClientConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .map_err(|e| TlsError::Config(e.to_string()))?
        .with_root_certificates(roots)
        .with_no_client_auth();
    Ok(cfg)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_local_ca_is_made_once_and_the_server_certificate_names_every_address() {
        let dir = tempfile::tempdir().unwrap();
        let listen: SocketAddr = "192.0.2.7:7470".parse().unwrap();
        let names = server_names(listen, &["capstan.example.com".into(), "10.0.0.5".into()]);
        assert_eq!(names, ["localhost", "127.0.0.1", "::1", "192.0.2.7", "capstan.example.com", "10.0.0.5"]);
        assert_eq!(server_names("0.0.0.0:1".parse().unwrap(), &[]).len(), 3, "0.0.0.0 is not a name to dial");
        let first =
            serve(dir.path(), listen, &ApiTls::Auto { sans: vec!["capstan.example.com".into()] }).unwrap().unwrap();
        // The names are in the certificate served: the DNS name as its bytes, the address as its four octets.
        let pem = std::fs::read(dir.path().join("tls/server.crt")).unwrap();
        let leaf = CertificateDer::pem_slice_iter(&pem).next().unwrap().unwrap();
        let has = |needle: &[u8]| leaf.windows(needle.len()).any(|w| w == needle);
        assert!(has(b"capstan.example.com") && has(b"localhost") && has(&[192, 0, 2, 7]), "the SANs");
        let ca = std::fs::read(dir.path().join(CA_FILE)).unwrap();
        serve(dir.path(), listen, &ApiTls::Auto { sans: vec![] }).unwrap();
        assert_eq!(std::fs::read(dir.path().join(CA_FILE)).unwrap(), ca, "the CA is kept across starts");
        assert_eq!(first.ca_file.as_deref(), Some(dir.path().join(CA_FILE).as_path()));
        use std::os::unix::fs::PermissionsExt;
        for key in ["tls/ca.key", "tls/server.key"] {
            let mode = std::fs::metadata(dir.path().join(key)).unwrap().permissions().mode() & 0o777;
            assert_eq!(mode, 0o600, "{key}");
        }
        assert!(client_config(Some(&dir.path().join(CA_FILE))).is_ok());
    }

    #[test]
    fn bad_certificate_files_are_named_with_a_hint() {
        let dir = tempfile::tempdir().unwrap();
        let cert = dir.path().join("c.pem");
        let key = dir.path().join("k.pem");
        std::fs::write(&cert, "not a certificate").unwrap();
        std::fs::write(&key, "not a key").unwrap();
        let files = ApiTls::Files { cert: cert.clone(), key };
        let e = serve(dir.path(), "127.0.0.1:1".parse().unwrap(), &files).err().unwrap().to_string();
        assert!(e.contains("c.pem") && e.contains("hint"), "{e}");
        let e = client_config(Some(&cert)).err().unwrap().to_string();
        assert!(e.contains("c.pem") && e.contains("no certificate"), "{e}");
        let e = client_config(Some(&dir.path().join("missing.pem"))).err().unwrap().to_string();
        assert!(e.contains("missing.pem"), "{e}");
    }
}
