//! Metrics expositions: the format of a text (Prometheus 0.0.4 or OpenMetrics 1.0), strict parsing with the line
//! and column of the first error, and the lint rules `promtool check metrics` applies.

use openmetrics_parser::{OpenMetricsType, PrometheusType};

/// The two text formats.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    /// `text/plain; version=0.0.4`.
    Prometheus,
    /// `application/openmetrics-text; version=1.0.0`, which ends with `# EOF`.
    OpenMetrics,
}

impl Format {
    /// OpenMetrics when the content type says so, or (without one) when the text ends with `# EOF`.
    pub fn detect(content_type: Option<&str>, text: &str) -> Format {
        match content_type {
            Some(ct) if ct.contains("openmetrics") => Format::OpenMetrics,
            Some(_) => Format::Prometheus,
            None if text.trim_end().ends_with("# EOF") => Format::OpenMetrics,
            None => Format::Prometheus,
        }
    }
}

/// How bad a problem is: an error makes the exposition unusable; a lint is a convention broken.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Severity {
    Error,
    Lint,
}

/// One problem, with where it is when known.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Problem {
    pub severity: Severity,
    pub line: Option<usize>,
    pub column: Option<usize>,
    /// The metric family concerned, for lints.
    pub metric: Option<String>,
    pub message: String,
}

impl std::fmt::Display for Problem {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        if let Some(l) = self.line {
            write!(f, "line {l}")?;
            if let Some(c) = self.column {
                write!(f, ":{c}")?;
            }
            write!(f, ": ")?;
        }
        if let Some(m) = &self.metric {
            write!(f, "{m}: ")?;
        }
        f.write_str(&self.message)
    }
}

/// Turns the parser's report (` --> 3:2 … = expected labels`) into line, column and a sentence.
fn parse_error(report: &str) -> Problem {
    let mut line = None;
    let mut column = None;
    if let Some(pos) = report.split("-->").nth(1).and_then(|r| r.split_whitespace().next()) {
        let mut it = pos.split(':');
        line = it.next().and_then(|l| l.parse().ok());
        column = it.next().and_then(|c| c.parse().ok());
    }
    let reason = report
        .lines()
        .find_map(|l| l.trim().strip_prefix("= "))
        .map(str::to_string)
        .unwrap_or_else(|| report.trim().to_string());
    Problem { severity: Severity::Error, line, column, metric: None, message: reason }
}

/// Errors the parser raises about a whole family ("… Got <name>") carry no position: find the family's line.
fn locate(mut p: Problem, text: &str) -> Problem {
    if p.line.is_none() {
        if let Some(name) = p.message.rsplit("Got ").next().filter(|_| p.message.contains("Got ")) {
            let name = name.trim().trim_end_matches('.');
            p.line = line_of(text, name);
            p.metric = Some(name.to_string());
        }
    }
    if p.line.is_none() {
        // "Found label `a` twice in the same labelset": the first sample line naming that label twice.
        if let Some(label) = p.message.split('`').nth(1).filter(|_| p.message.contains("twice")) {
            let needle = format!("{label}=");
            p.line = text.lines().position(|l| !l.starts_with('#') && l.matches(&needle).count() > 1).map(|i| i + 1);
        }
    }
    p
}

fn line_of(text: &str, family: &str) -> Option<usize> {
    text.lines()
        .position(|l| {
            let l = l.trim_start();
            l.starts_with(family)
                || l.strip_prefix("# TYPE ").is_some_and(|r| r.split_whitespace().next() == Some(family))
                || l.strip_prefix("# HELP ").is_some_and(|r| r.split_whitespace().next() == Some(family))
        })
        .map(|i| i + 1)
}

