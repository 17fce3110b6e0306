//! An HTTPRoute, TLSRoute or TCPRoute in `get` and `describe`: its host names, the Gateways it attaches to with their
//! conditions, and each rule's matches (HTTPRoute) and backends.

use chrono::{DateTime, Utc};
use serde_json::Value;

use crate::commands::indent;
use crate::output::table;

pub fn columns() -> Vec<&'static str> {
    vec!["NAME", "HOSTNAMES", "PARENTS", "ACCEPTED", "AGE"]
}

fn s(v: &Value) -> String {
    v.as_str().unwrap_or("").to_string()
}

fn parent_name(p: &Value) -> String {
    let mut n = s(&p["name"]);
    if let Some(ns) = p["namespace"].as_str() {
        n = format!("{ns}/{n}");
    }
    if let Some(section) = p["sectionName"].as_str() {
        n = format!("{n}:{section}");
    }
    n
}

pub fn cells(o: &Value) -> Vec<String> {
    let hosts: Vec<String> = o["spec"]["hostnames"].as_array().into_iter().flatten().map(s).collect();
    let parents: Vec<String> = o["spec"]["parentRefs"].as_array().into_iter().flatten().map(parent_name).collect();
    let statuses: Vec<&Value> = o["status"]["parents"].as_array().into_iter().flatten().collect();
    let accepted = statuses
        .iter()
        .filter(|p| {
            p["conditions"].as_array().into_iter().flatten().any(|c| c["type"] == "Accepted" && c["status"] == "True")
        })
        .count();
    vec![
        if hosts.is_empty() { "*".into() } else { hosts.join(",") },
        parents.join(","),
        if statuses.is_empty() { "Unknown".into() } else { format!("{accepted}/{}", parents.len()) },
    ]
}

/// A match in words: `PathPrefix /api, GET, header x-env=canary, query v~[0-9]+`.
fn match_text(m: &Value) -> String {
    let mut parts = vec![format!(
        "{} {}",
        m["path"]["type"].as_str().unwrap_or("PathPrefix"),
        m["path"]["value"].as_str().unwrap_or("/")
    )];
    if let Some(method) = m["method"].as_str() {
        parts.push(method.to_string());
    }
    for (what, key) in [("header", "headers"), ("query", "queryParams")] {
        for h in m[key].as_array().into_iter().flatten() {
            let op = if h["type"] == "RegularExpression" { "~" } else { "=" };
            parts.push(format!("{what} {}{op}{}", s(&h["name"]), s(&h["value"])));
        }
    }
    parts.join(", ")
}

pub fn describe(o: &Value, _now: DateTime<Utc>, out: &mut String) {
    let spec = &o["spec"];
    let hosts: Vec<String> = spec["hostnames"].as_array().into_iter().flatten().map(s).collect();
    let http = o["kind"].as_str().is_none_or(|k| k == "HTTPRoute");
    if o["kind"] != "TCPRoute" {
        super::put_field(
            out,
            "Hostnames",
            if hosts.is_empty() { "* (the listener's)".into() } else { hosts.join(", ") },
        );
    }
    out.push_str("Rules:\n");
    let mut rows = Vec::new();
    for (i, r) in spec["rules"].as_array().into_iter().flatten().enumerate() {
        let matches: Vec<String> = r["matches"].as_array().into_iter().flatten().map(match_text).collect();
        let backends: Vec<String> = r["backendRefs"]
            .as_array()
            .into_iter()
            .flatten()
            .map(|b| {
                format!("{}:{} ×{}", s(&b["name"]), b["port"].as_u64().unwrap_or(0), b["weight"].as_u64().unwrap_or(1))
            })
            .collect();
        let filters: Vec<String> = r["filters"].as_array().into_iter().flatten().map(|f| s(&f["type"])).collect();
        let name = r["name"].as_str().map_or_else(|| i.to_string(), str::to_string);
        rows.push(if http {
            vec![
                name,
                if matches.is_empty() { "PathPrefix /".into() } else { matches.join(" | ") },
                filters.join(","),
                backends.join(", "),
            ]
        } else {
            vec![name, backends.join(", ")]
        });
    }
    let heads: &[&str] = if http { &["RULE", "MATCHES", "FILTERS", "BACKENDS"] } else { &["RULE", "BACKENDS"] };
    out.push_str(&indent(&table(heads, &rows)));
    let mut parents = Vec::new();
    for p in o["status"]["parents"].as_array().into_iter().flatten() {
        for c in p["conditions"].as_array().into_iter().flatten() {
            parents.push(vec![
                parent_name(&p["parentRef"]),
                s(&c["type"]),
                s(&c["status"]),
                s(&c["reason"]),
                s(&c["message"]),
            ]);
        }
    }
    out.push_str("Parents:\n");
    out.push_str(&indent(&table(&["PARENT", "TYPE", "STATUS", "REASON", "MESSAGE"], &parents)));
}

#[cfg(test)]
mod tests {
    use capstan_model::Kind;
    use chrono::Utc;
    use serde_json::json;

    use crate::kinds::describe;

    #[test]
    fn a_route_shows_its_rules_and_each_parents_conditions() {
        let o = json!({
            "metadata": {"name": "shop", "namespace": "default"},
            "spec": {"parentRefs": [{"name": "front", "sectionName": "https"}], "hostnames": ["shop.example.com"],
                     "rules": [{"matches": [{"path": {"type": "PathPrefix", "value": "/api"}, "method": "GET",
                                             "headers": [{"name": "x-env", "value": "canary"}]}],
                                "backendRefs": [{"name": "api", "port": 8080, "weight": 90}, {"name": "api-next", "port": 8080, "weight": 10}]}]},
            "status": {"parents": [{"parentRef": {"name": "front", "sectionName": "https"}, "controllerName": "capstan.dev/gateway-controller",
                                    "conditions": [{"type": "Accepted", "status": "True", "reason": "Accepted", "message": ""},
                                                   {"type": "ResolvedRefs", "status": "False", "reason": "BackendNotFound",
                                                    "message": "App default/api-next does not exist"}]}]},
        });
        let text = describe(Kind::HTTPRoute, &o, &json!({"items": []}), Utc::now());
        assert!(text.contains("PathPrefix /api, GET, header x-env=canary"), "{text}");
        assert!(text.contains("api:8080 ×90, api-next:8080 ×10"), "{text}");
        assert!(text.contains("front:https") && text.contains("BackendNotFound"), "{text}");
        assert_eq!(super::cells(&o), vec!["shop.example.com", "front:https", "1/1"]);
    }

    #[test]
    fn a_route_of_connections_shows_its_backends_without_http_matches() {
        let o = json!({
            "kind": "TCPRoute",
            "metadata": {"name": "ssh", "namespace": "default"},
            "spec": {"parentRefs": [{"name": "edge", "sectionName": "ssh"}],
                     "rules": [{"backendRefs": [{"name": "git", "port": 22}]}]},
        });
        let text = describe(Kind::TCPRoute, &o, &json!({"items": []}), Utc::now());
        assert!(text.contains("git:22 ×1"), "{text}");
        assert!(!text.contains("PathPrefix") && !text.contains("MATCHES") && !text.contains("Hostnames"), "{text}");
        assert_eq!(super::cells(&o), vec!["*", "edge:ssh", "Unknown"]);
    }
}
