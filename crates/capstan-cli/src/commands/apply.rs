//! `capstan apply -f` on the embedded target: the apply itself, its client and server dry runs, and the wait after.

use anyhow::Result;
use capstan_api::{Client, ClientError};
use capstan_model::{parse_duration, Kind};
use serde_json::{json, Value};

use super::wait::wait_ready;
use super::{api_failure, load_to_change};
use crate::manifests;
use crate::{Failure, EXIT_OK};

async fn post_apply(client: &Client, ms: &[capstan_model::Manifest]) -> Result<Vec<Value>> {
    let objects: Vec<Value> = ms.iter().map(|m| m.resource.to_value()).collect();
    match client.post("/api/v1/apply", json!({ "objects": objects })).await {
        Ok(v) => Ok(v["results"].as_array().cloned().unwrap_or_default()),
        Err(ClientError::Status { body, message, .. }) => match manifests::server_diagnostics(ms, &body) {
            Some(d) => Err(Failure::invalid(format!("{d}\n({message})")).into()),
            None => Err(Failure::fail(format!("error: {message}")).into()),
        },
        Err(e) => Err(api_failure(e)),
    }
}

/// `apply --dry-run=client`: the manifests are read and checked here; nothing is sent.
pub(super) fn apply_dry_run_client(files: &[String]) -> Result<u8> {
    let ms = load_to_change(files, "applied")?;
    for m in &ms {
        println!(
            "{}/{} checked (dry run: client)",
            m.resource.kind().name().to_ascii_lowercase(),
            m.resource.meta().name
        );
    }
    Ok(EXIT_OK)
}

/// `apply --dry-run=server`: the server admits the batch and says what it would do; nothing is stored.
pub(super) async fn apply_dry_run_server(client: &Client, ms_files: &[String]) -> Result<u8> {
    let ms = load_to_change(ms_files, "applied")?;
    let objects: Vec<Value> = ms.iter().map(|m| m.resource.to_value()).collect();
    match client.post("/api/v1/apply?dryRun=true", json!({ "objects": objects })).await {
        Ok(v) => {
            for r in v["results"].as_array().into_iter().flatten() {
                println!(
                    "{}/{} {} (dry run: server)",
                    r["kind"].as_str().unwrap_or("").to_ascii_lowercase(),
                    r["name"].as_str().unwrap_or(""),
                    r["action"].as_str().unwrap_or("")
                );
            }
            Ok(EXIT_OK)
        }
        Err(ClientError::Status { body, message, .. }) => match manifests::server_diagnostics(&ms, &body) {
            Some(d) => Err(Failure::invalid(format!("{d}\n({message})")).into()),
            None => Err(Failure::fail(format!("error: {message}")).into()),
        },
        Err(e) => Err(api_failure(e)),
    }
}

fn print_results(results: &[Value]) {
    for r in results {
        println!(
            "{}/{} {}",
            r["kind"].as_str().unwrap_or("").to_ascii_lowercase(),
            r["name"].as_str().unwrap_or(""),
            r["action"].as_str().unwrap_or("")
        );
    }
}

pub(super) async fn apply(client: &Client, files: &[String], wait: bool, timeout: &str) -> Result<u8> {
    let timeout = parse_duration(timeout).map_err(|e| Failure::invalid(format!("error: --timeout: {e}")))?;
    let ms = load_to_change(files, "applied")?;
    let results = post_apply(client, &ms).await?;
    print_results(&results);
    if wait {
        // Secrets have no status; everything else reports a Ready condition.
        let keys: Vec<(Kind, String, String)> = ms
            .iter()
            .filter(|m| m.resource.kind() != Kind::Secret)
            .map(|m| (m.resource.kind(), m.resource.namespace().to_string(), m.resource.meta().name.clone()))
            .collect();
        return wait_ready(client, &keys, timeout).await;
    }
    Ok(EXIT_OK)
}
