//! The scraper: fetch a target's exposition (content negotiation, timeout, size limit), turn it into samples
//! named as Prometheus names them, append them with the target's labels, write `up` and the scrape's own series,
//! and mark series that disappeared as stale.

use std::time::{Duration, Instant};

use openmetrics_parser::{MetricNumber, OpenMetricsValue, PrometheusValue};

use crate::exposition::Format;
use crate::promql::format_value;
use crate::tsdb::{stale_nan, Labels, Tsdb};

/// What Prometheus 2.x sends: OpenMetrics preferred, the 0.0.4 text format accepted.
pub const ACCEPT: &str =
    "application/openmetrics-text;version=1.0.0;q=0.5,application/openmetrics-text;version=0.0.1;q=0.4,text/plain;version=0.0.4;q=0.3,*/*;q=0.2";

/// One scrape target.
#[derive(Debug, Clone, PartialEq)]
pub struct Target {
    /// `http://127.0.0.1:8080/metrics`.
    pub url: String,
    /// Labels added to every sample: `job`, `instance`, and discovery's (`namespace`, `app`, `replica`, …).
    pub labels: Labels,
    pub interval: Duration,
    pub timeout: Duration,
}

/// Limits that protect the store from one bad target (Prometheus' per-scrape-config limits, on by default), and
/// the store from all of them. A scrape that breaks one fails whole: nothing of it is stored, `up` is 0 and the
/// target's `lastError` says which limit and by how much.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    /// Largest exposition read, in bytes.
    pub body_bytes: usize,
    /// Most series one scrape may produce (`sample_limit`).
    pub series: usize,
    /// Most labels a series may have, the target's included (`label_limit`).
    pub labels: usize,
    /// Longest label name (`label_name_length_limit`).
    pub label_name_bytes: usize,
    /// Longest label value (`label_value_length_limit`).
    pub label_value_bytes: usize,
    /// Most series new to the store one target may bring in an hour: a target that puts ever-changing values in
    /// its labels is stopped before it fills the store (VictoriaMetrics' `-storage.maxHourlySeries`, per target).
    pub new_series_per_hour: usize,
    /// Most series the store holds, from all targets together; scrapes that would add more fail.
    pub store_series: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            body_bytes: 10 << 20,
            series: 50_000,
            labels: 64,
            label_name_bytes: 256,
            label_value_bytes: 4096,
            new_series_per_hour: 100_000,
            store_series: 2_000_000,
        }
    }
}

/// Why a scrape failed.
#[derive(Debug, thiserror::Error, Clone, PartialEq)]
pub enum ScrapeError {
    #[error("Get \"{url}\": {reason}")]
    Fetch { url: String, reason: String },
    #[error("server returned HTTP status {0}")]
    Status(u16),
    #[error("body size limit exceeded: more than {0} bytes")]
    TooLarge(usize),
    #[error("context deadline exceeded: no complete answer within {0:?}")]
    Timeout(Duration),
    #[error("{0}")]
    Parse(String),
    #[error("sample limit exceeded: {got} series, the limit is {limit}")]
    SeriesLimit { got: usize, limit: usize },
    #[error("label_limit exceeded (metric: {metric}, number of labels: {got}, limit: {limit})")]
    LabelLimit { metric: String, got: usize, limit: usize },
    #[error("label_name_length_limit exceeded (metric: {metric}, label name: {name}…, length: {got}, limit: {limit})")]
    LabelNameLength { metric: String, name: String, got: usize, limit: usize },
    #[error(
        "label_value_length_limit exceeded (metric: {metric}, label name: {name}, value length: {got}, limit: {limit})"
    )]
    LabelValueLength { metric: String, name: String, got: usize, limit: usize },
    #[error(
        "new series limit exceeded: this scrape would add {new} series to the {recent} the target added in the last hour; \
         the limit is {limit} an hour (are request ids or timestamps in its labels?)"
    )]
    NewSeriesLimit { new: usize, recent: usize, limit: usize },
    #[error("the store holds {held} series and would exceed its limit of {limit} with this scrape's {new} new ones")]
    StoreSeriesLimit { held: usize, new: usize, limit: usize },
}

/// A flat sample as Prometheus stores it: the series' own labels (with `__name__`) and its value.
#[derive(Debug, Clone, PartialEq)]
pub struct Flat {
    pub labels: Vec<(String, String)>,
    pub v: f64,
}

