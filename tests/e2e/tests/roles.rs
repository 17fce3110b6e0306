//! Identities and roles from the outside: named tokens (shown once, expiring, revoked), every route of the router
//! checked for every role and binding, Secret values kept from those who may not read them.

use std::time::Duration;

use capstan_api::access::{Rule, Scope, Verb};
use capstan_api::{Client, ClientError};
use capstan_e2e::*;
use hyper::Method;
use serde_json::{json, Value};

const SECRET_VALUE: &str = "t0p-s3cr3t-9931";

fn text(o: &std::process::Output) -> String {
    format!("{}{}", String::from_utf8_lossy(&o.stdout), String::from_utf8_lossy(&o.stderr))
}

/// A named token made through the API by the administrator.
async fn token(tp: &TestPlane, name: &str, role: &str, ns: Option<&str>) -> Client {
    let made = tp
        .client
        .post("/api/v1/tokens", json!({"name": name, "role": role, "namespace": ns}))
        .await
        .unwrap_or_else(|e| panic!("token {name}: {e}"));
    Client::new(tp.plane().url(), made["token"].as_str().expect("the token is shown"))
}

/// Who may call a route, written here apart from the router: the router's own table must agree with it.
fn expected_rule(method: &Method, path: &str) -> Option<Rule> {
    use Scope::{All, Each, Namespace};
    use Verb::{Admin, Read, Write};
    let needs = Rule::Needs;
    let m = method.as_str();
    Some(match (m, path) {
        (_, "/healthz" | "/metrics" | "/sd/prometheus" | "/version" | "/hooks/{ns}/{name}") => Rule::Public,
        // The dashboard: its sign-in and assets are public, the rest its session cookie's.
        (_, "/ui/login" | "/ui/logout" | "/ui/assets/{file}") => Rule::Public,
        (_, p) if p == "/ui" || p.starts_with("/ui/") => Rule::Session,
        ("POST", "/api/v1/apply") => needs(Write, Each),
        ("GET", "/api/v1/watch" | "/api/v1/events" | "/api/v1/{plural}" | "/api/v1/incidents" | "/api/v1/whoami") => {
            needs(Read, Each)
        }
        ("POST", "/api/v1/shutdown") => needs(Admin, All),
        (_, "/api/v1/tokens" | "/api/v1/tokens/{name}" | "/api/v1/audit" | "/api/v1/encryption/rotate") => {
            needs(Admin, All)
        }
        // Cluster-scoped objects (ClusterIssuer): a binding to every namespace.
        ("GET", "/api/v1/{plural}/{name}" | "/api/v1/{plural}/{name}/events") => needs(Read, All),
        ("DELETE", "/api/v1/{plural}/{name}") => needs(Write, All),
        ("GET", p) if p.starts_with("/api/v1/namespaces/") => needs(Read, Namespace),
        ("DELETE", "/api/v1/namespaces/{ns}/{plural}/{name}") => needs(Write, Namespace),
        ("POST", "/api/v1/namespaces/{ns}/databases/{name}/restore") => needs(Admin, Namespace),
        ("POST", p) if p.starts_with("/api/v1/namespaces/") => needs(Write, Namespace),
        ("POST", p) if p.starts_with("/api/v1/incidents/") => needs(Write, Each),
        (_, p) if p.starts_with("/prometheus/") => needs(Read, All),
        _ => return None,
    })
}

/// What a role includes, written out as the documentation states it.
fn role_includes(role: &str, verb: Verb) -> bool {
    match verb {
        Verb::Read => true,
        Verb::Write => matches!(role, "deployer" | "admin"),
        Verb::ReadSecrets => matches!(role, "secrets-reader" | "admin"),
        Verb::Admin => role == "admin",
    }
}

/// A concrete path for a route pattern, in namespace `ns`.
fn concrete(pattern: &str, ns: &str) -> String {
    pattern
        .replace("{ns}", ns)
        .replace("{plural}", "apps")
        .replace("{name}", "nothing-here")
        .replace("{volume}", "data")
        .replace("{id}", "999999")
}

/// A body that no handler accepts, so that a request let through stops at its extractor (or finds nothing to work
/// on) and changes nothing.
fn refused_body(pattern: &str) -> Option<Value> {
    Some(match pattern {
        "/api/v1/shutdown" => json!({"keepWorkloads": "not a boolean"}),
        "/api/v1/apply" => json!({"objects": "not a list"}),
        "/api/v1/tokens" => json!({"name": 5}),
        p if p.ends_with("/rollback") => json!({"toRevision": 5}),
        p if p.ends_with("/scale") => json!({"replicas": "many"}),
        p if p.ends_with("/sync") => json!({"from": "x"}),
        p if p.ends_with("/restore") => json!({"file": 5}),
        p if p.starts_with("/api/v1/incidents/") => json!({"by": 5}),
        _ => json!({}),
    })
}

