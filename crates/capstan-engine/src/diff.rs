//! Field-level differences between two objects, as `capstan diff` and drift events show them.

use serde_json::{Map, Value};

/// Annotations Capstan itself writes; they never count as a difference.
pub const SYSTEM_ANNOTATIONS: &[&str] = &[capstan_model::RESTARTED_AT_ANNOTATION];

/// One field that differs; `None` means absent on that side.
#[derive(Debug, Clone, PartialEq)]
pub struct FieldChange {
    pub path: String,
    pub old: Option<Value>,
    pub new: Option<Value>,
}

impl std::fmt::Display for FieldChange {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let show = |v: &Option<Value>| match v {
            None => "(absent)".to_string(),
            Some(Value::String(s)) => format!("{s:?}"),
            Some(v) => v.to_string(),
        };
        write!(f, "{}: {} → {}", self.path, show(&self.old), show(&self.new))
    }
}

/// The part of an object its author owns: labels, annotations (without Capstan's own) and spec.
pub fn owned_view(obj: &Value) -> Value {
    let mut meta = Map::new();
    for field in ["labels", "annotations"] {
        if let Some(Value::Object(m)) = obj["metadata"].get(field) {
            let mut m = m.clone();
            if field == "annotations" {
                for a in SYSTEM_ANNOTATIONS {
                    m.remove(*a);
                }
            }
            if !m.is_empty() {
                meta.insert(field.into(), Value::Object(m));
            }
        }
    }
    let mut out = Map::new();
    if !meta.is_empty() {
        out.insert("metadata".into(), Value::Object(meta));
    }
    out.insert("spec".into(), obj.get("spec").cloned().unwrap_or(Value::Null));
    Value::Object(out)
}

/// Hides the values of a Secret's changed fields (paths stay), so a diff or an event never shows a secret.
pub fn mask_secrets(kind: &str, changes: &mut [FieldChange]) {
    if kind != "Secret" {
        return;
    }
    for c in changes.iter_mut().filter(|c| c.path.starts_with("spec.")) {
        let mask = |v: &mut Option<Value>| {
            if v.is_some() {
                *v = Some(Value::String("***".into()));
            }
        };
        mask(&mut c.old);
        mask(&mut c.new);
    }
}

/// Every leaf that differs between `old` and `new`, in field-path order.
pub fn diff_values(old: &Value, new: &Value) -> Vec<FieldChange> {
    let mut out = Vec::new();
    walk("", Some(old), Some(new), &mut out);
    out
}

fn join(prefix: &str, key: &str) -> String {
    if prefix.is_empty() {
        key.to_string()
    } else {
        format!("{prefix}.{key}")
    }
}

fn walk(path: &str, old: Option<&Value>, new: Option<&Value>, out: &mut Vec<FieldChange>) {
    match (old, new) {
        (Some(a), Some(b)) if a == b => {}
        (Some(Value::Object(a)), Some(Value::Object(b))) => {
            let mut keys: Vec<&String> = a.keys().chain(b.keys()).collect();
            keys.sort();
            keys.dedup();
            for k in keys {
                walk(&join(path, k), a.get(k), b.get(k), out);
            }
        }
        // A whole mapping added or removed: name its leaves, not the mapping.
        (None, Some(Value::Object(b))) if !b.is_empty() => {
            for (k, v) in b {
                walk(&join(path, k), None, Some(v), out);
            }
        }
        (Some(Value::Object(a)), None) if !a.is_empty() => {
            for (k, v) in a {
                walk(&join(path, k), Some(v), None, out);
            }
        }
        (Some(Value::Array(a)), Some(Value::Array(b))) if a.len() == b.len() => {
            for (i, (x, y)) in a.iter().zip(b).enumerate() {
                walk(&format!("{path}[{i}]"), Some(x), Some(y), out);
            }
        }
        (a, b) => out.push(FieldChange { path: path.to_string(), old: a.cloned(), new: b.cloned() }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn leaves_and_lists() {
        let a = json!({"spec": {"replicas": 3, "run": {"command": ["a", "b"], "env": {"X": "1"}}}});
        let b = json!({"spec": {"replicas": 1, "run": {"command": ["a", "c"], "env": {}}, "ports": [1]}});
        let d: Vec<String> = diff_values(&a, &b).iter().map(|c| c.to_string()).collect();
        assert_eq!(
            d,
            [
                "spec.ports: (absent) → [1]",
                "spec.replicas: 3 → 1",
                "spec.run.command[1]: \"b\" → \"c\"",
                "spec.run.env.X: \"1\" → (absent)",
            ]
        );
        assert!(diff_values(&a, &a).is_empty());
    }

    #[test]
    fn secret_values_are_masked() {
        let mut d = diff_values(
            &json!({"spec": {"stringData": {"pw": "old"}}}),
            &json!({"spec": {"stringData": {"pw": "new", "user": "u"}}}),
        );
        mask_secrets("Secret", &mut d);
        let text: Vec<String> = d.iter().map(|c| c.to_string()).collect();
        assert_eq!(text, ["spec.stringData.pw: \"***\" → \"***\"", "spec.stringData.user: (absent) → \"***\""]);
    }

    #[test]
    fn the_owned_view_drops_system_annotations() {
        let live = json!({"metadata": {"name": "x", "uid": "u", "annotations": {"capstan.dev/restartedAt": "t"}}, "spec": {"a": 1}, "status": {}});
        assert_eq!(owned_view(&live), json!({"spec": {"a": 1}}));
    }
}
