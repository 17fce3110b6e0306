//! The model server (`capstan serve-model`'s engine) over real HTTP: TF Serving's REST API, versions swapped in
//! under load without a failed request, a corrupt version reported while the previous one keeps serving.

use std::path::Path;
use std::time::Duration;

use capstan_e2e::web::Browser;
use capstan_e2e::*;
use capstan_serving::{fixtures, ServeConfig, VersionPolicy};
use serde_json::{json, Value};

const T: Duration = Duration::from_secs(30);

/// Writes a version directory the way an exporter should: the file renamed into place.
fn publish(base: &Path, version: u64, bytes: &[u8]) {
    let dir = base.join(version.to_string());
    std::fs::create_dir_all(&dir).expect("version dir");
    std::fs::write(dir.join("model.onnx.tmp"), bytes).expect("write");
    std::fs::rename(dir.join("model.onnx.tmp"), dir.join("model.onnx")).expect("rename");
}

async fn predict(b: &mut Browser, body: Value) -> (u16, Value) {
    let r = b.post_json("/v1/models/linear:predict", &body).await.expect("answer");
    (r.status, r.json())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tf_serving_api_hot_swap_under_load_and_a_corrupt_version() {
    let base = tempfile::tempdir().expect("tempdir");
    publish(base.path(), 1, &fixtures::linear(&[3.0, -2.0], 0.5));
    let port = free_port();
    let cfg = ServeConfig {
        model_name: "linear".into(),
        base_path: base.path().to_path_buf(),
        policy: VersionPolicy::Latest(1),
        poll: Duration::from_millis(200),
        listen: format!("127.0.0.1:{port}").parse().expect("addr"),
    };
    let server = tokio::spawn(capstan_serving::serve(cfg));
    eventually("ready", T, || async { (http_get(port, "/v2/health/ready").await?.0 == 200).then_some(()) }).await;
    assert_eq!(http_get(port, "/v2/health/live").await.map(|r| r.0), Some(200));

    let mut b = Browser::new(port);
    let status = b.get("/v1/models/linear").await.expect("status").json();
    assert_eq!(
        status,
        json!({"model_version_status": [{"version": "1", "state": "AVAILABLE", "status": {"error_code": "OK", "error_message": ""}}]})
    );
    let meta = b.get("/v1/models/linear/metadata").await.expect("metadata").json();
    let sig = &meta["metadata"]["signature_def"]["signature_def"]["serving_default"];
    assert_eq!(meta["model_spec"]["version"], "1");
    assert_eq!(sig["inputs"]["x"]["dtype"], "DT_FLOAT");
    assert_eq!(
        sig["inputs"]["x"]["tensor_shape"]["dim"],
        json!([{"size": "-1", "name": ""}, {"size": "2", "name": ""}])
    );
    assert_eq!(sig["method_name"], "tensorflow/serving/predict");

    // Row format in, row format out; columnar in, columnar out; named inputs too.
    assert_eq!(
        predict(&mut b, json!({"instances": [[1, 1], [0, 0]]})).await,
        (200, json!({"predictions": [[1.5], [0.5]]}))
    );
    assert_eq!(predict(&mut b, json!({"instances": [{"x": [2, 0]}]})).await, (200, json!({"predictions": [[6.5]]})));
    assert_eq!(predict(&mut b, json!({"inputs": [[1, 1]]})).await, (200, json!({"outputs": [[1.5]]})));
    assert_eq!(predict(&mut b, json!({"inputs": {"x": [[0, 1]]}})).await, (200, json!({"outputs": [[-1.5]]})));
    let r = b.post_json("/v1/models/linear/versions/1:predict", &json!({"instances": [[0, 0]]})).await.expect("answer");
    assert_eq!((r.status, r.json()), (200, json!({"predictions": [[0.5]]})));

    // Errors are {"error": ...} with the status that fits.
    let (code, e) = predict(&mut b, json!({"instances": [[1, 2, 3]]})).await;
    assert!(code == 400 && e["error"].as_str().is_some_and(|m| m.contains("shape")), "{e}");
    let (code, e) = predict(&mut b, json!({"rows": []})).await;
    assert!(code == 400 && e["error"].as_str().is_some_and(|m| m.contains("instances")), "{e}");
    let r = b.send("POST", "/v1/models/linear:predict", Some("application/json"), "{not json").await.expect("answer");
    assert!(r.status == 400 && r.json()["error"].as_str().is_some_and(|m| m.contains("JSON")));
    let r = b.post_json("/v1/models/other:predict", &json!({"instances": [[0, 0]]})).await.expect("answer");
    assert_eq!(r.status, 404);
    assert!(r.json()["error"].is_string());
    let r = b.get("/v1/models/linear/versions/9").await.expect("answer");
    assert_eq!(r.status, 404);

    // A fixed-rate load (200 requests/s) while version 2 is published: every request answers 200 and version 2
    // takes over within a few polls.
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let load = {
        let stop = stop.clone();
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(Duration::from_millis(5));
            let mut tasks = Vec::new();
            while !stop.load(std::sync::atomic::Ordering::SeqCst) {
                tick.tick().await;
                let mut c = Browser::new(port);
                tasks.push(tokio::spawn(async move {
                    match c.post_json("/v1/models/linear:predict", &json!({"instances": [[1, 1]]})).await {
                        Ok(r) if r.status == 200 => Ok(r.json()["predictions"][0][0].as_f64().unwrap_or(f64::NAN)),
                        Ok(r) => Err(format!("{} {}", r.status, r.text())),
                        Err(e) => Err(e),
                    }
                }));
            }
            let mut out = Vec::new();
            for t in tasks {
                out.push(t.await.unwrap_or_else(|e| Err(e.to_string())));
            }
            out
        })
    };
    tokio::time::sleep(Duration::from_millis(500)).await;
    publish(base.path(), 2, &fixtures::linear(&[1.0, 1.0], 0.0));
    eventually("version 2 serves", T, || async {
        let (_, v) = predict(&mut b.clone(), json!({"instances": [[1, 1]]})).await;
        (v["predictions"][0][0] == 2.0).then_some(())
    })
    .await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    stop.store(true, std::sync::atomic::Ordering::SeqCst);
    let shots = load.await.expect("load");
    let failed: Vec<&String> = shots.iter().filter_map(|s| s.as_ref().err()).collect();
    assert!(
        failed.is_empty(),
        "{} of {} requests failed during the swap: {:?}",
        failed.len(),
        shots.len(),
        &failed[..failed.len().min(3)]
    );
    let answers: std::collections::BTreeSet<String> =
        shots.iter().filter_map(|s| s.as_ref().ok()).map(|v| v.to_string()).collect();
    assert_eq!(
        answers,
        ["1.5".to_string(), "2".to_string()].into(),
        "each request got version 1's or version 2's answer"
    );
    let status = b.get("/v1/models/linear").await.expect("status").json();
    let states: Vec<(String, String)> = status["model_version_status"]
        .as_array()
        .expect("list")
        .iter()
        .map(|s| (s["version"].as_str().unwrap_or("").to_string(), s["state"].as_str().unwrap_or("").to_string()))
        .collect();
    assert_eq!(states, [("2".into(), "AVAILABLE".into()), ("1".into(), "END".into())], "latest 1: version 1 unloaded");

    // A corrupt version 3 is reported; version 2 keeps serving.
    publish(base.path(), 3, b"this is not an ONNX model");
    // Reported once its load has been tried: a poll may first see it LOADING (the server lists a version as soon as
    // it finds it).
    let s3 = eventually("version 3 reported, its load tried", T, || async {
        let r = Browser::new(port).get("/v1/models/linear/versions/3").await.ok()?;
        let v = r.json();
        let state = v["model_version_status"][0]["state"].as_str().unwrap_or("");
        (r.status == 200 && !matches!(state, "START" | "LOADING")).then_some(v)
    })
    .await;
    let v3 = &s3["model_version_status"][0];
    assert_eq!(v3["state"], "END");
    assert_eq!(v3["status"]["error_code"], "UNKNOWN");
    assert!(v3["status"]["error_message"].as_str().is_some_and(|m| m.contains("cannot load")), "{s3}");
    assert_eq!(predict(&mut b, json!({"instances": [[1, 1]]})).await, (200, json!({"predictions": [[2.0]]})));
    let r = b.get("/v1/models/linear/versions/2").await.expect("status").json();
    assert_eq!(r["model_version_status"][0]["state"], "AVAILABLE");

    let (_, metrics) = http_get(port, "/monitoring/prometheus/metrics").await.expect("metrics");
    assert!(
        metrics.contains("capstan_model_requests_total{model=\"linear\",version=\"2\",api=\"predict\",code=\"200\"}"),
        "{metrics}"
    );
    assert!(metrics.contains("capstan_model_version_available{model=\"linear\",version=\"2\"} 1"), "{metrics}");
    assert!(metrics.contains("capstan_model_predict_duration_seconds_bucket"), "{metrics}");
    server.abort();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_model_server_scales_out_under_load_and_back_in_after_the_cooldown() {
    std::env::set_var("CAPSTAN_EXE", bin("capstan-e2e-cli"));
    let tp = TestPlane::start().await;
    let base = tempfile::tempdir().expect("tempdir");
    publish(base.path(), 1, &fixtures::linear(&[3.0, -2.0], 0.5));
    let lb = free_port();
    tp.apply(&format!(
        "apiVersion: capstan.dev/v1alpha1\nkind: ModelServer\nmetadata: {{name: linear}}\nspec:\n  basePath: {}\n  replicas: 1\n  expose: {{port: {lb}}}\n  autoscaling: {{minReplicas: 1, maxReplicas: 3, targetRequestsPerSecond: 20, cooldownSeconds: 2}}\n",
        base.path().display()
    ));
    let ms = |tp: &TestPlane| {
        let c = tp.client.clone();
        async move { c.get("/api/v1/namespaces/default/modelservers/linear").await.ok() }
    };
    eventually("one server ready", T, || async {
        let o = ms(&tp).await?;
        (o["status"]["readyReplicas"] == 1).then_some(())
    })
    .await;

    // About 100 predictions a second through the balancer: five times what one replica should take.
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let load = {
        let stop = stop.clone();
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(Duration::from_millis(10));
            let (mut ok, mut failed) = (0u32, Vec::new());
            let mut c = Browser::new(lb);
            while !stop.load(std::sync::atomic::Ordering::SeqCst) {
                tick.tick().await;
                match c.post_json("/v1/models/linear:predict", &json!({"instances": [[1, 1]]})).await {
                    Ok(r) if r.status == 200 => ok += 1,
                    Ok(r) => failed.push(format!("{} {}", r.status, r.text())),
                    Err(e) => failed.push(e),
                }
            }
            (ok, failed)
        })
    };
    eventually("scaled out", Duration::from_secs(90), || async {
        let o = ms(&tp).await?;
        (o["status"]["autoscaling"]["desiredReplicas"].as_i64()? >= 2 && o["status"]["readyReplicas"].as_i64()? >= 2)
            .then_some(o)
    })
    .await;
    stop.store(true, std::sync::atomic::Ordering::SeqCst);
    let (ok, failed) = load.await.expect("load");
    assert!(
        failed.is_empty(),
        "{} of {} requests failed while scaling: {:?}",
        failed.len(),
        ok as usize + failed.len(),
        &failed[..failed.len().min(3)]
    );
    // The Scaled event says why, with the rate it saw (the status's rate may already be the next, restarted
    // sample): `1 → 3 replicas: 97.5 req/s for a target of 20 per replica`.
    let events = tp.client.get("/api/v1/namespaces/default/modelservers/linear/events").await.expect("events");
    let why = events["items"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|e| e["reason"] == "Scaled")
        .filter_map(|e| e["message"].as_str())
        .find(|m| m.starts_with("1 → "))
        .unwrap_or_else(|| panic!("a Scaled event from 1 replica: {events}"))
        .to_string();
    let rate: f64 = why
        .split(": ")
        .nth(1)
        .and_then(|r| r.split_whitespace().next())
        .and_then(|r| r.parse().ok())
        .unwrap_or_else(|| panic!("a rate in {why:?}"));
    assert!(rate > 20.0, "scaled out at {rate} req/s: {why}");

    // Idle: back to the minimum once the cooldown has passed.
    eventually("scaled back in", Duration::from_secs(90), || async {
        let o = ms(&tp).await?;
        let app = tp.client.get("/api/v1/namespaces/default/apps/linear-server").await.ok()?;
        (o["status"]["autoscaling"]["desiredReplicas"] == 1 && app["spec"]["replicas"] == 1).then_some(())
    })
    .await;
    tp.stop().await;
}

