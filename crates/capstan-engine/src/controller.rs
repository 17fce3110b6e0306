//! The App controller loop: watches the store and the runtime, plans each App and carries out the plan.

use std::sync::Arc;
use std::time::Duration;

use capstan_model::{App, AppStatus, EventType, Kind, ObjectKey, Resource};
use capstan_store::Store;
use chrono::Utc;
use tokio::sync::{mpsc, watch};
use tokio::task::JoinHandle;
use tokio::time::Instant;

use crate::plan::{plan_app, Action};
use crate::queue::WorkQueue;
use crate::runtime::AppRuntime;

/// How often every App is looked at even when nothing was reported.
pub const RESYNC: Duration = Duration::from_secs(30);

/// Runs the App controller over a store and a runtime.
pub struct Controller<R: AppRuntime> {
    store: Store,
    runtime: Arc<R>,
}

/// A running controller: stop it with `stop`.
pub struct ControllerHandle {
    stop: watch::Sender<bool>,
    task: JoinHandle<()>,
}

impl ControllerHandle {
    /// Stops the loop (replicas keep running; see `AppRuntime::shutdown`).
    pub async fn stop(self) {
        let _ = self.stop.send(true);
        let _ = self.task.await;
    }
}

impl<R: AppRuntime> Controller<R> {
    pub fn new(store: Store, runtime: Arc<R>) -> Self {
        Controller { store, runtime }
    }

    /// Starts the loop. `notify` carries the keys of Apps the runtime saw change.
    pub fn spawn(self, notify: mpsc::UnboundedReceiver<ObjectKey>) -> ControllerHandle {
        let (stop, stop_rx) = watch::channel(false);
        let task = tokio::spawn(self.run(notify, stop_rx));
        ControllerHandle { stop, task }
    }

    fn all_keys(&self) -> Vec<ObjectKey> {
        let mut keys: Vec<ObjectKey> = match self.store.list(Kind::App.name(), None) {
            Ok(objs) => objs.iter().filter_map(|o| capstan_store::key_of(o).ok()).collect(),
            Err(e) => {
                tracing::error!("listing Apps: {e}");
                Vec::new()
            }
        };
        keys.extend(self.runtime.known_apps());
        keys.sort();
        keys.dedup();
        keys
    }

    async fn run(self, mut notify: mpsc::UnboundedReceiver<ObjectKey>, mut stop: watch::Receiver<bool>) {
        let mut queue = WorkQueue::default();
        let mut watch = self.store.watch();
        for k in self.all_keys() {
            queue.add(k);
        }
        let mut next_resync = Instant::now() + RESYNC;
        let mut failures: std::collections::HashMap<ObjectKey, u32> = Default::default();
        loop {
            let wake = queue.next_due().unwrap_or(next_resync).min(next_resync);
            tokio::select! {
                _ = stop.changed() => break,
                ev = watch.recv() => match ev {
                    Ok(ev) if ev.key.kind == Kind::App.name() => queue.add(ev.key),
                    Ok(_) => {}
                    Err(tokio::sync::broadcast::error::RecvError::Lagged(_)) => {
                        for k in self.all_keys() { queue.add(k); }
                    }
                    Err(tokio::sync::broadcast::error::RecvError::Closed) => break,
                },
                key = notify.recv() => match key {
                    Some(k) => queue.add(k),
                    None => break,
                },
                _ = tokio::time::sleep_until(wake) => {}
            }
            let now = Instant::now();
            if now >= next_resync {
                for k in self.all_keys() {
                    queue.add(k);
                }
                next_resync = now + RESYNC;
            }
            for key in queue.pop_due(now) {
                match self.reconcile(&key) {
                    Ok(Some(after)) => {
                        failures.remove(&key);
                        queue.add_at(key, now + after);
                    }
                    Ok(None) => {
                        failures.remove(&key);
                    }
                    Err(e) => {
                        let n = failures.entry(key.clone()).or_insert(0);
                        *n += 1;
                        let delay = Duration::from_millis(200u64.saturating_mul(1 << (*n).min(8)));
                        tracing::warn!(app = %key, "reconcile failed (retry in {delay:?}): {e}");
                        queue.add_at(key, now + delay);
                    }
                }
            }
        }
    }

    fn event(&self, key: &ObjectKey, type_: EventType, reason: &str, message: &str) {
        if let Err(e) = self.store.record_event(key, type_, reason, message) {
            tracing::warn!(app = %key, "recording event: {e}");
        }
    }

    /// Reconciles one App; returns when to look again.
    fn reconcile(&self, key: &ObjectKey) -> Result<Option<Duration>, capstan_store::StoreError> {
        let stored = self.store.get(key)?;
        let app: Option<App> = match stored.map(Resource::from_value) {
            Some(Ok(Resource::App(a))) => Some(a),
            Some(Err(e)) => {
                tracing::error!(app = %key, "stored object does not decode: {e}");
                return Ok(None);
            }
            None => None,
        };
        let observed = self.runtime.observe(key);
        if app.is_none() && observed.is_empty() {
            return Ok(None);
        }
        let previous: Option<AppStatus> = app.as_ref().and_then(|a| a.status.clone());
        let warnings = app.as_ref().map(|a| self.runtime.warnings(a)).unwrap_or_default();
        let plan = plan_app(app.as_ref(), &observed, previous.as_ref(), warnings, Utc::now());
        for action in &plan.actions {
            match action {
                Action::Start { ordinal, count_restart } => {
                    let Some(app) = &app else { continue };
                    let revision = plan.status.as_ref().map(|s| s.revision.clone()).unwrap_or_default();
                    let name = format!("{}-{ordinal}", key.name);
                    match self.runtime.start(app, *ordinal, &revision, *count_restart) {
                        Ok(()) => {
                            let (reason, verb) =
                                if *count_restart { ("Restarted", "restarted") } else { ("Started", "started") };
                            self.event(
                                key,
                                EventType::Normal,
                                reason,
                                &format!("replica {name} {verb} at revision {revision}"),
                            );
                        }
                        Err(msg) => {
                            self.event(key, EventType::Warning, "StartFailed", &format!("replica {name}: {msg}"));
                        }
                    }
                }
                Action::Stop { ordinal, reason, forget } => {
                    let grace = app.as_ref().map(|a| a.spec.termination_grace_period_seconds).unwrap_or(30);
                    self.runtime.stop(key, *ordinal, Duration::from_secs(u64::from(grace)), *forget);
                    if app.is_some() {
                        self.event(
                            key,
                            EventType::Normal,
                            "Killing",
                            &format!("stopping replica {}-{ordinal}: {}", key.name, reason.describe()),
                        );
                    }
                }
            }
        }
        if let Some(status) = plan.status {
            let value = serde_json::to_value(&status).unwrap_or_default();
            self.store.update_status(key, value)?;
        }
        Ok(plan.requeue_after)
    }
}
