//! The Prometheus HTTP API over the embedded store, under `/prometheus/api/v1`: query, query_range, series,
//! labels and label values, as Grafana's Prometheus data source calls them (GET or form POST).

use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::{Path, RawQuery, State};
use axum::http::Method;
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use capstan_observe::promql::{self, format_value, Engine, QueryError, Value};
use capstan_observe::tsdb::{Labels, SeriesData, Tsdb};
use serde_json::{json, Map};

use crate::access::{Routes, Rule, Scope, Verb};
use crate::plane::Shared;

type AppState = Arc<Shared>;

/// The routes, relative to `/prometheus`: all of them read metrics of every namespace.
pub fn routes() -> Routes<AppState> {
    use Method as M;
    let read = Rule::Needs(Verb::Read, Scope::All);
    Routes::default()
        .add(M::GET, "/api/v1/query", query, read)
        .add(M::POST, "/api/v1/query", query, read)
        .add(M::GET, "/api/v1/query_range", query_range, read)
        .add(M::POST, "/api/v1/query_range", query_range, read)
        .add(M::GET, "/api/v1/series", series, read)
        .add(M::POST, "/api/v1/series", series, read)
        .add(M::GET, "/api/v1/labels", labels, read)
        .add(M::POST, "/api/v1/labels", labels, read)
        .add(M::GET, "/api/v1/label/{name}/values", label_values, read)
        .add(M::GET, "/api/v1/status/buildinfo", buildinfo, read)
        .add(
            M::GET,
            "/api/v1/targets",
            |State(s): State<AppState>| async move {
                ok(json!({ "activeTargets": s.targets.active(), "droppedTargets": [] }))
            },
            read,
        )
        .add(M::GET, "/api/v1/alerts", |State(s): State<AppState>| async move { ok(s.alerting.alerts_json()) }, read)
        .add(M::GET, "/api/v1/status/tsdb", tsdb_status, read)
        .add(M::GET, "/api/v1/metadata", || async { ok(json!({})) }, read)
        .add(M::GET, "/api/v1/query_exemplars", || async { ok(json!([])) }, read)
        .add(M::POST, "/api/v1/query_exemplars", || async { ok(json!([])) }, read)
}

fn ok(data: serde_json::Value) -> Response {
    Json(json!({ "status": "success", "data": data })).into_response()
}

fn fail(e: QueryError) -> Response {
    let status = match e {
        QueryError::Execution(_) => StatusCode::UNPROCESSABLE_ENTITY,
        // As Prometheus answers them.
        QueryError::Timeout(_) | QueryError::Canceled(_) => StatusCode::SERVICE_UNAVAILABLE,
        QueryError::Parse { .. } | QueryError::BadData(_) => StatusCode::BAD_REQUEST,
    };
    (status, Json(json!({ "status": "error", "errorType": e.kind(), "error": e.to_string() }))).into_response()
}

fn bad(msg: impl Into<String>) -> Response {
    fail(QueryError::BadData(msg.into()))
}

/// Parameters from the query string and, for POST, the form body; repeated keys (`match[]`) are kept.
fn params(raw: Option<String>, headers: &HeaderMap, body: &Bytes) -> Vec<(String, String)> {
    let mut out: Vec<(String, String)> =
        raw.as_deref().and_then(|q| serde_urlencoded::from_str(q).ok()).unwrap_or_default();
    let form = headers
        .get(axum::http::header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|ct| ct.starts_with("application/x-www-form-urlencoded"));
    if form {
        if let Ok(more) = serde_urlencoded::from_bytes::<Vec<(String, String)>>(body) {
            out.extend(more);
        }
    }
    out
}

fn one<'a>(p: &'a [(String, String)], key: &str) -> Option<&'a str> {
    p.iter().find(|(k, _)| k == key).map(|(_, v)| v.as_str())
}

