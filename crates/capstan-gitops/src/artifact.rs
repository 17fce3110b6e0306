//! Artifacts: one checkout per revision, written through a filter (ignore rules, size limit, symlinks kept inside),
//! with a content digest, and garbage-collected when old.

use std::collections::BTreeMap;
use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

use gix::bstr::BStr;
use gix::ignore::search::Ignore;
use sha2::{Digest, Sha256};

/// Paths left out of every artifact, as Flux leaves them out (version control and CI files, images, archives).
pub const DEFAULT_IGNORE: &str = "\
/.git/
/.gitignore
/.gitmodules
/.gitattributes
*.jpg
*.jpeg
*.gif
*.png
*.wmv
*.flv
*.tar.gz
*.zip
/.github/
/.circleci/
/.travis.yml
/.gitlab-ci.yml
/appveyor.yml
/.drone.yml
/cloudbuild.yaml
/codeship-services.yml
/codeship-steps.yml
**/.goreleaser.yml
**/.sops.yaml
";

/// Files larger than this are left out of an artifact, with a warning: manifests are small, and a large file
/// would cost every revision memory and disk for nothing.
pub const MAX_FILE_BYTES: u64 = 16 * 1024 * 1024;

/// The file in a Git artifact listing each file's blob id, mode and size, so the next revision can share
/// unchanged files. Hidden, so builds skip it.
pub const INDEX_FILE: &str = ".capstan-index";

/// How many artifacts of one Source are kept: the newest and two before it, so a Sync can still read the
/// revision it applied while a newer one is fetched.
pub const KEEP_ARTIFACTS: usize = 3;

/// Why an artifact could not be written.
#[derive(Debug, thiserror::Error)]
pub enum ArtifactError {
    #[error("writing the artifact {path}: {source}")]
    Io { path: PathBuf, source: std::io::Error },
    #[error("`{0}` is not a safe path inside the repository")]
    UnsafePath(String),
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> ArtifactError + '_ {
    move |source| ArtifactError::Io { path: path.to_path_buf(), source }
}

/// Ignore rules: the defaults, the repository's `.sourceignore`, and the Source's `spec.ignore`, in .gitignore syntax.
pub struct Filter {
    search: gix::ignore::Search,
}

impl Filter {
    pub fn new(sourceignore: Option<&[u8]>, spec_ignore: Option<&str>) -> Filter {
        let mut search = gix::ignore::Search::default();
        let parse = Ignore::default();
        let mut add = |bytes: &[u8], name: &str| {
            // Only fails on reading files; buffers cannot fail.
            let _ = search.add_patterns_buffer(bytes, name, None, parse);
        };
        add(DEFAULT_IGNORE.as_bytes(), "<defaults>");
        if let Some(b) = sourceignore {
            add(b, ".sourceignore");
        }
        if let Some(s) = spec_ignore {
            add(s.as_bytes(), "spec.ignore");
        }
        Filter { search }
    }

    /// Whether `rel` (slash-separated, relative to the root) is left out, directly or through a parent directory.
    pub fn ignored(&self, rel: &str, is_dir: bool) -> bool {
        let parts: Vec<&str> = rel.split('/').collect();
        for i in 1..=parts.len() {
            let prefix = parts[..i].join("/");
            let dir = i < parts.len() || is_dir;
            let m = self.search.pattern_matching_relative_path(
                BStr::new(prefix.as_bytes()),
                Some(dir),
                gix::glob::pattern::Case::Sensitive,
            );
            if let Some(m) = m {
                if !m.pattern.is_negative() {
                    return true;
                }
            }
        }
        false
    }
}

/// Checks a slash-separated relative path: no `..`, no absolute part, no `.git` component.
pub fn safe_relative(rel: &str) -> Result<(), ArtifactError> {
    let bad = rel.is_empty()
        || rel.starts_with('/')
        || rel.split('/').any(|p| p.is_empty() || p == "." || p == ".." || p.eq_ignore_ascii_case(".git"))
        || rel.contains('\0');
    if bad {
        Err(ArtifactError::UnsafePath(rel.to_string()))
    } else {
        Ok(())
    }
}

