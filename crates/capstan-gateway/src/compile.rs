//! From Gateways, HTTPRoutes and Apps to what the proxy serves and what their status says: a pure function.
//!
//! Listeners that share an address and port share one socket; their hostnames must differ (else
//! `HostnameConflict`) and their protocols agree (else `ProtocolConflict`): the older Gateway keeps the port. A
//! route attaches to the listeners its parentRefs select that allow it (namespace and kind) and whose hostname
//! meets its own; each rule's matches become entries of that socket's route table, under every hostname where the
//! listener's and the route's meet.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use capstan_model::gateway::FrontendValidationMode;
use capstan_model::gateway::{
    BackendObjectReference, Condition, FromNamespaces, Gateway, GatewayAddress, GatewayStatus, HttpFilterType,
    HttpRoute, HttpRouteRule, Listener, ListenerProtocol, ListenerStatus, ParentReference, RouteGroupKind,
    RouteParentStatus, RouteStatus, TlsMode, CONTROLLER_NAME, GATEWAY_GROUP,
};
use capstan_model::reference_grant::ReferenceGrant;
use capstan_model::stream_route::{TcpRoute, TlsRoute};
use capstan_model::{App, Expose, ObjectKey, Secret, Sticky, StickyCookie};
use capstan_proxy::client_auth::ClientAuth;
use capstan_proxy::gateway::CertifiedKey;
use capstan_proxy::gateway::{ListenerPlan, RouteBackend, RuleAction, SocketMode, VirtualHost};
use capstan_proxy::routes::{Entry, HostPattern, Matcher, RouteId, RouteTable};
use chrono::{DateTime, Utc};

/// Where a shared listener binds: address and port.
pub type Bind = (String, u16);

/// What the proxy serves, and the status of every Gateway and route.
pub struct Compiled {
    pub listeners: Vec<ListenerPlan>,
    pub gateways: BTreeMap<ObjectKey, GatewayStatus>,
    pub routes: BTreeMap<ObjectKey, RouteStatus>,
    /// Which Gateway listeners each socket serves, to report a socket that could not open.
    pub binds: BTreeMap<(String, u16), Vec<(ObjectKey, String)>>,
    /// The certificate each HTTPS listener serves now.
    pub certificates: Certificates,
    /// When a certificate named by a listener becomes valid or expires next: the status changes then on its own.
    pub wake: Option<DateTime<Utc>>,
    /// Every BackendTLSPolicy's status.
    pub policies: BTreeMap<ObjectKey, capstan_model::backend_tls_policy::PolicyStatus>,
}

pub(crate) fn condition(
    type_: &str,
    ok: bool,
    reason: &str,
    message: impl Into<String>,
    generation: Option<i64>,
    now: DateTime<Utc>,
) -> Condition {
    Condition {
        type_: type_.into(),
        status: if ok { "True" } else { "False" }.into(),
        reason: reason.into(),
        message: message.into(),
        observed_generation: generation,
        last_transition_time: now,
    }
}

/// The address a Gateway's listeners bind: its first `IPAddress`, else every address.
pub fn bind_address(g: &Gateway) -> String {
    g.spec
        .addresses
        .iter()
        .find(|a| a.type_.as_deref().unwrap_or("IPAddress") == "IPAddress")
        .map_or_else(|| "0.0.0.0".to_string(), |a| a.value.clone())
}

/// One listener of one Gateway, with what was decided about it.
pub(crate) struct Slot<'a> {
    gateway: &'a Gateway,
    pub(crate) key: ObjectKey,
    pub(crate) listener: &'a Listener,
    bind: (String, u16),
    /// Why it cannot take routes (not accepted, conflicted), with the condition it gets.
    refused: Option<Condition>,
    conflicted: Option<Condition>,
    bad_kinds: Vec<String>,
    /// The routes attached (a route naming the listener twice counts once).
    pub(crate) attached: std::collections::BTreeSet<ObjectKey>,
    /// Its routes' entries: the listener's virtual host on its socket.
    entries: Vec<Entry<RuleAction>>,
    /// A TLS or TCP listener's routes: each host name (every name for TCP) with its route's backends and the
    /// route that holds it (the oldest route keeps a name another claims too).
    pub(crate) streams: Vec<(HostPattern, Arc<RuleAction>, ObjectKey)>,
    /// An HTTPS listener's certificate, and what is wrong with its Secret (its `ResolvedRefs`).
    cert: Option<Arc<CertifiedKey>>,
    cert_problem: Option<String>,
    /// The reason of `ResolvedRefs: False` when there is a problem: `InvalidCertificateRef`, or `RefNotPermitted`
    /// for another namespace's Secret that no ReferenceGrant lets the Gateway use.
    cert_reason: &'static str,
    /// Why an accepted listener cannot be served (an HTTPS listener without a usable certificate).
    unserved: Option<String>,
    /// The client certificates its port asks for (a listener that ends TLS).
    client_auth: Option<Arc<capstan_proxy::client_auth::ClientAuth>>,
    /// ACME TLS-ALPN-01 answers on it, by exact host name.
    acme: Vec<(String, Arc<CertifiedKey>)>,
    /// Unserved (its Secret does not exist yet), but its socket answers a TLS-ALPN-01 validation for it.
    alpn_only: bool,
}

pub(crate) fn created_ms(meta: &capstan_model::ObjectMeta) -> i64 {
    meta.creation_timestamp.map_or(0, |t| t.timestamp_millis())
}

pub(crate) fn key_of<S, T>(kind: &str, o: &capstan_model::Object<S, T>) -> ObjectKey {
    ObjectKey::new(kind, o.metadata.namespace(), &o.metadata.name)
}

/// The certificate each HTTPS listener served last, by Gateway and listener name: kept serving while a changed
/// Secret is not usable.
pub type Certificates = BTreeMap<(ObjectKey, String), Arc<CertifiedKey>>;

/// Everything a pass compiles: the objects the store holds of each kind that matters.
#[derive(Debug, Default)]
pub struct Objects {
    pub gateways: Vec<Gateway>,
    pub http_routes: Vec<HttpRoute>,
    pub tls_routes: Vec<TlsRoute>,
    pub tcp_routes: Vec<TcpRoute>,
    pub apps: Vec<App>,
    pub secrets: Vec<Secret>,
    pub config_maps: Vec<capstan_model::config_map::ConfigMap>,
    pub grants: Vec<ReferenceGrant>,
    pub backend_tls_policies: Vec<capstan_model::backend_tls_policy::BackendTlsPolicy>,
    /// The ACME HTTP-01 challenges being answered now.
    pub answers: Vec<capstan_model::acme::ChallengeAnswer>,
}

/// The ReferenceGrants of every namespace, asked whether one lets an object reference another namespace's.
#[derive(Clone, Copy)]
pub(crate) struct Grants<'a>(&'a [ReferenceGrant]);

impl Grants<'_> {
    /// Whether a `from_kind` (of Gateway API's group) of `from_ns` may reference the `to` (group, kind) named `name`
    /// in `to_ns`: always within a namespace, across namespaces when a grant in `to_ns` says so.
    pub(crate) fn allow(&self, from_kind: &str, from_ns: &str, to: (&str, &str), to_ns: &str, name: &str) -> bool {
        from_ns == to_ns
            || self
                .0
                .iter()
                .filter(|g| g.metadata.namespace() == to_ns)
                .any(|g| g.spec.allows((GATEWAY_GROUP, from_kind), from_ns, to, name))
    }
}

