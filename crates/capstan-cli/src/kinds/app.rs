//! An App in `get` (ready, status, restarts; with `-o wide` its revision, ports and endpoints) and its full
//! `describe` page (replicas, rollout, probes, volumes, database), which has a layout of its own.

use chrono::{DateTime, Utc};
use serde_json::Value;

use crate::commands::{conditions_section, events_section, indent};
use crate::output::{age, table, time_of};

pub fn columns() -> Vec<&'static str> {
    vec!["NAME", "READY", "STATUS", "RESTARTS", "AGE"]
}

/// What `-o wide` adds.
pub fn wide_columns() -> Vec<&'static str> {
    vec!["REVISION", "PORTS", "ENDPOINTS"]
}

pub fn cells(o: &Value) -> Vec<String> {
    vec![
        format!(
            "{}/{}",
            o["status"]["readyReplicas"].as_i64().unwrap_or(0),
            o["spec"]["replicas"].as_i64().unwrap_or(1)
        ),
        status_word(o),
        o["status"]["restarts"].as_u64().unwrap_or(0).to_string(),
    ]
}

/// The cells of [`wide_columns`].
pub fn wide_cells(o: &Value) -> Vec<String> {
    let mut row = Vec::new();
    // What runs; a rolled-back App also names the revision it declares.
    let (declared, running) = (o["status"]["revision"].as_str(), o["status"]["currentRevision"].as_str());
    row.push(match (running, declared) {
        (Some(r), Some(d)) if r != d => format!("{r} (declared {d})"),
        (r, d) => r.or(d).unwrap_or("").to_string(),
    });
    let ports: Vec<String> = o["status"]["replicaStatuses"]
        .as_array()
        .into_iter()
        .flatten()
        .flat_map(|r| r["ports"].as_object().into_iter().flatten().map(|(_, v)| v.to_string()))
        .collect();
    row.push(ports.join(","));
    let eps: Vec<&str> = o["status"]["endpoints"].as_array().into_iter().flatten().filter_map(Value::as_str).collect();
    row.push(if eps.is_empty() { "<none>".into() } else { eps.join(",") });
    row
}

fn status_word(o: &Value) -> String {
    let conds = o["status"]["conditions"].as_array().cloned().unwrap_or_default();
    if let Some(s) = conds.iter().find(|c| c["type"] == "Stalled" && c["status"] == "True") {
        return s["reason"].as_str().unwrap_or("Stalled").to_string();
    }
    match conds.iter().find(|c| c["type"] == "Ready") {
        Some(c) if c["status"] == "True" => {
            if o["spec"]["replicas"].as_i64() == Some(0) {
                "Stopped".into()
            } else {
                "Running".into()
            }
        }
        Some(c) => c["reason"].as_str().unwrap_or("Pending").to_string(),
        None => "Pending".into(),
    }
}

/// One `Label:  value` line of `describe`: values line up at column 18, and a longer label keeps one space before
/// its value.
fn describe_line(label: &str, value: &str) -> String {
    format!("{:<17} {value}\n", format!("{label}:"))
}

