//! The renderer: an App becomes a StatefulSet, its Services, routes on a Gateway (or an Ingress), its
//! PodDisruptionBudget, claims and NetworkPolicies — what an expert would write by hand, with `app.kubernetes.io/*` labels everywhere.
//!
//! One module per kind renders it (`app`, `database`; TrainingJobs and ModelServers in `crate::training` and
//! `crate::serving`), `common` holds what they share; this root dispatches and renders the namespace-wide objects.

use std::collections::BTreeMap;

use capstan_model::{Kind, Resource};
use k8s_openapi::api::networking::v1::{NetworkPolicy, NetworkPolicySpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{LabelSelector, ObjectMeta};
use serde_json::{json, Value};

mod app;
mod common;
mod database;
mod entry;

pub use self::app::{port_numbers, render_app, render_app_with, FIRST_PORT, VOLUME_ROOT};
pub(crate) use self::common::{app_peer, restricted_container, restricted_pod, to_value};
use self::database::db_labels;
pub use self::database::{render_database, POSTGRES_DEFAULT_MAJOR, POSTGRES_PORT};

/// Why an object cannot be rendered.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{object}: field `{field}`: {message}")]
pub struct RenderError {
    pub object: String,
    pub field: String,
    pub message: String,
}

/// The namespace of the ingress controller that NetworkPolicies let in, when entry points are Ingresses.
pub const INGRESS_NAMESPACE: &str = "ingress-nginx";

/// What the renderer is told about the cluster.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RenderOptions {
    /// Where Apps' entry points attach: a Gateway (`capstan-system/capstan` by default) or an Ingress class.
    pub entry_points: capstan_model::gitops::EntryPoints,
}

impl RenderOptions {
    /// The namespace whose pods bring outside clients in: the default Gateway's, or the ingress controller's.
    pub fn front_door_namespace(&self) -> String {
        match self.entry_points.default_gateway() {
            Some(g) => g.namespace,
            None => INGRESS_NAMESPACE.to_string(),
        }
    }
}
/// The field manager Capstan applies with.
pub const FIELD_MANAGER: &str = "capstan";

/// The namespace-wide default: no ingress unless a policy allows it.
pub fn default_deny(namespace: &str) -> Value {
    to_value(&NetworkPolicy {
        metadata: ObjectMeta {
            name: Some("default-deny-ingress".into()),
            namespace: Some(namespace.into()),
            labels: Some(BTreeMap::from([("app.kubernetes.io/managed-by".to_string(), "capstan".to_string())])),
            ..Default::default()
        },
        spec: Some(NetworkPolicySpec {
            pod_selector: Some(LabelSelector::default()),
            policy_types: Some(vec!["Ingress".into()]),
            ingress: None,
            egress: None,
        }),
    })
}

/// Renders one object, in the company of the others it may refer to (a Database lets in the Apps that use it).
pub fn render_resource(r: &Resource, all: &[Resource], opts: &RenderOptions) -> Result<Vec<Value>, RenderError> {
    match r {
        Resource::App(a) => {
            let db = a.spec.database_ref.as_ref().and_then(|r| {
                all.iter().find_map(|x| match x {
                    Resource::Database(d)
                        if d.metadata.name == r.name && d.metadata.namespace() == a.metadata.namespace() =>
                    {
                        Some(&d.spec)
                    }
                    _ => None,
                })
            });
            render_app_with(a, db, opts, &gateways_routing_to(a, all))
        }
        Resource::Database(d) => {
            let clients: Vec<String> = all
                .iter()
                .filter_map(|r| match r {
                    Resource::App(a)
                        if a.metadata.namespace() == d.metadata.namespace()
                            && a.spec.database_ref.as_ref().is_some_and(|x| x.name == d.metadata.name) =>
                    {
                        Some(a.metadata.name.clone())
                    }
                    _ => None,
                })
                .collect();
            Ok(render_database(d, &clients))
        }
        Resource::Gateway(_)
        | Resource::HTTPRoute(_)
        | Resource::TLSRoute(_)
        | Resource::TCPRoute(_)
        | Resource::ReferenceGrant(_)
        | Resource::BackendTLSPolicy(_)
        | Resource::Issuer(_)
        | Resource::ClusterIssuer(_)
        | Resource::Certificate(_) => Ok(vec![pass_through(r)]),
        Resource::TrainingJob(j) => crate::training::render_training_job(j),
        Resource::ModelServer(m) => crate::serving::render_model_server(m, opts),
        #[cfg(feature = "throwaway-kind")]
        Resource::Widget(_) => Err(not_rendered(r)),
        Resource::Secret(s) => Ok(vec![core_secret(s)]),
        Resource::ConfigMap(c) => Ok(vec![core_config_map(c)]),
        Resource::Source(_) | Resource::Sync(_) | Resource::AlertRule(_) | Resource::EscalationPolicy(_) => {
            Err(not_rendered(r))
        }
    }
}

