//! A TLS front for pebble that adds what pebble 2.4 lacks, so that Capstan's ACME client meets it against a real ACME
//! server: renewal information (RFC 9773: a `renewalInfo` entry in the directory, answered here with the windows the
//! test sets) and rate limits (a `429` with `Retry-After` on the next new orders, as many as the test asks). Every
//! other request goes to pebble as it came, its `Host` kept (pebble builds its URLs and checks the signed URLs from
//! it); what the front saw (windows asked for, new orders with the certificate they replace) is recorded.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use base64::Engine;
use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::{Request, Response};
use serde_json::{json, Value};

use crate::free_port;
use crate::tls::{certificate_for, https_client, test_ca, HttpsClient};

/// A renewal window, relative to when it is asked for.
#[derive(Debug, Clone, Copy)]
pub struct Window {
    pub start: chrono::Duration,
    pub end: chrono::Duration,
}

/// One new order the front saw.
#[derive(Debug, Clone)]
pub struct SeenOrder {
    pub at: Instant,
    /// The `replaces` field of its payload.
    pub replaces: Option<String>,
    /// The status answered (429 when the front refused it).
    pub status: u16,
}

#[derive(Default)]
struct State {
    /// The windows to answer, one per certificate identifier asked for in the order first seen; the last one
    /// for every later identifier.
    windows: VecDeque<Window>,
    /// Identifiers asked for, first seen first, with the window answered (fixed when first asked).
    asked: Vec<(String, chrono::DateTime<chrono::Utc>, chrono::DateTime<chrono::Utc>)>,
    /// Which new orders get a 429: from the one of this index (counting every order seen), this many, with this
    /// `Retry-After` in seconds.
    limit: Option<(usize, u32, u64)>,
    orders: Vec<SeenOrder>,
}

pub struct AcmeFront {
    pub port: u16,
    /// The test CA the front's certificate is signed by: what an Issuer's `caBundle` trusts.
    pub ca_pem: String,
    state: Arc<Mutex<State>>,
    task: tokio::task::JoinHandle<()>,
}

impl AcmeFront {
    /// A front on a free port of 127.0.0.1 for pebble's API on `pebble_port` (its certificate signed by
    /// `pebble_ca_pem`), answering renewal information with `windows` (see [`State::windows`]).
    pub async fn start(pebble_port: u16, pebble_ca_pem: &str, windows: &[Window]) -> AcmeFront {
        let (ca, ca_pem) = test_ca();
        let (cert, key) = certificate_for(&["127.0.0.1"], &ca);
        let certs: Vec<_> = {
            use rustls::pki_types::pem::PemObject;
            rustls::pki_types::CertificateDer::pem_slice_iter(cert.as_bytes()).map(|c| c.expect("PEM")).collect()
        };
        let key = {
            use rustls::pki_types::pem::PemObject;
            rustls::pki_types::PrivateKeyDer::from_pem_slice(key.as_bytes()).expect("a key")
        };
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let mut config = rustls::ServerConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .expect("TLS versions")
            .with_no_client_auth()
            .with_single_cert(certs, key)
            .expect("the front's certificate");
        config.alpn_protocols = vec![b"http/1.1".to_vec()];
        let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(config));
        let port = free_port();
        let listener = tokio::net::TcpListener::bind(("127.0.0.1", port)).await.expect("the front's port");
        let state = Arc::new(Mutex::new(State { windows: windows.iter().copied().collect(), ..Default::default() }));
        let upstream = Arc::new(Upstream { port: pebble_port, client: https_client(pebble_ca_pem, None, true) });
        let shared = state.clone();
        let task = tokio::spawn(async move {
            loop {
                let Ok((tcp, _)) = listener.accept().await else { continue };
                let (acceptor, state, upstream) = (acceptor.clone(), shared.clone(), upstream.clone());
                tokio::spawn(async move {
                    let Ok(Ok(tls)) = tokio::time::timeout(Duration::from_secs(5), acceptor.accept(tcp)).await else {
                        return;
                    };
                    let service = hyper::service::service_fn(move |req| {
                        let (state, upstream) = (state.clone(), upstream.clone());
                        async move { Ok::<_, std::convert::Infallible>(handle(req, &state, &upstream).await) }
                    });
                    let io = hyper_util::rt::TokioIo::new(tls);
                    let _ = hyper::server::conn::http1::Builder::new().serve_connection(io, service).await;
                });
            }
        });
        AcmeFront { port, ca_pem, state, task }
    }

    /// The directory URL an Issuer's `server` names.
    pub fn directory(&self) -> String {
        format!("https://127.0.0.1:{}/dir", self.port)
    }

    /// New orders from the `from`th seen (0: the first) are answered 429 with `Retry-After: retry_after` (seconds),
    /// `count` of them.
    pub fn limit_orders(&self, from: usize, count: u32, retry_after: u64) {
        self.state.lock().expect("state").limit = Some((from, count, retry_after));
    }

    /// The certificate identifiers asked for renewal information, first seen first, with the windows answered.
    pub fn windows(&self) -> Vec<(String, chrono::DateTime<chrono::Utc>, chrono::DateTime<chrono::Utc>)> {
        self.state.lock().expect("state").asked.clone()
    }

    /// The certificate identifiers asked for renewal information, first seen first.
    pub fn asked(&self) -> Vec<String> {
        self.state.lock().expect("state").asked.iter().map(|(id, _, _)| id.clone()).collect()
    }

    /// The new orders seen, in order.
    pub fn orders(&self) -> Vec<SeenOrder> {
        self.state.lock().expect("state").orders.clone()
    }
}

