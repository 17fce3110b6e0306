//! The embedded time-series store: series identified by sorted label sets, an inverted index from label pairs
//! to series, samples in compressed chunks, retention by time and size, and snapshots to disk.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::path::Path;
use std::sync::{Arc, RwLock};

use promql_parser::label::{MatchOp, Matcher};

use crate::chunk::Chunk;

/// Prometheus' staleness marker: a NaN with this exact bit pattern ends a series.
pub const STALE_NAN: u64 = 0x7ff0_0000_0000_0002;

pub fn is_stale(v: f64) -> bool {
    v.to_bits() == STALE_NAN
}

pub fn stale_nan() -> f64 {
    f64::from_bits(STALE_NAN)
}

/// A series' identity: label pairs sorted by name, `__name__` included.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Default)]
pub struct Labels(Vec<(Arc<str>, Arc<str>)>);

impl Labels {
    /// Builds from pairs in any order; empty values are dropped, as Prometheus does.
    pub fn new<K: AsRef<str>, V: AsRef<str>>(pairs: impl IntoIterator<Item = (K, V)>) -> Labels {
        let mut v: Vec<(Arc<str>, Arc<str>)> = pairs
            .into_iter()
            .filter(|(_, v)| !v.as_ref().is_empty())
            .map(|(k, v)| (Arc::from(k.as_ref()), Arc::from(v.as_ref())))
            .collect();
        v.sort_by(|a, b| a.0.cmp(&b.0));
        v.dedup_by(|a, b| a.0 == b.0);
        Labels(v)
    }

    pub fn get(&self, name: &str) -> Option<&str> {
        self.0.binary_search_by(|(k, _)| (**k).cmp(name)).ok().map(|i| &*self.0[i].1)
    }

    /// The value of `name`, or "" when absent (how matchers see a missing label).
    pub fn value(&self, name: &str) -> &str {
        self.get(name).unwrap_or("")
    }

    pub fn name(&self) -> Option<&str> {
        self.get("__name__")
    }

    pub fn iter(&self) -> impl Iterator<Item = (&str, &str)> {
        self.0.iter().map(|(k, v)| (&**k, &**v))
    }

    pub fn len(&self) -> usize {
        self.0.len()
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// A copy with `name` set (or removed when `value` is empty).
    pub fn with(&self, name: &str, value: &str) -> Labels {
        let mut pairs: Vec<(&str, &str)> = self.iter().filter(|(k, _)| *k != name).collect();
        pairs.push((name, value));
        Labels::new(pairs)
    }

    /// A copy keeping only the labels `keep` accepts.
    pub fn filter(&self, keep: impl Fn(&str) -> bool) -> Labels {
        Labels(self.0.iter().filter(|(k, _)| keep(k)).cloned().collect())
    }

    pub fn matches(&self, matchers: &[Matcher]) -> bool {
        matchers.iter().all(|m| m.is_match(self.value(&m.name)))
    }
}

impl std::fmt::Display for Labels {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let name = self.name().unwrap_or("");
        write!(f, "{name}{{")?;
        let mut first = true;
        for (k, v) in self.iter().filter(|(k, _)| *k != "__name__") {
            if !first {
                write!(f, ", ")?;
            }
            first = false;
            write!(f, "{k}={v:?}")?;
        }
        write!(f, "}}")
    }
}

/// Why a sample was not stored.
#[derive(Debug, thiserror::Error, PartialEq)]
pub enum AppendError {
    #[error("out of order sample: {series} at {t} is not after its last sample at {last}")]
    OutOfOrder { series: String, t: i64, last: i64 },
    #[error("duplicate sample for timestamp {t} with a different value in {series}")]
    Duplicate { series: String, t: i64 },
}

/// Why a snapshot could not be written or read.
#[derive(Debug, thiserror::Error)]
pub enum SnapshotError {
    #[error("{path}: {source}")]
    Io { path: String, source: std::io::Error },
    #[error("{path}: not a Capstan metrics snapshot, or damaged at byte {at}")]
    Corrupt { path: String, at: usize },
}

struct Series {
    labels: Labels,
    closed: Vec<Chunk>,
    head: Chunk,
}

impl Series {
    fn last(&self) -> Option<(i64, f64)> {
        let c = if self.head.is_empty() { self.closed.last()? } else { &self.head };
        Some((c.last_t(), c.last_value()?))
    }

