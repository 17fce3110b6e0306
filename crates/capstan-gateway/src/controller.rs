//! The front door's controller: on any change to a Gateway, a route, a ReferenceGrant, a BackendTLSPolicy, an App's
//! spec, a Secret or a ConfigMap,
//! compiles them all, installs the result in the balancer (sockets opened, swapped or closed), and writes every
//! status that changed. The ACME HTTP-01 challenges being answered come from the certificates controller, through a
//! watch channel; a change to them is a change too.

use std::collections::{BTreeSet, HashMap};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use capstan_engine::runner::{self, Action, Handle, ReconcileError, Reconciler};
use capstan_model::acme::ChallengeAnswer;
use capstan_model::ObjectKey;
use capstan_proxy::Proxy;
use capstan_store::{Store, WatchEvent, WatchType};
use chrono::Utc;
use serde_json::Value;

use crate::compile::{compile, Certificates, Objects};
use crate::secret_refs::{secret_refs, SecretKey};

/// The one key every change wakes: the controller compiles everything at once.
fn everything() -> ObjectKey {
    ObjectKey::new("Gateway", "", "")
}

/// The ACME HTTP-01 challenges to answer, as the certificates controller publishes them.
pub type Answers = tokio::sync::watch::Receiver<Arc<Vec<ChallengeAnswer>>>;

/// Starts the controller.
pub fn spawn(store: Store, proxy: Arc<Proxy>, mut answers: Answers) -> Handle {
    let (requests, rx) = tokio::sync::mpsc::unbounded_channel();
    let watched = answers.clone();
    tokio::spawn(async move {
        while answers.changed().await.is_ok() {
            if requests.send(everything()).is_err() {
                break;
            }
        }
    });
    let door = FrontDoor {
        store: store.clone(),
        proxy,
        answers: watched,
        seen: Mutex::default(),
        one_pass: Mutex::default(),
        secrets: Mutex::default(),
    };
    runner::run_with_requests(store, Arc::new(door), 1, rx)
}

struct FrontDoor {
    store: Store,
    proxy: Arc<Proxy>,
    answers: Answers,
    /// The generation last seen of each object that matters: a status write is not a change.
    seen: Mutex<HashMap<ObjectKey, Option<i64>>>,
    /// Passes run one at a time (a finalizer's beside a reconcile would install what it listed before a delete);
    /// the lock holds the certificates the last pass served, kept serving while a changed Secret is not usable.
    one_pass: Mutex<Certificates>,
    /// The Secrets the Gateways and BackendTLSPolicies name, as the last pass found them: only these are read, and
    /// only their changes start a pass.
    secrets: Mutex<BTreeSet<SecretKey>>,
}

/// The longest wait for a certificate's validity to change (a certificate valid until 9999 is looked at daily).
const DAY: Duration = Duration::from_secs(24 * 3600);

impl FrontDoor {
    /// Whether an event changes what is compiled: an object added or deleted, or a spec changed.
    fn changes(&self, ev: &WatchEvent) -> bool {
        let generation = ev.object["metadata"]["generation"].as_i64();
        let mut seen = self.seen.lock().unwrap_or_else(|p| p.into_inner());
        match ev.type_ {
            WatchType::Deleted => seen.remove(&ev.key).is_some() || ev.key.kind != "App",
            _ => seen.insert(ev.key.clone(), generation) != Some(generation),
        }
    }

    fn decode<T: serde::de::DeserializeOwned>(&self, kind: &str) -> Result<Vec<T>, ReconcileError> {
        let values = self.store.list(kind, None)?;
        Ok(values
            .into_iter()
            .filter_map(|v| {
                let name = format!("{kind}/{}", v["metadata"]["name"].as_str().unwrap_or(""));
                serde_json::from_value(v).map_err(|e| tracing::warn!(object = %name, "cannot be read: {e}")).ok()
            })
            .collect())
    }

