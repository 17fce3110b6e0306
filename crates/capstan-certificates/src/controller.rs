//! The Issuer, ClusterIssuer and Certificate controllers: an issuer's `Ready` says whether it can sign; a Certificate is issued
//! into its Secret when the plan says so (missing, changed, due for renewal, asked for) and looked at again at its
//! renewal time. A failed issuance leaves the Secret as it was (the old certificate keeps serving) and backs off.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use capstan_engine::runner::{self, Action, Handle, ReconcileError, Reconciler};
use capstan_model::certificate::{Certificate, CertificateStatus, Issuer, CLUSTER_RESOURCE_NAMESPACE};
use capstan_model::meta::{find_condition, remove_condition, set_condition, Condition, ConditionStatus};
use capstan_model::{EventType, ObjectKey};
use capstan_store::{Store, WatchEvent};
use chrono::{DateTime, Utc};
use serde_json::Value;

use crate::acme::{account, http::AcmeHttp, Answers};
use crate::error::IssueError;
use crate::index::{Index, Names};
use crate::issue::{sign, Signer};
use crate::keys::Key;
use crate::plan::{decide, with_suggestion, Decision};
use crate::renewal_info::RenewalInfos;
use crate::secret;

/// The condition type of a Certificate being issued.
pub const ISSUING: &str = "Issuing";
/// The reason `capstan certificate renew` writes on `Issuing`, as cmctl does.
pub const MANUALLY_TRIGGERED: &str = "ManuallyTriggered";

/// How many Certificates are issued at once: an ACME order waits seconds on the server.
const CONCURRENT_ISSUANCES: usize = 4;
/// How many Issuers are looked at at once: an ACME registration may wait out an unreachable server's timeouts, and
/// must not hold back the other Issuers' `Ready`.
const CONCURRENT_ISSUERS: usize = 4;

/// The controllers this crate runs.
pub struct Controllers {
    pub issuers: Handle,
    pub cluster_issuers: Handle,
    pub certificates: Handle,
}

/// Starts the three controllers; ACME HTTP-01 answers are published to `answers`.
pub fn spawn(store: Store, answers: Answers) -> Controllers {
    let issuers = Issuers { kind: "Issuer", store: store.clone(), failures: Mutex::default() };
    let issuers = runner::run(store.clone(), Arc::new(issuers), CONCURRENT_ISSUERS);
    let cluster_issuers = Issuers { kind: "ClusterIssuer", store: store.clone(), failures: Mutex::default() };
    let cluster_issuers = runner::run(store.clone(), Arc::new(cluster_issuers), CONCURRENT_ISSUERS);
    // Seeded from the store; kept by the watch and by every reconcile (a Certificate missed while the watch lagged
    // is put right by the resync that follows).
    let index = match store.list("Certificate", None) {
        Ok(all) => Index::of(&all),
        Err(e) => {
            tracing::warn!("Certificates could not be read to index them (each is indexed when reconciled): {e}");
            Index::default()
        }
    };
    let certificates = Certificates {
        store: store.clone(),
        answers,
        not_before: Mutex::default(),
        failed_with: Mutex::default(),
        index: Mutex::new(index),
        issuers_seen: Mutex::default(),
        renewal_infos: RenewalInfos::default(),
    };
    let certificates = runner::run(store, Arc::new(certificates), CONCURRENT_ISSUANCES);
    Controllers { issuers, cluster_issuers, certificates }
}

fn condition(
    type_: &str,
    ok: bool,
    reason: &str,
    message: String,
    generation: Option<i64>,
    now: DateTime<Utc>,
) -> Condition {
    Condition {
        type_: type_.into(),
        status: if ok { ConditionStatus::True } else { ConditionStatus::False },
        reason: reason.into(),
        message,
        last_transition_time: now,
        observed_generation: generation,
    }
}

/// How an Issuer signs, read from the store: its CA's chain and key, itself, or an ACME server.
enum Signing {
    SelfSigned,
    Ca { chain_pem: String, key: Key },
    Acme(Box<capstan_model::acme::AcmeIssuer>),
}

/// The signer an Issuer or ClusterIssuer stands for, or why it cannot sign (in words for its `Ready` condition).
fn signing(store: &Store, issuer: &Issuer) -> Result<Result<Signing, (String, String)>, ReconcileError> {
    if issuer.spec.self_signed.is_some() {
        return Ok(Ok(Signing::SelfSigned));
    }
    if let Some(acme) = &issuer.spec.acme {
        return Ok(Ok(Signing::Acme(Box::new(acme.clone()))));
    }
    let Some(ca) = &issuer.spec.ca else {
        return Ok(Err(("NotSupported".into(), "the Issuer names no way of signing".into())));
    };
    let ns = issuer.secrets_namespace();
    let key = ObjectKey::new("Secret", ns, &ca.secret_name);
    let Some(s) = store.get(&key)? else {
        let cluster = match issuer.is_cluster_issuer() {
            true => format!(" in namespace {ns} (where a ClusterIssuer's Secrets are, as cert-manager's cluster resource namespace)"),
            false => String::new(),
        };
        return Ok(Err((
            "ErrGetKeyPair".into(),
            format!("Error getting keypair for CA issuer: secret \"{}\" not found{cluster}", ca.secret_name),
        )));
    };
    let spec = match secret::spec_of(&s) {
        Ok(s) => s,
        Err(e) => return Ok(Err(("ErrGetKeyPair".into(), e))),
    };
    let (Some(crt), Some(pem)) = (spec.value("tls.crt"), spec.value("tls.key")) else {
        return Ok(Err((
            "ErrGetKeyPair".into(),
            format!("Error getting keypair for CA issuer: secret \"{}\" needs tls.crt and tls.key", ca.secret_name),
        )));
    };
    let key = match Key::from_pem(&pem) {
        Ok(k) => k,
        Err(e) => return Ok(Err(("ErrInvalidKeyPair".into(), format!("Error decoding the CA's tls.key: {e}")))),
    };
    match secret::facts(&crt, &key) {
        Err(e) => Ok(Err(("ErrInvalidKeyPair".into(), format!("Error decoding the CA's tls.crt: {e}")))),
        Ok(f) if !f.key_matches => {
            Ok(Err(("ErrInvalidKeyPair".into(), "the CA's tls.key is not the key of its tls.crt".into())))
        }
        Ok(f) if !f.is_ca => Ok(Err((
            "ErrInvalidKeyPair".into(),
            "the certificate in tls.crt is not a CA (basicConstraints CA:FALSE)".into(),
        ))),
        Ok(_) => Ok(Ok(Signing::Ca { chain_pem: String::from_utf8_lossy(&crt).into_owned(), key })),
    }
}

