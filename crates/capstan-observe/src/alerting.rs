//! Alerting rules as Prometheus runs them, as a pure function of (previous alerts, query result, now):
//! pending → firing after `for`, `keep_firing_for`, resolved alerts kept for a while so their end is sent, and
//! annotation templates with `$labels` and `$value`.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::promql::{format_value, Sample};

/// How long a resolved alert is kept so notifiers learn of its end (Prometheus keeps them 15 minutes).
pub const RESOLVED_RETENTION_MS: i64 = 15 * 60 * 1000;

/// A rule's settings, durations in milliseconds.
#[derive(Debug, Clone, PartialEq)]
pub struct RuleParams {
    pub alertname: String,
    pub for_ms: i64,
    pub keep_firing_for_ms: i64,
    pub labels: BTreeMap<String, String>,
    pub annotations: BTreeMap<String, String>,
    /// Given to each alert as its `generatorURL`.
    pub generator_url: String,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum State {
    Pending,
    Firing,
    /// Resolved: the condition stopped holding.
    Inactive,
}

impl State {
    pub fn as_str(self) -> &'static str {
        match self {
            State::Pending => "pending",
            State::Firing => "firing",
            State::Inactive => "inactive",
        }
    }
}

/// One alert of a rule.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Alert {
    pub labels: BTreeMap<String, String>,
    pub annotations: BTreeMap<String, String>,
    pub state: State,
    /// When the condition started holding (ms).
    pub active_at: i64,
    pub fired_at: Option<i64>,
    pub resolved_at: Option<i64>,
    /// The last evaluation at which the condition held.
    pub last_seen: i64,
    pub value: f64,
    /// Where the alert's expression can be queried (Prometheus' `generatorURL`).
    #[serde(default)]
    pub generator_url: String,
}

/// The series that keeps when each active alert became active (Prometheus' `ALERTS_FOR_STATE`), so a restart
/// restores it.
pub const FOR_STATE_METRIC: &str = "ALERTS_FOR_STATE";

/// How old a kept `ALERTS_FOR_STATE` sample may be and still be restored (Prometheus' outage tolerance).
pub const OUTAGE_TOLERANCE_MS: i64 = 60 * 60 * 1000;

/// After a restart, gives the alerts a rule's first evaluation found the time they became active before it, from
/// `kept` (the last `ALERTS_FOR_STATE` sample of an alert's labels: its time in ms and its value, the active time in
/// seconds). An alert already active for its `for` fires at once; `startsAt` stays what receivers saw.
pub fn restore(
    rule: &RuleParams,
    alerts: &mut [Alert],
    kept: impl Fn(&BTreeMap<String, String>) -> Option<(i64, f64)>,
    now: i64,
) {
    for a in alerts.iter_mut().filter(|a| a.state != State::Inactive) {
        let Some((t, v)) = kept(&a.labels) else { continue };
        if !v.is_finite() || now - t > OUTAGE_TOLERANCE_MS {
            continue;
        }
        let active_at = (v * 1000.0).round() as i64;
        if active_at >= a.active_at {
            continue;
        }
        a.active_at = active_at;
        if now - active_at >= rule.for_ms {
            a.state = State::Firing;
            a.fired_at.get_or_insert(now);
        }
    }
}

/// Why an evaluation produced no alerts.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum RuleError {
    #[error("vector contains metrics with the same labelset after applying alert labels: {0:?}")]
    DuplicateLabels(BTreeMap<String, String>),
}

/// Fills `{{ $labels.name }}`, `{{ $value }}`, `{{ $value | humanize }}` and `{{ printf "%.2f" $value }}`.
pub fn expand(template: &str, labels: &BTreeMap<String, String>, value: f64) -> String {
    let mut out = String::new();
    let mut rest = template;
    while let Some(start) = rest.find("{{") {
        out.push_str(&rest[..start]);
        let Some(end) = rest[start..].find("}}") else {
            out.push_str(&rest[start..]);
            return out;
        };
        let inner = rest[start + 2..start + end].trim();
        let replaced = if let Some(name) = inner.strip_prefix("$labels.") {
            Some(labels.get(name.trim()).cloned().unwrap_or_default())
        } else if inner == "$value" {
            Some(format_value(value))
        } else if inner == "$value | humanize" || inner == "humanize $value" {
            Some(humanize(value))
        } else if let Some(fmt) = inner.strip_prefix("printf \"%.").and_then(|f| f.strip_suffix("f\" $value")) {
            fmt.parse::<usize>().ok().map(|p| format!("{value:.p$}"))
        } else {
            None
        };
        match replaced {
            Some(r) => out.push_str(&r),
            None => out.push_str(&rest[start..start + end + 2]),
        }
        rest = &rest[start + end + 2..];
    }
    out.push_str(rest);
    out
}

