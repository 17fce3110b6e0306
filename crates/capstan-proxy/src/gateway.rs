//! Gateway listeners: one socket shared by many routes. A request is matched against the listener's route table,
//! its rule's filters run (redirect, rewrite, header modifiers), a backend App is chosen by weight, and from there
//! it takes the entry points' own proxy path (`http::handle`): one proxy path, not two.

use std::borrow::Cow;
use std::future::Future;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use arc_swap::ArcSwap;

use capstan_model::gateway::{HeaderModifier, HttpPathModifier, PathModifierType, RequestRedirect, UrlRewrite};
use capstan_model::{Expose, ObjectKey};
use futures_util::future::{Either, FutureExt};
use http_body_util::BodyExt;
use hyper::body::Incoming;
use hyper::header::{self, HeaderName, HeaderValue};
use hyper::{HeaderMap, Request, Response, StatusCode, Uri, Version};
use rustls::server::{ClientHello, ResolvesServerCert};
pub use rustls::sign::CertifiedKey;

use crate::http::{plain, Client};
use crate::routes::{host_of, HostPattern, RouteTable};
use crate::{Entry, ProxyBody};

/// What a rule does with a request it matched.
pub struct RuleAction {
    /// `namespace/route` and the rule's index or name, for metrics and messages.
    pub id: String,
    pub request_headers: Option<HeaderModifier>,
    pub response_headers: Option<HeaderModifier>,
    pub redirect: Option<RequestRedirect>,
    pub rewrite: Option<UrlRewrite>,
    pub backends: Vec<RouteBackend>,
    /// Where copies of its requests go (RequestMirror filters).
    pub mirrors: Vec<crate::mirror::Mirror>,
    /// The proxy settings of its backends, as an entry point's: timeouts, session persistence (a sticky cookie).
    pub settings: Expose,
    /// Gateway API's `timeouts.request`: the whole request, every attempt included, to its response. None: no
    /// limit but each attempt's.
    pub request_timeout: Option<Duration>,
    /// Gateway API's `timeouts.backendRequest`: one attempt, from sending it to the backend's response. None: the
    /// settings' request timeout.
    pub backend_request_timeout: Option<Duration>,
    /// A fixed answer instead of a backend: an ACME HTTP-01 challenge's key authorization, as `text/plain`.
    pub answer: Option<bytes::Bytes>,
    /// Requests it has taken, for the weights: kept by the proxy across plan changes (by `id`), so a new plan does
    /// not start every split again at its first backend.
    pub(crate) next: OnceLock<Arc<AtomicUsize>>,
}

impl RuleAction {
    pub fn new(id: String, settings: Expose) -> RuleAction {
        RuleAction {
            id,
            request_headers: None,
            response_headers: None,
            redirect: None,
            rewrite: None,
            backends: Vec::new(),
            mirrors: Vec::new(),
            settings,
            request_timeout: None,
            backend_request_timeout: None,
            answer: None,
            next: OnceLock::new(),
        }
    }

    /// The backend of the next request: weights are kept exactly over every run of `total` requests, spread
    /// through it (a stride coprime with the total) rather than in blocks.
    pub(crate) fn pick(&self) -> Option<&RouteBackend> {
        if let [only] = self.backends.as_slice() {
            // One backend takes every request: no count to keep (it is shared by every worker).
            return (only.weight > 0).then_some(only);
        }
        let total: u64 = self.backends.iter().map(|b| u64::from(b.weight)).sum();
        if total == 0 {
            return None;
        }
        let n = self.next.get_or_init(Arc::default).fetch_add(1, Ordering::Relaxed) as u64;
        let stride = [7919u64, 7927, 7933, 7937].into_iter().find(|p| !total.is_multiple_of(*p)).unwrap_or(1);
        let mut at = (n.wrapping_mul(stride)) % total;
        for b in &self.backends {
            if at < u64::from(b.weight) {
                return Some(b);
            }
            at -= u64::from(b.weight);
        }
        None
    }
}

/// One backendRef of a rule: an App and the port its Service port names.
pub struct RouteBackend {
    pub app: ObjectKey,
    /// The App's port name, or why the reference does not resolve (its share of requests is answered 500).
    pub port: Result<String, String>,
    pub weight: u32,
    pub request_headers: Option<HeaderModifier>,
    pub response_headers: Option<HeaderModifier>,
    /// TLS to its replicas, when a BackendTLSPolicy targets its port.
    pub tls: Option<Arc<crate::upstream_tls::UpstreamTls>>,
    /// Its port speaks HTTP/2 without TLS (`appProtocol: kubernetes.io/h2c`).
    pub h2c: bool,
    /// Filled in by the proxy when the plan is installed.
    pub(crate) entry: OnceLock<Arc<Entry>>,
}

impl RouteBackend {
    pub fn new(app: ObjectKey, port: Result<String, String>, weight: u32) -> RouteBackend {
        RouteBackend {
            app,
            port,
            weight,
            request_headers: None,
            response_headers: None,
            tls: None,
            h2c: false,
            entry: OnceLock::new(),
        }
    }
}

