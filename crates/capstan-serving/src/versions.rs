//! The versions of one model: numbered directories under the base path, loaded and unloaded as the version policy
//! says, polled for changes. A version is swapped in only once fully loaded, so requests never wait or fail for it;
//! a version that cannot be loaded is reported and the ones already serving keep serving.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};
use std::time::SystemTime;

use crate::model::Loaded;

/// The file each version directory holds.
pub const MODEL_FILE: &str = "model.onnx";

/// Which versions are served (TF Serving's model_version_policy).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum VersionPolicy {
    /// The `n` highest versions (TF Serving's default is 1).
    Latest(usize),
    /// Every version found.
    All,
    /// Exactly these versions.
    Specific(Vec<u64>),
}

impl VersionPolicy {
    /// Which of `found` (ascending) to serve.
    pub fn select(&self, found: &[u64]) -> Vec<u64> {
        match self {
            VersionPolicy::Latest(n) => found.iter().rev().take((*n).max(1)).copied().collect(),
            VersionPolicy::All => found.to_vec(),
            VersionPolicy::Specific(v) => found.iter().filter(|x| v.contains(x)).copied().collect(),
        }
    }
}

/// TF Serving's version states.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum State {
    Start,
    Loading,
    Available,
    Unloading,
    End,
}

impl State {
    pub fn as_str(self) -> &'static str {
        match self {
            State::Start => "START",
            State::Loading => "LOADING",
            State::Available => "AVAILABLE",
            State::Unloading => "UNLOADING",
            State::End => "END",
        }
    }
}

/// One version as reported.
#[derive(Clone)]
pub struct Version {
    pub state: State,
    /// Why it could not be loaded.
    pub error: Option<String>,
    pub model: Option<Arc<Loaded>>,
    /// The file's identity when it was (tried to be) loaded: a rewritten or replaced file is tried again.
    stamp: Option<Stamp>,
}

/// What tells one file's content from another's without reading it: the inode (a file renamed into place is a new
/// one), size, modification and change times (a copy that keeps the old modification time still changes `ctime`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Stamp {
    inode: u64,
    len: u64,
    modified: Option<SystemTime>,
    changed: (i64, i64),
}

/// A model's versions, shared between the poller and request handlers.
pub struct ModelVersions {
    pub name: String,
    pub base: PathBuf,
    pub policy: VersionPolicy,
    versions: RwLock<BTreeMap<u64, Version>>,
    /// The versions the policy picked at the last poll.
    wanted: RwLock<Vec<u64>>,
}

/// What one poll did, for logs and tests.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct PollReport {
    pub loaded: Vec<u64>,
    pub failed: Vec<(u64, String)>,
    pub unloaded: Vec<u64>,
}

fn stamp(p: &Path) -> Option<Stamp> {
    use std::os::unix::fs::MetadataExt;
    let m = std::fs::metadata(p).ok()?;
    Some(Stamp { inode: m.ino(), len: m.len(), modified: m.modified().ok(), changed: (m.ctime(), m.ctime_nsec()) })
}

impl ModelVersions {
    pub fn new(name: &str, base: &Path, policy: VersionPolicy) -> ModelVersions {
        ModelVersions {
            name: name.into(),
            base: base.into(),
            policy,
            versions: RwLock::new(BTreeMap::new()),
            wanted: RwLock::new(Vec::new()),
        }
    }

    /// Numbered directories under the base path that hold a model file, ascending.
    pub fn found(&self) -> Vec<u64> {
        let mut v: Vec<u64> = std::fs::read_dir(&self.base)
            .into_iter()
            .flatten()
            .flatten()
            .filter_map(|e| e.file_name().to_str()?.parse::<u64>().ok())
            .filter(|v| self.base.join(v.to_string()).join(MODEL_FILE).is_file())
            .collect();
        v.sort_unstable();
        v
    }

