//! Supervision: probes, exits and restarts reported to the controller, and the `AppRuntime` the engine drives
//! (observe, start, stop with grace and drain, release, shutdown).

use super::*;

impl LocalRuntime {
    pub(crate) fn open_writer(&self, rec: &Record) -> std::io::Result<Arc<Mutex<LogWriter>>> {
        let path = self.log_path(&rec.key(), rec.ordinal);
        let w = LogWriter::open(path, rec.name(), rec.log_max_size, rec.log_max_files, self.follow_sender(&rec.key()))?;
        Ok(Arc::new(Mutex::new(w)))
    }

    pub(crate) fn spawn_probes(&self, rec: &Record, stop: watch::Receiver<bool>) {
        let target = ProbeTarget { ports: rec.ports.clone(), env: rec.env.clone(), cwd: rec.cwd.clone() };
        let rt = self.clone();
        let key = rec.key();
        let ordinal = rec.ordinal;
        let report = Arc::new(move |ev: ProbeEvent| rt.on_probe(&key, ordinal, ev));
        tokio::spawn(probe::run(rec.probes.clone(), target, report, stop));
    }

    pub(crate) fn on_probe(&self, key: &ObjectKey, ordinal: u32, ev: ProbeEvent) {
        let mut event = None;
        {
            let mut map = lock(&self.inner.replicas);
            let Some(r) = map.get_mut(&(key.clone(), ordinal)) else {
                return;
            };
            if r.state != ReplicaState::Running {
                return;
            }
            match ev {
                ProbeEvent::Ready(ready, msg) => {
                    if r.ready != ready {
                        let name = r.rec.name();
                        event = Some(if ready {
                            (EventType::Normal, "Ready", format!("replica {name} is ready"))
                        } else {
                            (
                                EventType::Warning,
                                "Unhealthy",
                                format!("replica {name}: {}", msg.clone().unwrap_or_default()),
                            )
                        });
                    }
                    if ready && !r.ready {
                        r.ready_since = Some(Utc::now());
                    }
                    r.ready = ready;
                    r.probe_message = msg;
                }
                ProbeEvent::Unhealthy(msg) => {
                    event = Some((EventType::Warning, "Unhealthy", format!("replica {}: {msg}", r.rec.name())));
                    r.unhealthy = Some(msg);
                    r.ready = false;
                }
            }
        }
        if let Some((t, reason, msg)) = event {
            self.event(key, t, reason, &msg);
        }
        let _ = self.inner.notify.send(key.clone());
    }

    /// Records an exit: status, crash streak, stray group members killed, tasks stopped.
    pub(crate) fn on_exit(
        &self,
        key: &ObjectKey,
        ordinal: u32,
        status: Option<std::process::ExitStatus>,
        exited: watch::Sender<bool>,
    ) {
        use std::os::unix::process::ExitStatusExt;
        let now = Utc::now();
        let info = match status {
            Some(s) => ExitInfo {
                code: s.code(),
                signal: s.signal(),
                finished_at: now,
                reason: match (s.code(), s.signal()) {
                    (Some(0), _) => "Completed",
                    (Some(_), _) => "Error",
                    (None, Some(9)) if self.memory_limited(key, ordinal) => "OOMKilled",
                    (None, Some(_)) => "Signaled",
                    _ => "Unknown",
                }
                .to_string(),
            },
            None => ExitInfo { code: None, signal: None, finished_at: now, reason: "Unknown".into() },
        };
        let mut msg = None;
        {
            let mut map = lock(&self.inner.replicas);
            if let Some(r) = map.get_mut(&(key.clone(), ordinal)) {
                if let Some(pid) = r.rec.pid {
                    // No orphans: whatever the replica left in its process group goes with it, and so does
                    // whatever left the group (setsid) but still carries this run's marker (found by reading
                    // /proc, off the async workers and outside this lock; the next run has a marker of its own).
                    process::signal_group(pid, Signal::SIGKILL);
                    if let Some(marker) = self.marker(&r.rec) {
                        tokio::task::spawn_blocking(move || {
                            escape::signal_marked(&marker, &HashSet::from([pid]), Signal::SIGKILL)
                        });
                    }
                }
                self.inner.limits.cleanup(&r.rec.id());
                let ran = r.rec.started_at.map(|s| (now - s).num_milliseconds() as f64 / 1000.0).unwrap_or(0.0);
                let stopping = r.state == ReplicaState::Stopping;
                if ran >= r.rec.reset_after_seconds {
                    r.rec.crash_streak = 1;
                } else {
                    r.rec.crash_streak += 1;
                }
                if !stopping {
                    msg =
                        Some(format!("replica {} (pid {}) {}", r.rec.name(), r.rec.pid.unwrap_or(0), describe(&info)));
                }
                r.rec.last_exit = Some(info);
                r.rec.pid = None;
                r.rec.start_ticks = None;
                r.state = ReplicaState::Exited;
                r.ready = false;
                let _ = r.stop_tasks.send(true);
                self.persist(&r.rec);
            }
        }
        if let Some(m) = msg {
            self.event(key, EventType::Warning, "Exited", &m);
        }
        let _ = exited.send(true);
        let _ = self.inner.notify.send(key.clone());
    }
}