/// A parameter that does not parse; the text is Prometheus' own.
#[derive(Debug, PartialEq, Eq, thiserror::Error)]
enum PrometheusError {
    #[error("cannot parse \"{0}\" to a valid timestamp")]
    Timestamp(String),
    #[error("cannot parse \"{0}\" to a valid duration")]
    Duration(String),
}

/// A time as Prometheus takes it: Unix seconds (with a fraction) or RFC 3339. Returns milliseconds.
fn parse_time(s: &str) -> Result<i64, PrometheusError> {
    if let Ok(f) = s.parse::<f64>() {
        if f.is_finite() {
            return Ok((f * 1000.0).round() as i64);
        }
    }
    chrono::DateTime::parse_from_rfc3339(s)
        .map(|t| t.timestamp_millis())
        .map_err(|_| PrometheusError::Timestamp(s.to_string()))
}

/// A duration: seconds as a number, or a Prometheus duration (`15s`, `1m`). Returns milliseconds.
fn parse_step(s: &str) -> Result<i64, PrometheusError> {
    if let Ok(f) = s.parse::<f64>() {
        if f.is_finite() {
            return Ok((f * 1000.0).round() as i64);
        }
    }
    capstan_model::parse_duration(s).map(|d| d.as_millis() as i64).map_err(|_| PrometheusError::Duration(s.to_string()))
}

fn time_param(p: &[(String, String)], key: &str, default: i64) -> Result<i64, QueryError> {
    match one(p, key) {
        Some(s) if !s.is_empty() => {
            parse_time(s).map_err(|e| QueryError::BadData(format!("invalid parameter \"{key}\": {e}")))
        }
        _ => Ok(default),
    }
}

fn ts(t_ms: i64) -> serde_json::Value {
    json!(t_ms as f64 / 1000.0)
}

fn metric(l: &Labels) -> serde_json::Value {
    let mut m = Map::new();
    for (k, v) in l.iter() {
        m.insert(k.to_string(), json!(v));
    }
    serde_json::Value::Object(m)
}

fn result(v: Value, t: i64) -> serde_json::Value {
    match v {
        Value::Scalar(x) => json!({ "resultType": "scalar", "result": [ts(t), format_value(x)] }),
        Value::String(s) => json!({ "resultType": "string", "result": [ts(t), s] }),
        Value::Vector(samples) => json!({
            "resultType": "vector",
            "result": samples.iter().map(|s| json!({ "metric": metric(&s.labels), "value": [ts(t), format_value(s.v)] })).collect::<Vec<_>>(),
        }),
        Value::Matrix(series) => json!({ "resultType": "matrix", "result": matrix(&series) }),
    }
}

fn matrix(series: &[SeriesData]) -> Vec<serde_json::Value> {
    series
        .iter()
        .map(|s| {
            json!({
                "metric": metric(&s.labels),
                "values": s.samples.iter().map(|(t, v)| json!([ts(*t), format_value(*v)])).collect::<Vec<_>>(),
            })
        })
        .collect()
}

fn store(state: &Shared) -> Arc<Tsdb> {
    state.metrics.clone()
}

async fn query(State(state): State<AppState>, RawQuery(raw): RawQuery, headers: HeaderMap, body: Bytes) -> Response {
    let p = params(raw, &headers, &body);
    let Some(q) = one(&p, "query").map(str::to_string) else { return bad("invalid parameter \"query\": empty") };
    let t = match time_param(&p, "time", promql::now_ms()) {
        Ok(t) => t,
        Err(e) => return fail(e),
    };
    match state.queries.run(store(&state), move |e: &mut Engine| e.instant(&q, t).map(|v| result(v, t))).await {
        Ok(v) => ok(v),
        Err(e) => fail(e),
    }
}

