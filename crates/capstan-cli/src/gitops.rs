//! GitOps commands: `build`, `render`, `diff` of a path against the running state, `sync now` and `up --git`. How
//! each kind looks in `get` and `describe` is in `kinds`.

use std::collections::{BTreeMap, BTreeSet};
use std::io::IsTerminal;
use std::path::Path;
use std::time::Duration;

use anyhow::Result;
use capstan_api::Client;
use capstan_engine::sync::mark_owned;
use capstan_engine::{diff_values, owned_view};
use capstan_gitops::build::{build, BuildOptions};
use capstan_model::{parse_duration, ObjectKey, BASE_DIR_ANNOTATION};
use serde_json::{json, Value};

use crate::kinds::{first_line, ready_of};
use crate::{Failure, EXIT_FAIL, EXIT_OK};

/// Namespace and name of the Source and Sync that `capstan up --git` creates.
pub const BOOTSTRAP_NAMESPACE: &str = "capstan-system";
pub const BOOTSTRAP_NAME: &str = "bootstrap";

fn parse_vars(vars: &[String]) -> Result<BTreeMap<String, String>> {
    let mut out = BTreeMap::new();
    for v in vars {
        let Some((k, val)) = v.split_once('=') else {
            return Err(Failure::invalid(format!("error: --var `{v}` is not NAME=VALUE")).into());
        };
        out.insert(k.to_string(), val.to_string());
    }
    Ok(out)
}

fn build_paths(paths: &[String], opts: &BuildOptions) -> Result<Vec<capstan_model::Manifest>> {
    let mut all = Vec::new();
    let mut errors = Vec::new();
    for p in paths {
        let path = Path::new(p);
        let (root, inner) = if path.is_file() {
            (
                path.parent().unwrap_or(Path::new(".")).to_path_buf(),
                path.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default(),
            )
        } else {
            (path.to_path_buf(), String::new())
        };
        match build(&root, &inner, opts) {
            Ok(ms) => all.extend(ms),
            Err(d) => errors.push(format!("{p}: {d}")),
        }
    }
    if !errors.is_empty() {
        return Err(Failure::invalid(errors.join("\n")).into());
    }
    Ok(all)
}

/// `capstan build PATH…`: the objects a Sync would apply, after substitution and validation.
pub fn build_cmd(paths: &[String], vars: &[String], target_namespace: Option<String>, output: &str) -> Result<u8> {
    let opts = BuildOptions { substitute: parse_vars(vars)?, target_namespace, base_dir: None };
    let ms = build_paths(paths, &opts)?;
    let objects: Vec<Value> = ms.iter().map(|m| m.resource.to_value()).collect();
    match output {
        "json" => println!("{}", serde_json::to_string_pretty(&objects).unwrap_or_default()),
        "yaml" => {
            for o in &objects {
                print!("{}", capstan_model::yaml::to_yaml_string(o));
            }
        }
        other => {
            return Err(
                Failure::invalid(format!("error: unknown output format `{other}`\n  hint: use yaml or json")).into()
            )
        }
    }
    Ok(EXIT_OK)
}

/// The Kubernetes objects for manifests; what cannot be rendered is named by file, line and field.
pub fn render_manifests(
    ms: &[capstan_model::Manifest],
    opts: &capstan_kubernetes::render::RenderOptions,
) -> Result<Vec<Value>> {
    capstan_kubernetes::render::render_manifests(ms, opts).map_err(|lines| {
        let text: Vec<String> = lines.iter().map(|l| format!("error: {l}")).collect();
        Failure::invalid(text.join("\n")).into()
    })
}

/// `capstan render --target kubernetes PATH…`: the Kubernetes objects for the objects in PATH.
pub fn render_cmd(
    paths: &[String],
    target: &str,
    output: &str,
    rbac: bool,
    entry_points: &crate::kube::EntryPointArgs,
) -> Result<u8> {
    if target != "kubernetes" {
        return Err(
            Failure::invalid(format!("error: unknown target `{target}`\n  hint: use --target kubernetes")).into()
        );
    }
    let mut objects = match paths.is_empty() {
        true => Vec::new(),
        false => render_manifests(&build_paths(paths, &BuildOptions::default())?, &entry_points.options()?)?,
    };
    if rbac {
        objects.extend(capstan_kubernetes::roles::cluster_roles());
    }
    match output {
        "json" => println!("{}", serde_json::to_string_pretty(&objects).unwrap_or_default()),
        "yaml" => objects.iter().for_each(|o| print!("{}", capstan_model::yaml::to_yaml_string(o))),
        other => {
            return Err(
                Failure::invalid(format!("error: unknown output format `{other}`\n  hint: use yaml or json")).into()
            )
        }
    }
    Ok(EXIT_OK)
}

