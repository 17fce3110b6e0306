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

mod incidents;
mod notify;
mod rules;

use self::incidents::*;
pub use self::incidents::{acknowledge, resolve};
use self::notify::*;
pub use self::rules::builtin_rules;
use self::rules::*;

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

/// The namespace of a policy's key (`namespace/name`).
pub fn namespace_of_policy(key: &str) -> String {
    key.split_once('/').map_or(key, |(ns, _)| ns).to_string()
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
    /// Loads incidents and pending deliveries kept by a previous run. A read that fails is an error: starting
    /// empty would number new incidents from 1 again, over the ones kept.
    /// `external_url` is where people look (the query API's address until there is a dashboard).
    pub fn load(store: &Store, external_url: &str) -> Result<Alerting, capstan_store::StoreError> {
        let a = Alerting { external_url: external_url.trim_end_matches('/').to_string(), ..Default::default() };
        let mut max = 0u64;
        for (k, v) in store.records("incident/")? {
            if let Ok(i) = serde_json::from_value::<Incident>(v) {
                max = max.max(i.id.trim_start_matches("inc-").parse().unwrap_or(0));
                lock(&a.incidents).insert(k.trim_start_matches("incident/").to_string(), i);
            }
        }
        let mut max_delivery = 0u64;
        for (k, v) in store.records("delivery/")? {
            if let Ok(d) = serde_json::from_value::<Delivery>(v) {
                max_delivery = max_delivery.max(d.id.trim_start_matches("dlv-").parse().unwrap_or(0));
                lock(&a.deliveries).insert(k.trim_start_matches("delivery/").to_string(), d);
            }
        }
        a.incident_seq.store(max, std::sync::atomic::Ordering::Relaxed);
        a.delivery_seq.store(max_delivery, std::sync::atomic::Ordering::Relaxed);
        Ok(a)
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
    /// The namespace of an incident: its escalation policy's.
    pub fn incident_namespace(&self, id: &str) -> Option<String> {
        lock(&self.incidents).get(id).map(|i| namespace_of_policy(&i.policy))
    }

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
        Value::Object(serde_json::Map::from_iter([("items".to_string(), Value::Array(items))]))
    }
}

/// What acknowledging or resolving by hand did.
#[derive(Debug, PartialEq, Eq)]
pub enum ManualOutcome {
    Done,
    NotFound,
    /// Already in that state (or past it).
    NoChange(&'static str),
    /// The store could not be read; nothing changed.
    Unavailable(String),
}

/// Starts the alerting clock on the shared runner: every 500 ms, rules due are evaluated (within `limits`: a rule
/// that exceeds them is marked unhealthy with the reason), incidents escalate, and the outbox is delivered.
pub fn spawn(
    store: Store,
    db: Arc<Tsdb>,
    alerting: Arc<Alerting>,
    limits: QueryLimits,
) -> capstan_engine::runner::Handle {
    let client = reqwest::Client::builder().no_proxy().timeout(Duration::from_secs(10)).build().unwrap_or_default();
    capstan_engine::runner::every(Evaluator {
        store,
        db,
        alerting,
        limits,
        client,
        next_eval: HashMap::new(),
        alerts_series: HashSet::new(),
    })
}

/// What the alerting clock keeps between ticks.
struct Evaluator {
    store: Store,
    db: Arc<Tsdb>,
    alerting: Arc<Alerting>,
    limits: QueryLimits,
    client: reqwest::Client,
    /// When each rule is next due, in ms.
    next_eval: HashMap<String, i64>,
    /// The `ALERTS` series written last, so that those that end get a staleness marker.
    alerts_series: HashSet<Labels>,
}

impl capstan_engine::runner::Periodic for Evaluator {
    fn name(&self) -> &'static str {
        "alerting"
    }

    fn period(&self) -> Duration {
        Duration::from_millis(500)
    }

    async fn tick(&mut self) -> Result<(), capstan_engine::runner::ReconcileError> {
        let now = now_ms();
        let Evaluator { store, db, alerting, limits, client, next_eval, alerts_series } = self;
        evaluate_rules(store, db, alerting, limits, next_eval, alerts_series, now).await;
        escalate(store, alerting, now);
        deliver(store, alerting, client, now).await;
        Ok(())
    }
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
        let a = Alerting::load(&store, "http://127.0.0.1:7470").expect("load");
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
        let again = Alerting::load(&store, "http://127.0.0.1:7470").expect("load");
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
