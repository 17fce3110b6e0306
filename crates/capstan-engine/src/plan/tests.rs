//! Unit tests of the App plan: scaling, restarts, and rolling updates with chosen times.

use super::*;
use capstan_model::{parse_manifests, ExitInfo, Resource};

fn app(replicas: i32, extra: &str) -> App {
    let text = format!(
        "apiVersion: capstan.dev/v1alpha1\nkind: App\nmetadata: {{name: web, generation: 3}}\nspec:\n  replicas: {replicas}\n  run: {{command: [srv]}}\n{extra}"
    );
    let Resource::App(a) = parse_manifests("t", &text).unwrap().remove(0).resource else { panic!("expected an App") };
    a
}

fn rev(a: &App) -> String {
    revision_of(a)
}

fn running(app: &App, ordinal: u32, ready: bool) -> ObservedReplica {
    let mut r = ObservedReplica::new(ordinal, &rev(app));
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

fn start(ordinal: u32, a: &App, count_restart: bool) -> Action {
    Action::Start { ordinal, revision: rev(a), count_restart }
}

fn stop(ordinal: u32, reason: StopReason) -> Action {
    Action::Stop { ordinal, reason, forget: false }
}

fn cond<'a>(p: &'a Plan, t: &str) -> Option<&'a Condition> {
    p.status.as_ref().unwrap().conditions.iter().find(|c| c.type_ == t)
}

fn ready_cond(p: &Plan) -> &Condition {
    cond(p, READY).unwrap()
}

/// A status as if `a` had been fully rolled out.
fn settled_status(a: &App) -> AppStatus {
    let obs: Vec<ObservedReplica> = (0..a.spec.replicas as u32).map(|o| running(a, o, true)).collect();
    plan_app(Some(a), &obs, None, vec![], Utc::now()).status.unwrap()
}

#[test]
fn starts_missing_replicas() {
    let a = app(3, "");
    let p = plan_app(Some(&a), &[running(&a, 1, true)], None, vec![], Utc::now());
    assert_eq!(p.actions, vec![start(2, &a, false), start(0, &a, false)]);
    assert_eq!(ready_cond(&p).status, ConditionStatus::False);
}

#[test]
fn all_ready_is_ready_and_becomes_the_current_revision() {
    let a = app(2, "");
    let obs = [running(&a, 0, true), running(&a, 1, true)];
    let p = plan_app(Some(&a), &obs, None, vec![], Utc::now());
    assert!(p.actions.is_empty());
    let s = p.status.as_ref().unwrap();
    assert_eq!((s.ready_replicas, s.replicas, s.observed_generation), (2, 2, Some(3)));
    assert_eq!(ready_cond(&p).status, ConditionStatus::True);
    assert!(s.conditions.iter().all(|c| c.type_ == READY));
    assert_eq!(s.current_revision.as_deref(), Some(rev(&a).as_str()));
    assert_eq!(s.rollout.as_ref().unwrap().phase, RolloutPhase::Complete);
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
    assert_eq!(p.actions, vec![start(0, &a, true)]);

    let p = plan_app(Some(&a), &[exited(&a, 0, 1, 3, 3, now)], None, vec![], now);
    assert!(p.actions.is_empty());
    assert_eq!(p.requeue_after, Some(Duration::from_secs(17)), "third crash waits 20s");
    let s = p.status.as_ref().unwrap();
    assert_eq!(s.replica_statuses[0].reason.as_deref(), Some("CrashLoopBackOff"));
    assert_eq!(cond(&p, STALLED).unwrap().reason, "CrashLoopBackOff");

    let p = plan_app(Some(&a), &[exited(&a, 0, 1, 21, 3, now)], None, vec![], now);
    assert_eq!(p.actions, vec![start(0, &a, true)]);
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
    assert_eq!(p.actions, vec![start(0, &on_failure, true)]);

    let p = plan_app(Some(&never), &[exited(&never, 0, 3, 0, 1, now)], None, vec![], now);
    assert!(p.actions.is_empty());
    assert_eq!(p.status.as_ref().unwrap().replica_statuses[0].phase, ReplicaPhase::Failed);
    assert!(cond(&p, STALLED).is_some());
}

