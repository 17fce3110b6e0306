//! `capstan token`: named API tokens with a role, a namespace and an expiry — made (and shown once), listed,
//! revoked.

use anyhow::Result;
use capstan_api::Client;
use serde_json::{json, Value};

use super::api_failure;
use crate::output::table;
use crate::{Failure, TokenCommand, EXIT_OK};

pub(super) async fn token(client: &Client, action: TokenCommand) -> Result<u8> {
    match action {
        TokenCommand::Create { name, role, namespace, ttl, output } => {
            let body = json!({ "name": name, "role": role, "namespace": namespace, "ttl": ttl });
            let made = client.post("/api/v1/tokens", body).await.map_err(api_failure)?;
            let token = made["token"].as_str().unwrap_or_default();
            match output.as_str() {
                "json" => println!("{}", serde_json::to_string_pretty(&made).unwrap_or_default()),
                // The token alone, for `> file`; what it is goes to stderr.
                "token" => println!("{token}"),
                other => return Err(Failure::invalid(format!("error: -o {other}: use token or json")).into()),
            }
            eprintln!(
                "token {name} ({}{}), {}; it is shown this once",
                made["role"].as_str().unwrap_or_default(),
                made["namespace"].as_str().map(|ns| format!(" in {ns}")).unwrap_or_else(|| ", every namespace".into()),
                made["expiresAt"].as_str().map(|t| format!("expires {t}")).unwrap_or_else(|| "no expiry".into()),
            );
            Ok(EXIT_OK)
        }
        TokenCommand::WhoAmI => {
            let me = client.get("/api/v1/whoami").await.map_err(api_failure)?;
            let ns = me["namespace"].as_str().map(|ns| format!("namespace {ns}")).unwrap_or("every namespace".into());
            println!("{} ({}, {ns})", me["user"].as_str().unwrap_or_default(), me["role"].as_str().unwrap_or_default());
            Ok(EXIT_OK)
        }
        TokenCommand::List { output } => {
            let all = client.get("/api/v1/tokens").await.map_err(api_failure)?;
            let items = all["items"].as_array().cloned().unwrap_or_default();
            if output == "json" {
                println!("{}", serde_json::to_string_pretty(&all).unwrap_or_default());
                return Ok(EXIT_OK);
            }
            let s = |v: &Value, or: &str| v.as_str().unwrap_or(or).to_string();
            let rows: Vec<Vec<String>> = items
                .iter()
                .map(|t| {
                    vec![
                        s(&t["name"], ""),
                        s(&t["role"], ""),
                        s(&t["namespace"], "*"),
                        s(&t["state"], ""),
                        s(&t["createdAt"], ""),
                        s(&t["expiresAt"], "never"),
                    ]
                })
                .collect();
            if rows.is_empty() {
                eprintln!("No named tokens. The data directory's token is the administrator's.");
            } else {
                println!("{}", table(&["NAME", "ROLE", "NAMESPACE", "STATE", "CREATED", "EXPIRES"], &rows));
            }
            Ok(EXIT_OK)
        }
        TokenCommand::Revoke { name } => {
            if name.is_empty() || !name.chars().all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-') {
                return Err(Failure::invalid(format!("error: `{name}` is not a token name")).into());
            }
            client.delete(&format!("/api/v1/tokens/{name}")).await.map_err(api_failure)?;
            println!("token {name} revoked");
            Ok(EXIT_OK)
        }
    }
}
