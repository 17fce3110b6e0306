//! An App's entry points on a cluster: HTTPRoutes and TCPRoutes on a Gateway (the default), or an Ingress and
//! LoadBalancer Services for clusters without Gateway API, and who the NetworkPolicy must let in for them.

use std::collections::BTreeMap;

use capstan_model::{App, Expose, ExposeProtocol, GatewayRef};
use k8s_openapi::api::core::v1::{Service, ServicePort, ServiceSpec};
use k8s_openapi::api::networking::v1::{
    HTTPIngressPath, HTTPIngressRuleValue, Ingress, IngressBackend, IngressRule, IngressServiceBackend, IngressSpec,
    ServiceBackendPort,
};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use serde_json::{json, Value};

use super::common::to_value;
use super::{RenderOptions, INGRESS_NAMESPACE};

/// Where one entry point reaches the cluster's clients from.
#[derive(Debug, Clone, PartialEq)]
pub(super) enum Front {
    /// A route on a Gateway: its parentRef, the host names, and the namespace whose pods (the Gateway's proxies)
    /// connect.
    Route { parent: Value, hostnames: Vec<String>, namespace: String },
    /// An Ingress of this class, for these hosts (every host when empty).
    Ingress { class: String, hosts: Vec<String> },
    /// A LoadBalancer Service: clients from anywhere.
    LoadBalancer,
}

/// Where entry `e` of `app` attaches: the Gateway it names; else the cluster's default Gateway; else (when the
/// options ask for Ingresses) an Ingress for http and a LoadBalancer for tcp. A tcp entry without a listener name
/// attaches by its port, so that it takes only the listener on that port.
pub(super) fn front(app: &App, e: &Expose, opts: &RenderOptions) -> Front {
    let written = e.gateway.clone().unwrap_or_default();
    let (name, namespace, explicit_ns): (String, String, bool) =
        match (&written.name, opts.entry_points.default_gateway()) {
            (Some(n), _) => {
                let ns = written.namespace.clone().unwrap_or_else(|| app.metadata.namespace().to_string());
                (n.clone(), ns, written.namespace.is_some())
            }
            (None, Some(d)) => {
                let same = d.namespace == app.metadata.namespace();
                let proxies = d.proxy_namespace.clone();
                let (name, namespace) = (d.name, d.namespace);
                let mut parent = json!({ "group": "gateway.networking.k8s.io", "kind": "Gateway", "name": name });
                if !same {
                    parent["namespace"] = Value::String(namespace.clone());
                }
                return with_section(parent, &written, e, proxies.unwrap_or(namespace));
            }
            (None, None) => {
                return match e.protocol {
                    ExposeProtocol::Http => Front::Ingress {
                        class: opts.entry_points.ingress_class_name.clone().unwrap_or_else(|| "nginx".into()),
                        hosts: written.hostnames,
                    },
                    ExposeProtocol::Tcp => Front::LoadBalancer,
                };
            }
        };
    let mut parent = json!({ "group": "gateway.networking.k8s.io", "kind": "Gateway", "name": name });
    if explicit_ns {
        parent["namespace"] = Value::String(namespace.clone());
    }
    with_section(parent, &written, e, namespace)
}

/// The route's parentRef with the listener the entry names, or (a tcp entry) the port it listens on; `proxies` is
/// the namespace whose pods bring the Gateway's traffic.
fn with_section(mut parent: Value, written: &GatewayRef, e: &Expose, proxies: String) -> Front {
    match &written.section_name {
        Some(s) => parent["sectionName"] = Value::String(s.clone()),
        None if e.protocol == ExposeProtocol::Tcp => parent["port"] = json!(e.port),
        None => {}
    }
    Front::Route { parent, hostnames: written.hostnames.clone(), namespace: proxies }
}