async fn query_range(
    State(state): State<AppState>,
    RawQuery(raw): RawQuery,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let p = params(raw, &headers, &body);
    let Some(q) = one(&p, "query").map(str::to_string) else { return bad("invalid parameter \"query\": empty") };
    let (start, end) = match (one(&p, "start"), one(&p, "end")) {
        (Some(s), Some(e)) => match (parse_time(s), parse_time(e)) {
            (Ok(s), Ok(e)) => (s, e),
            (Err(x), _) => return bad(format!("invalid parameter \"start\": {x}")),
            (_, Err(x)) => return bad(format!("invalid parameter \"end\": {x}")),
        },
        _ => return bad("invalid parameter \"start\"/\"end\": both are required"),
    };
    let step = match one(&p, "step").map(parse_step) {
        Some(Ok(s)) => s,
        Some(Err(e)) => return bad(format!("invalid parameter \"step\": {e}")),
        None => return bad("invalid parameter \"step\": required"),
    };
    let range = move |e: &mut Engine| e.range(&q, start, end, step).map(|v| result(v, end));
    match state.queries.run(store(&state), range).await {
        Ok(v) => ok(v),
        Err(e) => fail(e),
    }
}

/// `match[]` selectors as matcher sets.
fn matcher_sets(p: &[(String, String)]) -> Result<Vec<Vec<promql_parser::label::Matcher>>, QueryError> {
    let mut out = Vec::new();
    for (_, sel) in p.iter().filter(|(k, _)| k == "match[]") {
        match promql::parse(sel) {
            Ok(promql_parser::parser::Expr::VectorSelector(vs)) => {
                let mut m = vs.matchers.matchers.clone();
                if let Some(n) = &vs.name {
                    m.push(promql_parser::label::Matcher::new(promql_parser::label::MatchOp::Equal, "__name__", n));
                }
                out.push(m);
            }
            Ok(_) => {
                return Err(QueryError::BadData(format!(
                    "invalid parameter \"match[]\": \"{sel}\" is not a series selector"
                )))
            }
            Err(e) => return Err(QueryError::BadData(format!("invalid parameter \"match[]\": {e}"))),
        }
    }
    Ok(out)
}

/// Most series `series` returns, and most names or values `labels` and `label/…/values` return, whatever the
/// `limit` asked: a selector over everything must not build a response of hundreds of megabytes.
pub const MAX_METADATA_RESULTS: usize = 50_000;

/// What `series`, `labels` and `label/…/values` select: matcher sets, a time range and a limit.
struct Selection {
    sets: Vec<Vec<promql_parser::label::Matcher>>,
    start: i64,
    end: i64,
    limit: usize,
}

fn selection(p: &[(String, String)]) -> Result<Selection, QueryError> {
    // Prometheus' `limit` (0: none asked), capped by the server's own.
    let limit = match one(p, "limit") {
        None | Some("") | Some("0") => MAX_METADATA_RESULTS,
        Some(l) => match l.parse::<usize>() {
            Ok(n) => n.min(MAX_METADATA_RESULTS),
            Err(_) => return Err(QueryError::BadData(format!("invalid parameter \"limit\": cannot parse \"{l}\""))),
        },
    };
    Ok(Selection {
        sets: matcher_sets(p)?,
        start: time_param(p, "start", i64::MIN)?,
        end: time_param(p, "end", i64::MAX)?,
        limit,
    })
}

/// A success answer that says, as Prometheus does, when a limit cut it short.
fn limited(data: serde_json::Value, truncated: bool, limit: usize) -> Response {
    if !truncated {
        return ok(data);
    }
    let warning = if limit == MAX_METADATA_RESULTS {
        format!("results truncated due to limit: at most {MAX_METADATA_RESULTS} are returned; narrow the match[] selectors or the time range")
    } else {
        "results truncated due to limit".to_string()
    };
    Json(json!({ "status": "success", "data": data, "warnings": [warning] })).into_response()
}

