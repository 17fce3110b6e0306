//! The Sync plan: a pure function from (objects built from a revision, live objects, last inventory) to what to
//! create, change, leave alone and prune — and the bookkeeping of a Sync's status.

use std::collections::{BTreeMap, BTreeSet};

use capstan_model::gitops::{InventoryEntry, SyncHistoryEntry};
use capstan_model::{Kind, ObjectKey, BASE_DIR_ANNOTATION, SYNC_MANAGER_PREFIX};
use capstan_store::MANAGED_FIELDS;
use chrono::{DateTime, Utc};
use serde_json::{json, Value};

use crate::diff::{diff_values, mask_secrets, owned_view, FieldChange};

/// Label naming the Sync that applied an object.
pub const SYNC_NAME_LABEL: &str = "sync.capstan.dev/name";
/// Label naming that Sync's namespace.
pub const SYNC_NAMESPACE_LABEL: &str = "sync.capstan.dev/namespace";
/// Annotation that keeps an object when it disappears from Git (as Flux's `kustomize.toolkit.fluxcd.io/prune`).
pub const PRUNE_ANNOTATION: &str = "capstan.dev/prune";
/// Histories keep this many reconciles.
pub const HISTORY: usize = 5;

/// What to do to reach a revision.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct SyncPlan {
    /// Objects to create, in apply order.
    pub create: Vec<Value>,
    /// Objects that exist but differ, with how.
    pub update: Vec<(Value, Vec<FieldChange>)>,
    pub unchanged: Vec<ObjectKey>,
    /// Objects applied before and now gone from the Source, in delete order.
    pub prune: Vec<ObjectKey>,
    /// Objects gone from the Source that are kept, and why.
    pub keep: Vec<(ObjectKey, String)>,
    /// The inventory after this plan is carried out.
    pub inventory: Vec<InventoryEntry>,
}

impl SyncPlan {
    /// Everything to write, in apply order.
    pub fn writes(&self) -> Vec<Value> {
        let mut all: Vec<Value> =
            self.create.iter().cloned().chain(self.update.iter().map(|(v, _)| v.clone())).collect();
        all.sort_by_key(apply_rank);
        all
    }

    pub fn is_noop(&self) -> bool {
        self.create.is_empty() && self.update.is_empty() && self.prune.is_empty()
    }
}

fn kind_rank(kind: &str) -> usize {
    Kind::ALL.iter().position(|k| k.name() == kind).unwrap_or(Kind::ALL.len())
}

fn apply_rank(v: &Value) -> usize {
    kind_rank(v["kind"].as_str().unwrap_or(""))
}

fn key_of(v: &Value) -> ObjectKey {
    ObjectKey::new(
        v["kind"].as_str().unwrap_or(""),
        capstan_model::resource::namespace_of(v),
        v["metadata"]["name"].as_str().unwrap_or(""),
    )
}

/// Adds the labels that mark `obj` as applied by the Sync `sync`.
pub fn mark_owned(obj: &mut Value, sync: &ObjectKey) {
    let md = &mut obj["metadata"];
    // Git holds what should be, not a version read at some point: a resourceVersion saved with a manifest (from
    // `get -o yaml`) would make every later apply a conflict.
    if let Some(m) = md.as_object_mut() {
        m.remove("resourceVersion");
    }
    if !md["labels"].is_object() {
        md["labels"] = Value::Object(Default::default());
    }
    md["labels"][SYNC_NAME_LABEL] = Value::String(sync.name.clone());
    md["labels"][SYNC_NAMESPACE_LABEL] = Value::String(sync.namespace.clone());
    md[MANAGED_FIELDS] = json!([{"manager": manager(sync), "operation": "Apply"}]);
    let cluster_scoped = obj["kind"].as_str().and_then(Kind::parse).is_some_and(|k| !k.namespaced());
    let md = &mut obj["metadata"];
    if md["namespace"].is_null() && !cluster_scoped {
        md["namespace"] = Value::String(capstan_model::DEFAULT_NAMESPACE.into());
    }
}

/// The manager a Sync records as an object's owner.
fn manager(sync: &ObjectKey) -> String {
    format!("{SYNC_MANAGER_PREFIX}{}/{}", sync.namespace, sync.name)
}

