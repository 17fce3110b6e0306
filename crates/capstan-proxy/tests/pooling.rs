//! The proxy against a real HTTP backend on loopback: upstream connections are reused, bodies stream through.
#![allow(clippy::unwrap_used, clippy::expect_used)] // a test: a failed step is the failure it reports

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use capstan_model::{parse_manifests, ObjectKey, Resource};
use capstan_proxy::{Proxy, ReplicaEndpoint};
use http_body_util::{BodyExt, Empty, Full};
use hyper::body::Bytes;

/// A backend that answers 1 KiB and counts the connections it accepted.
async fn backend() -> (u16, Arc<AtomicUsize>) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let accepted = Arc::new(AtomicUsize::new(0));
    let count = accepted.clone();
    tokio::spawn(async move {
        loop {
            let (s, _) = listener.accept().await.unwrap();
            count.fetch_add(1, Ordering::SeqCst);
            tokio::spawn(async move {
                let svc = hyper::service::service_fn(|_req| async {
                    Ok::<_, std::convert::Infallible>(hyper::Response::new(Full::new(Bytes::from(vec![b'x'; 1024]))))
                });
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(hyper_util::rt::TokioIo::new(s), svc)
                    .await;
            });
        }
    });
    (port, accepted)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn upstream_connections_are_reused_across_requests() {
    let (bport, accepted) = backend().await;
    let lport = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let yaml = format!(
        "apiVersion: capstan.dev/v1alpha1\nkind: App\nmetadata: {{name: p}}\nspec:\n  run: {{command: [x]}}\n  ports: [{{name: http}}]\n  expose: [{{port: {lport}}}]\n"
    );
    let Resource::App(app) = parse_manifests("t", &yaml).unwrap().remove(0).resource else { panic!("expected an App") };
    let proxy = Proxy::new();
    let key = ObjectKey::new("App", "default", "p");
    let ep = ReplicaEndpoint {
        name: "p-0".into(),
        ports: BTreeMap::from([("http".to_string(), bport)]),
        ready: true,
        pid: Some(1),
    };
    assert!(proxy.sync_app(&key, Some(&app), &[ep]).is_empty());
    let client =
        hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new()).build_http::<Empty<Bytes>>();
    for _ in 0..200 {
        let res = client.get(format!("http://127.0.0.1:{lport}/").parse().unwrap()).await.unwrap();
        assert_eq!(res.status(), 200);
        assert_eq!(res.into_body().collect().await.unwrap().to_bytes().len(), 1024);
    }
    let n = accepted.load(Ordering::SeqCst);
    assert!(n <= 2, "200 sequential requests used {n} upstream connections");
    // 50 clients at once: the pool grows to about the concurrency and no further.
    let mut tasks = Vec::new();
    for _ in 0..50 {
        let client = client.clone();
        tasks.push(tokio::spawn(async move {
            for _ in 0..40 {
                let res = client.get(format!("http://127.0.0.1:{lport}/").parse().unwrap()).await.unwrap();
                assert_eq!(res.into_body().collect().await.unwrap().to_bytes().len(), 1024);
            }
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    let n = accepted.load(Ordering::SeqCst);
    assert!(n <= 64, "2000 requests from 50 clients used {n} upstream connections");
    let metrics = proxy.metrics_text();
    assert!(metrics.contains("capstan_lb_requests_total{namespace=\"default\",app=\"p\",entry=\"http-"), "{metrics}");
    assert!(metrics.contains("code=\"2xx\"} 2200"), "{metrics}");
}
