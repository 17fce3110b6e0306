//! PostgreSQL Databases on the embedded runtime, against the machine's real PostgreSQL (Debian's `postgresql`).

use std::process::Command;
use std::time::Duration;

use capstan_e2e::git::GitRepo;
use capstan_e2e::*;
use serde_json::{json, Value};

const T: Duration = Duration::from_secs(60);

fn database_yaml(name: &str, extra: &str) -> String {
    format!("apiVersion: capstan.dev/v1alpha1\nkind: Database\nmetadata:\n  name: {name}\nspec:\n  parameters: {{max_connections: \"20\"}}\n{extra}")
}

async fn db_obj(tp: &TestPlane, name: &str) -> Option<Value> {
    tp.client.get(&format!("/api/v1/namespaces/default/databases/{name}")).await.ok()
}

async fn wait_db_ready(tp: &TestPlane, name: &str) -> Value {
    eventually(&format!("Database {name} Ready"), T, || async {
        let o = db_obj(tp, name).await?;
        let ready = o["status"]["conditions"].as_array()?.iter().any(|c| c["type"] == "Ready" && c["status"] == "True");
        ready.then_some(o)
    })
    .await
}

async fn url_of(tp: &TestPlane, name: &str) -> String {
    let s = tp.client.get(&format!("/api/v1/namespaces/default/secrets/{name}-credentials")).await.expect("secret");
    s["spec"]["stringData"]["url"].as_str().expect("url").to_string()
}

fn psql(url: &str, sql: &str) -> String {
    let out = Command::new("psql")
        .args([url, "-tAc", sql])
        .output()
        .expect("psql runs (scripts/test.sh installs postgresql)");
    assert!(out.status.success(), "psql {sql}: {}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_database_serves_an_app_survives_crashes_and_restarts_and_keeps_its_data() {
    if !heavy("PostgreSQL") {
        return;
    }
    let tp = TestPlane::start().await;
    let app = app_yaml("board", 1, &[], READINESS).replace("  ports:\n", "  databaseRef: {name: db}\n  ports:\n");
    tp.apply(&format!("{}---\n{app}", database_yaml("db", "")));
    let db = wait_db_ready(&tp, "db").await;
    assert!(db["status"]["endpoint"].as_str().unwrap_or("").starts_with("127.0.0.1:"));

    // The App gets the URL and can use it.
    let o = eventually("board Ready", T, || async {
        let o = tp.app("board").await;
        ready(&o).then_some(o)
    })
    .await;
    let port = replicas(&o)[0]["ports"]["http"].as_u64().expect("port") as u16;
    let (_, env) = http_get(port, "/env").await.expect("env");
    let env: Value = serde_json::from_str(&env).expect("json");
    let url = url_of(&tp, "db").await;
    assert_eq!(env["DATABASE_URL"], url.as_str());
    assert!(url.starts_with("postgres://app:") && url.ends_with("/db"), "{url}");
    psql(&url, "create table issues(id int primary key, title text)");
    psql(&url, "insert into issues values (1, 'survives')");
    assert_eq!(psql(&url, "show max_connections"), "20", "spec.parameters reach the server");
    // The generated password is in the credentials Secret, the App's DATABASE_URL and the replica's runtime
    // record: all of them in the encrypted store, none of them in the clear in any file of the data directory
    // (PostgreSQL keeps a SCRAM verifier, initdb's password file is gone).
    let password = url.trim_start_matches("postgres://app:").split('@').next().expect("a password").to_string();
    assert!(password.len() >= 16, "{url}");
    assert_eq!(files_holding(tp.dir.path(), &password), Vec::<String>::new(), "the password in the clear");
    assert!(!files_holding(tp.dir.path(), "listen_addresses").is_empty(), "the scan reads the server's own files");

    // SIGKILL of the server: restarted by its App, the row is there.
    let server = tp.app("db-postgres").await;
    let pid = replicas(&server)[0]["pid"].as_u64().expect("pid") as i32;
    nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), nix::sys::signal::Signal::SIGKILL).expect("kill");
    eventually("server back", T, || async {
        let o = tp.app("db-postgres").await;
        let r = replicas(&o).first().cloned()?;
        (r["pid"].as_u64() != Some(pid as u64) && r["ready"] == true).then_some(())
    })
    .await;
    assert_eq!(psql(&url, "select title from issues where id = 1"), "survives");

    // Capstan stopped (the server gets PostgreSQL's fast shutdown) and started again: same data, same password.
    let data = tp.dir.path().to_path_buf();
    let tp2 = tp.restart().await;
    let log = std::fs::read_to_string(data.join("logs/default/db-postgres/db-postgres-0.log")).unwrap_or_default();
    assert!(log.contains("received fast shutdown request"), "stopped with SIGINT");
    assert_eq!(url_of(&tp2, "db").await, url);
    // Status written before the restart says Ready until the new plane has looked; the server answers when it is.
    let count = eventually("the server answers again", T, || async {
        let out = Command::new("psql").args([url.as_str(), "-tAc", "select count(*) from issues"]).output().ok()?;
        out.status.success().then(|| String::from_utf8_lossy(&out.stdout).trim().to_string())
    })
    .await;
    assert_eq!(count, "1");
    wait_db_ready(&tp2, "db").await;

    // Deleted under Retain: the server stops; data and credentials stay.
    tp2.client.delete("/api/v1/namespaces/default/databases/db").await.expect("delete");
    eventually("server App gone", T, || async {
        tp2.client.get("/api/v1/namespaces/default/apps/db-postgres").await.is_err().then_some(())
    })
    .await;
    assert!(data.join("databases/default/db/pgdata/PG_VERSION").is_file());
    assert!(tp2.client.get("/api/v1/namespaces/default/secrets/db-credentials").await.is_ok());
    tp2.stop().await;
}

