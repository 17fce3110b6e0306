//! The HTTP API: Kubernetes-shaped paths under /api/v1, bearer-token auth, NDJSON streams for logs and watches.

use std::collections::HashMap;
use std::sync::Arc;

use axum::body::Body;
use axum::extract::{Path, Query, Request, State};
use axum::http::{header, Method, StatusCode};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::{Extension, Json, Router};
use capstan_model::{Kind, ObjectKey};
use chrono::{DateTime, Utc};
use serde::Deserialize;
use serde_json::{json, Value};
use tokio::sync::mpsc;

use crate::access::{Grant, Role, Routes, Rule, Rules, Scope, Verb};
use crate::audit::{Identity, Touched};
use crate::error::ApiError;
use crate::plane::{ApplyError, Shared};

type AppState = Arc<Shared>;

fn kind_of(plural: &str) -> Result<Kind, ApiError> {
    Kind::parse(plural).ok_or_else(|| {
        let known: Vec<&str> = Kind::ALL.iter().map(|k| k.plural()).collect();
        ApiError::NotFound(format!("unknown resource type `{plural}`; known: {}", known.join(", ")))
    })
}

/// Every route with the right it asks for. The API's routes need a token; a route cannot be added here without
/// its rule, and the role × route test walks this table.
pub fn routes() -> Routes<AppState> {
    use Method as M;
    use Scope::{All, Each, Namespace};
    use Verb::{Admin, Read, Write};
    let needs = Rule::Needs;
    Routes::default()
        .add(M::GET, "/healthz", || async { "ok" }, Rule::Public)
        // Webhooks authenticate with their own HMAC, not a token.
        .add(M::POST, "/hooks/{ns}/{name}", hook, Rule::Public)
        // Scraped by Prometheus as its own /metrics is: counters and addresses, never a Secret value.
        .add(M::GET, "/metrics", metrics, Rule::Public)
        .add(M::GET, "/sd/prometheus", service_discovery, Rule::Public)
        .add(M::GET, "/version", || async { Json(crate::build_info()) }, Rule::Public)
        .add(M::POST, "/api/v1/apply", apply, needs(Write, Each))
        .add(M::GET, "/api/v1/watch", watch_objects, needs(Read, Each))
        .add(M::POST, "/api/v1/shutdown", shutdown, needs(Admin, All))
        .add(M::GET, "/api/v1/events", all_events, needs(Read, Each))
        .add(M::GET, "/api/v1/tokens", list_tokens, needs(Admin, All))
        .add(M::POST, "/api/v1/tokens", create_token, needs(Admin, All))
        .add(M::DELETE, "/api/v1/tokens/{name}", revoke_token, needs(Admin, All))
        .add(M::GET, "/api/v1/whoami", whoami, needs(Read, Each))
        .add(M::GET, "/api/v1/{plural}", list, needs(Read, Each))
        // Cluster-scoped objects (ClusterIssuer): only a token bound to every namespace reads or changes them.
        .add(M::GET, "/api/v1/{plural}/{name}", get_cluster_one, needs(Read, All))
        .add(M::DELETE, "/api/v1/{plural}/{name}", delete_cluster_one, needs(Write, All))
        .add(M::GET, "/api/v1/{plural}/{name}/events", cluster_events, needs(Read, All))
        .add(M::GET, "/api/v1/namespaces/{ns}/{plural}/{name}", get_one, needs(Read, Namespace))
        .add(M::DELETE, "/api/v1/namespaces/{ns}/{plural}/{name}", delete_one, needs(Write, Namespace))
        .add(M::GET, "/api/v1/namespaces/{ns}/{plural}/{name}/events", events, needs(Read, Namespace))
        .add(M::GET, "/api/v1/namespaces/{ns}/apps/{name}/logs", logs, needs(Read, Namespace))
        .add(M::GET, "/api/v1/namespaces/{ns}/apps/{name}/revisions", revisions, needs(Read, Namespace))
        .add(M::POST, "/api/v1/namespaces/{ns}/apps/{name}/rollback", rollback, needs(Write, Namespace))
        .add(M::POST, "/api/v1/namespaces/{ns}/apps/{name}/restart", restart, needs(Write, Namespace))
        .add(M::POST, "/api/v1/namespaces/{ns}/apps/{name}/scale", scale, needs(Write, Namespace))
        .add(M::POST, "/api/v1/namespaces/{ns}/syncs/{name}/reconcile", reconcile_sync, needs(Write, Namespace))
        .add(M::POST, "/api/v1/namespaces/{ns}/certificates/{name}/renew", renew_certificate, needs(Write, Namespace))
        .add(M::POST, "/api/v1/namespaces/{ns}/apps/{name}/volumes/{volume}/sync", volume_sync, needs(Write, Namespace))
        .add(M::POST, "/api/v1/namespaces/{ns}/databases/{name}/backup", db_backup, needs(Write, Namespace))
        .add(M::POST, "/api/v1/namespaces/{ns}/databases/{name}/restore", db_restore, needs(Admin, Namespace))
        .add(M::GET, "/api/v1/incidents", incidents, needs(Read, Each))
        .add(M::POST, "/api/v1/incidents/{id}/acknowledge", acknowledge, needs(Write, Each))
        .add(M::POST, "/api/v1/incidents/{id}/resolve", resolve_incident, needs(Write, Each))
        .add(M::GET, "/api/v1/audit", audit_log, needs(Admin, All))
        .add(M::POST, "/api/v1/encryption/rotate", rotate_key, needs(Admin, All))
        .nest("/prometheus", crate::prometheus::routes())
        .merge(crate::ui::routes())
}

/// Builds the router: every route checked against its rule, every API request in the audit log.
pub fn router(state: AppState) -> Router {
    let (router, rules) = routes().finish();
    router
        .layer(middleware::from_fn_with_state((state.clone(), rules), auth))
        // Outside authentication, so that refused requests are recorded too.
        .layer(middleware::from_fn_with_state(state.audit.clone(), crate::audit::layer))
        .with_state(state)
}

fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// Who the request's bearer token is: the data directory's own token (the administrator) or a named token.
fn authenticate(state: &Shared, req: &Request) -> Option<Grant> {
    let given = req
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))?;
    grant_for_token(state, given)
}

/// Who a token is (also the dashboard's sessions, checked at each request).
pub(crate) fn grant_for_token(state: &Shared, given: &str) -> Option<Grant> {
    if constant_time_eq(given.as_bytes(), state.token.as_bytes()) {
        return Some(Grant::admin(crate::tokens::ADMIN_USER));
    }
    state.tokens.authenticate(given, Utc::now())
}

