//! Capstan's CustomResourceDefinitions, generated from the same Rust types as the manifests: the JSON Schemas made
//! structural as Kubernetes requires (references inlined, nullables marked, int-or-string marked, no
//! `additionalProperties` beside `properties`).

use capstan_model::{Kind, API_VERSION};
use serde_json::{json, Map, Value};

/// The API group of Capstan's kinds.
pub fn group() -> &'static str {
    API_VERSION.split('/').next().unwrap_or("capstan.dev")
}

/// The version of Capstan's kinds.
pub fn version() -> &'static str {
    API_VERSION.split('/').nth(1).unwrap_or("v1alpha1")
}

const KEEP_FORMATS: &[&str] = &["int32", "int64", "date-time", "double", "float"];

fn resolve<'a>(r: &str, defs: &'a Map<String, Value>) -> Option<&'a Value> {
    defs.get(r.strip_prefix("#/$defs/")?)
}

fn is_null(v: &Value) -> bool {
    v.get("type") == Some(&json!("null"))
}

fn literal(v: &Value) -> Option<Vec<Value>> {
    if let Some(c) = v.get("const") {
        return Some(vec![c.clone()]);
    }
    v.get("enum").and_then(Value::as_array).cloned()
}

/// Turns one JSON Schema node into a structural schema node.
pub fn structural(node: &Value, defs: &Map<String, Value>) -> Value {
    let Value::Object(m) = node else { return node.clone() };
    if let Some(r) = m.get("$ref").and_then(Value::as_str) {
        let mut target = resolve(r, defs).map(|t| structural(t, defs)).unwrap_or_else(|| json!({"type": "object"}));
        if let (Some(d), Value::Object(t)) = (m.get("description"), &mut target) {
            t.insert("description".into(), d.clone());
        }
        return target;
    }
    for key in ["anyOf", "oneOf"] {
        let Some(branches) = m.get(key).and_then(Value::as_array) else { continue };
        let mut out = Map::new();
        if let Some(d) = m.get("description") {
            out.insert("description".into(), d.clone());
        }
        let non_null: Vec<&Value> = branches.iter().filter(|b| !is_null(b)).collect();
        let nullable = non_null.len() < branches.len();
        if let Some(values) = non_null.iter().map(|b| literal(b)).collect::<Option<Vec<_>>>() {
            out.insert("type".into(), json!("string"));
            out.insert("enum".into(), Value::Array(values.into_iter().flatten().collect()));
        } else if non_null.len() == 1 {
            if let Value::Object(inner) = structural(non_null[0], defs) {
                out.extend(inner);
            }
        } else {
            let types: Vec<String> =
                non_null.iter().map(|b| structural(b, defs)["type"].as_str().unwrap_or("").to_string()).collect();
            if types.iter().all(|t| t == "integer" || t == "string") {
                out.insert("x-kubernetes-int-or-string".into(), json!(true));
            } else {
                out.insert("x-kubernetes-preserve-unknown-fields".into(), json!(true));
            }
        }
        if nullable {
            out.insert("nullable".into(), json!(true));
        }
        return Value::Object(out);
    }
    let mut out = Map::new();
    for (k, v) in m {
        match k.as_str() {
            "$schema" | "$id" | "title" | "$defs" | "default" | "examples" => {}
            "type" => match v {
                Value::Array(ts) => {
                    let real: Vec<&Value> = ts.iter().filter(|t| *t != "null").collect();
                    out.insert("type".into(), real.first().map(|t| (*t).clone()).unwrap_or(json!("object")));
                    if real.len() < ts.len() {
                        out.insert("nullable".into(), json!(true));
                    }
                }
                other => {
                    out.insert("type".into(), other.clone());
                }
            },
            "const" => {
                out.insert("enum".into(), json!([v]));
            }
            "format" => {
                if v.as_str().is_some_and(|f| KEEP_FORMATS.contains(&f)) {
                    out.insert(k.clone(), v.clone());
                }
            }
            "properties" => {
                let props: Map<String, Value> = v
                    .as_object()
                    .map(|p| p.iter().map(|(pk, pv)| (pk.clone(), structural(pv, defs))).collect())
                    .unwrap_or_default();
                out.insert(k.clone(), Value::Object(props));
            }
            "items" => {
                out.insert(k.clone(), structural(v, defs));
            }
            "additionalProperties" => {
                // Kubernetes prunes unknown fields itself; `false` beside `properties` is not structural.
                if v.is_object() {
                    out.insert(k.clone(), structural(v, defs));
                }
            }
            _ => {
                out.insert(k.clone(), v.clone());
            }
        }
    }
    if out.contains_key("enum") && !out.contains_key("type") {
        out.insert("type".into(), json!("string"));
    }
    if !out.contains_key("type") && !out.contains_key("x-kubernetes-int-or-string") {
        out.insert("type".into(), json!("object"));
        out.insert("x-kubernetes-preserve-unknown-fields".into(), json!(true));
    }
    Value::Object(out)
}

/// The CustomResourceDefinition of one kind.
pub fn crd(kind: Kind) -> Value {
    let schema = kind.schema();
    let defs = schema.get("$defs").and_then(Value::as_object).cloned().unwrap_or_default();
    let spec =
        schema["properties"].get("spec").map(|s| structural(s, &defs)).unwrap_or_else(|| json!({"type": "object"}));
    let singular = kind.name().to_ascii_lowercase();
    json!({
        "apiVersion": "apiextensions.k8s.io/v1",
        "kind": "CustomResourceDefinition",
        "metadata": {
            "name": format!("{}.{}", kind.plural(), group()),
            "labels": {"app.kubernetes.io/name": "capstan", "app.kubernetes.io/managed-by": "capstan"}
        },
        "spec": {
            "group": group(),
            "scope": "Namespaced",
            "names": {
                "kind": kind.name(),
                "listKind": format!("{}List", kind.name()),
                "plural": kind.plural(),
                "singular": singular,
                "categories": ["capstan"]
            },
            "versions": [{
                "name": version(),
                "served": true,
                "storage": true,
                "subresources": {"status": {}},
                "additionalPrinterColumns": [
                    {"name": "Ready", "type": "string", "jsonPath": ".status.conditions[?(@.type==\"Ready\")].status"},
                    {"name": "Message", "type": "string", "jsonPath": ".status.conditions[?(@.type==\"Ready\")].message", "priority": 1},
                    {"name": "Age", "type": "date", "jsonPath": ".metadata.creationTimestamp"}
                ],
                "schema": {"openAPIV3Schema": {
                    "type": "object",
                    "required": ["spec"],
                    "properties": {
                        "apiVersion": {"type": "string"},
                        "kind": {"type": "string"},
                        "metadata": {"type": "object"},
                        "spec": spec,
                        "status": {"type": "object", "x-kubernetes-preserve-unknown-fields": true}
                    }
                }}
            }]
        }
    })
}

/// The CustomResourceDefinitions of Capstan's kinds. Not for `Secret`: on Kubernetes that is the core Secret, and a
/// second `secrets` resource would make `kubectl get secrets` ambiguous.
pub fn all() -> Vec<Value> {
    Kind::ALL.iter().filter(|k| k.is_custom_resource()).map(|k| crd(*k)).collect()
}
