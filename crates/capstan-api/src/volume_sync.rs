//! Volume sync: make one replica's volume a copy of another's — drain and stop the target, copy while the source
//! serves, freeze the source for a last pass over what changed, swap the copy in, start the target again.

use std::time::{Duration, Instant};

use capstan_engine::controller::hold_record;
use capstan_engine::{AppRuntime, ReplicaState};
use capstan_model::{App, EventType, ObjectKey, Resource, VolumeScope};
use capstan_runtime_local::volume_copy::CopyError;
use capstan_runtime_local::volumes::{volume_dir, MirrorStats, Replace};
use serde::Serialize;

use crate::plane::Shared;

/// What a sync did.
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct SyncReport {
    pub volume: String,
    pub from: u32,
    pub to: u32,
    /// The copy made while the source kept serving.
    pub live: MirrorStats,
    /// The last pass, with the source frozen.
    pub frozen: MirrorStats,
    pub frozen_millis: u64,
    pub took_millis: u64,
}

/// Why a sync was refused or failed; the status code the API answers with.
#[derive(Debug)]
pub struct SyncError {
    pub code: u16,
    pub message: String,
}

fn refuse(code: u16, message: impl Into<String>) -> SyncError {
    SyncError { code, message: message.into() }
}

/// The targets being synced now, by hold record.
static RUNNING: std::sync::Mutex<std::collections::BTreeSet<String>> =
    std::sync::Mutex::new(std::collections::BTreeSet::new());

/// A target claimed for one sync until dropped.
struct Running(String);

impl Running {
    fn claim(hold: &str) -> Option<Running> {
        let mut set = RUNNING.lock().unwrap_or_else(|p| p.into_inner());
        set.insert(hold.to_string()).then(|| Running(hold.to_string()))
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        RUNNING.lock().unwrap_or_else(|p| p.into_inner()).remove(&self.0);
    }
}

/// Releases the holds a sync left when Capstan stopped in the middle of it (no sync outlives its process): the
/// replicas start again, and their volumes are put back or refused as `volumes::prepare` decides.
pub fn release_stale_holds(store: &capstan_store::Store) -> Result<usize, capstan_store::StoreError> {
    let stale = store.records("hold/")?;
    for (k, _) in &stale {
        tracing::warn!("releasing {k}: a volume sync did not finish before Capstan stopped");
        store.delete_record(k)?;
    }
    Ok(stale.len())
}

/// Runs a copy step off the async workers.
async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> Result<T, CopyError> + Send + 'static,
) -> Result<T, SyncError> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| refuse(500, e.to_string()))?
        .map_err(|e| refuse(500, format!("volume copy failed: {e}")))
}

/// Keeps a process group stopped (SIGSTOP) until dropped (SIGCONT), so an error cannot leave it frozen.
struct Frozen(nix::unistd::Pid);

impl Frozen {
    fn new(pid: u32) -> Result<Frozen, SyncError> {
        let group = nix::unistd::Pid::from_raw(-(pid as i32));
        nix::sys::signal::kill(group, nix::sys::signal::Signal::SIGSTOP)
            .map_err(|e| refuse(500, format!("cannot pause the source replica: {e}")))?;
        Ok(Frozen(group))
    }
}

impl Drop for Frozen {
    fn drop(&mut self) {
        let _ = nix::sys::signal::kill(self.0, nix::sys::signal::Signal::SIGCONT);
    }
}

