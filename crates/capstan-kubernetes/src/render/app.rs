//! An App rendered: its claims, StatefulSet, Services, entry points, PodDisruptionBudget and NetworkPolicy.

use std::collections::BTreeMap;

use capstan_model::database::DatabaseSpec;
use capstan_model::{App, PortRef, Probe, ReclaimPolicy, VolumeScope};
use k8s_openapi::api::apps::v1::{
    RollingUpdateStatefulSetStrategy, StatefulSet, StatefulSetPersistentVolumeClaimRetentionPolicy, StatefulSetSpec,
    StatefulSetUpdateStrategy,
};
use k8s_openapi::api::core::v1::{
    Affinity, ClientIPConfig, Container, ContainerPort, EnvVar, EnvVarSource, ExecAction, HTTPGetAction, HTTPHeader,
    Lifecycle, LifecycleHandler, PersistentVolumeClaim, PersistentVolumeClaimSpec, PersistentVolumeClaimVolumeSource,
    PodAffinityTerm, PodAntiAffinity, PodSpec, PodTemplateSpec, Probe as KProbe, ResourceRequirements,
    SecretKeySelector, Service, ServicePort, ServiceSpec, SessionAffinityConfig, SleepAction, TCPSocketAction,
    Volume as KVolume, VolumeMount, VolumeResourceRequirements, WeightedPodAffinityTerm,
};
use k8s_openapi::api::networking::v1::{NetworkPolicy, NetworkPolicyIngressRule, NetworkPolicyPeer, NetworkPolicySpec};
use k8s_openapi::api::policy::v1::{PodDisruptionBudget, PodDisruptionBudgetSpec};
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{LabelSelector, ObjectMeta};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use serde_json::Value;

use super::common::{restricted_container, restricted_pod, to_value};
use super::database::database_url;
use super::{RenderError, RenderOptions};

/// Where volumes are mounted in the container: `<VOLUME_ROOT>/<volume name>`.
pub const VOLUME_ROOT: &str = "/var/lib/capstan";
pub use capstan_model::app::FIRST_PORT;

fn labels(app: &App) -> BTreeMap<String, String> {
    BTreeMap::from([
        ("app.kubernetes.io/name".to_string(), app.metadata.name.clone()),
        ("app.kubernetes.io/instance".to_string(), app.metadata.name.clone()),
        ("app.kubernetes.io/managed-by".to_string(), "capstan".to_string()),
    ])
}

pub(super) fn selector(app: &App) -> BTreeMap<String, String> {
    BTreeMap::from([
        ("app.kubernetes.io/name".to_string(), app.metadata.name.clone()),
        ("app.kubernetes.io/instance".to_string(), app.metadata.name.clone()),
    ])
}

fn meta(app: &App, name: &str, component: Option<&str>) -> ObjectMeta {
    let mut l = labels(app);
    l.extend(
        app.metadata.labels.iter().filter(|(k, _)| !k.starts_with("capstan.dev/")).map(|(k, v)| (k.clone(), v.clone())),
    );
    if let Some(c) = component {
        l.insert("app.kubernetes.io/component".into(), c.into());
    }
    ObjectMeta {
        name: Some(name.to_string()),
        namespace: Some(app.metadata.namespace().to_string()),
        labels: Some(l),
        ..Default::default()
    }
}

/// The container port of each named port: its number, or 8080, 8081, … in order for the unnumbered ones.
pub fn port_numbers(app: &App) -> BTreeMap<String, u16> {
    app.spec.service_ports()
}

fn port_ref(p: &PortRef) -> IntOrString {
    match p {
        PortRef::Number(n) => IntOrString::Int(i32::from(*n)),
        PortRef::Name(s) => IntOrString::String(s.clone()),
    }
}

