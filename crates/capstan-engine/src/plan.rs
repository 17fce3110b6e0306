//! The App plan: a pure function from (desired spec, observed replicas, previous status, now) to actions and a
//! status — scaling, restarts with backoff, and rolling updates (Ordered or Surge, partition, minReadySeconds,
//! progress deadline, automatic rollback).

use std::time::Duration;

use capstan_model::{
    revision_of, set_condition, App, AppStatus, Condition, ConditionStatus, ReplicaPhase, ReplicaStatus,
    RestartBackoff, RestartPolicy, RolloutPhase, RolloutStatus, UpdateStrategy, READY, RECONCILING, STALLED,
};
use chrono::{DateTime, Utc};

use crate::runtime::{ObservedReplica, ReplicaState};

/// Why a replica is stopped.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StopReason {
    /// Ordinal at or above `replicas` (or a surge replica no longer needed).
    ScaledDown,
    /// The App was deleted.
    Deleted,
    /// The replica runs another revision than the one it should.
    Outdated,
    /// A liveness or startup probe failed past its threshold.
    Unhealthy(String),
}

impl StopReason {
    pub fn describe(&self) -> String {
        match self {
            StopReason::ScaledDown => "scaled down".into(),
            StopReason::Deleted => "App deleted".into(),
            StopReason::Outdated => "replaced by another revision".into(),
            StopReason::Unhealthy(m) => m.clone(),
        }
    }
}

/// One thing to do.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Action {
    /// Start the replica at `revision`; `count_restart` when it replaces a crashed process.
    Start { ordinal: u32, revision: String, count_restart: bool },
    /// Stop the replica gracefully (drained first); `forget` drops it afterwards.
    Stop { ordinal: u32, reason: StopReason, forget: bool },
}

/// The outcome of planning.
#[derive(Debug, Clone, PartialEq)]
pub struct Plan {
    pub actions: Vec<Action>,
    /// When to look again even if nothing is reported (a backoff, minReadySeconds or a deadline ending).
    pub requeue_after: Option<Duration>,
    /// The status to write (None when the App is gone).
    pub status: Option<AppStatus>,
}

/// Keeps the replicas in `held` stopped (a volume sync holds them while it copies): their starts leave the plan and
/// the status says why they are down.
pub fn hold_replicas(mut plan: Plan, app_name: &str, held: &std::collections::BTreeSet<u32>) -> Plan {
    plan.actions.retain(|a| !matches!(a, Action::Start { ordinal, .. } if held.contains(ordinal)));
    if let Some(status) = plan.status.as_mut() {
        status
            .warnings
            .extend(held.iter().map(|o| format!("replica {app_name}-{o} is held stopped while its volume is synced")));
    }
    plan
}

/// How often a replica that waits for a dependency is tried again.
pub const WAITING_RETRY: Duration = Duration::from_secs(2);

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

fn secs(d: u32) -> chrono::Duration {
    chrono::Duration::seconds(i64::from(d))
}

/// Whether a replica serves and has served long enough to count as available.
fn available(r: &ObservedReplica, min_ready: u32, now: DateTime<Utc>) -> bool {
    r.state == ReplicaState::Running
        && r.ready
        && r.unhealthy.is_none()
        && r.ready_since.is_none_or(|t| now - t >= secs(min_ready))
}

