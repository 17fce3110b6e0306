//! The TrainingJob plan: from a job and what its tasks did, which tasks run (and in which restart), which are
//! cleaned up, and the status — TFJob's semantics as a pure function.

use std::collections::BTreeMap;
use std::time::Duration;

use capstan_model::training::{
    task_name, CleanPolicy, ReplicaCounts, ReplicaType, RestartScope, SuccessPolicy, TaskRestartPolicy, TaskStatus,
    TrainingJobStatus,
};
use capstan_model::{set_condition, Condition, ConditionStatus, EventType, ExitInfo, ReplicaPhase, TrainingJob};
use chrono::{DateTime, Utc};

/// Condition types, as TFJob's.
pub const CREATED: &str = "Created";
pub const RUNNING: &str = "Running";
pub const RESTARTING: &str = "Restarting";
pub const SUCCEEDED: &str = "Succeeded";
pub const FAILED: &str = "Failed";

/// Restarts allowed when `backoffLimit` is not set (as a Kubernetes Job).
pub const DEFAULT_BACKOFF_LIMIT: u32 = 6;

/// What the runtime says of one task's App.
#[derive(Debug, Clone, PartialEq)]
pub struct TaskObserved {
    /// Whether the App runs the task's latest restart (its spec carries the planned attempt and restart, and its
    /// replica runs that revision). Observations of an earlier run are not acted on.
    pub current: bool,
    pub phase: ReplicaPhase,
    pub last_exit: Option<ExitInfo>,
}

/// One task that should exist, with the counters its environment carries.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TaskRun {
    pub name: String,
    pub type_: ReplicaType,
    pub index: u32,
    /// The job's group restarts so far (`CAPSTAN_TRAINING_ATTEMPT`).
    pub attempt: u32,
    /// This task's own restarts (`CAPSTAN_TRAINING_RESTART`).
    pub restarts: u32,
}

/// The plan for one reconcile.
#[derive(Debug, Clone, PartialEq)]
pub struct TrainingPlan {
    /// Task Apps that should exist, created or updated.
    pub run: Vec<TaskRun>,
    /// Task Apps to delete.
    pub delete: Vec<String>,
    /// Task Apps of a finished job whose process has ended: nothing is left to run; the task's state stays in the
    /// job's status and its logs until the job is deleted.
    pub retire: Vec<String>,
    /// The job itself is past its TTL: delete it.
    pub delete_job: bool,
    pub status: TrainingJobStatus,
    pub events: Vec<(EventType, String, String)>,
    /// When to look again even if nothing happens (a deadline or a TTL).
    pub requeue_after: Option<Duration>,
}

fn condition(
    type_: &str,
    status: ConditionStatus,
    reason: &str,
    message: String,
    g: Option<i64>,
    now: DateTime<Utc>,
) -> Condition {
    Condition {
        type_: type_.into(),
        status,
        reason: reason.into(),
        message,
        last_transition_time: now,
        observed_generation: g,
    }
}

fn is_true(status: &TrainingJobStatus, t: &str) -> bool {
    status.conditions.iter().any(|c| c.type_ == t && c.status == ConditionStatus::True)
}

/// Every task of a job, in TF_CONFIG order: `(name, type, index)`.
pub fn tasks_of(job: &TrainingJob) -> Vec<(String, ReplicaType, u32)> {
    let mut out = Vec::new();
    for (t, r) in &job.spec.replica_specs {
        for i in 0..r.replicas {
            out.push((task_name(&job.metadata.name, *t, i), *t, i));
        }
    }
    out
}

/// The exit code TFJob's ExitCode policy judges: the code, or 128 + the signal.
pub fn exit_code(e: &ExitInfo) -> i32 {
    e.code.unwrap_or_else(|| 128 + e.signal.unwrap_or(0))
}

