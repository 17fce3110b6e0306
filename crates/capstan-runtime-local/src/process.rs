//! Low-level process control: spawning in a process group with limits, signalling groups, and /proc checks.

use std::ffi::CString;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};

use nix::sys::signal::{killpg, Signal};
use nix::unistd::Pid;

/// Why a replica's program cannot be run.
#[derive(Debug, thiserror::Error)]
pub enum ProgramError {
    #[error("`{}` is a directory, not a program", path.display())]
    Directory { path: PathBuf },
    #[error("`{}` is not executable (chmod +x it)", path.display())]
    NotExecutable { path: PathBuf },
    #[error("program `{}` does not exist", path.display())]
    Missing { path: PathBuf },
    #[error("program `{program}` was not found on PATH")]
    NotOnPath { program: String },
}

/// Finds the program to run: a path with a `/` is taken relative to `cwd`; a bare name is looked up in `path`.
pub fn resolve_program(program: &str, cwd: &Path, path: &str) -> Result<PathBuf, ProgramError> {
    if program.contains('/') {
        let p = cwd.join(program);
        return match std::fs::metadata(&p) {
            Ok(m) if m.is_file() && is_executable(&m) => Ok(p),
            Ok(m) if m.is_dir() => Err(ProgramError::Directory { path: p }),
            Ok(_) => Err(ProgramError::NotExecutable { path: p }),
            Err(_) => Err(ProgramError::Missing { path: p }),
        };
    }
    for dir in std::env::split_paths(path) {
        let p = dir.join(program);
        if let Ok(m) = std::fs::metadata(&p) {
            if m.is_file() && is_executable(&m) {
                return Ok(p);
            }
        }
    }
    Err(ProgramError::NotOnPath { program: program.to_string() })
}

fn is_executable(m: &std::fs::Metadata) -> bool {
    use std::os::unix::fs::PermissionsExt;
    m.permissions().mode() & 0o111 != 0
}

/// What /proc/PID/stat says of a process that Capstan looks at.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ProcStat {
    /// `R`, `S`, `Z` (zombie), …
    pub state: char,
    pub ppid: u32,
    /// The process group.
    pub pgrp: u32,
    /// The start time in clock ticks since boot (field 22).
    pub start_ticks: u64,
}

impl ProcStat {
    /// Exited, and not yet reaped (or being reaped).
    pub fn zombie(&self) -> bool {
        self.state == 'Z' || self.state == 'X'
    }
}

/// Reads /proc/PID/stat; None when the process does not exist (any more).
pub fn proc_stat(pid: u32) -> Option<ProcStat> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name is in parentheses and may contain spaces; fields follow the last ')'.
    let rest = stat.get(stat.rfind(')')? + 2..)?;
    let fields: Vec<&str> = rest.split_whitespace().collect();
    Some(ProcStat {
        state: fields.first()?.chars().next()?,
        ppid: fields.get(1)?.parse().ok()?,
        pgrp: fields.get(2)?.parse().ok()?,
        start_ticks: fields.get(19)?.parse().ok()?,
    })
}

/// The start time of a process in clock ticks since boot (field 22 of /proc/PID/stat), and whether it is a zombie.
pub fn proc_start_time(pid: u32) -> Option<(u64, bool)> {
    proc_stat(pid).map(|s| (s.start_ticks, s.zombie()))
}

/// Sends a signal to a whole process group; false when the group no longer exists.
pub fn signal_group(pgid: u32, sig: Signal) -> bool {
    killpg(Pid::from_raw(pgid as i32), sig).is_ok()
}

/// Opens a pidfd that becomes readable when the process exits (works for processes that are not our children).
#[allow(unsafe_code)] // each block below says why it is sound (SAFETY)
pub fn pidfd_open(pid: u32) -> std::io::Result<OwnedFd> {
    // SAFETY: pidfd_open takes a pid and flags and returns a new file descriptor or -1.
    let fd = unsafe { libc::syscall(libc::SYS_pidfd_open, pid as libc::pid_t, 0) };
    if fd < 0 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: the syscall returned a fresh descriptor that nothing else owns.
    Ok(unsafe { OwnedFd::from_raw_fd(fd as RawFd) })
}

/// Creates a FIFO if it does not exist yet.
pub fn ensure_fifo(path: &Path) -> std::io::Result<()> {
    if let Ok(m) = std::fs::symlink_metadata(path) {
        use std::os::unix::fs::FileTypeExt;
        if m.file_type().is_fifo() {
            return Ok(());
        }
        std::fs::remove_file(path)?;
    }
    nix::unistd::mkfifo(path, nix::sys::stat::Mode::from_bits_truncate(0o600)).map_err(std::io::Error::from)
}

/// Opens the write side of a FIFO for a child. It is opened read-write so that writes never fail with
/// EPIPE while Capstan (the reader) restarts; the pipe buffer is raised to 1 MiB where allowed.
#[allow(unsafe_code)] // each block below says why it is sound (SAFETY)
pub fn open_fifo_for_child(path: &Path) -> std::io::Result<std::fs::File> {
    let f = std::fs::OpenOptions::new().read(true).write(true).open(path)?;
    // SAFETY: F_SETPIPE_SZ on a FIFO descriptor we own; failure only leaves the default size.
    unsafe {
        libc::fcntl(f.as_raw_fd(), libc::F_SETPIPE_SZ, 1 << 20);
    }
    Ok(f)
}

/// Limits applied in the child between fork and exec.
#[derive(Debug, Clone, Default)]
pub struct ChildLimits {
    /// RLIMIT_DATA in bytes (used when cgroup v2 is not available).
    pub data_bytes: Option<u64>,
    /// A cgroup.procs file the child moves itself into.
    pub cgroup_procs: Option<PathBuf>,
    /// The soft open-file limit the child gets: Capstan raises its own to hold many connections, but programs
    /// written for the usual limit (select(2), closing every possible fd at start) get the limit they expect.
    pub nofile_soft: Option<u64>,
}

