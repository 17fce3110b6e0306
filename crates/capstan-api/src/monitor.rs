//! Embedded monitoring: every discovered replica and Capstan itself scraped into the time-series store, on each
//! target's own interval; targets that go away are marked stale; retention and snapshots run in the background.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use capstan_observe::scrape::{self, Limits, Target, TargetState};
use capstan_observe::tsdb::{Labels, Tsdb};
use tokio::sync::watch;
use tokio::task::JoinHandle;

use crate::plane::Shared;

/// How monitoring keeps its data.
#[derive(Debug, Clone)]
pub struct MonitorConfig {
    /// Samples older than this are dropped (Prometheus' `--storage.tsdb.retention.time`, default 15 days).
    pub retention: Duration,
    /// The most memory the store may use — compressed samples plus each series' labels and index entries; the
    /// oldest data goes first (`--storage.tsdb.retention.size`).
    pub retention_bytes: Option<usize>,
    /// How often the store is written to disk (and once more at shutdown).
    pub snapshot_every: Duration,
    pub limits: Limits,
}

impl Default for MonitorConfig {
    fn default() -> Self {
        MonitorConfig {
            retention: Duration::from_secs(15 * 24 * 3600),
            retention_bytes: Some(1 << 30),
            snapshot_every: Duration::from_secs(300),
            limits: Limits::default(),
        }
    }
}

/// What each active target did last, for `/prometheus/api/v1/targets`.
#[derive(Default)]
pub struct TargetHealth(std::sync::Mutex<std::collections::BTreeMap<String, serde_json::Value>>);

impl TargetHealth {
    fn set(&self, key: &str, v: serde_json::Value) {
        self.0.lock().unwrap_or_else(|p| p.into_inner()).insert(key.to_string(), v);
    }

    fn remove(&self, key: &str) {
        self.0.lock().unwrap_or_else(|p| p.into_inner()).remove(key);
    }

    /// The active targets in Prometheus' shape (`labels`, `scrapeUrl`, `health`, `lastError`, `lastScrape`, …).
    pub fn active(&self) -> Vec<serde_json::Value> {
        self.0.lock().unwrap_or_else(|p| p.into_inner()).values().cloned().collect()
    }
}

/// The job label of App targets, as in the `prometheus.yml` the docs suggest for `/sd/prometheus`.
pub const APPS_JOB: &str = "capstan-apps";

/// The running monitor.
pub struct Monitor {
    pub db: Arc<Tsdb>,
    handle: capstan_engine::runner::Handle,
    path: PathBuf,
}

fn now_ms() -> i64 {
    capstan_observe::promql::now_ms()
}

/// The targets to scrape now: every replica with `spec.metrics`, and Capstan's own `/metrics`.
/// How the monitor reaches Capstan's own `/metrics`: over the data directory's Unix socket (plain HTTP, whatever
/// certificate the TCP listener serves), labelled with the API's address.
#[derive(Clone)]
pub struct SelfTarget {
    pub addr: std::net::SocketAddr,
    pub socket: PathBuf,
}

fn current_targets(shared: &Shared, me: &SelfTarget) -> Result<Vec<Target>, capstan_store::StoreError> {
    let mut out = Vec::new();
    for g in crate::discovery::targets(&shared.store, &shared.runtime)? {
        let get = |k: &str| g.labels.get(k).cloned().unwrap_or_default();
        let dur = |k: &str, d: u64| capstan_model::parse_duration(&get(k)).unwrap_or(Duration::from_secs(d));
        for addr in &g.targets {
            let mut pairs: Vec<(String, String)> =
                g.labels.iter().filter(|(k, _)| !k.starts_with("__")).map(|(k, v)| (k.clone(), v.clone())).collect();
            pairs.push(("job".into(), APPS_JOB.into()));
            pairs.push(("instance".into(), addr.clone()));
            out.push(Target {
                url: format!("{}://{addr}{}", get("__scheme__"), get("__metrics_path__")),
                labels: Labels::new(pairs),
                interval: dur("__scrape_interval__", 15),
                timeout: dur("__scrape_timeout__", 10),
            });
        }
    }
    let instance = me.addr.to_string();
    // An address that listens everywhere is dialled on the loopback (which the certificate names).
    let dial = match me.addr.ip() {
        std::net::IpAddr::V4(ip) if ip.is_unspecified() => format!("127.0.0.1:{}", me.addr.port()),
        std::net::IpAddr::V6(ip) if ip.is_unspecified() => format!("[::1]:{}", me.addr.port()),
        _ => instance.clone(),
    };
    out.push(Target {
        url: format!("http://{dial}/metrics"),
        labels: Labels::new([("job", "capstan"), ("instance", instance.as_str())]),
        interval: Duration::from_secs(15),
        timeout: Duration::from_secs(10),
    });
    Ok(out)
}

