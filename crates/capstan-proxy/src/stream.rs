//! Gateway sockets of connections: a TCP listener sends every connection to its route's backends; a TLS listener
//! reads the ClientHello, chooses the route by its server name (SNI), and either passes the connection through
//! still encrypted or ends TLS here and sends the plain bytes.

use std::net::SocketAddr;
use std::sync::Arc;

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite};
use tokio::net::TcpStream;

use crate::gate::{Activity, Admitted, Held};
use crate::gateway::{Routes, RuleAction, SocketMode, VirtualHost};
use crate::routes::HostPattern;

/// The most a ClientHello may take before the connection is dropped (post-quantum key shares make them a few KiB;
/// rustls itself refuses a handshake message over 64 KiB).
const MAX_HELLO: usize = 64 << 10;

/// Serves one connection on a TLS or TCP gateway socket.
pub(crate) async fn serve(
    routes: Arc<Routes>,
    acceptor: Option<tokio_rustls::TlsAcceptor>,
    mut stream: TcpStream,
    peer: SocketAddr,
    admitted: Admitted,
) {
    let _ = stream.set_nodelay(true);
    match routes.mode {
        SocketMode::Tcp => {
            // Admitted as a tunnel (counted among them, never evicted) from the start.
            let _admitted = admitted;
            let action = routes.hosts().iter().find_map(|h| h.stream.clone());
            match action {
                Some(action) => forward(&action, stream, peer, &[]).await,
                None => tracing::debug!(%peer, port = routes.port, "no TCPRoute on this port: connection closed"),
            }
        }
        SocketMode::Tls => {
            // The ClientHello must come within the header timeout, as an HTTP request's headers must; until it has
            // chosen a route the connection may be evicted to make room, as one in its HTTPS handshake may.
            let limit = admitted.listener().gate().header_timeout();
            let read = tokio::select! {
                r = tokio::time::timeout(limit, client_hello(&mut stream)) => r,
                _ = admitted.evicted() => return tracing::debug!(%peer, "evicted before its ClientHello"),
            };
            let (hello, sni) = match read {
                Ok(Ok(x)) => x,
                Ok(Err(why)) => return tracing::debug!(%peer, "TLS connection closed: {why}"),
                Err(_) => return tracing::debug!(%peer, "no ClientHello within {limit:?}: connection closed"),
            };
            // The plan is let go of at once: a long tunnel must not keep every entry of an old plan alive.
            let chosen = chosen(&routes.hosts(), sni.as_deref()).map(|v| (v.stream.clone(), v.passthrough));
            let Some((Some(action), passthrough)) = chosen else {
                return tracing::debug!(%peer, sni = sni.as_deref().unwrap_or("(none)"), "no TLSRoute serves this name");
            };
            if passthrough {
                let Some(_tunnel) = tunnel(admitted, peer) else { return };
                return forward(&action, stream, peer, &hello).await;
            }
            let Some(acceptor) = acceptor else { return };
            // The ClientHello was read to choose the route: the handshake reads it again before the rest.
            let (read, write) = stream.into_split();
            let replayed = tokio::io::join(std::io::Cursor::new(hello).chain(read), write);
            let handshake = tokio::select! {
                r = tokio::time::timeout(limit, acceptor.accept(replayed)) => r,
                _ = admitted.evicted() => return tracing::debug!(%peer, "evicted during its TLS handshake"),
            };
            match handshake {
                Ok(Ok(tls)) => {
                    let Some(_tunnel) = tunnel(admitted, peer) else { return };
                    forward(&action, tls, peer, &[]).await
                }
                Ok(Err(e)) => tracing::debug!(%peer, "TLS handshake failed: {e}"),
                Err(_) => tracing::debug!(%peer, "TLS handshake timed out"),
            }
        }
        SocketMode::Http | SocketMode::Https => {}
    }
}

