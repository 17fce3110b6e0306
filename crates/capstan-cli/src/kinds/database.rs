//! A Database in `get` and `describe`: its endpoint, credentials Secret, server App and directories.

use chrono::{DateTime, Utc};
use serde_json::Value;

use super::{first_line, ready_of};
use crate::commands::conditions_section;

pub fn columns() -> Vec<&'static str> {
    vec!["NAME", "ENDPOINT", "READY", "MESSAGE", "AGE"]
}

pub fn cells(o: &Value) -> Vec<String> {
    let st = &o["status"];
    let (ready, message) = ready_of(o);
    vec![st["endpoint"].as_str().unwrap_or("-").to_string(), ready, first_line(&message, 70)]
}

pub fn describe(o: &Value, now: DateTime<Utc>, out: &mut String) {
    let spec = &o["spec"];
    let st = &o["status"];
    let mut field = |k: &str, v: String| super::put_field(out, k, v);
    let s = |v: &Value| v.as_str().unwrap_or("").to_string();
    field("Endpoint", s(&st["endpoint"]));
    field("Credentials", format!("Secret {} (username, password, database, host, port, url)", s(&st["secretName"])));
    field("Server", format!("App {}", s(&st["appName"])));
    field("Data", s(&st["dataDirectory"]));
    field("Binaries", s(&st["binDirectory"]));
    field("Deletion policy", spec["deletionPolicy"].as_str().unwrap_or("Retain").to_string());
    out.push_str(&conditions_section(st, now));
}