impl Drop for AcmeFront {
    fn drop(&mut self) {
        self.task.abort();
    }
}

struct Upstream {
    port: u16,
    client: HttpsClient,
}

fn answer(status: u16, headers: &[(&str, String)], body: Vec<u8>) -> Response<Full<Bytes>> {
    let mut r = Response::builder().status(status);
    for (k, v) in headers {
        r = r.header(*k, v.as_str());
    }
    r.body(Full::new(Bytes::from(body))).expect("a response")
}

async fn handle(req: Request<hyper::body::Incoming>, state: &Mutex<State>, up: &Upstream) -> Response<Full<Bytes>> {
    let (parts, body) = req.into_parts();
    let body = body.collect().await.map(|b| b.to_bytes()).unwrap_or_default();
    let host = parts.headers.get(hyper::header::HOST).and_then(|h| h.to_str().ok()).unwrap_or("").to_string();
    let path = parts.uri.path().to_string();
    if let Some(id) = path.strip_prefix("/ari/") {
        return renewal_info(id, state);
    }
    let replaces = if path == "/order-plz" { payload(&body)["replaces"].as_str().map(str::to_string) } else { None };
    if path == "/order-plz" {
        let mut s = state.lock().expect("state");
        let seen = s.orders.len();
        if let Some((from, left, retry)) = s.limit.filter(|(from, n, _)| seen >= *from && *n > 0) {
            s.limit = Some((from, left - 1, retry));
            s.orders.push(SeenOrder { at: Instant::now(), replaces, status: 429 });
            let problem = json!({"type": "urn:ietf:params:acme:error:rateLimited", "status": 429,
                                 "detail": "too many new orders for this account (a test limit)"});
            return answer(
                429,
                &[("content-type", "application/problem+json".into()), ("retry-after", retry.to_string())],
                problem.to_string().into_bytes(),
            );
        }
    }
    let mut forward = Request::builder().method(parts.method.clone()).uri(format!(
        "https://127.0.0.1:{}{}",
        up.port,
        parts.uri.path_and_query().map_or("/", |p| p.as_str())
    ));
    for (k, v) in &parts.headers {
        forward = forward.header(k, v);
    }
    let Ok(forward) = forward.body(Full::new(body)) else { return answer(500, &[], b"bad request".to_vec()) };
    let Ok(rsp) = up.client.request(forward).await else { return answer(502, &[], b"pebble is unreachable".to_vec()) };
    let status = rsp.status().as_u16();
    let headers: Vec<(String, String)> = rsp
        .headers()
        .iter()
        .filter(|(k, _)| *k != hyper::header::CONTENT_LENGTH && *k != hyper::header::TRANSFER_ENCODING)
        .map(|(k, v)| (k.to_string(), v.to_str().unwrap_or("").to_string()))
        .collect();
    let mut out = rsp.into_body().collect().await.map(|b| b.to_bytes().to_vec()).unwrap_or_default();
    if path == "/dir" && status == 200 {
        // What pebble 2.4 does not offer: the renewal information endpoint.
        if let Ok(mut dir) = serde_json::from_slice::<Value>(&out) {
            dir["renewalInfo"] = json!(format!("https://{host}/ari"));
            out = dir.to_string().into_bytes();
        }
    }
    if path == "/order-plz" {
        state.lock().expect("state").orders.push(SeenOrder { at: Instant::now(), replaces: replaces.clone(), status });
        // A server that takes `replaces` says so in the order (RFC 9773 §5); pebble 2.4 ignores the field.
        if let (Some(r), Ok(mut order)) = (&replaces, serde_json::from_slice::<Value>(&out)) {
            order["replaces"] = json!(r);
            out = order.to_string().into_bytes();
        }
    }
    let headers: Vec<(&str, String)> = headers.iter().map(|(k, v)| (k.as_str(), v.clone())).collect();
    answer(status, &headers, out)
}

/// The JSON payload of a JWS request body (not verified: pebble verifies it).
fn payload(body: &[u8]) -> Value {
    let jws: Value = serde_json::from_slice(body).unwrap_or(Value::Null);
    let b64 = jws["payload"].as_str().unwrap_or("");
    let raw = base64::engine::general_purpose::URL_SAFE_NO_PAD.decode(b64).unwrap_or_default();
    serde_json::from_slice(&raw).unwrap_or(Value::Null)
}

/// The window for certificate `id`: the one it was first given, else the next of the test's from now.
fn renewal_info(id: &str, state: &Mutex<State>) -> Response<Full<Bytes>> {
    let mut s = state.lock().expect("state");
    let (start, end) = match s.asked.iter().find(|(seen, _, _)| seen == id) {
        Some((_, start, end)) => (*start, *end),
        None => {
            let w = match s.windows.len() {
                0 => Window { start: chrono::Duration::days(30), end: chrono::Duration::days(31) },
                1 => s.windows[0],
                _ => s.windows.pop_front().expect("a window"),
            };
            let now = chrono::Utc::now();
            s.asked.push((id.to_string(), now + w.start, now + w.end));
            (now + w.start, now + w.end)
        }
    };
    let body = json!({"suggestedWindow": {
        "start": start.to_rfc3339_opts(chrono::SecondsFormat::Secs, true),
        "end": end.to_rfc3339_opts(chrono::SecondsFormat::Secs, true),
    }});
    answer(
        200,
        &[("content-type", "application/json".into()), ("retry-after", "3600".into())],
        body.to_string().into_bytes(),
    )
}
