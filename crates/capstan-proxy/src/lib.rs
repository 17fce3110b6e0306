//! Capstan's load balancer: HTTP with sticky sessions, websockets and safe retries; TCP passthrough; draining.
//!
//! The proxy knows nothing of processes or controllers: it is told, per App, which replicas exist, where they
//! listen and whether they are ready (`sync_app`), and asked to take one out of rotation before it stops (`drain`).

pub mod backend;
mod busy;
pub mod client_auth;
pub mod error;
pub mod gate;
pub mod gateway;
mod h2_streams;
pub mod http;
pub mod idle;
pub mod metrics;
pub mod mirror;
pub mod routes;
pub mod serve;
mod stream;
pub mod tcp;
mod upstream;
pub mod upstream_tls;

use std::cell::Cell;
use std::collections::{BTreeMap, HashMap};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};

use capstan_model::quantity::parse_bytes;
use capstan_model::{App, Expose, ExposeProtocol, ObjectKey, PortRef};
use hyper::service::service_fn;
use tokio::task::JoinHandle;

use crate::backend::{BackendInfo, BackendSet};
use crate::gate::{AcceptBackoff, Gate, ListenerGate};
use crate::gateway::SocketMode;
use crate::metrics::Metrics;

thread_local! {
    static WORKER: Cell<usize> = const { Cell::new(0) };
}

/// The index of the proxy worker thread running this code (0 elsewhere).
pub fn worker_index() -> usize {
    WORKER.with(Cell::get)
}

/// How many worker threads a proxy runs: one per core.
pub fn worker_count() -> usize {
    std::thread::available_parallelism().map_or(1, |n| n.get()).clamp(1, 64)
}

/// One proxy thread with its own single-threaded runtime.
struct Worker {
    handle: tokio::runtime::Handle,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    /// Client connections it serves now.
    connections: Arc<AtomicUsize>,
}

/// Where accepted connections go: the worker serving the fewest connections.
#[derive(Clone)]
struct Dispatch {
    workers: Vec<(tokio::runtime::Handle, Arc<AtomicUsize>)>,
}

impl Dispatch {
    fn pick(&self) -> Option<&(tokio::runtime::Handle, Arc<AtomicUsize>)> {
        self.workers.iter().min_by_key(|(_, n)| n.load(Ordering::Relaxed))
    }
}

/// Counts a connection on its worker while it lives.
struct ConnectionGuard(Arc<AtomicUsize>);

impl Drop for ConnectionGuard {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
}

fn start_worker(index: usize, busy_limit: Option<Duration>) -> Worker {
    let (tx, rx) = std::sync::mpsc::channel();
    let (stop, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let spawned = std::thread::Builder::new().name(format!("capstan-lb-{index}")).spawn(move || {
        WORKER.with(|w| w.set(index));
        busy::enable(busy_limit);
        let built = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .on_thread_park(busy::parked)
            .on_thread_unpark(busy::unparked)
            .build();
        match built {
            Ok(rt) => {
                let _ = tx.send(Some(rt.handle().clone()));
                rt.block_on(async {
                    let _ = stop_rx.await;
                });
            }
            Err(e) => {
                tracing::error!("load balancer worker {index}: {e}");
                let _ = tx.send(None);
            }
        }
    });
    // Without its own thread, a worker borrows the caller's runtime: slower, but traffic still flows.
    let handle = spawned.ok().and_then(|_| rx.recv().ok().flatten()).unwrap_or_else(tokio::runtime::Handle::current);
    Worker { handle, stop: Some(stop), connections: Arc::default() }
}

/// Errors inside bodies.
pub type BoxError = Box<dyn std::error::Error + Send + Sync>;
/// The body type on both sides of the proxy.
pub type ProxyBody = http_body_util::combinators::BoxBody<bytes::Bytes, BoxError>;

/// What the proxy needs to know of one replica.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReplicaEndpoint {
    /// `<app>-<ordinal>`.
    pub name: String,
    pub ports: BTreeMap<String, u16>,
    pub ready: bool,
    /// None when the replica has no running process.
    pub pid: Option<u32>,
}

/// The settings of an entry point, resolved.
#[derive(Debug, Clone)]
pub struct EntryConfig {
    pub expose: Expose,
    pub max_body: u64,
    pub connect_timeout: Duration,
    /// One attempt: from sending the request to a replica to its response's headers.
    pub request_timeout: Duration,
    /// The whole request, every attempt included (a gateway route's `timeouts.request`); None for entry points,
    /// whose limit is per attempt.
    pub total_timeout: Option<Duration>,
    /// The longest a client's request body may pause (`requestSeconds`, whatever a route's attempts are allowed).
    pub body_stall: Duration,
    pub drain: Duration,
    /// Tunnels quiet this long are closed; zero never.
    pub idle: Duration,
    /// TLS to the replicas (a BackendTLSPolicy on a gateway route's backend).
    pub upstream_tls: Option<Arc<upstream_tls::UpstreamTls>>,
    /// The replicas' port speaks HTTP/2 without TLS (`appProtocol: kubernetes.io/h2c`).
    pub h2c: bool,
}

