//! `capstan apply --target kubernetes` as a user runs it: the real binary, a kubeconfig, and the fake API server on
//! loopback. Lines per object, exit codes, `--wait` naming what is not ready, a conflict, `--prune`, and bad input
//! named by file and line.

use std::process::{Command, Output};

use capstan_e2e::bin;
use capstan_fake_apiserver::FakeApiServer;
use serde_json::json;

const MANIFESTS: &str = "apiVersion: capstan.dev/v1alpha1
kind: App
metadata: {name: jira, namespace: atlassian}
spec:
  replicas: 3
  run: {image: atlassian/jira-software:9.12}
  ports: [{name: http, port: 8080}]
  probes:
    readiness: {http: {path: /status, port: http}}
  expose: [{port: 443, sticky: {cookie: {name: JSESSIONID}}}]
  volumes:
    - {name: local-home, scope: replica, env: JIRA_HOME}
    - {name: shared-home, scope: shared, env: JIRA_SHARED_HOME}
  databaseRef: {name: jira-db}
---
apiVersion: capstan.dev/v1alpha1
kind: Database
metadata: {name: jira-db, namespace: atlassian}
spec: {}
";

fn capstan(dir: &std::path::Path, args: &[&str]) -> Output {
    Command::new(bin("capstan-e2e-cli"))
        .args(args)
        .arg("--kubeconfig")
        .arg(dir.join("kubeconfig"))
        .env_remove("KUBECONFIG")
        .output()
        .expect("cli runs")
}

