//! A Secret in `get` and `describe`: the names of its keys, never their values.

use std::collections::BTreeSet;

use chrono::{DateTime, Utc};
use serde_json::Value;

pub fn columns() -> Vec<&'static str> {
    vec!["NAME", "KEYS", "AGE"]
}

pub fn cells(o: &Value) -> Vec<String> {
    let keys: BTreeSet<&String> =
        ["stringData", "data"].iter().filter_map(|f| o["spec"][f].as_object()).flat_map(|m| m.keys()).collect();
    vec![keys.into_iter().cloned().collect::<Vec<_>>().join(",")]
}

/// Only the keys, and no conditions section (a Secret has no status).
pub fn describe(o: &Value, _now: DateTime<Utc>, out: &mut String) {
    let spec = &o["spec"];
    let mut field = |k: &str, v: String| super::put_field(out, k, v);
    let keys: BTreeSet<&String> =
        ["stringData", "data"].iter().filter_map(|f| spec[f].as_object()).flat_map(|m| m.keys()).collect();
    field("Keys", keys.into_iter().cloned().collect::<Vec<_>>().join(", "));
}
