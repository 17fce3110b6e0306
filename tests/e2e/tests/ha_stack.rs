//! The Data Center pattern end to end: `examples/ha-stack` (a PostgreSQL Database and two Teamboard nodes behind the
//! sticky balancer) run from the example's own manifest, against the machine's real PostgreSQL.

use std::collections::{BTreeMap, BTreeSet};
use std::process::Command;
use std::sync::Arc;
use std::time::Duration;

use capstan_e2e::web::Browser;
use capstan_e2e::*;
use serde_json::{json, Value};

const T: Duration = Duration::from_secs(90);

/// The example's manifest, running the test build of Teamboard behind a balancer on `lb`, at `version`.
fn stack_yaml(lb: u16, version: &str) -> String {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/../../examples/ha-stack/ha-stack.yaml");
    let yaml = std::fs::read_to_string(path).expect("examples/ha-stack/ha-stack.yaml");
    for needle in ["command: [teamboard]", "port: 8090", "TEAMBOARD_VERSION: v1"] {
        assert!(yaml.contains(needle), "the example still has {needle:?}");
    }
    yaml.replace("command: [teamboard]", &format!("command: [{}]", bin("capstan-teamboard").display()))
        .replace("port: 8090", &format!("port: {lb}"))
        .replace("TEAMBOARD_VERSION: v1", &format!("TEAMBOARD_VERSION: {version}"))
}

