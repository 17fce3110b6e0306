//! Incidents and their escalation as pure functions of (incident, policy, firing alerts, now): alerts grouped by
//! labels open an incident; unacknowledged, it climbs the policy's levels and repeats; an acknowledgement stops
//! it until its timeout; it resolves when its alerts do (or by hand). Every notification to send is returned.

use std::collections::BTreeMap;

use capstan_model::alerting::{EscalationPolicySpec, NotifyTarget};
use capstan_model::parse_duration;
use serde::{Deserialize, Serialize};

use crate::alerting::{Alert, State};

/// How often alerts of an open incident are re-sent to an Alertmanager (Prometheus resends every minute).
pub const ALERTMANAGER_RESEND_MS: i64 = 60_000;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum IncidentState {
    Triggered,
    Acknowledged,
    Resolved,
}

impl IncidentState {
    pub fn as_str(self) -> &'static str {
        match self {
            IncidentState::Triggered => "triggered",
            IncidentState::Acknowledged => "acknowledged",
            IncidentState::Resolved => "resolved",
        }
    }
}

/// One line of an incident's history.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LogEntry {
    pub at: i64,
    pub message: String,
}

/// An incident: a group of alerts handled by one policy.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Incident {
    pub id: String,
    /// `namespace/name` of the policy.
    pub policy: String,
    /// The values of the policy's `groupBy` labels.
    pub group: BTreeMap<String, String>,
    pub state: IncidentState,
    pub alerts: Vec<Alert>,
    pub created_at: i64,
    /// The level told last, and how many times the list was gone through.
    pub level: usize,
    pub round: u32,
    /// When the next level is told, if nobody acknowledges.
    pub next_at: Option<i64>,
    pub acknowledged_at: Option<i64>,
    pub acknowledged_by: Option<String>,
    pub resolved_at: Option<i64>,
    /// The highest level told, so the resolution reaches everyone who heard of it.
    pub max_level: usize,
    pub alertmanager_sent_at: Option<i64>,
    pub log: Vec<LogEntry>,
}

/// Why a notification is sent.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Reason {
    Triggered,
    Escalated,
    Retriggered,
    Resolved,
    /// The periodic resend of firing alerts to an Alertmanager.
    Refresh,
}

/// A notification to deliver.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Notification {
    pub incident: String,
    pub level: usize,
    pub target: NotifyTarget,
    pub reason: Reason,
}

/// A policy with its durations parsed.
#[derive(Debug, Clone)]
pub struct Policy {
    pub key: String,
    pub spec: EscalationPolicySpec,
    after_ms: Vec<i64>,
    ack_timeout_ms: Option<i64>,
}

impl Policy {
    pub fn new(key: String, spec: EscalationPolicySpec) -> Policy {
        let ms = |s: &str| parse_duration(s).map_or(300_000, |d| d.as_millis() as i64);
        let after_ms = spec.levels.iter().map(|l| ms(&l.after)).collect();
        let ack_timeout_ms = spec.acknowledge_timeout.as_deref().map(ms);
        Policy { key, spec, after_ms, ack_timeout_ms }
    }

    /// Whether an alert is this policy's.
    pub fn matches(&self, a: &Alert) -> bool {
        self.spec.r#match.iter().all(|(k, v)| a.labels.get(k) == Some(v))
    }

    /// The incident group of an alert.
    pub fn group_of(&self, a: &Alert) -> BTreeMap<String, String> {
        self.spec.group_by.iter().map(|k| (k.clone(), a.labels.get(k).cloned().unwrap_or_default())).collect()
    }

    fn tell(&self, id: &str, level: usize, reason: Reason, only_alertmanager: bool) -> Vec<Notification> {
        self.spec
            .levels
            .get(level)
            .map(|l| {
                l.targets
                    .iter()
                    .filter(|t| !only_alertmanager || matches!(t, NotifyTarget::Alertmanager { .. }))
                    .map(|t| Notification { incident: id.to_string(), level, target: t.clone(), reason })
                    .collect()
            })
            .unwrap_or_default()
    }

    fn tell_up_to(&self, id: &str, max_level: usize, reason: Reason, only_alertmanager: bool) -> Vec<Notification> {
        (0..=max_level.min(self.spec.levels.len().saturating_sub(1)))
            .flat_map(|l| self.tell(id, l, reason, only_alertmanager))
            .collect()
    }
}

fn log(i: &mut Incident, at: i64, message: String) {
    i.log.push(LogEntry { at, message });
}

/// Opens an incident for firing alerts of one group; returns it and the first notifications.
pub fn open(
    policy: &Policy,
    id: String,
    group: BTreeMap<String, String>,
    alerts: Vec<Alert>,
    now: i64,
) -> (Incident, Vec<Notification>) {
    let mut i = Incident {
        id: id.clone(),
        policy: policy.key.clone(),
        group,
        state: IncidentState::Triggered,
        alerts,
        created_at: now,
        level: 0,
        round: 0,
        next_at: policy.after_ms.first().map(|d| now + d),
        acknowledged_at: None,
        acknowledged_by: None,
        resolved_at: None,
        max_level: 0,
        alertmanager_sent_at: Some(now),
        log: Vec::new(),
    };
    log(&mut i, now, "triggered; level 1 notified".into());
    (i, policy.tell(&id, 0, Reason::Triggered, false))
}

