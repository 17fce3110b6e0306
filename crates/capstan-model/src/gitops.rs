//! The GitOps kinds: `Source` (a Git repository or a local directory), `Sync` (apply a path of a Source) and
//! `Secret` (credentials they reference).

use std::collections::BTreeMap;

use chrono::{DateTime, Utc};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::meta::Condition;
use crate::quantity::parse_duration;
use crate::validate::{check_dns_label, FieldError};

/// Where manifests come from: a Git repository (`url`) or a directory on this machine (`dir`).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct SourceSpec {
    /// The repository: `https://`, `http://`, `ssh://`, `git@host:path`, `git://` or `file://`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub url: Option<String>,
    /// A directory on this machine, watched for changes (for local work). Relative to the manifest's directory.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dir: Option<String>,
    /// What to follow; without it, the branch the remote's HEAD names. A commit wins over the others.
    #[serde(default, rename = "ref", skip_serializing_if = "Option::is_none")]
    pub git_ref: Option<GitRef>,
    /// How often to look for a new revision. Defaults to `1m`.
    #[serde(default = "one_minute")]
    pub interval: String,
    /// The deadline of one fetch. Defaults to `60s`.
    #[serde(default = "sixty_seconds")]
    pub timeout: String,
    /// A Secret in the same namespace: `username` and `password`, or `bearerToken`, for https; `identity`
    /// (a private key) and `known_hosts` for ssh.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub secret_ref: Option<LocalRef>,
    /// Extra paths to leave out of the artifact, in .gitignore syntax (added to the defaults).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ignore: Option<String>,
    /// Stop fetching; the last artifact stays.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub suspend: bool,
}

fn one_minute() -> String {
    "1m".into()
}
fn sixty_seconds() -> String {
    "60s".into()
}

/// The reference a Git Source follows. Exactly one of branch, tag or semver; commit may pin any of them.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct GitRef {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub branch: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tag: Option<String>,
    /// A semver range over the tags, such as `>=1.0.0, <2.0.0`; the highest matching tag wins.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub semver: Option<String>,
    /// A full 40-hex commit id.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub commit: Option<String>,
}

/// A reference to an object in the same namespace.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct LocalRef {
    pub name: String,
}

/// A reference to an object by name, in the referrer's namespace unless one is given.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct NamespacedRef {
    pub name: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub namespace: Option<String>,
}

/// The artifact a Source produced: one checkout of one revision.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct Artifact {
    /// `<branch>@sha1:<commit>`, `<tag>@sha1:<commit>`, `sha1:<commit>`, or `sha256:<digest>` for a directory.
    pub revision: String,
    /// `sha256:<hex>` of the paths, modes and contents in the artifact.
    pub digest: String,
    /// Bytes of file content in the artifact.
    pub size: u64,
    /// Files in the artifact.
    pub files: u64,
    /// Where the checkout is on this machine.
    pub path: String,
    pub last_update_time: DateTime<Utc>,
}

/// What Capstan observed of a Source.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct SourceStatus {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub conditions: Vec<Condition>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub artifact: Option<Artifact>,
    /// Paths left out of the artifact and why (symlinks leaving the repository, submodules).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub warnings: Vec<String>,
    /// Milliseconds the last fetch took.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_fetch_millis: Option<u64>,
    /// The token of the last `capstan sync now` or webhook request handled.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_handled_reconcile_at: Option<String>,
}

/// A Source: a Git repository or a directory, fetched into artifacts.
pub type Source = crate::resource::Object<SourceSpec, SourceStatus>;