/// The Sync that owns `obj`: the one its owner record names, which an apply by hand cannot change. An object stored
/// before owner records existed is judged by its labels.
fn owner(obj: &Value) -> Option<ObjectKey> {
    match obj["metadata"][MANAGED_FIELDS].as_array() {
        Some(entries) => entries.iter().find_map(|e| {
            let (ns, name) = e["manager"].as_str()?.strip_prefix(SYNC_MANAGER_PREFIX)?.split_once('/')?;
            Some(ObjectKey::new("Sync", ns, name))
        }),
        None => {
            let labels = &obj["metadata"]["labels"];
            Some(ObjectKey::new("Sync", labels[SYNC_NAMESPACE_LABEL].as_str()?, labels[SYNC_NAME_LABEL].as_str()?))
        }
    }
}

/// Whether a changed field is Capstan's bookkeeping rather than something a person changed: the owner record, the
/// Sync's labels and the directory relative paths start from. Drift events leave them out.
pub fn is_bookkeeping(change: &FieldChange) -> bool {
    let p = change.path.as_str();
    p.starts_with("metadata.managedFields")
        || p == format!("metadata.labels.{SYNC_NAME_LABEL}")
        || p == format!("metadata.labels.{SYNC_NAMESPACE_LABEL}")
        || p == format!("metadata.annotations.{BASE_DIR_ANNOTATION}")
}

/// Why an object that left the Source must not be deleted, if it must not.
fn protected(obj: &Value) -> Option<String> {
    if obj["metadata"]["annotations"][PRUNE_ANNOTATION].as_str() == Some("disabled") {
        return Some(format!("annotated {PRUNE_ANNOTATION}: disabled"));
    }
    if obj["kind"] == "Database" && obj["spec"]["deletionPolicy"].as_str() != Some("Delete") {
        return Some("a Database is only deleted when its spec.deletionPolicy is Delete".into());
    }
    None
}

/// Plans one reconcile of the Sync `sync`. `desired` are the built objects, already marked owned; `live` holds the
/// stored objects for every key of `desired` and of `previous`.
pub fn plan_sync(
    sync: &ObjectKey,
    desired: &[Value],
    live: &BTreeMap<ObjectKey, Value>,
    previous: &[InventoryEntry],
    prune: bool,
) -> SyncPlan {
    let mut plan = SyncPlan::default();
    let mut wanted = BTreeSet::new();
    let mut sorted: Vec<&Value> = desired.iter().collect();
    sorted.sort_by_key(|v| apply_rank(v));
    for obj in sorted {
        let key = key_of(obj);
        wanted.insert(key.clone());
        plan.inventory.push(InventoryEntry {
            kind: key.kind.clone(),
            namespace: key.namespace.clone(),
            name: key.name.clone(),
        });
        match live.get(&key) {
            None => plan.create.push(obj.clone()),
            Some(current) => {
                let mut changes = diff_values(&owned_view(current), &owned_view(obj));
                mask_secrets(&key.kind, &mut changes);
                let owner_now = owner(current);
                if owner_now.as_ref() != Some(sync) || current["metadata"][MANAGED_FIELDS].is_null() {
                    // Taken over from another Sync, or stored before owner records: the record is written.
                    changes.push(FieldChange {
                        path: "metadata.managedFields".into(),
                        old: current["metadata"].get(MANAGED_FIELDS).cloned(),
                        new: obj["metadata"].get(MANAGED_FIELDS).cloned(),
                    });
                }
                if changes.is_empty() {
                    plan.unchanged.push(key);
                } else {
                    plan.update.push((obj.clone(), changes));
                }
            }
        }
    }
    let mut gone: Vec<ObjectKey> = previous
        .iter()
        .map(|e| ObjectKey::new(&e.kind, &e.namespace, &e.name))
        .filter(|k| !wanted.contains(k))
        .collect();
    gone.sort_by_key(|k| std::cmp::Reverse(kind_rank(&k.kind)));
    for key in gone {
        let Some(current) = live.get(&key) else { continue };
        if owner(current).as_ref() != Some(sync) {
            plan.keep.push((key, "now applied by another Sync".into()));
        } else if !prune {
            plan.keep.push((key, "spec.prune is false".into()));
        } else if let Some(why) = protected(current) {
            plan.keep.push((key, why));
        } else {
            plan.prune.push(key);
        }
    }
    plan.inventory.sort();
    plan
}

