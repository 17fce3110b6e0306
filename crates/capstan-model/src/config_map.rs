//! ConfigMaps: non-secret values other objects read by key (a CA bundle under `ca.crt` for a Gateway's client
//! certificates or a BackendTLSPolicy). Kubernetes' own `v1` ConfigMap is taken as written.

use std::collections::BTreeMap;

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::resource::Object;
use crate::validate::FieldError;

/// A ConfigMap. It has no status.
pub type ConfigMap = Object<ConfigMapSpec, serde_json::Value>;

/// Values by key: text under `data`, bytes in base64 under `binaryData`, as Kubernetes has them.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ConfigMapSpec {
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub data: BTreeMap<String, String>,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub binary_data: BTreeMap<String, String>,
}

/// Kubernetes' limit on a ConfigMap's values, all keys together.
pub const CONFIG_MAP_MAX_BYTES: usize = 1 << 20;

impl ConfigMapSpec {
    /// A value by key: `data` as text, or `binaryData` decoded.
    pub fn value(&self, key: &str) -> Option<Vec<u8>> {
        use base64::Engine;
        match self.data.get(key) {
            Some(v) => Some(v.as_bytes().to_vec()),
            None => self.binary_data.get(key).and_then(|v| base64::engine::general_purpose::STANDARD.decode(v).ok()),
        }
    }
}

/// The fields of Kubernetes' `v1` ConfigMap that Capstan takes (`metadata` aside), each kept in `spec`.
const CORE_FIELDS: [&str; 2] = ["data", "binaryData"];

/// A Kubernetes `v1` ConfigMap as written (`data` and `binaryData` beside `metadata`) in Capstan's shape, so that one
/// file serves both runtimes; a field Capstan does not take is named.
pub fn from_core_config_map(
    mut map: serde_json::Map<String, serde_json::Value>,
) -> Result<serde_json::Value, FieldError> {
    let mut spec = serde_json::Map::new();
    for f in CORE_FIELDS {
        if let Some(v) = map.remove(f) {
            spec.insert(f.to_string(), v);
        }
    }
    if let Some(f) = map.keys().find(|f| !matches!(f.as_str(), "apiVersion" | "kind" | "metadata")) {
        return Err(FieldError::new(f.clone(), "is not a field Capstan takes from a v1 ConfigMap")
            .hint("use data and binaryData (immutable is not served)"));
    }
    map.insert("apiVersion".into(), crate::meta::API_VERSION.into());
    map.insert("spec".into(), serde_json::Value::Object(spec));
    Ok(serde_json::Value::Object(map))
}

/// Keys as Kubernetes allows them, once across `data` and `binaryData`; `binaryData` in base64; 1 MiB in all.
pub fn validate_config_map(spec: &ConfigMapSpec, errors: &mut Vec<FieldError>) {
    use base64::Engine;
    let mut size = 0;
    for (field, map) in [("data", &spec.data), ("binaryData", &spec.binary_data)] {
        for (k, v) in map {
            size += k.len() + v.len();
            let ok = !k.is_empty()
                && k.len() <= 253
                && k != "."
                && k != ".."
                && k.chars().all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'));
            if !ok {
                errors.push(FieldError::new(
                    format!("spec.{field}.{k}"),
                    "keys are 1 to 253 letters, digits, '-', '_' and '.' (not `.` or `..`)",
                ));
            }
        }
    }
    for k in spec.data.keys().filter(|k| spec.binary_data.contains_key(*k)) {
        errors.push(
            FieldError::new(format!("spec.binaryData.{k}"), "is also under data")
                .hint("a key is either text (data) or bytes (binaryData)"),
        );
    }
    for (k, v) in &spec.binary_data {
        if base64::engine::general_purpose::STANDARD.decode(v.trim()).is_err() {
            errors.push(
                FieldError::new(format!("spec.binaryData.{k}"), "is not valid base64")
                    .hint("put text under `data` instead"),
            );
        }
    }
    if size > CONFIG_MAP_MAX_BYTES {
        errors.push(
            FieldError::new("spec.data", format!("holds {size} bytes; a ConfigMap holds at most 1 MiB"))
                .hint("large files belong in a volume"),
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_v1_config_map_is_taken_as_written_and_checked() {
        let ms = crate::parse_manifests(
            "ca.yaml",
            "apiVersion: v1\nkind: ConfigMap\nmetadata: {name: ca}\ndata: {ca.crt: PEM}\nbinaryData: {raw: AAE=}\n",
        )
        .expect("a v1 ConfigMap");
        let crate::Resource::ConfigMap(c) = &ms[0].resource else { panic!("a ConfigMap") };
        assert_eq!(c.spec.value("ca.crt").as_deref(), Some(&b"PEM"[..]));
        assert_eq!(c.spec.value("raw").as_deref(), Some(&[0u8, 1][..]));
        assert_eq!(c.spec.value("none"), None);
        for (yaml, field) in [
            ("data: {a: x}\nimmutable: true\n", "immutable"),
            ("data: {'a b': x}\n", "spec.data.a b"),
            ("data: {a: x}\nbinaryData: {a: AA==}\n", "spec.binaryData.a"),
            ("binaryData: {a: '!!'}\n", "spec.binaryData.a"),
        ] {
            let e = crate::parse_manifests(
                "c.yaml",
                &format!("apiVersion: v1\nkind: ConfigMap\nmetadata: {{name: c}}\n{yaml}"),
            )
            .map(|_| ())
            .unwrap_err()
            .to_string();
            assert!(e.contains(field), "{yaml}: {e}");
        }
        let big = "x".repeat(CONFIG_MAP_MAX_BYTES);
        let e = crate::parse_manifests(
            "c.yaml",
            &format!("apiVersion: v1\nkind: ConfigMap\nmetadata: {{name: c}}\ndata: {{a: {big}}}\n"),
        )
        .map(|_| ())
        .unwrap_err()
        .to_string();
        assert!(e.contains("at most 1 MiB"), "{}", &e[..200.min(e.len())]);
    }
}
