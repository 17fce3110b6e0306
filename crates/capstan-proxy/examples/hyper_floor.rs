//! The least a hyper-based HTTP/1 proxy does per request, for `bench/lb.sh` to count against Capstan's balancer.
//!
//! `hyper_floor LISTEN_PORT BACKEND_PORT...`: one thread; each client connection gets its own keep-alive upstream
//! connection to the next backend in turn and passes every request and response through untouched: no header
//! rewriting, no retries, no timeouts, no metrics, no pool. What it costs per request is the floor under any
//! balancer built on hyper's server and client connections, Capstan's included.
#![allow(clippy::unwrap_used, clippy::expect_used)] // a measuring tool: a failed step ends the run, saying which

use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use hyper::body::Incoming;
use hyper::client::conn::http1::SendRequest;
use hyper::service::service_fn;
use hyper::{Request, Response};
use hyper_util::rt::TokioIo;
use tokio::net::{TcpListener, TcpStream};

type Error = Box<dyn std::error::Error + Send + Sync>;

async fn connect(addr: SocketAddr) -> Result<SendRequest<Incoming>, Error> {
    let stream = TcpStream::connect(addr).await?;
    let _ = stream.set_nodelay(true);
    let (sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream)).await?;
    tokio::spawn(conn);
    Ok(sender)
}

/// Forwards one request on the client connection's upstream connection, opening it on first use. A client
/// connection sends its next request only after the previous response, so the connection is taken out of its slot
/// for the request and put back once the response headers are in.
async fn forward(
    upstream: Arc<Mutex<Option<SendRequest<Incoming>>>>,
    backend: SocketAddr,
    req: Request<Incoming>,
) -> Result<Response<Incoming>, Error> {
    let taken = upstream.lock().map_err(|_| "poisoned")?.take().filter(|s| !s.is_closed());
    let mut sender = match taken {
        Some(s) => s,
        None => connect(backend).await?,
    };
    // Ready once the previous response's body has been read to its end.
    sender.ready().await?;
    let response = sender.send_request(req).await?;
    *upstream.lock().map_err(|_| "poisoned")? = Some(sender);
    Ok(response)
}

fn main() -> Result<(), Error> {
    let mut args = std::env::args().skip(1);
    let usage = "usage: hyper_floor LISTEN_PORT BACKEND_PORT...";
    let listen: u16 = args.next().ok_or(usage)?.parse()?;
    let backends: Vec<SocketAddr> =
        args.map(|p| p.parse::<u16>().map(|p| SocketAddr::from(([127, 0, 0, 1], p)))).collect::<Result<_, _>>()?;
    if backends.is_empty() {
        return Err(usage.into());
    }
    let next = Arc::new(AtomicUsize::new(0));
    tokio::runtime::Builder::new_current_thread().enable_all().build()?.block_on(async move {
        let listener = TcpListener::bind(("127.0.0.1", listen)).await?;
        loop {
            let (stream, _) = listener.accept().await?;
            let _ = stream.set_nodelay(true);
            let backend = backends[next.fetch_add(1, Ordering::Relaxed) % backends.len()];
            let upstream = Arc::new(Mutex::new(None));
            tokio::spawn(async move {
                let svc = service_fn(move |req| forward(upstream.clone(), backend, req));
                let _ = hyper::server::conn::http1::Builder::new().serve_connection(TokioIo::new(stream), svc).await;
            });
        }
    })
}
