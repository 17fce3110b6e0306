//! Git fetches with gix: one bare repository per Source, shallow at first and incremental afterwards, and the
//! checkout of one commit into an artifact without ever leaving the tree.

use std::collections::HashMap;
use std::num::NonZeroU32;
use std::path::{Path, PathBuf};
use std::sync::atomic::AtomicBool;

use capstan_model::gitops::GitRef;
use gix::bstr::ByteSlice;
use gix::remote::fetch::Shallow;
use gix::remote::Direction;
use gix::ObjectId;

use crate::artifact::{resolve_link, ArtifactError, ArtifactWriter, Filter, Written, INDEX_FILE, MAX_FILE_BYTES};

/// How to authenticate to a remote. Never printed.
#[derive(Clone, Default)]
pub enum Credentials {
    #[default]
    None,
    Basic {
        username: String,
        password: String,
    },
    Bearer(String),
    Ssh {
        identity: Vec<u8>,
        known_hosts: Option<Vec<u8>>,
    },
}

impl std::fmt::Debug for Credentials {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Credentials::None => "None",
            Credentials::Basic { .. } => "Basic(<redacted>)",
            Credentials::Bearer(_) => "Bearer(<redacted>)",
            Credentials::Ssh { .. } => "Ssh(<redacted>)",
        })
    }
}

/// Why a fetch failed, sorted so the status can say what to do.
#[derive(Debug, thiserror::Error)]
pub enum GitError {
    #[error("authentication failed: {0}")]
    Auth(String),
    #[error("{0}")]
    RefNotFound(String),
    #[error("cannot reach the remote: {0}")]
    Remote(String),
    #[error("local repository: {0}")]
    Local(String),
    #[error("the fetch was interrupted (timeout)")]
    Interrupted,
    #[error(transparent)]
    Artifact(#[from] ArtifactError),
}

/// Removes `user:password@` from URLs inside a message, so credentials never reach status or logs.
pub fn redact(msg: &str) -> String {
    let mut out = String::with_capacity(msg.len());
    let mut rest = msg;
    while let Some(i) = rest.find("://") {
        let (head, tail) = rest.split_at(i + 3);
        out.push_str(head);
        let end = tail.find(|c: char| c.is_whitespace() || c == '/' || c == '"' || c == '\'').unwrap_or(tail.len());
        match tail[..end].rfind('@') {
            Some(at) => {
                out.push_str("***@");
                rest = &tail[at + 1..];
            }
            None => rest = tail,
        }
    }
    out.push_str(rest);
    out
}

/// gix's error chains as one line for a status: `a: b: c`, without the Debug wrappers some of its errors print.
pub fn tidy(msg: &str) -> String {
    let mut parts: Vec<String> = Vec::new();
    for line in msg.lines() {
        let mut l = line.trim();
        if l.is_empty() || l == "Caused by:" {
            continue;
        }
        // "0: …" numbering of causes.
        if let Some((n, rest)) = l.split_once(": ") {
            if n.chars().all(|c| c.is_ascii_digit()) {
                l = rest;
            }
        }
        let mut t = l.to_string();
        for wrapper in ["Message { message: \"", "AuthenticationRefused(\"", "Io(", "Custom { kind: "] {
            if let Some(i) = t.find(wrapper) {
                t = format!("{}{}", &t[..i], &t[i + wrapper.len()..]);
            }
        }
        let t = t.trim_end_matches(['}', ')', '"', ' ']).replace("\\\"", "\"");
        if !t.is_empty() && !parts.contains(&t) {
            parts.push(t);
        }
    }
    parts.join(": ")
}

fn classify(e: impl std::fmt::Display, interrupt: &AtomicBool) -> GitError {
    if interrupt.load(std::sync::atomic::Ordering::Relaxed) {
        return GitError::Interrupted;
    }
    let mut msg = tidy(&redact(&format!("{e:#}")));
    if msg.contains("clear text over http") {
        msg = "credentials are only sent over https or ssh, and this URL is plain http: use https://".into();
    } else if msg.contains("No credentials were returned") {
        msg = "the remote asks for credentials and this Source has none: set spec.secretRef to a Secret with \
               username and password, or bearerToken"
            .into();
    }
    let lower = msg.to_ascii_lowercase();
    if lower.contains("401")
        || lower.contains("403")
        || lower.contains("authenticat")
        || lower.contains("permission denied")
        || lower.contains("credentials")
        || lower.contains("host key verification failed")
    {
        GitError::Auth(msg)
    } else {
        GitError::Remote(msg)
    }
}

/// What a fetch resolved.
#[derive(Debug, Clone)]
pub struct Fetched {
    pub commit: String,
    /// `<ref>@sha1:<commit>`, as Flux writes it.
    pub revision: String,
    /// Whether objects were transferred (false when the commit was already here).
    pub transferred: bool,
}

/// One fetch of one Source.
pub struct FetchRequest<'a> {
    pub url: &'a str,
    pub git_ref: &'a GitRef,
    /// The Source's bare repository, created when missing.
    pub repo_dir: &'a Path,
    pub credentials: &'a Credentials,
    /// Set to stop the transfer (on timeout).
    pub interrupt: &'a AtomicBool,
    /// The longest any one network operation may block (connect, read, write) where the transport allows it.
    pub timeout: std::time::Duration,
}

