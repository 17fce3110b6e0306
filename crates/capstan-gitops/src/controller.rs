//! The Source and Sync controllers: fetch revisions into artifacts, build and apply them atomically, prune, wait for
//! health, revert drift — two reconcilers on the shared runner, instant requests from the API.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use capstan_engine::controller::condition_now as cond;
use capstan_engine::runner;
use capstan_engine::sync::{is_bookkeeping, mark_owned, plan_sync, record_history};
use capstan_model::gitops::{reason, Artifact, Secret, Source, SourceStatus, Sync, SyncStatus};
use capstan_model::{
    find_condition, parse_duration, remove_condition, set_condition, ConditionStatus, Diagnostic, Diagnostics,
    EventType, FieldError, ObjectKey, READY, RECONCILING, STALLED,
};
use capstan_store::{Store, StoreError, WatchEvent, WatchType};
use chrono::Utc;
use serde_json::Value;
use tokio::sync::{mpsc, Semaphore};
use tokio::time::Instant;

use crate::artifact::{collect_garbage, write_dir, KEEP_ARTIFACTS};
use crate::build::{build, BuildOptions};
use crate::git::{fetch, redact, write_commit, Credentials, FetchRequest, GitError};

mod embedded;
mod kube;
mod source;
mod sync;

use self::source::*;
use self::sync::*;

/// Condition type of a Source whose last fetch failed (the artifact of the fetch before stays).
pub const FETCH_FAILED: &str = "FetchFailed";
/// How often a Sync waiting for health or dependencies looks again (store changes wake it sooner).
const POLL: Duration = Duration::from_secs(2);

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
    /// Sources to fetch now (a `sync now`, a changed directory) and Syncs to reconcile now (after their Source).
    fetch_now: mpsc::UnboundedSender<ObjectKey>,
    sync_now: mpsc::UnboundedSender<ObjectKey>,
    /// Pending `sync now` / webhook tokens per Sync.
    requests: Mutex<HashMap<ObjectKey, String>>,
    /// Syncs waiting for health: the revision, the deadline, and when the attempt started.
    waiting: Mutex<HashMap<ObjectKey, Waiting>>,
    watchers: Mutex<HashMap<ObjectKey, (PathBuf, notify::RecommendedWatcher)>>,
    /// The generation of each Source and Sync last seen: a write that leaves it (a status) wakes nothing.
    generations: Mutex<HashMap<ObjectKey, i64>>,
    /// Each Sync's readiness last seen, so that its dependents go on when it changes.
    ready: Mutex<HashMap<ObjectKey, Option<String>>>,
    /// Sources whose new artifact their Syncs have not been told of yet.
    untold: Mutex<HashSet<ObjectKey>>,
}

/// The running controllers.
pub struct GitOpsHandle {
    inner: Arc<Inner>,
    sources: capstan_engine::runner::Handle,
    syncs: capstan_engine::runner::Handle,
}

/// Asks the controllers for immediate reconciles; cheap to clone.
#[derive(Clone)]
pub struct Requester {
    inner: Arc<Inner>,
}

impl Requester {
    /// Asks for an immediate reconcile of a Sync (its Source is fetched first); returns the request's token, which
    /// the Sync's `status.lastHandledReconcileAt` shows once handled.
    pub fn request(&self, sync: ObjectKey) -> String {
        let token = Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Nanos, true);
        lock(&self.inner.requests).insert(sync.clone(), token.clone());
        // The Source fetches first, then wakes the Sync; when the Sync cannot be read, the Sync itself is queued (its
        // reconcile retries the read).
        match self.inner.store.get(&sync) {
            Ok(Some(v)) => match typed::<Sync>(v) {
                Some(s) => {
                    let _ = self.inner.fetch_now.send(source_key_of(&s));
                }
                None => {
                    let _ = self.inner.sync_now.send(sync);
                }
            },
            Ok(None) | Err(_) => {
                let _ = self.inner.sync_now.send(sync);
            }
        }
        token
    }
}

impl GitOpsHandle {
    pub fn requester(&self) -> Requester {
        Requester { inner: self.inner.clone() }
    }

    /// The controllers' handles, stopped with the plane's other controllers (the requester keeps working until
    /// then).
    pub fn into_handles(self) -> [capstan_engine::runner::Handle; 2] {
        [self.sources, self.syncs]
    }
}

/// Starts the Source and Sync controllers on the shared runner.
pub fn spawn(store: Store, admit: Arc<dyn Admit>, cfg: GitOpsConfig) -> GitOpsHandle {
    let (fetch_now, fetch_rx) = mpsc::unbounded_channel();
    let (sync_now, sync_rx) = mpsc::unbounded_channel();
    let concurrency = cfg.max_concurrent_fetches.max(1);
    let inner = Arc::new(Inner {
        store: store.clone(),
        admit,
        fetches: Semaphore::new(concurrency),
        cfg,
        fetch_now,
        sync_now,
        requests: Mutex::default(),
        waiting: Mutex::default(),
        watchers: Mutex::default(),
        generations: Mutex::default(),
        ready: Mutex::default(),
        untold: Mutex::default(),
    });
    // Fetches beyond the fetch limit wait for a permit without holding a reconcile slot for long; Syncs apply in
    // parallel, one reconcile per Sync at a time.
    let sources = runner::run_with_requests(store.clone(), Arc::new(Sources(inner.clone())), concurrency * 2, fetch_rx);
    let syncs = runner::run_with_requests(store, Arc::new(Syncs(inner.clone())), 4, sync_rx);
    GitOpsHandle { inner, sources, syncs }
}

