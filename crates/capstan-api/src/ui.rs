//! The dashboard's server side, at `/ui`: sessions (a token exchanged for an HttpOnly, SameSite=Strict cookie, the
//! token checked again at every request so that a revoked or expired one ends the session), the pages filled from the
//! store as far as the session's grant may see, actions that check the Origin and the role and are audited, and one
//! live stream (server-sent events) per tab that says what changed. The pages themselves are `capstan_ui::pages`.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::extract::{Form, Path, Query, Request, State};
use axum::http::{header, HeaderMap, HeaderValue, Method, StatusCode};
use axum::response::{IntoResponse, Redirect, Response};
use capstan_model::{Kind, ObjectKey};
use capstan_ui::pages::{self, AppView, EventLine, Filter, IncidentLine, Overview, Revision, Row, Viewer};
use capstan_ui::{health_of, Health};
use chrono::{DateTime, Utc};
use serde::Deserialize;
use serde_json::{json, Value};

use crate::access::{Grant, Routes, Rule, Verb};
use crate::audit::Identity;
use crate::error::ApiError;
use crate::plane::Shared;

type AppState = Arc<Shared>;

/// The session cookie's name.
pub const COOKIE: &str = "capstan_ui";
/// How long a session lasts (the token's own expiry, or its revocation, ends it sooner).
const SESSION_TTL: chrono::Duration = chrono::Duration::hours(12);
/// Rows a page of the overview shows.
const PAGE_SIZE: usize = 200;
/// The events the overview lists.
const RECENT_EVENTS: usize = 15;
/// How often the live stream tells what changed (at most).
const COALESCE: Duration = Duration::from_millis(500);
/// Quiet ticks before a keep-alive: 15 s.
const KEEPALIVE_TICKS: u32 = 30;
/// How often an open stream checks that its session (and the token behind it) still holds.
const SESSION_CHECK: Duration = Duration::from_secs(15);

/// Every route of the dashboard: the sign-in and the assets are public; the rest read their session from the cookie
/// (a page without one goes to the sign-in, a fragment, an action or the stream gets 401).
pub fn routes() -> Routes<AppState> {
    use Method as M;
    Routes::default()
        .add(M::GET, "/ui/login", login_page, Rule::Public)
        .add(M::POST, "/ui/login", login, Rule::Public)
        .add(M::POST, "/ui/logout", logout, Rule::Public)
        .add(M::GET, "/ui/assets/{file}", asset, Rule::Public)
        .add(M::GET, "/ui", overview, Rule::Session)
        .add(M::GET, "/ui/stream", stream, Rule::Session)
        .add(M::GET, "/ui/session", session, Rule::Session)
        .add(M::GET, "/ui/fragments/overview", overview_fragment, Rule::Session)
        .add(M::GET, "/ui/apps/{ns}/{name}", app_page, Rule::Session)
        .add(M::GET, "/ui/fragments/apps/{ns}/{name}", app_fragment, Rule::Session)
        .add(M::POST, "/ui/apps/{ns}/{name}/restart", restart, Rule::Session)
        .add(M::POST, "/ui/apps/{ns}/{name}/rollback", rollback, Rule::Session)
}

/// The sessions of signed-in browsers, in memory: a restart of Capstan signs everyone out.
#[derive(Default)]
pub struct Sessions(Mutex<HashMap<String, (String, DateTime<Utc>)>>);

/// The most sessions one token holds at once (its oldest goes when another is opened), and all tokens together.
const SESSIONS_PER_TOKEN: usize = 16;
const SESSIONS_IN_ALL: usize = 10_000;

impl Sessions {
    fn open(&self, token: String, now: DateTime<Utc>) -> String {
        let mut bytes = [0u8; 32];
        // The system's generator; a failure leaves no usable session id, so none is made.
        if ring::rand::SecureRandom::fill(&ring::rand::SystemRandom::new(), &mut bytes).is_err() {
            return String::new();
        }
        let id: String = bytes.iter().map(|b| format!("{b:02x}")).collect();
        let mut all = self.0.lock().unwrap_or_else(|p| p.into_inner());
        all.retain(|_, (_, until)| *until > now);
        // A token signing in again and again (a script, or links that arrive without the Strict cookie) keeps
        // its newest sessions only; all tokens together are bounded too.
        let mut same: Vec<(String, DateTime<Utc>)> =
            all.iter().filter(|(_, (t, _))| *t == token).map(|(id, (_, until))| (id.clone(), *until)).collect();
        same.sort_by_key(|(_, until)| *until);
        for (old, _) in same.iter().take((same.len() + 1).saturating_sub(SESSIONS_PER_TOKEN)) {
            all.remove(old);
        }
        if all.len() >= SESSIONS_IN_ALL {
            if let Some(oldest) = all.iter().min_by_key(|(_, (_, until))| *until).map(|(id, _)| id.clone()) {
                all.remove(&oldest);
            }
        }
        all.insert(id.clone(), (token, now + SESSION_TTL));
        id
    }

