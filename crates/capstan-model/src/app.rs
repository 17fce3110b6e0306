//! The `App` kind: a set of replicas of one program, with ports, probes, restarts and resources.

use std::collections::BTreeMap;

use chrono::{DateTime, Utc};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::meta::Condition;

/// Replicas of an App (names, comma-separated) that the load balancer leaves out although they are ready: set by
/// the controller that owns the App (a ModelServer's, for replicas serving other versions than the agreed ones).
pub const OUT_OF_ROTATION_ANNOTATION: &str = "capstan.dev/out-of-rotation";

/// The desired state of an App.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct AppSpec {
    /// How many replicas to run, named `<app>-0`, `<app>-1`, … Defaults to 1.
    #[serde(default = "one")]
    pub replicas: i32,
    /// What to run.
    pub run: RunSpec,
    /// Named ports. Port 0 or absent: Capstan allocates a free port on 127.0.0.1 per replica.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub ports: Vec<PortSpec>,
    #[serde(default, skip_serializing_if = "Probes::is_empty")]
    pub probes: Probes,
    /// `Always` (default), `OnFailure` or `Never`.
    #[serde(default)]
    pub restart_policy: RestartPolicy,
    /// The crash backoff; Kubernetes' schedule when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub restart_backoff: Option<RestartBackoff>,
    /// Seconds between SIGTERM and SIGKILL when a replica stops. Defaults to 30.
    #[serde(default = "thirty", skip_serializing_if = "is_thirty")]
    pub termination_grace_period_seconds: u32,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub resources: Option<Resources>,
    /// Rotation of each replica's captured stdout/stderr.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub logs: Option<LogSpec>,
    /// Entry points served by Capstan's load balancer, one listener each.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub expose: Vec<Expose>,
    /// How replicas move to a new revision.
    #[serde(default, skip_serializing_if = "UpdateSpec::is_default")]
    pub update: UpdateSpec,
    /// Storage that outlives replicas: one directory per replica, or one shared by all; its path is handed to the
    /// process in the environment variable `env`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub volumes: Vec<Volume>,
    /// Where each replica exposes Prometheus metrics: every replica becomes a scrape target, listed at
    /// `/sd/prometheus` for an existing Prometheus.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub metrics: Option<MetricsSpec>,
    /// A Database in this namespace whose connection URL the replicas get.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub database_ref: Option<crate::database::DatabaseRef>,
}

/// A replica's metrics endpoint.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct MetricsSpec {
    /// A port name from spec.ports or a number; defaults to the first port.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub port: Option<PortRef>,
    /// Defaults to `/metrics`.
    #[serde(default = "metrics_path")]
    pub path: String,
    /// `http` (default) or `https`.
    #[serde(default = "http_scheme")]
    pub scheme: String,
    /// How often to scrape. Defaults to `15s`.
    #[serde(default = "fifteen_seconds")]
    pub interval: String,
    /// How long one scrape may take; at most `interval`. Defaults to `10s`, or the interval when that is shorter
    /// (as Prometheus clamps its default scrape_timeout).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timeout: Option<String>,
}

impl MetricsSpec {
    /// The scrape timeout in force: the one given, else `10s` or the interval when that is shorter.
    pub fn effective_timeout(&self) -> String {
        if let Some(t) = &self.timeout {
            return t.clone();
        }
        match crate::quantity::parse_duration(&self.interval) {
            Ok(i) if i < std::time::Duration::from_secs(10) => self.interval.clone(),
            _ => "10s".into(),
        }
    }
}

fn metrics_path() -> String {
    "/metrics".into()
}
fn http_scheme() -> String {
    "http".into()
}
fn fifteen_seconds() -> String {
    "15s".into()
}

