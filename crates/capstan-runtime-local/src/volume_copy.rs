//! Replacing one directory with a verified copy of another: passes that trust size and time only where that proves
//! something, a swap that keeps the old contents until the copy is verified, and a restore when it is not.
//!
//! Equal size and modification time do not prove equal contents (git's "racily clean" problem): two replicas that
//! write a file of the same length within one kernel clock tick leave two different files with the same size and
//! the same nanosecond mtime. So the first pass trusts nothing: a file of equal size is compared byte for byte. The
//! second pass (with the source frozen) trusts a file only when the source still has exactly what the first pass
//! read — same inode, size, mtime and ctime, the ctime older than the first pass by a minute (wider than any clock
//! tick and the kernel's writeback of pages written through memory maps) — and reads every other file again. Every source file's SHA-256 is recorded as it is read; after the swap
//! the target is read back and must hold the same entries with the same digests, else its previous contents are
//! put back and the copy is reported as failed.

use std::collections::BTreeMap;
use std::fs::{File, Metadata};
use std::io::{self, Read, Write};
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use serde::Serialize;
use sha2::{Digest, Sha256};

/// How much older than the first pass a file's change time must be before its size and times are trusted. Wider
/// than any timestamp granularity and clock tick, and than the kernel's writeback of dirty pages (30 s by
/// default): a write through a shared memory mapping updates the times only when a clean page is first dirtied,
/// so a page dirtied shortly before the first pass can change again without moving them; a minute after its last
/// change a file's pages have been written back, and its next write moves its change time.
const TRUST_MARGIN: Duration = Duration::from_secs(60);

/// What one pass copied.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct MirrorStats {
    /// Files (and symlinks) written to the copy.
    pub files: u64,
    pub bytes: u64,
    /// Entries removed from the copy because the source no longer has them.
    pub removed: u64,
    /// Files of equal size whose contents were compared byte for byte (and found equal).
    pub compared: u64,
}

/// One entry of a directory tree, as the copy must reproduce it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Entry {
    Dir,
    Symlink(PathBuf),
    File { len: u64, mode: u32, sha256: [u8; 32] },
}

/// What was read of a source file: enough to tell later whether it may have changed since.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Stamp {
    ino: u64,
    len: u64,
    mtime: (i64, i64),
    ctime: (i64, i64),
}

impl Stamp {
    fn of(m: &Metadata) -> Stamp {
        Stamp { ino: m.ino(), len: m.len(), mtime: (m.mtime(), m.mtime_nsec()), ctime: (m.ctime(), m.ctime_nsec()) }
    }

    fn changed_before(&self, t: SystemTime) -> bool {
        let Ok(d) = t.duration_since(SystemTime::UNIX_EPOCH) else { return false };
        (self.ctime.0, self.ctime.1) < (d.as_secs() as i64, i64::from(d.subsec_nanos()))
    }
}

/// A source file the first pass read, and the copy it left.
#[derive(Debug, Clone)]
struct Seen {
    source: Stamp,
    copy: Stamp,
    entry: Entry,
}

/// The source tree as the last pass read it, by path relative to its root.
pub type Snapshot = BTreeMap<PathBuf, Entry>;

/// Why a copy failed.
#[derive(Debug, thiserror::Error)]
pub enum CopyError {
    #[error("{action} {}: {source}", path.display())]
    Io { action: &'static str, path: PathBuf, source: io::Error },
    #[error("the copy does not match the source: {0}; the target's previous contents were put back")]
    Mismatch(VerifyError),
    #[error(
        "the copy does not match the source ({mismatch}) and putting the previous contents back failed: {restore}; they are in {}",
        prev.display()
    )]
    RestoreFailed { mismatch: String, restore: String, prev: PathBuf },
    #[error(
        "{} holds the contents {} had before an earlier sync that did not finish; move it back over {} or remove it, then sync again",
        prev.display(), dst.display(), dst.display()
    )]
    Leftover { prev: PathBuf, dst: PathBuf },
}

/// Why a copy read back does not verify.
#[derive(Debug, thiserror::Error)]
pub enum VerifyError {
    /// The copy could not be read back.
    #[error("reading {} back: {source}", root.display())]
    Unreadable { root: PathBuf, source: io::Error },
    /// The copy differs: the first few differences, and how many more there are.
    #[error("{}{}", .shown.join(", "), and_more(*.hidden))]
    Differs { shown: Vec<String>, hidden: usize },
}

