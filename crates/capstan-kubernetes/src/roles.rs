//! The embedded runtime's roles as Kubernetes ClusterRoles, for teams that move: viewer, deployer, secrets-reader
//! and admin over Capstan's custom resources and the objects they render to, bound per namespace with a
//! RoleBinding (or everywhere with a ClusterRoleBinding), and aggregated into Kubernetes' own view, edit and admin.

use serde_json::{json, Value};

/// Capstan's custom resources (not Secret, which is Kubernetes' own there, nor Gateway API's kinds).
fn custom_resources() -> Vec<&'static str> {
    capstan_model::Kind::ALL.iter().filter(|k| k.is_custom_resource()).map(|k| k.plural()).collect()
}

/// What Capstan's kinds render to, by API group: what a deployer changes when it applies them.
const RENDERED: &[(&str, &[&str])] = &[
    ("apps", &["statefulsets", "deployments"]),
    ("", &["pods", "services", "persistentvolumeclaims", "configmaps"]),
    ("networking.k8s.io", &["ingresses", "networkpolicies"]),
    (
        "gateway.networking.k8s.io",
        &["gateways", "httproutes", "tlsroutes", "tcproutes", "referencegrants", "backendtlspolicies"],
    ),
    ("cert-manager.io", &["issuers", "certificates"]),
    ("policy", &["poddisruptionbudgets"]),
    ("autoscaling", &["horizontalpodautoscalers"]),
    ("postgresql.cnpg.io", &["clusters"]),
];

const READ: &[&str] = &["get", "list", "watch"];
const WRITE: &[&str] = &["create", "update", "patch", "delete", "deletecollection"];

/// The ClusterRole of one embedded role, by its name (`viewer`, `deployer`, `secrets-reader`, `admin`); `None` for
/// another name.
pub fn cluster_role(role: &str) -> Option<Value> {
    let crs = custom_resources();
    let statuses: Vec<String> = crs.iter().map(|r| format!("{r}/status")).collect();
    let read_all = || {
        let mut rules = vec![json!({"apiGroups": ["capstan.dev"], "resources": crs, "verbs": READ})];
        rules.push(json!({"apiGroups": ["capstan.dev"], "resources": statuses, "verbs": READ}));
        for (group, resources) in RENDERED {
            rules.push(json!({"apiGroups": [group], "resources": resources, "verbs": READ}));
        }
        // Logs and events, as `capstan logs` and `describe` show them.
        rules.push(json!({"apiGroups": [""], "resources": ["pods/log", "events"], "verbs": READ}));
        rules.push(json!({"apiGroups": ["events.k8s.io"], "resources": ["events"], "verbs": READ}));
        rules
    };
    let (rules, aggregate, what) = match role {
        "viewer" => (read_all(), Some("view"), "reads Capstan's objects and what they run, never Secret values"),
        "deployer" => {
            let mut rules = read_all();
            rules.push(json!({"apiGroups": ["capstan.dev"], "resources": crs, "verbs": WRITE}));
            for (group, resources) in RENDERED {
                rules.push(json!({"apiGroups": [group], "resources": resources, "verbs": WRITE}));
            }
            // Secrets are written (applied from Git), not read: as the embedded deployer.
            rules.push(
                json!({"apiGroups": [""], "resources": ["secrets"], "verbs": ["create", "update", "patch", "delete"]}),
            );
            (rules, Some("edit"), "applies, deletes, rolls out and scales; writes Secrets without reading them")
        }
        "secrets-reader" => {
            let mut rules = read_all();
            rules.push(json!({"apiGroups": [""], "resources": ["secrets"], "verbs": READ}));
            (rules, None, "reads Capstan's objects and Secret values")
        }
        "admin" => {
            let mut rules = vec![json!({"apiGroups": ["capstan.dev"], "resources": ["*"], "verbs": ["*"]})];
            for (group, resources) in RENDERED {
                rules.push(json!({"apiGroups": [group], "resources": resources, "verbs": ["*"]}));
            }
            rules.push(
                json!({"apiGroups": [""], "resources": ["secrets", "pods/log", "pods/exec", "events"], "verbs": ["*"]}),
            );
            (rules, Some("admin"), "everything Capstan does, Secrets included")
        }
        _ => return None,
    };
    let mut labels = json!({"app.kubernetes.io/managed-by": "capstan", "capstan.dev/role": role});
    if let Some(a) = aggregate {
        labels[format!("rbac.authorization.k8s.io/aggregate-to-{a}")] = json!("true");
    }
    Some(json!({
        "apiVersion": "rbac.authorization.k8s.io/v1",
        "kind": "ClusterRole",
        "metadata": {
            "name": format!("capstan-{role}"),
            "labels": labels,
            "annotations": {"capstan.dev/description": format!("Capstan's {role}: {what}. Bind it in a namespace \
                with a RoleBinding, or everywhere with a ClusterRoleBinding.")},
        },
        "rules": rules,
    }))
}

/// The four ClusterRoles, in the order the roles grow.
pub fn cluster_roles() -> Vec<Value> {
    ["viewer", "deployer", "secrets-reader", "admin"].iter().filter_map(|r| cluster_role(r)).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn allows(role: &Value, group: &str, resource: &str, verb: &str) -> bool {
        role["rules"].as_array().unwrap().iter().any(|r| {
            let has = |field: &str, v: &str| r[field].as_array().unwrap().iter().any(|x| x == v || x == "*");
            has("apiGroups", group) && has("resources", resource) && has("verbs", verb)
        })
    }

    #[test]
    fn the_roles_grant_on_kubernetes_what_they_grant_embedded() {
        let roles = cluster_roles();
        assert_eq!(roles.len(), 4);
        let [viewer, deployer, reader, admin] = [&roles[0], &roles[1], &roles[2], &roles[3]];
        for role in &roles {
            assert!(allows(role, "capstan.dev", "apps", "get") && allows(role, "", "pods/log", "get"), "{role}");
            assert!(allows(role, "apps", "statefulsets", "watch"));
        }
        // Secret values: only the secrets-reader and the admin.
        assert!(!allows(viewer, "", "secrets", "get") && !allows(deployer, "", "secrets", "get"));
        assert!(allows(reader, "", "secrets", "get") && allows(admin, "", "secrets", "list"));
        assert!(allows(deployer, "", "secrets", "patch"), "a deployer applies Secrets from Git");
        // Changes: the deployer and the admin.
        assert!(!allows(viewer, "capstan.dev", "apps", "patch") && !allows(reader, "capstan.dev", "apps", "delete"));
        assert!(
            allows(deployer, "capstan.dev", "databases", "delete") && allows(admin, "capstan.dev", "syncs", "create")
        );
        assert!(!allows(deployer, "", "pods/exec", "create") && allows(admin, "", "pods/exec", "create"));
        assert_eq!(viewer["metadata"]["labels"]["rbac.authorization.k8s.io/aggregate-to-view"], "true");
        assert_eq!(cluster_role("root"), None);
    }
}
