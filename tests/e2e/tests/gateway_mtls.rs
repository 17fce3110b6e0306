//! Client certificates on a Gateway's HTTPS ports (Gateway API's `spec.tls.frontend`), checked with curl: a port that
//! requires one refuses clients without a certificate its CA bundle (a ConfigMap, as written for a cluster) signed, a
//! port in `AllowInsecureFallback` serves them, a changed bundle applies to the next handshake, and a bundle gone
//! takes the port down rather than open it.

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

fn condition<'a>(conditions: &'a serde_json::Value, kind: &str) -> &'a serde_json::Value {
    conditions.as_array().and_then(|c| c.iter().find(|c| c["type"] == kind)).unwrap_or(&serde_json::Value::Null)
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
    tp.stop().await;
}
