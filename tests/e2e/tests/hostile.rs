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

/// Connections to `addr` that send nothing, or half a request header, and are then left open.
async fn idle_connections(addr: &str, n: usize) -> Vec<tokio::net::TcpStream> {
    use tokio::io::AsyncWriteExt;
    let mut held = Vec::with_capacity(n);
    for i in 0..n {
        let Ok(Ok(mut s)) = tokio::time::timeout(Duration::from_secs(5), tokio::net::TcpStream::connect(addr)).await
        else {
            continue;
        };
        if i % 3 == 0 {
            let _ = s.write_all(b"GET / HTTP/1.1\r\nHost: slow\r\nX-Trickle: ").await;
        }
        held.push(s);
    }
    held
}

/// How many of `held` Capstan has closed (a read sees the end of the stream or a reset).
fn closed_by_peer(held: &[tokio::net::TcpStream]) -> usize {
    let mut buf = [0u8; 512];
    held.iter()
        .filter(|s| match s.try_read(&mut buf) {
            Ok(0) => true,
            Ok(_) => false,
            Err(e) => e.kind() != std::io::ErrorKind::WouldBlock,
        })
        .count()
}

fn api_port(client: &capstan_api::Client) -> u16 {
    client.base().rsplit(':').next().and_then(|p| p.parse().ok()).expect("the API URL has a port")
}

/// The value of one series in a Prometheus text exposition (0 when absent).
fn sample(exposition: &str, series: &str) -> f64 {
    exposition.lines().find_map(|l| l.strip_prefix(series)?.trim().parse().ok()).unwrap_or(0.0)
}

fn open_fds(pid: u32) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/fd")).map(|d| d.count()).unwrap_or(usize::MAX)
}

/// 1,700 connections that send nothing or half a header, against a Capstan allowed 1,024 open files: the
/// idle ones are closed to make room, the fds Capstan holds stay under its limit, its API and the entry point
/// keep answering, and the App's probes keep passing (no replica is restarted for want of an fd).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_connections_cannot_exhaust_capstan() {
    let data = tempfile::tempdir().expect("tempdir");
    let port = free_port();
    let liveness = "    liveness: {http: {path: /status, port: http}, periodSeconds: 1, failureThreshold: 1}\n";
    let extra = format!("{READINESS}{liveness}  expose:\n    - port: {port}\n");
    let manifest = data.path().join("web.yaml");
    std::fs::write(&manifest, app_yaml("web", 2, &[], &extra)).expect("manifest");
    let state = data.path().join("state");
    let child = std::process::Command::new("sh")
        .arg("-c")
        .arg(r#"ulimit -n 1024 && exec "$0" "$@""#)
        .arg(bin("capstan-e2e-cli"))
        // Plain HTTP on the loopback: the flood below opens bare TCP connections, and /metrics is read with curl-like
        // plain requests.
        .args([
            "up",
            "--listen",
            "127.0.0.1:0",
            "--plain-http",
            "--header-timeout",
            "120",
            "--api-max-connections",
            "64",
        ])
        .arg(&manifest)
        .env("CAPSTAN_DATA", &state)
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .expect("start capstan up");
    let capstan = Guarded(child);
    let pid = capstan.id();
    let client = eventually("capstan is up", T, || async {
        let c = capstan_api::Client::discover(&state, None, None, None).ok()?;
        c.get("/version").await.ok().map(|_| c)
    })
    .await;
    let app = eventually("web is Ready", T, || async {
        let o = client.get("/api/v1/namespaces/default/apps/web").await.ok()?;
        (ready(&o) && replicas(&o).len() == 2).then_some(o)
    })
    .await;
    let restarts: Vec<Value> = replicas(&app).iter().map(|r| r["restarts"].clone()).collect();
    let api = client.base().trim_start_matches("http://").to_string();

    let flood = idle_connections(&format!("127.0.0.1:{port}"), 1_500).await;
    let api_flood = idle_connections(&api, 200).await;
    assert!(flood.len() + api_flood.len() > 1_024, "more connections were opened than Capstan has fds");

    // Everyone else is still served (answered 503 with Retry-After while every idle connection is younger than the
    // grace that lets it send its request, then by closing the one idle longest).
    eventually("the entry point serves", T, || async { http_get(port, "/").await.filter(|(code, _)| *code == 200) })
        .await;
    let version = eventually("the API answers", T, || async { client.get("/version").await.ok() }).await;
    assert_eq!(version["version"], env!("CARGO_PKG_VERSION"));
    // Idle connections were closed to make room; what Capstan holds stays under its limit.
    // The API's 64 come out of the limit first; entry points share (1,024 − 64 − 256 reserved) / 2.
    let budget = (1_024 - 64 - 256) / 2;
    eventually("idle connections beyond the budget are closed", T, || async {
        let closed = closed_by_peer(&flood) + closed_by_peer(&api_flood);
        // What is left open: at most the entry points' budget and the API's cap.
        (closed + budget + 64 >= flood.len() + api_flood.len()).then_some(())
    })
    .await;
    // Refused connections are answered and closed within 1.25 s (at most 64 per gate wait so at once).
    eventually("capstan holds its budgets and little else", T, || async {
        (open_fds(pid) < budget + 64 + 128).then_some(())
    })
    .await;
    // Probes kept passing through it all: no replica was restarted and the App stayed Ready.
    tokio::time::sleep(Duration::from_secs(3)).await;
    let app = client.get("/api/v1/namespaces/default/apps/web").await.expect("app");
    assert!(ready(&app), "{app}");
    let after: Vec<Value> = replicas(&app).iter().map(|r| r["restarts"].clone()).collect();
    assert_eq!(after, restarts, "no replica restarted");
    // The balancer says what it did.
    let (_, metrics) = http_get(api_port(&client), "/metrics").await.expect("metrics");
    let evicted =
        |listener: &str| sample(&metrics, &format!("capstan_lb_connections_evicted_total{{listener=\"{listener}\"}}"));
    assert!(evicted(&format!("default/web/http-{port}")) > 0.0, "{metrics}");
    assert!(evicted("api") > 0.0, "{metrics}");
    drop(capstan);
}