/// A directory that outlives the replicas using it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Volume {
    /// A DNS label, unique in the App.
    pub name: String,
    /// `replica`: one directory per ordinal, kept across restarts, updates and scaling down and up again (a
    /// StatefulSet's volumeClaimTemplate on Kubernetes). `shared`: one directory every replica sees (a
    /// ReadWriteMany claim on Kubernetes).
    pub scope: VolumeScope,
    /// The environment variable that carries the directory's absolute path, such as `INDEX_DIR`.
    pub env: String,
    /// `Retain` (default): the data stays when the App is deleted, pruned or scaled down. `Delete`: removed with
    /// the App.
    #[serde(default, skip_serializing_if = "ReclaimPolicy::is_retain")]
    pub reclaim_policy: ReclaimPolicy,
    /// The capacity to ask for on Kubernetes, such as `10Gi`; on this machine, usage above it is a warning.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub size: Option<String>,
}

/// Who a volume belongs to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum VolumeScope {
    Replica,
    Shared,
}

/// What happens to a volume's data when its App goes away.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub enum ReclaimPolicy {
    #[default]
    Retain,
    Delete,
}

impl ReclaimPolicy {
    fn is_retain(&self) -> bool {
        *self == ReclaimPolicy::Retain
    }
}

/// A volume as observed: where it is and how much it holds.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct VolumeStatus {
    pub name: String,
    pub scope: VolumeScope,
    /// The directory (shared), or one per replica ordinal that has one.
    pub paths: Vec<String>,
    /// Bytes in all of them.
    pub used_bytes: u64,
}

fn one() -> i32 {
    1
}
fn thirty() -> u32 {
    30
}
fn is_thirty(v: &u32) -> bool {
    *v == 30
}

/// The program of each replica.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct RunSpec {
    /// The program and its first arguments. A relative path with a `/` is taken from `workingDir`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub command: Vec<String>,
    /// Arguments appended to `command`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub args: Vec<String>,
    /// Extra environment variables. The replica also gets PATH, HOME, LANG, USER and TZ from Capstan,
    /// and PORT, PORT_<NAME>, CAPSTAN_APP, CAPSTAN_NAMESPACE, CAPSTAN_REPLICA and CAPSTAN_ORDINAL.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub env: BTreeMap<String, String>,
    /// The directory the program runs in. Defaults to the directory of the manifest.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub working_dir: Option<String>,
    /// The container image, used on Kubernetes; the embedded runtime runs `command`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub image: Option<String>,
    /// Run as this user of the machine (Capstan must run as root to switch users). On Kubernetes the
    /// securityContext decides.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub user: Option<String>,
    /// The signal that asks the program to stop; `SIGTERM` by default (PostgreSQL, say, wants `SIGINT` for a fast
    /// shutdown). SIGKILL follows after the grace period, whatever this is.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stop_signal: Option<String>,
}

/// Signals a program may be asked to stop with.
pub const STOP_SIGNALS: &[&str] = &["SIGTERM", "SIGINT", "SIGQUIT", "SIGHUP", "SIGUSR1", "SIGUSR2"];

/// A named port.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct PortSpec {
    /// Lower-case letters, digits and '-', at most 15 characters. Exposed as PORT_<NAME>.
    pub name: String,
    /// A fixed port on 127.0.0.1 (only with one replica); 0 or absent allocates one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub port: Option<u16>,
    /// The protocol spoken on it, as a Kubernetes Service port's `appProtocol`: `kubernetes.io/h2c` (or `h2c`) makes
    /// the balancer speak HTTP/2 without TLS to it (gRPC servers); other values are passed to the cluster.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub app_protocol: Option<String>,
}

impl PortSpec {
    /// It speaks HTTP/2 without TLS (prior knowledge).
    pub fn is_h2c(&self) -> bool {
        matches!(self.app_protocol.as_deref(), Some("kubernetes.io/h2c" | "h2c"))
    }
}

impl AppSpec {
    /// The port an entry point's `targetPort` names (the first port without one).
    pub fn target_port_spec(&self, target: &Option<PortRef>) -> Option<&PortSpec> {
        match target {
            Some(PortRef::Name(n)) => self.ports.iter().find(|p| &p.name == n),
            Some(PortRef::Number(n)) => self.ports.iter().find(|p| p.port == Some(*n)),
            None => self.ports.first(),
        }
    }
}

