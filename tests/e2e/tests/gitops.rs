//! GitOps end to end: real repositories served by `git daemon` on loopback (and file://), Sources and Syncs in an
//! in-process control plane, real replicas.

use std::time::Duration;

use capstan_e2e::git::GitRepo;
use capstan_e2e::*;
use capstan_engine::AppRuntime;
use serde_json::Value;

const T: Duration = Duration::from_secs(40);

fn source_yaml(name: &str, url: &str, extra: &str) -> String {
    format!(
        "apiVersion: capstan.dev/v1alpha1\nkind: Source\nmetadata:\n  name: {name}\nspec:\n  url: {url}\n  ref: {{branch: main}}\n  interval: 1h\n  timeout: 20s\n{extra}"
    )
}

fn sync_yaml(name: &str, source: &str, path: &str, extra: &str) -> String {
    format!(
        "apiVersion: capstan.dev/v1alpha1\nkind: Sync\nmetadata:\n  name: {name}\nspec:\n  sourceRef: {{name: {source}}}\n  path: {path}\n  interval: 1h\n  timeout: 30s\n  prune: true\n  wait: true\n{extra}"
    )
}

/// An App manifest for a repository: the test app with a readiness probe.
fn repo_app(name: &str, replicas: i32, env: &[(&str, &str)]) -> String {
    app_yaml(name, replicas, env, READINESS)
}

/// A Source on `repo` and two Syncs of it: `infra` (./infra) and `apps` (./apps), which depends on `infra`.
fn apply_infra_and_apps(tp: &TestPlane, repo: &GitRepo) {
    tp.apply(&format!(
        "{}---\n{}---\n{}",
        source_yaml("repo", &repo.file_url(), ""),
        sync_yaml("apps", "repo", "./apps", "  dependsOn:\n    - name: infra\n"),
        sync_yaml("infra", "repo", "./infra", ""),
    ));
}

async fn sync_obj(tp: &TestPlane, name: &str) -> Value {
    tp.client.get(&format!("/api/v1/namespaces/default/syncs/{name}")).await.expect("get sync")
}

fn ready_reason(o: &Value) -> (String, String) {
    let c = o["status"]["conditions"]
        .as_array()
        .and_then(|cs| cs.iter().find(|c| c["type"] == "Ready").cloned())
        .unwrap_or(Value::Null);
    (c["status"].as_str().unwrap_or("").to_string(), c["reason"].as_str().unwrap_or("").to_string())
}

/// Waits until the Sync has applied `revision` and is Ready.
async fn wait_applied(tp: &TestPlane, sync: &str, commit: &str) -> Value {
    let want = format!("main@sha1:{commit}");
    eventually(&format!("Sync {sync} Ready at {want}"), T, || async {
        let o = sync_obj(tp, sync).await;
        (o["status"]["lastAppliedRevision"] == want.as_str() && ready_reason(&o).0 == "True").then_some(o)
    })
    .await
}

async fn sync_now(tp: &TestPlane, sync: &str) {
    tp.client
        .post(&format!("/api/v1/namespaces/default/syncs/{sync}/reconcile"), Value::Null)
        .await
        .expect("reconcile request accepted");
}

