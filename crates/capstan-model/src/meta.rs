//! Object metadata, conditions and events shared by every kind.

use std::collections::BTreeMap;

use chrono::{DateTime, Utc};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// The API group and version every Capstan object carries.
pub const API_VERSION: &str = "capstan.dev/v1alpha1";
/// The namespace an object lands in when its manifest names none.
pub const DEFAULT_NAMESPACE: &str = "default";

/// Identity and bookkeeping of an object, as in Kubernetes' `ObjectMeta`.
///
/// Users write `name`, `namespace`, `labels` and `annotations`; Capstan writes the rest.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ObjectMeta {
    /// DNS-1123 label: lower-case letters, digits and '-', starting and ending with a letter or digit.
    pub name: String,
    /// Defaults to `default`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub namespace: Option<String>,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub labels: BTreeMap<String, String>,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub annotations: BTreeMap<String, String>,
    /// Set by Capstan when the object is created.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub uid: Option<String>,
    /// Bumped by Capstan each time `spec` changes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub generation: Option<i64>,
    /// Bumped by Capstan on every write of the object, status included.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub resource_version: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub creation_timestamp: Option<DateTime<Utc>>,
    /// Who owns the object, kept by Capstan apart from what an apply by hand can change (as Kubernetes keeps
    /// server-side apply's managers): a Sync that applied an object stays its owner when someone changes it by hand.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub managed_fields: Vec<ManagedFieldsEntry>,
}

/// One owner of an object, in the shape of a Kubernetes `managedFields` entry (without the field sets: an owner
/// owns the whole object).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ManagedFieldsEntry {
    /// `sync.capstan.dev/<namespace>/<name>` for a Sync.
    pub manager: String,
    /// `Apply`, as server-side apply records it.
    pub operation: String,
}

/// The prefix of the manager a Sync records on what it applies; its namespace and name follow.
pub const SYNC_MANAGER_PREFIX: &str = "sync.capstan.dev/";

/// The annotation `capstan apply` sets to the manifest's directory; relative paths in the spec start there.
pub const BASE_DIR_ANNOTATION: &str = "capstan.dev/base-dir";

impl ObjectMeta {
    /// The namespace, with the default filled in.
    pub fn namespace(&self) -> &str {
        self.namespace.as_deref().unwrap_or(DEFAULT_NAMESPACE)
    }

    /// The directory relative paths in the spec start from, when the object came from a file.
    pub fn base_dir(&self) -> Option<&str> {
        self.annotations.get(BASE_DIR_ANNOTATION).map(String::as_str)
    }
}

/// A short age such as `45s`, `12m`, `3h`, `5d`, as kubectl prints them (the CLI's tables and the dashboard's).
pub fn short_age(since: DateTime<Utc>, now: DateTime<Utc>) -> String {
    let s = (now - since).num_seconds().max(0);
    match s {
        0..=119 => format!("{s}s"),
        120..=7199 => format!("{}m", s / 60),
        7200..=172_799 => format!("{}h", s / 3600),
        _ => format!("{}d", s / 86400),
    }
}

/// `1 replica`, `2 replicas`: a count with its noun, for messages people read.
pub fn count_of(n: i64, noun: &str) -> String {
    if n == 1 {
        format!("1 {noun}")
    } else {
        format!("{n} {noun}s")
    }
}

/// `True`, `False` or `Unknown`, as Kubernetes writes condition statuses.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub enum ConditionStatus {
    True,
    False,
    Unknown,
}

/// One observation about an object, in Kubernetes' condition shape.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct Condition {
    /// `Ready`, `Reconciling` or `Stalled`.
    #[serde(rename = "type")]
    pub type_: String,
    pub status: ConditionStatus,
    /// One CamelCase word a program can match on.
    pub reason: String,
    /// A sentence for humans.
    pub message: String,
    pub last_transition_time: DateTime<Utc>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
}

/// Condition type: the object does what its spec asks.
pub const READY: &str = "Ready";
/// Condition type: Capstan is working towards the spec.
pub const RECONCILING: &str = "Reconciling";
/// Condition type: progress stopped and needs a human (crash loop, bad command, deadline passed).
pub const STALLED: &str = "Stalled";

/// Sets a condition in `conditions`, keeping `lastTransitionTime` when the status did not change.
pub fn set_condition(conditions: &mut Vec<Condition>, new: Condition) {
    match conditions.iter_mut().find(|c| c.type_ == new.type_) {
        Some(existing) => {
            let since =
                if existing.status == new.status { existing.last_transition_time } else { new.last_transition_time };
            *existing = Condition { last_transition_time: since, ..new };
        }
        None => conditions.push(new),
    }
}

/// Removes the condition of `type_` if present.
pub fn remove_condition(conditions: &mut Vec<Condition>, type_: &str) {
    conditions.retain(|c| c.type_ != type_);
}

/// Finds a condition by type.
pub fn find_condition<'a>(conditions: &'a [Condition], type_: &str) -> Option<&'a Condition> {
    conditions.iter().find(|c| c.type_ == type_)
}

/// `Normal` or `Warning`, as Kubernetes events.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub enum EventType {
    Normal,
    Warning,
}

/// Something that happened to an object, shown by `capstan describe`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct Event {
    #[serde(rename = "type")]
    pub type_: EventType,
    pub reason: String,
    pub message: String,
    pub first_timestamp: DateTime<Utc>,
    pub last_timestamp: DateTime<Utc>,
    /// How many times this same event happened in a row.
    pub count: u32,
}

/// Identifies one object: kind, namespace and name.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct ObjectKey {
    pub kind: String,
    pub namespace: String,
    pub name: String,
}

impl ObjectKey {
    pub fn new(kind: impl Into<String>, namespace: impl Into<String>, name: impl Into<String>) -> Self {
        ObjectKey { kind: kind.into(), namespace: namespace.into(), name: name.into() }
    }
}

impl std::fmt::Display for ObjectKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // A cluster-scoped object (ClusterIssuer) has no namespace to show.
        match self.namespace.as_str() {
            "" => write!(f, "{}/{}", self.kind, self.name),
            ns => write!(f, "{}/{ns}/{}", self.kind, self.name),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_key_shows_its_namespace_unless_it_has_none() {
        assert_eq!(ObjectKey::new("App", "shop", "web").to_string(), "App/shop/web");
        assert_eq!(ObjectKey::new("ClusterIssuer", "", "le").to_string(), "ClusterIssuer/le");
    }

    #[test]
    fn ages_read_as_kubectl_prints_them() {
        let t = DateTime::from_timestamp(1_800_000_000, 0).expect("a time");
        let after = |s: i64| short_age(t, t + chrono::Duration::seconds(s));
        assert_eq!(
            (after(45), after(119), after(120), after(7199)),
            ("45s".into(), "119s".into(), "2m".into(), "119m".into())
        );
        assert_eq!((after(7200), after(3 * 86400)), ("2h".into(), "3d".into()));
        assert_eq!(after(-5), "0s", "a clock ahead is now");
    }

    #[test]
    fn counts_read_as_english() {
        assert_eq!(count_of(1, "replica"), "1 replica");
        assert_eq!(count_of(0, "replica"), "0 replicas");
        assert_eq!(count_of(3, "replica"), "3 replicas");
    }
}
