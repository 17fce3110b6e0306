//! The registry of kinds and the `Resource` enum that holds an object of any kind.

use schemars::JsonSchema;
use serde::{de::DeserializeOwned, Deserialize, Serialize};
use serde_json::Value;
use sha2::{Digest, Sha256};

use crate::alerting::{
    validate_alert_rule, validate_escalation_policy, AlertRuleSpec, AlertRuleStatus, EscalationPolicySpec,
    EscalationPolicyStatus,
};
use crate::app::{AppSpec, AppStatus};
use crate::database::{validate_database, Database};
use crate::gateway::{validate_gateway, validate_http_route, Gateway, HttpRoute, GATEWAY_API_VERSION};
use crate::gitops::{validate_secret, validate_source, validate_sync, Secret, Source, Sync};
use crate::manifest::closest;
use crate::meta::{ObjectKey, ObjectMeta, API_VERSION};
use crate::reference_grant::{validate_reference_grant, ReferenceGrant, REFERENCE_GRANT_API_VERSION};
use crate::serving::{validate_model_server, ModelServerSpec, ModelServerStatus};
use crate::stream_route::{
    validate_tcp_route, validate_tls_route, TcpRoute, TlsRoute, TCP_ROUTE_API_VERSION, TLS_ROUTE_API_VERSION,
};
use crate::training::{validate_training_job, TrainingJobSpec, TrainingJobStatus};
use crate::validate::{validate_app, validate_meta, FieldError};

/// An object of one kind: `apiVersion`, `kind`, `metadata`, `spec` and `status`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Object<S, T> {
    /// `capstan.dev/v1alpha1` for Capstan's kinds; the standard's own for the standard kinds it implements
    /// (`gateway.networking.k8s.io/v1` for Gateway API).
    pub api_version: String,
    pub kind: String,
    pub metadata: ObjectMeta,
    pub spec: S,
    /// Written by Capstan only; ignored in manifests.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub status: Option<T>,
}

/// An App: replicas of a program.
pub type App = Object<AppSpec, AppStatus>;

/// A TrainingJob: a distributed TensorFlow training run.
pub type TrainingJob = Object<TrainingJobSpec, TrainingJobStatus>;

/// A ModelServer: a model's versions served with the TensorFlow Serving REST API.
pub type ModelServer = Object<ModelServerSpec, ModelServerStatus>;

/// An AlertRule: a PromQL condition that opens alerts.
pub type AlertRule = Object<AlertRuleSpec, AlertRuleStatus>;

/// An EscalationPolicy: who is told about incidents, level by level.
pub type EscalationPolicy = Object<EscalationPolicySpec, EscalationPolicyStatus>;

