//! A Database with `provider: cnpg`: a CloudNativePG `Cluster` (primary and streaming replicas, failover by its
//! operator), a Service `<name>` on the primary so Apps connect as with the builtin server, and a NetworkPolicy.

use std::collections::BTreeMap;

use capstan_model::database::{credentials_secret, Database};
use k8s_openapi::api::core::v1::{Service, ServicePort, ServiceSpec};
use k8s_openapi::api::networking::v1::{
    NetworkPolicy, NetworkPolicyIngressRule, NetworkPolicyPeer, NetworkPolicyPort, NetworkPolicySpec,
};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{LabelSelector, ObjectMeta};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use serde_json::{json, Value};

use crate::plan::PRUNE_ANNOTATION;
use crate::render::{app_peer, to_value, POSTGRES_DEFAULT_MAJOR};

/// The namespace CloudNativePG's operator runs in, let in to its instance manager.
pub const CNPG_NAMESPACE: &str = "cnpg-system";
/// The port of CloudNativePG's instance manager (status, backups).
pub const INSTANCE_MANAGER_PORT: i32 = 8000;

fn pods_of(cluster: &str) -> BTreeMap<String, String> {
    BTreeMap::from([("cnpg.io/cluster".to_string(), cluster.to_string())])
}

fn tcp(port: i32) -> NetworkPolicyPort {
    NetworkPolicyPort { port: Some(IntOrString::Int(port)), protocol: Some("TCP".into()), end_port: None }
}

/// The Cluster, the Service on its primary and the NetworkPolicy. The Cluster holds the data (CloudNativePG
/// deletes the claims with it), so it is never pruned unless `deletionPolicy: Delete`.
pub fn render_cnpg(db: &Database, labels: BTreeMap<String, String>, clients: &[String]) -> Vec<Value> {
    let name = db.metadata.name.as_str();
    let ns = db.metadata.namespace();
    let mut annotations = serde_json::Map::new();
    if db.spec.deletion_policy == capstan_model::ReclaimPolicy::Retain {
        annotations.insert(PRUNE_ANNOTATION.into(), json!("disabled"));
    }
    let major = db.spec.version.unwrap_or(POSTGRES_DEFAULT_MAJOR);
    let cluster = json!({
        "apiVersion": "postgresql.cnpg.io/v1",
        "kind": "Cluster",
        "metadata": {"name": name, "namespace": ns, "labels": labels, "annotations": annotations},
        "spec": {
            "instances": db.spec.instances.unwrap_or(3),
            "imageName": format!("ghcr.io/cloudnative-pg/postgresql:{major}"),
            "primaryUpdateStrategy": "unsupervised",
            "postgresql": {"parameters": db.spec.parameters},
            "bootstrap": {"initdb": {
                "database": db.spec.database_name(name),
                "owner": db.spec.user_name(),
                "secret": {"name": credentials_secret(name)}
            }},
            "storage": {"size": "10Gi"},
            "affinity": {"enablePodAntiAffinity": true, "topologyKey": "kubernetes.io/hostname"},
            "monitoring": {"enablePodMonitor": false}
        }
    });
    let meta = |n: &str| ObjectMeta {
        name: Some(n.to_string()),
        namespace: Some(ns.to_string()),
        labels: Some(labels.clone()),
        ..Default::default()
    };
    let mut primary = pods_of(name);
    primary.insert("cnpg.io/instanceRole".into(), "primary".into());
    let svc = Service {
        metadata: meta(name),
        spec: Some(ServiceSpec {
            type_: Some("ClusterIP".into()),
            selector: Some(primary),
            ports: Some(vec![ServicePort {
                name: Some("postgres".into()),
                port: 5432,
                target_port: Some(IntOrString::Int(5432)),
                protocol: Some("TCP".into()),
                ..Default::default()
            }]),
            ..Default::default()
        }),
        status: None,
    };
    let instances = NetworkPolicyPeer {
        pod_selector: Some(LabelSelector { match_labels: Some(pods_of(name)), match_expressions: None }),
        ..Default::default()
    };
    let operator = NetworkPolicyPeer {
        namespace_selector: Some(LabelSelector {
            match_labels: Some(BTreeMap::from([(
                "kubernetes.io/metadata.name".to_string(),
                CNPG_NAMESPACE.to_string(),
            )])),
            match_expressions: None,
        }),
        ..Default::default()
    };
    let mut ingress = vec![NetworkPolicyIngressRule {
        from: Some(vec![instances, operator]),
        ports: Some(vec![tcp(5432), tcp(INSTANCE_MANAGER_PORT)]),
    }];
    if !clients.is_empty() {
        ingress.push(NetworkPolicyIngressRule {
            from: Some(clients.iter().map(|a| app_peer(a)).collect()),
            ports: Some(vec![tcp(5432)]),
        });
    }
    let policy = NetworkPolicy {
        metadata: meta(&format!("{name}-allow")),
        spec: Some(NetworkPolicySpec {
            pod_selector: Some(LabelSelector { match_labels: Some(pods_of(name)), match_expressions: None }),
            policy_types: Some(vec!["Ingress".into()]),
            ingress: Some(ingress),
            egress: None,
        }),
    };
    vec![cluster, to_value(&svc), to_value(&policy)]
}

