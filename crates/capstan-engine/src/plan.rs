//! The App plan: a pure function from (desired spec, observed replicas, now) to actions and a status.

use std::time::Duration;

use capstan_model::{
    app_revision, set_condition, App, AppStatus, Condition, ConditionStatus, ReplicaPhase, ReplicaStatus,
    RestartBackoff, RestartPolicy, READY, RECONCILING, STALLED,
};
use chrono::{DateTime, Utc};

use crate::runtime::{ObservedReplica, ReplicaState};

/// Why a replica is stopped.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StopReason {
    /// Ordinal at or above `replicas`.
    ScaledDown,
    /// The App was deleted.
    Deleted,
    /// The replica runs an older revision.
    Outdated,
    /// A liveness or startup probe failed past its threshold.
    Unhealthy(String),
}

impl StopReason {
    pub fn describe(&self) -> String {
        match self {
            StopReason::ScaledDown => "scaled down".into(),
            StopReason::Deleted => "App deleted".into(),
            StopReason::Outdated => "replaced by the new revision".into(),
            StopReason::Unhealthy(m) => m.clone(),
        }
    }
}

/// One thing to do.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Action {
    /// Start the replica from the current spec; `count_restart` when it replaces a crashed process.
    Start { ordinal: u32, count_restart: bool },
    /// Stop the replica gracefully; `forget` drops it afterwards.
    Stop { ordinal: u32, reason: StopReason, forget: bool },
}

/// The outcome of planning.
#[derive(Debug, Clone, PartialEq)]
pub struct Plan {
    pub actions: Vec<Action>,
    /// When to look again even if nothing is reported (a backoff ending).
    pub requeue_after: Option<Duration>,
    /// The status to write (None when the App is gone).
    pub status: Option<AppStatus>,
}

/// The wait before restarting after `streak` crashes in a row: none for the first, then the schedule doubles.
pub fn backoff_delay(streak: u32, b: &RestartBackoff) -> Duration {
    if streak <= 1 {
        return Duration::ZERO;
    }
    let exp = (streak - 2).min(30);
    let secs = (b.initial_seconds * f64::from(1u32 << exp)).min(b.max_seconds);
    Duration::from_secs_f64(secs.max(0.0))
}

fn should_restart(policy: RestartPolicy, r: &ObservedReplica) -> bool {
    match policy {
        RestartPolicy::Always => true,
        RestartPolicy::OnFailure => !r.last_exit.as_ref().is_some_and(|e| e.success()),
        RestartPolicy::Never => false,
    }
}