/// Key files for ssh, removed when dropped.
struct SshFiles(Vec<PathBuf>);

impl Drop for SshFiles {
    fn drop(&mut self) {
        for p in &self.0 {
            let _ = std::fs::remove_file(p);
        }
    }
}

fn write_private(path: &Path, bytes: &[u8]) -> Result<(), GitError> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let mut f = std::fs::OpenOptions::new()
        .create(true)
        .write(true)
        .truncate(true)
        .mode(0o600)
        .open(path)
        .map_err(|e| GitError::Local(format!("{}: {e}", path.display())))?;
    f.write_all(bytes).map_err(|e| GitError::Local(format!("{}: {e}", path.display())))
}

/// Where ssh's stderr goes during a fetch, inside the Source's repository directory.
const SSH_STDERR: &str = "capstan-ssh-stderr";

fn shell_quote(p: &Path) -> String {
    format!("'{}'", p.display().to_string().replace('\'', r"'\''"))
}

/// Adds what ssh said to a failed fetch, and files it under authentication when that is what went wrong.
fn with_ssh_stderr(e: GitError, dir: &Path) -> GitError {
    let said = std::fs::read_to_string(dir.join(SSH_STDERR)).unwrap_or_default();
    let lines: Vec<&str> =
        said.lines().map(str::trim).filter(|l| !l.is_empty() && !l.starts_with("Warning: Permanently")).collect();
    if lines.is_empty() {
        return e;
    }
    let said = lines[lines.len().saturating_sub(3)..].join(" ");
    let auth = said.contains("Host key verification failed") || said.contains("Permission denied");
    match e {
        GitError::Remote(m) | GitError::Auth(m) if auth => GitError::Auth(format!("ssh: {said} ({m})")),
        GitError::Remote(m) => GitError::Remote(format!("ssh: {said} ({m})")),
        other => other,
    }
}

fn open_repo(dir: &Path, creds: &Credentials) -> Result<(gix::Repository, SshFiles), GitError> {
    let local = |e: &dyn std::fmt::Display| GitError::Local(format!("{}: {e}", dir.display()));
    if !dir.join("HEAD").exists() {
        std::fs::create_dir_all(dir).map_err(|e| local(&e))?;
        gix::init_bare(dir).map_err(|e| local(&e))?;
    }
    let mut files = SshFiles(Vec::new());
    // ssh never prompts (BatchMode), and its complaints go to a file the error message quotes ("Host key
    // verification failed", "Permission denied"); gix only sees the connection end.
    let mut cmd = "ssh -o BatchMode=yes".to_string();
    if let Credentials::Ssh { identity, known_hosts } = creds {
        let key = dir.join("capstan-identity");
        write_private(&key, identity)?;
        files.0.push(key.clone());
        cmd.push_str(&format!(" -i {} -o IdentitiesOnly=yes", shell_quote(&key)));
        match known_hosts {
            Some(kh) => {
                let khp = dir.join("capstan-known-hosts");
                write_private(&khp, kh)?;
                files.0.push(khp.clone());
                cmd.push_str(&format!(" -o StrictHostKeyChecking=yes -o UserKnownHostsFile={}", shell_quote(&khp)));
            }
            None => cmd.push_str(" -o StrictHostKeyChecking=yes"),
        }
    }
    cmd.push_str(&format!(" 2>{}", shell_quote(&dir.join(SSH_STDERR))));
    let overrides = vec![format!("core.sshCommand={cmd}")];
    let opts = gix::open::Options::isolated().config_overrides(overrides);
    let repo = gix::open_opts(dir, opts).map_err(|e| local(&e))?;
    Ok((repo, files))
}

