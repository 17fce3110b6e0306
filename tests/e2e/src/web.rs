//! A small HTTP client with a cookie jar, standing in for one browser (or script) talking to a web app.

use std::collections::BTreeMap;
use std::time::Duration;

use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::Client;

/// A response: status, `Set-Cookie`-free headers of interest, and the body.
#[derive(Debug, Clone)]
pub struct Reply {
    pub status: u16,
    pub body: bytes::Bytes,
    pub content_type: String,
}

impl Reply {
    /// The body as JSON (Null when it is not JSON).
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.body).unwrap_or(serde_json::Value::Null)
    }

    /// The body as text.
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }
}

/// One client: keeps its cookies across requests, like a browser; optionally sends a bearer token.
#[derive(Clone)]
pub struct Browser {
    client: Client<hyper_util::client::legacy::connect::HttpConnector, Full<bytes::Bytes>>,
    pub port: u16,
    pub cookies: BTreeMap<String, String>,
    pub bearer: Option<String>,
    /// An `Origin` header sent with every request, as a browser sends its page's (none when unset).
    pub origin: Option<String>,
}

impl Browser {
    /// A client for 127.0.0.1:`port`, with keep-alive.
    pub fn new(port: u16) -> Browser {
        let client = Client::builder(hyper_util::rt::TokioExecutor::new()).build_http();
        Browser { client, port, cookies: BTreeMap::new(), bearer: None, origin: None }
    }

    /// Sends a request; `Err` when no response came within 10 s.
    pub async fn send(
        &mut self,
        method: &str,
        path: &str,
        content_type: Option<&str>,
        body: impl Into<bytes::Bytes>,
    ) -> Result<Reply, String> {
        let mut req = hyper::Request::builder().method(method).uri(format!("http://127.0.0.1:{}{path}", self.port));
        if !self.cookies.is_empty() {
            let line = self.cookies.iter().map(|(k, v)| format!("{k}={v}")).collect::<Vec<_>>().join("; ");
            req = req.header("cookie", line);
        }
        if let Some(t) = &self.bearer {
            req = req.header("authorization", format!("Bearer {t}"));
        }
        if let Some(ct) = content_type {
            req = req.header("content-type", ct);
        }
        if let Some(o) = &self.origin {
            req = req.header("origin", o);
        }
        let req = req.body(Full::new(body.into())).map_err(|e| e.to_string())?;
        let res = tokio::time::timeout(Duration::from_secs(10), self.client.request(req))
            .await
            .map_err(|_| "timed out".to_string())?
            .map_err(|e| format!("{e:?}"))?;
        for v in res.headers().get_all("set-cookie") {
            let Ok(v) = v.to_str() else { continue };
            let first = v.split(';').next().unwrap_or("");
            if let Some((k, val)) = first.split_once('=') {
                if val.is_empty() || v.contains("Max-Age=0") {
                    self.cookies.remove(k.trim());
                } else {
                    self.cookies.insert(k.trim().to_string(), val.to_string());
                }
            }
        }
        let status = res.status().as_u16();
        let content_type = res.headers().get("content-type").and_then(|v| v.to_str().ok()).unwrap_or("").to_string();
        let body = res.into_body().collect().await.map_err(|e| format!("body: {e}"))?.to_bytes();
        Ok(Reply { status, body, content_type })
    }

    /// A GET.
    pub async fn get(&mut self, path: &str) -> Result<Reply, String> {
        self.send("GET", path, None, bytes::Bytes::new()).await
    }

    /// A POST of JSON.
    pub async fn post_json(&mut self, path: &str, v: &serde_json::Value) -> Result<Reply, String> {
        self.send("POST", path, Some("application/json"), v.to_string()).await
    }
}
