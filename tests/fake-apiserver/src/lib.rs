//! An in-process fake Kubernetes API server over real HTTP on loopback, for tests and benchmarks.
//!
//! It speaks the part of the API that a client applying and watching objects uses: server-side apply with field
//! managers, managed fields and conflicts (`force` takes fields over), create, replace with resourceVersion
//! preconditions, JSON merge patch, get, list and watch with label selectors, delete with garbage collection of
//! owned objects, and `status` subresources. Object names are validated as the real server does. Tests can inject
//! what a real cluster does to a client: bearer-token checks (401), forbidden verbs (403) and rejected objects
//! (422). Every request is recorded with its verb, so a test can compare what a client does with what its RBAC
//! grants. It is not Kubernetes: no schemas, no controllers; a test sets an object's status to play one.

use std::collections::{BTreeMap, BTreeSet};
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use axum::body::{Body, Bytes};
use axum::extract::State;
use axum::http::{HeaderMap, Method, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use serde_json::{json, Map, Value};

/// A field path: the keys from the object's root to a leaf (lists are leaves: they are replaced whole).
type Path = Vec<String>;

/// Where an object lives: API group ("" for core), resource (plural), namespace ("" when cluster-scoped), name.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Key {
    pub group: String,
    pub resource: String,
    pub namespace: String,
    pub name: String,
}

impl Key {
    pub fn new(group: &str, resource: &str, namespace: &str, name: &str) -> Key {
        Key { group: group.into(), resource: resource.into(), namespace: namespace.into(), name: name.into() }
    }
}

/// One request the server received, as RBAC sees it.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct Request {
    /// get, list, watch, create, update, patch, delete.
    pub verb: String,
    pub group: String,
    /// The resource, with `/status` when the status subresource was addressed.
    pub resource: String,
    pub namespace: String,
    pub name: String,
    /// The HTTP status answered.
    pub code: u16,
}

#[derive(Debug, Clone)]
struct Stored {
    value: Value,
    /// Per field manager, the fields it owns (main resource and status subresource together).
    managers: BTreeMap<String, (BTreeSet<Path>, &'static str)>,
}

#[derive(Debug, Clone)]
struct Event {
    rv: u64,
    group: String,
    resource: String,
    namespace: String,
    kind: &'static str,
    object: Value,
}

#[derive(Default)]
struct Faults {
    forbidden: BTreeSet<(String, String)>,
    rejected: BTreeMap<(String, String), String>,
}

struct Inner {
    objects: BTreeMap<Key, Stored>,
    rv: u64,
    events: Vec<Event>,
    audit: Vec<Request>,
    faults: Faults,
    token: Option<String>,
}

type Shared = Arc<(Mutex<Inner>, tokio::sync::watch::Sender<u64>)>;

/// A running fake API server; it stops when dropped.
pub struct FakeApiServer {
    pub addr: SocketAddr,
    shared: Shared,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for FakeApiServer {
    fn drop(&mut self) {
        self.task.abort();
    }
}

fn lock(shared: &Shared) -> MutexGuard<'_, Inner> {
    shared.0.lock().unwrap_or_else(|p| p.into_inner())
}

impl FakeApiServer {
    /// Starts a server on 127.0.0.1 with a random port that accepts any (or no) bearer token.
    pub async fn start() -> std::io::Result<FakeApiServer> {
        Self::start_on("127.0.0.1:0", None).await
    }

    /// Starts a server on `addr`; with a token, requests without `Authorization: Bearer <token>` get 401.
    pub async fn start_on(addr: &str, token: Option<&str>) -> std::io::Result<FakeApiServer> {
        let listener = tokio::net::TcpListener::bind(addr).await?;
        let addr = listener.local_addr()?;
        let inner = Inner {
            objects: BTreeMap::new(),
            rv: 1,
            events: Vec::new(),
            audit: Vec::new(),
            faults: Faults::default(),
            token: token.map(str::to_string),
        };
        let shared: Shared = Arc::new((Mutex::new(inner), tokio::sync::watch::channel(1).0));
        let app = axum::Router::new().fallback(handle).with_state(shared.clone());
        let task = tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        Ok(FakeApiServer { addr, shared, task })
    }

    /// The server's URL, `http://127.0.0.1:PORT`.
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// A kubeconfig naming this server (context `fake`), with the given bearer token.
    pub fn kubeconfig(&self, token: &str) -> String {
        format!(
            "apiVersion: v1\nkind: Config\ncurrent-context: fake\nclusters:\n- name: fake\n  cluster:\n    server: {}\n\
             contexts:\n- name: fake\n  context:\n    cluster: fake\n    user: tester\n    namespace: default\n\
             users:\n- name: tester\n  user:\n    token: {token}\n",
            self.url()
        )
    }

    /// The stored object, as the API would return it.
    pub fn get(&self, group: &str, resource: &str, namespace: &str, name: &str) -> Option<Value> {
        lock(&self.shared).objects.get(&Key::new(group, resource, namespace, name)).map(|s| s.value.clone())
    }