fn decode<T: serde::de::DeserializeOwned>(v: Value, key: &ObjectKey) -> Result<T, ReconcileError> {
    serde_json::from_value(v).map_err(|e| ReconcileError::Other(format!("{key}: {e}")))
}

/// Issuers or ClusterIssuers (one controller each: they share their spec and status).
struct Issuers {
    /// `Issuer` or `ClusterIssuer`.
    kind: &'static str,
    store: Store,
    /// ACME registrations failed in a row, per Issuer, for the backoff.
    failures: Mutex<HashMap<ObjectKey, u32>>,
}

impl Issuers {
    /// An ACME Issuer's account registered (or found): its `Ready` condition, its account status, and when to look
    /// again after a failure.
    fn register(
        &self,
        key: &ObjectKey,
        issuer: &Issuer,
        acme: &capstan_model::acme::AcmeIssuer,
        generation: Option<i64>,
        now: DateTime<Utc>,
    ) -> (Condition, Option<capstan_model::acme::AcmeIssuerStatus>, Action) {
        let registered =
            account::trust(acme).and_then(|t| AcmeHttp::new(&t).map_err(IssueError::Issuer)).and_then(|http| {
                tokio::runtime::Handle::current()
                    .block_on(account::account(&self.store, issuer, acme, &http))
                    .map(|(_, st)| st)
            });
        let mut failures = self.failures.lock().unwrap_or_else(|p| p.into_inner());
        match registered {
            Ok(st) => {
                failures.remove(key);
                let message = "The ACME account was registered with the ACME server".to_string();
                (
                    condition("Ready", true, "ACMEAccountRegistered", message, generation, now),
                    Some(st),
                    Action::AwaitChange,
                )
            }
            Err(e) => {
                let n = failures.entry(key.clone()).or_default();
                *n += 1;
                let mut wait = crate::plan::backoff(*n);
                if let IssueError::Acme { retry_after: Some(t), .. } = &e {
                    wait = wait.max((*t - now).to_std().unwrap_or_default());
                }
                let message = format!("Failed to register ACME account: {e}");
                let known = issuer.status.as_ref().and_then(|s| s.acme.clone());
                (
                    condition("Ready", false, "ErrRegisterACMEAccount", message, generation, now),
                    known,
                    Action::Requeue(wait),
                )
            }
        }
    }
}

impl Reconciler for Issuers {
    fn kind(&self) -> &'static str {
        self.kind
    }

    fn wants(&self, ev: &WatchEvent) -> bool {
        ev.object["status"]["conditions"].is_null()
            || ev.object["metadata"]["generation"] != ev.object["status"]["conditions"][0]["observedGeneration"]
    }

    /// The CA issuers of a Secret that changed, and the ACME issuers whose account key or binding it holds.
    fn triggers(&self, ev: &WatchEvent) -> Vec<ObjectKey> {
        if ev.key.kind != "Secret" {
            return Vec::new();
        }
        let (list_ns, key_ns) = match self.kind {
            "ClusterIssuer" if ev.key.namespace == CLUSTER_RESOURCE_NAMESPACE => (None, ""),
            "ClusterIssuer" => return Vec::new(),
            _ => (Some(ev.key.namespace.as_str()), ev.key.namespace.as_str()),
        };
        let Ok(issuers) = self.store.list(self.kind, list_ns) else { return Vec::new() };
        let name = Some(ev.key.name.as_str());
        issuers
            .iter()
            .filter(|i| {
                let s = &i["spec"];
                s["ca"]["secretName"].as_str() == name
                    || s["acme"]["privateKeySecretRef"]["name"].as_str() == name
                    || s["acme"]["externalAccountBinding"]["keySecretRef"]["name"].as_str() == name
            })
            .filter_map(|i| i["metadata"]["name"].as_str().map(|n| ObjectKey::new(self.kind, key_ns, n)))
            .collect()
    }

    fn reconcile(&self, key: &ObjectKey) -> Result<Action, ReconcileError> {
        let Some(v) = self.store.get(key)? else { return Ok(Action::AwaitChange) };
        let issuer: Issuer = decode(v, key)?;
        let now = Utc::now();
        let generation = issuer.metadata.generation;
        let mut status = issuer.status.clone().unwrap_or_default();
        let mut action = Action::AwaitChange;
        let ready = match signing(&self.store, &issuer)? {
            Ok(Signing::SelfSigned) => condition("Ready", true, "IsReady", String::new(), generation, now),
            Ok(Signing::Ca { .. }) => {
                condition("Ready", true, "KeyPairVerified", "Signing CA verified".into(), generation, now)
            }
            Ok(Signing::Acme(acme)) => {
                let (ready, account, after) = self.register(key, &issuer, &acme, generation, now);
                status.acme = account;
                action = after;
                ready
            }
            Err((reason, message)) => condition("Ready", false, &reason, message, generation, now),
        };
        let was = find_condition(&status.conditions, "Ready").map(|c| (c.status, c.reason.clone()));
        if was != Some((ready.status, ready.reason.clone())) {
            let type_ = if ready.status == ConditionStatus::True { EventType::Normal } else { EventType::Warning };
            self.store.record_event(key, type_, &ready.reason, &ready.message)?;
        }
        set_condition(&mut status.conditions, ready);
        self.store.update_status(key, serde_json::to_value(&status).unwrap_or_default())?;
        Ok(action)
    }
}

