//! `deploy/kubernetes/`: every object deserializes into its k8s-openapi type without losing a field, the CRDs are
//! the generated ones, and the operator's Deployment runs two replicas the way the RBAC and probes expect.
#![allow(clippy::unwrap_used, clippy::expect_used)] // a test: a failed step is the failure it reports

use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::{Namespace, ServiceAccount};
use k8s_openapi::api::rbac::v1::{ClusterRole, ClusterRoleBinding, Role, RoleBinding};
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use serde_json::Value;

fn docs(file: &str) -> Vec<Value> {
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../deploy/kubernetes").join(file);
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    capstan_model::yaml::parse_documents(&text)
        .unwrap_or_else(|e| panic!("{file}: {e}"))
        .into_iter()
        .map(|d| d.value)
        .collect()
}

fn typed<T: serde::de::DeserializeOwned + serde::Serialize>(v: &Value) -> T {
    let t: T = serde_json::from_value(v.clone()).unwrap_or_else(|e| panic!("{e}: {v}"));
    let mut back = serde_json::to_value(&t).expect("serialize");
    back["apiVersion"] = v["apiVersion"].clone();
    back["kind"] = v["kind"].clone();
    assert_eq!(numbers_as_floats(&back), numbers_as_floats(v), "a field was lost or is unknown to Kubernetes");
    t
}

/// Schemas' `minimum` is a float in k8s-openapi, an integer in YAML: compare numbers by value.
fn numbers_as_floats(v: &Value) -> Value {
    match v {
        Value::Number(n) => n.as_f64().map(Value::from).unwrap_or(Value::Null),
        Value::Array(a) => Value::Array(a.iter().map(numbers_as_floats).collect()),
        Value::Object(m) => Value::Object(m.iter().map(|(k, x)| (k.clone(), numbers_as_floats(x))).collect()),
        other => other.clone(),
    }
}

#[test]
fn every_object_is_a_valid_kubernetes_object() {
    let mut kinds = Vec::new();
    for file in ["namespace.yaml", "crds.yaml", "rbac.yaml", "operator.yaml"] {
        for d in docs(file) {
            let kind = d["kind"].as_str().unwrap_or("").to_string();
            match kind.as_str() {
                "Namespace" => drop(typed::<Namespace>(&d)),
                "CustomResourceDefinition" => drop(typed::<CustomResourceDefinition>(&d)),
                "ServiceAccount" => drop(typed::<ServiceAccount>(&d)),
                "ClusterRole" => drop(typed::<ClusterRole>(&d)),
                "ClusterRoleBinding" => drop(typed::<ClusterRoleBinding>(&d)),
                "Role" => drop(typed::<Role>(&d)),
                "RoleBinding" => drop(typed::<RoleBinding>(&d)),
                "Deployment" => drop(typed::<Deployment>(&d)),
                other => panic!("{file}: unexpected kind {other}"),
            }
            kinds.push(kind);
        }
    }
    for k in ["Namespace", "CustomResourceDefinition", "ClusterRole", "Role", "Deployment"] {
        assert!(kinds.iter().any(|x| x == k), "{k} missing from deploy/kubernetes");
    }
}

#[test]
fn the_crds_are_the_generated_ones() {
    assert_eq!(
        docs("crds.yaml"),
        capstan_kubernetes::crd::all(),
        "regenerate with: capstan crds > deploy/kubernetes/crds.yaml"
    );
}

#[test]
fn the_operator_deployment() {
    let d: Deployment = typed(&docs("operator.yaml")[0]);
    let spec = d.spec.expect("spec");
    assert_eq!(spec.replicas, Some(2), "two replicas, one leader");
    let pod = spec.template.spec.expect("pod");
    assert_eq!(pod.service_account_name.as_deref(), Some("capstan-operator"));
    let c = &pod.containers[0];
    assert_eq!(c.args.as_deref().and_then(|a| a.first()).map(String::as_str), Some("operator"));
    assert!(c.liveness_probe.is_some() && c.readiness_probe.is_some());
    let sc = c.security_context.as_ref().expect("securityContext");
    assert_eq!(sc.allow_privilege_escalation, Some(false));
    assert_eq!(sc.read_only_root_filesystem, Some(true));
    assert_eq!(sc.capabilities.as_ref().and_then(|c| c.drop.clone()), Some(vec!["ALL".to_string()]));
    assert_eq!(pod.security_context.as_ref().and_then(|s| s.run_as_non_root), Some(true));
    let env: Vec<&str> = c.env.iter().flatten().map(|e| e.name.as_str()).collect();
    assert!(env.contains(&"POD_NAME") && env.contains(&"POD_NAMESPACE"), "the Lease identity and namespace");
    let res = c.resources.as_ref().expect("resources");
    assert!(res.requests.is_some() && res.limits.is_some());
}
