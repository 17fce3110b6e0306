//! TLSRoute and TCPRoute from the outside: real clients and real backend processes through a Gateway's TLS and TCP
//! listeners — passthrough by SNI name to a backend that ends TLS itself, TLS ended by the listener's certificate,
//! TCP split by weight — with their status, `get` and `describe`, and open tunnels kept through a route change.

use std::time::Duration;

use capstan_e2e::tls::*;
use capstan_e2e::*;
use tokio::io::{AsyncBufReadExt, AsyncRead, AsyncWrite, AsyncWriteExt, BufReader};

const T: Duration = Duration::from_secs(30);

/// Sends `line` and reads the echo: `<replica> <line>`.
async fn echo<S: AsyncRead + AsyncWrite + Unpin>(s: &mut S, line: &str) -> Option<String> {
    s.write_all(format!("{line}\n").as_bytes()).await.ok()?;
    s.flush().await.ok()?;
    let mut reply = String::new();
    let read = tokio::time::timeout(Duration::from_secs(10), BufReader::new(s).read_line(&mut reply)).await;
    match read {
        Ok(Ok(n)) if n > 0 => Some(reply.trim_end().to_string()),
        _ => None,
    }
}

/// Writes `bytes` and waits for the other side to close: true when it does within 3 s without answering (a
/// connection that hangs is not one that was closed).
async fn closed_promptly(port: u16, bytes: &[u8]) -> bool {
    use tokio::io::AsyncReadExt;
    let Ok(mut s) = tokio::net::TcpStream::connect(("127.0.0.1", port)).await else { return false };
    let _ = s.write_all(bytes).await;
    let mut answer = Vec::new();
    // End of stream with nothing read, or a reset: closed. A timeout, or an answer: not.
    matches!(tokio::time::timeout(Duration::from_secs(3), s.read_to_end(&mut answer)).await, Ok(Ok(0)) | Ok(Err(_)))
}

/// Whether an open connection is closed by the other side within 5 s.
async fn is_closed(s: &mut tokio::net::TcpStream) -> bool {
    use tokio::io::AsyncReadExt;
    let mut rest = Vec::new();
    matches!(tokio::time::timeout(Duration::from_secs(5), s.read_to_end(&mut rest)).await, Ok(Ok(_)) | Ok(Err(_)))
}

/// A PEM as one line of a double-quoted YAML string.
fn one_line(pem: &str) -> String {
    pem.replace('\n', "\\n")
}