/// Issue 20, items 3 and 7: replicas of one ModelServer that serve different versions (one polls slowly and still
/// serves version 1 when a new one already serves version 2) are reported, the ModelServer is not Ready, and the
/// balancer sends every request to the replica serving the agreed version until they agree again. A version that
/// fails to load shows its error in the ModelServer's status.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replicas_serving_different_versions_are_reported_and_kept_out_of_the_balancer() {
    std::env::set_var("CAPSTAN_EXE", bin("capstan-e2e-cli"));
    let tp = TestPlane::start().await;
    let base = tempfile::tempdir().expect("tempdir");
    publish(base.path(), 1, &fixtures::linear(&[3.0, -2.0], 0.5));
    let lb = free_port();
    let manifest = |replicas: u32| {
        format!(
            "apiVersion: capstan.dev/v1alpha1\nkind: ModelServer\nmetadata: {{name: lin}}\nspec:\n  model: linear\n  basePath: {}\n  replicas: {replicas}\n  pollSeconds: 25\n  expose: {{port: {lb}}}\n",
            base.path().display()
        )
    };
    tp.apply(&manifest(1));
    let ms = || async { tp.client.get("/api/v1/namespaces/default/modelservers/lin").await.ok() };
    eventually("version 1 served", T, || async {
        let o = ms().await?;
        (o["status"]["readyReplicas"] == 1 && o["status"]["agreedVersions"] == json!([1])).then_some(())
    })
    .await;

    // Version 2 arrives; lin-server-0 will not look for 25 s. A second replica starts and serves version 2 at once.
    publish(base.path(), 2, &fixtures::linear(&[1.0, 1.0], 0.0));
    tp.apply(&manifest(2));
    let o = eventually("the disagreement is seen", T, || async {
        let o = ms().await?;
        let said = o["status"]["conditions"].as_array()?.iter().any(|c| c["reason"] == "VersionsDisagree");
        // Seen at two looks in a row before it is said (replicas a poll apart are no alarm).
        (o["status"]["agreedVersions"] == json!([2]) && o["status"]["replicas"].as_array()?.len() == 2 && said)
            .then_some(o)
    })
    .await;
    let st = &o["status"];
    assert_eq!(st["replicas"][0], json!({"name": "lin-server-0", "versions": [1], "agrees": false, "ready": true}));
    assert_eq!(st["replicas"][1], json!({"name": "lin-server-1", "versions": [2], "agrees": true, "ready": true}));
    let ready = st["conditions"].as_array().and_then(|c| c.iter().find(|c| c["type"] == "Ready")).cloned();
    let ready = ready.expect("Ready condition");
    assert_eq!((ready["status"].as_str(), ready["reason"].as_str()), (Some("False"), Some("VersionsDisagree")));
    assert_eq!(st["readyReplicas"], 1, "only the agreeing replica counts");
    let app = tp.app("lin-server").await;
    assert_eq!(app["metadata"]["annotations"]["capstan.dev/out-of-rotation"], "lin-server-0");
    // Every request through the balancer is answered by version 2 (x·[1,1] = 2; version 1 would say 1.5).
    eventually("the balancer left lin-server-0 out", T, || async {
        let mut b = Browser::new(lb);
        let r = b.post_json("/v1/models/linear:predict", &json!({"instances": [[1, 1]]})).await.ok()?;
        (r.json()["predictions"] == json!([[2.0]])).then_some(())
    })
    .await;
    let mut b = Browser::new(lb);
    for _ in 0..20 {
        let r = b.post_json("/v1/models/linear:predict", &json!({"instances": [[1, 1]]})).await.expect("answer");
        assert_eq!(r.json()["predictions"], json!([[2.0]]), "answered by the replica serving version 2");
    }

    // lin-server-0 polls, loads version 2 and unloads 1: they agree, both get traffic, Ready again.
    eventually("the replicas agree", Duration::from_secs(45), || async {
        let o = ms().await?;
        let agree = o["status"]["replicas"].as_array()?.iter().all(|r| r["agrees"] == true);
        let ready = o["status"]["conditions"].as_array()?.iter().any(|c| c["type"] == "Ready" && c["status"] == "True");
        (agree && ready && o["status"]["readyReplicas"] == 2).then_some(())
    })
    .await;
    assert!(tp.app("lin-server").await["metadata"]["annotations"].get("capstan.dev/out-of-rotation").is_none());
    let events = tp.client.get("/api/v1/namespaces/default/modelservers/lin/events").await.expect("events");
    assert!(events.to_string().contains("VersionsDisagree"), "{events}");

    // A corrupt version 3: reported with its error; version 2 keeps serving.
    publish(base.path(), 3, b"not an onnx model");
    tp.apply(&manifest(2).replace("pollSeconds: 25", "pollSeconds: 1"));
    let v3 = eventually("version 3's error in the status", Duration::from_secs(60), || async {
        let o = ms().await?;
        o["status"]["versions"].as_array()?.iter().find(|v| v["version"] == 3 && v["error"].is_string()).cloned()
    })
    .await;
    assert_eq!((v3["wanted"].as_bool(), v3["state"].as_str()), (Some(true), Some("END")), "{v3}");
    assert!(v3["error"].as_str().unwrap_or("").contains("cannot load"), "{v3}");
    let r = b.post_json("/v1/models/linear:predict", &json!({"instances": [[1, 1]]})).await.expect("answer");
    assert_eq!(r.json()["predictions"], json!([[2.0]]));
    tp.stop().await;
}