/// A header that trickles in is cut off after the header timeout (and counted); a listener whose every
/// connection is busy answers a new one 503 with Retry-After instead of leaving it hanging.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slow_headers_time_out_and_a_busy_full_listener_answers_503() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let tp = TestPlane::start_with(|c| {
        c.header_timeout = Duration::from_secs(1);
        c.api_max_connections = 4;
    })
    .await;
    let addr = tp.plane().url().trim_start_matches("http://").to_string();
    let mut slow = tokio::net::TcpStream::connect(&addr).await.expect("connect");
    slow.write_all(b"GET /version HTTP/1.1\r\nHost: x\r\n").await.expect("half a header");
    let mut buf = Vec::new();
    let read = tokio::time::timeout(Duration::from_secs(10), slow.read_to_end(&mut buf)).await;
    assert!(read.is_ok(), "the connection is closed after the header timeout");
    assert!(!String::from_utf8_lossy(&buf).contains("200 OK"), "no answer to half a request");

    // Four watches stream for as long as they are open: every connection of the listener is busy. (Capstan's
    // scrape of its own metrics comes over the Unix socket, which shares the API's cap: while its connection is
    // idle but younger than the grace, a watch is answered 503 and opened again.)
    let mut watches = Vec::new();
    for attempt in 0.. {
        if watches.len() == 4 {
            break;
        }
        assert!(attempt < 100, "four watches could not be opened");
        let mut s = tokio::net::TcpStream::connect(&addr).await.expect("connect");
        let req =
            format!("GET /api/v1/watch HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {}\r\n\r\n", tp.plane().token());
        s.write_all(req.as_bytes()).await.expect("watch");
        let mut head = [0u8; 12];
        s.read_exact(&mut head).await.expect("the watch starts");
        match &head {
            b"HTTP/1.1 200" => watches.push(s),
            b"HTTP/1.1 503" => tokio::time::sleep(Duration::from_millis(50)).await,
            other => panic!("{}", String::from_utf8_lossy(other)),
        }
    }
    // A watch streams for longer than the header timeout: the timeout is for idle connections only.
    tokio::time::sleep(Duration::from_millis(2_500)).await;
    assert_eq!(closed_by_peer(&watches), 0, "the watches outlived the header timeout");
    let mut extra = tokio::net::TcpStream::connect(&addr).await.expect("connect");
    let mut answer = String::new();
    tokio::time::timeout(Duration::from_secs(10), extra.read_to_string(&mut answer))
        .await
        .expect("answered at once")
        .expect("read");
    assert!(answer.starts_with("HTTP/1.1 503"), "{answer}");
    assert!(answer.to_ascii_lowercase().contains("retry-after: 1"), "{answer}");
    drop(watches);
    eventually("room again once the watches end", T, || async { tp.client.get("/version").await.ok() }).await;
    let (_, metrics) = http_get(api_port(&tp.client), "/metrics").await.expect("metrics");
    assert_eq!(sample(&metrics, "capstan_lb_header_timeouts_total{listener=\"api\"}"), 1.0, "{metrics}");
    let refused = sample(&metrics, "capstan_lb_connections_refused_total{listener=\"api\",reason=\"listener_cap\"}");
    assert!(refused >= 1.0, "{metrics}");
    tp.stop().await;
}

