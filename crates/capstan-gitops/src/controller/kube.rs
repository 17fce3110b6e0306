//! Syncs with `target: kubernetes`: the revision's manifests rendered as Kubernetes objects and applied to the
//! cluster with server-side apply, an inventory per Sync in the cluster, prune, and health read off the cluster.

use capstan_kubernetes::cluster::{ApplyOptions, Cluster, Outcome as Applied};
use capstan_kubernetes::plan::{Health, ObjectRef};
use capstan_model::gitops::InventoryEntry;

use super::*;

/// The inventory's name in the cluster: one per Sync.
fn inventory_name(key: &ObjectKey) -> String {
    format!("{}-{}", key.namespace, key.name)
}

/// The cluster a Sync names: its kubeConfig Secret, or Capstan's own kubeconfig.
async fn connect(inner: &Inner, sync: &Sync) -> Result<Cluster, String> {
    let Some(kc) = &sync.spec.kube_config else {
        return Cluster::connect(None, None).await.map_err(|e| e.to_string());
    };
    let sk = ObjectKey::new("Secret", sync.metadata.namespace(), &kc.secret_ref.name);
    // A read that fails is said as such, never as "does not exist".
    let stored = inner
        .store
        .get(&sk)
        .map_err(|e| format!("reading Secret {}/{} named in spec.kubeConfig: {e}", sk.namespace, sk.name))?;
    let secret: Secret = stored
        .and_then(typed)
        .ok_or_else(|| format!("Secret {}/{} named in spec.kubeConfig does not exist", sk.namespace, sk.name))?;
    let text = secret
        .spec
        .value(&kc.secret_ref.key)
        .ok_or_else(|| format!("Secret {}/{} has no key `{}`", sk.namespace, sk.name, kc.secret_ref.key))?;
    let text = String::from_utf8(text)
        .map_err(|_| format!("Secret {}/{}: the kubeconfig is not UTF-8", sk.namespace, sk.name))?;
    Cluster::from_kubeconfig_text(&text, kc.context.as_deref()).await.map_err(|e| e.to_string())
}

fn entry(r: &ObjectRef) -> InventoryEntry {
    InventoryEntry { kind: r.kind.clone(), namespace: r.namespace.clone(), name: r.name.clone() }
}

