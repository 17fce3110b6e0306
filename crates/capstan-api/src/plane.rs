//! The control plane: store, runtime, controller and API server assembled into one running whole.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use capstan_engine::{AppRuntime, Controller, ObservedReplica, ObserverReport, ReconcileObserver, ReplicaState};
use capstan_gitops::controller::{Admit, GitOpsConfig, Requester};
use capstan_model::{App, Kind, ObjectKey};
use capstan_proxy::{Proxy, ReplicaEndpoint};
use capstan_runtime_local::{LocalConfig, LocalRuntime};
use capstan_store::{ApplyAction, Store};
use serde_json::Value;
use tokio::sync::{mpsc, watch};
use tokio::task::JoinHandle;

use crate::admission::{admit, AdmissionError};
use crate::{SERVER_FILE, TOKEN_FILE};

/// Where the control plane keeps its state and where it listens.
#[derive(Debug, Clone)]
pub struct PlaneConfig {
    pub data_dir: PathBuf,
    pub listen: SocketAddr,
    pub monitoring: crate::monitor::MonitorConfig,
    /// Where people reach this Capstan (`capstan up --external-url`, as Prometheus' `--web.external-url`): the
    /// notifications' `externalURL` and the start of each alert's `generatorURL`. Default: the API's address.
    pub external_url: Option<String>,
    /// A batch applied as the plane starts, before any controller runs or the API listens: a batch that is refused
    /// stops the start with nothing started.
    pub initial: Vec<Value>,
    /// How long every listener (API, webhooks, entry points) waits for a request's headers, and for the next
    /// request on a kept-alive connection.
    pub header_timeout: std::time::Duration,
    /// Connections the API listener holds at once.
    pub api_max_connections: usize,
    /// How PromQL queries (of the API and of alerting rules) are bounded.
    pub query: crate::queries::QuerySettings,
    /// The key that encrypts the store (default: the file `<data>.key` beside the data directory).
    pub encryption_key: crate::keys::KeySource,
    /// How the API serves: TLS with a local CA by default; plain HTTP only on a loopback address.
    pub tls: crate::tls::ApiTls,
}

impl PlaneConfig {
    /// A plane on `data_dir` and `listen`, with default monitoring and listener limits.
    pub fn new(data_dir: PathBuf, listen: SocketAddr) -> PlaneConfig {
        PlaneConfig {
            listen,
            monitoring: Default::default(),
            initial: Vec::new(),
            external_url: None,
            header_timeout: capstan_proxy::gate::DEFAULT_HEADER_TIMEOUT,
            api_max_connections: capstan_proxy::gate::DEFAULT_API_MAX_CONNECTIONS,
            query: Default::default(),
            encryption_key: crate::keys::KeySource::beside(&data_dir),
            tls: crate::tls::ApiTls::Auto { sans: Vec::new() },
            data_dir,
        }
    }
}