    /// Looks at the base path once: loads wanted versions that are new (or whose file changed), then unloads the
    /// ones no longer wanted — only after what replaces them is available. Blocking (loading optimises a graph).
    pub fn poll(&self) -> PollReport {
        let mut report = PollReport::default();
        let wanted = self.policy.select(&self.found());
        *self.wanted.write().unwrap_or_else(|p| p.into_inner()) = wanted.clone();
        for v in &wanted {
            let path = self.base.join(v.to_string()).join(MODEL_FILE);
            let st = stamp(&path);
            let known = self.read().get(v).map(|x| x.stamp);
            if known.is_some_and(|s| s == st) {
                continue;
            }
            if known.is_none() {
                self.write().insert(*v, Version { state: State::Loading, error: None, model: None, stamp: None });
            }
            match Loaded::load(&path) {
                Ok(m) => {
                    self.write().insert(
                        *v,
                        Version { state: State::Available, error: None, model: Some(Arc::new(m)), stamp: st },
                    );
                    report.loaded.push(*v);
                }
                Err(e) => {
                    let msg = e.to_string();
                    let mut w = self.write();
                    let entry =
                        w.entry(*v).or_insert(Version { state: State::End, error: None, model: None, stamp: None });
                    // A rewritten file that does not load leaves the previous load of this version serving.
                    if entry.model.is_none() {
                        entry.state = State::End;
                    }
                    entry.error = Some(msg.clone());
                    entry.stamp = st;
                    report.failed.push((*v, msg));
                }
            }
        }
        // Unload what the policy no longer wants, but never the last available version while no wanted one is.
        let any_wanted_available =
            wanted.iter().any(|v| self.read().get(v).is_some_and(|x| x.state == State::Available));
        let gone: Vec<u64> = self
            .read()
            .iter()
            .filter(|(v, x)| !wanted.contains(v) && x.state == State::Available)
            .map(|(v, _)| *v)
            .collect();
        if any_wanted_available {
            let mut w = self.write();
            for v in gone {
                if let Some(x) = w.get_mut(&v) {
                    x.state = State::End;
                    x.model = None;
                    report.unloaded.push(v);
                }
            }
        }
        report
    }

