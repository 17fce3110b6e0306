//! The dashboard from the outside, in Debian's headless Chromium: signing in with a token (the session cookie out of
//! the page's reach), an App appearing and becoming Ready without a reload, markup in an object shown as text, a
//! restart and a rollback from the App's page (audited), a viewer without those buttons and refused if it posts
//! anyway, signing out; and a post from another origin (or none) refused whatever cookie it carries.

use std::time::Duration;

use capstan_e2e::chromium::Chromium;
use capstan_e2e::*;
use serde_json::json;

const MARKUP: &str = "<img src=x onerror=\"window.pwned=1\">";

async fn sign_in(b: &mut Chromium, token: &str) {
    let js = format!(
        "document.getElementById('token').value = {}; document.querySelector('form[action=\"/ui/login\"]').submit(); 1",
        json!(token)
    );
    b.eval(&js).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_dashboard_signs_in_shows_changes_live_and_keeps_its_buttons_to_the_roles_that_may() {
    let tp = TestPlane::start().await;
    let base = tp.plane().url().to_string();
    let mut b = Chromium::launch_with(&["--ignore-certificate-errors"]).await;

    // Without a session, the sign-in; a wrong token is refused; the right one leads back to where the user was going.
    b.navigate(&format!("{base}/ui?kind=App")).await;
    b.wait_for("the sign-in page", "location.pathname === '/ui/login' && !!document.getElementById('token')").await;
    sign_in(&mut b, "cst_not-a-token").await;
    b.wait_for("the refusal", "(document.querySelector('.error') || {}).textContent?.includes('not valid')").await;
    sign_in(&mut b, tp.plane().token()).await;
    b.wait_for(
        "the overview, filtered to Apps as asked",
        "location.pathname === '/ui' && location.search === '?kind=App' && !!document.getElementById('objects')",
    )
    .await;
    assert_eq!(b.eval("document.cookie").await, json!(""), "the session cookie is HttpOnly");
    b.eval("fetch('/ui').then(r => { window.csp = r.headers.get('content-security-policy'); }); 1").await;
    let csp = b.wait_for("the page's Content-Security-Policy", "window.csp").await;
    assert!(csp.as_str().is_some_and(|c| c.starts_with("default-src 'self'")), "{csp}");

    // Live: the App appears and becomes Ready while the page stays the same page.
    b.wait_for("the live stream", "document.getElementById('live')?.textContent === 'live'").await;
    b.eval("window.marker = 42; 1").await;
    let app = app_yaml("web", 1, &[("VERSION", "1")], READINESS).replace(
        "metadata:\n  name: web\n",
        &format!("metadata:\n  name: web\n  annotations: {{note: {}}}\n", json!(MARKUP)),
    );
    tp.apply(&app);
    b.wait_for(
        "App web Ready on the page, without a reload",
        "window.marker === 42 && [...document.querySelectorAll('#objects tbody tr')]
            .some(r => r.textContent.includes('web') && r.textContent.includes('Ready'))",
    )
    .await;

    // The App's page: markup shown as text, never run.
    b.navigate(&format!("{base}/ui/apps/default/web")).await;
    b.wait_for(
        "the App's page",
        "!!document.getElementById('replicas') && document.querySelectorAll('#replicas tbody tr').length === 1",
    )
    .await;
    assert_eq!(b.eval("document.querySelectorAll('main img').length").await, json!(0));
    assert_eq!(b.eval("document.body.innerText.includes(\"<img src=x\")").await, json!(true));
    assert_eq!(b.eval("window.pwned === undefined").await, json!(true));

    // Restart from the page: answered in place, audited as the user who pressed it.
    b.wait_for("the live stream", "document.getElementById('live')?.textContent === 'live'").await;
    b.eval("window.marker = 7; document.querySelector('form[action$=\"/restart\"] button').click(); 1").await;
    b.wait_for(
        "the restart's answer",
        "document.getElementById('action-result').textContent.includes('Restart of App web')",
    )
    .await;
    let restarted = eventually("the App carries the restart", Duration::from_secs(30), || async {
        let a = tp.app("web").await;
        a["metadata"]["annotations"]["capstan.dev/restartedAt"].as_str().map(str::to_string)
    })
    .await;
    assert!(!restarted.is_empty());
    let audit = tp.client.get("/api/v1/audit?kind=App").await.expect("the audit log");
    let line = audit["items"].as_array().into_iter().flatten().find(|l| l["verb"] == "restart").cloned();
    assert!(line.as_ref().is_some_and(|l| l["user"] == "admin" && l["name"] == "web"), "{audit}");

    // A second revision shows on the page as it runs; then a rollback to the first revision, from the history.
    let first = eventually("the first revision's name", Duration::from_secs(30), || async {
        let h = tp.client.get("/api/v1/namespaces/default/apps/web/revisions").await.ok()?;
        h["items"][0]["revision"].as_str().map(str::to_string)
    })
    .await;
    let before = tp.app("web").await["status"]["revision"].as_str().unwrap_or_default().to_string();
    tp.apply(&app.replace("VERSION: \"1\"", "VERSION: \"2\""));
    let running = eventually("the App runs its new revision", Duration::from_secs(30), || async {
        let r = tp.app("web").await["status"]["revision"].as_str().unwrap_or_default().to_string();
        (r != before && !r.is_empty()).then_some(r)
    })
    .await;
    b.wait_for(
        "the new revision shown running, without a reload",
        &format!(
            "window.marker === 7 && [...document.querySelectorAll('#history tbody tr')]
                .some(r => r.textContent.includes({}) && r.textContent.includes('(running)'))",
            json!(running)
        ),
    )
    .await;
    b.eval(&format!(
        "document.querySelector('#history form[action$=\"/rollback\"] input[value={}]').form.querySelector('button').click(); 1",
        json!(first)
    ))
    .await;
    b.wait_for("the rollback's answer", "document.getElementById('action-result').textContent.includes('rolled back')")
        .await;
    eventually("the App's spec is the first revision's again", Duration::from_secs(30), || async {
        let a = tp.app("web").await;
        (a["spec"]["run"]["env"]["VERSION"] == "1").then_some(())
    })
    .await;

    // Sign out: the session is gone, the overview asks to sign in again.
    b.eval("document.querySelector('form[action=\"/ui/logout\"]').submit(); 1").await;
    b.wait_for("the sign-in page", "location.pathname === '/ui/login'").await;
    b.navigate(&format!("{base}/ui")).await;
    b.wait_for("the sign-in page again", "location.pathname === '/ui/login'").await;

    // A viewer: the same pages without the buttons, and a 403 when it posts anyway.
    let made = tp.client.post("/api/v1/tokens", json!({"name": "eve", "role": "viewer"})).await.expect("token");
    sign_in(&mut b, made["token"].as_str().expect("shown")).await;
    b.wait_for("the overview", "!!document.getElementById('objects')").await;
    b.navigate(&format!("{base}/ui/apps/default/web")).await;
    b.wait_for("the App's page", "!!document.getElementById('replicas')").await;
    assert_eq!(
        b.eval("document.querySelectorAll('form[action$=\"/restart\"], form[action$=\"/rollback\"]').length").await,
        json!(0)
    );
    assert!(b.eval("document.body.innerText.includes('eve (viewer)')").await == json!(true));
    b.eval("fetch('/ui/apps/default/web/restart', {method: 'POST', headers: {'hx-request': 'true'}}).then(r => r.status).then(s => window.status_ = s); 1").await;
    let status = b.wait_for("the viewer's post answered", "window.status_").await;
    assert_eq!(status, json!(403));
    drop(b);
    tp.stop().await;
}

/// Only a page of this server changes anything: a POST with another site's Origin, or none, is refused even with
/// a valid session cookie; so is a sign-in.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_post_from_another_origin_is_refused_whatever_cookie_it_carries() {
    let tp = TestPlane::start().await;
    tp.apply(&app_yaml("web", 1, &[], ""));
    let port: u16 = tp.plane().url().rsplit(':').next().and_then(|p| p.parse().ok()).expect("the API's port");
    let mut client = capstan_e2e::web::Browser::new(port);
    let form = format!("token={}&next=%2Fui", tp.plane().token());
    let form_type = Some("application/x-www-form-urlencoded");
    let no_origin = client.send("POST", "/ui/login", form_type, form.clone()).await.expect("answered");
    assert_eq!(no_origin.status, 403, "{}", no_origin.text());
    client.origin = Some(format!("http://127.0.0.1:{port}"));
    let signed = client.send("POST", "/ui/login", form_type, form).await.expect("answered");
    assert_eq!(signed.status, 303, "{}", signed.text());
    assert!(client.cookies.contains_key("capstan_ui"), "{:?}", client.cookies);
    let page = client.get("/ui/apps/default/web").await.expect("answered");
    assert_eq!(page.status, 200);
    for origin in [Some("https://evil.example".to_string()), None] {
        client.origin = origin.clone();
        let r = client.send("POST", "/ui/apps/default/web/restart", None, "").await.expect("answered");
        assert_eq!(r.status, 403, "{origin:?}: {}", r.text());
    }
    let a = tp.app("web").await;
    assert!(a["metadata"]["annotations"]["capstan.dev/restartedAt"].is_null(), "nothing was done");
    // The same session from this server's page passes (the control for the refusals above).
    client.origin = Some(format!("http://127.0.0.1:{port}"));
    let r = client.send("POST", "/ui/apps/default/web/restart", None, "").await.expect("answered");
    assert_eq!(r.status, 303, "{}", r.text());
    tp.stop().await;
}