/// Authentication and authorization, before any handler: a request without a valid token gets 401 (the same
/// answer for a missing, malformed, unknown, expired or revoked one), a token without the route's right 403
/// naming what was refused. Public routes pass; a route without a rule is refused, whoever asks.
async fn auth(
    State((state, rules)): State<(AppState, Arc<Rules>)>,
    matched: Option<axum::extract::MatchedPath>,
    params: Result<axum::extract::RawPathParams, axum::extract::rejection::RawPathParamsRejection>,
    mut req: Request,
    next: Next,
) -> Response {
    let rule = matched.as_ref().and_then(|m| rules.get(req.method(), m.as_str()));
    if matches!(rule, Some(Rule::Public | Rule::Session)) {
        return next.run(req).await;
    }
    let Some(grant) = authenticate(&state, &req) else {
        return ApiError::Status(
            StatusCode::UNAUTHORIZED,
            "missing, unknown, expired or revoked token; the CLI reads it from its context (capstan config \
             get-contexts), the data directory (CAPSTAN_DATA) or CAPSTAN_TOKEN"
                .into(),
        )
        .into_response();
    };
    let identity = Identity { user: grant.user.clone(), role: grant.scope() };
    let ns = params.ok().and_then(|p| p.iter().find(|(k, _)| *k == "ns").map(|(_, v)| v.to_string()));
    let refused = match rule {
        // No route here: the fallback's 404 (or 405) follows.
        None if matched.is_none() => None,
        None => Some("this route has no authorization rule".to_string()),
        Some(rule) if crate::access::admits(&grant, rule, ns.as_deref()) => None,
        Some(_) => {
            let (verb, kind, _, name) = crate::audit::describe_request(req.method(), req.uri().path());
            let what = match (kind.is_empty(), name.is_empty()) {
                (true, _) => req.uri().path().to_string(),
                (false, true) => kind,
                (false, false) => format!("{kind} {name}"),
            };
            let place = match &ns {
                Some(ns) => format!(" in namespace {ns}"),
                None => " across all namespaces".into(),
            };
            Some(format!("{} ({}) may not {verb} {what}{place}", grant.user, grant.scope()))
        }
    };
    let mut response = match refused {
        Some(why) => ApiError::Status(StatusCode::FORBIDDEN, why).into_response(),
        None => {
            req.extensions_mut().insert(grant);
            next.run(req).await
        }
    };
    response.extensions_mut().insert(identity);
    response
}

/// The caller's own grant, as `capstan auth whoami` shows it.
async fn whoami(Extension(grant): Extension<Grant>) -> Json<Value> {
    Json(json!({ "user": grant.user, "role": grant.role, "namespace": grant.namespace }))
}

#[derive(Deserialize)]
struct TokenBody {
    name: String,
    role: String,
    #[serde(default)]
    namespace: Option<String>,
    /// How long the token works: a duration (`30d`, `12h`); absent, until revoked.
    #[serde(default)]
    ttl: Option<String>,
}

fn token_error(e: crate::tokens::TokenError) -> ApiError {
    use crate::tokens::TokenError as E;
    match e {
        E::Exists(_) | E::AlreadyRevoked(_) => ApiError::Conflict(e.to_string()),
        E::NotFound(_) => ApiError::NotFound(e.to_string()),
        E::Invalid(_) => ApiError::BadRequest(e.to_string()),
        E::Store(e) => e.into(),
    }
}

/// Rotates the store's key-encryption key while everything keeps running (`capstan secrets rotate-key`).
async fn rotate_key(State(state): State<AppState>) -> Result<Json<Value>, ApiError> {
    let _one = state.rotating.lock().await;
    let (store, source) = (state.store.clone(), state.encryption_key.clone());
    let done = tokio::task::spawn_blocking(move || crate::keys::rotate(&store, &source))
        .await
        .map_err(|e| ApiError::Status(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()))?
        .map_err(|e| ApiError::Status(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()))?;
    Ok(Json(serde_json::to_value(done).unwrap_or_default()))
}

/// Makes a named token; the answer is the only place its text is ever shown.
async fn create_token(State(state): State<AppState>, Json(body): Json<TokenBody>) -> Result<Response, ApiError> {
    let role = Role::parse(&body.role).ok_or_else(|| {
        let known: Vec<&str> = Role::ALL.iter().map(|r| r.as_str()).collect();
        ApiError::BadRequest(format!("role `{}` is not one of {}", body.role, known.join(", ")))
    })?;
    let ttl = body
        .ttl
        .as_deref()
        .map(|t| capstan_model::parse_duration(t).map_err(|e| ApiError::BadRequest(format!("ttl: {e}"))))
        .transpose()?;
    let now = Utc::now();
    let (token, record) =
        state.tokens.create(&state.store, &body.name, role, body.namespace, ttl, now).map_err(token_error)?;
    let mut shown = record.public(now);
    shown["token"] = json!(token);
    Ok((StatusCode::CREATED, Json(shown)).into_response())
}

async fn list_tokens(State(state): State<AppState>) -> Json<Value> {
    let now = Utc::now();
    Json(json!({ "items": state.tokens.list().iter().map(|r| r.public(now)).collect::<Vec<_>>() }))
}

async fn revoke_token(State(state): State<AppState>, Path(name): Path<String>) -> Result<Json<Value>, ApiError> {
    let now = Utc::now();
    let record = state.tokens.revoke(&state.store, &name, now).map_err(token_error)?;
    Ok(Json(record.public(now)))
}

#[derive(Deserialize)]
struct AuditQuery {
    /// Only lines this recent: a duration (`1h`, `30m`).
    since: Option<String>,
    user: Option<String>,
    kind: Option<String>,
}

/// The audit log's lines, oldest first, filtered by age, user and kind (a kind's name or plural).
async fn audit_log(State(state): State<AppState>, Query(q): Query<AuditQuery>) -> Result<Json<Value>, ApiError> {
    let since = match q.since.as_deref() {
        Some(s) => {
            let d = capstan_model::parse_duration(s).map_err(|e| ApiError::BadRequest(format!("since: {e}")))?;
            Some(chrono::Utc::now() - chrono::Duration::from_std(d).unwrap_or(chrono::Duration::MAX))
        }
        None => None,
    };
    let kind = q.kind.as_deref().map(|k| Kind::parse(k).map(|k| k.name().to_string()).unwrap_or_else(|| k.into()));
    let log = state.audit.clone();
    let all = tokio::task::spawn_blocking(move || log.read_all())
        .await
        .map_err(|e| ApiError::Status(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()))?
        .map_err(|e| ApiError::Status(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()))?;
    let items: Vec<_> = all
        .into_iter()
        .filter(|r| since.is_none_or(|t| r.time >= t))
        .filter(|r| q.user.as_ref().is_none_or(|u| &r.user == u))
        .filter(|r| {
            kind.as_ref().is_none_or(|k| &r.kind == k || r.objects.iter().any(|o| o.starts_with(&format!("{k}/"))))
        })
        .collect();
    Ok(Json(json!({ "items": items })))
}

#[derive(Deserialize)]
struct ApplyBody {
    objects: Vec<Value>,
}

#[derive(Deserialize)]
struct ApplyQuery {
    /// Admit and report, store nothing.
    #[serde(default, rename = "dryRun")]
    dry_run: bool,
}