/// Plans one reconcile of `job`, given its tasks' observations (by task name) and the time.
pub fn plan_training(job: &TrainingJob, observed: &BTreeMap<String, TaskObserved>, now: DateTime<Utc>) -> TrainingPlan {
    let g = job.metadata.generation;
    let spec = &job.spec;
    let mut status = job.status.clone().unwrap_or_default();
    status.observed_generation = g;
    let mut events = Vec::new();
    let tasks = tasks_of(job);
    let prev: BTreeMap<String, TaskStatus> = status.tasks.iter().map(|t| (t.name.clone(), t.clone())).collect();
    let restarts_of = |name: &str| prev.get(name).map(|t| t.restarts).unwrap_or(0);

    if !is_true(&status, CREATED) {
        set_condition(
            &mut status.conditions,
            condition(CREATED, ConditionStatus::True, "TrainingJobCreated", format!("{} tasks", tasks.len()), g, now),
        );
        events.push((EventType::Normal, "Created".into(), format!("{} tasks", tasks.len())));
    }
    let start = *status.start_time.get_or_insert(now);

    // A finished job: clean up as the policy says, and delete it once its TTL has passed.
    let finished = is_true(&status, SUCCEEDED) || is_true(&status, FAILED);
    if finished {
        return finish(job, &tasks, observed, status, events, now, &prev);
    }

    // Observations of the current run, per task.
    let mut per_task: Vec<TaskStatus> = Vec::new();
    let mut ended: Vec<(String, ReplicaType, u32, Option<ExitInfo>, bool)> = Vec::new();
    for (name, t, i) in &tasks {
        let o = observed.get(name).filter(|o| o.current);
        let (phase, exit) = match o {
            None => ("Pending", None),
            Some(o) => match o.phase {
                ReplicaPhase::Running | ReplicaPhase::Terminating => ("Running", None),
                ReplicaPhase::Pending => ("Pending", None),
                ReplicaPhase::Succeeded => ("Succeeded", o.last_exit.clone()),
                ReplicaPhase::Failed => ("Failed", o.last_exit.clone()),
            },
        };
        if matches!(phase, "Succeeded" | "Failed") {
            ended.push((name.clone(), *t, *i, exit.clone(), phase == "Succeeded"));
        }
        per_task.push(TaskStatus {
            name: name.clone(),
            type_: *t,
            index: *i,
            address: prev.get(name).map(|p| p.address.clone()).unwrap_or_default(),
            phase: phase.into(),
            restarts: restarts_of(name),
            exit_code: exit.as_ref().map(exit_code),
            message: exit.as_ref().map(describe),
        });
    }

    // Success first: a chief (or worker 0) that finished well ends the job even if others are still running.
    let succeeded =
        |t: ReplicaType, i: u32| per_task.iter().any(|p| p.type_ == t && p.index == i && p.phase == "Succeeded");
    let has = |t: ReplicaType| spec.replica_specs.get(&t).is_some_and(|r| r.replicas > 0);
    let success = match spec.success_policy {
        SuccessPolicy::Default if has(ReplicaType::Chief) => succeeded(ReplicaType::Chief, 0),
        SuccessPolicy::Default => succeeded(ReplicaType::Worker, 0),
        SuccessPolicy::AllWorkers => {
            let n = spec.replica_specs.get(&ReplicaType::Worker).map(|w| w.replicas).unwrap_or(0);
            n > 0 && (0..n).all(|i| succeeded(ReplicaType::Worker, i))
        }
    };
    status.tasks = per_task;
    if success {
        let who = if spec.success_policy == SuccessPolicy::AllWorkers {
            "every worker"
        } else if has(ReplicaType::Chief) {
            "the chief"
        } else {
            "worker 0"
        };
        let msg = format!("{who} succeeded");
        mark_finished(&mut status, SUCCEEDED, "TrainingJobSucceeded", msg.clone(), g, now);
        events.push((EventType::Normal, "Succeeded".into(), msg));
        return finish(job, &tasks, observed, status, events, now, &prev);
    }

    // The deadline.
    if let Some(limit) = spec.run_policy.active_deadline_seconds {
        let ran = (now - start).to_std().unwrap_or_default();
        if ran >= Duration::from_secs(limit) {
            let msg = format!("ran for {}s, past activeDeadlineSeconds {limit}", ran.as_secs());
            mark_finished(&mut status, FAILED, "DeadlineExceeded", msg.clone(), g, now);
            events.push((EventType::Warning, "DeadlineExceeded".into(), msg));
            return finish(job, &tasks, observed, status, events, now, &prev);
        }
    }

    // Tasks that ended: permanent failures fail the job; the rest restart, within the backoff limit.
    let mut restart: Vec<String> = Vec::new();
    for (name, t, _, exit, ok) in &ended {
        let policy = spec.replica_specs.get(t).map(|r| r.restart_policy).unwrap_or_default();
        let code = exit.as_ref().map(exit_code).unwrap_or(1);
        let retry = match policy {
            TaskRestartPolicy::Never => false,
            TaskRestartPolicy::OnFailure => !ok,
            TaskRestartPolicy::Always => true,
            TaskRestartPolicy::ExitCode => !ok && code >= 128,
        };
        if retry {
            restart.push(name.clone());
        } else if !ok {
            let why = exit.as_ref().map(describe).unwrap_or_else(|| "could not start".into());
            let msg = format!("{name} {why}; restartPolicy {policy:?} does not retry it");
            mark_finished(&mut status, FAILED, "TaskFailed", msg.clone(), g, now);
            events.push((EventType::Warning, "TaskFailed".into(), msg));
            return finish(job, &tasks, observed, status, events, now, &prev);
        }
    }
    let limit = spec.run_policy.backoff_limit.unwrap_or(DEFAULT_BACKOFF_LIMIT);
    if !restart.is_empty() {
        if status.restarts >= limit {
            let msg = format!(
                "{} needs a restart but the job has restarted {} times (backoffLimit {limit})",
                restart.join(", "),
                status.restarts
            );
            mark_finished(&mut status, FAILED, "BackoffLimitExceeded", msg.clone(), g, now);
            events.push((EventType::Warning, "BackoffLimitExceeded".into(), msg));
            return finish(job, &tasks, observed, status, events, now, &prev);
        }
        status.restarts += 1;
        let msg = match spec.restart_scope {
            RestartScope::Group => {
                status.attempt += 1;
                format!("{} ended; restarting every task (attempt {})", restart.join(", "), status.attempt)
            }
            RestartScope::Task => {
                for t in status.tasks.iter_mut().filter(|t| restart.contains(&t.name)) {
                    t.restarts += 1;
                    t.phase = "Pending".into();
                }
                format!("restarting {}", restart.join(", "))
            }
        };
        if spec.restart_scope == RestartScope::Group {
            for t in status.tasks.iter_mut() {
                t.phase = "Pending".into();
            }
        }
        set_condition(
            &mut status.conditions,
            condition(RESTARTING, ConditionStatus::True, "TrainingJobRestarting", msg.clone(), g, now),
        );
        set_condition(
            &mut status.conditions,
            condition(RUNNING, ConditionStatus::False, "TrainingJobRestarting", msg.clone(), g, now),
        );
        events.push((EventType::Warning, "Restarting".into(), msg));
    } else if status.tasks.iter().all(|t| matches!(t.phase.as_str(), "Running" | "Succeeded"))
        && !is_true(&status, RUNNING)
    {
        {
            let running = status.tasks.iter().filter(|t| t.phase == "Running").count();
            set_condition(
                &mut status.conditions,
                condition(
                    RUNNING,
                    ConditionStatus::True,
                    "TrainingJobRunning",
                    format!("{running} tasks running"),
                    g,
                    now,
                ),
            );
            status.conditions.retain(|c| c.type_ != RESTARTING);
        }
    }
    status.replica_statuses = counts(&status.tasks);
    let run = tasks
        .iter()
        .map(|(name, t, i)| TaskRun {
            name: name.clone(),
            type_: *t,
            index: *i,
            attempt: status.attempt,
            restarts: status.tasks.iter().find(|x| &x.name == name).map(|x| x.restarts).unwrap_or(0),
        })
        .collect();
    let requeue_after = spec.run_policy.active_deadline_seconds.map(|d| {
        (start + chrono::Duration::seconds(d as i64) - now).to_std().unwrap_or_default() + Duration::from_millis(50)
    });
    TrainingPlan { run, delete: Vec::new(), retire: Vec::new(), delete_job: false, status, events, requeue_after }
}