fn text(o: &Output) -> (String, String) {
    (String::from_utf8_lossy(&o.stdout).into_owned(), String::from_utf8_lossy(&o.stderr).into_owned())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn apply_to_a_cluster_from_the_cli() {
    let fake = FakeApiServer::start_on("127.0.0.1:0", Some("token-1")).await.expect("fake");
    let dir = tempfile::tempdir().expect("tempdir");
    std::fs::write(dir.path().join("kubeconfig"), fake.kubeconfig("token-1")).expect("kubeconfig");
    let file = dir.path().join("jira.yaml");
    std::fs::write(&file, MANIFESTS).expect("manifests");
    let f = file.to_str().expect("utf-8 path");

    let first = capstan(dir.path(), &["apply", "--target", "kubernetes", "-f", f]);
    let (out, err) = text(&first);
    assert_eq!(first.status.code(), Some(0), "{out}\n{err}");
    assert!(out.contains("Namespace/atlassian created"), "{out}");
    assert!(out.contains("Secret atlassian/jira-db-credentials created (a new random password)"), "{out}");
    assert!(out.contains("StatefulSet atlassian/jira created"), "{out}");
    assert!(out.contains("HTTPRoute atlassian/jira created"), "{out}");
    let route = fake.get("gateway.networking.k8s.io", "httproutes", "atlassian", "jira").expect("the HTTPRoute");
    assert_eq!(route["spec"]["parentRefs"][0]["name"], "capstan", "the default Gateway: {route}");
    assert_eq!(route["spec"]["parentRefs"][0]["namespace"], "capstan-system");
    let sts = fake.get("apps", "statefulsets", "atlassian", "jira").expect("statefulset");
    assert_eq!(sts["spec"]["replicas"], json!(3));
    // A fixed port shared by three replicas is fine on a cluster: each pod has its own address.
    assert_eq!(sts["spec"]["template"]["spec"]["containers"][0]["ports"][0]["containerPort"], json!(8080));
    assert!(fake.get("", "configmaps", "default", "capstan-inventory-cli").is_some(), "the inventory");

    let again = capstan(dir.path(), &["apply", "--target", "kubernetes", "-f", f]);
    let (out, _) = text(&again);
    assert_eq!(again.status.code(), Some(0));
    assert!(out.contains("StatefulSet atlassian/jira unchanged"), "{out}");
    assert!(!out.contains("created"), "{out}");

    // --wait names what is not ready, and why, then exits 1.
    let waited = capstan(dir.path(), &["apply", "--target", "kubernetes", "-f", f, "--wait", "--timeout", "1s"]);
    let (_, err) = text(&waited);
    assert_eq!(waited.status.code(), Some(1), "{err}");
    assert!(err.contains("not ready after 1s"), "{err}");
    assert!(err.contains("StatefulSet atlassian/jira: the controller has not seen generation 1 yet"), "{err}");

    // Someone else owns replicas now: exit 1 with the conflict, and the hint.
    let scaled = json!({"apiVersion": "apps/v1", "kind": "StatefulSet",
        "metadata": {"name": "jira", "namespace": "atlassian"}, "spec": {"replicas": 5}});
    assert!(fake.apply_object("kubectl", "apps", "v1", "statefulsets", &scaled) < 300);
    let conflict = capstan(dir.path(), &["apply", "--target", "kubernetes", "-f", f]);
    let (_, err) = text(&conflict);
    assert_eq!(conflict.status.code(), Some(1), "{err}");
    assert!(err.contains("StatefulSet atlassian/jira: Conflict (409): Apply failed with 1 conflict: conflict with \"kubectl\": .spec.replicas"), "{err}");
    assert!(err.contains("--force-conflicts"), "{err}");
    let forced = capstan(dir.path(), &["apply", "--target", "kubernetes", "-f", f, "--force-conflicts"]);
    assert_eq!(forced.status.code(), Some(0), "{:?}", text(&forced));

    // Another Gateway by flag; then a cluster without Gateway API: an Ingress, and the route pruned.
    let edge = capstan(dir.path(), &["apply", "--target", "kubernetes", "-f", f, "--gateway", "edge/public"]);
    let (out, err) = text(&edge);
    assert_eq!(edge.status.code(), Some(0), "{out}\n{err}");
    assert!(out.contains("HTTPRoute atlassian/jira configured"), "{out}");
    let route = fake.get("gateway.networking.k8s.io", "httproutes", "atlassian", "jira").expect("the HTTPRoute");
    assert_eq!(route["spec"]["parentRefs"][0]["namespace"], "edge", "{route}");
    let old = capstan(dir.path(), &["apply", "--target", "kubernetes", "-f", f, "--ingress-class", "nginx", "--prune"]);
    let (out, err) = text(&old);
    assert_eq!(old.status.code(), Some(0), "{out}\n{err}");
    assert!(out.contains("Ingress atlassian/jira created") && out.contains("HTTPRoute atlassian/jira pruned"), "{out}");
    assert!(fake.get("gateway.networking.k8s.io", "httproutes", "atlassian", "jira").is_none());
    let before = fake.audit().len();
    for bad in [&["--gateway", "Edge/Public"][..], &["--ingress-class", "nginx", "--gateway", "edge/public"]] {
        let refused = capstan(dir.path(), &[&["apply", "--target", "kubernetes", "-f", f][..], bad].concat());
        let (_, err) = text(&refused);
        assert_eq!(refused.status.code(), Some(2), "{bad:?}: {err}");
        assert!(err.contains("--gateway"), "{bad:?}: {err}");
    }
    assert_eq!(fake.audit().len(), before, "nothing reached the cluster");

    // The App leaves the file: --prune deletes its objects but keeps its shared claim and the namespace.
    let db_only = dir.path().join("db.yaml");
    std::fs::write(&db_only, MANIFESTS.split("---\n").nth(1).expect("second document")).expect("write");
    let pruned =
        capstan(dir.path(), &["apply", "--target", "kubernetes", "-f", db_only.to_str().expect("path"), "--prune"]);
    let (out, err) = text(&pruned);
    assert_eq!(pruned.status.code(), Some(0), "{out}\n{err}");
    assert!(out.contains("StatefulSet atlassian/jira pruned"), "{out}");
    assert!(
        out.contains("PersistentVolumeClaim atlassian/jira-shared-home kept: annotated capstan.dev/prune: disabled"),
        "{out}"
    );
    assert!(fake.get("apps", "statefulsets", "atlassian", "jira").is_none());
    assert!(fake.get("", "persistentvolumeclaims", "atlassian", "jira-shared-home").is_some());
    assert!(fake.get("", "secrets", "atlassian", "jira-db-credentials").is_some());

    // Bad input: an App without an image is named by file, line and field, and nothing is sent (exit 2).
    let before = fake.audit().len();
    let no_image = dir.path().join("no-image.yaml");
    std::fs::write(
        &no_image,
        "apiVersion: capstan.dev/v1alpha1\nkind: App\nmetadata: {name: web}\nspec:\n  run: {command: [web]}\n",
    )
    .expect("write");
    let refused = capstan(dir.path(), &["apply", "--target", "kubernetes", "-f", no_image.to_str().expect("path")]);
    let (_, err) = text(&refused);
    assert_eq!(refused.status.code(), Some(2), "{err}");
    assert!(err.contains("no-image.yaml:5") && err.contains("spec.run.image"), "{err}");
    assert_eq!(fake.audit().len(), before, "nothing reached the cluster");
    let bad_inventory = capstan(dir.path(), &["apply", "--target", "kubernetes", "-f", f, "--inventory", "Team A"]);
    let (_, err) = text(&bad_inventory);
    assert_eq!(bad_inventory.status.code(), Some(2), "{err}");
    assert!(err.contains("--inventory \"Team A\"") && err.contains("capstan-inventory-<name>"), "{err}");
    assert_eq!(fake.audit().len(), before, "nothing reached the cluster");

    // A wrong target, a stale token, a cluster that is not there.
    let target = capstan(dir.path(), &["apply", "--target", "kubernets", "-f", f]);
    assert_eq!(target.status.code(), Some(2));
    assert!(text(&target).1.contains("unknown target `kubernets`"));
    std::fs::write(dir.path().join("kubeconfig"), fake.kubeconfig("stale")).expect("kubeconfig");
    let denied = capstan(dir.path(), &["apply", "--target", "kubernetes", "-f", f]);
    let (_, err) = text(&denied);
    assert_eq!(denied.status.code(), Some(1), "{err}");
    assert!(err.contains("Unauthorized (401)") && err.contains("credentials"), "{err}");
}

/// Gateway API's objects go to a cluster as they were written: applied with server-side apply, unchanged.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn gateway_api_objects_are_applied_to_a_cluster_as_written() {
    let fake = FakeApiServer::start_on("127.0.0.1:0", Some("token-1")).await.expect("fake");
    let dir = tempfile::tempdir().expect("tempdir");
    std::fs::write(dir.path().join("kubeconfig"), fake.kubeconfig("token-1")).expect("kubeconfig");
    let file = dir.path().join("front.yaml");
    std::fs::write(
        &file,
        "apiVersion: gateway.networking.k8s.io/v1
kind: Gateway
metadata: {name: front, namespace: web}
spec:
  gatewayClassName: eg
  listeners: [{name: http, port: 80, protocol: HTTP}]
---
apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata: {name: shop, namespace: web}
spec:
  parentRefs: [{name: front}]
  hostnames: [shop.example.com]
  rules: [{backendRefs: [{name: shop, port: 8080, weight: 90}, {name: shop-next, port: 8080, weight: 10}]}]
",
    )
    .expect("manifests");
    let out = capstan(dir.path(), &["apply", "--target", "kubernetes", "-f", file.to_str().expect("utf-8")]);
    let (stdout, stderr) = text(&out);
    assert_eq!(out.status.code(), Some(0), "{stdout}\n{stderr}");
    assert!(stdout.contains("Gateway web/front created") && stdout.contains("HTTPRoute web/shop created"), "{stdout}");
    let gw = fake.get("gateway.networking.k8s.io", "gateways", "web", "front").expect("the Gateway");
    assert_eq!(gw["spec"]["gatewayClassName"], "eg");
    let route = fake.get("gateway.networking.k8s.io", "httproutes", "web", "shop").expect("the HTTPRoute");
    assert_eq!(route["spec"]["rules"][0]["backendRefs"][1], json!({"name": "shop-next", "port": 8080, "weight": 10}));
}
