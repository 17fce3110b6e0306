//! The Source and Sync controllers: fetch revisions into artifacts, build and apply them atomically, prune, wait for
//! health, revert drift — one loop with a work queue, reconciles running as tasks, instant requests from the API.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use capstan_engine::controller::condition_now as cond;
use capstan_engine::queue::WorkQueue;
use capstan_engine::sync::{is_bookkeeping, mark_owned, plan_sync, record_history};
use capstan_model::gitops::{reason, Artifact, Secret, Source, SourceStatus, Sync, SyncStatus};
use capstan_model::{
    find_condition, parse_duration, remove_condition, set_condition, ConditionStatus, Diagnostic, Diagnostics,
    EventType, FieldError, ObjectKey, READY, RECONCILING, STALLED,
};
use capstan_store::{Store, WatchType};
use chrono::Utc;
use serde_json::Value;
use tokio::sync::{mpsc, watch, Semaphore};
use tokio::task::JoinHandle;
use tokio::time::Instant;

use crate::artifact::{collect_garbage, write_dir, KEEP_ARTIFACTS};
use crate::build::{build, BuildOptions};
use crate::git::{fetch, redact, write_commit, Credentials, FetchRequest, GitError};

mod kube;

/// Condition type of a Source whose last fetch failed (the artifact of the fetch before stays).
pub const FETCH_FAILED: &str = "FetchFailed";
/// How often a Sync waiting for health or dependencies looks again (store changes wake it sooner).
const POLL: Duration = Duration::from_secs(2);
/// When an object that could not be read is looked at again.
const READ_RETRY: Duration = Duration::from_secs(5);

/// The checks `capstan apply` runs on a batch, provided by the API layer.
pub trait Admit: Send + std::marker::Sync + 'static {
    /// Checks a batch; problems carry the index of the object in the batch.
    fn admit(&self, objects: &[Value]) -> Result<(), Vec<(usize, FieldError)>>;
}

/// Where the controllers keep repositories and artifacts.
#[derive(Debug, Clone)]
pub struct GitOpsConfig {
    pub data_dir: PathBuf,
    /// Fetches running at once; the rest wait their turn.
    pub max_concurrent_fetches: usize,
}

enum Msg {
    Request { sync: ObjectKey, token: String },
    Done { key: ObjectKey, after: Option<Duration>, changed: bool },
    DirChanged(ObjectKey),
}

#[derive(Clone)]
struct Waiting {
    revision: String,
    deadline: Instant,
    started: chrono::DateTime<Utc>,
}

struct Inner {
    store: Store,
    admit: Arc<dyn Admit>,
    cfg: GitOpsConfig,
    fetches: Semaphore,
    tx: mpsc::UnboundedSender<Msg>,
    /// Pending `sync now` / webhook tokens per Sync.
    requests: Mutex<HashMap<ObjectKey, String>>,
    /// Syncs waiting for health: the revision, the deadline, and when the attempt started.
    waiting: Mutex<HashMap<ObjectKey, Waiting>>,
    watchers: Mutex<HashMap<ObjectKey, (PathBuf, notify::RecommendedWatcher)>>,
}

/// The running controllers.
pub struct GitOpsHandle {
    tx: mpsc::UnboundedSender<Msg>,
    stop: watch::Sender<bool>,
    task: JoinHandle<()>,
}

/// Asks the controllers for immediate reconciles; cheap to clone.
#[derive(Clone)]
pub struct Requester {
    tx: mpsc::UnboundedSender<Msg>,
}

impl Requester {
    /// Asks for an immediate reconcile of a Sync (its Source is fetched first); returns the request's token, which
    /// the Sync's `status.lastHandledReconcileAt` shows once handled.
    pub fn request(&self, sync: ObjectKey) -> String {
        let token = Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Nanos, true);
        let _ = self.tx.send(Msg::Request { sync, token: token.clone() });
        token
    }
}

impl GitOpsHandle {
    pub fn requester(&self) -> Requester {
        Requester { tx: self.tx.clone() }
    }

    /// The loop's handle, stopped with the plane's other controllers (the requester keeps working until then).
    pub fn into_handle(self) -> capstan_engine::runner::Handle {
        capstan_engine::runner::Handle::new("Source/Sync", self.stop, self.task)
    }
}