/// Applies the manifests at a path of a Source, keeping them applied.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct SyncSpec {
    /// The Source to read.
    pub source_ref: SourceRef,
    /// The directory in the Source, relative to its root. Defaults to `./`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub path: Option<String>,
    /// How often to re-apply (and revert drift). Defaults to `5m`.
    #[serde(default = "five_minutes")]
    pub interval: String,
    /// How soon to retry after a failure. Defaults to `interval`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub retry_interval: Option<String>,
    /// The deadline for applying and for health checks. Defaults to `interval`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timeout: Option<String>,
    /// Delete objects this Sync applied before and that are gone from the Source. Volumes and databases keep
    /// their data unless their own policy says Delete.
    #[serde(default)]
    pub prune: bool,
    /// Wait for every applied object to be Ready.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub wait: bool,
    /// Objects that must be Ready before the Sync is (ignored when `wait` is true).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub health_checks: Vec<ObjectRef>,
    /// Syncs that must be Ready before this one applies.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub depends_on: Vec<NamespacedRef>,
    /// Put every object in this namespace.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub target_namespace: Option<String>,
    /// Stop applying; what runs stays.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub suspend: bool,
    /// Variables for `${VAR}` and `${VAR:=default}` in the manifests.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub substitute: BTreeMap<String, String>,
    /// The webhook receiver at `POST /hooks/<namespace>/<name>`: its Secret holds the shared `token`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub webhook: Option<Webhook>,
    /// Where the objects go: `embedded` (this control plane, the default) or `kubernetes` (a cluster: the objects
    /// are rendered as Kubernetes objects and applied with server-side apply).
    #[serde(default, skip_serializing_if = "SyncTarget::is_embedded")]
    pub target: SyncTarget,
    /// With `target: kubernetes`, the cluster: a kubeconfig in a Secret. Without it, Capstan's own kubeconfig
    /// (`KUBECONFIG`, `~/.kube/config`, or the in-cluster account).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub kube_config: Option<KubeConfigRef>,
    /// With `target: kubernetes`, how Apps' entry points reach the cluster's clients: the Gateway they attach to
    /// by default, or an Ingress class for clusters without Gateway API.
    #[serde(default, skip_serializing_if = "EntryPoints::is_default")]
    pub entry_points: EntryPoints,
}

/// How Apps' entry points are rendered for a cluster. By default an http entry becomes an HTTPRoute and a tcp entry
/// a TCPRoute (on the listener of its port), both attached to the Gateway `capstan` in `capstan-system`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct EntryPoints {
    /// The Gateway entry points attach to unless they name their own. Defaults to `capstan` in `capstan-system`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub gateway: Option<DefaultGateway>,
    /// For clusters without Gateway API: an Ingress of this class (with ingress-nginx's annotations) for an http
    /// entry, and a LoadBalancer Service for a tcp entry, unless the entry names a Gateway.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ingress_class_name: Option<String>,
}

/// The Gateway Apps' entry points attach to by default.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct DefaultGateway {
    pub name: String,
    /// Defaults to `capstan-system`.
    #[serde(default = "capstan_system")]
    pub namespace: String,
    /// The namespace whose pods carry the Gateway's traffic, let through Apps' NetworkPolicies: the Gateway's own
    /// by default (Istio, kgateway), `envoy-gateway-system` for Envoy Gateway.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub proxy_namespace: Option<String>,
}

/// The Gateway's name and namespace when nothing says otherwise.
pub const DEFAULT_GATEWAY: (&str, &str) = ("capstan", "capstan-system");

fn capstan_system() -> String {
    DEFAULT_GATEWAY.1.into()
}

impl Default for DefaultGateway {
    fn default() -> Self {
        DefaultGateway { name: DEFAULT_GATEWAY.0.into(), namespace: DEFAULT_GATEWAY.1.into(), proxy_namespace: None }
    }
}

impl EntryPoints {
    pub fn is_default(&self) -> bool {
        *self == EntryPoints::default()
    }

    /// An Ingress of this class, for clusters without Gateway API.
    pub fn ingress(class: &str) -> EntryPoints {
        EntryPoints { gateway: None, ingress_class_name: Some(class.into()) }
    }

