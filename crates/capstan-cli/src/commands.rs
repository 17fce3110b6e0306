//! The implementation of each subcommand: `run` dispatches to one module per command; shared helpers live here.

mod apply;
mod audit;
mod certificate;
mod config;
mod create;
mod db;
mod delete;
mod describe;
mod get;
mod logs;
mod metrics;
mod rollout;
mod schema;
mod token;
mod up;
mod version;
mod volume;
mod wait;

pub(crate) use describe::{conditions_section, events_section, indent};
pub use wait::{objects_ready, wait_bar, wait_ready};

use std::time::Duration;

use anyhow::Result;
use capstan_api::{Client, ClientError, PlaneConfig};
use capstan_model::{parse_duration, Kind};
use serde_json::{json, Value};

use crate::manifests;
use crate::{
    data_dir, CertificateCommand, Cli, Command, Failure, MetricsCommand, SyncCommand, VolumeCommand, EXIT_FAIL,
    EXIT_INVALID, EXIT_OK,
};

use apply::{apply, apply_dry_run_client, apply_dry_run_server};
use audit::audit;
use db::db;
use delete::delete;
use describe::describe;
use get::{get, GetOutput};
use logs::{apps_matching, logs, LogFilter, LogFormat};
use metrics::metrics_lint;
use rollout::rollout;
use schema::schema;
use token::token;
use up::up;
use version::version;
use volume::volume_sync;

/// The API client, found as kubectl finds its cluster: `--context` (or CAPSTAN_CONTEXT) names a context; a server
/// (`--server`, CAPSTAN_SERVER) or a data directory (`--data`, CAPSTAN_DATA) given explicitly comes next; then the
/// configuration's current context; then the default data directory. CAPSTAN_TOKEN and CAPSTAN_CA_FILE override
/// the token and the CA file.
fn resolve_client(
    cli_data: Option<&std::path::Path>,
    data: &std::path::Path,
    server: Option<String>,
    context: Option<&str>,
) -> Result<Client> {
    use capstan_api::contexts::{config_path, Config};
    let token = std::env::var("CAPSTAN_TOKEN").ok().filter(|t| !t.is_empty());
    let ca = std::env::var_os("CAPSTAN_CA_FILE").filter(|v| !v.is_empty()).map(std::path::PathBuf::from);
    let fail = |e: &dyn std::fmt::Display| -> anyhow::Error { Failure::fail(format!("error: {e}")).into() };
    if let Some(name) = context {
        let path = config_path();
        let cfg = Config::load(&path).map_err(|e| fail(&e))?;
        return cfg.get(name, &path).map_err(|e| fail(&e))?.client(token, ca.as_deref()).map_err(|e| fail(&e));
    }
    if server.is_some() || cli_data.is_some() {
        return Client::discover(data, server, token, ca).map_err(|e| fail(&e));
    }
    let path = config_path();
    let cfg = Config::load(&path).map_err(|e| fail(&e))?;
    if let Some(current) = cfg.current(&path).map_err(|e| fail(&e))? {
        return current.client(token, ca.as_deref()).map_err(|e| fail(&e));
    }
    Client::discover(data, None, token, ca).map_err(|e| fail(&e))
}

pub async fn run(cli: Cli) -> Result<u8> {
    let data = data_dir(cli.data.clone());
    let client =
        || -> Result<Client> { resolve_client(cli.data.as_deref(), &data, cli.server.clone(), cli.context.as_deref()) };
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
            encryption_key_file,
            encryption_key_command,
            tls_sans,
            tls_cert_file,
            tls_private_key_file,
            plain_http,
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
            if let Some(f) = encryption_key_file {
                cfg.encryption_key = capstan_api::keys::KeySource::File(f);
            }
            if let Some(c) = encryption_key_command {
                cfg.encryption_key = capstan_api::keys::KeySource::Command(c);
            }
            cfg.tls = match (plain_http, tls_cert_file, tls_private_key_file) {
                (true, _, _) => capstan_api::tls::ApiTls::Off,
                (false, Some(cert), Some(key)) => capstan_api::tls::ApiTls::Files { cert, key },
                _ => capstan_api::tls::ApiTls::Auto { sans: tls_sans },
            };
            up(cfg, paths, bootstrap).await
        }
        Command::Render { paths, target, output, rbac, entry_points } => {
            crate::gitops::render_cmd(&paths, &target, &output, rbac, &entry_points)
        }
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
        Command::Certificate { action: CertificateCommand::Renew { name, namespace } } => {
            certificate::renew(&client()?, &name, namespace.as_deref().unwrap_or("default")).await
        }
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
        Command::Audit { since, user, kind, output } => {
            audit(&client()?, since.as_deref(), user.as_deref(), kind.as_deref(), &output).await
        }
        Command::Token { action } => token(&client()?, action).await,
        Command::Create { what: crate::CreateCommand::Secret { kind } } => create::create_secret(client, kind).await,
        Command::Login { server, token_file, certificate_authority, name } => {
            config::login(&server, &token_file, certificate_authority.as_deref(), name).await
        }
        Command::Config { action } => config::config(action),
        Command::Secrets { action: crate::SecretsCommand::RotateKey } => {
            let done = client()?.post("/api/v1/encryption/rotate", json!({})).await.map_err(api_failure)?;
            println!(
                "rotated: {} data keys now wrapped by key {}; {} stored values encrypted again",
                done["dataKeys"],
                done["keyId"].as_str().unwrap_or_default(),
                done["values"]
            );
            Ok(EXIT_OK)
        }
    }
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

/// The API path of one object: under its namespace, or under its plural alone for a cluster-scoped kind
/// (ClusterIssuer), whatever namespace was given.
pub(crate) fn object_path(kind: Kind, ns: &str, name: &str) -> String {
    if kind.namespaced() {
        format!("/api/v1/namespaces/{ns}/{}/{name}", kind.plural())
    } else {
        format!("/api/v1/{}/{name}", kind.plural())
    }
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
