//! `capstan apply --target kubernetes`: render, create missing credentials, server-side apply, prune, and wait,
//! printing one line per object as kubectl does.

use std::io::IsTerminal;
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
}

/// Renders the manifests in `files`, applies them to the cluster, prunes when asked, and waits when asked.
pub async fn apply(files: &[String], args: &KubeArgs, wait: bool, timeout: &str) -> Result<u8> {
    let timeout = parse_duration(timeout).map_err(|e| Failure::invalid(format!("error: --timeout: {e}")))?;
    let ms = crate::manifests::load(files).map_err(|d| Failure::invalid(d.to_string()))?;
    let objects = crate::gitops::render_manifests(&ms)?;
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
    if let Ok(r) = &report {
        if r.ok() {
            for (r, outcome) in cluster.create_missing(&capstan_kubernetes::render::credentials(&resources)).await {
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
        match outcome {
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
        let tty = std::io::stderr().is_terminal();
        let bar = indicatif::ProgressBar::new(refs.len() as u64);
        if tty {
            bar.set_style(
                indicatif::ProgressStyle::with_template("{spinner} waiting for objects to be ready [{bar:30}] {pos}/{len}")
                    .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar())
                    .progress_chars("=> "),
            );
        } else {
            bar.set_draw_target(indicatif::ProgressDrawTarget::hidden());
        }
        let mut last = usize::MAX;
        let result = cluster
            .wait(&refs, timeout, |done, all| {
                bar.set_position(done as u64);
                if !tty && done != last {
                    eprintln!("{done}/{all} ready");
                    last = done;
                }
            })
            .await;
        bar.finish_and_clear();
        if let Err(e) = result {
            eprintln!("error: {e}");
            return Ok(EXIT_FAIL);
        }
        println!("all {} objects ready", refs.len());
    }
    Ok(EXIT_OK)
}
