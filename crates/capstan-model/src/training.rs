//! The `TrainingJob` kind: a distributed TensorFlow training run (chief, workers, parameter servers, evaluator),
//! with Kubeflow TFJob's semantics, and `TF_CONFIG` as TensorFlow reads it.

use std::collections::BTreeMap;

use chrono::{DateTime, Utc};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};

use crate::app::RunSpec;
use crate::meta::Condition;
use crate::validate::FieldError;

/// The kinds of task in a TensorFlow cluster, in TF_CONFIG's order.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize, JsonSchema)]
pub enum ReplicaType {
    Chief,
    Worker,
    PS,
    Evaluator,
}

impl ReplicaType {
    pub const ALL: [ReplicaType; 4] =
        [ReplicaType::Chief, ReplicaType::Worker, ReplicaType::PS, ReplicaType::Evaluator];

    /// The lower-case job name TensorFlow uses in TF_CONFIG and TFJob in names (`chief`, `worker`, `ps`,
    /// `evaluator`).
    pub fn job_name(self) -> &'static str {
        match self {
            ReplicaType::Chief => "chief",
            ReplicaType::Worker => "worker",
            ReplicaType::PS => "ps",
            ReplicaType::Evaluator => "evaluator",
        }
    }
}

/// Label on every App a TrainingJob runs: the job's name.
pub const TASK_JOB_LABEL: &str = "capstan.dev/training-job";
/// Label on a task's App: its replica type (`chief`, `worker`, `ps`, `evaluator`).
pub const TASK_TYPE_LABEL: &str = "training.capstan.dev/replica-type";
/// Label on a task's App: its index within its type.
pub const TASK_INDEX_LABEL: &str = "training.capstan.dev/replica-index";

/// The labels of the App that runs a task, also how a finished task (whose App is gone) is found by selector.
pub fn task_labels(job: &str, type_: ReplicaType, index: u32) -> BTreeMap<String, String> {
    BTreeMap::from([
        (TASK_JOB_LABEL.to_string(), job.to_string()),
        (TASK_TYPE_LABEL.to_string(), type_.job_name().to_string()),
        (TASK_INDEX_LABEL.to_string(), index.to_string()),
    ])
}

/// When a task whose process ended is started again (TFJob's restartPolicy).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub enum TaskRestartPolicy {
    /// A failure fails the job.
    #[default]
    Never,
    /// Restarted after a failure; counts against `backoffLimit`.
    OnFailure,
    /// Restarted whenever it ends before the job does; counts against `backoffLimit`.
    Always,
    /// Exit codes 1–127 are permanent (the job fails); 128 and above (killed by a signal: 137 is SIGKILL) are
    /// retried.
    ExitCode,
}

/// One type of task.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ReplicaSpec {
    /// How many tasks of this type; at most 1 for Chief and Evaluator.
    #[serde(default = "one")]
    pub replicas: u32,
    #[serde(default)]
    pub restart_policy: TaskRestartPolicy,
    /// The program, as in an App.
    pub run: RunSpec,
    /// Seconds between SIGTERM and SIGKILL when a task is stopped. Defaults to 30.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub termination_grace_period_seconds: Option<u64>,
}

fn one() -> u32 {
    1
}

/// Limits and clean-up for the whole run.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct RunPolicy {
    /// Restarts allowed in all before the job fails. Defaults to 6, as Kubernetes Jobs.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub backoff_limit: Option<u32>,
    /// The job fails when it has run this long.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub active_deadline_seconds: Option<u64>,
    /// The finished job (and its tasks) is deleted this long after it finished.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ttl_seconds_after_finished: Option<u64>,
    /// Which tasks are stopped when the job finishes.
    #[serde(default)]
    pub clean_policy: CleanPolicy,
}

/// Which tasks are removed when the job finishes (TFJob's cleanPodPolicy).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub enum CleanPolicy {
    /// Tasks still running (parameter servers, usually) are stopped; finished ones stay for their logs.
    #[default]
    Running,
    /// Every task's App is deleted (logs stay on disk).
    All,
    /// Nothing is stopped.
    None,
}