/// The first port given to a named port that has no number on Kubernetes (pods have their own addresses, so
/// numbers are free); the same numbers name an App's ports in a Gateway API backendRef on this machine.
pub const FIRST_PORT: u16 = 8080;

impl AppSpec {
    /// The Service (and container) port of each named port on Kubernetes: its number, or 8080, 8081, … in order
    /// for the unnumbered ones. A backendRef's `port` means the same on both runtimes.
    pub fn service_ports(&self) -> std::collections::BTreeMap<String, u16> {
        let mut next = FIRST_PORT;
        self.ports
            .iter()
            .map(|p| {
                let n = p.port.filter(|n| *n != 0).unwrap_or_else(|| {
                    let n = next;
                    next += 1;
                    n
                });
                (p.name.clone(), n)
            })
            .collect()
    }
}

/// A port given by its name in `spec.ports` or by number.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(untagged)]
pub enum PortRef {
    Number(u16),
    Name(String),
}

impl std::fmt::Display for PortRef {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            PortRef::Number(n) => write!(f, "{n}"),
            PortRef::Name(s) => f.write_str(s),
        }
    }
}

/// Startup, readiness and liveness probes with Kubernetes' semantics.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Probes {
    /// Gates the other probes until it succeeds once; failing it restarts the replica.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub startup: Option<Probe>,
    /// Failing it takes the replica out of rotation (NotReady).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub readiness: Option<Probe>,
    /// Failing it restarts the replica.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub liveness: Option<Probe>,
}

impl Probes {
    pub fn is_empty(&self) -> bool {
        self.startup.is_none() && self.readiness.is_none() && self.liveness.is_none()
    }
}

/// One probe: exactly one of `http`, `tcp` or `exec`, and its timing.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Probe {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub http: Option<HttpProbe>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tcp: Option<TcpProbe>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub exec: Option<ExecProbe>,
    /// Defaults to 0.
    #[serde(default)]
    pub initial_delay_seconds: u32,
    /// Defaults to 10.
    #[serde(default = "ten")]
    pub period_seconds: u32,
    /// Defaults to 1.
    #[serde(default = "one_u")]
    pub timeout_seconds: u32,
    /// Defaults to 1; must be 1 for startup and liveness probes.
    #[serde(default = "one_u")]
    pub success_threshold: u32,
    /// Defaults to 3.
    #[serde(default = "three")]
    pub failure_threshold: u32,
}

fn ten() -> u32 {
    10
}
fn one_u() -> u32 {
    1
}
fn three() -> u32 {
    3
}

/// An HTTP GET on 127.0.0.1; a status from 200 to 399 is a success.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct HttpProbe {
    /// Defaults to `/`.
    #[serde(default = "slash")]
    pub path: String,
    pub port: PortRef,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub headers: BTreeMap<String, String>,
}

fn slash() -> String {
    "/".into()
}

/// A TCP connect to 127.0.0.1.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct TcpProbe {
    pub port: PortRef,
}

/// A command run with the replica's environment; exit code 0 is a success.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ExecProbe {
    pub command: Vec<String>,
}

/// When a replica whose process exited is started again.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub enum RestartPolicy {
    #[default]
    Always,
    OnFailure,
    Never,
}

/// Crash backoff: the first restart is immediate, then `initialSeconds`, doubling up to `maxSeconds`;
/// a replica that ran `resetAfterSeconds` without crashing starts the schedule again.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct RestartBackoff {
    /// Defaults to 10.
    #[serde(default = "ten_f")]
    pub initial_seconds: f64,
    /// Defaults to 300.
    #[serde(default = "three_hundred")]
    pub max_seconds: f64,
    /// Defaults to 600.
    #[serde(default = "six_hundred")]
    pub reset_after_seconds: f64,
}

