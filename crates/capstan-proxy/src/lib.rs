//! Capstan's load balancer: HTTP with sticky sessions, websockets and safe retries; TCP passthrough; draining.
//!
//! The proxy knows nothing of processes or controllers: it is told, per App, which replicas exist, where they
//! listen and whether they are ready (`sync_app`), and asked to take one out of rotation before it stops (`drain`).

pub mod backend;
pub mod http;
pub mod metrics;
pub mod tcp;

use std::collections::{BTreeMap, HashMap};
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};

use capstan_model::quantity::parse_bytes;
use capstan_model::{App, Expose, ExposeProtocol, ObjectKey, PortRef};
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use tokio::task::JoinHandle;

use crate::backend::{BackendInfo, BackendSet};
use crate::metrics::Metrics;

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
    pub request_timeout: Duration,
    pub drain: Duration,
}

impl EntryConfig {
    fn new(expose: &Expose) -> EntryConfig {
        EntryConfig {
            expose: expose.clone(),
            max_body: parse_bytes(&expose.max_body_size).unwrap_or(250 << 20),
            connect_timeout: Duration::from_secs(u64::from(expose.timeouts.connect_seconds.max(1))),
            request_timeout: Duration::from_secs(u64::from(expose.timeouts.request_seconds.max(1))),
            drain: Duration::from_secs(u64::from(expose.drain_seconds)),
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
}

impl Entry {
    pub fn config(&self) -> Arc<EntryConfig> {
        self.config.read().unwrap_or_else(|p| p.into_inner()).clone()
    }
}

struct Listener {
    bind: (String, u16, ExposeProtocol),
    entry: Arc<Entry>,
    addr: SocketAddr,
    task: JoinHandle<()>,
}

impl Drop for Listener {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// The load balancer of the embedded runtime.
#[derive(Default)]
pub struct Proxy {
    listeners: Mutex<HashMap<ObjectKey, Vec<Listener>>>,
    metrics: Arc<Metrics>,
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

fn bind(address: &str, port: u16) -> Result<tokio::net::TcpListener, String> {
    let l =
        std::net::TcpListener::bind((address, port)).map_err(|e| format!("cannot listen on {address}:{port}: {e}"))?;
    l.set_nonblocking(true).map_err(|e| e.to_string())?;
    tokio::net::TcpListener::from_std(l).map_err(|e| e.to_string())
}

fn serve(listener: tokio::net::TcpListener, entry: Arc<Entry>, protocol: ExposeProtocol) -> JoinHandle<()> {
    tokio::spawn(async move {
        loop {
            let (stream, peer) = match listener.accept().await {
                Ok(x) => x,
                Err(e) => {
                    tracing::warn!(app = %entry.app, "accept: {e}");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            };
            let entry = entry.clone();
            match protocol {
                ExposeProtocol::Tcp => {
                    tokio::spawn(tcp::serve(entry, stream, peer));
                }
                ExposeProtocol::Http => {
                    let _ = stream.set_nodelay(true);
                    tokio::spawn(async move {
                        let svc = service_fn(move |req| {
                            let entry = entry.clone();
                            async move { Ok::<_, std::convert::Infallible>(http::handle(entry, req, peer).await) }
                        });
                        let _ = http1::Builder::new()
                            .keep_alive(true)
                            .serve_connection(TokioIo::new(stream), svc)
                            .with_upgrades()
                            .await;
                    });
                }
            }
        }
    })
}

impl Proxy {
    pub fn new() -> Proxy {
        Proxy::default()
    }

    /// Brings an App's entry points in line with its spec and replicas: opens, updates and closes listeners.
    /// Returns one message per entry point that could not listen.
    pub fn sync_app(&self, key: &ObjectKey, app: Option<&App>, replicas: &[ReplicaEndpoint]) -> Vec<String> {
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
                    let entry = Arc::new(Entry {
                        namespace: key.namespace.clone(),
                        app: key.name.clone(),
                        name: entry_name(e),
                        config: RwLock::new(Arc::new(EntryConfig::new(e))),
                        backends: BackendSet::default(),
                        metrics: self.metrics.clone(),
                    });
                    match bind(&address, e.port) {
                        Ok(l) => {
                            let addr = l.local_addr().unwrap_or_else(|_| ([127, 0, 0, 1], e.port).into());
                            let task = serve(l, entry.clone(), e.protocol);
                            tracing::info!(app = %key, %addr, protocol = ?e.protocol, "entry point listening");
                            Listener { bind: bind_key, entry, addr, task }
                        }
                        Err(msg) => {
                            errors.push(msg);
                            continue;
                        }
                    }
                }
            };
            *listener.entry.config.write().unwrap_or_else(|p| p.into_inner()) = Arc::new(EntryConfig::new(e));
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
            all.get(key)
                .into_iter()
                .flatten()
                .filter_map(|l| l.entry.backends.drain(replica).map(|b| (b, l.entry.config().drain)))
                .collect()
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
    }

    /// The proxy's metrics in Prometheus text format.
    pub fn metrics_text(&self) -> String {
        self.metrics.render()
    }
}