/// Without a session nothing is shown: a page goes to the sign-in, its parts, the stream and actions answer 401. A
/// session bound to one namespace sees and changes only that namespace's objects (no other namespace's, no
/// cluster-scoped ones), and ends when its token is revoked.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_session_shows_only_what_its_token_may_see_and_ends_with_it() {
    let tp = TestPlane::start().await;
    let port: u16 = tp.plane().url().rsplit(':').next().and_then(|p| p.parse().ok()).expect("the API's port");
    for (ns, name) in [("team-a", "mine"), ("team-b", "theirs")] {
        tp.apply(&app_yaml(name, 1, &[], "").replace(
            &format!("metadata:\n  name: {name}\n"),
            &format!("metadata:\n  name: {name}\n  namespace: {ns}\n"),
        ));
    }
    tp.apply(
        "apiVersion: cert-manager.io/v1\nkind: ClusterIssuer\nmetadata: {name: platform-ca}\nspec: {selfSigned: {}}\n",
    );

    let mut anonymous = capstan_e2e::web::Browser::new(port);
    let page = anonymous.get("/ui/apps/team-a/mine").await.expect("answered");
    assert_eq!(page.status, 303, "a page without a session goes to the sign-in");
    for path in ["/ui/fragments/overview", "/ui/fragments/apps/team-a/mine", "/ui/stream", "/ui/session"] {
        assert_eq!(anonymous.get(path).await.expect("answered").status, 401, "{path}");
    }
    anonymous.origin = Some(format!("http://127.0.0.1:{port}"));
    let r = anonymous.send("POST", "/ui/apps/team-a/mine/restart", None, "").await.expect("answered");
    assert_eq!(r.status, 401, "an action without a session");

    let made = tp
        .client
        .post("/api/v1/tokens", json!({"name": "ann", "role": "deployer", "namespace": "team-a"}))
        .await
        .expect("token");
    let mut ann = capstan_e2e::web::Browser::new(port);
    ann.origin = Some(format!("http://127.0.0.1:{port}"));
    let form = format!("token={}", made["token"].as_str().expect("shown"));
    let signed =
        ann.send("POST", "/ui/login", Some("application/x-www-form-urlencoded"), form).await.expect("answered");
    assert_eq!(signed.status, 303);
    let overview = ann.get("/ui").await.expect("answered").text();
    assert!(overview.contains("/ui/apps/team-a/mine"), "its own App");
    assert!(
        !overview.contains("theirs") && !overview.contains("platform-ca"),
        "nothing of team-b, nothing cluster-wide"
    );
    assert_eq!(ann.get("/ui/apps/team-b/theirs").await.expect("answered").status, 404);
    let r = ann.send("POST", "/ui/apps/team-b/theirs/restart", None, "").await.expect("answered");
    assert_eq!(r.status, 403, "{}", r.text());
    let r = ann.send("POST", "/ui/apps/team-a/mine/restart", None, "").await.expect("answered");
    assert_eq!(r.status, 303, "its own App: {}", r.text());
    assert_eq!(ann.get("/ui/session").await.expect("answered").status, 204);

    // The token revoked: the session ends with it.
    tp.client.delete("/api/v1/tokens/ann").await.expect("revoked");
    assert_eq!(ann.get("/ui/fragments/overview").await.expect("answered").status, 401);
    assert_eq!(ann.get("/ui").await.expect("answered").status, 303);
    tp.stop().await;
}