/// Resolves a symlink's `target`, written in the file at `link` (both relative to the root), without touching the
/// file system; `None` when it is absolute or climbs out of the root.
pub fn resolve_link(link: &str, target: &str) -> Option<String> {
    if target.starts_with('/') {
        return None;
    }
    let mut parts: Vec<&str> = link.split('/').collect();
    parts.pop();
    for p in target.split('/') {
        match p {
            "" | "." => {}
            ".." => {
                parts.pop()?;
            }
            other => parts.push(other),
        }
    }
    if parts.is_empty() {
        return None;
    }
    Some(parts.join("/"))
}

/// Writes one artifact into a temporary directory, then moves it into place.
pub struct ArtifactWriter {
    tmp: PathBuf,
    /// Directories already created, so each is made once.
    dirs: std::collections::HashSet<PathBuf>,
    /// Path → (mode, content id): sha256 of the content, or the Git blob id for files from Git.
    files: BTreeMap<String, (u32, Vec<u8>)>,
    size: u64,
    pub warnings: Vec<String>,
}

/// A finished artifact.
#[derive(Debug, Clone)]
pub struct Written {
    pub dir: PathBuf,
    pub digest: String,
    pub size: u64,
    pub files: u64,
    pub warnings: Vec<String>,
}

impl ArtifactWriter {
    /// Starts an artifact under `root` (the Source's directory).
    pub fn new(root: &Path) -> Result<ArtifactWriter, ArtifactError> {
        let mut rnd = [0u8; 6];
        let _ = getrandom::getrandom(&mut rnd);
        let tmp = root.join(format!(".tmp-{}", hex::encode(rnd)));
        std::fs::create_dir_all(&tmp).map_err(io(&tmp))?;
        Ok(ArtifactWriter { tmp, dirs: Default::default(), files: BTreeMap::new(), size: 0, warnings: Vec::new() })
    }

    fn parent_dir(&mut self, path: &Path) -> Result<(), ArtifactError> {
        if let Some(parent) = path.parent() {
            if !self.dirs.contains(parent) {
                std::fs::create_dir_all(parent).map_err(io(parent))?;
                self.dirs.insert(parent.to_path_buf());
            }
        }
        Ok(())
    }

    /// Adds one file; `rel` must be a safe relative path. `id` identifies the content (the Git blob id); without
    /// one, the content's sha256 does.
    pub fn add_file(
        &mut self,
        rel: &str,
        content: &[u8],
        executable: bool,
        id: Option<&[u8]>,
    ) -> Result<(), ArtifactError> {
        safe_relative(rel)?;
        let path = self.tmp.join(rel);
        self.parent_dir(&path)?;
        let mode = if executable { 0o555 } else { 0o444 };
        let mut f = std::fs::OpenOptions::new()
            .create_new(true)
            .write(true)
            .mode(mode)
            .custom_flags(libc::O_NOFOLLOW)
            .open(&path)
            .map_err(io(&path))?;
        f.write_all(content).map_err(io(&path))?;
        self.size += content.len() as u64;
        let id = id.map(<[u8]>::to_vec).unwrap_or_else(|| Sha256::digest(content).to_vec());
        self.files.insert(rel.to_string(), (mode, id));
        Ok(())
    }

    /// Adds a file identical to one in an earlier artifact as a hard link to it: artifacts are read-only, so
    /// revisions share unchanged files instead of writing them again. Returns false (and adds nothing) when the
    /// earlier file is not a plain file of the expected size.
    pub fn link_file(
        &mut self,
        rel: &str,
        from: &Path,
        len: u64,
        executable: bool,
        id: &[u8],
    ) -> Result<bool, ArtifactError> {
        safe_relative(rel)?;
        match std::fs::symlink_metadata(from) {
            Ok(m) if m.is_file() && m.len() == len => {}
            _ => return Ok(false),
        }
        let path = self.tmp.join(rel);
        self.parent_dir(&path)?;
        if std::fs::hard_link(from, &path).is_err() {
            return Ok(false);
        }
        self.size += len;
        self.files.insert(rel.to_string(), (if executable { 0o555 } else { 0o444 }, id.to_vec()));
        Ok(true)
    }

    /// Writes the artifact's index (see [`INDEX_FILE`]).
    pub fn write_index(&self, text: &str) -> Result<(), ArtifactError> {
        let path = self.tmp.join(INDEX_FILE);
        std::fs::write(&path, text).map_err(io(&path))
    }

