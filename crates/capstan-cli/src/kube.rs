//! Capstan on a cluster from the command line: `capstan apply --target kubernetes` (render, create missing
//! credentials, server-side apply, prune, wait, one line per object as kubectl prints) and `capstan operator`.

use std::path::PathBuf;

use anyhow::Result;
use capstan_kubernetes::cluster::{ApplyOptions, Cluster, Outcome};
use capstan_kubernetes::plan::ObjectRef;
use capstan_model::parse_duration;

use crate::{Failure, EXIT_FAIL, EXIT_OK};

/// Where and how to apply to a cluster.
#[derive(Debug, Clone, clap::Args)]
pub struct KubeArgs {
    /// The kubeconfig file (default: KUBECONFIG, ~/.kube/config, or the in-cluster account).
    #[arg(long)]
    pub kubeconfig: Option<PathBuf>,
    /// The kubeconfig context (default: its current context).
    #[arg(long)]
    pub context: Option<String>,
    /// The inventory that records what this apply owns, kept in the ConfigMap `capstan-inventory-<NAME>`.
    #[arg(long, default_value = "cli")]
    pub inventory: String,
    /// The namespace of the inventory's ConfigMap (default: the context's namespace).
    #[arg(long)]
    pub inventory_namespace: Option<String>,
    /// Delete what the inventory holds that is no longer in the files (claims and namespaces are kept).
    #[arg(long)]
    pub prune: bool,
    /// Take over fields that another field manager owns.
    #[arg(long)]
    pub force_conflicts: bool,
    #[command(flatten)]
    pub entry_points: EntryPointArgs,
}

/// Where Apps' entry points attach on a cluster.
#[derive(Debug, Clone, Default, clap::Args)]
pub struct EntryPointArgs {
    /// The Gateway that Apps' entry points attach to unless they name one (HTTPRoutes, and TCPRoutes on the
    /// listener of their port): NAMESPACE/NAME, or NAME in capstan-system [default: capstan-system/capstan].
    #[arg(long, value_name = "NAMESPACE/NAME", conflicts_with = "ingress_class")]
    pub gateway: Option<String>,
    /// For clusters without Gateway API: an Ingress of this class for http entry points and a LoadBalancer Service
    /// for tcp ones, instead of routes.
    #[arg(long, value_name = "CLASS")]
    pub ingress_class: Option<String>,
    /// The namespace whose pods carry the Gateway's traffic, let through Apps' NetworkPolicies (default: the
    /// Gateway's; `envoy-gateway-system` for Envoy Gateway).
    #[arg(long, value_name = "NAMESPACE", conflicts_with = "ingress_class")]
    pub gateway_proxy_namespace: Option<String>,
}

impl EntryPointArgs {
    /// The render options these flags ask for; a bad name is refused with the flag named.
    pub fn options(&self) -> Result<capstan_kubernetes::render::RenderOptions> {
        use capstan_model::gitops::{DefaultGateway, EntryPoints};
        let mut gateway = self.gateway.as_deref().map(|g| match g.split_once('/') {
            Some((ns, name)) => DefaultGateway { name: name.into(), namespace: ns.into(), proxy_namespace: None },
            None => DefaultGateway { name: g.into(), ..Default::default() },
        });
        if let Some(ns) = &self.gateway_proxy_namespace {
            gateway.get_or_insert_with(DefaultGateway::default).proxy_namespace = Some(ns.clone());
        }
        let entry_points = EntryPoints { gateway, ingress_class_name: self.ingress_class.clone() };
        let mut errors = Vec::new();
        entry_points.validate("", &mut errors);
        if let Some(e) = errors.first() {
            let flag = match &e.path {
                p if p.contains("ingressClassName") => "--ingress-class",
                p if p.contains("proxyNamespace") => "--gateway-proxy-namespace",
                _ => "--gateway",
            };
            return Err(Failure::invalid(format!(
                "error: {flag}: {}\n  hint: --gateway takes NAMESPACE/NAME (or NAME in capstan-system), --ingress-class a class name",
                e.message
            ))
            .into());
        }
        Ok(capstan_kubernetes::render::RenderOptions { entry_points })
    }
}