    /// The Gateway entry points attach to when they name none (None: the Ingress is used instead).
    pub fn default_gateway(&self) -> Option<DefaultGateway> {
        match (&self.gateway, &self.ingress_class_name) {
            (Some(g), _) => Some(g.clone()),
            (None, Some(_)) => None,
            (None, None) => Some(DefaultGateway::default()),
        }
    }

    /// What is wrong with these settings, the fields under `path`.
    pub fn validate(&self, path: &str, errors: &mut Vec<FieldError>) {
        if self.gateway.is_some() && self.ingress_class_name.is_some() {
            errors.push(
                FieldError::new(format!("{path}.ingressClassName"), "is given with a gateway")
                    .hint("entry points go either to a Gateway or to an Ingress: keep one of the two"),
            );
        }
        // Gateway and IngressClass names are DNS subdomains (dots allowed); namespaces are labels.
        let subdomain = |v: &str| -> Result<(), String> {
            if v.len() > 253 {
                return Err(format!("`{v}` is longer than 253 characters"));
            }
            v.split('.').try_for_each(|label| {
                check_dns_label(label, 63)
                    .map_err(|_| format!("`{v}` is not a DNS subdomain (lower-case letters, digits, '-' and '.')"))
            })
        };
        if let Some(g) = &self.gateway {
            if let Err(e) = subdomain(&g.name) {
                errors.push(FieldError::new(format!("{path}.gateway.name"), e));
            }
            for (field, ns) in [("namespace", Some(&g.namespace)), ("proxyNamespace", g.proxy_namespace.as_ref())] {
                if let Some(Err(e)) = ns.map(|n| check_dns_label(n, 63)) {
                    errors.push(FieldError::new(format!("{path}.gateway.{field}"), e));
                }
            }
        }
        if let Some(c) = &self.ingress_class_name {
            if let Err(e) = subdomain(c) {
                errors.push(FieldError::new(format!("{path}.ingressClassName"), e));
            }
        }
    }
}

/// Where a Sync applies.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum SyncTarget {
    #[default]
    Embedded,
    Kubernetes,
}

impl SyncTarget {
    pub fn is_embedded(&self) -> bool {
        *self == SyncTarget::Embedded
    }
}

/// A kubeconfig held in a Secret, as Flux's `kubeConfig.secretRef`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct KubeConfigRef {
    pub secret_ref: KubeConfigSecretRef,
    /// The context to use; the kubeconfig's current context by default.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub context: Option<String>,
}

/// The Secret, in the Sync's namespace, and its key holding the kubeconfig (`value` by default, as Flux).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct KubeConfigSecretRef {
    pub name: String,
    #[serde(default = "value_key")]
    pub key: String,
}

fn value_key() -> String {
    "value".into()
}

fn five_minutes() -> String {
    "5m".into()
}

/// The Source a Sync reads.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct SourceRef {
    /// Always `Source`; present for Flux habits.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub kind: Option<String>,
    pub name: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub namespace: Option<String>,
}

/// A reference to an object of any kind.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ObjectRef {
    pub kind: String,
    pub name: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub namespace: Option<String>,
}

/// A push webhook, verified with a shared secret.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Webhook {
    /// A Secret in the Sync's namespace whose key `token` is the webhook secret.
    pub secret_ref: LocalRef,
}

/// One applied object, as kept in a Sync's inventory.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct InventoryEntry {
    pub kind: String,
    pub namespace: String,
    pub name: String,
}

/// One reconcile of a Sync.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct SyncHistoryEntry {
    pub revision: String,
    pub started_at: DateTime<Utc>,
    pub duration_millis: u64,
    /// The Ready reason it ended with.
    pub result: String,
    /// How many reconciles in a row ended this same way.
    pub count: u32,
}

/// What Capstan observed of a Sync.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct SyncStatus {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub conditions: Vec<Condition>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_applied_revision: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_attempted_revision: Option<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub inventory: Vec<InventoryEntry>,
    /// The last 5 reconciles, newest first.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub history: Vec<SyncHistoryEntry>,
    /// The token of the last `capstan sync now` or webhook request handled.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_handled_reconcile_at: Option<String>,
}