/// Plans one App. `desired` is None when the App was deleted; `previous` is the status last written.
pub fn plan_app(
    desired: Option<&App>,
    observed: &[ObservedReplica],
    previous: Option<&AppStatus>,
    warnings: Vec<String>,
    now: DateTime<Utc>,
) -> Plan {
    let Some(app) = desired else {
        let actions = observed
            .iter()
            .filter(|r| r.state != ReplicaState::Stopping)
            .map(|r| Action::Stop { ordinal: r.ordinal, reason: StopReason::Deleted, forget: true })
            .collect();
        return Plan { actions, requeue_after: None, status: None };
    };
    let spec = &app.spec;
    let revision = app_revision(spec);
    let want = spec.replicas.max(0) as u32;
    let backoff = spec.restart_backoff.clone().unwrap_or_default();
    let mut actions = Vec::new();
    let mut requeue: Option<Duration> = None;
    let mut wait = |d: Duration| {
        requeue = Some(requeue.map_or(d, |r: Duration| r.min(d)));
    };
    let mut replica_statuses = Vec::new();
    let mut stalled: Option<(String, String)> = None;

    // Scale down: the highest surplus ordinal first, one at a time.
    let surplus: Vec<&ObservedReplica> = observed.iter().filter(|r| r.ordinal >= want).collect();
    if !surplus.iter().any(|r| r.state == ReplicaState::Stopping) {
        if let Some(top) = surplus.iter().max_by_key(|r| r.ordinal) {
            actions.push(Action::Stop { ordinal: top.ordinal, reason: StopReason::ScaledDown, forget: true });
        }
    }

    // Is every in-range replica up, ready and settled? Rolling replacement of ready replicas waits for it.
    let in_range: Vec<&ObservedReplica> = observed.iter().filter(|r| r.ordinal < want).collect();
    let all_settled = in_range.len() == want as usize
        && in_range.iter().all(|r| r.state == ReplicaState::Running && r.ready && r.unhealthy.is_none());
    let mut rolled_one = false;

    for ordinal in (0..want).rev() {
        let name = format!("{}-{ordinal}", app.metadata.name);
        let Some(r) = observed.iter().find(|r| r.ordinal == ordinal) else {
            actions.push(Action::Start { ordinal, count_restart: false });
            replica_statuses.push(ReplicaStatus {
                name,
                ordinal,
                phase: ReplicaPhase::Pending,
                ready: false,
                revision: revision.clone(),
                pid: None,
                ports: Default::default(),
                restarts: 0,
                started_at: None,
                reason: Some("Starting".into()),
                message: None,
                last_exit: None,
            });
            continue;
        };
        let outdated = r.revision != revision;
        let mut phase = ReplicaPhase::Running;
        let mut reason = None;
        let mut message = r.probe_message.clone();
        match &r.state {
            ReplicaState::Stopping => {
                phase = ReplicaPhase::Terminating;
            }
            ReplicaState::Running => {
                if let Some(why) = &r.unhealthy {
                    actions.push(Action::Stop { ordinal, reason: StopReason::Unhealthy(why.clone()), forget: false });
                    phase = ReplicaPhase::Terminating;
                    reason = Some("Unhealthy".into());
                    message = Some(why.clone());
                } else if outdated && (!r.ready || (all_settled && !rolled_one)) {
                    rolled_one |= r.ready;
                    actions.push(Action::Stop { ordinal, reason: StopReason::Outdated, forget: false });
                    phase = ReplicaPhase::Terminating;
                    reason = Some("Updating".into());
                } else if !r.ready {
                    reason = Some("NotReady".into());
                }
            }
            ReplicaState::Exited | ReplicaState::StartFailed(_) => {
                let failed_start = match &r.state {
                    ReplicaState::StartFailed(m) => Some(m.clone()),
                    _ => None,
                };
                if outdated {
                    actions.push(Action::Start { ordinal, count_restart: false });
                    phase = ReplicaPhase::Pending;
                    reason = Some("Updating".into());
                } else if failed_start.is_none() && !should_restart(spec.restart_policy, r) {
                    let ok = r.last_exit.as_ref().is_some_and(|e| e.success());
                    phase = if ok { ReplicaPhase::Succeeded } else { ReplicaPhase::Failed };
                    reason = Some(if ok { "Completed" } else { "Error" }.into());
                    if !ok {
                        stalled = Some((
                            "ReplicaFailed".into(),
                            format!("{name} exited with failure and restartPolicy is {:?}", spec.restart_policy),
                        ));
                    }
                } else {
                    let delay = backoff_delay(r.crash_streak, &backoff);
                    let since = r.last_exit.as_ref().map(|e| e.finished_at).unwrap_or(now);
                    let due = since + chrono::Duration::from_std(delay).unwrap_or_default();
                    if now >= due {
                        actions.push(Action::Start { ordinal, count_restart: true });
                        phase = ReplicaPhase::Pending;
                        reason = Some("Restarting".into());
                    } else {
                        let left = (due - now).to_std().unwrap_or_default();
                        wait(left);
                        phase = ReplicaPhase::Pending;
                        let why = failed_start.clone().unwrap_or_else(|| describe_exit(r));
                        let word = if failed_start.is_some() { "StartFailed" } else { "CrashLoopBackOff" };
                        reason = Some(word.into());
                        message = Some(format!("back-off {}s restarting: {why}", delay.as_secs()));
                        stalled = Some((word.into(), format!("{name}: {why}")));
                    }
                    if let Some(m) = failed_start {
                        message.get_or_insert(m);
                    }
                }
            }
        }
        let ready = r.state == ReplicaState::Running && r.ready && r.unhealthy.is_none();
        replica_statuses.push(ReplicaStatus {
            name,
            ordinal,
            phase,
            ready,
            revision: r.revision.clone(),
            pid: r.pid,
            ports: r.ports.clone(),
            restarts: r.restarts,
            started_at: r.started_at,
            reason,
            message,
            last_exit: r.last_exit.clone(),
        });
    }
    replica_statuses.sort_by_key(|r| r.ordinal);

    let ready_replicas = replica_statuses.iter().filter(|r| r.ready).count() as i32;
    let updated_replicas = replica_statuses.iter().filter(|r| r.revision == revision).count() as i32;
    let restarts = observed.iter().map(|r| r.restarts).sum::<u32>();
    let surplus_left = observed.iter().filter(|r| r.ordinal >= want).count();

    let mut conditions = previous.map(|p| p.conditions.clone()).unwrap_or_default();
    let generation = app.metadata.generation;
    let cond = |type_: &str, status: ConditionStatus, reason: &str, message: String| Condition {
        type_: type_.into(),
        status,
        reason: reason.into(),
        message,
        last_transition_time: now,
        observed_generation: generation,
    };
    let done = ready_replicas == want as i32 && updated_replicas == want as i32 && surplus_left == 0;
    if done {
        let msg = format!("{ready_replicas}/{want} replicas ready at revision {revision}");
        set_condition(&mut conditions, cond(READY, ConditionStatus::True, "AllReplicasReady", msg));
        conditions.retain(|c| c.type_ != RECONCILING && c.type_ != STALLED);
    } else {
        let (reason, msg) = if let Some((r, m)) = &stalled {
            (r.clone(), m.clone())
        } else if surplus_left > 0 {
            ("ScalingDown".to_string(), format!("{surplus_left} replicas above {want} are being stopped"))
        } else if updated_replicas < want as i32 {
            ("Updating".to_string(), format!("{updated_replicas}/{want} replicas at revision {revision}"))
        } else {
            ("ReplicasNotReady".to_string(), format!("{ready_replicas}/{want} replicas ready"))
        };
        set_condition(&mut conditions, cond(READY, ConditionStatus::False, &reason, msg.clone()));
        match &stalled {
            Some((r, m)) => {
                set_condition(&mut conditions, cond(STALLED, ConditionStatus::True, r, m.clone()));
                conditions.retain(|c| c.type_ != RECONCILING);
            }
            None => {
                set_condition(&mut conditions, cond(RECONCILING, ConditionStatus::True, &reason, msg));
                conditions.retain(|c| c.type_ != STALLED);
            }
        }
    }

    Plan {
        actions,
        requeue_after: requeue,
        status: Some(AppStatus {
            observed_generation: generation,
            conditions,
            revision,
            replicas: want as i32,
            ready_replicas,
            updated_replicas,
            restarts,
            replica_statuses,
            warnings,
        }),
    }
}

