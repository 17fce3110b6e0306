//! The audit log: every request that changes state, every refused request and every read of Secret values, one
//! JSON line each — who, from where, what, on which object, with what result — fsynced, rotated by size, and never
//! holding a Secret value or a token.

use std::fs::{File, OpenOptions};
use std::io::{BufRead, BufReader, Write};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use axum::extract::{Request, State};
use axum::http::{Method, StatusCode};
use axum::middleware::Next;
use axum::response::Response;
use capstan_model::{Kind, ObjectKey};
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

/// The file the log is appended to, under the data directory.
pub const AUDIT_FILE: &str = "audit/audit.log";
/// Refusals without a valid token written per client address and minute; past it, one line says the rest of that
/// minute's are left out, so that a flood of them cannot rotate the record of real changes away.
pub const REFUSALS_PER_MINUTE: u32 = 10;
/// A file is rotated when it passes this size.
pub const ROTATE_BYTES: u64 = 16 << 20;
/// Rotated files kept (`audit.log.1` is the newest).
pub const KEEP_FILES: usize = 5;
/// The response header carrying the request's id (also in its audit line).
pub const REQUEST_ID_HEADER: &str = "x-request-id";

/// One audit line.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct AuditRecord {
    pub time: DateTime<Utc>,
    pub request_id: String,
    /// Who asked: the token's identity, or `anonymous` when no valid token came.
    pub user: String,
    pub role: String,
    /// What was asked: `apply`, `delete`, `rollback`, `get`, … (`denied` requests keep the verb they asked for).
    pub verb: String,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub kind: String,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub namespace: String,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub name: String,
    /// The objects a batch (`apply`) changed, as `Kind/namespace/name`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub objects: Vec<String>,
    /// The HTTP status answered.
    pub status: u16,
    /// `allowed`, `denied` (401/403) or `failed` (any other error).
    pub result: String,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub source: String,
}

/// Who made a request, as the authentication found it; put in the response's extensions for the audit layer.
#[derive(Debug, Clone)]
pub struct Identity {
    pub user: String,
    pub role: String,
}

/// The objects a handler changed, put in the response's extensions for the audit line.
#[derive(Debug, Clone, Default)]
pub struct Touched(pub Vec<ObjectKey>);

/// The client's address, put in every request's extensions by the listener.
#[derive(Debug, Clone, Copy)]
pub struct Source(pub SocketAddr);

/// Why the audit log cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum AuditError {
    #[error("audit log {path}: {source}")]
    Io { path: PathBuf, source: std::io::Error },
}

/// The log: appends are serialised, each line written whole and fsynced before the request's answer goes out.
pub struct AuditLog {
    path: PathBuf,
    file: Mutex<(File, u64)>,
    rotate_at: u64,
    /// Anonymous refusals counted per address in the current minute (the minute, then the counts).
    refusals: Mutex<(i64, std::collections::HashMap<std::net::IpAddr, u32>)>,
}