/// What `diff` compares: the owned view; without the base directory when the desired side has none (objects built
/// from a Sync's paths get the revision's directory only when applied), so that only a real change shows.
fn comparable(v: &Value, with_base_dir: bool) -> Value {
    let mut o = owned_view(v);
    if with_base_dir {
        return o;
    }
    if let Some(md) = o.get_mut("metadata").and_then(Value::as_object_mut) {
        if let Some(a) = md.get_mut("annotations").and_then(Value::as_object_mut) {
            a.remove(BASE_DIR_ANNOTATION);
            if a.is_empty() {
                md.remove("annotations");
            }
        }
        if md.is_empty() {
            o.as_object_mut().map(|m| m.remove("metadata"));
        }
    }
    o
}

/// `capstan diff`: each object from PATHs / files as created, changed (field by field) or unchanged; with `--sync`,
/// the Sync's variables and namespace apply, and objects it applied that are gone show as deleted.
pub async fn diff(client: &Client, paths: &[String], files: &[String], sync: Option<&str>, ns: &str) -> Result<u8> {
    let invalid = |e: capstan_api::ClientError| -> anyhow::Error { Failure::invalid(format!("error: {e}")).into() };
    let sync_obj = match sync {
        Some(name) => Some(client.get(&format!("/api/v1/namespaces/{ns}/syncs/{name}")).await.map_err(invalid)?),
        None => None,
    };
    let mut opts = BuildOptions::default();
    if let Some(s) = &sync_obj {
        if let Some(m) = s["spec"]["substitute"].as_object() {
            opts.substitute = m.iter().map(|(k, v)| (k.clone(), v.as_str().unwrap_or("").to_string())).collect();
        }
        opts.target_namespace = s["spec"]["targetNamespace"].as_str().map(str::to_string);
    }
    let mut manifests = build_paths(paths, &opts)?;
    if !files.is_empty() {
        manifests.extend(crate::manifests::load(files).map_err(|d| Failure::invalid(d.to_string()))?);
    }
    let sync_key = sync.map(|n| ObjectKey::new("Sync", ns, n));
    let mut differences = false;
    let mut seen = BTreeSet::new();
    for m in &manifests {
        let r = &m.resource;
        let key = r.key();
        seen.insert(key.clone());
        let mut desired = r.to_value();
        if let Some(k) = &sync_key {
            mark_owned(&mut desired, k);
        }
        let label = key.to_string();
        let path = crate::commands::object_path(r.kind(), &key.namespace, &key.name);
        let live = match client.get(&path).await {
            Ok(v) => v,
            Err(e) if e.status().is_some_and(|s| s.as_u16() == 404) => {
                differences = true;
                println!("+ {label} created");
                continue;
            }
            Err(e) => return Err(invalid(e)),
        };
        // A file given with -f carries its directory, as `apply -f` sends it: a move of relative paths shows.
        let with_dir = desired["metadata"]["annotations"].get(BASE_DIR_ANNOTATION).is_some();
        let mut changes = diff_values(&comparable(&live, with_dir), &comparable(&desired, with_dir));
        capstan_engine::diff::mask_secrets(&key.kind, &mut changes);
        if changes.is_empty() {
            // The stored spec matches, yet what runs may not: a rolled-back or halted rollout.
            if let Some(why) = not_running_as_declared(&live) {
                differences = true;
                println!("! {label} {why}");
            }
            continue;
        }
        differences = true;
        println!("~ {label} changed");
        for c in changes {
            println!("    {c}");
        }
    }
    if let Some(s) = &sync_obj {
        for e in s["status"]["inventory"].as_array().into_iter().flatten() {
            let k = ObjectKey::new(
                e["kind"].as_str().unwrap_or(""),
                e["namespace"].as_str().unwrap_or(""),
                e["name"].as_str().unwrap_or(""),
            );
            if !seen.contains(&k) {
                differences = true;
                println!(
                    "- {}/{}/{} deleted{}",
                    k.kind,
                    k.namespace,
                    k.name,
                    if s["spec"]["prune"] == true { "" } else { " (kept: the Sync does not prune)" }
                );
            }
        }
    }
    if !differences {
        eprintln!("no differences");
    }
    Ok(if differences { EXIT_FAIL } else { EXIT_OK })
}