/// A Sync: keeps the objects at a path of a Source applied.
pub type Sync = crate::resource::Object<SyncSpec, SyncStatus>;

/// Credentials and other small secrets. Values are kept in Capstan's state and never written to logs, events
/// or status.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct SecretSpec {
    /// Values as plain strings.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub string_data: BTreeMap<String, String>,
    /// Values in base64, as in Kubernetes.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub data: BTreeMap<String, String>,
    /// Kubernetes' Secret type (`Opaque`, `kubernetes.io/tls`, …): kept for the cluster, and `kubernetes.io/tls`
    /// needs `tls.crt` and `tls.key` as it does there.
    #[serde(default, rename = "type", skip_serializing_if = "Option::is_none")]
    pub type_: Option<String>,
}

/// The type of a Secret holding a certificate and its key, as Kubernetes names it.
pub const TLS_SECRET_TYPE: &str = "kubernetes.io/tls";

/// The fields of Kubernetes' own `v1` Secret that Capstan takes (`metadata` aside), each kept in `spec`.
const CORE_SECRET_FIELDS: [&str; 3] = ["data", "stringData", "type"];

/// A Kubernetes `v1` Secret as written (`data`, `stringData` and `type` beside `metadata`) in Capstan's shape, so that
/// one file serves both runtimes; a field Capstan does not take is named.
pub fn from_core_secret(mut map: serde_json::Map<String, serde_json::Value>) -> Result<serde_json::Value, FieldError> {
    let mut spec = serde_json::Map::new();
    for f in CORE_SECRET_FIELDS {
        if let Some(v) = map.remove(f) {
            spec.insert(f.to_string(), v);
        }
    }
    for f in map.keys() {
        if !matches!(f.as_str(), "apiVersion" | "kind" | "metadata") {
            return Err(FieldError::new(f.clone(), "is not a field Capstan takes from a v1 Secret")
                .hint("use data, stringData and type (immutable is not served)"));
        }
    }
    map.insert("apiVersion".into(), crate::meta::API_VERSION.into());
    map.insert("spec".into(), serde_json::Value::Object(spec));
    Ok(serde_json::Value::Object(map))
}

/// A Secret has no status; the unit type keeps the object shape.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct SecretStatus {}

/// A Secret.
pub type Secret = crate::resource::Object<SecretSpec, SecretStatus>;

/// Ready reasons of a Sync, named as Flux names them.
pub mod reason {
    pub const SUCCEEDED: &str = "ReconciliationSucceeded";
    pub const BUILD_FAILED: &str = "BuildFailed";
    pub const HEALTH_CHECK_FAILED: &str = "HealthCheckFailed";
    pub const DEPENDENCY_NOT_READY: &str = "DependencyNotReady";
    pub const PRUNE_FAILED: &str = "PruneFailed";
    pub const APPLY_FAILED: &str = "ReconciliationFailed";
    pub const ARTIFACT_FAILED: &str = "ArtifactFailed";
    pub const SUSPENDED: &str = "Suspended";
    pub const PROGRESSING: &str = "Progressing";
    pub const FETCH_FAILED: &str = "FetchFailed";
    pub const SUCCEEDED_SOURCE: &str = "Succeeded";
}

impl SecretSpec {
    /// A value by key: `stringData` first, then `data` decoded from base64.
    pub fn value(&self, key: &str) -> Option<Vec<u8>> {
        if let Some(v) = self.string_data.get(key) {
            return Some(v.as_bytes().to_vec());
        }
        let encoded = self.data.get(key)?;
        use base64::Engine;
        base64::engine::general_purpose::STANDARD.decode(encoded.trim()).ok()
    }

    /// The keys present, sorted.
    pub fn keys(&self) -> Vec<&str> {
        let mut k: Vec<&str> = self.string_data.keys().chain(self.data.keys()).map(String::as_str).collect();
        k.sort();
        k.dedup();
        k
    }
}