/// ` and N more` when there are more differences than shown.
fn and_more(hidden: usize) -> String {
    if hidden > 0 {
        format!(" and {hidden} more")
    } else {
        String::new()
    }
}

fn io_err<'a>(action: &'static str, path: &'a Path) -> impl FnOnce(io::Error) -> CopyError + 'a {
    move |source| CopyError::Io { action, path: path.to_path_buf(), source }
}

/// Replaces directory `dst` with a copy of `src`, built beside it as `<dst>.sync` and swapped in by rename; the old
/// contents stay as `<dst>.prev` until the copy is verified.
pub struct Replace {
    src: PathBuf,
    dst: PathBuf,
    tmp: PathBuf,
    prev: PathBuf,
    /// Every file the first pass read, with what it found.
    seen: BTreeMap<PathBuf, Seen>,
    /// When the first pass started; `None` until it ran.
    first_pass: Option<SystemTime>,
    /// [`TRUST_MARGIN`]; smaller in tests, which cannot wait for it.
    margin: Duration,
    snapshot: Snapshot,
}

fn sibling(dst: &Path, suffix: &str) -> PathBuf {
    let mut name = dst.file_name().map(|n| n.to_os_string()).unwrap_or_default();
    name.push(suffix);
    dst.with_file_name(name)
}

impl Replace {
    /// Prepares the copy: `<dst>.sync` starts as hard links to `dst`'s files (so unchanged files cost nothing and
    /// `dst` itself is never written: every changed file is replaced, not written in place).
    pub fn begin(src: &Path, dst: &Path) -> Result<Replace, CopyError> {
        let tmp = sibling(dst, ".sync");
        let prev = sibling(dst, ".prev");
        // A `.prev` is the target's contents from a sync that did not finish. Without the target it is the only copy
        // and goes back; beside one, which of the two is right cannot be told here, and neither is deleted.
        recover(dst)?;
        if prev.exists() {
            return Err(CopyError::Leftover { prev, dst: dst.to_path_buf() });
        }
        remove_any(&tmp).map_err(io_err("removing", &tmp))?;
        if dst.is_dir() {
            link_tree(dst, &tmp)?;
        } else {
            std::fs::create_dir_all(&tmp).map_err(io_err("creating", &tmp))?;
        }
        Ok(Replace {
            src: src.to_path_buf(),
            dst: dst.to_path_buf(),
            tmp,
            prev,
            seen: BTreeMap::new(),
            first_pass: None,
            margin: TRUST_MARGIN,
            snapshot: Snapshot::new(),
        })
    }

    /// Where the copy is being built.
    pub fn staging(&self) -> &Path {
        &self.tmp
    }

    /// A pass over the whole source. The first trusts nothing; a later one trusts files the first read and that
    /// have not changed since (see the module's comment). Returns what it copied.
    pub fn pass(&mut self) -> Result<MirrorStats, CopyError> {
        let started = SystemTime::now();
        let trust_before = self.first_pass.map(|t| t.checked_sub(self.margin).unwrap_or(SystemTime::UNIX_EPOCH));
        let mut stats = MirrorStats::default();
        let mut snapshot = Snapshot::new();
        let mut seen = BTreeMap::new();
        let mut walk =
            Walk { trust_before, previous: &self.seen, seen: &mut seen, snapshot: &mut snapshot, stats: &mut stats };
        walk.dir(&self.src, &self.tmp, Path::new(""))?;
        // The root keeps the source's mode (a replica's volume is 0700, and some programs insist on it).
        let root = std::fs::metadata(&self.src).map_err(io_err("reading", &self.src))?;
        std::fs::set_permissions(&self.tmp, root.permissions()).map_err(io_err("setting the mode of", &self.tmp))?;
        if self.first_pass.is_none() {
            self.first_pass = Some(started);
            self.seen = seen;
        }
        self.snapshot = snapshot;
        Ok(stats)
    }

    /// What the last pass found in the source: what the target must hold after the swap.
    pub fn snapshot(&self) -> &Snapshot {
        &self.snapshot
    }

