//! Captured output: each replica's stdout and stderr written as CRI log lines, rotated by size, readable and followable.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use chrono::{DateTime, SecondsFormat, Utc};
use serde::Serialize;
use tokio::io::AsyncReadExt;
use tokio::sync::broadcast;

/// The longest line kept whole; longer output is split into partial (`P`) records.
pub const MAX_LINE: usize = 16 * 1024;

/// One line of output.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct LogLine {
    pub replica: String,
    pub time: DateTime<Utc>,
    /// `stdout` or `stderr`.
    pub stream: String,
    pub text: String,
}

/// Appends a replica's lines to `<name>.log`, rotating to `.1`, `.2`, … past `max_size`.
pub struct LogWriter {
    path: PathBuf,
    file: std::fs::File,
    size: u64,
    max_size: u64,
    max_files: u32,
    replica: String,
    follow: broadcast::Sender<LogLine>,
}

impl LogWriter {
    /// Opens `path` for appending; every line written is also sent on `follow`, which all replicas of an App share
    /// so that a follower sees replicas that start after it began.
    pub fn open(
        path: PathBuf,
        replica: String,
        max_size: u64,
        max_files: u32,
        follow: broadcast::Sender<LogLine>,
    ) -> std::io::Result<Self> {
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir)?;
        }
        let file = std::fs::OpenOptions::new().create(true).append(true).open(&path)?;
        let size = file.metadata()?.len();
        Ok(LogWriter { path, file, size, max_size, max_files, replica, follow })
    }

    /// Keeps `max_files` files in all, the current one included (as the kubelet's containerLogMaxFiles): the
    /// current file becomes `.1`, `.1` becomes `.2`, …, and the oldest goes.
    fn rotate(&mut self) -> std::io::Result<()> {
        let keep = self.max_files.saturating_sub(1);
        if keep == 0 {
            match std::fs::remove_file(&self.path) {
                Err(e) if e.kind() != std::io::ErrorKind::NotFound => return Err(e),
                _ => {}
            }
        } else {
            let _ = std::fs::remove_file(rotated(&self.path, keep));
            for i in (1..keep).rev() {
                let from = rotated(&self.path, i);
                if from.exists() {
                    std::fs::rename(&from, rotated(&self.path, i + 1))?;
                }
            }
            match std::fs::rename(&self.path, rotated(&self.path, 1)) {
                Err(e) if e.kind() != std::io::ErrorKind::NotFound => return Err(e),
                _ => {}
            }
        }
        self.file = std::fs::OpenOptions::new().create(true).append(true).open(&self.path)?;
        self.size = 0;
        Ok(())
    }

    /// Writes one record: `<RFC 3339 time> <stream> <F|P> <text>`.
    pub fn write(&mut self, stream: &str, partial: bool, text: &str) -> std::io::Result<()> {
        let time = Utc::now();
        let line = format!(
            "{} {stream} {} {text}\n",
            time.to_rfc3339_opts(SecondsFormat::Nanos, true),
            if partial { 'P' } else { 'F' }
        );
        if self.size > 0 && self.size + line.len() as u64 > self.max_size {
            self.rotate()?;
        }
        self.file.write_all(line.as_bytes())?;
        self.size += line.len() as u64;
        let _ = self.follow.send(LogLine {
            replica: self.replica.clone(),
            time,
            stream: stream.to_string(),
            text: text.to_string(),
        });
        Ok(())
    }
}

fn rotated(path: &Path, i: u32) -> PathBuf {
    let mut s = path.as_os_str().to_owned();
    s.push(format!(".{i}"));
    PathBuf::from(s)
}