fn with(base: &[(String, String)], name: String, extra: Option<(&str, String)>) -> Vec<(String, String)> {
    let mut l = base.to_vec();
    l.push(("__name__".into(), name));
    if let Some((k, v)) = extra {
        l.push((k.into(), v));
    }
    l
}

fn histogram(
    out: &mut Vec<Flat>,
    base: &[(String, String)],
    name: &str,
    h: &openmetrics_parser::HistogramValue,
    gauge: bool,
) {
    for b in &h.buckets {
        out.push(Flat {
            labels: with(base, format!("{name}_bucket"), Some(("le", format_value(b.upper_bound)))),
            v: b.count.as_f64(),
        });
    }
    let (sum, count) = if gauge { ("_gsum", "_gcount") } else { ("_sum", "_count") };
    if let Some(s) = &h.sum {
        out.push(Flat { labels: with(base, format!("{name}{sum}"), None), v: s.as_f64() });
    }
    if let Some(c) = h.count {
        out.push(Flat { labels: with(base, format!("{name}{count}"), None), v: c as f64 });
    }
}

fn summary(out: &mut Vec<Flat>, base: &[(String, String)], name: &str, s: &openmetrics_parser::SummaryValue) {
    for q in &s.quantiles {
        out.push(Flat {
            labels: with(base, name.to_string(), Some(("quantile", format_value(q.quantile)))),
            v: q.value.as_f64(),
        });
    }
    if let Some(x) = &s.sum {
        out.push(Flat { labels: with(base, format!("{name}_sum"), None), v: x.as_f64() });
    }
    if let Some(c) = s.count {
        out.push(Flat { labels: with(base, format!("{name}_count"), None), v: c as f64 });
    }
}

/// A parsed sample's own labels.
fn sample_labels<V: openmetrics_parser::RenderableMetricValue + Clone>(
    s: &openmetrics_parser::Sample<V>,
) -> Vec<(String, String)> {
    s.get_labelset().map(|ls| ls.iter().map(|(k, v)| (k.clone(), v.clone())).collect()).unwrap_or_default()
}

fn num(n: &MetricNumber) -> f64 {
    n.as_f64()
}

/// Parses an exposition into flat samples named as Prometheus names its series (`_total`, `_bucket{le}`, `_sum`,
/// `_count`, `{quantile}`, `_info`). The error names the line and column, as `capstan metrics lint` does.
pub fn flatten(text: &str, format: Format) -> Result<Vec<Flat>, ScrapeError> {
    let err = || {
        let p = crate::exposition::check(text, format);
        ScrapeError::Parse(p.into_iter().next().map_or_else(|| "invalid exposition".to_string(), |p| p.to_string()))
    };
    let mut out = Vec::new();
    match format {
        Format::Prometheus => {
            let exp = openmetrics_parser::prometheus::parse_prometheus(text).map_err(|_| err())?;
            for (name, fam) in &exp.families {
                for s in fam.iter_samples() {
                    let base = sample_labels(s);
                    match &s.value {
                        PrometheusValue::Unknown(n) | PrometheusValue::Gauge(n) => {
                            out.push(Flat { labels: with(&base, name.clone(), None), v: num(n) })
                        }
                        PrometheusValue::Counter(c) => {
                            out.push(Flat { labels: with(&base, name.clone(), None), v: num(&c.value) })
                        }
                        PrometheusValue::Histogram(h) => histogram(&mut out, &base, name, h, false),
                        PrometheusValue::Summary(sm) => summary(&mut out, &base, name, sm),
                    }
                }
            }
        }
        Format::OpenMetrics => {
            let exp = openmetrics_parser::openmetrics::parse_openmetrics(text).map_err(|_| err())?;
            for (name, fam) in &exp.families {
                for s in fam.iter_samples() {
                    let base = sample_labels(s);
                    match &s.value {
                        OpenMetricsValue::Unknown(n) | OpenMetricsValue::Gauge(n) | OpenMetricsValue::StateSet(n) => {
                            out.push(Flat { labels: with(&base, name.clone(), None), v: num(n) })
                        }
                        OpenMetricsValue::Counter(c) => {
                            out.push(Flat { labels: with(&base, format!("{name}_total"), None), v: num(&c.value) })
                        }
                        OpenMetricsValue::Info => {
                            out.push(Flat { labels: with(&base, format!("{name}_info"), None), v: 1.0 })
                        }
                        OpenMetricsValue::Histogram(h) => histogram(&mut out, &base, name, h, false),
                        OpenMetricsValue::GaugeHistogram(h) => histogram(&mut out, &base, name, h, true),
                        OpenMetricsValue::Summary(sm) => summary(&mut out, &base, name, sm),
                    }
                }
            }
        }
    }
    Ok(out)
}

