//! The alerting controller: evaluates AlertRules (the user's and Capstan's built-in platform rules) over the
//! embedded store, writes `ALERTS`, groups firing alerts into incidents per EscalationPolicy, escalates them, and
//! delivers notifications from a persisted outbox with retries, so nothing is lost across a restart.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use capstan_model::alerting::{AlertRuleSpec, AlertRuleStatus, AlertStatus, NotifyTarget};
use capstan_model::{parse_duration, ObjectKey, Resource};
use capstan_observe::alerting::{self, Alert, RuleParams, State};
use capstan_observe::escalation::{self, Incident, IncidentState, Notification, Policy, Reason};
use capstan_observe::promql::{format_value, now_ms, Engine, Value as PromValue};
use capstan_observe::query_limits::QueryLimits;
use capstan_observe::tsdb::{stale_nan, Labels, Tsdb};
use capstan_store::Store;
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};
use tokio::sync::watch;

/// Capstan's own rules for platform events, always evaluated (over the metrics of Capstan's `/metrics`).
pub fn builtin_rules() -> Vec<(String, AlertRuleSpec)> {
    let rule = |alert: &str, expr: &str, for_: &str, summary: &str| {
        (
            alert.to_string(),
            AlertRuleSpec {
                alert: Some(alert.to_string()),
                expr: expr.to_string(),
                for_: Some(for_.to_string()),
                keep_firing_for: None,
                labels: BTreeMap::from([
                    ("severity".to_string(), "page".to_string()),
                    ("source".to_string(), "capstan".to_string()),
                ]),
                annotations: BTreeMap::from([("summary".to_string(), summary.to_string())]),
                interval: Some("5s".to_string()),
            },
        )
    };
    vec![
        rule(
            "CapstanTargetDown",
            "up{job=\"capstan-apps\"} == 0",
            "1m",
            "{{ $labels.replica }} does not answer on its metrics endpoint",
        ),
        rule(
            "CapstanReplicaCrashLooping",
            "increase(capstan_replica_restarts_total[5m]) >= 3",
            "0s",
            "{{ $labels.replica }} restarted {{ $value }} times in 5 minutes",
        ),
        rule(
            "CapstanRolloutFailed",
            "capstan_app_rollout_failed == 1",
            "0s",
            "the rollout of {{ $labels.namespace }}/{{ $labels.app }} failed",
        ),
        rule(
            "CapstanSourceFetchFailing",
            "capstan_object_ready{kind=\"Source\"} == 0",
            "2m",
            "Source {{ $labels.namespace }}/{{ $labels.name }} cannot be fetched",
        ),
        rule(
            "CapstanSyncNotReady",
            "capstan_object_ready{kind=\"Sync\"} == 0",
            "5m",
            "Sync {{ $labels.namespace }}/{{ $labels.name }} is not Ready",
        ),
        rule(
            "CapstanDatabaseDown",
            "capstan_object_ready{kind=\"Database\"} == 0",
            "1m",
            "Database {{ $labels.namespace }}/{{ $labels.name }} is down",
        ),
    ]
}

/// A notification waiting to be delivered, persisted until it is.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Delivery {
    pub id: String,
    pub incident: String,
    pub target: NotifyTarget,
    pub reason: Reason,
    pub payload: Value,
    pub attempts: u32,
    pub next_at: i64,
    pub created_at: i64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_error: Option<String>,
    /// Gave up (after a day of retries).
    #[serde(default)]
    pub failed: bool,
}

/// How long a delivery is retried before it is given up.
const GIVE_UP_MS: i64 = 24 * 3600 * 1000;

