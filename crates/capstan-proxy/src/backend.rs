//! Backends (one per replica) and how a request picks one: readiness, draining, ejection, balance, stickiness.

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, OnceLock, RwLock};
use std::time::{Duration, Instant};

use crate::metrics::ReplicaMetrics;
use crate::upstream::Sender;
use capstan_model::Balance;

/// Where one replica is reached.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BackendInfo {
    /// The replica's name, such as `web-1`; also the value of the sticky cookie.
    pub name: String,
    pub addr: SocketAddr,
    /// The replica's readiness probe passes.
    pub ready: bool,
    /// The process identity; a new pid clears a passive ejection.
    pub pid: Option<u32>,
}

/// One replica as the proxy sees it.
pub struct Backend {
    pub name: String,
    pub addr: SocketAddr,
    pid: Option<u32>,
    cookie: String,
    ready: AtomicBool,
    /// Leaving: no new requests or sessions; in-flight ones finish.
    draining: AtomicBool,
    /// A connection to it failed; out of rotation until its process changes or it becomes ready again.
    ejected: AtomicBool,
    inflight: AtomicUsize,
    /// Idle upstream connections, one pool per proxy worker thread: a connection's task lives on the thread
    /// that opened it, so a request only ever uses its own thread's connections.
    idle: Vec<Mutex<Vec<Sender>>>,
    /// Its metric handles, shared with any later backend of the same replica name.
    pub(crate) metrics: OnceLock<Arc<ReplicaMetrics>>,
}

/// Idle upstream connections kept per backend.
const MAX_IDLE: usize = 64;

impl Backend {
    fn new(info: &BackendInfo) -> Backend {
        use std::hash::{Hash, Hasher};
        let mut h = std::collections::hash_map::DefaultHasher::new();
        (&info.name, info.pid, info.addr).hash(&mut h);
        Backend {
            name: info.name.clone(),
            addr: info.addr,
            pid: info.pid,
            cookie: format!("{}.{:08x}", info.name, h.finish() as u32),
            ready: AtomicBool::new(info.ready),
            draining: AtomicBool::new(false),
            ejected: AtomicBool::new(false),
            inflight: AtomicUsize::new(0),
            idle: (0..crate::worker_count()).map(|_| Mutex::new(Vec::new())).collect(),
            metrics: OnceLock::new(),
        }
    }

    /// The sticky-cookie value of this process instance: `<replica>.<tag>`, where the tag changes whenever the
    /// replica's process does, so clients of a process that died are re-pinned once instead of following the name.
    pub fn cookie(&self) -> &str {
        &self.cookie
    }

    /// Takes new requests and sessions.
    pub fn eligible(&self) -> bool {
        self.ready.load(Ordering::Acquire)
            && !self.draining.load(Ordering::Acquire)
            && !self.ejected.load(Ordering::Acquire)
    }

    /// Taken out of rotation for a drain.
    pub fn is_draining(&self) -> bool {
        self.draining.load(Ordering::Acquire)
    }

    pub fn inflight(&self) -> usize {
        self.inflight.load(Ordering::Acquire)
    }

    /// Counts a request or tunnel until the guard is dropped.
    pub fn track(self: &Arc<Self>) -> InflightGuard {
        self.inflight.fetch_add(1, Ordering::AcqRel);
        InflightGuard(self.clone())
    }

    /// Takes it out of rotation after a failed connection.
    pub fn eject(&self) {
        if !self.ejected.swap(true, Ordering::AcqRel) {
            tracing::info!(backend = %self.name, addr = %self.addr, "connection failed; out of rotation until it is ready again");
        }
        self.clear_pools();
    }

    fn clear_pools(&self) {
        for pool in &self.idle {
            pool.lock().unwrap_or_else(|p| p.into_inner()).clear();
        }
    }

    fn pool(&self) -> &Mutex<Vec<Sender>> {
        &self.idle[crate::worker_index() % self.idle.len().max(1)]
    }

    pub fn set_draining(&self) {
        self.draining.store(true, Ordering::Release);
        self.clear_pools();
    }

