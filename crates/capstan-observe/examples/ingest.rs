//! Benchmark driver for `bench/monitoring.py`: Capstan's scraper and store exactly as `capstan up` runs them.
//!
//! `ingest URLS_FILE INTERVAL_S SECONDS`: scrapes every URL on the interval for the given time, then prints JSON
//! with the samples stored, active series, compressed bytes, and this process' CPU seconds and resident memory.
//! `query OPENMETRICS_FILE QUERY TIME_S ROUNDS`: loads the file's samples into a store, then times the query.
#![allow(clippy::unwrap_used, clippy::expect_used)] // a measuring tool: a failed step ends the run, saying which

use std::sync::Arc;
use std::time::{Duration, Instant};

use capstan_observe::promql::{now_ms, Engine};
use capstan_observe::scrape::{scrape, Limits, Target, TargetState};
use capstan_observe::tsdb::{Labels, Tsdb};

fn cpu_seconds() -> f64 {
    let stat = std::fs::read_to_string("/proc/self/stat").unwrap_or_default();
    let f: Vec<&str> = stat.rsplit_once(')').map(|x| x.1).unwrap_or("").split_whitespace().collect();
    let ticks: f64 =
        f.get(11).and_then(|x| x.parse().ok()).unwrap_or(0.0) + f.get(12).and_then(|x| x.parse().ok()).unwrap_or(0.0);
    ticks / 100.0
}

fn rss_bytes() -> u64 {
    let s = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    s.lines()
        .find(|l| l.starts_with("VmRSS:"))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|k| k.parse::<u64>().ok())
        .unwrap_or(0)
        * 1024
}

async fn ingest(urls_file: &str, interval: f64, seconds: f64) {
    let urls: Vec<String> =
        std::fs::read_to_string(urls_file).expect("urls file").lines().map(str::to_string).collect();
    let db = Arc::new(Tsdb::new());
    let client = reqwest::Client::builder().no_proxy().build().expect("client");
    let rss_before = rss_bytes();
    let mut tasks = Vec::new();
    let stop_at = tokio::time::Instant::now() + Duration::from_secs_f64(seconds);
    let warm_until = tokio::time::Instant::now() + Duration::from_secs_f64(interval * 2.0);
    let cpu_at_warm = Arc::new(std::sync::Mutex::new(None::<(f64, u64)>));
    for (i, url) in urls.into_iter().enumerate() {
        let db = db.clone();
        let client = client.clone();
        let target = Target {
            url: url.clone(),
            labels: Labels::new([("job", "bench"), ("instance", url.as_str())]),
            interval: Duration::from_secs_f64(interval),
            timeout: Duration::from_secs_f64(interval.min(10.0)),
        };
        let offset = Duration::from_secs_f64(interval * i as f64 / 200.0 % interval);
        tasks.push(tokio::spawn(async move {
            tokio::time::sleep(offset).await;
            let mut tick = tokio::time::interval(target.interval);
            let mut st = TargetState::default();
            let mut failures = 0u64;
            while tokio::time::Instant::now() < stop_at {
                tick.tick().await;
                let r = scrape(&client, &target, &db, &mut st, Limits::default(), now_ms()).await;
                failures += u64::from(!r.up);
            }
            failures
        }));
    }
    // Samples and CPU are counted from the end of a warm-up of two intervals.
    {
        let cpu_at_warm = cpu_at_warm.clone();
        let db = db.clone();
        tokio::spawn(async move {
            tokio::time::sleep_until(warm_until).await;
            *cpu_at_warm.lock().expect("lock") = Some((cpu_seconds(), db.stats().samples_appended));
        });
    }
    let mut failures = 0;
    for t in tasks {
        failures += t.await.unwrap_or(0);
    }
    let st = db.stats();
    let (cpu0, samples0) = cpu_at_warm.lock().expect("lock").unwrap_or((0.0, 0));
    println!(
        "{}",
        serde_json::json!({
            "samples": st.samples_appended - samples0,
            "cpu_seconds": cpu_seconds() - cpu0,
            "series": st.series,
            "compressed_bytes": st.bytes,
            "rss_bytes": rss_bytes(),
            "rss_before_bytes": rss_before,
            "failed_scrapes": failures,
        })
    );
}

fn query(file: &str, q: &str, time_s: f64, rounds: usize) {
    let text = std::fs::read_to_string(file).expect("openmetrics file");
    let db = Tsdb::new();
    for line in text.lines().filter(|l| !l.starts_with('#')) {
        // name{labels} value timestamp, as the bench writes it (no spaces inside label values).
        let mut parts = line.rsplitn(3, ' ');
        let (Some(ts), Some(v), Some(series)) = (parts.next(), parts.next(), parts.next()) else { continue };
        let (name, rest) = series.split_once('{').unwrap_or((series, "}"));
        let mut pairs: Vec<(String, String)> = vec![("__name__".into(), name.into())];
        for kv in rest.trim_end_matches('}').split(',').filter(|x| !x.is_empty()) {
            if let Some((k, v)) = kv.split_once('=') {
                pairs.push((k.into(), v.trim_matches('"').into()));
            }
        }
        let t: f64 = ts.parse().expect("timestamp");
        let _ = db.append(&Labels::new(pairs), (t * 1000.0) as i64, v.parse().expect("value"));
    }
    let mut times = Vec::new();
    let mut result_len = 0;
    for _ in 0..rounds {
        let started = Instant::now();
        let r = Engine::new(&db).instant(q, (time_s * 1000.0) as i64).expect("query");
        times.push(started.elapsed().as_secs_f64());
        if let capstan_observe::promql::Value::Vector(v) = r {
            result_len = v.len();
        }
    }
    times.sort_by(|a, b| a.total_cmp(b));
    println!(
        "{}",
        serde_json::json!({ "median_seconds": times[times.len() / 2], "result_series": result_len, "series": db.stats().series })
    );
}

#[tokio::main]
async fn main() {
    let args: Vec<String> = std::env::args().collect();
    match args.get(1).map(String::as_str) {
        Some("ingest") if args.len() == 5 => {
            ingest(&args[2], args[3].parse().expect("interval"), args[4].parse().expect("seconds")).await
        }
        Some("query") if args.len() == 6 => {
            query(&args[2], &args[3], args[4].parse().expect("time"), args[5].parse().expect("rounds"))
        }
        _ => {
            eprintln!("usage: ingest URLS_FILE INTERVAL_S SECONDS | query OPENMETRICS_FILE QUERY TIME_S ROUNDS");
            std::process::exit(2);
        }
    }
}
