//! A TrainingJob on Kubernetes, as Kubeflow's training operator lays out a TFJob: one Pod and one headless
//! Service per task (`<job>-<type>-<index>`), `TF_CONFIG` naming every task by its Service's DNS name on port
//! 2222, and a NetworkPolicy that lets the job's tasks reach each other past the namespace's default deny.

use std::collections::BTreeMap;

use capstan_model::training::{task_name, tf_config, ReplicaType, TaskRestartPolicy};
use capstan_model::TrainingJob;
use k8s_openapi::api::core::v1::{Container, ContainerPort, EnvVar, Pod, PodSpec, Service, ServicePort, ServiceSpec};
use k8s_openapi::api::networking::v1::{NetworkPolicy, NetworkPolicyIngressRule, NetworkPolicyPeer, NetworkPolicySpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{LabelSelector, ObjectMeta};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use serde_json::Value;

use crate::render::{restricted_container, restricted_pod, to_value, RenderError};

/// The port every task listens on for the cluster (the training operator's default `tfjob-port`).
pub const TASK_PORT: u16 = 2222;
/// Labels the tasks carry, as the training operator's `training.kubeflow.org/*`.
pub const JOB_LABEL: &str = "training.capstan.dev/job-name";
pub const TYPE_LABEL: &str = "training.capstan.dev/replica-type";
pub const INDEX_LABEL: &str = "training.capstan.dev/replica-index";

/// The Pod's restartPolicy for a task's. `ExitCode` (retry on signals, fail on errors) is the operator's to
/// apply; the Pod itself does not restart.
pub fn pod_restart_policy(p: TaskRestartPolicy) -> &'static str {
    match p {
        TaskRestartPolicy::Never | TaskRestartPolicy::ExitCode => "Never",
        TaskRestartPolicy::OnFailure => "OnFailure",
        TaskRestartPolicy::Always => "Always",
    }
}

