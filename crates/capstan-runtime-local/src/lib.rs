//! Capstan's embedded runtime: each App replica is a supervised local process with ports, probes, logs and limits.
//!
//! Replicas outlive the `capstan` process if it dies: their output goes through FIFOs they hold open
//! themselves, and a record per replica (pid plus process start time) lets the next `capstan` adopt them.

pub mod escape;
pub mod limits;
pub mod logs;
pub mod probe;
pub mod process;
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

    fn adopt(&self) -> Result<(), RuntimeError> {
        for (skey, value) in self.inner.store.records("replica/")? {
            let rec: Record = match serde_json::from_value(value) {
                Ok(r) => r,
                Err(e) => {
                    tracing::warn!("dropping unreadable replica record {skey}: {e}");
                    let _ = self.inner.store.delete_record(&skey);
                    continue;
                }
            };
            let alive = match (rec.pid, rec.start_ticks) {
                (Some(pid), Some(ticks)) => {
                    matches!(process::proc_start_time(pid), Some((t, false)) if t == ticks)
                }
                _ => false,
            };
            let key = rec.key();
            if alive {
                match self.attach(rec.clone()) {
                    Ok(()) => {
                        tracing::info!(replica = %rec.name(), pid = ?rec.pid, "adopted running replica");
                        self.event(
                            &key,
                            EventType::Normal,
                            "Adopted",
                            &format!(
                                "replica {} (pid {}) adopted after a Capstan restart",
                                rec.name(),
                                rec.pid.unwrap_or(0)
                            ),
                        );
                    }
                    Err(e) => {
                        tracing::warn!(replica = %rec.name(), "cannot adopt ({e}); stopping it to start it again");
                        self.event(
                            &key,
                            EventType::Warning,
                            "AdoptFailed",
                            &format!("replica {}: {e}; restarting it", rec.name()),
                        );
                        if let Some(pid) = rec.pid {
                            process::signal_group(pid, rec.stop_signal());
                            let deadline = std::time::Instant::now() + Duration::from_secs(10);
                            while std::time::Instant::now() < deadline
                                && matches!(process::proc_start_time(pid), Some((_, false)))
                            {
                                std::thread::sleep(Duration::from_millis(50));
                            }
                            process::signal_group(pid, Signal::SIGKILL);
                        }
                        self.insert_exited(rec, "AdoptFailed");
                    }
                }
            } else {
                let was_running = rec.pid.is_some();
                if was_running {
                    self.event(
                        &key,
                        EventType::Warning,
                        "Exited",
                        &format!("replica {} exited while Capstan was down", rec.name()),
                    );
                }
                self.insert_exited(rec, "Unknown");
            }
            let _ = self.inner.notify.send(key);
        }
        Ok(())
    }

    fn insert_exited(&self, mut rec: Record, reason: &str) {
        if rec.pid.is_some() {
            rec.last_exit =
                Some(ExitInfo { code: None, signal: None, finished_at: Utc::now(), reason: reason.to_string() });
            rec.crash_streak += 1;
        }
        rec.pid = None;
        rec.start_ticks = None;
        self.persist(&rec);
        lock(&self.inner.replicas)
            .insert((rec.key(), rec.ordinal), Replica::without_process(rec, ReplicaState::Exited));
    }

    /// Re-attaches to a running process that a previous Capstan started.
    #[allow(unsafe_code)] // each block below says why it is sound (SAFETY)
    fn attach(&self, rec: Record) -> Result<(), String> {
        let pid = rec.pid.ok_or("no pid")?;
        let (out, err) = self.fifo_paths(&rec);
        let writer = self.open_writer(&rec).map_err(|e| format!("opening log: {e}"))?;
        let (stop_tasks, stop_rx) = watch::channel(false);
        let (exited_tx, exited) = watch::channel(false);
        let readers = [(out, "stdout"), (err, "stderr")]
            .into_iter()
            .map(|(p, s)| open_fifo_reader(&p).map(|r| (r, s)).map_err(|e| format!("{}: {e}", p.display())))
            .collect::<Result<Vec<_>, _>>()?;
        let pidfd = process::pidfd_open(pid).map_err(|e| format!("pidfd_open: {e}"))?;
        // SAFETY: the OwnedFd is moved into the AsyncFd, stays open for its whole life and keeps its number.
        let pidfd = unsafe { AsyncFd::register(pidfd) }.map_err(|e| format!("pidfd: {e}"))?;
        for (r, s) in readers {
            tokio::spawn(logs::pump(r, s, writer.clone(), stop_rx.clone()));
        }
        let key = rec.key();
        let ordinal = rec.ordinal;
        self.spawn_probes(&rec, stop_rx.clone());
        lock(&self.inner.replicas).insert((key.clone(), ordinal), Replica::running(rec, stop_tasks, exited));
        let rt = self.clone();
        tokio::spawn(async move {
            let _ = pidfd.readable().await;
            rt.on_exit(&key, ordinal, None, exited_tx);
        });
        Ok(())
    }

    fn open_writer(&self, rec: &Record) -> std::io::Result<Arc<Mutex<LogWriter>>> {
        let path = self.log_path(&rec.key(), rec.ordinal);
        let w = LogWriter::open(path, rec.name(), rec.log_max_size, rec.log_max_files, self.follow_sender(&rec.key()))?;
        Ok(Arc::new(Mutex::new(w)))
    }

    fn spawn_probes(&self, rec: &Record, stop: watch::Receiver<bool>) {
        let target = ProbeTarget { ports: rec.ports.clone(), env: rec.env.clone(), cwd: rec.cwd.clone() };
        let rt = self.clone();
        let key = rec.key();
        let ordinal = rec.ordinal;
        let report = Arc::new(move |ev: ProbeEvent| rt.on_probe(&key, ordinal, ev));
        tokio::spawn(probe::run(rec.probes.clone(), target, report, stop));
    }

    fn on_probe(&self, key: &ObjectKey, ordinal: u32, ev: ProbeEvent) {
        let mut event = None;
        {
            let mut map = lock(&self.inner.replicas);
            let Some(r) = map.get_mut(&(key.clone(), ordinal)) else {
                return;
            };
            if r.state != ReplicaState::Running {
                return;
            }
            match ev {
                ProbeEvent::Ready(ready, msg) => {
                    if r.ready != ready {
                        let name = r.rec.name();
                        event = Some(if ready {
                            (EventType::Normal, "Ready", format!("replica {name} is ready"))
                        } else {
                            (
                                EventType::Warning,
                                "Unhealthy",
                                format!("replica {name}: {}", msg.clone().unwrap_or_default()),
                            )
                        });
                    }
                    if ready && !r.ready {
                        r.ready_since = Some(Utc::now());
                    }
                    r.ready = ready;
                    r.probe_message = msg;
                }
                ProbeEvent::Unhealthy(msg) => {
                    event = Some((EventType::Warning, "Unhealthy", format!("replica {}: {msg}", r.rec.name())));
                    r.unhealthy = Some(msg);
                    r.ready = false;
                }
            }
        }
        if let Some((t, reason, msg)) = event {
            self.event(key, t, reason, &msg);
        }
        let _ = self.inner.notify.send(key.clone());
    }

    /// Records an exit: status, crash streak, stray group members killed, tasks stopped.
    fn on_exit(
        &self,
        key: &ObjectKey,
        ordinal: u32,
        status: Option<std::process::ExitStatus>,
        exited: watch::Sender<bool>,
    ) {
        use std::os::unix::process::ExitStatusExt;
        let now = Utc::now();
        let info = match status {
            Some(s) => ExitInfo {
                code: s.code(),
                signal: s.signal(),
                finished_at: now,
                reason: match (s.code(), s.signal()) {
                    (Some(0), _) => "Completed",
                    (Some(_), _) => "Error",
                    (None, Some(9)) if self.memory_limited(key, ordinal) => "OOMKilled",
                    (None, Some(_)) => "Signaled",
                    _ => "Unknown",
                }
                .to_string(),
            },
            None => ExitInfo { code: None, signal: None, finished_at: now, reason: "Unknown".into() },
        };
        let mut msg = None;
        {
            let mut map = lock(&self.inner.replicas);
            if let Some(r) = map.get_mut(&(key.clone(), ordinal)) {
                if let Some(pid) = r.rec.pid {
                    // No orphans: whatever the replica left in its process group goes with it, and so does
                    // whatever left the group (setsid) but still carries this run's marker (found by reading
                    // /proc, off the async workers and outside this lock; the next run has a marker of its own).
                    process::signal_group(pid, Signal::SIGKILL);
                    if let Some(marker) = self.marker(&r.rec) {
                        tokio::task::spawn_blocking(move || {
                            escape::signal_marked(&marker, &HashSet::from([pid]), Signal::SIGKILL)
                        });
                    }
                }
                self.inner.limits.cleanup(&r.rec.id());
                let ran = r.rec.started_at.map(|s| (now - s).num_milliseconds() as f64 / 1000.0).unwrap_or(0.0);
                let stopping = r.state == ReplicaState::Stopping;
                if ran >= r.rec.reset_after_seconds {
                    r.rec.crash_streak = 1;
                } else {
                    r.rec.crash_streak += 1;
                }
                if !stopping {
                    msg =
                        Some(format!("replica {} (pid {}) {}", r.rec.name(), r.rec.pid.unwrap_or(0), describe(&info)));
                }
                r.rec.last_exit = Some(info);
                r.rec.pid = None;
                r.rec.start_ticks = None;
                r.state = ReplicaState::Exited;
                r.ready = false;
                let _ = r.stop_tasks.send(true);
                self.persist(&r.rec);
            }
        }
        if let Some(m) = msg {
            self.event(key, EventType::Warning, "Exited", &m);
        }
        let _ = exited.send(true);
        let _ = self.inner.notify.send(key.clone());
    }

    /// The variable and URL an App's `databaseRef` gives its replicas. Credentials not written yet (the Database
    /// is still starting) are a wait; a store that cannot be read is a failure, never taken for "not there".
    fn database_env(&self, app: &App) -> Result<Option<(String, String)>, StartError> {
        let Some(r) = &app.spec.database_ref else { return Ok(None) };
        let name = capstan_model::database::credentials_secret(&r.name);
        let key = ObjectKey::new("Secret", app.metadata.namespace(), &name);
        let stored = self
            .inner
            .store
            .get(&key)
            .map_err(|e| StartError::Failed(format!("reading Secret {name} for spec.databaseRef: {e}")))?;
        let url = match stored {
            None => None,
            Some(v) => serde_json::from_value::<capstan_model::Secret>(v)
                .map_err(|e| StartError::Failed(format!("Secret {name} does not decode: {e}")))?
                .spec
                .value("url"),
        };
        match url {
            Some(b) => Ok(Some((r.env.clone(), String::from_utf8_lossy(&b).into_owned()))),
            None => Err(StartError::Waiting(format!(
                "waiting for Database {}'s credentials (spec.databaseRef); it may still be starting",
                r.name
            ))),
        }
    }

    fn memory_limited(&self, key: &ObjectKey, ordinal: u32) -> bool {
        matches!(self.inner.limits, LimitSupport::CgroupV2 { .. })
            && lock(&self.inner.replicas).contains_key(&(key.clone(), ordinal))
    }

    fn launch(
        &self,
        app: &App,
        ordinal: u32,
        revision: &str,
        prev: Option<&Record>,
        database: Option<(String, String)>,
    ) -> Result<(Record, tokio::process::Child, Vec<std::fs::File>), String> {
        let spec = &app.spec;
        let key = ObjectKey::new("App", app.metadata.namespace(), &app.metadata.name);
        let cwd = working_dir(app);
        if !cwd.is_dir() {
            return Err(format!("working directory {} does not exist", cwd.display()));
        }
        let Some((program, first_args)) = spec.run.command.split_first() else {
            return Err("run.command is empty; the embedded runtime cannot run `run.image` alone".into());
        };
        let path_env = search_path(app);
        let exe = process::resolve_program(program, &cwd, &path_env)?;

        // Ports: fixed ones must be free; allocated ones keep the replica's previous port when still free.
        let mut ports = BTreeMap::new();
        let taken = self.ports_in_use(&key, ordinal);
        for p in &spec.ports {
            let port = match p.port.filter(|p| *p != 0) {
                Some(fixed) => {
                    if taken.contains(&fixed) || TcpListener::bind(("127.0.0.1", fixed)).is_err() {
                        return Err(format!("port {fixed} (spec.ports `{}`) is already in use on 127.0.0.1", p.name));
                    }
                    fixed
                }
                None => {
                    let previous = prev
                        .and_then(|r| r.ports.get(&p.name).copied())
                        .filter(|port| !taken.contains(port) && TcpListener::bind(("127.0.0.1", *port)).is_ok());
                    match previous {
                        Some(port) => port,
                        None => allocate_port(&taken, &ports)?,
                    }
                }
            };
            ports.insert(p.name.clone(), port);
        }

        let mut env: Vec<(String, String)> =
            INHERITED_ENV.iter().filter_map(|k| std::env::var(k).ok().map(|v| (k.to_string(), v))).collect();
        env.retain(|(k, _)| !spec.run.env.contains_key(k));
        env.extend(spec.run.env.iter().map(|(k, v)| (k.clone(), v.clone())));
        if let Some(first) = spec.ports.first().and_then(|p| ports.get(&p.name)) {
            env.push(("PORT".into(), first.to_string()));
        }
        for (name, port) in &ports {
            env.push((port_env_name(name), port.to_string()));
        }
        env.push(("CAPSTAN_APP".into(), app.metadata.name.clone()));
        env.push(("CAPSTAN_NAMESPACE".into(), key.namespace.clone()));
        env.push(("CAPSTAN_REPLICA".into(), format!("{}-{ordinal}", app.metadata.name)));
        env.push(("CAPSTAN_ORDINAL".into(), ordinal.to_string()));
        let run = Utc::now().timestamp_nanos_opt().unwrap_or_default();
        let marker = escape::marker(&self.inner.cfg.data_dir, &key.namespace, &app.metadata.name, ordinal, run);
        env.push((escape::MARKER_ENV.into(), marker));
        env.extend(volumes::prepare(&self.inner.store, &self.inner.cfg.data_dir, app, ordinal)?);
        env.extend(database);

        let logs = spec.logs.clone().unwrap_or_default();
        let rec = Record {
            ports,
            restarts: prev.map_or(0, |p| p.restarts),
            crash_streak: prev.map_or(0, |p| p.crash_streak),
            last_exit: prev.and_then(|p| p.last_exit.clone()),
            probes: spec.probes.clone(),
            env: env.clone(),
            cwd: cwd.clone(),
            reset_after_seconds: spec.restart_backoff.clone().unwrap_or_default().reset_after_seconds,
            log_max_size: parse_bytes(&logs.max_size).unwrap_or(10 << 20),
            log_max_files: logs.max_files,
            stop_signal: spec.run.stop_signal.clone(),
            ..Record::fresh(&key, ordinal, revision)
        };

        let (out, err) = self.fifo_paths(&rec);
        if let Some(dir) = out.parent() {
            std::fs::create_dir_all(dir).map_err(|e| format!("creating {}: {e}", dir.display()))?;
        }
        process::ensure_fifo(&out).map_err(|e| format!("creating {}: {e}", out.display()))?;
        process::ensure_fifo(&err).map_err(|e| format!("creating {}: {e}", err.display()))?;
        let child_out = process::open_fifo_for_child(&out).map_err(|e| format!("{}: {e}", out.display()))?;
        let child_err = process::open_fifo_for_child(&err).map_err(|e| format!("{}: {e}", err.display()))?;
        // Held until the log readers are open: a FIFO that no process holds open drops what is in it, so a program
        // that writes and exits at once would otherwise lose its output.
        let hold = [&child_out, &child_err]
            .iter()
            .map(|f| f.try_clone())
            .collect::<std::io::Result<Vec<_>>>()
            .map_err(|e| format!("{}: {e}", out.display()))?;

        let mut limits = self
            .inner
            .limits
            .prepare(&rec.id(), spec.resources.as_ref())
            .map_err(|e| format!("setting resource limits: {e}"))?;
        limits.nofile_soft = self.inner.child_nofile;
        let mut cmd = tokio::process::Command::new(&exe);
        cmd.args(first_args)
            .args(&spec.run.args)
            .env_clear()
            .envs(env)
            .current_dir(&cwd)
            .stdin(std::process::Stdio::null())
            .stdout(child_out)
            .stderr(child_err);
        process::configure(&mut cmd, &limits).map_err(|e| format!("preparing the process: {e}"))?;
        if let Some(user) = &spec.run.user {
            let u = nix::unistd::User::from_name(user)
                .map_err(|e| format!("looking up user `{user}`: {e}"))?
                .ok_or_else(|| format!("user `{user}` (spec.run.user) does not exist on this machine"))?;
            let me = nix::unistd::geteuid();
            if me.is_root() {
                cmd.uid(u.uid.as_raw()).gid(u.gid.as_raw());
                cmd.env("USER", &u.name).env("LOGNAME", &u.name).env("HOME", &u.dir);
            } else if u.uid != me {
                return Err(format!(
                    "running as `{user}` (spec.run.user) needs Capstan to run as root; it runs as uid {me}"
                ));
            }
        }
        let child = {
            let mut launching = lock(&self.inner.launching);
            let child = cmd.spawn().map_err(|e| format!("starting {}: {e}", exe.display()))?;
            launching.extend(child.id());
            child
        };
        Ok((rec, child, hold))
    }

    fn ports_in_use(&self, except_app: &ObjectKey, except_ordinal: u32) -> HashSet<u16> {
        lock(&self.inner.replicas)
            .iter()
            .filter(|((k, o), _)| !(k == except_app && *o == except_ordinal))
            .flat_map(|(_, r)| r.rec.ports.values().copied().collect::<Vec<_>>())
            .collect()
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

    /// The marker in the environment of every process of this run of a replica (none for runs started by a
    /// Capstan that set no marker).
    fn marker(&self, rec: &Record) -> Option<String> {
        rec.env.iter().find(|(k, _)| k == escape::MARKER_ENV).map(|(_, v)| v.clone())
    }

    /// Reaps the zombies of processes that left their replicas and were re-parented to Capstan. Blocking: reads
    /// /proc. Replicas' main processes, known or being launched, are left to the tasks that wait for them.
    fn reap_orphans(&self) {
        let launching = lock(&self.inner.launching);
        let mut mains: HashSet<u32> = self.pids().into_iter().collect();
        mains.extend(launching.iter().copied());
        escape::reap_orphans(&mains);
    }
}

