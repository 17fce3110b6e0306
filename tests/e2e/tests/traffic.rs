//! The load balancer end to end: zero-downtime updates under open-loop load, stickiness, websockets through an
//! update, SIGKILL under load, a failing update rolled back, and TCP passthrough.

use std::collections::HashMap;
use std::time::Duration;

use capstan_e2e::*;
use futures_util::{SinkExt, StreamExt};
use serde_json::Value;
use tokio::sync::watch;

const T: Duration = Duration::from_secs(60);

/// A 3-replica HTTP App behind an entry point; `version` goes into VERSION.
fn web(name: &str, port: u16, version: &str, extra: &str) -> String {
    let expose = format!("  expose:\n    - port: {port}\n      drainSeconds: 2\n{extra}");
    app_yaml(name, 3, &[("VERSION", version)], &format!("{READINESS}{expose}"))
}

async fn rolled_out(tp: &TestPlane, name: &str) -> Value {
    eventually("rollout complete", T, || async {
        let o = tp.app(name).await;
        let done = ready(&o)
            && o["status"]["rollout"]["phase"] == "Complete"
            && o["status"]["currentRevision"] == o["status"]["revision"];
        done.then_some(o)
    })
    .await
}

async fn update_under_load(keep_alive: bool, update: &str) {
    let tp = TestPlane::start().await;
    let port = free_port();
    let web = |name: &str, port: u16, v: &str, extra: &str| {
        web(name, port, v, extra).replace(READINESS, &format!("{READINESS}{update}"))
    };
    tp.apply(&web("zd", port, "1", ""));
    rolled_out(&tp, "zd").await;
    let (stop_tx, stop) = watch::channel(false);
    let load = tokio::spawn(open_loop(
        format!("http://127.0.0.1:{port}/version"),
        hyper::Method::GET,
        100,
        keep_alive,
        stop,
        Duration::from_secs(40),
    ));
    tokio::time::sleep(Duration::from_millis(800)).await;
    tp.apply(&web("zd", port, "2", ""));
    let o = eventually("v2 rolled out", T, || async {
        let o = tp.app("zd").await;
        let done = ready(&o) && o["status"]["rollout"]["phase"] == "Complete" && o["metadata"]["generation"] == 2;
        done.then_some(o)
    })
    .await;
    tokio::time::sleep(Duration::from_millis(800)).await;
    stop_tx.send(true).unwrap();
    let shots = load.await.unwrap();
    let failed = failures(&shots);
    assert!(
        failed.is_empty(),
        "keep-alive={keep_alive}: {} of {} failed, first: {:?}",
        failed.len(),
        shots.len(),
        failed.first()
    );
    assert!(shots.len() > 150, "the load ran before, during and after the update ({} requests)", shots.len());
    let v1 = shots.iter().filter(|s| s.body.starts_with("1 ")).count();
    let v2 = shots.iter().filter(|s| s.body.starts_with("2 ")).count();
    assert!(v1 > 0 && v2 > 0, "both versions served ({v1} v1, {v2} v2)");
    assert_eq!(o["status"]["restarts"], 0);
    tp.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rolling_update_under_open_loop_load_with_keep_alive_has_no_errors() {
    update_under_load(true, "").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn surge_update_under_open_loop_load_has_no_errors() {
    update_under_load(true, "  update: {strategy: Surge}\n").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rolling_update_under_open_loop_load_without_keep_alive_has_no_errors() {
    update_under_load(false, "").await;
}

/// Sends a request with an optional routing cookie; returns (replica, cookie set by the balancer).
async fn sticky_get(port: u16, cookie: Option<&str>) -> (String, Option<String>) {
    use http_body_util::{BodyExt, Empty};
    let client = hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
        .build_http::<Empty<bytes::Bytes>>();
    let mut req = hyper::Request::get(format!("http://127.0.0.1:{port}/"));
    if let Some(c) = cookie {
        req = req.header("cookie", format!("ROUTE={c}"));
    }
    let res = client.request(req.body(Empty::new()).unwrap()).await.expect("response");
    assert_eq!(res.status(), 200);
    let set = res
        .headers()
        .get("set-cookie")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.split(';').next())
        .and_then(|kv| kv.strip_prefix("ROUTE="))
        .map(str::to_string);
    let body = res.into_body().collect().await.unwrap().to_bytes();
    (String::from_utf8_lossy(&body).to_string(), set)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sticky_cookie_clients_stay_move_once_when_their_replica_dies_then_stay() {
    let tp = TestPlane::start().await;
    let port = free_port();
    tp.apply(&web("sticky", port, "1", "      sticky: {cookie: {name: ROUTE}}\n"));
    let o = rolled_out(&tp, "sticky").await;
    // 200 clients, each with its own cookie jar.
    let mut jars: Vec<String> = Vec::new();
    for _ in 0..200 {
        let (replica, set) = sticky_get(port, None).await;
        let cookie = set.expect("a new client gets a routing cookie");
        assert!(cookie.starts_with(&format!("{replica}.")), "the cookie names the replica that answered: {cookie}");
        jars.push(cookie);
    }
    let spread: HashMap<&str, usize> = jars.iter().fold(HashMap::new(), |mut m, j| {
        *m.entry(j.split('.').next().unwrap()).or_default() += 1;
        m
    });
    assert_eq!(spread.len(), 3, "new sessions are spread: {spread:?}");
    for jar in jars.iter().step_by(7) {
        for _ in 0..3 {
            let (replica, set) = sticky_get(port, Some(jar)).await;
            assert!(jar.starts_with(&format!("{replica}.")));
            assert!(set.is_none(), "a valid cookie is not rewritten");
        }
    }
    // Kill the replica of the first client. Its process is gone even if the replica comes back at once.
    let victim = jars[0].clone();
    let victim_name = victim.split('.').next().unwrap().to_string();
    let pid = replicas(&o).iter().find(|r| r["name"] == victim_name.as_str()).unwrap()["pid"].as_u64().unwrap();
    nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid as i32), nix::sys::signal::Signal::SIGKILL).unwrap();
    let mut moved = 0;
    for jar in jars.iter_mut().filter(|j| **j == victim) {
        let (replica, set) = sticky_get(port, Some(jar)).await;
        let new = set.expect("the balancer re-pins a client whose process is gone");
        assert_ne!(&new, jar, "the client moved");
        assert!(new.starts_with(&format!("{replica}.")));
        *jar = new;
        moved += 1;
        for _ in 0..2 {
            let (again, set) = sticky_get(port, Some(jar)).await;
            assert!(jar.starts_with(&format!("{again}.")), "after moving once, the client stays");
            assert!(set.is_none());
        }
    }
    // Clients of the other replicas never noticed.
    for jar in jars.iter().filter(|j| !j.starts_with(&format!("{victim_name}."))).step_by(5) {
        let (replica, set) = sticky_get(port, Some(jar)).await;
        assert!(jar.starts_with(&format!("{replica}.")) && set.is_none());
    }
    assert!(moved > 0);
    tp.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkill_under_load_fails_only_requests_in_flight() {
    let tp = TestPlane::start().await;
    let port = free_port();
    tp.apply(&web("kill", port, "1", ""));
    let o = rolled_out(&tp, "kill").await;
    let (stop_tx, stop) = watch::channel(false);
    let gets = tokio::spawn(open_loop(
        format!("http://127.0.0.1:{port}/version"),
        hyper::Method::GET,
        100,
        true,
        stop.clone(),
        Duration::from_secs(30),
    ));
    let posts = tokio::spawn(open_loop(
        format!("http://127.0.0.1:{port}/echo"),
        hyper::Method::POST,
        50,
        true,
        stop,
        Duration::from_secs(30),
    ));
    tokio::time::sleep(Duration::from_millis(700)).await;
    let pid = replicas(&o)[1]["pid"].as_u64().unwrap();
    nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid as i32), nix::sys::signal::Signal::SIGKILL).unwrap();
    // kill() only queues the signal; the replica dies when the kernel gets to it. Requests sent before that moment
    // were in flight on a live replica.
    while alive(pid as u32) {
        tokio::task::yield_now().await;
    }
    let died_at = tokio::time::Instant::now();
    eventually("replaced", T, || async {
        let o = tp.app("kill").await;
        (ready(&o) && replicas(&o)[1]["pid"].as_u64() != Some(pid)).then_some(())
    })
    .await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    stop_tx.send(true).unwrap();
    let gets = gets.await.unwrap();
    let posts = posts.await.unwrap();
    assert!(failures(&gets).is_empty(), "idempotent GETs are retried: {:?}", failures(&gets).first());
    for f in failures(&posts) {
        assert!(f.started <= died_at, "a POST that failed was sent after the replica died: {f:?}");
    }
    assert!(gets.len() > 100 && posts.len() > 50);
    let ok_posts: Vec<_> = posts.iter().filter(|s| s.outcome == Ok(200)).collect();
    assert!(ok_posts.iter().all(|s| s.body.starts_with("payload ")), "bodies were streamed through");
    tp.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failing_new_version_is_rolled_back_while_old_replicas_serve() {
    let tp = TestPlane::start().await;
    let port = free_port();
    let flag = tp.dir.path().join("v2-never-ready");
    let update = "  update: {autoRollback: true, progressDeadlineSeconds: 3}\n";
    let v1 = web("canary", port, "1", update);
    tp.apply(&v1);
    rolled_out(&tp, "canary").await;
    let (stop_tx, stop) = watch::channel(false);
    let load = tokio::spawn(open_loop(
        format!("http://127.0.0.1:{port}/version"),
        hyper::Method::GET,
        50,
        true,
        stop,
        Duration::from_secs(40),
    ));
    // Version 2 never becomes ready.
    std::fs::write(&flag, "1").unwrap();
    let v2 = web("canary", port, "2", update).replace(
        "      VERSION: \"2\"\n",
        &format!("      VERSION: \"2\"\n      TESTAPP_READY_FILE: \"{}\"\n", flag.display()),
    );
    // Applied from a file, as `diff -f` below reads it (the same directory, so only the revision differs).
    let file = tp.dir.path().join("canary-v2.yaml");
    std::fs::write(&file, &v2).unwrap();
    let cli = |args: &[&str]| tp.cli(args);
    let applied = cli(&["apply", "-f", file.to_str().unwrap()]);
    assert!(applied.status.success(), "{}", String::from_utf8_lossy(&applied.stderr));
    let o = eventually("rolled back", T, || async {
        let o = tp.app("canary").await;
        let back = o["status"]["rollout"]["phase"] == "RolledBack"
            && replicas(&o).iter().all(|r| r["ready"] == true && r["revision"] == o["status"]["currentRevision"]);
        back.then_some(o)
    })
    .await;
    stop_tx.send(true).unwrap();
    let shots = load.await.unwrap();
    assert!(failures(&shots).is_empty(), "old replicas served throughout: {:?}", failures(&shots).first());
    assert!(shots.iter().all(|s| s.body.starts_with("1 ")), "only version 1 ever answered");
    let msg = o["status"]["rollout"]["message"].as_str().unwrap();
    assert!(msg.contains("progress deadline of 3s exceeded"), "{msg}");
    let ready_cond =
        o["status"]["conditions"].as_array().unwrap().iter().find(|c| c["type"] == "Ready").unwrap().clone();
    assert_eq!(ready_cond["status"], "False");
    assert_eq!(ready_cond["reason"], "RolledBack");
    let events = tp.client.get("/api/v1/namespaces/default/apps/canary/events").await.unwrap().to_string();
    assert!(events.contains("RolloutRolledBack"), "{events}");
    // The spec says version 2, the replicas run version 1: `diff` against the file says so, and `get` shows it.
    let diff = cli(&["diff", "-f", file.to_str().unwrap()]);
    let out = String::from_utf8_lossy(&diff.stdout).to_string();
    assert_eq!(diff.status.code(), Some(1), "a difference: {out}{}", String::from_utf8_lossy(&diff.stderr));
    let running = o["status"]["currentRevision"].as_str().unwrap();
    assert!(out.contains(&format!("! App/default/canary runs revision {running}, not the file's")), "{out}");
    let get = String::from_utf8_lossy(&cli(&["get", "apps", "-o", "wide"]).stdout).to_string();
    assert!(get.contains("RolledBack") && get.contains(&format!("{running} (declared ")), "{get}");
    tp.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn websocket_stays_open_until_its_replica_drains_then_reconnects() {
    let tp = TestPlane::start().await;
    let port = free_port();
    tp.apply(&web("ws", port, "1", ""));
    rolled_out(&tp, "ws").await;
    let url = format!("ws://127.0.0.1:{port}/ws");
    let (mut socket, _) = tokio_tungstenite::connect_async(&url).await.expect("websocket through the balancer");
    socket.send("hello".into()).await.unwrap();
    let first = socket.next().await.unwrap().unwrap().into_text().unwrap().to_string();
    assert!(first.starts_with("1 ws-"), "{first}");
    // The tunnel outlives its HTTP connection but keeps its place among the entry point's connections.
    let (_, metrics) = http_get(tp.plane().addr().port(), "/metrics").await.expect("metrics");
    let held = format!("capstan_lb_connections{{listener=\"default/ws/http-{port}\"}} 1");
    assert!(metrics.contains(&held), "{metrics}");
    tp.apply(&web("ws", port, "2", ""));
    // Keep talking on the old socket until the replica drains and closes it.
    let mut answers_before_close = 0;
    let closed = tokio::time::timeout(T, async {
        loop {
            if socket.send("ping".into()).await.is_err() {
                return;
            }
            match tokio::time::timeout(Duration::from_secs(5), socket.next()).await {
                Ok(Some(Ok(m))) if m.is_text() => {
                    assert!(m.into_text().unwrap().starts_with("1 "), "the old socket stays on version 1");
                    answers_before_close += 1;
                }
                Ok(Some(Ok(_))) => {}
                _ => return,
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    })
    .await;
    assert!(closed.is_ok(), "the socket closed when its replica drained");
    assert!(answers_before_close > 0, "it stayed open while the update started");
    rolled_out(&tp, "ws").await;
    let (mut again, _) = tokio_tungstenite::connect_async(&url).await.expect("reconnect");
    again.send("back".into()).await.unwrap();
    let reply = again.next().await.unwrap().unwrap().into_text().unwrap().to_string();
    assert!(reply.starts_with("2 ws-") && reply.ends_with(" back"), "{reply}");
    tp.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tcp_passthrough_keeps_accepting_through_a_rolling_update() {
    use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
    let tp = TestPlane::start().await;
    let port = free_port();
    let yaml = |v: &str| {
        app_yaml("echo", 3, &[("TESTAPP_TCP_ECHO", "1"), ("VERSION", v)], &format!(
            "  probes:\n    readiness: {{tcp: {{port: http}}, periodSeconds: 1}}\n  update: {{minReadySeconds: 1}}\n  expose:\n    - port: {port}\n      protocol: tcp\n      drainSeconds: 1\n"
        ))
    };
    tp.apply(&yaml("1"));
    rolled_out(&tp, "echo").await;
    tp.apply(&yaml("2"));
    let mut ok = 0;
    let mut seen = std::collections::BTreeSet::new();
    let deadline = tokio::time::Instant::now() + T;
    loop {
        let mut s = tokio::net::TcpStream::connect(("127.0.0.1", port)).await.expect("the entry point accepts");
        s.write_all(b"hi\n").await.unwrap();
        let mut line = String::new();
        BufReader::new(&mut s).read_line(&mut line).await.unwrap();
        assert!(line.ends_with(" hi\n"), "echoed through a replica: {line:?}");
        seen.insert(line.split(' ').next().unwrap().to_string());
        ok += 1;
        let o = tp.app("echo").await;
        if ready(&o) && o["status"]["rollout"]["phase"] == "Complete" && o["metadata"]["generation"] == 2 {
            break;
        }
        assert!(tokio::time::Instant::now() < deadline, "update did not finish");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(ok > 20, "connections were made throughout the update ({ok})");
    assert!(seen.len() >= 2, "connections spread over replicas: {seen:?}");
    tp.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http_edges_body_limit_forwarded_headers_no_replica_and_client_ip_stickiness() {
    let tp = TestPlane::start().await;
    let port = free_port();
    let extra = "      maxBodySize: 1Ki\n      sticky: {clientIP: {timeoutSeconds: 60}}\n";
    tp.apply(&web("edge", port, "1", extra));
    rolled_out(&tp, "edge").await;
    use http_body_util::{BodyExt, Full};
    let client = hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
        .build_http::<Full<bytes::Bytes>>();
    let send = |method: hyper::Method, path: &str, body: Vec<u8>, xff: &[&str]| {
        let mut req = hyper::Request::builder().method(method).uri(format!("http://127.0.0.1:{port}{path}"));
        for x in xff {
            req = req.header("x-forwarded-for", *x);
        }
        let req = req.body(Full::new(bytes::Bytes::from(body))).unwrap();
        let client = client.clone();
        async move {
            let res = client.request(req).await.unwrap();
            let code = res.status().as_u16();
            (code, String::from_utf8_lossy(&res.into_body().collect().await.unwrap().to_bytes()).to_string())
        }
    };
    // A body over maxBodySize is refused before it reaches a replica.
    let (code, body) = send(hyper::Method::POST, "/echo", vec![b'x'; 2048], &[]).await;
    assert_eq!(code, 413, "{body}");
    let (code, body) = send(hyper::Method::POST, "/echo", vec![b'y'; 512], &[]).await;
    assert_eq!((code, body.len()), (200, 512));
    // X-Forwarded-For gets the client appended; X-Forwarded-Proto and -Host are set.
    let (_, env) = send(hyper::Method::GET, "/headers", vec![], &["10.1.2.3"]).await;
    let h: Value = serde_json::from_str(&env).unwrap();
    assert_eq!(h["x-forwarded-for"], "10.1.2.3, 127.0.0.1");
    assert_eq!(h["x-forwarded-proto"], "http");
    assert_eq!(h["x-forwarded-host"], format!("127.0.0.1:{port}"));
    let (_, env) = send(hyper::Method::GET, "/headers", vec![], &[]).await;
    let h: Value = serde_json::from_str(&env).unwrap();
    assert_eq!(h["x-forwarded-for"], "127.0.0.1");
    // Two X-Forwarded-For lines reach the replica as one list, every hop kept.
    let (_, env) = send(hyper::Method::GET, "/headers", vec![], &["10.1.2.3", "10.4.5.6, 10.7.8.9"]).await;
    let h: Value = serde_json::from_str(&env).unwrap();
    assert_eq!(h["x-forwarded-for"], "10.1.2.3, 10.4.5.6, 10.7.8.9, 127.0.0.1");
    // Client-IP stickiness: every request from this address lands on one replica.
    let mut seen = std::collections::BTreeSet::new();
    for _ in 0..12 {
        seen.insert(send(hyper::Method::GET, "/version", vec![], &[]).await.1);
    }
    assert_eq!(seen.len(), 1, "one client address, one replica: {seen:?}");
    // No Ready replica: 503 naming the App, not a hang.
    tp.apply(&web("edge", port, "1", extra).replace("replicas: 3", "replicas: 0"));
    let (code, body) = eventually("503 with no replica", T, || async {
        let r = send(hyper::Method::GET, "/", vec![], &[]).await;
        (r.0 == 503).then_some(r)
    })
    .await;
    assert_eq!(code, 503);
    assert!(body.contains("no ready replica of App default/edge"), "{body}");
    let metrics = http_get(tp.plane().addr().port(), "/metrics").await.unwrap().1;
    assert!(metrics.contains("capstan_lb_errors_total{namespace=\"default\",app=\"edge\",entry=\"http-"), "{metrics}");
    assert!(metrics.contains("kind=\"body_too_large\"} 1"), "{metrics}");
    tp.stop().await;
}