/// Compiles every Gateway and route against the Apps, Secrets and ReferenceGrants that exist; `served` is what the
/// last pass served, and `Compiled::certificates` what this one serves.
pub fn compile(objects: &Objects, served: &Certificates, now: DateTime<Utc>) -> Compiled {
    let Objects { gateways, http_routes: routes, apps, secrets, grants, .. } = objects;
    let grants = Grants(grants);
    let mut gateways: Vec<&Gateway> = gateways.iter().collect();
    gateways.sort_by_key(|g| (created_ms(&g.metadata), g.metadata.namespace().to_string(), g.metadata.name.clone()));
    let mut slots: Vec<Slot> = Vec::new();
    let mut wake: Option<DateTime<Utc>> = None;
    // Per socket: the namespace that holds it (its oldest Gateway's), the protocol, the host names taken, and the
    // client certificates it asks for (those of the first listener on it that ends TLS).
    type Socket = (String, ListenerProtocol, Vec<Option<String>>, Option<Option<Arc<ClientAuth>>>);
    let mut sockets: BTreeMap<Bind, Socket> = BTreeMap::new();
    for g in &gateways {
        let gen = g.metadata.generation;
        for l in &g.spec.listeners {
            let bind = (bind_address(g), l.port);
            let mut slot = Slot {
                gateway: g,
                key: key_of("Gateway", g),
                listener: l,
                bind: bind.clone(),
                refused: None,
                conflicted: None,
                bad_kinds: Vec::new(),
                attached: Default::default(),
                entries: Vec::new(),
                streams: Vec::new(),
                cert: None,
                cert_problem: None,
                cert_reason: "InvalidCertificateRef",
                unserved: None,
                client_auth: None,
                acme: Vec::new(),
                alpn_only: false,
            };
            if let Some(why) = terminates_tls(l).then(|| foreign_secret_refused(g, l, grants)).flatten() {
                // Without a grant, another namespace's Secret is not used, nor the certificate it gave before: a
                // grant withdrawn takes its access with it.
                slot.cert_reason = "RefNotPermitted";
                slot.unserved = Some(format!("no usable certificate: {why}"));
                slot.cert_problem = Some(why);
            } else if terminates_tls(l) {
                let listener_key = (key_of("Gateway", g), l.name.clone());
                // The last certificate served keeps serving while its Secret exists but holds nothing better (a
                // deleted Secret takes its certificate with it), in this process's memory only.
                let previous = secret_exists(g, l, secrets).then(|| served.get(&listener_key).cloned()).flatten();
                match certificate(g, l, secrets) {
                    Ok((c, facts)) => {
                        let checked = facts.and_then(|f| {
                            bring_forward(&mut wake, crate::certs::next_change(&f, now));
                            crate::certs::check(&f, l.hostname.as_deref(), now)
                        });
                        match checked {
                            Ok(()) => slot.cert = Some(Arc::new(c)),
                            Err(why) => {
                                let why = format!("{}: {why}", secret_name(g, l));
                                // Expired, early or for another name, but servable: a certificate already served
                                // stays; without one this one is served anyway (a client may accept it, and a
                                // restart must not take the site down), and the status says what clients will do.
                                let same = previous.as_ref().is_some_and(|p| p.cert.first() == c.cert.first());
                                match previous.filter(|_| !same) {
                                    Some(p) => {
                                        slot.cert = Some(p);
                                        slot.cert_problem = Some(format!(
                                            "{why}; the previous certificate is still served (until Capstan restarts)"
                                        ));
                                    }
                                    None => {
                                        slot.cert = Some(Arc::new(c));
                                        slot.cert_problem = Some(format!(
                                            "{why}; it is served anyway, and clients that check it will refuse it"
                                        ));
                                    }
                                }
                            }
                        }
                    }
                    Err(why) => {
                        slot.cert = previous;
                        slot.cert_problem = Some(match slot.cert {
                            Some(_) => {
                                format!("{why}; the previous certificate is still served (until Capstan restarts)")
                            }
                            None => why.clone(),
                        });
                        if slot.cert.is_none() {
                            slot.unserved = Some(format!("no usable certificate: {why}"));
                        }
                    }
                }
                // The certificate served changes status on its own when it becomes valid or expires.
                if let Some(f) =
                    slot.cert.as_ref().and_then(|c| c.cert.first()).and_then(|d| crate::certs::facts_der(d).ok())
                {
                    bring_forward(&mut wake, crate::certs::next_change(&f, now));
                }
            } else if l.protocol == ListenerProtocol::Udp {
                slot.refused = Some(condition(
                    "Accepted",
                    false,
                    "UnsupportedProtocol",
                    "UDP listeners are not served on the embedded runtime (HTTP, HTTPS, TLS and TCP are); on Kubernetes the cluster's Gateway implementation serves them",
                    gen,
                    now,
                ));
            }
            // Client certificates that cannot be checked: the port is not served (served without them would be an
            // open door).
            if let Some(v) = terminates_tls(l).then(|| g.spec.frontend_validation(l.port)).flatten() {
                match crate::frontend::client_auth(g, v, &objects.config_maps, secrets, grants) {
                    Ok(a) => slot.client_auth = Some(a),
                    Err((reason, why)) => {
                        slot.cert_reason = reason;
                        slot.unserved = Some(format!("client certificates cannot be checked: {why}"));
                        slot.cert_problem = Some(why);
                    }
                }
            }
            // An HTTPS listener whose Secret does not exist yet stays unserved, but its socket answers the ACME
            // TLS-ALPN-01 validation of the certificate it waits for (its challenge handshakes only: no route, no
            // other certificate). Not for any other reason a listener is unserved.
            slot.alpn_only = slot.cert.is_none()
                && slot.unserved.is_some()
                && slot.cert_reason == "InvalidCertificateRef"
                && l.protocol == ListenerProtocol::Https
                && !secret_exists(g, l, secrets)
                && alpn_awaited(g, l, &objects.answers);
            for k in l.allowed_routes.as_ref().map(|a| a.kinds.as_slice()).unwrap_or_default() {
                let group_ok = k.group.as_deref().is_none_or(|g| g == GATEWAY_GROUP);
                if !group_ok || !can_take(l, &k.kind) {
                    slot.bad_kinds.push(k.kind.clone());
                }
            }
            if slot.refused.is_none() && slot.unserved.is_none() {
                let ns = g.metadata.namespace().to_string();
                match sockets.get_mut(&bind) {
                    // Another namespace's socket: sharing it would let one namespace take the other's traffic
                    // with a more specific host name.
                    Some((owner, _, _, _)) if *owner != ns => {
                        slot.conflicted = Some(condition(
                            "Conflicted",
                            true,
                            "PortOwnedByAnotherNamespace",
                            format!("port {} is served by a Gateway of namespace {owner}", l.port),
                            gen,
                            now,
                        ))
                    }
                    Some((_, p, _, _)) if *p != l.protocol => {
                        slot.conflicted = Some(condition(
                            "Conflicted",
                            true,
                            "ProtocolConflict",
                            format!("port {} is served as {} by an older listener", l.port, p.as_str()),
                            gen,
                            now,
                        ))
                    }
                    Some((_, ListenerProtocol::Tcp, _, _)) => {
                        slot.conflicted = Some(condition(
                            "Conflicted",
                            true,
                            "HostnameConflict",
                            format!(
                                "port {} has a TCP listener already: TCP listeners do not share a port (host names do not apply to TCP)",
                                l.port
                            ),
                            gen,
                            now,
                        ))
                    }
                    Some((_, _, _, Some(auth))) if terminates_tls(l) && *auth != slot.client_auth => {
                        slot.conflicted = Some(condition(
                            "Conflicted",
                            true,
                            "ProtocolConflict",
                            format!(
                                "port {} asks clients for other certificates (spec.tls.frontend of an older Gateway on it): one port, one client certificate check",
                                l.port
                            ),
                            gen,
                            now,
                        ))
                    }
                    Some((_, _, hosts, _)) if hosts.contains(&l.hostname) => {
                        slot.conflicted = Some(condition(
                            "Conflicted",
                            true,
                            "HostnameConflict",
                            format!(
                                "another listener on port {} serves {}",
                                l.port,
                                l.hostname.as_deref().unwrap_or("every host name")
                            ),
                            gen,
                            now,
                        ))
                    }
                    Some((_, _, hosts, auth)) => {
                        hosts.push(l.hostname.clone());
                        if terminates_tls(l) && auth.is_none() {
                            *auth = Some(slot.client_auth.clone());
                        }
                    }
                    None => {
                        let auth = terminates_tls(l).then(|| slot.client_auth.clone());
                        sockets.insert(bind, (ns, l.protocol, vec![l.hostname.clone()], auth));
                    }
                }
            }
            slots.push(slot);
        }
    }

    let app_ports: BTreeMap<ObjectKey, BTreeMap<String, u16>> =
        apps.iter().map(|a| (key_of("App", a), a.spec.service_ports())).collect();
    let backend_tls = crate::backend_tls::BackendTls::new(&objects.backend_tls_policies, &objects.config_maps, secrets);
    // The App ports that speak HTTP/2 without TLS (`appProtocol: kubernetes.io/h2c`).
    let h2c_ports: std::collections::BTreeSet<(ObjectKey, String)> = apps
        .iter()
        .flat_map(|a| a.spec.ports.iter().filter(|p| p.is_h2c()).map(move |p| (key_of("App", a), p.name.clone())))
        .collect();
    let mut route_status = BTreeMap::new();
    let mut routes: Vec<&HttpRoute> = routes.iter().collect();
    routes.sort_by_key(|r| (created_ms(&r.metadata), r.metadata.namespace().to_string(), r.metadata.name.clone()));
    for r in routes {
        let ns = r.metadata.namespace();
        let gen = r.metadata.generation;
        let id = Arc::new(RouteId {
            namespace: ns.to_string(),
            name: r.metadata.name.clone(),
            created_ms: created_ms(&r.metadata),
        });
        let (rules, resolved, bad_match) = actions(r, &app_ports, grants, &backend_tls, &h2c_ports, now);
        let unsupported = unsupported(r).or(bad_match);
        let mut parents = Vec::new();
        for p in &r.spec.parent_refs {
            let mut conditions = Vec::new();
            let accepted = match &unsupported {
                Some(why) => condition("Accepted", false, "UnsupportedValue", why.clone(), gen, now),
                None => attach(r, &id, p, &mut slots, &rules, gen, now),
            };
            conditions.push(accepted);
            conditions.push(resolved.clone());
            parents.push(RouteParentStatus {
                parent_ref: p.clone(),
                controller_name: CONTROLLER_NAME.into(),
                conditions,
            });
        }
        route_status.insert(key_of("HTTPRoute", r), RouteStatus { parents });
    }
    route_status.extend(crate::streams::attach_all(objects, &mut slots, &app_ports, grants, now));
    answer_challenges(&objects.answers, &mut slots);

    let mut gateway_status: BTreeMap<ObjectKey, GatewayStatus> = BTreeMap::new();
    let mut binds: BTreeMap<(String, u16), Vec<(ObjectKey, String)>> = BTreeMap::new();
    for s in &slots {
        let gen = s.gateway.metadata.generation;
        let usable = s.refused.is_none() && s.conflicted.is_none() && s.unserved.is_none();
        if usable {
            binds.entry(s.bind.clone()).or_default().push((s.key.clone(), s.listener.name.clone()));
        }
        let supported: Vec<RouteGroupKind> = ["HTTPRoute", "TLSRoute", "TCPRoute"]
            .into_iter()
            .filter(|k| takes(s.listener, k))
            .map(|k| RouteGroupKind { group: Some(GATEWAY_GROUP.into()), kind: k.into() })
            .collect();
        let mut conditions =
            vec![s.refused.clone().unwrap_or_else(|| condition("Accepted", true, "Accepted", "", gen, now))];
        conditions.push(match (&s.refused, &s.conflicted, &s.unserved) {
            (Some(_), _, _) => condition("Programmed", false, "Invalid", "the listener is not accepted", gen, now),
            (None, Some(c), _) => condition("Programmed", false, "Invalid", c.message.clone(), gen, now),
            (None, None, Some(why)) => condition("Programmed", false, "Invalid", why.clone(), gen, now),
            (None, None, None) => condition("Programmed", true, "Programmed", "", gen, now),
        });
        conditions.push(if let Some(why) = &s.cert_problem {
            condition("ResolvedRefs", false, s.cert_reason, why.clone(), gen, now)
        } else if s.bad_kinds.is_empty() {
            condition("ResolvedRefs", true, "ResolvedRefs", "", gen, now)
        } else {
            condition(
                "ResolvedRefs",
                false,
                "InvalidRouteKinds",
                format!("not served on this listener: {}", s.bad_kinds.join(", ")),
                gen,
                now,
            )
        });
        conditions
            .push(s.conflicted.clone().unwrap_or_else(|| condition("Conflicted", false, "NoConflicts", "", gen, now)));
        let st = gateway_status.entry(s.key.clone()).or_default();
        st.listeners.push(ListenerStatus {
            name: s.listener.name.clone(),
            supported_kinds: supported,
            attached_routes: i32::try_from(s.attached.len()).unwrap_or(i32::MAX),
            conditions,
        });
    }
    for g in &gateways {
        let key = key_of("Gateway", g);
        let gen = g.metadata.generation;
        let st = gateway_status.entry(key).or_default();
        let programmed =
            st.listeners.iter().any(|l| l.conditions.iter().any(|c| c.type_ == "Programmed" && c.status == "True"));
        let all_valid =
            st.listeners.iter().all(|l| l.conditions.iter().any(|c| c.type_ == "Programmed" && c.status == "True"));
        st.conditions = vec![
            if all_valid {
                condition("Accepted", true, "Accepted", "", gen, now)
            } else {
                condition(
                    "Accepted",
                    true,
                    "ListenersNotValid",
                    "some listeners are not served; see status.listeners",
                    gen,
                    now,
                )
            },
            if programmed {
                condition("Programmed", true, "Programmed", "", gen, now)
            } else {
                condition("Programmed", false, "Invalid", "no listener is served", gen, now)
            },
        ];
        // Gateway API asks that a mode which lets clients in without a good certificate be said out loud.
        let insecure: Vec<String> = g
            .spec
            .listeners
            .iter()
            .filter(|l| terminates_tls(l))
            .filter(|l| {
                g.spec
                    .frontend_validation(l.port)
                    .is_some_and(|v| v.mode == FrontendValidationMode::AllowInsecureFallback)
            })
            .map(|l| l.port.to_string())
            .collect::<std::collections::BTreeSet<_>>()
            .into_iter()
            .collect();
        if !insecure.is_empty() {
            st.conditions.push(condition(
                "InsecureFrontendValidationMode",
                true,
                "ConfigurationChanged",
                format!(
                    "port {} serves clients without a valid certificate too (AllowInsecureFallback): the backends must check who they are",
                    insecure.join(", ")
                ),
                gen,
                now,
            ));
        }
        st.addresses = vec![GatewayAddress { type_: Some("IPAddress".into()), value: bind_address(g) }];
    }
    // Every usable listener is a virtual host of its socket, routes or not (it answers 404 until one attaches).
    let mut certificates = Certificates::new();
    // Per socket: its mode, its listeners, and the client certificates it asks for.
    type Plan = (SocketMode, Vec<VirtualHost>, Option<Arc<ClientAuth>>, Vec<(String, Arc<CertifiedKey>)>);
    let mut plans: BTreeMap<Bind, Plan> = BTreeMap::new();
    let (served, rest): (Vec<Slot>, Vec<Slot>) =
        slots.into_iter().partition(|s| s.refused.is_none() && s.conflicted.is_none() && s.unserved.is_none());
    let alpn_waiting: Vec<Slot> =
        rest.into_iter().filter(|s| s.alpn_only && s.refused.is_none() && s.conflicted.is_none()).collect();
    for s in served {
        let host = s.listener.hostname.as_deref().map_or(HostPattern::Any, HostPattern::parse);
        if let Some(c) = &s.cert {
            certificates.insert((s.key.clone(), s.listener.name.clone()), c.clone());
        }
        let mode = match s.listener.protocol {
            ListenerProtocol::Https => SocketMode::Https,
            ListenerProtocol::Tls => SocketMode::Tls,
            ListenerProtocol::Tcp => SocketMode::Tcp,
            ListenerProtocol::Http | ListenerProtocol::Udp => SocketMode::Http,
        };
        let socket = plans.entry(s.bind).or_insert((mode, Vec::new(), None, Vec::new()));
        socket.3.extend(s.acme);
        if terminates_tls(s.listener) && socket.2.is_none() {
            socket.2 = s.client_auth.clone();
        }
        match mode {
            SocketMode::Http | SocketMode::Https => {
                socket.1.push(VirtualHost::http(host, RouteTable::new(s.entries), s.cert))
            }
            SocketMode::Tls | SocketMode::Tcp => {
                let passthrough = s.listener.tls.as_ref().is_some_and(|t| t.mode == TlsMode::Passthrough);
                for (h, action, _) in s.streams {
                    socket.1.push(VirtualHost::stream(host.clone(), h, Some(action), s.cert.clone(), passthrough));
                }
            }
        }
    }
    // Sockets that only answer TLS-ALPN-01 validations for listeners still waiting for their Secret: on a socket
    // of the listener's own namespace (or one nobody serves), never another's.
    for s in alpn_waiting {
        let ns = s.gateway.metadata.namespace();
        let owner = sockets.get(&s.bind).map(|(owner, ..)| owner.as_str());
        if owner.is_some_and(|o| o != ns) {
            continue;
        }
        let socket = plans.entry(s.bind).or_insert((SocketMode::Https, Vec::new(), None, Vec::new()));
        if socket.0 == SocketMode::Https {
            socket.3.extend(s.acme);
        }
    }
    let listeners = plans
        .into_iter()
        .map(|((address, port), (mode, hosts, client_auth, acme))| ListenerPlan {
            address,
            port,
            mode,
            hosts,
            client_auth,
            acme,
        })
        .collect();
    let policies = backend_tls.status(now);
    Compiled { listeners, gateways: gateway_status, routes: route_status, binds, certificates, wake, policies }
}

