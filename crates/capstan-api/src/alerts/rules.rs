//! Alert rules: Capstan's built-in ones and the AlertRules in the store, evaluated with the query limits; each
//! rule's alerts, their `ALERTS` and `ALERTS_FOR_STATE` series, and the restore after a restart.

use super::*;

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
        // Within 7 days of expiry, and its renewal failed or is an hour overdue: a renewal that should have happened
        // has not. (A short-lived certificate, Let's Encrypt's 6-day ones, is always within 7 days of expiry; renewed
        // on schedule, even while its renewal is under way, it is no news.)
        rule(
            "CapstanCertificateExpiringSoon",
            "(certmanager_certificate_expiration_timestamp_seconds - time() < 7 * 86400) and ((certmanager_certificate_renewal_timestamp_seconds < time() - 3600) or (capstan_certificate_issuance_failed == 1))",
            "0s",
            "Certificate {{ $labels.namespace }}/{{ $labels.name }} expires within 7 days and was not renewed",
        ),
        rule(
            "CapstanCertificateIssuanceFailing",
            "capstan_certificate_issuance_failed == 1",
            "10m",
            "the issuance of Certificate {{ $labels.namespace }}/{{ $labels.name }} has failed for 10 minutes",
        ),
    ]
}

pub(super) fn rule_params(name: &str, spec: &AlertRuleSpec, generator_url: String) -> RuleParams {
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
pub(super) fn for_state_labels(labels: &BTreeMap<String, String>) -> Labels {
    let mut pairs: Vec<(&str, &str)> = labels.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
    pairs.push(("__name__", alerting::FOR_STATE_METRIC));
    Labels::new(pairs)
}

pub(super) async fn evaluate_rules(
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
    // Rules that cannot be listed are not "no rules": their alerts would be dropped. This round waits.
    let stored = match store.list("AlertRule", None) {
        Ok(v) => v,
        Err(e) => {
            tracing::warn!("listing AlertRules (evaluation waits for the next round): {e}");
            return;
        }
    };
    for v in stored {
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
        let previous = lock(&alerting.rules).get(&id).map(|(_, a)| a.clone()).unwrap_or_default();
        let outcome = match result {
            Ok(Ok(PromValue::Vector(v))) => alerting::evaluate(&params, &previous, &v, now)
                .map(|mut alerts| {
                    // An alert that was active before Capstan restarted keeps its start, however late after the
                    // start its series come back (the first evaluation may see none yet): its ALERTS_FOR_STATE is
                    // finite only while it was active (an alert that ended wrote a stale marker), and an alert
                    // carried over from the last evaluation already has that start.
                    alerting::restore(&params, &mut alerts, |l| db.last(&for_state_labels(l)), now);
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
