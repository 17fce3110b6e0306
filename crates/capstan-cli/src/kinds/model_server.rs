//! A ModelServer in `get` and `describe`: its URL, the versions its replicas agree on, and each replica's traffic.

use chrono::{DateTime, Utc};
use serde_json::Value;

use super::ready_of;
use crate::commands::{conditions_section, indent};
use crate::output::table;

pub fn columns() -> Vec<&'static str> {
    vec!["NAME", "URL", "REPLICAS", "READY", "MESSAGE", "AGE"]
}

pub fn cells(o: &Value) -> Vec<String> {
    let st = &o["status"];
    let (ready, message) = ready_of(o);
    vec![
        st["url"].as_str().unwrap_or("-").to_string(),
        format!("{}/{}", st["readyReplicas"].as_i64().unwrap_or(0), o["spec"]["replicas"].as_i64().unwrap_or(1)),
        ready,
        message,
    ]
}

pub fn describe(o: &Value, now: DateTime<Utc>, out: &mut String) {
    let md = &o["metadata"];
    let spec = &o["spec"];
    let st = &o["status"];
    let mut field = |k: &str, v: String| super::put_field(out, k, v);
    let s = |v: &Value| v.as_str().unwrap_or("").to_string();
    field("Model", spec["model"].as_str().unwrap_or(s(&md["name"]).as_str()).to_string());
    field("Base path", s(&spec["basePath"]));
    field("Version policy", spec["versionPolicy"].to_string());
    field("URL", s(&st["url"]));
    field("Servers", format!("App {} ({} ready)", s(&st["appName"]), st["readyReplicas"].as_i64().unwrap_or(0)));
    let nums = |v: &Value| -> String {
        let n: Vec<String> = v.as_array().into_iter().flatten().map(|x| x.to_string()).collect();
        if n.is_empty() {
            "-".into()
        } else {
            n.join(", ")
        }
    };
    field("Agreed versions", nums(&st["agreedVersions"]));
    let versions: Vec<Vec<String>> = st["versions"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|v| {
            let on: Vec<String> = v["replicas"].as_array().into_iter().flatten().map(s).collect();
            vec![
                v["version"].to_string(),
                s(&v["state"]),
                if v["wanted"] == true { "yes" } else { "no" }.to_string(),
                if on.is_empty() { "-".into() } else { on.join(", ") },
                v["error"].as_str().unwrap_or("").to_string(),
            ]
        })
        .collect();
    out.push_str("Versions:\n");
    out.push_str(&indent(&table(&["VERSION", "STATE", "WANTED", "SERVED BY", "ERROR"], &versions)));
    let replicas: Vec<Vec<String>> = st["replicas"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|r| {
            let traffic = match (r["ready"] == true, r["agrees"] == true) {
                (true, true) => "yes",
                (true, false) => "no (serves other versions)",
                _ => "no (not ready)",
            };
            vec![s(&r["name"]), nums(&r["versions"]), traffic.to_string()]
        })
        .collect();
    out.push_str("Replicas:\n");
    out.push_str(&indent(&table(&["REPLICA", "SERVES", "TRAFFIC"], &replicas)));
    out.push_str(&conditions_section(st, now));
}

#[cfg(test)]
mod tests {
    use capstan_model::Kind;
    use chrono::Utc;
    use serde_json::json;

    use crate::kinds::describe;

    #[test]
    fn a_model_server_lists_its_versions() {
        let ms = json!({
            "metadata": {"name": "lin", "namespace": "default"},
            "spec": {"basePath": "/models/lin"},
            "status": {"agreedVersions": [2],
                       "versions": [{"version": 3, "state": "END", "wanted": true, "error": "lin-server-0: cannot load"},
                                    {"version": 2, "state": "AVAILABLE", "wanted": false, "replicas": ["lin-server-0"]}],
                       "replicas": [{"name": "lin-server-0", "versions": [2], "agrees": true, "ready": true},
                                    {"name": "lin-server-1", "versions": [1], "agrees": false, "ready": true}]}
        });
        let text = describe(Kind::ModelServer, &ms, &json!({"items": []}), Utc::now());
        assert!(text.contains("Agreed versions:  2"), "{text}");
        assert!(text.contains("lin-server-0: cannot load"), "{text}");
        assert!(text.contains("no (serves other versions)"), "{text}");
    }
}