fn check_interval(path: &str, value: &str, errors: &mut Vec<FieldError>) {
    match parse_duration(value) {
        Ok(d) if d.is_zero() => errors.push(FieldError::new(path, "must be longer than zero").hint("for example `1m`")),
        Ok(_) => {}
        Err(e) => errors.push(FieldError::new(path, e).hint("a duration such as `30s`, `5m` or `1h`")),
    }
}

/// Whether `url` is one Capstan can fetch, and why not.
pub fn check_git_url(url: &str) -> Result<(), String> {
    let schemes = ["https://", "http://", "ssh://", "git://", "file://"];
    if schemes.iter().any(|s| url.starts_with(s)) {
        let rest = url.split_once("://").map(|(_, r)| r).unwrap_or("");
        if rest.is_empty() || rest == "/" {
            return Err(format!("`{url}` names no repository"));
        }
        return Ok(());
    }
    // scp-like ssh: user@host:path
    if let Some((host, path)) = url.split_once(':') {
        if host.contains('@') && !host.contains('/') && !path.is_empty() {
            return Ok(());
        }
    }
    Err(format!("`{url}` is not a Git URL Capstan can fetch"))
}

/// Checks a path inside a repository: relative, and never climbing out of it.
pub fn check_inner_path(path: &str) -> Result<(), String> {
    if path.starts_with('/') {
        return Err(format!("`{path}` is absolute; paths are relative to the Source's root"));
    }
    let mut depth: i32 = 0;
    for part in path.split('/') {
        match part {
            "" | "." => {}
            ".." => depth -= 1,
            _ => depth += 1,
        }
        if depth < 0 {
            return Err(format!("`{path}` climbs out of the Source"));
        }
    }
    Ok(())
}

/// Validates a Source spec.
pub fn validate_source(spec: &SourceSpec, errors: &mut Vec<FieldError>) {
    match (&spec.url, &spec.dir) {
        (None, None) => errors.push(
            FieldError::new("spec.url", "a Source needs `url` (a Git repository) or `dir` (a local directory)")
                .hint("for example `url: https://example.com/team/deploy.git`"),
        ),
        (Some(_), Some(_)) => errors.push(
            FieldError::new("spec.dir", "give either `url` or `dir`, not both").hint("one Source reads one place"),
        ),
        (Some(url), None) => {
            if let Err(e) = check_git_url(url) {
                errors.push(
                    FieldError::new("spec.url", e)
                        .hint("use https://, ssh://, git@host:path, git:// or file:// followed by the repository"),
                );
            }
        }
        (None, Some(dir)) => {
            if dir.is_empty() {
                errors.push(FieldError::new("spec.dir", "must not be empty"));
            }
            if spec.git_ref.is_some() {
                errors.push(FieldError::new("spec.ref", "a directory Source has no ref").hint("remove `ref`"));
            }
            if spec.secret_ref.is_some() {
                errors.push(
                    FieldError::new("spec.secretRef", "a directory Source needs no credentials")
                        .hint("remove `secretRef`"),
                );
            }
        }
    }
    check_interval("spec.interval", &spec.interval, errors);
    check_interval("spec.timeout", &spec.timeout, errors);
    if let Some(r) = &spec.git_ref {
        let named = [r.branch.is_some(), r.tag.is_some(), r.semver.is_some()].iter().filter(|x| **x).count();
        if named > 1 {
            errors.push(
                FieldError::new("spec.ref", "give one of branch, tag or semver")
                    .hint("`commit` may be added to pin any of them"),
            );
        }
        if let Some(c) = &r.commit {
            if c.len() != 40 || !c.chars().all(|ch| ch.is_ascii_hexdigit()) {
                errors.push(
                    FieldError::new("spec.ref.commit", format!("`{c}` is not a full commit id"))
                        .hint("write all 40 hexadecimal digits (`git rev-parse HEAD`)"),
                );
            }
        }
        if let Some(s) = &r.semver {
            if let Err(e) = semver::VersionReq::parse(s) {
                errors.push(
                    FieldError::new("spec.ref.semver", format!("`{s}` is not a semver range: {e}"))
                        .hint("for example `>=1.2.0, <2.0.0` or `^1`"),
                );
            }
        }
        for (field, v) in [("branch", &r.branch), ("tag", &r.tag)] {
            if let Some(v) = v {
                if v.is_empty() || v.contains("..") || v.starts_with('-') || v.contains(char::is_whitespace) {
                    errors.push(FieldError::new(format!("spec.ref.{field}"), format!("`{v}` is not a valid ref name")));
                }
            }
        }
    }
    if let Some(s) = &spec.secret_ref {
        if let Err(e) = check_dns_label(&s.name, 253) {
            errors.push(FieldError::new("spec.secretRef.name", e));
        }
    }
}

