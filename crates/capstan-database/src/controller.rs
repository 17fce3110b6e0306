//! The Database controller: prepares the data directory and credentials, keeps an App running the server (so
//! supervision, probes, restarts, logs and graceful stops are the App's), mirrors its readiness, and on deletion
//! keeps or removes the data as `deletionPolicy` says.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use capstan_engine::controller::condition_now as cond;
use capstan_engine::runner::{self, Action, Handle, ReconcileError, Reconciler};
use capstan_model::database::{credentials_secret, server_app, Database, DatabaseStatus};
use capstan_model::{
    find_condition, set_condition, Condition, ConditionStatus, EventType, ObjectKey, ReclaimPolicy, Secret,
    API_VERSION, BASE_DIR_ANNOTATION, READY, STALLED,
};
use capstan_store::{Store, WatchEvent};
use chrono::Utc;
use serde_json::{json, Value};

use crate::postgres::{find_bin_dir, init, own, run_as};

/// Label on the App and Secret a Database owns.
pub const DATABASE_LABEL: &str = "capstan.dev/database";

/// The Database controller, run by the shared runner: a Database is reconciled when its spec changes, when its
/// server App changes, and every 10 s (backups are due on a clock); its data is handled on deletion.
struct Databases {
    store: Store,
    data_dir: PathBuf,
}

impl Reconciler for Databases {
    fn kind(&self) -> &'static str {
        "Database"
    }

    fn triggers(&self, ev: &WatchEvent) -> Vec<ObjectKey> {
        match ev.object["metadata"]["labels"][DATABASE_LABEL].as_str() {
            Some(db) if ev.key.kind == "App" => vec![ObjectKey::new("Database", &ev.key.namespace, db)],
            _ => Vec::new(),
        }
    }

    fn reconcile(&self, key: &ObjectKey) -> Result<Action, ReconcileError> {
        reconcile(&self.store, &self.data_dir, key)?;
        Ok(Action::AwaitChange)
    }

    fn finalize(&self, key: &ObjectKey, last: &Value) {
        finalize(&self.store, &self.data_dir, key, last)
    }

    fn resync(&self) -> Option<Duration> {
        Some(Duration::from_secs(10))
    }
}

/// Starts the Database controller; `data_dir` is Capstan's data directory.
pub fn spawn(store: Store, data_dir: PathBuf) -> Handle {
    runner::run(store.clone(), Arc::new(Databases { store, data_dir }), 2)
}

fn base_dir(data_dir: &std::path::Path, key: &ObjectKey) -> PathBuf {
    data_dir.join("databases").join(&key.namespace).join(&key.name)
}

/// 18 random bytes in hex; an error when the system cannot give randomness (never a predictable password).
fn random_password() -> Result<String, getrandom::Error> {
    let mut b = [0u8; 18];
    getrandom::getrandom(&mut b)?;
    Ok(b.iter().map(|x| format!("{x:02x}")).collect())
}

fn free_port() -> Option<u16> {
    std::net::TcpListener::bind("127.0.0.1:0").ok()?.local_addr().ok().map(|a| a.port())
}

/// The server's user must reach its data: the data directory becomes traversable (0711) while everything else in it
/// stays private to Capstan's user.
fn open_path_for(data_dir: &std::path::Path) {
    use std::os::unix::fs::PermissionsExt;
    for e in std::fs::read_dir(data_dir).into_iter().flatten().flatten() {
        let name = e.file_name();
        if name == "databases" {
            continue;
        }
        let mode = if e.path().is_dir() { 0o700 } else { 0o600 };
        let _ = std::fs::set_permissions(e.path(), std::fs::Permissions::from_mode(mode));
    }
    for dir in [data_dir.to_path_buf(), data_dir.join("databases")] {
        let _ = std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o711));
    }
}

