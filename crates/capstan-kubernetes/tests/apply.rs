//! Apply, prune and health against the in-process fake API server over HTTP: server-side apply with field manager
//! `capstan`, a conflict with another manager, prune after an object leaves Git (claims kept), rejected and
//! forbidden objects, bad credentials and an unreachable cluster.
#![allow(clippy::unwrap_used, clippy::expect_used)] // a test: a failed step is the failure it reports

use std::time::Duration;

use capstan_fake_apiserver::FakeApiServer;
use capstan_kubernetes::cluster::{ApplyOptions, Cluster, ClusterError, Outcome};
use capstan_kubernetes::plan::ObjectRef;
use capstan_kubernetes::render::{credentials, render};
use capstan_model::{parse_manifests, Resource};
use serde_json::{json, Value};

const APP: &str = "apiVersion: capstan.dev/v1alpha1
kind: App
metadata: {name: teamboard, namespace: team}
spec:
  replicas: 2
  run: {image: registry.example.com/teamboard:2.0}
  ports: [{name: http}]
  expose: [{port: 443, sticky: {cookie: {name: ROUTE}}}]
  volumes:
    - {name: attachments, scope: shared, env: SHARED_DIR, size: 50Gi}
  databaseRef: {name: teamboard-db}
";

const DB: &str = "apiVersion: capstan.dev/v1alpha1
kind: Database
metadata: {name: teamboard-db, namespace: team}
spec: {}
";

fn resources(yaml: &str) -> Vec<Resource> {
    parse_manifests("t.yaml", yaml).unwrap_or_else(|d| panic!("{d}")).into_iter().map(|m| m.resource).collect()
}

async fn cluster(fake: &FakeApiServer, token: &str) -> Cluster {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("kubeconfig");
    std::fs::write(&path, fake.kubeconfig(token)).expect("write kubeconfig");
    Cluster::connect(Some(&path), None).await.unwrap_or_else(|e| panic!("{e}"))
}

fn opts() -> ApplyOptions {
    ApplyOptions {
        inventory: Some(("team".into(), "teamboard".into())),
        retry_for: Duration::from_secs(2),
        ..Default::default()
    }
}

