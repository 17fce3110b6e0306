//! A Database rendered: PostgreSQL's StatefulSet, its Service and NetworkPolicy (CloudNativePG's are in `cnpg`).

use std::collections::BTreeMap;

use capstan_model::database::{Database, DatabaseSpec};
use capstan_model::ReclaimPolicy;
use k8s_openapi::api::apps::v1::{StatefulSet, StatefulSetPersistentVolumeClaimRetentionPolicy, StatefulSetSpec};
use k8s_openapi::api::core::v1::{
    Container, ContainerPort, EnvVar, EnvVarSource, ExecAction, PersistentVolumeClaim, PersistentVolumeClaimSpec,
    PodSecurityContext, PodSpec, PodTemplateSpec, Probe as KProbe, SecretKeySelector, SecurityContext, Service,
    ServicePort, ServiceSpec, VolumeMount, VolumeResourceRequirements,
};
use k8s_openapi::api::networking::v1::{NetworkPolicy, NetworkPolicyIngressRule, NetworkPolicyPeer, NetworkPolicySpec};
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{LabelSelector, ObjectMeta};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use serde_json::Value;

use super::common::{app_peer, restricted_container, restricted_pod, to_value};

/// The PostgreSQL port on Kubernetes.
pub const POSTGRES_PORT: u16 = 5432;
/// The image a Database runs when it names no version.
pub const POSTGRES_DEFAULT_MAJOR: u32 = 16;

/// The connection URL an App gets for a Database, with the password as `$(VAR)`.
pub(super) fn database_url(namespace: &str, db: &str, spec: Option<&DatabaseSpec>, password_var: &str) -> String {
    let default = DatabaseSpec::default();
    let spec = spec.unwrap_or(&default);
    format!(
        "postgres://{}:$({password_var})@{db}.{namespace}.svc:{POSTGRES_PORT}/{}",
        spec.user_name(),
        spec.database_name(db)
    )
}

pub(super) fn db_labels(db: &Database) -> BTreeMap<String, String> {
    BTreeMap::from([
        ("app.kubernetes.io/name".to_string(), "postgresql".to_string()),
        ("app.kubernetes.io/instance".to_string(), db.metadata.name.clone()),
        ("app.kubernetes.io/component".to_string(), "database".to_string()),
        ("app.kubernetes.io/managed-by".to_string(), "capstan".to_string()),
    ])
}

fn db_selector(db: &Database) -> BTreeMap<String, String> {
    BTreeMap::from([
        ("app.kubernetes.io/name".to_string(), "postgresql".to_string()),
        ("app.kubernetes.io/instance".to_string(), db.metadata.name.clone()),
    ])
}