/// Validates a Sync spec.
pub fn validate_sync(name: &str, namespace: &str, spec: &SyncSpec, errors: &mut Vec<FieldError>) {
    if spec.kube_config.is_some() && spec.target != SyncTarget::Kubernetes {
        errors.push(
            FieldError::new("spec.kubeConfig", "is only read with `target: kubernetes`")
                .hint("add `target: kubernetes`, or remove kubeConfig"),
        );
    }
    if !spec.entry_points.is_default() && spec.target != SyncTarget::Kubernetes {
        errors.push(
            FieldError::new("spec.entryPoints", "is only read with `target: kubernetes`")
                .hint("add `target: kubernetes`, or remove entryPoints (the embedded runtime serves `expose` itself)"),
        );
    }
    spec.entry_points.validate("spec.entryPoints", errors);
    if let Some(k) = &spec.source_ref.kind {
        if k != "Source" && k != "GitRepository" {
            errors.push(
                FieldError::new("spec.sourceRef.kind", format!("`{k}` is not a source kind")).hint("use `Source`"),
            );
        }
    }
    if let Err(e) = check_dns_label(&spec.source_ref.name, 253) {
        errors.push(FieldError::new("spec.sourceRef.name", e));
    }
    if let Some(p) = &spec.path {
        if let Err(e) = check_inner_path(p) {
            errors.push(FieldError::new("spec.path", e).hint("for example `./deploy/production`"));
        }
    }
    check_interval("spec.interval", &spec.interval, errors);
    if let Some(v) = &spec.retry_interval {
        check_interval("spec.retryInterval", v, errors);
    }
    if let Some(v) = &spec.timeout {
        check_interval("spec.timeout", v, errors);
    }
    if let Some(ns) = &spec.target_namespace {
        if let Err(e) = check_dns_label(ns, 63) {
            errors.push(FieldError::new("spec.targetNamespace", e));
        }
    }
    for (i, d) in spec.depends_on.iter().enumerate() {
        if d.name == name && d.namespace.as_deref().unwrap_or(namespace) == namespace {
            errors.push(
                FieldError::new(format!("spec.dependsOn[{i}]"), "a Sync cannot depend on itself")
                    .hint("name another Sync"),
            );
        }
    }
    for (i, h) in spec.health_checks.iter().enumerate() {
        if h.kind.is_empty() || h.name.is_empty() {
            errors.push(FieldError::new(format!("spec.healthChecks[{i}]"), "needs `kind` and `name`"));
        }
    }
    for k in spec.substitute.keys() {
        if k.is_empty() || !k.chars().all(|c| c.is_ascii_alphanumeric() || c == '_') {
            errors.push(
                FieldError::new(format!("spec.substitute.{k}"), "variable names are letters, digits and '_'")
                    .hint("for example `CLUSTER_NAME`"),
            );
        }
    }
}

