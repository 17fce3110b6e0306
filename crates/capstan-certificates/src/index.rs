//! Which Certificates name a Secret or an Issuer, kept from the watch: an event finds its Certificates without
//! reading every Certificate of the namespace (which made 1,000 Certificates cost a million reads).

use std::collections::{BTreeSet, HashMap};

use capstan_model::certificate::IssuerRef;
use capstan_model::ObjectKey;
use serde_json::Value;

/// What one Certificate names.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Names {
    pub secret: String,
    /// The key of its Issuer or ClusterIssuer, when that is one of cert-manager.io (the only ones signing here).
    pub issuer: Option<ObjectKey>,
}

impl Names {
    /// What a stored Certificate names.
    pub fn of(cert: &Value) -> Names {
        let ns = capstan_model::resource::namespace_of(cert);
        let issuer =
            serde_json::from_value::<IssuerRef>(cert["spec"]["issuerRef"].clone()).ok().and_then(|r| r.key(ns));
        Names { secret: cert["spec"]["secretName"].as_str().unwrap_or_default().to_string(), issuer }
    }
}

/// Certificates by the Secret (per namespace) and the Issuer or ClusterIssuer they name.
#[derive(Debug, Default)]
pub(crate) struct Index {
    certificates: HashMap<ObjectKey, Names>,
    /// (namespace, Secret name) → Certificate names.
    by_secret: HashMap<(String, String), BTreeSet<String>>,
    /// Issuer or ClusterIssuer → its Certificates (a ClusterIssuer's in every namespace).
    by_issuer: HashMap<ObjectKey, BTreeSet<ObjectKey>>,
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
        self.by_secret.entry((ns, names.secret.clone())).or_default().insert(key.name.clone());
        if let Some(i) = &names.issuer {
            self.by_issuer.entry(i.clone()).or_default().insert(key.clone());
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
        let at = (key.namespace.clone(), old.secret.clone());
        if let Some(set) = self.by_secret.get_mut(&at) {
            set.remove(&key.name);
            if set.is_empty() {
                self.by_secret.remove(&at);
            }
        }
        if let Some(i) = &old.issuer {
            if let Some(set) = self.by_issuer.get_mut(i) {
                set.remove(key);
                if set.is_empty() {
                    self.by_issuer.remove(i);
                }
            }
        }
        Some(old)
    }

    /// The Certificates of `namespace` whose secretName is `secret`.
    pub fn naming_secret(&self, namespace: &str, secret: &str) -> Vec<ObjectKey> {
        self.by_secret
            .get(&(namespace.to_string(), secret.to_string()))
            .into_iter()
            .flatten()
            .map(|n| ObjectKey::new("Certificate", namespace, n))
            .collect()
    }

    /// The Certificates signed by the Issuer or ClusterIssuer `issuer`.
    pub fn of_issuer(&self, issuer: &ObjectKey) -> Vec<ObjectKey> {
        self.by_issuer.get(issuer).into_iter().flatten().cloned().collect()
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

    fn issuer(ns: &str, name: &str) -> ObjectKey {
        ObjectKey::new("Issuer", ns, name)
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
        assert_eq!(names(i.of_issuer(&issuer("a", "ca"))), ["one", "two"]);
        assert_eq!(names(i.naming_secret("b", "s1")), ["one"]);
        assert!(i.naming_secret("a", "nope").is_empty());

        // A Certificate that moves to another Secret and Issuer leaves the old ones, and says what it named.
        let key = ObjectKey::new("Certificate", "a", "two");
        let old = i.set(&key, Names::of(&cert("a", "two", "s3", "other")));
        assert_eq!(old, Some(Names { secret: "s1".into(), issuer: Some(issuer("a", "ca")) }));
        assert_eq!(names(i.naming_secret("a", "s1")), ["one"]);
        assert_eq!(names(i.naming_secret("a", "s3")), ["three", "two"]);
        assert_eq!(names(i.of_issuer(&issuer("a", "other"))), ["three", "two"]);

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
    fn issuers_and_cluster_issuers_of_cert_manager_are_indexed() {
        let mut c = cert("a", "x", "s", "vault");
        c["spec"]["issuerRef"] = json!({"name": "v", "kind": "Issuer", "group": "example.com"});
        assert_eq!(Names::of(&c).issuer, None, "an external issuer signs only on a cluster");
        c["spec"]["issuerRef"]["group"] = json!("cert-manager.io");
        assert_eq!(Names::of(&c).issuer, Some(issuer("a", "v")));
        c["spec"]["issuerRef"]["kind"] = json!("ClusterIssuer");
        let cluster = ObjectKey::new("ClusterIssuer", "", "v");
        assert_eq!(Names::of(&c).issuer, Some(cluster.clone()));

        // A ClusterIssuer's Certificates are found in every namespace, and only under the ClusterIssuer.
        let mut in_b = cert("b", "y", "s", "v");
        in_b["spec"]["issuerRef"]["kind"] = json!("ClusterIssuer");
        let i = Index::of(&[c, in_b, cert("a", "z", "s2", "v")]);
        let found: Vec<String> = i.of_issuer(&cluster).iter().map(|k| format!("{}/{}", k.namespace, k.name)).collect();
        assert_eq!(found, ["a/x", "b/y"]);
        assert_eq!(names(i.of_issuer(&issuer("a", "v"))), ["z"], "the namespace's Issuer of the same name is another");
    }
}
