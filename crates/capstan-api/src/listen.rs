//! The API's accept loop: every connection admitted through the process' connection gate and served with its
//! header-read timeout (the webhook receiver shares this listener).

use std::sync::Arc;

use axum::Router;
use capstan_proxy::gate::{self, AcceptBackoff, ListenerGate};
use hyper_util::service::TowerToHyperService;

/// Serves `app` on `listener` until the task is aborted.
pub async fn serve(listener: tokio::net::TcpListener, app: Router, gate: Arc<ListenerGate>) {
    let mut backoff = AcceptBackoff::default();
    loop {
        let stream = match listener.accept().await {
            Ok((s, _)) => s,
            Err(e) => {
                tokio::time::sleep(backoff.after("api", &e)).await;
                continue;
            }
        };
        backoff.reset();
        match gate.admit(true) {
            Ok(admitted) => {
                let svc = TowerToHyperService::new(app.clone());
                tokio::spawn(capstan_proxy::serve::serve_http(stream, admitted, svc));
            }
            Err(refusal) => {
                tokio::spawn(gate::refuse_http(stream, refusal));
            }
        }
    }
}