fn outcome<'a>(report: &'a [(ObjectRef, Outcome)], kind: &str, name: &str) -> &'a Outcome {
    &report
        .iter()
        .find(|(r, _)| r.kind == kind && r.name == name)
        .unwrap_or_else(|| panic!("no {kind} {name} in {report:?}"))
        .1
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn apply_prune_conflicts_and_health() {
    let fake = FakeApiServer::start_on("127.0.0.1:0", Some("s3cret")).await.expect("fake");
    let c = cluster(&fake, "s3cret").await;
    let both = resources(&format!("{APP}---\n{DB}"));

    // First apply: everything created, in order, owned by the field manager `capstan`.
    let secrets = c.create_missing(&credentials(&both, capstan_kubernetes::render::random_password)).await;
    assert_eq!(secrets[0].1, Outcome::Created);
    let password =
        fake.get("", "secrets", "team", "teamboard-db-credentials").expect("secret")["stringData"]["password"].clone();
    assert_eq!(password.as_str().map(str::len), Some(32));
    let objects = render(&both).expect("render");
    let count = objects.len();
    let report = c.apply(objects.clone(), &opts()).await.expect("apply");
    assert!(report.ok(), "{report:?}");
    assert_eq!(report.applied.len(), count);
    assert!(report.applied.iter().all(|(_, o)| *o == Outcome::Created), "{report:?}");
    assert_eq!(report.applied[0].0.kind, "Namespace", "namespaces first");
    let managers = fake.managers("apps", "statefulsets", "team", "teamboard");
    assert_eq!(managers.keys().collect::<Vec<_>>(), ["capstan"]);
    assert!(managers["capstan"].contains(&".spec.replicas".to_string()));
    let sts = fake.get("apps", "statefulsets", "team", "teamboard").expect("statefulset");
    assert_eq!(sts["metadata"]["managedFields"][0]["manager"], json!("capstan"));
    assert_eq!(sts["metadata"]["managedFields"][0]["operation"], json!("Apply"));
    let inventory = c.read_inventory("team", "teamboard").await.expect("inventory");
    assert_eq!(inventory.len(), count);

    // Again: nothing changes, and the generated password is kept.
    let again = c.apply(objects.clone(), &opts()).await.expect("apply");
    assert!(again.applied.iter().all(|(_, o)| *o == Outcome::Unchanged), "{again:?}");
    assert_eq!(
        c.create_missing(&credentials(&both, capstan_kubernetes::render::random_password)).await[0].1,
        Outcome::Unchanged
    );
    assert_eq!(
        fake.get("", "secrets", "team", "teamboard-db-credentials").expect("secret")["stringData"]["password"],
        password
    );

    // Someone scales the StatefulSet with their own field manager: Capstan reports the conflict and names the
    // manager and the field, applies the rest, and prunes nothing.
    let r = ObjectRef {
        api_version: "apps/v1".into(),
        kind: "StatefulSet".into(),
        namespace: "team".into(),
        name: "teamboard".into(),
    };
    let scale = json!({"apiVersion": "apps/v1", "kind": "StatefulSet", "metadata": {"name": "teamboard", "namespace": "team"}, "spec": {"replicas": 5}});
    let kubectl = ApplyOptions { field_manager: "kubectl".into(), force_conflicts: true, ..Default::default() };
    c.apply_one(&r, &scale, &kubectl).await.expect("kubectl takes replicas");
    let only_db = render(&resources(DB)).expect("render");
    let conflicted = c.apply(objects.clone(), &opts()).await.expect("apply");
    match outcome(&conflicted.applied, "StatefulSet", "teamboard") {
        Outcome::Failed(f) => {
            assert_eq!(f.code, 409);
            assert!(f.message.contains("conflict with \"kubectl\": .spec.replicas"), "{}", f.message);
            assert!(f.hint.as_deref().is_some_and(|h| h.contains("--force-conflicts")));
        }
        other => panic!("expected a conflict, got {other}"),
    }
    assert_eq!(*outcome(&conflicted.applied, "Service", "teamboard"), Outcome::Unchanged);
    assert_eq!(fake.get("apps", "statefulsets", "team", "teamboard").expect("sts")["spec"]["replicas"], json!(5));
    // With the App gone from Git at the same time, a failed apply still prunes nothing.
    fake.reject("statefulsets", "teamboard-db-postgres", "spec.template.spec.containers[0].image: Required value");
    let rejected = c.apply(only_db.clone(), &opts()).await.expect("apply");
    match outcome(&rejected.applied, "StatefulSet", "teamboard-db-postgres") {
        Outcome::Failed(f) => assert_eq!((f.code, f.reason.as_str()), (422, "Invalid")),
        other => panic!("expected a rejection, got {other}"),
    }
    assert!(rejected.prune_skipped && rejected.pruned.is_empty());
    assert!(fake.get("apps", "statefulsets", "team", "teamboard").is_some(), "nothing pruned after a failure");
    assert_eq!(c.read_inventory("team", "teamboard").await.expect("inventory").len(), count, "inventory kept");
    fake.heal();

    // Forced, Capstan takes the field back.
    let forced = ApplyOptions { force_conflicts: true, ..opts() };
    let taken = c.apply(objects.clone(), &forced).await.expect("apply");
    assert!(taken.ok(), "{taken:?}");
    assert_eq!(*outcome(&taken.applied, "StatefulSet", "teamboard"), Outcome::Configured);
    assert_eq!(fake.get("apps", "statefulsets", "team", "teamboard").expect("sts")["spec"]["replicas"], json!(2));

    // The App leaves Git: its objects are pruned, its shared claim (data) is kept, the Database stays.
    let pruned = c.apply(only_db.clone(), &opts()).await.expect("apply");
    assert!(pruned.ok(), "{pruned:?}");
    assert_eq!(*outcome(&pruned.pruned, "StatefulSet", "teamboard"), Outcome::Deleted);
    assert_eq!(*outcome(&pruned.pruned, "HTTPRoute", "teamboard"), Outcome::Deleted);
    assert!(matches!(outcome(&pruned.pruned, "PersistentVolumeClaim", "teamboard-attachments"), Outcome::Kept(_)));
    assert!(fake.get("apps", "statefulsets", "team", "teamboard").is_none());
    assert!(fake.get("gateway.networking.k8s.io", "httproutes", "team", "teamboard").is_none());
    assert!(fake.get("", "persistentvolumeclaims", "team", "teamboard-attachments").is_some());
    assert!(fake.get("apps", "statefulsets", "team", "teamboard-db-postgres").is_some());
    let last = c.read_inventory("team", "teamboard").await.expect("inventory");
    assert_eq!(last.len(), only_db.len());

    // Forbidden: the error says who may not do what.
    fake.forbid("patch", "networkpolicies");
    let forbidden = c.apply(only_db.clone(), &opts()).await.expect("apply");
    match outcome(&forbidden.applied, "NetworkPolicy", "default-deny-ingress") {
        Outcome::Failed(f) => {
            assert_eq!(f.code, 403);
            assert!(f.message.contains("cannot patch resource \"networkpolicies\""), "{}", f.message);
        }
        other => panic!("expected forbidden, got {other}"),
    }
    fake.heal();

    // Health: the database's StatefulSet is not ready until its controller says so; the wait names it and why.
    let db_sts = ObjectRef { name: "teamboard-db-postgres".into(), ..r.clone() };
    let err =
        c.wait(std::slice::from_ref(&db_sts), Duration::from_millis(600), |_, _| {}).await.expect_err("not ready");
    let text = err.to_string();
    assert!(
        text.contains("StatefulSet team/teamboard-db-postgres: the controller has not seen generation 1 yet"),
        "{text}"
    );
    fake.set_status(
        "apps",
        "statefulsets",
        "team",
        "teamboard-db-postgres",
        json!({"observedGeneration": 1, "readyReplicas": 0}),
    );
    let err =
        c.wait(std::slice::from_ref(&db_sts), Duration::from_millis(600), |_, _| {}).await.expect_err("not ready");
    assert!(err.to_string().contains("0/1 replicas ready"), "{err}");
    fake.set_status(
        "apps",
        "statefulsets",
        "team",
        "teamboard-db-postgres",
        json!({"observedGeneration": 1, "readyReplicas": 1, "updatedReplicas": 1, "currentRevision": "r1", "updateRevision": "r1"}),
    );
    let mut seen = (0, 0);
    c.wait(std::slice::from_ref(&db_sts), Duration::from_secs(5), |done, all| seen = (done, all)).await.expect("ready");
    assert_eq!(seen, (1, 1));
}

