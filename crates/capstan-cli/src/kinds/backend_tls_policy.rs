//! A BackendTLSPolicy in `get` and `describe`: the Services (Apps) it applies to, the name checked, where its CAs
//! come from, and each Gateway's verdict.

use chrono::{DateTime, Utc};
use serde_json::Value;

use crate::commands::indent;
use crate::output::table;

pub fn columns() -> Vec<&'static str> {
    vec!["NAME", "TARGETS", "HOSTNAME", "ACCEPTED", "AGE"]
}

fn s(v: &Value) -> String {
    v.as_str().unwrap_or("").to_string()
}

/// `auth`, or `auth:https` for one port.
fn target(t: &Value) -> String {
    match t["sectionName"].as_str() {
        Some(p) => format!("{}:{p}", s(&t["name"])),
        None => s(&t["name"]),
    }
}

/// How many Gateways accept it, of those that use it.
fn accepted(o: &Value) -> String {
    let ancestors: Vec<&Value> = o["status"]["ancestors"].as_array().into_iter().flatten().collect();
    if ancestors.is_empty() {
        return "Unknown".into();
    }
    let ok = ancestors
        .iter()
        .filter(|a| {
            a["conditions"].as_array().into_iter().flatten().any(|c| c["type"] == "Accepted" && c["status"] == "True")
        })
        .count();
    format!("{ok}/{}", ancestors.len())
}

pub fn cells(o: &Value) -> Vec<String> {
    let targets: Vec<String> = o["spec"]["targetRefs"].as_array().into_iter().flatten().map(target).collect();
    vec![targets.join(","), s(&o["spec"]["validation"]["hostname"]), accepted(o)]
}

pub fn describe(o: &Value, _now: DateTime<Utc>, out: &mut String) {
    let v = &o["spec"]["validation"];
    let cas: Vec<String> = v["caCertificateRefs"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|r| format!("{} {}", s(&r["kind"]), s(&r["name"])))
        .chain(v["wellKnownCACertificates"].as_str().map(|w| format!("{w} (the machine's trusted CAs)")))
        .collect();
    super::put_field(out, "Hostname", s(&v["hostname"]));
    super::put_field(out, "CAs", cas.join(", "));
    let sans: Vec<String> = v["subjectAltNames"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|n| n["hostname"].as_str().or(n["uri"].as_str()).unwrap_or("").to_string())
        .collect();
    super::put_field(out, "Subject names", sans.join(", "));
    let targets: Vec<String> = o["spec"]["targetRefs"].as_array().into_iter().flatten().map(target).collect();
    super::put_field(out, "Targets", targets.join(", "));
    let rows: Vec<Vec<String>> = o["status"]["ancestors"]
        .as_array()
        .into_iter()
        .flatten()
        .flat_map(|a| {
            let gw =
                format!("{}/{}", a["ancestorRef"]["namespace"].as_str().unwrap_or(""), s(&a["ancestorRef"]["name"]));
            a["conditions"]
                .as_array()
                .into_iter()
                .flatten()
                .map(move |c| vec![gw.clone(), s(&c["type"]), s(&c["status"]), s(&c["reason"]), s(&c["message"])])
        })
        .collect();
    if !rows.is_empty() {
        out.push_str("Gateways:\n");
        out.push_str(&indent(&table(&["GATEWAY", "TYPE", "STATUS", "REASON", "MESSAGE"], &rows)));
    }
}

#[cfg(test)]
mod tests {
    use capstan_model::Kind;
    use chrono::Utc;
    use serde_json::json;

    #[test]
    fn a_policy_shows_its_targets_name_cas_and_verdicts() {
        let o = json!({"kind": "BackendTLSPolicy", "metadata": {"name": "auth-tls", "namespace": "default"},
            "spec": {"targetRefs": [{"group": "", "kind": "Service", "name": "auth", "sectionName": "https"}],
                     "validation": {"hostname": "auth.example.test", "caCertificateRefs": [{"group": "", "kind": "ConfigMap", "name": "auth-ca"}]}},
            "status": {"ancestors": [{"ancestorRef": {"name": "edge", "namespace": "default"}, "controllerName": "capstan.dev/gateway",
                "conditions": [{"type": "Accepted", "status": "True", "reason": "Accepted", "message": ""}]}]}});
        let row = crate::kinds::row(Kind::BackendTLSPolicy, &o, false, false, Utc::now());
        assert_eq!(row[..4], ["auth-tls", "auth:https", "auth.example.test", "1/1"]);
        let text = crate::kinds::describe(Kind::BackendTLSPolicy, &o, &json!([]), Utc::now());
        assert!(text.contains("Hostname:") && text.contains("ConfigMap auth-ca"), "{text}");
        assert!(text.contains("default/edge") && text.contains("Accepted"), "{text}");
    }
}