/// The alerting state shared with the API.
#[derive(Default)]
pub struct Alerting {
    /// Alerts per rule (`namespace/name`, or `builtin/<alert>`).
    rules: Mutex<BTreeMap<String, (String, Vec<Alert>)>>,
    incidents: Mutex<BTreeMap<String, Incident>>,
    deliveries: Mutex<BTreeMap<String, Delivery>>,
    /// The last incident number and the last delivery number: apart, so incidents count 1, 2, 3.
    incident_seq: std::sync::atomic::AtomicU64,
    delivery_seq: std::sync::atomic::AtomicU64,
    /// Where people look: `externalURL` of notifications, and the start of each alert's `generatorURL`.
    external_url: String,
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

fn rfc3339(ms: i64) -> String {
    chrono::DateTime::from_timestamp_millis(ms)
        .map(|t| t.to_rfc3339_opts(chrono::SecondsFormat::Millis, true))
        .unwrap_or_default()
}

impl Alerting {
    /// Loads incidents and pending deliveries kept by a previous run.
    /// `external_url` is where people look (the query API's address until there is a dashboard).
    pub fn load(store: &Store, external_url: &str) -> Alerting {
        let a = Alerting { external_url: external_url.trim_end_matches('/').to_string(), ..Default::default() };
        let mut max = 0u64;
        for (k, v) in store.records("incident/").unwrap_or_default() {
            if let Ok(i) = serde_json::from_value::<Incident>(v) {
                max = max.max(i.id.trim_start_matches("inc-").parse().unwrap_or(0));
                lock(&a.incidents).insert(k.trim_start_matches("incident/").to_string(), i);
            }
        }
        let mut max_delivery = 0u64;
        for (k, v) in store.records("delivery/").unwrap_or_default() {
            if let Ok(d) = serde_json::from_value::<Delivery>(v) {
                max_delivery = max_delivery.max(d.id.trim_start_matches("dlv-").parse().unwrap_or(0));
                lock(&a.deliveries).insert(k.trim_start_matches("delivery/").to_string(), d);
            }
        }
        a.incident_seq.store(max, std::sync::atomic::Ordering::Relaxed);
        a.delivery_seq.store(max_delivery, std::sync::atomic::Ordering::Relaxed);
        a
    }

    #[cfg(test)]
    fn load_empty(external_url: &str) -> Alerting {
        Alerting { external_url: external_url.trim_end_matches('/').to_string(), ..Default::default() }
    }

    fn next_incident_id(&self) -> String {
        format!("inc-{}", self.incident_seq.fetch_add(1, std::sync::atomic::Ordering::Relaxed) + 1)
    }

    fn next_delivery_id(&self) -> String {
        format!("dlv-{}", self.delivery_seq.fetch_add(1, std::sync::atomic::Ordering::Relaxed) + 1)
    }

    /// Prometheus' `generatorURL` for an expression: the query API answering it.
    fn generator_url(&self, expr: &str) -> String {
        let q: String = form_urlencoded::byte_serialize(expr.as_bytes()).collect();
        format!("{}/api/v1/query?query={q}", self.external_url)
    }

    /// Every alert now held, Prometheus' `/api/v1/alerts` shape.
    pub fn alerts_json(&self) -> Value {
        let rules = lock(&self.rules);
        let alerts: Vec<Value> = rules
            .values()
            .flat_map(|(_, v)| v.iter())
            .filter(|a| a.state != State::Inactive)
            .map(|a| {
                json!({
                    "labels": a.labels, "annotations": a.annotations, "state": a.state.as_str(),
                    "activeAt": rfc3339(a.active_at), "value": format_value(a.value),
                })
            })
            .collect();
        json!({ "alerts": alerts })
    }

