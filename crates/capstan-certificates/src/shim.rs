//! cert-manager's gateway-shim: a Gateway annotated `cert-manager.io/issuer` (or `cluster-issuer`) gets a
//! Certificate for each Secret its TLS-terminating listeners name, with those listeners' host names, without one
//! written by hand. `wanted` is the pure part; the reconciler applies what it says and deletes the Certificates it
//! made that are no longer wanted (their Secrets stay, as cert-manager leaves them).

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};

use capstan_engine::runner::{self, Action, Handle, ReconcileError, Reconciler};
use capstan_model::certificate::{CERT_MANAGER_API_VERSION, CERT_MANAGER_GROUP};
use capstan_model::gateway::{Gateway, ListenerProtocol, TlsMode};
use capstan_model::{EventType, ObjectKey};
use capstan_store::{Store, WatchEvent};
use serde_json::{json, Map, Value};

/// The label on a Certificate made for a Gateway: the Gateway's name.
pub const MADE_FOR_GATEWAY: &str = "capstan.dev/made-for-gateway";
/// The annotation on it holding the Gateway's uid: with the label, what says the shim made it (a label alone may be
/// copied onto a Certificate written by hand).
pub const MADE_FOR_GATEWAY_UID: &str = "capstan.dev/made-for-gateway-uid";

/// Gateway annotations read as cert-manager's gateway-shim reads them, with the Certificate field each sets.
const FIELDS: [(&str, &str); 6] = [
    ("cert-manager.io/common-name", "commonName"),
    ("cert-manager.io/duration", "duration"),
    ("cert-manager.io/renew-before", "renewBefore"),
    ("cert-manager.io/private-key-algorithm", "algorithm"),
    ("cert-manager.io/private-key-encoding", "encoding"),
    ("cert-manager.io/private-key-rotation-policy", "rotationPolicy"),
];

/// The Certificates `g` asks for, by name (its Secret's), as manifests; empty without an issuer annotation. Also
/// what was skipped and why, for the Gateway's events.
pub fn wanted(g: &Gateway) -> (BTreeMap<String, Value>, Vec<String>) {
    let mut out = BTreeMap::new();
    let mut skipped = Vec::new();
    let a = &g.metadata.annotations;
    let (issuer, kind) = match (a.get("cert-manager.io/issuer"), a.get("cert-manager.io/cluster-issuer")) {
        (Some(i), None) => (i, a.get("cert-manager.io/issuer-kind").map_or("Issuer", String::as_str)),
        (None, Some(c)) => (c, "ClusterIssuer"),
        (Some(_), Some(_)) => {
            skipped.push("both cert-manager.io/issuer and cert-manager.io/cluster-issuer are set: one, please".into());
            return (out, skipped);
        }
        (None, None) => return (out, skipped),
    };
    let group = a.get("cert-manager.io/issuer-group").map_or(CERT_MANAGER_GROUP, String::as_str);
    let ns = g.metadata.namespace();
    let mut names: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for l in &g.spec.listeners {
        let Some(tls) = &l.tls else { continue };
        if !matches!(l.protocol, ListenerProtocol::Https | ListenerProtocol::Tls) || tls.mode != TlsMode::Terminate {
            continue;
        }
        let Some(host) = l.hostname.as_deref().filter(|h| !h.is_empty()) else {
            skipped.push(format!("listener {}: no hostname, so no name to certify", l.name));
            continue;
        };
        for r in &tls.certificate_refs {
            let secret =
                r.kind.as_deref().is_none_or(|k| k == "Secret") && r.group.as_deref().is_none_or(str::is_empty);
            if !secret || r.namespace.as_deref().is_some_and(|n| n != ns) {
                skipped.push(format!(
                    "listener {}: certificateRef {} is not a Secret of the Gateway's namespace",
                    l.name, r.name
                ));
                continue;
            }
            let hosts = names.entry(r.name.clone()).or_default();
            if !hosts.iter().any(|h| h == host) {
                hosts.push(host.to_string());
            }
        }
    }
    for (secret, mut hosts) in names {
        hosts.sort();
        let mut spec = json!({
            "secretName": secret,
            "dnsNames": hosts,
            "issuerRef": {"name": issuer, "kind": kind, "group": group},
        });
        let mut key = Map::new();
        for (annotation, field) in FIELDS {
            let Some(v) = a.get(annotation) else { continue };
            match field {
                "algorithm" | "encoding" | "rotationPolicy" => {
                    key.insert(field.into(), Value::String(v.clone()));
                }
                _ => spec[field] = Value::String(v.clone()),
            }
        }
        if let Some(size) = a.get("cert-manager.io/private-key-size") {
            match size.parse::<u32>() {
                Ok(n) => {
                    key.insert("size".into(), n.into());
                }
                Err(_) => skipped.push(format!("cert-manager.io/private-key-size `{size}` is not a number: left out")),
            }
        }
        if !key.is_empty() {
            spec["privateKey"] = Value::Object(key);
        }
        if let Some(u) = a.get("cert-manager.io/usages") {
            spec["usages"] = u.split(',').map(|s| s.trim().to_string()).filter(|s| !s.is_empty()).collect();
        }
        let manifest = json!({
            "apiVersion": CERT_MANAGER_API_VERSION,
            "kind": "Certificate",
            "metadata": {
                "name": secret,
                "namespace": ns,
                "labels": {MADE_FOR_GATEWAY: g.metadata.name},
                "annotations": {MADE_FOR_GATEWAY_UID: g.metadata.uid.clone().unwrap_or_default()},
            },
            "spec": spec,
        });
        // What annotations would make of it is checked as any Certificate applied is: a bad value is said, not
        // written (where the certificates controller would take it for a default).
        match capstan_model::parse_manifests(&format!("Gateway {}", g.metadata.name), &manifest.to_string()) {
            Ok(_) => {
                out.insert(secret, manifest);
            }
            Err(e) => {
                skipped.push(format!("the Certificate for Secret {secret} would be invalid, so it is not made: {e}"))
            }
        }
    }
    (out, skipped)
}

