//! Gateway API's `ReferenceGrant`: a namespace's consent to be referenced from another — routes of a namespace
//! sending to its Services (Apps), Gateways of a namespace serving its Secrets' certificates.

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::gateway::{limit, GATEWAY_GROUP};
use crate::resource::Object;
use crate::validate::FieldError;

/// The `apiVersion` ReferenceGrants are written with: Gateway API's standard channel since v1.5 (`v1beta1` is taken
/// too, as written).
pub const REFERENCE_GRANT_API_VERSION: &str = "gateway.networking.k8s.io/v1";

/// A ReferenceGrant: objects of the kinds and namespaces in `from` may reference the objects of `to` in the grant's
/// own namespace. It has no status.
pub type ReferenceGrant = Object<ReferenceGrantSpec, serde_json::Value>;

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ReferenceGrantSpec {
    /// Who may reference: one to 16 (group, kind, namespace), any of which will do.
    pub from: Vec<ReferenceGrantFrom>,
    /// What they may reference in this namespace: one to 16 (group, kind, optional name), any of which will do.
    pub to: Vec<ReferenceGrantTo>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ReferenceGrantFrom {
    /// `gateway.networking.k8s.io` for Gateways and routes.
    pub group: String,
    /// `Gateway` (to use Secrets), or `HTTPRoute`, `TLSRoute`, `TCPRoute` (to use Services).
    pub kind: String,
    pub namespace: String,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ReferenceGrantTo {
    /// Empty for the core group (Secrets, Services); `capstan.dev` for Apps named as such.
    pub group: String,
    /// `Secret` or `Service` (an App is its Service); `App` in group `capstan.dev`.
    pub kind: String,
    /// One object by name; every object of the kind without one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
}

impl ReferenceGrantSpec {
    /// Whether this grant lets a `from_kind` of `from_namespace` reference the `to_kind` named `name` (both kinds
    /// as (group, kind); groups empty for the core group).
    pub fn allows(&self, from: (&str, &str), from_namespace: &str, to: (&str, &str), name: &str) -> bool {
        self.from.iter().any(|f| f.group == from.0 && f.kind == from.1 && f.namespace == from_namespace)
            && self.to.iter().any(|t| t.group == to.0 && t.kind == to.1 && t.name.as_deref().is_none_or(|n| n == name))
    }
}

pub fn validate_reference_grant(spec: &ReferenceGrantSpec, errors: &mut Vec<FieldError>) {
    for (field, len) in [("spec.from", spec.from.len()), ("spec.to", spec.to.len())] {
        if len == 0 {
            errors.push(
                FieldError::new(field, "is empty: the grant would allow nothing")
                    .hint("`from: [{group: gateway.networking.k8s.io, kind: HTTPRoute, namespace: web}]`, `to: [{group: \"\", kind: Service}]`"),
            );
        }
        limit(len, 16, field, errors);
    }
    for (i, f) in spec.from.iter().enumerate() {
        let known =
            matches!(f.kind.as_str(), "Gateway" | "HTTPRoute" | "TLSRoute" | "TCPRoute" | "GRPCRoute" | "UDPRoute");
        if f.group == GATEWAY_GROUP && !known {
            errors.push(
                FieldError::new(
                    format!("spec.from[{i}].kind"),
                    format!("`{}` is not a Gateway API kind that references", f.kind),
                )
                .hint("Gateway (to use Secrets), HTTPRoute, TLSRoute or TCPRoute (to use Services)"),
            );
        }
        if let Err(e) = crate::validate::check_dns_label(&f.namespace, 63) {
            errors.push(FieldError::new(format!("spec.from[{i}].namespace"), e));
        }
    }
    for (i, t) in spec.to.iter().enumerate() {
        if t.group.is_empty() && !matches!(t.kind.as_str(), "Secret" | "Service" | "ConfigMap") {
            errors.push(
                FieldError::new(
                    format!("spec.to[{i}].kind"),
                    format!("`{}` is not a core kind a Gateway API object references", t.kind),
                )
                .hint("`Secret` or `Service` (with `group: \"\"`)"),
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use crate::resource::problems as errors;

    #[test]
    fn grants_are_taken_in_v1_and_v1beta1_and_bad_ones_name_the_field() {
        for api in ["gateway.networking.k8s.io/v1", "gateway.networking.k8s.io/v1beta1"] {
            let g = json!({"apiVersion": api, "kind": "ReferenceGrant", "metadata": {"name": "g", "namespace": "api"},
                "spec": {"from": [{"group": "gateway.networking.k8s.io", "kind": "HTTPRoute", "namespace": "web"}],
                         "to": [{"group": "", "kind": "Service", "name": "api"}]}});
            assert_eq!(errors(g), Vec::<String>::new(), "{api}");
        }
        let e = errors(json!({"apiVersion": "gateway.networking.k8s.io/v1", "kind": "ReferenceGrant",
            "metadata": {"name": "g"},
            "spec": {"from": [{"group": "gateway.networking.k8s.io", "kind": "HTTPRout", "namespace": "Web_1"}], "to": []}}));
        for want in ["spec.to: is empty", "spec.from[0].kind: `HTTPRout`", "spec.from[0].namespace"] {
            assert!(e.iter().any(|x| x.starts_with(want)), "{want} in {e:?}");
        }
        let e = errors(json!({"apiVersion": "gateway.networking.k8s.io/v1", "kind": "ReferenceGrant",
            "metadata": {"name": "g"}, "spec": {"from": [], "to": [{"group": "", "kind": "Pod", "nmae": "x"}]}}));
        assert!(e.iter().any(|x| x.contains("nmae")), "an unknown field is named: {e:?}");
    }

    #[test]
    fn a_grant_allows_exactly_what_it_names() {
        let spec: super::ReferenceGrantSpec = serde_json::from_value(json!({
            "from": [{"group": "gateway.networking.k8s.io", "kind": "HTTPRoute", "namespace": "web"},
                     {"group": "gateway.networking.k8s.io", "kind": "Gateway", "namespace": "edge"}],
            "to": [{"group": "", "kind": "Service", "name": "api"}, {"group": "", "kind": "Secret"}]}))
        .unwrap();
        let gw = "gateway.networking.k8s.io";
        assert!(spec.allows((gw, "HTTPRoute"), "web", ("", "Service"), "api"));
        assert!(!spec.allows((gw, "HTTPRoute"), "web", ("", "Service"), "other"), "named: that one only");
        assert!(spec.allows((gw, "Gateway"), "edge", ("", "Secret"), "any-cert"), "unnamed: every one");
        assert!(!spec.allows((gw, "TCPRoute"), "web", ("", "Service"), "api"), "another kind");
        assert!(!spec.allows((gw, "HTTPRoute"), "other", ("", "Service"), "api"), "another namespace");
        assert!(!spec.allows((gw, "HTTPRoute"), "web", ("capstan.dev", "App"), "api"), "another group");
    }
}
