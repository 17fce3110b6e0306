//! The HTTP side: pick a replica (sticky cookie, client IP or balance), forward with safe retries, stream bodies,
//! and tunnel websocket upgrades.

use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use crate::upstream::Sender;
use bytes::Bytes;
use http_body_util::{BodyExt, Empty, Full, Limited};
use hyper::body::{Body, Frame, Incoming, SizeHint};
use hyper::header::{self, HeaderMap, HeaderName, HeaderValue};
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::{TokioExecutor, TokioIo};

use crate::backend::{Backend, InflightGuard};
use crate::error::{ConnectError, ProxyError, Retry};
use crate::metrics::{ErrorLabels, ReplicaLabels};
use crate::{BoxError, Entry, ProxyBody};

/// Headers that describe one hop, never forwarded (RFC 9110 section 7.6.1, plus the non-standard ones in use).
const HOP_BY_HOP: [&str; 8] = [
    "connection",
    "keep-alive",
    "proxy-connection",
    "te",
    "trailer",
    "transfer-encoding",
    "upgrade",
    "proxy-authorization",
];

/// The position of `name` in `HOP_BY_HOP`. Most names are ruled out by their length alone.
fn hop_by_hop_index(name: &HeaderName) -> Option<usize> {
    let s = name.as_str();
    match s.len() {
        2 | 7 | 10 | 16 | 17 | 19 => HOP_BY_HOP.iter().position(|n| *n == s),
        _ => None,
    }
}

/// Headers never removed because the `Connection` header lists them (`Connection: host` used to strip `Host`).
const END_TO_END: [&str; 3] = ["host", "content-length", "content-type"];

// Header names built once: a name given as a string is copied into a new allocation at every insert.
const X_FORWARDED_FOR: HeaderName = HeaderName::from_static("x-forwarded-for");
const X_FORWARDED_PROTO: HeaderName = HeaderName::from_static("x-forwarded-proto");
const X_FORWARDED_HOST: HeaderName = HeaderName::from_static("x-forwarded-host");

/// The client at the other end of one connection, with what every request on it forwards about it.
#[derive(Clone)]
pub struct Client {
    addr: SocketAddr,
    /// The `X-Forwarded-For` value of a request that brings none, built once per connection.
    forwarded_for: Option<HeaderValue>,
}

impl Client {
    pub fn new(addr: SocketAddr) -> Client {
        Client { addr, forwarded_for: HeaderValue::from_maybe_shared(Bytes::from(addr.ip().to_string())).ok() }
    }

    /// `X-Forwarded-For` for a request that brought the `previous` values (one per header line): those joined
    /// into one list, the client's address appended. Values that are not visible ASCII are left out.
    fn forwarded_for<'h>(&self, previous: impl Iterator<Item = &'h HeaderValue>) -> Option<HeaderValue> {
        let mut list = String::new();
        for v in previous.filter_map(|v| v.to_str().ok()).map(str::trim).filter(|v| !v.is_empty()) {
            list.push_str(v);
            list.push_str(", ");
        }
        if list.is_empty() {
            return self.forwarded_for.clone();
        }
        list.push_str(&self.addr.ip().to_string());
        HeaderValue::from_str(&list).ok()
    }
}

/// The most attempts one request makes (distinct replicas, or a fresh connection after a stale one).
const MAX_ATTEMPTS: usize = 4;

pub(crate) fn boxed<B>(b: B) -> ProxyBody
where
    B: Body<Data = Bytes> + Send + Sync + 'static,
    B::Error: Into<BoxError>,
{
    b.map_err(Into::into).boxed()
}

pub(crate) fn plain(status: StatusCode, text: String) -> Response<ProxyBody> {
    let mut r = Response::new(boxed(Full::new(Bytes::from(text + "\n"))));
    *r.status_mut() = status;
    r.headers_mut().insert(header::CONTENT_TYPE, HeaderValue::from_static("text/plain; charset=utf-8"));
    r
}

fn is_idempotent(m: &Method) -> bool {
    matches!(*m, Method::GET | Method::HEAD | Method::OPTIONS | Method::PUT | Method::DELETE | Method::TRACE)
}

pub(crate) fn wants_upgrade(h: &HeaderMap) -> bool {
    h.get(header::UPGRADE).is_some()
        && h.get_all(header::CONNECTION)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .any(|v| v.split(',').any(|t| t.trim().eq_ignore_ascii_case("upgrade")))
}

