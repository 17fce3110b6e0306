//! Admission of client connections on every listener: a cap per listener, a budget for the process below its
//! file-descriptor limit, the longest-idle connection closed to make room, and an accept loop that backs off.
//!
//! A connection is *idle* while no request of it is being answered (no handler running, no response body
//! streaming): between keep-alive requests, before its first byte, or while it trickles a header in. When a
//! listener is at its cap (or the process at its budget), the connection that has been idle longest is closed to
//! make room — but never one idle for less than a grace (a tenth of the header timeout, at most 100 ms: it has had
//! no time to send its request); when none is idle past its grace, the new connection is answered `503` and closed.
//! So connections that send nothing cannot lock out clients that do unless they are opened faster than the cap every
//! 100 ms, and whatever the clients do, the fds kept in reserve remain for probes, supervision, logs and the store.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use crate::metrics::{ListenerLabels, Metrics, RefusedLabels};

/// How long a client may take to send a request's headers, and how long a connection may wait for its next
/// request (nginx's `client_header_timeout`, HAProxy's `timeout http-request`).
pub const DEFAULT_HEADER_TIMEOUT: Duration = Duration::from_secs(15);
/// Connections the API listener holds at once.
pub const DEFAULT_API_MAX_CONNECTIONS: usize = 1024;

pub(crate) fn now_ms() -> u64 {
    static EPOCH: OnceLock<Instant> = OnceLock::new();
    EPOCH.get_or_init(Instant::now).elapsed().as_millis() as u64
}

/// Raises the soft limit on open files to the hard limit and returns it (the limit in force if that fails).
pub fn raise_fd_limit() -> u64 {
    use nix::sys::resource::{getrlimit, setrlimit, Resource};
    match getrlimit(Resource::RLIMIT_NOFILE) {
        Ok((soft, hard)) if soft < hard => match setrlimit(Resource::RLIMIT_NOFILE, hard, hard) {
            Ok(()) => hard,
            Err(e) => {
                tracing::warn!("cannot raise the open-file limit from {soft} to {hard}: {e}");
                soft
            }
        },
        Ok((soft, _)) => soft,
        Err(e) => {
            tracing::warn!("cannot read the open-file limit: {e}");
            1024
        }
    }
}

/// Client connections a process with `fd_limit` open files may hold: a reserve of a tenth (256 to 4,096) is
/// kept for everything else, and what is left is halved because each proxied connection may hold one upstream.
pub fn connection_budget(fd_limit: u64) -> usize {
    let reserve = (fd_limit / 10).clamp(256, 4096);
    (fd_limit.saturating_sub(reserve) / 2).max(16) as usize
}

/// Why a connection was not admitted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    /// The listener holds its cap of connections and none of them has been idle past its grace.
    ListenerFull(usize),
    /// The process holds its budget of connections and none of them has been idle past its grace.
    BudgetFull(usize),
    /// Half the budget is held by tunnels (TCP and websockets), which are never closed for room.
    Tunnels(usize),
}

impl Refusal {
    fn reason(self) -> &'static str {
        match self {
            Refusal::ListenerFull(_) => "listener_cap",
            Refusal::BudgetFull(_) => "process_budget",
            Refusal::Tunnels(_) => "tunnel_share",
        }
    }
}

/// One admitted connection as the gate sees it.
struct Slot {
    listener: u64,
    /// Closing it frees a slot without harm (false for TCP tunnels, whose quiet is not idleness).
    evictable: bool,
    /// Requests being answered; the connection is idle at zero.
    busy: AtomicUsize,
    /// When it last became idle, in ms of the process clock.
    idle_since: AtomicU64,
    evicted: AtomicBool,
    evict: tokio::sync::Notify,
    /// Counted among the tunnels.
    pinned: AtomicBool,
}