/// The refspec and the label for the revision of a ref.
fn spec_for(r: &GitRef) -> (String, Option<String>) {
    if let Some(b) = &r.branch {
        return (format!("+refs/heads/{b}:refs/heads/{b}"), Some(b.clone()));
    }
    if let Some(t) = &r.tag {
        return (format!("+refs/tags/{t}:refs/tags/{t}"), Some(t.clone()));
    }
    if r.semver.is_some() {
        return ("+refs/tags/*:refs/tags/*".into(), None);
    }
    if r.commit.is_some() {
        return ("+refs/heads/*:refs/heads/*".into(), None);
    }
    ("+HEAD:refs/remotes/origin/HEAD".into(), None)
}

/// Picks the highest tag matching a semver range; a leading `v` is allowed.
pub fn pick_semver<'a>(range: &str, tags: impl Iterator<Item = &'a str>) -> Option<(&'a str, semver::Version)> {
    let req = semver::VersionReq::parse(range).ok()?;
    tags.filter_map(|t| {
        let v = semver::Version::parse(t.strip_prefix('v').unwrap_or(t)).ok()?;
        req.matches(&v).then_some((t, v))
    })
    .max_by(|a, b| a.1.cmp(&b.1))
}

fn remote<'r>(repo: &'r gix::Repository, url: &str, spec: &str) -> Result<gix::Remote<'r>, GitError> {
    repo.remote_at(url)
        .and_then(|r| r.with_refspecs(Some(spec), Direction::Fetch))
        .map_err(|e| GitError::Remote(redact(&format!("{e:#}"))))
}

type Transport = Box<dyn gix::protocol::transport::client::blocking_io::Transport + Send>;

/// Connects for a fetch. `git://` gets its own TCP connection with Nagle's algorithm off (gix's own leaves it on,
/// and each small request then waits for a delayed ACK: ~40 ms per round trip) and read/write timeouts, so a silent
/// server cannot hold the fetch thread past the Source's timeout. Other schemes use gix's transports.
fn connect<'r>(
    remote: &'r gix::Remote<'r>,
    req: &FetchRequest<'_>,
) -> Result<gix::remote::Connection<'r, 'static, 'r, Transport>, GitError> {
    let url = remote.url(Direction::Fetch).cloned();
    if let Some(url) = url.filter(|u| u.scheme == gix::url::Scheme::Git) {
        let host = url.host().unwrap_or("127.0.0.1").to_string();
        let port = url.port_or_default().unwrap_or(9418);
        let unreachable = |e: std::io::Error| GitError::Remote(format!("cannot connect to {host}:{port}: {e}"));
        let addr = std::net::ToSocketAddrs::to_socket_addrs(&(host.as_str(), port))
            .map_err(unreachable)?
            .next()
            .ok_or_else(|| GitError::Remote(format!("{host} has no address")))?;
        let stream = std::net::TcpStream::connect_timeout(&addr, req.timeout).map_err(unreachable)?;
        let _ = stream.set_nodelay(true);
        let _ = stream.set_read_timeout(Some(req.timeout));
        let _ = stream.set_write_timeout(Some(req.timeout));
        let write = stream.try_clone().map_err(unreachable)?;
        let conn = gix::protocol::transport::client::git::blocking_io::Connection::new(
            stream,
            write,
            gix::protocol::transport::Protocol::V2,
            url.path.clone(),
            Some((host.clone(), url.port)),
            gix::protocol::transport::client::git::ConnectMode::Daemon,
            false,
        );
        let boxed: Transport = Box::new(conn);
        return Ok(remote.to_connection_with_transport(boxed));
    }
    remote.connect(Direction::Fetch).map_err(|e| classify(e, req.interrupt))
}

