//! The App controller, a reconciler on the shared runner: woken by its Apps and the runtime, it plans each App and
//! carries out the plan.

use std::sync::Arc;
use std::time::Duration;

use crate::runtime::StartError;
use capstan_model::{
    revision_of, App, AppStatus, EventType, Kind, ObjectKey, Resource, DATABASE_CREDENTIALS_ANNOTATION,
    RESTARTED_AT_ANNOTATION,
};
use capstan_store::{Store, StoreError};
use chrono::Utc;
use serde_json::{json, Value};
use tokio::sync::mpsc;

use crate::plan::{hold_replicas, plan_app, Action};
use crate::runtime::{AppRuntime, ObservedReplica};

/// How often every App is looked at even when nothing was reported.
pub const RESYNC: Duration = Duration::from_secs(30);

/// Told what was observed of each App before it is planned (the load balancer follows replicas this way).
pub trait ReconcileObserver: Send + Sync + 'static {
    /// Returns warnings for the App's status and the endpoints it is reachable at.
    fn observed(&self, key: &ObjectKey, app: Option<&App>, replicas: &[ObservedReplica]) -> ObserverReport;
}

/// What an observer reports back.
#[derive(Debug, Clone, Default)]
pub struct ObserverReport {
    pub warnings: Vec<String>,
    pub endpoints: Vec<String>,
}

/// Runs the App controller over a store and a runtime.
pub struct Controller<R: AppRuntime> {
    store: Store,
    runtime: Arc<R>,
    observer: Option<Arc<dyn ReconcileObserver>>,
}

/// The store key prefix of an App's revision history.
pub fn revision_prefix(key: &ObjectKey) -> String {
    format!("revision/{}/{}/", key.namespace, key.name)
}

/// One remembered revision of an App.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct RevisionRecord {
    pub revision: String,
    pub spec: Value,
    #[serde(default)]
    pub restarted_at: Option<String>,
    /// The digest of the `databaseRef` credentials the revision was made with.
    #[serde(default)]
    pub database_credentials: Option<String>,
    /// What made this revision, as `kubectl rollout history` shows the change-cause: the App's
    /// `kubernetes.io/change-cause` annotation when set, else what changed from the revision before.
    #[serde(default)]
    pub cause: Option<String>,
    pub created_at: chrono::DateTime<Utc>,
    pub generation: Option<i64>,
}

/// The annotation kubectl's `--record` set, read as the cause of a revision when present.
pub const CHANGE_CAUSE_ANNOTATION: &str = "kubernetes.io/change-cause";

/// Why `app` is a new revision after `before`: the change-cause annotation, a restart, new database credentials,
/// or the spec fields that changed (their paths only: values may be secrets).
pub fn change_cause(app: &App, before: Option<&RevisionRecord>) -> String {
    if let Some(c) = app.metadata.annotations.get(CHANGE_CAUSE_ANNOTATION).filter(|c| !c.is_empty()) {
        return c.clone();
    }
    let Some(before) = before else { return "created".into() };
    let mut causes = Vec::new();
    if app.metadata.annotations.get(RESTARTED_AT_ANNOTATION) != before.restarted_at.as_ref() {
        causes.push("restart".to_string());
    }
    if app.metadata.annotations.get(DATABASE_CREDENTIALS_ANNOTATION) != before.database_credentials.as_ref() {
        causes.push("new database credentials".to_string());
    }
    let now = serde_json::to_value(&app.spec).unwrap_or_default();
    let mut paths: Vec<String> = crate::diff::diff_values(&before.spec, &now)
        .into_iter()
        .map(|c| c.path)
        .filter(|p| {
            !["replicas", "expose", "update", "metrics"].iter().any(|x| p == x || p.starts_with(&format!("{x}.")))
        })
        .collect();
    paths.dedup();
    if !paths.is_empty() {
        let shown: Vec<&str> = paths.iter().take(3).map(String::as_str).collect();
        let more = if paths.len() > 3 { format!(" and {} more", paths.len() - 3) } else { String::new() };
        causes.push(format!("changed {}{more}", shown.join(", ")));
    }
    if causes.is_empty() {
        "changed".into()
    } else {
        causes.join("; ")
    }
}

