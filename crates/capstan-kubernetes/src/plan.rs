//! What applying means, without a cluster: which API each kind lives at, the order objects are applied and pruned
//! in, the inventory of what a Sync applied, what may be pruned, and each kind's health read off its status.

use std::collections::BTreeSet;

use serde::{Deserialize, Serialize};
use serde_json::Value;

/// Objects carrying this annotation with value `disabled` are never pruned (claims, namespaces, credentials).
pub const PRUNE_ANNOTATION: &str = "capstan.dev/prune";
/// The label that marks what Capstan manages; prune leaves alone whatever lacks it.
pub const MANAGED_BY: (&str, &str) = ("app.kubernetes.io/managed-by", "capstan");

/// Where a kind is served and when it is applied.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct KindInfo {
    pub api_version: &'static str,
    pub kind: &'static str,
    /// The resource name in URLs.
    pub plural: &'static str,
    pub namespaced: bool,
    /// Lower ranks are applied first and pruned last.
    pub rank: u8,
}

const fn k(
    api_version: &'static str,
    kind: &'static str,
    plural: &'static str,
    namespaced: bool,
    rank: u8,
) -> KindInfo {
    KindInfo { api_version, kind, plural, namespaced, rank }
}

/// Every kind Capstan renders, applies or reads.
pub const KINDS: &[KindInfo] = &[
    k("v1", "Namespace", "namespaces", false, 0),
    k("apiextensions.k8s.io/v1", "CustomResourceDefinition", "customresourcedefinitions", false, 1),
    k("v1", "ServiceAccount", "serviceaccounts", true, 2),
    k("rbac.authorization.k8s.io/v1", "ClusterRole", "clusterroles", false, 2),
    k("rbac.authorization.k8s.io/v1", "ClusterRoleBinding", "clusterrolebindings", false, 2),
    k("rbac.authorization.k8s.io/v1", "Role", "roles", true, 2),
    k("rbac.authorization.k8s.io/v1", "RoleBinding", "rolebindings", true, 2),
    k("v1", "Secret", "secrets", true, 3),
    k("v1", "ConfigMap", "configmaps", true, 3),
    k("v1", "PersistentVolumeClaim", "persistentvolumeclaims", true, 4),
    k("v1", "Service", "services", true, 5),
    k("apps/v1", "StatefulSet", "statefulsets", true, 6),
    k("apps/v1", "Deployment", "deployments", true, 6),
    k("batch/v1", "Job", "jobs", true, 6),
    k("v1", "Pod", "pods", true, 6),
    k("postgresql.cnpg.io/v1", "Cluster", "clusters", true, 6),
    k("policy/v1", "PodDisruptionBudget", "poddisruptionbudgets", true, 7),
    k("autoscaling/v2", "HorizontalPodAutoscaler", "horizontalpodautoscalers", true, 7),
    k("networking.k8s.io/v1", "Ingress", "ingresses", true, 7),
    k("networking.k8s.io/v1", "NetworkPolicy", "networkpolicies", true, 7),
    k("gateway.networking.k8s.io/v1", "Gateway", "gateways", true, 7),
    k("gateway.networking.k8s.io/v1", "HTTPRoute", "httproutes", true, 7),
    k("gateway.networking.k8s.io/v1", "TLSRoute", "tlsroutes", true, 7),
    k("gateway.networking.k8s.io/v1alpha2", "TLSRoute", "tlsroutes", true, 7),
    k("gateway.networking.k8s.io/v1alpha3", "TLSRoute", "tlsroutes", true, 7),
    k("gateway.networking.k8s.io/v1alpha2", "TCPRoute", "tcproutes", true, 7),
    k("gateway.networking.k8s.io/v1", "TCPRoute", "tcproutes", true, 7),
    k("gateway.networking.k8s.io/v1", "ReferenceGrant", "referencegrants", true, 7),
    k("gateway.networking.k8s.io/v1beta1", "ReferenceGrant", "referencegrants", true, 7),
    k("gateway.networking.k8s.io/v1alpha2", "ReferenceGrant", "referencegrants", true, 7),
    k("gateway.networking.k8s.io/v1", "BackendTLSPolicy", "backendtlspolicies", true, 7),
    k("gateway.networking.k8s.io/v1alpha3", "BackendTLSPolicy", "backendtlspolicies", true, 7),
    // After the Secrets a CA Issuer reads; before the Gateways that serve the Certificates' Secrets.
    k("cert-manager.io/v1", "Issuer", "issuers", true, 6),
    k("cert-manager.io/v1", "ClusterIssuer", "clusterissuers", false, 6),
    k("cert-manager.io/v1", "Certificate", "certificates", true, 6),
    k("coordination.k8s.io/v1", "Lease", "leases", true, 8),
];