    /// An idle connection, if any: one whose last response was read completely (HTTP/1.1), or a shared HTTP/2
    /// one, which stays in the pool. It may need a moment to become ready (its connection task notices the end of
    /// the response asynchronously); callers await that.
    pub(crate) fn checkout(&self) -> Option<Sender> {
        let mut idle = self.pool().lock().unwrap_or_else(|p| p.into_inner());
        while let Some(s) = idle.pop() {
            if s.is_closed() {
                continue;
            }
            if let Some(shared) = s.share() {
                idle.push(s);
                return Some(shared);
            }
            return Some(s);
        }
        None
    }

    /// Returns a connection for reuse (a shared one only if the pool holds none open yet).
    pub(crate) fn checkin(&self, sender: Sender) {
        if sender.is_closed() || self.draining.load(Ordering::Acquire) {
            return;
        }
        let mut idle = self.pool().lock().unwrap_or_else(|p| p.into_inner());
        if sender.is_shared() && idle.iter().any(|s| s.is_shared() && !s.is_closed()) {
            return;
        }
        if idle.len() < MAX_IDLE {
            idle.push(sender);
        }
    }
}

/// Decrements a backend's in-flight count when dropped.
pub struct InflightGuard(Arc<Backend>);

impl Drop for InflightGuard {
    fn drop(&mut self) {
        self.0.inflight.fetch_sub(1, Ordering::AcqRel);
    }
}

/// The replicas behind one entry point.
#[derive(Default)]
pub struct BackendSet {
    backends: RwLock<Vec<Arc<Backend>>>,
    next: AtomicUsize,
    by_ip: Mutex<HashMap<IpAddr, (String, Instant)>>,
}

impl BackendSet {
    /// Drops every idle connection (they speak a protocol no longer wanted).
    pub fn clear_pools(&self) {
        for b in self.snapshot() {
            b.clear_pools();
        }
    }

    /// Replaces the set, keeping the state (pool, in-flight count, draining) of backends that stay.
    pub fn update(&self, infos: &[BackendInfo]) {
        let mut current = self.backends.write().unwrap_or_else(|p| p.into_inner());
        let mut next = Vec::with_capacity(infos.len());
        for info in infos {
            let existing = current.iter().find(|b| b.name == info.name && b.addr == info.addr && b.pid == info.pid);
            let b = match existing {
                Some(b) => {
                    let was_ready = b.ready.swap(info.ready, Ordering::AcqRel);
                    if info.ready && !was_ready {
                        b.ejected.store(false, Ordering::Release);
                    }
                    b.clone()
                }
                None => Arc::new(Backend::new(info)),
            };
            next.push(b);
        }
        *current = next;
    }

    pub fn snapshot(&self) -> Vec<Arc<Backend>> {
        self.backends.read().unwrap_or_else(|p| p.into_inner()).clone()
    }

    pub fn find(&self, name: &str) -> Option<Arc<Backend>> {
        self.backends.read().unwrap_or_else(|p| p.into_inner()).iter().find(|b| b.name == name).cloned()
    }

    /// The backend a sticky cookie points at, if that very process is still there.
    pub fn by_cookie(&self, value: &str) -> Option<Arc<Backend>> {
        let (name, _) = value.rsplit_once('.')?;
        self.find(name).filter(|b| b.cookie() == value)
    }

    /// Picks a backend for a new session, skipping `exclude`. Allocates nothing on the common path.
    pub fn pick(&self, balance: Balance, exclude: &[String]) -> Option<Arc<Backend>> {
        let all = self.backends.read().unwrap_or_else(|p| p.into_inner());
        let ok = |b: &&Arc<Backend>| b.eligible() && !exclude.iter().any(|e| *e == b.name);
        let count = all.iter().filter(ok).count();
        if count == 0 {
            return None;
        }
        let start = self.next.fetch_add(1, Ordering::Relaxed);
        match balance {
            Balance::RoundRobin => all.iter().filter(ok).nth(start % count).cloned(),
            // Ties rotate, so equal loads still spread.
            Balance::LeastRequests => {
                all.iter().filter(ok).cycle().skip(start % count).take(count).min_by_key(|b| b.inflight()).cloned()
            }
        }
    }