/// The whole `describe app` page.
pub fn page(o: &Value, events: &Value, now: DateTime<Utc>) -> String {
    let md = &o["metadata"];
    let spec = &o["spec"];
    let st = &o["status"];
    let mut out = String::new();
    let mut field = |k: &str, v: String| out.push_str(&describe_line(k, &v));
    field("Name", md["name"].as_str().unwrap_or("").into());
    field("Namespace", md["namespace"].as_str().unwrap_or("").into());
    field("Kind", "App".into());
    let labels = md["labels"]
        .as_object()
        .map(|m| m.iter().map(|(k, v)| format!("{k}={}", v.as_str().unwrap_or(""))).collect::<Vec<_>>().join(", "));
    field("Labels", labels.filter(|s| !s.is_empty()).unwrap_or_else(|| "<none>".into()));
    if let Some(owner) = crate::output::managed_by(md) {
        field("Managed by", owner);
    }
    let created = time_of(&md["creationTimestamp"]);
    field("Created", format!("{} ({} ago)", md["creationTimestamp"].as_str().unwrap_or(""), age(created, now)));
    field("Generation", format!("{} (observed {})", md["generation"], st["observedGeneration"]));
    field("Revision", st["revision"].as_str().unwrap_or("").into());
    field(
        "Replicas",
        format!(
            "{} desired | {} ready | {} updated | {} restarts",
            spec["replicas"].as_i64().unwrap_or(1),
            st["readyReplicas"].as_i64().unwrap_or(0),
            st["updatedReplicas"].as_i64().unwrap_or(0),
            st["restarts"].as_u64().unwrap_or(0)
        ),
    );
    let cmd: Vec<String> = spec["run"]["command"]
        .as_array()
        .into_iter()
        .flatten()
        .chain(spec["run"]["args"].as_array().into_iter().flatten())
        .filter_map(|v| v.as_str().map(str::to_string))
        .collect();
    field("Command", cmd.join(" "));
    field("Restart policy", spec["restartPolicy"].as_str().unwrap_or("Always").into());
    for p in ["startup", "readiness", "liveness"] {
        // Read as the model reads it, so that the defaults a writer left out show (not `null`).
        let Ok(pr) = serde_json::from_value::<capstan_model::Probe>(spec["probes"][p].clone()) else { continue };
        field(&format!("{}{} probe", p[..1].to_uppercase(), &p[1..]), probe_text(&pr));
    }
    if let Some(eps) = st["endpoints"].as_array().filter(|e| !e.is_empty()) {
        let eps: Vec<&str> = eps.iter().filter_map(Value::as_str).collect();
        field("Endpoints", eps.join(", "));
    }
    for v in st["volumes"].as_array().into_iter().flatten() {
        let paths: Vec<&str> = v["paths"].as_array().into_iter().flatten().filter_map(Value::as_str).collect();
        field(
            &format!("Volume {}", v["name"].as_str().unwrap_or("")),
            format!("{} scope, {} bytes: {}", v["scope"].as_str().unwrap_or(""), v["usedBytes"], paths.join(", ")),
        );
    }
    if !st["rollout"].is_null() {
        let r = &st["rollout"];
        field(
            "Rollout",
            format!(
                "{} ({} ago): {}",
                r["phase"].as_str().unwrap_or(""),
                age(time_of(&r["startedAt"]), now),
                r["message"].as_str().unwrap_or("")
            ),
        );
    }
    if let Some(w) = st["warnings"].as_array().filter(|w| !w.is_empty()) {
        for x in w {
            field("Warning", x.as_str().unwrap_or("").into());
        }
    }
    out.push_str(&conditions_section(st, now));
    out.push_str("Replicas:\n");
    let reps: Vec<Vec<String>> = st["replicaStatuses"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|r| {
            vec![
                r["name"].as_str().unwrap_or("").into(),
                r["phase"].as_str().unwrap_or("").into(),
                r["ready"].as_bool().unwrap_or(false).to_string(),
                r["pid"].as_u64().map(|p| p.to_string()).unwrap_or_else(|| "-".into()),
                r["ports"]
                    .as_object()
                    .map(|p| p.iter().map(|(k, v)| format!("{k}={v}")).collect::<Vec<_>>().join(","))
                    .unwrap_or_default(),
                r["restarts"].as_u64().unwrap_or(0).to_string(),
                age(time_of(&r["startedAt"]), now),
                r["reason"].as_str().unwrap_or("").to_string()
                    + r["message"].as_str().map(|m| format!(": {m}")).as_deref().unwrap_or(""),
            ]
        })
        .collect();
    out.push_str(&indent(&table(&["NAME", "PHASE", "READY", "PID", "PORTS", "RESTARTS", "AGE", "REASON"], &reps)));
    out.push_str(&events_section(events, now));
    out
}

/// A probe as kubectl describes one: `http-get /health on port http delay=0s timeout=1s period=10s #success=1 …`.
fn probe_text(p: &capstan_model::Probe) -> String {
    let how = match (&p.http, &p.tcp, &p.exec) {
        (Some(h), _, _) => format!("http-get {} on port {}", h.path, h.port),
        (None, Some(t), _) => format!("tcp-connect on port {}", t.port),
        (None, None, Some(e)) => format!("exec {}", e.command.join(" ")),
        (None, None, None) => "none".into(),
    };
    format!(
        "{how} delay={}s timeout={}s period={}s #success={} #failure={}",
        p.initial_delay_seconds, p.timeout_seconds, p.period_seconds, p.success_threshold, p.failure_threshold
    )
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    /// Issue 20, polish: a probe written without its timings (as a controller writes one) shows the defaults.
    #[test]
    fn a_probe_is_described_with_its_defaults() {
        let p: capstan_model::Probe =
            serde_json::from_value(json!({"http": {"path": "/v2/health/ready", "port": "http"}, "periodSeconds": 1}))
                .expect("probe");
        assert_eq!(
            probe_text(&p),
            "http-get /v2/health/ready on port http delay=0s timeout=1s period=1s #success=1 #failure=3"
        );
    }

    #[test]
    fn describe_lines_line_up_and_long_labels_keep_a_space() {
        assert_eq!(describe_line("Name", "web"), "Name:             web\n");
        assert_eq!(describe_line("Volume attachments", "shared scope"), "Volume attachments: shared scope\n");
    }
}
