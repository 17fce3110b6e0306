//! Serving one admitted HTTP/1 connection: the header-read timeout, requests counted busy until their response
//! body is written, and the connection dropped when the gate evicts it.

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use hyper::body::{Body, Frame, Incoming, SizeHint};
use hyper::server::conn::http1;
use hyper::service::Service;
use hyper::{Request, Response};
use hyper_util::rt::TokioIo;

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

/// Serves `stream` (a TCP connection, or TLS over one, or a Unix socket's) with `service` until the client closes
/// it, its headers time out, or the gate evicts it.
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
    let timeout = admitted.listener().gate().header_timeout();
    let stream = TimedIo::new(stream, admitted.listener().gate().send_timeout());
    let slot = std::sync::Arc::new(admitted);
    let tracker = slot.clone();
    let svc = hyper::service::service_fn(move |mut req: Request<Incoming>| {
        let activity = tracker.activity();
        req.extensions_mut().insert(crate::gate::Held(tracker.clone()));
        let fut = service.call(req);
        async move {
            let res = fut.await?;
            Ok::<_, S::Error>(res.map(|inner| Tracked { inner, _activity: activity }))
        }
    });
    // hyper's own header-read timeout also runs while a response is still streaming (it reads ahead for the next
    // request), so it would cut off watches, `logs -f` and long downloads: the timeout is kept here instead, on
    // the time the connection has been idle — no request being answered, whether it sent nothing, half a header
    // or is waiting between kept-alive requests.
    let conn = http1::Builder::new()
        .header_read_timeout(None)
        .keep_alive(true)
        .serve_connection(TokioIo::new(stream), svc)
        .with_upgrades();
    tokio::pin!(conn);
    let mut check = timeout;
    loop {
        tokio::select! {
            _ = conn.as_mut() => return,
            _ = slot.evicted() => {
                // Chosen while idle, but a request may have begun since: it is answered, then the connection
                // closes. An idle one closes now.
                if slot.is_busy() {
                    conn.as_mut().graceful_shutdown();
                    let _ = conn.as_mut().await;
                }
                return;
            }
            _ = tokio::time::sleep(check) => match slot.idle_for() {
                Some(idle) if idle >= timeout => {
                    slot.listener().header_timed_out();
                    return;
                }
                Some(idle) => check = timeout - idle,
                None => check = timeout,
            },
        }
    }
}