struct Certificates {
    store: Store,
    /// Where ACME HTTP-01 answers are published for the front door.
    answers: Answers,
    /// When an ACME server may be asked again: per Issuer, after a `Retry-After` (nothing but a manual renewal
    /// asks it sooner, for any Certificate of that Issuer; for a ClusterIssuer, per Certificate); per Certificate,
    /// after the server rejected an order (a failed validation counts against the server's limits: the longer ACME
    /// backoff holds while nothing changed).
    not_before: Mutex<HashMap<ObjectKey, DateTime<Utc>>>,
    /// What each Certificate's issuer was (its and its CA Secret's resourceVersions) when its last issuance failed:
    /// a change to either is tried at once, whatever the backoff.
    failed_with: Mutex<HashMap<ObjectKey, String>>,
    /// Which Certificates name which Secret and Issuer.
    index: Mutex<Index>,
    /// What the ACME servers suggest for renewals (ARI).
    renewal_infos: RenewalInfos,
    /// Each Issuer's generation, `Ready` status and ACME account as last seen: only a change to one of them wakes
    /// its Certificates (not a status write that says the same).
    issuers_seen: Mutex<HashMap<ObjectKey, (Value, Value, Value)>>,
}

impl Certificates {
    /// The ACME spec of `cert`'s issuer, when it is an ACME issuer (a read error or a missing issuer: none; the
    /// issuance reports those).
    fn acme_of(&self, cert: &Certificate) -> Option<capstan_model::acme::AcmeIssuer> {
        let key = cert.spec.issuer_ref.key(cert.metadata.namespace())?;
        let issuer: Issuer = serde_json::from_value(self.store.get(&key).ok()??).ok()?;
        issuer.spec.acme
    }

    /// The resourceVersions of `cert`'s issuer and of its CA Secret, as one string.
    fn issuer_version(&self, cert: &Certificate) -> Result<String, ReconcileError> {
        let Some(issuer_key) = cert.spec.issuer_ref.key(cert.metadata.namespace()) else { return Ok(String::new()) };
        let ns = capstan_model::certificate::secrets_namespace(&issuer_key);
        let issuer = self.store.get(&issuer_key)?;
        let rv =
            |v: &Option<Value>| v.as_ref().and_then(|v| v["metadata"]["resourceVersion"].as_str().map(str::to_string));
        let ca = match issuer.as_ref().and_then(|i| i["spec"]["ca"]["secretName"].as_str()) {
            Some(name) => rv(&self.store.get(&ObjectKey::new("Secret", ns, name))?),
            None => None,
        };
        Ok(format!("{:?}/{:?}", rv(&issuer), ca))
    }

    fn index(&self) -> std::sync::MutexGuard<'_, Index> {
        self.index.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The other Certificates of `cert`'s namespace with its secretName (the index's candidates, each read to be
    /// sure).
    fn duplicates(&self, cert: &Certificate) -> Result<Vec<String>, ReconcileError> {
        let candidates = self.index().naming_secret(cert.metadata.namespace(), &cert.spec.secret_name);
        let mut others = Vec::new();
        for key in candidates.into_iter().filter(|k| k.name != cert.metadata.name) {
            let Some(other) = self.store.get(&key)? else { continue };
            if other["spec"]["secretName"].as_str() == Some(cert.spec.secret_name.as_str()) {
                others.push(key.name);
            }
        }
        Ok(others)
    }

    /// The keys of the `kind` issuers (listed in `list_ns`, keyed in `key_ns`) whose CA is the Secret `secret`.
    fn issuers_with_ca(&self, kind: &str, list_ns: Option<&str>, key_ns: &str, secret: &str) -> Vec<ObjectKey> {
        self.store
            .list(kind, list_ns)
            .unwrap_or_default()
            .iter()
            .filter(|i| i["spec"]["ca"]["secretName"].as_str() == Some(secret))
            .filter_map(|i| i["metadata"]["name"].as_str().map(|n| ObjectKey::new(kind, key_ns, n)))
            .collect()
    }

