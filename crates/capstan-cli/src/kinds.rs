//! How each kind looks in `capstan get` and `capstan describe`: one module per kind, chosen by exhaustive matches.

mod alert_rule;
mod app;
mod backend_tls_policy;
pub(crate) mod certificate;
mod config_map;
mod database;
mod escalation_policy;
mod gateway;
mod model_server;
mod reference_grant;
mod route;
mod secret;
mod source;
mod sync;
mod training_job;
#[cfg(feature = "throwaway-kind")]
mod widget;

use capstan_model::Kind;
use chrono::{DateTime, Utc};
use serde_json::Value;

use crate::commands::events_section;
use crate::output::{age, time_of};

/// The status and message of an object's `Ready` condition (`Unknown` and empty without one).
pub(crate) fn ready_of(o: &Value) -> (String, String) {
    let c = o["status"]["conditions"]
        .as_array()
        .and_then(|cs| cs.iter().find(|c| c["type"] == "Ready").cloned())
        .unwrap_or(Value::Null);
    (c["status"].as_str().unwrap_or("Unknown").to_string(), c["message"].as_str().unwrap_or("").to_string())
}

/// The first line of `s`, cut to `max` characters with `…`.
pub(crate) fn first_line(s: &str, max: usize) -> String {
    let line = s.lines().next().unwrap_or("");
    if line.chars().count() > max {
        format!("{}…", line.chars().take(max - 1).collect::<String>())
    } else {
        line.to_string()
    }
}

/// `main@sha1:0123456789abcdef…` as `main@sha1:0123456789ab`.
fn short_revision(rev: &str) -> String {
    match rev.rsplit_once(':') {
        Some((head, sum)) if sum.len() > 12 => format!("{head}:{}", &sum[..12]),
        _ => rev.to_string(),
    }
}

/// One `Label:            value` line of `describe`; nothing when the value is empty.
fn put_field(out: &mut String, k: &str, v: String) {
    if !v.is_empty() {
        out.push_str(&format!("{:<18}{v}\n", format!("{k}:")))
    }
}

/// Table columns of `capstan get` for each kind (for Sources and Syncs, Flux's columns), plus age.
pub fn columns(kind: Kind, wide: bool) -> Vec<&'static str> {
    let mut columns = match kind {
        Kind::Secret => secret::columns(),
        Kind::ConfigMap => config_map::columns(),
        Kind::Source => source::columns(),
        Kind::Sync => sync::columns(),
        Kind::Database => database::columns(),
        Kind::App => app::columns(),
        Kind::TrainingJob => training_job::columns(),
        Kind::ModelServer => model_server::columns(),
        Kind::AlertRule => alert_rule::columns(),
        Kind::EscalationPolicy => escalation_policy::columns(),
        Kind::Gateway => gateway::columns(),
        Kind::HTTPRoute | Kind::TLSRoute | Kind::TCPRoute => route::columns(),
        Kind::ReferenceGrant => reference_grant::columns(),
        Kind::BackendTLSPolicy => backend_tls_policy::columns(),
        Kind::Issuer | Kind::ClusterIssuer => certificate::issuer_columns(),
        Kind::Certificate => certificate::columns(),
        #[cfg(feature = "throwaway-kind")]
        Kind::Widget => widget::columns(),
    };
    if let Some((extra, _)) = wide_of(kind).filter(|_| wide) {
        columns.extend(extra());
    }
    columns
}