/// When the job counts as succeeded.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub enum SuccessPolicy {
    /// The chief succeeded; without a chief, worker 0.
    #[default]
    Default,
    /// Every worker succeeded.
    AllWorkers,
}

/// What a retryable failure restarts.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub enum RestartScope {
    /// Every task, together: what MultiWorkerMirroredStrategy needs (its collectives cannot lose a member).
    #[default]
    Group,
    /// Only the task that ended: what ParameterServerStrategy tolerates for workers.
    Task,
}

/// A distributed training run.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct TrainingJobSpec {
    /// The task types: `Chief`, `Worker`, `PS`, `Evaluator`.
    pub replica_specs: BTreeMap<ReplicaType, ReplicaSpec>,
    #[serde(default)]
    pub run_policy: RunPolicy,
    #[serde(default)]
    pub success_policy: SuccessPolicy,
    #[serde(default)]
    pub restart_scope: RestartScope,
}

/// Counts of one task type, as TFJob reports them.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ReplicaCounts {
    pub active: u32,
    pub succeeded: u32,
    pub failed: u32,
}

/// What Capstan observed of one task.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct TaskStatus {
    /// `<job>-<type>-<index>`, also the name of the App that runs it.
    pub name: String,
    #[serde(rename = "type")]
    pub type_: ReplicaType,
    pub index: u32,
    /// Its address in TF_CONFIG.
    pub address: String,
    /// Pending, Running, Succeeded or Failed.
    pub phase: String,
    #[serde(default)]
    pub restarts: u32,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub exit_code: Option<i32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
}

/// What Capstan observed of a TrainingJob.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct TrainingJobStatus {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
    /// Created, Running, Restarting, Succeeded, Failed.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub conditions: Vec<Condition>,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub replica_statuses: BTreeMap<ReplicaType, ReplicaCounts>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub tasks: Vec<TaskStatus>,
    /// Restarts in all, of single tasks or of the group; compared with `backoffLimit`.
    #[serde(default)]
    pub restarts: u32,
    /// Group restarts: every task's environment carries it as `CAPSTAN_TRAINING_ATTEMPT`.
    #[serde(default)]
    pub attempt: u32,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub start_time: Option<DateTime<Utc>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub completion_time: Option<DateTime<Utc>>,
    /// The directory every task gets as `TRAINING_DIR`: checkpoints, BackupAndRestore state, exported models.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub training_dir: Option<String>,
}

/// The name of a task and of the App that runs it: `<job>-<type>-<index>`, as TFJob names its pods.
pub fn task_name(job: &str, t: ReplicaType, index: u32) -> String {
    format!("{job}-{}-{index}", t.job_name())
}

/// `TF_CONFIG` for one task, as TensorFlow reads it and TFJob writes it: every task sees the same cluster (lower-case
/// job names, addresses in index order), `task` names this one, and `environment` is `cloud`. `addresses` holds
/// each type's addresses in index order. A job of a single task gets none (`None`), as with TFJob.
pub fn tf_config(addresses: &BTreeMap<ReplicaType, Vec<String>>, t: ReplicaType, index: u32) -> Option<Value> {
    let total: usize = addresses.values().map(Vec::len).sum();
    if total <= 1 {
        return None;
    }
    let mut cluster = serde_json::Map::new();
    for rt in ReplicaType::ALL {
        if let Some(a) = addresses.get(&rt).filter(|a| !a.is_empty()) {
            cluster.insert(rt.job_name().into(), json!(a));
        }
    }
    Some(json!({"cluster": cluster, "task": {"type": t.job_name(), "index": index}, "environment": "cloud"}))
}

fn err(path: impl Into<String>, message: impl Into<String>, hint: &str) -> FieldError {
    FieldError::new(path, message).hint(hint)
}