/// Admits and stores a batch: 422 with every problem when it is refused (nothing is applied), 409 or 500 when the
/// store fails.
async fn apply(
    State(state): State<AppState>,
    Extension(grant): Extension<Grant>,
    Query(q): Query<ApplyQuery>,
    Json(body): Json<ApplyBody>,
) -> Result<Response, ApiError> {
    crate::redact::check_batch(&grant, &body.objects)?;
    for obj in body.objects.iter().filter(|o| o["kind"] == "Sync") {
        let key = capstan_store::key_of(obj).map_err(|e| ApiError::BadRequest(e.to_string()))?;
        sync_stays_in_grant(&state, &grant, &key, "change")?;
    }
    for obj in body.objects.iter().filter(|o| o["kind"] == "Source") {
        let key = capstan_store::key_of(obj).map_err(|e| ApiError::BadRequest(e.to_string()))?;
        source_stays_in_grant(&state, &grant, &key, "change")?;
    }
    let applied = if q.dry_run { state.apply_dry_run(body.objects) } else { state.apply(body.objects) }?;
    let touched = match q.dry_run {
        true => Vec::new(),
        false => applied.iter().map(|(k, _)| k.clone()).collect(),
    };
    let results: Vec<Value> = applied
        .into_iter()
        .map(|(k, a)| json!({"kind": k.kind, "namespace": k.namespace, "name": k.name, "action": a}))
        .collect();
    let mut response = Json(json!({ "results": results })).into_response();
    response.extensions_mut().insert(Touched(touched));
    Ok(response)
}

#[derive(Deserialize)]
struct ListQuery {
    namespace: Option<String>,
}

/// Every object of a kind (in one namespace), as far as the caller may see: a token bound to one namespace sees
/// that namespace's, and Secrets come without their values unless it may read them.
async fn list(
    State(state): State<AppState>,
    Extension(grant): Extension<Grant>,
    Path(plural): Path<String>,
    Query(q): Query<ListQuery>,
) -> Result<Response, ApiError> {
    let kind = kind_of(&plural)?;
    if !kind.namespaced() {
        // Every namespace's, whatever namespace was asked (as `kubectl get clusterissuers -n x`).
        if grant.namespace.is_some() {
            return Err(crate::redact::forbidden(
                &grant,
                &format!("list {plural} (cluster-scoped: a token bound to every namespace reads them)"),
            ));
        }
        return Ok(crate::redact::answer(list_of(state.store.list(kind.name(), None)?), false));
    }
    if let Some(ns) = q.namespace.as_deref().filter(|ns| !grant.sees(ns)) {
        return Err(crate::redact::forbidden(&grant, &format!("list {plural} in namespace {ns}")));
    }
    let mut items = state.store.list(kind.name(), q.namespace.as_deref().or(grant.namespace.as_deref()))?;
    items.retain(|o| grant.sees(&crate::redact::namespace_of(o)));
    let mut shown = false;
    for o in &mut items {
        shown |= crate::redact::object(&grant, o);
    }
    Ok(crate::redact::answer(list_of(items), shown))
}

/// `{"items": [...]}` built by moving the items in (`json!` would serialize them into a copy: a third of the time
/// of a large list answer).
fn list_of(items: Vec<Value>) -> Value {
    let mut m = serde_json::Map::with_capacity(1);
    m.insert("items".into(), Value::Array(items));
    Value::Object(m)
}

/// The object as JSON, 404 naming it when absent, 500 on a store error.
fn object_response(
    key: &ObjectKey,
    found: Result<Option<Value>, capstan_store::StoreError>,
) -> Result<Json<Value>, ApiError> {
    found?.map(Json).ok_or_else(|| ApiError::not_found(key))
}

/// The key of a namespaced object; a cluster-scoped kind is named by its own path.
fn key_from(ns: &str, plural: &str, name: &str) -> Result<ObjectKey, ApiError> {
    let kind = kind_of(plural)?;
    if !kind.namespaced() {
        return Err(ApiError::NotFound(format!(
            "{kind} is cluster-scoped: it has no namespace; ask /api/v1/{plural}/{name} (capstan get {plural} {name})"
        )));
    }
    Ok(ObjectKey::new(kind.name(), ns, name))
}

/// Refuses a token bound to one namespace to change or delete a Sync that applied objects outside it (another
/// namespace's, or cluster-scoped ones such as a ClusterIssuer): deleting it, or pointing it elsewhere, would prune
/// them, reaching past the token's namespace through the Sync.
fn sync_stays_in_grant(state: &AppState, grant: &Grant, key: &ObjectKey, verb: &str) -> Result<(), ApiError> {
    let Some(bound) = &grant.namespace else { return Ok(()) };
    let Some(stored) = state.store.get(key)? else { return Ok(()) };
    let outside: Vec<String> = stored["status"]["inventory"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|e| e["namespace"].as_str() != Some(bound.as_str()))
        .map(|e| {
            let (kind, name) = (e["kind"].as_str().unwrap_or(""), e["name"].as_str().unwrap_or(""));
            match e["namespace"].as_str().unwrap_or("") {
                "" => format!("{kind} {name}"),
                ns => format!("{kind} {ns}/{name}"),
            }
        })
        .collect();
    if outside.is_empty() {
        return Ok(());
    }
    let shown = if outside.len() > 3 {
        format!("{} and {} more", outside[..3].join(", "), outside.len() - 3)
    } else {
        outside.join(", ")
    };
    Err(crate::redact::forbidden(
        grant,
        &format!(
            "{verb} Sync {}/{}: it applied objects outside namespace {bound} ({shown}), which it would prune; a token bound to every namespace may",
            key.namespace, key.name
        ),
    ))
}

/// Refuses a token bound to one namespace to change or delete a Source that a Sync of another namespace reads:
/// pointing it elsewhere would steer what that Sync applies, outside the token's namespace.
fn source_stays_in_grant(state: &AppState, grant: &Grant, key: &ObjectKey, verb: &str) -> Result<(), ApiError> {
    let Some(bound) = &grant.namespace else { return Ok(()) };
    let readers: Vec<String> = state
        .store
        .list("Sync", None)?
        .iter()
        .filter(|s| capstan_model::resource::namespace_of(s) != bound.as_str())
        .filter(|s| {
            let r = &s["spec"]["sourceRef"];
            r["name"].as_str() == Some(key.name.as_str())
                && r["namespace"].as_str().unwrap_or(capstan_model::resource::namespace_of(s)) == key.namespace
        })
        .map(|s| {
            format!("{}/{}", capstan_model::resource::namespace_of(s), s["metadata"]["name"].as_str().unwrap_or(""))
        })
        .collect();
    if readers.is_empty() {
        return Ok(());
    }
    Err(crate::redact::forbidden(
        grant,
        &format!(
            "{verb} Source {}/{}: Sync {} of another namespace reads it; a token bound to every namespace may",
            key.namespace,
            key.name,
            readers.join(", ")
        ),
    ))
}

/// The key of a cluster-scoped object; a namespaced kind is named with its namespace.
fn cluster_key_from(plural: &str, name: &str) -> Result<ObjectKey, ApiError> {
    let kind = kind_of(plural)?;
    if kind.namespaced() {
        return Err(ApiError::NotFound(format!(
            "{kind} lives in a namespace: ask /api/v1/namespaces/NAMESPACE/{plural}/{name}"
        )));
    }
    Ok(ObjectKey::new(kind.name(), "", name))
}

async fn get_cluster_one(
    State(state): State<AppState>,
    Path((plural, name)): Path<(String, String)>,
) -> Result<Json<Value>, ApiError> {
    let key = cluster_key_from(&plural, &name)?;
    object_response(&key, state.store.get(&key))
}