    /// Every stored object of a resource, in all namespaces.
    pub fn list(&self, group: &str, resource: &str) -> Vec<Value> {
        lock(&self.shared)
            .objects
            .iter()
            .filter(|(k, _)| k.group == group && k.resource == resource)
            .map(|(_, s)| s.value.clone())
            .collect()
    }

    /// How many objects are stored.
    pub fn len(&self) -> usize {
        lock(&self.shared).objects.len()
    }

    /// Whether nothing is stored.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The field managers of an object, each with the fields it owns written as `.a.b.c`.
    pub fn managers(&self, group: &str, resource: &str, namespace: &str, name: &str) -> BTreeMap<String, Vec<String>> {
        lock(&self.shared)
            .objects
            .get(&Key::new(group, resource, namespace, name))
            .map(|s| {
                s.managers
                    .iter()
                    .map(|(m, (paths, _))| (m.clone(), paths.iter().map(|p| format!(".{}", p.join("."))).collect()))
                    .collect()
            })
            .unwrap_or_default()
    }

    /// Applies an object in-process as field manager `manager` (a user's `kubectl apply --server-side --force-conflicts`),
    /// without going through HTTP or the audit log. Returns the HTTP status it would have answered.
    pub fn apply_object(&self, manager: &str, group: &str, version: &str, resource: &str, object: &Value) -> u16 {
        let ns = object["metadata"]["namespace"].as_str().unwrap_or("").to_string();
        let t = Target {
            group: group.into(),
            version: version.into(),
            namespace: (!ns.is_empty()).then(|| ns.clone()),
            resource: resource.into(),
            name: object["metadata"]["name"].as_str().map(str::to_string),
            sub: None,
        };
        let q = BTreeMap::from([
            ("fieldManager".to_string(), manager.to_string()),
            ("force".to_string(), "true".to_string()),
        ]);
        let body = Bytes::from(object.to_string());
        let code = {
            let mut inner = lock(&self.shared);
            let audited = inner.audit.len();
            let code = write(&mut inner, &t, "patch", &q, "application/apply-patch+yaml", &body, &ns).status().as_u16();
            inner.audit.truncate(audited);
            code
        };
        self.notify();
        code
    }

    /// Deletes an object in-process (and what it owns), without going through HTTP or the audit log.
    pub fn delete_object(&self, group: &str, resource: &str, namespace: &str, name: &str) -> bool {
        let found = lock(&self.shared).delete(&Key::new(group, resource, namespace, name), false).is_some();
        self.notify();
        found
    }

    /// Plays a controller: sets an object's status (and, as a controller does, `observedGeneration` is the
    /// caller's to set). Returns false when there is no such object.
    pub fn set_status(&self, group: &str, resource: &str, namespace: &str, name: &str, status: Value) -> bool {
        let mut inner = lock(&self.shared);
        let key = Key::new(group, resource, namespace, name);
        let Some(mut stored) = inner.objects.get(&key).cloned() else { return false };
        stored.value["status"] = status;
        inner.commit(&key, stored, "MODIFIED");
        drop(inner);
        self.notify();
        true
    }

    /// Makes `verb` on `resource` answer 403 Forbidden, as a missing RBAC grant does.
    pub fn forbid(&self, verb: &str, resource: &str) {
        lock(&self.shared).faults.forbidden.insert((verb.into(), resource.into()));
    }

    /// Makes writes of the object `resource`/`name` answer 422 Invalid with `message`, as admission or schema
    /// validation does.
    pub fn reject(&self, resource: &str, name: &str, message: &str) {
        lock(&self.shared).faults.rejected.insert((resource.into(), name.into()), message.into());
    }

    /// Lifts every injected fault.
    pub fn heal(&self) {
        lock(&self.shared).faults = Faults::default();
    }

    /// Every request received so far.
    pub fn audit(&self) -> Vec<Request> {
        lock(&self.shared).audit.clone()
    }

    /// Forgets the requests received so far.
    pub fn clear_audit(&self) {
        lock(&self.shared).audit.clear();
    }

    fn notify(&self) {
        let rv = lock(&self.shared).rv;
        self.shared.1.send_replace(rv);
    }
}

impl Inner {
    fn next_rv(&mut self) -> u64 {
        self.rv += 1;
        self.rv
    }

    /// Stores an object under a new resourceVersion and records the event.
    fn commit(&mut self, key: &Key, mut stored: Stored, kind: &'static str) -> Value {
        let rv = self.next_rv();
        stored.value["metadata"]["resourceVersion"] = json!(rv.to_string());
        stored.value["metadata"]["managedFields"] = managed_fields(&stored.managers);
        let object = stored.value.clone();
        self.objects.insert(key.clone(), stored);
        self.events.push(Event {
            rv,
            group: key.group.clone(),
            resource: key.resource.clone(),
            namespace: key.namespace.clone(),
            kind,
            object: object.clone(),
        });
        object
    }