impl EntryConfig {
    fn new(expose: &Expose) -> EntryConfig {
        EntryConfig {
            expose: expose.clone(),
            max_body: parse_bytes(&expose.max_body_size).unwrap_or(250 << 20),
            connect_timeout: Duration::from_secs(u64::from(expose.timeouts.connect_seconds.max(1))),
            request_timeout: Duration::from_secs(u64::from(expose.timeouts.request_seconds.max(1))),
            total_timeout: None,
            body_stall: Duration::from_secs(u64::from(expose.timeouts.request_seconds.max(1))),
            drain: Duration::from_secs(u64::from(expose.drain_seconds)),
            idle: Duration::from_secs(u64::from(expose.timeouts.idle_seconds)),
            upstream_tls: None,
            h2c: false,
        }
    }
}

/// One entry point of one App: its settings, its replicas and the metrics it writes.
pub struct Entry {
    pub namespace: String,
    pub app: String,
    pub name: String,
    config: RwLock<Arc<EntryConfig>>,
    pub backends: BackendSet,
    pub metrics: Arc<Metrics>,
    per_replica: RwLock<HashMap<String, Arc<metrics::ReplicaMetrics>>>,
    /// Set when a gateway plan no longer has this entry (its route, rule or backend gone, or the ReferenceGrant it
    /// relied on withdrawn): the tunnels still open through it are closed.
    retired: tokio::sync::watch::Sender<bool>,
}

/// An entry point gone (its App deleted, its route or rule removed) takes its series with it, unless another
/// entry point alive writes under the same labels.
impl Drop for Entry {
    fn drop(&mut self) {
        self.metrics.release(&self.namespace, &self.app, &self.name);
    }
}

impl Entry {
    fn new(namespace: &str, app: &str, name: String, expose: &Expose, metrics: Arc<Metrics>) -> Entry {
        metrics.hold(namespace, app, &name);
        Entry {
            namespace: namespace.to_string(),
            app: app.to_string(),
            name,
            config: RwLock::new(Arc::new(EntryConfig::new(expose))),
            backends: BackendSet::default(),
            metrics,
            per_replica: RwLock::new(HashMap::new()),
            retired: tokio::sync::watch::channel(false).0,
        }
    }

    /// Closes the tunnels open through this entry: what sent them here is gone.
    pub(crate) fn retire(&self) {
        self.retired.send_replace(true);
    }

    /// Resolves once the entry is retired.
    pub(crate) async fn retired(&self) {
        let mut rx = self.retired.subscribe();
        let _ = rx.wait_for(|retired| *retired).await;
    }

    pub fn config(&self) -> Arc<EntryConfig> {
        self.config.read().unwrap_or_else(|p| p.into_inner()).clone()
    }

    /// The metric handles of a backend, looked up once per backend: the hot path neither locks nor hashes.
    pub fn metrics_of<'b>(&self, backend: &'b backend::Backend) -> &'b metrics::ReplicaMetrics {
        backend.metrics.get_or_init(|| self.replica_metrics(&backend.name))
    }

    /// The metric handles of one replica, created once (label sets are not rebuilt per request).
    fn replica_metrics(&self, replica: &str) -> Arc<metrics::ReplicaMetrics> {
        if let Some(m) = self.per_replica.read().unwrap_or_else(|p| p.into_inner()).get(replica) {
            return m.clone();
        }
        self.metrics.note_replica(&self.namespace, &self.app, &self.name, replica);
        let m = Arc::new(metrics::ReplicaMetrics::new(&self.metrics, &self.namespace, &self.app, &self.name, replica));
        self.per_replica.write().unwrap_or_else(|p| p.into_inner()).insert(replica.to_string(), m.clone());
        m
    }
}

struct Listener {
    bind: (String, u16, ExposeProtocol),
    entry: Arc<Entry>,
    gate: Arc<ListenerGate>,
    addr: SocketAddr,
    tasks: Vec<JoinHandle<()>>,
}

impl Drop for Listener {
    fn drop(&mut self) {
        for t in &self.tasks {
            t.abort();
        }
    }
}

/// A gateway listener: its routes and its accept loop.
struct GatewayListener {
    routes: Arc<gateway::Routes>,
    _gate: Arc<ListenerGate>,
    tasks: Vec<JoinHandle<()>>,
}