/// The routes of one Gateway listener on a shared socket: requests for its host name (or any, without one) are
/// matched against its routes only; on an HTTPS socket, its certificate answers the handshakes for that name. On a
/// TLS or TCP socket, one host name of a TLSRoute (or a TCPRoute's every name) and where its connections go.
pub struct VirtualHost {
    /// The listener's host name (the route's, within it, on a TLS or TCP socket).
    pub host: HostPattern,
    /// The listener's own host name: on a TLS socket the most specific listener covering a name is chosen before
    /// its routes are, as on HTTP sockets.
    pub listener: HostPattern,
    pub routes: RouteTable<RuleAction>,
    pub cert: Option<Arc<CertifiedKey>>,
    /// A TLS or TCP socket's route for this host name: its backends, split by weight.
    pub stream: Option<Arc<RuleAction>>,
    /// On a TLS socket: the connection goes to the backend as it came, still encrypted (`tls.mode: Passthrough`);
    /// otherwise Capstan ends TLS with `cert` and the backend gets the plain bytes.
    pub passthrough: bool,
}

impl VirtualHost {
    /// A listener of an HTTP or HTTPS socket, with its routes.
    pub fn http(host: HostPattern, routes: RouteTable<RuleAction>, cert: Option<Arc<CertifiedKey>>) -> VirtualHost {
        VirtualHost { listener: host.clone(), host, routes, cert, stream: None, passthrough: false }
    }

    /// A route's host name on a listener of a TLS socket (or a TCP socket's one route), and where its connections
    /// go.
    pub fn stream(
        listener: HostPattern,
        host: HostPattern,
        action: Option<Arc<RuleAction>>,
        cert: Option<Arc<CertifiedKey>>,
        passthrough: bool,
    ) -> VirtualHost {
        VirtualHost { host, listener, routes: RouteTable::new(Vec::new()), cert, stream: action, passthrough }
    }
}

/// What a shared socket speaks, from its listeners' protocol.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum SocketMode {
    #[default]
    Http,
    Https,
    /// TLS connections routed by their server name (SNI), passed through or ended here.
    Tls,
    /// Connections of any protocol, to one route's backends.
    Tcp,
}

/// The protocol an ACME server offers, alone, when it validates a TLS-ALPN-01 challenge (RFC 8737).
pub const ACME_TLS_ALPN: &[u8] = b"acme-tls/1";

/// One shared socket: where it binds, what it speaks, and its listeners' routes.
pub struct ListenerPlan {
    pub address: String,
    pub port: u16,
    pub mode: SocketMode,
    /// In any order: they are ordered by host specificity when installed.
    pub hosts: Vec<VirtualHost>,
    /// ACME TLS-ALPN-01 answers: the certificate a validation handshake for this exact name gets.
    pub acme: Vec<(String, Arc<CertifiedKey>)>,
    /// Client certificates asked on this port (a TLS socket that ends TLS).
    pub client_auth: Option<Arc<crate::client_auth::ClientAuth>>,
}

/// A socket's listeners, swapped whole when they change; open connections see the new ones on their next request,
/// and new TLS handshakes the new certificates.
#[derive(Default)]
pub struct Routes {
    /// Read at every request and handshake without a lock or a shared count, by every worker at once.
    hosts: ArcSwap<Vec<VirtualHost>>,
    /// Its listening port, for redirects that keep it.
    pub port: u16,
    /// It terminates TLS for HTTP: requests are `https`.
    pub https: bool,
    pub mode: SocketMode,
    /// The client certificates its handshakes ask for, swapped live as its hosts are.
    pub(crate) client_auth: Arc<crate::client_auth::LiveClientAuth>,
    /// ACME TLS-ALPN-01 answers by exact host name, swapped live.
    acme: ArcSwap<Vec<(String, Arc<CertifiedKey>)>>,
}

impl std::fmt::Debug for Routes {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "gateway socket on port {}", self.port)
    }
}

/// Chooses the certificate of a TLS handshake by its server name (SNI) among the socket's listeners, the most
/// specific host name first; without a name, a listener without a host name's.
impl ResolvesServerCert for Routes {
    fn resolve(&self, hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        // An ACME server validating TLS-ALPN-01 offers `acme-tls/1` alone and names the host: it gets that name's
        // challenge certificate (and nothing else is served on the connection), or the handshake fails.
        let acme_only = hello.alpn().is_some_and(|mut p| p.next() == Some(ACME_TLS_ALPN) && p.next().is_none());
        if acme_only {
            let name = hello.server_name()?.trim_end_matches('.').to_ascii_lowercase();
            return self.acme.load().iter().find(|(h, _)| *h == name).map(|(_, c)| c.clone());
        }
        let hosts = self.hosts.load();
        let with_cert = hosts.iter().filter(|h| h.cert.is_some());
        let any = || with_cert.clone().find(|h| h.host == HostPattern::Any);
        // An unknown name gets a listener without a host name's certificate, or none (the handshake fails): never
        // another host's, which would tell a scanner what else is served here.
        let chosen = match hello.server_name() {
            Some(name) => {
                let name = name.trim_end_matches('.').to_ascii_lowercase();
                with_cert.clone().find(|h| h.host.matches(&name)).or_else(any)
            }
            None => any(),
        };
        chosen.and_then(|h| h.cert.clone())
    }
}

