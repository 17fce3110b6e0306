//! Scrape-target discovery: every running replica of every App with `spec.metrics`, as Prometheus http_sd
//! groups, and per-replica process metrics read from /proc without the app's help.

use std::collections::BTreeMap;
use std::fmt::Write;

use capstan_engine::{AppRuntime, ObservedReplica, ReplicaState};
use capstan_model::{App, ObjectKey, PortRef, Resource};
use capstan_runtime_local::LocalRuntime;
use capstan_store::{Store, StoreError};
use serde::Serialize;

/// One Prometheus http_sd target group.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct TargetGroup {
    pub targets: Vec<String>,
    pub labels: BTreeMap<String, String>,
}

/// Every App; a listing that fails is an error, never "no Apps" (which would drop every target).
fn apps(store: &Store) -> Result<Vec<App>, StoreError> {
    Ok(store
        .list("App", None)?
        .into_iter()
        .filter_map(|v| match Resource::from_value(v) {
            Ok(Resource::App(a)) => Some(a),
            _ => None,
        })
        .collect())
}

/// The port a replica serves metrics on.
pub fn metrics_port(app: &App, ports: &BTreeMap<String, u16>) -> Option<u16> {
    let m = app.spec.metrics.as_ref()?;
    match &m.port {
        Some(PortRef::Number(n)) => Some(*n),
        Some(PortRef::Name(name)) => ports.get(name).copied(),
        None => app.spec.ports.first().and_then(|p| ports.get(&p.name).copied()),
    }
}

/// The scrape targets of one App: one group per running replica, labelled namespace, app, replica and revision.
pub fn app_targets(app: &App, observed: &[ObservedReplica]) -> Vec<TargetGroup> {
    let Some(m) = &app.spec.metrics else { return Vec::new() };
    observed
        .iter()
        .filter(|r| r.state == ReplicaState::Running)
        .filter_map(|r| {
            let port = metrics_port(app, &r.ports)?;
            let labels = BTreeMap::from([
                ("namespace".to_string(), app.metadata.namespace().to_string()),
                ("app".to_string(), app.metadata.name.clone()),
                ("replica".to_string(), format!("{}-{}", app.metadata.name, r.ordinal)),
                ("revision".to_string(), r.revision.clone()),
                ("__metrics_path__".to_string(), m.path.clone()),
                ("__scheme__".to_string(), m.scheme.clone()),
                ("__scrape_interval__".to_string(), m.interval.clone()),
                ("__scrape_timeout__".to_string(), m.effective_timeout()),
            ]);
            Some(TargetGroup { targets: vec![format!("127.0.0.1:{port}")], labels })
        })
        .collect()
}

/// Every scrape target on this machine.
pub fn targets(store: &Store, runtime: &LocalRuntime) -> Result<Vec<TargetGroup>, StoreError> {
    Ok(apps(store)?
        .iter()
        .flat_map(|a| {
            let key = ObjectKey::new("App", a.metadata.namespace(), &a.metadata.name);
            app_targets(a, &runtime.observe(&key))
        })
        .collect())
}

/// CPU seconds, resident bytes and open descriptors of a process, from /proc.
fn proc_stats(pid: u32) -> Option<(f64, u64, u64)> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // Fields after the command name (which may hold spaces): state is field 3, utime 14, stime 15.
    let after = stat.rsplit_once(')')?.1;
    let f: Vec<&str> = after.split_whitespace().collect();
    let ticks = nix::unistd::sysconf(nix::unistd::SysconfVar::CLK_TCK).ok()??.max(1) as f64;
    let cpu = (f.get(11)?.parse::<u64>().ok()? + f.get(12)?.parse::<u64>().ok()?) as f64 / ticks;
    let statm = std::fs::read_to_string(format!("/proc/{pid}/statm")).ok()?;
    let pages: u64 = statm.split_whitespace().nth(1)?.parse().ok()?;
    let page = nix::unistd::sysconf(nix::unistd::SysconfVar::PAGE_SIZE).ok()??.max(1) as u64;
    let fds = std::fs::read_dir(format!("/proc/{pid}/fd")).map(|d| d.count() as u64).unwrap_or(0);
    Some((cpu, pages * page, fds))
}