#[test]
fn unhealthy_replica_is_stopped_for_restart() {
    let a = app(1, "");
    let mut r = running(&a, 0, true);
    r.unhealthy = Some("liveness probe failed 3 times: connection refused".into());
    let p = plan_app(Some(&a), &[r], None, vec![], Utc::now());
    assert!(matches!(&p.actions[..], [Action::Stop { ordinal: 0, reason: StopReason::Unhealthy(_), forget: false }]));
}

#[test]
fn ordered_rollout_replaces_one_ready_replica_at_a_time_highest_first() {
    let old = app(3, "");
    let new = app(3, "  restartPolicy: OnFailure\n");
    let st = settled_status(&old);
    let obs = [running(&old, 0, true), running(&old, 1, true), running(&old, 2, true)];
    let now = Utc::now();
    let p = plan_app(Some(&new), &obs, Some(&st), vec![], now);
    assert_eq!(p.actions, vec![stop(2, StopReason::Outdated)]);
    let s = p.status.as_ref().unwrap();
    assert_eq!(s.rollout.as_ref().unwrap().phase, RolloutPhase::Progressing);
    assert_eq!(s.rollout.as_ref().unwrap().from_revision.as_deref(), Some(rev(&old).as_str()));
    // While replica 2 is being replaced, the others wait.
    let mut mid = obs.clone();
    mid[2] = running(&new, 2, false);
    let p = plan_app(Some(&new), &mid, Some(s), vec![], now);
    assert!(p.actions.is_empty());
    assert_eq!(ready_cond(&p).reason, "Updating");
    // An outdated replica that exited is started at the new revision without counting a restart.
    let mut gone = obs.clone();
    gone[2] = exited(&old, 2, 143, 0, 1, now);
    let p = plan_app(Some(&new), &gone, Some(s), vec![], now);
    assert_eq!(p.actions, vec![start(2, &new, false)]);
}

#[test]
fn max_unavailable_two_replaces_two_at_once() {
    let old = app(4, "");
    let new = app(4, "  restartPolicy: OnFailure\n  update: {maxUnavailable: 2}\n");
    let st = settled_status(&old);
    let obs: Vec<_> = (0..4).map(|o| running(&old, o, true)).collect();
    let p = plan_app(Some(&new), &obs, Some(&st), vec![], Utc::now());
    assert_eq!(p.actions, vec![stop(3, StopReason::Outdated), stop(2, StopReason::Outdated)]);
}

#[test]
fn min_ready_seconds_holds_the_next_replacement() {
    let old = app(2, "");
    let new = app(2, "  restartPolicy: OnFailure\n  update: {minReadySeconds: 10}\n");
    let st = settled_status(&old);
    let now = Utc::now();
    let mut fresh = running(&new, 1, true);
    fresh.ready_since = Some(now - chrono::Duration::seconds(4));
    let obs = [running(&old, 0, true), fresh.clone()];
    let p = plan_app(Some(&new), &obs, Some(&st), vec![], now);
    assert!(p.actions.is_empty(), "replica 1 is ready but not yet available");
    assert_eq!(p.requeue_after, Some(Duration::from_secs(6)));
    fresh.ready_since = Some(now - chrono::Duration::seconds(11));
    let p = plan_app(Some(&new), &[running(&old, 0, true), fresh], Some(&st), vec![], now);
    assert_eq!(p.actions, vec![stop(0, StopReason::Outdated)]);
}

#[test]
fn partition_updates_only_high_ordinals() {
    let old = app(3, "");
    let new = app(3, "  restartPolicy: OnFailure\n  update: {partition: 2}\n");
    let st = settled_status(&old);
    let obs: Vec<_> = (0..3).map(|o| running(&old, o, true)).collect();
    let p = plan_app(Some(&new), &obs, Some(&st), vec![], Utc::now());
    assert_eq!(p.actions, vec![stop(2, StopReason::Outdated)]);
    // With the canary updated, nothing else moves; a crashed low ordinal comes back at the old revision.
    let now = Utc::now();
    let canary = [exited(&old, 0, 1, 0, 1, now), running(&old, 1, true), running(&new, 2, true)];
    let p = plan_app(Some(&new), &canary, Some(&st), vec![], now);
    assert_eq!(p.actions, vec![start(0, &old, true)]);
    let s = p.status.unwrap();
    assert_eq!(s.current_revision.as_deref(), Some(rev(&old).as_str()), "a partial update keeps the current revision");
}

