//! A TrainingJob in `get` and `describe`: its state as TFJob's conditions tell it, and its tasks.

use chrono::{DateTime, Utc};
use serde_json::Value;

use crate::commands::{conditions_section, indent};
use crate::output::table;

pub fn columns() -> Vec<&'static str> {
    vec!["NAME", "STATE", "ACTIVE", "SUCCEEDED", "FAILED", "RESTARTS", "AGE"]
}

pub fn cells(o: &Value) -> Vec<String> {
    let st = &o["status"];
    // The latest of TFJob's conditions that holds.
    let state = ["Failed", "Succeeded", "Restarting", "Running", "Created"]
        .iter()
        .find(|t| {
            st["conditions"].as_array().is_some_and(|cs| cs.iter().any(|c| c["type"] == **t && c["status"] == "True"))
        })
        .copied()
        .unwrap_or("Pending");
    let sum = |f: &str| -> u64 {
        st["replicaStatuses"].as_object().map(|m| m.values().filter_map(|c| c[f].as_u64()).sum()).unwrap_or(0)
    };
    vec![
        state.to_string(),
        sum("active").to_string(),
        sum("succeeded").to_string(),
        sum("failed").to_string(),
        st["restarts"].as_u64().unwrap_or(0).to_string(),
    ]
}

pub fn describe(o: &Value, now: DateTime<Utc>, out: &mut String) {
    let spec = &o["spec"];
    let st = &o["status"];
    let mut field = |k: &str, v: String| super::put_field(out, k, v);
    let s = |v: &Value| v.as_str().unwrap_or("").to_string();
    let types: Vec<String> = spec["replicaSpecs"]
        .as_object()
        .into_iter()
        .flatten()
        .map(|(t, r)| format!("{t} ×{} ({})", r["replicas"], r["restartPolicy"].as_str().unwrap_or("Never")))
        .collect();
    field("Tasks", types.join(", "));
    field("Restart scope", spec["restartScope"].as_str().unwrap_or("Group").to_string());
    field("Success policy", spec["successPolicy"].as_str().unwrap_or("Default").to_string());
    field("Started", s(&st["startTime"]));
    field("Completed", s(&st["completionTime"]));
    field(
        "Restarts",
        format!("{} (group restarts: {})", st["restarts"].as_u64().unwrap_or(0), st["attempt"].as_u64().unwrap_or(0)),
    );
    field("Training dir", s(&st["trainingDir"]));
    let rows: Vec<Vec<String>> = st["tasks"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|t| {
            vec![
                s(&t["name"]),
                s(&t["type"]),
                s(&t["address"]),
                s(&t["phase"]),
                t["restarts"].as_u64().unwrap_or(0).to_string(),
                t["message"].as_str().unwrap_or("").to_string(),
            ]
        })
        .collect();
    out.push_str("Task list:\n");
    out.push_str(&indent(&table(&["TASK", "TYPE", "ADDRESS", "PHASE", "RESTARTS", "LAST EXIT"], &rows)));
    out.push_str(&conditions_section(st, now));
}