    fn first_t(&self) -> Option<i64> {
        self.closed.first().or((!self.head.is_empty()).then_some(&self.head)).map(Chunk::first_t)
    }

    fn overlaps(&self, mint: i64, maxt: i64) -> bool {
        match (self.first_t(), self.last()) {
            (Some(f), Some((l, _))) => f <= maxt && l >= mint,
            _ => false,
        }
    }

    fn bytes(&self) -> usize {
        self.closed.iter().map(Chunk::bytes).sum::<usize>() + self.head.bytes() + self.overhead()
    }

    /// What the series costs besides its samples: its labels, its index entries, its bookkeeping. Counted in
    /// retention so that many short series (a target churning label values) are bounded like many samples.
    fn overhead(&self) -> usize {
        SERIES_OVERHEAD_BYTES
            + self.labels.0.iter().map(|(k, v)| k.len() + v.len() + LABEL_OVERHEAD_BYTES).sum::<usize>()
    }

    /// The start of its oldest chunk, closed or open.
    fn oldest_chunk_t(&self) -> Option<i64> {
        self.first_t()
    }
}

/// Memory of one series apart from its labels and samples: the series record, its id in the label index and
/// the chunk bookkeeping (measured on x86-64, rounded up).
const SERIES_OVERHEAD_BYTES: usize = 256;
/// Memory per label of a series apart from the strings: the pair, and the series' entry in that label's postings.
const LABEL_OVERHEAD_BYTES: usize = 48;

#[derive(Default)]
struct Inner {
    series: Vec<Option<Series>>,
    free: Vec<u32>,
    ids: HashMap<Labels, u32>,
    /// label name → value → series ids (sorted).
    postings: BTreeMap<Arc<str>, BTreeMap<Arc<str>, Vec<u32>>>,
    /// One copy of each label name and value.
    symbols: HashSet<Arc<str>>,
    samples: u64,
    /// Incremented whenever series are removed (their ids may be reused), so callers caching ids know.
    epoch: u64,
}

impl Inner {
    fn intern(&mut self, s: &Arc<str>) -> Arc<str> {
        if let Some(x) = self.symbols.get(s) {
            return x.clone();
        }
        self.symbols.insert(s.clone());
        s.clone()
    }

    fn id_for(&mut self, labels: &Labels) -> u32 {
        if let Some(&id) = self.ids.get(labels) {
            return id;
        }
        let interned = Labels(labels.0.iter().map(|(k, v)| (self.intern(k), self.intern(v))).collect());
        let series = Series { labels: interned.clone(), closed: Vec::new(), head: Chunk::new() };
        let id = match self.free.pop() {
            Some(id) => {
                self.series[id as usize] = Some(series);
                id
            }
            None => {
                self.series.push(Some(series));
                (self.series.len() - 1) as u32
            }
        };
        for (k, v) in &interned.0 {
            let ids = self.postings.entry(k.clone()).or_default().entry(v.clone()).or_default();
            let at = ids.partition_point(|&x| x < id);
            ids.insert(at, id);
        }
        self.ids.insert(interned, id);
        id
    }

    fn remove(&mut self, id: u32) {
        let Some(s) = self.series.get_mut(id as usize).and_then(Option::take) else { return };
        for (k, v) in &s.labels.0 {
            if let Some(values) = self.postings.get_mut(k) {
                if let Some(ids) = values.get_mut(v) {
                    ids.retain(|&x| x != id);
                    if ids.is_empty() {
                        values.remove(v);
                    }
                }
                if values.is_empty() {
                    self.postings.remove(k);
                }
            }
        }
        self.ids.remove(&s.labels);
        self.free.push(id);
        self.epoch += 1;
    }

    /// Ids of the series the matchers select: intersect the postings of equality matchers, then filter.
    fn select_ids(&self, matchers: &[Matcher]) -> Vec<u32> {
        let mut candidates: Option<Vec<u32>> = None;
        for m in matchers {
            if let MatchOp::Equal = m.op {
                if m.value.is_empty() {
                    continue;
                }
                let ids = self.postings.get(m.name.as_str()).and_then(|v| v.get(m.value.as_str()));
                let Some(ids) = ids else { return Vec::new() };
                candidates = Some(match candidates {
                    None => ids.clone(),
                    Some(c) => c.into_iter().filter(|x| ids.binary_search(x).is_ok()).collect(),
                });
            }
        }
        let all = || (0..self.series.len() as u32).collect::<Vec<_>>();
        candidates
            .unwrap_or_else(all)
            .into_iter()
            .filter(|&id| self.series[id as usize].as_ref().is_some_and(|s| s.labels.matches(matchers)))
            .collect()
    }
}

