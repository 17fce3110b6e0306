//! The API client used by the CLI and tests: JSON requests and NDJSON streams over HTTP/1.1 (TLS verified against
//! a CA file, or the system's CAs) with a bearer token.

use std::path::{Path, PathBuf};

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::{Method, Request, StatusCode};
use hyper_rustls::HttpsConnector;
use hyper_util::client::legacy::{connect::HttpConnector, Client as HyperClient};
use hyper_util::rt::TokioExecutor;
use serde_json::Value;
use tokio::sync::mpsc;

use crate::{DEFAULT_LISTEN, SERVER_FILE, TOKEN_FILE};

/// What went wrong talking to the API.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error("cannot reach the Capstan API at {url}: {reason}\n  hint: start it with `capstan up`, or point CAPSTAN_SERVER / CAPSTAN_DATA / --context at the running one (its API speaks https:// unless started with --plain-http)")]
    Connect { url: String, reason: String },
    #[error("no API token: {0}\n  hint: the CLI reads it from the data directory's `token` file (CAPSTAN_DATA) or CAPSTAN_TOKEN")]
    NoToken(String),
    /// The token file can be read by other users: whoever reads it may do everything.
    #[error(
        "the token file {path} can be read by other users (mode {mode:o}); it is not used\n  hint: chmod 600 {path}"
    )]
    TokenExposed { path: String, mode: u32 },
    /// The file naming the running server exists but cannot be read.
    #[error("cannot read {path}: {reason}\n  hint: set CAPSTAN_SERVER, or fix the file's permissions")]
    ServerFile { path: String, reason: String },
    /// The server's certificate is not vouched for by the CA the client trusts (or does not name the server).
    #[error("the server at {url} presented a certificate that {ca} does not vouch for: {reason}\n  hint: {hint}")]
    Certificate { url: String, ca: String, reason: String, hint: String },
    /// A token would cross the network in the clear.
    #[error("refusing to send the API token over plain HTTP to {url}\n  hint: use https:// (Capstan serves TLS unless started with --plain-http, which is allowed only on a loopback address)")]
    Insecure { url: String },
    /// The CA file cannot be used.
    #[error("{0}")]
    Tls(String),
    #[error("{message}")]
    Status { status: StatusCode, message: String, body: Value },
    #[error("bad response from the API: {0}")]
    Protocol(String),
}

impl ClientError {
    /// The HTTP status, when the server answered.
    pub fn status(&self) -> Option<StatusCode> {
        match self {
            ClientError::Status { status, .. } => Some(*status),
            _ => None,
        }
    }
}

type Http = HyperClient<HttpsConnector<HttpConnector>, Full<Bytes>>;

/// Whether a bearer token may be sent to `base`: over TLS, or over plain HTTP to this machine only.
fn transport_is_safe(base: &str) -> bool {
    let Some(rest) = base.strip_prefix("http://") else { return true };
    let authority = rest.split('/').next().unwrap_or("");
    let host = match authority.strip_prefix('[') {
        Some(v6) => v6.split(']').next().unwrap_or(""),
        None => authority.rsplit_once(':').map_or(authority, |(h, _)| h),
    };
    host == "localhost" || host.parse::<std::net::IpAddr>().is_ok_and(|ip| ip.is_loopback())
}

/// Reads a token file; one that other users can read is refused (whoever reads it acts with its rights).
pub fn read_token_file(path: &Path) -> Result<String, ClientError> {
    use std::os::unix::fs::PermissionsExt;
    let no_token = |e: std::io::Error| ClientError::NoToken(format!("{}: {e}", path.display()));
    let mode = std::fs::metadata(path).map_err(no_token)?.permissions().mode();
    if mode & 0o077 != 0 {
        return Err(ClientError::TokenExposed { path: path.display().to_string(), mode: mode & 0o777 });
    }
    std::fs::read_to_string(path).map(|t| t.trim().to_string()).map_err(no_token)
}

/// A client for one Capstan API.
#[derive(Clone)]
pub struct Client {
    base: String,
    token: String,
    /// The CA file the server is verified against (`None`: the system's CAs).
    ca: Option<PathBuf>,
    /// The connection pool, or why it could not be made (said at the first request).
    http: Result<Http, String>,
}

fn http_client(ca: Option<&Path>) -> Result<Http, ClientError> {
    let tls = crate::tls::client_config(ca).map_err(|e| ClientError::Tls(e.to_string()))?;
    let https = hyper_rustls::HttpsConnectorBuilder::new().with_tls_config(tls).https_or_http().enable_http1().build();
    Ok(HyperClient::builder(TokioExecutor::new()).build(https))
}

impl Client {
    /// A client trusting the system's CAs for `https://` (plain `http://` is dialled as it is).
    pub fn new(base: impl Into<String>, token: impl Into<String>) -> Self {
        Client {
            base: base.into().trim_end_matches('/').to_string(),
            token: token.into(),
            ca: None,
            http: http_client(None).map_err(|e| e.to_string()),
        }
    }

