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
mod source;
mod sync;

use self::source::*;
use self::sync::*;

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

/// Every Source and Sync, with its generation.
fn list_all(store: &Store) -> Result<Vec<(ObjectKey, i64)>, capstan_store::StoreError> {
    let mut out = Vec::new();
    for kind in ["Source", "Sync"] {
        for v in store.list(kind, None)? {
            if let Ok(k) = capstan_store::key_of(&v) {
                out.push((k, generation(&v)));
            }
        }
    }
    Ok(out)
}

async fn run(inner: Arc<Inner>, mut rx: mpsc::UnboundedReceiver<Msg>, mut stop: watch::Receiver<bool>) {
    let mut queue = WorkQueue::default();
    let mut watch = inner.store.watch();
    let mut generations: HashMap<ObjectKey, i64> = HashMap::new();
    let mut ready: HashMap<ObjectKey, Option<String>> = HashMap::new();
    let mut in_flight: HashSet<ObjectKey> = HashSet::new();
    let mut dirty: HashSet<ObjectKey> = HashSet::new();
    // Every Source and Sync, at start and after missed events; a listing that fails is tried again, never taken for
    // "there are none".
    let mut relist_at = Some(Instant::now());
    loop {
        if relist_at.is_some_and(|t| t <= Instant::now()) {
            match list_all(&inner.store) {
                Ok(all) => {
                    for (k, g) in all {
                        generations.insert(k.clone(), g);
                        queue.add(k);
                    }
                    relist_at = None;
                }
                Err(e) => {
                    tracing::warn!("listing Sources and Syncs (retry in {READ_RETRY:?}): {e}");
                    relist_at = Some(Instant::now() + READ_RETRY);
                }
            }
        }
        let wake = queue.next_due().unwrap_or_else(|| Instant::now() + Duration::from_secs(3600));
        let wake = relist_at.map_or(wake, |t| t.min(wake));
        tokio::select! {
            _ = stop.changed() => break,
            ev = watch.recv() => match ev {
                Ok(ev) => on_watch(&inner, ev, &mut queue, &mut generations, &mut ready),
                Err(tokio::sync::broadcast::error::RecvError::Lagged(_)) => relist_at = Some(Instant::now()),
                Err(tokio::sync::broadcast::error::RecvError::Closed) => break,
            },
            msg = rx.recv() => match msg {
                None => break,
                Some(Msg::Request { sync, token }) => {
                    lock(&inner.requests).insert(sync.clone(), token);
                    // The Source fetches first; when the Sync cannot be read, the Sync itself is queued (its reconcile
                    // retries the read).
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

fn write_status<T: serde::Serialize>(inner: &Inner, key: &ObjectKey, status: &T) {
    let v = serde_json::to_value(status).unwrap_or(Value::Null);
    if let Err(e) = inner.store.update_status(key, v) {
        tracing::warn!(object = %key, "writing status: {e}");
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