fn describe(e: &ExitInfo) -> String {
    match (e.code, e.signal) {
        (Some(c), _) => format!("exited with code {c}"),
        (None, Some(s)) => format!("was killed by signal {s} (exit code {})", 128 + s),
        _ => "ended".into(),
    }
}

fn counts(tasks: &[TaskStatus]) -> BTreeMap<ReplicaType, ReplicaCounts> {
    let mut m: BTreeMap<ReplicaType, ReplicaCounts> = BTreeMap::new();
    for t in tasks {
        let c = m.entry(t.type_).or_default();
        match t.phase.as_str() {
            "Succeeded" => c.succeeded += 1,
            "Failed" => c.failed += 1,
            "Stopped" => {}
            _ => c.active += 1,
        }
    }
    m
}

fn mark_finished(
    status: &mut TrainingJobStatus,
    type_: &str,
    reason: &str,
    msg: String,
    g: Option<i64>,
    now: DateTime<Utc>,
) {
    set_condition(&mut status.conditions, condition(type_, ConditionStatus::True, reason, msg.clone(), g, now));
    set_condition(&mut status.conditions, condition(RUNNING, ConditionStatus::False, reason, msg, g, now));
    status.conditions.retain(|c| c.type_ != RESTARTING);
    status.completion_time.get_or_insert(now);
}