/// Prometheus' `humanize`: SI prefixes, four significant digits.
pub fn humanize(v: f64) -> String {
    if v == 0.0 || !v.is_finite() {
        return format_value(v);
    }
    let prefixes =
        [(1e24, "Y"), (1e21, "Z"), (1e18, "E"), (1e15, "P"), (1e12, "T"), (1e9, "G"), (1e6, "M"), (1e3, "k")];
    if v.abs() >= 1.0 {
        for (scale, p) in prefixes {
            if v.abs() >= scale {
                return format!("{}{p}", trim4(v / scale));
            }
        }
        return trim4(v);
    }
    for (scale, p) in [(1e-3, "m"), (1e-6, "u"), (1e-9, "n"), (1e-12, "p"), (1e-15, "f"), (1e-18, "a")] {
        if v.abs() >= scale {
            return format!("{}{p}", trim4(v / scale));
        }
    }
    trim4(v)
}

fn trim4(v: f64) -> String {
    let s = format!("{v:.4}");
    let digits = s.trim_start_matches('-').split('.').next().map_or(0, str::len);
    let s = format!("{v:.prec$}", prec = 4usize.saturating_sub(digits));
    if s.contains('.') {
        s.trim_end_matches('0').trim_end_matches('.').to_string()
    } else {
        s
    }
}