async fn app_exists(tp: &TestPlane, name: &str) -> bool {
    tp.client.get(&format!("/api/v1/namespaces/default/apps/{name}")).await.is_ok()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn commits_over_git_daemon_are_applied_and_prune_removes_what_left_git() {
    let repo = GitRepo::new();
    let c1 = repo.commit(&[("deploy/web.yaml", Some(&repo_app("web", 1, &[("V", "1")])))], "web v1");
    let daemon = repo.serve();
    let tp = TestPlane::start().await;
    tp.apply(&format!(
        "{}---\n{}",
        source_yaml("repo", &daemon.url("repo"), ""),
        sync_yaml("deploy", "repo", "./deploy", "")
    ));

    let s = wait_applied(&tp, "deploy", &c1).await;
    assert_eq!(s["status"]["inventory"][0]["name"], "web");
    let web = tp.app("web").await;
    assert!(ready(&web));
    assert_eq!(web["metadata"]["labels"]["sync.capstan.dev/name"], "deploy");
    let src = tp.client.get("/api/v1/namespaces/default/sources/repo").await.expect("source");
    assert_eq!(src["status"]["artifact"]["revision"], format!("main@sha1:{c1}"));
    assert!(src["status"]["artifact"]["digest"].as_str().unwrap_or("").starts_with("sha256:"));

    // A second commit: more replicas and a new App.
    let c2 = repo.commit(
        &[
            ("deploy/web.yaml", Some(&repo_app("web", 2, &[("V", "1")]))),
            ("deploy/extra.yaml", Some(&repo_app("extra", 1, &[]))),
        ],
        "scale web, add extra",
    );
    sync_now(&tp, "deploy").await;
    let s = wait_applied(&tp, "deploy", &c2).await;
    assert_eq!(s["status"]["inventory"].as_array().map(Vec::len), Some(2));
    assert_eq!(tp.app("web").await["spec"]["replicas"], 2);
    assert!(app_exists(&tp, "extra").await);
    assert!(s["status"]["lastHandledReconcileAt"].is_string());

    // Deleted from Git: pruned.
    let c3 = repo.commit(&[("deploy/extra.yaml", None)], "drop extra");
    sync_now(&tp, "deploy").await;
    let s = wait_applied(&tp, "deploy", &c3).await;
    assert_eq!(s["status"]["inventory"].as_array().map(Vec::len), Some(1));
    eventually("extra pruned", T, || async { (!app_exists(&tp, "extra").await).then_some(()) }).await;
    let history = s["status"]["history"].as_array().cloned().unwrap_or_default();
    assert!(history.len() >= 3, "{history:?}");
    assert_eq!(history[0]["revision"], format!("main@sha1:{c3}"));
    assert_eq!(history[0]["result"], "ReconciliationSucceeded");
    tp.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_broken_commit_keeps_the_previous_revision_running() {
    let repo = GitRepo::new();
    let c1 = repo.commit(&[("web.yaml", Some(&repo_app("web", 1, &[])))], "good");
    let tp = TestPlane::start().await;
    tp.apply(&format!("{}---\n{}", source_yaml("repo", &repo.file_url(), ""), sync_yaml("apps", "repo", "./", "")));
    wait_applied(&tp, "apps", &c1).await;
    let pid = replicas(&tp.app("web").await)[0]["pid"].clone();

    let broken = repo_app("web", 1, &[]).replace("  replicas: 1", "  replicass: 3");
    let c2 = repo.commit(&[("web.yaml", Some(&broken))], "typo");
    sync_now(&tp, "apps").await;
    let s = eventually("BuildFailed", T, || async {
        let o = sync_obj(&tp, "apps").await;
        (ready_reason(&o) == ("False".into(), "BuildFailed".into())).then_some(o)
    })
    .await;
    let msg = s["status"]["conditions"][0]["message"].as_str().unwrap_or("").to_string();
    assert!(msg.contains("web.yaml:6:"), "file and line named: {msg}");
    assert!(msg.contains("replicass") && msg.contains("did you mean `replicas`"), "{msg}");
    assert_eq!(s["status"]["lastAppliedRevision"], format!("main@sha1:{c1}"));
    assert_eq!(s["status"]["lastAttemptedRevision"], format!("main@sha1:{c2}"));
    let web = tp.app("web").await;
    assert!(ready(&web));
    assert_eq!(replicas(&web)[0]["pid"], pid, "the running replica was not touched");

    // An App whose program does not exist is refused the same way, naming the field.
    let missing = repo_app("web", 1, &[]).replace(&testapp(), "/nonexistent/program");
    repo.commit(&[("web.yaml", Some(&missing))], "bad program");
    sync_now(&tp, "apps").await;
    eventually("BuildFailed naming spec.run.command", T, || async {
        let o = sync_obj(&tp, "apps").await;
        let m = o["status"]["conditions"][0]["message"].as_str().unwrap_or("").to_string();
        m.contains("spec.run.command[0]").then_some(())
    })
    .await;
    assert_eq!(replicas(&tp.app("web").await)[0]["pid"], pid);

    // Fixed: applied again.
    let c4 = repo.commit(&[("web.yaml", Some(&repo_app("web", 1, &[("FIXED", "1")])))], "fix");
    sync_now(&tp, "apps").await;
    wait_applied(&tp, "apps", &c4).await;
    tp.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn depends_on_holds_a_sync_until_its_dependency_is_ready() {
    let repo = GitRepo::new();
    let gate = tempfile::tempdir().expect("tempdir");
    // The test app answers /status with 503 while this file exists.
    let ready_file = gate.path().join("not-ready");
    std::fs::write(&ready_file, "wait").expect("close the gate");
    let db = repo_app("db", 1, &[("TESTAPP_READY_FILE", &ready_file.display().to_string())]);
    let c1 =
        repo.commit(&[("infra/db.yaml", Some(&db)), ("apps/front.yaml", Some(&repo_app("front", 1, &[])))], "both");
    let tp = TestPlane::start().await;
    apply_infra_and_apps(&tp, &repo);
    eventually("apps waits for infra", T, || async {
        let o = sync_obj(&tp, "apps").await;
        (ready_reason(&o) == ("False".into(), "DependencyNotReady".into())).then_some(())
    })
    .await;
    eventually("db applied but not Ready", T, || async { app_exists(&tp, "db").await.then_some(()) }).await;
    // db is not Ready, so infra is not, so front must not exist.
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert!(!app_exists(&tp, "front").await, "apps must not apply before infra is Ready");
    assert_eq!(ready_reason(&sync_obj(&tp, "infra").await).1, "Progressing");

    std::fs::remove_file(&ready_file).expect("open the gate");
    let infra = wait_applied(&tp, "infra", &c1).await;
    let apps = wait_applied(&tp, "apps", &c1).await;
    let t = |o: &Value| o["status"]["history"][0]["startedAt"].as_str().unwrap_or("").to_string();
    assert!(t(&apps) >= t(&infra), "apps reconciled after infra");
    assert!(ready(&tp.app("front").await));
    tp.stop().await;
}

/// Day 2: one commit breaks `infra/` and scales the Apps under `apps/`. `apps` must not apply that commit while
/// `infra` refuses it: it keeps running (and reporting) the revision before, and takes the next one once `infra`
/// has applied it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dependent_sync_never_runs_a_revision_its_dependency_refused() {
    let repo = GitRepo::new();
    let db = repo_app("db", 1, &[]);
    let front = |n: i32| repo_app("front", n, &[]);
    let c1 = repo.commit(&[("infra/db.yaml", Some(&db)), ("apps/front.yaml", Some(&front(1)))], "both");
    let tp = TestPlane::start().await;
    apply_infra_and_apps(&tp, &repo);
    wait_applied(&tp, "infra", &c1).await;
    wait_applied(&tp, "apps", &c1).await;

    let broken = "apiVersion: capstan.dev/v1alpha1\nkind: App\nmetadata: {name: cache}\nspec: {replicas: many}\n";
    let c2 = repo.commit(&[("infra/cache.yaml", Some(broken)), ("apps/front.yaml", Some(&front(2)))], "break");
    // `apps` is asked first: the Source moves to c2 while `infra` is still Ready on c1.
    sync_now(&tp, "apps").await;
    sync_now(&tp, "infra").await;
    eventually("infra refuses c2", T, || async {
        let o = sync_obj(&tp, "infra").await;
        (o["status"]["lastAttemptedRevision"] == format!("main@sha1:{c2}") && ready_reason(&o).0 == "False")
            .then_some(())
    })
    .await;
    sync_now(&tp, "apps").await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    let apps = sync_obj(&tp, "apps").await;
    assert_eq!(apps["status"]["lastAppliedRevision"], format!("main@sha1:{c1}"), "{apps}");
    assert_eq!(ready_reason(&apps), ("False".into(), "DependencyNotReady".into()), "{apps}");
    let why = apps["status"]["conditions"].to_string();
    assert!(why.contains("dependency 'default/infra'"), "{why}");
    assert_eq!(tp.app("front").await["spec"]["replicas"], 1, "front runs what apps reports: c1");

    // infra fixed: both move on, infra first.
    let c3 = repo.commit(&[("infra/cache.yaml", None)], "fix");
    sync_now(&tp, "infra").await;
    wait_applied(&tp, "infra", &c3).await;
    sync_now(&tp, "apps").await;
    wait_applied(&tp, "apps", &c3).await;
    assert_eq!(tp.app("front").await["spec"]["replicas"], 2);
    tp.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_webhook_with_a_wrong_hmac_is_refused_and_a_right_one_syncs_at_once() {
    let repo = GitRepo::new();
    let c1 = repo.commit(&[("web.yaml", Some(&repo_app("web", 1, &[])))], "v1");
    let daemon = repo.serve();
    let tp = TestPlane::start().await;
    let secret = "apiVersion: capstan.dev/v1alpha1\nkind: Secret\nmetadata:\n  name: hook\nspec:\n  stringData:\n    token: s3cret\n";
    tp.apply(&format!(
        "{secret}---\n{}---\n{}",
        source_yaml("repo", &daemon.url("repo"), ""),
        sync_yaml("apps", "repo", "./", "  webhook:\n    secretRef: {name: hook}\n")
    ));
    wait_applied(&tp, "apps", &c1).await;
    let c2 = repo.commit(&[("web.yaml", Some(&repo_app("web", 1, &[("V", "2")])))], "v2");
    let body = format!(r#"{{"ref":"refs/heads/main","after":"{c2}"}}"#);
    let url = format!("{}/hooks/default/apps", tp.plane().url());

    // A bad signature and a receiver that does not exist get the same answer: nothing to probe for from outside.
    let (code, bad) =
        post_raw(&url, &body, &[("X-Hub-Signature-256", "sha256=00ff"), ("X-GitHub-Event", "push")]).await;
    assert_eq!(code, 404);
    let wrong = capstan_gitops::webhook::sign(b"not-the-secret", body.as_bytes());
    let (code, _) = post_raw(&url, &body, &[("X-Gitea-Signature", &wrong)]).await;
    assert_eq!(code, 404);
    let (code, unknown) = post_raw(&format!("{}/hooks/default/nope", tp.plane().url()), &body, &[]).await;
    assert_eq!((code, &unknown), (404, &bad));
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(sync_obj(&tp, "apps").await["status"]["lastAppliedRevision"], format!("main@sha1:{c1}"));

    let right = format!("sha256={}", capstan_gitops::webhook::sign(b"s3cret", body.as_bytes()));
    let delivery = [("X-Hub-Signature-256", right.as_str()), ("X-GitHub-Event", "push"), ("X-GitHub-Delivery", "d-1")];
    let (code, resp) = post_raw(&url, &body, &delivery).await;
    assert_eq!(code, 202, "{resp}");
    // The interval is an hour: only the webhook can have done this.
    wait_applied(&tp, "apps", &c2).await;
    // The same delivery again, or the same signed body under a new delivery id, is a replay: it starts nothing.
    let (code, resp) = post_raw(&url, &body, &delivery).await;
    assert_eq!(code, 200, "{resp}");
    assert!(resp.contains("already accepted"), "{resp}");
    let renamed = [("X-Hub-Signature-256", right.as_str()), ("X-GitHub-Event", "push"), ("X-GitHub-Delivery", "d-2")];
    let (code, resp) = post_raw(&url, &body, &renamed).await;
    assert_eq!((code, resp.contains("already accepted")), (200, true), "{resp}");
    // A generic sender that signs a timestamp cannot have an old delivery replayed.
    let old = (chrono::Utc::now().timestamp() - 3_600).to_string();
    let signed = [old.as_bytes(), b".", body.as_bytes()].concat();
    let old_sig = format!("sha256={}", capstan_gitops::webhook::sign(b"s3cret", &signed));
    let (code, _) = post_raw(&url, &body, &[("X-Signature", &old_sig), ("X-Signature-Timestamp", &old)]).await;
    assert_eq!(code, 404, "refused as every bad delivery is");
    let events = tp.client.get("/api/v1/namespaces/default/syncs/apps/events").await.expect("events");
    let text = events.to_string();
    assert!(text.contains("WebhookRefused") && text.contains("WebhookReceived"), "{text}");
    assert!(!text.contains("s3cret"), "the secret never appears in events");
    tp.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn drift_made_by_hand_is_put_back() {
    let repo = GitRepo::new();
    let app = repo_app("web", 1, &[]);
    let secret = "apiVersion: capstan.dev/v1alpha1\nkind: Secret\nmetadata:\n  name: db\nspec:\n  stringData: {password: from-git-pw}\n";
    let c1 = repo.commit(&[("web.yaml", Some(&app)), ("secret.yaml", Some(secret))], "v1");
    let tp = TestPlane::start().await;
    let sync = sync_yaml("apps", "repo", "./", "").replace("interval: 1h", "interval: 2s");
    tp.apply(&format!("{}---\n{}", source_yaml("repo", &repo.file_url(), ""), sync));
    wait_applied(&tp, "apps", &c1).await;

    // By hand: scale to 2.
    tp.apply(&app.replace("replicas: 1", "replicas: 2"));
    assert_eq!(tp.app("web").await["spec"]["replicas"], 2);
    eventually("drift reverted", T, || async { (tp.app("web").await["spec"]["replicas"] == 1).then_some(()) }).await;
    let events = tp.client.get("/api/v1/namespaces/default/syncs/apps/events").await.expect("events").to_string();
    assert!(events.contains("DriftReverted") && events.contains("spec.replicas: 2 → 1"), "{events}");

    // A Secret changed by hand is put back too, and no event shows either value.
    tp.apply(&secret.replace("from-git-pw", "by-hand-pw"));
    eventually("secret reverted", T, || async {
        let o = tp.client.get("/api/v1/namespaces/default/secrets/db").await.ok()?;
        (o["spec"]["stringData"]["password"] == "from-git-pw").then_some(())
    })
    .await;
    let events = tp.client.get("/api/v1/namespaces/default/syncs/apps/events").await.expect("events").to_string();
    assert!(events.contains("Secret/db was changed outside Git"), "{events}");
    assert!(events.contains(r#"spec.stringData.password: \"***\" → \"***\""#), "{events}");
    // The Sync's labels the apply by hand dropped are put back too, but they are bookkeeping, not the change.
    assert!(!events.contains("metadata.labels.sync.capstan.dev") && !events.contains("base-dir"), "{events}");
    assert_eq!(tp.app("web").await["metadata"]["labels"]["sync.capstan.dev/name"], "apps");
    assert!(!events.contains("from-git-pw") && !events.contains("by-hand-pw"), "{events}");
    tp.stop().await;
}

/// Issue 20, item 2: an apply by hand (which drops the Sync's labels) does not take an object away from its Sync;
/// when Git deletes it, the next reconcile prunes it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_apply_by_hand_does_not_take_an_object_away_from_its_sync() {
    let repo = GitRepo::new();
    let web = repo_app("web", 1, &[]);
    let c1 = repo.commit(&[("web.yaml", Some(&web)), ("keep.yaml", Some(&repo_app("keep", 1, &[])))], "v1");
    let tp = TestPlane::start().await;
    tp.apply(&format!("{}---\n{}", source_yaml("repo", &repo.file_url(), ""), sync_yaml("apps", "repo", "./", "")));
    wait_applied(&tp, "apps", &c1).await;

    // By hand, as a user would from their own copy: no Sync labels, another replica count.
    tp.apply(&web.replace("replicas: 1", "replicas: 2"));
    let o = tp.app("web").await;
    assert!(o["metadata"]["labels"].get("sync.capstan.dev/name").is_none(), "the apply dropped the labels: {o}");
    assert_eq!(o["metadata"]["managedFields"][0]["manager"], "sync.capstan.dev/default/apps", "{o}");
    // The CLI says who owns it; `get -o yaml` shows the record only on request, as kubectl does.
    let cli = |args: &[&str]| String::from_utf8_lossy(&tp.cli(args).stdout).into_owned();
    assert!(cli(&["describe", "app", "web"]).contains("Managed by:       Sync default/apps"));
    assert!(!cli(&["get", "app", "web", "-o", "yaml"]).contains("managedFields"));
    assert!(
        cli(&["get", "app", "web", "-o", "yaml", "--show-managed-fields"]).contains("sync.capstan.dev/default/apps")
    );

    // Git deletes it before the Sync's next interval: the next reconcile prunes it all the same.
    let c2 = repo.commit(&[("web.yaml", None)], "drop web");
    sync_now(&tp, "apps").await;
    wait_applied(&tp, "apps", &c2).await;
    eventually("web pruned", T, || async { (!app_exists(&tp, "web").await).then_some(()) }).await;
    assert!(app_exists(&tp, "keep").await);
    let events = tp.client.get("/api/v1/namespaces/default/syncs/apps/events").await.expect("events").to_string();
    assert!(!events.contains("PruneSkipped"), "{events}");
    tp.stop().await;
}

/// Issue 21: a store that cannot be read is not an empty one. While every read fails, the Source keeps its
/// repository, the Sync its inventory and the App its replicas; when reads work again, the next commit is applied.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn read_errors_are_retried_and_never_taken_for_absent() {
    let repo = GitRepo::new();
    let c1 = repo.commit(&[("web.yaml", Some(&repo_app("web", 1, &[])))], "v1");
    let tp = TestPlane::start().await;
    let src = source_yaml("repo", &repo.file_url(), "").replace("interval: 1h", "interval: 1s");
    tp.apply(&format!("{src}---\n{}", sync_yaml("apps", "repo", "./", "").replace("interval: 1h", "interval: 1s")));
    wait_applied(&tp, "apps", &c1).await;
    let key = capstan_model::ObjectKey::new("App", "default", "web");
    let pid = tp.plane().runtime().observe(&key)[0].pid.expect("pid");
    let repo_git = tp.dir.path().join("sources/default/repo/repo.git");
    assert!(repo_git.is_dir());

    tp.plane().store().inject_read_faults(true);
    // Several intervals of every controller (Sources and Syncs every second, Apps on their own schedule). Writes
    // still work meanwhile: a controller that took a failed read for "nothing there" could write that down.
    tokio::time::sleep(Duration::from_secs(6)).await;
    assert!(repo_git.is_dir(), "the repository was kept");
    let running = tp.plane().runtime().observe(&key);
    assert_eq!(running.len(), 1, "{running:?}");
    assert_eq!(running[0].pid, Some(pid), "the replica kept running");
    assert!(alive(pid));
    tp.plane().store().inject_read_faults(false);
    // What was stored meanwhile, before anything new is committed: the inventory and the App as they were.
    let sync_key = capstan_model::ObjectKey::new("Sync", "default", "apps");
    let s = tp.plane().store().get(&sync_key).expect("read").expect("the Sync");
    assert_eq!(s["status"]["inventory"][0]["name"], "web", "the inventory was kept: {}", s["status"]);
    assert_eq!(s["status"]["lastAppliedRevision"], format!("main@sha1:{c1}"), "{}", s["status"]);
    assert!(tp.plane().store().get(&key).expect("read").is_some(), "the App was not pruned");

    // And the next commit is applied.
    let c2 = repo.commit(&[("web.yaml", Some(&repo_app("web", 2, &[])))], "v2");
    let s = wait_applied(&tp, "apps", &c2).await;
    assert_eq!(s["status"]["inventory"][0]["name"], "web");
    eventually("web scaled to 2", T, || async { (replicas(&tp.app("web").await).len() == 2).then_some(()) }).await;
    tp.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_directory_source_is_watched() {
    let dir = tempfile::tempdir().expect("tempdir");
    std::fs::write(dir.path().join("web.yaml"), repo_app("web", 1, &[])).expect("write");
    let tp = TestPlane::start().await;
    let src = format!(
        "apiVersion: capstan.dev/v1alpha1\nkind: Source\nmetadata:\n  name: local\nspec:\n  dir: {}\n  interval: 1h\n",
        dir.path().display()
    );
    tp.apply(&format!("{src}---\n{}", sync_yaml("apps", "local", "./", "")));
    eventually("web Ready", T, || async { app_exists(&tp, "web").await.then_some(()) }).await;
    std::fs::write(dir.path().join("web.yaml"), repo_app("web", 2, &[])).expect("write");
    // No request and an hour's interval: the file watch alone brings the change.
    eventually("scaled by the edit", T, || async { (tp.app("web").await["spec"]["replicas"] == 2).then_some(()) })
        .await;
    let s = sync_obj(&tp, "apps").await;
    assert!(s["status"]["lastAttemptedRevision"].as_str().unwrap_or("").starts_with("sha256:"));
    tp.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wrong_credentials_and_unreachable_remotes_get_a_clear_status() {
    // Git's smart HTTP (git http-backend): an open server fetches; credentials are never sent over plain http.
    let served = GitRepo::new();
    let c1 = served.commit(&[("a.yaml", Some("# nothing\n"))], "one");
    let http = capstan_e2e::git::GitHttp::serve(served.root.path(), Some(("bob", "right-horse"))).await;
    let open = capstan_e2e::git::GitHttp::serve(served.root.path(), None).await;
    let tp = TestPlane::start().await;
    let secret =
        "apiVersion: capstan.dev/v1alpha1\nkind: Secret\nmetadata:\n  name: creds\nspec:\n  stringData:\n    username: bob\n    password: hunter2-secret\n";
    let private = source_yaml("private", &http.url("repo"), "  secretRef: {name: creds}\n");
    let fine = source_yaml("fine", &open.url("repo"), "");
    let anonymous = source_yaml("anonymous", &http.url("repo"), "");
    // Port 9 on loopback: nothing listens there.
    let gone = source_yaml("gone", "git://127.0.0.1:9/repo", "");
    // A remote that accepts and then says nothing: the fetch must end at spec.timeout.
    let silent = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let silent_port = silent.local_addr().expect("addr").port();
    let held = std::thread::spawn(move || silent.accept().map(|(conn, _)| conn));
    let hung =
        source_yaml("hung", &format!("git://127.0.0.1:{silent_port}/repo"), "").replace("timeout: 20s", "timeout: 1s");
    // A Secret that does not exist yet: stalled until it is created.
    let repo = GitRepo::new();
    repo.commit(&[("a.yaml", Some("# nothing\n"))], "one");
    let waiting = source_yaml("waiting", &repo.file_url(), "  secretRef: {name: later}\n");
    tp.apply(&format!("{secret}---\n{private}---\n{fine}---\n{anonymous}---\n{gone}---\n{hung}---\n{waiting}"));
    let cond = |o: &Value, t: &str| {
        o["status"]["conditions"].as_array().and_then(|cs| cs.iter().find(|c| c["type"] == t).cloned())
    };
    let p = eventually("private fails", T, || async {
        let o = tp.client.get("/api/v1/namespaces/default/sources/private").await.ok()?;
        cond(&o, "FetchFailed").map(|_| o)
    })
    .await;
    let ready_c = cond(&p, "Ready").expect("Ready condition");
    assert_eq!(ready_c["status"], "False");
    assert_eq!(ready_c["reason"], "AuthenticationFailed", "{ready_c}");
    assert!(ready_c["message"].as_str().unwrap_or("").contains("use https://"), "{ready_c}");
    assert!(!p.to_string().contains("hunter2"), "no secret in status: {p}");
    let g = eventually("gone fails", T, || async {
        let o = tp.client.get("/api/v1/namespaces/default/sources/gone").await.ok()?;
        cond(&o, "FetchFailed").map(|_| o)
    })
    .await;
    assert_eq!(cond(&g, "Ready").expect("Ready")["reason"], "GitOperationFailed");
    let h = eventually("hung times out", T, || async {
        let o = tp.client.get("/api/v1/namespaces/default/sources/hung").await.ok()?;
        cond(&o, "FetchFailed").map(|_| o)
    })
    .await;
    let msg = cond(&h, "Ready").expect("Ready")["message"].as_str().unwrap_or("").to_string();
    assert!(msg.contains("did not finish within spec.timeout"), "{msg}");
    let w = eventually("waiting stalls", T, || async {
        let o = tp.client.get("/api/v1/namespaces/default/sources/waiting").await.ok()?;
        cond(&o, "Stalled").map(|_| o)
    })
    .await;
    let stalled = cond(&w, "Stalled").expect("Stalled");
    assert!(stalled["message"].as_str().unwrap_or("").contains("Secret default/later"), "{stalled}");
    tp.apply("apiVersion: capstan.dev/v1alpha1\nkind: Secret\nmetadata:\n  name: later\nspec:\n  stringData: {username: u, password: p}\n");
    eventually("waiting fetches once its Secret exists", T, || async {
        let o = tp.client.get("/api/v1/namespaces/default/sources/waiting").await.ok()?;
        (cond(&o, "Stalled").is_none() && cond(&o, "Ready")?["status"] == "True").then_some(())
    })
    .await;
    let a = eventually("anonymous is refused", T, || async {
        let o = tp.client.get("/api/v1/namespaces/default/sources/anonymous").await.ok()?;
        cond(&o, "FetchFailed").map(|_| o)
    })
    .await;
    let am = cond(&a, "Ready").expect("Ready")["message"].as_str().unwrap_or("").to_string();
    assert!(am.contains("set spec.secretRef"), "{am}");
    assert_eq!(cond(&a, "Ready").expect("Ready")["reason"], "AuthenticationFailed");
    eventually("fine fetches over smart HTTP", T, || async {
        let o = tp.client.get("/api/v1/namespaces/default/sources/fine").await.ok()?;
        (o["status"]["artifact"]["revision"] == format!("main@sha1:{c1}").as_str()).then_some(())
    })
    .await;
    drop(held);
    let data = tp.stop_keeping_data().await;
    // The Source's password was only ever in the encrypted store and in memory.
    assert!(data.path().join("state.redb").is_file());
    assert_eq!(files_holding(data.path(), "hunter2-secret"), Vec::<String>::new());
}

/// POSTs a raw body with headers; returns the status and body.
async fn post_raw(url: &str, body: &str, headers: &[(&str, &str)]) -> (u16, String) {
    use http_body_util::{BodyExt, Full};
    let client = hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
        .build_http::<Full<bytes::Bytes>>();
    let mut req = hyper::Request::post(url).header("content-type", "application/json");
    for (k, v) in headers {
        req = req.header(*k, *v);
    }
    let req = req.body(Full::new(bytes::Bytes::from(body.to_string()))).expect("request");
    let resp = client.request(req).await.expect("response");
    let code = resp.status().as_u16();
    let bytes = resp.into_body().collect().await.map(|c| c.to_bytes()).unwrap_or_default();
    (code, String::from_utf8_lossy(&bytes).into_owned())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ssh_sources_use_their_key_and_trust_only_their_known_hosts() {
    if !heavy("sshd and ssh-keygen (OpenSSH)") {
        return;
    }
    let sshd = capstan_e2e::git::Sshd::start();
    let repo = GitRepo::new();
    let c1 = repo.commit(&[("web.yaml", Some(&repo_app("sshweb", 1, &[])))], "v1");
    let tp = TestPlane::start().await;
    let indent = |s: &str| s.lines().map(|l| format!("      {l}\n")).collect::<String>();
    let secret = |name: &str, known_hosts: &str| {
        format!(
            "apiVersion: capstan.dev/v1alpha1\nkind: Secret\nmetadata:\n  name: {name}\nspec:\n  stringData:\n    identity: |\n{}    known_hosts: |\n{}",
            indent(&sshd.identity),
            indent(known_hosts)
        )
    };
    // The same host name with another key: host key verification must fail.
    let wrong_hosts = sshd.known_hosts.replacen(
        " AAAA",
        " AAAAC3NzaC1lZDI1NTE5AAAAIBadKeyBadKeyBadKeyBadKeyBadKeyBadKeyBadKey0 #",
        1,
    );
    let url = sshd.url(repo.path());
    tp.apply(&format!(
        "{}---\n{}---\n{}---\n{}---\n{}",
        secret("ssh-key", &sshd.known_hosts),
        secret("ssh-wrong-host", &wrong_hosts),
        source_yaml("repo", &url, "  secretRef: {name: ssh-key}\n"),
        source_yaml("spoofed", &url, "  secretRef: {name: ssh-wrong-host}\n"),
        sync_yaml("apps", "repo", "./", ""),
    ));
    wait_applied(&tp, "apps", &c1).await;
    assert!(ready(&tp.app("sshweb").await));
    let s = eventually("spoofed host refused", T, || async {
        let o = tp.client.get("/api/v1/namespaces/default/sources/spoofed").await.ok()?;
        let c = o["status"]["conditions"].as_array()?.iter().find(|c| c["type"] == "Ready")?.clone();
        (c["status"] == "False").then_some(c)
    })
    .await;
    assert_eq!(s["reason"], "AuthenticationFailed", "{s}");
    let text = tp.client.get("/api/v1/namespaces/default/sources/repo").await.expect("source").to_string();
    assert!(!text.contains("PRIVATE KEY"), "the key never reaches status");
    let data = tp.stop_keeping_data().await;
    assert!(data.path().join("state.redb").is_file());
    // ssh reads the key from a file (0600, in the Source's repository directory) only while it fetches.
    let key_line = sshd.identity.lines().nth(1).expect("a line of the key").to_string();
    eventually("no file holds the private key once fetches have ended", T, || async {
        files_holding(data.path(), &key_line).is_empty().then_some(())
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sync_with_target_kubernetes_applies_to_the_cluster_waits_for_health_and_prunes() {
    let fake =
        capstan_fake_apiserver::FakeApiServer::start_on("127.0.0.1:0", Some("cluster-token")).await.expect("fake");
    let app = "apiVersion: capstan.dev/v1alpha1\nkind: App\nmetadata: {name: jira}\nspec:\n  run: {image: atlassian/jira-software:9.12}\n  ports: [{name: http}]\n  expose: [{port: 443}]\n  databaseRef: {name: jira-db}\n";
    let db = "apiVersion: capstan.dev/v1alpha1\nkind: Database\nmetadata: {name: jira-db}\nspec: {}\n";
    let repo = GitRepo::new();
    let c1 = repo.commit(&[("k8s/jira.yaml", Some(app)), ("k8s/db.yaml", Some(db))], "jira on a cluster");
    let tp = TestPlane::start().await;
    let kubeconfig: String = fake.kubeconfig("cluster-token").lines().map(|l| format!("      {l}\n")).collect();
    tp.apply(&format!(
        "apiVersion: capstan.dev/v1alpha1\nkind: Secret\nmetadata: {{name: prod-cluster}}\nspec:\n  stringData:\n    value: |\n{kubeconfig}---\n{}---\n{}",
        source_yaml("repo", &repo.file_url(), ""),
        sync_yaml(
            "prod",
            "repo",
            "./k8s",
            "  target: kubernetes\n  kubeConfig: {secretRef: {name: prod-cluster}}\n  entryPoints: {ingressClassName: traefik}\n"
        )
    ));

    // Applied to the cluster (nothing runs here), then held until the cluster says the workloads are ready.
    let progressing = eventually("the Sync waits for the cluster", T, || async {
        let o = sync_obj(&tp, "prod").await;
        let msg = o["status"]["conditions"]
            .as_array()
            .and_then(|cs| cs.iter().find(|c| c["type"] == "Ready"))
            .and_then(|c| c["message"].as_str())
            .unwrap_or("")
            .to_string();
        msg.contains("waiting for").then_some(msg)
    })
    .await;
    assert!(
        progressing.contains("StatefulSet default/jira: the controller has not seen generation 1 yet"),
        "{progressing}"
    );
    assert!(!app_exists(&tp, "jira").await, "the App is not run by the embedded runtime");
    let sts = fake.get("apps", "statefulsets", "default", "jira").expect("StatefulSet in the cluster");
    assert_eq!(
        fake.managers("apps", "statefulsets", "default", "jira").keys().next().map(String::as_str),
        Some("capstan")
    );
    assert_eq!(sts["spec"]["template"]["spec"]["containers"][0]["image"], "atlassian/jira-software:9.12");
    assert!(fake.get("", "secrets", "default", "jira-db-credentials").is_some());
    assert!(fake.get("", "configmaps", "default", "capstan-inventory-default-prod").is_some());
    // The Sync's cluster has no Gateway API: its entryPoints ask for an Ingress of its class instead of a route.
    let ingress = fake.get("networking.k8s.io", "ingresses", "default", "jira").expect("the Ingress");
    assert_eq!(ingress["spec"]["ingressClassName"], "traefik");
    assert!(fake.get("gateway.networking.k8s.io", "httproutes", "default", "jira").is_none());
    let ready = serde_json::json!({"observedGeneration": 1, "readyReplicas": 1, "updatedReplicas": 1, "currentRevision": "a", "updateRevision": "a"});
    for name in ["jira", "jira-db-postgres"] {
        assert!(fake.set_status("apps", "statefulsets", "default", name, ready.clone()));
    }
    let s = wait_applied(&tp, "prod", &c1).await;
    let kinds: Vec<&str> =
        s["status"]["inventory"].as_array().into_iter().flatten().filter_map(|e| e["kind"].as_str()).collect();
    assert!(kinds.contains(&"StatefulSet") && kinds.contains(&"Service"), "{kinds:?}");

    // The App leaves Git: pruned from the cluster; the database stays.
    let c2 = repo.commit(&[("k8s/jira.yaml", None)], "drop jira");
    sync_now(&tp, "prod").await;
    wait_applied(&tp, "prod", &c2).await;
    assert!(fake.get("apps", "statefulsets", "default", "jira").is_none());
    assert!(fake.get("apps", "statefulsets", "default", "jira-db-postgres").is_some());

    // A kubeconfig Secret that is gone: a clear status, and nothing changes in the cluster.
    tp.client.delete("/api/v1/namespaces/default/secrets/prod-cluster").await.expect("delete secret");
    sync_now(&tp, "prod").await;
    let msg = eventually("a missing kubeconfig is reported", T, || async {
        let o = sync_obj(&tp, "prod").await;
        let (status, _) = ready_reason(&o);
        let msg = o["status"]["conditions"][0]["message"].as_str().unwrap_or("").to_string();
        (status == "False" && msg.contains("prod-cluster")).then_some(msg)
    })
    .await;
    assert!(msg.contains("Secret default/prod-cluster named in spec.kubeConfig does not exist"), "{msg}");
    assert!(fake.get("apps", "statefulsets", "default", "jira-db-postgres").is_some());
    tp.stop().await;
}