/// The connections of the whole process.
pub struct Gate {
    budget: usize,
    header_timeout: Duration,
    open: AtomicUsize,
    /// Connections that are tunnels (never closed for room): at most half the budget, so that they cannot lock
    /// out everyone else.
    pinned: AtomicUsize,
    /// HTTP/2 streams beyond the first of their connection: each may hold an upstream connection as a connection
    /// does, so they share the budget with connections.
    streams: AtomicUsize,
    slots: Mutex<HashMap<u64, Arc<Slot>>>,
    next: AtomicU64,
    metrics: Arc<Metrics>,
    /// Refused connections being answered, each waiting for its request (see [`refuse_http`]).
    lingering: AtomicUsize,
}

impl Gate {
    /// A gate holding at most `budget` connections across its listeners.
    pub fn new(budget: usize, header_timeout: Duration, metrics: Arc<Metrics>) -> Arc<Gate> {
        Arc::new(Gate {
            budget: budget.max(1),
            header_timeout,
            open: AtomicUsize::new(0),
            pinned: AtomicUsize::new(0),
            streams: AtomicUsize::new(0),
            slots: Mutex::new(HashMap::new()),
            next: AtomicU64::new(1),
            metrics,
            lingering: AtomicUsize::new(0),
        })
    }

    /// How long a client may take to send a request's headers (and a connection may wait for its next request).
    pub fn header_timeout(&self) -> Duration {
        self.header_timeout
    }

    /// How long a client may read nothing of a response before its connection is closed: four header timeouts
    /// (60 s by default, nginx's `send_timeout`).
    pub fn send_timeout(&self) -> Duration {
        self.header_timeout * 4
    }

    /// How long a connection must have been idle before it may be closed for room: a tenth of the header timeout,
    /// at most 100 ms (long enough for a client's request to follow its connection, short enough that locking a
    /// listener out takes opening its cap of connections every 100 ms).
    fn grace_ms(&self) -> u64 {
        (self.header_timeout / 10).min(Duration::from_millis(100)).as_millis() as u64
    }

    /// Connections the process may hold.
    pub fn budget(&self) -> usize {
        self.budget
    }

    /// Connections held now.
    pub fn open(&self) -> usize {
        self.open.load(Ordering::Relaxed)
    }

    /// The most tunnels held at once: half the budget.
    pub fn tunnel_limit(&self) -> usize {
        (self.budget / 2).max(1)
    }

    /// Counts one more tunnel, if there is room for it.
    fn pin(&self) -> bool {
        self.pinned
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| (n < self.tunnel_limit()).then_some(n + 1))
            .is_ok()
    }

    /// A listener of this gate, holding at most `cap` connections.
    pub fn listener(self: &Arc<Self>, name: &str, cap: usize) -> Arc<ListenerGate> {
        Arc::new(ListenerGate {
            id: self.next.fetch_add(1, Ordering::Relaxed),
            cap: AtomicUsize::new(cap.max(1)),
            open: AtomicUsize::new(0),
            gate: self.clone(),
            labels: ListenerLabels { listener: name.to_string() },
            refused_since_log: AtomicU64::new(0),
            last_log: Mutex::new(None),
        })
    }

    /// Closes the connection idle longest (of one listener, or of any): false when none is idle.
    fn evict(&self, listener: Option<u64>) -> bool {
        let now = now_ms();
        let slots = self.slots.lock().unwrap_or_else(|p| p.into_inner());
        let victim = slots
            .values()
            .filter(|s| s.evictable && listener.is_none_or(|l| s.listener == l))
            .filter(|s| s.busy.load(Ordering::Acquire) == 0 && !s.evicted.load(Ordering::Relaxed))
            // One that has just connected (or just been answered) has had no time to send its request: closing it
            // would drop a request in flight. When every idle one is that young, the newcomer is refused instead.
            .filter(|s| now.saturating_sub(s.idle_since.load(Ordering::Relaxed)) >= self.grace_ms())
            .min_by_key(|s| s.idle_since.load(Ordering::Relaxed));
        match victim {
            Some(s) => {
                s.evicted.store(true, Ordering::Relaxed);
                s.evict.notify_one();
                true
            }
            None => false,
        }
    }
}

