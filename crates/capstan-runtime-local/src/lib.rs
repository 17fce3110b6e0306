//! Capstan's embedded runtime: each App replica is a supervised local process with ports, probes, logs and limits.
//!
//! Replicas outlive the `capstan` process if it dies: their output goes through FIFOs they hold open
//! themselves, and a record per replica (pid plus process start time) lets the next `capstan` adopt them.

mod adopt;
pub mod escape;
mod launch;
pub mod limits;
pub mod logs;
pub mod probe;
pub mod process;
mod supervise;
pub mod volume_copy;
pub mod volumes;

use std::collections::{BTreeMap, HashMap, HashSet};
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use capstan_engine::{AppRuntime, ObservedReplica, ReplicaState, StartError};
use capstan_model::quantity::parse_bytes;
use capstan_model::validate::port_env_name;
use capstan_model::{App, EventType, ExitInfo, ObjectKey, Probes};
use capstan_store::Store;
use chrono::{DateTime, Utc};
use nix::sys::signal::Signal;
use serde::{Deserialize, Serialize};
use tokio::io::unix::AsyncFd;
use tokio::sync::{mpsc, watch};

use crate::launch::open_fifo_reader;
use crate::limits::LimitSupport;
use crate::logs::{LogLine, LogWriter};
use crate::probe::{ProbeEvent, ProbeTarget};

/// The annotation naming the directory a manifest was read from; relative paths in `run` start there.
pub use capstan_model::BASE_DIR_ANNOTATION;

/// The directory relative paths of an object start from: its base-dir annotation, else Capstan's own directory.
pub fn base_dir(meta: &capstan_model::ObjectMeta) -> PathBuf {
    meta.base_dir().map(PathBuf::from).or_else(|| std::env::current_dir().ok()).unwrap_or_else(|| PathBuf::from("/"))
}

/// Environment variables passed from Capstan to every replica.
pub const INHERITED_ENV: &[&str] = &["PATH", "HOME", "USER", "LOGNAME", "LANG", "LC_ALL", "TZ", "TMPDIR"];

/// The directory an App's replicas run in: `run.workingDir` from the manifest's directory (the
/// `capstan.dev/base-dir` annotation), or Capstan's own directory when the App came without one.
pub fn working_dir(app: &App) -> PathBuf {
    let base = base_dir(&app.metadata);
    match &app.spec.run.working_dir {
        Some(d) => base.join(d),
        None => base,
    }
}

/// The PATH a replica's program is looked up in: `run.env.PATH`, else Capstan's.
pub fn search_path(app: &App) -> String {
    app.spec.run.env.get("PATH").cloned().or_else(|| std::env::var("PATH").ok()).unwrap_or_default()
}

/// Settings of the local runtime.
#[derive(Debug, Clone)]
pub struct LocalConfig {
    /// Capstan's data directory: FIFOs under `run/`, logs under `logs/`.
    pub data_dir: PathBuf,
}

/// Everything needed to run and probe a replica, persisted so a later Capstan can adopt it.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct Record {
    namespace: String,
    app: String,
    ordinal: u32,
    revision: String,
    pid: Option<u32>,
    start_ticks: Option<u64>,
    started_at: Option<DateTime<Utc>>,
    ports: BTreeMap<String, u16>,
    restarts: u32,
    crash_streak: u32,
    last_exit: Option<ExitInfo>,
    probes: Probes,
    env: Vec<(String, String)>,
    cwd: PathBuf,
    reset_after_seconds: f64,
    log_max_size: u64,
    log_max_files: u32,
    /// The signal that asks the program to stop (SIGTERM when absent).
    #[serde(default)]
    stop_signal: Option<String>,
    /// The grace period the replica was started with (records written before it was kept have none).
    #[serde(default)]
    grace_seconds: Option<u32>,
}

impl Record {
    /// The signal a stop starts with.
    fn stop_signal(&self) -> Signal {
        self.stop_signal.as_deref().and_then(|s| s.parse().ok()).unwrap_or(Signal::SIGTERM)
    }

    /// A record for a replica that has never run.
    fn fresh(key: &ObjectKey, ordinal: u32, revision: &str) -> Record {
        Record {
            namespace: key.namespace.clone(),
            app: key.name.clone(),
            ordinal,
            revision: revision.to_string(),
            pid: None,
            start_ticks: None,
            started_at: None,
            ports: BTreeMap::new(),
            restarts: 0,
            crash_streak: 0,
            last_exit: None,
            probes: Probes::default(),
            env: Vec::new(),
            cwd: PathBuf::from("/"),
            reset_after_seconds: 600.0,
            log_max_size: 10 << 20,
            log_max_files: 3,
            stop_signal: None,
            grace_seconds: None,
        }
    }