/// Renders the manifests in `files`, applies them to the cluster, prunes when asked, and waits when asked.
pub async fn apply(files: &[String], args: &KubeArgs, wait: bool, timeout: &str) -> Result<u8> {
    let timeout = parse_duration(timeout).map_err(|e| Failure::invalid(format!("error: --timeout: {e}")))?;
    // The inventory becomes a ConfigMap name: refuse a bad one before anything is applied.
    let prefix = capstan_kubernetes::cluster::inventory_configmap("");
    if let Err(e) = capstan_model::validate::check_dns_label(&args.inventory, 253 - prefix.len()) {
        return Err(Failure::invalid(format!(
            "error: --inventory {:?}: {e}\n  hint: it names the ConfigMap `{prefix}<name>`; for example `--inventory team-a`",
            args.inventory
        ))
        .into());
    }
    let ms = crate::manifests::load(files).map_err(|d| Failure::invalid(d.to_string()))?;
    let objects = crate::gitops::render_manifests(&ms, &args.entry_points.options()?)?;
    let resources: Vec<capstan_model::Resource> = ms.iter().map(|m| m.resource.clone()).collect();
    let cluster = Cluster::connect(args.kubeconfig.as_deref(), args.context.as_deref())
        .await
        .map_err(|e| Failure::fail(format!("error: {e}")))?;
    let namespace = args.inventory_namespace.clone().unwrap_or_else(|| cluster.namespace.clone());
    let opts = ApplyOptions {
        force_conflicts: args.force_conflicts,
        inventory: Some((namespace, args.inventory.clone())),
        prune: args.prune,
        ..Default::default()
    };
    let refs: Vec<ObjectRef> = objects.iter().filter_map(ObjectRef::of).collect();
    // Namespaces first: the credentials live in them.
    let namespaces: Vec<serde_json::Value> = objects.iter().filter(|o| o["kind"] == "Namespace").cloned().collect();
    let mut report = cluster.apply(namespaces, &ApplyOptions { inventory: None, ..opts.clone() }).await;
    // What happened to the namespaces is told once, by the first apply.
    let mut first: std::collections::HashMap<ObjectRef, Outcome> = std::collections::HashMap::new();
    if let Ok(r) = &report {
        first.extend(r.applied.iter().cloned());
        if r.ok() {
            for (r, outcome) in cluster
                .create_missing(&capstan_kubernetes::render::credentials(
                    &resources,
                    capstan_kubernetes::render::random_password,
                ))
                .await
            {
                if outcome == Outcome::Created {
                    println!("{r} created (a new random password)");
                } else if let Outcome::Failed(f) = outcome {
                    eprintln!("error: {r}: {f}");
                }
            }
            report = cluster.apply(objects, &opts).await;
        }
    }
    let report = report.map_err(|e| Failure::fail(format!("error: {e}")))?;
    for (r, outcome) in report.applied.iter().chain(&report.pruned) {
        match first.get(r).unwrap_or(outcome) {
            Outcome::Failed(f) => eprintln!("error: {r}: {f}"),
            other => println!("{r} {other}"),
        }
    }
    if report.prune_skipped {
        eprintln!("warning: nothing was pruned because an object failed to apply; the inventory keeps every object");
    }
    if !report.ok() {
        return Ok(EXIT_FAIL);
    }
    if wait {
        let (bar, tty) = crate::commands::wait_bar(refs.len());
        let mut last = usize::MAX;
        let result = cluster
            .wait(&refs, timeout, |done, all| {
                bar.set_position(done as u64);
                if !tty && done != last {
                    eprintln!("{}", crate::commands::objects_ready(done, all));
                    last = done;
                }
            })
            .await;
        bar.finish_and_clear();
        if let Err(e) = result {
            eprintln!("error: {e}");
            return Ok(EXIT_FAIL);
        }
        println!("{}", crate::commands::objects_ready(refs.len(), refs.len()));
    }
    Ok(EXIT_OK)
}

