//! TrainingJobs on the embedded runtime: TF_CONFIG, restart policies, deadlines and clean-up with small scripts,
//! then real TensorFlow (CPU, in the venv `scripts/setup-tf.sh` makes) with both distribution strategies.

use std::path::PathBuf;
use std::time::Duration;

use capstan_e2e::*;
use serde_json::Value;

const T: Duration = Duration::from_secs(120);

async fn job(tp: &TestPlane, name: &str) -> Option<Value> {
    tp.client.get(&format!("/api/v1/namespaces/default/trainingjobs/{name}")).await.ok()
}

fn condition(o: &Value, t: &str) -> Option<(String, String, String)> {
    o["status"]["conditions"].as_array()?.iter().find(|c| c["type"] == t && c["status"] == "True").map(|c| {
        (
            c["reason"].as_str().unwrap_or("").to_string(),
            c["message"].as_str().unwrap_or("").to_string(),
            c["lastTransitionTime"].as_str().unwrap_or("").to_string(),
        )
    })
}

/// Waits until the job has finished; returns it and `Succeeded` or `Failed`.
async fn finished(tp: &TestPlane, name: &str, limit: Duration) -> (Value, &'static str) {
    eventually(&format!("TrainingJob {name} finished"), limit, || async {
        let o = job(tp, name).await?;
        if condition(&o, "Succeeded").is_some() {
            return Some((o, "Succeeded"));
        }
        condition(&o, "Failed").is_some().then_some((o, "Failed"))
    })
    .await
}