/// Starts the Source and Sync controllers.
pub fn spawn(store: Store, admit: Arc<dyn Admit>, cfg: GitOpsConfig) -> GitOpsHandle {
    let (tx, rx) = mpsc::unbounded_channel();
    let (stop, stop_rx) = watch::channel(false);
    let inner = Arc::new(Inner {
        store,
        admit,
        fetches: Semaphore::new(cfg.max_concurrent_fetches.max(1)),
        cfg,
        tx: tx.clone(),
        requests: Mutex::default(),
        waiting: Mutex::default(),
        watchers: Mutex::default(),
    });
    let task = tokio::spawn(run(inner, rx, stop_rx));
    GitOpsHandle { tx, stop, task }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

fn typed<T: serde::de::DeserializeOwned>(v: Value) -> Option<T> {
    serde_json::from_value(v).ok()
}

fn generation(v: &Value) -> i64 {
    v["metadata"]["generation"].as_i64().unwrap_or(0)
}

fn source_key_of(sync: &Sync) -> ObjectKey {
    let ns = sync.spec.source_ref.namespace.as_deref().unwrap_or(sync.metadata.namespace());
    ObjectKey::new("Source", ns, &sync.spec.source_ref.name)
}

fn sync_key(s: &Sync) -> ObjectKey {
    ObjectKey::new("Sync", s.metadata.namespace(), &s.metadata.name)
}

impl Inner {
    fn syncs(&self) -> Vec<Sync> {
        self.store.list("Sync", None).unwrap_or_default().into_iter().filter_map(typed).collect()
    }

    fn syncs_reading(&self, source: &ObjectKey) -> Vec<ObjectKey> {
        self.syncs().iter().filter(|s| source_key_of(s) == *source).map(sync_key).collect()
    }

    fn dependents_of(&self, dep: &ObjectKey) -> Vec<ObjectKey> {
        self.syncs()
            .iter()
            .filter(|s| {
                s.spec.depends_on.iter().any(|d| {
                    d.name == dep.name && d.namespace.as_deref().unwrap_or(s.metadata.namespace()) == dep.namespace
                })
            })
            .map(sync_key)
            .collect()
    }

    fn source_root(&self, key: &ObjectKey) -> PathBuf {
        self.cfg.data_dir.join("sources").join(&key.namespace).join(&key.name)
    }

    fn applied_link(&self, key: &ObjectKey) -> PathBuf {
        self.cfg.data_dir.join("syncs").join(&key.namespace).join(&key.name).join("applied")
    }

    /// Artifacts that Syncs run from; never garbage-collected.
    fn protected_artifacts(&self) -> Vec<PathBuf> {
        let mut out = Vec::new();
        let base = self.cfg.data_dir.join("syncs");
        for ns in std::fs::read_dir(&base).into_iter().flatten().flatten() {
            for s in std::fs::read_dir(ns.path()).into_iter().flatten().flatten() {
                if let Ok(t) = std::fs::read_link(s.path().join("applied")) {
                    out.push(t);
                }
            }
        }
        out
    }

    fn event(&self, key: &ObjectKey, type_: EventType, reason: &str, message: &str) {
        if let Err(e) = self.store.record_event(key, type_, reason, message) {
            tracing::warn!(object = %key, "recording an event: {e}");
        }
    }
}

async fn run(inner: Arc<Inner>, mut rx: mpsc::UnboundedReceiver<Msg>, mut stop: watch::Receiver<bool>) {
    let mut queue = WorkQueue::default();
    let mut watch = inner.store.watch();
    let mut generations: HashMap<ObjectKey, i64> = HashMap::new();
    let mut ready: HashMap<ObjectKey, Option<String>> = HashMap::new();
    let mut in_flight: HashSet<ObjectKey> = HashSet::new();
    let mut dirty: HashSet<ObjectKey> = HashSet::new();
    for kind in ["Source", "Sync"] {
        for v in inner.store.list(kind, None).unwrap_or_default() {
            if let Ok(k) = capstan_store::key_of(&v) {
                generations.insert(k.clone(), generation(&v));
                queue.add(k);
            }
        }
    }
    loop {
        let wake = queue.next_due().unwrap_or_else(|| Instant::now() + Duration::from_secs(3600));
        tokio::select! {
            _ = stop.changed() => break,
            ev = watch.recv() => match ev {
                Ok(ev) => on_watch(&inner, ev, &mut queue, &mut generations, &mut ready),
                Err(tokio::sync::broadcast::error::RecvError::Lagged(_)) => {
                    for kind in ["Source", "Sync"] {
                        for v in inner.store.list(kind, None).unwrap_or_default() {
                            if let Ok(k) = capstan_store::key_of(&v) { queue.add(k); }
                        }
                    }
                }
                Err(tokio::sync::broadcast::error::RecvError::Closed) => break,
            },
            msg = rx.recv() => match msg {
                None => break,
                Some(Msg::Request { sync, token }) => {
                    lock(&inner.requests).insert(sync.clone(), token);
                    // The Source fetches first; when the Sync cannot be read, the Sync is queued and says why.
                    let src = inner.store.get(&sync).ok().flatten().and_then(typed::<Sync>).map(|s| source_key_of(&s));
                    match src {
                        Some(s) => queue.add(s),
                        None => queue.add(sync),
                    }
                }
                Some(Msg::Done { key, after, changed }) => {
                    in_flight.remove(&key);
                    if dirty.remove(&key) {
                        queue.add(key.clone());
                    } else if let Some(a) = after {
                        queue.add_at(key.clone(), Instant::now() + a);
                    }
                    if key.kind == "Source" {
                        let pending: HashSet<ObjectKey> = lock(&inner.requests).keys().cloned().collect();
                        for s in inner.syncs_reading(&key) {
                            if changed || pending.contains(&s) {
                                queue.add(s);
                            }
                        }
                    }
                }
                Some(Msg::DirChanged(key)) => queue.add_at(key, Instant::now() + Duration::from_millis(100)),
            },
            _ = tokio::time::sleep_until(wake) => {}
        }
        for key in queue.pop_due(Instant::now()) {
            if !in_flight.insert(key.clone()) {
                dirty.insert(key);
                continue;
            }
            let inner = inner.clone();
            tokio::spawn(async move {
                let (after, changed) = match key.kind.as_str() {
                    "Source" => reconcile_source(&inner, &key).await,
                    _ => (reconcile_sync(&inner, &key).await, false),
                };
                let _ = inner.tx.send(Msg::Done { key, after, changed });
            });
        }
    }
}

fn on_watch(
    inner: &Arc<Inner>,
    ev: capstan_store::WatchEvent,
    queue: &mut WorkQueue,
    generations: &mut HashMap<ObjectKey, i64>,
    ready: &mut HashMap<ObjectKey, Option<String>>,
) {
    let key = ev.key.clone();
    match (key.kind.as_str(), ev.type_) {
        ("Source" | "Sync", WatchType::Deleted) => {
            generations.remove(&key);
            ready.remove(&key);
            lock(&inner.waiting).remove(&key);
            if key.kind == "Source" {
                lock(&inner.watchers).remove(&key);
                let root = inner.source_root(&key);
                let _ = std::fs::remove_dir_all(root.join("repo.git"));
                collect_garbage(&root, 0, &inner.protected_artifacts());
            } else if let Some(sync) = typed::<Sync>(ev.object) {
                let inner = inner.clone();
                tokio::spawn(async move {
                    match sync.spec.target {
                        capstan_model::gitops::SyncTarget::Embedded => finalize_sync(&inner, &key, &sync),
                        capstan_model::gitops::SyncTarget::Kubernetes => {
                            kube::finalize_kubernetes(&inner, &key, &sync).await
                        }
                    }
                });
            }
        }
        ("Source" | "Sync", _) => {
            let g = generation(&ev.object);
            if generations.insert(key.clone(), g) != Some(g) {
                queue.add(key.clone());
            }
            if key.kind == "Sync" {
                // A dependency that became Ready (or stopped being) lets its dependents go on.
                let state = find_ready(&ev.object);
                if ready.insert(key.clone(), state.clone()) != Some(state) {
                    for d in inner.dependents_of(&key) {
                        queue.add(d);
                    }
                }
            }
        }
        ("Secret", _) => {
            // A Source waiting for its credentials tries again as soon as they change.
            for v in inner.store.list("Source", Some(&key.namespace)).unwrap_or_default() {
                if v["spec"]["secretRef"]["name"] == key.name.as_str() {
                    if let Ok(k) = capstan_store::key_of(&v) {
                        queue.add(k);
                    }
                }
            }
        }
        _ => {
            // Objects a waiting Sync checks: look again when they change.
            let waiting: Vec<ObjectKey> = lock(&inner.waiting).keys().cloned().collect();
            for w in waiting {
                queue.add_at(w, Instant::now() + Duration::from_millis(50));
            }
        }
    }
}

fn find_ready(v: &Value) -> Option<String> {
    let conds = v["status"]["conditions"].as_array()?;
    let c = conds.iter().find(|c| c["type"] == READY)?;
    Some(format!("{}/{}", c["status"].as_str().unwrap_or(""), v["status"]["lastAppliedRevision"]))
}

fn duration_or(s: Option<&str>, default: Duration) -> Duration {
    s.and_then(|s| parse_duration(s).ok()).filter(|d| !d.is_zero()).unwrap_or(default)
}

// ---------------------------------------------------------------------------------------------------------------
// Sources

fn credentials(inner: &Inner, src: &Source) -> Result<Credentials, String> {
    let Some(r) = &src.spec.secret_ref else { return Ok(Credentials::None) };
    let key = ObjectKey::new("Secret", src.metadata.namespace(), &r.name);
    let secret: Secret = inner
        .store
        .get(&key)
        .ok()
        .flatten()
        .and_then(typed)
        .ok_or_else(|| format!("Secret {}/{} named in spec.secretRef does not exist", key.namespace, key.name))?;
    let s = |k: &str| secret.spec.value(k).map(|b| String::from_utf8_lossy(&b).into_owned());
    if let Some(identity) = secret.spec.value("identity") {
        return Ok(Credentials::Ssh { identity, known_hosts: secret.spec.value("known_hosts") });
    }
    if let Some(token) = s("bearerToken") {
        return Ok(Credentials::Bearer(token));
    }
    match (s("username"), s("password")) {
        (Some(username), Some(password)) => Ok(Credentials::Basic { username, password }),
        _ => Err(format!(
            "Secret {}/{} has none of: username and password, bearerToken, identity (keys present: {})",
            key.namespace,
            key.name,
            secret.spec.keys().join(", ")
        )),
    }
}

struct Fetch {
    revision: String,
    written: Option<crate::artifact::Written>,
    transferred: bool,
}

/// Why a Source could not be fetched, sorted as its status reports it.
#[derive(Debug, thiserror::Error)]
enum FetchFailure {
    /// Its credentials Secret is missing or unusable: nothing changes until someone fixes it (stalled).
    #[error("{0}")]
    InvalidSecret(String),
    #[error("{0}")]
    Auth(String),
    #[error("{0}")]
    RefNotFound(String),
    #[error("the fetch did not finish within spec.timeout ({0:?})")]
    Timeout(Duration),
    /// Anything else Git said (an unreachable remote, a broken local repository), credentials redacted.
    #[error("{0}")]
    Git(String),
    /// Writing the artifact (or a directory Source's copy) failed.
    #[error("{0}")]
    Artifact(String),
}

impl FetchFailure {
    /// The reason in the Source's conditions (Flux's words).
    fn reason(&self) -> &'static str {
        match self {
            FetchFailure::InvalidSecret(_) | FetchFailure::Auth(_) => "AuthenticationFailed",
            FetchFailure::RefNotFound(_) => "RefNotFound",
            FetchFailure::Timeout(_) | FetchFailure::Git(_) => "GitOperationFailed",
            FetchFailure::Artifact(_) => "ArtifactFailed",
        }
    }

    fn stalled(&self) -> bool {
        matches!(self, FetchFailure::InvalidSecret(_))
    }
}