/// Removes hop-by-hop headers, including those the Connection header names. One pass over the names; nothing is
/// allocated unless the Connection header names headers of its own.
fn strip_hop_by_hop(h: &mut HeaderMap) {
    let mut present = [false; HOP_BY_HOP.len()];
    for k in h.keys() {
        if let Some(i) = hop_by_hop_index(k) {
            present[i] = true;
        }
    }
    if present[0] {
        // HOP_BY_HOP[0] is `connection`: the names it lists go too.
        let listed: Vec<HeaderName> = h
            .get_all(header::CONNECTION)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .flat_map(|v| v.split(','))
            .map(str::trim)
            .filter(|t| {
                !t.eq_ignore_ascii_case("close")
                    && !t.eq_ignore_ascii_case("keep-alive")
                    && !t.eq_ignore_ascii_case("upgrade")
                    // End-to-end headers a client cannot make hop-by-hop: the replica must see the host it was
                    // asked for and the framing of the body.
                    && !END_TO_END.iter().any(|e| t.eq_ignore_ascii_case(e))
            })
            .filter_map(|t| HeaderName::from_bytes(t.to_ascii_lowercase().as_bytes()).ok())
            .collect();
        for n in listed {
            h.remove(n);
        }
    }
    for (name, _) in HOP_BY_HOP.iter().zip(present).filter(|(_, p)| *p) {
        h.remove(*name);
    }
}

/// The value of cookie `name` in the request, if sent.
pub fn cookie_value<'h>(h: &'h HeaderMap, name: &str) -> Option<&'h str> {
    h.get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|kv| kv.trim().split_once('='))
        .find(|(k, _)| *k == name)
        .map(|(_, v)| v.trim_matches('"'))
}

/// Joins the `Cookie` fields an HTTP/2 client may send one per cookie into the one field HTTP/1.1 allows
/// (RFC 9113 section 8.2.3).
fn join_cookies(h: &mut HeaderMap) {
    let header::Entry::Occupied(mut e) = h.entry(header::COOKIE) else { return };
    if e.iter().nth(1).is_none() {
        return;
    }
    let joined: Vec<&[u8]> = e.iter().map(HeaderValue::as_bytes).collect();
    if let Ok(v) = HeaderValue::from_bytes(&joined.join(&b"; "[..])) {
        e.insert(v);
    }
}

/// What the request's handling learns of the client's body as it is sent on.
#[derive(Default)]
struct BodyWatch {
    failed: std::sync::OnceLock<ClientBodyError>,
    /// Set once the whole body was read.
    done: std::sync::atomic::AtomicBool,
}

/// How the client's request body failed, if it did: told apart from a replica's failure, it is the client's
/// error (400, or 413 for a chunked body longer than `maxBodySize`), not a 502.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum ClientBodyError {
    Malformed,
    TooLarge,
    /// Nothing of it arrived for the entry point's `requestSeconds`.
    Stalled,
}

/// The request body on its way to the replica, noting how it failed. A body from which nothing arrives for
/// `stall` fails (nginx's `client_body_timeout`): a slow sender cannot hold a connection busy for ever.
struct ClientBody<B> {
    inner: Limited<B>,
    watch: Arc<BodyWatch>,
    stall: Duration,
    stalled: Pin<Box<tokio::time::Sleep>>,
}

