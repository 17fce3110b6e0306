//! Which model versions a ModelServer's replicas should serve, from what each says it serves: a pure function, so
//! that replicas that drifted apart (one still serving a deleted version, one that loaded a replaced file) are seen,
//! reported and kept out of the balancer.

use std::collections::{BTreeMap, BTreeSet};

use capstan_model::serving::{ModelReplicaStatus, ModelVersionStatus};
use serde::Deserialize;

/// What one replica's `/capstan/versions` says.
#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
pub struct Report {
    /// What the version policy picks from the base path.
    pub wanted: Vec<u64>,
    pub versions: Vec<ReportedVersion>,
    /// The replica passes its readiness probe (set by the controller, not by the replica): only ready replicas
    /// take part in the agreement; the others are reported for their versions' states and errors.
    #[serde(skip)]
    pub ready: bool,
}

/// One version one replica knows.
#[derive(Debug, Clone, PartialEq, Deserialize)]
pub struct ReportedVersion {
    pub version: u64,
    pub state: String,
    #[serde(default)]
    pub error: Option<String>,
}

/// The outcome: the agreed set, each version across replicas, and each replica.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Agreement {
    pub agreed: Vec<u64>,
    pub versions: Vec<ModelVersionStatus>,
    pub replicas: Vec<ModelReplicaStatus>,
}

impl Agreement {
    /// Ready replicas that serve something other than the agreed versions.
    pub fn dissenters(&self) -> Vec<String> {
        self.replicas.iter().filter(|r| r.ready && !r.agrees).map(|r| r.name.clone()).collect()
    }

    /// Ready replicas serving the agreed versions.
    pub fn serving(&self) -> usize {
        self.replicas.iter().filter(|r| r.ready && r.agrees).count()
    }
}

const AVAILABLE: &str = "AVAILABLE";

fn rank(state: &str) -> u8 {
    match state {
        AVAILABLE => 4,
        "LOADING" => 3,
        "START" => 2,
        "UNLOADING" => 1,
        _ => 0,
    }
}

