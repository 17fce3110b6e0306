//! Hostile input over real loopback sockets: what an attacker, a careless tenant or a broken workload sends must be
//! answered with a clear error while Capstan keeps serving everyone else. Later features add their cases here.

use std::time::Duration;

use capstan_e2e::*;
use serde_json::{json, Value};

const T: Duration = Duration::from_secs(30);

/// A rule with this expression nests 5,000 deep: evaluating it recursively overflowed the stack and aborted Capstan.
fn deep_rule_expr() -> String {
    format!("{} > 0", vec!["vector(1)"; 5_000].join(" + "))
}

fn deep_rule(name: &str) -> Value {
    json!({
        "apiVersion": "capstan.dev/v1alpha1", "kind": "AlertRule",
        "metadata": {"name": name, "namespace": "default"},
        "spec": {"expr": deep_rule_expr(), "interval": "1s"},
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_query_nested_too_deeply_is_refused_and_capstan_keeps_serving() {
    let tp = TestPlane::start().await;
    let query = vec!["1"; 5_000].join("+");
    let url = format!("/prometheus/api/v1/query?query={}", query.replace('+', "%2B"));
    let err = tp.client.get(&url).await.expect_err("refused").to_string();
    assert!(err.contains("at most 128 levels"), "{err}");
    // Still up: the API answers, and a sane query works.
    let ok = tp.client.get("/prometheus/api/v1/query?query=1%2B1").await.expect("answers");
    assert_eq!(ok["data"]["result"][1], "2");
    tp.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_deep_alert_rule_is_refused_at_apply_with_its_position() {
    let tp = TestPlane::start().await;
    let err = tp.client.post("/api/v1/apply", json!({ "objects": [deep_rule("deep")] })).await.expect_err("refused");
    assert_eq!(err.status().map(|s| s.as_u16()), Some(422));
    let text = err.to_string();
    let body = match &err {
        capstan_api::ClientError::Status { body, .. } => body.clone(),
        other => panic!("{other}"),
    };
    assert_eq!(body["errors"][0]["path"], "spec.expr", "{text}");
    let message = body["errors"][0]["message"].as_str().unwrap_or("");
    assert!(message.starts_with("parse error at char ") && message.contains("at most 128 levels"), "{message}");
    assert!(tp.client.get("/api/v1/namespaces/default/alertrules/deep").await.is_err(), "nothing was stored");
    tp.stop().await;
}

/// A store written before the limit existed may hold such a rule: Capstan starts, keeps running, and marks the
/// rule unhealthy with the reason.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stored_deep_alert_rule_is_marked_unhealthy_and_never_fatal() {
    let dir = tempfile::tempdir().expect("tempdir");
    {
        let store = capstan_store::Store::open(&dir.path().join("state.redb")).expect("store");
        store.apply(vec![deep_rule("inherited")]).expect("written as an older Capstan would have");
    }
    let tp = TestPlane::start_in(dir).await;
    let rule = eventually("the rule is evaluated and marked unhealthy", T, || async {
        let r = tp.client.get("/api/v1/namespaces/default/alertrules/inherited").await.ok()?;
        (r["status"]["health"] == "err").then_some(r)
    })
    .await;
    let error = rule["status"]["lastError"].as_str().unwrap_or("");
    assert!(error.contains("at most 128 levels"), "{error}");
    // Evaluated again and again, and Capstan still answers.
    tokio::time::sleep(Duration::from_millis(2_500)).await;
    assert_eq!(tp.client.get("/version").await.expect("still up")["version"], env!("CARGO_PKG_VERSION"));
    tp.stop().await;
}

/// A watch client that stops reading falls behind; instead of a stream that silently misses changes it gets
/// Kubernetes' 410 Gone as a last record, and everyone else is served meanwhile.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_watch_that_falls_behind_ends_with_410_gone() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let tp = TestPlane::start().await;
    let addr: std::net::SocketAddr = tp.plane().url().trim_start_matches("http://").parse().expect("addr");
    let socket = tokio::net::TcpSocket::new_v4().expect("socket");
    socket.set_recv_buffer_size(4096).expect("small buffer");
    let mut slow = socket.connect(addr).await.expect("connect");
    let request = format!(
        "GET /api/v1/watch?kind=secrets HTTP/1.1\r\nHost: capstan\r\nAuthorization: Bearer {}\r\n\r\n",
        tp.plane().token()
    );
    slow.write_all(request.as_bytes()).await.expect("send");
    // 10,000 changes of 4 KiB while the slow client reads nothing: more than the kernel's socket buffers (a few
    // MiB), the stream's queue (256) and the watch's (4,096) hold.
    let value = "v".repeat(4096);
    for batch in 0..50 {
        let objects: Vec<Value> = (0..200)
            .map(|i| {
                json!({"apiVersion": "capstan.dev/v1alpha1", "kind": "Secret",
                       "metadata": {"name": format!("s-{batch}-{i}")}, "spec": {"stringData": {"k": value}}})
            })
            .collect();
        tp.client.post("/api/v1/apply", json!({ "objects": objects })).await.expect("others are served");
    }
    let mut seen = Vec::new();
    let mut total = 0usize;
    let found = tokio::time::timeout(T, async {
        let mut buf = vec![0u8; 64 * 1024];
        loop {
            let n = slow.read(&mut buf).await.expect("read");
            if n == 0 {
                return false;
            }
            seen.extend_from_slice(&buf[..n]);
            total += n;
            // Only the last record matters: keep a window, not the megabytes of events before it.
            if seen.len() > 8192 {
                seen.drain(..seen.len() - 8192);
            }
            let text = String::from_utf8_lossy(&seen);
            if text.contains("\"type\":\"ERROR\"") && text.contains("\"code\":410") {
                return true;
            }
        }
    })
    .await;
    let tail = String::from_utf8_lossy(&seen[seen.len().saturating_sub(600)..]).to_string();
    assert_eq!(found, Ok(true), "the watch ends with 410 Gone in time ({total} bytes read, ending: {tail})");
    let text = String::from_utf8_lossy(&seen);
    assert!(text.contains("list again, then watch"), "the record says what to do");
    tp.stop().await;
}

/// Two writers that read the same version: the second apply naming it is refused with 409, not silently
/// overwriting the first; an apply without a resourceVersion keeps working.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_apply_with_a_stale_resource_version_is_a_conflict() {
    let tp = TestPlane::start().await;
    let secret = |value: &str, rv: Option<&Value>| {
        let mut o = json!({"apiVersion": "capstan.dev/v1alpha1", "kind": "Secret",
                           "metadata": {"name": "shared"}, "spec": {"stringData": {"k": value}}});
        if let Some(rv) = rv {
            o["metadata"]["resourceVersion"] = rv.clone();
        }
        o
    };
    tp.client.post("/api/v1/apply", json!({ "objects": [secret("a", None)] })).await.expect("created");
    let read = tp.client.get("/api/v1/namespaces/default/secrets/shared").await.expect("read");
    let rv = read["metadata"]["resourceVersion"].clone();
    tp.client.post("/api/v1/apply", json!({ "objects": [secret("first", Some(&rv))] })).await.expect("first writer");
    let err = tp
        .client
        .post("/api/v1/apply", json!({ "objects": [secret("second", Some(&rv))] }))
        .await
        .expect_err("second writer refused");
    assert_eq!(err.status().map(|s| s.as_u16()), Some(409), "{err}");
    assert!(err.to_string().contains("was changed since it was read"), "{err}");
    tp.client.post("/api/v1/apply", json!({ "objects": [secret("forced", None)] })).await.expect("no version given");
    tp.stop().await;
}

/// A flood of badly signed webhook deliveries: each gets the same answer as a receiver that does not exist, and
/// the Sync's events record the refusal once per interval, not one store write per request.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_flood_of_bad_webhook_signatures_records_one_event() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let tp = TestPlane::start().await;
    let dir = tempfile::tempdir().expect("tempdir");
    tp.apply(&format!(
        "apiVersion: capstan.dev/v1alpha1\nkind: Secret\nmetadata: {{name: hook}}\nspec: {{stringData: {{token: s3cret}}}}\n---
apiVersion: capstan.dev/v1alpha1\nkind: Source\nmetadata: {{name: local}}\nspec: {{dir: {}}}\n---
apiVersion: capstan.dev/v1alpha1\nkind: Sync\nmetadata: {{name: apps}}\nspec: {{sourceRef: {{name: local}}, webhook: {{secretRef: {{name: hook}}}}}}\n",
        dir.path().display()
    ));
    let addr = tp.plane().url().trim_start_matches("http://").to_string();
    let post = |path: &'static str| {
        let addr = addr.clone();
        async move {
            let body = r#"{"ref":"refs/heads/main"}"#;
            let mut s = tokio::net::TcpStream::connect(&addr).await.expect("connect");
            let req = format!(
                "POST {path} HTTP/1.1\r\nHost: capstan\r\nX-Hub-Signature-256: sha256=00ff\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                body.len()
            );
            s.write_all(req.as_bytes()).await.expect("send");
            let mut out = String::new();
            s.read_to_string(&mut out).await.expect("answer");
            let status = out.split_whitespace().nth(1).unwrap_or("").to_string();
            let body = out.split("\r\n\r\n").nth(1).unwrap_or("").to_string();
            (status, body)
        }
    };
    let unknown = post("/hooks/default/nope").await;
    for _ in 0..200 {
        assert_eq!(post("/hooks/default/apps").await, unknown, "the same answer as no receiver at all");
    }
    assert_eq!(unknown.0, "404");
    let events = eventually("the refusal is recorded", T, || async {
        let e = tp.client.get("/api/v1/namespaces/default/syncs/apps/events").await.ok()?;
        let refused: Vec<Value> =
            e["items"].as_array()?.iter().filter(|e| e["reason"] == "WebhookRefused").cloned().collect();
        (!refused.is_empty()).then_some(refused)
    })
    .await;
    assert_eq!(events.len(), 1, "{events:?}");
    assert_eq!(events[0]["count"], 1, "one event for the whole flood: {events:?}");
    tp.stop().await;
}