/// One look at a Database; a store that cannot be read is an error (retried with backoff by the runner).
fn reconcile(store: &Store, data_dir: &std::path::Path, key: &ObjectKey) -> Result<(), capstan_store::StoreError> {
    // A read that fails is an error, nothing done on a guess: the runner tries again after a backoff.
    let stored = store.get(key)?;
    let Some(db) = stored.and_then(|v| serde_json::from_value::<Database>(v).ok()) else {
        return Ok(());
    };
    let g = db.metadata.generation;
    let mut status: DatabaseStatus = db.status.clone().unwrap_or_default();
    status.observed_generation = g;
    let fail = |status: &mut DatabaseStatus, reason: &str, message: String, stalled: bool| {
        set_condition(&mut status.conditions, cond(READY, ConditionStatus::False, reason, message.clone(), g));
        if stalled {
            set_condition(&mut status.conditions, cond(STALLED, ConditionStatus::True, reason, message.clone(), g));
        }
        let _ = store.record_event(key, EventType::Warning, reason, &message);
    };
    match prepare(store, data_dir, key, &db, &mut status) {
        Err((reason, message, stalled)) => fail(&mut status, reason, message, stalled),
        Ok(()) => {
            status.conditions.retain(|c| c.type_ != STALLED);
            // Ready is the server App's readiness: pg_isready answering on its port.
            // Readiness unknown: the status stays as it was until the retry.
            let app = store.get(&ObjectKey::new("App", &key.namespace, server_app(&key.name)))?;
            let ready = app.as_ref().and_then(|a| {
                let conds: Vec<Condition> = serde_json::from_value(a["status"]["conditions"].clone()).ok()?;
                find_condition(&conds, READY).cloned()
            });
            let endpoint = status.endpoint.clone().unwrap_or_default();
            match ready {
                Some(c) if c.status == ConditionStatus::True => {
                    set_condition(
                        &mut status.conditions,
                        cond(
                            READY,
                            ConditionStatus::True,
                            "AcceptingConnections",
                            format!("accepting connections at {endpoint}"),
                            g,
                        ),
                    );
                    scheduled_backup(store, key, &db, &mut status);
                }
                Some(c) => {
                    set_condition(&mut status.conditions, cond(READY, ConditionStatus::False, "Starting", c.message, g))
                }
                None => set_condition(
                    &mut status.conditions,
                    cond(READY, ConditionStatus::False, "Starting", "the server is starting".to_string(), g),
                ),
            }
        }
    }
    let _ = store.update_status(key, serde_json::to_value(&status).unwrap_or(Value::Null));
    Ok(())
}

/// Takes a dump when `spec.backup` says one is due; the newest dump (scheduled or taken by hand) goes in status.
fn scheduled_backup(store: &Store, key: &ObjectKey, db: &Database, status: &mut DatabaseStatus) {
    let Ok(target) = crate::backup::target(store, key) else { return };
    status.last_backup = crate::backup::list(&target.dir).pop();
    let Some(spec) = &db.spec.backup else { return };
    let interval = capstan_model::parse_duration(&spec.interval).unwrap_or(Duration::from_secs(86_400));
    if !backup_due(status.last_backup.as_ref(), interval, Utc::now()) {
        return;
    }
    match crate::backup::dump(&target, &key.name, spec.keep) {
        Ok(b) => {
            let _ = store.record_event(key, EventType::Normal, "BackedUp", &format!("{} ({} bytes)", b.file, b.bytes));
            status.last_backup = Some(b);
        }
        Err(e) => {
            let _ = store.record_event(key, EventType::Warning, "BackupFailed", &e.to_string());
        }
    }
}

/// Whether a scheduled dump is due at `now`: none taken yet, or the newest is at least `interval` old (one from the
/// future — a clock set back — counts as just taken).
pub fn backup_due(
    last: Option<&capstan_model::database::BackupInfo>,
    interval: Duration,
    now: chrono::DateTime<Utc>,
) -> bool {
    last.is_none_or(|b| (now - b.taken_at).to_std().unwrap_or_default() >= interval)
}

