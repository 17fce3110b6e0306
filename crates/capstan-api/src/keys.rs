//! The key-encryption key of the store, from outside the data directory: a key file (made 0600 on first start)
//! or a command that prints it, as KMS plugins do; and its rotation.

use std::path::{Path, PathBuf};
use std::time::Duration;

use capstan_store::seal::Keyring;
use capstan_store::{Rotation, Store, StoreError};

/// Where the key-encryption key comes from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum KeySource {
    /// A file of keys, one per line (base64 of 32 bytes), the first one encrypting; made on first start.
    File(PathBuf),
    /// A shell command whose output is such a file's text (a KMS, a secret manager, a hardware token).
    Command(String),
}

impl KeySource {
    /// The default: a file beside the data directory, `<data>.key`, so that a copy of the data directory alone
    /// holds no key.
    pub fn beside(data_dir: &Path) -> KeySource {
        let name = data_dir.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_else(|| "capstan".into());
        let parent = data_dir.parent().unwrap_or(Path::new("/"));
        KeySource::File(parent.join(format!("{name}.key")))
    }
}

/// How long a key command may take.
const COMMAND_TIMEOUT: Duration = Duration::from_secs(30);

/// Why the key could not be had.
#[derive(Debug, thiserror::Error)]
pub enum KeyError {
    #[error("encryption key file {path}: {reason}\n  hint: {hint}")]
    File { path: PathBuf, reason: String, hint: String },
    #[error("encryption key command `{command}`: {reason}\n  hint: the command must print the key (base64 of 32 bytes) and exit 0")]
    Command { command: String, reason: String },
    #[error(transparent)]
    Store(#[from] StoreError),
}

fn file_error(path: &Path, reason: impl ToString, hint: &str) -> KeyError {
    KeyError::File { path: path.to_path_buf(), reason: reason.to_string(), hint: hint.into() }
}

/// Reads the keys a source gives. A key file others may read is refused; `Ok(None)`: the file does not exist.
pub fn read(source: &KeySource) -> Result<Option<Keyring>, KeyError> {
    match source {
        KeySource::File(path) => {
            use std::os::unix::fs::PermissionsExt;
            let meta = match std::fs::metadata(path) {
                Ok(m) => m,
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
                Err(e) => return Err(file_error(path, e, "check the file's permissions")),
            };
            let mode = meta.permissions().mode() & 0o777;
            use std::os::unix::fs::MetadataExt;
            if meta.uid() != nix::unistd::geteuid().as_raw() {
                return Err(file_error(
                    path,
                    format!("it belongs to another user (uid {})", meta.uid()),
                    "the key file must belong to the user Capstan runs as",
                ));
            }
            if mode & 0o077 != 0 {
                return Err(file_error(
                    path,
                    format!("others can read it (mode {mode:o})"),
                    &format!("chmod 600 {}", path.display()),
                ));
            }
            let text = std::fs::read_to_string(path).map_err(|e| file_error(path, e, "check the file"))?;
            Keyring::parse(&text).map(Some).map_err(|e| file_error(path, e, "a key is base64 of 32 bytes per line"))
        }
        KeySource::Command(command) => {
            let fail = |reason: String| KeyError::Command { command: command.clone(), reason };
            let mut child = std::process::Command::new("sh")
                .arg("-c")
                .arg(command)
                .stdin(std::process::Stdio::null())
                .stdout(std::process::Stdio::piped())
                .stderr(std::process::Stdio::piped())
                .spawn()
                .map_err(|e| fail(e.to_string()))?;
            let started = std::time::Instant::now();
            loop {
                match child.try_wait().map_err(|e| fail(e.to_string()))? {
                    Some(_) => break,
                    None if started.elapsed() > COMMAND_TIMEOUT => {
                        let _ = child.kill();
                        let _ = child.wait();
                        return Err(fail(format!("no answer within {}s", COMMAND_TIMEOUT.as_secs())));
                    }
                    None => std::thread::sleep(Duration::from_millis(20)),
                }
            }
            let out = child.wait_with_output().map_err(|e| fail(e.to_string()))?;
            if !out.status.success() {
                let err = String::from_utf8_lossy(&out.stderr).trim().chars().take(500).collect::<String>();
                return Err(fail(format!("{} {err}", out.status)));
            }
            Keyring::parse(&String::from_utf8_lossy(&out.stdout)).map(Some).map_err(|e| fail(e.to_string()))
        }
    }
}

/// How a key file is written: over the old one, or only where none exists.
#[derive(PartialEq)]
enum Write {
    Replace,
    New,
}

/// Writes a key file whole: a temporary file of its own (created new, `0600`), synced, then renamed over the old one
/// — or, for a new key, linked in place only if no file exists yet (`Ok(false)`: another process made one first).
fn write_file(path: &Path, ring: &Keyring, how: Write) -> Result<bool, KeyError> {
    use std::io::Write as _;
    use std::os::unix::fs::OpenOptionsExt;
    let err = |e: std::io::Error| file_error(path, e, "Capstan must be able to write beside the data directory");
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir).map_err(err)?;
    }
    let tag: [u8; 8] = capstan_store::seal::random().map_err(StoreError::from)?;
    let tmp = path.with_extension(format!("key.tmp-{}", hex::encode(tag)));
    let mut f = std::fs::OpenOptions::new().write(true).create_new(true).mode(0o600).open(&tmp).map_err(err)?;
    let written = f.write_all(ring.to_text().as_bytes()).and_then(|()| f.sync_all());
    let placed = written.and_then(|()| match how {
        Write::Replace => std::fs::rename(&tmp, path).map(|()| true),
        Write::New => match std::fs::hard_link(&tmp, path) {
            Ok(()) => Ok(true),
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => Ok(false),
            Err(e) => Err(e),
        },
    });
    let _ = std::fs::remove_file(&tmp);
    let placed = placed.map_err(err)?;
    if let Some(dir) = path.parent().and_then(|d| std::fs::File::open(d).ok()) {
        let _ = dir.sync_all();
    }
    Ok(placed)
}