pub(crate) fn describe(e: &ExitInfo) -> String {
    match (e.code, e.signal) {
        (Some(c), _) => format!("exited with code {c}"),
        (None, Some(s)) => format!("was killed by signal {s} ({})", e.reason),
        _ => "exited".into(),
    }
}

/// A replica to stop at shutdown: its App, ordinal, pid, exit watch, stop signal and recorded grace period.
pub(crate) type StopTarget = (ObjectKey, u32, Option<u32>, watch::Receiver<bool>, Signal, Option<u32>);

impl AppRuntime for LocalRuntime {
    fn observe(&self, app: &ObjectKey) -> Vec<ObservedReplica> {
        let map = lock(&self.inner.replicas);
        let mut out: Vec<ObservedReplica> = map
            .iter()
            .filter(|((k, _), _)| k == app)
            .map(|((_, ordinal), r)| ObservedReplica {
                ordinal: *ordinal,
                revision: r.rec.revision.clone(),
                state: r.state.clone(),
                pid: r.rec.pid,
                ports: r.rec.ports.clone(),
                restarts: r.rec.restarts,
                crash_streak: r.rec.crash_streak,
                started_at: r.rec.started_at,
                last_exit: r.rec.last_exit.clone(),
                ready: r.ready,
                ready_since: r.ready.then_some(r.ready_since).flatten(),
                unhealthy: r.unhealthy.clone(),
                probe_message: r.probe_message.clone(),
            })
            .collect();
        out.sort_by_key(|r| r.ordinal);
        out
    }

