//! Runs an HTTP/2 connection's streams on the connection's own task, not a task each.
//!
//! hyper hands every HTTP/2 stream to an executor; `tokio::spawn` makes a task of it, and each of those tasks, once
//! queued, may wake the other worker thread to steal it — a context switch for a few microseconds of work. Here the
//! streams are polled by the task that drives the connection, and a wake that comes while that task is already
//! polling (the connection accepting a stream, a stream's answer to be written) is turned into one more turn of the
//! same poll instead of a new scheduling: the frames of every stream ready in a turn go out together.

use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll, Wake, Waker};

use futures_util::future::BoxFuture;
use futures_util::stream::{FuturesUnordered, StreamExt};
use futures_util::task::AtomicWaker;
use tokio::io::AsyncWrite;

/// Turns of one poll before the task gives its worker back (the runtime's fairness).
const TURNS: usize = 16;

/// The executor hyper is given: it queues each stream for the connection's task.
#[derive(Clone, Default)]
pub struct StreamQueue {
    new: Arc<Mutex<Vec<BoxFuture<'static, ()>>>>,
}

impl<F> hyper::rt::Executor<F> for StreamQueue
where
    F: Future<Output = ()> + Send + 'static,
{
    fn execute(&self, fut: F) {
        // hyper calls this from within the connection's poll, on the connection's task: the task's next turn
        // (below) takes the stream, so no wake is needed.
        self.new.lock().unwrap_or_else(|p| p.into_inner()).push(Box::pin(fut));
    }
}

/// The task's waker, seen by the connection and its streams: a wake while the task polls asks for another turn.
#[derive(Default)]
struct TurnWaker {
    polling: AtomicBool,
    again: AtomicBool,
    task: AtomicWaker,
}

impl Wake for TurnWaker {
    fn wake(self: Arc<Self>) {
        self.wake_by_ref();
    }

    fn wake_by_ref(self: &Arc<Self>) {
        // `again` first: a poll that has just stopped polling sees it (it looks after clearing `polling`).
        self.again.store(true, Ordering::SeqCst);
        if !self.polling.load(Ordering::SeqCst) {
            self.task.wake();
        }
    }
}

/// A hyper HTTP/2 server connection together with its streams: done when the connection is.
pub struct WithStreams<C> {
    conn: Pin<Box<C>>,
    queue: StreamQueue,
    streams: FuturesUnordered<BoxFuture<'static, ()>>,
    turn: Arc<TurnWaker>,
    waker: Waker,
    round: Round,
}

impl<C> WithStreams<C> {
    /// `conn` must have been built with `queue` as its executor, over a `Rounds` writer counting `round`.
    pub fn new(conn: C, queue: StreamQueue, round: Round) -> Self {
        let turn = Arc::new(TurnWaker::default());
        let waker = Waker::from(turn.clone());
        WithStreams { conn: Box::pin(conn), queue, streams: FuturesUnordered::new(), turn, waker, round }
    }

    /// Streams being answered.
    #[cfg(test)]
    fn streams(&self) -> usize {
        self.streams.len()
    }
}

impl<I, S, B> WithStreams<hyper::server::conn::http2::Connection<I, S, StreamQueue>>
where
    S: hyper::service::HttpService<hyper::body::Incoming, ResBody = B>,
    S::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
    I: hyper::rt::Read + hyper::rt::Write + Unpin,
    B: hyper::body::Body + 'static,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
    StreamQueue: hyper::rt::bounds::Http2ServerConnExec<S::Future, B>,
{
    /// Sends GOAWAY; the connection ends once its open streams are answered (keep polling it).
    pub fn graceful_shutdown(self: Pin<&mut Self>) {
        self.get_mut().conn.as_mut().graceful_shutdown();
    }
}