fn lint_family(text: &str, name: &str, help: &str, is_counter: bool, counter_suffix: bool, out: &mut Vec<Problem>) {
    let lint = |message: String| Problem {
        severity: Severity::Lint,
        line: line_of(text, name),
        column: None,
        metric: Some(name.to_string()),
        message,
    };
    if help.trim().is_empty() {
        out.push(lint("no help text".into()));
    }
    if counter_suffix && is_counter && !name.ends_with("_total") {
        out.push(lint("counter metrics should have \"_total\" suffix".into()));
    }
    if name.chars().any(|c| c.is_ascii_uppercase()) {
        out.push(lint("metric names should be written in 'snake_case' not 'camelCase'".into()));
    }
    for (unit, base) in
        [("_milliseconds", "seconds"), ("_microseconds", "seconds"), ("_kilobytes", "bytes"), ("_megabytes", "bytes")]
    {
        if name.contains(unit) {
            out.push(lint(format!("use base unit \"{base}\" instead of \"{}\"", unit.trim_start_matches('_'))));
        }
    }
}

/// Checks an exposition: a parse error (with its position) or the lints, sorted by line.
pub fn check(text: &str, format: Format) -> Vec<Problem> {
    let mut out = Vec::new();
    match format {
        Format::Prometheus => match openmetrics_parser::prometheus::parse_prometheus(text) {
            Err(e) => out.push(locate(parse_error(&e.to_string()), text)),
            Ok(exp) => {
                for (name, fam) in &exp.families {
                    let counter = fam.family_type == PrometheusType::Counter;
                    lint_family(text, name, &fam.help, counter, true, &mut out);
                }
            }
        },
        Format::OpenMetrics => match openmetrics_parser::openmetrics::parse_openmetrics(text) {
            Err(e) => out.push(locate(parse_error(&e.to_string()), text)),
            Ok(exp) => {
                for (name, fam) in &exp.families {
                    // In OpenMetrics the family is named without `_total`; its samples carry it.
                    let counter = fam.family_type == OpenMetricsType::Counter;
                    lint_family(text, name, &fam.help, counter, false, &mut out);
                }
            }
        },
    }
    out.sort_by_key(|p| (p.line, p.message.clone()));
    out
}

/// The samples of an OpenMetrics exposition's `family` whose labels include every pair in `labels`.
fn matching<'a>(
    exp: &'a openmetrics_parser::MetricsExposition<OpenMetricsType, openmetrics_parser::OpenMetricsValue>,
    family: &str,
    labels: &[(&str, &str)],
) -> Vec<&'a openmetrics_parser::Sample<openmetrics_parser::OpenMetricsValue>> {
    let Some(fam) = exp.families.get(family) else { return Vec::new() };
    fam.iter_samples()
        .filter(|s| s.get_labelset().is_ok_and(|set| labels.iter().all(|(k, v)| set.get_label_value(k) == Some(*v))))
        .collect()
}

/// Why [`counter_sum`] or [`histogram_sum`] could not read an exposition.
#[derive(Debug, thiserror::Error)]
pub enum SumError {
    /// The text is not an OpenMetrics exposition: the parser's report, in its words ([`check`] finds its line and
    /// column).
    #[error("{0}")]
    Parse(openmetrics_parser::ParseError),
}

/// The sum of counter `family` over the samples carrying `labels`, in an OpenMetrics exposition.
pub fn counter_sum(text: &str, family: &str, labels: &[(&str, &str)]) -> Result<f64, SumError> {
    let exp = openmetrics_parser::openmetrics::parse_openmetrics(text).map_err(SumError::Parse)?;
    Ok(matching(&exp, family, labels)
        .iter()
        .map(|s| match &s.value {
            openmetrics_parser::OpenMetricsValue::Counter(c) => c.value.as_f64(),
            _ => 0.0,
        })
        .sum())
}

