//! GitOps commands: `build`, `diff` of a path against the running state, `sync now`, `up --git`, and how Sources,
//! Syncs and Secrets look in `get` and `describe`.

use std::collections::{BTreeMap, BTreeSet};
use std::io::IsTerminal;
use std::path::Path;
use std::time::Duration;

use anyhow::Result;
use capstan_api::Client;
use capstan_engine::sync::mark_owned;
use capstan_engine::{diff_values, owned_view};
use capstan_gitops::build::{build, BuildOptions};
use capstan_model::{parse_duration, Kind, ObjectKey, BASE_DIR_ANNOTATION};
use chrono::{DateTime, Utc};
use serde_json::{json, Value};

use crate::commands::{conditions_section, events_section, indent};
use crate::output::{age, table, time_of};
use crate::{Failure, EXIT_FAIL, EXIT_OK};

/// Namespace and name of the Source and Sync that `capstan up --git` creates.
pub const BOOTSTRAP_NAMESPACE: &str = "capstan-system";
pub const BOOTSTRAP_NAME: &str = "bootstrap";

fn ready_of(o: &Value) -> (String, String) {
    let c = o["status"]["conditions"]
        .as_array()
        .and_then(|cs| cs.iter().find(|c| c["type"] == "Ready").cloned())
        .unwrap_or(Value::Null);
    (c["status"].as_str().unwrap_or("Unknown").to_string(), c["message"].as_str().unwrap_or("").to_string())
}

fn first_line(s: &str, max: usize) -> String {
    let line = s.lines().next().unwrap_or("");
    if line.chars().count() > max {
        format!("{}…", line.chars().take(max - 1).collect::<String>())
    } else {
        line.to_string()
    }
}

/// Table columns of `capstan get` for each kind (for Sources and Syncs, Flux's columns), plus age.
pub fn columns(kind: Kind) -> Vec<&'static str> {
    match kind {
        Kind::Secret => vec!["NAME", "KEYS", "AGE"],
        Kind::Database => vec!["NAME", "ENDPOINT", "READY", "MESSAGE", "AGE"],
        Kind::TrainingJob => vec!["NAME", "STATE", "ACTIVE", "SUCCEEDED", "FAILED", "RESTARTS", "AGE"],
        Kind::ModelServer => vec!["NAME", "URL", "REPLICAS", "READY", "MESSAGE", "AGE"],
        Kind::Source | Kind::Sync => vec!["NAME", "REVISION", "SUSPENDED", "READY", "MESSAGE", "AGE"],
        Kind::AlertRule => vec!["NAME", "HEALTH", "PENDING", "FIRING", "EXPR", "AGE"],
        Kind::EscalationPolicy => vec!["NAME", "MATCH", "LEVELS", "REPEAT", "AGE"],
        Kind::App => vec!["NAME", "READY", "STATUS", "RESTARTS", "AGE"],
    }
}