type Refusal = (&'static str, String, bool);

fn prepare(
    store: &Store,
    data_dir: &std::path::Path,
    key: &ObjectKey,
    db: &Database,
    status: &mut DatabaseStatus,
) -> Result<(), Refusal> {
    let bin = find_bin_dir(db.spec.version).map_err(|e| ("PostgreSQLNotInstalled", e.to_string(), true))?;
    let who = run_as(db.spec.run_as.as_deref()).map_err(|e| ("RunAsUserMissing", e.to_string(), true))?;
    let base = base_dir(data_dir, key);
    let (pgdata, run) = (base.join("pgdata"), base.join("run"));
    for d in [&base, &pgdata, &run] {
        std::fs::create_dir_all(d).map_err(|e| ("DataDirectory", format!("{}: {e}", d.display()), true))?;
    }
    if who.name.is_some() {
        open_path_for(data_dir);
        let _ = own(&data_dir.join("databases").join(&key.namespace), &who, 0o711);
    }
    for (d, mode) in [(&base, 0o700), (&pgdata, 0o700), (&run, 0o700)] {
        own(d, &who, mode).map_err(|e| ("DataDirectory", e.to_string(), true))?;
    }

    // Credentials: created once and kept, so the password survives restarts and re-creation (under Retain).
    let user = db.spec.user_name();
    let database = db.spec.database_name(&key.name);
    let secret_key = ObjectKey::new("Secret", &key.namespace, credentials_secret(&key.name));
    // A Secret that cannot be read or decoded is not a missing one: new credentials would lock the Apps out.
    let existing: Option<Secret> = match store.get(&secret_key) {
        Ok(None) => None,
        Ok(Some(v)) => Some(serde_json::from_value(v).map_err(|e| {
            let msg =
                format!("Secret {} does not decode ({e}); fix it, or delete it for new credentials", secret_key.name);
            ("CredentialsUnreadable", msg, true)
        })?),
        Err(e) => {
            return Err(("StoreUnavailable", format!("reading Secret {}: {e}; tried again", secret_key.name), false))
        }
    };
    let value = |s: &Secret, k: &str| s.spec.value(k).map(|b| String::from_utf8_lossy(&b).into_owned());
    let password = match existing.as_ref().and_then(|s| value(s, "password")) {
        Some(p) => p,
        None => random_password().map_err(|e| ("Credentials", format!("cannot draw a password: {e}"), true))?,
    };
    let kept_port = existing.as_ref().and_then(|s| value(s, "port")).and_then(|p| p.parse::<u16>().ok());
    let port = db.spec.port.or(kept_port).or_else(free_port).ok_or((
        "PortAllocation",
        "no free port on 127.0.0.1".to_string(),
        false,
    ))?;
    let url = format!("postgres://{user}:{password}@127.0.0.1:{port}/{database}");
    let secret = json!({
        "apiVersion": API_VERSION, "kind": "Secret",
        "metadata": {"name": secret_key.name, "namespace": key.namespace, "labels": {DATABASE_LABEL: key.name}},
        "spec": {"stringData": {"username": user, "password": password, "database": database,
                                 "host": "127.0.0.1", "port": port.to_string(), "url": url}}
    });
    store.apply(vec![secret]).map_err(|e| ("Credentials", e.to_string(), false))?;

    if !pgdata.join("PG_VERSION").exists() {
        init(&bin, &pgdata, &run, &who, &user, &password, &database)
            .map_err(|e| ("InitFailed", e.to_string(), true))?;
        let _ = store.record_event(
            key,
            EventType::Normal,
            "Initialized",
            &format!("created the cluster in {} with database {database}", pgdata.display()),
        );
    }

    // The server, as an App: supervised, probed, restarted, stopped with SIGINT (PostgreSQL's fast shutdown).
    let mut command: Vec<String> = vec![
        bin.join("postgres").display().to_string(),
        "-D".into(),
        pgdata.display().to_string(),
        "-p".into(),
        port.to_string(),
        "-k".into(),
        run.display().to_string(),
        "-c".into(),
        "listen_addresses=127.0.0.1".into(),
    ];
    for (k, v) in &db.spec.parameters {
        command.push("-c".into());
        command.push(format!("{k}={v}"));
    }
    let mut run_spec =
        json!({"command": command, "stopSignal": "SIGINT", "env": {"PGDATA": pgdata.display().to_string()}});
    if let Some(name) = &who.name {
        run_spec["user"] = json!(name);
    }
    let app = json!({
        "apiVersion": API_VERSION, "kind": "App",
        "metadata": {"name": server_app(&key.name), "namespace": key.namespace,
                     "labels": {DATABASE_LABEL: key.name, "app.kubernetes.io/component": "database"},
                     "annotations": {BASE_DIR_ANNOTATION: base.display().to_string()}},
        "spec": {
            "replicas": 1,
            "run": run_spec,
            "ports": [{"name": "postgres", "port": port}],
            "probes": {"readiness": {"exec": {"command": [bin.join("pg_isready").display().to_string(),
                "-h", "127.0.0.1", "-p", port.to_string(), "-U", user, "-d", database]},
                "periodSeconds": 2, "timeoutSeconds": 2}},
            "terminationGracePeriodSeconds": 60,
            "volumes": [{"name": crate::backup::BACKUP_VOLUME, "scope": "shared", "env": "BACKUP_DIR"}]
        }
    });
    store.apply(vec![app]).map_err(|e| ("ServerApp", e.to_string(), false))?;
    status.endpoint = Some(format!("127.0.0.1:{port}"));
    status.secret_name = Some(secret_key.name.clone());
    status.app_name = Some(server_app(&key.name));
    status.data_directory = Some(pgdata.display().to_string());
    status.bin_directory = Some(bin.display().to_string());
    Ok(())
}

/// A deleted Database: its server App goes; its data and credentials stay unless `deletionPolicy: Delete`, and then
/// only once the server has stopped.
fn finalize(store: &Store, data_dir: &std::path::Path, key: &ObjectKey, object: &Value) {
    let _ = store.delete(&ObjectKey::new("App", &key.namespace, server_app(&key.name)));
    let Ok(db) = serde_json::from_value::<Database>(object.clone()) else { return };
    if db.spec.deletion_policy != ReclaimPolicy::Delete {
        tracing::info!(database = %key, "deleted; its data stays in {} (deletionPolicy Retain)", base_dir(data_dir, key).display());
        return;
    }
    let base = base_dir(data_dir, key);
    let deadline = std::time::Instant::now() + Duration::from_secs(90);
    while base.join("pgdata/postmaster.pid").exists() && std::time::Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(100));
    }
    if base.join("pgdata/postmaster.pid").exists() {
        tracing::warn!(database = %key, "the server did not stop; its data stays in {}", base.display());
        return;
    }
    let _ = std::fs::remove_dir_all(&base);
    let _ = store.delete(&ObjectKey::new("Secret", &key.namespace, credentials_secret(&key.name)));
    tracing::info!(database = %key, "deleted with its data (deletionPolicy Delete)");
}

#[cfg(test)]
mod tests {
    use super::*;

    fn taken(at: chrono::DateTime<Utc>) -> capstan_model::database::BackupInfo {
        serde_json::from_value(json!({"file": "db-1.dump", "bytes": 10, "takenAt": at})).expect("a BackupInfo")
    }

    #[test]
    fn a_backup_is_due_after_its_interval_at_the_time_given() {
        let t0 = chrono::DateTime::parse_from_rfc3339("2026-12-06T00:00:00Z").expect("time").with_timezone(&Utc);
        let hour = Duration::from_secs(3600);
        assert!(backup_due(None, hour, t0), "none yet: due at once");
        let last = taken(t0);
        assert!(!backup_due(Some(&last), hour, t0 + chrono::Duration::minutes(59)));
        assert!(backup_due(Some(&last), hour, t0 + chrono::Duration::minutes(60)));
        assert!(!backup_due(Some(&last), hour, t0 - chrono::Duration::minutes(5)), "a clock set back waits");
    }
}
