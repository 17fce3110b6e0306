//! Syncs with `target: kubernetes`: the revision's manifests rendered as Kubernetes objects and applied to the
//! cluster with server-side apply, an inventory per Sync in the cluster, prune, and health read off the cluster.

use capstan_kubernetes::cluster::{ApplyOptions, Cluster, Outcome as ObjectOutcome};
use capstan_kubernetes::plan::{Health, ObjectRef};
use capstan_model::gitops::InventoryEntry;

use super::*;

/// The inventory's name in the cluster: one per Sync.
fn inventory_name(key: &ObjectKey) -> String {
    format!("{}-{}", key.namespace, key.name)
}

fn entry(r: &ObjectRef) -> InventoryEntry {
    InventoryEntry { kind: r.kind.clone(), namespace: r.namespace.clone(), name: r.name.clone() }
}

/// The cluster a Sync names.
pub(super) struct Kubernetes(Cluster);

impl Target for Kubernetes {
    /// Its kubeConfig Secret, or Capstan's own kubeconfig.
    async fn connect(inner: &Inner, _key: &ObjectKey, sync: &Sync) -> Result<Self, TargetError> {
        let Some(kc) = &sync.spec.kube_config else {
            return Ok(Kubernetes(Cluster::connect(None, None).await?));
        };
        let secret = ObjectKey::new("Secret", sync.metadata.namespace(), &kc.secret_ref.name);
        // A read that fails is said as such, never as "does not exist".
        let stored = inner
            .store
            .get(&secret)
            .map_err(|e| TargetError::Unreadable { secret: secret.clone(), source: Box::new(e) })?;
        let Some(s) = stored.and_then(typed::<Secret>) else { return Err(TargetError::MissingSecret { secret }) };
        let Some(text) = s.spec.value(&kc.secret_ref.key) else {
            return Err(TargetError::MissingKey { secret, key: kc.secret_ref.key.clone() });
        };
        let text = String::from_utf8(text).map_err(|_| TargetError::NotUtf8 { secret })?;
        Ok(Kubernetes(Cluster::from_kubeconfig_text(&text, kc.context.as_deref()).await?))
    }

    fn base_dir(&self) -> Option<PathBuf> {
        None
    }

    /// Namespaces, then the credentials in them, then everything, pruning through the Sync's inventory in the
    /// cluster; what fails part-way fails the revision, and is said in a Warning event.
    async fn apply(
        &self,
        inner: &Inner,
        key: &ObjectKey,
        sync: &Sync,
        artifact: &Artifact,
        manifests: &[capstan_model::Manifest],
        _status: &SyncStatus,
        at: &Attempt,
    ) -> Result<Applied, Outcome> {
        let cluster = &self.0;
        let retry = at.retry;
        let fail = failed(retry);
        let revision = &artifact.revision;
        let resources: Vec<capstan_model::Resource> = manifests.iter().map(|m| m.resource.clone()).collect();
        let render = capstan_kubernetes::render::RenderOptions { entry_points: sync.spec.entry_points.clone() };
        let objects = match capstan_kubernetes::render::render_manifests(manifests, &render) {
            Ok(o) => o,
            Err(lines) => return Err(refused(inner, key, revision, &lines.join("\n"), retry)),
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
            Err(e) => return Err(fail(reason::APPLY_FAILED, format!("revision '{revision}' was not applied: {e}"))),
        }
        for (r, o) in cluster
            .create_missing(&capstan_kubernetes::render::credentials(
                &resources,
                capstan_kubernetes::render::random_password,
            ))
            .await
        {
            if let ObjectOutcome::Failed(f) = o {
                failures.push(format!("{r}: {f}"));
            }
        }
        let report = match cluster.apply(objects, &apply_opts).await {
            Ok(r) => r,
            Err(e) => return Err(fail(reason::APPLY_FAILED, format!("revision '{revision}' was not applied: {e}"))),
        };
        failures.extend(report.failures().map(|(r, f)| format!("{r}: {f}")));
        let mut summary = Vec::new();
        for (r, o) in report.applied.iter().chain(&report.pruned) {
            if matches!(o, ObjectOutcome::Created | ObjectOutcome::Configured | ObjectOutcome::Deleted) {
                summary.push(format!("{r} {o}"));
            }
        }
        let inventory = report
            .applied
            .iter()
            .filter(|(r, o)| {
                !matches!(o, ObjectOutcome::Failed(_))
                    && r.name != capstan_kubernetes::cluster::inventory_configmap(&inventory_name(key))
            })
            .map(|(r, _)| entry(r))
            .collect();
        let failure = if failures.is_empty() {
            None
        } else {
            let pruned = if report.prune_skipped { "; nothing was pruned" } else { "" };
            let msg = format!("revision '{revision}' was applied in part{pruned}: {}", failures.join("; "));
            Some((fail(reason::APPLY_FAILED, msg), true))
        };
        Ok(Applied { summary, inventory, failure })
    }

    async fn unready(&self, _inner: &Inner, objects: &[ObjectKey]) -> Vec<String> {
        let refs: Vec<ObjectRef> =
            objects.iter().filter_map(|o| ObjectRef::for_kind(&o.kind, &o.namespace, &o.name)).collect();
        self.0
            .health_of(&refs)
            .await
            .into_iter()
            .filter_map(|(r, h)| match h {
                Health::Ready => None,
                Health::Progressing(why) | Health::Failed(why) => Some(format!("{r}: {why}")),
            })
            .collect()
    }

    async fn prune_all(&self, _inner: &Inner, key: &ObjectKey, _sync: &Sync) {
        let cluster = &self.0;
        let inventory = Some((cluster.namespace.clone(), inventory_name(key)));
        let opts = ApplyOptions { inventory, ..Default::default() };
        match cluster.apply(Vec::new(), &opts).await {
            Ok(r) => {
                for (r, f) in r.failures() {
                    tracing::warn!(object = %r, "deleting after Sync {key} was deleted: {f}");
                }
            }
            Err(e) => tracing::warn!(sync = %key, "cannot prune after the Sync was deleted: {e}"),
        }
    }
}