/// One table row of `capstan get`, in the order of [`columns`]. Every kind has its own arm (no catch-all), so a new
/// kind does not compile until it says what `get` shows.
pub fn row(kind: Kind, o: &Value, all: bool, now: DateTime<Utc>) -> Vec<String> {
    let mut r = vec![];
    if all {
        r.push(o["metadata"]["namespace"].as_str().unwrap_or("").to_string());
    }
    r.push(o["metadata"]["name"].as_str().unwrap_or("").to_string());
    let st = &o["status"];
    let cells: Vec<String> = match kind {
        Kind::Secret => {
            let keys: BTreeSet<&String> =
                ["stringData", "data"].iter().filter_map(|f| o["spec"][f].as_object()).flat_map(|m| m.keys()).collect();
            vec![keys.into_iter().cloned().collect::<Vec<_>>().join(",")]
        }
        Kind::ModelServer => {
            let (ready, message) = ready_of(o);
            vec![
                st["url"].as_str().unwrap_or("-").to_string(),
                format!(
                    "{}/{}",
                    st["readyReplicas"].as_i64().unwrap_or(0),
                    o["spec"]["replicas"].as_i64().unwrap_or(1)
                ),
                ready,
                message,
            ]
        }
        Kind::TrainingJob => {
            // The latest of TFJob's conditions that holds.
            let state = ["Failed", "Succeeded", "Restarting", "Running", "Created"]
                .iter()
                .find(|t| {
                    st["conditions"]
                        .as_array()
                        .is_some_and(|cs| cs.iter().any(|c| c["type"] == **t && c["status"] == "True"))
                })
                .copied()
                .unwrap_or("Pending");
            let sum = |f: &str| -> u64 {
                st["replicaStatuses"].as_object().map(|m| m.values().filter_map(|c| c[f].as_u64()).sum()).unwrap_or(0)
            };
            vec![
                state.to_string(),
                sum("active").to_string(),
                sum("succeeded").to_string(),
                sum("failed").to_string(),
                st["restarts"].as_u64().unwrap_or(0).to_string(),
            ]
        }
        Kind::Database => {
            let (ready, message) = ready_of(o);
            vec![st["endpoint"].as_str().unwrap_or("-").to_string(), ready, first_line(&message, 70)]
        }
        Kind::AlertRule => {
            let health = st["health"].as_str().filter(|h| !h.is_empty()).unwrap_or("unknown");
            let health = match st["lastError"].as_str() {
                Some(e) => format!("{health}: {}", first_line(e, 50)),
                None => health.to_string(),
            };
            let alerts = st["alerts"].as_array().cloned().unwrap_or_default();
            let count = |state: &str| alerts.iter().filter(|a| a["state"] == state).count().to_string();
            vec![health, count("pending"), count("firing"), first_line(o["spec"]["expr"].as_str().unwrap_or(""), 50)]
        }
        Kind::EscalationPolicy => {
            let m: Vec<String> = o["spec"]["match"]
                .as_object()
                .into_iter()
                .flatten()
                .map(|(k, v)| format!("{k}={}", v.as_str().unwrap_or("")))
                .collect();
            vec![
                if m.is_empty() { "<every alert>".into() } else { m.join(",") },
                o["spec"]["levels"].as_array().map_or(0, Vec::len).to_string(),
                o["spec"]["repeat"].as_u64().unwrap_or(0).to_string(),
            ]
        }
        Kind::Source | Kind::Sync => {
            let revision = match kind {
                Kind::Source => st["artifact"]["revision"].as_str(),
                _ => st["lastAppliedRevision"].as_str(),
            };
            let (ready, message) = ready_of(o);
            vec![
                revision.map(short_revision).unwrap_or_else(|| "-".into()),
                o["spec"]["suspend"].as_bool().unwrap_or(false).to_string(),
                ready,
                first_line(&message, 70),
            ]
        }
        Kind::App => {
            // `get apps` has its own rows (replicas, restarts, rollouts: `commands::app_row`); this is the short form.
            let (ready, message) = ready_of(o);
            vec![
                format!(
                    "{}/{}",
                    st["readyReplicas"].as_i64().unwrap_or(0),
                    o["spec"]["replicas"].as_i64().unwrap_or(1)
                ),
                if ready == "True" { "Running".into() } else { first_line(&message, 40) },
                st["restarts"].as_u64().unwrap_or(0).to_string(),
            ]
        }
    };
    r.extend(cells);
    r.push(age(time_of(&o["metadata"]["creationTimestamp"]), now));
    r
}

/// One notification target in words: `webhook http://…`, `email a@b via relay:25`.
fn target_text(kind: &str, v: &Value) -> String {
    let s = |v: &Value| v.as_str().unwrap_or("").to_string();
    match kind {
        "command" => {
            let argv: Vec<String> = v["command"].as_array().into_iter().flatten().map(s).collect();
            format!("command {}", argv.join(" "))
        }
        "email" => {
            let to: Vec<String> = v["to"].as_array().into_iter().flatten().map(s).collect();
            format!("email {} via {}", to.join(", "), s(&v["smarthost"]))
        }
        other => format!("{other} {}", s(&v["url"])),
    }
}

/// `main@sha1:0123456789abcdef…` as `main@sha1:0123456789ab`.
fn short_revision(rev: &str) -> String {
    match rev.rsplit_once(':') {
        Some((head, sum)) if sum.len() > 12 => format!("{head}:{}", &sum[..12]),
        _ => rev.to_string(),
    }
}