impl Default for RestartBackoff {
    fn default() -> Self {
        RestartBackoff { initial_seconds: 10.0, max_seconds: 300.0, reset_after_seconds: 600.0 }
    }
}

fn ten_f() -> f64 {
    10.0
}
fn three_hundred() -> f64 {
    300.0
}
fn six_hundred() -> f64 {
    600.0
}

/// Resource limits per replica.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Resources {
    /// For example `512Mi`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub memory: Option<String>,
    /// For example `1` or `500m`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cpu: Option<String>,
}

/// Size-based rotation of captured output.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct LogSpec {
    /// Size at which the current file is rotated. Defaults to `10Mi`.
    #[serde(default = "ten_mi")]
    pub max_size: String,
    /// Files kept in all, the current one included (as the kubelet's `containerLogMaxFiles`). Defaults to 3.
    #[serde(default = "three")]
    pub max_files: u32,
}

impl Default for LogSpec {
    fn default() -> Self {
        LogSpec { max_size: ten_mi(), max_files: 3 }
    }
}

fn ten_mi() -> String {
    "10Mi".into()
}

/// What Capstan observed of an App.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct AppStatus {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
    #[serde(default)]
    pub conditions: Vec<Condition>,
    /// The revision (hash of the process-shaping spec) replicas should run.
    #[serde(default)]
    pub revision: String,
    pub replicas: i32,
    pub ready_replicas: i32,
    pub updated_replicas: i32,
    /// Restarts of all replicas since the App was created.
    pub restarts: u32,
    #[serde(default)]
    pub replica_statuses: Vec<ReplicaStatus>,
    /// Limits that this runtime cannot enforce, entry points that cannot listen, and why.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub warnings: Vec<String>,
    /// The App's volumes on this machine.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub volumes: Vec<VolumeStatus>,
    /// The revision every replica ran when the App was last fully Ready.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub current_revision: Option<String>,
    /// The revision replicas are moving to: the spec's, or the current one after a rollback.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub update_revision: Option<String>,
    /// The latest update and how it went.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rollout: Option<RolloutStatus>,
    /// Where the App is reachable through the load balancer.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub endpoints: Vec<String>,
}

/// The latest update of an App.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct RolloutStatus {
    /// The revision being rolled out.
    pub revision: String,
    /// The revision it started from, if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub from_revision: Option<String>,
    pub phase: RolloutPhase,
    pub started_at: DateTime<Utc>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub finished_at: Option<DateTime<Utc>>,
    #[serde(default)]
    pub message: String,
}

/// Where an update stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub enum RolloutPhase {
    Progressing,
    Complete,
    /// Stopped; what runs keeps running.
    Failed,
    /// Failed, and every replica went back to the last revision that was fully Ready.
    RolledBack,
}

/// What Capstan observed of one replica.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ReplicaStatus {
    /// `<app>-<ordinal>`.
    pub name: String,
    pub ordinal: u32,
    pub phase: ReplicaPhase,
    pub ready: bool,
    /// The App revision this replica runs.
    pub revision: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pid: Option<u32>,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub ports: BTreeMap<String, u16>,
    pub restarts: u32,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub started_at: Option<DateTime<Utc>>,
    /// One CamelCase word when not plainly running (CrashLoopBackOff, StartFailed, …).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_exit: Option<ExitInfo>,
}

/// The life-cycle phase of a replica.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub enum ReplicaPhase {
    /// Not started yet, or waiting out a crash backoff.
    Pending,
    /// The process runs.
    Running,
    /// SIGTERM was sent; waiting for the process to exit.
    Terminating,
    /// Exited with code 0 and will not be restarted.
    Succeeded,
    /// Exited with failure and will not be restarted, or could not be started.
    Failed,
}

impl std::fmt::Display for ReplicaPhase {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        std::fmt::Debug::fmt(self, f)
    }
}