impl Monitor {
    /// Loads the store's last snapshot from the data directory; a damaged one is set aside, not fatal.
    pub fn open_store(data_dir: &std::path::Path) -> (Arc<Tsdb>, PathBuf) {
        let path = data_dir.join("metrics").join("snapshot");
        let db = match Tsdb::load(&path) {
            Ok(db) => db,
            Err(e) => {
                let aside = path.with_extension(format!("damaged-{}", now_ms()));
                tracing::warn!("metrics snapshot unreadable, starting empty (kept as {}): {e}", aside.display());
                let _ = std::fs::rename(&path, &aside);
                Tsdb::new()
            }
        };
        (Arc::new(db), path)
    }

    /// Starts scraping into `db`, snapshotting to `path`: a clock on the shared runner that keeps one scrape task
    /// per target in step with the targets every second, and runs retention and snapshots.
    pub fn spawn(shared: Arc<Shared>, db: Arc<Tsdb>, path: PathBuf, me: SelfTarget, cfg: MonitorConfig) -> Monitor {
        let now = tokio::time::Instant::now();
        let scraper = Scraper {
            shared,
            db: db.clone(),
            me,
            cfg,
            path: path.clone(),
            client: None,
            own_client: None,
            loops: HashMap::new(),
            last_snapshot: now,
            last_retention: now,
        };
        Monitor { db, handle: capstan_engine::runner::every(scraper), path }
    }

    /// Stops scraping and writes a last snapshot.
    pub async fn stop(self) {
        self.handle.stop().await;
        let db = self.db.clone();
        let path = self.path.clone();
        let _ = tokio::task::spawn_blocking(move || db.save(&path)).await;
    }
}

/// What the monitoring clock keeps between ticks: one scrape task per target.
struct Scraper {
    shared: Arc<Shared>,
    db: Arc<Tsdb>,
    me: SelfTarget,
    cfg: MonitorConfig,
    path: PathBuf,
    /// Built at the first tick (a failure is retried with the runner's backoff).
    client: Option<reqwest::Client>,
    /// The client of the self-scrape, over the Unix socket.
    own_client: Option<reqwest::Client>,
    loops: HashMap<String, (Target, watch::Sender<bool>, JoinHandle<()>)>,
    last_snapshot: tokio::time::Instant,
    last_retention: tokio::time::Instant,
}

impl capstan_engine::runner::Periodic for Scraper {
    fn name(&self) -> &'static str {
        "monitoring"
    }

    fn period(&self) -> Duration {
        Duration::from_secs(1)
    }

    async fn tick(&mut self) -> Result<(), capstan_engine::runner::ReconcileError> {
        let client = match &self.client {
            Some(c) => c.clone(),
            None => {
                let failed = |e: reqwest::Error| {
                    capstan_engine::runner::ReconcileError::Other(format!("cannot build an HTTP client: {e}"))
                };
                let c = reqwest::Client::builder().no_proxy().build().map_err(failed)?;
                let own = reqwest::Client::builder().unix_socket(self.me.socket.clone()).build().map_err(failed)?;
                self.own_client = Some(own);
                self.client = Some(c.clone());
                c
            }
        };
        // Targets that cannot be listed are not taken for gone: the scrape tasks keep running, and the tick is retried.
        let wanted: HashMap<String, Target> = current_targets(&self.shared, &self.me)?
            .into_iter()
            .map(|t| (format!("{}|{}", t.url, t.labels), t))
            .collect();
        let loops = &mut self.loops;
        let gone: Vec<String> = loops
            .keys()
            .filter(|k| wanted.get(*k).is_none_or(|t| Some(t) != loops.get(*k).map(|l| &l.0)))
            .cloned()
            .collect();
        for k in gone {
            if let Some((_, s, h)) = loops.remove(&k) {
                let _ = s.send(true);
                let _ = h.await;
            }
        }
        for (k, t) in wanted {
            if loops.contains_key(&k) {
                continue;
            }
            let (s, r) = watch::channel(false);
            let (db, limits, health) = (self.db.clone(), self.cfg.limits, self.shared.targets.clone());
            let own = t.labels.get("job") == Some("capstan");
            let c = match (&self.own_client, own) {
                (Some(o), true) => o.clone(),
                _ => client.clone(),
            };
            let h = tokio::spawn(target_loop(c, t.clone(), db, limits, health, r));
            loops.insert(k, (t, s, h));
        }
        // Retention runs every minute, so that the store's size limit binds within a minute of a flood.
        if self.last_retention.elapsed() >= Duration::from_secs(60) {
            self.last_retention = tokio::time::Instant::now();
            let db = self.db.clone();
            let retention = self.cfg.retention;
            let bytes = self.cfg.retention_bytes;
            let _ =
                tokio::task::spawn_blocking(move || db.retain(now_ms() - retention.as_millis() as i64, bytes)).await;
        }
        if self.last_snapshot.elapsed() >= self.cfg.snapshot_every {
            self.last_snapshot = tokio::time::Instant::now();
            let db = self.db.clone();
            let path = self.path.clone();
            let _ = tokio::task::spawn_blocking(move || {
                if let Err(e) = db.save(&path) {
                    tracing::warn!("metrics snapshot: {e}");
                }
            })
            .await;
        }
        Ok(())
    }

    /// Every scrape task stops (its series are marked stale).
    async fn shutdown(self) {
        for (_, (_, s, h)) in self.loops {
            let _ = s.send(true);
            let _ = h.await;
        }
    }
}

