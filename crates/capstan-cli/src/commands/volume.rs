//! `capstan volume sync`: copies a volume from one replica of an App to another.

use std::io::IsTerminal;
use std::time::Duration;

use anyhow::Result;
use capstan_api::Client;
use serde_json::json;

use super::api_failure;
use crate::EXIT_OK;

pub(super) async fn volume_sync(client: &Client, app: &str, ns: &str, volume: &str, from: u32, to: u32) -> Result<u8> {
    let what = format!("draining {app}-{to}, copying {volume} from {app}-{from}, verifying the copy");
    let spinner = if std::io::stderr().is_terminal() {
        let pb = indicatif::ProgressBar::new_spinner();
        pb.enable_steady_tick(Duration::from_millis(100));
        pb.set_message(what);
        Some(pb)
    } else {
        eprintln!("{what}…");
        None
    };
    let path = format!("/api/v1/namespaces/{ns}/apps/{app}/volumes/{volume}/sync");
    let result = client.post(&path, json!({ "from": from, "to": to })).await;
    if let Some(pb) = spinner {
        pb.finish_and_clear();
    }
    let r = result.map_err(api_failure)?;
    let files = r["live"]["files"].as_u64().unwrap_or(0) + r["frozen"]["files"].as_u64().unwrap_or(0);
    let bytes = r["live"]["bytes"].as_u64().unwrap_or(0) + r["frozen"]["bytes"].as_u64().unwrap_or(0);
    println!(
        "✔ volume {volume}: {app}-{from} → {app}-{to}: {files} files, {bytes} bytes copied and verified in {} ms ({app}-{from} paused {} ms); {app}-{to} is starting",
        r["tookMillis"], r["frozenMillis"]
    );
    Ok(EXIT_OK)
}