/// Copies lines from a pipe into the writer until the pipe closes or `stop` fires.
pub async fn pump<R: tokio::io::AsyncRead + Unpin>(
    mut reader: R,
    stream: &'static str,
    writer: Arc<Mutex<LogWriter>>,
    mut stop: tokio::sync::watch::Receiver<bool>,
) {
    let mut buf = vec![0u8; 8 * 1024];
    let mut pending: Vec<u8> = Vec::new();
    let mut stopping = false;
    loop {
        let n = if stopping {
            // Drain what is already buffered, without waiting for more.
            match tokio::time::timeout(std::time::Duration::from_millis(50), reader.read(&mut buf)).await {
                Ok(Ok(n)) => n,
                _ => 0,
            }
        } else {
            tokio::select! {
                r = reader.read(&mut buf) => r.unwrap_or(0),
                _ = stop.changed() => { stopping = true; continue; }
            }
        };
        if n == 0 {
            break;
        }
        pending.extend_from_slice(&buf[..n]);
        let mut w = match writer.lock() {
            Ok(w) => w,
            Err(p) => p.into_inner(),
        };
        while let Some(pos) = pending.iter().position(|b| *b == b'\n') {
            let line: Vec<u8> = pending.drain(..=pos).collect();
            let text = String::from_utf8_lossy(&line[..line.len() - 1]);
            let _ = w.write(stream, false, text.trim_end_matches('\r'));
        }
        while pending.len() >= MAX_LINE {
            let chunk: Vec<u8> = pending.drain(..MAX_LINE).collect();
            let _ = w.write(stream, true, &String::from_utf8_lossy(&chunk));
        }
    }
    if !pending.is_empty() {
        let mut w = match writer.lock() {
            Ok(w) => w,
            Err(p) => p.into_inner(),
        };
        let _ = w.write(stream, false, &String::from_utf8_lossy(&pending));
    }
}

/// Parses one stored record.
pub fn parse_record(replica: &str, line: &str) -> Option<(LogLine, bool)> {
    let mut parts = line.splitn(4, ' ');
    let time = DateTime::parse_from_rfc3339(parts.next()?).ok()?.with_timezone(&Utc);
    let stream = parts.next()?.to_string();
    let partial = parts.next()? == "P";
    let text = parts.next().unwrap_or("").to_string();
    Some((LogLine { replica: replica.to_string(), time, stream, text }, partial))
}

/// Reads a replica's stored lines, oldest first, from rotated files and the current one; partial records are joined.
pub fn read_lines(path: &Path, replica: &str, max_files: u32, since: Option<DateTime<Utc>>) -> Vec<LogLine> {
    let mut files: Vec<PathBuf> = (1..max_files.max(1)).rev().map(|i| rotated(path, i)).collect();
    files.push(path.to_path_buf());
    let mut out: Vec<LogLine> = Vec::new();
    let mut partial: Option<LogLine> = None;
    for f in files {
        let Ok(text) = std::fs::read_to_string(&f) else {
            continue;
        };
        for raw in text.lines() {
            let Some((line, is_partial)) = parse_record(replica, raw) else {
                continue;
            };
            let line = match partial.take() {
                Some(mut p) => {
                    p.text.push_str(&line.text);
                    p
                }
                None => line,
            };
            if is_partial {
                partial = Some(line);
                continue;
            }
            if since.is_none_or(|s| line.time >= s) {
                out.push(line);
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rotates_and_reads_back_in_order() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("a-0.log");
        let mut w = LogWriter::open(path.clone(), "a-0".into(), 400, 2, broadcast::channel(16).0).unwrap();
        for i in 0..40 {
            w.write("stdout", false, &format!("line {i}")).unwrap();
        }
        assert!(rotated(&path, 1).exists());
        assert!(!rotated(&path, 2).exists(), "maxFiles counts every file, the current one included");
        let lines = read_lines(&path, "a-0", 2, None);
        assert!(lines.len() < 40, "old lines were rotated away");
        assert_eq!(lines.last().unwrap().text, "line 39");
        let nums: Vec<u32> = lines.iter().map(|l| l.text[5..].parse().unwrap()).collect();
        assert!(nums.windows(2).all(|w| w[1] == w[0] + 1), "lines stay in order across files");
        assert!(std::fs::metadata(&path).unwrap().len() <= 400);
    }

    #[tokio::test]
    async fn pump_splits_lines_and_long_output() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("b-0.log");
        let w = Arc::new(Mutex::new(
            LogWriter::open(path.clone(), "b-0".into(), 1 << 20, 1, broadcast::channel(16).0).unwrap(),
        ));
        let long = "x".repeat(MAX_LINE + 10);
        let input = format!("one\ntwo\r\n{long}\nthree-no-newline");
        let (_tx, rx) = tokio::sync::watch::channel(false);
        pump(input.as_bytes(), "stderr", w.clone(), rx).await;
        let lines = read_lines(&path, "b-0", 1, None);
        let texts: Vec<&str> = lines.iter().map(|l| l.text.as_str()).collect();
        assert_eq!(texts, vec!["one", "two", long.as_str(), "three-no-newline"]);
        assert!(lines.iter().all(|l| l.stream == "stderr"));
        let since = lines[0].time + chrono::Duration::days(1);
        assert!(read_lines(&path, "b-0", 1, Some(since)).is_empty());
    }
}
