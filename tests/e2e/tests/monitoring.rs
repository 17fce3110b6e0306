//! Embedded monitoring: Capstan scrapes every replica (and a real prometheus-node-exporter run as an App) into
//! its own store and answers the Prometheus HTTP API; and on the same data, Capstan's PromQL gives the same
//! answers as a real Prometheus (Debian's 2.42) for a broad set of queries.

use std::collections::BTreeMap;
use std::process::{Command, Stdio};
use std::time::Duration;

use capstan_e2e::*;
use capstan_observe::promql::{Engine, Value as PromValue};
use capstan_observe::tsdb::{Labels, Tsdb};
use serde_json::Value;

const T: Duration = Duration::from_secs(60);

async fn result(tp: &TestPlane, q: &str) -> Vec<Value> {
    query_result(tp, q).await
}

fn value(s: &Value) -> f64 {
    s["value"][1].as_str().and_then(|x| x.parse().ok()).unwrap_or(f64::NAN)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn capstan_scrapes_every_replica_and_a_node_exporter_and_answers_promql() {
    if !heavy("prometheus-node-exporter") {
        return;
    }
    let tp = TestPlane::start().await;
    let metrics = "  metrics: {port: http, interval: 1s, timeout: 1s}\n";
    tp.apply(&app_yaml("scraped", 2, &[], &format!("{READINESS}{metrics}")));
    tp.apply(
        "apiVersion: capstan.dev/v1alpha1
kind: App
metadata:
  name: node
spec:
  run:
    command: [/bin/sh, -c, 'exec /usr/bin/prometheus-node-exporter --web.listen-address=127.0.0.1:$PORT --collector.disable-defaults --collector.cpu --collector.meminfo --collector.loadavg']
  ports: [{name: http}]
  metrics: {port: http, interval: 1s, timeout: 1s}
",
    );
    eventually("scraped Ready", T, || async { ready(&tp.app("scraped").await).then_some(()) }).await;

    // Every replica, and the node exporter, is a target that is up, with its labels.
    let up = eventually("three app targets up", T, || async {
        let r = result(&tp, "up{job=\"capstan-apps\"} == 1").await;
        (r.len() == 3).then_some(r)
    })
    .await;
    let mut replicas: Vec<&str> = up.iter().filter_map(|s| s["metric"]["replica"].as_str()).collect();
    replicas.sort();
    assert_eq!(replicas, ["node-0", "scraped-0", "scraped-1"]);
    assert!(up.iter().all(|s| s["metric"]["namespace"] == "default" && s["metric"]["revision"].is_string()));

    // Each replica answered for itself.
    let info = eventually("testapp_info from both replicas", T, || async {
        let r = result(&tp, "testapp_info").await;
        (r.len() == 2).then_some(r)
    })
    .await;
    for s in &info {
        assert_eq!(s["metric"]["served_by"], s["metric"]["replica"], "{s}");
    }

    // The real node exporter's series, and a rate over them.
    let mem = eventually("node_memory_MemTotal_bytes", T, || async {
        let r = result(&tp, "node_memory_MemTotal_bytes").await;
        (r.len() == 1).then_some(r)
    })
    .await;
    assert!(value(&mem[0]) > 1e8, "{mem:?}");
    eventually("a CPU rate from the node exporter", T, || async {
        let r = result(&tp, "sum by (mode) (rate(node_cpu_seconds_total[10s]))").await;
        r.iter().any(|s| s["metric"]["mode"] == "idle" && value(s) > 0.0).then_some(())
    })
    .await;
    let scraped = result(&tp, "scrape_samples_scraped{app=\"node\"}").await;
    assert!(scraped.first().is_some_and(|s| value(s) > 20.0), "{scraped:?}");
    // Capstan scrapes itself too.
    eventually("capstan's own metrics", T, || async {
        let r = result(&tp, "capstan_replica_ready{app=\"scraped\"}").await;
        (r.len() == 2).then_some(())
    })
    .await;

    // Every target's last scrape, as Prometheus' /api/v1/targets shows it.
    let (_, targets) = capstan_query(&tp, "/api/v1/targets").await.expect("targets");
    let active = targets["data"]["activeTargets"].as_array().cloned().unwrap_or_default();
    let node = active.iter().find(|t| t["labels"]["app"] == "node").expect("the node exporter's target");
    assert_eq!(node["health"], "up", "{node}");
    assert_eq!(node["lastError"], "");
    assert!(node["scrapeUrl"].as_str().is_some_and(|u| u.ends_with("/metrics")), "{node}");
    assert!(active.iter().any(|t| t["labels"]["job"] == "capstan"), "Capstan's own target: {active:?}");

    // The metadata endpoints Grafana uses.
    let (code, labels) = capstan_query(&tp, "/api/v1/labels").await.expect("labels");
    assert_eq!(code, 200);
    assert!(labels["data"].as_array().is_some_and(|l| l.iter().any(|x| x == "replica")), "{labels}");
    let (_, apps) = capstan_query(&tp, "/api/v1/label/app/values").await.expect("values");
    assert!(apps["data"].as_array().is_some_and(|l| l.contains(&"node".into()) && l.contains(&"scraped".into())));
    let (_, series) =
        capstan_query(&tp, &format!("/api/v1/series?match[]={}", enc("up{app=\"scraped\"}"))).await.expect("series");
    assert_eq!(series["data"].as_array().map(Vec::len), Some(2), "{series}");
    let now = capstan_observe::promql::now_ms() as f64 / 1000.0;
    let (code, range) = capstan_query(
        &tp,
        &format!("/api/v1/query_range?query={}&start={}&end={now}&step=1", enc("sum(up{app=\"scraped\"})"), now - 5.0),
    )
    .await
    .expect("range");
    assert_eq!(code, 200);
    assert_eq!(range["data"]["resultType"], "matrix");

    // Bad PromQL: 400, bad_data, and the position.
    let (code, err) =
        capstan_query(&tp, &format!("/api/v1/query?query={}", enc("sum(rate(up[1m]) by (job"))).await.expect("error");
    assert_eq!(code, 400);
    assert_eq!(err["errorType"], "bad_data");
    assert!(err["error"].as_str().is_some_and(|e| e.starts_with("parse error at char ")), "{err}");

    // Targets follow scaling: the replica that went away is marked stale and leaves the instant vector.
    tp.apply(&app_yaml("scraped", 1, &[], &format!("{READINESS}{metrics}")));
    eventually("one scraped target left", T, || async {
        (result(&tp, "up{app=\"scraped\"}").await.len() == 1).then_some(())
    })
    .await;

    // The data survives a restart of Capstan.
    let before = eventually("a few scrapes of the node exporter", T, || async {
        let n = result(&tp, "count_over_time(up{app=\"node\"}[10m])").await.first().map(value)?;
        (n >= 3.0).then_some(n)
    })
    .await;
    let tp = tp.restart().await;
    let after = result(&tp, "count_over_time(up{app=\"node\"}[10m])").await;
    assert!(after.first().is_some_and(|s| value(s) >= before), "before {before}, after {after:?}");
    tp.stop().await;
}

/// Deterministic test data: counters (with a reset), gauges and histogram buckets, every 15 s for 80 minutes,
/// ending 30 minutes ago. Written both as an OpenMetrics file (for promtool's backfill) and into a store.
fn dataset(end_s: i64) -> (String, Tsdb) {
    let db = Tsdb::new();
    let start = end_s - 80 * 60;
    let times: Vec<i64> = (start..=end_s).step_by(15).collect();
    let mut om = String::new();
    let mut rng = 0x2545_f491_4f6c_dd1du64;
    let mut next = move || {
        rng ^= rng << 13;
        rng ^= rng >> 7;
        rng ^= rng << 17;
        (rng % 1000) as f64 / 1000.0
    };
    let emit = |om: &mut String, labels: &[(&str, &str)], series: &[(i64, f64)]| {
        let l = Labels::new(labels.iter().copied());
        let body: Vec<String> =
            labels.iter().filter(|(k, _)| *k != "__name__").map(|(k, v)| format!("{k}=\"{v}\"")).collect();
        let name = l.name().unwrap_or_default().to_string();
        for (t, v) in series {
            om.push_str(&format!("{name}{{{}}} {v} {t}\n", body.join(",")));
            db.append(&l, t * 1000, *v).expect("append");
        }
    };
    om.push_str("# TYPE http_requests counter\n");
    for inst in ["a", "b", "c"] {
        for code in ["200", "500"] {
            let mut v = 0.0;
            let s: Vec<(i64, f64)> = times
                .iter()
                .enumerate()
                .map(|(i, t)| {
                    v += (next() * 20.0).round() * if code == "500" { 0.1 } else { 1.0 };
                    if inst == "b" && i == times.len() / 2 {
                        v = 3.0; // a restart of the process: the counter resets
                    }
                    (*t, v)
                })
                .collect();
            emit(
                &mut om,
                &[("__name__", "http_requests_total"), ("job", "api"), ("instance", inst), ("code", code)],
                &s,
            );
        }
    }
    om.push_str("# TYPE temperature gauge\n");
    for room in ["hall", "lab", "roof"] {
        let mut v = 20.0;
        let s: Vec<(i64, f64)> = times
            .iter()
            .map(|t| {
                v += next() - 0.5;
                (*t, (v * 100.0f64).round() / 100.0)
            })
            .collect();
        emit(&mut om, &[("__name__", "temperature"), ("room", room)], &s);
    }
    om.push_str("# TYPE rpc_duration_seconds_bucket unknown\n");
    let bounds = ["0.05", "0.1", "0.25", "0.5", "1", "+Inf"];
    for job in ["api", "web"] {
        let mut counts = [0.0f64; 6];
        let mut per_bucket: Vec<Vec<(i64, f64)>> = vec![Vec::new(); 6];
        for t in &times {
            let mut cum = 0.0;
            for (b, c) in counts.iter_mut().enumerate() {
                cum += (next() * 10.0).round();
                *c += cum;
                per_bucket[b].push((*t, *c));
            }
        }
        for (b, le) in bounds.iter().enumerate() {
            emit(&mut om, &[("__name__", "rpc_duration_seconds_bucket"), ("job", job), ("le", le)], &per_bucket[b]);
        }
    }
    om.push_str("# EOF\n");
    (om, db)
}

/// A result as comparable rows: labels and value, sorted.
fn rows_of_prometheus(data: &Value) -> Vec<(String, Vec<(i64, f64)>)> {
    let parse = |p: &Value| -> (i64, f64) {
        let t = (p[0].as_f64().unwrap_or(0.0) * 1000.0).round() as i64;
        let v = p[1].as_str().map(|s| capstan_observe::promql::parse_float(s).unwrap_or(f64::NAN)).unwrap_or(f64::NAN);
        (t, v)
    };
    let labels = |m: &Value| -> String {
        let map: BTreeMap<String, String> = m
            .as_object()
            .map(|o| o.iter().map(|(k, v)| (k.clone(), v.as_str().unwrap_or("").to_string())).collect())
            .unwrap_or_default();
        format!("{map:?}")
    };
    let mut rows: Vec<(String, Vec<(i64, f64)>)> = match data["resultType"].as_str() {
        Some("scalar") => vec![(String::new(), vec![parse(&data["result"])])],
        Some("vector") => data["result"]
            .as_array()
            .map(|r| r.iter().map(|s| (labels(&s["metric"]), vec![parse(&s["value"])])).collect())
            .unwrap_or_default(),
        Some("matrix") => data["result"]
            .as_array()
            .map(|r| {
                r.iter()
                    .map(|s| {
                        (
                            labels(&s["metric"]),
                            s["values"].as_array().map(|v| v.iter().map(parse).collect()).unwrap_or_default(),
                        )
                    })
                    .collect()
            })
            .unwrap_or_default(),
        _ => Vec::new(),
    };
    rows.sort_by(|a, b| a.0.cmp(&b.0));
    rows
}

fn rows_of_capstan(v: PromValue, t: i64) -> Vec<(String, Vec<(i64, f64)>)> {
    let labels = |l: &Labels| -> String {
        let map: BTreeMap<String, String> = l.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect();
        format!("{map:?}")
    };
    let mut rows: Vec<(String, Vec<(i64, f64)>)> = match v {
        PromValue::Scalar(x) => vec![(String::new(), vec![(t, x)])],
        PromValue::Vector(s) => s.iter().map(|s| (labels(&s.labels), vec![(t, s.v)])).collect(),
        PromValue::Matrix(m) => m.iter().map(|s| (labels(&s.labels), s.samples.clone())).collect(),
        PromValue::String(_) => Vec::new(),
    };
    rows.sort_by(|a, b| a.0.cmp(&b.0));
    rows
}

fn same(a: f64, b: f64) -> bool {
    (a.is_nan() && b.is_nan()) || a == b || (a - b).abs() <= 1e-9 * a.abs().max(b.abs()).max(1e-12)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn capstan_and_a_real_prometheus_give_the_same_promql_answers_on_the_same_data() {
    if !heavy("Prometheus and promtool") {
        return;
    }
    let now_s = capstan_observe::promql::now_ms() / 1000;
    let end_s = now_s - now_s % 60 - 30 * 60;
    let (om, db) = dataset(end_s);
    let dir = tempfile::tempdir().expect("tempdir");
    let file = dir.path().join("data.om");
    std::fs::write(&file, om).expect("write openmetrics");
    let blocks = dir.path().join("data");
    let out = Command::new("/usr/bin/promtool")
        .args(["tsdb", "create-blocks-from", "openmetrics"])
        .arg(&file)
        .arg(&blocks)
        .output()
        .expect("promtool runs (scripts/test.sh installs Debian's prometheus)");
    assert!(out.status.success(), "promtool: {}", String::from_utf8_lossy(&out.stderr));

    let port = std::net::TcpListener::bind("127.0.0.1:0").expect("bind").local_addr().expect("addr").port();
    std::fs::write(dir.path().join("prometheus.yml"), "global: {scrape_interval: 15s}\n").expect("config");
    let child = Command::new("/usr/bin/prometheus")
        .arg(format!("--config.file={}", dir.path().join("prometheus.yml").display()))
        .arg(format!("--storage.tsdb.path={}", blocks.display()))
        .arg(format!("--web.listen-address=127.0.0.1:{port}"))
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("prometheus starts");
    let _prom = Guarded(child);
    eventually("Prometheus has loaded the blocks", T, || async {
        let (code, body) = http_get(port, &format!("/api/v1/query?query=count(temperature)&time={end_s}")).await?;
        (code == 200 && body.contains("\"3\"")).then_some(())
    })
    .await;

    let queries = [
        "http_requests_total",
        "temperature{room!=\"lab\"}",
        "{__name__=~\"temp.*\", room=~\"h.*|r.*\"}",
        "rate(http_requests_total[5m])",
        "irate(http_requests_total[1m])",
        "increase(http_requests_total[10m])",
        "delta(temperature[10m])",
        "idelta(temperature[2m])",
        "sum by (job) (rate(http_requests_total[5m]))",
        "sum without (instance) (rate(http_requests_total[5m]))",
        "avg by (code) (http_requests_total)",
        "min(temperature)",
        "max by (instance) (http_requests_total)",
        "count(http_requests_total)",
        "count by (code) (http_requests_total > 100)",
        "topk(2, temperature)",
        "bottomk(1, rate(http_requests_total[5m]))",
        "stddev(temperature)",
        "stdvar by (job) (http_requests_total)",
        "quantile(0.9, temperature)",
        "group by (instance) (http_requests_total)",
        "avg_over_time(temperature[10m])",
        "min_over_time(temperature[10m])",
        "max_over_time(temperature[10m])",
        "sum_over_time(temperature[3m])",
        "count_over_time(temperature[10m])",
        "last_over_time(temperature[10m])",
        "quantile_over_time(0.75, temperature[15m])",
        "stddev_over_time(temperature[10m])",
        "changes(temperature[10m])",
        "resets(http_requests_total[80m])",
        "deriv(temperature[10m])",
        "predict_linear(temperature[10m], 600)",
        "histogram_quantile(0.9, sum by (le) (rate(rpc_duration_seconds_bucket[5m])))",
        "histogram_quantile(0.5, rate(rpc_duration_seconds_bucket[5m]))",
        "http_requests_total{code=\"500\"} / ignoring(code) http_requests_total{code=\"200\"}",
        "http_requests_total / on(instance, code) group_left sum by (instance, code) (http_requests_total)",
        "sum by (instance) (rate(http_requests_total{code=\"500\"}[5m])) / sum by (instance) (rate(http_requests_total[5m]))",
        "temperature > 20",
        "temperature > bool 20",
        "20 < temperature",
        "-temperature * 2 + 1",
        "temperature % 3 ^ 2",
        "http_requests_total and http_requests_total{code=\"500\"}",
        "http_requests_total{instance=\"a\"} or http_requests_total{instance=\"b\"}",
        "http_requests_total unless on(code) http_requests_total{code=\"200\"}",
        "abs(-temperature)",
        "ceil(temperature)",
        "round(temperature, 0.5)",
        "clamp(temperature, 19.5, 20.5)",
        "clamp_min(temperature, 20)",
        "sqrt(temperature)",
        "ln(temperature)",
        "exp(temperature / 10)",
        "label_replace(temperature, \"where\", \"room-$1\", \"room\", \"(.*)\")",
        "absent(nothing_here{job=\"x\"})",
        "absent(temperature)",
        "vector(3)",
        "scalar(sum(temperature))",
        "time()",
        "timestamp(temperature)",
        "temperature offset 5m",
        "rate(http_requests_total[5m] offset 10m)",
        "max_over_time(rate(http_requests_total[1m])[10m:1m])",
        "sort_desc(temperature)",
        "count_values(\"degrees\", round(temperature))",
        "2 * 3 - 1",
    ];
    // Times on the scrape grid, between samples, and near the edges of the data.
    let times = [end_s - 40 * 60, end_s - 20 * 60 + 7, end_s - 3, end_s + 2 * 60];
    let mut compared = 0;
    let mut answered = 0;
    let mut failures = Vec::new();
    for q in queries {
        for t in times {
            let Some((code, body)) = http_get(port, &format!("/api/v1/query?query={}&time={t}", enc(q))).await else {
                panic!("Prometheus did not answer {q}");
            };
            assert_eq!(code, 200, "Prometheus refused {q}: {body}");
            let theirs = rows_of_prometheus(&serde_json::from_str::<Value>(&body).expect("json")["data"]);
            let ours = match Engine::new(&db).instant(q, t * 1000) {
                Ok(v) => rows_of_capstan(v, t * 1000),
                Err(e) => {
                    failures.push(format!("{q} @ {t}: Capstan failed: {e}"));
                    continue;
                }
            };
            let equal = theirs.len() == ours.len()
                && theirs.iter().zip(&ours).all(|(a, b)| {
                    a.0 == b.0
                        && a.1.len() == b.1.len()
                        && a.1.iter().zip(&b.1).all(|(x, y)| x.0 == y.0 && same(x.1, y.1))
                });
            if !equal {
                failures.push(format!("{q} @ {t}:\n  prometheus {theirs:?}\n  capstan    {ours:?}"));
            }
            answered += usize::from(!theirs.is_empty());
            compared += 1;
        }
    }
    // Range queries over the whole data set, with a step that does not divide the scrape interval.
    for q in ["rate(http_requests_total[5m])", "sum by (job) (increase(http_requests_total[2m]))", "temperature"] {
        let (start, end, step) = (end_s - 70 * 60, end_s + 60, 37);
        let path = format!("/api/v1/query_range?query={}&start={start}&end={end}&step={step}", enc(q));
        let (code, body) = http_get(port, &path).await.expect("range answer");
        assert_eq!(code, 200, "{body}");
        let theirs = rows_of_prometheus(&serde_json::from_str::<Value>(&body).expect("json")["data"]);
        let ours =
            rows_of_capstan(Engine::new(&db).range(q, start * 1000, end * 1000, step * 1000).expect("range query"), 0);
        let equal = theirs.len() == ours.len()
            && theirs.iter().zip(&ours).all(|(a, b)| {
                a.0 == b.0 && a.1.len() == b.1.len() && a.1.iter().zip(&b.1).all(|(x, y)| x.0 == y.0 && same(x.1, y.1))
            });
        if !equal {
            failures.push(format!("range {q}: prometheus {} series, capstan {}", theirs.len(), ours.len()));
        }
        compared += 1;
    }
    assert!(failures.is_empty(), "{} of {compared} answers differ:\n{}", failures.len(), failures.join("\n"));
    assert_eq!(compared, queries.len() * times.len() + 3);
    // The comparison means something only if the answers hold data: all but the queries at the time past the
    // lookback window and `absent(temperature)` do.
    assert!(answered >= queries.len() * 3, "only {answered} of {compared} answers held data");
}

fn cli(tp: &TestPlane, args: &[&str]) -> std::process::Output {
    Command::new(bin("capstan-e2e-cli"))
        .args(args)
        .env("CAPSTAN_SERVER", tp.plane().url())
        .env("CAPSTAN_TOKEN", tp.plane().token())
        .output()
        .expect("cli runs")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_built_in_rule_catches_a_crash_loop_and_the_cli_handles_its_incident() {
    let tp = TestPlane::start().await;
    tp.apply(
        "apiVersion: capstan.dev/v1alpha1
kind: App
metadata: {name: crasher}
spec:
  run: {command: [/bin/sh, -c, 'sleep 0.3; exit 3']}
  restartBackoff: {initialSeconds: 0.5, maxSeconds: 1}
---
apiVersion: capstan.dev/v1alpha1
kind: EscalationPolicy
metadata: {name: platform}
spec:
  match: {source: capstan}
  groupBy: [alertname, app]
  levels: [{targets: [{command: {command: [/bin/true]}}], after: 1h}]
",
    );
    // Capstan scrapes its own /metrics every 15 s: the restarts counter rises between two scrapes.
    let alert = eventually("CapstanReplicaCrashLooping fires", Duration::from_secs(120), || async {
        let r = result(&tp, "ALERTS{alertname=\"CapstanReplicaCrashLooping\", alertstate=\"firing\"}").await;
        r.into_iter().next()
    })
    .await;
    assert_eq!(alert["metric"]["app"], "crasher");
    assert_eq!(alert["metric"]["severity"], "page");

    // The same incident through the CLI: listed, acknowledged once, resolved by hand.
    let id = eventually("an incident for it", T, || async {
        let out = cli(&tp, &["alerts", "-o", "json"]);
        let v: Value = serde_json::from_slice(&out.stdout).ok()?;
        v["items"].as_array()?.first()?["id"].as_str().map(str::to_string)
    })
    .await;
    let table = cli(&tp, &["alerts"]);
    let text = String::from_utf8_lossy(&table.stdout);
    assert!(text.starts_with("ID") && text.contains(&id) && text.contains("triggered"), "{text}");
    // The firing alerts are listed under the incidents, each with its incident.
    let alerts_part = text.split_once("\nALERT ").map(|(_, a)| a).expect("an alerts table");
    assert!(
        alerts_part
            .lines()
            .any(|l| l.starts_with("CapstanReplicaCrashLooping") && l.contains("firing") && l.contains(&id)),
        "{text}"
    );
    let ack = cli(&tp, &["ack", &id, "--by", "carol"]);
    assert!(ack.status.success(), "{}", String::from_utf8_lossy(&ack.stderr));
    assert_eq!(String::from_utf8_lossy(&ack.stdout).trim(), format!("incident {id} acknowledged by carol"));
    let again = cli(&tp, &["ack", &id]);
    assert_eq!(again.status.code(), Some(1), "acknowledging twice fails");
    assert!(String::from_utf8_lossy(&again.stderr).contains("already acknowledged"));
    let missing = cli(&tp, &["resolve", "inc-999"]);
    assert_eq!(missing.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&missing.stderr).contains("not found"));
    assert!(cli(&tp, &["resolve", &id]).status.success());
    let out = cli(&tp, &["alerts", "--all", "-o", "json"]);
    let v: Value = serde_json::from_slice(&out.stdout).expect("json");
    assert_eq!(v["items"][0]["state"], "resolved");

    // `capstan metrics query` prints the series as a table.
    let q = cli(&tp, &["metrics", "query", "capstan_replica_restarts_total{app=\"crasher\"} > 0"]);
    let text = String::from_utf8_lossy(&q.stdout);
    assert!(q.status.success() && text.contains("replica=crasher-0"), "{text}");
    let bad = cli(&tp, &["metrics", "query", "rate(up[5m"]);
    assert_eq!(bad.status.code(), Some(2), "bad PromQL is invalid input");
    assert!(String::from_utf8_lossy(&bad.stderr).contains("parse error at char"));
    tp.stop().await;
}

/// A firing alert that no EscalationPolicy matches has no incident, and `capstan alerts` still shows it, marked as
/// not escalated, as Prometheus' alerts page would.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_cli_lists_firing_alerts_that_no_policy_escalates() {
    let tp = TestPlane::start().await;
    tp.apply(
        "apiVersion: capstan.dev/v1alpha1
kind: AlertRule
metadata: {name: always}
spec:
  expr: vector(1) > 0
  interval: 1s
  labels: {team: nobody}
",
    );
    let text = eventually("the alert is listed", T, || async {
        let out = cli(&tp, &["alerts"]);
        let text = String::from_utf8_lossy(&out.stdout).to_string();
        text.contains("firing").then_some(text)
    })
    .await;
    assert!(text.starts_with("No open incidents."), "{text}");
    let row = text.lines().find(|l| l.starts_with("always")).unwrap_or_else(|| panic!("a row for the alert: {text}"));
    assert!(row.contains("team=nobody") && row.contains("not escalated"), "{row}");
    let out = cli(&tp, &["alerts", "-o", "json"]);
    let v: Value = serde_json::from_slice(&out.stdout).expect("json");
    assert_eq!(v["alerts"][0]["labels"]["alertname"], "always");
    assert_eq!(v["alerts"][0]["incident"], Value::Null);
    let rules = cli(&tp, &["get", "alertrules"]);
    let text = String::from_utf8_lossy(&rules.stdout);
    assert!(text.starts_with("NAME") && text.contains("HEALTH") && !text.contains("SUSPENDED"), "{text}");
    assert!(text.lines().any(|l| l.starts_with("always") && l.contains("ok") && l.contains("vector(1) > 0")), "{text}");
    tp.stop().await;
}