/// Whether a replica shows that its revision is broken.
fn broken(r: &ObservedReplica) -> Option<String> {
    match &r.state {
        ReplicaState::StartFailed(m) => Some(m.clone()),
        ReplicaState::Exited if r.crash_streak >= 2 => Some(describe_exit(r)),
        _ => r.unhealthy.clone(),
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
    let upd = &spec.update;
    let desired_rev = revision_of(app);
    let want = spec.replicas.max(0) as u32;
    let backoff = spec.restart_backoff.clone().unwrap_or_default();
    let current = previous.and_then(|p| p.current_revision.clone());
    let mut rollout = previous.and_then(|p| p.rollout.clone());
    let mut requeue: Option<Duration> = None;
    let mut wait = |d: Duration| requeue = Some(requeue.map_or(d, |r: Duration| r.min(d)));

    // The revision replicas move to: the spec's, unless that very revision was rolled back.
    let rolled_back =
        rollout.as_ref().is_some_and(|r| r.phase == RolloutPhase::RolledBack && r.revision == desired_rev);
    let mut target = match (&current, rolled_back) {
        (Some(c), true) => c.clone(),
        _ => desired_rev.clone(),
    };
    if !rolled_back && current.as_deref() != Some(target.as_str()) {
        let fresh = rollout.as_ref().is_none_or(|r| r.revision != target);
        if fresh {
            rollout = Some(RolloutStatus {
                revision: target.clone(),
                from_revision: current.clone(),
                phase: RolloutPhase::Progressing,
                started_at: now,
                finished_at: None,
                message: match &current {
                    Some(c) => format!("updating from revision {c} to {target}"),
                    None => format!("starting revision {target}"),
                },
            });
        }
    }

    // A rollout in progress fails when its deadline passes or a replica at the new revision is broken.
    if let Some(r) = rollout.as_mut().filter(|r| r.phase == RolloutPhase::Progressing && r.revision == target) {
        let deadline = r.started_at + secs(upd.progress_deadline_seconds);
        let failure = observed
            .iter()
            .filter(|o| o.revision == target)
            .find_map(|o| broken(o).map(|why| format!("{}-{}: {why}", app.metadata.name, o.ordinal)))
            .or_else(|| {
                (now >= deadline).then(|| {
                    let done = observed
                        .iter()
                        .filter(|o| {
                            o.ordinal < want && o.revision == target && available(o, upd.min_ready_seconds, now)
                        })
                        .count();
                    format!(
                        "progress deadline of {}s exceeded with {done}/{want} replicas updated and available",
                        upd.progress_deadline_seconds
                    )
                })
            });
        match failure {
            Some(why) => match (&current, upd.auto_rollback) {
                (Some(c), true) if *c != target => {
                    r.phase = RolloutPhase::RolledBack;
                    r.finished_at = Some(now);
                    r.message = format!("revision {target} failed ({why}); rolled back to revision {c}");
                    target = c.clone();
                }
                _ => {
                    r.phase = RolloutPhase::Failed;
                    r.finished_at = Some(now);
                    r.message = format!("revision {target} failed: {why}; the update is halted");
                }
            },
            None => wait((deadline - now).to_std().unwrap_or_default() + Duration::from_millis(10)),
        }
    }
    let halted = rollout.as_ref().is_some_and(|r| r.phase == RolloutPhase::Failed && r.revision == target);

    // Each ordinal's revision: the target at or above the partition; below it, what it runs (or the current).
    let want_rev = |ordinal: u32| -> String {
        if ordinal >= upd.partition {
            return target.clone();
        }
        observed
            .iter()
            .find(|o| o.ordinal == ordinal)
            .map(|o| o.revision.clone())
            .or_else(|| current.clone())
            .unwrap_or_else(|| target.clone())
    };

    let mut actions = Vec::new();
    let mut replica_statuses = Vec::new();
    let mut stalled: Option<(String, String)> = None;
    let mut waiting: Option<String> = None;
    let in_range: Vec<&ObservedReplica> = observed.iter().filter(|r| r.ordinal < want).collect();
    // An update is under way when a replica that exists runs another revision than its own target.
    let rolling = in_range.iter().any(|r| r.revision != want_rev(r.ordinal));
    let surge = upd.strategy == UpdateStrategy::Surge && rolling && !halted;
    let surge_end = if surge { want + upd.max_surge } else { want };

    // Rolling replacement of replicas that serve an outdated revision.
    let mut candidates: Vec<u32> = in_range
        .iter()
        .filter(|r| {
            r.state == ReplicaState::Running && r.ready && r.unhealthy.is_none() && r.revision != want_rev(r.ordinal)
        })
        .map(|r| r.ordinal)
        .collect();
    candidates.sort_unstable_by(|a, b| b.cmp(a));
    let available_in_range = in_range.iter().filter(|r| available(r, upd.min_ready_seconds, now)).count() as u32;
    let budget = if halted {
        0
    } else if upd.strategy == UpdateStrategy::Surge {
        let surge_ready = observed
            .iter()
            .filter(|r| r.ordinal >= want && r.ordinal < surge_end && r.revision == target)
            .filter(|r| available(r, upd.min_ready_seconds, now))
            .count() as u32;
        (available_in_range + surge_ready).saturating_sub(want)
    } else {
        upd.max_unavailable.saturating_sub(want - available_in_range.min(want))
    };
    let replace: Vec<u32> = candidates.into_iter().take(budget as usize).collect();
    if upd.min_ready_seconds > 0 {
        for r in observed.iter().filter(|r| r.ready) {
            if let Some(t) = r.ready_since {
                let left = t + secs(upd.min_ready_seconds) - now;
                if left > chrono::Duration::zero() {
                    wait(left.to_std().unwrap_or_default());
                }
            }
        }
    }

    for ordinal in (0..surge_end).rev() {
        let name = format!("{}-{ordinal}", app.metadata.name);
        let rev = if ordinal < want { want_rev(ordinal) } else { target.clone() };
        let Some(r) = observed.iter().find(|r| r.ordinal == ordinal) else {
            actions.push(Action::Start { ordinal, revision: rev.clone(), count_restart: false });
            replica_statuses.push(ReplicaStatus {
                name,
                ordinal,
                phase: ReplicaPhase::Pending,
                ready: false,
                revision: rev,
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
        let outdated = r.revision != rev;
        let mut phase = ReplicaPhase::Running;
        let mut reason = None;
        let mut message = r.probe_message.clone();
        match &r.state {
            ReplicaState::Stopping => phase = ReplicaPhase::Terminating,
            ReplicaState::Waiting(m) => {
                // A dependency on its way (its Database's credentials): try again soon; nothing failed.
                actions.push(Action::Start { ordinal, revision: rev.clone(), count_restart: false });
                wait(WAITING_RETRY);
                phase = ReplicaPhase::Pending;
                reason = Some("Waiting".into());
                message = Some(m.clone());
                waiting.get_or_insert_with(|| format!("{name}: {m}"));
            }
            ReplicaState::Running => {
                if let Some(why) = &r.unhealthy {
                    actions.push(Action::Stop { ordinal, reason: StopReason::Unhealthy(why.clone()), forget: false });
                    phase = ReplicaPhase::Terminating;
                    reason = Some("Unhealthy".into());
                    message = Some(why.clone());
                } else if outdated && (!r.ready || replace.contains(&ordinal)) {
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
                    actions.push(Action::Start { ordinal, revision: rev.clone(), count_restart: false });
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
                    phase = ReplicaPhase::Pending;
                    if now >= due {
                        actions.push(Action::Start { ordinal, revision: rev.clone(), count_restart: true });
                        reason = Some("Restarting".into());
                    } else {
                        wait((due - now).to_std().unwrap_or_default());
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

    // Scale down (and retire surge replicas): the highest surplus ordinal first, one at a time.
    let surplus: Vec<&ObservedReplica> = observed.iter().filter(|r| r.ordinal >= surge_end).collect();
    if !surplus.iter().any(|r| r.state == ReplicaState::Stopping) {
        if let Some(top) = surplus.iter().max_by_key(|r| r.ordinal) {
            actions.push(Action::Stop { ordinal: top.ordinal, reason: StopReason::ScaledDown, forget: true });
        }
    }
    for r in &surplus {
        replica_statuses.push(ReplicaStatus {
            name: format!("{}-{}", app.metadata.name, r.ordinal),
            ordinal: r.ordinal,
            phase: ReplicaPhase::Terminating,
            ready: false,
            revision: r.revision.clone(),
            pid: r.pid,
            ports: r.ports.clone(),
            restarts: r.restarts,
            started_at: r.started_at,
            reason: Some("ScalingDown".into()),
            message: None,
            last_exit: r.last_exit.clone(),
        });
    }
    replica_statuses.sort_by_key(|r| r.ordinal);

    let in_range_statuses = || replica_statuses.iter().filter(|r| r.ordinal < want);
    let ready_replicas = in_range_statuses().filter(|r| r.ready).count() as i32;
    let updated_replicas = in_range_statuses().filter(|r| r.revision == target).count() as i32;
    let restarts = observed.iter().map(|r| r.restarts).sum::<u32>();
    let extra = observed.iter().filter(|r| r.ordinal >= want).count();
    let settled = (0..want).all(|o| {
        in_range.iter().any(|r| r.ordinal == o && r.revision == want_rev(o) && available(r, upd.min_ready_seconds, now))
    }) && extra == 0;

    // The current revision moves once every replica runs the target and is available.
    let mut current_revision = current.clone();
    if settled && upd.partition == 0 {
        current_revision = Some(target.clone());
        if let Some(r) = rollout.as_mut().filter(|r| r.revision == target && r.phase != RolloutPhase::Complete) {
            if matches!(r.phase, RolloutPhase::Progressing | RolloutPhase::Failed) {
                r.phase = RolloutPhase::Complete;
                r.finished_at = Some(now);
                r.message = format!("{want}/{want} replicas at revision {target}");
            }
        }
    }

    let rolled_back_now =
        rollout.as_ref().is_some_and(|r| r.phase == RolloutPhase::RolledBack && r.revision == desired_rev);
    let failed_now = rollout.as_ref().is_some_and(|r| r.phase == RolloutPhase::Failed && r.revision == target);
    if stalled.is_none() {
        if let Some(r) = rollout.as_ref().filter(|_| rolled_back_now || failed_now) {
            let word = if rolled_back_now { "RolledBack" } else { "RolloutFailed" };
            stalled = Some((word.into(), r.message.clone()));
        }
    }

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
    let done = settled && !rolled_back_now && target == desired_rev;
    if done {
        let msg = format!("{ready_replicas}/{want} replicas ready at revision {target}");
        set_condition(&mut conditions, cond(READY, ConditionStatus::True, "AllReplicasReady", msg));
        conditions.retain(|c| c.type_ != RECONCILING && c.type_ != STALLED);
    } else {
        let (reason, msg) = if let Some((r, m)) = &stalled {
            (r.clone(), m.clone())
        } else if let Some(m) = &waiting {
            ("DependencyNotReady".to_string(), m.clone())
        } else if extra > 0 && !rolling {
            (
                "ScalingDown".to_string(),
                format!("{} above {want} being stopped", capstan_model::count_of(extra as i64, "replica")),
            )
        } else if rolling || updated_replicas < want as i32 {
            ("Updating".to_string(), format!("{updated_replicas}/{want} replicas at revision {target}"))
        } else if ready_replicas >= want as i32 {
            // Ready, but not yet ready for long enough to count as available.
            let available = in_range.iter().filter(|r| available(r, upd.min_ready_seconds, now)).count();
            (
                if upd.min_ready_seconds > 0 { "MinReadySeconds" } else { "ReplicasNotAvailable" }.to_string(),
                format!(
                    "{ready_replicas}/{want} replicas ready, {available}/{want} available (ready for minReadySeconds: {}s)",
                    upd.min_ready_seconds
                ),
            )
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
            revision: desired_rev,
            replicas: want as i32,
            ready_replicas,
            updated_replicas,
            restarts,
            replica_statuses,
            warnings,
            current_revision,
            update_revision: Some(target),
            rollout,
            endpoints: previous.map(|p| p.endpoints.clone()).unwrap_or_default(),
            volumes: previous.map(|p| p.volumes.clone()).unwrap_or_default(),
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
mod tests;