    /// A client that verifies the server against the certificates of `ca` (PEM).
    pub fn with_ca(base: impl Into<String>, token: impl Into<String>, ca: Option<&Path>) -> Result<Self, ClientError> {
        Ok(Client {
            base: base.into().trim_end_matches('/').to_string(),
            token: token.into(),
            ca: ca.map(Path::to_path_buf),
            http: Ok(http_client(ca)?),
        })
    }

    /// Finds the API of a data directory: the URL and CA that `capstan up` wrote into it (`server` overrides the
    /// URL, and its CA is used only when the URL is the same), and its token (`token` overrides it). `ca` names a
    /// CA file to trust instead.
    pub fn discover(
        data_dir: &Path,
        server: Option<String>,
        token: Option<String>,
        ca: Option<PathBuf>,
    ) -> Result<Client, ClientError> {
        // No file: the default address. A file that cannot be read is an error, not "no server".
        let path = data_dir.join(SERVER_FILE);
        let written = match std::fs::read_to_string(&path) {
            Ok(t) => serde_json::from_str::<Value>(&t).ok(),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => None,
            Err(e) => return Err(ClientError::ServerFile { path: path.display().to_string(), reason: e.to_string() }),
        };
        let written_url = written.as_ref().and_then(|v| v["url"].as_str().map(str::to_string));
        let written_ca = written.as_ref().and_then(|v| v["ca"].as_str().map(PathBuf::from));
        let server_given = server.is_some();
        let base = match server {
            Some(s) => s,
            None => written_url.clone().unwrap_or_else(|| format!("https://{DEFAULT_LISTEN}")),
        };
        let same = written_url.as_deref().map(|u| u.trim_end_matches('/')) == Some(base.trim_end_matches('/'));
        let named = server_given && !same;
        let ca = ca.or_else(|| written_ca.filter(|_| same));
        let token = match token {
            Some(t) => t,
            // The data directory's token is its own Capstan's: never sent to another server.
            None if named => {
                return Err(ClientError::NoToken(format!(
                    "{base} is not the Capstan of {} ({}); give its token with CAPSTAN_TOKEN, or use a context",
                    data_dir.display(),
                    written_url.as_deref().unwrap_or("none running")
                )))
            }
            None => read_token_file(&data_dir.join(TOKEN_FILE))?,
        };
        Client::with_ca(base, token, ca.as_deref())
    }