/// One evaluation: the alerts after it. `previous` is what the last evaluation returned.
pub fn evaluate(rule: &RuleParams, previous: &[Alert], result: &[Sample], now: i64) -> Result<Vec<Alert>, RuleError> {
    let mut seen: BTreeMap<BTreeMap<String, String>, (f64, BTreeMap<String, String>)> = BTreeMap::new();
    for s in result {
        let mut labels: BTreeMap<String, String> =
            s.labels.iter().filter(|(k, _)| *k != "__name__").map(|(k, v)| (k.to_string(), v.to_string())).collect();
        // Templates see the series' labels, as in Prometheus.
        let annotations: BTreeMap<String, String> =
            rule.annotations.iter().map(|(k, t)| (k.clone(), expand(t, &labels, s.v))).collect();
        for (k, v) in &rule.labels {
            let v = expand(v, &labels, s.v);
            if v.is_empty() {
                labels.remove(k);
            } else {
                labels.insert(k.clone(), v);
            }
        }
        labels.insert("alertname".into(), rule.alertname.clone());
        if seen.insert(labels.clone(), (s.v, annotations)).is_some() {
            return Err(RuleError::DuplicateLabels(labels));
        }
    }
    let mut out = Vec::new();
    for (labels, (value, annotations)) in &seen {
        let prev = previous.iter().find(|a| a.labels == *labels && a.state != State::Inactive);
        let mut a = match prev {
            Some(p) => p.clone(),
            None => Alert {
                labels: labels.clone(),
                annotations: BTreeMap::new(),
                state: State::Pending,
                active_at: now,
                fired_at: None,
                resolved_at: None,
                last_seen: now,
                value: *value,
                generator_url: rule.generator_url.clone(),
            },
        };
        a.value = *value;
        a.annotations = annotations.clone();
        a.last_seen = now;
        if a.state == State::Pending && now - a.active_at >= rule.for_ms {
            a.state = State::Firing;
            a.fired_at = Some(now);
        }
        out.push(a);
    }
    for p in previous {
        if seen.contains_key(&p.labels) && p.state != State::Inactive {
            continue;
        }
        match p.state {
            // A pending alert whose condition stopped holding is forgotten.
            State::Pending => {}
            State::Firing => {
                let mut a = p.clone();
                if rule.keep_firing_for_ms > 0 && now - p.last_seen < rule.keep_firing_for_ms {
                    out.push(a);
                } else {
                    a.state = State::Inactive;
                    a.resolved_at = Some(now);
                    out.push(a);
                }
            }
            State::Inactive => {
                let returned = seen.contains_key(&p.labels);
                if !returned && p.resolved_at.is_some_and(|r| now - r < RESOLVED_RETENTION_MS) {
                    out.push(p.clone());
                }
            }
        }
    }
    out.sort_by(|a, b| a.labels.cmp(&b.labels).then(a.active_at.cmp(&b.active_at)));
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::tsdb::Labels;

    fn rule(for_s: i64, keep_s: i64) -> RuleParams {
        RuleParams {
            alertname: "HighLatency".into(),
            for_ms: for_s * 1000,
            keep_firing_for_ms: keep_s * 1000,
            labels: BTreeMap::from([("severity".to_string(), "page".to_string())]),
            annotations: BTreeMap::from([(
                "summary".to_string(),
                "{{ $labels.app }} at {{ $value }}s ({{ printf \"%.1f\" $value }})".to_string(),
            )]),
            generator_url: "http://127.0.0.1:7470/api/v1/query?query=up".into(),
        }
    }

    fn sample(app: &str, v: f64) -> Sample {
        Sample { labels: Labels::new([("__name__", "lat"), ("app", app)]), v }
    }

    fn states(a: &[Alert]) -> Vec<(&str, State)> {
        a.iter().map(|x| (x.labels["app"].as_str(), x.state)).collect()
    }

    #[test]
    fn pending_then_firing_then_resolved() {
        let r = rule(60, 0);
        let a = evaluate(&r, &[], &[sample("web", 2.5)], 0).expect("eval");
        assert_eq!(states(&a), [("web", State::Pending)]);
        assert_eq!(a[0].annotations["summary"], "web at 2.5s (2.5)");
        assert_eq!(a[0].labels["alertname"], "HighLatency");
        assert_eq!(a[0].labels["severity"], "page");
        assert!(!a[0].labels.contains_key("__name__"));
        let a = evaluate(&r, &a, &[sample("web", 3.0)], 59_999).expect("eval");
        assert_eq!(states(&a), [("web", State::Pending)]);
        let a = evaluate(&r, &a, &[sample("web", 3.0)], 60_000).expect("eval");
        assert_eq!(states(&a), [("web", State::Firing)]);
        assert_eq!((a[0].active_at, a[0].fired_at), (0, Some(60_000)));
        let a = evaluate(&r, &a, &[], 75_000).expect("eval");
        assert_eq!(states(&a), [("web", State::Inactive)]);
        assert_eq!(a[0].resolved_at, Some(75_000));
        // Kept for 15 minutes, then forgotten; a return is a new alert.
        let a = evaluate(&r, &a, &[], 75_000 + RESOLVED_RETENTION_MS - 1).expect("eval");
        assert_eq!(a.len(), 1);
        let again = evaluate(&r, &a, &[sample("web", 9.0)], 80_000).expect("eval");
        assert_eq!(states(&again), [("web", State::Pending)]);
        assert_eq!(again[0].active_at, 80_000);
        assert!(evaluate(&r, &a, &[], 75_000 + RESOLVED_RETENTION_MS).expect("eval").is_empty());
    }

    #[test]
    fn a_pending_alert_that_stops_is_forgotten_and_for_zero_fires_at_once() {
        let r = rule(60, 0);
        let a = evaluate(&r, &[], &[sample("web", 1.0)], 0).expect("eval");
        assert!(evaluate(&r, &a, &[], 15_000).expect("eval").is_empty());
        let a = evaluate(&rule(0, 0), &[], &[sample("web", 1.0)], 0).expect("eval");
        assert_eq!(states(&a), [("web", State::Firing)]);
    }

    #[test]
    fn keep_firing_for_holds_a_flapping_alert() {
        let r = rule(0, 120);
        let a = evaluate(&r, &[], &[sample("db", 1.0)], 0).expect("eval");
        let a = evaluate(&r, &a, &[], 60_000).expect("eval");
        assert_eq!(states(&a), [("db", State::Firing)]);
        let a = evaluate(&r, &a, &[], 120_000).expect("eval");
        assert_eq!(states(&a), [("db", State::Inactive)]);
    }

    #[test]
    fn duplicate_label_sets_are_an_error() {
        let r = RuleParams { labels: BTreeMap::from([("app".to_string(), "x".to_string())]), ..rule(0, 0) };
        let e = evaluate(&r, &[], &[sample("a", 1.0), sample("b", 1.0)], 0).unwrap_err();
        assert!(e.to_string().contains("same labelset"), "{e}");
    }

    #[test]
    fn templates_and_humanize() {
        let l = BTreeMap::from([("instance".to_string(), "h1".to_string())]);
        assert_eq!(
            expand("{{$labels.instance}} {{ $labels.missing }}|{{ $value | humanize }}", &l, 1234567.0),
            "h1 |1.235M"
        );
        assert_eq!(expand("{{ unknown }} stays", &l, 1.0), "{{ unknown }} stays");
        assert_eq!(humanize(0.0123), "12.3m");
        assert_eq!(humanize(12.0), "12");
    }

    /// Issue 20, item 6: after a restart, an alert keeps the active time `ALERTS_FOR_STATE` kept, and one active for
    /// its `for` fires at once; a sample older than the outage tolerance, or a stale marker, restores nothing.
    #[test]
    fn a_restart_restores_when_alerts_became_active() {
        let r = rule(60, 0);
        let labels = BTreeMap::from([("alertname".to_string(), "HighLatency".to_string())]);
        let fresh = |now: i64| Alert {
            labels: labels.clone(),
            annotations: BTreeMap::new(),
            state: State::Pending,
            active_at: now,
            fired_at: None,
            resolved_at: None,
            last_seen: now,
            value: 1.0,
            generator_url: String::new(),
        };
        let now = 10_000_000;
        let mut a = vec![fresh(now)];
        restore(&r, &mut a, |_| Some((now - 20_000, (now - 300_000) as f64 / 1000.0)), now);
        assert_eq!((a[0].active_at, a[0].state, a[0].fired_at), (now - 300_000, State::Firing, Some(now)));
        let mut a = vec![fresh(now)];
        restore(&r, &mut a, |_| Some((now - 20_000, (now - 30_000) as f64 / 1000.0)), now);
        assert_eq!((a[0].active_at, a[0].state), (now - 30_000, State::Pending), "not yet for its `for`");
        let mut a = vec![fresh(now)];
        restore(&r, &mut a, |_| Some((now - OUTAGE_TOLERANCE_MS - 1, 1.0)), now);
        assert_eq!(a[0].active_at, now);
        restore(&r, &mut a, |_| Some((now - 1_000, crate::tsdb::stale_nan())), now);
        assert_eq!(a[0].active_at, now);
    }
}