/// One listener's share of the gate.
pub struct ListenerGate {
    id: u64,
    cap: AtomicUsize,
    open: AtomicUsize,
    gate: Arc<Gate>,
    labels: ListenerLabels,
    refused_since_log: AtomicU64,
    last_log: Mutex<Option<Instant>>,
}

impl ListenerGate {
    /// Changes the cap; connections above a lowered cap are not closed, new ones wait for room.
    pub fn set_cap(&self, cap: usize) {
        self.cap.store(cap.max(1), Ordering::Relaxed);
    }

    /// Connections this listener holds now.
    pub fn open(&self) -> usize {
        self.open.load(Ordering::Relaxed)
    }

    /// The gate this listener belongs to.
    pub fn gate(&self) -> &Arc<Gate> {
        &self.gate
    }

    /// Admits a new connection, closing the longest-idle one when the listener or the process is full.
    /// `evictable` is false for connections whose quiet is not idleness (TCP tunnels).
    pub fn admit(self: &Arc<Self>, evictable: bool) -> Result<Admitted, Refusal> {
        let cap = self.cap.load(Ordering::Relaxed);
        let gate = &self.gate;
        let full = if !evictable && gate.pinned.load(Ordering::Acquire) >= gate.tunnel_limit() {
            Some((None, Refusal::Tunnels(gate.tunnel_limit())))
        } else if self.open.load(Ordering::Relaxed) >= cap {
            Some((Some(self.id), Refusal::ListenerFull(cap)))
        } else if gate.open.load(Ordering::Relaxed) + gate.streams.load(Ordering::Relaxed) >= gate.budget {
            Some((None, Refusal::BudgetFull(gate.budget)))
        } else {
            None
        };
        if let Some((scope, refusal)) = full {
            if !matches!(refusal, Refusal::Tunnels(_)) && gate.evict(scope) {
                gate.metrics.connections_evicted.get_or_create(&self.labels).inc();
                self.note(refusal, "closed the longest-idle connection to make room");
            } else {
                gate.metrics
                    .connections_refused
                    .get_or_create(&RefusedLabels {
                        listener: self.labels.listener.clone(),
                        reason: refusal.reason().into(),
                    })
                    .inc();
                self.refused_since_log.fetch_add(1, Ordering::Relaxed);
                self.note(refusal, "refusing new connections (none is idle, or only just)");
                return Err(refusal);
            }
        }
        let id = gate.next.fetch_add(1, Ordering::Relaxed);
        let slot = Arc::new(Slot {
            listener: self.id,
            evictable,
            busy: AtomicUsize::new(0),
            idle_since: AtomicU64::new(now_ms()),
            evicted: AtomicBool::new(false),
            evict: tokio::sync::Notify::new(),
            pinned: AtomicBool::new(false),
        });
        if !evictable {
            if !gate.pin() {
                return Err(Refusal::Tunnels(gate.tunnel_limit()));
            }
            slot.pinned.store(true, Ordering::Relaxed);
        }
        gate.slots.lock().unwrap_or_else(|p| p.into_inner()).insert(id, slot.clone());
        self.open.fetch_add(1, Ordering::Relaxed);
        gate.open.fetch_add(1, Ordering::Relaxed);
        gate.metrics.connections.get_or_create(&self.labels).inc();
        Ok(Admitted { id, slot, listener: self.clone() })
    }

    /// Counts a request header that did not arrive in time.
    pub fn header_timed_out(&self) {
        self.gate.metrics.header_timeouts.get_or_create(&self.labels).inc();
    }