/// How a process ended.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ExitInfo {
    /// The exit code, when the process exited by itself.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub code: Option<i32>,
    /// The signal that ended it, when one did.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub signal: Option<i32>,
    pub finished_at: DateTime<Utc>,
    /// `Completed`, `Error`, `Signaled`, `OOMKilled` or `Unknown`.
    pub reason: String,
}

impl ExitInfo {
    /// Whether the process ended well (exit code 0).
    pub fn success(&self) -> bool {
        self.code == Some(0)
    }
}

/// One entry point of the load balancer: a listener that spreads traffic over the Ready replicas.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Expose {
    /// A name for metrics and status; defaults to the protocol (`http`, `tcp`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    /// The port to listen on.
    pub port: u16,
    /// The address to listen on. Defaults to 127.0.0.1.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub address: Option<String>,
    /// `http` (layer 7, the default) or `tcp` (passthrough, for SSH and other protocols).
    #[serde(default)]
    pub protocol: ExposeProtocol,
    /// The replicas' port to send traffic to, by name or number. Defaults to the first of `spec.ports`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub target_port: Option<PortRef>,
    /// How new sessions pick a replica.
    #[serde(default)]
    pub balance: Balance,
    /// Keeps a client on one replica.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sticky: Option<Sticky>,
    /// Pass websocket upgrades through (http only). Defaults to true.
    #[serde(default = "yes")]
    pub websockets: bool,
    /// Largest request body accepted (http only), such as `250Mi`. Defaults to `250Mi`.
    #[serde(default = "body_default")]
    pub max_body_size: String,
    /// Client connections held at once. When full, the connection idle longest is closed to make room, or the
    /// new one is answered 503 if none is idle (tcp connections are never closed for room). Defaults to no cap
    /// of its own: all listeners share a budget set by Capstan's open-file limit.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_connections: Option<u32>,
    #[serde(default)]
    pub timeouts: Timeouts,
    /// Retry idempotent requests (GET, HEAD, OPTIONS, PUT, DELETE) on another replica when the connection
    /// broke after the request was sent. Requests whose connection could not be made are always retried.
    #[serde(default = "yes")]
    pub retry_idempotent: bool,
    /// How long a replica that leaves keeps serving its in-flight requests before it is stopped.
    #[serde(default = "thirty", skip_serializing_if = "is_thirty")]
    pub drain_seconds: u32,
    /// On Kubernetes, the Gateway API Gateway this entry attaches to (an http entry by an HTTPRoute, a tcp entry by
    /// a TCPRoute), and the host names it serves. Without it, the cluster's default Gateway (the Sync's
    /// `entryPoints`; `capstan-system/capstan` unless set), or an Ingress where the cluster is set to use one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub gateway: Option<GatewayRef>,
}

/// The Gateway an entry point attaches to on Kubernetes.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct GatewayRef {
    /// The Gateway's name. Without it, the cluster's default Gateway (and its namespace).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    /// Defaults to the App's namespace when `name` is given.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub namespace: Option<String>,
    /// One listener of the Gateway.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub section_name: Option<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub hostnames: Vec<String>,
}

fn yes() -> bool {
    true
}

impl Expose {
    /// An http entry point on `port` with every default, as `expose: [{port: N}]` gives.
    pub fn http(port: u16) -> Expose {
        Expose {
            name: None,
            port,
            address: None,
            protocol: ExposeProtocol::default(),
            target_port: None,
            balance: Balance::default(),
            sticky: None,
            websockets: yes(),
            max_body_size: body_default(),
            max_connections: None,
            timeouts: Timeouts::default(),
            retry_idempotent: yes(),
            drain_seconds: thirty(),
            gateway: None,
        }
    }
}
fn body_default() -> String {
    "250Mi".into()
}

/// The protocol of an entry point.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum ExposeProtocol {
    #[default]
    Http,
    Tcp,
}

/// How a new session picks a replica.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub enum Balance {
    #[default]
    RoundRobin,
    LeastRequests,
}