async fn env_of(o: &Value) -> Value {
    let port = replicas(o)[0]["ports"]["http"].as_u64().expect("port") as u16;
    let (_, env) = http_get(port, "/env").await.expect("env");
    serde_json::from_str(&env).expect("json")
}

/// Issue 20, items 9 and 4: an App that waits for its Database's credentials is Progressing, not a failed rollout;
/// when the Database is deleted and created again (new port, new password) the App rolls out with the new URL.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_app_waits_for_its_database_and_follows_it_when_it_is_created_again() {
    if !heavy("PostgreSQL") {
        return;
    }
    let tp = TestPlane::start().await;
    let app = app_yaml("board", 1, &[], READINESS).replace("  ports:\n", "  databaseRef: {name: db}\n  ports:\n");
    tp.apply(&app);
    let waiting = eventually("board waits for its Database", T, || async {
        let o = tp.app("board").await;
        let c = o["status"]["conditions"].as_array()?.iter().find(|c| c["type"] == "Ready")?.clone();
        (c["reason"] == "DependencyNotReady").then_some(o)
    })
    .await;
    assert_eq!(waiting["status"]["replicaStatuses"][0]["reason"], "Waiting", "{waiting}");
    assert_eq!(waiting["status"]["rollout"]["phase"], "Progressing", "{waiting}");
    tokio::time::sleep(Duration::from_secs(3)).await;
    let o = tp.app("board").await;
    assert_eq!(o["status"]["rollout"]["phase"], "Progressing", "still waiting, never failed: {o}");
    assert_eq!(o["status"]["restarts"], 0);

    tp.apply(&database_yaml("db", "  deletionPolicy: Delete\n"));
    let o = eventually("board Ready once the credentials exist", T, || async {
        let o = tp.app("board").await;
        ready(&o).then_some(o)
    })
    .await;
    let url1 = url_of(&tp, "db").await;
    assert_eq!(env_of(&o).await["DATABASE_URL"], url1.as_str());
    let rev1 = o["status"]["currentRevision"].as_str().expect("revision").to_string();
    let events = tp.client.get("/api/v1/namespaces/default/apps/board/events").await.expect("events").to_string();
    assert!(
        events.contains("Waiting") && !events.contains("RolloutFailed") && !events.contains("StartFailed"),
        "{events}"
    );

    // Deleted (Delete policy) and created again: new password (and port), so the App rolls out.
    tp.client.delete("/api/v1/namespaces/default/databases/db").await.expect("delete");
    eventually("credentials removed", T, || async {
        tp.client.get("/api/v1/namespaces/default/secrets/db-credentials").await.is_err().then_some(())
    })
    .await;
    assert_eq!(
        tp.app("board").await["status"]["revision"],
        rev1.as_str(),
        "nothing rolls while the credentials are gone"
    );
    tp.apply(&database_yaml("db", "  deletionPolicy: Delete\n"));
    wait_db_ready(&tp, "db").await;
    let url2 = url_of(&tp, "db").await;
    assert_ne!(url1, url2);
    let o = eventually("board rolled out with the new URL", T, || async {
        let o = tp.app("board").await;
        (ready(&o) && o["status"]["currentRevision"] != rev1.as_str()).then_some(o)
    })
    .await;
    assert_eq!(env_of(&o).await["DATABASE_URL"], url2.as_str());
    psql(&url2, "select 1");
    tp.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn delete_policy_removes_the_data_and_a_prune_never_does() {
    if !heavy("PostgreSQL") {
        return;
    }
    let tp = TestPlane::start().await;
    // A fixed port another process holds is refused before anything runs, naming the holder.
    let holder = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let taken = holder.local_addr().expect("addr").port();
    let yaml = database_yaml("clash", &format!("  port: {taken}\n"));
    let objects: Vec<Value> =
        capstan_model::parse_manifests("db.yaml", &yaml).unwrap().into_iter().map(|m| m.resource.to_value()).collect();
    match tp.plane().apply(objects) {
        Err(capstan_api::plane::ApplyError::Invalid(errors)) => {
            assert_eq!(errors[0].path, "spec.port");
            assert!(errors[0].message.contains(&format!("by pid {}", std::process::id())), "{:?}", errors[0]);
        }
        other => panic!("expected a refusal, got {other:?}"),
    }
    drop(holder);
    // Its own server on a fixed port is no clash: the same manifest applies again once it runs.
    let fixed = database_yaml("fixed", &format!("  port: {taken}\n"));
    tp.apply(&fixed);
    wait_db_ready(&tp, "fixed").await;
    eventually("the server listens on its fixed port", T, || async {
        std::net::TcpStream::connect(("127.0.0.1", taken)).ok().map(|_| ())
    })
    .await;
    tp.apply(&fixed);

    tp.apply(&database_yaml("scratch", "  deletionPolicy: Delete\n"));
    wait_db_ready(&tp, "scratch").await;
    let dir = tp.dir.path().join("databases/default/scratch");
    assert!(dir.join("pgdata/PG_VERSION").is_file());
    tp.client.delete("/api/v1/namespaces/default/databases/scratch").await.expect("delete");
    eventually("data removed after the server stopped", T, || async { (!dir.exists()).then_some(()) }).await;
    eventually("credentials removed", T, || async {
        tp.client.get("/api/v1/namespaces/default/secrets/scratch-credentials").await.is_err().then_some(())
    })
    .await;

    // From Git, with prune: removing the manifest does not delete the Database.
    let repo = GitRepo::new();
    repo.commit(&[("db.yaml", Some(&database_yaml("kept", "")))], "db");
    let sync = "apiVersion: capstan.dev/v1alpha1\nkind: Sync\nmetadata:\n  name: infra\nspec:\n  sourceRef: {name: repo}\n  interval: 1h\n  prune: true\n";
    let source = format!("apiVersion: capstan.dev/v1alpha1\nkind: Source\nmetadata:\n  name: repo\nspec:\n  url: {}\n  ref: {{branch: main}}\n  interval: 1h\n", repo.file_url());
    tp.apply(&format!("{source}---\n{sync}"));
    wait_db_ready(&tp, "kept").await;
    let c2 = repo.commit(&[("db.yaml", None), ("other.yaml", Some(&app_yaml("other", 1, &[], "")))], "drop the db");
    tp.client.post("/api/v1/namespaces/default/syncs/infra/reconcile", Value::Null).await.expect("sync now");
    eventually("applied without the Database", T, || async {
        let o = tp.client.get("/api/v1/namespaces/default/syncs/infra").await.ok()?;
        (o["status"]["lastAppliedRevision"] == format!("main@sha1:{c2}").as_str()).then_some(())
    })
    .await;
    assert!(db_obj(&tp, "kept").await.is_some(), "a prune never deletes a Database under Retain");
    let events = tp.client.get("/api/v1/namespaces/default/syncs/infra/events").await.expect("events").to_string();
    assert!(events.contains("kept Database/kept"), "{events}");
    tp.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn backups_on_schedule_and_on_request_and_a_restore_brings_data_back() {
    if !heavy("PostgreSQL") {
        return;
    }
    let tp = TestPlane::start().await;
    tp.apply(&database_yaml("bk", "  backup: {interval: 1h, keep: 2}\n"));
    wait_db_ready(&tp, "bk").await;
    // The first scheduled dump comes at once (there is none yet).
    let first = eventually("a scheduled dump", T, || async {
        let o = db_obj(&tp, "bk").await?;
        o["status"]["lastBackup"]["file"].as_str().map(str::to_string)
    })
    .await;
    assert!(std::path::Path::new(&first).is_file(), "{first}");
    assert!(first.contains("/volumes/default/bk-postgres/backups/"), "the server App's backups volume: {first}");

    let url = url_of(&tp, "bk").await;
    psql(&url, "create table notes(body text)");
    psql(&url, "insert into notes values ('keep me')");
    let cli = |args: &[&str]| tp.cli(args);
    let out = cli(&["db", "backup", "bk"]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert!(String::from_utf8_lossy(&out.stdout).contains("✔ database/bk backed up to"));

    psql(&url, "drop table notes");
    let out = cli(&["db", "restore", "bk"]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert_eq!(psql(&url, "select body from notes"), "keep me");

    // Retention: two dumps kept.
    assert!(cli(&["db", "backup", "bk"]).status.success());
    let dir = std::path::Path::new(&first).parent().expect("dir").to_path_buf();
    let dumps = std::fs::read_dir(&dir)
        .expect("dir")
        .filter(|e| e.as_ref().is_ok_and(|e| e.path().extension().is_some_and(|x| x == "dump")))
        .count();
    assert_eq!(dumps, 2);
    let out = cli(&["db", "restore", "bk", "--file", "nope.dump"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("no dump"), "{}", String::from_utf8_lossy(&out.stderr));
    // A restore asked for is recorded as Normal; one that failed as a Warning.
    let events = tp.client.get("/api/v1/namespaces/default/databases/bk/events").await.expect("events");
    let of = |reason: &str| {
        events["items"].as_array().into_iter().flatten().find(|e| e["reason"] == reason).map(|e| e["type"].clone())
    };
    assert_eq!(of("Restored"), Some(json!("Normal")), "{events}");
    assert_eq!(of("RestoreFailed"), Some(json!("Warning")), "{events}");
    tp.stop().await;
}