impl From<GitError> for FetchFailure {
    fn from(e: GitError) -> Self {
        let text = redact(&e.to_string());
        match e {
            GitError::Auth(_) => FetchFailure::Auth(text),
            GitError::RefNotFound(_) => FetchFailure::RefNotFound(text),
            GitError::Artifact(_) => FetchFailure::Artifact(text),
            GitError::Remote(_) | GitError::Local(_) | GitError::Interrupted => FetchFailure::Git(text),
        }
    }
}

async fn fetch_source(inner: &Arc<Inner>, key: &ObjectKey, src: &Source) -> Result<Fetch, FetchFailure> {
    let root = inner.source_root(key);
    let current = src.status.as_ref().and_then(|s| s.artifact.clone());
    let ignore = src.spec.ignore.clone();
    let timeout = duration_or(Some(&src.spec.timeout), Duration::from_secs(60));
    if let Some(dir) = &src.spec.dir {
        let path = capstan_model_base_dir(src).join(dir);
        ensure_watcher(inner, key, &path);
        let r = tokio::task::spawn_blocking(move || write_dir(&path, &root, ignore.as_deref()))
            .await
            .map_err(|e| FetchFailure::Artifact(e.to_string()))?
            .map_err(|e| FetchFailure::Artifact(e.to_string()))?;
        let revision = r.digest.clone();
        return Ok(Fetch { revision, written: Some(r), transferred: true });
    }
    let url = src.spec.url.clone().unwrap_or_default();
    let git_ref = src.spec.git_ref.clone().unwrap_or_default();
    let creds = credentials(inner, src).map_err(FetchFailure::InvalidSecret)?;
    let _permit = inner.fetches.acquire().await.map_err(|e| FetchFailure::Git(e.to_string()))?;
    let stop = Arc::new(AtomicBool::new(false));
    let stop2 = stop.clone();
    let job = tokio::task::spawn_blocking(move || -> Result<Fetch, GitError> {
        let repo_dir = root.join("repo.git");
        let f = fetch(&FetchRequest {
            url: &url,
            git_ref: &git_ref,
            repo_dir: &repo_dir,
            credentials: &creds,
            interrupt: &stop2,
            // The deadline below reports the timeout; the sockets' own, a little later, end the thread.
            timeout: timeout + Duration::from_secs(2),
        })?;
        let have = current.as_ref().filter(|a| a.revision == f.revision && Path::new(&a.path).is_dir());
        let previous = current.as_ref().map(|a| PathBuf::from(&a.path)).filter(|p| p.is_dir());
        let written = match have {
            Some(_) => None,
            None => Some(write_commit(&repo_dir, &f.commit, &root, ignore.as_deref(), previous.as_deref())?),
        };
        Ok(Fetch { revision: f.revision, written, transferred: f.transferred })
    });
    match tokio::time::timeout(timeout, job).await {
        Err(_) => {
            stop.store(true, Ordering::Relaxed);
            Err(FetchFailure::Timeout(timeout))
        }
        Ok(Err(e)) => Err(FetchFailure::Git(e.to_string())),
        Ok(Ok(Err(e))) => Err(e.into()),
        Ok(Ok(Ok(f))) => Ok(f),
    }
}

