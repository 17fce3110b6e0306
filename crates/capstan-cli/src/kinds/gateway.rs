//! A Gateway in `get` and `describe`, with kubectl's columns: its class, addresses, whether it is programmed, and
//! each listener with its attached routes and conditions.

use chrono::{DateTime, Utc};
use serde_json::Value;

use crate::commands::{conditions_section, indent};
use crate::output::table;

pub fn columns() -> Vec<&'static str> {
    vec!["NAME", "CLASS", "ADDRESS", "PROGRAMMED", "AGE"]
}

fn condition<'a>(conditions: &'a Value, kind: &str) -> &'a str {
    conditions
        .as_array()
        .into_iter()
        .flatten()
        .find(|c| c["type"] == kind)
        .and_then(|c| c["status"].as_str())
        .unwrap_or("Unknown")
}

pub fn cells(o: &Value) -> Vec<String> {
    let addresses: Vec<&str> =
        o["status"]["addresses"].as_array().into_iter().flatten().filter_map(|a| a["value"].as_str()).collect();
    vec![
        o["spec"]["gatewayClassName"].as_str().unwrap_or("").to_string(),
        addresses.join(","),
        condition(&o["status"]["conditions"], "Programmed").to_string(),
    ]
}

pub fn describe(o: &Value, now: DateTime<Utc>, out: &mut String) {
    let spec = &o["spec"];
    let st = &o["status"];
    super::put_field(out, "Class", spec["gatewayClassName"].as_str().unwrap_or("").to_string());
    let addresses: Vec<&str> =
        st["addresses"].as_array().into_iter().flatten().filter_map(|a| a["value"].as_str()).collect();
    super::put_field(out, "Addresses", addresses.join(", "));
    let s = |v: &Value| v.as_str().unwrap_or("").to_string();
    let rows: Vec<Vec<String>> = spec["listeners"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|l| {
            let ls = st["listeners"].as_array().into_iter().flatten().find(|x| x["name"] == l["name"]);
            let cond = |t: &str| ls.map_or("Unknown", |x| condition(&x["conditions"], t)).to_string();
            let certs: Vec<String> =
                l["tls"]["certificateRefs"].as_array().into_iter().flatten().map(|c| s(&c["name"])).collect();
            vec![
                s(&l["name"]),
                s(&l["protocol"]),
                l["port"].as_u64().unwrap_or(0).to_string(),
                l["hostname"].as_str().unwrap_or("*").to_string(),
                certs.join(","),
                ls.and_then(|x| x["attachedRoutes"].as_i64()).unwrap_or(0).to_string(),
                cond("Programmed"),
                cond("Conflicted"),
            ]
        })
        .collect();
    out.push_str("Listeners:\n");
    out.push_str(&indent(&table(
        &["NAME", "PROTOCOL", "PORT", "HOSTNAME", "CERTIFICATES", "ROUTES", "PROGRAMMED", "CONFLICTED"],
        &rows,
    )));
    // A listener that is not programmed says why.
    for l in st["listeners"].as_array().into_iter().flatten() {
        for c in l["conditions"].as_array().into_iter().flatten() {
            let bad = match c["type"].as_str() {
                Some("Conflicted") => c["status"] == "True",
                _ => c["status"] == "False",
            };
            if bad {
                out.push_str(&format!(
                    "  {}: {} {}: {}\n",
                    s(&l["name"]),
                    s(&c["type"]),
                    s(&c["reason"]),
                    s(&c["message"])
                ));
            }
        }
    }
    out.push_str(&conditions_section(st, now));
}

#[cfg(test)]
mod tests {
    use capstan_model::Kind;
    use chrono::Utc;
    use serde_json::json;

    use crate::kinds::describe;

    #[test]
    fn a_gateway_lists_its_listeners_with_routes_and_says_why_one_is_not_programmed() {
        let o = json!({
            "metadata": {"name": "front", "namespace": "default"},
            "spec": {"gatewayClassName": "capstan", "listeners": [
                {"name": "http", "port": 80, "protocol": "HTTP"},
                {"name": "https", "port": 443, "protocol": "HTTPS", "hostname": "*.example.com",
                 "tls": {"certificateRefs": [{"name": "wild"}]}}]},
            "status": {"listeners": [
                {"name": "http", "attachedRoutes": 3, "supportedKinds": [], "conditions": [
                    {"type": "Programmed", "status": "True", "reason": "Programmed", "message": ""}]},
                {"name": "https", "attachedRoutes": 0, "supportedKinds": [], "conditions": [
                    {"type": "Programmed", "status": "False", "reason": "Invalid", "message": "no certificate"},
                    {"type": "ResolvedRefs", "status": "False", "reason": "InvalidCertificateRef",
                     "message": "Secret default/wild has no tls.key"}]}]},
        });
        let text = describe(Kind::Gateway, &o, &json!({"items": []}), Utc::now());
        assert!(text.contains("Class:            capstan"), "{text}");
        assert!(text.contains("*.example.com"), "{text}");
        assert!(
            text.contains("https: ResolvedRefs InvalidCertificateRef: Secret default/wild has no tls.key"),
            "{text}"
        );
        let http_row = text.lines().find(|l| l.trim_start().starts_with("http ")).expect(&text);
        assert!(http_row.contains(" 3 ") && http_row.contains("True"), "{http_row}");
        assert_eq!(super::cells(&o), vec!["capstan", "", "Unknown"]);
    }
}