    /// Incidents, newest first, with their pending deliveries.
    pub fn incidents_json(&self, all: bool) -> Value {
        let incidents = lock(&self.incidents);
        let deliveries = lock(&self.deliveries);
        let mut list: Vec<&Incident> =
            incidents.values().filter(|i| all || i.state != IncidentState::Resolved).collect();
        list.sort_by_key(|i| std::cmp::Reverse(i.created_at));
        let items: Vec<Value> = list
            .into_iter()
            .map(|i| {
                let pending: Vec<&Delivery> = deliveries.values().filter(|d| d.incident == i.id).collect();
                json!({
                    "id": i.id, "policy": i.policy, "state": i.state.as_str(), "group": i.group,
                    "level": i.level + 1, "round": i.round + 1,
                    "createdAt": rfc3339(i.created_at),
                    "nextEscalationAt": i.next_at.map(rfc3339),
                    "acknowledgedBy": i.acknowledged_by, "acknowledgedAt": i.acknowledged_at.map(rfc3339),
                    "resolvedAt": i.resolved_at.map(rfc3339),
                    "alerts": i.alerts.iter().map(|a| json!({"labels": a.labels, "annotations": a.annotations, "state": a.state.as_str()})).collect::<Vec<_>>(),
                    "log": i.log.iter().map(|l| json!({"at": rfc3339(l.at), "message": l.message})).collect::<Vec<_>>(),
                    "deliveries": pending.iter().map(|d| json!({
                        "target": d.target, "reason": d.reason, "attempts": d.attempts, "failed": d.failed,
                        "lastError": d.last_error, "nextAttemptAt": rfc3339(d.next_at),
                    })).collect::<Vec<_>>(),
                })
            })
            .collect();
        json!({ "items": items })
    }
}

/// What acknowledging or resolving by hand did.
#[derive(Debug, PartialEq, Eq)]
pub enum ManualOutcome {
    Done,
    NotFound,
    /// Already in that state (or past it).
    NoChange(&'static str),
}

fn rule_params(name: &str, spec: &AlertRuleSpec, generator_url: String) -> RuleParams {
    let ms = |s: &Option<String>| s.as_deref().and_then(|d| parse_duration(d).ok()).map_or(0, |d| d.as_millis() as i64);
    RuleParams {
        alertname: spec.alert.clone().unwrap_or_else(|| name.to_string()),
        for_ms: ms(&spec.for_),
        keep_firing_for_ms: ms(&spec.keep_firing_for),
        labels: spec.labels.clone(),
        annotations: spec.annotations.clone(),
        generator_url,
    }
}

/// The `ALERTS_FOR_STATE` series of an alert.
fn for_state_labels(labels: &BTreeMap<String, String>) -> Labels {
    let mut pairs: Vec<(&str, &str)> = labels.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
    pairs.push(("__name__", alerting::FOR_STATE_METRIC));
    Labels::new(pairs)
}

fn policies(store: &Store) -> Vec<Policy> {
    store
        .list("EscalationPolicy", None)
        .unwrap_or_default()
        .into_iter()
        .filter_map(|v| match Resource::from_value(v) {
            Ok(Resource::EscalationPolicy(p)) => {
                Some(Policy::new(format!("{}/{}", p.metadata.namespace(), p.metadata.name), p.spec))
            }
            _ => None,
        })
        .collect()
}

/// Starts the controller.
/// Rules are evaluated within `limits`: a rule that exceeds them is marked unhealthy with the reason.
pub fn spawn(
    store: Store,
    db: Arc<Tsdb>,
    alerting: Arc<Alerting>,
    limits: QueryLimits,
) -> capstan_engine::runner::Handle {
    let (stop, rx) = watch::channel(false);
    let task = tokio::spawn(run(store, db, alerting, limits, rx));
    capstan_engine::runner::Handle::new("alerting", stop, task)
}

async fn run(
    store: Store,
    db: Arc<Tsdb>,
    alerting: Arc<Alerting>,
    limits: QueryLimits,
    mut stop: watch::Receiver<bool>,
) {
    let client = reqwest::Client::builder().no_proxy().timeout(Duration::from_secs(10)).build().unwrap_or_default();
    let mut next_eval: HashMap<String, i64> = HashMap::new();
    let mut alerts_series: HashSet<Labels> = HashSet::new();
    let mut tick = tokio::time::interval(Duration::from_millis(500));
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            _ = stop.changed() => break,
        }
        let now = now_ms();
        evaluate_rules(&store, &db, &alerting, &limits, &mut next_eval, &mut alerts_series, now).await;
        escalate(&store, &alerting, now);
        deliver(&store, &alerting, &client, now).await;
    }
}

