//! The in-cluster operator: holds a Lease so one replica of several works, watches Capstan's custom resources and
//! the workloads rendered from them, applies each resource's objects (owned by it, so deleting it deletes them)
//! with server-side apply, prunes what it no longer renders, and writes `Ready` and the inventory back to status.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::hash::{Hash, Hasher};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use capstan_model::Resource;
use futures_util::StreamExt;
use kube::api::{Api, ApiResource, DynamicObject, GroupVersionKind, PostParams};
use kube::runtime::reflector::{self, Store};
use kube::runtime::{watcher, WatchStreamExt};
use kube::ResourceExt;
use serde_json::{json, Value};
use tokio::sync::mpsc;
use tokio::time::Instant;

use crate::cluster::{ApplyOptions, Cluster, Failure, Outcome};
use crate::plan::{health, plan, prunable, Health, KindInfo, ObjectRef, PRUNE_ANNOTATION};
use crate::render::{default_deny, render_resource};

/// The custom resources the operator reconciles: the kinds that render to Kubernetes objects.
pub fn reconciled() -> impl Iterator<Item = &'static str> {
    capstan_model::Kind::ALL.iter().filter(|k| crate::render::renders(**k)).map(|k| k.name())
}
/// The rendered kinds whose health is read off their status (the rest are healthy once they exist).
pub const WATCHED_CHILDREN: &[&str] = &["StatefulSet", "Deployment", "Pod", "PersistentVolumeClaim"];

/// One RBAC rule the operator needs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Rule {
    pub group: &'static str,
    pub resources: &'static [&'static str],
    pub verbs: &'static [&'static str],
}

