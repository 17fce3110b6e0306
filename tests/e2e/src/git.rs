//! Real Git repositories for tests: built with the git CLI in temporary directories, served by `git daemon` on
//! loopback or read over file://.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use crate::Guarded;

/// A working repository on branch `main`, at `<temporary root>/repo`.
pub struct GitRepo {
    pub root: tempfile::TempDir,
    path: PathBuf,
}

/// Runs git in `dir` with a fixed identity; panics with git's stderr on failure.
pub fn git(dir: &Path, args: &[&str]) -> String {
    let out = Command::new("git")
        .args(args)
        .current_dir(dir)
        .env("GIT_AUTHOR_NAME", "Capstan Test")
        .env("GIT_AUTHOR_EMAIL", "test@example.com")
        .env("GIT_COMMITTER_NAME", "Capstan Test")
        .env("GIT_COMMITTER_EMAIL", "test@example.com")
        .env("GIT_CONFIG_NOSYSTEM", "1")
        .output()
        .expect("git runs (is git installed?)");
    assert!(out.status.success(), "git {args:?}: {}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

impl GitRepo {
    pub fn new() -> GitRepo {
        let root = tempfile::tempdir().expect("tempdir");
        let path = root.path().join("repo");
        std::fs::create_dir(&path).expect("mkdir");
        git(&path, &["init", "-q", "-b", "main"]);
        GitRepo { root, path }
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Serves this repository with `git daemon`; its URL is `daemon.url("repo")`.
    pub fn serve(&self) -> GitDaemon {
        GitDaemon::serve(self.root.path())
    }

    /// `file://` URL of the repository.
    pub fn file_url(&self) -> String {
        format!("file://{}", self.path().display())
    }

    /// Writes files (a `None` content deletes the file) and commits; returns the commit id.
    pub fn commit(&self, files: &[(&str, Option<&str>)], message: &str) -> String {
        for (path, content) in files {
            let p = self.path().join(path);
            match content {
                Some(c) => {
                    std::fs::create_dir_all(p.parent().expect("parent")).expect("mkdir");
                    std::fs::write(&p, c).expect("write");
                }
                None => {
                    let _ = std::fs::remove_file(&p);
                }
            }
        }
        git(self.path(), &["add", "-A"]);
        git(self.path(), &["commit", "-q", "--allow-empty", "-m", message]);
        git(self.path(), &["rev-parse", "HEAD"])
    }
}

impl Default for GitRepo {
    fn default() -> Self {
        Self::new()
    }
}

/// `git daemon` serving a directory's repositories on 127.0.0.1; stopped when dropped.
pub struct GitDaemon {
    _child: Guarded,
    pub port: u16,
    pub base: PathBuf,
}

impl GitDaemon {
    /// Serves every repository under `base` as `git://127.0.0.1:<port>/<name>`.
    pub fn serve(base: &Path) -> GitDaemon {
        let port = std::net::TcpListener::bind("127.0.0.1:0").expect("bind").local_addr().expect("addr").port();
        let child = Command::new("git")
            .args([
                "daemon",
                "--reuseaddr",
                "--export-all",
                "--listen=127.0.0.1",
                &format!("--port={port}"),
                &format!("--base-path={}", base.display()),
                &base.display().to_string(),
            ])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("git daemon starts");
        let guard = Guarded(child);
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(std::time::Instant::now() < deadline, "git daemon did not listen on {port}");
            std::thread::sleep(Duration::from_millis(20));
        }
        GitDaemon { _child: guard, port, base: base.to_path_buf() }
    }

    /// The git:// URL of the repository at `base/<name>`.
    pub fn url(&self, name: &str) -> String {
        format!("git://127.0.0.1:{}/{name}", self.port)
    }
}
