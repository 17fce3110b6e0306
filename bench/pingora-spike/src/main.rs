//! A round-robin reverse proxy on Pingora: what Capstan's balancer would be built on if it moved to Pingora.
//! `SPIKE_LISTEN` (plain HTTP) and optionally `SPIKE_TLS_LISTEN` with `SPIKE_CERT` and `SPIKE_KEY` (PEM files; HTTP/2
//! offered by ALPN), to `SPIKE_UPSTREAMS` (comma-separated `host:port`); Pingora's own options (`-c conf.yaml` for
//! its thread count) on the command line.

use std::sync::atomic::{AtomicUsize, Ordering};

use async_trait::async_trait;
use pingora::prelude::*;

struct RoundRobin {
    upstreams: Vec<String>,
    next: AtomicUsize,
}

#[async_trait]
impl ProxyHttp for RoundRobin {
    type CTX = ();

    fn new_ctx(&self) -> Self::CTX {}

    async fn upstream_peer(&self, _session: &mut Session, _ctx: &mut ()) -> Result<Box<HttpPeer>> {
        let i = self.next.fetch_add(1, Ordering::Relaxed) % self.upstreams.len();
        Ok(Box::new(HttpPeer::new(self.upstreams[i].as_str(), false, String::new())))
    }
}

fn var(name: &str) -> Option<String> {
    std::env::var(name).ok().filter(|v| !v.is_empty())
}

fn main() {
    let upstreams: Vec<String> =
        var("SPIKE_UPSTREAMS").expect("SPIKE_UPSTREAMS").split(',').map(str::to_string).collect();
    let mut server = Server::new(Some(Opt::parse_args())).expect("the server");
    server.bootstrap();
    let mut proxy =
        http_proxy_service(&server.configuration, RoundRobin { upstreams, next: AtomicUsize::new(0) });
    if let Some(listen) = var("SPIKE_LISTEN") {
        proxy.add_tcp(&listen);
    }
    if let (Some(listen), Some(cert), Some(key)) = (var("SPIKE_TLS_LISTEN"), var("SPIKE_CERT"), var("SPIKE_KEY")) {
        let mut tls = pingora::listeners::tls::TlsSettings::intermediate(&cert, &key).expect("the certificate");
        tls.enable_h2();
        proxy.add_tls_with_settings(&listen, None, tls);
    }
    server.add_service(proxy);
    server.run_forever();
}