#[tokio::test]
async fn bad_credentials_and_an_unreachable_cluster_fail_before_anything_is_applied() {
    let fake = FakeApiServer::start_on("127.0.0.1:0", Some("s3cret")).await.expect("fake");
    let wrong = cluster(&fake, "stale-token").await;
    let objects: Vec<Value> = render(&resources(DB)).expect("render");
    match wrong.apply(objects.clone(), &opts()).await {
        Err(ClusterError::Request(f)) => {
            assert_eq!(f.code, 401);
            assert!(f.hint.as_deref().is_some_and(|h| h.contains("credentials")), "{f}");
        }
        other => panic!("expected 401, got {other:?}"),
    }
    assert!(fake.is_empty());

    // A port bound but not listening: connections are refused, and no other test can take it meanwhile.
    let reserved = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).expect("socket");
    let any: std::net::SocketAddr = "127.0.0.1:0".parse().expect("address");
    reserved.bind(&any.into()).expect("bind");
    let port = reserved.local_addr().ok().and_then(|a| a.as_socket()).expect("addr").port();
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("kubeconfig");
    std::fs::write(&path, fake.kubeconfig("s3cret").replace(&fake.addr.port().to_string(), &port.to_string()))
        .expect("write");
    let gone = Cluster::connect(Some(&path), None).await.expect("config");
    match gone.apply(objects, &opts()).await {
        Err(e @ ClusterError::Unreachable { .. }) => {
            assert!(e.to_string().contains(&format!("127.0.0.1:{port}")), "{e}")
        }
        other => panic!("expected unreachable, got {other:?}"),
    }

    let missing = Cluster::connect(Some(&dir.path().join("nope")), None).await;
    assert!(matches!(missing, Err(ClusterError::Kubeconfig { .. })));
}