    /// Logs that the listener is full, at most once every 10 s.
    fn note(&self, refusal: Refusal, what: &str) {
        let mut last = self.last_log.lock().unwrap_or_else(|p| p.into_inner());
        if last.is_some_and(|t| t.elapsed() < Duration::from_secs(10)) {
            return;
        }
        *last = Some(Instant::now());
        let refused = self.refused_since_log.swap(0, Ordering::Relaxed);
        let listener = &self.labels.listener;
        match refusal {
            Refusal::ListenerFull(cap) => {
                tracing::warn!(%listener, cap, refused, "listener {listener} holds its cap of {cap} connections: {what}")
            }
            Refusal::Tunnels(limit) => tracing::warn!(
                %listener,
                limit,
                refused,
                "Capstan holds {limit} tunnels, half its connection budget: {what}"
            ),
            Refusal::BudgetFull(budget) => tracing::warn!(
                %listener,
                budget,
                refused,
                "Capstan holds its budget of {budget} client connections (set by the open-file limit): {what}"
            ),
        }
    }
}

/// An admitted connection; dropping it frees its place.
pub struct Admitted {
    id: u64,
    slot: Arc<Slot>,
    listener: Arc<ListenerGate>,
}

impl Admitted {
    /// Marks the connection busy until the returned guard is dropped.
    pub fn activity(&self) -> Activity {
        self.slot.busy.fetch_add(1, Ordering::AcqRel);
        Activity(self.slot.clone())
    }

    /// Resolves when the gate closes this connection to make room for another.
    pub async fn evicted(&self) {
        self.slot.evict.notified().await
    }

    /// Whether a request of this connection is being answered now.
    pub fn is_busy(&self) -> bool {
        self.slot.busy.load(Ordering::Acquire) > 0
    }

    /// How long the connection has been idle (no request being answered); None while one is.
    pub fn idle_for(&self) -> Option<Duration> {
        (!self.is_busy())
            .then(|| Duration::from_millis(now_ms().saturating_sub(self.slot.idle_since.load(Ordering::Relaxed))))
    }

    /// The listener the connection came in on.
    pub fn listener(&self) -> &Arc<ListenerGate> {
        &self.listener
    }
}

impl Drop for Admitted {
    fn drop(&mut self) {
        let l = &self.listener;
        l.gate.slots.lock().unwrap_or_else(|p| p.into_inner()).remove(&self.id);
        l.open.fetch_sub(1, Ordering::Relaxed);
        l.gate.open.fetch_sub(1, Ordering::Relaxed);
        if self.slot.pinned.load(Ordering::Relaxed) {
            l.gate.pinned.fetch_sub(1, Ordering::AcqRel);
        }
        l.gate.metrics.connections.get_or_create(&l.labels).dec();
    }
}

/// An admitted connection, as a request carries it in its extensions: a websocket tunnel that outlives the
/// HTTP connection it came from keeps its place counted (and busy) while it lives.
#[derive(Clone)]
pub struct Held(pub Arc<Admitted>);

impl Held {
    /// Counts the connection among the tunnels; false when half the budget is tunnels already.
    pub fn pin(&self) -> bool {
        let slot = &self.0.slot;
        if slot.pinned.load(Ordering::Relaxed) {
            return true;
        }
        if !self.0.listener.gate.pin() {
            return false;
        }
        slot.pinned.store(true, Ordering::Relaxed);
        true
    }
}

impl Held {
    /// For an HTTP/2 request: a place in the budget when another stream of its connection is being answered too
    /// (the first stream rides on the connection's own place), None when the budget is full. A request alone on
    /// its connection needs none: `Some(None)`.
    pub fn stream(&self) -> Option<Option<StreamPlace>> {
        if self.0.slot.busy.load(Ordering::Acquire) <= 1 {
            return Some(None);
        }
        let gate = self.0.listener.gate.clone();
        let taken = gate.streams.fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| {
            (gate.open.load(Ordering::Relaxed) + n < gate.budget).then_some(n + 1)
        });
        taken.ok().map(|_| Some(StreamPlace(gate)))
    }
}

/// The place in the budget of one HTTP/2 stream beyond its connection's first; freed when dropped.
pub struct StreamPlace(Arc<Gate>);

