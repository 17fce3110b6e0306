//! The edge to a cluster: connect from a kubeconfig, apply with server-side apply in dependency order, keep an
//! inventory per Sync in a ConfigMap, prune what left Git, create missing credentials, and wait for health.

use std::collections::BTreeSet;
use std::path::Path;
use std::time::Duration;

use kube::api::{Api, ApiResource, DeleteParams, DynamicObject, GroupVersionKind, Patch, PatchParams, PostParams};
use kube::config::{KubeConfigOptions, Kubeconfig};
use kube::{Client, Config};
use serde_json::{json, Value};
use tokio::time::Instant;

use crate::plan::{health, plan, prunable, Health, ObjectRef, PlanError, MANAGED_BY};
use crate::render::FIELD_MANAGER;

/// Why the cluster could not be used at all.
#[derive(Debug, thiserror::Error)]
pub enum ClusterError {
    #[error("cannot use the kubeconfig {path}: {message}\n  hint: pass --kubeconfig FILE, set KUBECONFIG, or run inside a cluster")]
    Kubeconfig { path: String, message: String },
    #[error("cannot reach the cluster at {url}: {message}\n  hint: check the kubeconfig's current context and that the API server is up")]
    Unreachable { url: String, message: String },
    #[error("{0}")]
    Request(Failure),
    #[error(transparent)]
    Plan(#[from] PlanError),
}

/// Why one request failed, with the API server's code and reason, and what to do.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Failure {
    pub code: u16,
    pub reason: String,
    pub message: String,
    pub hint: Option<String>,
    pub retryable: bool,
}

impl std::fmt::Display for Failure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self.code {
            0 => write!(f, "{}", self.message)?,
            code => write!(f, "{} ({code}): {}", self.reason, self.message)?,
        }
        if let Some(h) = &self.hint {
            write!(f, "\n  hint: {h}")?;
        }
        Ok(())
    }
}

/// A kube error as a failure, with a hint by status code.
pub(crate) fn failure(e: kube::Error, r: Option<&ObjectRef>) -> Failure {
    match e {
        kube::Error::Api(s) => {
            let kind = r.map(|r| r.kind.as_str()).unwrap_or("object");
            let hint = match (s.code, s.reason.as_str()) {
                (409, "Conflict") if s.message.starts_with("Apply failed") => Some(
                    "another field manager owns these fields; change them there, or take them over with --force-conflicts"
                        .to_string(),
                ),
                (401, _) => Some("the kubeconfig's credentials were refused: log in again or fix the token".into()),
                (403, _) => Some("the account lacks an RBAC grant for this; see deploy/kubernetes/rbac.yaml".into()),
                (404, _) => Some(format!("the cluster does not serve {kind}: install its CRD or controller first")),
                (422, _) => Some("the API server rejected the object; fix the manifest it came from".into()),
                _ => None,
            };
            Failure {
                retryable: s.code == 429 || s.code >= 500,
                code: s.code,
                reason: s.reason.clone(),
                message: s.message.clone(),
                hint,
            }
        }
        other => Failure {
            code: 0,
            reason: "Unreachable".into(),
            message: other.to_string(),
            hint: Some("the API server did not answer; Capstan retried with backoff".into()),
            retryable: true,
        },
    }
}

/// What happened to one object.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    Created,
    Configured,
    Unchanged,
    Deleted,
    /// Not pruned, and why.
    Kept(String),
    /// Already gone when pruned.
    Gone,
    Failed(Failure),
}

impl std::fmt::Display for Outcome {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Outcome::Created => write!(f, "created"),
            Outcome::Configured => write!(f, "configured"),
            Outcome::Unchanged => write!(f, "unchanged"),
            Outcome::Deleted => write!(f, "pruned"),
            Outcome::Kept(why) => write!(f, "{why}"),
            Outcome::Gone => write!(f, "already gone"),
            Outcome::Failed(e) => write!(f, "failed: {e}"),
        }
    }
}

