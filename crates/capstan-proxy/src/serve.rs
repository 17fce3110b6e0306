//! Serving one admitted HTTP/1 connection: the header-read timeout, requests counted busy until their response
//! body is written, and the connection dropped when the gate evicts it.

use std::pin::Pin;
use std::task::{Context, Poll};

use hyper::body::{Body, Frame, Incoming, SizeHint};
use hyper::server::conn::http1;
use hyper::service::Service;
use hyper::{Request, Response};
use hyper_util::rt::{TokioIo, TokioTimer};

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

/// Serves `stream` with `service` until the client closes it, its headers time out, or the gate evicts it.
pub async fn serve_http<S, B>(stream: tokio::net::TcpStream, admitted: Admitted, service: S)
where
    S: Service<Request<Incoming>, Response = Response<B>> + Clone + Send + 'static,
    S::Future: Send + 'static,
    S::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
    B: Body + Unpin + Send + 'static,
    B::Data: Send,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    let _ = stream.set_nodelay(true);
    let timeout = admitted.listener().gate().header_timeout();
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
    let conn = http1::Builder::new()
        .timer(TokioTimer::new())
        .header_read_timeout(timeout)
        .keep_alive(true)
        .serve_connection(TokioIo::new(stream), svc)
        .with_upgrades();
    tokio::select! {
        r = conn => {
            if r.as_ref().is_err_and(|e| e.is_timeout()) {
                slot.listener().header_timed_out();
            }
        }
        _ = slot.evicted() => {}
    }
}
