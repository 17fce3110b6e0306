//! The load balancer's own metrics: requests, errors and latency per App, entry point and replica.

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::registry::Registry;

/// Labels of a request series.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RequestLabels {
    pub namespace: String,
    pub app: String,
    pub entry: String,
    pub replica: String,
    /// `2xx`, `3xx`, `4xx` or `5xx`.
    pub code: String,
}

/// Labels of a latency or connection series.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ReplicaLabels {
    pub namespace: String,
    pub app: String,
    pub entry: String,
    pub replica: String,
}

/// Labels of an error series.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ErrorLabels {
    pub namespace: String,
    pub app: String,
    pub entry: String,
    /// `no_backend`, `connect`, `upstream`, `timeout`, `body_too_large`, `bad_request`, `body_timeout`,
    /// `too_many_tunnels`.
    pub kind: String,
}

/// Labels of a listener's connection series: `api`, or `<namespace>/<app>/<entry>`.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ListenerLabels {
    pub listener: String,
}

/// Labels of refused connections.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RefusedLabels {
    pub listener: String,
    /// `listener_cap` or `process_budget`.
    pub reason: String,
}

fn latency_histogram() -> Histogram {
    Histogram::new(exponential_buckets(0.0005, 2.0, 16))
}

/// The label values an entry point's series share: namespace, App, entry.
type EntryLabels = (String, String, String);

/// Every metric of the proxy, and the registry that renders them.
pub struct Metrics {
    pub registry: Registry,
    pub requests: Family<RequestLabels, Counter>,
    pub latency: Family<ReplicaLabels, Histogram, fn() -> Histogram>,
    pub errors: Family<ErrorLabels, Counter>,
    pub retries: Family<ReplicaLabels, Counter>,
    pub tcp_connections: Family<ReplicaLabels, Counter>,
    pub open_tunnels: Family<ReplicaLabels, Gauge>,
    pub connections: Family<ListenerLabels, Gauge>,
    pub connections_refused: Family<RefusedLabels, Counter>,
    pub connections_evicted: Family<ListenerLabels, Counter>,
    pub header_timeouts: Family<ListenerLabels, Counter>,
    /// Entry points alive with each label set, and the replicas their series name: the series go when the last
    /// of them does (two entries may share labels: an App twice in a rule, a plan replaced while a tunnel of the
    /// old one is open).
    live: std::sync::Mutex<std::collections::HashMap<EntryLabels, (usize, std::collections::BTreeSet<String>)>>,
}

impl Default for Metrics {
    fn default() -> Self {
        let mut registry = Registry::with_prefix("capstan_lb");
        let requests = Family::<RequestLabels, Counter>::default();
        let latency = Family::<ReplicaLabels, Histogram, fn() -> Histogram>::new_with_constructor(latency_histogram);
        let errors = Family::<ErrorLabels, Counter>::default();
        let retries = Family::<ReplicaLabels, Counter>::default();
        let tcp_connections = Family::<ReplicaLabels, Counter>::default();
        let open_tunnels = Family::<ReplicaLabels, Gauge>::default();
        registry.register("requests", "HTTP requests answered, by replica and status class", requests.clone());
        registry.register(
            "request_duration_seconds",
            "Time from receiving a request to the replica's response headers",
            latency.clone(),
        );
        registry.register("errors", "Requests the balancer answered itself, by cause", errors.clone());
        registry.register("retries", "Requests sent again to another replica", retries.clone());
        registry.register("tcp_connections", "TCP passthrough connections opened", tcp_connections.clone());
        registry.register("open_tunnels", "Websocket and TCP tunnels currently open", open_tunnels.clone());
        let connections = Family::<ListenerLabels, Gauge>::default();
        let connections_refused = Family::<RefusedLabels, Counter>::default();
        let connections_evicted = Family::<ListenerLabels, Counter>::default();
        let header_timeouts = Family::<ListenerLabels, Counter>::default();
        registry.register("connections", "Client connections held now, by listener", connections.clone());
        registry.register(
            "connections_refused",
            "Client connections answered 503 and closed because the listener or Capstan was full",
            connections_refused.clone(),
        );
        registry.register(
            "connections_evicted",
            "Idle client connections closed to make room for new ones",
            connections_evicted.clone(),
        );
        registry.register(
            "header_timeouts",
            "Connections closed because a request's headers did not arrive in time",
            header_timeouts.clone(),
        );
        Metrics {
            registry,
            requests,
            latency,
            errors,
            retries,
            tcp_connections,
            open_tunnels,
            connections,
            connections_refused,
            connections_evicted,
            header_timeouts,
            live: Default::default(),
        }
    }
}