    /// Whether an Issuer's event says something its Certificates act on: a new generation, another `Ready`, or
    /// another ACME account (a failed issuance is then tried again at once).
    fn issuer_changed(&self, ev: &WatchEvent) -> bool {
        let mut seen = self.issuers_seen.lock().unwrap_or_else(|p| p.into_inner());
        if ev.type_ == capstan_store::WatchType::Deleted {
            seen.remove(&ev.key);
            return true;
        }
        let ready = ev.object["status"]["conditions"]
            .as_array()
            .and_then(|cs| cs.iter().find(|c| c["type"] == "Ready"))
            .map(|c| c["status"].clone())
            .unwrap_or(Value::Null);
        let now = (ev.object["metadata"]["generation"].clone(), ready, ev.object["status"]["acme"]["uri"].clone());
        seen.insert(ev.key.clone(), now.clone()) != Some(now)
    }

    /// Issues `cert` into its Secret.
    fn issue(
        &self,
        cert: &Certificate,
        existing: Option<&Value>,
        kept: Option<Key>,
        now: DateTime<Utc>,
    ) -> Result<crate::issue::Signed, IssueError> {
        let r = &cert.spec.issuer_ref;
        let Some(issuer_key) = r.key(cert.metadata.namespace()) else {
            return Err(IssueError::Issuer(format!(
                "{} {} ({}) does not sign on Capstan's embedded runtime: only Issuers and ClusterIssuers of cert-manager.io do here; a cluster's cert-manager takes this Certificate as written",
                r.kind(),
                r.name,
                r.group.as_deref().unwrap_or(capstan_model::certificate::CERT_MANAGER_GROUP)
            )));
        };
        let issuer: Issuer = match self.store.get(&issuer_key) {
            Ok(Some(v)) => serde_json::from_value(v).map_err(|e| IssueError::Issuer(e.to_string()))?,
            Ok(None) => {
                // cert-manager's words, with its resource's name.
                return Err(IssueError::Issuer(format!(
                    "Referenced \"{kind}\" not found: {resource}.cert-manager.io \"{}\" not found",
                    r.name,
                    kind = issuer_key.kind,
                    resource = issuer_key.kind.to_ascii_lowercase(),
                )));
            }
            Err(e) => return Err(IssueError::Issuer(format!("reading the {}: {e}", issuer_key.kind))),
        };
        let signing = match signing(&self.store, &issuer) {
            Ok(Ok(s)) => s,
            Ok(Err((_, message))) => {
                return Err(IssueError::Issuer(format!(
                    "{} {} is not ready: {message}",
                    issuer.kind, issuer.metadata.name
                )))
            }
            Err(e) => return Err(IssueError::Issuer(format!("reading the Issuer's CA: {e}"))),
        };
        // rotationPolicy Never keeps the Secret's key when it is of the algorithm asked for.
        let key = match kept {
            Some(k) if !cert.spec.rotates_key() && k.algorithm == cert.spec.key_algorithm() => k,
            _ => Key::generate(cert.spec.key_algorithm())?,
        };
        let signed = match &signing {
            Signing::SelfSigned => sign(&cert.spec, &key, Signer::SelfSigned, now)?,
            Signing::Ca { chain_pem, key: ca_key } => {
                sign(&cert.spec, &key, Signer::Ca { chain_pem, key: ca_key }, now)?
            }
            Signing::Acme(acme) => {
                // The certificate it replaces, named to a server that offers renewal information (RFC 9773 §5).
                let cert_key = ObjectKey::new("Certificate", cert.metadata.namespace(), &cert.metadata.name);
                let replaces = existing.and_then(tls_crt).and_then(|c| self.renewal_infos.replaces(&cert_key, &c));
                self.order(&issuer, acme, cert, &key, replaces.as_deref())?
            }
        };
        let pem = key.to_pem(cert.spec.pkcs8())?;
        let written = secret::build(cert, &signed, &pem, existing);
        self.store.apply(vec![written]).map_err(|e| IssueError::Issuer(format!("writing the Secret: {e}")))?;
        Ok(signed)
    }
}

impl Certificates {
    /// When the ACME server said `key` may ask again, if that is still to come.
    fn told_to_wait(&self, key: &ObjectKey, now: DateTime<Utc>) -> Option<DateTime<Utc>> {
        let mut map = self.not_before.lock().unwrap_or_else(|p| p.into_inner());
        match map.get(key) {
            Some(t) if *t > now => Some(*t),
            Some(_) => {
                map.remove(key);
                None
            }
            None => None,
        }
    }

    /// Writes `uri` as the Issuer's ACME account when it says another (a server that had forgotten the account
    /// registered it again), so that `status.acme.uri` names the account in use. A failed write is only logged: the
    /// issuance goes on, and the next one tries again.
    fn note_account(&self, issuer: &Issuer, uri: &str) {
        // None yet: the Issuers controller writes the first registration.
        let known = issuer.status.as_ref().and_then(|s| s.acme.as_ref()).and_then(|a| a.uri.as_deref());
        if known.is_none_or(|k| k == uri) {
            return;
        }
        let key = issuer.key();
        let written = self.store.get(&key).and_then(|stored| {
            let Some(mut status) = stored.and_then(|v| serde_json::from_value::<Issuer>(v).ok()).and_then(|i| i.status)
            else {
                return Ok(false);
            };
            status.acme.get_or_insert_with(Default::default).uri = Some(uri.to_string());
            self.store.update_status(&key, serde_json::to_value(&status).unwrap_or_default())
        });
        match written {
            Ok(false) => {}
            Ok(true) => {
                let message = format!("The ACME server had no account for the key: registered again as {uri}");
                if let Err(e) = self.store.record_event(&key, EventType::Normal, "ACMEAccountRegistered", &message) {
                    tracing::warn!(issuer = %key, "recording the new ACME account: {e}");
                }
            }
            Err(e) => tracing::warn!(issuer = %key, "writing the new ACME account {uri}: {e}"),
        }
    }