async fn evaluate_rules(
    store: &Store,
    db: &Arc<Tsdb>,
    alerting: &Arc<Alerting>,
    limits: &QueryLimits,
    next_eval: &mut HashMap<String, i64>,
    alerts_series: &mut HashSet<Labels>,
    now: i64,
) {
    let mut rules: Vec<(String, Option<ObjectKey>, AlertRuleSpec)> =
        builtin_rules().into_iter().map(|(n, s)| (format!("builtin/{n}"), None, s)).collect();
    for v in store.list("AlertRule", None).unwrap_or_default() {
        if let Ok(Resource::AlertRule(r)) = Resource::from_value(v) {
            let key = ObjectKey::new("AlertRule", r.metadata.namespace(), &r.metadata.name);
            rules.push((format!("{}/{}", key.namespace, key.name), Some(key), r.spec));
        }
    }
    let live: HashSet<String> = rules.iter().map(|r| r.0.clone()).collect();
    lock(&alerting.rules).retain(|k, _| live.contains(k));
    next_eval.retain(|k, _| live.contains(k));
    let mut changed_any = false;
    for (id, key, spec) in rules {
        if next_eval.get(&id).is_some_and(|t| now < *t) {
            continue;
        }
        let interval = spec.interval.as_deref().and_then(|i| parse_duration(i).ok()).unwrap_or(Duration::from_secs(15));
        next_eval.insert(id.clone(), now + interval.as_millis() as i64);
        let name = key.as_ref().map_or_else(|| id.trim_start_matches("builtin/").to_string(), |k| k.name.clone());
        let params = rule_params(&name, &spec, alerting.generator_url(&spec.expr));
        let expr = spec.expr.clone();
        let db2 = db.clone();
        let limits = limits.clone();
        let result = tokio::task::spawn_blocking(move || Engine::with_limits(&db2, limits).instant(&expr, now)).await;
        let known = lock(&alerting.rules).get(&id).map(|(_, a)| a.clone());
        let first = known.is_none();
        let previous = known.unwrap_or_default();
        let outcome = match result {
            Ok(Ok(PromValue::Vector(v))) => alerting::evaluate(&params, &previous, &v, now)
                .map(|mut alerts| {
                    // The first evaluation since Capstan started: alerts active before keep their start.
                    if first {
                        alerting::restore(&params, &mut alerts, |l| db.last(&for_state_labels(l)), now);
                    }
                    alerts
                })
                .map_err(|e| e.to_string()),
            Ok(Ok(PromValue::Scalar(_) | PromValue::String(_) | PromValue::Matrix(_))) => {
                Err("the expression must give an instant vector".to_string())
            }
            Ok(Err(e)) => Err(e.to_string()),
            Err(e) => Err(e.to_string()),
        };
        let (alerts, error) = match outcome {
            Ok(a) => (a, None),
            // A failed evaluation keeps the alerts as they were, as Prometheus does.
            Err(e) => (previous.clone(), Some(e)),
        };
        if alerts != previous {
            changed_any = true;
        }
        if let Some(k) = &key {
            let status = AlertRuleStatus {
                health: if error.is_some() { "err".into() } else { "ok".into() },
                last_error: error.clone(),
                last_evaluation: None,
                alerts: alerts
                    .iter()
                    .filter(|a| a.state != State::Inactive)
                    .map(|a| AlertStatus {
                        labels: a.labels.clone(),
                        annotations: a.annotations.clone(),
                        state: a.state.as_str().into(),
                        active_at: rfc3339(a.active_at),
                        value: format_value(a.value),
                    })
                    .collect(),
            };
            if let Ok(v) = serde_json::to_value(&status) {
                let _ = store.update_status(k, v);
            }
        } else if let Some(e) = &error {
            tracing::warn!(rule = %id, "built-in rule failed: {e}");
        }
        lock(&alerting.rules).insert(id, (name, alerts));
    }
    // ALERTS{alertname, alertstate, …} = 1 and ALERTS_FOR_STATE{alertname, …} = the time it became active (s) for
    // every pending or firing alert; stale markers for those that ended.
    let mut now_series: HashMap<Labels, f64> = HashMap::new();
    for a in lock(&alerting.rules).values().flat_map(|(_, v)| v.iter()).filter(|a| a.state != State::Inactive) {
        let mut pairs: Vec<(&str, &str)> = a.labels.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
        pairs.push(("__name__", "ALERTS"));
        pairs.push(("alertstate", a.state.as_str()));
        now_series.insert(Labels::new(pairs), 1.0);
        now_series.insert(for_state_labels(&a.labels), a.active_at as f64 / 1000.0);
    }
    let stale = stale_nan();
    db.append_all(alerts_series.iter().filter(|l| !now_series.contains_key(*l)).map(|l| (l, now, stale)));
    db.append_all(now_series.iter().map(|(l, v)| (l, now, *v)));
    *alerts_series = now_series.into_keys().collect();
    let _ = changed_any;
}

fn persist_incident(store: &Store, i: &Incident) {
    if let Ok(v) = serde_json::to_value(i) {
        if let Err(e) = store.put_record(&format!("incident/{}", i.id), &v) {
            tracing::warn!(incident = %i.id, "cannot save the incident: {e}");
        }
    }
}

fn enqueue(store: &Store, alerting: &Alerting, incident: &Incident, notes: Vec<Notification>, now: i64) {
    for n in notes {
        let payload = payload(incident, &n, &alerting.external_url, now);
        let d = Delivery {
            id: alerting.next_delivery_id(),
            incident: n.incident.clone(),
            target: n.target,
            reason: n.reason,
            payload,
            attempts: 0,
            next_at: now,
            created_at: now,
            last_error: None,
            failed: false,
        };
        if let Ok(v) = serde_json::to_value(&d) {
            if let Err(e) = store.put_record(&format!("delivery/{}", d.id), &v) {
                tracing::warn!("cannot save a delivery: {e}");
            }
        }
        lock(&alerting.deliveries).insert(d.id.clone(), d);
    }
}

