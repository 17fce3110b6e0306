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

/// Git's smart HTTP protocol on 127.0.0.1: an HTTP server that runs `git http-backend` (CGI) for each request,
/// behind basic auth when `credentials` are given. Stopped when dropped.
pub struct GitHttp {
    pub port: u16,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for GitHttp {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl GitHttp {
    /// Serves the repositories under `root` as `http://127.0.0.1:<port>/<name>`.
    pub async fn serve(root: &Path, credentials: Option<(&str, &str)>) -> GitHttp {
        use axum::body::Bytes;
        use axum::http::{HeaderMap, Method, StatusCode, Uri};
        use axum::response::{IntoResponse, Response};
        use base64::Engine;

        let root = root.to_path_buf();
        let expected = credentials
            .map(|(u, p)| format!("Basic {}", base64::engine::general_purpose::STANDARD.encode(format!("{u}:{p}"))));
        let handler = move |method: Method, uri: Uri, headers: HeaderMap, body: Bytes| {
            let root = root.clone();
            let expected = expected.clone();
            async move {
                let given = headers.get("authorization").and_then(|v| v.to_str().ok());
                if expected.is_some() && given != expected.as_deref() {
                    return (StatusCode::UNAUTHORIZED, [("WWW-Authenticate", "Basic realm=\"git\"")], "auth")
                        .into_response();
                }
                let header = |n: &str| headers.get(n).and_then(|v| v.to_str().ok()).unwrap_or("").to_string();
                let mut cmd = tokio::process::Command::new("git");
                cmd.arg("http-backend")
                    .env("GIT_PROJECT_ROOT", &root)
                    .env("GIT_HTTP_EXPORT_ALL", "1")
                    .env("REQUEST_METHOD", method.as_str())
                    .env("PATH_INFO", uri.path())
                    .env("QUERY_STRING", uri.query().unwrap_or(""))
                    .env("CONTENT_TYPE", header("content-type"))
                    .env("CONTENT_LENGTH", body.len().to_string())
                    .env("GIT_PROTOCOL", header("git-protocol"))
                    .env("HTTP_CONTENT_ENCODING", header("content-encoding"))
                    .env("REMOTE_ADDR", "127.0.0.1")
                    .stdin(Stdio::piped())
                    .stdout(Stdio::piped())
                    .stderr(Stdio::null());
                let Ok(mut child) = cmd.spawn() else {
                    return (StatusCode::INTERNAL_SERVER_ERROR, "cannot run git http-backend").into_response();
                };
                if let Some(mut stdin) = child.stdin.take() {
                    use tokio::io::AsyncWriteExt;
                    let _ = stdin.write_all(&body).await;
                }
                let Ok(out) = child.wait_with_output().await else {
                    return (StatusCode::INTERNAL_SERVER_ERROR, "git http-backend failed").into_response();
                };
                cgi_response(&out.stdout)
            }
        };
        fn cgi_response(raw: &[u8]) -> Response {
            use axum::response::IntoResponse;
            let split = raw.windows(4).position(|w| w == b"\r\n\r\n").map(|i| (i, 4));
            let split = split.or_else(|| raw.windows(2).position(|w| w == b"\n\n").map(|i| (i, 2)));
            let Some((end, sep)) = split else {
                return (axum::http::StatusCode::BAD_GATEWAY, "no CGI headers").into_response();
            };
            let head = String::from_utf8_lossy(&raw[..end]).to_string();
            let mut builder = axum::http::Response::builder();
            for line in head.lines() {
                let Some((k, v)) = line.split_once(':') else { continue };
                if k.eq_ignore_ascii_case("status") {
                    let code = v.trim().split(' ').next().and_then(|c| c.parse::<u16>().ok()).unwrap_or(200);
                    builder = builder.status(code);
                } else {
                    builder = builder.header(k.trim(), v.trim());
                }
            }
            builder
                .body(axum::body::Body::from(raw[end + sep..].to_vec()))
                .unwrap_or_else(|_| axum::http::Response::new(axum::body::Body::empty()))
        }
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let port = listener.local_addr().expect("addr").port();
        let app = axum::Router::new().fallback(handler);
        let task = tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        GitHttp { port, task }
    }

    /// The http:// URL of the repository at `root/<name>`.
    pub fn url(&self, name: &str) -> String {
        format!("http://127.0.0.1:{}/{name}", self.port)
    }
}

/// An OpenSSH server on 127.0.0.1 that lets one generated key in as the current user; stopped when dropped.
pub struct Sshd {
    _child: Guarded,
    pub port: u16,
    pub user: String,
    /// The client's private key (OpenSSH format).
    pub identity: String,
    /// A known_hosts line for this server.
    pub known_hosts: String,
    _dir: tempfile::TempDir,
}

impl Sshd {
    /// Starts `/usr/sbin/sshd` (Debian's openssh-server, which scripts/test.sh installs).
    pub fn start() -> Sshd {
        let dir = tempfile::tempdir().expect("tempdir");
        let d = dir.path();
        for name in ["host", "client"] {
            let out = Command::new("ssh-keygen")
                .args(["-q", "-t", "ed25519", "-N", "", "-f"])
                .arg(d.join(name))
                .output()
                .expect("ssh-keygen runs");
            assert!(out.status.success(), "ssh-keygen: {}", String::from_utf8_lossy(&out.stderr));
        }
        std::fs::copy(d.join("client.pub"), d.join("authorized")).expect("authorized_keys");
        let _ = std::fs::create_dir_all("/run/sshd");
        let port = std::net::TcpListener::bind("127.0.0.1:0").expect("bind").local_addr().expect("addr").port();
        let config = format!(
            "ListenAddress 127.0.0.1\nPort {port}\nHostKey {d}/host\nAuthorizedKeysFile {d}/authorized\nPidFile {d}/sshd.pid\nStrictModes no\nUsePAM no\nPasswordAuthentication no\nKbdInteractiveAuthentication no\nPermitRootLogin prohibit-password\n",
            d = d.display()
        );
        std::fs::write(d.join("sshd_config"), config).expect("config");
        let child = Command::new("/usr/sbin/sshd")
            .arg("-D")
            .arg("-f")
            .arg(d.join("sshd_config"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("sshd starts (is openssh-server installed?)");
        let guard = Guarded(child);
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(std::time::Instant::now() < deadline, "sshd did not listen on {port}");
            std::thread::sleep(Duration::from_millis(20));
        }
        let host_pub = std::fs::read_to_string(d.join("host.pub")).expect("host key");
        let key: Vec<&str> = host_pub.split_whitespace().take(2).collect();
        let user =
            String::from_utf8_lossy(&Command::new("id").arg("-un").output().expect("id").stdout).trim().to_string();
        Sshd {
            _child: guard,
            port,
            user,
            identity: std::fs::read_to_string(d.join("client")).expect("client key"),
            known_hosts: format!("[127.0.0.1]:{port} {}\n", key.join(" ")),
            _dir: dir,
        }
    }

    /// The ssh:// URL of a repository at an absolute path.
    pub fn url(&self, path: &Path) -> String {
        format!("ssh://{}@127.0.0.1:{}{}", self.user, self.port, path.display())
    }
}
