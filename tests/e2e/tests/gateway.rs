//! Gateway API's Gateway and HTTPRoute from the outside: applied as written (`gateway.networking.k8s.io/v1`), listed
//! and described with kubectl's columns, refused with file, line, field and hint when malformed, and rendered for
//! Kubernetes unchanged. Routing itself is covered by `capstan_proxy::routes`' conformance-modelled unit tests.

use std::time::Duration;

use capstan_e2e::tls::*;
use capstan_e2e::*;
use tokio::sync::watch;

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

/// A GET through a gateway listener on 127.0.0.1:`port` for `host`: status, headers and body; None when nothing
/// answers (the listener is not open yet).
async fn try_through(
    port: u16,
    host: &str,
    path: &str,
    headers: &[(&str, &str)],
) -> Option<(u16, hyper::HeaderMap, String)> {
    use http_body_util::{BodyExt, Empty};
    let client = hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
        .build_http::<Empty<bytes::Bytes>>();
    let mut req = hyper::Request::get(format!("http://127.0.0.1:{port}{path}")).header("host", host);
    for (k, v) in headers {
        req = req.header(*k, *v);
    }
    let res = tokio::time::timeout(std::time::Duration::from_secs(10), client.request(req.body(Empty::new()).ok()?))
        .await
        .ok()?
        .ok()?;
    let (parts, body) = res.into_parts();
    let body = body.collect().await.map(|b| String::from_utf8_lossy(&b.to_bytes()).to_string()).unwrap_or_default();
    Some((parts.status.as_u16(), parts.headers, body))
}

/// The same, once the listener is known to be open.
async fn through(port: u16, host: &str, path: &str, headers: &[(&str, &str)]) -> (u16, hyper::HeaderMap, String) {
    try_through(port, host, path, headers).await.expect("an answer from the gateway listener")
}

