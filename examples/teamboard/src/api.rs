//! The JSON API under `/api`, and `/status`: what scripts, tests and load generators use.

use axum::body::Body;
use axum::extract::{Path, Query, State};
use axum::http::header::{CONTENT_DISPOSITION, CONTENT_LENGTH, CONTENT_TYPE, SET_COOKIE};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use chrono::NaiveDate;
use serde::Deserialize;
use serde_json::{json, Value};

use crate::db::{self, Account, Customer, NewWorklog};
use crate::sessions::{self, User};
use crate::{attachments, report, Error, Shared};

/// The `/api` routes.
pub fn routes() -> Router<Shared> {
    Router::new()
        .route("/login", post(login))
        .route("/whoami", get(whoami))
        .route("/tokens", post(new_token))
        .route("/issues", get(list).post(create))
        .route("/issues/{id}", get(show))
        .route("/issues/{id}/status", post(status_of))
        .route("/issues/{id}/comments", post(comment))
        .route("/issues/{id}/attachments", post(upload))
        .route("/issues/{id}/worklogs", post(worklog))
        .route("/attachments/{id}", get(download))
        .route("/search", get(search))
        .route("/customers", post(customer))
        .route("/accounts", get(accounts).post(account))
        .route("/reports/monthly", get(monthly))
}

/// `GET /status`: 200 `{"state": "RUNNING", …}` once the node serves (as Jira's /status), 503 while it starts or
/// shuts down, with the node, version and index state either way.
pub async fn status(State(s): State<Shared>) -> Response {
    let state = if *s.shutdown.borrow() {
        "STOPPING"
    } else if s.is_ready() {
        "RUNNING"
    } else {
        "STARTING"
    };
    let code = if state == "RUNNING" { StatusCode::OK } else { StatusCode::SERVICE_UNAVAILABLE };
    let body = json!({
        "state": state,
        "node": s.cfg.node,
        "version": s.cfg.version,
        "index": {"documents": s.index.docs(), "cursor": s.index.cursor(), "origin": s.index.origin().as_str()},
        "sessions": s.sessions.len(),
    });
    (code, Json(body)).into_response()
}

#[derive(Deserialize)]
struct Login {
    user: String,
}

/// Signs in (no password: a demo), returning the session cookie.
async fn login(State(s): State<Shared>, Json(l): Json<Login>) -> Result<Response, Error> {
    let user = sessions::valid_user(&l.user)?;
    db::sign_in(&s.pool, &user).await?;
    let token = s.sessions.create(&user)?;
    let body = json!({"user": user, "node": s.cfg.node, "version": s.cfg.version});
    Ok(([(SET_COOKIE, sessions::set_cookie(&token))], Json(body)).into_response())
}

/// Creates a personal access token for the signed-in user: `Authorization: Bearer <token>` works on every node.
async fn new_token(State(s): State<Shared>, User(user): User) -> Result<Response, Error> {
    let token = sessions::Sessions::new_token();
    if token.is_empty() {
        return Err(Error::Io("no entropy for a token".into()));
    }
    db::add_token(&s.pool, &sessions::token_hash(&token), &user).await?;
    Ok((StatusCode::CREATED, Json(json!({"user": user, "token": token}))).into_response())
}

async fn whoami(State(s): State<Shared>, User(user): User) -> Json<Value> {
    Json(json!({"user": user, "node": s.cfg.node, "version": s.cfg.version}))
}

#[derive(Deserialize)]
struct Limit {
    limit: Option<i64>,
}

async fn list(State(s): State<Shared>, _u: User, Query(q): Query<Limit>) -> Result<Json<Value>, Error> {
    let issues = db::list_issues(&s.pool, q.limit.unwrap_or(50).clamp(1, 1000)).await?;
    Ok(Json(json!({"node": s.cfg.node, "items": issues})))
}

#[derive(Deserialize)]
pub(crate) struct NewIssue {
    pub title: String,
    #[serde(default)]
    pub body: String,
}

async fn create(State(s): State<Shared>, User(u): User, Json(n): Json<NewIssue>) -> Result<Response, Error> {
    let issue = db::create_issue(&s.pool, &u, n.title.trim(), &n.body, &s.cfg.node).await?;
    Ok((StatusCode::CREATED, Json(json!({"node": s.cfg.node, "issue": issue}))).into_response())
}

async fn show(State(s): State<Shared>, _u: User, Path(id): Path<i64>) -> Result<Json<Value>, Error> {
    let (issue, comments, attachments, worklogs) = db::get_issue(&s.pool, id).await?;
    Ok(Json(json!({
        "node": s.cfg.node, "issue": issue, "comments": comments, "attachments": attachments, "worklogs": worklogs
    })))
}