/// Compares the replicas' reports (by replica name, in order).
pub fn agree(reports: &[(String, Report)]) -> Agreement {
    // What the policy wants: what most replicas say (they read the same directory; one may be a poll behind).
    let mut votes: BTreeMap<&[u64], usize> = BTreeMap::new();
    // A replica that did not answer (kept from the last look) has no say.
    for (_, r) in reports.iter().filter(|(_, r)| !r.wanted.is_empty()) {
        *votes.entry(r.wanted.as_slice()).or_default() += 1;
    }
    let wanted: BTreeSet<u64> =
        votes.iter().max_by_key(|(w, n)| (**n, **w)).map(|(w, _)| w.iter().copied().collect()).unwrap_or_default();
    let serving = |r: &Report| -> Vec<u64> {
        let mut v: Vec<u64> = r.versions.iter().filter(|x| x.state == AVAILABLE).map(|x| x.version).collect();
        v.sort_unstable_by(|a, b| b.cmp(a));
        v
    };
    // The best set served: most wanted versions, then fewest unwanted ones, then the highest versions.
    let agreed = reports
        .iter()
        .filter(|(_, r)| r.ready)
        .map(|(_, r)| serving(r))
        .filter(|s| !s.is_empty())
        .max_by_key(|s| {
            let hits = s.iter().filter(|v| wanted.contains(v)).count();
            (hits, usize::MAX - (s.len() - hits), s.clone())
        })
        .unwrap_or_default();
    let replicas = reports
        .iter()
        .map(|(name, r)| {
            let versions = serving(r);
            let agrees = r.ready && !versions.is_empty() && versions == agreed;
            ModelReplicaStatus { name: name.clone(), agrees, ready: r.ready, versions }
        })
        .collect();
    let mut by_version: BTreeMap<u64, ModelVersionStatus> = BTreeMap::new();
    for (name, r) in reports {
        for x in &r.versions {
            let is_wanted = wanted.contains(&x.version);
            if !is_wanted && x.state != AVAILABLE {
                continue; // history: unloaded or deleted, and not wanted any more
            }
            let e = by_version.entry(x.version).or_insert_with(|| ModelVersionStatus {
                version: x.version,
                state: x.state.clone(),
                wanted: is_wanted,
                ..Default::default()
            });
            if rank(&x.state) > rank(&e.state) {
                e.state = x.state.clone();
            }
            if x.state == AVAILABLE {
                e.replicas.push(name.clone());
            }
            if e.error.is_none() {
                e.error = x.error.as_ref().map(|m| format!("{name}: {m}"));
            }
        }
    }
    for v in &wanted {
        by_version.entry(*v).or_insert_with(|| ModelVersionStatus {
            version: *v,
            state: "START".into(),
            wanted: true,
            ..Default::default()
        });
    }
    Agreement { agreed, versions: by_version.into_values().rev().collect(), replicas }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn report(wanted: &[u64], versions: &[(u64, &str, Option<&str>)]) -> Report {
        Report {
            ready: versions.iter().any(|(_, s, _)| *s == AVAILABLE),
            wanted: wanted.to_vec(),
            versions: versions
                .iter()
                .map(|(v, s, e)| ReportedVersion { version: *v, state: s.to_string(), error: e.map(str::to_string) })
                .collect(),
        }
    }

    /// Issue 20, item 3: the old replica still serves the deleted version 2; a new one serves version 1, the one the
    /// policy wants. Version 1 is agreed; the old replica is left out and its state is reported.
    #[test]
    fn a_replica_serving_a_deleted_version_dissents() {
        let old = report(&[1], &[(1, "END", Some("cannot load")), (2, AVAILABLE, None), (3, "END", Some("corrupt"))]);
        let new = report(&[1], &[(1, AVAILABLE, None)]);
        let a = agree(&[("lin-server-0".into(), old), ("lin-server-1".into(), new)]);
        assert_eq!(a.agreed, vec![1]);
        assert_eq!(a.dissenters(), vec!["lin-server-0".to_string()]);
        assert_eq!(a.serving(), 1);
        assert_eq!(a.replicas[0].versions, vec![2]);
        let v: Vec<(u64, &str, bool)> = a.versions.iter().map(|v| (v.version, v.state.as_str(), v.wanted)).collect();
        assert_eq!(v, vec![(2, AVAILABLE, false), (1, AVAILABLE, true)], "version 3 is history");
        assert_eq!(a.versions[1].replicas, vec!["lin-server-1".to_string()]);
        assert_eq!(a.versions[1].error.as_deref(), Some("lin-server-0: cannot load"));
    }

    #[test]
    fn agreeing_replicas_and_a_version_that_loads_nowhere() {
        let r = || report(&[2, 1], &[(2, AVAILABLE, None), (1, AVAILABLE, None)]);
        let a = agree(&[("a".into(), r()), ("b".into(), r())]);
        assert_eq!(a.agreed, vec![2, 1]);
        assert!(a.dissenters().is_empty());

        let broken = || report(&[1], &[(1, "END", Some("unnamed dimension"))]);
        let a = agree(&[("a".into(), broken()), ("b".into(), broken())]);
        assert!(a.agreed.is_empty());
        assert_eq!(a.versions.len(), 1);
        assert_eq!(a.versions[0].error.as_deref(), Some("a: unnamed dimension"));
        // Nothing is served anywhere: nobody dissents from nothing.
        assert!(a.dissenters().is_empty());
        assert_eq!(a.serving(), 0);
    }

    /// A replica still loading (not ready, serving nothing yet) is no dissent: a scale-out or a publish does not
    /// make the ModelServer disagree with itself, and the one agreed replica is never taken out.
    #[test]
    fn a_replica_not_ready_yet_does_not_dissent() {
        let serving = report(&[1], &[(1, AVAILABLE, None)]);
        let loading = report(&[1], &[(1, "LOADING", None)]);
        let a = agree(&[("a".into(), serving), ("b".into(), loading)]);
        assert_eq!(a.agreed, vec![1]);
        assert!(a.dissenters().is_empty(), "{a:?}");
        assert!(!a.replicas[1].agrees && !a.replicas[1].ready);
        assert_eq!(a.versions[0].state, AVAILABLE);
    }
}