/// One reconcile of a Sync whose target is a cluster.
pub(super) async fn sync_kubernetes(
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
    let cluster = match connect(inner, sync).await {
        Ok(c) => c,
        Err(e) => return fail(reason::APPLY_FAILED, format!("revision '{revision}' was not applied: {e}")),
    };
    let waiting = lock(&inner.waiting).get(key).cloned();
    if let Some(w) = waiting.filter(|w| w.revision == revision) {
        return health(inner, key, &cluster, sync, status, w, at).await;
    }
    let manifests = match build_revision(inner, key, sync, &artifact, None, retry) {
        Ok(m) => m,
        Err(o) => return o,
    };
    let resources: Vec<capstan_model::Resource> = manifests.iter().map(|m| m.resource.clone()).collect();
    let objects = match capstan_kubernetes::render::render_manifests(&manifests) {
        Ok(o) => o,
        Err(lines) => return refused(inner, key, &revision, &lines.join("\n"), retry),
    };

    let apply_opts = ApplyOptions {
        inventory: Some((cluster.namespace.clone(), inventory_name(key))),
        prune: sync.spec.prune,
        retry_for: at.timeout.min(Duration::from_secs(30)),
        ..Default::default()
    };
    // Namespaces, then the credentials in them, then everything.
    let namespaces: Vec<Value> = objects.iter().filter(|o| o["kind"] == "Namespace").cloned().collect();
    let mut failures = Vec::new();
    match cluster.apply(namespaces, &ApplyOptions { inventory: None, ..apply_opts.clone() }).await {
        Ok(r) => failures.extend(r.failures().map(|(r, f)| format!("{r}: {f}"))),
        Err(e) => return fail(reason::APPLY_FAILED, format!("revision '{revision}' was not applied: {e}")),
    }
    for (r, o) in cluster
        .create_missing(&capstan_kubernetes::render::credentials(
            &resources,
            capstan_kubernetes::render::random_password,
        ))
        .await
    {
        if let Applied::Failed(f) = o {
            failures.push(format!("{r}: {f}"));
        }
    }
    let report = match cluster.apply(objects, &apply_opts).await {
        Ok(r) => r,
        Err(e) => return fail(reason::APPLY_FAILED, format!("revision '{revision}' was not applied: {e}")),
    };
    failures.extend(report.failures().map(|(r, f)| format!("{r}: {f}")));
    let mut summary = Vec::new();
    for (r, o) in report.applied.iter().chain(&report.pruned) {
        if matches!(o, Applied::Created | Applied::Configured | Applied::Deleted) {
            summary.push(format!("{r} {o}"));
        }
    }
    if !summary.is_empty() {
        inner.event(key, EventType::Normal, "Progressing", &format!("revision '{revision}': {}", summary.join(", ")));
    }
    status.inventory = report
        .applied
        .iter()
        .filter(|(r, o)| {
            !matches!(o, Applied::Failed(_))
                && r.name != capstan_kubernetes::cluster::inventory_configmap(&inventory_name(key))
        })
        .map(|(r, _)| entry(r))
        .collect();
    if !failures.is_empty() {
        let pruned = if report.prune_skipped { "; nothing was pruned" } else { "" };
        let msg = format!("revision '{revision}' was applied in part{pruned}: {}", failures.join("; "));
        inner.event(key, EventType::Warning, reason::APPLY_FAILED, &msg);
        return fail(reason::APPLY_FAILED, msg);
    }
    let w = Waiting { revision, deadline: Instant::now() + at.timeout, started: at.started };
    health(inner, key, &cluster, sync, status, w, at).await
}

/// Health from the cluster: every applied object with `wait`, else the named health checks.
async fn health(
    inner: &Arc<Inner>,
    key: &ObjectKey,
    cluster: &Cluster,
    sync: &Sync,
    status: &mut SyncStatus,
    w: Waiting,
    at: &Attempt,
) -> Outcome {
    let refs: Vec<ObjectRef> = if sync.spec.wait {
        status.inventory.iter().filter_map(|e| ObjectRef::for_kind(&e.kind, &e.namespace, &e.name)).collect()
    } else {
        let ns = sync.metadata.namespace();
        let checks = sync.spec.health_checks.iter();
        checks.filter_map(|h| ObjectRef::for_kind(&h.kind, h.namespace.as_deref().unwrap_or(ns), &h.name)).collect()
    };
    let unready: Vec<String> = cluster
        .health_of(&refs)
        .await
        .into_iter()
        .filter_map(|(r, h)| match h {
            Health::Ready => None,
            Health::Progressing(why) | Health::Failed(why) => Some(format!("{r}: {why}")),
        })
        .collect();
    health_outcome(inner, key, status, w, at, unready)
}

/// A deleted Sync with `prune` deletes what it applied to the cluster (never what holds data).
pub(super) async fn finalize_kubernetes(inner: &Inner, key: &ObjectKey, sync: &Sync) {
    if !sync.spec.prune {
        return;
    }
    let cluster = match connect(inner, sync).await {
        Ok(c) => c,
        Err(e) => {
            tracing::warn!(sync = %key, "cannot prune after the Sync was deleted: {e}");
            return;
        }
    };
    let opts = ApplyOptions { inventory: Some((cluster.namespace.clone(), inventory_name(key))), ..Default::default() };
    match cluster.apply(Vec::new(), &opts).await {
        Ok(r) => {
            for (r, f) in r.failures() {
                tracing::warn!(object = %r, "deleting after Sync {key} was deleted: {f}");
            }
        }
        Err(e) => tracing::warn!(sync = %key, "cannot prune after the Sync was deleted: {e}"),
    }
}