    fn token(&self, id: &str, now: DateTime<Utc>) -> Option<String> {
        let all = self.0.lock().unwrap_or_else(|p| p.into_inner());
        all.get(id).filter(|(_, until)| *until > now).map(|(t, _)| t.clone())
    }

    fn close(&self, id: &str) {
        self.0.lock().unwrap_or_else(|p| p.into_inner()).remove(id);
    }
}

fn cookie_of(headers: &HeaderMap) -> Option<String> {
    headers.get_all(header::COOKIE).iter().filter_map(|v| v.to_str().ok()).flat_map(|v| v.split(';')).find_map(|c| {
        let (k, v) = c.trim().split_once('=')?;
        (k == COOKIE && !v.is_empty()).then(|| v.to_string())
    })
}

/// The session's grant, its token checked as the API checks a bearer token.
fn grant(state: &Shared, headers: &HeaderMap) -> Option<Grant> {
    let token = state.ui_sessions.token(&cookie_of(headers)?, Utc::now())?;
    crate::server::grant_for_token(state, &token)
}

/// Headers every dashboard answer carries: scripts, styles and everything else from Capstan only, no framing.
fn secured(mut r: Response) -> Response {
    let h = r.headers_mut();
    h.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(
            "default-src 'self'; frame-ancestors 'none'; base-uri 'none'; form-action 'self'; object-src 'none'",
        ),
    );
    h.insert(header::X_CONTENT_TYPE_OPTIONS, HeaderValue::from_static("nosniff"));
    h.insert(header::REFERRER_POLICY, HeaderValue::from_static("same-origin"));
    if !h.contains_key(header::CACHE_CONTROL) {
        h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    }
    r
}

fn html(status: StatusCode, markup: maud::Markup) -> Response {
    secured((status, [(header::CONTENT_TYPE, "text/html; charset=utf-8")], markup.into_string()).into_response())
}

/// The answer records who asked, for the audit log.
fn as_user(mut r: Response, g: &Grant) -> Response {
    r.extensions_mut().insert(Identity { user: g.user.clone(), role: g.scope() });
    r
}

/// Where a page without a session goes: the sign-in, and back here afterwards.
fn to_login(uri: &axum::http::Uri) -> Response {
    let next = uri.path_and_query().map_or("/ui", |p| p.as_str());
    secured(Redirect::to(&format!("/ui/login?next={}", encode(next))).into_response())
}

fn unauthorized() -> Response {
    secured((StatusCode::UNAUTHORIZED, "the session ended: sign in again").into_response())
}

fn encode(v: &str) -> String {
    v.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' | b'/' => (b as char).to_string(),
            _ => format!("%{b:02X}"),
        })
        .collect()
}

/// A `next` that stays on the dashboard (never another site: `//host` or a scheme).
fn safe_next(next: Option<&str>) -> String {
    match next {
        Some(n) if n.starts_with("/ui") && !n.contains('\\') && !n.chars().any(char::is_control) => n.to_string(),
        _ => "/ui".into(),
    }
}

fn viewer(g: &Grant) -> (String, String, bool) {
    (g.user.clone(), g.scope(), g.role.includes(Verb::Write))
}

#[derive(Deserialize, Default)]
struct NextQuery {
    next: Option<String>,
}

async fn login_page(Query(q): Query<NextQuery>) -> Response {
    html(StatusCode::OK, pages::login(None, &safe_next(q.next.as_deref())))
}

#[derive(Deserialize)]
struct LoginForm {
    token: String,
    next: Option<String>,
}