/// Advances an open incident to `now` with its group's current alerts (firing or recently resolved).
pub fn step(policy: &Policy, i: &mut Incident, alerts: Vec<Alert>, now: i64) -> Vec<Notification> {
    if i.state == IncidentState::Resolved {
        return Vec::new();
    }
    if !alerts.is_empty() {
        i.alerts = alerts;
    }
    let firing = i.alerts.iter().any(|a| a.state == State::Firing);
    if !firing {
        i.state = IncidentState::Resolved;
        i.resolved_at = Some(now);
        i.next_at = None;
        log(i, now, "resolved: its alerts stopped firing".into());
        return policy.tell_up_to(&i.id, i.max_level, Reason::Resolved, false);
    }
    let mut out = Vec::new();
    match i.state {
        IncidentState::Triggered => {
            if let Some(next) = i.next_at.filter(|n| now >= *n) {
                let levels = policy.spec.levels.len();
                let (level, round) = if i.level + 1 < levels {
                    (i.level + 1, i.round)
                } else if i.round < policy.spec.repeat {
                    (0, i.round + 1)
                } else {
                    (usize::MAX, i.round)
                };
                if level == usize::MAX {
                    i.next_at = None;
                    log(i, now, "unacknowledged after the last level; no more escalation".into());
                } else {
                    i.level = level;
                    i.round = round;
                    i.max_level = i.max_level.max(level);
                    // From the time it was due, so a late tick does not stretch the schedule.
                    i.next_at = Some(next.max(now - 1_000) + policy.after_ms[level]);
                    log(i, now, format!("unacknowledged; escalated to level {} (round {})", level + 1, round + 1));
                    out.extend(policy.tell(&i.id, level, Reason::Escalated, false));
                }
            }
        }
        IncidentState::Acknowledged => {
            if let (Some(t), Some(at)) = (policy.ack_timeout_ms, i.acknowledged_at) {
                if now >= at + t {
                    i.state = IncidentState::Triggered;
                    i.level = 0;
                    i.round = 0;
                    i.acknowledged_at = None;
                    i.next_at = policy.after_ms.first().map(|d| now + d);
                    log(i, now, "acknowledgement timed out; triggered again".into());
                    out.extend(policy.tell(&i.id, 0, Reason::Retriggered, false));
                }
            }
        }
        IncidentState::Resolved => {}
    }
    if i.alertmanager_sent_at.is_none_or(|t| now - t >= ALERTMANAGER_RESEND_MS) {
        i.alertmanager_sent_at = Some(now);
        let refresh: Vec<Notification> = policy
            .tell_up_to(&i.id, i.max_level, Reason::Refresh, true)
            .into_iter()
            .filter(|n| !out.iter().any(|o| o.target == n.target))
            .collect();
        out.extend(refresh);
    }
    out
}

/// Acknowledges: escalation stops (until the acknowledgement times out).
pub fn acknowledge(i: &mut Incident, who: &str, now: i64) -> bool {
    if i.state != IncidentState::Triggered {
        return false;
    }
    i.state = IncidentState::Acknowledged;
    i.acknowledged_at = Some(now);
    i.acknowledged_by = Some(who.to_string());
    i.next_at = None;
    log(i, now, format!("acknowledged by {who}"));
    true
}