async fn delete_cluster_one(
    State(state): State<AppState>,
    Path((plural, name)): Path<(String, String)>,
) -> Result<Json<Value>, ApiError> {
    let key = cluster_key_from(&plural, &name)?;
    object_response(&key, state.store.delete(&key))
}

async fn cluster_events(
    State(state): State<AppState>,
    Path((plural, name)): Path<(String, String)>,
) -> Result<Json<Value>, ApiError> {
    let key = cluster_key_from(&plural, &name)?;
    Ok(Json(json!({ "items": state.store.events(&key)? })))
}

async fn get_one(
    State(state): State<AppState>,
    Extension(grant): Extension<Grant>,
    Path((ns, plural, name)): Path<(String, String, String)>,
) -> Result<Response, ApiError> {
    let key = key_from(&ns, &plural, &name)?;
    let Json(mut obj) = object_response(&key, state.store.get(&key))?;
    let shown = crate::redact::object(&grant, &mut obj);
    Ok(crate::redact::answer(obj, shown))
}

async fn delete_one(
    State(state): State<AppState>,
    Extension(grant): Extension<Grant>,
    Path((ns, plural, name)): Path<(String, String, String)>,
) -> Result<Response, ApiError> {
    let key = key_from(&ns, &plural, &name)?;
    if key.kind == "Sync" {
        sync_stays_in_grant(&state, &grant, &key, "delete")?;
    }
    if key.kind == "Source" {
        source_stays_in_grant(&state, &grant, &key, "delete")?;
    }
    let Json(mut obj) = object_response(&key, state.store.delete(&key))?;
    let shown = crate::redact::object(&grant, &mut obj);
    Ok(crate::redact::answer(obj, shown))
}

async fn events(
    State(state): State<AppState>,
    Path((ns, plural, name)): Path<(String, String, String)>,
) -> Result<Json<Value>, ApiError> {
    let key = key_from(&ns, &plural, &name)?;
    let items = state.store.events(&key)?;
    Ok(Json(json!({ "items": items })))
}

#[derive(Deserialize)]
struct EventsQuery {
    namespace: Option<String>,
    /// After the recorded events, stream each new one as NDJSON.
    #[serde(default)]
    watch: bool,
}

/// Every object's events (of one namespace), oldest first; with `watch`, an NDJSON stream that goes on with each new
/// event, as `kubectl get events -w`.
async fn all_events(
    State(state): State<AppState>,
    Extension(grant): Extension<Grant>,
    Query(q): Query<EventsQuery>,
) -> Result<Response, ApiError> {
    if let Some(ns) = q.namespace.as_deref().filter(|ns| !grant.sees(ns)) {
        return Err(crate::redact::forbidden(&grant, &format!("list events in namespace {ns}")));
    }
    let live = q.watch.then(|| state.store.watch_events());
    let mut items = state.store.all_events(q.namespace.as_deref().or(grant.namespace.as_deref()))?;
    items.retain(|e| grant.sees(&e.involved_object.namespace));
    let Some(live) = live else { return Ok(Json(json!({ "items": items })).into_response()) };
    let (tx, rx) = mpsc::channel::<String>(256);
    let ns = q.namespace.clone();
    let ended = stream_ends(state.clone(), grant.clone());
    // An event recorded between the subscription and the listing is in both: the stream skips what was listed.
    let listed = items.iter().map(|e| e.event.last_timestamp).max();
    tokio::spawn(async move {
        for e in items {
            if tx.send(serde_json::to_string(&e).unwrap_or_default()).await.is_err() {
                return;
            }
        }
        forward(
            live,
            tx,
            ended,
            move |e: &capstan_store::ObjectEvent| {
                grant.sees(&e.involved_object.namespace)
                    && ns.as_ref().is_none_or(|n| *n == e.involved_object.namespace)
                    && listed.is_none_or(|t| e.event.last_timestamp > t)
            },
            |e| serde_json::to_string(&e).unwrap_or_default(),
        )
        .await;
    });
    Ok(([(header::CONTENT_TYPE, "application/x-ndjson")], ndjson_stream(rx)).into_response())
}

/// The most lines `tail` returns.
const MAX_TAIL: usize = 100_000;

#[derive(Deserialize)]
struct LogQuery {
    replica: Option<u32>,
    since: Option<DateTime<Utc>>,
    /// Only lines up to this time.
    until: Option<DateTime<Utc>>,
    /// Only lines whose text matches this regular expression.
    grep: Option<String>,
    tail: Option<usize>,
    #[serde(default)]
    follow: bool,
}

/// Copies what a broadcast carries into an NDJSON stream, skipping what `keep` rejects, until the client leaves. A
/// client too slow to keep up is not left with a stream that silently misses changes: it gets Kubernetes' "410
/// Gone" as a last `ERROR` record, and lists again.
async fn forward<T: Clone>(
    mut from: tokio::sync::broadcast::Receiver<T>,
    to: mpsc::Sender<String>,
    ended: impl std::future::Future<Output = Option<Value>>,
    keep: impl Fn(&T) -> bool,
    render: impl Fn(T) -> String,
) {
    tokio::pin!(ended);
    loop {
        let next = tokio::select! {
            next = from.recv() => next,
            // The stream ends with Capstan (so that no connection holds it past its shutdown), or with its token.
            last = &mut ended => {
                if let Some(last) = last {
                    let _ = to.send(last.to_string()).await;
                }
                return;
            }
        };
        match next {
            Ok(item) if keep(&item) => {
                if to.send(render(item)).await.is_err() {
                    return;
                }
            }
            Ok(_) => continue,
            Err(tokio::sync::broadcast::error::RecvError::Lagged(n)) => {
                let _ = to.send(gone(n).to_string()).await;
                return;
            }
            Err(_) => return,
        }
    }
}

/// Resolves when a stream must end: Capstan is stopping (`None`: the stream just ends), or the grant's token was
/// revoked or expired (a last `ERROR` record says so, as Kubernetes' 401 Status).
async fn stream_ends(state: AppState, grant: Grant) -> Option<Value> {
    let mut shutdown = state.shutdown.subscribe();
    tokio::select! {
        _ = shutdown.changed() => None,
        _ = state.tokens.ended(&grant) => Some(json!({
            "type": "ERROR",
            "object": {
                "kind": "Status", "apiVersion": "v1", "status": "Failure", "code": 401, "reason": "Unauthorized",
                "message": "the token of this stream was revoked or expired",
            },
        })),
    }
}

/// The record that ends a watch whose client fell `missed` changes behind, as Kubernetes ends one (410 Gone).
fn gone(missed: u64) -> Value {
    json!({
        "type": "ERROR",
        "object": {
            "kind": "Status", "apiVersion": "v1", "status": "Failure", "code": 410, "reason": "Expired",
            "message": format!("the watch fell {missed} changes behind and was ended; list again, then watch"),
        },
    })
}

fn ndjson_stream(mut rx: mpsc::Receiver<String>) -> Body {
    let stream = futures_util::stream::poll_fn(move |cx| {
        rx.poll_recv(cx).map(|o| o.map(|line| Ok::<_, std::convert::Infallible>(bytes::Bytes::from(line + "\n"))))
    });
    Body::from_stream(stream)
}

