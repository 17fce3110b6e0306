//! Resource limits: cgroup v2 (memory.max, cpu.max) where delegated to us, RLIMIT_DATA otherwise.

use std::path::{Path, PathBuf};

use capstan_model::quantity::{parse_bytes, parse_millicpu};
use capstan_model::Resources;

use crate::process::ChildLimits;

/// How this machine lets Capstan enforce limits.
#[derive(Debug, Clone)]
pub enum LimitSupport {
    /// A cgroup v2 subtree with the memory and cpu controllers enabled for our children.
    CgroupV2 { base: PathBuf },
    /// No usable cgroup v2; memory falls back to RLIMIT_DATA and CPU is not enforced.
    Rlimit { reason: String },
}

fn own_cgroup() -> Option<PathBuf> {
    let text = std::fs::read_to_string("/proc/self/cgroup").ok()?;
    let path = text.lines().find_map(|l| l.strip_prefix("0::"))?;
    Some(Path::new("/sys/fs/cgroup").join(path.trim_start_matches('/')))
}

impl LimitSupport {
    /// Looks for a cgroup v2 subtree we may manage: our own cgroup must offer memory and cpu, and we move
    /// ourselves into a `supervisor` leaf so that replica cgroups can be siblings of it.
    pub fn detect() -> LimitSupport {
        let Some(base) = own_cgroup() else {
            return LimitSupport::Rlimit {
                reason: "no cgroup v2 hierarchy (/proc/self/cgroup has no 0:: entry)".into(),
            };
        };
        let controllers = std::fs::read_to_string(base.join("cgroup.controllers")).unwrap_or_default();
        let has = |c: &str| controllers.split_whitespace().any(|x| x == c);
        if !(has("memory") && has("cpu")) {
            return LimitSupport::Rlimit {
                reason: format!("the cgroup v2 memory and cpu controllers are not available in {}", base.display()),
            };
        }
        let leaf = base.join("capstan-supervisor");
        let setup = std::fs::create_dir_all(&leaf)
            .and_then(|_| std::fs::write(leaf.join("cgroup.procs"), std::process::id().to_string()))
            .and_then(|_| std::fs::write(base.join("cgroup.subtree_control"), "+memory +cpu"));
        match setup {
            Ok(()) => LimitSupport::CgroupV2 { base },
            Err(e) => LimitSupport::Rlimit { reason: format!("cannot manage cgroups under {}: {e}", base.display()) },
        }
    }

    /// What cannot be enforced for these resources, in words for the App's status.
    pub fn warnings(&self, r: Option<&Resources>) -> Vec<String> {
        let (LimitSupport::Rlimit { reason }, Some(r)) = (self, r) else {
            return Vec::new();
        };
        let mut out = Vec::new();
        if let Some(m) = &r.memory {
            out.push(format!(
                "memory limit {m} is enforced with RLIMIT_DATA (heap and private mappings), not cgroup v2: {reason}"
            ));
        }
        if let Some(c) = &r.cpu {
            out.push(format!("cpu limit {c} cannot be enforced: {reason}"));
        }
        out
    }

    /// Prepares limits for one replica (creating its cgroup when cgroup v2 is in use).
    pub fn prepare(&self, replica_id: &str, r: Option<&Resources>) -> std::io::Result<ChildLimits> {
        let Some(r) = r else {
            return Ok(ChildLimits::default());
        };
        let memory = r.memory.as_deref().and_then(|m| parse_bytes(m).ok());
        let cpu = r.cpu.as_deref().and_then(|c| parse_millicpu(c).ok());
        match self {
            LimitSupport::Rlimit { .. } => Ok(ChildLimits { data_bytes: memory, ..Default::default() }),
            LimitSupport::CgroupV2 { base } => {
                let dir = base.join(format!("replica-{replica_id}"));
                std::fs::create_dir_all(&dir)?;
                std::fs::write(dir.join("memory.max"), memory.map_or("max".into(), |b| b.to_string()))?;
                let quota = cpu.map_or("max 100000".into(), |m| format!("{} 100000", m * 100));
                std::fs::write(dir.join("cpu.max"), quota)?;
                Ok(ChildLimits { cgroup_procs: Some(dir.join("cgroup.procs")), ..Default::default() })
            }
        }
    }

    /// Kills everything left in a replica's cgroup and removes it.
    pub fn cleanup(&self, replica_id: &str) {
        if let LimitSupport::CgroupV2 { base } = self {
            let dir = base.join(format!("replica-{replica_id}"));
            let _ = std::fs::write(dir.join("cgroup.kill"), "1");
            let _ = std::fs::remove_dir(&dir);
        }
    }
}
