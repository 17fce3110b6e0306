//! ACME issuers against a real ACME server (Debian's pebble, every name resolved to 127.0.0.1): an account
//! registered and kept in its Secret, a certificate proven by HTTP-01 on a Gateway's HTTP listener, served on its
//! HTTPS listener and renewed live under requests; a name no listener serves and a challenge the server cannot
//! validate, each named; the server gone during a renewal, the old certificate served meanwhile, and issuance once
//! it is back.

use std::time::Duration;

use base64::Engine;
use capstan_e2e::pebble::Pebble;
use capstan_e2e::tls::*;
use capstan_e2e::*;
use serde_json::Value;

const T: Duration = Duration::from_secs(90);

async fn get(tp: &TestPlane, kind: &str, name: &str) -> Option<Value> {
    tp.client.get(&format!("/api/v1/namespaces/default/{kind}/{name}")).await.ok()
}

fn value(secret: &Value, key: &str) -> String {
    let b64 = secret["spec"]["data"][key].as_str().unwrap_or_default();
    String::from_utf8(base64::engine::general_purpose::STANDARD.decode(b64).unwrap_or_default()).unwrap_or_default()
}

/// A Gateway with an HTTP listener (where pebble looks for HTTP-01 answers) and an HTTPS one for the shop, an ACME
/// Issuer on pebble, an App and the shop's route and Certificate (pebble's certificates live a minute; renewed at
/// 80 % of it).
fn site(pebble: &Pebble, http: u16, https: u16) -> String {
    let bundle = base64::engine::general_purpose::STANDARD.encode(&pebble.ca_pem);
    format!(
        "apiVersion: gateway.networking.k8s.io/v1
kind: Gateway
metadata: {{name: web}}
spec:
  gatewayClassName: capstan
  addresses: [{{value: 127.0.0.1}}]
  listeners:
  - {{name: http, port: {http}, protocol: HTTP}}
  - name: https
    port: {https}
    protocol: HTTPS
    hostname: shop.example.test
    tls: {{certificateRefs: [{{name: shop-tls}}]}}
---
apiVersion: cert-manager.io/v1
kind: Issuer
metadata: {{name: pebble}}
spec:
  acme:
    server: {server}
    email: ops@example.test
    caBundle: {bundle}
    privateKeySecretRef: {{name: pebble-account}}
    solvers:
    - selector: {{dnsNames: [side.example.test]}}
      http01:
        gatewayHTTPRoute:
          parentRefs: [{{name: side}}]
    - http01:
        gatewayHTTPRoute:
          parentRefs: [{{name: web, sectionName: http}}]
---
apiVersion: gateway.networking.k8s.io/v1
kind: Gateway
metadata: {{name: side}}
spec:
  gatewayClassName: capstan
  addresses: [{{value: 127.0.0.1}}]
  listeners: [{{name: http, port: {side}, protocol: HTTP}}]
---
apiVersion: cert-manager.io/v1
kind: Certificate
metadata: {{name: shop}}
spec:
  secretName: shop-tls
  dnsNames: [shop.example.test]
  renewBeforePercentage: 80
  privateKey: {{algorithm: ECDSA}}
  issuerRef: {{name: pebble}}
---
{app}---
apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata: {{name: shop}}
spec:
  parentRefs: [{{name: web}}]
  hostnames: [shop.example.test]
  rules: [{{backendRefs: [{{name: shop, port: 8080}}]}}]
",
        server = pebble.directory(),
        app = app_yaml("shop", 1, &[], ""),
        side = free_port(),
    )
}

