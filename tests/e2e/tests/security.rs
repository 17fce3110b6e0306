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

/// `capstan up` in the background with its own log (stderr, at debug) in `log`.
fn up_logged(
    data: &std::path::Path,
    key: &std::path::Path,
    log: &std::path::Path,
    manifests: &std::path::Path,
) -> Guarded {
    let child = std::process::Command::new(bin("capstan-e2e-cli"))
        .args(["up", "--listen", "127.0.0.1:0", "--encryption-key-file"])
        .arg(key)
        .arg(manifests)
        .env("CAPSTAN_DATA", data)
        .env("RUST_LOG", "debug")
        .stdout(std::fs::File::create(log.with_extension("out")).unwrap())
        .stderr(std::fs::File::create(log).unwrap())
        .spawn()
        .expect("start capstan up");
    Guarded(child)
}

fn capstan_at(data: &std::path::Path, args: &[&str]) -> std::process::Output {
    cli_at(data, args)
}

/// Secrets at rest: an old store is encrypted on its first start, no file Capstan writes holds a Secret value (the
/// store, runtime records, its own log, events, describe, the audit log), a rotation leaves the Apps running, and
/// a wrong key stops the start with the store byte-for-byte unchanged.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn secrets_are_encrypted_at_rest_rotated_while_apps_run_and_a_wrong_key_changes_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let key = dir.path().join("keys/capstan.key");
    let log = dir.path().join("capstan.log");
    // A store from before encryption, holding the value in the clear.
    std::fs::create_dir_all(&data).unwrap();
    {
        let old = capstan_store::Store::open(&data.join("state.redb")).unwrap();
        let s = serde_json::json!({"apiVersion": "capstan.dev/v1alpha1", "kind": "Secret",
            "metadata": {"name": "legacy", "namespace": "default"}, "spec": {"stringData": {"v": SECRET_VALUE}}});
        old.apply(vec![s]).unwrap();
    }
    assert!(!files_holding(&data, SECRET_VALUE).is_empty(), "the old store holds it in the clear");

    let manifest = dir.path().join("stack.yaml");
    let secret = format!(
        "apiVersion: capstan.dev/v1alpha1\nkind: Secret\nmetadata: {{name: creds}}\nspec:\n  stringData: {{password: {SECRET_VALUE}}}\n"
    );
    // The App's environment carries the value, as a Database's URL carries its password.
    std::fs::write(
        &manifest,
        format!("{secret}---\n{}", app_yaml("web", 1, &[("DB_PASSWORD", SECRET_VALUE)], READINESS)),
    )
    .unwrap();
    let mut up = up_logged(&data, &key, &log, &manifest);
    let pid = eventually("web Ready", T, || async {
        let out = capstan_at(&data, &["get", "app", "web", "-o", "json"]);
        let o: Value = serde_json::from_slice(&out.stdout).ok()?;
        ready(&o).then(|| replicas(&o)[0]["pid"].as_u64()).flatten()
    })
    .await;
    use std::os::unix::fs::PermissionsExt;
    assert_eq!(std::fs::metadata(&key).unwrap().permissions().mode() & 0o777, 0o600, "the key file is private");

    // Read it, describe it, list events: a secrets-reader (here the admin) sees the value, decrypted.
    let out = capstan_at(&data, &["get", "secret", "legacy", "-o", "json"]);
    assert!(text(&out).contains(SECRET_VALUE), "{}", text(&out));
    let out = capstan_at(&data, &["describe", "secret", "creds"]);
    assert!(out.status.success() && text(&out).contains("password"), "{}", text(&out));
    assert!(!text(&out).contains(SECRET_VALUE), "describe names the keys, never the values: {}", text(&out));
    let out = capstan_at(&data, &["get", "events"]);
    assert!(!text(&out).contains(SECRET_VALUE), "{}", text(&out));

    // Rotation while the App runs.
    let before_rotation = std::fs::read_to_string(&key).unwrap();
    let out = capstan_at(&data, &["secrets", "rotate-key"]);
    assert!(out.status.success() && text(&out).contains("rotated"), "{}", text(&out));
    assert_ne!(std::fs::read_to_string(&key).unwrap(), before_rotation, "a new key in the file");
    let out = capstan_at(&data, &["get", "app", "web", "-o", "json"]);
    let o: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert!(ready(&o) && replicas(&o)[0]["pid"].as_u64() == Some(pid), "the App kept running: {o}");
    let out = capstan_at(&data, &["get", "secret", "creds", "-o", "json"]);
    assert!(text(&out).contains(SECRET_VALUE), "still readable after rotation");

    let out = capstan_at(&data, &["shutdown"]);
    assert!(out.status.success(), "{}", text(&out));
    assert!(up.wait().unwrap().success());
    // Nothing Capstan wrote holds the value: the store, its records, its log, the audit log. (The replica's own
    // output is the App's business; testapp does not print its environment.)
    let mut holding = files_holding(&data, SECRET_VALUE);
    holding.extend(files_holding(&dir.path().join("keys"), SECRET_VALUE));
    holding.extend(files_holding(dir.path(), SECRET_VALUE).into_iter().filter(|f| f.ends_with(".log")));
    assert!(holding.is_empty(), "found in {holding:?}");

    // A wrong key: refused, with the store left byte-for-byte as it was.
    let bytes = std::fs::read(data.join("state.redb")).unwrap();
    let wrong = dir.path().join("wrong.key");
    std::fs::write(&wrong, capstan_store::seal::Keyring::generate().unwrap().to_text()).unwrap();
    std::fs::set_permissions(&wrong, std::fs::Permissions::from_mode(0o600)).unwrap();
    let out = std::process::Command::new(bin("capstan-e2e-cli"))
        .args(["up", "--listen", "127.0.0.1:0", "--encryption-key-file"])
        .arg(&wrong)
        .env("CAPSTAN_DATA", &data)
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(text(&out).contains("encrypted with key") && text(&out).contains("nothing was changed"), "{}", text(&out));
    assert_eq!(std::fs::read(data.join("state.redb")).unwrap(), bytes, "byte for byte");
    // The right key still opens it.
    let mut again = up_logged(&data, &key, &dir.path().join("again.log"), &manifest);
    eventually("web Ready again", T, || async {
        let out = capstan_at(&data, &["get", "app", "web", "-o", "json"]);
        let o: Value = serde_json::from_slice(&out.stdout).ok()?;
        ready(&o).then_some(())
    })
    .await;
    assert!(capstan_at(&data, &["shutdown"]).status.success());
    assert!(again.wait().unwrap().success());
}