/// Renders a TrainingJob's Pods, headless Services and NetworkPolicy.
pub fn render_training_job(job: &TrainingJob) -> Result<Vec<Value>, RenderError> {
    let name = job.metadata.name.as_str();
    let ns = job.metadata.namespace();
    let base_labels = |extra: &[(&str, String)]| -> BTreeMap<String, String> {
        let mut l: BTreeMap<String, String> = job.metadata.labels.clone();
        l.insert("app.kubernetes.io/name".into(), name.into());
        l.insert("app.kubernetes.io/instance".into(), name.into());
        l.insert("app.kubernetes.io/managed-by".into(), "capstan".into());
        l.insert(JOB_LABEL.into(), name.into());
        for (k, v) in extra {
            l.insert((*k).into(), v.clone());
        }
        l
    };
    // Every task's address: its Service's DNS name.
    let addresses: BTreeMap<ReplicaType, Vec<String>> = job
        .spec
        .replica_specs
        .iter()
        .map(|(t, r)| {
            (*t, (0..r.replicas).map(|i| format!("{}.{ns}.svc:{TASK_PORT}", task_name(name, *t, i))).collect())
        })
        .collect();
    let mut out = Vec::new();
    for (t, r) in &job.spec.replica_specs {
        let image = r.run.image.clone().ok_or_else(|| RenderError {
            object: format!("TrainingJob/{name}"),
            field: format!("spec.replicaSpecs.{t:?}.run.image"),
            message: "is required on Kubernetes: the embedded runtime runs `command`, a cluster runs an image".into(),
        })?;
        for i in 0..r.replicas {
            let task = task_name(name, *t, i);
            let task_labels = base_labels(&[
                ("app.kubernetes.io/component", t.job_name().to_string()),
                (TYPE_LABEL, t.job_name().to_string()),
                (INDEX_LABEL, i.to_string()),
            ]);
            let selector: BTreeMap<String, String> = [
                (JOB_LABEL.to_string(), name.to_string()),
                (TYPE_LABEL.to_string(), t.job_name().to_string()),
                (INDEX_LABEL.to_string(), i.to_string()),
            ]
            .into();
            let mut env: Vec<EnvVar> = r
                .run
                .env
                .iter()
                .map(|(k, v)| EnvVar { name: k.clone(), value: Some(v.clone()), ..Default::default() })
                .collect();
            if let Some(cfg) = tf_config(&addresses, *t, i) {
                env.push(EnvVar { name: "TF_CONFIG".into(), value: Some(cfg.to_string()), ..Default::default() });
            }
            let meta = |labels: BTreeMap<String, String>| ObjectMeta {
                name: Some(task.clone()),
                namespace: Some(ns.to_string()),
                labels: Some(labels),
                ..Default::default()
            };
            out.push(to_value(&Service {
                metadata: meta(task_labels.clone()),
                spec: Some(ServiceSpec {
                    cluster_ip: Some("None".into()),
                    selector: Some(selector),
                    // Tasks find each other before they are Ready: TensorFlow's servers start after the DNS lookups.
                    publish_not_ready_addresses: Some(true),
                    ports: Some(vec![ServicePort {
                        name: Some("tfjob-port".into()),
                        port: i32::from(TASK_PORT),
                        target_port: Some(IntOrString::Int(i32::from(TASK_PORT))),
                        protocol: Some("TCP".into()),
                        ..Default::default()
                    }]),
                    ..Default::default()
                }),
                ..Default::default()
            }));
            out.push(to_value(&Pod {
                metadata: meta(task_labels),
                spec: Some(PodSpec {
                    restart_policy: Some(pod_restart_policy(r.restart_policy).into()),
                    active_deadline_seconds: job.spec.run_policy.active_deadline_seconds.map(|s| s as i64),
                    termination_grace_period_seconds: Some(r.termination_grace_period_seconds.unwrap_or(30) as i64),
                    hostname: Some(task.clone()),
                    security_context: Some(restricted_pod()),
                    containers: vec![Container {
                        // The training operator's default container name.
                        name: "tensorflow".into(),
                        image: Some(image.clone()),
                        command: (!r.run.command.is_empty()).then(|| r.run.command.clone()),
                        args: (!r.run.args.is_empty()).then(|| r.run.args.clone()),
                        working_dir: r.run.working_dir.clone().filter(|d| d.starts_with('/')),
                        env: Some(env),
                        ports: Some(vec![ContainerPort {
                            name: Some("tfjob-port".into()),
                            container_port: i32::from(TASK_PORT),
                            protocol: Some("TCP".into()),
                            ..Default::default()
                        }]),
                        security_context: Some(restricted_container()),
                        ..Default::default()
                    }],
                    ..Default::default()
                }),
                ..Default::default()
            }));
        }
    }
    // The tasks talk to each other (gRPC on 2222, collectives): allowed within the job only.
    let job_selector = LabelSelector {
        match_labels: Some([(JOB_LABEL.to_string(), name.to_string())].into()),
        match_expressions: None,
    };
    out.push(to_value(&NetworkPolicy {
        metadata: ObjectMeta {
            name: Some(format!("{name}-allow")),
            namespace: Some(ns.to_string()),
            labels: Some(base_labels(&[])),
            ..Default::default()
        },
        spec: Some(NetworkPolicySpec {
            pod_selector: Some(job_selector.clone()),
            policy_types: Some(vec!["Ingress".into()]),
            ingress: Some(vec![NetworkPolicyIngressRule {
                from: Some(vec![NetworkPolicyPeer { pod_selector: Some(job_selector), ..Default::default() }]),
                ports: None,
            }]),
            egress: None,
        }),
    }));
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use capstan_model::Resource;

    fn job(yaml: &str) -> TrainingJob {
        match capstan_model::parse_manifests("t.yaml", yaml).expect("parses").remove(0).resource {
            Resource::TrainingJob(j) => j,
            other => panic!("{other:?}"),
        }
    }

    const PS_JOB: &str = "apiVersion: capstan.dev/v1alpha1
kind: TrainingJob
metadata: {name: mnist, namespace: ml}
spec:
  replicaSpecs:
    Chief: {replicas: 1, restartPolicy: ExitCode, run: {image: tf:2.15, command: [python, train.py]}}
    Worker: {replicas: 2, restartPolicy: OnFailure, run: {image: tf:2.15, command: [python, train.py]}}
    PS: {replicas: 1, run: {image: tf:2.15, command: [python, train.py], env: {ROLE: ps}}}
  runPolicy: {activeDeadlineSeconds: 3600}
";

    #[test]
    fn one_pod_and_one_headless_service_per_task_with_tf_config() {
        let objs = render_training_job(&job(PS_JOB)).expect("renders");
        let kinds: Vec<String> = objs
            .iter()
            .map(|o| format!("{}/{}", o["kind"].as_str().unwrap_or(""), o["metadata"]["name"].as_str().unwrap_or("")))
            .collect();
        assert_eq!(
            kinds,
            [
                "Service/mnist-chief-0",
                "Pod/mnist-chief-0",
                "Service/mnist-worker-0",
                "Pod/mnist-worker-0",
                "Service/mnist-worker-1",
                "Pod/mnist-worker-1",
                "Service/mnist-ps-0",
                "Pod/mnist-ps-0",
                "NetworkPolicy/mnist-allow",
            ]
        );
        let pod = &objs[3];
        let env = pod["spec"]["containers"][0]["env"].as_array().expect("env");
        let cfg: Value = serde_json::from_str(
            env.iter().find(|e| e["name"] == "TF_CONFIG").and_then(|e| e["value"].as_str()).expect("TF_CONFIG"),
        )
        .expect("json");
        assert_eq!(cfg["task"], serde_json::json!({"type": "worker", "index": 0}));
        assert_eq!(cfg["cluster"]["chief"], serde_json::json!(["mnist-chief-0.ml.svc:2222"]));
        assert_eq!(
            cfg["cluster"]["worker"],
            serde_json::json!(["mnist-worker-0.ml.svc:2222", "mnist-worker-1.ml.svc:2222"])
        );
        assert_eq!(cfg["cluster"]["ps"], serde_json::json!(["mnist-ps-0.ml.svc:2222"]));
        assert_eq!(pod["spec"]["restartPolicy"], "OnFailure");
        assert_eq!(objs[1]["spec"]["restartPolicy"], "Never", "ExitCode is the operator's; the pod does not restart");
        assert_eq!(pod["spec"]["activeDeadlineSeconds"], 3600);
        assert_eq!(objs[2]["spec"]["clusterIP"], "None");
        assert_eq!(objs[2]["spec"]["selector"][INDEX_LABEL], "0");
        assert_eq!(objs[7]["spec"]["containers"][0]["env"][0], serde_json::json!({"name": "ROLE", "value": "ps"}));
        // Every object is its k8s-openapi type.
        for o in &objs {
            let back = match o["kind"].as_str() {
                Some("Pod") => serde_json::from_value::<Pod>(o.clone()).map(|x| to_value(&x)),
                Some("Service") => serde_json::from_value::<Service>(o.clone()).map(|x| to_value(&x)),
                _ => serde_json::from_value::<NetworkPolicy>(o.clone()).map(|x| to_value(&x)),
            };
            assert_eq!(&back.expect("decodes"), o);
        }
    }

    #[test]
    fn a_single_task_gets_no_tf_config_and_a_missing_image_is_named() {
        let single = job("apiVersion: capstan.dev/v1alpha1
kind: TrainingJob
metadata: {name: solo}
spec:
  replicaSpecs:
    Worker: {replicas: 1, run: {image: tf, command: [python]}}
");
        let objs = render_training_job(&single).expect("renders");
        assert!(objs[1]["spec"]["containers"][0]["env"].as_array().is_some_and(|e| e.is_empty()));
        let no_image = job("apiVersion: capstan.dev/v1alpha1
kind: TrainingJob
metadata: {name: bare}
spec:
  replicaSpecs:
    Worker: {replicas: 2, run: {command: [python]}}
");
        let e = render_training_job(&no_image).unwrap_err();
        assert_eq!(e.field, "spec.replicaSpecs.Worker.run.image");
    }
}
