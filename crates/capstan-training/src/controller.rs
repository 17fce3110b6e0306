//! The TrainingJob controller: gives every task an address, runs each task as an App (`<job>-<type>-<i>`, so
//! supervision, logs and stops are the App's) with its `TF_CONFIG`, feeds what the tasks did to the pure plan
//! (`capstan_engine::training`), and applies the plan: restarts, clean-up, status, deletion after the TTL.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::time::Duration;

use capstan_engine::owner::{decode_owner, Owner};
use capstan_engine::runner::Handle;
use capstan_engine::training::{plan_training, tasks_of, TaskObserved, TaskRun};
use capstan_model::training::{tf_config, ReplicaType, TaskStatus};
use capstan_model::{ObjectKey, ReplicaStatus, TrainingJob, API_VERSION, BASE_DIR_ANNOTATION};
use capstan_store::{Store, StoreError};
use serde_json::{json, Value};

/// Label on the Apps a TrainingJob owns.
pub const JOB_LABEL: &str = capstan_model::training::TASK_JOB_LABEL;
/// The group-restart counter in every task's environment.
pub const ATTEMPT_ENV: &str = "CAPSTAN_TRAINING_ATTEMPT";
/// The task's own restart counter in its environment.
pub const RESTART_ENV: &str = "CAPSTAN_TRAINING_RESTART";

/// Starts the TrainingJob controller; `data_dir` is Capstan's data directory.
pub fn spawn(store: Store, data_dir: PathBuf) -> Handle {
    let on_delete = |s: &Store, data_dir: &Path, k: &ObjectKey, last: &Value| {
        delete_tasks(s, &k.namespace, &k.name);
        // The tasks' logs were kept for the job's life (`capstan logs -l capstan.dev/training-job=NAME`).
        for t in last["status"]["tasks"].as_array().into_iter().flatten() {
            // Only a task's own directory: `<job>-…`, a DNS-1123 name (no `/`, no `.`), whatever the status says.
            let prefix = format!("{}-", k.name);
            let valid = |n: &&str| {
                n.starts_with(&prefix) && n.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
            };
            let Some(name) = t["name"].as_str().filter(valid) else { continue };
            let dir = data_dir.join("logs").join(&k.namespace).join(name);
            if let Err(e) = std::fs::remove_dir_all(&dir) {
                if e.kind() != std::io::ErrorKind::NotFound {
                    tracing::warn!(job = %k, "removing the logs of task {name}: {e}");
                }
            }
        }
    };
    Owner { store, data_dir, kind: "TrainingJob", label: JOB_LABEL, reconcile, on_delete }.run()
}

fn free_port() -> Option<u16> {
    std::net::TcpListener::bind("127.0.0.1:0").ok()?.local_addr().ok().map(|a| a.port())
}

/// Where a job's tasks share files: `<data>/training/<namespace>/<job>`.
pub fn training_dir(data_dir: &Path, key: &ObjectKey) -> PathBuf {
    data_dir.join("training").join(&key.namespace).join(&key.name)
}

/// What the App running a task shows: whether it runs the planned restart, and how it is doing.
fn observe(app: &Value, attempt: u32, restarts: u32) -> TaskObserved {
    let env = &app["spec"]["run"]["env"];
    let replica: Option<ReplicaStatus> =
        app["status"]["replicaStatuses"].get(0).and_then(|r| serde_json::from_value(r.clone()).ok());
    // Environment values are strings.
    let is = |k: &str, n: u32| env[k].as_str().and_then(|v| v.parse::<u32>().ok()) == Some(n);
    let planned = is(ATTEMPT_ENV, attempt) && is(RESTART_ENV, restarts);
    let seen = app["status"]["observedGeneration"] == app["metadata"]["generation"];
    match replica {
        Some(r) if planned && seen && Some(r.revision.as_str()) == app["status"]["revision"].as_str() => {
            TaskObserved { current: true, phase: r.phase, last_exit: r.last_exit }
        }
        _ => TaskObserved { current: false, phase: capstan_model::ReplicaPhase::Pending, last_exit: None },
    }
}