impl AuditLog {
    /// Opens (or starts) the log under `data_dir`. A file with a line that does not read as a record (a torn write,
    /// a damaged disk) is set aside as `audit.log.damaged-<time>` and a new one started: never truncated in place.
    pub fn open(data_dir: &Path) -> Result<AuditLog, AuditError> {
        let path = data_dir.join(AUDIT_FILE);
        let io = |source| AuditError::Io { path: path.clone(), source };
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir).map_err(io)?;
        }
        if path.exists() && !readable(&path).map_err(io)? {
            let aside = path.with_extension(format!("log.damaged-{}", Utc::now().format("%Y%m%dT%H%M%S")));
            tracing::warn!(
                "audit log {} is damaged; kept as {} and a new one started",
                path.display(),
                aside.display()
            );
            std::fs::rename(&path, &aside).map_err(io)?;
        }
        let file = open_append(&path).map_err(io)?;
        let len = file.metadata().map_err(io)?.len();
        Ok(AuditLog { path, file: Mutex::new((file, len)), rotate_at: ROTATE_BYTES, refusals: Mutex::default() })
    }

    /// The same log, rotated at `bytes` instead of [`ROTATE_BYTES`].
    pub fn rotating_at(mut self, bytes: u64) -> AuditLog {
        self.rotate_at = bytes;
        self
    }

    /// Appends one record and syncs it to disk; rotates first when the file is full.
    pub fn append(&self, record: &AuditRecord) -> Result<(), AuditError> {
        let io = |source| AuditError::Io { path: self.path.clone(), source };
        let mut line = serde_json::to_vec(record).map_err(|e| io(std::io::Error::other(e)))?;
        line.push(b'\n');
        let mut guard = self.file.lock().unwrap_or_else(|p| p.into_inner());
        if guard.1 + line.len() as u64 > self.rotate_at && guard.1 > 0 {
            rotate(&self.path).map_err(io)?;
            *guard = (open_append(&self.path).map_err(io)?, 0);
        }
        guard.0.write_all(&line).map_err(io)?;
        guard.0.sync_data().map_err(io)?;
        guard.1 += line.len() as u64;
        Ok(())
    }

    /// Whether an anonymous refusal from `source` at `now` is written: the first [`REFUSALS_PER_MINUTE`] of a minute
    /// are, then one more that says the rest are left out (`Some(true)`), then none until the next minute.
    pub fn admit_refusal(&self, source: Option<std::net::IpAddr>, now: DateTime<Utc>) -> Option<bool> {
        let Some(ip) = source else { return Some(false) };
        let minute = now.timestamp().div_euclid(60);
        let mut guard = self.refusals.lock().unwrap_or_else(|p| p.into_inner());
        if guard.0 != minute {
            *guard = (minute, std::collections::HashMap::new());
        }
        let n = guard.1.entry(ip).or_insert(0);
        *n = n.saturating_add(1);
        match *n {
            n if n <= REFUSALS_PER_MINUTE => Some(false),
            n if n == REFUSALS_PER_MINUTE + 1 => Some(true),
            _ => None,
        }
    }

    /// Every record kept, oldest first (rotated files, then the current one); lines that do not read are skipped.
    pub fn read_all(&self) -> Result<Vec<AuditRecord>, AuditError> {
        let mut out = Vec::new();
        let mut files: Vec<PathBuf> = (1..=KEEP_FILES).rev().map(|n| rotated(&self.path, n)).collect();
        files.push(self.path.clone());
        for f in files.into_iter().filter(|f| f.exists()) {
            let file = File::open(&f).map_err(|source| AuditError::Io { path: f.clone(), source })?;
            for line in BufReader::new(file).lines() {
                let line = line.map_err(|source| AuditError::Io { path: f.clone(), source })?;
                if let Ok(r) = serde_json::from_str::<AuditRecord>(&line) {
                    out.push(r);
                }
            }
        }
        Ok(out)
    }
}

fn open_append(path: &Path) -> std::io::Result<File> {
    use std::os::unix::fs::OpenOptionsExt;
    OpenOptions::new().create(true).append(true).mode(0o600).open(path)
}

fn rotated(path: &Path, n: usize) -> PathBuf {
    PathBuf::from(format!("{}.{n}", path.display()))
}

/// `audit.log` → `audit.log.1` → … → `audit.log.5`, the oldest dropped.
fn rotate(path: &Path) -> std::io::Result<()> {
    for n in (1..KEEP_FILES).rev() {
        let from = rotated(path, n);
        if from.exists() {
            std::fs::rename(&from, rotated(path, n + 1))?;
        }
    }
    std::fs::rename(path, rotated(path, 1))
}

/// Whether every line of the file reads as a record.
fn readable(path: &Path) -> std::io::Result<bool> {
    for line in BufReader::new(File::open(path)?).lines() {
        if serde_json::from_str::<AuditRecord>(&line?).is_err() {
            return Ok(false);
        }
    }
    Ok(true)
}

