//! A ConfigMap in `get` and `describe`: how many keys, and each value (ConfigMaps hold nothing secret), as kubectl.

use chrono::{DateTime, Utc};
use serde_json::Value;

pub fn columns() -> Vec<&'static str> {
    vec!["NAME", "DATA", "AGE"]
}

fn count(o: &Value) -> usize {
    ["data", "binaryData"].iter().filter_map(|f| o["spec"][f].as_object()).map(|m| m.len()).sum()
}

pub fn cells(o: &Value) -> Vec<String> {
    vec![count(o).to_string()]
}

/// Each text value under its key, and the size of each binary one.
pub fn describe(o: &Value, _now: DateTime<Utc>, out: &mut String) {
    out.push_str("Data\n====\n");
    for (k, v) in o["spec"]["data"].as_object().into_iter().flatten() {
        out.push_str(&format!("{k}:\n----\n{}\n\n", v.as_str().unwrap_or("").trim_end()));
    }
    let binary = o["spec"]["binaryData"].as_object();
    if binary.is_some_and(|b| !b.is_empty()) {
        out.push_str("BinaryData\n====\n");
        for (k, v) in binary.into_iter().flatten() {
            // base64: three bytes for four characters, less the padding.
            let s = v.as_str().unwrap_or("");
            let bytes = s.len() / 4 * 3 - s.chars().rev().take_while(|c| *c == '=').count();
            out.push_str(&format!("{k}: {bytes} bytes\n"));
        }
    }
}

#[cfg(test)]
mod tests {
    use capstan_model::Kind;
    use chrono::Utc;
    use serde_json::json;

    #[test]
    fn a_config_map_shows_its_values() {
        let o = json!({"kind": "ConfigMap", "metadata": {"name": "ca", "namespace": "default"},
            "spec": {"data": {"ca.crt": "-----BEGIN CERTIFICATE-----\n"}, "binaryData": {"raw": "AAEC"}}});
        assert_eq!(crate::kinds::row(Kind::ConfigMap, &o, false, false, Utc::now())[..2], ["ca", "2"]);
        let text = crate::kinds::describe(Kind::ConfigMap, &o, &json!([]), Utc::now());
        assert!(text.contains("ca.crt:\n----\n-----BEGIN CERTIFICATE-----\n"), "{text}");
        assert!(text.contains("raw: 3 bytes"), "{text}");
    }
}