/// A certificate chain and its private key from PEM, checked to belong together: what a listener serves.
pub fn certified_key(chain_pem: &[u8], key_pem: &[u8]) -> Result<CertifiedKey, String> {
    use rustls::pki_types::pem::PemObject;
    use rustls::pki_types::{CertificateDer, PrivateKeyDer};
    // The parsers' errors are not shown: some quote the offending line, which may be key material, and status is
    // readable by those who may not read the Secret.
    let chain: Vec<CertificateDer<'static>> = CertificateDer::pem_slice_iter(chain_pem)
        .collect::<Result<_, _>>()
        .map_err(|_| "tls.crt is not PEM certificates (-----BEGIN CERTIFICATE----- blocks)".to_string())?;
    if chain.is_empty() {
        return Err("tls.crt holds no certificate".into());
    }
    let key = PrivateKeyDer::from_pem_slice(key_pem)
        .map_err(|_| "tls.key is not a PEM private key (PKCS#8, PKCS#1 or SEC1)".to_string())?;
    let provider = rustls::crypto::ring::default_provider();
    CertifiedKey::from_der(chain, key, &provider).map_err(|e| match e {
        rustls::Error::InconsistentKeys(_) => "tls.key is not the key of the certificate in tls.crt".to_string(),
        _ => {
            "tls.key is not a key this server can sign with, or tls.crt's first certificate cannot be read".to_string()
        }
    })
}

/// A TLS-ALPN-01 challenge's certificate and key from PEM, as a handshake answers with it. Not checked as
/// [`certified_key`] checks a listener's: webpki refuses to read a certificate with an unknown critical extension,
/// and the challenge's acmeIdentifier is one (RFC 8737) — the ACME server reads it, no client trusts it.
pub fn challenge_certified_key(cert_pem: &[u8], key_pem: &[u8]) -> Result<CertifiedKey, String> {
    use rustls::pki_types::pem::PemObject;
    use rustls::pki_types::{CertificateDer, PrivateKeyDer};
    let cert =
        CertificateDer::from_pem_slice(cert_pem).map_err(|_| "the challenge certificate is not PEM".to_string())?;
    let key = PrivateKeyDer::from_pem_slice(key_pem).map_err(|_| "the challenge key is not PEM".to_string())?;
    let key = rustls::crypto::ring::sign::any_supported_type(&key).map_err(|e| e.to_string())?;
    Ok(CertifiedKey::new(vec![cert], key))
}

/// The TLS server configuration of an HTTPS or TLS socket: its certificates chosen by SNI, live. HTTPS offers
/// HTTP/2 or HTTP/1.1 by ALPN (a client sending no ALPN gets HTTP/1.1; one offering only other protocols is
/// refused, as RFC 7301 says); a TLS socket ends TLS for a backend whose protocol it does not know, so it offers
/// none.
pub(crate) fn tls_config(routes: Arc<Routes>) -> Result<Arc<rustls::ServerConfig>, rustls::Error> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let builder = rustls::ServerConfig::builder_with_provider(provider).with_safe_default_protocol_versions()?;
    let http = routes.mode == SocketMode::Https;
    let sessions = Arc::new(crate::client_auth::Sessions::new(routes.client_auth.clone()));
    let mut config = builder.with_client_cert_verifier(routes.client_auth.clone()).with_cert_resolver(routes);
    config.session_storage = sessions;
    if http {
        config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec(), ACME_TLS_ALPN.to_vec()];
    }
    Ok(Arc::new(config))
}

impl Routes {
    pub fn new(port: u16, mode: SocketMode) -> Routes {
        Routes {
            hosts: ArcSwap::default(),
            port,
            https: mode == SocketMode::Https,
            mode,
            client_auth: Arc::new(crate::client_auth::LiveClientAuth::new()),
            acme: ArcSwap::default(),
        }
    }

    /// Installs the socket's ACME TLS-ALPN-01 answers.
    pub(crate) fn set_acme(&self, acme: Vec<(String, Arc<CertifiedKey>)>) {
        self.acme.store(Arc::new(acme));
    }

    pub(crate) fn hosts(&self) -> Arc<Vec<VirtualHost>> {
        self.hosts.load_full()
    }

    /// Installs a socket's listeners, the most specific host name first (as Gateway API picks a listener), and
    /// within a listener its routes' host names, the most specific first.
    pub(crate) fn set(&self, mut hosts: Vec<VirtualHost>) {
        hosts.sort_by_key(|h| (h.listener.rank(), h.host.rank()));
        self.hosts.store(Arc::new(hosts));
    }
}