/// Why the control plane could not start.
#[derive(Debug, thiserror::Error)]
pub enum PlaneError {
    #[error("cannot create the data directory {path}: {source}")]
    DataDir { path: PathBuf, source: std::io::Error },
    #[error(transparent)]
    Store(#[from] capstan_store::StoreError),
    #[error(transparent)]
    Runtime(#[from] capstan_runtime_local::RuntimeError),
    #[error(
        "cannot listen on {addr}: {source} (is another capstan running? pass --listen 127.0.0.1:0 for any free port)"
    )]
    Listen { addr: SocketAddr, source: std::io::Error },
    #[error("token file {path}: {source}")]
    Token { path: PathBuf, source: std::io::Error },
    #[error(transparent)]
    Audit(#[from] crate::audit::AuditError),
    #[error(transparent)]
    Key(#[from] crate::keys::KeyError),
    #[error(transparent)]
    Tls(#[from] crate::tls::TlsError),
    /// Plain HTTP on an address others can reach.
    #[error("--listen {addr} is reachable from other machines, and the API would serve it without TLS: tokens would cross the network in the clear\n  hint: leave TLS on (drop --plain-http): Capstan makes a local CA and a certificate; --tls-san adds the names clients use, or give --tls-cert-file and --tls-private-key-file")]
    PlainHttp { addr: SocketAddr },
    #[error("cannot serve the Unix socket {path}: {source}")]
    Socket { path: PathBuf, source: std::io::Error },
    #[error("API tokens: {0}")]
    Tokens(#[from] crate::tokens::TokenError),
    /// The initial batch was refused; nothing was started.
    #[error("the initial batch was refused ({} problems); nothing was started", .0.len())]
    Invalid(Vec<AdmissionError>),
    #[error("storing the initial batch: {0}")]
    Apply(capstan_store::StoreError),
}

/// Keeps the load balancer in step with what the runtime observes.
struct ProxyObserver(Arc<Proxy>);

impl ReconcileObserver for ProxyObserver {
    fn observed(&self, key: &ObjectKey, app: Option<&App>, replicas: &[ObservedReplica]) -> ObserverReport {
        let out: Vec<&str> = app
            .and_then(|a| a.metadata.annotations.get(capstan_model::OUT_OF_ROTATION_ANNOTATION))
            .map(|v| v.split(',').map(str::trim).collect())
            .unwrap_or_default();
        let serving = |r: &ObservedReplica| r.state == ReplicaState::Running && r.ready && r.unhealthy.is_none();
        // Out of rotation only while another replica serves: the annotation never leaves the App without traffic.
        let others =
            replicas.iter().any(|r| serving(r) && !out.contains(&format!("{}-{}", key.name, r.ordinal).as_str()));
        let endpoints: Vec<ReplicaEndpoint> = replicas
            .iter()
            .map(|r| {
                let name = format!("{}-{}", key.name, r.ordinal);
                ReplicaEndpoint {
                    ready: serving(r) && !(others && out.contains(&name.as_str())),
                    name,
                    ports: r.ports.clone(),
                    pid: r.pid.filter(|_| matches!(r.state, ReplicaState::Running | ReplicaState::Stopping)),
                }
            })
            .collect();
        let warnings = self.0.sync_app(key, app, &endpoints);
        ObserverReport { warnings, endpoints: self.0.endpoints(key) }
    }
}

/// Admission with what this machine knows: the store, the running replicas and the balancer's listeners.
#[derive(Clone)]
pub struct Admitter {
    store: Store,
    runtime: LocalRuntime,
    proxy: Arc<Proxy>,
}

impl Admitter {
    /// Decodes and checks a batch as `capstan apply` does.
    pub fn check(&self, objects: &[Value]) -> Result<Vec<capstan_model::Resource>, Vec<AdmissionError>> {
        let rt = self.runtime.clone();
        let proxy = self.proxy.clone();
        let in_use = move |key: &ObjectKey, port: u16| {
            let ours = rt.observe(key).iter().any(|r| r.ports.values().any(|p| *p == port))
                || proxy.endpoints(key).iter().any(|e| e.ends_with(&format!(":{port}")));
            !ours && std::net::TcpListener::bind(("127.0.0.1", port)).is_err()
        };
        admit(&self.store, objects, &in_use)
    }
}

impl Admit for Admitter {
    fn admit(&self, objects: &[Value]) -> Result<(), Vec<(usize, capstan_model::FieldError)>> {
        self.check(objects).map(|_| ()).map_err(|errors| {
            errors
                .into_iter()
                .map(|e| (e.index, capstan_model::FieldError { path: e.path, message: e.message, hint: e.hint }))
                .collect()
        })
    }
}

/// Shared state of the running control plane.
pub struct Shared {
    pub store: Store,
    pub runtime: LocalRuntime,
    pub proxy: Arc<Proxy>,
    pub token: String,
    /// Set to Some(keep_workloads) when a shutdown is requested through the API.
    pub shutdown: watch::Sender<Option<bool>>,
    pub admitter: Admitter,
    /// Asks the GitOps controllers for an immediate reconcile.
    pub gitops: Requester,
    /// The scraped metrics.
    pub metrics: Arc<capstan_observe::tsdb::Tsdb>,
    /// Alerts, incidents and the notification outbox.
    pub alerting: Arc<crate::alerts::Alerting>,
    /// What each scrape target did last.
    pub targets: Arc<crate::monitor::TargetHealth>,
    /// When each Sync's refused webhook deliveries were last recorded as an event.
    pub webhook_refusals: std::sync::Mutex<std::collections::HashMap<ObjectKey, std::time::Instant>>,
    /// The deliveries each Sync's webhook accepted lately, to refuse replays.
    pub webhook_deliveries: std::sync::Mutex<std::collections::HashMap<ObjectKey, capstan_gitops::webhook::Deliveries>>,
    /// Runs the API's PromQL queries within their limits.
    pub queries: Arc<crate::queries::Queries>,
    /// The audit log (`<data>/audit/audit.log`).
    pub audit: Arc<crate::audit::AuditLog>,
    /// The named API tokens.
    pub tokens: Arc<crate::tokens::Tokens>,
    /// Where the store's key-encryption key comes from (for rotation).
    pub encryption_key: crate::keys::KeySource,
    /// One key rotation at a time.
    pub rotating: tokio::sync::Mutex<()>,
    /// The dashboard's signed-in browsers.
    pub ui_sessions: crate::ui::Sessions,
    /// Whether the API is served over TLS (the dashboard's cookie is then `Secure`).
    pub secure_cookies: bool,
}

impl Shared {
    /// Admits and stores a batch atomically.
    pub fn apply(&self, objects: Vec<Value>) -> Result<Vec<(ObjectKey, ApplyAction)>, ApplyError> {
        let resources = self.admitter.check(&objects).map_err(ApplyError::Invalid)?;
        self.store.apply(by_hand(&resources)).map_err(ApplyError::Store)
    }

    /// Admits a batch and says what applying it would do, storing nothing (`--dry-run=server`).
    pub fn apply_dry_run(&self, objects: Vec<Value>) -> Result<Vec<(ObjectKey, ApplyAction)>, ApplyError> {
        let resources = self.admitter.check(&objects).map_err(ApplyError::Invalid)?;
        self.store.apply_dry_run(by_hand(&resources)).map_err(ApplyError::Store)
    }
}

/// Objects as an apply by hand writes them: without an owner record, so an object a Sync applied stays the Sync's
/// (a change by hand is drift that the Sync puts back, and a prune still removes the object).
fn by_hand(resources: &[capstan_model::Resource]) -> Vec<Value> {
    resources
        .iter()
        .map(|r| {
            let mut v = r.to_value();
            if let Some(md) = v["metadata"].as_object_mut() {
                md.remove(capstan_store::MANAGED_FIELDS);
            }
            v
        })
        .collect()
}

/// Why a batch was not applied.
#[derive(Debug)]
pub enum ApplyError {
    Invalid(Vec<AdmissionError>),
    Store(capstan_store::StoreError),
}

/// A running control plane.
pub struct ControlPlane {
    shared: Arc<Shared>,
    /// Every controller loop (GitOps, Databases, TrainingJobs, ModelServers, Apps, alerting), stopped in this order;
    /// the monitor stops after them (it saves the metrics).
    controllers: Vec<capstan_engine::runner::Handle>,
    monitor: Option<crate::monitor::Monitor>,
    server: JoinHandle<()>,
    /// The Unix socket's accept loop, and the socket's path.
    local: JoinHandle<()>,
    socket: PathBuf,
    addr: SocketAddr,
    url: String,
    ca_file: Option<PathBuf>,
    data_dir: PathBuf,
    shutdown_rx: watch::Receiver<Option<bool>>,
    applied: Vec<(ObjectKey, ApplyAction)>,
}

fn load_or_create_token(path: &Path) -> Result<String, PlaneError> {
    use std::os::unix::fs::OpenOptionsExt;
    let err = |source| PlaneError::Token { path: path.to_path_buf(), source };
    // Only a missing (or empty) file makes a new token: one that cannot be read must not be replaced, which would
    // lock out every client holding it.
    match std::fs::read_to_string(path) {
        Ok(t) if !t.trim().is_empty() => return Ok(t.trim().to_string()),
        Ok(_) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(err(e)),
    }
    let mut bytes = [0u8; 24];
    getrandom::getrandom(&mut bytes).map_err(|e| err(std::io::Error::other(e.to_string())))?;
    let token: String = bytes.iter().map(|b| format!("{b:02x}")).collect();
    let mut f =
        std::fs::OpenOptions::new().create(true).write(true).truncate(true).mode(0o600).open(path).map_err(err)?;
    std::io::Write::write_all(&mut f, token.as_bytes()).map_err(err)?;
    Ok(token)
}

impl ControlPlane {
    /// Opens the store, adopts surviving replicas, starts the controller and the API server.
    pub async fn start(mut cfg: PlaneConfig) -> Result<ControlPlane, PlaneError> {
        if cfg.tls == crate::tls::ApiTls::Off && !cfg.listen.ip().is_loopback() {
            return Err(PlaneError::PlainHttp { addr: cfg.listen });
        }
        let fresh = !cfg.data_dir.exists();
        let dir_err = |source| PlaneError::DataDir { path: cfg.data_dir.clone(), source };
        std::fs::create_dir_all(&cfg.data_dir).map_err(dir_err)?;
        if fresh {
            // Logs and state may hold secrets: a data directory Capstan creates is private to its user.
            use std::os::unix::fs::PermissionsExt;
            std::fs::set_permissions(&cfg.data_dir, std::fs::Permissions::from_mode(0o700)).map_err(dir_err)?;
        }
        // Absolute from here on: the paths in server.json and contexts are used from other directories, and the key
        // beside `--data .` is beside the directory, not in it.
        let absolute = std::fs::canonicalize(&cfg.data_dir).map_err(dir_err)?;
        if cfg.encryption_key == crate::keys::KeySource::beside(&cfg.data_dir) {
            cfg.encryption_key = crate::keys::KeySource::beside(&absolute);
        }
        cfg.data_dir = absolute;
        let store = crate::keys::open_store(&cfg.data_dir, &cfg.encryption_key)?;
        let token = load_or_create_token(&cfg.data_dir.join(TOKEN_FILE))?;
        let audit = Arc::new(crate::audit::AuditLog::open(&cfg.data_dir)?);
        let tokens = Arc::new(crate::tokens::Tokens::load(&store)?);
        let listener = tokio::net::TcpListener::bind(cfg.listen)
            .await
            .map_err(|source| PlaneError::Listen { addr: cfg.listen, source })?;
        let addr = listener.local_addr().map_err(|source| PlaneError::Listen { addr: cfg.listen, source })?;

        let tls = crate::tls::serve(&cfg.data_dir, addr, &cfg.tls)?;
        let scheme = if tls.is_some() { "https" } else { "http" };
        // Clients dial an address that listens everywhere on the loopback (which the certificate names).
        let url = match addr.ip() {
            std::net::IpAddr::V4(ip) if ip.is_unspecified() => format!("{scheme}://127.0.0.1:{}", addr.port()),
            std::net::IpAddr::V6(ip) if ip.is_unspecified() => format!("{scheme}://[::1]:{}", addr.port()),
            _ => format!("{scheme}://{addr}"),
        };
        let ca_file = tls.as_ref().and_then(|t| t.ca_file.clone());
        let (unix, socket) = crate::listen::bind_unix(&cfg.data_dir)
            .map_err(|source| PlaneError::Socket { path: cfg.data_dir.join(crate::listen::SOCKET_FILE), source })?;

        crate::volume_sync::release_stale_holds(&store)?;
        // Links in notifications must work from elsewhere: an unspecified address (0.0.0.0) is not one to visit.
        let external = url.clone();
        let alerting =
            Arc::new(crate::alerts::Alerting::load(&store, cfg.external_url.as_deref().unwrap_or(&external))?);
        let (notify_tx, notify_rx) = mpsc::unbounded_channel();
        let runtime = LocalRuntime::new(LocalConfig { data_dir: cfg.data_dir.clone() }, store.clone(), notify_tx)?;
        // Connections are admitted within a budget under the open-file limit, so that a flood of them leaves fds
        // for probes, supervision, logs and the store.
        // The API's connections come out of the limit first, on a gate of their own: connections to the entry
        // points, however many and however busy, cannot lock operators out.
        // Raised only now that the runtime has noted the limit Capstan started with: replicas keep that one.
        let fd_limit = capstan_proxy::gate::raise_fd_limit();
        let budget = capstan_proxy::gate::connection_budget(fd_limit.saturating_sub(cfg.api_max_connections as u64));
        let proxy = Arc::new(Proxy::with_limits(budget, cfg.header_timeout));
        let api_gate = proxy.separate_gate(cfg.api_max_connections).listener("api", cfg.api_max_connections);
        let drain_proxy = proxy.clone();
        runtime.set_drainer(Arc::new(move |key: ObjectKey, replica: String| {
            let p = drain_proxy.clone();
            Box::pin(async move { p.drain(&key, &replica).await })
        }));
        let admitter = Admitter { store: store.clone(), runtime: runtime.clone(), proxy: proxy.clone() };
        let mut applied = Vec::new();
        if !cfg.initial.is_empty() {
            // Manifests given to `up` say what should run; a resourceVersion saved with one is not a precondition.
            let mut initial = cfg.initial.clone();
            for o in &mut initial {
                if let Some(md) = o["metadata"].as_object_mut() {
                    md.remove("resourceVersion");
                }
            }
            let checked = match admitter.check(&initial) {
                Ok(r) => r,
                Err(errors) => {
                    // Replicas a previous Capstan left running stay as they were.
                    runtime.detach();
                    return Err(PlaneError::Invalid(errors));
                }
            };
            applied = store.apply(by_hand(&checked)).map_err(PlaneError::Apply)?;
        }
        let controller = Controller::new(store.clone(), Arc::new(runtime.clone()))
            .with_observer(Arc::new(ProxyObserver(proxy.clone())))
            .spawn(notify_rx);
        let (shutdown, shutdown_rx) = watch::channel(None);
        let gitops = capstan_gitops::controller::spawn(
            store.clone(),
            Arc::new(admitter.clone()),
            GitOpsConfig { data_dir: cfg.data_dir.clone(), max_concurrent_fetches: 4 },
        );
        let requester = gitops.requester();
        let databases = capstan_database::controller::spawn(store.clone(), cfg.data_dir.clone());
        let training = capstan_training::controller::spawn(store.clone(), cfg.data_dir.clone());
        let model_servers = capstan_modelserver::controller::spawn(store.clone(), cfg.data_dir.clone());
        // ACME HTTP-01 answers go from the certificates controller to the front door.
        let (answers, answers_feed) = capstan_certificates::acme::Answers::new();
        let front_door = capstan_gateway::controller::spawn(store.clone(), proxy.clone(), answers_feed);
        let certs = capstan_certificates::controller::spawn(store.clone(), answers);
        let gateway_shim = capstan_certificates::shim::spawn(store.clone());
        let (metrics, metrics_path) = crate::monitor::Monitor::open_store(&cfg.data_dir);
        let alerts = crate::alerts::spawn(store.clone(), metrics.clone(), alerting.clone(), cfg.query.limits());
        let shared = Arc::new(Shared {
            store,
            runtime,
            proxy,
            token,
            shutdown,
            admitter,
            gitops: requester,
            metrics: metrics.clone(),
            alerting,
            targets: Arc::default(),
            webhook_refusals: Default::default(),
            webhook_deliveries: Default::default(),
            queries: Arc::new(crate::queries::Queries::new(cfg.query.clone())),
            audit,
            tokens,
            encryption_key: cfg.encryption_key.clone(),
            rotating: Default::default(),
            ui_sessions: Default::default(),
            secure_cookies: tls.is_some(),
        });
        let app = crate::server::router(shared.clone());
        let acceptor = tls.map(|t| tokio_rustls::TlsAcceptor::from(t.config));
        let server = tokio::spawn(crate::listen::serve(listener, app.clone(), api_gate.clone(), acceptor));
        let local = tokio::spawn(crate::listen::serve_unix(unix, app, api_gate));
        let me = crate::monitor::SelfTarget { addr, socket: socket.clone() };
        let monitor = crate::monitor::Monitor::spawn(shared.clone(), metrics, metrics_path, me, cfg.monitoring);
        let info = serde_json::json!({
            "url": url, "pid": std::process::id(), "ca": ca_file, "socket": socket,
        });
        // Written whole and renamed into place: a client starting beside `capstan up` never reads half of it.
        let staged = cfg.data_dir.join(format!("{SERVER_FILE}.tmp"));
        if std::fs::write(&staged, info.to_string()).is_ok() {
            let _ = std::fs::rename(&staged, cfg.data_dir.join(SERVER_FILE));
        }
        tracing::info!(%url, data = %cfg.data_dir.display(), "capstan control plane is up");
        Ok(ControlPlane {
            shared,
            controllers: gitops
                .into_handles()
                .into_iter()
                .chain([
                    databases,
                    training,
                    model_servers,
                    front_door,
                    certs.issuers,
                    certs.cluster_issuers,
                    certs.certificates,
                    gateway_shim,
                    controller,
                    alerts,
                ])
                .collect(),
            monitor: Some(monitor),
            server,
            local,
            socket,
            addr,
            url,
            ca_file,
            data_dir: cfg.data_dir,
            shutdown_rx,
            applied,
        })
    }

    /// What the initial batch ([`PlaneConfig::initial`]) created or changed.
    pub fn applied(&self) -> &[(ObjectKey, ApplyAction)] {
        &self.applied
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// The API's URL: `https://` with TLS.
    pub fn url(&self) -> String {
        self.url.clone()
    }

    /// The local CA's certificate, when the API's certificate is Capstan's own.
    pub fn ca_file(&self) -> Option<&Path> {
        self.ca_file.as_deref()
    }

    /// The Unix socket serving the API in the data directory.
    pub fn socket(&self) -> &Path {
        &self.socket
    }

    pub fn token(&self) -> &str {
        &self.shared.token
    }

    /// The data directory this plane runs from.
    pub fn data_dir(&self) -> &Path {
        &self.data_dir
    }

    pub fn store(&self) -> &Store {
        &self.shared.store
    }

    pub fn runtime(&self) -> &LocalRuntime {
        &self.shared.runtime
    }

    pub fn proxy(&self) -> &Proxy {
        &self.shared.proxy
    }

    /// Applies a batch as `capstan apply` would.
    pub fn apply(&self, objects: Vec<Value>) -> Result<Vec<(ObjectKey, ApplyAction)>, ApplyError> {
        self.shared.apply(objects)
    }

    /// Waits until a shutdown is requested through the API; returns whether to keep workloads running.
    pub async fn shutdown_requested(&mut self) -> bool {
        loop {
            if let Some(keep) = *self.shutdown_rx.borrow() {
                return keep;
            }
            if self.shutdown_rx.changed().await.is_err() {
                return false;
            }
        }
    }

    /// The controllers running, by name (a kind's name, or `alerting`).
    pub fn controllers(&self) -> Vec<&'static str> {
        self.controllers.iter().map(|c| c.name()).collect()
    }

    /// Stops the control plane. With `keep_workloads`, replicas keep running for the next Capstan to adopt;
    /// otherwise each is stopped gracefully (SIGTERM, its grace period, then SIGKILL).
    pub async fn shutdown(mut self, keep_workloads: bool) {
        for c in std::mem::take(&mut self.controllers) {
            tracing::debug!(controller = c.name(), "stopping");
            c.stop().await;
        }
        if let Some(m) = self.monitor.take() {
            m.stop().await;
        }
        // Stop taking new connections first, then stop (or leave) the replicas.
        self.shared.proxy.close_all();
        if keep_workloads {
            self.shared.runtime.detach();
        } else {
            self.shared.runtime.shutdown().await;
        }
        // Streams that follow (logs) end with a reason rather than a cut connection; give them a moment to send it.
        self.shared.shutdown.send_replace(Some(keep_workloads));
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
        self.server.abort();
        self.local.abort();
        let _ = std::fs::remove_file(&self.socket);
        let _ = std::fs::remove_file(self.data_dir.join(SERVER_FILE));
    }
}

/// The controller that reconciles each kind on this machine, by the name its `Handle` carries; `None` for a kind that
/// no controller of its own reconciles. Every kind has its arm (no catch-all): a new kind does not compile until it
/// says who runs it, and a test checks that the plane starts every controller named here.
pub fn controller_of(kind: Kind) -> Option<&'static str> {
    match kind {
        Kind::App | Kind::Source | Kind::Sync | Kind::Database | Kind::TrainingJob | Kind::ModelServer => {
            Some(kind.name())
        }
        Kind::AlertRule | Kind::EscalationPolicy => Some("alerting"),
        // Read by the controllers of the kinds that use them (a Source's credentials, a Database's URL, a Gateway's
        // certificates and CA bundles).
        Kind::Secret | Kind::ConfigMap => None,
        // One controller compiles both into the balancer's listeners.
        Kind::Gateway
        | Kind::HTTPRoute
        | Kind::TLSRoute
        | Kind::TCPRoute
        | Kind::ReferenceGrant
        | Kind::BackendTLSPolicy => Some("Gateway"),
        Kind::Issuer | Kind::ClusterIssuer | Kind::Certificate => Some(kind.name()),
        // The throwaway kind's reconciler is started by its own test.
        #[cfg(feature = "throwaway-kind")]
        Kind::Widget => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_token_is_made_once_and_one_that_cannot_be_read_is_never_replaced() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join(TOKEN_FILE);
        let first = load_or_create_token(&path).expect("made");
        assert_eq!(first.len(), 48);
        assert_eq!(load_or_create_token(&path).expect("read"), first, "kept across starts");
        use std::os::unix::fs::PermissionsExt;
        assert_eq!(std::fs::metadata(&path).expect("meta").permissions().mode() & 0o777, 0o600);
        // A token path that cannot be read as a file (here a directory) is an error, and nothing is written.
        let odd = dir.path().join("odd");
        std::fs::create_dir(&odd).expect("mkdir");
        assert!(matches!(load_or_create_token(&odd), Err(PlaneError::Token { .. })));
        assert!(odd.is_dir());
    }
}
