//! Shared by every kind's renderer: typed objects as JSON, the restricted security contexts, an App's pods as a peer.

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::{Capabilities, PodSecurityContext, SeccompProfile, SecurityContext};
use k8s_openapi::api::networking::v1::NetworkPolicyPeer;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelector;
use serde_json::Value;

/// A typed object as JSON with its `apiVersion` and `kind`.
pub(crate) fn to_value<T: serde::Serialize + k8s_openapi::Resource>(obj: &T) -> Value {
    let mut v = serde_json::to_value(obj).unwrap_or(Value::Null);
    if let Value::Object(m) = &mut v {
        m.insert("apiVersion".into(), Value::String(T::API_VERSION.into()));
        m.insert("kind".into(), Value::String(T::KIND.into()));
    }
    v
}

fn runtime_default() -> Option<SeccompProfile> {
    Some(SeccompProfile { type_: "RuntimeDefault".into(), localhost_profile: None })
}

/// The restricted Pod Security Standard for a container: non-root, no privilege escalation, no capabilities,
/// RuntimeDefault seccomp.
pub(crate) fn restricted_container() -> SecurityContext {
    SecurityContext {
        allow_privilege_escalation: Some(false),
        capabilities: Some(Capabilities { drop: Some(vec!["ALL".into()]), add: None }),
        run_as_non_root: Some(true),
        seccomp_profile: runtime_default(),
        ..Default::default()
    }
}

/// The restricted Pod Security Standard for a pod.
pub(crate) fn restricted_pod() -> PodSecurityContext {
    PodSecurityContext { run_as_non_root: Some(true), seccomp_profile: runtime_default(), ..Default::default() }
}

/// The pods of the App `app`, as a NetworkPolicy peer.
pub(crate) fn app_peer(app: &str) -> NetworkPolicyPeer {
    NetworkPolicyPeer {
        pod_selector: Some(LabelSelector {
            match_labels: Some(BTreeMap::from([
                ("app.kubernetes.io/name".to_string(), app.to_string()),
                ("app.kubernetes.io/instance".to_string(), app.to_string()),
            ])),
            match_expressions: None,
        }),
        ..Default::default()
    }
}