async fn login(State(state): State<AppState>, headers: HeaderMap, Form(f): Form<LoginForm>) -> Response {
    let next = safe_next(f.next.as_deref());
    if let Err(r) = same_origin(&headers) {
        return *r;
    }
    let token = f.token.trim().to_string();
    let Some(g) = crate::server::grant_for_token(&state, &token) else {
        let why = "That token is not valid: missing, unknown, expired or revoked.";
        return html(StatusCode::UNAUTHORIZED, pages::login(Some(why), &next));
    };
    if let Some(old) = cookie_of(&headers) {
        state.ui_sessions.close(&old);
    }
    let id = state.ui_sessions.open(token, Utc::now());
    if id.is_empty() {
        return html(StatusCode::INTERNAL_SERVER_ERROR, pages::login(Some("No session could be made."), &next));
    }
    let secure = if state.secure_cookies { "; Secure" } else { "" };
    let cookie =
        format!("{COOKIE}={id}; Path=/ui; HttpOnly; SameSite=Strict; Max-Age={}{secure}", SESSION_TTL.num_seconds());
    let mut r = secured(Redirect::to(&next).into_response());
    if let Ok(v) = HeaderValue::from_str(&cookie) {
        r.headers_mut().insert(header::SET_COOKIE, v);
    }
    as_user(r, &g)
}

/// Signs out (no Origin check: the SameSite=Strict cookie is not sent by another site's form, and signing out is
/// all such a form could do).
async fn logout(State(state): State<AppState>, headers: HeaderMap) -> Response {
    if let Some(id) = cookie_of(&headers) {
        state.ui_sessions.close(&id);
    }
    let mut r = secured(Redirect::to("/ui/login").into_response());
    let gone = format!("{COOKIE}=; Path=/ui; HttpOnly; SameSite=Strict; Max-Age=0");
    if let Ok(v) = HeaderValue::from_str(&gone) {
        r.headers_mut().insert(header::SET_COOKIE, v);
    }
    r
}

/// `host[:port]` as (lowercase host, port), the port defaulting to the scheme's.
fn authority(text: &str, default_port: u16) -> Option<(String, u16)> {
    let text = text.trim();
    let (host, port) = match text.rsplit_once(':') {
        // An IPv6 address is bracketed: its colons are not a port's.
        Some((h, p)) if !p.contains(']') && !p.is_empty() => (h, p.parse().ok()?),
        _ => (text, default_port),
    };
    (!host.is_empty()).then(|| (host.to_ascii_lowercase(), port))
}

/// A change asked by a page of this server, not by another site: its Origin (browsers send it with every POST)
/// names this server's host and port, as the request's Host says (the port defaulting to the scheme's). Behind a
/// proxy that rewrites Host, the proxy must pass it through (nginx: `proxy_set_header Host $host`).
fn same_origin(headers: &HeaderMap) -> Result<(), Box<Response>> {
    let host = headers.get(header::HOST).and_then(|h| h.to_str().ok()).unwrap_or("");
    let origin = headers.get(header::ORIGIN).and_then(|h| h.to_str().ok()).unwrap_or("");
    let theirs = origin.split_once("://").and_then(|(scheme, rest)| {
        let default = if scheme.eq_ignore_ascii_case("https") { 443 } else { 80 };
        Some((authority(rest, default)?, default))
    });
    if let Some((theirs, default)) = theirs {
        if authority(host, default).is_some_and(|ours| ours == theirs) {
            return Ok(());
        }
    }
    Err(Box::new(secured(
        (StatusCode::FORBIDDEN, format!("refused: the request's Origin ({origin}) is not this server ({host})"))
            .into_response(),
    )))
}

async fn asset(Path(file): Path<String>) -> Response {
    // The vendored files carry their version in their name and never change; Capstan's own are revalidated, since
    // their name changes only with Capstan's version.
    let cache = if file.starts_with("capstan-") { "no-cache" } else { "public, max-age=31536000, immutable" };
    match capstan_ui::assets::asset(&file) {
        Some(a) => {
            secured(([(header::CONTENT_TYPE, a.content_type), (header::CACHE_CONTROL, cache)], a.bytes).into_response())
        }
        None => secured((StatusCode::NOT_FOUND, "no such asset").into_response()),
    }
}

fn age(since: Option<DateTime<Utc>>, now: DateTime<Utc>) -> String {
    since.map_or_else(|| "—".into(), |t| capstan_model::short_age(t, now))
}

fn time_of(v: &Value) -> Option<DateTime<Utc>> {
    v.as_str().and_then(|s| DateTime::parse_from_rfc3339(s).ok()).map(|t| t.with_timezone(&Utc))
}