fn edge(pass: u16, end: u16, tcp: u16) -> String {
    format!(
        "apiVersion: gateway.networking.k8s.io/v1
kind: Gateway
metadata: {{name: edge}}
spec:
  gatewayClassName: capstan
  addresses: [{{value: 127.0.0.1}}]
  listeners:
    - {{name: pass, port: {pass}, protocol: TLS, tls: {{mode: Passthrough}}}}
    - {{name: end, port: {end}, protocol: TLS, hostname: \"*.example.test\", tls: {{certificateRefs: [{{name: wild-tls}}]}}}}
    - {{name: raw, port: {tcp}, protocol: TCP}}
---
apiVersion: gateway.networking.k8s.io/v1
kind: TLSRoute
metadata: {{name: db}}
spec:
  parentRefs: [{{name: edge, sectionName: pass}}]
  hostnames: [db.example.test]
  rules: [{{backendRefs: [{{name: tls-echo, port: 8080}}]}}]
---
apiVersion: gateway.networking.k8s.io/v1alpha2
kind: TLSRoute
metadata: {{name: cache}}
spec:
  parentRefs: [{{name: edge, sectionName: end}}]
  hostnames: [cache.example.test]
  rules: [{{backendRefs: [{{name: echo, port: 8080}}]}}]
---
apiVersion: gateway.networking.k8s.io/v1alpha2
kind: TCPRoute
metadata: {{name: raw}}
spec:
  parentRefs: [{{name: edge, sectionName: raw}}]
  rules:
    - backendRefs:
        - {{name: echo, port: 8080, weight: 3}}
        - {{name: echo-b, port: 8080, weight: 1}}
"
    )
}

const TCP_READY: &str = "  probes:\n    readiness: {tcp: {port: http}, periodSeconds: 1}\n";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_and_tcp_listeners_route_connections_by_sni_and_weight_to_real_backends() {
    let tp = TestPlane::start().await;
    let (ca, ca_pem) = test_ca();
    let (db_crt, db_key) = certificate_for(&["db.example.test", "*.example.test"], &ca);
    let (wild_crt, wild_key) = certificate_for(&["*.example.test"], &ca);
    let (pass, end, raw) = (free_port(), free_port(), free_port());
    let apps = [
        app_yaml(
            "tls-echo",
            2,
            &[
                ("TESTAPP_TCP_ECHO", "1"),
                ("TESTAPP_TLS_CERT", &one_line(&db_crt)),
                ("TESTAPP_TLS_KEY", &one_line(&db_key)),
            ],
            TCP_READY,
        ),
        app_yaml("echo", 2, &[("TESTAPP_TCP_ECHO", "1")], TCP_READY),
        app_yaml("echo-b", 1, &[("TESTAPP_TCP_ECHO", "1")], TCP_READY),
        tls_secret("wild-tls", &wild_crt, &wild_key),
        edge(pass, end, raw),
    ];
    tp.apply(&apps.join("---\n"));
    for app in ["tls-echo", "echo", "echo-b"] {
        eventually(&format!("{app} Ready"), T, || async { ready(&tp.app(app).await).then_some(()) }).await;
    }

    // Passthrough: the backend ends TLS with its own certificate; Capstan never holds it.
    let mut tunnel = eventually("a passthrough connection to db.example.test", T, || async {
        let mut tls = tls_connect(pass, "db.example.test", &ca_pem, &[]).await?;
        echo(&mut tls, "ping").await.filter(|r| r.ends_with(" ping"))?;
        Some(tls)
    })
    .await;
    let leaf = tunnel.get_ref().1.peer_certificates().and_then(|c| c.first()).map(|c| c.to_vec());
    assert_eq!(leaf, Some(der_of(&db_crt)), "the backend's own certificate, passed through");
    let reply = echo(&mut tunnel, "hello").await.expect("an echo through the tunnel");
    assert!(reply.starts_with("tls-echo-") && reply.ends_with(" hello"), "{reply}");
    let started = std::time::Instant::now();
    assert!(
        tls_connect(pass, "other.example.test", &ca_pem, &[]).await.is_none(),
        "a name no TLSRoute serves is closed"
    );
    assert!(started.elapsed() < Duration::from_secs(3), "closed at once, not left to time out");
    // Not TLS at all: closed without an answer, at once.
    assert!(closed_promptly(pass, b"GET / HTTP/1.1\r\nHost: x\r\n\r\n").await, "bytes that are not a ClientHello");

    // Terminated: the listener's certificate, and the plain echo behind it.
    let mut ended = tls_connect(end, "cache.example.test", &ca_pem, &[]).await.expect("a terminated connection");
    let leaf = ended.get_ref().1.peer_certificates().and_then(|c| c.first()).map(|c| c.to_vec());
    assert_eq!(leaf, Some(der_of(&wild_crt)), "the listener's certificate");
    assert_eq!(ended.get_ref().1.alpn_protocol(), None, "no HTTP offered on a TLS listener");
    let reply = echo(&mut ended, "plain inside").await.expect("an echo");
    assert!(reply.starts_with("echo-") && reply.ends_with(" plain inside"), "{reply}");

    // TCP by weight: 3:1 exactly over every run of four connections.
    let mut apps_seen = std::collections::BTreeMap::<String, usize>::new();
    let mut replicas = std::collections::BTreeSet::new();
    for i in 0..40 {
        let mut s = tokio::net::TcpStream::connect(("127.0.0.1", raw)).await.expect("the TCP listener accepts");
        let reply = echo(&mut s, &format!("n{i}")).await.expect("an echo over TCP");
        let replica = reply.split(' ').next().unwrap_or_default().to_string();
        let app = replica.rsplit_once('-').map(|(a, _)| a.to_string()).unwrap_or_default();
        *apps_seen.entry(app).or_default() += 1;
        replicas.insert(replica);
    }
    assert_eq!(apps_seen.get("echo"), Some(&30), "{apps_seen:?}");
    assert_eq!(apps_seen.get("echo-b"), Some(&10), "{apps_seen:?}");
    assert!(replicas.len() == 3, "echo's two replicas and echo-b's one: {replicas:?}");

    // Status as Gateway API writes it, and kubectl's habits.
    let route = tp.client.get("/api/v1/namespaces/default/tlsroutes/db").await.expect("the TLSRoute");
    let conditions = &route["status"]["parents"][0]["conditions"];
    for t in ["Accepted", "ResolvedRefs"] {
        let c = conditions.as_array().unwrap().iter().find(|c| c["type"] == t).expect(t);
        assert_eq!(c["status"], "True", "{t}: {c}");
    }
    let g = tp.client.get("/api/v1/namespaces/default/gateways/edge").await.expect("the Gateway");
    for l in g["status"]["listeners"].as_array().unwrap() {
        assert_eq!(l["attachedRoutes"], 1, "{l}");
        let programmed = l["conditions"].as_array().unwrap().iter().find(|c| c["type"] == "Programmed").unwrap();
        assert_eq!(programmed["status"], "True", "{l}");
    }
    let out = tp.cli(&["get", "tlsroutes"]);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success() && text.contains("db.example.test") && text.contains("edge:pass"), "{text}");
    let out = tp.cli(&["describe", "tcproute", "raw"]);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("echo:8080 ×3, echo-b:8080 ×1"), "{text}");

    // A new route on the same listener: the open passthrough tunnel is not dropped, and new names are served.
    tp.apply(
        "apiVersion: gateway.networking.k8s.io/v1
kind: TLSRoute
metadata: {name: db-replica}
spec:
  parentRefs: [{name: edge, sectionName: pass}]
  hostnames: [\"*.example.test\"]
  rules: [{backendRefs: [{name: tls-echo, port: 8080}]}]
",
    );
    eventually("the wildcard TLSRoute accepted", T, || async {
        let r = tp.client.get("/api/v1/namespaces/default/tlsroutes/db-replica").await.ok()?;
        (r["status"]["parents"][0]["conditions"][0]["status"] == "True").then_some(())
    })
    .await;
    let mut other = tls_connect(pass, "other.example.test", &ca_pem, &[]).await.expect("the wildcard route's name");
    let reply = echo(&mut other, "new name").await.expect("an echo");
    assert!(reply.starts_with("tls-echo-") && reply.ends_with(" new name"), "{reply}");
    let reply = echo(&mut tunnel, "still here").await.expect("the open tunnel survives a route change");
    assert!(reply.ends_with(" still here"), "{reply}");

    // A route deleted: its name is no longer served, the listener's count says so, and the connections it carried
    // are closed.
    let mut open = tokio::net::TcpStream::connect(("127.0.0.1", raw)).await.expect("the TCP listener");
    assert!(echo(&mut open, "open").await.is_some_and(|r| r.ends_with(" open")), "a tunnel open before the delete");
    let out = tp.cli(&["delete", "tcproute", "raw"]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    eventually("the TCP listener without routes", T, || async {
        let g = tp.client.get("/api/v1/namespaces/default/gateways/edge").await.ok()?;
        let l = g["status"]["listeners"].as_array()?.iter().find(|l| l["name"] == "raw")?.clone();
        (l["attachedRoutes"] == 0).then_some(())
    })
    .await;
    assert!(closed_promptly(raw, b"anyone?\n").await, "no route: the connection is closed");
    assert!(is_closed(&mut open).await, "the tunnel of the deleted route is closed too");
    tp.stop().await;
}

/// An HTTP/1.0 GET written over any connection: the body of the answer.
async fn get_over<S: AsyncRead + AsyncWrite + Unpin>(mut s: S) -> Option<String> {
    use tokio::io::AsyncReadExt;
    s.write_all(b"GET / HTTP/1.0\r\nHost: hello.localhost\r\n\r\n").await.ok()?;
    let mut answer = Vec::new();
    tokio::time::timeout(Duration::from_secs(10), s.read_to_end(&mut answer)).await.ok()?.ok()?;
    let text = String::from_utf8_lossy(&answer).to_string();
    let (head, body) = text.split_once("\r\n\r\n")?;
    head.starts_with("HTTP/1.0 200").then(|| body.to_string())
}

/// `examples/gateway-streams` as its comments say to run it (the test app for `capstan-hello`, free ports, the
/// certificate stored with `capstan create secret tls`): TCP split 3:1, TLS ended by SNI name.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_streams_example_serves_as_documented() {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/../../examples/gateway-streams/streams.yaml");
    let (tcp, tls) = (free_port(), free_port());
    let yaml = std::fs::read_to_string(path)
        .expect("examples/gateway-streams/streams.yaml")
        .replace("command: [capstan-hello]", &format!("command: [{}]", testapp()))
        .replace("port: 8090", &format!("port: {tcp}"))
        .replace("port: 8453", &format!("port: {tls}"));
    let tp = TestPlane::start().await;
    let (ca, ca_pem) = test_ca();
    let (crt, key) = certificate_for(&["hello.localhost", "*.localhost"], &ca);
    let dir = tempfile::tempdir().expect("tempdir");
    let (crt_file, key_file) = (dir.path().join("edge.crt"), dir.path().join("edge.key"));
    std::fs::write(&crt_file, &crt).unwrap();
    std::fs::write(&key_file, &key).unwrap();
    let out = tp.cli(&[
        "create",
        "secret",
        "tls",
        "edge-tls",
        "--cert",
        crt_file.to_str().unwrap(),
        "--key",
        key_file.to_str().unwrap(),
    ]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    tp.apply(&yaml);
    for app in ["site", "site-next"] {
        eventually(&format!("{app} Ready"), T, || async { ready(&tp.app(app).await).then_some(()) }).await;
    }
    let mut by_app = std::collections::BTreeMap::<String, usize>::new();
    for _ in 0..8 {
        let s = tokio::net::TcpStream::connect(("127.0.0.1", tcp)).await.expect("the TCP listener");
        let body = get_over(s).await.expect("an answer over TCP");
        let app = body.trim().rsplit_once('-').map(|(a, _)| a.to_string()).unwrap_or(body);
        *by_app.entry(app).or_default() += 1;
    }
    assert_eq!(by_app, [("site".to_string(), 6), ("site-next".to_string(), 2)].into(), "3:1");
    let conn = tls_connect(tls, "hello.localhost", &ca_pem, &[]).await.expect("a TLS connection to hello.localhost");
    let body = get_over(conn).await.expect("an answer over TLS");
    assert!(body.starts_with("site-"), "{body}");
    assert!(tls_connect(tls, "other.localhost", &ca_pem, &[]).await.is_none(), "no TLSRoute for other.localhost");
    tp.stop().await;
}

/// A route to another namespace's App is served once a ReferenceGrant in that namespace allows it, and no longer
/// once the grant is deleted; the route's status says which.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reference_grant_opens_another_namespace_s_app_to_a_route_and_its_deletion_closes_it() {
    let tp = TestPlane::start().await;
    let port = free_port();
    let echo_app = app_yaml("echo", 1, &[("TESTAPP_TCP_ECHO", "1")], TCP_READY)
        .replace("metadata:\n  name: echo\n", "metadata:\n  name: echo\n  namespace: team-b\n");
    let objects = format!(
        "{echo_app}---
{}---
apiVersion: gateway.networking.k8s.io/v1alpha2
kind: TCPRoute
metadata: {{name: raw}}
spec:
  parentRefs: [{{name: edge}}]
  rules: [{{backendRefs: [{{name: echo, namespace: team-b, port: 8080}}]}}]
",
        gateway_yaml("edge", port, "TCP")
    );
    tp.apply(&objects);
    eventually("echo Ready", T, || async {
        let o = tp.client.get("/api/v1/namespaces/team-b/apps/echo").await.ok()?;
        ready(&o).then_some(())
    })
    .await;
    let resolved = || async {
        let r = tp.client.get("/api/v1/namespaces/default/tcproutes/raw").await.ok()?;
        let c =
            r["status"]["parents"][0]["conditions"].as_array()?.iter().find(|c| c["type"] == "ResolvedRefs")?.clone();
        Some((c["status"].as_str()?.to_string(), c["reason"].as_str()?.to_string()))
    };
    eventually("refused without a grant", T, || async {
        resolved().await.filter(|(s, r)| s == "False" && r == "RefNotPermitted")
    })
    .await;
    assert!(closed_promptly(port, b"before\n").await, "no grant: the connection is closed");

    tp.apply(
        "apiVersion: gateway.networking.k8s.io/v1beta1
kind: ReferenceGrant
metadata: {name: from-default, namespace: team-b}
spec:
  from: [{group: gateway.networking.k8s.io, kind: TCPRoute, namespace: default}]
  to: [{group: \"\", kind: Service, name: echo}]
",
    );
    eventually("resolved with the grant", T, || async { resolved().await.filter(|(s, _)| s == "True") }).await;
    let reply = eventually("an echo from team-b", T, || async {
        let mut s = tokio::net::TcpStream::connect(("127.0.0.1", port)).await.ok()?;
        echo(&mut s, "granted").await
    })
    .await;
    assert!(reply.starts_with("echo-") && reply.ends_with(" granted"), "{reply}");
    let out = tp.cli(&["get", "referencegrants", "-n", "team-b"]);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("TCPRoute/default") && text.contains("Service/echo"), "{text}");

    let mut open = tokio::net::TcpStream::connect(("127.0.0.1", port)).await.expect("the listener");
    assert!(echo(&mut open, "open").await.is_some(), "a tunnel open before the grant goes");
    let out = tp.cli(&["delete", "referencegrant", "from-default", "-n", "team-b"]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    eventually("refused again", T, || async { resolved().await.filter(|(s, _)| s == "False") }).await;
    assert!(closed_promptly(port, b"after\n").await, "the grant withdrawn: closed again");
    assert!(is_closed(&mut open).await, "the withdrawn grant takes the open tunnel with it");
    tp.stop().await;
}