/// Per-replica process metrics in the Prometheus text format, for Capstan's own `/metrics`.
/// A read that fails is an error: a page without the series would read as objects gone.
pub fn replica_metrics(store: &Store, runtime: &LocalRuntime) -> Result<String, StoreError> {
    let mut cpu = String::new();
    let mut rss = String::new();
    let mut fds = String::new();
    let mut restarts = String::new();
    let mut ready = String::new();
    for a in apps(store)? {
        let key = ObjectKey::new("App", a.metadata.namespace(), &a.metadata.name);
        for r in runtime.observe(&key) {
            let labels =
                format!("namespace=\"{}\",app=\"{}\",replica=\"{}-{}\"", key.namespace, key.name, key.name, r.ordinal);
            let _ = writeln!(restarts, "capstan_replica_restarts_total{{{labels}}} {}", r.restarts);
            let _ = writeln!(ready, "capstan_replica_ready{{{labels}}} {}", u8::from(r.ready));
            let running = r.pid.filter(|_| r.state == ReplicaState::Running);
            if let Some((c, m, f)) = running.and_then(proc_stats) {
                let _ = writeln!(cpu, "capstan_replica_cpu_seconds_total{{{labels}}} {c}");
                let _ = writeln!(rss, "capstan_replica_resident_memory_bytes{{{labels}}} {m}");
                let _ = writeln!(fds, "capstan_replica_open_fds{{{labels}}} {f}");
            }
        }
    }
    // Object health for the built-in platform rules.
    let mut object_ready = String::new();
    let mut rollout_failed = String::new();
    for kind in ["Source", "Sync", "Database", "App"] {
        for v in store.list(kind, None)? {
            let ns = v["metadata"]["namespace"].as_str().unwrap_or("default");
            let name = v["metadata"]["name"].as_str().unwrap_or("");
            let ready = v["status"]["conditions"]
                .as_array()
                .and_then(|c| c.iter().find(|c| c["type"] == "Ready"))
                .map(|c| c["status"] == "True");
            if let Some(r) = ready {
                let _ = writeln!(
                    object_ready,
                    "capstan_object_ready{{kind=\"{kind}\",namespace=\"{ns}\",name=\"{name}\"}} {}",
                    u8::from(r)
                );
            }
            if kind == "App" {
                let phase = v["status"]["rollout"]["phase"].as_str().unwrap_or("");
                let failed = matches!(phase, "Failed" | "RolledBack");
                let _ = writeln!(
                    rollout_failed,
                    "capstan_app_rollout_failed{{namespace=\"{ns}\",app=\"{name}\"}} {}",
                    u8::from(failed)
                );
            }
        }
    }
    let (expiry, renewal, cert_ready, issuance_failed) = certificate_metrics(store)?;
    let mut out = String::new();
    for (name, kind, help, body) in [
        (
            "certmanager_certificate_expiration_timestamp_seconds",
            "gauge",
            "The date after which the certificate expires, in seconds since the epoch (cert-manager's metric).",
            expiry,
        ),
        (
            "certmanager_certificate_renewal_timestamp_seconds",
            "gauge",
            "The date at which the certificate is renewed, in seconds since the epoch (cert-manager's metric).",
            renewal,
        ),
        (
            "certmanager_certificate_ready_status",
            "gauge",
            "The status of the certificate's Ready condition, one series per value (cert-manager's metric).",
            cert_ready,
        ),
        (
            "capstan_certificate_issuance_failed",
            "gauge",
            "1 when the certificate's last issuance failed (failedIssuanceAttempts above 0).",
            issuance_failed,
        ),
        ("capstan_object_ready", "gauge", "1 when the object's Ready condition is True, 0 when False.", object_ready),
        (
            "capstan_app_rollout_failed",
            "gauge",
            "1 when the App's last rollout failed or was rolled back.",
            rollout_failed,
        ),
        ("capstan_replica_cpu_seconds_total", "counter", "CPU time of the replica's main process.", cpu),
        ("capstan_replica_resident_memory_bytes", "gauge", "Resident memory of the replica's main process.", rss),
        ("capstan_replica_open_fds", "gauge", "Open file descriptors of the replica's main process.", fds),
        ("capstan_replica_restarts_total", "counter", "Restarts of the replica counted for the user.", restarts),
        ("capstan_replica_ready", "gauge", "1 when the replica is Ready.", ready),
    ] {
        if !body.is_empty() {
            let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} {kind}");
            out.push_str(&body);
        }
    }
    Ok(out)
}

