//! Every rendered object, and everything in deploy/kubernetes, validated against the Kubernetes 1.33 OpenAPI
//! schemas by kubernetes-validate in strict mode (an unknown field is an error), with a broken object as a control.
#![allow(clippy::unwrap_used, clippy::expect_used)] // a test: a failed step is the failure it reports

use std::process::Command;

use capstan_kubernetes::render::{render, render_with, RenderOptions};
use capstan_model::parse_manifests;
use serde_json::Value;

/// Apps (sticky by cookie and by client IP, tcp entries, a gateway, volumes, probes, a database), Databases, a
/// parameter-server TrainingJob and an autoscaled ModelServer.
const CORPUS: &str = "apiVersion: capstan.dev/v1alpha1
kind: App
metadata: {name: jira, namespace: atlassian}
spec:
  replicas: 3
  run: {image: atlassian/jira-software:9.12, env: {JVM_MAXIMUM_MEMORY: 2g}}
  ports: [{name: http}, {name: ehcache}]
  probes:
    startup: {http: {path: /status, port: http}, failureThreshold: 60}
    readiness: {http: {path: /status, port: http}, periodSeconds: 5}
    liveness: {tcp: {port: http}}
  resources: {memory: 4Gi, cpu: '2'}
  expose:
    - {port: 443, sticky: {cookie: {name: JSESSIONID, maxAge: 3600}}, maxBodySize: 100Mi, drainSeconds: 30}
  update: {partition: 1}
  volumes:
    - {name: local-home, scope: replica, env: JIRA_HOME, size: 20Gi}
    - {name: shared-home, scope: shared, env: JIRA_SHARED_HOME, size: 100Gi}
  metrics: {port: http, path: /metrics}
  databaseRef: {name: jira-db}
---
apiVersion: capstan.dev/v1alpha1
kind: Database
metadata: {name: jira-db, namespace: atlassian}
spec: {parameters: {max_connections: '300'}}
---
apiVersion: capstan.dev/v1alpha1
kind: Database
metadata: {name: confluence-db, namespace: atlassian}
spec: {provider: cnpg}
---
apiVersion: capstan.dev/v1alpha1
kind: App
metadata: {name: bitbucket, namespace: atlassian}
spec:
  replicas: 2
  run: {image: atlassian/bitbucket:8.19, command: [/entrypoint.py]}
  ports: [{name: http}, {name: ssh}]
  probes:
    readiness: {exec: {command: [/bin/true]}}
  expose:
    - {port: 443, sticky: {clientIP: {timeoutSeconds: 600}}}
    - {name: ssh, port: 7999, protocol: tcp, targetPort: ssh}
---
apiVersion: capstan.dev/v1alpha1
kind: App
metadata: {name: web}
spec:
  run: {image: registry.example.com/web:1}
  ports: [{name: http}]
  expose: [{port: 443, gateway: {name: public, namespace: gateways, hostnames: [web.example.com]}}]
---
apiVersion: capstan.dev/v1alpha1
kind: TrainingJob
metadata: {name: ps, namespace: ml}
spec:
  runPolicy: {activeDeadlineSeconds: 3600}
  replicaSpecs:
    Chief: {replicas: 1, restartPolicy: ExitCode, run: {image: tensorflow/tensorflow:2.15.0, command: [python3, train.py]}}
    Worker: {replicas: 2, restartPolicy: OnFailure, run: {image: tensorflow/tensorflow:2.15.0, command: [python3, train.py]}}
    PS: {replicas: 1, restartPolicy: Always, run: {image: tensorflow/tensorflow:2.15.0, command: [python3, train.py]}}
---
apiVersion: capstan.dev/v1alpha1
kind: ModelServer
metadata: {name: mnist, namespace: ml}
spec:
  basePath: models/mnist
  image: registry.example.com/capstan:0.1
  versionPolicy: {latest: {numVersions: 2}}
  autoscaling: {minReplicas: 2, maxReplicas: 6, targetRequestsPerSecond: 50}
";

/// Whether a test that needs more than this crate and loopback may run: true when `CAPSTAN_HEAVY_TESTS=1`
/// (scripts/test.sh sets it); otherwise it says on stderr which test is skipped and why. A copy of
/// `capstan_e2e::heavy` (crates cannot depend on the e2e crate).
fn heavy(needs: &str) -> bool {
    if std::env::var("CAPSTAN_HEAVY_TESTS").as_deref() == Ok("1") {
        return true;
    }
    // Written to stderr directly, not with eprintln!, so that libtest does not capture it.
    let thread = std::thread::current();
    let test = thread.name().unwrap_or("a test");
    let line = format!("skipped {test}: needs {needs} (set CAPSTAN_HEAVY_TESTS=1, as scripts/test.sh does)\n");
    let _ = std::io::Write::write_all(&mut std::io::stderr(), line.as_bytes());
    false
}