/// The revisions remembered for an App, oldest first. A read that fails is an error, never "no history" (which
/// would rewrite a revision's cause, start nothing at a remembered revision, or answer a rollback wrongly).
pub fn revision_history(store: &Store, key: &ObjectKey) -> Result<Vec<RevisionRecord>, StoreError> {
    let mut out: Vec<RevisionRecord> =
        store.records(&revision_prefix(key))?.into_iter().filter_map(|(_, v)| serde_json::from_value(v).ok()).collect();
    out.sort_by_key(|r| r.created_at);
    Ok(out)
}

impl<R: AppRuntime> Controller<R> {
    pub fn new(store: Store, runtime: Arc<R>) -> Self {
        Controller { store, runtime, observer: None }
    }

    /// Adds an observer told about every App before it is planned.
    pub fn with_observer(mut self, observer: Arc<dyn ReconcileObserver>) -> Self {
        self.observer = Some(observer);
        self
    }

    /// Starts the controller on the shared runner. `notify` carries the keys of Apps the runtime saw change.
    /// Stopping the handle stops the loop; replicas keep running (see `AppRuntime::shutdown`).
    pub fn spawn(self, notify: mpsc::UnboundedReceiver<ObjectKey>) -> crate::runner::Handle {
        let store = self.store.clone();
        // One App at a time: the runtime picks free ports by looking, so two starts at once could pick the same.
        crate::runner::run_with_requests(store, Arc::new(self), 1, notify)
    }

    /// The Apps whose `databaseRef` credentials are the Secret `secret`.
    fn apps_reading_credentials(&self, secret: &ObjectKey) -> Vec<ObjectKey> {
        let Ok(apps) = self.store.list(Kind::App.name(), Some(&secret.namespace)) else {
            // The resync comes back to every App.
            return Vec::new();
        };
        apps.iter()
            .filter(|a| {
                a["spec"]["databaseRef"]["name"]
                    .as_str()
                    .is_some_and(|db| capstan_model::database::credentials_secret(db) == secret.name)
            })
            .filter_map(|a| capstan_store::key_of(a).ok())
            .collect()
    }

    fn event(&self, key: &ObjectKey, type_: EventType, reason: &str, message: &str) {
        if let Err(e) = self.store.record_event(key, type_, reason, message) {
            tracing::warn!(app = %key, "recording event: {e}");
        }
    }

    /// Remembers the App's revision and forgets the oldest beyond the limit (never one in use).
    fn remember_revision(
        &self,
        key: &ObjectKey,
        app: &App,
        status: &AppStatus,
        observed: &[ObservedReplica],
    ) -> Result<(), StoreError> {
        let rev = revision_of(app);
        let prefix = revision_prefix(key);
        let history = revision_history(&self.store, key)?;
        if !history.iter().any(|r| r.revision == rev) {
            // Compared with the revision running (the newest remembered when none runs yet).
            let running = status.current_revision.as_ref().and_then(|c| history.iter().find(|r| &r.revision == c));
            let cause = change_cause(app, running.or(history.last()));
            let record = json!({
                "cause": cause,
                "revision": rev,
                "spec": serde_json::to_value(&app.spec).unwrap_or_default(),
                "restartedAt": app.metadata.annotations.get(RESTARTED_AT_ANNOTATION),
                "databaseCredentials": app.metadata.annotations.get(DATABASE_CREDENTIALS_ANNOTATION),
                "createdAt": Utc::now(),
                "generation": app.metadata.generation,
            });
            if let Err(e) = self.store.put_record(&format!("{prefix}{rev}"), &record) {
                tracing::warn!(app = %key, "saving revision {rev}: {e}");
            }
        }
        let limit = app.spec.update.revision_history_limit.max(1) as usize + 1;
        let history = revision_history(&self.store, key)?;
        if history.len() > limit {
            let in_use = |r: &str| {
                r == rev
                    || status.current_revision.as_deref() == Some(r)
                    || status.update_revision.as_deref() == Some(r)
                    || observed.iter().any(|o| o.revision == r)
            };
            let excess = history.len() - limit;
            for old in history.iter().filter(|r| !in_use(&r.revision)).take(excess) {
                let _ = self.store.delete_record(&format!("{prefix}{}", old.revision));
            }
        }
        Ok(())
    }