impl Drop for StreamPlace {
    fn drop(&mut self) {
        self.0.streams.fetch_sub(1, Ordering::AcqRel);
    }
}

/// A request being answered; its connection is idle again when the last one is dropped.
pub struct Activity(Arc<Slot>);

impl Drop for Activity {
    fn drop(&mut self) {
        self.0.idle_since.store(now_ms(), Ordering::Relaxed);
        self.0.busy.fetch_sub(1, Ordering::AcqRel);
    }
}

/// Waits between accepts that failed for lack of resources (fds, buffers), from 5 ms up to 1 s, so that a
/// full process does not spin on `accept` and fill its log.
#[derive(Debug, Default)]
pub struct AcceptBackoff {
    delay: Option<Duration>,
    last_log: Option<Instant>,
}

impl AcceptBackoff {
    /// True for errors that more accepting will not cure: the process or system is out of fds or memory.
    pub fn is_exhaustion(e: &std::io::Error) -> bool {
        use nix::libc::{EMFILE, ENFILE, ENOBUFS, ENOMEM};
        matches!(e.raw_os_error(), Some(EMFILE | ENFILE | ENOBUFS | ENOMEM))
    }

    /// Called after a successful accept.
    pub fn reset(&mut self) {
        self.delay = None;
    }

    /// How long to wait after `e`, logging at most once every 10 s. Errors that concern one connection only
    /// (it was reset before it was accepted) wait nothing.
    pub fn after(&mut self, listener: &str, e: &std::io::Error) -> Duration {
        if !Self::is_exhaustion(e) {
            tracing::debug!(%listener, "accept: {e}");
            return Duration::ZERO;
        }
        let next = self.delay.map_or(Duration::from_millis(5), |d| (d * 2).min(Duration::from_secs(1)));
        self.delay = Some(next);
        if self.last_log.is_none_or(|t| t.elapsed() >= Duration::from_secs(10)) {
            self.last_log = Some(Instant::now());
            tracing::warn!(%listener, "accept: {e}; waiting before accepting again (up to 1 s between tries)");
        }
        next
    }
}

/// The answer to a connection refused for lack of room, written with a deadline and then closed.
pub async fn refuse_http(mut stream: tokio::net::TcpStream, refusal: Refusal, gate: Arc<Gate>) {
    use tokio::io::AsyncWriteExt;
    let text = match refusal {
        Refusal::ListenerFull(cap) => format!("this listener holds its cap of {cap} connections; retry shortly\n"),
        Refusal::BudgetFull(_) => "Capstan holds as many connections as it may; retry shortly\n".to_string(),
        Refusal::Tunnels(_) => "Capstan holds as many tunnels as it may; retry shortly\n".to_string(),
    };
    let response = format!(
        "HTTP/1.1 503 Service Unavailable\r\ncontent-type: text/plain\r\nretry-after: 1\r\nconnection: close\r\n\
         content-length: {}\r\n\r\n{text}",
        text.len()
    );
    // A flood of refused connections must not hold a descriptor each for a second: past this many waiting at
    // once, the answer is written if the socket takes it at once and the connection closed.
    const MAX_LINGERING: usize = 64;
    let mut sink = [0u8; 4096];
    if gate.lingering.fetch_add(1, Ordering::AcqRel) >= MAX_LINGERING {
        gate.lingering.fetch_sub(1, Ordering::AcqRel);
        // What has arrived is read first: closing with unread data would reset the connection.
        let _ = stream.try_read(&mut sink);
        let _ = stream.try_write(response.as_bytes());
        return;
    }
    struct Leave(Arc<Gate>);
    impl Drop for Leave {
        fn drop(&mut self) {
            self.0.lingering.fetch_sub(1, Ordering::AcqRel);
        }
    }
    let _leave = Leave(gate);
    // Answered once the request has begun to arrive (up to 250 ms): an HTTP client takes an answer that comes
    // before its request for a broken connection. Then closed after reading what the client sent (up to a
    // second): closing with unread data would reset the connection, and the client could lose the answer.
    let _ = tokio::time::timeout(Duration::from_millis(250), stream.readable()).await;
    let _ = tokio::time::timeout(Duration::from_secs(1), async {
        let _ = stream.try_read(&mut sink);
        stream.write_all(response.as_bytes()).await?;
        stream.shutdown().await?;
        while tokio::io::AsyncReadExt::read(&mut stream, &mut sink).await? > 0 {}
        Ok::<_, std::io::Error>(())
    })
    .await;
}

