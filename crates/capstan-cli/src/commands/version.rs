//! `capstan version`: the client's build and the server's.

use anyhow::Result;
use capstan_api::Client;
use serde_json::{json, Value};

use super::s_or;
use crate::EXIT_OK;

/// `capstan version`: like `kubectl version`, the client's build and the server's, if one answers.
pub(super) async fn version(server: Option<Result<Client>>, output: &str) -> Result<u8> {
    let mine = capstan_api::build_info();
    let server = match server {
        None => None,
        Some(Ok(c)) => Some(c.get("/version").await.map_err(|e| e.to_string())),
        Some(Err(e)) => Some(Err(e.to_string().lines().next().unwrap_or("").to_string())),
    };
    let line =
        |v: &Value| format!("{} (commit {}, {})", s_or(&v["version"]), s_or(&v["commit"]), s_or(&v["commitDate"]));
    match output {
        "json" | "yaml" => {
            let mut v = json!({ "clientVersion": mine });
            if let Some(Ok(sv)) = &server {
                v["serverVersion"] = sv.clone();
            }
            if output == "json" {
                println!("{}", serde_json::to_string_pretty(&v).unwrap_or_default());
            } else {
                print!("{}", capstan_model::yaml::to_yaml_string(&v));
            }
        }
        _ => {
            println!("Client Version: {}", line(&mine));
            match &server {
                Some(Ok(sv)) => println!("Server Version: {}", line(sv)),
                Some(Err(e)) => eprintln!("Server Version: unknown: {e}"),
                None => {}
            }
        }
    }
    Ok(EXIT_OK)
}
