//! Teamboard: Capstan's clustered demo app, in the Jira Data Center pattern.
//!
//! Several nodes share one PostgreSQL database and one attachment directory; each keeps its own search index in its
//! own volume and its signed-in users in its own memory, so it needs a sticky load balancer in front. Every node
//! hears every other node's writes through PostgreSQL `LISTEN`/`NOTIFY`, which both updates its index and pushes
//! live updates to its browsers over websockets.

pub mod api;
pub mod attachments;
pub mod db;
pub mod html;
pub mod live;
pub mod metrics;
pub mod pages;
pub mod report;
pub mod search;
pub mod sessions;

use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::Router;
use tokio::sync::{broadcast, watch, Notify};

/// Everything that can go wrong answering a request or starting a node.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("configuration: {0}")]
    Config(String),
    #[error("database: {0}")]
    Db(#[from] tokio_postgres::Error),
    #[error("database pool: {0}")]
    Pool(#[from] deadpool_postgres::PoolError),
    #[error("not found: {0}")]
    NotFound(String),
    #[error("{0}")]
    BadRequest(String),
    #[error("sign in first")]
    Unauthorized,
    #[error("request body too large: the limit is {0} bytes")]
    TooLarge(u64),
    #[error("search index: {0}")]
    Search(String),
    #[error("file store: {0}")]
    Io(String),
    #[error("this node is shutting down")]
    Draining,
}

impl Error {
    /// The HTTP status that fits.
    pub fn status(&self) -> StatusCode {
        match self {
            Error::NotFound(_) => StatusCode::NOT_FOUND,
            Error::BadRequest(_) => StatusCode::BAD_REQUEST,
            Error::Unauthorized => StatusCode::UNAUTHORIZED,
            Error::TooLarge(_) => StatusCode::PAYLOAD_TOO_LARGE,
            Error::Db(e) if e.as_db_error().is_some_and(|d| d.code().code().starts_with("23")) => {
                StatusCode::BAD_REQUEST
            }
            Error::Draining => StatusCode::SERVICE_UNAVAILABLE,
            _ => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }

    /// The message for a user: a constraint violation reads as what PostgreSQL says about it.
    pub fn message(&self) -> String {
        match self {
            Error::Db(e) => match e.as_db_error() {
                Some(d) => d.detail().map(|x| format!("{}: {x}", d.message())).unwrap_or_else(|| d.message().into()),
                None => self.to_string(),
            },
            _ => self.to_string(),
        }
    }
}

impl IntoResponse for Error {
    fn into_response(self) -> Response {
        let status = self.status();
        if status.is_server_error() {
            tracing::error!("{self}");
        }
        (status, axum::Json(serde_json::json!({"error": self.message()}))).into_response()
    }
}

/// How a node is configured, from its environment.
#[derive(Debug, Clone)]
pub struct Config {
    pub port: u16,
    pub database_url: String,
    /// The node's own volume; the index lives in `<dir>/index`.
    pub index_dir: PathBuf,
    /// The store shared by all nodes.
    pub attachments_dir: PathBuf,
    pub node: String,
    pub version: String,
    pub max_upload_bytes: u64,
    pub pool_size: usize,
}

impl Config {
    /// Reads `PORT`, `DATABASE_URL`, `TEAMBOARD_INDEX_DIR`, `TEAMBOARD_ATTACHMENTS_DIR`, `CAPSTAN_REPLICA`,
    /// `TEAMBOARD_VERSION`, `TEAMBOARD_MAX_UPLOAD_MB` and `TEAMBOARD_POOL_SIZE`.
    pub fn from_env() -> Result<Config, Error> {
        let var = |k: &str| std::env::var(k).ok().filter(|v| !v.is_empty());
        let need = |k: &str, hint: &str| var(k).ok_or_else(|| Error::Config(format!("{k} is not set; {hint}")));
        let number = |k: &str, default: u64| -> Result<u64, Error> {
            match var(k) {
                None => Ok(default),
                Some(v) => v.parse().map_err(|_| Error::Config(format!("{k}={v:?} is not a whole number"))),
            }
        };
        Ok(Config {
            port: number("PORT", 8080)?
                .try_into()
                .map_err(|_| Error::Config("PORT must be between 1 and 65535".into()))?,
            database_url: need("DATABASE_URL", "give the App a databaseRef (or set a postgres:// URL)")?,
            index_dir: PathBuf::from(need("TEAMBOARD_INDEX_DIR", "mount a replica volume there")?),
            attachments_dir: PathBuf::from(need("TEAMBOARD_ATTACHMENTS_DIR", "mount a shared volume there")?),
            node: var("CAPSTAN_REPLICA").unwrap_or_else(|| "teamboard".into()),
            version: var("TEAMBOARD_VERSION").unwrap_or_else(|| format!("v{}", env!("CARGO_PKG_VERSION"))),
            max_upload_bytes: number("TEAMBOARD_MAX_UPLOAD_MB", 100)?.saturating_mul(1 << 20),
            pool_size: match number("TEAMBOARD_POOL_SIZE", 16)? {
                0 => return Err(Error::Config("TEAMBOARD_POOL_SIZE must be at least 1".into())),
                n => n as usize,
            },
        })
    }
}

/// A node's shared state.
pub struct AppState {
    pub cfg: Config,
    pub pool: deadpool_postgres::Pool,
    pub index: Arc<search::SearchIndex>,
    pub sessions: sessions::Sessions,
    pub events: broadcast::Sender<String>,
    pub reindex: Notify,
    pub ready: AtomicBool,
    pub metrics: metrics::Metrics,
    pub shutdown: watch::Receiver<bool>,
}

/// Shared state as handlers see it.
pub type Shared = Arc<AppState>;

impl AppState {
    /// Whether the node serves: schema applied and the index caught up with the database once.
    pub fn is_ready(&self) -> bool {
        self.ready.load(Ordering::SeqCst) && !*self.shutdown.borrow()
    }
}

/// All routes of a node.
pub fn router(state: Shared) -> Router {
    Router::new()
        .merge(pages::routes())
        .nest("/api", api::routes())
        .route("/status", axum::routing::get(api::status))
        .route("/metrics", axum::routing::get(metrics::exposition))
        .route("/ws", axum::routing::get(live::websocket))
        .layer(axum::middleware::from_fn_with_state(state.clone(), metrics::track))
        .layer(axum::extract::DefaultBodyLimit::disable())
        .with_state(state)
}

/// Runs a node until SIGTERM or Ctrl-C; then closes websockets, finishes in-flight requests and exits.
pub async fn serve(cfg: Config) -> Result<(), Error> {
    let pool = db::pool(&cfg.database_url, cfg.pool_size)?;
    let mut delay = Duration::from_millis(200);
    loop {
        match db::migrate(&pool).await {
            Ok(()) => break,
            Err(e) => {
                tracing::warn!("database not ready ({e}); retrying in {delay:?}");
                tokio::time::sleep(delay).await;
                delay = (delay * 2).min(Duration::from_secs(5));
            }
        }
    }
    std::fs::create_dir_all(&cfg.attachments_dir)
        .map_err(|e| Error::Io(format!("{}: {e}", cfg.attachments_dir.display())))?;
    let index = search::SearchIndex::open(&cfg.index_dir.join("index"))?;
    let (stop_tx, stop_rx) = watch::channel(false);
    let state = Arc::new(AppState {
        pool,
        index,
        sessions: sessions::Sessions::default(),
        events: broadcast::channel(1024).0,
        reindex: Notify::new(),
        ready: AtomicBool::new(false),
        metrics: metrics::Metrics::new(&cfg.node, &cfg.version),
        shutdown: stop_rx,
        cfg,
    });
    tokio::spawn(live::listen(state.clone()));
    tokio::spawn(live::catch_up(state.clone()));

    let listener = tokio::net::TcpListener::bind(("127.0.0.1", state.cfg.port))
        .await
        .map_err(|e| Error::Config(format!("cannot listen on 127.0.0.1:{}: {e}", state.cfg.port)))?;
    tracing::info!(node = %state.cfg.node, version = %state.cfg.version, "listening on http://127.0.0.1:{}", state.cfg.port);
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        .map_err(|e| Error::Io(format!("signal handler: {e}")))?;
    axum::serve(listener, router(state.clone()))
        .with_graceful_shutdown(async move {
            tokio::select! {
                _ = term.recv() => {}
                _ = tokio::signal::ctrl_c() => {}
            }
            tracing::info!("shutting down: closing websockets, finishing requests");
            let _ = stop_tx.send(true);
        })
        .await
        .map_err(|e| Error::Io(format!("server: {e}")))?;
    tracing::info!(node = %state.cfg.node, "stopped");
    Ok(())
}