    fn start(&self, app: &App, ordinal: u32, revision: &str, count_restart: bool) -> Result<(), StartError> {
        let key = ObjectKey::new("App", app.metadata.namespace(), &app.metadata.name);
        let prev = {
            let map = lock(&self.inner.replicas);
            match map.get(&(key.clone(), ordinal)) {
                Some(r) if matches!(r.state, ReplicaState::Running | ReplicaState::Stopping) => {
                    return Err(StartError::Failed(format!("replica {}-{ordinal} is still running", key.name)));
                }
                Some(r) => Some(r.rec.clone()),
                None => None,
            }
        };
        let mut prev = prev;
        if let Some(p) = prev.as_mut() {
            if count_restart {
                p.restarts += 1;
            } else {
                p.crash_streak = 0;
            }
        }
        let launched = match self.database_env(app) {
            Ok(database) => self.launch(app, ordinal, revision, prev.as_ref(), database).map_err(|e| e.to_string()),
            Err(StartError::Waiting(msg)) => {
                // Nothing failed: no crash counted, no exit recorded; the controller tries again.
                let mut rec = prev.unwrap_or_else(|| Record::fresh(&key, ordinal, revision));
                rec.revision = revision.to_string();
                lock(&self.inner.replicas)
                    .insert((key, ordinal), Replica::without_process(rec, ReplicaState::Waiting(msg.clone())));
                return Err(StartError::Waiting(msg));
            }
            Err(StartError::Failed(msg)) => Err(msg),
        };
        let (mut rec, child, hold) = match launched {
            Ok(x) => x,
            Err(msg) => {
                let mut rec = prev.unwrap_or_else(|| Record::fresh(&key, ordinal, revision));
                rec.revision = revision.to_string();
                rec.crash_streak += 1;
                rec.last_exit =
                    Some(ExitInfo { code: None, signal: None, finished_at: Utc::now(), reason: "StartFailed".into() });
                self.persist(&rec);
                lock(&self.inner.replicas)
                    .insert((key, ordinal), Replica::without_process(rec, ReplicaState::StartFailed(msg.clone())));
                return Err(StartError::Failed(msg));
            }
        };
        let pid = child.id().unwrap_or(0);
        rec.pid = Some(pid);
        rec.start_ticks = process::proc_start_time(pid).map(|(t, _)| t);
        rec.started_at = Some(Utc::now());
        self.persist(&rec);

        let (stop_tasks, stop_rx) = watch::channel(false);
        let (exited_tx, exited) = watch::channel(false);
        let writer = self.open_writer(&rec).ok();
        if let Some(w) = &writer {
            let (out, err) = self.fifo_paths(&rec);
            for (p, s) in [(out, "stdout"), (err, "stderr")] {
                match open_fifo_reader(&p) {
                    Ok(r) => {
                        tokio::spawn(logs::pump(r, s, w.clone(), stop_rx.clone()));
                    }
                    Err(e) => tracing::warn!("reading {}: {e}", p.display()),
                }
            }
        }
        drop(hold);
        // Registered before its probes start: a probe that reported sooner would find no replica, and its result
        // (sent on changes only) would be lost.
        let probed = rec.clone();
        lock(&self.inner.replicas).insert((key.clone(), ordinal), Replica::running(rec, stop_tasks, exited));
        self.spawn_probes(&probed, stop_rx);
        lock(&self.inner.launching).remove(&pid);
        let rt = self.clone();
        let mut child = child;
        tokio::spawn(async move {
            let status = child.wait().await.ok();
            rt.on_exit(&key, ordinal, status, exited_tx);
        });
        Ok(())
    }

    fn stop(&self, app: &ObjectKey, ordinal: u32, grace: Duration, forget: bool) {
        let (pid, mut exited, signal, marker) = {
            let mut map = lock(&self.inner.replicas);
            let Some(r) = map.get_mut(&(app.clone(), ordinal)) else {
                return;
            };
            if r.state == ReplicaState::Running {
                r.state = ReplicaState::Stopping;
                r.ready = false;
            }
            (r.rec.pid, r.exited.clone(), r.rec.stop_signal(), self.marker(&r.rec))
        };
        let rt = self.clone();
        let key = app.clone();
        let drainer = lock(&self.inner.drainer).clone();
        tokio::spawn(async move {
            if let Some(pid) = pid {
                if let Some(drain) = drainer.filter(|_| !*exited.borrow()) {
                    // Out of rotation first; in-flight requests finish (up to the drain time), then SIGTERM.
                    drain(key.clone(), format!("{}-{ordinal}", key.name)).await;
                }
                // Processes that left the group are found by reading /proc: off the async workers.
                let marked = |sig: Signal| {
                    let m = marker.clone();
                    tokio::task::spawn_blocking(move || {
                        m.map_or(0, |m| escape::signal_marked(&m, &HashSet::from([pid]), sig))
                    })
                };
                if !*exited.borrow() {
                    process::signal_group(pid, signal);
                    // Processes that left the group are asked to stop at the same time.
                    let _ = marked(signal).await;
                    let timed_out = tokio::time::timeout(grace, exited.wait_for(|e| *e)).await.is_err();
                    if timed_out {
                        tracing::info!(replica = %format!("{}-{ordinal}", key.name), "grace period over; sending SIGKILL");
                        process::signal_group(pid, Signal::SIGKILL);
                        let _ = exited.wait_for(|e| *e).await;
                    }
                }
                // Whatever outlived the main process and its grace period goes now.
                let left = marked(Signal::SIGKILL).await.unwrap_or(0);
                if left > 0 {
                    tracing::info!(replica = %format!("{}-{ordinal}", key.name), "stopped {left} processes that had left the replica's process group");
                }
                let reaper = rt.clone();
                let _ = tokio::task::spawn_blocking(move || reaper.reap_orphans()).await;
            }
            if forget {
                let removed = lock(&rt.inner.replicas).remove(&(key.clone(), ordinal));
                if let Some(r) = removed {
                    let _ = rt.inner.store.delete_record(&r.rec.store_key());
                    let (out, err) = rt.fifo_paths(&r.rec);
                    let _ = std::fs::remove_file(out);
                    let _ = std::fs::remove_file(err);
                }
            }
            let _ = rt.inner.notify.send(key);
        });
    }