    /// `cert` from its Issuer's ACME server, for `key`.
    fn order(
        &self,
        issuer: &Issuer,
        acme: &capstan_model::acme::AcmeIssuer,
        cert: &Certificate,
        key: &Key,
        replaces: Option<&str>,
    ) -> Result<crate::issue::Signed, IssueError> {
        // Every name's proof is checked on this machine before the server is asked anything.
        let tls_alpn = issuer
            .metadata
            .annotations
            .get(capstan_model::acme::CHALLENGE_ANNOTATION)
            .is_some_and(|v| v.eq_ignore_ascii_case(capstan_model::acme::TLS_ALPN_01));
        let plan = crate::acme::plan(&self.store, acme, tls_alpn, cert)?;
        let http = AcmeHttp::new(&account::trust(acme)?).map_err(IssueError::Issuer)?;
        let runtime = tokio::runtime::Handle::current();
        let account = runtime.block_on(account::registered(&self.store, issuer, acme, &http))?;
        self.note_account(issuer, account.id());
        let chain =
            runtime.block_on(crate::acme::order(&plan, &account, &http, acme, cert, key, replaces, &self.answers))?;
        let bad = |message: String| IssueError::Acme { message, retry_after: None, rejected: true };
        let facts =
            secret::facts(chain.as_bytes(), key).map_err(|e| bad(format!("the ACME server's certificate: {e}")))?;
        if !facts.key_matches {
            return Err(bad("the ACME server returned a certificate for another key".into()));
        }
        Ok(crate::issue::Signed {
            chain_pem: chain,
            ca_pem: String::new(),
            not_before: facts.not_before,
            not_after: facts.not_after,
        })
    }
}

/// The `tls.crt` of a stored Secret.
fn tls_crt(secret: &Value) -> Option<Vec<u8>> {
    secret::spec_of(secret).ok()?.value("tls.crt")
}

/// `Ready` True: the Secret holds what the spec asks, and it has not expired.
fn up_to_date(status: &mut CertificateStatus, generation: Option<i64>, now: DateTime<Utc>) {
    let message = "Certificate is up to date and has not expired".to_string();
    set_condition(&mut status.conditions, condition("Ready", true, "Ready", message, generation, now));
}

/// The generation an object's `Ready` condition was written for (cert-manager keeps it on each condition).
fn ready_generation(obj: &Value) -> &Value {
    obj["status"]["conditions"]
        .as_array()
        .and_then(|cs| cs.iter().find(|c| c["type"] == "Ready"))
        .map_or(&Value::Null, |c| &c["observedGeneration"])
}

/// Whether a Certificate's status asks for a renewal now (`capstan certificate renew`).
fn manually_triggered(status: &CertificateStatus) -> bool {
    find_condition(&status.conditions, ISSUING)
        .is_some_and(|c| c.status == ConditionStatus::True && c.reason == MANUALLY_TRIGGERED)
}

