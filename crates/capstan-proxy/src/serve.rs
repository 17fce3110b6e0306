//! Serving one admitted HTTP/1 or HTTP/2 connection: the header-read timeout, requests counted busy until their response
//! body is written, and the connection dropped when the gate evicts it.

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use hyper::body::{Body, Frame, Incoming, SizeHint};
use hyper::server::conn::{http1, http2};
use hyper::service::Service;
use hyper::{Request, Response};
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};

use crate::gate::{Activity, Admitted};

/// A response body that keeps its connection busy until it has been written (or dropped).
pub struct Tracked<B> {
    inner: B,
    _activity: Activity,
}

impl<B: Body + Unpin> Body for Tracked<B> {
    type Data = B::Data;
    type Error = B::Error;

    fn poll_frame(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<B::Data>, B::Error>>> {
        Pin::new(&mut self.inner).poll_frame(cx)
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
/// The largest header block a client may send, as an HTTP/1 request's headers (hyper's default there).
const H2_MAX_HEADER_LIST: u32 = 64 * 1024;

/// Wraps a service so that every request counts its connection busy until its response body is written, and
/// carries the connection's place in the gate (for tunnels).
#[derive(Clone)]
struct TrackedService<S> {
    slot: std::sync::Arc<Admitted>,
    service: S,
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
        req.extensions_mut().insert(crate::gate::Held(self.slot.clone()));
        let fut = self.service.call(req);
        Box::pin(async move {
            let res = fut.await?;
            Ok(res.map(|inner| Tracked { inner, _activity: activity }))
        })
    }
}

/// Runs one served connection (HTTP/1 or HTTP/2, whose types share no trait for this) until it ends, the gate
/// evicts it, or it has been idle for the header timeout.
macro_rules! drive {
    ($conn:expr, $slot:expr) => {{
        let slot = $slot;
        let timeout = slot.listener().gate().header_timeout();
        let conn = $conn;
        tokio::pin!(conn);
        let mut check = timeout;
        loop {
            tokio::select! {
                _ = conn.as_mut() => break,
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

/// Serves `stream` (a TCP connection, or TLS over one, or a Unix socket's) with `service` over HTTP/1.1 until the
/// client closes it, its headers time out, or the gate evicts it.
pub async fn serve_http<IO, S, B>(stream: IO, admitted: Admitted, service: S)
where
    IO: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
    S: Service<Request<Incoming>, Response = Response<B>> + Clone + Send + 'static,
    S::Future: Send + 'static,
    S::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
    B: Body + Unpin + Send + 'static,
    B::Data: Send,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    let stream = TimedIo::new(stream, admitted.listener().gate().send_timeout());
    let slot = std::sync::Arc::new(admitted);
    let svc = TrackedService { slot: slot.clone(), service };
    // hyper's own header-read timeout also runs while a response is still streaming (it reads ahead for the next
    // request), so it would cut off watches, `logs -f` and long downloads: the timeout is kept in `drive` instead,
    // on the time the connection has been idle — no request being answered, whether it sent nothing, half a header
    // or is waiting between kept-alive requests.
    let conn = http1::Builder::new()
        .header_read_timeout(None)
        .keep_alive(true)
        .serve_connection(TokioIo::new(stream), svc)
        .with_upgrades();
    drive!(conn, &slot);
}

/// Serves `stream` (TLS that negotiated `h2`) with `service` over HTTP/2, with the same idle timeout and eviction
/// as HTTP/1 and the limits above.
pub async fn serve_http2<IO, S, B>(stream: IO, admitted: Admitted, service: S)
where
    IO: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
    S: Service<Request<Incoming>, Response = Response<B>> + Clone + Send + 'static,
    S::Future: Send + 'static,
    S::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
    B: Body + Unpin + Send + 'static,
    B::Data: Send,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    let stream = TimedIo::new(stream, admitted.listener().gate().send_timeout());
    let slot = std::sync::Arc::new(admitted);
    let svc = TrackedService { slot: slot.clone(), service };
    let conn = http2::Builder::new(TokioExecutor::new())
        .timer(TokioTimer::new())
        .max_concurrent_streams(H2_MAX_CONCURRENT_STREAMS)
        .max_pending_accept_reset_streams(H2_MAX_PENDING_RESETS)
        .max_local_error_reset_streams(H2_MAX_ERROR_RESETS)
        .max_header_list_size(H2_MAX_HEADER_LIST)
        .serve_connection(TokioIo::new(stream), svc);
    drive!(conn, &slot);
}