async fn ready_at(tp: &TestPlane, name: &str, revision: u64) -> Value {
    eventually(&format!("Certificate {name} Ready at revision {revision}"), T, || async {
        let c = get(tp, "certificates", name).await?;
        let ok = condition(&c["status"]["conditions"], "Ready")["status"] == "True"
            && c["status"]["revision"].as_u64().is_some_and(|r| r >= revision);
        ok.then_some(c)
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn acme_certificates_are_proven_on_the_gateway_served_and_renewed() {
    if !heavy("pebble (Debian's pebble package)") {
        return;
    }
    let (http, https) = (free_port(), free_port());
    let mut pebble = Pebble::start(http, free_port(), Duration::from_secs(60));
    let tp = TestPlane::start().await;
    tp.apply(&site(&pebble, http, https));

    // The account: registered, its URL in status, its key (ECDSA P-256, PKCS#8) written to the Secret named.
    let issuer = eventually("Issuer pebble Ready", T, || async {
        let i = get(&tp, "issuers", "pebble").await?;
        (condition(&i["status"]["conditions"], "Ready")["status"] == "True").then_some(i)
    })
    .await;
    assert_eq!(condition(&issuer["status"]["conditions"], "Ready")["reason"], "ACMEAccountRegistered");
    let uri = issuer["status"]["acme"]["uri"].as_str().unwrap_or_default();
    let first_account = uri.to_string();
    assert!(uri.starts_with(&format!("https://127.0.0.1:{}/my-account/", pebble.port)), "{issuer}");
    assert_eq!(issuer["status"]["acme"]["lastRegisteredEmail"], "ops@example.test");
    let account = get(&tp, "secrets", "pebble-account").await.expect("the account key's Secret");
    assert!(value(&account, "tls.key").starts_with("-----BEGIN PRIVATE KEY-----"), "{account}");

    // Issued through HTTP-01 on the HTTP listener: the chain (leaf and pebble's intermediate), no ca.crt, verified
    // by openssl against pebble's root.
    let shop = ready_at(&tp, "shop", 1).await;
    assert!(shop["status"]["renewalTime"].is_string(), "{shop}");
    let secret = get(&tp, "secrets", "shop-tls").await.expect("the Secret");
    let crt = value(&secret, "tls.crt");
    assert!(crt.matches("BEGIN CERTIFICATE").count() >= 2, "the leaf and the intermediate: {crt}");
    assert!(value(&secret, "tls.key").starts_with("-----BEGIN EC PRIVATE KEY-----"));
    assert!(secret["spec"]["data"]["ca.crt"].is_null(), "an ACME server's root is not known: no ca.crt");
    let root = pebble.root().await;
    let dir = tempfile::tempdir().expect("tempdir");
    std::fs::write(dir.path().join("root.pem"), &root).expect("write");
    std::fs::write(dir.path().join("tls.crt"), &crt).expect("write");
    let verify = std::process::Command::new("openssl")
        .args(["verify", "-CAfile", "root.pem", "-untrusted", "tls.crt", "-verify_hostname", "shop.example.test"])
        .arg("tls.crt")
        .current_dir(dir.path())
        .output()
        .expect("openssl runs");
    assert!(verify.status.success(), "openssl verify: {}", String::from_utf8_lossy(&verify.stderr));

    // describe shows the chain the Secret holds: the leaf for the name, then pebble's intermediate.
    let out = tp.cli(&["describe", "certificate", "shop"]);
    let page = String::from_utf8_lossy(&out.stdout);
    assert!(
        page.contains("Chain:\n  1. ") && page.contains("\n  2. ") && page.contains("DNSName(shop.example.test)"),
        "{page}"
    );
    assert!(page.contains("Pebble Intermediate"), "{page}");

    // Served on the HTTPS listener, trusted through pebble's root.
    let first = der_of(&crt);
    let served = eventually("the Gateway serves the ACME certificate", T, || async {
        https_get(https, "shop.example.test", "/", &root).await.filter(|r| r.0 == 200)
    })
    .await;
    assert_eq!(served.2, first);
    // Renewal at 80 % of a minute, live, under open-loop HTTPS load: clients that keep their connections (40 requests
    // a second) and clients that make a handshake for every request (20 a second) lose none, and new handshakes get
    // the new certificate.
    let (stop_tx, stop) = tokio::sync::watch::channel(false);
    let url = format!("https://127.0.0.1:{https}/");
    let load = |keep_alive: bool, rate: u32| {
        tokio::spawn(open_loop_with(
            https_client(&root, Some("shop.example.test"), keep_alive),
            url.clone(),
            hyper::Method::GET,
            rate,
            keep_alive,
            stop.clone(),
            Duration::from_secs(150),
            vec![("host", "shop.example.test".to_string())],
        ))
    };
    let (kept, fresh) = (load(true, 40), load(false, 20));
    let (renewed, failures) = until_renewed(https, "shop.example.test", &root, &first, T).await;
    let renewed_at = tokio::time::Instant::now();
    tokio::time::sleep(Duration::from_secs(1)).await;
    stop_tx.send(true).expect("stop the load");
    let (kept, fresh) = (kept.await.expect("the kept-alive load"), fresh.await.expect("the per-request load"));
    assert!(failures.is_empty(), "requests failed during the renewal: {failures:?}");
    let renewed = renewed.expect("the renewed certificate is served");
    for (what, shots) in [("kept-alive", &kept), ("one handshake per request", &fresh)] {
        let failed = capstan_e2e::failures(shots);
        assert!(
            failed.is_empty(),
            "{what}: {} of {} requests failed: {:?}",
            failed.len(),
            shots.len(),
            &failed[..failed.len().min(5)]
        );
        assert!(shots.iter().any(|s| s.finished > renewed_at), "{what}: the load ran past the renewal");
        // The renewal comes at 80 % of a minute, tens of seconds into the load.
        assert!(shots.len() > 100, "{what}: {} requests", shots.len());
    }
    ready_at(&tp, "shop", 2).await;

    // A challenge the server cannot validate: the solver the selector picks answers on Gateway side's listener,
    // which pebble does not look at (it asks the HTTP port of Gateway web, which has no answer there). The failure
    // names the name and what the server saw.
    tp.apply("apiVersion: cert-manager.io/v1\nkind: Certificate\nmetadata: {name: side}\nspec: {secretName: side-tls, dnsNames: [side.example.test], issuerRef: {name: pebble}}\n");
    let side = eventually("Certificate side reports the failed validation", T, || async {
        let c = get(&tp, "certificates", "side").await?;
        let issuing = condition(&c["status"]["conditions"], "Issuing").clone();
        (issuing["reason"] == "Failed").then_some(c)
    })
    .await;
    let message =
        condition(&side["status"]["conditions"], "Issuing")["message"].as_str().unwrap_or_default().to_string();
    assert!(
        message.contains("validating the challenges")
            && message.contains("side.example.test")
            && message.contains("404"),
        "{message}"
    );
    assert!(get(&tp, "secrets", "side-tls").await.is_none(), "nothing written");

    // The server gone during a renewal: the failure is named and backed off, the old certificate still served.
    pebble.stop();
    // A name no HTTP listener of the solver's Gateway serves: refused before the server is asked (it is down), the
    // field named and the listener that does not take it.
    tp.apply(
        "apiVersion: gateway.networking.k8s.io/v1
kind: Gateway
metadata: {name: api}
spec:
  gatewayClassName: capstan
  addresses: [{value: 127.0.0.1}]
  listeners: [{name: http, port: APIPORT, protocol: HTTP, hostname: api.example.test}]
---
apiVersion: cert-manager.io/v1
kind: Issuer
metadata: {name: on-api}
spec:
  acme:
    server: SERVER
    skipTLSVerify: true
    privateKeySecretRef: {name: pebble-account}
    solvers: [{http01: {gatewayHTTPRoute: {parentRefs: [{name: api}]}}}]
---
apiVersion: cert-manager.io/v1
kind: Certificate
metadata: {name: lost}
spec:
  secretName: lost-tls
  dnsNames: [lost.example.test]
  issuerRef: {name: on-api}
"
        .replace("SERVER", &pebble.directory())
        .replace("APIPORT", &free_port().to_string())
        .as_str(),
    );
    let lost = eventually("Certificate lost names its unserved name", T, || async {
        let c = get(&tp, "certificates", "lost").await?;
        let issuing = condition(&c["status"]["conditions"], "Issuing").clone();
        (issuing["reason"] == "Failed").then_some(issuing)
    })
    .await;
    let message = lost["message"].as_str().unwrap_or_default();
    assert!(message.contains("spec.dnsNames[0]") && message.contains("no HTTP listener"), "{message}");
    assert!(message.contains("listener http of Gateway default/api serves api.example.test"), "{message}");

    let out = tp.cli(&["certificate", "renew", "shop"]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let failed = eventually("the renewal fails while pebble is down", T, || async {
        let c = get(&tp, "certificates", "shop").await?;
        (condition(&c["status"]["conditions"], "Issuing")["reason"] == "Failed").then_some(c)
    })
    .await;
    let issuing = condition(&failed["status"]["conditions"], "Issuing");
    assert!(
        issuing["message"].as_str().unwrap_or_default().contains(&format!("127.0.0.1:{}", pebble.port)),
        "{issuing}"
    );
    assert_eq!(condition(&failed["status"]["conditions"], "Ready")["status"], "True", "{failed}");
    let still = https_get(https, "shop.example.test", "/", &root).await.expect("still served");
    assert_eq!((still.0, still.2), (200, renewed.clone()));

    // Back (a new pebble: a new root, no accounts): the next attempt registers again and issues.
    pebble.resume();
    let revision = failed["status"]["revision"].as_u64().unwrap_or(0);
    ready_at(&tp, "shop", revision + 1).await;
    // The Issuer names the account the new pebble registered, not the one the old pebble had.
    let now_registered = get(&tp, "issuers", "pebble").await.expect("the Issuer");
    let account_uri = now_registered["status"]["acme"]["uri"].as_str().unwrap_or_default().to_string();
    assert!(
        account_uri != first_account
            && account_uri.starts_with(&format!("https://127.0.0.1:{}/my-account/", pebble.port)),
        "the account before: {first_account}; now: {account_uri}"
    );
    let root = pebble.root().await;
    eventually("the certificate from the new pebble is served", T, || async {
        https_get(https, "shop.example.test", "/", &root).await.filter(|r| r.0 == 200)
    })
    .await;
    drop(pebble);
    tp.stop().await;
}

/// A CA that binds accounts to accounts it knows (external account binding, as ZeroSSL's and Google's): an Issuer
/// with the key ID and the HMAC key in a Secret registers; one without is refused with the server's reason and what
/// to do; one with a wrong key is refused.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_external_account_binding_registers_the_account_the_ca_expects() {
    if !heavy("pebble (Debian's pebble package)") {
        return;
    }
    const MAC: &str = "zWNDZM6eQGHWpSRTPal5eIUYFTu7EajVIoguysqZ9wG44nMEtx3MUAsUDkMTQ12W";
    let pebble = Pebble::start_with(free_port(), free_port(), Duration::from_secs(60), &[("kid-1", MAC)]);
    let tp = TestPlane::start().await;
    let bundle = base64::engine::general_purpose::STANDARD.encode(&pebble.ca_pem);
    let issuer = |name: &str, eab: &str| {
        format!(
            "apiVersion: cert-manager.io/v1\nkind: Issuer\nmetadata: {{name: {name}}}\nspec:\n  acme:\n    server: {}\n    caBundle: {bundle}\n    privateKeySecretRef: {{name: {name}-account}}\n{eab}---\n",
            pebble.directory()
        )
    };
    let wrong = MAC.replace('z', "y");
    tp.apply(&format!(
        "apiVersion: capstan.dev/v1alpha1\nkind: Secret\nmetadata: {{name: eab}}\nspec: {{stringData: {{secret: {MAC}, wrong: {wrong}}}}}\n---\n{}{}{}",
        issuer("bound", "    externalAccountBinding: {keyID: kid-1, keySecretRef: {name: eab}}\n"),
        issuer("unbound", ""),
        issuer("forged", "    externalAccountBinding: {keyID: kid-1, keySecretRef: {name: eab, key: wrong}}\n"),
    ));
    let ready = |name: &'static str| {
        let tp = &tp;
        async move {
            eventually(&format!("Issuer {name} reports its registration"), T, || async {
                let i = get(tp, "issuers", name).await?;
                let c = condition(&i["status"]["conditions"], "Ready").clone();
                (!c.is_null()).then_some((c, i))
            })
            .await
        }
    };
    let (c, bound) = ready("bound").await;
    assert_eq!((c["status"].as_str(), c["reason"].as_str()), (Some("True"), Some("ACMEAccountRegistered")), "{c}");
    assert!(bound["status"]["acme"]["uri"].as_str().is_some_and(|u| u.contains("/my-account/")), "{bound}");
    let (c, _) = ready("unbound").await;
    assert_eq!(c["reason"], "ErrRegisterACMEAccount", "{c}");
    assert!(c["message"].as_str().unwrap_or_default().contains("externalAccountRequired"), "{c}");
    let (c, _) = ready("forged").await;
    assert_eq!(c["reason"], "ErrRegisterACMEAccount", "{c}");
    assert!(get(&tp, "secrets", "forged-account").await.is_none(), "a refused registration writes no key");
    drop(pebble);
    tp.stop().await;
}

/// cert-manager's gateway-shim: a Gateway annotated with a ClusterIssuer gets a Certificate for its HTTPS
/// listener's Secret and host name, issued by pebble (the account key kept in `cert-manager`) and served; without the
/// annotation the Certificate goes and its Secret stays.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_annotated_gateway_gets_its_certificates_without_one_written() {
    if !heavy("pebble (Debian's pebble package)") {
        return;
    }
    let (http, https) = (free_port(), free_port());
    let pebble = Pebble::start(http, free_port(), Duration::from_secs(3600));
    let tp = TestPlane::start().await;
    // A Certificate for one of its Secrets, written by hand before the Gateway (even with the shim's label): the shim
    // leaves it alone. (One the shim made first is the shim's, as cert-manager's gateway-shim keeps what it owns.)
    let hand = "apiVersion: cert-manager.io/v1\nkind: Certificate\nmetadata: {name: hand-tls, labels: {capstan.dev/made-for-gateway: web}}\nspec: {secretName: hand-tls, dnsNames: [hand.example.test, www.hand.example.test], issuerRef: {name: elsewhere}}\n";
    tp.apply(hand);
    let bundle = base64::engine::general_purpose::STANDARD.encode(&pebble.ca_pem);
    let gateway = |annotations: &str| {
        format!(
            "apiVersion: gateway.networking.k8s.io/v1
kind: Gateway
metadata:
  name: web
  annotations: {{{annotations}}}
spec:
  gatewayClassName: capstan
  addresses: [{{value: 127.0.0.1}}]
  listeners:
  - {{name: http, port: {http}, protocol: HTTP}}
  - name: https
    port: {https}
    protocol: HTTPS
    hostname: shim.example.test
    tls: {{certificateRefs: [{{name: shim-tls}}]}}
  - name: hand
    port: {https}
    protocol: HTTPS
    hostname: hand.example.test
    tls: {{certificateRefs: [{{name: hand-tls}}]}}
"
        )
    };
    tp.apply(&format!(
        "{}---
apiVersion: cert-manager.io/v1
kind: ClusterIssuer
metadata: {{name: pebble}}
spec:
  acme:
    server: {}
    caBundle: {bundle}
    privateKeySecretRef: {{name: pebble-account}}
    solvers: [{{http01: {{gatewayHTTPRoute: {{parentRefs: [{{name: web, namespace: default, sectionName: http}}]}}}}}}]
---
{}---
apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata: {{name: shim}}
spec:
  parentRefs: [{{name: web, sectionName: https}}]
  rules: [{{backendRefs: [{{name: shim, port: 8080}}]}}]
",
        gateway("cert-manager.io/cluster-issuer: pebble, cert-manager.io/private-key-algorithm: ECDSA"),
        pebble.directory(),
        app_yaml("shim", 1, &[], ""),
    ));
    let cert = ready_at(&tp, "shim-tls", 1).await;
    let note = eventually("the Gateway says it left Certificate hand-tls alone", T, || async {
        let events = tp.client.get("/api/v1/namespaces/default/gateways/web/events").await.ok()?;
        events["items"].as_array()?.iter().find(|e| e["reason"] == "BadConfig").cloned()
    })
    .await;
    assert!(note["message"].as_str().unwrap_or_default().contains("hand-tls"), "{note}");
    let kept = get(&tp, "certificates", "hand-tls").await.expect("still there");
    assert_eq!(kept["spec"]["dnsNames"], serde_json::json!(["hand.example.test", "www.hand.example.test"]));
    assert_eq!(cert["metadata"]["labels"]["capstan.dev/made-for-gateway"], "web");
    assert_eq!(cert["spec"]["dnsNames"], serde_json::json!(["shim.example.test"]));
    assert_eq!(cert["spec"]["privateKey"]["algorithm"], "ECDSA");
    assert_eq!(cert["spec"]["issuerRef"]["kind"], "ClusterIssuer");
    // The ClusterIssuer's account: registered, its key in the cluster resource namespace (cert-manager's).
    let issuer = tp.client.get("/api/v1/clusterissuers/pebble").await.expect("the ClusterIssuer");
    assert!(issuer["status"]["acme"]["uri"].as_str().is_some_and(|u| u.contains("/my-account/")), "{issuer}");
    let account = tp.client.get("/api/v1/namespaces/cert-manager/secrets/pebble-account").await.expect("the key");
    assert!(value(&account, "tls.key").contains("PRIVATE KEY"), "{account}");
    assert!(get(&tp, "secrets", "pebble-account").await.is_none(), "not in the Certificate's namespace");
    let root = pebble.root().await;
    let secret = get(&tp, "secrets", "shim-tls").await.expect("the Secret");
    let leaf = der_of(&value(&secret, "tls.crt"));
    let served = eventually("the HTTPS listener serves the certificate made for it", T, || async {
        https_get(https, "shim.example.test", "/", &root).await.filter(|r| r.0 == 200)
    })
    .await;
    assert_eq!(served.2, leaf);

    // The annotation removed: the Certificate made for the Gateway goes; its Secret, still served, stays.
    tp.apply(&gateway(""));
    eventually("the Certificate made for the Gateway is deleted", T, || async {
        get(&tp, "certificates", "shim-tls").await.is_none().then_some(())
    })
    .await;
    assert!(get(&tp, "secrets", "shim-tls").await.is_some(), "the Secret is kept");
    assert!(get(&tp, "certificates", "hand-tls").await.is_some(), "what the shim did not make is not deleted");
    let still = https_get(https, "shim.example.test", "/", &root).await.expect("still served");
    assert_eq!((still.0, still.2), (200, leaf));
    drop(pebble);
    tp.stop().await;
}

/// TLS-ALPN-01 (RFC 8737), asked for by the Issuer's `capstan.dev/acme-challenge` annotation: answered in the
/// handshakes of the Gateway's HTTPS listener (which has no certificate yet, and no HTTP listener beside it), then
/// the certificate issued is served on that same listener.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_alpn_01_is_answered_in_the_https_listeners_handshakes() {
    if !heavy("pebble (Debian's pebble package)") {
        return;
    }
    let https = free_port();
    let pebble = Pebble::start(free_port(), https, Duration::from_secs(3600));
    let tp = TestPlane::start().await;
    let bundle = base64::engine::general_purpose::STANDARD.encode(&pebble.ca_pem);
    tp.apply(&format!(
        "apiVersion: gateway.networking.k8s.io/v1
kind: Gateway
metadata: {{name: web}}
spec:
  gatewayClassName: capstan
  addresses: [{{value: 127.0.0.1}}]
  listeners:
  - name: https
    port: {https}
    protocol: HTTPS
    hostname: alpn.example.test
    tls: {{certificateRefs: [{{name: alpn-tls}}]}}
---
apiVersion: cert-manager.io/v1
kind: Issuer
metadata:
  name: pebble
  annotations: {{capstan.dev/acme-challenge: tls-alpn-01}}
spec:
  acme:
    server: {}
    caBundle: {bundle}
    privateKeySecretRef: {{name: pebble-account}}
    solvers: [{{http01: {{gatewayHTTPRoute: {{parentRefs: [{{name: web}}]}}}}}}]
---
apiVersion: cert-manager.io/v1
kind: Certificate
metadata: {{name: alpn}}
spec:
  secretName: alpn-tls
  dnsNames: [alpn.example.test]
  issuerRef: {{name: pebble}}
---
{}---
apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata: {{name: alpn}}
spec:
  parentRefs: [{{name: web}}]
  rules: [{{backendRefs: [{{name: alpn, port: 8080}}]}}]
",
        pebble.directory(),
        app_yaml("alpn", 1, &[], ""),
    ));
    ready_at(&tp, "alpn", 1).await;
    let root = pebble.root().await;
    let secret = get(&tp, "secrets", "alpn-tls").await.expect("the Secret");
    let leaf = der_of(&value(&secret, "tls.crt"));
    let served = eventually("the HTTPS listener serves the certificate it proved", T, || async {
        https_get(https, "alpn.example.test", "/", &root).await.filter(|r| r.0 == 200)
    })
    .await;
    assert_eq!(served.2, leaf);
    // With the order done, a validation handshake gets no certificate at all (not checked against any root: the
    // challenge's own would not verify either): its answer is withdrawn.
    let probe = std::process::Command::new("openssl")
        .args(["s_client", "-connect", &format!("127.0.0.1:{https}"), "-servername", "alpn.example.test"])
        .args(["-alpn", "acme-tls/1"])
        .stdin(std::process::Stdio::null())
        .output()
        .expect("openssl runs");
    let text = String::from_utf8_lossy(&probe.stdout);
    assert!(!text.contains("BEGIN CERTIFICATE"), "no TLS-ALPN-01 answer once the order is done: {text}");
    // An ordinary client still gets the issued certificate.
    let again = https_get(https, "alpn.example.test", "/", &root).await.expect("served");
    assert_eq!(again.2, leaf);
    drop(pebble);
    tp.stop().await;
}

