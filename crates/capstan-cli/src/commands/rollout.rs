//! `capstan rollout`: status (following an update), history, undo and restart.

use std::io::IsTerminal;
use std::time::Duration;

use anyhow::Result;
use capstan_api::Client;
use capstan_model::parse_duration;
use chrono::Utc;
use serde_json::json;

use super::api_failure;
use super::wait::{condition_summary, is_ready};
use crate::output::{age, table, time_of};
use crate::{Failure, RolloutCommand, EXIT_OK};

pub(super) async fn rollout(client: &Client, action: RolloutCommand) -> Result<u8> {
    match action {
        RolloutCommand::Status { app, namespace, timeout } => {
            let ns = namespace.unwrap_or_else(|| "default".into());
            let timeout = parse_duration(&timeout).map_err(|e| Failure::invalid(format!("error: --timeout: {e}")))?;
            rollout_status(client, &ns, &app, timeout).await
        }
        RolloutCommand::History { app, namespace } => {
            let ns = namespace.unwrap_or_else(|| "default".into());
            let h = client.get(&format!("/api/v1/namespaces/{ns}/apps/{app}/revisions")).await.map_err(api_failure)?;
            let now = Utc::now();
            let rows: Vec<Vec<String>> = h["items"]
                .as_array()
                .into_iter()
                .flatten()
                .map(|r| {
                    let rev = r["revision"].as_str().unwrap_or("").to_string();
                    let mut marks = Vec::new();
                    if h["revision"] == r["revision"] {
                        marks.push("spec");
                    }
                    if h["currentRevision"] == r["revision"] {
                        marks.push("current");
                    }
                    if h["updateRevision"] == r["revision"] && h["updateRevision"] != h["currentRevision"] {
                        marks.push("updating");
                    }
                    vec![
                        rev,
                        r["generation"].as_i64().map(|g| g.to_string()).unwrap_or_default(),
                        age(time_of(&r["createdAt"]), now),
                        r["cause"]
                            .as_str()
                            .or_else(|| r["restartedAt"].as_str().map(|_| "restart"))
                            .unwrap_or("")
                            .to_string(),
                        marks.join(","),
                    ]
                })
                .collect();
            println!("{}", table(&["REVISION", "GENERATION", "AGE", "CAUSE", "STATE"], &rows));
            Ok(EXIT_OK)
        }
        RolloutCommand::Undo { app, to_revision, namespace } => {
            let ns = namespace.unwrap_or_else(|| "default".into());
            let r = client
                .post(&format!("/api/v1/namespaces/{ns}/apps/{app}/rollback"), json!({ "toRevision": to_revision }))
                .await
                .map_err(api_failure)?;
            println!("app/{app} rolled back to revision {}", r["revision"].as_str().unwrap_or(""));
            Ok(EXIT_OK)
        }
        RolloutCommand::Restart { app, namespace } => {
            let ns = namespace.unwrap_or_else(|| "default".into());
            client
                .post(&format!("/api/v1/namespaces/{ns}/apps/{app}/restart"), json!({}))
                .await
                .map_err(api_failure)?;
            println!("app/{app} restarted");
            Ok(EXIT_OK)
        }
    }
}

/// Follows an update: a progress bar on a terminal, a line per change otherwise.
async fn rollout_status(client: &Client, ns: &str, app: &str, timeout: Duration) -> Result<u8> {
    let deadline = tokio::time::Instant::now() + timeout;
    let tty = std::io::stderr().is_terminal();
    let bar = indicatif::ProgressBar::new(1);
    if tty {
        bar.set_style(
            indicatif::ProgressStyle::with_template("{spinner} {prefix} [{bar:30}] {pos}/{len} updated {msg}")
                .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar())
                .progress_chars("=> "),
        );
        bar.set_prefix(format!("app/{app}"));
        bar.enable_steady_tick(Duration::from_millis(120));
    } else {
        bar.set_draw_target(indicatif::ProgressDrawTarget::hidden());
    }
    let mut last = String::new();
    loop {
        let o = client.get(&format!("/api/v1/namespaces/{ns}/apps/{app}")).await.map_err(api_failure)?;
        let st = &o["status"];
        let want = o["spec"]["replicas"].as_u64().unwrap_or(1);
        let updated = st["updatedReplicas"].as_u64().unwrap_or(0);
        let ready = st["readyReplicas"].as_u64().unwrap_or(0);
        let phase = st["rollout"]["phase"].as_str().unwrap_or("");
        let line = format!("{updated}/{want} updated, {ready}/{want} ready ({})", condition_summary(&o));
        bar.set_length(want);
        bar.set_position(updated);
        bar.set_message(format!("{ready} ready"));
        if !tty && line != last {
            eprintln!("{line}");
        }
        last = line;
        match phase {
            "Failed" | "RolledBack" if st["rollout"]["revision"] == st["revision"] => {
                bar.abandon();
                return Err(Failure::fail(format!(
                    "error: rollout of app/{app} {}: {}",
                    if phase == "Failed" { "failed" } else { "was rolled back" },
                    st["rollout"]["message"].as_str().unwrap_or("")
                ))
                .into());
            }
            _ => {}
        }
        if is_ready(&o) {
            bar.finish_and_clear();
            println!("app/{app} successfully rolled out (revision {})", st["revision"].as_str().unwrap_or(""));
            return Ok(EXIT_OK);
        }
        if tokio::time::Instant::now() >= deadline {
            bar.abandon();
            return Err(Failure::fail(format!("error: timed out waiting for app/{app}: {last}")).into());
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}