/// Fetches an exposition: its text and format.
pub async fn fetch(client: &reqwest::Client, t: &Target, limits: Limits) -> Result<(String, Format), ScrapeError> {
    let fetch_err = |e: reqwest::Error| ScrapeError::Fetch { url: t.url.clone(), reason: e.without_url().to_string() };
    let work = async {
        let mut resp = client
            .get(&t.url)
            .header(reqwest::header::ACCEPT, ACCEPT)
            .header("X-Prometheus-Scrape-Timeout-Seconds", format!("{}", t.timeout.as_secs_f64()))
            .send()
            .await
            .map_err(fetch_err)?;
        if !resp.status().is_success() {
            return Err(ScrapeError::Status(resp.status().as_u16()));
        }
        let ct = resp.headers().get(reqwest::header::CONTENT_TYPE).and_then(|v| v.to_str().ok()).map(str::to_string);
        let mut body = Vec::new();
        // Read in pieces so an endless or huge answer stops at the limit.
        while let Some(chunk) = resp.chunk().await.map_err(fetch_err)? {
            if body.len() + chunk.len() > limits.body_bytes {
                return Err(ScrapeError::TooLarge(limits.body_bytes));
            }
            body.extend_from_slice(&chunk);
        }
        let text = String::from_utf8(body).map_err(|_| ScrapeError::Parse("the exposition is not UTF-8".into()))?;
        let format = Format::detect(ct.as_deref(), &text);
        Ok((text, format))
    };
    tokio::time::timeout(t.timeout, work).await.map_err(|_| ScrapeError::Timeout(t.timeout))?
}

/// What one scrape did.
#[derive(Debug, Clone, PartialEq)]
pub struct Report {
    pub up: bool,
    pub duration: Duration,
    pub samples: usize,
    pub error: Option<ScrapeError>,
    /// Samples the store refused (out of order, duplicates).
    pub refused: usize,
}

/// Splits a sample line into its series text (`name{labels}`) and value; the timestamp and an OpenMetrics
/// exemplar after the value are ignored. None when the line is not a sample.
fn split_sample(line: &str) -> Option<(&str, f64)> {
    let (series, rest) = match line.find('{') {
        Some(open) => {
            let b = line.as_bytes();
            let (mut i, mut quoted) = (open + 1, false);
            while i < b.len() {
                match b[i] {
                    b'\\' if quoted => i += 1,
                    b'"' => quoted = !quoted,
                    b'}' if !quoted => break,
                    _ => {}
                }
                i += 1;
            }
            if i >= b.len() {
                return None;
            }
            (&line[..=i], &line[i + 1..])
        }
        None => line.split_once([' ', '\t'])?,
    };
    let value = rest.split_whitespace().next()?;
    let v = crate::promql::parse_float(value)?;
    (!series.is_empty()).then_some((series, v))
}

/// Parses a series text's name and labels (the slow path, once per new series of a target).
fn parse_series(series: &str) -> Option<Vec<(String, String)>> {
    let (name, rest) = match series.split_once('{') {
        Some((n, r)) => (n.trim(), r.strip_suffix('}')?),
        None => (series.trim(), ""),
    };
    let mut out = vec![("__name__".to_string(), name.to_string())];
    let mut chars = rest.chars().peekable();
    loop {
        while chars.peek().is_some_and(|c| *c == ',' || c.is_whitespace()) {
            chars.next();
        }
        if chars.peek().is_none() {
            break;
        }
        let key: String = chars.by_ref().take_while(|c| *c != '=').collect::<String>().trim().to_string();
        while chars.peek().is_some_and(|c| c.is_whitespace()) {
            chars.next();
        }
        if chars.next() != Some('"') {
            return None;
        }
        let mut value = String::new();
        loop {
            match chars.next()? {
                '\\' => match chars.next()? {
                    'n' => value.push('\n'),
                    c => value.push(c),
                },
                '"' => break,
                c => value.push(c),
            }
        }
        out.push((key, value));
    }
    Some(out)
}

