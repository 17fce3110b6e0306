//! RequestMirror: a copy of a request sent to another backend, its answer thrown away. The client's request never
//! waits for the copy: its body is passed on to the mirror as it goes by, and a mirror that cannot keep up loses its
//! copy (its request fails) rather than slow the client's.

use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};

use bytes::Bytes;
use http_body_util::BodyExt;
use hyper::body::{Body, Frame, SizeHint};
use hyper::Request;
use tokio::sync::mpsc;

use crate::gateway::RouteBackend;
use crate::http::Client;
use crate::BoxError;

/// Frames a mirror may be behind the client's request before it loses its copy.
const LAG: usize = 64;
/// Copies on their way to one mirror at once; beyond, a request is not copied (a slow mirror cannot pile them up).
const IN_FLIGHT: usize = 256;

/// Where a rule's requests are copied to, and what share of them.
pub struct Mirror {
    pub backend: RouteBackend,
    pub numerator: u32,
    pub denominator: u32,
    taken: AtomicU64,
    in_flight: Arc<std::sync::atomic::AtomicUsize>,
}

impl Mirror {
    pub fn new(backend: RouteBackend, numerator: u32, denominator: u32) -> Mirror {
        Mirror {
            backend,
            numerator,
            denominator: denominator.max(1),
            taken: AtomicU64::new(0),
            in_flight: Arc::default(),
        }
    }

    /// Whether this request is copied: exactly `numerator` of every `denominator`, spread through them.
    pub(crate) fn chosen(&self) -> bool {
        let (k, d) = (u64::from(self.numerator.min(self.denominator)), u64::from(self.denominator));
        let n = self.taken.fetch_add(1, Ordering::Relaxed) % d;
        (n + 1) * k / d > n * k / d && self.in_flight.load(Ordering::Relaxed) < IN_FLIGHT
    }
}

/// A copy of a request body, fed by the [`Tee`] on the client's.
pub(crate) struct Copy {
    rx: mpsc::Receiver<Bytes>,
    /// The client's body failed, or this copy fell behind: the copy fails rather than end early.
    lost: Arc<AtomicBool>,
}

impl Body for Copy {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        match self.rx.poll_recv(cx) {
            Poll::Ready(Some(data)) => Poll::Ready(Some(Ok(Frame::data(data)))),
            Poll::Ready(None) if self.lost.load(Ordering::Acquire) => {
                Poll::Ready(Some(Err("the mirrored body was not copied whole".into())))
            }
            Poll::Ready(None) => Poll::Ready(None),
            Poll::Pending => Poll::Pending,
        }
    }
}

/// The client's request body, copying each piece of data to the mirrors that keep up.
pub(crate) struct Tee<B> {
    inner: B,
    copies: Vec<(mpsc::Sender<Bytes>, Arc<AtomicBool>)>,
    ended: bool,
}

impl<B> Tee<B> {
    /// The tee and one copy per mirror.
    pub(crate) fn new(inner: B, mirrors: usize) -> (Tee<B>, Vec<Copy>) {
        let (copies, bodies) = (0..mirrors)
            .map(|_| {
                let (tx, rx) = mpsc::channel(LAG);
                let lost = Arc::new(AtomicBool::new(false));
                ((tx, lost.clone()), Copy { rx, lost })
            })
            .unzip();
        (Tee { inner, copies, ended: false }, bodies)
    }

    fn lose_all(&mut self) {
        for (_, lost) in self.copies.drain(..) {
            lost.store(true, Ordering::Release);
        }
    }
}

impl<B> Drop for Tee<B> {
    fn drop(&mut self) {
        if !self.ended {
            self.lose_all();
        }
    }
}

