//! `capstan up`: starts the control plane with the manifests (and Git bootstrap) given, until stopped.

use anyhow::Result;
use capstan_api::{ControlPlane, PlaneConfig};
use serde_json::{json, Value};

use super::load_to_change;
use crate::manifests;
use crate::{Failure, EXIT_OK};

pub(super) async fn up(mut cfg: PlaneConfig, paths: Vec<String>, bootstrap: Option<Vec<Value>>) -> Result<u8> {
    let data = cfg.data_dir.clone();
    // Validate first: a bad manifest stops `up` before anything starts.
    let ms = if paths.is_empty() { Vec::new() } else { load_to_change(&paths, "started")? };
    // The manifests (and the Git bootstrap) are admitted before anything starts: a refused batch starts nothing.
    cfg.initial = ms.iter().map(|m| m.resource.to_value()).collect();
    let following = bootstrap.as_ref().map(|objects| objects[0]["spec"]["url"].as_str().unwrap_or("").to_string());
    cfg.initial.extend(bootstrap.into_iter().flatten());
    let mut plane = match ControlPlane::start(cfg).await {
        Ok(p) => p,
        Err(capstan_api::plane::PlaneError::Invalid(errors)) => {
            let body = json!({ "errors": errors });
            let d = manifests::server_diagnostics(&ms, &body).map(|d| d.to_string()).unwrap_or_default();
            return Err(Failure::invalid(format!("{d}\n(the batch was refused; nothing was started)")).into());
        }
        Err(e) => return Err(Failure::fail(format!("error: {e}")).into()),
    };
    for (k, a) in plane.applied().iter().take(ms.len()) {
        println!(
            "{}/{} {}",
            k.kind.to_ascii_lowercase(),
            k.name,
            serde_json::to_value(a).unwrap_or_default().as_str().unwrap_or("")
        );
    }
    if let Some(url) = following {
        println!(
            "following {url}: source/{ns}/{n} and sync/{ns}/{n} (see `capstan get syncs -A`)",
            ns = crate::gitops::BOOTSTRAP_NAMESPACE,
            n = crate::gitops::BOOTSTRAP_NAME
        );
    }
    println!("capstan is up: API {} (data {})", plane.url(), data.display());
    // The local administrator's context, so that the CLI finds this Capstan from anywhere.
    let name = match data == crate::data_dir(None) {
        true => "local".to_string(),
        false => format!("local-{}", data.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default()),
    };
    let absolute = std::fs::canonicalize(&data).unwrap_or_else(|_| data.clone());
    let token_file = absolute.join(capstan_api::TOKEN_FILE);
    match super::config::write_local_context(&name, &plane.url(), plane.ca_file(), &token_file) {
        Ok(path) => println!("  context {name} is current in {path}"),
        Err(e) => eprintln!("warning: the client configuration was not written: {e}"),
    }
    println!("  try: capstan get apps    stop: Ctrl-C (stops every replica)");
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    let keep = tokio::select! {
        _ = tokio::signal::ctrl_c() => false,
        _ = term.recv() => false,
        keep = plane.shutdown_requested() => keep,
    };
    if keep {
        eprintln!("stopping capstan; replicas keep running and will be adopted by the next `capstan up`");
    } else {
        eprintln!("stopping every replica (SIGTERM, then SIGKILL after each App's grace period)…");
    }
    plane.shutdown(keep).await;
    eprintln!("capstan stopped");
    Ok(EXIT_OK)
}
