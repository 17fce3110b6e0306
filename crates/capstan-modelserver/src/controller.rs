//! The ModelServer controller: keeps an App (`<name>-server`) running `capstan serve-model` on every replica, with
//! probes on the KServe V2 health endpoints, the model's metrics as scrape targets and the load balancer in front,
//! and mirrors its readiness.

use std::path::{Path, PathBuf};
use std::time::Duration;

use capstan_engine::controller::condition_now as cond;
use capstan_model::serving::{server_app, ModelReplicaStatus, ModelServerStatus};
use capstan_model::{
    set_condition, ConditionStatus, EventType, ModelServer, ObjectKey, API_VERSION, BASE_DIR_ANNOTATION,
    OUT_OF_ROTATION_ANNOTATION, READY,
};
use capstan_store::{Store, StoreError};
use serde_json::{json, Value};

use crate::agreement::{agree, Agreement, Report, ReportedVersion};
use capstan_engine::runner::Handle;

use capstan_engine::owner::{decode_owner, Owner};

/// Label on the App a ModelServer owns.
pub const SERVER_LABEL: &str = "capstan.dev/model-server";

/// Starts the ModelServer controller.
pub fn spawn(store: Store, data_dir: PathBuf) -> Handle {
    let on_delete = |s: &Store, _: &Path, k: &ObjectKey, _: &Value| {
        let _ = s.delete(&ObjectKey::new("App", &k.namespace, server_app(&k.name)));
    };
    Owner { store, data_dir, kind: "ModelServer", label: SERVER_LABEL, reconcile, on_delete }.run()
}

/// The `capstan` binary the servers run: `CAPSTAN_EXE`, else this process's own executable.
fn capstan_exe() -> String {
    std::env::var("CAPSTAN_EXE")
        .ok()
        .filter(|p| !p.is_empty())
        .or_else(|| std::env::current_exe().ok().map(|p| p.display().to_string()))
        .unwrap_or_else(|| "capstan".into())
}