/// A subquery that would hold millions of points, one that would run for hours, and one whose client leaves:
/// each is stopped (by the sample budget, the timeout, or cancellation) with Prometheus' error type, no more
/// queries run at once than allowed, and the API answers meanwhile.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn heavy_subqueries_are_bounded_timed_out_and_cancelled() {
    use tokio::io::AsyncWriteExt;
    let tp = TestPlane::start_with(|c| {
        c.query.max_samples = 200_000;
        c.query.timeout = Duration::from_secs(3);
        c.query.max_concurrency = 2;
    })
    .await;
    let status = |e: &capstan_api::ClientError| match e {
        capstan_api::ClientError::Status { status, body, .. } => (status.as_u16(), body.clone()),
        other => panic!("{other}"),
    };
    let enc = |q: &str| q.replace('+', "%2B").replace(' ', "%20");
    // 172.8 million points: refused by the budget, not after 23 s and 2.7 GB.
    let err = tp.client.get("/prometheus/api/v1/query?query=count_over_time(vector(1)[2d:1ms])").await.expect_err("");
    let (code, body) = status(&err);
    assert_eq!((code, body["errorType"].as_str()), (422, Some("execution")), "{body}");
    assert!(body["error"].as_str().unwrap_or("").contains("too many samples"), "{body}");
    // Billions of steps that hold little: stopped at the timeout.
    let slow = "max_over_time(sum_over_time(vector(1)[100s:1ms])[30d:1m])";
    let err = tp.client.get(&format!("/prometheus/api/v1/query?query={}", enc(slow))).await.expect_err("");
    let (code, body) = status(&err);
    assert_eq!((code, body["errorType"].as_str()), (503, Some("timeout")), "{body}");

    // Four at once with room for two: never more than two run, and the API answers all along.
    let queries: Vec<_> = (0..4)
        .map(|_| {
            let c = tp.client.clone();
            let url = format!("/prometheus/api/v1/query?query={}", enc(slow));
            tokio::spawn(async move { c.get(&url).await })
        })
        .collect();
    let port = api_port(&tp.client);
    let mut most = 0.0f64;
    for _ in 0..20 {
        let (_, metrics) = http_get(port, "/metrics").await.expect("metrics answer while queries run");
        most = most.max(sample(&metrics, "capstan_query_running"));
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(most, 2.0, "two queries ran at once, never more");
    for q in queries {
        let err = q.await.expect("task").expect_err("timed out");
        assert_eq!(status(&err).1["errorType"], "timeout");
    }

    // A client that leaves: its query stops at once, not when it would have finished.
    let addr = tp.plane().url().trim_start_matches("http://").to_string();
    let mut s = tokio::net::TcpStream::connect(&addr).await.expect("connect");
    let req = format!(
        "GET /prometheus/api/v1/query?query={} HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {}\r\n\r\n",
        enc(slow),
        tp.plane().token()
    );
    s.write_all(req.as_bytes()).await.expect("send");
    eventually("the query runs", T, || async {
        let (_, m) = http_get(port, "/metrics").await?;
        (sample(&m, "capstan_query_running") == 1.0).then_some(())
    })
    .await;
    drop(s);
    let metrics = eventually("the query is cancelled", T, || async {
        let (_, m) = http_get(port, "/metrics").await?;
        (sample(&m, "capstan_query_canceled_total") == 1.0).then_some(m)
    })
    .await;
    assert_eq!(sample(&metrics, "capstan_query_running"), 0.0, "{metrics}");
    tp.stop().await;
}