fn allocate_port(taken: &HashSet<u16>, chosen: &BTreeMap<String, u16>) -> Result<u16, String> {
    for _ in 0..64 {
        let l = TcpListener::bind(("127.0.0.1", 0)).map_err(|e| format!("allocating a port: {e}"))?;
        let port = l.local_addr().map_err(|e| e.to_string())?.port();
        if !taken.contains(&port) && !chosen.values().any(|p| *p == port) {
            return Ok(port);
        }
    }
    Err("could not find a free port on 127.0.0.1".into())
}

fn open_fifo_reader(path: &Path) -> std::io::Result<tokio::net::unix::pipe::Receiver> {
    tokio::net::unix::pipe::OpenOptions::new().read_write(true).open_receiver(path)
}

fn describe(e: &ExitInfo) -> String {
    match (e.code, e.signal) {
        (Some(c), _) => format!("exited with code {c}"),
        (None, Some(s)) => format!("was killed by signal {s} ({})", e.reason),
        _ => "exited".into(),
    }
}

/// A replica to stop at shutdown: its App, ordinal, pid, exit watch and stop signal.
type StopTarget = (ObjectKey, u32, Option<u32>, watch::Receiver<bool>, Signal);

impl AppRuntime for LocalRuntime {
    fn observe(&self, app: &ObjectKey) -> Vec<ObservedReplica> {
        let map = lock(&self.inner.replicas);
        let mut out: Vec<ObservedReplica> = map
            .iter()
            .filter(|((k, _), _)| k == app)
            .map(|((_, ordinal), r)| ObservedReplica {
                ordinal: *ordinal,
                revision: r.rec.revision.clone(),
                state: r.state.clone(),
                pid: r.rec.pid,
                ports: r.rec.ports.clone(),
                restarts: r.rec.restarts,
                crash_streak: r.rec.crash_streak,
                started_at: r.rec.started_at,
                last_exit: r.rec.last_exit.clone(),
                ready: r.ready,
                ready_since: r.ready.then_some(r.ready_since).flatten(),
                unhealthy: r.unhealthy.clone(),
                probe_message: r.probe_message.clone(),
            })
            .collect();
        out.sort_by_key(|r| r.ordinal);
        out
    }