/// The state a target's scrapes carry from one to the next: its series ids by series text (Prometheus' scrape
/// cache, holding the series of the last scrape only), the ids it wrote last time, to mark the missing ones
/// stale, and how many series it added to the store lately.
#[derive(Debug, Default)]
pub struct TargetState {
    cache: std::collections::HashMap<Box<str>, u32>,
    epoch: u64,
    last_ids: Vec<u32>,
    meta: Option<[u32; 3]>,
    /// (scrape time, series it added to the store), over the last hour.
    added: std::collections::VecDeque<(i64, usize)>,
}

const HOUR_MS: i64 = 3_600_000;

/// The name of the metric in a series text, for errors.
fn metric_of(series: &str) -> String {
    let name = series.split('{').next().unwrap_or("").trim();
    name.chars().take(200).collect()
}

/// Checks a new series' own labels against the limits; `target_labels` are added to the count.
fn check_labels(
    series: &str,
    pairs: &[(String, String)],
    target_labels: usize,
    limits: &Limits,
) -> Result<(), ScrapeError> {
    // `__name__` is counted as Prometheus counts it.
    if pairs.len() + target_labels > limits.labels {
        return Err(ScrapeError::LabelLimit {
            metric: metric_of(series),
            got: pairs.len() + target_labels,
            limit: limits.labels,
        });
    }
    // Every label is checked, the metric's name (`__name__`'s value) included, as Prometheus checks them.
    for (k, v) in pairs {
        if k.len() > limits.label_name_bytes {
            let name = k.chars().take(40).collect();
            return Err(ScrapeError::LabelNameLength {
                metric: metric_of(series),
                name,
                got: k.len(),
                limit: limits.label_name_bytes,
            });
        }
        if v.len() > limits.label_value_bytes {
            return Err(ScrapeError::LabelValueLength {
                metric: metric_of(series),
                name: k.clone(),
                got: v.len(),
                limit: limits.label_value_bytes,
            });
        }
    }
    Ok(())
}

impl TargetState {
    /// How many series texts the scrape cache holds: those of the last successful scrape.
    pub fn cached_series(&self) -> usize {
        self.cache.len()
    }

    /// Marks every series of the target stale (the target went away).
    pub fn mark_all_stale(&mut self, db: &Tsdb, t_ms: i64) {
        let mut w = db.writer();
        if w.epoch() != self.epoch {
            self.cache.clear();
            self.last_ids.clear();
            return;
        }
        for id in self.last_ids.drain(..) {
            let _ = w.append_id(id, t_ms, stale_nan());
        }
    }
}