/// Every rule of a plan once, with its backends: what the proxy fills with entries when the plan is installed.
pub(crate) fn rules(hosts: &[VirtualHost]) -> Vec<&RuleAction> {
    let mut seen = std::collections::HashSet::new();
    hosts
        .iter()
        .flat_map(|h| h.routes.entries().map(|e| &e.action).chain(h.stream.as_ref()))
        .filter(|a| seen.insert(Arc::as_ptr(a)))
        .map(|a| a.as_ref())
        .collect()
}

/// What backends are told of the connection's client certificate, once the port's CAs accepted it.
#[derive(Clone)]
pub(crate) struct ClientCert(pub HeaderValue);

/// The header that carries it (Envoy's name and form); whatever a client sends under it is dropped.
const FORWARDED_CLIENT_CERT: HeaderName = HeaderName::from_static("x-forwarded-client-cert");

/// The client's own host, kept for `X-Forwarded-Host` when a rewrite changes `Host`.
#[derive(Clone)]
pub(crate) struct OriginalHost(pub HeaderValue);

/// A request path as routes see it: unreserved characters percent-decoded, `.` and `..` segments removed, repeated
/// slashes merged — so `/api/./admin`, `/api//admin` and `/%61pi/admin` are all `/api/admin` and cannot slip past
/// a rule written for it. None for a path that is not absolute.
pub fn normalize_path(path: &str) -> Option<Cow<'_, str>> {
    if !path.starts_with('/') {
        return None;
    }
    // Most paths are normal already: no escape, no empty segment (but a final one: a trailing slash), no `.` or
    // `..` segment. One pass over the segments, at every request.
    let plain = !path.as_bytes().contains(&b'%') && {
        let mut segments = path[1..].split('/').peekable();
        let mut plain = true;
        while let Some(seg) = segments.next() {
            if (seg.is_empty() && segments.peek().is_some()) || seg == "." || seg == ".." {
                plain = false;
                break;
            }
        }
        plain
    };
    if plain {
        return Some(Cow::Borrowed(path));
    }
    let bytes = path.as_bytes();
    let mut decoded = String::with_capacity(path.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' && i + 2 < bytes.len() {
            let hex = std::str::from_utf8(&bytes[i + 1..i + 3]).ok().and_then(|h| u8::from_str_radix(h, 16).ok());
            if let Some(c) = hex.filter(|c| c.is_ascii_alphanumeric() || b"-._~".contains(c)) {
                decoded.push(c as char);
                i += 3;
                continue;
            }
        }
        decoded.push(bytes[i] as char);
        i += 1;
    }
    let mut segments: Vec<&str> = Vec::new();
    for seg in decoded.split('/').skip(1) {
        match seg {
            "" | "." => {}
            ".." => {
                segments.pop();
            }
            s => segments.push(s),
        }
    }
    let trailing = decoded.ends_with('/') || decoded.ends_with("/.") || decoded.ends_with("/..");
    let mut out = format!("/{}", segments.join("/"));
    if trailing && out != "/" {
        out.push('/');
    }
    Some(Cow::Owned(out))
}

/// Serves one request arriving on a gateway listener; `sni` is the server name its TLS handshake asked for,
/// lower-cased and without a final dot.
pub fn handle(
    routes: &Routes,
    req: Request<Incoming>,
    client: Client,
    sni: Option<&str>,
) -> impl Future<Output = Response<ProxyBody>> + Send + 'static {
    // Routing is done now; the future holds only what forwarding needs. Every request's future is moved into a task
    // of its own, whole: a future carrying the routing's state as well would be copied at every request.
    match route(routes, req, &client, sni) {
        Err(answer) => Either::Left(std::future::ready(answer)),
        Ok(Forward { entry, req, action, backend, place }) => {
            Either::Right(crate::http::handle(entry, req, client).map(move |mut answer| {
                let backend = &action.backends[backend];
                if let Some(m) = &backend.response_headers {
                    modify(answer.headers_mut(), m);
                }
                if let Some(m) = &action.response_headers {
                    modify(answer.headers_mut(), m);
                }
                match place {
                    Some(place) => answer.map(|body| crate::serve::Tracked::new(body, place).boxed()),
                    None => answer,
                }
            }))
        }
    }
}

/// A request on its way to a backend, with what its answer gets on the way back.
struct Forward {
    entry: Arc<Entry>,
    req: Request<GatewayBody>,
    action: Arc<RuleAction>,
    /// The backend's index among the rule's.
    backend: usize,
    /// An HTTP/2 stream's place in the connection budget, held until its answer's body is sent.
    place: Option<crate::gate::StreamPlace>,
}