    /// Deletes an object and, as the garbage collector does, everything it owns (unless orphaned).
    fn delete(&mut self, key: &Key, orphan: bool) -> Option<Value> {
        let stored = self.objects.remove(key)?;
        let rv = self.next_rv();
        let mut object = stored.value;
        object["metadata"]["resourceVersion"] = json!(rv.to_string());
        self.events.push(Event {
            rv,
            group: key.group.clone(),
            resource: key.resource.clone(),
            namespace: key.namespace.clone(),
            kind: "DELETED",
            object: object.clone(),
        });
        if !orphan {
            if let Some(uid) = object["metadata"]["uid"].as_str() {
                let owned: Vec<Key> = self
                    .objects
                    .iter()
                    .filter(|(_, s)| {
                        s.value["metadata"]["ownerReferences"]
                            .as_array()
                            .is_some_and(|refs| refs.iter().any(|r| r["uid"].as_str() == Some(uid)))
                    })
                    .map(|(k, _)| k.clone())
                    .collect();
                for k in owned {
                    self.delete(&k, false);
                }
            }
        }
        Some(object)
    }
}

fn status(code: StatusCode, reason: &str, message: impl Into<String>) -> Response {
    let message = message.into();
    (
        code,
        axum::Json(json!({
            "kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
            "message": message, "reason": reason, "code": code.as_u16()
        })),
    )
        .into_response()
}

/// Where a request points: group, version, namespace, resource, name, subresource.
struct Target {
    group: String,
    version: String,
    namespace: Option<String>,
    resource: String,
    name: Option<String>,
    sub: Option<String>,
}

fn parse_target(path: &str) -> Option<Target> {
    let seg: Vec<&str> = path.trim_matches('/').split('/').collect();
    let (group, version, rest) = match *seg.first()? {
        "api" => (String::new(), seg.get(1)?.to_string(), &seg[2..]),
        "apis" => (seg.get(1)?.to_string(), seg.get(2)?.to_string(), seg.get(3..)?),
        _ => return None,
    };
    let (namespace, rest) =
        if rest.len() >= 3 && rest[0] == "namespaces" { (Some(rest[1].to_string()), &rest[2..]) } else { (None, rest) };
    if rest.is_empty() || rest.len() > 3 {
        return None;
    }
    Some(Target {
        group,
        version,
        namespace,
        resource: rest[0].to_string(),
        name: rest.get(1).map(|s| s.to_string()),
        sub: rest.get(2).map(|s| s.to_string()),
    })
}

fn query(uri: &Uri) -> BTreeMap<String, String> {
    uri.query()
        .unwrap_or("")
        .split('&')
        .filter(|kv| !kv.is_empty())
        .map(|kv| {
            let (k, v) = kv.split_once('=').unwrap_or((kv, ""));
            (decode(k), decode(v))
        })
        .collect()
}

fn decode(s: &str) -> String {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let hex = bytes.get(i + 1..i + 3).and_then(|h| std::str::from_utf8(h).ok());
        match (bytes[i], hex.and_then(|h| u8::from_str_radix(h, 16).ok())) {
            (b'+', _) => out.push(b' '),
            (b'%', Some(b)) => {
                out.push(b);
                i += 2;
            }
            (b, _) => out.push(b),
        }
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// A label selector of `k=v`, `k==v`, `k!=v`, `k` and `!k` terms.
fn selects(selector: &str, labels: &Value) -> bool {
    selector.split(',').filter(|t| !t.trim().is_empty()).all(|term| {
        let term = term.trim();
        if let Some((k, v)) = term.split_once("!=") {
            labels[k.trim()].as_str() != Some(v.trim())
        } else if let Some((k, v)) = term.split_once("==").or_else(|| term.split_once('=')) {
            labels[k.trim()].as_str() == Some(v.trim())
        } else if let Some(k) = term.strip_prefix('!') {
            labels.get(k.trim()).is_none()
        } else {
            labels.get(term).is_some()
        }
    })
}

/// Whether `name` is a lowercase RFC 1123 subdomain, as object names must be.
fn valid_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 253
        && name.split('.').all(|part| {
            !part.is_empty()
                && part.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
                && !part.starts_with('-')
                && !part.ends_with('-')
        })
}

const SYSTEM_METADATA: &[&str] =
    &["uid", "resourceVersion", "generation", "creationTimestamp", "managedFields", "deletionTimestamp", "selfLink"];

/// The leaves of an applied configuration (lists are atomic), without identity and system-owned fields.
fn leaves(v: &Value, prefix: &mut Path, out: &mut Vec<(Path, Value)>) {
    match v {
        Value::Object(m) if !m.is_empty() => {
            for (k, child) in m {
                let top = prefix.is_empty();
                if top && (k == "apiVersion" || k == "kind") {
                    continue;
                }
                if prefix.len() == 1
                    && prefix[0] == "metadata"
                    && (k == "name" || k == "namespace" || SYSTEM_METADATA.contains(&k.as_str()))
                {
                    continue;
                }
                prefix.push(k.clone());
                leaves(child, prefix, out);
                prefix.pop();
            }
        }
        _ if !prefix.is_empty() => out.push((prefix.clone(), v.clone())),
        _ => {}
    }
}

fn leaves_of(v: &Value) -> Vec<(Path, Value)> {
    let mut out = Vec::new();
    leaves(v, &mut Vec::new(), &mut out);
    out
}

fn get_path<'a>(v: &'a Value, p: &Path) -> Option<&'a Value> {
    p.iter().try_fold(v, |cur, k| cur.get(k))
}

