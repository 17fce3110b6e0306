//! The implementation of each subcommand.

use std::io::IsTerminal;
use std::time::Duration;

use anyhow::Result;
use capstan_api::{Client, ClientError, ControlPlane, PlaneConfig};
use capstan_model::{parse_duration, Kind};
use chrono::Utc;
use serde_json::{json, Value};

use crate::manifests;
use crate::output::{age, render, table, time_of};
use crate::{
    data_dir, Cli, Command, DbCommand, Failure, MetricsCommand, RolloutCommand, SyncCommand, VolumeCommand, EXIT_FAIL,
    EXIT_INVALID, EXIT_OK,
};

pub async fn run(cli: Cli) -> Result<u8> {
    let data = data_dir(cli.data.clone());
    let client = || -> Result<Client> {
        Client::discover(&data, cli.server.clone(), std::env::var("CAPSTAN_TOKEN").ok())
            .map_err(|e| Failure::fail(format!("error: {e}")).into())
    };
    match cli.command {
        Command::Up {
            paths,
            listen,
            git,
            branch,
            path,
            header_timeout,
            external_url,
            api_max_connections,
            query_max_samples,
            query_timeout,
            query_max_concurrency,
        } => {
            let bootstrap = git.map(|url| crate::gitops::bootstrap_objects(&url, &branch, &path));
            let mut cfg = PlaneConfig::new(data.clone(), listen);
            cfg.header_timeout = std::time::Duration::from_secs(header_timeout);
            cfg.external_url = external_url;
            cfg.api_max_connections = api_max_connections as usize;
            cfg.query.max_samples = query_max_samples as usize;
            cfg.query.timeout = std::time::Duration::from_secs(query_timeout);
            if let Some(n) = query_max_concurrency {
                cfg.query.max_concurrency = n as usize;
            }
            up(cfg, paths, bootstrap).await
        }
        Command::Render { paths, target, output } => crate::gitops::render_cmd(&paths, &target, &output),
        Command::ServeModel {
            model_name,
            model_base_path,
            rest_api_port,
            address,
            version_policy,
            num_versions,
            versions,
            poll_seconds,
        } => {
            let policy = match version_policy.as_str() {
                "latest" => capstan_serving::VersionPolicy::Latest(num_versions.max(1)),
                "all" => capstan_serving::VersionPolicy::All,
                "specific" if !versions.is_empty() => capstan_serving::VersionPolicy::Specific(versions),
                "specific" => {
                    return Err(Failure::invalid("error: --version-policy specific needs --versions 1,2,…").into())
                }
                other => {
                    return Err(Failure::invalid(format!(
                        "error: --version-policy {other:?}: use latest, all or specific"
                    ))
                    .into())
                }
            };
            if !model_base_path.is_dir() {
                // As TF Serving: not an error; versions are served once they appear.
                eprintln!(
                    "warning: --model-base-path {} does not exist yet; waiting for numbered version directories",
                    model_base_path.display()
                );
            }
            let cfg = capstan_serving::ServeConfig {
                model_name,
                base_path: model_base_path,
                policy,
                poll: Duration::from_secs_f64(poll_seconds.clamp(0.05, 3600.0)),
                listen: std::net::SocketAddr::new(address, rest_api_port),
            };
            capstan_serving::serve(cfg).await.map_err(|e| Failure::fail(format!("error: {e}")))?;
            Ok(EXIT_OK)
        }
        Command::Operator { print_rbac: true, settings } => {
            for o in capstan_kubernetes::operator::rbac(&settings.namespace) {
                print!("{}", capstan_model::yaml::to_yaml_string(&o));
            }
            Ok(EXIT_OK)
        }
        Command::Operator { print_rbac: false, settings } => crate::kube::operator(settings).await,
        Command::Crds => {
            for c in capstan_kubernetes::crd::all() {
                print!("{}", capstan_model::yaml::to_yaml_string(&c));
            }
            Ok(EXIT_OK)
        }
        Command::Build { paths, vars, target_namespace, output } => {
            crate::gitops::build_cmd(&paths, &vars, target_namespace, &output)
        }
        Command::Metrics { action: MetricsCommand::Lint { file, format } } => metrics_lint(&file, format.as_deref()),
        Command::Metrics { action: MetricsCommand::Query { query, time, range, step, output } } => {
            crate::alerts::query(&client()?, &query, time, range, &step, &output).await
        }
        Command::Scale { app, replicas, namespace } => {
            let ns = namespace.unwrap_or_else(|| "default".into());
            let name = app.strip_prefix("app/").or_else(|| app.strip_prefix("apps/")).unwrap_or(&app);
            let r = client()?
                .post(&format!("/api/v1/namespaces/{ns}/apps/{name}/scale"), json!({ "replicas": replicas }))
                .await;
            match r {
                Ok(v) => {
                    println!(
                        "app/{name} scaled from {} to {}",
                        v["previous"],
                        capstan_model::count_of(replicas, "replica")
                    );
                    Ok(EXIT_OK)
                }
                Err(ClientError::Status { body, message, .. }) if body["errors"].is_array() => {
                    let lines: Vec<String> = body["errors"]
                        .as_array()
                        .into_iter()
                        .flatten()
                        .map(|e| format!("error: app/{name}: field `{}`: {}", s_or(&e["path"]), s_or(&e["message"])))
                        .collect();
                    Err(Failure::invalid(format!("{}\n({message})", lines.join("\n"))).into())
                }
                Err(e) => Err(api_failure(e)),
            }
        }
        Command::Alerts { all, output } => crate::alerts::list(&client()?, all, &output).await,
        Command::Ack { id, by } => crate::alerts::manual(&client()?, &id, "acknowledge", by).await,
        Command::Resolve { id, by } => crate::alerts::manual(&client()?, &id, "resolve", by).await,
        Command::Db { action } => db(&client()?, action).await,
        Command::Volume { action: VolumeCommand::Sync { app, volume, from, to, namespace } } => {
            volume_sync(&client()?, &app, namespace.as_deref().unwrap_or("default"), &volume, from, to).await
        }
        Command::Sync { action: SyncCommand::Now { name, namespace, timeout, no_wait } } => {
            crate::gitops::sync_now(&client()?, &name, namespace.as_deref().unwrap_or("default"), &timeout, !no_wait)
                .await
        }
        Command::Apply { files, wait, timeout, dry_run, target, kube } => match (target.as_str(), dry_run.as_deref()) {
            ("embedded" | "kubernetes", Some("client")) => apply_dry_run_client(&files),
            ("embedded", Some("server")) => apply_dry_run_server(&client()?, &files).await,
            (_, Some(other)) => Err(Failure::invalid(format!(
                "error: --dry-run={other}: use client or server (server on the embedded target only)"
            ))
            .into()),
            ("embedded", None) => apply(&client()?, &files, wait, &timeout).await,
            ("kubernetes", None) => crate::kube::apply(&files, &kube, wait, &timeout).await,
            (other, None) => Err(Failure::invalid(format!(
                "error: unknown target `{other}`\n  hint: use --target embedded (the default) or --target kubernetes"
            ))
            .into()),
        },
        Command::Get { kind, name, namespace, all_namespaces, output, watch, show_managed_fields } => {
            let how = GetOutput { format: output, watch, show_managed_fields };
            get(&client()?, &kind, name.as_deref(), namespace.as_deref(), all_namespaces, &how).await
        }
        Command::Describe { kind, name, namespace } => describe(&client()?, &kind, &name, namespace.as_deref()).await,
        Command::Logs { app, selector, until, grep, replica, follow, since, tail, timestamps, ansi, namespace } => {
            let client = client()?;
            let ns = namespace.as_deref().unwrap_or("default");
            let apps = match (app, selector) {
                (Some(a), None) => vec![a],
                (None, Some(sel)) => apps_matching(&client, ns, &sel).await?,
                _ => return Err(Failure::invalid("error: give an APP or -l key=value, not both or neither").into()),
            };
            let filter = LogFilter { since, until, grep, tail };
            logs(&client, &apps, ns, replica, follow, &filter, LogFormat { timestamps, ansi }).await
        }
        Command::Delete { kind, name, files, namespace } => {
            delete(&client()?, kind.as_deref(), name.as_deref(), &files, namespace.as_deref()).await
        }
        Command::Diff { paths, files, sync, namespace } => {
            if paths.is_empty() && files.is_empty() {
                return Err(Failure::invalid("error: give a PATH or -f FILE to compare").into());
            }
            let ns = namespace.as_deref().unwrap_or("default");
            crate::gitops::diff(&client()?, &paths, &files, sync.as_deref(), ns).await
        }
        Command::Schema { kind } => schema(kind.as_deref()),
        Command::Rollout { action } => rollout(&client()?, action).await,
        Command::Shutdown { keep_workloads } => {
            client()?
                .post("/api/v1/shutdown", json!({ "keepWorkloads": keep_workloads }))
                .await
                .map_err(api_failure)?;
            println!("capstan is stopping{}", if keep_workloads { " (replicas keep running)" } else { "" });
            Ok(EXIT_OK)
        }
        Command::Completion { shell } => {
            let mut cmd = <Cli as clap::CommandFactory>::command();
            clap_complete::generate(shell, &mut cmd, "capstan", &mut std::io::stdout());
            Ok(EXIT_OK)
        }
        Command::Wait { objects, condition, timeout, namespace } => {
            if !condition.eq_ignore_ascii_case("condition=Ready") {
                return Err(Failure::invalid(format!(
                    "error: --for={condition}: only condition=Ready can be waited for"
                ))
                .into());
            }
            let ns = namespace.unwrap_or_else(|| "default".into());
            let mut refs = Vec::new();
            for o in &objects {
                let Some((k, n)) = o.split_once('/') else {
                    return Err(Failure::invalid(format!("error: `{o}`: give KIND/NAME, such as app/hello")).into());
                };
                refs.push((kind_arg(k)?, ns.clone(), n.to_string()));
            }
            let limit = parse_duration(&timeout).map_err(|e| Failure::invalid(format!("error: --timeout: {e}")))?;
            let deadline = tokio::time::Instant::now() + limit;
            // The control plane may still be starting: wait for it to answer first.
            let client = loop {
                let last = match client() {
                    Ok(c) => match c.get("/version").await {
                        Ok(_) => break c,
                        Err(e) => e.to_string(),
                    },
                    Err(e) => e.to_string(),
                };
                if tokio::time::Instant::now() >= deadline {
                    return Err(Failure::fail(format!("error: timed out waiting for the control plane: {last}")).into());
                }
                tokio::time::sleep(Duration::from_millis(200)).await;
            };
            wait_ready(&client, &refs, deadline.saturating_duration_since(tokio::time::Instant::now())).await
        }
        Command::Explain { what } => crate::explain::explain(&what),
        Command::Version { client: only_client, output } => version((!only_client).then(client), &output).await,
    }
}

