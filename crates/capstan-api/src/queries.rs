//! PromQL queries of the API: at most so many evaluated at once, each bounded by the sample budget and timeout,
//! each cancelled when its client goes away, with counters for what was stopped.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use capstan_observe::promql::{Engine, QueryError};
use capstan_observe::query_limits::{self, QueryLimits};
use capstan_observe::tsdb::Tsdb;
use tokio::sync::Semaphore;

/// How queries are bounded (Prometheus' `--query.max-samples`, `--query.timeout`, `--query.max-concurrency`).
#[derive(Debug, Clone)]
pub struct QuerySettings {
    pub max_samples: usize,
    pub timeout: Duration,
    /// Queries evaluated at once; more wait for a turn, within their timeout.
    pub max_concurrency: usize,
}

impl Default for QuerySettings {
    /// Prometheus' sample budget and timeout; one query per core (at least two) at once, so that queries never
    /// take every core from the balancer and the replicas.
    fn default() -> Self {
        let cores = std::thread::available_parallelism().map_or(2, |n| n.get());
        QuerySettings {
            max_samples: query_limits::DEFAULT_MAX_SAMPLES,
            timeout: query_limits::DEFAULT_TIMEOUT,
            max_concurrency: cores.max(2),
        }
    }
}

impl QuerySettings {
    /// The limits of one query (rule evaluations use them too).
    pub fn limits(&self) -> QueryLimits {
        QueryLimits { max_samples: self.max_samples, timeout: self.timeout, cancel: None }
    }
}

/// The API's query runner.
pub struct Queries {
    settings: QuerySettings,
    slots: Arc<Semaphore>,
    running: AtomicU64,
    canceled: AtomicU64,
    timed_out: AtomicU64,
    too_large: AtomicU64,
}

/// Sets its flag when dropped: the handler that owns it was dropped because its client went away.
struct CancelOnDrop(Arc<AtomicBool>);

impl Drop for CancelOnDrop {
    fn drop(&mut self) {
        self.0.store(true, Ordering::Relaxed);
    }
}

/// Counts a query as running while it lives.
struct Running<'a>(&'a AtomicU64);

impl Drop for Running<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
}

impl Queries {
    pub fn new(settings: QuerySettings) -> Queries {
        Queries {
            slots: Arc::new(Semaphore::new(settings.max_concurrency.max(1))),
            settings,
            running: AtomicU64::new(0),
            canceled: AtomicU64::new(0),
            timed_out: AtomicU64::new(0),
            too_large: AtomicU64::new(0),
        }
    }

    pub fn settings(&self) -> &QuerySettings {
        &self.settings
    }

    /// Evaluates `f` on a blocking thread once a turn is free (its answer is built there too, however large).
    /// Dropping the returned future (the client went away) cancels the evaluation at its next step.
    pub async fn run<F, T>(self: &Arc<Self>, db: Arc<Tsdb>, f: F) -> Result<T, QueryError>
    where
        F: FnOnce(&mut Engine) -> Result<T, QueryError> + Send + 'static,
        T: Send + 'static,
    {
        let cancel = Arc::new(AtomicBool::new(false));
        let _cancel_on_drop = CancelOnDrop(cancel.clone());
        let asked = Instant::now();
        let permit = match tokio::time::timeout(self.settings.timeout, self.slots.clone().acquire_owned()).await {
            Ok(Ok(p)) => p,
            Ok(Err(_)) => return Err(QueryError::Execution("the query engine is shutting down".into())),
            Err(_) => {
                self.timed_out.fetch_add(1, Ordering::Relaxed);
                return Err(QueryError::Timeout(format!(
                    "query timed out waiting for a turn: {} queries were running (--query-max-concurrency)",
                    self.settings.max_concurrency
                )));
            }
        };
        let mut limits = self.settings.limits();
        limits.timeout = limits.timeout.saturating_sub(asked.elapsed());
        limits.cancel = Some(cancel);
        let me = self.clone();
        let out = tokio::task::spawn_blocking(move || {
            // The turn is held until the evaluation has really stopped, not just until its client left.
            let _permit = permit;
            me.running.fetch_add(1, Ordering::Relaxed);
            let _running = Running(&me.running);
            let out = f(&mut Engine::with_limits(&db, limits));
            match &out {
                Err(QueryError::Canceled(_)) => me.canceled.fetch_add(1, Ordering::Relaxed),
                Err(QueryError::Timeout(_)) => me.timed_out.fetch_add(1, Ordering::Relaxed),
                Err(QueryError::Execution(m)) if m.contains("too many samples") => {
                    me.too_large.fetch_add(1, Ordering::Relaxed)
                }
                _ => 0,
            };
            out
        })
        .await;
        out.unwrap_or_else(|e| Err(QueryError::Execution(format!("the query stopped: {e}"))))
    }

    /// The counters in Prometheus text format.
    pub fn metrics_text(&self) -> String {
        let mut out = String::new();
        let mut family = |name: &str, kind: &str, help: &str, value: u64| {
            let series = if kind == "counter" { format!("{name}_total") } else { name.to_string() };
            out.push_str(&format!("# HELP {name} {help}\n# TYPE {name} {kind}\n{series} {value}\n"));
        };
        let load = |a: &AtomicU64| a.load(Ordering::Relaxed);
        family("capstan_query_running", "gauge", "PromQL queries being evaluated now.", load(&self.running));
        family(
            "capstan_query_canceled",
            "counter",
            "Queries stopped because their client went away.",
            load(&self.canceled),
        );
        family(
            "capstan_query_timeouts",
            "counter",
            "Queries stopped at their timeout, or that waited that long for a turn.",
            load(&self.timed_out),
        );
        family(
            "capstan_query_too_many_samples",
            "counter",
            "Queries refused because they would have held more samples than the budget.",
            load(&self.too_large),
        );
        out
    }
}