impl<C, T> Future for WithStreams<C>
where
    C: Future<Output = T>,
{
    type Output = T;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<T> {
        // Every field is Unpin (the connection is boxed).
        let this = self.get_mut();
        this.round.0.fetch_add(1, Ordering::Relaxed);
        this.turn.task.register(cx.waker());
        this.turn.polling.store(true, Ordering::SeqCst);
        let mut inner = Context::from_waker(&this.waker);
        for _ in 0..TURNS {
            this.turn.again.store(false, Ordering::SeqCst);
            let done = this.conn.as_mut().poll(&mut inner);
            let new = std::mem::take(&mut *this.queue.new.lock().unwrap_or_else(|p| p.into_inner()));
            for s in new {
                this.streams.push(s);
            }
            while let Poll::Ready(Some(())) = this.streams.poll_next_unpin(&mut inner) {}
            if let Poll::Ready(out) = done {
                // The connection is over (hyper finishes it once its streams are closed): what is left of a
                // stream's future has no one to answer.
                this.turn.polling.store(false, Ordering::SeqCst);
                this.streams.clear();
                return Poll::Ready(out);
            }
            if !this.turn.again.load(Ordering::SeqCst) {
                this.turn.polling.store(false, Ordering::SeqCst);
                // A wake between the look above and `polling` cleared did not reach the task: take it here.
                if !this.turn.again.load(Ordering::SeqCst) {
                    return Poll::Pending;
                }
                this.turn.polling.store(true, Ordering::SeqCst);
            }
        }
        // Still busy after its turns: it gives the worker back (a wake deferred until the worker's other ready tasks
        // have run, not one that would poll it again at once), and comes again.
        this.turn.polling.store(false, Ordering::SeqCst);
        let _ = std::pin::pin!(tokio::task::yield_now()).poll(cx);
        Poll::Pending
    }
}

/// Counts the polls of a connection's task, for its writer to tell one poll from the next.
#[derive(Clone, Default)]
pub struct Round(Arc<AtomicU32>);

/// Bytes kept before a write goes out without waiting for the flush (a TLS record holds 16 KiB).
const KEEP: usize = 32 * 1024;

/// The buffer's room kept between writes; a larger one is given back (an idle connection should not hold it).
const RETAIN: usize = 4 * 1024;

/// A writer that keeps what it is given until a flush in a later poll of its task than the first flush that found
/// it (see the module's notes), or until it holds `KEEP` bytes.
pub struct Rounds<T> {
    inner: T,
    buf: Vec<u8>,
    /// Bytes of `buf` already written.
    sent: usize,
    round: Round,
    /// The poll whose flush was put off, while one is.
    owed: Option<u32>,
}

impl<T> Rounds<T> {
    pub fn new(inner: T, round: Round) -> Self {
        Rounds { inner, buf: Vec::new(), sent: 0, round, owed: None }
    }
}

impl<T: AsyncWrite + Unpin> Rounds<T> {
    /// Writes out everything kept.
    fn poll_drain(&mut self, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        while self.sent < self.buf.len() {
            match Pin::new(&mut self.inner).poll_write(cx, &self.buf[self.sent..]) {
                Poll::Ready(Ok(0)) => return Poll::Ready(Err(std::io::ErrorKind::WriteZero.into())),
                Poll::Ready(Ok(n)) => self.sent += n,
                Poll::Ready(Err(e)) => return Poll::Ready(Err(e)),
                Poll::Pending => return Poll::Pending,
            }
        }
        if self.buf.capacity() > RETAIN {
            self.buf = Vec::new();
        } else {
            self.buf.clear();
        }
        self.sent = 0;
        self.owed = None;
        Poll::Ready(Ok(()))
    }

    /// Room for `n` more bytes: writes out what is kept first when they would not fit.
    fn poll_room(&mut self, cx: &mut Context<'_>, n: usize) -> Poll<std::io::Result<()>> {
        if self.buf.len() + n > KEEP && !self.buf.is_empty() {
            return self.poll_drain(cx);
        }
        Poll::Ready(Ok(()))
    }
}