/// The first `limit` of sorted items, and whether there were more.
fn first(items: impl Iterator<Item = String>, limit: usize) -> (Vec<String>, bool) {
    let mut out: Vec<String> = items.take(limit.saturating_add(1)).collect();
    let truncated = out.len() > limit;
    out.truncate(limit);
    (out, truncated)
}

/// One selected series with its samples in a time range.
#[derive(Debug, Clone, PartialEq)]
pub struct SeriesData {
    pub labels: Labels,
    pub samples: Vec<(i64, f64)>,
}

/// Counts for `/api/v1/status/tsdb` and the metrics of the store itself.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Stats {
    pub series: usize,
    pub chunks: usize,
    pub bytes: usize,
    pub samples_appended: u64,
    pub min_time: Option<i64>,
    pub max_time: Option<i64>,
}

/// The store. Cheap to share: all methods take `&self`.
#[derive(Default)]
pub struct Tsdb {
    inner: RwLock<Inner>,
}

/// Appends under one write lock, by series id: what a scrape uses with its cache of ids.
pub struct Writer<'a>(std::sync::RwLockWriteGuard<'a, Inner>);

impl Writer<'_> {
    /// Changes whenever ids may have been reused; ids cached under another epoch are invalid.
    pub fn epoch(&self) -> u64 {
        self.0.epoch
    }

    /// The id of a series, created if new.
    pub fn id_for(&mut self, labels: &Labels) -> u32 {
        self.0.id_for(labels)
    }

    /// The id of a series if the store has it.
    pub fn lookup(&self, labels: &Labels) -> Option<u32> {
        self.0.ids.get(labels).copied()
    }

    /// How many series the store holds.
    pub fn series_count(&self) -> usize {
        self.0.ids.len()
    }

    /// Forgets up to `n` series that have ended (their last sample is a staleness marker), those that ended
    /// longest ago first, never one in `keep`. Returns how many went; ids may be reused afterwards (the epoch
    /// changes).
    pub fn forget_ended(&mut self, n: usize, keep: &std::collections::HashSet<u32>) -> usize {
        let mut ended: Vec<(i64, u32)> = self
            .0
            .series
            .iter()
            .enumerate()
            .filter(|(id, _)| !keep.contains(&(*id as u32)))
            .filter_map(|(id, s)| s.as_ref()?.last().filter(|(_, v)| is_stale(*v)).map(|(t, _)| (t, id as u32)))
            .collect();
        ended.sort_unstable();
        ended.truncate(n);
        for (_, id) in &ended {
            self.0.remove(*id);
        }
        ended.len()
    }

    /// Appends to a series by id (one from [`Writer::id_for`] in this epoch).
    pub fn append_id(&mut self, id: u32, t: i64, v: f64) -> Result<(), AppendError> {
        append_id_locked(&mut self.0, id, t, v)
    }
}

impl Tsdb {
    pub fn new() -> Tsdb {
        Tsdb::default()
    }