impl Reconciler for Certificates {
    fn kind(&self) -> &'static str {
        "Certificate"
    }

    fn wants(&self, ev: &WatchEvent) -> bool {
        let manual = ev.object["status"]["conditions"].as_array().is_some_and(|cs| {
            cs.iter().any(|c| c["type"] == ISSUING && c["status"] == "True" && c["reason"] == MANUALLY_TRIGGERED)
        });
        manual || ready_generation(&ev.object) != &ev.object["metadata"]["generation"]
    }

    /// The Certificates of a Secret that changed (their own, or their issuer's CA) and of an Issuer whose
    /// generation or readiness changed; found through the index, never by reading every Certificate.
    fn triggers(&self, ev: &WatchEvent) -> Vec<ObjectKey> {
        let ns = &ev.key.namespace;
        match ev.key.kind.as_str() {
            "Secret" => {
                let mut keys = self.index().naming_secret(ns, &ev.key.name);
                // Issuers are few: the ones whose CA this Secret holds (ClusterIssuers' are in the cluster
                // resource namespace).
                let mut issuers = self.issuers_with_ca("Issuer", Some(ns), ns, &ev.key.name);
                if ns == CLUSTER_RESOURCE_NAMESPACE {
                    issuers.extend(self.issuers_with_ca("ClusterIssuer", None, "", &ev.key.name));
                }
                let index = self.index();
                keys.extend(issuers.iter().flat_map(|i| index.of_issuer(i)));
                keys
            }
            "Issuer" | "ClusterIssuer" if self.issuer_changed(ev) => self.index().of_issuer(&ev.key),
            // The others naming its Secret, before and after: one of two deleted or changed frees the other.
            "Certificate" => {
                let mut index = self.index();
                let old = match ev.type_ {
                    capstan_store::WatchType::Deleted => index.remove(&ev.key),
                    _ => index.set(&ev.key, Names::of(&ev.object)),
                };
                let mut secrets = vec![Names::of(&ev.object).secret];
                secrets.extend(old.map(|o| o.secret));
                secrets.dedup();
                secrets.iter().flat_map(|s| index.naming_secret(ns, s)).filter(|k| k.name != ev.key.name).collect()
            }
            _ => Vec::new(),
        }
    }

    fn reconcile(&self, key: &ObjectKey) -> Result<Action, ReconcileError> {
        let Some(v) = self.store.get(key)? else {
            self.index().remove(key);
            self.renewal_infos.forget(key);
            return Ok(Action::AwaitChange);
        };
        self.index().insert_missing(key, Names::of(&v));
        let cert: Certificate = decode(v, key)?;
        let now = Utc::now();
        let generation = cert.metadata.generation;
        let mut status = cert.status.clone().unwrap_or_default();
        // Two Certificates writing one Secret would issue over each other for ever: cert-manager stops both.
        let others = self.duplicates(&cert)?;
        if !others.is_empty() {
            let message = format!(
                "Secret {} is also the secretName of Certificate {}: each Secret belongs to one Certificate",
                cert.spec.secret_name,
                others.join(", ")
            );
            set_condition(
                &mut status.conditions,
                condition("Ready", false, "DuplicateSecretName", message.clone(), generation, now),
            );
            set_condition(
                &mut status.conditions,
                condition(ISSUING, false, "DuplicateSecretName", message, generation, now),
            );
            self.store.update_status(key, serde_json::to_value(&status).unwrap_or_default())?;
            return Ok(Action::AwaitChange);
        }
        let secret_key = ObjectKey::new("Secret", cert.metadata.namespace(), &cert.spec.secret_name);
        let existing = self.store.get(&secret_key)?;
        let (current, kept) = secret::read(existing.as_ref());
        // A backoff holds only while nothing changed: not after a new generation of the Certificate, nor a change to
        // its Issuer or the Issuer's CA Secret.
        let issuer_version = self.issuer_version(&cert)?;
        let unchanged = self.failed_with.lock().unwrap_or_else(|p| p.into_inner()).get(key) == Some(&issuer_version);
        let seen = find_condition(&status.conditions, "Ready").and_then(|c| c.observed_generation);
        let retry = seen == generation && (unchanged || status.failed_issuance_attempts.is_none());
        let manual = manually_triggered(&status);
        let decision = decide(&cert.spec, &current, &status, retry, manual, now);
        // An ACME server that offers renewal information may bring a kept certificate's renewal forward.
        let acme = self.acme_of(&cert);
        let mut next_poll = None;
        let decision = match (&decision, &acme, existing.as_ref().and_then(tls_crt)) {
            (Decision::Keep { .. }, Some(acme), Some(chain)) => {
                match self.renewal_infos.suggestion(key, acme, &chain, now) {
                    Some(lookup) => {
                        if let Some(news) = &lookup.news {
                            self.store.record_event(key, EventType::Normal, "RenewalInfo", news)?;
                        }
                        next_poll = Some(lookup.next_poll);
                        with_suggestion(decision, lookup.suggested.as_ref(), &status, retry, now)
                    }
                    None => decision,
                }
            }
            _ => decision,
        };
        let issuer_key = cert.spec.issuer_ref.key(cert.metadata.namespace());
        let hold = [
            issuer_key.as_ref().and_then(|k| self.told_to_wait(k, now)),
            retry.then(|| self.told_to_wait(key, now)).flatten(),
        ]
        .into_iter()
        .flatten()
        .max();
        let action = match decision {
            Decision::Keep { renewal_time } => {
                if let Ok(c) = &current {
                    status.not_before = Some(c.not_before);
                    status.not_after = Some(c.not_after);
                }
                status.renewal_time = Some(renewal_time);
                up_to_date(&mut status, generation, now);
                wait_until(next_poll.map_or(renewal_time, |p| p.min(renewal_time)), now)
            }
            Decision::Backoff { until } => wait_until(until, now),
            Decision::Issue { .. } if !manual && hold.is_some() => wait_until(hold.unwrap_or(now), now),
            Decision::Issue { reason, message } => {
                self.store.record_event(key, EventType::Normal, reason, &message)?;
                match self.issue(&cert, existing.as_ref(), kept, now) {
                    Ok(signed) => {
                        let renewal = crate::plan::renewal_time(&cert.spec, signed.not_before, signed.not_after);
                        status.revision = Some(status.revision.unwrap_or(0) + 1);
                        status.not_before = Some(signed.not_before);
                        status.not_after = Some(signed.not_after);
                        status.renewal_time = Some(renewal);
                        status.failed_issuance_attempts = None;
                        status.last_failure_time = None;
                        self.failed_with.lock().unwrap_or_else(|p| p.into_inner()).remove(key);
                        let issued = format!(
                            "The certificate has been successfully issued (revision {})",
                            status.revision.unwrap_or(1)
                        );
                        self.store.record_event(key, EventType::Normal, "Issued", &issued)?;
                        up_to_date(&mut status, generation, now);
                        // As cert-manager: the Issuing condition goes once the issuance is done.
                        remove_condition(&mut status.conditions, ISSUING);
                        match acme {
                            // Looked at again at once, to ask its server for the new certificate's renewal window.
                            Some(_) => Action::Requeue(Duration::from_secs(1)),
                            None => wait_until(renewal, now),
                        }
                    }
                    Err(e) => {
                        let failures = status.failed_issuance_attempts.unwrap_or(0) + 1;
                        self.failed_with.lock().unwrap_or_else(|p| p.into_inner()).insert(key.clone(), issuer_version);
                        status.failed_issuance_attempts = Some(failures);
                        status.last_failure_time = Some(now);
                        let message = format!("The certificate could not be issued: {e}");
                        tracing::warn!(certificate = %key, "{message}");
                        self.store.record_event(key, EventType::Warning, "Failed", &message)?;
                        // The Secret was not touched: whatever it held keeps serving. Ready stays True only for a
                        // renewal of a certificate that still matches its spec and is valid; otherwise it is False
                        // with the reason the issuance was for, as cert-manager's.
                        let renewal = matches!(reason, "Renewing" | "ManuallyTriggered");
                        let still_valid = renewal && current.as_ref().is_ok_and(|c| c.not_after > now && c.key_matches);
                        let (ready_reason, ready_message) = if still_valid {
                            ("Ready", "The previous certificate is still valid; its renewal failed".to_string())
                        } else {
                            (reason, message.clone())
                        };
                        set_condition(
                            &mut status.conditions,
                            condition("Ready", still_valid, ready_reason, ready_message, generation, now),
                        );
                        set_condition(
                            &mut status.conditions,
                            condition(ISSUING, false, "Failed", message, generation, now),
                        );
                        // A server that said when to come back is not asked before.
                        let mut until =
                            now + chrono::Duration::from_std(crate::plan::backoff(failures)).unwrap_or_default();
                        if let IssueError::Acme { retry_after, rejected, .. } = &e {
                            let mut holds = self.not_before.lock().unwrap_or_else(|p| p.into_inner());
                            if let Some(t) = retry_after {
                                until = until.max(*t);
                                // An Issuer's Certificates wait together (one namespace, one account); a
                                // ClusterIssuer's only this one: a limit one namespace ran into does not stop every
                                // namespace's renewals.
                                let held = issuer_key.as_ref().filter(|k| k.kind == "Issuer").unwrap_or(key);
                                holds.insert(held.clone(), *t);
                            }
                            if *rejected {
                                let wait = crate::plan::rejected_backoff(failures);
                                until = until.max(now + chrono::Duration::from_std(wait).unwrap_or_default());
                                holds.insert(key.clone(), until);
                            }
                        }
                        wait_until(until, now)
                    }
                }
            }
        };
        self.store.update_status(key, serde_json::to_value(&status).unwrap_or_default())?;
        Ok(action)
    }

    fn resync(&self) -> Option<Duration> {
        Some(Duration::from_secs(300))
    }
}

