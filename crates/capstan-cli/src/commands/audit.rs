//! `capstan audit`: who changed what, who was refused, who read Secret values — the control plane's audit log.

use anyhow::Result;
use capstan_api::Client;
use serde_json::Value;

use super::api_failure;
use crate::output::table;
use crate::{Failure, EXIT_OK};

/// Prints the audit log's lines (oldest first), filtered by age, user and kind; `-o json` prints them one JSON
/// object per line, as they are stored.
pub(super) async fn audit(
    client: &Client,
    since: Option<&str>,
    user: Option<&str>,
    kind: Option<&str>,
    output: &str,
) -> Result<u8> {
    if !matches!(output, "table" | "json") {
        return Err(Failure::invalid(format!("error: -o {output}: use table or json")).into());
    }
    let mut query = form_urlencoded::Serializer::new(String::new());
    for (k, v) in [("since", since), ("user", user), ("kind", kind)] {
        if let Some(v) = v {
            query.append_pair(k, v);
        }
    }
    let path = format!("/api/v1/audit?{}", query.finish());
    let answer = client.get(&path).await.map_err(api_failure)?;
    let items = answer["items"].as_array().cloned().unwrap_or_default();
    if output == "json" {
        for i in &items {
            println!("{}", serde_json::to_string(i).unwrap_or_default());
        }
        return Ok(EXIT_OK);
    }
    if items.is_empty() {
        eprintln!("No audit lines match.");
        return Ok(EXIT_OK);
    }
    let s = |v: &Value| v.as_str().unwrap_or("").to_string();
    let rows: Vec<Vec<String>> = items
        .iter()
        .map(|i| {
            let object = match (s(&i["kind"]), s(&i["namespace"]), s(&i["name"])) {
                (k, _, _) if k.is_empty() => {
                    let objects: Vec<String> = i["objects"].as_array().into_iter().flatten().map(s).collect();
                    objects.join(",")
                }
                (k, ns, n) if ns.is_empty() && n.is_empty() => k,
                (k, ns, n) if ns.is_empty() => format!("{k}/{n}"),
                (k, ns, n) => format!("{k}/{ns}/{n}"),
            };
            vec![
                s(&i["time"]),
                s(&i["user"]),
                s(&i["verb"]),
                object,
                format!("{} {}", s(&i["result"]), i["status"]),
                s(&i["source"]),
            ]
        })
        .collect();
    println!("{}", table(&["TIME", "USER", "VERB", "OBJECT", "RESULT", "SOURCE"], &rows));
    Ok(EXIT_OK)
}