/// A replica whose metrics carry a new request id at every scrape: 45,000 series each time, under the sample
/// limit, which used to grow the store by a million series a minute. The target is stopped at the new-series
/// limit with the reason in its `lastError`, the store stops growing, and answers about metadata are bounded.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_churning_target_is_stopped_and_metadata_answers_are_bounded() {
    let tp = TestPlane::start().await;
    let extra = "  metrics: {port: http, interval: 3s, timeout: 3s}\n";
    tp.apply(&app_yaml("churn", 1, &[("TESTAPP_CHURN_SERIES", "45000")], extra));
    let target = eventually("the target is stopped at the new-series limit", Duration::from_secs(120), || async {
        let t = tp.client.get("/prometheus/api/v1/targets").await.ok()?;
        t["data"]["activeTargets"]
            .as_array()?
            .iter()
            .find(|t| t["lastError"].as_str().is_some_and(|e| e.contains("new series limit exceeded")))
            .cloned()
    })
    .await;
    assert_eq!(target["health"], "down", "{target}");
    let series = || async {
        let s = tp.client.get("/prometheus/api/v1/status/tsdb").await.expect("tsdb status");
        s["data"]["headStats"]["numSeries"].as_u64().unwrap_or(u64::MAX)
    };
    let held = series().await;
    assert!((90_000..=101_000).contains(&held), "two scrapes' worth of series and no more: {held}");
    tokio::time::sleep(Duration::from_secs(7)).await;
    assert!(series().await <= 101_000, "later scrapes add nothing");
    // This test's whole process (Capstan in it) stays far below the gigabytes the flood used to take.
    let rss_kib: u64 = std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| s.lines().find(|l| l.starts_with("VmRSS:"))?.split_whitespace().nth(1)?.parse().ok())
        .unwrap_or(u64::MAX);
    assert!(rss_kib < 1 << 20, "resident memory {rss_kib} KiB");

    // Everything at once: cut at the server's limit, with Prometheus' warning.
    let everything = "match%5B%5D=%7B__name__%3D~%22.%2B%22%7D";
    let all = tp.client.get(&format!("/prometheus/api/v1/series?{everything}")).await.expect("series");
    assert_eq!(all["data"].as_array().map(Vec::len), Some(50_000));
    assert!(
        all["warnings"][0].as_str().is_some_and(|w| w.starts_with("results truncated due to limit")),
        "{}",
        all["warnings"]
    );
    let few = tp.client.get(&format!("/prometheus/api/v1/series?{everything}&limit=10")).await.expect("series");
    assert_eq!(few["data"].as_array().map(Vec::len), Some(10));
    assert_eq!(few["warnings"][0], "results truncated due to limit");
    let values = tp.client.get("/prometheus/api/v1/label/request_id/values?limit=5").await.expect("values");
    assert_eq!(values["data"].as_array().map(Vec::len), Some(5));
    let bad = tp.client.get("/prometheus/api/v1/labels?limit=many").await.expect_err("refused");
    assert_eq!(bad.status().map(|s| s.as_u16()), Some(400));
    assert_eq!(tp.client.get("/version").await.expect("still answering")["version"], env!("CARGO_PKG_VERSION"));
    tp.stop().await;
}

/// `(ppid, state, pgrp)` of a process.
fn proc_stat(pid: u32) -> Option<(u32, char, u32)> {
    capstan_runtime_local::process::proc_stat(pid).map(|s| (s.ppid, s.state, s.pgrp))
}

/// Zombie children of this process outside its own process group: orphans nobody reaped.
fn unreaped_orphans() -> Vec<u32> {
    let me = std::process::id();
    let my_group = proc_stat(me).map(|s| s.2).unwrap_or(0);
    std::fs::read_dir("/proc")
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| e.file_name().to_str()?.parse::<u32>().ok())
        .filter(|pid| {
            proc_stat(*pid).is_some_and(|(ppid, state, group)| ppid == me && state == 'Z' && group != my_group)
        })
        .collect()
}

/// A replica's children that start their own session, directly (`setsid`) or as a daemon does (a shell that
/// forks and exits at once), are stopped with the App instead of living on under init, and none is left a
/// zombie.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn processes_that_leave_their_replica_are_stopped_with_it() {
    let tp = TestPlane::start().await;
    let marker = format!("E2E_ESCAPE_{}", std::process::id());
    tp.apply(&app_yaml("escaper", 1, &[("TESTAPP_SPAWN_SETSID", "1"), ("E2E_MARKER", &marker)], READINESS));
    let entry = format!("E2E_MARKER={marker}");
    let pids = eventually("the replica and the two processes that left it run", T, || async {
        let p = processes_with_env(&entry);
        (p.len() == 3).then_some(p)
    })
    .await;
    let me = std::process::id();
    let groups: std::collections::HashSet<u32> = pids.iter().filter_map(|p| proc_stat(*p).map(|s| s.2)).collect();
    assert_eq!(groups.len(), 3, "each is in a process group of its own: {pids:?}");
    assert!(
        pids.iter().any(|p| proc_stat(*p).is_some_and(|s| s.0 == me)),
        "the daemon's orphan was re-parented to Capstan, not to init: {pids:?}"
    );
    tp.client.delete("/api/v1/namespaces/default/apps/escaper").await.expect("delete");
    eventually("nothing of the App is left", T, || async { processes_with_env(&entry).is_empty().then_some(()) }).await;
    eventually("its orphans were reaped", T, || async { unreaped_orphans().is_empty().then_some(()) }).await;
    tp.stop().await;
}