#[cfg(test)]
mod tests {
    use super::*;

    fn gate(budget: usize) -> Arc<Gate> {
        // Idle connections may be closed for room after 100 ms.
        Gate::new(budget, Duration::from_secs(1), Arc::default())
    }

    #[test]
    fn the_budget_keeps_a_reserve_and_room_for_upstreams() {
        assert_eq!(connection_budget(1024), (1024 - 256) / 2);
        assert_eq!(connection_budget(20_000), (20_000 - 2_000) / 2);
        assert_eq!(connection_budget(1_048_576), (1_048_576 - 4_096) / 2);
        assert_eq!(connection_budget(100), 16);
    }

    #[tokio::test]
    async fn a_full_listener_closes_its_longest_idle_connection() {
        let g = gate(100);
        let l = g.listener("test", 2);
        let first = l.admit(true).unwrap();
        std::thread::sleep(Duration::from_millis(150));
        let second = l.admit(true).unwrap();
        let _busy = second.activity();
        let third = l.admit(true).expect("room is made by closing an idle connection");
        tokio::time::timeout(Duration::from_secs(1), first.evicted()).await.expect("the idle one is told to close");
        assert!(!second.slot.evicted.load(Ordering::Relaxed), "a busy connection is never evicted");
        assert_eq!(g.metrics.connections_evicted.get_or_create(&l.labels).get(), 1);
        assert_eq!(l.open(), 3, "the evicted connection counts until it has closed");
        drop(first);
        assert_eq!((l.open(), g.open()), (2, 2));
        drop(third);
        assert_eq!(l.open(), 1);
    }

    #[test]
    fn http2_streams_beyond_the_first_share_the_budget_with_connections() {
        let g = gate(3);
        let l = g.listener("test", 10);
        let a = Arc::new(l.admit(true).unwrap());
        let b = l.admit(true).unwrap();
        let _held_b = b.activity();
        let held = Held(a.clone());
        let _first = a.activity();
        assert!(matches!(held.stream(), Some(None)), "the first stream rides on its connection's place");
        let _second = a.activity();
        let place = held.stream().expect("room for one stream").expect("a place");
        let _third = a.activity();
        assert!(held.stream().is_none(), "two connections and one stream fill a budget of 3");
        assert_eq!(l.admit(true).err(), Some(Refusal::BudgetFull(3)), "streams count against new connections too");
        drop(place);
        assert!(held.stream().expect("room again").is_some());
    }

    #[test]
    fn a_full_listener_with_nothing_idle_refuses() {
        let g = gate(100);
        let l = g.listener("test", 1);
        let a = l.admit(true).unwrap();
        let _busy = a.activity();
        assert_eq!(l.admit(true).err(), Some(Refusal::ListenerFull(1)));
        let t = g.listener("tunnels", 1);
        let _tunnel = t.admit(false).unwrap();
        assert_eq!(t.admit(false).err(), Some(Refusal::ListenerFull(1)), "tunnels are never evicted");
        let labels = RefusedLabels { listener: "test".into(), reason: "listener_cap".into() };
        assert_eq!(g.metrics.connections_refused.get_or_create(&labels).get(), 1);
    }