/// cert-manager's objects reach the cluster by server-side apply as written: an Issuer and a Certificate in their
/// namespace, a ClusterIssuer at the cluster's own path (no namespace); a ClusterIssuer that leaves Git is pruned.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cert_manager_objects_are_applied_as_written_and_a_cluster_issuer_without_a_namespace() {
    let fake = FakeApiServer::start_on("127.0.0.1:0", None).await.expect("fake");
    let c = cluster(&fake, "any").await;
    let certs = "apiVersion: cert-manager.io/v1
kind: Issuer
metadata: {name: ca, namespace: team}
spec: {ca: {secretName: root-ca}}
---
apiVersion: cert-manager.io/v1
kind: Certificate
metadata: {name: web, namespace: team}
spec: {secretName: web-tls, dnsNames: [web.example.com], issuerRef: {name: letsencrypt, kind: ClusterIssuer}}
";
    let cluster_issuer = "apiVersion: cert-manager.io/v1
kind: ClusterIssuer
metadata: {name: letsencrypt, namespace: ignored}
spec:
  acme:
    server: https://acme-v02.api.letsencrypt.org/directory
    privateKeySecretRef: {name: letsencrypt-account}
    solvers: [{http01: {gatewayHTTPRoute: {parentRefs: [{name: web, namespace: front}]}}}]
";
    let all = resources(&format!("{certs}---\n{cluster_issuer}"));
    let report = c.apply(render(&all).expect("render"), &opts()).await.expect("apply");
    assert!(report.ok(), "{report:?}");
    let stored = fake.get("cert-manager.io", "clusterissuers", "", "letsencrypt").expect("at the cluster's path");
    assert!(stored["metadata"].get("namespace").is_none(), "{stored}");
    assert_eq!(stored["spec"], all[2].to_value()["spec"], "the spec as written");
    assert!(fake.managers("cert-manager.io", "clusterissuers", "", "letsencrypt").contains_key("capstan"));
    let cert = fake.get("cert-manager.io", "certificates", "team", "web").expect("the Certificate");
    assert_eq!(cert["spec"]["issuerRef"], json!({"name": "letsencrypt", "kind": "ClusterIssuer"}));
    assert!(fake.get("cert-manager.io", "issuers", "team", "ca").is_some());
    assert!(fake.get("", "namespaces", "", "ignored").is_none(), "a ClusterIssuer brings no namespace");

    // The ClusterIssuer leaves Git: pruned from the cluster's path; the rest stays.
    let pruned = c.apply(render(&resources(certs)).expect("render"), &opts()).await.expect("apply");
    assert!(pruned.ok(), "{pruned:?}");
    assert_eq!(*outcome(&pruned.pruned, "ClusterIssuer", "letsencrypt"), Outcome::Deleted);
    assert!(fake.get("cert-manager.io", "clusterissuers", "", "letsencrypt").is_none());
    assert!(fake.get("cert-manager.io", "certificates", "team", "web").is_some());
}