impl GatewayListener {
    /// Stops accepting and waits (briefly) until the listening socket is closed, so its port can be bound again.
    fn close(mut self) {
        for t in self.tasks.drain(..) {
            t.abort();
            let deadline = Instant::now() + Duration::from_secs(1);
            while !t.is_finished() && Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(5));
            }
        }
    }
}

impl Drop for GatewayListener {
    fn drop(&mut self) {
        for t in &self.tasks {
            t.abort();
        }
    }
}

/// The backends of an App's replicas on one of its ports, by the port's name.
fn port_backends(replicas: &[ReplicaEndpoint], port: &str) -> Vec<BackendInfo> {
    replicas
        .iter()
        .filter(|r| r.pid.is_some())
        .filter_map(|r| {
            let p = *r.ports.get(port)?;
            Some(BackendInfo { name: r.name.clone(), addr: ([127, 0, 0, 1], p).into(), ready: r.ready, pid: r.pid })
        })
        .collect()
}

/// The load balancer of the embedded runtime: one worker thread per core; each accepted connection goes to the
/// least busy worker, and a connection and its upstream requests never change threads.
pub struct Proxy {
    listeners: Mutex<HashMap<ObjectKey, Vec<Listener>>>,
    /// Gateway listeners by address and port, each shared by the routes attached to it.
    gateways: Mutex<HashMap<(String, u16), GatewayListener>>,
    /// The backend entries of gateway routes, by (App, port name, rule).
    gateway_entries: Mutex<HashMap<gateway::EntryKey, Arc<Entry>>>,
    /// Every App's replicas as last synced, whether it has entry points or not: gateway routes use them. Locked
    /// before `gateway_entries` wherever both are (`sync_app`, `sync_gateways`), so an update of an App's replicas
    /// and a new plan never miss each other.
    apps: Mutex<HashMap<ObjectKey, Vec<ReplicaEndpoint>>>,
    /// The request counters of gateway rules by rule id, kept across plans so weights do not start over.
    rule_counters: Mutex<HashMap<String, Arc<AtomicUsize>>>,
    metrics: Arc<Metrics>,
    gate: Arc<Gate>,
    /// Started with the first entry point, so a Capstan that exposes nothing runs no proxy threads.
    workers: std::sync::OnceLock<Vec<Worker>>,
}

impl Default for Proxy {
    fn default() -> Self {
        Proxy::new()
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        self.listeners.lock().unwrap_or_else(|p| p.into_inner()).clear();
        self.gateways.lock().unwrap_or_else(|p| p.into_inner()).clear();
        for w in self.workers.get_mut().into_iter().flatten() {
            if let Some(s) = w.stop.take() {
                let _ = s.send(());
            }
        }
    }
}

/// The name of an entry point: its own, or the protocol and port.
pub fn entry_name(e: &Expose) -> String {
    e.name
        .clone()
        .unwrap_or_else(|| format!("{}-{}", if e.protocol == ExposeProtocol::Tcp { "tcp" } else { "http" }, e.port))
}

fn target_port(app: &App, e: &Expose, r: &ReplicaEndpoint) -> Option<u16> {
    match &e.target_port {
        Some(PortRef::Number(n)) => Some(*n),
        Some(PortRef::Name(n)) => r.ports.get(n).copied(),
        None => app.spec.ports.first().and_then(|p| r.ports.get(&p.name).copied()),
    }
}

/// The connection cap of an entry point: its own, or no more than the process' budget.
fn cap_of(e: &Expose) -> usize {
    e.max_connections.map_or(usize::MAX, |n| n as usize)
}

/// Why an entry point could not listen.
#[derive(Debug, thiserror::Error)]
pub enum ListenError {
    /// `expose[].address` is not an IP address.
    #[error("`{address}` is not an IP address")]
    NotAnAddress { address: String },
    /// The socket could not be created, set up, bound or put to listening.
    #[error("cannot listen on {addr}: {source}")]
    Socket { addr: SocketAddr, source: std::io::Error },
    /// No proxy worker runs to accept on.
    #[error("cannot listen on {address}:{port}: no worker")]
    NoWorker { address: String, port: u16 },
    /// The listening socket has no local address.
    #[error("cannot listen on {address}:{port}: {source}")]
    LocalAddr { address: String, port: u16, source: std::io::Error },
}

/// Opens the listening socket of an entry point.
fn bind(address: &str, port: u16) -> Result<std::net::TcpListener, ListenError> {
    use socket2::{Domain, Socket, Type};
    let ip: std::net::IpAddr =
        address.parse().map_err(|_| ListenError::NotAnAddress { address: address.to_string() })?;
    let addr = SocketAddr::new(ip, port);
    let err = |source: std::io::Error| ListenError::Socket { addr, source };
    let socket = Socket::new(Domain::for_address(addr), Type::STREAM, None).map_err(err)?;
    socket.set_reuse_address(true).map_err(err)?;
    socket.set_nonblocking(true).map_err(err)?;
    socket.bind(&addr.into()).map_err(err)?;
    socket.listen(1024).map_err(err)?;
    Ok(socket.into())
}

