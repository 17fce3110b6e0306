//! Helpers for end-to-end tests: an in-process control plane in a temporary data directory, manifests for the
//! test app, and bounded polling.

pub mod acme_front;
pub mod chromium;
pub mod git;
pub mod pebble;
pub mod tls;
pub mod web;

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

/// Whether a test that needs more than git, the capstan binaries and loopback may run: true when
/// `CAPSTAN_HEAVY_TESTS=1` (scripts/test.sh sets it). Otherwise it says on stderr which test is skipped and what it
/// needs, and returns false; a heavy test begins with `if !heavy("PostgreSQL") { return; }`.
pub fn heavy(needs: &str) -> bool {
    if std::env::var("CAPSTAN_HEAVY_TESTS").as_deref() == Ok("1") {
        return true;
    }
    // libtest names each test's thread after the test. Written to stderr directly, not with eprintln!, so that the
    // test harness does not capture it: plain `cargo test` shows what it skipped.
    let thread = std::thread::current();
    let test = thread.name().unwrap_or("a test");
    let line = format!("skipped {test}: needs {needs} (set CAPSTAN_HEAVY_TESTS=1, as scripts/test.sh does)\n");
    let _ = std::io::Write::write_all(&mut std::io::stderr(), line.as_bytes());
    false
}

/// A TCP port on 127.0.0.1 that was free a moment ago.
pub fn free_port() -> u16 {
    let l = std::net::TcpListener::bind("127.0.0.1:0").expect("bind a free port");
    l.local_addr().expect("local address").port()
}

/// A Gateway `name` of class `capstan` on 127.0.0.1 with one listener, named after its protocol in lower case, on
/// `port`; no trailing `---`.
pub fn gateway_yaml(name: &str, port: u16, protocol: &str) -> String {
    format!(
        "apiVersion: gateway.networking.k8s.io/v1
kind: Gateway
metadata: {{name: {name}}}
spec:
  gatewayClassName: capstan
  addresses: [{{value: 127.0.0.1}}]
  listeners: [{{name: {}, port: {port}, protocol: {protocol}}}]
",
        protocol.to_ascii_lowercase()
    )
}

/// The condition of `kind` among an object's (or a parent's) `conditions`, or null.
pub fn condition<'a>(conditions: &'a serde_json::Value, kind: &str) -> &'a serde_json::Value {
    conditions.as_array().and_then(|c| c.iter().find(|c| c["type"] == kind)).unwrap_or(&serde_json::Value::Null)
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

/// Runs the `capstan` command line on the data directory `data` (its server and token, nothing from the
/// environment) and waits for it.
pub fn cli_at(data: &Path, args: &[&str]) -> std::process::Output {
    std::process::Command::new(bin("capstan-e2e-cli"))
        .args(args)
        .env("CAPSTAN_DATA", data)
        .env_remove("CAPSTAN_SERVER")
        .env_remove("CAPSTAN_TOKEN")
        .output()
        .expect("run capstan")
}

/// A control plane in a temporary directory, with a client.
pub struct TestPlane {
    pub plane: Option<ControlPlane>,
    pub client: Client,
    pub dir: tempfile::TempDir,
    /// Holds the store's encryption key, apart from the data directory (the default would be beside it, in /tmp).
    pub keys: tempfile::TempDir,
    /// The key source the plane was started with (and is started with again on restart).
    pub key: capstan_api::keys::KeySource,
    /// How its API serves (plain HTTP on the loopback unless a test asks for TLS), kept across restarts.
    pub tls: capstan_api::tls::ApiTls,
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

    /// A control plane in a temporary directory, its configuration changed by `configure` first.
    pub async fn start_with(configure: impl FnOnce(&mut PlaneConfig)) -> TestPlane {
        let dir = tempfile::tempdir().expect("tempdir");
        let mut cfg = PlaneConfig::new(dir.path().to_path_buf(), "127.0.0.1:0".parse().expect("addr"));
        cfg.tls = capstan_api::tls::ApiTls::Off;
        configure(&mut cfg);
        Self::start_config(dir, cfg).await
    }

