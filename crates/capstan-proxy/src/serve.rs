//! Serving one admitted HTTP/1 or HTTP/2 connection: the header-read timeout, requests counted busy until their response
//! body is written, and the connection dropped when the gate evicts it.

use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Weak};
use std::task::{Context, Poll};
use std::time::Duration;

use hyper::body::{Body, Frame, Incoming, SizeHint};
use hyper::server::conn::{http1, http2};
use hyper::service::Service;
use hyper::{Request, Response};
use hyper_util::rt::{TokioIo, TokioTimer};

use crate::gate::{Activity, Admitted};

/// A response body that holds `G` until it has been written (or dropped): its connection's activity (busy until
/// then), or an HTTP/2 stream's place in the connection budget.
pub struct Tracked<B, G = Activity> {
    inner: B,
    _guard: G,
    /// On HTTP/2: since when (ms) a frame it gave has waited for the connection to take the next one; 0 while it
    /// waits for data of its own.
    waiting: Option<Arc<AtomicU64>>,
}

impl<B, G> Tracked<B, G> {
    pub fn new(inner: B, guard: G) -> Tracked<B, G> {
        Tracked { inner, _guard: guard, waiting: None }
    }
}

impl<B: Body + Unpin, G: Unpin> Body for Tracked<B, G> {
    type Data = B::Data;
    type Error = B::Error;

