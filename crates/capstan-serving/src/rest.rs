//! The TensorFlow Serving REST API (`/v1/models/…`: status, metadata, `:predict` in row and columnar formats,
//! `{"error": …}`), KServe V2 health endpoints, and Prometheus metrics per model and version.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;
use serde_json::{json, Map, Value};

use crate::model::{Dense, Loaded, ModelError, TensorInfo};
use crate::versions::{ModelVersions, State as VState};

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ReqLabels {
    model: String,
    version: String,
    api: String,
    code: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct LatLabels {
    model: String,
    version: String,
}

/// Shared by the handlers.
pub struct Server {
    pub model: Arc<ModelVersions>,
    registry: Mutex<Registry>,
    requests: Family<ReqLabels, Counter>,
    latency: Family<LatLabels, Histogram>,
}

impl Server {
    pub fn new(model: Arc<ModelVersions>) -> Arc<Server> {
        let mut r = Registry::default();
        let requests = Family::<ReqLabels, Counter>::default();
        let latency = Family::<LatLabels, Histogram>::new_with_constructor(|| {
            Histogram::new([0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1.0])
        });
        r.register("capstan_model_requests", "Requests by model, version, API and status code", requests.clone());
        r.register("capstan_model_predict_duration_seconds", "Time to answer a predict request", latency.clone());
        Arc::new(Server { model, registry: Mutex::new(r), requests, latency })
    }

    fn count(&self, version: &str, api: &str, code: StatusCode) {
        self.requests
            .get_or_create(&ReqLabels {
                model: self.model.name.clone(),
                version: version.into(),
                api: api.into(),
                code: code.as_u16().to_string(),
            })
            .inc();
    }
}

/// The routes.
pub fn router(server: Arc<Server>) -> Router {
    Router::new()
        .route("/v1/models/{*rest}", get(get_model).post(post_model))
        .route("/v2/health/live", get(|| async { Json(json!({"live": true})) }))
        .route("/v2/health/ready", get(ready))
        .route("/capstan/versions", get(versions))
        .route("/monitoring/prometheus/metrics", get(metrics))
        .route("/metrics", get(metrics))
        .with_state(server)
}

fn error(code: StatusCode, message: impl Into<String>) -> Response {
    (code, Json(json!({"error": message.into()}))).into_response()
}

async fn ready(State(s): State<Arc<Server>>) -> Response {
    if s.model.ready() {
        Json(json!({"ready": true})).into_response()
    } else {
        (StatusCode::SERVICE_UNAVAILABLE, Json(json!({"ready": false}))).into_response()
    }
}

/// For the ModelServer controller: the versions the policy wants from what is on disk, and every version known with
/// its state and load error. Replicas of one ModelServer are compared with it.
async fn versions(State(s): State<Arc<Server>>) -> Response {
    let versions: Vec<Value> = s
        .model
        .list()
        .into_iter()
        .map(|(v, x)| json!({"version": v, "state": x.state.as_str(), "error": x.error}))
        .collect();
    Json(json!({"model": s.model.name, "wanted": s.model.wanted(), "versions": versions})).into_response()
}

async fn metrics(State(s): State<Arc<Server>>) -> Response {
    let mut out = String::new();
    let mut lines = String::new();
    for (v, x) in s.model.list() {
        let up = u8::from(x.state == VState::Available);
        lines
            .push_str(&format!("capstan_model_version_available{{model=\"{}\",version=\"{v}\"}} {up}\n", s.model.name));
    }
    let ok = match s.registry.lock() {
        Ok(r) => prometheus_client::encoding::text::encode_registry(&mut out, &r).is_ok(),
        Err(_) => false,
    };
    if !ok {
        return error(StatusCode::INTERNAL_SERVER_ERROR, "metrics unavailable");
    }
    out.push_str("# HELP capstan_model_version_available Whether a version is loaded and served.\n");
    out.push_str("# TYPE capstan_model_version_available gauge\n");
    out.push_str(&lines);
    out.push_str("# EOF\n");
    ([(axum::http::header::CONTENT_TYPE, "application/openmetrics-text; version=1.0.0; charset=utf-8")], out)
        .into_response()
}

/// What a `/v1/models/<rest>` path names.
#[derive(Debug, PartialEq, Eq)]
struct Target {
    model: String,
    version: Option<u64>,
    /// `""` (status), `"metadata"` or `"predict"`.
    what: String,
}

/// Why a `/v1/models/<rest>` path names nothing this server answers.
#[derive(Debug, PartialEq, Eq, thiserror::Error)]
enum TargetError {
    #[error("no such endpoint: /v1/models/{rest}")]
    NoSuchEndpoint { rest: String },
    #[error("version {version:?} is not a number")]
    BadVersion { version: String },
    #[error("unsupported method :{method}; this server answers :predict")]
    UnsupportedMethod { method: String },
}

impl TargetError {
    /// The status of the answer: the path names no resource.
    fn status(&self) -> StatusCode {
        StatusCode::NOT_FOUND
    }
}

fn parse_target(rest: &str) -> Result<Target, TargetError> {
    let (path, verb) = match rest.rsplit_once(':') {
        Some((p, v)) => (p, Some(v)),
        None => (rest, None),
    };
    let parts: Vec<&str> = path.split('/').filter(|p| !p.is_empty()).collect();
    let (model, version, tail) = match parts.as_slice() {
        [m] => (*m, None, None),
        [m, "metadata"] => (*m, None, Some("metadata")),
        [m, "versions", v] => (*m, Some(*v), None),
        [m, "versions", v, "metadata"] => (*m, Some(*v), Some("metadata")),
        _ => return Err(TargetError::NoSuchEndpoint { rest: rest.into() }),
    };
    let version = match version {
        Some(v) => Some(v.parse::<u64>().map_err(|_| TargetError::BadVersion { version: v.into() })?),
        None => None,
    };
    let what = match (tail, verb) {
        (None, None) => "",
        (Some("metadata"), None) => "metadata",
        (None, Some("predict")) => "predict",
        (_, Some(v)) => return Err(TargetError::UnsupportedMethod { method: v.into() }),
        _ => return Err(TargetError::NoSuchEndpoint { rest: rest.into() }),
    };
    Ok(Target { model: model.into(), version, what: what.into() })
}

async fn get_model(State(s): State<Arc<Server>>, Path(rest): Path<String>) -> Response {
    let t = match parse_target(&rest) {
        Ok(t) => t,
        Err(e) => return error(e.status(), e.to_string()),
    };
    if t.model != s.model.name {
        return error(StatusCode::NOT_FOUND, format!("Servable not found for request: Latest({})", t.model));
    }
    match t.what.as_str() {
        "" => status(&s, t.version),
        "metadata" => metadata(&s, t.version),
        _ => error(StatusCode::METHOD_NOT_ALLOWED, "use POST for :predict"),
    }
}

fn status(s: &Server, version: Option<u64>) -> Response {
    let entries: Vec<Value> = s
        .model
        .list()
        .into_iter()
        .rev()
        .filter(|(v, _)| version.is_none_or(|want| want == *v))
        .map(|(v, x)| {
            let (code, msg) = match &x.error {
                Some(e) if x.model.is_none() => ("UNKNOWN", e.clone()),
                _ => ("OK", String::new()),
            };
            json!({"version": v.to_string(), "state": x.state.as_str(), "status": {"error_code": code, "error_message": msg}})
        })
        .collect();
    if entries.is_empty() {
        let what = version.map(|v| format!("version {v}")).unwrap_or_else(|| "any version".into());
        return error(StatusCode::NOT_FOUND, format!("Could not find {what} of model {}", s.model.name));
    }
    Json(json!({"model_version_status": entries})).into_response()
}

fn tensor_info(t: &TensorInfo) -> Value {
    let dims: Vec<Value> = t.dims.iter().map(|d| json!({"size": d.to_string(), "name": ""})).collect();
    json!({"dtype": t.dtype, "tensor_shape": {"dim": dims, "unknown_rank": false}, "name": t.name})
}

fn metadata(s: &Server, version: Option<u64>) -> Response {
    let Some((v, m)) = s.model.get(version) else {
        return error(StatusCode::NOT_FOUND, format!("no available version of model {}", s.model.name));
    };
    let named =
        |ts: &[TensorInfo]| -> Map<String, Value> { ts.iter().map(|t| (t.name.clone(), tensor_info(t))).collect() };
    Json(json!({
        "model_spec": {"name": s.model.name, "signature_name": "", "version": v.to_string()},
        "metadata": {"signature_def": {"signature_def": {"serving_default": {
            "inputs": named(&m.inputs), "outputs": named(&m.outputs), "method_name": "tensorflow/serving/predict"
        }}}}
    }))
    .into_response()
}

async fn post_model(State(s): State<Arc<Server>>, Path(rest): Path<String>, body: axum::body::Bytes) -> Response {
    let start = Instant::now();
    let t = match parse_target(&rest) {
        Ok(t) if t.what == "predict" => t,
        Ok(_) => return error(StatusCode::METHOD_NOT_ALLOWED, "POST is for :predict"),
        Err(e) => return error(e.status(), e.to_string()),
    };
    if t.model != s.model.name {
        return error(StatusCode::NOT_FOUND, format!("Servable not found for request: Latest({})", t.model));
    }
    let Some((v, m)) = s.model.get(t.version) else {
        let what = t.version.map(|v| format!("version {v}")).unwrap_or_else(|| "any version".into());
        s.count("", "predict", StatusCode::NOT_FOUND);
        return error(
            StatusCode::NOT_FOUND,
            format!("Servable not found: {what} of model {} is not available", t.model),
        );
    };
    let vs = v.to_string();
    let answer = match serde_json::from_slice::<Value>(&body) {
        Err(e) => Err((StatusCode::BAD_REQUEST, format!("JSON Parse error: {e}"))),
        Ok(req) => predict(&m, &req).map_err(|e| (e.status(), e.to_string())),
    };
    let res = match answer {
        Ok(v) => {
            s.count(&vs, "predict", StatusCode::OK);
            Json(v).into_response()
        }
        Err((code, msg)) => {
            s.count(&vs, "predict", code);
            error(code, msg)
        }
    };
    s.latency
        .get_or_create(&LatLabels { model: s.model.name.clone(), version: vs })
        .observe(start.elapsed().as_secs_f64());
    res
}

/// Why a predict request cannot be answered. Every one is the client's error (400): the request does not fit the
/// model, or the model refused its tensors.
#[derive(Debug, thiserror::Error)]
pub enum PredictError {
    /// A value of input `what` is not a rectangular list of numbers.
    #[error("{what}: the lists are not all the same shape, or hold something other than numbers")]
    NotATensor { what: String },
    /// `instances` is an empty list.
    #[error("{what}: no instances")]
    NoInstances { what: String },
    /// The instances of input `what` differ in shape.
    #[error("{what}: instance {index} has shape {shape:?}, instance 0 has {first:?}")]
    ShapeMismatch { what: String, index: usize, shape: Vec<usize>, first: Vec<usize> },
    /// `instances` is not a list.
    #[error("\"instances\" must be a list")]
    InstancesNotAList,
    /// An instance (row format, several inputs) has no value for `input`.
    #[error("an instance lacks input {input:?}")]
    InstanceLacksInput { input: String },
    /// `inputs` (columnar format, by name) has no value for `input`.
    #[error("\"inputs\" lacks {input:?}")]
    InputsLack { input: String },
    /// `inputs` is not an object although the model has `count` inputs.
    #[error("the model has {count} inputs: give \"inputs\" as an object by name")]
    InputsNotByName { count: usize },
    /// The request has neither `instances` nor `inputs`.
    #[error("the request needs \"instances\" (row format) or \"inputs\" (columnar format)")]
    NoInputs,
    /// The model did not take the tensors, or failed running them.
    #[error(transparent)]
    Model(#[from] ModelError),
}

impl PredictError {
    /// The status of the answer.
    pub fn status(&self) -> StatusCode {
        StatusCode::BAD_REQUEST
    }
}

/// Flattens nested JSON arrays of numbers into a tensor, checking that they are rectangular.
fn dense(v: &Value, what: &str) -> Result<Dense, PredictError> {
    fn shape_of(v: &Value) -> Vec<usize> {
        match v {
            Value::Array(a) => {
                let mut s = vec![a.len()];
                if let Some(first) = a.first() {
                    s.extend(shape_of(first));
                }
                s
            }
            _ => vec![],
        }
    }
    fn walk(v: &Value, shape: &[usize], out: &mut Vec<f32>, what: &str) -> Result<(), PredictError> {
        match (v, shape.split_first()) {
            (Value::Array(a), Some((n, rest))) if a.len() == *n => a.iter().try_for_each(|x| walk(x, rest, out, what)),
            (Value::Number(x), None) => {
                out.push(x.as_f64().unwrap_or(f64::NAN) as f32);
                Ok(())
            }
            (Value::Bool(b), None) => {
                out.push(if *b { 1.0 } else { 0.0 });
                Ok(())
            }
            _ => Err(PredictError::NotATensor { what: what.into() }),
        }
    }
    let shape = shape_of(v);
    let mut values = Vec::with_capacity(shape.iter().product());
    walk(v, &shape, &mut values, what)?;
    Ok(Dense { shape, values })
}

/// A tensor back to nested JSON arrays.
fn nested(shape: &[usize], values: &[f32]) -> Value {
    match shape.split_first() {
        None => values.first().map(|x| json!(x)).unwrap_or(Value::Null),
        Some((n, rest)) => {
            let step: usize = rest.iter().product();
            Value::Array((0..*n).map(|i| nested(rest, &values[i * step..(i + 1) * step])).collect())
        }
    }
}

/// Stacks one value per instance into a batch.
fn stack(items: Vec<Dense>, what: &str) -> Result<Dense, PredictError> {
    let first = items.first().ok_or_else(|| PredictError::NoInstances { what: what.into() })?.shape.clone();
    let mut values = Vec::new();
    for (i, d) in items.iter().enumerate() {
        if d.shape != first {
            return Err(PredictError::ShapeMismatch { what: what.into(), index: i, shape: d.shape.clone(), first });
        }
        values.extend_from_slice(&d.values);
    }
    let mut shape = vec![items.len()];
    shape.extend(first);
    Ok(Dense { shape, values })
}

/// Answers a predict request in the format it came in: `instances` (row) → `predictions`, `inputs` (columnar) →
/// `outputs`.
pub fn predict(m: &Loaded, req: &Value) -> Result<Value, PredictError> {
    let one_input = m.inputs.len() == 1;
    let (inputs, row) = if let Some(instances) = req.get("instances") {
        let list = instances.as_array().ok_or(PredictError::InstancesNotAList)?;
        let tensors = if one_input {
            let items: Vec<Dense> = list
                .iter()
                .map(|x| match x.as_object() {
                    Some(o) if o.len() == 1 && o.contains_key(&m.inputs[0].name) => {
                        dense(&o[&m.inputs[0].name], "instances")
                    }
                    _ => dense(x, "instances"),
                })
                .collect::<Result<_, _>>()?;
            vec![stack(items, "instances")?]
        } else {
            let mut out = Vec::new();
            for input in &m.inputs {
                let items: Vec<Dense> = list
                    .iter()
                    .map(|x| {
                        let lacks = || PredictError::InstanceLacksInput { input: input.name.clone() };
                        dense(x.get(&input.name).ok_or_else(lacks)?, &input.name)
                    })
                    .collect::<Result<_, PredictError>>()?;
                out.push(stack(items, &input.name)?);
            }
            out
        };
        (tensors, true)
    } else if let Some(inputs) = req.get("inputs") {
        let tensors = match inputs.as_object() {
            Some(o) => m
                .inputs
                .iter()
                .map(|i| {
                    let lacks = || PredictError::InputsLack { input: i.name.clone() };
                    dense(o.get(&i.name).ok_or_else(lacks)?, &i.name)
                })
                .collect::<Result<Vec<_>, _>>()?,
            None if one_input => vec![dense(inputs, "inputs")?],
            None => return Err(PredictError::InputsNotByName { count: m.inputs.len() }),
        };
        (tensors, false)
    } else {
        return Err(PredictError::NoInputs);
    };
    let outputs = m.run(inputs)?;
    if row {
        let batch = outputs.first().and_then(|o| o.shape.first().copied()).unwrap_or(0);
        let per = |o: &Dense, i: usize| {
            let step: usize = o.shape[1..].iter().product();
            nested(&o.shape[1..], &o.values[i * step..(i + 1) * step])
        };
        let preds: Vec<Value> = (0..batch)
            .map(|i| {
                if outputs.len() == 1 {
                    per(&outputs[0], i)
                } else {
                    Value::Object(
                        m.outputs.iter().zip(&outputs).map(|(info, o)| (info.name.clone(), per(o, i))).collect(),
                    )
                }
            })
            .collect();
        Ok(json!({"predictions": preds}))
    } else if outputs.len() == 1 {
        Ok(json!({"outputs": nested(&outputs[0].shape, &outputs[0].values)}))
    } else {
        let o: Map<String, Value> =
            m.outputs.iter().zip(&outputs).map(|(info, o)| (info.name.clone(), nested(&o.shape, &o.values))).collect();
        Ok(json!({"outputs": o}))
    }
}

/// How `capstan serve-model` runs.
#[derive(Debug, Clone)]
pub struct ServeConfig {
    pub model_name: String,
    pub base_path: std::path::PathBuf,
    pub policy: crate::versions::VersionPolicy,
    pub poll: Duration,
    pub listen: std::net::SocketAddr,
}

/// Serves until SIGTERM or Ctrl-C: loads what is there, then polls the base path for new versions.
pub async fn serve(cfg: ServeConfig) -> std::io::Result<()> {
    let model = Arc::new(ModelVersions::new(&cfg.model_name, &cfg.base_path, cfg.policy.clone()));
    let server = Server::new(model.clone());
    let poller = model.clone();
    let poll = cfg.poll;
    tokio::spawn(async move {
        loop {
            let m = poller.clone();
            if let Ok(r) = tokio::task::spawn_blocking(move || m.poll()).await {
                for v in &r.loaded {
                    tracing::info!(model = %poller.name, version = v, "version available");
                }
                for (v, e) in &r.failed {
                    tracing::error!(model = %poller.name, version = v, "{e}");
                }
                for v in &r.unloaded {
                    tracing::info!(model = %poller.name, version = v, "version unloaded");
                }
            }
            tokio::time::sleep(poll).await;
        }
    });
    let listener = tokio::net::TcpListener::bind(cfg.listen).await?;
    tracing::info!(model = %cfg.model_name, base = %cfg.base_path.display(), "serving on http://{}", cfg.listen);
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    axum::serve(listener, router(server))
        .with_graceful_shutdown(async move {
            tokio::select! {
                _ = term.recv() => {}
                _ = tokio::signal::ctrl_c() => {}
            }
        })
        .await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_name_model_version_and_method() {
        let t = |m: &str, v: Option<u64>, w: &str| Target { model: m.into(), version: v, what: w.into() };
        assert_eq!(parse_target("linear"), Ok(t("linear", None, "")));
        assert_eq!(parse_target("linear/versions/3"), Ok(t("linear", Some(3), "")));
        assert_eq!(parse_target("linear/metadata"), Ok(t("linear", None, "metadata")));
        assert_eq!(parse_target("linear/versions/3/metadata"), Ok(t("linear", Some(3), "metadata")));
        assert_eq!(parse_target("linear:predict"), Ok(t("linear", None, "predict")));
        assert_eq!(parse_target("linear/versions/2:predict"), Ok(t("linear", Some(2), "predict")));
        assert!(parse_target("linear:classify").is_err_and(|e| e.to_string().contains(":classify")));
        assert!(parse_target("linear/versions/x").is_err());
    }

    #[test]
    fn unknown_paths_are_not_found_with_the_old_texts() {
        let err = |rest: &str| parse_target(rest).expect_err(rest);
        for (rest, text) in [
            ("linear/foo", "no such endpoint: /v1/models/linear/foo"),
            ("linear/versions/3/4", "no such endpoint: /v1/models/linear/versions/3/4"),
            ("linear/versions/x", "version \"x\" is not a number"),
            ("linear:classify", "unsupported method :classify; this server answers :predict"),
        ] {
            assert_eq!(err(rest).to_string(), text);
            assert_eq!(err(rest).status(), StatusCode::NOT_FOUND, "{rest}");
        }
    }

    #[test]
    fn bad_predict_requests_are_the_clients_error_with_the_old_texts() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("model.onnx");
        std::fs::write(&path, crate::fixtures::linear(&[3.0, -2.0], 0.5)).expect("write");
        let m = Loaded::load(&path).expect("the fixture loads");
        assert_eq!(predict(&m, &json!({"instances": [[1, 1]]})).expect("answers"), json!({"predictions": [[1.5]]}));
        let err = |req: Value| predict(&m, &req).expect_err("refused");
        for (req, text) in [
            (json!({"instances": 3}), "\"instances\" must be a list"),
            (json!({"instances": []}), "instances: no instances"),
            (
                json!({"instances": [["a"]]}),
                "instances: the lists are not all the same shape, or hold something other than numbers",
            ),
            (json!({"instances": [[1, 2], [[3], [4]]]}), "instances: instance 1 has shape [2, 1], instance 0 has [2]"),
            (json!({"inputs": {"z": [[1, 2]]}}), "\"inputs\" lacks \"x\""),
            (json!({"rows": []}), "the request needs \"instances\" (row format) or \"inputs\" (columnar format)"),
        ] {
            let e = err(req);
            assert_eq!(e.to_string(), text);
            assert_eq!(e.status(), StatusCode::BAD_REQUEST, "{text}");
        }
        // What the model refuses reads as the model's own error.
        let e = err(json!({"instances": [[1, 2, 3]]}));
        assert!(matches!(e, PredictError::Model(ModelError::BadInput(_))), "{e:?}");
        let refused = m.run(vec![Dense { shape: vec![1, 3], values: vec![1.0, 2.0, 3.0] }]).expect_err("refused");
        assert_eq!(e.to_string(), refused.to_string());
        assert_eq!(e.status(), StatusCode::BAD_REQUEST);
        let several = PredictError::InputsNotByName { count: 2 };
        assert_eq!(several.to_string(), "the model has 2 inputs: give \"inputs\" as an object by name");
        let lacking = PredictError::InstanceLacksInput { input: "y".into() };
        assert_eq!(lacking.to_string(), "an instance lacks input \"y\"");
    }

    #[test]
    fn nested_lists_become_tensors_and_back() {
        let d = dense(&json!([[1, 2.5], [3, 4]]), "x").expect("rectangular");
        assert_eq!((d.shape.clone(), d.values.clone()), (vec![2, 2], vec![1.0, 2.5, 3.0, 4.0]));
        assert_eq!(nested(&d.shape, &d.values), json!([[1.0, 2.5], [3.0, 4.0]]));
        assert!(dense(&json!([[1, 2], [3]]), "x").is_err());
        assert!(dense(&json!([["a"]]), "x").is_err());
        let s = stack(vec![d.clone(), d], "instances").expect("stack");
        assert_eq!(s.shape, vec![2, 2, 2]);
    }
}