/// A finished job: tasks cleaned per `cleanPolicy`, the job deleted after its TTL.
fn finish(
    job: &TrainingJob,
    tasks: &[(String, ReplicaType, u32)],
    observed: &BTreeMap<String, TaskObserved>,
    mut status: TrainingJobStatus,
    events: Vec<(EventType, String, String)>,
    now: DateTime<Utc>,
    prev: &BTreeMap<String, TaskStatus>,
) -> TrainingPlan {
    if status.tasks.is_empty() {
        status.tasks = prev.values().cloned().collect();
    }
    let running = |name: &str| {
        observed.get(name).is_some_and(|o| {
            matches!(o.phase, ReplicaPhase::Running | ReplicaPhase::Pending | ReplicaPhase::Terminating)
        })
    };
    let delete: Vec<String> = match job.spec.run_policy.clean_policy {
        CleanPolicy::All => {
            tasks.iter().filter(|(n, _, _)| observed.contains_key(n)).map(|(n, _, _)| n.clone()).collect()
        }
        CleanPolicy::Running => tasks.iter().filter(|(n, _, _)| running(n)).map(|(n, _, _)| n.clone()).collect(),
        CleanPolicy::None => Vec::new(),
    };
    for t in
        status.tasks.iter_mut().filter(|t| delete.contains(&t.name) && t.phase != "Succeeded" && t.phase != "Failed")
    {
        t.phase = "Stopped".into();
    }
    status.replica_statuses = counts(&status.tasks);
    let (mut delete_job, mut requeue_after) = (false, None);
    if let (Some(ttl), Some(done)) = (job.spec.run_policy.ttl_seconds_after_finished, status.completion_time) {
        let at = done + chrono::Duration::seconds(ttl as i64);
        if now >= at {
            delete_job = true;
        } else {
            requeue_after = (at - now).to_std().ok().map(|d| d + Duration::from_millis(50));
        }
    }
    let mut delete = delete;
    if delete_job {
        delete = tasks.iter().filter(|(n, _, _)| observed.contains_key(n)).map(|(n, _, _)| n.clone()).collect();
    }
    let retire: Vec<String> = tasks
        .iter()
        .filter(|(n, _, _)| observed.contains_key(n) && !running(n) && !delete.contains(n))
        .map(|(n, _, _)| n.clone())
        .collect();
    // Tasks still running and not cleaned stay as they are: the same counters, so nothing restarts them.
    let run = tasks
        .iter()
        .filter(|(n, _, _)| !delete.contains(n) && !retire.contains(n) && observed.contains_key(n))
        .map(|(n, t, i)| TaskRun {
            name: n.clone(),
            type_: *t,
            index: *i,
            attempt: status.attempt,
            restarts: prev.get(n).map(|p| p.restarts).unwrap_or(0),
        })
        .collect();
    TrainingPlan { run, delete, retire, delete_job, status, events, requeue_after }
}

#[cfg(test)]
mod tests {
    use super::*;
    use capstan_model::Resource;

    fn job(yaml_spec: &str) -> TrainingJob {
        let y = format!("apiVersion: capstan.dev/v1alpha1\nkind: TrainingJob\nmetadata: {{name: mnist, namespace: default}}\nspec:\n{yaml_spec}");
        match capstan_model::parse_manifests("job.yaml", &y).expect("valid").remove(0).resource {
            Resource::TrainingJob(j) => j,
            _ => unreachable!("a TrainingJob"),
        }
    }

    const PS_JOB: &str = "  replicaSpecs:\n    Chief: {replicas: 1, run: {command: [train]}}\n    Worker: {replicas: 2, restartPolicy: ExitCode, run: {command: [train]}}\n    PS: {replicas: 1, run: {command: [train]}}\n";

    fn t0() -> DateTime<Utc> {
        DateTime::parse_from_rfc3339("2026-11-22T10:00:00Z").expect("time").with_timezone(&Utc)
    }