#[derive(Deserialize)]
struct NewStatus {
    status: String,
}

async fn status_of(
    State(s): State<Shared>,
    _u: User,
    Path(id): Path<i64>,
    Json(n): Json<NewStatus>,
) -> Result<StatusCode, Error> {
    db::set_status(&s.pool, id, &n.status, &s.cfg.node).await?;
    Ok(StatusCode::NO_CONTENT)
}

#[derive(Deserialize)]
struct NewComment {
    body: String,
}

async fn comment(
    State(s): State<Shared>,
    User(u): User,
    Path(id): Path<i64>,
    Json(c): Json<NewComment>,
) -> Result<Response, Error> {
    let c = db::add_comment(&s.pool, id, &u, &c.body, &s.cfg.node).await?;
    Ok((StatusCode::CREATED, Json(c)).into_response())
}

#[derive(Deserialize)]
struct UploadQuery {
    filename: String,
}

/// Streams the request body into the shared store as an attachment of issue `id`.
async fn upload(
    State(s): State<Shared>,
    User(u): User,
    Path(id): Path<i64>,
    Query(q): Query<UploadQuery>,
    headers: HeaderMap,
    body: Body,
) -> Result<Response, Error> {
    let content_type =
        headers.get(CONTENT_TYPE).and_then(|v| v.to_str().ok()).unwrap_or("application/octet-stream").to_string();
    let a = save_attachment(&s, &u, id, &q.filename, &content_type, body.into_data_stream()).await?;
    Ok((StatusCode::CREATED, Json(a)).into_response())
}

/// Stores an upload and records it; shared by the API and the upload form.
pub(crate) async fn save_attachment<S, E>(
    s: &Shared,
    user: &str,
    issue: i64,
    filename: &str,
    content_type: &str,
    body: S,
) -> Result<db::Attachment, Error>
where
    S: futures_util::Stream<Item = Result<axum::body::Bytes, E>> + Unpin,
    E: std::fmt::Display,
{
    if !db::issue_exists(&s.pool, issue).await? {
        return Err(Error::NotFound(format!("issue {issue}")));
    }
    let id = uuid::Uuid::new_v4();
    let (size, sha256) = attachments::store(&s.cfg.attachments_dir, id, body, s.cfg.max_upload_bytes).await?;
    let a = db::Attachment {
        id,
        issue_id: issue,
        filename: attachments::clean_name(filename),
        content_type: content_type.to_string(),
        size: size as i64,
        sha256,
        author: user.to_string(),
        created_at: chrono::Utc::now(),
    };
    if let Err(e) = db::add_attachment(&s.pool, &a, &s.cfg.node).await {
        attachments::discard(&s.cfg.attachments_dir, id).await;
        return Err(e);
    }
    Ok(a)
}

