//! The API's accept loop: every connection admitted through the process' connection gate and served with its
//! header-read timeout (the webhook receiver shares this listener).

use std::sync::Arc;

use axum::Router;
use capstan_proxy::gate::{self, AcceptBackoff, ListenerGate};
use hyper::body::Incoming;
use hyper::Request;
use hyper_util::service::TowerToHyperService;

/// Serves `app` on `listener` until the task is aborted.
pub async fn serve(listener: tokio::net::TcpListener, app: Router, gate: Arc<ListenerGate>) {
    let mut backoff = AcceptBackoff::default();
    loop {
        let (stream, source) = match listener.accept().await {
            Ok(accepted) => accepted,
            Err(e) => {
                tokio::time::sleep(backoff.after("api", &e)).await;
                continue;
            }
        };
        backoff.reset();
        match gate.admit(true) {
            Ok(admitted) => {
                let svc = WithSource { inner: TowerToHyperService::new(app.clone()), source };
                tokio::spawn(capstan_proxy::serve::serve_http(stream, admitted, svc));
            }
            Err(refusal) => {
                tokio::spawn(gate::refuse_http(stream, refusal));
            }
        }
    }
}

/// The router for one connection, with the client's address on every request (for the audit log).
#[derive(Clone)]
struct WithSource {
    inner: TowerToHyperService<Router>,
    source: std::net::SocketAddr,
}

impl hyper::service::Service<Request<Incoming>> for WithSource {
    type Response = <TowerToHyperService<Router> as hyper::service::Service<Request<Incoming>>>::Response;
    type Error = <TowerToHyperService<Router> as hyper::service::Service<Request<Incoming>>>::Error;
    type Future = <TowerToHyperService<Router> as hyper::service::Service<Request<Incoming>>>::Future;

    fn call(&self, mut req: Request<Incoming>) -> Self::Future {
        req.extensions_mut().insert(crate::audit::Source(self.source));
        self.inner.call(req)
    }
}