    fn start(&self, app: &App, ordinal: u32, revision: &str, count_restart: bool) -> Result<(), StartError> {
        let key = ObjectKey::new("App", app.metadata.namespace(), &app.metadata.name);
        let prev = {
            let map = lock(&self.inner.replicas);
            match map.get(&(key.clone(), ordinal)) {
                Some(r) if matches!(r.state, ReplicaState::Running | ReplicaState::Stopping) => {
                    return Err(StartError::Failed(format!("replica {}-{ordinal} is still running", key.name)));
                }
                Some(r) => Some(r.rec.clone()),
                None => None,
            }
        };
        let mut prev = prev;
        if let Some(p) = prev.as_mut() {
            if count_restart {
                p.restarts += 1;
            } else {
                p.crash_streak = 0;
            }
        }
        let launched = match self.database_env(app) {
            Ok(database) => self.launch(app, ordinal, revision, prev.as_ref(), database),
            Err(StartError::Waiting(msg)) => {
                // Nothing failed: no crash counted, no exit recorded; the controller tries again.
                let mut rec = prev.unwrap_or_else(|| Record::fresh(&key, ordinal, revision));
                rec.revision = revision.to_string();
                lock(&self.inner.replicas)
                    .insert((key, ordinal), Replica::without_process(rec, ReplicaState::Waiting(msg.clone())));
                return Err(StartError::Waiting(msg));
            }
            Err(StartError::Failed(msg)) => Err(msg),
        };
        let (mut rec, child, hold) = match launched {
            Ok(x) => x,
            Err(msg) => {
                let mut rec = prev.unwrap_or_else(|| Record::fresh(&key, ordinal, revision));
                rec.revision = revision.to_string();
                rec.crash_streak += 1;
                rec.last_exit =
                    Some(ExitInfo { code: None, signal: None, finished_at: Utc::now(), reason: "StartFailed".into() });
                self.persist(&rec);
                lock(&self.inner.replicas)
                    .insert((key, ordinal), Replica::without_process(rec, ReplicaState::StartFailed(msg.clone())));
                return Err(StartError::Failed(msg));
            }
        };
        let pid = child.id().unwrap_or(0);
        rec.pid = Some(pid);
        rec.start_ticks = process::proc_start_time(pid).map(|(t, _)| t);
        rec.started_at = Some(Utc::now());
        self.persist(&rec);

        let (stop_tasks, stop_rx) = watch::channel(false);
        let (exited_tx, exited) = watch::channel(false);
        let writer = self.open_writer(&rec).ok();
        if let Some(w) = &writer {
            let (out, err) = self.fifo_paths(&rec);
            for (p, s) in [(out, "stdout"), (err, "stderr")] {
                match open_fifo_reader(&p) {
                    Ok(r) => {
                        tokio::spawn(logs::pump(r, s, w.clone(), stop_rx.clone()));
                    }
                    Err(e) => tracing::warn!("reading {}: {e}", p.display()),
                }
            }
        }
        drop(hold);
        self.spawn_probes(&rec, stop_rx);
        lock(&self.inner.replicas).insert((key.clone(), ordinal), Replica::running(rec, stop_tasks, exited));
        lock(&self.inner.launching).remove(&pid);
        let rt = self.clone();
        let mut child = child;
        tokio::spawn(async move {
            let status = child.wait().await.ok();
            rt.on_exit(&key, ordinal, status, exited_tx);
        });
        Ok(())
    }