/// `capstan describe` of every kind but App (whose describe is its own). Secret values are never shown.
pub fn describe(kind: Kind, o: &Value, events: &Value, now: DateTime<Utc>) -> String {
    let md = &o["metadata"];
    let spec = &o["spec"];
    let st = &o["status"];
    let mut out = String::new();
    let mut field = |k: &str, v: String| {
        if !v.is_empty() {
            out.push_str(&format!("{:<18}{v}\n", format!("{k}:")))
        }
    };
    let s = |v: &Value| v.as_str().unwrap_or("").to_string();
    field("Name", s(&md["name"]));
    field("Namespace", s(&md["namespace"]));
    field("Kind", kind.name().into());
    field("Managed by", crate::output::managed_by(md).unwrap_or_default());
    field("Created", format!("{} ({} ago)", s(&md["creationTimestamp"]), age(time_of(&md["creationTimestamp"]), now)));
    match kind {
        Kind::Secret => {
            let keys: BTreeSet<&String> =
                ["stringData", "data"].iter().filter_map(|f| spec[f].as_object()).flat_map(|m| m.keys()).collect();
            field("Keys", keys.into_iter().cloned().collect::<Vec<_>>().join(", "));
        }
        Kind::Database => {
            field("Endpoint", s(&st["endpoint"]));
            field(
                "Credentials",
                format!("Secret {} (username, password, database, host, port, url)", s(&st["secretName"])),
            );
            field("Server", format!("App {}", s(&st["appName"])));
            field("Data", s(&st["dataDirectory"]));
            field("Binaries", s(&st["binDirectory"]));
            field("Deletion policy", spec["deletionPolicy"].as_str().unwrap_or("Retain").to_string());
        }
        Kind::Source => {
            field("URL", s(&spec["url"]));
            field("Directory", s(&spec["dir"]));
            if let Some(r) = spec["ref"].as_object() {
                field("Ref", r.iter().map(|(k, v)| format!("{k}={}", s(v))).collect::<Vec<_>>().join(" "));
            }
            field("Interval", format!("{} (timeout {})", s(&spec["interval"]), s(&spec["timeout"])));
            field("Secret", s(&spec["secretRef"]["name"]));
            field("Suspended", spec["suspend"].as_bool().unwrap_or(false).to_string());
            let a = &st["artifact"];
            if !a.is_null() {
                field("Revision", s(&a["revision"]));
                field("Digest", s(&a["digest"]));
                field("Size", format!("{} bytes in {} files", a["size"], a["files"]));
                field("Updated", format!("{} ago", age(time_of(&a["lastUpdateTime"]), now)));
                field("Checkout", s(&a["path"]));
            }
            if let Some(ms) = st["lastFetchMillis"].as_u64() {
                field("Last fetch", format!("{ms} ms"));
            }
            for w in st["warnings"].as_array().into_iter().flatten() {
                field("Warning", s(w));
            }
        }
        Kind::ModelServer => {
            field("Model", spec["model"].as_str().unwrap_or(s(&md["name"]).as_str()).to_string());
            field("Base path", s(&spec["basePath"]));
            field("Version policy", spec["versionPolicy"].to_string());
            field("URL", s(&st["url"]));
            field(
                "Servers",
                format!("App {} ({} ready)", s(&st["appName"]), st["readyReplicas"].as_i64().unwrap_or(0)),
            );
            let nums = |v: &Value| -> String {
                let n: Vec<String> = v.as_array().into_iter().flatten().map(|x| x.to_string()).collect();
                if n.is_empty() {
                    "-".into()
                } else {
                    n.join(", ")
                }
            };
            field("Agreed versions", nums(&st["agreedVersions"]));
            let versions: Vec<Vec<String>> = st["versions"]
                .as_array()
                .into_iter()
                .flatten()
                .map(|v| {
                    let on: Vec<String> = v["replicas"].as_array().into_iter().flatten().map(s).collect();
                    vec![
                        v["version"].to_string(),
                        s(&v["state"]),
                        if v["wanted"] == true { "yes" } else { "no" }.to_string(),
                        if on.is_empty() { "-".into() } else { on.join(", ") },
                        v["error"].as_str().unwrap_or("").to_string(),
                    ]
                })
                .collect();
            out.push_str("Versions:\n");
            out.push_str(&indent(&table(&["VERSION", "STATE", "WANTED", "SERVED BY", "ERROR"], &versions)));
            let replicas: Vec<Vec<String>> = st["replicas"]
                .as_array()
                .into_iter()
                .flatten()
                .map(|r| {
                    let traffic = match (r["ready"] == true, r["agrees"] == true) {
                        (true, true) => "yes",
                        (true, false) => "no (serves other versions)",
                        _ => "no (not ready)",
                    };
                    vec![s(&r["name"]), nums(&r["versions"]), traffic.to_string()]
                })
                .collect();
            out.push_str("Replicas:\n");
            out.push_str(&indent(&table(&["REPLICA", "SERVES", "TRAFFIC"], &replicas)));
        }
        Kind::TrainingJob => {
            let types: Vec<String> = spec["replicaSpecs"]
                .as_object()
                .into_iter()
                .flatten()
                .map(|(t, r)| format!("{t} ×{} ({})", r["replicas"], r["restartPolicy"].as_str().unwrap_or("Never")))
                .collect();
            field("Tasks", types.join(", "));
            field("Restart scope", spec["restartScope"].as_str().unwrap_or("Group").to_string());
            field("Success policy", spec["successPolicy"].as_str().unwrap_or("Default").to_string());
            field("Started", s(&st["startTime"]));
            field("Completed", s(&st["completionTime"]));
            field(
                "Restarts",
                format!(
                    "{} (group restarts: {})",
                    st["restarts"].as_u64().unwrap_or(0),
                    st["attempt"].as_u64().unwrap_or(0)
                ),
            );
            field("Training dir", s(&st["trainingDir"]));
            let rows: Vec<Vec<String>> = st["tasks"]
                .as_array()
                .into_iter()
                .flatten()
                .map(|t| {
                    vec![
                        s(&t["name"]),
                        s(&t["type"]),
                        s(&t["address"]),
                        s(&t["phase"]),
                        t["restarts"].as_u64().unwrap_or(0).to_string(),
                        t["message"].as_str().unwrap_or("").to_string(),
                    ]
                })
                .collect();
            out.push_str("Task list:\n");
            out.push_str(&indent(&table(&["TASK", "TYPE", "ADDRESS", "PHASE", "RESTARTS", "LAST EXIT"], &rows)));
        }
        Kind::AlertRule => {
            let pairs = |v: &Value| -> String {
                let p: Vec<String> =
                    v.as_object().into_iter().flatten().map(|(k, v)| format!("{k}={}", s(v))).collect();
                if p.is_empty() {
                    "-".into()
                } else {
                    p.join(", ")
                }
            };
            field("Alert", spec["alert"].as_str().unwrap_or(s(&md["name"]).as_str()).to_string());
            field("Expression", s(&spec["expr"]));
            field("For", spec["for"].as_str().unwrap_or("0s").to_string());
            field("Keep firing for", spec["keepFiringFor"].as_str().unwrap_or("0s").to_string());
            field("Interval", spec["interval"].as_str().unwrap_or("15s").to_string());
            field("Labels", pairs(&spec["labels"]));
            field("Annotations", pairs(&spec["annotations"]));
            field("Health", st["health"].as_str().filter(|h| !h.is_empty()).unwrap_or("unknown").to_string());
            field("Last error", s(&st["lastError"]));
            let rows: Vec<Vec<String>> = st["alerts"]
                .as_array()
                .into_iter()
                .flatten()
                .map(|a| {
                    let since = time_of(&a["activeAt"]);
                    vec![s(&a["state"]), format!("{} ago", age(since, now)), s(&a["value"]), pairs(&a["labels"])]
                })
                .collect();
            out.push_str("Alerts:\n");
            out.push_str(&indent(&table(&["STATE", "ACTIVE FOR", "VALUE", "LABELS"], &rows)));
        }
        Kind::EscalationPolicy => {
            let m: Vec<String> =
                spec["match"].as_object().into_iter().flatten().map(|(k, v)| format!("{k}={}", s(v))).collect();
            field("Match", if m.is_empty() { "<every alert>".into() } else { m.join(", ") });
            let group: Vec<String> = spec["groupBy"].as_array().into_iter().flatten().map(s).collect();
            field("Group by", group.join(", "));
            field("Repeat", spec["repeat"].as_u64().unwrap_or(0).to_string());
            field("Acknowledge timeout", spec["acknowledgeTimeout"].as_str().unwrap_or("never").to_string());
            field("Open incidents", st["openIncidents"].as_u64().unwrap_or(0).to_string());
            let rows: Vec<Vec<String>> = spec["levels"]
                .as_array()
                .into_iter()
                .flatten()
                .enumerate()
                .map(|(i, l)| {
                    let targets: Vec<String> = l["targets"]
                        .as_array()
                        .into_iter()
                        .flatten()
                        .filter_map(|t| t.as_object()?.iter().next().map(|(k, v)| target_text(k, v)))
                        .collect();
                    vec![(i + 1).to_string(), s(&l["after"]), targets.join("; ")]
                })
                .collect();
            out.push_str("Levels:\n");
            out.push_str(&indent(&table(&["LEVEL", "AFTER", "TARGETS"], &rows)));
        }
        Kind::App => {}
        Kind::Sync => {
            let src = &spec["sourceRef"];
            field(
                "Source",
                format!("{}/{}", src["namespace"].as_str().unwrap_or(s(&md["namespace"]).as_str()), s(&src["name"])),
            );
            field("Path", spec["path"].as_str().unwrap_or("./").to_string());
            field("Interval", s(&spec["interval"]));
            field("Prune", spec["prune"].as_bool().unwrap_or(false).to_string());
            field("Wait", spec["wait"].as_bool().unwrap_or(false).to_string());
            let deps: Vec<String> = spec["dependsOn"].as_array().into_iter().flatten().map(|d| s(&d["name"])).collect();
            field("Depends on", deps.join(", "));
            field("Applied", s(&st["lastAppliedRevision"]));
            field("Attempted", s(&st["lastAttemptedRevision"]));
            let inv: Vec<String> = st["inventory"]
                .as_array()
                .into_iter()
                .flatten()
                .map(|e| format!("{}/{}/{}", s(&e["kind"]), s(&e["namespace"]), s(&e["name"])))
                .collect();
            field("Inventory", inv.join(", "));
        }
    }
    if kind != Kind::Secret {
        out.push_str(&conditions_section(st, now));
    }
    if kind == Kind::Sync {
        let rows: Vec<Vec<String>> = st["history"]
            .as_array()
            .into_iter()
            .flatten()
            .map(|h| {
                vec![
                    short_revision(h["revision"].as_str().unwrap_or("")),
                    s(&h["result"]),
                    format!("{} ms", h["durationMillis"]),
                    h["count"].to_string(),
                    format!("{} ago", age(time_of(&h["startedAt"]), now)),
                ]
            })
            .collect();
        out.push_str("History:\n");
        out.push_str(&indent(&table(&["REVISION", "RESULT", "DURATION", "COUNT", "LAST"], &rows)));
    }
    out.push_str(&events_section(events, now));
    out
}

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
pub fn render_manifests(ms: &[capstan_model::Manifest]) -> Result<Vec<Value>> {
    capstan_kubernetes::render::render_manifests(ms).map_err(|lines| {
        let text: Vec<String> = lines.iter().map(|l| format!("error: {l}")).collect();
        Failure::invalid(text.join("\n")).into()
    })
}