fn probe(p: &Probe) -> KProbe {
    KProbe {
        http_get: p.http.as_ref().map(|h| HTTPGetAction {
            path: Some(h.path.clone()),
            port: port_ref(&h.port),
            http_headers: (!h.headers.is_empty())
                .then(|| h.headers.iter().map(|(k, v)| HTTPHeader { name: k.clone(), value: v.clone() }).collect()),
            ..Default::default()
        }),
        tcp_socket: p.tcp.as_ref().map(|t| TCPSocketAction { port: port_ref(&t.port), ..Default::default() }),
        exec: p.exec.as_ref().map(|e| ExecAction { command: Some(e.command.clone()) }),
        initial_delay_seconds: Some(p.initial_delay_seconds as i32),
        period_seconds: Some(p.period_seconds as i32),
        timeout_seconds: Some(p.timeout_seconds as i32),
        success_threshold: Some(p.success_threshold as i32),
        failure_threshold: Some(p.failure_threshold as i32),
        ..Default::default()
    }
}

/// Renders one App on its own: a database it references gets the default user and database name. Every
/// returned value is a complete Kubernetes object (apiVersion, kind, metadata, spec).
pub fn render_app(app: &App) -> Result<Vec<Value>, RenderError> {
    render_app_with(app, None, &RenderOptions::default(), &[])
}

/// Renders one App; `db` is the spec of the Database it references, whose user and database name its URL uses;
/// `gateways` are the namespaces of the Gateways whose routes (written by hand) send to it.
pub fn render_app_with(
    app: &App,
    db: Option<&DatabaseSpec>,
    opts: &RenderOptions,
    gateways: &[String],
) -> Result<Vec<Value>, RenderError> {
    let name = app.metadata.name.as_str();
    let err = |field: &str, message: &str| RenderError {
        object: format!("App/{name}"),
        field: field.into(),
        message: message.into(),
    };
    let image = app.spec.run.image.clone().ok_or_else(|| {
        err("spec.run.image", "is required on Kubernetes: the embedded runtime runs `command`, a cluster runs an image")
    })?;
    let ports = port_numbers(app);
    let mut out = Vec::new();

    // The container.
    let mut env = container_env(app, &ports, db);
    let vols = volumes(app);
    env.extend(vols.env);
    out.extend(vols.objects);
    let drain = app.spec.expose.iter().map(|e| e.drain_seconds).max().unwrap_or(5).max(1);
    let container = container(app, image, env, &ports, vols.mounts, drain);

    let headless = format!("{name}-headless");
    let sts = stateful_set(app, &ports, &headless, container, vols.claims, vols.pod_volumes, drain);
    out.push(to_value(&sts));

    // Services: one for clients, a headless one for peers.
    out.extend(services(app, &ports, &headless));

    // Entry points: routes on a Gateway, or an Ingress and LoadBalancer Services.
    let target_of = |t: &Option<PortRef>| -> Option<(String, u16)> {
        match t {
            Some(PortRef::Name(n)) => ports.get(n).map(|p| (n.clone(), *p)),
            Some(PortRef::Number(n)) => ports.iter().find(|(_, p)| *p == n).map(|(k, p)| (k.clone(), *p)),
            None => app.spec.ports.first().map(|p| (p.name.clone(), ports[&p.name])),
        }
    };
    let service_port = |i: usize, e: &capstan_model::Expose| {
        target_of(&e.target_port)
            .ok_or_else(|| err(&format!("spec.expose[{i}].targetPort"), "names no port of spec.ports"))
    };
    out.extend(super::entry::entry_points(app, opts, &|n, c| meta(app, n, c), &service_port)?);

    // Disruptions one at a time, as the rolling update.
    out.push(to_value(&pod_disruption_budget(app)));

    // Who may reach the replicas: the Gateway's or ingress controller's pods, and the App's own replicas.
    out.push(to_value(&network_policy(app, opts, gateways, &target_of)));
    Ok(out)
}

