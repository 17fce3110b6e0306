//! The boundary between the engine and a runtime: what a runtime reports and what it must be able to do.

use std::collections::BTreeMap;
use std::future::Future;
use std::time::Duration;

use capstan_model::{App, ExitInfo, ObjectKey};
use chrono::{DateTime, Utc};

/// Where a replica's process is in its life.
#[derive(Debug, Clone, PartialEq)]
pub enum ReplicaState {
    /// The process runs.
    Running,
    /// A stop was requested; the process has not exited yet.
    Stopping,
    /// The process exited (see `last_exit`).
    Exited,
    /// The process could not be started (missing program, port taken, …).
    StartFailed(String),
    /// The process is not started yet because something it needs is not there yet (its Database's credentials);
    /// a dependency on its way, not a failure.
    Waiting(String),
}

/// Why a replica did not start.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum StartError {
    /// Something the replica needs is not there yet; the start is tried again, and nothing counts as failed.
    #[error("{0}")]
    Waiting(String),
    /// The start failed (missing program, port taken, …).
    #[error("{0}")]
    Failed(String),
}

/// What a runtime knows about one replica.
#[derive(Debug, Clone, PartialEq)]
pub struct ObservedReplica {
    pub ordinal: u32,
    /// The App revision the process was started from.
    pub revision: String,
    pub state: ReplicaState,
    pub pid: Option<u32>,
    pub ports: BTreeMap<String, u16>,
    /// Restarts counted for the user (crashes and failed liveness probes).
    pub restarts: u32,
    /// Exits in a row that came sooner than the backoff reset time.
    pub crash_streak: u32,
    pub started_at: Option<DateTime<Utc>>,
    pub last_exit: Option<ExitInfo>,
    /// The readiness probe passes (or there is none and the process runs).
    pub ready: bool,
    /// Since when it has been ready without interruption.
    pub ready_since: Option<DateTime<Utc>>,
    /// The startup or liveness probe failed past its threshold; the message says which and why.
    pub unhealthy: Option<String>,
    /// The last readiness failure, for status.
    pub probe_message: Option<String>,
}

impl ObservedReplica {
    /// A replica in its initial state, for tests and runtimes.
    pub fn new(ordinal: u32, revision: &str) -> Self {
        ObservedReplica {
            ordinal,
            revision: revision.to_string(),
            state: ReplicaState::Running,
            pid: None,
            ports: BTreeMap::new(),
            restarts: 0,
            crash_streak: 0,
            started_at: None,
            last_exit: None,
            ready: false,
            ready_since: None,
            unhealthy: None,
            probe_message: None,
        }
    }
}

/// What a runtime does for the App controller. Calls return quickly; slow work (graceful stops) goes on in
/// the background, and the runtime tells the controller through its notifier when anything changed.
pub trait AppRuntime: Send + Sync + 'static {
    /// Every replica the runtime has for an App, running or not.
    fn observe(&self, app: &ObjectKey) -> Vec<ObservedReplica>;
    /// Starts (or starts again) one replica from the App's current spec.
    /// `count_restart` says whether this start counts as a restart for the user.
    fn start(&self, app: &App, ordinal: u32, revision: &str, count_restart: bool) -> Result<(), StartError>;
    /// Stops a replica gracefully (SIGTERM, grace period, SIGKILL); with `forget`, drops it afterwards.
    fn stop(&self, app: &ObjectKey, ordinal: u32, grace: Duration, forget: bool);
    /// Every App the runtime has replicas for.
    fn known_apps(&self) -> Vec<ObjectKey>;
    /// Limits of this App that the runtime cannot enforce, in words.
    fn warnings(&self, app: &App) -> Vec<String>;
    /// Stops every replica gracefully and waits for them.
    fn shutdown(&self) -> impl Future<Output = ()> + Send;
    /// Where an App's volumes are and how much they hold.
    fn volumes(&self, _app: &App) -> Vec<capstan_model::VolumeStatus> {
        Vec::new()
    }
    /// The App is deleted and none of its replicas runs any more: free what it held (volumes whose reclaim
    /// policy is Delete). Data under `Retain` stays.
    fn release(&self, _app: &ObjectKey) {}
}
