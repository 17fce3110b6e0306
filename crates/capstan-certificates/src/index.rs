//! Which Certificates name a Secret or an Issuer, kept from the watch: an event finds its Certificates without
//! reading every Certificate of the namespace (which made 1,000 Certificates cost a million reads).

use std::collections::{BTreeSet, HashMap};

use capstan_model::ObjectKey;
use serde_json::Value;

/// What one Certificate names.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Names {
    pub secret: String,
    /// Its `issuerRef.name` when that is an Issuer of cert-manager.io (the only kind signing here).
    pub issuer: Option<String>,
}

impl Names {
    /// What a stored Certificate names.
    pub fn of(cert: &Value) -> Names {
        let r = &cert["spec"]["issuerRef"];
        let is_issuer = r["kind"].as_str().unwrap_or("Issuer") == "Issuer"
            && r["group"].as_str().is_none_or(|g| g == capstan_model::certificate::CERT_MANAGER_GROUP);
        Names {
            secret: cert["spec"]["secretName"].as_str().unwrap_or_default().to_string(),
            issuer: r["name"].as_str().filter(|_| is_issuer).map(str::to_string),
        }
    }
}

/// Certificates by the Secret and the Issuer they name, per namespace.
#[derive(Debug, Default)]
pub(crate) struct Index {
    certificates: HashMap<ObjectKey, Names>,
    /// (namespace, Secret name) → Certificate names.
    by_secret: HashMap<(String, String), BTreeSet<String>>,
    /// (namespace, Issuer name) → Certificate names.
    by_issuer: HashMap<(String, String), BTreeSet<String>>,
}

impl Index {
    /// An index of `certificates` (stored Certificates).
    pub fn of(certificates: &[Value]) -> Index {
        let mut index = Index::default();
        for c in certificates {
            let (Some(ns), Some(name)) = (c["metadata"]["namespace"].as_str(), c["metadata"]["name"].as_str()) else {
                continue;
            };
            index.set(&ObjectKey::new("Certificate", ns, name), Names::of(c));
        }
        index
    }

    /// Records what `key` names now; returns what it named before.
    pub fn set(&mut self, key: &ObjectKey, names: Names) -> Option<Names> {
        let old = self.remove(key);
        let ns = key.namespace.clone();
        self.by_secret.entry((ns.clone(), names.secret.clone())).or_default().insert(key.name.clone());
        if let Some(i) = &names.issuer {
            self.by_issuer.entry((ns, i.clone())).or_default().insert(key.name.clone());
        }
        self.certificates.insert(key.clone(), names);
        old
    }

    /// Records what `key` names if nothing is recorded for it yet (a reconcile may read a Certificate before its
    /// watch event is handled: the event, not the reconcile, says what it named before).
    pub fn insert_missing(&mut self, key: &ObjectKey, names: Names) {
        if !self.certificates.contains_key(key) {
            self.set(key, names);
        }
    }

    /// Forgets `key`; returns what it named.
    pub fn remove(&mut self, key: &ObjectKey) -> Option<Names> {
        let old = self.certificates.remove(key)?;
        let ns = key.namespace.clone();
        let drop_from = |map: &mut HashMap<(String, String), BTreeSet<String>>, at: (String, String)| {
            if let Some(set) = map.get_mut(&at) {
                set.remove(&key.name);
                if set.is_empty() {
                    map.remove(&at);
                }
            }
        };
        drop_from(&mut self.by_secret, (ns.clone(), old.secret.clone()));
        if let Some(i) = &old.issuer {
            drop_from(&mut self.by_issuer, (ns, i.clone()));
        }
        Some(old)
    }

    /// The Certificates of `namespace` whose secretName is `secret`.
    pub fn naming_secret(&self, namespace: &str, secret: &str) -> Vec<ObjectKey> {
        Self::keys(&self.by_secret, namespace, secret)
    }

    /// The Certificates of `namespace` signed by its Issuer `issuer`.
    pub fn of_issuer(&self, namespace: &str, issuer: &str) -> Vec<ObjectKey> {
        Self::keys(&self.by_issuer, namespace, issuer)
    }

    fn keys(map: &HashMap<(String, String), BTreeSet<String>>, namespace: &str, name: &str) -> Vec<ObjectKey> {
        map.get(&(namespace.to_string(), name.to_string()))
            .into_iter()
            .flatten()
            .map(|n| ObjectKey::new("Certificate", namespace, n))
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn cert(ns: &str, name: &str, secret: &str, issuer: &str) -> Value {
        json!({"metadata": {"namespace": ns, "name": name},
               "spec": {"secretName": secret, "issuerRef": {"name": issuer}}})
    }

    fn names(keys: Vec<ObjectKey>) -> Vec<String> {
        keys.into_iter().map(|k| k.name).collect()
    }

    #[test]
    fn certificates_are_found_by_secret_and_issuer_per_namespace() {
        let mut i = Index::of(&[
            cert("a", "one", "s1", "ca"),
            cert("a", "two", "s1", "ca"),
            cert("a", "three", "s3", "other"),
            cert("b", "one", "s1", "ca"),
        ]);
        assert_eq!(names(i.naming_secret("a", "s1")), ["one", "two"]);
        assert_eq!(names(i.of_issuer("a", "ca")), ["one", "two"]);
        assert_eq!(names(i.naming_secret("b", "s1")), ["one"]);
        assert!(i.naming_secret("a", "nope").is_empty());

        // A Certificate that moves to another Secret and Issuer leaves the old ones, and says what it named.
        let key = ObjectKey::new("Certificate", "a", "two");
        let old = i.set(&key, Names::of(&cert("a", "two", "s3", "other")));
        assert_eq!(old, Some(Names { secret: "s1".into(), issuer: Some("ca".into()) }));
        assert_eq!(names(i.naming_secret("a", "s1")), ["one"]);
        assert_eq!(names(i.naming_secret("a", "s3")), ["three", "two"]);
        assert_eq!(names(i.of_issuer("a", "other")), ["three", "two"]);

        i.insert_missing(&key, Names::of(&cert("a", "two", "s9", "other")));
        assert_eq!(names(i.naming_secret("a", "s3")), ["three", "two"], "a reconcile does not overwrite the watch");
        assert!(i.remove(&key).is_some());
        assert!(i.remove(&key).is_none(), "removed once");
        assert_eq!(names(i.naming_secret("a", "s3")), ["three"]);
        i.insert_missing(&key, Names::of(&cert("a", "two", "s9", "other")));
        assert_eq!(names(i.naming_secret("a", "s9")), ["two"], "a Certificate the index did not know is added");
        assert!(i.by_secret.keys().all(|k| !i.by_secret[k].is_empty()), "no empty sets are kept");
    }

    #[test]
    fn only_issuers_of_cert_manager_are_indexed_as_issuers() {
        let mut c = cert("a", "x", "s", "vault");
        c["spec"]["issuerRef"]["kind"] = json!("ClusterIssuer");
        assert_eq!(Names::of(&c).issuer, None);
        c["spec"]["issuerRef"] = json!({"name": "v", "kind": "Issuer", "group": "example.com"});
        assert_eq!(Names::of(&c).issuer, None);
        c["spec"]["issuerRef"]["group"] = json!("cert-manager.io");
        assert_eq!(Names::of(&c).issuer.as_deref(), Some("v"));
    }
}