/// Chooses the rule and the backend of a request and applies the rule's request filters: the request to forward,
/// or the answer when there is nothing to forward (a redirect, no route, a refusal).
#[allow(clippy::result_large_err, reason = "the answer goes straight back to the client: boxing it costs a malloc")]
fn route(
    routes: &Routes,
    mut req: Request<Incoming>,
    client: &Client,
    sni: Option<&str>,
) -> Result<Forward, Response<ProxyBody>> {
    if !req.headers().contains_key(header::HOST) {
        // HTTP/2 names the host in `:authority`: the backend, spoken to in HTTP/1.1, gets it as `Host`.
        if let Some(v) = req.uri().authority().and_then(|a| HeaderValue::from_str(a.as_str()).ok()) {
            req.headers_mut().insert(header::HOST, v);
        }
    }
    // An HTTP/2 stream beyond its connection's first takes a place in the connection budget, as it may hold an
    // upstream connection as a connection does: without one, a few clients' streams could use every descriptor.
    let place = match req.extensions().get::<crate::gate::Held>().filter(|_| req.version() == Version::HTTP_2) {
        Some(held) => match held.stream() {
            Some(place) => place,
            None => {
                return Err(plain(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "Capstan holds as many connections and streams as it may; retry shortly".into(),
                ))
            }
        },
        None => None,
    };
    if let Some(path) = normalize_path(req.uri().path()).filter(|p| matches!(p, Cow::Owned(_))) {
        // The backend sees the path the routes matched.
        let pq = match req.uri().query() {
            Some(q) => format!("{path}?{q}"),
            None => path.into_owned(),
        };
        match pq.parse::<Uri>() {
            Ok(uri) => *req.uri_mut() = uri,
            Err(_) => return Err(plain(StatusCode::BAD_REQUEST, "the request path is not valid".into())),
        }
    } else if !req.uri().path().starts_with('/') {
        return Err(plain(StatusCode::BAD_REQUEST, "the request path must start with `/`".into()));
    }
    // Routing borrows the request (its host, path and query) and the socket's routes as they are now; it keeps only
    // the rule it chose (and the prefix it matched, for the filters that use it).
    let (action, prefix) = {
        let hosts = routes.hosts.load();
        let host_header = req.headers().get(header::HOST).and_then(|h| h.to_str().ok()).unwrap_or_default();
        // A request naming no host (HTTP/1.0) is for the name its connection was made for.
        let host = match (host_header, sni) {
            ("", Some(name)) => Cow::Borrowed(name),
            _ => host_of(host_header),
        };
        let (path, query) = (req.uri().path(), req.uri().query());
        // The most specific listener whose host name covers the request's, and only its routes.
        let Some(vhost) = hosts.iter().find(|h| h.host.matches(&host)) else {
            return Err(plain(StatusCode::NOT_FOUND, format!("no listener on this port serves {host}")));
        };
        if let Some(name) = sni {
            // A connection made for one listener's name (and certificate) may not carry another listener's
            // requests: a browser reusing an HTTP/2 connection for a second name its certificate covers is told to
            // open one of its own (RFC 9110 section 15.5.20).
            let chosen = hosts.iter().find(|h| h.host.matches(name));
            if chosen.is_some_and(|c| !std::ptr::eq(c, vhost)) {
                return Err(plain(
                    StatusCode::MISDIRECTED_REQUEST,
                    format!("this connection was made for {name}; open a new one for {host}"),
                ));
            }
        }
        let r =
            crate::routes::Request { host: &host, path, query, method: req.method().as_str(), headers: req.headers() };
        let Some(found) = vhost.routes.find(&r) else {
            return Err(plain(StatusCode::NOT_FOUND, format!("no route for {host}{path}")));
        };
        let action = &found.action;
        let prefix = found.matcher.prefix();
        if let Some(r) = &action.redirect {
            let scheme = if routes.https { "https" } else { "http" };
            return Err(redirect(r, scheme, &host, routes.port, path, query, prefix));
        }
        if let Some(body) = &action.answer {
            let mut r = Response::new(crate::http::boxed(http_body_util::Full::new(body.clone())));
            r.headers_mut().insert(header::CONTENT_TYPE, HeaderValue::from_static("text/plain"));
            return Err(r);
        }
        let uses_prefix = action.rewrite.as_ref().is_some_and(|rw| rw.path.is_some());
        (action.clone(), prefix.filter(|_| uses_prefix).map(str::to_string))
    };
    // What the client used, whatever it claims (a client on plain HTTP must not pass for one on HTTPS).
    let proto = HeaderValue::from_static(if routes.https { "https" } else { "http" });
    if routes.https {
        req.extensions_mut().insert(crate::http::OverTls);
    }
    req.headers_mut().insert(HeaderName::from_static("x-forwarded-proto"), proto);
    // A client cannot say who it is by header: only the handshake's checked certificate is passed on.
    req.headers_mut().remove(FORWARDED_CLIENT_CERT);
    if let Some(ClientCert(c)) = req.extensions_mut().remove::<ClientCert>() {
        req.headers_mut().insert(FORWARDED_CLIENT_CERT, c);
    }
    if let Some(m) = &action.request_headers {
        modify(req.headers_mut(), m);
    }
    if let Some(rw) = &action.rewrite {
        if let Some(h) = &rw.hostname {
            if let (Ok(v), Some(original)) = (HeaderValue::from_str(h), req.headers().get(header::HOST).cloned()) {
                req.extensions_mut().insert(OriginalHost(original));
                req.headers_mut().insert(header::HOST, v);
            }
        }
        if let Some(p) = &rw.path {
            let new_path = replace_path(p, req.uri().path(), prefix.as_deref());
            let pq = match req.uri().query() {
                Some(q) => format!("{new_path}?{q}"),
                None => new_path,
            };
            if let Ok(uri) = pq.parse::<Uri>() {
                *req.uri_mut() = uri;
            }
        }
    }
    // A session already pinned to a replica of one of the backends stays with it while that backend has weight.
    let cookie = action.settings.sticky.as_ref().and_then(|s| s.cookie.as_ref());
    let pinned = cookie.and_then(|c| crate::http::cookie_value(req.headers(), &c.name)).and_then(|v| {
        action
            .backends
            .iter()
            .filter(|b| b.weight > 0)
            .find(|b| b.entry.get().and_then(|e| e.backends.by_cookie(v)).is_some_and(|backend| backend.eligible()))
    });
    let Some(backend) = pinned.or_else(|| action.pick()) else {
        return Err(plain(
            StatusCode::INTERNAL_SERVER_ERROR,
            format!("route {} has no backend with weight", action.id),
        ));
    };
    let entry = match (&backend.port, backend.entry.get()) {
        (Ok(_), Some(e)) => e.clone(),
        (Err(why), _) => return Err(plain(StatusCode::INTERNAL_SERVER_ERROR, why.clone())),
        (Ok(_), None) => {
            return Err(plain(StatusCode::INTERNAL_SERVER_ERROR, format!("route {}: backend not ready", action.id)))
        }
    };
    // Copies for the mirrors chosen for this request, made before the backend's own header changes; the client's
    // body is passed to them as it goes by.
    // Upgrades (websockets) are not copied: a mirror's tunnel would have no client.
    let upgrade = crate::http::wants_upgrade(req.headers());
    let mirrors: Vec<&crate::mirror::Mirror> = action.mirrors.iter().filter(|m| !upgrade && m.chosen()).collect();
    let mut req = if mirrors.is_empty() {
        req.map(GatewayBody::Plain)
    } else {
        let no_body = hyper::body::Body::is_end_stream(req.body())
            || req.headers().get(header::CONTENT_LENGTH).is_some_and(|v| v.as_bytes() == b"0");
        let (parts, body) = req.into_parts();
        let copy_of = || {
            let mut r = Request::new(());
            *r.method_mut() = parts.method.clone();
            *r.uri_mut() = parts.uri.clone();
            *r.version_mut() = parts.version;
            *r.headers_mut() = parts.headers.clone();
            r
        };
        if no_body {
            for m in &mirrors {
                crate::mirror::send(
                    m,
                    copy_of().map(|()| http_body_util::Empty::<bytes::Bytes>::new()),
                    client.clone(),
                );
            }
            Request::from_parts(parts, GatewayBody::Plain(body))
        } else {
            let (tee, copies) = crate::mirror::Tee::new(body, mirrors.len());
            for (m, copy) in mirrors.iter().zip(copies) {
                crate::mirror::send(m, copy_of().map(|()| copy), client.clone());
            }
            Request::from_parts(parts, GatewayBody::Teed(tee))
        }
    };
    if let Some(m) = &backend.request_headers {
        modify(req.headers_mut(), m);
    }
    let backend = action.backends.iter().position(|b| std::ptr::eq(b, backend)).unwrap_or_default();
    Ok(Forward { entry, req, action, backend, place })
}

