//! Dumps and restores: `pg_dump -Fc` into the `backups` volume of the server's App, retention by count, and
//! `pg_restore` of a chosen (or the newest) dump.

use std::path::{Path, PathBuf};
use std::process::Command;

use capstan_model::database::{credentials_secret, server_app, BackupInfo};
use capstan_model::{ObjectKey, Secret};
use capstan_store::Store;
use chrono::Utc;

use crate::DatabaseError;

/// The name of the server App's volume that holds the dumps.
pub const BACKUP_VOLUME: &str = "backups";

/// What a dump or restore needs to know of a Database.
pub struct Target {
    pub url: String,
    pub bin: PathBuf,
    pub dir: PathBuf,
}

/// Reads a Database's URL, binaries and backup directory from the store (the server App must have run).
pub fn target(store: &Store, key: &ObjectKey) -> Result<Target, DatabaseError> {
    let name = || key.name.clone();
    let db = store.get(key).map_err(DatabaseError::Store)?.ok_or_else(|| DatabaseError::NotFound { name: name() })?;
    let bin = db["status"]["binDirectory"]
        .as_str()
        .map(PathBuf::from)
        .ok_or_else(|| DatabaseError::NotSetUp { name: name() })?;
    let secret: Secret = store
        .get(&ObjectKey::new("Secret", &key.namespace, credentials_secret(&key.name)))
        .map_err(|source| DatabaseError::ReadCredentials { name: name(), source })?
        .and_then(|v| serde_json::from_value(v).ok())
        .ok_or_else(|| DatabaseError::NoCredentials { name: name() })?;
    let url = secret.spec.value("url").map(|b| String::from_utf8_lossy(&b).into_owned()).ok_or(DatabaseError::NoUrl)?;
    let app = store
        .get(&ObjectKey::new("App", &key.namespace, server_app(&key.name)))
        .map_err(|source| DatabaseError::ReadServer { name: name(), source })?;
    let dir = app
        .as_ref()
        .and_then(|a| {
            a["status"]["volumes"].as_array()?.iter().find(|v| v["name"] == BACKUP_VOLUME)?["paths"][0]
                .as_str()
                .map(PathBuf::from)
        })
        .ok_or_else(|| DatabaseError::ServerNotStarted { name: name() })?;
    Ok(Target { url, bin, dir })
}

fn tool(bin: &Path, name: &str) -> PathBuf {
    let own = bin.join(name);
    if own.is_file() {
        own
    } else {
        PathBuf::from(name)
    }
}

fn tail(bytes: &[u8]) -> String {
    let text = String::from_utf8_lossy(bytes);
    let lines: Vec<&str> = text.lines().filter(|l| !l.trim().is_empty()).collect();
    lines[lines.len().saturating_sub(3)..].join(" / ")
}

/// Every dump in the directory, oldest first.
pub fn list(dir: &Path) -> Vec<BackupInfo> {
    let mut out: Vec<BackupInfo> = std::fs::read_dir(dir)
        .into_iter()
        .flatten()
        .flatten()
        .filter(|e| e.file_name().to_string_lossy().ends_with(".dump"))
        .filter_map(|e| {
            let m = e.metadata().ok()?;
            Some(BackupInfo {
                file: e.path().display().to_string(),
                bytes: m.len(),
                taken_at: m.modified().ok()?.into(),
            })
        })
        .collect();
    out.sort_by(|a, b| a.file.cmp(&b.file));
    out
}

/// Dumps the database now; keeps the newest `keep` dumps.
pub fn dump(t: &Target, name: &str, keep: u32) -> Result<BackupInfo, DatabaseError> {
    let stamp = Utc::now().format("%Y%m%dT%H%M%S%.3fZ");
    let file = t.dir.join(format!("{name}-{stamp}.dump"));
    let tmp = file.with_extension("partial");
    let out = Command::new(tool(&t.bin, "pg_dump"))
        .args(["-Fc", "--no-owner", "-f"])
        .arg(&tmp)
        .arg(&t.url)
        .output()
        .map_err(|source| DatabaseError::Run { program: "pg_dump", source })?;
    if !out.status.success() {
        let _ = std::fs::remove_file(&tmp);
        return Err(DatabaseError::Failed { program: "pg_dump", stderr: tail(&out.stderr) });
    }
    std::fs::rename(&tmp, &file).map_err(|source| DatabaseError::SaveDump { path: file.clone(), source })?;
    let all = list(&t.dir);
    for old in all.iter().take(all.len().saturating_sub(keep.max(1) as usize)) {
        let _ = std::fs::remove_file(&old.file);
    }
    let bytes = std::fs::metadata(&file).map(|m| m.len()).unwrap_or(0);
    Ok(BackupInfo { file: file.display().to_string(), bytes, taken_at: Utc::now() })
}

/// Restores a dump (by default the newest) over the database: objects in the dump are dropped and recreated.
pub fn restore(t: &Target, file: Option<&str>) -> Result<BackupInfo, DatabaseError> {
    let all = list(&t.dir);
    let chosen = match file {
        Some(f) => {
            let p = if f.contains('/') { PathBuf::from(f) } else { t.dir.join(f) };
            all.into_iter()
                .find(|b| Path::new(&b.file) == p)
                .ok_or_else(|| DatabaseError::NoSuchDump { file: p.clone(), dir: t.dir.clone() })?
        }
        None => all.into_iter().last().ok_or_else(|| DatabaseError::NoDumps { dir: t.dir.clone() })?,
    };
    let out = Command::new(tool(&t.bin, "pg_restore"))
        .args(["--clean", "--if-exists", "--no-owner", "--single-transaction", "-d"])
        .arg(&t.url)
        .arg(&chosen.file)
        .output()
        .map_err(|source| DatabaseError::Run { program: "pg_restore", source })?;
    if !out.status.success() {
        return Err(DatabaseError::Failed { program: "pg_restore", stderr: tail(&out.stderr) });
    }
    Ok(chosen)
}
