//! The autoscaling decision for ModelServers, as a HorizontalPodAutoscaler makes it: replicas × (observed / target)
//! for each metric, the largest wins, a 10 % tolerance, bounds, and a cooldown before scaling down.

use capstan_model::serving::Autoscaling;
use chrono::{DateTime, Utc};

/// The q-quantile (0..1) of observations from the difference of two cumulative histograms `(upper bound, count)`,
/// interpolated linearly inside the bucket, as PromQL's `histogram_quantile` (an answer in the +Inf bucket is the
/// highest finite bound). None without observations.
pub fn quantile(q: f64, now: &[(f64, f64)], before: &[(f64, f64)]) -> Option<f64> {
    let delta: Vec<(f64, f64)> = now
        .iter()
        .map(|(le, c)| (*le, c - before.iter().find(|(l, _)| l == le).map(|(_, b)| *b).unwrap_or(0.0)))
        .collect();
    let total = delta.last()?.1;
    if total <= 0.0 {
        return None;
    }
    let rank = q * total;
    let mut prev = (0.0, 0.0);
    for (le, c) in &delta {
        if *c >= rank {
            // The +Inf bucket (stored as f64::MAX where JSON cannot hold infinity).
            if le.is_infinite() || *le == f64::MAX {
                return Some(prev.0);
            }
            let in_bucket = c - prev.1;
            let frac = if in_bucket > 0.0 { (rank - prev.1) / in_bucket } else { 1.0 };
            return Some(prev.0 + (le - prev.0) * frac);
        }
        prev = (*le, *c);
    }
    Some(prev.0)
}

/// The replicas wanted now, and why.
pub fn desired_replicas(
    spec: &Autoscaling,
    current: i32,
    requests_per_second: Option<f64>,
    p95_seconds: Option<f64>,
    last_scale: Option<DateTime<Utc>>,
    now: DateTime<Utc>,
) -> (i32, String) {
    let current = current.max(1);
    let mut ratio: Option<f64> = None;
    let mut why = Vec::new();
    if let (Some(target), Some(rps)) = (spec.target_requests_per_second, requests_per_second) {
        let r = rps / (target * current as f64);
        why.push(format!("{rps:.1} req/s for a target of {target} per replica"));
        ratio = Some(ratio.map_or(r, |x: f64| x.max(r)));
    }
    if let (Some(target_ms), Some(p95)) = (spec.target_p95_milliseconds, p95_seconds) {
        let r = p95 * 1000.0 / target_ms;
        why.push(format!("p95 {:.1} ms for a target of {target_ms} ms", p95 * 1000.0));
        ratio = Some(ratio.map_or(r, |x: f64| x.max(r)));
    }
    let bounded = |n: i32| n.clamp(spec.min_replicas.max(1), spec.max_replicas.max(spec.min_replicas.max(1)));
    let Some(ratio) = ratio else {
        return (bounded(current), "no traffic measured".into());
    };
    let why = why.join(", ");
    if (0.9..=1.1).contains(&ratio) {
        return (bounded(current), format!("{why}: within tolerance"));
    }
    let want = bounded((current as f64 * ratio).ceil() as i32);
    if want < current {
        let cooldown = chrono::Duration::seconds(spec.cooldown_seconds.unwrap_or(60) as i64);
        if last_scale.is_some_and(|t| now - t < cooldown) {
            return (current, format!("{why}: would scale down to {want}, waiting for the cooldown"));
        }
    }
    (want, why)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec() -> Autoscaling {
        Autoscaling {
            min_replicas: 1,
            max_replicas: 4,
            target_requests_per_second: Some(50.0),
            target_p95_milliseconds: None,
            cooldown_seconds: Some(30),
        }
    }

    fn t(s: i64) -> DateTime<Utc> {
        DateTime::from_timestamp(1_800_000_000 + s, 0).expect("time")
    }

    #[test]
    fn scales_up_at_once_within_bounds_and_down_after_the_cooldown() {
        assert_eq!(desired_replicas(&spec(), 1, Some(120.0), None, None, t(0)).0, 3);
        assert_eq!(desired_replicas(&spec(), 2, Some(1000.0), None, None, t(0)).0, 4, "at most maxReplicas");
        assert_eq!(desired_replicas(&spec(), 2, Some(105.0), None, None, t(0)).0, 2, "within 10 %");
        let (n, why) = desired_replicas(&spec(), 3, Some(10.0), None, Some(t(0)), t(10));
        assert_eq!(n, 3, "{why}");
        assert!(why.contains("cooldown"));
        assert_eq!(desired_replicas(&spec(), 3, Some(10.0), None, Some(t(0)), t(31)).0, 1);
        assert_eq!(desired_replicas(&spec(), 3, None, None, None, t(0)).0, 3, "nothing measured: no change");
    }

    #[test]
    fn latency_and_rate_the_larger_ratio_wins() {
        let s = Autoscaling { target_p95_milliseconds: Some(10.0), ..spec() };
        // 20 req/s alone would scale down; a p95 of 30 ms triples.
        assert_eq!(desired_replicas(&s, 1, Some(20.0), Some(0.030), None, t(0)).0, 3);
    }

    #[test]
    fn quantiles_come_from_bucket_differences() {
        let before = [(0.01, 10.0), (0.1, 10.0), (f64::INFINITY, 10.0)];
        let now = [(0.01, 60.0), (0.1, 110.0), (f64::INFINITY, 110.0)];
        // 100 new observations: 50 under 10 ms, 50 between 10 and 100 ms; p95 is 90 % into the second bucket.
        let p95 = quantile(0.95, &now, &before).expect("observations");
        assert!((p95 - 0.091).abs() < 1e-9, "{p95}");
        assert_eq!(quantile(0.95, &before, &before), None);
        // All in the +Inf bucket, stored as f64::MAX: the highest finite bound.
        let stored = [(0.01, 0.0), (f64::MAX, 5.0)];
        assert_eq!(quantile(0.5, &stored, &[]), Some(0.01));
    }
}