/// Histogram `family`'s cumulative buckets `(upper bound, count)`, summed over the samples carrying `labels`.
pub fn histogram_sum(text: &str, family: &str, labels: &[(&str, &str)]) -> Result<Vec<(f64, f64)>, SumError> {
    let exp = openmetrics_parser::openmetrics::parse_openmetrics(text).map_err(SumError::Parse)?;
    let mut out: Vec<(f64, f64)> = Vec::new();
    for s in matching(&exp, family, labels) {
        if let openmetrics_parser::OpenMetricsValue::Histogram(h) = &s.value {
            for b in &h.buckets {
                match out.iter_mut().find(|(le, _)| *le == b.upper_bound) {
                    Some(x) => x.1 += b.count.as_f64(),
                    None => out.push((b.upper_bound, b.count.as_f64())),
                }
            }
        }
    }
    out.sort_by(|a, b| a.0.total_cmp(&b.0));
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counters_and_histograms_are_summed_over_matching_samples() {
        let text = "# TYPE req counter\nreq_total{api=\"predict\",v=\"1\"} 3\nreq_total{api=\"predict\",v=\"2\"} 4\nreq_total{api=\"status\",v=\"2\"} 9\n# TYPE lat histogram\nlat_bucket{v=\"1\",le=\"0.1\"} 1\nlat_bucket{v=\"1\",le=\"+Inf\"} 2\nlat_sum{v=\"1\"} 0.3\nlat_count{v=\"1\"} 2\nlat_bucket{v=\"2\",le=\"0.1\"} 5\nlat_bucket{v=\"2\",le=\"+Inf\"} 5\nlat_sum{v=\"2\"} 0.2\nlat_count{v=\"2\"} 5\n# EOF\n";
        assert_eq!(counter_sum(text, "req", &[("api", "predict")]).ok(), Some(7.0));
        assert_eq!(counter_sum(text, "absent", &[]).ok(), Some(0.0));
        assert_eq!(histogram_sum(text, "lat", &[]).ok(), Some(vec![(0.1, 6.0), (f64::INFINITY, 7.0)]));
        // Not an exposition: the parser's report, word for word.
        let bad = "not an exposition";
        let report = openmetrics_parser::openmetrics::parse_openmetrics(bad).err().map(|e| e.to_string());
        assert!(report.is_some());
        let e = counter_sum(bad, "req", &[]).unwrap_err();
        assert!(matches!(e, SumError::Parse(_)));
        assert_eq!(Some(e.to_string()), report);
        assert_eq!(histogram_sum(bad, "lat", &[]).err().map(|e| e.to_string()), report);
    }

    #[test]
    fn a_clean_exposition_has_no_problems() {
        let text = "# HELP http_requests_total Requests.\n# TYPE http_requests_total counter\nhttp_requests_total{code=\"200\"} 3\n";
        assert!(check(text, Format::Prometheus).is_empty());
        let om = "# HELP http_requests Requests.\n# TYPE http_requests counter\nhttp_requests_total 3\n# EOF\n";
        assert_eq!(Format::detect(None, om), Format::OpenMetrics);
        assert!(check(om, Format::OpenMetrics).is_empty());
    }

    #[test]
    fn syntax_errors_name_line_and_column() {
        let bad = "# HELP x_total A counter.\n# TYPE x_total counter\nx_total{a=\"1\" 3\n";
        let p = check(bad, Format::Prometheus);
        assert_eq!(p.len(), 1);
        assert_eq!((p[0].severity, p[0].line, p[0].column), (Severity::Error, Some(3), Some(8)));
        assert!(p[0].message.contains("expected"), "{}", p[0]);
        let no_eof = "# TYPE x counter\nx_total 1\n";
        assert_eq!(check(no_eof, Format::OpenMetrics)[0].severity, Severity::Error);
    }

    #[test]
    fn promtool_lints() {
        let text = "# TYPE requests counter\nrequests 1\n# HELP latencyMilliseconds x\n# TYPE latencyMilliseconds gauge\nlatencyMilliseconds 2\n# HELP size_megabytes s\n# TYPE size_megabytes gauge\nsize_megabytes 1\n";
        let p: Vec<String> = check(text, Format::Prometheus).iter().map(|p| p.to_string()).collect();
        assert!(p.contains(&"line 1: requests: no help text".to_string()), "{p:?}");
        assert!(p.contains(&"line 1: requests: counter metrics should have \"_total\" suffix".to_string()), "{p:?}");
        assert!(
            p.iter().any(|x| x.contains("latencyMilliseconds: metric names should be written in 'snake_case'")),
            "{p:?}"
        );
        assert!(p.iter().any(|x| x.contains("size_megabytes: use base unit \"bytes\"")), "{p:?}");
        assert!(p.iter().all(|x| !x.contains("expected")), "valid names are not syntax errors: {p:?}");
    }
}
