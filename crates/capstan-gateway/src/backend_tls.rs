//! BackendTLSPolicies on the embedded runtime: which policy a route's backend (an App's port) takes — one naming
//! the port before one naming the whole App, the oldest of equals — its TLS settings built once per pass, and each
//! policy's status per Gateway whose routes send through it.

use std::cell::RefCell;
use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

use capstan_model::backend_tls_policy::{BackendTlsPolicy, PolicyAncestorStatus, PolicyStatus};
use capstan_model::config_map::ConfigMap;
use capstan_model::gateway::{ParentReference, CONTROLLER_NAME, GATEWAY_GROUP};
use capstan_model::{ObjectKey, Secret};
use capstan_proxy::upstream_tls::{Roots, SubjectName, UpstreamTls};
use chrono::{DateTime, Utc};

use crate::compile::{condition, created_ms, key_of};

/// What a policy came to: its TLS settings, or why there are none (the `ResolvedRefs` reason and message).
type Built = Result<Arc<UpstreamTls>, (&'static str, String)>;
/// A Gateway by namespace and name.
type GatewayName = (String, String);
/// Per Gateway, the places (`app:port`, and the policy that applies there) where a policy lost.
type Lost = BTreeMap<GatewayName, BTreeSet<String>>;

pub(crate) struct BackendTls<'a> {
    /// Oldest first.
    policies: Vec<&'a BackendTlsPolicy>,
    config_maps: &'a [ConfigMap],
    secrets: &'a [Secret],
    built: RefCell<BTreeMap<ObjectKey, Built>>,
    /// Per policy, the Gateways whose routes send through it.
    used: RefCell<BTreeMap<ObjectKey, BTreeSet<GatewayName>>>,
    /// Per policy, the Gateways whose routes reach one of its targets through another policy, and where.
    lost: RefCell<BTreeMap<ObjectKey, Lost>>,
}

impl<'a> BackendTls<'a> {
    pub(crate) fn new(policies: &'a [BackendTlsPolicy], config_maps: &'a [ConfigMap], secrets: &'a [Secret]) -> Self {
        let mut policies: Vec<&BackendTlsPolicy> = policies.iter().collect();
        policies
            .sort_by_key(|p| (created_ms(&p.metadata), p.metadata.namespace().to_string(), p.metadata.name.clone()));
        BackendTls {
            policies,
            config_maps,
            secrets,
            built: RefCell::default(),
            used: RefCell::default(),
            lost: RefCell::default(),
        }
    }

    /// The TLS to port `port` of `app` for a route whose parents are `parents` (in `route_ns`): None without a
    /// policy; the error when its policy cannot be used (the backend is then not sent to in plain text).
    pub(crate) fn for_backend(
        &self,
        app: &ObjectKey,
        port: &str,
        parents: &[ParentReference],
        route_ns: &str,
    ) -> Option<Result<Arc<UpstreamTls>, String>> {
        let candidates: Vec<&&BackendTlsPolicy> = self
            .policies
            .iter()
            .filter(|p| p.metadata.namespace() == app.namespace && p.spec.targets(&app.name, port))
            .collect();
        let names_port = |p: &BackendTlsPolicy| {
            p.spec.target_refs.iter().any(|t| t.name == app.name && t.section_name.as_deref() == Some(port))
        };
        let winner = *candidates.iter().find(|p| names_port(p)).or(candidates.first())?;
        let gateways: Vec<(String, String)> = parents
            .iter()
            .filter(|p| p.kind.as_deref().unwrap_or("Gateway") == "Gateway")
            .map(|p| (p.namespace.clone().unwrap_or_else(|| route_ns.to_string()), p.name.clone()))
            .collect();
        for loser in candidates.iter().filter(|p| p.metadata.name != winner.metadata.name) {
            let mut lost = self.lost.borrow_mut();
            let places = lost.entry(key_of("BackendTLSPolicy", loser)).or_default();
            for g in &gateways {
                places
                    .entry(g.clone())
                    .or_default()
                    .insert(format!("{}:{port} (BackendTLSPolicy {} applies there)", app.name, winner.metadata.name));
            }
        }
        let key = key_of("BackendTLSPolicy", winner);
        self.used.borrow_mut().entry(key.clone()).or_default().extend(gateways);
        let built = self.built.borrow_mut().entry(key).or_insert_with(|| self.build(winner)).clone();
        Some(built.map_err(|(_, why)| format!("BackendTLSPolicy {}: {why}", winner.metadata.name)))
    }