/// Session affinity: exactly one of `cookie` or `clientIP`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Sticky {
    /// Capstan sets its own cookie naming the replica (http only).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cookie: Option<StickyCookie>,
    /// The client's address picks the replica.
    #[serde(default, rename = "clientIP", skip_serializing_if = "Option::is_none")]
    pub client_ip: Option<StickyClientIp>,
}

/// The routing cookie.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct StickyCookie {
    /// Defaults to `CAPSTAN_ROUTE`.
    #[serde(default = "cookie_name")]
    pub name: String,
    /// Seconds the cookie lives; a session cookie when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_age: Option<u32>,
}

fn cookie_name() -> String {
    "CAPSTAN_ROUTE".into()
}

/// Affinity by client address.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct StickyClientIp {
    /// Seconds an idle client stays pinned. Defaults to 10800, as Kubernetes' ClientIP affinity.
    #[serde(default = "three_hours")]
    pub timeout_seconds: u32,
}

fn three_thousand_six_hundred() -> u32 {
    3600
}

fn three_hours() -> u32 {
    10800
}

/// Timeouts of an entry point, in seconds.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Timeouts {
    /// Connecting to a replica. Defaults to 5.
    #[serde(default = "five")]
    pub connect_seconds: u32,
    /// From sending a request to the response headers. Defaults to 60.
    #[serde(default = "sixty")]
    pub request_seconds: u32,
    /// A websocket or TCP tunnel with no byte either way for this long is closed. Defaults to 3600 (an hour, as
    /// ingress-nginx advises for websockets); 0 never closes an idle tunnel.
    #[serde(default = "three_thousand_six_hundred")]
    pub idle_seconds: u32,
}

impl Default for Timeouts {
    fn default() -> Self {
        Timeouts { connect_seconds: 5, request_seconds: 60, idle_seconds: 3600 }
    }
}

fn five() -> u32 {
    5
}
fn sixty() -> u32 {
    60
}

/// How replicas move to a new revision.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct UpdateSpec {
    /// `Ordered` (highest ordinal first, like a StatefulSet; the default) or `Surge` (start an extra replica
    /// first, so capacity never drops).
    #[serde(default)]
    pub strategy: UpdateStrategy,
    /// Replicas that may be unavailable at once during an Ordered update. Defaults to 1.
    #[serde(default = "one_u")]
    pub max_unavailable: u32,
    /// Extra replicas a Surge update may start. Defaults to 1.
    #[serde(default = "one_u")]
    pub max_surge: u32,
    /// Seconds a new replica must stay Ready before the update moves on. Defaults to 0.
    #[serde(default)]
    pub min_ready_seconds: u32,
    /// Seconds an update may take before it is declared failed. Defaults to 600.
    #[serde(default = "six_hundred_u")]
    pub progress_deadline_seconds: u32,
    /// Only ordinals at or above it are updated (a canary); the others keep their revision. Defaults to 0.
    #[serde(default)]
    pub partition: u32,
    /// On failure, return to the last revision that was fully Ready.
    #[serde(default)]
    pub auto_rollback: bool,
    /// Revisions remembered for `capstan rollout history|undo`. Defaults to 10.
    #[serde(default = "ten")]
    pub revision_history_limit: u32,
}

fn six_hundred_u() -> u32 {
    600
}

impl Default for UpdateSpec {
    fn default() -> Self {
        UpdateSpec {
            strategy: UpdateStrategy::Ordered,
            max_unavailable: 1,
            max_surge: 1,
            min_ready_seconds: 0,
            progress_deadline_seconds: 600,
            partition: 0,
            auto_rollback: false,
            revision_history_limit: 10,
        }
    }
}

impl UpdateSpec {
    pub fn is_default(&self) -> bool {
        *self == UpdateSpec::default()
    }
}

/// The update strategy.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub enum UpdateStrategy {
    #[default]
    Ordered,
    Surge,
}