/// Sends raw bytes to 127.0.0.1:`port` and reads the answer until the connection closes (or 20 s pass).
async fn raw(port: u16, request: &str) -> String {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut s = tokio::net::TcpStream::connect(("127.0.0.1", port)).await.expect("connect");
    s.write_all(request.as_bytes()).await.expect("send");
    let mut out = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(20), s.read_to_end(&mut out)).await;
    String::from_utf8_lossy(&out).to_string()
}

/// The balancer's edges: an Upgrade request with a body, `Connection: host`, malformed and oversized chunked
/// bodies. Each gets the answer HTTP says, not a hang or a 502 blamed on the replica.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn balancer_edges_upgrade_with_a_body_connection_host_and_bad_chunks() {
    let tp = TestPlane::start().await;
    let port = free_port();
    let extra = format!("{READINESS}  expose:\n    - port: {port}\n      maxBodySize: 1Ki\n");
    tp.apply(&app_yaml("edges", 1, &[], &extra));
    eventually("edges is Ready", T, || async { ready(&tp.app("edges").await).then_some(()) }).await;
    eventually("the entry point answers", T, || async { http_get(port, "/").await.filter(|r| r.0 == 200) }).await;

    // The body of an Upgrade request reaches the replica (it answers without upgrading).
    let answer = raw(
        port,
        "POST /echo HTTP/1.1\r\nHost: edges\r\nConnection: Upgrade, close\r\nUpgrade: websocket\r\nContent-Length: 5\r\n\r\nhello",
    )
    .await;
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    assert!(answer.ends_with("hello"), "{answer}");
    // `Connection: host` does not take Host away from the replica.
    let answer = raw(port, "GET /headers HTTP/1.1\r\nHost: shop.example\r\nConnection: host, close\r\n\r\n").await;
    let json = answer.split("\r\n\r\n").nth(1).unwrap_or("");
    let headers: Value = serde_json::from_str(json).unwrap_or_else(|e| panic!("{e}: {answer}"));
    assert_eq!(headers["host"], "shop.example", "{answer}");
    // A chunk size that is not hexadecimal is the client's error.
    let answer = raw(
        port,
        "POST /echo HTTP/1.1\r\nHost: edges\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\nzz\r\nhello\r\n0\r\n\r\n",
    )
    .await;
    assert!(answer.starts_with("HTTP/1.1 400"), "{answer}");
    assert!(answer.contains("malformed"), "{answer}");
    // A chunked body longer than maxBodySize: 413, as for a Content-Length that says so.
    let chunk = "x".repeat(1000);
    let answer = raw(
        port,
        &format!(
            "POST /echo HTTP/1.1\r\nHost: edges\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n3e8\r\n{chunk}\r\n3e8\r\n{chunk}\r\n0\r\n\r\n"
        ),
    )
    .await;
    assert!(answer.starts_with("HTTP/1.1 413"), "{answer}");
    tp.stop().await;
}

/// An App that writes 12 MiB without a newline: `logs --tail 1` shows that line, cut at 256 KiB and saying how
/// much was left out, instead of a line too long to show.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn output_without_newlines_is_shown_cut_by_tail() {
    let tp = TestPlane::start().await;
    tp.apply(&app_yaml("noline", 1, &[("TESTAPP_NO_NEWLINE_MB", "12")], READINESS));
    eventually("noline is Ready", T, || async { ready(&tp.app("noline").await).then_some(()) }).await;
    let path = "/api/v1/namespaces/default/apps/noline/logs?tail=1";
    let cut_of = |text: &str| -> usize {
        text.rsplit("[… ").next().and_then(|r| r.split(' ').next()).and_then(|n| n.parse().ok()).unwrap_or(0)
    };
    let last = eventually("the whole output was captured", T, || async {
        let mut rx = tp.client.stream(path).await.ok()?;
        let text = rx.recv().await?["text"].as_str()?.to_string();
        // Until every record is written, the line read is shorter.
        (cut_of(&text) + 256 * 1024 == 12 << 20).then_some(text)
    })
    .await;
    assert!(last.starts_with("yyyy"), "{}", &last[..40.min(last.len())]);
    assert!(last.len() <= 256 * 1024 + 100, "{}", last.len());
    assert!(last.ends_with("more bytes of this line not shown]"), "{}", &last[last.len().saturating_sub(80)..]);
    tp.stop().await;
}