    /// The Secrets `gateways` and `policies` name, read one by one. The set is recorded before they are read: a
    /// Secret written meanwhile is either read here or, its event coming after the record, starts another pass.
    fn named_secrets(
        &self,
        gateways: &[capstan_model::gateway::Gateway],
        policies: &[capstan_model::backend_tls_policy::BackendTlsPolicy],
    ) -> Result<Vec<capstan_model::Secret>, ReconcileError> {
        let refs = secret_refs(gateways, policies);
        *self.secrets.lock().unwrap_or_else(|p| p.into_inner()) = refs.clone();
        let mut secrets = Vec::with_capacity(refs.len());
        for (ns, name) in refs {
            let Some(v) = self.store.get(&ObjectKey::new("Secret", &ns, &name))? else { continue };
            match serde_json::from_value(v) {
                Ok(s) => secrets.push(s),
                Err(e) => tracing::warn!(object = %format!("Secret/{name}"), "cannot be read: {e}"),
            }
        }
        Ok(secrets)
    }

    /// One pass over everything.
    fn pass(&self) -> Result<Action, ReconcileError> {
        let mut served = self.one_pass.lock().unwrap_or_else(|p| p.into_inner());
        let gateways = self.decode("Gateway")?;
        let backend_tls_policies = self.decode("BackendTLSPolicy")?;
        let objects = Objects {
            secrets: self.named_secrets(&gateways, &backend_tls_policies)?,
            gateways,
            http_routes: self.decode("HTTPRoute")?,
            tls_routes: self.decode("TLSRoute")?,
            tcp_routes: self.decode("TCPRoute")?,
            apps: self.decode("App")?,
            config_maps: self.decode("ConfigMap")?,
            backend_tls_policies,
            grants: self.decode("ReferenceGrant")?,
            answers: self.answers.borrow().as_ref().clone(),
        };
        let mut compiled = compile(&objects, &served, Utc::now());
        *served = std::mem::take(&mut compiled.certificates);
        let plans = std::mem::take(&mut compiled.listeners);
        let failed = self.proxy.sync_gateways(plans);
        for (bind, why) in &failed {
            for (gw, listener) in compiled.binds.get(bind).into_iter().flatten() {
                let Some(st) = compiled.gateways.get_mut(gw) else { continue };
                for l in st.listeners.iter_mut().filter(|l| l.name == *listener) {
                    for c in &mut l.conditions {
                        match c.type_.as_str() {
                            "Accepted" => {
                                c.status = "False".into();
                                c.reason = "PortUnavailable".into();
                                c.message = format!("{why}: another process holds it, or binding it needs privileges");
                            }
                            "Programmed" => {
                                c.status = "False".into();
                                c.reason = "Invalid".into();
                                c.message = why.clone();
                            }
                            _ => {}
                        }
                    }
                }
                let any = st
                    .listeners
                    .iter()
                    .any(|l| l.conditions.iter().any(|c| c.type_ == "Programmed" && c.status == "True"));
                for c in &mut st.conditions {
                    match c.type_.as_str() {
                        "Accepted" => {
                            c.reason = "ListenersNotValid".into();
                            c.message = "some listeners are not served; see status.listeners".into();
                        }
                        "Programmed" if !any => {
                            c.status = "False".into();
                            c.reason = "Invalid".into();
                            c.message = "no listener is served".into();
                        }
                        _ => {}
                    }
                }
            }
        }
        for (key, status) in &compiled.gateways {
            self.write(key, serde_json::to_value(status).unwrap_or(Value::Null))?;
        }
        for (key, status) in &compiled.routes {
            self.write(key, serde_json::to_value(status).unwrap_or(Value::Null))?;
        }
        for (key, status) in &compiled.policies {
            self.write(key, serde_json::to_value(status).unwrap_or(Value::Null))?;
        }
        // A port that could not open is tried again: it may be free later. A certificate that becomes valid or
        // expires changes the status then.
        let retry = (!failed.is_empty()).then_some(Duration::from_secs(5));
        let wake =
            compiled.wake.and_then(|t| (t - Utc::now()).to_std().ok()).map(|d| d.clamp(Duration::from_secs(1), DAY));
        Ok(match retry.into_iter().chain(wake).min() {
            Some(after) => Action::Requeue(after),
            None => Action::AwaitChange,
        })
    }