fn capstan_model_base_dir(src: &Source) -> PathBuf {
    src.metadata
        .base_dir()
        .map(PathBuf::from)
        .or_else(|| std::env::current_dir().ok())
        .unwrap_or_else(|| PathBuf::from("/"))
}

fn ensure_watcher(inner: &Arc<Inner>, key: &ObjectKey, path: &Path) {
    use notify::Watcher;
    let mut watchers = lock(&inner.watchers);
    if watchers.get(key).map(|(p, _)| p == path).unwrap_or(false) {
        return;
    }
    let tx = inner.tx.clone();
    let k = key.clone();
    let handler = move |res: notify::Result<notify::Event>| {
        if let Ok(ev) = res {
            if !ev.kind.is_access() {
                let _ = tx.send(Msg::DirChanged(k.clone()));
            }
        }
    };
    match notify::recommended_watcher(handler) {
        Ok(mut w) => match w.watch(path, notify::RecursiveMode::Recursive) {
            Ok(()) => {
                watchers.insert(key.clone(), (path.to_path_buf(), w));
            }
            Err(e) => tracing::warn!(source = %key, "cannot watch {}: {e}; polling at spec.interval", path.display()),
        },
        Err(e) => tracing::warn!(source = %key, "cannot watch {}: {e}; polling at spec.interval", path.display()),
    }
}

/// Fetches one Source; returns when to look again and whether its artifact changed.
async fn reconcile_source(inner: &Arc<Inner>, key: &ObjectKey) -> (Option<Duration>, bool) {
    let src = match inner.store.get(key) {
        Ok(v) => v.and_then(typed::<Source>),
        Err(e) => {
            // Not "gone": looked at again, and nothing is removed.
            tracing::warn!(source = %key, "reading the Source (retry in {READ_RETRY:?}): {e}");
            return (Some(READ_RETRY), false);
        }
    };
    let Some(src) = src else { return (None, false) };
    if src.spec.suspend {
        return (None, false);
    }
    let interval = duration_or(Some(&src.spec.interval), Duration::from_secs(60));
    let g = src.metadata.generation;
    let mut status: SourceStatus = src.status.clone().unwrap_or_default();
    let started = std::time::Instant::now();
    if status.artifact.is_none() || status.observed_generation != g {
        // A first fetch, or a changed spec: say so while it runs.
        let what = src.spec.url.clone().or_else(|| src.spec.dir.clone()).unwrap_or_default();
        let msg = format!("fetching {}", redact(&what));
        set_condition(&mut status.conditions, cond(RECONCILING, ConditionStatus::True, reason::PROGRESSING, msg, g));
        write_status(inner, key, &status);
    }
    let result = fetch_source(inner, key, &src).await;
    status.last_fetch_millis = Some(started.elapsed().as_millis() as u64);
    status.observed_generation = g;
    let mut changed = false;
    match result {
        Ok(f) => {
            remove_condition(&mut status.conditions, FETCH_FAILED);
            remove_condition(&mut status.conditions, STALLED);
            remove_condition(&mut status.conditions, RECONCILING);
            let same = status.artifact.as_ref().map(|a| a.revision == f.revision).unwrap_or(false);
            if let Some(w) = f.written {
                let unchanged_dir = status.artifact.as_ref().map(|a| Path::new(&a.path) == w.dir).unwrap_or(false);
                if !same || !unchanged_dir {
                    changed = true;
                    status.warnings = w.warnings.clone();
                    status.artifact = Some(Artifact {
                        revision: f.revision.clone(),
                        digest: w.digest,
                        size: w.size,
                        files: w.files,
                        path: w.dir.display().to_string(),
                        last_update_time: Utc::now(),
                    });
                    inner.event(
                        key,
                        EventType::Normal,
                        "NewArtifact",
                        &format!("stored artifact for revision '{}'", f.revision),
                    );
                    for warning in &w.warnings {
                        inner.event(key, EventType::Warning, "ArtifactWarning", warning);
                    }
                }
            }
            let msg = format!("stored artifact for revision '{}'", f.revision);
            set_condition(&mut status.conditions, cond(READY, ConditionStatus::True, reason::SUCCEEDED_SOURCE, msg, g));
            let root = inner.source_root(key);
            let mut protect = inner.protected_artifacts();
            if let Some(a) = &status.artifact {
                protect.push(PathBuf::from(&a.path));
            }
            collect_garbage(&root, KEEP_ARTIFACTS, &protect);
            tracing::debug!(source = %key, transferred = f.transferred, "fetched {}", f.revision);
        }
        Err(failure) => {
            let message = failure.to_string();
            remove_condition(&mut status.conditions, RECONCILING);
            if failure.stalled() {
                // The Source cannot work until someone fixes its Secret: stalled, not retried in a loop of events.
                set_condition(
                    &mut status.conditions,
                    cond(STALLED, ConditionStatus::True, "InvalidSecret", message.clone(), g),
                );
            }
            let why = failure.reason();
            let keep = match &status.artifact {
                Some(a) => format!("; still serving revision '{}'", a.revision),
                None => String::new(),
            };
            set_condition(&mut status.conditions, cond(FETCH_FAILED, ConditionStatus::True, why, message.clone(), g));
            set_condition(
                &mut status.conditions,
                cond(READY, ConditionStatus::False, why, format!("{message}{keep}"), g),
            );
            inner.event(key, EventType::Warning, why, &message);
        }
    }
    match inner.store.get(key) {
        Ok(None) => {
            // Deleted while the fetch ran: what it wrote goes too (the deletion's own cleanup ran before it
            // finished).
            let root = inner.source_root(key);
            let _ = std::fs::remove_dir_all(root.join("repo.git"));
            collect_garbage(&root, 0, &inner.protected_artifacts());
            return (None, false);
        }
        Err(e) => {
            // A read that failed says nothing about the Source: its repository and artifacts stay.
            tracing::warn!(source = %key, "reading the Source after a fetch (retry in {READ_RETRY:?}): {e}");
            return (Some(READ_RETRY), false);
        }
        Ok(Some(_)) => {}
    }
    write_status(inner, key, &status);
    (Some(interval), changed)
}