    #[tokio::test]
    async fn the_connection_idle_longest_goes_first_and_tunnels_have_half_the_budget() {
        let g = gate(8);
        let l = g.listener("test", 3);
        let oldest = l.admit(true).unwrap();
        std::thread::sleep(Duration::from_millis(150));
        let newer = l.admit(true).unwrap();
        std::thread::sleep(Duration::from_millis(150));
        let newest = l.admit(true).unwrap();
        // The oldest was busy a moment ago, so it became idle last.
        drop(oldest.activity());
        let _fourth = l.admit(true).unwrap();
        tokio::time::timeout(Duration::from_secs(1), newer.evicted()).await.expect("idle longest: `newer`");
        assert!(!oldest.slot.evicted.load(Ordering::Relaxed) && !newest.slot.evicted.load(Ordering::Relaxed));
        // Tunnels: 4 of the 8.
        let t = g.listener("tcp", 100);
        let tunnels: Vec<Admitted> = (0..4).map(|_| t.admit(false).unwrap()).collect();
        assert_eq!(t.admit(false).err(), Some(Refusal::Tunnels(4)));
        std::thread::sleep(Duration::from_millis(150));
        assert!(!Held(Arc::new(l.admit(true).unwrap())).pin(), "a websocket counts among them too");
        drop(tunnels);
        assert!(Held(Arc::new(l.admit(true).unwrap())).pin());
    }

    #[test]
    fn the_process_budget_spans_listeners() {
        let g = gate(2);
        let (a, b) = (g.listener("a", 10), g.listener("b", 10));
        let held = [a.admit(true).unwrap(), a.admit(true).unwrap()];
        let busy: Vec<Activity> = held.iter().map(Admitted::activity).collect();
        assert_eq!(b.admit(true).err(), Some(Refusal::BudgetFull(2)), "both busy: nothing to close for room");
        drop(busy);
        drop(held);
        assert!(b.admit(true).is_ok(), "room again once connections close");
    }

    #[test]
    fn a_busy_connection_becomes_idle_when_its_last_request_ends() {
        let g = gate(10);
        let l = g.listener("test", 1);
        let a = l.admit(true).unwrap();
        let (r1, r2) = (a.activity(), a.activity());
        drop(r1);
        assert_eq!(l.admit(true).err(), Some(Refusal::ListenerFull(1)), "one request is still being answered");
        drop(r2);
        assert_eq!(
            l.admit(true).err(),
            Some(Refusal::ListenerFull(1)),
            "just answered: its next request may be coming"
        );
        std::thread::sleep(Duration::from_millis(150));
        assert!(l.admit(true).is_ok());
    }

    #[tokio::test]
    async fn a_connection_that_has_just_connected_is_not_closed_for_a_newer_one() {
        let g = gate(100);
        let l = g.listener("test", 1);
        let first = l.admit(true).unwrap();
        assert_eq!(l.admit(true).err(), Some(Refusal::ListenerFull(1)), "the newcomer is refused, not the first");
        assert!(!first.slot.evicted.load(Ordering::Relaxed));
        std::thread::sleep(Duration::from_millis(150));
        let _second = l.admit(true).expect("idle past the grace: closed for room");
        tokio::time::timeout(Duration::from_secs(1), first.evicted()).await.expect("told to close");
    }

    #[test]
    fn accept_backs_off_only_when_out_of_resources() {
        let mut b = AcceptBackoff::default();
        let emfile = std::io::Error::from_raw_os_error(24);
        let reset = std::io::Error::from(std::io::ErrorKind::ConnectionAborted);
        assert_eq!(b.after("t", &reset), Duration::ZERO);
        let waits: Vec<Duration> = (0..10).map(|_| b.after("t", &emfile)).collect();
        assert_eq!(waits[0], Duration::from_millis(5));
        assert_eq!(waits[1], Duration::from_millis(10));
        assert_eq!(waits[9], Duration::from_secs(1), "capped at one second");
        b.reset();
        assert_eq!(b.after("t", &emfile), Duration::from_millis(5));
    }
}
