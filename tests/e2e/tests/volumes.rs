//! Volumes on the embedded runtime: per-replica and shared directories that outlive processes, scaling and the
//! App itself (unless its reclaim policy says Delete).

use std::time::Duration;

use capstan_e2e::*;
use serde_json::Value;

const T: Duration = Duration::from_secs(30);

const VOLUMES: &str = "  volumes:
    - {name: index, scope: replica, env: INDEX_DIR, size: 1Mi}
    - {name: files, scope: shared, env: FILES_DIR}
";

async fn ready_with(tp: &TestPlane, name: &str, n: usize) -> Value {
    eventually(&format!("{name} Ready with {n} replicas"), T, || async {
        let o = tp.app(name).await;
        (ready(&o) && replicas(&o).len() == n && replicas(&o).iter().all(|r| r["ready"] == true)).then_some(o)
    })
    .await
}

fn port(o: &Value, ordinal: usize) -> u16 {
    replicas(o)[ordinal]["ports"]["http"].as_u64().expect("port") as u16
}

async fn read(port: u16, var: &str, file: &str) -> (u16, String) {
    http_get(port, &format!("/files/{var}/{file}")).await.expect("replica answers")
}

async fn write(port: u16, var: &str, file: &str, text: &str) {
    let (code, body) = http_put(port, &format!("/files/{var}/{file}"), text).await.expect("replica answers");
    assert_eq!(code, 200, "{body}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn volumes_keep_data_through_kills_scaling_and_deletion() {
    let tp = TestPlane::start().await;
    let manifest = |n: i32| app_yaml("vol", n, &[], &format!("{READINESS}{VOLUMES}"));
    tp.apply(&manifest(2));
    let o = ready_with(&tp, "vol", 2).await;
    let (p0, p1) = (port(&o, 0), port(&o, 1));

    // Shared: a write through replica 0 is there at once through replica 1.
    write(p0, "FILES_DIR", "attachment.txt", "shared bytes").await;
    assert_eq!(read(p1, "FILES_DIR", "attachment.txt").await, (200, "shared bytes".into()));
    // Per replica: each has its own.
    write(p0, "INDEX_DIR", "own.txt", "zero").await;
    assert_eq!(read(p1, "INDEX_DIR", "own.txt").await.0, 404);
    write(p1, "INDEX_DIR", "own.txt", "one").await;
    let (_, env) = http_get(p1, "/env").await.expect("env");
    let env: Value = serde_json::from_str(&env).expect("json");
    let index_dir = env["INDEX_DIR"].as_str().expect("INDEX_DIR").to_string();
    assert!(index_dir.ends_with("volumes/default/vol/index/replica-1"), "{index_dir}");

    // SIGKILL replica 1: its replacement finds its data.
    let pid = replicas(&o)[1]["pid"].as_u64().expect("pid") as i32;
    nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), nix::sys::signal::Signal::SIGKILL).expect("kill");
    let o = eventually("vol-1 replaced and Ready", T, || async {
        let o = tp.app("vol").await;
        let r = replicas(&o).get(1).cloned()?;
        (r["pid"].as_u64() != Some(pid as u64) && r["ready"] == true).then_some(o)
    })
    .await;
    assert_eq!(read(port(&o, 1), "INDEX_DIR", "own.txt").await, (200, "one".into()));

    // Scale down to 1 and up again: replica 1 gets its old directory back.
    tp.apply(&manifest(1));
    ready_with(&tp, "vol", 1).await;
    tp.apply(&manifest(2));
    let o = ready_with(&tp, "vol", 2).await;
    assert_eq!(read(port(&o, 1), "INDEX_DIR", "own.txt").await, (200, "one".into()));

    // Status: where the volumes are and what they hold.
    let o = eventually("volume usage in status", T, || async {
        let o = tp.app("vol").await;
        (o["status"]["volumes"][0]["paths"].as_array()?.len() == 2).then_some(o)
    })
    .await;
    let vols = o["status"]["volumes"].as_array().expect("volumes");
    assert_eq!(vols[0]["name"], "index");
    assert_eq!(vols[1]["name"], "files");
    assert_eq!(vols[1]["paths"].as_array().map(Vec::len), Some(1));

    // Deleted (Retain, the default): the data stays, and a new App of the same name finds it.
    tp.client.delete("/api/v1/namespaces/default/apps/vol").await.expect("delete");
    eventually("vol gone", T, || async {
        tp.client.get("/api/v1/namespaces/default/apps/vol").await.is_err().then_some(())
    })
    .await;
    let on_disk = tp.dir.path().join("volumes/default/vol/files/shared/attachment.txt");
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(std::fs::read_to_string(&on_disk).expect("retained"), "shared bytes");
    tp.apply(&manifest(1));
    let o = ready_with(&tp, "vol", 1).await;
    assert_eq!(read(port(&o, 0), "INDEX_DIR", "own.txt").await, (200, "zero".into()));
    tp.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_delete_policy_removes_the_data_with_the_app() {
    let tp = TestPlane::start().await;
    let vols = "  volumes:\n    - {name: scratch, scope: shared, env: SCRATCH, reclaimPolicy: Delete}\n";
    tp.apply(&app_yaml("tmp", 1, &[], &format!("{READINESS}{vols}")));
    let o = ready_with(&tp, "tmp", 1).await;
    write(port(&o, 0), "SCRATCH", "x", "temporary").await;
    let dir = tp.dir.path().join("volumes/default/tmp/scratch");
    assert!(dir.join("shared/x").is_file());
    tp.client.delete("/api/v1/namespaces/default/apps/tmp").await.expect("delete");
    eventually("scratch volume deleted", T, || async { (!dir.exists()).then_some(()) }).await;
    tp.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_volumes_are_refused_with_their_field() {
    let tp = TestPlane::start().await;
    let vols = "  volumes:\n    - {name: a, scope: replica, env: PORT}\n    - {name: a, scope: shared, env: DATA}\n";
    let yaml = app_yaml("bad", 1, &[], vols);
    let err = capstan_model::parse_manifests("bad.yaml", &yaml).expect_err("refused").to_string();
    assert!(err.contains("spec.volumes[0].env") && err.contains("set by Capstan itself"), "{err}");
    assert!(err.contains("spec.volumes[1].name") && err.contains("declared twice"), "{err}");
    let unknown = app_yaml("bad", 1, &[], "  volumes:\n    - {name: a, scope: node, env: DATA}\n");
    let err = capstan_model::parse_manifests("bad.yaml", &unknown).expect_err("refused").to_string();
    assert!(err.contains("`node` is not allowed here") && err.contains("one of: replica, shared"), "{err}");
    tp.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn volume_sync_repairs_a_lost_index_from_a_peer() {
    let tp = TestPlane::start().await;
    tp.apply(&app_yaml("idx", 2, &[], &format!("{READINESS}{VOLUMES}")));
    let o = ready_with(&tp, "idx", 2).await;
    let (p0, p1) = (port(&o, 0), port(&o, 1));
    write(p0, "INDEX_DIR", "segment-1", "alpha").await;
    write(p0, "INDEX_DIR", "meta", "v1").await;
    write(p1, "INDEX_DIR", "stale", "from replica 1").await;
    let pid0 = replicas(&o)[0]["pid"].clone();
    let pid1 = replicas(&o)[1]["pid"].clone();
    // Replica 1 loses its index.
    let lost = tp.dir.path().join("volumes/default/idx/index/replica-1");
    for e in std::fs::read_dir(&lost).expect("dir").flatten() {
        std::fs::remove_file(e.path()).expect("rm");
    }
    // …and keeps a `meta` of its own with the source's size and, to the nanosecond, its mtime: the copy must not
    // take it for up to date (it did, and the replica's index then named segments that were gone).
    let source_meta = tp.dir.path().join("volumes/default/idx/index/replica-0/meta");
    std::fs::write(lost.join("meta"), "v0").expect("write");
    let mtime = std::fs::metadata(&source_meta).expect("meta").modified().expect("mtime");
    std::fs::File::options().write(true).open(lost.join("meta")).expect("open").set_modified(mtime).expect("touch");

    // Through the command line, as an operator would.
    let out = std::process::Command::new(bin("capstan-e2e-cli"))
        .args(["volume", "sync", "idx", "--volume", "index", "--from", "0", "--to", "1"])
        .env("CAPSTAN_SERVER", tp.plane().url())
        .env("CAPSTAN_TOKEN", tp.plane().token())
        .output()
        .expect("cli runs");
    let stdout = String::from_utf8_lossy(&out.stdout).to_string();
    assert!(out.status.success(), "{stdout}{}", String::from_utf8_lossy(&out.stderr));
    assert!(stdout.contains("✔ volume index: idx-0 → idx-1: 2 files, 7 bytes copied and verified"), "{stdout}");
    // Not a terminal: a plain progress line says what it waits for.
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("draining idx-1, copying index from idx-0, verifying the copy…"), "{stderr}");

    let o = eventually("idx-1 back and Ready", T, || async {
        let o = tp.app("idx").await;
        let r = replicas(&o).get(1).cloned()?;
        (r["pid"] != pid1 && r["ready"] == true).then_some(o)
    })
    .await;
    assert_eq!(replicas(&o)[0]["pid"], pid0, "the source kept running");
    assert_eq!(replicas(&o)[1]["restarts"], 0, "a sync is not a crash: {}", replicas(&o)[1]);
    assert_eq!(read(port(&o, 1), "INDEX_DIR", "segment-1").await, (200, "alpha".into()));
    assert_eq!(read(port(&o, 1), "INDEX_DIR", "stale").await.0, 404);
    assert_eq!(read(port(&o, 1), "INDEX_DIR", "meta").await, (200, "v1".into()), "the racy file was copied");
    let events = tp.client.get("/api/v1/namespaces/default/apps/idx/events").await.expect("events").to_string();
    assert!(events.contains("VolumeSynced"), "{events}");

    // What cannot be synced is refused with a reason.
    let refused = |body: Value, vol: &'static str| {
        let c = tp.client.clone();
        async move {
            c.post(&format!("/api/v1/namespaces/default/apps/idx/volumes/{vol}/sync"), body)
                .await
                .unwrap_err()
                .to_string()
        }
    };
    assert!(refused(serde_json::json!({"from": 0, "to": 1}), "files").await.contains("is shared"));
    assert!(refused(serde_json::json!({"from": 1, "to": 1}), "index").await.contains("same replica"));
    assert!(refused(serde_json::json!({"from": 0, "to": 5}), "index").await.contains("replicas 0 to 1"));
    tp.stop().await;
}
