//! The control plane in-process against real child processes: start, heal, probe, scale, stop, limit, log.

use std::time::Duration;

use capstan_e2e::*;
use serde_json::Value;

const T: Duration = Duration::from_secs(30);

async fn wait_ready(tp: &TestPlane, name: &str) -> Value {
    eventually(&format!("App {name} Ready"), T, || async {
        let o = tp.app(name).await;
        ready(&o).then_some(o)
    })
    .await
}

fn port_of(r: &Value) -> u16 {
    r["ports"]["http"].as_u64().expect("port") as u16
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replicas_start_become_ready_and_see_their_environment() {
    let tp = TestPlane::start().await;
    tp.apply(&app_yaml("web", 2, &[("GREETING", "hi")], READINESS));
    let o = wait_ready(&tp, "web").await;
    let reps = replicas(&o);
    assert_eq!(reps.len(), 2);
    assert_eq!(o["status"]["readyReplicas"], 2);
    for (i, r) in reps.iter().enumerate() {
        assert_eq!(r["name"], format!("web-{i}"));
        let (code, body) = http_get(port_of(r), "/env").await.expect("replica answers");
        assert_eq!(code, 200);
        let env: Value = serde_json::from_str(&body).expect("env json");
        assert_eq!(env["CAPSTAN_REPLICA"], format!("web-{i}"));
        assert_eq!(env["CAPSTAN_ORDINAL"], i.to_string());
        assert_eq!(env["CAPSTAN_APP"], "web");
        assert_eq!(env["CAPSTAN_NAMESPACE"], "default");
        assert_eq!(env["PORT"], port_of(r).to_string());
        assert_eq!(env["PORT_HTTP"], port_of(r).to_string());
        assert_eq!(env["GREETING"], "hi");
        assert!(env.get("CARGO").is_none(), "only the documented variables are inherited");
    }
    assert_ne!(port_of(&reps[0]), port_of(&reps[1]));
    tp.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkilled_replica_is_restarted_and_ready_again() {
    let tp = TestPlane::start().await;
    tp.apply(&app_yaml("heal", 2, &[], READINESS));
    let o = wait_ready(&tp, "heal").await;
    let victim = replicas(&o)[1].clone();
    let pid = victim["pid"].as_u64().expect("pid") as i32;
    nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), nix::sys::signal::Signal::SIGKILL).expect("kill");
    let o = eventually("heal-1 replaced and Ready", T, || async {
        let o = tp.app("heal").await;
        let r = replicas(&o).get(1).cloned()?;
        (ready(&o) && r["pid"].as_u64() != Some(pid as u64) && r["restarts"] == 1).then_some(o)
    })
    .await;
    let r = &replicas(&o)[1];
    assert_eq!(r["lastExit"]["signal"], 9);
    assert_eq!(port_of(r), port_of(&victim), "the replica keeps its port across restarts");
    assert_eq!(o["status"]["restarts"], 1);
    assert!(!alive(pid as u32));
    let events = tp.client.get("/api/v1/namespaces/default/apps/heal/events").await.expect("events");
    let reasons: Vec<&str> = events["items"].as_array().unwrap().iter().filter_map(|e| e["reason"].as_str()).collect();
    assert!(reasons.contains(&"Exited") && reasons.contains(&"Restarted"), "{reasons:?}");
    tp.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failing_liveness_probe_restarts_the_replica() {
    let tp = TestPlane::start().await;
    let flag = tp.dir.path().join("sick");
    let probes =
        "  probes:\n    liveness: {http: {path: /healthz, port: http}, periodSeconds: 1, failureThreshold: 2}\n";
    tp.apply(&app_yaml("live", 1, &[("TESTAPP_LIVE_FILE", &flag.display().to_string())], probes));
    let o = wait_ready(&tp, "live").await;
    let pid = replicas(&o)[0]["pid"].as_u64().unwrap();
    std::fs::write(&flag, "1").unwrap();
    eventually("liveness failure restarts the replica", T, || async {
        let o = tp.app("live").await;
        let r = replicas(&o).first().cloned()?;
        (r["restarts"].as_u64() >= Some(1) && r["pid"].as_u64() != Some(pid)).then_some(())
    })
    .await;
    std::fs::remove_file(&flag).unwrap();
    let o = wait_ready(&tp, "live").await;
    let events = tp.client.get("/api/v1/namespaces/default/apps/live/events").await.unwrap();
    let text = events.to_string();
    assert!(text.contains("liveness probe failed 2 times"), "{text}");
    assert!(replicas(&o)[0]["restarts"].as_u64().unwrap() >= 1);
    tp.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failing_readiness_probe_shows_not_ready_without_restart() {
    let tp = TestPlane::start().await;
    let flag = tp.dir.path().join("unready");
    tp.apply(&app_yaml("ready", 1, &[("TESTAPP_READY_FILE", &flag.display().to_string())], READINESS));
    let o = wait_ready(&tp, "ready").await;
    let pid = replicas(&o)[0]["pid"].clone();
    std::fs::write(&flag, "1").unwrap();
    let o = eventually("replica NotReady", T, || async {
        let o = tp.app("ready").await;
        (o["status"]["readyReplicas"] == 0).then_some(o)
    })
    .await;
    let r = &replicas(&o)[0];
    assert_eq!(r["ready"], false);
    assert_eq!(r["reason"], "NotReady");
    assert!(r["message"].as_str().unwrap().contains("returned 503"), "{r}");
    assert_eq!(r["pid"], pid, "readiness failures do not restart");
    let cond = o["status"]["conditions"].as_array().unwrap().iter().find(|c| c["type"] == "Ready").unwrap().clone();
    assert_eq!(cond["status"], "False");
    assert_eq!(cond["reason"], "ReplicasNotReady");
    std::fs::remove_file(&flag).unwrap();
    let o = wait_ready(&tp, "ready").await;
    assert_eq!(replicas(&o)[0]["restarts"], 0);
    tp.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn scale_up_then_down_removes_highest_ordinals() {
    let tp = TestPlane::start().await;
    tp.apply(&app_yaml("scale", 1, &[], READINESS));
    wait_ready(&tp, "scale").await;
    tp.apply(&app_yaml("scale", 3, &[], READINESS));
    let o = wait_ready(&tp, "scale").await;
    let pids: Vec<u64> = replicas(&o).iter().map(|r| r["pid"].as_u64().unwrap()).collect();
    assert_eq!(pids.len(), 3);
    tp.apply(&app_yaml("scale", 1, &[], READINESS));
    let o = eventually("scaled down to 1", T, || async {
        let o = tp.app("scale").await;
        (ready(&o) && replicas(&o).len() == 1).then_some(o)
    })
    .await;
    assert_eq!(replicas(&o)[0]["name"], "scale-0");
    assert_eq!(replicas(&o)[0]["pid"].as_u64(), Some(pids[0]), "ordinal 0 was kept");
    eventually("removed replicas exited", T, || async {
        (!alive(pids[1] as u32) && !alive(pids[2] as u32)).then_some(())
    })
    .await;
    let events = tp.client.get("/api/v1/namespaces/default/apps/scale/events").await.unwrap().to_string();
    let two = events.find("stopping replica scale-2").expect("scale-2 stopped");
    let one = events.find("stopping replica scale-1").expect("scale-1 stopped");
    assert!(two < one, "the highest ordinal goes first");
    tp.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn graceful_stop_sends_sigterm_then_sigkill_after_the_grace_period() {
    let tp = TestPlane::start().await;
    // One replica finishes its work after SIGTERM; the other ignores SIGTERM and must be killed.
    let polite = app_yaml("polite", 1, &[("TESTAPP_TERM_DELAY_MS", "300")], "")
        .replace("terminationGracePeriodSeconds: 5", "terminationGracePeriodSeconds: 10");
    tp.apply(&polite);
    let stubborn = app_yaml("stubborn", 1, &[("TESTAPP_IGNORE_TERM", "1")], "")
        .replace("terminationGracePeriodSeconds: 5", "terminationGracePeriodSeconds: 1");
    tp.apply(&stubborn);
    wait_ready(&tp, "polite").await;
    wait_ready(&tp, "stubborn").await;
    let rt = tp.plane().runtime().clone();
    tp.apply(&polite.replace("replicas: 1", "replicas: 0"));
    tp.apply(&stubborn.replace("replicas: 1", "replicas: 0"));
    eventually("both scaled to zero", T, || async {
        let a = tp.app("polite").await;
        let b = tp.app("stubborn").await;
        (replicas(&a).is_empty() && replicas(&b).is_empty() && ready(&a) && ready(&b)).then_some(())
    })
    .await;
    let key = |n: &str| capstan_model::ObjectKey::new("App", "default", n);
    let polite: Vec<String> = rt.read_logs(&key("polite"), Some(0), None).map(|l| l.text).collect();
    assert!(polite.iter().any(|l| l.starts_with("got SIGTERM")), "{polite:?}");
    assert!(polite.iter().any(|l| l.contains("exiting cleanly")), "it finished within the grace period: {polite:?}");
    let stubborn_logs: Vec<String> = rt.read_logs(&key("stubborn"), Some(0), None).map(|l| l.text).collect();
    assert!(stubborn_logs.iter().any(|l| l == "ignoring SIGTERM"));
    assert!(!stubborn_logs.iter().any(|l| l.contains("exiting cleanly")), "it was killed: {stubborn_logs:?}");
    tp.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn crash_loop_backs_off_and_says_so() {
    let tp = TestPlane::start().await;
    tp.apply(&app_yaml("crashy", 1, &[("TESTAPP_EXIT_CODE", "3")], ""));
    let o = eventually("CrashLoopBackOff", T, || async {
        let o = tp.app("crashy").await;
        let stalled = o["status"]["conditions"]
            .as_array()?
            .iter()
            .any(|c| c["type"] == "Stalled" && c["reason"] == "CrashLoopBackOff");
        stalled.then_some(o)
    })
    .await;
    let r = &replicas(&o)[0];
    assert_eq!(r["reason"], "CrashLoopBackOff");
    assert_eq!(r["lastExit"]["code"], 3);
    assert!(r["message"].as_str().unwrap().contains("exited with code 3"));
    assert!(r["restarts"].as_u64().unwrap() >= 1);
    let restarts = r["restarts"].as_u64().unwrap();
    eventually("keeps restarting after backoff", T, || async {
        let o = tp.app("crashy").await;
        (replicas(&o)[0]["restarts"].as_u64()? > restarts).then_some(())
    })
    .await;
    tp.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn restart_policy_never_leaves_a_finished_replica() {
    let tp = TestPlane::start().await;
    tp.apply(&app_yaml("job", 1, &[("TESTAPP_EXIT_CODE", "0")], "  restartPolicy: Never\n"));
    let o = eventually("Succeeded", T, || async {
        let o = tp.app("job").await;
        (replicas(&o).first()?["phase"] == "Succeeded").then_some(o)
    })
    .await;
    assert_eq!(replicas(&o)[0]["restarts"], 0);
    tp.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn spec_change_rolls_replicas_to_the_new_revision() {
    let tp = TestPlane::start().await;
    tp.apply(&app_yaml("roll", 2, &[("VERSION", "1")], READINESS));
    let o = wait_ready(&tp, "roll").await;
    let rev1 = o["status"]["revision"].clone();
    tp.apply(&app_yaml("roll", 2, &[("VERSION", "2")], READINESS));
    let o = eventually("rolled to the new revision", T, || async {
        let o = tp.app("roll").await;
        (ready(&o) && o["status"]["revision"] != rev1 && o["status"]["updatedReplicas"] == 2).then_some(o)
    })
    .await;
    for r in replicas(&o) {
        let (_, body) = http_get(port_of(&r), "/env").await.unwrap();
        assert_eq!(serde_json::from_str::<Value>(&body).unwrap()["VERSION"], "2");
        assert_eq!(r["restarts"], 0, "a rollout is not a restart");
    }
    assert_eq!(o["metadata"]["generation"], 2);
    tp.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn logs_are_captured_rotated_and_filtered() {
    let tp = TestPlane::start().await;
    let extra = format!("{READINESS}  logs: {{maxSize: 8Ki, maxFiles: 2}}\n");
    tp.apply(&app_yaml("chatty", 1, &[("TESTAPP_LOG_LINES", "400")], &extra));
    wait_ready(&tp, "chatty").await;
    let key = capstan_model::ObjectKey::new("App", "default", "chatty");
    let rt = tp.plane().runtime().clone();
    let lines = eventually("logs written", T, || async {
        let l: Vec<_> = rt.read_logs(&key, None, None).collect();
        l.iter().any(|l| l.text.contains("listening")).then_some(l)
    })
    .await;
    assert!(lines.len() < 400, "old lines were rotated away ({} kept)", lines.len());
    assert!(lines.iter().any(|l| l.text.starts_with("chatty-0 line 399")));
    let path = rt.log_path(&key, 0);
    assert!(std::fs::metadata(&path).unwrap().len() <= 8 * 1024);
    // maxFiles: 2 is two files in all, the current one included, as the kubelet counts containerLogMaxFiles.
    assert!(path.with_extension("log.1").exists() && !path.with_extension("log.2").exists());
    // Through the API: tail and since.
    let mut rx = tp.client.stream("/api/v1/namespaces/default/apps/chatty/logs?tail=2").await.unwrap();
    let mut got = Vec::new();
    while let Some(l) = rx.recv().await {
        got.push(l["text"].as_str().unwrap().to_string());
    }
    assert_eq!(got.len(), 2);
    assert!(got[1].contains("listening"));
    let future = (chrono::Utc::now() + chrono::Duration::hours(1)).to_rfc3339_opts(chrono::SecondsFormat::Secs, true);
    let mut rx = tp
        .client
        .stream(&format!("/api/v1/namespaces/default/apps/chatty/logs?since={}", future.replace('+', "%2B")))
        .await
        .unwrap();
    assert!(rx.recv().await.is_none(), "nothing is newer than the future");
    tp.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn memory_limit_is_enforced_and_unenforceable_limits_are_reported() {
    let tp = TestPlane::start().await;
    let extra = "  restartPolicy: Never\n  resources: {memory: 64Mi, cpu: 500m}\n";
    tp.apply(&app_yaml("hog", 1, &[("TESTAPP_ALLOC_MB", "256")], extra));
    let o = eventually("the hog fails", T, || async {
        let o = tp.app("hog").await;
        (replicas(&o).first()?["phase"] == "Failed").then_some(o)
    })
    .await;
    // Should it ever end otherwise (a signal), the replica's exit and its own words say how.
    let log = std::fs::read_to_string(
        tp.plane().runtime().log_path(&capstan_model::ObjectKey::new("App", "default", "hog"), 0),
    )
    .unwrap_or_default();
    assert_eq!(replicas(&o)[0]["lastExit"]["code"], 3, "the allocation was refused: {}\n{log}", replicas(&o)[0]);
    match tp.plane().runtime().limit_support() {
        capstan_runtime_local::limits::LimitSupport::Rlimit { .. } => {
            let w = o["status"]["warnings"].to_string();
            assert!(w.contains("cpu limit 500m cannot be enforced"), "{w}");
            assert!(w.contains("RLIMIT_DATA"), "{w}");
        }
        capstan_runtime_local::limits::LimitSupport::CgroupV2 { .. } => {
            assert!(o["status"]["warnings"].is_null() || o["status"]["warnings"] == serde_json::json!([]));
        }
    }
    // Within the limit the same program runs.
    tp.apply(&app_yaml("small", 1, &[("TESTAPP_ALLOC_MB", "8")], "  resources: {memory: 64Mi}\n"));
    wait_ready(&tp, "small").await;
    tp.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deleting_an_app_stops_its_replicas_and_a_crash_does_not_touch_others() {
    let tp = TestPlane::start().await;
    tp.apply(&app_yaml("keep", 1, &[], READINESS));
    tp.apply(&app_yaml("gone", 2, &[], READINESS));
    let keep = wait_ready(&tp, "keep").await;
    let gone = wait_ready(&tp, "gone").await;
    let keep_pid = replicas(&keep)[0]["pid"].as_u64().unwrap() as u32;
    let pids: Vec<u32> = replicas(&gone).iter().map(|r| r["pid"].as_u64().unwrap() as u32).collect();
    tp.client.delete("/api/v1/namespaces/default/apps/gone").await.unwrap();
    eventually("deleted App's replicas exit", T, || async { pids.iter().all(|p| !alive(*p)).then_some(()) }).await;
    let store = tp.plane().store().clone();
    eventually("the deleted App's revision history is forgotten", T, || async {
        store.records("revision/default/gone/").ok()?.is_empty().then_some(())
    })
    .await;
    assert!(!store.records("revision/default/keep/").unwrap().is_empty(), "other Apps keep theirs");
    assert!(alive(keep_pid));
    assert_eq!(replicas(&tp.app("keep").await)[0]["pid"].as_u64(), Some(u64::from(keep_pid)));
    tp.stop().await;
    assert!(!alive(keep_pid), "shutdown stops every replica");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn startup_probe_gates_and_restarts_then_exec_readiness_works() {
    let tp = TestPlane::start().await;
    let flag = tp.dir.path().join("slow");
    std::fs::write(&flag, "1").unwrap();
    let flag_s = flag.display().to_string();
    // The startup probe (HTTP /status) fails while the flag exists; readiness is an exec probe on the same flag.
    let probes = format!(
        "  probes:\n    startup: {{http: {{path: /status, port: http}}, periodSeconds: 1, failureThreshold: 2}}\n    readiness: {{exec: {{command: [sh, -c, \"test ! -e {flag_s}\"]}}, periodSeconds: 1}}\n"
    );
    tp.apply(&app_yaml("boot", 1, &[("TESTAPP_READY_FILE", &flag_s)], &probes));
    let o = eventually("startup probe failure restarts", T, || async {
        let o = tp.app("boot").await;
        (replicas(&o).first()?["restarts"].as_u64()? >= 1).then_some(o)
    })
    .await;
    assert_eq!(o["status"]["readyReplicas"], 0, "not ready before the startup probe passes");
    let events = tp.client.get("/api/v1/namespaces/default/apps/boot/events").await.unwrap().to_string();
    assert!(events.contains("startup probe failed 2 times"), "{events}");
    std::fs::remove_file(&flag).unwrap();
    wait_ready(&tp, "boot").await;
    tp.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn logs_follow_streams_new_lines() {
    let tp = TestPlane::start().await;
    tp.apply(&app_yaml("talk", 2, &[], READINESS));
    let o = wait_ready(&tp, "talk").await;
    let port = port_of(&replicas(&o)[1]);
    let mut rx = tp.client.stream("/api/v1/namespaces/default/apps/talk/logs?follow=true").await.unwrap();
    // Old lines first.
    let first = tokio::time::timeout(T, rx.recv()).await.unwrap().unwrap();
    assert!(first["text"].as_str().unwrap().contains("listening"), "{first}");
    http_get(port, "/say/followed").await.unwrap();
    let line = tokio::time::timeout(T, async {
        while let Some(l) = rx.recv().await {
            if l["text"] == "said followed" {
                return Some(l);
            }
        }
        None
    })
    .await
    .expect("the new line arrives in time")
    .expect("the stream stays open");
    assert_eq!(line["replica"], "talk-1");
    assert_eq!(line["stream"], "stdout");
    tp.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_api_refuses_requests_without_the_token() {
    let tp = TestPlane::start().await;
    let wrong = capstan_api::Client::new(tp.plane().url(), "not-the-token");
    let e = wrong.get("/api/v1/apps").await.unwrap_err();
    assert_eq!(e.status().map(|s| s.as_u16()), Some(401));
    assert!(e.to_string().contains("token"));
    let e = wrong.post("/api/v1/apply", serde_json::json!({"objects": []})).await.unwrap_err();
    assert_eq!(e.status().map(|s| s.as_u16()), Some(401));
    assert!(tp.client.get("/api/v1/apps").await.is_ok());
    let mode =
        std::os::unix::fs::PermissionsExt::mode(&std::fs::metadata(tp.dir.path().join("token")).unwrap().permissions());
    assert_eq!(mode & 0o777, 0o600, "the token file is private");
    let fresh = tempfile::tempdir().unwrap();
    let data = fresh.path().join("new-data");
    let other = TestPlane::start_in_path(&data).await;
    let mode = std::os::unix::fs::PermissionsExt::mode(&std::fs::metadata(&data).unwrap().permissions());
    assert_eq!(mode & 0o777, 0o700, "a data directory Capstan creates is private");
    other.stop().await;
    tp.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stop_signal_and_a_user_are_honoured() {
    let tp = TestPlane::start().await;
    // The test app ignores SIGTERM here; SIGINT, the App's stop signal, ends it at once.
    let extra = format!("{READINESS}  terminationGracePeriodSeconds: 60\n");
    let yaml = app_yaml("quits", 1, &[("TESTAPP_IGNORE_TERM", "1")], &extra)
        .replace("  terminationGracePeriodSeconds: 5\n", "")
        .replace("    env:\n", "    stopSignal: SIGINT\n    env:\n");
    tp.apply(&yaml);
    wait_ready(&tp, "quits").await;
    tp.client.delete("/api/v1/namespaces/default/apps/quits").await.expect("delete");
    eventually("stopped by SIGINT well before the 60 s grace", Duration::from_secs(20), || async {
        tp.plane().runtime().pids().is_empty().then_some(())
    })
    .await;

    // spec.run.user: as root, the process runs as that user; otherwise the start is refused, naming why.
    // The program and its directory must be reachable by `nobody` (the build directory may sit under /root).
    let shared = tempfile::tempdir().expect("tempdir");
    let program = shared.path().join("capstan-testapp");
    std::fs::copy(testapp(), &program).expect("copy the test app");
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(shared.path(), std::fs::Permissions::from_mode(0o755)).expect("chmod");
    std::fs::set_permissions(&program, std::fs::Permissions::from_mode(0o755)).expect("chmod");
    let as_nobody = app_yaml("nobody", 1, &[], READINESS)
        .replace(&testapp(), &program.display().to_string())
        .replace("    env:\n", &format!("    user: nobody\n    workingDir: {}\n    env:\n", shared.path().display()));
    tp.apply(&as_nobody);
    if nix::unistd::geteuid().is_root() {
        let o = wait_ready(&tp, "nobody").await;
        let pid = replicas(&o)[0]["pid"].as_u64().expect("pid");
        let status = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("status");
        let uid_line = status.lines().find(|l| l.starts_with("Uid:")).expect("Uid").to_string();
        let nobody = nix::unistd::User::from_name("nobody").unwrap().expect("nobody exists").uid.as_raw();
        assert!(uid_line.split_whitespace().nth(1) == Some(&nobody.to_string()), "{uid_line}");
    } else {
        eventually("refused without root", T, || async {
            let o = tp.app("nobody").await;
            let msg = replicas(&o).first()?["message"].as_str()?.to_string();
            msg.contains("needs Capstan to run as root").then_some(())
        })
        .await;
    }
    tp.stop().await;
}

/// `capstan logs -f` follows the App, not the replicas it started with: a rollout replaces both replicas and the
/// new ones are followed as they start; escape sequences are removed unless asked for; when the App is deleted the
/// command says so and exits non-zero.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn logs_follow_keeps_following_across_a_rollout_and_says_why_it_stops() {
    use tokio::io::AsyncBufReadExt;
    let tp = TestPlane::start().await;
    tp.apply(&app_yaml("roll", 2, &[], READINESS));
    let o = wait_ready(&tp, "roll").await;
    let old: Vec<Value> = replicas(&o).iter().map(|r| r["pid"].clone()).collect();
    let mut cli = tokio::process::Command::new(bin("capstan-e2e-cli"))
        .args(["logs", "roll", "-f", "--tail", "0"])
        .env("CAPSTAN_SERVER", tp.plane().url())
        .env("CAPSTAN_TOKEN", tp.plane().token())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .expect("cli runs");
    let mut out = tokio::io::BufReader::new(cli.stdout.take().unwrap()).lines();
    // Following has begun once a line said now comes through.
    let port = port_of(&replicas(&o)[0]);
    let deadline = tokio::time::Instant::now() + T;
    let said = loop {
        assert!(tokio::time::Instant::now() < deadline, "the follower received no line");
        http_get(port, "/say/before").await.expect("say");
        if let Ok(line) = tokio::time::timeout(Duration::from_millis(500), out.next_line()).await {
            break line.expect("reads").expect("the follower is running");
        }
    };
    assert_eq!(said, "[roll-0] said before");

    tp.client.post("/api/v1/namespaces/default/apps/roll/restart", serde_json::json!({})).await.expect("restart");
    let o = eventually("both replicas replaced and ready", T, || async {
        let o = tp.app("roll").await;
        let r = replicas(&o);
        (ready(&o) && r.len() == 2 && r.iter().all(|r| !old.contains(&r["pid"]) && r["ready"] == true)).then_some(o)
    })
    .await;
    let mut started = std::collections::BTreeSet::new();
    tokio::time::timeout(T, async {
        while started.len() < 2 {
            let line = out.next_line().await.expect("reads").expect("the follower is still running");
            if line.contains("listening on") {
                started.insert(line.split(']').next().unwrap_or("").to_string());
            }
        }
    })
    .await
    .expect("both new replicas' first lines arrive");
    assert_eq!(started.into_iter().collect::<Vec<_>>(), ["[roll-0", "[roll-1"]);

    // Colour codes a replica writes are removed.
    http_get(port_of(&replicas(&o)[1]), "/say/%1B%5B31mred%1B%5B0m").await.expect("say");
    let line = tokio::time::timeout(T, async {
        loop {
            let line = out.next_line().await.expect("reads").expect("a line");
            if line.contains(" said ") {
                return line;
            }
        }
    })
    .await
    .expect("in time");
    assert_eq!(line, "[roll-1] said red");

    tp.client.delete("/api/v1/namespaces/default/apps/roll").await.expect("delete");
    let status = tokio::time::timeout(T, cli.wait()).await.expect("the follower stops").expect("status");
    let mut err = String::new();
    tokio::io::AsyncReadExt::read_to_string(&mut cli.stderr.take().unwrap(), &mut err).await.unwrap();
    assert!(!status.success(), "a stream that ends while following is an error: {err}");
    assert!(err.contains("stopped following: App default/roll was deleted"), "{err}");
    tp.stop().await;
}

/// Deleting an App stops its replicas with the App's own grace period, not a default of 30 s: a replica that
/// ignores SIGTERM with a grace period of 1 s is killed about a second after the delete.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn delete_honours_the_apps_grace_period() {
    let tp = TestPlane::start().await;
    let stubborn = app_yaml("gone", 1, &[("TESTAPP_IGNORE_TERM", "1")], "")
        .replace("terminationGracePeriodSeconds: 5", "terminationGracePeriodSeconds: 1");
    assert!(stubborn.contains("terminationGracePeriodSeconds: 1"), "{stubborn}");
    tp.apply(&stubborn);
    let o = wait_ready(&tp, "gone").await;
    let pid = replicas(&o)[0]["pid"].as_u64().expect("pid") as u32;
    tp.client.delete("/api/v1/namespaces/default/apps/gone").await.expect("delete");
    // 15 s is half the 30 s default the replica used to get once its App was gone.
    eventually("the replica is killed after its own grace period", Duration::from_secs(15), || async {
        (!alive(pid)).then_some(())
    })
    .await;
    tp.stop().await;
}