/// Capstan's own kinds as a cluster serves them, from the model's one declaration of kinds (applied last).
fn capstan_kinds() -> impl Iterator<Item = KindInfo> {
    capstan_model::Kind::ALL.iter().filter(|k| k.is_custom_resource()).map(|k| KindInfo {
        api_version: capstan_model::API_VERSION,
        kind: k.name(),
        plural: k.plural(),
        namespaced: k.namespaced(),
        rank: 9,
    })
}

/// Every kind Capstan applies to a cluster: Kubernetes' own ([`KINDS`]) and Capstan's custom resources.
pub fn all_kinds() -> impl Iterator<Item = KindInfo> {
    KINDS.iter().copied().chain(capstan_kinds())
}

/// The kind's API, if Capstan knows it.
pub fn kind_info(api_version: &str, kind: &str) -> Option<KindInfo> {
    all_kinds().find(|k| k.api_version == api_version && k.kind == kind)
}

/// One object in a cluster, as an inventory names it.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ObjectRef {
    pub api_version: String,
    pub kind: String,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub namespace: String,
    pub name: String,
}

/// Why an object cannot be applied before it reaches the cluster.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PlanError {
    #[error("object {index}: `{field}` is missing")]
    Missing { index: usize, field: &'static str },
    #[error("{0}: Capstan does not know where this kind is served")]
    UnknownKind(ObjectRef),
}

impl ObjectRef {
    /// The reference of a rendered object.
    pub fn of(obj: &Value) -> Option<ObjectRef> {
        Some(ObjectRef {
            api_version: obj["apiVersion"].as_str()?.to_string(),
            kind: obj["kind"].as_str()?.to_string(),
            namespace: obj["metadata"]["namespace"].as_str().unwrap_or("").to_string(),
            name: obj["metadata"]["name"].as_str()?.to_string(),
        })
    }

    /// The reference of an object named by kind alone (a Sync's inventory or health checks), if Capstan knows the
    /// kind.
    pub fn for_kind(kind: &str, namespace: &str, name: &str) -> Option<ObjectRef> {
        all_kinds().find(|k| k.kind == kind).map(|k| ObjectRef {
            api_version: k.api_version.into(),
            kind: kind.into(),
            namespace: if k.namespaced { namespace.into() } else { String::new() },
            name: name.into(),
        })
    }

    pub fn info(&self) -> Option<KindInfo> {
        kind_info(&self.api_version, &self.kind)
    }

    fn rank(&self) -> u8 {
        self.info().map(|i| i.rank).unwrap_or(u8::MAX)
    }
}

impl std::fmt::Display for ObjectRef {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        if self.namespace.is_empty() {
            write!(f, "{}/{}", self.kind, self.name)
        } else {
            write!(f, "{} {}/{}", self.kind, self.namespace, self.name)
        }
    }
}

/// What one apply does: the objects in the order they are applied, and what to prune, in the order it is deleted.
#[derive(Debug, Clone, PartialEq)]
pub struct Plan {
    pub apply: Vec<(ObjectRef, Value)>,
    pub prune: Vec<ObjectRef>,
}