/// The kubernetes-validate command: `CAPSTAN_K8S_VALIDATE` (scripts/test.sh sets it), else what
/// scripts/setup-k8s-validate.sh makes (and prints).
fn validator() -> String {
    if let Ok(p) = std::env::var("CAPSTAN_K8S_VALIDATE") {
        return p;
    }
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/../../scripts/setup-k8s-validate.sh");
    let out = Command::new("bash").arg(script).output().expect("setup-k8s-validate.sh runs");
    assert!(out.status.success(), "setup-k8s-validate.sh: {}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

fn validate(dir: &std::path::Path, name: &str, objects: &[Value]) -> (bool, String) {
    let path = dir.join(name);
    let text: String = objects.iter().map(capstan_model::yaml::to_yaml_string).collect();
    std::fs::write(&path, text).expect("write");
    let out = Command::new(validator())
        .args(["--kubernetes-version", "1.33.0", "--strict"])
        .arg(&path)
        .output()
        .expect("kubernetes-validate runs");
    (out.status.success(), format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr)))
}

#[test]
fn rendered_and_shipped_objects_validate_against_the_kubernetes_schemas() {
    if !heavy("kubernetes-validate (the venv of scripts/setup-k8s-validate.sh)") {
        return;
    }
    let example = include_str!("../../../examples/kubernetes/atlassian.yaml");
    // The main demo's manifest, unchanged: one manifest for both runtimes.
    let demo = include_str!("../../../examples/ha-stack/ha-stack.yaml");
    let mut objects = Vec::new();
    let mut resources = Vec::new();
    let files = [
        ("corpus.yaml", CORPUS),
        ("examples/kubernetes/atlassian.yaml", example),
        ("examples/ha-stack/ha-stack.yaml", demo),
    ];
    for (file, text) in files {
        let rs: Vec<_> =
            parse_manifests(file, text).unwrap_or_else(|d| panic!("{d}")).into_iter().map(|m| m.resource).collect();
        objects.extend(render(&rs).unwrap_or_else(|e| panic!("{file}: {e:?}")));
        // And for a cluster without Gateway API: Ingresses and LoadBalancer Services.
        let old = RenderOptions { entry_points: capstan_model::gitops::EntryPoints::ingress("nginx") };
        objects.extend(render_with(&rs, &old).unwrap_or_else(|e| panic!("{file}: {e:?}")));
        resources.extend(rs);
    }
    objects.extend(capstan_kubernetes::render::credentials(&resources, capstan_kubernetes::render::random_password));
    objects.extend(capstan_kubernetes::crd::all());
    objects.extend(capstan_kubernetes::operator::rbac("capstan-system"));
    // `capstan render --target kubernetes --rbac`: the embedded roles as ClusterRoles.
    objects.extend(capstan_kubernetes::roles::cluster_roles());
    let deploy = concat!(env!("CARGO_MANIFEST_DIR"), "/../../deploy/kubernetes/operator.yaml");
    let text = std::fs::read_to_string(deploy).expect("operator.yaml");
    objects.extend(capstan_model::yaml::parse_documents(&text).expect("yaml").into_iter().map(|d| d.value));

    // Gateway API routes and CloudNativePG clusters are custom resources with no schema in the Kubernetes
    // OpenAPI: routes are read back by Capstan's typed Gateway API structs (unknown fields refused), CloudNativePG
    // clusters are checked by their own tests.
    let custom = |o: &Value| {
        o["apiVersion"].as_str().is_some_and(|v| v.starts_with("gateway.networking.k8s.io/"))
            || o["apiVersion"] == "postgresql.cnpg.io/v1"
    };
    let (core, custom): (Vec<Value>, Vec<Value>) = objects.into_iter().partition(|o| !custom(o));
    let count = |k: &str| custom.iter().filter(|o| o["kind"] == k).count();
    assert!(count("HTTPRoute") >= 3 && count("TCPRoute") >= 1 && count("Cluster") == 4, "{custom:?}");
    for o in custom.iter().filter(|o| o["kind"] != "Cluster") {
        capstan_model::Resource::from_value(o.clone()).unwrap_or_else(|e| panic!("{e}: {o}"));
    }
    let kinds: std::collections::BTreeSet<&str> = core.iter().filter_map(|o| o["kind"].as_str()).collect();
    for k in
        ["StatefulSet", "Deployment", "Pod", "Service", "Ingress", "NetworkPolicy", "HorizontalPodAutoscaler", "Secret"]
    {
        assert!(kinds.contains(k), "the corpus covers {k}");
    }
    let dir = tempfile::tempdir().expect("tempdir");
    let (ok, report) = validate(dir.path(), "rendered.yaml", &core);
    assert!(ok, "{report}");
    let passed = report.lines().filter(|l| l.contains(" passed for resource ")).count();
    assert_eq!(passed, core.len(), "every object was checked against a schema:\n{report}");

    // The control: a misspelt field must fail, or the check above proves nothing.
    let mut broken = core.iter().find(|o| o["kind"] == "StatefulSet").cloned().expect("a StatefulSet");
    broken["spec"]["podManagmentPolicy"] = Value::from("Parallel");
    let (ok, report) = validate(dir.path(), "broken.yaml", &[broken]);
    assert!(!ok && report.contains("podManagmentPolicy"), "{report}");
}