/// Renewal information (RFC 9773) and a rate limit (RFC 8555 §6.6) against pebble, through a front that adds what
/// pebble 2.4 lacks (its certificate not checked: `skipTLSVerify` against a live server): the server suggests renewing the first certificate at once (its window already open), so it is
/// renewed long before its renewal time, the order naming the certificate it replaces; that order is refused with a
/// 429 and `Retry-After: 15`, so the server is not asked again before then while the old certificate keeps serving;
/// the next attempt is issued, and the new certificate's window (20–25 minutes on) becomes its renewal time.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn renewal_information_brings_renewals_forward_and_a_rate_limit_is_waited_out() {
    use capstan_e2e::acme_front::{AcmeFront, Window};
    if !heavy("pebble (Debian's pebble package)") {
        return;
    }
    let (http, https) = (free_port(), free_port());
    let pebble = Pebble::start(http, free_port(), Duration::from_secs(3600));
    let minutes = chrono::Duration::minutes;
    let windows = [Window { start: minutes(-2), end: minutes(-1) }, Window { start: minutes(20), end: minutes(25) }];
    let front = AcmeFront::start(pebble.port, &pebble.ca_pem, &windows).await;
    // The second new order (the renewal) is refused once with a rate limit.
    front.limit_orders(1, 1, 15);
    let tp = TestPlane::start().await;
    // The front's certificate is not checked (`skipTLSVerify`, as for a private test CA).
    tp.apply(&format!(
        "apiVersion: gateway.networking.k8s.io/v1
kind: Gateway
metadata: {{name: web}}
spec:
  gatewayClassName: capstan
  addresses: [{{value: 127.0.0.1}}]
  listeners:
  - {{name: http, port: {http}, protocol: HTTP}}
  - {{name: https, port: {https}, protocol: HTTPS, hostname: ari.example.test, tls: {{certificateRefs: [{{name: ari-tls}}]}}}}
---
apiVersion: cert-manager.io/v1
kind: Issuer
metadata: {{name: front}}
spec:
  acme:
    server: {server}
    skipTLSVerify: true
    privateKeySecretRef: {{name: front-account}}
    solvers: [{{http01: {{gatewayHTTPRoute: {{parentRefs: [{{name: web, sectionName: http}}]}}}}}}]
---
apiVersion: cert-manager.io/v1
kind: Certificate
metadata: {{name: ari}}
spec: {{secretName: ari-tls, dnsNames: [ari.example.test], privateKey: {{algorithm: ECDSA}}, issuerRef: {{name: front}}}}
---
{app}---
apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata: {{name: ari}}
spec:
  parentRefs: [{{name: web, sectionName: https}}]
  rules: [{{backendRefs: [{{name: ari, port: 8080}}]}}]
",
        server = front.directory(),
        app = app_yaml("ari", 1, &[], ""),
    ));
    let first = ready_at(&tp, "ari", 1).await;
    let first_leaf = der_of(&value(&get(&tp, "secrets", "ari-tls").await.expect("the Secret"), "tls.crt"));
    let root = pebble.root().await;

    // The server's window for it is already open: the renewal starts at once, and meets the rate limit.
    let limited = eventually("the renewal is refused with the rate limit, named", T, || async {
        let c = get(&tp, "certificates", "ari").await?;
        let issuing = condition(&c["status"]["conditions"], "Issuing").clone();
        (issuing["reason"] == "Failed").then_some(issuing)
    })
    .await;
    let message = limited["message"].as_str().unwrap_or_default();
    assert!(message.contains("rateLimited") && message.contains("retry after"), "{limited}");
    let served = https_get(https, "ari.example.test", "/", &root).await.expect("served");
    assert_eq!((served.0, served.2), (200, first_leaf.clone()), "the old certificate keeps serving");

    // Issued once the limit has passed, not before.
    let second = ready_at(&tp, "ari", 2).await;
    let orders = front.orders();
    assert!(orders.len() >= 3, "{orders:?}");
    assert_eq!(orders[0].replaces, None, "the first order replaces nothing");
    assert_eq!(orders[1].status, 429);
    let asked = front.asked();
    assert_eq!(orders[1].replaces.as_ref(), asked.first(), "the renewal names the certificate it replaces: {asked:?}");
    assert_eq!(orders[2].replaces, orders[1].replaces);
    let waited = orders[2].at - orders[1].at;
    assert!(waited >= Duration::from_secs(14), "asked again {waited:?} after a Retry-After of 15 s");
    let renewed = eventually("the renewed certificate is served", T, || async {
        https_get(https, "ari.example.test", "/", &root).await.filter(|r| r.0 == 200 && r.2 != first_leaf)
    })
    .await;
    let secret = get(&tp, "secrets", "ari-tls").await.expect("the Secret");
    assert_eq!(renewed.2, der_of(&value(&secret, "tls.crt")));
    // Renewed long before its own renewal time (a third of its hour before its end).
    let own = chrono::DateTime::parse_from_rfc3339(first["status"]["renewalTime"].as_str().expect("renewalTime"))
        .expect("a time");
    assert!(chrono::Utc::now() < own - chrono::Duration::minutes(30), "the first renewal time was {own}");

    // The new certificate's window (20–25 minutes on) is its renewal time, earlier than a third of its hour before
    // its end.
    let (_, start, end) =
        eventually("the server is asked about the new certificate", T, || async { front.windows().get(1).cloned() })
            .await;
    let scheduled = eventually("the renewal time is in the server's window", T, || async {
        let c = get(&tp, "certificates", "ari").await?;
        let at = chrono::DateTime::parse_from_rfc3339(c["status"]["renewalTime"].as_str()?).ok()?;
        (at >= start && at <= end).then_some(at)
    })
    .await;
    let not_after =
        chrono::DateTime::parse_from_rfc3339(second["status"]["notAfter"].as_str().expect("notAfter")).expect("a time");
    assert!(scheduled < not_after - chrono::Duration::minutes(20), "{scheduled} against {not_after}");
    let events = tp.client.get("/api/v1/namespaces/default/certificates/ari/events").await.expect("events");
    let said =
        |reason: &str| events["items"].as_array().into_iter().flatten().filter(|e| e["reason"] == reason).count();
    assert!(said("RenewalInfo") >= 2, "{events}");
    let renewing = events["items"].as_array().into_iter().flatten().find(|e| e["reason"] == "Renewing");
    assert!(renewing.is_some_and(|e| e["message"].as_str().unwrap_or("").contains("renewal information")), "{events}");
    drop(front);
    drop(pebble);
    tp.stop().await;
}