/// Every object the grant may see, as overview rows (all kinds).
fn rows(state: &Shared, g: &Grant, now: DateTime<Utc>) -> Result<Vec<Row>, ApiError> {
    let mut out = Vec::new();
    for kind in Kind::ALL {
        if !kind.namespaced() && g.namespace.is_some() {
            continue;
        }
        let ns = if kind.namespaced() { g.namespace.as_deref() } else { None };
        for o in state.store.list(kind.name(), ns)? {
            let namespace = capstan_model::resource::namespace_of(&o).to_string();
            if kind.namespaced() && !g.sees(&namespace) {
                continue;
            }
            let name = o["metadata"]["name"].as_str().unwrap_or_default().to_string();
            let (health, message) = health_of(&o);
            let link = (*kind == Kind::App).then(|| format!("/ui/apps/{}/{}", encode(&namespace), encode(&name)));
            out.push(Row {
                kind: kind.name().to_string(),
                namespace,
                name,
                health,
                message,
                age: age(time_of(&o["metadata"]["creationTimestamp"]), now),
                link,
            });
        }
    }
    Ok(out)
}

/// The newest `limit` events the grant may see (of one object, or all): a read error is an error, never "no events".
fn events(
    state: &Shared,
    g: &Grant,
    only: Option<&ObjectKey>,
    limit: usize,
    now: DateTime<Utc>,
) -> Result<Vec<EventLine>, ApiError> {
    let all = match only {
        Some(key) => state
            .store
            .events(key)?
            .into_iter()
            .map(|event| capstan_store::ObjectEvent { involved_object: key.clone(), event })
            .collect(),
        None => state.store.all_events(g.namespace.as_deref())?,
    };
    let mut seen: Vec<_> = all.into_iter().filter(|e| g.sees(&e.involved_object.namespace)).collect();
    seen.sort_by_key(|e| std::cmp::Reverse(e.event.last_timestamp));
    Ok(seen
        .into_iter()
        .take(limit)
        .map(|e| EventLine {
            age: age(Some(e.event.last_timestamp), now),
            type_: format!("{:?}", e.event.type_),
            object: e.involved_object.to_string(),
            reason: e.event.reason,
            message: e.event.message,
        })
        .collect())
}

fn incidents(state: &Shared, g: &Grant, now: DateTime<Utc>) -> Vec<IncidentLine> {
    let all = state.alerting.incidents_json(false);
    all["items"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|i| g.sees(&crate::alerts::namespace_of_policy(i["policy"].as_str().unwrap_or_default())))
        .map(|i| {
            let summary: Vec<String> = i["alerts"]
                .as_array()
                .into_iter()
                .flatten()
                .map(|a| {
                    a["annotations"]["summary"]
                        .as_str()
                        .or(a["labels"]["alertname"].as_str())
                        .unwrap_or("an alert")
                        .to_string()
                })
                .collect();
            IncidentLine {
                id: i["id"].as_str().unwrap_or_default().to_string(),
                summary: summary.join("; "),
                state: i["state"].as_str().unwrap_or_default().to_string(),
                age: age(time_of(&i["createdAt"]), now),
            }
        })
        .collect()
}

#[derive(Deserialize, Default)]
struct OverviewQuery {
    #[serde(default)]
    q: String,
    #[serde(default)]
    kind: String,
    #[serde(default)]
    namespace: String,
    #[serde(default)]
    health: String,
    #[serde(default)]
    page: usize,
}

fn overview_of(state: &Shared, g: &Grant, q: OverviewQuery) -> Result<Overview, ApiError> {
    let now = Utc::now();
    // A health filter in any case is the canonical one (the page's select shows it).
    let health = Health::parse(&q.health).map(|h| h.as_str().to_string()).unwrap_or_default();
    let mut filter = Filter { q: q.q, kind: q.kind, namespace: q.namespace, health, page: q.page };
    let all = rows(state, g, now)?;
    let mut namespaces: Vec<String> = all.iter().map(|r| r.namespace.clone()).filter(|n| !n.is_empty()).collect();
    namespaces.sort();
    namespaces.dedup();
    let needle = filter.q.to_lowercase();
    let matches = |r: &Row| {
        (filter.kind.is_empty() || r.kind == filter.kind)
            && (filter.namespace.is_empty() || r.namespace == filter.namespace)
            && (needle.is_empty()
                || [&r.kind, &r.namespace, &r.name, &r.message].iter().any(|f| f.to_lowercase().contains(&needle)))
    };
    let mut selected: Vec<Row> = all.into_iter().filter(|r| matches(r)).collect();
    let counts: Vec<(Health, usize)> = Health::ALL
        .into_iter()
        .map(|h| (h, selected.iter().filter(|r| r.health == h).count()))
        .filter(|(_, n)| *n > 0)
        .collect();
    if let Some(h) = Health::parse(&filter.health) {
        selected.retain(|r| r.health == h);
    }
    // What needs looking at first.
    selected
        .sort_by(|a, b| (a.health, &a.kind, &a.namespace, &a.name).cmp(&(b.health, &b.kind, &b.namespace, &b.name)));
    let matching = selected.len();
    // A page past the end is the last one.
    filter.page = filter.page.min(matching.saturating_sub(1) / PAGE_SIZE);
    let rows: Vec<Row> = selected.into_iter().skip(filter.page * PAGE_SIZE).take(PAGE_SIZE).collect();
    Ok(Overview {
        filter,
        rows,
        matching,
        page_size: PAGE_SIZE,
        counts,
        kinds: Kind::ALL.iter().map(|k| k.name()).collect(),
        namespaces,
        events: events(state, g, None, RECENT_EVENTS, now)?,
        incidents: incidents(state, g, now),
    })
}