/// Accepts connections, admits them through the listener's gate and hands each to the least busy worker, where
/// it stays with its upstream requests. (One SO_REUSEPORT socket per worker spreads connections by a hash
/// instead: with few long keep-alive connections one worker often carries more than its share, and its queue
/// shows in the tail latency.)
async fn serve(
    listener: std::net::TcpListener,
    front: Front,
    protocol: ExposeProtocol,
    dispatch: Dispatch,
    gate: Arc<ListenerGate>,
) {
    let name = front.name();
    let listener = match tokio::net::TcpListener::from_std(listener) {
        Ok(l) => l,
        Err(e) => {
            tracing::error!(listener = %name, "listener: {e}");
            return;
        }
    };
    let mut backoff = AcceptBackoff::default();
    loop {
        let (stream, peer) = match listener.accept().await {
            Ok(x) => x,
            Err(e) => {
                tokio::time::sleep(backoff.after(&name, &e)).await;
                continue;
            }
        };
        backoff.reset();
        let admitted = match gate.admit(protocol == ExposeProtocol::Http) {
            Ok(a) => a,
            Err(refusal) => {
                if protocol == ExposeProtocol::Http && front.speaks_http() {
                    tokio::spawn(gate::refuse_http(stream, refusal, gate.gate().clone()));
                }
                continue;
            }
        };
        let front = front.clone();
        let Some((handle, count)) = dispatch.pick() else { return };
        // A socket belongs to the reactor of the runtime that registered it: move it over as a std socket.
        let stream = match stream.into_std() {
            Ok(s) => s,
            Err(e) => {
                tracing::warn!(listener = %name, "accept: {e}");
                continue;
            }
        };
        count.fetch_add(1, Ordering::Relaxed);
        let guard = ConnectionGuard(count.clone());
        handle.spawn(async move {
            let _guard = guard;
            let stream = match tokio::net::TcpStream::from_std(stream) {
                Ok(s) => s,
                Err(e) => {
                    tracing::warn!("accept: {e}");
                    return;
                }
            };
            connection(stream, peer, front, protocol, admitted).await;
        });
    }
}

/// What a listener serves: one App's entry point, or a gateway listener's routes.
#[derive(Clone)]
enum Front {
    App(Arc<Entry>),
    /// A gateway socket, with its TLS acceptor when it serves HTTPS.
    Routes(Arc<gateway::Routes>, Option<tokio_rustls::TlsAcceptor>),
}

impl Front {
    /// Whether its clients speak plain HTTP first, so that a refusal may be answered with a 503.
    fn speaks_http(&self) -> bool {
        match self {
            Front::App(_) => true,
            Front::Routes(r, _) => r.mode == SocketMode::Http,
        }
    }

    fn name(&self) -> String {
        match self {
            Front::App(e) => format!("{}/{}/{}", e.namespace, e.app, e.name),
            Front::Routes(r, _) => format!("gateway port {}", r.port),
        }
    }
}

/// What every request of one gateway connection shares.
struct GatewayConnection {
    routes: Arc<gateway::Routes>,
    client: http::Client,
    /// The server name its TLS handshake asked for, lower-case, without a final dot.
    sni: Option<Box<str>>,
    /// What backends are told of its client certificate (`X-Forwarded-Client-Cert`).
    cert: Option<hyper::header::HeaderValue>,
}