    /// Swaps the copy in, reads it back and compares it with the last pass's snapshot. On a mismatch the target's
    /// previous contents are put back and the error says what differed.
    pub fn commit(self) -> Result<(), CopyError> {
        let had_dst = self.dst.exists();
        if had_dst {
            std::fs::rename(&self.dst, &self.prev).map_err(io_err("moving aside", &self.dst))?;
        }
        if let Err(e) = std::fs::rename(&self.tmp, &self.dst) {
            if had_dst {
                if let Err(back) = std::fs::rename(&self.prev, &self.dst) {
                    let restore = format!("moving {} back: {back}", self.prev.display());
                    return Err(CopyError::RestoreFailed { mismatch: e.to_string(), restore, prev: self.prev });
                }
            }
            return Err(CopyError::Io { action: "putting the copy in place at", path: self.dst.clone(), source: e });
        }
        sync_dir(&self.dst);
        match verify(&self.dst, &self.snapshot) {
            Ok(()) => {
                // The copy is in place and verified; the old contents go. Should that fail, `.prev` stays and the
                // next sync asks what to do with it rather than guess.
                if let Err(e) = remove_any(&self.prev) {
                    tracing::warn!("removing {} after a verified sync: {e}", self.prev.display());
                }
                Ok(())
            }
            Err(mismatch) => {
                // The failed copy is moved out of the way before anything is deleted, so the previous contents are
                // back under their name even if deleting the copy fails.
                let failed = sibling(&self.dst, ".failed");
                let restore = (|| -> io::Result<()> {
                    remove_any(&failed)?;
                    std::fs::rename(&self.dst, &failed)?;
                    if had_dst {
                        std::fs::rename(&self.prev, &self.dst)?;
                    } else {
                        std::fs::create_dir_all(&self.dst)?;
                    }
                    sync_dir(&self.dst);
                    Ok(())
                })();
                match restore {
                    Ok(()) => {
                        if let Err(e) = remove_any(&failed) {
                            tracing::warn!("removing the copy that did not verify at {}: {e}", failed.display());
                        }
                        Err(CopyError::Mismatch(mismatch))
                    }
                    Err(e) => Err(CopyError::RestoreFailed {
                        mismatch: mismatch.to_string(),
                        restore: e.to_string(),
                        prev: self.prev,
                    }),
                }
            }
        }
    }

    /// Gives up: removes the copy and leaves the target as it was.
    pub fn abort(self) {
        let _ = remove_any(&self.tmp);
    }
}

/// Puts a replica directory's previous contents back when a sync stopped after moving them aside and before the
/// copy took their place (`<dst>.prev` without `<dst>`).
pub fn recover(dst: &Path) -> Result<(), CopyError> {
    let prev = sibling(dst, ".prev");
    if prev.exists() && std::fs::symlink_metadata(dst).is_err() {
        std::fs::rename(&prev, dst).map_err(io_err("moving back", &prev))?;
        tracing::warn!("{} had been moved aside by a sync that did not finish; it is back", dst.display());
    }
    Ok(())
}

/// Why a replica directory should not be used as it is: an earlier sync left its previous contents beside it.
pub fn leftover(dst: &Path) -> Option<CopyError> {
    let prev = sibling(dst, ".prev");
    prev.exists().then(|| CopyError::Leftover { prev, dst: dst.to_path_buf() })
}

/// Flushes a directory's entries (and its parent's: the renames), so a crash keeps the swap.
fn sync_dir(dir: &Path) {
    for d in [Some(dir), dir.parent()].into_iter().flatten() {
        if let Ok(f) = File::open(d) {
            let _ = f.sync_all();
        }
    }
}

struct Walk<'a> {
    trust_before: Option<SystemTime>,
    previous: &'a BTreeMap<PathBuf, Seen>,
    seen: &'a mut BTreeMap<PathBuf, Seen>,
    snapshot: &'a mut Snapshot,
    stats: &'a mut MirrorStats,
}