async fn logs(
    State(state): State<AppState>,
    Extension(grant): Extension<Grant>,
    Path((ns, name)): Path<(String, String)>,
    Query(q): Query<LogQuery>,
) -> Result<Response, ApiError> {
    let key = ObjectKey::new("App", &ns, &name);
    let stored = state.store.get(&key)?.is_some();
    let known = stored || state.runtime.has_logs(&key, q.replica);
    if !known {
        return Err(ApiError::not_found(&key));
    }
    let grep = q
        .grep
        .as_deref()
        .map(regex::Regex::new)
        .transpose()
        .map_err(|e| ApiError::BadRequest(format!("grep: not a regular expression: {e}")))?;
    let until = q.until;
    let keep = move |l: &capstan_runtime_local::logs::LogLine| {
        until.is_none_or(|u| l.time <= u) && grep.as_ref().is_none_or(|g| g.is_match(&l.text))
    };
    // Subscribe before reading the files so no line falls between the two. An App that is gone (only its logs are
    // left) has nothing to follow; checked again after subscribing, so a deletion in between is not missed.
    let exists = || matches!(state.store.get(&key), Ok(Some(_)));
    let follower = (q.follow && exists()).then(|| state.runtime.follow_logs(&key));
    let follower = match follower {
        Some(f) if exists() => Ok(f),
        _ if q.follow => Err(format!("App {ns}/{name} does not exist (any more): only its past lines are shown")),
        _ => Err(String::new()),
    };
    // The files are read off the async runtime a line at a time and streamed as they are read: memory holds the
    // lines a tail keeps, or a channel's worth.
    let stored = state.runtime.read_logs(&key, q.replica, q.since);
    // A tail is held whole before it is sent: it is capped.
    let tail = q.tail.map(|n| n.min(MAX_TAIL));
    let read_keep = keep.clone();
    let replica = q.replica.map(|o| format!("{name}-{o}"));
    let (tx, rx) = mpsc::channel::<String>(1024);
    let file_tx = tx.clone();
    let read = tokio::task::spawn_blocking(move || {
        // What the files held, per replica: the channel repeats those lines, and replicas write at their own pace.
        let mut last_seen: HashMap<String, DateTime<Utc>> = HashMap::new();
        let sent = {
            let kept = stored
                .inspect(|l| {
                    let t = last_seen.entry(l.replica.clone()).or_insert(l.time);
                    *t = (*t).max(l.time);
                })
                .filter(|l| read_keep(l));
            let mut send = |l: capstan_runtime_local::logs::LogLine| {
                file_tx.blocking_send(serde_json::to_string(&l).unwrap_or_default()).is_ok()
            };
            match tail {
                Some(n) => capstan_runtime_local::logs::last_n(kept, n).into_iter().all(&mut send),
                None => {
                    let mut kept = kept;
                    kept.all(send)
                }
            }
        };
        // None: the client left while the files were read.
        sent.then_some(last_seen)
    });
    let mut shutdown = state.shutdown.subscribe();
    let tokens = state.tokens.clone();
    tokio::spawn(async move {
        let token_ended = tokens.ended(&grant);
        tokio::pin!(token_ended);
        let Ok(Some(last_seen)) = read.await else { return };
        let mut follower = match follower {
            Ok(f) => f,
            Err(why) if why.is_empty() => return,
            Err(why) => {
                let _ = tx.send(json!({ "end": why }).to_string()).await;
                return;
            }
        };
        // Follow the App, not the replicas that exist now: replicas started later are followed as they write. The
        // stream ends only with a reason, sent as a last record; a client that left ends it at once.
        let end = loop {
            let next = tokio::select! {
                next = follower.recv() => next,
                _ = shutdown.changed() => break "Capstan is shutting down".to_string(),
                _ = &mut token_ended => break "the token of this stream was revoked or expired".to_string(),
                _ = tx.closed() => return,
            };
            let record = match next {
                Ok(l) => {
                    let wanted = replica.as_ref().is_none_or(|r| l.replica == *r)
                        && last_seen.get(&l.replica).is_none_or(|t| l.time > *t)
                        && keep(&l);
                    if !wanted {
                        continue;
                    }
                    serde_json::to_string(&l).unwrap_or_default()
                }
                Err(tokio::sync::broadcast::error::RecvError::Lagged(n)) => json!({ "skipped": n }).to_string(),
                Err(tokio::sync::broadcast::error::RecvError::Closed) => {
                    break format!("App {ns}/{name} was deleted");
                }
            };
            if tx.send(record).await.is_err() {
                return;
            }
        };
        let _ = tx.send(json!({ "end": end }).to_string()).await;
    });
    Ok(([(header::CONTENT_TYPE, "application/x-ndjson")], ndjson_stream(rx)).into_response())
}

#[derive(Deserialize)]
struct WatchQuery {
    kind: Option<String>,
}

/// Every change from now on (of one kind), as far as the caller may see; Secrets without their values unless it
/// may read them.
async fn watch_objects(
    State(state): State<AppState>,
    Extension(grant): Extension<Grant>,
    Query(q): Query<WatchQuery>,
) -> Result<Response, ApiError> {
    let kind = q.kind.as_deref().map(kind_of).transpose()?;
    if let (Some(k), Some(_)) = (kind.filter(|k| !k.namespaced()), &grant.namespace) {
        // As the list: refused, not an empty stream that looks like nothing happens.
        return Err(crate::redact::forbidden(
            &grant,
            &format!("watch {} (cluster-scoped: a token bound to every namespace reads them)", k.plural()),
        ));
    }
    let (tx, rx) = mpsc::channel::<String>(256);
    let shown = grant.clone();
    let ended = stream_ends(state.clone(), grant.clone());
    // A watch that may carry Secrets to a token that reads their values is a read of Secret values.
    let may_show = kind.is_none_or(|k| k.name() == "Secret") && grant.role.includes(Verb::ReadSecrets);
    let keep = move |ev: &capstan_store::WatchEvent| {
        kind.is_none_or(|k| k.name() == ev.key.kind) && grant.sees(&ev.key.namespace)
    };
    let render = move |mut ev: capstan_store::WatchEvent| {
        crate::redact::object(&shown, &mut ev.object);
        serde_json::to_string(&ev).unwrap_or_default()
    };
    tokio::spawn(forward(state.store.watch(), tx, ended, keep, render));
    let mut response = ([(header::CONTENT_TYPE, "application/x-ndjson")], ndjson_stream(rx)).into_response();
    if may_show {
        response.extensions_mut().insert(crate::audit::SecretValuesShown);
    }
    Ok(response)
}

#[derive(Deserialize)]
struct ShutdownBody {
    #[serde(default, rename = "keepWorkloads")]
    keep_workloads: bool,
}

async fn shutdown(State(state): State<AppState>, Json(body): Json<ShutdownBody>) -> Response {
    let _ = state.shutdown.send(Some(body.keep_workloads));
    Json(json!({ "stopping": true, "keepWorkloads": body.keep_workloads })).into_response()
}

