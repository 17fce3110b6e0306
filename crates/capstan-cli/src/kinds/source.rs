//! A Source in `get` and `describe`: Flux's columns (which a Sync shares) and the artifact it fetched.

use chrono::{DateTime, Utc};
use serde_json::Value;

use super::{first_line, ready_of, short_revision};
use crate::commands::conditions_section;
use crate::output::{age, time_of};

/// Flux's columns, a Source's and a Sync's.
pub fn columns() -> Vec<&'static str> {
    vec!["NAME", "REVISION", "SUSPENDED", "READY", "MESSAGE", "AGE"]
}

pub fn cells(o: &Value) -> Vec<String> {
    flux_cells(o, o["status"]["artifact"]["revision"].as_str())
}

/// The cells of Flux's columns for a Source or a Sync, given the revision it shows.
pub(super) fn flux_cells(o: &Value, revision: Option<&str>) -> Vec<String> {
    let (ready, message) = ready_of(o);
    vec![
        revision.map(short_revision).unwrap_or_else(|| "-".into()),
        o["spec"]["suspend"].as_bool().unwrap_or(false).to_string(),
        ready,
        first_line(&message, 70),
    ]
}

pub fn describe(o: &Value, now: DateTime<Utc>, out: &mut String) {
    let spec = &o["spec"];
    let st = &o["status"];
    let mut field = |k: &str, v: String| super::put_field(out, k, v);
    let s = |v: &Value| v.as_str().unwrap_or("").to_string();
    field("URL", s(&spec["url"]));
    field("Directory", s(&spec["dir"]));
    if let Some(r) = spec["ref"].as_object() {
        field("Ref", r.iter().map(|(k, v)| format!("{k}={}", s(v))).collect::<Vec<_>>().join(" "));
    }
    field("Interval", format!("{} (timeout {})", s(&spec["interval"]), s(&spec["timeout"])));
    field("Secret", s(&spec["secretRef"]["name"]));
    field("Suspended", spec["suspend"].as_bool().unwrap_or(false).to_string());
    let a = &st["artifact"];
    if !a.is_null() {
        field("Revision", s(&a["revision"]));
        field("Digest", s(&a["digest"]));
        field("Size", format!("{} bytes in {} files", a["size"], a["files"]));
        field("Updated", format!("{} ago", age(time_of(&a["lastUpdateTime"]), now)));
        field("Checkout", s(&a["path"]));
    }
    if let Some(ms) = st["lastFetchMillis"].as_u64() {
        field("Last fetch", format!("{ms} ms"));
    }
    for w in st["warnings"].as_array().into_iter().flatten() {
        field("Warning", s(w));
    }
    out.push_str(&conditions_section(st, now));
}
