//! cert-manager's Issuer and Certificate on the embedded runtime, from the outside (`examples/certificates`): a
//! self-signed root made by a Certificate, a CA Issuer on it, a server certificate it signs (checked by `openssl verify`) served by a Gateway
//! and renewed under requests without one failing; a broken issuer reported while the old certificate keeps serving.

use std::time::Duration;

use base64::Engine;
use capstan_e2e::tls::*;
use capstan_e2e::*;
use serde_json::Value;

const T: Duration = Duration::from_secs(60);

/// `examples/certificates` as written, but for the test app, a free port, and a renewal 12 s after each issuance
/// (one hour's certificate, renewed 59m48s before its end).
fn site(https: u16) -> String {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/../../examples/certificates/certificates.yaml");
    let yaml = std::fs::read_to_string(path).expect("examples/certificates/certificates.yaml");
    for needle in ["command: [capstan-hello]", "port: 8443", "duration: 2160h", "renewBefore: 720h", "shop.localhost"] {
        assert!(yaml.contains(needle), "the example still says {needle}");
    }
    yaml.replace("command: [capstan-hello]", &format!("command: [{}]", testapp()))
        .replace("port: 8443", &format!("port: {https}"))
        .replace("duration: 2160h", "duration: 1h")
        .replace("renewBefore: 720h", "renewBefore: 59m48s")
        .replace("shop.localhost", "shop.example.test")
}

async fn get(tp: &TestPlane, kind: &str, name: &str) -> Option<Value> {
    tp.client.get(&format!("/api/v1/namespaces/default/{kind}/{name}")).await.ok()
}

fn value(secret: &Value, key: &str) -> String {
    let b64 = secret["spec"]["data"][key].as_str().unwrap_or_default();
    String::from_utf8(base64::engine::general_purpose::STANDARD.decode(b64).unwrap_or_default()).unwrap_or_default()
}