fn set_path(v: &mut Value, p: &[String], value: Value) {
    let Some((first, rest)) = p.split_first() else {
        *v = value;
        return;
    };
    if !v.is_object() {
        *v = Value::Object(Map::new());
    }
    if let Some(m) = v.as_object_mut() {
        set_path(m.entry(first.clone()).or_insert(Value::Null), rest, value);
    }
}

/// Nests a field path into a FieldsV1 map (`f:<key>` at each level).
fn insert_fields(fields: &mut Value, p: &[String]) {
    let Some((first, rest)) = p.split_first() else { return };
    if let Some(m) = fields.as_object_mut() {
        insert_fields(m.entry(format!("f:{first}")).or_insert_with(|| json!({})), rest);
    }
}

/// Removes a leaf and any objects it leaves empty.
fn remove_path(v: &mut Value, p: &[String]) {
    let Some((last, parents)) = p.split_last() else { return };
    if parents.is_empty() {
        if let Some(m) = v.as_object_mut() {
            m.remove(last);
        }
        return;
    }
    if let Some(child) = v.get_mut(&parents[0]) {
        remove_path(child, &p[1..]);
        if child.as_object().is_some_and(|m| m.is_empty()) {
            if let Some(m) = v.as_object_mut() {
                m.remove(&parents[0]);
            }
        }
    }
}

/// `metadata.managedFields` in the API's FieldsV1 form.
fn managed_fields(managers: &BTreeMap<String, (BTreeSet<Path>, &'static str)>) -> Value {
    let entries: Vec<Value> = managers
        .iter()
        .filter(|(_, (paths, _))| !paths.is_empty())
        .map(|(manager, (paths, operation))| {
            let mut fields = json!({});
            for p in paths {
                insert_fields(&mut fields, p);
            }
            json!({"manager": manager, "operation": operation, "fieldsType": "FieldsV1", "fieldsV1": fields})
        })
        .collect();
    Value::Array(entries)
}

/// Merges an RFC 7386 JSON merge patch into `target`.
fn merge_patch(target: &mut Value, patch: &Value) {
    match patch {
        Value::Object(p) => {
            if !target.is_object() {
                *target = json!({});
            }
            if let Some(t) = target.as_object_mut() {
                for (k, v) in p {
                    if v.is_null() {
                        t.remove(k);
                    } else {
                        merge_patch(t.entry(k.clone()).or_insert(Value::Null), v);
                    }
                }
            }
        }
        other => *target = other.clone(),
    }
}

/// Gives `manager` (operation Update) every leaf that differs between `before` and `after`.
fn take_changed(stored: &mut Stored, before: &Value, manager: &str) {
    let changed: Vec<Path> =
        leaves_of(&stored.value).into_iter().filter(|(p, v)| get_path(before, p) != Some(v)).map(|(p, _)| p).collect();
    for (m, (paths, _)) in stored.managers.iter_mut() {
        if m != manager {
            for p in &changed {
                paths.remove(p);
            }
        }
    }
    let entry = stored.managers.entry(manager.to_string()).or_insert_with(|| (BTreeSet::new(), "Update"));
    entry.0.extend(changed);
}

fn now() -> String {
    chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Secs, true)
}

fn bump_generation(value: &mut Value, before: Option<&Value>) {
    let old = before.and_then(|b| b["metadata"]["generation"].as_i64()).unwrap_or(0);
    let spec_changed = before.is_none_or(|b| b.get("spec") != value.get("spec"));
    value["metadata"]["generation"] = json!(if spec_changed { old + 1 } else { old.max(1) });
}