/// A request's body as it goes to its backend: as the client sends it, or copied to mirrors as it goes by.
pub(crate) enum GatewayBody {
    Plain(Incoming),
    Teed(crate::mirror::Tee<Incoming>),
}

impl hyper::body::Body for GatewayBody {
    type Data = bytes::Bytes;
    type Error = crate::BoxError;

    fn poll_frame(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Result<hyper::body::Frame<bytes::Bytes>, crate::BoxError>>> {
        match self.get_mut() {
            GatewayBody::Plain(b) => std::pin::Pin::new(b).poll_frame(cx).map(|f| f.map(|r| r.map_err(Into::into))),
            GatewayBody::Teed(b) => std::pin::Pin::new(b).poll_frame(cx),
        }
    }

    fn is_end_stream(&self) -> bool {
        match self {
            GatewayBody::Plain(b) => b.is_end_stream(),
            GatewayBody::Teed(b) => b.is_end_stream(),
        }
    }

    fn size_hint(&self) -> hyper::body::SizeHint {
        match self {
            GatewayBody::Plain(b) => b.size_hint(),
            GatewayBody::Teed(b) => b.size_hint(),
        }
    }
}

/// Sets, adds and removes headers as a HeaderModifier says (names without regard to case).
pub fn modify(h: &mut HeaderMap, m: &HeaderModifier) {
    for s in &m.set {
        if let (Ok(n), Ok(v)) = (HeaderName::from_bytes(s.name.as_bytes()), HeaderValue::from_str(&s.value)) {
            h.insert(n, v);
        }
    }
    for a in &m.add {
        if let (Ok(n), Ok(v)) = (HeaderName::from_bytes(a.name.as_bytes()), HeaderValue::from_str(&a.value)) {
            h.append(n, v);
        }
    }
    for r in &m.remove {
        if let Ok(n) = HeaderName::from_bytes(r.as_bytes()) {
            h.remove(n);
        }
    }
}

/// The path after a path modifier: the full path replaced, or the matched prefix replaced, as Gateway API's table
/// for `ReplacePrefixMatch` gives it (the remainder keeps its slashes; an empty result is `/`).
pub fn replace_path(p: &HttpPathModifier, path: &str, prefix: Option<&str>) -> String {
    match p.type_ {
        PathModifierType::ReplaceFullPath => p.replace_full_path.clone().unwrap_or_else(|| path.to_string()),
        PathModifierType::ReplacePrefixMatch => {
            let with = p.replace_prefix_match.as_deref().unwrap_or("").trim_end_matches('/');
            let matched = prefix.unwrap_or("/").trim_end_matches('/');
            let rest = path.strip_prefix(matched).unwrap_or(path);
            let out = format!("{with}{rest}");
            if out.is_empty() {
                "/".to_string()
            } else {
                out
            }
        }
    }
}

/// The answer of a RequestRedirect filter: a `Location` built from the request and the filter, as Gateway API
/// defines it (a changed scheme without a port drops the port; a kept scheme keeps the listener's port unless
/// it is the scheme's well-known one).
pub fn redirect(
    r: &RequestRedirect,
    request_scheme: &str,
    host: &str,
    listener_port: u16,
    path: &str,
    query: Option<&str>,
    prefix: Option<&str>,
) -> Response<ProxyBody> {
    let scheme = r.scheme.clone().unwrap_or_else(|| request_scheme.to_string());
    let well_known = |s: &str| if s == "https" { 443 } else { 80 };
    let port = match (r.port, &r.scheme) {
        (Some(p), _) => Some(p),
        (None, Some(_)) => None,
        (None, None) => Some(listener_port),
    }
    .filter(|p| *p != well_known(&scheme));
    let hostname = r.hostname.clone().unwrap_or_else(|| host.to_string());
    let new_path = r.path.as_ref().map_or_else(|| path.to_string(), |p| replace_path(p, path, prefix));
    let mut location = format!("{scheme}://{hostname}");
    if let Some(p) = port {
        location.push_str(&format!(":{p}"));
    }
    location.push_str(&new_path);
    if let Some(q) = query {
        location.push_str(&format!("?{q}"));
    }
    let mut answer = plain(StatusCode::from_u16(r.status_code).unwrap_or(StatusCode::FOUND), String::new());
    if let Ok(v) = HeaderValue::from_str(&location) {
        answer.headers_mut().insert(header::LOCATION, v);
    }
    answer
}

/// The entries of gateway listeners by (App, port name, rule id), kept across plan changes so a backend's pins
/// and metrics survive.
pub(crate) type EntryKey = (ObjectKey, String, String);

#[cfg(test)]
mod tests {
    use super::*;
    use capstan_model::gateway::HttpHeader;