/// `capstan version`: like `kubectl version`, the client's build and the server's, if one answers.
async fn version(server: Option<Result<Client>>, output: &str) -> Result<u8> {
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

fn s_or(v: &Value) -> &str {
    v.as_str().unwrap_or("unknown")
}

pub(crate) fn api_failure(e: ClientError) -> anyhow::Error {
    let code = match e.status() {
        Some(s) if s.as_u16() == 422 || s.as_u16() == 400 => EXIT_INVALID,
        _ => EXIT_FAIL,
    };
    Failure { code, message: format!("error: {e}") }.into()
}

fn kind_arg(s: &str) -> Result<Kind> {
    Kind::parse(s).ok_or_else(|| {
        let known: Vec<&str> = Kind::ALL.iter().map(|k| k.plural()).collect();
        Failure::invalid(format!("error: unknown resource type `{s}`\n  hint: known types: {}", known.join(", ")))
            .into()
    })
}

fn load(files: &[String]) -> Result<Vec<capstan_model::Manifest>> {
    manifests::load(files).map_err(|d| Failure::invalid(d.to_string()).into())
}

/// Loads manifests for a command that changes state: a refusal says that nothing was done.
fn load_to_change(files: &[String], nothing: &str) -> Result<Vec<capstan_model::Manifest>> {
    manifests::load(files)
        .map_err(|d| Failure::invalid(format!("{d}\n(the batch was refused; nothing was {nothing})")).into())
}

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
fn apply_dry_run_client(files: &[String]) -> Result<u8> {
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
async fn apply_dry_run_server(client: &Client, ms_files: &[String]) -> Result<u8> {
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

async fn apply(client: &Client, files: &[String], wait: bool, timeout: &str) -> Result<u8> {
    let timeout = parse_duration(timeout).map_err(|e| Failure::invalid(format!("error: --timeout: {e}")))?;
    let ms = load_to_change(files, "applied")?;
    let results = post_apply(client, &ms).await?;
    print_results(&results);
    if wait {
        // Secrets have no status; everything else reports a Ready condition.
        let keys: Vec<(Kind, String, String)> = ms
            .iter()
            .filter(|m| m.resource.kind() != Kind::Secret)
            .map(|m| (m.resource.kind(), m.resource.meta().namespace().to_string(), m.resource.meta().name.clone()))
            .collect();
        return wait_ready(client, &keys, timeout).await;
    }
    Ok(EXIT_OK)
}

fn is_ready(obj: &Value) -> bool {
    let gen = obj["metadata"]["generation"].as_i64();
    let observed = obj["status"]["observedGeneration"].as_i64();
    gen == observed
        && obj["status"]["conditions"].as_array().is_some_and(|cs| {
            // A TrainingJob is done when it has succeeded; everything else reports Ready.
            cs.iter().any(|c| (c["type"] == "Ready" || c["type"] == "Succeeded") && c["status"] == "True")
        })
}

/// The bar of a wait for `len` objects: drawn on a terminal (with whether it is one), hidden otherwise, where the
/// caller prints plain lines.
pub fn wait_bar(len: usize) -> (indicatif::ProgressBar, bool) {
    let tty = std::io::stderr().is_terminal();
    let bar = indicatif::ProgressBar::new(len as u64);
    if tty {
        bar.set_style(
            indicatif::ProgressStyle::with_template(
                "{spinner} waiting for objects to be Ready [{bar:30}] {pos} of {len} objects {msg}",
            )
            .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar())
            .progress_chars("=> "),
        );
        bar.enable_steady_tick(Duration::from_millis(120));
    } else {
        bar.set_draw_target(indicatif::ProgressDrawTarget::hidden());
    }
    (bar, tty)
}

/// Waits until every object named (Apps, Databases, Sources, Syncs) is Ready, with a progress bar on a terminal and
/// plain lines otherwise.
pub async fn wait_ready(client: &Client, objects: &[(Kind, String, String)], timeout: Duration) -> Result<u8> {
    let deadline = tokio::time::Instant::now() + timeout;
    let (bar, tty) = wait_bar(objects.len());
    let mut last_ready = usize::MAX;
    loop {
        let mut ready = 0;
        let mut waiting = Vec::new();
        for (kind, ns, name) in objects {
            let who = format!("{}/{name}", kind.name().to_lowercase());
            match client.get(&format!("/api/v1/namespaces/{ns}/{}/{name}", kind.plural())).await {
                Ok(o) if is_ready(&o) => ready += 1,
                Ok(o) => waiting.push((who, condition_summary(&o))),
                Err(e) => waiting.push((who, e.to_string())),
            }
        }
        bar.set_position(ready as u64);
        if let Some((n, why)) = waiting.first() {
            bar.set_message(format!("{n}: {why}"));
        }
        if !tty && ready != last_ready && !waiting.is_empty() {
            let next = waiting.first().map(|(n, why)| format!("; waiting for {n}: {why}")).unwrap_or_default();
            eprintln!("{}{next}", objects_ready(ready, objects.len()));
        }
        last_ready = ready;
        if waiting.is_empty() {
            bar.finish_and_clear();
            eprintln!("{}", objects_ready(ready, objects.len()));
            return Ok(EXIT_OK);
        }
        if tokio::time::Instant::now() >= deadline {
            bar.abandon();
            let lines: Vec<String> = waiting.iter().map(|(n, w)| format!("  {n}: {w}")).collect();
            return Err(Failure::fail(format!("error: timed out waiting to be Ready:\n{}", lines.join("\n"))).into());
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

/// One `Label:  value` line of `describe`: values line up at column 18, and a longer label keeps one space before
/// its value.
fn describe_line(label: &str, value: &str) -> String {
    format!("{:<17} {value}\n", format!("{label}:"))
}

/// "1 of 2 objects Ready", "the object is Ready", "all 3 objects Ready": objects, not replicas.
pub fn objects_ready(ready: usize, all: usize) -> String {
    match (ready, all) {
        (1, 1) => "the object is Ready".into(),
        (r, a) if r == a => format!("all {a} objects Ready"),
        (r, 1) => format!("{r} of 1 object Ready"),
        (r, a) => format!("{r} of {a} objects Ready"),
    }
}

fn condition_summary(o: &Value) -> String {
    let conds = o["status"]["conditions"].as_array().cloned().unwrap_or_default();
    conds
        .iter()
        .find(|c| c["type"] == "Stalled")
        .or_else(|| conds.iter().find(|c| c["type"] == "Ready"))
        .map(|c| format!("{}: {}", c["reason"].as_str().unwrap_or(""), c["message"].as_str().unwrap_or("")))
        .unwrap_or_else(|| "not reconciled yet".into())
}

fn app_status_word(o: &Value) -> String {
    let conds = o["status"]["conditions"].as_array().cloned().unwrap_or_default();
    if let Some(s) = conds.iter().find(|c| c["type"] == "Stalled" && c["status"] == "True") {
        return s["reason"].as_str().unwrap_or("Stalled").to_string();
    }
    match conds.iter().find(|c| c["type"] == "Ready") {
        Some(c) if c["status"] == "True" => {
            if o["spec"]["replicas"].as_i64() == Some(0) {
                "Stopped".into()
            } else {
                "Running".into()
            }
        }
        Some(c) => c["reason"].as_str().unwrap_or("Pending").to_string(),
        None => "Pending".into(),
    }
}

async fn get(
    client: &Client,
    kind: &str,
    name: Option<&str>,
    ns: Option<&str>,
    all: bool,
    how: &GetOutput,
) -> Result<u8> {
    let (output, watch) = (how.format.as_str(), how.watch);
    if crate::events::is_events(kind) {
        return crate::events::get(client, ns.unwrap_or("default"), all, output, watch).await;
    }
    let kind = kind_arg(kind)?;
    if !["table", "wide", "json", "yaml"].contains(&output) {
        return Err(Failure::invalid(format!(
            "error: unknown output format `{output}`\n  hint: use table, wide, json or yaml"
        ))
        .into());
    }
    let ns = ns.unwrap_or("default");
    let mut items: Vec<Value> = match name {
        Some(n) => {
            vec![client.get(&format!("/api/v1/namespaces/{ns}/{}/{n}", kind.plural())).await.map_err(api_failure)?]
        }
        None => {
            let q = if all { String::new() } else { format!("?namespace={ns}") };
            client.get(&format!("/api/v1/{}{q}", kind.plural())).await.map_err(api_failure)?["items"]
                .as_array()
                .cloned()
                .unwrap_or_default()
        }
    };
    if output == "json" || output == "yaml" {
        if !how.show_managed_fields {
            // As kubectl: the owner record is bookkeeping, shown on request.
            for o in &mut items {
                if let Some(md) = o["metadata"].as_object_mut() {
                    md.remove("managedFields");
                }
            }
        }
        print!("{}", render(&items, output, name.is_some()));
        return Ok(EXIT_OK);
    }
    if items.is_empty() {
        eprintln!("No {} found{}.", kind.plural(), if all { String::new() } else { format!(" in namespace {ns}") });
        if !watch {
            return Ok(EXIT_OK);
        }
    }
    let now = Utc::now();
    let wide = output == "wide";
    let mut headers = vec![];
    if all {
        headers.push("NAMESPACE");
    }
    let row_of = |o: &Value, now| match kind {
        Kind::App => app_row(o, all, wide, now),
        other => crate::gitops::row(other, o, all, now),
    };
    match kind {
        Kind::App => {
            headers.extend(["NAME", "READY", "STATUS", "RESTARTS", "AGE"]);
            if wide {
                headers.extend(["REVISION", "PORTS", "ENDPOINTS"]);
            }
        }
        other => headers.extend(crate::gitops::columns(other)),
    }
    let rows: Vec<Vec<String>> = items.iter().map(|o| row_of(o, now)).collect();
    println!("{}", table(&headers, &rows));
    if !watch {
        return Ok(EXIT_OK);
    }
    // Like `kubectl get -w`: one more row per change, until interrupted.
    let mut rx = client.stream(&format!("/api/v1/watch?kind={}", kind.plural())).await.map_err(api_failure)?;
    while let Some(ev) = rx.recv().await {
        let o = &ev["object"];
        if ev["type"] == "ERROR" {
            return Err(Failure::fail(format!(
                "error: stopped watching: {}",
                o["message"].as_str().unwrap_or("the server ended the watch")
            ))
            .into());
        }
        let same_ns = all || o["metadata"]["namespace"] == ns;
        let same_name = name.is_none_or(|n| o["metadata"]["name"] == n);
        if same_ns && same_name {
            let mut row = row_of(o, Utc::now());
            if ev["type"] == "Deleted" {
                let col = if kind == Kind::App { 2 } else { 1 };
                row[if all { col + 1 } else { col }] = "Deleted".into();
            }
            println!("{}", table(&headers, &[row]).lines().nth(1).unwrap_or_default());
        }
    }
    Err(Failure::fail("error: stopped watching: the connection to Capstan closed").into())
}

fn app_row(o: &Value, all: bool, wide: bool, now: chrono::DateTime<Utc>) -> Vec<String> {
    let mut row = vec![];
    if all {
        row.push(o["metadata"]["namespace"].as_str().unwrap_or("").to_string());
    }
    row.push(o["metadata"]["name"].as_str().unwrap_or("").to_string());
    row.push(format!(
        "{}/{}",
        o["status"]["readyReplicas"].as_i64().unwrap_or(0),
        o["spec"]["replicas"].as_i64().unwrap_or(1)
    ));
    row.push(app_status_word(o));
    row.push(o["status"]["restarts"].as_u64().unwrap_or(0).to_string());
    row.push(age(time_of(&o["metadata"]["creationTimestamp"]), now));
    if wide {
        // What runs; a rolled-back App also names the revision it declares.
        let (declared, running) = (o["status"]["revision"].as_str(), o["status"]["currentRevision"].as_str());
        row.push(match (running, declared) {
            (Some(r), Some(d)) if r != d => format!("{r} (declared {d})"),
            (r, d) => r.or(d).unwrap_or("").to_string(),
        });
        let ports: Vec<String> = o["status"]["replicaStatuses"]
            .as_array()
            .into_iter()
            .flatten()
            .flat_map(|r| r["ports"].as_object().into_iter().flatten().map(|(_, v)| v.to_string()))
            .collect();
        row.push(ports.join(","));
        let eps: Vec<&str> =
            o["status"]["endpoints"].as_array().into_iter().flatten().filter_map(Value::as_str).collect();
        row.push(if eps.is_empty() { "<none>".into() } else { eps.join(",") });
    }
    row
}

async fn describe(client: &Client, kind: &str, name: &str, ns: Option<&str>) -> Result<u8> {
    let kind = kind_arg(kind)?;
    let ns = ns.unwrap_or("default");
    let path = format!("/api/v1/namespaces/{ns}/{}/{name}", kind.plural());
    let o = client.get(&path).await.map_err(api_failure)?;
    let events = client.get(&format!("{path}/events")).await.map_err(api_failure)?;
    let now = Utc::now();
    if kind != Kind::App {
        print!("{}", crate::gitops::describe(kind, &o, &events, now));
        return Ok(EXIT_OK);
    }
    let md = &o["metadata"];
    let spec = &o["spec"];
    let st = &o["status"];
    let mut out = String::new();
    let mut field = |k: &str, v: String| out.push_str(&describe_line(k, &v));
    field("Name", md["name"].as_str().unwrap_or("").into());
    field("Namespace", md["namespace"].as_str().unwrap_or("").into());
    field("Kind", kind.name().into());
    let labels = md["labels"]
        .as_object()
        .map(|m| m.iter().map(|(k, v)| format!("{k}={}", v.as_str().unwrap_or(""))).collect::<Vec<_>>().join(", "));
    field("Labels", labels.filter(|s| !s.is_empty()).unwrap_or_else(|| "<none>".into()));
    if let Some(owner) = crate::output::managed_by(md) {
        field("Managed by", owner);
    }
    let created = time_of(&md["creationTimestamp"]);
    field("Created", format!("{} ({} ago)", md["creationTimestamp"].as_str().unwrap_or(""), age(created, now)));
    field("Generation", format!("{} (observed {})", md["generation"], st["observedGeneration"]));
    field("Revision", st["revision"].as_str().unwrap_or("").into());
    field(
        "Replicas",
        format!(
            "{} desired | {} ready | {} updated | {} restarts",
            spec["replicas"].as_i64().unwrap_or(1),
            st["readyReplicas"].as_i64().unwrap_or(0),
            st["updatedReplicas"].as_i64().unwrap_or(0),
            st["restarts"].as_u64().unwrap_or(0)
        ),
    );
    let cmd: Vec<String> = spec["run"]["command"]
        .as_array()
        .into_iter()
        .flatten()
        .chain(spec["run"]["args"].as_array().into_iter().flatten())
        .filter_map(|v| v.as_str().map(str::to_string))
        .collect();
    field("Command", cmd.join(" "));
    field("Restart policy", spec["restartPolicy"].as_str().unwrap_or("Always").into());
    for p in ["startup", "readiness", "liveness"] {
        // Read as the model reads it, so that the defaults a writer left out show (not `null`).
        let Ok(pr) = serde_json::from_value::<capstan_model::Probe>(spec["probes"][p].clone()) else { continue };
        field(&format!("{}{} probe", p[..1].to_uppercase(), &p[1..]), probe_text(&pr));
    }
    if let Some(eps) = st["endpoints"].as_array().filter(|e| !e.is_empty()) {
        let eps: Vec<&str> = eps.iter().filter_map(Value::as_str).collect();
        field("Endpoints", eps.join(", "));
    }
    for v in st["volumes"].as_array().into_iter().flatten() {
        let paths: Vec<&str> = v["paths"].as_array().into_iter().flatten().filter_map(Value::as_str).collect();
        field(
            &format!("Volume {}", v["name"].as_str().unwrap_or("")),
            format!("{} scope, {} bytes: {}", v["scope"].as_str().unwrap_or(""), v["usedBytes"], paths.join(", ")),
        );
    }
    if !st["rollout"].is_null() {
        let r = &st["rollout"];
        field(
            "Rollout",
            format!(
                "{} ({} ago): {}",
                r["phase"].as_str().unwrap_or(""),
                age(time_of(&r["startedAt"]), now),
                r["message"].as_str().unwrap_or("")
            ),
        );
    }
    if let Some(w) = st["warnings"].as_array().filter(|w| !w.is_empty()) {
        for x in w {
            field("Warning", x.as_str().unwrap_or("").into());
        }
    }
    out.push_str(&conditions_section(st, now));
    out.push_str("Replicas:\n");
    let reps: Vec<Vec<String>> = st["replicaStatuses"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|r| {
            vec![
                r["name"].as_str().unwrap_or("").into(),
                r["phase"].as_str().unwrap_or("").into(),
                r["ready"].as_bool().unwrap_or(false).to_string(),
                r["pid"].as_u64().map(|p| p.to_string()).unwrap_or_else(|| "-".into()),
                r["ports"]
                    .as_object()
                    .map(|p| p.iter().map(|(k, v)| format!("{k}={v}")).collect::<Vec<_>>().join(","))
                    .unwrap_or_default(),
                r["restarts"].as_u64().unwrap_or(0).to_string(),
                age(time_of(&r["startedAt"]), now),
                r["reason"].as_str().unwrap_or("").to_string()
                    + r["message"].as_str().map(|m| format!(": {m}")).as_deref().unwrap_or(""),
            ]
        })
        .collect();
    out.push_str(&indent(&table(&["NAME", "PHASE", "READY", "PID", "PORTS", "RESTARTS", "AGE", "REASON"], &reps)));
    out.push_str(&events_section(&events, now));
    print!("{out}");
    Ok(EXIT_OK)
}

/// The `Events:` section of `describe`: the last 20 events, oldest first.
pub(crate) fn events_section(events: &Value, now: chrono::DateTime<Utc>) -> String {
    let mut out = String::new();
    out.push_str("Events:\n");
    let evs: Vec<Vec<String>> = events["items"]
        .as_array()
        .into_iter()
        .flatten()
        .rev()
        .take(20)
        .collect::<Vec<_>>()
        .into_iter()
        .rev()
        .map(|e| {
            vec![
                e["type"].as_str().unwrap_or("").into(),
                e["reason"].as_str().unwrap_or("").into(),
                {
                    let count = e["count"].as_u64().unwrap_or(1);
                    let last = age(time_of(&e["lastTimestamp"]), now);
                    if count > 1 {
                        format!("{last} (x{count} over {})", age(time_of(&e["firstTimestamp"]), now))
                    } else {
                        last
                    }
                },
                e["message"].as_str().unwrap_or("").into(),
            ]
        })
        .collect();
    if evs.is_empty() {
        out.push_str("  <none>\n");
    } else {
        out.push_str(&indent(&table(&["TYPE", "REASON", "AGE", "MESSAGE"], &evs)));
    }
    out
}

/// The `Conditions:` section of `describe`.
pub(crate) fn conditions_section(st: &Value, now: chrono::DateTime<Utc>) -> String {
    let conds: Vec<Vec<String>> = st["conditions"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|c| {
            vec![
                c["type"].as_str().unwrap_or("").into(),
                c["status"].as_str().unwrap_or("").into(),
                c["reason"].as_str().unwrap_or("").into(),
                age(time_of(&c["lastTransitionTime"]), now),
                c["message"].as_str().unwrap_or("").into(),
            ]
        })
        .collect();
    format!("Conditions:\n{}", indent(&table(&["TYPE", "STATUS", "REASON", "SINCE", "MESSAGE"], &conds)))
}

pub(crate) fn indent(s: &str) -> String {
    s.lines().map(|l| format!("  {l}\n")).collect()
}

/// Which lines `capstan logs` asks for.
struct LogFilter {
    since: Option<String>,
    until: Option<String>,
    grep: Option<String>,
    tail: Option<usize>,
}

/// How `get` prints.
struct GetOutput {
    /// table, wide, json or yaml.
    format: String,
    watch: bool,
    show_managed_fields: bool,
}

/// A probe as kubectl describes one: `http-get /health on port http delay=0s timeout=1s period=10s #success=1 …`.
fn probe_text(p: &capstan_model::Probe) -> String {
    let how = match (&p.http, &p.tcp, &p.exec) {
        (Some(h), _, _) => format!("http-get {} on port {}", h.path, h.port),
        (None, Some(t), _) => format!("tcp-connect on port {}", t.port),
        (None, None, Some(e)) => format!("exec {}", e.command.join(" ")),
        (None, None, None) => "none".into(),
    };
    format!(
        "{how} delay={}s timeout={}s period={}s #success={} #failure={}",
        p.initial_delay_seconds, p.timeout_seconds, p.period_seconds, p.success_threshold, p.failure_threshold
    )
}

/// The Apps in a namespace whose labels include every `key=value` of the selector.
async fn apps_matching(client: &Client, ns: &str, selector: &str) -> Result<Vec<String>> {
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
struct LogFormat {
    timestamps: bool,
    /// Keep escape sequences as the replica wrote them.
    ansi: bool,
}

async fn logs(
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

async fn delete(
    client: &Client,
    kind: Option<&str>,
    name: Option<&str>,
    files: &[String],
    ns: Option<&str>,
) -> Result<u8> {
    let targets: Vec<(Kind, String, String)> = if !files.is_empty() {
        load(files)?
            .iter()
            .map(|m| (m.resource.kind(), m.resource.meta().namespace().to_string(), m.resource.meta().name.clone()))
            .collect()
    } else {
        match (kind, name) {
            (Some(k), Some(n)) => vec![(kind_arg(k)?, ns.unwrap_or("default").to_string(), n.to_string())],
            _ => {
                return Err(Failure::invalid(
                    "error: name a KIND and NAME, or -f FILE\n  hint: capstan delete app hello",
                )
                .into())
            }
        }
    };
    let mut code = EXIT_OK;
    for (kind, ns, name) in targets {
        match client.delete(&format!("/api/v1/namespaces/{ns}/{}/{name}", kind.plural())).await {
            Ok(_) => println!("{}/{name} deleted", kind.name().to_ascii_lowercase()),
            Err(e) if e.status().is_some_and(|s| s.as_u16() == 404) => {
                eprintln!("error: {e}");
                code = EXIT_FAIL;
            }
            Err(e) => return Err(api_failure(e)),
        }
    }
    Ok(code)
}

async fn db(client: &Client, action: DbCommand) -> Result<u8> {
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

fn metrics_lint(file: &str, format: Option<&str>) -> Result<u8> {
    use capstan_observe::exposition::{check, Format};
    let text = if file == "-" {
        let mut t = String::new();
        std::io::Read::read_to_string(&mut std::io::stdin(), &mut t)
            .map_err(|e| Failure::invalid(format!("error: cannot read standard input: {e}")))?;
        t
    } else {
        std::fs::read_to_string(file).map_err(|e| Failure::invalid(format!("error: {file}: {e}")))?
    };
    let format = match format {
        None => Format::detect(None, &text),
        Some("prometheus") => Format::Prometheus,
        Some("openmetrics") => Format::OpenMetrics,
        Some(other) => {
            return Err(Failure::invalid(format!(
                "error: unknown format `{other}`\n  hint: use prometheus or openmetrics"
            ))
            .into())
        }
    };
    let problems = check(&text, format);
    for p in &problems {
        let at = match (p.line, p.column) {
            (Some(l), Some(c)) => format!("{file}:{l}:{c}"),
            (Some(l), None) => format!("{file}:{l}"),
            _ => file.to_string(),
        };
        let what = if p.severity == capstan_observe::exposition::Severity::Error { "error" } else { "lint" };
        let metric = p.metric.as_deref().map(|m| format!("{m}: ")).unwrap_or_default();
        println!("{at}: {what}: {metric}{}", p.message);
    }
    Ok(if problems.is_empty() { EXIT_OK } else { EXIT_FAIL })
}

async fn volume_sync(client: &Client, app: &str, ns: &str, volume: &str, from: u32, to: u32) -> Result<u8> {
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

fn schema(kind: Option<&str>) -> Result<u8> {
    let v = match kind {
        Some(k) => kind_arg(k)?.schema(),
        None => Value::Array(Kind::ALL.iter().map(|k| k.schema()).collect()),
    };
    println!("{}", serde_json::to_string_pretty(&v).unwrap_or_default());
    Ok(EXIT_OK)
}

async fn up(mut cfg: PlaneConfig, paths: Vec<String>, bootstrap: Option<Vec<Value>>) -> Result<u8> {
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

async fn rollout(client: &Client, action: RolloutCommand) -> Result<u8> {
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

#[cfg(test)]
mod tests {
    use super::*;

    /// Issue 20, polish: a probe written without its timings (as a controller writes one) shows the defaults.
    #[test]
    fn a_probe_is_described_with_its_defaults() {
        let p: capstan_model::Probe =
            serde_json::from_value(json!({"http": {"path": "/v2/health/ready", "port": "http"}, "periodSeconds": 1}))
                .expect("probe");
        assert_eq!(
            probe_text(&p),
            "http-get /v2/health/ready on port http delay=0s timeout=1s period=1s #success=1 #failure=3"
        );
    }

    #[test]
    fn describe_lines_line_up_and_long_labels_keep_a_space() {
        assert_eq!(describe_line("Name", "web"), "Name:             web\n");
        assert_eq!(describe_line("Volume attachments", "shared scope"), "Volume attachments: shared scope\n");
    }

    #[test]
    fn wait_counts_objects_not_replicas() {
        assert_eq!(objects_ready(1, 1), "the object is Ready");
        assert_eq!(objects_ready(1, 2), "1 of 2 objects Ready");
        assert_eq!(objects_ready(3, 3), "all 3 objects Ready");
        assert_eq!(objects_ready(0, 1), "0 of 1 object Ready");
    }
}