    /// The digest of everything added so far: sha256 over sorted paths, modes and content hashes.
    pub fn digest(&self) -> String {
        let mut h = Sha256::new();
        for (path, (mode, id)) in &self.files {
            h.update(path.as_bytes());
            h.update([0]);
            h.update(format!("{mode:o}").as_bytes());
            h.update([0]);
            h.update(id);
            h.update(b"\n");
        }
        format!("sha256:{}", hex::encode(h.finalize()))
    }

    /// Moves the artifact to `root/artifacts/<id>`; an existing artifact of the same id is kept as it is.
    pub fn finish(self, root: &Path, id: &str) -> Result<Written, ArtifactError> {
        let digest = self.digest();
        let dir = root.join("artifacts").join(id);
        let parent = root.join("artifacts");
        std::fs::create_dir_all(&parent).map_err(io(&parent))?;
        if dir.exists() {
            let _ = std::fs::remove_dir_all(&self.tmp);
        } else {
            std::fs::rename(&self.tmp, &dir).map_err(io(&dir))?;
        }
        Ok(Written { dir, digest, size: self.size, files: self.files.len() as u64, warnings: self.warnings })
    }

    /// Throws the unfinished artifact away.
    pub fn abandon(self) {
        let _ = std::fs::remove_dir_all(&self.tmp);
    }
}

/// The artifact directory of a revision id under a Source's root.
pub fn artifact_dir(root: &Path, id: &str) -> PathBuf {
    root.join("artifacts").join(id)
}

/// Deletes all but the newest `keep` artifacts under `root` (and stale temporary directories); never `protect`.
pub fn collect_garbage(root: &Path, keep: usize, protect: &[PathBuf]) {
    if let Ok(rd) = std::fs::read_dir(root) {
        for e in rd.flatten() {
            if e.file_name().to_string_lossy().starts_with(".tmp-") {
                let _ = std::fs::remove_dir_all(e.path());
            }
        }
    }
    let Ok(rd) = std::fs::read_dir(root.join("artifacts")) else { return };
    let mut dirs: Vec<(std::time::SystemTime, PathBuf)> =
        rd.flatten().filter_map(|e| Some((e.metadata().ok()?.modified().ok()?, e.path()))).collect();
    dirs.sort_by_key(|d| std::cmp::Reverse(d.0));
    for (_, d) in dirs.into_iter().skip(keep) {
        if !protect.contains(&d) {
            let _ = std::fs::remove_dir_all(d);
        }
    }
}

/// Copies a local directory into an artifact: regular files only, symlinks followed only when they stay inside.
pub fn write_dir(src: &Path, root: &Path, spec_ignore: Option<&str>) -> Result<Written, ArtifactError> {
    let sourceignore = std::fs::read(src.join(".sourceignore")).ok();
    let filter = Filter::new(sourceignore.as_deref(), spec_ignore);
    let mut w = ArtifactWriter::new(root)?;
    let result = walk(src, src, "", &filter, &mut w);
    if let Err(e) = result {
        w.abandon();
        return Err(e);
    }
    let id = w.digest().trim_start_matches("sha256:")[..16].to_string();
    w.finish(root, &id)
}

fn walk(base: &Path, dir: &Path, rel: &str, filter: &Filter, w: &mut ArtifactWriter) -> Result<(), ArtifactError> {
    let mut entries: Vec<_> = std::fs::read_dir(dir).map_err(io(dir))?.flatten().collect();
    entries.sort_by_key(|e| e.file_name());
    for e in entries {
        let name = e.file_name().to_string_lossy().into_owned();
        let child_rel = if rel.is_empty() { name.clone() } else { format!("{rel}/{name}") };
        let Ok(meta) = std::fs::symlink_metadata(e.path()) else { continue };
        if meta.is_dir() {
            if name == ".git" || filter.ignored(&child_rel, true) {
                continue;
            }
            walk(base, &e.path(), &child_rel, filter, w)?;
        } else if filter.ignored(&child_rel, false) {
            continue;
        } else if meta.is_file() {
            add_local_file(w, &child_rel, &e.path(), meta.len(), is_exec(&meta))?;
        } else if meta.file_type().is_symlink() {
            let target = std::fs::read_link(e.path()).map(|t| t.to_string_lossy().into_owned()).unwrap_or_default();
            match resolve_link(&child_rel, &target) {
                None => {
                    w.warnings.push(format!("symlink {child_rel} -> {target} points outside the directory; left out"))
                }
                Some(inner) => {
                    let p = base.join(&inner);
                    match std::fs::symlink_metadata(&p) {
                        Ok(m) if m.is_file() => add_local_file(w, &child_rel, &p, m.len(), is_exec(&m))?,
                        _ => w.warnings.push(format!(
                            "symlink {child_rel} -> {target} does not name a regular file inside the directory; left out"
                        )),
                    }
                }
            }
        }
    }
    Ok(())
}