/// Scrapes one target on its interval until told to stop; then its series are marked stale.
async fn target_loop(
    client: reqwest::Client,
    t: Target,
    db: Arc<Tsdb>,
    limits: Limits,
    health: Arc<TargetHealth>,
    mut stop: watch::Receiver<bool>,
) {
    let mut state = TargetState::default();
    let key = format!("{}|{}", t.url, t.labels);
    let labels: serde_json::Map<String, serde_json::Value> =
        t.labels.iter().map(|(k, v)| (k.to_string(), serde_json::Value::String(v.to_string()))).collect();
    let entry = |health: &str, error: &str, last: Option<i64>, duration: f64| {
        serde_json::json!({
            "labels": labels, "scrapePool": t.labels.get("job").unwrap_or(""), "scrapeUrl": t.url,
            "health": health, "lastError": error,
            "lastScrape": last.and_then(chrono::DateTime::from_timestamp_millis).map(|d| d.to_rfc3339()).unwrap_or_else(|| "0001-01-01T00:00:00Z".into()),
            "lastScrapeDuration": duration,
            "scrapeInterval": format!("{}s", t.interval.as_secs_f64()), "scrapeTimeout": format!("{}s", t.timeout.as_secs_f64()),
        })
    };
    health.set(&key, entry("unknown", "", None, 0.0));
    // Spread targets over the interval (Prometheus offsets each by a hash of its identity).
    let offset = {
        use std::hash::{Hash, Hasher};
        let mut h = std::collections::hash_map::DefaultHasher::new();
        t.url.hash(&mut h);
        Duration::from_millis(h.finish() % (t.interval.as_millis().max(1) as u64))
    };
    tokio::select! {
        _ = tokio::time::sleep(offset.min(Duration::from_secs(1))) => {}
        _ = stop.changed() => return,
    }
    let mut tick = tokio::time::interval(t.interval);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut last_error: Option<String> = None;
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            _ = stop.changed() => break,
        }
        let at = now_ms();
        let report = scrape::scrape(&client, &t, &db, &mut state, limits, at).await;
        let err = report.error.as_ref().map(|e| e.to_string());
        health.set(
            &key,
            entry(
                if report.up { "up" } else { "down" },
                err.as_deref().unwrap_or(""),
                Some(at),
                report.duration.as_secs_f64(),
            ),
        );
        if err != last_error {
            match &err {
                Some(e) => tracing::warn!(target = %t.url, "scrape failed: {e}"),
                None if last_error.is_some() => tracing::info!(target = %t.url, "scrape works again"),
                None => {}
            }
            last_error = err;
        }
    }
    health.remove(&key);
    state.mark_all_stale(&db, now_ms());
    for name in ["up", "scrape_duration_seconds", "scrape_samples_scraped"] {
        let _ = db.append(&t.labels.with("__name__", name), now_ms(), capstan_observe::tsdb::stale_nan());
    }
}