/// Modelled on Gateway API's conformance cases (HTTPRouteWeight, HTTPRouteHeaderMatching, HTTPRouteRedirect*,
/// HTTPRouteRewritePath, HTTPRouteRequestHeaderModifier, HTTPRouteResponseHeaderModifier, HTTPRouteInvalid*,
/// GatewayWithAttachedRoutes, the listener conflict cases): three Apps behind one shared HTTP listener.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn apps_share_one_listener_by_host_and_path_with_weights_filters_and_status() {
    let tp = TestPlane::start().await;
    let held = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let held_port = held.local_addr().unwrap().port();
    // Taken while the held port is bound: a port let go just before could be handed out again as the held one.
    let port = free_port();
    let apps: String =
        ["shop", "api", "api-next"].iter().map(|n| format!("{}---\n", app_yaml(n, 1, &[], READINESS))).collect();
    tp.apply(&format!(
        "{apps}apiVersion: gateway.networking.k8s.io/v1
kind: Gateway
metadata: {{name: front}}
spec:
  gatewayClassName: capstan
  addresses: [{{value: 127.0.0.1}}]
  listeners: [{{name: http, port: {port}, protocol: HTTP}}]
---
apiVersion: gateway.networking.k8s.io/v1
kind: Gateway
metadata: {{name: late}}
spec:
  gatewayClassName: capstan
  addresses: [{{value: 127.0.0.1}}]
  listeners:
    - {{name: same-port, port: {port}, protocol: HTTP}}
    - {{name: taken, port: {held_port}, protocol: HTTP}}
---
apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata: {{name: shop}}
spec:
  parentRefs: [{{name: front}}]
  hostnames: [shop.example.com]
  rules: [{{backendRefs: [{{name: shop, port: 8080}}]}}]
---
apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata: {{name: api}}
spec:
  parentRefs: [{{name: front, sectionName: http}}]
  hostnames: [\"*.example.org\"]
  rules:
    - matches: [{{path: {{type: PathPrefix, value: /v1}}}}]
      filters: [{{type: URLRewrite, urlRewrite: {{path: {{type: ReplacePrefixMatch, replacePrefixMatch: /}}}}}}]
      backendRefs: [{{name: api, port: 8080, weight: 90}}, {{name: api-next, port: 8080, weight: 10}}]
    - matches: [{{path: {{type: PathPrefix, value: /v1}}, headers: [{{name: X-Canary, value: \"true\"}}]}}]
      filters: [{{type: URLRewrite, urlRewrite: {{path: {{type: ReplacePrefixMatch, replacePrefixMatch: /}}}}}}]
      backendRefs: [{{name: api-next, port: 8080}}]
    - matches: [{{path: {{type: Exact, value: /old}}}}]
      filters: [{{type: RequestRedirect, requestRedirect: {{scheme: https, hostname: new.example.org, statusCode: 301}}}}]
    - matches: [{{path: {{type: PathPrefix, value: /headers}}}}]
      filters:
        - type: RequestHeaderModifier
          requestHeaderModifier: {{set: [{{name: x-added, value: \"yes\"}}], remove: [x-drop]}}
        - type: ResponseHeaderModifier
          responseHeaderModifier: {{add: [{{name: x-served-by, value: capstan}}]}}
      backendRefs: [{{name: api, port: 8080}}]
---
apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata: {{name: ghost}}
spec:
  parentRefs: [{{name: front}}]
  hostnames: [ghost.example.com]
  rules: [{{backendRefs: [{{name: nobody, port: 8080}}]}}]
---
apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata: {{name: orphan}}
spec:
  parentRefs: [{{name: nowhere}}]
  rules: [{{backendRefs: [{{name: shop, port: 8080}}]}}]
"
    ));
    for app in ["shop", "api", "api-next"] {
        eventually(&format!("{app} Ready"), T, || async { ready(&tp.app(app).await).then_some(()) }).await;
    }

    // By host name; an unknown host is a 404.
    let (code, _, body) = eventually("the shop is served through the gateway", T, || async {
        let r = try_through(port, "shop.example.com", "/", &[]).await?;
        (r.0 == 200).then_some(r)
    })
    .await;
    assert_eq!((code, body.as_str()), (200, "shop-0"));
    assert_eq!(through(port, "unknown.example.com", "/", &[]).await.0, 404);

    // Weights: 90/10 over 1,000 requests, within ±3 points; a header match takes precedence.
    let mut next = 0;
    for _ in 0..1000 {
        let (code, _, body) = through(port, "api.example.org", "/v1", &[]).await;
        assert_eq!(code, 200, "{body}");
        match body.as_str() {
            "api-next-0" => next += 1,
            "api-0" => {}
            other => panic!("answered by {other}"),
        }
    }
    assert!((70..=130).contains(&next), "api-next took {next} of 1000 (10% ± 3 points)");
    for _ in 0..20 {
        assert_eq!(through(port, "x.example.org", "/v1/", &[("x-canary", "true")]).await.2, "api-next-0");
    }

    // A redirect, and header modifiers both ways.
    let (code, headers, _) = through(port, "api.example.org", "/old?q=1", &[]).await;
    assert_eq!(code, 301);
    assert_eq!(headers["location"], "https://new.example.org/old?q=1");
    let (code, headers, body) = through(port, "api.example.org", "/headers", &[("x-drop", "1")]).await;
    assert_eq!(code, 200, "{body}");
    let seen: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(seen["x-added"], "yes", "{seen}");
    assert!(seen.get("x-drop").is_none(), "{seen}");
    assert_eq!(headers["x-served-by"], "capstan");

    // A backend that does not exist: its requests are answered 500, and the route says why.
    assert_eq!(through(port, "ghost.example.com", "/", &[]).await.0, 500);

    // Status as Gateway API defines it.
    let route = |name: &str| {
        let name = name.to_string();
        let c = tp.client.clone();
        async move { c.get(&format!("/api/v1/namespaces/default/httproutes/{name}")).await.ok() }
    };
    let api = eventually("the api route's status", T, || async {
        let r = route("api").await?;
        (condition(&r["status"]["parents"][0]["conditions"], "Accepted")["status"] == "True").then_some(r)
    })
    .await;
    let parent = &api["status"]["parents"][0];
    assert_eq!(parent["controllerName"], "capstan.dev/gateway-controller");
    assert_eq!(condition(&parent["conditions"], "ResolvedRefs")["status"], "True", "{parent}");
    let ghost = route("ghost").await.unwrap();
    let resolved = condition(&ghost["status"]["parents"][0]["conditions"], "ResolvedRefs");
    assert_eq!((resolved["status"].as_str(), resolved["reason"].as_str()), (Some("False"), Some("BackendNotFound")));
    assert!(resolved["message"].as_str().unwrap().contains("App default/nobody does not exist"), "{resolved}");
    let orphan = route("orphan").await.unwrap();
    let accepted = condition(&orphan["status"]["parents"][0]["conditions"], "Accepted");
    assert_eq!((accepted["status"].as_str(), accepted["reason"].as_str()), (Some("False"), Some("NoMatchingParent")));

    let gw = |name: &str| {
        let name = name.to_string();
        let c = tp.client.clone();
        async move { c.get(&format!("/api/v1/namespaces/default/gateways/{name}")).await.unwrap() }
    };
    let front = gw("front").await;
    let http = &front["status"]["listeners"][0];
    assert_eq!(http["attachedRoutes"], 3, "shop, api and ghost: {front}");
    assert_eq!(condition(&http["conditions"], "Programmed")["status"], "True");
    assert_eq!(condition(&front["status"]["conditions"], "Programmed")["status"], "True");
    let late = eventually("the late Gateway's listeners report", T, || async {
        let g = gw("late").await;
        (g["status"]["listeners"].as_array()?.len() == 2
            && condition(&g["status"]["listeners"][1]["conditions"], "Accepted")["reason"] == "PortUnavailable")
            .then_some(g)
    })
    .await;
    let same = &late["status"]["listeners"][0];
    assert_eq!(condition(&same["conditions"], "Conflicted")["reason"], "HostnameConflict", "{late}");
    assert_eq!(condition(&same["conditions"], "Programmed")["status"], "False");
    assert_eq!(condition(&late["status"]["conditions"], "Programmed")["status"], "False", "{late}");

    // `describe` shows it too.
    let page = text(&tp.cli(&["describe", "gateway", "late"]));
    assert!(page.contains("PortUnavailable") && page.contains("HostnameConflict"), "{page}");

    // A route deleted: its host is no longer served; the others still are.
    tp.client.delete("/api/v1/namespaces/default/httproutes/shop").await.unwrap();
    eventually("the shop's host is gone", T, || async {
        (through(port, "shop.example.com", "/", &[]).await.0 == 404).then_some(())
    })
    .await;
    assert_eq!(through(port, "api.example.org", "/v1", &[("x-canary", "true")]).await.2, "api-next-0");
    drop(held);
    tp.stop().await;
}

/// Gateway API's two route timeouts: `backendRequest` bounds each attempt, `request` the whole request (504 when
/// either runs out, naming the limit); a rule without them waits as long as an entry point does.
#[tokio::test(flavor = "multi_thread")]
async fn route_timeouts_bound_each_attempt_and_the_whole_request() {
    let tp = TestPlane::start().await;
    let port = free_port();
    let rule = |host: &str, timeouts: &str| {
        format!(
            "---
apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata: {{name: {}}}
spec:
  parentRefs: [{{name: front}}]
  hostnames: [{host}]
  rules: [{{backendRefs: [{{name: slow, port: 8080}}]{timeouts}}}]
",
            host.split('.').next().unwrap_or("r")
        )
    };
    tp.apply(&format!(
        "{}---\n{}{}{}{}",
        app_yaml("slow", 1, &[], READINESS),
        gateway_yaml("front", port, "HTTP"),
        rule("attempt.example.com", ", timeouts: {request: 5s, backendRequest: 300ms}"),
        rule("whole.example.com", ", timeouts: {request: 400ms}"),
        rule("none.example.com", ""),
    ));
    eventually("slow Ready", T, || async { ready(&tp.app("slow").await).then_some(()) }).await;
    eventually("the routes serve", T, || async {
        let (code, _, _) = try_through(port, "none.example.com", "/sleep/1", &[]).await?;
        (code == 200).then_some(())
    })
    .await;
    for (host, limit) in [("attempt.example.com", "300ms"), ("whole.example.com", "400ms")] {
        let (code, _, body) = through(port, host, "/sleep/10", &[]).await;
        assert_eq!((code, body.as_str()), (200, "slept 10 ms"), "{host}: an answer within the limit is served");
        let (code, _, body) = through(port, host, "/sleep/2000", &[]).await;
        assert_eq!(code, 504, "{host}: {body}");
        assert!(body.contains(&format!("did not answer within {limit}")), "{host}: {body}");
    }
    // No timeouts: the entry points' default (60 s) applies, and two seconds are served.
    let (code, _, body) = through(port, "none.example.com", "/sleep/2000", &[]).await;
    assert_eq!((code, body.as_str()), (200, "slept 2000 ms"));
    tp.stop().await;
}

/// `examples/gateway` as the docs show it (with the test app for `capstan-hello` and a free port): both Apps
/// behind the Gateway, the canary header, the redirect.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_gateway_example_serves_as_documented() {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/../../examples/gateway/gateway.yaml");
    let port = free_port();
    let yaml = std::fs::read_to_string(path)
        .expect("examples/gateway/gateway.yaml")
        .replace("command: [capstan-hello]", &format!("command: [{}]", testapp()))
        .replace("port: 8088", &format!("port: {port}"));
    let tp = TestPlane::start().await;
    tp.apply(&yaml);
    let (_, headers, body) = eventually("the site through the gateway", T, || async {
        let r = try_through(port, "site.localhost", "/", &[]).await?;
        (r.0 == 200).then_some(r)
    })
    .await;
    assert!(body.starts_with("site-"), "{body}");
    // Session persistence: the cookie keeps a client on its replica, whatever the weights pick.
    let cookie = headers["set-cookie"].to_str().unwrap().split(';').next().unwrap().to_string();
    assert!(cookie.starts_with("SITE_ROUTE="), "{cookie}");
    for _ in 0..30 {
        assert_eq!(through(port, "site.localhost", "/", &[("cookie", &cookie)]).await.2, body, "{cookie}");
    }
    let canary = eventually("the canary is Ready", T, || async {
        let r = try_through(port, "site.localhost", "/", &[("x-canary", "true")]).await?;
        (r.0 == 200).then_some(r.2)
    })
    .await;
    assert_eq!(canary, "site-next-0");
    let (code, headers, _) = through(port, "site.localhost", "/old", &[]).await;
    assert_eq!((code, headers["location"].to_str().unwrap()), (301, format!("http://site.localhost:{port}/").as_str()));
    tp.stop().await;
}

/// App `web` behind Gateway `secure`: HTTPS listeners `shop` (shop.example.test) and `wild` (*.example.org) on one
/// port with their certificates' Secrets, and plain HTTP on another redirecting to HTTPS.
fn secure_site(https: u16, http: u16, shop: (&str, &str), wild: (&str, &str)) -> String {
    format!(
        "{}---\n{}---\n{}---\napiVersion: gateway.networking.k8s.io/v1
kind: Gateway
metadata: {{name: secure}}
spec:
  gatewayClassName: capstan
  addresses: [{{value: 127.0.0.1}}]
  listeners:
    - {{name: shop, port: {https}, protocol: HTTPS, hostname: shop.example.test, tls: {{certificateRefs: [{{name: shop-tls}}]}}}}
    - {{name: wild, port: {https}, protocol: HTTPS, hostname: \"*.example.org\", tls: {{certificateRefs: [{{name: wild-tls}}]}}}}
    - {{name: plain, port: {http}, protocol: HTTP}}
---
apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata: {{name: web}}
spec:
  parentRefs: [{{name: secure, sectionName: shop}}, {{name: secure, sectionName: wild}}]
  rules: [{{backendRefs: [{{name: web, port: 8080}}]}}]
---
apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata: {{name: to-https}}
spec:
  parentRefs: [{{name: secure, sectionName: plain}}]
  rules: [{{filters: [{{type: RequestRedirect, requestRedirect: {{scheme: https, port: {https}, statusCode: 301}}}}]}}]
",
        app_yaml("web", 1, &[], READINESS),
        tls_secret("shop-tls", shop.0, shop.1),
        core_tls_secret("wild-tls", wild.0, wild.1),
    )
}

/// What [`serve_secure_site`] set up: its CA, the wildcard listener's certificate and the HTTPS port.
struct Site {
    ca_pem: String,
    wild_crt: String,
    https: u16,
}

/// [`secure_site`] with certificates from a fresh CA, applied, and served over HTTPS.
async fn serve_secure_site(tp: &TestPlane) -> Site {
    let (ca, ca_pem) = test_ca();
    let (shop_crt, shop_key) = certificate_for(&["shop.example.test"], &ca);
    let (wild_crt, wild_key) = certificate_for(&["*.example.org"], &ca);
    let (https, http) = (free_port(), free_port());
    tp.apply(&secure_site(https, http, (&shop_crt, &shop_key), (&wild_crt, &wild_key)));
    eventually("web Ready over HTTPS", T, || async {
        https_get(https, "shop.example.test", "/", &ca_pem).await.filter(|r| r.0 == 200)
    })
    .await;
    Site { ca_pem, wild_crt, https }
}

/// Waits until the `shop` listener of Gateway `secure` says `needle` in its ResolvedRefs (False,
/// InvalidCertificateRef); returns the whole message.
async fn shop_refs_saying(tp: &TestPlane, needle: &str) -> String {
    eventually(&format!("the listener reports: {needle}"), T, || async {
        let g = tp.client.get("/api/v1/namespaces/default/gateways/secure").await.ok()?;
        let c = condition(&g["status"]["listeners"][0]["conditions"], "ResolvedRefs").clone();
        let message = c["message"].as_str()?.to_string();
        (c["status"] == "False" && c["reason"] == "InvalidCertificateRef" && message.contains(needle))
            .then_some(message)
    })
    .await
}

/// HTTPS listeners terminate TLS with certificates from Secrets (Capstan's, and Kubernetes' own `v1` Secret as
/// written): SNI picks among them (wildcards included), a changed Secret is served to new handshakes at once, a
/// broken, expired or misnamed one leaves the last good certificate serving with the reason in status, and plain
/// HTTP redirects to HTTPS.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn https_listeners_serve_certificates_from_secrets_by_sni_and_swap_them_live() {
    let tp = TestPlane::start().await;
    let (ca, ca_pem) = test_ca();
    let (shop_crt, shop_key) = certificate_for(&["shop.example.test"], &ca);
    let (wild_crt, wild_key) = certificate_for(&["*.example.org"], &ca);
    let (https, http) = (free_port(), free_port());
    tp.apply(&secure_site(https, http, (&shop_crt, &shop_key), (&wild_crt, &wild_key)));
    eventually("web Ready", T, || async { ready(&tp.app("web").await).then_some(()) }).await;
    let (code, body, leaf) = eventually("the shop over HTTPS", T, || async {
        https_get(https, "shop.example.test", "/", &ca_pem).await.filter(|r| r.0 == 200)
    })
    .await;
    assert_eq!((code, body.as_str()), (200, "web-0"));
    assert_eq!(leaf, der_of(&shop_crt), "SNI shop.example.test gets the shop's certificate");
    let (_, _, leaf) = https_get(https, "api.example.org", "/", &ca_pem).await.expect("a wildcard name");
    assert_eq!(leaf, der_of(&wild_crt), "a name under *.example.org gets the wildcard certificate");

    // Plain HTTP redirects to HTTPS.
    let (code, headers, _) = through(http, "shop.example.test", "/cart?x=1", &[]).await;
    assert_eq!(code, 301);
    assert_eq!(headers["location"], format!("https://shop.example.test:{https}/cart?x=1").as_str());

    // A new certificate in the Secret (with kubectl's `create secret tls`): new handshakes get it at once.
    let (next_crt, next_key) = certificate_for(&["shop.example.test"], &ca);
    let files = tp.dir.path();
    std::fs::write(files.join("next.crt"), &next_crt).unwrap();
    std::fs::write(files.join("next.key"), &next_key).unwrap();
    std::fs::write(files.join("shop.key"), &shop_key).unwrap();
    let (crt_file, key_file) = (files.join("next.crt"), files.join("next.key"));
    let (crt_arg, key_arg) = (crt_file.to_str().unwrap(), key_file.to_str().unwrap());
    let out = tp.cli(&[
        "create",
        "secret",
        "tls",
        "shop-tls",
        "--cert",
        crt_arg,
        "--key",
        key_arg,
        "--dry-run",
        "-o",
        "yaml",
    ]);
    assert!(out.status.success(), "{}", text(&out));
    let printed = text(&out);
    assert!(printed.contains("apiVersion: v1\nkind: Secret\n"), "kubectl's shape: {printed}");
    assert!(printed.contains("type: kubernetes.io/tls") && printed.contains("tls.key: LS0tLS1CRUdJTi"), "{printed}");
    let wrong_key = files.join("shop.key");
    let out = tp.cli(&["create", "secret", "tls", "shop-tls", "--cert", crt_arg, "--key", wrong_key.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(2), "a key of another certificate is refused here: {}", text(&out));
    assert!(text(&out).contains("tls.key is not the key of the certificate in tls.crt"), "{}", text(&out));
    let out = tp.cli(&["create", "secret", "tls", "shop-tls", "--cert", crt_arg, "--key", key_arg]);
    assert!(out.status.success(), "{}", text(&out));
    assert_eq!(text(&out).trim(), "secret/shop-tls configured");
    eventually("the new certificate is served", T, || async {
        let r = https_get(https, "shop.example.test", "/", &ca_pem).await?;
        (r.2 == der_of(&next_crt)).then_some(())
    })
    .await;

    // A key that does not match: the last good certificate keeps serving, and the listener says why.
    let (_, other_key) = certificate_for(&["shop.example.test"], &ca);
    tp.apply(&tls_secret("shop-tls", &next_crt, &other_key));
    let message = shop_refs_saying(&tp, "Secret default/shop-tls: tls.key is not the key of the certificate").await;
    assert!(message.contains("the previous certificate is still served"), "{message}");
    let (code, _, leaf) = https_get(https, "shop.example.test", "/", &ca_pem).await.expect("still served");
    assert_eq!((code, leaf), (200, der_of(&next_crt)));

    // An expired certificate, and one for another name: refused in status, the last good one still served.
    let (old_crt, old_key) = certificate_with(&["shop.example.test"], &ca, |p| {
        p.not_before = rcgen::date_time_ymd(2020, 1, 1);
        p.not_after = rcgen::date_time_ymd(2021, 1, 1);
    });
    tp.apply(&tls_secret("shop-tls", &old_crt, &old_key));
    shop_refs_saying(&tp, "Secret default/shop-tls: the certificate in tls.crt expired at 2021-01-01T00:00:00Z").await;
    let (other_crt, other_key) = certificate_for(&["elsewhere.example.test"], &ca);
    tp.apply(&tls_secret("shop-tls", &other_crt, &other_key));
    shop_refs_saying(&tp, "names elsewhere.example.test, not the listener's hostname shop.example.test").await;
    let (code, _, leaf) = https_get(https, "shop.example.test", "/", &ca_pem).await.expect("still served");
    assert_eq!((code, leaf), (200, der_of(&next_crt)), "the last good certificate");
    tp.stop().await;
}

/// An HTTP/2 request on `sender` for `https://<authority><path>`: status and body.
async fn h2_send(
    sender: &mut hyper::client::conn::http2::SendRequest<
        http_body_util::combinators::BoxBody<bytes::Bytes, std::convert::Infallible>,
    >,
    request: hyper::Request<http_body_util::combinators::BoxBody<bytes::Bytes, std::convert::Infallible>>,
) -> (u16, String) {
    use http_body_util::BodyExt;
    let res = tokio::time::timeout(T, sender.send_request(request)).await.expect("in time").expect("an answer");
    assert_eq!(res.version(), hyper::Version::HTTP_2);
    let code = res.status().as_u16();
    let body = res.into_body().collect().await.expect("the body").to_bytes();
    (code, String::from_utf8_lossy(&body).to_string())
}

/// HTTPS listeners speak HTTP/2 to clients that offer it (ALPN `h2`) and HTTP/1.1 to the others, to the same
/// backends over HTTP/1.1: checked with hyper's client, curl and a real Chromium, whose page loads over h2 while its
/// websocket (which HTTP/2 cannot carry here) opens over TLS and HTTP/1.1. A request for another listener's host on
/// a connection made for one is refused with 421; stream limits are advertised; a rapid-reset flood is cut off
/// without harming the next client.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn https_listeners_speak_http2_with_limits_and_carry_websockets_over_tls() {
    use http_body_util::{BodyExt, Empty, Full, StreamBody};
    type Req = http_body_util::combinators::BoxBody<bytes::Bytes, std::convert::Infallible>;
    let tp = TestPlane::start().await;
    let Site { ca_pem, wild_crt, https, .. } = serve_secure_site(&tp).await;

    // hyper's HTTP/2 client: ALPN chooses h2.
    let tls = tls_connect(https, "shop.example.test", &ca_pem, &[b"h2", b"http/1.1"]).await.expect("TLS");
    assert_eq!(tls.get_ref().1.alpn_protocol(), Some(&b"h2"[..]), "h2 by ALPN");
    let (mut h2, conn) =
        hyper::client::conn::http2::handshake(hyper_util::rt::TokioExecutor::new(), hyper_util::rt::TokioIo::new(tls))
            .await
            .expect("HTTP/2 handshake");
    tokio::spawn(conn);
    let url = |host: &str, path: &str| format!("https://{host}:{https}{path}");
    let get = |u: String| hyper::Request::get(u).body(Empty::new().boxed()).unwrap();
    assert_eq!(h2_send(&mut h2, get(url("shop.example.test", "/"))).await, (200, "web-0".to_string()));

    // A body without a length (DATA frames until END_STREAM) reaches the backend whole.
    let chunks = futures_util::stream::iter(
        ["first half, ", "second half"]
            .map(|c| Ok::<_, std::convert::Infallible>(hyper::body::Frame::data(bytes::Bytes::from(c)))),
    );
    let post: Req = StreamBody::new(chunks).boxed();
    let req = hyper::Request::post(url("shop.example.test", "/echo")).body(post).unwrap();
    assert_eq!(h2_send(&mut h2, req).await, (200, "first half, second half".to_string()));
    let req = hyper::Request::post(url("shop.example.test", "/echo")).body(Full::from("sized").boxed()).unwrap();
    assert_eq!(h2_send(&mut h2, req).await, (200, "sized".to_string()));

    // The backend gets `:authority` as Host, one Cookie field, and the scheme the client used.
    let req = hyper::Request::get(url("shop.example.test", "/headers"))
        .header("cookie", "a=1")
        .header("cookie", "b=2")
        .body(Empty::new().boxed())
        .unwrap();
    let (code, body) = h2_send(&mut h2, req).await;
    let seen: serde_json::Value = serde_json::from_str(&body).expect("headers as JSON");
    assert_eq!(code, 200);
    assert_eq!(seen["host"], format!("shop.example.test:{https}").as_str());
    assert_eq!(seen["cookie"], "a=1; b=2");
    assert_eq!(seen["x-forwarded-proto"], "https");

    // The connection was made for shop.example.test: a request for a name another listener serves is misdirected.
    let (code, body) = h2_send(&mut h2, get(url("api.example.org", "/"))).await;
    assert_eq!(code, 421, "{body}");
    assert!(body.contains("open a new one for api.example.org"), "{body}");
    let (_, _, leaf) = https_get(https, "api.example.org", "/", &ca_pem).await.expect("its own connection");
    assert_eq!(leaf, der_of(&wild_crt));
    // Another name of the same listener on one connection is fine (a wildcard certificate covers both).
    let tls = tls_connect(https, "api.example.org", &ca_pem, &[b"h2"]).await.expect("TLS");
    let (mut wild, conn) =
        hyper::client::conn::http2::handshake(hyper_util::rt::TokioExecutor::new(), hyper_util::rt::TokioIo::new(tls))
            .await
            .expect("HTTP/2 handshake");
    tokio::spawn(conn);
    assert_eq!(h2_send(&mut wild, get(url("www.example.org", "/"))).await, (200, "web-0".to_string()));

    // The h2 library's client shows what the server advertised: at most 128 concurrent streams.
    let tls = tls_connect(https, "shop.example.test", &ca_pem, &[b"h2"]).await.expect("TLS");
    let (client, conn) = h2::client::handshake(tls).await.expect("h2 handshake");
    let conn = tokio::spawn(conn);
    let mut client = client.ready().await.expect("ready");
    eventually("the server's SETTINGS", T, || {
        let m = client.current_max_send_streams();
        async move { (m == 128).then_some(()) }
    })
    .await;

    // Rapid reset (CVE-2023-44487): streams opened and cancelled at once, over and over. The server ends the
    // connection rather than serve the flood.
    let mut sent = 0;
    for _ in 0..5_000 {
        let Ok(ready) = client.clone().ready().await else { break };
        client = ready;
        let req = hyper::Request::get(url("shop.example.test", "/")).body(()).unwrap();
        let Ok((_, mut stream)) = client.send_request(req, true) else { break };
        stream.send_reset(h2::Reason::CANCEL);
        sent += 1;
    }
    let ended = tokio::time::timeout(T, conn).await.expect("the server ends a flooded connection").expect("joined");
    let error = ended.expect_err("the connection ends in an error");
    // GOAWAY with ENHANCE_YOUR_CALM, or, when the client was still writing as the server closed, a broken pipe.
    assert!(error.reason() == Some(h2::Reason::ENHANCE_YOUR_CALM) || error.is_io(), "{error} after {sent} resets");
    assert!(sent < 5_000, "the server cut the flood short");
    // The next client is served as before.
    let (code, body, _) = https_get(https, "shop.example.test", "/", &ca_pem).await.expect("served after the flood");
    assert_eq!((code, body.as_str()), (200, "web-0"));

    // curl over HTTP/2.
    let dir = tempfile::tempdir().unwrap();
    let ca_file = dir.path().join("ca.pem");
    std::fs::write(&ca_file, &ca_pem).unwrap();
    let out = std::process::Command::new("curl")
        .args(["-sS", "--http2", "--max-time", "10", "-w", " %{http_version}", "--cacert"])
        .arg(&ca_file)
        .arg("--resolve")
        .arg(format!("shop.example.test:{https}:127.0.0.1"))
        .arg(url("shop.example.test", "/"))
        .output()
        .expect("curl runs");
    assert_eq!(text(&out), "web-0 2", "curl: {}", String::from_utf8_lossy(&out.stderr));

    // Chromium: the page over h2, a websocket over TLS (HTTP/1.1) echoing through the gateway.
    let mut browser = capstan_e2e::chromium::Chromium::launch_with(&[
        "--host-resolver-rules=MAP *.example.test 127.0.0.1",
        "--ignore-certificate-errors",
    ])
    .await;
    browser.navigate(&url("shop.example.test", "/")).await;
    let protocol = browser
        .wait_for("the page's protocol", "performance.getEntriesByType('navigation')[0]?.nextHopProtocol || ''")
        .await;
    assert_eq!(protocol, "h2");
    assert_eq!(browser.eval("document.body.innerText").await, "web-0");
    browser
        .eval(&format!(
            "window.answer = ''; const ws = new WebSocket('wss://shop.example.test:{https}/ws');
             ws.onopen = () => ws.send('over tls'); ws.onmessage = (m) => {{ window.answer = m.data; }}; 1"
        ))
        .await;
    let answer = browser.wait_for("the websocket's answer", "window.answer").await;
    assert_eq!(answer.as_str().map(str::trim), Some("web-0 over tls"));
    tp.stop().await;
}

/// Over HTTPS with keep-alive, under open-loop load, a certificate rotation, a rolling update and a SIGKILLed
/// replica fail no request: new handshakes get the new certificate while kept-alive connections go on, and clients
/// pinned by the route's session cookie to the killed replica move to another (idempotent GETs are retried).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn https_under_load_through_rotation_rolling_update_and_sigkill_fails_nothing() {
    let tp = TestPlane::start().await;
    let (ca, ca_pem) = test_ca();
    let (first_crt, first_key) = certificate_for(&["127.0.0.1"], &ca);
    let port = free_port();
    let gateway = |version: &str| {
        format!(
            "{}---\n{}---\napiVersion: gateway.networking.k8s.io/v1
kind: Gateway
metadata: {{name: edge}}
spec:
  gatewayClassName: capstan
  addresses: [{{value: 127.0.0.1}}]
  listeners: [{{name: https, port: {port}, protocol: HTTPS, tls: {{certificateRefs: [{{name: edge-tls}}]}}}}]
---
apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata: {{name: web}}
spec:
  parentRefs: [{{name: edge}}]
  rules:
    - backendRefs: [{{name: web, port: 8080}}]
      sessionPersistence: {{sessionName: WEB_NODE, type: Cookie}}
",
            app_yaml("web", 3, &[("VERSION", version)], READINESS),
            tls_secret("edge-tls", &first_crt, &first_key),
        )
    };
    tp.apply(&gateway("1"));
    eventually("web Ready", T, || async {
        let o = tp.app("web").await;
        (ready(&o) && replicas(&o).len() == 3).then_some(())
    })
    .await;
    let (_, _, leaf) = eventually("served over HTTPS", T, || async {
        https_get(port, "127.0.0.1", "/", &ca_pem).await.filter(|r| r.0 == 200)
    })
    .await;
    assert_eq!(leaf, der_of(&first_crt));
    // The session cookie of replica web-1, which is killed below.
    let client = https_client(&ca_pem, None, true);
    let url = format!("https://127.0.0.1:{port}/version");
    let res = client.request(hyper::Request::get(&url).body(Default::default()).unwrap()).await.expect("an answer");
    let set_cookie = res.headers()["set-cookie"].to_str().unwrap().to_string();
    assert!(set_cookie.starts_with("WEB_NODE=") && set_cookie.ends_with("; Secure"), "over HTTPS: {set_cookie}");
    let pinned = eventually("a session on web-1", T, || async {
        let res = client.request(hyper::Request::get(&url).body(Default::default()).ok()?).await.ok()?;
        let cookie = res.headers().get("set-cookie")?.to_str().ok()?.split(';').next()?.to_string();
        use http_body_util::BodyExt;
        let body = res.into_body().collect().await.ok()?.to_bytes();
        String::from_utf8_lossy(&body).contains("web-1").then_some(cookie)
    })
    .await;

    let (stop_tx, stop) = watch::channel(false);
    let load = |headers: Vec<(&'static str, String)>, rate: u32| {
        tokio::spawn(open_loop_with(
            https_client(&ca_pem, None, true),
            url.clone(),
            hyper::Method::GET,
            rate,
            true,
            stop.clone(),
            Duration::from_secs(60),
            headers,
        ))
    };
    let anyone = load(Vec::new(), 80);
    let sticky = load(vec![("cookie", pinned.clone())], 40);
    tokio::time::sleep(Duration::from_millis(700)).await;

    // 1. A new certificate: new handshakes get it while the load's kept-alive connections carry on.
    let (next_crt, next_key) = certificate_for(&["127.0.0.1"], &ca);
    tp.apply(&tls_secret("edge-tls", &next_crt, &next_key));
    eventually("new handshakes get the new certificate", T, || async {
        let r = https_get(port, "127.0.0.1", "/", &ca_pem).await?;
        (r.2 == der_of(&next_crt)).then_some(())
    })
    .await;
    tokio::time::sleep(Duration::from_millis(500)).await;

    // 2. A rolling update to version 2 (a replica's new process has a cookie of its own: its pinned clients move).
    let update_started = tokio::time::Instant::now();
    tp.apply(&gateway("2").replace(&first_crt, &next_crt).replace(&first_key, &next_key));
    eventually("v2 rolled out", T, || async {
        let o = tp.app("web").await;
        let done = ready(&o) && o["status"]["rollout"]["phase"] == "Complete" && o["metadata"]["generation"] == 2;
        done.then_some(())
    })
    .await;
    tokio::time::sleep(Duration::from_millis(500)).await;

    // 3. SIGKILL of the replica the sticky clients are pinned to.
    let o = tp.app("web").await;
    let victim = replicas(&o).iter().find(|r| r["name"] == "web-1").and_then(|r| r["pid"].as_u64()).expect("web-1");
    nix::sys::signal::kill(nix::unistd::Pid::from_raw(victim as i32), nix::sys::signal::Signal::SIGKILL).unwrap();
    eventually("web-1 replaced", T, || async {
        let o = tp.app("web").await;
        let back = replicas(&o).iter().any(|r| r["name"] == "web-1" && r["pid"].as_u64() != Some(victim));
        (ready(&o) && back).then_some(())
    })
    .await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    stop_tx.send(true).unwrap();
    let (anyone, sticky) = (anyone.await.unwrap(), sticky.await.unwrap());
    for (what, shots) in [("unpinned", &anyone), ("pinned to web-1", &sticky)] {
        let failed = failures(shots);
        assert!(failed.is_empty(), "{what}: {} of {} failed, first: {:?}", failed.len(), shots.len(), failed.first());
    }
    assert!(
        anyone.len() > 100 && sticky.len() > 50,
        "the load ran throughout: {} and {} requests",
        anyone.len(),
        sticky.len()
    );
    let v = |shots: &[Shot], p: &str| shots.iter().filter(|s| s.body.starts_with(p)).count();
    assert!(v(&anyone, "1 ") > 0 && v(&anyone, "2 ") > 0, "both versions served");
    // The pinned clients stayed on web-1, through the certificate's rotation, until its update.
    let before: Vec<&Shot> = sticky.iter().filter(|s| s.finished < update_started).collect();
    assert!(before.len() > 10, "{} pinned requests before the update", before.len());
    assert!(
        before.iter().all(|s| s.body.ends_with("web-1")),
        "pinned: {:?}",
        before.iter().find(|s| !s.body.ends_with("web-1"))
    );
    tp.stop().await;
}

/// An HTTP/2 client that never opens its flow-control window holds its stream, its backend connection and its
/// connection's place for no longer than the send timeout (four header timeouts): the connection is closed, as an
/// HTTP/1.1 client that reads nothing is.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_http2_client_that_takes_no_data_is_closed_after_the_send_timeout() {
    let tp = TestPlane::start_with(|c| c.header_timeout = Duration::from_secs(1)).await;
    let Site { ca_pem, https, .. } = serve_secure_site(&tp).await;
    let tls = tls_connect(https, "shop.example.test", &ca_pem, &[b"h2"]).await.expect("TLS");
    let (client, conn) =
        h2::client::Builder::new().initial_window_size(0).handshake::<_, bytes::Bytes>(tls).await.expect("h2");
    let conn = tokio::spawn(conn);
    let mut client = client.ready().await.expect("ready");
    let req = hyper::Request::get(format!("https://shop.example.test:{https}/bytes/100000")).body(()).unwrap();
    let (response, _) = client.send_request(req, true).expect("sent");
    let response = tokio::time::timeout(T, response).await.expect("headers in time").expect("a response");
    assert_eq!(response.status(), 200, "the headers come; the body cannot, the window being shut");
    let started = std::time::Instant::now();
    let ended = tokio::time::timeout(Duration::from_secs(30), conn).await;
    assert!(ended.is_ok(), "the stalled connection is closed");
    let after = started.elapsed();
    assert!(after >= Duration::from_secs(3), "not before the send timeout ({after:?})");
    // Others are served meanwhile and after.
    let (code, body, _) = https_get(https, "shop.example.test", "/", &ca_pem).await.expect("served");
    assert_eq!((code, body.as_str()), (200, "web-0"));
    tp.stop().await;
}
