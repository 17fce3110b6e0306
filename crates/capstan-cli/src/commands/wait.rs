//! Waiting for objects to be Ready (`capstan wait`, `apply --wait`): the progress bar and the readiness test.

use std::io::IsTerminal;
use std::time::Duration;

use anyhow::Result;
use capstan_api::Client;
use capstan_model::Kind;
use serde_json::Value;

use crate::{Failure, EXIT_OK};

/// Whether `conditions` holds `type_` True for `generation` (Gateway API puts observedGeneration on each condition).
fn holds(conditions: &Value, type_: &str, generation: Option<i64>) -> bool {
    conditions.as_array().is_some_and(|cs| {
        cs.iter().any(|c| c["type"] == type_ && c["status"] == "True" && c["observedGeneration"].as_i64() == generation)
    })
}

pub(super) fn is_ready(obj: &Value) -> bool {
    let gen = obj["metadata"]["generation"].as_i64();
    match obj["kind"].as_str() {
        // Gateway API's own health: a Gateway is Programmed; a route is Accepted, with its references resolved, by
        // every parent it names.
        Some("Gateway") => {
            // Gateway API calls a Gateway Programmed when any listener is: every one must be here.
            let listeners = obj["status"]["listeners"].as_array();
            return holds(&obj["status"]["conditions"], "Programmed", gen)
                && listeners.is_some_and(|ls| ls.iter().all(|l| holds(&l["conditions"], "Programmed", gen)));
        }
        // cert-manager's kinds keep the generation on each condition.
        Some("Issuer" | "ClusterIssuer" | "Certificate")
            if obj["apiVersion"].as_str().is_some_and(|v| v.starts_with("cert-manager.io/")) =>
        {
            return holds(&obj["status"]["conditions"], "Ready", gen);
        }
        Some("HTTPRoute") => {
            let parents = obj["status"]["parents"].as_array();
            return parents.is_some_and(|ps| {
                !ps.is_empty()
                    && ps.iter().all(|p| {
                        holds(&p["conditions"], "Accepted", gen) && holds(&p["conditions"], "ResolvedRefs", gen)
                    })
            });
        }
        _ => {}
    }
    let observed = obj["status"]["observedGeneration"].as_i64();
    gen == observed
        && obj["status"]["conditions"].as_array().is_some_and(|cs| {
            // A TrainingJob is done when it has succeeded; everything else reports Ready.
            cs.iter().any(|c| (c["type"] == "Ready" || c["type"] == "Succeeded") && c["status"] == "True")
        })
}

/// The bar of a wait for `len` objects: drawn on a terminal (with whether it is one), hidden otherwise, where the
/// caller prints plain lines.
pub fn wait_bar(len: usize) -> (indicatif::ProgressBar, bool) {
    let tty = std::io::stderr().is_terminal();
    let bar = indicatif::ProgressBar::new(len as u64);
    if tty {
        bar.set_style(
            indicatif::ProgressStyle::with_template(
                "{spinner} waiting for objects to be Ready [{bar:30}] {pos} of {len} objects {msg}",
            )
            .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar())
            .progress_chars("=> "),
        );
        bar.enable_steady_tick(Duration::from_millis(120));
    } else {
        bar.set_draw_target(indicatif::ProgressDrawTarget::hidden());
    }
    (bar, tty)
}