/// The container's environment: the App's variables, `PORT` and a variable per port, and the URL of the Database it
/// references with the password from that Database's Secret.
fn container_env(app: &App, ports: &BTreeMap<String, u16>, db: Option<&DatabaseSpec>) -> Vec<EnvVar> {
    let mut env: Vec<EnvVar> = app
        .spec
        .run
        .env
        .iter()
        .map(|(k, v)| EnvVar { name: k.clone(), value: Some(v.clone()), ..Default::default() })
        .collect();
    if let Some(first) = app.spec.ports.first() {
        env.push(EnvVar { name: "PORT".into(), value: Some(ports[&first.name].to_string()), ..Default::default() });
    }
    for (n, p) in ports {
        env.push(EnvVar {
            name: capstan_model::validate::port_env_name(n),
            value: Some(p.to_string()),
            ..Default::default()
        });
    }
    if let Some(r) = &app.spec.database_ref {
        // The password from the Database's Secret, then the URL built from it (Kubernetes expands `$(VAR)`).
        let password_var = format!("{}_PASSWORD", r.env);
        env.push(EnvVar {
            name: password_var.clone(),
            value_from: Some(EnvVarSource {
                secret_key_ref: Some(SecretKeySelector {
                    name: capstan_model::database::credentials_secret(&r.name),
                    key: "password".into(),
                    optional: None,
                }),
                ..Default::default()
            }),
            ..Default::default()
        });
        env.push(EnvVar {
            name: r.env.clone(),
            value: Some(database_url(app.metadata.namespace(), &r.name, db, &password_var)),
            ..Default::default()
        });
    }
    env
}

/// What the App's volumes add to the container and the pod, and the objects they need.
struct Volumes {
    /// The variable naming each volume's mount path (they follow the other variables).
    env: Vec<EnvVar>,
    mounts: Vec<VolumeMount>,
    /// The claims of shared volumes, mounted by every replica.
    pod_volumes: Vec<KVolume>,
    /// The claim templates of per-replica volumes.
    claims: Vec<PersistentVolumeClaim>,
    /// The shared volumes' PersistentVolumeClaims, which come before the StatefulSet.
    objects: Vec<Value>,
}

/// The App's volumes: a claim template per replica volume, a PersistentVolumeClaim per shared one.
fn volumes(app: &App) -> Volumes {
    let name = app.metadata.name.as_str();
    let mut env = Vec::new();
    let mut out = Vec::new();
    let mut mounts = Vec::new();
    let mut pod_volumes = Vec::new();
    let mut claims = Vec::new();
    for v in &app.spec.volumes {
        let path = format!("{VOLUME_ROOT}/{}", v.name);
        env.push(EnvVar { name: v.env.clone(), value: Some(path.clone()), ..Default::default() });
        mounts.push(VolumeMount { name: v.name.clone(), mount_path: path, ..Default::default() });
        let size = Quantity(v.size.clone().unwrap_or_else(|| "1Gi".into()));
        let claim_spec = |mode: &str| PersistentVolumeClaimSpec {
            access_modes: Some(vec![mode.to_string()]),
            resources: Some(VolumeResourceRequirements {
                requests: Some(BTreeMap::from([("storage".to_string(), size.clone())])),
                ..Default::default()
            }),
            ..Default::default()
        };
        match v.scope {
            VolumeScope::Replica => claims.push(PersistentVolumeClaim {
                metadata: ObjectMeta { name: Some(v.name.clone()), labels: Some(labels(app)), ..Default::default() },
                spec: Some(claim_spec("ReadWriteOnce")),
                ..Default::default()
            }),
            VolumeScope::Shared => {
                let claim = format!("{name}-{}", v.name);
                pod_volumes.push(KVolume {
                    name: v.name.clone(),
                    persistent_volume_claim: Some(PersistentVolumeClaimVolumeSource {
                        claim_name: claim.clone(),
                        read_only: None,
                    }),
                    ..Default::default()
                });
                let mut m = meta(app, &claim, Some("storage"));
                if v.reclaim_policy == ReclaimPolicy::Retain {
                    // Kept by a prune or a delete of the App: the data outlives it, as on the embedded runtime.
                    m.annotations = Some(BTreeMap::from([("capstan.dev/prune".to_string(), "disabled".to_string())]));
                }
                out.push(to_value(&PersistentVolumeClaim {
                    metadata: m,
                    spec: Some(claim_spec("ReadWriteMany")),
                    ..Default::default()
                }));
            }
        }
    }
    Volumes { env, mounts, pod_volumes, claims, objects: out }
}