/// The extra columns `-o wide` shows, and their cells.
type Wide = (fn() -> Vec<&'static str>, fn(&Value) -> Vec<String>);

/// What `-o wide` adds to a kind's columns, for the kinds that have any.
fn wide_of(kind: Kind) -> Option<Wide> {
    match kind {
        Kind::App => Some((app::wide_columns, app::wide_cells)),
        Kind::Secret
        | Kind::ConfigMap
        | Kind::Source
        | Kind::Sync
        | Kind::Database
        | Kind::TrainingJob
        | Kind::ModelServer
        | Kind::AlertRule
        | Kind::EscalationPolicy
        | Kind::Gateway
        | Kind::HTTPRoute
        | Kind::TLSRoute
        | Kind::TCPRoute
        | Kind::ReferenceGrant
        | Kind::BackendTLSPolicy
        | Kind::Issuer
        | Kind::ClusterIssuer
        | Kind::Certificate => None,
        #[cfg(feature = "throwaway-kind")]
        Kind::Widget => None,
    }
}

/// One table row of `capstan get`, in the order of [`columns`]. Every kind has its own arm (no catch-all), so a new
/// kind does not compile until it says what `get` shows.
pub fn row(kind: Kind, o: &Value, all: bool, wide: bool, now: DateTime<Utc>) -> Vec<String> {
    let mut r = vec![];
    if all {
        r.push(o["metadata"]["namespace"].as_str().unwrap_or("").to_string());
    }
    r.push(o["metadata"]["name"].as_str().unwrap_or("").to_string());
    let cells: Vec<String> = match kind {
        Kind::Secret => secret::cells(o),
        Kind::ConfigMap => config_map::cells(o),
        Kind::Source => source::cells(o),
        Kind::Sync => sync::cells(o),
        Kind::Database => database::cells(o),
        Kind::App => app::cells(o),
        Kind::TrainingJob => training_job::cells(o),
        Kind::ModelServer => model_server::cells(o),
        Kind::AlertRule => alert_rule::cells(o),
        Kind::EscalationPolicy => escalation_policy::cells(o),
        Kind::Gateway => gateway::cells(o),
        Kind::HTTPRoute | Kind::TLSRoute | Kind::TCPRoute => route::cells(o),
        Kind::ReferenceGrant => reference_grant::cells(o),
        Kind::BackendTLSPolicy => backend_tls_policy::cells(o),
        Kind::Issuer | Kind::ClusterIssuer => certificate::issuer_cells(o),
        Kind::Certificate => certificate::cells(o),
        #[cfg(feature = "throwaway-kind")]
        Kind::Widget => widget::cells(o),
    };
    r.extend(cells);
    r.push(age(time_of(&o["metadata"]["creationTimestamp"]), now));
    if let Some((_, cells)) = wide_of(kind).filter(|_| wide) {
        r.extend(cells(o));
    }
    r
}

/// `capstan describe` of every kind: a common header, the kind's own fields and sections, then its events; an App's
/// page has a layout of its own (replicas, rollout, volumes). Secret values are never shown.
pub fn describe(kind: Kind, o: &Value, events: &Value, now: DateTime<Utc>) -> String {
    let own: fn(&Value, DateTime<Utc>, &mut String) = match kind {
        Kind::App => return app::page(o, events, now),
        Kind::Secret => secret::describe,
        Kind::ConfigMap => config_map::describe,
        Kind::Source => source::describe,
        Kind::Sync => sync::describe,
        Kind::Database => database::describe,
        Kind::TrainingJob => training_job::describe,
        Kind::ModelServer => model_server::describe,
        Kind::AlertRule => alert_rule::describe,
        Kind::EscalationPolicy => escalation_policy::describe,
        Kind::Gateway => gateway::describe,
        Kind::HTTPRoute | Kind::TLSRoute | Kind::TCPRoute => route::describe,
        Kind::ReferenceGrant => reference_grant::describe,
        Kind::BackendTLSPolicy => backend_tls_policy::describe,
        Kind::Issuer | Kind::ClusterIssuer => certificate::describe_issuer,
        Kind::Certificate => certificate::describe,
        #[cfg(feature = "throwaway-kind")]
        Kind::Widget => widget::describe,
    };
    let md = &o["metadata"];
    let mut out = String::new();
    let mut field = |k: &str, v: String| put_field(&mut out, k, v);
    let s = |v: &Value| v.as_str().unwrap_or("").to_string();
    field("Name", s(&md["name"]));
    field("Namespace", s(&md["namespace"]));
    field("Kind", kind.name().into());
    field("Managed by", crate::output::managed_by(md).unwrap_or_default());
    field("Created", format!("{} ({} ago)", s(&md["creationTimestamp"]), age(time_of(&md["creationTimestamp"]), now)));
    // The kind's fields and sections, then its conditions (all but a Secret's).
    own(o, now, &mut out);
    out.push_str(&events_section(events, now));
    out
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    /// Issue 21: every kind's row has exactly its columns (a kind that slipped into another's arm would not).
    #[test]
    fn every_kind_has_a_row_as_wide_as_its_columns() {
        let o = json!({"metadata": {"name": "x", "namespace": "default", "creationTimestamp": "2026-12-06T10:00:00Z"},
                       "spec": {}, "status": {}});
        for kind in Kind::ALL {
            for wide in [false, true] {
                let n = columns(*kind, wide).len();
                assert_eq!(row(*kind, &o, false, wide, Utc::now()).len(), n, "{kind} wide={wide}");
                assert_eq!(row(*kind, &o, true, wide, Utc::now()).len(), n + 1, "{kind} wide={wide} with NAMESPACE");
            }
        }
    }
}
