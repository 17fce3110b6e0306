//! A ReferenceGrant in `get` and `describe`: who may reference (kind and namespace) and what (kind and name).

use chrono::{DateTime, Utc};
use serde_json::Value;

use crate::commands::indent;
use crate::output::table;

pub fn columns() -> Vec<&'static str> {
    vec!["NAME", "FROM", "TO", "AGE"]
}

fn s(v: &Value) -> String {
    v.as_str().unwrap_or("").to_string()
}

/// `HTTPRoute/web`: a kind and the namespace it may reference from.
fn from_text(f: &Value) -> String {
    format!("{}/{}", s(&f["kind"]), s(&f["namespace"]))
}

/// `Service/api`, or `Service/*` for every one.
fn to_text(t: &Value) -> String {
    format!("{}/{}", s(&t["kind"]), t["name"].as_str().unwrap_or("*"))
}

pub fn cells(o: &Value) -> Vec<String> {
    let list = |k: &str, f: fn(&Value) -> String| -> String {
        o["spec"][k].as_array().into_iter().flatten().map(f).collect::<Vec<_>>().join(",")
    };
    vec![list("from", from_text), list("to", to_text)]
}

pub fn describe(o: &Value, _now: DateTime<Utc>, out: &mut String) {
    let rows = |k: &str, cols: [&str; 3]| -> Vec<Vec<String>> {
        o["spec"][k]
            .as_array()
            .into_iter()
            .flatten()
            .map(|x| cols.iter().map(|c| x[*c].as_str().map_or_else(|| "*".to_string(), str::to_string)).collect())
            .collect()
    };
    out.push_str("From:\n");
    out.push_str(&indent(&table(&["GROUP", "KIND", "NAMESPACE"], &rows("from", ["group", "kind", "namespace"]))));
    out.push_str("To (in this namespace):\n");
    out.push_str(&indent(&table(&["GROUP", "KIND", "NAME"], &rows("to", ["group", "kind", "name"]))));
}

#[cfg(test)]
mod tests {
    use capstan_model::Kind;
    use chrono::Utc;
    use serde_json::json;

    use crate::kinds::describe;

    #[test]
    fn a_grant_shows_who_may_reference_what() {
        let o = json!({
            "kind": "ReferenceGrant",
            "metadata": {"name": "web-to-api", "namespace": "api"},
            "spec": {"from": [{"group": "gateway.networking.k8s.io", "kind": "HTTPRoute", "namespace": "web"}],
                     "to": [{"group": "", "kind": "Service", "name": "api"}, {"group": "", "kind": "Secret"}]},
        });
        assert_eq!(super::cells(&o), vec!["HTTPRoute/web", "Service/api,Secret/*"]);
        let text = describe(Kind::ReferenceGrant, &o, &json!({"items": []}), Utc::now());
        assert!(
            text.contains("gateway.networking.k8s.io") && text.contains("HTTPRoute") && text.contains("web"),
            "{text}"
        );
        assert!(text.contains("Service") && text.contains("api") && text.contains("Secret"), "{text}");
    }
}
