//! A ModelServer on Kubernetes: a Deployment of `capstan serve-model` reading versions from a shared claim, a
//! Service on TF Serving's port 8501, probes on the KServe V2 health endpoints, Prometheus scrape annotations,
//! a HorizontalPodAutoscaler on the request rate when autoscaling, and a NetworkPolicy letting clients in.

use std::collections::BTreeMap;

use capstan_model::serving::serve_model_args;
use capstan_model::ModelServer;
use k8s_openapi::api::apps::v1::{Deployment, DeploymentSpec};
use k8s_openapi::api::autoscaling::v2::{
    CrossVersionObjectReference, HPAScalingRules, HorizontalPodAutoscaler, HorizontalPodAutoscalerBehavior,
    HorizontalPodAutoscalerSpec, MetricIdentifier, MetricSpec, MetricTarget, PodsMetricSource,
};
use k8s_openapi::api::core::v1::{
    Container, ContainerPort, HTTPGetAction, PersistentVolumeClaim, PersistentVolumeClaimSpec,
    PersistentVolumeClaimVolumeSource, PodSpec, PodTemplateSpec, Probe, SecurityContext, Service, ServicePort,
    ServiceSpec, Volume, VolumeMount, VolumeResourceRequirements,
};
use k8s_openapi::api::networking::v1::{
    NetworkPolicy, NetworkPolicyIngressRule, NetworkPolicyPeer, NetworkPolicyPort, NetworkPolicySpec,
};
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{LabelSelector, ObjectMeta};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use serde_json::Value;

use crate::render::{restricted_container, restricted_pod, to_value, RenderError};

/// TF Serving's REST port.
pub const REST_PORT: u16 = 8501;
/// Where the models claim is mounted.
pub const MODELS_ROOT: &str = "/models";
/// The per-pod metric the HorizontalPodAutoscaler reads (served by prometheus-adapter from
/// `rate(capstan_model_requests_total[1m])`).
pub const RPS_METRIC: &str = "capstan_model_requests_per_second";

