//! The web pages: sign-in, issues with comments, attachments and worklogs, search, accounts and monthly reports.

use axum::extract::{Multipart, Path, Query, State};
use axum::http::header::{LOCATION, SET_COOKIE};
use axum::http::StatusCode;
use axum::response::{Html, IntoResponse, Redirect, Response};
use axum::routing::{get, post};
use axum::{Form, Router};
use chrono::NaiveDate;
use serde::Deserialize;

use crate::api::{self, NewIssue, ReportQuery, SearchQuery, WorklogInput};
use crate::db::{self, Account, Customer};
use crate::html::{esc, page, url_enc};
use crate::report::{self, hours};
use crate::sessions::{self, MaybeUser};
use crate::{Error, Shared};

/// The page routes.
pub fn routes() -> Router<Shared> {
    Router::new()
        .route("/", get(home))
        .route("/login", get(login_form).post(login))
        .route("/logout", post(logout))
        .route("/issues", post(create))
        .route("/issues/{id}", get(issue))
        .route("/issues/{id}/status", post(set_status))
        .route("/issues/{id}/comments", post(comment))
        .route("/issues/{id}/attachments", post(upload))
        .route("/issues/{id}/worklogs", post(worklog))
        .route("/attachments/{id}", get(api::download))
        .route("/search", get(search))
        .route("/accounts", get(accounts))
        .route("/customers", post(customer))
        .route("/accounts", post(account))
        .route("/reports", get(reports))
}

/// An error shown as a page; "sign in first" becomes a redirect to the sign-in page.
struct PageError(Error, Shared);

impl IntoResponse for PageError {
    fn into_response(self) -> Response {
        let PageError(e, s) = self;
        if matches!(e, Error::Unauthorized) {
            return Redirect::to("/login").into_response();
        }
        let status = e.status();
        if status.is_server_error() {
            tracing::error!("{e}");
        }
        let body =
            format!("<section><p class=err>{}</p><p><a href=/>Back to the issues</a></p></section>", esc(&e.message()));
        (status, Html(page("Error", None, &s.cfg.node, &s.cfg.version, &body))).into_response()
    }
}

type PageResult = Result<Response, PageError>;

fn user_or_login(s: &Shared, u: MaybeUser) -> Result<String, PageError> {
    u.0.ok_or_else(|| PageError(Error::Unauthorized, s.clone()))
}

fn render(s: &Shared, title: &str, user: &str, body: &str) -> Response {
    Html(page(title, Some(user), &s.cfg.node, &s.cfg.version, body)).into_response()
}

fn see(path: &str) -> Response {
    (StatusCode::SEE_OTHER, [(LOCATION, path.to_string())]).into_response()
}

async fn home(State(s): State<Shared>, u: MaybeUser) -> PageResult {
    let user = user_or_login(&s, u)?;
    let wrap = |e| PageError(e, s.clone());
    let issues = db::list_issues(&s.pool, 100).await.map_err(wrap)?;
    let counts = db::counts(&s.pool).await.map_err(wrap)?;
    let mut rows = String::new();
    for i in &issues {
        rows.push_str(&format!(
            "<tr><td class=n>#{id}</td><td><a href=/issues/{id}>{t}</a></td><td>{st}</td><td>{a}</td><td class=muted>{c}</td></tr>",
            id = i.id,
            t = esc(&i.title),
            st = esc(&i.status),
            a = esc(&i.author),
            c = i.created_at.format("%Y-%m-%d %H:%M")
        ));
    }
    let body = format!(
        "<section><h2>New issue</h2><form method=post action=/issues>\
<p><input name=title placeholder=Title required maxlength=200 style=width:100%></p>\
<p><textarea name=body placeholder=Description></textarea></p><button>Create</button></form></section>\
<section><h2>Issues</h2><p class=muted>{n} · {c} · {a} · {w}</p>\
<table><tr><th class=n>#</th><th>Title</th><th>Status</th><th>Author</th><th>Created</th></tr>{rows}</table></section>",
        n = count(&counts["issues"], "issue"),
        c = count(&counts["comments"], "comment"),
        a = count(&counts["attachments"], "attachment"),
        w = count(&counts["worklogs"], "worklog"),
    );
    Ok(render(&s, "Issues", &user, &body))
}