async fn status_of(client: &Client, method: &Method, path: &str, body: Option<Value>) -> u16 {
    if path.starts_with("/api/v1/watch") {
        return match client.stream(path).await {
            Ok(_) => 200,
            Err(e) => e.status().map_or(0, |s| s.as_u16()),
        };
    }
    match client.request(method.clone(), path, body).await {
        Ok(_) | Err(ClientError::Protocol(_)) => 200,
        Err(e) => e.status().map_or_else(|| panic!("{method} {path}: {e}"), |s| s.as_u16()),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_route_is_checked_for_every_role_and_namespace() {
    let tp = TestPlane::start().await;
    let routes = capstan_api::server::routes();
    let table = routes.table().to_vec();
    assert!(table.len() > 40, "the table holds the whole router: {}", table.len());
    for r in &table {
        let expected = expected_rule(&r.method, &r.path).unwrap_or_else(|| {
            panic!("{} {} has no expected rule here: add it, with who may call it", r.method, r.path)
        });
        assert_eq!(r.rule, expected, "{} {}", r.method, r.path);
    }

    let grants: Vec<(&str, Option<&str>, Client)> = vec![
        ("viewer", None, token(&tp, "v-all", "viewer", None).await),
        ("viewer", Some("team-a"), token(&tp, "v-a", "viewer", Some("team-a")).await),
        ("deployer", Some("team-a"), token(&tp, "d-a", "deployer", Some("team-a")).await),
        ("deployer", None, token(&tp, "d-all", "deployer", None).await),
        ("secrets-reader", Some("team-a"), token(&tp, "s-a", "secrets-reader", Some("team-a")).await),
        ("admin", Some("team-a"), token(&tp, "a-a", "admin", Some("team-a")).await),
        ("admin", None, token(&tp, "a-all", "admin", None).await),
    ];
    let anonymous = Client::new(tp.plane().url(), "");
    let mut checked = 0;
    for r in &table {
        for ns in ["team-a", "team-b"] {
            if ns == "team-b" && !r.path.contains("{ns}") {
                continue;
            }
            let path = concrete(&r.path, ns);
            let body = (r.method == Method::POST).then(|| refused_body(&r.path)).flatten();
            let anon = status_of(&anonymous, &r.method, &path, body.clone()).await;
            match r.rule {
                Rule::Public => assert!(anon != 401 && anon != 403, "{} {path} is public: {anon}", r.method),
                // Without a session cookie: a page goes to the sign-in (followed to it), the rest 401.
                Rule::Session => {
                    assert!(matches!(anon, 200 | 303 | 401), "{} {path} without a session: {anon}", r.method)
                }
                Rule::Needs(..) => assert_eq!(anon, 401, "{} {path} without a token", r.method),
            }
            for (role, bound, client) in &grants {
                let got = status_of(client, &r.method, &path, body.clone()).await;
                if r.rule == Rule::Session {
                    // A bearer token opens no session: the answer is the one without a token.
                    assert_eq!(got, anon, "{role}: {} {path} with a bearer token and no session", r.method);
                    checked += 1;
                    continue;
                }
                let allowed = match r.rule {
                    Rule::Public | Rule::Session => true,
                    Rule::Needs(verb, scope) => {
                        let in_scope = match (scope, bound) {
                            (_, None) => true,
                            (Scope::Namespace, Some(b)) => *b == ns,
                            (Scope::Each, Some(_)) => true,
                            (Scope::All, Some(_)) => false,
                        };
                        in_scope && role_includes(role, verb)
                    }
                };
                let who = format!("{role} in {}", bound.unwrap_or("every namespace"));
                if allowed {
                    assert!(got != 401 && got != 403, "{who}: {} {path} should pass: {got}", r.method);
                } else {
                    assert_eq!(got, 403, "{who}: {} {path} should be refused", r.method);
                }
                checked += 1;
            }
        }
    }
    assert!(checked > 300, "{checked}");
    // The plane is still up: nothing the matrix sent shut it down or changed it.
    tp.client.get("/api/v1/apps").await.expect("still serving");
    tp.stop().await;
}

#[test]
fn the_roles_render_as_cluster_roles() {
    let out = std::process::Command::new(bin("capstan-e2e-cli"))
        .args(["render", "--target", "kubernetes", "--rbac", "-o", "json"])
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", text(&out));
    let objects: Vec<Value> = serde_json::from_slice(&out.stdout).unwrap();
    let names: Vec<&str> = objects.iter().filter_map(|o| o["metadata"]["name"].as_str()).collect();
    assert_eq!(names, ["capstan-viewer", "capstan-deployer", "capstan-secrets-reader", "capstan-admin"]);
    assert!(objects.iter().all(|o| o["kind"] == "ClusterRole"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn named_tokens_work_in_their_namespace_keep_secrets_and_stop_when_revoked() {
    let tp = TestPlane::start().await;
    let dir = tp.dir.path().to_path_buf();
    let secret = |ns: &str| {
        format!(
            "apiVersion: capstan.dev/v1alpha1\nkind: Secret\nmetadata: {{name: creds, namespace: {ns}}}\nspec:\n  stringData: {{password: {SECRET_VALUE}}}\n"
        )
    };
    tp.apply(&format!("{}---\n{}", secret("team-a"), secret("team-b")));

    // Made by the CLI: the token alone on stdout, shown once.
    let out = tp.cli(&["token", "create", "alice", "--role", "deployer", "--namespace", "team-a", "--ttl", "30d"]);
    assert!(out.status.success(), "{}", text(&out));
    let alice_token = String::from_utf8_lossy(&out.stdout).trim().to_string();
    assert!(alice_token.starts_with("cst_"), "{}", text(&out));
    assert!(String::from_utf8_lossy(&out.stderr).contains("shown this once"), "{}", text(&out));
    let listed = tp.cli(&["token", "list"]);
    let listing = text(&listed);
    assert!(listing.contains("alice") && listing.contains("deployer") && listing.contains("team-a"), "{listing}");
    assert!(!listing.contains(&alice_token), "the list never shows a token");
    let store_bytes = std::fs::read(dir.join("state.redb")).unwrap();
    assert!(!contains(&store_bytes, alice_token.as_bytes()), "only a hash is stored");

    let alice = Client::new(tp.plane().url(), &alice_token);
    let me = alice.get("/api/v1/whoami").await.unwrap();
    assert_eq!(
        (me["user"].as_str(), me["role"].as_str(), me["namespace"].as_str()),
        (Some("alice"), Some("deployer"), Some("team-a"))
    );

    // A deployer sees Secrets without their values, and cannot apply them back as they were shown.
    let shown = alice.get("/api/v1/namespaces/team-a/secrets/creds").await.unwrap();
    assert!(!shown.to_string().contains(SECRET_VALUE), "{shown}");
    assert!(shown["metadata"]["annotations"]["capstan.dev/redacted"].as_str().unwrap().contains("secrets-reader"));
    let back = alice.post("/api/v1/apply", json!({"objects": [shown]})).await.unwrap_err();
    assert_eq!(back.status().map(|s| s.as_u16()), Some(400), "{back}");
    // Lists keep to its namespace and also hide values.
    let all = alice.get("/api/v1/secrets").await.unwrap();
    let items = all["items"].as_array().unwrap();
    assert_eq!(items.len(), 1, "only team-a's: {all}");
    assert!(!all.to_string().contains(SECRET_VALUE));
    let other = alice.get("/api/v1/secrets?namespace=team-b").await.unwrap_err();
    assert_eq!(other.status().map(|s| s.as_u16()), Some(403));
    // Events too: another namespace's are neither listed nor given.
    tp.plane()
        .store()
        .record_event(
            &capstan_model::ObjectKey::new("Secret", "team-b", "creds"),
            capstan_model::EventType::Normal,
            "Made",
            "b",
        )
        .unwrap();
    tp.plane()
        .store()
        .record_event(
            &capstan_model::ObjectKey::new("Secret", "team-a", "creds"),
            capstan_model::EventType::Normal,
            "Made",
            "a",
        )
        .unwrap();
    let events = alice.get("/api/v1/events").await.unwrap();
    let seen: Vec<&str> =
        events["items"].as_array().unwrap().iter().filter_map(|e| e["involvedObject"]["namespace"].as_str()).collect();
    assert!(seen.contains(&"team-a") && !seen.contains(&"team-b"), "{events}");
    let refused = alice.get("/api/v1/events?namespace=team-b").await.unwrap_err();
    assert_eq!(refused.status().map(|s| s.as_u16()), Some(403));
    let refused = alice.get("/api/v1/namespaces/team-b/secrets/creds/events").await.unwrap_err();
    assert_eq!(refused.status().map(|s| s.as_u16()), Some(403));
    // The watch stream redacts too.
    let mut watch = alice.stream("/api/v1/watch?kind=secrets").await.unwrap();
    // Another namespace's change first: the watch of a team-a token never carries it.
    tp.apply(&secret("team-b").replace("creds", "other-team"));
    tp.apply(&secret("team-a").replace("creds", "creds2"));
    let ev = tokio::time::timeout(Duration::from_secs(10), watch.recv()).await.expect("an event").expect("open");
    assert_eq!(ev["object"]["metadata"]["name"], "creds2", "team-b's Secret is not in team-a's watch: {ev}");
    assert_eq!(ev["object"]["metadata"]["namespace"], "team-a");
    assert!(!ev.to_string().contains(SECRET_VALUE), "{ev}");

    // It applies in team-a, is refused in team-b with the verb and the resource named.
    let app = |ns: &str| {
        json!({"apiVersion": "capstan.dev/v1alpha1", "kind": "Secret",
               "metadata": {"name": "made-by-alice", "namespace": ns}, "spec": {"stringData": {"k": "v"}}})
    };
    alice.post("/api/v1/apply", json!({"objects": [app("team-a")]})).await.expect("in its namespace");
    let refused = alice.post("/api/v1/apply", json!({"objects": [app("team-b")]})).await.unwrap_err();
    assert_eq!(refused.status().map(|s| s.as_u16()), Some(403));
    assert!(
        refused
            .to_string()
            .contains("alice (deployer in team-a) may not apply Secret made-by-alice in namespace team-b"),
        "{refused}"
    );
    let refused = alice.delete("/api/v1/namespaces/team-b/secrets/creds").await.unwrap_err();
    assert!(refused.to_string().contains("may not delete Secret creds in namespace team-b"), "{refused}");
    let refused = alice.post("/api/v1/shutdown", json!({})).await.unwrap_err();
    assert_eq!(refused.status().map(|s| s.as_u16()), Some(403));

    // A secrets-reader of team-a reads the values there, decrypted.
    let reader = token(&tp, "auditor", "secrets-reader", Some("team-a")).await;
    let shown = reader.get("/api/v1/namespaces/team-a/secrets/creds").await.unwrap();
    assert_eq!(shown["spec"]["stringData"]["password"], SECRET_VALUE);
    let hidden = reader.get("/api/v1/namespaces/team-b/secrets/creds").await.unwrap_err();
    assert_eq!(hidden.status().map(|s| s.as_u16()), Some(403));
    // However the kind is spelt, a read of Secret values is in the audit log.
    reader.get("/api/v1/namespaces/team-a/Secret/creds").await.unwrap();
    let read = tp.client.get("/api/v1/audit?user=auditor").await.unwrap();
    let reads = read["items"].as_array().unwrap();
    assert!(reads.iter().any(|l| l["verb"] == "get" && l["kind"] == "Secret" && l["result"] == "allowed"), "{reads:?}");

    // The audit log names who did what.
    let lines = tp.client.get("/api/v1/audit?user=alice").await.unwrap();
    let lines = lines["items"].as_array().unwrap();
    let verbs: Vec<(&str, &str)> =
        lines.iter().map(|l| (l["verb"].as_str().unwrap(), l["result"].as_str().unwrap())).collect();
    assert!(verbs.contains(&("apply", "allowed")) && verbs.contains(&("apply", "denied")), "{verbs:?}");
    assert!(lines.iter().all(|l| l["role"] == "deployer in team-a"), "{lines:?}");
    let audit_text = std::fs::read_to_string(dir.join("audit/audit.log")).unwrap();
    assert!(!audit_text.contains(SECRET_VALUE) && !audit_text.contains(&alice_token));

    // Revoked: 401, the same answer as a token never made; a stream it opened ends with a 401 record.
    let mut open_watch = alice.stream("/api/v1/watch").await.unwrap();
    let out = tp.cli(&["token", "revoke", "alice"]);
    assert!(out.status.success(), "{}", text(&out));
    let gone = alice.get("/api/v1/apps").await.unwrap_err();
    let never = Client::new(tp.plane().url(), "cst_0123").get("/api/v1/apps").await.unwrap_err();
    assert_eq!(gone.status().map(|s| s.as_u16()), Some(401));
    assert_eq!(gone.to_string(), never.to_string());
    let last = loop {
        let ev = tokio::time::timeout(Duration::from_secs(10), open_watch.recv()).await.expect("the stream ends");
        match ev {
            Some(ev) if ev["type"] == "ERROR" => break ev,
            Some(_) => continue,
            None => panic!("the stream ended without saying why"),
        }
    };
    assert_eq!(last["object"]["code"], 401, "{last}");
    assert!(text(&tp.cli(&["token", "list"])).contains("revoked"));

    // Tokens survive a restart; an expired one is refused.
    let short =
        tp.client.post("/api/v1/tokens", json!({"name": "brief", "role": "viewer", "ttl": "1s"})).await.unwrap();
    let brief = short["token"].as_str().unwrap().to_string();
    let tp = tp.restart().await;
    let reader = Client::new(tp.plane().url(), reader_token(&reader));
    assert!(reader.get("/api/v1/whoami").await.is_ok(), "kept across a restart");
    tokio::time::sleep(Duration::from_millis(1100)).await;
    let expired = Client::new(tp.plane().url(), brief).get("/api/v1/apps").await.unwrap_err();
    assert_eq!(expired.status().map(|s| s.as_u16()), Some(401));
    tp.stop().await;
}

fn reader_token(c: &Client) -> String {
    c.token().to_string()
}

fn contains(hay: &[u8], needle: &[u8]) -> bool {
    hay.windows(needle.len()).any(|w| w == needle)
}

/// Incidents belong to their EscalationPolicy's namespace: a namespaced token lists only those, acknowledges and
/// resolves only those (another namespace's is a 403 naming it, not a 404 that would hide nothing), and a viewer
/// acknowledges none.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn incidents_are_listed_and_acknowledged_only_in_a_tokens_namespaces() {
    let tp = TestPlane::start().await;
    let team = |t: &str| {
        format!(
            "apiVersion: capstan.dev/v1alpha1
kind: AlertRule
metadata: {{name: always-{t}}}
spec: {{alert: Always{t}, expr: vector(1), labels: {{team: {t}}}, interval: 200ms}}
---
apiVersion: capstan.dev/v1alpha1
kind: EscalationPolicy
metadata: {{name: oncall, namespace: team-{t}}}
spec:
  match: {{team: {t}}}
  levels: [{{targets: [{{command: {{command: [/bin/true]}}}}]}}]
---
"
        )
    };
    tp.apply(&format!("{}{}", team("a"), team("b")));
    let open = eventually("both teams have an incident", Duration::from_secs(30), || async {
        let all = tp.client.get("/api/v1/incidents").await.ok()?;
        let items = all["items"].as_array()?.clone();
        (items.len() == 2).then_some(items)
    })
    .await;
    let id_of = |ns: &str| {
        open.iter()
            .find(|i| i["policy"] == format!("{ns}/oncall"))
            .and_then(|i| i["id"].as_str())
            .unwrap_or_else(|| panic!("an incident of {ns}: {open:?}"))
            .to_string()
    };
    let (a, b) = (id_of("team-a"), id_of("team-b"));

    let alice = token(&tp, "alice", "deployer", Some("team-a")).await;
    let listed = alice.get("/api/v1/incidents?all=true").await.unwrap();
    let ids: Vec<&str> = listed["items"].as_array().unwrap().iter().filter_map(|i| i["id"].as_str()).collect();
    assert_eq!(ids, vec![a.as_str()], "only team-a's: {listed}");

    for verb in ["acknowledge", "resolve"] {
        let refused = alice.post(&format!("/api/v1/incidents/{b}/{verb}"), json!({})).await.unwrap_err();
        assert_eq!(refused.status().map(|s| s.as_u16()), Some(403), "{refused}");
        assert!(refused.to_string().contains(&format!("{verb} incident {b} in namespace team-b")), "{refused}");
    }
    let viewer = token(&tp, "vic", "viewer", Some("team-a")).await;
    let refused = viewer.post(&format!("/api/v1/incidents/{a}/acknowledge"), json!({})).await.unwrap_err();
    assert_eq!(refused.status().map(|s| s.as_u16()), Some(403), "{refused}");

    let acked = alice.post(&format!("/api/v1/incidents/{a}/acknowledge"), json!({})).await.expect("its own");
    assert_eq!(acked["result"], "acknowledged");
    let all = tp.client.get("/api/v1/incidents?all=true").await.unwrap();
    let state_of =
        |id: &str| all["items"].as_array().unwrap().iter().find(|i| i["id"] == id).map(|i| i["state"].clone()).unwrap();
    assert_eq!(state_of(&a), "acknowledged", "{all}");
    assert_eq!(state_of(&b), "triggered", "team-b's is untouched: {all}");
    let by = all["items"].as_array().unwrap().iter().find(|i| i["id"] == a.as_str()).unwrap();
    assert_eq!(by["acknowledgedBy"], "alice", "the token's name is who acknowledged: {by}");
    tp.stop().await;
}
