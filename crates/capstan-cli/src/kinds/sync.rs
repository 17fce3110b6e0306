//! A Sync in `get` and `describe`: Flux's columns, what it applies from which Source, and its history.

use chrono::{DateTime, Utc};
use serde_json::Value;

use super::short_revision;
use crate::commands::{conditions_section, indent};
use crate::output::{age, table, time_of};

/// Flux's columns, as a Source's.
pub fn columns() -> Vec<&'static str> {
    super::source::columns()
}

pub fn cells(o: &Value) -> Vec<String> {
    super::source::flux_cells(o, o["status"]["lastAppliedRevision"].as_str())
}

pub fn describe(o: &Value, now: DateTime<Utc>, out: &mut String) {
    let md = &o["metadata"];
    let spec = &o["spec"];
    let st = &o["status"];
    let mut field = |k: &str, v: String| super::put_field(out, k, v);
    let s = |v: &Value| v.as_str().unwrap_or("").to_string();
    let src = &spec["sourceRef"];
    field(
        "Source",
        format!("{}/{}", src["namespace"].as_str().unwrap_or(s(&md["namespace"]).as_str()), s(&src["name"])),
    );
    field("Path", spec["path"].as_str().unwrap_or("./").to_string());
    field("Interval", s(&spec["interval"]));
    field("Prune", spec["prune"].as_bool().unwrap_or(false).to_string());
    field("Wait", spec["wait"].as_bool().unwrap_or(false).to_string());
    let deps: Vec<String> = spec["dependsOn"].as_array().into_iter().flatten().map(|d| s(&d["name"])).collect();
    field("Depends on", deps.join(", "));
    field("Applied", s(&st["lastAppliedRevision"]));
    field("Attempted", s(&st["lastAttemptedRevision"]));
    let inv: Vec<String> = st["inventory"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|e| format!("{}/{}/{}", s(&e["kind"]), s(&e["namespace"]), s(&e["name"])))
        .collect();
    field("Inventory", inv.join(", "));
    out.push_str(&conditions_section(st, now));
    let rows: Vec<Vec<String>> = st["history"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|h| {
            vec![
                short_revision(h["revision"].as_str().unwrap_or("")),
                s(&h["result"]),
                format!("{} ms", h["durationMillis"]),
                h["count"].to_string(),
                format!("{} ago", age(time_of(&h["startedAt"]), now)),
            ]
        })
        .collect();
    out.push_str("History:\n");
    out.push_str(&indent(&table(&["REVISION", "RESULT", "DURATION", "COUNT", "LAST"], &rows)));
}
