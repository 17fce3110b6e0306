//! The operator against the in-process fake API server: two replicas and one Lease, custom resources rendered and
//! applied with owner references, status written back, prune when a resource stops rendering an object, garbage
//! collection on delete (claims kept), a bad spec named in status, fail-over to the standby, and the RBAC it
//! ships compared with the requests it made, both ways.
#![allow(clippy::unwrap_used, clippy::expect_used)] // a test: a failed step is the failure it reports

use std::collections::BTreeSet;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use capstan_fake_apiserver::FakeApiServer;
use capstan_kubernetes::cluster::Cluster;
use capstan_kubernetes::operator::{self, OperatorConfig, OperatorStatus, PERMISSIONS};
use capstan_kubernetes::render::RenderOptions;
use serde_json::{json, Value};

async fn cluster(fake: &FakeApiServer) -> Cluster {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("kubeconfig");
    std::fs::write(&path, fake.kubeconfig("t")).expect("write kubeconfig");
    Cluster::connect(Some(&path), None).await.unwrap_or_else(|e| panic!("{e}"))
}

/// Polls until `f` holds (each check is cheap; the bound only keeps a broken build from hanging).
async fn until(what: &str, mut f: impl FnMut() -> bool) {
    for _ in 0..400 {
        if f() {
            return;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("never happened: {what}");
}

fn cr(kind: &str, name: &str, spec: Value) -> Value {
    json!({"apiVersion": "capstan.dev/v1alpha1", "kind": kind, "metadata": {"name": name, "namespace": "team"}, "spec": spec})
}

fn web(expose: Value) -> Value {
    cr(
        "App",
        "web",
        json!({
            "replicas": 2,
            "run": {"image": "registry.example.com/web:1"},
            "ports": [{"name": "http"}, {"name": "ssh"}],
            "expose": expose,
            "volumes": [{"name": "attachments", "scope": "shared", "env": "SHARED_DIR"}],
            "databaseRef": {"name": "db"}
        }),
    )
}

fn ready(fake: &FakeApiServer, resource: &str, name: &str) -> Option<(String, String)> {
    let obj = fake.get("capstan.dev", resource, "team", name)?;
    let c = obj["status"]["conditions"].as_array()?.iter().find(|c| c["type"] == "Ready")?.clone();
    Some((c["status"].as_str()?.to_string(), c["message"].as_str()?.to_string()))
}

fn start(cluster: &Cluster, identity: &str) -> (Arc<OperatorStatus>, tokio::task::JoinHandle<()>) {
    let status = Arc::new(OperatorStatus::default());
    let cfg = OperatorConfig {
        identity: identity.into(),
        lease_namespace: "capstan-system".into(),
        lease_duration: Duration::from_secs(2),
        // A cluster without Gateway API: Ingresses and LoadBalancers unless an entry names a Gateway (the default,
        // routes on `capstan-system/capstan`, is the renderer's and the CLI's tests').
        render: RenderOptions { entry_points: capstan_model::gitops::EntryPoints::ingress("nginx") },
        ..Default::default()
    };
    let (c, s) = (cluster.clone(), status.clone());
    let task = tokio::spawn(async move {
        let _ = operator::run(c, cfg, s).await;
    });
    (status, task)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_operator_reconciles_owns_prunes_fails_over_and_needs_only_its_rbac() {
    let fake = FakeApiServer::start().await.expect("fake");
    let c = cluster(&fake).await;
    let kubectl = |group: &str, resource: &str, obj: &Value| {
        assert!(fake.apply_object("kubectl", group, "v1alpha1", resource, obj) < 300, "{obj}");
    };
    let http_and_tcp = json!([{"port": 443}, {"name": "ssh", "port": 22, "protocol": "tcp", "targetPort": "ssh"}]);
    kubectl("capstan.dev", "apps", &web(http_and_tcp));
    kubectl("capstan.dev", "databases", &cr("Database", "db", json!({})));
    kubectl("capstan.dev", "databases", &cr("Database", "ha-db", json!({"provider": "cnpg", "instances": 3})));
    kubectl(
        "capstan.dev",
        "modelservers",
        &cr(
            "ModelServer",
            "mnist",
            json!({"basePath": "models/mnist", "image": "registry.example.com/capstan:0.1",
                   "autoscaling": {"minReplicas": 2, "maxReplicas": 4, "targetRequestsPerSecond": 50}}),
        ),
    );
    let job = |workers: u32| {
        cr(
            "TrainingJob",
            "train",
            json!({"replicaSpecs": {"Worker": {"replicas": workers, "restartPolicy": "OnFailure",
                   "run": {"image": "registry.example.com/train:1", "command": ["python3", "train.py"]}}}}),
        )
    };
    kubectl("capstan.dev", "trainingjobs", &job(2));

    let (a, task_a) = start(&c, "operator-a");
    let (b, task_b) = start(&c, "operator-b");
    until("one replica leads", || a.leader.load(Ordering::SeqCst) || b.leader.load(Ordering::SeqCst)).await;

    // Everything rendered is applied, owned by its resource; claims and credentials are not owned (they hold data).
    until("the App's objects", || fake.get("apps", "statefulsets", "team", "web").is_some()).await;
    until("the ModelServer's autoscaler", || {
        fake.get("autoscaling", "horizontalpodautoscalers", "team", "mnist-server").is_some()
    })
    .await;
    until("the job's pods", || fake.get("", "pods", "team", "train-worker-1").is_some()).await;
    until("the credentials", || fake.get("", "secrets", "team", "db-credentials").is_some()).await;
    until("the CloudNativePG cluster", || fake.get("postgresql.cnpg.io", "clusters", "team", "ha-db").is_some()).await;
    assert!(a.leader.load(Ordering::SeqCst) != b.leader.load(Ordering::SeqCst), "exactly one leader");
    let app_uid = fake.get("capstan.dev", "apps", "team", "web").expect("app")["metadata"]["uid"].clone();
    let sts = fake.get("apps", "statefulsets", "team", "web").expect("sts");
    assert_eq!(sts["metadata"]["ownerReferences"][0]["uid"], app_uid);
    assert_eq!(sts["metadata"]["ownerReferences"][0]["controller"], json!(true));
    assert_eq!(fake.managers("apps", "statefulsets", "team", "web").keys().collect::<Vec<_>>(), ["capstan"]);
    let claim = fake.get("", "persistentvolumeclaims", "team", "web-attachments").expect("claim");
    assert!(claim["metadata"].get("ownerReferences").is_none(), "a claim is never garbage collected");
    assert!(fake.get("networking.k8s.io", "networkpolicies", "team", "default-deny-ingress").is_some());
    let db_policy = fake.get("networking.k8s.io", "networkpolicies", "team", "db-allow").expect("db policy");
    assert_eq!(
        db_policy["spec"]["ingress"][0]["from"][0]["podSelector"]["matchLabels"]["app.kubernetes.io/name"],
        "web"
    );

    // Status: not ready until the StatefulSet is, and then Ready with its inventory.
    until("App status written", || ready(&fake, "apps", "web").is_some()).await;
    let (s, msg) = ready(&fake, "apps", "web").expect("status");
    assert_eq!(s, "False");
    assert!(msg.contains("StatefulSet team/web"), "{msg}");
    fake.set_status(
        "apps",
        "statefulsets",
        "team",
        "web",
        json!({"observedGeneration": 1, "readyReplicas": 2, "updatedReplicas": 2, "currentRevision": "r1", "updateRevision": "r1"}),
    );
    fake.set_status("", "persistentvolumeclaims", "team", "web-attachments", json!({"phase": "Bound"}));
    until("App Ready", || ready(&fake, "apps", "web").is_some_and(|(s, _)| s == "True")).await;
    let inventory = fake.get("capstan.dev", "apps", "team", "web").expect("app")["status"]["inventory"].clone();
    assert!(
        inventory.as_array().is_some_and(|i| i.iter().any(|r| r["kind"] == "Ingress")),
        "{}",
        fake.get("capstan.dev", "apps", "team", "web").expect("app")
    );
    until("ModelServer status", || ready(&fake, "modelservers", "mnist").is_some()).await;
    until("TrainingJob status", || ready(&fake, "trainingjobs", "train").is_some()).await;
    until("Database status", || ready(&fake, "databases", "db").is_some()).await;

    // A Gateway replaces the Ingress and the tcp entry's LoadBalancer: the Service and Ingress are pruned, an
    // HTTPRoute and a TCPRoute made.
    let public = json!({"name": "public", "namespace": "gateways"});
    let ssh = json!({"name": "public", "namespace": "gateways", "sectionName": "ssh"});
    let gateway = json!([{"port": 443, "gateway": public},
                         {"name": "ssh", "port": 22, "protocol": "tcp", "targetPort": "ssh", "gateway": ssh}]);
    kubectl("capstan.dev", "apps", &web(gateway));
    until("HTTPRoute", || fake.get("gateway.networking.k8s.io", "httproutes", "team", "web").is_some()).await;
    until("TCPRoute", || fake.get("gateway.networking.k8s.io", "tcproutes", "team", "web-ssh").is_some()).await;
    until("Ingress pruned", || fake.get("networking.k8s.io", "ingresses", "team", "web").is_none()).await;
    until("tcp Service pruned", || fake.get("", "services", "team", "web-ssh").is_none()).await;
    // And back: the routes are pruned.
    kubectl("capstan.dev", "apps", &web(json!([{"port": 443}])));
    until("HTTPRoute pruned", || fake.get("gateway.networking.k8s.io", "httproutes", "team", "web").is_none()).await;
    until("TCPRoute pruned", || fake.get("gateway.networking.k8s.io", "tcproutes", "team", "web-ssh").is_none()).await;
    until("Ingress back", || fake.get("networking.k8s.io", "ingresses", "team", "web").is_some()).await;
    // The autoscaler goes; one worker fewer.
    kubectl(
        "capstan.dev",
        "modelservers",
        &cr("ModelServer", "mnist", json!({"basePath": "models/mnist", "image": "registry.example.com/capstan:0.1"})),
    );
    until("HPA pruned", || fake.get("autoscaling", "horizontalpodautoscalers", "team", "mnist-server").is_none()).await;
    kubectl("capstan.dev", "trainingjobs", &job(1));
    until("worker 1 pruned", || fake.get("", "pods", "team", "train-worker-1").is_none()).await;
    assert!(fake.get("", "pods", "team", "train-worker-0").is_some());

    // The Database's user changes: the App's URL follows.
    kubectl("capstan.dev", "databases", &cr("Database", "db", json!({"user": "teamboard"})));
    until("the App's URL names the new user", || {
        fake.get("apps", "statefulsets", "team", "web").is_some_and(|s| {
            s["spec"]["template"]["spec"]["containers"][0]["env"].as_array().into_iter().flatten().any(|e| {
                e["name"] == "DATABASE_URL"
                    && e["value"].as_str().is_some_and(|v| v.starts_with("postgres://teamboard:"))
            })
        })
    })
    .await;

    // A spec the model refuses: status names the field; what ran keeps running.
    let mut bad = job(1);
    bad["spec"]["replicaSpecs"]["Worker"]["restartPolicy"] = json!("Sometimes");
    kubectl("capstan.dev", "trainingjobs", &bad);
    until("InvalidSpec", || {
        fake.get("capstan.dev", "trainingjobs", "team", "train").is_some_and(|j| {
            j["status"]["conditions"][0]["reason"] == "InvalidSpec"
                && j["status"]["conditions"][0]["message"].as_str().is_some_and(|m| m.contains("restartPolicy"))
        })
    })
    .await;
    assert!(fake.get("", "pods", "team", "train-worker-0").is_some(), "the last good state keeps running");

    // Deleting the App deletes what it owned, but not its claim.
    assert!(fake.delete_object("capstan.dev", "apps", "team", "web"));
    assert!(fake.get("apps", "statefulsets", "team", "web").is_none());
    assert!(fake.get("", "persistentvolumeclaims", "team", "web-attachments").is_some());

    // The leader dies; the standby takes the Lease once it expires and carries on.
    let (leader, standby, leader_task) =
        if a.leader.load(Ordering::SeqCst) { (&a, &b, &task_a) } else { (&b, &a, &task_b) };
    leader_task.abort();
    let _ = leader;
    until("the standby leads", || standby.leader.load(Ordering::SeqCst)).await;
    kubectl("capstan.dev", "apps", &web(json!([{"port": 443}])));
    until("the new leader reconciles", || fake.get("apps", "statefulsets", "team", "web").is_some()).await;
    let lease = fake.get("coordination.k8s.io", "leases", "capstan-system", "capstan-operator").expect("lease");
    assert_eq!(lease["spec"]["leaseTransitions"], json!(1));

    // RBAC: every request was granted by the shipped rules, and every rule was used.
    let used: BTreeSet<(String, String, String)> =
        fake.audit().into_iter().map(|r| (r.group, r.resource, r.verb)).collect();
    let granted: BTreeSet<(String, String, String)> = PERMISSIONS
        .iter()
        .flat_map(|rule| {
            rule.resources.iter().flat_map(move |res| {
                rule.verbs.iter().map(move |v| (rule.group.to_string(), res.to_string(), v.to_string()))
            })
        })
        .collect();
    let missing: Vec<_> = used.difference(&granted).collect();
    let unused: Vec<_> = granted.difference(&used).collect();
    assert!(missing.is_empty(), "requests the RBAC does not grant: {missing:?}");
    assert!(unused.is_empty(), "grants the operator never used: {unused:?}");
    assert!(
        fake.audit().iter().all(|r| r.code < 400 || r.code == 404 || r.code == 409),
        "{:?}",
        fake.audit().iter().filter(|r| r.code >= 400).collect::<Vec<_>>()
    );
    task_a.abort();
    task_b.abort();
}

#[test]
fn shipped_rbac_is_the_generated_rbac() {
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../deploy/kubernetes/rbac.yaml");
    let shipped = std::fs::read_to_string(&path).expect("deploy/kubernetes/rbac.yaml");
    let generated: String = operator::rbac("capstan-system").iter().map(capstan_model::yaml::to_yaml_string).collect();
    assert_eq!(
        shipped.trim(),
        generated.trim(),
        "regenerate with: capstan operator --print-rbac > deploy/kubernetes/rbac.yaml"
    );
}

/// The operator reconciles exactly the kinds that render to Kubernetes objects (derived from the kinds, not a list).
#[test]
fn the_reconciled_kinds_are_those_that_render() {
    let kinds: BTreeSet<&str> = operator::reconciled().collect();
    assert_eq!(kinds, BTreeSet::from(["App", "Database", "ModelServer", "TrainingJob"]));
}