fn write_status<T: serde::Serialize>(inner: &Inner, key: &ObjectKey, status: &T) {
    let v = serde_json::to_value(status).unwrap_or(Value::Null);
    if let Err(e) = inner.store.update_status(key, v) {
        tracing::warn!(object = %key, "writing status: {e}");
    }
}

// ---------------------------------------------------------------------------------------------------------------
// Syncs

/// Why an object is not Ready, if it is not.
fn not_ready(store: &Store, key: &ObjectKey) -> Option<String> {
    let v = match store.get(key) {
        Ok(Some(v)) => v,
        Ok(None) => return Some("not found".into()),
        Err(e) => return Some(format!("cannot be read: {e}")),
    };
    if key.kind == "Secret" {
        return None;
    }
    let Some(c) = v["status"]["conditions"].as_array().and_then(|cs| cs.iter().find(|c| c["type"] == READY)) else {
        return Some("no status yet".into());
    };
    let observed = v["status"]["observedGeneration"].as_i64().unwrap_or(i64::MAX);
    if observed < generation(&v) {
        return Some("its controller has not seen the latest spec yet".into());
    }
    if c["status"] == "True" {
        None
    } else {
        Some(c["message"].as_str().unwrap_or("not Ready").to_string())
    }
}

fn diag_for(manifests: &[capstan_model::Manifest], errors: Vec<(usize, FieldError)>) -> Diagnostics {
    Diagnostics(
        errors
            .into_iter()
            .map(|(i, e)| match manifests.get(i) {
                Some(m) => m.diagnose(e),
                None => Diagnostic {
                    file: "-".into(),
                    location: None,
                    object: None,
                    field: Some(e.path),
                    message: e.message,
                    hint: e.hint,
                },
            })
            .collect(),
    )
}

/// Points `link` at `target` atomically; returns the target it had.
fn swap_link(link: &Path, target: &Path) -> std::io::Result<Option<PathBuf>> {
    let old = std::fs::read_link(link).ok();
    if let Some(parent) = link.parent() {
        std::fs::create_dir_all(parent)?;
    }
    let tmp = link.with_extension("new");
    let _ = std::fs::remove_file(&tmp);
    std::os::unix::fs::symlink(target, &tmp)?;
    std::fs::rename(&tmp, link)?;
    Ok(old)
}

struct Outcome {
    reason: &'static str,
    message: String,
    after: Duration,
    ready: ConditionStatus,
    /// When the attempt this outcome ends began, if earlier than this reconcile (health waits span several).
    started: Option<chrono::DateTime<Utc>>,
}

/// The timing of one reconcile of a Sync.
struct Attempt {
    started: chrono::DateTime<Utc>,
    timeout: Duration,
    retry: Duration,
    interval: Duration,
}

/// Reconciles one Sync; returns when to look again.
async fn reconcile_sync(inner: &Arc<Inner>, key: &ObjectKey) -> Option<Duration> {
    let sync = match inner.store.get(key) {
        Ok(v) => v.and_then(typed::<Sync>)?,
        Err(e) => {
            tracing::warn!(sync = %key, "reading the Sync (retry in {READ_RETRY:?}): {e}");
            return Some(READ_RETRY);
        }
    };
    if sync.spec.suspend {
        return None;
    }
    let started = Utc::now();
    let interval = duration_or(Some(&sync.spec.interval), Duration::from_secs(300));
    let retry = duration_or(sync.spec.retry_interval.as_deref(), interval);
    let timeout = duration_or(sync.spec.timeout.as_deref(), interval);
    let g = sync.metadata.generation;
    let mut status: SyncStatus = sync.status.clone().unwrap_or_default();
    status.observed_generation = g;
    if let Some(token) = lock(&inner.requests).remove(key) {
        status.last_handled_reconcile_at = Some(token);
    }

    let attempt = Attempt { started, timeout, retry, interval };
    let outcome = match sync.spec.target {
        capstan_model::gitops::SyncTarget::Embedded => sync_once(inner, key, &sync, &mut status, &attempt),
        capstan_model::gitops::SyncTarget::Kubernetes => {
            kube::sync_kubernetes(inner, key, &sync, &mut status, &attempt).await
        }
    };
    // History counts attempts to apply a revision, not waits for a dependency or an artifact.
    let mut record = ![reason::DEPENDENCY_NOT_READY, reason::ARTIFACT_FAILED].contains(&outcome.reason);
    match outcome.ready {
        ConditionStatus::True => {
            remove_condition(&mut status.conditions, RECONCILING);
            remove_condition(&mut status.conditions, STALLED);
        }
        ConditionStatus::Unknown => {
            record = false;
            set_condition(
                &mut status.conditions,
                cond(RECONCILING, ConditionStatus::True, reason::PROGRESSING, outcome.message.clone(), g),
            );
        }
        ConditionStatus::False => {
            remove_condition(&mut status.conditions, RECONCILING);
        }
    }
    set_condition(&mut status.conditions, cond(READY, outcome.ready, outcome.reason, outcome.message.clone(), g));
    if record {
        let rev = status.last_attempted_revision.clone().unwrap_or_default();
        let began = outcome.started.unwrap_or(started);
        let millis = (Utc::now() - began).num_milliseconds().max(0) as u64;
        record_history(&mut status.history, &rev, outcome.reason, began, millis);
    }
    write_status(inner, key, &status);
    Some(outcome.after)
}