/// The Certificate once `Ready` at `revision` or later.
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
async fn issuers_sign_certificates_into_secrets_that_the_gateway_serves_and_renews() {
    let tp = TestPlane::start().await;
    let https = free_port();
    tp.apply(&site(https));

    // The root signs itself; the CA Issuer on its Secret is verified; the server certificate is signed by it.
    ready_at(&tp, "root", 1).await;
    let ca_issuer = eventually("Issuer ca Ready", T, || async {
        let i = get(&tp, "issuers", "ca").await?;
        (condition(&i["status"]["conditions"], "Ready")["status"] == "True").then_some(i)
    })
    .await;
    assert_eq!(condition(&ca_issuer["status"]["conditions"], "Ready")["reason"], "KeyPairVerified");
    let shop = ready_at(&tp, "shop", 1).await;
    assert!(
        shop["status"]["notBefore"].is_string()
            && shop["status"]["notAfter"].is_string()
            && shop["status"]["renewalTime"].is_string(),
        "{shop}"
    );
    let root = get(&tp, "secrets", "root-ca").await.expect("the root's Secret");
    let secret = get(&tp, "secrets", "shop-tls").await.expect("the Secret");
    assert_eq!(secret["spec"]["type"], "kubernetes.io/tls");
    assert_eq!(secret["metadata"]["annotations"]["cert-manager.io/certificate-name"], "shop");
    assert_eq!(secret["metadata"]["annotations"]["cert-manager.io/issuer-name"], "ca");
    let (crt, key, ca) = (value(&secret, "tls.crt"), value(&secret, "tls.key"), value(&secret, "ca.crt"));
    assert!(key.starts_with("-----BEGIN RSA PRIVATE KEY-----"), "cert-manager's default key: RSA 2048 in PKCS#1");
    assert!(value(&root, "tls.key").starts_with("-----BEGIN EC PRIVATE KEY-----"), "ECDSA in SEC 1");
    assert_eq!(ca, value(&root, "tls.crt"), "ca.crt is the root that signed it");
    assert_eq!(crt.matches("BEGIN CERTIFICATE").count(), 1, "tls.crt: the certificate; the self-signed root is ca.crt");

    // openssl agrees: the chain verifies to the root, for the name asked, with the names asked.
    let dir = tempfile::tempdir().expect("tempdir");
    std::fs::write(dir.path().join("ca.crt"), &ca).expect("write");
    std::fs::write(dir.path().join("tls.crt"), &crt).expect("write");
    let verify = std::process::Command::new("openssl")
        .args(["verify", "-CAfile", "ca.crt", "-verify_hostname", "shop.example.test", "tls.crt"])
        .current_dir(dir.path())
        .output()
        .expect("openssl runs");
    assert!(
        verify.status.success(),
        "openssl verify: {}{}",
        String::from_utf8_lossy(&verify.stdout),
        String::from_utf8_lossy(&verify.stderr)
    );
    let text = std::process::Command::new("openssl")
        .args(["x509", "-noout", "-text", "-in", "tls.crt"])
        .current_dir(dir.path())
        .output()
        .expect("openssl runs");
    let text = String::from_utf8_lossy(&text.stdout);
    assert!(text.contains("DNS:shop.example.test") && text.contains("IP Address:127.0.0.1"), "{text}");
    assert!(text.contains("Public-Key: (2048 bit)"), "{text}");

    // The Gateway serves it, trusted through the root.
    let first = der_of(&crt);
    let served = eventually("the Gateway serves the issued certificate", T, || async {
        https_get(https, "shop.example.test", "/", &ca).await.filter(|r| r.0 == 200)
    })
    .await;
    assert_eq!(served.2, first);

    // Renewal (renewBefore leaves 12 s of its hour): a new certificate, a new key, swapped in live while requests
    // on new connections keep coming; none fails.
    let (renewed, failures) = until_renewed(https, "shop.example.test", &ca, &first, T).await;
    assert!(failures.is_empty(), "requests failed during the renewal: {failures:?}");
    let renewed = renewed.expect("the Gateway served the renewed certificate");
    let shop = ready_at(&tp, "shop", 2).await;
    let secret = get(&tp, "secrets", "shop-tls").await.expect("the Secret");
    assert_eq!(der_of(&value(&secret, "tls.crt")), renewed);
    assert_ne!(value(&secret, "tls.key"), key, "rotationPolicy Always: a new key");
    let events = tp.client.get("/api/v1/namespaces/default/certificates/shop/events").await.expect("events");
    let reasons: Vec<&str> =
        events["items"].as_array().into_iter().flatten().filter_map(|e| e["reason"].as_str()).collect();
    assert!(
        reasons.contains(&"DoesNotExist") && reasons.contains(&"Renewing") && reasons.contains(&"Issued"),
        "{reasons:?}"
    );

    // The CLI: kubectl's columns and a describe with the names, the key and the renewal.
    let out = tp.cli(&["get", "certificates"]);
    let listing = String::from_utf8_lossy(&out.stdout);
    assert!(listing.contains("READY") && listing.contains("shop-tls") && listing.contains("Issuer/ca"), "{listing}");
    let out = tp.cli(&["describe", "certificate", "shop"]);
    let page = String::from_utf8_lossy(&out.stdout);
    assert!(
        page.contains("DNS:shop.example.test, IP:127.0.0.1") && page.contains("RSA 2048") && page.contains("Renewal:"),
        "{page}"
    );
    let out = tp.cli(&["get", "issuers"]);
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("ca (Secret root-ca)"),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );

    // A broken issuer: its CA Secret gone from its spec. The renewal fails and says why; the Secret is not touched,
    // Ready stays True while the old certificate is valid, and the Gateway keeps serving it.
    tp.apply("apiVersion: cert-manager.io/v1\nkind: Issuer\nmetadata: {name: ca}\nspec: {ca: {secretName: gone}}\n");
    let broken = eventually("Issuer ca reports its missing Secret", T, || async {
        let i = get(&tp, "issuers", "ca").await?;
        let c = condition(&i["status"]["conditions"], "Ready").clone();
        (c["status"] == "False").then_some(c)
    })
    .await;
    assert_eq!(broken["reason"], "ErrGetKeyPair");
    assert!(broken["message"].as_str().unwrap_or("").contains("\"gone\" not found"), "{broken}");
    let revision = shop["status"]["revision"].as_u64().unwrap_or(0);
    let failed = eventually("the renewal fails, named", T, || async {
        let c = get(&tp, "certificates", "shop").await?;
        (condition(&c["status"]["conditions"], "Issuing")["reason"] == "Failed").then_some(c)
    })
    .await;
    let issuing = condition(&failed["status"]["conditions"], "Issuing");
    assert!(issuing["message"].as_str().unwrap_or("").contains("Issuer ca is not ready"), "{issuing}");
    assert_eq!(condition(&failed["status"]["conditions"], "Ready")["status"], "True", "the old one is still valid");
    assert!(failed["status"]["failedIssuanceAttempts"].as_u64() >= Some(1));
    // describe says when it expires and when the last attempt failed.
    let out = tp.cli(&["describe", "certificate", "shop"]);
    let page = String::from_utf8_lossy(&out.stdout);
    assert!(page.contains("Not after:") && page.contains("Failed attempts:") && page.contains("the last at"), "{page}");
    // Capstan's own metrics say so as cert-manager's do, and the built-in rule fires: within 7 days of expiry and
    // past its renewal time (Capstan scrapes its /metrics every 15 s).
    let fired = eventually("CapstanCertificateExpiringSoon fires for shop", Duration::from_secs(90), || async {
        let r = query_result(&tp, "ALERTS{alertname=\"CapstanCertificateExpiringSoon\", alertstate=\"firing\"}").await;
        r.into_iter().find(|s| s["metric"]["name"] == "shop")
    })
    .await;
    assert_eq!(fired["metric"]["issuer_name"], "ca", "{fired}");
    let ready = query_result(&tp, "certmanager_certificate_ready_status{name=\"shop\", condition=\"True\"}").await;
    assert_eq!(ready.first().map(|s| s["value"][1].clone()), Some(serde_json::json!("1")), "{ready:?}");
    eventually("the failed issuance is in the metrics", Duration::from_secs(60), || async {
        let failing = query_result(&tp, "capstan_certificate_issuance_failed{name=\"shop\"} == 1").await;
        (failing.len() == 1).then_some(())
    })
    .await;
    let kept = get(&tp, "secrets", "shop-tls").await.expect("the Secret");
    assert_eq!(kept["spec"], secret["spec"].clone(), "a failed issuance leaves the Secret as it was");
    let still = https_get(https, "shop.example.test", "/", &ca).await.expect("still served");
    assert_eq!((still.0, still.2), (200, renewed));

    // Fixed: the next attempt (the Issuer's change wakes it) issues again.
    tp.apply("apiVersion: cert-manager.io/v1\nkind: Issuer\nmetadata: {name: ca}\nspec: {ca: {secretName: root-ca}}\n");
    ready_at(&tp, "shop", revision + 1).await;

    // Two Certificates naming one Secret would issue over each other: both are stopped and say so, until one goes.
    tp.apply("apiVersion: cert-manager.io/v1\nkind: Certificate\nmetadata: {name: shop-copy}\nspec: {secretName: shop-tls, dnsNames: [copy.example.test], issuerRef: {name: ca}}\n");
    for name in ["shop", "shop-copy"] {
        let ready = eventually(&format!("{name} reports the shared Secret"), T, || async {
            let c = get(&tp, "certificates", name).await?;
            let ready = condition(&c["status"]["conditions"], "Ready").clone();
            (ready["reason"] == "DuplicateSecretName").then_some(ready)
        })
        .await;
        assert_eq!(ready["status"], "False");
        assert!(ready["message"].as_str().unwrap_or("").contains("shop-tls"), "{ready}");
    }
    let out = tp.cli(&["delete", "certificate", "shop-copy"]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let freed = get(&tp, "certificates", "shop").await.expect("shop").clone();
    let revision = freed["status"]["revision"].as_u64().unwrap_or(0);
    ready_at(&tp, "shop", revision + 1).await;

    // `capstan certificate renew`: the root (ten years, far from its renewal) is issued again at once.
    let root_key = value(&get(&tp, "secrets", "root-ca").await.expect("the root's Secret"), "tls.key");
    let out = tp.cli(&["certificate", "renew", "root"]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert!(String::from_utf8_lossy(&out.stdout).contains("Manually triggered issuance of Certificate default/root"));
    ready_at(&tp, "root", 2).await;
    assert_ne!(value(&get(&tp, "secrets", "root-ca").await.expect("the root's Secret"), "tls.key"), root_key);
    let out = tp.cli(&["certificate", "renew", "nothing"]);
    assert_eq!(out.status.code(), Some(1), "a missing Certificate: {}", String::from_utf8_lossy(&out.stderr));
    tp.stop().await;
}

/// A ClusterIssuer signs the Certificates of every namespace with a CA kept in the cluster resource namespace
/// (`cert-manager`, as cert-manager's default). It has no namespace of its own (one written is dropped, as a cluster
/// drops it), is read and changed at `/api/v1/clusterissuers/NAME`, and only a token bound to every namespace sees
/// or changes it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cluster_issuer_signs_for_every_namespace_with_its_ca_in_the_cluster_resource_namespace() {
    let tp = TestPlane::start().await;
    tp.apply(
        "apiVersion: cert-manager.io/v1
kind: ClusterIssuer
metadata: {name: selfsigned, namespace: team-a}
spec: {selfSigned: {}}
---
apiVersion: cert-manager.io/v1
kind: Certificate
metadata: {name: root, namespace: cert-manager}
spec:
  isCA: true
  commonName: Cluster root
  secretName: root-ca
  privateKey: {algorithm: ECDSA}
  issuerRef: {name: selfsigned, kind: ClusterIssuer, group: cert-manager.io}
---
apiVersion: cert-manager.io/v1
kind: ClusterIssuer
metadata: {name: ca}
spec: {ca: {secretName: root-ca}}
---
apiVersion: cert-manager.io/v1
kind: Certificate
metadata: {name: web, namespace: default}
spec:
  secretName: web-tls
  dnsNames: [web.example.test, '*.web.example.test']
  privateKey: {rotationPolicy: Never}
  issuerRef: {name: ca, kind: ClusterIssuer}
---
apiVersion: cert-manager.io/v1
kind: Certificate
metadata: {name: api, namespace: team-a}
spec: {secretName: api-tls, dnsNames: [api.example.test], issuerRef: {name: ca, kind: ClusterIssuer}}
",
    );
    let cluster_issuer = |name: &'static str| {
        let client = tp.client.clone();
        async move { client.get(&format!("/api/v1/clusterissuers/{name}")).await.ok() }
    };
    let ca = eventually("ClusterIssuer ca Ready", T, || async {
        let i = cluster_issuer("ca").await?;
        (condition(&i["status"]["conditions"], "Ready")["status"] == "True").then_some(i)
    })
    .await;
    assert_eq!(condition(&ca["status"]["conditions"], "Ready")["reason"], "KeyPairVerified");
    let selfsigned = cluster_issuer("selfsigned").await.expect("stored");
    assert!(selfsigned["metadata"].get("namespace").is_none(), "no namespace, as a cluster keeps it: {selfsigned}");

    // Both namespaces' Certificates are signed by the root kept in cert-manager; openssl verifies each.
    let root_secret = tp.client.get("/api/v1/namespaces/cert-manager/secrets/root-ca").await.expect("the root");
    let root = value(&root_secret, "tls.crt");
    let dir = tempfile::tempdir().expect("tempdir");
    std::fs::write(dir.path().join("root.crt"), &root).expect("write");
    for (ns, name, secret, host) in
        [("default", "web", "web-tls", "web.example.test"), ("team-a", "api", "api-tls", "api.example.test")]
    {
        eventually(&format!("Certificate {ns}/{name} Ready"), T, || async {
            let c = tp.client.get(&format!("/api/v1/namespaces/{ns}/certificates/{name}")).await.ok()?;
            (condition(&c["status"]["conditions"], "Ready")["status"] == "True").then_some(())
        })
        .await;
        let s = tp.client.get(&format!("/api/v1/namespaces/{ns}/secrets/{secret}")).await.expect("the Secret");
        assert_eq!(s["metadata"]["annotations"]["cert-manager.io/issuer-kind"], "ClusterIssuer", "{s}");
        assert_eq!(value(&s, "ca.crt"), root, "ca.crt is the cluster's root");
        std::fs::write(dir.path().join("leaf.crt"), value(&s, "tls.crt")).expect("write");
        let verify = std::process::Command::new("openssl")
            .args(["verify", "-CAfile", "root.crt", "-verify_hostname", host, "leaf.crt"])
            .current_dir(dir.path())
            .output()
            .expect("openssl runs");
        assert!(
            verify.status.success(),
            "openssl verify {ns}/{name}: {}{}",
            String::from_utf8_lossy(&verify.stdout),
            String::from_utf8_lossy(&verify.stderr)
        );
    }

    // A wildcard name from a CA issuer, and rotationPolicy Never: a renewal keeps the key.
    let web = tp.client.get("/api/v1/namespaces/default/secrets/web-tls").await.expect("the Secret");
    std::fs::write(dir.path().join("web.crt"), value(&web, "tls.crt")).expect("write");
    let text = std::process::Command::new("openssl")
        .args(["x509", "-noout", "-ext", "subjectAltName", "-in", "web.crt"])
        .current_dir(dir.path())
        .output()
        .expect("openssl runs");
    let text = String::from_utf8_lossy(&text.stdout);
    assert!(text.contains("DNS:*.web.example.test") && text.contains("DNS:web.example.test"), "{text}");
    let out = tp.cli(&["certificate", "renew", "web"]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    eventually("web renewed", T, || async {
        let c = tp.client.get("/api/v1/namespaces/default/certificates/web").await.ok()?;
        (c["status"]["revision"].as_u64() >= Some(2)).then_some(())
    })
    .await;
    let renewed = tp.client.get("/api/v1/namespaces/default/secrets/web-tls").await.expect("the Secret");
    assert_ne!(value(&renewed, "tls.crt"), value(&web, "tls.crt"), "a new certificate");
    assert_eq!(value(&renewed, "tls.key"), value(&web, "tls.key"), "rotationPolicy Never: the same key");
    // Keys are in the store sealed: not one line of the private key is in the data directory's files.
    let key_line = value(&renewed, "tls.key").lines().nth(1).unwrap_or_default().to_string();
    assert!(key_line.len() > 20, "a line of base64");
    assert!(files_holding(tp.dir.path(), &key_line).is_empty(), "the key is not on disk in the clear");

    // Bad references, named: a ClusterIssuer that does not exist, and one whose CA is not in cert-manager.
    tp.apply(
        "apiVersion: cert-manager.io/v1
kind: ClusterIssuer
metadata: {name: elsewhere}
spec: {ca: {secretName: web-tls}}
---
apiVersion: cert-manager.io/v1
kind: Certificate
metadata: {name: lost, namespace: team-a}
spec: {secretName: lost-tls, dnsNames: [lost.example.test], issuerRef: {name: nope, kind: ClusterIssuer}}
",
    );
    let elsewhere = eventually("ClusterIssuer elsewhere says where it looked", T, || async {
        let i = cluster_issuer("elsewhere").await?;
        let c = condition(&i["status"]["conditions"], "Ready").clone();
        (c["status"] == "False").then_some(c)
    })
    .await;
    assert!(elsewhere["message"].as_str().unwrap_or("").contains("in namespace cert-manager"), "{elsewhere}");
    let lost = eventually("Certificate lost names the missing ClusterIssuer", T, || async {
        let c = tp.client.get("/api/v1/namespaces/team-a/certificates/lost").await.ok()?;
        let issuing = condition(&c["status"]["conditions"], "Issuing").clone();
        (issuing["reason"] == "Failed").then_some(issuing)
    })
    .await;
    assert!(
        lost["message"].as_str().unwrap_or("").contains("Referenced \"ClusterIssuer\" not found"),
        "cert-manager's words: {lost}"
    );

    // The API and the CLI treat it as cluster-scoped: no NAMESPACE column, whatever -n or -A says.
    let err = tp.client.get("/api/v1/namespaces/default/clusterissuers/ca").await.expect_err("not namespaced");
    assert!(err.to_string().contains("cluster-scoped"), "{err}");
    for args in
        [&["get", "clusterissuers"][..], &["get", "clusterissuers", "-A"], &["get", "clusterissuer", "ca", "-n", "x"]]
    {
        let out = tp.cli(args);
        let listing = String::from_utf8_lossy(&out.stdout);
        assert!(out.status.success(), "{args:?}: {}", String::from_utf8_lossy(&out.stderr));
        assert!(listing.contains("ca (Secret root-ca)") && !listing.contains("NAMESPACE"), "{args:?}: {listing}");
    }
    let out = tp.cli(&["describe", "clusterissuer", "ca"]);
    let page = String::from_utf8_lossy(&out.stdout);
    assert!(page.contains("Kind:") && page.contains("ClusterIssuer") && page.contains("KeyPairVerified"), "{page}");

    // A token bound to one namespace neither reads nor writes it; it may still name it from its Certificates.
    let made = tp
        .client
        .post("/api/v1/tokens", serde_json::json!({"name": "team-a", "role": "deployer", "namespace": "team-a"}))
        .await
        .expect("token");
    let team = capstan_api::Client::new(tp.plane().url(), made["token"].as_str().expect("shown"));
    for path in ["/api/v1/clusterissuers", "/api/v1/clusterissuers/ca"] {
        let e = team.get(path).await.expect_err("refused");
        assert_eq!(e.status().map(|s| s.as_u16()), Some(403), "{path}: {e}");
    }
    let e = team.stream("/api/v1/watch?kind=clusterissuers").await.expect_err("refused, not an empty stream");
    assert_eq!(e.status().map(|s| s.as_u16()), Some(403), "{e}");
    let own = "apiVersion: cert-manager.io/v1\nkind: ClusterIssuer\nmetadata: {name: mine}\nspec: {selfSigned: {}}\n";
    let objects: Vec<Value> = capstan_model::parse_manifests("t.yaml", own)
        .expect("parses")
        .into_iter()
        .map(|m| m.resource.to_value())
        .collect();
    let e = team.post("/api/v1/apply", serde_json::json!({ "objects": objects })).await.expect_err("refused");
    assert!(e.to_string().contains("cluster-scoped"), "{e}");
    let e = team.delete("/api/v1/clusterissuers/ca").await.expect_err("refused");
    assert_eq!(e.status().map(|s| s.as_u16()), Some(403), "{e}");
    let cert = "apiVersion: cert-manager.io/v1\nkind: Certificate\nmetadata: {name: t, namespace: team-a}\nspec: {secretName: t-tls, dnsNames: [t.example.test], issuerRef: {name: ca, kind: ClusterIssuer}}\n";
    let objects: Vec<Value> = capstan_model::parse_manifests("t.yaml", cert)
        .expect("parses")
        .into_iter()
        .map(|m| m.resource.to_value())
        .collect();
    team.post("/api/v1/apply", serde_json::json!({ "objects": objects })).await.expect("a Certificate of its own");

    // Nor through a Sync: one of team-a that applied the ClusterIssuer (an administrator's, without a
    // targetNamespace) is neither deleted nor changed by the team's token, which would prune it. (Suspended, so
    // that its controller does not write its status over the inventory the test gives it.)
    tp.apply(
        "apiVersion: capstan.dev/v1alpha1\nkind: Sync\nmetadata: {name: platform, namespace: team-a}\nspec: {sourceRef: {name: platform}, path: ./, prune: true, suspend: true}\n",
    );
    let sync_key = capstan_model::ObjectKey::new("Sync", "team-a", "platform");
    let inventory = serde_json::json!({"inventory": [
        {"kind": "Certificate", "namespace": "team-a", "name": "t"},
        {"kind": "ClusterIssuer", "namespace": "", "name": "ca"},
    ]});
    tp.plane().store().update_status(&sync_key, inventory).expect("status");
    let e = team.delete("/api/v1/namespaces/team-a/syncs/platform").await.expect_err("refused");
    assert_eq!(e.status().map(|s| s.as_u16()), Some(403), "{e}");
    assert!(e.to_string().contains("ClusterIssuer ca"), "names what it would prune: {e}");
    let changed = "apiVersion: capstan.dev/v1alpha1\nkind: Sync\nmetadata: {name: platform, namespace: team-a}\nspec: {sourceRef: {name: platform}, path: ./elsewhere, targetNamespace: team-a, prune: true}\n";
    let objects: Vec<Value> = capstan_model::parse_manifests("s.yaml", changed)
        .expect("parses")
        .into_iter()
        .map(|m| m.resource.to_value())
        .collect();
    let e = team.post("/api/v1/apply", serde_json::json!({ "objects": objects })).await.expect_err("refused");
    assert!(e.to_string().contains("outside namespace team-a"), "{e}");
    assert!(cluster_issuer("ca").await.is_some(), "still there");
    // Nor by steering a Source that a Sync of another namespace reads.
    tp.apply(
        "apiVersion: capstan.dev/v1alpha1\nkind: Sync\nmetadata: {name: shared, namespace: platform}\nspec: {sourceRef: {name: shared, namespace: team-a}, path: ./}\n",
    );
    let source = "apiVersion: capstan.dev/v1alpha1\nkind: Source\nmetadata: {name: shared, namespace: team-a}\nspec: {dir: /tmp}\n";
    let objects: Vec<Value> = capstan_model::parse_manifests("src.yaml", source)
        .expect("parses")
        .into_iter()
        .map(|m| m.resource.to_value())
        .collect();
    let e = team.post("/api/v1/apply", serde_json::json!({ "objects": objects })).await.expect_err("refused");
    assert!(e.to_string().contains("Sync platform/shared"), "{e}");

    let out = tp.cli(&["delete", "clusterissuer", "elsewhere"]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert!(cluster_issuer("elsewhere").await.is_none(), "deleted");
    tp.stop().await;
}