/// Declares every kind once: its variant, its typed object, its plural, whether a cluster serves it as a custom
/// resource, and how it is validated beyond its types.
/// From this one table come `Kind` (with `ALL` in apply order, names, plurals and schemas), `Resource` (with
/// decoding, validation and access to the typed object whatever its kind) — so a new kind is one line here, and
/// every `match` on `Kind` elsewhere fails to compile until it handles the kind.
macro_rules! kinds {
    ($( $(#[$doc:meta])* $([cfg($cfg:meta)])? $kind:ident($ty:ty), $plural:literal, api: $api:expr, crd: $crd:literal, namespaced: $namespaced:literal, |$o:ident, $e:ident| $validate:expr; )*) => {
        /// The kinds Capstan knows (a standard's kind keeps its spelling: `HTTPRoute`).
        #[allow(clippy::upper_case_acronyms)]
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
        pub enum Kind {
            $( $(#[$doc])* $(#[cfg($cfg)])? $kind, )*
        }

        impl Kind {
            /// Every kind, in the order objects are applied.
            pub const ALL: &'static [Kind] = &[$( $(#[cfg($cfg)])? Kind::$kind, )*];

            pub fn name(self) -> &'static str {
                match self {
                    $( $(#[cfg($cfg)])? Kind::$kind => stringify!($kind), )*
                }
            }

            /// The plural used in API paths and `capstan get`.
            pub fn plural(self) -> &'static str {
                match self {
                    $( $(#[cfg($cfg)])? Kind::$kind => $plural, )*
                }
            }

            /// The `apiVersion` its objects are written with: Capstan's own, or the standard's it implements.
            pub fn api_version(self) -> &'static str {
                match self {
                    $( $(#[cfg($cfg)])? Kind::$kind => $api, )*
                }
            }

            /// Whether a cluster serves it as Capstan's own custom resource (a Secret is the core Secret there).
            pub fn is_custom_resource(self) -> bool {
                match self {
                    $( $(#[cfg($cfg)])? Kind::$kind => $crd, )*
                }
            }

            /// Whether its objects live in a namespace; a cluster-scoped kind's (ClusterIssuer) are stored under
            /// the empty namespace and any `metadata.namespace` written is dropped, as a Kubernetes API server
            /// drops it.
            pub fn namespaced(self) -> bool {
                match self {
                    $( $(#[cfg($cfg)])? Kind::$kind => $namespaced, )*
                }
            }

            fn root_schema(self) -> schemars::Schema {
                match self {
                    $( $(#[cfg($cfg)])? Kind::$kind => schemars::schema_for!($ty), )*
                }
            }
        }

        /// An object of any kind.
        // Resources are decoded a batch at a time and never kept in bulk, so the size of the largest variant does
        // not matter.
        #[allow(clippy::large_enum_variant, clippy::upper_case_acronyms)]
        #[derive(Debug, Clone, PartialEq)]
        pub enum Resource {
            $( $(#[cfg($cfg)])? $kind($ty), )*
        }

        /// Runs `$body` with `$obj` bound to the typed object inside a `Resource`, whatever its kind.
        macro_rules! each {
            ($r:expr, $obj:ident => $body:expr) => {
                match $r {
                    $( $(#[cfg($cfg)])? Resource::$kind($obj) => $body, )*
                }
            };
        }

        impl Resource {
            pub fn kind(&self) -> Kind {
                match self {
                    $( $(#[cfg($cfg)])? Resource::$kind(_) => Kind::$kind, )*
                }
            }

            fn decode_as(kind: Kind, value: Value) -> Result<Resource, FieldError> {
                match kind {
                    $( $(#[cfg($cfg)])? Kind::$kind => decode::<$ty>(value).map(Resource::$kind), )*
                }
            }

            fn validate_kind(&self, errors: &mut Vec<FieldError>) {
                match self {
                    $( $(#[cfg($cfg)])? Resource::$kind($o) => { let $e = errors; $validate } )*
                }
            }
        }
    };
}

kinds! {
    /// Values kept apart from specs (credentials, tokens).
    Secret(Secret), "secrets", api: API_VERSION, crd: false, namespaced: true, |o, e| validate_secret(&o.spec, e);
    /// Non-secret values read by key (CA bundles).
    ConfigMap(crate::config_map::ConfigMap), "configmaps", api: API_VERSION, crd: false, namespaced: true, |o, e| crate::config_map::validate_config_map(&o.spec, e);
    /// Where manifests come from: a Git repository or a directory.
    Source(Source), "sources", api: API_VERSION, crd: true, namespaced: true, |o, e| validate_source(&o.spec, e);
    /// What to apply from a Source, and how.
    Sync(Sync), "syncs", api: API_VERSION, crd: true, namespaced: true, |o, e| validate_sync(&o.metadata.name, o.metadata.namespace(), &o.spec, e);
    /// A PostgreSQL database on this machine (or CloudNativePG on Kubernetes).
    Database(Database), "databases", api: API_VERSION, crd: true, namespaced: true, |o, e| validate_database(&o.metadata.name, &o.spec, e);
    /// Replicas of a program.
    App(App), "apps", api: API_VERSION, crd: true, namespaced: true, |o, e| validate_app(&o.spec, e);
    /// A distributed TensorFlow training run.
    TrainingJob(TrainingJob), "trainingjobs", api: API_VERSION, crd: true, namespaced: true, |o, e| validate_training_job(&o.metadata.name, &o.spec, e);
    /// A model's versions served with the TensorFlow Serving REST API.
    ModelServer(ModelServer), "modelservers", api: API_VERSION, crd: true, namespaced: true, |o, e| validate_model_server(&o.metadata.name, &o.spec, e);
    /// A PromQL condition that opens alerts.
    AlertRule(AlertRule), "alertrules", api: API_VERSION, crd: true, namespaced: true, |o, e| validate_alert_rule(&o.spec, e);
    /// Who is told about incidents, level by level.
    EscalationPolicy(EscalationPolicy), "escalationpolicies", api: API_VERSION, crd: true, namespaced: true, |o, e| validate_escalation_policy(&o.spec, e);
    /// Gateway API's Gateway: listeners on ports where routes attach.
    Gateway(Gateway), "gateways", api: GATEWAY_API_VERSION, crd: false, namespaced: true, |o, e| validate_gateway(&o.spec, e);
    /// Gateway API's HTTPRoute: requests matched by host, path, headers, query and method, sent to Apps.
    HTTPRoute(HttpRoute), "httproutes", api: GATEWAY_API_VERSION, crd: false, namespaced: true, |o, e| validate_http_route(&o.spec, e);
    /// Gateway API's TLSRoute: TLS connections sent to Apps by their SNI name.
    TLSRoute(TlsRoute), "tlsroutes", api: TLS_ROUTE_API_VERSION, crd: false, namespaced: true, |o, e| validate_tls_route(&o.spec, e);
    /// Gateway API's TCPRoute: every connection on a listener sent to Apps.
    TCPRoute(TcpRoute), "tcproutes", api: TCP_ROUTE_API_VERSION, crd: false, namespaced: true, |o, e| validate_tcp_route(&o.spec, e);
    /// Gateway API's ReferenceGrant: a namespace's consent to be referenced from another.
    ReferenceGrant(ReferenceGrant), "referencegrants", api: REFERENCE_GRANT_API_VERSION, crd: false, namespaced: true, |o, e| validate_reference_grant(&o.spec, e);
    /// Gateway API's BackendTLSPolicy: the Gateway speaks TLS to these Services (Apps), checking their certificates.
    BackendTLSPolicy(crate::backend_tls_policy::BackendTlsPolicy), "backendtlspolicies", api: crate::backend_tls_policy::BACKEND_TLS_POLICY_API_VERSION, crd: false, namespaced: true, |o, e| crate::backend_tls_policy::validate_backend_tls_policy(&o.spec, e);
    /// cert-manager's Issuer: signs the Certificates of its namespace (self-signed, or by a CA held in a Secret).
    Issuer(crate::certificate::Issuer), "issuers", api: crate::certificate::CERT_MANAGER_API_VERSION, crd: false, namespaced: true, |o, e| crate::certificate::validate_issuer(&o.spec, e);
    /// cert-manager's ClusterIssuer: an Issuer for the Certificates of every namespace (its Secrets are read from
    /// the `cert-manager` namespace, cert-manager's cluster resource namespace).
    ClusterIssuer(crate::certificate::ClusterIssuer), "clusterissuers", api: crate::certificate::CERT_MANAGER_API_VERSION, crd: false, namespaced: false, |o, e| crate::certificate::validate_issuer(&o.spec, e);
    /// cert-manager's Certificate: a key and certificate kept in a Secret and renewed before they expire.
    Certificate(crate::certificate::Certificate), "certificates", api: crate::certificate::CERT_MANAGER_API_VERSION, crd: false, namespaced: true, |o, e| crate::certificate::validate_certificate(&o.spec, e);
    /// A throwaway kind that exists only to prove the "adding a kind" checklist (feature `throwaway-kind`).
    [cfg(feature = "throwaway-kind")]
    Widget(crate::widget::Widget), "widgets", api: API_VERSION, crd: false, namespaced: true, |o, e| crate::widget::validate_widget(&o.spec, e);
}

impl Kind {
    /// Finds a kind by name, plural or short name, in any case.
    pub fn parse(s: &str) -> Option<Kind> {
        let l = s.to_ascii_lowercase();
        Kind::ALL.iter().copied().find(|k| l == k.name().to_ascii_lowercase() || l == k.plural())
    }

    /// Other `apiVersion`s its objects are taken in, kept as written: a standard's kind in the versions clusters
    /// serve it in (TLSRoute left the experimental channel's `v1alpha2` for `v1` in Gateway API v1.5; TCPRoute is
    /// on its way).
    pub fn also_served(self) -> &'static [&'static str] {
        match self {
            Kind::TLSRoute => &["gateway.networking.k8s.io/v1alpha2", "gateway.networking.k8s.io/v1alpha3"],
            Kind::TCPRoute => &["gateway.networking.k8s.io/v1"],
            Kind::ReferenceGrant => &["gateway.networking.k8s.io/v1beta1", "gateway.networking.k8s.io/v1alpha2"],
            Kind::BackendTLSPolicy => &["gateway.networking.k8s.io/v1alpha3"],
            _ => &[],
        }
    }

    /// Names to suggest from when a kind is unknown.
    pub fn names() -> Vec<&'static str> {
        Kind::ALL.iter().map(|k| k.name()).collect()
    }

    /// The JSON Schema of objects of this kind.
    pub fn schema(self) -> Value {
        let mut schema = self.root_schema();
        schema.insert("title".into(), Value::String(self.name().into()));
        schema.insert(
            "$id".into(),
            Value::String(format!("https://capstan.dev/schemas/v1alpha1/{}.json", self.plural())),
        );
        schema.to_value()
    }
}

impl std::fmt::Display for Kind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

impl Resource {
    pub fn meta(&self) -> &ObjectMeta {
        each!(self, o => &o.metadata)
    }

    pub fn meta_mut(&mut self) -> &mut ObjectMeta {
        each!(self, o => &mut o.metadata)
    }

    /// The `apiVersion` as written (one of its kind's [`Kind::api_version`] and [`Kind::also_served`]).
    pub fn api_version(&self) -> &str {
        each!(self, o => &o.api_version)
    }

    /// Its namespace: the one written or `default`, and the empty namespace for a cluster-scoped kind.
    pub fn namespace(&self) -> &str {
        if self.kind().namespaced() {
            self.meta().namespace()
        } else {
            ""
        }
    }

    pub fn key(&self) -> ObjectKey {
        ObjectKey::new(self.kind().name(), self.namespace(), &self.meta().name)
    }

    /// The object as JSON, status included.
    pub fn to_value(&self) -> Value {
        each!(self, o => serde_json::to_value(o)).unwrap_or(Value::Null)
    }

    /// Decodes an object from JSON, naming the field at fault when it does not fit its kind.
    pub fn from_value(value: Value) -> Result<Resource, FieldError> {
        let Value::Object(map) = &value else {
            return Err(FieldError::new("", "a manifest must be a mapping")
                .hint("start with `apiVersion: capstan.dev/v1alpha1` and `kind: App`"));
        };
        let kind = match map.get("kind") {
            None => {
                return Err(FieldError::new("kind", "is missing").hint(format!("one of: {}", Kind::names().join(", "))))
            }
            Some(Value::String(k)) => match Kind::ALL.iter().find(|x| x.name() == k) {
                Some(kind) => *kind,
                None => {
                    let hint = match closest(k, &Kind::names()) {
                        Some(s) => format!("did you mean `{s}`?"),
                        None => format!("known kinds: {}", Kind::names().join(", ")),
                    };
                    return Err(FieldError::new("kind", format!("unknown kind `{k}`")).hint(hint));
                }
            },
            Some(v) => return Err(FieldError::new("kind", format!("`{}` is not a kind name", show(v)))),
        };
        if kind == Kind::Secret && map.get("apiVersion").and_then(Value::as_str) == Some("v1") {
            // Kubernetes' own Secret, as written for a cluster.
            return Resource::decode_as(kind, crate::gitops::from_core_secret(map.clone())?);
        }
        if kind == Kind::ConfigMap && map.get("apiVersion").and_then(Value::as_str) == Some("v1") {
            return Resource::decode_as(kind, crate::config_map::from_core_config_map(map.clone())?);
        }
        let api = kind.api_version();
        let mut value = value;
        if !kind.namespaced() {
            // A Kubernetes API server drops the namespace of a cluster-scoped object; so does Capstan (a
            // kustomization's `namespace:` sets it on every object).
            if let Some(meta) = value.get_mut("metadata").and_then(Value::as_object_mut) {
                meta.remove("namespace");
            }
        }
        match value.get("apiVersion") {
            None => return Err(FieldError::new("apiVersion", "is missing").hint(format!("add `apiVersion: {api}`"))),
            Some(Value::String(v)) if v == api || kind.also_served().contains(&v.as_str()) => {}
            Some(v) => {
                let also: String = kind.also_served().iter().map(|a| format!(" or `{a}`")).collect();
                return Err(FieldError::new("apiVersion", format!("`{}` is not served here for {kind}", show(v)))
                    .hint(format!("use `{api}`{also}")));
            }
        }
        Resource::decode_as(kind, value)
    }

    /// Semantic checks beyond the types.
    pub fn validate(&self) -> Vec<FieldError> {
        let mut errors = Vec::new();
        validate_meta(self.meta(), &mut errors);
        self.validate_kind(&mut errors);
        errors
    }

    /// The spec as JSON.
    pub fn spec_value(&self) -> Value {
        each!(self, o => serde_json::to_value(&o.spec)).unwrap_or(Value::Null)
    }

    /// Drops the status (for manifests, where users do not write it).
    pub fn clear_status(&mut self) {
        each!(self, o => o.status = None)
    }
}

/// The namespace of an object given as JSON: the one written or `default`, and the empty namespace for a
/// cluster-scoped kind (see [`Kind::namespaced`]).
pub fn namespace_of(obj: &Value) -> &str {
    let cluster = obj.get("kind").and_then(Value::as_str).and_then(Kind::parse).is_some_and(|k| !k.namespaced());
    if cluster {
        return "";
    }
    obj.get("metadata").and_then(|m| m.get("namespace")).and_then(Value::as_str).unwrap_or(crate::DEFAULT_NAMESPACE)
}

/// Every problem of a manifest as `field: message`, whether decoding or validation finds it (for tests).
#[cfg(test)]
pub(crate) fn problems(v: Value) -> Vec<String> {
    match Resource::from_value(v) {
        Ok(r) => r.validate().into_iter().map(|e| format!("{}: {}", e.path, e.message)).collect(),
        Err(e) => vec![format!("decode {}: {}", e.path, e.message)],
    }
}

fn show(v: &Value) -> String {
    match v {
        Value::String(s) => s.clone(),
        other => other.to_string(),
    }
}

fn decode<T: DeserializeOwned>(value: Value) -> Result<T, FieldError> {
    serde_path_to_error::deserialize::<_, T>(value).map_err(|e| {
        let path = match e.path().to_string() {
            p if p == "." => String::new(),
            p => p,
        };
        explain(path, &e.inner().to_string())
    })
}

/// Turns serde's message into one written for people, with a hint.
fn explain(path: String, msg: &str) -> FieldError {
    let ticks: Vec<&str> = msg.split('`').skip(1).step_by(2).collect();
    if msg.starts_with("unknown field") {
        let field = ticks.first().copied().unwrap_or("");
        let expected: Vec<&str> = ticks.iter().skip(1).copied().collect();
        let full = if path.is_empty() {
            field.to_string()
        } else if path.ends_with(field) {
            path.clone()
        } else {
            format!("{path}.{field}")
        };
        let hint = match closest(field, &expected) {
            Some(s) => format!("did you mean `{s}`?"),
            None if expected.is_empty() => "remove it".to_string(),
            None => format!("known fields here: {}", expected.join(", ")),
        };
        return FieldError::new(full, format!("unknown field `{field}`")).hint(hint);
    }
    if msg.starts_with("missing field") {
        let field = ticks.first().copied().unwrap_or("");
        let full = if path.is_empty() { field.to_string() } else { format!("{path}.{field}") };
        return FieldError::new(full, "is required");
    }
    if msg.contains("untagged enum PortRef") {
        return FieldError::new(path, "must be a port name from spec.ports or a port number")
            .hint("for example `port: http` or `port: 8080`");
    }
    if msg.starts_with("unknown variant ") {
        let variant = ticks.first().copied().unwrap_or("");
        let expected: Vec<&str> = ticks.iter().skip(1).copied().collect();
        let hint = match closest(variant, &expected) {
            Some(s) => format!("did you mean `{s}`?"),
            None => format!("one of: {}", expected.join(", ")),
        };
        return FieldError::new(path, format!("`{variant}` is not allowed here")).hint(hint);
    }
    if msg.starts_with("invalid type") || msg.starts_with("invalid value") {
        let hint = if msg.contains("expected u16") {
            Some("a port number from 1 to 65535")
        } else if msg.contains("expected u32") {
            Some("a whole number, 0 or more")
        } else if msg.contains("expected i32") {
            Some("a whole number")
        } else if msg.contains("expected a sequence") {
            Some("write a list, for example `[a, b]`")
        } else if msg.contains("expected a string") {
            Some("quote the value, for example \"1\"")
        } else {
            None
        };
        let mut fe = FieldError::new(path, msg.to_string());
        if let Some(h) = hint {
            fe = fe.hint(h);
        }
        return fe;
    }
    FieldError::new(path, msg.to_string())
}

/// A short stable hash of a JSON value (sha256 of its canonical text, 10 hex digits).
pub fn hash_value(v: &Value) -> String {
    let canonical = canonical_json(v);
    let digest = Sha256::digest(canonical.as_bytes());
    digest.iter().take(5).map(|b| format!("{b:02x}")).collect()
}

fn canonical_json(v: &Value) -> String {
    match v {
        Value::Object(o) => {
            let mut keys: Vec<&String> = o.keys().collect();
            keys.sort();
            let inner: Vec<String> =
                keys.into_iter().map(|k| format!("{}:{}", Value::String(k.clone()), canonical_json(&o[k]))).collect();
            format!("{{{}}}", inner.join(","))
        }
        Value::Array(a) => format!("[{}]", a.iter().map(canonical_json).collect::<Vec<_>>().join(",")),
        other => other.to_string(),
    }
}

/// The annotation `capstan rollout restart` sets; it is part of the revision, so changing it replaces replicas.
pub const RESTARTED_AT_ANNOTATION: &str = "capstan.dev/restartedAt";

/// The revision of a spec: a hash of everything that shapes the processes — all but `replicas`, `expose`,
/// `update` and `metrics`, which change how many replicas run and how traffic, updates and scrapes reach them, not
/// the replicas.
pub fn app_revision(spec: &AppSpec) -> String {
    revision_with(spec, None, None)
}

/// Set in memory (never stored) by the App controller to the digest of the credentials behind `spec.databaseRef`;
/// it is part of the revision, so new credentials or a new endpoint roll the App out.
pub const DATABASE_CREDENTIALS_ANNOTATION: &str = "capstan.dev/database-credentials";

/// The revision of an App: its spec's, plus the restart annotation and the credentials digest when set.
pub fn revision_of(app: &App) -> String {
    let a = &app.metadata.annotations;
    revision_with(
        &app.spec,
        a.get(RESTARTED_AT_ANNOTATION).map(String::as_str),
        a.get(DATABASE_CREDENTIALS_ANNOTATION).map(String::as_str),
    )
}

fn revision_with(spec: &AppSpec, restarted_at: Option<&str>, credentials: Option<&str>) -> String {
    let mut v = serde_json::to_value(spec).unwrap_or(Value::Null);
    if let Value::Object(m) = &mut v {
        m.remove("replicas");
        m.remove("expose");
        m.remove("update");
        m.remove("metrics");
        if let Some(t) = restarted_at {
            m.insert("restartedAt".into(), Value::String(t.to_string()));
        }
        if let Some(d) = credentials {
            m.insert("databaseCredentials".into(), Value::String(d.to_string()));
        }
    }
    hash_value(&v)
}