#[test]
fn surge_starts_an_extra_replica_before_taking_one_down() {
    let old = app(2, "  update: {strategy: Surge}\n");
    let new = app(2, "  restartPolicy: OnFailure\n  update: {strategy: Surge}\n");
    let st = settled_status(&old);
    let obs = vec![running(&old, 0, true), running(&old, 1, true)];
    let p = plan_app(Some(&new), &obs, Some(&st), vec![], Utc::now());
    assert_eq!(p.actions, vec![start(2, &new, false)], "the surge replica comes first; nothing stops yet");
    let mut with_surge = obs.clone();
    with_surge.push(running(&new, 2, true));
    let p = plan_app(Some(&new), &with_surge, Some(&st), vec![], Utc::now());
    assert_eq!(p.actions, vec![stop(1, StopReason::Outdated)], "one old replica goes once the surge is ready");
    // When every ordinal runs the new revision, the surge replica is retired.
    let done = vec![running(&new, 0, true), running(&new, 1, true), running(&new, 2, true)];
    let p = plan_app(Some(&new), &done, Some(&st), vec![], Utc::now());
    assert_eq!(p.actions, vec![Action::Stop { ordinal: 2, reason: StopReason::ScaledDown, forget: true }]);
}

#[test]
fn a_crashing_new_revision_is_rolled_back_automatically() {
    let old = app(2, "  update: {autoRollback: true}\n");
    let new = app(2, "  restartPolicy: OnFailure\n  update: {autoRollback: true}\n");
    let st = settled_status(&old);
    let now = Utc::now();
    let first = plan_app(Some(&new), &[running(&old, 0, true), running(&old, 1, true)], Some(&st), vec![], now);
    let st = first.status.unwrap();
    let obs = [running(&old, 0, true), exited(&new, 1, 1, 0, 2, now)];
    let p = plan_app(Some(&new), &obs, Some(&st), vec![], now);
    assert_eq!(p.actions, vec![start(1, &old, false)], "the broken replica goes back to the old revision");
    let s = p.status.as_ref().unwrap();
    let r = s.rollout.as_ref().unwrap();
    assert_eq!(r.phase, RolloutPhase::RolledBack);
    assert!(r.message.contains("exited with code 1"), "{}", r.message);
    assert_eq!(s.update_revision.as_deref(), Some(rev(&old).as_str()));
    assert_eq!(cond(&p, STALLED).unwrap().reason, "RolledBack");
    // Once back, it stays on the old revision while the spec still names the failed one.
    let back = [running(&old, 0, true), running(&old, 1, true)];
    let p = plan_app(Some(&new), &back, Some(s), vec![], now);
    assert!(p.actions.is_empty());
    assert_eq!(ready_cond(&p).status, ConditionStatus::False);
    assert_eq!(ready_cond(&p).reason, "RolledBack");
    // A new spec starts a new rollout.
    let newer = app(2, "  restartPolicy: Always\n  update: {autoRollback: true}\n  terminationGracePeriodSeconds: 9\n");
    let p = plan_app(Some(&newer), &back, p.status.as_ref(), vec![], now);
    assert_eq!(p.actions, vec![stop(1, StopReason::Outdated)]);
    assert_eq!(p.status.unwrap().rollout.unwrap().phase, RolloutPhase::Progressing);
}

#[test]
fn a_missed_deadline_halts_without_rollback() {
    let old = app(2, "");
    let new = app(2, "  restartPolicy: OnFailure\n  update: {progressDeadlineSeconds: 30}\n");
    let st = settled_status(&old);
    let t0 = Utc::now();
    let p = plan_app(Some(&new), &[running(&old, 0, true), running(&old, 1, true)], Some(&st), vec![], t0);
    assert_eq!(p.requeue_after.map(|d| d.as_secs()), Some(30));
    let st = p.status.unwrap();
    let stuck = [running(&old, 0, true), running(&new, 1, false)];
    let later = t0 + chrono::Duration::seconds(31);
    let p = plan_app(Some(&new), &stuck, Some(&st), vec![], later);
    assert!(p.actions.is_empty(), "halted: replica 0 keeps the old revision");
    let r = p.status.as_ref().unwrap().rollout.clone().unwrap();
    assert_eq!(r.phase, RolloutPhase::Failed);
    assert!(r.message.contains("progress deadline of 30s exceeded"), "{}", r.message);
    assert_eq!(cond(&p, STALLED).unwrap().reason, "RolloutFailed");
}