    fn poll_frame(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<B::Data>, B::Error>>> {
        let polled = Pin::new(&mut self.inner).poll_frame(cx);
        if let Some(w) = &self.waiting {
            let since = if matches!(polled, Poll::Ready(Some(Ok(_)))) { crate::gate::now_ms() } else { 0 };
            w.store(since, Ordering::Relaxed);
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

/// A client connection whose writes give up when the client reads nothing for `timeout` (nginx's
/// `send_timeout`): a response nobody reads cannot hold its connection, and the replica's, busy for ever.
pub struct TimedIo<IO = tokio::net::TcpStream> {
    inner: IO,
    timeout: Duration,
    stalled: Option<Pin<Box<tokio::time::Sleep>>>,
}

impl<IO> TimedIo<IO> {
    pub fn new(inner: IO, timeout: Duration) -> TimedIo<IO> {
        TimedIo { inner, timeout, stalled: None }
    }

    /// Passes a write's progress through; a write that stays pending past the timeout fails.
    fn watch<T>(&mut self, cx: &mut Context<'_>, polled: Poll<std::io::Result<T>>) -> Poll<std::io::Result<T>> {
        match polled {
            Poll::Pending => {
                let timeout = self.timeout;
                let stalled = self.stalled.get_or_insert_with(|| Box::pin(tokio::time::sleep(timeout)));
                if stalled.as_mut().poll(cx).is_ready() {
                    return Poll::Ready(Err(std::io::Error::new(
                        std::io::ErrorKind::TimedOut,
                        "the client read nothing of the response in time",
                    )));
                }
                Poll::Pending
            }
            ready => {
                self.stalled = None;
                ready
            }
        }
    }
}

impl<IO: tokio::io::AsyncRead + Unpin> tokio::io::AsyncRead for TimedIo<IO> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut tokio::io::ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_read(cx, buf)
    }
}

impl<IO: tokio::io::AsyncWrite + Unpin> tokio::io::AsyncWrite for TimedIo<IO> {
    fn poll_write(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<std::io::Result<usize>> {
        let polled = Pin::new(&mut self.inner).poll_write(cx, buf);
        self.watch(cx, polled)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        let polled = Pin::new(&mut self.inner).poll_write_vectored(cx, bufs);
        self.watch(cx, polled)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        let polled = Pin::new(&mut self.inner).poll_flush(cx);
        self.watch(cx, polled)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

/// The limits of one HTTP/2 client connection. Streams are cheap for a client to open and to reset, so each
/// costs it something here: at most this many at once (nginx allows 128), and the h2 library's rapid-reset guard
/// (CVE-2023-44487) answers a client that resets more streams than it lets be accepted with GOAWAY.
pub const H2_MAX_CONCURRENT_STREAMS: u32 = 128;
/// Streams a client may reset before the server has even looked at them (the rapid-reset guard).
const H2_MAX_PENDING_RESETS: usize = 20;
/// Streams the server may reset for a client's protocol errors before it closes the connection.
const H2_MAX_ERROR_RESETS: usize = 256;
/// The largest header block a client may send (nginx's `large_client_header_buffers` allow 32 KiB).
const H2_MAX_HEADER_LIST: u32 = 64 * 1024;
/// Response data buffered per stream before the client's window takes it (hyper's default is 400 KiB: 50 MB for a
/// connection's 128 streams).
const H2_SEND_BUFFER: usize = 64 * 1024;

/// The response bodies of one HTTP/2 connection, watched for a client that stops taking data: with a flow-control
/// window it never opens, no write ever blocks (so [`TimedIo`] never fires) while the stream, its backend connection
/// and the client connection's place stay held. A body whose frame has waited longer than the send timeout for
/// the connection to take it closes the connection, as nginx's `send_timeout` does.
#[derive(Default)]
struct Stalls {
    bodies: std::sync::Mutex<Vec<Weak<AtomicU64>>>,
}

impl Stalls {
    /// A new body's clock, started: a body never polled waits as much as one whose frame was not taken.
    fn watch(&self) -> Arc<AtomicU64> {
        let w = Arc::new(AtomicU64::new(crate::gate::now_ms()));
        let mut bodies = self.bodies.lock().unwrap_or_else(|p| p.into_inner());
        bodies.retain(|b| b.strong_count() > 0);
        bodies.push(Arc::downgrade(&w));
        w
    }

    /// Whether a body still being sent has waited longer than `limit` for the connection to take its data.
    fn stalled(&self, limit: Duration) -> bool {
        let now = crate::gate::now_ms();
        let limit = limit.as_millis() as u64;
        let bodies = self.bodies.lock().unwrap_or_else(|p| p.into_inner());
        bodies.iter().filter_map(Weak::upgrade).any(|w| {
            let since = w.load(Ordering::Relaxed);
            since != 0 && now.saturating_sub(since) > limit
        })
    }
}

/// Wraps a service so that every request counts its connection busy until its response body is written, and
/// carries the connection's place in the gate (for tunnels); on HTTP/2, each body is watched for stalls.
#[derive(Clone)]
struct TrackedService<S> {
    slot: std::sync::Arc<Admitted>,
    service: S,
    stalls: Option<Arc<Stalls>>,
}

impl<S, B> Service<Request<Incoming>> for TrackedService<S>
where
    S: Service<Request<Incoming>, Response = Response<B>>,
    S::Future: Send + 'static,
    B: Body + Unpin,
{
    type Response = Response<Tracked<B>>;
    type Error = S::Error;
    type Future = Pin<Box<dyn Future<Output = Result<Self::Response, S::Error>> + Send>>;

    fn call(&self, mut req: Request<Incoming>) -> Self::Future {
        let activity = self.slot.activity();
        // Only where it is used: a tunnel's (an upgrade) and an HTTP/2 stream's place. The extension costs three
        // allocations a request.
        if self.stalls.is_some() || crate::http::wants_upgrade(req.headers()) {
            req.extensions_mut().insert(crate::gate::Held(self.slot.clone()));
        }
        let fut = self.service.call(req);
        let stalls = self.stalls.clone();
        Box::pin(async move {
            let res = fut.await?;
            Ok(res.map(|inner| Tracked { inner, _guard: activity, waiting: stalls.map(|s| s.watch()) }))
        })
    }
}

/// Runs one served connection (HTTP/1 or HTTP/2, whose types share no trait for this) until it ends, the gate
/// evicts it, or it has been idle for the header timeout.
macro_rules! drive {
    ($conn:expr, $slot:expr, $stalls:expr) => {{
        let slot = $slot;
        let stalls: Option<&Stalls> = $stalls;
        let timeout = slot.listener().gate().header_timeout();
        let send_timeout = slot.listener().gate().send_timeout();
        let conn = $conn;
        tokio::pin!(conn);
        // The first look comes when the time left since the connection became idle runs out (it may have waited
        // for its first byte already).
        let mut check = slot.idle_for().map_or(timeout, |i| timeout.saturating_sub(i)).max(Duration::from_millis(1));
        // Its own clock (the idle check's sleep starts over at every turn of the loop), for HTTP/2 only.
        let mut stall_check = stalls.map(|_| tokio::time::interval(send_timeout / 4));
        loop {
            // In this order: a connection whose request has arrived is served (and so busy) before a timeout or an
            // eviction that became due at the same time is looked at — after a stall of the runtime, both may be.
            tokio::select! {
                biased;
                _ = conn.as_mut() => break,
                _ = async {
                    match stall_check.as_mut() {
                        Some(i) => {
                            i.tick().await;
                        }
                        None => std::future::pending::<()>().await,
                    }
                } => {
                    if stalls.is_some_and(|s| s.stalled(send_timeout)) {
                        tracing::debug!("closing an HTTP/2 connection whose client took no data for {send_timeout:?}");
                        break;
                    }
                }
                _ = slot.evicted() => {
                    // Chosen while idle, but a request may have begun since: it is answered, then the connection
                    // closes. An idle one closes now.
                    if slot.is_busy() {
                        conn.as_mut().graceful_shutdown();
                        let _ = conn.as_mut().await;
                    }
                    break;
                }
                _ = tokio::time::sleep(check) => match slot.idle_for() {
                    Some(idle) if idle >= timeout => {
                        slot.listener().header_timed_out();
                        break;
                    }
                    Some(idle) => check = timeout - idle,
                    None => check = timeout,
                },
            }
        }
    }};
}

/// A connection that can say, without reading into a buffer, that it has something to read.
pub trait AwaitRead {
    fn await_read(&mut self) -> impl Future<Output = std::io::Result<()>> + Send;
}

impl AwaitRead for tokio::net::TcpStream {
    async fn await_read(&mut self) -> std::io::Result<()> {
        self.readable().await
    }
}

impl AwaitRead for tokio::net::UnixStream {
    async fn await_read(&mut self) -> std::io::Result<()> {
        self.readable().await
    }
}

impl AwaitRead for tokio_rustls::server::TlsStream<tokio::net::TcpStream> {
    async fn await_read(&mut self) -> std::io::Result<()> {
        let (tcp, tls) = self.get_mut();
        // A request that came with the handshake's last flight is already decrypted: there is something to read.
        match tls.process_new_packets() {
            Ok(state) if state.plaintext_bytes_to_read() == 0 && !state.peer_has_closed() => tcp.readable().await,
            Ok(_) => Ok(()),
            // A TLS error: the connection closes without a buffer taken for it.
            Err(e) => Err(std::io::Error::new(std::io::ErrorKind::InvalidData, e)),
        }
    }
}

/// The protocol a connection speaks: HTTP/1.1, or HTTP/2 once ALPN chose `h2`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Protocol {
    Http1,
    Http2,
}

/// Serves `stream` (a TCP connection, or TLS over one, or a Unix socket's) with `service` in `protocol` until the
/// client closes it, its headers time out, or the gate evicts it; HTTP/2 with the limits above, and closed when a
/// client stops taking data.
pub async fn serve_http<IO, S, B>(mut stream: IO, admitted: Admitted, service: S, protocol: Protocol)
where
    IO: tokio::io::AsyncRead + tokio::io::AsyncWrite + AwaitRead + Unpin + Send + 'static,
    S: Service<Request<Incoming>, Response = Response<B>> + Clone + Send + 'static,
    S::Future: Send + 'static,
    S::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
    B: Body + Unpin + Send + 'static,
    B::Data: Send,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    if protocol == Protocol::Http1 {
        // hyper takes its 8 KiB read buffer at its first read: a connection that has sent nothing yet (an idle
        // keep-alive pool's, a browser's spare) is only waited on, with no buffer, until it does — within the
        // header timeout, and giving its place up if the gate needs it.
        // The header timeout counts from the connection's admission (its TLS handshake took part of it).
        let limit = admitted.listener().gate().header_timeout().saturating_sub(admitted.idle_for().unwrap_or_default());
        tokio::select! {
            // A request that has arrived is read, even when the timeout or an eviction is due as well.
            biased;
            r = stream.await_read() => {
                if r.is_err() {
                    return;
                }
            }
            _ = admitted.evicted() => return,
            _ = tokio::time::sleep(limit) => {
                admitted.listener().header_timed_out();
                return;
            }
        }
    }
    let stream = TimedIo::new(stream, admitted.listener().gate().send_timeout());
    let slot = Arc::new(admitted);
    match protocol {
        Protocol::Http1 => {
            let stream = TokioIo::new(stream);
            let svc = TrackedService { slot: slot.clone(), service, stalls: None };
            // hyper's own header-read timeout also runs while a response is still streaming (it reads ahead for
            // the next request), so it would cut off watches, `logs -f` and long downloads: the timeout is kept in
            // `drive` instead, on the time the connection has been idle — no request being answered, whether it
            // sent nothing, half a header or is waiting between kept-alive requests.
            let conn = http1::Builder::new()
                .header_read_timeout(None)
                .keep_alive(true)
                .serve_connection(stream, svc)
                .with_upgrades();
            drive!(conn, &slot, None::<&Stalls>);
        }
        // Boxed: only HTTP/2 connections pay for HTTP/2's state, which is larger than HTTP/1.1's.
        Protocol::Http2 => Box::pin(serve_h2(stream, slot, service)).await,
    }
}

async fn serve_h2<IO, S, B>(stream: TimedIo<IO>, slot: Arc<Admitted>, service: S)
where
    IO: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
    S: Service<Request<Incoming>, Response = Response<B>> + Clone + Send + 'static,
    S::Future: Send + 'static,
    S::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
    B: Body + Unpin + Send + 'static,
    B::Data: Send,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    let stalls = Arc::new(Stalls::default());
    let svc = TrackedService { slot: slot.clone(), service, stalls: Some(stalls.clone()) };
    let queue = crate::h2_streams::StreamQueue::default();
    let round = crate::h2_streams::Round::default();
    let stream = TokioIo::new(crate::h2_streams::Rounds::new(stream, round.clone()));
    let conn = http2::Builder::new(queue.clone())
        .timer(TokioTimer::new())
        .max_concurrent_streams(H2_MAX_CONCURRENT_STREAMS)
        .max_pending_accept_reset_streams(H2_MAX_PENDING_RESETS)
        .max_local_error_reset_streams(H2_MAX_ERROR_RESETS)
        .max_header_list_size(H2_MAX_HEADER_LIST)
        .max_send_buf_size(H2_SEND_BUFFER)
        .serve_connection(stream, svc);
    drive!(crate::h2_streams::WithStreams::new(conn, queue, round), &slot, Some(&*stalls));
}