    fn body_of(r: Response<ProxyBody>) -> (u16, Option<String>) {
        (r.status().as_u16(), r.headers().get(header::LOCATION).map(|v| v.to_str().unwrap().to_string()))
    }

    fn modifier(t: PathModifierType, v: &str) -> HttpPathModifier {
        match t {
            PathModifierType::ReplaceFullPath => {
                HttpPathModifier { type_: t, replace_full_path: Some(v.into()), replace_prefix_match: None }
            }
            PathModifierType::ReplacePrefixMatch => {
                HttpPathModifier { type_: t, replace_full_path: None, replace_prefix_match: Some(v.into()) }
            }
        }
    }

    /// Every row of Gateway API's table for `ReplacePrefixMatch` (HTTPPathModifier), and a full replacement.
    #[test]
    fn prefix_and_full_path_replacement() {
        let prefix = |path: &str, matched: &str, with: &str| {
            replace_path(&modifier(PathModifierType::ReplacePrefixMatch, with), path, Some(matched))
        };
        for (path, matched, with, want) in [
            ("/foo/bar", "/foo", "/xyz", "/xyz/bar"),
            ("/foo/bar", "/foo", "/xyz/", "/xyz/bar"),
            ("/foo/bar", "/foo/", "/xyz", "/xyz/bar"),
            ("/foo/bar", "/foo/", "/xyz/", "/xyz/bar"),
            ("/foo", "/foo", "/xyz", "/xyz"),
            ("/foo/", "/foo", "/xyz", "/xyz/"),
            ("/foo/bar", "/foo", "", "/bar"),
            ("/foo/", "/foo", "", "/"),
            ("/foo", "/foo", "", "/"),
            ("/foo/", "/foo", "/", "/"),
            ("/foo", "/foo", "/", "/"),
            ("/x", "/", "/new", "/new/x"),
        ] {
            assert_eq!(prefix(path, matched, with), want, "{path} with prefix {matched} replaced by {with:?}");
        }
        let full = replace_path(&modifier(PathModifierType::ReplaceFullPath, "/one"), "/full/path/original", None);
        assert_eq!(full, "/one");
    }