/// Orders the desired objects (namespaces and CRDs first, workloads before what points at them) and lists what the
/// previous inventory holds that is no longer desired (deleted in the reverse order).
pub fn plan(desired: Vec<Value>, previous: &BTreeSet<ObjectRef>) -> Result<Plan, PlanError> {
    let mut apply = Vec::with_capacity(desired.len());
    for (index, obj) in desired.into_iter().enumerate() {
        for (field, present) in [
            ("apiVersion", obj["apiVersion"].is_string()),
            ("kind", obj["kind"].is_string()),
            ("metadata.name", obj["metadata"]["name"].is_string()),
        ] {
            if !present {
                return Err(PlanError::Missing { index, field });
            }
        }
        let r = ObjectRef::of(&obj).ok_or(PlanError::Missing { index, field: "metadata" })?;
        if r.info().is_none() {
            return Err(PlanError::UnknownKind(r));
        }
        apply.push((r, obj));
    }
    apply.sort_by_key(|(r, _)| r.rank());
    let wanted: BTreeSet<&ObjectRef> = apply.iter().map(|(r, _)| r).collect();
    let mut prune: Vec<ObjectRef> = previous.iter().filter(|r| !wanted.contains(r)).cloned().collect();
    prune.sort_by_key(|r| std::cmp::Reverse(r.rank()));
    Ok(Plan { apply, prune })
}

/// Whether a live object may be pruned, and if not, why.
pub fn prunable(live: &Value) -> Result<(), String> {
    if live["metadata"]["annotations"][PRUNE_ANNOTATION].as_str() == Some("disabled") {
        return Err(format!("kept: annotated {PRUNE_ANNOTATION}: disabled (it holds data)"));
    }
    if live["metadata"]["labels"][MANAGED_BY.0].as_str() != Some(MANAGED_BY.1) {
        return Err(format!("kept: not labelled {}={}, so not Capstan's", MANAGED_BY.0, MANAGED_BY.1));
    }
    Ok(())
}

/// An object's health, read off its status as kstatus does.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Health {
    Ready,
    /// Not there yet, with what is missing.
    Progressing(String),
    /// Will not get there without a change.
    Failed(String),
}

impl Health {
    pub fn is_ready(&self) -> bool {
        matches!(self, Health::Ready)
    }
}

fn int(v: &Value) -> i64 {
    v.as_i64().unwrap_or(0)
}

fn condition<'a>(obj: &'a Value, kind: &str) -> Option<&'a Value> {
    obj["status"]["conditions"].as_array()?.iter().find(|c| c["type"].as_str() == Some(kind))
}

fn is_true(c: Option<&Value>) -> bool {
    c.is_some_and(|c| c["status"].as_str() == Some("True"))
}

fn message(c: Option<&Value>) -> String {
    c.map(|c| {
        let reason = c["reason"].as_str().unwrap_or("");
        let msg = c["message"].as_str().unwrap_or("");
        match (reason.is_empty(), msg.is_empty()) {
            (false, false) => format!("{reason}: {msg}"),
            (false, true) => reason.to_string(),
            _ => msg.to_string(),
        }
    })
    .unwrap_or_default()
}

