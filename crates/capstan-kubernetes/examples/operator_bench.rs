//! The operator's memory while reconciling many custom resources: a fake API server in this process holds N
//! Apps; `capstan operator` runs as a child process against it until every App has its objects and a status; then
//! its resident memory (now and peak) is read from /proc. Usage: operator_bench CAPSTAN_BINARY [N].
#![allow(clippy::unwrap_used, clippy::expect_used)] // a measuring tool: a failed step ends the run, saying which

use std::time::{Duration, Instant};

use capstan_fake_apiserver::FakeApiServer;
use serde_json::json;

fn proc_kib(pid: u32, field: &str) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap_or_default()
        .lines()
        .find(|l| l.starts_with(field))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|v| v.parse().ok())
        .unwrap_or(0)
}

fn cpu_seconds(pid: u32) -> f64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    let after = stat.rsplit_once(')').map(|(_, r)| r).unwrap_or("");
    let f: Vec<&str> = after.split_whitespace().collect();
    let ticks = |i: usize| f.get(i).and_then(|v| v.parse::<f64>().ok()).unwrap_or(0.0);
    (ticks(11) + ticks(12)) / 100.0
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut args = std::env::args().skip(1);
    let capstan = args.next().ok_or("usage: operator_bench CAPSTAN_BINARY [N]")?;
    let n: usize = args.next().map(|s| s.parse()).transpose()?.unwrap_or(1000);
    let fake = FakeApiServer::start().await?;
    for i in 0..n {
        let app = json!({
            "apiVersion": "capstan.dev/v1alpha1", "kind": "App",
            "metadata": {"name": format!("app-{i}"), "namespace": format!("team-{}", i % 10)},
            "spec": {
                "replicas": 3,
                "run": {"image": format!("registry.example.com/app:{i}")},
                "ports": [{"name": "http"}, {"name": "admin"}],
                "probes": {"readiness": {"http": {"path": "/status", "port": "http"}}},
                "expose": [{"port": 443, "sticky": {"cookie": {"name": "ROUTE"}}}],
                "volumes": [{"name": "data", "scope": "replica", "env": "DATA_DIR", "size": "1Gi"}],
                "metrics": {"port": "admin"}
            }
        });
        if fake.apply_object("kubectl", "capstan.dev", "v1alpha1", "apps", &app) >= 300 {
            return Err(format!("the fake refused app-{i}").into());
        }
    }
    let dir = tempfile::tempdir()?;
    let kubeconfig = dir.path().join("kubeconfig");
    std::fs::write(&kubeconfig, fake.kubeconfig("bench"))?;
    let started = Instant::now();
    let mut child = std::process::Command::new(&capstan)
        .args(["operator", "--probe-address", "127.0.0.1:0", "--namespace", "capstan-system", "--identity", "bench"])
        .arg("--kubeconfig")
        .arg(&kubeconfig)
        .env("RUST_LOG", "warn")
        .stderr(std::process::Stdio::null())
        .spawn()?;
    let pid = child.id();
    let deadline = Instant::now() + Duration::from_secs(600);
    let mut peak_seen = 0;
    let done = loop {
        let apps = fake.list("capstan.dev", "apps");
        let with_status = apps.iter().filter(|a| a["status"]["conditions"].is_array()).count();
        peak_seen = peak_seen.max(proc_kib(pid, "VmRSS:"));
        if with_status == n {
            break true;
        }
        if Instant::now() > deadline || child.try_wait()?.is_some() {
            break false;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    let took = started.elapsed();
    if !done {
        let _ = child.kill();
        return Err("the operator did not reconcile every App in 10 minutes".into());
    }
    // Let the watch events of its own writes settle, then read memory in the steady state.
    tokio::time::sleep(Duration::from_secs(3)).await;
    let rss = proc_kib(pid, "VmRSS:");
    let hwm = proc_kib(pid, "VmHWM:");
    let cpu = cpu_seconds(pid);
    let objects = fake.len();
    let _ = child.kill();
    let _ = child.wait();
    println!(
        "{{\"apps\": {n}, \"objects_in_cluster\": {objects}, \"seconds_to_reconcile_all\": {:.2}, \"cpu_seconds\": {cpu:.2}, \"rss_kib\": {rss}, \"peak_rss_kib\": {hwm}}}",
        took.as_secs_f64()
    );
    Ok(())
}