/// Opens the data directory's store encrypted. A key file that does not exist is made first (and saved before
/// anything is encrypted with it); when the store turns out to be encrypted with another key, the file just made
/// is taken back and the start refused, the store untouched.
pub fn open_store(data_dir: &Path, source: &KeySource) -> Result<Store, KeyError> {
    if let KeySource::File(path) = source {
        // Compared as absolute paths: `--data .` with a key file `./k` is inside it.
        let dir = std::fs::canonicalize(data_dir).unwrap_or_else(|_| data_dir.to_path_buf());
        let parent = path.parent().filter(|p| !p.as_os_str().is_empty()).unwrap_or(Path::new("."));
        let key_dir = std::fs::canonicalize(parent).unwrap_or_else(|_| parent.to_path_buf());
        if key_dir.starts_with(&dir) {
            return Err(file_error(
                path,
                "it is inside the data directory",
                "keep the key apart from what it protects: a path outside the data directory",
            ));
        }
    }
    let state = data_dir.join("state.redb");
    let (ring, made) = match read(source)? {
        Some(ring) => (ring, None),
        None => {
            let KeySource::File(path) = source else {
                return Err(KeyError::Command { command: String::new(), reason: "gave no key".into() });
            };
            let ring = Keyring::generate().map_err(StoreError::from)?;
            if write_file(path, &ring, Write::New)? {
                tracing::info!(key = %path.display(), "made the encryption key file; back it up apart from the data directory");
                (ring, Some(path.clone()))
            } else {
                // Another start made it first: that key is the one.
                let ring = read(source)?.ok_or_else(|| file_error(path, "it vanished", "start again"))?;
                (ring, None)
            }
        }
    };
    match Store::open_sealed(&state, &ring) {
        Ok(store) => Ok(store),
        Err(e) => {
            if let (Some(path), StoreError::WrongKey { .. }) = (&made, &e) {
                let _ = std::fs::remove_file(path);
                return Err(file_error(
                    path,
                    format!(
                        "it does not exist, and {} is encrypted with another key; nothing was changed",
                        state.display()
                    ),
                    "restore the key file this data directory was started with, or pass it with --encryption-key-file",
                ));
            }
            Err(e.into())
        }
    }
}