async fn metrics(State(state): State<AppState>) -> Result<Response, ApiError> {
    let proxy = state.proxy.metrics_text();
    // The balancer's part ends with OpenMetrics' `# EOF`; the replicas' metrics go before it.
    let mut text = proxy.strip_suffix("# EOF\n").unwrap_or(&proxy).to_string();
    text.push_str(&state.queries.metrics_text());
    text.push_str(&crate::discovery::replica_metrics(&state.store, &state.runtime)?);
    text.push_str("# EOF\n");
    Ok(([(header::CONTENT_TYPE, "text/plain; version=0.0.4; charset=utf-8")], text).into_response())
}

/// Prometheus http_sd: every replica with `spec.metrics` as a target group.
async fn service_discovery(State(state): State<AppState>) -> Result<Response, ApiError> {
    Ok(Json(crate::discovery::targets(&state.store, &state.runtime)?).into_response())
}

/// An App as stored, with its resourceVersion.
fn load_app(state: &Shared, ns: &str, name: &str) -> Result<(ObjectKey, Value), ApiError> {
    let key = ObjectKey::new("App", ns, name);
    match state.store.get(&key)? {
        Some(o) => Ok((key, o)),
        None => Err(ApiError::not_found(&key)),
    }
}

async fn revisions(
    State(state): State<AppState>,
    Path((ns, name)): Path<(String, String)>,
) -> Result<Json<Value>, ApiError> {
    let (key, obj) = load_app(&state, &ns, &name)?;
    let history = capstan_engine::revision_history(&state.store, &key)?;
    Ok(Json(json!({
        "items": history,
        "revision": obj["status"]["revision"],
        "currentRevision": obj["status"]["currentRevision"],
        "updateRevision": obj["status"]["updateRevision"],
    })))
}

#[derive(Deserialize)]
struct RollbackBody {
    #[serde(default, rename = "toRevision")]
    to_revision: Option<String>,
}

/// Puts an earlier revision's spec back into the App, as `kubectl rollout undo` does.
async fn rollback(
    State(state): State<AppState>,
    Path((ns, name)): Path<(String, String)>,
    Json(body): Json<RollbackBody>,
) -> Result<Json<Value>, ApiError> {
    rollback_app(&state, &ns, &name, body.to_revision)
}

/// Puts revision `to` (the one before the running one when `None`) back into the App (also the dashboard's button).
pub(crate) fn rollback_app(state: &Shared, ns: &str, name: &str, to: Option<String>) -> Result<Json<Value>, ApiError> {
    let body = RollbackBody { to_revision: to };
    change_app(state, ns, name, "the old revision no longer passes admission", |key, obj| {
        let history = capstan_engine::revision_history(&state.store, key)?;
        let now = obj["status"]["revision"].as_str().unwrap_or_default().to_string();
        let target = match &body.to_revision {
            Some(r) => history.iter().find(|h| &h.revision == r),
            None => history.iter().rev().find(|h| h.revision != now),
        };
        let Some(target) = target else {
            let known: Vec<&str> = history.iter().map(|h| h.revision.as_str()).collect();
            return Err(ApiError::NotFound(match &body.to_revision {
                Some(r) => format!("revision {r} is not in the history of App {name}; known: {}", known.join(", ")),
                None => format!("App {name} has no earlier revision to go back to"),
            }));
        };
        obj["spec"] = target.spec.clone();
        let annotations = &mut obj["metadata"]["annotations"];
        if !annotations.is_object() {
            *annotations = json!({});
        }
        match &target.restarted_at {
            Some(t) => annotations[capstan_model::RESTARTED_AT_ANNOTATION] = json!(t),
            None => {
                if let Some(m) = annotations.as_object_mut() {
                    m.remove(capstan_model::RESTARTED_AT_ANNOTATION);
                }
            }
        }
        Ok(json!({ "revision": target.revision }))
    })
}

/// Replaces every replica in order, as `kubectl rollout restart` does.
async fn restart(
    State(state): State<AppState>,
    Path((ns, name)): Path<(String, String)>,
) -> Result<Json<Value>, ApiError> {
    restart_app(&state, &ns, &name)
}

/// Asks for every replica of an App to be replaced (also the dashboard's button).
pub(crate) fn restart_app(state: &Shared, ns: &str, name: &str) -> Result<Json<Value>, ApiError> {
    let now = chrono::Utc::now().to_rfc3339();
    change_app(state, ns, name, "the App no longer passes admission", |_, obj| {
        if !obj["metadata"]["annotations"].is_object() {
            obj["metadata"]["annotations"] = json!({});
        }
        obj["metadata"]["annotations"][capstan_model::RESTARTED_AT_ANNOTATION] = json!(now);
        Ok(json!({ "restartedAt": now }))
    })
}

/// Reads an App, changes it and applies it back with the resourceVersion it read; when something else changed it
/// in between (a status update, an apply), it is read again and the change made again, so nothing is overwritten.
fn change_app(
    state: &Shared,
    ns: &str,
    name: &str,
    refused: &str,
    change: impl Fn(&ObjectKey, &mut Value) -> Result<Value, ApiError>,
) -> Result<Json<Value>, ApiError> {
    for _ in 0..8 {
        let (key, mut obj) = load_app(state, ns, name)?;
        let ok = change(&key, &mut obj)?;
        match state.apply(vec![obj]) {
            Ok(_) => return Ok(Json(ok)),
            Err(ApplyError::Store(capstan_store::StoreError::Conflict { .. })) => continue,
            Err(e) => return Err(ApiError::refused(e, refused)),
        }
    }
    Err(ApiError::Conflict(format!("App {ns}/{name} kept changing while this change was made; try again")))
}

#[derive(Deserialize)]
struct ScaleBody {
    replicas: i64,
}

/// `kubectl scale`: sets `spec.replicas`, admitted like any change.
async fn scale(
    State(state): State<AppState>,
    Path((ns, name)): Path<(String, String)>,
    Json(body): Json<ScaleBody>,
) -> Result<Json<Value>, ApiError> {
    change_app(&state, &ns, &name, "the App was not scaled", |_, obj| {
        let from = obj["spec"]["replicas"].clone();
        obj["spec"]["replicas"] = json!(body.replicas);
        Ok(json!({ "replicas": body.replicas, "previous": from }))
    })
}

async fn reconcile_sync(
    State(state): State<AppState>,
    Path((ns, name)): Path<(String, String)>,
) -> Result<Response, ApiError> {
    let key = ObjectKey::new("Sync", &ns, &name);
    match state.store.get(&key)? {
        // A suspended Sync applies nothing: say so at once rather than let the caller wait for a reconcile.
        Some(o) if o["spec"]["suspend"] == true => Err(ApiError::Conflict(format!(
            "sync/{name} is suspended: nothing is applied until spec.suspend is false (set it in the Sync's \
             manifest and apply it)"
        ))),
        Some(_) => {
            let token = state.gitops.request(key);
            Ok((StatusCode::ACCEPTED, Json(json!({ "token": token }))).into_response())
        }
        None => Err(ApiError::not_found(&key)),
    }
}