    /// The App as it was at `revision`, from the history (the App itself when it is that revision).
    fn app_at(&self, key: &ObjectKey, app: &App, revision: &str) -> Result<Option<App>, StoreError> {
        if revision_of(app) == revision {
            return Ok(Some(app.clone()));
        }
        let Some(rec) = revision_history(&self.store, key)?.into_iter().find(|r| r.revision == revision) else {
            return Ok(None);
        };
        let mut old = app.clone();
        let Ok(spec) = serde_json::from_value(rec.spec) else { return Ok(None) };
        old.spec = spec;
        match rec.restarted_at {
            Some(t) => old.metadata.annotations.insert(RESTARTED_AT_ANNOTATION.into(), t),
            None => old.metadata.annotations.remove(RESTARTED_AT_ANNOTATION),
        };
        match rec.database_credentials {
            Some(d) => old.metadata.annotations.insert(DATABASE_CREDENTIALS_ANNOTATION.into(), d),
            None => old.metadata.annotations.remove(DATABASE_CREDENTIALS_ANNOTATION),
        };
        Ok(Some(old))
    }

    /// The grace period of a replica whose App is gone: the one of the revision it runs, as remembered (30 s, as
    /// Kubernetes' default, only when that revision is not remembered).
    fn deleted_grace(&self, key: &ObjectKey, observed: &[ObservedReplica], ordinal: u32) -> Result<u32, StoreError> {
        let Some(rev) = observed.iter().find(|r| r.ordinal == ordinal).map(|r| r.revision.as_str()) else {
            return Ok(30);
        };
        Ok(revision_history(&self.store, key)?
            .into_iter()
            .find(|h| h.revision == rev)
            .and_then(|h| h.spec.get("terminationGracePeriodSeconds").and_then(Value::as_u64))
            .map_or(30, |g| g.min(u64::from(u32::MAX)) as u32))
    }

    /// The App with the digest of its `databaseRef` credentials set (in memory only) as part of its revision, so
    /// that new credentials or a new endpoint roll the App out. While the credentials are gone (the Database is being
    /// created again) the digest of the revision that runs is kept: nothing rolls until new ones exist.
    fn with_credentials(&self, key: &ObjectKey, mut app: App) -> Result<App, StoreError> {
        app.metadata.annotations.remove(DATABASE_CREDENTIALS_ANNOTATION);
        let Some(r) = &app.spec.database_ref else { return Ok(app) };
        let secret = ObjectKey::new("Secret", &key.namespace, capstan_model::database::credentials_secret(&r.name));
        // A Secret that does not decode is left to the runtime, which says so when it starts a replica.
        let url = self
            .store
            .get(&secret)?
            .and_then(|v| serde_json::from_value::<capstan_model::Secret>(v).ok())
            .and_then(|s| s.spec.value("url"));
        let digest = match url {
            Some(url) => Some(capstan_model::hash_value(&Value::String(String::from_utf8_lossy(&url).into_owned()))),
            None => {
                // The digest of the revision replicas move to (or run), else the newest remembered: a rollout under
                // way goes on as it was, and nothing flips to a revision without credentials.
                let st = app.status.as_ref();
                let history = revision_history(&self.store, key)?;
                let of = |rev: Option<&String>| {
                    rev.and_then(|r| history.iter().find(|h| &h.revision == r))
                        .and_then(|h| h.database_credentials.clone())
                };
                of(st.and_then(|s| s.update_revision.as_ref()))
                    .or_else(|| of(st.and_then(|s| s.current_revision.as_ref())))
                    .or_else(|| history.iter().rev().find_map(|h| h.database_credentials.clone()))
            }
        };
        if let Some(d) = digest {
            app.metadata.annotations.insert(DATABASE_CREDENTIALS_ANNOTATION.into(), d);
        }
        Ok(app)
    }