/// The objects for an App's entry points: the first http entry's route or Ingress, and a route or LoadBalancer
/// Service per tcp entry. `service_port` is the App's Service port of an entry's target, with its port name.
pub(super) fn entry_points(
    app: &App,
    opts: &RenderOptions,
    meta: &impl Fn(&str, Option<&str>) -> ObjectMeta,
    service_port: &impl Fn(usize, &Expose) -> Result<(String, u16), super::RenderError>,
) -> Result<Vec<Value>, super::RenderError> {
    let name = app.metadata.name.as_str();
    let mut out = Vec::new();
    if let Some((i, e)) = app.spec.expose.iter().enumerate().find(|(_, e)| e.protocol == ExposeProtocol::Http) {
        let (port_name, port) = service_port(i, e)?;
        match front(app, e, opts) {
            Front::Route { parent, hostnames, .. } => out.push(http_route(name, e, parent, &hostnames, port, meta)),
            Front::Ingress { class, hosts } => out.push(ingress(name, e, &class, &hosts, port_name, meta)),
            Front::LoadBalancer => {}
        }
    }
    for (i, e) in app.spec.expose.iter().enumerate().filter(|(_, e)| e.protocol == ExposeProtocol::Tcp) {
        let (port_name, port) = service_port(i, e)?;
        let object = format!("{name}-{}", e.name.clone().unwrap_or_else(|| format!("tcp-{}", e.port)));
        match front(app, e, opts) {
            Front::Route { parent, .. } => out.push(tcp_route(name, &object, parent, port, meta)),
            Front::LoadBalancer | Front::Ingress { .. } => out.push(to_value(&Service {
                metadata: meta(&object, Some("entrypoint")),
                spec: Some(ServiceSpec {
                    type_: Some("LoadBalancer".into()),
                    selector: Some(super::app::selector(app)),
                    ports: Some(vec![ServicePort {
                        name: Some(port_name.clone()),
                        port: i32::from(e.port),
                        target_port: Some(IntOrString::String(port_name)),
                        protocol: Some("TCP".into()),
                        ..Default::default()
                    }]),
                    session_affinity: e.sticky.as_ref().and_then(|s| s.client_ip.as_ref()).map(|_| "ClientIP".into()),
                    ..Default::default()
                }),
                ..Default::default()
            })),
        }
    }
    Ok(out)
}

/// The namespaces whose pods bring clients in: a Gateway's (where most implementations run its proxies) or the
/// ingress controller's.
pub(super) fn client_namespaces(app: &App, opts: &RenderOptions) -> Vec<String> {
    let mut out: Vec<String> = app
        .spec
        .expose
        .iter()
        .filter_map(|e| match front(app, e, opts) {
            Front::Route { namespace, .. } => Some(namespace),
            Front::Ingress { .. } => Some(INGRESS_NAMESPACE.to_string()),
            Front::LoadBalancer => None,
        })
        .collect();
    out.sort();
    out.dedup();
    out
}

/// A Gateway API HTTPRoute (gateway.networking.k8s.io/v1) for an http entry point: the App's Service as the
/// backend, the request timeout, and cookie session persistence when the entry is sticky by cookie
/// (`sessionPersistence`, Gateway API's experimental channel). There is no k8s-openapi type for it.
fn http_route(
    name: &str,
    e: &Expose,
    parent: Value,
    hostnames: &[String],
    service_port: u16,
    meta: &impl Fn(&str, Option<&str>) -> ObjectMeta,
) -> Value {
    let mut rule = json!({
        "matches": [{ "path": { "type": "PathPrefix", "value": "/" } }],
        "backendRefs": [{ "name": name, "port": service_port }],
        "timeouts": { "request": format!("{}s", e.timeouts.request_seconds) },
    });
    if let Some(c) = e.sticky.as_ref().and_then(|s| s.cookie.as_ref()) {
        let mut p = json!({ "sessionName": c.name, "type": "Cookie" });
        if let Some(age) = c.max_age {
            p["absoluteTimeout"] = Value::String(format!("{age}s"));
            p["cookieConfig"] = json!({ "lifetimeType": "Permanent" });
        }
        rule["sessionPersistence"] = p;
    }
    let mut spec = json!({ "parentRefs": [parent], "rules": [rule] });
    if !hostnames.is_empty() {
        spec["hostnames"] = json!(hostnames);
    }
    let meta = serde_json::to_value(meta(name, None)).unwrap_or(Value::Null);
    json!({ "apiVersion": "gateway.networking.k8s.io/v1", "kind": "HTTPRoute", "metadata": meta, "spec": spec })
}

