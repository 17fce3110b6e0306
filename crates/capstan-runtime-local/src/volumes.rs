//! Volumes on this machine: one directory per replica ordinal or one shared by all, under the data directory,
//! kept unless the App is deleted with `reclaimPolicy: Delete`; their usage, measured at most every 15 seconds.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use capstan_model::{App, ObjectKey, ReclaimPolicy, Volume, VolumeScope, VolumeStatus};
use capstan_store::{Store, StoreError};
use serde::{Deserialize, Serialize};

use crate::volume_copy::CopyError;
pub use crate::volume_copy::{MirrorStats, Replace};

/// How long a measured usage is reused.
const USAGE_TTL: Duration = Duration::from_secs(15);

/// The directory of one volume of an App; replica volumes hold one `replica-<ordinal>` directory each.
pub fn volume_dir(data_dir: &Path, app: &ObjectKey, volume: &str) -> PathBuf {
    data_dir.join("volumes").join(&app.namespace).join(&app.name).join(volume)
}

/// The path handed to replica `ordinal` for `volume`.
pub fn volume_path(data_dir: &Path, app: &ObjectKey, volume: &Volume, ordinal: u32) -> PathBuf {
    let dir = volume_dir(data_dir, app, &volume.name);
    match volume.scope {
        VolumeScope::Shared => dir.join("shared"),
        VolumeScope::Replica => dir.join(format!("replica-{ordinal}")),
    }
}

/// What the runtime remembers of an App's volumes, so it can honour their reclaim policy after the App is gone.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
struct VolumeRecord {
    policies: std::collections::BTreeMap<String, ReclaimPolicy>,
}

fn record_key(app: &ObjectKey) -> String {
    format!("volumes/{}/{}", app.namespace, app.name)
}

/// Why the volumes of a replica could not be prepared.
#[derive(Debug, thiserror::Error)]
pub enum VolumeError {
    /// A sync that did not finish left the volume's previous contents aside: they could not be put back, or they
    /// sit beside newer data and someone must choose.
    #[error("volume {volume}: {source}")]
    Sync { volume: String, source: CopyError },
    /// The volume's directory could not be created.
    #[error("creating volume {volume} at {}: {source}", path.display())]
    Create { volume: String, path: PathBuf, source: std::io::Error },
    /// The record of the volumes' reclaim policies could not be encoded.
    #[error("{0}")]
    Encode(serde_json::Error),
    /// The record of the volumes' reclaim policies could not be read or stored.
    #[error("recording volumes: {0}")]
    Record(StoreError),
}

/// Creates the directories replica `ordinal` needs and returns the environment variables naming them.
pub fn prepare(store: &Store, data_dir: &Path, app: &App, ordinal: u32) -> Result<Vec<(String, String)>, VolumeError> {
    let key = ObjectKey::new("App", app.metadata.namespace(), &app.metadata.name);
    let mut env = Vec::new();
    if app.spec.volumes.is_empty() {
        return Ok(env);
    }
    // A record that cannot be read is an error: starting afresh would overwrite the reclaim policies it keeps.
    let mut rec: VolumeRecord = store
        .records(&record_key(&key))
        .map_err(VolumeError::Record)?
        .into_iter()
        .next()
        .and_then(|(_, v)| serde_json::from_value(v).ok())
        .unwrap_or_default();
    for v in &app.spec.volumes {
        let path = volume_path(data_dir, &key, v, ordinal);
        // A sync that did not finish may have left the replica's data aside: it goes back, or (beside newer data)
        // the replica waits for someone to choose rather than start on the wrong one.
        let sync = |source| VolumeError::Sync { volume: v.name.clone(), source };
        crate::volume_copy::recover(&path).map_err(sync)?;
        if let Some(e) = crate::volume_copy::leftover(&path) {
            return Err(sync(e));
        }
        if !path.is_dir() {
            let create = |source| VolumeError::Create { volume: v.name.clone(), path: path.clone(), source };
            std::fs::create_dir_all(&path).map_err(create)?;
            use std::os::unix::fs::PermissionsExt;
            let _ = std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o700));
        }
        env.push((v.env.clone(), path.display().to_string()));
        rec.policies.insert(v.name.clone(), v.reclaim_policy);
    }
    let value = serde_json::to_value(&rec).map_err(VolumeError::Encode)?;
    store.put_record(&record_key(&key), &value).map_err(VolumeError::Record)?;
    Ok(env)
}

