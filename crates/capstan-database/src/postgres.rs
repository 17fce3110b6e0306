//! The machine's PostgreSQL: finding its binaries, preparing a data directory (initdb, the database, the role) as
//! the user the server runs as.

use std::io::Write;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use crate::DatabaseError;

/// The Debian package that provides the server binaries.
pub const PACKAGE: &str = "postgresql";

/// Finds a directory holding `initdb`, `postgres` and `pg_isready`: `/usr/lib/postgresql/<version>/bin` (the
/// requested version, or the highest installed), else the directories on PATH.
pub fn find_bin_dir(version: Option<u32>) -> Result<PathBuf, DatabaseError> {
    let complete = |d: &Path| ["initdb", "postgres", "pg_isready"].iter().all(|b| d.join(b).is_file());
    let mut installed: Vec<(u32, PathBuf)> = std::fs::read_dir("/usr/lib/postgresql")
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| Some((e.file_name().to_string_lossy().parse::<u32>().ok()?, e.path().join("bin"))))
        .filter(|(_, d)| complete(d))
        .collect();
    installed.sort();
    if let Some(v) = version {
        return installed
            .into_iter()
            .find(|(iv, _)| *iv == v)
            .map(|(_, d)| d)
            .ok_or(DatabaseError::VersionNotInstalled { version: v });
    }
    if let Some((_, d)) = installed.pop() {
        return Ok(d);
    }
    std::env::var_os("PATH")
        .map(|p| std::env::split_paths(&p).collect::<Vec<_>>())
        .unwrap_or_default()
        .into_iter()
        .find(|d| complete(d))
        .ok_or(DatabaseError::NotInstalled)
}

/// The machine user a server runs as: itself when Capstan is not root; `run_as` (default `postgres`) when it is.
#[derive(Debug, Clone)]
pub struct RunAs {
    pub name: Option<String>,
    pub uid: u32,
    pub gid: u32,
}

pub fn run_as(requested: Option<&str>) -> Result<RunAs, DatabaseError> {
    let me = nix::unistd::geteuid();
    if !me.is_root() {
        return Ok(RunAs { name: None, uid: me.as_raw(), gid: nix::unistd::getegid().as_raw() });
    }
    let name = requested.unwrap_or("postgres");
    let u = nix::unistd::User::from_name(name)
        .map_err(|source| DatabaseError::UserLookup { name: name.to_string(), source })?
        .ok_or_else(|| DatabaseError::NoSuchUser { name: name.to_string() })?;
    Ok(RunAs { name: Some(name.to_string()), uid: u.uid.as_raw(), gid: u.gid.as_raw() })
}

fn as_user(cmd: &mut Command, who: &RunAs) {
    use std::os::unix::process::CommandExt;
    if who.name.is_some() {
        cmd.uid(who.uid).gid(who.gid);
    }
}

/// Makes `path` belong to the server's user (when Capstan is root) and private to it.
pub fn own(path: &Path, who: &RunAs, mode: u32) -> Result<(), DatabaseError> {
    if who.name.is_some() {
        nix::unistd::chown(path, Some(nix::unistd::Uid::from_raw(who.uid)), Some(nix::unistd::Gid::from_raw(who.gid)))
            .map_err(|source| DatabaseError::Chown { path: path.to_path_buf(), source })?;
    }
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode))
        .map_err(|source| DatabaseError::Chmod { path: path.to_path_buf(), source })
}

fn tail(bytes: &[u8]) -> String {
    let text = String::from_utf8_lossy(bytes);
    let lines: Vec<&str> = text.lines().filter(|l| !l.trim().is_empty()).collect();
    lines[lines.len().saturating_sub(3)..].join(" / ")
}

/// Creates the cluster in `pgdata` (which must exist, empty, owned by the user), with `user` as superuser and
/// `password` for TCP connections, then the database `db` owned by `user`.
pub fn init(
    bin: &Path,
    pgdata: &Path,
    scratch: &Path,
    who: &RunAs,
    user: &str,
    password: &str,
    db: &str,
) -> Result<(), DatabaseError> {
    let pwfile = scratch.join("initdb-password");
    {
        let mut f = std::fs::File::create(&pwfile)
            .map_err(|source| DatabaseError::PasswordFile { path: pwfile.clone(), source })?;
        f.write_all(password.as_bytes()).map_err(DatabaseError::PasswordWrite)?;
    }
    own(&pwfile, who, 0o600)?;
    let mut cmd = Command::new(bin.join("initdb"));
    cmd.arg("-D")
        .arg(pgdata)
        .args(["-U", user, "-E", "UTF8", "--no-locale", "--auth=scram-sha-256"])
        .arg(format!("--pwfile={}", pwfile.display()))
        .current_dir(scratch)
        .stdin(Stdio::null());
    as_user(&mut cmd, who);
    let out = cmd.output().map_err(|source| DatabaseError::Run { program: "initdb", source });
    let _ = std::fs::remove_file(&pwfile);
    let out = out?;
    if !out.status.success() {
        return Err(DatabaseError::Failed { program: "initdb", stderr: tail(&out.stderr) });
    }
    if db != "postgres" {
        let mut cmd = Command::new(bin.join("postgres"));
        cmd.arg("--single").arg("-D").arg(pgdata).arg("postgres").current_dir(scratch);
        cmd.stdin(Stdio::piped()).stdout(Stdio::null()).stderr(Stdio::piped());
        as_user(&mut cmd, who);
        let mut child = cmd.spawn().map_err(|source| DatabaseError::Run { program: "postgres --single", source })?;
        if let Some(mut stdin) = child.stdin.take() {
            let _ = writeln!(stdin, "CREATE DATABASE \"{db}\" OWNER \"{user}\";");
        }
        let out = child.wait_with_output().map_err(DatabaseError::Wait)?;
        if !out.status.success() {
            return Err(DatabaseError::CreateDatabase { db: db.to_string(), stderr: tail(&out.stderr) });
        }
    }
    Ok(())
}