/// The App's container: image, command, environment, ports, probes, resources, the drain before SIGTERM, mounts.
fn container(
    app: &App,
    image: String,
    env: Vec<EnvVar>,
    ports: &BTreeMap<String, u16>,
    mounts: Vec<VolumeMount>,
    drain: u32,
) -> Container {
    let mut resources = ResourceRequirements::default();
    if let Some(r) = &app.spec.resources {
        let mut limits = BTreeMap::new();
        if let Some(m) = &r.memory {
            limits.insert("memory".to_string(), Quantity(m.clone()));
        }
        if let Some(c) = &r.cpu {
            limits.insert("cpu".to_string(), Quantity(c.clone()));
        }
        if !limits.is_empty() {
            resources.requests = Some(limits.clone());
            resources.limits = Some(limits);
        }
    }
    Container {
        name: "app".into(),
        image: Some(image),
        command: (!app.spec.run.command.is_empty()).then(|| app.spec.run.command.clone()),
        args: (!app.spec.run.args.is_empty()).then(|| app.spec.run.args.clone()),
        working_dir: app.spec.run.working_dir.clone().filter(|d| d.starts_with('/')),
        env: Some(env),
        ports: Some(
            ports
                .iter()
                .map(|(n, p)| ContainerPort {
                    name: Some(n.clone()),
                    container_port: i32::from(*p),
                    protocol: Some("TCP".into()),
                    ..Default::default()
                })
                .collect(),
        ),
        startup_probe: app.spec.probes.startup.as_ref().map(probe),
        readiness_probe: app.spec.probes.readiness.as_ref().map(probe),
        liveness_probe: app.spec.probes.liveness.as_ref().map(probe),
        resources: Some(resources),
        // Leave the Service's endpoints before SIGTERM, so in-flight requests finish: the drain of the embedded balancer.
        lifecycle: Some(Lifecycle {
            pre_stop: Some(LifecycleHandler {
                sleep: Some(SleepAction { seconds: i64::from(drain) }),
                ..Default::default()
            }),
            ..Default::default()
        }),
        security_context: Some(restricted_container()),
        volume_mounts: (!mounts.is_empty()).then_some(mounts),
        ..Default::default()
    }
}

