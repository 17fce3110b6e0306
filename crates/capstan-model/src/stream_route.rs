//! Gateway API's `TLSRoute` and `TCPRoute`: connections sent to Apps by the server name of their TLS handshake
//! (SNI) or by the port they arrive on, with their field names and status shapes.

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::gateway::{
    check_hostname, limit, validate_backend, validate_parent_refs, BackendObjectReference, ParentReference, RouteStatus,
};
use crate::resource::Object;
use crate::validate::FieldError;

/// The `apiVersion` TLSRoutes are written with: Gateway API's standard channel since v1.5.
pub const TLS_ROUTE_API_VERSION: &str = "gateway.networking.k8s.io/v1";
/// The `apiVersion` TCPRoutes are written with: Gateway API's experimental channel.
pub const TCP_ROUTE_API_VERSION: &str = "gateway.networking.k8s.io/v1alpha2";

/// A TLSRoute: TLS connections sent to Apps by their SNI name, on a `TLS` listener (passthrough or terminated).
pub type TlsRoute = Object<TlsRouteSpec, RouteStatus>;
/// A TCPRoute: every connection on a `TCP` listener (or a `TLS` one) sent to Apps.
pub type TcpRoute = Object<TcpRouteSpec, RouteStatus>;

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct TlsRouteSpec {
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub parent_refs: Vec<ParentReference>,
    /// The SNI names it serves: exact or `*.` wildcards (one at least, as Gateway API's v1 requires).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub hostnames: Vec<String>,
    /// Exactly one rule.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub rules: Vec<StreamRouteRule>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct TcpRouteSpec {
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub parent_refs: Vec<ParentReference>,
    /// Exactly one rule.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub rules: Vec<StreamRouteRule>,
}

/// Where a route's connections go: one to 16 backends, split by weight.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct StreamRouteRule {
    /// A name for status and metrics.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub backend_refs: Vec<BackendRef>,
}

/// A backend and its share of connections.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct BackendRef {
    #[serde(flatten)]
    pub backend: BackendObjectReference,
    /// Share of connections, relative to the rule's other backends. Defaults to 1; 0 sends none.
    #[serde(default = "one")]
    pub weight: u32,
}

fn one() -> u32 {
    1
}

pub fn validate_tls_route(spec: &TlsRouteSpec, errors: &mut Vec<FieldError>) {
    validate_parent_refs(&spec.parent_refs, errors);
    if spec.hostnames.is_empty() {
        errors.push(
            FieldError::new("spec.hostnames", "names no host: a TLSRoute is chosen by the handshake's server name")
                .hint("`hostnames: [db.example.com]`; for every connection on a port, use a TCPRoute"),
        );
    }
    limit(spec.hostnames.len(), 1024, "spec.hostnames", errors);
    for (i, h) in spec.hostnames.iter().enumerate() {
        if let Err(e) = check_hostname(h) {
            errors.push(FieldError::new(format!("spec.hostnames[{i}]"), e));
        }
    }
    validate_rules(&spec.rules, errors);
}

pub fn validate_tcp_route(spec: &TcpRouteSpec, errors: &mut Vec<FieldError>) {
    validate_parent_refs(&spec.parent_refs, errors);
    validate_rules(&spec.rules, errors);
}