const fn rule(group: &'static str, resources: &'static [&'static str], verbs: &'static [&'static str]) -> Rule {
    Rule { group, resources, verbs }
}

/// Every request the operator makes, as RBAC rules: the source of `deploy/kubernetes/rbac.yaml`. A test runs the
/// operator against the fake API server and checks its requests against these, both ways.
pub const PERMISSIONS: &[Rule] = &[
    rule("capstan.dev", &["apps", "databases", "trainingjobs", "modelservers"], &["list", "watch"]),
    rule("capstan.dev", &["apps/status", "databases/status", "trainingjobs/status", "modelservers/status"], &["patch"]),
    rule("apps", &["statefulsets", "deployments"], &["create", "get", "list", "patch", "watch"]),
    rule("", &["pods"], &["create", "delete", "get", "list", "patch", "watch"]),
    rule("", &["persistentvolumeclaims"], &["create", "get", "list", "patch", "watch"]),
    rule("", &["services"], &["create", "delete", "get", "patch"]),
    rule("", &["secrets"], &["create"]),
    rule("networking.k8s.io", &["ingresses"], &["create", "delete", "get", "patch"]),
    rule("networking.k8s.io", &["networkpolicies"], &["create", "get", "patch"]),
    rule("gateway.networking.k8s.io", &["httproutes", "tcproutes"], &["create", "delete", "get", "patch"]),
    rule("policy", &["poddisruptionbudgets"], &["create", "get", "patch"]),
    rule("autoscaling", &["horizontalpodautoscalers"], &["create", "delete", "get", "patch"]),
    rule("postgresql.cnpg.io", &["clusters"], &["create", "get", "patch"]),
    rule("coordination.k8s.io", &["leases"], &["create", "get", "update"]),
];

/// The operator's settings.
#[derive(Debug, Clone)]
pub struct OperatorConfig {
    /// Who this replica is in the Lease (the pod's name).
    pub identity: String,
    /// Where the Lease lives (the operator's namespace).
    pub lease_namespace: String,
    pub lease_name: String,
    /// How long a Lease holds without renewal; the holder renews every third of it.
    pub lease_duration: Duration,
    /// How often every resource is applied again, repairing drift.
    pub resync: Duration,
    /// How objects are rendered (where Apps' entry points attach).
    pub render: crate::render::RenderOptions,
}

impl Default for OperatorConfig {
    fn default() -> Self {
        OperatorConfig {
            identity: std::env::var("POD_NAME")
                .or_else(|_| std::env::var("HOSTNAME"))
                .unwrap_or_else(|_| format!("capstan-{}", uuid::Uuid::new_v4().simple())),
            lease_namespace: "capstan-system".into(),
            lease_name: "capstan-operator".into(),
            lease_duration: Duration::from_secs(15),
            resync: Duration::from_secs(600),
            render: crate::render::RenderOptions::default(),
        }
    }
}

/// Why the operator stopped.
#[derive(Debug, thiserror::Error)]
pub enum OperatorError {
    #[error("lost the lease {0}: another replica leads now")]
    LostLease(String),
    #[error("the lease could not be read or written: {0}")]
    Lease(Failure),
    #[error("a watch ended: {0}")]
    Watch(String),
}

/// What the operator shares between its tasks, for probes and metrics.
#[derive(Debug, Default)]
pub struct OperatorStatus {
    pub leader: std::sync::atomic::AtomicBool,
    pub synced: std::sync::atomic::AtomicBool,
    pub reconciles: std::sync::atomic::AtomicU64,
    pub reconcile_errors: std::sync::atomic::AtomicU64,
}

fn api_resource(info: KindInfo) -> ApiResource {
    let (group, version) = info.api_version.rsplit_once('/').unwrap_or(("", info.api_version));
    ApiResource::from_gvk_with_plural(&GroupVersionKind::gvk(group, version, info.kind), info.plural)
}

fn info(kind: &str) -> KindInfo {
    crate::plan::all_kinds().find(|k| k.kind == kind).unwrap_or(crate::plan::KINDS[0])
}

fn lease_ref(cfg: &OperatorConfig) -> ObjectRef {
    ObjectRef {
        api_version: "coordination.k8s.io/v1".into(),
        kind: "Lease".into(),
        namespace: cfg.lease_namespace.clone(),
        name: cfg.lease_name.clone(),
    }
}

fn micro_time(t: chrono::DateTime<chrono::Utc>) -> String {
    t.to_rfc3339_opts(chrono::SecondsFormat::Micros, true)
}

/// Takes or renews the Lease: free, expired or already ours → ours (an update with the resourceVersion read, so
/// two replicas cannot both win). Returns whether this replica holds it.
pub async fn try_lead(cluster: &Cluster, cfg: &OperatorConfig) -> Result<bool, Failure> {
    let r = lease_ref(cfg);
    let api = cluster.api(&r).map_err(|e| bad(e.to_string()))?;
    let now = chrono::Utc::now();
    let spec = |transitions: i64, acquired: String| {
        json!({
            "holderIdentity": cfg.identity,
            "leaseDurationSeconds": cfg.lease_duration.as_secs(),
            "acquireTime": acquired,
            "renewTime": micro_time(now),
            "leaseTransitions": transitions,
        })
    };
    // Someone else wrote the Lease first (a create that exists, an update of a stale resourceVersion): not won.
    let won = |result: Result<DynamicObject, kube::Error>| match result {
        Ok(_) => Ok(true),
        Err(e) => match crate::cluster::failure(e, Some(&r)) {
            f if f.code == 409 => Ok(false),
            f => Err(f),
        },
    };
    match cluster.get(&r).await? {
        None => {
            let lease = json!({"apiVersion": r.api_version, "kind": "Lease",
                "metadata": {"name": r.name, "namespace": r.namespace}, "spec": spec(0, micro_time(now))});
            let obj: DynamicObject = serde_json::from_value(lease).map_err(|e| bad(e.to_string()))?;
            won(api.create(&PostParams::default(), &obj).await)
        }
        Some(mut live) => {
            let s = &live["spec"];
            let holder = s["holderIdentity"].as_str().unwrap_or("");
            let renewed = s["renewTime"].as_str().and_then(|t| chrono::DateTime::parse_from_rfc3339(t).ok());
            let duration = s["leaseDurationSeconds"].as_i64().unwrap_or(15);
            let expired =
                renewed.is_none_or(|t| t.with_timezone(&chrono::Utc) + chrono::Duration::seconds(duration) < now);
            let ours = holder == cfg.identity;
            if !(ours || holder.is_empty() || expired) {
                return Ok(false);
            }
            let transitions = s["leaseTransitions"].as_i64().unwrap_or(0) + i64::from(!ours);
            let acquired = if ours { s["acquireTime"].as_str().unwrap_or("").to_string() } else { micro_time(now) };
            live["spec"] = spec(transitions, acquired);
            let obj: DynamicObject = serde_json::from_value(live).map_err(|e| bad(e.to_string()))?;
            won(api.replace(&r.name, &PostParams::default(), &obj).await)
        }
    }
}

fn bad(message: String) -> Failure {
    Failure { code: 0, reason: "Invalid".into(), message, hint: None, retryable: false }
}

/// A custom resource the operator reconciles: kind, namespace, name.
type Owner = (String, String, String);

/// What was last applied for an owner.
#[derive(Debug, Clone, Default)]
struct Applied {
    /// The generation and the hash of the objects, when applying them succeeded.
    done: Option<(i64, u64)>,
    inventory: BTreeSet<ObjectRef>,
}

/// What the reconciler reads: the custom resources, and the health of every watched child.
struct World {
    crs: BTreeMap<String, Store<DynamicObject>>,
    health: Mutex<HashMap<ObjectRef, Health>>,
    /// Per owner, the generation and hash of the objects last applied, and the inventory then written (the
    /// store may not have seen that status yet). Cleared at resync, but for the inventories.
    applied: Mutex<HashMap<Owner, Applied>>,
    /// Namespaces whose default-deny policy has been applied.
    denied: Mutex<BTreeSet<String>>,
    render: crate::render::RenderOptions,
}

/// The object as the model reads it: spec and identity, without the server's bookkeeping.
fn model_view(cr: &DynamicObject) -> Value {
    let mut v = serde_json::to_value(cr).unwrap_or(Value::Null);
    if let Some(m) = v.as_object_mut() {
        m.remove("status");
    }
    let md = &mut v["metadata"];
    let keep = ["name", "namespace", "labels", "annotations"];
    if let Some(m) = md.as_object_mut() {
        m.retain(|k, _| keep.contains(&k.as_str()));
        m.retain(|_, val| !val.is_null());
        if let Some(a) = m.get_mut("annotations").and_then(Value::as_object_mut) {
            a.retain(|k, _| k != "kubectl.kubernetes.io/last-applied-configuration");
        }
    }
    v
}

fn children_of(obj: &Value) -> Vec<Owner> {
    let ns = obj["metadata"]["namespace"].as_str().unwrap_or("").to_string();
    obj["metadata"]["ownerReferences"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|r| r["apiVersion"].as_str().is_some_and(|v| v.starts_with("capstan.dev/")))
        .filter_map(|r| Some((r["kind"].as_str()?.to_string(), ns.clone(), r["name"].as_str()?.to_string())))
        .collect()
}

/// Runs the operator until it loses its Lease or a watch cannot continue. Standby replicas wait for the Lease and
/// do nothing else.
pub async fn run(cluster: Cluster, cfg: OperatorConfig, status: Arc<OperatorStatus>) -> Result<(), OperatorError> {
    use std::sync::atomic::Ordering;
    let renew = cfg.lease_duration / 3;
    loop {
        match try_lead(&cluster, &cfg).await {
            Ok(true) => break,
            Ok(false) => {}
            Err(f) => tracing::warn!(error = %f, "cannot read the lease; retrying"),
        }
        tokio::time::sleep(renew).await;
    }
    tracing::info!(identity = %cfg.identity, lease = %cfg.lease_name, "leading");
    status.leader.store(true, Ordering::SeqCst);
    let (tx, mut rx) = mpsc::unbounded_channel::<Owner>();
    let mut tasks = tokio::task::JoinSet::new();
    let mut crs = BTreeMap::new();
    for kind in reconciled() {
        let ar = api_resource(info(kind));
        let api: Api<DynamicObject> = Api::all_with(cluster.client(), &ar);
        let writer = reflector::store::Writer::new(ar.clone());
        crs.insert(kind.to_string(), writer.as_reader());
        let tx = tx.clone();
        let stream = watcher(api, watcher::Config::default())
            .default_backoff()
            .modify(|o: &mut DynamicObject| o.managed_fields_mut().clear())
            .reflect(writer)
            .touched_objects();
        tasks.spawn(async move {
            let mut stream = std::pin::pin!(stream);
            while let Some(ev) = stream.next().await {
                match ev {
                    Ok(obj) => {
                        let owner = (
                            obj.types.as_ref().map(|t| t.kind.clone()).unwrap_or_default(),
                            obj.namespace().unwrap_or_default(),
                            obj.name_any(),
                        );
                        let db = obj.data["spec"]["databaseRef"]["name"].as_str().map(str::to_string);
                        let _ = tx.send(owner.clone());
                        if let Some(db) = db {
                            let _ = tx.send(("Database".into(), owner.1, db));
                        }
                    }
                    Err(e) => tracing::warn!(error = %e, "watch error; backing off"),
                }
            }
        });
    }
    let world = Arc::new(World {
        crs,
        health: Mutex::new(HashMap::new()),
        applied: Mutex::new(HashMap::new()),
        denied: Mutex::new(BTreeSet::new()),
        render: cfg.render.clone(),
    });
    for kind in WATCHED_CHILDREN {
        let info = info(kind);
        let api: Api<DynamicObject> = Api::all_with(cluster.client(), &api_resource(info));
        let config = watcher::Config::default().labels("app.kubernetes.io/managed-by=capstan");
        let (tx, world) = (tx.clone(), world.clone());
        tasks.spawn(async move {
            let stream = watcher(api, config).default_backoff();
            let mut stream = std::pin::pin!(stream);
            while let Some(ev) = stream.next().await {
                let (obj, gone) = match ev {
                    Ok(watcher::Event::Apply(o) | watcher::Event::InitApply(o)) => (o, false),
                    Ok(watcher::Event::Delete(o)) => (o, true),
                    Ok(_) => continue,
                    Err(e) => {
                        tracing::warn!(error = %e, "watch error; backing off");
                        continue;
                    }
                };
                let mut v = serde_json::to_value(&obj).unwrap_or(Value::Null);
                v["apiVersion"] = json!(info.api_version);
                v["kind"] = json!(info.kind);
                let Some(r) = ObjectRef::of(&v) else { continue };
                {
                    let mut h = world.health.lock().unwrap_or_else(|p| p.into_inner());
                    let new = if gone { None } else { Some(health(&v)) };
                    let changed = h.get(&r) != new.as_ref();
                    match new {
                        Some(x) => h.insert(r, x),
                        None => h.remove(&r),
                    };
                    if !changed {
                        continue;
                    }
                }
                for owner in children_of(&v) {
                    let _ = tx.send(owner);
                }
            }
        });
    }
    // Keep the lease: renew every third of its duration; give up when it is lost or cannot be renewed in time.
    let (lost_tx, mut lost_rx) = mpsc::channel::<OperatorError>(1);
    {
        let (cluster, cfg) = (cluster.clone(), cfg.clone());
        tasks.spawn(async move {
            let mut last_ok = Instant::now();
            loop {
                tokio::time::sleep(renew).await;
                match try_lead(&cluster, &cfg).await {
                    Ok(true) => last_ok = Instant::now(),
                    Ok(false) => {
                        let _ = lost_tx.send(OperatorError::LostLease(cfg.lease_name.clone())).await;
                        return;
                    }
                    Err(f) if last_ok.elapsed() > cfg.lease_duration => {
                        let _ = lost_tx.send(OperatorError::Lease(f)).await;
                        return;
                    }
                    Err(f) => tracing::warn!(error = %f, "lease renewal failed; retrying"),
                }
            }
        });
    }
    for store in world.crs.values() {
        let _ = store.wait_until_ready().await;
    }
    status.synced.store(true, Ordering::SeqCst);
    let mut resync = tokio::time::interval(cfg.resync);
    resync.tick().await;
    loop {
        let first = tokio::select! {
            e = lost_rx.recv() => {
                status.leader.store(false, Ordering::SeqCst);
                tasks.abort_all();
                return Err(e.unwrap_or_else(|| OperatorError::Watch("the lease task ended".into())));
            }
            _ = resync.tick() => {
                for a in world.applied.lock().unwrap_or_else(|p| p.into_inner()).values_mut() {
                    a.done = None;
                }
                for (kind, store) in &world.crs {
                    for cr in store.state() {
                        let _ = tx.send((kind.clone(), cr.namespace().unwrap_or_default(), cr.name_any()));
                    }
                }
                continue;
            }
            o = rx.recv() => match o { Some(o) => o, None => return Err(OperatorError::Watch("all watches ended".into())) },
        };
        // Take what else is queued, once each.
        let mut batch = BTreeSet::from([first]);
        while let Ok(o) = rx.try_recv() {
            batch.insert(o);
        }
        for owner in batch {
            status.reconciles.fetch_add(1, Ordering::Relaxed);
            if !reconcile(&cluster, &world, &owner).await {
                status.reconcile_errors.fetch_add(1, Ordering::Relaxed);
            }
            // The Apps of a Database render its user and database name into their URL: look at them again (a
            // no-op unless their rendering changed).
            if owner.0 == "Database" {
                for app in users_of(&world, &owner.1, &owner.2) {
                    let _ = tx.send(app);
                }
            }
        }
    }
}

/// The Apps in `namespace` that reference the Database `name`.
fn users_of(world: &World, namespace: &str, name: &str) -> Vec<Owner> {
    let Some(apps) = world.crs.get("App") else { return Vec::new() };
    apps.state()
        .iter()
        .filter(|a| a.namespace().as_deref() == Some(namespace) && a.data["spec"]["databaseRef"]["name"] == name)
        .map(|a| ("App".to_string(), namespace.to_string(), a.name_any()))
        .collect()
}

fn hash_of(objects: &[Value]) -> u64 {
    let mut h = std::collections::hash_map::DefaultHasher::new();
    for o in objects {
        o.to_string().hash(&mut h);
    }
    h.finish()
}

fn condition(ready: bool, reason: &str, message: &str, generation: i64, previous: &Value) -> Value {
    let status = if ready { "True" } else { "False" };
    let old = previous["conditions"].as_array().and_then(|cs| cs.iter().find(|c| c["type"] == "Ready"));
    let since = match old {
        Some(c) if c["status"] == status => c["lastTransitionTime"].clone(),
        _ => json!(chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Secs, true)),
    };
    json!({"type": "Ready", "status": status, "reason": reason, "message": message,
           "lastTransitionTime": since, "observedGeneration": generation})
}

/// Reconciles one custom resource; returns false when something failed (it is retried at the next event or
/// resync).
async fn reconcile(cluster: &Cluster, world: &World, owner: &Owner) -> bool {
    let (kind, ns, name) = owner;
    let Some(store) = world.crs.get(kind) else { return true };
    let ar = api_resource(info(kind));
    let Some(cr) = store.get(&reflector::ObjectRef::new_with(name, ar.clone()).within(ns)) else {
        // Deleted: the garbage collector removes what it owned; claims and credentials stay.
        world.applied.lock().unwrap_or_else(|p| p.into_inner()).remove(owner);
        return true;
    };
    let generation = cr.metadata.generation.unwrap_or(0);
    let previous = cr.data.get("status").cloned().unwrap_or(Value::Null);
    let me = ObjectRef {
        api_version: ar.api_version.clone(),
        kind: kind.clone(),
        namespace: ns.clone(),
        name: name.clone(),
    };
    let context: Vec<Resource> = world
        .crs
        .values()
        .flat_map(|s| s.state())
        .filter(|o| o.namespace().as_deref() == Some(ns.as_str()))
        .filter_map(|o| {
            let mut v = model_view(&o);
            v["apiVersion"] = json!(o.types.as_ref().map(|t| t.api_version.clone()).unwrap_or_default());
            v["kind"] = json!(o.types.as_ref().map(|t| t.kind.clone()).unwrap_or_default());
            Resource::from_value(v).ok()
        })
        .collect();
    let mut view = model_view(&cr);
    view["apiVersion"] = json!(ar.api_version);
    view["kind"] = json!(kind);
    let rendered = Resource::from_value(view).map_err(|e| format!("field `{}`: {}", e.path, e.message)).and_then(|r| {
        render_resource(&r, &context, &world.render).map_err(|e| format!("field `{}`: {}", e.field, e.message))
    });
    let mut objects = match rendered {
        Ok(o) => o,
        Err(message) => {
            let status = json!({"observedGeneration": generation, "conditions": [condition(false, "InvalidSpec", &message, generation, &previous)]});
            write_status(cluster, &me, &previous, status).await;
            return false;
        }
    };
    let uid = cr.metadata.uid.clone().unwrap_or_default();
    for o in &mut objects {
        if o["metadata"]["annotations"][PRUNE_ANNOTATION].as_str() != Some("disabled") {
            o["metadata"]["ownerReferences"] = json!([{"apiVersion": ar.api_version, "kind": kind, "name": name,
                "uid": uid, "controller": true, "blockOwnerDeletion": true}]);
        }
    }
    let refs: Vec<ObjectRef> = objects.iter().filter_map(ObjectRef::of).collect();
    let hash = hash_of(&objects);
    let (fresh, previous_inventory) = match world.applied.lock().unwrap_or_else(|p| p.into_inner()).get(owner) {
        Some(a) => (a.done == Some((generation, hash)), a.inventory.clone()),
        None => (false, serde_json::from_value(previous["inventory"].clone()).unwrap_or_default()),
    };
    let mut failure: Option<String> = None;
    let mut inventory: BTreeSet<ObjectRef> = refs.iter().cloned().collect();
    if !fresh {
        let first_in_ns = world.denied.lock().unwrap_or_else(|p| p.into_inner()).insert(ns.clone());
        if first_in_ns {
            let deny = default_deny(ns);
            if let Some(r) = ObjectRef::of(&deny) {
                if let Err(f) = cluster.apply_one(&r, &deny, &ApplyOptions::default()).await {
                    tracing::warn!(namespace = %ns, error = %f, "default-deny policy not applied");
                    world.denied.lock().unwrap_or_else(|p| p.into_inner()).remove(ns);
                }
            }
        }
        if kind == "Database" {
            let secrets = crate::render::credentials(
                &context
                    .iter()
                    .filter(|r| r.meta().name == *name && r.kind().name() == "Database")
                    .cloned()
                    .collect::<Vec<_>>(),
                crate::render::random_password,
            );
            for (r, o) in cluster.create_missing(&secrets).await {
                if let Outcome::Failed(f) = o {
                    failure = Some(format!("{r}: {f}"));
                }
            }
        }
        let plan = match plan(objects, &previous_inventory) {
            Ok(p) => p,
            Err(e) => {
                let cond = condition(false, "RenderFailed", &e.to_string(), generation, &previous);
                write_status(cluster, &me, &previous, json!({"observedGeneration": generation, "conditions": [cond]}))
                    .await;
                return false;
            }
        };
        let opts = ApplyOptions { retry_for: Duration::from_secs(10), ..Default::default() };
        for (r, obj) in &plan.apply {
            if let Err(f) = cluster.apply_one(r, obj, &opts).await {
                failure.get_or_insert(format!("{r}: {f}"));
            }
        }
        if failure.is_none() {
            let deadline = Instant::now() + Duration::from_secs(10);
            for r in &plan.prune {
                let result = match cluster.get(r).await {
                    Ok(Some(live)) if prunable(&live).is_ok() => cluster.delete(r, deadline).await.map(|_| ()),
                    Ok(_) => Ok(()),
                    Err(f) => Err(f),
                };
                if let Err(f) = result {
                    inventory.insert(r.clone());
                    failure.get_or_insert(format!("pruning {r}: {f}"));
                }
            }
        } else {
            inventory.extend(previous_inventory);
        }
        let done = failure.is_none().then_some((generation, hash));
        world
            .applied
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(owner.clone(), Applied { done, inventory: inventory.clone() });
    } else {
        inventory = previous_inventory;
    }
    let cond = match &failure {
        Some(message) => condition(false, "ApplyFailed", message, generation, &previous),
        None => {
            let h = world.health.lock().unwrap_or_else(|p| p.into_inner());
            let watched = |r: &&ObjectRef| WATCHED_CHILDREN.contains(&r.kind.as_str());
            let mut waiting = Vec::new();
            let mut failed = Vec::new();
            for r in refs.iter().filter(watched) {
                match h.get(r) {
                    Some(Health::Ready) => {}
                    Some(Health::Failed(why)) => failed.push(format!("{r}: {why}")),
                    Some(Health::Progressing(why)) => waiting.push(format!("{r}: {why}")),
                    None => waiting.push(format!("{r}: not observed yet")),
                }
            }
            if !failed.is_empty() {
                condition(false, "Failed", &failed.join("; "), generation, &previous)
            } else if !waiting.is_empty() {
                condition(false, "Progressing", &waiting.join("; "), generation, &previous)
            } else {
                condition(true, "Ready", &format!("{} objects applied and ready", refs.len()), generation, &previous)
            }
        }
    };
    let status = json!({"observedGeneration": generation, "conditions": [cond], "inventory": inventory});
    write_status(cluster, &me, &previous, status).await && failure.is_none()
}

/// Writes status when it differs from what is there.
async fn write_status(cluster: &Cluster, me: &ObjectRef, previous: &Value, status: Value) -> bool {
    let same = |a: &Value, b: &Value| {
        let strip = |v: &Value| {
            let mut v = v.clone();
            if let Some(cs) = v["conditions"].as_array_mut() {
                for c in cs {
                    c.as_object_mut().map(|m| m.remove("lastTransitionTime"));
                }
            }
            v
        };
        strip(a) == strip(b)
    };
    if same(previous, &status) {
        return true;
    }
    match cluster.apply_status(me, status).await {
        Ok(()) => true,
        Err(f) => {
            tracing::warn!(object = %me, error = %f, "status not written");
            false
        }
    }
}

/// The RBAC objects that grant exactly [`PERMISSIONS`] to the ServiceAccount `capstan-operator`: a ClusterRole for
/// what lives in every namespace, and a Role in the operator's own namespace for its Lease.
pub fn rbac(namespace: &str) -> Vec<Value> {
    let to_rule = |r: &Rule| json!({"apiGroups": [r.group], "resources": r.resources, "verbs": r.verbs});
    let lease = |r: &&Rule| r.group == "coordination.k8s.io";
    let cluster_rules: Vec<Value> = PERMISSIONS.iter().filter(|r| !lease(r)).map(to_rule).collect();
    let ns_rules: Vec<Value> = PERMISSIONS.iter().filter(lease).map(to_rule).collect();
    let labels = json!({"app.kubernetes.io/name": "capstan-operator", "app.kubernetes.io/managed-by": "capstan"});
    let subjects = json!([{"kind": "ServiceAccount", "name": "capstan-operator", "namespace": namespace}]);
    let rbac = "rbac.authorization.k8s.io";
    vec![
        json!({"apiVersion": "v1", "kind": "ServiceAccount",
               "metadata": {"name": "capstan-operator", "namespace": namespace, "labels": labels}}),
        json!({"apiVersion": format!("{rbac}/v1"), "kind": "ClusterRole",
               "metadata": {"name": "capstan-operator", "labels": labels}, "rules": cluster_rules}),
        json!({"apiVersion": format!("{rbac}/v1"), "kind": "ClusterRoleBinding",
               "metadata": {"name": "capstan-operator", "labels": labels},
               "roleRef": {"apiGroup": rbac, "kind": "ClusterRole", "name": "capstan-operator"}, "subjects": subjects}),
        json!({"apiVersion": format!("{rbac}/v1"), "kind": "Role",
               "metadata": {"name": "capstan-operator-leader-election", "namespace": namespace, "labels": labels},
               "rules": ns_rules}),
        json!({"apiVersion": format!("{rbac}/v1"), "kind": "RoleBinding",
               "metadata": {"name": "capstan-operator-leader-election", "namespace": namespace, "labels": labels},
               "roleRef": {"apiGroup": rbac, "kind": "Role", "name": "capstan-operator-leader-election"},
               "subjects": subjects}),
    ]
}