/// Serves one client connection on the current worker.
async fn connection(
    stream: tokio::net::TcpStream,
    peer: SocketAddr,
    front: Front,
    protocol: ExposeProtocol,
    admitted: gate::Admitted,
) {
    let entry = match (front, protocol) {
        (Front::Routes(routes, tls), _) if matches!(routes.mode, SocketMode::Tls | SocketMode::Tcp) => {
            // Boxed: a connection's task is as large as the largest thing it may do, and every HTTP connection
            // would carry the size of a TLS or TCP tunnel's.
            return Box::pin(stream::serve(routes, tls, stream, peer, admitted)).await;
        }
        (Front::Routes(routes, tls), _) => {
            let client_auth = routes.client_auth.clone();
            // The server name its handshake asked for, and what backends are told of its client certificate: with
            // the socket's routes and the client, what every request of the connection is routed with.
            let service = move |sni: Option<Box<str>>, cert: Option<hyper::header::HeaderValue>| {
                let conn = Arc::new(GatewayConnection { routes, client: http::Client::new(peer), sni, cert });
                service_fn(move |mut req: hyper::Request<hyper::body::Incoming>| {
                    if let Some(c) = &conn.cert {
                        req.extensions_mut().insert(gateway::ClientCert(c.clone()));
                    }
                    // Routed here: the future holds only the forwarding, and nothing of the connection's.
                    let answer = gateway::handle(&conn.routes, req, conn.client.clone(), conn.sni.as_deref());
                    async move { Ok::<_, std::convert::Infallible>(answer.await) }
                })
            };
            let _ = stream.set_nodelay(true);
            match tls {
                None => serve::serve_http(stream, admitted, service(None, None), serve::Protocol::Http1).await,
                Some(acceptor) => {
                    // A handshake must finish within the header timeout, as headers must come: a client that
                    // opens connections and sends nothing cannot hold them.
                    // A connection still in its handshake gives its place up when the gate evicts it, as an idle
                    // one does: otherwise stalled handshakes would each keep a file descriptor past the budget.
                    let limit = admitted.listener().gate().header_timeout();
                    let outcome = tokio::select! {
                        r = tokio::time::timeout(limit, acceptor.accept(stream)) => Some(r),
                        _ = admitted.evicted() => None,
                    };
                    match outcome {
                        Some(Ok(Ok(tls))) => {
                            let session = tls.get_ref().1;
                            // An ACME TLS-ALPN-01 validation: the certificate was the answer; nothing is served.
                            if session.alpn_protocol() == Some(gateway::ACME_TLS_ALPN) {
                                return;
                            }
                            let sni =
                                session.server_name().map(|n| n.trim_end_matches('.').to_ascii_lowercase().into());
                            let protocol = match session.alpn_protocol() {
                                Some(b"h2") => serve::Protocol::Http2,
                                _ => serve::Protocol::Http1,
                            };
                            let cert = session.peer_certificates().and_then(|c| client_auth.forwarded(c));
                            serve::serve_http(tls, admitted, service(sni, cert), protocol).await
                        }
                        Some(Ok(Err(e))) => tracing::debug!(%peer, "TLS handshake failed: {e}"),
                        Some(Err(_)) => tracing::debug!(%peer, "TLS handshake timed out"),
                        None => tracing::debug!(%peer, "evicted during its TLS handshake"),
                    }
                }
            }
            return;
        }
        (Front::App(entry), _) => entry,
    };
    match protocol {
        ExposeProtocol::Tcp => {
            let _admitted = admitted;
            Box::pin(tcp::serve(entry, stream, peer)).await
        }
        ExposeProtocol::Http => {
            let client = http::Client::new(peer);
            let svc = service_fn(move |req| {
                // Prepared here: the future holds only the forwarding.
                let answer = http::handle(entry.clone(), req, client.clone());
                async move { Ok::<_, std::convert::Infallible>(answer.await) }
            });
            let _ = stream.set_nodelay(true);
            serve::serve_http(stream, admitted, svc, serve::Protocol::Http1).await;
        }
    }
}

impl Proxy {
    /// A proxy that will run one worker thread per core once it has an entry point.
    /// Its connection budget follows the open-file limit in force; see [`Proxy::with_limits`].
    pub fn new() -> Proxy {
        let fd_limit = nix::sys::resource::getrlimit(nix::sys::resource::Resource::RLIMIT_NOFILE).map_or(1024, |l| l.0);
        Proxy::with_limits(gate::connection_budget(fd_limit), gate::DEFAULT_HEADER_TIMEOUT)
    }

    /// A proxy holding at most `budget` client connections over all its listeners (and those of
    /// [`Proxy::gate`]'s other users), each of which must send its headers within `header_timeout`.
    pub fn with_limits(budget: usize, header_timeout: Duration) -> Proxy {
        let metrics = Arc::new(Metrics::default());
        Proxy {
            listeners: Mutex::new(HashMap::new()),
            gateways: Mutex::new(HashMap::new()),
            gateway_entries: Mutex::new(HashMap::new()),
            apps: Mutex::new(HashMap::new()),
            rule_counters: Mutex::new(HashMap::new()),
            gate: Gate::new(budget, header_timeout, metrics.clone()),
            metrics,
            workers: std::sync::OnceLock::new(),
        }
    }

    /// The connection gate shared by the entry points.
    pub fn gate(&self) -> &Arc<Gate> {
        &self.gate
    }

    /// A gate of its own for another listener (the API), with the same header timeout and metrics: connections
    /// to the entry points cannot use up its `budget`.
    pub fn separate_gate(&self, budget: usize) -> Arc<Gate> {
        Gate::new(budget, self.gate.header_timeout(), self.metrics.clone())
    }

