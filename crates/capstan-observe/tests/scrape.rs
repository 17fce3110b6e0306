//! The scraper against real HTTP targets on 127.0.0.1: content negotiation, `up` and the scrape series,
//! staleness when a series or the target goes away, and bad targets (malformed, endless, slow, too many series)
//! that fail alone with a clear error.
#![allow(clippy::unwrap_used, clippy::expect_used)] // a test: a failed step is the failure it reports

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use capstan_observe::promql::{Engine, Value};
use capstan_observe::scrape::{scrape, Limits, ScrapeError, Target, TargetState};
use capstan_observe::tsdb::{is_stale, Labels, Tsdb};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// A target that answers each request with what `body(n)` gives for the n-th request (or stalls / streams).
async fn target(kind: &'static str) -> (String, Arc<AtomicUsize>) {
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let url = format!("http://{}/metrics", l.local_addr().expect("addr"));
    let count = Arc::new(AtomicUsize::new(0));
    let c = count.clone();
    tokio::spawn(async move {
        loop {
            let Ok((mut s, _)) = l.accept().await else { return };
            let n = c.fetch_add(1, Ordering::SeqCst);
            tokio::spawn(async move {
                let mut buf = vec![0u8; 4096];
                let got = s.read(&mut buf).await.unwrap_or(0);
                let req = String::from_utf8_lossy(&buf[..got]).to_lowercase();
                let om = req.contains("accept: application/openmetrics-text");
                let (ct, body): (&str, String) = match kind {
                    "good" if n == 0 => (
                        "text/plain; version=0.0.4",
                        "# TYPE jobs_total counter\njobs_total{queue=\"a\"} 1\njobs_total{queue=\"b\"} 2\n".into(),
                    ),
                    "good" => {
                        ("text/plain; version=0.0.4", "# TYPE jobs_total counter\njobs_total{queue=\"a\"} 5\n".into())
                    }
                    "openmetrics" if om => (
                        "application/openmetrics-text; version=1.0.0; charset=utf-8",
                        "# TYPE jobs counter\njobs_total 7\n# EOF\n".into(),
                    ),
                    "openmetrics" => ("text/plain", "wrong_negotiation 1\n".into()),
                    "malformed" => ("text/plain; version=0.0.4", "ok 1\nbroken{a=\"1\" 2\n".into()),
                    "explosion" => {
                        let mut b = String::from("# TYPE x gauge\n");
                        for i in 0..200 {
                            b.push_str(&format!("x{{id=\"{i}\"}} 1\n"));
                        }
                        ("text/plain; version=0.0.4", b)
                    }
                    "churn" => {
                        let mut b = String::from("# TYPE req gauge\n");
                        for i in 0..60 {
                            b.push_str(&format!("req{{request_id=\"{}\"}} 1\n", n * 60 + i));
                        }
                        ("text/plain; version=0.0.4", b)
                    }
                    "wide" => {
                        let labels: Vec<String> = (0..100).map(|i| format!("l{i}=\"v\"")).collect();
                        ("text/plain; version=0.0.4", format!("wide{{{}}} 1\n", labels.join(",")))
                    }
                    "long_value" => ("text/plain; version=0.0.4", format!("v{{path=\"{}\"}} 1\n", "a".repeat(5_000))),
                    "long_name" => ("text/plain; version=0.0.4", format!("n{{{}=\"x\"}} 1\n", "k".repeat(300))),
                    "long_metric" => ("text/plain; version=0.0.4", format!("{} 1\n", "m".repeat(5_000))),
                    "slow" => {
                        tokio::time::sleep(Duration::from_secs(5)).await;
                        ("text/plain", "late 1\n".into())
                    }
                    "endless" => {
                        let _ = s
                            .write_all(
                                b"HTTP/1.1 200 OK\r\ncontent-type: text/plain\r\ntransfer-encoding: chunked\r\n\r\n",
                            )
                            .await;
                        let chunk = format!("{:x}\r\n{}\r\n", 1024, "x".repeat(1024));
                        for _ in 0..100_000 {
                            if s.write_all(chunk.as_bytes()).await.is_err() {
                                return;
                            }
                        }
                        return;
                    }
                    _ => ("text/plain", String::new()),
                };
                let head = format!(
                    "HTTP/1.1 200 OK\r\ncontent-type: {ct}\r\ncontent-length: {}\r\nconnection: close\r\n\r\n",
                    body.len()
                );
                let _ = s.write_all(head.as_bytes()).await;
                let _ = s.write_all(body.as_bytes()).await;
            });
        }
    });
    (url, count)
}