    fn read(&self) -> std::sync::RwLockReadGuard<'_, Inner> {
        self.inner.read().unwrap_or_else(|p| p.into_inner())
    }

    fn write(&self) -> std::sync::RwLockWriteGuard<'_, Inner> {
        self.inner.write().unwrap_or_else(|p| p.into_inner())
    }

    /// Changes whenever series are removed and their ids may be reused (see [`Writer::epoch`]).
    pub fn epoch(&self) -> u64 {
        self.read().epoch
    }

    /// A writer holding the lock, for many appends by id.
    pub fn writer(&self) -> Writer<'_> {
        Writer(self.write())
    }

    /// Appends one sample.
    pub fn append(&self, labels: &Labels, t: i64, v: f64) -> Result<(), AppendError> {
        let mut inner = self.write();
        append_locked(&mut inner, labels, t, v)
    }

    /// Appends many samples under one lock; returns the errors of the samples that were refused.
    pub fn append_all<'a>(&self, samples: impl IntoIterator<Item = (&'a Labels, i64, f64)>) -> Vec<AppendError> {
        let mut inner = self.write();
        samples.into_iter().filter_map(|(l, t, v)| append_locked(&mut inner, l, t, v).err()).collect()
    }

    /// The last sample of a series, if it exists.
    pub fn last(&self, labels: &Labels) -> Option<(i64, f64)> {
        let inner = self.read();
        let id = *inner.ids.get(labels)?;
        inner.series[id as usize].as_ref()?.last()
    }

    /// The series the matchers select, with their samples in `[mint, maxt]` (milliseconds).
    pub fn select(&self, matchers: &[Matcher], mint: i64, maxt: i64) -> Vec<SeriesData> {
        self.select_at_most(matchers, mint, maxt, usize::MAX).unwrap_or_default()
    }

    /// As [`Tsdb::select`], but stops with `None` as soon as more than `max_samples` samples would be copied.
    pub fn select_at_most(
        &self,
        matchers: &[Matcher],
        mint: i64,
        maxt: i64,
        max_samples: usize,
    ) -> Option<Vec<SeriesData>> {
        let inner = self.read();
        let mut out = Vec::new();
        let mut copied = 0usize;
        for id in inner.select_ids(matchers) {
            let Some(s) = inner.series[id as usize].as_ref() else { continue };
            if !s.overlaps(mint, maxt) {
                continue;
            }
            let mut samples = Vec::new();
            for c in s.closed.iter().chain(std::iter::once(&s.head)) {
                if c.is_empty() || c.last_t() < mint || c.first_t() > maxt {
                    continue;
                }
                samples.extend(c.iter().filter(|(t, _)| *t >= mint && *t <= maxt));
            }
            copied = copied.saturating_add(samples.len());
            if copied > max_samples {
                return None;
            }
            if !samples.is_empty() {
                out.push(SeriesData { labels: s.labels.clone(), samples });
            }
        }
        out.sort_by(|a, b| a.labels.cmp(&b.labels));
        Some(out)
    }

    /// Label sets of the series with samples in the range that any of the matcher sets select, sorted; at most
    /// `limit` of them (the flag says whether more matched).
    pub fn series(&self, matcher_sets: &[Vec<Matcher>], mint: i64, maxt: i64, limit: usize) -> (Vec<Labels>, bool) {
        let inner = self.read();
        let mut ids: Vec<u32> = matcher_sets.iter().flat_map(|m| inner.select_ids(m)).collect();
        ids.sort_unstable();
        ids.dedup();
        let mut matching =
            ids.into_iter().filter_map(|id| inner.series[id as usize].as_ref()).filter(|s| s.overlaps(mint, maxt));
        let mut out: Vec<Labels> = matching.by_ref().take(limit).map(|s| s.labels.clone()).collect();
        let truncated = matching.next().is_some();
        out.sort();
        (out, truncated)
    }

    /// Label names in use (by the selected series when matcher sets are given), sorted; at most `limit`.
    pub fn label_names(
        &self,
        matcher_sets: &[Vec<Matcher>],
        mint: i64,
        maxt: i64,
        limit: usize,
    ) -> (Vec<String>, bool) {
        if matcher_sets.is_empty() {
            let inner = self.read();
            return first(inner.postings.keys().map(|k| k.to_string()), limit);
        }
        self.distinct_labels(matcher_sets, mint, maxt, limit, |l| l.iter().map(|(k, _)| k.to_string()).collect())
    }

    /// Values of one label (among the selected series when matcher sets are given), sorted; at most `limit`.
    pub fn label_values(
        &self,
        name: &str,
        matcher_sets: &[Vec<Matcher>],
        mint: i64,
        maxt: i64,
        limit: usize,
    ) -> (Vec<String>, bool) {
        if matcher_sets.is_empty() {
            let inner = self.read();
            let values = inner.postings.get(name).into_iter().flat_map(|v| v.keys().map(|k| k.to_string()));
            return first(values, limit);
        }
        self.distinct_labels(matcher_sets, mint, maxt, limit, |l| l.get(name).map(str::to_string).into_iter().collect())
    }

    /// The `limit` smallest of what `pick` takes from each selected series, never holding more than `limit + 1`
    /// of them, and whether there were more.
    fn distinct_labels(
        &self,
        matcher_sets: &[Vec<Matcher>],
        mint: i64,
        maxt: i64,
        limit: usize,
        pick: impl Fn(&Labels) -> Vec<String>,
    ) -> (Vec<String>, bool) {
        let inner = self.read();
        let mut ids: Vec<u32> = matcher_sets.iter().flat_map(|m| inner.select_ids(m)).collect();
        ids.sort_unstable();
        ids.dedup();
        let mut out = std::collections::BTreeSet::new();
        let mut truncated = false;
        for s in ids.into_iter().filter_map(|id| inner.series[id as usize].as_ref()).filter(|s| s.overlaps(mint, maxt))
        {
            for v in pick(&s.labels) {
                out.insert(v);
                if out.len() > limit {
                    out.pop_last();
                    truncated = true;
                }
            }
        }
        (out.into_iter().collect(), truncated)
    }

    pub fn stats(&self) -> Stats {
        let inner = self.read();
        let mut st = Stats { samples_appended: inner.samples, ..Stats::default() };
        for s in inner.series.iter().flatten() {
            st.series += 1;
            st.chunks += s.closed.len() + usize::from(!s.head.is_empty());
            st.bytes += s.bytes();
            if let Some(f) = s.first_t() {
                st.min_time = Some(st.min_time.map_or(f, |m| m.min(f)));
            }
            if let Some((l, _)) = s.last() {
                st.max_time = Some(st.max_time.map_or(l, |m| m.max(l)));
            }
        }
        st
    }

    /// Drops samples older than `min_t` (whole chunks), then the oldest chunks until the store fits in
    /// `max_bytes` — compressed samples plus what each series costs besides them ([`Stats::bytes`]). Series left
    /// without samples are forgotten. Returns the chunks dropped.
    pub fn retain(&self, min_t: i64, max_bytes: Option<usize>) -> usize {
        let mut inner = self.write();
        let mut dropped = 0;
        let mut empty = Vec::new();
        for (id, s) in inner.series.iter_mut().enumerate() {
            let Some(s) = s else { continue };
            let before = s.closed.len();
            s.closed.retain(|c| c.last_t() >= min_t);
            dropped += before - s.closed.len();
            if !s.head.is_empty() && s.head.last_t() < min_t {
                s.head = Chunk::new();
                dropped += 1;
            }
            if s.closed.is_empty() && s.head.is_empty() {
                empty.push(id as u32);
            }
        }
        // Series left empty by time are forgotten before sizes are counted: their overhead is not there any more.
        for id in empty.drain(..) {
            inner.remove(id);
        }
        if let Some(limit) = max_bytes {
            let mut total: usize = inner.series.iter().flatten().map(Series::bytes).sum();
            if total > limit {
                // Oldest chunks first across all series, a series' open chunk last; a series left empty is
                // forgotten and gives back its overhead too.
                let mut heap: std::collections::BinaryHeap<std::cmp::Reverse<(i64, u32)>> = inner
                    .series
                    .iter()
                    .enumerate()
                    .filter_map(|(id, s)| s.as_ref()?.oldest_chunk_t().map(|t| std::cmp::Reverse((t, id as u32))))
                    .collect();
                while total > limit {
                    let Some(std::cmp::Reverse((_, id))) = heap.pop() else { break };
                    let Some(s) = inner.series[id as usize].as_mut() else { continue };
                    if !s.closed.is_empty() {
                        total -= s.closed.remove(0).bytes();
                    } else if !s.head.is_empty() {
                        total -= s.head.bytes();
                        s.head = Chunk::new();
                    } else {
                        continue;
                    }
                    dropped += 1;
                    match s.oldest_chunk_t() {
                        Some(t) => heap.push(std::cmp::Reverse((t, id))),
                        None => {
                            total -= s.overhead();
                            empty.push(id);
                        }
                    }
                }
            }
        }
        for id in empty {
            inner.remove(id);
        }
        dropped
    }

    /// Writes every series and chunk to `path` (via a temporary file and a rename, so a crash leaves the
    /// previous snapshot intact).
    pub fn save(&self, path: &Path) -> Result<(), SnapshotError> {
        let io = |source| SnapshotError::Io { path: path.display().to_string(), source };
        let mut buf = Vec::with_capacity(1 << 20);
        buf.extend_from_slice(MAGIC);
        {
            let inner = self.read();
            let live: Vec<&Series> = inner.series.iter().flatten().collect();
            buf.extend_from_slice(&(live.len() as u32).to_le_bytes());
            for s in live {
                buf.extend_from_slice(&(s.labels.len() as u16).to_le_bytes());
                for (k, v) in s.labels.iter() {
                    put_str(&mut buf, k);
                    put_str(&mut buf, v);
                }
                let chunks: Vec<&Chunk> =
                    s.closed.iter().chain(std::iter::once(&s.head)).filter(|c| !c.is_empty()).collect();
                buf.extend_from_slice(&(chunks.len() as u32).to_le_bytes());
                for c in chunks {
                    c.encode(&mut buf);
                }
            }
        }
        let tmp = path.with_extension("tmp");
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir).map_err(io)?;
        }
        {
            use std::io::Write;
            let mut f = std::fs::File::create(&tmp).map_err(io)?;
            f.write_all(&buf).map_err(io)?;
            f.sync_all().map_err(io)?;
        }
        std::fs::rename(&tmp, path).map_err(io)
    }

    /// Reads a snapshot written by [`Tsdb::save`]. A missing file is an empty store.
    pub fn load(path: &Path) -> Result<Tsdb, SnapshotError> {
        let data = match std::fs::read(path) {
            Ok(d) => d,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Tsdb::new()),
            Err(source) => return Err(SnapshotError::Io { path: path.display().to_string(), source }),
        };
        let corrupt = |at| SnapshotError::Corrupt { path: path.display().to_string(), at };
        if !data.starts_with(MAGIC) {
            return Err(corrupt(0));
        }
        let mut at = MAGIC.len();
        let db = Tsdb::new();
        {
            let mut inner = db.write();
            let n = get_u32(&data, &mut at).ok_or_else(|| corrupt(at))?;
            for _ in 0..n {
                let nl = get_u16(&data, &mut at).ok_or_else(|| corrupt(at))?;
                let mut pairs = Vec::with_capacity(usize::from(nl));
                for _ in 0..nl {
                    let k = get_str(&data, &mut at).ok_or_else(|| corrupt(at))?;
                    let v = get_str(&data, &mut at).ok_or_else(|| corrupt(at))?;
                    pairs.push((k, v));
                }
                let labels = Labels::new(pairs);
                let id = inner.id_for(&labels);
                let nc = get_u32(&data, &mut at).ok_or_else(|| corrupt(at))?;
                let mut chunks = Vec::with_capacity(nc as usize);
                for _ in 0..nc {
                    let (c, used) = Chunk::decode(data.get(at..).unwrap_or_default()).ok_or_else(|| corrupt(at))?;
                    at += used;
                    inner.samples += c.len() as u64;
                    chunks.push(c);
                }
                if let Some(s) = inner.series[id as usize].as_mut() {
                    s.head = match chunks.last() {
                        Some(c) if !c.is_full() => chunks.pop().unwrap_or_default(),
                        _ => Chunk::new(),
                    };
                    s.closed = chunks;
                }
            }
        }
        Ok(db)
    }
}