/// The Certificates' series, labelled as cert-manager labels them: expiry, renewal, Ready, and a failed last
/// issuance.
fn certificate_metrics(store: &Store) -> Result<(String, String, String, String), StoreError> {
    let (mut expiry, mut renewal, mut ready, mut failed) = (String::new(), String::new(), String::new(), String::new());
    let seconds = |v: &serde_json::Value| {
        v.as_str().and_then(|t| chrono::DateTime::parse_from_rfc3339(t).ok()).map(|t| t.timestamp())
    };
    for v in store.list("Certificate", None)? {
        let r = &v["spec"]["issuerRef"];
        // Label values as the exposition format escapes them: a quote or a newline in a name must not end the
        // series (or add one).
        let esc = |v: &serde_json::Value, default: &str| {
            v.as_str().unwrap_or(default).replace('\\', "\\\\").replace('"', "\\\"").replace('\n', "\\n")
        };
        let labels = format!(
            "name=\"{}\",namespace=\"{}\",issuer_name=\"{}\",issuer_kind=\"{}\",issuer_group=\"{}\"",
            esc(&v["metadata"]["name"], ""),
            esc(&v["metadata"]["namespace"], "default"),
            esc(&r["name"], ""),
            esc(&r["kind"], "Issuer"),
            esc(&r["group"], "cert-manager.io"),
        );
        let st = &v["status"];
        if let Some(t) = seconds(&st["notAfter"]) {
            let _ = writeln!(expiry, "certmanager_certificate_expiration_timestamp_seconds{{{labels}}} {t}");
        }
        if let Some(t) = seconds(&st["renewalTime"]) {
            let _ = writeln!(renewal, "certmanager_certificate_renewal_timestamp_seconds{{{labels}}} {t}");
        }
        let status = st["conditions"]
            .as_array()
            .and_then(|c| c.iter().find(|c| c["type"] == "Ready"))
            .and_then(|c| c["status"].as_str())
            .unwrap_or("Unknown");
        for value in ["True", "False", "Unknown"] {
            let on = u8::from(status == value);
            let _ = writeln!(ready, "certmanager_certificate_ready_status{{{labels},condition=\"{value}\"}} {on}");
        }
        let failing = st["failedIssuanceAttempts"].as_u64().unwrap_or(0) > 0;
        let _ = writeln!(failed, "capstan_certificate_issuance_failed{{{labels}}} {}", u8::from(failing));
    }
    Ok((expiry, renewal, ready, failed))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_group_per_running_replica_with_prometheus_labels() {
        let yaml = "apiVersion: capstan.dev/v1alpha1\nkind: App\nmetadata: {name: web}\nspec:\n  replicas: 2\n  run: {command: [x]}\n  ports: [{name: http}, {name: admin}]\n  metrics: {port: admin, interval: 30s}\n";
        let Resource::App(app) = capstan_model::parse_manifests("t", yaml).unwrap().remove(0).resource else {
            panic!("expected an App")
        };
        let mut r0 = ObservedReplica::new(0, "abc");
        r0.ports = BTreeMap::from([("http".to_string(), 8001), ("admin".to_string(), 9001)]);
        let mut r1 = ObservedReplica::new(1, "abc");
        r1.state = ReplicaState::Exited;
        let groups = app_targets(&app, &[r0, r1]);
        assert_eq!(groups.len(), 1);
        assert_eq!(groups[0].targets, ["127.0.0.1:9001"]);
        assert_eq!(groups[0].labels["replica"], "web-0");
        assert_eq!(groups[0].labels["__metrics_path__"], "/metrics");
        assert_eq!(groups[0].labels["__scrape_interval__"], "30s");
    }

    #[test]
    fn proc_stats_of_this_process() {
        let (cpu, rss, fds) = proc_stats(std::process::id()).unwrap();
        assert!(cpu >= 0.0 && rss > 0 && fds > 0);
    }
}