/// Renders a ModelServer's claim, Deployment, Service, NetworkPolicy and (when autoscaling) autoscaler.
pub fn render_model_server(ms: &ModelServer, opts: &crate::render::RenderOptions) -> Result<Vec<Value>, RenderError> {
    let name = ms.metadata.name.as_str();
    let ns = ms.metadata.namespace();
    let image = ms.spec.image.clone().ok_or_else(|| RenderError {
        object: format!("ModelServer/{name}"),
        field: "spec.image".into(),
        message: "is required on Kubernetes: an image holding the `capstan` binary runs `capstan serve-model`".into(),
    })?;
    let model = ms.spec.model.clone().unwrap_or_else(|| name.to_string());
    let server = capstan_model::serving::server_app(name);
    let mut labels: BTreeMap<String, String> = ms.metadata.labels.clone();
    labels.insert("app.kubernetes.io/name".into(), server.clone());
    labels.insert("app.kubernetes.io/instance".into(), name.into());
    labels.insert("app.kubernetes.io/component".into(), "model-server".into());
    labels.insert("app.kubernetes.io/managed-by".into(), "capstan".into());
    let selector: BTreeMap<String, String> = [
        ("app.kubernetes.io/name".to_string(), server.clone()),
        ("app.kubernetes.io/instance".to_string(), name.to_string()),
    ]
    .into();
    let meta = |n: String| ObjectMeta {
        name: Some(n),
        namespace: Some(ns.to_string()),
        labels: Some(labels.clone()),
        ..Default::default()
    };
    let claim = format!("{name}-models");
    let mut out = Vec::new();

    // The versions live on a claim that training writes to and every server reads; it is never pruned.
    let mut claim_meta = meta(claim.clone());
    claim_meta.annotations = Some([("capstan.dev/prune".to_string(), "disabled".to_string())].into());
    out.push(to_value(&PersistentVolumeClaim {
        metadata: claim_meta,
        spec: Some(PersistentVolumeClaimSpec {
            access_modes: Some(vec!["ReadWriteMany".into()]),
            resources: Some(VolumeResourceRequirements {
                requests: Some([("storage".to_string(), Quantity("10Gi".into()))].into()),
                limits: None,
            }),
            ..Default::default()
        }),
        ..Default::default()
    }));

    let base = format!("{MODELS_ROOT}/{model}");
    let mut args = serve_model_args(&ms.spec, &model, &base);
    args.extend(["--address".into(), "0.0.0.0".into(), "--rest-api-port".into(), REST_PORT.to_string()]);
    let http = |path: &str| Probe {
        http_get: Some(HTTPGetAction {
            path: Some(path.into()),
            port: IntOrString::Int(i32::from(REST_PORT)),
            ..Default::default()
        }),
        period_seconds: Some(5),
        ..Default::default()
    };
    let replicas = match &ms.spec.autoscaling {
        Some(a) => ms.spec.replicas.clamp(a.min_replicas.max(1), a.max_replicas.max(a.min_replicas.max(1))),
        None => ms.spec.replicas,
    };
    let annotations: BTreeMap<String, String> = [
        ("prometheus.io/scrape".to_string(), "true".to_string()),
        ("prometheus.io/port".to_string(), REST_PORT.to_string()),
        ("prometheus.io/path".to_string(), "/metrics".to_string()),
    ]
    .into();
    out.push(to_value(&Deployment {
        metadata: meta(server.clone()),
        spec: Some(DeploymentSpec {
            replicas: Some(replicas),
            selector: LabelSelector { match_labels: Some(selector.clone()), match_expressions: None },
            template: PodTemplateSpec {
                metadata: Some(ObjectMeta {
                    labels: Some(labels.clone()),
                    annotations: Some(annotations),
                    ..Default::default()
                }),
                spec: Some(PodSpec {
                    containers: vec![Container {
                        name: "server".into(),
                        image: Some(image),
                        command: Some(vec!["capstan".into()]),
                        args: Some(args),
                        ports: Some(vec![ContainerPort {
                            name: Some("http".into()),
                            container_port: i32::from(REST_PORT),
                            protocol: Some("TCP".into()),
                            ..Default::default()
                        }]),
                        readiness_probe: Some(http("/v2/health/ready")),
                        liveness_probe: Some(http("/v2/health/live")),
                        volume_mounts: Some(vec![VolumeMount {
                            name: "models".into(),
                            mount_path: MODELS_ROOT.into(),
                            read_only: Some(true),
                            ..Default::default()
                        }]),
                        security_context: Some(SecurityContext {
                            read_only_root_filesystem: Some(true),
                            ..restricted_container()
                        }),
                        ..Default::default()
                    }],
                    volumes: Some(vec![Volume {
                        name: "models".into(),
                        persistent_volume_claim: Some(PersistentVolumeClaimVolumeSource {
                            claim_name: claim,
                            read_only: Some(true),
                        }),
                        ..Default::default()
                    }]),
                    security_context: Some(restricted_pod()),
                    ..Default::default()
                }),
            },
            ..Default::default()
        }),
        ..Default::default()
    }));
    out.push(to_value(&Service {
        metadata: meta(name.to_string()),
        spec: Some(ServiceSpec {
            selector: Some(selector.clone()),
            ports: Some(vec![ServicePort {
                name: Some("http".into()),
                port: i32::from(REST_PORT),
                target_port: Some(IntOrString::String("http".into())),
                protocol: Some("TCP".into()),
                ..Default::default()
            }]),
            ..Default::default()
        }),
        ..Default::default()
    }));
    // Clients anywhere in the namespace, and the front door's pods (the default Gateway's or the ingress
    // controller's), may call the REST port.
    out.push(to_value(&NetworkPolicy {
        metadata: meta(format!("{name}-allow")),
        spec: Some(NetworkPolicySpec {
            pod_selector: Some(LabelSelector { match_labels: Some(selector), match_expressions: None }),
            policy_types: Some(vec!["Ingress".into()]),
            ingress: Some(vec![NetworkPolicyIngressRule {
                from: Some(vec![
                    NetworkPolicyPeer { pod_selector: Some(LabelSelector::default()), ..Default::default() },
                    NetworkPolicyPeer {
                        namespace_selector: Some(LabelSelector {
                            match_labels: Some(
                                [("kubernetes.io/metadata.name".to_string(), opts.front_door_namespace())].into(),
                            ),
                            match_expressions: None,
                        }),
                        ..Default::default()
                    },
                ]),
                ports: Some(vec![NetworkPolicyPort {
                    port: Some(IntOrString::Int(i32::from(REST_PORT))),
                    protocol: Some("TCP".into()),
                    end_port: None,
                }]),
            }]),
            egress: None,
        }),
    }));
    if let Some(a) = &ms.spec.autoscaling {
        let mut metrics = Vec::new();
        if let Some(rps) = a.target_requests_per_second {
            metrics.push(MetricSpec {
                type_: "Pods".into(),
                pods: Some(PodsMetricSource {
                    metric: MetricIdentifier { name: RPS_METRIC.into(), selector: None },
                    target: MetricTarget {
                        type_: "AverageValue".into(),
                        average_value: Some(Quantity(format!("{}m", (rps * 1000.0).round() as i64))),
                        ..Default::default()
                    },
                }),
                ..Default::default()
            });
        }
        out.push(to_value(&HorizontalPodAutoscaler {
            metadata: meta(server.clone()),
            spec: Some(HorizontalPodAutoscalerSpec {
                scale_target_ref: CrossVersionObjectReference {
                    api_version: Some("apps/v1".into()),
                    kind: "Deployment".into(),
                    name: server,
                },
                min_replicas: Some(a.min_replicas.max(1)),
                max_replicas: a.max_replicas.max(a.min_replicas.max(1)),
                metrics: (!metrics.is_empty()).then_some(metrics),
                behavior: a.cooldown_seconds.map(|c| HorizontalPodAutoscalerBehavior {
                    scale_down: Some(HPAScalingRules {
                        stabilization_window_seconds: Some(c as i32),
                        ..Default::default()
                    }),
                    scale_up: None,
                }),
            }),
            ..Default::default()
        }));
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use capstan_model::Resource;

    fn ms(yaml: &str) -> ModelServer {
        match capstan_model::parse_manifests("m.yaml", yaml).expect("parses").remove(0).resource {
            Resource::ModelServer(m) => m,
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn a_model_server_becomes_a_deployment_service_claim_policy_and_autoscaler() {
        let m = ms("apiVersion: capstan.dev/v1alpha1
kind: ModelServer
metadata: {name: mnist, namespace: ml}
spec:
  basePath: models/mnist
  image: registry.example.com/capstan:0.1
  versionPolicy: {latest: {numVersions: 2}}
  replicas: 1
  autoscaling: {minReplicas: 2, maxReplicas: 6, targetRequestsPerSecond: 50, cooldownSeconds: 120}
");
        let objs = render_model_server(&m, &Default::default()).expect("renders");
        let kinds: Vec<&str> = objs.iter().map(|o| o["kind"].as_str().unwrap_or("")).collect();
        assert_eq!(
            kinds,
            ["PersistentVolumeClaim", "Deployment", "Service", "NetworkPolicy", "HorizontalPodAutoscaler"]
        );
        let d = &objs[1];
        assert_eq!(d["metadata"]["name"], "mnist-server");
        assert_eq!(d["spec"]["replicas"], 2, "starts at the autoscaler's minimum");
        let args: Vec<&str> = d["spec"]["template"]["spec"]["containers"][0]["args"]
            .as_array()
            .expect("args")
            .iter()
            .filter_map(|a| a.as_str())
            .collect();
        assert_eq!(
            args,
            [
                "serve-model",
                "--model-name",
                "mnist",
                "--model-base-path",
                "/models/mnist",
                "--poll-seconds",
                "1",
                "--version-policy",
                "latest",
                "--num-versions",
                "2",
                "--address",
                "0.0.0.0",
                "--rest-api-port",
                "8501"
            ]
        );
        assert_eq!(
            d["spec"]["template"]["spec"]["containers"][0]["readinessProbe"]["httpGet"]["path"],
            "/v2/health/ready"
        );
        assert_eq!(objs[0]["metadata"]["annotations"]["capstan.dev/prune"], "disabled");
        assert_eq!(objs[4]["spec"]["metrics"][0]["pods"]["target"]["averageValue"], "50000m", "50 per pod");
        assert_eq!(objs[4]["spec"]["behavior"]["scaleDown"]["stabilizationWindowSeconds"], 120);
        for o in &objs {
            let back = match o["kind"].as_str() {
                Some("Deployment") => serde_json::from_value::<Deployment>(o.clone()).map(|x| to_value(&x)),
                Some("Service") => serde_json::from_value::<Service>(o.clone()).map(|x| to_value(&x)),
                Some("PersistentVolumeClaim") => {
                    serde_json::from_value::<PersistentVolumeClaim>(o.clone()).map(|x| to_value(&x))
                }
                Some("NetworkPolicy") => serde_json::from_value::<NetworkPolicy>(o.clone()).map(|x| to_value(&x)),
                _ => serde_json::from_value::<HorizontalPodAutoscaler>(o.clone()).map(|x| to_value(&x)),
            };
            assert_eq!(&back.expect("decodes"), o);
        }
    }

    #[test]
    fn no_image_is_named() {
        let m = ms("apiVersion: capstan.dev/v1alpha1\nkind: ModelServer\nmetadata: {name: x}\nspec: {basePath: m}\n");
        assert_eq!(render_model_server(&m, &Default::default()).unwrap_err().field, "spec.image");
    }
}
