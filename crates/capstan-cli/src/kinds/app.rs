//! An App's short form in `get` and `describe`; `get apps` and `describe app` have their own (`commands`).

use chrono::{DateTime, Utc};
use serde_json::Value;

use super::{first_line, ready_of};
use crate::commands::conditions_section;

pub fn columns() -> Vec<&'static str> {
    vec!["NAME", "READY", "STATUS", "RESTARTS", "AGE"]
}

pub fn cells(o: &Value) -> Vec<String> {
    let st = &o["status"];
    // `get apps` has its own rows (replicas, restarts, rollouts: `commands::app_row`); this is the short form.
    let (ready, message) = ready_of(o);
    vec![
        format!("{}/{}", st["readyReplicas"].as_i64().unwrap_or(0), o["spec"]["replicas"].as_i64().unwrap_or(1)),
        if ready == "True" { "Running".into() } else { first_line(&message, 40) },
        st["restarts"].as_u64().unwrap_or(0).to_string(),
    ]
}

/// No fields of its own here: `describe app` is `commands::describe`.
pub fn describe(o: &Value, now: DateTime<Utc>, out: &mut String) {
    out.push_str(&conditions_section(&o["status"], now));
}