/// Waits until both nodes are Ready at `version` and the rollout is over; returns the App.
async fn stack_ready(tp: &TestPlane, version: &str) -> Value {
    let deadline = tokio::time::Instant::now() + T;
    loop {
        let o = tp.app("teamboard").await;
        let rs = replicas(&o);
        let all = rs.len() == 2
            && rs.iter().all(|r| {
                r["ready"] == true
                    && r["revision"] == o["status"]["revision"]
                    && r["pid"].as_u64().is_some_and(|p| alive(p as u32))
            });
        let env_ok = o["spec"]["run"]["env"]["TEAMBOARD_VERSION"] == version
            && o["status"]["observedGeneration"] == o["metadata"]["generation"];
        if ready(&o) && all && env_ok {
            return o;
        }
        if tokio::time::Instant::now() >= deadline {
            // Say what the App and its database looked like, so a failure can be understood from the log.
            let db = tp.client.get("/api/v1/namespaces/default/databases/teamboard-db").await.unwrap_or_default();
            panic!(
                "timed out after {T:?} waiting for teamboard 2/2 Ready at {version}\napp status: {}\ndatabase status: {}",
                o["status"], db["status"]
            );
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

fn node_port(o: &Value, ordinal: usize) -> u16 {
    replicas(o)[ordinal]["ports"]["http"].as_u64().expect("port") as u16
}

async fn login(b: &mut Browser, user: &str) -> String {
    let r = b.post_json("/api/login", &json!({"user": user})).await.expect("login answers");
    assert_eq!(r.status, 200, "login {user}: {}", r.text());
    r.json()["node"].as_str().expect("node").to_string()
}

async fn status_of(port: u16) -> Value {
    let (_, body) = http_get(port, "/status").await.expect("status answers");
    serde_json::from_str(&body).expect("status is JSON")
}

fn psql(url: &str, sql: &str) -> String {
    let out = Command::new("psql").args([url, "-tAc", sql]).output().expect("psql runs (scripts/test.sh installs it)");
    assert!(out.status.success(), "psql {sql}: {}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

async fn db_url(tp: &TestPlane) -> String {
    let s = tp.client.get("/api/v1/namespaces/default/secrets/teamboard-db-credentials").await.expect("secret");
    s["spec"]["stringData"]["url"].as_str().expect("url").to_string()
}

/// 256 KiB that no compression or coincidence reproduces.
fn payload() -> Vec<u8> {
    (0u32..65536).flat_map(|i| i.wrapping_mul(2654435761).to_le_bytes()).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn attachments_are_shared_sessions_stick_and_a_killed_node_moves_only_its_own_users() {
    if !heavy("PostgreSQL") {
        return;
    }
    let tp = TestPlane::start().await;
    let lb = free_port();
    tp.apply(&stack_yaml(lb, "v1"));
    let o = stack_ready(&tp, "v1").await;
    let (p0, p1) = (node_port(&o, 0), node_port(&o, 1));

    // An attachment uploaded through node 0 downloads through node 1 at once: one shared store.
    let mut alice = Browser::new(p0);
    assert_eq!(login(&mut alice, "alice").await, "teamboard-0");
    let issue = alice.post_json("/api/issues", &json!({"title": "Quarterly nutrient plan", "body": "draft"})).await;
    let issue = issue.expect("create");
    assert_eq!(issue.status, 201, "{}", issue.text());
    let id = issue.json()["issue"]["id"].as_i64().expect("id");
    let bytes = payload();
    let up = alice
        .send(
            "POST",
            &format!("/api/issues/{id}/attachments?filename=plan.bin"),
            Some("application/x-plan"),
            bytes.clone(),
        )
        .await
        .expect("upload");
    assert_eq!(up.status, 201, "{}", up.text());
    let att = up.json()["id"].as_str().expect("attachment id").to_string();
    let mut bob = Browser::new(p1);
    assert_eq!(login(&mut bob, "bob").await, "teamboard-1");
    let down = bob.get(&format!("/api/attachments/{att}")).await.expect("download");
    assert_eq!(down.status, 200, "{}", down.text());
    assert_eq!(down.content_type, "application/x-plan");
    assert!(down.body == bytes, "the bytes read through node 1 are the bytes written through node 0");
    // Node 1 indexed node 0's issue from the change notification.
    eventually("node 1 finds node 0's issue", T, || async {
        let r = bob.clone().get("/api/search?q=nutrient").await.ok()?;
        (r.json()["items"].as_array()?.len() == 1).then_some(())
    })
    .await;
    // A session lives on one node: node 1 does not know alice's cookie.
    let mut stray = Browser::new(p1);
    stray.cookies = alice.cookies.clone();
    assert_eq!(stray.get("/api/whoami").await.expect("answer").status, 401, "sessions are node-local");

    // Forty users sign in through the balancer; each stays on one node for the whole session.
    let mut users: Vec<(Browser, String)> = Vec::new();
    for i in 0..40 {
        let mut b = Browser::new(lb);
        let node = login(&mut b, &format!("user{i}")).await;
        users.push((b, node));
    }
    let per_node: BTreeSet<&str> = users.iter().map(|(_, n)| n.as_str()).collect();
    assert_eq!(per_node.len(), 2, "new sessions are spread over both nodes");
    for _ in 0..3 {
        for (i, (b, node)) in users.iter_mut().enumerate() {
            let r = b.get("/api/whoami").await.expect("whoami");
            assert_eq!(r.status, 200, "user{i}: {}", r.text());
            assert_eq!(r.json()["node"], node.as_str(), "user{i} stays on its node");
            assert_eq!(r.json()["user"], format!("user{i}"));
        }
    }

    // SIGKILL the node holding user0's session.
    let victim = users[0].1.clone();
    let ordinal: usize = victim.rsplit('-').next().and_then(|n| n.parse().ok()).expect("ordinal");
    let o = tp.app("teamboard").await;
    let pid = replicas(&o)[ordinal]["pid"].as_u64().expect("pid") as i32;
    nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), nix::sys::signal::Signal::SIGKILL).expect("kill");

    // The other node's users never notice: every request answers, from their node, with their session, while the
    // killed node restarts and comes back.
    let mut rounds = 0;
    let back = tokio::time::Instant::now() + T;
    loop {
        for (i, (b, node)) in users.iter_mut().enumerate().filter(|(_, (_, n))| *n != victim) {
            let r = b.get("/api/whoami").await.expect("whoami");
            assert_eq!((r.status, r.json()["node"].clone()), (200, json!(node)), "user{i} never notices");
        }
        rounds += 1;
        let o = tp.app("teamboard").await;
        let r = &replicas(&o)[ordinal];
        if r["pid"].as_u64() != Some(pid as u64) && r["ready"] == true && rounds >= 3 {
            break;
        }
        assert!(tokio::time::Instant::now() < back, "the killed node came back");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    // The killed node's users move: their session died with the node, they sign in once more and then stay.
    let mut moved = 0;
    for (i, (b, node)) in users.iter_mut().enumerate().filter(|(_, (_, n))| *n == victim) {
        let r = b.get("/api/whoami").await.expect("whoami");
        assert_eq!(r.status, 401, "user{i}'s session was on the killed node: {}", r.text());
        let now = login(b, &format!("user{i}")).await;
        for _ in 0..3 {
            let r = b.get("/api/whoami").await.expect("whoami");
            assert_eq!((r.status, r.json()["node"].clone()), (200, json!(now)), "user{i} stays after moving");
        }
        *node = now;
        moved += 1;
    }
    assert!(moved >= 1);
    tp.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn an_upgrade_under_load_loses_no_write_and_restarts_and_volume_sync_keep_every_index() {
    if !heavy("PostgreSQL") {
        return;
    }
    let tp = TestPlane::start().await;
    let lb = free_port();
    tp.apply(&stack_yaml(lb, "v1"));
    let o = stack_ready(&tp, "v1").await;
    let url = db_url(&tp).await;

    // Some history: a customer, accounts, an issue with a comment, an attachment and time logged (Tempo's example:
    // 8 h spent, 7 h billable; plus 2 h of training that is never billable).
    let mut admin = Browser::new(node_port(&o, 0));
    login(&mut admin, "paul").await;
    let ok = |r: Result<capstan_e2e::web::Reply, String>, code: u16| {
        let r = r.expect("answer");
        assert_eq!(r.status, code, "{}", r.text());
        r
    };
    ok(admin.post_json("/api/customers", &json!({"key": "SOY", "name": "Soylent Corp"})).await, 204);
    let bil = json!({"key": "SOYBIL", "name": "Soylent billable", "customer": "SOY", "billable": true});
    ok(admin.post_json("/api/accounts", &bil).await, 204);
    let trn = json!({"key": "SOYTRN", "name": "Soylent training", "customer": "SOY", "billable": false});
    ok(admin.post_json("/api/accounts", &trn).await, 204);
    let issue = ok(admin.post_json("/api/issues", &json!({"title": "Soylent Green formula"})).await, 201);
    let id = issue.json()["issue"]["id"].as_i64().expect("id");
    ok(
        admin.post_json(&format!("/api/issues/{id}/comments"), &json!({"body": "plankton supply is dwindling"})).await,
        201,
    );
    let wl = json!({"account": "SOYBIL", "day": "2026-04-14", "hours": 8, "billableHours": 7});
    ok(admin.post_json(&format!("/api/issues/{id}/worklogs"), &wl).await, 201);
    let wl = json!({"account": "SOYTRN", "day": "2026-04-15", "hours": 2, "billableHours": 1});
    let refused = ok(admin.post_json(&format!("/api/issues/{id}/worklogs"), &wl).await, 201);
    assert_eq!(refused.json()["billableSeconds"], 3600, "an explicit billable time is kept");
    let wl = json!({"account": "SOYTRN", "day": "2026-04-16", "hours": 2});
    ok(admin.post_json(&format!("/api/issues/{id}/worklogs"), &wl).await, 201);
    let wl = json!({"account": "SOYBIL", "day": "2026-05-01", "hours": 3, "billableHours": 4});
    let too_much = ok(admin.post_json(&format!("/api/issues/{id}/worklogs"), &wl).await, 400);
    assert!(too_much.text().contains("billable time"), "{}", too_much.text());
    let report = ok(admin.get("/api/reports/monthly?customer=SOY&month=2026-04").await, 200).json();
    assert_eq!(
        report["total"],
        json!({"timeSpentSeconds": 43200, "billableSeconds": 28800, "nonBillableSeconds": 14400})
    );
    let csv = ok(admin.get("/api/reports/monthly?customer=SOY&month=2026-04&format=csv").await, 200).text();
    assert!(csv.contains("SOY,2026-04,SOYBIL,1,Soylent Green formula,8.00,7.00,1.00"), "{csv}");
    let file = payload();
    let up =
        admin.send("POST", &format!("/api/issues/{id}/attachments?filename=formula.bin"), None, file.clone()).await;
    let att = ok(up, 201).json()["id"].as_str().expect("id").to_string();
    let token =
        ok(admin.send("POST", "/api/tokens", None, "").await, 201).json()["token"].as_str().expect("token").to_string();

    // Load through the balancer: writers and readers with a personal access token (scripts do not hold sessions),
    // before, during and after the rolling upgrade v1 -> v2.
    let stop = Arc::new(tokio::sync::Notify::new());
    let done = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let mut tasks = Vec::new();
    for w in 0..6 {
        let mut b = Browser::new(lb);
        b.bearer = Some(token.clone());
        let done = done.clone();
        tasks.push(tokio::spawn(async move {
            let (mut acked, mut failed, mut versions) = (Vec::new(), Vec::new(), BTreeMap::<String, usize>::new());
            let mut n = 0;
            while !done.load(std::sync::atomic::Ordering::SeqCst) {
                let (path, write) = if w < 4 { ("/api/issues", true) } else { ("/api/whoami", false) };
                let r = if write {
                    b.post_json(path, &json!({"title": format!("load w{w} n{n}"), "body": "under load"})).await
                } else {
                    b.get(path).await
                };
                match r {
                    Ok(r) if (200..300).contains(&r.status) => {
                        let j = r.json();
                        if write {
                            acked.push(j["issue"]["id"].as_i64().unwrap_or(-1));
                        } else {
                            *versions.entry(j["version"].as_str().unwrap_or("?").to_string()).or_default() += 1;
                        }
                    }
                    Ok(r) => failed.push(format!("{path} -> {} {}", r.status, r.text())),
                    Err(e) => failed.push(format!("{path} -> {e}")),
                }
                n += 1;
                tokio::time::sleep(Duration::from_millis(15)).await;
            }
            (acked, failed, versions)
        }));
    }
    tokio::time::sleep(Duration::from_secs(2)).await;
    tp.apply(&stack_yaml(lb, "v2"));
    let o = stack_ready(&tp, "v2").await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    done.store(true, std::sync::atomic::Ordering::SeqCst);
    stop.notify_waiters();
    let (mut acked, mut failed, mut versions) = (Vec::new(), Vec::new(), BTreeMap::<String, usize>::new());
    for t in tasks {
        let (a, f, v) = t.await.expect("load task");
        acked.extend(a);
        failed.extend(f);
        for (k, n) in v {
            *versions.entry(k).or_default() += n;
        }
    }
    assert!(
        failed.is_empty(),
        "{} failed requests during the upgrade, e.g. {:?}",
        failed.len(),
        &failed[..failed.len().min(5)]
    );
    assert!(acked.len() > 100, "the load ran: {} writes", acked.len());
    assert!(
        versions.get("v1").copied().unwrap_or(0) > 0 && versions.get("v2").copied().unwrap_or(0) > 0,
        "{versions:?}"
    );
    let ids = acked.iter().map(|i| i.to_string()).collect::<Vec<_>>().join(",");
    let found = psql(&url, &format!("select count(*) from issues where id in ({ids}) and body = 'under load'"));
    assert_eq!(found, acked.len().to_string(), "every acknowledged write is in the database");
    let (p0, p1) = (node_port(&o, 0), node_port(&o, 1));
    for p in [p0, p1] {
        assert_eq!(status_of(p).await["version"], "v2");
    }
    let (_, page) = http_get(lb, "/login").await.expect("page");
    assert!(page.contains("Teamboard v2"), "the version shows in the pages");

    // Capstan stopped and started again: rows, attachments and both indexes are still there.
    let issues = psql(&url, "select count(*) from issues");
    let total: u64 = issues.parse().expect("count");
    eventually("both indexes caught up", T, || async {
        let (a, b) = (status_of(p0).await, status_of(p1).await);
        (a["index"]["documents"] == total && b["index"]["documents"] == total).then_some(())
    })
    .await;
    let tp = tp.restart().await;
    let o = stack_ready(&tp, "v2").await;
    let (p0, p1) = (node_port(&o, 0), node_port(&o, 1));
    // The nodes are Ready only once their database answers.
    assert_eq!(psql(&url, "select count(*) from issues"), issues);
    for p in [p0, p1] {
        let s = eventually("node serves", T, || async {
            let s = status_of(p).await;
            (s["state"] == "RUNNING").then_some(s)
        })
        .await;
        assert_eq!(s["index"]["origin"], "opened", "the index was kept, not rebuilt: {s}");
        assert_eq!(s["index"]["documents"], total, "{s}");
    }
    let mut reader = Browser::new(p1);
    login(&mut reader, "paul").await;
    let down = reader.get(&format!("/api/attachments/{att}")).await.expect("download");
    assert!(down.status == 200 && down.body == file, "the attachment survived the restart");
    let hits = reader.get("/api/search?q=plankton").await.expect("search").json();
    assert_eq!(hits["items"][0]["id"], id, "comments are indexed: {hits}");

    // Node 1 loses its index; `capstan volume sync` copies node 0's in place of a full reindex.
    let index = tp.dir.path().join("volumes/default/teamboard/index/replica-1/index");
    assert!(index.join("meta.json").exists(), "the index lives in the replica volume");
    std::fs::remove_dir_all(&index).expect("remove the index");
    let out = Command::new(bin("capstan-e2e-cli"))
        .args(["volume", "sync", "teamboard", "--volume", "index", "--from", "0", "--to", "1"])
        .env("CAPSTAN_SERVER", tp.plane().url())
        .env("CAPSTAN_TOKEN", tp.plane().token())
        .output()
        .expect("cli runs");
    assert!(out.status.success(), "{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    let o = stack_ready(&tp, "v2").await;
    let p1 = node_port(&o, 1);
    let s = eventually("node 1 serves again", T, || async {
        let s = status_of(p1).await;
        (s["state"] == "RUNNING").then_some(s)
    })
    .await;
    assert_eq!(s["index"]["origin"], "opened", "node 1 opened the synced index instead of rebuilding: {s}");
    assert_eq!(s["index"]["documents"], total, "{s}");
    let mut b = Browser::new(p1);
    login(&mut b, "paul").await;
    let hits = b.get("/api/search?q=%22load%20w0%20n1%22").await.expect("search").json();
    assert!(hits["items"].as_array().is_some_and(|a| !a.is_empty()), "node 1 finds load issues: {hits}");
    tp.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn in_a_real_browser_a_user_signs_in_and_sees_another_nodes_change_live() {
    if !heavy("PostgreSQL and Chromium") {
        return;
    }
    let tp = TestPlane::start().await;
    let lb = free_port();
    tp.apply(&stack_yaml(lb, "v1"));
    let o = stack_ready(&tp, "v1").await;
    let mut page = capstan_e2e::chromium::Chromium::launch().await;

    // Sign in through the balancer with the form, as a person would.
    page.navigate(&format!("http://127.0.0.1:{lb}/")).await;
    page.wait_for("the sign-in form", "location.pathname === '/login' && !!document.querySelector('input[name=user]')")
        .await;
    page.eval("document.querySelector('input[name=user]').value = 'carol'; document.querySelector('form').submit(); 1")
        .await;
    page.wait_for("the issue list", "location.pathname === '/' && document.body.dataset.signedIn === '1'").await;
    assert_eq!(page.eval("document.getElementById('version').textContent").await, "v1");
    let node = page.eval("document.getElementById('node').textContent").await;
    let node = node.as_str().expect("the header names the node").to_string();

    // The page's script opened the websocket to the same node (the balancer's cookie took it there).
    let live = page.wait_for("the websocket's hello", "document.body.dataset.liveNode").await;
    assert_eq!(live, node.as_str(), "the websocket reached the node that served the page");

    // Someone on the other node creates an issue: it appears on carol's page at once, without a reload.
    let other = if node == "teamboard-0" { 1 } else { 0 };
    let mut dave = Browser::new(node_port(&o, other));
    assert_ne!(login(&mut dave, "dave").await, node);
    let r = dave.post_json("/api/issues", &json!({"title": "Hull breach on deck 7"})).await.expect("create");
    assert_eq!(r.status, 201, "{}", r.text());
    let toast = page
        .wait_for("the live update", "(document.getElementById('live').textContent.includes('Hull breach on deck 7') && document.getElementById('live').textContent)")
        .await;
    assert!(toast.as_str().unwrap_or("").contains("by dave"), "{toast}");

    // A form post from the page: a comment, then the issue page shows it.
    let id = r.json()["issue"]["id"].as_i64().expect("id");
    page.navigate(&format!("http://127.0.0.1:{lb}/issues/{id}")).await;
    page.wait_for("the issue page", "!!document.querySelector('textarea[name=body]')").await;
    page.eval("document.querySelector('textarea[name=body]').value = 'Sealed <b>by</b> carol'; document.querySelector('textarea[name=body]').form.submit(); 1").await;
    let shown = page
        .wait_for(
            "the comment",
            "document.body.innerText.includes('Sealed <b>by</b> carol') && document.body.innerText",
        )
        .await;
    assert!(
        shown.as_str().is_some_and(|t| t.contains("Hull breach on deck 7")),
        "markup in a comment is shown as text"
    );
    tp.stop().await;
}