/// Runs `work` (store reads and rendering) off the async workers.
async fn blocking<T: Send + 'static>(work: impl FnOnce() -> T + Send + 'static) -> Result<T, ApiError> {
    tokio::task::spawn_blocking(work)
        .await
        .map_err(|e| ApiError::Status(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()))
}

/// A failure as the page shows it (what the server said, in a page of the dashboard).
fn failed(viewer: &Viewer, e: ApiError) -> Response {
    let (status, message) = error_text(e);
    html(status, pages::failure(viewer, &message))
}

async fn overview(State(state): State<AppState>, Query(q): Query<OverviewQuery>, req: Request) -> Response {
    let Some(g) = grant(&state, req.headers()) else { return to_login(req.uri()) };
    let (user, scope, writes) = viewer(&g);
    let v = Viewer { user: &user, scope: &scope, writes };
    let (st, gr) = (state.clone(), g.clone());
    match blocking(move || overview_of(&st, &gr, q)).await.and_then(|r| r) {
        Ok(o) => html(StatusCode::OK, pages::overview_page(&v, &o)),
        Err(e) => failed(&v, e),
    }
}

async fn overview_fragment(
    State(state): State<AppState>,
    Query(q): Query<OverviewQuery>,
    headers: HeaderMap,
) -> Response {
    let Some(g) = grant(&state, &headers) else { return unauthorized() };
    let refresh = Filter {
        q: q.q.clone(),
        kind: q.kind.clone(),
        namespace: q.namespace.clone(),
        health: q.health.clone(),
        page: q.page,
    };
    let st = state.clone();
    match blocking(move || overview_of(&st, &g, q)).await.and_then(|r| r) {
        Ok(o) => html(StatusCode::OK, pages::overview_body(&o)),
        // Said in place, and the part keeps asking for itself: the next change tries again.
        Err(e) => {
            let (status, message) = error_text(e);
            html(status, pages::overview_failure(&refresh, &message))
        }
    }
}

/// An App's page, or why there is none for this session.
fn app_view(state: &Shared, g: &Grant, ns: &str, name: &str) -> Result<Option<AppView>, ApiError> {
    if !g.sees(ns) {
        return Ok(None);
    }
    let key = ObjectKey::new("App", ns, name);
    let Some(app) = state.store.get(&key)? else { return Ok(None) };
    let now = Utc::now();
    let running = app["status"]["revision"].as_str().unwrap_or_default().to_string();
    let revisions = capstan_engine::revision_history(&state.store, &key)?
        .into_iter()
        .map(|r| Revision {
            current: r.revision == running,
            created: age(Some(r.created_at), now) + " ago",
            revision: r.revision,
        })
        .collect();
    Ok(Some(AppView {
        namespace: ns.to_string(),
        name: name.to_string(),
        age: age(time_of(&app["metadata"]["creationTimestamp"]), now),
        events: events(state, g, Some(&key), 20, now)?,
        revisions,
        app,
    }))
}

async fn app_page(State(state): State<AppState>, Path((ns, name)): Path<(String, String)>, req: Request) -> Response {
    let Some(g) = grant(&state, req.headers()) else { return to_login(req.uri()) };
    let (user, scope, writes) = viewer(&g);
    let v = Viewer { user: &user, scope: &scope, writes };
    let (st, gr, n, m) = (state.clone(), g.clone(), ns.clone(), name.clone());
    match blocking(move || app_view(&st, &gr, &n, &m)).await.and_then(|r| r) {
        Ok(Some(a)) => html(StatusCode::OK, pages::app_page(&v, &a)),
        Ok(None) => html(StatusCode::NOT_FOUND, pages::not_found(&v, &format!("No App {ns}/{name} that you may see."))),
        Err(e) => failed(&v, e),
    }
}

