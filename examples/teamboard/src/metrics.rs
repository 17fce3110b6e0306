//! The node's Prometheus metrics: requests by route and status, latency, sessions, websockets and the index.

use std::sync::Mutex;
use std::time::Instant;

use axum::extract::{MatchedPath, Request, State};
use axum::http::header::CONTENT_TYPE;
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;

use crate::Shared;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RequestLabels {
    method: String,
    route: String,
    code: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RouteLabels {
    route: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct BuildLabels {
    version: String,
    node: String,
}

/// The metrics a node keeps.
pub struct Metrics {
    registry: Mutex<Registry>,
    requests: Family<RequestLabels, Counter>,
    latency: Family<RouteLabels, Histogram>,
    pub websockets: Gauge,
    pub sessions: Gauge,
    pub index_docs: Gauge,
    pub index_cursor: Gauge,
}

impl Metrics {
    /// Registers everything, with `teamboard_build_info{version, node} 1`.
    pub fn new(node: &str, version: &str) -> Metrics {
        let mut r = Registry::default();
        let requests = Family::<RequestLabels, Counter>::default();
        let latency = Family::<RouteLabels, Histogram>::new_with_constructor(|| {
            Histogram::new([0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5])
        });
        let build = Family::<BuildLabels, Gauge>::default();
        build.get_or_create(&BuildLabels { version: version.into(), node: node.into() }).set(1);
        r.register("teamboard_http_requests", "HTTP requests answered", requests.clone());
        r.register("teamboard_http_request_duration_seconds", "Time to answer, by route", latency.clone());
        r.register("teamboard_build_info", "The running version", build);
        let (websockets, sessions, index_docs, index_cursor) =
            (Gauge::default(), Gauge::default(), Gauge::default(), Gauge::default());
        r.register("teamboard_websockets", "Open websocket connections", websockets.clone());
        r.register("teamboard_sessions", "Users signed in on this node", sessions.clone());
        r.register("teamboard_index_documents", "Issues in this node's search index", index_docs.clone());
        r.register(
            "teamboard_index_cursor",
            "The transaction horizon this node's index has caught up to",
            index_cursor.clone(),
        );
        Metrics { registry: Mutex::new(r), requests, latency, websockets, sessions, index_docs, index_cursor }
    }
}

/// Middleware counting every request by its route pattern (never the raw path, which would explode the labels).
pub async fn track(State(state): State<Shared>, req: Request, next: Next) -> Response {
    let route = req.extensions().get::<MatchedPath>().map(|m| m.as_str().to_string()).unwrap_or_else(|| "other".into());
    let method = req.method().to_string();
    let start = Instant::now();
    let res = next.run(req).await;
    let m = &state.metrics;
    m.latency.get_or_create(&RouteLabels { route: route.clone() }).observe(start.elapsed().as_secs_f64());
    m.requests.get_or_create(&RequestLabels { method, route, code: res.status().as_u16().to_string() }).inc();
    res
}

/// `GET /metrics` in the OpenMetrics text format.
pub async fn exposition(State(state): State<Shared>) -> Response {
    state.metrics.sessions.set(state.sessions.len() as i64);
    let mut out = String::new();
    let encoded = match state.metrics.registry.lock() {
        Ok(r) => prometheus_client::encoding::text::encode(&mut out, &r).is_ok(),
        Err(_) => false,
    };
    if !encoded {
        return (axum::http::StatusCode::INTERNAL_SERVER_ERROR, "metrics unavailable\n").into_response();
    }
    ([(CONTENT_TYPE, "application/openmetrics-text; version=1.0.0; charset=utf-8")], out).into_response()
}