/// Groups firing alerts into incidents per policy and advances every open incident.
fn escalate(store: &Store, alerting: &Alerting, now: i64) {
    let all_alerts: Vec<Alert> = lock(&alerting.rules).values().flat_map(|(_, v)| v.iter().cloned()).collect();
    for policy in policies(store) {
        let mut groups: BTreeMap<BTreeMap<String, String>, Vec<Alert>> = BTreeMap::new();
        for a in all_alerts.iter().filter(|a| a.state != State::Pending && policy.matches(a)) {
            groups.entry(policy.group_of(a)).or_default().push(a.clone());
        }
        let mut incidents = lock(&alerting.incidents);
        // Open incidents move on.
        for i in incidents.values_mut().filter(|i| i.policy == policy.key && i.state != IncidentState::Resolved) {
            let alerts = groups.get(&i.group).cloned().unwrap_or_default();
            let before = i.clone();
            let notes = escalation::step(&policy, i, alerts, now);
            if *i != before {
                persist_incident(store, i);
            }
            enqueue(store, alerting, i, notes, now);
        }
        // Firing groups without an open incident open one, unless its alerts were already handled by an
        // incident resolved by hand after they started.
        for (group, alerts) in groups {
            let firing: Vec<&Alert> = alerts.iter().filter(|a| a.state == State::Firing).collect();
            if firing.is_empty() {
                continue;
            }
            let open = incidents
                .values()
                .any(|i| i.policy == policy.key && i.group == group && i.state != IncidentState::Resolved);
            let handled = incidents.values().any(|i| {
                i.policy == policy.key
                    && i.group == group
                    && i.resolved_at.is_some_and(|r| firing.iter().all(|a| a.active_at <= r))
            });
            if open || handled {
                continue;
            }
            let id = alerting.next_incident_id();
            let (i, notes) = escalation::open(&policy, id.clone(), group, alerts, now);
            persist_incident(store, &i);
            enqueue(store, alerting, &i, notes, now);
            tracing::info!(incident = %id, policy = %policy.key, "incident triggered");
            incidents.insert(id, i);
        }
        // Resolved incidents are kept a week for `capstan alerts --all`, then forgotten.
        let old: Vec<String> = incidents
            .values()
            .filter(|i| i.resolved_at.is_some_and(|r| now - r > 7 * 24 * 3600 * 1000))
            .map(|i| i.id.clone())
            .collect();
        for id in old {
            incidents.remove(&id);
            let _ = store.delete_record(&format!("incident/{id}"));
        }
    }
}

/// Acknowledges an incident.
pub fn acknowledge(store: &Store, alerting: &Alerting, id: &str, who: &str) -> ManualOutcome {
    let mut incidents = lock(&alerting.incidents);
    let Some(i) = incidents.get_mut(id) else { return ManualOutcome::NotFound };
    if !escalation::acknowledge(i, who, now_ms()) {
        return ManualOutcome::NoChange(i.state.as_str());
    }
    persist_incident(store, i);
    ManualOutcome::Done
}

/// Resolves an incident by hand.
pub fn resolve(store: &Store, alerting: &Alerting, id: &str, who: &str) -> ManualOutcome {
    let policy_key = match lock(&alerting.incidents).get(id) {
        Some(i) => i.policy.clone(),
        None => return ManualOutcome::NotFound,
    };
    let policy = policies(store).into_iter().find(|p| p.key == policy_key);
    let mut incidents = lock(&alerting.incidents);
    let Some(i) = incidents.get_mut(id) else { return ManualOutcome::NotFound };
    if i.state == IncidentState::Resolved {
        return ManualOutcome::NoChange("resolved");
    }
    let now = now_ms();
    let notes = match &policy {
        Some(p) => escalation::resolve(p, i, who, now),
        None => {
            i.state = IncidentState::Resolved;
            i.resolved_at = Some(now);
            Vec::new()
        }
    };
    persist_incident(store, i);
    let snapshot = i.clone();
    drop(incidents);
    enqueue(store, alerting, &snapshot, notes, now);
    ManualOutcome::Done
}

