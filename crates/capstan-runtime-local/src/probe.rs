//! Startup, readiness and liveness probes (http, tcp, exec) with Kubernetes' thresholds and timing.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use capstan_model::{PortRef, Probe, Probes};
use http_body_util::Empty;
use hyper::body::Bytes;
use tokio::sync::watch;
use tokio::time::{sleep, timeout, Instant};

/// Where probes point: the replica's ports and environment.
#[derive(Debug, Clone)]
pub struct ProbeTarget {
    pub ports: BTreeMap<String, u16>,
    pub env: Vec<(String, String)>,
    pub cwd: PathBuf,
}

impl ProbeTarget {
    fn port(&self, p: &PortRef) -> Result<u16, ProbeError> {
        match p {
            PortRef::Number(n) => Ok(*n),
            PortRef::Name(name) => {
                self.ports.get(name).copied().ok_or_else(|| ProbeError::NoSuchPort { name: name.clone() })
            }
        }
    }
}

/// Why one probe attempt failed.
#[derive(Debug, thiserror::Error)]
pub enum ProbeError {
    /// The probe names a port the replica does not have.
    #[error("no port named `{name}`")]
    NoSuchPort { name: String },
    /// An http probe could not connect.
    #[error("GET http://127.0.0.1:{port}{path}: {source}")]
    HttpConnect { port: u16, path: String, source: std::io::Error },
    /// An http probe connected, but the HTTP exchange failed.
    #[error("GET http://127.0.0.1:{port}{path}: {source}")]
    Http { port: u16, path: String, source: hyper::Error },
    /// The request could not be built (a header the probe names is not valid).
    #[error("{0}")]
    Request(hyper::http::Error),
    /// An http probe was answered with a status outside 200–399.
    #[error("GET http://127.0.0.1:{port}{path} returned {code}")]
    Status { port: u16, path: String, code: u16 },
    #[error("tcp 127.0.0.1:{port}: {source}")]
    Tcp { port: u16, source: std::io::Error },
    #[error("empty exec command")]
    EmptyExec,
    /// An exec probe's command could not be run.
    #[error("exec {program}: {source}")]
    ExecStart { program: String, source: std::io::Error },
    /// An exec probe's command ran and did not succeed.
    #[error("exec {program}: {status}")]
    ExecFailed { program: String, status: std::process::ExitStatus },
    #[error("probe has no handler")]
    NoHandler,
    #[error("timed out after {secs}s")]
    TimedOut { secs: u64 },
}

/// What the probes concluded; sent on every change.
#[derive(Debug, Clone, PartialEq)]
pub enum ProbeEvent {
    /// Readiness changed; the message says why when not ready.
    Ready(bool, Option<String>),
    /// The startup or liveness probe failed past its threshold.
    Unhealthy(String),
}

async fn http_get(port: u16, path: &str, headers: &BTreeMap<String, String>) -> Result<(), ProbeError> {
    let stream = tokio::net::TcpStream::connect(("127.0.0.1", port))
        .await
        .map_err(|source| ProbeError::HttpConnect { port, path: path.to_string(), source })?;
    let io = hyper_util::rt::TokioIo::new(stream);
    let (mut sender, conn) = hyper::client::conn::http1::handshake::<_, Empty<Bytes>>(io)
        .await
        .map_err(|source| ProbeError::Http { port, path: path.to_string(), source })?;
    let conn_task = tokio::spawn(conn);
    let mut req =
        hyper::Request::get(path).header("host", format!("127.0.0.1:{port}")).header("user-agent", "capstan-probe/1");
    for (k, v) in headers {
        req = req.header(k.as_str(), v.as_str());
    }
    let req = req.body(Empty::new()).map_err(ProbeError::Request)?;
    let res = sender.send_request(req).await;
    conn_task.abort();
    let res = res.map_err(|source| ProbeError::Http { port, path: path.to_string(), source })?;
    let code = res.status().as_u16();
    if (200..400).contains(&code) {
        Ok(())
    } else {
        Err(ProbeError::Status { port, path: path.to_string(), code })
    }
}

/// Runs one probe attempt.
pub async fn check(p: &Probe, t: &ProbeTarget) -> Result<(), ProbeError> {
    let limit = Duration::from_secs(u64::from(p.timeout_seconds.max(1)));
    let attempt = async {
        if let Some(h) = &p.http {
            return http_get(t.port(&h.port)?, &h.path, &h.headers).await;
        }
        if let Some(tcp) = &p.tcp {
            let port = t.port(&tcp.port)?;
            return tokio::net::TcpStream::connect(("127.0.0.1", port))
                .await
                .map(drop)
                .map_err(|source| ProbeError::Tcp { port, source });
        }
        if let Some(e) = &p.exec {
            let Some((prog, args)) = e.command.split_first() else {
                return Err(ProbeError::EmptyExec);
            };
            let mut cmd = tokio::process::Command::new(prog);
            cmd.args(args)
                .env_clear()
                .envs(t.env.iter().cloned())
                .current_dir(&t.cwd)
                .stdin(std::process::Stdio::null())
                .stdout(std::process::Stdio::null())
                .stderr(std::process::Stdio::null())
                .kill_on_drop(true);
            let status =
                cmd.status().await.map_err(|source| ProbeError::ExecStart { program: prog.clone(), source })?;
            return if status.success() {
                Ok(())
            } else {
                Err(ProbeError::ExecFailed { program: prog.clone(), status })
            };
        }
        Err(ProbeError::NoHandler)
    };
    match timeout(limit, attempt).await {
        Ok(r) => r,
        Err(_) => Err(ProbeError::TimedOut { secs: limit.as_secs() }),
    }
}