/// Adds a reconcile to a history (newest first, at most [`HISTORY`]); a repeat of the newest entry's revision and
/// result is counted instead of added, as Flux counts them.
pub fn record_history(
    history: &mut Vec<SyncHistoryEntry>,
    revision: &str,
    result: &str,
    started_at: DateTime<Utc>,
    duration_millis: u64,
) {
    if let Some(first) = history.first_mut() {
        if first.revision == revision && first.result == result {
            first.count += 1;
            first.started_at = started_at;
            first.duration_millis = duration_millis;
            return;
        }
    }
    history.insert(
        0,
        SyncHistoryEntry {
            revision: revision.to_string(),
            started_at,
            duration_millis,
            result: result.to_string(),
            count: 1,
        },
    );
    history.truncate(HISTORY);
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn app(name: &str, replicas: i64, sync: &ObjectKey) -> Value {
        let mut v = json!({"apiVersion": "capstan.dev/v1alpha1", "kind": "App", "metadata": {"name": name, "namespace": "default"}, "spec": {"replicas": replicas, "run": {"command": ["x"]}}});
        mark_owned(&mut v, sync);
        v
    }

    fn entry(name: &str) -> InventoryEntry {
        InventoryEntry { kind: "App".into(), namespace: "default".into(), name: name.into() }
    }

    #[test]
    fn a_cluster_scoped_object_is_applied_and_pruned_without_a_namespace() {
        let s = ObjectKey::new("Sync", "default", "s");
        let issuer = |name: &str| {
            let mut v = json!({"apiVersion": "cert-manager.io/v1", "kind": "ClusterIssuer", "metadata": {"name": name},
                               "spec": {"selfSigned": {}}});
            mark_owned(&mut v, &s);
            v
        };
        let le = issuer("le");
        assert!(le["metadata"].get("namespace").is_none(), "no namespace filled in: {le}");
        let mut live = BTreeMap::new();
        live.insert(ObjectKey::new("ClusterIssuer", "", "old"), issuer("old"));
        let previous =
            vec![InventoryEntry { kind: "ClusterIssuer".into(), namespace: String::new(), name: "old".into() }];
        let plan = plan_sync(&s, &[le], &live, &previous, true);
        assert_eq!(plan.create.len(), 1);
        assert_eq!(
            plan.inventory,
            [InventoryEntry { kind: "ClusterIssuer".into(), namespace: String::new(), name: "le".into() }]
        );
        assert_eq!(plan.prune, [ObjectKey::new("ClusterIssuer", "", "old")]);
    }

    #[test]
    fn creates_updates_leaves_and_prunes() {
        let s = ObjectKey::new("Sync", "default", "s");
        let desired = vec![app("a", 2, &s), app("b", 1, &s), app("new", 1, &s)];
        let mut live = BTreeMap::new();
        let mut a_live = app("a", 3, &s);
        a_live["metadata"]["uid"] = json!("u1");
        a_live["status"] = json!({"ready": 3});
        live.insert(ObjectKey::new("App", "default", "a"), a_live);
        live.insert(ObjectKey::new("App", "default", "b"), app("b", 1, &s));
        live.insert(ObjectKey::new("App", "default", "old"), app("old", 1, &s));
        let mut kept = app("kept", 1, &s);
        kept["metadata"]["annotations"] = json!({PRUNE_ANNOTATION: "disabled"});
        live.insert(ObjectKey::new("App", "default", "kept"), kept);
        let taken = app("taken", 1, &ObjectKey::new("Sync", "default", "other"));
        live.insert(ObjectKey::new("App", "default", "taken"), taken);
        // Applied by hand without the Sync's labels: the owner record still names the Sync, so it is pruned.
        let mut by_hand = app("by-hand", 1, &s);
        by_hand["metadata"]["labels"] = json!({});
        live.insert(ObjectKey::new("App", "default", "by-hand"), by_hand);
        let previous = vec![
            entry("a"),
            entry("b"),
            entry("old"),
            entry("kept"),
            entry("taken"),
            entry("vanished"),
            entry("by-hand"),
        ];

        let p = plan_sync(&s, &desired, &live, &previous, true);
        assert_eq!(p.create.len(), 1);
        assert_eq!(p.create[0]["metadata"]["name"], "new");
        assert_eq!(p.update.len(), 1);
        assert_eq!(p.update[0].1.iter().map(|c| c.to_string()).collect::<Vec<_>>(), ["spec.replicas: 3 → 2"]);
        assert_eq!(p.unchanged, vec![ObjectKey::new("App", "default", "b")]);
        assert_eq!(p.prune, vec![ObjectKey::new("App", "default", "old"), ObjectKey::new("App", "default", "by-hand")]);
        let kept: Vec<&str> = p.keep.iter().map(|(k, _)| k.name.as_str()).collect();
        assert_eq!(kept, ["kept", "taken"]);
        assert_eq!(p.inventory, vec![entry("a"), entry("b"), entry("new")]);

        let no_prune = plan_sync(&s, &desired, &live, &previous, false);
        assert!(no_prune.prune.is_empty());
        assert!(no_prune.keep.iter().any(|(k, why)| k.name == "old" && why.contains("prune is false")));
    }

    #[test]
    fn an_object_taken_over_or_stored_without_an_owner_record_gets_one() {
        let s = ObjectKey::new("Sync", "default", "s");
        let other = ObjectKey::new("Sync", "default", "other");
        let mut legacy = app("legacy", 1, &s);
        legacy["metadata"].as_object_mut().map(|m| m.remove(MANAGED_FIELDS));
        let live: BTreeMap<_, _> = [
            (ObjectKey::new("App", "default", "legacy"), legacy.clone()),
            (ObjectKey::new("App", "default", "theirs"), app("theirs", 1, &other)),
            (ObjectKey::new("App", "default", "mine"), app("mine", 1, &s)),
        ]
        .into();
        // Before the record existed, the labels tell the owner.
        assert_eq!(owner(&legacy), Some(s.clone()));
        let desired = vec![app("legacy", 1, &s), app("theirs", 1, &s), app("mine", 1, &s)];
        let p = plan_sync(&s, &desired, &live, &[], true);
        assert_eq!(p.unchanged, vec![ObjectKey::new("App", "default", "mine")]);
        let updated: Vec<&str> = p.update.iter().map(|(v, _)| v["metadata"]["name"].as_str().unwrap_or("")).collect();
        assert_eq!(updated, ["legacy", "theirs"]);
        for (v, changes) in &p.update {
            assert_eq!(v["metadata"][MANAGED_FIELDS][0]["manager"], "sync.capstan.dev/default/s");
            assert!(changes.iter().all(is_bookkeeping), "only the owner record changes: {changes:?}");
        }
        let label = FieldChange { path: format!("metadata.labels.{SYNC_NAME_LABEL}"), old: None, new: None };
        let replicas = FieldChange { path: "spec.replicas".into(), old: None, new: None };
        assert!(is_bookkeeping(&label) && !is_bookkeeping(&replicas));
    }

    #[test]
    fn databases_keep_their_data_unless_asked() {
        let s = ObjectKey::new("Sync", "default", "s");
        let mut db = json!({"kind": "Database", "metadata": {"name": "pg", "namespace": "default"}, "spec": {}});
        mark_owned(&mut db, &s);
        let live: BTreeMap<_, _> = [(ObjectKey::new("Database", "default", "pg"), db.clone())].into();
        let prev = vec![InventoryEntry { kind: "Database".into(), namespace: "default".into(), name: "pg".into() }];
        assert!(plan_sync(&s, &[], &live, &prev, true).prune.is_empty());
        db["spec"]["deletionPolicy"] = json!("Delete");
        let live: BTreeMap<_, _> = [(ObjectKey::new("Database", "default", "pg"), db)].into();
        assert_eq!(plan_sync(&s, &[], &live, &prev, true).prune.len(), 1);
    }

    #[test]
    fn history_counts_repeats_and_keeps_five() {
        let mut h = Vec::new();
        let t = Utc::now();
        record_history(&mut h, "r1", "ReconciliationSucceeded", t, 5);
        record_history(&mut h, "r1", "ReconciliationSucceeded", t, 7);
        assert_eq!(h.len(), 1);
        assert_eq!(h[0].count, 2);
        for i in 2..9 {
            record_history(&mut h, &format!("r{i}"), "BuildFailed", t, 1);
        }
        assert_eq!(h.len(), HISTORY);
        assert_eq!(h[0].revision, "r8");
    }
}