/// ACME HTTP-01 challenges of the Certificates Capstan issues: their exact path on their host name, on the HTTP
/// listeners their solver's parentRefs select (as cert-manager's HTTPRoute for the solver attaches, with the
/// listener's namespace and host name rules), ahead of every route: the oldest of all, on an exact name and path.
/// They count as no route attached.
fn answer_challenges(answers: &[capstan_model::acme::ChallengeAnswer], slots: &mut [Slot]) {
    use capstan_model::gateway::{HttpPathMatch, HttpRouteMatch, PathMatchType};
    for a in answers {
        if let Some((cert, key)) = &a.tls_alpn {
            let c = match capstan_proxy::gateway::challenge_certified_key(cert.as_bytes(), key.as_bytes()) {
                Ok(c) => Arc::new(c),
                Err(e) => {
                    tracing::warn!(host = %a.host, "a TLS-ALPN-01 answer cannot be served: {e}");
                    continue;
                }
            };
            for s in slots.iter_mut() {
                let usable = s.refused.is_none() && s.conflicted.is_none() && (s.unserved.is_none() || s.alpn_only);
                if usable
                    && s.listener.protocol == ListenerProtocol::Https
                    && answers_on(a, s.gateway, s.listener)
                    && hosts_on(s.listener, std::slice::from_ref(&a.host)).is_ok()
                {
                    s.acme.push((a.host.to_ascii_lowercase(), c.clone()));
                }
            }
            continue;
        }
        let m = HttpRouteMatch {
            path: Some(HttpPathMatch { type_: PathMatchType::Exact, value: a.path() }),
            headers: Vec::new(),
            query_params: Vec::new(),
            method: None,
        };
        let Ok(m) = Matcher::new(&m) else { continue };
        let m = Arc::new(m);
        let id = Arc::new(RouteId {
            namespace: a.namespace.clone(),
            name: format!("acme-http01-{}", a.token),
            created_ms: i64::MIN,
        });
        let mut action = RuleAction::new(format!("{}/acme-http01/{}", a.namespace, a.host), Expose::http(1));
        action.answer = Some(a.key_authorization.clone().into());
        let action = Arc::new(action);
        for p in &a.parent_refs {
            let Ok(selected) = listeners_for(p, "HTTPRoute", &a.namespace, slots) else { continue };
            for i in selected {
                let s = &mut slots[i];
                if s.listener.protocol != ListenerProtocol::Http {
                    continue;
                }
                let Ok(hosts) = hosts_on(s.listener, std::slice::from_ref(&a.host)) else { continue };
                for h in hosts {
                    s.entries.push(Entry::new(id.clone(), 0, 0, h, m.clone(), action.clone()));
                }
            }
        }
    }
}

/// Whether a TLS-ALPN-01 answer waits on listener `l` of `g`: it may be answered there, for a name the listener's
/// hostname covers.
fn alpn_awaited(g: &Gateway, l: &Listener, answers: &[capstan_model::acme::ChallengeAnswer]) -> bool {
    answers
        .iter()
        .filter(|a| a.tls_alpn.is_some())
        .any(|a| answers_on(a, g, l) && hosts_on(l, std::slice::from_ref(&a.host)).is_ok())
}

/// Whether answer `a` may be given on listener `l` of `g`: one of its parentRefs selects the listener, and the
/// listener takes routes of the answer's namespace (`allowedRoutes`, as for the HTTPRoute cert-manager would make).
fn answers_on(a: &capstan_model::acme::ChallengeAnswer, g: &Gateway, l: &Listener) -> bool {
    let gw_ns = g.metadata.namespace();
    let selected = a.parent_refs.iter().any(|p| {
        p.namespace.as_deref().unwrap_or(&a.namespace) == gw_ns
            && p.name == g.metadata.name
            && p.section_name.as_ref().is_none_or(|n| *n == l.name)
            && p.port.is_none_or(|x| x == l.port)
    });
    let from = l.allowed_routes.as_ref().and_then(|r| r.namespaces.as_ref()).map(|n| n.from).unwrap_or_default();
    selected && (from == FromNamespaces::All || (from == FromNamespaces::Same && gw_ns == a.namespace))
}

/// `wake` brought forward to `t`, if `t` is sooner.
fn bring_forward(wake: &mut Option<DateTime<Utc>>, t: Option<DateTime<Utc>>) {
    if let Some(t) = t {
        *wake = Some(wake.map_or(t, |w| w.min(t)));
    }
}

/// `Secret <namespace>/<name>` of an HTTPS listener's first certificateRef.
fn secret_name(g: &Gateway, l: &Listener) -> String {
    let r = l.tls.as_ref().and_then(|t| t.certificate_refs.first());
    let ns = r.and_then(|r| r.namespace.as_deref()).unwrap_or(g.metadata.namespace());
    format!("Secret {ns}/{}", r.map_or("", |r| r.name.as_str()))
}

/// An HTTPS listener's certificate from the Secret its first `certificateRefs` entry names, with what it says of
/// itself (rustls serving what x509-parser could not read), or why it cannot be served (its `InvalidCertificateRef` message, naming the Secret and the key):
/// unreadable, or a key that does not match.
#[allow(clippy::type_complexity)] // the certificate, and what it says of itself if that can be read
fn certificate(
    g: &Gateway,
    l: &Listener,
    secrets: &[Secret],
) -> Result<(CertifiedKey, Result<crate::certs::Facts, String>), String> {
    let Some(r) = l.tls.as_ref().and_then(|t| t.certificate_refs.first()) else {
        return Err("the listener names no certificate (tls.certificateRefs)".into());
    };
    let gw_ns = g.metadata.namespace();
    let ns = r.namespace.as_deref().unwrap_or(gw_ns);
    let (group, kind) = (r.group.as_deref().unwrap_or(""), r.kind.as_deref().unwrap_or("Secret"));
    if !group.is_empty() || kind != "Secret" {
        return Err(format!(
            "certificateRefs[0] names a {kind} in group `{group}`; only Secrets hold certificates here"
        ));
    }
    let Some(secret) = secrets.iter().find(|s| s.metadata.namespace() == ns && s.metadata.name == r.name) else {
        return Err(format!("Secret {ns}/{} does not exist", r.name));
    };
    let (Some(crt), Some(key)) = (secret.spec.value("tls.crt"), secret.spec.value("tls.key")) else {
        return Err(format!(
            "Secret {ns}/{} needs both tls.crt and tls.key, as text in stringData or base64 in data (it has: {})",
            r.name,
            secret.spec.keys().join(", ")
        ));
    };
    let named = |e: String| format!("Secret {ns}/{}: {e}", r.name);
    let certified = capstan_proxy::gateway::certified_key(&crt, &key).map_err(named)?;
    Ok((certified, crate::certs::facts(&crt)))
}

/// Why a listener may not use the Secret its first certificateRef names in another namespace: no ReferenceGrant there
/// lets Gateways of the listener's namespace use it.
fn foreign_secret_refused(g: &Gateway, l: &Listener, grants: Grants) -> Option<String> {
    let r = l.tls.as_ref().and_then(|t| t.certificate_refs.first())?;
    let gw_ns = g.metadata.namespace();
    let ns = r.namespace.as_deref().unwrap_or(gw_ns);
    let to = (r.group.as_deref().unwrap_or(""), r.kind.as_deref().unwrap_or("Secret"));
    (!grants.allow("Gateway", gw_ns, to, ns, &r.name)).then(|| {
        format!(
            "Secret {ns}/{} is in another namespace, and no ReferenceGrant in {ns} lets Gateways of namespace {gw_ns} use it",
            r.name
        )
    })
}

/// Whether the Secret an HTTPS listener names exists.
fn secret_exists(g: &Gateway, l: &Listener, secrets: &[Secret]) -> bool {
    let Some(r) = l.tls.as_ref().and_then(|t| t.certificate_refs.first()) else { return false };
    let ns = r.namespace.as_deref().unwrap_or(g.metadata.namespace());
    secrets.iter().any(|s| s.metadata.namespace() == ns && s.metadata.name == r.name)
}

/// A route that uses what the embedded runtime does not serve yet is not accepted anywhere, with the reason.
fn unsupported(r: &HttpRoute) -> Option<String> {
    for (i, rule) in r.spec.rules.iter().enumerate() {
        for f in rule.backend_refs.iter().flat_map(|b| b.filters.iter()) {
            if f.type_ == HttpFilterType::RequestMirror {
                return Some(format!(
                    "spec.rules[{i}]: a RequestMirror on one backendRef is not served on the embedded runtime yet (one on the rule is)"
                ));
            }
        }
        let filters = rule.filters.iter().chain(rule.backend_refs.iter().flat_map(|b| b.filters.iter()));
        for f in filters {
            let name = match f.type_ {
                HttpFilterType::ExtensionRef => "ExtensionRef",
                HttpFilterType::Cors => "CORS",
                _ => continue,
            };
            return Some(format!("spec.rules[{i}]: {name} is not served on the embedded runtime yet"));
        }
    }
    None
}

/// The listeners a parentRef selects that take a route of `kind` from `route_ns`: their indexes in `slots`, or the
/// reason and message of the `Accepted: False` condition when there is none (the first listener's refusal).
pub(crate) fn listeners_for(
    p: &ParentReference,
    kind: &str,
    route_ns: &str,
    slots: &[Slot],
) -> Result<Vec<usize>, (&'static str, String)> {
    let gw_ns = p.namespace.as_deref().unwrap_or(route_ns);
    let selected: Vec<usize> = slots
        .iter()
        .enumerate()
        .filter(|(_, s)| s.key.namespace == gw_ns && s.key.name == p.name)
        .filter(|(_, s)| p.section_name.as_ref().is_none_or(|n| *n == s.listener.name))
        .filter(|(_, s)| p.port.is_none_or(|port| port == s.listener.port))
        .map(|(i, _)| i)
        .collect();
    if selected.is_empty() {
        let what = match (&p.section_name, p.port) {
            (Some(n), _) => format!("Gateway {gw_ns}/{} has no listener `{n}`", p.name),
            (None, Some(port)) => format!("Gateway {gw_ns}/{} has no listener on port {port}", p.name),
            (None, None) => format!("Gateway {gw_ns}/{} does not exist", p.name),
        };
        return Err(("NoMatchingParent", what));
    }
    let mut refusal = None;
    let mut taken = Vec::new();
    for i in selected {
        let s = &slots[i];
        if let Some(c) = s.refused.as_ref().or(s.conflicted.as_ref()) {
            refusal.get_or_insert(("NotAllowedByListeners", format!("listener {}: {}", s.listener.name, c.message)));
            continue;
        }
        if let Some(why) = &s.unserved {
            refusal.get_or_insert(("NotAllowedByListeners", format!("listener {}: {why}", s.listener.name)));
            continue;
        }
        let from =
            s.listener.allowed_routes.as_ref().and_then(|a| a.namespaces.as_ref()).map(|n| n.from).unwrap_or_default();
        let allowed_ns = match from {
            FromNamespaces::All => true,
            FromNamespaces::Same => route_ns == s.key.namespace,
            FromNamespaces::Selector => false,
        };
        if !allowed_ns {
            let why = match from {
                FromNamespaces::Selector => "namespace selectors are not served on the embedded runtime (it has no Namespace objects); use `from: All` or `Same`".to_string(),
                _ => format!("listener {} takes routes of namespace {} only (allowedRoutes.namespaces.from: Same)", s.listener.name, s.key.namespace),
            };
            refusal.get_or_insert(("NotAllowedByListeners", why));
            continue;
        }
        if !takes(s.listener, kind) {
            refusal.get_or_insert((
                "NotAllowedByListeners",
                format!("listener {} ({}) does not take {kind}s", s.listener.name, s.listener.protocol.as_str()),
            ));
            continue;
        }
        taken.push(i);
    }
    match (taken.is_empty(), refusal) {
        (true, Some(r)) => Err(r),
        _ => Ok(taken),
    }
}

/// Attaches a route to the listeners one parentRef selects; returns its `Accepted` condition for that parent.
#[allow(clippy::too_many_arguments)]
fn attach(
    r: &HttpRoute,
    id: &Arc<RouteId>,
    p: &ParentReference,
    slots: &mut [Slot],
    rules: &[CompiledRule],
    gen: Option<i64>,
    now: DateTime<Utc>,
) -> Condition {
    let route_ns = r.metadata.namespace();
    let selected = match listeners_for(p, "HTTPRoute", route_ns, slots) {
        Ok(selected) => selected,
        Err((reason, why)) => return condition("Accepted", false, reason, why, gen, now),
    };
    let mut refusal = None;
    let mut attached = 0;
    for i in selected {
        let s = &mut slots[i];
        let hosts = match hosts_on(s.listener, &r.spec.hostnames) {
            Ok(hosts) => hosts,
            Err(why) => {
                refusal.get_or_insert(why);
                continue;
            }
        };
        s.attached.insert(ObjectKey::new("HTTPRoute", route_ns, &r.metadata.name));
        attached += 1;
        for host in &hosts {
            for (ri, rule) in rules.iter().enumerate() {
                for (mi, m) in rule.matchers.iter().enumerate() {
                    s.entries.push(Entry::new(id.clone(), ri, mi, host.clone(), m.clone(), rule.action.clone()));
                }
            }
        }
    }
    match (attached, refusal) {
        (0, Some((reason, why))) => condition("Accepted", false, reason, why, gen, now),
        _ => condition("Accepted", true, "Accepted", "", gen, now),
    }
}