/// `capstan certificate renew`: as cmctl does, the Certificate's `Issuing` condition set True with reason
/// `ManuallyTriggered`, which its controller answers with a new issuance.
async fn renew_certificate(
    State(state): State<AppState>,
    Path((ns, name)): Path<(String, String)>,
) -> Result<Json<Value>, ApiError> {
    use capstan_certificates::controller::{ISSUING, MANUALLY_TRIGGERED};
    use capstan_model::certificate::CertificateStatus;
    use capstan_model::meta::{find_condition, set_condition, Condition, ConditionStatus};
    let key = ObjectKey::new("Certificate", &ns, &name);
    let Some(obj) = state.store.get(&key)? else { return Err(ApiError::not_found(&key)) };
    let mut status: CertificateStatus = serde_json::from_value(obj["status"].clone()).unwrap_or_default();
    if find_condition(&status.conditions, ISSUING).is_some_and(|c| c.status == ConditionStatus::True) {
        return Err(ApiError::Conflict(format!("certificate/{name} is already being issued")));
    }
    set_condition(
        &mut status.conditions,
        Condition {
            type_: ISSUING.into(),
            status: ConditionStatus::True,
            reason: MANUALLY_TRIGGERED.into(),
            message: "Certificate re-issuance manually triggered".into(),
            last_transition_time: Utc::now(),
            observed_generation: obj["metadata"]["generation"].as_i64(),
        },
    );
    let status = serde_json::to_value(&status)
        .map_err(|e| ApiError::Status(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()))?;
    state.store.update_status(&key, status.clone())?;
    Ok(Json(json!({"kind": "Certificate", "name": name, "namespace": ns, "status": status})))
}

/// A push webhook for one Sync: verified against the token in the Secret its `spec.webhook` names, then the Sync's
/// Source is fetched and the Sync applied at once.
async fn hook(
    State(state): State<AppState>,
    Path((ns, name)): Path<(String, String)>,
    headers: axum::http::HeaderMap,
    body: axum::body::Body,
) -> Result<Response, ApiError> {
    use capstan_gitops::webhook::{parse_push, verify};
    // No token guards this path: a body that trickles in is cut off, so that slow senders cannot hold the
    // listener's connections busy.
    let body = match tokio::time::timeout(HOOK_BODY_TIMEOUT, axum::body::to_bytes(body, HOOK_BODY_LIMIT)).await {
        Ok(Ok(b)) => b,
        Ok(Err(_)) => {
            return Err(ApiError::Status(StatusCode::PAYLOAD_TOO_LARGE, "the delivery is larger than 2 MiB".into()))
        }
        Err(_) => {
            return Err(ApiError::Status(
                StatusCode::REQUEST_TIMEOUT,
                "the delivery's body did not arrive in time".into(),
            ))
        }
    };
    use capstan_model::gitops::{Secret, Sync};
    let key = ObjectKey::new("Sync", &ns, &name);
    // A store that cannot be read answers 503 (the sender retries), never "no such receiver".
    let unavailable = |e: capstan_store::StoreError| ApiError::Unavailable(e.to_string());
    let sync: Option<Sync> = state.store.get(&key).map_err(unavailable)?.and_then(|v| serde_json::from_value(v).ok());
    // Unknown Syncs, Syncs without a webhook, a receiver without its secret and a bad signature all get the same
    // answer: nothing to probe for from outside. The Sync's events tell its owner which it was.
    let not_found = || ApiError::NotFound("no webhook receiver here accepts this request".into());
    let Some(sync) = sync else { return Err(not_found()) };
    let Some(hook) = sync.spec.webhook else { return Err(not_found()) };
    let secret_key = ObjectKey::new("Secret", &ns, &hook.secret_ref.name);
    let secret: Option<Secret> =
        state.store.get(&secret_key).map_err(unavailable)?.and_then(|v| serde_json::from_value(v).ok());
    let Some(token) = secret.and_then(|s| s.spec.value("token")) else {
        let why = format!("Secret {ns}/{} has no key `token`", hook.secret_ref.name);
        tracing::warn!(sync = %key, "webhook refused: {why}");
        refused(&state, &key, why);
        return Err(not_found());
    };
    let header = |n: &str| headers.get(n).and_then(|v| v.to_str().ok());
    match verify(header, &body, &token) {
        Err(e) => {
            refused(&state, &key, e.to_string());
            Err(not_found())
        }
        Ok(provider) => {
            if matches!(header("x-github-event"), Some("ping")) || matches!(header("x-gitea-event"), Some("ping")) {
                return Ok(Json(json!({ "accepted": false, "reason": "ping" })).into_response());
            }
            // A delivery accepted before (by its sender's id or by its signed body) starts nothing again.
            let ids = capstan_gitops::webhook::delivery_ids(header, &body);
            let replayed = {
                let mut all = state.webhook_deliveries.lock().unwrap_or_else(|p| p.into_inner());
                all.entry(key.clone()).or_default().replayed(&ids, std::time::Instant::now())
            };
            if replayed {
                return Ok(
                    Json(json!({ "accepted": false, "reason": "this delivery was already accepted" })).into_response()
                );
            }
            let push = parse_push(&body);
            let token = state.gitops.request(key.clone());
            let msg = format!(
                "{provider:?} push{}{}; reconciling now",
                push.git_ref.map(|r| format!(" to {r}")).unwrap_or_default(),
                push.after.map(|a| format!(" ({})", short(&a, 12))).unwrap_or_default()
            );
            let store = state.store.clone();
            let event_key = key.clone();
            tokio::task::spawn_blocking(move || {
                let _ = store.record_event(&event_key, capstan_model::EventType::Normal, "WebhookReceived", &msg);
            });
            Ok((StatusCode::ACCEPTED, Json(json!({ "accepted": true, "token": token }))).into_response())
        }
    }
}

/// How long a webhook delivery's body may take to arrive, and how large it may be.
const HOOK_BODY_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(10);
const HOOK_BODY_LIMIT: usize = 2 << 20;

/// How often a Sync's refused webhook deliveries are recorded as an event: a flood of bad signatures writes one
/// event per Sync per interval, off the async workers, not one store write per request.
const REFUSAL_EVENT_INTERVAL: std::time::Duration = std::time::Duration::from_secs(10);

fn refused(state: &AppState, key: &ObjectKey, why: String) {
    {
        let mut map = state.webhook_refusals.lock().unwrap_or_else(|p| p.into_inner());
        let now = std::time::Instant::now();
        if map.get(key).is_some_and(|t| now.duration_since(*t) < REFUSAL_EVENT_INTERVAL) {
            return;
        }
        map.retain(|_, t| now.duration_since(*t) < REFUSAL_EVENT_INTERVAL);
        map.insert(key.clone(), now);
    }
    let (store, key) = (state.store.clone(), key.clone());
    tokio::task::spawn_blocking(move || {
        let _ = store.record_event(&key, capstan_model::EventType::Warning, "WebhookRefused", &why);
    });
}

/// The first `n` characters of a text someone else sent (never cut inside a character).
fn short(text: &str, n: usize) -> String {
    text.chars().take(n).collect()
}

#[derive(Deserialize)]
struct VolumeSyncBody {
    from: u32,
    to: u32,
}

