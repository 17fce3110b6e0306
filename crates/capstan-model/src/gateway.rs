//! Gateway API's `Gateway` and `HTTPRoute` (`gateway.networking.k8s.io/v1`), with its field names, defaults and
//! status shapes, so one file serves on this machine and on a cluster.

use std::collections::BTreeMap;

use chrono::{DateTime, Utc};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::resource::Object;
use crate::validate::FieldError;

/// The API group and version of Gateway API's objects.
pub const GATEWAY_API_VERSION: &str = "gateway.networking.k8s.io/v1";
/// The group parent and backend references name.
pub const GATEWAY_GROUP: &str = "gateway.networking.k8s.io";
/// The controller name Capstan writes in route status.
pub const CONTROLLER_NAME: &str = "capstan.dev/gateway-controller";

/// A Gateway: listeners on ports, where routes attach.
pub type Gateway = Object<GatewaySpec, GatewayStatus>;
/// An HTTPRoute: HTTP requests matched by host, path, headers, query and method, sent to Apps.
pub type HttpRoute = Object<HttpRouteSpec, RouteStatus>;

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct GatewaySpec {
    /// The GatewayClass. On the embedded runtime every class is served by Capstan itself, so the same file works
    /// with the class a cluster has (`eg`, `cilium`, …).
    pub gateway_class_name: String,
    /// One to 64 listeners, each with a unique name.
    pub listeners: Vec<Listener>,
    /// Addresses requested for the Gateway. On the embedded runtime, an `IPAddress` is the address listeners bind
    /// (default 0.0.0.0); other types are for a cluster.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub addresses: Vec<GatewayAddress>,
    /// Cluster infrastructure labels and annotations: passed through on Kubernetes, unused here.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub infrastructure: Option<serde_json::Value>,
    /// TLS settings of the whole Gateway: client certificates asked of clients, per port (`frontend`), and the
    /// certificate shown to backends that ask for one (`backend`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tls: Option<GatewayTlsConfig>,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct GatewayTlsConfig {
    /// Client certificate validation on the ports that end TLS.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub frontend: Option<FrontendTlsConfig>,
    /// The Gateway as a TLS client of its backends.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub backend: Option<GatewayBackendTls>,
}