/// The namespaces of the Gateways whose routes among `all` send to `app` (by a backendRef to its Service, or to the
/// App itself as the embedded runtime takes it): their proxies must get through its NetworkPolicy. A parentRef
/// without a namespace is in the route's.
fn gateways_routing_to(app: &capstan_model::App, all: &[Resource]) -> Vec<String> {
    use capstan_model::gateway::{BackendObjectReference, ParentReference};
    let (name, namespace) = (app.metadata.name.as_str(), app.metadata.namespace());
    let mut out = std::collections::BTreeSet::new();
    for r in all {
        let route_ns = r.meta().namespace();
        let (parents, backends): (&[ParentReference], Vec<&BackendObjectReference>) = match r {
            // Backends, and the mirrors that get copies of their requests.
            Resource::HTTPRoute(h) => (
                &h.spec.parent_refs,
                h.spec
                    .rules
                    .iter()
                    .flat_map(|x| {
                        let filters = x.filters.iter().chain(x.backend_refs.iter().flat_map(|b| b.filters.iter()));
                        let mirrors = filters.filter_map(|f| f.request_mirror.as_ref().map(|m| &m.backend_ref));
                        x.backend_refs.iter().map(|b| &b.backend).chain(mirrors)
                    })
                    .collect(),
            ),
            Resource::TLSRoute(t) => (
                &t.spec.parent_refs,
                t.spec.rules.iter().flat_map(|x| x.backend_refs.iter().map(|b| &b.backend)).collect(),
            ),
            Resource::TCPRoute(t) => (
                &t.spec.parent_refs,
                t.spec.rules.iter().flat_map(|x| x.backend_refs.iter().map(|b| &b.backend)).collect(),
            ),
            _ => continue,
        };
        let to_app = backends.iter().any(|b| {
            b.name == name
                && b.namespace.as_deref().unwrap_or(route_ns) == namespace
                && matches!(b.kind.as_deref(), None | Some("Service") | Some("App"))
        });
        if to_app {
            let gateways = parents.iter().filter(|p| {
                p.kind.as_deref().unwrap_or("Gateway") == "Gateway"
                    && p.group.as_deref().unwrap_or(capstan_model::gateway::GATEWAY_GROUP)
                        == capstan_model::gateway::GATEWAY_GROUP
            });
            out.extend(gateways.map(|p| p.namespace.clone().unwrap_or_else(|| route_ns.to_string())));
        }
    }
    out.into_iter().collect()
}

/// A standard's object (Gateway API's) as the cluster takes it: the same apiVersion (as written: a TLSRoute may be
/// `v1` or `v1alpha2`, as the cluster's CRDs serve it), kind and spec, the metadata a user writes (name, namespace,
/// labels, annotations), no status.
fn pass_through(r: &Resource) -> Value {
    let mut meta = written_meta(r.meta());
    if !r.kind().namespaced() {
        // Cluster-scoped (a ClusterIssuer): no namespace, as the cluster keeps it.
        if let Some(m) = meta.as_object_mut() {
            m.remove("namespace");
        }
    }
    json!({ "apiVersion": r.api_version(), "kind": r.kind().name(), "metadata": meta, "spec": r.spec_value() })
}

/// The metadata a user writes (name, namespace, labels, annotations), labelled as Capstan's so that a prune may
/// delete the object once it leaves the files.
fn written_meta(m: &capstan_model::ObjectMeta) -> Value {
    let mut labels = m.labels.clone();
    labels.insert(crate::plan::MANAGED_BY.0.into(), crate::plan::MANAGED_BY.1.into());
    let mut meta = json!({ "name": m.name, "namespace": m.namespace(), "labels": labels });
    if !m.annotations.is_empty() {
        meta["annotations"] = json!(m.annotations);
    }
    meta
}

