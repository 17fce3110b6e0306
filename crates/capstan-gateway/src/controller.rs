//! The front door's controller: on any change to a Gateway, a route, a ReferenceGrant, a BackendTLSPolicy, an App's
//! spec, a Secret or a ConfigMap,
//! compiles them all, installs the result in the balancer (sockets opened, swapped or closed), and writes every
//! status that changed. The ACME HTTP-01 challenges being answered come from the certificates controller, through a
//! watch channel; a change to them is a change too.

use std::collections::HashMap;
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
    let door =
        FrontDoor { store: store.clone(), proxy, answers: watched, seen: Mutex::default(), one_pass: Mutex::default() };
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

    /// One pass over everything.
    fn pass(&self) -> Result<Action, ReconcileError> {
        let mut served = self.one_pass.lock().unwrap_or_else(|p| p.into_inner());
        let objects = Objects {
            gateways: self.decode("Gateway")?,
            http_routes: self.decode("HTTPRoute")?,
            tls_routes: self.decode("TLSRoute")?,
            tcp_routes: self.decode("TCPRoute")?,
            apps: self.decode("App")?,
            secrets: self.decode("Secret")?,
            config_maps: self.decode("ConfigMap")?,
            backend_tls_policies: self.decode("BackendTLSPolicy")?,
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
    use serde_json::json;

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
        super::keep_transition_times(&old, &mut new);
        let c = &new["listeners"][1]["conditions"];
        assert_eq!(c[0]["lastTransitionTime"], "2026-02-02T00:00:00Z", "status changed: the new time");
        assert_eq!(c[1]["lastTransitionTime"], "2026-01-01T00:00:00Z", "same status, other reason: the time kept");
        assert_eq!(
            new["listeners"][0]["conditions"][0]["lastTransitionTime"], "2026-02-02T00:00:00Z",
            "a new listener"
        );
    }
}