impl<B> Body for Tee<B>
where
    B: Body<Data = Bytes> + Unpin,
    B::Error: Into<BoxError>,
{
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let this = self.get_mut();
        match Pin::new(&mut this.inner).poll_frame(cx) {
            Poll::Ready(Some(Ok(frame))) => {
                if let Some(data) = frame.data_ref() {
                    this.copies.retain(|(tx, lost)| match tx.try_send(data.clone()) {
                        Ok(()) => true,
                        Err(_) => {
                            lost.store(true, Ordering::Release);
                            false
                        }
                    });
                }
                if this.inner.is_end_stream() {
                    this.ended = true;
                    this.copies.clear();
                }
                Poll::Ready(Some(Ok(frame)))
            }
            Poll::Ready(Some(Err(e))) => {
                this.lose_all();
                Poll::Ready(Some(Err(e.into())))
            }
            Poll::Ready(None) => {
                this.ended = true;
                this.copies.clear();
                Poll::Ready(None)
            }
            Poll::Pending => Poll::Pending,
        }
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

/// Sends `req` (a copy) to the mirror's backend and reads its answer to the end, in a task of its own.
pub(crate) fn send<B>(mirror: &Mirror, req: Request<B>, client: Client)
where
    B: Body<Data = Bytes> + Send + Sync + Unpin + 'static,
    B::Error: Into<BoxError>,
{
    let Some(entry) = mirror.backend.entry.get().cloned().filter(|_| mirror.backend.port.is_ok()) else { return };
    let in_flight = mirror.in_flight.clone();
    in_flight.fetch_add(1, Ordering::Relaxed);
    tokio::spawn(async move {
        let answer = crate::http::handle(entry, req, client).await;
        // Read to its end (so the connection may serve again) and dropped as it comes.
        let mut body = answer.into_body();
        while let Some(Ok(_)) = body.frame().await {}
        in_flight.fetch_sub(1, Ordering::Relaxed);
    });
}

#[cfg(test)]
mod tests {
    use super::*;
    use capstan_model::ObjectKey;

    #[test]
    fn a_share_is_taken_exactly_and_spread() {
        let m = Mirror::new(RouteBackend::new(ObjectKey::new("App", "default", "shadow"), Ok("http".into()), 1), 1, 4);
        let picks: Vec<bool> = (0..8).map(|_| m.chosen()).collect();
        assert_eq!(picks, [false, false, false, true, false, false, false, true]);
        let all =
            Mirror::new(RouteBackend::new(ObjectKey::new("App", "default", "shadow"), Ok("http".into()), 1), 100, 100);
        assert!((0..10).all(|_| all.chosen()));
        let none =
            Mirror::new(RouteBackend::new(ObjectKey::new("App", "default", "shadow"), Ok("http".into()), 1), 0, 100);
        assert!((0..10).all(|_| !none.chosen()));
        let third =
            Mirror::new(RouteBackend::new(ObjectKey::new("App", "default", "shadow"), Ok("http".into()), 1), 1, 3);
        assert_eq!((0..300).filter(|_| third.chosen()).count(), 100);
    }

    /// A body of these chunks (made of a copy fed by hand).
    fn chunks(parts: &[&str]) -> Copy {
        let (tx, rx) = mpsc::channel(8);
        for p in parts {
            tx.try_send(Bytes::from(p.to_string())).expect("room");
        }
        Copy { rx, lost: Arc::new(AtomicBool::new(false)) }
    }

    #[tokio::test]
    async fn a_copy_gets_the_whole_body_or_fails() {
        let (tee, mut copies) = Tee::new(chunks(&["he", "llo"]), 2);
        let client = tee.collect().await.expect("the client's body").to_bytes();
        assert_eq!(&client[..], b"hello");
        for copy in copies.drain(..) {
            assert_eq!(&copy.collect().await.expect("the copy").to_bytes()[..], b"hello");
        }
        // The client's body dropped half-way: the copy fails instead of ending short.
        let (mut tee, mut copies) = Tee::new(chunks(&["he", "llo"]), 1);
        let _ = tee.frame().await;
        drop(tee);
        assert!(copies.remove(0).collect().await.is_err());
        // A copy that falls behind loses its place; the client's body goes on.
        let many: Vec<String> = (0..LAG + 4).map(|i| i.to_string()).collect();
        let parts: Vec<&str> = many.iter().map(String::as_str).collect();
        let (tx, rx) = mpsc::channel(LAG + 8);
        for p in &parts {
            tx.try_send(Bytes::from(p.to_string())).expect("room");
        }
        drop(tx);
        let (tee, mut copies) = Tee::new(Copy { rx, lost: Arc::new(AtomicBool::new(false)) }, 1);
        assert_eq!(tee.collect().await.expect("the client's body").to_bytes().len(), parts.concat().len());
        assert!(copies.remove(0).collect().await.is_err(), "the copy fell behind and failed");
    }
}