/// Waits until every object named (Apps, Databases, Sources, Syncs) is Ready, with a progress bar on a terminal and
/// plain lines otherwise.
pub async fn wait_ready(client: &Client, objects: &[(Kind, String, String)], timeout: Duration) -> Result<u8> {
    let deadline = tokio::time::Instant::now() + timeout;
    let (bar, tty) = wait_bar(objects.len());
    let mut last_ready = usize::MAX;
    loop {
        let mut ready = 0;
        let mut waiting = Vec::new();
        for (kind, ns, name) in objects {
            let who = format!("{}/{name}", kind.name().to_lowercase());
            match client.get(&crate::commands::object_path(*kind, ns, name)).await {
                Ok(o) if is_ready(&o) => ready += 1,
                Ok(o) => waiting.push((who, condition_summary(&o))),
                Err(e) => waiting.push((who, e.to_string())),
            }
        }
        bar.set_position(ready as u64);
        if let Some((n, why)) = waiting.first() {
            bar.set_message(format!("{n}: {why}"));
        }
        if !tty && ready != last_ready && !waiting.is_empty() {
            let next = waiting.first().map(|(n, why)| format!("; waiting for {n}: {why}")).unwrap_or_default();
            eprintln!("{}{next}", objects_ready(ready, objects.len()));
        }
        last_ready = ready;
        if waiting.is_empty() {
            bar.finish_and_clear();
            eprintln!("{}", objects_ready(ready, objects.len()));
            return Ok(EXIT_OK);
        }
        if tokio::time::Instant::now() >= deadline {
            bar.abandon();
            let lines: Vec<String> = waiting.iter().map(|(n, w)| format!("  {n}: {w}")).collect();
            return Err(Failure::fail(format!("error: timed out waiting to be Ready:\n{}", lines.join("\n"))).into());
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

/// "1 of 2 objects Ready", "the object is Ready", "all 3 objects Ready": objects, not replicas.
pub fn objects_ready(ready: usize, all: usize) -> String {
    match (ready, all) {
        (1, 1) => "the object is Ready".into(),
        (r, a) if r == a => format!("all {a} objects Ready"),
        (r, 1) => format!("{r} of 1 object Ready"),
        (r, a) => format!("{r} of {a} objects Ready"),
    }
}

pub(super) fn condition_summary(o: &Value) -> String {
    let conds = o["status"]["conditions"].as_array().cloned().unwrap_or_default();
    conds
        .iter()
        .find(|c| c["type"] == "Stalled")
        .or_else(|| conds.iter().find(|c| c["type"] == "Ready"))
        .map(|c| format!("{}: {}", c["reason"].as_str().unwrap_or(""), c["message"].as_str().unwrap_or("")))
        .unwrap_or_else(|| "not reconciled yet".into())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wait_counts_objects_not_replicas() {
        assert_eq!(objects_ready(1, 1), "the object is Ready");
        assert_eq!(objects_ready(1, 2), "1 of 2 objects Ready");
        assert_eq!(objects_ready(3, 3), "all 3 objects Ready");
        assert_eq!(objects_ready(0, 1), "0 of 1 object Ready");
    }

    #[test]
    fn cert_managers_kinds_are_ready_by_their_conditions_generation() {
        use serde_json::json;
        for kind in ["Issuer", "ClusterIssuer", "Certificate"] {
            let obj = |seen: i64| {
                json!({"apiVersion": "cert-manager.io/v1", "kind": kind, "metadata": {"generation": 2},
                       "status": {"conditions": [{"type": "Ready", "status": "True", "observedGeneration": seen}]}})
            };
            assert!(is_ready(&obj(2)), "{kind}");
            assert!(!is_ready(&obj(1)), "{kind}: a Ready from before the change");
        }
    }

    #[test]
    fn gateways_are_ready_when_programmed_and_routes_when_every_parent_accepts_them() {
        let c = |t: &str, s: &str, g: i64| serde_json::json!({"type": t, "status": s, "observedGeneration": g});
        let listener = |s: &str| serde_json::json!({"conditions": [c("Programmed", s, 2)]});
        let gw = |cs: Value| {
            serde_json::json!({"kind": "Gateway", "metadata": {"generation": 2},
                               "status": {"conditions": cs, "listeners": [listener("True"), listener("True")]}})
        };
        assert!(is_ready(&gw(serde_json::json!([c("Accepted", "True", 2), c("Programmed", "True", 2)]))));
        let mut one_down = gw(serde_json::json!([c("Programmed", "True", 2)]));
        one_down["status"]["listeners"][1] = listener("False");
        assert!(!is_ready(&one_down), "every listener, not any");
        assert!(!is_ready(&gw(serde_json::json!([c("Programmed", "True", 1)]))), "an older generation's");
        assert!(!is_ready(&gw(serde_json::json!([c("Programmed", "False", 2)]))));
        let route = |parents: Value| serde_json::json!({"kind": "HTTPRoute", "metadata": {"generation": 1}, "status": {"parents": parents}});
        let ok = serde_json::json!({"conditions": [c("Accepted", "True", 1), c("ResolvedRefs", "True", 1)]});
        let unresolved = serde_json::json!({"conditions": [c("Accepted", "True", 1), c("ResolvedRefs", "False", 1)]});
        assert!(is_ready(&route(serde_json::json!([ok.clone()]))));
        assert!(!is_ready(&route(serde_json::json!([ok, unresolved]))), "every parent");
        assert!(!is_ready(&route(serde_json::json!([]))), "no parent has taken it yet");
    }
}