/// Where a route's host names meet a listener's (a route without any takes the listener's), or the
/// `NoMatchingListenerHostname` refusal when they do not meet.
pub(crate) fn hosts_on(l: &Listener, names: &[String]) -> Result<Vec<HostPattern>, (&'static str, String)> {
    let listener_host = l.hostname.as_deref().map_or(HostPattern::Any, HostPattern::parse);
    if names.is_empty() {
        return Ok(vec![listener_host]);
    }
    let hosts: Vec<HostPattern> =
        names.iter().filter_map(|h| listener_host.intersect(&HostPattern::parse(h))).collect();
    if hosts.is_empty() {
        return Err((
            "NoMatchingListenerHostname",
            format!(
                "none of the route's host names falls under listener {}'s {}",
                l.name,
                l.hostname.as_deref().unwrap_or("*")
            ),
        ));
    }
    Ok(hosts)
}

/// One rule, compiled once whatever the number of listeners and host names it is served under.
struct CompiledRule {
    action: Arc<RuleAction>,
    matchers: Vec<Arc<Matcher>>,
}

/// Whether a listener can take routes of `kind`: its protocol's own, and TCPRoutes on a TLS listener that ends TLS
/// (the decrypted connections of every name it serves, to one route's backends), as Gateway API's implementations
/// allow it; a passthrough listener has no use for them.
fn can_take(l: &Listener, kind: &str) -> bool {
    l.protocol.route_kinds().contains(&kind)
        || (terminates_tls(l) && l.protocol == ListenerProtocol::Tls && kind == "TCPRoute")
}

/// Whether a listener takes routes of `kind`: without `allowedRoutes.kinds`, its protocol's own kind; with them,
/// those it names in Gateway API's group that its protocol can take.
fn takes(l: &Listener, kind: &str) -> bool {
    let kinds = l.allowed_routes.as_ref().map(|a| a.kinds.as_slice()).unwrap_or_default();
    if kinds.is_empty() {
        return l.protocol.route_kinds().contains(&kind);
    }
    can_take(l, kind) && kinds.iter().any(|k| k.kind == kind && k.group.as_deref().is_none_or(|g| g == GATEWAY_GROUP))
}

/// Whether a listener ends TLS with a certificate of its own: HTTPS, and TLS in `Terminate` mode.
fn terminates_tls(l: &Listener) -> bool {
    match l.protocol {
        ListenerProtocol::Https => true,
        ListenerProtocol::Tls => l.tls.as_ref().is_none_or(|t| t.mode == TlsMode::Terminate),
        _ => false,
    }
}

/// Each rule compiled, the route's `ResolvedRefs` condition, and a match that does not compile (a route stored
/// before its validation was tightened).
fn actions(
    r: &HttpRoute,
    app_ports: &BTreeMap<ObjectKey, BTreeMap<String, u16>>,
    grants: Grants,
    backend_tls: &crate::backend_tls::BackendTls,
    h2c_ports: &std::collections::BTreeSet<(ObjectKey, String)>,
    now: DateTime<Utc>,
) -> (Vec<CompiledRule>, Condition, Option<String>) {
    let ns = r.metadata.namespace();
    let gen = r.metadata.generation;
    let mut problems: Vec<(&str, String)> = Vec::new();
    let mut out = Vec::new();
    let mut bad_match = None;
    for (i, rule) in r.spec.rules.iter().enumerate() {
        let matchers: Vec<Arc<Matcher>> = if rule.matches.is_empty() {
            vec![Arc::new(Matcher::any())]
        } else {
            rule.matches
                .iter()
                .enumerate()
                .filter_map(|(m, x)| match Matcher::new(x) {
                    Ok(m) => Some(Arc::new(m)),
                    Err(e) => {
                        bad_match.get_or_insert(format!("spec.rules[{i}].matches[{m}]: {e}"));
                        None
                    }
                })
                .collect()
        };
        let rule_name = rule.name.clone().unwrap_or_else(|| i.to_string());
        let mut action = RuleAction::new(format!("{ns}/{}/{rule_name}", r.metadata.name), settings(rule));
        // Zero is no limit in Gateway API (the model checked that both parse): the whole request's is left out, and
        // an attempt's is the longest the balancer allows, as the settings' request timeout is for `request: 0s`.
        let limit = |t: Option<&String>| t.and_then(|t| capstan_model::gateway::parse_gateway_duration(t).ok());
        action.request_timeout =
            limit(rule.timeouts.as_ref().and_then(|t| t.request.as_ref())).filter(|d| !d.is_zero());
        action.backend_request_timeout = limit(rule.timeouts.as_ref().and_then(|t| t.backend_request.as_ref()))
            .map(|d| if d.is_zero() { std::time::Duration::from_secs(u64::from(u32::MAX)) } else { d });
        for f in &rule.filters {
            match f.type_ {
                HttpFilterType::RequestHeaderModifier => action.request_headers = f.request_header_modifier.clone(),
                HttpFilterType::ResponseHeaderModifier => action.response_headers = f.response_header_modifier.clone(),
                HttpFilterType::RequestRedirect => action.redirect = f.request_redirect.clone(),
                HttpFilterType::UrlRewrite => action.rewrite = f.url_rewrite.clone(),
                HttpFilterType::RequestMirror => {
                    let Some(m) = &f.request_mirror else { continue };
                    let (port, problem) = resolve(&m.backend_ref, "HTTPRoute", ns, app_ports, grants);
                    if let Some(p) = problem {
                        problems.push(p);
                    }
                    let app =
                        ObjectKey::new("App", m.backend_ref.namespace.as_deref().unwrap_or(ns), &m.backend_ref.name);
                    let (numerator, denominator) = m.share();
                    // A mirror gets what its backend's BackendTLSPolicy asks, as any backend; an unusable policy
                    // leaves the copy unsent, never sent in plain text.
                    let tls =
                        port.as_ref().ok().and_then(|p| backend_tls.for_backend(&app, p, &r.spec.parent_refs, ns));
                    let (port, tls) = match tls {
                        Some(Err(why)) => (Err(why), None),
                        Some(Ok(t)) => (port, Some(t)),
                        None => (port, None),
                    };
                    let mut backend = RouteBackend::new(app.clone(), port.clone(), 1);
                    backend.h2c = port.as_ref().is_ok_and(|p| h2c_ports.contains(&(app, p.clone())));
                    backend.tls = tls;
                    action.mirrors.push(capstan_proxy::mirror::Mirror::new(backend, numerator, denominator));
                }
                _ => {}
            }
        }
        for b in &rule.backend_refs {
            let (port, problem) = resolve(&b.backend, "HTTPRoute", ns, app_ports, grants);
            if let Some(p) = problem {
                problems.push(p);
            }
            let app = ObjectKey::new("App", b.backend.namespace.as_deref().unwrap_or(ns), &b.backend.name);
            // TLS to the backend when a BackendTLSPolicy asks for it; a policy that cannot be used leaves the
            // backend unreachable (its share answered 500), never spoken to in plain text.
            let tls = port.as_ref().ok().and_then(|p| backend_tls.for_backend(&app, p, &r.spec.parent_refs, ns));
            let (port, tls) = match tls {
                Some(Err(why)) => (Err(why), None),
                Some(Ok(t)) => (port, Some(t)),
                None => (port, None),
            };
            let h2c = port.as_ref().is_ok_and(|p| h2c_ports.contains(&(app.clone(), p.clone())));
            let mut rb = RouteBackend::new(app, port, b.weight);
            rb.tls = tls;
            rb.h2c = h2c;
            for f in &b.filters {
                match f.type_ {
                    HttpFilterType::RequestHeaderModifier => rb.request_headers = f.request_header_modifier.clone(),
                    HttpFilterType::ResponseHeaderModifier => rb.response_headers = f.response_header_modifier.clone(),
                    _ => {}
                }
            }
            action.backends.push(rb);
        }
        out.push(CompiledRule { action: Arc::new(action), matchers });
    }
    let resolved = match problems.first() {
        None => condition("ResolvedRefs", true, "ResolvedRefs", "", gen, now),
        Some((reason, _)) => condition(
            "ResolvedRefs",
            false,
            reason,
            problems.iter().map(|(_, m)| m.as_str()).collect::<Vec<_>>().join("; "),
            gen,
            now,
        ),
    };
    (out, resolved, bad_match)
}

