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

/// The longest line a read gives back: partial records past it are left out and the line says how much. An App
/// that never writes a newline (150 MB of one "line") is still readable with `--tail 1`.
pub const MAX_JOINED_LINE: usize = 256 * 1024;

/// The longest stored record read whole; Capstan writes none longer than [`MAX_LINE`] plus its prefix.
const MAX_RECORD: u64 = 64 * 1024;

/// A replica's stored lines, oldest first, read from its rotated files and the current one as they are needed:
/// memory holds one line (and one buffer), whatever the files hold. Partial records are joined, up to
/// [`MAX_JOINED_LINE`].
pub struct ReplicaLines {
    files: std::collections::VecDeque<PathBuf>,
    reader: Option<std::io::BufReader<std::fs::File>>,
    replica: String,
    since: Option<DateTime<Utc>>,
    /// A line whose partial records are being joined, and how many bytes of it were left out.
    partial: Option<(LogLine, usize)>,
    buf: Vec<u8>,
}

impl ReplicaLines {
    /// The lines of the replica whose current file is `path`, keeping `max_files` files, from `since` on.
    pub fn open(path: &Path, replica: &str, max_files: u32, since: Option<DateTime<Utc>>) -> ReplicaLines {
        let mut files: std::collections::VecDeque<PathBuf> =
            (1..max_files.max(1)).rev().map(|i| rotated(path, i)).collect();
        files.push_back(path.to_path_buf());
        ReplicaLines { files, reader: None, replica: replica.to_string(), since, partial: None, buf: Vec::new() }
    }

    /// The next stored record, as text; None when every file is read.
    fn next_record(&mut self) -> Option<String> {
        use std::io::{BufRead, Read};
        loop {
            if self.reader.is_none() {
                let f = self.files.pop_front()?;
                // A file that is missing (rotated away, or never written) is skipped.
                self.reader = std::fs::File::open(f).ok().map(std::io::BufReader::new);
                continue;
            }
            let reader = self.reader.as_mut()?;
            self.buf.clear();
            match reader.by_ref().take(MAX_RECORD).read_until(b'\n', &mut self.buf) {
                Ok(0) | Err(_) => {
                    self.reader = None;
                    continue;
                }
                Ok(_) => {}
            }
            if self.buf.last() != Some(&b'\n') && self.buf.len() as u64 >= MAX_RECORD {
                // Not a record Capstan wrote: skip to the end of this line without holding it.
                let _ = reader.skip_until(b'\n');
                continue;
            }
            let text = String::from_utf8_lossy(&self.buf);
            return Some(text.trim_end_matches('\n').to_string());
        }
    }
}

impl Iterator for ReplicaLines {
    type Item = LogLine;

    fn next(&mut self) -> Option<LogLine> {
        loop {
            let Some(raw) = self.next_record() else {
                // Output that ended without its last newline is a line of its own.
                return self.partial.take().map(|(l, cut)| finish(l, cut));
            };
            let Some((line, is_partial)) = parse_record(&self.replica, &raw) else {
                continue;
            };
            let (line, cut) = match self.partial.take() {
                Some((mut p, mut cut)) => {
                    // Once a piece was left out, every later piece is too: the text shown never skips one.
                    if cut == 0 && p.text.len() + line.text.len() <= MAX_JOINED_LINE {
                        p.text.push_str(&line.text);
                    } else {
                        cut += line.text.len();
                    }
                    (p, cut)
                }
                None => (line, 0),
            };
            if is_partial {
                self.partial = Some((line, cut));
                continue;
            }
            if self.since.is_none_or(|s| line.time >= s) {
                return Some(finish(line, cut));
            }
        }
    }
}

/// A joined line, saying how much of it was left out.
fn finish(mut line: LogLine, cut: usize) -> LogLine {
    if cut > 0 {
        line.text.push_str(&format!(" [… {cut} more bytes of this line not shown]"));
    }
    line
}