async fn handle(State(shared): State<Shared>, method: Method, uri: Uri, headers: HeaderMap, body: Bytes) -> Response {
    let path = uri.path().to_string();
    if path == "/version" {
        return axum::Json(json!({"major": "1", "minor": "33", "gitVersion": "v1.33.0-capstan-fake"})).into_response();
    }
    let Some(t) = parse_target(&path) else {
        return status(
            StatusCode::NOT_FOUND,
            "NotFound",
            format!("the server could not find the requested resource {path}"),
        );
    };
    let q = query(&uri);
    let verb = match (&method, &t.name) {
        (&Method::GET, Some(_)) => "get",
        (&Method::GET, None) if matches!(q.get("watch").map(String::as_str), Some("true" | "1")) => "watch",
        (&Method::GET, None) => "list",
        (&Method::POST, _) => "create",
        (&Method::PUT, _) => "update",
        (&Method::PATCH, _) => "patch",
        (&Method::DELETE, Some(_)) => "delete",
        _ => return status(StatusCode::METHOD_NOT_ALLOWED, "MethodNotAllowed", "method not supported by the fake"),
    };
    let resource_name = match &t.sub {
        Some(s) => format!("{}/{s}", t.resource),
        None => t.resource.clone(),
    };
    let ns = t.namespace.clone().unwrap_or_default();
    let response = {
        let mut inner = lock(&shared);
        let authorized = match &inner.token {
            None => true,
            Some(tok) => headers
                .get("authorization")
                .and_then(|h| h.to_str().ok())
                .is_some_and(|h| h.strip_prefix("Bearer ") == Some(tok.as_str())),
        };
        let mut response = None;
        if !authorized {
            response = Some(status(StatusCode::UNAUTHORIZED, "Unauthorized", "Unauthorized"));
        } else if inner.faults.forbidden.contains(&(verb.to_string(), resource_name.clone())) {
            let group = if t.group.is_empty() { String::new() } else { t.group.clone() };
            let scope =
                if ns.is_empty() { "at the cluster scope".to_string() } else { format!("in the namespace \"{ns}\"") };
            response = Some(status(
                StatusCode::FORBIDDEN,
                "Forbidden",
                format!(
                    "{resource_name} \"{}\" is forbidden: User \"system:serviceaccount:capstan-system:capstan\" cannot {verb} resource \"{resource_name}\" in API group \"{group}\" {scope}",
                    t.name.clone().unwrap_or_default()
                ),
            ));
        }
        let code = response.as_ref().map(|r| r.status().as_u16());
        let entry = Request {
            verb: verb.into(),
            group: t.group.clone(),
            resource: resource_name.clone(),
            namespace: ns.clone(),
            name: t.name.clone().unwrap_or_default(),
            code: code.unwrap_or(0),
        };
        inner.audit.push(entry);
        if response.is_none() && verb != "watch" {
            response = Some(serve(&mut inner, &t, verb, &q, &headers, &body));
        }
        if let Some(r) = &response {
            if let Some(last) = inner.audit.last_mut() {
                last.code = r.status().as_u16();
            }
        }
        response
    };
    if let Some(r) = response {
        let rv = lock(&shared).rv;
        shared.1.send_replace(rv);
        return r;
    }
    watch(shared, t, q).await
}

fn serve(
    inner: &mut Inner,
    t: &Target,
    verb: &str,
    q: &BTreeMap<String, String>,
    headers: &HeaderMap,
    body: &Bytes,
) -> Response {
    let ns = t.namespace.clone().unwrap_or_default();
    let api_version = if t.group.is_empty() { t.version.clone() } else { format!("{}/{}", t.group, t.version) };
    match verb {
        "get" => {
            let key = Key::new(&t.group, &t.resource, &ns, t.name.as_deref().unwrap_or(""));
            match inner.objects.get(&key) {
                Some(s) => axum::Json(s.value.clone()).into_response(),
                None => not_found(t),
            }
        }
        "list" => {
            let selector = q.get("labelSelector").cloned().unwrap_or_default();
            let field = q.get("fieldSelector").cloned().unwrap_or_default();
            let items: Vec<Value> = inner
                .objects
                .iter()
                .filter(|(k, _)| k.group == t.group && k.resource == t.resource && (ns.is_empty() || k.namespace == ns))
                .filter(|(k, s)| {
                    selects(&selector, &s.value["metadata"]["labels"])
                        && field.strip_prefix("metadata.name=").is_none_or(|n| n == k.name)
                })
                .map(|(_, s)| s.value.clone())
                .collect();
            let kind = items.first().and_then(|i| i["kind"].as_str()).map(|k| format!("{k}List"));
            axum::Json(json!({
                "apiVersion": api_version, "kind": kind.unwrap_or_else(|| "List".into()),
                "metadata": {"resourceVersion": inner.rv.to_string()}, "items": items
            }))
            .into_response()
        }
        "delete" => {
            let key = Key::new(&t.group, &t.resource, &ns, t.name.as_deref().unwrap_or(""));
            let opts: Value = serde_json::from_slice(body).unwrap_or(Value::Null);
            let orphan = opts["propagationPolicy"].as_str() == Some("Orphan")
                || q.get("propagationPolicy").map(String::as_str) == Some("Orphan");
            match inner.delete(&key, orphan) {
                Some(v) => axum::Json(v).into_response(),
                None => not_found(t),
            }
        }
        _ => {
            let content_type = headers.get("content-type").and_then(|h| h.to_str().ok()).unwrap_or("");
            write(inner, t, verb, q, content_type, body, &ns)
        }
    }
}

fn not_found(t: &Target) -> Response {
    let name = t.name.clone().unwrap_or_default();
    status(StatusCode::NOT_FOUND, "NotFound", format!("{}.{} \"{name}\" not found", t.resource, t.group))
}