    /// Opens the listening socket of an entry point and starts accepting on the first worker, which hands each
    /// connection to the least busy one.
    fn open(
        &self,
        address: &str,
        port: u16,
        front: Front,
        protocol: ExposeProtocol,
        gate: Arc<ListenerGate>,
    ) -> Result<(SocketAddr, Vec<JoinHandle<()>>), ListenError> {
        let workers = self.workers.get_or_init(|| {
            let busy_limit = busy::limit_from_env();
            (0..worker_count()).map(|i| start_worker(i, busy_limit)).collect()
        });
        let dispatch =
            Dispatch { workers: workers.iter().map(|w| (w.handle.clone(), w.connections.clone())).collect() };
        let Some(acceptor) = workers.first() else {
            return Err(ListenError::NoWorker { address: address.to_string(), port });
        };
        let l = bind(address, port)?;
        let addr =
            l.local_addr().map_err(|source| ListenError::LocalAddr { address: address.to_string(), port, source })?;
        Ok((addr, vec![acceptor.handle.spawn(serve(l, front, protocol, dispatch, gate))]))
    }

    /// Brings an App's entry points in line with its spec and replicas: opens, updates and closes listeners.
    /// Returns one message per entry point that could not listen.
    pub fn sync_app(&self, key: &ObjectKey, app: Option<&App>, replicas: &[ReplicaEndpoint]) -> Vec<String> {
        {
            let mut apps = self.apps.lock().unwrap_or_else(|p| p.into_inner());
            match app {
                Some(_) => apps.insert(key.clone(), replicas.to_vec()),
                None => apps.remove(key),
            };
            // Still holding `apps`: a plan being installed sees these replicas or is updated here after.
            for ((app_key, port, _), entry) in self.gateway_entries.lock().unwrap_or_else(|p| p.into_inner()).iter() {
                if app_key == key {
                    entry.backends.update(&port_backends(replicas, port));
                }
            }
        }
        let mut all = self.listeners.lock().unwrap_or_else(|p| p.into_inner());
        let Some(app) = app.filter(|a| !a.spec.expose.is_empty()) else {
            all.remove(key);
            return Vec::new();
        };
        let mut old = all.remove(key).unwrap_or_default();
        let mut next = Vec::new();
        let mut errors = Vec::new();
        for e in &app.spec.expose {
            let address = e.address.clone().unwrap_or_else(|| "127.0.0.1".into());
            let bind_key = (address.clone(), e.port, e.protocol);
            let backends: Vec<BackendInfo> = replicas
                .iter()
                .filter(|r| r.pid.is_some())
                .filter_map(|r| {
                    let port = target_port(app, e, r)?;
                    Some(BackendInfo {
                        name: r.name.clone(),
                        addr: ([127, 0, 0, 1], port).into(),
                        ready: r.ready,
                        pid: r.pid,
                    })
                })
                .collect();
            let listener = match old.iter().position(|l| l.bind == bind_key) {
                Some(i) => old.swap_remove(i),
                None => {
                    let entry = Arc::new(Entry::new(&key.namespace, &key.name, entry_name(e), e, self.metrics.clone()));
                    let name = format!("{}/{}/{}", key.namespace, key.name, entry.name);
                    let gate = self.gate.listener(&name, cap_of(e));
                    match self.open(&address, e.port, Front::App(entry.clone()), e.protocol, gate.clone()) {
                        Ok((addr, tasks)) => {
                            tracing::info!(app = %key, %addr, protocol = ?e.protocol, "entry point listening");
                            Listener { bind: bind_key, entry, gate, addr, tasks }
                        }
                        Err(e) => {
                            errors.push(e.to_string());
                            continue;
                        }
                    }
                }
            };
            let mut config = EntryConfig::new(e);
            config.h2c = app.spec.target_port_spec(&e.target_port).is_some_and(|p| p.is_h2c());
            if config.h2c != listener.entry.config().h2c {
                // Pooled connections speak the other protocol.
                listener.entry.backends.clear_pools();
            }
            *listener.entry.config.write().unwrap_or_else(|p| p.into_inner()) = Arc::new(config);
            listener.gate.set_cap(cap_of(e));
            listener.entry.backends.update(&backends);
            next.push(listener);
        }
        all.insert(key.clone(), next);
        errors
    }

