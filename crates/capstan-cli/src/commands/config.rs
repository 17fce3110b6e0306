//! `capstan login` and `capstan config`: the client's contexts, as kubectl's (server, CA file, token), and which
//! one the CLI uses.

use std::path::Path;

use anyhow::Result;
use capstan_api::contexts::{config_path, Config, Context};
use capstan_api::Client;

use super::api_failure;
use crate::output::table;
use crate::{ConfigCommand, Failure, EXIT_OK};

fn context_failure(e: capstan_api::contexts::ContextError) -> anyhow::Error {
    Failure::fail(format!("error: {e}")).into()
}

/// The default name of a server's context: its host and port.
fn name_of(server: &str) -> String {
    let rest = server.split_once("://").map_or(server, |(_, r)| r);
    rest.trim_end_matches('/').replace(['/', ':'], "-").trim_matches('-').to_string()
}

/// Checks the server with the token (and the CA), then writes the context and makes it current.
pub(super) async fn login(server: &str, token_file: &Path, ca: Option<&Path>, name: Option<String>) -> Result<u8> {
    let token = capstan_api::client::read_token_file(token_file).map_err(|e| Failure::fail(format!("error: {e}")))?;
    let ca = ca.map(|c| std::fs::canonicalize(c).unwrap_or_else(|_| c.to_path_buf()));
    let client = Client::with_ca(server, token.clone(), ca.as_deref()).map_err(api_failure)?;
    let me = client.get("/api/v1/whoami").await.map_err(api_failure)?;
    let path = config_path();
    let mut cfg = Config::load(&path).map_err(context_failure)?;
    let name = name.unwrap_or_else(|| name_of(server));
    cfg.upsert(Context {
        name: name.clone(),
        server: server.trim_end_matches('/').to_string(),
        certificate_authority: ca,
        token: Some(token),
        token_file: None,
    });
    cfg.current_context = Some(name.clone());
    cfg.save(&path).map_err(context_failure)?;
    println!(
        "logged in to {server} as {} ({}); context {name} is current ({})",
        me["user"].as_str().unwrap_or_default(),
        me["role"].as_str().unwrap_or_default(),
        path.display()
    );
    Ok(EXIT_OK)
}

pub(super) fn config(action: ConfigCommand) -> Result<u8> {
    let path = config_path();
    let mut cfg = Config::load(&path).map_err(context_failure)?;
    match action {
        ConfigCommand::GetContexts => {
            let current = cfg.current_context.clone().unwrap_or_default();
            let rows: Vec<Vec<String>> = cfg
                .contexts
                .iter()
                .map(|c| {
                    vec![
                        if c.name == current { "*".into() } else { String::new() },
                        c.name.clone(),
                        c.server.clone(),
                        c.certificate_authority.as_ref().map(|p| p.display().to_string()).unwrap_or("(system)".into()),
                    ]
                })
                .collect();
            if rows.is_empty() {
                eprintln!("No contexts in {}: `capstan up` or `capstan login` adds one.", path.display());
            } else {
                println!("{}", table(&["CURRENT", "NAME", "SERVER", "CERTIFICATE-AUTHORITY"], &rows));
            }
        }
        ConfigCommand::UseContext { name } => {
            cfg.get(&name, &path).map_err(context_failure)?;
            cfg.current_context = Some(name.clone());
            cfg.save(&path).map_err(context_failure)?;
            println!("Switched to context \"{name}\".");
        }
        ConfigCommand::CurrentContext => match &cfg.current_context {
            Some(c) => println!("{c}"),
            None => return Err(Failure::fail(format!("error: no current context in {}", path.display())).into()),
        },
    }
    Ok(EXIT_OK)
}

/// Writes the local administrator's context for a plane `capstan up` started, and makes it current.
pub(super) fn write_local_context(name: &str, url: &str, ca: Option<&Path>, token_file: &Path) -> Result<String> {
    let path = config_path();
    let mut cfg = Config::load(&path).map_err(context_failure)?;
    cfg.upsert(Context {
        name: name.into(),
        server: url.into(),
        certificate_authority: ca.map(Path::to_path_buf),
        token: None,
        token_file: Some(token_file.to_path_buf()),
    });
    cfg.current_context = Some(name.into());
    cfg.save(&path).map_err(context_failure)?;
    Ok(path.display().to_string())
}

#[cfg(test)]
mod tests {
    #[test]
    fn a_context_is_named_after_its_host_and_port() {
        assert_eq!(super::name_of("https://capstan.example.com:7470/"), "capstan.example.com-7470");
        assert_eq!(super::name_of("https://[::1]:7470"), "[--1]-7470");
    }
}