    fn known_apps(&self) -> Vec<ObjectKey> {
        let map = lock(&self.inner.replicas);
        let mut keys: Vec<ObjectKey> = map.keys().map(|(k, _)| k.clone()).collect();
        keys.sort();
        keys.dedup();
        keys
    }

    fn warnings(&self, app: &App) -> Vec<String> {
        self.inner.limits.warnings(app.spec.resources.as_ref())
    }

    fn volumes(&self, app: &App) -> Vec<capstan_model::VolumeStatus> {
        self.inner.usage.of(&self.inner.cfg.data_dir, app)
    }

    fn release(&self, app: &ObjectKey) {
        volumes::release(&self.inner.store, &self.inner.cfg.data_dir, app);
        self.inner.usage.forget(app);
        // Followers learn the App is gone once the last writer holding its channel is dropped.
        lock(&self.inner.followers).remove(app);
    }

    async fn shutdown(&self) {
        let targets: Vec<StopTarget> = {
            let mut map = lock(&self.inner.replicas);
            map.iter_mut()
                .filter(|(_, r)| matches!(r.state, ReplicaState::Running | ReplicaState::Stopping))
                .map(|((k, o), r)| {
                    r.state = ReplicaState::Stopping;
                    (k.clone(), *o, r.rec.pid, r.exited.clone(), r.rec.stop_signal(), r.rec.grace_seconds)
                })
                .collect()
        };
        let mut waits = Vec::new();
        for (key, ordinal, pid, mut exited, signal, grace) in targets {
            let grace = match grace {
                Some(g) => Duration::from_secs(u64::from(g)),
                None => self.grace_of(&key),
            };
            waits.push(tokio::spawn(async move {
                let Some(pid) = pid else { return };
                process::signal_group(pid, signal);
                if tokio::time::timeout(grace, exited.wait_for(|e| *e)).await.is_err() {
                    tracing::info!(replica = %format!("{}-{ordinal}", key.name), "grace period over; sending SIGKILL");
                    process::signal_group(pid, Signal::SIGKILL);
                    let _ = tokio::time::timeout(Duration::from_secs(5), exited.wait_for(|e| *e)).await;
                }
            }));
        }
        for w in waits {
            let _ = w.await;
        }
        // Stopped replicas are not adopted by the next Capstan: it starts them fresh.
        let map = lock(&self.inner.replicas);
        for r in map.values() {
            let _ = self.inner.store.delete_record(&r.rec.store_key());
        }
    }
}

impl LocalRuntime {
    /// The grace period of a replica whose record does not say it (written by an older Capstan): its App's, read
    /// now. A read that fails is said, and the Kubernetes default used, since the stop cannot wait for the store.
    pub(crate) fn grace_of(&self, key: &ObjectKey) -> Duration {
        let secs = match self.inner.store.get(key) {
            Ok(o) => o.and_then(|o| o["spec"]["terminationGracePeriodSeconds"].as_u64()).unwrap_or(30),
            Err(e) => {
                tracing::warn!(app = %key, "reading the App for its grace period ({e}): 30 s");
                30
            }
        };
        Duration::from_secs(secs)
    }
}