    fn obs(phase: ReplicaPhase, code: Option<i32>, signal: Option<i32>) -> TaskObserved {
        let last_exit = (code.is_some() || signal.is_some()).then(|| ExitInfo {
            code,
            signal,
            finished_at: t0(),
            reason: "Error".into(),
        });
        TaskObserved { current: true, phase, last_exit }
    }

    fn all_running(j: &TrainingJob) -> BTreeMap<String, TaskObserved> {
        tasks_of(j).into_iter().map(|(n, _, _)| (n, obs(ReplicaPhase::Running, None, None))).collect()
    }

    fn advance(j: &mut TrainingJob, p: &TrainingPlan) {
        j.status = Some(p.status.clone());
    }

    fn cond(p: &TrainingPlan, t: &str) -> Option<(ConditionStatus, String)> {
        p.status.conditions.iter().find(|c| c.type_ == t).map(|c| (c.status, c.reason.clone()))
    }

    #[test]
    fn a_new_job_starts_every_task_and_runs_once_all_are_up() {
        let mut j = job(PS_JOB);
        let p = plan_training(&j, &BTreeMap::new(), t0());
        let names: Vec<&str> = p.run.iter().map(|r| r.name.as_str()).collect();
        assert_eq!(names, ["mnist-chief-0", "mnist-worker-0", "mnist-worker-1", "mnist-ps-0"]);
        assert!(p.run.iter().all(|r| r.attempt == 0 && r.restarts == 0));
        assert_eq!(cond(&p, CREATED), Some((ConditionStatus::True, "TrainingJobCreated".into())));
        assert_eq!(cond(&p, RUNNING), None);
        assert_eq!(p.status.start_time, Some(t0()));
        advance(&mut j, &p);
        let p = plan_training(&j, &all_running(&j), t0());
        assert_eq!(cond(&p, RUNNING).map(|c| c.0), Some(ConditionStatus::True));
        assert_eq!(
            p.status.replica_statuses[&ReplicaType::Worker],
            ReplicaCounts { active: 2, succeeded: 0, failed: 0 }
        );
    }

    #[test]
    fn the_chief_succeeding_ends_the_job_and_stops_the_parameter_servers() {
        let mut j = job(PS_JOB);
        let first = plan_training(&j, &BTreeMap::new(), t0());
        advance(&mut j, &first);
        let mut o = all_running(&j);
        o.insert("mnist-worker-0".into(), obs(ReplicaPhase::Succeeded, Some(0), None));
        o.insert("mnist-worker-1".into(), obs(ReplicaPhase::Succeeded, Some(0), None));
        let p = plan_training(&j, &o, t0());
        assert_eq!(cond(&p, SUCCEEDED), None, "workers finishing is not success while the chief runs");
        o.insert("mnist-chief-0".into(), obs(ReplicaPhase::Succeeded, Some(0), None));
        let p = plan_training(&j, &o, t0());
        assert_eq!(cond(&p, SUCCEEDED), Some((ConditionStatus::True, "TrainingJobSucceeded".into())));
        assert_eq!(p.delete, ["mnist-ps-0"], "cleanPolicy Running stops what still runs");
        // Issue 20, item 8: the tasks that ended leave no App behind (their state is the job's, their logs kept).
        assert_eq!(p.retire, ["mnist-chief-0", "mnist-worker-0", "mnist-worker-1"]);
        assert!(p.run.is_empty(), "{:?}", p.run);
        assert_eq!(p.status.completion_time, Some(t0()));
        assert_eq!(p.status.replica_statuses[&ReplicaType::PS], ReplicaCounts { active: 0, succeeded: 0, failed: 0 });
    }

    #[test]
    fn without_a_chief_worker_zero_decides_and_all_workers_can_be_required() {
        let spec = "  replicaSpecs:\n    Worker: {replicas: 2, run: {command: [train]}}\n";
        let j = job(spec);
        let mut o = all_running(&j);
        o.insert("mnist-worker-0".into(), obs(ReplicaPhase::Succeeded, Some(0), None));
        assert!(cond(&plan_training(&j, &o, t0()), SUCCEEDED).is_some());
        let j = job(&format!("{spec}  successPolicy: AllWorkers\n"));
        assert!(cond(&plan_training(&j, &o, t0()), SUCCEEDED).is_none());
        o.insert("mnist-worker-1".into(), obs(ReplicaPhase::Succeeded, Some(0), None));
        assert!(cond(&plan_training(&j, &o, t0()), SUCCEEDED).is_some());
    }