/// `capstan render --target kubernetes PATH…`: the Kubernetes objects for the objects in PATH.
pub fn render_cmd(paths: &[String], target: &str, output: &str) -> Result<u8> {
    if target != "kubernetes" {
        return Err(
            Failure::invalid(format!("error: unknown target `{target}`\n  hint: use --target kubernetes")).into()
        );
    }
    let ms = build_paths(paths, &BuildOptions::default())?;
    let objects = render_manifests(&ms)?;
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
        let label = format!("{}/{}/{}", key.kind, key.namespace, key.name);
        let path = format!("/api/v1/namespaces/{}/{}/{}", key.namespace, r.kind().plural(), key.name);
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

#[cfg(test)]
mod tests {
    use super::*;

    fn at(s: &str) -> DateTime<Utc> {
        DateTime::parse_from_rfc3339(s).map(|t| t.with_timezone(&Utc)).unwrap_or_default()
    }

    /// Issue 21: every kind's row has exactly its columns (a kind that slipped into another's arm would not).
    #[test]
    fn every_kind_has_a_row_as_wide_as_its_columns() {
        let o = json!({"metadata": {"name": "x", "namespace": "default", "creationTimestamp": "2026-12-06T10:00:00Z"},
                       "spec": {}, "status": {}});
        for kind in Kind::ALL {
            assert_eq!(row(*kind, &o, false, Utc::now()).len(), columns(*kind).len(), "{kind}");
            assert_eq!(row(*kind, &o, true, Utc::now()).len(), columns(*kind).len() + 1, "{kind} with NAMESPACE");
        }
    }

    /// Issue 20, polish: an AlertRule is described by its expression, health and alerts, not a Sync's fields.
    #[test]
    fn an_alert_rule_is_described_by_its_expression_and_alerts() {
        let o = json!({
            "metadata": {"name": "cart-up", "namespace": "default", "creationTimestamp": "2026-12-06T10:00:00Z"},
            "spec": {"expr": "up == 0", "for": "1m", "labels": {"severity": "page"}},
            "status": {"health": "ok", "alerts": [{"state": "firing", "activeAt": "2026-12-06T10:55:00Z",
                       "value": "0", "labels": {"alertname": "cart-up", "app": "cart"}}]}
        });
        let text = describe(Kind::AlertRule, &o, &json!({"items": []}), at("2026-12-06T11:00:00Z"));
        assert!(text.contains("Expression:       up == 0"), "{text}");
        assert!(text.contains("For:              1m") && text.contains("Health:           ok"), "{text}");
        assert!(text.contains("firing") && text.contains("5m ago") && text.contains("app=cart"), "{text}");
        assert!(!text.contains("Source:") && !text.contains("Prune:"), "no Sync fields: {text}");
    }

    #[test]
    fn an_escalation_policy_lists_its_levels_and_a_model_server_its_versions() {
        let o = json!({
            "metadata": {"name": "oncall", "namespace": "default"},
            "spec": {"groupBy": ["alertname"], "levels": [
                {"after": "5m", "targets": [{"webhook": {"url": "http://127.0.0.1:9/hook"}}]},
                {"after": "10m", "targets": [{"email": {"to": ["ops@example.com"], "smarthost": "127.0.0.1:25"}}]}]},
        });
        let text = describe(Kind::EscalationPolicy, &o, &json!({"items": []}), Utc::now());
        assert!(text.contains("Match:            <every alert>"), "{text}");
        assert!(text.contains("webhook http://127.0.0.1:9/hook"), "{text}");
        assert!(text.contains("email ops@example.com via 127.0.0.1:25"), "{text}");
        assert!(!text.contains("Source:"), "{text}");

        let ms = json!({
            "metadata": {"name": "lin", "namespace": "default"},
            "spec": {"basePath": "/models/lin"},
            "status": {"agreedVersions": [2],
                       "versions": [{"version": 3, "state": "END", "wanted": true, "error": "lin-server-0: cannot load"},
                                    {"version": 2, "state": "AVAILABLE", "wanted": false, "replicas": ["lin-server-0"]}],
                       "replicas": [{"name": "lin-server-0", "versions": [2], "agrees": true, "ready": true},
                                    {"name": "lin-server-1", "versions": [1], "agrees": false, "ready": true}]}
        });
        let text = describe(Kind::ModelServer, &ms, &json!({"items": []}), Utc::now());
        assert!(text.contains("Agreed versions:  2"), "{text}");
        assert!(text.contains("lin-server-0: cannot load"), "{text}");
        assert!(text.contains("no (serves other versions)"), "{text}");
    }
}