/// What a request asks, from its method and path: the verb and the object it names, if any.
pub fn describe_request(method: &Method, path: &str) -> (String, String, String, String) {
    let seg: Vec<&str> = path.trim_matches('/').split('/').collect();
    let kind_of = |plural: &str| Kind::parse(plural).map(|k| k.name().to_string()).unwrap_or_else(|| plural.into());
    let write = *method != Method::GET && *method != Method::HEAD;
    match seg.as_slice() {
        ["api", "v1", "apply"] => ("apply".into(), String::new(), String::new(), String::new()),
        ["api", "v1", "shutdown"] => ("shutdown".into(), String::new(), String::new(), String::new()),
        ["api", "v1", "watch"] => ("watch".into(), String::new(), String::new(), String::new()),
        ["api", "v1", "tokens"] => {
            let verb = if write { "create" } else { "list" };
            (verb.into(), "Token".into(), String::new(), String::new())
        }
        ["api", "v1", "tokens", name] => ("revoke".into(), "Token".into(), String::new(), name.to_string()),
        ["api", "v1", "encryption", "rotate"] => ("rotate-key".into(), String::new(), String::new(), String::new()),
        ["api", "v1", "incidents", id, action] => {
            (action.to_string(), "Incident".into(), String::new(), id.to_string())
        }
        ["api", "v1", "namespaces", ns, plural, name] => {
            let verb = if *method == Method::DELETE { "delete" } else { "get" };
            (verb.into(), kind_of(plural), ns.to_string(), name.to_string())
        }
        ["api", "v1", "namespaces", ns, plural, name, action] => {
            (action.to_string(), kind_of(plural), ns.to_string(), name.to_string())
        }
        ["api", "v1", "namespaces", ns, plural, name, "volumes", _, action] => {
            (format!("volume-{action}"), kind_of(plural), ns.to_string(), name.to_string())
        }
        ["api", "v1", plural, name] => {
            let verb = if *method == Method::DELETE { "delete" } else { "get" };
            (verb.into(), kind_of(plural), String::new(), name.to_string())
        }
        ["api", "v1", plural, name, "events"] => ("events".into(), kind_of(plural), String::new(), name.to_string()),
        // The dashboard's actions and sign-in, as the same verbs.
        ["ui", "apps", ns, name, action] => (action.to_string(), "App".into(), ns.to_string(), name.to_string()),
        ["ui", "login"] if write => ("sign-in".into(), String::new(), String::new(), String::new()),
        ["ui", "logout"] => ("sign-out".into(), String::new(), String::new(), String::new()),
        ["api", "v1", plural] => {
            let verb = if write { "create" } else { "list" };
            (verb.into(), kind_of(plural), String::new(), String::new())
        }
        _ => ((if write { "write" } else { "read" }).into(), String::new(), String::new(), String::new()),
    }
}

/// Whether the request is audited once answered: it changes state, was refused, or showed Secret values (the
/// handler that returned them unredacted, or opened a stream that may carry them, marked the answer).
fn audited(method: &Method, status: StatusCode, secret_values: bool) -> bool {
    let write = *method != Method::GET && *method != Method::HEAD;
    let denied = status == StatusCode::UNAUTHORIZED || status == StatusCode::FORBIDDEN;
    write || denied || secret_values
}

/// Put in a response's extensions by a handler that shows Secret values (or streams that may): the read is audited.
#[derive(Debug, Clone, Copy)]
pub struct SecretValuesShown;