    fn key(&self) -> ObjectKey {
        ObjectKey::new("App", &self.namespace, &self.app)
    }
    fn store_key(&self) -> String {
        format!("replica/{}/{}/{}", self.namespace, self.app, self.ordinal)
    }
    fn name(&self) -> String {
        format!("{}-{}", self.app, self.ordinal)
    }
    fn id(&self) -> String {
        format!("{}-{}-{}", self.namespace, self.app, self.ordinal)
    }
}

struct Replica {
    rec: Record,
    state: ReplicaState,
    ready: bool,
    ready_since: Option<DateTime<Utc>>,
    unhealthy: Option<String>,
    probe_message: Option<String>,
    /// Fires when the process is gone: stops probes and drains log pumps.
    stop_tasks: watch::Sender<bool>,
    /// Becomes true when the process has exited.
    exited: watch::Receiver<bool>,
}

impl Replica {
    /// A replica whose process runs; its tasks stop when `stop_tasks` fires.
    fn running(rec: Record, stop_tasks: watch::Sender<bool>, exited: watch::Receiver<bool>) -> Replica {
        Replica {
            rec,
            state: ReplicaState::Running,
            ready: false,
            ready_since: None,
            unhealthy: None,
            probe_message: None,
            stop_tasks,
            exited,
        }
    }

    /// A replica without a process (exited, or never started).
    fn without_process(rec: Record, state: ReplicaState) -> Replica {
        let (stop_tasks, _) = watch::channel(true);
        let (_, exited) = watch::channel(true);
        Replica { state, ..Replica::running(rec, stop_tasks, exited) }
    }
}

type ReplicaKey = (ObjectKey, u32);

/// Takes a replica out of traffic before it is stopped; resolves when its in-flight work is done.
pub type Drainer =
    Arc<dyn Fn(ObjectKey, String) -> std::pin::Pin<Box<dyn std::future::Future<Output = ()> + Send>> + Send + Sync>;

struct Inner {
    drainer: Mutex<Option<Drainer>>,
    cfg: LocalConfig,
    store: Store,
    replicas: Mutex<HashMap<ReplicaKey, Replica>>,
    notify: mpsc::UnboundedSender<ObjectKey>,
    limits: LimitSupport,
    usage: volumes::Usage,
    /// One channel per App carrying every replica's lines, so a follower outlives the replicas it started with.
    followers: Mutex<HashMap<ObjectKey, tokio::sync::broadcast::Sender<LogLine>>>,
    /// Replicas' main processes spawned and not yet in `replicas`: the orphan reaper, which holds this lock while
    /// it reaps, must leave them to the task that waits for them.
    launching: Mutex<HashSet<u32>>,
    /// The soft open-file limit Capstan started with, which replicas get (Capstan raises its own).
    child_nofile: Option<u64>,
}

/// How many lines a follower may fall behind before it is told it skipped some.
const FOLLOW_BUFFER: usize = 1024;

/// The embedded runtime. Cheap to clone.
#[derive(Clone)]
pub struct LocalRuntime {
    inner: Arc<Inner>,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// Errors setting the runtime up.
#[derive(Debug, thiserror::Error)]
pub enum RuntimeError {
    #[error("cannot create {path}: {source}")]
    Dir { path: PathBuf, source: std::io::Error },
    #[error(transparent)]
    Store(#[from] capstan_store::StoreError),
}

impl LocalRuntime {
    /// Creates the runtime and adopts the replicas a previous Capstan left running.
    /// Must be called inside a tokio runtime.
    pub fn new(
        cfg: LocalConfig,
        store: Store,
        notify: mpsc::UnboundedSender<ObjectKey>,
    ) -> Result<LocalRuntime, RuntimeError> {
        for sub in ["run", "logs"] {
            let path = cfg.data_dir.join(sub);
            std::fs::create_dir_all(&path).map_err(|source| RuntimeError::Dir { path, source })?;
        }
        let rt = LocalRuntime {
            inner: Arc::new(Inner {
                drainer: Mutex::new(None),
                cfg,
                store,
                replicas: Mutex::new(HashMap::new()),
                notify,
                limits: LimitSupport::detect(),
                usage: volumes::Usage::default(),
                followers: Mutex::new(HashMap::new()),
                launching: Mutex::new(HashSet::new()),
                child_nofile: nix::sys::resource::getrlimit(nix::sys::resource::Resource::RLIMIT_NOFILE)
                    .ok()
                    .map(|l| l.0),
            }),
        };
        rt.adopt()?;
        // Orphans of replicas come to Capstan rather than to init: they can be found, stopped and reaped.
        if escape::become_subreaper() {
            if let Ok(handle) = tokio::runtime::Handle::try_current() {
                let weak = Arc::downgrade(&rt.inner);
                handle.spawn(async move {
                    let mut tick = tokio::time::interval(Duration::from_secs(1));
                    loop {
                        tick.tick().await;
                        let Some(inner) = weak.upgrade() else { return };
                        // Reading /proc is blocking work: off the async workers.
                        let _ = tokio::task::spawn_blocking(move || LocalRuntime { inner }.reap_orphans()).await;
                    }
                });
            }
        } else {
            tracing::warn!(
                "cannot become the subreaper of replicas' orphans; a process that calls setsid may outlive its App"
            );
        }
        Ok(rt)
    }