fn t(url: &str, timeout_ms: u64) -> Target {
    Target {
        url: url.to_string(),
        labels: Labels::new([("job", "test"), ("instance", "i1")]),
        interval: Duration::from_secs(1),
        timeout: Duration::from_millis(timeout_ms),
    }
}

fn instant(db: &Tsdb, q: &str, at: i64) -> Vec<(String, f64)> {
    match Engine::new(db).instant(q, at).expect(q) {
        Value::Vector(v) => v.into_iter().map(|s| (s.labels.to_string(), s.v)).collect(),
        other => panic!("{other:?}"),
    }
}

#[tokio::test]
async fn samples_up_and_staleness() {
    let (url, _) = target("good").await;
    let db = Tsdb::new();
    let client = reqwest::Client::new();
    let mut st = TargetState::default();
    let r = scrape(&client, &t(&url, 2000), &db, &mut st, Limits::default(), 10_000).await;
    assert!(r.up && r.samples == 2 && r.error.is_none(), "{r:?}");
    assert_eq!(instant(&db, "up", 10_000), [("up{instance=\"i1\", job=\"test\"}".to_string(), 1.0)]);
    assert_eq!(instant(&db, "scrape_samples_scraped", 10_000)[0].1, 2.0);
    assert_eq!(instant(&db, "jobs_total", 10_000).len(), 2);
    // The second answer lacks queue="b": that series is marked stale and leaves the instant vector at once.
    let r = scrape(&client, &t(&url, 2000), &db, &mut st, Limits::default(), 20_000).await;
    assert_eq!(r.samples, 1);
    let v = instant(&db, "jobs_total", 20_000);
    assert_eq!(v, [("jobs_total{instance=\"i1\", job=\"test\", queue=\"a\"}".to_string(), 5.0)]);
    let b = Labels::new([("__name__", "jobs_total"), ("queue", "b"), ("job", "test"), ("instance", "i1")]);
    assert!(is_stale(db.last(&b).expect("series b").1));
    // The target goes away: everything it had is stale.
    st.mark_all_stale(&db, 30_000);
    assert!(instant(&db, "jobs_total", 30_000).is_empty());
}

#[tokio::test]
async fn openmetrics_is_asked_for_and_parsed() {
    let (url, _) = target("openmetrics").await;
    let db = Tsdb::new();
    let r = scrape(&reqwest::Client::new(), &t(&url, 2000), &db, &mut TargetState::default(), Limits::default(), 1_000)
        .await;
    assert!(r.up, "{r:?}");
    assert_eq!(instant(&db, "jobs_total", 1_000)[0].1, 7.0);
}

#[tokio::test]
async fn bad_targets_fail_alone_with_a_clear_error() {
    let db = Tsdb::new();
    let client = reqwest::Client::new();
    let limits = Limits { body_bytes: 1 << 20, series: 100, ..Limits::default() };

    let (url, _) = target("malformed").await;
    let r = scrape(&client, &t(&url, 2000), &db, &mut TargetState::default(), limits, 1_000).await;
    assert!(!r.up);
    assert!(matches!(&r.error, Some(ScrapeError::Parse(m)) if m.starts_with("line 2")), "{r:?}");

    let (url, _) = target("explosion").await;
    let r = scrape(&client, &t(&url, 2000), &db, &mut TargetState::default(), limits, 1_000).await;
    assert_eq!(r.error, Some(ScrapeError::SeriesLimit { got: 200, limit: 100 }));
    assert!(instant(&db, "x", 1_000).is_empty(), "nothing of a refused scrape is stored");

    let (url, _) = target("endless").await;
    let r = scrape(&client, &t(&url, 10_000), &db, &mut TargetState::default(), limits, 1_000).await;
    assert_eq!(r.error, Some(ScrapeError::TooLarge(1 << 20)));

    let (url, _) = target("slow").await;
    let r = scrape(&client, &t(&url, 300), &db, &mut TargetState::default(), limits, 1_000).await;
    assert_eq!(r.error, Some(ScrapeError::Timeout(Duration::from_millis(300))), "{r:?}");

    let dead = std::net::TcpListener::bind("127.0.0.1:0").expect("bind").local_addr().expect("addr");
    let r =
        scrape(&client, &t(&format!("http://{dead}/metrics"), 1000), &db, &mut TargetState::default(), limits, 1_000)
            .await;
    assert!(matches!(&r.error, Some(ScrapeError::Fetch { .. })), "{r:?}");

    // Each failed scrape wrote up == 0 for its target.
    let up = instant(&db, "up == 0", 1_000);
    assert_eq!(up.len(), 1, "all five targets share the same labels here: {up:?}");
}

