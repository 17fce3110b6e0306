//! The shared PostgreSQL database: schema migrations, and every query the app makes.
//!
//! Every change to an issue (its creation, a comment, a new status) stamps the issue with the id of the transaction
//! that made it (`xid8`). A node's search index catches up by reading, in one snapshot, every issue stamped at or
//! above its cursor, then moves the cursor to that snapshot's horizon (`pg_snapshot_xmin`): transactions below it
//! have all ended, so a change that commits late, out of order, is still read next time. Every write also announces
//! itself with `pg_notify('teamboard', …)`, delivered to every node when the transaction commits.

use chrono::{DateTime, NaiveDate, Utc};
use deadpool_postgres::{Manager, ManagerConfig, Pool, RecyclingMethod};
use serde::{Deserialize, Serialize};
use serde_json::json;
use tokio_postgres::NoTls;

use crate::Error;

/// The channel every node listens on for changes made by any node.
pub const CHANNEL: &str = "teamboard";

/// The schema, applied at start under an advisory lock so two nodes starting together do not race.
const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS users (
    name text PRIMARY KEY,
    created_at timestamptz NOT NULL DEFAULT now()
);
CREATE TABLE IF NOT EXISTS issues (
    id bigserial PRIMARY KEY,
    title text NOT NULL CHECK (length(title) BETWEEN 1 AND 200),
    body text NOT NULL DEFAULT '',
    status text NOT NULL DEFAULT 'open' CHECK (status IN ('open', 'in-progress', 'done')),
    author text NOT NULL REFERENCES users(name),
    created_at timestamptz NOT NULL DEFAULT now(),
    updated_at timestamptz NOT NULL DEFAULT now(),
    xid xid8 NOT NULL DEFAULT pg_current_xact_id()
);
CREATE INDEX IF NOT EXISTS issues_xid ON issues(xid);
CREATE TABLE IF NOT EXISTS comments (
    id bigserial PRIMARY KEY,
    issue_id bigint NOT NULL REFERENCES issues(id) ON DELETE CASCADE,
    author text NOT NULL REFERENCES users(name),
    body text NOT NULL CHECK (length(body) >= 1),
    created_at timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX IF NOT EXISTS comments_issue ON comments(issue_id);
CREATE TABLE IF NOT EXISTS attachments (
    id uuid PRIMARY KEY,
    issue_id bigint NOT NULL REFERENCES issues(id) ON DELETE CASCADE,
    filename text NOT NULL,
    content_type text NOT NULL,
    size bigint NOT NULL,
    sha256 text NOT NULL,
    author text NOT NULL REFERENCES users(name),
    created_at timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX IF NOT EXISTS attachments_issue ON attachments(issue_id);
CREATE TABLE IF NOT EXISTS customers (
    key text PRIMARY KEY CHECK (key ~ '^[A-Z][A-Z0-9]{1,15}$'),
    name text NOT NULL
);
CREATE TABLE IF NOT EXISTS accounts (
    key text PRIMARY KEY CHECK (key ~ '^[A-Z][A-Z0-9_-]{1,31}$'),
    name text NOT NULL,
    customer text NOT NULL REFERENCES customers(key),
    billable boolean NOT NULL,
    lead text NOT NULL DEFAULT ''
);
CREATE TABLE IF NOT EXISTS worklogs (
    id bigserial PRIMARY KEY,
    issue_id bigint NOT NULL REFERENCES issues(id) ON DELETE CASCADE,
    account text NOT NULL REFERENCES accounts(key),
    author text NOT NULL REFERENCES users(name),
    day date NOT NULL,
    time_spent_seconds integer NOT NULL CHECK (time_spent_seconds > 0 AND time_spent_seconds <= 86400),
    billable_seconds integer NOT NULL CHECK (billable_seconds >= 0 AND billable_seconds <= time_spent_seconds),
    description text NOT NULL DEFAULT '',
    created_at timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX IF NOT EXISTS worklogs_day ON worklogs(day);
CREATE TABLE IF NOT EXISTS api_tokens (
    sha256 text PRIMARY KEY,
    user_name text NOT NULL REFERENCES users(name),
    created_at timestamptz NOT NULL DEFAULT now()
);
";

/// A connection pool for the database at `url`.
pub fn pool(url: &str, size: usize) -> Result<Pool, Error> {
    let config: tokio_postgres::Config = url.parse().map_err(|e| Error::Config(format!("DATABASE_URL: {e}")))?;
    let manager = Manager::from_config(config, NoTls, ManagerConfig { recycling_method: RecyclingMethod::Fast });
    Pool::builder(manager).max_size(size).build().map_err(|e| Error::Config(format!("database pool: {e}")))
}

/// Applies the schema (idempotent), serialised across nodes by an advisory lock held for the transaction.
pub async fn migrate(pool: &Pool) -> Result<(), Error> {
    let mut client = pool.get().await?;
    let tx = client.transaction().await?;
    tx.execute("SELECT pg_advisory_xact_lock(7310001)", &[]).await?;
    tx.batch_execute(SCHEMA).await?;
    tx.commit().await?;
    Ok(())
}

/// An issue as listed and shown.
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Issue {
    pub id: i64,
    pub title: String,
    pub body: String,
    pub status: String,
    pub author: String,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
}

/// A comment on an issue.
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Comment {
    pub id: i64,
    pub author: String,
    pub body: String,
    pub created_at: DateTime<Utc>,
}

/// An attachment's record; the bytes sit in the shared attachment store.
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Attachment {
    pub id: uuid::Uuid,
    pub issue_id: i64,
    pub filename: String,
    pub content_type: String,
    pub size: i64,
    pub sha256: String,
    pub author: String,
    pub created_at: DateTime<Utc>,
}

/// Time logged on an issue against a customer account.
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Worklog {
    pub id: i64,
    pub issue_id: i64,
    pub account: String,
    pub author: String,
    pub day: NaiveDate,
    pub time_spent_seconds: i32,
    pub billable_seconds: i32,
    pub description: String,
}

/// A customer account that time is logged against.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Account {
    pub key: String,
    pub name: String,
    pub customer: String,
    pub billable: bool,
    #[serde(default)]
    pub lead: String,
}

/// A customer.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Customer {
    pub key: String,
    pub name: String,
}

/// What a search index needs of one issue: its text, comments included.
#[derive(Debug, Clone)]
pub struct IndexRow {
    pub id: i64,
    pub title: String,
    pub text: String,
    pub status: String,
}

fn issue(r: &tokio_postgres::Row) -> Issue {
    Issue {
        id: r.get("id"),
        title: r.get("title"),
        body: r.get("body"),
        status: r.get("status"),
        author: r.get("author"),
        created_at: r.get("created_at"),
        updated_at: r.get("updated_at"),
    }
}

/// Records a user on first sign-in.
pub async fn sign_in(pool: &Pool, user: &str) -> Result<(), Error> {
    let c = pool.get().await?;
    c.execute("INSERT INTO users(name) VALUES ($1) ON CONFLICT DO NOTHING", &[&user]).await?;
    Ok(())
}

/// Stores a personal access token for `user`, by its hash only.
pub async fn add_token(pool: &Pool, sha256: &str, user: &str) -> Result<(), Error> {
    let c = pool.get().await?;
    c.execute("INSERT INTO api_tokens(sha256, user_name) VALUES ($1, $2)", &[&sha256, &user]).await?;
    Ok(())
}

/// The user owning the token with this hash.
pub async fn token_user(pool: &Pool, sha256: &str) -> Result<Option<String>, Error> {
    let c = pool.get().await?;
    Ok(c.query_opt("SELECT user_name FROM api_tokens WHERE sha256 = $1", &[&sha256]).await?.map(|r| r.get(0)))
}

/// Creates an issue and announces it.
pub async fn create_issue(pool: &Pool, author: &str, title: &str, body: &str, node: &str) -> Result<Issue, Error> {
    let mut c = pool.get().await?;
    let tx = c.transaction().await?;
    let row = tx
        .query_one(
            "INSERT INTO issues(title, body, author) VALUES ($1, $2, $3)
             RETURNING id, title, body, status, author, created_at, updated_at",
            &[&title, &body, &author],
        )
        .await?;
    let issue = issue(&row);
    notify(&tx, json!({"type": "issue.created", "id": issue.id, "title": issue.title, "author": author, "node": node}))
        .await?;
    tx.commit().await?;
    Ok(issue)
}

/// Sets an issue's status.
pub async fn set_status(pool: &Pool, id: i64, status: &str, node: &str) -> Result<(), Error> {
    let mut c = pool.get().await?;
    let tx = c.transaction().await?;
    let n = tx
        .execute(
            "UPDATE issues SET status = $2, updated_at = now(), xid = pg_current_xact_id() WHERE id = $1",
            &[&id, &status],
        )
        .await?;
    if n == 0 {
        return Err(Error::NotFound(format!("issue {id}")));
    }
    notify(&tx, json!({"type": "issue.updated", "id": id, "status": status, "node": node})).await?;
    tx.commit().await?;
    Ok(())
}

/// Adds a comment, bumping the issue's change number so indexes pick up the text.
pub async fn add_comment(pool: &Pool, issue_id: i64, author: &str, body: &str, node: &str) -> Result<Comment, Error> {
    let mut c = pool.get().await?;
    let tx = c.transaction().await?;
    let n = tx
        .execute("UPDATE issues SET updated_at = now(), xid = pg_current_xact_id() WHERE id = $1", &[&issue_id])
        .await?;
    if n == 0 {
        return Err(Error::NotFound(format!("issue {issue_id}")));
    }
    let r = tx
        .query_one(
            "INSERT INTO comments(issue_id, author, body) VALUES ($1, $2, $3) RETURNING id, author, body, created_at",
            &[&issue_id, &author, &body],
        )
        .await?;
    let comment =
        Comment { id: r.get("id"), author: r.get("author"), body: r.get("body"), created_at: r.get("created_at") };
    notify(
        &tx,
        json!({"type": "comment.created", "id": issue_id, "comment": comment.id, "author": author, "node": node}),
    )
    .await?;
    tx.commit().await?;
    Ok(comment)
}

/// Records an attachment whose bytes are already in the store.
pub async fn add_attachment(pool: &Pool, a: &Attachment, node: &str) -> Result<(), Error> {
    let mut c = pool.get().await?;
    let tx = c.transaction().await?;
    tx.execute(
        "INSERT INTO attachments(id, issue_id, filename, content_type, size, sha256, author)
         VALUES ($1, $2, $3, $4, $5, $6, $7)",
        &[&a.id, &a.issue_id, &a.filename, &a.content_type, &a.size, &a.sha256, &a.author],
    )
    .await?;
    notify(
        &tx,
        json!({"type": "attachment.created", "id": a.issue_id, "attachment": a.id, "filename": a.filename, "node": node}),
    )
    .await?;
    tx.commit().await?;
    Ok(())
}

async fn notify(tx: &tokio_postgres::Transaction<'_>, event: serde_json::Value) -> Result<(), Error> {
    tx.execute("SELECT pg_notify($1, $2)", &[&CHANNEL, &event.to_string()]).await?;
    Ok(())
}

/// Whether an issue exists.
pub async fn issue_exists(pool: &Pool, id: i64) -> Result<bool, Error> {
    let c = pool.get().await?;
    Ok(c.query_opt("SELECT 1 FROM issues WHERE id = $1", &[&id]).await?.is_some())
}

/// The newest issues first.
pub async fn list_issues(pool: &Pool, limit: i64) -> Result<Vec<Issue>, Error> {
    let c = pool.get().await?;
    let rows = c
        .query(
            "SELECT id, title, body, status, author, created_at, updated_at FROM issues ORDER BY id DESC LIMIT $1",
            &[&limit],
        )
        .await?;
    Ok(rows.iter().map(issue).collect())
}

/// Issues by id, in the order given (for search results).
pub async fn issues_by_ids(pool: &Pool, ids: &[i64]) -> Result<Vec<Issue>, Error> {
    let c = pool.get().await?;
    let rows = c
        .query("SELECT id, title, body, status, author, created_at, updated_at FROM issues WHERE id = ANY($1)", &[&ids])
        .await?;
    let mut found: Vec<Issue> = rows.iter().map(issue).collect();
    found.sort_by_key(|i| ids.iter().position(|x| *x == i.id));
    Ok(found)
}

/// One issue with everything attached to it.
pub async fn get_issue(pool: &Pool, id: i64) -> Result<(Issue, Vec<Comment>, Vec<Attachment>, Vec<Worklog>), Error> {
    let c = pool.get().await?;
    let r = c
        .query_opt("SELECT id, title, body, status, author, created_at, updated_at FROM issues WHERE id = $1", &[&id])
        .await?
        .ok_or_else(|| Error::NotFound(format!("issue {id}")))?;
    let comments = c
        .query("SELECT id, author, body, created_at FROM comments WHERE issue_id = $1 ORDER BY id", &[&id])
        .await?
        .iter()
        .map(|r| Comment { id: r.get(0), author: r.get(1), body: r.get(2), created_at: r.get(3) })
        .collect();
    let attachments = c
        .query(
            "SELECT id, issue_id, filename, content_type, size, sha256, author, created_at FROM attachments
             WHERE issue_id = $1 ORDER BY created_at",
            &[&id],
        )
        .await?
        .iter()
        .map(attachment)
        .collect();
    let worklogs = c
        .query(
            "SELECT id, issue_id, account, author, day, time_spent_seconds, billable_seconds, description
             FROM worklogs WHERE issue_id = $1 ORDER BY day, id",
            &[&id],
        )
        .await?
        .iter()
        .map(|r| Worklog {
            id: r.get(0),
            issue_id: r.get(1),
            account: r.get(2),
            author: r.get(3),
            day: r.get(4),
            time_spent_seconds: r.get(5),
            billable_seconds: r.get(6),
            description: r.get(7),
        })
        .collect();
    Ok((issue(&r), comments, attachments, worklogs))
}

fn attachment(r: &tokio_postgres::Row) -> Attachment {
    Attachment {
        id: r.get(0),
        issue_id: r.get(1),
        filename: r.get(2),
        content_type: r.get(3),
        size: r.get(4),
        sha256: r.get(5),
        author: r.get(6),
        created_at: r.get(7),
    }
}

/// An attachment's record.
pub async fn get_attachment(pool: &Pool, id: uuid::Uuid) -> Result<Attachment, Error> {
    let c = pool.get().await?;
    let r = c
        .query_opt(
            "SELECT id, issue_id, filename, content_type, size, sha256, author, created_at FROM attachments WHERE id = $1",
            &[&id],
        )
        .await?
        .ok_or_else(|| Error::NotFound(format!("attachment {id}")))?;
    Ok(attachment(&r))
}

/// Creates or renames a customer.
pub async fn put_customer(pool: &Pool, c: &Customer) -> Result<(), Error> {
    let db = pool.get().await?;
    db.execute(
        "INSERT INTO customers(key, name) VALUES ($1, $2) ON CONFLICT (key) DO UPDATE SET name = EXCLUDED.name",
        &[&c.key, &c.name],
    )
    .await?;
    Ok(())
}

/// Creates or updates an account.
pub async fn put_account(pool: &Pool, a: &Account) -> Result<(), Error> {
    let db = pool.get().await?;
    db.execute(
        "INSERT INTO accounts(key, name, customer, billable, lead) VALUES ($1, $2, $3, $4, $5)
         ON CONFLICT (key) DO UPDATE SET name = EXCLUDED.name, customer = EXCLUDED.customer,
           billable = EXCLUDED.billable, lead = EXCLUDED.lead",
        &[&a.key, &a.name, &a.customer, &a.billable, &a.lead],
    )
    .await?;
    Ok(())
}

/// All accounts, for forms.
pub async fn accounts(pool: &Pool) -> Result<Vec<Account>, Error> {
    let db = pool.get().await?;
    Ok(db
        .query("SELECT key, name, customer, billable, lead FROM accounts ORDER BY key", &[])
        .await?
        .iter()
        .map(|r| Account { key: r.get(0), name: r.get(1), customer: r.get(2), billable: r.get(3), lead: r.get(4) })
        .collect())
}

/// All customers, for the report picker.
pub async fn customers(pool: &Pool) -> Result<Vec<Customer>, Error> {
    let db = pool.get().await?;
    Ok(db
        .query("SELECT key, name FROM customers ORDER BY key", &[])
        .await?
        .iter()
        .map(|r| Customer { key: r.get(0), name: r.get(1) })
        .collect())
}

/// What a new worklog says.
#[derive(Debug, Clone)]
pub struct NewWorklog {
    pub issue_id: i64,
    pub account: String,
    pub author: String,
    pub day: NaiveDate,
    pub time_spent_seconds: i32,
    /// `None`: all of it when the account is billable, none otherwise (Tempo's default).
    pub billable_seconds: Option<i32>,
    pub description: String,
}

/// Logs work; the billable time defaults from the account and may never exceed the time spent.
pub async fn add_worklog(pool: &Pool, w: &NewWorklog, node: &str) -> Result<Worklog, Error> {
    let mut c = pool.get().await?;
    let tx = c.transaction().await?;
    let billable: bool = tx
        .query_opt("SELECT billable FROM accounts WHERE key = $1", &[&w.account])
        .await?
        .ok_or_else(|| Error::BadRequest(format!("account {:?} does not exist", w.account)))?
        .get(0);
    let billable_seconds = w.billable_seconds.unwrap_or(if billable { w.time_spent_seconds } else { 0 });
    if billable_seconds > w.time_spent_seconds || billable_seconds < 0 {
        return Err(Error::BadRequest(format!(
            "billable time ({billable_seconds} s) must be between 0 and the time spent ({} s)",
            w.time_spent_seconds
        )));
    }
    if !issue_exists_tx(&tx, w.issue_id).await? {
        return Err(Error::NotFound(format!("issue {}", w.issue_id)));
    }
    let r = tx
        .query_one(
            "INSERT INTO worklogs(issue_id, account, author, day, time_spent_seconds, billable_seconds, description)
             VALUES ($1, $2, $3, $4, $5, $6, $7) RETURNING id",
            &[&w.issue_id, &w.account, &w.author, &w.day, &w.time_spent_seconds, &billable_seconds, &w.description],
        )
        .await?;
    let id: i64 = r.get(0);
    notify(&tx, json!({"type": "worklog.created", "id": w.issue_id, "worklog": id, "author": w.author, "node": node}))
        .await?;
    tx.commit().await?;
    Ok(Worklog {
        id,
        issue_id: w.issue_id,
        account: w.account.clone(),
        author: w.author.clone(),
        day: w.day,
        time_spent_seconds: w.time_spent_seconds,
        billable_seconds,
        description: w.description.clone(),
    })
}

async fn issue_exists_tx(tx: &tokio_postgres::Transaction<'_>, id: i64) -> Result<bool, Error> {
    Ok(tx.query_opt("SELECT 1 FROM issues WHERE id = $1", &[&id]).await?.is_some())
}

/// One line of a monthly report: an account's time on one issue.
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct ReportLine {
    pub account: String,
    pub account_name: String,
    pub issue_id: i64,
    pub issue_title: String,
    pub time_spent_seconds: i64,
    pub billable_seconds: i64,
}

/// A customer's worklogs in `[from, to)`, summed per account and issue.
pub async fn report_lines(
    pool: &Pool,
    customer: &str,
    from: NaiveDate,
    to: NaiveDate,
) -> Result<Vec<ReportLine>, Error> {
    let c = pool.get().await?;
    let rows = c
        .query(
            "SELECT a.key, a.name, i.id, i.title,
                    sum(w.time_spent_seconds)::bigint, sum(w.billable_seconds)::bigint
             FROM worklogs w JOIN accounts a ON a.key = w.account JOIN issues i ON i.id = w.issue_id
             WHERE a.customer = $1 AND w.day >= $2 AND w.day < $3
             GROUP BY a.key, a.name, i.id, i.title ORDER BY a.key, i.id",
            &[&customer, &from, &to],
        )
        .await?;
    Ok(rows
        .iter()
        .map(|r| ReportLine {
            account: r.get(0),
            account_name: r.get(1),
            issue_id: r.get(2),
            issue_title: r.get(3),
            time_spent_seconds: r.get(4),
            billable_seconds: r.get(5),
        })
        .collect())
}

/// The customer named `key`, if any.
pub async fn customer(pool: &Pool, key: &str) -> Result<Option<Customer>, Error> {
    let c = pool.get().await?;
    Ok(c.query_opt("SELECT key, name FROM customers WHERE key = $1", &[&key])
        .await?
        .map(|r| Customer { key: r.get(0), name: r.get(1) }))
}

/// One pass of catching up: every issue stamped at or above `cursor`, read in one snapshot, handed to `apply` in
/// pages of `page` (so memory stays bounded); returns the snapshot's horizon, the next cursor.
pub async fn changes<F, Fut>(pool: &Pool, cursor: u64, page: i64, mut apply: F) -> Result<u64, Error>
where
    F: FnMut(Vec<IndexRow>) -> Fut,
    Fut: std::future::Future<Output = Result<(), Error>>,
{
    let mut c = pool.get().await?;
    let tx = c
        .build_transaction()
        .isolation_level(tokio_postgres::IsolationLevel::RepeatableRead)
        .read_only(true)
        .start()
        .await?;
    let horizon: String = tx.query_one("SELECT pg_snapshot_xmin(pg_current_snapshot())::text", &[]).await?.get(0);
    let horizon: u64 =
        horizon.parse().map_err(|_| Error::Search(format!("unexpected transaction horizon {horizon:?}")))?;
    let (mut after_xid, mut after_id) = (cursor.to_string(), 0i64);
    loop {
        let rows = tx
            .query(
                "SELECT i.id, i.xid::text, i.title,
                        i.body || E'\\n' || coalesce(string_agg(c.body, E'\\n' ORDER BY c.id), ''), i.status
                 FROM issues i LEFT JOIN comments c ON c.issue_id = i.id
                 WHERE i.xid >= $1::text::xid8 AND (i.xid, i.id) > ($2::text::xid8, $3)
                 GROUP BY i.id ORDER BY i.xid, i.id LIMIT $4",
                &[&cursor.to_string(), &after_xid, &after_id, &page],
            )
            .await?;
        let full = rows.len() as i64 == page;
        if let Some(last) = rows.last() {
            (after_xid, after_id) = (last.get(1), last.get(0));
        }
        let rows: Vec<IndexRow> =
            rows.iter().map(|r| IndexRow { id: r.get(0), title: r.get(2), text: r.get(3), status: r.get(4) }).collect();
        if !rows.is_empty() {
            apply(rows).await?;
        }
        if !full {
            break;
        }
    }
    tx.commit().await?;
    Ok(horizon)
}

/// Counts, for /status and the front page.
pub async fn counts(pool: &Pool) -> Result<serde_json::Value, Error> {
    let c = pool.get().await?;
    let r = c
        .query_one(
            "SELECT (SELECT count(*) FROM issues), (SELECT count(*) FROM comments),
                    (SELECT count(*) FROM attachments), (SELECT count(*) FROM worklogs)",
            &[],
        )
        .await?;
    let (i, c2, a, w): (i64, i64, i64, i64) = (r.get(0), r.get(1), r.get(2), r.get(3));
    Ok(json!({"issues": i, "comments": c2, "attachments": a, "worklogs": w}))
}
