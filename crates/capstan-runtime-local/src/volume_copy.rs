//! Replacing one directory with a verified copy of another: passes that trust size and time only where that proves
//! something, a swap that keeps the old contents until the copy is verified, and a restore when it is not.
//!
//! Equal size and modification time do not prove equal contents (git's "racily clean" problem): two replicas that
//! write a file of the same length within one kernel clock tick leave two different files with the same size and
//! the same nanosecond mtime. So the first pass trusts nothing: a file of equal size is compared byte for byte. The
//! second pass (with the source frozen) trusts a file only when the source still has exactly what the first pass
//! read — same inode, size, mtime and ctime, the ctime older than the first pass by a margin wider than any clock
//! tick — and reads every other file again. Every source file's SHA-256 is recorded as it is read; after the swap
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

/// How much older than the first pass a file's change time must be before its size and times are trusted: wider
/// than any file system's timestamp granularity and the kernel's coarse clock tick.
const TRUST_MARGIN: Duration = Duration::from_secs(2);

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
    Mismatch(String),
    #[error(
        "the copy does not match the source ({mismatch}) and putting the previous contents back failed: {restore}"
    )]
    RestoreFailed { mismatch: String, restore: String },
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
        remove_any(&tmp).map_err(io_err("removing", &tmp))?;
        // A `.prev` left by an interrupted swap is the only copy of the target's contents when `dst` is missing.
        if prev.exists() && !dst.exists() {
            std::fs::rename(&prev, dst).map_err(io_err("restoring", dst))?;
        }
        remove_any(&prev).map_err(io_err("removing", &prev))?;
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
                let _ = std::fs::rename(&self.prev, &self.dst);
            }
            return Err(CopyError::Io { action: "putting the copy in place at", path: self.dst.clone(), source: e });
        }
        match verify(&self.dst, &self.snapshot) {
            Ok(()) => {
                let _ = remove_any(&self.prev);
                Ok(())
            }
            Err(mismatch) => {
                let restore = (|| -> io::Result<()> {
                    remove_any(&self.dst)?;
                    if had_dst {
                        std::fs::rename(&self.prev, &self.dst)?;
                    } else {
                        std::fs::create_dir_all(&self.dst)?;
                    }
                    Ok(())
                })();
                match restore {
                    Ok(()) => Err(CopyError::Mismatch(mismatch)),
                    Err(e) => Err(CopyError::RestoreFailed { mismatch, restore: e.to_string() }),
                }
            }
        }
    }

    /// Gives up: removes the copy and leaves the target as it was.
    pub fn abort(self) {
        let _ = remove_any(&self.tmp);
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
            Ok(m) if m.is_dir() => {}
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
        let (len, sha256) = copy_hashing(from, to, mode)?;
        set_mtime(to, meta)?;
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

/// Sets a new copy's modification time to the source's, so `ls -l` and backups see the same times.
fn set_mtime(to: &Path, meta: &Metadata) -> Result<(), CopyError> {
    let want = meta.modified().map_err(io_err("reading the time of", to))?;
    let have = std::fs::metadata(to).and_then(|m| m.modified()).ok();
    if have != Some(want) {
        let f = File::options().write(true).open(to).map_err(io_err("opening", to))?;
        f.set_modified(want).map_err(io_err("setting the time of", to))?;
    }
    Ok(())
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

/// Copies `from` to a new file `to` with `mode`, flushed to disk; the length and digest of what was copied.
fn copy_hashing(from: &Path, to: &Path, mode: u32) -> Result<(u64, [u8; 32]), CopyError> {
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
    dst.set_permissions(std::fs::Permissions::from_mode(mode)).map_err(io_err("setting the mode of", to))?;
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
            copy_hashing(&from, &to, meta.permissions().mode())?;
            set_mtime(&to, &meta)?;
        }
    }
    Ok(())
}

/// Reads `root` back and compares it with `want`: the same entries, each file with the same length, mode and
/// digest. The first few differences, described.
pub fn verify(root: &Path, want: &Snapshot) -> Result<(), String> {
    let mut have = Snapshot::new();
    read_tree(root, Path::new(""), &mut have).map_err(|e| format!("reading {} back: {e}", root.display()))?;
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
    let n = diffs.len();
    diffs.truncate(3);
    let more = if n > 3 { format!(" and {} more", n - 3) } else { String::new() };
    Err(format!("{}{more}", diffs.join(", ")))
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
        Ok(m) if m.is_dir() => std::fs::remove_dir_all(p),
        Ok(_) => std::fs::remove_file(p),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(e),
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

    #[test]
    fn verify_names_missing_and_different_entries() {
        let root = tempfile::tempdir().unwrap();
        std::fs::write(root.path().join("a"), "1").unwrap();
        let mut want = Snapshot::new();
        want.insert(PathBuf::from("b"), Entry::Dir);
        let err = verify(root.path(), &want).unwrap_err();
        assert!(err.contains("b is missing") && err.contains("a should not be there"), "{err}");
    }
}