    #[test]
    fn exit_code_policy_fails_on_1_and_restarts_the_group_on_137() {
        let mut j = job(PS_JOB);
        let first = plan_training(&j, &BTreeMap::new(), t0());
        advance(&mut j, &first);
        let mut o = all_running(&j);
        o.insert("mnist-worker-1".into(), obs(ReplicaPhase::Failed, None, Some(9)));
        let p = plan_training(&j, &o, t0());
        assert_eq!(cond(&p, RESTARTING).map(|c| c.0), Some(ConditionStatus::True));
        assert!(p.run.iter().all(|r| r.attempt == 1), "the whole group restarts");
        assert_eq!(p.status.restarts, 1);
        // The old run's observations are not acted on again.
        advance(&mut j, &p);
        let stale: BTreeMap<_, _> =
            o.iter().map(|(k, v)| (k.clone(), TaskObserved { current: false, ..v.clone() })).collect();
        let p2 = plan_training(&j, &stale, t0());
        assert_eq!(p2.status.restarts, 1);
        assert!(p2.status.tasks.iter().all(|t| t.phase == "Pending"));

        let mut o = all_running(&j);
        o.insert("mnist-worker-0".into(), obs(ReplicaPhase::Failed, Some(1), None));
        let p = plan_training(&j, &o, t0());
        assert_eq!(cond(&p, FAILED), Some((ConditionStatus::True, "TaskFailed".into())));
        let msg = &p.status.conditions.iter().find(|c| c.type_ == FAILED).expect("failed").message;
        assert!(msg.contains("mnist-worker-0 exited with code 1"), "{msg}");
        assert_eq!(p.delete.len(), 3, "cleanPolicy Running stops the tasks still running");
    }

    #[test]
    fn task_scope_restarts_only_the_failed_task_within_the_backoff_limit() {
        let spec = "  restartScope: Task\n  runPolicy: {backoffLimit: 1}\n  replicaSpecs:\n    Worker: {replicas: 2, restartPolicy: OnFailure, run: {command: [train]}}\n    PS: {replicas: 1, run: {command: [train]}}\n";
        let mut j = job(spec);
        let first = plan_training(&j, &BTreeMap::new(), t0());
        advance(&mut j, &first);
        let mut o = all_running(&j);
        o.insert("mnist-worker-1".into(), obs(ReplicaPhase::Failed, Some(3), None));
        let p = plan_training(&j, &o, t0());
        let r: BTreeMap<&str, u32> = p.run.iter().map(|r| (r.name.as_str(), r.restarts)).collect();
        assert_eq!(r, BTreeMap::from([("mnist-ps-0", 0), ("mnist-worker-0", 0), ("mnist-worker-1", 1)]));
        assert!(p.run.iter().all(|r| r.attempt == 0));
        advance(&mut j, &p);
        let p = plan_training(&j, &o, t0());
        assert_eq!(cond(&p, FAILED), Some((ConditionStatus::True, "BackoffLimitExceeded".into())));
    }

    #[test]
    fn the_deadline_fails_the_job_and_the_ttl_deletes_it() {
        let spec = "  runPolicy: {activeDeadlineSeconds: 60, ttlSecondsAfterFinished: 30}\n  replicaSpecs:\n    Worker: {replicas: 2, run: {command: [train]}}\n";
        let mut j = job(spec);
        let p = plan_training(&j, &BTreeMap::new(), t0());
        assert!(p.requeue_after.is_some_and(|d| d.as_secs() == 60), "woken at the deadline");
        advance(&mut j, &p);
        let o = all_running(&j);
        let p = plan_training(&j, &o, t0() + chrono::Duration::seconds(61));
        assert_eq!(cond(&p, FAILED), Some((ConditionStatus::True, "DeadlineExceeded".into())));
        assert_eq!(p.delete.len(), 2);
        assert!(!p.delete_job);
        advance(&mut j, &p);
        let p = plan_training(&j, &BTreeMap::new(), t0() + chrono::Duration::seconds(92));
        assert!(p.delete_job, "30 s after it finished");
        assert_eq!(cond(&p, FAILED).map(|c| c.1), Some("DeadlineExceeded".into()), "a finished job stays finished");
    }
}