/// Rotates the key-encryption key: with a key file, a new key is made, saved in front of the old one, every data
/// key wrapped with it and every value sealed again, then the old key dropped from the file; with a key command,
/// the command's first key becomes the one everything is wrapped with.
pub fn rotate(store: &Store, source: &KeySource) -> Result<Rotation, KeyError> {
    match source {
        KeySource::File(path) => {
            let current = read(source)?.ok_or_else(|| file_error(path, "it is gone", "restore it from its backup"))?;
            let fresh = Keyring::generate().map_err(StoreError::from)?;
            let both = current.with_first(fresh.active().clone());
            // Saved first: whatever happens next, the file holds a key that opens the store.
            write_file(path, &both, Write::Replace)?;
            let done = store.rotate_key(&both)?;
            write_file(path, &fresh, Write::Replace)?;
            Ok(done)
        }
        KeySource::Command(_) => {
            let ring = read(source)?
                .ok_or_else(|| KeyError::Command { command: String::new(), reason: "gave no key".into() })?;
            Ok(store.rotate_key(&ring)?)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    #[test]
    fn a_key_file_is_made_private_beside_the_data_dir_and_a_readable_one_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let data = dir.path().join("data");
        std::fs::create_dir(&data).unwrap();
        let source = KeySource::beside(&data);
        assert_eq!(source, KeySource::File(dir.path().join("data.key")));
        drop(open_store(&data, &source).unwrap());
        let KeySource::File(path) = &source else { unreachable!() };
        assert_eq!(std::fs::metadata(path).unwrap().permissions().mode() & 0o777, 0o600);
        drop(open_store(&data, &source).unwrap());
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o644)).unwrap();
        let e = open_store(&data, &source).err().unwrap().to_string();
        assert!(e.contains("mode 644") && e.contains("chmod 600"), "{e}");
        let inside = KeySource::File(data.join("k"));
        assert!(open_store(&data, &inside).err().unwrap().to_string().contains("inside the data directory"));
    }

    #[test]
    fn a_lost_key_file_is_not_replaced_by_a_new_key_for_an_encrypted_store() {
        let dir = tempfile::tempdir().unwrap();
        let data = dir.path().join("data");
        std::fs::create_dir(&data).unwrap();
        let source = KeySource::beside(&data);
        drop(open_store(&data, &source).unwrap());
        let KeySource::File(path) = &source else { unreachable!() };
        std::fs::remove_file(path).unwrap();
        let before = std::fs::read(data.join("state.redb")).unwrap();
        let e = open_store(&data, &source).err().unwrap().to_string();
        assert!(e.contains("encrypted with another key"), "{e}");
        assert!(!path.exists(), "the key made for nothing is taken back");
        assert_eq!(std::fs::read(data.join("state.redb")).unwrap(), before);
    }

    #[test]
    fn a_new_key_file_never_replaces_one_another_start_made() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("k.key");
        let first = Keyring::generate().unwrap();
        assert!(write_file(&path, &first, Write::New).unwrap());
        let second = Keyring::generate().unwrap();
        assert!(!write_file(&path, &second, Write::New).unwrap(), "the first one stays");
        assert_eq!(read(&KeySource::File(path.clone())).unwrap().unwrap().ids(), first.ids());
        assert!(write_file(&path, &second, Write::Replace).unwrap());
        assert_eq!(read(&KeySource::File(path)).unwrap().unwrap().ids(), second.ids());
        let left: Vec<_> = std::fs::read_dir(dir.path()).unwrap().flatten().map(|e| e.file_name()).collect();
        assert_eq!(left.len(), 1, "no temporary file left: {left:?}");
    }

    #[test]
    fn a_key_command_gives_the_key_and_its_failures_are_named() {
        let dir = tempfile::tempdir().unwrap();
        let data = dir.path().join("data");
        std::fs::create_dir(&data).unwrap();
        let ring = Keyring::generate().unwrap();
        let file = dir.path().join("kms-answer");
        std::fs::write(&file, ring.to_text()).unwrap();
        let source = KeySource::Command(format!("cat {}", file.display()));
        let store = open_store(&data, &source).unwrap();
        store.apply(vec![serde_json::json!({"kind": "Secret", "metadata": {"name": "s"}, "spec": {}})]).unwrap();
        // The KMS now answers with a new key first: rotation wraps everything with it.
        let next = ring.with_first(Keyring::generate().unwrap().active().clone());
        std::fs::write(&file, next.to_text()).unwrap();
        let done = rotate(&store, &source).unwrap();
        assert_eq!(done.key_id, next.active().id());
        let e = read(&KeySource::Command("echo nope >&2; exit 3".into())).err().unwrap().to_string();
        assert!(e.contains("nope") && e.contains("exit status: 3"), "{e}");
    }

    #[test]
    fn rotating_a_key_file_leaves_only_the_new_key_and_the_store_opens_with_it() {
        let dir = tempfile::tempdir().unwrap();
        let data = dir.path().join("data");
        std::fs::create_dir(&data).unwrap();
        let source = KeySource::beside(&data);
        let store = open_store(&data, &source).unwrap();
        let before = read(&source).unwrap().unwrap();
        let done = rotate(&store, &source).unwrap();
        let after = read(&source).unwrap().unwrap();
        assert_eq!(after.ids(), vec![done.key_id.clone()]);
        assert_ne!(after.ids(), before.ids());
        drop(store);
        assert!(open_store(&data, &source).is_ok());
    }
}