/// A Secret as the cluster's own `v1` Secret: every value base64 under `data` (a `stringData` value wins over a
/// `data` value of the same key, as Kubernetes merges them), its `type` kept (`Opaque` without one).
fn core_secret(s: &capstan_model::Secret) -> Value {
    use base64::Engine;
    let meta = written_meta(&s.metadata);
    let data: std::collections::BTreeMap<&str, String> = s
        .spec
        .keys()
        .into_iter()
        .filter_map(|k| Some((k, base64::engine::general_purpose::STANDARD.encode(s.spec.value(k)?))))
        .collect();
    json!({
        "apiVersion": "v1", "kind": "Secret", "metadata": meta,
        "type": s.spec.type_.as_deref().unwrap_or("Opaque"), "data": data,
    })
}

/// A ConfigMap as the cluster's own `v1` ConfigMap.
fn core_config_map(c: &capstan_model::config_map::ConfigMap) -> Value {
    let mut out = json!({ "apiVersion": "v1", "kind": "ConfigMap", "metadata": written_meta(&c.metadata) });
    if !c.spec.data.is_empty() {
        out["data"] = json!(c.spec.data);
    }
    if !c.spec.binary_data.is_empty() {
        out["binaryData"] = json!(c.spec.binary_data);
    }
    out
}

/// The error for a kind that has no Kubernetes form.
fn not_rendered(r: &Resource) -> RenderError {
    RenderError {
        object: format!("{}/{}", r.kind(), r.meta().name),
        field: "kind".into(),
        message: format!(
            "{} is not rendered for Kubernetes yet (Apps, Databases, TrainingJobs, ModelServers, Secrets, Gateways and their routes are)",
            r.kind()
        ),
    }
}

/// Whether objects of `kind` become Kubernetes objects (so the operator reconciles them). Every kind has its arm:
/// a new kind does not compile until it says.
pub fn renders(kind: Kind) -> bool {
    match kind {
        Kind::App | Kind::Database | Kind::TrainingJob | Kind::ModelServer => true,
        Kind::Source | Kind::Sync | Kind::AlertRule | Kind::EscalationPolicy => false,
        // Passed through as they are by `render_resource` (a Secret as the core Secret); the cluster reconciles them.
        Kind::Secret
        | Kind::ConfigMap
        | Kind::Gateway
        | Kind::HTTPRoute
        | Kind::TLSRoute
        | Kind::TCPRoute
        | Kind::ReferenceGrant
        | Kind::BackendTLSPolicy
        // cert-manager's, which the cluster's cert-manager reconciles.
        | Kind::Issuer
        | Kind::ClusterIssuer
        | Kind::Certificate => false,
        #[cfg(feature = "throwaway-kind")]
        Kind::Widget => false,
    }
}

/// Renders a batch with the default options (entry points on the Gateway `capstan-system/capstan`).
pub fn render(resources: &[Resource]) -> Result<Vec<Value>, Vec<RenderError>> {
    render_with(resources, &RenderOptions::default())
}

