//! `capstan logs`: the streams of one or more Apps (or those a label selector picks), merged and filtered.

use anyhow::Result;
use capstan_api::Client;
use capstan_model::parse_duration;
use chrono::Utc;
use serde_json::{json, Value};

use super::api_failure;
use crate::{Failure, EXIT_OK};

/// Which lines `capstan logs` asks for.
pub(super) struct LogFilter {
    pub(super) since: Option<String>,
    pub(super) until: Option<String>,
    pub(super) grep: Option<String>,
    pub(super) tail: Option<usize>,
}

/// The Apps in a namespace whose labels include every `key=value` of the selector.
pub(super) async fn apps_matching(client: &Client, ns: &str, selector: &str) -> Result<Vec<String>> {
    let mut wanted = Vec::new();
    for part in selector.split(',').filter(|p| !p.is_empty()) {
        let Some((k, v)) = part.split_once('=') else {
            return Err(Failure::invalid(format!("error: -l `{part}` is not key=value")).into());
        };
        wanted.push((k.trim().to_string(), v.trim().to_string()));
    }
    let items = client.get(&format!("/api/v1/apps?namespace={ns}")).await.map_err(api_failure)?;
    let mut names: Vec<String> = items["items"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|a| wanted.iter().all(|(k, v)| a["metadata"]["labels"][k].as_str() == Some(v.as_str())))
        .filter_map(|a| a["metadata"]["name"].as_str().map(str::to_string))
        .collect();
    // A finished TrainingJob's tasks have no App any more; their logs are kept until the job is deleted.
    if wanted.iter().any(|(k, _)| k == capstan_model::training::TASK_JOB_LABEL) {
        let jobs = client.get(&format!("/api/v1/trainingjobs?namespace={ns}")).await.map_err(api_failure)?;
        for job in jobs["items"].as_array().into_iter().flatten() {
            let Ok(job) = serde_json::from_value::<capstan_model::TrainingJob>(job.clone()) else { continue };
            for t in job.status.iter().flat_map(|s| s.tasks.iter()) {
                let labels = capstan_model::training::task_labels(&job.metadata.name, t.type_, t.index);
                let matches = wanted.iter().all(|(k, v)| labels.get(k) == Some(v));
                if matches && !names.contains(&t.name) {
                    names.push(t.name.clone());
                }
            }
        }
        names.sort();
    }
    if names.is_empty() {
        return Err(Failure::fail(format!("error: no App in namespace {ns} has labels {selector}")).into());
    }
    Ok(names)
}

fn ago(flag: &str, s: &str) -> Result<String> {
    let d = parse_duration(s).map_err(|e| Failure::invalid(format!("error: --{flag}: {e}")))?;
    let t = Utc::now() - chrono::Duration::from_std(d).unwrap_or_default();
    Ok(t.to_rfc3339_opts(chrono::SecondsFormat::Millis, true).replace('+', "%2B"))
}

/// How `capstan logs` prints a line.
pub(super) struct LogFormat {
    pub(super) timestamps: bool,
    /// Keep escape sequences as the replica wrote them.
    pub(super) ansi: bool,
}

pub(super) async fn logs(
    client: &Client,
    apps: &[String],
    ns: &str,
    replica: Option<u32>,
    follow: bool,
    filter: &LogFilter,
    format: LogFormat,
) -> Result<u8> {
    let mut q = vec![format!("follow={follow}")];
    if let Some(r) = replica {
        q.push(format!("replica={r}"));
    }
    if let Some(s) = &filter.since {
        q.push(format!("since={}", ago("since", s)?));
    }
    if let Some(s) = &filter.until {
        q.push(format!("until={}", ago("until", s)?));
    }
    if let Some(g) = &filter.grep {
        let encoded: String = g
            .bytes()
            .map(|b| if b.is_ascii_alphanumeric() { (b as char).to_string() } else { format!("%{b:02X}") })
            .collect();
        q.push(format!("grep={encoded}"));
    }
    if let Some(n) = filter.tail {
        q.push(format!("tail={n}"));
    }
    // One stream per App, merged as lines arrive; a stream that ends while following says why.
    let (tx, mut rx) = tokio::sync::mpsc::channel::<Value>(1024);
    for app in apps {
        let mut stream = client
            .stream(&format!("/api/v1/namespaces/{ns}/apps/{app}/logs?{}", q.join("&")))
            .await
            .map_err(api_failure)?;
        let tx = tx.clone();
        let app = app.clone();
        tokio::spawn(async move {
            let mut ended = false;
            while let Some(l) = stream.recv().await {
                ended = l.get("end").is_some();
                if tx.send(l).await.is_err() {
                    return;
                }
            }
            if follow && !ended {
                let why = format!("the connection to Capstan closed while following app/{app}");
                let _ = tx.send(json!({ "end": why })).await;
            }
        });
    }
    drop(tx);
    let prefix = replica.is_none() || apps.len() > 1;
    let mut ended = Vec::new();
    while let Some(l) = rx.recv().await {
        if let Some(why) = l.get("end") {
            ended.push(why.as_str().unwrap_or("the stream ended").to_string());
            continue;
        }
        if let Some(n) = l.get("skipped") {
            eprintln!("warning: {n} lines were skipped: this client fell behind the replicas' output");
            continue;
        }
        let mut line = String::new();
        if format.timestamps {
            line.push_str(l["time"].as_str().unwrap_or(""));
            line.push(' ');
        }
        if prefix {
            line.push_str(&format!("[{}] ", l["replica"].as_str().unwrap_or("")));
        }
        let text = l["text"].as_str().unwrap_or("");
        if format.ansi {
            line.push_str(text);
        } else {
            line.push_str(&console::strip_ansi_codes(text));
        }
        if l["stream"] == "stderr" {
            eprintln!("{line}");
        } else {
            println!("{line}");
        }
    }
    if !ended.is_empty() {
        return Err(Failure::fail(format!("error: stopped following: {}", ended.join("; "))).into());
    }
    Ok(EXIT_OK)
}