impl<B> Body for ClientBody<B>
where
    B: Body<Data = Bytes> + Unpin,
    B::Error: Into<BoxError>,
{
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let this = self.get_mut();
        let polled = Pin::new(&mut this.inner).poll_frame(cx);
        match &polled {
            Poll::Pending => {
                if this.stalled.as_mut().poll(cx).is_ready() {
                    let _ = this.watch.failed.set(ClientBodyError::Stalled);
                    return Poll::Ready(Some(Err("the request body stopped arriving".into())));
                }
            }
            Poll::Ready(Some(Err(e))) => {
                let kind = if e.downcast_ref::<http_body_util::LengthLimitError>().is_some() {
                    ClientBodyError::TooLarge
                } else {
                    ClientBodyError::Malformed
                };
                let _ = this.watch.failed.set(kind);
            }
            Poll::Ready(None) => this.watch.done.store(true, std::sync::atomic::Ordering::Release),
            Poll::Ready(Some(Ok(_))) => {
                if this.inner.is_end_stream() {
                    this.watch.done.store(true, std::sync::atomic::Ordering::Release);
                }
                let stall = this.stall;
                this.stalled.as_mut().reset(tokio::time::Instant::now() + stall);
            }
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

/// Counts an open request until its response body ends, then gives the upstream connection back to the pool
/// (an HTTP/1.1 connection is reusable only once the whole response has been read).
struct Tracked {
    inner: Incoming,
    _guard: InflightGuard,
    pooled: Option<(Sender, Arc<Backend>)>,
}

impl Body for Tracked {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        Pin::new(&mut self.get_mut().inner).poll_frame(cx).map_err(Into::into)
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

impl Drop for Tracked {
    fn drop(&mut self) {
        // The server stops polling once the body says it has ended, so the hand-back happens here. A body that
        // was not read to its end (the client went away) leaves its HTTP/1.1 connection unusable: it is dropped
        // (an HTTP/2 connection's other streams are unaffected).
        if let Some((sender, backend)) = self.pooled.take() {
            if self.inner.is_end_stream() || sender.is_shared() {
                backend.checkin(sender);
            }
        }
    }
}

/// A new connection to a replica: TCP within `timeout`, then TLS when a BackendTLSPolicy asks for it (the
/// handshake within a `timeout` of its own), then HTTP/1.1 — or HTTP/2 for an h2c port (never for an upgrade, which
/// HTTP/2 does not carry).
async fn connect(
    addr: SocketAddr,
    timeout: Duration,
    upgrades: bool,
    tls: Option<&crate::upstream_tls::UpstreamTls>,
    h2c: bool,
) -> Result<Sender, ConnectError> {
    let stream = tokio::time::timeout(timeout, tokio::net::TcpStream::connect(addr))
        .await
        .map_err(|_| ConnectError::Timeout { addr })?
        .map_err(|source| ConnectError::Connect { addr, source })?;
    let _ = stream.set_nodelay(true);
    tracing::debug!(%addr, upgrades, tls = tls.is_some(), "new upstream connection");
    match tls {
        None if h2c && !upgrades => {
            let (sender, conn) = hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(stream))
                .await
                .map_err(|source| ConnectError::Handshake { addr, source })?;
            tokio::spawn(conn);
            Ok(Sender::H2(sender))
        }
        None => handshake(addr, TokioIo::new(stream), upgrades).await,
        Some(t) => {
            let secured = tokio::time::timeout(timeout, t.connector.connect(t.server_name.clone(), stream))
                .await
                .map_err(|_| ConnectError::Timeout { addr })?
                .map_err(|source| ConnectError::Tls { addr, source })?;
            handshake(addr, TokioIo::new(secured), upgrades).await
        }
    }
}

/// HTTP/1.1 on an open connection, driven by a task of its own.
async fn handshake<I>(addr: SocketAddr, io: I, upgrades: bool) -> Result<Sender, ConnectError>
where
    I: hyper::rt::Read + hyper::rt::Write + Unpin + Send + 'static,
{
    let (sender, conn) =
        hyper::client::conn::http1::handshake(io).await.map_err(|source| ConnectError::Handshake { addr, source })?;
    tokio::spawn(async move {
        let _ = if upgrades { conn.with_upgrades().await } else { conn.await };
    });
    Ok(Sender::H1(sender))
}

/// What is forwarded: the request line and headers, kept so a request without a body can be sent again.
struct Outgoing {
    method: Method,
    uri: hyper::Uri,
    headers: HeaderMap,
}

impl Outgoing {
    /// Builds the request; `keep` keeps the headers for a replay, otherwise they are moved out.
    fn build(&mut self, body: ProxyBody, keep: bool) -> Request<ProxyBody> {
        let mut r = Request::new(body);
        *r.method_mut() = self.method.clone();
        *r.uri_mut() = self.uri.clone();
        *r.headers_mut() = if keep { self.headers.clone() } else { std::mem::take(&mut self.headers) };
        r
    }
}

/// Whether a request may be sent a second time once written: the entry point allows it (`retryIdempotent`), the
/// method is idempotent, and there is no body to send again and no tunnel to open twice.
fn may_replay(retry_idempotent: bool, no_body: bool, method: &Method, upgrade: bool) -> bool {
    retry_idempotent && no_body && is_idempotent(method) && !upgrade
}

/// Serves one request arriving on an HTTP entry point (its body a client's, or a mirrored copy of one). What
/// comes before the first attempt (the replica chosen, the headers rewritten) is done now; the future returned holds
/// only what the attempts need, since every request's future is moved whole into its task.
pub fn handle<B>(
    entry: Arc<Entry>,
    req: Request<B>,
    client: Client,
) -> impl Future<Output = Response<ProxyBody>> + Send + 'static
where
    B: Body<Data = Bytes> + Send + Sync + Unpin + 'static,
    B::Error: Into<BoxError>,
{
    match prepare(entry, req, &client) {
        Err(answer) => futures_util::future::Either::Left(std::future::ready(answer)),
        Ok(p) => futures_util::future::Either::Right(forward(p, client)),
    }
}

/// Counts one failed request of an entry point by kind.
fn count_error(entry: &Entry, kind: &str) {
    entry
        .metrics
        .errors
        .get_or_create(&ErrorLabels {
            namespace: entry.namespace.clone(),
            app: entry.app.clone(),
            entry: entry.name.clone(),
            kind: kind.to_string(),
        })
        .inc();
}

/// The answer to a request that failed, counted.
fn fail(entry: &Entry, e: ProxyError) -> Response<ProxyBody> {
    count_error(entry, e.kind());
    plain(e.status(), e.to_string())
}

/// A request ready for its first attempt.
struct Prepared {
    entry: Arc<Entry>,
    cfg: Arc<crate::EntryConfig>,
    started: Instant,
    /// The client's side of a websocket, once the replica agrees.
    client_upgrade: Option<hyper::upgrade::OnUpgrade>,
    /// A tunnel's place in the gate.
    held: Option<crate::gate::Held>,
    /// The replica the request's cookie already names (and still serves): its cookie needs no rewrite.
    pinned_by_cookie: Option<Arc<Backend>>,
    backend: Arc<Backend>,
    /// The request counted in flight on `backend` from the moment it was chosen (for least-requests, and for a
    /// drain, which waits for it), taken by the first attempt.
    first_guard: Option<InflightGuard>,
    out: Outgoing,
    /// The request of the next attempt: the first, with the client's body; then a replay's, built from `out`.
    pending: Option<Request<ProxyBody>>,
    /// The client's body as it goes (None: the request has none).
    body: Option<Arc<BodyWatch>>,
    upgrade: bool,
    replayable: bool,
    over_tls: bool,
}

/// Chooses the replica and rewrites the request for it; or the answer, when it cannot be forwarded.
#[allow(clippy::result_large_err, reason = "the answer goes straight back to the client: boxing it costs a malloc")]
fn prepare<B>(entry: Arc<Entry>, mut req: Request<B>, client: &Client) -> Result<Prepared, Response<ProxyBody>>
where
    B: Body<Data = Bytes> + Send + Sync + Unpin + 'static,
    B::Error: Into<BoxError>,
{
    let cfg = entry.config();
    let started = Instant::now();
    crate::busy::request_starts(started);

    let length =
        req.headers().get(header::CONTENT_LENGTH).and_then(|v| v.to_str().ok()).and_then(|v| v.parse::<u64>().ok());
    if length.is_some_and(|l| l > cfg.max_body) {
        return Err(fail(&entry, ProxyError::BodyTooLarge { limit: cfg.max_body }));
    }
    let upgrade = cfg.expose.websockets && wants_upgrade(req.headers());
    let client_upgrade = upgrade.then(|| hyper::upgrade::on(&mut req));
    // A tunnel keeps its client connection's place in the gate (busy) for as long as it lives, and counts among
    // the tunnels, which may hold half the connection budget.
    let held = req.extensions_mut().remove::<crate::gate::Held>().filter(|_| upgrade);
    if held.as_ref().is_some_and(|h| !h.pin()) {
        count_error(&entry, "too_many_tunnels");
        return Err(plain(
            StatusCode::SERVICE_UNAVAILABLE,
            "Capstan holds as many tunnels as it may; retry shortly".into(),
        ));
    }

    // Pick the replica: a valid sticky cookie or client pin first, then the balance.
    let sticky_cookie = cfg.expose.sticky.as_ref().and_then(|s| s.cookie.as_ref());
    let sticky_ip = cfg.expose.sticky.as_ref().and_then(|s| s.client_ip.as_ref());
    // The replica the request's cookie already names (and still serves): its cookie needs no rewrite.
    let mut pinned_by_cookie: Option<Arc<Backend>> = None;
    let mut backend = None;
    if let Some(c) = sticky_cookie {
        backend =
            cookie_value(req.headers(), &c.name).and_then(|v| entry.backends.by_cookie(v)).filter(|b| b.eligible());
        pinned_by_cookie = backend.clone();
    } else if let Some(ci) = sticky_ip {
        backend = entry.backends.pinned_ip(client.addr.ip(), Duration::from_secs(u64::from(ci.timeout_seconds)));
    }
    let backend = match backend.or_else(|| entry.backends.pick(cfg.expose.balance, &[])) {
        Some(b) => b,
        None => {
            count_error(&entry, "no_backend");
            return Err(plain(
                StatusCode::SERVICE_UNAVAILABLE,
                format!("no ready replica of App {}/{} behind `{}`", entry.namespace, entry.app, entry.name),
            ));
        }
    };

    let (parts, body) = req.into_parts();
    let over_tls = parts.extensions.get::<OverTls>().is_some();
    let mut headers = parts.headers;
    // HTTP/1 says so with its framing headers, HTTP/2 with END_STREAM on the request's headers (hyper reads both).
    let no_body = length == Some(0) || body.is_end_stream();
    let upgrade_value = if upgrade { headers.get(header::UPGRADE).cloned() } else { None };
    // `te: trailers` is the one TE HTTP/2 carries, and gRPC servers require it.
    let te_trailers = cfg.h2c
        && headers
            .get_all(header::TE)
            .iter()
            .any(|v| v.to_str().is_ok_and(|t| t.split(',').any(|x| x.trim() == "trailers")));
    strip_hop_by_hop(&mut headers);
    if te_trailers {
        headers.insert(header::TE, HeaderValue::from_static("trailers"));
    }
    join_cookies(&mut headers);
    if let Some(u) = upgrade_value {
        headers.insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
        headers.insert(header::UPGRADE, u);
    }
    // One lookup: the entry gives the previous values and takes the new one in their place.
    match headers.entry(X_FORWARDED_FOR) {
        header::Entry::Occupied(mut e) => {
            if let Some(v) = client.forwarded_for(e.iter()) {
                e.insert(v);
            }
        }
        header::Entry::Vacant(e) => {
            if let Some(v) = client.forwarded_for.clone() {
                e.insert(v);
            }
        }
    }
    headers.entry(X_FORWARDED_PROTO).or_insert(HeaderValue::from_static("http"));
    // The host the client asked for, even when a gateway rule rewrote `Host`.
    let original = parts.extensions.get::<crate::gateway::OriginalHost>().map(|o| o.0.clone());
    if let Some(host) = original.or_else(|| headers.get(header::HOST).cloned()) {
        headers.insert(X_FORWARDED_HOST, host);
    }
    let uri = if parts.uri.scheme().is_none() {
        parts.uri.clone()
    } else {
        parts.uri.path_and_query().map(|p| p.as_str()).unwrap_or("/").parse().unwrap_or_default()
    };
    let mut out = Outgoing { method: parts.method.clone(), uri, headers };
    let replayable = may_replay(cfg.expose.retry_idempotent, no_body, &parts.method, upgrade);
    // An Upgrade request may carry a body too: it is forwarded like any other (sending its Content-Length
    // without it left the replica waiting).
    let watch = (!no_body).then(Arc::<BodyWatch>::default);
    let first_body: ProxyBody = match &watch {
        None => boxed(Empty::<Bytes>::new()),
        Some(watch) => ClientBody {
            inner: Limited::new(body, cfg.max_body as usize),
            watch: watch.clone(),
            stall: cfg.body_stall,
            stalled: Box::pin(tokio::time::sleep(cfg.body_stall)),
        }
        .boxed(),
    };

    let pending = Some(out.build(first_body, replayable));
    let first_guard = Some(backend.track());
    Ok(Prepared {
        entry,
        cfg,
        started,
        client_upgrade,
        held,
        pinned_by_cookie,
        backend,
        first_guard,
        out,
        pending,
        body: watch,
        upgrade,
        replayable,
        over_tls,
    })
}

/// Sends a prepared request: to a pooled or new connection of its replica, again elsewhere when it may be, and
/// its answer back. An `async` block, not an `async fn`: its state keeps `p` once, where a function's would keep its
/// arguments twice.
#[allow(clippy::manual_async_fn, reason = "an async fn's state keeps its arguments twice: `p` is large")]
fn forward(mut p: Prepared, client: Client) -> impl Future<Output = Response<ProxyBody>> + Send + 'static {
    async move {
        let entry = &*p.entry;
        let cfg = &*p.cfg;
        let (upgrade, replayable, over_tls) = (p.upgrade, p.replayable, p.over_tls);
        let sticky_cookie = cfg.expose.sticky.as_ref().and_then(|s| s.cookie.as_ref());
        let sticky_ip = cfg.expose.sticky.as_ref().and_then(|s| s.client_ip.as_ref());
        let mut backend = p.backend;
        let mut tried: Vec<String> = Vec::new();
        let mut fresh_connection = false;
        let mut last_error: Option<ProxyError> = None;
        for attempt in 0..MAX_ATTEMPTS {
            let req = match p.pending.take() {
                Some(r) => r,
                None if replayable => p.out.build(boxed(Empty::<Bytes>::new()), true),
                None => break,
            };
            if attempt > 0 {
                entry.metrics_of(&backend).retries.inc();
            }
            // What is left of the whole request's time (a gateway route's `timeouts.request`), if it has a limit: it
            // bounds this attempt's connect and its wait for the answer.
            let left = || cfg.total_timeout.map(|total| total.saturating_sub(p.started.elapsed()));
            let total_out = |tried: &[String], backend: &Backend| {
                let replica = tried.last().cloned().unwrap_or_else(|| backend.name.clone());
                ProxyError::Timeout { replica, after: cfg.total_timeout.unwrap_or_default() }
            };
            if left().is_some_and(|l| l.is_zero()) {
                return fail(entry, total_out(&tried, &backend));
            }
            // Counted in flight from the moment the replica is chosen, before a connection is taken: a drain waits for
            // the replica's in-flight requests, then its process is stopped, closing its idle connections — one this
            // request was about to write to, had it been counted only once sent.
            let guard = p.first_guard.take().unwrap_or_else(|| backend.track());
            if backend.is_draining() {
                // The drain began between the choice and the count: another replica, if there is one.
                tried.push(backend.name.clone());
                if let Some(b) = entry.backends.pick(cfg.expose.balance, &tried) {
                    backend = b;
                    p.pending = Some(req);
                    continue;
                }
            }
            let mut pooled = if upgrade || fresh_connection { None } else { backend.checkout() };
            if pooled.is_some() && !replayable {
                // The connection's own task runs on this thread. Yield once (tokio polls the I/O driver before it
                // resumes a yielded task) so that a close the peer already sent — a replica that just died — is seen
                // before the request is written: a request written to a dead connection could not be sent again.
                // A replayable request skips this: if its connection turns out dead, it is sent again elsewhere.
                tokio::task::yield_now().await;
            }
            if let Some(s) = pooled.as_mut() {
                if s.is_closed() || s.ready().await.is_err() {
                    pooled = None;
                }
            }
            // A pooled connection of the other protocol (the port's appProtocol changed under it) is not used.
            let pooled = pooled.filter(|s| s.is_shared() == (cfg.h2c && !upgrade));
            let connected = match pooled {
                Some(s) => Ok(s),
                None => {
                    // Boxed: a new connection's state (TCP, TLS and HTTP handshakes) is most of this future's size, and
                    // every request's future is moved whole into its task, while few requests open a connection.
                    let connect_limit = left().map_or(cfg.connect_timeout, |l| l.min(cfg.connect_timeout));
                    let made =
                        Box::pin(connect(backend.addr, connect_limit, upgrade, cfg.upstream_tls.as_deref(), cfg.h2c))
                            .await;
                    // The request's own time ran out, not the replica's: 504, and the replica is not blamed.
                    if matches!(made, Err(ConnectError::Timeout { .. })) && connect_limit < cfg.connect_timeout {
                        return fail(entry, total_out(&tried, &backend));
                    }
                    let made = made.map_err(ProxyError::Connect);
                    // An HTTP/2 connection is shared from the start: concurrent requests use it rather than each open
                    // one of their own.
                    if let Some(shared) = made.as_ref().ok().and_then(Sender::share) {
                        backend.checkin(shared);
                    }
                    made
                }
            };
            let answered = match connected {
                Err(e) => {
                    // Nothing was sent: the request is kept for the next attempt.
                    p.pending = Some(req);
                    Err(e)
                }
                Ok(mut sender) => {
                    // This attempt's limit, and the limit that bounds it as written, for the message.
                    let (limit, after) = match left() {
                        Some(l) if l < cfg.request_timeout => (l, cfg.total_timeout.unwrap_or(l)),
                        _ => (cfg.request_timeout, cfg.request_timeout),
                    };
                    let sent = tokio::time::timeout(limit, sender.try_send_request(req)).await;
                    match sent {
                        Err(_)
                            if p.body.as_ref().is_some_and(|b| !b.done.load(std::sync::atomic::Ordering::Acquire)) =>
                        {
                            // The replica was still waiting for the body: the client's delay, not the replica's.
                            return fail(entry, ProxyError::BodyTimeout { after });
                        }
                        Err(_) => {
                            let replica = backend.name.clone();
                            return fail(entry, ProxyError::Timeout { replica, after });
                        }
                        Ok(Ok(resp)) => Ok((resp, sender, guard)),
                        Ok(Err(mut e)) => {
                            // A request the connection closed on before writing it is kept for the next attempt.
                            p.pending = e.take_message();
                            let written = p.pending.is_none();
                            Err(ProxyError::Send { replica: backend.name.clone(), source: e.into_error(), written })
                        }
                    }
                }
            };
            let (mut resp, sender, guard) = match answered {
                Ok(answer) => answer,
                Err(e) => {
                    let retry = e.retry(replayable);
                    last_error = Some(e);
                    match retry {
                        None => break,
                        Some(Retry::FreshConnection) => {
                            fresh_connection = true;
                            continue;
                        }
                        Some(Retry::OtherReplica { eject }) => {
                            if eject {
                                backend.eject();
                            }
                            tried.push(backend.name.clone());
                            fresh_connection = false;
                            match entry.backends.pick(cfg.expose.balance, &tried) {
                                Some(b) => {
                                    backend = b;
                                    continue;
                                }
                                None => break,
                            }
                        }
                    }
                }
            };
            let status = resp.status();
            entry.metrics_of(&backend).answered(status.as_u16(), p.started.elapsed().as_secs_f64());
            if sticky_ip.is_some() {
                entry.backends.pin_ip(client.addr.ip(), &backend.name);
            }
            let cookie_value = backend.cookie();
            let set_cookie =
                sticky_cookie.filter(|_| !p.pinned_by_cookie.as_ref().is_some_and(|p| Arc::ptr_eq(p, &backend)));

            if upgrade && status == StatusCode::SWITCHING_PROTOCOLS {
                let backend_upgrade = hyper::upgrade::on(&mut resp);
                let labels = entry.replica_labels(&backend.name);
                let gauge = entry.metrics.open_tunnels.get_or_create(&labels).clone();
                if let Some(client_upgrade) = p.client_upgrade.take() {
                    let idle = entry.config().idle;
                    let entry = p.entry.clone();
                    let held = p.held.take();
                    tokio::spawn(async move {
                        let _guard = guard;
                        let _busy = held.as_ref().map(|h| h.0.activity());
                        if let (Ok(c), Ok(b)) = (client_upgrade.await, backend_upgrade.await) {
                            gauge.inc();
                            // A websocket through a gateway route closes when the route (or its grant) goes.
                            tokio::select! {
                                _ = crate::idle::copy_until_idle(TokioIo::new(c), TokioIo::new(b), idle) => {}
                                _ = entry.retired() => {}
                            }
                            gauge.dec();
                        }
                    });
                }
                let (mut rparts, _) = resp.into_parts();
                add_cookie(&mut rparts.headers, set_cookie, cookie_value, over_tls);
                return Response::from_parts(rparts, boxed(Empty::<Bytes>::new()));
            }
            let (mut rparts, rbody) = resp.into_parts();
            strip_hop_by_hop(&mut rparts.headers);
            add_cookie(&mut rparts.headers, set_cookie, cookie_value, over_tls);
            let pooled = (!upgrade).then(|| (sender, backend.clone()));
            return Response::from_parts(rparts, Tracked { inner: rbody, _guard: guard, pooled }.boxed());
        }
        let failure = match p.body.as_ref().and_then(|b| b.failed.get()) {
            Some(ClientBodyError::TooLarge) => ProxyError::BodyTooLarge { limit: cfg.max_body },
            Some(ClientBodyError::Malformed) => ProxyError::BodyMalformed,
            Some(ClientBodyError::Stalled) => ProxyError::BodyStalled { after: cfg.body_stall },
            None => ProxyError::Exhausted {
                namespace: entry.namespace.clone(),
                app: entry.app.clone(),
                last: last_error.map(Box::new),
                moved_on: !tried.is_empty(),
            },
        };
        fail(entry, failure)
    }
}

/// Marks a request that came over TLS (a gateway's HTTPS listener): its sticky cookie is `Secure`.
#[derive(Clone, Copy)]
pub(crate) struct OverTls;

fn add_cookie(h: &mut HeaderMap, cookie: Option<&capstan_model::StickyCookie>, value: &str, secure: bool) {
    let Some(c) = cookie else { return };
    let mut v = format!("{}={value}; Path=/; HttpOnly; SameSite=Lax", c.name);
    if secure {
        v.push_str("; Secure");
    }
    if let Some(age) = c.max_age {
        v.push_str(&format!("; Max-Age={age}"));
    }
    if let Ok(v) = HeaderValue::from_str(&v) {
        h.append(header::SET_COOKIE, v);
    }
}

impl Entry {
    /// The labels of a tunnel's series to `replica` (remembered, so they go with the entry).
    pub(crate) fn replica_labels(&self, replica: &str) -> ReplicaLabels {
        self.metrics.note_replica(&self.namespace, &self.app, &self.name, replica);
        ReplicaLabels {
            namespace: self.namespace.clone(),
            app: self.app.clone(),
            entry: self.name.clone(),
            replica: replica.to_string(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cookies_and_upgrades_are_recognised() {
        let mut h = HeaderMap::new();
        h.append(header::COOKIE, HeaderValue::from_static("a=1; CAPSTAN_ROUTE=web-1"));
        h.append(header::COOKIE, HeaderValue::from_static("b=\"2\""));
        assert_eq!(cookie_value(&h, "CAPSTAN_ROUTE"), Some("web-1"));
        assert_eq!(cookie_value(&h, "b"), Some("2"));
        assert_eq!(cookie_value(&h, "c"), None);
        assert!(!wants_upgrade(&h));
        h.insert(header::CONNECTION, HeaderValue::from_static("keep-alive, Upgrade"));
        h.insert(header::UPGRADE, HeaderValue::from_static("websocket"));
        assert!(wants_upgrade(&h));
    }

    #[test]
    fn hop_by_hop_headers_are_removed() {
        let mut h = HeaderMap::new();
        h.insert(header::CONNECTION, HeaderValue::from_static("close, x-secret, Host, content-length"));
        h.insert("x-secret", HeaderValue::from_static("1"));
        h.insert(header::HOST, HeaderValue::from_static("app.example"));
        h.insert(header::CONTENT_LENGTH, HeaderValue::from_static("5"));
        h.insert("keep-alive", HeaderValue::from_static("timeout=5"));
        h.insert("x-kept", HeaderValue::from_static("1"));
        strip_hop_by_hop(&mut h);
        assert_eq!(h.len(), 3);
        assert!(h.contains_key("x-kept"));
        assert_eq!(h[header::HOST], "app.example", "Connection cannot strip Host");
        assert_eq!(h[header::CONTENT_LENGTH], "5", "nor the body's framing");

        // Every name on the list goes; names of the same lengths that are not on it stay.
        let mut h = HeaderMap::new();
        for name in HOP_BY_HOP {
            h.insert(name, HeaderValue::from_static("1"));
        }
        let kept = ["ab", "content-disposition", "content-location", "expires", "user-agent", "x-forwarded-proto"];
        for name in kept {
            h.insert(name, HeaderValue::from_static("1"));
        }
        strip_hop_by_hop(&mut h);
        let mut left: Vec<&str> = h.keys().map(|k| k.as_str()).collect();
        left.sort_unstable();
        assert_eq!(left, kept);
    }
    #[test]
    fn cookies_sent_one_per_field_are_joined_into_one() {
        let mut h = HeaderMap::new();
        h.append(header::COOKIE, HeaderValue::from_static("a=1"));
        h.append(header::COOKIE, HeaderValue::from_static("capstan-sticky=r2"));
        join_cookies(&mut h);
        assert_eq!(h.get_all(header::COOKIE).iter().count(), 1);
        assert_eq!(h[header::COOKIE], "a=1; capstan-sticky=r2");
        assert_eq!(cookie_value(&h, "capstan-sticky"), Some("r2"));
        let mut one = HeaderMap::new();
        one.insert(header::COOKIE, HeaderValue::from_static("a=1; b=2"));
        join_cookies(&mut one);
        assert_eq!(one[header::COOKIE], "a=1; b=2");
    }

    #[test]
    fn forwarded_for_appends_the_client() {
        let client = Client::new("10.1.2.3:5000".parse().unwrap());
        assert_eq!(client.forwarded_for(std::iter::empty()).unwrap(), "10.1.2.3");
        let previous = HeaderValue::from_static("192.0.2.7");
        assert_eq!(client.forwarded_for([&previous].into_iter()).unwrap(), "192.0.2.7, 10.1.2.3");
        // Several header lines are one list (RFC 9110 section 5.3): all of them are kept, in order.
        let second = HeaderValue::from_static("198.51.100.1, 198.51.100.2");
        let lines = [&previous, &second];
        assert_eq!(client.forwarded_for(lines.into_iter()).unwrap(), "192.0.2.7, 198.51.100.1, 198.51.100.2, 10.1.2.3");
        // A value that is not visible ASCII is left out rather than forwarded.
        let bad = HeaderValue::from_bytes(b"caf\xc3\xa9").unwrap();
        assert_eq!(client.forwarded_for([&bad, &previous].into_iter()).unwrap(), "192.0.2.7, 10.1.2.3");
        let v6 = Client::new("[::1]:5000".parse().unwrap());
        assert_eq!(v6.forwarded_for(std::iter::empty()).unwrap(), "::1");
    }

    #[test]
    fn idempotent_methods() {
        assert!(is_idempotent(&Method::GET) && is_idempotent(&Method::PUT));
        assert!(!is_idempotent(&Method::POST) && !is_idempotent(&Method::PATCH));
    }

    #[test]
    fn only_idempotent_requests_without_a_body_replay() {
        assert!(may_replay(true, true, &Method::GET, false));
        assert!(may_replay(true, true, &Method::DELETE, false));
        assert!(!may_replay(false, true, &Method::GET, false), "retryIdempotent is off");
        assert!(!may_replay(true, false, &Method::PUT, false), "a body cannot be sent twice");
        assert!(!may_replay(true, true, &Method::POST, false), "POST is not idempotent");
        assert!(!may_replay(true, true, &Method::GET, true), "a tunnel is not opened twice");
    }
}