async fn series(State(state): State<AppState>, RawQuery(raw): RawQuery, headers: HeaderMap, body: Bytes) -> Response {
    match selection(&params(raw, &headers, &body)) {
        Ok(sel) if sel.sets.is_empty() => bad("no match[] parameter provided"),
        Ok(sel) => {
            let db = store(&state);
            // Reading the index and building the answer are blocking work: off the async workers.
            let answer = tokio::task::spawn_blocking(move || {
                let (found, truncated) = db.series(&sel.sets, sel.start, sel.end, sel.limit);
                (json!(found.iter().map(metric).collect::<Vec<_>>()), truncated, sel.limit)
            })
            .await;
            match answer {
                Ok((data, truncated, limit)) => limited(data, truncated, limit),
                Err(e) => fail(QueryError::Execution(e.to_string())),
            }
        }
        Err(e) => fail(e),
    }
}

async fn labels(State(state): State<AppState>, RawQuery(raw): RawQuery, headers: HeaderMap, body: Bytes) -> Response {
    match selection(&params(raw, &headers, &body)) {
        Ok(sel) => {
            let db = store(&state);
            let limit = sel.limit;
            match tokio::task::spawn_blocking(move || db.label_names(&sel.sets, sel.start, sel.end, limit)).await {
                Ok((names, truncated)) => limited(json!(names), truncated, limit),
                Err(e) => fail(QueryError::Execution(e.to_string())),
            }
        }
        Err(e) => fail(e),
    }
}

async fn label_values(State(state): State<AppState>, Path(name): Path<String>, RawQuery(raw): RawQuery) -> Response {
    match selection(&params(raw, &HeaderMap::new(), &Bytes::new())) {
        Ok(sel) => {
            let db = store(&state);
            let limit = sel.limit;
            match tokio::task::spawn_blocking(move || db.label_values(&name, &sel.sets, sel.start, sel.end, limit))
                .await
            {
                Ok((values, truncated)) => limited(json!(values), truncated, limit),
                Err(e) => fail(QueryError::Execution(e.to_string())),
            }
        }
        Err(e) => fail(e),
    }
}

async fn buildinfo() -> Response {
    // Grafana reads the version to choose features; Capstan answers the PromQL of Prometheus 2.42.
    ok(json!({ "version": "2.42.0", "revision": "capstan", "branch": "capstan", "buildUser": "capstan",
               "buildDate": "", "goVersion": concat!("capstan ", env!("CARGO_PKG_VERSION")) }))
}

async fn tsdb_status(State(state): State<AppState>) -> Response {
    let s = store(&state).stats();
    ok(json!({
        "headStats": {
            "numSeries": s.series,
            "chunkCount": s.chunks,
            "minTime": s.min_time.unwrap_or(0),
            "maxTime": s.max_time.unwrap_or(0),
        },
        "capstan": { "bytes": s.bytes, "samplesAppended": s.samples_appended },
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn times_and_steps_parse_as_prometheus_takes_them() {
        assert_eq!(parse_time("1700000000.5"), Ok(1_700_000_000_500));
        assert_eq!(parse_time("2023-11-14T22:13:20Z"), Ok(1_700_000_000_000));
        let bad_time = parse_time("yesterday").map_err(|e| e.to_string());
        assert_eq!(bad_time, Err("cannot parse \"yesterday\" to a valid timestamp".to_string()));
        assert_eq!(parse_step("15"), Ok(15_000));
        assert_eq!(parse_step("1m"), Ok(60_000));
        let bad_step = parse_step("soon").map_err(|e| e.to_string());
        assert_eq!(bad_step, Err("cannot parse \"soon\" to a valid duration".to_string()));
    }

    #[test]
    fn repeated_match_parameters_are_kept() {
        let p = params(Some("match[]=up&match[]=x%7Bjob%3D%22a%22%7D".into()), &HeaderMap::new(), &Bytes::new());
        assert_eq!(matcher_sets(&p).map(|s| s.len()).unwrap_or(0), 2);
        let mut h = HeaderMap::new();
        h.insert(axum::http::header::CONTENT_TYPE, "application/x-www-form-urlencoded".parse().expect("header"));
        let p = params(None, &h, &Bytes::from_static(b"query=up&time=10"));
        assert_eq!(one(&p, "query"), Some("up"));
        assert_eq!(one(&p, "time"), Some("10"));
    }
}