fn reconcile(store: &Store, _data_dir: &Path, key: &ObjectKey) -> Result<Option<Duration>, StoreError> {
    // A read that fails is an error for the runner's backoff, never "the ModelServer is gone".
    let Some(stored) = store.get(key)? else { return Ok(None) };
    let Some(ms) = decode_owner::<ModelServer>(stored) else { return Ok(None) };
    let g = ms.metadata.generation;
    let mut status: ModelServerStatus = ms.status.clone().unwrap_or_default();
    status.observed_generation = g;
    let model = ms.spec.model.clone().unwrap_or_else(|| key.name.clone());
    let base = match (Path::new(&ms.spec.base_path).is_absolute(), ms.metadata.base_dir()) {
        (false, Some(dir)) => Path::new(dir).join(&ms.spec.base_path),
        _ => PathBuf::from(&ms.spec.base_path),
    };
    let mut args = vec![capstan_exe()];
    args.extend(capstan_model::serving::serve_model_args(&ms.spec, &model, &base.display().to_string()));
    let mut annotations = serde_json::Map::new();
    if let Some(b) = ms.metadata.base_dir() {
        annotations.insert(BASE_DIR_ANNOTATION.into(), json!(b));
    }
    // What the replicas serve, compared: those serving other versions than the agreed ones get no traffic.
    let app_key = ObjectKey::new("App", &key.namespace, server_app(&key.name));
    // Not "no replicas" when the read fails: nothing is taken out of (or put back into) rotation on a guess.
    let running = store.get(&app_key)?;
    let reports = running.as_ref().map(|a| version_reports(a, &status.replicas)).unwrap_or_default();
    let agreement = agree(&reports);
    let out = agreement.dissenters();
    if !out.is_empty() {
        annotations.insert(OUT_OF_ROTATION_ANNOTATION.into(), json!(out.join(",")));
    }
    let replicas = match &ms.spec.autoscaling {
        Some(a) => {
            let start = status.autoscaling.as_ref().map(|x| x.desired_replicas).unwrap_or(ms.spec.replicas);
            start.clamp(a.min_replicas.max(1), a.max_replicas.max(a.min_replicas.max(1)))
        }
        None => ms.spec.replicas,
    };
    let mut spec = json!({
        "replicas": replicas,
        "run": {"command": args, "env": {"RUST_LOG": "info"}},
        "ports": [{"name": "http"}],
        "probes": {
            "readiness": {"http": {"path": "/v2/health/ready", "port": "http"}, "periodSeconds": 1, "failureThreshold": 1},
            "liveness": {"http": {"path": "/v2/health/live", "port": "http"}, "periodSeconds": 5}
        },
        "metrics": {"port": "http", "path": "/monitoring/prometheus/metrics"},
        "update": {"strategy": "Surge"},
        "terminationGracePeriodSeconds": 10
    });
    if let Some(e) = &ms.spec.expose {
        let mut entry = json!({"name": "rest", "port": e.port, "drainSeconds": 5});
        if let Some(a) = &e.address {
            entry["address"] = json!(a);
        }
        spec["expose"] = json!([entry]);
        let host = e.address.clone().unwrap_or_else(|| "127.0.0.1".into());
        status.url = Some(format!("http://{host}:{}/v1/models/{model}", e.port));
    }
    let app = json!({
        "apiVersion": API_VERSION, "kind": "App",
        "metadata": {"name": server_app(&key.name), "namespace": key.namespace,
                     "labels": {SERVER_LABEL: key.name, "app.kubernetes.io/component": "model-server"},
                     "annotations": annotations},
        "spec": spec
    });
    if let Err(e) = store.apply(vec![app]) {
        let msg = e.to_string();
        set_condition(&mut status.conditions, cond(READY, ConditionStatus::False, "ServerApp", msg.clone(), g));
        let _ = store.record_event(key, EventType::Warning, "ServerApp", &msg);
        let _ = store.update_status(key, serde_json::to_value(&status).unwrap_or(Value::Null));
        return Ok(Some(Duration::from_secs(5)));
    }
    status.app_name = Some(server_app(&key.name));
    let app = store.get(&app_key)?;
    let ready =
        app.as_ref().and_then(|a| a["status"]["conditions"].as_array()?.iter().find(|c| c["type"] == READY).cloned());
    status.ready_replicas = agreement.serving() as i32;
    // Routing follows every look; the condition and the event wait for a disagreement seen twice in a row, so that
    // replicas a poll apart while a new version is published do not raise an alarm.
    let previously_out: Vec<String> =
        status.replicas.iter().filter(|r| r.ready && !r.agrees).map(|r| r.name.clone()).collect();
    let lasting: Vec<&String> = out.iter().filter(|n| previously_out.contains(n)).collect();
    let said = status.conditions.iter().any(|c| c.type_ == READY && c.reason == "VersionsDisagree");
    if !lasting.is_empty() && !said {
        let msg =
            format!("{}; they get no traffic until they serve {:?}", describe_replicas(&agreement), agreement.agreed);
        let _ = store.record_event(key, EventType::Warning, "VersionsDisagree", &msg);
    }
    status.agreed_versions = agreement.agreed.clone();
    status.versions = agreement.versions.clone();
    status.replicas = agreement.replicas.clone();
    let failures: Vec<String> = status
        .versions
        .iter()
        .filter(|v| v.wanted && v.state != "AVAILABLE")
        .filter_map(|v| Some(format!("version {}: {}", v.version, v.error.as_deref()?)))
        .collect();
    let c = match ready {
        Some(_) if !lasting.is_empty() => cond(
            READY,
            ConditionStatus::False,
            "VersionsDisagree",
            format!(
                "{}; traffic goes only to the replicas serving {:?}",
                describe_replicas(&agreement),
                agreement.agreed
            ),
            g,
        ),
        Some(c) if c["status"] == "True" => cond(
            READY,
            ConditionStatus::True,
            "Serving",
            format!(
                "{} serving {model} versions {:?} from {}",
                capstan_model::count_of(i64::from(status.ready_replicas), "replica"),
                agreement.agreed,
                base.display()
            ),
            g,
        ),
        Some(c) if !failures.is_empty() => cond(
            READY,
            ConditionStatus::False,
            c["reason"].as_str().unwrap_or("Starting"),
            format!("no version of {model} is available yet in {}: {}", base.display(), failures.join("; ")),
            g,
        ),
        Some(c) => cond(
            READY,
            ConditionStatus::False,
            c["reason"].as_str().unwrap_or("Starting"),
            format!(
                "no version of {model} is available yet in {}: {}",
                base.display(),
                c["message"].as_str().unwrap_or("")
            ),
            g,
        ),
        None => cond(READY, ConditionStatus::False, "Starting", "the servers are starting".to_string(), g),
    };
    set_condition(&mut status.conditions, c);
    let requeue = match (&ms.spec.autoscaling, &app) {
        (Some(a), Some(app)) => {
            autoscale(store, key, a, replicas, app, &mut status);
            SAMPLE_EVERY
        }
        _ => {
            status.autoscaling = None;
            SAMPLE_EVERY
        }
    };
    let _ = store.update_status(key, serde_json::to_value(&status).unwrap_or(Value::Null));
    // The replicas' versions change without the store knowing: look again.
    Ok(Some(requeue))
}

/// `lin-server-0 serves [2], lin-server-1 serves [1]`.
fn describe_replicas(a: &Agreement) -> String {
    a.replicas.iter().map(|r| format!("{} serves {:?}", r.name, r.versions)).collect::<Vec<_>>().join(", ")
}