/// A Gateway API TCPRoute (`gateway.networking.k8s.io/v1alpha2`, as clusters serve it) for a tcp entry point:
/// every connection on the listener to the App's Service port.
fn tcp_route(
    app: &str,
    route: &str,
    parent: Value,
    service_port: u16,
    meta: &impl Fn(&str, Option<&str>) -> ObjectMeta,
) -> Value {
    let spec = json!({
        "parentRefs": [parent],
        "rules": [{ "backendRefs": [{ "name": app, "port": service_port }] }],
    });
    let meta = serde_json::to_value(meta(route, None)).unwrap_or(Value::Null);
    json!({ "apiVersion": "gateway.networking.k8s.io/v1alpha2", "kind": "TCPRoute", "metadata": meta, "spec": spec })
}

/// An Ingress for clusters without Gateway API, with ingress-nginx's annotations for what the entry sets: cookie
/// affinity, body size, and timeouts (the idle timeout for websockets).
fn ingress(
    name: &str,
    e: &Expose,
    class: &str,
    hosts: &[String],
    port_name: String,
    meta: &impl Fn(&str, Option<&str>) -> ObjectMeta,
) -> Value {
    let read = if e.websockets && e.timeouts.idle_seconds > 0 {
        e.timeouts.idle_seconds.to_string()
    } else {
        e.timeouts.request_seconds.to_string()
    };
    let mut a = BTreeMap::from([
        (
            "nginx.ingress.kubernetes.io/proxy-body-size".to_string(),
            e.max_body_size.trim_end_matches('i').to_lowercase(),
        ),
        ("nginx.ingress.kubernetes.io/proxy-connect-timeout".to_string(), e.timeouts.connect_seconds.to_string()),
        ("nginx.ingress.kubernetes.io/proxy-read-timeout".to_string(), read.clone()),
        ("nginx.ingress.kubernetes.io/proxy-send-timeout".to_string(), read),
    ]);
    if let Some(c) = e.sticky.as_ref().and_then(|s| s.cookie.as_ref()) {
        a.insert("nginx.ingress.kubernetes.io/affinity".into(), "cookie".into());
        a.insert("nginx.ingress.kubernetes.io/affinity-mode".into(), "persistent".into());
        a.insert("nginx.ingress.kubernetes.io/session-cookie-name".into(), c.name.clone());
        if let Some(age) = c.max_age {
            a.insert("nginx.ingress.kubernetes.io/session-cookie-max-age".into(), age.to_string());
        }
    }
    let mut m = meta(name, None);
    m.annotations = Some(a);
    let http = HTTPIngressRuleValue {
        paths: vec![HTTPIngressPath {
            path: Some("/".into()),
            path_type: "Prefix".into(),
            backend: IngressBackend {
                service: Some(IngressServiceBackend {
                    name: name.into(),
                    port: Some(ServiceBackendPort { name: Some(port_name), number: None }),
                }),
                resource: None,
            },
        }],
    };
    let rules = match hosts.is_empty() {
        true => vec![IngressRule { host: None, http: Some(http) }],
        false => hosts.iter().map(|h| IngressRule { host: Some(h.clone()), http: Some(http.clone()) }).collect(),
    };
    to_value(&Ingress {
        metadata: m,
        spec: Some(IngressSpec { ingress_class_name: Some(class.into()), rules: Some(rules), ..Default::default() }),
        ..Default::default()
    })
}