    fn stop(&self, app: &ObjectKey, ordinal: u32, grace: Duration, forget: bool) {
        let (pid, mut exited, signal, marker) = {
            let mut map = lock(&self.inner.replicas);
            let Some(r) = map.get_mut(&(app.clone(), ordinal)) else {
                return;
            };
            if r.state == ReplicaState::Running {
                r.state = ReplicaState::Stopping;
                r.ready = false;
            }
            (r.rec.pid, r.exited.clone(), r.rec.stop_signal(), self.marker(&r.rec))
        };
        let rt = self.clone();
        let key = app.clone();
        let drainer = lock(&self.inner.drainer).clone();
        tokio::spawn(async move {
            if let Some(pid) = pid {
                if let Some(drain) = drainer.filter(|_| !*exited.borrow()) {
                    // Out of rotation first; in-flight requests finish (up to the drain time), then SIGTERM.
                    drain(key.clone(), format!("{}-{ordinal}", key.name)).await;
                }
                // Processes that left the group are found by reading /proc: off the async workers.
                let marked = |sig: Signal| {
                    let m = marker.clone();
                    tokio::task::spawn_blocking(move || {
                        m.map_or(0, |m| escape::signal_marked(&m, &HashSet::from([pid]), sig))
                    })
                };
                if !*exited.borrow() {
                    process::signal_group(pid, signal);
                    // Processes that left the group are asked to stop at the same time.
                    let _ = marked(signal).await;
                    let timed_out = tokio::time::timeout(grace, exited.wait_for(|e| *e)).await.is_err();
                    if timed_out {
                        tracing::info!(replica = %format!("{}-{ordinal}", key.name), "grace period over; sending SIGKILL");
                        process::signal_group(pid, Signal::SIGKILL);
                        let _ = exited.wait_for(|e| *e).await;
                    }
                }
                // Whatever outlived the main process and its grace period goes now.
                let left = marked(Signal::SIGKILL).await.unwrap_or(0);
                if left > 0 {
                    tracing::info!(replica = %format!("{}-{ordinal}", key.name), "stopped {left} processes that had left the replica's process group");
                }
                let reaper = rt.clone();
                let _ = tokio::task::spawn_blocking(move || reaper.reap_orphans()).await;
            }
            if forget {
                let removed = lock(&rt.inner.replicas).remove(&(key.clone(), ordinal));
                if let Some(r) = removed {
                    let _ = rt.inner.store.delete_record(&r.rec.store_key());
                    let (out, err) = rt.fifo_paths(&r.rec);
                    let _ = std::fs::remove_file(out);
                    let _ = std::fs::remove_file(err);
                }
            }
            let _ = rt.inner.notify.send(key);
        });
    }

