//! The renderer against a golden file, typed round-trips through k8s-openapi, and the choices an expert makes.
#![allow(clippy::unwrap_used, clippy::expect_used)] // a test: a failed step is the failure it reports

use capstan_kubernetes::render::{render, render_app, render_with, RenderOptions};
use capstan_model::gitops::EntryPoints;
use capstan_model::{parse_manifests, Resource};
use serde_json::Value;

const WEB: &str = "apiVersion: capstan.dev/v1alpha1
kind: App
metadata:
  name: teamboard
  namespace: team
spec:
  replicas: 2
  run:
    image: registry.example.com/teamboard:2.0
    command: [teamboard]
    env: {RUST_LOG: info}
  ports:
    - {name: http}
    - {name: ssh}
  probes:
    readiness: {http: {path: /status, port: http}, periodSeconds: 5}
    liveness: {tcp: {port: http}}
  resources: {memory: 512Mi, cpu: 500m}
  expose:
    - {port: 443, sticky: {cookie: {name: ROUTE, maxAge: 3600}}, maxBodySize: 250Mi, drainSeconds: 20}
    - {name: ssh, port: 22, protocol: tcp, targetPort: ssh, drainSeconds: 20}
  update: {partition: 1}
  volumes:
    - {name: index, scope: replica, env: INDEX_DIR, size: 5Gi}
    - {name: attachments, scope: shared, env: SHARED_DIR, size: 50Gi}
  metrics: {port: http}
  databaseRef: {name: teamboard-db}
---
apiVersion: capstan.dev/v1alpha1
kind: Database
metadata:
  name: teamboard-db
  namespace: team