/// The Source controller: fetches revisions into artifacts.
struct Sources(Arc<Inner>);

/// The Sync controller: applies artifacts, prunes, waits for health, reverts drift.
struct Syncs(Arc<Inner>);

impl Inner {
    /// Whether the event changed the object's generation (a new object, or a new spec).
    fn new_generation(&self, ev: &WatchEvent) -> bool {
        let g = generation(&ev.object);
        lock(&self.generations).insert(ev.key.clone(), g) != Some(g)
    }

    fn forget(&self, key: &ObjectKey) {
        lock(&self.untold).remove(key);
        lock(&self.generations).remove(key);
        lock(&self.ready).remove(key);
        lock(&self.waiting).remove(key);
    }
}

impl runner::Reconciler for Sources {
    fn kind(&self) -> &'static str {
        "Source"
    }

    fn wants(&self, ev: &WatchEvent) -> bool {
        self.0.new_generation(ev)
    }

    /// A Source waiting for its credentials tries again as soon as they change.
    fn triggers(&self, ev: &WatchEvent) -> Vec<ObjectKey> {
        if ev.key.kind != "Secret" {
            return Vec::new();
        }
        // A listing that fails is no loss: the Source looks again at its interval.
        let sources = self.0.store.list("Source", Some(&ev.key.namespace)).unwrap_or_default();
        sources
            .iter()
            .filter(|v| v["spec"]["secretRef"]["name"] == ev.key.name.as_str())
            .filter_map(|v| capstan_store::key_of(v).ok())
            .collect()
    }

    fn reconcile(&self, key: &ObjectKey) -> Result<runner::Action, runner::ReconcileError> {
        let inner = &self.0;
        let (after, changed) = tokio::runtime::Handle::current().block_on(reconcile_source(inner, key))?;
        // A new artifact whose Syncs could not be told (the listing failed) is told at the retry.
        let changed = lock(&inner.untold).remove(key) || changed;
        let syncs = match inner.syncs_reading(key) {
            Ok(s) => s,
            Err(e) => {
                if changed {
                    lock(&inner.untold).insert(key.clone());
                }
                return Err(e.into());
            }
        };
        // The Syncs reading it apply the new artifact; those asked to sync now go on once it is fetched.
        let pending: HashSet<ObjectKey> = lock(&inner.requests).keys().cloned().collect();
        for s in syncs {
            if changed || pending.contains(&s) {
                let _ = inner.sync_now.send(s);
            }
        }
        Ok(after.map_or(runner::Action::AwaitChange, runner::Action::Requeue))
    }

    fn finalize(&self, key: &ObjectKey, _last: &Value) {
        let inner = &self.0;
        inner.forget(key);
        lock(&inner.watchers).remove(key);
        let root = inner.source_root(key);
        let _ = std::fs::remove_dir_all(root.join("repo.git"));
        collect_garbage(&root, 0, &inner.protected_artifacts());
    }

    /// Fetched at its interval, not at every resync.
    fn resync(&self) -> Option<Duration> {
        None
    }
}

impl runner::Reconciler for Syncs {
    fn kind(&self) -> &'static str {
        "Sync"
    }

    fn wants(&self, ev: &WatchEvent) -> bool {
        self.0.new_generation(ev)
    }

    fn triggers(&self, ev: &WatchEvent) -> Vec<ObjectKey> {
        let inner = &self.0;
        match ev.key.kind.as_str() {
            "Source" => Vec::new(),
            "Sync" if ev.type_ == WatchType::Deleted => Vec::new(),
            "Sync" => {
                // A dependency that became Ready (or stopped being) lets its dependents go on.
                let state = find_ready(&ev.object);
                if lock(&inner.ready).insert(ev.key.clone(), state.clone()) == Some(state) {
                    return Vec::new();
                }
                // A listing that fails is no loss: a held dependent polls its dependencies.
                inner.dependents_of(&ev.key).unwrap_or_default()
            }
            // Objects a waiting Sync checks: look again when they change.
            _ => lock(&inner.waiting).keys().cloned().collect(),
        }
    }

    fn reconcile(&self, key: &ObjectKey) -> Result<runner::Action, runner::ReconcileError> {
        let after = tokio::runtime::Handle::current().block_on(reconcile_sync(&self.0, key))?;
        Ok(after.map_or(runner::Action::AwaitChange, runner::Action::Requeue))
    }

    fn finalize(&self, key: &ObjectKey, last: &Value) {
        let inner = &self.0;
        inner.forget(key);
        let Some(sync) = typed::<Sync>(last.clone()) else { return };
        tokio::runtime::Handle::current().block_on(finalize_sync(inner, key, &sync));
    }

    /// Looked at at its interval, and when what it depends on changes.
    fn resync(&self) -> Option<Duration> {
        None
    }
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
    fn syncs(&self) -> Result<Vec<Sync>, StoreError> {
        Ok(self.store.list("Sync", None)?.into_iter().filter_map(typed).collect())
    }

    fn syncs_reading(&self, source: &ObjectKey) -> Result<Vec<ObjectKey>, StoreError> {
        Ok(self.syncs()?.iter().filter(|s| source_key_of(s) == *source).map(sync_key).collect())
    }

    fn dependents_of(&self, dep: &ObjectKey) -> Result<Vec<ObjectKey>, StoreError> {
        Ok(self
            .syncs()?
            .iter()
            .filter(|s| {
                s.spec.depends_on.iter().any(|d| {
                    d.name == dep.name && d.namespace.as_deref().unwrap_or(s.metadata.namespace()) == dep.namespace
                })
            })
            .map(sync_key)
            .collect())
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