/// The audit layer, outside authentication (so that refusals are recorded too): answers the request, then writes
/// its line before the answer leaves. A line that cannot be written turns the answer into a 500 for a change that
/// was made — the change stands, and the failure is said — since a change that cannot be audited must not pass
/// unseen.
pub async fn layer(State(log): State<std::sync::Arc<AuditLog>>, req: Request, next: Next) -> Response {
    let method = req.method().clone();
    let path = req.uri().path().to_string();
    let source_addr = req.extensions().get::<Source>().map(|s| s.0);
    let source = source_addr.map(|s| s.to_string()).unwrap_or_default();
    let request_id = uuid::Uuid::new_v4().to_string();
    let mut response = next.run(req).await;
    if let Ok(v) = axum::http::HeaderValue::from_str(&request_id) {
        response.headers_mut().insert(REQUEST_ID_HEADER, v);
    }
    let status = response.status();
    if !audited(&method, status, response.extensions().get::<SecretValuesShown>().is_some()) {
        return response;
    }
    let (mut verb, kind, namespace, name) = describe_request(&method, &path);
    let identity = response.extensions().get::<Identity>().cloned();
    if identity.is_none() && status == StatusCode::UNAUTHORIZED {
        match log.admit_refusal(source_addr.map(|a| a.ip()), Utc::now()) {
            Some(false) => {}
            Some(true) => verb = format!("{verb} (more refusals from this address this minute are left out)"),
            None => return response,
        }
    }
    let objects =
        response.extensions().get::<Touched>().map(|t| t.0.iter().map(|k| k.to_string()).collect()).unwrap_or_default();
    let result = match status {
        StatusCode::UNAUTHORIZED | StatusCode::FORBIDDEN => "denied",
        s if s.is_success() || s.is_redirection() || s == StatusCode::SWITCHING_PROTOCOLS => "allowed",
        _ => "failed",
    };
    let record = AuditRecord {
        time: Utc::now(),
        request_id,
        user: identity.as_ref().map_or_else(|| "anonymous".into(), |i| i.user.clone()),
        role: identity.map(|i| i.role).unwrap_or_default(),
        verb,
        kind,
        namespace,
        name,
        objects,
        status: status.as_u16(),
        result: result.into(),
        source,
    };
    let written = tokio::task::spawn_blocking(move || log.append(&record)).await;
    match written {
        Ok(Ok(())) => response,
        Ok(Err(e)) => {
            tracing::error!("{e}");
            crate::ApiError::Status(StatusCode::INTERNAL_SERVER_ERROR, format!("the request was not audited: {e}"))
                .into_response()
        }
        Err(e) => crate::ApiError::Status(StatusCode::INTERNAL_SERVER_ERROR, format!("audit: {e}")).into_response(),
    }
}

use axum::response::IntoResponse;

#[cfg(test)]
mod tests {
    use super::*;

    fn record(n: u32) -> AuditRecord {
        AuditRecord {
            time: Utc::now(),
            request_id: format!("r{n}"),
            user: "admin".into(),
            role: "admin".into(),
            verb: "apply".into(),
            kind: String::new(),
            namespace: String::new(),
            name: String::new(),
            objects: vec!["App/default/web".into()],
            status: 200,
            result: "allowed".into(),
            source: "127.0.0.1:5000".into(),
        }
    }

    #[test]
    fn lines_are_appended_read_back_and_survive_a_reopen() {
        let dir = tempfile::tempdir().expect("tempdir");
        let log = AuditLog::open(dir.path()).expect("open");
        log.append(&record(1)).expect("append");
        log.append(&record(2)).expect("append");
        drop(log);
        let log = AuditLog::open(dir.path()).expect("reopen");
        log.append(&record(3)).expect("append");
        let ids: Vec<String> = log.read_all().expect("read").into_iter().map(|r| r.request_id).collect();
        assert_eq!(ids, ["r1", "r2", "r3"]);
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(dir.path().join(AUDIT_FILE)).expect("meta").permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
    }

    #[test]
    fn a_full_file_is_rotated_and_the_oldest_beyond_the_kept_ones_dropped() {
        let dir = tempfile::tempdir().expect("tempdir");
        // A line with a one-digit id and its newline; ids of two digits are one byte longer.
        let one = serde_json::to_vec(&record(0)).expect("json").len() as u64 + 1;
        let log = AuditLog::open(dir.path()).expect("open").rotating_at((one + 1) * 2);
        for n in 0..20 {
            log.append(&record(n)).expect("append");
        }
        let kept = log.read_all().expect("read");
        // Two lines per file, the current one and five rotated: the last twelve.
        let ids: Vec<String> = kept.iter().map(|r| r.request_id.clone()).collect();
        let want: Vec<String> = (8..20).map(|n| format!("r{n}")).collect();
        assert_eq!(ids, want);
        assert!(!rotated(&dir.path().join(AUDIT_FILE), KEEP_FILES + 1).exists());
    }