/// Scrapes one target once at `t_ms` and stores the result.
pub async fn scrape(
    client: &reqwest::Client,
    target: &Target,
    db: &Tsdb,
    state: &mut TargetState,
    limits: Limits,
    t_ms: i64,
) -> Report {
    let started = Instant::now();
    let fetched = fetch(client, target, limits).await;
    // Samples as (series text, value); a line that is not one makes the whole scrape fail with the parser's
    // account of the first error.
    let parsed = fetched.and_then(|(text, format)| {
        let mut samples: Vec<(Box<str>, f64)> = Vec::new();
        for line in text.lines() {
            let line = line.trim();
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            match split_sample(line) {
                Some((series, v)) => samples.push((series.into(), v)),
                None => {
                    return Err(flatten(&text, format)
                        .err()
                        .unwrap_or_else(|| ScrapeError::Parse(format!("cannot read: {line}"))))
                }
            }
        }
        if samples.len() > limits.series {
            return Err(ScrapeError::SeriesLimit { got: samples.len(), limit: limits.series });
        }
        Ok(samples)
    });
    let duration = started.elapsed();
    // Series not in the cache: labels parsed and checked outside the lock, target labels added (an
    // exposition's own label that clashes is kept as exported_<name>, as Prometheus does without honor_labels).
    let with_target = |pairs: Vec<(String, String)>| {
        let mut pairs = pairs;
        for (k, v) in target.labels.iter() {
            if let Some(p) = pairs.iter_mut().find(|(pk, _)| pk == k) {
                p.0 = format!("exported_{k}");
            }
            pairs.push((k.to_string(), v.to_string()));
        }
        Labels::new(pairs)
    };
    if db.epoch() != state.epoch {
        state.cache.clear();
    }
    let parsed = parsed.and_then(|samples| {
        let mut out: Vec<(Box<str>, f64, Option<Labels>)> = Vec::with_capacity(samples.len());
        for (series, v) in samples {
            if state.cache.contains_key(&series) {
                out.push((series, v, None));
                continue;
            }
            let labels = match parse_series(&series) {
                Some(pairs) => {
                    check_labels(&series, &pairs, target.labels.len(), &limits)?;
                    Some(with_target(pairs))
                }
                // Counted as refused below.
                None => None,
            };
            out.push((series, v, Some(labels.unwrap_or_default())));
        }
        Ok(out)
    });
    let meta_labels =
        ["up", "scrape_duration_seconds", "scrape_samples_scraped"].map(|n| target.labels.with("__name__", n));
    let mut w = db.writer();
    if w.epoch() != state.epoch {
        state.cache.clear();
        state.last_ids.clear();
        state.meta = None;
        state.epoch = w.epoch();
    }
    let meta = *state.meta.get_or_insert_with(|| meta_labels.each_ref().map(|l| w.id_for(l)));
    let stale = stale_nan();
    state.added.retain(|(t, _)| *t > t_ms - HOUR_MS);
    // Which series are new to the store; the scrape fails whole if they break a limit.
    let resolved = parsed.and_then(|samples| {
        let mut new: std::collections::HashSet<Labels> = std::collections::HashSet::new();
        let mut out = Vec::with_capacity(samples.len());
        for (series, v, labels) in samples {
            let labels = match labels {
                Some(l) => l,
                None => match state.cache.get(&series) {
                    Some(id) => {
                        out.push((series, v, Some(*id), None));
                        continue;
                    }
                    // The cache was emptied under the lock (ids were reused): parse again. Its labels were
                    // checked when it first came.
                    None => parse_series(&series).map(with_target).unwrap_or_default(),
                },
            };
            if labels.is_empty() {
                // Not a series text: refused when stored.
                out.push((series, v, None, None));
                continue;
            }
            match w.lookup(&labels) {
                Some(id) => out.push((series, v, Some(id), None)),
                None => {
                    new.insert(labels.clone());
                    out.push((series, v, None, Some(labels)));
                }
            }
        }
        if !new.is_empty() {
            let recent: usize = state.added.iter().map(|(_, n)| n).sum();
            if recent + new.len() > limits.new_series_per_hour {
                return Err(ScrapeError::NewSeriesLimit { new: new.len(), recent, limit: limits.new_series_per_hour });
            }
            let mut held = w.series_count();
            if held + new.len() > limits.store_series {
                // Room is made from series that have ended (a churning target's, typically), those that ended
                // longest ago first; never from this scrape's own or its target's bookkeeping.
                let mut keep: std::collections::HashSet<u32> = out.iter().filter_map(|(_, _, id, _)| *id).collect();
                keep.extend(meta);
                w.forget_ended(held + new.len() - limits.store_series, &keep);
                state.epoch = w.epoch();
                held = w.series_count();
            }
            if held + new.len() > limits.store_series {
                return Err(ScrapeError::StoreSeriesLimit { held, new: new.len(), limit: limits.store_series });
            }
            state.added.push_back((t_ms, new.len()));
        }
        Ok(out)
    });
    let (up, samples, error, refused) = match resolved {
        Ok(samples) => {
            let n = samples.len();
            let mut ids = Vec::with_capacity(n);
            let mut refused = 0;
            // The cache keeps this scrape's series only, so that churned series do not stay in it.
            let mut cache = std::collections::HashMap::with_capacity(n);
            for (series, v, known, labels) in samples {
                let id = match (known, labels) {
                    (Some(id), _) => id,
                    (None, Some(l)) if !l.is_empty() => w.id_for(&l),
                    _ => {
                        refused += 1;
                        continue;
                    }
                };
                refused += usize::from(w.append_id(id, t_ms, v).is_err());
                cache.insert(series, id);
                ids.push(id);
            }
            state.cache = cache;
            ids.sort_unstable();
            ids.dedup();
            // Series that were there last time and are not now get a staleness marker.
            for gone in state.last_ids.iter().filter(|id| ids.binary_search(id).is_err()) {
                let _ = w.append_id(*gone, t_ms, stale);
            }
            state.last_ids = ids;
            (true, n, None, refused)
        }
        Err(e) => {
            // A failed scrape ends every series the target had, as in Prometheus.
            for id in state.last_ids.drain(..) {
                let _ = w.append_id(id, t_ms, stale);
            }
            (false, 0, Some(e), 0)
        }
    };
    let _ = w.append_id(meta[0], t_ms, if up { 1.0 } else { 0.0 });
    let _ = w.append_id(meta[1], t_ms, duration.as_secs_f64());
    let _ = w.append_id(meta[2], t_ms, samples as f64);
    Report { up, duration, samples, error, refused }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn names(f: &[Flat]) -> Vec<String> {
        let mut v: Vec<String> = f
            .iter()
            .map(|x| {
                let mut l = x.labels.clone();
                l.sort();
                format!("{l:?}={}", x.v)
            })
            .collect();
        v.sort();
        v
    }

    #[test]
    fn prometheus_text_is_flattened_as_prometheus_names_it() {
        let text = "# TYPE http_requests_total counter\nhttp_requests_total{code=\"200\"} 3\n# TYPE lat histogram\nlat_bucket{le=\"0.5\"} 1\nlat_bucket{le=\"+Inf\"} 2\nlat_sum 0.7\nlat_count 2\n# TYPE rpc summary\nrpc{quantile=\"0.9\"} 0.2\nrpc_sum 4\nrpc_count 9\n# TYPE temp gauge\ntemp 21.5\n";
        let f = flatten(text, Format::Prometheus).expect("parses");
        let n = names(&f);
        assert_eq!(f.len(), 9, "{n:#?}");
        assert!(n.iter().any(|x| x.contains("\"http_requests_total\"") && x.ends_with("=3")));
        assert!(n.iter().any(|x| x.contains("\"lat_bucket\"") && x.contains("\"+Inf\"") && x.ends_with("=2")));
        assert!(n.iter().any(|x| x.contains("\"rpc\"") && x.contains("(\"quantile\", \"0.9\")")));
        assert!(n.iter().any(|x| x.contains("\"temp\"") && x.ends_with("=21.5")));
    }

    #[test]
    fn openmetrics_counters_get_total_and_info_gets_info() {
        let text = "# TYPE jobs counter\njobs_total 4\n# TYPE build info\nbuild_info{version=\"1\"} 1\n# EOF\n";
        let n = names(&flatten(text, Format::OpenMetrics).expect("parses"));
        assert!(n.iter().any(|x| x.contains("\"jobs_total\"") && x.ends_with("=4")), "{n:?}");
        assert!(n.iter().any(|x| x.contains("\"build_info\"")), "{n:?}");
    }

    #[test]
    fn sample_lines_split_with_quotes_escapes_timestamps_and_exemplars() {
        assert_eq!(split_sample("up 1"), Some(("up", 1.0)));
        assert_eq!(
            split_sample("x{a=\"}{ \\\"q\\\"\"} +Inf 1700000000"),
            Some(("x{a=\"}{ \\\"q\\\"\"}", f64::INFINITY))
        );
        assert_eq!(split_sample("h_bucket{le=\"1\"} 3 # {trace_id=\"ab\"} 1 12.5"), Some(("h_bucket{le=\"1\"}", 3.0)));
        assert_eq!(split_sample("broken{a=\"1\" 2"), None);
        assert_eq!(split_sample("novalue"), None);
        let l = parse_series("x{a=\"}{ \\\"q\\\"\", b=\"line\\nbreak\",}").expect("parses");
        assert_eq!(
            l,
            [("__name__".into(), "x".into()), ("a".into(), "}{ \"q\"".into()), ("b".into(), "line\nbreak".into())]
        );
    }

    #[test]
    fn malformed_expositions_say_where() {
        let e = flatten("ok 1\nbad{ 2\n", Format::Prometheus).unwrap_err();
        let ScrapeError::Parse(msg) = e else { panic!("{e:?}") };
        assert!(msg.starts_with("line 2"), "{msg}");
    }
}