/// The App port a backendRef names, or why it names none (its share of requests is then answered 500, or its
/// share of connections closed).
pub(crate) fn resolve(
    r: &BackendObjectReference,
    route_kind: &str,
    route_ns: &str,
    app_ports: &BTreeMap<ObjectKey, BTreeMap<String, u16>>,
    grants: Grants,
) -> (Result<String, String>, Option<(&'static str, String)>) {
    let fail = |reason: &'static str, msg: String| (Err(msg.clone()), Some((reason, msg)));
    let group = r.group.as_deref().unwrap_or("");
    let kind = r.kind.as_deref().unwrap_or("Service");
    if !matches!((group, kind), ("", "Service") | ("capstan.dev", "App")) {
        return fail("InvalidKind", format!("backend {}: kind {kind} in group `{group}` is not served", r.name));
    }
    let ns = r.namespace.as_deref().unwrap_or(route_ns);
    // An App is its Service: a grant to the Service covers a reference written to the App.
    let granted = |to: (&str, &str)| grants.allow(route_kind, route_ns, to, ns, &r.name);
    if !(granted((group, kind)) || (kind == "App" && granted(("", "Service")))) {
        return fail(
            "RefNotPermitted",
            format!("backend {ns}/{}: no ReferenceGrant in namespace {ns} lets {route_kind}s of namespace {route_ns} reference {kind} {}", r.name, r.name),
        );
    }
    let Some(ports) = app_ports.get(&ObjectKey::new("App", ns, &r.name)) else {
        return fail("BackendNotFound", format!("App {ns}/{} does not exist", r.name));
    };
    let wanted = r.port;
    match ports.iter().find(|(_, n)| Some(**n) == wanted).or_else(|| {
        if wanted.is_none() {
            ports.iter().next()
        } else {
            None
        }
    }) {
        Some((name, _)) => (Ok(name.clone()), None),
        None => {
            let have: Vec<String> = ports.iter().map(|(n, p)| format!("{n}={p}")).collect();
            fail(
                "BackendNotFound",
                format!(
                    "App {ns}/{} has no port {} (its Service ports: {})",
                    r.name,
                    wanted.map_or("at all".to_string(), |p| p.to_string()),
                    if have.is_empty() { "none".into() } else { have.join(", ") }
                ),
            )
        }
    }
}

/// A rule's proxy settings, as an entry point's: its request timeout and its session persistence as the sticky
/// cookie.
fn settings(rule: &HttpRouteRule) -> Expose {
    let mut e = Expose::http(1);
    if let Some(t) = rule.timeouts.as_ref().and_then(|t| t.request.as_deref()) {
        if let Ok(d) = capstan_model::gateway::parse_gateway_duration(t) {
            // Zero means no timeout in Gateway API: the longest the balancer allows.
            e.timeouts.request_seconds = if d.is_zero() { u32::MAX } else { secs(d) };
        }
    }
    if let Some(s) = &rule.session_persistence {
        let max_age = s
            .absolute_timeout
            .as_deref()
            .and_then(|t| capstan_model::gateway::parse_gateway_duration(t).ok())
            .map(secs);
        let permanent = s.cookie_config.as_ref().and_then(|c| c.lifetime_type.as_deref()) == Some("Permanent");
        e.sticky = Some(Sticky {
            cookie: Some(StickyCookie {
                name: s.session_name.clone().unwrap_or_else(|| "CAPSTAN_ROUTE".into()),
                max_age: if permanent { max_age } else { None },
            }),
            client_ip: None,
        });
    }
    e
}

fn secs(d: Duration) -> u32 {
    u32::try_from(d.as_secs() + u64::from(d.subsec_nanos() > 0)).unwrap_or(u32::MAX).max(1)
}

#[cfg(test)]
mod tests {
    //! Attachment, conflicts and status at chosen inputs, modelled on Gateway API's conformance cases
    //! (GatewayWithAttachedRoutes, HTTPRouteHostnameIntersection, HTTPRouteInvalidNonExistentBackendRef,
    //! HTTPRouteInvalidCrossNamespaceParentRef, GatewayInvalidRouteKind, the listener conflict cases).
    use super::*;
    use serde_json::json;

    fn objects(gateways: &[Gateway], routes: &[HttpRoute], apps: &[App], secrets: &[Secret]) -> Objects {
        Objects {
            gateways: gateways.to_vec(),
            http_routes: routes.to_vec(),
            apps: apps.to_vec(),
            secrets: secrets.to_vec(),
            ..Objects::default()
        }
    }

    fn gateway(name: &str, created: i64, listeners: serde_json::Value) -> Gateway {
        serde_json::from_value(json!({"apiVersion": "gateway.networking.k8s.io/v1", "kind": "Gateway",
            "metadata": {"name": name, "namespace": "default", "generation": 1,
                         "creationTimestamp": chrono::DateTime::from_timestamp(created, 0)},
            "spec": {"gatewayClassName": "capstan", "addresses": [{"value": "127.0.0.1"}], "listeners": listeners}}))
        .unwrap()
    }

    fn route(name: &str, ns: &str, spec: serde_json::Value) -> HttpRoute {
        serde_json::from_value(json!({"apiVersion": "gateway.networking.k8s.io/v1", "kind": "HTTPRoute",
            "metadata": {"name": name, "namespace": ns, "generation": 2}, "spec": spec}))
        .unwrap()
    }

    fn app(name: &str, ports: serde_json::Value) -> App {
        serde_json::from_value(json!({"apiVersion": "capstan.dev/v1alpha1", "kind": "App",
            "metadata": {"name": name, "namespace": "default"},
            "spec": {"run": {"command": ["x"]}, "ports": ports}}))
        .unwrap()
    }

    fn cond<'a>(c: &'a [Condition], t: &str) -> (&'a str, &'a str, &'a str) {
        let c = c.iter().find(|c| c.type_ == t).unwrap_or_else(|| panic!("no {t} in {c:?}"));
        (c.status.as_str(), c.reason.as_str(), c.message.as_str())
    }

    fn route_cond<'a>(out: &'a Compiled, name: &str, ns: &str, parent: usize, t: &str) -> (&'a str, &'a str, &'a str) {
        cond(&out.routes[&ObjectKey::new("HTTPRoute", ns, name)].parents[parent].conditions, t)
    }

    fn listener<'a>(out: &'a Compiled, gw: &str, i: usize) -> &'a ListenerStatus {
        &out.gateways[&ObjectKey::new("Gateway", "default", gw)].listeners[i]
    }

    #[test]
    fn routes_attach_by_section_port_namespace_and_hostname_and_say_why_not() {
        let gws = [gateway(
            "front",
            1,
            json!([{"name": "http", "port": 8080, "protocol": "HTTP"},
                   {"name": "shop", "port": 8081, "protocol": "HTTP", "hostname": "*.shop.example.com",
                    "allowedRoutes": {"namespaces": {"from": "All"}}}]),
        )];
        let apps = [app("web", json!([{"name": "http"}, {"name": "admin", "port": 9000}]))];
        let routes = [
            route(
                "plain",
                "default",
                json!({"parentRefs": [{"name": "front", "sectionName": "http"}],
                "rules": [{"backendRefs": [{"name": "web", "port": 8080}]}]}),
            ),
            route(
                "by-port",
                "default",
                json!({"parentRefs": [{"name": "front", "port": 8081}],
                "hostnames": ["a.shop.example.com", "other.org"], "rules": [{"backendRefs": [{"name": "web", "port": 9000}]}]}),
            ),
            route(
                "elsewhere",
                "team",
                json!({"parentRefs": [{"name": "front", "namespace": "default", "sectionName": "http"}]}),
            ),
            route(
                "wrong-host",
                "default",
                json!({"parentRefs": [{"name": "front", "sectionName": "shop"}],
                "hostnames": ["example.org"]}),
            ),
            route("no-listener", "default", json!({"parentRefs": [{"name": "front", "sectionName": "https"}]})),
            route("no-gateway", "default", json!({"parentRefs": [{"name": "back"}]})),
            route(
                "bad-port",
                "default",
                json!({"parentRefs": [{"name": "front", "sectionName": "http"}],
                "rules": [{"backendRefs": [{"name": "web", "port": 8081}, {"name": "gone", "port": 8080}]}]}),
            ),
        ];
        let out = compile(&objects(&gws, &routes, &apps, &[]), &Certificates::new(), Utc::now());
        assert_eq!(route_cond(&out, "plain", "default", 0, "Accepted").0, "True");
        assert_eq!(route_cond(&out, "plain", "default", 0, "ResolvedRefs").0, "True");
        assert_eq!(
            route_cond(&out, "by-port", "default", 0, "Accepted").0,
            "True",
            "one host name meets the listener's"
        );
        let (s, r, m) = route_cond(&out, "elsewhere", "team", 0, "Accepted");
        assert_eq!((s, r), ("False", "NotAllowedByListeners"), "{m}");
        assert!(m.contains("namespace default only"), "{m}");
        assert_eq!(route_cond(&out, "wrong-host", "default", 0, "Accepted").1, "NoMatchingListenerHostname");
        let (_, r, m) = route_cond(&out, "no-listener", "default", 0, "Accepted");
        assert_eq!(r, "NoMatchingParent");
        assert!(m.contains("has no listener `https`"), "{m}");
        assert!(route_cond(&out, "no-gateway", "default", 0, "Accepted")
            .2
            .contains("Gateway default/back does not exist"));
        let (s, r, m) = route_cond(&out, "bad-port", "default", 0, "ResolvedRefs");
        assert_eq!((s, r), ("False", "BackendNotFound"));
        assert!(m.contains("App default/web has no port 8081 (its Service ports: admin=9000, http=8080)"), "{m}");
        assert!(m.contains("App default/gone does not exist"), "{m}");
        assert_eq!(route_cond(&out, "bad-port", "default", 0, "Accepted").0, "True", "accepted, its refs unresolved");
        // Counts: http takes plain and bad-port; shop takes by-port.
        assert_eq!(listener(&out, "front", 0).attached_routes, 2);
        assert_eq!(listener(&out, "front", 1).attached_routes, 1);
        // Every condition carries the object's generation.
        assert!(out
            .routes
            .values()
            .flat_map(|r| &r.parents)
            .flat_map(|p| &p.conditions)
            .all(|c| c.observed_generation == Some(2)));
        // The plans: two sockets; the shop socket serves only the intersected host name.
        assert_eq!(out.listeners.len(), 2);
        let shop = out.listeners.iter().find(|l| l.port == 8081).unwrap();
        assert_eq!(shop.hosts.len(), 1);
        assert_eq!(shop.hosts[0].host, HostPattern::parse("*.shop.example.com"), "the listener's virtual host");
        let hosts: Vec<String> = shop.hosts[0].routes.entries().map(|e| format!("{:?}", e.host)).collect();
        assert_eq!(hosts, ["Exact(\"a.shop.example.com\")"]);
        let plain = out.listeners.iter().find(|l| l.port == 8080).unwrap();
        let ports: Vec<String> = plain.hosts[0]
            .routes
            .entries()
            .flat_map(|e| e.action.backends.iter().map(|b| format!("{}:{:?}", b.app.name, b.port)))
            .collect();
        assert!(ports.contains(&"web:Ok(\"http\")".to_string()), "{ports:?}");
        assert!(ports.iter().any(|p| p.starts_with("gone:Err")), "an unresolved backend keeps its share: {ports:?}");
    }

    #[test]
    fn listeners_that_clash_on_a_port_are_conflicted_and_the_older_gateway_keeps_it() {
        let gws = [
            gateway(
                "young",
                20,
                json!([{"name": "a", "port": 80, "protocol": "HTTP"},
                                         {"name": "b", "port": 80, "protocol": "HTTP", "hostname": "b.example.com"}]),
            ),
            gateway(
                "old",
                10,
                json!([{"name": "a", "port": 80, "protocol": "HTTP"},
                                       {"name": "tls", "port": 443, "protocol": "HTTPS",
                                        "tls": {"certificateRefs": [{"name": "c"}]}},
                                       {"name": "kinds", "port": 81, "protocol": "HTTP",
                                        "allowedRoutes": {"kinds": [{"kind": "TCPRoute"}]}}]),
            ),
        ];
        let out = compile(&objects(&gws, &[], &[], &[]), &Certificates::new(), Utc::now());
        assert_eq!(cond(&listener(&out, "old", 0).conditions, "Conflicted").0, "False");
        assert_eq!(cond(&listener(&out, "old", 0).conditions, "Programmed").0, "True");
        let (s, r, _) = cond(&listener(&out, "young", 0).conditions, "Conflicted");
        assert_eq!((s, r), ("True", "HostnameConflict"));
        assert_eq!(cond(&listener(&out, "young", 0).conditions, "Programmed").0, "False");
        assert_eq!(cond(&listener(&out, "young", 1).conditions, "Conflicted").0, "False", "another host name is fine");
        // An HTTPS listener whose Secret does not exist: accepted, not served, and its ResolvedRefs says why.
        let (s, r, m) = cond(&listener(&out, "old", 1).conditions, "ResolvedRefs");
        assert_eq!((s, r), ("False", "InvalidCertificateRef"), "{m}");
        assert!(m.contains("Secret default/c does not exist"), "{m}");
        assert_eq!(cond(&listener(&out, "old", 1).conditions, "Programmed").0, "False");
        assert_eq!(cond(&listener(&out, "old", 2).conditions, "ResolvedRefs").1, "InvalidRouteKinds");
        let young = &out.gateways[&ObjectKey::new("Gateway", "default", "young")];
        assert_eq!(cond(&young.conditions, "Accepted").1, "ListenersNotValid");
        assert_eq!(cond(&young.conditions, "Programmed").0, "True", "one of its listeners serves");
        assert_eq!(young.addresses[0].value, "127.0.0.1");
        // Sockets: port 80 (shared by old/a and young/b) and 81; none for the HTTPS listener.
        let mut ports: Vec<u16> = out.listeners.iter().map(|l| l.port).collect();
        ports.sort();
        assert_eq!(ports, [80, 81]);
        assert_eq!(out.binds[&("127.0.0.1".to_string(), 80)].len(), 2);
    }

    /// A namespace cannot take another's traffic by putting a Gateway with a more specific host name on its port.
    #[test]
    fn a_socket_belongs_to_the_namespace_of_its_oldest_gateway() {
        let mut theirs = gateway(
            "theirs",
            20,
            json!([{"name": "http", "port": 80, "protocol": "HTTP", "hostname": "shop.example.com"}]),
        );
        theirs.metadata.namespace = Some("tenant-b".into());
        let ours =
            gateway("ours", 10, json!([{"name": "http", "port": 80, "protocol": "HTTP", "hostname": "*.example.com"}]));
        let twice = route(
            "twice",
            "default",
            json!({"parentRefs": [{"name": "ours"}, {"name": "ours", "sectionName": "http"}]}),
        );
        let out = compile(&objects(&[theirs, ours], &[twice], &[], &[]), &Certificates::new(), Utc::now());
        let st = &out.gateways[&ObjectKey::new("Gateway", "tenant-b", "theirs")].listeners[0];
        let (s, r, m) = cond(&st.conditions, "Conflicted");
        assert_eq!((s, r), ("True", "PortOwnedByAnotherNamespace"), "{m}");
        assert_eq!(out.listeners.len(), 1);
        assert_eq!(out.listeners[0].hosts.len(), 1, "only the owner's listener is served on the socket");
        assert_eq!(listener(&out, "ours", 0).attached_routes, 1, "a route naming the listener twice counts once");
    }

    #[test]
    fn listeners_take_http_routes_only_from_gateway_api_s_group() {
        let gws = [gateway(
            "front",
            1,
            json!([
            {"name": "a", "port": 80, "protocol": "HTTP", "allowedRoutes": {"kinds": [{"group": "example.com", "kind": "HTTPRoute"}]}},
            {"name": "b", "port": 81, "protocol": "HTTP", "allowedRoutes": {"kinds": [{"kind": "HTTPRoute"}]}}]),
        )];
        let routes = [
            route("r", "default", json!({"parentRefs": [{"name": "front"}]})),
            route(
                "ext",
                "default",
                json!({"parentRefs": [{"name": "front"}], "rules": [{"filters": [
                          {"type": "ExtensionRef", "extensionRef": {"group": "x", "kind": "Y", "name": "z"}}]}]}),
            ),
        ];
        let out = compile(&objects(&gws, &routes, &[], &[]), &Certificates::new(), Utc::now());
        assert!(listener(&out, "front", 0).supported_kinds.is_empty());
        assert_eq!(listener(&out, "front", 0).attached_routes, 0);
        assert_eq!(listener(&out, "front", 1).attached_routes, 1);
        assert_eq!(route_cond(&out, "ext", "default", 0, "Accepted").1, "UnsupportedValue");
    }

    #[test]
    fn mirrors_are_compiled_per_rule_and_rule_settings_map_onto_the_balancer() {
        let gws = [gateway("front", 1, json!([{"name": "http", "port": 8080, "protocol": "HTTP"}]))];
        let apps = [app("web", json!([{"name": "http"}])), app("shadow", json!([{"name": "http"}]))];
        let routes = [
            route(
                "mirror",
                "default",
                json!({"parentRefs": [{"name": "front"}], "hostnames": ["m.example.com"], "rules": [{
                "filters": [{"type": "RequestMirror", "requestMirror": {"backendRef": {"name": "shadow", "port": 8080}, "fraction": {"numerator": 1, "denominator": 4}}},
                            {"type": "RequestMirror", "requestMirror": {"backendRef": {"name": "gone", "port": 8080}, "percent": 50}}],
                "backendRefs": [{"name": "web", "port": 8080}]}]}),
            ),
            route(
                "per-backend",
                "default",
                json!({"parentRefs": [{"name": "front"}], "hostnames": ["b.example.com"], "rules": [{
                "backendRefs": [{"name": "web", "port": 8080,
                    "filters": [{"type": "RequestMirror", "requestMirror": {"backendRef": {"name": "shadow", "port": 8080}}}]}]}]}),
            ),
            route(
                "sticky",
                "default",
                json!({"parentRefs": [{"name": "front"}], "hostnames": ["s.example.com"], "rules": [{
                "timeouts": {"request": "1500ms", "backendRequest": "400ms"},
                "sessionPersistence": {"sessionName": "S", "absoluteTimeout": "1h", "cookieConfig": {"lifetimeType": "Permanent"}},
                "backendRefs": [{"name": "web", "port": 8080}]}]}),
            ),
            route(
                "unbounded",
                "default",
                json!({"parentRefs": [{"name": "front"}], "hostnames": ["u.example.com"], "rules": [{
                "timeouts": {"request": "0s", "backendRequest": "0s"},
                "backendRefs": [{"name": "web", "port": 8080}]}]}),
            ),
        ];
        let out = compile(&objects(&gws, &routes, &apps, &[]), &Certificates::new(), Utc::now());
        // A mirror on the rule is served; one to an App that does not exist makes ResolvedRefs false.
        assert_eq!(route_cond(&out, "mirror", "default", 0, "Accepted").0, "True");
        let (s, r, m) = route_cond(&out, "mirror", "default", 0, "ResolvedRefs");
        assert_eq!((s, r), ("False", "BackendNotFound"), "{m}");
        let plan = &out.listeners[0];
        let action_of = |id: &str| {
            plan.hosts[0].routes.entries().map(|e| e.action.clone()).find(|a| a.id == id).expect("the route's rule")
        };
        let mirrored = action_of("default/mirror/0");
        let shares: Vec<(u32, u32)> = mirrored.mirrors.iter().map(|m| (m.numerator, m.denominator)).collect();
        assert_eq!(shares, [(1, 4), (50, 100)]);
        assert_eq!(mirrored.mirrors[0].backend.app.name, "shadow");
        assert!(mirrored.mirrors[1].backend.port.is_err());
        // A mirror on one backendRef is not served yet: the route is refused, with the reason.
        let (s, r, m) = route_cond(&out, "per-backend", "default", 0, "Accepted");
        assert_eq!((s, r), ("False", "UnsupportedValue"));
        assert!(m.contains("RequestMirror on one backendRef"), "{m}");
        let action = action_of("default/sticky/0");
        assert_eq!(action.settings.timeouts.request_seconds, 2, "rounded up to whole seconds");
        // The whole request's limit and each attempt's, as written.
        assert_eq!(action.request_timeout, Some(std::time::Duration::from_millis(1500)));
        assert_eq!(action.backend_request_timeout, Some(std::time::Duration::from_millis(400)));
        // Zero is no limit: none for the whole request, the longest the balancer allows for an attempt (without it,
        // an attempt would take the entry points' default of 60 s).
        let unbounded = action_of("default/unbounded/0");
        assert_eq!(unbounded.request_timeout, None);
        assert_eq!(unbounded.backend_request_timeout, Some(std::time::Duration::from_secs(u64::from(u32::MAX))));
        let cookie = action.settings.sticky.as_ref().and_then(|s| s.cookie.as_ref()).unwrap();
        assert_eq!((cookie.name.as_str(), cookie.max_age), ("S", Some(3600)));
    }

    fn tls_secret(name: &str, names: &[&str], from: u8, until: u8) -> Secret {
        let key = rcgen::KeyPair::generate().unwrap();
        let mut params =
            rcgen::CertificateParams::new(names.iter().map(|n| n.to_string()).collect::<Vec<_>>()).unwrap();
        params.not_before = rcgen::date_time_ymd(2026, 12, from);
        params.not_after = rcgen::date_time_ymd(2026, 12, until);
        let crt = params.self_signed(&key).unwrap().pem();
        serde_json::from_value(json!({"apiVersion": "capstan.dev/v1alpha1", "kind": "Secret",
            "metadata": {"name": name, "namespace": "default"},
            "spec": {"stringData": {"tls.crt": crt, "tls.key": key.serialize_pem()}}}))
        .unwrap()
    }

    #[test]
    fn certificates_out_of_their_validity_or_for_other_names_are_refused_in_status() {
        let https = |name: &str, host: &str, secret: &str| {
            json!({"name": name, "port": 443, "protocol": "HTTPS", "hostname": host,
                   "tls": {"certificateRefs": [{"name": secret}]}})
        };
        let gws = [gateway(
            "secure",
            10,
            json!([
                https("good", "a.example.com", "good"),
                https("expired", "b.example.com", "expired"),
                https("early", "c.example.com", "early"),
                https("other", "d.example.com", "other")
            ]),
        )];
        let secrets = [
            tls_secret("good", &["*.example.com"], 1, 20),
            tls_secret("expired", &["b.example.com"], 1, 5),
            tls_secret("early", &["c.example.com"], 10, 20),
            tls_secret("other", &["www.example.net"], 1, 20),
        ];
        let now = chrono::NaiveDate::from_ymd_opt(2026, 12, 7).unwrap().and_hms_opt(12, 0, 0).unwrap().and_utc();
        let out = compile(&objects(&gws, &[], &[], &secrets), &Certificates::new(), now);
        let refs = |i: usize| cond(&listener(&out, "secure", i).conditions, "ResolvedRefs");
        assert_eq!(refs(0).0, "True");
        let (s, r, m) = refs(1);
        assert_eq!((s, r), ("False", "InvalidCertificateRef"));
        let anyway = "; it is served anyway, and clients that check it will refuse it";
        assert_eq!(
            m,
            format!("Secret default/expired: the certificate in tls.crt expired at 2026-12-05T00:00:00Z{anyway}")
        );
        assert_eq!(
            refs(2).2,
            format!(
                "Secret default/early: the certificate in tls.crt is not valid before 2026-12-10T00:00:00Z{anyway}"
            )
        );
        assert_eq!(
            refs(3).2,
            format!("Secret default/other: the certificate in tls.crt names www.example.net, not the listener's hostname d.example.com{anyway}")
        );
        // With nothing better to serve, each is served (a restart must not take a site down for a warning).
        for i in 0..4 {
            assert_eq!(cond(&listener(&out, "secure", i).conditions, "Programmed").0, "True", "listener {i}");
        }
        assert_eq!(out.listeners[0].hosts.iter().filter(|h| h.cert.is_some()).count(), 4);
        // The status is looked at again when the early one becomes valid.
        let dec =
            |d: u32| chrono::NaiveDate::from_ymd_opt(2026, 12, d).unwrap().and_hms_opt(0, 0, 0).unwrap().and_utc();
        assert_eq!(out.wake, Some(dec(10)));
        // Once a good certificate is served, an expired one in its Secret leaves it serving, with the reason; and
        // the wake-up follows the certificate served.
        let renewed = [tls_secret("good", &["a.example.com"], 1, 5)];
        let later = compile(&objects(&gws[..1], &[], &[], &renewed), &out.certificates, now);
        let (s, _, m) = cond(&listener(&later, "secure", 0).conditions, "ResolvedRefs");
        assert_eq!(s, "False");
        assert!(
            m.ends_with(
                "expired at 2026-12-05T00:00:00Z; the previous certificate is still served (until Capstan restarts)"
            ),
            "{m}"
        );
        assert_eq!(cond(&listener(&later, "secure", 0).conditions, "Programmed").0, "True");
        assert_eq!(later.wake, Some(dec(20) + chrono::Duration::seconds(1)), "when the served one expires");
    }

    fn ca_config_map(name: &str, ns: &str) -> capstan_model::config_map::ConfigMap {
        let key = rcgen::KeyPair::generate().unwrap();
        let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
        params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        let pem = params.self_signed(&key).unwrap().pem();
        serde_json::from_value(json!({"apiVersion": "capstan.dev/v1alpha1", "kind": "ConfigMap",
            "metadata": {"name": name, "namespace": ns}, "spec": {"data": {"ca.crt": pem}}}))
        .unwrap()
    }

    /// Modelled on Gateway API's frontend validation cases: the CAs of a port by default or per port, the listener
    /// refused with the reason when its CA bundle is missing, not granted or not a CA, the insecure mode said out
    /// loud, and two Gateways on one port that ask differently.
    #[test]
    fn client_certificates_are_asked_per_port_and_refused_refs_unserve_the_listener() {
        let now = chrono::NaiveDate::from_ymd_opt(2026, 12, 7).unwrap().and_hms_opt(12, 0, 0).unwrap().and_utc();
        let https = |name: &str, port: u16| json!({"name": name, "port": port, "protocol": "HTTPS", "tls": {"certificateRefs": [{"name": "cert"}]}});
        let mut gw = gateway("secure", 1, json!([https("a", 8443), https("b", 9443), https("c", 7443)]));
        gw.spec.tls = serde_json::from_value(json!({"frontend": {
            "default": {"validation": {"caCertificateRefs": [{"kind": "ConfigMap", "group": "", "name": "clients"}]}},
            "perPort": [
                {"port": 9443, "tls": {"validation": {"mode": "AllowInsecureFallback",
                    "caCertificateRefs": [{"kind": "ConfigMap", "group": "", "name": "partners", "namespace": "partners"}]}}},
                {"port": 7443, "tls": {}}
            ]}}))
        .unwrap();
        let secrets = [tls_secret("cert", &["example.com"], 1, 20)];
        let mut objs = objects(std::slice::from_ref(&gw), &[], &[], &secrets);
        objs.config_maps = vec![ca_config_map("clients", "default"), ca_config_map("partners", "partners")];
        let out = compile(&objs, &Certificates::new(), now);
        let plan = |port: u16| out.listeners.iter().find(|p| p.port == port);
        let auth = plan(8443).and_then(|p| p.client_auth.clone()).expect("the default asks on 8443");
        assert!(!auth.fallback);
        assert!(plan(7443).is_some_and(|p| p.client_auth.is_none()), "a port whose own settings ask nothing");
        // Another namespace's CA bundle without a ReferenceGrant: that port is not served, and says why.
        assert!(plan(9443).is_none());
        let (s, r, m) = cond(&listener(&out, "secure", 1).conditions, "ResolvedRefs");
        assert_eq!((s, r), ("False", "RefNotPermitted"), "{m}");
        assert!(m.contains("ConfigMap partners/partners is in another namespace"), "{m}");
        assert_eq!(cond(&listener(&out, "secure", 1).conditions, "Programmed").0, "False");
        let gs = &out.gateways[&ObjectKey::new("Gateway", "default", "secure")];
        let (s, r, m) = cond(&gs.conditions, "InsecureFrontendValidationMode");
        assert_eq!((s, r), ("True", "ConfigurationChanged"));
        assert!(m.starts_with("port 9443 serves clients without a valid certificate too"), "{m}");

        // With the grant, 9443 asks for certificates without requiring one.
        objs.grants = vec![serde_json::from_value(
            json!({"apiVersion": "gateway.networking.k8s.io/v1", "kind": "ReferenceGrant",
            "metadata": {"name": "g", "namespace": "partners"},
            "spec": {"from": [{"group": "gateway.networking.k8s.io", "kind": "Gateway", "namespace": "default"}],
                     "to": [{"group": "", "kind": "ConfigMap"}]}}),
        )
        .unwrap()];
        let out = compile(&objs, &Certificates::new(), now);
        let auth = out.listeners.iter().find(|p| p.port == 9443).and_then(|p| p.client_auth.clone()).expect("served");
        assert!(auth.fallback);

        // A missing bundle, one without ca.crt, and one that holds no certificate.
        for (maps, why) in [
            (vec![], "ConfigMap default/clients does not exist"),
            (
                vec![serde_json::from_value(json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "clients", "namespace": "default"},
                    "spec": {"data": {"other": "x"}}})).unwrap()],
                "ConfigMap default/clients has no ca.crt",
            ),
            (
                vec![serde_json::from_value(json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "clients", "namespace": "default"},
                    "spec": {"data": {"ca.crt": "not pem"}}})).unwrap()],
                "ConfigMap default/clients: ca.crt holds no certificate",
            ),
        ] {
            objs.config_maps = maps;
            let out = compile(&objs, &Certificates::new(), now);
            let (s, r, m) = cond(&listener(&out, "secure", 0).conditions, "ResolvedRefs");
            assert_eq!((s, r), ("False", "InvalidCACertificateRef"), "{m}");
            assert!(m.starts_with(why), "{m}");
            assert!(!out.listeners.iter().any(|p| p.port == 8443), "never served without the check: {why}");
        }

        // The earlier per-listener field is taken for its port; a younger Gateway on that port asking for other
        // certificates is conflicted.
        objs.config_maps = vec![ca_config_map("clients", "default"), ca_config_map("other", "default")];
        let mut legacy = https("old", 6443);
        legacy["tls"]["frontendValidation"] = json!({"caCertificateRefs": [{"name": "clients"}]});
        let mut other = https("old", 6443);
        other["tls"]["frontendValidation"] = json!({"caCertificateRefs": [{"name": "other"}]});
        objs.gateways = vec![gateway("first", 1, json!([legacy])), gateway("second", 2, json!([other]))];
        let out = compile(&objs, &Certificates::new(), now);
        assert!(out.listeners.iter().find(|p| p.port == 6443).and_then(|p| p.client_auth.clone()).is_some());
        let (s, r, m) = cond(&listener(&out, "second", 0).conditions, "Conflicted");
        assert_eq!((s, r), ("True", "ProtocolConflict"));
        assert!(m.contains("asks clients for other certificates"), "{m}");
    }

    fn tls_policy(
        name: &str,
        created: i64,
        target: serde_json::Value,
        ca: &str,
    ) -> capstan_model::backend_tls_policy::BackendTlsPolicy {
        serde_json::from_value(json!({"apiVersion": "gateway.networking.k8s.io/v1", "kind": "BackendTLSPolicy",
            "metadata": {"name": name, "namespace": "default", "generation": 1,
                         "creationTimestamp": chrono::DateTime::from_timestamp(created, 0)},
            "spec": {"targetRefs": [target],
                     "validation": {"caCertificateRefs": [{"group": "", "kind": "ConfigMap", "name": ca}], "hostname": format!("{name}.example.test")}}}))
        .unwrap()
    }

    /// Modelled on Gateway API's BackendTLSPolicy cases: the policy naming the port wins over one naming the whole
    /// Service, the oldest of equals wins, the others are `Conflicted` on the Gateway whose routes reach the port,
    /// and one whose CA bundle is missing leaves its backend unreachable (never plain).
    #[test]
    fn backend_tls_policies_pick_by_port_then_age_and_say_why_not() {
        let now = chrono::Utc::now();
        let gws = [gateway("front", 1, json!([{"name": "http", "port": 8080, "protocol": "HTTP"}]))];
        let apps = [app("web", json!([{"name": "http"}, {"name": "admin", "port": 9000}]))];
        let routes = [route(
            "r",
            "default",
            json!({"parentRefs": [{"name": "front"}],
                   "rules": [{"backendRefs": [{"name": "web", "port": 8080}, {"name": "web", "port": 9000}]}]}),
        )];
        let mut objs = objects(&gws, &routes, &apps, &[]);
        objs.config_maps = vec![ca_config_map("ca", "default")];
        let whole = json!({"group": "", "kind": "Service", "name": "web"});
        let admin = json!({"group": "", "kind": "Service", "name": "web", "sectionName": "admin"});
        objs.backend_tls_policies = vec![
            tls_policy("whole", 1, whole.clone(), "ca"),
            tls_policy("younger", 5, whole, "ca"),
            tls_policy("admin-only", 9, admin, "missing"),
        ];
        let out = compile(&objs, &Certificates::new(), now);
        let backends = &out.listeners[0].hosts[0].routes.entries().next().unwrap().action.backends;
        let tls = backends[0].tls.as_ref().expect("port http: TLS");
        assert_eq!(
            format!("{tls:?}"),
            "TLS to backends as whole.example.test",
            "port http: the oldest whole-Service policy"
        );
        assert_eq!(
            backends[1].port.as_ref().unwrap_err(),
            "BackendTLSPolicy admin-only: ConfigMap default/missing does not exist",
            "port admin: the policy naming it, unusable: answered 500, not sent in plain text"
        );
        let status = |name: &str| &out.policies[&ObjectKey::new("BackendTLSPolicy", "default", name)];
        let whole = &status("whole").ancestors[0];
        assert_eq!(whole.ancestor_ref.name, "front");
        assert_eq!(cond(&whole.conditions, "Accepted").0, "True");
        let (s, r, m) = cond(&status("younger").ancestors[0].conditions, "Accepted");
        assert_eq!((s, r), ("False", "Conflicted"));
        assert!(m.contains("web:http (BackendTLSPolicy whole applies there)"), "{m}");
        let (s, r, _) = cond(&status("admin-only").ancestors[0].conditions, "ResolvedRefs");
        assert_eq!((s, r), ("False", "InvalidCACertificateRef"));
        assert_eq!(cond(&status("admin-only").ancestors[0].conditions, "Accepted").1, "NoValidCACertificate");
    }

    fn stream_route(kind: &str, name: &str, created: i64, spec: serde_json::Value) -> serde_json::Value {
        let api = if kind == "TLSRoute" { "v1" } else { "v1alpha2" };
        json!({"apiVersion": format!("gateway.networking.k8s.io/{api}"), "kind": kind,
               "metadata": {"name": name, "namespace": "default", "generation": 3,
                            "creationTimestamp": chrono::DateTime::from_timestamp(created, 0)},
               "spec": spec})
    }

    /// Modelled on Gateway API's TLSRoute and TCPRoute conformance cases (TLSRouteSimpleSameNamespace,
    /// TLSRouteInvalidReferenceGrant's missing backend, listener kinds): passthrough and terminated TLS listeners
    /// by SNI name, a TCP listener, and what each refused route is told.
    #[test]
    fn tls_and_tcp_routes_attach_by_name_the_oldest_keeps_a_name_and_other_kinds_are_refused() {
        let gws = [gateway(
            "edge",
            1,
            json!([
                {"name": "pass", "port": 8443, "protocol": "TLS", "tls": {"mode": "Passthrough"}},
                {"name": "end", "port": 9443, "protocol": "TLS", "hostname": "*.example.com",
                 "tls": {"certificateRefs": [{"name": "wild"}]}},
                {"name": "ssh", "port": 2222, "protocol": "TCP"},
                {"name": "web", "port": 8080, "protocol": "HTTP"},
                {"name": "mixed", "port": 9444, "protocol": "TLS", "tls": {"certificateRefs": [{"name": "wild"}]},
                 "allowedRoutes": {"kinds": [{"kind": "TCPRoute"}, {"kind": "HTTPRoute"}]}},
                {"name": "pass-kinds", "port": 9445, "protocol": "TLS", "tls": {"mode": "Passthrough"},
                 "allowedRoutes": {"kinds": [{"kind": "TCPRoute"}]}},
                {"name": "ssh2", "port": 2222, "protocol": "TCP", "hostname": "git.example.com"},
                {"name": "pass-cert", "port": 9446, "protocol": "TLS",
                 "tls": {"mode": "Passthrough", "certificateRefs": [{"name": "x", "namespace": "elsewhere"}]}}
            ]),
        )];
        let apps = [app("pg", json!([{"name": "pg", "port": 5432}])), app("git", json!([{"name": "ssh", "port": 22}]))];
        let tls = |name: &str, created: i64, parent: &str, hosts: serde_json::Value, backend: &str| {
            serde_json::from_value(stream_route(
                "TLSRoute",
                name,
                created,
                json!({
                "parentRefs": [{"name": "edge", "sectionName": parent}], "hostnames": hosts,
                "rules": [{"backendRefs": [{"name": backend, "port": 5432}]}]}),
            ))
            .unwrap()
        };
        let tcp = |name: &str, created: i64, parent: &str| {
            serde_json::from_value(stream_route(
                "TCPRoute",
                name,
                created,
                json!({
                "parentRefs": [{"name": "edge", "sectionName": parent}],
                "rules": [{"backendRefs": [{"name": "git", "port": 22}]}]}),
            ))
            .unwrap()
        };
        let mut objects = objects(&gws, &[], &apps, &[tls_secret("wild", &["*.example.com"], 1, 28)]);
        objects.http_routes =
            vec![route("to-ssh", "default", json!({"parentRefs": [{"name": "edge", "sectionName": "ssh"}]}))];
        (objects.tls_routes, objects.tcp_routes) = (
            vec![
                tls("db", 10, "pass", json!(["db.example.com"]), "pg"),
                tls("db-young", 20, "pass", json!(["db.example.com"]), "pg"),
                tls("cache", 10, "end", json!(["cache.example.com", "other.org"]), "pg"),
                tls("elsewhere", 10, "end", json!(["other.org"]), "pg"),
                tls("on-http", 10, "web", json!(["db.example.com"]), "pg"),
                tls("missing", 11, "pass", json!(["*.internal"]), "gone"),
                tls("db-wide", 30, "pass", json!(["db.example.com", "ro.example.com"]), "pg"),
            ],
            vec![tcp("git", 10, "ssh"), tcp("git-young", 20, "ssh"), tcp("any-tls", 10, "mixed")],
        );
        let now = chrono::NaiveDate::from_ymd_opt(2026, 12, 7).unwrap().and_hms_opt(12, 0, 0).unwrap().and_utc();
        let out = compile(&objects, &Certificates::new(), now);
        let st = |kind: &str, name: &str, t: &str| -> (String, String, String) {
            let c = cond(&out.routes[&ObjectKey::new(kind, "default", name)].parents[0].conditions, t);
            (c.0.to_string(), c.1.to_string(), c.2.to_string())
        };
        for (kind, name) in [("TLSRoute", "db"), ("TLSRoute", "cache"), ("TCPRoute", "git"), ("TCPRoute", "any-tls")] {
            assert_eq!(st(kind, name, "Accepted").0, "True", "{kind} {name}: {:?}", st(kind, name, "Accepted"));
            assert_eq!(st(kind, name, "ResolvedRefs").0, "True", "{kind} {name}");
        }
        let (s, r, m) = st("TLSRoute", "db-young", "Accepted");
        assert_eq!((s.as_str(), r.as_str()), ("False", "NotAllowedByListeners"));
        assert_eq!(m, "listener pass already sends db.example.com to TLSRoute default/db, which is older");
        let (_, _, m) = st("TCPRoute", "git-young", "Accepted");
        assert_eq!(m, "listener ssh already sends every name to TCPRoute default/git, which is older");
        assert_eq!(st("TLSRoute", "elsewhere", "Accepted").1, "NoMatchingListenerHostname");
        let (_, r, m) = st("TLSRoute", "on-http", "Accepted");
        assert_eq!((r.as_str(), m.as_str()), ("NotAllowedByListeners", "listener web (HTTP) does not take TLSRoutes"));
        let (_, r, m) = st("HTTPRoute", "to-ssh", "Accepted");
        assert_eq!((r.as_str(), m.as_str()), ("NotAllowedByListeners", "listener ssh (TCP) does not take HTTPRoutes"));
        let (s, r, m) = st("TLSRoute", "missing", "ResolvedRefs");
        assert_eq!(
            (s.as_str(), r.as_str(), m.as_str()),
            ("False", "BackendNotFound", "App default/gone does not exist")
        );
        assert_eq!(st("TLSRoute", "missing", "Accepted").0, "True", "accepted: its connections are closed");
        assert!(st_route(&out, "TLSRoute", "db").iter().all(|c| c.observed_generation == Some(3)), "its generation");

        // Listener status: the kinds each takes and the routes attached.
        let kinds = |i: usize| -> Vec<String> {
            listener(&out, "edge", i).supported_kinds.iter().map(|k| k.kind.clone()).collect()
        };
        assert_eq!(kinds(0), ["TLSRoute"]);
        assert_eq!(kinds(2), ["TCPRoute"]);
        assert_eq!(kinds(4), ["TCPRoute"], "HTTPRoute named but not takeable on TLS: left out");
        assert_eq!(cond(&listener(&out, "edge", 4).conditions, "ResolvedRefs").1, "InvalidRouteKinds");
        assert!(kinds(5).is_empty(), "no TCPRoute on a passthrough listener");
        assert_eq!(cond(&listener(&out, "edge", 5).conditions, "ResolvedRefs").1, "InvalidRouteKinds");
        let (s, r, m) = cond(&listener(&out, "edge", 6).conditions, "Conflicted");
        assert_eq!((s, r), ("True", "HostnameConflict"), "TCP listeners do not share a port, whatever their names");
        assert!(m.contains("TCP listeners do not share a port"), "{m}");
        assert_eq!(
            cond(&listener(&out, "edge", 7).conditions, "Programmed").0,
            "True",
            "a passthrough listener never uses its certificateRefs, so another namespace's Secret does not matter"
        );
        assert_eq!(listener(&out, "edge", 0).attached_routes, 3, "db, missing and db-wide (db-young holds no name)");
        let (s, r, m) = st("TLSRoute", "db-wide", "Accepted");
        assert_eq!((s.as_str(), r.as_str()), ("True", "Accepted"), "it holds ro.example.com");
        assert_eq!(m, "partly: listener pass already sends db.example.com to TLSRoute default/db, which is older");
        assert_eq!(listener(&out, "edge", 1).attached_routes, 1);
        assert_eq!(listener(&out, "edge", 2).attached_routes, 1);
        assert_eq!(cond(&listener(&out, "edge", 1).conditions, "Programmed").0, "True", "its certificate is good");

        // The sockets: modes, host names, passthrough or not, and the terminating listener's certificate.
        let socket = |port: u16| out.listeners.iter().find(|l| l.port == port).unwrap();
        assert_eq!(socket(8443).mode, SocketMode::Tls);
        // In any order (the proxy orders them by specificity when it installs them): sorted here.
        let names = |port: u16| -> Vec<(String, bool, bool)> {
            let mut v: Vec<_> =
                socket(port).hosts.iter().map(|h| (h.host.to_string(), h.passthrough, h.cert.is_some())).collect();
            v.sort();
            v
        };
        assert_eq!(
            names(8443),
            [
                ("*.internal".into(), true, false),
                ("db.example.com".into(), true, false),
                ("ro.example.com".into(), true, false)
            ]
        );
        assert_eq!(names(9443), [("cache.example.com".into(), false, true)]);
        assert_eq!(socket(2222).mode, SocketMode::Tcp);
        assert_eq!(names(2222), [("*".into(), false, false)]);
        let backends: Vec<String> = socket(2222).hosts[0]
            .stream
            .as_ref()
            .unwrap()
            .backends
            .iter()
            .map(|b| format!("{}:{:?}", b.app.name, b.port))
            .collect();
        assert_eq!(backends, ["git:Ok(\"ssh\")"]);
    }

    fn st_route(out: &Compiled, kind: &str, name: &str) -> Vec<Condition> {
        out.routes[&ObjectKey::new(kind, "default", name)].parents[0].conditions.clone()
    }

    fn grant(ns: &str, from: (&str, &str), to: (&str, Option<&str>)) -> ReferenceGrant {
        let mut to_ref = json!({"group": "", "kind": to.0});
        if let Some(n) = to.1 {
            to_ref["name"] = json!(n);
        }
        serde_json::from_value(json!({"apiVersion": "gateway.networking.k8s.io/v1beta1", "kind": "ReferenceGrant",
            "metadata": {"name": format!("{}-{}", from.0, to.0).to_lowercase(), "namespace": ns},
            "spec": {"from": [{"group": GATEWAY_GROUP, "kind": from.0, "namespace": from.1}], "to": [to_ref]}}))
        .unwrap()
    }

    /// Modelled on Gateway API's ReferenceGrant conformance cases (HTTPRouteReferenceGrant,
    /// HTTPRoutePartiallyInvalidViaInvalidReferenceGrant, GatewaySecretReferenceGrantSpecific/AllInNamespace,
    /// GatewaySecretMissingReferenceGrant, GatewaySecretInvalidReferenceGrant): another namespace's Service or
    /// Secret is used only with a grant there that names the referring kind, namespace and (if it names one) the
    /// object; a grant withdrawn takes the access with it.
    #[test]
    fn another_namespace_s_backends_and_secrets_need_a_reference_grant_there() {
        let gws = [gateway(
            "front",
            1,
            json!([{"name": "https", "port": 443, "protocol": "HTTPS",
                    "tls": {"certificateRefs": [{"name": "shared", "namespace": "certs"}]}},
                   {"name": "http", "port": 80, "protocol": "HTTP"}]),
        )];
        let mut api = app("api", json!([{"name": "http"}]));
        api.metadata.namespace = Some("team-b".into());
        let mut secret = tls_secret("shared", &["*.example.com"], 1, 28);
        secret.metadata.namespace = Some("certs".into());
        let routes = [route(
            "cross",
            "default",
            json!({"parentRefs": [{"name": "front", "sectionName": "http"}],
                   "rules": [{"backendRefs": [{"name": "api", "namespace": "team-b", "port": 8080}]}]}),
        )];
        let now = chrono::NaiveDate::from_ymd_opt(2026, 12, 7).unwrap().and_hms_opt(12, 0, 0).unwrap().and_utc();
        let with = |grants: Vec<ReferenceGrant>, served: &Certificates| {
            let mut o = objects(&gws, &routes, &[api.clone()], &[secret.clone()]);
            o.grants = grants;
            compile(&o, served, now)
        };
        let backend_port = |out: &Compiled| -> String {
            let plain = out.listeners.iter().find(|l| l.port == 80).unwrap();
            let e = plain.hosts[0].routes.entries().next().unwrap();
            format!("{:?}", e.action.backends[0].port)
        };

        // No grants: both refused, with the reason Gateway API names.
        let out = with(vec![], &Certificates::new());
        let (s, r, m) = route_cond(&out, "cross", "default", 0, "ResolvedRefs");
        assert_eq!((s, r), ("False", "RefNotPermitted"));
        assert_eq!(m, "backend team-b/api: no ReferenceGrant in namespace team-b lets HTTPRoutes of namespace default reference Service api");
        assert!(backend_port(&out).starts_with("Err"), "its share is answered 500");
        let (s, r, m) = cond(&listener(&out, "front", 0).conditions, "ResolvedRefs");
        assert_eq!((s, r), ("False", "RefNotPermitted"));
        assert!(m.contains("no ReferenceGrant in certs lets Gateways of namespace default use it"), "{m}");
        assert_eq!(cond(&listener(&out, "front", 0).conditions, "Programmed").0, "False");

        // Grants that do not fit: another name, another referring kind, another referring namespace.
        let wrong = vec![
            grant("team-b", ("HTTPRoute", "default"), ("Service", Some("other"))),
            grant("team-b", ("TCPRoute", "default"), ("Service", None)),
            grant("certs", ("Gateway", "elsewhere"), ("Secret", None)),
            grant("default", ("Gateway", "default"), ("Secret", None)),
        ];
        let out = with(wrong, &Certificates::new());
        assert_eq!(route_cond(&out, "cross", "default", 0, "ResolvedRefs").1, "RefNotPermitted");
        assert_eq!(cond(&listener(&out, "front", 0).conditions, "ResolvedRefs").1, "RefNotPermitted");

        // The right grants: by name for the Service, every Secret of the namespace for the Gateway.
        let right = vec![
            grant("team-b", ("HTTPRoute", "default"), ("Service", Some("api"))),
            grant("certs", ("Gateway", "default"), ("Secret", None)),
        ];
        let out = with(right, &Certificates::new());
        assert_eq!(route_cond(&out, "cross", "default", 0, "ResolvedRefs").0, "True");
        assert_eq!(backend_port(&out), "Ok(\"http\")");
        assert_eq!(
            out.listeners.iter().find(|l| l.port == 80).unwrap().hosts[0]
                .routes
                .entries()
                .next()
                .unwrap()
                .action
                .backends[0]
                .app,
            ObjectKey::new("App", "team-b", "api")
        );
        assert_eq!(cond(&listener(&out, "front", 0).conditions, "ResolvedRefs").0, "True");
        assert_eq!(cond(&listener(&out, "front", 0).conditions, "Programmed").0, "True");
        assert_eq!(out.certificates.len(), 1);

        // Withdrawn: the certificate served until now is not kept, as it would be for a broken Secret.
        let later = with(vec![], &out.certificates);
        assert_eq!(cond(&listener(&later, "front", 0).conditions, "Programmed").0, "False");
        assert!(later.certificates.is_empty());
        assert!(later.listeners.iter().all(|l| l.port != 443), "the HTTPS socket is no longer served");
    }

    #[test]
    fn acme_answers_are_served_on_the_http_listeners_named_ahead_of_routes() {
        use capstan_model::acme::ChallengeAnswer;
        let gws = [
            gateway(
                "web",
                1,
                json!([{"name": "http", "port": 8080, "protocol": "HTTP"},
                       {"name": "api", "port": 8081, "protocol": "HTTP", "hostname": "api.example.com"}]),
            ),
            gateway("other", 2, json!([{"name": "http", "port": 8090, "protocol": "HTTP"}])),
        ];
        let apps = [app("web", json!([{"name": "http"}]))];
        // A route of its own for every path of the host: the answer still comes first.
        let routes = [route(
            "catch-all",
            "default",
            json!({"parentRefs": [{"name": "web"}], "hostnames": ["shop.example.com"],
                   "rules": [{"backendRefs": [{"name": "web", "port": 8080}]}]}),
        )];
        let answer = |host: &str, token: &str, section: Option<&str>, ns: &str| ChallengeAnswer {
            namespace: ns.into(),
            parent_refs: vec![ParentReference {
                group: None,
                kind: None,
                namespace: Some("default".into()),
                name: "web".into(),
                section_name: section.map(str::to_string),
                port: None,
            }],
            host: host.into(),
            token: token.into(),
            key_authorization: format!("{token}.thumbprint"),
            tls_alpn: None,
        };
        let mut objects = objects(&gws, &routes, &apps, &[]);
        objects.answers = vec![
            answer("shop.example.com", "t1", Some("http"), "default"),
            // On a listener whose hostname does not cover it: not attached there.
            answer("shop.example.com", "t2", Some("api"), "default"),
            // From another namespace, which the listener (from: Same by default) does not take.
            answer("shop.example.com", "t3", Some("http"), "team"),
        ];
        let out = compile(&objects, &Certificates::new(), Utc::now());
        let at = |port: u16| out.listeners.iter().find(|l| l.port == port).expect("the socket");
        let headers = http::HeaderMap::new();
        let find = |port: u16, host: &str, path: &str| {
            let req = capstan_proxy::routes::Request { host, path, query: None, method: "GET", headers: &headers };
            at(port).hosts.iter().find(|h| h.host.matches(host)).and_then(|h| h.routes.find(&req)).map(|e| {
                (e.action.id.clone(), e.action.answer.as_ref().map(|b| String::from_utf8_lossy(b).to_string()))
            })
        };
        assert_eq!(
            find(8080, "shop.example.com", "/.well-known/acme-challenge/t1"),
            Some(("default/acme-http01/shop.example.com".into(), Some("t1.thumbprint".into())))
        );
        // Another path of the host, or another token, goes to the route as before.
        assert_eq!(find(8080, "shop.example.com", "/").map(|f| f.1), Some(None));
        assert_eq!(find(8080, "shop.example.com", "/.well-known/acme-challenge/t9").map(|f| f.1), Some(None));
        // Other hosts have no answer: only the name proven.
        assert_eq!(find(8080, "else.example.com", "/.well-known/acme-challenge/t1"), None);
        assert_eq!(find(8081, "api.example.com", "/.well-known/acme-challenge/t2"), None);
        assert_eq!(find(8080, "shop.example.com", "/.well-known/acme-challenge/t3").map(|f| f.1), Some(None));
        assert_eq!(find(8090, "shop.example.com", "/.well-known/acme-challenge/t1"), None, "another Gateway");
        // An answer is no attached route.
        assert_eq!(listener(&out, "web", 0).attached_routes, 1);
        assert_eq!(listener(&out, "web", 1).attached_routes, 0);
    }

    #[test]
    fn a_tls_alpn_answer_serves_its_listener_before_it_has_a_certificate() {
        use capstan_model::acme::ChallengeAnswer;
        let gws = [gateway(
            "web",
            1,
            json!([{"name": "https", "port": 8443, "protocol": "HTTPS", "hostname": "alpn.example.com",
                    "tls": {"certificateRefs": [{"name": "alpn-tls"}]}}]),
        )];
        let key = rcgen::KeyPair::generate().unwrap();
        let cert =
            rcgen::CertificateParams::new(vec!["alpn.example.com".to_string()]).unwrap().self_signed(&key).unwrap();
        let parent = ParentReference {
            group: None,
            kind: None,
            namespace: None,
            name: "web".into(),
            section_name: None,
            port: None,
        };
        let answer = ChallengeAnswer {
            namespace: "default".into(),
            parent_refs: vec![parent],
            host: "alpn.example.com".into(),
            token: "t".into(),
            key_authorization: "t.k".into(),
            tls_alpn: Some((cert.pem(), key.serialize_pem())),
        };
        // Without the answer the listener waits for its Secret, unserved.
        let out = compile(&objects(&gws, &[], &[], &[]), &Certificates::new(), Utc::now());
        assert!(out.listeners.is_empty());
        let mut with = objects(&gws, &[], &[], &[]);
        with.answers = vec![answer.clone()];
        let out = compile(&with, &Certificates::new(), Utc::now());
        assert_eq!(out.listeners.len(), 1, "served for the validation");
        let acme: Vec<&str> = out.listeners[0].acme.iter().map(|(h, _)| h.as_str()).collect();
        assert_eq!(acme, ["alpn.example.com"]);
        assert!(out.listeners[0].hosts.is_empty(), "its challenge handshakes only: no virtual host, no route");
        let st = listener(&out, "web", 0);
        assert_eq!(cond(&st.conditions, "Programmed").0, "False", "still waiting for its certificate");
        // Another namespace's answer does not open it.
        let mut foreign = objects(&gws, &[], &[], &[]);
        let parent = ParentReference { namespace: Some("default".into()), ..answer.parent_refs[0].clone() };
        foreign.answers =
            vec![ChallengeAnswer { namespace: "team".into(), parent_refs: vec![parent], ..answer.clone() }];
        assert!(compile(&foreign, &Certificates::new(), Utc::now()).listeners.is_empty());
        // A listener unserved for another reason (its Secret in another namespace, with no grant) is not opened.
        let elsewhere = [gateway(
            "web",
            1,
            json!([{"name": "https", "port": 8443, "protocol": "HTTPS", "hostname": "alpn.example.com",
                    "tls": {"certificateRefs": [{"name": "alpn-tls", "namespace": "other"}]}}]),
        )];
        let mut refused = objects(&elsewhere, &[], &[], &[]);
        refused.answers = vec![answer];
        assert!(compile(&refused, &Certificates::new(), Utc::now()).listeners.is_empty());
    }
}