    #[test]
    fn paths_are_normalized_before_matching() {
        for (raw, want) in [
            ("/", "/"),
            ("/api/./admin", "/api/admin"),
            ("/api//admin", "/api/admin"),
            ("/%61pi/admin", "/api/admin"),
            ("/api/x/../admin/", "/api/admin/"),
            ("/../../etc", "/etc"),
            ("/a%2Fb", "/a%2Fb"),
            ("/a%zz", "/a%zz"),
            ("/trail%", "/trail%"),
            ("/api/v1/items.json", "/api/v1/items.json"),
            ("/a/..", "/"),
            ("/.", "/"),
        ] {
            assert_eq!(normalize_path(raw).as_deref(), Some(want), "{raw}");
        }
        assert_eq!(normalize_path("relative"), None);
    }

    #[test]
    fn redirects_follow_gateway_api_port_and_scheme_rules() {
        let r = |scheme: Option<&str>, port: Option<u16>, host: Option<&str>, code: u16| RequestRedirect {
            scheme: scheme.map(str::to_string),
            hostname: host.map(str::to_string),
            path: None,
            port,
            status_code: code,
        };
        // Scheme changed, no port: the well-known port of the new scheme (so none in the URL).
        assert_eq!(
            body_of(redirect(
                &r(Some("https"), None, None, 301),
                "http",
                "shop.example.com",
                8080,
                "/a",
                Some("x=1"),
                None
            )),
            (301, Some("https://shop.example.com/a?x=1".into()))
        );
        // Nothing changed but the host: the listener's port stays.
        assert_eq!(
            body_of(redirect(
                &r(None, None, Some("new.example.com"), 302),
                "http",
                "old.example.com",
                8080,
                "/",
                None,
                None
            )),
            (302, Some("http://new.example.com:8080/".into()))
        );
        // A port on the listener's well-known port is left out; an explicit one is kept.
        assert_eq!(
            body_of(redirect(&r(None, None, None, 302), "http", "h", 80, "/p", None, None)).1.unwrap(),
            "http://h/p"
        );
        assert_eq!(
            body_of(redirect(&r(Some("https"), Some(8443), None, 302), "http", "h", 80, "/p", None, None)).1.unwrap(),
            "https://h:8443/p"
        );
        let mut with_path = r(None, None, None, 302);
        with_path.path = Some(modifier(PathModifierType::ReplacePrefixMatch, "/new"));
        assert_eq!(
            body_of(redirect(&with_path, "http", "h", 80, "/old/x", None, Some("/old"))).1.unwrap(),
            "http://h/new/x"
        );
    }

    #[test]
    fn header_modifiers_set_add_and_remove_without_regard_to_case() {
        let mut h = HeaderMap::new();
        h.insert("x-keep", "1".parse().unwrap());
        h.insert("x-set", "old".parse().unwrap());
        h.insert("x-gone", "1".parse().unwrap());
        let m = HeaderModifier {
            set: vec![HttpHeader { name: "X-Set".into(), value: "new".into() }],
            add: vec![HttpHeader { name: "x-keep".into(), value: "2".into() }],
            remove: vec!["X-Gone".into()],
        };
        modify(&mut h, &m);
        assert_eq!(h.get("x-set").unwrap(), "new");
        assert_eq!(h.get_all("x-keep").iter().map(|v| v.to_str().unwrap()).collect::<Vec<_>>(), ["1", "2"]);
        assert!(h.get("x-gone").is_none());
    }

    #[test]
    fn weights_are_exact_over_each_run_and_spread_through_it() {
        let mut a = RuleAction::new("r".into(), Expose::http(1));
        for (name, w) in [("big", 90), ("small", 10), ("none", 0)] {
            a.backends.push(RouteBackend::new(ObjectKey::new("App", "default", name), Ok("http".into()), w));
        }
        let picks: Vec<&str> = (0..1000).map(|_| a.pick().unwrap().app.name.as_str()).collect();
        assert_eq!(picks.iter().filter(|p| **p == "small").count(), 100);
        assert_eq!(picks.iter().filter(|p| **p == "none").count(), 0);
        // Not in one block: among the first 20 requests, both backends serve.
        assert!(picks[..20].contains(&"small") && picks[..20].contains(&"big"), "{:?}", &picks[..20]);
        let empty = RuleAction::new("r".into(), Expose::http(1));
        assert!(empty.pick().is_none());
    }
}
