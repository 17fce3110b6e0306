//! Scrape-target discovery against a real Prometheus (Debian's): pointed at `/sd/prometheus`, it scrapes every
//! replica with the labels Capstan gives, follows scaling, and scrapes Capstan's per-replica process metrics.

use std::process::{Command, Stdio};
use std::time::Duration;

use capstan_e2e::*;
use serde_json::Value;

const T: Duration = Duration::from_secs(60);

async fn prom_get(port: u16, path: &str) -> Option<Value> {
    let (code, body) = http_get(port, path).await?;
    (code == 200).then(|| serde_json::from_str(&body).ok()).flatten()
}

async fn up_targets(port: u16, app: &str) -> Vec<Value> {
    let Some(v) = prom_get(port, "/api/v1/targets?state=active").await else { return Vec::new() };
    v["data"]["activeTargets"]
        .as_array()
        .cloned()
        .unwrap_or_default()
        .into_iter()
        .filter(|t| t["labels"]["app"] == app && t["health"] == "up")
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_real_prometheus_scrapes_every_replica_it_finds_at_sd_prometheus() {
    if !heavy("Prometheus") {
        return;
    }
    let tp = TestPlane::start().await;
    let metrics = "  metrics: {port: http, interval: 1s, timeout: 1s}\n";
    tp.apply(&app_yaml("scraped", 2, &[], &format!("{READINESS}{metrics}")));
    eventually("scraped Ready", T, || async { ready(&tp.app("scraped").await).then_some(()) }).await;

    // Capstan's own answer first.
    let api = tp.plane().addr().port();
    let sd = prom_get(api, "/sd/prometheus").await.expect("http_sd json");
    assert_eq!(sd.as_array().map(Vec::len), Some(2), "{sd}");
    assert_eq!(sd[0]["labels"]["__metrics_path__"], "/metrics");

    let dir = tempfile::tempdir().expect("tempdir");
    let prom_port = std::net::TcpListener::bind("127.0.0.1:0").expect("bind").local_addr().expect("addr").port();
    let config = format!(
        "global: {{scrape_interval: 1s, evaluation_interval: 1s}}
scrape_configs:
  - job_name: capstan-apps
    http_sd_configs:
      - url: http://127.0.0.1:{api}/sd/prometheus
        refresh_interval: 1s
  - job_name: capstan
    static_configs:
      - targets: ['127.0.0.1:{api}']
"
    );
    std::fs::write(dir.path().join("prometheus.yml"), config).expect("config");
    let child = Command::new("/usr/bin/prometheus")
        .arg(format!("--config.file={}", dir.path().join("prometheus.yml").display()))
        .arg(format!("--storage.tsdb.path={}", dir.path().join("data").display()))
        .arg(format!("--web.listen-address=127.0.0.1:{prom_port}"))
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("prometheus starts (scripts/test.sh installs Debian's prometheus)");
    let _prom = Guarded(child);

    let targets = eventually("two replicas scraped", T, || async {
        let t = up_targets(prom_port, "scraped").await;
        (t.len() == 2).then_some(t)
    })
    .await;
    let mut replicas: Vec<String> =
        targets.iter().map(|t| t["labels"]["replica"].as_str().unwrap_or("").to_string()).collect();
    replicas.sort();
    assert_eq!(replicas, ["scraped-0", "scraped-1"]);
    assert_eq!(targets[0]["labels"]["namespace"], "default");
    assert!(targets[0]["labels"]["revision"].as_str().is_some_and(|r| !r.is_empty()));
    assert_eq!(targets[0]["scrapeInterval"], "1s");

    // The series carry the labels, and each replica answered for itself.
    let q = eventually("testapp_info from both replicas", T, || async {
        let v = prom_get(prom_port, "/api/v1/query?query=testapp_info").await?;
        let r = v["data"]["result"].as_array()?.clone();
        (r.len() == 2).then_some(r)
    })
    .await;
    for s in &q {
        assert_eq!(s["metric"]["served_by"], s["metric"]["replica"], "{s}");
    }

    // Targets follow scaling.
    tp.apply(&app_yaml("scraped", 3, &[], &format!("{READINESS}{metrics}")));
    eventually("three replicas scraped", T, || async {
        (up_targets(prom_port, "scraped").await.len() == 3).then_some(())
    })
    .await;

    // Capstan's own metrics carry per-replica process figures.
    let m = eventually("process metrics scraped from Capstan", T, || async {
        let v =
            prom_get(prom_port, "/api/v1/query?query=capstan_replica_resident_memory_bytes%7Bapp%3D%22scraped%22%7D")
                .await?;
        let r = v["data"]["result"].as_array()?.clone();
        (r.len() == 3).then_some(r)
    })
    .await;
    for s in &m {
        let bytes: f64 = s["value"][1].as_str().and_then(|x| x.parse().ok()).unwrap_or(0.0);
        assert!(bytes > 1_000_000.0, "a replica holds more than a megabyte: {s}");
    }
    tp.stop().await;
}