fn configure<T>(conn: &mut gix::remote::Connection<'_, '_, '_, T>, creds: &Credentials)
where
    T: gix::protocol::transport::client::blocking_io::Transport,
{
    let owned = creds.clone();
    conn.set_credentials(move |action| match (&action, &owned) {
        (gix::credentials::helper::Action::Get(ctx), Credentials::Basic { username, password }) => {
            Ok(Some(gix::credentials::protocol::Outcome {
                identity: gix::sec::identity::Account {
                    username: username.clone(),
                    password: password.clone(),
                    oauth_refresh_token: None,
                },
                next: ctx.clone().into(),
            }))
        }
        // Never ask a helper or a terminal: a Source without credentials fails instead of prompting.
        _ => Ok(None),
    });
    if let Credentials::Bearer(token) = creds {
        let opts = gix::protocol::transport::client::blocking_io::http::Options {
            extra_headers: vec![format!("Authorization: Bearer {token}")],
            ..Default::default()
        };
        conn.set_transport_options(Box::new(opts));
    }
}

/// Resolves the Source's ref on the remote and fetches what is missing.
pub fn fetch(req: &FetchRequest<'_>) -> Result<Fetched, GitError> {
    let _ = std::fs::remove_file(req.repo_dir.join(SSH_STDERR));
    fetch_inner(req).map_err(|e| with_ssh_stderr(e, req.repo_dir))
}

fn fetch_inner(req: &FetchRequest<'_>) -> Result<Fetched, GitError> {
    let (repo, _files) = open_repo(req.repo_dir, req.credentials)?;
    let (mut spec, mut label) = spec_for(req.git_ref);
    let pinned = req.git_ref.commit.clone();

    if let Some(range) = &req.git_ref.semver {
        // List the tags first, then fetch only the chosen one.
        let remote = remote(&repo, req.url, &spec)?;
        let mut conn = remote.connect(Direction::Fetch).map_err(|e| classify(e, req.interrupt))?;
        configure(&mut conn, req.credentials);
        let (map, _) =
            conn.ref_map(gix::progress::Discard, Default::default()).map_err(|e| classify(e, req.interrupt))?;
        let names: Vec<String> = map
            .remote_refs
            .iter()
            .filter_map(|r| r.unpack().0.to_str().ok()?.strip_prefix("refs/tags/").map(str::to_string))
            .collect();
        let Some((tag, _)) = pick_semver(range, names.iter().map(String::as_str)) else {
            return Err(GitError::RefNotFound(format!("no tag on the remote matches the semver range `{range}`")));
        };
        spec = format!("+refs/tags/{tag}:refs/tags/{tag}");
        label = Some(tag.to_string());
    }

    let remote = remote(&repo, req.url, &spec)?;
    let mut conn = connect(&remote, req)?;
    configure(&mut conn, req.credentials);
    let prepare =
        conn.prepare_fetch(gix::progress::Discard, Default::default()).map_err(|e| classify(e, req.interrupt))?;
    let remote_tip: Option<(ObjectId, String)> = prepare.ref_map().mappings.iter().find_map(|m| {
        let r = match &m.remote {
            gix::remote::fetch::refmap::Source::Ref(r) => r,
            gix::remote::fetch::refmap::Source::ObjectId(_) => return None,
        };
        let (name, target, peeled) = r.unpack();
        let id = peeled.or(target)?.to_owned();
        Some((id, name.to_str_lossy().into_owned()))
    });
    if label.is_none() && pinned.is_none() {
        // Following the remote's HEAD: name the branch it points to.
        label = prepare.ref_map().remote_refs.iter().find_map(|r| match r {
            gix::protocol::handshake::Ref::Symbolic { full_ref_name, target, .. } if full_ref_name == "HEAD" => {
                target.to_str().ok().map(|t| t.trim_start_matches("refs/heads/").to_string())
            }
            _ => None,
        });
    }
    let wanted: ObjectId = match (&pinned, &remote_tip) {
        (Some(c), _) => ObjectId::from_hex(c.as_bytes()).map_err(|e| GitError::RefNotFound(format!("`{c}`: {e}")))?,
        (None, Some((id, _))) => *id,
        (None, None) => {
            let what = match (&req.git_ref.branch, &req.git_ref.tag) {
                (Some(b), _) => format!("branch `{b}` does not exist on the remote"),
                (_, Some(t)) => format!("tag `{t}` does not exist on the remote"),
                _ => "the remote has no HEAD (is the repository empty?)".to_string(),
            };
            return Err(GitError::RefNotFound(what));
        }
    };

    let mut transferred = false;
    if !repo.has_object(wanted) {
        // Shallow unless a commit is pinned (it may be anywhere in the history).
        let shallow = match pinned {
            Some(_) => {
                if repo.is_shallow().unwrap_or(false) {
                    Shallow::Deepen(u32::MAX / 2)
                } else {
                    Shallow::NoChange
                }
            }
            // First fetch: only the tip. Later fetches of a shallow repository keep its boundary, so the remote sends
            // just the commits since the last tip (as `git fetch` on a shallow clone does), not the whole tree again.
            None if repo.is_shallow().unwrap_or(false) => Shallow::NoChange,
            None => Shallow::DepthAtRemote(NonZeroU32::MIN),
        };
        prepare
            .with_shallow(shallow)
            .receive(gix::progress::Discard, req.interrupt)
            .map_err(|e| classify(e, req.interrupt))?;
        transferred = true;
    }
    if !repo.has_object(wanted) {
        return Err(GitError::RefNotFound(format!("commit {wanted} is not on the remote's {spec}")));
    }
    let commit = wanted.to_hex().to_string();
    let revision = match label {
        Some(l) => format!("{l}@sha1:{commit}"),
        None => format!("sha1:{commit}"),
    };
    Ok(Fetched { commit, revision, transferred })
}

/// Writes the tree of `commit` into an artifact under `root`: files and executables; symlinks become copies of
/// what they name inside the tree, and are left out (with a warning) when they point outside it; submodules and
/// files over the size limit are left out with a warning.
///
/// `previous` is the artifact of an earlier revision: files whose blob is unchanged are hard-linked from it instead
/// of written again (artifacts are read-only).
pub fn write_commit(
    repo_dir: &Path,
    commit: &str,
    root: &Path,
    spec_ignore: Option<&str>,
    previous: Option<&Path>,
) -> Result<Written, GitError> {
    let local = |e: &dyn std::fmt::Display| GitError::Local(format!("{e}"));
    let mut repo = gix::open_opts(repo_dir, gix::open::Options::isolated()).map_err(|e| local(&e))?;
    // Deltas in the pack resolve much faster with a cache of recently decoded objects.
    repo.object_cache_size_if_unset(16 * 1024 * 1024);
    let id = ObjectId::from_hex(commit.as_bytes()).map_err(|e| local(&e))?;
    let tree = repo
        .find_object(id)
        .map_err(|e| local(&e))?
        .peel_to_commit()
        .map_err(|e| local(&e))?
        .tree()
        .map_err(|e| local(&e))?;
    let mut rec = gix::traverse::tree::Recorder::default();
    tree.traverse().breadthfirst(&mut rec).map_err(|e| local(&e))?;
    let entries: HashMap<String, (gix::object::tree::EntryMode, ObjectId)> =
        rec.records.into_iter().map(|e| (e.filepath.to_str_lossy().into_owned(), (e.mode, e.oid))).collect();
    let sourceignore = entries
        .get(".sourceignore")
        .filter(|(m, _)| m.is_blob())
        .and_then(|(_, oid)| repo.find_object(*oid).ok().map(|o| o.data.clone()));
    let filter = Filter::new(sourceignore.as_deref(), spec_ignore);
    let mut w = ArtifactWriter::new(root)?;
    let mut paths: Vec<&String> = entries.keys().collect();
    paths.sort();
    let earlier: HashMap<String, (String, bool, u64)> = previous.map(read_index).unwrap_or_default();
    let mut index = String::new();
    let result = (|| -> Result<(), GitError> {
        for path in paths {
            let (mode, oid) = entries[path];
            if mode.is_tree() || filter.ignored(path, false) {
                continue;
            }
            if mode.is_commit() {
                w.warnings.push(format!("{path} is a submodule; submodules are not fetched"));
                continue;
            }
            // Follow symlinks inside the tree, at most 8 hops.
            let (mut cur_path, mut cur) = (path.clone(), (mode, oid));
            let mut hops = 0;
            while cur.0.is_link() && hops < 8 {
                let target = repo.find_object(cur.1).map_err(|e| local(&e))?.data.to_str_lossy().into_owned();
                match resolve_link(&cur_path, &target).and_then(|p| entries.get(&p).map(|e| (p, *e))) {
                    Some((p, e)) => (cur_path, cur) = (p, e),
                    None => break,
                }
                hops += 1;
            }
            if cur.0.is_link() || !cur.0.is_blob() {
                let target = repo.find_object(oid).map(|o| o.data.to_str_lossy().into_owned()).unwrap_or_default();
                w.warnings
                    .push(format!("symlink {path} -> {target} does not name a file inside the repository; left out"));
                continue;
            }
            let exec = cur.0.kind() == gix::object::tree::EntryKind::BlobExecutable;
            let hex = cur.1.to_hex().to_string();
            if let (Some(prev), Some((h, x, len))) = (previous, earlier.get(path.as_str())) {
                if *h == hex && *x == exec && w.link_file(path, &prev.join(path), *len, exec, cur.1.as_bytes())? {
                    index.push_str(&format!("{hex} {} {len} {path}\n", u8::from(exec)));
                    continue;
                }
            }
            let blob = repo.find_object(cur.1).map_err(|e| local(&e))?;
            if blob.data.len() as u64 > MAX_FILE_BYTES {
                w.warnings.push(format!(
                    "{path} is {} MiB, over the {} MiB limit; left out",
                    blob.data.len() >> 20,
                    MAX_FILE_BYTES >> 20
                ));
                continue;
            }
            w.add_file(path, &blob.data, exec, Some(cur.1.as_bytes()))?;
            index.push_str(&format!("{hex} {} {} {path}\n", u8::from(exec), blob.data.len()));
        }
        Ok(())
    })();
    if let Err(e) = result {
        w.abandon();
        return Err(e);
    }
    w.write_index(&index)?;
    Ok(w.finish(root, &commit[..12.min(commit.len())])?)
}

/// Reads an artifact's index: path → (blob id, executable, size).
fn read_index(dir: &Path) -> HashMap<String, (String, bool, u64)> {
    let text = std::fs::read_to_string(dir.join(INDEX_FILE)).unwrap_or_default();
    text.lines()
        .filter_map(|l| {
            let mut parts = l.splitn(4, ' ');
            let (id, x, len, path) = (parts.next()?, parts.next()?, parts.next()?, parts.next()?);
            Some((path.to_string(), (id.to_string(), x == "1", len.parse().ok()?)))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn semver_picks_the_highest_match() {
        let tags = ["v1.0.0", "v1.2.0", "1.10.1", "v2.0.0", "latest"];
        let (t, _) = pick_semver(">=1.0.0, <2.0.0", tags.iter().copied()).unwrap();
        assert_eq!(t, "1.10.1");
        assert!(pick_semver(">=3", tags.iter().copied()).is_none());
    }

    #[test]
    fn error_chains_read_as_one_line() {
        let raw = "Message { message: \"Transport handshake failed\" }\n\nCaused by:\n    0: AuthenticationRefused(\"Will not send credentials\")";
        assert_eq!(tidy(raw), "Transport handshake failed: Will not send credentials");
    }

    #[test]
    fn redacts_credentials_in_urls() {
        let m = redact("fetching https://bob:s3cret@example.com/r.git failed; see http://x/y");
        assert_eq!(m, "fetching https://***@example.com/r.git failed; see http://x/y");
        assert!(!format!("{:?}", Credentials::Bearer("tok".into())).contains("tok"));
    }
}