/// Why an App whose stored spec matches the file does not run it: its rollout to that revision was rolled back
/// (the replicas run the previous revision) or halted part-way. `None` when it runs what it declares.
fn not_running_as_declared(live: &Value) -> Option<String> {
    let st = &live["status"];
    let r = &st["rollout"];
    if r["revision"] != st["revision"] {
        return None;
    }
    let (declared, running) = (st["revision"].as_str().unwrap_or("?"), st["currentRevision"].as_str().unwrap_or("?"));
    let message = r["message"].as_str().unwrap_or("");
    match r["phase"].as_str() {
        Some("RolledBack") => Some(format!(
            "runs revision {running}, not the file's {declared}: {message}\n    \
             hint: fix the manifest and apply it, `capstan rollout restart` to try it again, \
             or `capstan rollout undo` to declare what runs"
        )),
        Some("Failed") => Some(format!(
            "is not at the file's revision {declared}: {message}\n    \
             hint: fix the manifest and apply it, or `capstan rollout restart` to try the revision again"
        )),
        _ => None,
    }
}

/// `capstan sync now NAME`: fetch the Source and apply at once, then report how it went.
pub async fn sync_now(client: &Client, name: &str, ns: &str, timeout: &str, wait: bool) -> Result<u8> {
    let limit = parse_duration(timeout).map_err(|e| Failure::invalid(format!("error: --timeout: {e}")))?;
    let path = format!("/api/v1/namespaces/{ns}/syncs/{name}");
    let resp = client
        .post(&format!("{path}/reconcile"), Value::Null)
        .await
        .map_err(|e| Failure::fail(format!("error: {e}")))?;
    let token = resp["token"].as_str().unwrap_or("").to_string();
    if !wait {
        println!("sync/{name} reconcile requested");
        return Ok(EXIT_OK);
    }
    let spinner = std::io::stderr().is_terminal().then(|| {
        let pb = indicatif::ProgressBar::new_spinner();
        pb.enable_steady_tick(Duration::from_millis(100));
        pb.set_message(format!("fetching and applying sync/{name}"));
        pb
    });
    let deadline = tokio::time::Instant::now() + limit;
    let result = loop {
        let o = client.get(&path).await.map_err(|e| Failure::fail(format!("error: {e}")))?;
        let handled = o["status"]["lastHandledReconcileAt"].as_str() == Some(token.as_str());
        let (ready, message) = ready_of(&o);
        if let Some(pb) = &spinner {
            pb.set_message(first_line(&message, 100));
        }
        if handled && ready != "Unknown" {
            break Some((ready, message, o));
        }
        if tokio::time::Instant::now() >= deadline {
            break None;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    if let Some(pb) = spinner {
        pb.finish_and_clear();
    }
    match result {
        Some((ready, message, o)) if ready == "True" => {
            println!("✔ sync/{name}: {}", o["status"]["lastAppliedRevision"].as_str().unwrap_or(&message));
            Ok(EXIT_OK)
        }
        Some((_, message, o)) => {
            let reason = o["status"]["conditions"]
                .as_array()
                .and_then(|cs| cs.iter().find(|c| c["type"] == "Ready"))
                .and_then(|c| c["reason"].as_str())
                .unwrap_or("")
                .to_string();
            Err(Failure::fail(format!("✗ sync/{name}: {reason}: {message}")).into())
        }
        None => {
            Err(Failure::fail(format!("✗ sync/{name}: not done after {timeout}; see `capstan describe sync {name}`"))
                .into())
        }
    }
}

/// The Source and Sync `capstan up --git` creates.
pub fn bootstrap_objects(url: &str, branch: &str, path: &str) -> Vec<Value> {
    vec![
        json!({
            "apiVersion": capstan_model::API_VERSION, "kind": "Source",
            "metadata": {"name": BOOTSTRAP_NAME, "namespace": BOOTSTRAP_NAMESPACE},
            "spec": {"url": url, "ref": {"branch": branch}, "interval": "1m", "timeout": "60s"}
        }),
        json!({
            "apiVersion": capstan_model::API_VERSION, "kind": "Sync",
            "metadata": {"name": BOOTSTRAP_NAME, "namespace": BOOTSTRAP_NAMESPACE},
            "spec": {"sourceRef": {"name": BOOTSTRAP_NAME}, "path": path, "interval": "5m", "prune": true, "wait": true, "timeout": "5m"}
        }),
    ]
}
