//! The scraper: fetch a target's exposition (content negotiation, timeout, size limit), turn it into samples
//! named as Prometheus names them, append them with the target's labels, write `up` and the scrape's own series,
//! and mark series that disappeared as stale.

use std::collections::HashSet;
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

/// Limits that protect the store from one bad target.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    /// Largest exposition read, in bytes.
    pub body_bytes: usize,
    /// Most series one scrape may produce; above it the scrape fails and nothing of it is stored.
    pub series: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Limits { body_bytes: 10 << 20, series: 50_000 }
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
                    let base: Vec<(String, String)> = s
                        .get_labelset()
                        .map(|ls| ls.iter().map(|(k, v)| (k.clone(), v.clone())).collect())
                        .unwrap_or_default();
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
                    let base: Vec<(String, String)> = s
                        .get_labelset()
                        .map(|ls| ls.iter().map(|(k, v)| (k.clone(), v.clone())).collect())
                        .unwrap_or_default();
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

/// The state a target's scrapes carry from one to the next: the series it wrote last time.
#[derive(Debug, Default)]
pub struct TargetState {
    last_series: HashSet<Labels>,
}

impl TargetState {
    /// Marks every series of the target stale (the target went away).
    pub fn mark_all_stale(&mut self, db: &Tsdb, t_ms: i64) {
        let stale = stale_nan();
        let series: Vec<Labels> = self.last_series.drain().collect();
        db.append_all(series.iter().map(|l| (l, t_ms, stale)));
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
    let result = match fetch(client, target, limits).await {
        Ok((text, format)) => flatten(&text, format),
        Err(e) => Err(e),
    };
    let result = result.and_then(|flat| {
        if flat.len() > limits.series {
            Err(ScrapeError::SeriesLimit { got: flat.len(), limit: limits.series })
        } else {
            Ok(flat)
        }
    });
    let duration = started.elapsed();
    let (up, samples, error, refused) = match result {
        Ok(flat) => {
            let mut series = HashSet::with_capacity(flat.len());
            let mut batch: Vec<(Labels, f64)> = Vec::with_capacity(flat.len());
            for f in flat {
                // Target labels win over the exposition's (Prometheus' honor_labels: false keeps both by
                // renaming the exposition's to exported_*).
                let mut pairs = f.labels;
                for (k, v) in target.labels.iter() {
                    if let Some(p) = pairs.iter_mut().find(|(pk, _)| pk == k) {
                        p.0 = format!("exported_{k}");
                    }
                    pairs.push((k.to_string(), v.to_string()));
                }
                let labels = Labels::new(pairs);
                series.insert(labels.clone());
                batch.push((labels, f.v));
            }
            let n = batch.len();
            let refused = db.append_all(batch.iter().map(|(l, v)| (l, t_ms, *v))).len();
            // Series that were there last time and are not now get a staleness marker.
            let gone: Vec<Labels> = state.last_series.difference(&series).cloned().collect();
            let stale = stale_nan();
            db.append_all(gone.iter().map(|l| (l, t_ms, stale)));
            state.last_series = series;
            (true, n, None, refused)
        }
        Err(e) => {
            // A failed scrape ends every series the target had, as in Prometheus.
            state.mark_all_stale(db, t_ms);
            (false, 0, Some(e), 0)
        }
    };
    let meta = |name: &str| target.labels.with("__name__", name);
    let up_v = if up { 1.0 } else { 0.0 };
    db.append_all([
        (&meta("up"), t_ms, up_v),
        (&meta("scrape_duration_seconds"), t_ms, duration.as_secs_f64()),
        (&meta("scrape_samples_scraped"), t_ms, samples as f64),
    ]);
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
    fn malformed_expositions_say_where() {
        let e = flatten("ok 1\nbad{ 2\n", Format::Prometheus).unwrap_err();
        let ScrapeError::Parse(msg) = e else { panic!("{e:?}") };
        assert!(msg.starts_with("line 2"), "{msg}");
    }
}
