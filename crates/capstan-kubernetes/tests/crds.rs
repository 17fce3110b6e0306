//! The CRDs: typed as apiextensions/v1 and structural as the API server demands.
#![allow(clippy::unwrap_used, clippy::expect_used)] // a test: a failed step is the failure it reports

use capstan_kubernetes::crd::all;
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use serde_json::Value;

/// The rules of a structural schema that a generator can break: every node typed (or int-or-string / preserving
/// unknown fields), no `$ref`, no `anyOf`/`oneOf` left, no `additionalProperties` beside `properties`.
fn check(node: &Value, path: &str, problems: &mut Vec<String>) {
    let Value::Object(m) = node else { return };
    let marked = m.contains_key("x-kubernetes-int-or-string") || m.contains_key("x-kubernetes-preserve-unknown-fields");
    if !m.contains_key("type") && !marked {
        problems.push(format!("{path}: no type"));
    }
    for bad in ["$ref", "anyOf", "oneOf", "$defs", "const"] {
        if m.contains_key(bad) {
            problems.push(format!("{path}: {bad}"));
        }
    }
    if m.contains_key("properties") && m.contains_key("additionalProperties") {
        problems.push(format!("{path}: properties and additionalProperties"));
    }
    if let Some(Value::Object(props)) = m.get("properties") {
        for (k, v) in props {
            check(v, &format!("{path}.{k}"), problems);
        }
    }
    for k in ["items", "additionalProperties"] {
        if let Some(v) = m.get(k) {
            check(v, &format!("{path}[{k}]"), problems);
        }
    }
}

#[test]
fn every_kind_has_a_structural_crd() {
    let crds = all();
    let kinds: Vec<&str> = crds.iter().map(|c| c["spec"]["names"]["kind"].as_str().unwrap()).collect();
    assert_eq!(
        kinds,
        ["Source", "Sync", "Database", "App", "TrainingJob", "ModelServer", "AlertRule", "EscalationPolicy"],
        "Secrets are the core kind on Kubernetes"
    );
    for c in &crds {
        let typed: CustomResourceDefinition = serde_json::from_value(c.clone()).unwrap_or_else(|e| panic!("{e}: {c}"));
        assert_eq!(typed.spec.group, "capstan.dev");
        let schema = &c["spec"]["versions"][0]["schema"]["openAPIV3Schema"];
        let mut problems = Vec::new();
        check(schema, c["spec"]["names"]["kind"].as_str().unwrap(), &mut problems);
        assert!(problems.is_empty(), "{problems:#?}");
    }
    let app = crds.iter().find(|c| c["spec"]["names"]["kind"] == "App").unwrap();
    let spec = &app["spec"]["versions"][0]["schema"]["openAPIV3Schema"]["properties"]["spec"]["properties"];
    assert_eq!(spec["replicas"]["type"], "integer");
    assert_eq!(spec["run"]["properties"]["command"]["items"]["type"], "string");
    assert_eq!(spec["expose"]["items"]["properties"]["targetPort"]["x-kubernetes-int-or-string"], true);
    assert_eq!(spec["volumes"]["items"]["properties"]["scope"]["enum"], serde_json::json!(["replica", "shared"]));
}