/// How to apply.
#[derive(Debug, Clone)]
pub struct ApplyOptions {
    pub field_manager: String,
    /// Take over fields another manager owns (server-side apply's `force`).
    pub force_conflicts: bool,
    /// The inventory to read and write (namespace, name), and so what to prune; none applies without pruning.
    pub inventory: Option<(String, String)>,
    pub prune: bool,
    /// How long to retry requests that fail for want of the server (connection errors, 429, 5xx).
    pub retry_for: Duration,
}

impl Default for ApplyOptions {
    fn default() -> Self {
        ApplyOptions {
            field_manager: FIELD_MANAGER.into(),
            force_conflicts: false,
            inventory: None,
            prune: true,
            retry_for: Duration::from_secs(30),
        }
    }
}

/// What one apply did, object by object.
#[derive(Debug, Clone, Default)]
pub struct ApplyReport {
    pub applied: Vec<(ObjectRef, Outcome)>,
    pub pruned: Vec<(ObjectRef, Outcome)>,
    /// Set when pruning was skipped because an object failed to apply.
    pub prune_skipped: bool,
}

impl ApplyReport {
    /// Whether every object applied and every prune went through.
    pub fn ok(&self) -> bool {
        self.failures().next().is_none()
    }

    pub fn failures(&self) -> impl Iterator<Item = (&ObjectRef, &Failure)> {
        self.applied.iter().chain(&self.pruned).filter_map(|(r, o)| match o {
            Outcome::Failed(f) => Some((r, f)),
            _ => None,
        })
    }
}

/// The name of the ConfigMap that holds an inventory.
pub fn inventory_configmap(name: &str) -> String {
    format!("capstan-inventory-{name}")
}

/// A connection to one cluster.
#[derive(Clone)]
pub struct Cluster {
    client: Client,
    url: String,
    /// The kubeconfig context's namespace, or `default`.
    pub namespace: String,
}

impl Cluster {
    /// Connects with a kubeconfig file (or, without one, `KUBECONFIG`, `~/.kube/config`, or the in-cluster account)
    /// and an optional context.
    pub async fn connect(kubeconfig: Option<&Path>, context: Option<&str>) -> Result<Cluster, ClusterError> {
        let opts = KubeConfigOptions { context: context.map(str::to_string), ..Default::default() };
        let config = match kubeconfig {
            Some(path) => {
                let bad = |message: String| ClusterError::Kubeconfig { path: path.display().to_string(), message };
                let kc = Kubeconfig::read_from(path).map_err(|e| bad(e.to_string()))?;
                Config::from_custom_kubeconfig(kc, &opts).await.map_err(|e| bad(e.to_string()))?
            }
            None if context.is_some() => Config::from_kubeconfig(&opts)
                .await
                .map_err(|e| ClusterError::Kubeconfig { path: "(default)".into(), message: e.to_string() })?,
            None => Config::infer()
                .await
                .map_err(|e| ClusterError::Kubeconfig { path: "(default)".into(), message: e.to_string() })?,
        };
        Self::from_config(config)
    }

    /// Connects with a kubeconfig given as text (a Sync's Secret) and an optional context.
    pub async fn from_kubeconfig_text(text: &str, context: Option<&str>) -> Result<Cluster, ClusterError> {
        let bad = |message: String| ClusterError::Kubeconfig { path: "(from a Secret)".into(), message };
        let kc = Kubeconfig::from_yaml(text).map_err(|e| bad(e.to_string()))?;
        let opts = KubeConfigOptions { context: context.map(str::to_string), ..Default::default() };
        let config = Config::from_custom_kubeconfig(kc, &opts).await.map_err(|e| bad(e.to_string()))?;
        Self::from_config(config)
    }

    /// A connection from a ready kube config.
    pub fn from_config(mut config: Config) -> Result<Cluster, ClusterError> {
        // The build links two TLS backends (ring here, aws-lc-rs through other crates): name one.
        let _ = rustls::crypto::ring::default_provider().install_default();
        config.connect_timeout = Some(Duration::from_secs(5));
        let url = config.cluster_url.to_string();
        let namespace = config.default_namespace.clone();
        let client = Client::try_from(config)
            .map_err(|e| ClusterError::Unreachable { url: url.clone(), message: e.to_string() })?;
        Ok(Cluster { client, url, namespace })
    }