async fn login_form(State(s): State<Shared>) -> Html<String> {
    let body = "<section><h2>Sign in</h2><form method=post action=/login>\
<p><input name=user placeholder=\"your name\" required maxlength=40 autofocus></p><button>Sign in</button></form>\
<p class=muted>Sessions live in this node's memory: the load balancer keeps you on one node.</p></section>";
    Html(page("Sign in", None, &s.cfg.node, &s.cfg.version, body))
}

#[derive(Deserialize)]
struct LoginForm {
    user: String,
}

async fn login(State(s): State<Shared>, Form(f): Form<LoginForm>) -> PageResult {
    let wrap = |e| PageError(e, s.clone());
    let user = sessions::valid_user(&f.user).map_err(wrap)?;
    db::sign_in(&s.pool, &user).await.map_err(wrap)?;
    let token = s.sessions.create(&user).map_err(wrap)?;
    Ok((StatusCode::SEE_OTHER, [(LOCATION, "/".to_string()), (SET_COOKIE, sessions::set_cookie(&token))])
        .into_response())
}

async fn logout(State(s): State<Shared>, req: axum::http::Request<axum::body::Body>) -> Response {
    let (parts, _) = req.into_parts();
    if let Some(t) = sessions::cookie(&parts, sessions::COOKIE) {
        s.sessions.remove(&t);
    }
    (StatusCode::SEE_OTHER, [(LOCATION, "/login".to_string()), (SET_COOKIE, sessions::clear_cookie())]).into_response()
}

async fn create(State(s): State<Shared>, u: MaybeUser, Form(n): Form<NewIssue>) -> PageResult {
    let user = user_or_login(&s, u)?;
    let i = db::create_issue(&s.pool, &user, n.title.trim(), &n.body, &s.cfg.node)
        .await
        .map_err(|e| PageError(e, s.clone()))?;
    Ok(see(&format!("/issues/{}", i.id)))
}

async fn issue(State(s): State<Shared>, u: MaybeUser, Path(id): Path<i64>) -> PageResult {
    let user = user_or_login(&s, u)?;
    let wrap = |e| PageError(e, s.clone());
    let (i, comments, files, worklogs) = db::get_issue(&s.pool, id).await.map_err(wrap)?;
    let accounts = db::accounts(&s.pool).await.map_err(wrap)?;
    let mut c_html = String::new();
    for c in &comments {
        c_html.push_str(&format!(
            "<p><b>{}</b> <span class=muted>{}</span><br>{}</p>",
            esc(&c.author),
            c.created_at.format("%Y-%m-%d %H:%M"),
            esc(&c.body)
        ));
    }
    let mut f_html = String::new();
    for f in &files {
        f_html.push_str(&format!(
            "<tr><td><a href=/attachments/{}>{}</a></td><td class=n>{} bytes</td><td>{}</td></tr>",
            f.id,
            esc(&f.filename),
            f.size,
            esc(&f.author)
        ));
    }
    let mut w_html = String::new();
    for w in &worklogs {
        w_html.push_str(&format!(
            "<tr><td>{}</td><td>{}</td><td>{}</td><td class=n>{}</td><td class=n>{}</td><td>{}</td></tr>",
            w.day,
            esc(&w.author),
            esc(&w.account),
            hours(w.time_spent_seconds as i64),
            hours(w.billable_seconds as i64),
            esc(&w.description)
        ));
    }
    let options: String = accounts
        .iter()
        .map(|a| {
            format!(
                "<option value=\"{}\">{} — {}{}</option>",
                esc(&a.key),
                esc(&a.key),
                esc(&a.name),
                if a.billable { "" } else { " (non-billable)" }
            )
        })
        .collect();
    let statuses: String = ["open", "in-progress", "done"]
        .iter()
        .map(|st| format!("<option{}>{st}</option>", if *st == i.status { " selected" } else { "" }))
        .collect();
    let today = chrono::Utc::now().date_naive();
    let worklog_form = if accounts.is_empty() {
        "<p class=muted>Create a customer account under <a href=/accounts>Accounts</a> to log time.</p>".to_string()
    } else {
        format!(
            "<form method=post action=/issues/{id}/worklogs><select name=account>{options}</select> \
<input type=date name=day value={today}> <input name=hours type=number step=0.25 min=0.25 max=24 placeholder=hours required style=width:6em> \
<input name=billableHours type=number step=0.25 min=0 max=24 placeholder=billable style=width:6em> \
<input name=description placeholder=\"what you did\"> <button>Log time</button></form>"
        )
    };
    let body = format!(
        "<section><h2>#{id} {t}</h2><p class=muted>by {a} · {created}</p><p>{b}</p>\
<form method=post action=/issues/{id}/status>Status: <select name=status>{statuses}</select> <button>Set</button></form></section>\
<section><h3>Comments</h3>{c_html}<form method=post action=/issues/{id}/comments><textarea name=body required></textarea>\
<button>Comment</button></form></section>\
<section><h3>Attachments</h3><table>{f_html}</table><form method=post action=/issues/{id}/attachments enctype=multipart/form-data>\
<input type=file name=file required> <button>Upload</button></form></section>\
<section><h3>Work log</h3><table><tr><th>Day</th><th>Who</th><th>Account</th><th class=n>Hours</th><th class=n>Billable</th><th>What</th></tr>{w_html}</table>\
{worklog_form}</section>",
        t = esc(&i.title),
        a = esc(&i.author),
        created = i.created_at.format("%Y-%m-%d %H:%M"),
        b = esc(&i.body).replace('\n', "<br>"),
    );
    Ok(render(&s, &format!("#{id} {}", i.title), &user, &body))
}

