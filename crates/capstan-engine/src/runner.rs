//! One controller runner for every kind, in the spirit of kube-runtime's `Controller`: a [`Reconciler`] says what
//! triggers it and how to reconcile one object; the runner owns the loop — the work queue, one task per object at a
//! time (a reconcile, or the finalizer once it is deleted), bounded concurrency, requeues, capped exponential backoff
//! with jitter on errors, periodic resync, and shutdown. Finalizers run on the deletion event: one missed (Capstan
//! down, a lagging watch) is not run later, so what a finalizer removes must also be safe to find left over.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::Duration;

use capstan_model::ObjectKey;
use capstan_store::{Store, StoreError, WatchEvent, WatchType};
use serde_json::Value;
use tokio::sync::{mpsc, watch, Semaphore};
use tokio::time::Instant;

use crate::queue::WorkQueue;

/// What to do after a reconcile that went through.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Action {
    /// Look again after this long even if nothing changes (a deadline, a poll, a TTL).
    Requeue(Duration),
    /// Look again when something that triggers this controller changes (or at the next resync).
    AwaitChange,
}

/// Why a reconcile did not go through; the object is looked at again after a backoff.
#[derive(Debug, thiserror::Error)]
pub enum ReconcileError {
    /// The store could not be read or written: never taken for "absent".
    #[error("store: {0}")]
    Store(#[from] StoreError),
    #[error("{0}")]
    Other(String),
}

/// One kind's controller: what wakes it and how it brings one object towards its spec.
pub trait Reconciler: Send + Sync + 'static {
    /// The kind whose objects it reconciles.
    fn kind(&self) -> &'static str;

    /// Whether an event on one of its own objects needs a reconcile. Default: when the spec changed (the status
    /// does not yet say it observed the object's generation); a write of the status alone does not.
    fn wants(&self, ev: &WatchEvent) -> bool {
        ev.object["status"]["observedGeneration"] != ev.object["metadata"]["generation"]
    }

    /// Its objects that an event should wake besides the object itself: the owner of a child labelled with it, the
    /// users of a Secret, the dependents of one of its own objects. Called for every event. Default: none.
    fn triggers(&self, _ev: &WatchEvent) -> Vec<ObjectKey> {
        Vec::new()
    }

    /// Keys to look at on every resync besides the stored objects: what still runs for an object that is gone, say.
    /// Default: none.
    fn known(&self) -> Vec<ObjectKey> {
        Vec::new()
    }

    /// Whether a deleted object is reconciled (as absent) after its finalizer, and again as long as the reconcile
    /// asks: for a controller that winds down what an object ran over several looks. Default: no.
    fn reconcile_when_gone(&self) -> bool {
        false
    }

    /// Brings one object towards its spec. It may block (it runs on the blocking pool); an object that is gone is
    /// `Ok(Action::AwaitChange)`.
    fn reconcile(&self, key: &ObjectKey) -> Result<Action, ReconcileError>;

    /// The object was deleted; `last` is what it was. Runs once, on the blocking pool.
    fn finalize(&self, _key: &ObjectKey, _last: &Value) {}

    /// How often every object is looked at even without events; `None`: only at start and after missed events
    /// (for a controller whose reconciles are costly and that requeues each object on its own schedule).
    fn resync(&self) -> Option<Duration> {
        Some(Duration::from_secs(30))
    }
}

/// The first wait after a failed reconcile; it doubles up to [`BACKOFF_MAX`].
pub const BACKOFF_BASE: Duration = Duration::from_millis(500);
/// The longest wait between attempts at an object whose reconcile keeps failing.
pub const BACKOFF_MAX: Duration = Duration::from_secs(300);

/// The wait after the `failures`-th failure in a row (1 for the first): capped exponential, with up to a tenth of
/// jitter (from `seed`) so that objects failing together do not retry together.
pub fn backoff(failures: u32, seed: u64) -> Duration {
    let exp = failures.saturating_sub(1).min(20);
    let base = BACKOFF_BASE.saturating_mul(1u32 << exp).min(BACKOFF_MAX);
    // A multiplicative hash spreads consecutive seeds; the jitter is 0–10 % of the wait.
    let spread = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) >> 54; // 0..1024
    (base + base.mul_f64(spread as f64 / 1024.0 / 10.0)).min(BACKOFF_MAX)
}

/// A running controller; stop it with [`Handle::stop`].
pub struct Handle {
    name: &'static str,
    stop: watch::Sender<bool>,
    task: tokio::task::JoinHandle<()>,
}