/// Streams an attachment from the shared store.
pub(crate) async fn download(State(s): State<Shared>, _u: User, Path(id): Path<uuid::Uuid>) -> Result<Response, Error> {
    let a = db::get_attachment(&s.pool, id).await?;
    let path = attachments::path_of(&s.cfg.attachments_dir, id);
    let file = tokio::fs::File::open(&path).await.map_err(|e| {
        Error::Io(format!("attachment {id} is recorded but its file {} is unreadable: {e}", path.display()))
    })?;
    let body = Body::from_stream(tokio_util::io::ReaderStream::new(file));
    Ok((
        [
            (CONTENT_TYPE, a.content_type.clone()),
            (CONTENT_LENGTH, a.size.to_string()),
            (CONTENT_DISPOSITION, format!("attachment; filename=\"{}\"", a.filename)),
            (axum::http::header::X_CONTENT_TYPE_OPTIONS, "nosniff".to_string()),
        ],
        body,
    )
        .into_response())
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub(crate) struct WorklogInput {
    pub account: String,
    pub day: NaiveDate,
    #[serde(default)]
    pub hours: Option<f64>,
    #[serde(default)]
    pub billable_hours: Option<f64>,
    #[serde(default)]
    pub time_spent_seconds: Option<i32>,
    #[serde(default)]
    pub billable_seconds: Option<i32>,
    #[serde(default)]
    pub description: String,
}

fn seconds(hours: f64, what: &str) -> Result<i32, Error> {
    if !hours.is_finite() || !(0.0..=24.0).contains(&hours) {
        return Err(Error::BadRequest(format!("{what} must be between 0 and 24 hours, not {hours}")));
    }
    Ok((hours * 3600.0).round() as i32)
}

impl WorklogInput {
    pub(crate) fn into_new(self, issue_id: i64, author: &str) -> Result<NewWorklog, Error> {
        let spent = match (self.time_spent_seconds, self.hours) {
            (Some(s), _) => s,
            (None, Some(h)) => seconds(h, "hours")?,
            (None, None) => return Err(Error::BadRequest("say how long: hours or timeSpentSeconds".into())),
        };
        let billable = match (self.billable_seconds, self.billable_hours) {
            (Some(s), _) => Some(s),
            (None, Some(h)) => Some(seconds(h, "billableHours")?),
            (None, None) => None,
        };
        if spent <= 0 {
            return Err(Error::BadRequest("time spent must be more than zero".into()));
        }
        Ok(NewWorklog {
            issue_id,
            account: self.account.trim().to_string(),
            author: author.to_string(),
            day: self.day,
            time_spent_seconds: spent,
            billable_seconds: billable,
            description: self.description,
        })
    }
}

async fn worklog(
    State(s): State<Shared>,
    User(u): User,
    Path(id): Path<i64>,
    Json(w): Json<WorklogInput>,
) -> Result<Response, Error> {
    let w = db::add_worklog(&s.pool, &w.into_new(id, &u)?, &s.cfg.node).await?;
    Ok((StatusCode::CREATED, Json(w)).into_response())
}

#[derive(Deserialize)]
pub(crate) struct SearchQuery {
    #[serde(default)]
    pub q: String,
    pub limit: Option<usize>,
}

/// Searches this node's index; each hit's issue comes from the database.
pub(crate) async fn find(s: &Shared, q: &str, limit: usize) -> Result<Vec<db::Issue>, Error> {
    if q.trim().is_empty() {
        return Ok(Vec::new());
    }
    let (index, q) = (s.index.clone(), q.to_string());
    let hits = tokio::task::spawn_blocking(move || index.search(&q, limit))
        .await
        .map_err(|e| Error::Search(e.to_string()))??;
    let ids: Vec<i64> = hits.iter().map(|(id, _)| *id).collect();
    db::issues_by_ids(&s.pool, &ids).await
}

async fn search(State(s): State<Shared>, _u: User, Query(q): Query<SearchQuery>) -> Result<Json<Value>, Error> {
    let items = find(&s, &q.q, q.limit.unwrap_or(20).clamp(1, 200)).await?;
    Ok(Json(json!({"node": s.cfg.node, "query": q.q, "items": items})))
}

async fn customer(State(s): State<Shared>, _u: User, Json(c): Json<Customer>) -> Result<StatusCode, Error> {
    db::put_customer(&s.pool, &c).await?;
    Ok(StatusCode::NO_CONTENT)
}

async fn accounts(State(s): State<Shared>, _u: User) -> Result<Json<Value>, Error> {
    Ok(Json(json!({"customers": db::customers(&s.pool).await?, "accounts": db::accounts(&s.pool).await?})))
}

async fn account(State(s): State<Shared>, _u: User, Json(a): Json<Account>) -> Result<StatusCode, Error> {
    db::put_account(&s.pool, &a).await?;
    Ok(StatusCode::NO_CONTENT)
}

#[derive(Deserialize)]
pub(crate) struct ReportQuery {
    pub customer: Option<String>,
    pub month: Option<String>,
    pub format: Option<String>,
}

/// Builds a customer's monthly report.
pub(crate) async fn monthly_report(s: &Shared, customer: &str, month: &str) -> Result<report::MonthlyReport, Error> {
    let (from, to) = report::month_range(month)?;
    let c = db::customer(&s.pool, customer).await?.ok_or_else(|| Error::NotFound(format!("customer {customer:?}")))?;
    let lines = db::report_lines(&s.pool, &c.key, from, to).await?;
    Ok(report::build(&c.key, &c.name, month, lines))
}

async fn monthly(State(s): State<Shared>, _u: User, Query(q): Query<ReportQuery>) -> Result<Response, Error> {
    let customer = q.customer.ok_or_else(|| Error::BadRequest("name a customer: ?customer=KEY".into()))?;
    let month = q.month.unwrap_or_else(report::this_month);
    let r = monthly_report(&s, &customer, &month).await?;
    Ok(match q.format.as_deref() {
        Some("csv") => (
            [
                (CONTENT_TYPE, "text/csv; charset=utf-8".to_string()),
                (CONTENT_DISPOSITION, format!("attachment; filename=\"{}-{}.csv\"", r.customer, r.month)),
            ],
            report::csv(&r),
        )
            .into_response(),
        _ => Json(r).into_response(),
    })
}