/// Starts the gateway-shim controller.
pub fn spawn(store: Store) -> Handle {
    runner::run(store.clone(), Arc::new(Shim { store, notes: Mutex::default(), generations: Mutex::default() }), 1)
}

struct Shim {
    store: Store,
    /// The warnings last recorded for each Gateway: recorded again only when they change.
    notes: Mutex<HashMap<ObjectKey, Vec<String>>>,
    /// The generation last seen of each Certificate made for a Gateway: its status being written (as each
    /// issuance does) is not a change to look at.
    generations: Mutex<HashMap<ObjectKey, Value>>,
}

/// Whether the shim made `c` for the Gateway `name` of uid `uid` (any uid: for a Gateway gone).
fn made_by_shim(c: &Value, name: &str, uid: Option<&str>) -> bool {
    let md = &c["metadata"];
    md["labels"][MADE_FOR_GATEWAY].as_str() == Some(name)
        && md["annotations"][MADE_FOR_GATEWAY_UID].as_str().is_some_and(|u| uid.is_none_or(|want| u == want))
}

/// What to write for `manifest`, given the Certificate `stored` under its name: nothing when it is as wanted; the
/// manifest when there is none; over the version read when it changed, so that one replaced by hand since is a
/// conflict (retried, and then left alone), never overwritten. One the shim did not make for this Gateway is left as
/// it is, with a note.
fn to_write(
    manifest: &Value,
    stored: Option<&Value>,
    gateway: &str,
    uid: Option<&str>,
) -> Result<Option<Value>, String> {
    let name = manifest["metadata"]["name"].as_str().unwrap_or_default();
    match stored {
        None => Ok(Some(manifest.clone())),
        Some(s) if !made_by_shim(s, gateway, uid) => {
            Err(format!("Certificate {name} exists and was not made for this Gateway: it is left as it is"))
        }
        Some(s) if s["spec"] == manifest["spec"] => Ok(None),
        Some(s) => {
            let mut m = manifest.clone();
            m["metadata"]["resourceVersion"] = s["metadata"]["resourceVersion"].clone();
            Ok(Some(m))
        }
    }
}