fn describe_exit(r: &ObservedReplica) -> String {
    match &r.last_exit {
        Some(e) => match (e.code, e.signal) {
            (Some(c), _) => format!("exited with code {c}"),
            (None, Some(s)) => format!("killed by signal {s}"),
            _ => "exited".into(),
        },
        None => "exited".into(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use capstan_model::{parse_manifests, ExitInfo, Resource};

    fn app(replicas: i32, extra: &str) -> App {
        let text = format!(
            "apiVersion: capstan.dev/v1alpha1\nkind: App\nmetadata: {{name: web, generation: 3}}\nspec:\n  replicas: {replicas}\n  run: {{command: [srv]}}\n{extra}"
        );
        let Resource::App(a) = parse_manifests("t", &text).unwrap().remove(0).resource;
        a
    }

    fn running(app: &App, ordinal: u32, ready: bool) -> ObservedReplica {
        let mut r = ObservedReplica::new(ordinal, &app_revision(&app.spec));
        r.ready = ready;
        r.pid = Some(100 + ordinal);
        r
    }

    fn exited(app: &App, ordinal: u32, code: i32, ago_secs: i64, streak: u32, now: DateTime<Utc>) -> ObservedReplica {
        let mut r = running(app, ordinal, false);
        r.state = ReplicaState::Exited;
        r.crash_streak = streak;
        r.last_exit = Some(ExitInfo {
            code: Some(code),
            signal: None,
            finished_at: now - chrono::Duration::seconds(ago_secs),
            reason: "Error".into(),
        });
        r
    }

    fn ready_cond(p: &Plan) -> &Condition {
        p.status.as_ref().unwrap().conditions.iter().find(|c| c.type_ == READY).unwrap()
    }

    #[test]
    fn starts_missing_replicas() {
        let a = app(3, "");
        let p = plan_app(Some(&a), &[running(&a, 1, true)], None, vec![], Utc::now());
        assert_eq!(
            p.actions,
            vec![
                Action::Start { ordinal: 2, count_restart: false },
                Action::Start { ordinal: 0, count_restart: false }
            ]
        );
        assert_eq!(ready_cond(&p).status, ConditionStatus::False);
    }

    #[test]
    fn all_ready_is_ready() {
        let a = app(2, "");
        let obs = [running(&a, 0, true), running(&a, 1, true)];
        let p = plan_app(Some(&a), &obs, None, vec![], Utc::now());
        assert!(p.actions.is_empty());
        let s = p.status.as_ref().unwrap();
        assert_eq!((s.ready_replicas, s.replicas, s.observed_generation), (2, 2, Some(3)));
        assert_eq!(ready_cond(&p).status, ConditionStatus::True);
        assert!(s.conditions.iter().all(|c| c.type_ == READY));
    }

    #[test]
    fn scale_down_removes_highest_first_one_at_a_time() {
        let a = app(1, "");
        let obs = [running(&a, 0, true), running(&a, 1, true), running(&a, 2, true)];
        let p = plan_app(Some(&a), &obs, None, vec![], Utc::now());
        assert_eq!(p.actions, vec![Action::Stop { ordinal: 2, reason: StopReason::ScaledDown, forget: true }]);
        let mut stopping = obs.clone();
        stopping[2].state = ReplicaState::Stopping;
        let p = plan_app(Some(&a), &stopping, None, vec![], Utc::now());
        assert!(p.actions.is_empty(), "waits for ordinal 2 before stopping 1");
        assert_eq!(ready_cond(&p).reason, "ScalingDown");
    }

    #[test]
    fn first_crash_restarts_at_once_then_backs_off() {
        let now = Utc::now();
        let a = app(1, "");
        let p = plan_app(Some(&a), &[exited(&a, 0, 1, 0, 1, now)], None, vec![], now);
        assert_eq!(p.actions, vec![Action::Start { ordinal: 0, count_restart: true }]);

        let p = plan_app(Some(&a), &[exited(&a, 0, 1, 3, 3, now)], None, vec![], now);
        assert!(p.actions.is_empty());
        assert_eq!(p.requeue_after, Some(Duration::from_secs(17)), "third crash waits 20s");
        let s = p.status.as_ref().unwrap();
        assert_eq!(s.replica_statuses[0].reason.as_deref(), Some("CrashLoopBackOff"));
        assert!(s.conditions.iter().any(|c| c.type_ == STALLED && c.reason == "CrashLoopBackOff"));

        let p = plan_app(Some(&a), &[exited(&a, 0, 1, 21, 3, now)], None, vec![], now);
        assert_eq!(p.actions, vec![Action::Start { ordinal: 0, count_restart: true }]);
    }

    #[test]
    fn backoff_schedule_matches_kubernetes_and_is_configurable() {
        let k = RestartBackoff::default();
        let secs: Vec<u64> = (1..=8).map(|n| backoff_delay(n, &k).as_secs()).collect();
        assert_eq!(secs, vec![0, 10, 20, 40, 80, 160, 300, 300]);
        let fast = RestartBackoff { initial_seconds: 0.5, max_seconds: 2.0, reset_after_seconds: 60.0 };
        assert_eq!(backoff_delay(2, &fast), Duration::from_millis(500));
        assert_eq!(backoff_delay(9, &fast), Duration::from_secs(2));
    }

    #[test]
    fn restart_policies() {
        let now = Utc::now();
        let never = app(1, "  restartPolicy: Never\n");
        let p = plan_app(Some(&never), &[exited(&never, 0, 0, 0, 1, now)], None, vec![], now);
        assert!(p.actions.is_empty());
        assert_eq!(p.status.as_ref().unwrap().replica_statuses[0].phase, ReplicaPhase::Succeeded);

        let on_failure = app(1, "  restartPolicy: OnFailure\n");
        let p = plan_app(Some(&on_failure), &[exited(&on_failure, 0, 0, 0, 1, now)], None, vec![], now);
        assert!(p.actions.is_empty(), "success is not restarted under OnFailure");
        let p = plan_app(Some(&on_failure), &[exited(&on_failure, 0, 2, 0, 1, now)], None, vec![], now);
        assert_eq!(p.actions, vec![Action::Start { ordinal: 0, count_restart: true }]);

        let p = plan_app(Some(&never), &[exited(&never, 0, 3, 0, 1, now)], None, vec![], now);
        assert!(p.actions.is_empty());
        assert_eq!(p.status.as_ref().unwrap().replica_statuses[0].phase, ReplicaPhase::Failed);
        assert!(p.status.unwrap().conditions.iter().any(|c| c.type_ == STALLED));
    }

    #[test]
    fn unhealthy_replica_is_stopped_for_restart() {
        let a = app(1, "");
        let mut r = running(&a, 0, true);
        r.unhealthy = Some("liveness probe failed 3 times: connection refused".into());
        let p = plan_app(Some(&a), &[r], None, vec![], Utc::now());
        assert!(matches!(
            &p.actions[..],
            [Action::Stop { ordinal: 0, reason: StopReason::Unhealthy(_), forget: false }]
        ));
    }

    #[test]
    fn rollout_replaces_one_ready_replica_at_a_time_highest_first() {
        let old = app(3, "");
        let new = app(3, "  restartPolicy: OnFailure\n");
        let obs = [running(&old, 0, true), running(&old, 1, true), running(&old, 2, true)];
        let p = plan_app(Some(&new), &obs, None, vec![], Utc::now());
        assert_eq!(p.actions, vec![Action::Stop { ordinal: 2, reason: StopReason::Outdated, forget: false }]);
        // While replica 2 is being replaced, the others wait.
        let mut mid = obs.clone();
        mid[2] = running(&new, 2, false);
        let p = plan_app(Some(&new), &mid, None, vec![], Utc::now());
        assert!(p.actions.is_empty());
        assert_eq!(ready_cond(&p).reason, "Updating");
        // An outdated replica that exited is started at the new revision without counting a restart.
        let now = Utc::now();
        let mut gone = obs.clone();
        gone[2] = exited(&old, 2, 143, 0, 1, now);
        let p = plan_app(Some(&new), &gone, None, vec![], now);
        assert_eq!(p.actions, vec![Action::Start { ordinal: 2, count_restart: false }]);
    }

    #[test]
    fn deleted_app_stops_everything() {
        let a = app(2, "");
        let obs = [running(&a, 0, true), running(&a, 1, true)];
        let p = plan_app(None, &obs, None, vec![], Utc::now());
        assert_eq!(p.actions.len(), 2);
        assert!(p.status.is_none());
    }

    #[test]
    fn condition_time_is_kept_while_status_holds() {
        let a = app(1, "");
        let t0 = Utc::now();
        let p1 = plan_app(Some(&a), &[running(&a, 0, true)], None, vec![], t0);
        let t1 = t0 + chrono::Duration::seconds(30);
        let p2 = plan_app(Some(&a), &[running(&a, 0, true)], p1.status.as_ref(), vec![], t1);
        assert_eq!(ready_cond(&p2).last_transition_time, t0);
    }
}