    #[test]
    fn a_damaged_log_is_set_aside_never_truncated() {
        let dir = tempfile::tempdir().expect("tempdir");
        let log = AuditLog::open(dir.path()).expect("open");
        log.append(&record(1)).expect("append");
        drop(log);
        let path = dir.path().join(AUDIT_FILE);
        let mut f = OpenOptions::new().append(true).open(&path).expect("open");
        f.write_all(b"{\"time\": \"torn").expect("write");
        drop(f);
        let before = std::fs::read(&path).expect("read");
        let log = AuditLog::open(dir.path()).expect("reopen");
        let aside: Vec<PathBuf> = std::fs::read_dir(dir.path().join("audit"))
            .expect("dir")
            .filter_map(|e| e.ok().map(|e| e.path()))
            .filter(|p| p.to_string_lossy().contains("damaged"))
            .collect();
        assert_eq!(aside.len(), 1, "{aside:?}");
        assert_eq!(std::fs::read(&aside[0]).expect("read"), before, "kept whole");
        assert!(log.read_all().expect("read").is_empty(), "a new log is started");
    }

    #[test]
    fn refusals_without_a_token_are_written_ten_a_minute_per_address_then_said_left_out() {
        let dir = tempfile::tempdir().expect("tempdir");
        let log = AuditLog::open(dir.path()).expect("open");
        let t0 = DateTime::parse_from_rfc3339("2026-12-06T10:00:00Z").expect("time").with_timezone(&Utc);
        let a: std::net::IpAddr = "10.0.0.1".parse().expect("ip");
        let b: std::net::IpAddr = "10.0.0.2".parse().expect("ip");
        let verdicts: Vec<Option<bool>> = (0..13).map(|_| log.admit_refusal(Some(a), t0)).collect();
        assert!(verdicts[..10].iter().all(|v| *v == Some(false)), "{verdicts:?}");
        assert_eq!(verdicts[10], Some(true), "the eleventh says the rest are left out");
        assert_eq!(&verdicts[11..], [None, None]);
        assert_eq!(log.admit_refusal(Some(b), t0), Some(false), "another address has its own count");
        let next = t0 + chrono::Duration::seconds(60);
        assert_eq!(log.admit_refusal(Some(a), next), Some(false), "a new minute starts again");
    }

    #[test]
    fn requests_are_named_by_verb_and_object() {
        let d = |m: Method, p: &str| describe_request(&m, p);
        assert_eq!(d(Method::POST, "/api/v1/apply").0, "apply");
        assert_eq!(
            d(Method::DELETE, "/api/v1/namespaces/shop/apps/web"),
            ("delete".into(), "App".into(), "shop".into(), "web".into())
        );
        assert_eq!(d(Method::GET, "/api/v1/namespaces/default/secrets/db").1, "Secret");
        assert_eq!(d(Method::POST, "/api/v1/namespaces/default/apps/web/rollback").0, "rollback");
        assert_eq!(d(Method::POST, "/api/v1/namespaces/default/apps/web/volumes/data/sync").0, "volume-sync");
        assert_eq!(d(Method::POST, "/api/v1/incidents/inc-1/acknowledge").0, "acknowledge");
        assert_eq!(d(Method::POST, "/api/v1/tokens"), ("create".into(), "Token".into(), String::new(), String::new()));
        assert_eq!(d(Method::DELETE, "/api/v1/tokens/ci").0, "revoke");
        assert_eq!(d(Method::POST, "/api/v1/encryption/rotate").0, "rotate-key");
        assert!(audited(&Method::GET, StatusCode::OK, true), "Secret values shown (the handler's mark)");
        assert!(audited(&Method::GET, StatusCode::UNAUTHORIZED, false), "a refusal");
        assert!(audited(&Method::GET, StatusCode::FORBIDDEN, false), "a refusal");
        assert!(audited(&Method::POST, StatusCode::OK, false), "a change");
        assert!(!audited(&Method::GET, StatusCode::OK, false), "a plain read");
    }
}
