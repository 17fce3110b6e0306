//! Helpers for end-to-end tests: an in-process control plane in a temporary data directory, manifests for the
//! test app, and bounded polling.

use std::future::Future;
use std::path::{Path, PathBuf};
use std::time::Duration;

use capstan_api::{Client, ControlPlane, PlaneConfig};
use capstan_model::parse_manifests;
use serde_json::Value;

/// The path of a binary built from this package (`capstan-testapp`, `capstan-e2e-cli`).
pub fn bin(name: &str) -> PathBuf {
    // Integration tests run from target/<profile>/deps; binaries sit one level up.
    let exe = std::env::current_exe().unwrap_or_default();
    let dir = exe.parent().and_then(Path::parent).map(Path::to_path_buf).unwrap_or_default();
    dir.join(name)
}

/// The test app's absolute path.
pub fn testapp() -> String {
    bin("capstan-testapp").display().to_string()
}

/// Builds an App manifest running the test app; `extra` is appended under `spec` (indented two spaces).
pub fn app_yaml(name: &str, replicas: i32, env: &[(&str, &str)], extra: &str) -> String {
    let mut env_yaml = String::new();
    for (k, v) in env {
        env_yaml.push_str(&format!("      {k}: \"{v}\"\n"));
    }
    if env_yaml.is_empty() {
        env_yaml.push_str("      {}\n");
        env_yaml = env_yaml.replace("      {}", "      TESTAPP: \"1\"");
    }
    format!(
        "apiVersion: capstan.dev/v1alpha1
kind: App
metadata:
  name: {name}
spec:
  replicas: {replicas}
  run:
    command: [{}]
    env:
{env_yaml}  ports:
    - name: http
  terminationGracePeriodSeconds: 5
  restartBackoff: {{initialSeconds: 0.5, maxSeconds: 2}}
{extra}",
        testapp()
    )
}

/// A readiness probe on /status every second, as a `spec` fragment.
pub const READINESS: &str =
    "  probes:\n    readiness: {http: {path: /status, port: http}, periodSeconds: 1, failureThreshold: 1}\n";

/// A control plane in a temporary directory, with a client.
pub struct TestPlane {
    pub plane: Option<ControlPlane>,
    pub client: Client,
    pub dir: tempfile::TempDir,
}

impl TestPlane {
    pub async fn start() -> TestPlane {
        let dir = tempfile::tempdir().expect("tempdir");
        Self::start_in(dir).await
    }

    pub async fn start_in(dir: tempfile::TempDir) -> TestPlane {
        let path = dir.path().to_path_buf();
        Self::start_at(dir, path).await
    }

    /// A control plane whose data directory is `path` (created by Capstan if missing).
    pub async fn start_in_path(path: &Path) -> TestPlane {
        let dir = tempfile::tempdir().expect("tempdir");
        Self::start_at(dir, path.to_path_buf()).await
    }

    async fn start_at(dir: tempfile::TempDir, data_dir: PathBuf) -> TestPlane {
        let plane = ControlPlane::start(PlaneConfig { data_dir, listen: "127.0.0.1:0".parse().expect("addr") })
            .await
            .expect("control plane starts");
        let client = Client::new(plane.url(), plane.token());
        TestPlane { plane: Some(plane), client, dir }
    }

    pub fn plane(&self) -> &ControlPlane {
        self.plane.as_ref().expect("running")
    }

    /// Applies manifests given as YAML text; panics with the diagnostics if refused.
    pub fn apply(&self, yaml: &str) {
        let objects: Vec<Value> = parse_manifests("test.yaml", yaml)
            .unwrap_or_else(|d| panic!("{d}"))
            .into_iter()
            .map(|m| m.resource.to_value())
            .collect();
        if let Err(e) = self.plane().apply(objects) {
            panic!("apply refused: {e:?}");
        }
    }

    pub async fn app(&self, name: &str) -> Value {
        self.client.get(&format!("/api/v1/namespaces/default/apps/{name}")).await.expect("get app")
    }

    /// Stops every replica and the plane.
    pub async fn stop(mut self) {
        if let Some(p) = self.plane.take() {
            p.shutdown(false).await;
        }
    }
}

/// Polls `check` every 100 ms until it returns Some, failing with `what` after `limit`.
pub async fn eventually<T, F, Fut>(what: &str, limit: Duration, mut check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Option<T>>,
{
    let deadline = tokio::time::Instant::now() + limit;
    loop {
        if let Some(v) = check().await {
            return v;
        }
        if tokio::time::Instant::now() >= deadline {
            panic!("timed out after {limit:?} waiting for: {what}");
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// The Ready condition's status of an App object.
pub fn ready(o: &Value) -> bool {
    o["metadata"]["generation"] == o["status"]["observedGeneration"]
        && o["status"]["conditions"]
            .as_array()
            .is_some_and(|c| c.iter().any(|c| c["type"] == "Ready" && c["status"] == "True"))
}

/// The replica statuses of an App object.
pub fn replicas(o: &Value) -> Vec<Value> {
    o["status"]["replicaStatuses"].as_array().cloned().unwrap_or_default()
}

/// Whether a process exists and is not a zombie.
pub fn alive(pid: u32) -> bool {
    capstan_runtime_local::process::proc_start_time(pid).is_some_and(|(_, zombie)| !zombie)
}

/// A GET to 127.0.0.1:port, returning status and body.
pub async fn http_get(port: u16, path: &str) -> Option<(u16, String)> {
    use http_body_util::{BodyExt, Empty};
    let client = hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
        .build_http::<Empty<bytes::Bytes>>();
    let uri: hyper::Uri = format!("http://127.0.0.1:{port}{path}").parse().ok()?;
    let res = tokio::time::timeout(Duration::from_secs(5), client.get(uri)).await.ok()?.ok()?;
    let code = res.status().as_u16();
    let body = res.into_body().collect().await.ok()?.to_bytes();
    Some((code, String::from_utf8_lossy(&body).to_string()))
}