/// Client certificates are asked per port, not per listener: an HTTP/2 connection may carry requests for every
/// host name its certificate covers, so a port is the unit that cannot be bypassed.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct FrontendTlsConfig {
    /// Every port that ends TLS, unless `perPort` names it.
    #[serde(default)]
    pub default: TlsConfig,
    /// Ports with their own settings (each port once).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub per_port: Vec<TlsPortConfig>,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct TlsConfig {
    /// Ask clients for a certificate and check it against these CAs.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub validation: Option<FrontendValidation>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct TlsPortConfig {
    pub port: u16,
    pub tls: TlsConfig,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct GatewayBackendTls {
    /// A Secret with `tls.crt` and `tls.key`: the certificate the Gateway shows backends that ask for one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub client_certificate_ref: Option<SecretObjectReference>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct GatewayAddress {
    /// `IPAddress` (the default) or `Hostname`.
    #[serde(default, rename = "type", skip_serializing_if = "Option::is_none")]
    pub type_: Option<String>,
    pub value: String,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Listener {
    /// Unique within the Gateway; routes name it as `sectionName`.
    pub name: String,
    /// Only requests (or SNI names) for this host: exact (`shop.example.com`) or a wildcard (`*.example.com`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hostname: Option<String>,
    pub port: u16,
    pub protocol: ListenerProtocol,
    /// Required for HTTPS and TLS.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tls: Option<ListenerTls>,
    /// Which routes may attach. Defaults to routes of the Gateway's namespace of the protocol's kinds.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub allowed_routes: Option<AllowedRoutes>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize, JsonSchema)]
pub enum ListenerProtocol {
    #[serde(rename = "HTTP")]
    Http,
    #[serde(rename = "HTTPS")]
    Https,
    #[serde(rename = "TLS")]
    Tls,
    #[serde(rename = "TCP")]
    Tcp,
    #[serde(rename = "UDP")]
    Udp,
}

impl ListenerProtocol {
    pub fn as_str(self) -> &'static str {
        match self {
            ListenerProtocol::Http => "HTTP",
            ListenerProtocol::Https => "HTTPS",
            ListenerProtocol::Tls => "TLS",
            ListenerProtocol::Tcp => "TCP",
            ListenerProtocol::Udp => "UDP",
        }
    }

    /// The route kinds a listener of this protocol accepts by default.
    pub fn route_kinds(self) -> &'static [&'static str] {
        match self {
            ListenerProtocol::Http | ListenerProtocol::Https => &["HTTPRoute"],
            ListenerProtocol::Tls => &["TLSRoute"],
            ListenerProtocol::Tcp => &["TCPRoute"],
            ListenerProtocol::Udp => &["UDPRoute"],
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ListenerTls {
    /// `Terminate` (the default) or `Passthrough` (TLS listeners only).
    #[serde(default)]
    pub mode: TlsMode,
    /// Secrets holding `tls.crt` and `tls.key`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub certificate_refs: Vec<SecretObjectReference>,
    /// Client certificates, as Gateway API v1.2–v1.3 wrote them per listener: taken for the listener's port when the
    /// Gateway's `tls.frontend` says nothing (it replaced this field).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub frontend_validation: Option<FrontendValidation>,
    /// Implementation-specific options.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub options: BTreeMap<String, String>,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub enum TlsMode {
    #[default]
    Terminate,
    Passthrough,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct FrontendValidation {
    /// One to 8 CA bundles: ConfigMaps (the default kind) or Secrets, each with its PEM certificates under `ca.crt`.
    #[serde(default)]
    pub ca_certificate_refs: Vec<SecretObjectReference>,
    /// `AllowValidOnly` (the default): a connection without a certificate those CAs signed is refused in its
    /// handshake. `AllowInsecureFallback`: one is asked for, and the connection is served with none or a bad one.
    #[serde(default, skip_serializing_if = "FrontendValidationMode::is_default")]
    pub mode: FrontendValidationMode,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub enum FrontendValidationMode {
    #[default]
    AllowValidOnly,
    AllowInsecureFallback,
}

impl FrontendValidationMode {
    pub fn is_default(&self) -> bool {
        *self == FrontendValidationMode::AllowValidOnly
    }
}

impl GatewaySpec {
    /// The client certificate validation of `port`: its `perPort` entry, else the default; a listener's own
    /// `tls.frontendValidation` (Gateway API's earlier, per-listener field) where those ask for none.
    pub fn frontend_validation(&self, port: u16) -> Option<&FrontendValidation> {
        let frontend = self.tls.as_ref().and_then(|t| t.frontend.as_ref());
        let own = frontend.map(|f| match f.per_port.iter().find(|p| p.port == port) {
            Some(p) => p.tls.validation.as_ref(),
            None => f.default.validation.as_ref(),
        });
        match own.flatten() {
            Some(v) => Some(v),
            None => self
                .listeners
                .iter()
                .filter(|l| l.port == port)
                .find_map(|l| l.tls.as_ref().and_then(|t| t.frontend_validation.as_ref())),
        }
    }
}

/// Checks a validation's CA references: one to 8, of a kind that holds `ca.crt`.
fn validate_frontend_validation(v: &FrontendValidation, at: &str, errors: &mut Vec<FieldError>) {
    if v.ca_certificate_refs.is_empty() || v.ca_certificate_refs.len() > 8 {
        errors.push(
            FieldError::new(format!("{at}.caCertificateRefs"), "needs one to 8 references")
                .hint("`caCertificateRefs: [{kind: ConfigMap, name: client-ca}]`, its CAs under `ca.crt`"),
        );
    }
    for (i, r) in v.ca_certificate_refs.iter().enumerate() {
        let kind_ok = matches!(r.kind.as_deref(), None | Some("ConfigMap") | Some("Secret"));
        if r.group.as_deref().is_some_and(|g| !g.is_empty()) || !kind_ok {
            errors.push(
                FieldError::new(format!("{at}.caCertificateRefs[{i}]"), "must name a core ConfigMap or Secret")
                    .hint("`group: \"\"` and `kind: ConfigMap` (or `Secret`), with the CAs under `ca.crt`"),
            );
        }
    }
}

/// A reference to a Secret (or, where allowed, a ConfigMap), as Gateway API writes it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct SecretObjectReference {
    /// The core group (empty) by default.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub group: Option<String>,
    /// `Secret` by default.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub kind: Option<String>,
    pub name: String,
    /// The Gateway's namespace by default.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub namespace: Option<String>,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct AllowedRoutes {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub namespaces: Option<RouteNamespaces>,
    /// Route kinds (group defaults to Gateway API's).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub kinds: Vec<RouteGroupKind>,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct RouteNamespaces {
    /// `Same` (the default), `All` or `Selector`.
    #[serde(default)]
    pub from: FromNamespaces,
    /// With `from: Selector`: namespaces whose labels match.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub selector: Option<LabelSelector>,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub enum FromNamespaces {
    #[default]
    Same,
    All,
    Selector,
}

/// A Kubernetes label selector.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct LabelSelector {
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub match_labels: BTreeMap<String, String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub match_expressions: Vec<serde_json::Value>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct RouteGroupKind {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub group: Option<String>,
    pub kind: String,
}

/// What Capstan reports of a Gateway, as Gateway API defines it.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct GatewayStatus {
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub addresses: Vec<GatewayAddress>,
    /// `Accepted` and `Programmed`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub conditions: Vec<Condition>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub listeners: Vec<ListenerStatus>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ListenerStatus {
    pub name: String,
    pub supported_kinds: Vec<RouteGroupKind>,
    /// Routes accepted on this listener.
    pub attached_routes: i32,
    /// `Accepted`, `Programmed`, `ResolvedRefs` and `Conflicted`.
    pub conditions: Vec<Condition>,
}

/// A condition in the shape of Kubernetes' `metav1.Condition`, which Gateway API uses.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct Condition {
    #[serde(rename = "type")]
    pub type_: String,
    /// `True`, `False` or `Unknown`.
    pub status: String,
    pub reason: String,
    pub message: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
    pub last_transition_time: DateTime<Utc>,
}

/// A route's reference to its parent Gateway (or one listener of it).
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ParentReference {
    /// Gateway API's group by default.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub group: Option<String>,
    /// `Gateway` by default.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub kind: Option<String>,
    /// The route's namespace by default.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub namespace: Option<String>,
    pub name: String,
    /// One listener by name.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub section_name: Option<String>,
    /// Listeners on this port.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub port: Option<u16>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct HttpRouteSpec {
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub parent_refs: Vec<ParentReference>,
    /// Host names this route serves: exact or `*.` wildcards. Empty: whatever its listener serves.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub hostnames: Vec<String>,
    /// Defaults to one rule matching every path, with no backend (answered 500, as Gateway API asks of a rule
    /// without backends).
    #[serde(default = "default_rules")]
    pub rules: Vec<HttpRouteRule>,
}

fn default_rules() -> Vec<HttpRouteRule> {
    vec![HttpRouteRule::default()]
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct HttpRouteRule {
    /// A name for status and metrics.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    /// Any one of them selects the rule. Empty: one match of every path (`PathPrefix /`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub matches: Vec<HttpRouteMatch>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub filters: Vec<HttpRouteFilter>,
    /// Where requests go, split by weight. None: a 500 unless a filter (a redirect) answers.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub backend_refs: Vec<HttpBackendRef>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timeouts: Option<HttpRouteTimeouts>,
    /// Keeps a client on one replica (experimental channel); mapped onto the balancer's sticky cookie.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub session_persistence: Option<SessionPersistence>,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct HttpRouteMatch {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub path: Option<HttpPathMatch>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub headers: Vec<HttpHeaderMatch>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub query_params: Vec<HttpQueryParamMatch>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub method: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct HttpPathMatch {
    /// `PathPrefix` (the default), `Exact` or `RegularExpression`.
    #[serde(default, rename = "type")]
    pub type_: PathMatchType,
    /// Defaults to `/`.
    #[serde(default = "slash")]
    pub value: String,
}

fn slash() -> String {
    "/".into()
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub enum PathMatchType {
    Exact,
    #[default]
    PathPrefix,
    RegularExpression,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub enum StringMatchType {
    #[default]
    Exact,
    RegularExpression,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct HttpHeaderMatch {
    #[serde(default, rename = "type")]
    pub type_: StringMatchType,
    /// Compared without regard to case.
    pub name: String,
    pub value: String,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct HttpQueryParamMatch {
    #[serde(default, rename = "type")]
    pub type_: StringMatchType,
    /// Compared exactly (case matters).
    pub name: String,
    pub value: String,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct HttpRouteFilter {
    #[serde(rename = "type")]
    pub type_: HttpFilterType,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub request_header_modifier: Option<HeaderModifier>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub response_header_modifier: Option<HeaderModifier>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub request_redirect: Option<RequestRedirect>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub url_rewrite: Option<UrlRewrite>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub request_mirror: Option<RequestMirror>,
    /// Implementation-specific: passed through to a cluster; a route using it is not accepted on the embedded
    /// runtime.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub extension_ref: Option<serde_json::Value>,
    /// CORS (experimental channel): passed through to a cluster; not served on the embedded runtime yet.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cors: Option<serde_json::Value>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub enum HttpFilterType {
    RequestHeaderModifier,
    ResponseHeaderModifier,
    RequestRedirect,
    #[serde(rename = "URLRewrite")]
    UrlRewrite,
    RequestMirror,
    ExtensionRef,
    #[serde(rename = "CORS")]
    Cors,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct HeaderModifier {
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub set: Vec<HttpHeader>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub add: Vec<HttpHeader>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub remove: Vec<String>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct HttpHeader {
    pub name: String,
    pub value: String,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct RequestRedirect {
    /// `http` or `https`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub scheme: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hostname: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub path: Option<HttpPathModifier>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub port: Option<u16>,
    /// 301 or 302 (the default); 303, 307 and 308 as the extended channel allows.
    #[serde(default = "found")]
    pub status_code: u16,
}

fn found() -> u16 {
    302
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct UrlRewrite {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hostname: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub path: Option<HttpPathModifier>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct HttpPathModifier {
    #[serde(rename = "type")]
    pub type_: PathModifierType,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub replace_full_path: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub replace_prefix_match: Option<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub enum PathModifierType {
    ReplaceFullPath,
    ReplacePrefixMatch,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct RequestMirror {
    pub backend_ref: BackendObjectReference,
    /// Mirror this share of requests (0–100); every request by default.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub percent: Option<u8>,
    /// Mirror this fraction of requests instead (`numerator` of every `denominator`, 100 by default).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fraction: Option<Fraction>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Fraction {
    pub numerator: u32,
    #[serde(default = "hundred")]
    pub denominator: u32,
}

fn hundred() -> u32 {
    100
}

impl RequestMirror {
    /// The share of requests mirrored, as (numerator, denominator).
    pub fn share(&self) -> (u32, u32) {
        match (&self.fraction, self.percent) {
            (Some(f), _) => (f.numerator, f.denominator),
            (None, Some(p)) => (u32::from(p), 100),
            (None, None) => (1, 1),
        }
    }
}

/// A Service by name and port; on the embedded runtime an App is its own Service.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct BackendObjectReference {
    /// The core group (empty) by default.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub group: Option<String>,
    /// `Service` by default.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub kind: Option<String>,
    pub name: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub namespace: Option<String>,
    /// The Service port: the port the App's client Service gets when rendered for Kubernetes (`spec.ports[].port`,
    /// or 8080, 8081… in order).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub port: Option<u16>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct HttpBackendRef {
    #[serde(flatten)]
    pub backend: BackendObjectReference,
    /// Share of requests, relative to the rule's other backends. Defaults to 1; 0 sends none.
    #[serde(default = "one")]
    pub weight: u32,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub filters: Vec<HttpRouteFilter>,
}

fn one() -> u32 {
    1
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct HttpRouteTimeouts {
    /// The whole request, from the client's first byte to the answer's last (a Gateway API duration, `10s`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub request: Option<String>,
    /// One try against a backend.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub backend_request: Option<String>,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct SessionPersistence {
    /// The cookie's name.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub session_name: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub absolute_timeout: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub idle_timeout: Option<String>,
    /// `Cookie` (the default) or `Header`.
    #[serde(default, rename = "type", skip_serializing_if = "Option::is_none")]
    pub type_: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cookie_config: Option<CookieConfig>,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct CookieConfig {
    /// `Session` (the default) or `Permanent`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub lifetime_type: Option<String>,
}

/// A route's status: one entry per parent it names.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct RouteStatus {
    #[serde(default)]
    pub parents: Vec<RouteParentStatus>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct RouteParentStatus {
    pub parent_ref: ParentReference,
    pub controller_name: String,
    /// `Accepted` and `ResolvedRefs`.
    pub conditions: Vec<Condition>,
}

/// Whether `host` is a valid Gateway API hostname: a DNS name, or one with a leading `*.` label; never an IP.
pub fn check_hostname(host: &str) -> Result<(), String> {
    let bare = host.strip_prefix("*.").unwrap_or(host);
    if host.len() > 253 || bare.is_empty() {
        return Err(format!("`{host}` is not a host name"));
    }
    if bare.parse::<std::net::IpAddr>().is_ok() {
        return Err(format!("`{host}` is an IP address; a hostname here is a DNS name"));
    }
    for label in bare.split('.') {
        let ok = !label.is_empty()
            && label.len() <= 63
            && label.chars().all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-')
            && !label.starts_with('-')
            && !label.ends_with('-');
        if !ok {
            return Err(format!(
                "`{host}` is not a lower-case DNS name (a leading `*.` is the only wildcard Gateway API allows)"
            ));
        }
    }
    Ok(())
}

/// Compiles a Gateway API regular expression as it is matched: against the whole value, within a size limit a
/// hostile manifest cannot blow up (64 KiB of compiled program, where the default allows 10 MiB).
pub fn whole_regex(re: &str) -> Result<regex::Regex, String> {
    regex::RegexBuilder::new(&format!("^(?:{re})$")).size_limit(64 << 10).build().map_err(|e| match e {
        regex::Error::CompiledTooBig(_) => "is too large once compiled (the limit is 64 KiB)".to_string(),
        e => format!("is not a regular expression: {e}"),
    })
}

/// A host name that names one host: a redirect or rewrite cannot go to a wildcard.
fn no_wildcard(host: &str) -> Result<(), String> {
    match host.starts_with("*.") {
        true => Err(format!("`{host}` is a wildcard; a redirect or rewrite names one host")),
        false => Ok(()),
    }
}

/// Parses a Gateway API duration (`1h`, `10s`, `500ms`, combined as `1m30s`).
pub fn parse_gateway_duration(s: &str) -> Result<std::time::Duration, String> {
    // GEP-2257: one to four parts, each of one to five digits and a unit of h, m, s or ms.
    let bad = || format!("`{s}` is not a Gateway API duration (such as `10s`, `1m30s` or `500ms`)");
    let mut total = std::time::Duration::ZERO;
    let (mut rest, mut parts) = (s, 0);
    while !rest.is_empty() {
        let digits = rest.bytes().take_while(u8::is_ascii_digit).count();
        if digits == 0 || digits > 5 || parts == 4 {
            return Err(bad());
        }
        let n: u64 = rest[..digits].parse().map_err(|_| bad())?;
        rest = &rest[digits..];
        let (unit, len) = if rest.starts_with("ms") {
            (std::time::Duration::from_millis(1), 2)
        } else {
            match rest.as_bytes().first() {
                Some(b'h') => (std::time::Duration::from_secs(3600), 1),
                Some(b'm') => (std::time::Duration::from_secs(60), 1),
                Some(b's') => (std::time::Duration::from_secs(1), 1),
                _ => return Err(bad()),
            }
        };
        total += unit * u32::try_from(n).map_err(|_| bad())?;
        rest = &rest[len..];
        parts += 1;
    }
    if parts == 0 {
        return Err(bad());
    }
    Ok(total)
}

pub fn validate_gateway(spec: &GatewaySpec, errors: &mut Vec<FieldError>) {
    if spec.gateway_class_name.is_empty() {
        errors.push(FieldError::new("spec.gatewayClassName", "must not be empty").hint("for example `capstan`"));
    }
    if spec.listeners.is_empty() || spec.listeners.len() > 64 {
        errors.push(
            FieldError::new("spec.listeners", "needs one to 64 listeners")
                .hint("for example `listeners: [{name: http, port: 80, protocol: HTTP}]`"),
        );
    }
    for (i, a) in spec.addresses.iter().enumerate() {
        let at = format!("spec.addresses[{i}]");
        match a.type_.as_deref().unwrap_or("IPAddress") {
            "IPAddress" if a.value.parse::<std::net::IpAddr>().is_err() => {
                errors.push(FieldError::new(format!("{at}.value"), format!("`{}` is not an IP address", a.value)))
            }
            "IPAddress" | "Hostname" => {}
            other => errors.push(
                FieldError::new(format!("{at}.type"), format!("`{other}` is not an address type"))
                    .hint("`IPAddress` or `Hostname`"),
            ),
        }
    }
    if let Some(f) = spec.tls.as_ref().and_then(|t| t.frontend.as_ref()) {
        if let Some(v) = &f.default.validation {
            validate_frontend_validation(v, "spec.tls.frontend.default.validation", errors);
        }
        let mut ports = std::collections::BTreeSet::new();
        for (i, p) in f.per_port.iter().enumerate() {
            let at = format!("spec.tls.frontend.perPort[{i}]");
            if p.port == 0 || !ports.insert(p.port) {
                errors.push(FieldError::new(format!("{at}.port"), "must be a port from 1 to 65535, each once"));
            }
            if let Some(v) = &p.tls.validation {
                validate_frontend_validation(v, &format!("{at}.tls.validation"), errors);
            }
        }
        if f.per_port.len() > 64 {
            errors.push(FieldError::new("spec.tls.frontend.perPort", "holds at most 64 ports"));
        }
    }
    let mut names = std::collections::BTreeSet::new();
    for (i, l) in spec.listeners.iter().enumerate() {
        let at = format!("spec.listeners[{i}]");
        if let Some(v) = l.tls.as_ref().and_then(|t| t.frontend_validation.as_ref()) {
            validate_frontend_validation(v, &format!("{at}.tls.frontendValidation"), errors);
        }
        if let Err(e) = crate::validate::check_dns_label(&l.name, 253) {
            errors.push(FieldError::new(format!("{at}.name"), e));
        }
        if !names.insert(l.name.as_str()) {
            errors.push(
                FieldError::new(format!("{at}.name"), format!("`{}` names another listener too", l.name))
                    .hint("listener names are unique in a Gateway"),
            );
        }
        if l.port == 0 {
            errors.push(FieldError::new(format!("{at}.port"), "must be a port from 1 to 65535"));
        }
        if let Some(h) = &l.hostname {
            if let Err(e) = check_hostname(h) {
                errors.push(FieldError::new(format!("{at}.hostname"), e));
            }
        }
        match (l.protocol, &l.tls) {
            (ListenerProtocol::Https, None) => errors.push(
                FieldError::new(format!("{at}.tls"), "is required for an HTTPS listener")
                    .hint("`tls: {certificateRefs: [{name: my-cert}]}` naming a Secret with tls.crt and tls.key"),
            ),
            (ListenerProtocol::Tls, None) => errors.push(
                FieldError::new(format!("{at}.tls"), "is required for a TLS listener")
                    .hint("`tls: {mode: Passthrough}`, or `Terminate` with certificateRefs"),
            ),
            (ListenerProtocol::Http | ListenerProtocol::Tcp | ListenerProtocol::Udp, Some(_)) => errors.push(
                FieldError::new(format!("{at}.tls"), format!("is not allowed on a {} listener", l.protocol.as_str()))
                    .hint("use protocol HTTPS (or TLS) to serve TLS"),
            ),
            (ListenerProtocol::Https, Some(t)) if t.mode == TlsMode::Passthrough => errors.push(
                FieldError::new(format!("{at}.tls.mode"), "Passthrough is for TLS listeners")
                    .hint("`protocol: TLS` with `mode: Passthrough`, and a TLSRoute"),
            ),
            (_, Some(t)) if t.mode == TlsMode::Terminate && t.certificate_refs.is_empty() => errors.push(
                FieldError::new(format!("{at}.tls.certificateRefs"), "needs at least one certificate to terminate TLS")
                    .hint("name a Secret with tls.crt and tls.key"),
            ),
            _ => {}
        }
        if let Some(RouteNamespaces { from: FromNamespaces::Selector, selector: None }) =
            l.allowed_routes.as_ref().and_then(|a| a.namespaces.as_ref())
        {
            errors.push(FieldError::new(
                format!("{at}.allowedRoutes.namespaces.selector"),
                "is required with `from: Selector`",
            ));
        }
    }
}

pub fn validate_http_route(spec: &HttpRouteSpec, errors: &mut Vec<FieldError>) {
    validate_parent_refs(&spec.parent_refs, errors);
    limit(spec.hostnames.len(), 16, "spec.hostnames", errors);
    for (i, h) in spec.hostnames.iter().enumerate() {
        if let Err(e) = check_hostname(h) {
            errors.push(FieldError::new(format!("spec.hostnames[{i}]"), e));
        }
    }
    validate_http_rules(spec, errors);
}

/// A route's `parentRefs`: one to 32 Gateways.
pub(crate) fn validate_parent_refs(parent_refs: &[ParentReference], errors: &mut Vec<FieldError>) {
    if parent_refs.is_empty() {
        errors.push(
            FieldError::new("spec.parentRefs", "names no Gateway: the route would serve nothing")
                .hint("`parentRefs: [{name: my-gateway}]`"),
        );
    }
    if parent_refs.len() > 32 {
        errors.push(FieldError::new("spec.parentRefs", "has more than 32 entries"));
    }
    for (i, p) in parent_refs.iter().enumerate() {
        let at = format!("spec.parentRefs[{i}]");
        if p.group.as_deref().is_some_and(|g| g != GATEWAY_GROUP) || p.kind.as_deref().is_some_and(|k| k != "Gateway") {
            errors.push(
                FieldError::new(at.clone(), "only Gateways are parents here")
                    .hint(format!("leave out group and kind, or write `group: {GATEWAY_GROUP}` and `kind: Gateway`")),
            );
        }
    }
}

fn validate_http_rules(spec: &HttpRouteSpec, errors: &mut Vec<FieldError>) {
    limit(spec.rules.len(), 16, "spec.rules", errors);
    for (r, rule) in spec.rules.iter().enumerate() {
        let at = format!("spec.rules[{r}]");
        limit(rule.matches.len(), 64, &format!("{at}.matches"), errors);
        limit(rule.filters.len(), 16, &format!("{at}.filters"), errors);
        limit(rule.backend_refs.len(), 16, &format!("{at}.backendRefs"), errors);
        for (m, mat) in rule.matches.iter().enumerate() {
            validate_match(mat, &format!("{at}.matches[{m}]"), errors);
        }
        validate_filters(&rule.filters, &format!("{at}.filters"), true, errors);
        let redirects = rule.filters.iter().any(|f| f.type_ == HttpFilterType::RequestRedirect);
        let rewrites = rule.filters.iter().any(|f| f.type_ == HttpFilterType::UrlRewrite);
        if redirects && rewrites {
            errors.push(
                FieldError::new(format!("{at}.filters"), "has both RequestRedirect and URLRewrite")
                    .hint("a rule redirects or rewrites, not both"),
            );
        }
        if redirects && !rule.backend_refs.is_empty() {
            errors.push(
                FieldError::new(format!("{at}.backendRefs"), "is not allowed with a RequestRedirect filter")
                    .hint("a redirect answers by itself; remove the backendRefs"),
            );
        }
        let uses_prefix = rule
            .filters
            .iter()
            .filter_map(|f| {
                f.url_rewrite
                    .as_ref()
                    .and_then(|u| u.path.as_ref())
                    .or(f.request_redirect.as_ref().and_then(|r| r.path.as_ref()))
            })
            .any(|p| p.type_ == PathModifierType::ReplacePrefixMatch);
        if uses_prefix {
            let every_prefix = !rule.matches.is_empty()
                && rule.matches.iter().all(|m| m.path.as_ref().is_none_or(|p| p.type_ == PathMatchType::PathPrefix));
            if !every_prefix && !rule.matches.is_empty() {
                errors.push(
                    FieldError::new(format!("{at}.filters"), "ReplacePrefixMatch needs every match to be a PathPrefix")
                        .hint("match with `path: {type: PathPrefix, value: /old}`"),
                );
            }
        }
        for (b, backend) in rule.backend_refs.iter().enumerate() {
            let bat = format!("{at}.backendRefs[{b}]");
            validate_backend(&backend.backend, &bat, errors);
            if backend.weight > 1_000_000 {
                errors.push(FieldError::new(format!("{bat}.weight"), "must be at most 1000000"));
            }
            validate_filters(&backend.filters, &format!("{bat}.filters"), false, errors);
        }
        if let Some(t) = &rule.timeouts {
            let mut parsed = Vec::new();
            for (name, v) in [("request", &t.request), ("backendRequest", &t.backend_request)] {
                if let Some(v) = v {
                    match parse_gateway_duration(v) {
                        Ok(d) => parsed.push(d),
                        Err(e) => errors.push(
                            FieldError::new(format!("{at}.timeouts.{name}"), e)
                                .hint("a duration such as `10s` or `1m`"),
                        ),
                    }
                }
            }
            if let (Some(r), Some(b)) = (&t.request, &t.backend_request) {
                if let (Ok(r), Ok(b)) = (parse_gateway_duration(r), parse_gateway_duration(b)) {
                    if !r.is_zero() && b > r {
                        errors.push(FieldError::new(
                            format!("{at}.timeouts.backendRequest"),
                            "must not be longer than timeouts.request",
                        ));
                    }
                }
            }
        }
        if let Some(s) = &rule.session_persistence {
            if s.type_.as_deref().is_some_and(|t| t != "Cookie") {
                errors.push(
                    FieldError::new(
                        format!("{at}.sessionPersistence.type"),
                        "only `Cookie` is served on the embedded runtime",
                    )
                    .hint("leave it out: cookies are the default"),
                );
            }
            for (name, v) in [("absoluteTimeout", &s.absolute_timeout), ("idleTimeout", &s.idle_timeout)] {
                if let Some(Err(e)) = v.as_deref().map(parse_gateway_duration) {
                    errors.push(FieldError::new(format!("{at}.sessionPersistence.{name}"), e));
                }
            }
        }
    }
}

fn validate_match(m: &HttpRouteMatch, at: &str, errors: &mut Vec<FieldError>) {
    if let Some(p) = &m.path {
        too_long(&p.value, &format!("{at}.path.value"), errors);
        match p.type_ {
            PathMatchType::Exact | PathMatchType::PathPrefix => {
                if !p.value.starts_with('/') {
                    errors.push(FieldError::new(
                        format!("{at}.path.value"),
                        format!("`{}` must start with `/`", p.value),
                    ));
                }
                let lower = p.value.to_ascii_lowercase();
                let bad = ["//", "/./", "/../", "%2f", "?", "#"].iter().any(|b| lower.contains(b))
                    || lower.ends_with("/.")
                    || lower.ends_with("/..");
                if bad {
                    errors.push(FieldError::new(
                        format!("{at}.path.value"),
                        format!("`{}` is not a plain path (no `//`, `.` or `..` segments, `%2f`, `?` or `#`)", p.value),
                    ));
                }
            }
            PathMatchType::RegularExpression => {
                if let Err(e) = whole_regex(&p.value) {
                    errors.push(FieldError::new(format!("{at}.path.value"), e));
                }
            }
        }
    }
    limit(m.headers.len(), 16, &format!("{at}.headers"), errors);
    limit(m.query_params.len(), 16, &format!("{at}.queryParams"), errors);
    let values = m
        .headers
        .iter()
        .map(|h| (h.name.to_ascii_lowercase(), h.name.as_str(), h.type_, h.value.as_str(), "headers"))
        .chain(
            m.query_params.iter().map(|q| (q.name.clone(), q.name.as_str(), q.type_, q.value.as_str(), "queryParams")),
        );
    let mut seen = std::collections::BTreeSet::new();
    for (i, (key, name, kind, value, field)) in values.enumerate() {
        let i = if field == "headers" { i } else { i - m.headers.len() };
        if !seen.insert((field, key)) {
            errors.push(FieldError::new(format!("{at}.{field}[{i}].name"), format!("`{name}` is matched twice")));
        }
        too_long(value, &format!("{at}.{field}[{i}].value"), errors);
        if kind == StringMatchType::RegularExpression {
            if let Err(e) = whole_regex(value) {
                errors.push(FieldError::new(format!("{at}.{field}[{i}].value"), e));
            }
        }
    }
    if let Some(method) = &m.method {
        const METHODS: [&str; 9] = ["GET", "HEAD", "POST", "PUT", "DELETE", "CONNECT", "OPTIONS", "TRACE", "PATCH"];
        if !METHODS.contains(&method.as_str()) {
            errors.push(
                FieldError::new(format!("{at}.method"), format!("`{method}` is not an HTTP method"))
                    .hint(METHODS.join(", ")),
            );
        }
    }
}

/// Gateway API's caps on list lengths, which keep a hostile manifest from costing the balancer much.
pub(crate) fn limit(len: usize, max: usize, at: &str, errors: &mut Vec<FieldError>) {
    if len > max {
        errors.push(FieldError::new(at.to_string(), format!("has {len} entries; Gateway API allows at most {max}")));
    }
}

/// Gateway API's cap on a match value's length.
fn too_long(value: &str, at: &str, errors: &mut Vec<FieldError>) {
    if value.len() > 1024 {
        errors.push(FieldError::new(at.to_string(), format!("is {} characters long; the limit is 1024", value.len())));
    }
}

pub(crate) fn validate_backend(b: &BackendObjectReference, at: &str, errors: &mut Vec<FieldError>) {
    let group = b.group.as_deref().unwrap_or("");
    let kind = b.kind.as_deref().unwrap_or("Service");
    if !matches!((group, kind), ("", "Service") | ("capstan.dev", "App")) {
        errors.push(
            FieldError::new(at.to_string(), format!("a backend of kind `{kind}` in group `{group}` is not served"))
                .hint("name a Service (an App is its own Service here): leave out group and kind"),
        );
    }
    if b.port.is_none() && kind == "Service" {
        errors.push(
            FieldError::new(format!("{at}.port"), "is required for a Service backend")
                .hint("the App's Service port: `spec.ports[].port`, or 8080 for its first port"),
        );
    }
}

fn validate_filters(filters: &[HttpRouteFilter], at: &str, in_rule: bool, errors: &mut Vec<FieldError>) {
    let mut seen = std::collections::BTreeSet::new();
    for (i, f) in filters.iter().enumerate() {
        let fat = format!("{at}[{i}]");
        let given = [
            (HttpFilterType::RequestHeaderModifier, f.request_header_modifier.is_some(), "requestHeaderModifier"),
            (HttpFilterType::ResponseHeaderModifier, f.response_header_modifier.is_some(), "responseHeaderModifier"),
            (HttpFilterType::RequestRedirect, f.request_redirect.is_some(), "requestRedirect"),
            (HttpFilterType::UrlRewrite, f.url_rewrite.is_some(), "urlRewrite"),
            (HttpFilterType::RequestMirror, f.request_mirror.is_some(), "requestMirror"),
            (HttpFilterType::ExtensionRef, f.extension_ref.is_some(), "extensionRef"),
            (HttpFilterType::Cors, f.cors.is_some(), "cors"),
        ];
        for (t, present, field) in given {
            if t == f.type_ && !present {
                errors.push(FieldError::new(
                    format!("{fat}.{field}"),
                    format!("is required with `type: {}`", filter_name(t)),
                ));
            }
            if t != f.type_ && present {
                errors.push(
                    FieldError::new(
                        format!("{fat}.{field}"),
                        format!("does not go with `type: {}`", filter_name(f.type_)),
                    )
                    .hint(format!("set `type: {}` or remove it", filter_name(t))),
                );
            }
        }
        match f.type_ {
            HttpFilterType::RequestRedirect | HttpFilterType::UrlRewrite if !in_rule => errors.push(FieldError::new(
                format!("{fat}.type"),
                format!("`{}` is a rule's filter, not a backend's", filter_name(f.type_)),
            )),
            t if t != HttpFilterType::RequestMirror && !seen.insert(filter_name(t)) => errors.push(
                FieldError::new(format!("{fat}.type"), format!("`{}` appears twice", filter_name(t)))
                    .hint("only RequestMirror may repeat"),
            ),
            _ => {}
        }
        for (name, m) in [
            ("requestHeaderModifier", &f.request_header_modifier),
            ("responseHeaderModifier", &f.response_header_modifier),
        ] {
            if let Some(m) = m {
                let mut names = std::collections::BTreeSet::new();
                for h in m.set.iter().chain(&m.add) {
                    if !is_header_name(&h.name) || h.value.chars().any(|c| c.is_control() && c != '\t') {
                        errors.push(FieldError::new(
                            format!("{fat}.{name}"),
                            format!("`{}: {}` is not a valid header", h.name, h.value),
                        ));
                    }
                    if !names.insert(h.name.to_ascii_lowercase()) {
                        errors.push(FieldError::new(format!("{fat}.{name}"), format!("`{}` is named twice", h.name)));
                    }
                }
            }
        }
        if let Some(r) = &f.request_redirect {
            if r.scheme.as_deref().is_some_and(|s| s != "http" && s != "https") {
                errors.push(FieldError::new(format!("{fat}.requestRedirect.scheme"), "must be `http` or `https`"));
            }
            if ![301, 302, 303, 307, 308].contains(&r.status_code) {
                errors.push(FieldError::new(
                    format!("{fat}.requestRedirect.statusCode"),
                    "must be 301, 302, 303, 307 or 308",
                ));
            }
            if let Some(h) = &r.hostname {
                if let Err(e) = check_hostname(h).and_then(|_| no_wildcard(h)) {
                    errors.push(FieldError::new(format!("{fat}.requestRedirect.hostname"), e));
                }
            }
            if r.port == Some(0) {
                errors.push(FieldError::new(format!("{fat}.requestRedirect.port"), "must be a port from 1 to 65535"));
            }
            if let Some(p) = &r.path {
                validate_path_modifier(p, &format!("{fat}.requestRedirect.path"), errors);
            }
        }
        if let Some(u) = &f.url_rewrite {
            if let Some(h) = &u.hostname {
                if let Err(e) = check_hostname(h).and_then(|_| no_wildcard(h)) {
                    errors.push(FieldError::new(format!("{fat}.urlRewrite.hostname"), e));
                }
            }
            if let Some(p) = &u.path {
                validate_path_modifier(p, &format!("{fat}.urlRewrite.path"), errors);
            }
        }
        if let Some(m) = &f.request_mirror {
            validate_backend(&m.backend_ref, &format!("{fat}.requestMirror.backendRef"), errors);
            if m.percent.is_some_and(|p| p > 100) {
                errors.push(FieldError::new(format!("{fat}.requestMirror.percent"), "must be 0 to 100"));
            }
            if let Some(f) = &m.fraction {
                if m.percent.is_some() {
                    errors.push(
                        FieldError::new(format!("{fat}.requestMirror.fraction"), "is given with percent")
                            .hint("one of the two"),
                    );
                }
                if f.denominator == 0 || f.numerator > f.denominator {
                    errors.push(FieldError::new(
                        format!("{fat}.requestMirror.fraction"),
                        "needs a denominator above 0 and a numerator no larger",
                    ));
                }
            }
        }
    }
}

fn validate_path_modifier(p: &HttpPathModifier, at: &str, errors: &mut Vec<FieldError>) {
    let (want, other, value) = match p.type_ {
        PathModifierType::ReplaceFullPath => ("replaceFullPath", &p.replace_prefix_match, &p.replace_full_path),
        PathModifierType::ReplacePrefixMatch => ("replacePrefixMatch", &p.replace_full_path, &p.replace_prefix_match),
    };
    match value {
        None => errors.push(FieldError::new(format!("{at}.{want}"), "is required with this type")),
        // An empty prefix replacement removes the matched prefix, as the specification's table shows.
        Some(v) if v.is_empty() && p.type_ == PathModifierType::ReplacePrefixMatch => {}
        Some(v) if !v.starts_with('/') => {
            errors.push(FieldError::new(format!("{at}.{want}"), format!("`{v}` must start with `/`")))
        }
        Some(v) => too_long(v, &format!("{at}.{want}"), errors),
    }
    if other.is_some() {
        errors.push(FieldError::new(at.to_string(), format!("give only `{want}` with this type")));
    }
}

fn filter_name(t: HttpFilterType) -> &'static str {
    match t {
        HttpFilterType::RequestHeaderModifier => "RequestHeaderModifier",
        HttpFilterType::ResponseHeaderModifier => "ResponseHeaderModifier",
        HttpFilterType::RequestRedirect => "RequestRedirect",
        HttpFilterType::UrlRewrite => "URLRewrite",
        HttpFilterType::RequestMirror => "RequestMirror",
        HttpFilterType::ExtensionRef => "ExtensionRef",
        HttpFilterType::Cors => "CORS",
    }
}

/// An HTTP header name: one or more of RFC 9110's token characters.
fn is_header_name(name: &str) -> bool {
    !name.is_empty() && name.bytes().all(|b| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b))
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use crate::resource::Resource;

    fn errors_of(v: serde_json::Value) -> Vec<String> {
        match Resource::from_value(v) {
            Ok(r) => r.validate().iter().map(ToString::to_string).collect(),
            Err(e) => vec![e.to_string()],
        }
    }

    fn gateway(listeners: serde_json::Value) -> serde_json::Value {
        json!({"apiVersion": "gateway.networking.k8s.io/v1", "kind": "Gateway", "metadata": {"name": "front"},
               "spec": {"gatewayClassName": "capstan", "listeners": listeners}})
    }

    fn route(rules: serde_json::Value) -> serde_json::Value {
        json!({"apiVersion": "gateway.networking.k8s.io/v1", "kind": "HTTPRoute", "metadata": {"name": "shop"},
               "spec": {"parentRefs": [{"name": "front"}], "hostnames": ["shop.example.com"], "rules": rules}})
    }

    #[test]
    fn gateway_api_objects_decode_as_written_with_their_defaults() {
        let r = Resource::from_value(route(json!([{
            "matches": [{"path": {"value": "/api"}, "headers": [{"name": "x-env", "value": "canary"}]}],
            "filters": [{"type": "RequestHeaderModifier", "requestHeaderModifier": {"set": [{"name": "x-a", "value": "1"}]}}],
            "backendRefs": [{"name": "api", "port": 8080}]}])))
        .unwrap();
        assert!(r.validate().is_empty(), "{:?}", r.validate());
        let crate::resource::Resource::HTTPRoute(route) = r else { panic!("an HTTPRoute") };
        let rule = &route.spec.rules[0];
        assert_eq!(rule.matches[0].path.as_ref().unwrap().type_, super::PathMatchType::PathPrefix);
        assert_eq!(rule.backend_refs[0].weight, 1, "weight defaults to 1");
        let bare = Resource::from_value(json!({"apiVersion": "gateway.networking.k8s.io/v1", "kind": "HTTPRoute",
            "metadata": {"name": "r"}, "spec": {"parentRefs": [{"name": "front"}]}}))
        .unwrap();
        let crate::resource::Resource::HTTPRoute(bare) = bare else { panic!() };
        assert_eq!(bare.spec.rules.len(), 1, "no rules: one rule matching every path");
        let g = Resource::from_value(gateway(json!([{"name": "http", "port": 80, "protocol": "HTTP"},
            {"name": "https", "port": 443, "protocol": "HTTPS", "hostname": "*.example.com",
             "tls": {"certificateRefs": [{"name": "wild"}]}, "allowedRoutes": {"namespaces": {"from": "All"}}}])))
        .unwrap();
        assert!(g.validate().is_empty(), "{:?}", g.validate());
        assert_eq!(g.key().kind, "Gateway");
    }

    #[test]
    fn the_wrong_api_version_and_unknown_fields_are_named() {
        let mut v = gateway(json!([{"name": "http", "port": 80, "protocol": "HTTP"}]));
        v["apiVersion"] = json!("capstan.dev/v1alpha1");
        let e = errors_of(v);
        assert!(e[0].contains("apiVersion") && e[0].contains("use `gateway.networking.k8s.io/v1`"), "{e:?}");
        let e = errors_of(gateway(json!([{"name": "http", "port": 80, "protocol": "HTTP", "hostnme": "x"}])));
        assert!(e[0].contains("spec.listeners[0].hostnme") && e[0].contains("did you mean `hostname`"), "{e:?}");
        let e = errors_of(gateway(json!([{"name": "http", "port": 80, "protocol": "HTTP2"}])));
        assert!(e[0].contains("spec.listeners[0].protocol"), "{e:?}");
    }

    #[test]
    fn bad_listeners_are_refused_with_the_field_and_a_hint() {
        let e = errors_of(gateway(json!([
            {"name": "a", "port": 443, "protocol": "HTTPS"},
            {"name": "a", "port": 80, "protocol": "HTTP", "tls": {"certificateRefs": [{"name": "c"}]}},
            {"name": "b", "port": 81, "protocol": "HTTP", "hostname": "10.0.0.1"},
            {"name": "c", "port": 82, "protocol": "HTTP", "hostname": "foo.*.com"},
        ])));
        let text = e.join("\n");
        assert!(text.contains("spec.listeners[0].tls: is required for an HTTPS listener"), "{text}");
        assert!(text.contains("spec.listeners[1].name: `a` names another listener too"), "{text}");
        assert!(text.contains("spec.listeners[1].tls: is not allowed on a HTTP listener"), "{text}");
        assert!(text.contains("spec.listeners[2].hostname: `10.0.0.1` is an IP address"), "{text}");
        assert!(text.contains("spec.listeners[3].hostname"), "{text}");
        let e = errors_of(gateway(json!([])));
        assert!(e.join("").contains("spec.listeners: needs one to 64 listeners"), "{e:?}");
    }

    #[test]
    fn bad_rules_are_refused_with_the_field() {
        let e = errors_of(route(json!([
            {"matches": [{"path": {"type": "RegularExpression", "value": "(unclosed"}}]},
            {"matches": [{"path": {"type": "Exact", "value": "no-slash"}, "method": "FETCH"}]},
            {"filters": [{"type": "RequestRedirect", "requestRedirect": {"scheme": "https", "statusCode": 303}}],
             "backendRefs": [{"name": "a", "port": 80}]},
            {"filters": [{"type": "URLRewrite"}]},
            {"filters": [{"type": "RequestHeaderModifier", "responseHeaderModifier": {}}]},
            {"backendRefs": [{"name": "a"}, {"name": "b", "port": 80, "kind": "Pod"}]},
            {"timeouts": {"request": "1s", "backendRequest": "5s"}},
            {"matches": [{"path": {"type": "Exact", "value": "/x"}}],
             "filters": [{"type": "URLRewrite", "urlRewrite": {"path": {"type": "ReplacePrefixMatch", "replacePrefixMatch": "/y"}}}]},
        ])));
        let text = e.join("\n");
        for want in [
            "spec.rules[0].matches[0].path.value: is not a regular expression",
            "spec.rules[1].matches[0].path.value: `no-slash` must start with `/`",
            "spec.rules[1].matches[0].method: `FETCH` is not an HTTP method",
            "spec.rules[2].backendRefs: is not allowed with a RequestRedirect filter",
            "spec.rules[3].filters[0].urlRewrite: is required with `type: URLRewrite`",
            "spec.rules[4].filters[0].requestHeaderModifier: is required",
            "spec.rules[4].filters[0].responseHeaderModifier: does not go with `type: RequestHeaderModifier`",
            "spec.rules[5].backendRefs[0].port: is required for a Service backend",
            "spec.rules[5].backendRefs[1]: a backend of kind `Pod`",
            "spec.rules[6].timeouts.backendRequest: must not be longer than timeouts.request",
            "spec.rules[7].filters: ReplacePrefixMatch needs every match to be a PathPrefix",
        ] {
            assert!(text.contains(want), "missing {want:?} in:\n{text}");
        }
        // What the CRD's own patterns and caps refuse is refused here too.
        let e = errors_of(route(json!([
            {"matches": [{"path": {"value": "/a%2Fb"}}], "timeouts": {"request": "1.5s"}},
            {"matches": [{"path": {"type": "RegularExpression", "value": "(a{1000}){1000}"}}]},
            {"filters": [{"type": "RequestRedirect", "requestRedirect": {"hostname": "*.example.com", "port": 0}}]},
            {"matches": (0..65).map(|_| json!({"method": "GET"})).collect::<Vec<_>>()},
            {"matches": [{"path": {"value": "/old"}}],
             "filters": [{"type": "URLRewrite", "urlRewrite": {"path": {"type": "ReplacePrefixMatch", "replacePrefixMatch": ""}}}],
             "backendRefs": [{"name": "a", "port": 80}], "timeouts": {"request": "1m30s", "backendRequest": "500ms"}},
        ])));
        let text = e.join("\n");
        for want in [
            "spec.rules[0].matches[0].path.value: `/a%2Fb` is not a plain path",
            "spec.rules[0].timeouts.request: `1.5s` is not a Gateway API duration",
            "spec.rules[1].matches[0].path.value: is too large once compiled",
            "spec.rules[2].filters[0].requestRedirect.hostname: `*.example.com` is a wildcard",
            "spec.rules[2].filters[0].requestRedirect.port: must be a port from 1 to 65535",
            "spec.rules[3].matches: has 65 entries; Gateway API allows at most 64",
        ] {
            assert!(text.contains(want), "missing {want:?} in:\n{text}");
        }
        assert!(!text.contains("spec.rules[4]"), "an empty prefix replacement and GEP-2257 durations are fine: {text}");
        assert_eq!(super::parse_gateway_duration("1h2m3s4ms"), Ok(std::time::Duration::from_millis(3_723_004)));
        for bad in ["", "1d", "30", "100000s", "1s1s1s1s1s", "-1s"] {
            assert!(super::parse_gateway_duration(bad).is_err(), "{bad}");
        }
        let none = json!({"apiVersion": "gateway.networking.k8s.io/v1", "kind": "HTTPRoute", "metadata": {"name": "r"},
                          "spec": {"rules": []}});
        assert!(errors_of(none).join("").contains("spec.parentRefs: names no Gateway"));
    }
}