    /// Writes a status when it differs from the stored one, keeping each condition's transition time while its
    /// status, reason and message stay the same.
    fn write(&self, key: &ObjectKey, mut status: Value) -> Result<(), ReconcileError> {
        let stored = self.store.get(key)?;
        let Some(stored) = stored else { return Ok(()) };
        keep_transition_times(&stored["status"], &mut status);
        if stored["status"] != status {
            self.store.update_status(key, status)?;
        }
        Ok(())
    }
}

/// Copies `lastTransitionTime` from the old status into every condition of the new one whose status did not change
/// (as `metav1.Condition` defines it: the time the status last changed, whatever the reason or message).
fn keep_transition_times(old: &Value, new: &mut Value) {
    fn walk(old: &Value, new: &mut Value) {
        match new {
            Value::Object(m) => {
                if m.contains_key("lastTransitionTime") {
                    if old.get("type") == m.get("type") && old.get("status") == m.get("status") {
                        if let Some(t) = old.get("lastTransitionTime") {
                            m.insert("lastTransitionTime".into(), t.clone());
                        }
                    }
                    return;
                }
                for (k, v) in m.iter_mut() {
                    walk(old.get(k).unwrap_or(&Value::Null), v);
                }
            }
            Value::Array(items) => {
                for (i, v) in items.iter_mut().enumerate() {
                    // Conditions are matched by type, listeners by name, route parents by their reference.
                    let identity = ["type", "name", "parentRef", "ancestorRef"]
                        .into_iter()
                        .find_map(|k| Some((k, v.get(k)?.clone())));
                    let o = match identity {
                        Some((k, id)) => old.as_array().and_then(|a| a.iter().find(|o| o.get(k) == Some(&id))),
                        None => old.get(i),
                    }
                    .unwrap_or(&Value::Null);
                    walk(o, v);
                }
            }
            _ => {}
        }
    }
    walk(old, new);
}

