//! The two exposition formats, rule by rule: each case is a text that must be accepted (and flatten to the
//! series Prometheus would store) or refused with an error on the right line.
#![allow(clippy::unwrap_used, clippy::expect_used)] // a test: a failed step is the failure it reports

use capstan_observe::exposition::{check, Format, Severity};
use capstan_observe::scrape::flatten;

fn errors(text: &str, f: Format) -> Vec<(Option<usize>, String)> {
    check(text, f).into_iter().filter(|p| p.severity == Severity::Error).map(|p| (p.line, p.message)).collect()
}

fn series(text: &str, f: Format) -> Vec<String> {
    let mut v: Vec<String> = flatten(text, f)
        .unwrap_or_else(|e| panic!("{text:?}: {e}"))
        .into_iter()
        .map(|s| {
            let mut l = s.labels.clone();
            l.sort();
            let name = l.iter().find(|(k, _)| k == "__name__").map(|x| x.1.clone()).unwrap_or_default();
            let rest: Vec<String> =
                l.iter().filter(|(k, _)| k != "__name__").map(|(k, v)| format!("{k}={v}")).collect();
            format!("{name}{{{}}} {}", rest.join(","), s.v)
        })
        .collect();
    v.sort();
    v
}

#[test]
fn prometheus_text_good_inputs() {
    let p = Format::Prometheus;
    // Comments, blank lines, an untyped sample and a timestamp. (openmetrics-parser, which `metrics lint` uses,
    // groups consecutive families without TYPE lines into one: the scraper's own line reader does not.)
    assert_eq!(series("# a comment\n\nup 1\n# TYPE up2 gauge\nup2 0 1700000000000\n", p), ["up2{} 0", "up{} 1"]);
    // HELP with escapes, TYPE, labels with escaped quotes, backslashes and newlines.
    let t = "# HELP x_total A \\\\ help\\nline.\n# TYPE x_total counter\nx_total{path=\"/a\\\"b\",d=\"c:\\\\x\",n=\"l1\\nl2\"} 3\n";
    assert_eq!(series(t, p), ["x_total{d=c:\\x,n=l1\nl2,path=/a\"b} 3"]);
    // Special values.
    let t = "# TYPE g gauge\ng{k=\"a\"} +Inf\ng{k=\"b\"} -Inf\ng{k=\"c\"} NaN\ng{k=\"d\"} 1.5e-3\n";
    let s = series(t, p);
    assert_eq!(s.len(), 4);
    assert!(s.contains(&"g{k=a} inf".to_string()) && s.contains(&"g{k=d} 0.0015".to_string()), "{s:?}");
    // Histograms and summaries flatten to their series.
    let t = "# TYPE h histogram\nh_bucket{le=\"0.1\"} 1\nh_bucket{le=\"+Inf\"} 2\nh_sum 0.3\nh_count 2\n# TYPE s summary\ns{quantile=\"0.5\"} 1\ns_sum 3\ns_count 4\n";
    assert_eq!(
        series(t, p),
        [
            "h_bucket{le=+Inf} 2",
            "h_bucket{le=0.1} 1",
            "h_count{} 2",
            "h_sum{} 0.3",
            "s_count{} 4",
            "s_sum{} 3",
            "s{quantile=0.5} 1"
        ]
    );
    // An empty label set written as {}.
    assert_eq!(series("# TYPE e gauge\ne{} 7\n", p), ["e{} 7"]);
    assert!(errors("up 1\n", p).is_empty());
}

#[test]
fn prometheus_text_bad_inputs() {
    let p = Format::Prometheus;
    for (text, line) in [
        ("up\n", 1),                                   // no value
        ("ok 1\nup{a=\"1\" 1\n", 2),                   // unclosed label set
        ("ok 1\nup{a=1} 1\n", 2),                      // unquoted label value
        ("ok 1\n2up 1\n", 2),                          // a name may not start with a digit
        ("ok 1\nup one\n", 2),                         // not a number
        ("# TYPE x gauge\nx{a=\"1\",a=\"2\"} 1\n", 2), // a label given twice
        ("ok 1\nup{a=\"1\"} 1 2 3\n", 2),              // trailing garbage
    ] {
        let e = errors(text, p);
        assert_eq!(e.len(), 1, "{text:?} must be refused: {e:?}");
        assert_eq!(e[0].0, Some(line), "{text:?}: {e:?}");
        assert!(flatten(text, p).is_err(), "{text:?} must not flatten");
    }
}

#[test]
fn openmetrics_good_inputs() {
    let o = Format::OpenMetrics;
    // Counters carry _total (and _created), gauges a unit, info and stateset their forms, and an exemplar.
    let t = "# TYPE req counter\n# HELP req Requests.\nreq_total{code=\"200\"} 5 # {trace_id=\"abc\"} 1 1700000000.5\n\
# TYPE temp_celsius gauge\n# UNIT temp_celsius celsius\ntemp_celsius 21.5\n\
# TYPE build info\nbuild_info{version=\"1.2\"} 1\n\
# TYPE feature stateset\nfeature{feature=\"a\"} 1\nfeature{feature=\"b\"} 0\n\
# EOF\n";
    let s = series(t, o);
    assert!(s.contains(&"req_total{code=200} 5".to_string()), "{s:?}");
    assert!(s.contains(&"temp_celsius{} 21.5".to_string()), "{s:?}");
    assert!(s.contains(&"build_info{version=1.2} 1".to_string()), "{s:?}");
    assert!(s.iter().filter(|x| x.starts_with("feature{")).count() == 2, "{s:?}");
    // Histograms with buckets, sum and count; gauge histograms with _gsum and _gcount.
    let t = "# TYPE lat histogram\nlat_bucket{le=\"1.0\"} 1\nlat_bucket{le=\"+Inf\"} 2\nlat_sum 1.5\nlat_count 2\n\
# TYPE q gaugehistogram\nq_bucket{le=\"+Inf\"} 3\nq_gsum 4\nq_gcount 3\n# EOF\n";
    let s = series(t, o);
    assert!(s.contains(&"lat_count{} 2".to_string()) && s.contains(&"q_gcount{} 3".to_string()), "{s:?}");
    assert!(errors(t, o).is_empty());
}

#[test]
fn openmetrics_bad_inputs() {
    let o = Format::OpenMetrics;
    for text in [
        "# TYPE x counter\nx_total 1\n",                                // no # EOF
        "# TYPE x counter\nx 1\n# EOF\n",                               // a counter sample without _total
        "# TYPE x gauge\nx 1\n# EOF\nx 2\n",                            // content after # EOF
        "# TYPE x gauge\nx{a=\"1\"} 1\nx{a=\"1\"} 2\n# EOF\n",          // the same series twice
        "# TYPE x histogram\nx_bucket{le=\"1\"} 1\nx_count 1\n# EOF\n", // no +Inf bucket
        "# TYPE x gauge\nx  1\n# EOF\n",                                // two spaces: OpenMetrics is strict
    ] {
        let e = errors(text, o);
        assert_eq!(e.len(), 1, "{text:?} must be refused: {e:?}");
        assert!(flatten(text, o).is_err(), "{text:?} must not flatten");
    }
}