spec:
  parameters: {max_connections: \"200\"}
";

fn app(yaml: &str) -> Resource {
    parse_manifests("web.yaml", yaml).unwrap_or_else(|d| panic!("{d}")).remove(0).resource
}

fn all(yaml: &str) -> Vec<Resource> {
    parse_manifests("web.yaml", yaml).unwrap_or_else(|d| panic!("{d}")).into_iter().map(|m| m.resource).collect()
}

fn kinds(objs: &[Value]) -> Vec<String> {
    objs.iter()
        .map(|o| format!("{}/{}", o["kind"].as_str().unwrap(), o["metadata"]["name"].as_str().unwrap()))
        .collect()
}

/// Compares a rendering with `tests/golden/<name>`; `UPDATE_GOLDEN=1` rewrites it.
fn golden(name: &str, yaml: &str) {
    let objs = render(&all(yaml)).unwrap();
    let text: String = objs.iter().map(capstan_model::yaml::to_yaml_string).collect();
    let golden = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/golden").join(name);
    if std::env::var_os("UPDATE_GOLDEN").is_some() {
        std::fs::write(&golden, &text).unwrap();
    }
    let want = std::fs::read_to_string(&golden).expect("golden file (UPDATE_GOLDEN=1 writes it)");
    assert_eq!(text, want, "the rendering of {name} changed; review it and run with UPDATE_GOLDEN=1");
}

#[test]
fn matches_the_golden_file() {
    golden("teamboard.yaml", WEB);
}

/// The HA stack as it runs on a cluster: Jira Data Center with a CloudNativePG database (examples/kubernetes).
#[test]
fn the_ha_stack_on_a_cluster_matches_its_golden_file() {
    golden("atlassian.yaml", include_str!("../../../examples/kubernetes/atlassian.yaml"));
}

/// An ACME ClusterIssuer, as a platform team writes one for every namespace.
const CLUSTER_ISSUER: &str = "apiVersion: cert-manager.io/v1
kind: ClusterIssuer
metadata: {name: letsencrypt}
spec:
  acme:
    server: https://acme-v02.api.letsencrypt.org/directory
    email: ops@example.com
    privateKeySecretRef: {name: letsencrypt-account}
    solvers: [{http01: {gatewayHTTPRoute: {parentRefs: [{name: web, namespace: front, sectionName: http}]}}}]
";

/// cert-manager's objects for the cluster's cert-manager (examples/certificates and a ClusterIssuer): as written.
#[test]
fn cert_manager_objects_match_their_golden_file() {
    // A cluster runs an image where this machine runs a command.
    let example = include_str!("../../../examples/certificates/certificates.yaml")
        .replace("    command: [capstan-hello]", "    image: registry.example.com/hello:1.0");
    golden("cert-manager.yaml", &format!("{example}---\n{CLUSTER_ISSUER}"));
}

#[test]
fn every_object_round_trips_through_its_k8s_openapi_type() {
    use k8s_openapi::api::{apps::v1::StatefulSet, core::v1::*, networking::v1::*, policy::v1::PodDisruptionBudget};
    fn check<T: serde::de::DeserializeOwned + serde::Serialize>(v: &Value) {
        let typed: T = serde_json::from_value(v.clone()).unwrap_or_else(|e| panic!("{e}: {v}"));
        let mut back = serde_json::to_value(&typed).unwrap();
        back["apiVersion"] = v["apiVersion"].clone();
        back["kind"] = v["kind"].clone();
        assert_eq!(&back, v, "no field lost or unknown");
    }
    let old = RenderOptions { entry_points: EntryPoints::ingress("nginx") };
    let objects = render(&all(WEB)).unwrap().into_iter().chain(render_with(&all(WEB), &old).unwrap());
    let mut seen = std::collections::BTreeSet::new();
    for o in objects {
        seen.insert(o["kind"].as_str().unwrap().to_string());
        match o["kind"].as_str().unwrap() {
            "StatefulSet" => check::<StatefulSet>(&o),
            "Service" => check::<Service>(&o),
            "Ingress" => check::<Ingress>(&o),
            // Gateway API has no k8s-openapi type: Capstan's own typed structs for it refuse an unknown field.
            "HTTPRoute" | "TCPRoute" => {
                let typed = Resource::from_value(o.clone()).unwrap_or_else(|e| panic!("{e}: {o}"));
                assert_eq!(typed.kind().name(), o["kind"]);
                assert_eq!(typed.api_version(), o["apiVersion"], "the apiVersion a cluster serves");
            }
            "NetworkPolicy" => check::<NetworkPolicy>(&o),
            "PodDisruptionBudget" => check::<PodDisruptionBudget>(&o),
            "PersistentVolumeClaim" => check::<PersistentVolumeClaim>(&o),
            "Namespace" => check::<Namespace>(&o),
            other => panic!("unexpected kind {other}"),
        }
    }
    for k in ["HTTPRoute", "TCPRoute", "Ingress"] {
        assert!(seen.contains(k), "{k} was rendered and checked: {seen:?}");
    }
}

#[test]
fn what_an_expert_writes() {
    let objs = render(&all(WEB)).unwrap();
    assert_eq!(
        kinds(&objs),
        [
            "Namespace/team",
            "NetworkPolicy/default-deny-ingress",
            "PersistentVolumeClaim/teamboard-attachments",
            "StatefulSet/teamboard",
            "Service/teamboard",
            "Service/teamboard-headless",
            "HTTPRoute/teamboard",
            "TCPRoute/teamboard-ssh",
            "PodDisruptionBudget/teamboard",
            "NetworkPolicy/teamboard-allow",
            "StatefulSet/teamboard-db-postgres",
            "Service/teamboard-db",
            "NetworkPolicy/teamboard-db-allow",
        ]
    );
    let sts = &objs[3];
    let pod = &sts["spec"]["template"]["spec"];
    let c = &pod["containers"][0];
    assert_eq!(sts["spec"]["updateStrategy"]["rollingUpdate"]["partition"], 1);
    assert_eq!(sts["spec"]["volumeClaimTemplates"][0]["spec"]["accessModes"][0], "ReadWriteOnce");
    assert_eq!(sts["spec"]["persistentVolumeClaimRetentionPolicy"]["whenDeleted"], "Retain");
    assert_eq!(objs[2]["spec"]["accessModes"][0], "ReadWriteMany");
    assert_eq!(c["lifecycle"]["preStop"]["sleep"]["seconds"], 20);
    assert_eq!(pod["terminationGracePeriodSeconds"], 50, "grace covers the drain and the app's own 30 s");
    assert_eq!(c["securityContext"]["capabilities"]["drop"][0], "ALL");
    assert_eq!(c["securityContext"]["allowPrivilegeEscalation"], false);
    assert_eq!(pod["securityContext"]["seccompProfile"]["type"], "RuntimeDefault");
    assert_eq!(
        pod["affinity"]["podAntiAffinity"]["preferredDuringSchedulingIgnoredDuringExecution"][0]["podAffinityTerm"]
            ["topologyKey"],
        "kubernetes.io/hostname"
    );
    assert_eq!(c["readinessProbe"]["httpGet"]["port"], "http");
    assert_eq!(c["livenessProbe"]["tcpSocket"]["port"], "http");
    let env: Vec<String> = c["env"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| format!("{}={}", e["name"].as_str().unwrap(), e["value"].as_str().unwrap_or("<from a secret>")))
        .collect();
    assert!(env.contains(&"PORT=8080".to_string()) && env.contains(&"PORT_SSH=8081".to_string()), "{env:?}");
    assert!(env.contains(&"INDEX_DIR=/var/lib/capstan/index".to_string()), "{env:?}");
    assert_eq!(sts["spec"]["template"]["metadata"]["annotations"]["prometheus.io/port"], "8080");
    // Entry points on the cluster's default Gateway: every http listener for the http entry, the listener on
    // port 22 for the tcp one, and the Gateway's namespace let in.
    let default_gateway = serde_json::json!({"group": "gateway.networking.k8s.io", "kind": "Gateway", "name": "capstan", "namespace": "capstan-system"});
    let route = &objs[6];
    assert_eq!(route["spec"]["parentRefs"], serde_json::json!([default_gateway]));
    assert_eq!(route["spec"]["rules"][0]["backendRefs"], serde_json::json!([{"name": "teamboard", "port": 8080}]));
    assert_eq!(route["spec"]["rules"][0]["sessionPersistence"]["sessionName"], "ROUTE");
    assert!(route["spec"]["hostnames"].is_null(), "no host names: whatever the listeners serve");
    let mut on_22 = default_gateway.clone();
    on_22["port"] = serde_json::json!(22);
    assert_eq!(objs[7]["spec"]["parentRefs"], serde_json::json!([on_22]));
    assert_eq!(objs[7]["spec"]["rules"][0]["backendRefs"], serde_json::json!([{"name": "teamboard", "port": 8081}]));
    assert!(!objs.iter().any(|o| o["kind"] == "Ingress" || o["spec"]["type"] == "LoadBalancer"));
    let policy = &objs[9]["spec"]["ingress"];
    assert_eq!(policy.as_array().map(Vec::len), Some(1), "no port open to everyone: {policy}");
    assert_eq!(
        policy[0]["from"][1]["namespaceSelector"]["matchLabels"]["kubernetes.io/metadata.name"],
        "capstan-system"
    );
    assert_eq!(objs[8]["spec"]["maxUnavailable"], 1);
    assert_eq!(objs[1]["spec"]["podSelector"], serde_json::json!({}));
    for o in &objs {
        assert_eq!(o["metadata"]["labels"]["app.kubernetes.io/managed-by"], "capstan", "{}", o["metadata"]["name"]);
    }
    // The database: the official image, its password from the Secret, data kept, and only its App let in.
    assert!(
        env.contains(
            &"DATABASE_URL=postgres://app:$(DATABASE_URL_PASSWORD)@teamboard-db.team.svc:5432/teamboard_db".to_string()
        ),
        "{env:?}"
    );
    let pg = &objs[10];
    let pc = &pg["spec"]["template"]["spec"]["containers"][0];
    assert_eq!(pc["image"], "postgres:16");
    assert_eq!(pc["env"][2]["valueFrom"]["secretKeyRef"]["name"], "teamboard-db-credentials");
    assert_eq!(pc["args"], serde_json::json!(["-c", "max_connections=200"]));
    assert_eq!(pg["spec"]["persistentVolumeClaimRetentionPolicy"]["whenDeleted"], "Retain");
    let allow = &objs[12]["spec"]["ingress"][0];
    assert_eq!(allow["from"][0]["podSelector"]["matchLabels"]["app.kubernetes.io/name"], "teamboard");
    assert_eq!(allow["ports"][0]["port"], 5432);
}

/// For clusters without Gateway API: an ingress-nginx Ingress and a LoadBalancer Service, when asked for.
#[test]
fn old_clusters_get_an_ingress_and_load_balancers() {
    let old = RenderOptions { entry_points: EntryPoints::ingress("nginx") };
    let objs = render_with(&all(WEB), &old).unwrap();
    let names = kinds(&objs);
    assert_eq!(names[6..8], ["Ingress/teamboard", "Service/teamboard-ssh"]);
    assert!(!names.iter().any(|n| n.contains("Route/")), "{names:?}");
    let ingress = &objs[6]["metadata"]["annotations"];
    assert_eq!(ingress["nginx.ingress.kubernetes.io/affinity"], "cookie");
    assert_eq!(ingress["nginx.ingress.kubernetes.io/session-cookie-name"], "ROUTE");
    assert_eq!(ingress["nginx.ingress.kubernetes.io/proxy-read-timeout"], "3600");
    assert_eq!(ingress["nginx.ingress.kubernetes.io/proxy-body-size"], "250m");
    assert_eq!(objs[6]["spec"]["ingressClassName"], "nginx");
    assert!(objs[6]["spec"]["rules"][0]["host"].is_null());
    assert_eq!(objs[7]["spec"]["type"], "LoadBalancer");
    assert_eq!(objs[7]["spec"]["ports"][0]["port"], 22);
    assert_eq!(objs[7]["spec"]["selector"]["app.kubernetes.io/name"], "teamboard");
    let policy = &objs[9]["spec"]["ingress"];
    assert_eq!(
        policy[0]["from"][1]["namespaceSelector"]["matchLabels"]["kubernetes.io/metadata.name"],
        "ingress-nginx"
    );
    assert_eq!(policy[1]["ports"][0]["port"], "ssh", "the LoadBalancer's port is open to everyone");
    assert!(policy[1]["from"].is_null());

    // Host names written for the Gateway (without naming one) become the Ingress's hosts; a Gateway named by the
    // entry still wins over the Ingress.
    let hosts = WEB.replace(
        "drainSeconds: 20}\n    - {name: ssh",
        "drainSeconds: 20, gateway: {hostnames: [board.example.com, '*.board.example.com']}}\n    - {name: ssh",
    );
    let objs = render_with(&all(&hosts), &old).unwrap();
    let rules = objs[6]["spec"]["rules"].as_array().expect("rules");
    let hosts: Vec<&str> = rules.iter().filter_map(|r| r["host"].as_str()).collect();
    assert_eq!(hosts, ["board.example.com", "*.board.example.com"]);
    let named = WEB
        .replace("drainSeconds: 20}\n    - {name: ssh", "drainSeconds: 20, gateway: {name: edge}}\n    - {name: ssh");
    let objs = render_with(&all(&named), &old).unwrap();
    assert_eq!(objs[6]["kind"], "HTTPRoute");
    assert_eq!(
        objs[6]["spec"]["parentRefs"][0],
        serde_json::json!({"group": "gateway.networking.k8s.io", "kind": "Gateway", "name": "edge"})
    );
    assert_eq!(objs[7]["spec"]["type"], "LoadBalancer", "the tcp entry names no Gateway");
}

/// The cluster's Gateway is set per Sync (or by flag): entries attach to it, with the host names they give.
#[test]
fn entry_points_attach_to_the_gateway_the_cluster_names() {
    let edge = RenderOptions {
        entry_points: EntryPoints {
            gateway: Some(capstan_model::gitops::DefaultGateway {
                name: "edge".into(),
                namespace: "team".into(),
                proxy_namespace: None,
            }),
            ingress_class_name: None,
        },
    };
    let yaml = WEB.replace(
        "drainSeconds: 20}\n    - {name: ssh",
        "drainSeconds: 20, gateway: {hostnames: [board.example.com], sectionName: https}}\n    - {name: ssh",
    );
    let objs = render_with(&all(&yaml), &edge).unwrap();
    assert_eq!(
        objs[6]["spec"]["parentRefs"][0],
        serde_json::json!({"group": "gateway.networking.k8s.io", "kind": "Gateway", "name": "edge", "sectionName": "https"}),
        "a Gateway in the App's own namespace is named without one"
    );
    assert_eq!(objs[6]["spec"]["hostnames"], serde_json::json!(["board.example.com"]));
    assert_eq!(objs[7]["spec"]["parentRefs"][0]["port"], 22);
    let policy = &objs[9]["spec"]["ingress"][0]["from"];
    assert_eq!(policy[1]["namespaceSelector"]["matchLabels"]["kubernetes.io/metadata.name"], "team");
    assert_eq!(policy.as_array().map(Vec::len), Some(2), "the namespace once: {policy}");

    // Envoy Gateway runs the proxies elsewhere: that namespace is let in instead.
    let mut envoy = edge.clone();
    if let Some(g) = envoy.entry_points.gateway.as_mut() {
        g.proxy_namespace = Some("envoy-gateway-system".into());
    }
    let objs = render_with(&all(&yaml), &envoy).unwrap();
    let policy = &objs[9]["spec"]["ingress"][0]["from"];
    assert_eq!(policy[1]["namespaceSelector"]["matchLabels"]["kubernetes.io/metadata.name"], "envoy-gateway-system");

    // Bad host names and a namespace without a name are refused by field.
    for (bad, field) in [
        ("gateway: {hostnames: [Board.Example.com]}", "spec.expose[0].gateway.hostnames[0]"),
        ("gateway: {namespace: edge}", "spec.expose[0].gateway.namespace"),
        ("gateway: {name: ''}", "spec.expose[0].gateway.name"),
    ] {
        let yaml = WEB
            .replace("drainSeconds: 20}\n    - {name: ssh", &format!("drainSeconds: 20, {bad}}}\n    - {{name: ssh"));
        let err = parse_manifests("web.yaml", &yaml).map(|_| ()).unwrap_err().to_string();
        assert!(err.contains(field), "{bad}: {err}");
    }
}

/// A route written by hand to an App: the Gateway's proxies get through the App's NetworkPolicy.
#[test]
fn gateways_of_routes_written_by_hand_are_let_in() {
    let yaml = "apiVersion: capstan.dev/v1alpha1
kind: App
metadata: {name: shop, namespace: web}
spec:
  run: {image: shop:1}
  ports: [{name: http}]
---
apiVersion: capstan.dev/v1alpha1
kind: App
metadata: {name: other, namespace: web}
spec:
  run: {image: other:1}
  ports: [{name: http}]
---
apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata: {name: shop, namespace: web}
spec:
  parentRefs: [{name: public, namespace: edge}, {name: internal}]
  rules: [{backendRefs: [{name: shop, port: 8080}]}]
---
apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata: {name: copy, namespace: web}
spec:
  parentRefs: [{name: mirrors, namespace: shadowing}]
  rules: [{filters: [{type: RequestMirror, requestMirror: {backendRef: {name: other, port: 8080}}}], backendRefs: [{name: elsewhere, port: 80}]}]
---
apiVersion: gateway.networking.k8s.io/v1alpha2
kind: TCPRoute
metadata: {name: db, namespace: tcp}
spec:
  parentRefs: [{name: tcp-gw}]
  rules: [{backendRefs: [{name: shop, namespace: web, port: 8080}]}]
";
    let objs = render(&all(yaml)).unwrap();
    let peers = |app: &str| -> Vec<String> {
        let policy = objs
            .iter()
            .find(|o| o["kind"] == "NetworkPolicy" && o["metadata"]["name"] == format!("{app}-allow"))
            .expect("policy");
        policy["spec"]["ingress"][0]["from"]
            .as_array()
            .expect("peers")
            .iter()
            .filter_map(|p| p["namespaceSelector"]["matchLabels"]["kubernetes.io/metadata.name"].as_str())
            .map(String::from)
            .collect()
    };
    assert_eq!(peers("shop"), ["edge", "tcp", "web"], "each Gateway routing to shop, once");
    assert_eq!(peers("other"), ["shadowing"], "a mirror's Gateway sends it copies");
}

#[test]
fn an_app_without_an_image_is_refused_by_field() {
    let yaml = WEB.replace("    image: registry.example.com/teamboard:2.0\n", "");
    let Resource::App(a) = app(&yaml) else { panic!("an App") };
    let e = render_app(&a).unwrap_err();
    assert_eq!(e.field, "spec.run.image");
    assert!(e.to_string().starts_with("App/teamboard: field `spec.run.image`"), "{e}");
}

#[test]
fn an_entry_with_a_gateway_becomes_an_httproute() {
    let yaml = "apiVersion: capstan.dev/v1alpha1
kind: App
metadata: {name: board, namespace: web}
spec:
  replicas: 2
  run: {image: board:1}
  ports: [{name: http}]
  expose:
    - port: 80
      sticky: {cookie: {name: ROUTE, maxAge: 3600}}
      timeouts: {requestSeconds: 90}
      gateway: {name: public, namespace: gateways, sectionName: https, hostnames: [board.example.com]}
";
    let resources: Vec<Resource> =
        capstan_model::parse_manifests("b.yaml", yaml).expect("parses").into_iter().map(|m| m.resource).collect();
    let objs = capstan_kubernetes::render::render(&resources).expect("renders");
    assert!(objs.iter().all(|o| o["kind"] != "Ingress"), "the Gateway replaces the Ingress");
    let route = objs.iter().find(|o| o["kind"] == "HTTPRoute").expect("an HTTPRoute");
    assert_eq!(route["apiVersion"], "gateway.networking.k8s.io/v1");
    assert_eq!(route["metadata"]["name"], "board");
    assert_eq!(route["metadata"]["namespace"], "web");
    assert_eq!(
        route["spec"]["parentRefs"][0],
        serde_json::json!({"group": "gateway.networking.k8s.io", "kind": "Gateway", "name": "public", "namespace": "gateways", "sectionName": "https"})
    );
    assert_eq!(route["spec"]["hostnames"], serde_json::json!(["board.example.com"]));
    let rule = &route["spec"]["rules"][0];
    assert_eq!(rule["backendRefs"], serde_json::json!([{"name": "board", "port": 8080}]));
    assert_eq!(rule["timeouts"]["request"], "90s");
    assert_eq!(rule["sessionPersistence"]["sessionName"], "ROUTE");
    assert_eq!(rule["sessionPersistence"]["absoluteTimeout"], "3600s");
    let policy =
        objs.iter().find(|o| o["kind"] == "NetworkPolicy" && o["metadata"]["name"] == "board-allow").expect("policy");
    let peers = policy["spec"]["ingress"][0]["from"].as_array().expect("peers");
    assert!(peers.iter().any(|p| p["namespaceSelector"]["matchLabels"]["kubernetes.io/metadata.name"] == "gateways"));

    // A tcp entry through a Gateway: a TCPRoute, no LoadBalancer, and no port opened to everyone.
    let tcp = yaml.replace("      sticky: {cookie: {name: ROUTE, maxAge: 3600}}\n", "      protocol: tcp\n");
    let err = capstan_model::parse_manifests("b.yaml", &tcp).map(|_| ()).unwrap_err().to_string();
    assert!(err.contains("spec.expose[0].gateway.hostnames") && err.contains("tcp entry point"), "{err}");
    let tcp = tcp.replace(", hostnames: [board.example.com]", "");
    let resources: Vec<Resource> =
        capstan_model::parse_manifests("b.yaml", &tcp).expect("parses").into_iter().map(|m| m.resource).collect();
    let objs = capstan_kubernetes::render::render(&resources).expect("renders");
    let route = objs.iter().find(|o| o["kind"] == "TCPRoute").expect("a TCPRoute");
    assert_eq!(route["apiVersion"], "gateway.networking.k8s.io/v1alpha2");
    assert_eq!(route["metadata"]["name"], "board-tcp-80");
    assert_eq!(route["spec"]["parentRefs"][0]["sectionName"], "https");
    assert!(route["spec"]["parentRefs"][0]["port"].is_null(), "the listener is named: no port besides");
    assert_eq!(route["spec"]["rules"][0]["backendRefs"], serde_json::json!([{"name": "board", "port": 8080}]));
    assert!(!objs.iter().any(|o| o["spec"]["type"] == "LoadBalancer"), "the Gateway replaces the LoadBalancer");
    let policy =
        objs.iter().find(|o| o["kind"] == "NetworkPolicy" && o["metadata"]["name"] == "board-allow").expect("policy");
    let rules = policy["spec"]["ingress"].as_array().expect("rules");
    assert!(rules.iter().all(|r| r["from"].is_array()), "every rule names who may connect: {rules:?}");
}

/// TLSRoutes and TCPRoutes reach the cluster as written, in the apiVersion written (the cluster's CRDs decide).
#[test]
fn routes_of_connections_pass_through_in_the_version_written() {
    let yaml = "apiVersion: gateway.networking.k8s.io/v1alpha2
kind: TLSRoute
metadata: {name: db, namespace: data}
spec:
  parentRefs: [{name: edge, sectionName: tls}]
  hostnames: [db.example.com]
  rules: [{backendRefs: [{name: pg, port: 5432}]}]
---
apiVersion: gateway.networking.k8s.io/v1
kind: TLSRoute
metadata: {name: db-v1, namespace: data}
spec:
  parentRefs: [{name: edge}]
  hostnames: [db1.example.com]
  rules: [{backendRefs: [{name: pg, port: 5432, weight: 2}]}]
---
apiVersion: gateway.networking.k8s.io/v1alpha2
kind: TCPRoute
metadata: {name: ssh, namespace: data}
spec:
  parentRefs: [{name: edge, sectionName: ssh}]
  rules: [{backendRefs: [{name: git, port: 22}]}]
";
    let resources: Vec<Resource> =
        capstan_model::parse_manifests("r.yaml", yaml).expect("parses").into_iter().map(|m| m.resource).collect();
    let objs = capstan_kubernetes::render::render(&resources).expect("renders");
    let got: Vec<(String, String)> = objs
        .iter()
        .filter(|o| o["kind"].as_str().is_some_and(|k| k.ends_with("Route")))
        .map(|o| (o["apiVersion"].as_str().unwrap().to_string(), o["kind"].as_str().unwrap().to_string()))
        .collect();
    let want = [
        ("gateway.networking.k8s.io/v1alpha2", "TLSRoute"),
        ("gateway.networking.k8s.io/v1", "TLSRoute"),
        ("gateway.networking.k8s.io/v1alpha2", "TCPRoute"),
    ];
    assert_eq!(got, want.map(|(a, k)| (a.to_string(), k.to_string())));
    let v1 = objs.iter().find(|o| o["metadata"]["name"] == "db-v1").unwrap();
    assert_eq!(v1["spec"]["rules"][0]["backendRefs"][0]["weight"], 2);
    assert_eq!(v1["metadata"]["labels"]["app.kubernetes.io/managed-by"], "capstan", "pruned when it leaves the files");
    for o in objs.iter().filter(|o| o["kind"].as_str().is_some_and(|k| k.ends_with("Route"))) {
        let info = capstan_kubernetes::plan::kind_info(o["apiVersion"].as_str().unwrap(), o["kind"].as_str().unwrap());
        assert!(info.is_some_and(|k| k.namespaced), "the cluster plan knows {} {}", o["apiVersion"], o["kind"]);
    }
}

/// cert-manager's objects reach the cluster as written (its cert-manager issues them), labelled for pruning, in the
/// order the cluster plan applies them: after the Secrets a CA Issuer reads, before the Gateways that serve them.
#[test]
fn cert_manager_objects_pass_through_as_written() {
    let yaml = "apiVersion: cert-manager.io/v1
kind: Issuer
metadata: {name: ca, namespace: shop}
spec: {ca: {secretName: root-ca}}
---
apiVersion: cert-manager.io/v1
kind: Certificate
metadata: {name: web, namespace: shop}
spec:
  secretName: web-tls
  dnsNames: [shop.example.com]
  duration: 2160h
  renewBefore: 360h
  privateKey: {algorithm: ECDSA, size: 256, rotationPolicy: Always}
  issuerRef: {name: ca, kind: Issuer, group: cert-manager.io}
";
    let resources: Vec<Resource> =
        capstan_model::parse_manifests("c.yaml", yaml).expect("parses").into_iter().map(|m| m.resource).collect();
    let objs = capstan_kubernetes::render::render(&resources).expect("renders");
    let cert = objs.iter().find(|o| o["kind"] == "Certificate").expect("the Certificate");
    assert_eq!(cert["apiVersion"], "cert-manager.io/v1");
    let written = resources[1].to_value();
    assert_eq!(cert["spec"], written["spec"], "the spec unchanged");
    assert_eq!(cert["metadata"]["labels"]["app.kubernetes.io/managed-by"], "capstan");
    let issuer = objs.iter().find(|o| o["kind"] == "Issuer").expect("the Issuer");
    assert_eq!(issuer["spec"]["ca"]["secretName"], "root-ca");
    let rank = |api: &str, kind: &str| capstan_kubernetes::plan::kind_info(api, kind).expect("known").rank;
    assert!(rank("v1", "Secret") < rank("cert-manager.io/v1", "Issuer"));
    assert!(rank("cert-manager.io/v1", "Certificate") < rank("gateway.networking.k8s.io/v1", "Gateway"));
}

/// A ClusterIssuer reaches the cluster without a namespace (cluster-scoped there too), adds no namespace to the
/// plan, and the cluster plan applies it to the cluster's own path.
#[test]
fn a_cluster_issuer_passes_through_without_a_namespace() {
    let yaml = "apiVersion: cert-manager.io/v1
kind: ClusterIssuer
metadata: {name: letsencrypt, namespace: ignored, labels: {team: platform}}
spec:
  acme:
    server: https://acme-v02.api.letsencrypt.org/directory
    email: ops@example.com
    privateKeySecretRef: {name: letsencrypt-account}
    solvers: [{http01: {gatewayHTTPRoute: {parentRefs: [{name: web, namespace: front}]}}}]
";
    let resources: Vec<Resource> =
        capstan_model::parse_manifests("c.yaml", yaml).expect("parses").into_iter().map(|m| m.resource).collect();
    let objs = capstan_kubernetes::render::render(&resources).expect("renders");
    assert_eq!(objs.len(), 1, "no Namespace or policy for a cluster-scoped object: {objs:?}");
    let issuer = &objs[0];
    assert_eq!(
        (issuer["apiVersion"].as_str(), issuer["kind"].as_str()),
        (Some("cert-manager.io/v1"), Some("ClusterIssuer"))
    );
    assert!(issuer["metadata"].get("namespace").is_none(), "{issuer}");
    assert_eq!(issuer["metadata"]["labels"]["team"], "platform");
    assert_eq!(issuer["spec"], resources[0].to_value()["spec"], "the spec unchanged");
    let info = capstan_kubernetes::plan::kind_info("cert-manager.io/v1", "ClusterIssuer").expect("known");
    assert!(!info.namespaced && info.plural == "clusterissuers");
}

/// An ACME Issuer reaches the cluster's cert-manager with every field as written (compared with the text, not with
/// a parse of it, so a field the model dropped would show), its DNS-01 solvers included, and Capstan's TLS-ALPN-01
/// annotation riding along for cert-manager to ignore.
#[test]
fn an_acme_issuer_passes_through_with_every_field() {
    let yaml = "apiVersion: cert-manager.io/v1
kind: Issuer
metadata:
  name: letsencrypt
  namespace: shop
  annotations: {capstan.dev/acme-challenge: tls-alpn-01}
spec:
  acme:
    server: https://acme-v02.api.letsencrypt.org/directory
    email: ops@example.com
    preferredChain: ISRG Root X1
    profile: tlsserver
    privateKeySecretRef: {name: le-account, key: tls.key}
    externalAccountBinding: {keyID: kid-1, keySecretRef: {name: eab, key: secret}, keyAlgorithm: HS256}
    solvers:
    - selector: {dnsZones: [example.com], matchLabels: {team: a}}
      dns01:
        cloudflare: {apiTokenSecretRef: {name: cf, key: token}}
    - http01:
        gatewayHTTPRoute:
          parentRefs: [{name: web, namespace: shop, kind: Gateway, sectionName: http}]
          labels: {solver: acme}
          serviceType: ClusterIP
          podTemplate: {spec: {nodeSelector: {pool: edge}}}
";
    let expected = serde_json::json!({"acme": {
        "server": "https://acme-v02.api.letsencrypt.org/directory",
        "email": "ops@example.com",
        "preferredChain": "ISRG Root X1",
        "profile": "tlsserver",
        "privateKeySecretRef": {"name": "le-account", "key": "tls.key"},
        "externalAccountBinding": {"keyID": "kid-1", "keySecretRef": {"name": "eab", "key": "secret"}, "keyAlgorithm": "HS256"},
        "solvers": [
            {"selector": {"dnsZones": ["example.com"], "matchLabels": {"team": "a"}},
             "dns01": {"cloudflare": {"apiTokenSecretRef": {"name": "cf", "key": "token"}}}},
            {"http01": {"gatewayHTTPRoute": {
                "parentRefs": [{"name": "web", "namespace": "shop", "kind": "Gateway", "sectionName": "http"}],
                "labels": {"solver": "acme"}, "serviceType": "ClusterIP",
                "podTemplate": {"spec": {"nodeSelector": {"pool": "edge"}}}}}}]}});
    let objs = render(&all(yaml)).expect("renders");
    let issuer = objs.iter().find(|o| o["kind"] == "Issuer").expect("the Issuer");
    assert_eq!(issuer["apiVersion"], "cert-manager.io/v1");
    assert_eq!(issuer["spec"], expected);
    assert_eq!(issuer["metadata"]["annotations"]["capstan.dev/acme-challenge"], "tls-alpn-01");
}

/// Kubernetes' own Secret, as written for a cluster, is taken by Capstan and rendered back as the same Secret; a
/// Capstan Secret becomes one too, its text values in base64. Both round-trip through k8s-openapi's Secret.
#[test]
fn secrets_render_as_the_core_secret_whichever_way_they_were_written() {
    let yaml = "apiVersion: v1
kind: Secret
metadata: {name: shop-tls, namespace: team, labels: {app: shop}}
type: kubernetes.io/tls
data: {tls.crt: Y2VydA==, tls.key: a2V5}
---
apiVersion: capstan.dev/v1alpha1
kind: Secret
metadata: {name: token, namespace: team}
spec:
  stringData: {token: s3cret}
  data: {extra: ZXh0cmE=}
";
    let objs = render(&all(yaml)).unwrap();
    let secrets: Vec<&Value> = objs.iter().filter(|o| o["kind"] == "Secret").collect();
    assert_eq!(secrets.len(), 2);
    assert_eq!(secrets[0]["apiVersion"], "v1");
    assert_eq!(secrets[0]["type"], "kubernetes.io/tls");
    assert_eq!(secrets[0]["metadata"]["labels"]["app"], "shop");
    assert_eq!(secrets[0]["metadata"]["labels"]["app.kubernetes.io/managed-by"], "capstan", "pruned when it leaves");
    assert_eq!(secrets[0]["data"], serde_json::json!({"tls.crt": "Y2VydA==", "tls.key": "a2V5"}));
    assert_eq!(secrets[1]["type"], "Opaque");
    assert_eq!(secrets[1]["data"], serde_json::json!({"extra": "ZXh0cmE=", "token": "czNjcmV0"}));
    for s in secrets {
        let typed: k8s_openapi::api::core::v1::Secret = serde_json::from_value(s.clone()).expect("a core Secret");
        assert_eq!(serde_json::to_value(&typed).unwrap()["data"], s["data"]);
    }
}

/// A ConfigMap, written as Kubernetes' own or in Capstan's shape, renders as the core ConfigMap, which k8s-openapi
/// reads back whole.
#[test]
fn config_maps_render_as_the_core_config_map() {
    let yaml = "apiVersion: v1
kind: ConfigMap
metadata: {name: client-ca, namespace: edge}
data: {ca.crt: PEM}
binaryData: {raw: AAE=}
---
apiVersion: capstan.dev/v1alpha1
kind: ConfigMap
metadata: {name: settings, namespace: edge}
spec: {data: {mode: fast}}
";
    let objs = render(&all(yaml)).unwrap();
    let maps: Vec<&Value> = objs.iter().filter(|o| o["kind"] == "ConfigMap").collect();
    assert_eq!(maps.len(), 2);
    assert_eq!(maps[0]["apiVersion"], "v1");
    assert_eq!(maps[0]["data"], serde_json::json!({"ca.crt": "PEM"}));
    assert_eq!(maps[0]["binaryData"], serde_json::json!({"raw": "AAE="}));
    assert_eq!(maps[1]["data"], serde_json::json!({"mode": "fast"}));
    assert!(maps[1].get("binaryData").is_none());
    for m in maps {
        let typed: k8s_openapi::api::core::v1::ConfigMap = serde_json::from_value(m.clone()).expect("a core ConfigMap");
        let mut back = serde_json::to_value(&typed).unwrap();
        back["apiVersion"] = m["apiVersion"].clone();
        back["kind"] = m["kind"].clone();
        assert_eq!(&back, m, "no field lost or unknown");
    }
}

/// A port's `appProtocol` reaches the Service port, Capstan's `h2c` shorthand as Kubernetes names it; a bad one is
/// refused by field.
#[test]
fn a_ports_app_protocol_reaches_its_service_port() {
    let yaml = WEB.replace("    - {name: ssh}", "    - {name: ssh, appProtocol: h2c}");
    let objs = render(&all(&yaml)).unwrap();
    let service = objs.iter().find(|o| o["kind"] == "Service" && o["metadata"]["name"] == "teamboard").unwrap();
    let ports = service["spec"]["ports"].as_array().unwrap();
    let ssh = ports.iter().find(|p| p["name"] == "ssh").unwrap();
    assert_eq!(ssh["appProtocol"], "kubernetes.io/h2c");
    assert!(ports.iter().find(|p| p["name"] == "http").unwrap().get("appProtocol").is_none());
    let bad = WEB.replace("    - {name: ssh}", "    - {name: ssh, appProtocol: 'h2 c'}");
    let err = parse_manifests("web.yaml", &bad).map(|_| ()).unwrap_err().to_string();
    assert!(err.contains("spec.ports[1].appProtocol") && err.contains("kubernetes.io/h2c"), "{err}");
}

/// An HTTPRoute written by hand with the name an App's entry point would give its own: the written one is applied,
/// the App's is not (two objects with one name would overwrite each other on the cluster). Two Apps' objects that
/// collide are refused by name.
#[test]
fn a_route_written_by_hand_wins_over_the_one_an_app_would_make() {
    let route = "---
apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata: {name: teamboard, namespace: team}
spec:
  parentRefs: [{name: front}]
  rules: [{backendRefs: [{name: teamboard, port: 8080}]}]
";
    let objs = render(&all(&format!("{WEB}{route}"))).unwrap();
    let routes: Vec<&Value> = objs.iter().filter(|o| o["kind"] == "HTTPRoute").collect();
    assert_eq!(routes.len(), 1, "{routes:?}");
    assert_eq!(routes[0]["spec"]["parentRefs"][0]["name"], "front", "the written one");
    // An App named like another App's tcp entry object: both would render Service/TCPRoute `teamboard-ssh`.
    let twin = "---
apiVersion: capstan.dev/v1alpha1
kind: App
metadata: {name: teamboard-ssh, namespace: team}
spec:
  run: {image: x:1}
  ports: [{name: http}]
";
    let old = RenderOptions { entry_points: EntryPoints::ingress("nginx") };
    let errors = render_with(&all(&format!("{WEB}{twin}")), &old).unwrap_err();
    let text: Vec<String> = errors.iter().map(ToString::to_string).collect();
    assert!(
        text.iter().any(|e| e.contains("App/teamboard-ssh") && e.contains("which App/teamboard renders too")),
        "{text:?}"
    );
}
