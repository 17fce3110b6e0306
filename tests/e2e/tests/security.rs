//! The control plane's security, from the outside: the audit log records changes, refusals and Secret reads with
//! who made them, and never a Secret value or a token.

use std::time::Duration;

use capstan_api::Client;
use capstan_e2e::*;
use serde_json::Value;

const T: Duration = Duration::from_secs(30);
const SECRET_VALUE: &str = "s3cr3t-value-4242";

fn text(o: &std::process::Output) -> String {
    format!("{}{}", String::from_utf8_lossy(&o.stdout), String::from_utf8_lossy(&o.stderr))
}

/// The audit lines `capstan audit -o json` prints, with these extra arguments.
fn audit_lines(tp: &TestPlane, args: &[&str]) -> Vec<Value> {
    let mut all = vec!["audit", "-o", "json"];
    all.extend_from_slice(args);
    let out = tp.cli(&all);
    assert!(out.status.success(), "{}", text(&out));
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{l}: {e}")))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_audit_log_records_changes_refusals_and_secret_reads_with_who_never_a_secret() {
    let tp = TestPlane::start().await;
    let dir = tp.dir.path().to_path_buf();
    let manifest = dir.join("stack.yaml");
    let secret = format!(
        "apiVersion: capstan.dev/v1alpha1\nkind: Secret\nmetadata: {{name: creds}}\nspec:\n  stringData: {{password: {SECRET_VALUE}}}\n"
    );
    std::fs::write(&manifest, format!("{secret}---\n{}", app_yaml("web", 1, &[], ""))).unwrap();

    // A change.
    let out = tp.cli(&["apply", "-f", manifest.to_str().unwrap()]);
    assert!(out.status.success(), "{}", text(&out));
    // A read of Secret values.
    tp.client.get("/api/v1/namespaces/default/secrets/creds").await.expect("the Secret");
    // A refusal: no valid token.
    let stranger = Client::new(tp.plane().url(), "not-the-token");
    assert!(stranger.get("/api/v1/apps").await.is_err());
    // A plain read is not a line.
    tp.client.get("/api/v1/apps").await.expect("apps");
    // A delete.
    let out = tp.cli(&["delete", "app", "web"]);
    assert!(out.status.success(), "{}", text(&out));

    let lines = eventually("four audit lines", T, || async {
        let l = audit_lines(&tp, &[]);
        (l.len() >= 4).then_some(l)
    })
    .await;
    let verbs: Vec<&str> = lines.iter().map(|l| l["verb"].as_str().unwrap_or("")).collect();
    assert_eq!(verbs, ["apply", "get", "list", "delete"], "{lines:#?}");
    let apply = &lines[0];
    assert_eq!(apply["user"], "admin");
    assert_eq!(apply["role"], "admin");
    assert_eq!(apply["result"], "allowed");
    assert_eq!(apply["status"], 200);
    assert!(apply["source"].as_str().unwrap_or("").starts_with("127.0.0.1:"), "{apply}");
    let objects: Vec<&str> = apply["objects"].as_array().unwrap().iter().filter_map(Value::as_str).collect();
    assert_eq!(objects, ["Secret/default/creds", "App/default/web"]);
    assert!(!apply["requestId"].as_str().unwrap_or("").is_empty());
    assert_eq!(
        (&lines[1]["kind"], &lines[1]["name"], &lines[1]["user"]),
        (&"Secret".into(), &"creds".into(), &"admin".into())
    );
    let denied = &lines[2];
    assert_eq!(
        (&denied["user"], &denied["result"], &denied["status"]),
        (&"anonymous".into(), &"denied".into(), &401.into())
    );
    assert_eq!(denied["kind"], "App");
    let delete = &lines[3];
    assert_eq!(
        (&delete["kind"], &delete["namespace"], &delete["name"]),
        (&"App".into(), &"default".into(), &"web".into())
    );

    // Filters, as the CLI gives them.
    let denied_only = audit_lines(&tp, &["--user", "anonymous"]);
    assert_eq!(denied_only.len(), 1, "{denied_only:#?}");
    let about_secrets = audit_lines(&tp, &["--kind", "secrets"]);
    assert_eq!(about_secrets.len(), 2, "the apply that wrote it and the read: {about_secrets:#?}");
    assert_eq!(audit_lines(&tp, &["--since", "1h"]).len(), lines.len(), "reading the log is not a line");
    let table = text(&tp.cli(&["audit"]));
    assert!(table.contains("USER") && table.contains("denied 401") && table.contains("App/default/web"), "{table}");

    // Never a Secret value, never the token.
    let raw = std::fs::read_to_string(dir.join(capstan_api::audit::AUDIT_FILE)).expect("the audit log");
    assert!(!raw.contains(SECRET_VALUE), "{raw}");
    assert!(!raw.contains(tp.plane().token()), "{raw}");
    assert!(!raw.contains("not-the-token"), "{raw}");
    tp.stop().await;
}