/// Deletes the volumes of a deleted App whose policy is Delete; the others stay where they are.
pub fn release(store: &Store, data_dir: &Path, app: &ObjectKey) {
    let Ok(records) = store.records(&record_key(app)) else { return };
    for (k, v) in records {
        if k != record_key(app) {
            continue;
        }
        let rec: VolumeRecord = serde_json::from_value(v).unwrap_or_default();
        for (name, policy) in &rec.policies {
            if *policy == ReclaimPolicy::Delete {
                let dir = volume_dir(data_dir, app, name);
                if let Err(e) = std::fs::remove_dir_all(&dir) {
                    if e.kind() != std::io::ErrorKind::NotFound {
                        tracing::warn!(app = %app, "deleting volume {name} at {}: {e}", dir.display());
                    }
                } else {
                    tracing::info!(app = %app, "deleted volume {name} (reclaimPolicy Delete)");
                }
            }
        }
        let _ = store.delete_record(&k);
    }
    // Leave no empty directories behind; directories that still hold retained data stay.
    let app_dir = data_dir.join("volumes").join(&app.namespace).join(&app.name);
    let _ = std::fs::remove_dir(&app_dir);
}

/// The ordinal of a `replica-<N>` directory; `None` for anything else (a sync's `replica-1.sync`, say).
fn replica_ordinal(name: &str) -> Option<u32> {
    name.strip_prefix("replica-")?.parse().ok()
}

fn du(path: &Path) -> u64 {
    let Ok(meta) = std::fs::symlink_metadata(path) else { return 0 };
    if !meta.is_dir() {
        return meta.len();
    }
    std::fs::read_dir(path).into_iter().flatten().flatten().map(|e| du(&e.path())).sum()
}

/// Measured usage, cached per App.
#[derive(Default)]
pub struct Usage {
    cache: Mutex<HashMap<ObjectKey, (Instant, Vec<VolumeStatus>)>>,
}

impl Usage {
    /// Drops what was measured for an App.
    pub fn forget(&self, app: &ObjectKey) {
        self.cache.lock().unwrap_or_else(|p| p.into_inner()).remove(app);
    }

    /// Where an App's volumes are and how much they hold.
    pub fn of(&self, data_dir: &Path, app: &App) -> Vec<VolumeStatus> {
        if app.spec.volumes.is_empty() {
            return Vec::new();
        }
        let key = ObjectKey::new("App", app.metadata.namespace(), &app.metadata.name);
        let mut cache = self.cache.lock().unwrap_or_else(|p| p.into_inner());
        if let Some((at, v)) = cache.get(&key) {
            let same =
                v.len() == app.spec.volumes.len() && v.iter().zip(&app.spec.volumes).all(|(a, b)| a.name == b.name);
            if at.elapsed() < USAGE_TTL && same {
                return v.clone();
            }
        }
        let out: Vec<VolumeStatus> = app
            .spec
            .volumes
            .iter()
            .map(|v| {
                let dir = volume_dir(data_dir, &key, &v.name);
                let mut paths: Vec<PathBuf> = match v.scope {
                    VolumeScope::Shared => vec![dir.join("shared")],
                    VolumeScope::Replica => std::fs::read_dir(&dir)
                        .into_iter()
                        .flatten()
                        .flatten()
                        .map(|e| e.path())
                        .filter(|p| p.file_name().and_then(|n| replica_ordinal(&n.to_string_lossy())).is_some())
                        .collect(),
                };
                paths.sort_by_key(|p| p.file_name().and_then(|n| replica_ordinal(&n.to_string_lossy())));
                VolumeStatus {
                    name: v.name.clone(),
                    scope: v.scope,
                    used_bytes: paths.iter().map(|p| du(p)).sum(),
                    paths: paths.iter().map(|p| p.display().to_string()).collect(),
                }
            })
            .collect();
        cache.insert(key, (Instant::now(), out.clone()));
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn volume_errors_read_as_before() {
        let denied = || std::io::Error::from(std::io::ErrorKind::PermissionDenied);
        let path = PathBuf::from("/d/data/replica-0");
        let e = VolumeError::Create { volume: "data".into(), path, source: denied() };
        assert_eq!(e.to_string(), format!("creating volume data at /d/data/replica-0: {}", denied()));
        let leftover = CopyError::Leftover { prev: "/d/data/replica-0.prev".into(), dst: "/d/data/replica-0".into() };
        let text = leftover.to_string();
        let e = VolumeError::Sync { volume: "data".into(), source: leftover };
        assert_eq!(e.to_string(), format!("volume data: {text}"));
    }
}