#[derive(Deserialize)]
struct StatusForm {
    status: String,
}

async fn set_status(
    State(s): State<Shared>,
    u: MaybeUser,
    Path(id): Path<i64>,
    Form(f): Form<StatusForm>,
) -> PageResult {
    user_or_login(&s, u)?;
    db::set_status(&s.pool, id, &f.status, &s.cfg.node).await.map_err(|e| PageError(e, s.clone()))?;
    Ok(see(&format!("/issues/{id}")))
}

#[derive(Deserialize)]
struct CommentForm {
    body: String,
}

async fn comment(State(s): State<Shared>, u: MaybeUser, Path(id): Path<i64>, Form(f): Form<CommentForm>) -> PageResult {
    let user = user_or_login(&s, u)?;
    db::add_comment(&s.pool, id, &user, &f.body, &s.cfg.node).await.map_err(|e| PageError(e, s.clone()))?;
    Ok(see(&format!("/issues/{id}")))
}

async fn upload(State(s): State<Shared>, u: MaybeUser, Path(id): Path<i64>, mut form: Multipart) -> PageResult {
    let user = user_or_login(&s, u)?;
    let wrap = |e| PageError(e, s.clone());
    loop {
        let field = form.next_field().await.map_err(|e| wrap(Error::BadRequest(format!("upload: {e}"))))?;
        let Some(field) = field else { break };
        if field.name() != Some("file") {
            continue;
        }
        let name = field.file_name().unwrap_or("attachment").to_string();
        let ct = field.content_type().unwrap_or("application/octet-stream").to_string();
        let stream = futures_util::stream::unfold(field, |mut f| async move {
            match f.chunk().await {
                Ok(Some(b)) => Some((Ok(b), f)),
                Ok(None) => None,
                Err(e) => Some((Err(e), f)),
            }
        });
        let stream = Box::pin(stream);
        api::save_attachment(&s, &user, id, &name, &ct, stream).await.map_err(wrap)?;
    }
    Ok(see(&format!("/issues/{id}")))
}

/// The worklog form sends empty strings for empty number fields.
#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct WorklogForm {
    account: String,
    day: NaiveDate,
    hours: String,
    #[serde(default)]
    billable_hours: String,
    #[serde(default)]
    description: String,
}