fn write(
    inner: &mut Inner,
    t: &Target,
    verb: &str,
    q: &BTreeMap<String, String>,
    content_type: &str,
    body: &Bytes,
    ns: &str,
) -> Response {
    let Ok(input) = serde_json::from_slice::<Value>(body) else {
        return status(
            StatusCode::BAD_REQUEST,
            "BadRequest",
            "the body is not JSON (the fake reads JSON and apply YAML written as JSON)",
        );
    };
    let name = t.name.clone().or_else(|| input["metadata"]["name"].as_str().map(str::to_string)).unwrap_or_default();
    if input["metadata"]["name"].as_str().is_some_and(|n| n != name) {
        return status(
            StatusCode::BAD_REQUEST,
            "BadRequest",
            "the name of the object does not match the name on the URL",
        );
    }
    if input["metadata"]["namespace"].as_str().is_some_and(|n| !ns.is_empty() && n != ns) {
        return status(
            StatusCode::BAD_REQUEST,
            "BadRequest",
            "the namespace of the provided object does not match the namespace sent on the request",
        );
    }
    if !valid_name(&name) {
        return status(
            StatusCode::UNPROCESSABLE_ENTITY,
            "Invalid",
            format!(
                "{} \"{name}\" is invalid: metadata.name: Invalid value: \"{name}\": a lowercase RFC 1123 subdomain must consist of lower case alphanumeric characters, '-' or '.', and must start and end with an alphanumeric character",
                t.resource
            ),
        );
    }
    if let Some(msg) = inner.faults.rejected.get(&(t.resource.clone(), name.clone())) {
        return status(
            StatusCode::UNPROCESSABLE_ENTITY,
            "Invalid",
            format!("{} \"{name}\" is invalid: {msg}", t.resource),
        );
    }
    let key = Key::new(&t.group, &t.resource, ns, &name);
    let existing = inner.objects.get(&key).cloned();
    let manager = q.get("fieldManager").cloned();
    let dry_run = q.contains_key("dryRun");
    let on_status = t.sub.as_deref() == Some("status");
    if t.sub.as_deref().is_some_and(|s| s != "status") {
        return status(StatusCode::NOT_FOUND, "NotFound", "the fake serves only the status subresource");
    }
    // As the real server: a status subresource belongs to an object, so writing one never creates it (an operator's
    // status write that races a delete gets 404, not a new object).
    if on_status && existing.is_none() {
        return not_found(t);
    }
    let mut stored = match (verb, existing.clone()) {
        ("create", Some(_)) => {
            return status(StatusCode::CONFLICT, "AlreadyExists", format!("{} \"{name}\" already exists", t.resource))
        }
        ("create", None) => {
            let mut s = Stored { value: input.clone(), managers: BTreeMap::new() };
            s.value.as_object_mut().map(|m| m.remove("status"));
            take_changed(&mut s, &Value::Null, manager.as_deref().unwrap_or("unknown"));
            s
        }
        ("update", None) => return not_found(t),
        ("update", Some(mut s)) => {
            let sent_rv = input["metadata"]["resourceVersion"].as_str();
            if sent_rv.is_some_and(|rv| Some(rv) != s.value["metadata"]["resourceVersion"].as_str()) {
                return status(
                    StatusCode::CONFLICT,
                    "Conflict",
                    format!(
                        "Operation cannot be fulfilled on {} \"{name}\": the object has been modified; please apply your changes to the latest version and try again",
                        t.resource
                    ),
                );
            }
            let before = s.value.clone();
            let mut next = input.clone();
            if on_status {
                let mut keep = before.clone();
                keep["status"] = next["status"].take();
                next = keep;
            } else {
                next["status"] = before["status"].clone();
                if next["status"].is_null() {
                    next.as_object_mut().map(|m| m.remove("status"));
                }
            }
            for k in ["uid", "creationTimestamp", "generation"] {
                next["metadata"][k] = before["metadata"][k].clone();
            }
            s.value = next;
            take_changed(&mut s, &before, manager.as_deref().unwrap_or("unknown"));
            s
        }
        ("patch", existing) if content_type.starts_with("application/apply-patch") => {
            let Some(manager) = manager.as_deref() else {
                return status(StatusCode::BAD_REQUEST, "BadRequest", "PATCH with apply requires a fieldManager");
            };
            let force = matches!(q.get("force").map(String::as_str), Some("true" | "1"));
            match apply(existing, &input, manager, force, on_status) {
                Ok(s) => s,
                Err(conflicts) => {
                    return status(
                        StatusCode::CONFLICT,
                        "Conflict",
                        format!(
                            "Apply failed with {} conflict{}: {}",
                            conflicts.len(),
                            if conflicts.len() == 1 { "" } else { "s" },
                            conflicts.join("; ")
                        ),
                    )
                }
            }
        }
        ("patch", None) => return not_found(t),
        ("patch", Some(mut s)) if content_type.starts_with("application/merge-patch") => {
            let before = s.value.clone();
            let mut patch = input.clone();
            if on_status {
                patch = json!({"status": patch["status"].clone()});
            } else if let Some(m) = patch.as_object_mut() {
                m.remove("status");
            }
            merge_patch(&mut s.value, &patch);
            take_changed(&mut s, &before, manager.as_deref().unwrap_or("unknown"));
            s
        }
        ("patch", Some(_)) => {
            return status(
                StatusCode::UNSUPPORTED_MEDIA_TYPE,
                "UnsupportedMediaType",
                format!("the fake does not serve patches of type {content_type}"),
            )
        }
        _ => return status(StatusCode::METHOD_NOT_ALLOWED, "MethodNotAllowed", "unsupported"),
    };
    let created = existing.is_none();
    stored.value["apiVersion"] = input.get("apiVersion").cloned().unwrap_or(stored.value["apiVersion"].clone());
    stored.value["metadata"]["name"] = json!(name);
    if !ns.is_empty() {
        stored.value["metadata"]["namespace"] = json!(ns);
    }
    match &existing {
        None => {
            stored.value["metadata"]["uid"] = json!(uuid::Uuid::new_v4().to_string());
            stored.value["metadata"]["creationTimestamp"] = json!(now());
        }
        Some(old) => {
            for k in ["uid", "creationTimestamp"] {
                stored.value["metadata"][k] = old.value["metadata"][k].clone();
            }
        }
    }
    bump_generation(&mut stored.value, existing.as_ref().map(|e| &e.value));
    let unchanged = existing.as_ref().is_some_and(|old| {
        let mut a = old.value.clone();
        let mut b = stored.value.clone();
        for v in [&mut a, &mut b] {
            v["metadata"].as_object_mut().map(|m| {
                m.remove("resourceVersion");
                m.remove("managedFields")
            });
        }
        a == b && old.managers == stored.managers
    });
    if dry_run || unchanged {
        let mut v = stored.value.clone();
        if unchanged {
            if let Some(old) = &existing {
                v = old.value.clone();
            }
        }
        return axum::Json(v).into_response();
    }
    if created && verb == "patch" {
        // An apply that creates is authorized as a create too.
        inner.audit.push(Request {
            verb: "create".into(),
            group: t.group.clone(),
            resource: t.resource.clone(),
            namespace: ns.to_string(),
            name: name.clone(),
            code: 201,
        });
    }
    let object = inner.commit(&key, stored, if created { "ADDED" } else { "MODIFIED" });
    (if created { StatusCode::CREATED } else { StatusCode::OK }, axum::Json(object)).into_response()
}