/// The health of a live object, by kind: workloads rolled out and ready, claims bound, jobs complete, load
/// balancers given an address, CRDs established, Capstan's own kinds Ready; the rest is ready once it exists.
pub fn health(obj: &Value) -> Health {
    let kind = obj["kind"].as_str().unwrap_or("");
    let status = &obj["status"];
    let generation = int(&obj["metadata"]["generation"]);
    let observed = int(&status["observedGeneration"]);
    let stale = || Health::Progressing(format!("the controller has not seen generation {generation} yet"));
    match kind {
        "StatefulSet" => {
            if observed < generation {
                return stale();
            }
            let want = obj["spec"]["replicas"].as_i64().unwrap_or(1);
            let partition = int(&obj["spec"]["updateStrategy"]["rollingUpdate"]["partition"]);
            let (ready, updated) = (int(&status["readyReplicas"]), int(&status["updatedReplicas"]));
            if ready < want {
                return Health::Progressing(format!("{ready}/{want} replicas ready"));
            }
            if updated < want - partition {
                return Health::Progressing(format!("{updated}/{} replicas updated", want - partition));
            }
            if partition == 0
                && status["updateRevision"].is_string()
                && status["currentRevision"] != status["updateRevision"]
            {
                return Health::Progressing(format!(
                    "rolling out revision {}",
                    status["updateRevision"].as_str().unwrap_or("")
                ));
            }
            Health::Ready
        }
        "Deployment" => {
            if observed < generation {
                return stale();
            }
            let progressing = condition(obj, "Progressing");
            if progressing.is_some_and(|c| c["reason"].as_str() == Some("ProgressDeadlineExceeded")) {
                return Health::Failed(message(progressing));
            }
            let want = obj["spec"]["replicas"].as_i64().unwrap_or(1);
            let (updated, available) = (int(&status["updatedReplicas"]), int(&status["availableReplicas"]));
            if updated < want {
                return Health::Progressing(format!("{updated}/{want} replicas updated"));
            }
            if available < want {
                return Health::Progressing(format!("{available}/{want} replicas available"));
            }
            Health::Ready
        }
        "PersistentVolumeClaim" => match status["phase"].as_str() {
            Some("Bound") => Health::Ready,
            Some("Lost") => Health::Failed("the claim lost its volume".into()),
            other => Health::Progressing(format!("claim is {}, not Bound", other.unwrap_or("Pending"))),
        },
        "Job" => {
            if is_true(condition(obj, "Complete")) {
                Health::Ready
            } else if is_true(condition(obj, "Failed")) {
                Health::Failed(message(condition(obj, "Failed")))
            } else {
                Health::Progressing(format!(
                    "{} active, {} succeeded",
                    int(&status["active"]),
                    int(&status["succeeded"])
                ))
            }
        }
        "Pod" => match status["phase"].as_str() {
            Some("Succeeded") => Health::Ready,
            Some("Failed") => Health::Failed(
                [status["reason"].as_str(), status["message"].as_str()]
                    .into_iter()
                    .flatten()
                    .collect::<Vec<_>>()
                    .join(": "),
            ),
            Some("Running") if is_true(condition(obj, "Ready")) => Health::Ready,
            Some(phase) => Health::Progressing(format!("pod is {phase}, not Ready")),
            None => Health::Progressing("pod is not scheduled yet".into()),
        },
        "Service" if obj["spec"]["type"].as_str() == Some("LoadBalancer") => {
            if status["loadBalancer"]["ingress"].as_array().is_some_and(|a| !a.is_empty()) {
                Health::Ready
            } else {
                Health::Progressing("waiting for a load balancer address".into())
            }
        }
        "Namespace" if status["phase"].as_str() == Some("Terminating") => {
            Health::Progressing("namespace is terminating".into())
        }
        "CustomResourceDefinition" => {
            if is_true(condition(obj, "Established")) {
                Health::Ready
            } else {
                Health::Progressing("CRD is not established yet".into())
            }
        }
        "HTTPRoute" | "TLSRoute" | "TCPRoute" => {
            let refused = status["parents"].as_array().into_iter().flatten().find_map(|p| {
                p["conditions"]
                    .as_array()?
                    .iter()
                    .find(|c| c["type"].as_str() == Some("Accepted") && c["status"].as_str() == Some("False"))
            });
            match refused {
                Some(c) => Health::Failed(format!("not accepted by its Gateway: {}", message(Some(c)))),
                None => Health::Ready,
            }
        }
        // cert-manager's: Ready when it says so; a Certificate whose issuance failed is Failed with its message.
        "Issuer" | "ClusterIssuer" | "Certificate"
            if obj["apiVersion"].as_str().is_some_and(|v| v.starts_with("cert-manager.io/")) =>
        {
            let ready = condition(obj, "Ready");
            let issuing = condition(obj, "Issuing");
            // cert-manager keeps the generation it saw on each condition: a Ready from before a change is stale.
            if ready.is_some_and(|c| c["observedGeneration"].as_i64().is_some_and(|g| g < generation)) {
                return stale();
            }
            if is_true(ready) {
                Health::Ready
            } else if issuing.is_some_and(|c| c["reason"].as_str() == Some("Failed")) {
                Health::Failed(message(issuing))
            } else if ready.is_some_and(|c| c["status"].as_str() == Some("False")) && kind != "Certificate" {
                Health::Failed(message(ready))
            } else {
                Health::Progressing(ready.map_or_else(|| "waiting for cert-manager".to_string(), |c| message(Some(c))))
            }
        }
        "Cluster" if obj["apiVersion"].as_str().is_some_and(|v| v.starts_with("postgresql.cnpg.io/")) => {
            if is_true(condition(obj, "Ready")) {
                Health::Ready
            } else {
                Health::Progressing(status["phase"].as_str().unwrap_or("waiting for CloudNativePG").to_string())
            }
        }
        _ if obj["apiVersion"].as_str().is_some_and(|v| v.starts_with("capstan.dev/")) => {
            let ready = condition(obj, "Ready");
            match ready {
                Some(c) if is_true(Some(c)) => Health::Ready,
                Some(c) => Health::Progressing(message(Some(c))),
                None => Health::Progressing("waiting for the operator".into()),
            }
        }
        _ => Health::Ready,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn sts(status: Value) -> Value {
        json!({"apiVersion": "apps/v1", "kind": "StatefulSet", "metadata": {"name": "jira", "generation": 2},
               "spec": {"replicas": 3, "updateStrategy": {"rollingUpdate": {"partition": 0}}}, "status": status})
    }

    #[test]
    fn statefulset_health_follows_its_rollout() {
        assert_eq!(
            health(&sts(json!({"observedGeneration": 1}))),
            Health::Progressing("the controller has not seen generation 2 yet".into())
        );
        assert_eq!(
            health(&sts(json!({"observedGeneration": 2, "readyReplicas": 2}))),
            Health::Progressing("2/3 replicas ready".into())
        );
        let rolling = json!({"observedGeneration": 2, "readyReplicas": 3, "updatedReplicas": 3,
                             "currentRevision": "a", "updateRevision": "b"});
        assert_eq!(health(&sts(rolling)), Health::Progressing("rolling out revision b".into()));
        let done = json!({"observedGeneration": 2, "readyReplicas": 3, "updatedReplicas": 3,
                          "currentRevision": "b", "updateRevision": "b"});
        assert!(health(&sts(done)).is_ready());
    }

    #[test]
    fn cert_managers_kinds_are_healthy_when_ready() {
        let obj = |kind: &str, conditions: Value| json!({"apiVersion": "cert-manager.io/v1", "kind": kind, "status": {"conditions": conditions}});
        assert!(health(&obj("Certificate", json!([{"type": "Ready", "status": "True"}]))).is_ready());
        let mut changed = obj("Certificate", json!([{"type": "Ready", "status": "True", "observedGeneration": 1}]));
        changed["metadata"] = json!({"generation": 2});
        assert_eq!(health(&changed), Health::Progressing("the controller has not seen generation 2 yet".into()));
        assert_eq!(
            health(&obj(
                "Certificate",
                json!([{"type": "Ready", "status": "False", "message": "Issuing"},
                                               {"type": "Issuing", "status": "False", "reason": "Failed", "message": "the CA is gone"}])
            )),
            Health::Failed("Failed: the CA is gone".into())
        );
        assert_eq!(
            health(&obj("Certificate", json!([{"type": "Issuing", "status": "True", "reason": "DoesNotExist"}]))),
            Health::Progressing("waiting for cert-manager".into())
        );
        assert_eq!(
            health(&obj("Issuer", json!([{"type": "Ready", "status": "False", "message": "secret not found"}]))),
            Health::Failed("secret not found".into())
        );
    }

    #[test]
    fn other_kinds() {
        let job = json!({"kind": "Job", "status": {"conditions": [{"type": "Failed", "status": "True", "reason": "BackoffLimitExceeded", "message": "Job has reached the specified backoff limit"}]}});
        assert_eq!(
            health(&job),
            Health::Failed("BackoffLimitExceeded: Job has reached the specified backoff limit".into())
        );
        assert!(!health(&json!({"kind": "PersistentVolumeClaim", "status": {"phase": "Pending"}})).is_ready());
        assert!(health(&json!({"kind": "PersistentVolumeClaim", "status": {"phase": "Bound"}})).is_ready());
        assert!(!health(&json!({"kind": "Service", "spec": {"type": "LoadBalancer"}})).is_ready());
        assert!(health(&json!({"kind": "Service", "spec": {"type": "ClusterIP"}})).is_ready());
        let dep = json!({"kind": "Deployment", "metadata": {"generation": 1}, "spec": {"replicas": 2},
            "status": {"observedGeneration": 1, "conditions": [{"type": "Progressing", "status": "False", "reason": "ProgressDeadlineExceeded", "message": "ReplicaSet \"m\" has timed out progressing."}]}});
        assert!(matches!(health(&dep), Health::Failed(_)));
        let app = json!({"apiVersion": "capstan.dev/v1alpha1", "kind": "App"});
        assert_eq!(health(&app), Health::Progressing("waiting for the operator".into()));
    }

    #[test]
    fn plan_orders_and_prunes() {
        let obj = |kind: &str, api: &str, name: &str| json!({"apiVersion": api, "kind": kind, "metadata": {"name": name, "namespace": "team"}});
        let desired = vec![
            obj("NetworkPolicy", "networking.k8s.io/v1", "a"),
            obj("StatefulSet", "apps/v1", "a"),
            obj("Namespace", "v1", "team"),
            obj("Service", "v1", "a"),
        ];
        let old = |kind: &str, api: &str, name: &str| ObjectRef {
            api_version: api.into(),
            kind: kind.into(),
            namespace: "team".into(),
            name: name.into(),
        };
        let previous: BTreeSet<ObjectRef> =
            [old("Service", "v1", "a"), old("Service", "v1", "gone"), old("StatefulSet", "apps/v1", "gone")].into();
        let p = plan(desired, &previous).expect("plan");
        let kinds: Vec<&str> = p.apply.iter().map(|(r, _)| r.kind.as_str()).collect();
        assert_eq!(kinds, ["Namespace", "Service", "StatefulSet", "NetworkPolicy"]);
        assert_eq!(p.prune, vec![old("StatefulSet", "apps/v1", "gone"), old("Service", "v1", "gone")]);
        let unknown = plan(vec![obj("Widget", "example.com/v1", "w")], &BTreeSet::new());
        assert!(matches!(unknown, Err(PlanError::UnknownKind(_))));
        let nameless = plan(vec![json!({"apiVersion": "v1", "kind": "Service", "metadata": {}})], &BTreeSet::new());
        assert_eq!(nameless, Err(PlanError::Missing { index: 0, field: "metadata.name" }));
    }

    #[test]
    fn prune_keeps_data_and_foreign_objects() {
        let claim = json!({"metadata": {"labels": {"app.kubernetes.io/managed-by": "capstan"}, "annotations": {"capstan.dev/prune": "disabled"}}});
        assert!(prunable(&claim).is_err());
        assert!(prunable(&json!({"metadata": {"labels": {}}})).is_err());
        assert!(prunable(&json!({"metadata": {"labels": {"app.kubernetes.io/managed-by": "capstan"}}})).is_ok());
    }
}
