//! What a Gateway speaks on each side, checked with curl and real backends. Clients: certificates asked per port
//! (Gateway API's `spec.tls.frontend`) — a port that requires one refuses clients without a certificate its CA
//! bundle (a ConfigMap, as written for a cluster) signed, a port in `AllowInsecureFallback` serves them, a changed
//! bundle applies to the next handshake, and a bundle gone takes the port down rather than open it. Backends: TLS
//! where a BackendTLSPolicy asks for it, HTTP/2 without TLS to ports that declare `appProtocol: kubernetes.io/h2c`,
//! and copies of requests to a mirror (RequestMirror), its share exact and the body whole.

use std::path::Path;
use std::time::Duration;

use capstan_e2e::tls::*;
use capstan_e2e::*;

const T: Duration = Duration::from_secs(30);

/// A v1 ConfigMap holding `ca.crt`, as a cluster takes it.
fn ca_config_map(name: &str, pem: &str) -> String {
    let indented: String = pem.lines().map(|l| format!("    {l}\n")).collect();
    format!("apiVersion: v1\nkind: ConfigMap\nmetadata: {{name: {name}}}\ndata:\n  ca.crt: |\n{indented}")
}

fn site(strict: u16, lenient: u16) -> String {
    format!(
        "apiVersion: gateway.networking.k8s.io/v1
kind: Gateway
metadata: {{name: partners}}
spec:
  gatewayClassName: capstan
  addresses: [{{value: 127.0.0.1}}]
  tls:
    frontend:
      default:
        validation:
          caCertificateRefs: [{{group: \"\", kind: ConfigMap, name: client-ca}}]
      perPort:
        - port: {lenient}
          tls:
            validation:
              mode: AllowInsecureFallback
              caCertificateRefs: [{{group: \"\", kind: ConfigMap, name: client-ca}}]
  listeners:
    - {{name: strict, port: {strict}, protocol: HTTPS, tls: {{certificateRefs: [{{name: shop-tls}}]}}}}
    - {{name: lenient, port: {lenient}, protocol: HTTPS, tls: {{certificateRefs: [{{name: shop-tls}}]}}}}
---
apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata: {{name: shop}}
spec:
  parentRefs: [{{name: partners}}]
  hostnames: [shop.example.test]
  rules: [{{backendRefs: [{{name: web, port: 8080}}]}}]
"
    )
}

/// curl to `https://shop.example.test:<port>/` trusting `ca`, with a client certificate (`cert`, `key` files) or
/// none: the HTTP status, or None when the connection or handshake failed.
fn curl(dir: &Path, port: u16, client: Option<&str>) -> Option<u16> {
    let mut cmd = std::process::Command::new("curl");
    cmd.args(["-sS", "-o", "/dev/null", "-w", "%{http_code}", "--max-time", "5", "--cacert"])
        .arg(dir.join("ca.pem"))
        .arg("--resolve")
        .arg(format!("shop.example.test:{port}:127.0.0.1"));
    if let Some(who) = client {
        cmd.arg("--cert").arg(dir.join(format!("{who}.crt"))).arg("--key").arg(dir.join(format!("{who}.key")));
    }
    let out = cmd.arg(format!("https://shop.example.test:{port}/")).output().expect("curl runs");
    out.status.success().then(|| String::from_utf8_lossy(&out.stdout).parse().ok()).flatten()
}

/// The headers the backend saw for `GET /headers` over curl (as [`curl`]), the client claiming a certificate by
/// header that it does not have.
fn seen_headers(dir: &Path, port: u16, client: Option<&str>) -> Option<serde_json::Value> {
    let mut cmd = std::process::Command::new("curl");
    cmd.args(["-sS", "--max-time", "5", "-H", "x-forwarded-client-cert: Hash=forged", "--cacert"])
        .arg(dir.join("ca.pem"))
        .arg("--resolve")
        .arg(format!("shop.example.test:{port}:127.0.0.1"));
    if let Some(who) = client {
        cmd.arg("--cert").arg(dir.join(format!("{who}.crt"))).arg("--key").arg(dir.join(format!("{who}.key")));
    }
    let out = cmd.arg(format!("https://shop.example.test:{port}/headers")).output().expect("curl runs");
    serde_json::from_slice(&out.stdout).ok()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ports_ask_for_client_certificates_and_refuse_or_serve_as_their_mode_says() {
    let tp = TestPlane::start().await;
    let dir = tempfile::tempdir().expect("tempdir");
    let (server_ca, server_ca_pem) = test_ca();
    let (shop_crt, shop_key) = certificate_for(&["shop.example.test"], &server_ca);
    // Two client CAs: the partners' and another; a client of each.
    let (partners_ca, partners_pem) = test_ca();
    let (other_ca, other_pem) = test_ca();
    let client = |ca| {
        certificate_with(&["client.partner.test"], ca, |p| {
            p.extended_key_usages = vec![rcgen::ExtendedKeyUsagePurpose::ClientAuth];
        })
    };
    for (who, (crt, key)) in [("partner", client(&partners_ca)), ("stranger", client(&other_ca))] {
        std::fs::write(dir.path().join(format!("{who}.crt")), crt).expect("write");
        std::fs::write(dir.path().join(format!("{who}.key")), key).expect("write");
    }
    std::fs::write(dir.path().join("ca.pem"), &server_ca_pem).expect("write");
    let (strict, lenient) = (free_port(), free_port());
    tp.apply(
        &[
            app_yaml("web", 1, &[], READINESS),
            tls_secret("shop-tls", &shop_crt, &shop_key),
            ca_config_map("client-ca", &partners_pem),
            site(strict, lenient),
        ]
        .join("---\n"),
    );
    let d = dir.path();
    eventually("the partner is served on the strict port", T, || async {
        (curl(d, strict, Some("partner")) == Some(200)).then_some(())
    })
    .await;

    // The strict port refuses a client without a certificate, and one its CAs did not sign, in the handshake.
    assert_eq!(curl(d, strict, None), None, "no certificate: refused");
    assert_eq!(curl(d, strict, Some("stranger")), None, "another CA's certificate: refused");
    // The lenient port asks, and serves either way; the Gateway says so.
    for who in [None, Some("partner"), Some("stranger")] {
        assert_eq!(curl(d, lenient, who), Some(200), "{who:?} on the AllowInsecureFallback port");
    }
    // The backend is told who a checked client is, and only that: a header sent by the client is dropped, and a
    // certificate the lenient port let through unchecked is not passed on.
    let seen = seen_headers(d, strict, Some("partner")).expect("the partner's request");
    let forwarded = seen["x-forwarded-client-cert"].as_str().unwrap_or_default().to_string();
    assert!(forwarded.starts_with("Hash=") && !forwarded.contains("forged"), "{seen}");
    assert!(
        forwarded.contains("Subject=\"CN=client.partner.test\"") && forwarded.contains("DNS=client.partner.test"),
        "{forwarded}"
    );
    for who in [None, Some("stranger")] {
        let seen = seen_headers(d, lenient, who).expect("served on the lenient port");
        assert!(seen.get("x-forwarded-client-cert").is_none(), "{who:?}: {seen}");
    }
    let g = tp.client.get("/api/v1/namespaces/default/gateways/partners").await.expect("gateway");
    let insecure = condition(&g["status"]["conditions"], "InsecureFrontendValidationMode");
    assert_eq!(insecure["status"], "True", "{g}");
    assert!(insecure["message"].as_str().is_some_and(|m| m.contains(&lenient.to_string())), "{insecure}");

    // A new CA bundle applies to the next handshake: now the stranger's CA is the trusted one.
    tp.apply(&ca_config_map("client-ca", &other_pem));
    eventually("the new CA is trusted", T, || async { (curl(d, strict, Some("stranger")) == Some(200)).then_some(()) })
        .await;
    assert_eq!(curl(d, strict, Some("partner")), None, "the old CA is no longer trusted");

    // The bundle gone: the strict port is not served at all (never open without its check), and says why.
    let del = tp.cli(&["delete", "configmap", "client-ca"]);
    assert!(del.status.success(), "{}", String::from_utf8_lossy(&del.stderr));
    let message = eventually("the listener reports its missing CA bundle", T, || async {
        let g = tp.client.get("/api/v1/namespaces/default/gateways/partners").await.ok()?;
        let c = condition(&g["status"]["listeners"][0]["conditions"], "ResolvedRefs").clone();
        (c["reason"] == "InvalidCACertificateRef").then(|| c["message"].as_str().unwrap_or("").to_string())
    })
    .await;
    assert_eq!(message, "ConfigMap default/client-ca does not exist");
    eventually("the strict port closed", T, || async { curl(d, strict, Some("stranger")).is_none().then_some(()) })
        .await;
    assert_eq!(curl(d, strict, None), None);

    // `get` and `describe` show the ConfigMap kind as kubectl does.
    tp.apply(&ca_config_map("client-ca", &partners_pem));
    let got = tp.cli(&["get", "configmaps"]);
    let text = String::from_utf8_lossy(&got.stdout);
    assert!(text.contains("NAME") && text.contains("DATA") && text.contains("client-ca"), "{text}");
    let described = tp.cli(&["describe", "configmap", "client-ca"]);
    let text = String::from_utf8_lossy(&described.stdout);
    assert!(text.contains("ca.crt:\n----\n-----BEGIN CERTIFICATE-----"), "{text}");
    eventually("the partner is served again", T, || async {
        (curl(d, strict, Some("partner")) == Some(200)).then_some(())
    })
    .await;

    // A resumed TLS session skips the client's certificate: one made while the lenient port served clients without
    // a certificate is not resumed once that port requires one.
    let client = resuming_client(&server_ca_pem);
    let first = get_over(&client, lenient).await.expect("served without a certificate");
    assert_eq!(first.0, Some(rustls::HandshakeKind::Full));
    assert!(first.1.starts_with("HTTP/1.1 200"), "{}", first.1);
    let again = get_over(&client, lenient).await.expect("served again");
    assert_eq!(again.0, Some(rustls::HandshakeKind::Resumed), "the session is resumed while the settings hold");
    tp.apply(&site(strict, lenient).replace("              mode: AllowInsecureFallback\n", ""));
    eventually("the lenient port now requires a certificate", T, || async {
        curl(d, lenient, None).is_none().then_some(())
    })
    .await;
    let after = get_over(&client, lenient).await;
    assert!(
        !after.as_ref().is_some_and(|(_, text)| text.starts_with("HTTP/1.1 200")),
        "a session from before may not skip the certificate now required: {after:?}"
    );
    tp.stop().await;
}

/// A TLS client trusting `ca_pem`, without a client certificate, that keeps and offers sessions to resume.
fn resuming_client(ca_pem: &str) -> tokio_rustls::TlsConnector {
    use rustls::pki_types::pem::PemObject;
    let mut roots = rustls::RootCertStore::empty();
    for c in rustls::pki_types::CertificateDer::pem_slice_iter(ca_pem.as_bytes()) {
        roots.add(c.expect("pem")).expect("root");
    }
    let provider = std::sync::Arc::new(rustls::crypto::ring::default_provider());
    let config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .expect("versions")
        .with_root_certificates(roots)
        .with_no_client_auth();
    tokio_rustls::TlsConnector::from(std::sync::Arc::new(config))
}

/// `GET /` on `shop.example.test` over TLS: how the handshake went and the answer as text; None when the handshake
/// or the exchange failed.
async fn get_over(client: &tokio_rustls::TlsConnector, port: u16) -> Option<(Option<rustls::HandshakeKind>, String)> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let tcp = tokio::net::TcpStream::connect(("127.0.0.1", port)).await.ok()?;
    let name = rustls::pki_types::ServerName::try_from("shop.example.test").ok()?;
    let mut tls = tokio::time::timeout(Duration::from_secs(5), client.connect(name, tcp)).await.ok()?.ok()?;
    let kind = tls.get_ref().1.handshake_kind();
    tls.write_all(b"GET / HTTP/1.1\r\nHost: shop.example.test\r\nConnection: close\r\n\r\n").await.ok()?;
    let mut answer = Vec::new();
    tokio::time::timeout(Duration::from_secs(5), tls.read_to_end(&mut answer)).await.ok()?.ok()?;
    Some((kind, String::from_utf8_lossy(&answer).into_owned()))
}

/// GET `http://127.0.0.1:<port>/` as `shop.example.test` with curl: the status and body.
fn plain_get(port: u16) -> (u16, String) {
    let out = std::process::Command::new("curl")
        .args(["-s", "--max-time", "5", "-H", "Host: shop.example.test", "-w", "\n%{http_code}"])
        .arg(format!("http://127.0.0.1:{port}/"))
        .output()
        .expect("curl runs");
    let text = String::from_utf8_lossy(&out.stdout).to_string();
    let (body, code) = text.rsplit_once('\n').unwrap_or(("", "0"));
    (code.trim().parse().unwrap_or(0), body.to_string())
}

/// A Gateway `edge` with a plain HTTP listener on `port`, and its HTTPRoute `shop` for shop.example.test with `rules`.
fn shop_route(port: u16, rules: &str) -> String {
    format!(
        "{}---
apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata: {{name: shop}}
spec:
  parentRefs: [{{name: edge}}]
  hostnames: [shop.example.test]
  rules:{rules}",
        gateway_yaml("edge", port, "HTTP")
    )
}

fn backend_site(port: u16) -> String {
    shop_route(port, " [{backendRefs: [{name: auth, port: 8080}]}]\n")
}

fn policy(validation: &str) -> String {
    format!(
        "apiVersion: gateway.networking.k8s.io/v1
kind: BackendTLSPolicy
metadata: {{name: auth-tls}}
spec:
  targetRefs: [{{group: \"\", kind: Service, name: auth, sectionName: http}}]
  validation: {validation}
"
    )
}

/// A backend that ends TLS itself: spoken to in plain HTTP it answers nothing useful (502); a BackendTLSPolicy makes
/// the Gateway speak TLS to it, checking its certificate against the CA bundle and the name (or subject alternative
/// names); a policy that cannot be used never falls back to plain text.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_backend_tls_policy_makes_the_gateway_speak_tls_to_its_backend_and_check_it() {
    let tp = TestPlane::start().await;
    let (ca, ca_pem) = test_ca();
    let (crt, key) = certificate_for(&["auth.example.test"], &ca);
    let one_line = |pem: &str| pem.replace('\n', "\\n");
    let port = free_port();
    tp.apply(
        &[
            app_yaml(
                "auth",
                1,
                &[("TESTAPP_HTTPS", "1"), ("TESTAPP_TLS_CERT", &one_line(&crt)), ("TESTAPP_TLS_KEY", &one_line(&key))],
                "  probes:\n    readiness: {tcp: {port: http}, periodSeconds: 1}\n",
            ),
            backend_site(port),
        ]
        .join("---\n"),
    );
    eventually("auth Ready", T, || async { ready(&tp.app("auth").await).then_some(()) }).await;
    // Plain HTTP to a TLS server: no answer it could use.
    eventually("plain HTTP to the TLS backend fails", T, || async { (plain_get(port).0 == 502).then_some(()) }).await;

    let checked = "{caCertificateRefs: [{group: \"\", kind: ConfigMap, name: auth-ca}], hostname: auth.example.test}";
    tp.apply(&[ca_config_map("auth-ca", &ca_pem), policy(checked)].join("---\n"));
    let (_, body) =
        eventually("served over TLS", T, || async { Some(plain_get(port)).filter(|(code, _)| *code == 200) }).await;
    assert_eq!(body, "auth-0");
    // The status is written after the proxy takes the plan: it may come a moment after the first answer.
    let p = eventually("the policy's status", T, || async {
        let p = tp.client.get("/api/v1/namespaces/default/backendtlspolicies/auth-tls").await.expect("policy");
        p["status"]["ancestors"].get(0).is_some().then_some(p)
    })
    .await;
    let ancestor = &p["status"]["ancestors"][0];
    assert_eq!(ancestor["ancestorRef"]["name"], "edge", "{p}");
    assert_eq!(condition(&ancestor["conditions"], "Accepted")["status"], "True", "{p}");
    assert_eq!(condition(&ancestor["conditions"], "ResolvedRefs")["status"], "True", "{p}");

    // A name the certificate does not carry: refused in the handshake (502), never served unchecked.
    tp.apply(&policy(&checked.replace("hostname: auth.example.test", "hostname: other.example.test")));
    eventually("a wrong name is refused", T, || async { (plain_get(port).0 == 502).then_some(()) }).await;
    // Its subject alternative names decide instead of the SNI name.
    tp.apply(&policy(&checked.replace(
        "hostname: auth.example.test",
        "hostname: other.example.test, subjectAltNames: [{type: Hostname, hostname: auth.example.test}]",
    )));
    eventually("the SAN decides", T, || async { (plain_get(port).0 == 200).then_some(()) }).await;

    // The CA bundle gone: the policy says so, and the backend is not spoken to in plain text (500, not 502).
    let del = tp.cli(&["delete", "configmap", "auth-ca"]);
    assert!(del.status.success(), "{}", String::from_utf8_lossy(&del.stderr));
    let message = eventually("the policy reports its missing CA bundle", T, || async {
        let p = tp.client.get("/api/v1/namespaces/default/backendtlspolicies/auth-tls").await.ok()?;
        let c = condition(&p["status"]["ancestors"][0]["conditions"], "ResolvedRefs").clone();
        (c["reason"] == "InvalidCACertificateRef").then(|| c["message"].as_str().unwrap_or("").to_string())
    })
    .await;
    assert_eq!(message, "ConfigMap default/auth-ca does not exist");
    eventually("the backend is unreachable, not plain", T, || async { (plain_get(port).0 == 500).then_some(()) }).await;

    let got = tp.cli(&["get", "backendtlspolicies"]);
    let text = String::from_utf8_lossy(&got.stdout);
    assert!(text.contains("TARGETS") && text.contains("auth:http") && text.contains("other.example.test"), "{text}");
    tp.stop().await;
}

/// A gRPC-like backend that speaks only HTTP/2 without TLS: reached through a gateway route and through the App's own
/// entry point once its port declares `appProtocol: kubernetes.io/h2c`, and not before.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ports_that_declare_h2c_are_spoken_to_in_http2() {
    let tp = TestPlane::start().await;
    let (route_port, entry_port) = (free_port(), free_port());
    let grpc = |proto: &str| {
        format!(
            "apiVersion: capstan.dev/v1alpha1
kind: App
metadata: {{name: grpc}}
spec:
  replicas: 1
  run:
    command: [{}]
    env: {{TESTAPP_H2C_ONLY: \"1\"}}
  ports: [{{name: grpc{proto}}}]
  expose: [{{port: {entry_port}}}]
  probes:
    readiness: {{tcp: {{port: grpc}}, periodSeconds: 1}}
",
            testapp()
        )
    };
    let site = backend_site(route_port).replace("name: auth, port: 8080", "name: grpc, port: 8080");
    tp.apply(&[grpc(""), site].join("---\n"));
    eventually("grpc Ready", T, || async { ready(&tp.app("grpc").await).then_some(()) }).await;
    let get = |port: u16| {
        let out = std::process::Command::new("curl")
            .args(["-s", "--max-time", "5", "-H", "Host: shop.example.test", "-w", "\n%{http_code}"])
            .arg(format!("http://127.0.0.1:{port}/proto"))
            .output()
            .expect("curl runs");
        String::from_utf8_lossy(&out.stdout).to_string()
    };
    // Spoken to in HTTP/1.1, an HTTP/2-only server answers nothing the balancer can use.
    eventually("HTTP/1.1 to an h2c-only backend fails", T, || async {
        (get(route_port).ends_with("502") && get(entry_port).ends_with("502")).then_some(())
    })
    .await;
    tp.apply(&grpc(", appProtocol: kubernetes.io/h2c"));
    for (what, port) in [("a gateway route", route_port), ("the App's entry point", entry_port)] {
        let answer = eventually(what, T, || async { Some(get(port)).filter(|a| a.ends_with("200")) }).await;
        assert_eq!(answer, "HTTP/2.0\n200", "{what}: the backend saw HTTP/2");
    }
    tp.stop().await;
}

/// Gateway API's RequestMirror: copies of requests, bodies included, go to another App in the share asked for; its
/// answers are thrown away and the client's answers come from the route's backend.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_request_mirror_copies_its_share_of_requests_with_their_bodies() {
    let tp = TestPlane::start().await;
    let port = free_port();
    let route = shop_route(
        port,
        "
    - matches: [{path: {type: Exact, value: /echo}}]
      filters: [{type: RequestMirror, requestMirror: {backendRef: {name: shadow, port: 8080}}}]
      backendRefs: [{name: web, port: 8080}]
    - filters:
        - type: RequestMirror
          requestMirror: {backendRef: {name: shadow, port: 8080}, fraction: {numerator: 1, denominator: 2}}
      backendRefs: [{name: web, port: 8080}]
",
    );
    tp.apply(&[app_yaml("web", 1, &[], READINESS), app_yaml("shadow", 1, &[], READINESS), route].join("---\n"));
    for app in ["web", "shadow"] {
        eventually(&format!("{app} Ready"), T, || async { ready(&tp.app(app).await).then_some(()) }).await;
    }
    let curl = |args: &[&str]| {
        let out = std::process::Command::new("curl")
            .args(["-s", "--max-time", "5", "-H", "Host: shop.example.test"])
            .args(args)
            .output()
            .expect("curl runs");
        String::from_utf8_lossy(&out.stdout).to_string()
    };
    eventually("the route serves", T, || async {
        (curl(&[&format!("http://127.0.0.1:{port}/say/warmup")]) == "ok").then_some(())
    })
    .await;
    for i in 0..20 {
        assert_eq!(curl(&[&format!("http://127.0.0.1:{port}/say/n{i}")]), "ok", "request {i}: the backend's answer");
    }
    let body = "x".repeat(100_000);
    assert_eq!(
        curl(&["--data-binary", &body, &format!("http://127.0.0.1:{port}/echo")]),
        body,
        "the client's body, whole"
    );
    let logs = |app: &str| String::from_utf8_lossy(&tp.cli(&["logs", app]).stdout).to_string();
    let shadow = eventually("the mirror got its copies", T, || async {
        let l = logs("shadow");
        l.contains("echoed 100000 bytes").then_some(l)
    })
    .await;
    // The warm-up was the share's first request (not taken); of the 20 after it, exactly every second one.
    let copied = shadow.lines().filter(|l| l.contains("said n")).count();
    assert_eq!(copied, 10, "exactly half of the 20 numbered requests: {shadow}");
    let served = logs("web");
    assert_eq!(served.lines().filter(|l| l.contains("said n")).count(), 20, "every request reached the backend");
    assert!(served.contains("echoed 100000 bytes"));
    tp.stop().await;
}