async fn volume_sync(
    State(state): State<AppState>,
    Path((ns, name, volume)): Path<(String, String, String)>,
    Json(body): Json<VolumeSyncBody>,
) -> Result<Json<crate::volume_sync::SyncReport>, ApiError> {
    let key = ObjectKey::new("App", &ns, &name);
    // A task of its own: a client that goes away must not cancel a sync half-way (the target would stay held).
    let task =
        tokio::spawn(async move { crate::volume_sync::sync_volume(&state, &key, &volume, body.from, body.to).await });
    let report = task
        .await
        .map_err(|e| ApiError::Status(StatusCode::INTERNAL_SERVER_ERROR, format!("the sync task failed: {e}")))??;
    Ok(Json(report))
}

/// Dumps a Database now (into its server's backups volume), keeping as many dumps as its spec says (7 by default).
async fn db_backup(
    State(state): State<AppState>,
    Path((ns, name)): Path<(String, String)>,
) -> Result<Response, ApiError> {
    let key = ObjectKey::new("Database", &ns, &name);
    let store = state.store.clone();
    let done = tokio::task::spawn_blocking(move || {
        // The retention comes from the spec; a spec that cannot be read prunes nothing (the store's error).
        let db = store.get(&key).map_err(ApiError::from)?;
        let keep = db.and_then(|d| d["spec"]["backup"]["keep"].as_u64()).unwrap_or(7) as u32;
        // The Database's own refusals say what is missing (409).
        let t = capstan_database::backup::target(&store, &key)?;
        Ok::<_, ApiError>(capstan_database::backup::dump(&t, &key.name, keep)?)
    })
    .await;
    match done {
        Ok(Ok(info)) => {
            let _ = state.store.record_event(
                &ObjectKey::new("Database", &ns, &name),
                capstan_model::EventType::Normal,
                "BackedUp",
                &format!("{} ({} bytes), on request", info.file, info.bytes),
            );
            Ok(Json(info).into_response())
        }
        Ok(Err(e)) => Err(e),
        Err(e) => Err(ApiError::Status(StatusCode::INTERNAL_SERVER_ERROR, e.to_string())),
    }
}

#[derive(Deserialize, Default)]
struct RestoreBody {
    file: Option<String>,
}

/// Restores a dump (the newest unless `file` names one) over the Database.
async fn db_restore(
    State(state): State<AppState>,
    Path((ns, name)): Path<(String, String)>,
    body: Option<Json<RestoreBody>>,
) -> Result<Response, ApiError> {
    let key = ObjectKey::new("Database", &ns, &name);
    let file = body.and_then(|b| b.0.file);
    let store = state.store.clone();
    let k = key.clone();
    let done = tokio::task::spawn_blocking(move || {
        let t = capstan_database::backup::target(&store, &k)?;
        capstan_database::backup::restore(&t, file.as_deref())
    })
    .await;
    match done {
        Ok(Ok(info)) => {
            // Asked for and done: Normal, as Kubernetes records what went as intended.
            let _ = state.store.record_event(
                &key,
                capstan_model::EventType::Normal,
                "Restored",
                &format!("restored {}", info.file),
            );
            Ok(Json(info).into_response())
        }
        Ok(Err(e)) => {
            let _ = state.store.record_event(&key, capstan_model::EventType::Warning, "RestoreFailed", &e.to_string());
            Err(e.into())
        }
        Err(e) => Err(ApiError::Status(StatusCode::INTERNAL_SERVER_ERROR, e.to_string())),
    }
}

#[derive(Deserialize)]
struct IncidentQuery {
    #[serde(default)]
    all: bool,
}

/// Incidents, as far as the caller may see: those of escalation policies in its namespaces.
async fn incidents(
    State(state): State<AppState>,
    Extension(grant): Extension<Grant>,
    Query(q): Query<IncidentQuery>,
) -> Response {
    let mut all = state.alerting.incidents_json(q.all);
    if let Some(items) = all["items"].as_array_mut() {
        items.retain(|i| grant.sees(&crate::alerts::namespace_of_policy(i["policy"].as_str().unwrap_or_default())));
    }
    Json(all).into_response()
}

/// An incident the caller may act on: one of its namespaces' (an unknown one is the handler's 404).
fn incident_in_reach(state: &Shared, grant: &Grant, id: &str, verb: &str) -> Result<(), ApiError> {
    match state.alerting.incident_namespace(id) {
        Some(ns) if !grant.allows(Verb::Write, Some(&ns)) => {
            Err(crate::redact::forbidden(grant, &format!("{verb} incident {id} in namespace {ns}")))
        }
        _ => Ok(()),
    }
}

#[derive(Deserialize, Default)]
struct Who {
    #[serde(default)]
    by: Option<String>,
}

/// Who acknowledged or resolved. The data directory's token is shared by whoever is at the machine, so the name
/// its client gives (`--by`, or $USER) is taken; a named token is its own identity, and a different name given
/// with it is kept beside it.
fn acted_by(grant: &Grant, body: Option<Json<Who>>) -> String {
    match body.and_then(|b| b.0.by) {
        Some(by) if grant.user == crate::tokens::ADMIN_USER => by,
        Some(by) if by != grant.user => format!("{by} (token {})", grant.user),
        _ => grant.user.clone(),
    }
}

fn manual(outcome: crate::alerts::ManualOutcome, id: &str, verb: &str) -> Result<Json<Value>, ApiError> {
    use crate::alerts::ManualOutcome;
    match outcome {
        ManualOutcome::Done => Ok(Json(json!({ "id": id, "result": verb }))),
        ManualOutcome::NotFound => {
            Err(ApiError::NotFound(format!("incident {id} not found; `capstan alerts --all` lists them")))
        }
        ManualOutcome::NoChange(state) => Err(ApiError::Conflict(format!("incident {id} is already {state}"))),
        ManualOutcome::Unavailable(e) => Err(ApiError::Unavailable(e)),
    }
}

async fn acknowledge(
    State(state): State<AppState>,
    Extension(grant): Extension<Grant>,
    Path(id): Path<String>,
    body: Option<Json<Who>>,
) -> Result<Json<Value>, ApiError> {
    incident_in_reach(&state, &grant, &id, "acknowledge")?;
    let who = acted_by(&grant, body);
    manual(crate::alerts::acknowledge(&state.store, &state.alerting, &id, &who), &id, "acknowledged")
}

async fn resolve_incident(
    State(state): State<AppState>,
    Extension(grant): Extension<Grant>,
    Path(id): Path<String>,
    body: Option<Json<Who>>,
) -> Result<Json<Value>, ApiError> {
    incident_in_reach(&state, &grant, &id, "resolve")?;
    let who = acted_by(&grant, body);
    manual(crate::alerts::resolve(&state.store, &state.alerting, &id, &who), &id, "resolved")
}

#[cfg(test)]
mod tests {
    /// A push's `after` is whatever the sender wrote: a multi-byte character at byte 12 panicked the handler.
    #[test]
    fn short_never_cuts_a_character() {
        assert_eq!(super::short("0123456789abcdef", 12), "0123456789ab");
        assert_eq!(super::short("01234567890é", 12), "01234567890é");
        assert_eq!(super::short("ééééééééééééé", 12).chars().count(), 12);
        assert_eq!(super::short("abc", 12), "abc");
    }
}
