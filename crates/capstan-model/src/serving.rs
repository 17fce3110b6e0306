//! The `ModelServer` kind: a model's numbered versions served with the TensorFlow Serving REST API by replicas
//! behind Capstan's load balancer.

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::meta::Condition;
use crate::validate::FieldError;

/// Which versions are served (TF Serving's model_version_policy). Default: the latest one.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", rename_all_fields = "camelCase", deny_unknown_fields)]
pub enum VersionPolicySpec {
    /// The `numVersions` highest versions.
    Latest {
        #[serde(default = "one")]
        num_versions: usize,
    },
    /// Every version found.
    All {},
    /// Exactly these versions.
    Specific { versions: Vec<u64> },
}

fn one() -> usize {
    1
}

impl Default for VersionPolicySpec {
    fn default() -> Self {
        VersionPolicySpec::Latest { num_versions: 1 }
    }
}

/// Where the load balancer listens for this model.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ModelExpose {
    pub port: u16,
    /// Defaults to 127.0.0.1.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub address: Option<String>,
}

/// A served model.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ModelServerSpec {
    /// The name in `/v1/models/<model>`; defaults to the object's name.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub model: Option<String>,
    /// The directory of numbered version directories, each holding `model.onnx`. Relative to the manifest.
    pub base_path: String,
    #[serde(default)]
    pub version_policy: VersionPolicySpec,
    /// How often the base path is looked at for new versions. Defaults to 1 (TF Serving's default).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub poll_seconds: Option<f64>,
    /// Server replicas. Defaults to 1.
    #[serde(default = "one_replica")]
    pub replicas: i32,
    /// The load balancer's listener for the REST API.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub expose: Option<ModelExpose>,
    /// Replicas follow the load: `replicas` is then the starting count.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub autoscaling: Option<Autoscaling>,
    /// The container image holding the `capstan` binary, used on Kubernetes; the embedded runtime runs this
    /// Capstan's own binary.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub image: Option<String>,
}

/// The arguments of `capstan serve-model` for a ModelServer whose versions are in `base` (without the program).
pub fn serve_model_args(spec: &ModelServerSpec, model: &str, base: &str) -> Vec<String> {
    let mut args = vec![
        "serve-model".to_string(),
        "--model-name".into(),
        model.to_string(),
        "--model-base-path".into(),
        base.to_string(),
        "--poll-seconds".into(),
        spec.poll_seconds.unwrap_or(1.0).to_string(),
    ];
    match &spec.version_policy {
        VersionPolicySpec::Latest { num_versions } => {
            args.extend(["--version-policy".into(), "latest".into(), "--num-versions".into(), num_versions.to_string()])
        }
        VersionPolicySpec::All {} => args.extend(["--version-policy".into(), "all".into()]),
        VersionPolicySpec::Specific { versions } => args.extend([
            "--version-policy".into(),
            "specific".into(),
            "--versions".into(),
            versions.iter().map(u64::to_string).collect::<Vec<_>>().join(","),
        ]),
    }
    args
}

/// Scaling on load, as a HorizontalPodAutoscaler: replicas × (observed / target), within bounds.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Autoscaling {
    pub min_replicas: i32,
    pub max_replicas: i32,
    /// Predict requests per second each replica should take.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub target_requests_per_second: Option<f64>,
    /// The 95th percentile of predict latency to stay under, in milliseconds.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub target_p95_milliseconds: Option<f64>,
    /// Time after a scaling before scaling down again. Defaults to 60.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cooldown_seconds: Option<u64>,
}

/// The autoscaler's last look at the servers.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct AutoscalingStatus {
    pub desired_replicas: i32,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub requests_per_second: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub p95_milliseconds: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_scale_time: Option<chrono::DateTime<chrono::Utc>>,
    /// The counters read last (predict requests, latency buckets) and when, to take rates from.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sample_time: Option<chrono::DateTime<chrono::Utc>>,
    #[serde(default)]
    pub sample_requests: f64,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub sample_buckets: Vec<(f64, f64)>,
}

fn one_replica() -> i32 {
    1
}