    /// Reconciles one App; returns when to look again.
    fn reconcile_app(&self, key: &ObjectKey) -> Result<Option<Duration>, StoreError> {
        let stored = self.store.get(key)?;
        let app: Option<App> = match stored.map(Resource::from_value) {
            Some(Ok(Resource::App(a))) => Some(a),
            Some(Ok(other)) => {
                tracing::error!(app = %key, "stored object is a {}, not an App", other.kind());
                return Ok(None);
            }
            Some(Err(e)) => {
                tracing::error!(app = %key, "stored object does not decode: {e}");
                return Ok(None);
            }
            None => None,
        };
        let app = match app {
            Some(a) => Some(self.with_credentials(key, a)?),
            None => None,
        };
        let observed = self.runtime.observe(key);
        let report = self.observer.as_ref().map(|o| o.observed(key, app.as_ref(), &observed)).unwrap_or_default();
        if app.is_none() && observed.is_empty() {
            // The App and all its replicas are gone: so is its history, or a new App of the same name would inherit it.
            for (k, _) in self.store.records(&revision_prefix(key))? {
                self.store.delete_record(&k)?;
            }
            self.runtime.release(key);
            return Ok(None);
        }
        let previous: Option<AppStatus> = app.as_ref().and_then(|a| a.status.clone());
        let mut warnings = app.as_ref().map(|a| self.runtime.warnings(a)).unwrap_or_default();
        warnings.extend(report.warnings);
        let held = held_ordinals(&self.store, key)?;
        let plan =
            hold_replicas(plan_app(app.as_ref(), &observed, previous.as_ref(), warnings, Utc::now()), &key.name, &held);
        if let (Some(app), Some(status)) = (&app, &plan.status) {
            self.remember_revision(key, app, status, &observed)?;
            let (before, after) = (previous.as_ref().and_then(|p| p.rollout.as_ref()), status.rollout.as_ref());
            if let Some(r) = after.filter(|r| before.is_none_or(|b| b.phase != r.phase || b.revision != r.revision)) {
                let type_ = match r.phase {
                    capstan_model::RolloutPhase::Failed | capstan_model::RolloutPhase::RolledBack => EventType::Warning,
                    _ => EventType::Normal,
                };
                self.event(key, type_, &format!("Rollout{:?}", r.phase), &r.message);
            }
        }
        for action in &plan.actions {
            match action {
                Action::Start { ordinal, revision, count_restart } => {
                    let Some(app) = &app else { continue };
                    let name = format!("{}-{ordinal}", key.name);
                    let Some(at) = self.app_at(key, app, revision)? else {
                        self.event(
                            key,
                            EventType::Warning,
                            "RevisionMissing",
                            &format!("revision {revision} is no longer remembered; {name} cannot start at it"),
                        );
                        continue;
                    };
                    match self.runtime.start(&at, *ordinal, revision, *count_restart) {
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
                        Err(StartError::Waiting(msg)) => {
                            self.event(key, EventType::Normal, "Waiting", &format!("replica {name}: {msg}"))
                        }
                        Err(StartError::Failed(msg)) => {
                            self.event(key, EventType::Warning, "StartFailed", &format!("replica {name}: {msg}"))
                        }
                    }
                }
                Action::Stop { ordinal, reason, forget } => {
                    let grace = match &app {
                        Some(a) => a.spec.termination_grace_period_seconds,
                        None => self.deleted_grace(key, &observed, *ordinal)?,
                    };
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
        if let Some(mut status) = plan.status {
            status.endpoints = report.endpoints;
            if let Some(app) = &app {
                status.volumes = self.runtime.volumes(app);
                status.warnings.extend(volume_warnings(app, &status.volumes));
            }
            let value = serde_json::to_value(&status).unwrap_or_default();
            self.store.update_status(key, value)?;
        }
        Ok(plan.requeue_after)
    }
}

/// The record that keeps replica `ordinal` of an App stopped (a volume sync writes it, and removes it when done).
pub fn hold_record(key: &ObjectKey, ordinal: u32) -> String {
    format!("hold/{}/{}/{ordinal}", key.namespace, key.name)
}

/// Ordinals of an App held stopped; a read error is an error (a hold must not be lost to one).
fn held_ordinals(store: &Store, key: &ObjectKey) -> Result<std::collections::BTreeSet<u32>, StoreError> {
    let prefix = format!("hold/{}/{}/", key.namespace, key.name);
    Ok(store.records(&prefix)?.into_iter().filter_map(|(k, _)| k.strip_prefix(&prefix)?.parse().ok()).collect())
}

impl<R: AppRuntime> crate::runner::Reconciler for Controller<R> {
    fn kind(&self) -> &'static str {
        Kind::App.name()
    }

    /// Every change of an App: its annotations (a restart) count as well as its spec; a status written unchanged
    /// makes no event.
    fn wants(&self, _ev: &capstan_store::WatchEvent) -> bool {
        true
    }

    /// The Apps reading a Secret's database credentials.
    fn triggers(&self, ev: &capstan_store::WatchEvent) -> Vec<ObjectKey> {
        match ev.key.kind == Kind::Secret.name() {
            true => self.apps_reading_credentials(&ev.key),
            false => Vec::new(),
        }
    }

    /// Apps whose replicas still run although the App is gone.
    fn known(&self) -> Vec<ObjectKey> {
        self.runtime.known_apps()
    }

    /// A deleted App's replicas are stopped, with their grace period, over the looks that follow.
    fn reconcile_when_gone(&self) -> bool {
        true
    }

    fn reconcile(&self, key: &ObjectKey) -> Result<crate::runner::Action, crate::runner::ReconcileError> {
        Ok(match self.reconcile_app(key)? {
            Some(after) => crate::runner::Action::Requeue(after),
            None => crate::runner::Action::AwaitChange,
        })
    }

    fn resync(&self) -> Option<Duration> {
        Some(RESYNC)
    }
}

/// Volumes holding more than the size their manifest asks for (enforced on Kubernetes, not on this machine).
fn volume_warnings(app: &App, volumes: &[capstan_model::VolumeStatus]) -> Vec<String> {
    volumes
        .iter()
        .filter_map(|v| {
            let spec = app.spec.volumes.iter().find(|s| s.name == v.name)?;
            let limit = capstan_model::quantity::parse_bytes(spec.size.as_deref()?).ok()?;
            (v.used_bytes > limit).then(|| {
                format!(
                    "volume {} holds {} bytes, more than its size {}",
                    v.name,
                    v.used_bytes,
                    spec.size.as_deref().unwrap_or("")
                )
            })
        })
        .collect()
}

/// A condition observed now, as controllers write them.
pub fn condition_now(
    type_: &str,
    status: capstan_model::ConditionStatus,
    reason: &str,
    message: impl Into<String>,
    generation: Option<i64>,
) -> capstan_model::Condition {
    capstan_model::Condition {
        type_: type_.into(),
        status,
        reason: reason.into(),
        message: message.into(),
        last_transition_time: Utc::now(),
        observed_generation: generation,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn app(env: &str, annotations: &[(&str, &str)]) -> App {
        let mut a: App = serde_json::from_value(json!({
            "apiVersion": "capstan.dev/v1alpha1", "kind": "App", "metadata": {"name": "web"},
            "spec": {"run": {"command": ["srv"], "env": {"V": env}}}
        }))
        .expect("app");
        for (k, v) in annotations {
            a.metadata.annotations.insert((*k).into(), (*v).into());
        }
        a
    }

    fn record(a: &App) -> RevisionRecord {
        RevisionRecord {
            revision: revision_of(a),
            spec: serde_json::to_value(&a.spec).expect("spec"),
            restarted_at: a.metadata.annotations.get(RESTARTED_AT_ANNOTATION).cloned(),
            database_credentials: a.metadata.annotations.get(DATABASE_CREDENTIALS_ANNOTATION).cloned(),
            cause: None,
            created_at: Utc::now(),
            generation: Some(1),
        }
    }

    /// Issue 20, polish: `rollout history` says what made each revision.
    #[test]
    fn a_revision_says_what_made_it() {
        let v1 = app("1", &[]);
        assert_eq!(change_cause(&v1, None), "created");
        assert_eq!(change_cause(&app("2", &[]), Some(&record(&v1))), "changed run.env.V");
        let restarted = app("1", &[(RESTARTED_AT_ANNOTATION, "2026-12-06T10:00:00Z")]);
        assert_eq!(change_cause(&restarted, Some(&record(&v1))), "restart");
        let creds = app("1", &[(DATABASE_CREDENTIALS_ANNOTATION, "abc")]);
        assert_eq!(change_cause(&creds, Some(&record(&v1))), "new database credentials");
        let told = app("3", &[(CHANGE_CAUSE_ANNOTATION, "bump to 3 for INC-42")]);
        assert_eq!(change_cause(&told, Some(&record(&v1))), "bump to 3 for INC-42");
    }
}