const MAGIC: &[u8] = b"CAPSTAN-TSDB-1\n";

fn append_locked(inner: &mut Inner, labels: &Labels, t: i64, v: f64) -> Result<(), AppendError> {
    let id = inner.id_for(labels);
    append_id_locked(inner, id, t, v)
}

fn append_id_locked(inner: &mut Inner, id: u32, t: i64, v: f64) -> Result<(), AppendError> {
    let Some(s) = inner.series.get_mut(id as usize).and_then(Option::as_mut) else { return Ok(()) };
    if let Some((last, lv)) = s.last() {
        if t == last {
            if lv.to_bits() == v.to_bits() {
                return Ok(());
            }
            return Err(AppendError::Duplicate { series: s.labels.to_string(), t });
        }
        if t < last {
            return Err(AppendError::OutOfOrder { series: s.labels.to_string(), t, last });
        }
    }
    if s.head.is_full() {
        let full = std::mem::replace(&mut s.head, Chunk::new());
        s.closed.push(full);
    }
    s.head.push(t, v);
    inner.samples += 1;
    Ok(())
}

fn put_str(buf: &mut Vec<u8>, s: &str) {
    buf.extend_from_slice(&(s.len() as u32).to_le_bytes());
    buf.extend_from_slice(s.as_bytes());
}