    fn read(&self) -> std::sync::RwLockReadGuard<'_, BTreeMap<u64, Version>> {
        self.versions.read().unwrap_or_else(|p| p.into_inner())
    }

    fn write(&self) -> std::sync::RwLockWriteGuard<'_, BTreeMap<u64, Version>> {
        self.versions.write().unwrap_or_else(|p| p.into_inner())
    }

    /// The versions the policy picked from what the base path held at the last poll, highest first.
    pub fn wanted(&self) -> Vec<u64> {
        self.wanted.read().unwrap_or_else(|p| p.into_inner()).clone()
    }

    /// Every version known, with its state.
    pub fn list(&self) -> Vec<(u64, Version)> {
        self.read().iter().map(|(v, x)| (*v, x.clone())).collect()
    }

    /// The model to answer with: version `v`, or the highest available.
    pub fn get(&self, v: Option<u64>) -> Option<(u64, Arc<Loaded>)> {
        let r = self.read();
        match v {
            Some(v) => r.get(&v).and_then(|x| x.model.clone().map(|m| (v, m))),
            None => r.iter().rev().find_map(|(v, x)| x.model.clone().map(|m| (*v, m))),
        }
    }

    /// Whether some version is available.
    pub fn ready(&self) -> bool {
        self.get(None).is_some()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn policies_pick_versions() {
        let found = [1, 2, 5, 7];
        assert_eq!(VersionPolicy::Latest(1).select(&found), vec![7]);
        assert_eq!(VersionPolicy::Latest(2).select(&found), vec![7, 5]);
        assert_eq!(VersionPolicy::All.select(&found), vec![1, 2, 5, 7]);
        assert_eq!(VersionPolicy::Specific(vec![2, 3]).select(&found), vec![2]);
    }

    #[test]
    fn a_corrupt_version_is_reported_and_nothing_else_changes() {
        let dir = tempfile::tempdir().expect("tempdir");
        std::fs::create_dir_all(dir.path().join("3")).expect("dir");
        std::fs::write(dir.path().join("3").join(MODEL_FILE), b"not an onnx model").expect("write");
        std::fs::create_dir_all(dir.path().join("notanumber")).expect("dir");
        let m = ModelVersions::new("m", dir.path(), VersionPolicy::Latest(1));
        assert_eq!(m.found(), vec![3]);
        let r = m.poll();
        assert_eq!(r.failed.len(), 1, "{r:?}");
        assert!(r.failed[0].1.contains("cannot load"), "{r:?}");
        assert!(!m.ready());
        let (_, v) = &m.list()[0];
        assert_eq!(v.state, State::End);
        assert!(v.error.is_some());
        // The same file is not tried again at every poll.
        assert_eq!(m.poll(), PollReport::default());
    }

    /// Issue 20, item 3: a version whose file is replaced after a failed load is tried again, even when the new file
    /// keeps the old one's modification time; and a deleted version is unloaded once a wanted one is available.
    #[test]
    fn a_replaced_file_is_tried_again_and_a_deleted_version_leaves() {
        let dir = tempfile::tempdir().expect("tempdir");
        let put = |v: u64, bytes: &[u8]| {
            let d = dir.path().join(v.to_string());
            std::fs::create_dir_all(&d).expect("dir");
            std::fs::write(d.join("tmp"), bytes).expect("write");
            std::fs::rename(d.join("tmp"), d.join(MODEL_FILE)).expect("rename");
        };
        let good = crate::fixtures::linear(&[1.0, 2.0], 0.0);
        let mut bad = good.clone();
        bad.truncate(good.len() / 2);
        put(1, &bad);
        put(2, &good);
        let m = ModelVersions::new("m", dir.path(), VersionPolicy::Latest(1));
        m.poll();
        assert_eq!(m.get(None).map(|(v, _)| v), Some(2));
        assert_eq!(m.wanted(), vec![2]);

        // 2 deleted: 1 (broken) is wanted; 2 keeps serving meanwhile.
        std::fs::remove_dir_all(dir.path().join("2")).expect("rm");
        let r = m.poll();
        assert_eq!(r.failed.len(), 1, "{r:?}");
        assert_eq!(m.wanted(), vec![1]);
        assert_eq!(m.get(None).map(|(v, _)| v), Some(2), "the last available version keeps serving");
        assert_eq!(m.poll(), PollReport::default(), "the same broken file is not tried at every poll");

        // 1 replaced by a loadable file with the same modification time: tried again, and 2 leaves.
        let old = std::fs::metadata(dir.path().join("1").join(MODEL_FILE)).and_then(|x| x.modified()).expect("mtime");
        put(1, &good);
        let f = std::fs::File::options().write(true).open(dir.path().join("1").join(MODEL_FILE)).expect("open");
        f.set_modified(old).expect("set mtime");
        let r = m.poll();
        assert_eq!((r.loaded, r.unloaded), (vec![1], vec![2]));
        assert_eq!(m.get(None).map(|(v, _)| v), Some(1));
    }

    /// Issue 20, item 7: an input dimension with neither a size nor a name is accepted as a named one is.
    #[test]
    fn an_unnamed_dynamic_dimension_loads() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join(MODEL_FILE);
        std::fs::write(&path, crate::fixtures::linear_unnamed_batch(&[3.0, -2.0], 0.5)).expect("write");
        let m = Loaded::load(&path).expect("loads");
        assert_eq!(m.inputs[0].dims, vec![-1, 2]);
        let out =
            m.run(vec![crate::model::Dense { shape: vec![2, 2], values: vec![1.0, 1.0, 0.0, 1.0] }]).expect("run");
        assert_eq!(out[0].values, vec![1.5, -1.5]);
    }
}