    /// Takes a replica out of rotation everywhere and waits until its in-flight requests and tunnels are done,
    /// or the longest drain time of its entry points has passed.
    pub async fn drain(&self, key: &ObjectKey, replica: &str) {
        let targets: Vec<(Arc<backend::Backend>, Duration)> = {
            let all = self.listeners.lock().unwrap_or_else(|p| p.into_inner());
            let own = all.get(key).into_iter().flatten().map(|l| l.entry.clone());
            let routed: Vec<Arc<Entry>> = self
                .gateway_entries
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .iter()
                .filter(|((app, _, _), _)| app == key)
                .map(|(_, e)| e.clone())
                .collect();
            own.chain(routed).filter_map(|e| e.backends.drain(replica).map(|b| (b, e.config().drain))).collect()
        };
        let Some(limit) = targets.iter().map(|(_, d)| *d).max() else { return };
        let deadline = Instant::now() + limit;
        while Instant::now() < deadline && targets.iter().any(|(b, _)| b.inflight() > 0) {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// The URLs an App is reachable at.
    pub fn endpoints(&self, key: &ObjectKey) -> Vec<String> {
        let all = self.listeners.lock().unwrap_or_else(|p| p.into_inner());
        all.get(key)
            .into_iter()
            .flatten()
            .map(|l| {
                let scheme = if l.bind.2 == ExposeProtocol::Tcp { "tcp" } else { "http" };
                format!("{scheme}://{}", l.addr)
            })
            .collect()
    }

    /// Stops every listener.
    pub fn close_all(&self) {
        self.listeners.lock().unwrap_or_else(|p| p.into_inner()).clear();
        self.gateways.lock().unwrap_or_else(|p| p.into_inner()).clear();
    }

    /// Brings the gateway listeners in line with `plans`: opens new ones, swaps the routes of open ones (their
    /// connections stay open and take the new routes on their next request), closes the rest. Returns, per
    /// address and port, why a listener could not open; that listener's routes are not served.
    pub fn sync_gateways(&self, plans: Vec<gateway::ListenerPlan>) -> BTreeMap<(String, u16), String> {
        let mut errors = BTreeMap::new();
        {
            // One lock order everywhere: apps, then gateway_entries (see `sync_app`).
            let apps = self.apps.lock().unwrap_or_else(|p| p.into_inner());
            let mut current = self.gateway_entries.lock().unwrap_or_else(|p| p.into_inner());
            let mut old_entries = std::mem::take(&mut *current);
            let mut counters = self.rule_counters.lock().unwrap_or_else(|p| p.into_inner());
            let mut kept_counters = HashMap::new();
            for plan in &plans {
                for action in gateway::rules(&plan.hosts) {
                    let counter = counters.remove(&action.id).or_else(|| kept_counters.get(&action.id).cloned());
                    let counter = counter.unwrap_or_default();
                    let _ = action.next.set(counter.clone());
                    kept_counters.insert(action.id.clone(), counter);
                    for b in action.backends.iter().chain(action.mirrors.iter().map(|m| &m.backend)) {
                        let Ok(port) = &b.port else { continue };
                        let key = (b.app.clone(), port.clone(), action.id.clone());
                        let settings = &action.settings;
                        // A backend whose TLS or protocol changed gets a new entry: its pooled connections spoke the
                        // old way.
                        let same_tls = |e: &Arc<Entry>| e.config().upstream_tls == b.tls && e.config().h2c == b.h2c;
                        let found = current.get(&key).cloned().or_else(|| old_entries.remove(&key));
                        // Its tunnels spoke the old way too: they close, as a removed route's do.
                        if let Some(stale) = found.as_ref().filter(|e| !same_tls(e)) {
                            stale.retire();
                        }
                        let entry = found.filter(same_tls).unwrap_or_else(|| {
                            Arc::new(Entry::new(
                                &b.app.namespace,
                                &b.app.name,
                                action.id.clone(),
                                settings,
                                self.metrics.clone(),
                            ))
                        });
                        let mut config = EntryConfig::new(settings);
                        if let Some(t) = action.backend_request_timeout {
                            config.request_timeout = t;
                        }
                        config.total_timeout = action.request_timeout;
                        config.upstream_tls = b.tls.clone();
                        config.h2c = b.h2c;
                        *entry.config.write().unwrap_or_else(|p| p.into_inner()) = Arc::new(config);
                        let replicas = apps.get(&b.app).map(Vec::as_slice).unwrap_or_default();
                        entry.backends.update(&port_backends(replicas, port));
                        let _ = b.entry.set(entry.clone());
                        current.insert(key, entry);
                    }
                }
            }
            *counters = kept_counters;
            // What the new plans no longer have: tunnels through it close now, as new connections are refused — a
            // deleted route or a withdrawn ReferenceGrant takes its open connections with it.
            for (_, gone) in old_entries {
                gone.retire();
            }
        }
        let mut open = self.gateways.lock().unwrap_or_else(|p| p.into_inner());
        let mut next = HashMap::new();
        for plan in plans {
            let bind = (plan.address.clone(), plan.port);
            // A socket that changes between HTTP and HTTPS is opened again: the old one stops routing and is closed
            // first (its accept loop ends before the new bind).
            let kept = match open.remove(&bind) {
                Some(l) if l.routes.mode != plan.mode => {
                    l.routes.set(Vec::new());
                    l.close();
                    None
                }
                other => other,
            };
            let listener = match kept {
                Some(l) => l,
                None => {
                    let routes = Arc::new(gateway::Routes::new(plan.port, plan.mode));
                    let tls_socket = matches!(plan.mode, SocketMode::Https | SocketMode::Tls);
                    let tls = match tls_socket.then(|| gateway::tls_config(routes.clone())).transpose() {
                        Ok(t) => t.map(tokio_rustls::TlsAcceptor::from),
                        Err(e) => {
                            errors.insert(bind, format!("TLS cannot be set up: {e}"));
                            continue;
                        }
                    };
                    let name = format!("gateway {}:{}", plan.address, plan.port);
                    let gate = self.gate.listener(&name, usize::MAX);
                    match self.open(
                        &plan.address,
                        plan.port,
                        Front::Routes(routes.clone(), tls),
                        // A TCP connection is a tunnel from its first byte: never evicted, counted among the tunnels.
                        // A TLS connection is one only once its ClientHello chose a route (`stream::serve` pins it
                        // then): until then it may be evicted, as an HTTPS connection in its handshake may, so
                        // clients that send nothing cannot hold the tunnels' share of the budget.
                        match plan.mode {
                            SocketMode::Http | SocketMode::Https | SocketMode::Tls => ExposeProtocol::Http,
                            SocketMode::Tcp => ExposeProtocol::Tcp,
                        },
                        gate.clone(),
                    ) {
                        Ok((addr, tasks)) => {
                            tracing::info!(%addr, "gateway listener open");
                            GatewayListener { routes, _gate: gate, tasks }
                        }
                        Err(e) => {
                            errors.insert(bind, e.to_string());
                            continue;
                        }
                    }
                }
            };
            listener.routes.set(plan.hosts);
            listener.routes.set_acme(plan.acme);
            listener.routes.client_auth.set(plan.client_auth);
            next.insert(bind, listener);
        }
        // Sockets no plan wants: their open keep-alive connections must not go on routing by the old table.
        for (_, gone) in open.drain() {
            gone.routes.set(Vec::new());
            gone.routes.set_acme(Vec::new());
        }
        *open = next;
        errors
    }

    /// The proxy's metrics in Prometheus text format.
    pub fn metrics_text(&self) -> String {
        self.metrics.render()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_entry_point_gone_takes_its_series_with_it_and_leaves_the_others() {
        let metrics = Arc::new(Metrics::default());
        let gone = Entry::new("shop", "web", "default/site/0".into(), &Expose::http(1), metrics.clone());
        let kept = Entry::new("shop", "web", "http".into(), &Expose::http(1), metrics.clone());
        for e in [&gone, &kept] {
            e.replica_metrics("web-0").answered(200, 0.01);
            e.replica_metrics("web-0").answered(502, 0.01);
            metrics.tcp_connections.get_or_create(&e.replica_labels("web-1")).inc();
            metrics.open_tunnels.get_or_create(&e.replica_labels("web-1")).inc();
            let labels = |kind: &str| metrics::ErrorLabels {
                namespace: e.namespace.clone(),
                app: e.app.clone(),
                entry: e.name.clone(),
                kind: kind.into(),
            };
            metrics.errors.get_or_create(&labels("connect")).inc();
        }
        let text = metrics.render();
        assert!(text.contains("entry=\"default/site/0\"") && text.contains("entry=\"http\""), "{text}");
        // Another entry alive under the same labels (an App twice in one rule, or a new plan's entry while an old
        // one still carries a tunnel): the series stay until it goes too.
        let twin = Entry::new("shop", "web", "default/site/0".into(), &Expose::http(1), metrics.clone());
        twin.replica_metrics("web-2").answered(200, 0.01);
        drop(gone);
        let text = metrics.render();
        assert!(
            text.lines().any(|l| l.contains("entry=\"default/site/0\"") && l.contains("replica=\"web-0\"")),
            "the twin's labels keep their series:\n{text}"
        );
        drop(twin);
        let text = metrics.render();
        assert!(!text.contains("default/site/0"), "no series of the gone entry is left:\n{text}");
        for family in
            ["requests_total", "request_duration_seconds", "tcp_connections_total", "open_tunnels", "errors_total"]
        {
            assert!(
                text.lines().any(|l| l.starts_with(&format!("capstan_lb_{family}")) && l.contains("entry=\"http\"")),
                "{family} of the entry kept:\n{text}"
            );
        }
    }
}