/// The StatefulSet: the pod (scrape annotations, anti-affinity, the grace period plus the drain), the rolling update,
/// and the claim templates with their retention.
fn stateful_set(
    app: &App,
    ports: &BTreeMap<String, u16>,
    headless: &str,
    container: Container,
    claims: Vec<PersistentVolumeClaim>,
    pod_volumes: Vec<KVolume>,
    drain: u32,
) -> StatefulSet {
    let name = app.metadata.name.as_str();
    let mut annotations = BTreeMap::new();
    if let Some(m) = &app.spec.metrics {
        let port = match &m.port {
            Some(PortRef::Number(n)) => Some(*n),
            Some(PortRef::Name(n)) => ports.get(n).copied(),
            None => app.spec.ports.first().map(|p| ports[&p.name]),
        };
        annotations.insert("prometheus.io/scrape".to_string(), "true".to_string());
        annotations.insert("prometheus.io/path".to_string(), m.path.clone());
        annotations.insert("prometheus.io/scheme".to_string(), m.scheme.clone());
        if let Some(p) = port {
            annotations.insert("prometheus.io/port".to_string(), p.to_string());
        }
    }
    let mut pod_labels = labels(app);
    pod_labels.extend(
        app.metadata.labels.iter().filter(|(k, _)| !k.starts_with("capstan.dev/")).map(|(k, v)| (k.clone(), v.clone())),
    );
    let retention = if app
        .spec
        .volumes
        .iter()
        .any(|v| v.scope == VolumeScope::Replica && v.reclaim_policy == ReclaimPolicy::Retain)
    {
        "Retain"
    } else {
        "Delete"
    };
    StatefulSet {
        metadata: meta(app, name, None),
        spec: Some(StatefulSetSpec {
            replicas: Some(app.spec.replicas),
            service_name: Some(headless.to_string()),
            selector: LabelSelector { match_labels: Some(selector(app)), match_expressions: None },
            min_ready_seconds: (app.spec.update.min_ready_seconds > 0)
                .then_some(app.spec.update.min_ready_seconds as i32),
            revision_history_limit: Some(app.spec.update.revision_history_limit as i32),
            update_strategy: Some(StatefulSetUpdateStrategy {
                type_: Some("RollingUpdate".into()),
                rolling_update: Some(RollingUpdateStatefulSetStrategy {
                    partition: Some(app.spec.update.partition as i32),
                    max_unavailable: None,
                }),
            }),
            persistent_volume_claim_retention_policy: (!claims.is_empty()).then(|| {
                StatefulSetPersistentVolumeClaimRetentionPolicy {
                    when_deleted: Some(retention.into()),
                    when_scaled: Some("Retain".into()),
                }
            }),
            volume_claim_templates: (!claims.is_empty()).then_some(claims),
            template: PodTemplateSpec {
                metadata: Some(ObjectMeta {
                    labels: Some(pod_labels),
                    annotations: (!annotations.is_empty()).then_some(annotations),
                    ..Default::default()
                }),
                spec: Some(PodSpec {
                    containers: vec![container],
                    termination_grace_period_seconds: Some(
                        i64::from(app.spec.termination_grace_period_seconds) + i64::from(drain),
                    ),
                    security_context: Some(restricted_pod()),
                    affinity: Some(Affinity {
                        pod_anti_affinity: Some(PodAntiAffinity {
                            preferred_during_scheduling_ignored_during_execution: Some(vec![WeightedPodAffinityTerm {
                                weight: 100,
                                pod_affinity_term: PodAffinityTerm {
                                    label_selector: Some(LabelSelector {
                                        match_labels: Some(selector(app)),
                                        match_expressions: None,
                                    }),
                                    topology_key: "kubernetes.io/hostname".into(),
                                    ..Default::default()
                                },
                            }]),
                            ..Default::default()
                        }),
                        ..Default::default()
                    }),
                    volumes: (!pod_volumes.is_empty()).then_some(pod_volumes),
                    ..Default::default()
                }),
            },
            ..Default::default()
        }),
        ..Default::default()
    }
}

/// The Services: one for clients, a headless one for peers (none when the App has no port).
fn services(app: &App, ports: &BTreeMap<String, u16>, headless: &str) -> Vec<Value> {
    let name = app.metadata.name.as_str();
    let mut out = Vec::new();
    let service_ports: Vec<ServicePort> = ports
        .iter()
        .map(|(n, p)| ServicePort {
            name: Some(n.clone()),
            port: i32::from(*p),
            target_port: Some(IntOrString::String(n.clone())),
            protocol: Some("TCP".into()),
            // `h2c` alone is Capstan's shorthand; a cluster's Gateway reads Kubernetes' name for it.
            app_protocol: app.spec.ports.iter().find(|x| &x.name == n).and_then(|x| {
                x.app_protocol
                    .as_deref()
                    .map(|a| if a == "h2c" { "kubernetes.io/h2c".to_string() } else { a.to_string() })
            }),
            ..Default::default()
        })
        .collect();
    let client_ip = app.spec.expose.iter().find_map(|e| e.sticky.as_ref()?.client_ip.as_ref());
    if !service_ports.is_empty() {
        out.push(to_value(&Service {
            metadata: meta(app, name, None),
            spec: Some(ServiceSpec {
                type_: Some("ClusterIP".into()),
                selector: Some(selector(app)),
                ports: Some(service_ports.clone()),
                session_affinity: client_ip.map(|_| "ClientIP".into()),
                session_affinity_config: client_ip.map(|c| SessionAffinityConfig {
                    client_ip: Some(ClientIPConfig { timeout_seconds: Some(c.timeout_seconds as i32) }),
                }),
                ..Default::default()
            }),
            ..Default::default()
        }));
        out.push(to_value(&Service {
            metadata: meta(app, headless, Some("peers")),
            spec: Some(ServiceSpec {
                cluster_ip: Some("None".into()),
                publish_not_ready_addresses: Some(true),
                selector: Some(selector(app)),
                ports: Some(service_ports),
                ..Default::default()
            }),
            ..Default::default()
        }));
    }
    out
}