/// Server-side apply: `manager`'s configuration merged into the live object. Fields other managers own with a
/// different value are conflicts unless forced; fields the manager applied before and no longer applies are
/// removed unless someone else owns them.
fn apply(
    existing: Option<Stored>,
    config: &Value,
    manager: &str,
    force: bool,
    on_status: bool,
) -> Result<Stored, Vec<String>> {
    let mut stored = existing.unwrap_or_else(|| Stored {
        value: json!({"apiVersion": config["apiVersion"], "kind": config["kind"], "metadata": {}}),
        managers: BTreeMap::new(),
    });
    let scoped = |p: &Path| (p.first().map(String::as_str) == Some("status")) == on_status;
    let applied: Vec<(Path, Value)> = leaves_of(config).into_iter().filter(|(p, _)| scoped(p)).collect();
    let mut conflicts = Vec::new();
    let mut taken: Vec<(String, Path)> = Vec::new();
    for (p, v) in &applied {
        for (m, (owned, _)) in &stored.managers {
            if m == manager {
                continue;
            }
            for o in owned.iter().filter(|o| p.starts_with(o) || o.starts_with(p)) {
                if get_path(&stored.value, o) != get_path(config, o) || get_path(&stored.value, p) != Some(v) {
                    conflicts.push(format!("conflict with \"{m}\": .{}", o.join(".")));
                    taken.push((m.clone(), o.clone()));
                }
            }
        }
    }
    if !conflicts.is_empty() && !force {
        conflicts.sort();
        conflicts.dedup();
        return Err(conflicts);
    }
    for (m, p) in taken {
        if let Some((owned, _)) = stored.managers.get_mut(&m) {
            owned.remove(&p);
        }
    }
    let new_set: BTreeSet<Path> = applied.iter().map(|(p, _)| p.clone()).collect();
    let old_set: BTreeSet<Path> = stored
        .managers
        .get(manager)
        .map(|(s, _)| s.iter().filter(|p| scoped(p)).cloned().collect())
        .unwrap_or_default();
    for gone in old_set.difference(&new_set) {
        let shared = stored.managers.iter().any(|(m, (owned, _))| m != manager && owned.contains(gone));
        if !shared {
            remove_path(&mut stored.value, gone);
        }
    }
    for (p, v) in applied {
        set_path(&mut stored.value, &p, v);
    }
    let entry = stored.managers.entry(manager.to_string()).or_insert_with(|| (BTreeSet::new(), "Apply"));
    entry.0.retain(|p| !scoped(p));
    entry.0.extend(new_set);
    entry.1 = "Apply";
    Ok(stored)
}