/// The artifact a Sync applies, once its dependencies are Ready and its Source has one; else why not.
fn ready_artifact(inner: &Arc<Inner>, sync: &Sync, retry: Duration) -> Result<Artifact, Outcome> {
    let fail = failed(retry);
    // Dependencies first: each must be Ready at its spec, and have applied what its Source holds now (as Flux
    // holds a dependent back): a dependency that was Ready on the previous revision and has not yet tried (or
    // has refused) the new one holds this Sync on the revision it runs.
    for d in &sync.spec.depends_on {
        let dk = ObjectKey::new("Sync", d.namespace.as_deref().unwrap_or(sync.metadata.namespace()), &d.name);
        let read_err =
            |e: capstan_store::StoreError| fail(reason::DEPENDENCY_NOT_READY, format!("reading '{dk}': {e}"));
        let dep = inner.store.get(&dk).map_err(read_err)?.and_then(typed::<Sync>);
        let source = match &dep {
            Some(dep) => inner.store.get(&source_key_of(dep)).map_err(read_err)?.and_then(typed::<Source>),
            None => None,
        };
        if let Some(why) = dependency_holds(&dk, dep.as_ref(), source.as_ref()) {
            let mut o = fail(reason::DEPENDENCY_NOT_READY, why);
            o.after = retry.min(POLL * 5);
            return Err(o);
        }
    }

    // The Source's artifact.
    let sk = source_key_of(sync);
    let src = inner
        .store
        .get(&sk)
        .map_err(|e| fail(reason::ARTIFACT_FAILED, format!("reading Source '{}/{}': {e}", sk.namespace, sk.name)))?;
    let Some(src) = src.and_then(typed::<Source>) else {
        return Err(fail(reason::ARTIFACT_FAILED, format!("Source '{}/{}' not found", sk.namespace, sk.name)));
    };
    let Some(artifact) = src.status.as_ref().and_then(|s| s.artifact.clone()) else {
        let why = src
            .status
            .as_ref()
            .and_then(|s| find_condition(&s.conditions, READY).map(|c| c.message.clone()))
            .unwrap_or_else(|| "no artifact yet".into());
        let mut o = fail(reason::ARTIFACT_FAILED, format!("Source '{}/{}' is not ready: {why}", sk.namespace, sk.name));
        o.after = retry.min(POLL * 5);
        return Err(o);
    };
    Ok(artifact)
}

/// Why a dependency (`dep`, with its Source) holds its dependents back, if it does: it is not Ready at its spec,
/// or it has not applied what its Source holds now.
fn dependency_holds(dk: &ObjectKey, dep: Option<&Sync>, source: Option<&Source>) -> Option<String> {
    let name = format!("{}/{}", dk.namespace, dk.name);
    let Some(dep) = dep else { return Some(format!("dependency '{name}' is not ready: it does not exist")) };
    let st = dep.status.clone().unwrap_or_default();
    let ready = find_condition(&st.conditions, READY).is_some_and(|c| c.status == ConditionStatus::True);
    if !ready || st.observed_generation != dep.metadata.generation {
        return Some(format!("dependency '{name}' is not ready"));
    }
    let current = source.and_then(|s| s.status.as_ref()).and_then(|s| s.artifact.as_ref()).map(|a| a.revision.clone());
    match (current, st.last_applied_revision) {
        (Some(now), Some(applied)) if now != applied => {
            Some(format!("dependency '{name}' has not applied revision {now} (it runs {applied})"))
        }
        (Some(now), None) => Some(format!("dependency '{name}' has not applied revision {now} yet")),
        _ => None,
    }
}

/// A failed attempt, looked at again after `retry`.
fn failed(retry: Duration) -> impl Fn(&'static str, String) -> Outcome {
    move |reason, message| Outcome { reason, message, after: retry, ready: ConditionStatus::False, started: None }
}

/// Builds a revision's manifests for a Sync; a broken revision is BuildFailed with every problem's file and line,
/// and the previous revision keeps running.
fn build_revision(
    inner: &Inner,
    key: &ObjectKey,
    sync: &Sync,
    artifact: &Artifact,
    base_dir: Option<PathBuf>,
    retry: Duration,
) -> Result<Vec<capstan_model::Manifest>, Outcome> {
    let opts = BuildOptions {
        substitute: sync.spec.substitute.clone(),
        target_namespace: sync.spec.target_namespace.clone(),
        base_dir,
    };
    let path = sync.spec.path.clone().unwrap_or_else(|| "./".into());
    build(Path::new(&artifact.path), &path, &opts)
        .map_err(|d| refused(inner, key, &artifact.revision, &d.to_string(), retry))
}

/// A revision refused before anything was applied.
fn refused(inner: &Inner, key: &ObjectKey, revision: &str, why: &str, retry: Duration) -> Outcome {
    let msg = format!("revision '{revision}' was not applied; the previous revision keeps running:\n{why}");
    inner.event(key, EventType::Warning, reason::BUILD_FAILED, &msg);
    failed(retry)(reason::BUILD_FAILED, msg)
}

