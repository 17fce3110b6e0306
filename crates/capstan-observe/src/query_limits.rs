//! What one query may use, as Prometheus bounds it: a budget of samples held at once (`--query.max-samples`),
//! a deadline (`--query.timeout`), and a flag the caller sets to cancel it when its client has gone.

use std::cell::Cell;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::promql::QueryError;

/// Prometheus' default `--query.max-samples`.
pub const DEFAULT_MAX_SAMPLES: usize = 50_000_000;
/// Prometheus' default `--query.timeout`.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(120);

/// The limits of one query.
#[derive(Debug, Clone)]
pub struct QueryLimits {
    /// Samples a query may hold in memory at once: selector data, subquery points, a range query's result.
    pub max_samples: usize,
    /// How long a query may run.
    pub timeout: Duration,
    /// Set by the caller to stop the query at its next check.
    pub cancel: Option<Arc<AtomicBool>>,
}

impl Default for QueryLimits {
    fn default() -> Self {
        QueryLimits { max_samples: DEFAULT_MAX_SAMPLES, timeout: DEFAULT_TIMEOUT, cancel: None }
    }
}

/// Counts what a running query holds and tells it when to stop.
#[derive(Debug)]
pub(crate) struct Meter {
    limits: QueryLimits,
    deadline: Instant,
    held: Cell<usize>,
    ticks: Cell<u32>,
}

impl Meter {
    pub(crate) fn new(limits: QueryLimits) -> Meter {
        let deadline = Instant::now() + limits.timeout;
        Meter { limits, deadline, held: Cell::new(0), ticks: Cell::new(0) }
    }

    fn too_many() -> QueryError {
        QueryError::Execution("query processing would load too many samples into memory in query execution".into())
    }

    /// Counts `n` more samples held until [`Meter::release`].
    pub(crate) fn hold(&self, n: usize) -> Result<(), QueryError> {
        let held = self.held.get().saturating_add(n);
        if held > self.limits.max_samples {
            return Err(Self::too_many());
        }
        self.held.set(held);
        Ok(())
    }

    /// Samples held for a moment only: refused when they would not fit beside what is held.
    pub(crate) fn peek(&self, n: usize) -> Result<(), QueryError> {
        if self.held.get().saturating_add(n) > self.limits.max_samples {
            return Err(Self::too_many());
        }
        Ok(())
    }

    /// Samples that may still be held.
    pub(crate) fn room(&self) -> usize {
        self.limits.max_samples.saturating_sub(self.held.get())
    }

    /// The error of a query that would hold too many samples.
    pub(crate) fn exceeded(&self) -> QueryError {
        Self::too_many()
    }

    pub(crate) fn release(&self, n: usize) {
        self.held.set(self.held.get().saturating_sub(n));
    }

    /// Fails once the query was cancelled or ran out of time; cheap enough to call at every step.
    pub(crate) fn check(&self) -> Result<(), QueryError> {
        if self.limits.cancel.as_ref().is_some_and(|c| c.load(Ordering::Relaxed)) {
            return Err(QueryError::Canceled("query was canceled in expression evaluation".into()));
        }
        let ticks = self.ticks.get().wrapping_add(1);
        self.ticks.set(ticks);
        if ticks.is_multiple_of(64) && Instant::now() >= self.deadline {
            return Err(QueryError::Timeout("query timed out in expression evaluation".into()));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn holding_beyond_the_budget_fails_and_releasing_makes_room() {
        let m = Meter::new(QueryLimits { max_samples: 10, ..Default::default() });
        m.hold(6).unwrap();
        assert!(m.peek(4).is_ok());
        assert!(matches!(m.peek(5), Err(QueryError::Execution(_))));
        assert!(matches!(m.hold(5), Err(QueryError::Execution(_))));
        m.release(6);
        m.hold(10).unwrap();
    }

    #[test]
    fn a_cancelled_or_late_query_stops_at_its_next_check() {
        let cancel = Arc::new(AtomicBool::new(false));
        let m = Meter::new(QueryLimits { cancel: Some(cancel.clone()), ..Default::default() });
        assert!(m.check().is_ok());
        cancel.store(true, Ordering::Relaxed);
        assert!(matches!(m.check(), Err(QueryError::Canceled(_))));
        let late = Meter::new(QueryLimits { timeout: Duration::ZERO, ..Default::default() });
        let first_failure = (0..128).find_map(|_| late.check().err());
        assert!(matches!(first_failure, Some(QueryError::Timeout(_))), "{first_failure:?}");
    }
}