#[cfg(test)]
mod tests {
    use capstan_model::{parse_manifests, Resource};

    use crate::render::{credentials, render};

    fn resources(yaml: &str) -> Vec<Resource> {
        parse_manifests("db.yaml", yaml).unwrap_or_else(|d| panic!("{d}")).into_iter().map(|m| m.resource).collect()
    }

    const DB: &str = "apiVersion: capstan.dev/v1alpha1
kind: Database
metadata: {name: jira-db, namespace: atlassian}
spec: {provider: cnpg, version: 15, parameters: {max_connections: '300'}}
---
apiVersion: capstan.dev/v1alpha1
kind: App
metadata: {name: jira, namespace: atlassian}
spec:
  run: {image: atlassian/jira-software:9.12}
  databaseRef: {name: jira-db}
";

    #[test]
    fn a_cnpg_database_is_a_cluster_behind_the_same_service_name() {
        let rs = resources(DB);
        let objs = render(&rs).expect("render");
        let cluster = objs.iter().find(|o| o["kind"] == "Cluster").expect("a CloudNativePG Cluster");
        assert_eq!(cluster["apiVersion"], "postgresql.cnpg.io/v1");
        assert_eq!(cluster["spec"]["instances"], 3);
        assert_eq!(cluster["spec"]["imageName"], "ghcr.io/cloudnative-pg/postgresql:15");
        assert_eq!(cluster["spec"]["postgresql"]["parameters"]["max_connections"], "300");
        assert_eq!(cluster["spec"]["bootstrap"]["initdb"]["database"], "jira_db");
        assert_eq!(cluster["spec"]["bootstrap"]["initdb"]["secret"]["name"], "jira-db-credentials");
        assert_eq!(cluster["metadata"]["annotations"]["capstan.dev/prune"], "disabled", "it holds the data");
        assert!(
            objs.iter().all(|o| o["kind"] != "StatefulSet" || o["metadata"]["name"] == "jira"),
            "no builtin server"
        );
        let svc = objs.iter().find(|o| o["kind"] == "Service" && o["metadata"]["name"] == "jira-db").expect("service");
        assert_eq!(svc["spec"]["selector"]["cnpg.io/instanceRole"], "primary");
        let policy = objs.iter().find(|o| o["metadata"]["name"] == "jira-db-allow").expect("policy");
        let text = policy.to_string();
        assert!(text.contains("cnpg-system") && text.contains("8000"), "the operator reaches its instance manager");
        assert_eq!(
            policy["spec"]["ingress"][1]["from"][0]["podSelector"]["matchLabels"]["app.kubernetes.io/name"],
            "jira"
        );
        let secret = &credentials(&rs, || "fixed".into())[0];
        assert_eq!(secret["type"], "kubernetes.io/basic-auth");
        assert_eq!(secret["stringData"]["username"], "app");
        assert_eq!(secret["stringData"]["password"], "fixed", "the password comes from the caller: rendering is pure");
    }

    #[test]
    fn instances_belong_to_cnpg() {
        let bad = "apiVersion: capstan.dev/v1alpha1\nkind: Database\nmetadata: {name: db}\nspec: {instances: 3}\n";
        let err = parse_manifests("db.yaml", bad).expect_err("refused").to_string();
        assert!(err.contains("spec.instances") && err.contains("provider: cnpg"), "{err}");
    }
}