fn sync_once(inner: &Arc<Inner>, key: &ObjectKey, sync: &Sync, status: &mut SyncStatus, at: &Attempt) -> Outcome {
    let retry = at.retry;
    let fail = failed(retry);

    let artifact = match ready_artifact(inner, sync, retry) {
        Ok(a) => a,
        Err(o) => return o,
    };
    let revision = artifact.revision.clone();
    status.last_attempted_revision = Some(revision.clone());

    // Waiting for health on this same revision: only look at health.
    let waiting = lock(&inner.waiting).get(key).cloned();
    if let Some(w) = waiting.filter(|w| w.revision == revision) {
        return health(inner, key, sync, status, w, at);
    }

    // Build.
    let link = inner.applied_link(key);
    let manifests = match build_revision(inner, key, sync, &artifact, Some(link.clone()), retry) {
        Ok(m) => m,
        Err(o) => return o,
    };
    let mut desired: Vec<Value> = manifests.iter().map(|m| m.resource.to_value()).collect();
    for v in &mut desired {
        mark_owned(v, key);
    }

    // Admission, with the link already on the new revision (relative programs are looked up there); put back when
    // the revision is refused.
    let previous_target = match swap_link(&link, Path::new(&artifact.path)) {
        Ok(old) => old,
        Err(e) => return fail(reason::APPLY_FAILED, format!("cannot link {}: {e}", link.display())),
    };
    if let Err(errors) = inner.admit.admit(&desired) {
        if let Some(old) = previous_target {
            let _ = swap_link(&link, &old);
        }
        return refused(inner, key, &revision, &diag_for(&manifests, errors).to_string(), retry);
    }

    // Plan against what is stored.
    let mut live = BTreeMap::new();
    let keys = desired
        .iter()
        .filter_map(|v| capstan_store::key_of(v).ok())
        .chain(status.inventory.iter().map(|e| ObjectKey::new(&e.kind, &e.namespace, &e.name)));
    for k in keys {
        // An object that cannot be read is neither created again nor forgotten from the inventory (and so never
        // pruned): the whole reconcile waits for the store.
        match inner.store.get(&k) {
            Ok(Some(v)) => {
                live.insert(k, v);
            }
            Ok(None) => {}
            Err(e) => {
                if let Some(old) = previous_target {
                    let _ = swap_link(&link, &old);
                }
                return fail(reason::APPLY_FAILED, format!("reading {k}: {e}; nothing was applied"));
            }
        }
    }
    let plan = plan_sync(key, &desired, &live, &status.inventory, sync.spec.prune);
    let drift = status.last_applied_revision.as_deref() == Some(revision.as_str());
    let writes = plan.writes();
    if !writes.is_empty() {
        if let Err(e) = inner.store.apply(writes) {
            return fail(reason::APPLY_FAILED, format!("applying revision '{revision}': {e}"));
        }
    }
    let mut summary = Vec::new();
    for v in &plan.create {
        if let Ok(k) = capstan_store::key_of(v) {
            summary.push(format!("{}/{} created", k.kind, k.name));
        }
    }
    for (v, changes) in &plan.update {
        let Ok(k) = capstan_store::key_of(v) else { continue };
        let fields: Vec<String> = changes.iter().filter(|c| !is_bookkeeping(c)).map(|c| c.to_string()).collect();
        if drift && !fields.is_empty() {
            let msg = format!("{}/{} was changed outside Git; put back: {}", k.kind, k.name, fields.join("; "));
            inner.event(key, EventType::Warning, "DriftReverted", &msg);
            inner.event(
                &k,
                EventType::Warning,
                "DriftReverted",
                &format!("changed outside Git; Sync {} put back: {}", key.name, fields.join("; ")),
            );
        }
        summary.push(format!("{}/{} configured", k.kind, k.name));
    }
    let mut prune_errors = Vec::new();
    for k in &plan.prune {
        match inner.store.delete(k) {
            Ok(_) => summary.push(format!("{}/{} pruned", k.kind, k.name)),
            Err(e) => prune_errors.push(format!("{k}: {e}")),
        }
    }
    for (k, why) in &plan.keep {
        if sync.spec.prune {
            inner.event(key, EventType::Normal, "PruneSkipped", &format!("kept {}/{}: {why}", k.kind, k.name));
        }
    }
    status.inventory = plan.inventory.clone();
    if !summary.is_empty() {
        inner.event(key, EventType::Normal, "Progressing", &format!("revision '{revision}': {}", summary.join(", ")));
    }
    if !prune_errors.is_empty() {
        return fail(reason::PRUNE_FAILED, format!("pruning failed: {}", prune_errors.join("; ")));
    }
    let w = Waiting { revision, deadline: Instant::now() + at.timeout, started: at.started };
    health(inner, key, sync, status, w, at)
}

fn health(
    inner: &Arc<Inner>,
    key: &ObjectKey,
    sync: &Sync,
    status: &mut SyncStatus,
    w: Waiting,
    at: &Attempt,
) -> Outcome {
    let targets: Vec<ObjectKey> = if sync.spec.wait {
        status.inventory.iter().map(|e| ObjectKey::new(&e.kind, &e.namespace, &e.name)).collect()
    } else {
        sync.spec
            .health_checks
            .iter()
            .map(|h| ObjectKey::new(&h.kind, h.namespace.as_deref().unwrap_or(sync.metadata.namespace()), &h.name))
            .collect()
    };
    let unready: Vec<String> = targets
        .iter()
        .filter_map(|t| not_ready(&inner.store, t).map(|why| format!("{}/{}/{}: {why}", t.kind, t.namespace, t.name)))
        .collect();
    health_outcome(inner, key, status, w, at, unready)
}