/// Each running replica's version report, by replica name. A ready replica that does not answer in time keeps what
/// it served at the last look (`before`), so that a slow answer under load does not move traffic.
fn version_reports(app: &Value, before: &[ModelReplicaStatus]) -> Vec<(String, Report)> {
    app["status"]["replicaStatuses"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|r| r["phase"] == "Running")
        .filter_map(|r| {
            let name = r["name"].as_str()?.to_string();
            let ready = r["ready"] == true;
            let answered = r["ports"]["http"]
                .as_u64()
                .and_then(|port| fetch(port as u16, "/capstan/versions"))
                .and_then(|text| serde_json::from_str::<Report>(&text).ok());
            let report = match answered {
                Some(r) => r,
                None => {
                    let last = before.iter().find(|b| b.name == name && b.ready)?;
                    Report {
                        wanted: Vec::new(),
                        versions: last
                            .versions
                            .iter()
                            .map(|v| ReportedVersion { version: *v, state: "AVAILABLE".into(), error: None })
                            .collect(),
                        ready: true,
                    }
                }
            };
            Some((name, Report { ready, ..report }))
        })
        .collect()
}

/// How often the autoscaler reads the servers' metrics.
const SAMPLE_EVERY: Duration = Duration::from_secs(3);

/// Reads every ready server's metrics, takes rates against the previous reading, and sets the replicas wanted.
fn autoscale(
    store: &Store,
    key: &ObjectKey,
    spec: &capstan_model::serving::Autoscaling,
    current: i32,
    app: &Value,
    status: &mut ModelServerStatus,
) {
    let ports: Vec<u16> = app["status"]["replicaStatuses"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|r| r["ready"] == true)
        .filter_map(|r| r["ports"]["http"].as_u64().map(|p| p as u16))
        .collect();
    let (mut requests, mut buckets) = (0.0, Vec::<(f64, f64)>::new());
    for port in ports {
        let Some(text) = fetch(port, "/monitoring/prometheus/metrics") else { continue };
        requests += capstan_observe::exposition::counter_sum(&text, "capstan_model_requests", &[("api", "predict")])
            .unwrap_or(0.0);
        for (le, c) in capstan_observe::exposition::histogram_sum(&text, "capstan_model_predict_duration_seconds", &[])
            .unwrap_or_default()
        {
            match buckets.iter_mut().find(|(l, _)| *l == le) {
                Some(b) => b.1 += c,
                None => buckets.push((le, c)),
            }
        }
    }
    // JSON has no infinity: the +Inf bucket is kept as f64::MAX.
    for b in &mut buckets {
        if b.0.is_infinite() {
            b.0 = f64::MAX;
        }
    }
    let now = chrono::Utc::now();
    let mut a = status
        .autoscaling
        .clone()
        .unwrap_or(capstan_model::serving::AutoscalingStatus { desired_replicas: current, ..Default::default() });
    // Rates need a previous reading; a drop (a server replaced or removed) starts the counting again.
    let (rate, p95) = match a.sample_time {
        Some(t) if requests >= a.sample_requests && (now - t).num_milliseconds() > 0 => {
            let secs = (now - t).num_milliseconds() as f64 / 1000.0;
            (
                Some((requests - a.sample_requests) / secs),
                capstan_engine::autoscale::quantile(0.95, &buckets, &a.sample_buckets),
            )
        }
        _ => (None, None),
    };
    let (want, why) = capstan_engine::autoscale::desired_replicas(spec, current, rate, p95, a.last_scale_time, now);
    if want != current {
        a.last_scale_time = Some(now);
        let _ = store.record_event(
            key,
            EventType::Normal,
            "Scaled",
            &format!("{current} → {}: {why}", capstan_model::count_of(i64::from(want), "replica")),
        );
    }
    a.desired_replicas = want;
    a.requests_per_second = rate;
    a.p95_milliseconds = p95.map(|s| s * 1000.0);
    a.sample_time = Some(now);
    a.sample_requests = requests;
    a.sample_buckets = buckets;
    status.autoscaling = Some(a);
}

/// A GET of one server's `path`, or None when it does not answer within a second.
fn fetch(port: u16, path: &str) -> Option<String> {
    use http_body_util::{BodyExt, Empty};
    let handle = tokio::runtime::Handle::try_current().ok()?;
    handle.block_on(async move {
        let client = hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
            .build_http::<Empty<bytes::Bytes>>();
        let uri: hyper::Uri = format!("http://127.0.0.1:{port}{path}").parse().ok()?;
        let res = tokio::time::timeout(Duration::from_secs(1), client.get(uri)).await.ok()?.ok()?;
        let body = tokio::time::timeout(Duration::from_secs(1), res.into_body().collect()).await.ok()?.ok()?;
        String::from_utf8(body.to_bytes().to_vec()).ok()
    })
}