fn reconcile(store: &Store, data_dir: &Path, key: &ObjectKey) -> Result<Option<Duration>, StoreError> {
    // A read that fails is an error for the runner's backoff, never "the job is gone".
    let Some(stored) = store.get(key)? else { return Ok(None) };
    let Some(mut job) = decode_owner::<TrainingJob>(stored) else { return Ok(None) };
    let dir = training_dir(data_dir, key);
    if let Err(e) = std::fs::create_dir_all(&dir) {
        let _ = store.record_event(
            key,
            capstan_model::EventType::Warning,
            "TrainingDir",
            &format!("{}: {e}", dir.display()),
        );
        return Ok(Some(Duration::from_secs(5)));
    }

    // Every task gets an address before any starts: TF_CONFIG lists them all, and they are kept for the job's life.
    let mut status = job.status.clone().unwrap_or_default();
    for (name, t, i) in tasks_of(&job) {
        if !status.tasks.iter().any(|x| x.name == name) {
            let Some(port) = free_port() else {
                let _ = store.record_event(
                    key,
                    capstan_model::EventType::Warning,
                    "PortAllocation",
                    "no free port on 127.0.0.1",
                );
                return Ok(Some(Duration::from_secs(5)));
            };
            status.tasks.push(TaskStatus {
                name,
                type_: t,
                index: i,
                address: format!("127.0.0.1:{port}"),
                phase: "Pending".into(),
                restarts: 0,
                exit_code: None,
                message: None,
            });
        }
    }
    status.training_dir = Some(dir.display().to_string());
    let addresses: BTreeMap<String, String> =
        status.tasks.iter().map(|t| (t.name.clone(), t.address.clone())).collect();
    let restarts: BTreeMap<String, u32> = status.tasks.iter().map(|t| (t.name.clone(), t.restarts)).collect();
    let attempt = status.attempt;
    job.status = Some(status);

    let mut observed = BTreeMap::new();
    for (name, _, _) in tasks_of(&job) {
        // A task whose App cannot be read is not a missing task (that would start it again): wait for the store.
        if let Some(app) = store.get(&ObjectKey::new("App", &key.namespace, &name))? {
            observed.insert(name.clone(), observe(&app, attempt, restarts.get(&name).copied().unwrap_or(0)));
        }
    }
    let plan = plan_training(&job, &observed, chrono::Utc::now());

    // Status first: it is the record the tasks' environments are derived from.
    let _ = store.update_status(key, serde_json::to_value(&plan.status).unwrap_or(Value::Null));
    for (kind, reason, message) in &plan.events {
        let _ = store.record_event(key, *kind, reason, message);
    }
    if plan.delete_job {
        delete_tasks(store, &key.namespace, &key.name);
        let _ = store.delete(key);
        return Ok(None);
    }
    for name in plan.delete.iter().chain(&plan.retire) {
        let _ = store.delete(&ObjectKey::new("App", &key.namespace, name));
    }
    // Tasks the spec no longer has (fewer replicas, a type removed) lose their Apps.
    let wanted: BTreeSet<String> = tasks_of(&job).into_iter().map(|(n, _, _)| n).collect();
    for app in store.list("App", Some(&key.namespace)).unwrap_or_default() {
        let name = app["metadata"]["name"].as_str().unwrap_or_default();
        if app["metadata"]["labels"][JOB_LABEL] == key.name.as_str() && !wanted.contains(name) {
            let _ = store.delete(&ObjectKey::new("App", &key.namespace, name));
        }
    }
    let mut by_type: BTreeMap<ReplicaType, Vec<String>> = BTreeMap::new();
    for (name, t, _) in tasks_of(&job) {
        by_type.entry(t).or_default().push(addresses.get(&name).cloned().unwrap_or_default());
    }
    let apps: Vec<Value> = plan.run.iter().filter_map(|r| task_app(&job, r, &by_type, &addresses, &dir)).collect();
    if !apps.is_empty() {
        if let Err(e) = store.apply(apps) {
            let _ = store.record_event(key, capstan_model::EventType::Warning, "TaskApps", &e.to_string());
            return Ok(Some(Duration::from_secs(2)));
        }
    }
    Ok(plan.requeue_after)
}

/// The App that runs one task.
fn task_app(
    job: &TrainingJob,
    r: &TaskRun,
    by_type: &BTreeMap<ReplicaType, Vec<String>>,
    addresses: &BTreeMap<String, String>,
    dir: &Path,
) -> Option<Value> {
    let spec = job.spec.replica_specs.get(&r.type_)?;
    let port: u16 = addresses.get(&r.name)?.rsplit(':').next()?.parse().ok()?;
    let mut run = serde_json::to_value(&spec.run).ok()?;
    let mut env = spec.run.env.clone();
    if let Some(c) = tf_config(by_type, r.type_, r.index) {
        env.insert("TF_CONFIG".into(), c.to_string());
    }
    env.insert("TRAINING_DIR".into(), dir.display().to_string());
    env.insert("CAPSTAN_TRAINING_JOB".into(), job.metadata.name.clone());
    env.insert(ATTEMPT_ENV.into(), r.attempt.to_string());
    env.insert(RESTART_ENV.into(), r.restarts.to_string());
    run["env"] = json!(env);
    let mut annotations = serde_json::Map::new();
    if let Some(b) = job.metadata.base_dir() {
        annotations.insert(BASE_DIR_ANNOTATION.into(), json!(b));
    }
    let mut labels = capstan_model::training::task_labels(&job.metadata.name, r.type_, r.index);
    labels.insert("app.kubernetes.io/component".into(), "training".into());
    Some(json!({
        "apiVersion": API_VERSION, "kind": "App",
        "metadata": {
            "name": r.name, "namespace": job.metadata.namespace(),
            "labels": labels,
            "annotations": annotations,
        },
        "spec": {
            "replicas": 1,
            "run": run,
            "restartPolicy": "Never",
            "ports": [{"name": "tf", "port": port}],
            "terminationGracePeriodSeconds": spec.termination_grace_period_seconds.unwrap_or(30),
        }
    }))
}

/// Deletes every App a job owns.
fn delete_tasks(store: &Store, namespace: &str, job: &str) {
    let apps = match store.list("App", Some(namespace)) {
        Ok(a) => a,
        Err(e) => {
            // Left for a person to delete (`capstan delete app -l …`); nothing is deleted on a guess.
            tracing::error!(job, "listing the task Apps of a deleted job: {e}; they are left running");
            return;
        }
    };
    for app in apps {
        if app["metadata"]["labels"][JOB_LABEL] == job {
            if let Ok(k) = capstan_store::key_of(&app) {
                let _ = store.delete(&k);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_unreadable_status_is_dropped_not_fatal() {
        let job = json!({
            "apiVersion": API_VERSION, "kind": "TrainingJob",
            "metadata": {"name": "j", "namespace": "default"},
            "spec": {"replicaSpecs": {"Worker": {"replicas": 1, "run": {"command": ["true"]}}}},
            "status": {"restarts": "not a number"}
        });
        let decoded: TrainingJob = decode_owner(job).expect("decoded without its status");
        assert!(decoded.status.is_none());
        assert_eq!(decoded.spec.replica_specs.len(), 1);
        let broken = json!({"kind": "TrainingJob", "spec": 3});
        assert!(decode_owner::<TrainingJob>(broken).is_none(), "a broken spec is still refused");
    }
}