async fn worklog(State(s): State<Shared>, u: MaybeUser, Path(id): Path<i64>, Form(f): Form<WorklogForm>) -> PageResult {
    let user = user_or_login(&s, u)?;
    let wrap = |e| PageError(e, s.clone());
    let num = |v: &str, what: &str| -> Result<Option<f64>, Error> {
        let v = v.trim();
        if v.is_empty() {
            return Ok(None);
        }
        v.parse().map(Some).map_err(|_| Error::BadRequest(format!("{what}: {v:?} is not a number")))
    };
    let input = WorklogInput {
        account: f.account,
        day: f.day,
        hours: num(&f.hours, "hours").map_err(wrap)?,
        billable_hours: num(&f.billable_hours, "billable hours").map_err(wrap)?,
        time_spent_seconds: None,
        billable_seconds: None,
        description: f.description,
    };
    let new = input.into_new(id, &user).map_err(wrap)?;
    db::add_worklog(&s.pool, &new, &s.cfg.node).await.map_err(wrap)?;
    Ok(see(&format!("/issues/{id}")))
}

async fn search(State(s): State<Shared>, u: MaybeUser, Query(q): Query<SearchQuery>) -> PageResult {
    let user = user_or_login(&s, u)?;
    let found = api::find(&s, &q.q, 50).await.map_err(|e| PageError(e, s.clone()))?;
    let mut rows = String::new();
    for i in &found {
        rows.push_str(&format!(
            "<tr><td class=n>#{id}</td><td><a href=/issues/{id}>{t}</a></td><td>{st}</td></tr>",
            id = i.id,
            t = esc(&i.title),
            st = esc(&i.status)
        ));
    }
    let result = if q.q.trim().is_empty() {
        String::new()
    } else {
        format!(
            "<p class=muted>{} results from {}'s index ({} documents)</p><table>{rows}</table>",
            found.len(),
            esc(&s.cfg.node),
            s.index.docs()
        )
    };
    let body = format!(
        "<section><h2>Search</h2><form><input name=q value=\"{}\" placeholder=\"words, \\\"a phrase\\\", title:word\" style=width:70%> <button>Search</button></form>{result}</section>",
        esc(&q.q)
    );
    Ok(render(&s, "Search", &user, &body))
}

async fn accounts(State(s): State<Shared>, u: MaybeUser) -> PageResult {
    let user = user_or_login(&s, u)?;
    let wrap = |e| PageError(e, s.clone());
    let (customers, accounts) =
        (db::customers(&s.pool).await.map_err(wrap)?, db::accounts(&s.pool).await.map_err(wrap)?);
    let c_rows: String =
        customers.iter().map(|c| format!("<tr><td>{}</td><td>{}</td></tr>", esc(&c.key), esc(&c.name))).collect();
    let a_rows: String = accounts
        .iter()
        .map(|a| {
            format!(
                "<tr><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td></tr>",
                esc(&a.key),
                esc(&a.name),
                esc(&a.customer),
                if a.billable { "billable" } else { "non-billable" },
                esc(&a.lead)
            )
        })
        .collect();
    let c_opts: String = customers.iter().map(|c| format!("<option>{}</option>", esc(&c.key))).collect();
    let body = format!(
        "<section><h2>Customers</h2><table><tr><th>Key</th><th>Name</th></tr>{c_rows}</table>\
<form method=post action=/customers><input name=key placeholder=\"KEY (e.g. SOY)\" required> <input name=name placeholder=Name required> <button>Save customer</button></form></section>\
<section><h2>Accounts</h2><table><tr><th>Key</th><th>Name</th><th>Customer</th><th>Category</th><th>Lead</th></tr>{a_rows}</table>\
<form method=post action=/accounts><input name=key placeholder=\"KEY (e.g. SOYBIL)\" required> <input name=name placeholder=Name required> \
<select name=customer>{c_opts}</select> <select name=billable><option value=true>billable</option><option value=false>non-billable</option></select> \
<input name=lead placeholder=Lead> <button>Save account</button></form></section>"
    );
    Ok(render(&s, "Accounts", &user, &body))
}