    /// The kube client, for watches.
    pub fn client(&self) -> Client {
        self.client.clone()
    }

    /// The API server's URL.
    pub fn url(&self) -> &str {
        &self.url
    }

    /// The dynamic API of an object's kind, in its namespace.
    pub fn api(&self, r: &ObjectRef) -> Result<Api<DynamicObject>, PlanError> {
        let info = r.info().ok_or_else(|| PlanError::UnknownKind(r.clone()))?;
        let (group, version) = info.api_version.rsplit_once('/').unwrap_or(("", info.api_version));
        let ar = ApiResource::from_gvk_with_plural(&GroupVersionKind::gvk(group, version, info.kind), info.plural);
        Ok(if info.namespaced {
            let ns = if r.namespace.is_empty() { self.namespace.as_str() } else { r.namespace.as_str() };
            Api::namespaced_with(self.client.clone(), ns, &ar)
        } else {
            Api::all_with(self.client.clone(), &ar)
        })
    }

    /// Runs a request, retrying with backoff (250 ms doubling to 4 s) while it fails for want of the server and
    /// the deadline allows.
    async fn retry<T, F, Fut>(&self, r: Option<&ObjectRef>, deadline: Instant, mut f: F) -> Result<T, Failure>
    where
        F: FnMut() -> Fut,
        Fut: std::future::Future<Output = Result<T, kube::Error>>,
    {
        let mut delay = Duration::from_millis(250);
        loop {
            match f().await {
                Ok(v) => return Ok(v),
                Err(e) => {
                    let fail = failure(e, r);
                    if !fail.retryable || Instant::now() + delay > deadline {
                        return Err(fail);
                    }
                    tracing::debug!(object = ?r, error = %fail, "retrying");
                    tokio::time::sleep(delay).await;
                    delay = (delay * 2).min(Duration::from_secs(4));
                }
            }
        }
    }

    /// The live object, if it exists.
    pub async fn get(&self, r: &ObjectRef) -> Result<Option<Value>, Failure> {
        let api = self.api(r).map_err(|e| plan_failure(&e))?;
        let deadline = Instant::now() + Duration::from_secs(10);
        let obj = self.retry(Some(r), deadline, || api.get_opt(&r.name)).await?;
        Ok(obj.map(|o| serde_json::to_value(o).unwrap_or(Value::Null)))
    }

    /// Server-side applies one object; returns what it did and the live object.
    pub async fn apply_one(
        &self,
        r: &ObjectRef,
        obj: &Value,
        opts: &ApplyOptions,
    ) -> Result<(Outcome, Value), Failure> {
        let api = self.api(r).map_err(|e| plan_failure(&e))?;
        let deadline = Instant::now() + opts.retry_for;
        let before = self.retry(Some(r), deadline, || api.get_opt(&r.name)).await?;
        let mut params = PatchParams::apply(&opts.field_manager);
        params.force = opts.force_conflicts;
        let patch = Patch::Apply(obj);
        let after = self.retry(Some(r), deadline, || api.patch(&r.name, &params, &patch)).await?;
        let outcome = match &before {
            None => Outcome::Created,
            Some(b) if b.metadata.resource_version == after.metadata.resource_version => Outcome::Unchanged,
            Some(_) => Outcome::Configured,
        };
        Ok((outcome, serde_json::to_value(after).unwrap_or(Value::Null)))
    }

    /// Server-side applies an object's `status` through the status subresource.
    pub async fn apply_status(&self, r: &ObjectRef, status: Value) -> Result<(), Failure> {
        let api = self.api(r).map_err(|e| plan_failure(&e))?;
        let patch = json!({"apiVersion": r.api_version, "kind": r.kind, "status": status});
        let params = PatchParams::apply(FIELD_MANAGER).force();
        let deadline = Instant::now() + Duration::from_secs(10);
        let patch = Patch::Apply(&patch);
        self.retry(Some(r), deadline, || api.patch_status(&r.name, &params, &patch)).await.map(|_| ())
    }