/// A requeue at `at` (at least a second away; at most a day, so a changed clock is noticed).
fn wait_until(at: DateTime<Utc>, now: DateTime<Utc>) -> Action {
    let wait = (at - now).to_std().unwrap_or_default();
    Action::Requeue(wait.clamp(Duration::from_secs(1), Duration::from_secs(24 * 3600)))
}

#[cfg(test)]
mod tests {
    use super::*;
    use capstan_store::WatchType;
    use serde_json::json;

    fn cert(name: &str, secret: &str, issuer: &str) -> Value {
        json!({"apiVersion": "cert-manager.io/v1", "kind": "Certificate", "metadata": {"name": name, "namespace": "default"},
               "spec": {"secretName": secret, "dnsNames": ["a.example"], "issuerRef": {"name": issuer}}})
    }

    fn event(type_: WatchType, kind: &str, name: &str, object: Value) -> WatchEvent {
        WatchEvent { type_, key: ObjectKey::new(kind, "default", name), object }
    }

    fn names(mut keys: Vec<ObjectKey>) -> Vec<String> {
        keys.sort();
        keys.into_iter().map(|k| k.name).collect()
    }

    #[test]
    fn events_wake_only_the_certificates_that_name_what_changed() {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = Store::open(&dir.path().join("state.redb")).expect("store");
        store
            .apply(vec![
                cert("one", "s1", "ca"),
                cert("two", "s2", "ca"),
                cert("three", "s3", "self"),
                json!({"apiVersion": "cert-manager.io/v1", "kind": "Issuer", "metadata": {"name": "ca", "namespace": "default"},
                       "spec": {"ca": {"secretName": "root"}}}),
            ])
            .expect("apply");
        let index = Index::of(&store.list("Certificate", None).expect("list"));
        let (answers, _feed) = Answers::new();
        let c = Certificates {
            store,
            answers,
            not_before: Mutex::default(),
            failed_with: Mutex::default(),
            index: Mutex::new(index),
            issuers_seen: Mutex::default(),
            renewal_infos: RenewalInfos::default(),
        };
        let secret = |name: &str| event(WatchType::Modified, "Secret", name, json!({}));
        assert_eq!(names(c.triggers(&secret("s2"))), ["two"], "its own Secret");
        assert_eq!(names(c.triggers(&secret("root"))), ["one", "two"], "its Issuer's CA");
        assert!(c.triggers(&secret("unrelated")).is_empty());

        let issuer = |generation: i64, ready: &str| {
            event(
                WatchType::Modified,
                "Issuer",
                "ca",
                json!({"metadata": {"generation": generation},
                "status": {"conditions": [{"type": "Ready", "status": ready}]}}),
            )
        };
        assert_eq!(names(c.triggers(&issuer(1, "True"))), ["one", "two"], "first seen");
        assert!(c.triggers(&issuer(1, "True")).is_empty(), "a status write that says the same");
        assert_eq!(names(c.triggers(&issuer(1, "False"))), ["one", "two"], "no longer Ready");
        assert_eq!(names(c.triggers(&issuer(2, "False"))), ["one", "two"], "a new spec");
        let mut registered = issuer(2, "False");
        registered.object["status"]["acme"] = json!({"uri": "https://acme.example/acct/2"});
        assert_eq!(names(c.triggers(&registered)), ["one", "two"], "another ACME account");

        // `two` takes `one`'s Secret: `one` is woken (now a duplicate), and so it is when `two` leaves it again.
        let moved = event(WatchType::Modified, "Certificate", "two", cert("two", "s1", "ca"));
        assert_eq!(names(c.triggers(&moved)), ["one"]);
        let back = event(WatchType::Modified, "Certificate", "two", cert("two", "s2", "ca"));
        assert_eq!(names(c.triggers(&back)), ["one"], "the Secret it left");
        let gone = event(WatchType::Deleted, "Certificate", "one", cert("one", "s1", "ca"));
        assert!(c.triggers(&gone).is_empty());
        assert!(c.triggers(&secret("s1")).is_empty(), "a deleted Certificate is forgotten");
    }

