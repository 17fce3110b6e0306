//! TLSRoutes and TCPRoutes on the TLS and TCP listeners of the compiled Gateways: a TLSRoute's host names meet its
//! listener's (a TCPRoute takes every name), the oldest route keeps a name two routes claim, and each parent gets
//! its `Accepted` and `ResolvedRefs` conditions.

use std::collections::BTreeMap;
use std::sync::Arc;

use capstan_model::gateway::{Condition, ParentReference, RouteParentStatus, RouteStatus, CONTROLLER_NAME};
use capstan_model::stream_route::StreamRouteRule;
use capstan_model::{Expose, ObjectKey, ObjectMeta};
use capstan_proxy::gateway::{RouteBackend, RuleAction};
use capstan_proxy::routes::HostPattern;
use chrono::{DateTime, Utc};

use crate::compile::{condition, created_ms, hosts_on, listeners_for, resolve, Grants, Objects, Slot};

/// One route of either kind, as attachment sees it.
struct Candidate<'a> {
    key: ObjectKey,
    meta: &'a ObjectMeta,
    parent_refs: &'a [ParentReference],
    /// A TLSRoute's SNI names; None for a TCPRoute (every name).
    hostnames: Option<&'a [String]>,
    rule: Option<&'a StreamRouteRule>,
}

/// Attaches every TLSRoute and TCPRoute, the oldest first, and returns their status.
pub(crate) fn attach_all(
    objects: &Objects,
    slots: &mut [Slot],
    app_ports: &BTreeMap<ObjectKey, BTreeMap<String, u16>>,
    grants: Grants,
    now: DateTime<Utc>,
) -> BTreeMap<ObjectKey, RouteStatus> {
    let key = |kind: &str, m: &ObjectMeta| ObjectKey::new(kind, m.namespace(), &m.name);
    let mut all: Vec<Candidate> = objects
        .tls_routes
        .iter()
        .map(|r| Candidate {
            key: key("TLSRoute", &r.metadata),
            meta: &r.metadata,
            parent_refs: &r.spec.parent_refs,
            hostnames: Some(&r.spec.hostnames),
            rule: r.spec.rules.first(),
        })
        .chain(objects.tcp_routes.iter().map(|r| Candidate {
            key: key("TCPRoute", &r.metadata),
            meta: &r.metadata,
            parent_refs: &r.spec.parent_refs,
            hostnames: None,
            rule: r.spec.rules.first(),
        }))
        .collect();
    // Gateway API's precedence between routes: the oldest, then by namespace and name.
    all.sort_by_key(|c| (created_ms(c.meta), c.key.namespace.clone(), c.key.name.clone()));
    let mut out = BTreeMap::new();
    for c in all {
        let gen = c.meta.generation;
        let (action, resolved) = action(&c, app_ports, grants, now);
        let parents = c
            .parent_refs
            .iter()
            .map(|p| RouteParentStatus {
                parent_ref: p.clone(),
                controller_name: CONTROLLER_NAME.into(),
                conditions: vec![attach(&c, p, &action, slots, gen, now), resolved.clone()],
            })
            .collect();
        out.insert(c.key, RouteStatus { parents });
    }
    out
}

/// The route's one rule as the proxy runs it (its backends by weight), and its `ResolvedRefs` condition.
fn action(
    c: &Candidate,
    app_ports: &BTreeMap<ObjectKey, BTreeMap<String, u16>>,
    grants: Grants,
    now: DateTime<Utc>,
) -> (Arc<RuleAction>, Condition) {
    let ns = c.meta.namespace();
    let gen = c.meta.generation;
    let rule_name = c.rule.and_then(|r| r.name.clone()).unwrap_or_else(|| "0".into());
    // The route's kind is in its id: an HTTPRoute and a TCPRoute of the same name are other rules, with other
    // settings, weights and metric series.
    let mut action = RuleAction::new(format!("{ns}/{}/{}/{rule_name}", c.key.kind, c.meta.name), Expose::http(1));
    let mut problems: Vec<(&str, String)> = Vec::new();
    for b in c.rule.map(|r| r.backend_refs.as_slice()).unwrap_or_default() {
        let (port, problem) = resolve(&b.backend, &c.key.kind, ns, app_ports, grants);
        problems.extend(problem);
        let app = ObjectKey::new("App", b.backend.namespace.as_deref().unwrap_or(ns), &b.backend.name);
        action.backends.push(RouteBackend::new(app, port, b.weight));
    }
    let resolved = match problems.first() {
        None => condition("ResolvedRefs", true, "ResolvedRefs", "", gen, now),
        Some((reason, _)) => {
            let all: Vec<&str> = problems.iter().map(|(_, m)| m.as_str()).collect();
            condition("ResolvedRefs", false, reason, all.join("; "), gen, now)
        }
    };
    (Arc::new(action), resolved)
}

/// Attaches a route to the listeners one parentRef selects, under every host name where its own and the
/// listener's meet that no older route holds; returns its `Accepted` condition for that parent.
fn attach(
    c: &Candidate,
    p: &ParentReference,
    action: &Arc<RuleAction>,
    slots: &mut [Slot],
    gen: Option<i64>,
    now: DateTime<Utc>,
) -> Condition {
    let selected = match listeners_for(p, &c.key.kind, c.meta.namespace(), slots) {
        Ok(selected) => selected,
        Err((reason, why)) => return condition("Accepted", false, reason, why, gen, now),
    };
    let mut refusal = None;
    let mut attached = 0;
    for i in selected {
        let s = &mut slots[i];
        // A TCPRoute takes every name its listener serves.
        let hosts = match hosts_on(s.listener, c.hostnames.unwrap_or_default()) {
            Ok(hosts) => hosts,
            Err(why) => {
                refusal.get_or_insert(why);
                continue;
            }
        };
        let mut held = 0;
        for host in hosts {
            match s.streams.iter().find(|(h, _, _)| *h == host) {
                Some((_, _, owner)) if *owner == c.key => held += 1,
                Some((_, _, owner)) => {
                    let name = match &host {
                        HostPattern::Any => "every name".to_string(),
                        h => h.to_string(),
                    };
                    refusal.get_or_insert((
                        "NotAllowedByListeners",
                        format!(
                            "listener {} already sends {name} to {} {}/{}, which is older",
                            s.listener.name, owner.kind, owner.namespace, owner.name
                        ),
                    ));
                }
                None => {
                    s.streams.push((host, action.clone(), c.key.clone()));
                    held += 1;
                }
            }
        }
        if held > 0 {
            s.attached.insert(c.key.clone());
            attached += 1;
        }
    }
    match (attached, refusal) {
        (0, Some((reason, why))) => condition("Accepted", false, reason, why, gen, now),
        // Accepted for some names, not all: the message says which are served elsewhere.
        (_, Some((_, why))) => condition("Accepted", true, "Accepted", format!("partly: {why}"), gen, now),
        _ => condition("Accepted", true, "Accepted", "", gen, now),
    }
}