    /// Deletes an object (owned objects go with it, in the background).
    pub async fn delete(&self, r: &ObjectRef, deadline: Instant) -> Result<Outcome, Failure> {
        let api = self.api(r).map_err(|e| plan_failure(&e))?;
        let params = DeleteParams::background();
        match self.retry(Some(r), deadline, || api.delete(&r.name, &params)).await {
            Ok(_) => Ok(Outcome::Deleted),
            Err(f) if f.code == 404 => Ok(Outcome::Gone),
            Err(f) => Err(f),
        }
    }

    /// Creates each object that does not exist yet and leaves existing ones alone (generated credentials).
    pub async fn create_missing(&self, objects: &[Value]) -> Vec<(ObjectRef, Outcome)> {
        let mut out = Vec::new();
        for obj in objects {
            let Some(r) = ObjectRef::of(obj) else { continue };
            let api = match self.api(&r) {
                Ok(a) => a,
                Err(e) => {
                    out.push((r, Outcome::Failed(plan_failure(&e))));
                    continue;
                }
            };
            let Ok(typed) = serde_json::from_value::<DynamicObject>(obj.clone()) else { continue };
            let deadline = Instant::now() + Duration::from_secs(30);
            let params = PostParams::default();
            let outcome = match self.retry(Some(&r), deadline, || api.create(&params, &typed)).await {
                Ok(_) => Outcome::Created,
                Err(f) if f.code == 409 => Outcome::Unchanged,
                Err(f) => Outcome::Failed(f),
            };
            out.push((r, outcome));
        }
        out
    }

    /// Reads an inventory; a missing one is empty.
    pub async fn read_inventory(&self, namespace: &str, name: &str) -> Result<BTreeSet<ObjectRef>, ClusterError> {
        let r = inventory_ref(namespace, name);
        let live = self.get(&r).await.map_err(|f| self.request_error(f))?;
        let text = live.as_ref().and_then(|cm| cm["data"]["inventory"].as_str().map(str::to_string));
        Ok(text.and_then(|t| serde_json::from_str(&t).ok()).unwrap_or_default())
    }

    fn request_error(&self, f: Failure) -> ClusterError {
        if f.code == 0 {
            ClusterError::Unreachable { url: self.url.clone(), message: f.message }
        } else {
            ClusterError::Request(f)
        }
    }

    async fn write_inventory(&self, namespace: &str, name: &str, refs: &BTreeSet<ObjectRef>) -> Result<(), Failure> {
        let r = inventory_ref(namespace, name);
        let cm = json!({
            "apiVersion": "v1", "kind": "ConfigMap",
            "metadata": {"name": r.name, "namespace": namespace, "labels": {MANAGED_BY.0: MANAGED_BY.1, "capstan.dev/inventory": name}},
            "data": {"inventory": serde_json::to_string(refs).unwrap_or_default()}
        });
        let opts = ApplyOptions { force_conflicts: true, ..Default::default() };
        self.apply_one(&r, &cm, &opts).await.map(|_| ())
    }

