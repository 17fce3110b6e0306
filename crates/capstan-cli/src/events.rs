//! `capstan get events`: every object's events, oldest first, as `kubectl get events` lists them; `--watch` goes
//! on with each new one.

use anyhow::Result;
use capstan_api::Client;
use chrono::Utc;
use serde_json::Value;

use crate::output::{age, table, time_of};
use crate::{Failure, EXIT_OK};

/// Whether `kind` names events rather than one of Capstan's kinds.
pub fn is_events(kind: &str) -> bool {
    matches!(kind.to_ascii_lowercase().as_str(), "events" | "event" | "ev")
}

fn headers(all: bool) -> Vec<&'static str> {
    let mut h = vec![];
    if all {
        h.push("NAMESPACE");
    }
    h.extend(["LAST SEEN", "TYPE", "REASON", "OBJECT", "COUNT", "MESSAGE"]);
    h
}

fn row(e: &Value, all: bool) -> Vec<String> {
    let o = &e["involvedObject"];
    let mut r = vec![];
    if all {
        r.push(o["namespace"].as_str().unwrap_or("").to_string());
    }
    r.push(age(time_of(&e["lastTimestamp"]), Utc::now()));
    r.push(e["type"].as_str().unwrap_or("").to_string());
    r.push(e["reason"].as_str().unwrap_or("").to_string());
    r.push(format!("{}/{}", o["kind"].as_str().unwrap_or("").to_ascii_lowercase(), o["name"].as_str().unwrap_or("")));
    r.push(e["count"].as_u64().unwrap_or(1).to_string());
    r.push(e["message"].as_str().unwrap_or("").to_string());
    r
}

/// Lists (and with `watch` follows) the events of namespace `ns`, or of every namespace with `all`.
pub async fn get(client: &Client, ns: &str, all: bool, output: &str, watch: bool) -> Result<u8> {
    if !["table", "wide", "json", "yaml"].contains(&output) {
        return Err(Failure::invalid(format!(
            "error: unknown output format `{output}`\n  hint: use table, wide, json or yaml"
        ))
        .into());
    }
    let filter = if all { String::new() } else { format!("namespace={ns}") };
    if !watch {
        let v = client.get(&format!("/api/v1/events?{filter}")).await.map_err(crate::commands::api_failure)?;
        match output {
            "json" => println!("{}", serde_json::to_string_pretty(&v)?),
            "yaml" => print!("{}", capstan_model::yaml::to_yaml_string(&v)),
            _ => {
                let items = v["items"].as_array().cloned().unwrap_or_default();
                if items.is_empty() {
                    eprintln!("No events found{}.", if all { String::new() } else { format!(" in namespace {ns}") });
                } else {
                    let rows: Vec<Vec<String>> = items.iter().map(|e| row(e, all)).collect();
                    println!("{}", table(&headers(all), &rows));
                }
            }
        }
        return Ok(EXIT_OK);
    }
    let mut rx =
        client.stream(&format!("/api/v1/events?watch=true&{filter}")).await.map_err(crate::commands::api_failure)?;
    let mut header = true;
    while let Some(e) = rx.recv().await {
        if e["type"] == "ERROR" {
            let why = e["object"]["message"].as_str().unwrap_or("the server ended the watch");
            return Err(Failure::fail(format!("error: stopped watching: {why}")).into());
        }
        match output {
            "json" => println!("{}", serde_json::to_string(&e)?),
            "yaml" => print!("---\n{}", capstan_model::yaml::to_yaml_string(&e)),
            _ => {
                // Each row is laid out on its own, so the columns of later rows follow the header's widths.
                let text = table(&headers(all), &[row(&e, all)]);
                let mut lines = text.lines();
                let head = lines.next().unwrap_or("");
                if header {
                    println!("{head}");
                    header = false;
                }
                println!("{}", lines.next().unwrap_or(""));
            }
        }
    }
    Err(Failure::fail("error: stopped watching: the connection to Capstan closed").into())
}