    /// The backend pinned to a client address, if still eligible and not idle past `timeout`.
    pub fn pinned_ip(&self, ip: IpAddr, timeout: Duration) -> Option<Arc<Backend>> {
        let mut map = self.by_ip.lock().unwrap_or_else(|p| p.into_inner());
        let (name, seen) = map.get(&ip)?.clone();
        if seen.elapsed() > timeout {
            map.remove(&ip);
            return None;
        }
        drop(map);
        self.find(&name).filter(|b| b.eligible())
    }

    /// Pins a client address to a backend (and refreshes its idle time).
    pub fn pin_ip(&self, ip: IpAddr, name: &str) {
        let mut map = self.by_ip.lock().unwrap_or_else(|p| p.into_inner());
        if map.len() > 100_000 {
            map.retain(|_, (_, seen)| seen.elapsed() < Duration::from_secs(3600));
        }
        map.insert(ip, (name.to_string(), Instant::now()));
    }

    /// Marks a backend draining; returns it.
    pub fn drain(&self, name: &str) -> Option<Arc<Backend>> {
        let b = self.find(name)?;
        b.set_draining();
        Some(b)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn info(name: &str, port: u16, ready: bool) -> BackendInfo {
        BackendInfo { name: name.into(), addr: ([127, 0, 0, 1], port).into(), ready, pid: Some(u32::from(port)) }
    }

    #[test]
    fn round_robin_skips_unready_draining_and_ejected() {
        let set = BackendSet::default();
        set.update(&[info("a-0", 1, true), info("a-1", 2, true), info("a-2", 3, false)]);
        let picks: Vec<String> = (0..4).map(|_| set.pick(Balance::RoundRobin, &[]).unwrap().name.clone()).collect();
        assert_eq!(picks.iter().filter(|p| *p == "a-0").count(), 2);
        assert!(!picks.contains(&"a-2".to_string()));
        set.drain("a-0");
        assert!((0..4).all(|_| set.pick(Balance::RoundRobin, &[]).unwrap().name == "a-1"));
        set.find("a-1").unwrap().eject();
        assert!(set.pick(Balance::RoundRobin, &[]).is_none());
        // Becoming ready again clears an ejection.
        set.update(&[info("a-0", 1, true), info("a-1", 2, false), info("a-2", 3, false)]);
        set.update(&[info("a-0", 1, true), info("a-1", 2, true), info("a-2", 3, false)]);
        assert_eq!(set.pick(Balance::RoundRobin, &["a-0".into()]).unwrap().name, "a-1");
    }

    #[test]
    fn draining_state_survives_updates_but_a_new_process_starts_fresh() {
        let set = BackendSet::default();
        set.update(&[info("a-0", 1, true)]);
        set.drain("a-0");
        set.update(&[info("a-0", 1, true)]);
        assert!(!set.find("a-0").unwrap().eligible(), "still draining");
        let mut fresh = info("a-0", 1, true);
        fresh.pid = Some(99);
        set.update(&[fresh]);
        assert!(set.find("a-0").unwrap().eligible(), "a new process is a new backend");
    }

    #[test]
    fn least_requests_prefers_idle_backends() {
        let set = BackendSet::default();
        set.update(&[info("a-0", 1, true), info("a-1", 2, true)]);
        let busy = set.find("a-0").unwrap();
        let _g1 = busy.track();
        let _g2 = busy.track();
        assert!((0..5).all(|_| set.pick(Balance::LeastRequests, &[]).unwrap().name == "a-1"));
        assert_eq!(busy.inflight(), 2);
    }

    #[test]
    fn client_ip_pins_expire() {
        let set = BackendSet::default();
        set.update(&[info("a-0", 1, true), info("a-1", 2, true)]);
        let ip: IpAddr = [127, 0, 0, 9].into();
        set.pin_ip(ip, "a-1");
        assert_eq!(set.pinned_ip(ip, Duration::from_secs(60)).unwrap().name, "a-1");
        assert!(set.pinned_ip(ip, Duration::ZERO).is_none());
    }
}