    /// Applies objects in dependency order; then, when every one applied and an inventory is named, prunes what the
    /// previous inventory holds that is no longer desired (never what holds data or is not Capstan's) and records
    /// the new inventory. When something fails to apply, nothing is pruned and the inventory keeps every object it
    /// held, so the next apply still knows them.
    pub async fn apply(&self, objects: Vec<Value>, opts: &ApplyOptions) -> Result<ApplyReport, ClusterError> {
        let previous = match &opts.inventory {
            Some((ns, name)) => self.read_inventory(ns, name).await?,
            None => BTreeSet::new(),
        };
        let plan = plan(objects, &previous)?;
        let mut report = ApplyReport::default();
        for (i, (r, obj)) in plan.apply.iter().enumerate() {
            let outcome = match self.apply_one(r, obj, opts).await {
                Ok((o, _)) => o,
                Err(f) if f.code == 0 && i == 0 => return Err(self.request_error(f)),
                Err(f) => Outcome::Failed(f),
            };
            report.applied.push((r.clone(), outcome));
        }
        let applied_ok = report.ok();
        let mut inventory: BTreeSet<ObjectRef> =
            report.applied.iter().filter(|(_, o)| !matches!(o, Outcome::Failed(_))).map(|(r, _)| r.clone()).collect();
        if !applied_ok {
            report.prune_skipped = !plan.prune.is_empty();
            inventory.extend(previous.iter().cloned());
        } else if opts.prune {
            let deadline = Instant::now() + opts.retry_for;
            for r in &plan.prune {
                let outcome = match self.get(r).await {
                    Ok(None) => Outcome::Gone,
                    Ok(Some(live)) => match prunable(&live) {
                        Err(why) => Outcome::Kept(why),
                        Ok(()) => self.delete(r, deadline).await.unwrap_or_else(Outcome::Failed),
                    },
                    Err(f) => Outcome::Failed(f),
                };
                if matches!(outcome, Outcome::Failed(_)) {
                    inventory.insert(r.clone());
                }
                report.pruned.push((r.clone(), outcome));
            }
        } else {
            inventory.extend(plan.prune.iter().cloned());
        }
        if let Some((ns, name)) = &opts.inventory {
            if let Err(f) = self.write_inventory(ns, name, &inventory).await {
                report.applied.push((inventory_ref(ns, name), Outcome::Failed(f)));
            }
        }
        Ok(report)
    }

    /// The health of each object, read once: missing objects and unanswered reads are not ready.
    pub async fn health_of(&self, refs: &[ObjectRef]) -> Vec<(ObjectRef, Health)> {
        let mut out = Vec::with_capacity(refs.len());
        for r in refs {
            let h = match self.get(r).await {
                Ok(Some(live)) => health(&live),
                Ok(None) => Health::Progressing("not found".into()),
                Err(f) => Health::Progressing(f.to_string()),
            };
            out.push((r.clone(), h));
        }
        out
    }

    /// Waits until every object is healthy or the timeout passes; the error lists what is not ready and why. A
    /// failed object ends the wait at once.
    pub async fn wait(
        &self,
        refs: &[ObjectRef],
        timeout: Duration,
        mut progress: impl FnMut(usize, usize),
    ) -> Result<(), WaitError> {
        let deadline = Instant::now() + timeout;
        let mut pending: Vec<ObjectRef> = refs.to_vec();
        loop {
            let mut still = Vec::new();
            let mut reasons = Vec::new();
            for (r, h) in self.health_of(&pending).await {
                match h {
                    Health::Ready => {}
                    Health::Failed(why) => {
                        return Err(WaitError { timeout, failed: true, objects: vec![(r.clone(), why)] })
                    }
                    Health::Progressing(why) => {
                        still.push(r.clone());
                        reasons.push((r.clone(), why));
                    }
                }
            }
            progress(refs.len() - still.len(), refs.len());
            if still.is_empty() {
                return Ok(());
            }
            if Instant::now() >= deadline {
                return Err(WaitError { timeout, failed: false, objects: reasons });
            }
            pending = still;
            tokio::time::sleep(Duration::from_millis(500).min(deadline - Instant::now())).await;
        }
    }
}

fn inventory_ref(namespace: &str, name: &str) -> ObjectRef {
    ObjectRef {
        api_version: "v1".into(),
        kind: "ConfigMap".into(),
        namespace: namespace.into(),
        name: inventory_configmap(name),
    }
}

fn plan_failure(e: &PlanError) -> Failure {
    Failure { code: 0, reason: "Unknown".into(), message: e.to_string(), hint: None, retryable: false }
}

/// Objects that did not become healthy in time (or failed), each with why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WaitError {
    pub timeout: Duration,
    pub failed: bool,
    pub objects: Vec<(ObjectRef, String)>,
}

impl std::fmt::Display for WaitError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        if self.failed {
            write!(f, "an object failed:")?;
        } else {
            write!(f, "not ready after {}s:", self.timeout.as_secs())?;
        }
        for (r, why) in &self.objects {
            write!(f, "\n  {r}: {why}")?;
        }
        Ok(())
    }
}

impl std::error::Error for WaitError {}