async fn customer(State(s): State<Shared>, u: MaybeUser, Form(c): Form<Customer>) -> PageResult {
    user_or_login(&s, u)?;
    db::put_customer(&s.pool, &c).await.map_err(|e| PageError(e, s.clone()))?;
    Ok(see("/accounts"))
}

async fn account(State(s): State<Shared>, u: MaybeUser, Form(a): Form<Account>) -> PageResult {
    user_or_login(&s, u)?;
    db::put_account(&s.pool, &a).await.map_err(|e| PageError(e, s.clone()))?;
    Ok(see("/accounts"))
}

async fn reports(State(s): State<Shared>, u: MaybeUser, Query(q): Query<ReportQuery>) -> PageResult {
    let user = user_or_login(&s, u)?;
    let wrap = |e| PageError(e, s.clone());
    let customers = db::customers(&s.pool).await.map_err(wrap)?;
    let month = q.month.clone().unwrap_or_else(report::this_month);
    let chosen = q.customer.clone().or_else(|| customers.first().map(|c| c.key.clone()));
    let opts: String = customers
        .iter()
        .map(|c| {
            let sel = if Some(&c.key) == chosen.as_ref() { " selected" } else { "" };
            format!("<option value=\"{k}\"{sel}>{k} — {n}</option>", k = esc(&c.key), n = esc(&c.name))
        })
        .collect();
    let mut table = String::new();
    if let Some(c) = &chosen {
        let r = api::monthly_report(&s, c, &month).await.map_err(wrap)?;
        let mut rows = String::new();
        for a in &r.accounts {
            rows.push_str(&format!(
                "<tr><th colspan=2>{} — {}</th><th class=n>{}</th><th class=n>{}</th><th class=n>{}</th></tr>",
                esc(&a.account),
                esc(&a.account_name),
                hours(a.totals.time_spent_seconds),
                hours(a.totals.billable_seconds),
                hours(a.totals.non_billable_seconds)
            ));
            for l in r.lines.iter().filter(|l| l.account == a.account) {
                rows.push_str(&format!(
                    "<tr><td class=n>#{id}</td><td><a href=/issues/{id}>{t}</a></td><td class=n>{}</td><td class=n>{}</td><td class=n>{}</td></tr>",
                    hours(l.time_spent_seconds),
                    hours(l.billable_seconds),
                    hours(l.time_spent_seconds - l.billable_seconds),
                    id = l.issue_id,
                    t = esc(&l.issue_title)
                ));
            }
        }
        table = format!(
            "<h3>{name} · {month}</h3><table><tr><th colspan=2></th><th class=n>Hours</th><th class=n>Billable</th><th class=n>Non-billable</th></tr>{rows}\
<tr><th colspan=2>Total</th><th class=n id=total>{}</th><th class=n id=billable>{}</th><th class=n>{}</th></tr></table>\
<p><a href=\"/api/reports/monthly?customer={ck}&month={mk}&format=csv\">Download CSV</a> · \
<a href=\"/api/reports/monthly?customer={ck}&month={mk}\">JSON</a></p>",
            hours(r.total.time_spent_seconds),
            hours(r.total.billable_seconds),
            hours(r.total.non_billable_seconds),
            name = esc(&r.customer_name),
            month = esc(&r.month),
            ck = url_enc(&r.customer),
            mk = url_enc(&r.month),
        );
    }
    let body = format!(
        "<section><h2>Monthly report</h2><form><select name=customer>{opts}</select> <input type=month name=month value=\"{m}\"> <button>Show</button></form>{table}</section>",
        m = esc(&month)
    );
    Ok(render(&s, "Reports", &user, &body))
}

/// "1 issue", "2 issues".
fn count(n: &serde_json::Value, noun: &str) -> String {
    let n = n.as_i64().unwrap_or(0);
    if n == 1 {
        format!("1 {noun}")
    } else {
        format!("{n} {noun}s")
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn counts_are_pluralized() {
        assert_eq!(super::count(&serde_json::json!(1), "issue"), "1 issue");
        assert_eq!(super::count(&serde_json::json!(0), "issue"), "0 issues");
        assert_eq!(super::count(&serde_json::json!(12), "worklog"), "12 worklogs");
    }
}
