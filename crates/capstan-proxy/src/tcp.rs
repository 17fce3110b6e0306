//! TCP passthrough: each connection goes to one Ready replica (sticky by client address when asked) and is
//! tunnelled both ways until either side closes.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::Entry;

/// Serves one TCP connection arriving on a `protocol: tcp` entry point.
pub async fn serve(entry: Arc<Entry>, client: TcpStream, peer: SocketAddr) {
    let _ = client.set_nodelay(true);
    tunnel(entry, client, peer, &[]).await;
}

/// Tunnels a client's connection to one of the entry's replicas, writing `first` (bytes already read from the
/// client, such as a TLS ClientHello that was looked at) before anything else. A replica that cannot be reached is
/// ejected and the next one tried.
pub(crate) async fn tunnel<C>(entry: Arc<Entry>, mut client: C, peer: SocketAddr, first: &[u8])
where
    C: AsyncRead + AsyncWrite + Unpin,
{
    let cfg = entry.config();
    let sticky = cfg.expose.sticky.as_ref().and_then(|s| s.client_ip.clone());
    let mut backend = sticky
        .as_ref()
        .and_then(|ci| entry.backends.pinned_ip(peer.ip(), Duration::from_secs(u64::from(ci.timeout_seconds))))
        .or_else(|| entry.backends.pick(cfg.expose.balance, &[]));
    let mut tried = Vec::new();
    while let Some(b) = backend {
        let connected = tokio::time::timeout(cfg.connect_timeout, TcpStream::connect(b.addr)).await;
        match connected {
            Ok(Ok(mut upstream)) => {
                let _ = upstream.set_nodelay(true);
                if sticky.is_some() {
                    entry.backends.pin_ip(peer.ip(), &b.name);
                }
                let labels = entry.replica_labels(&b.name);
                entry.metrics.tcp_connections.get_or_create(&labels).inc();
                let gauge = entry.metrics.open_tunnels.get_or_create(&labels).clone();
                let _guard = b.track();
                if !first.is_empty() && upstream.write_all(first).await.is_err() {
                    return;
                }
                gauge.inc();
                tokio::select! {
                    _ = crate::idle::copy_until_idle(&mut client, &mut upstream, cfg.idle) => {}
                    _ = entry.retired() => {
                        tracing::debug!(%peer, entry = %entry.name, "its route is gone: tunnel closed");
                    }
                }
                gauge.dec();
                return;
            }
            _ => {
                b.eject();
                tried.push(b.name.clone());
                backend = entry.backends.pick(cfg.expose.balance, &tried);
            }
        }
    }
    tracing::debug!(app = %entry.app, entry = %entry.name, "no replica could take a TCP connection from {peer}");
}
