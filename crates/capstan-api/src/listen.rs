//! The API's accept loops: every TCP connection admitted through the process' connection gate, its TLS handshake
//! made within the header-read timeout, and served (the webhook receiver shares this listener); and the Unix
//! socket in the data directory, for local use.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use axum::Router;
use capstan_proxy::gate::{self, AcceptBackoff, ListenerGate};
use hyper::body::Incoming;
use hyper::Request;
use hyper_util::service::TowerToHyperService;
use tokio_rustls::TlsAcceptor;

/// The Unix socket's name in the data directory.
pub const SOCKET_FILE: &str = "capstan.sock";

/// Serves `app` on `listener` (over TLS when `tls` is given) until the task is aborted. Connections are served by
/// tasks this loop owns: aborting it closes them all, so that nothing keeps the control plane's state (the store)
/// after it stopped.
pub async fn serve(listener: tokio::net::TcpListener, app: Router, gate: Arc<ListenerGate>, tls: Option<TlsAcceptor>) {
    let mut backoff = AcceptBackoff::default();
    let mut conns = tokio::task::JoinSet::new();
    loop {
        while conns.try_join_next().is_some() {}
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
                let svc = WithSource { inner: TowerToHyperService::new(app.clone()), source: Some(source) };
                let _ = stream.set_nodelay(true);
                match tls.clone() {
                    None => {
                        conns.spawn(capstan_proxy::serve::serve_http(
                            stream,
                            admitted,
                            svc,
                            capstan_proxy::serve::Protocol::Http1,
                        ));
                    }
                    Some(acceptor) => {
                        // A handshake that does not finish in time is dropped, as a request whose headers do not
                        // come: a client that opens connections and sends nothing cannot hold them.
                        let limit = admitted.listener().gate().header_timeout();
                        conns.spawn(async move {
                            match tokio::time::timeout(limit, acceptor.accept(stream)).await {
                                Ok(Ok(tls)) => {
                                    capstan_proxy::serve::serve_http(
                                        tls,
                                        admitted,
                                        svc,
                                        capstan_proxy::serve::Protocol::Http1,
                                    )
                                    .await
                                }
                                Ok(Err(e)) => tracing::debug!(%source, "TLS handshake failed: {e}"),
                                Err(_) => tracing::debug!(%source, "TLS handshake timed out"),
                            }
                        });
                    }
                }
            }
            Err(refusal) => {
                conns.spawn(gate::refuse_http(stream, refusal, gate.gate().clone()));
            }
        }
    }
}

/// Binds the data directory's Unix socket, private to its user (a socket left by an earlier run is replaced).
pub fn bind_unix(data_dir: &Path) -> std::io::Result<(tokio::net::UnixListener, PathBuf)> {
    use std::os::unix::fs::{FileTypeExt, PermissionsExt};
    let path = data_dir.join(SOCKET_FILE);
    if std::fs::symlink_metadata(&path).is_ok_and(|m| m.file_type().is_socket()) {
        std::fs::remove_file(&path)?;
    }
    let listener = tokio::net::UnixListener::bind(&path)?;
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600))?;
    Ok((listener, path))
}

/// Serves `app` on the Unix socket until the task is aborted: plain HTTP (the file's permissions are the guard),
/// with the same token, roles and audit as the TCP listener.
pub async fn serve_unix(listener: tokio::net::UnixListener, app: Router, gate: Arc<ListenerGate>) {
    let mut backoff = AcceptBackoff::default();
    let mut conns = tokio::task::JoinSet::new();
    loop {
        while conns.try_join_next().is_some() {}
        let stream = match listener.accept().await {
            Ok((s, _)) => s,
            Err(e) => {
                tokio::time::sleep(backoff.after("api (unix socket)", &e)).await;
                continue;
            }
        };
        backoff.reset();
        if let Ok(admitted) = gate.admit(true) {
            let svc = WithSource { inner: TowerToHyperService::new(app.clone()), source: None };
            conns.spawn(capstan_proxy::serve::serve_http(stream, admitted, svc, capstan_proxy::serve::Protocol::Http1));
        }
    }
}

/// The router for one connection, with the client's address on every request (for the audit log).
#[derive(Clone)]
struct WithSource {
    inner: TowerToHyperService<Router>,
    source: Option<std::net::SocketAddr>,
}

impl hyper::service::Service<Request<Incoming>> for WithSource {
    type Response = <TowerToHyperService<Router> as hyper::service::Service<Request<Incoming>>>::Response;
    type Error = <TowerToHyperService<Router> as hyper::service::Service<Request<Incoming>>>::Error;
    type Future = <TowerToHyperService<Router> as hyper::service::Service<Request<Incoming>>>::Future;

    fn call(&self, mut req: Request<Incoming>) -> Self::Future {
        if let Some(source) = self.source {
            req.extensions_mut().insert(crate::audit::Source(source));
        }
        self.inner.call(req)
    }
}
