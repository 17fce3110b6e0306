//! An AlertRule in `get` and `describe`: its expression, its health and the alerts it holds open.

use chrono::{DateTime, Utc};
use serde_json::Value;

use super::first_line;
use crate::commands::{conditions_section, indent};
use crate::output::{age, table, time_of};

pub fn columns() -> Vec<&'static str> {
    vec!["NAME", "HEALTH", "PENDING", "FIRING", "EXPR", "AGE"]
}

pub fn cells(o: &Value) -> Vec<String> {
    let st = &o["status"];
    let health = st["health"].as_str().filter(|h| !h.is_empty()).unwrap_or("unknown");
    let health = match st["lastError"].as_str() {
        Some(e) => format!("{health}: {}", first_line(e, 50)),
        None => health.to_string(),
    };
    let alerts = st["alerts"].as_array().cloned().unwrap_or_default();
    let count = |state: &str| alerts.iter().filter(|a| a["state"] == state).count().to_string();
    vec![health, count("pending"), count("firing"), first_line(o["spec"]["expr"].as_str().unwrap_or(""), 50)]
}

pub fn describe(o: &Value, now: DateTime<Utc>, out: &mut String) {
    let md = &o["metadata"];
    let spec = &o["spec"];
    let st = &o["status"];
    let mut field = |k: &str, v: String| super::put_field(out, k, v);
    let s = |v: &Value| v.as_str().unwrap_or("").to_string();
    let pairs = |v: &Value| -> String {
        let p: Vec<String> = v.as_object().into_iter().flatten().map(|(k, v)| format!("{k}={}", s(v))).collect();
        if p.is_empty() {
            "-".into()
        } else {
            p.join(", ")
        }
    };
    field("Alert", spec["alert"].as_str().unwrap_or(s(&md["name"]).as_str()).to_string());
    field("Expression", s(&spec["expr"]));
    field("For", spec["for"].as_str().unwrap_or("0s").to_string());
    field("Keep firing for", spec["keepFiringFor"].as_str().unwrap_or("0s").to_string());
    field("Interval", spec["interval"].as_str().unwrap_or("15s").to_string());
    field("Labels", pairs(&spec["labels"]));
    field("Annotations", pairs(&spec["annotations"]));
    field("Health", st["health"].as_str().filter(|h| !h.is_empty()).unwrap_or("unknown").to_string());
    field("Last error", s(&st["lastError"]));
    let rows: Vec<Vec<String>> = st["alerts"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|a| {
            let since = time_of(&a["activeAt"]);
            vec![s(&a["state"]), format!("{} ago", age(since, now)), s(&a["value"]), pairs(&a["labels"])]
        })
        .collect();
    out.push_str("Alerts:\n");
    out.push_str(&indent(&table(&["STATE", "ACTIVE FOR", "VALUE", "LABELS"], &rows)));
    out.push_str(&conditions_section(st, now));
}

#[cfg(test)]
mod tests {
    use capstan_model::Kind;
    use chrono::{DateTime, Utc};
    use serde_json::json;

    use crate::kinds::describe;

    fn at(s: &str) -> DateTime<Utc> {
        DateTime::parse_from_rfc3339(s).map(|t| t.with_timezone(&Utc)).unwrap_or_default()
    }

    /// Issue 20, polish: an AlertRule is described by its expression, health and alerts, not a Sync's fields.
    #[test]
    fn an_alert_rule_is_described_by_its_expression_and_alerts() {
        let o = json!({
            "metadata": {"name": "cart-up", "namespace": "default", "creationTimestamp": "2026-12-06T10:00:00Z"},
            "spec": {"expr": "up == 0", "for": "1m", "labels": {"severity": "page"}},
            "status": {"health": "ok", "alerts": [{"state": "firing", "activeAt": "2026-12-06T10:55:00Z",
                       "value": "0", "labels": {"alertname": "cart-up", "app": "cart"}}]}
        });
        let text = describe(Kind::AlertRule, &o, &json!({"items": []}), at("2026-12-06T11:00:00Z"));
        assert!(text.contains("Expression:       up == 0"), "{text}");
        assert!(text.contains("For:              1m") && text.contains("Health:           ok"), "{text}");
        assert!(text.contains("firing") && text.contains("5m ago") && text.contains("app=cart"), "{text}");
        assert!(!text.contains("Source:") && !text.contains("Prune:"), "no Sync fields: {text}");
    }
}
