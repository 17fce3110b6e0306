//! Syncs with `target: embedded`: the revision admitted and applied to Capstan's own store, drift put back, prune.

use super::*;

/// Capstan's own store, with the link to the revision its objects run from.
pub(super) struct Embedded {
    link: PathBuf,
}

impl Target for Embedded {
    async fn connect(inner: &Inner, key: &ObjectKey, _sync: &Sync) -> Result<Self, TargetError> {
        Ok(Embedded { link: inner.applied_link(key) })
    }

    fn base_dir(&self) -> Option<PathBuf> {
        Some(self.link.clone())
    }

    /// The plan against what is stored, applied in one write; drift on the revision it runs is put back and said.
    async fn apply(
        &self,
        inner: &Inner,
        key: &ObjectKey,
        sync: &Sync,
        artifact: &Artifact,
        manifests: &[capstan_model::Manifest],
        status: &SyncStatus,
        at: &Attempt,
    ) -> Result<Applied, Outcome> {
        let retry = at.retry;
        let fail = failed(retry);
        let revision = &artifact.revision;
        let link = &self.link;
        let mut desired: Vec<Value> = manifests.iter().map(|m| m.resource.to_value()).collect();
        for v in &mut desired {
            mark_owned(v, key);
        }

        // Admission, with the link already on the new revision (relative programs are looked up there); put back
        // when the revision is refused.
        let previous_target = match swap_link(link, Path::new(&artifact.path)) {
            Ok(old) => old,
            Err(e) => return Err(fail(reason::APPLY_FAILED, format!("cannot link {}: {e}", link.display()))),
        };
        if let Err(errors) = inner.admit.admit(&desired) {
            if let Some(old) = previous_target {
                let _ = swap_link(link, &old);
            }
            return Err(refused(inner, key, revision, &diag_for(manifests, errors).to_string(), retry));
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
                        let _ = swap_link(link, &old);
                    }
                    return Err(fail(reason::APPLY_FAILED, format!("reading {k}: {e}; nothing was applied")));
                }
            }
        }
        let plan = plan_sync(key, &desired, &live, &status.inventory, sync.spec.prune);
        let drift = status.last_applied_revision.as_deref() == Some(revision.as_str());
        let writes = plan.writes();
        if !writes.is_empty() {
            if let Err(e) = inner.store.apply(writes) {
                return Err(fail(reason::APPLY_FAILED, format!("applying revision '{revision}': {e}")));
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
        let failure = if prune_errors.is_empty() {
            None
        } else {
            Some((fail(reason::PRUNE_FAILED, format!("pruning failed: {}", prune_errors.join("; "))), false))
        };
        Ok(Applied { summary, inventory: plan.inventory, failure })
    }

    async fn unready(&self, inner: &Inner, objects: &[ObjectKey]) -> Vec<String> {
        objects.iter().filter_map(|t| not_ready(&inner.store, t).map(|why| format!("{t}: {why}"))).collect()
    }

    async fn prune_all(&self, inner: &Inner, key: &ObjectKey, sync: &Sync) {
        let _ = std::fs::remove_file(&self.link);
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
}

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