fn is_exec(m: &std::fs::Metadata) -> bool {
    use std::os::unix::fs::PermissionsExt;
    m.permissions().mode() & 0o111 != 0
}

fn add_local_file(w: &mut ArtifactWriter, rel: &str, path: &Path, len: u64, exec: bool) -> Result<(), ArtifactError> {
    if len > MAX_FILE_BYTES {
        w.warnings.push(format!("{rel} is {} MiB, over the {} MiB limit; left out", len >> 20, MAX_FILE_BYTES >> 20));
        return Ok(());
    }
    let content = std::fs::read(path).map_err(io(path))?;
    w.add_file(rel, &content, exec, None)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn filter_defaults_and_negation() {
        let f = Filter::new(Some(b"secret/\n!keep.png\n"), Some("*.md\n"));
        assert!(f.ignored(".github/workflows/ci.yaml", false));
        assert!(f.ignored("logo.png", false));
        assert!(!f.ignored("keep.png", false));
        assert!(f.ignored("secret/x.yaml", false));
        assert!(f.ignored("README.md", false));
        assert!(!f.ignored("deploy/app.yaml", false));
    }

    #[test]
    fn links_stay_inside() {
        assert_eq!(resolve_link("a/b/link", "../c.yaml").as_deref(), Some("a/c.yaml"));
        assert_eq!(resolve_link("link", "x/y").as_deref(), Some("x/y"));
        assert_eq!(resolve_link("a/link", "../../etc/passwd"), None);
        assert_eq!(resolve_link("link", "/etc/passwd"), None);
    }

    #[test]
    fn unsafe_paths_are_refused() {
        for bad in ["../x", "/abs", "a/../b", ".git/config", "a//b", ""] {
            assert!(safe_relative(bad).is_err(), "{bad}");
        }
        assert!(safe_relative("a/b.yaml").is_ok());
    }

    #[test]
    fn directory_artifact_digest_is_stable_and_links_are_checked() {
        let src = tempfile::tempdir().unwrap();
        let root = tempfile::tempdir().unwrap();
        std::fs::create_dir(src.path().join("deploy")).unwrap();
        std::fs::write(src.path().join("deploy/app.yaml"), "kind: App\n").unwrap();
        std::fs::write(src.path().join("logo.png"), "png").unwrap();
        std::os::unix::fs::symlink("/etc/passwd", src.path().join("deploy/passwd.yaml")).unwrap();
        std::os::unix::fs::symlink("app.yaml", src.path().join("deploy/alias.yaml")).unwrap();
        let a = write_dir(src.path(), root.path(), None).unwrap();
        assert_eq!(a.files, 2, "app.yaml and the inner symlink's copy");
        assert!(a.dir.join("deploy/alias.yaml").is_file());
        assert!(!a.dir.join("deploy/passwd.yaml").exists());
        assert!(!a.dir.join("logo.png").exists());
        assert_eq!(a.warnings.len(), 1, "{:?}", a.warnings);
        assert!(a.warnings[0].contains("outside"));
        let b = write_dir(src.path(), root.path(), None).unwrap();
        assert_eq!(a.digest, b.digest);
        std::fs::write(src.path().join("deploy/app.yaml"), "kind: App # changed\n").unwrap();
        let c = write_dir(src.path(), root.path(), None).unwrap();
        assert_ne!(a.digest, c.digest);
        collect_garbage(root.path(), 1, &[]);
        let left: Vec<_> = std::fs::read_dir(root.path().join("artifacts")).unwrap().collect();
        assert_eq!(left.len(), 1);
    }
}