/// Prepares `cmd` to start in its own process group with `limits`.
#[allow(unsafe_code)] // each block below says why it is sound (SAFETY)
pub fn configure(cmd: &mut tokio::process::Command, limits: &ChildLimits) -> std::io::Result<()> {
    cmd.process_group(0);
    cmd.kill_on_drop(false);
    let data = limits.data_bytes;
    let nofile_soft = limits.nofile_soft;
    let cgroup_fd: Option<OwnedFd> = match &limits.cgroup_procs {
        Some(p) => Some(std::fs::OpenOptions::new().write(true).open(p)?.into()),
        None => None,
    };
    let zero = CString::new("0").unwrap_or_default();
    // SAFETY: the closure runs between fork and exec and only makes async-signal-safe calls (setrlimit, write).
    unsafe {
        cmd.as_std_mut().pre_exec(move || {
            if let Some(fd) = &cgroup_fd {
                if libc::write(fd.as_raw_fd(), zero.as_ptr().cast(), 1) < 0 {
                    return Err(std::io::Error::last_os_error());
                }
            }
            if let Some(soft) = nofile_soft {
                let mut lim = libc::rlimit { rlim_cur: 0, rlim_max: 0 };
                if libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) == 0 && (soft as libc::rlim_t) < lim.rlim_cur {
                    lim.rlim_cur = soft as libc::rlim_t;
                    if libc::setrlimit(libc::RLIMIT_NOFILE, &lim) != 0 {
                        return Err(std::io::Error::last_os_error());
                    }
                }
            }
            if let Some(bytes) = data {
                let lim = libc::rlimit { rlim_cur: bytes as libc::rlim_t, rlim_max: bytes as libc::rlim_t };
                if libc::setrlimit(libc::RLIMIT_DATA, &lim) != 0 {
                    return Err(std::io::Error::last_os_error());
                }
            }
            Ok(())
        });
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn children_get_the_open_file_limit_they_are_given() {
        let limits = ChildLimits { nofile_soft: Some(512), ..Default::default() };
        let mut cmd = tokio::process::Command::new("sh");
        cmd.args(["-c", "ulimit -Sn"]).stdout(std::process::Stdio::piped());
        configure(&mut cmd, &limits).expect("configure");
        let out = cmd.output().await.expect("run sh");
        let soft: u64 = String::from_utf8_lossy(&out.stdout).trim().parse().expect("a number");
        let ours = nix::sys::resource::getrlimit(nix::sys::resource::Resource::RLIMIT_NOFILE).expect("getrlimit").0;
        assert_eq!(soft, 512.min(ours), "never raised, lowered to what it is given");
    }

    #[test]
    fn finds_programs() {
        let path = std::env::var("PATH").unwrap_or_default();
        assert!(resolve_program("sh", Path::new("/"), &path).is_ok());
        let e = resolve_program("no-such-program-xyz", Path::new("/"), &path).unwrap_err().to_string();
        assert!(e.contains("not found on PATH"));
        let e = resolve_program("./nope", Path::new("/tmp"), &path).unwrap_err().to_string();
        assert!(e.contains("does not exist"));
        let e = resolve_program("./", Path::new("/tmp"), &path).unwrap_err().to_string();
        assert!(e.contains("directory"));
    }

    #[test]
    fn reads_own_start_time() {
        let (t, zombie) = proc_start_time(std::process::id()).unwrap();
        assert!(t > 0);
        assert!(!zombie);
        assert!(proc_start_time(u32::MAX - 1).is_none());
    }
}

/// The process listening on a TCP port of this machine, as `ss -ltnp` finds it: the socket's inode from
/// /proc/net/tcp{,6}, then the process holding it. `None` when it cannot be told (another user's process, say).
pub fn listener_of(port: u16) -> Option<(u32, String)> {
    let mut inodes = Vec::new();
    for table in ["/proc/net/tcp", "/proc/net/tcp6"] {
        let Ok(text) = std::fs::read_to_string(table) else { continue };
        for line in text.lines().skip(1) {
            let f: Vec<&str> = line.split_whitespace().collect();
            let (Some(local), Some(state), Some(inode)) = (f.get(1), f.get(3), f.get(9)) else { continue };
            let local_port = local.rsplit(':').next().and_then(|p| u16::from_str_radix(p, 16).ok());
            if *state == "0A" && local_port == Some(port) && *inode != "0" {
                inodes.push(format!("socket:[{inode}]"));
            }
        }
    }
    if inodes.is_empty() {
        return None;
    }
    for proc_entry in std::fs::read_dir("/proc").ok()?.flatten() {
        let Ok(pid) = proc_entry.file_name().to_string_lossy().parse::<u32>() else { continue };
        let Ok(fds) = std::fs::read_dir(proc_entry.path().join("fd")) else { continue };
        for fd in fds.flatten() {
            let Ok(target) = std::fs::read_link(fd.path()) else { continue };
            if inodes.iter().any(|i| target.as_os_str() == i.as_str()) {
                let comm = std::fs::read_to_string(proc_entry.path().join("comm")).unwrap_or_default();
                return Some((pid, comm.trim().to_string()));
            }
        }
    }
    None
}

#[cfg(test)]
mod listener_tests {
    #[test]
    fn finds_this_process_listening() {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let port = l.local_addr().unwrap().port();
        let (pid, _) = super::listener_of(port).expect("found");
        assert_eq!(pid, std::process::id());
        drop(l);
        assert_eq!(super::listener_of(port), None);
    }
}
