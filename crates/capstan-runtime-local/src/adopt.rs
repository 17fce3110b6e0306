//! Records and adoption: each replica's record in the store, and the replicas a previous Capstan left running —
//! found again by pid and start time, their FIFOs, probes and exit watch attached, their orphans reaped.

use super::*;

/// Why a running replica left by a previous Capstan could not be taken over.
#[derive(Debug, thiserror::Error)]
pub(crate) enum AttachError {
    /// The record says it runs but names no process.
    #[error("no pid")]
    NoPid,
    #[error("opening log: {0}")]
    Log(std::io::Error),
    /// One of its output FIFOs could not be opened.
    #[error("{}: {source}", path.display())]
    Fifo { path: PathBuf, source: std::io::Error },
    #[error("pidfd_open: {0}")]
    PidfdOpen(std::io::Error),
    /// The pidfd could not be registered with the runtime to watch for the exit (the registration's cause).
    #[error("pidfd: {0}")]
    PidfdWatch(std::io::Error),
}

impl LocalRuntime {
    pub(crate) fn adopt(&self) -> Result<(), RuntimeError> {
        for (skey, value) in self.inner.store.records("replica/")? {
            let rec: Record = match serde_json::from_value(value) {
                Ok(r) => r,
                Err(e) => {
                    tracing::warn!("dropping unreadable replica record {skey}: {e}");
                    let _ = self.inner.store.delete_record(&skey);
                    continue;
                }
            };
            let alive = match (rec.pid, rec.start_ticks) {
                (Some(pid), Some(ticks)) => {
                    matches!(process::proc_start_time(pid), Some((t, false)) if t == ticks)
                }
                _ => false,
            };
            let key = rec.key();
            if alive {
                match self.attach(rec.clone()) {
                    Ok(()) => {
                        tracing::info!(replica = %rec.name(), pid = ?rec.pid, "adopted running replica");
                        self.event(
                            &key,
                            EventType::Normal,
                            "Adopted",
                            &format!(
                                "replica {} (pid {}) adopted after a Capstan restart",
                                rec.name(),
                                rec.pid.unwrap_or(0)
                            ),
                        );
                    }
                    Err(e) => {
                        tracing::warn!(replica = %rec.name(), "cannot adopt ({e}); stopping it to start it again");
                        self.event(
                            &key,
                            EventType::Warning,
                            "AdoptFailed",
                            &format!("replica {}: {e}; restarting it", rec.name()),
                        );
                        if let Some(pid) = rec.pid {
                            process::signal_group(pid, rec.stop_signal());
                            let deadline = std::time::Instant::now() + Duration::from_secs(10);
                            while std::time::Instant::now() < deadline
                                && matches!(process::proc_start_time(pid), Some((_, false)))
                            {
                                std::thread::sleep(Duration::from_millis(50));
                            }
                            process::signal_group(pid, Signal::SIGKILL);
                        }
                        self.insert_exited(rec, "AdoptFailed");
                    }
                }
            } else {
                let was_running = rec.pid.is_some();
                if was_running {
                    self.event(
                        &key,
                        EventType::Warning,
                        "Exited",
                        &format!("replica {} exited while Capstan was down", rec.name()),
                    );
                }
                self.insert_exited(rec, "Unknown");
            }
            let _ = self.inner.notify.send(key);
        }
        Ok(())
    }

    pub(crate) fn insert_exited(&self, mut rec: Record, reason: &str) {
        if rec.pid.is_some() {
            rec.last_exit =
                Some(ExitInfo { code: None, signal: None, finished_at: Utc::now(), reason: reason.to_string() });
            rec.crash_streak += 1;
        }
        rec.pid = None;
        rec.start_ticks = None;
        self.persist(&rec);
        lock(&self.inner.replicas)
            .insert((rec.key(), rec.ordinal), Replica::without_process(rec, ReplicaState::Exited));
    }

    /// Re-attaches to a running process that a previous Capstan started.
    #[allow(unsafe_code)] // each block below says why it is sound (SAFETY)
    pub(crate) fn attach(&self, rec: Record) -> Result<(), AttachError> {
        let pid = rec.pid.ok_or(AttachError::NoPid)?;
        let (out, err) = self.fifo_paths(&rec);
        let writer = self.open_writer(&rec).map_err(AttachError::Log)?;
        let (stop_tasks, stop_rx) = watch::channel(false);
        let (exited_tx, exited) = watch::channel(false);
        let readers = [(out, "stdout"), (err, "stderr")]
            .into_iter()
            .map(|(p, s)| open_fifo_reader(&p).map(|r| (r, s)).map_err(|source| AttachError::Fifo { path: p, source }))
            .collect::<Result<Vec<_>, _>>()?;
        let pidfd = process::pidfd_open(pid).map_err(AttachError::PidfdOpen)?;
        // SAFETY: the OwnedFd is moved into the AsyncFd, stays open for its whole life and keeps its number.
        let pidfd = unsafe { AsyncFd::register(pidfd) }.map_err(|e| AttachError::PidfdWatch(e.into()))?;
        for (r, s) in readers {
            tokio::spawn(logs::pump(r, s, writer.clone(), stop_rx.clone()));
        }
        let key = rec.key();
        let ordinal = rec.ordinal;
        // Registered before its probes start, so that no probe result is lost (see `start`).
        let probed = rec.clone();
        lock(&self.inner.replicas).insert((key.clone(), ordinal), Replica::running(rec, stop_tasks, exited));
        self.spawn_probes(&probed, stop_rx.clone());
        let rt = self.clone();
        tokio::spawn(async move {
            let _ = pidfd.readable().await;
            rt.on_exit(&key, ordinal, None, exited_tx);
        });
        Ok(())
    }

    /// The marker in the environment of every process of this run of a replica (none for runs started by a
    /// Capstan that set no marker).
    pub(crate) fn marker(&self, rec: &Record) -> Option<String> {
        rec.env.iter().find(|(k, _)| k == escape::MARKER_ENV).map(|(_, v)| v.clone())
    }

    /// Reaps the zombies of processes that left their replicas and were re-parented to Capstan. Blocking: reads
    /// /proc. Replicas' main processes, known or being launched, are left to the tasks that wait for them.
    pub(crate) fn reap_orphans(&self) {
        let launching = lock(&self.inner.launching);
        let mut mains: HashSet<u32> = self.pids().into_iter().collect();
        mains.extend(launching.iter().copied());
        escape::reap_orphans(&mains);
    }
}