/// A TLS connection that became a tunnel: counted among the tunnels (none when half the budget is tunnels
/// already: the connection is closed) and busy, so that it is not evicted for being quiet.
fn tunnel(admitted: Admitted, peer: SocketAddr) -> Option<(Held, Activity)> {
    let held = Held(Arc::new(admitted));
    if !held.pin() {
        tracing::debug!(%peer, "as many tunnels as the budget allows are open: connection closed");
        return None;
    }
    let busy = held.0.activity();
    Some((held, busy))
}

/// The route of a server name: the most specific listener whose host name covers it, then that listener's route
/// with the most specific host name that covers it (hosts are ordered so); a ClientHello without a name goes to a
/// route for every name only.
fn chosen<'h>(hosts: &'h [VirtualHost], sni: Option<&str>) -> Option<&'h VirtualHost> {
    let routed = || hosts.iter().filter(|h| h.stream.is_some());
    match sni {
        Some(name) => {
            let listener = routed().map(|h| &h.listener).find(|l| l.matches(name))?;
            routed().find(|h| h.listener == *listener && h.host.matches(name))
        }
        None => routed().find(|h| h.host == HostPattern::Any),
    }
}

/// Sends a connection to the backend its route picks by weight. A backend that does not resolve (a missing App or
/// port) takes its share of connections and closes them, as Gateway API asks.
async fn forward<C>(action: &RuleAction, client: C, peer: SocketAddr, first: &[u8])
where
    C: AsyncRead + AsyncWrite + Unpin,
{
    let Some(backend) = action.pick() else {
        return tracing::debug!(%peer, rule = %action.id, "the route has no backend with weight: connection closed");
    };
    match (&backend.port, backend.entry.get()) {
        (Ok(_), Some(entry)) => crate::tcp::tunnel(entry.clone(), client, peer, first).await,
        (Err(why), _) => tracing::debug!(%peer, rule = %action.id, "connection closed: {why}"),
        (Ok(_), None) => tracing::debug!(%peer, rule = %action.id, "connection closed: its backend is not installed"),
    }
}