/// What Capstan observed of a ModelServer.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ModelServerStatus {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub conditions: Vec<Condition>,
    /// The App running the servers.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub app_name: Option<String>,
    /// Where to send requests: `http://<address>:<port>/v1/models/<model>`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub url: Option<String>,
    #[serde(default)]
    pub ready_replicas: i32,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub autoscaling: Option<AutoscalingStatus>,
    /// The versions every replica should serve: the best set some replica serves (the most versions the policy
    /// wants, then the highest). Only replicas serving exactly these get traffic.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub agreed_versions: Vec<u64>,
    /// Each version wanted or served, with its state and why it failed to load.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub versions: Vec<ModelVersionStatus>,
    /// What each replica serves.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub replicas: Vec<ModelReplicaStatus>,
}

/// One version of a ModelServer's model, across its replicas.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ModelVersionStatus {
    pub version: u64,
    /// TF Serving's state, the furthest any replica reached: `AVAILABLE`, `LOADING`, `START`, `UNLOADING` or `END`.
    pub state: String,
    /// Whether the version policy wants it, given what the base path holds.
    #[serde(default)]
    pub wanted: bool,
    /// The replicas serving it.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub replicas: Vec<String>,
    /// Why it could not be loaded (on the replicas named first).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

/// One replica of a ModelServer: the versions it serves.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ModelReplicaStatus {
    pub name: String,
    pub versions: Vec<u64>,
    /// It is ready and serves the agreed versions, so it gets traffic.
    pub agrees: bool,
    /// It passes its readiness probe.
    #[serde(default)]
    pub ready: bool,
}

/// The App that runs a ModelServer's replicas.
pub fn server_app(name: &str) -> String {
    format!("{name}-server")
}

/// Checks a ModelServer beyond its types.
pub fn validate_model_server(name: &str, spec: &ModelServerSpec, errors: &mut Vec<FieldError>) {
    if server_app(name).len() > 53 {
        errors.push(
            FieldError::new("metadata.name", "is too long").hint("at most 46 characters: the App is `<name>-server`"),
        );
    }
    if spec.base_path.trim().is_empty() {
        errors.push(
            FieldError::new("spec.basePath", "is empty")
                .hint("the directory that holds 1/, 2/, … each with a model.onnx"),
        );
    }
    if let Some(m) = &spec.model {
        if m.is_empty() || !m.chars().all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c)) {
            errors.push(
                FieldError::new("spec.model", format!("{m:?} is not a usable model name"))
                    .hint("letters, digits, '-', '_' and '.'"),
            );
        }
    }
    if spec.replicas < 0 {
        errors.push(FieldError::new("spec.replicas", "must not be negative"));
    }
    if let Some(p) = spec.poll_seconds {
        if !(p.is_finite() && p > 0.0) {
            errors.push(FieldError::new("spec.pollSeconds", format!("{p} is not a positive number of seconds")));
        }
    }
    if let Some(a) = &spec.autoscaling {
        if a.min_replicas < 1 || a.max_replicas < a.min_replicas {
            errors.push(
                FieldError::new(
                    "spec.autoscaling",
                    format!("minReplicas {} and maxReplicas {} do not make a range", a.min_replicas, a.max_replicas),
                )
                .hint("1 <= minReplicas <= maxReplicas"),
            );
        }
        if a.target_requests_per_second.is_none() && a.target_p95_milliseconds.is_none() {
            errors.push(
                FieldError::new("spec.autoscaling", "no target")
                    .hint("set targetRequestsPerSecond, targetP95Milliseconds, or both"),
            );
        }
        for (f, v) in [
            ("targetRequestsPerSecond", a.target_requests_per_second),
            ("targetP95Milliseconds", a.target_p95_milliseconds),
        ] {
            if v.is_some_and(|v| !(v.is_finite() && v > 0.0)) {
                errors.push(FieldError::new(format!("spec.autoscaling.{f}"), "must be a positive number"));
            }
        }
    }
    match &spec.version_policy {
        VersionPolicySpec::Latest { num_versions: 0 } => {
            errors.push(FieldError::new("spec.versionPolicy.latest.numVersions", "must be at least 1"))
        }
        VersionPolicySpec::Specific { versions } if versions.is_empty() => errors.push(
            FieldError::new("spec.versionPolicy.specific.versions", "is empty")
                .hint("list the version numbers to serve"),
        ),
        _ => {}
    }
}