/// Disruptions one at a time, as the rolling update.
fn pod_disruption_budget(app: &App) -> PodDisruptionBudget {
    let name = app.metadata.name.as_str();
    PodDisruptionBudget {
        metadata: meta(app, name, None),
        spec: Some(PodDisruptionBudgetSpec {
            max_unavailable: Some(IntOrString::Int(1)),
            selector: Some(LabelSelector { match_labels: Some(selector(app)), match_expressions: None }),
            ..Default::default()
        }),
        ..Default::default()
    }
}

/// Who may reach the replicas: the namespaces of the Gateways or the ingress controller of its entry points, the App's own
/// replicas, and anyone on the tcp entry ports.
fn network_policy(
    app: &App,
    opts: &RenderOptions,
    gateways: &[String],
    target_of: &impl Fn(&Option<PortRef>) -> Option<(String, u16)>,
) -> NetworkPolicy {
    let name = app.metadata.name.as_str();
    let mut from = vec![NetworkPolicyPeer {
        pod_selector: Some(LabelSelector { match_labels: Some(selector(app)), match_expressions: None }),
        ..Default::default()
    }];
    // A Gateway's proxies run in its namespace with most implementations (Istio, Envoy Gateway's, for two).
    let mut namespaces = super::entry::client_namespaces(app, opts);
    namespaces.extend(gateways.iter().cloned());
    namespaces.sort();
    namespaces.dedup();
    for ns in namespaces {
        from.push(NetworkPolicyPeer {
            namespace_selector: Some(LabelSelector {
                match_labels: Some(BTreeMap::from([("kubernetes.io/metadata.name".to_string(), ns)])),
                match_expressions: None,
            }),
            ..Default::default()
        });
    }
    let mut rules = vec![NetworkPolicyIngressRule { from: Some(from), ports: None }];
    // A LoadBalancer's clients come from anywhere: open exactly the tcp entry ports (those behind a Gateway are
    // reached from its namespace, above).
    let load_balanced =
        |e: &&capstan_model::Expose| super::entry::front(app, e, opts) == super::entry::Front::LoadBalancer;
    if app.spec.expose.iter().any(|e| load_balanced(&e)) {
        let tcp_ports = app
            .spec
            .expose
            .iter()
            .filter(load_balanced)
            .filter_map(|e| target_of(&e.target_port))
            .map(|(n, _)| k8s_openapi::api::networking::v1::NetworkPolicyPort {
                port: Some(IntOrString::String(n)),
                protocol: Some("TCP".into()),
                end_port: None,
            })
            .collect();
        rules.push(NetworkPolicyIngressRule { from: None, ports: Some(tcp_ports) });
    }
    NetworkPolicy {
        metadata: meta(app, &format!("{name}-allow"), Some("network")),
        spec: Some(NetworkPolicySpec {
            pod_selector: Some(LabelSelector { match_labels: Some(selector(app)), match_expressions: None }),
            policy_types: Some(vec!["Ingress".into()]),
            ingress: Some(rules),
            egress: None,
        }),
    }
}