/// Resolves by hand; everyone told so far hears of it.
pub fn resolve(policy: &Policy, i: &mut Incident, who: &str, now: i64) -> Vec<Notification> {
    if i.state == IncidentState::Resolved {
        return Vec::new();
    }
    i.state = IncidentState::Resolved;
    i.resolved_at = Some(now);
    i.next_at = None;
    log(i, now, format!("resolved by {who}"));
    policy.tell_up_to(&i.id, i.max_level, Reason::Resolved, false)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn policy(repeat: u32, ack_timeout: Option<&str>) -> Policy {
        let spec: EscalationPolicySpec = serde_json::from_value(serde_json::json!({
            "groupBy": ["alertname", "app"],
            "match": {"severity": "page"},
            "levels": [
                {"targets": [{"webhook": {"url": "http://127.0.0.1:1/oncall"}}, {"alertmanager": {"url": "http://127.0.0.1:9093"}}], "after": "5m"},
                {"targets": [{"webhook": {"url": "http://127.0.0.1:1/team"}}], "after": "10m"},
            ],
            "repeat": repeat,
            "acknowledgeTimeout": ack_timeout,
        }))
        .expect("policy");
        Policy::new("default/oncall".into(), spec)
    }

    fn alert(state: State) -> Alert {
        Alert {
            labels: BTreeMap::from([
                ("alertname".to_string(), "Down".to_string()),
                ("app".to_string(), "web".to_string()),
                ("severity".to_string(), "page".to_string()),
            ]),
            annotations: BTreeMap::new(),
            state,
            active_at: 0,
            fired_at: Some(0),
            resolved_at: None,
            last_seen: 0,
            value: 1.0,
            generator_url: String::new(),
        }
    }

    fn urls(n: &[Notification]) -> Vec<String> {
        n.iter()
            .map(|x| match &x.target {
                NotifyTarget::Webhook { url } | NotifyTarget::Alertmanager { url } => format!("{:?}:{url}", x.reason),
                other => format!("{other:?}"),
            })
            .collect()
    }

    const MIN: i64 = 60_000;

    #[test]
    fn unacknowledged_incidents_climb_the_levels_and_repeat() {
        let p = policy(1, None);
        assert!(p.matches(&alert(State::Firing)));
        let (mut i, n) = open(&p, "i1".into(), p.group_of(&alert(State::Firing)), vec![alert(State::Firing)], 0);
        assert_eq!(urls(&n), ["Triggered:http://127.0.0.1:1/oncall", "Triggered:http://127.0.0.1:9093"]);
        assert_eq!(i.group.len(), 2);
        // Nothing before the delay (the Alertmanager refresh comes each minute).
        let n = step(&p, &mut i, vec![alert(State::Firing)], 4 * MIN);
        assert_eq!(urls(&n), ["Refresh:http://127.0.0.1:9093"]);
        let n = step(&p, &mut i, vec![alert(State::Firing)], 5 * MIN);
        assert_eq!(urls(&n), ["Escalated:http://127.0.0.1:1/team", "Refresh:http://127.0.0.1:9093"]);
        assert_eq!(i.level, 1);
        // After the last level, the list repeats once.
        let n = step(&p, &mut i, vec![alert(State::Firing)], 15 * MIN);
        assert_eq!(urls(&n)[..2], ["Escalated:http://127.0.0.1:1/oncall", "Escalated:http://127.0.0.1:9093"]);
        assert_eq!((i.level, i.round), (0, 1));
        let n = step(&p, &mut i, vec![alert(State::Firing)], 20 * MIN);
        assert_eq!(urls(&n)[0], "Escalated:http://127.0.0.1:1/team");
        let n = step(&p, &mut i, vec![alert(State::Firing)], 30 * MIN);
        assert!(urls(&n).iter().all(|u| u.starts_with("Refresh")), "no more escalation: {n:?}");
        assert_eq!(i.next_at, None);
        // Resolution reaches every level that was told.
        let n = step(&p, &mut i, vec![alert(State::Inactive)], 31 * MIN);
        assert_eq!(i.state, IncidentState::Resolved);
        assert_eq!(
            urls(&n),
            [
                "Resolved:http://127.0.0.1:1/oncall",
                "Resolved:http://127.0.0.1:9093",
                "Resolved:http://127.0.0.1:1/team"
            ]
        );
        assert!(step(&p, &mut i, vec![alert(State::Firing)], 32 * MIN).is_empty());
    }

    #[test]
    fn acknowledgement_stops_escalation_until_it_times_out() {
        let p = policy(0, Some("30m"));
        let (mut i, _) = open(&p, "i2".into(), BTreeMap::new(), vec![alert(State::Firing)], 0);
        assert!(acknowledge(&mut i, "alice", 2 * MIN));
        assert!(!acknowledge(&mut i, "bob", 3 * MIN), "already acknowledged");
        let n = step(&p, &mut i, vec![alert(State::Firing)], 10 * MIN);
        assert!(n.iter().all(|x| x.reason == Reason::Refresh), "acknowledged: no escalation: {n:?}");
        let n = step(&p, &mut i, vec![alert(State::Firing)], 32 * MIN);
        assert_eq!(i.state, IncidentState::Triggered);
        assert_eq!(urls(&n)[..2], ["Retriggered:http://127.0.0.1:1/oncall", "Retriggered:http://127.0.0.1:9093"]);
        assert!(i.log.iter().any(|l| l.message.contains("acknowledged by alice")));
    }

    #[test]
    fn resolving_by_hand_tells_who_heard() {
        let p = policy(0, None);
        let (mut i, _) = open(&p, "i3".into(), BTreeMap::new(), vec![alert(State::Firing)], 0);
        let n = resolve(&p, &mut i, "carol", MIN);
        assert_eq!(n.len(), 2);
        assert_eq!(i.state, IncidentState::Resolved);
        assert!(resolve(&p, &mut i, "carol", 2 * MIN).is_empty());
        assert!(!acknowledge(&mut i, "dave", 3 * MIN));
    }

    #[test]
    fn alerts_outside_the_match_are_not_the_policys() {
        let p = policy(0, None);
        let mut a = alert(State::Firing);
        a.labels.insert("severity".into(), "ticket".into());
        assert!(!p.matches(&a));
    }
}