impl Handle {
    /// The controller's name, for logs.
    pub fn name(&self) -> &'static str {
        self.name
    }

    /// Stops the loop and waits for the reconciles under way.
    pub async fn stop(self) {
        let _ = self.stop.send(true);
        if let Err(e) = self.task.await {
            tracing::warn!(controller = self.name, "stopped with an error: {e}");
        }
    }
}

/// Runs `r` over the store's objects of its kind, at most `concurrency` reconciles at once.
pub fn run<R: Reconciler>(store: Store, r: Arc<R>, concurrency: usize) -> Handle {
    let (_requests, rx) = mpsc::unbounded_channel();
    run_with_requests(store, r, concurrency, rx)
}

/// [`run`], with `requests` carrying keys to reconcile at once from outside the store (a runtime that saw a replica
/// change, a `sync now`, a changed directory).
pub fn run_with_requests<R: Reconciler>(
    store: Store,
    r: Arc<R>,
    concurrency: usize,
    requests: mpsc::UnboundedReceiver<ObjectKey>,
) -> Handle {
    let (stop, stop_rx) = watch::channel(false);
    let name = r.kind();
    let task = tokio::spawn(run_loop(store, r, concurrency.max(1), requests, stop_rx));
    Handle { name, stop, task }
}

/// A worker driven by a clock rather than by objects — rules evaluated as a group, scrape tasks kept in step with
/// their targets: the runner calls `tick` every `period`, waits out the same capped backoff after a failed tick, and
/// calls `shutdown` once stopped (never during a tick).
pub trait Periodic: Send + 'static {
    /// Its name, for logs.
    fn name(&self) -> &'static str;

    /// The time from the start of one tick to the start of the next (a tick that overruns it is followed at once).
    fn period(&self) -> Duration;

    /// One round of work.
    fn tick(&mut self) -> impl std::future::Future<Output = Result<(), ReconcileError>> + Send;

    /// What to do once stopped. Default: nothing.
    fn shutdown(self) -> impl std::future::Future<Output = ()> + Send
    where
        Self: Sized,
    {
        async {}
    }
}

/// Runs `p` on its clock, the first tick at once.
pub fn every<P: Periodic>(mut p: P) -> Handle {
    let (stop, mut stop_rx) = watch::channel(false);
    let name = p.name();
    let task = tokio::spawn(async move {
        let mut failures = 0u32;
        let mut wait = Duration::ZERO;
        loop {
            tokio::select! {
                _ = stop_rx.changed() => break,
                _ = tokio::time::sleep(wait) => {}
            }
            let started = Instant::now();
            wait = match p.tick().await {
                Ok(()) => {
                    failures = 0;
                    p.period().saturating_sub(started.elapsed())
                }
                Err(e) => {
                    failures += 1;
                    let d = backoff(failures, u64::from(failures)).max(p.period());
                    tracing::warn!(worker = name, "tick failed (attempt {failures}, next in {d:?}): {e}");
                    d
                }
            };
        }
        p.shutdown().await;
    });
    Handle { name, stop, task }
}

fn seed_of(key: &ObjectKey, failures: u32) -> u64 {
    use std::hash::{Hash, Hasher};
    let mut h = std::collections::hash_map::DefaultHasher::new();
    key.hash(&mut h);
    failures.hash(&mut h);
    h.finish()
}

fn keys_of<R: Reconciler>(store: &Store, r: &R) -> Result<Vec<ObjectKey>, StoreError> {
    let mut keys: Vec<ObjectKey> =
        store.list(r.kind(), None)?.iter().filter_map(|v| capstan_store::key_of(v).ok()).collect();
    keys.extend(r.known());
    keys.sort();
    keys.dedup();
    Ok(keys)
}

/// What a task of the runner reports back.
enum Done {
    Reconciled(ObjectKey, Result<Action, String>),
    Finalized(ObjectKey),
}

fn spawn_finalize<R: Reconciler>(
    running: &mut tokio::task::JoinSet<()>,
    r: &Arc<R>,
    tx: &mpsc::UnboundedSender<Done>,
    key: ObjectKey,
    last: Value,
) {
    let (r, tx) = (r.clone(), tx.clone());
    running.spawn(async move {
        let k = key.clone();
        let _ = tokio::task::spawn_blocking(move || r.finalize(&k, &last)).await;
        let _ = tx.send(Done::Finalized(key));
    });
}

