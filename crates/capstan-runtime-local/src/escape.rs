//! Processes that leave their replica's process group (`setsid`, a double fork): Capstan is their subreaper,
//! finds them by the marker in every replica's environment, stops them with their replica, and reaps them.
//!
//! Without a delegated cgroup the process group is all a replica is, and a child that calls `setsid` leaves it;
//! re-parented to init, it used to outlive its App. Now Capstan (`PR_SET_CHILD_SUBREAPER`) inherits such
//! orphans, and every process that carries its replica's marker is signalled with the replica. A process that
//! wipes its environment on purpose still escapes; cgroups, where delegated, hold those too.

use std::collections::HashSet;

use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;

use crate::process::proc_stat;

/// The environment variable that marks every process of a replica (inherited by its descendants).
pub const MARKER_ENV: &str = "CAPSTAN_REPLICA_OF";

/// The marker value of one run of one replica: the data directory's identity, the replica's place in it and the
/// run (`incarnation`), so that two Capstans on one machine never take each other's processes, and cleaning up
/// after a run never touches the next run of the same replica.
pub fn marker(data_dir: &std::path::Path, namespace: &str, app: &str, ordinal: u32, incarnation: i64) -> String {
    use sha2::Digest;
    let dir = sha2::Sha256::digest(data_dir.as_os_str().as_encoded_bytes());
    let id: String = dir[..6].iter().map(|b| format!("{b:02x}")).collect();
    format!("{id}/{namespace}/{app}/{ordinal}/{incarnation}")
}

/// Makes this process the reaper of its descendants' orphans. Returns false where the kernel refuses.
#[allow(unsafe_code)] // each block below says why it is sound (SAFETY)
pub fn become_subreaper() -> bool {
    // SAFETY: prctl(PR_SET_CHILD_SUBREAPER, 1) takes integers only and changes an attribute of this process.
    unsafe { libc::prctl(libc::PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) == 0 }
}

fn all_pids() -> impl Iterator<Item = u32> {
    std::fs::read_dir("/proc").into_iter().flatten().flatten().filter_map(|e| e.file_name().to_str()?.parse().ok())
}

/// Every live process that carries `marker`, except those in `spare` (the replica's main process).
pub fn marked(marker: &str, spare: &HashSet<u32>) -> Vec<u32> {
    let entry = format!("{MARKER_ENV}={marker}");
    let me = std::process::id();
    all_pids()
        .filter(|pid| *pid != me && !spare.contains(pid))
        .filter(|pid| {
            std::fs::read(format!("/proc/{pid}/environ"))
                .is_ok_and(|env| env.split(|b| *b == 0).any(|kv| kv == entry.as_bytes()))
        })
        .filter(|pid| proc_stat(*pid).is_some_and(|s| !s.zombie()))
        .collect()
}

/// Signals every process of a replica outside its main process; returns how many were signalled.
pub fn signal_marked(marker: &str, spare: &HashSet<u32>, sig: Signal) -> usize {
    marked(marker, spare).into_iter().filter(|pid| kill(Pid::from_raw(*pid as i32), sig).is_ok()).count()
}

/// Reaps zombies this process inherited as subreaper. Only children outside this process' own process group
/// are candidates — Capstan's own helpers (git, pg_dump, …) stay in its group and are waited for by whoever
/// started them — and of those, never a replica's main process (in `mains`), which its supervisor waits for.
pub fn reap_orphans(mains: &HashSet<u32>) -> usize {
    let me = std::process::id();
    let my_group = nix::unistd::getpgrp().as_raw() as u32;
    let mut reaped = 0;
    for pid in all_pids() {
        if mains.contains(&pid) {
            continue;
        }
        let Some(s) = proc_stat(pid) else { continue };
        if s.ppid != me || s.state != 'Z' || s.pgrp == my_group {
            continue;
        }
        let flags = nix::sys::wait::WaitPidFlag::WNOHANG;
        if nix::sys::wait::waitpid(Pid::from_raw(pid as i32), Some(flags)).is_ok() {
            reaped += 1;
        }
    }
    reaped
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn markers_differ_by_data_directory_and_replica() {
        let a = marker(std::path::Path::new("/data/a"), "default", "web", 0, 7);
        assert_eq!(a, marker(std::path::Path::new("/data/a"), "default", "web", 0, 7));
        assert_ne!(a, marker(std::path::Path::new("/data/b"), "default", "web", 0, 7));
        assert_ne!(a, marker(std::path::Path::new("/data/a"), "default", "web", 1, 7));
        assert_ne!(a, marker(std::path::Path::new("/data/a"), "default", "web", 0, 8), "another run");
        assert!(a.ends_with("/default/web/0/7"), "{a}");
    }

    #[test]
    fn a_process_that_left_its_group_is_found_by_its_marker_and_stopped() {
        let mark = format!("test-{}", std::process::id());
        // A child that starts its own session, as daemons do.
        let mut child = std::process::Command::new("setsid")
            .args(["sleep", "30"])
            .env(MARKER_ENV, &mark)
            .spawn()
            .expect("setsid sleep");
        let found = (0..50)
            .find_map(|_| {
                let f = marked(&mark, &HashSet::new());
                if f.is_empty() {
                    std::thread::sleep(std::time::Duration::from_millis(20));
                    None
                } else {
                    Some(f)
                }
            })
            .expect("found by its marker");
        assert_eq!(found, vec![child.id()]);
        assert!(marked(&mark, &HashSet::from([child.id()])).is_empty(), "the main process is spared");
        assert_eq!(signal_marked(&mark, &HashSet::new(), Signal::SIGKILL), 1);
        let status = child.wait().expect("wait");
        assert_eq!(std::os::unix::process::ExitStatusExt::signal(&status), Some(9));
        assert!(marked(&mark, &HashSet::new()).is_empty());
    }
}