impl Reconciler for FrontDoor {
    fn kind(&self) -> &'static str {
        "Gateway"
    }

    /// A Gateway's own events wake the one key, as the others' do (see `triggers`): one pass, not one per Gateway.
    fn wants(&self, _ev: &WatchEvent) -> bool {
        false
    }

    fn triggers(&self, ev: &WatchEvent) -> Vec<ObjectKey> {
        match ev.key.kind.as_str() {
            // A Secret no Gateway or policy names is nothing to the front door (a thousand Certificates' Secrets).
            "Secret"
                if !self
                    .secrets
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .contains(&(ev.key.namespace.clone(), ev.key.name.clone())) =>
            {
                // Forgotten when deleted, so that one made again once a Gateway names it is a change.
                if ev.type_ == WatchType::Deleted {
                    self.seen.lock().unwrap_or_else(|p| p.into_inner()).remove(&ev.key);
                }
                Vec::new()
            }
            "Gateway" | "HTTPRoute" | "TLSRoute" | "TCPRoute" | "ReferenceGrant" | "App" | "Secret" | "ConfigMap"
            | "BackendTLSPolicy"
                if self.changes(ev) =>
            {
                vec![everything()]
            }
            _ => Vec::new(),
        }
    }

    fn known(&self) -> Vec<ObjectKey> {
        vec![everything()]
    }

    /// Every stored Gateway is also looked at on each resync: only the one key runs a pass.
    fn reconcile(&self, key: &ObjectKey) -> Result<Action, ReconcileError> {
        if *key != everything() {
            return Ok(Action::AwaitChange);
        }
        self.pass()
    }

    fn finalize(&self, key: &ObjectKey, _last: &Value) {
        // Forgotten, so the same name created again is a change.
        self.seen.lock().unwrap_or_else(|p| p.into_inner()).remove(key);
        if let Err(e) = self.pass() {
            tracing::warn!("gateways after a delete: {e}");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[tokio::test]
    async fn only_the_secrets_gateways_name_are_read_and_only_their_changes_start_a_pass() {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = Store::open(&dir.path().join("state.redb")).expect("store");
        let secret = |name: &str| {
            json!({"apiVersion": "capstan.dev/v1alpha1", "kind": "Secret", "metadata": {"name": name, "namespace": "default"},
                   "spec": {"stringData": {"tls.crt": "x", "tls.key": "y"}}})
        };
        store
            .apply(vec![
                secret("web-tls"),
                secret("a-certificate-nobody-serves"),
                json!({"apiVersion": "gateway.networking.k8s.io/v1", "kind": "Gateway",
                       "metadata": {"name": "web", "namespace": "default"},
                       "spec": {"gatewayClassName": "capstan", "listeners": [{"name": "https", "port": 8443,
                                "protocol": "HTTPS", "hostname": "web.example", "tls": {"certificateRefs": [{"name": "web-tls"}]}}]}}),
            ])
            .expect("apply");
        let (_tx, answers) = tokio::sync::watch::channel(Arc::new(Vec::new()));
        let door = FrontDoor {
            store: store.clone(),
            proxy: Arc::new(Proxy::new()),
            answers,
            seen: Mutex::default(),
            one_pass: Mutex::default(),
            secrets: Mutex::default(),
        };
        let gateways = door.decode("Gateway").expect("gateways");
        let read = door.named_secrets(&gateways, &[]).expect("secrets");
        let names: Vec<&str> = read.iter().map(|s| s.metadata.name.as_str()).collect();
        assert_eq!(names, ["web-tls"]);
        let changed = |name: &str| WatchEvent {
            type_: WatchType::Modified,
            key: ObjectKey::new("Secret", "default", name),
            object: json!({"metadata": {"generation": 2}}),
        };
        assert_eq!(door.triggers(&changed("web-tls")), [everything()]);
        assert!(door.triggers(&changed("a-certificate-nobody-serves")).is_empty());
    }

    #[test]
    fn unchanged_conditions_keep_their_transition_time() {
        let old = json!({"listeners": [{"name": "http", "conditions": [
            {"type": "Accepted", "status": "True", "reason": "Accepted", "message": "", "lastTransitionTime": "2026-01-01T00:00:00Z"},
            {"type": "Programmed", "status": "True", "reason": "Programmed", "message": "", "lastTransitionTime": "2026-01-01T00:00:00Z"}]}]});
        // The listeners come back in another order with another one first: matched by name.
        let mut new = json!({"listeners": [
            {"name": "new", "conditions": [
                {"type": "Accepted", "status": "True", "reason": "Accepted", "message": "", "lastTransitionTime": "2026-02-02T00:00:00Z"}]},
            {"name": "http", "conditions": [
                {"type": "Programmed", "status": "False", "reason": "Invalid", "message": "x", "lastTransitionTime": "2026-02-02T00:00:00Z"},
                {"type": "Accepted", "status": "True", "reason": "ListenersNotValid", "message": "y", "lastTransitionTime": "2026-02-02T00:00:00Z"}]}]});
        keep_transition_times(&old, &mut new);
        let c = &new["listeners"][1]["conditions"];
        assert_eq!(c[0]["lastTransitionTime"], "2026-02-02T00:00:00Z", "status changed: the new time");
        assert_eq!(c[1]["lastTransitionTime"], "2026-01-01T00:00:00Z", "same status, other reason: the time kept");
        assert_eq!(
            new["listeners"][0]["conditions"][0]["lastTransitionTime"], "2026-02-02T00:00:00Z",
            "a new listener"
        );
    }
}