/// Renders a batch: every App, Database, TrainingJob and ModelServer, with each namespace used (but `default`) and
/// its default-deny policy first. Other kinds are named in the error.
pub fn render_with(resources: &[Resource], opts: &RenderOptions) -> Result<Vec<Value>, Vec<RenderError>> {
    let mut out = Vec::new();
    let mut errors = Vec::new();
    let mut namespaces = std::collections::BTreeSet::new();
    // An object written in the files (an HTTPRoute by hand) wins over one an App would make of the same kind and
    // name: the file says exactly what is wanted there.
    let identity = |o: &Value| {
        let group = o["apiVersion"].as_str().and_then(|v| v.rsplit_once('/')).map_or("", |(g, _)| g).to_string();
        let text = |v: &Value| v.as_str().unwrap_or("").to_string();
        (group, text(&o["kind"]), text(&o["metadata"]["namespace"]), text(&o["metadata"]["name"]))
    };
    let written: std::collections::BTreeSet<_> = resources
        .iter()
        .filter(|r| !renders(r.kind()))
        .filter_map(|r| render_resource(r, resources, opts).ok())
        .flatten()
        .map(|o| identity(&o))
        .collect();
    let mut made_by = std::collections::BTreeMap::new();
    for r in resources {
        if r.kind().namespaced() {
            namespaces.insert(r.meta().namespace().to_string());
        }
        match render_resource(r, resources, opts) {
            Ok(v) => {
                for o in v {
                    let id = identity(&o);
                    if renders(r.kind()) && written.contains(&id) {
                        continue;
                    }
                    let by = format!("{}/{}", r.kind(), r.meta().name);
                    if let Some(first) = made_by.insert(id, by.clone()) {
                        errors.push(RenderError {
                            object: by,
                            field: "metadata.name".into(),
                            message: format!(
                                "renders {} {}/{}, which {first} renders too",
                                o["kind"].as_str().unwrap_or(""),
                                o["metadata"]["namespace"].as_str().unwrap_or(""),
                                o["metadata"]["name"].as_str().unwrap_or("")
                            ),
                        });
                        continue;
                    }
                    out.push(o);
                }
            }
            Err(e) => errors.push(e),
        }
    }
    if !errors.is_empty() {
        return Err(errors);
    }
    let mut all: Vec<Value> = namespaces
        .iter()
        .filter(|ns| ns.as_str() != capstan_model::DEFAULT_NAMESPACE)
        .map(|ns| namespace(ns))
        .collect();
    // A default-deny policy where Capstan runs workloads; not in a namespace that only holds objects passed through
    // for the cluster's own controllers (cert-manager's, whose webhook such a policy would cut off).
    let workloads: std::collections::BTreeSet<&str> =
        resources.iter().filter(|r| renders(r.kind())).map(|r| r.meta().namespace()).collect();
    all.extend(namespaces.iter().filter(|ns| workloads.contains(ns.as_str())).map(|ns| default_deny(ns)));
    all.extend(out);
    Ok(all)
}

/// Renders parsed manifests; what cannot be rendered is described by file, line and field, one problem a line.
pub fn render_manifests(ms: &[capstan_model::Manifest], opts: &RenderOptions) -> Result<Vec<Value>, Vec<String>> {
    let resources: Vec<Resource> = ms.iter().map(|m| m.resource.clone()).collect();
    render_with(&resources, opts).map_err(|errors| {
        errors
            .iter()
            .map(|e| {
                ms.iter()
                    .find(|m| format!("{}/{}", m.resource.kind(), m.resource.meta().name) == e.object)
                    .map(|m| m.diagnose(capstan_model::FieldError::new(&e.field, &e.message)).to_string())
                    .unwrap_or_else(|| e.to_string())
            })
            .collect()
    })
}

/// A namespace the objects live in; never pruned, since deleting it would delete everything in it.
pub fn namespace(name: &str) -> Value {
    to_value(&k8s_openapi::api::core::v1::Namespace {
        metadata: ObjectMeta {
            name: Some(name.into()),
            labels: Some(BTreeMap::from([("app.kubernetes.io/managed-by".to_string(), "capstan".to_string())])),
            annotations: Some(BTreeMap::from([(crate::plan::PRUNE_ANNOTATION.to_string(), "disabled".to_string())])),
            ..Default::default()
        },
        ..Default::default()
    })
}

/// A fresh random password (128 bits from the system's generator, as 32 hex digits).
pub fn random_password() -> String {
    uuid::Uuid::new_v4().simple().to_string()
}

/// The credentials Secret of each Database, with a password from `password` (pass [`random_password`]; tests pass
/// a fixed one, so this stays a pure function). Applying creates them only where missing, so a password never
/// changes once set; they are never pruned, since the data needs them.
pub fn credentials(resources: &[Resource], mut password: impl FnMut() -> String) -> Vec<Value> {
    resources
        .iter()
        .filter_map(|r| match r {
            Resource::Database(d) => Some(json!({
                "apiVersion": "v1", "kind": "Secret", "type": "Opaque",
                "metadata": {
                    "name": capstan_model::database::credentials_secret(&d.metadata.name),
                    "namespace": d.metadata.namespace(),
                    "labels": db_labels(d),
                    "annotations": {crate::plan::PRUNE_ANNOTATION: "disabled"}
                },
                "stringData": {"password": password()}
            }))
            .map(|mut secret| {
                // CloudNativePG's initdb reads a basic-auth Secret: the owner's name beside the password.
                if d.spec.provider == capstan_model::database::DatabaseProvider::Cnpg {
                    secret["type"] = json!("kubernetes.io/basic-auth");
                    secret["stringData"]["username"] = json!(d.spec.user_name());
                }
                secret
            }),
            _ => None,
        })
        .collect()
}