/// Checks a TrainingJob beyond its types.
pub fn validate_training_job(name: &str, spec: &TrainingJobSpec, errors: &mut Vec<FieldError>) {
    // The longest task name, `<name>-evaluator-<n>`, must stay a DNS label.
    let longest = spec
        .replica_specs
        .iter()
        .map(|(t, r)| task_name(name, *t, r.replicas.saturating_sub(1)).len())
        .max()
        .unwrap_or(0);
    if longest > 63 {
        errors.push(err(
            "metadata.name",
            format!(
                "task names such as {:?} would be longer than 63 characters",
                task_name(name, ReplicaType::Evaluator, 0)
            ),
            "use a shorter name",
        ));
    }
    if spec.replica_specs.values().all(|r| r.replicas == 0) {
        errors.push(err("spec.replicaSpecs", "no task to run", "give Worker (or Chief) at least one replica"));
    }
    for (t, r) in &spec.replica_specs {
        let path = format!("spec.replicaSpecs.{t:?}");
        if matches!(t, ReplicaType::Chief | ReplicaType::Evaluator) && r.replicas > 1 {
            errors.push(err(
                format!("{path}.replicas"),
                format!("{} must be 0 or 1, not {}", t.job_name(), r.replicas),
                "TensorFlow allows at most one chief and one evaluator",
            ));
        }
        if r.run.command.is_empty() {
            errors.push(err(format!("{path}.run.command"), "is empty", "name the program to run"));
        }
        for k in r.run.env.keys() {
            if k == "TF_CONFIG" || k == "TRAINING_DIR" || k.starts_with("CAPSTAN_") {
                errors.push(err(
                    format!("{path}.run.env.{k}"),
                    "is set by Capstan",
                    "remove it; every task gets TF_CONFIG and TRAINING_DIR",
                ));
            }
        }
    }
    if spec.success_policy == SuccessPolicy::AllWorkers
        && spec.replica_specs.get(&ReplicaType::Worker).is_none_or(|w| w.replicas == 0)
    {
        errors.push(err("spec.successPolicy", "AllWorkers needs workers", "add Worker replicas or use Default"));
    }
    if spec.success_policy == SuccessPolicy::Default
        && spec.replica_specs.get(&ReplicaType::Chief).is_none_or(|c| c.replicas == 0)
        && spec.replica_specs.get(&ReplicaType::Worker).is_none_or(|w| w.replicas == 0)
    {
        errors.push(err(
            "spec.replicaSpecs",
            "neither a chief nor a worker: nothing decides when the job has succeeded",
            "add a Chief or a Worker",
        ));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn addrs(w: usize, ps: usize, chief: bool) -> BTreeMap<ReplicaType, Vec<String>> {
        let mut m = BTreeMap::new();
        let mut port = 2222;
        let mut take = |n: usize| -> Vec<String> {
            (0..n)
                .map(|_| {
                    port += 1;
                    format!("127.0.0.1:{port}")
                })
                .collect()
        };
        if chief {
            m.insert(ReplicaType::Chief, take(1));
        }
        m.insert(ReplicaType::Worker, take(w));
        m.insert(ReplicaType::PS, take(ps));
        m
    }

    #[test]
    fn tf_config_matches_what_tensorflow_and_tfjob_expect() {
        let a = addrs(2, 1, true);
        let c = tf_config(&a, ReplicaType::Worker, 1).expect("multi-task");
        assert_eq!(
            c,
            json!({
                "cluster": {"chief": ["127.0.0.1:2223"], "worker": ["127.0.0.1:2224", "127.0.0.1:2225"], "ps": ["127.0.0.1:2226"]},
                "task": {"type": "worker", "index": 1},
                "environment": "cloud"
            })
        );
        // Every task sees the same cluster; only `task` differs.
        let p = tf_config(&a, ReplicaType::PS, 0).expect("ps");
        assert_eq!(p["cluster"], c["cluster"]);
        assert_eq!(p["task"], json!({"type": "ps", "index": 0}));
        // Empty types are left out; a single task gets no TF_CONFIG.
        let solo = addrs(2, 0, false);
        assert!(tf_config(&solo, ReplicaType::Worker, 0).expect("two workers")["cluster"].get("ps").is_none());
        assert_eq!(tf_config(&addrs(1, 0, false), ReplicaType::Worker, 0), None);
    }

    #[test]
    fn names_follow_tfjob() {
        assert_eq!(task_name("mnist", ReplicaType::PS, 0), "mnist-ps-0");
        assert_eq!(task_name("mnist", ReplicaType::Worker, 3), "mnist-worker-3");
    }
}