/// The Alertmanager webhook payload (version 4), with Capstan's incident alongside.
fn payload(i: &Incident, n: &Notification, external_url: &str, now: i64) -> Value {
    let resolved = i.state == IncidentState::Resolved;
    let alerts: Vec<Value> = i
        .alerts
        .iter()
        .map(|a| {
            let ended = resolved || a.state == State::Inactive;
            let ends = if ended { a.resolved_at.or(i.resolved_at).unwrap_or(now) } else { now + 4 * 60_000 };
            json!({
                "status": if ended { "resolved" } else { "firing" },
                "labels": a.labels,
                "annotations": a.annotations,
                "startsAt": rfc3339(a.active_at),
                "endsAt": if ended || matches!(n.target, NotifyTarget::Alertmanager { .. }) { rfc3339(ends) } else { "0001-01-01T00:00:00Z".to_string() },
                "generatorURL": a.generator_url,
                "fingerprint": fingerprint(&a.labels),
            })
        })
        .collect();
    let common = |f: &dyn Fn(&Alert) -> &BTreeMap<String, String>| -> BTreeMap<String, String> {
        let mut it = i.alerts.iter();
        let Some(first) = it.next() else { return BTreeMap::new() };
        let mut c = f(first).clone();
        for a in it {
            c.retain(|k, v| f(a).get(k) == Some(v));
        }
        c
    };
    json!({
        "version": "4",
        "groupKey": format!("{}:{}", i.policy, serde_json::to_string(&i.group).unwrap_or_default()),
        "truncatedAlerts": 0,
        "status": if resolved { "resolved" } else { "firing" },
        "receiver": format!("{}/level-{}", i.policy, n.level + 1),
        "groupLabels": i.group,
        "commonLabels": common(&|a| &a.labels),
        "commonAnnotations": common(&|a| &a.annotations),
        "externalURL": external_url,
        "alerts": alerts,
        "incident": { "id": i.id, "state": i.state.as_str(), "level": n.level + 1, "reason": n.reason },
    })
}

fn fingerprint(labels: &BTreeMap<String, String>) -> String {
    use std::hash::{Hash, Hasher};
    let mut h = std::collections::hash_map::DefaultHasher::new();
    labels.hash(&mut h);
    format!("{:016x}", h.finish())
}

/// Sends what is due; failures are retried with backoff (1 s doubling to 5 minutes) for a day.
async fn deliver(store: &Store, alerting: &Alerting, client: &reqwest::Client, now: i64) {
    let due: Vec<Delivery> =
        lock(&alerting.deliveries).values().filter(|d| !d.failed && d.next_at <= now).take(16).cloned().collect();
    let sends = due.into_iter().map(|d| async move {
        let r = send(client, &d).await;
        (d, r)
    });
    for (mut d, r) in futures_util::future::join_all(sends).await {
        match r {
            Ok(()) => {
                lock(&alerting.deliveries).remove(&d.id);
                let _ = store.delete_record(&format!("delivery/{}", d.id));
            }
            Err(e) => {
                d.attempts += 1;
                let backoff = (1_000i64 << d.attempts.min(9)).min(300_000);
                d.next_at = now + backoff;
                if now - d.created_at > GIVE_UP_MS {
                    d.failed = true;
                }
                tracing::warn!(delivery = %d.id, attempts = d.attempts, "notification failed: {e}");
                d.last_error = Some(e);
                if let Ok(v) = serde_json::to_value(&d) {
                    let _ = store.put_record(&format!("delivery/{}", d.id), &v);
                }
                lock(&alerting.deliveries).insert(d.id.clone(), d);
            }
        }
    }
}

/// An error with what caused it (`error sending request: client error (Connect): tcp connect error: Connection
/// refused (os error 111)`): reqwest's own text alone says only `error sending request`.
fn with_causes(e: &dyn std::error::Error) -> String {
    let mut out = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        let text = s.to_string();
        if !out.contains(&text) {
            out.push_str(": ");
            out.push_str(&text);
        }
        source = s.source();
    }
    out
}

/// Scheme, host and port of a URL: what errors may show (a webhook's path often holds its token, as Slack's do).
fn origin(url: &str) -> String {
    match reqwest::Url::parse(url) {
        Ok(u) => match u.port() {
            Some(p) => format!("{}://{}:{p}", u.scheme(), u.host_str().unwrap_or("")),
            None => format!("{}://{}", u.scheme(), u.host_str().unwrap_or("")),
        },
        Err(_) => "the target".into(),
    }
}