impl Walk<'_> {
    fn dir(&mut self, src: &Path, dst: &Path, rel: &Path) -> Result<(), CopyError> {
        match std::fs::symlink_metadata(dst) {
            // A directory the source keeps read-only must take changes in this pass; its mode is set back after.
            Ok(m) if m.is_dir() => {
                let mode = m.permissions().mode();
                if mode & 0o700 != 0o700 {
                    std::fs::set_permissions(dst, std::fs::Permissions::from_mode(mode | 0o700))
                        .map_err(io_err("setting the mode of", dst))?;
                }
            }
            Ok(_) => {
                remove_any(dst).map_err(io_err("removing", dst))?;
                std::fs::create_dir(dst).map_err(io_err("creating", dst))?;
            }
            Err(_) => std::fs::create_dir(dst).map_err(io_err("creating", dst))?,
        }
        let mut wanted = std::collections::HashSet::new();
        for e in std::fs::read_dir(src).map_err(io_err("reading", src))? {
            let e = e.map_err(io_err("reading", src))?;
            let name = e.file_name();
            wanted.insert(name.clone());
            let (from, to, rel) = (e.path(), dst.join(&name), rel.join(&name));
            let meta = std::fs::symlink_metadata(&from).map_err(io_err("reading", &from))?;
            if meta.is_dir() {
                self.dir(&from, &to, &rel)?;
                std::fs::set_permissions(&to, meta.permissions()).map_err(io_err("setting the mode of", &to))?;
                self.snapshot.insert(rel, Entry::Dir);
            } else if meta.file_type().is_symlink() {
                let target = std::fs::read_link(&from).map_err(io_err("reading", &from))?;
                if std::fs::read_link(&to).ok().as_ref() != Some(&target) {
                    remove_any(&to).map_err(io_err("removing", &to))?;
                    std::os::unix::fs::symlink(&target, &to).map_err(io_err("creating", &to))?;
                    self.stats.files += 1;
                }
                self.snapshot.insert(rel, Entry::Symlink(target));
            } else if meta.is_file() {
                let entry = self.file(&from, &to, &meta, &rel)?;
                self.snapshot.insert(rel, entry);
            }
            // Sockets, FIFOs and devices are not data; they are left out of the copy.
        }
        for e in std::fs::read_dir(dst).map_err(io_err("reading", dst))? {
            let e = e.map_err(io_err("reading", dst))?;
            if !wanted.contains(&e.file_name()) {
                remove_any(&e.path()).map_err(io_err("removing", &e.path()))?;
                self.stats.removed += 1;
            }
        }
        Ok(())
    }

    fn file(&mut self, from: &Path, to: &Path, meta: &Metadata, rel: &Path) -> Result<Entry, CopyError> {
        let stamp = Stamp::of(meta);
        let mode = meta.permissions().mode();
        let existing = std::fs::symlink_metadata(to).ok().filter(|m| m.is_file());
        // Trusted: the first pass read this very file, it has not changed since, and the copy is still the file
        // that pass left there.
        if let (Some(trust_before), Some(seen)) = (self.trust_before, self.previous.get(rel)) {
            let copy_intact = existing.as_ref().is_some_and(|m| Stamp::of(m) == seen.copy);
            if seen.source == stamp && stamp.changed_before(trust_before) && copy_intact {
                return Ok(seen.entry.clone());
            }
        }
        if existing.as_ref().is_some_and(|m| m.len() == stamp.len && m.permissions().mode() == mode) {
            if let Some(sha256) = same_contents(from, to)? {
                self.stats.compared += 1;
                return Ok(self.saw(rel, stamp, to, Entry::File { len: stamp.len, mode, sha256 }));
            }
        }
        remove_any(to).map_err(io_err("removing", to))?;
        let (len, sha256) = copy_hashing(from, to, meta)?;
        self.stats.files += 1;
        self.stats.bytes += len;
        // What was read may be torn if the file changed while it was read: the stamp taken before the read then
        // differs from the file's, so a later pass reads it again.
        Ok(self.saw(rel, stamp, to, Entry::File { len, mode, sha256 }))
    }

    /// Records what was read of a source file and the copy it left, for a later pass to trust.
    fn saw(&mut self, rel: &Path, source: Stamp, copy: &Path, entry: Entry) -> Entry {
        if let Ok(m) = std::fs::symlink_metadata(copy) {
            self.seen.insert(rel.to_path_buf(), Seen { source, copy: Stamp::of(&m), entry: entry.clone() });
        }
        entry
    }
}

/// Reads both files; the source's digest when their contents are equal.
fn same_contents(a: &Path, b: &Path) -> Result<Option<[u8; 32]>, CopyError> {
    let mut fa = File::open(a).map_err(io_err("reading", a))?;
    let mut fb = File::open(b).map_err(io_err("reading", b))?;
    let mut hasher = Sha256::new();
    let (mut ba, mut bb) = (vec![0u8; 64 * 1024], vec![0u8; 64 * 1024]);
    loop {
        let n = read_full(&mut fa, &mut ba).map_err(io_err("reading", a))?;
        let m = read_full(&mut fb, &mut bb).map_err(io_err("reading", b))?;
        if n != m || ba[..n] != bb[..m] {
            return Ok(None);
        }
        if n == 0 {
            return Ok(Some(hasher.finalize().into()));
        }
        hasher.update(&ba[..n]);
    }
}

