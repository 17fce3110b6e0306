//! `capstan db backup` and `capstan db restore`.

use anyhow::Result;
use capstan_api::Client;
use serde_json::{json, Value};

use super::api_failure;
use crate::{DbCommand, EXIT_OK};

pub(super) async fn db(client: &Client, action: DbCommand) -> Result<u8> {
    let (verb, name, ns, body) = match action {
        DbCommand::Backup { name, namespace } => ("backup", name, namespace, Value::Null),
        DbCommand::Restore { name, file, namespace } => ("restore", name, namespace, json!({ "file": file })),
    };
    let ns = ns.unwrap_or_else(|| "default".into());
    let r =
        client.post(&format!("/api/v1/namespaces/{ns}/databases/{name}/{verb}"), body).await.map_err(api_failure)?;
    let done = if verb == "backup" { "backed up to" } else { "restored from" };
    println!("✔ database/{name} {done} {} ({} bytes)", r["file"].as_str().unwrap_or(""), r["bytes"]);
    Ok(EXIT_OK)
}