/// Validates a Secret spec.
pub fn validate_secret(spec: &SecretSpec, errors: &mut Vec<FieldError>) {
    use base64::Engine;
    for (k, v) in &spec.data {
        if base64::engine::general_purpose::STANDARD.decode(v.trim()).is_err() {
            errors.push(
                FieldError::new(format!("spec.data.{k}"), "is not valid base64")
                    .hint("put plain text under `stringData` instead"),
            );
        }
    }
    for k in spec.keys() {
        if k.is_empty() || !k.chars().all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.')) {
            errors.push(FieldError::new(format!("spec.data.{k}"), "keys are letters, digits, '-', '_' and '.'"));
        }
    }
    if spec.type_.as_deref() == Some(TLS_SECRET_TYPE) {
        let keys = spec.keys();
        for needed in ["tls.crt", "tls.key"].into_iter().filter(|k| !keys.contains(k)) {
            errors.push(
                FieldError::new(format!("spec.data.{needed}"), format!("a {TLS_SECRET_TYPE} Secret needs {needed}"))
                    .hint("the certificate chain in tls.crt and its private key in tls.key, both PEM"),
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kubernetes_v1_secrets_are_taken_as_written() {
        let ms = crate::parse_manifests(
            "tls.yaml",
            "apiVersion: v1\nkind: Secret\nmetadata: {name: shop-tls}\ntype: kubernetes.io/tls\nstringData: {tls.crt: C, tls.key: K}\n",
        )
        .expect("a v1 Secret");
        let crate::Resource::Secret(s) = &ms[0].resource else { panic!("a Secret") };
        assert_eq!(s.api_version, crate::meta::API_VERSION, "kept in Capstan's shape");
        assert_eq!(s.spec.type_.as_deref(), Some(TLS_SECRET_TYPE));
        assert_eq!(s.spec.value("tls.key").as_deref(), Some(&b"K"[..]));
        // A tls Secret without its key is refused as Kubernetes refuses it.
        let e = crate::parse_manifests(
            "tls.yaml",
            "apiVersion: v1\nkind: Secret\nmetadata: {name: shop-tls}\ntype: kubernetes.io/tls\ndata: {tls.crt: Qw==}\n",
        )
        .unwrap_err()
        .to_string();
        assert!(e.contains("a kubernetes.io/tls Secret needs tls.key"), "{e}");
        // A field Capstan does not take is named.
        let e = crate::parse_manifests(
            "s.yaml",
            "apiVersion: v1\nkind: Secret\nmetadata: {name: s}\nimmutable: true\nstringData: {a: b}\n",
        )
        .unwrap_err()
        .to_string();
        assert!(e.contains("immutable") && e.contains("is not a field Capstan takes from a v1 Secret"), "{e}");
        // Another core kind under v1 is still refused with the usual hint.
        let e = crate::parse_manifests("a.yaml", "apiVersion: v1\nkind: App\nmetadata: {name: a}\nspec: {}\n")
            .unwrap_err()
            .to_string();
        assert!(e.contains("`v1` is not served here for App"), "{e}");
    }

    #[test]
    fn a_syncs_entry_points_name_a_gateway_or_an_ingress_class_for_a_cluster() {
        let sync = |extra: &str| {
            crate::parse_manifests(
                "sync.yaml",
                &format!("apiVersion: capstan.dev/v1alpha1\nkind: Sync\nmetadata: {{name: s}}\nspec:\n  sourceRef: {{name: r}}\n{extra}"),
            )
        };
        let ok = sync(
            "  target: kubernetes\n  entryPoints: {gateway: {name: edge.gw, proxyNamespace: envoy-gateway-system}}\n",
        )
        .expect("a Gateway");
        let crate::Resource::Sync(s) = &ok[0].resource else { panic!("a Sync") };
        let g = s.spec.entry_points.default_gateway().expect("a Gateway");
        assert_eq!((g.name.as_str(), g.namespace.as_str()), ("edge.gw", "capstan-system"));
        assert_eq!(g.proxy_namespace.as_deref(), Some("envoy-gateway-system"));
        assert_eq!(EntryPoints::default().default_gateway(), Some(DefaultGateway::default()));
        assert_eq!(EntryPoints::ingress("nginx").default_gateway(), None, "an Ingress instead");
        for (extra, field) in [
            ("  entryPoints: {ingressClassName: nginx}\n", "spec.entryPoints"),
            (
                "  target: kubernetes\n  entryPoints: {ingressClassName: nginx, gateway: {name: a}}\n",
                "spec.entryPoints.ingressClassName",
            ),
            ("  target: kubernetes\n  entryPoints: {gateway: {name: Edge}}\n", "spec.entryPoints.gateway.name"),
            (
                "  target: kubernetes\n  entryPoints: {gateway: {name: a, proxyNamespace: a.b}}\n",
                "spec.entryPoints.gateway.proxyNamespace",
            ),
            ("  target: kubernetes\n  entryPoints: {ingressClassName: ''}\n", "spec.entryPoints.ingressClassName"),
            ("  target: kubernetes\n  entryPoints: {ingress: nginx}\n", "ingress"),
        ] {
            let e = sync(extra).map(|_| ()).unwrap_err().to_string();
            assert!(e.contains(field), "{extra}: {e}");
        }
    }

    #[test]
    fn git_urls() {
        for ok in ["https://h/x.git", "ssh://git@h/x", "git@github.com:a/b.git", "git://127.0.0.1/r", "file:///tmp/r"] {
            assert!(check_git_url(ok).is_ok(), "{ok}");
        }
        for bad in ["ftp://h/x", "/tmp/repo", "https://", "host:path"] {
            assert!(check_git_url(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn inner_paths() {
        assert!(check_inner_path("./deploy/prod").is_ok());
        assert!(check_inner_path("a/../b").is_ok());
        assert!(check_inner_path("../x").is_err());
        assert!(check_inner_path("a/../../x").is_err());
        assert!(check_inner_path("/etc").is_err());
    }

    #[test]
    fn secret_values() {
        let mut s = SecretSpec::default();
        s.string_data.insert("password".into(), "pw".into());
        s.data.insert("token".into(), "c2VjcmV0".into());
        assert_eq!(s.value("password").as_deref(), Some(&b"pw"[..]));
        assert_eq!(s.value("token").as_deref(), Some(&b"secret"[..]));
        assert_eq!(s.value("nope"), None);
        let mut errors = Vec::new();
        s.data.insert("bad".into(), "!!!".into());
        validate_secret(&s, &mut errors);
        assert_eq!(errors.len(), 1);
        assert_eq!(errors[0].path, "spec.data.bad");
    }

    #[test]
    fn sync_checks() {
        let spec = SyncSpec {
            source_ref: SourceRef { kind: Some("Bucket".into()), name: "repo".into(), namespace: None },
            path: Some("../outside".into()),
            interval: "5x".into(),
            depends_on: vec![NamespacedRef { name: "apps".into(), namespace: None }],
            substitute: [("BAD-NAME".to_string(), "x".to_string())].into(),
            ..Default::default()
        };
        let mut errors = Vec::new();
        validate_sync("apps", "default", &spec, &mut errors);
        let paths: Vec<&str> = errors.iter().map(|e| e.path.as_str()).collect();
        assert_eq!(
            paths,
            ["spec.sourceRef.kind", "spec.path", "spec.interval", "spec.dependsOn[0]", "spec.substitute.BAD-NAME"]
        );
    }

    #[test]
    fn source_checks() {
        let mut errors = Vec::new();
        let spec = SourceSpec {
            url: Some("https://h/r.git".into()),
            git_ref: Some(GitRef {
                branch: Some("main".into()),
                tag: Some("v1".into()),
                commit: Some("abc".into()),
                semver: None,
            }),
            interval: "1m".into(),
            timeout: "0s".into(),
            ..Default::default()
        };
        validate_source(&spec, &mut errors);
        let paths: Vec<&str> = errors.iter().map(|e| e.path.as_str()).collect();
        assert_eq!(paths, ["spec.timeout", "spec.ref", "spec.ref.commit"]);
    }
}