fn read_full(f: &mut File, buf: &mut [u8]) -> io::Result<usize> {
    let mut n = 0;
    while n < buf.len() {
        match f.read(&mut buf[n..]) {
            Ok(0) => break,
            Ok(k) => n += k,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(n)
}

/// Copies `from` to a new file `to` with the source's modification time and mode, flushed to disk; the length and
/// digest of what was copied. The time is set through the open file, before the mode, so a read-only file copies.
fn copy_hashing(from: &Path, to: &Path, meta: &Metadata) -> Result<(u64, [u8; 32]), CopyError> {
    let mut src = File::open(from).map_err(io_err("reading", from))?;
    let mut dst = File::options().write(true).create_new(true).open(to).map_err(io_err("creating", to))?;
    let mut hasher = Sha256::new();
    let mut buf = vec![0u8; 64 * 1024];
    let mut len = 0u64;
    loop {
        let n = read_full(&mut src, &mut buf).map_err(io_err("reading", from))?;
        if n == 0 {
            break;
        }
        hasher.update(&buf[..n]);
        dst.write_all(&buf[..n]).map_err(io_err("writing", to))?;
        len += n as u64;
    }
    dst.set_modified(meta.modified().map_err(io_err("reading the time of", from))?)
        .map_err(io_err("setting the time of", to))?;
    dst.set_permissions(meta.permissions()).map_err(io_err("setting the mode of", to))?;
    dst.sync_all().map_err(io_err("flushing", to))?;
    Ok((len, hasher.finalize().into()))
}

/// Makes `dst` a tree of hard links to `src`'s files (symlinks recreated, directories created); a file that cannot
/// be linked is copied.
fn link_tree(src: &Path, dst: &Path) -> Result<(), CopyError> {
    std::fs::create_dir(dst).map_err(io_err("creating", dst))?;
    for e in std::fs::read_dir(src).map_err(io_err("reading", src))? {
        let e = e.map_err(io_err("reading", src))?;
        let (from, to) = (e.path(), dst.join(e.file_name()));
        let meta = std::fs::symlink_metadata(&from).map_err(io_err("reading", &from))?;
        if meta.is_dir() {
            link_tree(&from, &to)?;
            std::fs::set_permissions(&to, meta.permissions()).map_err(io_err("setting the mode of", &to))?;
        } else if meta.file_type().is_symlink() {
            let target = std::fs::read_link(&from).map_err(io_err("reading", &from))?;
            std::os::unix::fs::symlink(&target, &to).map_err(io_err("creating", &to))?;
        } else if meta.is_file() && std::fs::hard_link(&from, &to).is_err() {
            copy_hashing(&from, &to, &meta)?;
        }
    }
    Ok(())
}

/// Reads `root` back and compares it with `want`: the same entries, each file with the same length, mode and
/// digest. The first few differences, described.
pub fn verify(root: &Path, want: &Snapshot) -> Result<(), VerifyError> {
    let mut have = Snapshot::new();
    read_tree(root, Path::new(""), &mut have)
        .map_err(|source| VerifyError::Unreadable { root: root.to_path_buf(), source })?;
    let mut diffs = Vec::new();
    for (path, w) in want {
        match have.get(path) {
            None => diffs.push(format!("{} is missing", path.display())),
            Some(h) if h != w => diffs.push(format!("{} differs", path.display())),
            Some(_) => {}
        }
    }
    for path in have.keys().filter(|p| !want.contains_key(*p)) {
        diffs.push(format!("{} should not be there", path.display()));
    }
    if diffs.is_empty() {
        return Ok(());
    }
    let hidden = diffs.len().saturating_sub(3);
    diffs.truncate(3);
    Err(VerifyError::Differs { shown: diffs, hidden })
}

fn read_tree(dir: &Path, rel: &Path, out: &mut Snapshot) -> io::Result<()> {
    for e in std::fs::read_dir(dir)? {
        let e = e?;
        let (path, rel) = (e.path(), rel.join(e.file_name()));
        let meta = std::fs::symlink_metadata(&path)?;
        if meta.is_dir() {
            read_tree(&path, &rel, out)?;
            out.insert(rel, Entry::Dir);
        } else if meta.file_type().is_symlink() {
            out.insert(rel, Entry::Symlink(std::fs::read_link(&path)?));
        } else if meta.is_file() {
            let mut f = File::open(&path)?;
            let mut hasher = Sha256::new();
            let mut len = 0u64;
            let mut buf = vec![0u8; 64 * 1024];
            loop {
                let n = read_full(&mut f, &mut buf)?;
                if n == 0 {
                    break;
                }
                hasher.update(&buf[..n]);
                len += n as u64;
            }
            out.insert(rel, Entry::File { len, mode: meta.permissions().mode(), sha256: hasher.finalize().into() });
        }
    }
    Ok(())
}

/// Removes a file, symlink or directory tree; a missing one is not an error.
pub(crate) fn remove_any(p: &Path) -> io::Result<()> {
    match std::fs::symlink_metadata(p) {
        Ok(m) if m.is_dir() => match std::fs::remove_dir_all(p) {
            // A read-only directory inside (kept read-only by the source) is opened up, then removed.
            Err(e) if e.kind() == io::ErrorKind::PermissionDenied => {
                open_up(p);
                std::fs::remove_dir_all(p)
            }
            other => other,
        },
        Ok(_) => std::fs::remove_file(p),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(e),
    }
}

/// Gives the owner full access to every directory of a tree, so it can be removed.
fn open_up(dir: &Path) {
    if let Ok(m) = std::fs::symlink_metadata(dir) {
        if m.is_dir() {
            let _ = std::fs::set_permissions(dir, std::fs::Permissions::from_mode(m.permissions().mode() | 0o700));
            for e in std::fs::read_dir(dir).into_iter().flatten().flatten() {
                open_up(&e.path());
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn read(p: &Path) -> String {
        std::fs::read_to_string(p).unwrap()
    }

    /// Source and target under one parent, as a volume's replica directories are.
    fn dirs() -> (tempfile::TempDir, PathBuf, PathBuf) {
        let root = tempfile::tempdir().unwrap();
        let (src, dst) = (root.path().join("replica-0"), root.path().join("replica-1"));
        std::fs::create_dir_all(&src).unwrap();
        std::fs::create_dir_all(&dst).unwrap();
        (root, src, dst)
    }

    #[test]
    fn copies_changes_and_removes_extras_and_a_second_pass_copies_only_what_changed() {
        let (_root, src, dst) = dirs();
        std::fs::create_dir_all(src.join("seg")).unwrap();
        std::fs::write(src.join("seg/a"), "aaaa").unwrap();
        std::fs::write(src.join("meta"), "v1").unwrap();
        std::os::unix::fs::symlink("seg/a", src.join("link")).unwrap();
        std::fs::write(dst.join("stale"), "old").unwrap();
        let mut r = Replace::begin(&src, &dst).unwrap();
        let s = r.pass().unwrap();
        assert_eq!((s.files, s.bytes, s.removed), (3, 6, 1));
        assert_eq!(std::fs::read_link(r.staging().join("link")).unwrap(), Path::new("seg/a"));
        // The target is untouched until the swap.
        assert_eq!(read(&dst.join("stale")), "old");
        std::fs::write(src.join("meta"), "v2 longer").unwrap();
        let s2 = r.pass().unwrap();
        assert_eq!((s2.files, s2.bytes, s2.removed), (1, 9, 0));
        r.commit().unwrap();
        assert_eq!(read(&dst.join("meta")), "v2 longer");
        assert_eq!(read(&dst.join("seg/a")), "aaaa");
        assert!(!dst.join("stale").exists());
        assert!(!sibling(&dst, ".prev").exists() && !sibling(&dst, ".sync").exists());
    }

    /// The data-loss case: both replicas wrote a file of the same length within one clock tick, so size and
    /// nanosecond mtime are equal while the contents differ. The copy must still hold the source's contents.
    #[test]
    fn equal_size_and_equal_nanosecond_mtime_with_different_contents_is_copied() {
        let (_root, src, dst) = dirs();
        std::fs::write(src.join("meta.json"), r#"{"segments":["aaaa"]}"#).unwrap();
        std::fs::write(dst.join("meta.json"), r#"{"segments":["bbbb"]}"#).unwrap();
        std::fs::write(src.join("aaaa.term"), "source segment").unwrap();
        std::fs::write(dst.join("bbbb.term"), "target segment").unwrap();
        let t = SystemTime::UNIX_EPOCH + Duration::new(1_790_000_000, 123_456_789);
        for p in [src.join("meta.json"), dst.join("meta.json")] {
            File::options().write(true).open(&p).unwrap().set_modified(t).unwrap();
        }
        let (a, b) =
            (std::fs::metadata(src.join("meta.json")).unwrap(), std::fs::metadata(dst.join("meta.json")).unwrap());
        assert_eq!(
            (a.len(), a.modified().unwrap()),
            (b.len(), b.modified().unwrap()),
            "the quick check sees no change"
        );
        let mut r = Replace::begin(&src, &dst).unwrap();
        r.pass().unwrap();
        r.pass().unwrap();
        r.commit().unwrap();
        assert_eq!(read(&dst.join("meta.json")), r#"{"segments":["aaaa"]}"#);
        assert_eq!(read(&dst.join("aaaa.term")), "source segment");
        assert!(!dst.join("bbbb.term").exists());
    }

    #[test]
    fn equal_files_are_compared_not_copied() {
        let (_root, src, dst) = dirs();
        std::fs::write(src.join("big"), vec![7u8; 200_000]).unwrap();
        std::fs::write(dst.join("big"), vec![7u8; 200_000]).unwrap();
        let mut r = Replace::begin(&src, &dst).unwrap();
        let s = r.pass().unwrap();
        assert_eq!((s.files, s.bytes, s.compared), (0, 0, 1));
        r.commit().unwrap();
        assert_eq!(std::fs::read(dst.join("big")).unwrap(), vec![7u8; 200_000]);
    }

    /// A file unchanged since the first pass is trusted by the second; one rewritten between the passes with the
    /// same length and its old mtime put back (as `cp -p` or `tar` would) is read again: its change time moved.
    #[test]
    fn the_second_pass_trusts_only_files_unchanged_since_the_first() {
        let (_root, src, dst) = dirs();
        std::fs::write(src.join("f"), "one").unwrap();
        std::fs::write(src.join("g"), "unchanged").unwrap();
        let mtime = std::fs::metadata(src.join("f")).unwrap().modified().unwrap();
        std::thread::sleep(Duration::from_millis(50));
        let mut r = Replace::begin(&src, &dst).unwrap();
        r.margin = Duration::ZERO;
        let s1 = r.pass().unwrap();
        assert_eq!(s1.files, 2);
        std::fs::write(src.join("f"), "two").unwrap();
        File::options().write(true).open(src.join("f")).unwrap().set_modified(mtime).unwrap();
        let s2 = r.pass().unwrap();
        assert_eq!((s2.files, s2.bytes, s2.compared), (1, 3, 0), "g trusted, f copied again");
        r.commit().unwrap();
        assert_eq!(read(&dst.join("f")), "two");
        assert_eq!(read(&dst.join("g")), "unchanged");
    }

    /// Without the margin nothing young is trusted: a file changed just before the first pass is compared again.
    #[test]
    fn files_changed_within_the_margin_are_compared_again() {
        let (_root, src, dst) = dirs();
        std::fs::write(src.join("g"), "young").unwrap();
        let mut r = Replace::begin(&src, &dst).unwrap();
        r.pass().unwrap();
        let s2 = r.pass().unwrap();
        assert_eq!((s2.files, s2.compared), (0, 1));
        r.commit().unwrap();
    }

    /// Something writes into the copy after the last pass (a disk fault, a stray process): the read-back finds it,
    /// the target gets its previous contents back, and the copy is reported as failed.
    #[test]
    fn a_copy_that_does_not_verify_restores_the_target_and_fails() {
        let (_root, src, dst) = dirs();
        std::fs::write(src.join("meta.json"), "source").unwrap();
        std::fs::write(dst.join("meta.json"), "target").unwrap();
        std::fs::create_dir_all(dst.join("seg")).unwrap();
        std::fs::write(dst.join("seg/x"), "target segment").unwrap();
        let mut r = Replace::begin(&src, &dst).unwrap();
        r.pass().unwrap();
        r.pass().unwrap();
        std::fs::write(r.staging().join("meta.json"), "torn!!").unwrap();
        std::fs::write(r.staging().join("extra"), "x").unwrap();
        let err = r.commit().unwrap_err();
        let msg = err.to_string();
        assert!(matches!(err, CopyError::Mismatch(_)), "{msg}");
        assert!(msg.contains("meta.json differs") && msg.contains("extra should not be there"), "{msg}");
        assert_eq!(read(&dst.join("meta.json")), "target");
        assert_eq!(read(&dst.join("seg/x")), "target segment");
        assert!(!dst.join("extra").exists());
        assert!(!sibling(&dst, ".prev").exists());
    }

    /// The target's previous contents are never written through the hard links the copy starts from.
    #[test]
    fn the_previous_contents_stay_intact_until_the_swap() {
        let (_root, src, dst) = dirs();
        std::fs::write(src.join("f"), "new!").unwrap();
        std::fs::write(dst.join("f"), "old!").unwrap();
        let mut r = Replace::begin(&src, &dst).unwrap();
        r.pass().unwrap();
        assert_eq!(read(&dst.join("f")), "old!");
        assert_eq!(read(&r.staging().join("f")), "new!");
        r.abort();
        assert_eq!(read(&dst.join("f")), "old!");
        assert!(!sibling(&dst, ".sync").exists());
    }

    /// A swap interrupted after the target was moved aside leaves `.prev` as its only copy: the next sync puts it
    /// back before anything else.
    #[test]
    fn an_interrupted_swap_is_undone_by_the_next_begin() {
        let (_root, src, dst) = dirs();
        std::fs::write(dst.join("f"), "keep me").unwrap();
        std::fs::rename(&dst, sibling(&dst, ".prev")).unwrap();
        let r = Replace::begin(&src, &dst).unwrap();
        assert_eq!(read(&dst.join("f")), "keep me");
        r.abort();
    }

    /// `.prev` beside the target: which one is right cannot be told, so nothing is deleted and the sync refuses.
    #[test]
    fn a_leftover_beside_the_target_is_kept_and_refused() {
        let (_root, src, dst) = dirs();
        std::fs::write(dst.join("f"), "current").unwrap();
        let prev = sibling(&dst, ".prev");
        std::fs::create_dir_all(&prev).unwrap();
        std::fs::write(prev.join("f"), "before").unwrap();
        let err = Replace::begin(&src, &dst).err().expect("refused");
        assert!(matches!(err, CopyError::Leftover { .. }), "{err}");
        assert!(err.to_string().contains("move it back"), "{err}");
        assert_eq!((read(&dst.join("f")), read(&prev.join("f"))), ("current".into(), "before".into()));
        assert!(leftover(&dst).is_some());
    }

    /// Modes travel with the copy: the volume's own 0700, a read-only file in a read-only directory.
    #[test]
    fn modes_are_kept_read_only_ones_included() {
        let (_root, src, dst) = dirs();
        let mode = |p: &Path| std::fs::symlink_metadata(p).unwrap().permissions().mode() & 0o7777;
        std::fs::create_dir_all(src.join("ro")).unwrap();
        std::fs::write(src.join("ro/f"), "frozen").unwrap();
        std::fs::set_permissions(src.join("ro/f"), std::fs::Permissions::from_mode(0o444)).unwrap();
        std::fs::set_permissions(src.join("ro"), std::fs::Permissions::from_mode(0o555)).unwrap();
        std::fs::set_permissions(&src, std::fs::Permissions::from_mode(0o700)).unwrap();
        std::fs::set_permissions(&dst, std::fs::Permissions::from_mode(0o755)).unwrap();
        let mut r = Replace::begin(&src, &dst).unwrap();
        r.pass().unwrap();
        r.pass().unwrap();
        r.commit().unwrap();
        assert_eq!((mode(&dst), mode(&dst.join("ro")), mode(&dst.join("ro/f"))), (0o700, 0o555, 0o444));
        assert_eq!(read(&dst.join("ro/f")), "frozen");
        // A second sync over the read-only tree works too, and removes what it must.
        std::fs::set_permissions(src.join("ro"), std::fs::Permissions::from_mode(0o755)).unwrap();
        std::fs::remove_file(src.join("ro/f")).unwrap();
        let mut r = Replace::begin(&src, &dst).unwrap();
        r.pass().unwrap();
        r.commit().unwrap();
        assert!(!dst.join("ro/f").exists());
        assert_eq!(mode(&dst.join("ro")), 0o755);
    }

    #[test]
    fn verify_names_missing_and_different_entries() {
        let root = tempfile::tempdir().unwrap();
        std::fs::write(root.path().join("a"), "1").unwrap();
        let mut want = Snapshot::new();
        want.insert(PathBuf::from("b"), Entry::Dir);
        let err = verify(root.path(), &want).unwrap_err().to_string();
        assert!(err.contains("b is missing") && err.contains("a should not be there"), "{err}");
    }
}
