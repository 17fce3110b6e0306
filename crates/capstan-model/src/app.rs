//! The `App` kind: a set of replicas of one program, with ports, probes, restarts and resources.

use std::collections::BTreeMap;

use chrono::{DateTime, Utc};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::meta::Condition;

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
}

/// A named port.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct PortSpec {
    /// Lower-case letters, digits and '-', at most 15 characters. Exposed as PORT_<NAME>.
    pub name: String,
    /// A fixed port on 127.0.0.1 (only with one replica); 0 or absent allocates one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub port: Option<u16>,
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
    /// Rotated files kept besides the current one. Defaults to 3.
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
    /// Limits that this runtime cannot enforce, and why.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub warnings: Vec<String>,
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
