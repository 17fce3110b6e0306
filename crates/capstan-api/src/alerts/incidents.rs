//! Incidents: alerts grouped by escalation policy, opened, escalated, acknowledged and resolved, kept in the store,
//! with their notifications put in the outbox.

use super::*;

pub(super) fn policies(store: &Store) -> Result<Vec<Policy>, capstan_store::StoreError> {
    Ok(store
        .list("EscalationPolicy", None)?
        .into_iter()
        .filter_map(|v| match Resource::from_value(v) {
            Ok(Resource::EscalationPolicy(p)) => {
                Some(Policy::new(format!("{}/{}", p.metadata.namespace(), p.metadata.name), p.spec))
            }
            _ => None,
        })
        .collect())
}

pub(super) fn persist_incident(store: &Store, i: &Incident) {
    if let Ok(v) = serde_json::to_value(i) {
        if let Err(e) = store.put_record(&format!("incident/{}", i.id), &v) {
            tracing::warn!(incident = %i.id, "cannot save the incident: {e}");
        }
    }
}

pub(super) fn enqueue(store: &Store, alerting: &Alerting, incident: &Incident, notes: Vec<Notification>, now: i64) {
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
pub(super) fn escalate(store: &Store, alerting: &Alerting, now: i64) {
    let all_alerts: Vec<Alert> = lock(&alerting.rules).values().flat_map(|(_, v)| v.iter().cloned()).collect();
    // Policies that cannot be read are not "no policies": incidents stay as they are until the next round.
    let policies = match policies(store) {
        Ok(p) => p,
        Err(e) => {
            tracing::warn!("reading EscalationPolicies (incidents wait for the next round): {e}");
            return;
        }
    };
    for policy in policies {
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
    let policy = match policies(store) {
        Ok(p) => p.into_iter().find(|p| p.key == policy_key),
        Err(e) => return ManualOutcome::Unavailable(e.to_string()),
    };
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