    #[test]
    fn a_ca_secret_without_its_key_or_not_a_ca_is_named_in_the_issuers_condition() {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = Store::open(&dir.path().join("state.redb")).expect("store");
        let issuer: Issuer = serde_json::from_value(json!({"apiVersion": "cert-manager.io/v1", "kind": "Issuer",
            "metadata": {"name": "ca", "namespace": "default"}, "spec": {"ca": {"secretName": "root"}}}))
        .expect("an Issuer");
        let refused = |store: &Store| match signing(store, &issuer).expect("read") {
            Err(why) => why,
            Ok(_) => panic!("signs"),
        };
        assert_eq!(refused(&store).0, "ErrGetKeyPair", "no Secret");
        let leaf = rcgen::CertificateParams::new(vec!["leaf.example".to_string()]).expect("params");
        let key = rcgen::KeyPair::generate().expect("key");
        let crt = leaf.self_signed(&key).expect("signed").pem();
        let secret = |data: Value| {
            json!({"apiVersion": "capstan.dev/v1alpha1", "kind": "Secret", "metadata": {"name": "root", "namespace": "default"},
                   "spec": {"stringData": data}})
        };
        store.apply(vec![secret(json!({"tls.crt": crt}))]).expect("apply");
        let (reason, message) = refused(&store);
        assert_eq!(reason, "ErrGetKeyPair");
        assert!(message.contains("needs tls.crt and tls.key"), "{message}");
        store.apply(vec![secret(json!({"tls.crt": crt, "tls.key": key.serialize_pem()}))]).expect("apply");
        let (reason, message) = refused(&store);
        assert_eq!(reason, "ErrInvalidKeyPair");
        assert!(message.contains("not a CA"), "a leaf cannot sign: {message}");
    }

    #[test]
    fn a_cluster_issuers_events_and_its_ca_in_cert_manager_wake_its_certificates_in_every_namespace() {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = Store::open(&dir.path().join("state.redb")).expect("store");
        let mut in_b = cert("b1", "s", "le");
        in_b["metadata"]["namespace"] = json!("b");
        in_b["spec"]["issuerRef"]["kind"] = json!("ClusterIssuer");
        let mut in_default = cert("d1", "s", "le");
        in_default["spec"]["issuerRef"]["kind"] = json!("ClusterIssuer");
        store
            .apply(vec![
                in_b,
                in_default,
                cert("local", "s2", "le"),
                json!({"apiVersion": "cert-manager.io/v1", "kind": "ClusterIssuer", "metadata": {"name": "le"},
                       "spec": {"ca": {"secretName": "root"}}}),
            ])
            .expect("apply");
        let (answers, _feed) = Answers::new();
        let c = Certificates {
            index: Mutex::new(Index::of(&store.list("Certificate", None).expect("list"))),
            store: store.clone(),
            answers,
            not_before: Mutex::default(),
            failed_with: Mutex::default(),
            issuers_seen: Mutex::default(),
            renewal_infos: RenewalInfos::default(),
        };
        let keys = |keys: Vec<ObjectKey>| {
            let mut out: Vec<String> = keys.into_iter().map(|k| format!("{}/{}", k.namespace, k.name)).collect();
            out.sort();
            out
        };
        let cluster = WatchEvent {
            type_: WatchType::Modified,
            key: ObjectKey::new("ClusterIssuer", "", "le"),
            object: json!({"metadata": {"generation": 1}}),
        };
        assert_eq!(keys(c.triggers(&cluster)), ["b/b1", "default/d1"], "not the Issuer `le` of default's");
        let root = |ns: &str| WatchEvent {
            type_: WatchType::Modified,
            key: ObjectKey::new("Secret", ns, "root"),
            object: json!({}),
        };
        assert_eq!(keys(c.triggers(&root("cert-manager"))), ["b/b1", "default/d1"], "its CA, in cert-manager");
        assert!(c.triggers(&root("default")).is_empty(), "a Secret of the same name elsewhere");

        // The ClusterIssuer controller is woken by its Secrets in cert-manager only.
        let issuers = Issuers { kind: "ClusterIssuer", store, failures: Mutex::default() };
        assert_eq!(issuers.triggers(&root("cert-manager")), [ObjectKey::new("ClusterIssuer", "", "le")]);
        assert!(issuers.triggers(&root("default")).is_empty());
    }
}