/// Exactly one rule with one to 16 backends, as Gateway API's v1 routes of connections have.
fn validate_rules(rules: &[StreamRouteRule], errors: &mut Vec<FieldError>) {
    if rules.len() != 1 {
        errors.push(
            FieldError::new("spec.rules", format!("has {} rules; a route of connections has exactly one", rules.len()))
                .hint("`rules: [{backendRefs: [{name: my-app, port: 8080}]}]`; split by weight within it"),
        );
    }
    for (r, rule) in rules.iter().enumerate() {
        let at = format!("spec.rules[{r}].backendRefs");
        if rule.backend_refs.is_empty() {
            errors.push(
                FieldError::new(at.clone(), "names no backend").hint("`backendRefs: [{name: my-app, port: 8080}]`"),
            );
        }
        limit(rule.backend_refs.len(), 16, &at, errors);
        for (b, backend) in rule.backend_refs.iter().enumerate() {
            let bat = format!("{at}[{b}]");
            validate_backend(&backend.backend, &bat, errors);
            if backend.weight > 1_000_000 {
                errors.push(FieldError::new(format!("{bat}.weight"), "must be at most 1000000"));
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use crate::resource::Resource;

    use crate::resource::problems as errors;

    #[test]
    fn a_tls_route_is_taken_as_gateway_api_writes_it_in_v1_and_v1alpha2() {
        for api in ["gateway.networking.k8s.io/v1", "gateway.networking.k8s.io/v1alpha2"] {
            let route = json!({"apiVersion": api, "kind": "TLSRoute", "metadata": {"name": "db"},
                "spec": {"parentRefs": [{"name": "edge", "sectionName": "tls"}], "hostnames": ["db.example.com"],
                         "rules": [{"backendRefs": [{"name": "pg", "port": 5432, "weight": 3}]}]}});
            assert_eq!(errors(route.clone()), Vec::<String>::new(), "{api}");
            let r = Resource::from_value(route).unwrap();
            assert_eq!(r.to_value()["apiVersion"], api, "the apiVersion is kept as written");
        }
    }

    #[test]
    fn a_tcp_route_is_taken_in_v1alpha2_and_v1_and_refused_in_another_version() {
        for api in ["gateway.networking.k8s.io/v1alpha2", "gateway.networking.k8s.io/v1"] {
            let route = json!({"apiVersion": api, "kind": "TCPRoute", "metadata": {"name": "ssh"},
                "spec": {"parentRefs": [{"name": "edge"}], "rules": [{"backendRefs": [{"name": "git", "port": 22}]}]}});
            assert_eq!(errors(route), Vec::<String>::new(), "{api}");
        }
        let wrong = json!({"apiVersion": "gateway.networking.k8s.io/v1beta1", "kind": "TCPRoute", "metadata": {"name": "ssh"},
            "spec": {"parentRefs": [{"name": "edge"}], "rules": [{"backendRefs": [{"name": "git", "port": 22}]}]}});
        let e = Resource::from_value(wrong).unwrap_err();
        assert_eq!(e.path, "apiVersion");
        assert!(e.hint.as_deref().unwrap_or("").contains("v1alpha2"), "{:?}", e.hint);
    }

    #[test]
    fn bad_routes_of_connections_name_the_field() {
        let e = errors(
            json!({"apiVersion": "gateway.networking.k8s.io/v1", "kind": "TLSRoute", "metadata": {"name": "db"},
            "spec": {"parentRefs": [{"name": "edge"}], "hostnames": ["10.0.0.1", "*.*.example.com"],
                     "rules": [{"backendRefs": []}, {"backendRefs": [{"name": "pg", "weight": 2000000}]}]}}),
        );
        for want in [
            "spec.hostnames[0]: `10.0.0.1` is an IP address",
            "spec.hostnames[1]",
            "spec.rules: has 2 rules",
            "spec.rules[0].backendRefs: names no backend",
            "spec.rules[1].backendRefs[0].port: is required",
            "spec.rules[1].backendRefs[0].weight: must be at most 1000000",
        ] {
            assert!(e.iter().any(|x| x.starts_with(want)), "{want} in {e:?}");
        }
        let e = errors(
            json!({"apiVersion": "gateway.networking.k8s.io/v1", "kind": "TLSRoute", "metadata": {"name": "db"},
            "spec": {"rules": [{"backendRefs": [{"name": "pg", "port": 5432}]}]}}),
        );
        assert!(e.iter().any(|x| x.starts_with("spec.parentRefs")), "{e:?}");
        assert!(e.iter().any(|x| x.starts_with("spec.hostnames: names no host")), "{e:?}");
        let e = errors(
            json!({"apiVersion": "gateway.networking.k8s.io/v1alpha2", "kind": "TCPRoute", "metadata": {"name": "ssh"},
            "spec": {"parentRefs": [{"name": "edge"}], "rules": [{"backendRefs": [{"name": "git", "port": 22, "wieght": 1}]}]}}),
        );
        assert!(e.iter().any(|x| x.contains("wieght")), "an unknown field is named: {e:?}");
    }
}