/// What health means for a Sync, whatever its target: everything ready → Succeeded; past the deadline →
/// HealthCheckFailed naming what is not; otherwise Progressing, looked at again soon.
fn health_outcome(
    inner: &Arc<Inner>,
    key: &ObjectKey,
    status: &mut SyncStatus,
    w: Waiting,
    at: &Attempt,
    unready: Vec<String>,
) -> Outcome {
    let revision = w.revision.clone();
    let started = Some(w.started);
    if unready.is_empty() {
        lock(&inner.waiting).remove(key);
        let first = status.last_applied_revision.as_deref() != Some(revision.as_str());
        status.last_applied_revision = Some(revision.clone());
        let message = format!("Applied revision: {revision}");
        if first {
            inner.event(key, EventType::Normal, reason::SUCCEEDED, &message);
        }
        return Outcome {
            reason: reason::SUCCEEDED,
            message,
            after: at.interval,
            ready: ConditionStatus::True,
            started,
        };
    }
    if Instant::now() >= w.deadline {
        lock(&inner.waiting).remove(key);
        let message =
            format!("health check failed after the timeout for revision '{revision}': {}", unready.join("; "));
        inner.event(key, EventType::Warning, reason::HEALTH_CHECK_FAILED, &message);
        return Outcome {
            reason: reason::HEALTH_CHECK_FAILED,
            message,
            after: at.retry,
            ready: ConditionStatus::False,
            started,
        };
    }
    let message = format!("revision '{revision}' applied; waiting for: {}", unready.join("; "));
    lock(&inner.waiting).insert(key.clone(), w);
    Outcome { reason: reason::PROGRESSING, message, after: POLL, ready: ConditionStatus::Unknown, started }
}

/// A deleted Sync with `prune` deletes what it applied (never protected data), as Flux's garbage collection does.
fn finalize_sync(inner: &Inner, key: &ObjectKey, sync: &Sync) {
    if !sync.spec.prune {
        // What it applied keeps running, and keeps its revision's files: the link stays, so the artifact is kept
        // and a replica that restarts still finds its working directory.
        return;
    }
    let _ = std::fs::remove_file(inner.applied_link(key));
    let inventory = sync.status.as_ref().map(|s| s.inventory.clone()).unwrap_or_default();
    let mut live = BTreeMap::new();
    for e in &inventory {
        let k = ObjectKey::new(&e.kind, &e.namespace, &e.name);
        match inner.store.get(&k) {
            Ok(Some(v)) => {
                live.insert(k, v);
            }
            Ok(None) => {}
            // Not deleted on a guess: it stays, and says why.
            Err(e) => {
                tracing::error!(sync = %key, object = %k, "not pruned after the Sync was deleted: reading it: {e}")
            }
        }
    }
    let plan = plan_sync(key, &[], &live, &inventory, true);
    for k in plan.prune {
        if let Err(e) = inner.store.delete(&k) {
            tracing::warn!(object = %k, "deleting after Sync {key} was deleted: {e}");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn dep(applied: &str) -> Sync {
        serde_json::from_value(serde_json::json!({
            "apiVersion": "capstan.dev/v1alpha1", "kind": "Sync",
            "metadata": {"name": "infra", "namespace": "default", "generation": 1},
            "spec": {"sourceRef": {"name": "repo"}, "path": "./infra"},
            "status": {
                "observedGeneration": 1,
                "lastAppliedRevision": applied,
                "conditions": [{"type": "Ready", "status": "True", "reason": "ReconciliationSucceeded",
                                "message": "", "lastTransitionTime": "2026-01-01T00:00:00Z"}],
            },
        }))
        .expect("a Sync")
    }

    fn source(revision: &str) -> Source {
        serde_json::from_value(serde_json::json!({
            "apiVersion": "capstan.dev/v1alpha1", "kind": "Source",
            "metadata": {"name": "repo", "namespace": "default"},
            "spec": {"url": "file:///repo"},
            "status": {"artifact": {"revision": revision, "digest": "sha256:0", "size": 0, "files": 0, "path": "/a",
                                    "lastUpdateTime": "2026-01-01T00:00:00Z"}},
        }))
        .expect("a Source")
    }

    /// The day-2 case: the Source moved to a new commit, and the dependency, Ready on the previous one, has not
    /// applied it (it has not tried yet, or refused it). Its dependents wait.
    #[test]
    fn fetch_failures_have_flux_reasons_and_only_a_bad_secret_stalls() {
        let f = |e: GitError| FetchFailure::from(e);
        assert_eq!(f(GitError::Auth("no".into())).reason(), "AuthenticationFailed");
        assert_eq!(f(GitError::RefNotFound("gone".into())).reason(), "RefNotFound");
        assert_eq!(f(GitError::Remote("refused".into())).reason(), "GitOperationFailed");
        assert_eq!(FetchFailure::Timeout(Duration::from_secs(20)).reason(), "GitOperationFailed");
        assert_eq!(FetchFailure::Artifact("full".into()).reason(), "ArtifactFailed");
        assert!(FetchFailure::InvalidSecret("missing".into()).stalled());
        assert!(!f(GitError::Auth("no".into())).stalled());
        // Credentials in a message never reach the status.
        let text = f(GitError::Remote("https://me:s3cret@example.com/r.git refused".into())).to_string();
        assert!(!text.contains("s3cret"), "{text}");
    }

    #[test]
    fn a_dependency_ready_on_an_older_revision_holds_its_dependents() {
        let k = ObjectKey::new("Sync", "default", "infra");
        let why = dependency_holds(&k, Some(&dep("main@sha1:c1")), Some(&source("main@sha1:c2"))).expect("held back");
        assert!(why.contains("has not applied revision main@sha1:c2 (it runs main@sha1:c1)"), "{why}");
        assert_eq!(dependency_holds(&k, Some(&dep("main@sha1:c2")), Some(&source("main@sha1:c2"))), None);
        let missing = dependency_holds(&k, None, None).expect("held back");
        assert!(missing.contains("does not exist"), "{missing}");
        let mut changed = dep("main@sha1:c2");
        changed.metadata.generation = Some(2);
        assert!(dependency_holds(&k, Some(&changed), Some(&source("main@sha1:c2"))).is_some(), "spec not observed");
    }
}
