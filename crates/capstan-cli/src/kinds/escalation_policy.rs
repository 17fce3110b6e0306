//! An EscalationPolicy in `get` and `describe`: which alerts it takes, and who is told at each level.

use chrono::{DateTime, Utc};
use serde_json::Value;

use crate::commands::{conditions_section, indent};
use crate::output::table;

pub fn columns() -> Vec<&'static str> {
    vec!["NAME", "MATCH", "LEVELS", "REPEAT", "AGE"]
}

pub fn cells(o: &Value) -> Vec<String> {
    let m: Vec<String> = o["spec"]["match"]
        .as_object()
        .into_iter()
        .flatten()
        .map(|(k, v)| format!("{k}={}", v.as_str().unwrap_or("")))
        .collect();
    vec![
        if m.is_empty() { "<every alert>".into() } else { m.join(",") },
        o["spec"]["levels"].as_array().map_or(0, Vec::len).to_string(),
        o["spec"]["repeat"].as_u64().unwrap_or(0).to_string(),
    ]
}

/// One notification target in words: `webhook http://…`, `email a@b via relay:25`.
fn target_text(kind: &str, v: &Value) -> String {
    let s = |v: &Value| v.as_str().unwrap_or("").to_string();
    match kind {
        "command" => {
            let argv: Vec<String> = v["command"].as_array().into_iter().flatten().map(s).collect();
            format!("command {}", argv.join(" "))
        }
        "email" => {
            let to: Vec<String> = v["to"].as_array().into_iter().flatten().map(s).collect();
            format!("email {} via {}", to.join(", "), s(&v["smarthost"]))
        }
        other => format!("{other} {}", s(&v["url"])),
    }
}

pub fn describe(o: &Value, now: DateTime<Utc>, out: &mut String) {
    let spec = &o["spec"];
    let st = &o["status"];
    let mut field = |k: &str, v: String| super::put_field(out, k, v);
    let s = |v: &Value| v.as_str().unwrap_or("").to_string();
    let m: Vec<String> =
        spec["match"].as_object().into_iter().flatten().map(|(k, v)| format!("{k}={}", s(v))).collect();
    field("Match", if m.is_empty() { "<every alert>".into() } else { m.join(", ") });
    let group: Vec<String> = spec["groupBy"].as_array().into_iter().flatten().map(s).collect();
    field("Group by", group.join(", "));
    field("Repeat", spec["repeat"].as_u64().unwrap_or(0).to_string());
    field("Acknowledge timeout", spec["acknowledgeTimeout"].as_str().unwrap_or("never").to_string());
    field("Open incidents", st["openIncidents"].as_u64().unwrap_or(0).to_string());
    let rows: Vec<Vec<String>> = spec["levels"]
        .as_array()
        .into_iter()
        .flatten()
        .enumerate()
        .map(|(i, l)| {
            let targets: Vec<String> = l["targets"]
                .as_array()
                .into_iter()
                .flatten()
                .filter_map(|t| t.as_object()?.iter().next().map(|(k, v)| target_text(k, v)))
                .collect();
            vec![(i + 1).to_string(), s(&l["after"]), targets.join("; ")]
        })
        .collect();
    out.push_str("Levels:\n");
    out.push_str(&indent(&table(&["LEVEL", "AFTER", "TARGETS"], &rows)));
    out.push_str(&conditions_section(st, now));
}

#[cfg(test)]
mod tests {
    use capstan_model::Kind;
    use chrono::Utc;
    use serde_json::json;

    use crate::kinds::describe;

    #[test]
    fn an_escalation_policy_lists_its_levels() {
        let o = json!({
            "metadata": {"name": "oncall", "namespace": "default"},
            "spec": {"groupBy": ["alertname"], "levels": [
                {"after": "5m", "targets": [{"webhook": {"url": "http://127.0.0.1:9/hook"}}]},
                {"after": "10m", "targets": [{"email": {"to": ["ops@example.com"], "smarthost": "127.0.0.1:25"}}]}]},
        });
        let text = describe(Kind::EscalationPolicy, &o, &json!({"items": []}), Utc::now());
        assert!(text.contains("Match:            <every alert>"), "{text}");
        assert!(text.contains("webhook http://127.0.0.1:9/hook"), "{text}");
        assert!(text.contains("email ops@example.com via 127.0.0.1:25"), "{text}");
        assert!(!text.contains("Source:"), "{text}");
    }
}