impl Shim {
    /// The Certificates of `namespace` the shim made for Gateway `name` (of `uid`, when it exists).
    fn made_for(&self, namespace: &str, name: &str, uid: Option<&str>) -> Result<Vec<Value>, ReconcileError> {
        Ok(self
            .store
            .list("Certificate", Some(namespace))?
            .into_iter()
            .filter(|c| made_by_shim(c, name, uid))
            .collect())
    }

    /// Deletes the Certificates made for a Gateway that is gone (not their Secrets).
    fn sweep(&self, key: &ObjectKey) -> Result<(), ReconcileError> {
        for c in self.made_for(&key.namespace, &key.name, None)? {
            if let Some(name) = c["metadata"]["name"].as_str() {
                self.store.delete(&ObjectKey::new("Certificate", &key.namespace, name))?;
            }
        }
        self.notes.lock().unwrap_or_else(|p| p.into_inner()).remove(key);
        Ok(())
    }
}

impl Reconciler for Shim {
    fn kind(&self) -> &'static str {
        "Gateway"
    }

    /// A Certificate made for a Gateway, changed or deleted by hand, is made again as the Gateway asks.
    fn triggers(&self, ev: &WatchEvent) -> Vec<ObjectKey> {
        let Some(g) =
            ev.object["metadata"]["labels"][MADE_FOR_GATEWAY].as_str().filter(|_| ev.key.kind == "Certificate")
        else {
            return Vec::new();
        };
        let mut seen = self.generations.lock().unwrap_or_else(|p| p.into_inner());
        let changed = match ev.type_ {
            capstan_store::WatchType::Deleted => {
                seen.remove(&ev.key);
                true
            }
            _ => {
                let generation = ev.object["metadata"]["generation"].clone();
                seen.insert(ev.key.clone(), generation.clone()) != Some(generation)
            }
        };
        if changed {
            vec![ObjectKey::new("Gateway", &ev.key.namespace, g)]
        } else {
            Vec::new()
        }
    }

    fn reconcile(&self, key: &ObjectKey) -> Result<Action, ReconcileError> {
        // A Gateway gone (its delete missed, say while Capstan was down) takes what was made for it.
        let Some(v) = self.store.get(key)? else {
            self.sweep(key)?;
            return Ok(Action::AwaitChange);
        };
        let Ok(g) = serde_json::from_value::<Gateway>(v) else { return Ok(Action::AwaitChange) };
        let uid = g.metadata.uid.as_deref();
        let (wanted, skipped) = wanted(&g);
        let ns = g.metadata.namespace();
        let mut notes = skipped;
        let mut writes = Vec::new();
        for (name, manifest) in &wanted {
            let stored = self.store.get(&ObjectKey::new("Certificate", ns, name))?;
            match to_write(manifest, stored.as_ref(), &g.metadata.name, uid) {
                Ok(Some(w)) => writes.push(w),
                Ok(None) => {}
                Err(note) => notes.push(note),
            }
        }
        if !writes.is_empty() {
            let names: Vec<String> =
                writes.iter().filter_map(|w| w["metadata"]["name"].as_str().map(str::to_string)).collect();
            self.store.apply(writes)?;
            let message = format!("Certificate {} made or updated for this Gateway's listeners", names.join(", "));
            self.store.record_event(key, EventType::Normal, "CreateCertificate", &message)?;
        }
        for c in self.made_for(ns, &g.metadata.name, uid)? {
            let Some(name) = c["metadata"]["name"].as_str() else { continue };
            if !wanted.contains_key(name) {
                // Its Secret stays: deleting a Certificate deletes no key.
                self.store.delete(&ObjectKey::new("Certificate", ns, name))?;
                let message = format!("Certificate {name} deleted: no listener of this Gateway asks for it any more");
                self.store.record_event(key, EventType::Normal, "DeleteCertificate", &message)?;
            }
        }
        let mut last = self.notes.lock().unwrap_or_else(|p| p.into_inner());
        if last.get(key) != Some(&notes) {
            for n in &notes {
                self.store.record_event(key, EventType::Warning, "BadConfig", n)?;
            }
            last.insert(key.clone(), notes);
        }
        Ok(Action::AwaitChange)
    }

    /// A Gateway deleted takes the Certificates made for it (not their Secrets), as cert-manager's owner
    /// references do.
    fn finalize(&self, key: &ObjectKey, _last: &Value) {
        if let Err(e) = self.sweep(key) {
            tracing::warn!(gateway = %key, "deleting the Certificates made for it: {e}");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn gateway(annotations: serde_json::Value, listeners: serde_json::Value) -> Gateway {
        serde_json::from_value(json!({"apiVersion": "gateway.networking.k8s.io/v1", "kind": "Gateway",
            "metadata": {"name": "web", "namespace": "shop", "uid": "u-1", "annotations": annotations},
            "spec": {"gatewayClassName": "capstan", "listeners": listeners}}))
        .expect("a Gateway")
    }

    #[test]
    fn each_secret_of_a_terminating_listener_gets_a_certificate_with_its_hosts() {
        let g = gateway(
            json!({"cert-manager.io/issuer": "letsencrypt", "cert-manager.io/duration": "2160h",
                   "cert-manager.io/private-key-algorithm": "ECDSA", "cert-manager.io/private-key-size": "384",
                   "cert-manager.io/usages": "server auth, digital signature"}),
            json!([
                {"name": "http", "port": 80, "protocol": "HTTP"},
                {"name": "a", "port": 443, "protocol": "HTTPS", "hostname": "b.example.com",
                 "tls": {"certificateRefs": [{"name": "shared-tls"}]}},
                {"name": "b", "port": 443, "protocol": "HTTPS", "hostname": "a.example.com",
                 "tls": {"certificateRefs": [{"name": "shared-tls"}]}},
                {"name": "c", "port": 443, "protocol": "HTTPS", "hostname": "c.example.com",
                 "tls": {"certificateRefs": [{"name": "c-tls"}, {"name": "x", "namespace": "other"}]}},
                {"name": "nohost", "port": 8443, "protocol": "HTTPS", "tls": {"certificateRefs": [{"name": "n-tls"}]}},
                {"name": "pass", "port": 9443, "protocol": "TLS", "hostname": "p.example.com",
                 "tls": {"mode": "Passthrough"}},
            ]),
        );
        let (wanted, skipped) = wanted(&g);
        assert_eq!(wanted.keys().collect::<Vec<_>>(), ["c-tls", "shared-tls"]);
        let shared = &wanted["shared-tls"];
        assert_eq!(shared["spec"]["dnsNames"], json!(["a.example.com", "b.example.com"]), "merged and sorted");
        assert_eq!(
            shared["spec"]["issuerRef"],
            json!({"name": "letsencrypt", "kind": "Issuer", "group": "cert-manager.io"})
        );
        assert_eq!(shared["spec"]["duration"], "2160h");
        assert_eq!(shared["spec"]["privateKey"], json!({"algorithm": "ECDSA", "size": 384}));
        assert_eq!(shared["spec"]["usages"], json!(["server auth", "digital signature"]));
        assert_eq!(shared["metadata"]["namespace"], "shop");
        assert_eq!(shared["metadata"]["labels"][MADE_FOR_GATEWAY], "web");
        assert_eq!(shared["metadata"]["annotations"][MADE_FOR_GATEWAY_UID], "u-1");
        assert!(made_by_shim(shared, "web", Some("u-1")) && made_by_shim(shared, "web", None));
        assert!(!made_by_shim(shared, "web", Some("u-2")), "another Gateway of that name");
        let mut copied = shared.clone();
        copied["metadata"]["annotations"] = json!({});
        assert!(!made_by_shim(&copied, "web", Some("u-1")), "the label alone is not the shim's mark");
        assert!(skipped.iter().any(|s| s.contains("listener nohost")), "{skipped:?}");
        assert!(skipped.iter().any(|s| s.contains("certificateRef x")), "{skipped:?}");
        // Each manifest is a valid Certificate.
        for m in wanted.values() {
            capstan_model::parse_manifests("shim.yaml", &serde_json::to_string(m).expect("json")).expect("valid");
        }
    }

    #[test]
    fn a_certificate_changed_by_hand_is_made_again_over_the_version_read() {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = Store::open(&dir.path().join("state.redb")).expect("store");
        let listeners = json!([{"name": "a", "port": 443, "protocol": "HTTPS", "hostname": "a.example.com",
                                "tls": {"certificateRefs": [{"name": "a-tls"}]}}]);
        let g = serde_json::to_value(gateway(json!({"cert-manager.io/issuer": "le"}), listeners)).expect("json");
        store.apply(vec![g]).expect("apply");
        let shim = Shim { store: store.clone(), notes: Mutex::default(), generations: Mutex::default() };
        let gw = ObjectKey::new("Gateway", "shop", "web");
        // The stored Gateway has its own uid: the Certificate is marked with it.
        shim.reconcile(&gw).expect("made");
        let key = ObjectKey::new("Certificate", "shop", "a-tls");
        let made = store.get(&key).expect("read").expect("made");
        assert_eq!(made["spec"]["dnsNames"], json!(["a.example.com"]));
        let mut changed = made.clone();
        changed["spec"]["dnsNames"] = json!(["other.example.com"]);
        store.apply(vec![changed]).expect("changed by hand");
        shim.reconcile(&gw).expect("made again");
        let again = store.get(&key).expect("read").expect("there");
        assert_eq!(again["spec"]["dnsNames"], json!(["a.example.com"]), "as the Gateway asks");
        assert_ne!(again["metadata"]["resourceVersion"], made["metadata"]["resourceVersion"]);
        assert!(made_by_shim(&again, "web", again["metadata"]["annotations"][MADE_FOR_GATEWAY_UID].as_str()));
    }

    #[test]
    fn a_change_is_written_over_the_version_read_and_another_ones_certificate_is_left() {
        let listeners = json!([{"name": "a", "port": 443, "protocol": "HTTPS", "hostname": "a.example.com",
                                "tls": {"certificateRefs": [{"name": "a-tls"}]}}]);
        let (wanted, _) = wanted(&gateway(json!({"cert-manager.io/issuer": "le"}), listeners));
        let manifest = &wanted["a-tls"];
        let fresh = to_write(manifest, None, "web", Some("u-1")).expect("made").expect("written");
        assert!(fresh["metadata"].get("resourceVersion").is_none(), "a new one has no version to hold to");
        let mut stored = manifest.clone();
        stored["metadata"]["resourceVersion"] = json!("7");
        assert_eq!(to_write(manifest, Some(&stored), "web", Some("u-1")), Ok(None), "as wanted: nothing written");
        stored["spec"]["dnsNames"] = json!(["b.example.com"]);
        let over = to_write(manifest, Some(&stored), "web", Some("u-1")).expect("made").expect("written");
        assert_eq!(over["metadata"]["resourceVersion"], "7", "written over the version read");
        assert_eq!(over["spec"], manifest["spec"]);
        stored["metadata"]["annotations"] = json!({});
        let note = to_write(manifest, Some(&stored), "web", Some("u-1")).expect_err("not the shim's");
        assert!(note.contains("a-tls") && note.contains("left as it is"), "{note}");
    }

    #[test]
    fn without_one_issuer_annotation_nothing_is_made() {
        let listeners = json!([{"name": "a", "port": 443, "protocol": "HTTPS", "hostname": "a.example.com",
                                "tls": {"certificateRefs": [{"name": "a-tls"}]}}]);
        assert!(wanted(&gateway(json!({}), listeners.clone())).0.is_empty());
        let both =
            gateway(json!({"cert-manager.io/issuer": "a", "cert-manager.io/cluster-issuer": "b"}), listeners.clone());
        let (w, skipped) = wanted(&both);
        assert!(w.is_empty() && skipped[0].contains("one, please"), "{skipped:?}");
        let cluster = wanted(&gateway(json!({"cert-manager.io/cluster-issuer": "le"}), listeners.clone())).0;
        assert_eq!(cluster["a-tls"]["spec"]["issuerRef"]["kind"], "ClusterIssuer");
        // A bad value is said, and nothing is made of it.
        let (w, skipped) =
            wanted(&gateway(json!({"cert-manager.io/issuer": "a", "cert-manager.io/duration": "90d"}), listeners));
        assert!(w.is_empty(), "{w:?}");
        assert!(skipped[0].contains("would be invalid") && skipped[0].contains("spec.duration"), "{skipped:?}");
    }
}