fn get_u16(d: &[u8], at: &mut usize) -> Option<u16> {
    let v = u16::from_le_bytes(d.get(*at..*at + 2)?.try_into().ok()?);
    *at += 2;
    Some(v)
}

fn get_u32(d: &[u8], at: &mut usize) -> Option<u32> {
    let v = u32::from_le_bytes(d.get(*at..*at + 4)?.try_into().ok()?);
    *at += 4;
    Some(v)
}

fn get_str(d: &[u8], at: &mut usize) -> Option<String> {
    let n = get_u32(d, at)? as usize;
    let s = std::str::from_utf8(d.get(*at..*at + n)?).ok()?.to_string();
    *at += n;
    Some(s)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn m(op: &str, name: &str, value: &str) -> Matcher {
        let op = match op {
            "=" => MatchOp::Equal,
            "!=" => MatchOp::NotEqual,
            "=~" => MatchOp::Re(regex::Regex::new(&format!("^(?:{value})$")).expect("regex")),
            _ => MatchOp::NotRe(regex::Regex::new(&format!("^(?:{value})$")).expect("regex")),
        };
        Matcher { op, name: name.into(), value: value.into() }
    }

    fn l(pairs: &[(&str, &str)]) -> Labels {
        Labels::new(pairs.iter().copied())
    }

    fn filled() -> Tsdb {
        let db = Tsdb::new();
        for (i, job) in ["api", "web", "db"].iter().enumerate() {
            for inst in 0..2 {
                let labels = l(&[("__name__", "up"), ("job", job), ("instance", &format!("h{inst}"))]);
                for t in 0..300 {
                    db.append(&labels, t * 1000, (i + inst) as f64).expect("append");
                }
            }
        }
        db
    }

    #[test]
    fn matchers_select_like_prometheus() {
        let db = filled();
        let n = |ms: &[Matcher]| db.select(ms, 0, 1_000_000).len();
        assert_eq!(n(&[m("=", "__name__", "up")]), 6);
        assert_eq!(n(&[m("=", "__name__", "up"), m("=", "job", "api")]), 2);
        assert_eq!(n(&[m("=", "__name__", "up"), m("!=", "job", "api")]), 4);
        assert_eq!(n(&[m("=~", "job", "a.*|w.*")]), 4);
        assert_eq!(n(&[m("!~", "job", "a.*")]), 4);
        // An absent label matches the empty value.
        assert_eq!(n(&[m("=", "__name__", "up"), m("=", "zone", "")]), 6);
        assert_eq!(n(&[m("=", "__name__", "up"), m("!=", "zone", "")]), 0);
        assert_eq!(n(&[m("=", "job", "nope")]), 0);
        let one = db.select(&[m("=", "job", "web"), m("=", "instance", "h1")], 10_000, 19_999);
        assert_eq!(one[0].samples.len(), 10);
        assert_eq!(one[0].samples[0], (10_000, 2.0));
    }

    #[test]
    fn out_of_order_and_duplicates_are_refused() {
        let db = Tsdb::new();
        let s = l(&[("__name__", "x")]);
        db.append(&s, 10, 1.0).expect("first");
        assert!(db.append(&s, 10, 1.0).is_ok(), "an identical duplicate is ignored");
        assert!(matches!(db.append(&s, 10, 2.0), Err(AppendError::Duplicate { .. })));
        assert!(matches!(db.append(&s, 5, 2.0), Err(AppendError::OutOfOrder { .. })));
        assert_eq!(db.select(&[m("=", "__name__", "x")], 0, 100)[0].samples, vec![(10, 1.0)]);
    }

    #[test]
    fn labels_and_values_are_indexed() {
        let db = filled();
        let all = usize::MAX;
        assert_eq!(db.label_names(&[], 0, i64::MAX, all).0, vec!["__name__", "instance", "job"]);
        assert_eq!(db.label_values("job", &[], 0, i64::MAX, all).0, vec!["api", "db", "web"]);
        let api = [vec![m("=", "job", "api")]];
        assert_eq!(db.label_values("instance", &api, 0, i64::MAX, all).0, vec!["h0", "h1"]);
        assert_eq!(db.label_names(&api, 0, i64::MAX, all).0, vec!["__name__", "instance", "job"]);
        assert_eq!(db.series(&[vec![m("=", "job", "db")]], 0, i64::MAX, all).0.len(), 2);
        assert!(db.series(&[vec![m("=", "job", "db")]], 400_000, 500_000, all).0.is_empty());
        // Limits truncate, and say so.
        assert_eq!(db.label_values("job", &[], 0, i64::MAX, 2), (vec!["api".to_string(), "db".to_string()], true));
        assert!(!db.label_values("job", &[], 0, i64::MAX, 3).1);
        let (some, more) = db.series(&[vec![m("=~", "job", ".+")]], 0, i64::MAX, 4);
        assert_eq!((some.len(), more), (4, true));
        assert!(db.select_at_most(&[m("=", "job", "db")], 0, i64::MAX, 10).is_none(), "600 samples are more than 10");
        assert_eq!(db.select_at_most(&[m("=", "job", "db")], 0, i64::MAX, 600).map(|d| d.len()), Some(2));
    }

    #[test]
    fn ended_series_are_forgotten_oldest_first() {
        let db = Tsdb::new();
        for (i, end) in [(0, 30), (1, 10), (2, 20)] {
            let s = l(&[("__name__", "x"), ("i", &i.to_string())]);
            db.append(&s, 1, 1.0).expect("append");
            db.append(&s, end, stale_nan()).expect("append");
        }
        let live = l(&[("__name__", "live")]);
        db.append(&live, 5, 1.0).expect("append");
        let mut w = db.writer();
        let epoch = w.epoch();
        let keep: std::collections::HashSet<u32> = [w.lookup(&l(&[("__name__", "x"), ("i", "1")])).unwrap()].into();
        assert_eq!(w.forget_ended(1, &keep), 1);
        assert_ne!(w.epoch(), epoch);
        assert!(w.lookup(&l(&[("__name__", "x"), ("i", "2")])).is_none(), "ended at 20: the oldest not kept");
        assert_eq!(w.forget_ended(10, &keep), 1, "the one ended at 30; the kept one and the live one stay");
        assert_eq!(w.series_count(), 2);
    }

    #[test]
    fn retention_by_time_and_size() {
        let db = filled();
        let before = db.stats();
        assert_eq!(before.series, 6);
        // 300 samples per series = 3 chunks (120, 120, 60).
        assert_eq!(before.chunks, 18);
        db.retain(200_000, None);
        let after = db.stats();
        assert_eq!(after.chunks, 12, "the first chunk of each series ended at 119 s");
        assert!(after.min_time.is_some_and(|t| t >= 120_000));
        // The size counts each series' labels and bookkeeping besides its samples.
        assert!(after.bytes > 6 * (SERIES_OVERHEAD_BYTES + 3 * LABEL_OVERHEAD_BYTES), "{after:?}");
        db.retain(0, Some(after.bytes - 1));
        assert_eq!(db.stats().chunks, 11, "one chunk, the oldest, made room");
        db.retain(0, Some(after.bytes / 2));
        let half = db.stats();
        assert!(half.bytes <= after.bytes / 2, "{half:?}");
        assert!(half.min_time.is_some_and(|t| t >= 240_000), "closed chunks went first: {half:?}");
        assert!(half.series < 6 && half.series == half.chunks, "then whole series, overhead and all: {half:?}");
        db.retain(400_000, None);
        assert_eq!(db.stats().series, 0, "series without samples are forgotten");
        assert!(db.label_names(&[], 0, i64::MAX, usize::MAX).0.is_empty());
    }

    #[test]
    fn snapshots_roundtrip_and_appends_continue() {
        let dir = std::env::temp_dir().join(format!("capstan-tsdb-{}", std::process::id()));
        let path = dir.join("snapshot");
        let db = filled();
        db.append(&l(&[("__name__", "stale")]), 5, stale_nan()).expect("append");
        db.save(&path).expect("save");
        let back = Tsdb::load(&path).expect("load");
        let all = [m("=~", "__name__", ".+")];
        // Debug output compares NaNs (the staleness marker) as equal.
        assert_eq!(format!("{:?}", back.select(&all, 0, i64::MAX)), format!("{:?}", db.select(&all, 0, i64::MAX)));
        let up = l(&[("__name__", "up"), ("job", "api"), ("instance", "h0")]);
        back.append(&up, 300_000, 9.0).expect("appends continue after a load");
        assert!(matches!(back.append(&up, 1_000, 9.0), Err(AppendError::OutOfOrder { .. })));
        assert!(is_stale(back.last(&l(&[("__name__", "stale")])).expect("stale series").1));
        std::fs::write(&path, b"CAPSTAN-TSDB-1\n\x05\0\0\0garbage").expect("write");
        assert!(matches!(Tsdb::load(&path), Err(SnapshotError::Corrupt { .. })));
        assert!(Tsdb::load(&dir.join("missing")).expect("missing is empty").stats().series == 0);
        let _ = std::fs::remove_dir_all(dir);
    }
}