/// POSTs a JSON body; anything but a 2xx answer is a failure, with the answer's text.
async fn post_json(client: &reqwest::Client, url: &str, body: String) -> Result<(), String> {
    let r = client
        .post(url)
        .header("Content-Type", "application/json")
        .body(body)
        .send()
        .await
        .map_err(|e| format!("{}: {}", origin(url), with_causes(&e.without_url())))?;
    if r.status().is_success() {
        Ok(())
    } else {
        Err(format!("{} answered {}: {}", origin(url), r.status(), r.text().await.unwrap_or_default().trim()))
    }
}

async fn send(client: &reqwest::Client, d: &Delivery) -> Result<(), String> {
    match &d.target {
        NotifyTarget::Webhook { url } => post_json(client, url, d.payload.to_string()).await,
        NotifyTarget::Alertmanager { url } => {
            let alerts: Vec<Value> = d.payload["alerts"]
                .as_array()
                .cloned()
                .unwrap_or_default()
                .into_iter()
                .map(|a| json!({"labels": a["labels"], "annotations": a["annotations"], "startsAt": a["startsAt"], "endsAt": a["endsAt"], "generatorURL": a["generatorURL"]}))
                .collect();
            let endpoint = format!("{}/api/v2/alerts", url.trim_end_matches('/'));
            post_json(client, &endpoint, Value::Array(alerts).to_string()).await
        }
        NotifyTarget::Command { command } => {
            use tokio::io::AsyncWriteExt;
            let (prog, args) = command.split_first().ok_or("empty command")?;
            let mut child = tokio::process::Command::new(prog)
                .args(args)
                .env("CAPSTAN_INCIDENT_ID", &d.incident)
                .env("CAPSTAN_INCIDENT_STATE", d.payload["incident"]["state"].as_str().unwrap_or(""))
                .env("CAPSTAN_INCIDENT_REASON", d.payload["incident"]["reason"].as_str().unwrap_or(""))
                .env("CAPSTAN_INCIDENT_LEVEL", d.payload["incident"]["level"].to_string())
                .stdin(std::process::Stdio::piped())
                .stdout(std::process::Stdio::null())
                .stderr(std::process::Stdio::piped())
                .kill_on_drop(true)
                .spawn()
                .map_err(|e| format!("{prog}: {e}"))?;
            if let Some(mut stdin) = child.stdin.take() {
                let _ = stdin.write_all(d.payload.to_string().as_bytes()).await;
            }
            let out = tokio::time::timeout(Duration::from_secs(30), child.wait_with_output())
                .await
                .map_err(|_| format!("{prog} ran longer than 30s"))?
                .map_err(|e| format!("{prog}: {e}"))?;
            if out.status.success() {
                Ok(())
            } else {
                Err(format!("{prog} exited with {}: {}", out.status, String::from_utf8_lossy(&out.stderr).trim()))
            }
        }
        NotifyTarget::Email { to, from, smarthost } => send_mail(smarthost, from, to, d).await,
    }
}