async fn app_fragment(
    State(state): State<AppState>,
    Path((ns, name)): Path<(String, String)>,
    headers: HeaderMap,
) -> Response {
    let Some(g) = grant(&state, &headers) else { return unauthorized() };
    let (user, scope, writes) = viewer(&g);
    let v = Viewer { user: &user, scope: &scope, writes };
    let (st, gr, n, m) = (state.clone(), g.clone(), ns.clone(), name.clone());
    match blocking(move || app_view(&st, &gr, &n, &m)).await.and_then(|r| r) {
        Ok(Some(a)) => html(StatusCode::OK, pages::app_body(&v, &a)),
        Ok(None) => html(StatusCode::NOT_FOUND, pages::action_result(false, &format!("App {ns}/{name} is gone."))),
        Err(e) => {
            let (status, message) = error_text(e);
            html(status, pages::action_result(false, &message))
        }
    }
}

/// 204 while the session holds, 401 once it ended: the page's script asks when its stream fails, and goes to the
/// sign-in if it ended.
async fn session(State(state): State<AppState>, headers: HeaderMap) -> Response {
    match grant(&state, &headers) {
        Some(_) => secured(StatusCode::NO_CONTENT.into_response()),
        None => unauthorized(),
    }
}

/// What an action answered, for htmx (a fragment) or a plain form (back to the page).
fn acted(headers: &HeaderMap, back: &str, result: Result<String, (StatusCode, String)>) -> Response {
    let htmx = headers.contains_key("hx-request");
    match (htmx, result) {
        (true, Ok(m)) => html(StatusCode::OK, pages::action_result(true, &m)),
        (true, Err((s, m))) => html(s, pages::action_result(false, &m)),
        (false, Ok(_)) => secured(Redirect::to(back).into_response()),
        (false, Err((s, m))) => secured((s, m).into_response()),
    }
}

/// The session's grant for a change in `ns`: signed in, from a page of this server, and a role that writes there.
fn may_change(state: &Shared, headers: &HeaderMap, ns: &str, what: &str) -> Result<Grant, Box<Response>> {
    let Some(g) = grant(state, headers) else { return Err(Box::new(unauthorized())) };
    same_origin(headers).map_err(|r| Box::new(as_user(*r, &g)))?;
    if !g.allows(Verb::Write, Some(ns)) {
        let refused = crate::redact::forbidden(&g, what);
        let message = match &refused {
            ApiError::Status(_, m) => m.clone(),
            other => other.to_string(),
        };
        return Err(Box::new(as_user(acted(headers, "", Err((StatusCode::FORBIDDEN, message))), &g)));
    }
    Ok(g)
}

async fn restart(
    State(state): State<AppState>,
    Path((ns, name)): Path<(String, String)>,
    headers: HeaderMap,
) -> Response {
    let g = match may_change(&state, &headers, &ns, &format!("restart App {name} in namespace {ns}")) {
        Ok(g) => g,
        Err(r) => return *r,
    };
    let back = format!("/ui/apps/{}/{}", encode(&ns), encode(&name));
    let done = crate::server::restart_app(&state, &ns, &name)
        .map(|_| format!("Restart of App {name} asked: its replicas are replaced one by one."))
        .map_err(error_text);
    let mut r = as_user(acted(&headers, &back, done), &g);
    r.extensions_mut().insert(crate::audit::Touched(vec![ObjectKey::new("App", &ns, &name)]));
    r
}

#[derive(Deserialize)]
struct RollbackForm {
    revision: Option<String>,
}

async fn rollback(
    State(state): State<AppState>,
    Path((ns, name)): Path<(String, String)>,
    headers: HeaderMap,
    form: Result<Form<RollbackForm>, axum::extract::rejection::FormRejection>,
) -> Response {
    let g = match may_change(&state, &headers, &ns, &format!("roll back App {name} in namespace {ns}")) {
        Ok(g) => g,
        Err(r) => return *r,
    };
    let Ok(Form(f)) = form else {
        return acted(&headers, "", Err((StatusCode::BAD_REQUEST, "a rollback names its revision in a form".into())));
    };
    let back = format!("/ui/apps/{}/{}", encode(&ns), encode(&name));
    let to = f.revision.filter(|r| !r.is_empty());
    let done = crate::server::rollback_app(&state, &ns, &name, to.clone())
        .map(|_| format!("App {name} rolled back to revision {}.", to.as_deref().unwrap_or("the previous one")))
        .map_err(error_text);
    let mut r = as_user(acted(&headers, &back, done), &g);
    r.extensions_mut().insert(crate::audit::Touched(vec![ObjectKey::new("App", &ns, &name)]));
    r
}