    /// What a failed connection says: a certificate the CA does not vouch for is named as such, with the server
    /// and the CA file.
    fn connect_error(&self, e: &(dyn std::error::Error + 'static)) -> ClientError {
        let mut chain = Vec::new();
        let mut next: Option<&(dyn std::error::Error + 'static)> = Some(e);
        while let Some(err) = next {
            chain.push(err.to_string());
            next = err.source();
        }
        let reason = chain.get(1).cloned().unwrap_or_else(|| chain.join(": "));
        let all = chain.join(": ");
        if all.contains("certificate") || all.contains("Certificate") {
            let ca = match &self.ca {
                Some(f) => format!("the CA file {}", f.display()),
                None => "the system's CAs".into(),
            };
            let reason = chain.iter().rev().find(|c| c.contains("ertificate")).cloned().unwrap_or(reason);
            let hint = match reason.contains("NotValidForName") {
                true => {
                    "the certificate does not name this address: start Capstan with --tls-san for the name clients \
                         use, or connect with a name it has (localhost, 127.0.0.1)"
                        .to_string()
                }
                false => format!(
                    "use the CA file of this server's context (`capstan login {} --certificate-authority FILE`), or \
                     set CAPSTAN_CA_FILE; a local Capstan's CA is <data>/tls/ca.crt",
                    self.base
                ),
            };
            return ClientError::Certificate { url: self.base.clone(), ca, reason, hint };
        }
        ClientError::Connect { url: self.base.clone(), reason }
    }

    pub fn base(&self) -> &str {
        &self.base
    }

    /// The bearer token this client sends.
    pub fn token(&self) -> &str {
        &self.token
    }

    async fn send(
        &self,
        method: Method,
        path: &str,
        body: Option<Value>,
    ) -> Result<hyper::Response<hyper::body::Incoming>, ClientError> {
        let url = format!("{}{path}", self.base);
        let bytes = body.map(|b| Bytes::from(b.to_string())).unwrap_or_default();
        let req = Request::builder()
            .method(method)
            .uri(&url)
            .header("authorization", format!("Bearer {}", self.token))
            .header("content-type", "application/json")
            .body(Full::new(bytes))
            .map_err(|e| ClientError::Protocol(e.to_string()))?;
        if !transport_is_safe(&self.base) {
            return Err(ClientError::Insecure { url: self.base.clone() });
        }
        let http = self.http.as_ref().map_err(|e| ClientError::Tls(e.clone()))?;
        let res = http.request(req).await.map_err(|e| self.connect_error(&e))?;
        if res.status().is_success() {
            return Ok(res);
        }
        let status = res.status();
        let body = res.into_body().collect().await.map(|b| b.to_bytes()).unwrap_or_default();
        let body: Value = serde_json::from_slice(&body).unwrap_or(Value::Null);
        let message = body["error"].as_str().map(str::to_string).unwrap_or_else(|| status.to_string());
        Err(ClientError::Status { status, message, body })
    }

    async fn json(&self, method: Method, path: &str, body: Option<Value>) -> Result<Value, ClientError> {
        let res = self.send(method, path, body).await?;
        let bytes = res.into_body().collect().await.map_err(|e| ClientError::Protocol(e.to_string()))?.to_bytes();
        serde_json::from_slice(&bytes).map_err(|e| ClientError::Protocol(e.to_string()))
    }

    /// Any request; the answer's JSON (an answer that is not JSON is a `Protocol` error after a success).
    pub async fn request(&self, method: Method, path: &str, body: Option<Value>) -> Result<Value, ClientError> {
        self.json(method, path, body).await
    }

    pub async fn get(&self, path: &str) -> Result<Value, ClientError> {
        self.json(Method::GET, path, None).await
    }

    pub async fn post(&self, path: &str, body: Value) -> Result<Value, ClientError> {
        self.json(Method::POST, path, Some(body)).await
    }

    pub async fn delete(&self, path: &str) -> Result<Value, ClientError> {
        self.json(Method::DELETE, path, None).await
    }

    /// Opens an NDJSON stream; each line arrives parsed on the returned channel until the server ends it.
    pub async fn stream(&self, path: &str) -> Result<mpsc::Receiver<Value>, ClientError> {
        let res = self.send(Method::GET, path, None).await?;
        let (tx, rx) = mpsc::channel(1024);
        tokio::spawn(async move {
            let mut body = res.into_body();
            let mut buf: Vec<u8> = Vec::new();
            while let Some(frame) = body.frame().await {
                let Ok(frame) = frame else { break };
                let Some(data) = frame.data_ref() else {
                    continue;
                };
                buf.extend_from_slice(data);
                while let Some(pos) = buf.iter().position(|b| *b == b'\n') {
                    let line: Vec<u8> = buf.drain(..=pos).collect();
                    if let Ok(v) = serde_json::from_slice::<Value>(&line) {
                        if tx.send(v).await.is_err() {
                            return;
                        }
                    }
                }
            }
        });
        Ok(rx)
    }
}

#[cfg(test)]
mod discover_tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    #[test]
    fn a_token_file_others_can_read_is_refused_with_a_hint() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join(TOKEN_FILE);
        std::fs::write(&path, "abc\n").expect("write");
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).expect("chmod");
        let e = Client::discover(dir.path(), None, None, None).err().expect("refused");
        let text = e.to_string();
        assert!(text.contains("can be read by other users (mode 644)") && text.contains("chmod 600"), "{text}");
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).expect("chmod");
        let c = Client::discover(dir.path(), None, None, None).expect("a private token is used");
        assert_eq!(c.token, "abc");
        // Never to another server than the data directory's.
        let e = Client::discover(dir.path(), Some("https://elsewhere:7470".into()), None, None).err().expect("no");
        assert!(matches!(e, ClientError::NoToken(_)), "{e}");
        // A token given by the environment is the caller's business.
        assert!(Client::discover(dir.path(), Some("http://127.0.0.1:1".into()), Some("t".into()), None).is_ok());
    }

    #[test]
    fn a_token_goes_over_plain_http_only_to_this_machine() {
        for ok in ["https://capstan.example.com:7470", "http://127.0.0.1:7470", "http://localhost:1", "http://[::1]:7"]
        {
            assert!(transport_is_safe(ok), "{ok}");
        }
        for bad in ["http://capstan.example.com:7470", "http://10.0.0.5:7470", "http://[2001:db8::1]:7470"] {
            assert!(!transport_is_safe(bad), "{bad}");
        }
    }

    #[test]
    fn a_server_file_that_cannot_be_read_is_an_error_not_the_default() {
        let dir = tempfile::tempdir().expect("tempdir");
        // A directory where the file should be: reading it fails with something other than "not found".
        std::fs::create_dir(dir.path().join(SERVER_FILE)).expect("mkdir");
        let e = Client::discover(dir.path(), None, Some("t".into()), None).err().expect("an error");
        assert!(e.to_string().contains("cannot read"), "{e}");
        std::fs::remove_dir(dir.path().join(SERVER_FILE)).expect("rmdir");
        let c = Client::discover(dir.path(), None, Some("t".into()), None).expect("no file: the default");
        assert_eq!(c.base(), format!("https://{DEFAULT_LISTEN}"));
    }
}