    async fn start_at(dir: tempfile::TempDir, data_dir: PathBuf) -> TestPlane {
        let mut cfg = PlaneConfig::new(data_dir, "127.0.0.1:0".parse().expect("addr"));
        // In-process tests speak plain HTTP on the loopback; the TLS tests ask for it.
        cfg.tls = capstan_api::tls::ApiTls::Off;
        Self::start_config(dir, cfg).await
    }

    async fn start_config(dir: tempfile::TempDir, mut cfg: PlaneConfig) -> TestPlane {
        let keys = tempfile::tempdir().expect("tempdir");
        if cfg.encryption_key == capstan_api::keys::KeySource::beside(&cfg.data_dir) {
            cfg.encryption_key = capstan_api::keys::KeySource::File(keys.path().join("state.key"));
        }
        let (key, tls) = (cfg.encryption_key.clone(), cfg.tls.clone());
        let plane = ControlPlane::start(cfg).await.expect("control plane starts");
        let client = Client::with_ca(plane.url(), plane.token(), plane.ca_file()).expect("a client");
        TestPlane { plane: Some(plane), client, dir, keys, key, tls }
    }

    pub fn plane(&self) -> &ControlPlane {
        self.plane.as_ref().expect("running")
    }

    /// Runs the `capstan` command line against this plane (its URL and token) and waits for it.
    pub fn cli(&self, args: &[&str]) -> std::process::Output {
        let mut cmd = std::process::Command::new(bin("capstan-e2e-cli"));
        cmd.args(args)
            .env("CAPSTAN_SERVER", self.plane().url())
            .env("CAPSTAN_TOKEN", self.plane().token())
            .env("CAPSTAN_CONFIG", self.keys.path().join("client-config"))
            .env_remove("CAPSTAN_CONTEXT");
        match self.plane().ca_file() {
            Some(ca) => cmd.env("CAPSTAN_CA_FILE", ca),
            None => cmd.env_remove("CAPSTAN_CA_FILE"),
        };
        cmd.output().expect("the capstan CLI runs")
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
    /// Stops this plane as Ctrl-C would (every replica stopped gracefully) and starts a new one on the same data
    /// directory, waiting until the first has let go of the state file. The temporary directory moves over.
    pub async fn restart(mut self) -> TestPlane {
        let data = self.plane().data_dir().to_path_buf();
        if let Some(p) = self.plane.take() {
            p.shutdown(false).await;
        }
        let mut tries = 0;
        let plane = loop {
            let mut cfg = PlaneConfig::new(data.clone(), "127.0.0.1:0".parse().expect("addr"));
            cfg.encryption_key = self.key.clone();
            cfg.tls = self.tls.clone();
            match ControlPlane::start(cfg).await {
                Ok(p) => break p,
                Err(e) if tries < 150 => {
                    tries += 1;
                    if tries % 50 == 0 {
                        eprintln!("waiting for the state file: {e}");
                    }
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
                Err(e) => panic!("second start: {e}"),
            }
        };
        let dir = std::mem::replace(&mut self.dir, tempfile::tempdir().expect("tempdir"));
        let keys = std::mem::replace(&mut self.keys, tempfile::tempdir().expect("tempdir"));
        let (key, tls) = (self.key.clone(), self.tls.clone());
        let client = Client::with_ca(plane.url(), plane.token(), plane.ca_file()).expect("a client");
        TestPlane { client, plane: Some(plane), dir, keys, key, tls }
    }

    pub async fn stop(mut self) {
        if let Some(p) = self.plane.take() {
            p.shutdown(false).await;
        }
    }

    /// Stops the plane and hands back its data directory, to look at what it left on disk.
    pub async fn stop_keeping_data(mut self) -> tempfile::TempDir {
        if let Some(p) = self.plane.take() {
            p.shutdown(false).await;
        }
        std::mem::replace(&mut self.dir, tempfile::tempdir().expect("tempdir"))
    }
}

impl Drop for TestPlane {
    /// A test that failed before `stop` must not leave replicas behind: kill their process groups.
    fn drop(&mut self) {
        if let Some(p) = self.plane.take() {
            for pid in p.runtime().pids() {
                let _ =
                    nix::sys::signal::killpg(nix::unistd::Pid::from_raw(pid as i32), nix::sys::signal::Signal::SIGKILL);
            }
        }
    }
}

/// A child process that is stopped when dropped: SIGINT (a `capstan up` then stops its replicas), SIGKILL after
/// 15 s. Tests that fail half-way leave nothing running.
pub struct Guarded(pub std::process::Child);

impl std::ops::Deref for Guarded {
    type Target = std::process::Child;
    fn deref(&self) -> &Self::Target {
        &self.0
    }
}

impl std::ops::DerefMut for Guarded {
    fn deref_mut(&mut self) -> &mut Self::Target {
        &mut self.0
    }
}

impl Drop for Guarded {
    fn drop(&mut self) {
        if matches!(self.0.try_wait(), Ok(None)) {
            let pid = nix::unistd::Pid::from_raw(self.0.id() as i32);
            let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGINT);
            let deadline = std::time::Instant::now() + Duration::from_secs(15);
            while matches!(self.0.try_wait(), Ok(None)) && std::time::Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(50));
            }
            let _ = self.0.kill();
            let _ = self.0.wait();
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

/// Every regular file under `dir` (recursively) whose bytes contain `needle` (FIFOs and sockets are skipped: a
/// read of a FIFO would wait for a writer).
pub fn files_holding(dir: &std::path::Path, needle: &str) -> Vec<String> {
    let mut found = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for entry in std::fs::read_dir(&d).into_iter().flatten().flatten() {
            let path = entry.path();
            let Ok(kind) = entry.file_type() else { continue };
            if kind.is_dir() {
                stack.push(path);
            } else if kind.is_file()
                && std::fs::read(&path).is_ok_and(|b| b.windows(needle.len()).any(|w| w == needle.as_bytes()))
            {
                found.push(path.display().to_string());
            }
        }
    }
    found
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

/// Every live process whose environment holds `marker` (`NAME=value`): replicas and their children.
pub fn processes_with_env(marker: &str) -> Vec<u32> {
    let mut out = Vec::new();
    for e in std::fs::read_dir("/proc").into_iter().flatten().flatten() {
        let Ok(pid) = e.file_name().to_string_lossy().parse::<u32>() else {
            continue;
        };
        if let Ok(env) = std::fs::read(format!("/proc/{pid}/environ")) {
            if env.split(|b| *b == 0).any(|kv| kv == marker.as_bytes()) && alive(pid) {
                out.push(pid);
            }
        }
    }
    out
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

/// A PUT of `body` to 127.0.0.1:`port``path`; the status and body, or None when no answer came.
pub async fn http_put(port: u16, path: &str, body: &str) -> Option<(u16, String)> {
    use http_body_util::{BodyExt, Full};
    let client = hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
        .build_http::<Full<bytes::Bytes>>();
    let req = hyper::Request::put(format!("http://127.0.0.1:{port}{path}"))
        .body(Full::new(bytes::Bytes::from(body.to_string())))
        .ok()?;
    let res = tokio::time::timeout(Duration::from_secs(5), client.request(req)).await.ok()?.ok()?;
    let code = res.status().as_u16();
    let body = res.into_body().collect().await.ok()?.to_bytes();
    Some((code, String::from_utf8_lossy(&body).to_string()))
}

/// One request of a load run.
#[derive(Debug, Clone)]
pub struct Shot {
    pub started: tokio::time::Instant,
    pub finished: tokio::time::Instant,
    /// The status, or the error when no response came.
    pub outcome: Result<u16, String>,
    pub body: String,
}

/// Sends requests at a fixed rate (open loop: a slow answer never delays the next request) until `stop` is
/// set or `max` has passed. With `keep_alive` false every request opens its own connection.
pub async fn open_loop(
    url: String,
    method: hyper::Method,
    rate_per_sec: u32,
    keep_alive: bool,
    stop: tokio::sync::watch::Receiver<bool>,
    max: Duration,
) -> Vec<Shot> {
    use http_body_util::Full;
    let mut builder = hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new());
    if !keep_alive {
        builder.pool_max_idle_per_host(0);
    }
    let client = builder.build_http::<Full<bytes::Bytes>>();
    open_loop_with(client, url, method, rate_per_sec, keep_alive, stop, max, Vec::new()).await
}

/// As [`open_loop`], with the client given (an HTTPS one, say) and `headers` added to every request.
#[allow(clippy::too_many_arguments)] // the load's whole description, each told apart by name at the call
pub async fn open_loop_with<C>(
    client: hyper_util::client::legacy::Client<C, http_body_util::Full<bytes::Bytes>>,
    url: String,
    method: hyper::Method,
    rate_per_sec: u32,
    keep_alive: bool,
    stop: tokio::sync::watch::Receiver<bool>,
    max: Duration,
    headers: Vec<(&'static str, String)>,
) -> Vec<Shot>
where
    C: hyper_util::client::legacy::connect::Connect + Clone + Send + Sync + 'static,
{
    use http_body_util::{BodyExt, Full};
    let headers = std::sync::Arc::new(headers);
    let mut tick = tokio::time::interval(Duration::from_secs_f64(1.0 / f64::from(rate_per_sec.max(1))));
    let end = tokio::time::Instant::now() + max;
    let mut tasks = Vec::new();
    while !*stop.borrow() && tokio::time::Instant::now() < end {
        tick.tick().await;
        let client = client.clone();
        let url = url.clone();
        let has_body = method == hyper::Method::POST || method == hyper::Method::PUT;
        let method = method.clone();
        let headers = headers.clone();
        let n = tasks.len();
        tasks.push(tokio::spawn(async move {
            let started = tokio::time::Instant::now();
            let mut req = hyper::Request::builder().method(method).uri(url);
            for (k, v) in headers.iter() {
                req = req.header(*k, v);
            }
            if !keep_alive {
                req = req.header("connection", "close");
            }
            // Only requests that carry data have a body: a GET stays replayable.
            let body = if has_body { bytes::Bytes::from(format!("payload {n}")) } else { bytes::Bytes::new() };
            let req = req.body(Full::new(body)).expect("request");
            let outcome = tokio::time::timeout(Duration::from_secs(10), client.request(req)).await;
            let (outcome, body) = match outcome {
                Err(_) => (Err("timed out".to_string()), String::new()),
                Ok(Err(e)) => (Err(format!("{e:?}")), String::new()),
                Ok(Ok(res)) => {
                    let code = res.status().as_u16();
                    match res.into_body().collect().await {
                        Ok(b) => (Ok(code), String::from_utf8_lossy(&b.to_bytes()).to_string()),
                        Err(e) => (Err(format!("body: {e}")), String::new()),
                    }
                }
            };
            Shot { started, finished: tokio::time::Instant::now(), outcome, body }
        }));
    }
    let mut shots = Vec::new();
    for t in tasks {
        if let Ok(s) = t.await {
            shots.push(s);
        }
    }
    shots
}

/// The shots that did not end in a 2xx response.
pub fn failures(shots: &[Shot]) -> Vec<&Shot> {
    shots.iter().filter(|s| !matches!(s.outcome, Ok(c) if (200..300).contains(&c))).collect()
}

/// A GET with the API token to Capstan's Prometheus API; the status and the JSON body.
pub async fn capstan_query(tp: &TestPlane, path_and_query: &str) -> Option<(u16, serde_json::Value)> {
    use http_body_util::{BodyExt, Empty};
    let client = hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
        .build_http::<Empty<bytes::Bytes>>();
    let req = hyper::Request::get(format!("{}/prometheus{path_and_query}", tp.plane().url()))
        .header("Authorization", format!("Bearer {}", tp.plane().token()))
        .body(Empty::new())
        .ok()?;
    let res = tokio::time::timeout(Duration::from_secs(10), client.request(req)).await.ok()?.ok()?;
    let code = res.status().as_u16();
    let body = res.into_body().collect().await.ok()?.to_bytes();
    Some((code, serde_json::from_slice(&body).ok()?))
}

pub fn enc(q: &str) -> String {
    q.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => (b as char).to_string(),
            _ => format!("%{b:02X}"),
        })
        .collect()
}

/// The result of an instant PromQL query to Capstan's Prometheus API (empty when it fails).
pub async fn query_result(tp: &TestPlane, q: &str) -> Vec<serde_json::Value> {
    match capstan_query(tp, &format!("/api/v1/query?query={}", enc(q))).await {
        Some((200, v)) => v["data"]["result"].as_array().cloned().unwrap_or_default(),
        _ => Vec::new(),
    }
}