/// Every `kind` of the errors series: `ProxyError::kind`'s, and the two the balancer counts itself.
pub const ERROR_KINDS: &[&str] = &[
    "no_backend",
    "too_many_tunnels",
    "connect",
    "upstream",
    "timeout",
    "body_timeout",
    "body_too_large",
    "bad_request",
];

impl Metrics {
    fn live(
        &self,
    ) -> std::sync::MutexGuard<'_, std::collections::HashMap<EntryLabels, (usize, std::collections::BTreeSet<String>)>>
    {
        self.live.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// An entry point writing series under these labels is alive.
    pub(crate) fn hold(&self, namespace: &str, app: &str, entry: &str) {
        self.live().entry((namespace.into(), app.into(), entry.into())).or_default().0 += 1;
    }

    /// An entry point under these labels writes series of `replica`.
    pub(crate) fn note_replica(&self, namespace: &str, app: &str, entry: &str, replica: &str) {
        if let Some((_, replicas)) = self.live().get_mut(&(namespace.into(), app.into(), entry.into())) {
            if !replicas.contains(replica) {
                replicas.insert(replica.to_string());
            }
        }
    }

    /// An entry point under these labels is gone: the last one takes the series with it, so that deleted Apps and
    /// routes, and renamed rules, leave nothing behind in the exposition to grow it for ever.
    pub(crate) fn release(&self, namespace: &str, app: &str, entry: &str) {
        let key = (namespace.to_string(), app.to_string(), entry.to_string());
        let gone = {
            let mut live = self.live();
            match live.get_mut(&key) {
                Some((n, _)) if *n > 1 => {
                    *n -= 1;
                    None
                }
                Some(_) => live.remove(&key).map(|(_, replicas)| replicas),
                None => None,
            }
        };
        if let Some(replicas) = gone {
            self.forget_entry(namespace, app, entry, replicas.iter().map(String::as_str));
        }
    }

    /// Removes every series of one entry point's labels (of its `replicas`).
    fn forget_entry<'r>(&self, namespace: &str, app: &str, entry: &str, replicas: impl Iterator<Item = &'r str>) {
        for replica in replicas {
            let labels = ReplicaLabels {
                namespace: namespace.into(),
                app: app.into(),
                entry: entry.into(),
                replica: replica.into(),
            };
            self.latency.remove(&labels);
            self.retries.remove(&labels);
            self.tcp_connections.remove(&labels);
            self.open_tunnels.remove(&labels);
            for c in 1..=5 {
                self.requests.remove(&RequestLabels {
                    namespace: namespace.into(),
                    app: app.into(),
                    entry: entry.into(),
                    replica: replica.into(),
                    code: format!("{c}xx"),
                });
            }
        }
        for kind in ERROR_KINDS {
            self.errors.remove(&ErrorLabels {
                namespace: namespace.into(),
                app: app.into(),
                entry: entry.into(),
                kind: (*kind).into(),
            });
        }
    }

    /// Prometheus text exposition of every metric.
    pub fn render(&self) -> String {
        let mut out = String::new();
        let _ = prometheus_client::encoding::text::encode(&mut out, &self.registry);
        out
    }
}

/// Handles of one replica's series, so the hot path only increments.
pub struct ReplicaMetrics {
    by_class: [Counter; 5],
    pub latency: Histogram,
    pub retries: Counter,
}

impl ReplicaMetrics {
    pub fn new(m: &Metrics, namespace: &str, app: &str, entry: &str, replica: &str) -> ReplicaMetrics {
        let labels = ReplicaLabels {
            namespace: namespace.into(),
            app: app.into(),
            entry: entry.into(),
            replica: replica.into(),
        };
        let by_class = [1u16, 2, 3, 4, 5].map(|c| {
            m.requests
                .get_or_create(&RequestLabels {
                    namespace: namespace.into(),
                    app: app.into(),
                    entry: entry.into(),
                    replica: replica.into(),
                    code: format!("{c}xx"),
                })
                .clone()
        });
        ReplicaMetrics {
            by_class,
            latency: m.latency.get_or_create(&labels).clone(),
            retries: m.retries.get_or_create(&labels).clone(),
        }
    }

    /// Counts a response and its latency.
    pub fn answered(&self, code: u16, seconds: f64) {
        let class = usize::from((code / 100).clamp(1, 5) - 1);
        self.by_class[class].inc();
        self.latency.observe(seconds);
    }
}
