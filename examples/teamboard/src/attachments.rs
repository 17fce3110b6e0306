//! The shared attachment store: files written once under a fresh id, fsynced, then renamed into place, so every
//! node sees either the whole file or none of it.

use std::path::{Path, PathBuf};

use axum::body::Bytes;
use futures_util::{Stream, StreamExt};
use sha2::{Digest, Sha256};
use tokio::io::AsyncWriteExt;

use crate::Error;

/// Where attachment `id` lives under `root`.
pub fn path_of(root: &Path, id: uuid::Uuid) -> PathBuf {
    let s = id.simple().to_string();
    root.join(&s[..2]).join(s)
}

/// Writes a stream of chunks as attachment `id`, refusing more than `limit` bytes; returns size and sha256.
pub async fn store<S, E>(root: &Path, id: uuid::Uuid, mut body: S, limit: u64) -> Result<(u64, String), Error>
where
    S: Stream<Item = Result<Bytes, E>> + Unpin,
    E: std::fmt::Display,
{
    let incoming = root.join(".incoming");
    tokio::fs::create_dir_all(&incoming).await.map_err(|e| io(&incoming, e))?;
    let tmp = incoming.join(id.simple().to_string());
    let result = async {
        let mut file = tokio::fs::File::create(&tmp).await.map_err(|e| io(&tmp, e))?;
        let mut hash = Sha256::new();
        let mut size = 0u64;
        while let Some(chunk) = body.next().await {
            let chunk = chunk.map_err(|e| Error::BadRequest(format!("upload interrupted: {e}")))?;
            size += chunk.len() as u64;
            if size > limit {
                return Err(Error::TooLarge(limit));
            }
            hash.update(&chunk);
            file.write_all(&chunk).await.map_err(|e| io(&tmp, e))?;
        }
        file.sync_all().await.map_err(|e| io(&tmp, e))?;
        let dest = path_of(root, id);
        if let Some(dir) = dest.parent() {
            tokio::fs::create_dir_all(dir).await.map_err(|e| io(dir, e))?;
        }
        tokio::fs::rename(&tmp, &dest).await.map_err(|e| io(&dest, e))?;
        Ok((size, hex::encode(hash.finalize())))
    }
    .await;
    if result.is_err() {
        let _ = tokio::fs::remove_file(&tmp).await;
    }
    result
}

/// Removes attachment `id` (when recording it in the database failed).
pub async fn discard(root: &Path, id: uuid::Uuid) {
    let _ = tokio::fs::remove_file(path_of(root, id)).await;
}

/// A file name safe to put in a `Content-Disposition` header and on a page.
pub fn clean_name(name: &str) -> String {
    let base = name.rsplit(['/', '\\']).next().unwrap_or("");
    let cleaned: String =
        base.chars().filter(|c| !c.is_control() && *c != '"').take(120).collect::<String>().trim().to_string();
    if cleaned.is_empty() || cleaned == "." || cleaned == ".." {
        "attachment".into()
    } else {
        cleaned
    }
}

fn io(path: &Path, e: std::io::Error) -> Error {
    Error::Io(format!("{}: {e}", path.display()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_lose_paths_quotes_and_control_characters() {
        assert_eq!(clean_name("../../etc/passwd"), "passwd");
        assert_eq!(clean_name("C:\\x\\report \"final\".pdf"), "report final.pdf");
        assert_eq!(clean_name("a\r\nb.txt"), "ab.txt");
        assert_eq!(clean_name(".."), "attachment");
        assert_eq!(clean_name(""), "attachment");
    }

    #[tokio::test]
    async fn a_stored_file_is_whole_and_an_oversized_one_leaves_nothing() {
        let dir = tempfile::tempdir().expect("tempdir");
        let id = uuid::Uuid::new_v4();
        let chunks = futures_util::stream::iter(vec![
            Ok::<_, std::io::Error>(Bytes::from_static(b"hello ")),
            Ok(Bytes::from_static(b"world")),
        ]);
        let (size, sha) = store(dir.path(), id, chunks, 100).await.expect("stored");
        assert_eq!(size, 11);
        assert_eq!(sha, "b94d27b9934d3e08a52e52d7da7dabfac484efe37a5380ee9088f7ace2efcde9");
        assert_eq!(std::fs::read(path_of(dir.path(), id)).expect("read"), b"hello world");

        let id2 = uuid::Uuid::new_v4();
        let big = futures_util::stream::iter(vec![Ok::<_, std::io::Error>(Bytes::from(vec![0u8; 64]))]);
        assert!(matches!(store(dir.path(), id2, big, 10).await, Err(Error::TooLarge(10))));
        assert!(!path_of(dir.path(), id2).exists());
        let left = std::fs::read_dir(dir.path().join(".incoming")).expect("dir").count();
        assert_eq!(left, 0, "no partial upload is left behind");
    }
}