    /// Sets what drains a replica (the load balancer) before each graceful stop.
    /// Capstan's data directory.
    pub fn data_dir(&self) -> &Path {
        &self.inner.cfg.data_dir
    }

    /// Asks the controller to look at an App now.
    pub fn poke(&self, key: &ObjectKey) {
        let _ = self.inner.notify.send(key.clone());
    }

    pub fn set_drainer(&self, drainer: Drainer) {
        *lock(&self.inner.drainer) = Some(drainer);
    }

    /// How limits are enforced on this machine.
    pub fn limit_support(&self) -> &LimitSupport {
        &self.inner.limits
    }

    fn fifo_paths(&self, rec: &Record) -> (PathBuf, PathBuf) {
        let dir = self.inner.cfg.data_dir.join("run").join(&rec.namespace).join(&rec.app);
        (dir.join(format!("{}.out", rec.ordinal)), dir.join(format!("{}.err", rec.ordinal)))
    }

    /// The current log file of a replica.
    pub fn log_path(&self, key: &ObjectKey, ordinal: u32) -> PathBuf {
        self.inner
            .cfg
            .data_dir
            .join("logs")
            .join(&key.namespace)
            .join(&key.name)
            .join(format!("{}-{ordinal}.log", key.name))
    }

    fn persist(&self, rec: &Record) {
        let value = serde_json::to_value(rec).unwrap_or_default();
        if let Err(e) = self.inner.store.put_record(&rec.store_key(), &value) {
            tracing::error!(replica = %rec.name(), "saving replica record: {e}");
        }
    }

    fn event(&self, key: &ObjectKey, type_: EventType, reason: &str, message: &str) {
        let _ = self.inner.store.record_event(key, type_, reason, message);
    }

    /// Stored log lines of one replica or all replicas of an App, oldest first, read from the files as the
    /// iterator is advanced (blocking file reads: run it off the async runtime).
    pub fn read_logs(
        &self,
        key: &ObjectKey,
        ordinal: Option<u32>,
        since: Option<DateTime<Utc>>,
    ) -> impl Iterator<Item = LogLine> + Send + 'static {
        let dir = self.inner.cfg.data_dir.join("logs").join(&key.namespace).join(&key.name);
        let mut ordinals: Vec<u32> = match ordinal {
            Some(o) => vec![o],
            None => std::fs::read_dir(&dir)
                .map(|rd| {
                    rd.filter_map(|e| e.ok())
                        .filter_map(|e| {
                            let n = e.file_name().to_string_lossy().to_string();
                            n.strip_prefix(&format!("{}-", key.name))?.strip_suffix(".log")?.parse().ok()
                        })
                        .collect()
                })
                .unwrap_or_default(),
        };
        ordinals.sort();
        let max_files = |o: u32| lock(&self.inner.replicas).get(&(key.clone(), o)).map_or(100, |r| r.rec.log_max_files);
        let replicas = ordinals
            .into_iter()
            .map(|o| {
                logs::ReplicaLines::open(&self.log_path(key, o), &format!("{}-{o}", key.name), max_files(o), since)
            })
            .collect();
        logs::merge(replicas)
    }

    /// Whether an App (or one replica of it) has stored logs, without reading them.
    pub fn has_logs(&self, key: &ObjectKey, ordinal: Option<u32>) -> bool {
        match ordinal {
            Some(o) => self.log_path(key, o).exists(),
            None => self.inner.cfg.data_dir.join("logs").join(&key.namespace).join(&key.name).is_dir(),
        }
    }

    /// A receiver of every line any replica of an App writes from now on, replicas started later included; it
    /// closes when the App is deleted.
    pub fn follow_logs(&self, key: &ObjectKey) -> tokio::sync::broadcast::Receiver<LogLine> {
        self.follow_sender(key).subscribe()
    }

    fn follow_sender(&self, key: &ObjectKey) -> tokio::sync::broadcast::Sender<LogLine> {
        lock(&self.inner.followers)
            .entry(key.clone())
            .or_insert_with(|| tokio::sync::broadcast::channel(FOLLOW_BUFFER).0)
            .clone()
    }

    /// Leaves every replica running and stops supervising (for a Capstan restart or upgrade).
    pub fn detach(&self) {
        let mut map = lock(&self.inner.replicas);
        for r in map.values() {
            let _ = r.stop_tasks.send(true);
        }
        map.clear();
    }

    /// The pids of every running replica (for tests and diagnostics).
    pub fn pids(&self) -> Vec<u32> {
        lock(&self.inner.replicas).values().filter_map(|r| r.rec.pid).collect()
    }
}