    fn known_apps(&self) -> Vec<ObjectKey> {
        let map = lock(&self.inner.replicas);
        let mut keys: Vec<ObjectKey> = map.keys().map(|(k, _)| k.clone()).collect();
        keys.sort();
        keys.dedup();
        keys
    }

    fn warnings(&self, app: &App) -> Vec<String> {
        self.inner.limits.warnings(app.spec.resources.as_ref())
    }

    fn volumes(&self, app: &App) -> Vec<capstan_model::VolumeStatus> {
        self.inner.usage.of(&self.inner.cfg.data_dir, app)
    }

    fn release(&self, app: &ObjectKey) {
        volumes::release(&self.inner.store, &self.inner.cfg.data_dir, app);
        self.inner.usage.forget(app);
        // Followers learn the App is gone once the last writer holding its channel is dropped.
        lock(&self.inner.followers).remove(app);
    }

    async fn shutdown(&self) {
        let targets: Vec<StopTarget> = {
            let mut map = lock(&self.inner.replicas);
            map.iter_mut()
                .filter(|(_, r)| matches!(r.state, ReplicaState::Running | ReplicaState::Stopping))
                .map(|((k, o), r)| {
                    r.state = ReplicaState::Stopping;
                    (k.clone(), *o, r.rec.pid, r.exited.clone(), r.rec.stop_signal())
                })
                .collect()
        };
        let mut waits = Vec::new();
        for (key, ordinal, pid, mut exited, signal) in targets {
            let grace = self.grace_of(&key);
            waits.push(tokio::spawn(async move {
                let Some(pid) = pid else { return };
                process::signal_group(pid, signal);
                if tokio::time::timeout(grace, exited.wait_for(|e| *e)).await.is_err() {
                    tracing::info!(replica = %format!("{}-{ordinal}", key.name), "grace period over; sending SIGKILL");
                    process::signal_group(pid, Signal::SIGKILL);
                    let _ = tokio::time::timeout(Duration::from_secs(5), exited.wait_for(|e| *e)).await;
                }
            }));
        }
        for w in waits {
            let _ = w.await;
        }
        // Stopped replicas are not adopted by the next Capstan: it starts them fresh.
        let map = lock(&self.inner.replicas);
        for r in map.values() {
            let _ = self.inner.store.delete_record(&r.rec.store_key());
        }
    }
}

impl LocalRuntime {
    fn grace_of(&self, key: &ObjectKey) -> Duration {
        let secs = self
            .inner
            .store
            .get(key)
            .ok()
            .flatten()
            .and_then(|o| o["spec"]["terminationGracePeriodSeconds"].as_u64())
            .unwrap_or(30);
        Duration::from_secs(secs)
    }
}