/// Prometheus' label limits, and a target that puts a new value in a label at every scrape: each fails its scrape
/// with the limit named, stores nothing, and other targets go on.
#[tokio::test]
async fn label_limits_and_churning_targets_are_refused_with_the_limit_named() {
    let client = reqwest::Client::new();
    let limits = Limits {
        labels: 10,
        label_name_bytes: 32,
        label_value_bytes: 100,
        new_series_per_hour: 150,
        store_series: 1_000,
        ..Limits::default()
    };
    let db = Tsdb::new();
    let one = |kind: &'static str| {
        let (client, db) = (client.clone(), &db);
        async move {
            let (url, _) = target(kind).await;
            scrape(&client, &t(&url, 2000), db, &mut TargetState::default(), limits, 1_000).await
        }
    };
    let r = one("wide").await;
    assert!(matches!(r.error, Some(ScrapeError::LabelLimit { got: 103, limit: 10, .. })), "{r:?}");
    let r = one("long_value").await;
    let e = r.error.expect("refused").to_string();
    assert!(e.contains("label_value_length_limit exceeded (metric: v, label name: path, value length: 5000"), "{e}");
    let r = one("long_name").await;
    assert!(matches!(r.error, Some(ScrapeError::LabelNameLength { got: 300, limit: 32, .. })), "{r:?}");
    let r = one("long_metric").await;
    assert!(
        matches!(&r.error, Some(ScrapeError::LabelValueLength { name, got: 5000, .. }) if name == "__name__"),
        "a metric name is a label value too: {r:?}"
    );
    assert!(instant(&db, "{__name__=~\"wide|v|n\"}", 1_000).is_empty(), "nothing of them was stored");

    // 60 new series a scrape: the third scrape within the hour would pass 150.
    let (url, _) = target("churn").await;
    let mut st = TargetState::default();
    for at in [1_000, 2_000] {
        let r = scrape(&client, &t(&url, 2000), &db, &mut st, limits, at).await;
        assert!(r.up, "{r:?}");
        assert_eq!(st.cached_series(), 60, "the cache holds the last scrape's series only");
    }
    let r = scrape(&client, &t(&url, 2000), &db, &mut st, limits, 3_000).await;
    assert_eq!(r.error, Some(ScrapeError::NewSeriesLimit { new: 60, recent: 120, limit: 150 }));
    assert!(r.error.expect("refused").to_string().contains("request ids or timestamps"));
    assert!(instant(&db, "req", 3_000).is_empty(), "the failed scrape ended the target's series, added none");
    assert_eq!(instant(&db, "count(count_over_time(req[1h]))", 3_000)[0].1, 120.0);
    // An hour later it may add series again.
    let r = scrape(&client, &t(&url, 2000), &db, &mut st, limits, 3_000 + 3_600_000).await;
    assert!(r.up, "{r:?}");

    // The store's own limit binds all targets together. Room is made from series that ended (the churn's earlier
    // ones), those that ended longest ago first, so live targets keep working.
    let full = Limits { store_series: db.stats().series + 10, new_series_per_hour: 1_000_000, ..limits };
    let r = scrape(&client, &t(&url, 2000), &db, &mut st, full, 4_000 + 3_600_000).await;
    assert!(r.up, "{r:?}");
    assert!(db.stats().series <= full.store_series, "{} series", db.stats().series);
    let (good, _) = target("good").await;
    let r = scrape(&client, &t(&good, 2000), &db, &mut TargetState::default(), full, 5_000 + 3_600_000).await;
    assert!(r.up, "a target whose series fit is still scraped: {r:?}");
    assert!(db.stats().series <= full.store_series);
    // With nothing ended to forget, a scrape that would pass the limit fails whole.
    let fresh = Tsdb::new();
    let tight = Limits { store_series: 20, ..full };
    let r = scrape(&client, &t(&url, 2000), &fresh, &mut TargetState::default(), tight, 1_000).await;
    assert!(matches!(r.error, Some(ScrapeError::StoreSeriesLimit { new: 60, limit: 20, .. })), "{r:?}");
}