/// Slow clients cannot hold connections busy: an entry point closes silent connections at its header timeout and
/// its own cap, a request body that stops arriving is answered 408 (on an entry point and on the unauthenticated
/// webhook path), and a client that reads nothing of a response is disconnected after four header timeouts.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slow_bodies_and_slow_readers_are_cut_off() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    // 3 s: a silent connection is closed after 3 s, well after the 100 ms that protect it from being closed for room.
    let tp = TestPlane::start_with(|c| c.header_timeout = Duration::from_secs(3)).await;
    let port = free_port();
    let extra = format!(
        "{READINESS}  expose:\n    - port: {port}\n      maxConnections: 3\n      timeouts: {{requestSeconds: 2}}\n"
    );
    tp.apply(&app_yaml("slow", 1, &[], &extra));
    eventually("slow is Ready", T, || async { ready(&tp.app("slow").await).then_some(()) }).await;
    eventually("the entry point answers", T, || async { http_get(port, "/").await.filter(|r| r.0 == 200) }).await;
    let api = api_port(&tp.client);
    let listener = format!("{{listener=\"default/slow/http-{port}\"}}");

    // An entry point's own cap and its header timeout: three silent connections fill `maxConnections: 3`; once
    // they are past the grace a connection has to send its request (100 ms), a fourth client is served by closing
    // the one idle longest; the header timeout closes the rest.
    // The connections of the requests above have closed (the server may see a client's FIN after a while).
    eventually("the entry point holds no connection", T, || async {
        let (_, metrics) = http_get(api, "/metrics").await?;
        (sample(&metrics, &format!("capstan_lb_connections{listener}")) == 0.0).then_some(())
    })
    .await;
    let silent = idle_connections(&format!("127.0.0.1:{port}"), 3).await;
    assert_eq!(silent.len(), 3);
    tokio::time::sleep(Duration::from_millis(500)).await;
    let (code, _) = http_get(port, "/").await.expect("served at the cap");
    assert_eq!(code, 200);
    eventually("the silent connections are closed", T, || async {
        (closed_by_peer(&silent) == silent.len()).then_some(())
    })
    .await;
    let (_, metrics) = http_get(api, "/metrics").await.expect("metrics");
    assert!(sample(&metrics, &format!("capstan_lb_connections_evicted_total{listener}")) >= 1.0, "{metrics}");
    assert!(sample(&metrics, &format!("capstan_lb_header_timeouts_total{listener}")) >= 1.0, "{metrics}");

    // 3 bytes of the 100 announced, then nothing.
    let stalled = "POST /echo HTTP/1.1\r\nHost: x\r\nContent-Length: 100\r\nConnection: close\r\n\r\nabc";
    let answer = raw(port, stalled).await;
    assert!(answer.starts_with("HTTP/1.1 408"), "{answer}");
    let hook = stalled.replace("/echo", "/hooks/default/nope");
    let answer = raw(api, &hook).await;
    assert!(answer.starts_with("HTTP/1.1 408"), "{answer}");

    // 64 MiB for a client that reads none of it: closed after 12 s.
    let mut s = tokio::net::TcpStream::connect(("127.0.0.1", port)).await.expect("connect");
    s.write_all(b"GET /bytes/67108864 HTTP/1.1\r\nHost: x\r\n\r\n").await.expect("request");
    tokio::time::sleep(Duration::from_secs(16)).await;
    let mut got = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(10), s.read_to_end(&mut got)).await;
    assert!(got.len() < 64 << 20, "the connection was closed before the whole answer: {} bytes", got.len());
    let (_, metrics) = http_get(api, "/metrics").await.expect("metrics");
    let held = sample(&metrics, &format!("capstan_lb_connections{listener}"));
    assert_eq!(held, 0.0, "{metrics}");
    tp.stop().await;
}