/// Reads a connection's first bytes until they hold a whole ClientHello: the bytes read (to pass on) and the server
/// name it asks for, lower-case without a trailing dot. rustls parses it: a connection that is not TLS is refused.
async fn client_hello(stream: &mut TcpStream) -> Result<(Vec<u8>, Option<String>), String> {
    let mut acceptor = rustls::server::Acceptor::default();
    let mut read = Vec::with_capacity(2048);
    // On the heap, for as long as the hello takes: a connection's task is as large as its largest state.
    let mut chunk = vec![0u8; 4096];
    loop {
        let n = stream.read(&mut chunk).await.map_err(|e| format!("reading the ClientHello: {e}"))?;
        if n == 0 {
            return Err("closed before its ClientHello".into());
        }
        read.extend_from_slice(&chunk[..n]);
        if read.len() > MAX_HELLO {
            return Err(format!("no ClientHello in the first {MAX_HELLO} bytes"));
        }
        let mut rest = &chunk[..n];
        while !rest.is_empty() {
            match acceptor.read_tls(&mut rest) {
                Ok(0) => break,
                Ok(_) => {}
                Err(e) => return Err(format!("not a TLS ClientHello: {e}")),
            }
        }
        match acceptor.accept() {
            Ok(Some(accepted)) => {
                let name = accepted.client_hello().server_name().map(|n| n.trim_end_matches('.').to_ascii_lowercase());
                return Ok((read, name));
            }
            Ok(None) => continue,
            Err((e, _)) => return Err(format!("not a TLS ClientHello: {e}")),
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;
    use crate::routes::HostPattern;

    fn host(pattern: &str, routed: bool) -> VirtualHost {
        on("*", pattern, routed)
    }

    /// A route's host name `pattern` on a listener whose host name is `listener`.
    fn on(listener: &str, pattern: &str, routed: bool) -> VirtualHost {
        let id = if listener == "*" { format!("default/r/{pattern}") } else { format!("{listener}/r/{pattern}") };
        let action = routed.then(|| Arc::new(RuleAction::new(id, capstan_model::Expose::http(1))));
        let parse = |p: &str| if p == "*" { HostPattern::Any } else { HostPattern::parse(p) };
        VirtualHost::stream(parse(listener), parse(pattern), action, None, true)
    }

    #[test]
    fn the_most_specific_name_with_a_route_is_chosen_and_a_nameless_hello_gets_the_catch_all_only() {
        let mut hosts = vec![host("*", true), host("*.example.com", true), host("db.example.com", true)];
        hosts.sort_by_key(|h| (h.listener.rank(), h.host.rank()));
        let id = |h: Option<&VirtualHost>| h.and_then(|h| h.stream.as_ref()).map(|a| a.id.clone());
        assert_eq!(id(chosen(&hosts, Some("db.example.com"))), Some("default/r/db.example.com".into()));
        assert_eq!(id(chosen(&hosts, Some("cache.example.com"))), Some("default/r/*.example.com".into()));
        assert_eq!(id(chosen(&hosts, Some("other.org"))), Some("default/r/*".into()));
        assert_eq!(id(chosen(&hosts, None)), Some("default/r/*".into()));
        let named_only = vec![host("db.example.com", true), host("*", false)];
        assert!(chosen(&named_only, None).is_none(), "no route for every name: a nameless hello is closed");
        assert!(chosen(&named_only, Some("x.example.com")).is_none());

        // Listeners first: a route on the listener for db.example.com wins over an older one for the same name on a
        // listener for every name; a name only the catch-all listener's route covers goes there.
        let mut shared = vec![on("*", "db.example.com", true), on("db.example.com", "db.example.com", true)];
        shared.sort_by_key(|h| (h.listener.rank(), h.host.rank()));
        assert_eq!(id(chosen(&shared, Some("db.example.com"))), Some("db.example.com/r/db.example.com".into()));
        let mut other = vec![on("*", "*.example.com", true), on("db.example.com", "db.example.com", true)];
        other.sort_by_key(|h| (h.listener.rank(), h.host.rank()));
        assert_eq!(id(chosen(&other, Some("cache.example.com"))), Some("default/r/*.example.com".into()));
    }

    #[tokio::test]
    async fn a_client_hello_is_read_whole_with_its_name_and_anything_else_is_refused() {
        use tokio::io::AsyncWriteExt;
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        // A real client's hello, written a few bytes at a time, as a slow client would.
        let client = tokio::spawn(async move {
            let mut roots = rustls::RootCertStore::empty();
            roots.add_parsable_certificates(Vec::<rustls::pki_types::CertificateDer>::new());
            let config =
                rustls::ClientConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
                    .with_safe_default_protocol_versions()
                    .unwrap()
                    .with_root_certificates(roots)
                    .with_no_client_auth();
            let mut conn =
                rustls::ClientConnection::new(Arc::new(config), "DB.Example.com".try_into().unwrap()).unwrap();
            let mut hello = Vec::new();
            conn.write_tls(&mut hello).unwrap();
            let mut s = TcpStream::connect(addr).await.unwrap();
            for piece in hello.chunks(7) {
                s.write_all(piece).await.unwrap();
                s.flush().await.unwrap();
                tokio::time::sleep(std::time::Duration::from_millis(1)).await;
            }
            let mut rest = Vec::new();
            let _ = s.read_to_end(&mut rest).await;
            hello
        });
        let (mut server, _) = listener.accept().await.unwrap();
        let (read, name) = client_hello(&mut server).await.unwrap();
        drop(server);
        let sent = client.await.unwrap();
        assert_eq!(read, sent, "every byte read is kept, to be passed on");
        assert_eq!(name.as_deref(), Some("db.example.com"));

        let plain = tokio::spawn(async move {
            let mut s = TcpStream::connect(addr).await.unwrap();
            s.write_all(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n").await.unwrap();
            let mut rest = Vec::new();
            let _ = s.read_to_end(&mut rest).await;
        });
        let (mut server, _) = listener.accept().await.unwrap();
        let e = client_hello(&mut server).await.unwrap_err();
        assert!(e.contains("not a TLS ClientHello"), "{e}");
        drop(server);
        plain.await.unwrap();
    }
}
