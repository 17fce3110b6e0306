//! Syncs: dependencies and the artifact, build and admission, the plan applied to the store, drift, prune, the
//! health wait and the finalizer.

use super::*;

/// Why an object is not Ready, if it is not.
pub(super) fn not_ready(store: &Store, key: &ObjectKey) -> Option<String> {
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

pub(super) fn diag_for(manifests: &[capstan_model::Manifest], errors: Vec<(usize, FieldError)>) -> Diagnostics {
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
pub(super) fn swap_link(link: &Path, target: &Path) -> std::io::Result<Option<PathBuf>> {
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
    Ok(Some(outcome.after))
}

/// The artifact a Sync applies, once its dependencies are Ready and its Source has one; else why not.
pub(super) fn ready_artifact(inner: &Arc<Inner>, sync: &Sync, retry: Duration) -> Result<Artifact, Outcome> {
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
pub(super) fn build_revision(
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

pub(super) fn sync_once(
    inner: &Arc<Inner>,
    key: &ObjectKey,
    sync: &Sync,
    status: &mut SyncStatus,
    at: &Attempt,
) -> Outcome {
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

pub(super) fn health(
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
pub(super) fn health_outcome(
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
pub(super) fn finalize_sync(inner: &Inner, key: &ObjectKey, sync: &Sync) {
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