/// Plain SMTP to a relay, as Alertmanager's email receiver without TLS.
async fn send_mail(smarthost: &str, from: &str, to: &[String], d: &Delivery) -> Result<(), String> {
    use lettre::message::Mailbox;
    use lettre::{AsyncSmtpTransport, AsyncTransport, Message, Tokio1Executor};
    let (host, port) = smarthost.rsplit_once(':').ok_or("smarthost needs host:port")?;
    let port: u16 = port.parse().map_err(|_| format!("bad port in {smarthost}"))?;
    let status = d.payload["status"].as_str().unwrap_or("firing");
    let subject = format!(
        "[{}] {} {}",
        status.to_uppercase(),
        d.payload["incident"]["id"].as_str().unwrap_or(""),
        serde_json::to_string(&d.payload["groupLabels"]).unwrap_or_default()
    );
    let mut body = String::new();
    for a in d.payload["alerts"].as_array().into_iter().flatten() {
        body.push_str(&format!("{} {}\n", a["status"].as_str().unwrap_or(""), a["labels"]));
        if let Some(s) = a["annotations"]["summary"].as_str() {
            body.push_str(&format!("  {s}\n"));
        }
    }
    let mut msg = Message::builder().from(from.parse::<Mailbox>().map_err(|e| format!("from: {e}"))?).subject(subject);
    for t in to {
        msg = msg.to(t.parse::<Mailbox>().map_err(|e| format!("to {t}: {e}"))?);
    }
    let msg = msg.body(body).map_err(|e| e.to_string())?;
    let mailer = AsyncSmtpTransport::<Tokio1Executor>::builder_dangerous(host).port(port).build();
    mailer.send(msg).await.map(|_| ()).map_err(|e| format!("smtp {smarthost}: {e}"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use capstan_model::alerting::EscalationPolicySpec;

    #[test]
    fn builtin_rules_parse_and_validate() {
        for (name, spec) in builtin_rules() {
            assert!(capstan_observe::promql::parse(&spec.expr).is_ok(), "{name}: {}", spec.expr);
            let mut e = Vec::new();
            capstan_model::alerting::validate_alert_rule(&spec, &mut e);
            assert!(e.is_empty(), "{name}: {e:?}");
        }
    }

    #[test]
    fn errors_name_the_origin_never_the_path() {
        assert_eq!(origin("https://hooks.slack.com/services/T0/B0/SECRET"), "https://hooks.slack.com");
        assert_eq!(origin("http://127.0.0.1:9093/api/v2/alerts"), "http://127.0.0.1:9093");
        assert_eq!(origin("not a url"), "the target");
    }

    /// Issue 20, polish: incidents count 1, 2, 3 whatever the deliveries between them, also after a restart.
    #[test]
    fn incidents_and_deliveries_are_numbered_apart() {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = Store::open(&dir.path().join("s.redb")).expect("store");
        let a = Alerting::load(&store, "http://127.0.0.1:7470");
        assert_eq!(a.next_incident_id(), "inc-1");
        for n in 1..=4 {
            assert_eq!(a.next_delivery_id(), format!("dlv-{n}"));
        }
        assert_eq!(a.next_incident_id(), "inc-2");
        let spec: EscalationPolicySpec =
            serde_json::from_value(json!({"levels": [{"targets": [{"webhook": {"url": "http://127.0.0.1:1/x"}}]}]}))
                .expect("spec");
        let p = Policy::new("default/p".into(), spec);
        let (i, _) = escalation::open(&p, "inc-2".into(), BTreeMap::new(), vec![], 0);
        persist_incident(&store, &i);
        let again = Alerting::load(&store, "http://127.0.0.1:7470");
        assert_eq!(again.next_incident_id(), "inc-3");
        assert_eq!(again.next_delivery_id(), "dlv-1");
    }

    #[test]
    fn the_webhook_payload_is_alertmanagers_version_4() {
        let alert = Alert {
            labels: BTreeMap::from([
                ("alertname".to_string(), "Down".to_string()),
                ("app".to_string(), "web".to_string()),
            ]),
            annotations: BTreeMap::from([("summary".to_string(), "web is down".to_string())]),
            state: State::Firing,
            active_at: 1_700_000_000_000,
            fired_at: Some(1_700_000_000_000),
            resolved_at: None,
            last_seen: 1_700_000_000_000,
            value: 0.0,
            generator_url: Alerting::load_empty("http://127.0.0.1:7470/").generator_url("up{job=\"web\"} == 0"),
        };
        let spec: EscalationPolicySpec =
            serde_json::from_value(json!({"levels": [{"targets": [{"webhook": {"url": "http://127.0.0.1:1/x"}}]}]}))
                .expect("spec");
        let p = Policy::new("default/p".into(), spec);
        let (i, notes) = escalation::open(&p, "inc-1".into(), p.group_of(&alert), vec![alert], 1_700_000_060_000);
        let v = payload(&i, &notes[0], "http://127.0.0.1:7470", 1_700_000_060_000);
        assert_eq!(v["externalURL"], "http://127.0.0.1:7470");
        assert_eq!(
            v["alerts"][0]["generatorURL"],
            "http://127.0.0.1:7470/api/v1/query?query=up%7Bjob%3D%22web%22%7D+%3D%3D+0"
        );
        assert_eq!(v["version"], "4");
        assert_eq!(v["status"], "firing");
        assert_eq!(v["groupLabels"], json!({"alertname": "Down"}));
        assert_eq!(v["commonLabels"]["app"], "web");
        assert_eq!(v["alerts"][0]["startsAt"], "2023-11-14T22:13:20.000Z");
        assert_eq!(v["alerts"][0]["endsAt"], "0001-01-01T00:00:00Z");
        assert_eq!(v["incident"]["id"], "inc-1");
        assert_eq!(v["receiver"], "default/p/level-1");
    }
}