/// Renders a Database as a PostgreSQL StatefulSet (the official image, data on a ReadWriteOnce claim kept unless
/// `deletionPolicy: Delete`) and its Service; `clients` are the Apps that reference it, let in by a NetworkPolicy.
/// The password lives in the Secret `<name>-credentials` (key `password`), which is created once, outside of the
/// rendering, so rendering stays reproducible.
pub fn render_database(db: &Database, clients: &[String]) -> Vec<Value> {
    if db.spec.provider == capstan_model::database::DatabaseProvider::Cnpg {
        return crate::cnpg::render_cnpg(db, db_labels(db), clients);
    }
    let name = db.metadata.name.as_str();
    let ns = db.metadata.namespace();
    let meta = |n: &str| ObjectMeta {
        name: Some(n.to_string()),
        namespace: Some(ns.to_string()),
        labels: Some(db_labels(db)),
        ..Default::default()
    };
    let major = db.spec.version.unwrap_or(POSTGRES_DEFAULT_MAJOR);
    let mut args = Vec::new();
    for (k, v) in &db.spec.parameters {
        args.push("-c".to_string());
        args.push(format!("{k}={v}"));
    }
    let env = vec![
        EnvVar { name: "POSTGRES_USER".into(), value: Some(db.spec.user_name()), ..Default::default() },
        EnvVar { name: "POSTGRES_DB".into(), value: Some(db.spec.database_name(name)), ..Default::default() },
        EnvVar {
            name: "POSTGRES_PASSWORD".into(),
            value_from: Some(EnvVarSource {
                secret_key_ref: Some(SecretKeySelector {
                    name: capstan_model::database::credentials_secret(name),
                    key: "password".into(),
                    optional: None,
                }),
                ..Default::default()
            }),
            ..Default::default()
        },
        EnvVar { name: "PGDATA".into(), value: Some("/var/lib/postgresql/data/pgdata".into()), ..Default::default() },
    ];
    let ready = KProbe {
        exec: Some(ExecAction {
            command: Some(vec![
                "pg_isready".into(),
                "-h".into(),
                "127.0.0.1".into(),
                "-U".into(),
                db.spec.user_name(),
                "-d".into(),
                db.spec.database_name(name),
            ]),
        }),
        period_seconds: Some(5),
        timeout_seconds: Some(3),
        ..Default::default()
    };
    let container = Container {
        name: "postgres".into(),
        image: Some(format!("postgres:{major}")),
        args: (!args.is_empty()).then_some(args),
        env: Some(env),
        ports: Some(vec![ContainerPort {
            name: Some("postgres".into()),
            container_port: i32::from(POSTGRES_PORT),
            protocol: Some("TCP".into()),
            ..Default::default()
        }]),
        readiness_probe: Some(ready),
        volume_mounts: Some(vec![VolumeMount {
            name: "data".into(),
            mount_path: "/var/lib/postgresql/data".into(),
            ..Default::default()
        }]),
        security_context: Some(SecurityContext { run_as_user: Some(999), ..restricted_container() }),
        ..Default::default()
    };
    let keep = db.spec.deletion_policy != ReclaimPolicy::Delete;
    let sts = StatefulSet {
        metadata: meta(&format!("{name}-postgres")),
        spec: Some(StatefulSetSpec {
            replicas: Some(1),
            service_name: Some(name.to_string()),
            selector: LabelSelector { match_labels: Some(db_selector(db)), match_expressions: None },
            persistent_volume_claim_retention_policy: Some(StatefulSetPersistentVolumeClaimRetentionPolicy {
                when_deleted: Some(if keep { "Retain" } else { "Delete" }.into()),
                when_scaled: Some("Retain".into()),
            }),
            volume_claim_templates: Some(vec![PersistentVolumeClaim {
                metadata: ObjectMeta { name: Some("data".into()), labels: Some(db_labels(db)), ..Default::default() },
                spec: Some(PersistentVolumeClaimSpec {
                    access_modes: Some(vec!["ReadWriteOnce".into()]),
                    resources: Some(VolumeResourceRequirements {
                        requests: Some(BTreeMap::from([("storage".to_string(), Quantity("10Gi".into()))])),
                        ..Default::default()
                    }),
                    ..Default::default()
                }),
                ..Default::default()
            }]),
            template: PodTemplateSpec {
                metadata: Some(ObjectMeta { labels: Some(db_labels(db)), ..Default::default() }),
                spec: Some(PodSpec {
                    containers: vec![container],
                    // PostgreSQL's fast shutdown needs time to checkpoint.
                    termination_grace_period_seconds: Some(60),
                    security_context: Some(PodSecurityContext { fs_group: Some(999), ..restricted_pod() }),
                    ..Default::default()
                }),
            },
            ..Default::default()
        }),
        ..Default::default()
    };
    let svc = Service {
        metadata: meta(name),
        spec: Some(ServiceSpec {
            type_: Some("ClusterIP".into()),
            selector: Some(db_selector(db)),
            ports: Some(vec![ServicePort {
                name: Some("postgres".into()),
                port: i32::from(POSTGRES_PORT),
                target_port: Some(IntOrString::String("postgres".into())),
                protocol: Some("TCP".into()),
                ..Default::default()
            }]),
            ..Default::default()
        }),
        ..Default::default()
    };
    let from: Vec<NetworkPolicyPeer> = clients.iter().map(|app| app_peer(app)).collect();
    let policy = NetworkPolicy {
        metadata: meta(&format!("{name}-allow")),
        spec: Some(NetworkPolicySpec {
            pod_selector: Some(LabelSelector { match_labels: Some(db_selector(db)), match_expressions: None }),
            policy_types: Some(vec!["Ingress".into()]),
            // No client: nothing may connect (the default-deny holds).
            ingress: Some(if from.is_empty() {
                Vec::new()
            } else {
                vec![NetworkPolicyIngressRule {
                    from: Some(from),
                    ports: Some(vec![k8s_openapi::api::networking::v1::NetworkPolicyPort {
                        port: Some(IntOrString::Int(i32::from(POSTGRES_PORT))),
                        protocol: Some("TCP".into()),
                        end_port: None,
                    }]),
                }]
            }),
            egress: None,
        }),
    };
    vec![to_value(&sts), to_value(&svc), to_value(&policy)]
}