impl<T: tokio::io::AsyncRead + Unpin> tokio::io::AsyncRead for Rounds<T> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut tokio::io::ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_read(cx, buf)
    }
}

impl<T: AsyncWrite + Unpin> AsyncWrite for Rounds<T> {
    fn poll_write(self: Pin<&mut Self>, cx: &mut Context<'_>, data: &[u8]) -> Poll<std::io::Result<usize>> {
        let this = self.get_mut();
        std::task::ready!(this.poll_room(cx, data.len()))?;
        if this.buf.is_empty() && data.len() >= KEEP {
            return Pin::new(&mut this.inner).poll_write(cx, data);
        }
        this.buf.extend_from_slice(data);
        Poll::Ready(Ok(data.len()))
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        let this = self.get_mut();
        let total: usize = bufs.iter().map(|b| b.len()).sum();
        std::task::ready!(this.poll_room(cx, total))?;
        if this.buf.is_empty() && total >= KEEP {
            return Pin::new(&mut this.inner).poll_write_vectored(cx, bufs);
        }
        for b in bufs {
            this.buf.extend_from_slice(b);
        }
        Poll::Ready(Ok(total))
    }

    fn is_write_vectored(&self) -> bool {
        // Taken in one copy either way: h2 need not copy small DATA frames into its own buffer first.
        true
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        let this = self.get_mut();
        if this.buf.is_empty() {
            return Pin::new(&mut this.inner).poll_flush(cx);
        }
        let now = this.round.0.load(Ordering::Relaxed);
        match this.owed {
            // Put off: the task comes again once the worker has no other ready task, and writes then.
            None => {
                this.owed = Some(now);
                let _ = std::pin::pin!(tokio::task::yield_now()).poll(cx);
                Poll::Ready(Ok(()))
            }
            // Put off again in the same poll: the deferred wake is asked for again (the same waker twice is one wake),
            // so that a wake the runtime gave at once — outside a worker — does not leave the bytes unwritten.
            Some(r) if r == now => {
                let _ = std::pin::pin!(tokio::task::yield_now()).poll(cx);
                Poll::Ready(Ok(()))
            }
            Some(_) => {
                std::task::ready!(this.poll_drain(cx))?;
                Pin::new(&mut this.inner).poll_flush(cx)
            }
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        let this = self.get_mut();
        std::task::ready!(this.poll_drain(cx))?;
        Pin::new(&mut this.inner).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use hyper::rt::Executor;
    use std::sync::atomic::AtomicUsize;

    /// A connection stand-in: queues `n` streams at its first poll, each done after being woken once from another
    /// thread, and finishes when told.
    struct FakeConn {
        queue: StreamQueue,
        spawned: bool,
        n: usize,
        done: Arc<AtomicBool>,
        waker: Arc<Mutex<Option<Waker>>>,
        finished: Arc<AtomicUsize>,
    }

    impl Future for FakeConn {
        type Output = &'static str;
        fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<&'static str> {
            if !self.spawned {
                self.spawned = true;
                for _ in 0..self.n {
                    let finished = self.finished.clone();
                    self.queue.execute(async move {
                        let (tx, rx) = tokio::sync::oneshot::channel::<()>();
                        std::thread::spawn(move || {
                            std::thread::sleep(std::time::Duration::from_millis(5));
                            let _ = tx.send(());
                        });
                        let _ = rx.await;
                        finished.fetch_add(1, Ordering::SeqCst);
                    });
                }
            }
            if self.done.load(Ordering::SeqCst) {
                return Poll::Ready("closed");
            }
            // Woken when told to finish.
            *self.waker.lock().unwrap() = Some(cx.waker().clone());
            Poll::Pending
        }
    }

    fn poll_once<F: Future + Unpin>(f: &mut F) -> Poll<F::Output> {
        let waker = Waker::noop();
        Pin::new(f).poll(&mut Context::from_waker(waker))
    }

    #[test]
    fn a_flush_waits_for_the_next_poll_of_its_task() {
        use tokio::io::AsyncWriteExt;
        let round = Round::default();
        let mut w = Rounds::new(Vec::new(), round.clone());
        assert!(poll_once(&mut Box::pin(w.write_all(b"one"))).is_ready());
        assert!(poll_once(&mut Box::pin(w.flush())).is_ready(), "the first flush is put off, not refused");
        assert!(w.inner.is_empty(), "nothing written in the poll that first flushed");
        assert!(poll_once(&mut Box::pin(w.write_all(b" two"))).is_ready());
        assert!(poll_once(&mut Box::pin(w.flush())).is_ready());
        assert!(w.inner.is_empty(), "a second flush in the same poll is put off too");
        round.0.fetch_add(1, Ordering::Relaxed);
        assert!(poll_once(&mut Box::pin(w.flush())).is_ready());
        assert_eq!(w.inner, b"one two", "the next poll's flush writes both, in one write");
        assert!(w.buf.is_empty() && w.owed.is_none());
    }

    #[test]
    fn a_full_buffer_and_a_shutdown_write_without_waiting() {
        use tokio::io::AsyncWriteExt;
        let mut w = Rounds::new(Vec::new(), Round::default());
        let big = vec![7u8; KEEP - 10];
        assert!(poll_once(&mut Box::pin(w.write_all(&big))).is_ready());
        assert!(w.inner.is_empty());
        assert!(poll_once(&mut Box::pin(w.write_all(&[8u8; 20]))).is_ready());
        assert_eq!(w.inner.len(), KEEP - 10, "what was kept went out to make room");
        assert_eq!(w.buf.len(), 20);
        assert!(poll_once(&mut Box::pin(w.write_all(&vec![9u8; KEEP]))).is_ready());
        assert_eq!(w.inner.len(), 2 * KEEP + 10, "a write as large as the buffer goes out after what was kept");
        assert!(w.buf.is_empty());
        assert!(poll_once(&mut Box::pin(w.write_all(b"end"))).is_ready());
        assert!(poll_once(&mut Box::pin(w.shutdown())).is_ready());
        assert!(w.inner.ends_with(b"end"), "a shutdown writes what is kept first");
        assert_eq!(w.inner.len(), 2 * KEEP + 13);
    }

    #[tokio::test]
    async fn streams_run_on_the_connections_task_and_end_with_it() {
        let queue = StreamQueue::default();
        let done = Arc::new(AtomicBool::new(false));
        let finished = Arc::new(AtomicUsize::new(0));
        let waker = Arc::new(Mutex::new(None::<Waker>));
        let conn = FakeConn {
            queue: queue.clone(),
            spawned: false,
            n: 20,
            done: done.clone(),
            waker: waker.clone(),
            finished: finished.clone(),
        };
        let mut with = WithStreams::new(conn, queue, Round::default());
        // The streams are woken from other threads, and nothing else polls this task: a lost wake would hang.
        let all = tokio::time::timeout(
            std::time::Duration::from_secs(10),
            std::future::poll_fn(|cx| {
                if let Poll::Ready(out) = Pin::new(&mut with).poll(cx) {
                    panic!("the connection was not told to finish, but it did: {out}");
                }
                if finished.load(Ordering::SeqCst) == 20 {
                    Poll::Ready(())
                } else {
                    Poll::Pending
                }
            }),
        )
        .await;
        assert!(all.is_ok(), "only {} of 20 streams finished", finished.load(Ordering::SeqCst));
        assert_eq!(with.streams(), 0, "finished streams are dropped from the set");
        done.store(true, Ordering::SeqCst);
        let w = waker.lock().unwrap().take().expect("the connection left its waker");
        std::thread::spawn(move || w.wake()).join().unwrap();
        assert_eq!(with.await, "closed");
    }
}
