//! Gateway API's Gateway and HTTPRoute from the outside: applied as written (`gateway.networking.k8s.io/v1`), listed
//! and described with kubectl's columns, refused with file, line, field and hint when malformed, and rendered for
//! Kubernetes unchanged. Routing itself is covered by `capstan_proxy::routes`' conformance-modelled unit tests.

use capstan_e2e::*;

const T: std::time::Duration = std::time::Duration::from_secs(30);

const FRONT: &str = "apiVersion: gateway.networking.k8s.io/v1
kind: Gateway
metadata:
  name: front
spec:
  gatewayClassName: eg
  listeners:
    - name: http
      port: 8080
      protocol: HTTP
    - name: https
      port: 8443
      protocol: HTTPS
      hostname: \"*.example.com\"
      tls:
        certificateRefs: [{name: wildcard}]
---
apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata:
  name: shop
spec:
  parentRefs: [{name: front, sectionName: https}]
  hostnames: [shop.example.com]
  rules:
    - matches: [{path: {type: PathPrefix, value: /api}, method: GET}]
      backendRefs:
        - {name: api, port: 8080, weight: 90}
        - {name: api-next, port: 8080, weight: 10}
    - filters:
        - type: RequestRedirect
          requestRedirect: {scheme: https, statusCode: 301}
";

fn text(o: &std::process::Output) -> String {
    format!("{}{}", String::from_utf8_lossy(&o.stdout), String::from_utf8_lossy(&o.stderr))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn gateway_api_objects_apply_list_describe_and_render_as_written() {
    let tp = TestPlane::start().await;
    let dir = tp.dir.path().to_path_buf();
    let file = dir.join("front.yaml");
    std::fs::write(&file, FRONT).unwrap();
    let out = tp.cli(&["apply", "-f", file.to_str().unwrap()]);
    assert!(out.status.success(), "{}", text(&out));
    assert!(
        text(&out).contains("gateway/front created") || text(&out).contains("Gateway/front created"),
        "{}",
        text(&out)
    );

    let out = tp.cli(&["get", "gateways"]);
    let listing = text(&out);
    assert!(out.status.success() && listing.contains("CLASS") && listing.contains("eg"), "{listing}");
    let out = tp.cli(&["get", "httproute", "shop", "-o", "json"]);
    let o: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap_or_else(|_| panic!("{}", text(&out)));
    assert_eq!(o["apiVersion"], "gateway.networking.k8s.io/v1");
    assert_eq!(o["kind"], "HTTPRoute");
    assert_eq!(o["spec"]["rules"][0]["backendRefs"][1]["weight"], 10);
    assert_eq!(o["spec"]["rules"][1]["filters"][0]["requestRedirect"]["statusCode"], 301);
    let out = tp.cli(&["describe", "httproute", "shop"]);
    let page = text(&out);
    assert!(page.contains("PathPrefix /api, GET") && page.contains("api:8080 ×90, api-next:8080 ×10"), "{page}");
    assert!(page.contains("RequestRedirect"), "{page}");
    let out = tp.cli(&["describe", "gateway", "front"]);
    assert!(text(&out).contains("*.example.com") && text(&out).contains("wildcard"), "{}", text(&out));

    // The same API paths as any kind, and as Kubernetes names them.
    let listed = eventually("the route is listed", T, || async {
        let l = tp.client.get("/api/v1/httproutes").await.ok()?;
        (l["items"].as_array()?.len() == 1).then_some(l)
    })
    .await;
    assert_eq!(listed["items"][0]["metadata"]["name"], "shop");

    // Malformed: file, line, field and a hint; nothing is stored.
    let bad = dir.join("bad.yaml");
    std::fs::write(
        &bad,
        FRONT.replace("hostname: \"*.example.com\"", "hostnme: \"*.example.com\"").replace("name: shop", "name: shop2"),
    )
    .unwrap();
    let out = tp.cli(&["apply", "-f", bad.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(2), "{}", text(&out));
    let err = text(&out);
    assert!(err.contains("bad.yaml:14:7:") && err.contains("spec.listeners[1].hostnme"), "{err}");
    assert!(err.contains("did you mean `hostname`?"), "{err}");
    let wrong_version = dir.join("version.yaml");
    std::fs::write(&wrong_version, FRONT.replacen("gateway.networking.k8s.io/v1", "capstan.dev/v1alpha1", 1)).unwrap();
    let err = text(&tp.cli(&["apply", "-f", wrong_version.to_str().unwrap()]));
    assert!(err.contains("version.yaml:1:") && err.contains("use `gateway.networking.k8s.io/v1`"), "{err}");
    let redirect_with_backend = dir.join("redirect.yaml");
    std::fs::write(
        &redirect_with_backend,
        FRONT.replace("statusCode: 301}\n", "statusCode: 301}\n      backendRefs: [{name: api, port: 8080}]\n"),
    )
    .unwrap();
    let err = text(&tp.cli(&["apply", "-f", redirect_with_backend.to_str().unwrap()]));
    assert!(err.contains("redirect.yaml:33:7: HTTPRoute/shop: field `spec.rules[1].backendRefs`: is not allowed with a RequestRedirect"), "{err}");
    assert!(tp.client.get("/api/v1/namespaces/default/httproutes/shop2").await.is_err(), "nothing stored");

    // On Kubernetes they are passed through as they are.
    let out = tp.cli(&["render", "--target", "kubernetes", file.to_str().unwrap()]);
    assert!(out.status.success(), "{}", text(&out));
    let docs = capstan_model::yaml::parse_documents(&String::from_utf8_lossy(&out.stdout)).unwrap();
    let route = docs.iter().find(|d| d.value["kind"] == "HTTPRoute").expect("the route").value.clone();
    assert_eq!(route["apiVersion"], "gateway.networking.k8s.io/v1");
    assert_eq!(route["spec"]["parentRefs"][0]["sectionName"], "https");
    assert!(route.get("status").is_none());
    let gw = docs.iter().find(|d| d.value["kind"] == "Gateway").expect("the gateway").value.clone();
    assert_eq!(gw["spec"]["listeners"][1]["tls"]["certificateRefs"][0]["name"], "wildcard");
    tp.stop().await;
}