struct Counter {
    successes: u32,
    failures: u32,
}

impl Counter {
    fn record(&mut self, ok: bool) {
        if ok {
            self.successes += 1;
            self.failures = 0;
        } else {
            self.failures += 1;
            self.successes = 0;
        }
    }
}

fn period(p: &Probe) -> Duration {
    Duration::from_secs(u64::from(p.period_seconds.max(1)))
}

/// Runs a replica's probes until `stop` fires, reporting through `report`.
///
/// The startup probe gates the others; without a readiness probe the replica is ready once started.
pub async fn run(
    probes: Probes,
    target: ProbeTarget,
    report: Arc<dyn Fn(ProbeEvent) + Send + Sync>,
    mut stop: watch::Receiver<bool>,
) {
    let started_at = Instant::now();
    let stopped = |stop: &watch::Receiver<bool>| *stop.borrow();
    macro_rules! sleep_or_stop {
        ($d:expr) => {
            tokio::select! {
                _ = sleep($d) => {}
                _ = stop.changed() => return,
            }
        };
    }

    if let Some(sp) = &probes.startup {
        sleep_or_stop!(Duration::from_secs(u64::from(sp.initial_delay_seconds)));
        let mut c = Counter { successes: 0, failures: 0 };
        loop {
            if stopped(&stop) {
                return;
            }
            let r = check(sp, &target).await;
            c.record(r.is_ok());
            match r {
                Ok(()) => break,
                Err(e) if c.failures >= sp.failure_threshold => {
                    report(ProbeEvent::Unhealthy(format!("startup probe failed {} times: {e}", c.failures)));
                    return;
                }
                Err(_) => {}
            }
            sleep_or_stop!(period(sp));
        }
    }

    let Some(readiness) = probes.readiness.clone() else {
        report(ProbeEvent::Ready(true, None));
        if let Some(lp) = probes.liveness.clone() {
            liveness_loop(lp, &target, &report, stop, started_at).await;
        }
        return;
    };

    let mut ready = false;
    let mut warmup = Some(Duration::from_millis(50));
    let mut rc = Counter { successes: 0, failures: 0 };
    let mut lc = Counter { successes: 0, failures: 0 };
    let mut next_ready = started_at + Duration::from_secs(u64::from(readiness.initial_delay_seconds));
    let mut next_live =
        probes.liveness.as_ref().map(|l| started_at + Duration::from_secs(u64::from(l.initial_delay_seconds)));
    loop {
        let wake = next_live.map_or(next_ready, |l| l.min(next_ready));
        tokio::select! {
            _ = tokio::time::sleep_until(wake) => {}
            _ = stop.changed() => return,
        }
        let now = Instant::now();
        if now >= next_ready {
            let r = check(&readiness, &target).await;
            rc.record(r.is_ok());
            if !ready && rc.successes >= readiness.success_threshold {
                ready = true;
                report(ProbeEvent::Ready(true, None));
            } else if ready && rc.failures >= readiness.failure_threshold {
                ready = false;
                report(ProbeEvent::Ready(false, r.err().map(|e| format!("readiness probe failed: {e}"))));
            } else if !ready && rc.failures == 1 {
                report(ProbeEvent::Ready(false, r.err().map(|e| format!("readiness probe failed: {e}"))));
            }
            // Until the first success, probe sooner (50 ms, doubling up to the period) so a replica is Ready as
            // soon as it serves; from then on the probe keeps Kubernetes' period exactly.
            let step = match warmup {
                Some(w) if !ready => {
                    warmup = (w * 2 < period(&readiness)).then_some(w * 2);
                    w
                }
                _ => {
                    warmup = None;
                    period(&readiness)
                }
            };
            next_ready = Instant::now() + step;
        }
        if let (Some(lp), Some(at)) = (&probes.liveness, next_live) {
            if now >= at {
                let r = check(lp, &target).await;
                lc.record(r.is_ok());
                if let Err(e) = r {
                    if lc.failures >= lp.failure_threshold {
                        report(ProbeEvent::Unhealthy(format!("liveness probe failed {} times: {e}", lc.failures)));
                        return;
                    }
                }
                next_live = Some(Instant::now() + period(lp));
            }
        }
        if stopped(&stop) {
            return;
        }
    }
}

async fn liveness_loop(
    lp: Probe,
    target: &ProbeTarget,
    report: &Arc<dyn Fn(ProbeEvent) + Send + Sync>,
    mut stop: watch::Receiver<bool>,
    started_at: Instant,
) {
    let mut c = Counter { successes: 0, failures: 0 };
    let mut next = started_at + Duration::from_secs(u64::from(lp.initial_delay_seconds));
    loop {
        tokio::select! {
            _ = tokio::time::sleep_until(next) => {}
            _ = stop.changed() => return,
        }
        let r = check(&lp, target).await;
        c.record(r.is_ok());
        if let Err(e) = r {
            if c.failures >= lp.failure_threshold {
                report(ProbeEvent::Unhealthy(format!("liveness probe failed {} times: {e}", c.failures)));
                return;
            }
        }
        next = Instant::now() + period(&lp);
    }
}
