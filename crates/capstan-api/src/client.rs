//! The API client used by the CLI and tests: JSON requests and NDJSON streams over HTTP/1.1 with a bearer token.

use std::path::Path;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::{Method, Request, StatusCode};
use hyper_util::client::legacy::{connect::HttpConnector, Client as HyperClient};
use hyper_util::rt::TokioExecutor;
use serde_json::Value;
use tokio::sync::mpsc;

use crate::{DEFAULT_LISTEN, SERVER_FILE, TOKEN_FILE};

/// What went wrong talking to the API.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error("cannot reach the Capstan API at {url}: {reason}\n  hint: start it with `capstan up`, or point CAPSTAN_SERVER / CAPSTAN_DATA at the running one")]
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

/// A client for one Capstan API.
#[derive(Clone)]
pub struct Client {
    base: String,
    token: String,
    http: HyperClient<HttpConnector, Full<Bytes>>,
}

impl Client {
    pub fn new(base: impl Into<String>, token: impl Into<String>) -> Self {
        Client {
            base: base.into().trim_end_matches('/').to_string(),
            token: token.into(),
            http: HyperClient::builder(TokioExecutor::new()).build_http(),
        }
    }

    /// Finds the API from the environment: CAPSTAN_SERVER / CAPSTAN_TOKEN, else the files `capstan up` wrote
    /// into the data directory.
    pub fn discover(data_dir: &Path, server: Option<String>, token: Option<String>) -> Result<Client, ClientError> {
        let base = match server {
            Some(s) => s,
            None => {
                // No file: the default address. A file that cannot be read is an error, not "no server".
                let path = data_dir.join(SERVER_FILE);
                let text = match std::fs::read_to_string(&path) {
                    Ok(t) => Some(t),
                    Err(e) if e.kind() == std::io::ErrorKind::NotFound => None,
                    Err(e) => {
                        return Err(ClientError::ServerFile { path: path.display().to_string(), reason: e.to_string() })
                    }
                };
                text.and_then(|t| serde_json::from_str::<Value>(&t).ok())
                    .and_then(|v| v["url"].as_str().map(str::to_string))
                    .unwrap_or_else(|| format!("http://{DEFAULT_LISTEN}"))
            }
        };
        let token = match token {
            Some(t) => t,
            None => {
                let path = data_dir.join(TOKEN_FILE);
                let no_token = |e: std::io::Error| ClientError::NoToken(format!("{}: {e}", path.display()));
                use std::os::unix::fs::PermissionsExt;
                let mode = std::fs::metadata(&path).map_err(no_token)?.permissions().mode();
                if mode & 0o077 != 0 {
                    return Err(ClientError::TokenExposed { path: path.display().to_string(), mode: mode & 0o777 });
                }
                std::fs::read_to_string(&path).map(|t| t.trim().to_string()).map_err(no_token)?
            }
        };
        Ok(Client::new(base, token))
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
        let res = self.http.request(req).await.map_err(|e| ClientError::Connect {
            url: self.base.clone(),
            reason: std::error::Error::source(&e).map_or(e.to_string(), |s| s.to_string()),
        })?;
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
        let e = Client::discover(dir.path(), Some("http://127.0.0.1:1".into()), None).err().expect("refused");
        let text = e.to_string();
        assert!(text.contains("can be read by other users (mode 644)") && text.contains("chmod 600"), "{text}");
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).expect("chmod");
        let c = Client::discover(dir.path(), Some("http://127.0.0.1:1".into()), None).expect("a private token is used");
        assert_eq!(c.token, "abc");
        // A token given by the environment is the caller's business.
        assert!(Client::discover(dir.path(), Some("http://127.0.0.1:1".into()), Some("t".into())).is_ok());
    }

    #[test]
    fn a_server_file_that_cannot_be_read_is_an_error_not_the_default() {
        let dir = tempfile::tempdir().expect("tempdir");
        // A directory where the file should be: reading it fails with something other than "not found".
        std::fs::create_dir(dir.path().join(SERVER_FILE)).expect("mkdir");
        let e = Client::discover(dir.path(), None, Some("t".into())).err().expect("an error");
        assert!(e.to_string().contains("cannot read"), "{e}");
        std::fs::remove_dir(dir.path().join(SERVER_FILE)).expect("rmdir");
        let c = Client::discover(dir.path(), None, Some("t".into())).expect("no file: the default");
        assert_eq!(c.base(), format!("http://{DEFAULT_LISTEN}"));
    }
}