async fn run_loop<R: Reconciler>(
    store: Store,
    r: Arc<R>,
    concurrency: usize,
    mut requests: mpsc::UnboundedReceiver<ObjectKey>,
    mut stop: watch::Receiver<bool>,
) {
    let kind = r.kind();
    let mut queue = WorkQueue::default();
    let mut watch = store.watch();
    let permits = Arc::new(Semaphore::new(concurrency));
    let (done_tx, mut done_rx) = mpsc::unbounded_channel::<Done>();
    // An object is reconciled or finalized by one task at a time: what comes for it meanwhile waits.
    let mut in_flight: HashSet<ObjectKey> = HashSet::new();
    let mut dirty: HashSet<ObjectKey> = HashSet::new();
    let mut deleted: HashMap<ObjectKey, Value> = HashMap::new();
    let mut failures: HashMap<ObjectKey, u32> = HashMap::new();
    // The first listing, and every resync: a listing that fails is tried again soon, never taken for "none".
    let mut next_resync = Instant::now();
    let mut running = tokio::task::JoinSet::new();
    loop {
        let now = Instant::now();
        if now >= next_resync {
            match keys_of(&store, &*r) {
                Ok(keys) => {
                    // Not what is under way (it looks again when done if an event said so), nor what waits out a
                    // backoff: a resync must not turn retries after failures into retries every resync.
                    for k in keys.into_iter().filter(|k| !in_flight.contains(k) && !failures.contains_key(k)) {
                        queue.add(k);
                    }
                    // With no resync, the next listing is after missed events only.
                    next_resync = now + r.resync().unwrap_or(Duration::from_secs(365 * 24 * 3600));
                }
                Err(e) => {
                    tracing::warn!(controller = kind, "listing {kind}s (retry soon): {e}");
                    next_resync = now + BACKOFF_BASE * 4;
                }
            }
        }
        // Start what is due while permits last; what is due beyond waits in the queue (and is not started when the
        // runner stops).
        while permits.available_permits() > 0 {
            let Some(key) = queue.pop_next_due(now) else { break };
            if in_flight.contains(&key) {
                dirty.insert(key);
                continue;
            }
            let Ok(permit) = permits.clone().try_acquire_owned() else {
                queue.add(key);
                break;
            };
            in_flight.insert(key.clone());
            let (r, tx) = (r.clone(), done_tx.clone());
            running.spawn(async move {
                let k = key.clone();
                let out = tokio::task::spawn_blocking(move || r.reconcile(&k).map_err(|e| e.to_string()))
                    .await
                    .unwrap_or_else(|e| Err(format!("the reconcile panicked: {e}")));
                drop(permit);
                let _ = tx.send(Done::Reconciled(key, out));
            });
        }
        let wake = match permits.available_permits() {
            0 => next_resync,
            _ => queue.next_due().unwrap_or(next_resync).min(next_resync),
        };
        tokio::select! {
            _ = stop.changed() => break,
            Some(done) = done_rx.recv() => match done {
                Done::Reconciled(key, out) => {
                    if let Some(last) = deleted.remove(&key) {
                        // Deleted while it was reconciled: finalized now, after the reconcile (never beside it).
                        dirty.remove(&key);
                        failures.remove(&key);
                        spawn_finalize(&mut running, &r, &done_tx, key, last);
                        continue;
                    }
                    in_flight.remove(&key);
                    match out {
                        Ok(action) => {
                            failures.remove(&key);
                            if let Action::Requeue(d) = action {
                                queue.add_at(key.clone(), Instant::now() + d);
                            }
                            if dirty.remove(&key) {
                                queue.add(key);
                            }
                        }
                        Err(e) => {
                            let n = failures.entry(key.clone()).or_insert(0);
                            *n += 1;
                            let d = backoff(*n, seed_of(&key, *n));
                            tracing::warn!(controller = kind, object = %key, "reconcile failed (attempt {n}, retry in {d:?}): {e}");
                            // The retry waits out the backoff unless something changes meanwhile (as kube-runtime).
                            dirty.remove(&key);
                            queue.add_at(key, Instant::now() + d);
                        }
                    }
                }
                Done::Finalized(key) => {
                    in_flight.remove(&key);
                    // Created again meanwhile: reconciled as new; gone for good: wound down if the controller asks.
                    if dirty.remove(&key) || r.reconcile_when_gone() {
                        queue.add(key);
                    }
                }
            },
            ev = watch.recv() => match ev {
                Ok(ev) if ev.key.kind == kind => {
                    r.triggers(&ev).into_iter().for_each(|k| queue.add(k));
                    if ev.type_ == WatchType::Deleted {
                        failures.remove(&ev.key);
                        if in_flight.contains(&ev.key) {
                            deleted.insert(ev.key, ev.object);
                        } else {
                            in_flight.insert(ev.key.clone());
                            spawn_finalize(&mut running, &r, &done_tx, ev.key, ev.object);
                        }
                    } else if r.wants(&ev) {
                        queue.add(ev.key);
                    }
                }
                Ok(ev) => r.triggers(&ev).into_iter().for_each(|k| queue.add(k)),
                // Events were missed: look at everything.
                Err(tokio::sync::broadcast::error::RecvError::Lagged(_)) => next_resync = Instant::now(),
                Err(tokio::sync::broadcast::error::RecvError::Closed) => break,
            },
            Some(key) = requests.recv() => queue.add(key),
            Some(_) = running.join_next(), if !running.is_empty() => {}
            _ = tokio::time::sleep_until(wake) => {}
        }
    }
    // Reconciles and finalizers under way finish; none starts.
    while running.join_next().await.is_some() {}
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;
    use std::sync::atomic::{AtomicU32, Ordering};
    use std::sync::Mutex;

    #[test]
    fn backoff_doubles_to_its_cap_with_a_little_jitter() {
        let plain = |n: u32| backoff(n, 0);
        assert_eq!(plain(1), Duration::from_millis(500));
        assert_eq!(plain(2), Duration::from_secs(1));
        assert_eq!(plain(4), Duration::from_secs(4));
        assert_eq!(plain(40), BACKOFF_MAX);
        for seed in 0..200u64 {
            let d = backoff(3, seed);
            assert!(d >= Duration::from_secs(2) && d <= Duration::from_millis(2200), "{d:?}");
        }
        let spread: HashSet<Duration> = (0..50u64).map(|s| backoff(3, s)).collect();
        assert!(spread.len() > 10, "seeds spread the retries: {spread:?}");
    }

    /// A reconciler that fails its first two attempts at `b`, requeues `a` once, and records everything.
    struct Recorder {
        calls: Mutex<Vec<String>>,
        b_failures: AtomicU32,
        finalized: Mutex<Vec<String>>,
    }

    impl Reconciler for Recorder {
        fn kind(&self) -> &'static str {
            "App"
        }
        fn reconcile(&self, key: &ObjectKey) -> Result<Action, ReconcileError> {
            let mut calls = self.calls.lock().unwrap_or_else(|p| p.into_inner());
            calls.push(key.name.clone());
            match key.name.as_str() {
                "b" if self.b_failures.fetch_add(1, Ordering::SeqCst) < 2 => {
                    Err(ReconcileError::Other("not yet".into()))
                }
                "a" if calls.iter().filter(|c| *c == "a").count() == 1 => {
                    Ok(Action::Requeue(Duration::from_millis(50)))
                }
                _ => Ok(Action::AwaitChange),
            }
        }
        fn finalize(&self, key: &ObjectKey, _last: &Value) {
            self.finalized.lock().unwrap_or_else(|p| p.into_inner()).push(key.name.clone());
        }
    }

    fn app(name: &str) -> Value {
        json!({"apiVersion": "capstan.dev/v1alpha1", "kind": "App", "metadata": {"name": name},
               "spec": {"run": {"command": ["x"]}}})
    }

    #[tokio::test]
    async fn requeues_retries_with_backoff_finalizes_and_stops() {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = Store::open(&dir.path().join("s.redb")).expect("store");
        store.apply(vec![app("a"), app("b")]).expect("apply");
        let r =
            Arc::new(Recorder { calls: Mutex::default(), b_failures: AtomicU32::new(0), finalized: Mutex::default() });
        let handle = run(store.clone(), r.clone(), 2);
        let count =
            |name: &str| r.calls.lock().unwrap_or_else(|p| p.into_inner()).iter().filter(|c| *c == name).count();
        // `a`: once, then once more after its requeue; `b`: two failures, then success after 0.5 s + 1 s of backoff.
        let deadline = Instant::now() + Duration::from_secs(10);
        while (count("a") < 2 || count("b") < 3) && Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        assert_eq!((count("a"), count("b")), (2, 3));
        // A status write alone does not wake it; a spec change does.
        let key = ObjectKey::new("App", "default", "a");
        store.update_status(&key, json!({"observedGeneration": 1})).expect("status");
        tokio::time::sleep(Duration::from_millis(200)).await;
        assert_eq!(count("a"), 2);
        let mut changed = app("a");
        changed["spec"]["replicas"] = json!(3);
        store.apply(vec![changed]).expect("apply");
        let deadline = Instant::now() + Duration::from_secs(5);
        while count("a") < 3 && Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        assert_eq!(count("a"), 3);
        store.delete(&ObjectKey::new("App", "default", "b")).expect("delete");
        let deadline = Instant::now() + Duration::from_secs(5);
        while r.finalized.lock().unwrap_or_else(|p| p.into_inner()).is_empty() && Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        assert_eq!(*r.finalized.lock().unwrap_or_else(|p| p.into_inner()), vec!["b".to_string()]);
        handle.stop().await;
    }

    #[tokio::test]
    async fn a_listing_that_fails_is_tried_again_not_taken_for_none() {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = Store::open(&dir.path().join("s.redb")).expect("store");
        store.apply(vec![app("a")]).expect("apply");
        store.inject_read_faults(true);
        let r =
            Arc::new(Recorder { calls: Mutex::default(), b_failures: AtomicU32::new(0), finalized: Mutex::default() });
        let handle = run(store.clone(), r.clone(), 1);
        tokio::time::sleep(Duration::from_millis(300)).await;
        assert!(r.calls.lock().unwrap_or_else(|p| p.into_inner()).is_empty());
        store.inject_read_faults(false);
        let deadline = Instant::now() + Duration::from_secs(10);
        while r.calls.lock().unwrap_or_else(|p| p.into_inner()).is_empty() && Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        assert!(r.calls.lock().unwrap_or_else(|p| p.into_inner()).contains(&"a".to_string()));
        handle.stop().await;
    }

    /// Reconciles take 300 ms each and say when they overlap a finalizer of the same object.
    struct Slow {
        busy: std::sync::atomic::AtomicBool,
        overlapped: std::sync::atomic::AtomicBool,
        calls: AtomicU32,
        finalized: AtomicU32,
    }

    impl Reconciler for Slow {
        fn kind(&self) -> &'static str {
            "App"
        }
        fn reconcile(&self, _key: &ObjectKey) -> Result<Action, ReconcileError> {
            self.calls.fetch_add(1, Ordering::SeqCst);
            self.busy.store(true, Ordering::SeqCst);
            std::thread::sleep(Duration::from_millis(300));
            self.busy.store(false, Ordering::SeqCst);
            Ok(Action::AwaitChange)
        }
        fn finalize(&self, _key: &ObjectKey, _last: &Value) {
            if self.busy.load(Ordering::SeqCst) {
                self.overlapped.store(true, Ordering::SeqCst);
            }
            self.finalized.fetch_add(1, Ordering::SeqCst);
        }
    }

    fn slow() -> Arc<Slow> {
        Arc::new(Slow {
            busy: Default::default(),
            overlapped: Default::default(),
            calls: AtomicU32::new(0),
            finalized: AtomicU32::new(0),
        })
    }

    #[tokio::test]
    async fn a_deletion_during_a_reconcile_is_finalized_after_it_never_beside_it() {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = Store::open(&dir.path().join("s.redb")).expect("store");
        store.apply(vec![app("a")]).expect("apply");
        let r = slow();
        let handle = run(store.clone(), r.clone(), 2);
        tokio::time::sleep(Duration::from_millis(100)).await;
        assert!(r.busy.load(Ordering::SeqCst), "the reconcile is under way");
        store.delete(&ObjectKey::new("App", "default", "a")).expect("delete");
        let deadline = Instant::now() + Duration::from_secs(5);
        while r.finalized.load(Ordering::SeqCst) == 0 && Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        assert_eq!(r.finalized.load(Ordering::SeqCst), 1);
        assert!(!r.overlapped.load(Ordering::SeqCst), "the finalizer waited for the reconcile");
        handle.stop().await;
    }

    #[tokio::test]
    async fn stopping_waits_for_what_runs_and_starts_nothing_queued() {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = Store::open(&dir.path().join("s.redb")).expect("store");
        store.apply(vec![app("a"), app("b"), app("c")]).expect("apply");
        let r = slow();
        let handle = run(store.clone(), r.clone(), 1);
        tokio::time::sleep(Duration::from_millis(100)).await;
        handle.stop().await;
        assert_eq!(r.calls.load(Ordering::SeqCst), 1, "one ran (and finished); the two queued never started");
        assert!(!r.busy.load(Ordering::SeqCst));
    }

    /// Winds down what runs for an object that is gone: `known` lists `ghost` (no stored object), and a deleted
    /// object is looked at until it says it is done.
    struct WindDown {
        calls: Mutex<Vec<String>>,
    }

    impl Reconciler for WindDown {
        fn kind(&self) -> &'static str {
            "App"
        }
        fn known(&self) -> Vec<ObjectKey> {
            vec![ObjectKey::new("App", "default", "ghost")]
        }
        fn reconcile_when_gone(&self) -> bool {
            true
        }
        fn reconcile(&self, key: &ObjectKey) -> Result<Action, ReconcileError> {
            let mut calls = self.calls.lock().unwrap_or_else(|p| p.into_inner());
            calls.push(key.name.clone());
            // `a`, once deleted, needs three looks 20 ms apart to stop what it ran.
            let looks = calls.iter().filter(|c| *c == "a").count();
            Ok(match key.name.as_str() {
                "a" if (2..4).contains(&looks) => Action::Requeue(Duration::from_millis(20)),
                _ => Action::AwaitChange,
            })
        }
    }

    #[tokio::test]
    async fn known_keys_requests_and_deleted_objects_are_reconciled() {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = Store::open(&dir.path().join("s.redb")).expect("store");
        store.apply(vec![app("a")]).expect("apply");
        let r = Arc::new(WindDown { calls: Mutex::default() });
        let (tx, rx) = mpsc::unbounded_channel();
        let handle = run_with_requests(store.clone(), r.clone(), 1, rx);
        let count =
            |name: &str| r.calls.lock().unwrap_or_else(|p| p.into_inner()).iter().filter(|c| *c == name).count();
        let wait_for = |name: &'static str, n: usize| async move {
            let deadline = Instant::now() + Duration::from_secs(5);
            while count(name) < n && Instant::now() < deadline {
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            count(name)
        };
        assert_eq!(wait_for("a", 1).await, 1);
        assert_eq!(wait_for("ghost", 1).await, 1, "what `known` lists is looked at without a stored object");
        // A request from outside the store (a replica that exited, say) is reconciled at once.
        tx.send(ObjectKey::new("App", "default", "elsewhere")).expect("send");
        assert_eq!(wait_for("elsewhere", 1).await, 1);
        // Deleted: looked at again, and as long as it asks.
        store.delete(&ObjectKey::new("App", "default", "a")).expect("delete");
        assert_eq!(wait_for("a", 4).await, 4);
        tokio::time::sleep(Duration::from_millis(200)).await;
        assert_eq!(count("a"), 4, "done once it awaits a change");
        handle.stop().await;
    }

    /// Counts ticks, fails the second, and records its shutdown.
    struct Clock {
        ticks: Arc<AtomicU32>,
        shut: Arc<std::sync::atomic::AtomicBool>,
    }

    impl Periodic for Clock {
        fn name(&self) -> &'static str {
            "clock"
        }
        fn period(&self) -> Duration {
            Duration::from_millis(20)
        }
        async fn tick(&mut self) -> Result<(), ReconcileError> {
            match self.ticks.fetch_add(1, Ordering::SeqCst) {
                1 => Err(ReconcileError::Other("the second tick fails".into())),
                _ => Ok(()),
            }
        }
        async fn shutdown(self) {
            self.shut.store(true, Ordering::SeqCst);
        }
    }

    #[tokio::test]
    async fn a_periodic_worker_ticks_backs_off_after_a_failure_and_shuts_down_once_stopped() {
        let ticks = Arc::new(AtomicU32::new(0));
        let shut = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let handle = every(Clock { ticks: ticks.clone(), shut: shut.clone() });
        // Ticks 1 and 2 come 20 ms apart; the second fails, so the third waits the first backoff (500 ms).
        let deadline = Instant::now() + Duration::from_secs(5);
        while ticks.load(Ordering::SeqCst) < 2 && Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
        assert_eq!(ticks.load(Ordering::SeqCst), 2, "backing off after the failed tick");
        let deadline = Instant::now() + Duration::from_secs(5);
        while ticks.load(Ordering::SeqCst) < 4 && Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        assert!(ticks.load(Ordering::SeqCst) >= 4, "back on its period after the backoff");
        assert!(!shut.load(Ordering::SeqCst));
        handle.stop().await;
        assert!(shut.load(Ordering::SeqCst), "shut down once stopped");
        let after = ticks.load(Ordering::SeqCst);
        tokio::time::sleep(Duration::from_millis(100)).await;
        assert_eq!(ticks.load(Ordering::SeqCst), after, "no tick after the stop");
    }
}