/// Several replicas' lines merged by time, oldest first, read as they are needed.
pub fn merge(replicas: Vec<ReplicaLines>) -> impl Iterator<Item = LogLine> {
    let mut sources: Vec<std::iter::Peekable<ReplicaLines>> = replicas.into_iter().map(Iterator::peekable).collect();
    std::iter::from_fn(move || {
        let mut best: Option<usize> = None;
        for i in 0..sources.len() {
            let Some(t) = sources[i].peek().map(|l| l.time) else { continue };
            if best.is_none_or(|b| sources[b].peek().is_some_and(|bl| t < bl.time)) {
                best = Some(i);
            }
        }
        sources[best?].next()
    })
}

/// The last `n` items of an iterator, holding no more than `n` at a time.
pub fn last_n<T>(items: impl Iterator<Item = T>, n: usize) -> Vec<T> {
    let mut window = std::collections::VecDeque::with_capacity(n.min(4096));
    for item in items {
        if window.len() == n {
            window.pop_front();
        }
        if n > 0 {
            window.push_back(item);
        }
    }
    window.into()
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
        let lines: Vec<LogLine> = ReplicaLines::open(&path, "a-0", 2, None).collect();
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
        let lines: Vec<LogLine> = ReplicaLines::open(&path, "b-0", 1, None).collect();
        let texts: Vec<&str> = lines.iter().map(|l| l.text.as_str()).collect();
        assert_eq!(texts, vec!["one", "two", long.as_str(), "three-no-newline"]);
        assert!(lines.iter().all(|l| l.stream == "stderr"));
        let since = lines[0].time + chrono::Duration::days(1);
        assert_eq!(ReplicaLines::open(&path, "b-0", 1, Some(since)).count(), 0);
    }

    #[tokio::test]
    async fn output_without_newlines_reads_back_as_one_capped_line() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("c-0.log");
        let w = Arc::new(Mutex::new(
            LogWriter::open(path.clone(), "c-0".into(), 64 << 20, 1, broadcast::channel(16).0).unwrap(),
        ));
        // 4 MiB and never a newline, then one line.
        let input = format!("{}\nlast\n", "y".repeat(4 << 20));
        let (_tx, rx) = tokio::sync::watch::channel(false);
        pump(input.as_bytes(), "stdout", w.clone(), rx).await;
        let lines: Vec<LogLine> = ReplicaLines::open(&path, "c-0", 1, None).collect();
        assert_eq!(lines.len(), 2);
        assert!(lines[0].text.len() < MAX_JOINED_LINE + 100, "{}", lines[0].text.len());
        let cut = (4 << 20) - MAX_JOINED_LINE;
        assert!(lines[0].text.ends_with(&format!(" [… {cut} more bytes of this line not shown]")), "cut {cut}");
        assert_eq!(lines[1].text, "last");
        assert_eq!(last_n(ReplicaLines::open(&path, "c-0", 1, None), 1)[0].text, "last");
    }

    #[test]
    fn replicas_merge_by_time_and_tails_hold_only_what_they_keep() {
        let dir = tempfile::tempdir().unwrap();
        let (pa, pb) = (dir.path().join("m-0.log"), dir.path().join("m-1.log"));
        let mut a = LogWriter::open(pa.clone(), "m-0".into(), 1 << 20, 1, broadcast::channel(16).0).unwrap();
        let mut b = LogWriter::open(pb.clone(), "m-1".into(), 1 << 20, 1, broadcast::channel(16).0).unwrap();
        for i in 0..6 {
            if i % 2 == 0 { &mut a } else { &mut b }.write("stdout", false, &format!("{i}")).unwrap();
        }
        let merged: Vec<String> =
            merge(vec![ReplicaLines::open(&pa, "m-0", 1, None), ReplicaLines::open(&pb, "m-1", 1, None)])
                .map(|l| l.text)
                .collect();
        assert_eq!(merged, ["0", "1", "2", "3", "4", "5"]);
        assert_eq!(last_n(0..10, 3), vec![7, 8, 9]);
        assert!(last_n(0..10, 0).is_empty());
        // A line longer than any record Capstan writes (a file written by something else) is skipped.
        std::fs::write(&pa, format!("{}\n2024-01-01T00:00:00Z stdout F ok\n", "z".repeat(100_000))).unwrap();
        let texts: Vec<String> = ReplicaLines::open(&pa, "m-0", 1, None).map(|l| l.text).collect();
        assert_eq!(texts, ["ok"]);
    }
}
