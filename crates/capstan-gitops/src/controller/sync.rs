//! Syncs, whatever their target: dependencies and the artifact, the build, the revision applied through a
//! `Target`, the health wait and the finalizer.

use capstan_model::gitops::{InventoryEntry, SyncTarget};

use super::embedded::Embedded;
use super::kube::Kubernetes;
use super::*;

pub(super) struct Outcome {
    pub(super) reason: &'static str,
    pub(super) message: String,
    pub(super) after: Duration,
    pub(super) ready: ConditionStatus,
    /// When the attempt this outcome ends began, if earlier than this reconcile (health waits span several).
    pub(super) started: Option<chrono::DateTime<Utc>>,
}

/// The timing of one reconcile of a Sync.
pub(super) struct Attempt {
    pub(super) started: chrono::DateTime<Utc>,
    pub(super) timeout: Duration,
    pub(super) retry: Duration,
    pub(super) interval: Duration,
}

/// Reconciles one Sync; returns when to look again. A read that fails is an error, retried with backoff.
pub(super) async fn reconcile_sync(inner: &Arc<Inner>, key: &ObjectKey) -> Result<Option<Duration>, StoreError> {
    let Some(sync) = inner.store.get(key)?.and_then(typed::<Sync>) else { return Ok(None) };
    // What this reconcile saw: its own status write that follows is not a new generation.
    lock(&inner.generations).insert(key.clone(), sync.metadata.generation.unwrap_or(0));
    if sync.spec.suspend {
        return Ok(None);
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
        SyncTarget::Embedded => sync_with::<Embedded>(inner, key, &sync, &mut status, &attempt).await?,
        SyncTarget::Kubernetes => sync_with::<Kubernetes>(inner, key, &sync, &mut status, &attempt).await?,
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
    Ok(Some(outcome.after))
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
pub(super) fn dependency_holds(dk: &ObjectKey, dep: Option<&Sync>, source: Option<&Source>) -> Option<String> {
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
pub(super) fn failed(retry: Duration) -> impl Fn(&'static str, String) -> Outcome {
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
pub(super) fn refused(inner: &Inner, key: &ObjectKey, revision: &str, why: &str, retry: Duration) -> Outcome {
    let msg = format!("revision '{revision}' was not applied; the previous revision keeps running:\n{why}");
    inner.event(key, EventType::Warning, reason::BUILD_FAILED, &msg);
    failed(retry)(reason::BUILD_FAILED, msg)
}

/// Where a Sync applies its revisions: Capstan's own store (`Embedded`) or a Kubernetes cluster (`Kubernetes`). The
/// steps they share are `sync_with`, `health` and `finalize_with`; a target does only what differs.
pub(super) trait Target: Sized {
    /// Reaches the target a Sync names; the error says why it cannot be reached.
    async fn connect(inner: &Inner, key: &ObjectKey, sync: &Sync) -> Result<Self, TargetError>;

    /// Where the build looks up relative programs, if anywhere.
    fn base_dir(&self) -> Option<PathBuf>;

    /// Admits and applies a built revision and prunes what it no longer holds. An error is the outcome of a revision
    /// refused or not applied, with the inventory left as it was.
    #[allow(clippy::too_many_arguments)]
    async fn apply(
        &self,
        inner: &Inner,
        key: &ObjectKey,
        sync: &Sync,
        artifact: &Artifact,
        manifests: &[capstan_model::Manifest],
        status: &SyncStatus,
        at: &Attempt,
    ) -> Result<Applied, Outcome>;

    /// What is not ready among `objects`, each as "what: why".
    async fn unready(&self, inner: &Inner, objects: &[ObjectKey]) -> Vec<String>;

    /// Deletes what a deleted Sync (with `prune`) applied there, never what holds data.
    async fn prune_all(&self, inner: &Inner, key: &ObjectKey, sync: &Sync);
}

/// What applying a revision did.
pub(super) struct Applied {
    /// What changed ("App/web created", …), said in a Progressing event.
    pub(super) summary: Vec<String>,
    /// What the Sync owns there now.
    pub(super) inventory: Vec<InventoryEntry>,
    /// What failed once the rest was applied, and whether it is said in a Warning event as well.
    pub(super) failure: Option<(Outcome, bool)>,
}

/// Why a Sync's target cannot be reached.
#[derive(Debug, thiserror::Error)]
pub(super) enum TargetError {
    /// The kubeConfig Secret could not be read: not a verdict on the Secret.
    #[error("reading Secret {}/{} named in spec.kubeConfig: {source}", secret.namespace, secret.name)]
    Unreadable { secret: ObjectKey, source: Box<StoreError> },
    #[error("Secret {}/{} named in spec.kubeConfig does not exist", secret.namespace, secret.name)]
    MissingSecret { secret: ObjectKey },
    #[error("Secret {}/{} has no key `{key}`", secret.namespace, secret.name)]
    MissingKey { secret: ObjectKey, key: String },
    #[error("Secret {}/{}: the kubeconfig is not UTF-8", secret.namespace, secret.name)]
    NotUtf8 { secret: ObjectKey },
    /// The cluster cannot be reached with that kubeconfig.
    #[error(transparent)]
    Cluster(#[from] capstan_kubernetes::cluster::ClusterError),
}

/// One reconcile of a Sync on its target: the artifact, the build, the apply, then the wait for health.
async fn sync_with<T: Target>(
    inner: &Arc<Inner>,
    key: &ObjectKey,
    sync: &Sync,
    status: &mut SyncStatus,
    at: &Attempt,
) -> Result<Outcome, StoreError> {
    let retry = at.retry;
    let artifact = match ready_artifact(inner, sync, retry) {
        Ok(a) => a,
        Err(o) => return Ok(o),
    };
    let revision = artifact.revision.clone();
    status.last_attempted_revision = Some(revision.clone());
    let target = match T::connect(inner, key, sync).await {
        Ok(t) => t,
        // A Secret that could not be read says nothing of the target: the reconcile is retried, the status kept.
        Err(TargetError::Unreadable { source, .. }) => return Err(*source),
        Err(e) => {
            return Ok(failed(retry)(reason::APPLY_FAILED, format!("revision '{revision}' was not applied: {e}")))
        }
    };

    // Waiting for health on this same revision: only look at health.
    let waiting = lock(&inner.waiting).get(key).cloned();
    if let Some(w) = waiting.filter(|w| w.revision == revision) {
        return Ok(health(inner, key, &target, sync, status, w, at).await);
    }

    let manifests = match build_revision(inner, key, sync, &artifact, target.base_dir(), retry) {
        Ok(m) => m,
        Err(o) => return Ok(o),
    };
    let applied = match target.apply(inner, key, sync, &artifact, &manifests, status, at).await {
        Ok(a) => a,
        Err(o) => return Ok(o),
    };
    if !applied.summary.is_empty() {
        let msg = format!("revision '{revision}': {}", applied.summary.join(", "));
        inner.event(key, EventType::Normal, "Progressing", &msg);
    }
    status.inventory = applied.inventory;
    if let Some((o, warn)) = applied.failure {
        if warn {
            inner.event(key, EventType::Warning, o.reason, &o.message);
        }
        return Ok(o);
    }
    let w = Waiting { revision, deadline: Instant::now() + at.timeout, started: at.started };
    Ok(health(inner, key, &target, sync, status, w, at).await)
}

/// Health read off the target: every applied object with `wait`, else the named health checks.
async fn health<T: Target>(
    inner: &Arc<Inner>,
    key: &ObjectKey,
    target: &T,
    sync: &Sync,
    status: &mut SyncStatus,
    w: Waiting,
    at: &Attempt,
) -> Outcome {
    let objects: Vec<ObjectKey> = if sync.spec.wait {
        status.inventory.iter().map(|e| ObjectKey::new(&e.kind, &e.namespace, &e.name)).collect()
    } else {
        sync.spec
            .health_checks
            .iter()
            .map(|h| {
                // A cluster-scoped kind (ClusterIssuer) is keyed without a namespace.
                let cluster = capstan_model::Kind::parse(&h.kind).is_some_and(|k| !k.namespaced());
                let ns = if cluster { "" } else { h.namespace.as_deref().unwrap_or(sync.metadata.namespace()) };
                ObjectKey::new(&h.kind, ns, &h.name)
            })
            .collect()
    };
    let unready = target.unready(inner, &objects).await;
    health_outcome(inner, key, status, w, at, unready)
}

/// Where a Sync waiting for health stands at `now`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Verdict {
    /// Everything it waits for is ready.
    Healthy,
    /// Something is not, and the deadline has passed.
    TimedOut,
    /// Something is not; it looks again before the deadline.
    Waiting,
}

/// Judges health at `now`: ready wins even at the deadline; past it, what is not ready fails the revision.
pub(super) fn judge_health(unready: &[String], deadline: Instant, now: Instant) -> Verdict {
    match (unready.is_empty(), now >= deadline) {
        (true, _) => Verdict::Healthy,
        (false, true) => Verdict::TimedOut,
        (false, false) => Verdict::Waiting,
    }
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
    let verdict = judge_health(&unready, w.deadline, Instant::now());
    if verdict == Verdict::Healthy {
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
    if verdict == Verdict::TimedOut {
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
pub(super) async fn finalize_sync(inner: &Inner, key: &ObjectKey, sync: &Sync) {
    match sync.spec.target {
        SyncTarget::Embedded => finalize_with::<Embedded>(inner, key, sync).await,
        SyncTarget::Kubernetes => finalize_with::<Kubernetes>(inner, key, sync).await,
    }
}

async fn finalize_with<T: Target>(inner: &Inner, key: &ObjectKey, sync: &Sync) {
    if !sync.spec.prune {
        // What it applied keeps running. In the store it keeps its revision's files too: the link stays, so the
        // artifact is kept and a replica that restarts still finds its working directory.
        return;
    }
    let target = match T::connect(inner, key, sync).await {
        Ok(t) => t,
        Err(e) => {
            tracing::warn!(sync = %key, "cannot prune after the Sync was deleted: {e}");
            return;
        }
    };
    target.prune_all(inner, key, sync).await;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn health_is_judged_at_the_time_given() {
        let start = Instant::now();
        let deadline = start + Duration::from_secs(60);
        let late = vec!["App/default/web: 1/2 replicas ready".to_string()];
        assert_eq!(judge_health(&late, deadline, start), Verdict::Waiting);
        assert_eq!(judge_health(&late, deadline, start + Duration::from_secs(59)), Verdict::Waiting);
        assert_eq!(judge_health(&late, deadline, deadline), Verdict::TimedOut, "the deadline itself is past");
        assert_eq!(judge_health(&[], deadline, start), Verdict::Healthy);
        assert_eq!(judge_health(&[], deadline, deadline + Duration::from_secs(1)), Verdict::Healthy, "ready wins");
    }
}
