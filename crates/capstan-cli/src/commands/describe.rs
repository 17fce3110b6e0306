//! `capstan describe`: the object and its events, described by its kind's module, and the sections (conditions,
//! events) every kind's description shares.

use anyhow::Result;
use capstan_api::Client;
use chrono::Utc;
use serde_json::Value;

use super::{api_failure, kind_arg};
use crate::output::{age, table, time_of};
use crate::EXIT_OK;

pub(super) async fn describe(client: &Client, kind: &str, name: &str, ns: Option<&str>) -> Result<u8> {
    let kind = kind_arg(kind)?;
    let ns = ns.unwrap_or("default");
    let path = super::object_path(kind, ns, name);
    let mut o = client.get(&path).await.map_err(api_failure)?;
    let events = client.get(&format!("{path}/events")).await.map_err(api_failure)?;
    if kind == capstan_model::Kind::Certificate {
        // The chain the Secret holds now, read as whoever runs describe may read it.
        let chain = match o["spec"]["secretName"].as_str() {
            Some(secret) => match client.get(&format!("/api/v1/namespaces/{ns}/secrets/{secret}")).await {
                Ok(s) => crate::kinds::certificate::chain_of(&s),
                Err(e) => vec![format!("Secret {secret} cannot be read: {e}")],
            },
            None => Vec::new(),
        };
        o["chain"] = chain.into();
    }
    let now = Utc::now();
    print!("{}", crate::kinds::describe(kind, &o, &events, now));
    Ok(EXIT_OK)
}

/// The `Events:` section of `describe`: the last 20 events, oldest first.
pub(crate) fn events_section(events: &Value, now: chrono::DateTime<Utc>) -> String {
    let mut out = String::new();
    out.push_str("Events:\n");
    let evs: Vec<Vec<String>> = events["items"]
        .as_array()
        .into_iter()
        .flatten()
        .rev()
        .take(20)
        .collect::<Vec<_>>()
        .into_iter()
        .rev()
        .map(|e| {
            vec![
                e["type"].as_str().unwrap_or("").into(),
                e["reason"].as_str().unwrap_or("").into(),
                {
                    let count = e["count"].as_u64().unwrap_or(1);
                    let last = age(time_of(&e["lastTimestamp"]), now);
                    if count > 1 {
                        format!("{last} (x{count} over {})", age(time_of(&e["firstTimestamp"]), now))
                    } else {
                        last
                    }
                },
                e["message"].as_str().unwrap_or("").into(),
            ]
        })
        .collect();
    if evs.is_empty() {
        out.push_str("  <none>\n");
    } else {
        out.push_str(&indent(&table(&["TYPE", "REASON", "AGE", "MESSAGE"], &evs)));
    }
    out
}

/// The `Conditions:` section of `describe`.
pub(crate) fn conditions_section(st: &Value, now: chrono::DateTime<Utc>) -> String {
    let conds: Vec<Vec<String>> = st["conditions"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|c| {
            vec![
                c["type"].as_str().unwrap_or("").into(),
                c["status"].as_str().unwrap_or("").into(),
                c["reason"].as_str().unwrap_or("").into(),
                age(time_of(&c["lastTransitionTime"]), now),
                c["message"].as_str().unwrap_or("").into(),
            ]
        })
        .collect();
    format!("Conditions:\n{}", indent(&table(&["TYPE", "STATUS", "REASON", "SINCE", "MESSAGE"], &conds)))
}

pub(crate) fn indent(s: &str) -> String {
    s.lines().map(|l| format!("  {l}\n")).collect()
}