#[test]
fn expose_and_update_changes_do_not_restart_replicas() {
    let a = app(2, "");
    let b = app(2, "  ports: [{name: http}]\n  expose: [{port: 8080}]\n  update: {maxUnavailable: 2}\n");
    let c = app(2, "  ports: [{name: http}]\n");
    assert_ne!(rev(&a), rev(&c), "ports shape the process");
    let mut b2 = b.clone();
    b2.spec.expose.clear();
    b2.spec.update = Default::default();
    assert_eq!(rev(&b2), rev(&c));
    assert_eq!(rev(&b), rev(&c), "expose and update are not part of the revision");
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

/// Every replica ready but not yet for minReadySeconds: the condition says so, not "ReplicasNotReady" beside 2/2.
#[test]
fn ready_but_not_yet_available_says_why() {
    let a = app(2, "  update: {minReadySeconds: 10}\n");
    let now = Utc::now();
    let obs: Vec<_> = (0..2)
        .map(|o| {
            let mut r = running(&a, o, true);
            r.ready_since = Some(now - chrono::Duration::seconds(3));
            r
        })
        .collect();
    let p = plan_app(Some(&a), &obs, None, vec![], now);
    let c = ready_cond(&p);
    assert_eq!((c.status, c.reason.as_str()), (ConditionStatus::False, "MinReadySeconds"));
    assert_eq!(c.message, "2/2 replicas ready, 0/2 available (ready for minReadySeconds: 10s)");
}

/// Issue 20, item 9: a replica waiting for its Database's credentials is a dependency on its way — tried again,
/// Progressing, never a failed rollout — even past its crash-loop thresholds.
#[test]
fn a_replica_waiting_for_a_dependency_is_progressing_not_failed() {
    let a = app(1, "  update: {autoRollback: true}\n");
    let now = Utc::now();
    let mut w = ObservedReplica::new(0, &rev(&a));
    w.state = ReplicaState::Waiting("waiting for Database pg's credentials".into());
    let first = plan_app(Some(&a), &[], None, vec![], now);
    for _ in 0..5 {
        let p = plan_app(Some(&a), std::slice::from_ref(&w), first.status.as_ref(), vec![], now);
        assert_eq!(p.actions, vec![start(0, &a, false)], "tried again, not counted as a restart");
        assert_eq!(p.requeue_after, Some(WAITING_RETRY));
        let st = p.status.as_ref().unwrap();
        assert_eq!(st.rollout.as_ref().map(|r| r.phase), Some(RolloutPhase::Progressing));
        assert_eq!(st.replica_statuses[0].reason.as_deref(), Some("Waiting"));
        assert_eq!(ready_cond(&p).reason, "DependencyNotReady");
        assert!(ready_cond(&p).message.contains("web-0: waiting for Database pg"), "{:?}", ready_cond(&p));
        assert!(cond(&p, STALLED).is_none());
    }
    // A start that failed is a failure.
    let mut f = w.clone();
    f.state = ReplicaState::StartFailed("no such program".into());
    let p = plan_app(Some(&a), &[f], first.status.as_ref(), vec![], now);
    assert_eq!(p.status.unwrap().rollout.map(|r| r.phase), Some(RolloutPhase::Failed));
}

#[test]
fn held_replicas_stay_stopped_and_the_status_says_why() {
    let a = app(3, "");
    let now = Utc::now();
    let held: std::collections::BTreeSet<u32> = [1].into();
    let p = hold_replicas(plan_app(Some(&a), &[running(&a, 0, true)], None, vec![], now), "web", &held);
    assert_eq!(p.actions, vec![start(2, &a, false)], "replica 1 is held; 0 runs; 2 starts");
    let warnings = &p.status.as_ref().unwrap().warnings;
    assert!(warnings.iter().any(|w| w == "replica web-1 is held stopped while its volume is synced"), "{warnings:?}");
    // Nothing held: the plan is unchanged.
    let plain = plan_app(Some(&a), &[running(&a, 0, true)], None, vec![], now);
    let same = hold_replicas(plain.clone(), "web", &Default::default());
    assert_eq!(same.actions, plain.actions);
}