/// A watch: the events after the given resourceVersion (or every object as ADDED without one), then live events,
/// as newline-delimited JSON, until `timeoutSeconds` (at most 5 minutes).
async fn watch(shared: Shared, t: Target, q: BTreeMap<String, String>) -> Response {
    let ns = t.namespace.clone().unwrap_or_default();
    let selector = q.get("labelSelector").cloned().unwrap_or_default();
    let timeout = q.get("timeoutSeconds").and_then(|s| s.parse::<u64>().ok()).unwrap_or(300).min(300);
    let deadline = tokio::time::Instant::now() + Duration::from_secs(timeout);
    let since = q.get("resourceVersion").and_then(|s| s.parse::<u64>().ok()).filter(|rv| *rv > 0);
    let mut initial = Vec::new();
    let start = {
        let inner = lock(&shared);
        match since {
            Some(rv) => rv,
            None => {
                for (k, s) in &inner.objects {
                    if k.group == t.group
                        && k.resource == t.resource
                        && (ns.is_empty() || k.namespace == ns)
                        && selects(&selector, &s.value["metadata"]["labels"])
                    {
                        initial.push(json!({"type": "ADDED", "object": s.value}));
                    }
                }
                inner.rv
            }
        }
    };
    let rx = shared.1.subscribe();
    let first: Vec<u8> = initial.iter().flat_map(|e| format!("{e}\n").into_bytes()).collect();
    let state = (shared, rx, start, Some(first));
    let stream = futures_util::stream::unfold(state, move |(shared, mut rx, last, first)| {
        let (group, resource, ns, selector) = (t.group.clone(), t.resource.clone(), ns.clone(), selector.clone());
        async move {
            if let Some(f) = first {
                if !f.is_empty() {
                    return Some((Ok::<_, std::io::Error>(Bytes::from(f)), (shared, rx, last, None)));
                }
            }
            loop {
                let (chunk, newest) = {
                    let inner = lock(&shared);
                    let from = inner.events.partition_point(|e| e.rv <= last);
                    let mut out = Vec::new();
                    for e in &inner.events[from..] {
                        if e.group == group
                            && e.resource == resource
                            && (ns.is_empty() || e.namespace == ns)
                            && selects(&selector, &e.object["metadata"]["labels"])
                        {
                            out.extend(format!("{}\n", json!({"type": e.kind, "object": e.object})).into_bytes());
                        }
                    }
                    (out, inner.events.last().map(|e| e.rv).unwrap_or(last).max(last))
                };
                if !chunk.is_empty() {
                    return Some((Ok(Bytes::from(chunk)), (shared, rx, newest, None)));
                }
                match tokio::time::timeout_at(deadline, rx.changed()).await {
                    Ok(Ok(())) => continue,
                    _ => return None,
                }
            }
        }
    });
    Response::builder()
        .header("content-type", "application/json")
        .body(Body::from_stream(stream))
        .unwrap_or_else(|_| status(StatusCode::INTERNAL_SERVER_ERROR, "InternalError", "watch"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn apply_conflicts_with_another_manager_unless_forced() {
        let cfg = json!({"apiVersion": "apps/v1", "kind": "StatefulSet", "metadata": {"name": "a"}, "spec": {"replicas": 3, "x": 1}});
        let s = apply(None, &cfg, "capstan", false, false).expect("first apply");
        let other =
            json!({"apiVersion": "apps/v1", "kind": "StatefulSet", "metadata": {"name": "a"}, "spec": {"replicas": 5}});
        let err = apply(Some(s.clone()), &other, "kubectl", false, false).expect_err("conflict");
        assert_eq!(err, vec!["conflict with \"capstan\": .spec.replicas".to_string()]);
        let s2 = apply(Some(s.clone()), &other, "kubectl", true, false).expect("forced");
        assert_eq!(s2.value["spec"]["replicas"], json!(5));
        assert!(!s2.managers["capstan"].0.contains(&vec!["spec".to_string(), "replicas".to_string()]));
        // The same value is shared ownership, not a conflict.
        let same = json!({"apiVersion": "apps/v1", "kind": "StatefulSet", "metadata": {"name": "a"}, "spec": {"x": 1}});
        assert!(apply(Some(s), &same, "kubectl", false, false).is_ok());
    }

    #[test]
    fn fields_no_longer_applied_are_removed() {
        let cfg =
            json!({"kind": "ConfigMap", "metadata": {"name": "a", "labels": {"k": "v"}}, "data": {"a": "1", "b": "2"}});
        let s = apply(None, &cfg, "capstan", false, false).expect("apply");
        let cfg2 = json!({"kind": "ConfigMap", "metadata": {"name": "a"}, "data": {"a": "1"}});
        let s2 = apply(Some(s), &cfg2, "capstan", false, false).expect("apply");
        assert_eq!(s2.value["data"], json!({"a": "1"}));
        assert!(s2.value["metadata"].get("labels").is_none());
    }

    #[test]
    fn names_selectors_and_paths() {
        assert!(valid_name("jira-0.svc"));
        assert!(!valid_name("Jira"));
        assert!(!valid_name("-a"));
        let labels = json!({"app": "jira", "tier": "web"});
        assert!(selects("app=jira,tier", &labels));
        assert!(!selects("app!=jira", &labels));
        assert!(selects("!missing", &labels));
        let t = parse_target("/apis/apps/v1/namespaces/team/statefulsets/jira/status").expect("target");
        assert_eq!((t.group.as_str(), t.resource.as_str(), t.sub.as_deref()), ("apps", "statefulsets", Some("status")));
        let n = parse_target("/api/v1/namespaces/team").expect("namespace");
        assert_eq!((n.resource.as_str(), n.name.as_deref(), n.namespace), ("namespaces", Some("team"), None));
        assert_eq!(decode("app%3Djira%2Ctier"), "app=jira,tier");
    }
}