fn sh(script: &str) -> String {
    format!("[/bin/sh, -c, {}]", serde_json::to_string(script).expect("json"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_task_gets_tf_config_and_the_chief_decides_success() {
    let tp = TestPlane::start().await;
    // Each task writes its TF_CONFIG where the test can read it; the chief waits for the others, then succeeds.
    // The ps never exits by itself: cleanPolicy Running stops it once the chief has succeeded.
    // The workers exit right after writing; the chief also waits until they are gone (reaped), so that they
    // have finished before the chief ends the job, rather than racing it: with the CI machine busy with
    // TensorFlow, a worker's exit was once seen after the chief's and cleaned as still running.
    let dump = r#"echo "$TF_CONFIG" > "$TRAINING_DIR/$CAPSTAN_APP.json"; echo "task $CAPSTAN_APP says hello""#;
    let worker = format!(r#"echo $$ > "$TRAINING_DIR/$CAPSTAN_APP.pid"; {dump}"#);
    let chief = format!(
        r#"{dump}; while [ $(ls "$TRAINING_DIR" | grep -c '\.json$') -lt 4 ]; do sleep 0.1; done; for f in "$TRAINING_DIR"/*-worker-*.pid; do while kill -0 $(cat "$f") 2>/dev/null; do sleep 0.05; done; done; sleep 1; exit 0"#
    );
    let yaml = format!(
        "apiVersion: capstan.dev/v1alpha1\nkind: TrainingJob\nmetadata: {{name: tfc}}\nspec:\n  replicaSpecs:\n    Chief: {{replicas: 1, run: {{command: {}}}}}\n    Worker: {{replicas: 2, run: {{command: {}}}}}\n    PS: {{replicas: 1, run: {{command: {}}}}}\n",
        sh(&chief),
        sh(&worker),
        sh(&format!("{dump}; exec sleep 600")),
    );
    tp.apply(&yaml);
    let (o, how) = finished(&tp, "tfc", T).await;
    assert_eq!(how, "Succeeded", "{o}");
    let dir = PathBuf::from(o["status"]["trainingDir"].as_str().expect("trainingDir"));
    let read = |n: &str| -> Value {
        serde_json::from_str(&std::fs::read_to_string(dir.join(format!("{n}.json"))).expect("TF_CONFIG written"))
            .expect("TF_CONFIG is JSON")
    };
    let c = read("tfc-chief-0");
    let addr = |name: &str| {
        o["status"]["tasks"].as_array().unwrap().iter().find(|t| t["name"] == name).unwrap()["address"].clone()
    };
    assert_eq!(c["cluster"]["chief"], serde_json::json!([addr("tfc-chief-0")]));
    assert_eq!(c["cluster"]["worker"], serde_json::json!([addr("tfc-worker-0"), addr("tfc-worker-1")]));
    assert_eq!(c["cluster"]["ps"], serde_json::json!([addr("tfc-ps-0")]));
    assert_eq!(c["task"], serde_json::json!({"type": "chief", "index": 0}));
    assert_eq!(c["environment"], "cloud");
    for (n, t, i) in [("tfc-worker-1", "worker", 1), ("tfc-ps-0", "ps", 0)] {
        let x = read(n);
        assert_eq!(x["cluster"], c["cluster"], "every task sees the same cluster");
        assert_eq!(x["task"], serde_json::json!({"type": t, "index": i}));
    }
    assert!(addr("tfc-ps-0").as_str().unwrap().starts_with("127.0.0.1:"));
    // Issue 20, item 8: the ps was stopped (its App removed), and the finished tasks leave no App behind to be
    // listed as broken; their state is the job's status and their logs stay readable until the job is deleted.
    eventually("the task Apps are gone", T, || async {
        let apps = tp.client.get("/api/v1/apps?namespace=default").await.ok()?;
        let left: Vec<String> =
            apps["items"].as_array()?.iter().filter_map(|a| a["metadata"]["name"].as_str()).map(String::from).collect();
        left.iter().all(|n| !n.starts_with("tfc-")).then_some(())
    })
    .await;
    assert_eq!(o["status"]["replicaStatuses"]["Worker"]["succeeded"], 2);
    assert!(o["status"]["completionTime"].is_string() && o["status"]["startTime"].is_string());
    let cli = |args: &[&str]| {
        let out = tp.cli(args);
        (
            out.status.success(),
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    };
    let (ok, out, err) = cli(&["logs", "-l", "capstan.dev/training-job=tfc"]);
    assert!(ok, "{err}");
    for task in ["tfc-chief-0", "tfc-worker-0", "tfc-worker-1", "tfc-ps-0"] {
        assert!(out.contains(&format!("task {task} says hello")), "{task} in:\n{out}");
    }
    let (ok, out, err) = cli(&["logs", "-l", "capstan.dev/training-job=tfc,training.capstan.dev/replica-type=worker"]);
    assert!(ok, "{err}");
    assert!(out.contains("task tfc-worker-1 says hello") && !out.contains("tfc-chief-0 says"), "{out}");

    // The job deleted: its tasks' logs go with it.
    let logs = tp.dir.path().join("logs/default/tfc-worker-0");
    assert!(logs.is_dir());
    tp.client.delete("/api/v1/namespaces/default/trainingjobs/tfc").await.expect("delete");
    eventually("the tasks' logs removed", T, || async { (!logs.exists()).then_some(()) }).await;
    let (ok, _, err) = cli(&["logs", "-l", "capstan.dev/training-job=tfc"]);
    assert!(!ok && err.contains("no App"), "{err}");
    tp.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn exit_code_policy_restarts_after_a_signal_and_fails_on_exit_1() {
    let tp = TestPlane::start().await;
    // Attempt 0: worker 1 kills itself with SIGKILL (exit 137: retryable). Attempt 1: it exits 1 (permanent).
    let w = r#"if [ "$CAPSTAN_TRAINING_ATTEMPT" = 0 ] && [ "$CAPSTAN_ORDINAL" = 0 ] && [ "${CAPSTAN_APP##*-}" = 1 ]; then kill -9 $$; fi; if [ "${CAPSTAN_APP##*-}" = 1 ]; then exit 1; fi; exec sleep 600"#;
    let yaml = format!(
        "apiVersion: capstan.dev/v1alpha1\nkind: TrainingJob\nmetadata: {{name: codes}}\nspec:\n  replicaSpecs:\n    Worker: {{replicas: 2, restartPolicy: ExitCode, run: {{command: {}}}}}\n",
        sh(w)
    );
    tp.apply(&yaml);
    let (o, how) = finished(&tp, "codes", T).await;
    assert_eq!(how, "Failed", "{o}");
    let (reason, message, _) = condition(&o, "Failed").expect("failed");
    assert_eq!(reason, "TaskFailed");
    assert!(message.contains("codes-worker-1 exited with code 1") && message.contains("ExitCode"), "{message}");
    assert_eq!(o["status"]["attempt"], 1, "exit 137 restarted the group once: {o}");
    assert_eq!(o["status"]["restarts"], 1);
    // Worker 0, still running, was stopped.
    eventually("worker 0 stopped", T, || async {
        tp.client.get("/api/v1/namespaces/default/apps/codes-worker-0").await.is_err().then_some(())
    })
    .await;
    tp.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_active_deadline_fails_an_overrunning_job() {
    let tp = TestPlane::start().await;
    let yaml = format!(
        "apiVersion: capstan.dev/v1alpha1\nkind: TrainingJob\nmetadata: {{name: slow}}\nspec:\n  runPolicy: {{activeDeadlineSeconds: 3, ttlSecondsAfterFinished: 4}}\n  replicaSpecs:\n    Worker: {{replicas: 2, run: {{command: {}}}}}\n",
        sh("exec sleep 600")
    );
    tp.apply(&yaml);
    let (o, how) = finished(&tp, "slow", Duration::from_secs(30)).await;
    assert_eq!(how, "Failed");
    assert_eq!(condition(&o, "Failed").expect("failed").0, "DeadlineExceeded");
    eventually("tasks stopped", T, || async {
        let apps = tp.client.get("/api/v1/apps").await.ok()?;
        apps["items"].as_array()?.is_empty().then_some(())
    })
    .await;
    // ttlSecondsAfterFinished: the job itself goes.
    eventually("the job deleted after its TTL", Duration::from_secs(30), || async {
        job(&tp, "slow").await.is_none().then_some(())
    })
    .await;
    tp.stop().await;
}

/// The venv's python with TensorFlow: `CAPSTAN_TF_PYTHON` (scripts/test.sh sets it), else what
/// scripts/setup-tf.sh makes (and prints).
fn tf_python() -> String {
    if let Ok(p) = std::env::var("CAPSTAN_TF_PYTHON") {
        return p;
    }
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/../../scripts/setup-tf.sh");
    let out = std::process::Command::new("bash").arg(script).output().expect("setup-tf.sh runs");
    assert!(out.status.success(), "setup-tf.sh: {}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

/// An example manifest from examples/training, run with the venv's python and extra arguments for train.py.
fn example(file: &str, extra_args: &str) -> String {
    let dir = concat!(env!("CARGO_MANIFEST_DIR"), "/../../examples/training");
    let yaml = std::fs::read_to_string(format!("{dir}/{file}")).expect("example manifest");
    assert!(yaml.contains("[python3, train.py"), "the example still runs train.py");
    // Tests export into each job's own TRAINING_DIR, not into the example's directory.
    yaml.replace(", --export-dir, models]", "]")
        .replace("[python3, train.py", &format!("[{}, {dir}/train.py{extra_args}", tf_python()))
}

fn result(o: &Value) -> Value {
    let dir = PathBuf::from(o["status"]["trainingDir"].as_str().expect("trainingDir"));
    serde_json::from_str(&std::fs::read_to_string(dir.join("result.json")).expect("result.json")).expect("json")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn both_strategies_train_with_real_tensorflow_and_succeed() {
    if !heavy("TensorFlow (the venv of scripts/setup-tf.sh)") {
        return;
    }
    let tp = TestPlane::start().await;
    tp.apply(&format!("{}---\n{}", example("mwms.yaml", ""), example("ps.yaml", "")));
    for name in ["linear-mwms", "linear-ps"] {
        let (o, how) = finished(&tp, name, Duration::from_secs(600)).await;
        assert_eq!(how, "Succeeded", "{name}: {o}");
        let r = result(&o);
        assert!(r["loss"].as_f64().is_some_and(|l| l < 0.2), "{name} learned y = 3a - 2b + 0.5: {r}");
        assert_eq!(r["replicas"], 2, "{name} trained on two workers: {r}");
        let dir = PathBuf::from(o["status"]["trainingDir"].as_str().expect("dir"));
        assert!(dir.join("models/linear/1/saved_model.pb").is_file(), "{name} saved its model");
    }
    // The parameter server and the PS workers serve until the chief is done; then cleanPolicy Running stops them.
    eventually("the ps stopped", T, || async {
        tp.client.get("/api/v1/namespaces/default/apps/linear-ps-ps-0").await.is_err().then_some(())
    })
    .await;
    tp.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_worker_killed_mid_training_restarts_the_group_which_resumes_from_its_backup() {
    if !heavy("TensorFlow (the venv of scripts/setup-tf.sh)") {
        return;
    }
    let tp = TestPlane::start().await;
    tp.apply(&example("mwms.yaml", ", --pause, \"1.0\""));
    let dir = eventually("the job has a directory", T, || async {
        job(&tp, "linear-mwms").await?["status"]["trainingDir"].as_str().map(PathBuf::from)
    })
    .await;
    // Two epochs done: SIGKILL worker 1.
    eventually("two epochs done", Duration::from_secs(300), || async {
        let p: Value = serde_json::from_str(&std::fs::read_to_string(dir.join("progress-worker-1.json")).ok()?).ok()?;
        (p["epoch"].as_u64()? >= 2).then_some(())
    })
    .await;
    let app = tp.app("linear-mwms-worker-1").await;
    let pid = replicas(&app)[0]["pid"].as_u64().expect("pid") as i32;
    nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), nix::sys::signal::Signal::SIGKILL).expect("kill");

    let (o, how) = finished(&tp, "linear-mwms", Duration::from_secs(600)).await;
    assert_eq!(how, "Succeeded", "{o}");
    assert_eq!(o["status"]["attempt"], 1, "the whole group restarted once: {o}");
    assert_eq!(o["status"]["restarts"], 1);
    // BackupAndRestore: the second attempt started where the first left off, not from epoch 0.
    for w in ["worker-0", "worker-1"] {
        let s: Value = serde_json::from_str(
            &std::fs::read_to_string(dir.join(format!("started-{w}-attempt1.json"))).expect("second attempt ran"),
        )
        .expect("json");
        assert!(s["epoch"].as_u64().is_some_and(|e| e >= 2), "{w} resumed from its backup: {s}");
    }
    assert!(result(&o)["loss"].as_f64().is_some_and(|l| l < 0.2));
    tp.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_model_trained_by_a_job_is_served_with_tensorflows_own_predictions() {
    if !heavy("TensorFlow (the venv of scripts/setup-tf.sh)") {
        return;
    }
    // The servers run `capstan serve-model`: in this test process, the CLI binary built with the tests.
    std::env::set_var("CAPSTAN_EXE", bin("capstan-e2e-cli"));
    let tp = TestPlane::start().await;
    tp.apply(&example("mwms.yaml", ""));
    let (o, how) = finished(&tp, "linear-mwms", Duration::from_secs(600)).await;
    assert_eq!(how, "Succeeded", "{o}");
    let models = PathBuf::from(o["status"]["trainingDir"].as_str().expect("dir")).join("models/linear");
    assert!(models.join("1/model.onnx").is_file(), "the chief exported ONNX next to the SavedModel");

    let lb = std::net::TcpListener::bind("127.0.0.1:0").expect("bind").local_addr().expect("addr").port();
    tp.apply(&format!(
        "apiVersion: capstan.dev/v1alpha1\nkind: ModelServer\nmetadata: {{name: linear}}\nspec:\n  basePath: {}\n  replicas: 2\n  pollSeconds: 0.5\n  expose: {{port: {lb}}}\n",
        models.display()
    ));
    let ms = eventually("the ModelServer is Ready", T, || async {
        let o = tp.client.get("/api/v1/namespaces/default/modelservers/linear").await.ok()?;
        condition(&o, "Ready").is_some().then_some(o)
    })
    .await;
    assert_eq!(ms["status"]["readyReplicas"], 2);
    assert_eq!(ms["status"]["url"], format!("http://127.0.0.1:{lb}/v1/models/linear"));

    // The same inputs through Capstan's balancer and through TensorFlow itself (the SavedModel, in the venv).
    let inputs = serde_json::json!([[0.5, -0.25], [-1.0, 1.0], [0.0, 0.0], [0.9, 0.3], [-0.7, -0.2]]);
    let mut c = capstan_e2e::web::Browser::new(lb);
    let r = c.post_json("/v1/models/linear:predict", &serde_json::json!({"instances": inputs})).await.expect("predict");
    assert_eq!(r.status, 200, "{}", r.text());
    let ours: Vec<f64> =
        r.json()["predictions"].as_array().expect("list").iter().map(|p| p[0].as_f64().expect("number")).collect();
    let script = "import sys, json, numpy as np, tensorflow as tf\nm = tf.keras.models.load_model(sys.argv[1])\nx = np.array(json.loads(sys.argv[2]), dtype='float32')\nprint(json.dumps(m.predict(x, verbose=0).reshape(-1).tolist()))";
    let out = std::process::Command::new(tf_python())
        .args(["-c", script, &models.join("1").display().to_string(), &inputs.to_string()])
        .env("TF_CPP_MIN_LOG_LEVEL", "3")
        .output()
        .expect("python runs");
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let theirs: Vec<f64> = serde_json::from_slice(&out.stdout).expect("json from python");
    assert_eq!(ours.len(), theirs.len());
    for (a, b) in ours.iter().zip(&theirs) {
        assert!((a - b).abs() <= 1e-4 * (1.0 + b.abs()), "Capstan {ours:?} vs TensorFlow {theirs:?}");
    }
    // Deleting the ModelServer removes its servers.
    tp.client.delete("/api/v1/namespaces/default/modelservers/linear").await.expect("delete");
    eventually("the servers are gone", T, || async {
        tp.client.get("/api/v1/namespaces/default/apps/linear-server").await.is_err().then_some(())
    })
    .await;
    tp.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_task_removed_from_the_spec_loses_its_app() {
    let tp = TestPlane::start().await;
    let job = |n: u32| {
        format!(
            "apiVersion: capstan.dev/v1alpha1\nkind: TrainingJob\nmetadata: {{name: shrink}}\nspec:\n  replicaSpecs:\n    Worker: {{replicas: {n}, run: {{command: {}}}}}\n",
            sh("exec sleep 600")
        )
    };
    tp.apply(&job(3));
    eventually("three task Apps", T, || async {
        tp.client.get("/api/v1/namespaces/default/apps/shrink-worker-2").await.ok().map(|_| ())
    })
    .await;
    tp.apply(&job(2));
    eventually("worker 2's App removed", T, || async {
        tp.client.get("/api/v1/namespaces/default/apps/shrink-worker-2").await.is_err().then_some(())
    })
    .await;
    assert!(tp.client.get("/api/v1/namespaces/default/apps/shrink-worker-1").await.is_ok(), "the others stay");
    let o = job_of(&tp).await;
    assert_eq!(o["status"]["tasks"].as_array().map(|t| t.len()), Some(2), "{o}");
    tp.stop().await;
}

async fn job_of(tp: &TestPlane) -> Value {
    eventually("the job's status lists two tasks", T, || async {
        let o = job(tp, "shrink").await?;
        (o["status"]["tasks"].as_array()?.len() == 2).then_some(o)
    })
    .await
}