/// The server's refusal in words, with each admission error's field when it has them.
fn error_text(e: ApiError) -> (StatusCode, String) {
    let message = match &e {
        ApiError::Unprocessable { message, errors } => {
            let mut m = message.clone();
            for err in errors {
                m.push_str(&format!("; {}: {}", err.path, err.message));
                if let Some(h) = &err.hint {
                    m.push_str(&format!(" (hint: {h})"));
                }
            }
            m
        }
        other => other.to_string(),
    };
    (e.into_response().status(), message)
}

#[derive(Deserialize, Default)]
struct StreamQuery {
    /// Only changes of this object (`Kind/namespace/name`).
    object: Option<String>,
}

/// The tab's live stream: an SSE `change` event when something the session may see changed or had an event (at most
/// twice a second, naming the object, or `*` for several or after a gap), a comment every 15 s quiet to keep it
/// open, and an `ended` event closing it within 15 s of the session's end. The browser's EventSource reconnects
/// by itself; the page then asks for its parts again.
async fn stream(State(state): State<AppState>, Query(q): Query<StreamQuery>, headers: HeaderMap) -> Response {
    let Some(g) = grant(&state, &headers) else { return unauthorized() };
    let only = q.object.and_then(|o| {
        let mut parts = o.splitn(3, '/');
        Some(ObjectKey::new(parts.next()?, parts.next()?, parts.next()?))
    });
    let mut watch = state.store.watch();
    let mut watch_events = state.store.watch_events();
    let cookie = cookie_of(&headers).unwrap_or_default();
    let (tx, rx) = tokio::sync::mpsc::channel::<String>(64);
    let shared = state.clone();
    tokio::spawn(async move {
        // Changes are told at most twice a second, the last of a burst always: a page asks for itself again once
        // per tick however many objects changed (a rollout writes many statuses in a moment). The first tick tells
        // "*": a stream opened again after a gap makes the page catch up with what it missed.
        let mut tick = tokio::time::interval(COALESCE);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut session_check = tokio::time::interval(SESSION_CHECK);
        session_check.tick().await;
        let mut changed: Option<String> = Some("*".into());
        let mut quiet_ticks = 0u32;
        let mut shutdown = shared.shutdown.subscribe();
        let _ = tx.send("retry: 2000\n\n".to_string()).await;
        let seen = |key: &ObjectKey| only.as_ref().is_none_or(|k| k == key) && g.sees(&key.namespace);
        loop {
            let line = tokio::select! {
                ev = watch.recv() => {
                    match ev {
                        // A cluster-scoped object's empty namespace is seen by a grant bound to every one only.
                        Ok(ev) if seen(&ev.key) => {
                            changed = Some(if changed.is_some() { "*".into() } else { ev.key.to_string() });
                        }
                        Ok(_) => {}
                        // Missed changes: the page asks for everything again.
                        Err(tokio::sync::broadcast::error::RecvError::Lagged(_)) => changed = Some("*".into()),
                        Err(_) => return,
                    }
                    continue;
                }
                // An event is news too (the pages list them).
                ev = watch_events.recv() => {
                    match ev {
                        Ok(ev) if seen(&ev.involved_object) => {
                            changed = Some(if changed.is_some() { "*".into() } else { ev.involved_object.to_string() });
                        }
                        Ok(_) => {}
                        Err(tokio::sync::broadcast::error::RecvError::Lagged(_)) => changed = Some("*".into()),
                        Err(_) => return,
                    }
                    continue;
                }
                // A session signed out or expired, or its token revoked, ends the stream within this time, however
                // busy it is.
                _ = session_check.tick() => {
                    let token = shared.ui_sessions.token(&cookie, Utc::now());
                    if token.and_then(|t| crate::server::grant_for_token(&shared, &t)).is_none() {
                        let _ = tx.send("event: ended\ndata: \"the session ended\"\n\n".into()).await;
                        return;
                    }
                    continue;
                }
                _ = tick.tick() => match changed.take() {
                    Some(what) => {
                        quiet_ticks = 0;
                        format!("event: change\ndata: {}\n\n", json!(what))
                    }
                    None => {
                        quiet_ticks += 1;
                        if quiet_ticks < KEEPALIVE_TICKS {
                            continue;
                        }
                        quiet_ticks = 0;
                        ": keep-alive\n\n".into()
                    }
                },
                _ = shutdown.changed() => return,
            };
            if tx.send(line).await.is_err() {
                return;
            }
        }
    });
    let body = axum::body::Body::from_stream(futures_util::stream::unfold(rx, |mut rx| async move {
        rx.recv().await.map(|line| (Ok::<_, std::convert::Infallible>(bytes::Bytes::from(line)), rx))
    }));
    secured(([(header::CONTENT_TYPE, "text/event-stream"), (header::CACHE_CONTROL, "no-cache")], body).into_response())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(pairs: &[(&'static str, &str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.append(*k, HeaderValue::from_str(v).expect("a header value"));
        }
        h
    }

    #[test]
    fn only_this_servers_pages_may_post() {
        assert!(same_origin(&headers(&[("host", "127.0.0.1:7470"), ("origin", "http://127.0.0.1:7470")])).is_ok());
        assert!(same_origin(&headers(&[("host", "ui.example:443"), ("origin", "https://ui.example:443")])).is_ok());
        for bad in [
            headers(&[("host", "127.0.0.1:7470"), ("origin", "https://evil.example")]),
            headers(&[("host", "127.0.0.1:7470"), ("origin", "http://127.0.0.1:7471")]),
            headers(&[("host", "127.0.0.1:7470")]),
            headers(&[("host", "127.0.0.1:7470"), ("origin", "null")]),
            headers(&[("origin", "http://127.0.0.1:7470")]),
        ] {
            assert!(same_origin(&bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn the_way_back_after_signing_in_stays_on_the_dashboard() {
        assert_eq!(safe_next(Some("/ui/apps/default/web")), "/ui/apps/default/web");
        assert_eq!(safe_next(Some("/ui?kind=App")), "/ui?kind=App");
        for bad in
            ["//evil.example/ui", "https://evil.example", "/api/v1/apps", "/ui\\..\\x", "", "/ui\r\nSet-Cookie: x=1"]
        {
            assert_eq!(safe_next(Some(bad)), "/ui", "{bad}");
        }
        assert_eq!(safe_next(None), "/ui");
    }

    #[test]
    fn a_token_keeps_its_newest_sessions_only() {
        let s = Sessions::default();
        let now = Utc::now();
        let ids: Vec<String> = (0..SESSIONS_PER_TOKEN + 4)
            .map(|i| s.open("cst_a".into(), now + chrono::Duration::seconds(i as i64)))
            .collect();
        let later = now + chrono::Duration::seconds(60);
        assert!(s.token(&ids[0], later).is_none() && s.token(&ids[3], later).is_none(), "the oldest went");
        assert!(ids[4..].iter().all(|id| s.token(id, later).is_some()), "the newest stay");
        let other = s.open("cst_b".into(), now);
        assert!(s.token(&other, later).is_some(), "another token's are its own");
    }

    #[test]
    fn origins_compare_by_host_and_port_with_the_schemes_default() {
        let ok = |host: &str, origin: &str| same_origin(&headers(&[("host", host), ("origin", origin)])).is_ok();
        assert!(ok("ui.example", "https://ui.example"));
        assert!(ok("ui.example:443", "https://UI.example"));
        assert!(ok("[::1]:7470", "http://[::1]:7470"));
        assert!(!ok("[::1]:7470", "http://[::1]:7471"));
        assert!(!ok("ui.example", "https://ui.example:8443"));
    }

    #[test]
    fn a_session_is_found_by_its_cookie_until_it_ends() {
        let s = Sessions::default();
        let now = Utc::now();
        let id = s.open("cst_x".into(), now);
        assert_eq!(id.len(), 64);
        let h = headers(&[("cookie", &format!("theme=dark; {COOKIE}={id}"))]);
        assert_eq!(cookie_of(&h).as_deref(), Some(id.as_str()));
        assert_eq!(s.token(&id, now).as_deref(), Some("cst_x"));
        assert_eq!(s.token(&id, now + SESSION_TTL), None, "expired");
        assert_eq!(s.token("guess", now), None);
        s.close(&id);
        assert_eq!(s.token(&id, now), None, "signed out");
    }
}