    fn build(&self, p: &BackendTlsPolicy) -> Built {
        let v = &p.spec.validation;
        let ns = p.metadata.namespace();
        let roots = if v.well_known_ca_certificates.is_some() {
            Roots::System
        } else {
            let mut bundles = Vec::new();
            for r in &v.ca_certificate_refs {
                let name = format!("{} {ns}/{}", r.kind, r.name);
                let value = match r.kind.as_str() {
                    "ConfigMap" => self
                        .config_maps
                        .iter()
                        .find(|c| c.metadata.namespace() == ns && c.metadata.name == r.name)
                        .map(|c| c.spec.value("ca.crt")),
                    "Secret" => self
                        .secrets
                        .iter()
                        .find(|s| s.metadata.namespace() == ns && s.metadata.name == r.name)
                        .map(|s| s.spec.value("ca.crt")),
                    other => {
                        return Err((
                            "InvalidKind",
                            format!("{other} cannot hold CA certificates (ConfigMap or Secret)"),
                        ))
                    }
                };
                match value {
                    None => return Err(("InvalidCACertificateRef", format!("{name} does not exist"))),
                    Some(None) => return Err(("InvalidCACertificateRef", format!("{name} has no ca.crt"))),
                    Some(Some(pem)) => bundles.push((name, pem)),
                }
            }
            Roots::Bundles(bundles)
        };
        let names: Vec<SubjectName> = v
            .subject_alt_names
            .iter()
            .filter_map(|s| match s.type_.as_str() {
                "Hostname" => s.hostname.clone().map(SubjectName::Dns),
                _ => s.uri.clone().map(SubjectName::Uri),
            })
            .collect();
        UpstreamTls::new(&roots, &v.hostname, &names).map(Arc::new).map_err(|e| ("InvalidCACertificateRef", e))
    }

    /// Every policy's status: per Gateway whose routes reach its targets, `Accepted` (False, `Conflicted`, where
    /// another policy applies instead) and `ResolvedRefs`.
    pub(crate) fn status(&self, now: DateTime<Utc>) -> BTreeMap<ObjectKey, PolicyStatus> {
        let used = self.used.borrow();
        let lost = self.lost.borrow();
        let mut built = self.built.borrow_mut();
        self.policies
            .iter()
            .map(|p| {
                let key = key_of("BackendTLSPolicy", p);
                let gen = p.metadata.generation;
                let result = built.entry(key.clone()).or_insert_with(|| self.build(p)).clone();
                let resolved = match &result {
                    Err((reason, why)) => condition("ResolvedRefs", false, reason, why.clone(), gen, now),
                    Ok(_) => condition("ResolvedRefs", true, "ResolvedRefs", "", gen, now),
                };
                let accepted = |gw: &(String, String)| match (&result, used.get(&key).is_some_and(|u| u.contains(gw))) {
                    (Err((_, why)), _) => condition("Accepted", false, "NoValidCACertificate", why.clone(), gen, now),
                    (Ok(_), true) => condition("Accepted", true, "Accepted", "", gen, now),
                    (Ok(_), false) => {
                        let places = lost.get(&key).and_then(|l| l.get(gw)).cloned().unwrap_or_default();
                        let places: Vec<String> = places.into_iter().collect();
                        condition(
                            "Accepted",
                            false,
                            "Conflicted",
                            format!("not applied to {}", places.join(", ")),
                            gen,
                            now,
                        )
                    }
                };
                let mut gateways: BTreeSet<(String, String)> = used.get(&key).cloned().unwrap_or_default();
                gateways.extend(lost.get(&key).map(|l| l.keys().cloned().collect::<Vec<_>>()).unwrap_or_default());
                let ancestors = gateways
                    .iter()
                    .map(|gw| PolicyAncestorStatus {
                        ancestor_ref: ParentReference {
                            group: Some(GATEWAY_GROUP.into()),
                            kind: Some("Gateway".into()),
                            namespace: Some(gw.0.clone()),
                            name: gw.1.clone(),
                            section_name: None,
                            port: None,
                        },
                        controller_name: CONTROLLER_NAME.into(),
                        conditions: vec![accepted(gw), resolved.clone()],
                    })
                    .collect();
                (key, PolicyStatus { ancestors })
            })
            .collect()
    }
}