/// Syncs `volume` of replica `from` onto replica `to`.
pub async fn sync_volume(
    shared: &Shared,
    key: &ObjectKey,
    volume: &str,
    from: u32,
    to: u32,
) -> Result<SyncReport, SyncError> {
    let started = Instant::now();
    let app: App = match shared.store.get(key).map_err(|e| refuse(500, e.to_string()))?.map(Resource::from_value) {
        Some(Ok(Resource::App(a))) => a,
        _ => return Err(refuse(404, format!("App \"{}\" not found in namespace {}", key.name, key.namespace))),
    };
    let Some(vol) = app.spec.volumes.iter().find(|v| v.name == volume) else {
        let names: Vec<&str> = app.spec.volumes.iter().map(|v| v.name.as_str()).collect();
        return Err(refuse(422, format!("App {} has no volume `{volume}` (volumes: {})", key.name, names.join(", "))));
    };
    if vol.scope != VolumeScope::Replica {
        return Err(refuse(422, format!("volume `{volume}` is shared: every replica already sees the same directory")));
    }
    if from == to {
        return Err(refuse(422, "--from and --to name the same replica"));
    }
    let replicas = app.spec.replicas.max(0) as u32;
    if from >= replicas || to >= replicas {
        return Err(refuse(422, format!("App {} runs replicas 0 to {}", key.name, replicas.saturating_sub(1))));
    }
    let rt = &shared.runtime;
    let source_pid = rt
        .observe(key)
        .into_iter()
        .find(|r| r.ordinal == from && r.state == ReplicaState::Running)
        .and_then(|r| r.pid)
        .ok_or_else(|| {
            refuse(409, format!("replica {}-{from} is not running; its volume may be mid-write", key.name))
        })?;
    let dir = volume_dir(rt.data_dir(), key, volume);
    let (src, dst) = (dir.join(format!("replica-{from}")), dir.join(format!("replica-{to}")));
    if !src.is_dir() {
        return Err(refuse(409, format!("replica {}-{from} has no `{volume}` directory yet", key.name)));
    }

    // One sync per target at a time: a second one would share the staging directory and release the hold early.
    let hold = hold_record(key, to);
    let Some(_running) = Running::claim(&hold) else {
        return Err(refuse(409, format!("a volume sync onto {}-{to} is already in progress", key.name)));
    };
    // Hold the target stopped, then stop it (draining first).
    shared
        .store
        .put_record(&hold, &serde_json::json!({"volume": volume, "from": from}))
        .map_err(|e| refuse(500, e.to_string()))?;
    let result = async {
        let grace = Duration::from_secs(u64::from(app.spec.termination_grace_period_seconds));
        // Forgotten once stopped: the restart afterwards is a fresh start, not a crash counted against the replica.
        rt.stop(key, to, grace, true);
        let deadline = Instant::now() + grace + Duration::from_secs(10);
        while rt
            .observe(key)
            .iter()
            .any(|r| r.ordinal == to && matches!(r.state, ReplicaState::Running | ReplicaState::Stopping))
        {
            if Instant::now() > deadline {
                return Err(refuse(500, format!("replica {}-{to} did not stop", key.name)));
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        // Build the copy beside the target (hard links to its files, so only what differs is copied) and swap it in
        // by rename: the target never sees a half-done copy, and its previous contents stay until the copy verifies.
        let (s, d) = (src.clone(), dst.clone());
        let (mut replace, live) = blocking(move || {
            let mut r = Replace::begin(&s, &d)?;
            match r.pass() {
                Ok(live) => Ok((r, live)),
                Err(e) => {
                    r.abort();
                    Err(e)
                }
            }
        })
        .await?;
        let frozen_at = Instant::now();
        let freeze = match Frozen::new(source_pid) {
            Ok(f) => f,
            Err(e) => {
                replace.abort();
                return Err(e);
            }
        };
        let (replace, frozen) = blocking(move || match replace.pass() {
            Ok(stats) => Ok((replace, stats)),
            Err(e) => {
                replace.abort();
                Err(e)
            }
        })
        .await?;
        drop(freeze);
        let frozen_millis = frozen_at.elapsed().as_millis() as u64;
        // Read back and compared with what the frozen pass saw; a mismatch puts the target's contents back.
        blocking(move || replace.commit()).await?;
        Ok(SyncReport {
            volume: volume.to_string(),
            from,
            to,
            live,
            frozen,
            frozen_millis,
            took_millis: started.elapsed().as_millis() as u64,
        })
    }
    .await;
    let _ = shared.store.delete_record(&hold);
    rt.poke(key);
    match &result {
        Ok(r) => {
            let msg = format!(
                "volume {volume}: {}-{from} → {}-{to}, {} files, {} bytes; source paused {} ms",
                key.name,
                key.name,
                r.live.files + r.frozen.files,
                r.live.bytes + r.frozen.bytes,
                r.frozen_millis
            );
            let _ = shared.store.record_event(key, EventType::Normal, "VolumeSynced", &msg);
        }
        Err(e) => {
            let _ = shared.store.record_event(key, EventType::Warning, "VolumeSyncFailed", &e.message);
        }
    }
    result
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A sync cannot outlive its Capstan: holds found at start are released so the replicas run again.
    #[test]
    fn holds_left_by_a_stopped_capstan_are_released() {
        let dir = tempfile::tempdir().unwrap();
        let store = capstan_store::Store::open(&dir.path().join("state.redb")).unwrap();
        let key = ObjectKey::new("App", "default", "idx");
        store.put_record(&hold_record(&key, 1), &serde_json::json!({"volume": "index", "from": 0})).unwrap();
        store.put_record("volumes/default/idx", &serde_json::json!({})).unwrap();
        assert_eq!(release_stale_holds(&store).unwrap(), 1);
        assert!(store.records("hold/").unwrap().is_empty());
        assert_eq!(store.records("volumes/").unwrap().len(), 1, "other records stay");
    }

    #[test]
    fn one_sync_per_target_at_a_time() {
        let first = Running::claim("hold/default/idx/1").expect("free");
        assert!(Running::claim("hold/default/idx/1").is_none(), "taken");
        assert!(Running::claim("hold/default/idx/2").is_some(), "another target is free");
        drop(first);
        assert!(Running::claim("hold/default/idx/1").is_some(), "free again");
    }
}