/// How `capstan operator` runs.
#[derive(Debug, Clone, clap::Args)]
pub struct OperatorSettings {
    /// The operator's namespace, where its Lease lives.
    #[arg(long, env = "POD_NAMESPACE", default_value = "capstan-system")]
    pub namespace: String,
    /// This replica's name in the Lease (default: the pod's name).
    #[arg(long, env = "POD_NAME")]
    pub identity: Option<String>,
    /// Where /healthz, /readyz and /metrics are served.
    #[arg(long, default_value = "0.0.0.0:8080")]
    pub probe_address: std::net::SocketAddr,
    /// How long the Lease holds without renewal.
    #[arg(long, default_value = "15s")]
    pub lease_duration: String,
    /// How often every resource is applied again, repairing drift.
    #[arg(long, default_value = "10m")]
    pub resync: String,
    /// The kubeconfig file (default: the in-cluster account, KUBECONFIG or ~/.kube/config).
    #[arg(long)]
    pub kubeconfig: Option<PathBuf>,
    /// The kubeconfig context.
    #[arg(long)]
    pub context: Option<String>,
    #[command(flatten)]
    pub entry_points: EntryPointArgs,
}

/// `capstan operator`: probes and metrics on `probe_address`, then the operator until it loses its Lease (exit 1,
/// so the kubelet restarts it as a standby).
pub async fn operator(s: OperatorSettings) -> Result<u8> {
    use std::sync::atomic::Ordering;
    let duration = |flag: &str, v: &str| {
        parse_duration(v).map_err(|e| anyhow::Error::from(Failure::invalid(format!("error: --{flag}: {e}"))))
    };
    let mut cfg = capstan_kubernetes::operator::OperatorConfig {
        lease_namespace: s.namespace,
        lease_duration: duration("lease-duration", &s.lease_duration)?,
        resync: duration("resync", &s.resync)?,
        render: s.entry_points.options()?,
        ..Default::default()
    };
    if let Some(id) = s.identity {
        cfg.identity = id;
    }
    let cluster = Cluster::connect(s.kubeconfig.as_deref(), s.context.as_deref())
        .await
        .map_err(|e| Failure::fail(format!("error: {e}")))?;
    let status = std::sync::Arc::new(capstan_kubernetes::operator::OperatorStatus::default());
    let listener = tokio::net::TcpListener::bind(s.probe_address).await.map_err(|e| {
        Failure::fail(format!("error: cannot listen on {}: {e}\n  hint: pass --probe-address", s.probe_address))
    })?;
    let probe_status = status.clone();
    let app = axum::Router::new()
        .route("/healthz", axum::routing::get(|| async { "ok" }))
        .route(
            "/readyz",
            axum::routing::get({
                let st = probe_status.clone();
                move || async move {
                    // A standby is ready (it waits for the Lease); a leader once its caches are filled.
                    if !st.leader.load(Ordering::SeqCst) || st.synced.load(Ordering::SeqCst) {
                        (axum::http::StatusCode::OK, "ok")
                    } else {
                        (axum::http::StatusCode::SERVICE_UNAVAILABLE, "syncing")
                    }
                }
            }),
        )
        .route(
            "/metrics",
            axum::routing::get(move || async move {
                let st = &probe_status;
                format!(
                    "# TYPE capstan_operator_leader gauge\ncapstan_operator_leader {}\n\
                     # TYPE capstan_operator_reconciles_total counter\ncapstan_operator_reconciles_total {}\n\
                     # TYPE capstan_operator_reconcile_errors_total counter\ncapstan_operator_reconcile_errors_total {}\n",
                    u8::from(st.leader.load(Ordering::SeqCst)),
                    st.reconciles.load(Ordering::Relaxed),
                    st.reconcile_errors.load(Ordering::Relaxed),
                )
            }),
        );
    // The probe listener admits connections through a gate of its own (header timeout, a cap), as every
    // listener of Capstan does.
    let gate = capstan_proxy::gate::Gate::new(256, capstan_proxy::gate::DEFAULT_HEADER_TIMEOUT, Default::default());
    tokio::spawn(capstan_api::listen::serve(listener, app, gate.listener("probes", 64), None));
    eprintln!(
        "capstan operator {} on {} (lease {}/{})",
        cfg.identity,
        cluster.url(),
        cfg.lease_namespace,
        cfg.lease_name
    );
    tokio::select! {
        r = capstan_kubernetes::operator::run(cluster, cfg, status) => {
            let e = r.err().map(|e| e.to_string()).unwrap_or_else(|| "stopped".into());
            eprintln!("error: {e}");
            Ok(EXIT_FAIL)
        }
        _ = tokio::signal::ctrl_c() => Ok(EXIT_OK),
        _ = async {
            match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
                Ok(mut term) => { term.recv().await; }
                Err(_) => std::future::pending::<()>().await,
            }
        } => Ok(EXIT_OK),
    }
}
