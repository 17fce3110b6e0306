//! The controller of a kind that owns Apps (TrainingJobs, ModelServers): one [`Reconciler`] on the shared runner,
//! woken by its own objects and by the Apps labelled with their names.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use capstan_model::ObjectKey;
use capstan_store::{Store, StoreError, WatchEvent};
use serde_json::Value;

use crate::runner::{self, Action, Handle, ReconcileError, Reconciler};

/// The controller of a kind that owns Apps (TrainingJobs, ModelServers), run by the shared runner: it reconciles an
/// object when its spec changes (not on its own status writes), when an App labelled `label` with its name changes,
/// when the time the last reconcile asked for comes, and every 30 s; `on_delete` runs when one is deleted.
pub struct Owner {
    pub store: Store,
    pub data_dir: PathBuf,
    pub kind: &'static str,
    pub label: &'static str,
    pub reconcile: fn(&Store, &Path, &ObjectKey) -> Result<Option<Duration>, StoreError>,
    pub on_delete: fn(&Store, &Path, &ObjectKey, &Value),
}

impl Owner {
    /// Starts it.
    pub fn run(self) -> Handle {
        runner::run(self.store.clone(), Arc::new(self), 4)
    }
}

impl Reconciler for Owner {
    fn kind(&self) -> &'static str {
        self.kind
    }

    fn triggers(&self, ev: &WatchEvent) -> Vec<ObjectKey> {
        match ev.object["metadata"]["labels"][self.label].as_str() {
            Some(owner) if ev.key.kind == "App" => vec![ObjectKey::new(self.kind, &ev.key.namespace, owner)],
            _ => Vec::new(),
        }
    }

    fn reconcile(&self, key: &ObjectKey) -> Result<Action, ReconcileError> {
        Ok(match (self.reconcile)(&self.store, &self.data_dir, key)? {
            Some(after) => Action::Requeue(after),
            None => Action::AwaitChange,
        })
    }

    fn finalize(&self, key: &ObjectKey, last: &Value) {
        (self.on_delete)(&self.store, &self.data_dir, key, last)
    }
}

/// Decodes a stored object; one whose status no longer decodes (written by an older Capstan, say) is taken without
/// it, so the reconcile rebuilds the status instead of stopping for good.
pub fn decode_owner<T: serde::de::DeserializeOwned>(mut v: Value) -> Option<T> {
    match serde_json::from_value(v.clone()) {
        Ok(t) => Some(t),
        Err(e) => {
            tracing::warn!("{}/{}: status unreadable ({e}); rebuilding it", v["kind"], v["metadata"]["name"]);
            v["status"] = Value::Null;
            serde_json::from_value(v).ok()
        }
    }
}
