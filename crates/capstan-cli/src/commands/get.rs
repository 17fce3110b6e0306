//! `capstan get`: tables (with the App rows), json or yaml, and `-w` watching.

use anyhow::Result;
use capstan_api::Client;
use capstan_model::Kind;
use chrono::Utc;
use serde_json::Value;

use super::{api_failure, kind_arg};
use crate::output::{render, table};
use crate::{Failure, EXIT_OK};

pub(super) async fn get(
    client: &Client,
    kind: &str,
    name: Option<&str>,
    ns: Option<&str>,
    all: bool,
    how: &GetOutput,
) -> Result<u8> {
    let (output, watch) = (how.format.as_str(), how.watch);
    if crate::events::is_events(kind) {
        return crate::events::get(client, ns.unwrap_or("default"), all, output, watch).await;
    }
    let kind = kind_arg(kind)?;
    if !["table", "wide", "json", "yaml"].contains(&output) {
        return Err(Failure::invalid(format!(
            "error: unknown output format `{output}`\n  hint: use table, wide, json or yaml"
        ))
        .into());
    }
    let ns = ns.unwrap_or("default");
    // A cluster-scoped kind has no namespace to filter by or show, as with kubectl.
    let all = all && kind.namespaced();
    let mut items: Vec<Value> = match name {
        Some(n) => vec![client.get(&super::object_path(kind, ns, n)).await.map_err(api_failure)?],
        None => {
            let q = if all || !kind.namespaced() { String::new() } else { format!("?namespace={ns}") };
            client.get(&format!("/api/v1/{}{q}", kind.plural())).await.map_err(api_failure)?["items"]
                .as_array()
                .cloned()
                .unwrap_or_default()
        }
    };
    if output == "json" || output == "yaml" {
        if !how.show_managed_fields {
            // As kubectl: the owner record is bookkeeping, shown on request.
            for o in &mut items {
                if let Some(md) = o["metadata"].as_object_mut() {
                    md.remove("managedFields");
                }
            }
        }
        print!("{}", render(&items, output, name.is_some()));
        return Ok(EXIT_OK);
    }
    if items.is_empty() {
        let place = if all || !kind.namespaced() { String::new() } else { format!(" in namespace {ns}") };
        eprintln!("No {} found{place}.", kind.plural());
        if !watch {
            return Ok(EXIT_OK);
        }
    }
    let now = Utc::now();
    let wide = output == "wide";
    let mut headers = vec![];
    if all {
        headers.push("NAMESPACE");
    }
    headers.extend(crate::kinds::columns(kind, wide));
    let rows: Vec<Vec<String>> = items.iter().map(|o| crate::kinds::row(kind, o, all, wide, now)).collect();
    println!("{}", table(&headers, &rows));
    if !watch {
        return Ok(EXIT_OK);
    }
    // Like `kubectl get -w`: one more row per change, until interrupted.
    let mut rx = client.stream(&format!("/api/v1/watch?kind={}", kind.plural())).await.map_err(api_failure)?;
    while let Some(ev) = rx.recv().await {
        let o = &ev["object"];
        if ev["type"] == "ERROR" {
            return Err(Failure::fail(format!(
                "error: stopped watching: {}",
                o["message"].as_str().unwrap_or("the server ended the watch")
            ))
            .into());
        }
        let same_ns = all || !kind.namespaced() || o["metadata"]["namespace"] == ns;
        let same_name = name.is_none_or(|n| o["metadata"]["name"] == n);
        if same_ns && same_name {
            let mut row = crate::kinds::row(kind, o, all, wide, Utc::now());
            if ev["type"] == "Deleted" {
                let col = if kind == Kind::App { 2 } else { 1 };
                row[if all { col + 1 } else { col }] = "Deleted".into();
            }
            println!("{}", table(&headers, &[row]).lines().nth(1).unwrap_or_default());
        }
    }
    Err(Failure::fail("error: stopped watching: the connection to Capstan closed").into())
}

/// How `get` prints.
pub(super) struct GetOutput {
    /// table, wide, json or yaml.
    pub(super) format: String,
    pub(super) watch: bool,
    pub(super) show_managed_fields: bool,
}
